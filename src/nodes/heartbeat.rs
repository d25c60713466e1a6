//! The heartbeat path. Thousands of nodes report every few seconds, so a heartbeat costs
//! no database round trip in the common case: the node's token is checked against an
//! in-memory map of every node's token (reloaded whole every `TOKEN_RELOAD`; a token not
//! in it is looked up once), the latest report per node is kept in memory, and a flusher
//! writes all pending reports in one statement at least once per flush interval. A report
//! that changes the node's status is written and published at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use tokio::sync::watch;
use uuid::Uuid;

use super::model::{self, NodeStatus, Report, StatusChange};
use super::service::{STATUS_TOPIC, StatusChanged, TOKEN_TOPIC, TokenRevoked, publish_changes};
use crate::auth::Identity;
use crate::db::DbPool;
use crate::error::{AppError, AppResult};
use crate::events::Message;

/// How often the token map is reloaded from the database. A token rotated or deleted
/// through another replica is dropped here as soon as its event arrives; the reload is the
/// fallback while the event listener is down.
const TOKEN_RELOAD: Duration = Duration::from_secs(10);

pub struct Ack {
    pub node_id: Uuid,
    pub status: NodeStatus,
    pub server_time: DateTime<Utc>,
}

#[derive(Default)]
pub struct Heartbeats {
    tokens: RwLock<HashMap<Vec<u8>, Uuid>>,
    statuses: RwLock<HashMap<Uuid, NodeStatus>>,
    pending: Mutex<HashMap<Uuid, Report>>,
    /// Heartbeats acknowledged, and reports written by flushes (for `/metrics`).
    pub accepted: AtomicU64,
    pub flushed: AtomicU64,
    /// Bumped by every `forget`: a reload that read the database before a token was
    /// revoked must not bring it back.
    forgotten: AtomicU64,
}

/// What a report does to a status: readiness moves nodes in and out of ACTIVE;
/// MAINTENANCE is the administrator's.
pub fn next_status(current: NodeStatus, ready: Option<bool>) -> NodeStatus {
    use NodeStatus::*;
    match (current, ready) {
        (Pending | Inactive | NotReady, Some(true)) => Active,
        (Active, Some(false)) => NotReady,
        (status, _) => status,
    }
}

/// A newer report over an older one: fields the newer leaves out keep the older values.
fn merge(older: Report, newer: Report) -> Report {
    Report {
        at: newer.at.max(older.at),
        is_ready: newer.is_ready.or(older.is_ready),
        allocated_cpu_milli: newer.allocated_cpu_milli.or(older.allocated_cpu_milli),
        allocated_memory_mb: newer.allocated_memory_mb.or(older.allocated_memory_mb),
        allocated_storage_mb: newer.allocated_storage_mb.or(older.allocated_storage_mb),
        current_pods: newer.current_pods.or(older.current_pods),
        kubelet_version: newer.kubelet_version.or(older.kubelet_version),
        container_runtime: newer.container_runtime.or(older.container_runtime),
        kernel_version: newer.kernel_version.or(older.kernel_version),
        os_image: newer.os_image.or(older.os_image),
        labels: newer.labels.or(older.labels),
        taints: newer.taints.or(older.taints),
    }
}

impl Heartbeats {
    /// Accepts one report from the node whose token `identity` carries.
    pub async fn accept(
        &self,
        pool: &DbPool,
        identity: &Identity,
        report: Report,
    ) -> AppResult<Ack> {
        let token_hash = match identity {
            Identity::Node { token_hash } => token_hash,
            Identity::User(_) => {
                return Err(AppError::Forbidden(
                    "heartbeats are sent with a node token, not a user's".into(),
                ));
            }
            Identity::Anonymous | Identity::Invalid => {
                return Err(AppError::Unauthenticated("a node token is required".into()));
            }
        };
        let (node_id, status) = self.authenticate(pool, token_hash).await?;
        self.accepted.fetch_add(1, Ordering::Relaxed);
        let target = next_status(status, report.is_ready);
        if target == status {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let merged = match pending.remove(&node_id) {
                Some(older) => merge(older, report),
                None => report,
            };
            pending.insert(node_id, merged);
            return Ok(Ack {
                node_id,
                status,
                server_time: Utc::now(),
            });
        }
        // A status change: written and published now, with whatever was pending for the node.
        let report = match self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&node_id)
        {
            Some(older) => merge(older, report),
            None => report,
        };
        let changes = self.write(pool, vec![(node_id, report)]).await?;
        let status = changes
            .iter()
            .find(|c| c.id == node_id)
            .map_or(status, |c| c.status);
        Ok(Ack {
            node_id,
            status,
            server_time: Utc::now(),
        })
    }

    /// The node a token belongs to, if this replica knows it (no database access).
    pub fn known_node(&self, token_hash: &[u8]) -> Option<Uuid> {
        self.tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token_hash)
            .copied()
    }

    async fn authenticate(
        &self,
        pool: &DbPool,
        token_hash: &[u8],
    ) -> AppResult<(Uuid, NodeStatus)> {
        let cached = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token_hash)
            .copied();
        if let Some(id) = cached
            && let Some(status) = self
                .statuses
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .copied()
        {
            return Ok((id, status));
        }
        let mut conn = pool.get().await?;
        match model::find_by_token(&mut conn, token_hash).await? {
            Some((id, status)) => {
                self.tokens
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(token_hash.to_vec(), id);
                self.observe_status(id, status);
                Ok((id, status))
            }
            None => {
                self.tokens
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(token_hash);
                Err(AppError::Unauthenticated(
                    "unknown or revoked node token".into(),
                ))
            }
        }
    }

    /// Writes reports in one transaction with their status-change events.
    async fn write(
        &self,
        pool: &DbPool,
        reports: Vec<(Uuid, Report)>,
    ) -> AppResult<Vec<StatusChange>> {
        let mut conn = pool.get().await?;
        let changes = conn
            .transaction(async |conn| {
                let changes = model::apply_reports(conn, &reports).await?;
                publish_changes(conn, &changes).await?;
                Ok::<_, diesel::result::Error>(changes)
            })
            .await?;
        for c in &changes {
            self.observe_status(c.id, c.status);
            if c.previous_status != c.status {
                tracing::info!(node_id = %c.id, from = c.previous_status.as_str(), to = c.status.as_str(), "worker node status");
            }
        }
        Ok(changes)
    }

    /// Writes every pending report; returns how many. On failure they are kept for the next try.
    pub async fn flush(&self, pool: &DbPool) -> AppResult<usize> {
        let batch: Vec<(Uuid, Report)> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        if batch.is_empty() {
            return Ok(0);
        }
        let n = batch.len();
        let started = std::time::Instant::now();
        let written = self.write(pool, batch.clone()).await;
        tracing::debug!(
            nodes = n,
            took_ms = started.elapsed().as_millis() as u64,
            "heartbeats flushed"
        );
        if let Err(e) = written {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            for (id, older) in batch {
                let merged = match pending.remove(&id) {
                    Some(newer) => merge(older, newer),
                    None => older,
                };
                pending.insert(id, merged);
            }
            return Err(e);
        }
        self.flushed.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    /// Flushes every `interval` until `shutdown`, then once more.
    pub fn spawn_flusher(
        self: std::sync::Arc<Self>,
        pool: DbPool,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stopping = tokio::select! {
                    _ = tick.tick() => false,
                    _ = shutdown.wait_for(|stop| *stop) => true,
                };
                if let Err(e) = self.flush(&pool).await {
                    tracing::warn!(error = ?e, "heartbeat flush failed; retrying");
                }
                if stopping {
                    return;
                }
            }
        })
    }

    /// Replaces the token map and statuses with the database's.
    pub async fn reload(&self, pool: &DbPool) -> AppResult<usize> {
        let generation = self.forgotten.load(Ordering::SeqCst);
        let mut conn = pool.get().await?;
        let nodes = model::all_tokens(&mut conn).await?;
        if self.forgotten.load(Ordering::SeqCst) != generation {
            // A revocation arrived meanwhile; the next reload reads after it.
            return Ok(0);
        }
        let n = nodes.len();
        let mut tokens = HashMap::with_capacity(n);
        let mut statuses = HashMap::with_capacity(n);
        for (hash, id, status) in nodes {
            tokens.insert(hash, id);
            statuses.insert(id, status);
        }
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = tokens;
        *self.statuses.write().unwrap_or_else(|e| e.into_inner()) = statuses;
        Ok(n)
    }

    /// Reloads the token map now and every `TOKEN_RELOAD` until `shutdown`.
    pub fn spawn_reloader(
        self: std::sync::Arc<Self>,
        pool: DbPool,
        mut shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TOKEN_RELOAD);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                if let Err(e) = self.reload(&pool).await {
                    tracing::warn!(error = ?e, "reloading node tokens failed");
                }
            }
        })
    }

    /// Learns a node's status (from an administrator, the staleness job or an event).
    pub fn observe_status(&self, id: Uuid, status: NodeStatus) {
        self.statuses
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, status);
    }

    /// Drops what is cached of a node (its token was rotated or it was deleted).
    /// Follows the nodes' live events from every replica: status changes, and tokens that
    /// stopped working (rotated, or their node deleted), which are dropped at once.
    pub fn observe(&self, message: &Message) {
        if let Some(change) = message.decode::<StatusChanged>(STATUS_TOPIC) {
            self.observe_status(change.node_id, change.status);
        } else if let Some(revoked) = message.decode::<TokenRevoked>(TOKEN_TOPIC) {
            self.forget(revoked.node_id);
        }
    }

    pub fn forget(&self, id: Uuid) {
        self.forgotten.fetch_add(1, Ordering::SeqCst);
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, node| *node != id);
        self.statuses
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    pub fn pending_len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_moves_status_but_not_maintenance() {
        use NodeStatus::*;
        assert_eq!(next_status(Pending, Some(true)), Active);
        assert_eq!(next_status(Inactive, Some(true)), Active);
        assert_eq!(next_status(Active, Some(false)), NotReady);
        assert_eq!(next_status(Maintenance, Some(true)), Maintenance);
        assert_eq!(next_status(Pending, None), Pending);
    }

    #[test]
    fn newer_reports_keep_older_fields_they_omit() {
        let older = Report {
            current_pods: Some(3),
            kernel_version: Some("6.1".into()),
            ..Default::default()
        };
        let newer = Report {
            current_pods: Some(5),
            ..Default::default()
        };
        let m = merge(older, newer);
        assert_eq!(m.current_pods, Some(5));
        assert_eq!(m.kernel_version.as_deref(), Some("6.1"));
    }
}
