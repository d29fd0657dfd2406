//! Identity providers behind one trait. The broker only knows this trait; provider differences
//! (endpoints, client authentication, how identity is read) live in one file each.

pub mod jwks;
pub mod microsoft;
pub mod oauth;

use crate::error::{Reason, SignInFailure};
use crate::secret::Secret;
use std::time::{Duration, SystemTime};

/// What the broker asks of a provider for one sign-in.
pub struct AuthorizeRequest<'a> {
    pub state: &'a str,
    pub code_challenge: &'a str,
    pub login_hint: &'a str,
    pub scopes: &'a [String],
    pub force_consent: bool,
}

/// Tokens from the token endpoint, before any identity check. `Debug` shows no token: they are
/// `Secret`s.
#[derive(Debug)]
pub struct Grant {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub id_token: Option<Secret>,
    pub token_type: String,
    pub scope: String,
    /// `None`: the token does not expire (no `expires_in`).
    pub expiry: Option<SystemTime>,
}

/// Who signed in, as the provider reports it.
pub struct Identity {
    /// The e-mail address used for the expected-account check, lower-cased.
    pub email: String,
    /// The tenant the account belongs to, when the provider says.
    pub tenant: Option<String>,
}

/// An id_token that does not verify: the person is told `id_token_invalid`; the operator's log
/// gets the JWKS module's own reason code and words.
impl From<jwks::IdTokenError> for SignInFailure {
    fn from(e: jwks::IdTokenError) -> SignInFailure {
        let hint = match e {
            jwks::IdTokenError::KeysUnavailable(_) => {
                Some("the provider's jwks_uri did not answer with a usable key set; check egress")
            }
            jwks::IdTokenError::WrongIssuer | jwks::IdTokenError::WrongAudience => {
                Some("check the configured issuer or tenant and the client id")
            }
            _ => None,
        };
        SignInFailure::new(Reason::IdTokenInvalid, format!("{}: {e}", e.reason())).with_hint(hint)
    }
}

pub trait Provider: Send + Sync {
    fn authorize_url(&self, request: &AuthorizeRequest) -> String;
    /// Redeems the authorization code with the PKCE verifier within `budget`.
    fn exchange(
        &self,
        code: &str,
        verifier: &Secret,
        scopes: &[String],
        budget: Duration,
    ) -> Result<Grant, SignInFailure>;
    /// Reads who signed in (profile call and id_token claims) within `budget`.
    fn identity(&self, grant: &Grant, budget: Duration) -> Result<Identity, SignInFailure>;
    /// What the operator should fix, for an error description the provider sent (to the
    /// callback or the token endpoint). For the audit log only.
    fn error_hint(&self, _description: &str) -> Option<String> {
        None
    }
}
