//! The refresh protocol's decisions, as pure functions of a record, the store's clock, the
//! provider's rotation rule and the policy: what a caller does next (`decide`), and what each
//! step writes (`begin`, `beat`, `apply`, `revive`). The service (`service.rs`) reads, calls
//! these, and swaps the result in; a swap that finds the record moved is decided again.

use super::error::ConnError;
use super::model::{Connection, Intent, IntentState, Status, StoredGrant};
use super::policy::Policy;
use super::refresher::{RefreshOutcome, Rotation};
use crate::grant::Grant;
use crate::identity::Identity;
use std::time::{Duration, SystemTime};

/// What a caller wants of a connection.
#[derive(Clone, Copy, Debug)]
pub enum Want {
    /// An access token with at least this much life left.
    Token { min_ttl: Duration },
    /// The keep-alive's look: refresh if `next_refresh_at` has come, resolve a stale intent.
    KeepAlive,
}

#[derive(Debug)]
pub enum Step {
    /// Nothing to do: answer the current access token (for the keep-alive: done).
    Answer,
    /// Another attempt's outcome (or the end of a settle window) is awaited: look again.
    Wait,
    /// Swap in this record, which gives the intent to attempt `.1`, then present.
    Begin(Box<Connection>, String),
    /// Swap in this record (a resolution that presents nothing), then look again.
    Write(Box<Connection>),
    Fail(ConnError),
}

fn after(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_add(d).unwrap_or(t)
}

/// Whether `g`'s access token is inside the refresh-ahead margin (at most half its lifetime).
fn in_ahead_margin(g: &StoredGrant, now: SystemTime, policy: &Policy) -> bool {
    let Some(expires) = g.expires_at else {
        return false;
    };
    let lifetime = expires.duration_since(g.issued_at).unwrap_or_default();
    let margin = policy.refresh_ahead.min(lifetime / 2);
    now >= expires.checked_sub(margin).unwrap_or(expires)
}

/// Whether `c`'s access token has at least `min_ttl` of life left at `now`.
pub fn lasts(c: &Connection, now: SystemTime, min_ttl: Duration) -> bool {
    c.grant.expires_at.is_none_or(|e| e >= after(now, min_ttl))
}

/// What to do next for `want`. `own` says whether an attempt is one this replica is running
/// (alive whatever its heartbeat says); `waited_on` is the generation this caller has been
/// waiting to see refreshed, if any.
pub fn decide(
    c: &Connection,
    now: SystemTime,
    want: Want,
    rotation: Rotation,
    policy: &Policy,
    own: &dyn Fn(&str) -> bool,
    waited_on: Option<u64>,
) -> Step {
    if c.status == Status::NeedsReauth {
        return Step::Fail(ConnError::NeedsReauth(c.last_error.clone()));
    }
    let g = &c.grant;
    let unexpired = g.expires_at.is_none_or(|e| e > now);
    let good_enough = match want {
        Want::Token { min_ttl } => {
            let lasts = lasts(c, now, min_ttl);
            let fresh = lasts && !in_ahead_margin(g, now, policy);
            // The result of the refresh this caller waited for, or one so recent that another
            // would only be the provider's short lifetime again.
            let settled = waited_on.is_some_and(|n| g.generation > n) && unexpired;
            let recent = c
                .last_refresh_at
                .is_some_and(|t| now < after(t, policy.min_refresh_interval))
                && unexpired;
            if fresh || settled || recent {
                return Step::Answer;
            }
            lasts
        }
        Want::KeepAlive => {
            if c.intent.is_none() && c.next_refresh_at.is_none_or(|t| t > now) {
                return Step::Answer;
            }
            // The keep-alive never waits: an attempt in progress is as good as done.
            true
        }
    };
    let wait = if good_enough {
        Step::Answer
    } else {
        Step::Wait
    };
    if let Some(i) = &c.intent {
        let settled = now >= after(i.since, policy.settle.max(policy.stale_after));
        return match i.state {
            IntentState::InFlight
                if own(&i.attempt) || now < after(i.since, policy.stale_after) =>
            {
                wait
            }
            // Its replica stopped beating: the presentation's outcome is unknown.
            IntentState::InFlight | IntentState::Ambiguous if !rotation.may_represent() => {
                Step::Write(Box::new(abandon(c, now)))
            }
            IntentState::InFlight | IntentState::Ambiguous if settled => {
                let attempt = super::model::new_attempt();
                Step::Begin(Box::new(begin(c, now, &attempt)), attempt)
            }
            IntentState::InFlight | IntentState::Ambiguous => wait,
            // Only with `needs_reauth`, answered above.
            IntentState::Abandoned => Step::Fail(ConnError::NeedsReauth(c.last_error.clone())),
        };
    }
    if g.refresh_token.is_none() {
        return match (want, good_enough) {
            (Want::Token { .. }, false) => {
                let mut n = c.clone();
                n.status = Status::NeedsReauth;
                n.last_error = Some("no_refresh_token".into());
                n.next_refresh_at = None;
                Step::Write(Box::new(n))
            }
            _ => Step::Answer,
        };
    }
    if let Some(until) = c.backoff_until.filter(|b| now < *b) {
        return if good_enough {
            Step::Answer
        } else {
            Step::Fail(ConnError::BackingOff {
                until,
                reason: c.last_error.clone(),
            })
        };
    }
    let attempt = super::model::new_attempt();
    Step::Begin(Box::new(begin(c, now, &attempt)), attempt)
}

/// `c` with a new intent for its current generation, owned by `attempt` (replacing a settled
/// ambiguous or orphaned one: the caller only does this where presenting again is harmless).
pub fn begin(c: &Connection, now: SystemTime, attempt: &str) -> Connection {
    let mut n = c.clone();
    n.intent = Some(Intent {
        attempt: attempt.to_string(),
        generation: c.grant.generation,
        started_at: now,
        since: now,
        state: IntentState::InFlight,
    });
    n
}

/// A one-time rotator's intent whose outcome nobody knows: nobody presents that generation
/// again, so the connection needs a new sign-in. The intent stays, marked abandoned, so its
/// owner's outcome (if its replica was only paused) is still recorded.
fn abandon(c: &Connection, now: SystemTime) -> Connection {
    let mut n = c.clone();
    n.status = Status::NeedsReauth;
    n.last_error = Some("refresh_ambiguous".into());
    if let Some(i) = &mut n.intent {
        i.state = IntentState::Abandoned;
        i.since = now;
    }
    n
}

/// `c` with `attempt`'s heartbeat renewed, if the intent is still its own and in flight.
pub fn beat(c: &Connection, attempt: &str, now: SystemTime) -> Option<Connection> {
    let i = c.intent.as_ref()?;
    if i.attempt != attempt || i.state != IntentState::InFlight || i.since >= now {
        return None;
    }
    let mut n = c.clone();
    if let Some(i) = &mut n.intent {
        i.since = now;
    }
    Some(n)
}

/// Whether `attempt` holds `c`'s intent for its current generation: it may present the refresh
/// token (in flight, or abandoned by others while it was silent) and record the outcome.
pub fn holds(c: &Connection, attempt: &str) -> bool {
    c.intent.as_ref().is_some_and(|i| {
        i.attempt == attempt
            && i.generation == c.grant.generation
            && matches!(i.state, IntentState::InFlight | IntentState::Abandoned)
    })
}

/// `c` with `attempt`'s outcome recorded, or `None` if the intent is no longer `attempt`'s
/// (taken over, revived, resolved): then the outcome is dropped. `idle_limit` is the provider's.
pub fn apply(
    c: &Connection,
    attempt: &str,
    outcome: RefreshOutcome,
    now: SystemTime,
    rotation: Rotation,
    policy: &Policy,
    idle_limit: Option<Duration>,
) -> Option<Connection> {
    if !holds(c, attempt) {
        return None;
    }
    let abandoned = c
        .intent
        .as_ref()
        .is_some_and(|i| i.state == IntentState::Abandoned);
    let mut n = c.clone();
    n.last_attempt = Some(attempt.to_string());
    match outcome {
        RefreshOutcome::Granted(g) => {
            n.grant = next_generation(&c.grant, g, now);
            n.status = Status::Active;
            n.intent = None;
            n.backoff_until = None;
            n.failures = 0;
            n.last_error = None;
            n.last_refresh_at = Some(now);
            n.next_refresh_at = idle_limit.map(|l| after(now, l / 2));
        }
        RefreshOutcome::InvalidGrant => {
            n.status = Status::NeedsReauth;
            n.intent = None;
            n.last_error = Some("invalid_grant".into());
        }
        RefreshOutcome::Refused(code) | RefreshOutcome::NotSent(code) => {
            // The token was not used up: the grant lives (even one given up on while this
            // attempt was silent), after a back-off.
            n.status = Status::Active;
            n.intent = None;
            n.failures = c.failures.saturating_add(1);
            let until = after(now, policy.backoff(n.failures));
            n.backoff_until = Some(until);
            n.next_refresh_at = c.next_refresh_at.map(|t| t.max(until));
            n.last_error = Some(code);
        }
        RefreshOutcome::Ambiguous(code) => {
            if rotation.may_represent() && !abandoned {
                if let Some(i) = &mut n.intent {
                    i.state = IntentState::Ambiguous;
                    i.since = now;
                }
                n.last_error = Some(code);
            } else {
                n.status = Status::NeedsReauth;
                n.intent = None;
                n.last_error = Some("refresh_ambiguous".into());
            }
        }
    }
    Some(n)
}

/// The generation after `old`, from the provider's answer: the old refresh token stays when
/// none came (RFC 6749 6), and so does the old scope when none was reported.
fn next_generation(old: &StoredGrant, g: Grant, now: SystemTime) -> StoredGrant {
    StoredGrant {
        access_token: g.access_token,
        expires_at: g.expiry,
        refresh_token: g.refresh_token.or_else(|| old.refresh_token.clone()),
        token_type: g.token_type,
        scope: if g.scope.is_empty() {
            old.scope.clone()
        } else {
            g.scope
        },
        generation: old.generation + 1,
        issued_at: now,
    }
}

/// `c` re-authorized with `grant`: same id, a new generation (any attempt still running on the
/// old one finds its intent gone), active again. Only for the same account.
pub fn revive(
    c: &Connection,
    grant: Grant,
    identity: &Identity,
    now: SystemTime,
    idle_limit: Option<Duration>,
) -> Result<Connection, ConnError> {
    if identity.subject != c.subject || identity.tenant != c.tenant {
        return Err(ConnError::IdentityMismatch);
    }
    let mut n = c.clone();
    n.grant = StoredGrant {
        access_token: grant.access_token,
        expires_at: grant.expiry,
        refresh_token: grant.refresh_token,
        token_type: grant.token_type,
        scope: grant.scope,
        generation: c.grant.generation + 1,
        issued_at: now,
    };
    if identity.email.is_some() {
        n.email = identity.email.clone();
    }
    n.status = Status::Active;
    n.intent = None;
    n.backoff_until = None;
    n.failures = 0;
    n.last_error = None;
    n.last_refresh_at = Some(now);
    n.next_refresh_at = idle_limit.map(|l| after(now, l / 2));
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::codec::tests::sample;
    use crate::secret::Secret;
    use std::time::UNIX_EPOCH;

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + s)
    }

    /// An active connection at generation 3 whose token lives from 0 to 3600.
    fn conn() -> Connection {
        let mut c = sample();
        c.intent = None;
        c.backoff_until = None;
        c.failures = 0;
        c.last_error = None;
        c.last_refresh_at = Some(at(0));
        c.grant.generation = 3;
        c.grant.issued_at = at(0);
        c.grant.expires_at = Some(at(3600));
        c
    }

    fn token(min: u64) -> Want {
        Want::Token {
            min_ttl: Duration::from_secs(min),
        }
    }

    fn decide_at(c: &Connection, now: u64, want: Want, rotation: Rotation) -> Step {
        decide(
            c,
            at(now),
            want,
            rotation,
            &Policy::default(),
            &|_| false,
            None,
        )
    }

    fn granted(at_: &str, rt: Option<&str>) -> RefreshOutcome {
        RefreshOutcome::Granted(Grant {
            access_token: Secret::new(at_),
            refresh_token: rt.map(Secret::new),
            id_token: None,
            token_type: "Bearer".into(),
            scope: String::new(),
            expiry: Some(at(7200)),
        })
    }

    #[test]
    fn a_fresh_token_is_answered_and_an_old_one_begins_a_refresh() {
        let c = conn();
        assert!(matches!(
            decide_at(&c, 100, token(60), Rotation::OneTime),
            Step::Answer
        ));
        // Inside the 5-minute margin: refresh, though the token would do.
        let Step::Begin(n, attempt) = decide_at(&c, 3400, token(60), Rotation::OneTime) else {
            panic!("no refresh begun")
        };
        let i = n.intent.as_ref().unwrap();
        assert_eq!((i.generation, i.state), (3, IntentState::InFlight));
        assert_eq!(i.attempt, attempt);
        // While it runs, a caller whose needs the token meets is answered; one it does not
        // meet waits.
        assert!(matches!(
            decide_at(&n, 3401, token(60), Rotation::OneTime),
            Step::Answer
        ));
        assert!(matches!(
            decide_at(&n, 3401, token(600), Rotation::OneTime),
            Step::Wait
        ));
    }

    #[test]
    fn an_orphaned_intent_is_never_presented_again_to_a_one_time_rotator() {
        let Step::Begin(n, _) = decide_at(&conn(), 4000, token(60), Rotation::OneTime) else {
            panic!()
        };
        // Beats within `stale_after` (20 s): alive.
        assert!(matches!(
            decide_at(&n, 4019, token(60), Rotation::OneTime),
            Step::Wait
        ));
        // An attempt this replica runs is alive whatever its heartbeat.
        assert!(matches!(
            decide(
                &n,
                at(5000),
                token(60),
                Rotation::OneTime,
                &Policy::default(),
                &|_| true,
                None
            ),
            Step::Wait
        ));
        let Step::Write(dead) = decide_at(&n, 4021, token(60), Rotation::OneTime) else {
            panic!("not resolved")
        };
        assert_eq!(dead.status, Status::NeedsReauth);
        assert_eq!(dead.intent.as_ref().unwrap().state, IntentState::Abandoned);
        assert!(matches!(
            decide_at(&dead, 9999, token(60), Rotation::OneTime),
            Step::Fail(ConnError::NeedsReauth(_))
        ));
    }

    #[test]
    fn an_orphaned_intent_is_presented_again_after_the_settle_window_where_harmless() {
        let Step::Begin(n, first) =
            decide_at(&conn(), 4000, token(60), Rotation::ReusableAfterRotation)
        else {
            panic!()
        };
        assert!(matches!(
            decide_at(&n, 4059, token(60), Rotation::ReusableAfterRotation),
            Step::Wait
        ));
        let Step::Begin(m, second) = decide_at(&n, 4060, token(60), Rotation::NoRotation) else {
            panic!("not taken over")
        };
        assert_ne!(first, second);
        assert_eq!(m.intent.as_ref().unwrap().generation, 3);
        // The first attempt's late outcome is dropped; the second's recorded.
        let p = Policy::default();
        let r = Rotation::ReusableAfterRotation;
        assert!(apply(
            &m,
            &first,
            granted("late", Some("x")),
            at(4061),
            r,
            &p,
            None
        )
        .is_none());
        let done = apply(&m, &second, granted("at4", None), at(4062), r, &p, None).unwrap();
        assert_eq!(done.grant.generation, 4);
        assert_eq!(done.grant.access_token.expose(), "at4");
        assert_eq!(done.grant.refresh_token.as_ref().unwrap().expose(), "rt-1");
        assert!(done.intent.is_none());
    }

    #[test]
    fn outcomes_are_classified_into_states() {
        let p = Policy::default();
        let Step::Begin(n, a) = decide_at(&conn(), 4000, token(60), Rotation::OneTime) else {
            panic!()
        };
        let r = Rotation::OneTime;
        let dead = apply(&n, &a, RefreshOutcome::InvalidGrant, at(4001), r, &p, None).unwrap();
        assert_eq!(dead.status, Status::NeedsReauth);
        assert_eq!(dead.last_error.as_deref(), Some("invalid_grant"));
        let off = apply(
            &n,
            &a,
            RefreshOutcome::Refused("invalid_client".into()),
            at(4001),
            r,
            &p,
            None,
        )
        .unwrap();
        assert_eq!(off.status, Status::Active);
        assert!(off.intent.is_none());
        assert_eq!(off.backoff_until, Some(at(4016)));
        assert!(matches!(
            decide_at(&off, 4010, token(60), r),
            Step::Fail(ConnError::BackingOff { .. })
        ));
        assert!(matches!(
            decide_at(&off, 4016, token(60), r),
            Step::Begin(..)
        ));
        let Step::Begin(n2, a2) = decide_at(&off, 4016, token(60), r) else {
            panic!()
        };
        let off2 = apply(
            &n2,
            &a2,
            RefreshOutcome::NotSent("dns".into()),
            at(4016),
            r,
            &p,
            None,
        )
        .unwrap();
        assert_eq!(off2.backoff_until, Some(at(4046)));
        // Ambiguous: a one-time rotator needs a new sign-in at once; another settles.
        let amb = |r| {
            apply(
                &n,
                &a,
                RefreshOutcome::Ambiguous("timeout_or_reset".into()),
                at(4001),
                r,
                &p,
                None,
            )
            .unwrap()
        };
        assert_eq!(amb(Rotation::OneTime).status, Status::NeedsReauth);
        let settling = amb(Rotation::ReusableAfterRotation);
        assert_eq!(settling.status, Status::Active);
        assert_eq!(
            settling.intent.as_ref().unwrap().state,
            IntentState::Ambiguous
        );
        assert!(matches!(
            decide_at(&settling, 4060, token(60), Rotation::ReusableAfterRotation),
            Step::Wait
        ));
        assert!(matches!(
            decide_at(&settling, 4061, token(60), Rotation::ReusableAfterRotation),
            Step::Begin(..)
        ));
    }

    #[test]
    fn a_paused_owner_of_an_abandoned_intent_still_records_its_outcome() {
        let p = Policy::default();
        let r = Rotation::OneTime;
        let Step::Begin(n, a) = decide_at(&conn(), 4000, token(60), r) else {
            panic!()
        };
        let Step::Write(dead) = decide_at(&n, 4100, token(60), r) else {
            panic!()
        };
        assert!(holds(&dead, &a));
        let back = apply(
            &dead,
            &a,
            granted("at4", Some("rt4")),
            at(4200),
            r,
            &p,
            None,
        )
        .unwrap();
        assert_eq!(back.status, Status::Active);
        assert_eq!(back.grant.generation, 4);
        // A refusal proves the token unused: active again, after a back-off.
        let back = apply(
            &dead,
            &a,
            RefreshOutcome::Refused("x".into()),
            at(4200),
            r,
            &p,
            None,
        )
        .unwrap();
        assert_eq!(back.status, Status::Active);
    }

    #[test]
    fn beats_only_renew_ones_own_live_intent() {
        let Step::Begin(n, a) = decide_at(&conn(), 4000, token(60), Rotation::OneTime) else {
            panic!()
        };
        let b = beat(&n, &a, at(4010)).unwrap();
        assert_eq!(b.intent.as_ref().unwrap().since, at(4010));
        assert!(beat(&n, "someone-else", at(4010)).is_none());
    }

    #[test]
    fn waiting_callers_take_the_refresh_they_waited_for_and_no_refresh_storms() {
        let mut c = conn();
        // A provider giving 10-second tokens to a caller asking for 60 seconds.
        c.grant.issued_at = at(100);
        c.grant.expires_at = Some(at(110));
        c.last_refresh_at = Some(at(100));
        assert!(matches!(
            decide_at(&c, 101, token(60), Rotation::OneTime),
            Step::Answer
        ));
        c.last_refresh_at = Some(at(0));
        assert!(matches!(
            decide_at(&c, 101, token(60), Rotation::OneTime),
            Step::Begin(..)
        ));
        assert!(matches!(
            decide(
                &c,
                at(101),
                token(60),
                Rotation::OneTime,
                &Policy::default(),
                &|_| false,
                Some(2)
            ),
            Step::Answer
        ));
    }

    #[test]
    fn the_keep_alive_refreshes_when_due_and_never_waits() {
        let mut c = conn();
        c.next_refresh_at = Some(at(500));
        assert!(matches!(
            decide_at(&c, 499, Want::KeepAlive, Rotation::NoRotation),
            Step::Answer
        ));
        let Step::Begin(n, _) = decide_at(&c, 500, Want::KeepAlive, Rotation::NoRotation) else {
            panic!()
        };
        assert!(matches!(
            decide_at(&n, 501, Want::KeepAlive, Rotation::NoRotation),
            Step::Answer
        ));
    }

    #[test]
    fn revive_requires_the_same_account() {
        let c = conn();
        let grant = || Grant {
            access_token: Secret::new("new-at"),
            refresh_token: Some(Secret::new("new-rt")),
            id_token: None,
            token_type: "Bearer".into(),
            scope: String::new(),
            expiry: None,
        };
        let who = |subject: &str, tenant: Option<&str>| Identity {
            subject: subject.into(),
            email: None,
            email_verified: false,
            tenant: tenant.map(String::from),
            unverified_email: None,
        };
        let n = revive(&c, grant(), &who("5830144", Some("t")), at(1), None).unwrap();
        assert_eq!((n.grant.generation, n.status), (4, Status::Active));
        assert_eq!(n.id, c.id);
        assert_eq!(
            revive(&c, grant(), &who("other", Some("t")), at(1), None).unwrap_err(),
            ConnError::IdentityMismatch
        );
        assert_eq!(
            revive(&c, grant(), &who("5830144", Some("other")), at(1), None).unwrap_err(),
            ConnError::IdentityMismatch
        );
    }
}
