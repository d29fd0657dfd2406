//! The caller's side of the broker: create a login session (`POST /m365/sessions`), ask how it
//! is going (`GET /status/{state}`) and take the tokens once (`GET /token/{state}`, with an
//! optional long-poll).

use super::{broker, random_id, rfc3339};
use crate::app::App;
use crate::audit;
use crate::broker_config::read_only_scopes;
use crate::error::Error;
use crate::http::{decode_segment, HttpRequest, Reply, Response};
use crate::secret::Secret;
use crate::store::{Session, SessionStatus, TokenTake};
use serde_json::{json, Value};
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

/// `POST /m365/sessions`
pub fn create(app: &App, req: &HttpRequest) -> Result<Response, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
