//! The store on S3: the real `proxima` binary against an S3-compatible server
//! (moto, from PyPI) on a loopback port. Imports, queries, a refused import and
//! retention must behave exactly as on the local disk; the shared registry's takeovers
//! are conditional puts there.
//!
//! `moto_server` is looked up in `$MOTO_SERVER`, then on `PATH` (`.ci/run`
//! installs it into `.venv`). Without it the test says so and passes, except
//! under CI (`CI` set), where it fails.

use std::path::Path;
use std::process::{Command, Output};

use crate::common;

fn proxima(moto: &common::Moto, args: &[&str]) -> Output {
    let port = moto.port;
    Command::new(env!("CARGO_BIN_EXE_proxima"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("sql/fixtures"))
        .env("PROXIMA_DATA", "s3://proxima-test/store")
        .envs(moto.env())
        .env("RUST_LOG", "error")
        // An S3 store has no local folder for `proxima sql`'s audit log: it is given one.
        .env(
            "PROXIMA_AUDIT_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("s3-audit-{port}")),
        )
        .output()
        .expect("proxima runs")
}

fn ok(moto: &common::Moto, args: &[&str]) -> String {
    let output = proxima(moto, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "proxima {args:?} failed:\n{stdout}\n{stderr}");
    stdout.into_owned()
}

fn days(moto: &common::Moto) -> String {
    ok(
        moto,
        &[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT day, count(*) AS n FROM observations GROUP BY day ORDER BY day",
        ],
    )
}

#[test]
fn the_store_works_on_s3() {
    let Some(moto) = common::Moto::start_or_skip("the S3 store test") else {
        return;
    };
    moto.create_bucket("proxima-test");
    ok(&moto, &["import", "devices", "devices.csv"]);
    ok(&moto, &["import", "observations", "observations.csv"]);
    let all_days = "day,n\n2026-11-02,2\n2026-11-03,2\n2026-11-04,3\n2026-11-05,1\n";
    assert_eq!(days(&moto), all_days);

    // A refused import leaves the S3 store as it was.
    let refused = proxima(
        &moto,
        &[
            "import",
            "observations",
            "import/good_observations.csv",
            "import/bad_mac.csv",
        ],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("import/bad_mac.csv:3: column 'observed'"), "{stderr}");
    assert_eq!(days(&moto), all_days);

    // Pruning and the view work the same.
    let encounters = ok(
        &moto,
        &[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n FROM encounters WHERE at >= TIMESTAMP '2026-11-04T00:00:00Z'",
        ],
    );
    assert_eq!(encounters, "n\n4\n");
    // The imports wrote the observed index on S3 with the observations.
    let observations = ok(
        &moto,
        &[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n FROM observations WHERE observed_at >= TIMESTAMP '2026-11-04T00:00:00Z'",
        ],
    );
    let indexed = ok(
        &moto,
        &[
            "sql",
            "--format",
            "csv",
            "-c",
            "SELECT count(*) AS n FROM observed_index WHERE observed_at >= TIMESTAMP '2026-11-04T00:00:00Z'",
        ],
    );
    assert_eq!(indexed, observations);
    assert_ne!(indexed, "n\n0\n");

    let retention = ok(&moto, &["retention", "--keep-days", "2", "--today", "2026-11-05"]);
    // Observations, their index and the contact rollup of 2 and 3 November.
    assert!(retention.contains("deleted 6 day folder(s)"), "{retention}");
    assert!(
        retention.contains("deleted contact_partials/day=2026-11-02"),
        "{retention}"
    );
    assert!(
        retention.contains("deleted observed_index/day=2026-11-03"),
        "{retention}"
    );
    assert_eq!(days(&moto), "day,n\n2026-11-04,3\n2026-11-05,1\n");
}

/// Two nodes that both find an upload's idempotency key abandoned on S3: exactly one takes
/// it over (a put conditional on the ETag each read), the other is told it is in progress.
#[tokio::test]
async fn an_abandoned_claim_is_taken_over_by_one_node_on_s3() {
    use proxima_storage::registry::{KeyClaim, PENDING_KEY_TTL, SharedRegistry};
    let Some(moto) = common::Moto::start_or_skip("the S3 takeover test") else {
        return;
    };
    moto.create_bucket("takeover");
    let store = moto.open_store("s3://takeover/store").unwrap();
    let (one, two) = (
        SharedRegistry::open(&store).await.unwrap(),
        SharedRegistry::open(&store).await.unwrap(),
    );
    let (now, day) = (chrono::Utc::now(), chrono::Duration::hours(24));
    assert_eq!(
        one.claim_upload_key("d", "k", now, day).await.unwrap(),
        KeyClaim::Claimed
    );
    let later = now + PENDING_KEY_TTL + chrono::Duration::seconds(1);
    let (KeyClaim::Abandoned(seen_by_one), KeyClaim::Abandoned(seen_by_two)) = (
        one.claim_upload_key("d", "k", later, day).await.unwrap(),
        two.claim_upload_key("d", "k", later, day).await.unwrap(),
    ) else {
        panic!("both find the claim abandoned")
    };
    assert!(two.take_over_upload_key("d", "k", later, &seen_by_two).await.unwrap());
    assert!(!one.take_over_upload_key("d", "k", later, &seen_by_one).await.unwrap());
    assert_eq!(
        one.claim_upload_key("d", "k", later, day).await.unwrap(),
        KeyClaim::InProgress
    );
}
