//! The Python-compatible relay: `/callback` stores what the provider sent, `/api/callback/{state}`
//! hands it out once (optionally long-polling), `/api/states` registers states ahead of time
//! (optionally with the hash of a retrieval secret only the registering client holds),
//! `/health` reports. Every answer here is the Python server's shape unless the README's
//! "Differences" says otherwise.

use crate::app::App;
use crate::error::Error;
use crate::http::{decode_segment, HttpRequest, Reply, Response};
use crate::logging;
use crate::pages;
use crate::secret::{short_hash, RetrievalHash, Secret};
use crate::store::{Callback, Proof, Put, Register, Take, Unavailable};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// States longer than this are refused, at registration and in callbacks (real ones are tens of
/// bytes): a bound on what a stranger can make us hold per entry.
pub const MAX_STATE_BYTES: usize = 1024;

/// The header a retrieval presents its retrieval secret in: a header, not a query parameter, so
/// it stays out of access logs, proxy logs and browser history.
pub const RETRIEVAL_SECRET_HEADER: &str = "X-Retrieval-Secret";

impl From<Unavailable> for Error {
    fn from(e: Unavailable) -> Self {
        logging::error("store_unavailable", json!({ "error": e.0 }));
        Error::Unavailable
    }
}

/// Liveness: answers 200 without waiting on the store. With a shared store out of reach the
/// status is `degraded` and the count `null`; `/ready` is what takes the replica out of service.
pub fn health(app: &App) -> Result<Response, Error> {
    let active = app.store.active_callbacks_now();
    Ok(Response::json(
        200,
        &json!({
            "status": if active.is_some() { "healthy" } else { "degraded" },
            "service": "oauth-callback-server",
            "timestamp": humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            "active_callbacks": active,
        }),
    ))
}

/// Readiness: 200 while the store answers, 503 otherwise.
pub fn ready(app: &App) -> Result<Response, Error> {
    match app.store.ping() {
        Ok(()) => Ok(Response::json(200, &json!({ "status": "ready" }))),
        Err(e) => {
            logging::warn("not_ready", json!({ "error": e.0 }));
            Ok(Response::json(
                503,
                &json!({ "status": "unavailable", "message": "State storage is unavailable" }),
            ))
        }
    }
}

pub fn callback(app: &App, req: &HttpRequest) -> Result<Response, Error> {
    let state = req.query_param("state").ok_or(Error::MissingState)?;
    if state.len() > MAX_STATE_BYTES {
        return Err(Error::StateTooLong);
    }
    let callback = Callback {
        state: state.clone(),
        code: req.query_param("code").map(Secret::new),
        error: req.query_param("error"),
        error_description: req.query_param("error_description"),
    };
    let outcome = if callback.error.is_some() {
        "provider_error"
    } else {
        "code"
    };
    // The page is rendered only when shown, from what this request carries (a reload shows the
    // same page); the callback itself moves into the store.
    let (error, description) = (callback.error.clone(), callback.error_description.clone());
    let has_code = callback.code.is_some();
    match app
        .store
        .put_callback(callback, app.config.require_registered_state)?
    {
        Put::Stored => {
            // The fields (a hash among them) are built only when the line is written.
            if logging::enabled(logging::Level::Info) {
                logging::info(
                    "callback_stored",
                    json!({ "state": short_hash(&state), "outcome": outcome }),
                );
            }
            app.notify("relay", &state);
            crate::events::callback_received(app, &state, has_code, error.as_deref());
        }
        // A person reloading the page: same page, nothing changes.
        Put::Repeated => {}
        Put::Conflict => {
            logging::warn("callback_conflict", json!({ "state": short_hash(&state) }));
            return Err(Error::StateConflict);
        }
        Put::NotRegistered => {
            logging::warn(
                "callback_unregistered",
                json!({ "state": short_hash(&state) }),
            );
            return Err(Error::StateNotRegistered);
        }
        Put::Full => {
            logging::warn(
                "store_full",
                json!({ "max_pending": app.config.max_pending }),
            );
            return Err(Error::StoreFull);
        }
    }
    let page = match error {
        None => pages::relay_success(),
        Some(e) => pages::relay_failure(Some(&e), description.as_deref()).into(),
    };
    Ok(Response::html(200, page))
}

pub fn retrieve(app: &Arc<App>, req: &HttpRequest, raw_state: &str) -> Result<Reply, Error> {
    let proof = proof_of(app, req)?;
    let state = decode_segment(raw_state)
        .filter(|s| !s.is_empty())
        .ok_or(Error::CallbackNotFound)?;
    let wait = wait_param(app, req)?;
    let response = take(app, &state, &proof)?;
    if response.status != 404 || wait.is_zero() {
        return Ok(Reply::Now(response));
    }
    let key = app.store.waiter_key("relay", &state);
    let (ready_state, ready_proof) = (state.clone(), proof.clone());
    Ok(crate::app::long_poll(
        app,
        key,
        wait,
        move |app| {
            app.store
                .has_callback_for(&ready_state, &ready_proof)
                .unwrap_or(true)
        },
        move |app| {
            take(app, &state, &proof)
                .unwrap_or_else(|e| e.into_response())
                .tagged("/api/callback/{state}", Some(&state))
        },
    ))
}

/// What a retrieval shows: the hash of its `X-Retrieval-Secret` (hashed at once; the secret
/// itself goes no further), and whether it passed the API token check. With neither it is
/// refused (401) as before retrieval secrets existed; a secret without the token may still
/// open the callback that secret guards, and nothing else.
fn proof_of(app: &App, req: &HttpRequest) -> Result<Proof, Error> {
    let secret = req
        .header(RETRIEVAL_SECRET_HEADER)
        .filter(|s| !s.is_empty())
        .map(RetrievalHash::of_secret);
    let authorized = app.authorize(req);
    if secret.is_none() {
        authorized.clone()?;
    }
    Ok(Proof {
        secret,
        authorized: authorized.is_ok(),
    })
}

/// `?wait=SECONDS`, capped at `OAUTH_RELAY_MAX_WAIT_SECS`; zero when absent. Any whole number
/// is capped, however many digits it has (a client may ask for "as long as you allow").
pub fn wait_param(app: &App, req: &HttpRequest) -> Result<Duration, Error> {
    Ok(match req.query_param("wait") {
        None => Duration::ZERO,
        Some(w) => {
            let digits = w.strip_prefix('+').unwrap_or(&w);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::BadRequest("wait must be a whole number of seconds"));
            }
            Duration::from_secs(digits.parse::<u64>().unwrap_or(u64::MAX)).min(app.config.max_wait)
        }
    })
}

/// One retrieval attempt, answered as the Python server answers it. A request without the
/// right to the callback gets the unknown state's answer, and the callback stays.
fn take(app: &App, state: &str, proof: &Proof) -> Result<Response, Error> {
    match app.store.take_callback_by(state, proof)? {
        Take::Taken(cb) => {
            if logging::enabled(logging::Level::Info) {
                logging::info("callback_retrieved", json!({ "state": short_hash(state) }));
            }
            Ok(Response::json(
                200,
                &json!({
                    "status": "success",
                    "auth_code": cb.code.as_ref().map(Secret::expose),
                    "state": cb.state,
                    "error": cb.error,
                    "error_description": cb.error_description,
                }),
            )
            .with_header("Cache-Control", "no-store"))
        }
        // The Python server's answers, not failures of this request.
        Take::AlreadyTaken => Ok(Error::CallbackGone.into_response()),
        Take::Missing => Ok(Error::CallbackNotFound.into_response()),
    }
}

/// A JSON number that is a whole number (`300`, and `300.0`, an integer to JSON Schema), at
/// least 0; one past `u64` is `u64::MAX` (capped by the caller anyway).
fn whole_number(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0)
            .map(|f| f as u64) // saturates
    })
}

/// The keys of a `POST /api/states` body; any other is refused (400) naming it.
const REGISTRATION_KEYS: &[&str] = &["state", "ttl_secs", "retrieval_hash"];

/// `POST /api/states`. Registering without a `retrieval_hash` needs the API token, as always.
/// With one, in registered-states mode, it needs nothing else: the client proves its claim on
/// the callback with the secret, not with a token shared by every client. Outside that mode a
/// hash still needs the token: there, states nobody registered are accepted, and a stranger who
/// saw such a state in an authorization URL could otherwise register it first, under their own
/// secret, and collect its code. In registered-states mode every state is registered before
/// its URL exists, so it can only be claimed twice (409).
pub fn register(app: &App, req: &HttpRequest) -> Result<Response, Error> {
    let open = app.config.require_registered_state;
    let refused = if app.config.api_token.is_none() {
        Error::RegistrationDisabled
    } else {
        Error::Unauthorized
    };
    let authorized = app.config.api_token.is_some() && app.authorize(req).is_ok();
    if !authorized && !open {
        return Err(refused);
    }
    let body = crate::json_body::object(&req.body, REGISTRATION_KEYS)?;
    let state = body
        .get("state")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= MAX_STATE_BYTES)
        .ok_or(Error::BadRequest(
            "state must be a non-empty string of at most 1024 bytes",
        ))?;
    let ttl = match body.get("ttl_secs") {
        None | Some(Value::Null) => app.config.ttl,
        Some(v) => Duration::from_secs(whole_number(v).filter(|n| *n > 0).ok_or(
            Error::BadRequest("ttl_secs must be a positive whole number"),
        )?)
        .min(app.config.ttl),
    };
    let guard = match body.get("retrieval_hash") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_str().and_then(RetrievalHash::parse).ok_or(
            Error::BadRequest(
                "retrieval_hash must be base64url(SHA-256(retrieval secret)) without padding (43 characters)",
            ),
        )?),
    };
    if guard.is_none() && !authorized {
        return Err(match refused {
            // Registered-states mode without an API token: every registration carries a hash.
            Error::RegistrationDisabled => Error::BadRequest(
                "retrieval_hash is required (registering without one needs OAUTH_RELAY_API_TOKEN)",
            ),
            other => other,
        });
    }
    match app.store.register_guarded(state, ttl, guard.as_ref())? {
        Register::Registered { expires_at } => {
            logging::info(
                "state_registered",
                json!({ "state": short_hash(state), "ttl_secs": ttl.as_secs(),
                        "retrieval_secret": guard.is_some() }),
            );
            Ok(Response::json(
                201,
                &json!({
                    "status": "registered",
                    "state": state,
                    "expires_at": humantime::format_rfc3339_seconds(expires_at).to_string(),
                }),
            ))
        }
        Register::Exists => Err(Error::StateExists),
        Register::Full => Err(Error::StoreFull),
    }
}
