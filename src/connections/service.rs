//! `Connections`: what the rest of the service calls. It reads a record, asks `transitions`
//! what to do, swaps the result in, and runs the refreshes it wins on worker threads: a worker
//! presents the refresh token on a thread of its own and renews its intent's heartbeat while
//! it waits, so a presentation is never cut short by a caller's deadline (a cut would make its
//! outcome ambiguous) and never overtaken while this replica is alive, however slow the
//! provider. Callers wait for outcomes on a notification (this replica's, or another's through
//! `notified`) and re-read the record, each bounded by its own deadline.

use super::error::ConnError;
use super::model::{self, Connection, CredentialHash, Status, StoredGrant};
use super::policy::Policy;
use super::refresher::{RefreshOutcome, Refresher};
use super::store::{ConnectionStore, Snapshot, Swap};
use super::transitions::{self, Step, Want};
use crate::grant::Grant;
use crate::identity::Identity;
use crate::secret::Secret;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

/// How soon a waiting caller re-reads at first, and at most: notifications make most waits
/// end sooner; re-reads are what a lost notification costs.
const POLL_FIRST: Duration = Duration::from_millis(20);
const POLL_MAX: Duration = Duration::from_millis(500);
/// Serving a token records its use at most this often (a write otherwise).
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// An access token as served.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub access_token: Secret,
    pub token_type: String,
    pub expires_at: Option<SystemTime>,
    pub scope: String,
    /// The grant generation it belongs to.
    pub generation: u64,
}

/// What `forget` hands back so the caller can revoke the grant at the provider: the store
/// keeps nothing of it.
#[derive(Debug)]
pub struct Forgotten {
    pub provider: String,
    pub refresh_token: Option<Secret>,
    pub access_token: Secret,
    /// A refresh was still running when the deadline came: the provider may have issued
    /// tokens that are not these (revoking these may not end the grant).
    pub interrupted: bool,
}

/// What one keep-alive pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    /// Connections the store reported due.
    pub due: usize,
    /// Refreshes (or re-presentations) this pass began.
    pub started: usize,
    /// Connections left for a later pass (busy, backing off, store errors).
    pub skipped: usize,
}

/// Told of each connection a replica's own write turned to `needs_reauth` (the refresh protocol
/// found its grant dead), once per such write: where the completion event is emitted.
pub type Observer = Box<dyn Fn(&Connection) + Send + Sync>;

/// Wakes this replica's waiting callers when any connection's record changes.
struct Notifier {
    seq: Mutex<u64>,
    cv: Condvar,
}

impl Notifier {
    fn seq(&self) -> u64 {
        *self.seq.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        *self.seq.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.cv.notify_all();
    }

    /// Waits until a notification after `seen`, or `timeout`.
    fn wait(&self, seen: u64, timeout: Duration) {
        let guard = self.seq.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self
            .cv
            .wait_timeout_while(guard, timeout, |seq| *seq == seen);
    }
}

struct Inner {
    store: Arc<dyn ConnectionStore>,
    refreshers: HashMap<String, Arc<dyn Refresher>>,
    policy: Policy,
    wake: Notifier,
    /// Attempts this replica's workers hold: alive, whatever their heartbeats say.
    own: Mutex<HashSet<String>>,
    workers: AtomicUsize,
    observer: std::sync::OnceLock<Observer>,
}

pub struct Connections {
    inner: Arc<Inner>,
}

impl Connections {
    /// `refreshers` maps each provider's name to its refresh; a connection can only be made
    /// for a provider that has one.
    pub fn new(
        store: Arc<dyn ConnectionStore>,
        refreshers: HashMap<String, Arc<dyn Refresher>>,
        policy: Policy,
    ) -> Connections {
        Connections {
            inner: Arc::new(Inner {
                store,
                refreshers,
                policy,
                wake: Notifier {
                    seq: Mutex::new(0),
                    cv: Condvar::new(),
                },
                own: Mutex::new(HashSet::new()),
                workers: AtomicUsize::new(0),
                observer: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Sets what is told of connections this replica's refreshes find dead (at most once; a
    /// second observer is ignored).
    pub fn observe(&self, observer: Observer) {
        let _ = self.inner.observer.set(observer);
    }

    /// Whether calls may block on I/O (run them on the blocking pool).
    pub fn blocks(&self) -> bool {
        self.inner.store.blocks()
    }

    /// Keeps a successful sign-in as a new connection (generation 0). Returns it and its
    /// credential, which is not kept (only its hash): hand it to the caller now.
    pub fn create(
        &self,
        provider: &str,
        identity: &Identity,
        scopes: Vec<String>,
        grant: Grant,
    ) -> Result<(Connection, Secret), ConnError> {
        let refresher = self.inner.refresher(provider)?;
        let credential = model::new_credential();
        let now = SystemTime::now();
        let mut conn = Connection {
            id: model::new_id(),
            provider: provider.to_string(),
            subject: identity.subject.clone(),
            tenant: identity.tenant.clone(),
            email: identity.email.clone(),
            scopes,
            status: Status::Active,
            created_at: now,
            last_refresh_at: None,
            next_refresh_at: refresher.idle_limit().map(|l| now + l / 2),
            last_used_at: None,
            credential: CredentialHash::of(credential.expose()),
            grant: StoredGrant {
                access_token: grant.access_token,
                expires_at: grant.expiry,
                refresh_token: grant.refresh_token,
                token_type: grant.token_type,
                scope: grant.scope,
                generation: 0,
                issued_at: now,
            },
            intent: None,
            backoff_until: None,
            failures: 0,
            last_error: None,
            last_attempt: None,
        };
        loop {
            match self.inner.store.swap(0, &conn)? {
                Swap::Done(_) => return Ok((conn, credential)),
                Swap::Full => return Err(ConnError::Full),
                // An id taken already (144 random bits: never, in practice).
                Swap::Moved => conn.id = model::new_id(),
            }
        }
    }

    pub fn get(&self, id: &str) -> Result<Connection, ConnError> {
        self.inner
            .store
            .load(id)?
            .found
            .map(|v| v.conn)
            .ok_or(ConnError::NotFound)
    }

    /// The connection, if `credential` is its own (compared in constant time); `NotFound`
    /// otherwise, exactly as for an unknown id.
    pub fn authorize(&self, id: &str, credential: &str) -> Result<Connection, ConnError> {
        let conn = self.get(id)?;
        if conn.credential_matches(credential) {
            Ok(conn)
        } else {
            Err(ConnError::NotFound)
        }
    }

    /// The connections of `provider` (and `subject`), or all.
    pub fn list(
        &self,
        provider: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Vec<Connection>, ConnError> {
        Ok(self.inner.store.list(provider, subject)?)
    }

    /// An access token with at least `min_ttl` left, refreshing it (once across every replica)
    /// if needed; waits for a refresh in progress until `deadline`.
    pub fn token(
        &self,
        id: &str,
        min_ttl: Duration,
        deadline: Instant,
    ) -> Result<AccessToken, ConnError> {
        self.token_for(id, None, min_ttl, deadline)
    }

    /// `token`, for the holder of `credential` only (`NotFound` otherwise, exactly as for an
    /// unknown id), checked on the record the token is read from: one read, not two.
    pub fn token_for(
        &self,
        id: &str,
        credential: Option<&str>,
        min_ttl: Duration,
        deadline: Instant,
    ) -> Result<AccessToken, ConnError> {
        let want = Want::Token { min_ttl };
        let (conn, _) = Inner::obtain(&self.inner, id, credential, want, deadline)?;
        Ok(access_token_of(&conn))
    }

    /// `token_for` at its first look, awaited (a store that blocks is read without blocking):
    /// the token when the record as read holds one that may be answered as it is; `Ok(None)`
    /// when anything more is needed (a refresh, a wait, another look after a failed read), for
    /// `token_for` to do where blocking is allowed. Decided as `token_for` decides.
    pub async fn token_at_once(
        &self,
        id: &str,
        credential: Option<&str>,
        min_ttl: Duration,
    ) -> Result<Option<AccessToken>, ConnError> {
        let store = self.inner.store.clone();
        let Ok(Snapshot { now, found }) = store.clone().load_async(id.to_string()).await else {
            return Ok(None);
        };
        let Some(v) = found else {
            return Err(ConnError::NotFound);
        };
        let c = &v.conn;
        if credential.is_some_and(|presented| !c.credential_matches(presented)) {
            return Err(ConnError::NotFound);
        }
        let refresher = self.inner.refresher(&c.provider)?;
        let own = |a: &str| self.inner.owns(a);
        let want = Want::Token { min_ttl };
        let step = transitions::decide(
            c,
            now,
            want,
            refresher.rotation(),
            &self.inner.policy,
            &own,
            None,
        );
        match step {
            Step::Answer => {
                if touch_due(c, now) {
                    let _ = store.touch_async(c.id.clone(), now).await;
                }
                Ok(Some(access_token_of(c)))
            }
            Step::Fail(e) => Err(e),
            _ => Ok(None),
        }
    }

    /// Re-authorizes a connection with a new sign-in's grant: same id, a new generation,
    /// active again; only if `identity` is the connection's account (subject and tenant).
    pub fn revive(
        &self,
        id: &str,
        grant: Grant,
        identity: &Identity,
    ) -> Result<Connection, ConnError> {
        loop {
            let snap = self.inner.store.load(id)?;
            let Some(v) = snap.found else {
                return Err(ConnError::NotFound);
            };
            let idle = self.inner.refresher(&v.conn.provider)?.idle_limit();
            let n = transitions::revive(&v.conn, grant.clone(), identity, snap.now, idle)?;
            // Moved: read and decide again.
            if let Swap::Done(_) = self.inner.store.swap(v.revision, &n)? {
                self.inner.changed(id);
                return Ok(n);
            }
        }
    }

    /// Deletes a connection and hands back its tokens (once) so the caller can revoke them
    /// upstream. A refresh in progress (its replica alive) is waited for until `deadline`, so
    /// that the tokens handed back are the newest; past it the connection is deleted anyway
    /// (`Forgotten::interrupted`), and the refresh finds the record gone and drops its outcome.
    pub fn forget(&self, id: &str, deadline: Instant) -> Result<Forgotten, ConnError> {
        loop {
            let seen = self.inner.wake.seq();
            let snap = self.inner.store.load(id)?;
            let Some(v) = snap.found else {
                return Err(ConnError::NotFound);
            };
            let running = v.conn.intent.as_ref().is_some_and(|i| {
                i.state == super::model::IntentState::InFlight
                    && (self.inner.owns(&i.attempt)
                        || snap.now < i.since + self.inner.policy.stale_after)
            });
            let left = deadline.saturating_duration_since(Instant::now());
            if running && !left.is_zero() {
                self.inner.wake.wait(seen, left.min(POLL_MAX));
                continue;
            }
            if self.inner.store.remove(id, v.revision)? {
                self.inner.changed(id);
                return Ok(Forgotten {
                    provider: v.conn.provider,
                    refresh_token: v.conn.grant.refresh_token,
                    access_token: v.conn.grant.access_token,
                    interrupted: running,
                });
            }
        }
    }

    /// Up to `limit` connections the keep-alive should look at now: a refresh to keep the
    /// grant alive has come due, or an intent may need resolving.
    pub fn due(&self, limit: usize) -> Result<Vec<String>, ConnError> {
        // The local clock: attention times were written from the store's, and a skew only
        // moves a keep-alive by that much.
        Ok(self.inner.store.due(SystemTime::now(), limit)?)
    }

    /// One keep-alive pass: for each due connection, begins its refresh (through the same
    /// single-flight path as `token`) or resolves its stale intent. Does not wait for the
    /// refreshes it begins; stops beginning at `deadline`.
    pub fn keep_alive_tick(&self, limit: usize, deadline: Instant) -> TickReport {
        let mut report = TickReport::default();
        let due = match self.due(limit) {
            Ok(due) => due,
            Err(e) => {
                crate::logging::warn("connections_keep_alive", json!({ "error": e.to_string() }));
                return report;
            }
        };
        report.due = due.len();
        for id in due {
            if Instant::now() >= deadline {
                report.skipped += 1;
                continue;
            }
            match Inner::obtain(&self.inner, &id, None, Want::KeepAlive, deadline) {
                Ok((_, true)) => report.started += 1,
                Ok(_) | Err(ConnError::NeedsReauth(_)) | Err(ConnError::NotFound) => {}
                Err(_) => report.skipped += 1,
            }
        }
        report
    }

    /// Another replica's news (a waiter key it published): waiting callers look again.
    pub fn notified(&self, waiter_key: &str) {
        if waiter_key.starts_with("conn:") {
            self.inner.wake.notify();
        }
    }

    /// Refreshes this replica is running now.
    pub fn refreshing(&self) -> usize {
        self.inner.workers.load(Ordering::SeqCst)
    }
}

impl Inner {
    fn refresher(&self, provider: &str) -> Result<Arc<dyn Refresher>, ConnError> {
        self.refreshers
            .get(provider)
            .cloned()
            .ok_or_else(|| ConnError::NoRefresher(provider.to_string()))
    }

    /// A write of this replica's landed: tells the observer when it ended a live grant.
    fn committed(&self, old: &Connection, new: &Connection) {
        if old.status == Status::Active && new.status == Status::NeedsReauth {
            if let Some(observe) = self.observer.get() {
                observe(new);
            }
        }
    }

    fn owns(&self, attempt: &str) -> bool {
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(attempt)
    }

    /// A record changed: wake this replica's waiters and tell the others.
    fn changed(&self, id: &str) {
        self.wake.notify();
        self.store.announce(id);
    }

    /// Takes a worker slot, if one is free.
    fn reserve(&self) -> bool {
        self.workers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.policy.max_refreshing).then_some(n + 1)
            })
            .is_ok()
    }

    /// The loop behind `token` and the keep-alive: read, decide, swap, wait, until the answer
    /// or the deadline. Also says whether this call began a refresh. With `credential`, only
    /// for its holder (`NotFound` otherwise).
    fn obtain(
        this: &Arc<Inner>,
        id: &str,
        credential: Option<&str>,
        want: Want,
        deadline: Instant,
    ) -> Result<(Connection, bool), ConnError> {
        let mut began = false;
        let mut waited_on = None;
        let mut pause = POLL_FIRST;
        let mut busy = false;
        loop {
            let seen = this.wake.seq();
            let snap = match this.store.load(id) {
                Ok(snap) => Some(snap),
                Err(e) if Instant::now() >= deadline => return Err(e.into()),
                Err(_) => None,
            };
            if let Some(Snapshot { now, found }) = snap {
                let Some(v) = found else {
                    return Err(ConnError::NotFound);
                };
                if credential.is_some_and(|presented| !v.conn.credential_matches(presented)) {
                    return Err(ConnError::NotFound);
                }
                let c = &v.conn;
                let refresher = this.refresher(&c.provider)?;
                let own = |a: &str| this.owns(a);
                let step = transitions::decide(
                    c,
                    now,
                    want,
                    refresher.rotation(),
                    &this.policy,
                    &own,
                    waited_on,
                );
                match step {
                    Step::Answer => {
                        if matches!(want, Want::Token { .. }) {
                            this.touch(c, now);
                        }
                        return Ok((v.conn, began));
                    }
                    Step::Fail(e) => return Err(e),
                    Step::Write(n) => match this.store.swap(v.revision, &n) {
                        Ok(Swap::Done(_)) => {
                            this.committed(c, &n);
                            this.changed(id);
                            continue;
                        }
                        Ok(_) => continue,
                        // Look again after a pause.
                        Err(_) => {}
                    },
                    Step::Begin(n, attempt) => {
                        if !this.reserve() {
                            busy = true;
                            match want {
                                Want::KeepAlive => return Err(ConnError::Busy),
                                // Refreshing ahead: the current token still does.
                                Want::Token { min_ttl } if transitions::lasts(c, now, min_ttl) => {
                                    return Ok((v.conn, false));
                                }
                                Want::Token { .. } => {}
                            }
                        } else {
                            match this.store.swap(v.revision, &n) {
                                Ok(Swap::Moved) | Ok(Swap::Full) => {
                                    this.workers.fetch_sub(1, Ordering::SeqCst);
                                    continue;
                                }
                                // Written, or perhaps written (the reply was lost): the worker
                                // finds out by reading before it presents anything.
                                Ok(Swap::Done(_)) | Err(_) => {
                                    began = true;
                                    Inner::spawn_worker(this, id, &attempt);
                                    waited_on = Some(c.grant.generation);
                                    this.changed(id);
                                    continue;
                                }
                            }
                        }
                    }
                    Step::Wait => waited_on = Some(c.grant.generation),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(if busy {
                    ConnError::Busy
                } else {
                    ConnError::Pending
                });
            }
            this.wake.wait(seen, pause.min(left));
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    fn touch(&self, c: &Connection, now: SystemTime) {
        if touch_due(c, now) {
            let _ = self.store.touch(&c.id, now);
        }
    }

    /// Runs attempt `attempt` on its own thread; the thread holds this replica only weakly, so
    /// a replica that is dropped stops beating and recording, like one that died.
    fn spawn_worker(this: &Arc<Inner>, id: &str, attempt: &str) {
        this.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(attempt.to_string());
        let weak = Arc::downgrade(this);
        let (id, attempt) = (id.to_string(), attempt.to_string());
        let spawned = std::thread::Builder::new()
            .name("conn-refresh".into())
            .spawn({
                let (id, attempt) = (id.clone(), attempt.clone());
                move || worker(weak, &id, &attempt)
            });
        if spawned.is_err() {
            // No thread: nothing was presented. Record that, so the intent does not wait to
            // be judged a dead replica's.
            this.record(&id, &attempt, RefreshOutcome::NotSent("no_thread".into()));
            this.finish(&id, &attempt);
        }
    }

    fn finish(&self, id: &str, attempt: &str) {
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(attempt);
        self.workers.fetch_sub(1, Ordering::SeqCst);
        self.changed(id);
    }

    /// Retries `f` on store errors until it answers or `record_patience` runs out.
    fn patiently<T>(
        &self,
        mut f: impl FnMut() -> Result<Option<T>, crate::store::Unavailable>,
    ) -> Option<T> {
        let give_up = Instant::now() + self.policy.record_patience;
        let mut pause = Duration::from_millis(50);
        loop {
            match f() {
                Ok(answer) => return answer,
                Err(e) if Instant::now() >= give_up => {
                    crate::logging::warn(
                        "connections_store_gave_up",
                        json!({ "error": e.0, "action": "the intent will be resolved as a dead replica's" }),
                    );
                    return None;
                }
                Err(_) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// What attempt `attempt` may present: the refresh token of the generation its intent is
    /// for, if (once the store answers) the intent is its own and the store vouches that a
    /// failover would keep it (`ConnectionStore::load_settled`).
    fn confirm(&self, id: &str, attempt: &str) -> Option<Confirmed> {
        self.patiently(|| {
            let Some(snap) = self.store.load_settled(id)? else {
                return Ok(Some(Confirmed::Unsettled));
            };
            let Some(v) = snap.found else {
                return Ok(None);
            };
            let c = v.conn;
            if !transitions::holds(&c, attempt) {
                return Ok(None);
            }
            let (Some(token), Ok(refresher)) = (c.grant.refresh_token, self.refresher(&c.provider))
            else {
                return Ok(None);
            };
            Ok(Some(Confirmed::Present(token, c.scopes, refresher)))
        })
    }

    fn beat(&self, id: &str, attempt: &str) {
        if let Ok(Snapshot {
            now,
            found: Some(v),
        }) = self.store.load(id)
        {
            if let Some(n) = transitions::beat(&v.conn, attempt, now) {
                let _ = self.store.swap(v.revision, &n);
            }
        }
    }

    /// Records `outcome` for `attempt`, retrying while the store is unreachable; stops when it
    /// landed (perhaps by an earlier try whose reply was lost) or is no longer the attempt's
    /// to record.
    fn record(&self, id: &str, attempt: &str, outcome: RefreshOutcome) {
        self.patiently(|| {
            let snap = self.store.load(id)?;
            let Some(v) = snap.found else {
                return Ok(Some(()));
            };
            if v.conn.last_attempt.as_deref() == Some(attempt) {
                return Ok(Some(()));
            }
            let Ok(refresher) = self.refresher(&v.conn.provider) else {
                return Ok(Some(()));
            };
            let Some(n) = transitions::apply(
                &v.conn,
                attempt,
                outcome.clone(),
                snap.now,
                refresher.rotation(),
                &self.policy,
                refresher.idle_limit(),
            ) else {
                crate::logging::info(
                    "connection_refresh_dropped",
                    json!({ "connection": crate::secret::short_hash(id), "outcome": outcome.kind() }),
                );
                return Ok(Some(()));
            };
            match self.store.swap(v.revision, &n) {
                Ok(Swap::Done(_)) => {
                    self.committed(&v.conn, &n);
                    crate::logging::info(
                        "connection_refreshed",
                        json!({ "connection": crate::secret::short_hash(id),
                                "outcome": outcome.kind(),
                                "generation": n.grant.generation, "status": n.status.name() }),
                    );
                    Ok(Some(()))
                }
                // Moved: decide again on the new record.
                Ok(_) => Err(crate::store::Unavailable("moved".into())),
                Err(e) => Err(e),
            }
        });
    }
}

/// What `confirm` found an attempt may do.
enum Confirmed {
    /// Present this refresh token for these scopes.
    Present(Secret, Vec<String>, Arc<dyn Refresher>),
    /// The intent is the attempt's, but the store cannot vouch that a failover would keep it:
    /// present nothing.
    Unsettled,
}

/// One refresh attempt: confirm the intent is its own, present on a thread of its own while
/// beating, record the outcome.
fn worker(weak: Weak<Inner>, id: &str, attempt: &str) {
    let confirmed = match weak.upgrade() {
        Some(inner) => inner.confirm(id, attempt),
        None => return,
    };
    let (token, scopes, refresher) = match confirmed {
        Some(Confirmed::Present(token, scopes, refresher)) => (token, scopes, refresher),
        Some(Confirmed::Unsettled) => {
            // Nothing was sent: the intent is cleared and the refresh backs off.
            if let Some(inner) = weak.upgrade() {
                let outcome = RefreshOutcome::NotSent("intent_not_replicated".into());
                inner.record(id, attempt, outcome);
                inner.finish(id, attempt);
            }
            return;
        }
        None => {
            if let Some(inner) = weak.upgrade() {
                inner.finish(id, attempt);
            }
            return;
        }
    };
    let (beat_every, budget) = match weak.upgrade() {
        Some(inner) => (inner.policy.heartbeat, inner.policy.refresh_timeout),
        None => return,
    };
    let (tx, rx) = mpsc::channel();
    let presenter = std::thread::Builder::new()
        .name("conn-present".into())
        .spawn(move || {
            let _ = tx.send(refresher.refresh(&token, &scopes, budget));
        });
    let outcome = match presenter {
        Err(_) => RefreshOutcome::NotSent("no_thread".into()),
        Ok(_) => loop {
            match rx.recv_timeout(beat_every) {
                Ok(outcome) => break outcome,
                Err(mpsc::RecvTimeoutError::Timeout) => match weak.upgrade() {
                    Some(inner) => inner.beat(id, attempt),
                    // This replica is gone: like a process that died mid-refresh.
                    None => return,
                },
                // The refresher panicked: whether it sent anything is unknown.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    break RefreshOutcome::Ambiguous("refresher_panicked".into())
                }
            }
        },
    };
    if let Some(inner) = weak.upgrade() {
        inner.record(id, attempt, outcome);
        inner.finish(id, attempt);
    }
}

/// Whether a token served at `now` should be recorded as a use (at most once per
/// `TOUCH_EVERY`, so serving rarely writes).
fn touch_due(c: &Connection, now: SystemTime) -> bool {
    c.last_used_at
        .is_none_or(|t| now.duration_since(t).unwrap_or_default() >= TOUCH_EVERY)
}

/// What a token request is answered with, from the connection's grant.
fn access_token_of(c: &Connection) -> AccessToken {
    let g = &c.grant;
    AccessToken {
        access_token: g.access_token.clone(),
        token_type: g.token_type.clone(),
        expires_at: g.expires_at,
        scope: g.scope.clone(),
        generation: g.generation,
    }
}
