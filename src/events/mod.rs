//! Live events. Publishing is a `pg_notify` inside the publisher's transaction, so an
//! event exists only once its change has committed; every replica (this one included)
//! LISTENs and fans events out to its in-process subscribers.
//!
//! A transport only: a message is a topic and a JSON payload, `{"topic": ..., "payload": ...}`
//! on the wire. Each domain defines its topics, payload types and who may receive them.
//!
//! `publish` NOTIFYs per transaction, and a commit that NOTIFYs takes a global lock: it is
//! for low-rate writers. High-rate writers use the outbox (`enqueue`, see `outbox`).

pub mod outbox;

pub use outbox::{enqueue, enqueue_all};

use std::sync::Arc;
use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::db::Conn;

pub const CHANNEL: &str = "podium_events";

/// One event: its topic and its payload.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Message {
    pub topic: String,
    pub payload: serde_json::Value,
    /// The payload decoded once for all of this process's subscribers (see
    /// `decode_shared`): one event may go to thousands of them.
    #[serde(skip)]
    decoded: Arc<std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>>,
}

impl Message {
    pub fn new(topic: String, payload: serde_json::Value) -> Self {
        Message {
            topic,
            payload,
            decoded: Arc::default(),
        }
    }

    /// Like `decode`, but decoded by the first caller only; the others get a clone.
    pub fn decode_shared<T>(&self, topic: &str) -> Option<T>
    where
        T: DeserializeOwned + Clone + Send + Sync + 'static,
    {
        if self.topic != topic {
            return None;
        }
        let decoded = self
            .decoded
            .get_or_init(|| Arc::new(self.decode::<T>(topic)));
        match decoded.downcast_ref::<Option<T>>() {
            Some(value) => value.clone(),
            // Read as another type first (never on the same topic in practice).
            None => self.decode(topic),
        }
    }

    /// The payload as a `T`, if the message is on `topic` (and reads as one).
    pub fn decode<T: DeserializeOwned>(&self, topic: &str) -> Option<T> {
        if self.topic != topic {
            return None;
        }
        serde_json::from_value(self.payload.clone())
            .inspect_err(|e| tracing::warn!(topic, error = %e, "ignoring an unreadable event"))
            .ok()
    }
}

/// Queues an event on `topic` for delivery when the surrounding transaction commits
/// (immediately outside one). Payloads stay far below PostgreSQL's 8000-byte limit.
pub async fn publish(
    conn: &mut Conn,
    topic: &str,
    payload: &impl Serialize,
) -> diesel::QueryResult<()> {
    let payload = serde_json::to_string(&Message::new(
        topic.to_string(),
        serde_json::to_value(payload).expect("events serialize"),
    ))
    .expect("events serialize");
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(CHANNEL)
        .bind::<Text, _>(payload)
        .execute(conn)
        .await
        .map(drop)
}

/// Sees every event before any subscriber does (see `EventBus::observe_first`).
type Observer = Arc<dyn Fn(&Message) + Send + Sync>;

/// In-process fan-out of the events this replica hears.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Message>>,
    listening: watch::Receiver<bool>,
    listening_tx: Arc<watch::Sender<bool>>,
    observers: Arc<std::sync::RwLock<Vec<Observer>>>,
    outbox: Arc<outbox::Signals>,
}

impl Default for EventBus {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(4096);
        let (listening_tx, listening) = watch::channel(false);
        EventBus {
            tx,
            listening,
            listening_tx: Arc::new(listening_tx),
            observers: Arc::default(),
            outbox: Arc::default(),
        }
    }
}

impl EventBus {
    /// Runs `observer` on every event, in order, before any subscriber hears of it: what a
    /// subscriber then reads from a cache already reflects every earlier change (a
    /// demotion applied before the event that follows it), and an observer can't lag.
    /// Observers must be quick and never block.
    pub fn observe_first(&self, observer: impl Fn(&Message) + Send + Sync + 'static) {
        self.observers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(observer));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Message>> {
        self.tx.subscribe()
    }

    /// How many receivers are subscribed (live subscriptions plus internal listeners).
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    pub fn deliver(&self, message: Message) {
        for observer in self
            .observers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            observer(&message);
        }
        // No subscribers is fine.
        let _ = self.tx.send(Arc::new(message));
    }

    pub fn is_listening(&self) -> bool {
        *self.listening.borrow()
    }

    /// Whether the LISTEN connection is up, as it changes: while it is down, events
    /// committed elsewhere are missed.
    pub fn listening(&self) -> watch::Receiver<bool> {
        self.listening.clone()
    }

    /// Waits until the LISTEN connection is up (bounded), so that nothing committed after
    /// the server reports ready is missed.
    pub async fn wait_listening(&self, timeout: Duration) -> bool {
        let mut rx = self.listening.clone();
        tokio::time::timeout(timeout, rx.wait_for(|up| *up))
            .await
            .is_ok()
    }

    /// Keeps a LISTEN connection open (reconnecting with backoff) until `shutdown` flips.
    pub fn spawn_listener(
        &self,
        url: String,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let bus = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                tokio::select! {
                    result = bus.listen_once(&url) => {
                        bus.listening_tx.send_replace(false);
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "event listener lost its connection; reconnecting");
                        }
                    }
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        })
    }

    async fn listen_once(&self, url: &str) -> anyhow::Result<()> {
        let mut conn = AsyncPgConnection::establish(url).await?;
        // Named, so that operators (and tests) can tell it from the pool's connections.
        diesel::sql_query("SET application_name = 'podium-listener'")
            .execute(&mut conn)
            .await?;
        diesel::sql_query(format!("LISTEN {CHANNEL}"))
            .execute(&mut conn)
            .await?;
        diesel::sql_query(format!("LISTEN {}", outbox::WAKE_CHANNEL))
            .execute(&mut conn)
            .await?;
        self.listening_tx.send_replace(true);
        tracing::debug!("listening for events");
        let mut health = tokio::time::interval(Duration::from_secs(15));
        health.tick().await;
        loop {
            // The notification stream never ends on its own: a periodic query notices a dead connection.
            let next = {
                let mut stream = std::pin::pin!(conn.notifications_stream());
                tokio::select! {
                    n = stream.next() => Some(n),
                    _ = health.tick() => None,
                }
            };
            match next {
                Some(Some(Ok(notification))) if notification.channel == outbox::WAKE_CHANNEL => {
                    self.outbox.woken_remotely();
                }
                Some(Some(Ok(notification))) => {
                    match serde_json::from_str::<Message>(&notification.payload) {
                        Ok(message) => self.deliver(message),
                        Err(e) => tracing::warn!(error = %e, "ignoring an unreadable event"),
                    }
                }
                Some(Some(Err(e))) => return Err(e.into()),
                Some(None) => anyhow::bail!("notification stream ended"),
                None => {
                    // A half-open connection would hang here: give up and reconnect.
                    tokio::time::timeout(
                        Duration::from_secs(5),
                        diesel::sql_query("SELECT 1").execute(&mut conn),
                    )
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("the event listener's health check timed out")
                    })??;
                }
            }
        }
    }
}
