//! One JSON object per line on stderr: access log, events, and whatever dependencies say
//! through the `log` facade. Callers pass structured fields; nothing here knows about secrets,
//! so callers pass only hashes (see `secret::short_hash`), never codes or tokens.

use serde_json::{Map, Value};
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::SystemTime;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug = 0,
    Info = 1,
    Warn = 2,
    Error = 3,
    Off = 4,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
            Level::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "debug" | "trace" => Level::Debug,
            "info" => Level::Info,
            "warn" | "warning" => Level::Warn,
            "error" => Level::Error,
            "off" | "none" => Level::Off,
            _ => return None,
        })
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the threshold and routes the `log` facade (tiny_http, ureq, ...) into the same stream.
pub fn init(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
    let _ = log::set_logger(&FACADE);
    log::set_max_level(match level {
        Level::Debug => log::LevelFilter::Debug,
        Level::Info => log::LevelFilter::Info,
        Level::Warn => log::LevelFilter::Warn,
        Level::Error => log::LevelFilter::Error,
        Level::Off => log::LevelFilter::Off,
    });
}

pub fn enabled(level: Level) -> bool {
    level != Level::Off && level as u8 >= LEVEL.load(Ordering::Relaxed)
}

/// Writes `{"ts":..,"level":..,"event":.., ...fields}` as one line. `fields` should be an object.
pub fn event(level: Level, name: &str, fields: Value) {
    if !enabled(level) {
        return;
    }
    let mut line = Map::new();
    line.insert(
        "ts".into(),
        humantime::format_rfc3339_millis(SystemTime::now())
            .to_string()
            .into(),
    );
    line.insert("level".into(), level.name().into());
    line.insert("event".into(), name.into());
    if let Value::Object(extra) = fields {
        line.extend(extra);
    }
    let mut text = Value::Object(line).to_string();
    text.push('\n');
    // One write per line so lines from different threads never interleave.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

pub fn info(name: &str, fields: Value) {
    event(Level::Info, name, fields)
}

pub fn warn(name: &str, fields: Value) {
    event(Level::Warn, name, fields)
}

pub fn error(name: &str, fields: Value) {
    event(Level::Error, name, fields)
}

struct Facade;
static FACADE: Facade = Facade;

impl log::Log for Facade {
    fn enabled(&self, m: &log::Metadata) -> bool {
        enabled(from_log(m.level()))
    }

    fn log(&self, record: &log::Record) {
        // tiny_http reports accept errors itself; the supervisor logs them with what it does
        // about them (and at shutdown they are expected), so tiny_http's own lines are debug.
        let level = if record.target().starts_with("tiny_http") {
            Level::Debug
        } else {
            from_log(record.level())
        };
        event(
            level,
            "library",
            serde_json::json!({ "target": record.target(), "message": record.args().to_string() }),
        );
    }

    fn flush(&self) {}
}

fn from_log(level: log::Level) -> Level {
    match level {
        log::Level::Error => Level::Error,
        log::Level::Warn => Level::Warn,
        log::Level::Info => Level::Info,
        log::Level::Debug | log::Level::Trace => Level::Debug,
    }
}

/// Panics become one JSON line. The message is our own code's text (never a secret); the
/// location tells an operator where to look.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        error(
            "panic",
            serde_json::json!({ "message": message, "location": location }),
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse("WARN"), Some(Level::Warn));
        assert_eq!(Level::parse("verbose"), None);
        assert!(Level::Error > Level::Info);
    }
}
