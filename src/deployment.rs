//! `GET /deployment`: what this deployment is, for `oauth-relay check-deployment` to hold
//! against what the operator expects. The public URL, whether the listeners are split, each
//! provider's redirect URI and the scopes a new session asks for, whether the service reaches
//! what each provider needs right now (asked when the request comes, from here: only the service
//! can say what its own network lets through), and whether completion events are on.
//!
//! Nothing secret: no client id or secret, no token, the webhook's origin only (its path may
//! hold a token). It needs the broker token all the same (it names the providers, and each
//! request makes the service call them), and is 404 when broker mode is off, like every broker
//! route. Answers are kept for [`FRESH_FOR`], and one request at a time asks the providers, so
//! a caller polling it cannot make the service hammer them.

use crate::app::App;
use crate::error::Error;
use crate::http::{HttpRequest, Reply, Response};
use crate::provider::{self, Provider};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one upstream may take to answer.
const PROBE_BUDGET: Duration = Duration::from_secs(5);
/// How long an answer is reused.
const FRESH_FOR: Duration = Duration::from_secs(5);

/// The last answer and when it was made; the lock is held while the providers are asked.
static LAST: Mutex<Option<(Instant, Value)>> = Mutex::new(None);

pub fn describe(app: &Arc<App>, req: &HttpRequest) -> Result<Reply, Error> {
    let broker = app.broker.as_ref().ok_or(Error::NotFound)?;
    match req.bearer_token() {
        Some(token) if broker.config.broker_token.matches(token) => {}
        _ => return Err(Error::BrokerUnauthorized),
    }
    // Asking the providers blocks: off the event loop.
    let app = app.clone();
    Ok(Reply::later(move || {
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        let body = match &*last {
            Some((at, body)) if at.elapsed() < FRESH_FOR => body.clone(),
            _ => {
                let body = description(&app);
                *last = Some((Instant::now(), body.clone()));
                body
            }
        };
        Response::json(200, &body)
            .with_header("Cache-Control", "no-store")
            .tagged("/deployment", None)
    }))
}

fn description(app: &App) -> Value {
    let config = &app.config;
    let providers: Vec<Value> = app
        .broker
        .as_ref()
        .map(|b| b.providers())
        .unwrap_or_default()
        .iter()
        .map(|p| provider(p.as_ref()))
        .collect();
    json!({
        "service": "oauth-relay",
        "version": env!("CARGO_PKG_VERSION"),
        "public_url": app.broker.as_ref().map(|b| b.config.public_base_url.clone()),
        "internal_url": config.internal_url,
        "listeners": if config.internal_addr.is_some() { "split" } else { "single" },
        "store": if config.redis.is_some() { "redis" } else { "memory" },
        "events": {
            "configured": config.webhook.is_some(),
            "origin": config.webhook.as_ref().map(|w| w.origin()),
        },
        "providers": providers,
    })
}

/// What the `listening` line says about a provider, plus what the check compares: the scopes of
/// a session that names none, and each upstream as the service reaches it now (asked at once).
fn provider(p: &dyn Provider) -> Value {
    let upstreams = p.upstreams();
    let results: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let asking: Vec<_> = upstreams
            .iter()
            .map(|u| scope.spawn(move || provider::probe(u, PROBE_BUDGET)))
            .collect();
        asking
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err("the probe failed".into())))
            .collect()
    });
    let mut out = p.describe();
    out["display_name"] = json!(p.display_name());
    out["read_only"] = json!(p.read_only());
    out["session_scopes"] = json!(p.scopes(None).unwrap_or_default());
    out["upstreams"] = upstreams
        .iter()
        .zip(results)
        .map(|(u, result)| {
            let (reachable, detail) = match result {
                Ok(detail) => (true, detail),
                Err(detail) => (false, detail),
            };
            json!({ "name": u.name, "url": u.url, "reachable": reachable, "detail": detail,
                    "setting": u.setting })
        })
        .collect();
    out
}
