//! Kept connections (issue 15): a successful sign-in the broker keeps, serving fresh access
//! tokens on demand and refreshing its grant at most once per grant generation across every
//! replica, even when a replica pauses or dies mid-refresh.
//!
//! - `model.rs`: the `Connection` record; `codec.rs`: how durable stores seal it.
//! - `store.rs`: the one operation a backend provides, a compare-and-swap on the record;
//!   `memory.rs`, `embedded.rs` (a redb file, the single-replica default), `redis.rs`.
//! - `refresher.rs`: what a provider provides (`Refresher`, its `Rotation` rule, the
//!   `RefreshOutcome`); `classify.rs`: a token endpoint's raw answer as an outcome.
//! - `transitions.rs`: the protocol's decisions, pure; `service.rs`: `Connections`, which runs
//!   them; `policy.rs`: its timings; `durability.rs`: whether Redis keeps what it is given.
//! - `config.rs`: the settings (where connections are kept, the timings an operator may change).
//!   The HTTP side is `broker/connections.rs`; sign-ins that keep their grant, `broker/login.rs`.
//!
//! # The refresh protocol, and why it presents a refresh token at most once
//!
//! A lock with a time-to-live cannot protect a refresh: the provider checks no fencing token,
//! so a holder that outlives its lease (a slow provider, a paused process) presents a token
//! that a second holder has already rotated (oauth2-proxy, Nango). Instead, the right to
//! present generation N's refresh token is a record, the *intent* (attempt id, generation N),
//! committed to the store before the token leaves the process, and every change to a
//! connection is a compare-and-swap on its record's revision:
//!
//! 1. A caller whose token is not good enough reads the record. If the grant is at generation
//!    N and holds no intent (and is not backing off), it swaps in an intent with a fresh
//!    attempt id. Of all replicas that read revision R, one swap succeeds; the others find
//!    the record moved, read it again, see the intent, and wait for its outcome (woken by a
//!    notification, re-reading on a bounded back-off, each until its own deadline).
//! 2. The winner's worker reads the record again and presents the refresh token only if the
//!    intent is still its own (so a lost swap reply never makes it present blindly). While the
//!    presentation runs it renews the intent's heartbeat; the presentation is never cut short
//!    by a caller's deadline, and never overtaken while its replica is alive, however long the
//!    provider takes.
//! 3. The outcome is swapped in only if the intent is still the attempt's and the generation
//!    still N: new tokens become generation N+1 (keeping the refresh token if none came back);
//!    `invalid_grant` makes the connection `needs_reauth`; an error answer, or a failure before
//!    anything was sent, clears the intent and backs off (the token was not used up); a timeout
//!    or reset after sending keeps the intent, marked ambiguous.
//!
//! Safety does not depend on any clock or timeout: only the holder of an intent presents, a
//! swap lets one writer in per revision, and an intent for generation N is only ever replaced
//! (a) by its owner's own outcome, (b) by re-authorization (a new generation), or (c) by a
//! *takeover* when its owner has stopped beating or reported an ambiguous outcome. A takeover
//! presents generation N again only to a provider whose rotation rule makes that harmless
//! (`Rotation::ReusableAfterRotation`, `NoRotation`), and only after the settle window; for a
//! one-time rotator the takeover presents nothing: the connection becomes `needs_reauth`, and
//! the intent stays, marked abandoned, so that an owner that was only paused can still record
//! the one presentation that happened. Timings (heartbeat, `stale_after`, `settle`, clock skew)
//! only decide how soon a dead replica's refresh is resolved, and, for providers that allow
//! it, whether a second presentation happens; never whether a one-time token is presented
//! twice.
//!
//! What the protocol needs from a store: that an acknowledged swap survives (redb fsyncs each
//! commit; Redis needs `appendfsync always`, see `durability.rs`), and that a swap is atomic.
//!
//! Refresh ahead of expiry and keeping idle grants alive go through the same path: a token
//! inside the refresh-ahead margin begins a refresh while the current token is still served,
//! and `Connections::keep_alive_tick` begins refreshes of grants whose provider would let them
//! die unused (`Refresher::idle_limit`) and resolves intents left by dead replicas.

pub mod classify;
pub mod codec;
pub mod config;
pub mod durability;
pub mod embedded;
pub mod error;
pub mod memory;
pub mod model;
pub mod policy;
pub mod redis;
pub mod refresher;
pub mod service;
pub mod store;
pub mod transitions;

pub use error::ConnError;
pub use model::{Connection, Intent, IntentState, Status, StoredGrant};
pub use policy::Policy;
pub use refresher::{RefreshFn, RefreshOutcome, Refresher, Rotation};
pub use service::{AccessToken, Connections, Forgotten, Observer, TickReport};
pub use store::ConnectionStore;
