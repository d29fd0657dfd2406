//! The one place that maps an error to its HTTP status and to the words its reader sees:
//! JSON `{"status":"error","message":...}` for programs (the Python server's shape), a page for
//! people. Broker sign-in failures are typed here too ([`Reason`], [`SignInFailure`]): their
//! stable reason codes and HTTP statuses; `broker/pages.rs` words the page for each shared
//! reason. A provider kind's own failures ([`OwnReason`]: Microsoft Graph's `graph_failed`) carry
//! their code, status and words with them, declared in the kind's file, so nothing here or in
//! the pages names a provider.

use crate::http::Response;
use crate::pages;
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    NotFound,
    MethodNotAllowed(&'static str),
    BadRequest(&'static str),
    /// A JSON body with a key the endpoint does not know (`json_body.rs`): the key, and the
    /// keys there are.
    UnknownKey {
        key: String,
        allowed: &'static [&'static str],
    },
    MissingState,
    StateTooLong,
    StateNotRegistered,
    /// A different callback for a state whose callback was already retrieved.
    StateConflict,
    /// A callback's parameters over `relay::MAX_PARAM_BYTES` each or `MAX_CALLBACK_BYTES` in all.
    CallbackTooLarge,
    /// The person's page when a state has two different callbacks (`store::Put::Conflicted`).
    SignInConflict,
    /// The person's page when the state's registration expired (a tombstone).
    StateExpired,
    /// The relay's `/api/...` without `OAUTH_RELAY_API_TOKEN`.
    Unauthorized,
    /// The broker's endpoints without `WK_M365_BROKER_TOKEN`.
    BrokerUnauthorized,
    CallbackNotFound,
    CallbackGone,
    /// To the owner: the registration expired before its callback arrived.
    RegistrationExpired,
    /// To the owner: two different callbacks arrived, neither is handed out.
    CallbackConflict,
    /// A client's share of pending entries is used up (`OAUTH_RELAY_MAX_PENDING_PER_CLIENT`).
    TooManyPending,
    StateExists,
    StoreFull,
    SessionsFull,
    /// A session for a provider that is not configured.
    UnknownProvider,
    /// A session asked for a scope outside the provider's allowed scopes.
    ScopeNotAllowed,
    TooManyWaiters,
    /// A client is past its share of a cap others need (429); the words say which.
    QuotaExceeded(&'static str),
    UrlTooLong,
    BodyTooLarge,
    RequestTimeout,
    /// The connection cap is reached and no connection is idle to make room.
    ConnectionsFull,
    /// A client holds its whole share of connections, every one of them busy.
    ClientConnectionsFull,
    Unavailable,
    Internal,
    /// A connection's route without a bearer credential.
    ConnectionUnauthorized,
    /// The broker token where only a connection's own credential will do
    /// (`OAUTH_RELAY_CONNECTIONS_BROKER_TOKEN` off).
    BrokerTokenNotAllowed,
    /// Broker mode is on, but connections cannot be kept: the words name the setting.
    ConnectionsOff(&'static str),
    /// What a connection's token or re-authorization could not give (`connections::ConnError`).
    Connection(crate::connections::ConnError),
}

/// Who reads the answer: a program (JSON) or a person in a browser (a page). Each route says
/// which (`routes::face`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    Api,
    Page,
}

impl Error {
    pub fn status(&self) -> u16 {
        match self {
            Error::NotFound | Error::CallbackNotFound => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::BadRequest(_)
            | Error::UnknownKey { .. }
            | Error::MissingState
            | Error::StateTooLong
            | Error::StateNotRegistered
            | Error::CallbackTooLarge
            | Error::UnknownProvider
            | Error::ScopeNotAllowed => 400,
            Error::StateConflict
            | Error::SignInConflict
            | Error::CallbackConflict
            | Error::StateExists => 409,
            Error::Unauthorized | Error::BrokerUnauthorized => 401,
            Error::CallbackGone | Error::StateExpired | Error::RegistrationExpired => 410,
            Error::TooManyPending => 429,
            Error::StoreFull
            | Error::SessionsFull
            | Error::TooManyWaiters
            | Error::ConnectionsFull
            | Error::Unavailable => 503,
            Error::QuotaExceeded(_) | Error::ClientConnectionsFull => 429,
            Error::UrlTooLong => 414,
            Error::BodyTooLarge => 413,
            Error::RequestTimeout => 408,
            Error::Internal => 500,
            Error::ConnectionUnauthorized => 401,
            Error::BrokerTokenNotAllowed => 403,
            Error::ConnectionsOff(_) => 404,
            Error::Connection(e) => {
                use crate::connections::ConnError as C;
                match e {
                    C::NotFound => 404,
                    C::NeedsReauth(_) | C::IdentityMismatch => 409,
                    C::BackingOff { .. }
                    | C::Pending
                    | C::Busy
                    | C::NoRefresher(_)
                    | C::Full
                    | C::Unavailable(_) => 503,
                }
            }
        }
    }

    /// The sentence a program or a person reads. Never includes request data.
    pub fn message(&self) -> &'static str {
        match self {
            Error::NotFound => "Not found",
            Error::MethodNotAllowed(_) => "Method not allowed",
            Error::BadRequest(m) => m,
            Error::UnknownKey { .. } => "Unknown key in the body",
            Error::MissingState => "The sign-in response has no state parameter",
            Error::StateTooLong => {
                "The sign-in response's state parameter is longer than 1024 bytes"
            }
            Error::StateNotRegistered => "Unknown or expired sign-in",
            Error::StateConflict => "This sign-in was already completed with a different response",
            Error::CallbackTooLarge => "The sign-in response has a parameter longer than 4096 bytes, or more than 6144 bytes of them",
            Error::SignInConflict => "This sign-in received two different responses, so neither will be used",
            Error::StateExpired => "This sign-in has expired",
            // Word for word as before: existing relay clients may match on it.
            Error::Unauthorized => "Missing or invalid API token",
            Error::BrokerUnauthorized => "Missing or invalid broker token",
            Error::CallbackNotFound => "Callback not found or expired",
            Error::CallbackGone => "Callback already retrieved",
            Error::RegistrationExpired => {
                "The state's registration expired before its callback arrived"
            }
            Error::CallbackConflict => {
                "Two different callbacks arrived for this state, so neither is handed out: start a new sign-in"
            }
            Error::TooManyPending => {
                "Too many pending sign-ins from this address (OAUTH_RELAY_MAX_PENDING_PER_CLIENT); try again later"
            }
            Error::StateExists => "State already registered or used",
            Error::StoreFull => "Too many pending callbacks; try again later",
            Error::SessionsFull => "Too many open login sessions; try again later",
            Error::UnknownProvider => "Unknown provider: it is not in OAUTH_RELAY_PROVIDERS",
            Error::ScopeNotAllowed => {
                "A requested scope is not among the provider's allowed scopes"
            }
            Error::TooManyWaiters => "Too many waiting clients; try again later",
            Error::QuotaExceeded(m) => m,
            Error::UrlTooLong => "Request URL too long",
            Error::BodyTooLarge => "Request body too large",
            Error::RequestTimeout => "The request did not arrive in time",
            Error::ConnectionsFull => "Too many connections; try again later",
            Error::ClientConnectionsFull => {
                "Too many connections from this client; try again later"
            }
            Error::Unavailable => "State storage is unavailable; try again shortly",
            Error::Internal => "Internal server error",
            Error::ConnectionUnauthorized => "Missing connection credential",
            Error::BrokerTokenNotAllowed => {
                "The broker token does not stand for a connection's credential here (OAUTH_RELAY_CONNECTIONS_BROKER_TOKEN is off)"
            }
            Error::ConnectionsOff(m) => m,
            Error::Connection(e) => {
                use crate::connections::ConnError as C;
                match e {
                    C::NotFound => "Not found",
                    C::NeedsReauth(_) => {
                        "The connection needs a new sign-in: POST /connections/{id}/reauthorize gives a login link for it"
                    }
                    C::BackingOff { .. } => {
                        "The provider refused the last refreshes; retry after Retry-After"
                    }
                    C::Pending => "A refresh is in progress; retry shortly",
                    C::Busy => "Too many refreshes in progress; retry shortly",
                    C::IdentityMismatch => "Another account signed in",
                    C::NoRefresher(_) => {
                        "The connection's provider is not configured on this replica"
                    }
                    C::Full => "Too many kept connections (OAUTH_RELAY_MAX_KEPT_CONNECTIONS)",
                    C::Unavailable(_) => "State storage is unavailable; try again shortly",
                }
            }
        }
    }

    /// What a program reads: [`Error::message`], or more where the request is worth quoting
    /// (the unknown key of a body, bounded and escaped, and the keys there are).
    pub fn words(&self) -> std::borrow::Cow<'static, str> {
        match self {
            Error::UnknownKey { key, allowed } => {
                let key = if key.len() <= 64 {
                    format!(" {key:?}")
                } else {
                    String::new()
                };
                format!(
                    "Unknown key{key} in the body (the keys are: {})",
                    allowed.join(", ")
                )
                .into()
            }
            _ => self.message().into(),
        }
    }

    /// What a person is told to do about it.
    fn advice(&self) -> &'static str {
        match self {
            Error::MissingState
            | Error::StateTooLong
            | Error::StateNotRegistered
            | Error::CallbackTooLarge
            | Error::StateExpired => "Start the sign-in again from the application.",
            Error::StateConflict => "You can close this window and return to the application.",
            Error::SignInConflict => {
                "Someone else may have used this sign-in's address. Return to the application and start the sign-in again."
            }
            Error::StoreFull
            | Error::Unavailable
            | Error::TooManyWaiters
            | Error::TooManyPending
            | Error::QuotaExceeded(_)
            | Error::ConnectionsFull
            | Error::ClientConnectionsFull
            | Error::Internal => {
                "Please wait a minute and start the sign-in again from the application."
            }
            _ => "Check the address, or start again from the application.",
        }
    }

    /// The header this error's answer carries whatever its face: what a client needs to act on
    /// it (which method to use, how to authenticate, when to retry).
    pub fn header(&self) -> Option<(&'static str, std::borrow::Cow<'static, str>)> {
        let retry_after = |secs: u64| Some(("Retry-After", secs.to_string().into()));
        match self {
            Error::MethodNotAllowed(allow) => Some(("Allow", (*allow).into())),
            Error::Unauthorized | Error::BrokerUnauthorized | Error::ConnectionUnauthorized => {
                Some(("WWW-Authenticate", "Bearer realm=\"oauth-relay\"".into()))
            }
            Error::Connection(e) => {
                use crate::connections::ConnError as C;
                match e {
                    C::BackingOff { until, .. } => retry_after(
                        until
                            .duration_since(std::time::SystemTime::now())
                            .unwrap_or_default()
                            .as_secs()
                            .max(1),
                    ),
                    C::Pending | C::Busy => retry_after(1),
                    C::NoRefresher(_) | C::Full | C::Unavailable(_) => retry_after(5),
                    C::NotFound | C::NeedsReauth(_) | C::IdentityMismatch => None,
                }
            }
            Error::StoreFull
            | Error::SessionsFull
            | Error::TooManyWaiters
            | Error::QuotaExceeded(_)
            | Error::ConnectionsFull
            | Error::ClientConnectionsFull
            | Error::Unavailable => retry_after(5),
            // A share frees as the client's entries are retrieved or expire: minutes, not
            // seconds, for one that filled it with junk.
            Error::TooManyPending => retry_after(60),
            _ => None,
        }
    }

    pub fn into_response_for(self, face: Face) -> Response {
        let status = self.status();
        let response = match (face, &self) {
            (Face::Page, Error::NotFound) => Response::html(status, pages::not_found()),
            (Face::Page, _) => {
                Response::html(status, pages::problem(self.message(), self.advice()))
            }
            (Face::Api, Error::Connection(e)) => {
                use crate::connections::ConnError as C;
                // `status` names the connection's state where the caller acts on it.
                let (code, reason) = match e {
                    C::NeedsReauth(r) => ("needs_reauth", r.clone()),
                    C::BackingOff { reason, .. } => ("backing_off", reason.clone()),
                    C::Pending => ("pending", None),
                    C::Busy => ("busy", None),
                    _ => ("error", None),
                };
                let mut body = json!({ "status": code, "message": self.message() });
                if code != "error" {
                    body["reason"] = json!(reason);
                }
                Response::json(status, &body)
            }
            (Face::Api, _) => Response::json(
                status,
                &json!({ "status": "error", "message": self.words() }),
            ),
        };
        match self.header() {
            Some((name, value)) => response.with_header(name, value),
            None => response,
        }
    }

    /// For contexts with no path at hand (a panic, a refused long-poll): the API face.
    pub fn into_response(self) -> Response {
        self.into_response_for(Face::Api)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message().to_ascii_lowercase())
    }
}

impl std::error::Error for Error {}

/// Why a broker sign-in failed. The code ([`Reason::code`]) is a stable string callers match
/// on (`/status`, `/token`, the CLI, the audit log); the HTTP status of the person's page is
/// chosen here ([`Reason::status`]) and its words in `broker/pages.rs`, by an exhaustive match
/// on this enum, so a new reason cannot go without a page. A reason only one provider kind can
/// give is that kind's own ([`Reason::Own`]), with its status and words; the whole list is
/// `provider::every_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The person cancelled or refused consent at the provider.
    AccessDenied,
    /// The account's e-mail is not the expected one.
    EmailMismatch,
    /// The account's stable id at the provider is not the expected one.
    SubjectMismatch,
    /// The expected e-mail matched, but the provider does not vouch for it.
    EmailUnverified,
    /// The callback has no `state`.
    StateMissing,
    /// The callback's `state` was never issued.
    StateUnknown,
    StateExpired,
    /// The OAuth state was used already.
    StateReused,
    /// The callback came from a browser that did not open the link (no binding cookie, or a
    /// wrong one): nothing was taken or changed, the person is asked to open the link again in
    /// the browser they sign in with. Never a session's outcome.
    BrowserMismatch,
    LinkUnknown,
    LinkExpired,
    /// The link's sign-in failed; a new link is needed.
    LinkUsed,
    /// The sign-in is complete (a reload, or the link opened again).
    AlreadyConnected,
    /// Too busy, or the state store did not answer.
    Unavailable,
    /// The provider redirected back with an error other than `access_denied`, or with nothing.
    ProviderError,
    /// RFC 9207: the `iss` response parameter is missing where the provider promises it, or
    /// names another issuer (or the response came back to another provider's callback).
    IssuerMismatch,
    /// The code redemption failed or timed out.
    ExchangeFailed,
    /// No refresh token came back from a provider that must send one.
    NoRefreshToken,
    /// The id_token's signature or claims do not verify.
    IdTokenInvalid,
    /// A provider's profile call (GitHub's `/user`, an OpenID userinfo) failed.
    ProfileFailed,
    /// A failure only one provider kind gives, declared by it.
    Own(&'static OwnReason),
}

impl Reason {
    /// The reasons every provider shares; with each kind's own, `provider::every_reason`.
    pub const SHARED: [Reason; 20] = [
        Reason::AccessDenied,
        Reason::EmailMismatch,
        Reason::SubjectMismatch,
        Reason::EmailUnverified,
        Reason::StateMissing,
        Reason::StateUnknown,
        Reason::StateExpired,
        Reason::StateReused,
        Reason::BrowserMismatch,
        Reason::LinkUnknown,
        Reason::LinkExpired,
        Reason::LinkUsed,
        Reason::AlreadyConnected,
        Reason::Unavailable,
        Reason::ProviderError,
        Reason::IssuerMismatch,
        Reason::ExchangeFailed,
        Reason::NoRefreshToken,
        Reason::IdTokenInvalid,
        Reason::ProfileFailed,
    ];

    /// The stable reason code.
    pub fn code(self) -> &'static str {
        match self {
            Reason::AccessDenied => "access_denied",
            Reason::EmailMismatch => "email_mismatch",
            Reason::SubjectMismatch => "subject_mismatch",
            Reason::EmailUnverified => "email_unverified",
            Reason::StateMissing => "state_missing",
            Reason::StateUnknown => "state_unknown",
            Reason::StateExpired => "state_expired",
            Reason::StateReused => "state_reused",
            Reason::BrowserMismatch => "browser_mismatch",
            Reason::LinkUnknown => "link_unknown",
            Reason::LinkExpired => "link_expired",
            Reason::LinkUsed => "link_used",
            Reason::AlreadyConnected => "already_connected",
            Reason::Unavailable => "unavailable",
            Reason::ProviderError => "provider_error",
            Reason::IssuerMismatch => "issuer_mismatch",
            Reason::ExchangeFailed => "exchange_failed",
            Reason::NoRefreshToken => "no_refresh_token",
            Reason::IdTokenInvalid => "id_token_invalid",
            Reason::ProfileFailed => "profile_failed",
            Reason::Own(own) => own.code,
        }
    }

    /// The HTTP status of the page the person sees.
    pub fn status(self) -> u16 {
        match self {
            // Not an error of ours or theirs: a choice, or a finished sign-in.
            Reason::AccessDenied | Reason::AlreadyConnected => 200,
            Reason::EmailMismatch
            | Reason::SubjectMismatch
            | Reason::EmailUnverified
            | Reason::BrowserMismatch => 403,
            Reason::StateMissing | Reason::StateUnknown | Reason::LinkUnknown => 404,
            Reason::StateExpired | Reason::LinkExpired => 410,
            Reason::StateReused | Reason::LinkUsed => 409,
            Reason::Unavailable => 503,
            Reason::ProviderError
            | Reason::IssuerMismatch
            | Reason::ExchangeFailed
            | Reason::NoRefreshToken
            | Reason::IdTokenInvalid
            | Reason::ProfileFailed => 502,
            Reason::Own(own) => own.status,
        }
    }
}

/// A sign-in failure reason of one provider kind, declared in the kind's file (and listed in
/// its registry entry, so `provider::every_reason` and openapi.json's `Reason` know it): a
/// stable code, the status of the person's page, and the page's words.
#[derive(PartialEq, Eq)]
pub struct OwnReason {
    pub code: &'static str,
    pub status: u16,
    pub words: Words,
}

impl std::fmt::Debug for OwnReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Own({})", self.code)
    }
}

/// What a failure page says, in each language the pages speak: a title and a sentence (which
/// never shows a code, a token or the provider's own error text). `{provider}` stands for the
/// provider's display name.
#[derive(Debug, PartialEq, Eq)]
pub struct Words {
    pub en: [&'static str; 2],
    pub pt_br: [&'static str; 2],
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// A failed sign-in: the [`Reason`] callers and the person are told, and for the operator's
/// audit log only (never a page, never a caller) what happened and what to fix. Neither
/// `detail` nor `hint` ever holds a token, code, verifier or secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInFailure {
    pub reason: Reason,
    pub detail: String,
    pub hint: Option<String>,
}

impl SignInFailure {
    pub fn new(reason: Reason, detail: impl Into<String>) -> SignInFailure {
        SignInFailure {
            reason,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: Option<impl Into<String>>) -> SignInFailure {
        self.hint = hint.map(Into::into);
        self
    }
}

impl From<Reason> for SignInFailure {
    fn from(reason: Reason) -> SignInFailure {
        SignInFailure::new(reason, "")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_have_the_python_shape() {
        let r = Error::CallbackGone.into_response_for(Face::Api);
        assert_eq!(r.status, 410);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v,
            json!({"status": "error", "message": "Callback already retrieved"})
        );
        // Which pages may read it is the route's business (routes.rs, cors.rs).
        assert_eq!(r.header("Access-Control-Allow-Origin"), None);
    }

    #[test]
    fn each_token_is_named_in_its_refusal() {
        for (error, message) in [
            (Error::Unauthorized, "Missing or invalid API token"),
            (Error::BrokerUnauthorized, "Missing or invalid broker token"),
        ] {
            let r = error.into_response_for(Face::Api);
            assert_eq!(r.status, 401);
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["message"],
                message
            );
            assert_eq!(
                r.header("WWW-Authenticate"),
                Some("Bearer realm=\"oauth-relay\"")
            );
        }
    }

    #[test]
    fn past_a_share_is_429_with_retry_after_in_either_face() {
        let quota = Error::QuotaExceeded("Too many waiting requests from this client");
        let r = quota.clone().into_response_for(Face::Api);
        assert_eq!((r.status, r.header("Retry-After")), (429, Some("5")));
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap(),
            json!({"status": "error", "message": "Too many waiting requests from this client"})
        );
        let r = quota.into_response_for(Face::Page);
        assert_eq!((r.status, r.content_type), (429, crate::http::HTML));
        assert_eq!(r.header("Retry-After"), Some("5"));
        assert!(r
            .body_text()
            .contains("Too many waiting requests from this client"));
    }

    #[test]
    fn page_errors_are_pages() {
        let r = Error::NotFound.into_response_for(Face::Page);
        assert_eq!((r.status, r.content_type), (404, crate::http::HTML));
        assert!(r.body_text().contains("404 - Not Found"));
        assert_eq!(r.header("Cache-Control"), Some("no-store"));
    }

    #[test]
    fn shared_reason_codes_are_unique_with_statuses() {
        let mut codes: Vec<&str> = Reason::SHARED.iter().map(|r| r.code()).collect();
        for r in Reason::SHARED {
            assert!((200..600).contains(&r.status()));
        }
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Reason::SHARED.len());
    }
}
