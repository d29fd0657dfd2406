//! What the connections core asks of a provider: present a refresh token once, say what came
//! of it, and declare how the provider treats a refresh token it has rotated. Providers
//! implement `Refresher` on the shared OAuth client; tests hand in a closure (`RefreshFn`).

use crate::grant::Grant;
use crate::secret::Secret;
use std::time::Duration;

/// What becomes of a refresh token once the provider has answered it with a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Presenting a used refresh token again is refused, and may revoke the whole grant
    /// (GitHub Apps; Okta, Auth0, Cognito with rotation and no grace; RFC 9700 reuse
    /// detection; node-oidc-provider with `rotateRefreshToken`). A generation is presented at
    /// most once; if its outcome is unknown the connection needs re-authorization.
    OneTime,
    /// The provider issues a new refresh token each time but the old one stays valid
    /// (Microsoft Entra): presenting an old one again is harmless. A provider that accepts an
    /// old token only within a reuse grace window (Dex, Okta, Auth0 "leeway") is `OneTime`:
    /// the settle window may well outlast the grace.
    ReusableAfterRotation,
    /// The refresh token does not change (Google): presenting it again is harmless.
    NoRotation,
}

impl Rotation {
    /// Whether a refresh token may be presented again when an earlier presentation's outcome
    /// is unknown.
    pub fn may_represent(self) -> bool {
        !matches!(self, Rotation::OneTime)
    }
}

/// The outcome of one presentation of a refresh token.
#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    /// New tokens. A `refresh_token` of `None` keeps the current one (RFC 6749 6).
    Granted(Grant),
    /// The provider says the grant is dead (`invalid_grant`, GitHub's `bad_refresh_token`).
    InvalidGrant,
    /// The provider answered with another error: it did not use the token up. A reason code.
    Refused(String),
    /// Nothing reached the provider (DNS, connection refused, TLS handshake). A reason code.
    NotSent(String),
    /// The request may have reached the provider and its answer is unknown (a timeout or reset
    /// after sending, a gateway error, an unreadable success). A reason code.
    Ambiguous(String),
}

impl RefreshOutcome {
    /// A short name for logs and tests (never a token).
    pub fn kind(&self) -> &'static str {
        match self {
            RefreshOutcome::Granted(_) => "granted",
            RefreshOutcome::InvalidGrant => "invalid_grant",
            RefreshOutcome::Refused(_) => "refused",
            RefreshOutcome::NotSent(_) => "not_sent",
            RefreshOutcome::Ambiguous(_) => "ambiguous",
        }
    }
}

/// One provider's refresh, as the connections core uses it.
pub trait Refresher: Send + Sync {
    /// How the provider treats a rotated refresh token.
    fn rotation(&self) -> Rotation;

    /// Presents `refresh_token` once, within `budget` (an implementation that overruns it is
    /// not unsafe, only slow: the intent stays its own while its replica beats).
    fn refresh(
        &self,
        refresh_token: &Secret,
        scopes: &[String],
        budget: Duration,
    ) -> RefreshOutcome;

    /// How long the provider lets a refresh token go unused before it dies (Google: 6
    /// months, Entra: 90 days); the keep-alive refreshes at half of it. `None`: no limit.
    fn idle_limit(&self) -> Option<Duration> {
        None
    }
}

/// A `Refresher` made of a rotation rule, an optional idle limit and a closure.
pub struct RefreshFn<F> {
    pub rotation: Rotation,
    pub idle_limit: Option<Duration>,
    pub f: F,
}

impl<F> RefreshFn<F>
where
    F: Fn(&Secret, &[String], Duration) -> RefreshOutcome + Send + Sync,
{
    pub fn new(rotation: Rotation, f: F) -> RefreshFn<F> {
        RefreshFn {
            rotation,
            idle_limit: None,
            f,
        }
    }
}

impl<F> Refresher for RefreshFn<F>
where
    F: Fn(&Secret, &[String], Duration) -> RefreshOutcome + Send + Sync,
{
    fn rotation(&self) -> Rotation {
        self.rotation
    }

    fn refresh(
        &self,
        refresh_token: &Secret,
        scopes: &[String],
        budget: Duration,
    ) -> RefreshOutcome {
        (self.f)(refresh_token, scopes, budget)
    }

    fn idle_limit(&self) -> Option<Duration> {
        self.idle_limit
    }
}
