//! The one place that maps an error to its HTTP status and to the words its reader sees:
//! JSON `{"status":"error","message":...}` for programs (the Python server's shape), a page for
//! people.

use crate::http::Response;
use crate::pages;
use serde_json::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    NotFound,
    MethodNotAllowed(&'static str),
    BadRequest(&'static str),
    MissingState,
    StateTooLong,
    StateNotRegistered,
    StateConflict,
    /// The relay's `/api/...` without `OAUTH_RELAY_API_TOKEN`.
    Unauthorized,
    /// The broker's endpoints without `WK_M365_BROKER_TOKEN`.
    BrokerUnauthorized,
    CallbackNotFound,
    CallbackGone,
    RegistrationDisabled,
    StateExists,
    StoreFull,
    WriteScope,
    TooManyWaiters,
    UrlTooLong,
    BodyTooLarge,
    RequestTimeout,
    Unavailable,
    Internal,
}

/// Who reads the answer: a program (JSON) or a person in a browser (a page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Face {
    Api,
    Page,
}

impl Face {
    pub fn for_path(path: &str) -> Face {
        let api_prefixes = ["/api/", "/status/", "/token/", "/m365/sessions"];
        if api_prefixes.iter().any(|p| path.starts_with(p))
            || path == "/health"
            || path == "/metrics"
            || path == "/ready"
            || path == "/openapi.json"
        {
            Face::Api
        } else {
            Face::Page
        }
    }
}

impl Error {
    pub fn status(&self) -> u16 {
        match self {
            Error::NotFound | Error::CallbackNotFound | Error::RegistrationDisabled => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::BadRequest(_)
            | Error::MissingState
            | Error::StateTooLong
            | Error::StateNotRegistered
            | Error::WriteScope => 400,
            Error::StateConflict | Error::StateExists => 409,
            Error::Unauthorized | Error::BrokerUnauthorized => 401,
            Error::CallbackGone => 410,
            Error::StoreFull | Error::TooManyWaiters | Error::Unavailable => 503,
            Error::UrlTooLong => 414,
            Error::BodyTooLarge => 413,
            Error::RequestTimeout => 408,
            Error::Internal => 500,
        }
    }

    /// The sentence a program or a person reads. Never includes request data.
    pub fn message(&self) -> &'static str {
        match self {
            Error::NotFound => "Not found",
            Error::MethodNotAllowed(_) => "Method not allowed",
            Error::BadRequest(m) => m,
            Error::MissingState => "The sign-in response has no state parameter",
            Error::StateTooLong => {
                "The sign-in response's state parameter is longer than 1024 bytes"
            }
            Error::StateNotRegistered => "Unknown or expired sign-in",
            Error::StateConflict => "This sign-in was already completed with a different response",
            // Word for word as before: existing relay clients may match on it.
            Error::Unauthorized => "Missing or invalid API token",
            Error::BrokerUnauthorized => "Missing or invalid broker token",
            Error::CallbackNotFound => "Callback not found or expired",
            Error::CallbackGone => "Callback already retrieved",
            Error::RegistrationDisabled => {
                "State registration is not enabled (set OAUTH_RELAY_API_TOKEN)"
            }
            Error::StateExists => "State already registered or used",
            Error::StoreFull => "Too many pending callbacks; try again later",
            Error::WriteScope => "Only read-only Microsoft Graph scopes are allowed",
            Error::TooManyWaiters => "Too many waiting clients; try again later",
            Error::UrlTooLong => "Request URL too long",
            Error::BodyTooLarge => "Request body too large",
            Error::RequestTimeout => "The request did not arrive in time",
            Error::Unavailable => "State storage is unavailable; try again shortly",
            Error::Internal => "Internal server error",
        }
    }

    /// What a person is told to do about it.
    fn advice(&self) -> &'static str {
        match self {
            Error::MissingState | Error::StateTooLong | Error::StateNotRegistered => {
                "Start the sign-in again from the application."
            }
            Error::StateConflict => "You can close this window and return to the application.",
            Error::StoreFull | Error::Unavailable | Error::TooManyWaiters | Error::Internal => {
                "Please wait a minute and start the sign-in again from the application."
            }
            _ => "Check the address, or start again from the application.",
        }
    }

    pub fn into_response_for(self, face: Face) -> Response {
        let status = self.status();
        let mut response = match (face, &self) {
            (Face::Page, Error::NotFound) => Response::html(status, pages::not_found()),
            (Face::Page, _) => {
                Response::html(status, pages::problem(self.message(), self.advice()))
            }
            (Face::Api, _) => Response::json(
                status,
                &json!({ "status": "error", "message": self.message() }),
            )
            .with_header("Access-Control-Allow-Origin", "*"),
        };
        match self {
            Error::MethodNotAllowed(allow) => response = response.with_header("Allow", allow),
            Error::Unauthorized | Error::BrokerUnauthorized => {
                response = response.with_header("WWW-Authenticate", "Bearer realm=\"oauth-relay\"")
            }
            Error::StoreFull | Error::TooManyWaiters | Error::Unavailable => {
                response = response.with_header("Retry-After", "5")
            }
            _ => {}
        }
        response
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
        assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
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
    fn page_errors_are_pages() {
        let r = Error::NotFound.into_response_for(Face::Page);
        assert_eq!((r.status, r.content_type), (404, crate::http::HTML));
        assert!(r.body_text().contains("404 - Not Found"));
        assert_eq!(r.header("Cache-Control"), Some("no-store"));
    }
}
