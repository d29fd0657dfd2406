//! Audit events for the broker, as JSON log lines: who asked for what, what happened, why it
//! failed. E-mail addresses are masked; sessions appear only as a short hash of their handle.

use crate::logging;
use crate::secret::short_hash;
use serde_json::{json, Value};

/// `ana.silva@contoso.example` -> `a***@contoso.example`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            format!("{}***@{domain}", local.chars().next().unwrap_or('*'))
        }
        None => "***".into(),
    }
}

/// One audit line: `{"event":..,"audit":true,"session":<hash>,"email":<masked>, ...extra}`.
pub fn record(event: &str, handle: Option<&str>, email: Option<&str>, extra: Value) {
    let mut fields = json!({
        "audit": true,
        "session": handle.map(short_hash),
        "email": email.map(mask_email),
    });
    if let (Some(map), Value::Object(extra)) = (fields.as_object_mut(), extra) {
        map.extend(extra);
    }
    let level = if event.ends_with("failed") {
        logging::Level::Warn
    } else {
        logging::Level::Info
    };
    // A line tied to no session (an unknown state, a stranger's callback) is one anyone can
    // cause: it must not crowd out the lines of real sign-ins when stderr lags.
    if handle.is_some() {
        logging::event(level, event, fields);
    } else {
        logging::from_anyone(level, event, fields);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_masked() {
        assert_eq!(
            mask_email("ana.silva@contoso.example"),
            "a***@contoso.example"
        );
        assert_eq!(mask_email("nobody"), "***");
    }
}
