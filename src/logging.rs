//! One JSON object per line on stderr: access log, events, and whatever dependencies say
//! through the `log` facade. Callers pass structured fields; nothing here knows about secrets,
//! so callers pass only hashes (see `secret::short_hash`), never codes or tokens.
//!
//! Off the request's path: once `init` has run (serving), a line is formatted on the thread
//! that logs it and appended to one buffer in memory; a writer thread takes the buffer every few
//! milliseconds and writes it to stderr in one call. One `write` per request cost a quarter of
//! the `/health` throughput (docs/benchmarks.md); the buffer's append is a copy under a lock
//! held for nothing else. One buffer, not one per thread, so lines keep the order they were
//! logged in.
//!
//! Back-pressure: a request never waits for stderr. When stderr takes lines slower than they
//! come (a stalled log collector), the buffer fills: access-log and debug lines are dropped past
//! [`SHEDDABLE_BYTES`], everything else (events, warnings, errors) past [`MAX_BUFFERED_BYTES`],
//! so a flood of requests cannot crowd out the lines that matter. Drops are counted
//! ([`dropped_lines`], in `/metrics`) and a `log_lines_dropped` line stands where they were.
//!
//! Nothing is lost at exit: [`flush`] waits until everything logged before it is written
//! (`main` calls it after serving, whether serving ended with SIGTERM or a fatal error; the panic
//! hook calls it after its own line). It gives up only when stderr makes no progress for
//! [`EXIT_STALL`]. Before `init` (the client subcommands, a refused command line) lines are
//! written at once, as they come.

use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// Access-log and debug lines waiting for the writer, at most; past it they are dropped
/// (counted) rather than make a request wait. About 5,000 access lines: 50 ms of them at
/// 100,000 requests a second, minutes at ordinary rates.
pub const SHEDDABLE_BYTES: usize = 1024 * 1024;
/// All lines waiting for the writer, at most: events, warnings and errors may use the room
/// above [`SHEDDABLE_BYTES`] that access lines cannot. The writer holds one more batch of at
/// most this size while it writes, so the log costs at most twice this (`budget.rs`).
pub const MAX_BUFFERED_BYTES: usize = 2 * 1024 * 1024;
/// How long the writer lets lines gather before writing them: one write per batch rather than
/// per line, and a line reaches stderr this much later at most (plus the write).
const BATCH_DELAY: Duration = Duration::from_millis(5);
/// At exit, `flush` waits for stderr as long as it takes lines, and gives up after this long
/// without progress (nobody reads it: waiting longer would only delay the exit).
pub const EXIT_STALL: Duration = Duration::from_secs(5);

/// Sets the threshold, routes the `log` facade (ureq, redis, ...) into the same stream, and
/// starts the writer thread: from here on lines are buffered (see the top of this file).
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
    if level != Level::Off && !WRITER_STARTED.swap(true, Ordering::AcqRel) {
        let started = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(|| SINK.write_batches());
        // Without a writer, lines are written as they come, as before `init`.
        BUFFERED.store(started.is_ok(), Ordering::Release);
    }
}

pub fn enabled(level: Level) -> bool {
    level != Level::Off && level as u8 >= LEVEL.load(Ordering::Relaxed)
}

/// Lines dropped since start because stderr did not take them in time (`/metrics`).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Writes `{"ts":..,"level":..,"event":.., ...fields}` as one line. `fields` should be an object.
pub fn event(level: Level, name: &str, fields: Value) {
    let class = if level == Level::Debug {
        Class::Sheddable
    } else {
        Class::Kept
    };
    write_event(level, name, fields, class)
}

/// A line any stranger can cause once per request (a junk callback, a refused share, an
/// unknown sign-in state): written like the others, but dropped first when stderr lags, as
/// access lines are, so a flood of them cannot crowd out the lines of real sign-ins.
pub fn from_anyone(level: Level, name: &str, fields: Value) {
    write_event(level, name, fields, Class::Sheddable)
}

fn write_event(level: Level, name: &str, fields: Value, class: Class) {
    if !enabled(level) {
        return;
    }
    with_line(|line| {
        start_line(line, level, name);
        if let Value::Object(fields) = &fields {
            for (key, value) in fields {
                // The line's own keys come first and stay what they are.
                if matches!(key.as_str(), "ts" | "level" | "event") {
                    continue;
                }
                line.push(',');
                json_str(line, key);
                line.push(':');
                let _ = write!(line, "{value}");
            }
        }
        line.push_str("}\n");
        emit(line.as_bytes(), class);
    });
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

/// One request, as the access log records it (`event: request`, at `info`).
pub struct Access<'a> {
    pub method: &'a str,
    /// The route's name in the routing table (`/api/callback/{state}`), `-` for none.
    pub route: &'a str,
    /// The short hash of the state or handle the request concerned.
    pub state: Option<&'a str>,
    pub status: u16,
    pub elapsed: Duration,
    pub peer: IpAddr,
    /// The client a trusted proxy named, when not the peer itself.
    pub client: Option<IpAddr>,
}

/// The access-log line of one request. Formatted by hand into a buffer the thread keeps (no
/// JSON tree, no allocation), then appended like any line; dropped first when stderr lags.
pub fn access(a: &Access) {
    if !enabled(Level::Info) {
        return;
    }
    with_line(|line| {
        start_line(line, Level::Info, "request");
        line.push_str(",\"method\":");
        json_str(line, a.method);
        line.push_str(",\"route\":");
        json_str(line, a.route);
        line.push_str(",\"state\":");
        match a.state {
            Some(state) => json_str(line, state),
            None => line.push_str("null"),
        }
        // Milliseconds with three decimals, as a number (`0.29`, `12.5`).
        let micros = a.elapsed.as_micros().min(u64::MAX as u128) as u64;
        let _ = write!(
            line,
            ",\"status\":{},\"ms\":{},\"peer\":\"{}\"",
            a.status,
            micros as f64 / 1000.0,
            a.peer
        );
        if let Some(client) = a.client {
            let _ = write!(line, ",\"client\":\"{client}\"");
        }
        line.push_str("}\n");
        emit(line.as_bytes(), Class::Sheddable);
    });
}

/// Waits until every line logged before the call is written to stderr (or stderr has made no
/// progress for [`EXIT_STALL`]). Call it before the process exits.
pub fn flush() {
    if !BUFFERED.load(Ordering::Acquire) || IS_WRITER.get() {
        return;
    }
    SINK.flush();
}

/// Which lines give way first when stderr lags.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// The access log and debug lines: dropped past [`SHEDDABLE_BYTES`].
    Sheddable,
    /// Events, warnings, errors: dropped only past [`MAX_BUFFERED_BYTES`].
    Kept,
}

/// Whether lines go through the writer thread (after `init`) or straight to stderr.
static BUFFERED: AtomicBool = AtomicBool::new(false);
static WRITER_STARTED: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static SINK: Sink = Sink {
    pending: Mutex::new(Pending {
        bytes: Vec::new(),
        appended: 0,
        written: 0,
        gap: 0,
        writer_waiting: false,
        flush_wanted: false,
    }),
    work: Condvar::new(),
    done: Condvar::new(),
};

thread_local! {
    /// The line being formatted, kept between lines so formatting allocates nothing.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
    /// The timestamp's seconds (`2026-11-23T09:57:49`), formatted once per second per thread.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    /// Set on the writer thread: a flush from there would wait for itself.
    static IS_WRITER: Cell<bool> = const { Cell::new(false) };
}

struct Sink {
    pending: Mutex<Pending>,
    /// The writer waits here for lines (or a flush).
    work: Condvar,
    /// Flushes wait here for the writer's progress.
    done: Condvar,
}

struct Pending {
    bytes: Vec<u8>,
    /// Bytes appended and written since start: a flush waits for `written` to reach what was
    /// `appended` when it began.
    appended: u64,
    written: u64,
    /// Lines dropped since the last line that got in: reported by a line in their place.
    gap: u64,
    writer_waiting: bool,
    flush_wanted: bool,
}

impl Sink {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding it (copies only); a poisoned lock is still consistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one line, or drops it when its class has no room left.
    fn append(&self, line: &[u8], class: Class) {
        let limit = match class {
            Class::Sheddable => SHEDDABLE_BYTES,
            Class::Kept => MAX_BUFFERED_BYTES,
        };
        let mut p = self.lock();
        if p.bytes.len() + line.len() > limit {
            p.gap += 1;
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if p.gap > 0 {
            let note = gap_note(p.gap);
            if p.bytes.len() + note.len() + line.len() <= MAX_BUFFERED_BYTES {
                p.gap = 0;
                p.appended += note.len() as u64;
                p.bytes.extend_from_slice(note.as_bytes());
            }
        }
        p.appended += line.len() as u64;
        p.bytes.extend_from_slice(line);
        if p.writer_waiting {
            p.writer_waiting = false;
            drop(p);
            self.work.notify_one();
        }
    }

    /// The writer thread: waits for lines, lets a batch gather for [`BATCH_DELAY`] (unless a
    /// flush is waiting or the batch is large already), takes the whole buffer and writes it
    /// with one call.
    fn write_batches(&self) {
        IS_WRITER.set(true);
        let mut batch: Vec<u8> = Vec::new();
        loop {
            let mut p = self.lock();
            while p.bytes.is_empty() && !p.flush_wanted {
                p.writer_waiting = true;
                p = self.work.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            p.writer_waiting = false;
            // A batch already a quarter of the room is written at once: the gathering is for
            // quiet times, and room matters more when lines come fast.
            if !p.flush_wanted && p.bytes.len() < SHEDDABLE_BYTES / 4 {
                drop(p);
                std::thread::sleep(BATCH_DELAY);
                p = self.lock();
            }
            p.flush_wanted = false;
            std::mem::swap(&mut p.bytes, &mut batch);
            // Lines dropped after the last one taken: the note goes right after it.
            if p.gap > 0 {
                batch.extend_from_slice(gap_note(p.gap).as_bytes());
                p.gap = 0;
            }
            drop(p);
            // A failed write (stderr closed) counts as written: nothing else could be done.
            let _ = std::io::stderr().lock().write_all(&batch);
            let n = batch.len() as u64;
            batch.clear();
            // A burst must not keep its buffers for ever.
            if batch.capacity() > SHEDDABLE_BYTES {
                batch.shrink_to(SHEDDABLE_BYTES / 4);
            }
            self.lock().written += n;
            self.done.notify_all();
        }
    }

    fn flush(&self) {
        let mut p = self.lock();
        let target = p.appended;
        if p.written >= target && p.gap == 0 {
            return;
        }
        p.flush_wanted = true;
        self.work.notify_one();
        let mut progress = (p.written, Instant::now());
        while p.written < target || p.gap > 0 {
            p = self
                .done
                .wait_timeout(p, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if p.written != progress.0 {
                progress = (p.written, Instant::now());
            } else if progress.1.elapsed() >= EXIT_STALL {
                return;
            }
            if p.written < target || p.gap > 0 {
                // Taken by a batch that was already under way: ask again.
                p.flush_wanted = true;
                self.work.notify_one();
            }
        }
    }
}

/// The line standing where `count` dropped lines would have been.
fn gap_note(count: u64) -> String {
    let mut line = String::new();
    start_line(&mut line, Level::Warn, "log_lines_dropped");
    let _ = writeln!(
        line,
        ",\"dropped\":{count},\"why\":\"stderr did not take log lines as fast as they came; they were dropped rather than delay requests\"}}"
    );
    line
}

/// Sends a finished line to the writer, or straight to stderr before `init`.
fn emit(line: &[u8], class: Class) {
    if BUFFERED.load(Ordering::Acquire) {
        SINK.append(line, class);
    } else {
        // One write per line so lines from different threads never interleave.
        let _ = std::io::stderr().lock().write_all(line);
    }
}

/// Runs `f` with this thread's line buffer, emptied (a fresh one if it is in use: a line logged
/// while formatting another, from a `Display` implementation).
fn with_line(f: impl FnOnce(&mut String)) {
    LINE.with(|cell| match cell.try_borrow_mut() {
        Ok(mut line) => {
            line.clear();
            f(&mut line);
        }
        Err(_) => f(&mut String::new()),
    })
}

/// `{"ts":"...","level":"...","event":"..."`, the start every line shares.
fn start_line(line: &mut String, level: Level, event: &str) {
    line.push_str("{\"ts\":\"");
    timestamp(line);
    line.push_str("\",\"level\":\"");
    line.push_str(level.name());
    line.push_str("\",\"event\":");
    json_str(line, event);
}

/// RFC 3339 UTC with milliseconds (`2026-11-23T09:57:49.756Z`); the calendar part is formatted
/// once per second per thread.
fn timestamp(line: &mut String) {
    let now = SystemTime::now();
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|cell| {
        let Ok(mut cached) = cell.try_borrow_mut() else {
            line.push_str(&humantime::format_rfc3339_millis(now).to_string());
            return;
        };
        if cached.0 != since.as_secs() {
            let mut text = humantime::format_rfc3339_seconds(now).to_string();
            text.pop(); // the `Z`, which comes after the milliseconds
            *cached = (since.as_secs(), text);
        }
        line.push_str(&cached.1);
        let _ = write!(line, ".{:03}Z", since.subsec_millis());
    });
}

/// A JSON string, escaped as serde_json escapes it.
fn json_str(line: &mut String, s: &str) {
    line.push('"');
    let mut plain = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        line.push_str(&s[plain..i]);
        if escape.is_empty() {
            let _ = write!(line, "\\u{b:04x}");
        } else {
            line.push_str(escape);
        }
        plain = i + 1;
    }
    line.push_str(&s[plain..]);
    line.push('"');
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

    fn flush(&self) {
        flush();
    }
}

fn from_log(level: log::Level) -> Level {
    match level {
        log::Level::Error => Level::Error,
        log::Level::Warn => Level::Warn,
        log::Level::Info => Level::Info,
        log::Level::Debug | log::Level::Trace => Level::Debug,
    }
}

/// Panics become one JSON line, and everything logged before it is flushed: a panic that ends
/// the process must not take the lines that led to it along. The message is our own code's
/// text (never a secret); the location tells an operator where to look.
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
        flush();
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

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in [
            "plain",
            "",
            "quote \" and backslash \\",
            "line\nreturn\rtab\t",
            "control \u{1} \u{1f} and \u{7f}",
            "não é ASCII: 日本",
            "/api/callback/{state}",
        ] {
            let mut line = String::new();
            json_str(&mut line, s);
            assert_eq!(line, serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn lines_are_json_objects_with_the_shared_keys_first() {
        let mut line = String::new();
        start_line(&mut line, Level::Warn, "an \"event\"");
        line.push('}');
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "warn");
        assert_eq!(v["event"], "an \"event\"");
        let ts = v["ts"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-11-23T09:57:49.756Z".len(), "{ts}");
        assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts}");
        assert!(line.starts_with("{\"ts\":\""), "{line}");
        let note: Value = serde_json::from_str(gap_note(7).trim_end()).unwrap();
        assert_eq!(
            (note["event"].as_str(), note["dropped"].as_u64()),
            (Some("log_lines_dropped"), Some(7))
        );
    }
}
