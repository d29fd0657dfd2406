//! The one routing table: each route's path, methods, handler, name for the access log, and
//! exposure: served on the public listener (what browsers reach through the ingress), on the
//! internal one (what programs call), or on both (the probes). With one listener it serves all.
//!
//! The rule for any other path, today's unknown ones and tomorrow's: a path that is not in
//! this table is 404 on every listener, and a route in it is 404 (the same answer) on the
//! listener that does not serve its exposure. A new route must say which it is; there is no
//! default.

use crate::app::App;
use crate::broker::sessions::Endpoint;
use crate::error::{Error, Face};
use crate::http::{HttpRequest, Listener, Reply, Response};
use crate::providers_config::M365;
use crate::{broker, relay};
use std::sync::Arc;

/// Which listener serves a route when the public and internal ones are split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// Browsers (redirects, login links): behind the ingress.
    Public,
    /// Programs: retrieval, registration, session creation, status, tokens, metrics, the API's
    /// description (`/openapi.json`), the deployment's (`/deployment`).
    Internal,
    /// The probes (`/health`, `/ready`): on the internal listener, where the kubelet always gets
    /// in (the public listener cannot take its reserved connections), and on the public one for
    /// whatever checked them there before.
    Both,
}

impl Listener {
    /// Whether a request that came in on this listener may reach a route of `exposure`.
    pub fn serves(self, exposure: Exposure) -> bool {
        matches!(
            (self, exposure),
            (Listener::Sole, _)
                | (_, Exposure::Both)
                | (Listener::Public, Exposure::Public)
                | (Listener::Internal, Exposure::Internal)
        )
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Pattern {
    Exact(&'static str),
    /// The prefix and a tail (a state, handle or link id, still percent-encoded).
    Prefix(&'static str),
    /// The prefix, one path segment (the tail: a provider's name) and the suffix.
    Around(&'static str, &'static str),
}

/// What the access log hashes for a route.
#[derive(Debug, Clone, Copy)]
enum Subject {
    None,
    /// The `state` query parameter.
    StateParam,
    /// The path's tail after the prefix, percent-decoded.
    Tail,
}

type Handle = fn(&Arc<App>, &HttpRequest, &str) -> Result<Reply, Error>;

pub struct Route {
    /// The route as the access log names it (`/api/callback/{state}`).
    pub name: &'static str,
    pub pattern: Pattern,
    /// Methods served; the first is what `Allow` names on a 405.
    pub methods: &'static [&'static str],
    /// Open to web pages of other origins (CORS, `cors.rs`): the request headers such a page
    /// may send; preflights (`OPTIONS`) are answered and every answer says which origins may
    /// read it. `None`: not for pages (`OPTIONS` is 405 like any other method).
    pub cors: Option<&'static [&'static str]>,
    pub exposure: Exposure,
    handle: Handle,
    subject: Subject,
}

impl Route {
    /// The tail after the prefix when `path` is this route's, else `None`.
    fn tail<'p>(&self, path: &'p str) -> Option<&'p str> {
        match self.pattern {
            Pattern::Exact(p) => (path == p).then_some(""),
            Pattern::Prefix(p) => path.strip_prefix(p),
            Pattern::Around(prefix, suffix) => path
                .strip_prefix(prefix)?
                .strip_suffix(suffix)
                .filter(|name| !name.is_empty() && !name.contains('/')),
        }
    }
}

use Exposure::{Both, Internal, Public};

/// Every route. Order matters only where patterns overlap: `/login/{provider}/callback` comes
/// before `/login/{link}` (a link id never contains `/`), and `/connections/{id}/token` and
/// `/reauthorize` before `/connections/{id}` (nor does a connection id).
pub const ROUTES: &[Route] = &[
    Route {
        name: "/health",
        pattern: Pattern::Exact("/health"),
        methods: &["GET"],
        cors: None,
        exposure: Both,
        handle: |app, _, _| relay::health(app).map(Reply::Now),
        subject: Subject::None,
    },
    Route {
        name: "/ready",
        pattern: Pattern::Exact("/ready"),
        methods: &["GET"],
        cors: None,
        exposure: Both,
        handle: |app, _, _| relay::ready(app).map(Reply::Now),
        subject: Subject::None,
    },
    Route {
        name: "/metrics",
        pattern: Pattern::Exact("/metrics"),
        methods: &["GET"],
        cors: None,
        exposure: Internal,
        handle: |app, _, _| crate::metrics::render(app).map(Reply::Now),
        subject: Subject::None,
    },
    Route {
        name: "/callback",
        pattern: Pattern::Exact("/callback"),
        methods: &["GET"],
        cors: None,
        exposure: Public,
        handle: |app, req, _| relay::callback(app, req).map(Reply::Now),
        subject: Subject::StateParam,
    },
    Route {
        name: "/api/callback/{state}",
        pattern: Pattern::Prefix("/api/callback/"),
        methods: &["GET"],
        cors: Some(&["Authorization", "X-Retrieval-Secret"]),
        exposure: Internal,
        handle: relay::retrieve,
        subject: Subject::Tail,
    },
    Route {
        name: "/api/states",
        pattern: Pattern::Exact("/api/states"),
        methods: &["POST"],
        cors: Some(&["Authorization", "Content-Type"]),
        exposure: Internal,
        handle: |app, req, _| relay::register(app, req).map(Reply::Now),
        subject: Subject::None,
    },
    Route {
        name: "/sessions",
        pattern: Pattern::Exact("/sessions"),
        methods: &["POST"],
        cors: None,
        exposure: Internal,
        handle: |app, req, _| {
            let endpoint = Endpoint {
                provider: None,
                link_path: "/login/",
            };
            broker::sessions::create(app, req, endpoint).map(Reply::Now)
        },
        subject: Subject::None,
    },
    Route {
        name: "/login/{provider}/callback",
        pattern: Pattern::Around("/login/", "/callback"),
        methods: &["GET"],
        cors: None,
        exposure: Public,
        handle: |app, req, provider| broker::login::callback(app, req, provider),
        subject: Subject::StateParam,
    },
    Route {
        name: "/login/{link}",
        pattern: Pattern::Prefix("/login/"),
        // HEAD too: some link-preview bots ask before they fetch (hyper drops the body).
        methods: &["GET", "HEAD"],
        cors: None,
        exposure: Public,
        handle: |app, req, link| broker::login::start(app, req, link).map(Reply::Now),
        subject: Subject::Tail,
    },
    Route {
        name: "/m365/sessions",
        pattern: Pattern::Exact("/m365/sessions"),
        methods: &["POST"],
        cors: None,
        exposure: Internal,
        handle: |app, req, _| {
            let endpoint = Endpoint {
                provider: Some(M365),
                link_path: "/m365/start/",
            };
            broker::sessions::create(app, req, endpoint).map(Reply::Now)
        },
        subject: Subject::None,
    },
    Route {
        name: "/m365/start/{link}",
        pattern: Pattern::Prefix("/m365/start/"),
        // HEAD too: some link-preview bots ask before they fetch (hyper drops the body).
        methods: &["GET", "HEAD"],
        cors: None,
        exposure: Public,
        handle: |app, req, link| broker::login::start(app, req, link).map(Reply::Now),
        subject: Subject::Tail,
    },
    Route {
        name: "/m365/callback",
        pattern: Pattern::Exact("/m365/callback"),
        methods: &["GET"],
        cors: None,
        exposure: Public,
        handle: |app, req, _| broker::login::callback(app, req, M365),
        subject: Subject::StateParam,
    },
    Route {
        name: "/status/{state}",
        pattern: Pattern::Prefix("/status/"),
        methods: &["GET"],
        cors: None,
        exposure: Internal,
        handle: |app, req, handle| broker::sessions::status(app, req, handle).map(Reply::Now),
        subject: Subject::Tail,
    },
    Route {
        name: "/token/{state}",
        pattern: Pattern::Prefix("/token/"),
        methods: &["GET"],
        cors: None,
        exposure: Internal,
        handle: |app, req, handle| broker::sessions::token(app, req, handle),
        subject: Subject::Tail,
    },
    Route {
        name: "/connections",
        pattern: Pattern::Exact("/connections"),
        methods: &["GET"],
        cors: None,
        exposure: Internal,
        handle: |app, req, _| broker::connections::list(app, req),
        subject: Subject::None,
    },
    Route {
        name: "/connections/{id}/token",
        pattern: Pattern::Around("/connections/", "/token"),
        methods: &["POST"],
        cors: None,
        exposure: Internal,
        handle: broker::connections::token,
        subject: Subject::Tail,
    },
    Route {
        name: "/connections/{id}/reauthorize",
        pattern: Pattern::Around("/connections/", "/reauthorize"),
        methods: &["POST"],
        cors: None,
        exposure: Internal,
        handle: broker::connections::reauthorize,
        subject: Subject::Tail,
    },
    Route {
        name: "/connections/{id}",
        pattern: Pattern::Prefix("/connections/"),
        methods: &["GET", "DELETE"],
        cors: None,
        exposure: Internal,
        handle: broker::connections::one,
        subject: Subject::Tail,
    },
    Route {
        name: "/deployment",
        pattern: Pattern::Exact("/deployment"),
        methods: &["GET"],
        cors: None,
        exposure: Internal,
        handle: |app, req, _| crate::deployment::describe(app, req),
        subject: Subject::None,
    },
    Route {
        name: "/openapi.json",
        pattern: Pattern::Exact("/openapi.json"),
        methods: &["GET"],
        cors: None,
        exposure: Internal,
        handle: |_, _, _| Ok(Reply::Now(openapi())),
        subject: Subject::None,
    },
];

/// The OpenAPI 3.1 description of every route here (`openapi.json` at the repository root;
/// tests/openapi.rs keeps the two in step and checks real answers against it).
pub const OPENAPI: &str = include_str!("../openapi.json");

fn openapi() -> Response {
    Response::text(200, crate::http::JSON, OPENAPI.to_owned())
        .with_header("Cache-Control", "no-cache")
}

/// The route `path` belongs to, whatever the method or listener.
pub fn find(path: &str) -> Option<(&'static Route, &str)> {
    ROUTES
        .iter()
        .find_map(|route| route.tail(path).map(|tail| (route, tail)))
}

/// Routes a request. With a store that blocks (Redis), every route that may touch it runs on the
/// blocking pool; `/health`, `/metrics` and `/openapi.json` never wait on the store and always run
/// in place, so a slow Redis cannot make the liveness probe fail.
pub fn route(app: &Arc<App>, req: HttpRequest) -> Reply {
    if app.store.blocks() && !matches!(req.path.as_str(), "/health" | "/metrics" | "/openapi.json")
    {
        let app = app.clone();
        return Reply::Later(Box::new(move || route_in_place(&app, req)));
    }
    route_in_place(app, req)
}

fn route_in_place(app: &Arc<App>, req: HttpRequest) -> Reply {
    let path = req.path.as_str();
    let face = Face::for_path(path);
    if !req.query_is_utf8() {
        return Reply::Now(
            Error::BadRequest("The query string is not valid UTF-8").into_response_for(face),
        );
    }
    // A route the listener does not serve is answered exactly as a path nobody serves.
    let found = find(path).filter(|(route, _)| req.listener.serves(route.exposure));
    let Some((route, tail)) = found else {
        return Reply::Now(Error::NotFound.into_response_for(face).tagged("-", None));
    };
    let origin = req.header("origin");
    if let (Some(headers), "OPTIONS") = (route.cors, req.method.as_str()) {
        let preflight = app.config.cors.preflight(origin, route.methods, headers);
        return Reply::Now(preflight.tagged(route.name, None));
    }
    let (origin, cors) = (
        route.cors.and(origin).map(str::to_owned),
        route.cors.is_some(),
    );
    if !route.methods.contains(&req.method.as_str()) {
        let refused = Error::MethodNotAllowed(route.methods[0])
            .into_response_for(face)
            .tagged("-", None);
        return readable_by(app, origin, cors, Reply::Now(refused));
    }
    // Only the access log reads it.
    let subject = if !crate::logging::enabled(crate::logging::Level::Info) {
        None
    } else {
        match route.subject {
            Subject::None => None,
            Subject::StateParam => req.query_param("state"),
            Subject::Tail => crate::http::decode_segment(tail),
        }
    };
    let reply = match (route.handle)(app, &req, tail) {
        Ok(Reply::Now(r)) => Reply::Now(r.tagged(route.name, subject.as_deref())),
        Ok(wait) => wait,
        Err(e) => Reply::Now(
            e.into_response_for(face)
                .tagged(route.name, subject.as_deref()),
        ),
    };
    readable_by(app, origin, cors, reply)
}

/// The reply of a route open to pages (`cors`) with what lets an allowed page read it,
/// whenever it is answered (a long-poll later, blocking work off the event loop).
fn readable_by(app: &Arc<App>, origin: Option<String>, cors: bool, reply: Reply) -> Reply {
    if !cors {
        return reply;
    }
    match reply {
        Reply::Now(r) => Reply::Now(app.config.cors.answer(origin.as_deref(), r)),
        Reply::Wait(mut wait) => {
            let (app, answer) = (app.clone(), wait.answer);
            wait.answer = Box::new(move || app.config.cors.answer(origin.as_deref(), answer()));
            Reply::Wait(wait)
        }
        Reply::Later(job) => {
            let app = app.clone();
            Reply::Later(Box::new(move || readable_by(&app, origin, true, job())))
        }
    }
}
