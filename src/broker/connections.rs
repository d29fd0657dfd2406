//! The caller's side of kept connections (issue 15): a connection's access token on demand
//! (`POST /connections/{id}/token`), its status (`GET /connections/{id}`), forgetting it and
//! revoking its grant upstream (`DELETE /connections/{id}`), a new login link for it
//! (`POST /connections/{id}/reauthorize`), and the listing (`GET /connections`). What a
//! sign-in that asked to be kept does is in `login.rs` (`keep`); the refresh single-flight is
//! the core's (`crate::connections`): these handlers ask it, never a provider, for a token.
//!
//! Who may: a connection's own credential (handed out once, with the sign-in that made it), on
//! every route of that connection; the broker token on the status, deletion, re-authorization
//! and listing, and on the token only with `OAUTH_RELAY_CONNECTIONS_BROKER_TOKEN`. A wrong
//! credential and an unknown id get the same 404, byte for byte.

use super::sessions::{self, Endpoint, Spec};
use super::{rfc3339, Broker};
use crate::app::App;
use crate::audit;
use crate::connections::{AccessToken, ConnError, Connection, Connections, Observer};
use crate::error::{Error, Reason, SignInFailure};
use crate::http::{decode_segment, HttpRequest, Reply, Response};
use crate::provider::{Grant, Identity, Provider};
use crate::seal::{Envelope, SealKey};
use crate::secret::short_hash;
use crate::store::{Kept as StoredKept, Session};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The most life a caller may ask a token to have left: a day is more than any provider gives.
const MAX_MIN_TTL_SECS: u64 = 24 * 3600;
/// How long a deletion waits for a refresh in progress, so the tokens it revokes are the newest.
const DELETE_WAIT: Duration = Duration::from_secs(10);

/// Kept connections as the broker serves them.
pub struct Kept {
    pub service: Arc<Connections>,
    /// Token requests waiting for a refresh on this replica (each holds a blocking thread).
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Whether the broker token stands for a connection's credential on its token route.
    broker_token: bool,
}

impl Kept {
    /// `max_waiting`: token requests that may wait for a refresh at once (past it, 503).
    pub fn new(service: Arc<Connections>, max_waiting: usize, broker_token: bool) -> Kept {
        Kept {
            service,
            waiting: AtomicUsize::new(0),
            max_waiting: max_waiting.max(1),
            broker_token,
        }
    }
}

/// A place among the waiting token requests, given back on drop.
struct WaitSlot<'a>(&'a AtomicUsize);

impl Drop for WaitSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The broker's kept connections, or why there are none (404 naming the setting).
pub fn kept(app: &App) -> Result<&Kept, Error> {
    let broker = app.broker()?;
    broker.kept.as_ref().ok_or_else(|| {
        Error::ConnectionsOff(match app.config.connections.as_ref().map(|c| &c.kept_in) {
            Some(crate::connections::config::KeptIn::Nowhere(words)) => words,
            _ => crate::connections::config::NEEDS_A_STORE,
        })
    })
}

/// Who a request is, for one connection's routes.
enum Caller {
    /// Presented the connection's own credential (checked against the record).
    Owner(Box<Connection>),
    /// Presented the broker token.
    Broker,
}

/// The credential `bearer` presents for a connection's route: `None` for the broker token
/// where `broker_ok` (403 where not). Compared with the broker token in constant time; a
/// credential is checked against the record it opens, by the caller.
fn presented<'a>(
    broker: &Broker,
    bearer: Option<&'a str>,
    broker_ok: bool,
) -> Result<Option<&'a str>, Error> {
    let bearer = bearer.ok_or(Error::ConnectionUnauthorized)?;
    if !broker.config.broker_token.matches(bearer) {
        return Ok(Some(bearer));
    }
    if broker_ok {
        Ok(None)
    } else {
        Err(Error::BrokerTokenNotAllowed)
    }
}

/// A refusal of the connection core as the API answers it: an unknown id and a wrong
/// credential alike (`Not found`, byte for byte).
fn conn_error(e: ConnError) -> Error {
    match e {
        ConnError::NotFound => Error::NotFound,
        e => Error::Connection(e),
    }
}

/// The caller of `id`'s route: its credential, or the broker token where `broker_ok`. Anyone
/// else, whether or not `id` exists, is told `Not found`.
fn caller(
    broker: &Broker,
    kept: &Kept,
    bearer: Option<&str>,
    id: &str,
    broker_ok: bool,
) -> Result<Caller, Error> {
    match presented(broker, bearer, broker_ok)? {
        None => Ok(Caller::Broker),
        Some(credential) => kept
            .service
            .authorize(id, credential)
            .map(|conn| Caller::Owner(Box::new(conn)))
            .map_err(conn_error),
    }
}

/// The connection behind `caller`, read now.
fn connection_of(kept: &Kept, caller: Caller, id: &str) -> Result<Connection, Error> {
    match caller {
        Caller::Owner(conn) => Ok(*conn),
        Caller::Broker => kept.service.get(id).map_err(conn_error),
    }
}

/// `{id}` of a connection's path, or `Not found`.
fn id_of(raw: &str) -> Result<String, Error> {
    decode_segment(raw)
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or(Error::NotFound)
}

/// Runs `job` where it may block: in place with a store that does not (it is quick), on the
/// blocking pool otherwise.
fn run(kept: &Kept, job: impl FnOnce() -> Response + Send + 'static) -> Reply {
    if kept.service.blocks() {
        Reply::later(job)
    } else {
        Reply::Now(job())
    }
}

fn result(r: Result<Response, Error>) -> Response {
    r.unwrap_or_else(|e| e.into_response())
}

const TOKEN_KEYS: &[&str] = &["min_ttl", "wait", "seal_to"];

/// What a token request asked for.
struct TokenAsk {
    min_ttl: Duration,
    wait: Duration,
    seal_to: Option<SealKey>,
}

fn token_ask(app: &App, body: &[u8]) -> Result<TokenAsk, Error> {
    // No body is an empty request: the defaults.
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        crate::json_body::object(body, TOKEN_KEYS)?
    };
    let secs = |v: &Value, what: &'static str| match v {
        Value::Null => Ok(None),
        v => v.as_u64().map(Some).ok_or(Error::BadRequest(what)),
    };
    let min_ttl = secs(
        &body["min_ttl"],
        "min_ttl must be a whole number of seconds",
    )?
    .unwrap_or(0);
    if min_ttl > MAX_MIN_TTL_SECS {
        return Err(Error::BadRequest("min_ttl must be at most 86400 seconds"));
    }
    let wait = secs(&body["wait"], "wait must be a whole number of seconds")?
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(
            crate::connections::config::defaults::TOKEN_WAIT_SECS,
        ))
        .min(app.config.max_wait);
    Ok(TokenAsk {
        min_ttl: Duration::from_secs(min_ttl),
        wait,
        seal_to: sessions::seal_to_of(&body["seal_to"])?,
    })
}

/// `POST /connections/{id}/token`: an access token with at least `min_ttl` seconds left,
/// refreshed (once across every replica) if needed; waits up to `wait` seconds for a refresh
/// in progress, then answers 503 `pending` with `Retry-After`. With `seal_to`, sealed to it.
pub fn token(app: &Arc<App>, req: &HttpRequest, raw: &str) -> Result<Reply, Error> {
    let kept = kept(app)?;
    let id = id_of(raw)?;
    let ask = token_ask(app, &req.body)?;
    let bearer = bearer_of(req);
    // A fresh token (the usual case) is answered at the first look: in place on a store that
    // does not block, awaited on the event loop on one that does (Redis). Only a request that
    // needs more (a refresh, a wait for one) goes to the blocking pool.
    if !kept.service.blocks() {
        if let Some(answer) = serve_token(app, bearer.as_ref(), &id, &ask, false)? {
            return Ok(Reply::Now(answer));
        }
        return Ok(token_on_the_pool(app.clone(), bearer, id, ask));
    }
    let app = app.clone();
    Ok(Reply::awaiting(async move {
        match token_at_once(&app, bearer.as_ref(), &id, &ask).await {
            Ok(Some(answer)) => Reply::Now(answer),
            Ok(None) => token_on_the_pool(app, bearer, id, ask),
            Err(e) => Reply::Now(e.into_response()),
        }
    }))
}

/// The token answer, worked out on the blocking pool, where it may wait for a refresh.
fn token_on_the_pool(
    app: Arc<App>,
    bearer: Option<crate::secret::Secret>,
    id: String,
    ask: TokenAsk,
) -> Reply {
    Reply::later(move || {
        result(
            serve_token(&app, bearer.as_ref(), &id, &ask, true).map(|answer| {
                answer.unwrap_or_else(|| Error::Connection(ConnError::Pending).into_response())
            }),
        )
    })
}

/// The token answer when the record as read allows one at once (`Connections::token_at_once`),
/// awaited; `None` when it needs the blocking pool.
async fn token_at_once(
    app: &App,
    bearer: Option<&crate::secret::Secret>,
    id: &str,
    ask: &TokenAsk,
) -> Result<Option<Response>, Error> {
    let broker = app.broker()?;
    let kept = kept(app)?;
    let credential = presented(broker, bearer.map(|b| b.expose()), kept.broker_token)?;
    let token = kept
        .service
        .token_at_once(id, credential, ask.min_ttl)
        .await
        .map_err(conn_error)?;
    Ok(token.map(|t| token_answer(broker, id, &t, ask.seal_to.as_ref())))
}

/// The request's bearer credential, kept for a job that runs later.
fn bearer_of(req: &HttpRequest) -> Option<crate::secret::Secret> {
    req.bearer_token().map(crate::secret::Secret::new)
}

/// The token answer for `ask`; `None` when it would have to wait for a refresh and `may_wait`
/// is false (then ask again where waiting does not hold up an event loop).
fn serve_token(
    app: &App,
    bearer: Option<&crate::secret::Secret>,
    id: &str,
    ask: &TokenAsk,
    may_wait: bool,
) -> Result<Option<Response>, Error> {
    let broker = app.broker()?;
    let kept = kept(app)?;
    // The broker token is checked here; a credential on the record the token is read from (one
    // read of the store, not two).
    let credential = presented(broker, bearer.map(|b| b.expose()), kept.broker_token)?;
    let token = |deadline| {
        kept.service
            .token_for(id, credential, ask.min_ttl, deadline)
    };
    // First without waiting: a fresh token is answered at once.
    let token = match token(Instant::now()) {
        Err(ConnError::Pending | ConnError::Busy) if !ask.wait.is_zero() => {
            if !may_wait {
                return Ok(None);
            }
            let taken = kept.waiting.fetch_add(1, Ordering::SeqCst);
            let _slot = WaitSlot(&kept.waiting);
            if taken >= kept.max_waiting {
                return Err(Error::Connection(ConnError::Busy));
            }
            token(Instant::now() + ask.wait)
        }
        other => other,
    };
    let token = token.map_err(conn_error)?;
    Ok(Some(token_answer(broker, id, &token, ask.seal_to.as_ref())))
}

/// The token answer: in the clear, or sealed to the caller's key (`aud` is the connection).
fn token_answer(broker: &Broker, id: &str, t: &AccessToken, seal_to: Option<&SealKey>) -> Response {
    let expires_in = t.expires_at.map(|e| {
        e.duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs()
    });
    let mut body = Map::new();
    body.insert("access_token".into(), json!(t.access_token.expose()));
    body.insert("token_type".into(), json!(t.token_type));
    body.insert("expires_at".into(), json!(t.expires_at.map(rfc3339)));
    body.insert("expires_in".into(), json!(expires_in));
    body.insert("scope".into(), json!(t.scope));
    body.insert("connection".into(), json!(id));
    let body = match seal_to {
        None => Value::Object(body),
        Some(key) => {
            let envelope = Envelope {
                issuer: &broker.config.public_base_url,
                audience: id,
                // Opened at once by the caller that asked: the trip and clock skew.
                lifetime: crate::seal::OPEN_GRACE,
            };
            json!({ "sealed": key.seal_answer(&envelope, body) })
        }
    };
    Response::json(200, &body).with_header("Cache-Control", "no-store")
}

/// A connection as its status and the listing show it: never a token.
fn view(c: &Connection) -> Value {
    let t = |t: Option<SystemTime>| t.map(rfc3339);
    json!({
        "id": c.id,
        "provider": c.provider,
        "subject": c.subject,
        "tenant": c.tenant,
        "email": c.email,
        "scopes": c.scopes,
        "status": c.status.name(),
        "reason": c.last_error,
        "created_at": rfc3339(c.created_at),
        "last_refresh_at": t(c.last_refresh_at),
        "next_refresh_at": t(c.next_refresh_at),
        "last_used_at": t(c.last_used_at),
        "expires_at": t(c.grant.expires_at),
        "refreshing": c.intent.is_some(),
    })
}

/// `GET /connections/{id}` (its status) and `DELETE /connections/{id}` (forget and revoke).
pub fn one(app: &Arc<App>, req: &HttpRequest, raw: &str) -> Result<Reply, Error> {
    let kept = kept(app)?;
    let id = id_of(raw)?;
    let deleting = req.method == "DELETE";
    let (app, bearer) = (app.clone(), bearer_of(req));
    let job = move || {
        let bearer = bearer.as_ref().map(|b| b.expose());
        result(if deleting {
            delete(&app, bearer, &id)
        } else {
            status(&app, bearer, &id)
        })
    };
    // A deletion waits for a refresh in progress: never on an event loop.
    Ok(if deleting {
        Reply::later(job)
    } else {
        run(kept, job)
    })
}

fn status(app: &App, bearer: Option<&str>, id: &str) -> Result<Response, Error> {
    let (broker, kept) = (app.broker()?, kept(app)?);
    let who = caller(broker, kept, bearer, id, true)?;
    let conn = connection_of(kept, who, id)?;
    Ok(Response::json(200, &view(&conn)).with_header("Cache-Control", "no-store"))
}

fn delete(app: &App, bearer: Option<&str>, id: &str) -> Result<Response, Error> {
    let (broker, kept) = (app.broker()?, kept(app)?);
    caller(broker, kept, bearer, id, true)?;
    let forgotten = kept
        .service
        .forget(id, Instant::now() + DELETE_WAIT)
        .map_err(conn_error)?;
    // The record is gone: whatever happens upstream, the broker keeps nothing of the grant.
    let (revoked, revocation) = match broker.provider(&forgotten.provider) {
        None => (false, "provider_not_configured"),
        Some(p) => match p.revoke(
            Some(&forgotten.access_token),
            forgotten.refresh_token.as_ref(),
            broker.config.exchange_timeout,
        ) {
            Ok(()) => (true, "revoked"),
            Err(crate::provider::RevokeError::Unsupported) => (false, "not_supported"),
            Err(crate::provider::RevokeError::NoToken) => (false, "no_token"),
            Err(crate::provider::RevokeError::Failed(detail)) => {
                audit::record(
                    "connection_revocation_failed",
                    None,
                    None,
                    json!({ "connection": short_hash(id), "provider": forgotten.provider,
                            "detail": detail }),
                );
                (false, "failed")
            }
        },
    };
    audit::record(
        "connection_deleted",
        None,
        None,
        json!({ "connection": short_hash(id), "provider": forgotten.provider,
                "revocation": revocation, "interrupted": forgotten.interrupted }),
    );
    if let Some(events) = app.events.as_deref() {
        events.connection_changed(
            crate::events::CONNECTION_DELETED,
            json!({ "connection": id, "provider": forgotten.provider, "status": "deleted",
                "reason": null, "revoked": revoked }),
        );
    }
    Ok(Response::json(
        200,
        &json!({ "id": id, "status": "deleted", "revoked": revoked, "revocation": revocation,
                 "interrupted": forgotten.interrupted }),
    )
    .with_header("Cache-Control", "no-store"))
}

const REAUTHORIZE_KEYS: &[&str] = &["return_url", "force_consent", "seal_to"];

/// `POST /connections/{id}/reauthorize`: a new login session for the connection's own account
/// (pinned to its subject); a successful sign-in revives the same connection (same id and
/// credential, a new grant). Answers as session creation does.
pub fn reauthorize(
    app: &Arc<App>,
    req: &HttpRequest,
    raw: &str,
    endpoint: Endpoint<'static>,
) -> Result<Reply, Error> {
    let kept = kept(app)?;
    let id = id_of(raw)?;
    let body = if req.body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        crate::json_body::object(&req.body, REAUTHORIZE_KEYS)?
    };
    let (app, bearer) = (app.clone(), bearer_of(req));
    Ok(run(kept, move || {
        let bearer = bearer.as_ref().map(|b| b.expose());
        result(new_link(&app, bearer, &id, &body, endpoint))
    }))
}

fn new_link(
    app: &App,
    bearer: Option<&str>,
    id: &str,
    body: &Value,
    endpoint: Endpoint,
) -> Result<Response, Error> {
    let (broker, kept) = (app.broker()?, kept(app)?);
    let who = caller(broker, kept, bearer, id, true)?;
    let conn = connection_of(kept, who, id)?;
    let provider =
        broker
            .provider(&conn.provider)
            .ok_or(Error::Connection(ConnError::NoRefresher(
                conn.provider.clone(),
            )))?;
    let spec = Spec {
        email: None,
        // Pinned: only the connection's own account can revive it.
        subject: Some(conn.subject.clone()),
        scopes: conn.scopes.clone(),
        force_consent: sessions::force_consent_of(&body["force_consent"])?,
        return_url: sessions::return_url_of(broker, &body["return_url"])?,
        seal_to: sessions::seal_to_of(&body["seal_to"])?,
        keep: false,
        connection: Some(conn.id.clone()),
    };
    sessions::open(app, &**provider, spec, endpoint)
}

/// `GET /connections[?provider=NAME[&subject=ID]]` (broker token): the connections of a
/// provider (and account), or all; their status, never a token.
pub fn list(app: &Arc<App>, req: &HttpRequest) -> Result<Reply, Error> {
    let broker = app.broker()?;
    broker.authorize(req, false)?;
    let kept = kept(app)?;
    let provider = req.query_param("provider");
    let subject = req.query_param("subject");
    let service = kept.service.clone();
    Ok(run(kept, move || {
        result(
            service
                .list(provider.as_deref(), subject.as_deref())
                .map_err(Error::Connection)
                .map(|mut all| {
                    all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
                    let views: Vec<Value> = all.iter().map(view).collect();
                    Response::json(200, &json!({ "connections": views }))
                        .with_header("Cache-Control", "no-store")
                }),
        )
    }))
}

/// A kept sign-in's grant, once its account is checked: a new connection (`session.keep`),
/// or the revival of the one `session.connection` names, which only its own account can do.
pub(super) fn keep(
    app: &App,
    provider: &dyn Provider,
    session: &Session,
    identity: &Identity,
    grant: &Grant,
) -> Result<StoredKept, SignInFailure> {
    let off = |_| {
        SignInFailure::new(
            Reason::Unavailable,
            "the sign-in asked to keep its grant, and this replica keeps no connections",
        )
        .with_hint(Some(
            "give every replica the same connection settings (OAUTH_RELAY_ENCRYPTION_KEY, OAUTH_RELAY_CONNECTIONS_FILE or OAUTH_RELAY_REDIS_URL)",
        ))
    };
    let kept = kept(app).map_err(off)?;
    let copy = grant.clone();
    let unavailable = |e: ConnError| SignInFailure::new(Reason::Unavailable, e.to_string());
    let Some(id) = &session.connection else {
        return match kept
            .service
            .create(provider.name(), identity, session.scopes.clone(), copy)
        {
            Ok((conn, credential)) => Ok(StoredKept {
                id: conn.id,
                credential: Some(credential),
            }),
            Err(ConnError::Full) => Err(unavailable(ConnError::Full).with_hint(Some(
                "raise OAUTH_RELAY_MAX_KEPT_CONNECTIONS, or delete connections no longer used",
            ))),
            Err(e) => Err(unavailable(e)),
        };
    };
    match kept.service.revive(id, copy, identity) {
        Ok(_) => Ok(StoredKept {
            id: id.clone(),
            credential: None,
        }),
        Err(ConnError::IdentityMismatch) => Err(SignInFailure::new(
            Reason::SubjectMismatch,
            "the account (its tenant) is not the connection's",
        )),
        Err(ConnError::NotFound) => {
            // Nobody will hold this grant: end it where the provider can.
            if let Ok(broker) = app.broker() {
                let _ = provider.revoke(
                    Some(&grant.access_token),
                    grant.refresh_token.as_ref(),
                    broker.config.exchange_timeout,
                );
            }
            Err(SignInFailure::new(
                Reason::LinkUnknown,
                "the connection this sign-in was to revive was deleted meanwhile",
            ))
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// After a kept sign-in's outcome was stored (`stored`) or not: the connection's completion
/// event; a new connection whose credential could not be stored for the caller is forgotten
/// (nobody could ever use it).
pub(super) fn kept_sign_in_finished(
    app: &App,
    provider: &dyn Provider,
    handle: &str,
    id: &str,
    new: bool,
    stored: bool,
) {
    if !stored {
        if new {
            if let Ok(kept) = kept(app) {
                let _ = kept.service.forget(id, Instant::now());
            }
        }
        return;
    }
    let (kind, what) = if new {
        (crate::events::CONNECTION_CREATED, "connection_created")
    } else {
        (crate::events::CONNECTION_REVIVED, "connection_revived")
    };
    audit::record(
        what,
        Some(handle),
        None,
        json!({ "connection": short_hash(id), "provider": provider.name() }),
    );
    if let Some(events) = app.events.as_deref() {
        events.connection_changed(
            kind,
            json!({ "connection": id, "provider": provider.name(), "status": "active",
                "reason": null, "handle": crate::events::handle_hash(handle) }),
        );
    }
}

/// What a connection's refreshes found dead: its completion event (the core tells only the
/// replica whose write ended the grant).
pub fn needs_reauth_observer(events: Option<Arc<crate::events::Events>>) -> Observer {
    Box::new(move |c: &Connection| {
        audit::record(
            "connection_needs_reauth",
            None,
            None,
            json!({ "connection": short_hash(&c.id), "provider": c.provider,
                    "reason": c.last_error }),
        );
        if let Some(events) = events.as_deref() {
            events.connection_changed(
                crate::events::CONNECTION_NEEDS_REAUTH,
                json!({ "connection": c.id, "provider": c.provider, "status": "needs_reauth",
                    "reason": c.last_error }),
            );
        }
    })
}
