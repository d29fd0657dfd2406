//! The caller's side of the broker: create a login session (`POST /sessions`, or a provider's
//! own endpoint, see `routes.rs`), ask how it is going
//! (`GET /status/{state}`) and take the tokens once (`GET /token/{state}`, with an optional
//! long-poll).

use super::{return_url, rfc3339};
use crate::app::App;
use crate::audit;
use crate::error::Error;
use crate::http::{decode_segment, HttpRequest, Reply, Response};
use crate::random;
use crate::seal::{Envelope, SealKey};
use crate::secret::Secret;
use crate::store::{Handoff, Session, SessionStatus, TokenTake, Tokens};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::SystemTime;

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

/// A provider's stable account id as a caller gives it: printable, at most 256 characters.
fn plausible_subject(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.chars().all(|c| !c.is_control())
}

/// Where sessions are created: `POST /sessions` names its provider in the body; an endpoint of
/// one provider (see `routes.rs`) fixes it and keeps its own link path.
#[derive(Clone, Copy)]
pub struct Endpoint<'a> {
    pub provider: Option<&'a str>,
    /// The login link is `{public}{link_path}{link_id}`.
    pub link_path: &'a str,
    /// The status URL is `{internal or public}{status_path}{handle}`.
    pub status_path: &'a str,
}

/// The keys of a session request body (`POST /sessions` and a provider's own endpoint); any
/// other is refused (400) naming it.
const SESSION_KEYS: &[&str] = &[
    "provider",
    "expected_email",
    "expected_subject",
    "scopes",
    "force_consent",
    "return_url",
    "seal_to",
    "keep",
];

/// What a new session is for, checked: from a session request, or from a connection that needs
/// a new sign-in (`connections::reauthorize`).
pub(super) struct Spec {
    pub email: Option<String>,
    pub subject: Option<String>,
    pub scopes: Vec<String>,
    pub force_consent: bool,
    pub return_url: Option<String>,
    pub seal_to: Option<SealKey>,
    pub keep: bool,
    /// The connection a successful sign-in revives.
    pub connection: Option<String>,
}

/// A session request's `return_url`, checked against the allowed origins.
pub(super) fn return_url_of(broker: &super::Broker, v: &Value) -> Result<Option<String>, Error> {
    match v {
        Value::Null => Ok(None),
        Value::String(url) => Ok(Some(
            return_url::check(url, &broker.config.return_url_origins)
                .map_err(Error::BadRequest)?
                .url,
        )),
        _ => Err(Error::BadRequest("return_url must be a URL (a string)")),
    }
}

/// A session request's `seal_to`, checked here, so a key the broker cannot seal to is refused
/// before anyone signs in. The words name what is wrong and never repeat the key (nor the
/// private part sent by mistake).
pub(super) fn seal_to_of(v: &Value) -> Result<Option<SealKey>, Error> {
    match v {
        Value::Null => Ok(None),
        jwk => Ok(Some(SealKey::from_jwk(jwk).map_err(Error::BadRequest)?)),
    }
}

/// A request's `force_consent`.
pub(super) fn force_consent_of(v: &Value) -> Result<bool, Error> {
    flag(v, "force_consent must be true or false")
}

/// A true-or-false field, false when absent; `refused` otherwise.
fn flag(v: &Value, refused: &'static str) -> Result<bool, Error> {
    match v {
        Value::Null => Ok(false),
        Value::Bool(b) => Ok(*b),
        _ => Err(Error::BadRequest(refused)),
    }
}

/// `POST /sessions`, and the endpoints of one provider
pub fn create(app: &App, req: &HttpRequest, endpoint: Endpoint) -> Result<Response, Error> {
    let broker = app.broker()?;
    broker.authorize(req, false)?;
    let body = crate::json_body::object(&req.body, SESSION_KEYS)?;
    let provider = match (endpoint.provider, &body["provider"]) {
        (Some(fixed), Value::Null) => broker.provider(fixed).ok_or(Error::NotFound)?,
        (Some(fixed), Value::String(name)) if name == fixed => {
            broker.provider(fixed).ok_or(Error::NotFound)?
        }
        (Some(_), _) => {
            return Err(Error::BadRequest(
                "This endpoint serves one provider; create other sessions with POST /sessions",
            ))
        }
        (None, Value::String(name)) => broker.provider(name).ok_or(Error::UnknownProvider)?,
        (None, _) => {
            return Err(Error::BadRequest(
                "provider must be the name of a configured provider",
            ))
        }
    };
    let email = match &body["expected_email"] {
        Value::Null => None,
        Value::String(e) if plausible_email(e.trim()) => Some(e.trim().to_string()),
        _ => {
            return Err(Error::BadRequest(
                "expected_email must be an e-mail address",
            ))
        }
    };
    let subject = match &body["expected_subject"] {
        Value::Null => None,
        Value::String(s) if plausible_subject(s.trim()) => Some(s.trim().to_string()),
        _ => {
            return Err(Error::BadRequest(
                "expected_subject must be the provider's id of the account (a string)",
            ))
        }
    };
    if email.is_none() && subject.is_none() {
        return Err(Error::BadRequest(
            "expected_email or expected_subject must say who signs in",
        ));
    }
    let force_consent = force_consent_of(&body["force_consent"])?;
    let requested: Option<Vec<String>> = match &body["scopes"] {
        Value::Null => None,
        Value::String(s) => Some(s.split_whitespace().map(String::from).collect()),
        Value::Array(list) => {
            let scopes: Vec<String> = list
                .iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect();
            if scopes.len() != list.len() {
                return Err(Error::BadRequest("scopes must be strings"));
            }
            Some(scopes)
        }
        _ => {
            return Err(Error::BadRequest(
                "scopes must be a string or a list of strings",
            ))
        }
    };
    let return_url = return_url_of(broker, &body["return_url"])?;
    let seal_to = seal_to_of(&body["seal_to"])?;
    let keep = flag(&body["keep"], "keep must be true or false")?;
    // Refused before anyone signs in: a grant the broker could not keep would be lost.
    if keep {
        super::connections::kept(app).map_err(|e| match e {
            Error::ConnectionsOff(words) => Error::BadRequest(words),
            e => e,
        })?;
    }
    let scopes = provider.scopes(requested.as_deref())?;
    let spec = Spec {
        email,
        subject,
        scopes,
        force_consent,
        return_url,
        seal_to,
        keep,
        connection: None,
    };
    open(app, &**provider, spec, endpoint)
}

/// Stores a new session of `provider` for `spec` and answers it: the handle, the link (at the
/// endpoint's link path), where its status is.
pub(super) fn open(
    app: &App,
    provider: &dyn crate::provider::Provider,
    spec: Spec,
    endpoint: Endpoint,
) -> Result<Response, Error> {
    let broker = app.broker()?;
    let Spec {
        email,
        subject,
        scopes,
        force_consent,
        return_url,
        seal_to,
        keep,
        connection,
    } = spec;
    let expires_at = SystemTime::now() + app.config.ttl;
    let session = Session {
        handle: random::id(16),
        link_id: random::id(16),
        oauth_state: random::id(16),
        verifier: Secret::new(random::id(32)),
        provider: provider.name().to_string(),
        nonce: random::id(16),
        expected_email: email.clone(),
        expected_subject: subject.clone(),
        force_consent,
        scopes,
        expires_at,
        return_url: return_url.clone(),
        seal_to: seal_to.clone(),
        keep,
        connection: connection.clone(),
    };
    let (handle, link_id) = (session.handle.clone(), session.link_id.clone());
    if !app.store.create_session(session)? {
        return Err(Error::SessionsFull);
    }
    audit::record(
        "link_created",
        Some(&handle),
        email.as_deref(),
        json!({ "provider": provider.name(), "force_consent": force_consent,
                "expected_subject": subject.is_some(), "return_url": return_url.is_some(),
                "sealed": seal_to.is_some(), "keep": keep,
                "connection": connection.as_deref().map(crate::secret::short_hash) }),
    );
    let base = &broker.config.public_base_url;
    // /status is a program's route: on the internal listener when the listeners are split.
    let status = endpoint.status_path;
    let status_url = match (&app.config.internal_url, app.config.internal_addr) {
        (Some(internal), _) => format!("{internal}{status}{handle}"),
        (None, Some(_)) => format!("{status}{handle}"),
        (None, None) => format!("{base}{status}{handle}"),
    };
    let mut answer = json!({
        "state": handle,
        "provider": provider.name(),
        "expected_email": email,
        "expected_subject": subject,
        "login_url": format!("{base}{}{link_id}", endpoint.link_path),
        "status_url": status_url,
        "expires_at": rfc3339(expires_at),
        "return_url": return_url,
        // The key as the broker will seal to it: a caller that asked for sealing and finds
        // null here (a replica that predates it) knows before sending the link.
        "seal_to": seal_to.as_ref().map(SealKey::to_jwk),
        // The same for keeping the grant: a caller finding no `true` here would get the
        // refresh token instead.
        "keep": keep,
    });
    if let Some(id) = connection {
        answer["connection"] = json!(id);
    }
    Ok(Response::json(200, &answer).with_header("Cache-Control", "no-store"))
}

/// What a successful sign-in leaves for the caller. With `seal_to`, the tokens are sealed here,
/// the moment they arrive: from then on only the sealed answer exists, and nothing the broker
/// holds (its store, its store's key) opens it. Its claims are the clear answer's fields plus
/// `iss` (the public URL), `aud` (the session's handle, the caller's `state`), `iat`, `exp` and
/// `jti`; it may be opened until the broker would stop handing it out, and `OPEN_GRACE` more.
pub fn handoff(app: &App, session: &Session, tokens: Tokens) -> Handoff {
    let Some(key) = &session.seal_to else {
        return Handoff::Clear(tokens);
    };
    let issuer = app
        .broker
        .as_ref()
        .map(|b| b.config.public_base_url.as_str())
        .unwrap_or_default();
    let envelope = Envelope {
        issuer,
        audience: &session.handle,
        lifetime: app.config.ttl + crate::seal::OPEN_GRACE,
    };
    Handoff::Sealed {
        provider: tokens.provider.clone(),
        jwe: key.seal_answer(&envelope, answer(&tokens)),
    }
}

/// The token answer: what `/token` says in the clear, and what a sealed answer carries.
fn answer(t: &Tokens) -> Map<String, Value> {
    let mut body = json!({
        "access_token": t.access_token.expose(),
        "refresh_token": t.refresh_token.as_ref().map(Secret::expose),
        "id_token": t.id_token.as_ref().map(Secret::expose),
        "token_type": t.token_type,
        "expiry": t.expiry.map(rfc3339),
        "scope": t.scope,
        "email": t.email,
        "email_verified": t.email_verified,
        "provider": t.provider,
        "subject": t.subject,
    });
    // Only providers with tenants have the field.
    if let Some(tenant) = &t.tenant {
        body["tenant"] = json!(tenant);
    }
    // Only kept sign-ins: the connection instead of the refresh token, with its credential
    // when it is new (inside the seal, for a sealed session).
    if let Some(kept) = &t.connection {
        body["connection"] = json!({
            "id": kept.id,
            "credential": kept.credential.as_ref().map(Secret::expose),
        });
    }
    match body {
        Value::Object(map) => map,
        _ => unreachable!("json! of an object literal is an object"),
    }
}

/// `GET /status/{handle}`
pub fn status(app: &App, req: &HttpRequest, raw: &str) -> Result<Response, Error> {
    app.broker()?.authorize(req, true)?;
    let handle = decode_segment(raw).unwrap_or_default();
    Ok(match app.store.session_status(&handle)? {
        None => Response::json(404, &json!({ "state": handle, "status": "not_found" })),
        Some((session, status)) => {
            let mut body = json!({
                "state": handle,
                "status": status.name(),
                "provider": session.provider,
                "expected_email": session.expected_email,
                "expected_subject": session.expected_subject,
                "expires_at": rfc3339(session.expires_at),
                "return_url": session.return_url,
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
    app.broker()?.authorize(req, true)?;
    let handle = decode_segment(raw).unwrap_or_default();
    let wait = app.wait_param(req)?;
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
        move |app| take_tokens(app, &handle).unwrap_or_else(|e| e.into_response()),
    ))
}

fn take_tokens(app: &App, handle: &str) -> Result<Response, Error> {
    Ok(match app.store.take_tokens(handle)? {
        TokenTake::Taken(Handoff::Clear(t)) => {
            audit::record(
                "tokens_retrieved",
                Some(handle),
                t.email.as_deref(),
                json!({ "provider": t.provider, "sealed": false }),
            );
            Response::json(200, &Value::Object(answer(&t)))
        }
        // Nothing outside the seal: fields out here would be readable by every proxy and log on
        // the way, and unauthenticated (anyone on the way could change them).
        TokenTake::Taken(Handoff::Sealed { provider, jwe }) => {
            audit::record(
                "tokens_retrieved",
                Some(handle),
                None,
                json!({ "provider": provider, "sealed": true }),
            );
            Response::json(200, &json!({ "sealed": jwe }))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_plausibility() {
        assert!(plausible_subject("5830144"));
        assert!(plausible_subject(
            "11111111-2222-3333-4444-555555555555/aaaa"
        ));
        assert!(!plausible_subject(""));
        assert!(!plausible_subject("a\nb"));
        assert!(!plausible_subject(&"x".repeat(257)));
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
