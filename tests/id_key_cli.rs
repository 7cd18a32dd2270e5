//! `proxima id-key`: a key file made, listed, rotated, and the identifiers it issues, read
//! back through the engine's own resolver.

use std::process::Command;

use proxima_engine::ephemeral::{IdKeys, handle_of};

const BIN: &str = env!("CARGO_BIN_EXE_proxima");

fn proxima(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn a_key_file_issues_identifiers_that_resolve_to_their_device_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ids.key");
    let file = file.to_str().unwrap();
    let made = proxima(&["id-key", "new", "--out", file]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let again = proxima(&["id-key", "new", "--out", file]);
    assert!(!again.status.success(), "an existing file is never overwritten");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));

    let device = "6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b";
    let out = proxima(&[
        "id-key",
        "issue",
        "--file",
        file,
        "--device",
        device,
        "--from",
        "2026-12-02T12:07:00Z",
        "--count",
        "3",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let keys = IdKeys::load(std::path::Path::new(file), None).unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let expected_starts = ["2026-12-02T12:00:00Z", "2026-12-02T12:15:00Z", "2026-12-02T12:30:00Z"];
    assert_eq!(lines.len(), 3, "{lines:?}");
    for (line, start) in lines.iter().zip(expected_starts) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[1], start);
        let bytes: [u8; 16] = hex::decode(fields[0]).unwrap().try_into().unwrap();
        let resolved = keys.resolve(&bytes).unwrap();
        assert_eq!(resolved.handle, handle_of(device).unwrap());
        assert_eq!(
            i64::from(resolved.start_minute) * 60,
            start.parse::<chrono::DateTime<chrono::Utc>>().unwrap().timestamp()
        );
    }

    let bad = proxima(&[
        "id-key",
        "issue",
        "--file",
        file,
        "--device",
        "phone-7",
        "--from",
        "2026-12-02T12:07:00Z",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a device UUID"));

    // Rotation: a second key is current; the list never shows key bytes.
    assert!(proxima(&["id-key", "rotate", "--file", file]).status.success());
    let listed = String::from_utf8_lossy(&proxima(&["id-key", "list", "--file", file]).stdout).to_string();
    assert!(
        listed.contains("key 1: retired") && listed.contains("key 2: current"),
        "{listed}"
    );
    let text = std::fs::read_to_string(file).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in json["keys"].as_array().unwrap() {
        assert!(!listed.contains(key["key"].as_str().unwrap()));
    }
}
