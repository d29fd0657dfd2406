//! Identity providers behind one trait. The broker only knows this trait; provider differences
//! (endpoints, client authentication, how identity is read) live in one file each.

pub mod jwks;
pub mod microsoft;

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

/// Tokens from the token endpoint, before any identity check.
pub struct Grant {
    pub access_token: Secret,
    pub refresh_token: Option<Secret>,
    pub id_token: Option<Secret>,
    pub token_type: String,
    pub scope: String,
    pub expiry: SystemTime,
}

/// Who signed in, as the provider reports it.
pub struct Identity {
    /// The e-mail address used for the expected-account check, lower-cased.
    pub email: String,
    /// The tenant the account belongs to, when the provider says.
    pub tenant: Option<String>,
}

/// A failed provider call. `reason` is the stable reason code shown to callers; `detail` and
/// `hint` are for the operator's log only (never a page) and never contain a token or code.
#[derive(Debug)]
pub struct Failure {
    pub reason: &'static str,
    pub detail: String,
    pub hint: Option<&'static str>,
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
    ) -> Result<Grant, Failure>;
    /// Reads who signed in (profile call and id_token claims) within `budget`.
    fn identity(&self, grant: &Grant, budget: Duration) -> Result<Identity, Failure>;
}
