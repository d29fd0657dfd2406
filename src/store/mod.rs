//! All state the service keeps, behind one trait, so the in-memory backend (one replica) and a
//! shared backend (several replicas) give the same guarantees: created once, taken once,
//! expiring by itself, bounded in count.

pub mod memory;
pub mod redis;

use crate::seal::SealKey;
use crate::secret::{RetrievalHash, Secret};
use std::time::{Duration, SystemTime};

/// What a retrieval can show. A callback whose state was registered with a retrieval hash goes
/// only to the holder of that secret (the API token does not stand in for it: every client
/// holds the token, only one holds the secret); any other callback only to a request that
/// passed the API token check (or when no token is configured). Anyone else is told
/// `Missing`, exactly as for a state nobody knows, and takes nothing.
#[derive(Clone, Debug)]
pub struct Proof {
    /// The hash of the `X-Retrieval-Secret` presented, if any.
    pub secret: Option<RetrievalHash>,
    /// Passed the API token check (or none is configured).
    pub authorized: bool,
}

impl Proof {
    /// An authorized request without a retrieval secret: what every retrieval was before
    /// retrieval secrets.
    pub fn authorized() -> Proof {
        Proof {
            secret: None,
            authorized: true,
        }
    }

    /// Whether this proof may have a callback guarded by `guard` (`None`: unguarded).
    pub fn opens(&self, guard: Option<&RetrievalHash>) -> bool {
        match guard {
            Some(expected) => self.secret.as_ref().is_some_and(|s| expected.matches(s)),
            None => self.authorized,
        }
    }
}

/// What the provider sent to `/callback` for one state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback {
    pub state: String,
    pub code: Option<Secret>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl Callback {
    /// Identifies the callback's content without keeping it: a reload of the same redirect has
    /// the same fingerprint, a different code does not.
    pub fn fingerprint(&self) -> [u8; 32] {
        crate::secret::fingerprint(&[
            self.code.as_ref().map(|c| c.expose()),
            self.error.as_deref(),
            self.error_description.as_deref(),
        ])
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// First callback for this state: stored.
    Stored,
    /// The same callback again (a person reloading the page): nothing changes.
    Repeated,
    /// A different callback for a state that already has one: refused, the first one stays.
    Conflict,
    /// Registered-states mode and nobody registered this state (or its registration expired).
    NotRegistered,
    /// The pending-entry cap is reached.
    Full,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    Taken(Callback),
    AlreadyTaken,
    Missing,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Register {
    Registered { expires_at: SystemTime },
    Exists,
    Full,
}

/// A broker login session: three unrelated random values (link id, OAuth state, retrieval
/// handle) so that whoever sees one of them cannot use the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub handle: String,
    pub link_id: String,
    pub oauth_state: String,
    pub verifier: Secret,
    /// The provider's name (`m365`, `github`, ...).
    pub provider: String,
    /// OpenID Connect's `nonce`, sent at authorization and required back in the id_token.
    pub nonce: String,
    /// Who must sign in: an e-mail address the provider vouches for, the provider's stable id
    /// of the account, or both. At least one is set.
    pub expected_email: Option<String>,
    pub expected_subject: Option<String>,
    pub force_consent: bool,
    pub scopes: Vec<String>,
    pub expires_at: SystemTime,
    /// Where the success page links back to (the chat the link came from), checked against the
    /// operator's allowed origins when the session was created.
    pub return_url: Option<String>,
    /// The caller's public key: the tokens are sealed to it the moment they arrive, and only
    /// the sealed answer is kept.
    pub seal_to: Option<SealKey>,
}

/// What a successful sign-in yields, waiting to be handed to the caller once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    pub provider: String,
    pub access_token: Secret,
    /// `None` where the provider issues none (GitHub's OAuth apps).
    pub refresh_token: Option<Secret>,
    pub id_token: Option<Secret>,
    pub token_type: String,
    pub scope: String,
    /// `None`: the access token does not expire.
    pub expiry: Option<SystemTime>,
    /// The provider's stable id of the account that signed in.
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub tenant: Option<String>,
}

/// What a successful sign-in leaves for the caller, to be handed out once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handoff {
    Clear(Tokens),
    /// The answer sealed to the session's `seal_to` key (a compact JWE): nothing the broker
    /// holds opens it. `provider` is for the audit line.
    Sealed {
        provider: String,
        jwe: String,
    },
}

impl From<Tokens> for Handoff {
    fn from(tokens: Tokens) -> Handoff {
        Handoff::Clear(tokens)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionStatus {
    /// Created; the person has not finished signing in (or the exchange is running).
    Pending,
    /// Tokens are waiting for the caller.
    Ready,
    /// The caller has the tokens.
    Consumed,
    /// Failed closed, with a reason code.
    Failed(String),
}

impl SessionStatus {
    pub fn name(&self) -> &'static str {
        match self {
            SessionStatus::Pending => "pending",
            SessionStatus::Ready => "ready",
            SessionStatus::Consumed => "consumed",
            SessionStatus::Failed(_) => "failed",
        }
    }
}

// Returned once per request and never held in bulk: boxing the large variant would only add an
// allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum StateTake {
    /// First use of this OAuth state: the session (with its verifier) for the code exchange.
    Taken(Session),
    /// The state was used before; the session's current status.
    Reused(SessionStatus),
    Expired,
    Unknown,
}

// As StateTake: a one-shot answer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum TokenTake {
    Taken(Handoff),
    Pending,
    Consumed,
    Failed(String),
    NotFound,
}

/// The backend could not answer (a shared store unreachable). Never a reason to guess.
#[derive(Debug)]
pub struct Unavailable(pub String);

pub type StoreResult<T> = Result<T, Unavailable>;

pub trait Store: Send + Sync {
    /// Stores the first callback for `cb.state`. With `require_registered`, only a state
    /// registered beforehand is accepted.
    fn put_callback(&self, cb: Callback, require_registered: bool) -> StoreResult<Put>;

    /// Hands out the callback once to a request with `proof` of the right to it (see `Proof`);
    /// afterwards the state answers `AlreadyTaken` to such requests until it expires. To any
    /// other request it answers `Missing` and changes nothing: a wrong secret does not use a
    /// callback up.
    fn take_callback_by(&self, state: &str, proof: &Proof) -> StoreResult<Take>;

    /// `take_callback_by` an authorized request without a retrieval secret.
    fn take_callback(&self, state: &str) -> StoreResult<Take> {
        self.take_callback_by(state, &Proof::authorized())
    }

    /// Whether a callback `proof` may have has landed for `state` (taken or not): used by
    /// long-polls to avoid missing a callback that landed while they were being parked, and
    /// so that news of a callback another's secret guards does not end their wait.
    fn has_callback_for(&self, state: &str, proof: &Proof) -> StoreResult<bool>;

    /// `has_callback_for` an authorized request without a retrieval secret.
    fn has_callback(&self, state: &str) -> StoreResult<bool> {
        self.has_callback_for(state, &Proof::authorized())
    }

    /// Registers a state ahead of its callback, for at most `ttl`; with `guard`, its callback
    /// will go only to a retrieval presenting the secret behind that hash.
    fn register_guarded(
        &self,
        state: &str,
        ttl: Duration,
        guard: Option<&RetrievalHash>,
    ) -> StoreResult<Register>;

    /// `register_guarded` without a retrieval hash.
    fn register_state(&self, state: &str, ttl: Duration) -> StoreResult<Register> {
        self.register_guarded(state, ttl, None)
    }

    /// Callbacks received and not yet expired, retrieved or not (the Python server's count).
    fn active_callbacks(&self) -> StoreResult<usize>;

    /// Stores a new broker session; `false` when the cap is reached.
    fn create_session(&self, session: Session) -> StoreResult<bool>;

    /// The session behind a login link, while it lives (opening a link does not use it up).
    fn session_by_link(&self, link_id: &str) -> StoreResult<Option<(Session, SessionStatus)>>;

    /// Takes the OAuth state once: the first caller gets the session and its verifier.
    fn take_oauth_state(&self, oauth_state: &str) -> StoreResult<StateTake>;

    /// Records the outcome of a taken state: what to hand out, or a failure reason.
    fn finish_session(&self, handle: &str, outcome: Result<Handoff, String>) -> StoreResult<()>;

    /// The session behind a retrieval handle, while it lives.
    fn session_status(&self, handle: &str) -> StoreResult<Option<(Session, SessionStatus)>>;

    /// Hands the tokens out once.
    fn take_tokens(&self, handle: &str) -> StoreResult<TokenTake>;

    /// Whether calls may block on I/O (a shared store across the network): the server then runs
    /// them on its blocking pool, never on the event loop. In memory they are map look-ups.
    fn blocks(&self) -> bool {
        false
    }

    /// Whether the backend answers (`/ready`).
    fn ping(&self) -> StoreResult<()> {
        Ok(())
    }

    /// `active_callbacks` for `/health`, which must never wait on a backend: a shared backend
    /// answers from a count refreshed in the background, `None` when it is unreachable.
    fn active_callbacks_now(&self) -> Option<usize> {
        self.active_callbacks().ok()
    }

    /// The name long-polls wait under for `id` (a state or handle) of `kind`. A shared backend
    /// hashes it, since the name crosses the network to other replicas.
    fn waiter_key(&self, kind: &str, id: &str) -> String {
        format!("{kind}:{id}")
    }

    /// Tells the other replicas that `waiter_key` has news.
    fn publish(&self, _waiter_key: &str) {}

    /// Drops what has expired. Backends that expire by themselves do nothing.
    fn sweep(&self) {}
}
