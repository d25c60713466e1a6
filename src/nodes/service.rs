//! Worker-node administration (administrators only, audited) and staleness.

use std::collections::BTreeMap;

use diesel_async::AsyncConnection;
use futures_util::FutureExt;
use serde_json::json;
use uuid::Uuid;

use super::TOKEN_PREFIX;
use super::model::{
    self, NodeChanges, NodeFilter, NodeStatus, NodeTotals, Report, StatusChange, WorkerNode,
};
use crate::audit;
use crate::auth::{Actor, Identity, identity, new_opaque_token, token_hash};
use crate::catalog::service::Checks;
use crate::db::Conn;
use crate::error::{AppError, AppResult, conflict_if_duplicate};
use crate::events;
use crate::pagination::{Page, PageArgs, Total};
use crate::state::AppState;

#[derive(Default, Clone)]
pub struct NodeInput {
    pub changes: NodeChanges,
}

impl NodeInput {
    fn validate(&self, creating: bool) -> AppResult<()> {
        let c = &self.changes;
        let mut checks = Checks::default();
        for (field, present) in [
            ("name", c.name.is_some()),
            ("hostname", c.hostname.is_some()),
            ("ipAddress", c.ip_address.is_some()),
            ("cpuCores", c.cpu_cores.is_some()),
            ("memoryMb", c.memory_mb.is_some()),
            ("storageMb", c.storage_mb.is_some()),
        ] {
            checks.check(!creating || present, field, "is required");
        }
        if let Some(name) = &c.name {
            checks.check(
                (1..=63).contains(&name.len())
                    && name
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-._".contains(ch)),
                "name",
                "must be 1 to 63 letters, digits, '-', '.' or '_'",
            );
        }
        if let Some(host) = &c.hostname {
            checks.check(
                (1..=253).contains(&host.len())
                    && host
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "-.".contains(ch)),
                "hostname",
                "must be a DNS hostname",
            );
        }
        if let Some(ip) = &c.ip_address {
            checks.check(
                ip.parse::<std::net::IpAddr>().is_ok(),
                "ipAddress",
                "must be an IPv4 or IPv6 address",
            );
        }
        if let Some(v) = c.cpu_cores {
            checks.check(v > 0, "cpuCores", "must be above zero");
        }
        for (field, value) in [("memoryMb", c.memory_mb), ("storageMb", c.storage_mb)] {
            if let Some(v) = value {
                checks.check(v > 0, field, "must be above zero");
            }
        }
        if let Some(v) = c.max_pods {
            checks.check(v > 0, "maxPods", "must be above zero");
        }
        if let Some(labels) = &c.labels {
            checks.check(
                labels
                    .as_object()
                    .is_some_and(|o| o.values().all(|v| v.is_string())),
                "labels",
                "must be an object of string values",
            );
        }
        if let Some(taints) = &c.taints {
            checks.check(taints.is_array(), "taints", "must be a list");
        }
        checks.finish()
    }
}

const NAME_TAKEN: &str = "a worker node with this name";

/// A new node token: shown once, stored hashed.
fn new_token() -> (String, Vec<u8>) {
    let token = new_opaque_token(TOKEN_PREFIX);
    let hash = token_hash(&token);
    (token, hash)
}

pub fn stale_after(state: &AppState) -> chrono::Duration {
    chrono::Duration::from_std(state.settings.node_stale_after)
        .unwrap_or(chrono::Duration::seconds(60))
}

pub async fn list(
    state: &AppState,
    identity: &Identity,
    mut filter: NodeFilter,
    page: PageArgs,
) -> AppResult<Page<WorkerNode>> {
    identity.admin()?;
    filter.stale_after = stale_after(state);
    let mut conn = state.pool.get().await?;
    let rows = model::list(&mut conn, &filter, &page).await?;
    let total = Total::deferred(&state.pool, filter, |conn, filter| {
        model::count(conn, filter).boxed()
    });
    Ok(Page::from_rows(rows, &page, total))
}

pub async fn get(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<WorkerNode> {
    identity.admin()?;
    let mut conn = state.pool.get().await?;
    model::find(&mut conn, id)
        .await?
        .ok_or_else(|| AppError::not_found("worker node"))
}

/// The node an event is about, for a subscriber judged by its current state: an error
/// once the subscriber is no longer an active administrator with a live session.
pub async fn node_for_subscriber(
    state: &AppState,
    subscriber: &Actor,
    node_id: Uuid,
) -> AppResult<Option<WorkerNode>> {
    let now = identity::current(state, subscriber.user_id, subscriber.session_id)
        .await?
        .ok_or_else(AppError::unauthenticated)?;
    Identity::User(now).admin()?;
    let mut conn = state.pool.get().await?;
    Ok(model::find_many(&mut conn, &[node_id]).await?.pop())
}

pub struct NodeStats {
    pub totals: NodeTotals,
    pub by_status: BTreeMap<&'static str, i64>,
}

/// A node as the provisioner needs it (no caller: internal).
pub async fn find_internal(state: &AppState, id: Uuid) -> AppResult<Option<WorkerNode>> {
    let mut conn = state.pool.get().await?;
    Ok(model::find(&mut conn, id).await?)
}

/// Node names and regions by id (internal: for instances already judged visible).
pub async fn names(
    state: &AppState,
    ids: &[Uuid],
) -> AppResult<std::collections::HashMap<Uuid, (String, Option<String>)>> {
    let mut conn = state.pool.get().await?;
    Ok(model::find_many(&mut conn, ids)
        .await?
        .into_iter()
        .map(|n| (n.id, (n.name, n.region)))
        .collect())
}

/// Every node (the embedded cluster runs them), in name order.
pub async fn all_internal(state: &AppState) -> AppResult<Vec<WorkerNode>> {
    let mut conn = state.pool.get().await?;
    Ok(model::all(&mut conn).await?)
}

pub async fn stats(state: &AppState, identity: &Identity) -> AppResult<NodeStats> {
    identity.admin()?;
    let mut conn = state.pool.get().await?;
    let totals = model::totals(&mut conn, stale_after(state).num_seconds()).await?;
    let mut by_status: BTreeMap<&'static str, i64> = [
        NodeStatus::Active,
        NodeStatus::Inactive,
        NodeStatus::Maintenance,
        NodeStatus::Pending,
        NodeStatus::NotReady,
    ]
    .into_iter()
    .map(|s| (s.as_str(), 0))
    .collect();
    for (status, n) in model::count_by_status(&mut conn).await? {
        by_status.insert(status.as_str(), n);
    }
    Ok(NodeStats { totals, by_status })
}

/// Registers a node (PENDING until it reports ready); returns it and its token, shown once.
pub async fn register(
    state: &AppState,
    identity: &Identity,
    input: NodeInput,
) -> AppResult<(WorkerNode, String)> {
    let actor = identity.admin()?;
    input.validate(true)?;
    let (token, hash) = new_token();
    let node = audit::audited(state, actor, "node.register", "WorkerNode", move |conn| {
        async move {
            let node = model::insert(conn, &input.changes, &hash)
                .await
                .map_err(conflict_if_duplicate(NAME_TAKEN))?;
            let (id, metadata) = (node.id, json!({ "name": node.name }));
            Ok((node, Some(id), metadata))
        }
        .boxed()
    })
    .await?;
    Ok((node, token))
}

pub async fn update(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    input: NodeInput,
) -> AppResult<WorkerNode> {
    let actor = identity.admin()?;
    input.validate(false)?;
    apply_changes(state, actor, id, input.changes, "node.update").await
}

/// Cordon (false) or uncordon (true): whether new instances may be placed on the node.
pub async fn set_schedulable(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    schedulable: bool,
) -> AppResult<WorkerNode> {
    let actor = identity.admin()?;
    let changes = NodeChanges {
        is_schedulable: Some(schedulable),
        ..Default::default()
    };
    let action = if schedulable {
        "node.uncordon"
    } else {
        "node.cordon"
    };
    let node = apply_changes(state, actor, id, changes, action).await?;
    if schedulable {
        // Instances waiting for room may fit now.
        crate::instances::service::queue_unplaced(state).await?;
    }
    Ok(node)
}

/// Drains a node: cordons it and moves its instances to other nodes (their status warns
/// that node-local data stays behind). Audited; the provisioner does the moving.
pub async fn drain(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<WorkerNode> {
    let actor = identity.admin()?;
    let now = state.clock.now();
    let node = audit::audited(state, actor, "node.drain", "WorkerNode", move |conn| {
        async move {
            let changes = NodeChanges {
                is_schedulable: Some(false),
                ..Default::default()
            };
            let node = model::update(conn, id, &changes)
                .await?
                .ok_or_else(|| AppError::not_found("worker node"))?;
            let moved = crate::instances::service::unplace_from_node(conn, id, now).await?;
            let metadata = json!({ "name": node.name, "instancesMoved": moved });
            Ok((node, Some(id), metadata))
        }
        .boxed()
    })
    .await?;
    crate::instances::service::committed(state);
    Ok(node)
}

async fn apply_changes(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
    changes: NodeChanges,
    action: &str,
) -> AppResult<WorkerNode> {
    audit::audited(state, actor, action, "WorkerNode", move |conn| {
        async move {
            let node = model::update(conn, id, &changes)
                .await
                .map_err(conflict_if_duplicate(NAME_TAKEN))?
                .ok_or_else(|| AppError::not_found("worker node"))?;
            let metadata = json!({ "name": node.name });
            Ok((node, Some(id), metadata))
        }
        .boxed()
    })
    .await
}

pub async fn set_status(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    status: NodeStatus,
) -> AppResult<WorkerNode> {
    let actor = identity.admin()?;
    let node = audit::audited(state, actor, "node.set_status", "WorkerNode", move |conn| {
        async move {
            let change = model::set_status(conn, id, status)
                .await?
                .ok_or_else(|| AppError::not_found("worker node"))?;
            publish_changes(conn, std::slice::from_ref(&change)).await?;
            let node = model::find(conn, id)
                .await?
                .ok_or_else(|| AppError::not_found("worker node"))?;
            Ok((
                node,
                Some(id),
                json!({ "from": change.previous_status, "to": status }),
            ))
        }
        .boxed()
    })
    .await?;
    state.heartbeats.observe_status(id, node.status);
    Ok(node)
}

/// Issues a new token; the old one stops working at once on this server and, through the
/// live event, within moments on the others.
pub async fn rotate_token(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
) -> AppResult<(WorkerNode, String)> {
    let actor = identity.admin()?;
    let (token, hash) = new_token();
    let node = audit::audited(
        state,
        actor,
        "node.rotate_token",
        "WorkerNode",
        move |conn| {
            async move {
                if model::set_token(conn, id, &hash).await? == 0 {
                    return Err(AppError::not_found("worker node"));
                }
                events::publish(conn, TOKEN_TOPIC, &TokenRevoked { node_id: id }).await?;
                let node = model::find(conn, id)
                    .await?
                    .ok_or_else(|| AppError::not_found("worker node"))?;
                Ok((node, Some(id), json!({})))
            }
            .boxed()
        },
    )
    .await?;
    state.heartbeats.forget(id);
    Ok((node, token))
}

/// Removes a node. Instances will pin nodes once they exist (a later issue); until then
/// a node reporting running pods is refused, so no workload is orphaned silently.
pub async fn delete(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<()> {
    let actor = identity.admin()?;
    audit::audited(state, actor, "node.delete", "WorkerNode", move |conn| {
        async move {
            let node = model::find(conn, id)
                .await?
                .ok_or_else(|| AppError::not_found("worker node"))?;
            if node.current_pods > 0 && node.status != NodeStatus::Inactive {
                return Err(AppError::Conflict(format!(
                    "the node runs {} pod(s): drain it (cordon and wait) before deleting",
                    node.current_pods
                )));
            }
            model::delete(conn, id).await?;
            events::publish(conn, TOKEN_TOPIC, &TokenRevoked { node_id: id }).await?;
            Ok(((), Some(id), json!({ "name": node.name })))
        }
        .boxed()
    })
    .await?;
    state.heartbeats.forget(id);
    Ok(())
}

/// The live event of a worker node's status transition, on [`STATUS_TOPIC`].
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusChanged {
    pub node_id: Uuid,
    pub previous_status: NodeStatus,
    pub status: NodeStatus,
    pub at: chrono::DateTime<chrono::Utc>,
}

pub const STATUS_TOPIC: &str = "nodes.status";

/// A node's token stopped working (rotated, or the node deleted), on [`TOKEN_TOPIC`]:
/// every replica drops it from its in-memory token map.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenRevoked {
    pub node_id: Uuid,
}

pub const TOKEN_TOPIC: &str = "nodes.token";

/// Publishes each status change (delivered when the transaction commits).
pub async fn publish_changes(conn: &mut Conn, changes: &[StatusChange]) -> diesel::QueryResult<()> {
    let at = chrono::Utc::now();
    for change in changes.iter().filter(|c| c.previous_status != c.status) {
        let event = StatusChanged {
            node_id: change.id,
            previous_status: change.previous_status,
            status: change.status,
            at,
        };
        events::publish(conn, STATUS_TOPIC, &event).await?;
    }
    Ok(())
}

/// The staleness job: silent nodes become INACTIVE. Safe to run on several replicas at once.
pub async fn mark_stale_nodes(state: &AppState) -> anyhow::Result<usize> {
    let stale_after = stale_after(state).num_seconds();
    let mut conn = state.pool.get().await?;
    let changes = conn
        .transaction(async |conn| {
            let changes = model::mark_stale(conn, stale_after).await?;
            publish_changes(conn, &changes).await?;
            Ok::<_, diesel::result::Error>(changes)
        })
        .await?;
    for change in &changes {
        tracing::warn!(node_id = %change.id, from = change.previous_status.as_str(), "worker node silent: now INACTIVE");
        state.heartbeats.observe_status(change.id, change.status);
    }
    Ok(changes.len())
}

/// A Node as the cluster reports it (node sync).
#[derive(Clone, Debug)]
pub struct ClusterNode {
    pub name: String,
    pub hostname: String,
    pub ip_address: String,
    pub cpu_cores: i32,
    pub memory_mb: i64,
    pub storage_mb: i64,
    pub max_pods: i32,
    pub architecture: String,
    pub operating_system: String,
    pub ready: bool,
    pub kubelet_version: Option<String>,
    pub container_runtime: Option<String>,
    pub kernel_version: Option<String>,
    pub os_image: Option<String>,
    pub labels: serde_json::Value,
    pub taints: serde_json::Value,
}

/// Mirrors the cluster's Nodes into worker nodes: unknown ones are added (with a token
/// nobody holds: an agent gets one by rotation), capacity follows the cluster, and
/// readiness and versions are written as a heartbeat would write them. Cordons stay
/// Podium's.
pub async fn sync_from_cluster(state: &AppState, nodes: &[ClusterNode]) -> AppResult<usize> {
    if nodes.is_empty() {
        return Ok(0);
    }
    let now = chrono::Utc::now();
    let mut conn = state.pool.get().await?;
    let changes = conn
        .transaction(async |conn| {
            let mut reports = Vec::with_capacity(nodes.len());
            for n in nodes {
                let changes = NodeChanges {
                    name: Some(n.name.clone()),
                    hostname: Some(n.hostname.clone()),
                    ip_address: Some(n.ip_address.clone()),
                    cpu_cores: Some(n.cpu_cores),
                    memory_mb: Some(n.memory_mb),
                    storage_mb: Some(n.storage_mb),
                    architecture: Some(n.architecture.clone()),
                    operating_system: Some(n.operating_system.clone()),
                    max_pods: Some(n.max_pods),
                    labels: Some(n.labels.clone()),
                    taints: Some(n.taints.clone()),
                    ..Default::default()
                };
                model::insert_if_absent(conn, &changes, &new_token().1).await?;
                let capacity = NodeChanges {
                    cpu_cores: Some(n.cpu_cores),
                    memory_mb: Some(n.memory_mb),
                    storage_mb: Some(n.storage_mb),
                    max_pods: Some(n.max_pods),
                    ..Default::default()
                };
                let Some(id) = model::update_by_name(conn, &n.name, &capacity).await? else {
                    continue;
                };
                reports.push((
                    id,
                    Report {
                        at: now,
                        is_ready: Some(n.ready),
                        kubelet_version: n.kubelet_version.clone(),
                        container_runtime: n.container_runtime.clone(),
                        kernel_version: n.kernel_version.clone(),
                        os_image: n.os_image.clone(),
                        labels: Some(n.labels.clone()),
                        taints: Some(n.taints.clone()),
                        ..Default::default()
                    },
                ));
            }
            reports.sort_by_key(|(id, _)| *id);
            let changes = model::apply_reports(conn, &reports).await?;
            publish_changes(conn, &changes).await?;
            Ok::<_, AppError>(changes)
        })
        .await?;
    for change in &changes {
        state.heartbeats.observe_status(change.id, change.status);
    }
    Ok(nodes.len())
}

/// Demo nodes for the seed; returns (name, token) of the ones created.
pub async fn seed_node(conn: &mut Conn, changes: NodeChanges) -> AppResult<Option<String>> {
    NodeInput {
        changes: changes.clone(),
    }
    .validate(true)?;
    let (token, hash) = new_token();
    Ok(model::insert_if_absent(conn, &changes, &hash)
        .await?
        .then_some(token))
}
