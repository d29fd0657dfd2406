//! Replays every step the Python server's recorded behaviour lists (tests/fixtures, a copy of
//! the parity vectors) against the real binary: status, content type, listed headers, JSON.

use crate::support;

use serde_json::Value;
use support::Relay;

/// Fields the retrieval JSON carries beyond the Python server's: the authorization-response
/// parameters it dropped (RFC 9207's `iss`, `session_state`, `error_uri`).
const ADDED_FIELDS: [&str; 3] = ["iss", "session_state", "error_uri"];

#[test]
fn every_recorded_step_matches_the_python_server() {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/python-relay.json")).unwrap();
    let steps = fixture["steps"].as_array().unwrap();
    assert!(steps.len() >= 17, "the fixture lost steps");
    let relay = Relay::start(&[]);
    for step in steps {
        let name = step["name"].as_str().unwrap();
        let req = &step["request"];
        let expect = &step["expect"];
        let res = relay.request(
            req["method"].as_str().unwrap(),
            req["path"].as_str().unwrap(),
            &[],
            b"",
        );
        assert_eq!(
            res.status as u64,
            expect["status"].as_u64().unwrap(),
            "{name}: status"
        );
        assert_eq!(
            res.media_type(),
            expect["content_type"].as_str().unwrap(),
            "{name}: content type"
        );
        if let Some(headers) = expect["headers"].as_object() {
            for (header, value) in headers {
                assert_eq!(
                    res.header(header),
                    value.as_str(),
                    "{name}: header {header}"
                );
            }
        }
        if let Some(needle) = expect["html_contains"].as_str() {
            assert!(res.text().contains(needle), "{name}: page lacks {needle:?}");
        }
        if let Some(expected) = expect.get("json") {
            let mut actual = res.json();
            let mut expected = expected.clone();
            if expected["timestamp"] == "<any ISO-8601 timestamp>" {
                let ts = actual["timestamp"].as_str().unwrap_or_default().to_string();
                assert!(is_iso8601(&ts), "{name}: timestamp {ts:?}");
                actual["timestamp"] = Value::Null;
                expected["timestamp"] = Value::Null;
            }
            // Every recorded field, exactly; besides them only the fields added since (docs/api.md,
            // "Differences"), which a client written for the Python server never reads.
            if let Some(fields) = actual.as_object_mut() {
                for added in ADDED_FIELDS {
                    if expected.get(added).is_none() {
                        fields.remove(added);
                    }
                }
            }
            assert_eq!(actual, expected, "{name}: JSON body");
        }
    }
}

fn is_iso8601(ts: &str) -> bool {
    let b = ts.as_bytes();
    ts.len() >= 19
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
}

#[test]
fn the_iso_check_rejects_garbage() {
    assert!(is_iso8601("2026-11-23T09:57:49.785619Z"));
    assert!(!is_iso8601("yesterday at noon"));
    assert!(!is_iso8601("1732356000"));
}
