//! Live events. Publishing is a `pg_notify` inside the publisher's transaction, so an
//! event exists only once its change has committed; every replica (this one included)
//! LISTENs and fans events out to its in-process subscribers.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::db::Conn;
use crate::nodes::model::NodeStatus;

pub const CHANNEL: &str = "podium_events";

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    #[serde(rename_all = "camelCase")]
    WorkerNodeStatusChanged {
        node_id: Uuid,
        previous_status: NodeStatus,
        status: NodeStatus,
        at: DateTime<Utc>,
    },
}

/// Queues `event` for delivery when the surrounding transaction commits (immediately
/// outside one). Payloads stay far below PostgreSQL's 8000-byte limit.
pub async fn publish(conn: &mut Conn, event: &Event) -> diesel::QueryResult<()> {
    let payload = serde_json::to_string(event).expect("events serialize");
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(CHANNEL)
        .bind::<Text, _>(payload)
        .execute(conn)
        .await
        .map(drop)
}

/// In-process fan-out of the events this replica hears.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    listening: watch::Receiver<bool>,
    listening_tx: Arc<watch::Sender<bool>>,
}

impl Default for EventBus {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(4096);
        let (listening_tx, listening) = watch::channel(false);
        EventBus {
            tx,
            listening,
            listening_tx: Arc::new(listening_tx),
        }
    }
}

impl EventBus {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// How many receivers are subscribed (live subscriptions plus internal listeners).
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    pub fn deliver(&self, event: Event) {
        // No subscribers is fine.
        let _ = self.tx.send(Arc::new(event));
    }

    pub fn is_listening(&self) -> bool {
        *self.listening.borrow()
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
        diesel::sql_query(format!("LISTEN {CHANNEL}"))
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
                Some(Some(Ok(notification))) => {
                    match serde_json::from_str::<Event>(&notification.payload) {
                        Ok(event) => self.deliver(event),
                        Err(e) => tracing::warn!(error = %e, "ignoring an unreadable event"),
                    }
                }
                Some(Some(Err(e))) => return Err(e.into()),
                Some(None) => anyhow::bail!("notification stream ended"),
                None => {
                    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
                }
            }
        }
    }
}
