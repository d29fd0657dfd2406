//! All state the service keeps, behind one trait, so the in-memory backend (one replica) and a
//! shared backend (several replicas) give the same guarantees: created once, taken once,
//! expiring by itself, bounded in count and per client.

pub mod memory;
pub mod redis;

use crate::http::Later;
use crate::seal::SealKey;
use crate::secret::{BindingHash, RetrievalHash, Secret};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A client as per-client shares count it: an IPv4 address, or an IPv6 /64 (what one
/// subscriber is usually given: counting single IPv6 addresses would hand one attacker 2^64
/// shares). Requests without an address (built without a socket, in unit tests) are one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    V4(u32),
    V6Prefix(u64),
    Unknown,
}

impl Client {
    pub fn of(ip: Option<IpAddr>) -> Client {
        // The same key the front door counts its shares under.
        match ip.map(crate::client_ip::share_key) {
            Some(IpAddr::V4(v4)) => Client::V4(u32::from(v4)),
            Some(IpAddr::V6(v6)) => Client::V6Prefix((u128::from(v6) >> 64) as u64),
            None => Client::Unknown,
        }
    }

    /// A stable name for the client (a shared store hashes it before it leaves the process).
    pub fn id(&self) -> String {
        match self {
            Client::V4(a) => std::net::Ipv4Addr::from(*a).to_string(),
            Client::V6Prefix(p) => format!("{}/64", std::net::Ipv6Addr::from(u128::from(*p) << 64)),
            Client::Unknown => "unknown".into(),
        }
    }
}

/// How many browsers a session remembers as having opened its link (the newest): a person's
/// phone and laptop, a preview bot's GET or two. Past it the oldest is forgotten; that browser
/// is asked to open the link again.
pub const MAX_BROWSERS: usize = 8;

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

/// What the provider sent to `/callback` for one state: every authorization-response
/// parameter a client needs to finish the flow (docs/api.md, "What comes back").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Callback {
    pub state: String,
    pub code: Option<Secret>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    /// RFC 9207: the issuer that sent the response, which a client checks against the one it
    /// started the flow with (mix-up attacks).
    pub iss: Option<String>,
    /// OpenID Connect Session Management 1.0.
    pub session_state: Option<String>,
    /// RFC 6749 4.1.2.1: a page about the error.
    pub error_uri: Option<String>,
}

impl Callback {
    /// Identifies the callback's content without keeping it: a reload of the same redirect has
    /// the same fingerprint, a different code (or issuer) does not. A callback without the
    /// later parameters has the fingerprint earlier versions gave it, so a reload of a callback
    /// they stored is still recognised as one during a rolling upgrade.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut parts = vec![
            self.code.as_ref().map(|c| c.expose()),
            self.error.as_deref(),
            self.error_description.as_deref(),
        ];
        let later = [
            self.iss.as_deref(),
            self.session_state.as_deref(),
            self.error_uri.as_deref(),
        ];
        if later.iter().any(Option::is_some) {
            parts.extend(later);
        }
        crate::secret::fingerprint(&parts)
    }

    /// The bytes of what the provider sent besides the state: what `max_bytes` and the
    /// per-callback bound count.
    pub fn payload_bytes(&self) -> usize {
        self.values().iter().map(|v| v.map_or(0, str::len)).sum()
    }

    /// Each kept parameter, the state aside, in the order of the fields.
    pub fn values(&self) -> [Option<&str>; 6] {
        [
            self.code.as_ref().map(Secret::expose),
            self.error.as_deref(),
            self.error_description.as_deref(),
            self.iss.as_deref(),
            self.session_state.as_deref(),
            self.error_uri.as_deref(),
        ]
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// First callback for this state: stored.
    Stored,
    /// First callback for a state registered beforehand: stored. Told apart from `Stored`
    /// because anyone can make the latter, so its completion event may not push out others
    /// (`events::outbox`).
    StoredRegistered,
    /// The same callback again (a person reloading the page): nothing changes.
    Repeated,
    /// A different callback while the first waits for retrieval: the state is now in conflict,
    /// and neither is ever handed out (one of them may be a stranger's, sent first to have the
    /// client sign in with the stranger's account; nobody can tell which).
    Conflicted,
    /// Any callback for a state already in conflict.
    InConflict,
    /// A different callback for a state whose callback was already retrieved: refused (the
    /// client has the first one).
    Conflict,
    /// Registered-states mode and nobody registered this state.
    NotRegistered,
    /// The state's registration expired (its tombstone remains): a late callback is refused.
    Expired,
    /// The pending-entry cap is reached.
    Full,
    /// The client's share of pending entries is reached.
    Quota,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    Taken(Callback),
    AlreadyTaken,
    /// Nothing this proof may know of: an unknown state, or one it does not open.
    Missing,
    /// Registered, its callback not arrived yet; the registration lives `expires_in` more.
    Pending {
        expires_in: Duration,
    },
    /// The registration expired before its callback arrived.
    Expired,
    /// Two different callbacks arrived (`Put::Conflicted`): neither is handed out.
    Conflict,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Register {
    Registered {
        expires_at: SystemTime,
    },
    /// Registered, used, or expired and not yet forgotten (a tombstone).
    Exists,
    Full,
    /// The client's share of pending entries is reached.
    Quota,
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
    /// Keep the grant as a new connection instead of handing out the refresh token.
    pub keep: bool,
    /// Re-authorizes this connection (its id): a successful sign-in, by the connection's own
    /// account, revives it.
    pub connection: Option<String>,
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
    /// The connection the sign-in made or revived (then `refresh_token` is `None`: the broker
    /// keeps it).
    pub connection: Option<Kept>,
}

/// A connection as the hand-off of the sign-in that made or revived it names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub id: String,
    /// The connection's credential, handed out once: with a new connection only (a revived one
    /// keeps its own).
    pub credential: Option<Secret>,
}

/// What a successful sign-in leaves for the caller, to be handed out once.
// One per session, handed out once: boxing the clear tokens would only add an allocation.
#[allow(clippy::large_enum_variant)]
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
    /// The callback came from a browser that did not open the session's link (no binding
    /// cookie, or one the session does not know): nothing was taken or changed.
    OtherBrowser,
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
    /// Stores the first callback for `cb.state`, sent by `client`. With `require_registered`,
    /// only a state registered beforehand is accepted. A callback for a state nobody
    /// registered is a new pending entry, counted against `client`'s share; one for a
    /// registered state counts against its registration's. A registration that expired leaves
    /// a tombstone for the TTL: its late callback is refused (`Expired`), not stored as a
    /// callback nobody registered.
    fn put_callback_from(
        &self,
        cb: Callback,
        require_registered: bool,
        client: Client,
    ) -> StoreResult<Put>;

    /// `put_callback_from` a client without an address.
    fn put_callback(&self, cb: Callback, require_registered: bool) -> StoreResult<Put> {
        self.put_callback_from(cb, require_registered, Client::Unknown)
    }

    /// Hands out the callback once to a request with `proof` of the right to it (see `Proof`);
    /// afterwards the state answers `AlreadyTaken` to such requests until it expires. To such a
    /// request a registered state also says `Pending`, `Expired` or `Conflict`. To any other
    /// request it answers `Missing` and changes nothing: a wrong secret does not use a
    /// callback up, nor learn that the state exists.
    fn take_callback_by(&self, state: &str, proof: &Proof) -> StoreResult<Take>;

    /// `take_callback_by` an authorized request without a retrieval secret.
    fn take_callback(&self, state: &str) -> StoreResult<Take> {
        self.take_callback_by(state, &Proof::authorized())
    }

    /// Whether `state` has news `proof` may have: a callback landed (taken, or in conflict),
    /// or its registration expired. Used by long-polls to avoid missing news that came while
    /// they were being parked, and so that news another's secret guards does not end their
    /// wait.
    fn has_callback_for(&self, state: &str, proof: &Proof) -> StoreResult<bool>;

    /// `has_callback_for` an authorized request without a retrieval secret.
    fn has_callback(&self, state: &str) -> StoreResult<bool> {
        self.has_callback_for(state, &Proof::authorized())
    }

    /// Registers a state ahead of its callback, for at most `ttl`; with `guard`, its callback
    /// will go only to a retrieval presenting the secret behind that hash. With `client`, the
    /// registration (and its tombstone, and then its callback) counts against that client's
    /// share; `None` for a trusted caller (one with the API token). When it expires it leaves
    /// a tombstone for the store's TTL, so nobody can register the state again meanwhile.
    fn register_by(
        &self,
        state: &str,
        ttl: Duration,
        guard: Option<&RetrievalHash>,
        client: Option<Client>,
    ) -> StoreResult<Register>;

    /// `register_by` a trusted caller.
    fn register_guarded(
        &self,
        state: &str,
        ttl: Duration,
        guard: Option<&RetrievalHash>,
    ) -> StoreResult<Register> {
        self.register_by(state, ttl, guard, None)
    }

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

    /// Remembers that a browser opened the session's link: `browser` is the hash of the
    /// binding cookie it was given (the newest `MAX_BROWSERS` are kept). Does nothing for a
    /// session that is gone, expired or whose state was taken.
    fn bind_browser(&self, handle: &str, browser: &BindingHash) -> StoreResult<()>;

    /// Takes the OAuth state once: the first caller gets the session and its verifier, if
    /// `browser` (the hash of the callback's binding cookie) is one that opened the link;
    /// otherwise `OtherBrowser`, and the state stays for the browser that did. Unknown, expired
    /// and reused states are answered as such whatever the browser.
    fn take_oauth_state(
        &self,
        oauth_state: &str,
        browser: Option<&BindingHash>,
    ) -> StoreResult<StateTake>;

    /// Records the outcome of a taken state: what to hand out, or a failure reason.
    fn finish_session(&self, handle: &str, outcome: Result<Handoff, String>) -> StoreResult<()>;

    /// The session behind a retrieval handle, while it lives.
    fn session_status(&self, handle: &str) -> StoreResult<Option<(Session, SessionStatus)>>;

    /// Hands the tokens out once.
    fn take_tokens(&self, handle: &str) -> StoreResult<TokenTake>;

    /// Whether calls may block on I/O (a shared store across the network): the server then runs
    /// them on its blocking pool, never on the event loop, except the relay's steps below,
    /// which it awaits there. In memory they are map look-ups.
    fn blocks(&self) -> bool {
        false
    }

    // The relay's steps (a callback stored, taken, looked for; a state registered) as futures owning what they need, for the server to await on its event loop
    // instead of a hop to the blocking pool per request. A store that blocks implements them
    // without blocking; the defaults make the call above at once (in memory, a map look-up).

    /// `put_callback_from`, awaited; and when it stored the callback or put its state in
    /// conflict, the other replicas are told (`publish` of the state's `waiter_key`), in the
    /// same step (Redis: in the same script, so it costs no round trip of its own).
    fn put_callback_async(
        self: Arc<Self>,
        cb: Callback,
        require_registered: bool,
        client: Client,
    ) -> Later<StoreResult<Put>> {
        let key = self.waiter_key("relay", &cb.state);
        let put = self.put_callback_from(cb, require_registered, client);
        if let Ok(Put::Stored | Put::StoredRegistered | Put::Conflicted) = put {
            self.publish(&key);
        }
        Box::pin(std::future::ready(put))
    }

    /// `take_callback_by`, awaited.
    fn take_callback_async(
        self: Arc<Self>,
        state: String,
        proof: Proof,
    ) -> Later<StoreResult<Take>> {
        Box::pin(std::future::ready(self.take_callback_by(&state, &proof)))
    }

    /// `has_callback_for`, awaited.
    fn has_callback_async(
        self: Arc<Self>,
        state: String,
        proof: Proof,
    ) -> Later<StoreResult<bool>> {
        Box::pin(std::future::ready(self.has_callback_for(&state, &proof)))
    }

    /// `register_by`, awaited.
    fn register_async(
        self: Arc<Self>,
        state: String,
        ttl: Duration,
        guard: Option<RetrievalHash>,
        client: Option<Client>,
    ) -> Later<StoreResult<Register>> {
        Box::pin(std::future::ready(self.register_by(
            &state,
            ttl,
            guard.as_ref(),
            client,
        )))
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
