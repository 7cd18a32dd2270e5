//! A real full disk under the audit log (a tiny tmpfs, mounted as root): an append that
//! cannot be synced is refused, nothing half-written stays behind, and once space is back
//! the log goes on with the next sequence number and still verifies.

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use proxima_audit::{AuditLog, AuditLogOptions, Decision, Phase, Record, SignerKey, verify};

/// A tmpfs of `size` mounted on a new folder, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Fills the disk holding `dir` with one file, and returns its path.
fn fill(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![7u8; 4096];
    while file.write_all(&block).and_then(|()| file.sync_all()).is_ok() {}
    path
}

fn record(i: usize) -> Record {
    Record::new(Phase::Decision, "alice", "tracer", "cli:sql", Decision::Allow, "local")
        .with_sql(&format!("SELECT {i}"))
}

#[test]
fn a_full_disk_refuses_appends_and_loses_nothing() {
    let Some(disk) = SmallDisk::mount("256k") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must be able to mount a tmpfs for this test"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let signer = SignerKey::generate("proxima.test/audit").unwrap();
    let verifier = signer.verifier();
    let dir = disk.dir.path().join("audit");
    let options = AuditLogOptions {
        checkpoint_every: 1_000_000,
        checkpoint_interval: Duration::from_secs(3600),
        ..AuditLogOptions::default()
    };
    let log = AuditLog::open(&dir, signer, options).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for i in 0..5 {
        assert_eq!(runtime.block_on(log.append(record(i))).unwrap(), i as u64);
    }
    let filler = fill(disk.dir.path());
    // What still fits in the segment's last page is written; the first record that needs
    // a new page is refused.
    let mut written = 5;
    let refused = loop {
        match runtime.block_on(log.append(record(written))) {
            Ok(seq) => assert_eq!(seq, written as u64),
            Err(e) => break e.to_string(),
        }
        written += 1;
        assert!(written < 1000, "the disk never filled up");
    };
    assert!(refused.contains("could not be written"), "{refused}");
    // Space comes back: numbering goes on where it stopped, nothing of the refused record stays.
    std::fs::remove_file(filler).unwrap();
    assert_eq!(
        runtime.block_on(log.append(record(written + 1))).unwrap(),
        written as u64
    );
    drop(log);
    let report = verify(&dir, &verifier, None).unwrap();
    assert!(report.ok() && !report.torn_tail, "{:?}", report.findings);
    assert_eq!((report.records, report.unsigned_tail), (written as u64 + 1, 0));
    let text: String = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    assert!(
        !text.contains(&format!("\"SELECT {written}\"")),
        "the refused record is not in the log"
    );
}
