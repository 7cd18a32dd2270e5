//! The reference phone (`proxima phone`) against the real `proxima serve` on loopback
//! ports: the README's walkthrough, run. Two phones register (each solving the proof of
//! work), one broadcasts rotating identifiers and the other hears the current one; a tracer
//! reports the hearer as a case; the heard phone gets its alert, then revokes itself with
//! its owner's key.

use crate::common;
use common::phone;

use serde_json::Value;

#[tokio::test]
async fn a_phones_life_through_the_reference_phone() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // A small proof of work: this build's SHA-256 is not optimised.
    let mut server = common::Server::start(&[
        "--data",
        store.to_str().unwrap(),
        "serve",
        "--http",
        "127.0.0.1:0",
        "--flight",
        "127.0.0.1:0",
        "--registration-work",
        "10",
    ]);
    let password = server.password("tracer");
    server.drain();
    let api = server.api.clone();

    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    let a_uuid = phone(&a, &api, &["register"]).unwrap();
    let b_uuid = phone(&b, &api, &["register"]).unwrap();
    assert_ne!(a_uuid, b_uuid);
    assert!(
        phone(&a, &api, &["register"]).unwrap_err().contains("exists"),
        "a phone registers once"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the owner's key is in there");
    }

    // B fetches its identifiers and broadcasts the current one; A hears it.
    let ids = phone(&b, &api, &["ids", "--count", "4"]).unwrap();
    assert_eq!(ids.lines().count(), 4, "{ids}");
    let current = phone(&b, &api, &["current-id"]).unwrap();
    assert_eq!(current.len(), 32);
    assert!(
        ids.lines().any(|line| line.starts_with(&current)),
        "{current} not in\n{ids}"
    );
    let uploaded = phone(&a, &api, &["upload", "--heard", &current]).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&uploaded).unwrap()["accepted"], 1);

    // A tracer reports A: B is its high-priority contact, by the identifier A heard.
    let opened = common::report_case(&api, &password, &a_uuid).await;
    assert_eq!(opened["alerts"]["high"], 1, "{opened}");
    let alerts: Value = serde_json::from_str(&phone(&b, &api, &["alerts"]).unwrap()).unwrap();
    assert_eq!(alerts.as_array().unwrap().len(), 1, "{alerts}");
    assert_eq!(alerts[0]["priority"], "high");
    assert_eq!(phone(&a, &api, &["alerts"]).unwrap(), "[]");

    // B revokes itself with its owner's key: its token stops working; a second try is refused.
    assert!(phone(&b, &api, &["revoke"]).unwrap().contains("revoked"));
    let refused = phone(&b, &api, &["alerts"]).unwrap_err();
    assert!(refused.contains("401"), "{refused}");
    let again = phone(&b, &api, &["revoke"]).unwrap_err();
    assert!(again.contains("404"), "{again}");
}
