//! The client subcommands: `wait` (long-poll a relay for one state) and `healthcheck`.

use crate::config::{HealthcheckArgs, LoginLinkArgs, WaitArgs};
use serde_json::Value;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub fn wait(args: WaitArgs) -> ExitCode {
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let base = args.server.trim_end_matches('/');
    let state: String =
        percent_encoding::utf8_percent_encode(&args.state, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let auth = args.api_token.map(|t| format!("Bearer {t}"));
    let answer = poll("oauth-relay wait", deadline, 404, auth.as_deref(), |wait| {
        format!("{base}/api/callback/{state}?wait={wait}")
    });
    match answer {
        None => {
            eprintln!("oauth-relay wait: timed out waiting for the callback");
            ExitCode::from(1)
        }
        Some((200, body, json)) => {
            println!("{body}");
            if json.get("error").is_some_and(|e| !e.is_null()) {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Some((status, _, json)) => {
            eprintln!("oauth-relay wait: {}", message_of(status, &json));
            ExitCode::from(1)
        }
    }
}

/// Long-polls `url(wait_secs)` until it answers something other than `pending` (or 503) or
/// the deadline passes (`None`). Connection errors are reported and retried.
fn poll(
    label: &str,
    deadline: Instant,
    pending: u16,
    auth: Option<&str>,
    url: impl Fn(u64) -> String,
) -> Option<(u16, String, Value)> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let wait = left.as_secs().clamp(1, 60);
        let mut request = crate::outbound::agent(Duration::from_secs(wait + 10)).get(&url(wait));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        match request.call() {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let body = r.body_mut().read_to_string().unwrap_or_default();
                if status == 503 {
                    std::thread::sleep(Duration::from_secs(1).min(left));
                } else if status != pending {
                    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
                    return Some((status, body, json));
                }
            }
            Err(e) => {
                eprintln!("{label}: {e}; retrying");
                std::thread::sleep(Duration::from_secs(1).min(left));
            }
        }
    }
}

pub fn login_link(args: LoginLinkArgs) -> ExitCode {
    let base = args.server.trim_end_matches('/');
    let auth = format!("Bearer {}", args.broker_token);
    let body =
        serde_json::json!({ "expected_email": args.email, "force_consent": args.force_consent });
    let created = crate::outbound::agent(Duration::from_secs(30))
        .post(&format!("{base}/m365/sessions"))
        .header("Authorization", &auth)
        .content_type("application/json")
        .send(body.to_string());
    let (status, session) = match created {
        Ok(mut r) => (
            r.status().as_u16(),
            serde_json::from_str::<Value>(&r.body_mut().read_to_string().unwrap_or_default())
                .unwrap_or(Value::Null),
        ),
        Err(e) => {
            eprintln!("oauth-relay login-link: {e}");
            return ExitCode::from(1);
        }
    };
    if status != 200 {
        eprintln!("oauth-relay login-link: {}", message_of(status, &session));
        return ExitCode::from(1);
    }
    for key in ["login_url", "expected_email", "expires_at"] {
        println!("{key}: {}", session[key].as_str().unwrap_or_default());
    }
    if !args.wait {
        return ExitCode::SUCCESS;
    }
    let handle = session["state"].as_str().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let answer = poll(
        "oauth-relay login-link",
        deadline,
        202,
        Some(&auth),
        |wait| format!("{base}/token/{handle}?wait={wait}"),
    );
    match answer {
        None => {
            eprintln!("oauth-relay login-link: timed out waiting for the sign-in");
            ExitCode::from(1)
        }
        Some((200, body, _)) => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Some((409, _, json)) => {
            eprintln!(
                "oauth-relay login-link: the sign-in failed: {}",
                json["reason"].as_str().unwrap_or("unknown")
            );
            ExitCode::from(2)
        }
        Some((status, _, json)) => {
            eprintln!("oauth-relay login-link: {}", message_of(status, &json));
            ExitCode::from(1)
        }
    }
}

fn message_of(status: u16, body: &Value) -> String {
    body["message"]
        .as_str()
        .map(String::from)
        .unwrap_or_else(|| format!("HTTP {status}"))
}

pub fn healthcheck(args: HealthcheckArgs) -> ExitCode {
    let url = args
        .url
        .unwrap_or_else(|| format!("http://127.0.0.1:{}/health", args.port));
    match crate::outbound::agent(Duration::from_secs(3))
        .get(&url)
        .call()
    {
        Ok(r) if r.status().as_u16() == 200 => ExitCode::SUCCESS,
        Ok(r) => {
            eprintln!("unhealthy: HTTP {}", r.status().as_u16());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::from(1)
        }
    }
}
