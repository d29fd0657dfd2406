//! The one routing table: (method, path) to handler, tagged for the access log.

use crate::app::App;
use crate::error::{Error, Face};
use crate::http::{HttpRequest, Reply};
use crate::{broker, relay};
use std::sync::Arc;

const CALLBACK_PREFIX: &str = "/api/callback/";
const START_PREFIX: &str = "/m365/start/";
const STATUS_PREFIX: &str = "/status/";
const TOKEN_PREFIX: &str = "/token/";

/// Routes a request. With a store that blocks (Redis), every route that may touch it runs on the
/// blocking pool; `/health` and `/metrics` never wait on the store and always run in place, so a
/// slow Redis cannot make the liveness probe fail.
pub fn route(app: &Arc<App>, req: HttpRequest) -> Reply {
    if app.store.blocks() && !matches!(req.path.as_str(), "/health" | "/metrics") {
        let app = app.clone();
        return Reply::Later(Box::new(move || route_in_place(&app, req)));
    }
    route_in_place(app, req)
}

fn route_in_place(app: &Arc<App>, req: HttpRequest) -> Reply {
    let path = req.path.clone();
    if !req.query_is_utf8() {
        return Reply::Now(
            Error::BadRequest("The query string is not valid UTF-8")
                .into_response_for(Face::for_path(&path)),
        );
    }
    let method = req.method.as_str();
    let (name, result): (&'static str, Result<Reply, Error>) = match (method, path.as_str()) {
        ("GET", "/health") => ("/health", relay::health(app).map(Reply::Now)),
        ("GET", "/ready") => ("/ready", relay::ready(app).map(Reply::Now)),
        ("GET", "/metrics") => ("/metrics", crate::metrics::render(app).map(Reply::Now)),
        ("GET", "/callback") => ("/callback", relay::callback(app, &req).map(Reply::Now)),
        ("GET", p) if p.starts_with(CALLBACK_PREFIX) => (
            "/api/callback/{state}",
            relay::retrieve(app, &req, &p[CALLBACK_PREFIX.len()..]),
        ),
        ("POST", "/m365/sessions") => (
            "/m365/sessions",
            broker::sessions::create(app, &req).map(Reply::Now),
        ),
        // HEAD too: some link-preview bots ask before they fetch (hyper drops the body).
        ("GET" | "HEAD", p) if p.starts_with(START_PREFIX) => (
            "/m365/start/{link}",
            broker::login::start(app, &req, &p[START_PREFIX.len()..]).map(Reply::Now),
        ),
        ("GET", "/m365/callback") => ("/m365/callback", broker::login::callback(app, &req)),
        ("GET", p) if p.starts_with(STATUS_PREFIX) => (
            "/status/{state}",
            broker::sessions::status(app, &req, &p[STATUS_PREFIX.len()..]).map(Reply::Now),
        ),
        ("GET", p) if p.starts_with(TOKEN_PREFIX) => (
            "/token/{state}",
            broker::sessions::token(app, &req, &p[TOKEN_PREFIX.len()..]),
        ),
        ("POST", "/api/states") => ("/api/states", relay::register(app, &req).map(Reply::Now)),
        (_, "/health" | "/ready" | "/callback" | "/metrics") => {
            ("-", Err(Error::MethodNotAllowed("GET")))
        }
        (_, p) if p.starts_with(CALLBACK_PREFIX) => ("-", Err(Error::MethodNotAllowed("GET"))),
        (_, "/api/states" | "/m365/sessions") => ("-", Err(Error::MethodNotAllowed("POST"))),
        (_, p)
            if ["/m365/callback", START_PREFIX, STATUS_PREFIX, TOKEN_PREFIX]
                .iter()
                .any(|prefix| p.starts_with(prefix)) =>
        {
            ("-", Err(Error::MethodNotAllowed("GET")))
        }
        _ => ("-", Err(Error::NotFound)),
    };
    // Only the access log reads it.
    let subject = if !crate::logging::enabled(crate::logging::Level::Info) {
        None
    } else {
        match name {
            "/callback" => req.query_param("state"),
            "/api/callback/{state}" => crate::http::decode_segment(&path[CALLBACK_PREFIX.len()..]),
            "/m365/callback" => req.query_param("state"),
            "/status/{state}" => crate::http::decode_segment(&path[STATUS_PREFIX.len()..]),
            "/token/{state}" => crate::http::decode_segment(&path[TOKEN_PREFIX.len()..]),
            "/m365/start/{link}" => crate::http::decode_segment(&path[START_PREFIX.len()..]),
            _ => None,
        }
    };
    match result {
        Ok(Reply::Now(r)) => Reply::Now(r.tagged(name, subject.as_deref())),
        Ok(wait) => wait,
        Err(e) => Reply::Now(
            e.into_response_for(Face::for_path(&path))
                .tagged(name, subject.as_deref()),
        ),
    }
}
