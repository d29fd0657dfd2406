//! Why a connection call did not give what was asked. The wiring maps these to statuses in
//! `error.rs`; none carries a token.

use std::time::SystemTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnError {
    /// No such connection (or, from `authorize`, a wrong credential: the same answer).
    NotFound,
    /// The grant is dead: a person must sign in again. The reason code, if any.
    NeedsReauth(Option<String>),
    /// Refreshes were refused lately and the token does not last as asked: retry after `until`.
    BackingOff {
        until: SystemTime,
        reason: Option<String>,
    },
    /// A refresh is running (or settling) and the caller's deadline came first: retry soon.
    Pending,
    /// This replica is running as many refreshes as it may: retry soon.
    Busy,
    /// `revive` with an account (subject or tenant) other than the connection's.
    IdentityMismatch,
    /// No refresher is registered for the connection's provider.
    NoRefresher(String),
    /// The store is at its cap.
    Full,
    /// The store did not answer.
    Unavailable(String),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnError::NotFound => write!(f, "no such connection"),
            ConnError::NeedsReauth(r) => {
                write!(f, "the connection needs a new sign-in")?;
                r.iter().try_for_each(|r| write!(f, " ({r})"))
            }
            ConnError::BackingOff { reason, .. } => {
                write!(f, "refreshes are backing off")?;
                reason.iter().try_for_each(|r| write!(f, " ({r})"))
            }
            ConnError::Pending => write!(f, "a refresh is in progress"),
            ConnError::Busy => write!(f, "too many refreshes in progress"),
            ConnError::IdentityMismatch => write!(f, "another account signed in"),
            ConnError::NoRefresher(p) => write!(f, "no refresher for provider {p}"),
            ConnError::Full => write!(f, "the connection store is full"),
            ConnError::Unavailable(e) => write!(f, "the connection store is unavailable: {e}"),
        }
    }
}

impl std::error::Error for ConnError {}

impl From<crate::store::Unavailable> for ConnError {
    fn from(e: crate::store::Unavailable) -> ConnError {
        ConnError::Unavailable(e.0)
    }
}
