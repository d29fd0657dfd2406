//! The one routing table: (method, path) to handler, tagged for the access log.

use crate::app::App;
use crate::error::{Error, Face};
use crate::http::{HttpRequest, Reply};
use crate::relay;
use std::sync::Arc;

const CALLBACK_PREFIX: &str = "/api/callback/";

pub fn route(app: &Arc<App>, req: HttpRequest) -> Reply {
    let path = req.path.clone();
    let method = req.method.as_str();
    let (name, result): (&'static str, Result<Reply, Error>) = match (method, path.as_str()) {
        ("GET", "/health") => ("/health", relay::health(app).map(Reply::Now)),
        ("GET", "/metrics") => ("/metrics", crate::metrics::render(app).map(Reply::Now)),
        ("GET", "/callback") => ("/callback", relay::callback(app, &req).map(Reply::Now)),
        ("GET", p) if p.starts_with(CALLBACK_PREFIX) => (
            "/api/callback/{state}",
            relay::retrieve(app, &req, &p[CALLBACK_PREFIX.len()..]),
        ),
        ("POST", "/api/states") => ("/api/states", relay::register(app, &req).map(Reply::Now)),
        (_, "/health" | "/callback" | "/metrics") => ("-", Err(Error::MethodNotAllowed("GET"))),
        (_, p) if p.starts_with(CALLBACK_PREFIX) => ("-", Err(Error::MethodNotAllowed("GET"))),
        (_, "/api/states") => ("-", Err(Error::MethodNotAllowed("POST"))),
        _ => ("-", Err(Error::NotFound)),
    };
    let subject = match name {
        "/callback" => req.query_param("state"),
        "/api/callback/{state}" => crate::http::decode_segment(&path[CALLBACK_PREFIX.len()..]),
        _ => None,
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
