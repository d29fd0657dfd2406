//! The client subcommands: `wait` (long-poll a relay for one state), `register` (register a
//! state with the hash of a new retrieval secret), `login-link` (ask a broker for a login
//! link, optionally wait for the tokens, optionally sealed to a key, optionally kept as a
//! connection), `token` (a kept connection's fresh access token), `keygen` and `open` (a key
//! pair for sealed answers, and opening one) and `healthcheck`.

use crate::config::{
    server_url, HealthcheckArgs, KeygenArgs, LoginLinkArgs, OpenArgs, RegisterArgs, TokenArgs,
    WaitArgs,
};
use crate::http::RETRIEVAL_SECRET_HEADER;
use crate::seal::{self, PrivateKey, SealKey};
use crate::secret::{RetrievalHash, Secret};
use serde_json::Value;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub fn wait(args: WaitArgs) -> ExitCode {
    const LABEL: &str = "oauth-relay wait";
    let base = match server_url(&args.server, "--server", "OAUTH_RELAY_SERVER") {
        Ok(base) => base,
        Err(message) => {
            eprintln!("{LABEL}: {message}");
            return ExitCode::from(1);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let state: String =
        percent_encoding::utf8_percent_encode(&args.state, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let secret = match retrieval_secret(&args) {
        Ok(secret) => secret,
        Err(message) => {
            eprintln!("{LABEL}: {message}");
            return ExitCode::from(1);
        }
    };
    let mut headers = Vec::new();
    if let Some(t) = args.api_token {
        headers.push(("Authorization", format!("Bearer {t}")));
    }
    if let Some(secret) = &secret {
        headers.push((RETRIEVAL_SECRET_HEADER, secret.expose().to_string()));
    }
    // "Not yet" is the relay's own 404; any other (a path nobody serves, the public listener)
    // will not change by waiting.
    let not_yet = |status: u16, json: &Value| {
        status == 404 && json["message"] == crate::error::Error::CallbackNotFound.message()
    };
    let answer = poll(LABEL, deadline, not_yet, &headers, |wait| {
        format!("{base}/api/callback/{state}?wait={wait}")
    });
    match answer {
        Polled::TimedOut => {
            eprintln!("{LABEL}: timed out waiting for the callback");
            ExitCode::from(1)
        }
        Polled::Failed(message) => {
            eprintln!("{LABEL}: {message}");
            ExitCode::from(1)
        }
        Polled::Answer(200, _, json) if !json.is_object() => {
            eprintln!("{LABEL}: the answer is not a relay's JSON (is --server the relay?)");
            ExitCode::from(1)
        }
        Polled::Answer(200, body, json) => {
            println!("{body}");
            if let Some(error) = json.get("error").filter(|e| !e.is_null()) {
                eprintln!(
                    "{LABEL}: the provider sent an error instead of a code: {}",
                    error.as_str().unwrap_or("(not a string)")
                );
                ExitCode::from(2)
            } else if json
                .get("auth_code")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                eprintln!("{LABEL}: the callback carried no code (and no error)");
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Polled::Answer(status, _, json) => {
            eprintln!("{LABEL}: {}", message_of(status, &json));
            if status == 404 {
                eprintln!("{LABEL}: {}", not_served_hint("OAUTH_RELAY_SERVER", ""));
            }
            ExitCode::from(1)
        }
    }
}

/// What to check when the server at --server does not serve the path asked for (its own 404,
/// `Not found`): most often the public listener where the internal one was meant.
fn not_served_hint(variable: &str, also: &str) -> String {
    format!(
        "this path is not served at --server ({variable}): with split listeners, programs use \
         the internal listener (OAUTH_RELAY_INTERNAL_ADDR, e.g. http://oauth-relay-internal:8001), \
         not the public one; and --server is the relay's base URL, without a path{also}"
    )
}

/// The retrieval secret `wait` presents: from the variable `--retrieval-secret-env` names, or
/// the first line of standard input; none without either.
fn retrieval_secret(args: &WaitArgs) -> Result<Option<Secret>, String> {
    secret_from(
        args.retrieval_secret_env.as_deref(),
        args.retrieval_secret_stdin,
        "the retrieval secret",
    )
}

/// 256 random bits, base64url without padding (43 characters): fits a header and a shell
/// variable as it is.
fn new_retrieval_secret() -> Secret {
    Secret::new(crate::random::id(32))
}

pub fn register(args: RegisterArgs) -> ExitCode {
    const LABEL: &str = "oauth-relay register";
    let base = match server_url(&args.server, "--server", "OAUTH_RELAY_SERVER") {
        Ok(base) => base,
        Err(message) => {
            eprintln!("{LABEL}: {message}");
            return ExitCode::from(1);
        }
    };
    let secret = new_retrieval_secret();
    let body = serde_json::json!({
        "state": args.state,
        "ttl_secs": args.ttl_secs,
        "retrieval_hash": RetrievalHash::of_secret(secret.expose()).encode(),
    });
    let mut request = crate::outbound::agent(Duration::from_secs(30))
        .post(&format!("{base}/api/states"))
        .content_type("application/json");
    if let Some(t) = &args.api_token {
        request = request.header("Authorization", &format!("Bearer {t}"));
    }
    match request.send(body.to_string()) {
        Ok(mut r) => {
            let status = r.status().as_u16();
            let answer: Value =
                serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default())
                    .unwrap_or(Value::Null);
            if status == 201 {
                println!("{}", secret.expose());
                ExitCode::SUCCESS
            } else {
                eprintln!("{LABEL}: {}", message_of(status, &answer));
                if status == 404 && answer["message"] == crate::error::Error::NotFound.message() {
                    eprintln!("{LABEL}: {}", not_served_hint("OAUTH_RELAY_SERVER", ""));
                }
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("{LABEL}: {e}");
            ExitCode::from(1)
        }
    }
}

/// How a long-poll loop ended.
#[derive(Debug)]
enum Polled {
    /// The deadline passed while the answer still meant "keep waiting".
    TimedOut,
    /// A final answer: status, body, and the body as JSON (`Null` when it is not JSON).
    Answer(u16, String, Value),
    /// A failure no retry can fix (the request cannot even be made).
    Failed(String),
}

/// Pauses between tries when "keep waiting" comes back long before the wait asked for (a server
/// without long-polls, `OAUTH_RELAY_MAX_WAIT_SECS=0`, a wrong path answering 404, a 503, a
/// refused connection): 250 ms, doubling up to 5 s; back to the start after a real long-poll.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps for the next pause, never past `deadline`.
    fn pause(&mut self, deadline: Instant) {
        let pause = self
            .next
            .min(deadline.saturating_duration_since(Instant::now()));
        self.next = (self.next * 2).min(Self::MAX);
        std::thread::sleep(pause);
    }
}

/// Long-polls `url(wait_secs)` until it answers something `pending` does not call "keep
/// waiting" (202 and 503 always are) or the deadline passes. Connection errors are reported and
/// retried; answers that come back much sooner than the wait asked for are retried only after a
/// back-off pause.
fn poll(
    label: &str,
    deadline: Instant,
    pending: impl Fn(u16, &Value) -> bool,
    headers: &[(&str, String)],
    url: impl Fn(u64) -> String,
) -> Polled {
    let mut backoff = Backoff::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Polled::TimedOut;
        }
        let wait = left.as_secs().clamp(1, 60);
        let mut request = crate::outbound::agent(Duration::from_secs(wait + 10)).get(&url(wait));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let sent = Instant::now();
        match request.call() {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let body = r.body_mut().read_to_string().unwrap_or_default();
                let json = serde_json::from_str(&body).unwrap_or(Value::Null);
                // 202 is "not yet" everywhere: the broker's pending tokens, and the relay's
                // answer to the owner of a registered state whose callback has not arrived.
                if !pending(status, &json) && ![202, 503].contains(&status) {
                    return Polled::Answer(status, body, json);
                }
                // A long-poll that held for at least half its wait was a real one.
                if sent.elapsed() * 2 >= Duration::from_secs(wait) {
                    backoff.reset();
                } else {
                    backoff.pause(deadline);
                }
            }
            Err(
                e @ (ureq::Error::BadUri(_) | ureq::Error::Http(_) | ureq::Error::InvalidProxyUrl),
            ) => {
                return Polled::Failed(e.to_string());
            }
            Err(e) => {
                eprintln!("{label}: {e}; retrying");
                backoff.pause(deadline);
            }
        }
    }
}

pub fn login_link(args: LoginLinkArgs) -> ExitCode {
    const LABEL: &str = "oauth-relay login-link";
    let base = match server_url(&args.server, "--server", "WK_CALLBACK_SERVER") {
        Ok(base) => base,
        Err(message) => {
            eprintln!("{LABEL}: {message}");
            return ExitCode::from(1);
        }
    };
    let token = match (&args.broker_token, &args.m365_broker_token) {
        (Some(t), _) | (None, Some(t)) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            eprintln!(
                "{LABEL}: missing --broker-token (or the environment variable \
                 OAUTH_RELAY_BROKER_TOKEN or WK_M365_BROKER_TOKEN)"
            );
            return ExitCode::from(1);
        }
    };
    let sealing = match args.seal_to.as_deref().map(seal_key_file).transpose() {
        Ok(sealing) => sealing,
        Err(message) => {
            eprintln!("{LABEL}: --seal-to: {message}");
            return ExitCode::from(1);
        }
    };
    let auth = format!("Bearer {token}");
    // The Microsoft 365 provider keeps its own endpoint (and login link path), as before.
    let (path, mut body) = if args.provider == crate::providers_config::M365 {
        (
            "/m365/sessions",
            serde_json::json!({ "expected_email": args.email, "force_consent": args.force_consent,
                                "return_url": args.return_url }),
        )
    } else {
        (
            "/sessions",
            serde_json::json!({ "provider": args.provider, "expected_email": args.email,
                                "force_consent": args.force_consent, "return_url": args.return_url }),
        )
    };
    if let Some((public, _)) = &sealing {
        body["seal_to"] = public.to_jwk();
    }
    if args.keep {
        body["keep"] = Value::Bool(true);
    }
    let created = crate::outbound::agent(Duration::from_secs(30))
        .post(&format!("{base}{path}"))
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
            eprintln!("{LABEL}: {e}");
            return ExitCode::from(1);
        }
    };
    if status != 200 {
        eprintln!("{LABEL}: {}", message_of(status, &session));
        if status == 404 && session["message"] == crate::error::Error::NotFound.message() {
            let also = "; and broker mode must be on there";
            eprintln!("{LABEL}: {}", not_served_hint("WK_CALLBACK_SERVER", also));
        }
        return ExitCode::from(1);
    }
    // A broker that predates kept connections ignores keep: it would hand the refresh token out.
    if args.keep && session["keep"] != Value::Bool(true) {
        eprintln!(
            "{LABEL}: the broker did not take --keep (a version without kept connections?); \
             not printing the link"
        );
        return ExitCode::from(1);
    }
    // A broker that predates sealing ignores seal_to: it would hand the tokens out in the clear.
    if sealing.is_some() && !session["seal_to"].is_object() {
        eprintln!(
            "{LABEL}: the broker did not take --seal-to (a version without sealed hand-offs?); \
             not printing the link"
        );
        return ExitCode::from(1);
    }
    for key in ["login_url", "expected_email", "expires_at"] {
        println!("{key}: {}", session[key].as_str().unwrap_or_default());
    }
    if let Some(url) = session["return_url"].as_str() {
        println!("return_url: {url}");
    }
    if !args.wait {
        return ExitCode::SUCCESS;
    }
    let handle = session["state"].as_str().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let pending = |status: u16, _: &Value| status == 202;
    let answer = poll(
        LABEL,
        deadline,
        pending,
        &[("Authorization", auth)],
        |wait| format!("{base}/token/{handle}?wait={wait}"),
    );
    match answer {
        Polled::TimedOut => {
            eprintln!("{LABEL}: timed out waiting for the sign-in");
            ExitCode::from(1)
        }
        Polled::Failed(message) => {
            eprintln!("{LABEL}: {message}");
            ExitCode::from(1)
        }
        Polled::Answer(200, body, json) => match &sealing {
            None => {
                println!("{body}");
                ExitCode::SUCCESS
            }
            Some(_) if !json["sealed"].is_string() => {
                eprintln!("{LABEL}: the broker answered without sealing; refusing the answer");
                ExitCode::from(1)
            }
            Some((_, None)) => {
                println!("{body}");
                ExitCode::SUCCESS
            }
            Some((_, Some(private))) => match open_answer(private, &body, Some(handle)) {
                Ok(claims) => {
                    println!("{claims}");
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("{LABEL}: the sealed answer: {message}");
                    ExitCode::from(1)
                }
            },
        },
        Polled::Answer(409, _, json) => {
            eprintln!(
                "{LABEL}: the sign-in failed: {}",
                json["reason"].as_str().unwrap_or("unknown")
            );
            ExitCode::from(2)
        }
        Polled::Answer(status, _, json) => {
            eprintln!("{LABEL}: {}", message_of(status, &json));
            ExitCode::from(1)
        }
    }
}

/// A secret read from the variable `env` names or the first line of stdin (`what` names it in
/// messages, never its value).
fn secret_from(env: Option<&str>, stdin: bool, what: &str) -> Result<Option<Secret>, String> {
    let secret = if let Some(name) = env {
        std::env::var(name).map_err(|_| {
            format!("the environment variable {name} ({what}) is not set (or not UTF-8)")
        })?
    } else if stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| format!("reading {what} from stdin: {e}"))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        return Ok(None);
    };
    if secret.trim().is_empty() {
        return Err(format!("{what} is empty"));
    }
    Ok(Some(Secret::new(secret.trim())))
}

/// `oauth-relay token CONNECTION`: asks the broker for the connection's access token, waiting
/// out refreshes the broker says are running (503 with Retry-After) until --timeout-secs.
pub fn token(args: TokenArgs) -> ExitCode {
    const LABEL: &str = "oauth-relay token";
    let fail = |message: String| {
        eprintln!("{LABEL}: {message}");
        ExitCode::from(1)
    };
    let base = match server_url(&args.server, "--server", "WK_CALLBACK_SERVER") {
        Ok(base) => base,
        Err(message) => return fail(message),
    };
    let bearer = match (&args.broker_token_env, &args.credential_env) {
        (Some(name), _) => secret_from(Some(name), false, "the broker token"),
        (None, env) => secret_from(env.as_deref(), args.credential_stdin, "the credential"),
    };
    let bearer = match bearer {
        Ok(Some(bearer)) => bearer,
        Ok(None) => {
            return fail(
                "give the connection's credential with --credential-env NAME or --credential-stdin (or the broker token with --broker-token-env NAME)"
                    .into(),
            )
        }
        Err(message) => return fail(message),
    };
    let sealing = match args.seal_to.as_deref().map(seal_key_file).transpose() {
        Ok(sealing) => sealing,
        Err(message) => return fail(format!("--seal-to: {message}")),
    };
    let mut body = serde_json::json!({ "min_ttl": args.min_ttl });
    if let Some((public, _)) = &sealing {
        body["seal_to"] = public.to_jwk();
    }
    let id: String =
        percent_encoding::utf8_percent_encode(&args.connection, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let url = format!("{base}/connections/{id}/token");
    let auth = format!("Bearer {}", bearer.expose());
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut backoff = Backoff::new();
    let (status, text, answer) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let sent =
            crate::outbound::agent(left.max(Duration::from_secs(1)) + Duration::from_secs(5))
                .post(&url)
                .header("Authorization", &auth)
                .content_type("application/json")
                .send(body.to_string());
        match sent {
            Ok(mut r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let text = r.body_mut().read_to_string().unwrap_or_default();
                let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                // A refresh still running, or the broker busy: retry within the deadline.
                let retry =
                    status == 503 && matches!(json["status"].as_str(), Some("pending" | "busy"));
                if !retry || Instant::now() >= deadline {
                    break (status, text, json);
                }
                match retry_after {
                    Some(secs) => std::thread::sleep(
                        Duration::from_secs(secs)
                            .min(deadline.saturating_duration_since(Instant::now())),
                    ),
                    None => backoff.pause(deadline),
                }
            }
            Err(e) => return fail(e.to_string()),
        }
    };
    match status {
        200 => {}
        409 if answer["status"] == "needs_reauth" => {
            eprintln!(
                "{LABEL}: the connection needs a new sign-in ({}): POST {base}/connections/{id}/reauthorize gives a login link for it",
                answer["reason"].as_str().unwrap_or("unknown")
            );
            return ExitCode::from(2);
        }
        404 if answer["message"] == crate::error::Error::NotFound.message() => {
            return fail(
                "no such connection, or the credential is not its own (404 Not found); \
                 with split listeners, --server is the internal listener"
                    .into(),
            )
        }
        status => return fail(message_of(status, &answer)),
    }
    let claims = match &sealing {
        None => answer,
        Some(_) if !answer["sealed"].is_string() => {
            return fail("the broker answered without sealing; refusing the answer".into())
        }
        Some((_, None)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Some((_, Some(private))) => match open_answer(private, &text, Some(&args.connection)) {
            Ok(claims) => claims,
            Err(message) => return fail(format!("the sealed answer: {message}")),
        },
    };
    match claims["access_token"].as_str() {
        Some(token) if !args.json => println!("{token}"),
        Some(_) => println!("{claims}"),
        None => return fail("the answer has no access_token".into()),
    }
    ExitCode::SUCCESS
}

/// A JWK file read whole; its content is never repeated in a message (it may hold a private key).
fn jwk_file(path: &std::path::Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|_| format!("{} does not hold a JWK (JSON)", path.display()))
}

/// The key `--seal-to` names: its public part (all that is sent), and the private key when the
/// file has it.
fn seal_key_file(path: &std::path::Path) -> Result<(SealKey, Option<PrivateKey>), String> {
    let jwk = jwk_file(path)?;
    if jwk.get("d").is_some() {
        let private = PrivateKey::from_jwk(&jwk)?;
        Ok((private.public(), Some(private)))
    } else {
        let public = SealKey::from_jwk(&jwk).map_err(|e| e.replacen("seal_to", "the key", 1))?;
        Ok((public, None))
    }
}

/// Opens a sealed answer (`{"sealed":"..."}`, or the JWE alone) and checks its claims as an
/// opener should: not expired, and for `audience` when given.
fn open_answer(key: &PrivateKey, text: &str, audience: Option<&str>) -> Result<Value, String> {
    let text = text.trim();
    let jwe = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(answer)) => answer
            .get("sealed")
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or("the JSON has no \"sealed\" member")?,
        _ => text.to_string(),
    };
    let claims = seal::open(key, &jwe)?;
    seal::check_claims(&claims, audience, std::time::SystemTime::now())?;
    Ok(claims)
}

pub fn keygen(args: KeygenArgs) -> ExitCode {
    const LABEL: &str = "oauth-relay keygen";
    let curve = match args.curve.as_str() {
        "x25519" => seal::Curve::X25519,
        _ => seal::Curve::P256,
    };
    let key = PrivateKey::generate(curve);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&args.out).and_then(|mut file| {
        use std::io::Write;
        writeln!(file, "{}", key.to_jwk())?;
        file.sync_all()
    });
    match written {
        Ok(()) => {
            println!("{}", key.public().to_jwk());
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            eprintln!(
                "{LABEL}: {} exists; keygen never overwrites a key",
                args.out.display()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{LABEL}: {}: {e}", args.out.display());
            ExitCode::from(1)
        }
    }
}

pub fn open(args: OpenArgs) -> ExitCode {
    const LABEL: &str = "oauth-relay open";
    let key = match jwk_file(&args.key).and_then(|jwk| PrivateKey::from_jwk(&jwk)) {
        Ok(key) => key,
        Err(message) => {
            eprintln!("{LABEL}: --key: {message}");
            return ExitCode::from(1);
        }
    };
    // An answer is a few kilobytes; a bound keeps a wrong pipe from filling memory.
    let mut text = String::new();
    let read = std::io::Read::read_to_string(
        &mut std::io::Read::take(std::io::stdin(), 1024 * 1024),
        &mut text,
    );
    if let Err(e) = read {
        eprintln!("{LABEL}: reading stdin: {e}");
        return ExitCode::from(1);
    }
    match open_answer(&key, &text, args.audience.as_deref()) {
        Ok(claims) => {
            println!("{claims}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("{LABEL}: {message}");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds_and_never_sleeps_past_the_deadline() {
        let mut backoff = Backoff::new();
        let mut seen = Vec::new();
        let already_passed = Instant::now();
        for _ in 0..8 {
            seen.push(backoff.next.as_millis());
            backoff.pause(already_passed);
        }
        assert_eq!(seen, [250, 500, 1000, 2000, 4000, 5000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next, Backoff::FIRST);
    }
}
