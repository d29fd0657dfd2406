//! The Python-compatible relay: `/callback` stores what the provider sent, `/api/callback/{state}`
//! hands it out once (optionally long-polling), `/api/states` registers states ahead of time
//! (optionally with the hash of a retrieval secret only the registering client holds).
//! Every answer here is the Python server's shape unless docs/api.md's
//! "Differences" says otherwise: a state with two different callbacks hands out neither, an
//! expired registration stays a tombstone for the TTL, and the owner of a registered state is
//! told "not yet" (202) and "expired" (410) in words of their own.

use crate::app::App;
use crate::error::{Error, Face};
use crate::events::Events;
use crate::http::{decode_segment, HttpRequest, Reply, Response, RETRIEVAL_SECRET_HEADER};
use crate::logging;
use crate::pages;
use crate::secret::{short_hash, RetrievalHash, Secret};
use crate::store::{Callback, Client, Proof, Put, Register, Take, Unavailable};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// States longer than this are refused, at registration and in callbacks (real ones are tens of
/// bytes): a bound on what a stranger can make us hold per entry.
pub const MAX_STATE_BYTES: usize = 1024;

/// Each parameter kept from a callback (code, error texts, issuer, ...) is refused past this
/// many bytes, and a callback past `MAX_CALLBACK_BYTES` of them together (the state aside): real
/// codes are tens to about two thousand bytes, issuers and error pages are URLs. With
/// `MAX_STATE_BYTES`, a bound on what a stranger can make us hold per entry whatever
/// `OAUTH_RELAY_MAX_URL_BYTES` allows; all of it counts against `OAUTH_RELAY_MAX_PENDING_BYTES`.
pub const MAX_PARAM_BYTES: usize = 4096;
pub const MAX_CALLBACK_BYTES: usize = 6144;

impl From<Unavailable> for Error {
    fn from(e: Unavailable) -> Self {
        logging::error("store_unavailable", json!({ "error": e.0 }));
        Error::Unavailable
    }
}

pub fn callback(app: &Arc<App>, req: &HttpRequest) -> Result<Reply, Error> {
    let state = req.query_param("state").ok_or(Error::MissingState)?;
    if state.len() > MAX_STATE_BYTES {
        return Err(Error::StateTooLong);
    }
    let callback = Callback {
        state: state.clone(),
        code: req.query_param("code").map(Secret::new),
        error: req.query_param("error"),
        error_description: req.query_param("error_description"),
        iss: req.query_param("iss"),
        session_state: req.query_param("session_state"),
        error_uri: req.query_param("error_uri"),
    };
    let too_long = callback
        .values()
        .iter()
        .any(|v| v.is_some_and(|v| v.len() > MAX_PARAM_BYTES));
    if too_long || callback.payload_bytes() > MAX_CALLBACK_BYTES {
        return Err(Error::CallbackTooLarge);
    }
    let client = Client::of(req.client_ip());
    let app = app.clone();
    Ok(Reply::awaiting(async move {
        store_callback(&app, state, callback, client)
            .await
            .unwrap_or_else(|e| Reply::Now(e.into_response_for(Face::Page)))
    }))
}

/// Stores what `/callback` brought and says so: the page, or the refusal.
async fn store_callback(
    app: &Arc<App>,
    state: String,
    callback: Callback,
    client: Client,
) -> Result<Reply, Error> {
    let outcome = if callback.error.is_some() {
        "provider_error"
    } else {
        "code"
    };
    // The page is rendered only when shown, from what this request carries (a reload shows the
    // same page); the callback itself moves into the store.
    let (error, description) = (callback.error.clone(), callback.error_description.clone());
    let has_code = callback.code.is_some();
    let put =
        app.store
            .clone()
            .put_callback_async(callback, app.config.require_registered_state, client);
    // Whether it was stored, and then whether for a registered state (its completion event).
    let stored = match put.await? {
        stored @ (Put::Stored | Put::StoredRegistered) => {
            // The fields (a hash among them) are built only when the line is written.
            if logging::enabled(logging::Level::Info) {
                logging::from_anyone(
                    logging::Level::Info,
                    "callback_stored",
                    json!({ "state": short_hash(&state), "outcome": outcome }),
                );
            }
            app.notify_here("relay", &state);
            Some(stored == Put::StoredRegistered)
        }
        // A person reloading the page: same page, nothing changes.
        Put::Repeated => None,
        Put::Conflicted => {
            logging::from_anyone(
                logging::Level::Warn,
                "callback_conflict",
                json!({ "state": short_hash(&state), "effect": "neither callback is handed out" }),
            );
            // A long-poll waiting for this state is answered with the conflict now.
            app.notify_here("relay", &state);
            let refused = Error::SignInConflict.into_response_for(Face::Page);
            return Ok(with_event(
                app,
                move |events: &Events| events.callback_conflict(&state),
                refused,
            ));
        }
        Put::InConflict => return Err(Error::SignInConflict),
        Put::Conflict => {
            logging::from_anyone(
                logging::Level::Warn,
                "callback_conflict",
                json!({ "state": short_hash(&state) }),
            );
            return Err(Error::StateConflict);
        }
        Put::NotRegistered => {
            logging::from_anyone(
                logging::Level::Warn,
                "callback_unregistered",
                json!({ "state": short_hash(&state) }),
            );
            return Err(Error::StateNotRegistered);
        }
        Put::Expired => {
            logging::from_anyone(
                logging::Level::Warn,
                "callback_after_registration_expired",
                json!({ "state": short_hash(&state) }),
            );
            return Err(Error::StateExpired);
        }
        Put::Full => {
            logging::from_anyone(
                logging::Level::Warn,
                "store_full",
                json!({ "max_pending": app.config.max_pending }),
            );
            return Err(Error::StoreFull);
        }
        Put::Quota => return Err(share_used_up(app)),
    };
    let page = match &error {
        None => pages::relay_success(),
        Some(e) => pages::relay_failure(Some(e), description.as_deref()).into(),
    };
    let page = Response::html(200, page);
    Ok(match stored {
        Some(registered) => with_event(
            app,
            move |events: &Events| {
                events.callback_received(&state, has_code, error.as_deref(), registered)
            },
            page,
        ),
        None => Reply::Now(page),
    })
}

/// `response`, once the completion event `emit` makes is in the outbox (when events are on).
/// An outbox in Redis is written by blocking calls (the store then blocks too, as the outbox
/// is in Redis exactly when the store is): those go to the blocking pool.
fn with_event(
    app: &Arc<App>,
    emit: impl FnOnce(&Events) + Send + 'static,
    response: Response,
) -> Reply {
    let Some(events) = app.events.clone() else {
        return Reply::Now(response);
    };
    if !app.store.blocks() {
        emit(&events);
        return Reply::Now(response);
    }
    Reply::later(move || {
        emit(&events);
        response
    })
}

/// A client's share of pending entries is used up: counted, and refused (429).
fn share_used_up(app: &App) -> Error {
    app.pending_share_refused
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    logging::from_anyone(
        logging::Level::Warn,
        "pending_share_full",
        json!({ "max_pending_per_client": app.config.max_pending_per_client }),
    );
    Error::TooManyPending
}

pub fn retrieve(app: &Arc<App>, req: &HttpRequest, raw_state: &str) -> Result<Reply, Error> {
    let proof = proof_of(app, req)?;
    let state = decode_segment(raw_state)
        .filter(|s| !s.is_empty())
        .ok_or(Error::CallbackNotFound)?;
    let asked_to_wait = req.query_param("wait").is_some();
    let wait = app.wait_param(req)?;
    let app = app.clone();
    Ok(Reply::awaiting(async move {
        let first = app
            .store
            .clone()
            .take_callback_async(state.clone(), proof.clone());
        let found = match first.await {
            Ok(found) => found,
            Err(e) => return Reply::Now(Error::from(e).into_response()),
        };
        let wait = match &found {
            Take::Missing if !wait.is_zero() => wait,
            // The owner is answered when the registration ends, not at its own deadline.
            Take::Pending { expires_in } if !wait.is_zero() => {
                wait.min(*expires_in + EXPIRY_MARGIN)
            }
            _ => return Reply::Now(answer(&state, found, asked_to_wait)),
        };
        let key = app.store.waiter_key("relay", &state);
        let (ready_state, ready_proof) = (state.clone(), proof.clone());
        crate::app::long_poll_async(
            &app,
            key,
            wait,
            move |app| {
                let has = app
                    .store
                    .clone()
                    .has_callback_async(ready_state.clone(), ready_proof.clone());
                async move { has.await.unwrap_or(true) }
            },
            move |app| {
                let take = app.store.clone().take_callback_async(state.clone(), proof);
                async move {
                    take.await
                        .map(|found| answer(&state, found, true))
                        .unwrap_or_else(|e| Error::from(e).into_response())
                }
            },
        )
    }))
}

/// How long past a registration's end a long-poll parked on it waits before asking again: the
/// store's clock (Redis's, with several replicas) and ours may differ by that much.
const EXPIRY_MARGIN: Duration = Duration::from_millis(100);

/// What a retrieval shows. With an API token configured, a request without it is refused at
/// once (401), whatever else it carries: a retrieval secret is no way past the token (it let
/// anyone park long-polls and fill OAUTH_RELAY_MAX_WAITERS). Then the hash of its
/// `X-Retrieval-Secret` (hashed at once; the secret itself goes no further), which opens only a
/// state registered with that hash.
fn proof_of(app: &App, req: &HttpRequest) -> Result<Proof, Error> {
    app.authorize(req)?;
    let secret = req
        .header(RETRIEVAL_SECRET_HEADER)
        .filter(|s| !s.is_empty())
        .map(RetrievalHash::of_secret);
    Ok(Proof {
        secret,
        authorized: true,
    })
}

/// The answer to a retrieval that found `found`, as the Python server answers where it had an
/// answer. A request without the right to the callback was told `Missing` by the store and gets
/// the unknown state's answer, byte for byte. To the owner of a registered state "not yet" is an
/// answer of its own (202, with the seconds its registration has left) when it asked to
/// `wait`; a plain retrieval says 404, as the Python server did.
fn answer(state: &str, found: Take, asked_to_wait: bool) -> Response {
    match found {
        Take::Taken(cb) => {
            if logging::enabled(logging::Level::Info) {
                logging::info("callback_retrieved", json!({ "state": short_hash(state) }));
            }
            Response::json(
                200,
                &json!({
                    "status": "success",
                    "auth_code": cb.code.as_ref().map(Secret::expose),
                    "state": cb.state,
                    "error": cb.error,
                    "error_description": cb.error_description,
                    "iss": cb.iss,
                    "session_state": cb.session_state,
                    "error_uri": cb.error_uri,
                }),
            )
            .with_header("Cache-Control", "no-store")
        }
        Take::Pending { expires_in } if asked_to_wait => Response::json(
            202,
            &json!({
                "status": "pending",
                "message": "The callback has not arrived yet",
                "state": state,
                // Whole seconds, rounded up: 0 only once it has expired.
                "expires_in": expires_in.as_millis().div_ceil(1000) as u64,
            }),
        )
        .with_header("Cache-Control", "no-store"),
        // The Python server's answers, not failures of this request.
        Take::AlreadyTaken => Error::CallbackGone.into_response(),
        Take::Missing | Take::Pending { .. } => Error::CallbackNotFound.into_response(),
        Take::Expired => Error::RegistrationExpired.into_response(),
        Take::Conflict => Error::CallbackConflict.into_response(),
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

/// `POST /api/states`. With an API token configured, registering needs it, like everything
/// under `/api/` (with a hash or without); such a registration is a trusted caller's and counts
/// against no client's share. Without one, anyone may register a state with the hash of their
/// own retrieval secret: on such a server whoever knows a state can already take its code, so a
/// stranger gains no code it could not take anyway (though it can take one quietly from a
/// client that does not register: docs/api.md, "Who may register"), and the client gets a code
/// nobody else can take. Those
/// self-registrations count against the client's share of `OAUTH_RELAY_MAX_PENDING`. A
/// registration without a hash and without a token would open the callback to everyone, as no
/// registration does, so it is refused, naming the setting that allows it.
pub fn register(app: &Arc<App>, req: &HttpRequest) -> Result<Reply, Error> {
    app.authorize(req)?;
    let trusted = app.config.api_token.is_some();
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
    if guard.is_none() && !trusted {
        return Err(Error::BadRequest(
            "retrieval_hash is required (registering without one needs OAUTH_RELAY_API_TOKEN)",
        ));
    }
    let client = (!trusted).then(|| Client::of(req.client_ip()));
    let (app, state) = (app.clone(), state.to_owned());
    Ok(Reply::awaiting(async move {
        let guarded = guard.is_some();
        let registered = app
            .store
            .clone()
            .register_async(state.clone(), ttl, guard, client);
        let answer = match registered.await {
            Ok(Register::Registered { expires_at }) => {
                logging::from_anyone(
                    logging::Level::Info,
                    "state_registered",
                    json!({ "state": short_hash(&state), "ttl_secs": ttl.as_secs(),
                            "retrieval_secret": guarded }),
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
            Ok(Register::Exists) => Err(Error::StateExists),
            Ok(Register::Full) => Err(Error::StoreFull),
            Ok(Register::Quota) => Err(share_used_up(&app)),
            Err(e) => Err(Error::from(e)),
        };
        Reply::Now(answer.unwrap_or_else(Error::into_response))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_are_the_ones_the_refusal_names() {
        let message = Error::CallbackTooLarge.message();
        assert!(message.contains(&MAX_PARAM_BYTES.to_string()), "{message}");
        assert!(
            message.contains(&MAX_CALLBACK_BYTES.to_string()),
            "{message}"
        );
        const { assert!(MAX_PARAM_BYTES < MAX_CALLBACK_BYTES) };
    }
}
