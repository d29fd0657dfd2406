//! The one routing table, and the only place that knows paths: each route's path, methods, face
//! (JSON for programs, a page for people), listener, whether it may block, what the access log
//! hashes, and handler; and the face of a path in no route.
//!
//! The rule for any other path, today's unknown ones and tomorrow's: a path that is not in this
//! table is 404 on every listener, and a route in it is 404 (the same answer) on the listener
//! that does not serve its exposure. A new route must say which it is; there is no default.

use crate::app::App;
use crate::broker::connections;
use crate::broker::login;
use crate::broker::sessions::{self, Endpoint};
use crate::deployment;
use crate::error::{Error, Face};
use crate::health;
use crate::http::{HttpRequest, Listener, Reply, Response, RETRIEVAL_SECRET_HEADER};
use crate::providers_config::M365;
use crate::relay;
use std::sync::Arc;

use Exposure::{Both, Internal, Public};
use Face::{Api, Page};
use Subject::{Nothing, StateParam, Tail};
use Work::{Awaits, InPlace, MayBlock, OwnPool};

const GET: &[&str] = &["GET"];
const POST: &[&str] = &["POST"];
/// HEAD too: some link-preview bots ask before they fetch (hyper drops the body).
const GET_HEAD: &[&str] = &["GET", "HEAD"];
const GET_DELETE: &[&str] = &["GET", "DELETE"];

/// Every route. Order matters only where patterns overlap: `/login/{provider}/callback` comes
/// before `/login/{link}` (a link id never contains `/`), and `/connections/{id}/token` and
/// `/reauthorize` before `/connections/{id}` (nor does a connection id).
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    //         path                          methods   face  listener  work      access log
    Route::new("/health",                    GET,      Api,  Both,     InPlace,  Nothing,
               |app, _, _| now(health::health(app))),
    Route::new("/ready",                     GET,      Api,  Both,     MayBlock, Nothing,
               |app, _, _| now(health::ready(app))),
    Route::new("/metrics",                   GET,      Api,  Internal, InPlace,  Nothing,
               |app, _, _| now(health::metrics(app))),
    Route::new("/callback",                  GET,      Page, Public,   Awaits,   StateParam,
               |app, req, _| relay::callback(app, req)),
    Route::new("/api/callback/{state}",      GET,      Api,  Internal, Awaits,   Tail,
               relay::retrieve)
        .for_pages(&["Authorization", RETRIEVAL_SECRET_HEADER]),
    Route::new("/api/states",                POST,     Api,  Internal, Awaits,   Nothing,
               |app, req, _| relay::register(app, req))
        .for_pages(&["Authorization", "Content-Type"]),
    Route::new("/sessions",                  POST,     Api,  Internal, MayBlock, Nothing,
               |app, req, _| now(sessions::create(app, req, SESSIONS))),
    Route::new("/login/{provider}/callback", GET,      Page, Public,   MayBlock, StateParam,
               login::callback),
    Route::new(LOGIN_LINK,                   GET_HEAD, Page, Public,   MayBlock, Tail,
               |app, req, link| now(login::start(app, req, link))),
    Route::new("/m365/sessions",             POST,     Api,  Internal, MayBlock, Nothing,
               |app, req, _| now(sessions::create(app, req, M365_SESSIONS))),
    Route::new(M365_LINK,                    GET_HEAD, Page, Public,   MayBlock, Tail,
               |app, req, link| now(login::start(app, req, link))),
    Route::new("/m365/callback",             GET,      Page, Public,   MayBlock, StateParam,
               |app, req, _| login::callback(app, req, M365)),
    Route::new(STATUS,                       GET,      Api,  Internal, MayBlock, Tail,
               |app, req, handle| now(sessions::status(app, req, handle))),
    Route::new("/token/{state}",             GET,      Api,  Internal, MayBlock, Tail,
               sessions::token),
    Route::new("/connections",               GET,      Api,  Internal, OwnPool,  Nothing,
               |app, req, _| connections::list(app, req)),
    Route::new("/connections/{id}/token",    POST,     Api,  Internal, OwnPool,  Tail,
               connections::token),
    Route::new("/connections/{id}/reauthorize", POST,  Api,  Internal, OwnPool,  Tail,
               |app, req, id| connections::reauthorize(app, req, id, SESSIONS)),
    Route::new("/connections/{id}",          GET_DELETE, Api, Internal, OwnPool, Tail,
               connections::one),
    Route::new("/deployment",                GET,      Api,  Internal, MayBlock, Nothing,
               |app, req, _| deployment::describe(app, req)),
    Route::new("/openapi.json",              GET,      Api,  Internal, InPlace,  Nothing,
               |_, _, _| now(Ok(openapi()))),
];

/// Paths the broker writes into its answers (a session's login link and status URL).
const LOGIN_LINK: &str = "/login/{link}";
const M365_LINK: &str = "/m365/start/{link}";
const STATUS: &str = "/status/{state}";
const SESSIONS: Endpoint = Endpoint {
    provider: None,
    link_path: Pattern::of(LOGIN_LINK).prefix(),
    status_path: Pattern::of(STATUS).prefix(),
};
const M365_SESSIONS: Endpoint = Endpoint {
    provider: Some(M365),
    link_path: Pattern::of(M365_LINK).prefix(),
    status_path: Pattern::of(STATUS).prefix(),
};

/// The face of a path in no route: JSON when it starts with one of these (a program mistyping
/// an API path), a page otherwise. (Any path under `/status/` or `/token/` is a route's.)
const API_NAMESPACES: &[&str] = &["/api/", "/m365/sessions"];

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

/// Whether a route's handler may block (a shared store, an identity provider). With a store
/// that blocks (Redis) such a route runs on the blocking pool (`Reply::Later`); the others
/// always run in place, so a slow Redis cannot make the liveness probe fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    InPlace,
    MayBlock,
    /// Runs in place, and what it waits for on the store (Redis) is a future the server awaits
    /// on the event loop (`Reply::Async`): no hop to the blocking pool per request. The relay's
    /// routes, the busiest.
    Awaits,
    /// The handler puts its own blocking work on the pool: kept connections, whose store (a
    /// file, or Redis) is not the relay store, and whose fresh tokens are answered at once (in
    /// place, or awaited on the event loop on Redis).
    OwnPool,
}

/// A route's path as its name spells it: no `{...}`, the path itself; a `{...}` at the end, a
/// prefix and a tail (a state, handle or link id, still percent-encoded; any tail); one in the
/// middle, a prefix, one non-empty segment (a provider's name) and a suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    Exact(&'static str),
    Prefix(&'static str),
    Around(&'static str, &'static str),
}

impl Pattern {
    /// The pattern `name` spells (at compile time: a `{` without its `}` does not build).
    pub const fn of(name: &'static str) -> Pattern {
        let bytes = name.as_bytes();
        let mut open = 0;
        while open < bytes.len() && bytes[open] != b'{' {
            open += 1;
        }
        if open == bytes.len() {
            return Pattern::Exact(name);
        }
        let mut close = open;
        while bytes[close] != b'}' {
            close += 1;
        }
        let (prefix, _) = name.split_at(open);
        let (_, suffix) = name.split_at(close + 1);
        if suffix.is_empty() {
            Pattern::Prefix(prefix)
        } else {
            Pattern::Around(prefix, suffix)
        }
    }

    /// What comes before the variable part (the whole path when there is none).
    pub const fn prefix(self) -> &'static str {
        match self {
            Pattern::Exact(p) | Pattern::Prefix(p) | Pattern::Around(p, _) => p,
        }
    }

    /// The tail when `path` is this pattern's, else `None`.
    fn tail(self, path: &str) -> Option<&str> {
        match self {
            Pattern::Exact(p) => (path == p).then_some(""),
            Pattern::Prefix(p) => path.strip_prefix(p),
            Pattern::Around(prefix, suffix) => path
                .strip_prefix(prefix)?
                .strip_suffix(suffix)
                .filter(|name| !name.is_empty() && !name.contains('/')),
        }
    }
}

/// What the access log hashes for a route.
#[derive(Debug, Clone, Copy)]
enum Subject {
    Nothing,
    /// The `state` query parameter.
    StateParam,
    /// The path's tail, percent-decoded.
    Tail,
}

type Handle = fn(&Arc<App>, &HttpRequest, &str) -> Result<Reply, Error>;

pub struct Route {
    /// The path as `openapi.json` and the access log name it (`/api/callback/{state}`).
    pub name: &'static str,
    /// The paths it serves: what `name` spells.
    pub pattern: Pattern,
    /// Methods served; the first is what `Allow` names on a 405.
    pub methods: &'static [&'static str],
    /// Who reads its answers, refusals included: a program (JSON) or a person (a page).
    pub face: Face,
    pub exposure: Exposure,
    pub work: Work,
    /// Open to web pages of other origins (CORS, `cors.rs`): the request headers such a page
    /// may send; preflights (`OPTIONS`) are answered and every answer says which origins may
    /// read it. `None`: not for pages (`OPTIONS` is 405 like any other method).
    pub cors: Option<&'static [&'static str]>,
    subject: Subject,
    handle: Handle,
}

impl Route {
    const fn new(
        name: &'static str,
        methods: &'static [&'static str],
        face: Face,
        exposure: Exposure,
        work: Work,
        subject: Subject,
        handle: Handle,
    ) -> Route {
        Route {
            name,
            pattern: Pattern::of(name),
            methods,
            face,
            exposure,
            work,
            cors: None,
            subject,
            handle,
        }
    }

    /// Opens the route to pages of other origins, which may send `headers`.
    const fn for_pages(self, headers: &'static [&'static str]) -> Route {
        Route {
            cors: Some(headers),
            ..self
        }
    }
}

fn now(result: Result<Response, Error>) -> Result<Reply, Error> {
    result.map(Reply::Now)
}

/// The OpenAPI 3.1 description of every route here (`openapi.json` at the repository root;
/// tests/openapi.rs keeps the two in step and checks real answers against it).
pub const OPENAPI: &str = include_str!("../openapi.json");

fn openapi() -> Response {
    Response::text(200, crate::http::JSON, OPENAPI.to_owned())
        .with_header("Cache-Control", "no-cache")
}

/// The route `path` belongs to, whatever the method or listener, and its tail.
pub fn find(path: &str) -> Option<(&'static Route, &str)> {
    ROUTES
        .iter()
        .find_map(|route| route.pattern.tail(path).map(|tail| (route, tail)))
}

/// Who reads the answers for `path`: its route's face, or for a path in no route the face of
/// its namespace. The query string plays no part: it must not turn an API path into a page.
pub fn face(path: &str) -> Face {
    match find(path) {
        Some((route, _)) => route.face,
        None => unknown_face(path),
    }
}

fn unknown_face(path: &str) -> Face {
    if API_NAMESPACES.iter().any(|p| path.starts_with(p)) {
        Api
    } else {
        Page
    }
}

/// What the server serves: every request is looked up here once.
pub struct Router(pub Arc<App>);

impl crate::server::Service for Router {
    fn serve(&self, req: HttpRequest) -> Reply {
        route(&self.0, req)
    }

    fn refuse(&self, path: &str, error: Error) -> Response {
        error.into_response_for(face(path))
    }
}

/// Routes a request: its route is looked up once, and a route that may block runs on the
/// blocking pool when the store blocks (a route that `Awaits` runs here, whatever the store).
pub fn route(app: &Arc<App>, req: HttpRequest) -> Reply {
    let route = find(&req.path).map(|(route, _)| route);
    if route.is_some_and(|r| r.work == MayBlock) && app.store.blocks() {
        let app = app.clone();
        return Reply::Later(Box::new(move || route_in_place(&app, req, route)));
    }
    route_in_place(app, req, route)
}

fn route_in_place(app: &Arc<App>, req: HttpRequest, route: Option<&'static Route>) -> Reply {
    let path = req.path.as_str();
    let face = route.map_or_else(|| unknown_face(path), |r| r.face);
    if !req.query_is_utf8() {
        return Reply::Now(
            Error::BadRequest("The query string is not valid UTF-8").into_response_for(face),
        );
    }
    // A route the listener does not serve is answered exactly as a path nobody serves.
    let found = route.filter(|r| req.listener.serves(r.exposure));
    let Some((route, tail)) = found.and_then(|r| Some((r, r.pattern.tail(path)?))) else {
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
            Nothing => None,
            StateParam => req.query_param("state"),
            Tail => crate::http::decode_segment(tail),
        }
    };
    let reply = match (route.handle)(app, &req, tail) {
        Ok(reply) => tagged(reply, route.name, subject),
        Err(e) => Reply::Now(
            e.into_response_for(face)
                .tagged(route.name, subject.as_deref()),
        ),
    };
    readable_by(app, origin, cors, reply)
}

/// The access log's names for `reply`'s answer, whenever it comes: at once, after a long-poll,
/// from the blocking pool or awaited.
fn tagged(reply: Reply, name: &'static str, subject: Option<String>) -> Reply {
    match reply {
        Reply::Now(r) => Reply::Now(r.tagged(name, subject.as_deref())),
        Reply::Wait(mut wait) => {
            let answer = wait.answer;
            wait.answer = Box::new(move || tagged(answer(), name, subject));
            Reply::Wait(wait)
        }
        Reply::Later(job) => Reply::Later(Box::new(move || tagged(job(), name, subject))),
        Reply::Async(work) => {
            Reply::Async(Box::pin(async move { tagged(work.await, name, subject) }))
        }
    }
}

/// The reply of a route open to pages (`cors`) with what lets an allowed page read it,
/// whenever it is answered (a long-poll later, blocking work off the event loop, work awaited).
fn readable_by(app: &Arc<App>, origin: Option<String>, cors: bool, reply: Reply) -> Reply {
    if !cors {
        return reply;
    }
    match reply {
        Reply::Now(r) => Reply::Now(app.config.cors.answer(origin.as_deref(), r)),
        Reply::Wait(mut wait) => {
            let (app, answer) = (app.clone(), wait.answer);
            wait.answer = Box::new(move || readable_by(&app, origin, true, answer()));
            Reply::Wait(wait)
        }
        Reply::Later(job) => {
            let app = app.clone();
            Reply::Later(Box::new(move || readable_by(&app, origin, true, job())))
        }
        Reply::Async(work) => {
            let app = app.clone();
            Reply::Async(Box::pin(async move {
                readable_by(&app, origin, true, work.await)
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Arc<App> {
        App::in_memory(crate::config::Config::default())
    }

    fn answer(req: HttpRequest) -> Response {
        match route(&app(), req) {
            Reply::Now(r) => r,
            _ => panic!("not answered at once"),
        }
    }

    #[test]
    fn every_path_has_its_route_face_listener_and_work() {
        for (path, name, face, exposure, work) in [
            ("/health", "/health", Api, Both, InPlace),
            ("/ready", "/ready", Api, Both, MayBlock),
            ("/metrics", "/metrics", Api, Internal, InPlace),
            ("/openapi.json", "/openapi.json", Api, Internal, InPlace),
            ("/callback", "/callback", Page, Public, Awaits),
            (
                "/api/callback/s",
                "/api/callback/{state}",
                Api,
                Internal,
                Awaits,
            ),
            (
                "/api/callback/",
                "/api/callback/{state}",
                Api,
                Internal,
                Awaits,
            ),
            ("/api/states", "/api/states", Api, Internal, Awaits),
            ("/sessions", "/sessions", Api, Internal, MayBlock),
            (
                "/login/corp/callback",
                "/login/{provider}/callback",
                Page,
                Public,
                MayBlock,
            ),
            (
                "/login/a/b/callback",
                "/login/{link}",
                Page,
                Public,
                MayBlock,
            ),
            ("/login/link-id", "/login/{link}", Page, Public, MayBlock),
            ("/m365/sessions", "/m365/sessions", Api, Internal, MayBlock),
            (
                "/m365/start/link-id",
                "/m365/start/{link}",
                Page,
                Public,
                MayBlock,
            ),
            ("/m365/callback", "/m365/callback", Page, Public, MayBlock),
            ("/status/h", "/status/{state}", Api, Internal, MayBlock),
            ("/token/h", "/token/{state}", Api, Internal, MayBlock),
        ] {
            let (route, _) = find(path).unwrap_or_else(|| panic!("{path} has no route"));
            assert_eq!(
                (route.name, route.face, route.exposure, route.work),
                (name, face, exposure, work),
                "{path}"
            );
            assert_eq!(super::face(path), face, "{path}");
        }
        // Only what never waits on the store runs in place.
        let in_place: Vec<&str> = ROUTES
            .iter()
            .filter(|r| r.work == InPlace)
            .map(|r| r.name)
            .collect();
        assert_eq!(in_place, ["/health", "/metrics", "/openapi.json"]);
    }

    #[test]
    fn the_pattern_is_what_the_name_spells() {
        assert_eq!(Pattern::of("/health"), Pattern::Exact("/health"));
        assert_eq!(Pattern::of("/token/{state}"), Pattern::Prefix("/token/"));
        assert_eq!(
            Pattern::of("/login/{provider}/callback"),
            Pattern::Around("/login/", "/callback")
        );
        for route in ROUTES {
            assert_eq!(route.pattern, Pattern::of(route.name));
            assert!(!route.methods.is_empty(), "{}", route.name);
        }
        // A provider's name is one segment; a link id anything after the prefix.
        assert_eq!(find("/login//callback").unwrap().0.name, "/login/{link}");
        assert_eq!(find("/login/a/callback").unwrap().1, "a");
    }

    /// The rule `error.rs` had before routes said their faces (`Face::for_path`): every path
    /// must keep the face it had.
    fn face_before(path: &str) -> Face {
        let api_prefixes = [
            "/api/",
            "/status/",
            "/token/",
            "/m365/sessions",
            "/connections/",
        ];
        if api_prefixes.iter().any(|p| path.starts_with(p))
            || [
                "/sessions",
                "/connections",
                "/health",
                "/metrics",
                "/ready",
                "/openapi.json",
                "/deployment",
            ]
            .contains(&path)
        {
            Api
        } else {
            Page
        }
    }

    #[test]
    fn every_path_keeps_the_face_it_had() {
        let mut paths: Vec<String> = [
            "/",
            "",
            "/api",
            "/api/",
            "/api/x",
            "/api/states/x",
            "/apix",
            "/status",
            "/status/",
            "/token",
            "/token/",
            "/m365",
            "/m365/",
            "/m365/sessions",
            "/m365/sessions/x",
            "/m365/sessionsx",
            "/m365/start",
            "/m365/callback/x",
            "/sessions/",
            "/sessionsx",
            "/health/",
            "/healthz",
            "/ready/x",
            "/metrics/",
            "/openapi.json/x",
            "/login",
            "/login/",
            "/callback/",
            "/callbacks",
            "/no-such-route",
            "/%2Fapi/x",
            "/API/x",
        ]
        .iter()
        .map(|p| p.to_string())
        .collect();
        for route in ROUTES {
            let prefix = route.pattern.prefix();
            for tail in ["", "x", "x/y", "%20"] {
                paths.push(format!("{prefix}{tail}"));
                paths.push(format!("{}{tail}", route.name));
            }
            paths.push(prefix.trim_end_matches('/').to_string());
        }
        for path in &paths {
            assert_eq!(face(path), face_before(path), "{path:?}");
        }
    }

    #[test]
    fn unknown_paths_and_hidden_routes_get_the_same_404_in_their_face() {
        let unknown = answer(HttpRequest::new("GET", "/api/no-such-route"));
        assert_eq!(
            (unknown.status, unknown.content_type),
            (404, crate::http::JSON)
        );
        let page = answer(HttpRequest::new("GET", "/no-such-route"));
        assert_eq!((page.status, page.content_type), (404, crate::http::HTML));
        // /sessions on the public listener: exactly a path nobody serves, in its face.
        let mut hidden = HttpRequest::new("POST", "/sessions");
        hidden.listener = Listener::Public;
        let hidden = answer(hidden);
        assert_eq!((hidden.status, hidden.route), (404, "-"));
        assert_eq!(hidden.body, unknown.body);
        // A login link on the internal listener: the page.
        let mut hidden = HttpRequest::new("GET", "/login/x");
        hidden.listener = Listener::Internal;
        assert_eq!(answer(hidden).body, page.body);
    }

    #[test]
    fn a_method_not_served_is_405_naming_the_first_served_in_the_routes_face() {
        let r = answer(HttpRequest::new("DELETE", "/api/states"));
        assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
        assert_eq!(r.content_type, crate::http::JSON);
        let r = answer(HttpRequest::new("PUT", "/login/x"));
        assert_eq!((r.status, r.header("Allow")), (405, Some("GET")));
        assert_eq!(r.content_type, crate::http::HTML);
        // Only a route open to pages answers preflights; any other says 405 to OPTIONS.
        let preflight =
            HttpRequest::new("OPTIONS", "/api/states").with_header("Origin", "https://app.example");
        assert_eq!(answer(preflight).status, 204);
        let r = answer(HttpRequest::new("OPTIONS", "/sessions"));
        assert_eq!((r.status, r.header("Allow")), (405, Some("POST")));
    }

    #[test]
    fn a_long_polls_answer_is_the_routes_whenever_it_comes() {
        let req = HttpRequest::new("GET", "/api/callback/some-state?wait=5");
        let Reply::Wait(wait) = route(&app(), req) else {
            panic!("not parked")
        };
        let Reply::Now(r) = (wait.answer)() else {
            panic!("not answered at once (in memory)")
        };
        assert_eq!((r.status, r.route), (404, "/api/callback/{state}"));
        // Refusals before the request was whole are worded for the path's reader.
        use crate::server::Service;
        let router = Router(app());
        let r = router.refuse("/login/x", Error::RequestTimeout);
        assert_eq!((r.status, r.content_type), (408, crate::http::HTML));
        let r = router.refuse("/api/nothing", Error::UrlTooLong);
        assert_eq!((r.status, r.content_type), (414, crate::http::JSON));
    }

    #[test]
    fn the_brokers_links_lead_to_their_routes() {
        for (endpoint, link) in [
            (SESSIONS, "/login/{link}"),
            (M365_SESSIONS, "/m365/start/{link}"),
        ] {
            let (link_path, status_path) = (
                format!("{}id", endpoint.link_path),
                format!("{}h", endpoint.status_path),
            );
            let (route, tail) = find(&link_path).unwrap();
            assert_eq!((route.name, tail), (link, "id"));
            let (route, tail) = find(&status_path).unwrap();
            assert_eq!((route.name, tail), ("/status/{state}", "h"));
        }
    }
}
