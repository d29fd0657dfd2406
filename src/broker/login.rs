//! The person's side of the broker: the login link (`GET /login/{link}`, or a provider's own
//! link path) binds the browser (`binding.rs`) and sends it to the session's provider, and the
//! provider's callback (`GET /login/{provider}/callback`, or its own path) takes the OAuth state
//! once, for a browser that opened the link, checks the response's issuer, redeems the code on
//! the blocking pool, checks the account and shows the result.

use super::pages::{self, Lang};
use super::{binding, pkce_challenge, return_url, ExchangeSlot};
use crate::app::App;
use crate::audit;
use crate::error::{Error, Reason, SignInFailure};
use crate::http::{decode_segment, HttpRequest, Reply, Response};
use crate::logging;
use crate::provider::{AuthorizeRequest, Identity, Provider};
use crate::secret::{short_hash, Secret};
use crate::store::{Session, SessionStatus, StateTake, Tokens};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// `GET /login/{link_id}`: binds this browser to the session (a cookie, see `binding.rs`) and
/// redirects to the session's provider. Opening it does not use it up (chat apps fetch links to
/// draw previews); `HEAD` (how some preview bots ask) gets the same redirect without a binding
/// and writes nothing.
pub fn start(app: &App, req: &HttpRequest, raw_link: &str) -> Result<Response, Error> {
    let broker = app.broker()?;
    let lang = Lang::from_accept_language(req.header("accept-language"));
    let link = decode_segment(raw_link).unwrap_or_default();
    let Some((session, status)) = app.store.session_by_link(&link)? else {
        return Ok(pages::failure(lang, Reason::LinkUnknown, ""));
    };
    // A session of a provider this replica does not know (configurations differ during a
    // rollout): nothing it could do with the link.
    let Some(provider) = broker.provider(&session.provider) else {
        return Ok(pages::failure(lang, Reason::LinkUnknown, ""));
    };
    let display = provider.display_name();
    if session.expires_at <= SystemTime::now() {
        return Ok(pages::failure(lang, Reason::LinkExpired, display));
    }
    match status {
        SessionStatus::Pending => {}
        SessionStatus::Ready | SessionStatus::Consumed => {
            return Ok(pages::failure(lang, Reason::AlreadyConnected, display))
        }
        SessionStatus::Failed(_) => return Ok(pages::failure(lang, Reason::LinkUsed, display)),
    }
    let cookie = if req.method == "HEAD" {
        None
    } else {
        let lifetime = session
            .expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let (cookie, browser) = binding::issue(&session.oauth_state, lifetime);
        app.store.bind_browser(&session.handle, &browser)?;
        audit::record(
            "link_opened",
            Some(&session.handle),
            session.expected_email.as_deref(),
            json!({ "provider": provider.name() }),
        );
        Some(cookie)
    };
    let url = provider.authorize_url(&AuthorizeRequest {
        state: &session.oauth_state,
        code_challenge: &pkce_challenge(&session.verifier),
        nonce: &session.nonce,
        login_hint: session.expected_email.as_deref(),
        scopes: &session.scopes,
        force_consent: session.force_consent,
    });
    let title = format!("{display} sign-in");
    let heading = format!("Opening {display} sign-in…");
    let response = Response::html(302, crate::pages::page(&title, &heading, &[], true))
        .with_header("Location", url);
    Ok(match cookie {
        Some(cookie) => response.with_header("Set-Cookie", cookie),
        None => response,
    })
}

/// `GET /login/{provider}/callback`: takes the OAuth state once, for a browser that opened the
/// link, then redeems the code on the blocking pool. `provider_name` is the provider whose
/// callback this is. Any other browser's callback (a stranger who saw the state) changes
/// nothing: the person may still finish.
pub fn callback(app: &Arc<App>, req: &HttpRequest, provider_name: &str) -> Result<Reply, Error> {
    let broker = app.broker()?;
    let provider = broker
        .provider(provider_name)
        .ok_or(Error::NotFound)?
        .clone();
    let lang = Lang::from_accept_language(req.header("accept-language"));
    let display = provider.display_name();
    let fail_early = |reason: Reason| {
        audit::record(
            "callback_failed",
            None,
            None,
            json!({ "reason": reason.code(), "provider": provider_name }),
        );
        Ok(Reply::Now(pages::failure(lang, reason, display)))
    };
    let Some(state) = req.query_param("state") else {
        return fail_early(Reason::StateMissing);
    };
    // Checked before the state is taken, so a person turned away by load can simply reload.
    let slot = ExchangeSlot::acquire(&broker.exchanges, broker.config.max_exchanges);
    let Some(slot) = slot else {
        return Ok(Reply::Now(pages::failure(
            lang,
            Reason::Unavailable,
            display,
        )));
    };
    let browser = binding::presented(req, &state);
    let session = match app.store.take_oauth_state(&state, browser.as_ref())? {
        StateTake::Taken(session) => session,
        StateTake::Unknown => return fail_early(Reason::StateUnknown),
        StateTake::OtherBrowser => {
            audit::record(
                "callback_refused",
                None,
                None,
                json!({ "reason": Reason::BrowserMismatch.code(), "state": short_hash(&state),
                        "cookie": browser.is_some(), "provider": provider_name }),
            );
            return Ok(Reply::Now(pages::failure(
                lang,
                Reason::BrowserMismatch,
                display,
            )));
        }
        StateTake::Expired => {
            audit::record(
                "state_expired",
                None,
                None,
                json!({ "state": short_hash(&state), "provider": provider_name }),
            );
            return fail_early(Reason::StateExpired);
        }
        StateTake::Reused(status) => {
            audit::record(
                "callback_failed",
                None,
                None,
                json!({ "reason": Reason::StateReused.code(), "status": status.name(),
                        "provider": provider_name }),
            );
            // A reload of a finished sign-in: reassure, and change nothing.
            let page = match status {
                SessionStatus::Ready | SessionStatus::Consumed => Reason::AlreadyConnected,
                _ => Reason::StateReused,
            };
            return Ok(Reply::Now(pages::failure(lang, page, display)));
        }
    };
    // A response for one provider's sign-in arriving at another's callback is a mix-up (the
    // redirect URI is each provider's identity, RFC 9207 section 1): its code goes nowhere.
    if session.provider != provider.name() {
        let failure = SignInFailure::new(
            Reason::IssuerMismatch,
            format!(
                "the response for a {} sign-in came back to the callback of {}",
                session.provider,
                provider.name()
            ),
        );
        return Ok(Reply::Now(finish(
            app,
            &*provider,
            &session,
            Err(failure),
            lang,
        )));
    }
    if let Err(failure) = provider.check_response_issuer(req.query_param("iss").as_deref()) {
        return Ok(Reply::Now(finish(
            app,
            &*provider,
            &session,
            Err(failure),
            lang,
        )));
    }
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
        .with_hint(provider.error_hint(&description));
        return Ok(Reply::Now(finish(
            app,
            &*provider,
            &session,
            Err(failure),
            lang,
        )));
    }
    let Some(code) = req.query_param("code") else {
        let failure = SignInFailure::new(
            Reason::ProviderError,
            "the callback has neither code nor error",
        );
        return Ok(Reply::Now(finish(
            app,
            &*provider,
            &session,
            Err(failure),
            lang,
        )));
    };
    let app = app.clone();
    Ok(Reply::later(move || {
        let _slot = slot;
        let outcome = redeem(&app, &*provider, &session, &Secret::new(code));
        finish(&app, &*provider, &session, outcome, lang)
    }))
}

/// Code exchange and identity checks, within the configured total time.
fn redeem(
    app: &App,
    provider: &dyn Provider,
    session: &Session,
    code: &Secret,
) -> Result<Tokens, SignInFailure> {
    let broker = app.broker.as_ref().expect("callback runs in broker mode");
    let deadline = Instant::now() + broker.config.exchange_timeout;
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let grant = provider.exchange(code, &session.verifier, &session.scopes, left())?;
    if grant.refresh_token.is_none() && provider.refresh_token_required(&session.scopes) {
        return Err(SignInFailure::new(
            Reason::NoRefreshToken,
            "the token response has no refresh_token",
        )
        .with_hint(provider.no_refresh_token_hint()));
    }
    let identity = provider.identity(&grant, &session.nonce, left())?;
    expected_account(session, &identity)?;
    // A kept sign-in: the broker keeps the grant, the caller gets the connection instead of
    // the refresh token.
    let (refresh_token, connection) = if session.keep || session.connection.is_some() {
        let kept = super::connections::keep(app, provider, session, &identity, &grant)?;
        (None, Some(kept))
    } else {
        (grant.refresh_token, None)
    };
    Ok(Tokens {
        provider: provider.name().to_string(),
        access_token: grant.access_token,
        refresh_token,
        id_token: grant.id_token,
        token_type: grant.token_type,
        scope: grant.scope,
        expiry: grant.expiry,
        subject: identity.subject,
        email: identity.email,
        email_verified: identity.email_verified,
        tenant: identity.tenant,
        connection,
    })
}

/// The account must be the expected one: the same stable id when the caller gave one, and the
/// same e-mail (case-insensitive) when the caller gave one, which counts only when the provider
/// vouches for the address.
fn expected_account(session: &Session, identity: &Identity) -> Result<(), SignInFailure> {
    if let Some(subject) = &session.expected_subject {
        if !Secret::new(subject.as_str()).matches(&identity.subject) {
            return Err(SignInFailure::new(
                Reason::SubjectMismatch,
                format!(
                    "signed in as subject {} (a hash), expected {}",
                    short_hash(&identity.subject),
                    short_hash(subject)
                ),
            ));
        }
    }
    if let Some(expected) = &session.expected_email {
        let expected = expected.to_lowercase();
        match &identity.email {
            Some(email) if *email == expected => {
                if !identity.email_verified {
                    return Err(SignInFailure::new(
                        Reason::EmailUnverified,
                        "the address matches, but the provider does not vouch for it",
                    ));
                }
            }
            // The account carries the address, but what the provider vouches for is another
            // (Microsoft's xms_edov speaks of the id_token's email, not Graph's mail).
            Some(email) if identity.unverified_email.as_deref() == Some(expected.as_str()) => {
                return Err(SignInFailure::new(
                    Reason::EmailUnverified,
                    format!(
                        "the address is one the account carries, but the provider vouches only \
                         for {}",
                        audit::mask_email(email)
                    ),
                ))
            }
            Some(email) => {
                return Err(SignInFailure::new(
                    Reason::EmailMismatch,
                    format!("signed in as {}", audit::mask_email(email)),
                ))
            }
            None => {
                return Err(SignInFailure::new(
                    Reason::EmailMismatch,
                    "the provider reported no e-mail address for the account",
                ))
            }
        }
    }
    Ok(())
}

/// Records the outcome, wakes waiting callers, audits, and picks the page, which also clears the
/// browser's binding cookie: the state it was for is used up.
fn finish(
    app: &App,
    provider: &dyn Provider,
    session: &Session,
    outcome: Result<Tokens, SignInFailure>,
    lang: Lang,
) -> Response {
    let handle = &session.handle;
    let email = session.expected_email.as_deref();
    let display = provider.display_name();
    let failed = outcome.as_ref().err().map(|f| f.reason.code());
    // The connection the sign-in made (`true`) or revived.
    let kept = outcome
        .as_ref()
        .ok()
        .and_then(|t| t.connection.as_ref())
        .map(|k| (k.id.clone(), k.credential.is_some()));
    // Checked again against this replica's allowed origins: an origin the operator has since
    // removed (or one only another replica allows during a rollout) is not linked.
    let back = session.return_url.as_deref().and_then(|url| {
        let broker = app.broker.as_ref()?;
        return_url::check(url, &broker.config.return_url_origins).ok()
    });
    let (stored, page) = match outcome {
        Ok(tokens) => {
            audit::record(
                "callback_succeeded",
                Some(handle),
                email,
                json!({ "provider": provider.name(), "sealed": session.seal_to.is_some(),
                        "connection": kept.as_ref().map(|(id, _)| short_hash(id)),
                        "revived": kept.as_ref().map(|(_, new)| !new) }),
            );
            (
                // Sealed to the caller's key (when it gave one) before anything is stored.
                app.store
                    .finish_session(handle, Ok(super::sessions::handoff(app, session, tokens))),
                pages::success(lang, display, provider.read_only(), back.as_ref()),
            )
        }
        Err(f) => {
            audit::record(
                "callback_failed",
                Some(handle),
                email,
                json!({ "reason": f.reason.code(), "provider": provider.name(),
                        "detail": f.detail, "fix": f.hint }),
            );
            (
                app.store
                    .finish_session(handle, Err(f.reason.code().to_string())),
                pages::failure(lang, f.reason, display),
            )
        }
    };
    app.notify("broker", handle);
    // The completion event for the operator's endpoint: queued here, delivered elsewhere.
    if let (Ok(()), Some(events)) = (&stored, &app.events) {
        events.sign_in_finished(handle, provider.name(), failed);
    }
    if let Some((id, new)) = &kept {
        super::connections::kept_sign_in_finished(app, provider, handle, id, *new, stored.is_ok());
    }
    match stored {
        Ok(()) => page,
        Err(e) => {
            logging::error("store_unavailable", json!({ "error": e.0 }));
            pages::failure(lang, Reason::Unavailable, display)
        }
    }
    .with_header("Set-Cookie", binding::clear(&session.oauth_state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(email: Option<&str>, subject: Option<&str>) -> Session {
        Session {
            handle: "h".into(),
            link_id: "l".into(),
            oauth_state: "o".into(),
            verifier: Secret::new("v"),
            provider: "p".into(),
            nonce: "n".into(),
            expected_email: email.map(String::from),
            expected_subject: subject.map(String::from),
            force_consent: false,
            scopes: Vec::new(),
            expires_at: SystemTime::now(),
            return_url: None,
            seal_to: None,
            keep: false,
            connection: None,
        }
    }

    fn identity(subject: &str, email: Option<&str>, verified: bool) -> Identity {
        Identity {
            subject: subject.into(),
            email: email.map(String::from),
            email_verified: verified,
            unverified_email: None,
            tenant: None,
        }
    }

    fn reason(s: &Session, i: &Identity) -> Option<Reason> {
        expected_account(s, i).err().map(|f| f.reason)
    }

    #[test]
    fn the_expected_account_is_checked_by_subject_and_verified_email() {
        let by_email = session(Some("Ana@Example.com"), None);
        assert_eq!(
            reason(&by_email, &identity("1", Some("ana@example.com"), true)),
            None
        );
        assert_eq!(
            reason(&by_email, &identity("1", Some("ana@example.com"), false)),
            Some(Reason::EmailUnverified)
        );
        assert_eq!(
            reason(&by_email, &identity("1", Some("bob@example.com"), true)),
            Some(Reason::EmailMismatch)
        );
        assert_eq!(
            reason(&by_email, &identity("1", None, true)),
            Some(Reason::EmailMismatch)
        );
        let by_subject = session(None, Some("5830144"));
        assert_eq!(reason(&by_subject, &identity("5830144", None, false)), None);
        assert_eq!(
            reason(&by_subject, &identity("583014", None, false)),
            Some(Reason::SubjectMismatch)
        );
        let both = session(Some("ana@example.com"), Some("5830144"));
        assert_eq!(
            reason(&both, &identity("9", Some("ana@example.com"), true)),
            Some(Reason::SubjectMismatch)
        );
        assert_eq!(
            reason(&both, &identity("5830144", Some("bob@example.com"), true)),
            Some(Reason::EmailMismatch)
        );
        // A verified address and another, unverified one: only the verified one matches.
        let two = Identity {
            unverified_email: Some("ana@example.com".into()),
            ..identity("1", Some("x@vouched.example"), true)
        };
        assert_eq!(
            reason(&by_email, &two),
            Some(Reason::EmailUnverified),
            "an address the provider does not vouch for matched"
        );
        assert_eq!(
            reason(&session(Some("X@Vouched.example"), None), &two),
            None
        );
        assert_eq!(
            reason(&session(Some("carol@example.com"), None), &two),
            Some(Reason::EmailMismatch)
        );
    }
}
