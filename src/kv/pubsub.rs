//! Subscriptions that follow the topology: a task on the layer's runtime holds one connection
//! subscribed to the channels, on the primary (standalone, Sentinel) or on any node of a
//! cluster, and when that connection dies or the primary moves, subscribes again elsewhere and
//! says so with a `Gap` (messages published meanwhile were missed: look again).
//!
//! On a cluster the channels are classic ones (PUBLISH/SUBSCRIBE), not sharded
//! (SPUBLISH/SSUBSCRIBE): a classic message reaches every node, so the subscriber may sit on
//! any node and never has to move when slots migrate (a sharded subscription is dropped by the
//! server when its slot moves, and must be found again); it also works on Redis 6 clusters.
//! The price is that each message crosses the cluster bus to every node, which at our rate
//! (one message per callback) is nothing; sharded channels are the choice if that changes.

use super::{Counters, Shared};
use redis::PushKind;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages held for a slow reader before they are dropped (and a `Gap` is reported).
const BUFFER: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message on one of the channels.
    Message { channel: String, payload: Vec<u8> },
    /// The subscription is (again) in place: anything published before may have been
    /// missed, so whoever waits for news should look for it now. Also sent after messages
    /// were dropped because they were not read fast enough.
    Gap,
}

/// What [`Kv::subscribe`](super::Kv::subscribe) gives: events until the `Kv` is dropped.
/// Dropping it ends the subscription.
pub struct Subscription {
    events: mpsc::Receiver<Event>,
    task: tokio::task::AbortHandle,
}

impl Subscription {
    pub(crate) fn start(
        shared: Arc<Shared>,
        runtime: &tokio::runtime::Handle,
        channels: Vec<String>,
    ) -> Subscription {
        let (out, events) = mpsc::channel(BUFFER);
        let task = runtime.spawn(listen(shared, channels, out)).abort_handle();
        Subscription { events, task }
    }

    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// For a thread of its own (never on an event loop).
    pub fn blocking_next(&mut self) -> Option<Event> {
        self.events.blocking_recv()
    }

    /// The next event if one is waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen(shared: Arc<Shared>, channels: Vec<String>, out: mpsc::Sender<Event>) {
    let counters: &Counters = &shared.counters;
    let mut pause = Duration::from_millis(50);
    let mut attempt = 0usize;
    loop {
        let timeout = shared.timeout;
        let subscribed = async {
            let node = shared.backend.pubsub_node(attempt).await.map_err(|e| e.0)?;
            let (push, pushed) = mpsc::unbounded_channel();
            let mut conn = node.open(Some(push)).await.map_err(|e| e.to_string())?;
            conn.subscribe(&channels).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((node, conn, pushed))
        };
        let (node, conn, mut pushed) = match tokio::time::timeout(timeout, subscribed).await {
            Ok(Ok(s)) => s,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => "no answer in time".into(),
                };
                crate::logging::warn(
                    "redis_subscriber",
                    serde_json::json!({ "error": why, "action": format!("subscribing again in {} ms", pause.as_millis()) }),
                );
                attempt += 1;
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = out.closed() => return,
                }
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        counters.subscribed.fetch_add(1, Ordering::Relaxed);
        pause = Duration::from_millis(50);
        // Whatever was published before now was missed. Never waits for a slow reader (what
        // Redis pushes meanwhile would pile up unread): a full buffer is itself a gap.
        let mut missed = true;
        let mut changes = shared.backend.changes();
        loop {
            let changed = async {
                match &mut changes {
                    Some(c) => c.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                room = out.reserve(), if missed => match room {
                    Ok(room) => {
                        room.send(Event::Gap);
                        missed = false;
                    }
                    Err(_) => return,
                },
                push = pushed.recv() => {
                    let Some(push) = push else { break };
                    match push.kind {
                        PushKind::Disconnection => break,
                        PushKind::Message => {
                            let Some(msg) = redis::Msg::from_push_info(push) else { continue };
                            let event = Event::Message {
                                channel: msg.get_channel_name().to_string(),
                                payload: msg.get_payload_bytes().to_vec(),
                            };
                            match out.try_send(event) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(_)) => missed = true,
                                Err(mpsc::error::TrySendError::Closed(_)) => return,
                            }
                        }
                        _ => {}
                    }
                }
                still = changed => {
                    if !still { break }
                    if !shared.backend.still_serves(&node) {
                        break;
                    }
                }
                _ = out.closed() => return,
            }
        }
        conn.kill();
        drop(conn);
        attempt += 1;
    }
}
