//! The person's side of the broker: the login link (`GET /m365/start/{link}`) sends the browser
//! to the provider, and the provider's callback (`GET /m365/callback`) takes the OAuth state
//! once, redeems the code on the blocking pool, checks the account and shows the result.

use super::pages::{self, Lang};
use super::{broker, pkce_challenge, ExchangeSlot};
use crate::app::App;
use crate::audit;
use crate::error::{Error, Reason, SignInFailure};
use crate::http::{decode_segment, HttpRequest, Reply, Response};
use crate::logging;
use crate::provider::AuthorizeRequest;
use crate::secret::{short_hash, Secret};
use crate::store::{Session, SessionStatus, StateTake, Tokens};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// `GET /m365/start/{link_id}`: redirects to the provider. Opening it does not use it up (chat
/// apps fetch links to draw previews).
pub fn start(app: &App, req: &HttpRequest, raw_link: &str) -> Result<Response, Error> {
    let broker = broker(app)?;
    let lang = Lang::from_accept_language(req.header("accept-language"));
    let link = decode_segment(raw_link).unwrap_or_default();
    let Some((session, status)) = app.store.session_by_link(&link)? else {
        return Ok(pages::failure(lang, Reason::LinkUnknown));
    };
    if session.expires_at <= SystemTime::now() {
        return Ok(pages::failure(lang, Reason::LinkExpired));
    }
    match status {
        SessionStatus::Pending => {}
        SessionStatus::Ready | SessionStatus::Consumed => {
            return Ok(pages::failure(lang, Reason::AlreadyConnected))
        }
        SessionStatus::Failed(_) => return Ok(pages::failure(lang, Reason::LinkUsed)),
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

/// `GET /m365/callback`: takes the OAuth state once, then redeems the code on the blocking pool.
pub fn callback(app: &Arc<App>, req: &HttpRequest) -> Result<Reply, Error> {
    let broker = broker(app)?;
    let lang = Lang::from_accept_language(req.header("accept-language"));
    let fail_early = |reason: Reason| {
        audit::record(
            "callback_failed",
            None,
            None,
            json!({ "reason": reason.code() }),
        );
        Ok(Reply::Now(pages::failure(lang, reason)))
    };
    let Some(state) = req.query_param("state") else {
        return fail_early(Reason::StateMissing);
    };
    // Checked before the state is taken, so a person turned away by load can simply reload.
    let slot = ExchangeSlot::acquire(&broker.exchanges, broker.config.max_exchanges);
    let Some(slot) = slot else {
        return Ok(Reply::Now(pages::failure(lang, Reason::Unavailable)));
    };
    let session = match app.store.take_oauth_state(&state)? {
        StateTake::Taken(session) => session,
        StateTake::Unknown => return fail_early(Reason::StateUnknown),
        StateTake::Expired => {
            audit::record(
                "state_expired",
                None,
                None,
                json!({ "state": short_hash(&state) }),
            );
            return fail_early(Reason::StateExpired);
        }
        StateTake::Reused(status) => {
            audit::record(
                "callback_failed",
                None,
                None,
                json!({ "reason": Reason::StateReused.code(), "status": status.name() }),
            );
            // A reload of a finished sign-in: reassure, and change nothing.
            let page = match status {
                SessionStatus::Ready | SessionStatus::Consumed => Reason::AlreadyConnected,
                _ => Reason::StateReused,
            };
            return Ok(Reply::Now(pages::failure(lang, page)));
        }
    };
    if let Some(error) = req.query_param("error") {
        let reason = if error == "access_denied" {
            Reason::AccessDenied
        } else {
            Reason::ProviderError
        };
        let description = req.query_param("error_description").unwrap_or_default();
        let failure = SignInFailure::new(
            reason,
            format!("{error}: {}", description.lines().next().unwrap_or("")),
        )
        .with_hint(broker.provider.error_hint(&description));
        return Ok(Reply::Now(finish(app, &session, Err(failure), lang)));
    }
    let Some(code) = req.query_param("code") else {
        let failure = SignInFailure::new(
            Reason::ProviderError,
            "the callback has neither code nor error",
        );
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
fn redeem(app: &App, session: &Session, code: &Secret) -> Result<Tokens, SignInFailure> {
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
    let refresh_token = grant.refresh_token.clone().ok_or(
        SignInFailure::new(
            Reason::NoRefreshToken,
            "the token response has no refresh_token",
        )
        .with_hint(Some(
            "include offline_access in WK_M365_SCOPES and make sure the app may request it",
        )),
    )?;
    let identity = broker.provider.identity(&grant, left())?;
    if identity.email.is_empty() || identity.email != session.expected_email.to_lowercase() {
        return Err(SignInFailure::new(
            Reason::EmailMismatch,
            format!("signed in as {}", audit::mask_email(&identity.email)),
        ));
    }
    if let Some(tenant) = broker.config.pinned_tenant() {
        if identity.tenant.as_deref() != Some(tenant.to_lowercase().as_str()) {
            return Err(SignInFailure::new(
                Reason::TenantMismatch,
                format!("id_token tid is {:?}", identity.tenant),
            ));
        }
    }
    Ok(Tokens {
        access_token: grant.access_token,
        refresh_token,
        id_token: grant.id_token,
        token_type: grant.token_type,
        scope: grant.scope,
        // Microsoft always sends expires_in; an hour is what its tokens live.
        expiry: grant
            .expiry
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600)),
        email: identity.email,
    })
}

/// Records the outcome, wakes waiting callers, audits, and picks the page.
fn finish(
    app: &App,
    session: &Session,
    outcome: Result<Tokens, SignInFailure>,
    lang: Lang,
) -> Response {
    let handle = &session.handle;
    let email = Some(session.expected_email.as_str());
    let (stored, page) = match outcome {
        Ok(tokens) => {
            audit::record("callback_succeeded", Some(handle), email, json!({}));
            (
                app.store.finish_session(handle, Ok(tokens)),
                pages::success(lang),
            )
        }
        Err(f) => {
            audit::record(
                "callback_failed",
                Some(handle),
                email,
                json!({ "reason": f.reason.code(), "detail": f.detail, "fix": f.hint }),
            );
            (
                app.store
                    .finish_session(handle, Err(f.reason.code().to_string())),
                pages::failure(lang, f.reason),
            )
        }
    };
    app.notify("broker", handle);
    match stored {
        Ok(()) => page,
        Err(e) => {
            logging::error("store_unavailable", json!({ "error": e.0 }));
            pages::failure(lang, Reason::Unavailable)
        }
    }
}
