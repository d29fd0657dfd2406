//! The plain HTTP client the fakes' own tests use (tests/fake_providers.rs,
//! tests/fake_microsoft.rs): ureq, redirects not followed, every status an answer, and the
//! request builders those tests share (authorize URLs with overrides, forms, HTTP Basic).

use std::time::Duration;

use base64::Engine;
use serde_json::Value;

/// An answer, read to the end.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// A form-encoded body, decoded.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(self.body.as_bytes())
            .into_owned()
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn location(&self) -> Option<String> {
        self.header("location").map(str::to_string)
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }
}

/// What the fakes' tests send with, `timeout` bounding a whole request (`None`: none).
pub fn agent_with(user_agent: bool, timeout: Option<Duration>) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(timeout);
    if !user_agent {
        config = config.user_agent(ureq::config::AutoHeaderValue::None);
    }
    config.build().into()
}

/// Sends `request`: the answer, or the transport error (a closed connection, a time-out).
pub fn send(
    request: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Answer, ureq::Error> {
    let mut resp = request?;
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    Ok(Answer {
        status: resp.status().as_u16(),
        headers,
        body: resp.body_mut().read_to_string()?,
    })
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = agent_with(true, None).get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.call()).unwrap()
}

pub fn get_bearer(url: &str, token: &str) -> Answer {
    get(url, &[("Authorization", &format!("Bearer {token}"))])
}

pub fn post_form(url: &str, pairs: &[(&str, &str)], headers: &[(&str, &str)]) -> Answer {
    try_post_form(&agent_with(true, None), url, pairs, headers).unwrap()
}

/// `post_form` with `agent`, keeping transport errors.
pub fn try_post_form(
    agent: &ureq::Agent,
    url: &str,
    pairs: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Result<Answer, ureq::Error> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let mut req = agent
        .post(url)
        .content_type("application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req.send(body))
}

/// `base?k=v&...`: `defaults`, each replaced by `overrides` (`Some`) or removed (`None`).
pub fn url_with(
    base: &str,
    defaults: &[(&str, &str)],
    overrides: &[(&str, Option<&str>)],
) -> String {
    let mut ser = form_urlencoded::Serializer::new(String::new());
    let extra = overrides
        .iter()
        .filter(|(k, _)| !defaults.iter().any(|(d, _)| d == k));
    for (k, v) in defaults
        .iter()
        .map(|(k, v)| (*k, Some(*v)))
        .chain(extra.copied())
    {
        let v = overrides
            .iter()
            .find(|(o, _)| *o == k)
            .map_or(v, |(_, o)| *o);
        if let Some(v) = v {
            ser.append_pair(k, v);
        }
    }
    format!("{base}?{}", ser.finish())
}

/// `defaults` with `extra` replacing (or adding) pairs; an empty value removes the pair.
pub fn merged<'a>(
    defaults: &[(&'a str, &'a str)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut pairs = defaults.to_vec();
    for (k, v) in extra {
        match pairs.iter_mut().find(|(pk, _)| pk == k) {
            Some(p) => p.1 = v,
            None => pairs.push((k, v)),
        }
    }
    pairs.retain(|(_, v)| !v.is_empty());
    pairs
}

/// `Authorization: Basic` for `id:secret`.
pub fn basic(id: &str, secret: &str) -> String {
    let pair = format!("{id}:{secret}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}
