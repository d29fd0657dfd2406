//! The client subcommands against the real binary: `wait` and `login-link` back off from a
//! server that answers at once, refuse a malformed --server at once, and `wait` does not call a
//! callback without a code a success.

use crate::support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Output;
use std::sync::Arc;
use support::{oauth_relay, Relay};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tiny HTTP server that answers every request at once with what `answer(method, path)`
/// returns, and records each request line.
struct InstantServer {
    addr: SocketAddr,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl InstantServer {
    fn start(answer: fn(&str, &str) -> (u16, String)) -> InstantServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        // Ends with the test process; each connection carries one request.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut content_length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            content_length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0u8; content_length];
                let _ = std::io::Read::read_exact(&mut reader, &mut body);
                let mut parts = request_line.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                seen.lock().unwrap().push(format!("{method} {path}"));
                let (status, body) = answer(method, path);
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        InstantServer { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn count(&self, prefix: &str) -> usize {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|r| r.starts_with(prefix)).count()
    }
}

#[test]
fn wait_backs_off_from_a_server_that_answers_at_once() {
    // What a relay without long-polls (or with OAUTH_RELAY_MAX_WAIT_SECS=0) answers at once.
    let server = InstantServer::start(|_, _| {
        (
            404,
            r#"{"status":"error","message":"Callback not found or expired"}"#.into(),
        )
    });
    let out = oauth_relay(&[
        "wait",
        "never-arrives",
        "--server",
        &server.url(),
        "--timeout-secs",
        "3",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    let polls = server.count("GET /api/callback/never%2Darrives?wait=");
    // Without a back-off this is thousands; with it, a handful (250 ms doubling).
    assert!((2..=20).contains(&polls), "{polls} requests in 3 s");
}

#[test]
fn login_link_wait_backs_off_from_a_broker_that_answers_at_once() {
    let server = InstantServer::start(|method, path| match (method, path) {
        ("POST", "/m365/sessions") => (
            200,
            serde_json::json!({
                "state": "the-handle",
                "expected_email": "ana@contoso.example",
                "login_url": "http://broker.example/m365/start/x",
                "status_url": "http://broker.example/status/the-handle",
                "expires_at": "2026-11-23T10:10:00Z",
            })
            .to_string(),
        ),
        _ => (202, r#"{"status":"pending"}"#.into()),
    });
    let out = oauth_relay(&[
        "login-link",
        "ana@contoso.example",
        "--server",
        &server.url(),
        "--wait",
        "--timeout-secs",
        "3",
    ])
    .env("WK_M365_BROKER_TOKEN", "broker-token-0123456789")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("login_url: "));
    let polls = server.count("GET /token/the-handle?wait=");
    assert!((2..=20).contains(&polls), "{polls} requests in 3 s");
}

#[test]
fn a_malformed_server_url_fails_at_once_naming_the_setting() {
    for bad in ["not-a-url", "ftp://relay.example", "http://"] {
        let out = oauth_relay(&["wait", "s1", "--server", bad])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{bad}: {err}");
        assert!(
            err.contains("--server") && err.contains("OAUTH_RELAY_SERVER"),
            "{err}"
        );
        assert!(!err.contains("retrying"), "{err}");
    }
    let out = oauth_relay(&["wait", "s1"])
        .env("OAUTH_RELAY_SERVER", "relay.example:8000")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("OAUTH_RELAY_SERVER"),
        "{}",
        stderr(&out)
    );

    let out = oauth_relay(&["login-link", "ana@contoso.example", "--server", "not-a-url"])
        .env("WK_M365_BROKER_TOKEN", "broker-token-0123456789")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--server") && err.contains("WK_CALLBACK_SERVER"),
        "{err}"
    );
}

#[test]
fn wait_does_not_report_a_callback_without_a_code_as_success() {
    let relay = Relay::start(&[]);
    // A callback with a state but neither a code nor an error.
    assert_eq!(relay.get("/callback?state=no-code").status, 200);
    let out = oauth_relay(&["wait", "no-code", "--server", &relay.url("")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the callback carried no code"),
        "{}",
        stderr(&out)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["auth_code"], serde_json::Value::Null);
    assert_eq!(printed["state"], "no-code");

    // A code is still a success.
    relay.get("/callback?state=with-code&code=abc");
    let out = oauth_relay(&["wait", "with-code", "--server", &relay.url("")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn the_wrong_listener_or_path_fails_at_once_with_a_hint() {
    let relay = Relay::start(&["--internal-addr", "127.0.0.1:0"]);
    let hint = "the internal listener (OAUTH_RELAY_INTERNAL_ADDR";
    // The public listener (its JSON 404), and a URL with a path (a 404 page): a 404 of their
    // own, not "not yet".
    for server in [relay.url(""), relay.internal_url("/relay")] {
        let out = oauth_relay(&["wait", "s1", "--server", &server])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{server}: {err}");
        assert!(
            (err.contains("Not found") || err.contains("HTTP 404"))
                && err.contains(hint)
                && err.contains("OAUTH_RELAY_SERVER"),
            "{server}: {err}"
        );
        assert!(!err.contains("timed out"), "{err}");
    }
    // The right listener still waits for an unknown state, until its timeout.
    let out = oauth_relay(&[
        "wait",
        "s1",
        "--server",
        &relay.internal_url(""),
        "--timeout-secs",
        "1",
    ])
    .output()
    .unwrap();
    assert!(stderr(&out).contains("timed out"), "{}", stderr(&out));
    let out = oauth_relay(&["register", "s2", "--server", &relay.url("")])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Not found") && err.contains(hint), "{err}");
    let out = oauth_relay(&[
        "login-link",
        "ana@contoso.example",
        "--server",
        &relay.url(""),
    ])
    .env("WK_M365_BROKER_TOKEN", "broker-token-0123456789")
    .output()
    .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(hint) && err.contains("WK_CALLBACK_SERVER") && err.contains("broker mode"),
        "{err}"
    );
}

#[test]
fn bad_settings_exit_1_naming_the_variable_and_the_flag() {
    // From the environment (the inherited Python name), from a flag, through `serve`.
    // (variable set, arguments, the variable and the flag the message must name)
    type Case = (
        Option<(&'static str, &'static str)>,
        &'static [&'static str],
        &'static str,
        &'static str,
    );
    let cases: [Case; 5] = [
        (
            Some(("OAUTH_CALLBACK_PORT", "abc")),
            &[],
            "OAUTH_CALLBACK_PORT",
            "--port",
        ),
        (None, &["--port", "abc"], "OAUTH_CALLBACK_PORT", "--port"),
        (None, &["--port=70000"], "OAUTH_CALLBACK_PORT", "--port"),
        (
            Some(("OAUTH_RELAY_REQUIRE_REGISTERED_STATE", "maybe")),
            &["serve"],
            "OAUTH_RELAY_REQUIRE_REGISTERED_STATE",
            "--require-registered-state",
        ),
        (
            Some(("OAUTH_RELAY_EXCHANGE_TIMEOUT_SECS", "soon")),
            &[],
            "OAUTH_RELAY_EXCHANGE_TIMEOUT_SECS",
            "--exchange-timeout-secs",
        ),
    ];
    for (env, args, variable, flag) in cases {
        let mut cmd = oauth_relay(args);
        cmd.envs(env);
        let out = cmd.output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{env:?} {args:?}: {err}");
        assert!(
            err.contains(variable) && err.contains(flag),
            "{env:?} {args:?}: {err}"
        );
    }
    // Values that parse but are refused: the variable and the flag, from either source.
    let refused: [(&str, &str, &str); 5] = [
        ("OAUTH_RELAY_TTL_SECS", "0", "--ttl-secs"),
        ("OAUTH_RELAY_WORKERS", "0", "--workers"),
        ("OAUTH_RELAY_LOG_LEVEL", "verbose", "--log-level"),
        ("OAUTH_RELAY_API_TOKEN", "short", "--api-token"),
        ("OAUTH_RELAY_MAX_URL_BYTES", "100", "--max-url-bytes"),
    ];
    for (variable, value, flag) in refused {
        let from_env = oauth_relay(&["--port", "0"])
            .env(variable, value)
            .output()
            .unwrap();
        let from_flag = oauth_relay(&["--port", "0", &format!("{flag}={value}")])
            .output()
            .unwrap();
        for out in [from_env, from_flag] {
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{variable}={value}: {err}");
            assert!(
                err.contains(&format!("{variable} ({flag})")),
                "{variable}={value}: {err}"
            );
            if variable == "OAUTH_RELAY_API_TOKEN" {
                assert!(!err.contains(value), "the token was repeated: {err}");
            }
        }
    }
    // Help and version are not errors.
    for flag in ["--help", "--version"] {
        let out = oauth_relay(&[flag]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(!out.stdout.is_empty(), "{flag}");
    }
}

#[test]
fn an_encryption_key_without_redis_is_checked_and_warned_about() {
    // 32 zero bytes: a valid key, which seals nothing without Redis.
    let key = format!("k1:{}", "A".repeat(43) + "=");
    let relay = Relay::start_env(&[], &[("OAUTH_RELAY_ENCRYPTION_KEY", &key)]);
    let line = relay.wait_for_log("\"event\":\"encryption_key_unused\"");
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["level"], "warn");
    assert!(line["effect"].as_str().unwrap().contains("not encrypted"));
    assert!(!line.to_string().contains(&key[3..]), "the key was logged");
    assert_eq!(relay.get("/health").status, 200, "it still serves");
    // Without the key, no such line.
    let plain = Relay::start(&[]);
    assert_eq!(plain.get("/health").status, 200);
    assert!(!plain
        .logs()
        .iter()
        .any(|l| l.contains("encryption_key_unused")));
    // A malformed key is refused even so, naming the variable and the flag, not the value.
    let out = oauth_relay(&["--port", "0"])
        .env("OAUTH_RELAY_ENCRYPTION_KEY", "k1:not-base64!")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("OAUTH_RELAY_ENCRYPTION_KEY (--encryption-key)")
            && !err.contains("not-base64"),
        "{err}"
    );
}

#[test]
fn client_subcommands_name_the_variable_a_bad_value_came_from() {
    let out = oauth_relay(&["healthcheck"])
        .env("OAUTH_CALLBACK_PORT", "abc")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("OAUTH_CALLBACK_PORT"),
        "{}",
        stderr(&out)
    );
    // A serve setting in the environment is read for every subcommand.
    let out = oauth_relay(&["wait", "s1"])
        .env("OAUTH_RELAY_TTL_SECS", "ten")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("OAUTH_RELAY_TTL_SECS"),
        "{}",
        stderr(&out)
    );
    // A missing broker token names its variable, and is not exit 2 ("the sign-in failed").
    let out = oauth_relay(&["login-link", "ana@contoso.example"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("WK_M365_BROKER_TOKEN"),
        "{}",
        stderr(&out)
    );
    // A usage error in `wait` is 1 too: 2 means the provider sent an error.
    let out = oauth_relay(&["wait", "s1", "--timeout-secs", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--timeout-secs"), "{}", stderr(&out));
}
