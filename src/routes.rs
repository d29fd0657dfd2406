//! The one routing table: (method, path) to handler, tagged for the access log.

use crate::app::App;
use crate::broker::sessions::Endpoint;
use crate::error::{Error, Face};
use crate::http::{HttpRequest, Reply};
use crate::providers_config::M365;
use crate::{broker, relay};
use std::sync::Arc;

/// `/login/{provider}/callback` -> the provider's name.
fn provider_callback(path: &str) -> Option<&str> {
    let name = path.strip_prefix(LOGIN_PREFIX)?.strip_suffix("/callback")?;
    (!name.is_empty() && !name.contains('/')).then_some(name)
}

/// `/login/{link}` -> the link id (one segment; callbacks have two).
fn login_link(path: &str) -> Option<&str> {
    let link = path.strip_prefix(LOGIN_PREFIX)?;
    (!link.is_empty() && !link.contains('/')).then_some(link)
}

const CALLBACK_PREFIX: &str = "/api/callback/";
const START_PREFIX: &str = "/m365/start/";
const LOGIN_PREFIX: &str = "/login/";
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
        ("POST", "/sessions") => (
            "/sessions",
            broker::sessions::create(
                app,
                &req,
                Endpoint {
                    provider: None,
                    link_path: LOGIN_PREFIX,
                },
            )
            .map(Reply::Now),
        ),
        ("POST", "/m365/sessions") => (
            "/m365/sessions",
            broker::sessions::create(
                app,
                &req,
                Endpoint {
                    provider: Some(M365),
                    link_path: START_PREFIX,
                },
            )
            .map(Reply::Now),
        ),
        ("GET", p) if provider_callback(p).is_some() => (
            "/login/{provider}/callback",
            broker::login::callback(app, &req, provider_callback(p).unwrap_or_default()),
        ),
        // HEAD too: some link-preview bots ask before they fetch (hyper drops the body).
        ("GET" | "HEAD", p) if login_link(p).is_some() => (
            "/login/{link}",
            broker::login::start(app, &req, login_link(p).unwrap_or_default()).map(Reply::Now),
        ),
        ("GET" | "HEAD", p) if p.starts_with(START_PREFIX) => (
            "/m365/start/{link}",
            broker::login::start(app, &req, &p[START_PREFIX.len()..]).map(Reply::Now),
        ),
        ("GET", "/m365/callback") => ("/m365/callback", broker::login::callback(app, &req, M365)),
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
        (_, "/api/states" | "/m365/sessions" | "/sessions") => {
            ("-", Err(Error::MethodNotAllowed("POST")))
        }
        (_, p)
            if [
                "/m365/callback",
                START_PREFIX,
                STATUS_PREFIX,
                TOKEN_PREFIX,
                LOGIN_PREFIX,
            ]
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
            "/m365/callback" | "/login/{provider}/callback" => req.query_param("state"),
            "/login/{link}" => login_link(&path).and_then(crate::http::decode_segment),
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
