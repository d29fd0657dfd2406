//! The Microsoft 365 login broker: a trusted caller creates a session for an expected e-mail,
//! the person opens the link, Microsoft signs them in, we redeem the code with PKCE, check the
//! account and tenant, and hand the tokens to the caller once. Every failure fails closed with a
//! reason code, an audit line and a page the person understands.

use crate::app::App;
use crate::audit;
use crate::broker_config::{read_only_scopes, BrokerConfig};
use crate::broker_pages::{self, Lang};
use crate::error::Error;
use crate::http::{decode_segment, HttpRequest, Reply, Response};
use crate::logging;
use crate::provider::{AuthorizeRequest, Failure, Provider};
use crate::secret::{short_hash, Secret};
use crate::store::{Session, SessionStatus, StateTake, TokenTake, Tokens};
use base64::Engine;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub struct Broker {
    pub config: BrokerConfig,
    pub provider: Arc<dyn Provider>,
    /// Code exchanges running now (each on its own thread), bounded by `max_exchanges`.
    exchanges: Arc<AtomicUsize>,
}

impl Broker {
    pub fn new(config: BrokerConfig, provider: Arc<dyn Provider>) -> Self {
        Broker {
            config,
            provider,
            exchanges: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Callers authenticate with the broker token, except on /status and /token when the
    /// operator allows handle-only access.
    fn authorize(&self, req: &HttpRequest, handle_only_ok: bool) -> Result<(), Error> {
        if handle_only_ok && self.config.handle_only {
            return Ok(());
        }
        match req.bearer_token() {
            Some(t) if self.config.broker_token.matches(t) => Ok(()),
            _ => Err(Error::BrokerUnauthorized),
        }
    }
}

fn broker(app: &App) -> Result<&Broker, Error> {
    app.broker.as_ref().ok_or(Error::NotFound)
}

/// 128 random bits, base64url: link ids, OAuth states, retrieval handles.
fn random_id(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the system random source failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

fn pkce_challenge(verifier: &Secret) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.expose().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn plausible_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else {
        return false;
    };
    e.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && e.chars()
            .all(|c| c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control()))
}

/// `POST /m365/sessions`
pub fn create_session(app: &App, req: &HttpRequest) -> Result<Response, Error> {
    let broker = broker(app)?;
    broker.authorize(req, false)?;
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|_| Error::BadRequest("Body must be a JSON object"))?;
    let email = body["expected_email"]
        .as_str()
        .map(str::trim)
        .filter(|e| plausible_email(e))
        .ok_or(Error::BadRequest(
            "expected_email must be an e-mail address",
        ))?
        .to_string();
    let force_consent = match &body["force_consent"] {
        Value::Null => false,
        Value::Bool(b) => *b,
        _ => return Err(Error::BadRequest("force_consent must be true or false")),
    };
    let mut scopes = match &body["scopes"] {
        Value::Null => broker.config.scopes.clone(),
        Value::String(s) => read_only_scopes(s).map_err(|_| Error::WriteScope)?,
        Value::Array(list) => {
            let joined: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
            if joined.len() != list.len() {
                return Err(Error::BadRequest("scopes must be strings"));
            }
            read_only_scopes(&joined.join(" ")).map_err(|_| Error::WriteScope)?
        }
        _ => {
            return Err(Error::BadRequest(
                "scopes must be a string or a list of strings",
            ))
        }
    };
    // offline_access brings the refresh token; openid brings the id_token whose `tid` the
    // tenant check reads. Both are sign-in scopes, not data access.
    for needed in ["openid", "offline_access"] {
        if !scopes.iter().any(|s| s == needed) {
            scopes.insert(0, needed.into());
        }
    }
    let expires_at = SystemTime::now() + app.config.ttl;
    let session = Session {
        handle: random_id(16),
        link_id: random_id(16),
        oauth_state: random_id(16),
        verifier: Secret::new(random_id(32)),
        expected_email: email.clone(),
        force_consent,
        scopes,
        expires_at,
    };
    let (handle, link_id) = (session.handle.clone(), session.link_id.clone());
    if !app.store.create_session(session)? {
        return Err(Error::StoreFull);
    }
    audit::record(
        "link_created",
        Some(&handle),
        Some(&email),
        json!({ "force_consent": force_consent }),
    );
    let base = &broker.config.public_base_url;
    Ok(Response::json(
        200,
        &json!({
            "state": handle,
            "expected_email": email,
            "login_url": format!("{base}/m365/start/{link_id}"),
            "status_url": format!("{base}/status/{handle}"),
            "expires_at": rfc3339(expires_at),
        }),
    )
    .with_header("Cache-Control", "no-store"))
}

/// `GET /m365/start/{link_id}`: redirects to Microsoft. Opening it does not use it up (chat
/// apps fetch links to draw previews).
pub fn start(app: &App, req: &HttpRequest, raw_link: &str) -> Result<Response, Error> {
    let broker = broker(app)?;
    let lang = Lang::from_accept_language(req.header("accept-language"));
    let link = decode_segment(raw_link).unwrap_or_default();
    let Some((session, status)) = app.store.session_by_link(&link)? else {
        return Ok(broker_pages::failure(lang, "link_unknown"));
    };
    if session.expires_at <= SystemTime::now() {
        return Ok(broker_pages::failure(lang, "link_expired"));
    }
    match status {
        SessionStatus::Pending => {}
        SessionStatus::Ready | SessionStatus::Consumed => {
            return Ok(broker_pages::failure(lang, "already_connected"))
        }
        SessionStatus::Failed(_) => return Ok(broker_pages::failure(lang, "link_used")),
    }
    audit::record(
        "link_opened",
        Some(&session.handle),
        Some(&session.expected_email),
        json!({}),
    );
    let url = broker.provider.authorize_url(&AuthorizeRequest {
        state: &session.oauth_state,
        code_challenge: &pkce_challenge(&session.verifier),
        login_hint: &session.expected_email,
        scopes: &session.scopes,
        force_consent: session.force_consent,
    });
    Ok(Response::html(
        302,
        crate::pages::page("Microsoft sign-in", "Opening Microsoft sign-in…", &[], true),
    )
    .with_header("Location", url))
}

/// `GET /m365/callback`: takes the OAuth state once, then redeems the code on its own thread.
pub fn callback(app: &Arc<App>, req: &HttpRequest) -> Result<Reply, Error> {
    let broker = broker(app)?;
    let lang = Lang::from_accept_language(req.header("accept-language"));
    let fail_early = |reason: &str, handle: Option<&str>, email: Option<&str>| {
        audit::record(
            "callback_failed",
            handle,
            email,
            json!({ "reason": reason }),
        );
        Ok(Reply::Now(broker_pages::failure(lang, reason)))
    };
    let Some(state) = req.query_param("state") else {
        return fail_early("state_missing", None, None);
    };
    // Checked before the state is taken, so a person turned away by load can simply reload.
    let slot = ExchangeSlot::acquire(&broker.exchanges, broker.config.max_exchanges);
    let Some(slot) = slot else {
        return Ok(Reply::Now(broker_pages::failure(lang, "unavailable")));
    };
    let session = match app.store.take_oauth_state(&state)? {
        StateTake::Taken(session) => session,
        StateTake::Unknown => return fail_early("state_unknown", None, None),
        StateTake::Expired => {
            audit::record(
                "state_expired",
                None,
                None,
                json!({ "state": short_hash(&state) }),
            );
            return fail_early("state_expired", None, None);
        }
        StateTake::Reused(status) => {
            audit::record(
                "callback_failed",
                None,
                None,
                json!({ "reason": "state_reused", "status": status.name() }),
            );
            // A reload of a finished sign-in: reassure, and change nothing.
            let page = match status {
                SessionStatus::Ready | SessionStatus::Consumed => "already_connected",
                _ => "state_reused",
            };
            return Ok(Reply::Now(broker_pages::failure(lang, page)));
        }
    };
    if let Some(error) = req.query_param("error") {
        let reason = if error == "access_denied" {
            "access_denied"
        } else {
            "provider_error"
        };
        let description = req.query_param("error_description").unwrap_or_default();
        let failure = Failure {
            reason,
            detail: format!("{error}: {}", description.lines().next().unwrap_or("")),
            hint: crate::provider::microsoft::hint_for(&description),
        };
        return Ok(Reply::Now(finish(app, &session, Err(failure), lang)));
    }
    let Some(code) = req.query_param("code") else {
        let failure = Failure {
            reason: "provider_error",
            detail: "the callback has neither code nor error".into(),
            hint: None,
        };
        return Ok(Reply::Now(finish(app, &session, Err(failure), lang)));
    };
    let app = app.clone();
    Ok(Reply::later(move || {
        let _slot = slot;
        let outcome = redeem(&app, &session, &Secret::new(code));
        finish(&app, &session, outcome, lang)
    }))
}

/// Code exchange and identity checks, within the configured total time.
fn redeem(app: &App, session: &Session, code: &Secret) -> Result<Tokens, Failure> {
    let broker = app.broker.as_ref().expect("callback runs in broker mode");
    let deadline = Instant::now() + broker.config.exchange_timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let grant =
        broker
            .provider
            .exchange(code.expose(), &session.verifier, &session.scopes, left())?;
    let refresh_token = grant.refresh_token.clone().ok_or(Failure {
        reason: "no_refresh_token",
        detail: "the token response has no refresh_token".into(),
        hint: Some("include offline_access in WK_M365_SCOPES and make sure the app may request it"),
    })?;
    let identity = broker.provider.identity(&grant, left())?;
    if identity.email.is_empty() || identity.email != session.expected_email.to_lowercase() {
        return Err(Failure {
            reason: "email_mismatch",
            detail: format!("signed in as {}", audit::mask_email(&identity.email)),
            hint: None,
        });
    }
    if let Some(tenant) = broker.config.pinned_tenant() {
        if identity.tenant.as_deref() != Some(tenant.to_lowercase().as_str()) {
            return Err(Failure {
                reason: "tenant_mismatch",
                detail: format!("id_token tid is {:?}", identity.tenant),
                hint: None,
            });
        }
    }
    Ok(Tokens {
        access_token: grant.access_token,
        refresh_token,
        id_token: grant.id_token,
        token_type: grant.token_type,
        scope: grant.scope,
        expiry: grant.expiry,
        email: identity.email,
    })
}

/// Records the outcome, wakes waiting callers, audits, and picks the page.
fn finish(app: &App, session: &Session, outcome: Result<Tokens, Failure>, lang: Lang) -> Response {
    let handle = &session.handle;
    let email = Some(session.expected_email.as_str());
    let failed = outcome.as_ref().err().map(|f| f.reason);
    let (stored, page) = match outcome {
        Ok(tokens) => {
            audit::record("callback_succeeded", Some(handle), email, json!({}));
            (
                app.store.finish_session(handle, Ok(tokens)),
                broker_pages::success(lang),
            )
        }
        Err(f) => {
            audit::record(
                "callback_failed",
                Some(handle),
                email,
                json!({ "reason": f.reason, "detail": f.detail, "fix": f.hint }),
            );
            (
                app.store.finish_session(handle, Err(f.reason.to_string())),
                broker_pages::failure(lang, f.reason),
            )
        }
    };
    app.notify("broker", handle);
    // Completion event for the operator's endpoint (issue 9): queued, never sent from here.
    if stored.is_ok() {
        crate::events::sign_in_finished(app, handle, "m365", failed);
    }
    match stored {
        Ok(()) => page,
        Err(e) => {
            logging::error("store_unavailable", json!({ "error": e.0 }));
            broker_pages::failure(lang, "unavailable")
        }
    }
}

/// `GET /status/{handle}`
pub fn status(app: &App, req: &HttpRequest, raw: &str) -> Result<Response, Error> {
    broker(app)?.authorize(req, true)?;
    let handle = decode_segment(raw).unwrap_or_default();
    Ok(match app.store.session_status(&handle)? {
        None => Response::json(404, &json!({ "state": handle, "status": "not_found" })),
        Some((session, status)) => {
            let mut body = json!({
                "state": handle,
                "status": status.name(),
                "expected_email": session.expected_email,
                "expires_at": rfc3339(session.expires_at),
            });
            if let SessionStatus::Failed(reason) = &status {
                body["reason"] = reason.clone().into();
            }
            Response::json(200, &body)
        }
    }
    .with_header("Cache-Control", "no-store"))
}

/// `GET /token/{handle}[?wait=SECONDS]`
pub fn token(app: &Arc<App>, req: &HttpRequest, raw: &str) -> Result<Reply, Error> {
    broker(app)?.authorize(req, true)?;
    let handle = decode_segment(raw).unwrap_or_default();
    let wait = crate::relay::wait_param(app, req)?;
    let response = take_tokens(app, &handle)?;
    if response.status != 202 || wait.is_zero() {
        return Ok(Reply::Now(response));
    }
    let ready_handle = handle.clone();
    Ok(crate::app::long_poll(
        app,
        app.store.waiter_key("broker", &handle),
        wait,
        move |app| {
            !matches!(
                app.store.session_status(&ready_handle),
                Ok(Some((_, SessionStatus::Pending)))
            )
        },
        move |app| {
            take_tokens(app, &handle)
                .unwrap_or_else(|e| e.into_response())
                .tagged("/token/{state}", Some(&handle))
        },
    ))
}

fn take_tokens(app: &App, handle: &str) -> Result<Response, Error> {
    Ok(match app.store.take_tokens(handle)? {
        TokenTake::Taken(t) => {
            audit::record("tokens_retrieved", Some(handle), Some(&t.email), json!({}));
            Response::json(
                200,
                &json!({
                    "access_token": t.access_token.expose(),
                    "refresh_token": t.refresh_token.expose(),
                    "id_token": t.id_token.as_ref().map(Secret::expose),
                    "token_type": t.token_type,
                    "expiry": humantime::format_rfc3339_seconds(t.expiry).to_string(),
                    "scope": t.scope,
                    "email": t.email,
                }),
            )
        }
        TokenTake::Pending => Response::json(202, &json!({ "status": "pending" })),
        TokenTake::Consumed => Response::json(
            410,
            &json!({ "status": "consumed", "message": "Tokens already retrieved" }),
        ),
        TokenTake::Failed(reason) => Response::json(
            409,
            &json!({ "status": "failed", "reason": reason, "message": "The sign-in failed" }),
        ),
        TokenTake::NotFound => Response::json(
            404,
            &json!({ "status": "not_found", "message": "Unknown or expired session" }),
        ),
    }
    .with_header("Cache-Control", "no-store"))
}

/// A place among the concurrently running exchanges, given back on drop.
struct ExchangeSlot(Arc<AtomicUsize>);

impl ExchangeSlot {
    fn acquire(counter: &Arc<AtomicUsize>, max: usize) -> Option<ExchangeSlot> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ExchangeSlot(counter.clone()))
    }
}

impl Drop for ExchangeSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_long_and_distinct() {
        let a = random_id(16);
        assert_eq!(a.len(), 22);
        assert_ne!(a, random_id(16));
    }

    #[test]
    fn pkce_matches_rfc7636_example() {
        let v = Secret::new("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(
            pkce_challenge(&v),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn email_plausibility() {
        assert!(plausible_email("ana.silva@contoso.example"));
        assert!(plausible_email("joão@empresa.com.br"));
        for bad in [
            "", "ana", "@x.y", "a@b", "a b@c.d", "a@.c", "a@b.c.", "a@b@c.d",
        ] {
            assert!(!plausible_email(bad), "{bad}");
        }
    }
}
