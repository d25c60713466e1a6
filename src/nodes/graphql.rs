//! Worker nodes for administrators, the node agents' heartbeat, and live status.

use async_graphql::{Context, ID, InputObject, Json, Object, Result, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::model::{NodeChanges, NodeFilter, NodeStatus, Report, WorkerNode};
use super::service::{self, NodeInput};
use crate::graphql::{ContextExt, PodiumConnection, connection, parse_id};
use crate::pagination::PageArgs;
use crate::state::AppState;
use uuid::Uuid;

fn ratio(used: i64, total: i64) -> f64 {
    if total <= 0 {
        0.0
    } else {
        (used as f64 * 10000.0 / total as f64).round() / 100.0
    }
}

#[Object(name = "WorkerNode")]
impl WorkerNode {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn hostname(&self) -> &str {
        &self.hostname
    }
    async fn ip_address(&self) -> &str {
        &self.ip_address
    }
    async fn cpu_cores(&self) -> i32 {
        self.cpu_cores
    }
    async fn cpu_model(&self) -> Option<&str> {
        self.cpu_model.as_deref()
    }
    async fn memory_mb(&self) -> i64 {
        self.memory_mb
    }
    async fn storage_mb(&self) -> i64 {
        self.storage_mb
    }
    async fn architecture(&self) -> &str {
        &self.architecture
    }
    async fn operating_system(&self) -> &str {
        &self.operating_system
    }
    async fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }
    async fn status(&self) -> NodeStatus {
        self.status
    }
    async fn is_ready(&self) -> bool {
        self.is_ready
    }
    /// False when cordoned: no new instances are placed on it.
    async fn is_schedulable(&self) -> bool {
        self.is_schedulable
    }
    /// Heard from within the staleness threshold.
    async fn is_online(&self, ctx: &Context<'_>) -> bool {
        let threshold = service::stale_after(ctx.state());
        self.last_heartbeat
            .is_some_and(|t| t > Utc::now() - threshold)
    }
    async fn max_pods(&self) -> i32 {
        self.max_pods
    }
    async fn current_pods(&self) -> i32 {
        self.current_pods
    }
    /// In cores.
    async fn allocated_cpu(&self) -> f64 {
        self.allocated_cpu_milli as f64 / 1000.0
    }
    async fn allocated_cpu_milli(&self) -> i32 {
        self.allocated_cpu_milli
    }
    async fn allocated_memory_mb(&self) -> i64 {
        self.allocated_memory_mb
    }
    async fn allocated_storage_mb(&self) -> i64 {
        self.allocated_storage_mb
    }
    /// Percent of the node's cpu allocated.
    async fn cpu_utilisation(&self) -> f64 {
        ratio(
            self.allocated_cpu_milli as i64,
            self.cpu_cores as i64 * 1000,
        )
    }
    async fn memory_utilisation(&self) -> f64 {
        ratio(self.allocated_memory_mb, self.memory_mb)
    }
    async fn storage_utilisation(&self) -> f64 {
        ratio(self.allocated_storage_mb, self.storage_mb)
    }
    async fn labels(&self) -> Json<&serde_json::Value> {
        Json(&self.labels)
    }
    async fn taints(&self) -> Json<&serde_json::Value> {
        Json(&self.taints)
    }
    async fn kubelet_version(&self) -> Option<&str> {
        self.kubelet_version.as_deref()
    }
    async fn container_runtime(&self) -> Option<&str> {
        self.container_runtime.as_deref()
    }
    async fn kernel_version(&self) -> Option<&str> {
        self.kernel_version.as_deref()
    }
    async fn os_image(&self) -> Option<&str> {
        self.os_image.as_deref()
    }
    async fn last_heartbeat(&self) -> Option<DateTime<Utc>> {
        self.last_heartbeat
    }
    async fn last_health_check(&self) -> Option<DateTime<Utc>> {
        self.last_health_check
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.updated_at
    }
}

#[derive(SimpleObject)]
pub struct WorkerNodeWithToken {
    pub node: WorkerNode,
    /// Shown once: give it to the node agent (`podium node-agent --token`). Stored hashed.
    pub node_token: String,
}

#[derive(SimpleObject)]
pub struct NodeStatusCount {
    pub status: NodeStatus,
    pub count: i64,
}

#[derive(SimpleObject)]
pub struct WorkerNodeStats {
    pub total: i64,
    pub by_status: Vec<NodeStatusCount>,
    pub online: i64,
    pub offline: i64,
    pub cpu_cores: i64,
    /// Allocated cpu in cores.
    pub allocated_cpu: f64,
    pub memory_mb: i64,
    pub allocated_memory_mb: i64,
    pub storage_mb: i64,
    pub allocated_storage_mb: i64,
    pub current_pods: i64,
    pub max_pods: i64,
    /// Percentages of capacity in use.
    pub cpu_utilisation: f64,
    pub memory_utilisation: f64,
    pub storage_utilisation: f64,
    pub pod_utilisation: f64,
}

#[derive(SimpleObject)]
pub struct HeartbeatAck {
    pub node_id: ID,
    pub status: NodeStatus,
    pub server_time: DateTime<Utc>,
    pub next_heartbeat_in_seconds: i32,
}

#[derive(SimpleObject)]
pub struct WorkerNodeStatusChange {
    pub node: Option<WorkerNode>,
    pub node_id: ID,
    pub previous_status: NodeStatus,
    pub status: NodeStatus,
    pub at: DateTime<Utc>,
}

#[derive(InputObject)]
pub struct RegisterWorkerNodeInput {
    pub name: String,
    pub hostname: String,
    pub ip_address: String,
    pub cpu_cores: i32,
    pub cpu_model: Option<String>,
    pub memory_mb: i64,
    pub storage_mb: i64,
    /// Default `amd64`.
    pub architecture: Option<String>,
    /// Default `linux`.
    pub operating_system: Option<String>,
    pub region: Option<String>,
    /// Default 110.
    pub max_pods: Option<i32>,
    pub labels: Option<Json<serde_json::Value>>,
    pub taints: Option<Json<serde_json::Value>>,
}

#[derive(InputObject)]
pub struct UpdateWorkerNodeInput {
    pub name: Option<String>,
    pub hostname: Option<String>,
    pub ip_address: Option<String>,
    pub cpu_cores: Option<i32>,
    pub cpu_model: Option<String>,
    pub memory_mb: Option<i64>,
    pub storage_mb: Option<i64>,
    pub architecture: Option<String>,
    pub operating_system: Option<String>,
    pub region: Option<String>,
    pub max_pods: Option<i32>,
    pub labels: Option<Json<serde_json::Value>>,
    pub taints: Option<Json<serde_json::Value>>,
}

/// What a node agent reports; every field is optional (omitted ones keep their values).
#[derive(InputObject, Default)]
pub struct NodeHeartbeatInput {
    pub is_ready: Option<bool>,
    /// In cores, e.g. 1.5.
    pub allocated_cpu: Option<f64>,
    pub allocated_memory_mb: Option<i64>,
    pub allocated_storage_mb: Option<i64>,
    pub current_pods: Option<i32>,
    pub kubelet_version: Option<String>,
    pub container_runtime: Option<String>,
    pub kernel_version: Option<String>,
    pub os_image: Option<String>,
    pub labels: Option<Json<serde_json::Value>>,
    pub taints: Option<Json<serde_json::Value>>,
}

impl NodeHeartbeatInput {
    fn into_report(self) -> Result<Report, crate::error::AppError> {
        let mut checks = crate::catalog::service::Checks::default();
        if let Some(cpu) = self.allocated_cpu {
            checks.check(
                cpu.is_finite() && (0.0..=1_000_000.0).contains(&cpu),
                "allocatedCpu",
                "must be a number of cores, not negative",
            );
        }
        for (field, v) in [
            ("allocatedMemoryMb", self.allocated_memory_mb),
            ("allocatedStorageMb", self.allocated_storage_mb),
        ] {
            checks.check(v.is_none_or(|v| v >= 0), field, "must not be negative");
        }
        checks.check(
            self.current_pods.is_none_or(|v| v >= 0),
            "currentPods",
            "must not be negative",
        );
        checks.check(
            self.labels.as_ref().is_none_or(|l| l.0.is_object()),
            "labels",
            "must be an object",
        );
        checks.check(
            self.taints.as_ref().is_none_or(|t| t.0.is_array()),
            "taints",
            "must be a list",
        );
        checks.finish()?;
        Ok(Report {
            at: Utc::now(),
            is_ready: self.is_ready,
            allocated_cpu_milli: self.allocated_cpu.map(|c| (c * 1000.0).round() as i32),
            allocated_memory_mb: self.allocated_memory_mb,
            allocated_storage_mb: self.allocated_storage_mb,
            current_pods: self.current_pods,
            kubelet_version: self.kubelet_version,
            container_runtime: self.container_runtime,
            kernel_version: self.kernel_version,
            os_image: self.os_image,
            labels: self.labels.map(|j| j.0),
            taints: self.taints.map(|j| j.0),
        })
    }
}

#[derive(Default)]
pub struct NodesQuery;

#[Object]
impl NodesQuery {
    /// Administrators: worker nodes, newest first. `online`: heard from within the
    /// staleness threshold. `search` matches name, hostname or IP.
    #[allow(clippy::too_many_arguments)]
    #[graphql(complexity = "crate::pagination::page_cost(first, child_complexity)")]
    async fn worker_nodes(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<NodeStatus>,
        is_schedulable: Option<bool>,
        online: Option<bool>,
        search: Option<String>,
    ) -> Result<PodiumConnection<WorkerNode>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let filter = NodeFilter {
            status,
            is_schedulable,
            online,
            search,
            ..Default::default()
        };
        let page = service::list(ctx.state(), ctx.identity(), filter, page).await?;
        Ok(connection(page, WorkerNode::cursor, |n| n))
    }

    /// Administrators.
    async fn worker_node(&self, ctx: &Context<'_>, id: ID) -> Result<WorkerNode> {
        let id = parse_id("id", &id)?;
        Ok(service::get(ctx.state(), ctx.identity(), id).await?)
    }

    /// Administrators: capacity and use across all nodes.
    async fn worker_node_stats(&self, ctx: &Context<'_>) -> Result<WorkerNodeStats> {
        let s = service::stats(ctx.state(), ctx.identity()).await?;
        let t = s.totals;
        Ok(WorkerNodeStats {
            total: t.total,
            by_status: s
                .by_status
                .into_iter()
                .map(|(status, count)| NodeStatusCount {
                    status: status.parse().expect("known status"),
                    count,
                })
                .collect(),
            online: t.online,
            offline: t.total - t.online,
            cpu_cores: t.cpu_cores,
            allocated_cpu: t.allocated_cpu_milli as f64 / 1000.0,
            memory_mb: t.memory_mb,
            allocated_memory_mb: t.allocated_memory_mb,
            storage_mb: t.storage_mb,
            allocated_storage_mb: t.allocated_storage_mb,
            current_pods: t.current_pods,
            max_pods: t.max_pods,
            cpu_utilisation: ratio(t.allocated_cpu_milli, t.cpu_cores * 1000),
            memory_utilisation: ratio(t.allocated_memory_mb, t.memory_mb),
            storage_utilisation: ratio(t.allocated_storage_mb, t.storage_mb),
            pod_utilisation: ratio(t.current_pods, t.max_pods),
        })
    }
}

fn changes_from_register(i: RegisterWorkerNodeInput) -> NodeChanges {
    NodeChanges {
        name: Some(i.name),
        hostname: Some(i.hostname),
        ip_address: Some(i.ip_address),
        cpu_cores: Some(i.cpu_cores),
        cpu_model: Some(i.cpu_model),
        memory_mb: Some(i.memory_mb),
        storage_mb: Some(i.storage_mb),
        architecture: Some(i.architecture.unwrap_or_else(|| "amd64".into())),
        operating_system: Some(i.operating_system.unwrap_or_else(|| "linux".into())),
        region: Some(i.region),
        max_pods: Some(i.max_pods.unwrap_or(110)),
        labels: Some(i.labels.map_or_else(|| serde_json::json!({}), |j| j.0)),
        taints: Some(i.taints.map_or_else(|| serde_json::json!([]), |j| j.0)),
        is_schedulable: None,
    }
}

#[derive(Default)]
pub struct NodesMutation;

#[Object]
impl NodesMutation {
    /// Administrators: registers a node (PENDING until its agent reports ready).
    async fn register_worker_node(
        &self,
        ctx: &Context<'_>,
        input: RegisterWorkerNodeInput,
    ) -> Result<WorkerNodeWithToken> {
        let input = NodeInput {
            changes: changes_from_register(input),
        };
        let (node, node_token) = service::register(ctx.state(), ctx.identity(), input).await?;
        Ok(WorkerNodeWithToken { node, node_token })
    }

    /// Administrators.
    async fn update_worker_node(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateWorkerNodeInput,
    ) -> Result<WorkerNode> {
        let id = parse_id("id", &id)?;
        let changes = NodeChanges {
            name: input.name,
            hostname: input.hostname,
            ip_address: input.ip_address,
            cpu_cores: input.cpu_cores,
            cpu_model: input.cpu_model.map(Some),
            memory_mb: input.memory_mb,
            storage_mb: input.storage_mb,
            architecture: input.architecture,
            operating_system: input.operating_system,
            region: input.region.map(Some),
            max_pods: input.max_pods,
            labels: input.labels.map(|j| j.0),
            taints: input.taints.map(|j| j.0),
            is_schedulable: None,
        };
        Ok(service::update(ctx.state(), ctx.identity(), id, NodeInput { changes }).await?)
    }

    /// Administrators: cordon (`false`) or uncordon (`true`).
    async fn set_worker_node_schedulable(
        &self,
        ctx: &Context<'_>,
        id: ID,
        schedulable: bool,
    ) -> Result<WorkerNode> {
        let id = parse_id("id", &id)?;
        Ok(service::set_schedulable(ctx.state(), ctx.identity(), id, schedulable).await?)
    }

    /// Administrators: cordons the node and moves its instances to other nodes (their
    /// status warns that data on node-local volumes does not move).
    async fn drain_worker_node(&self, ctx: &Context<'_>, id: ID) -> Result<WorkerNode> {
        let id = parse_id("id", &id)?;
        Ok(service::drain(ctx.state(), ctx.identity(), id).await?)
    }

    /// Administrators: e.g. MAINTENANCE (kept until an administrator changes it).
    async fn set_worker_node_status(
        &self,
        ctx: &Context<'_>,
        id: ID,
        status: NodeStatus,
    ) -> Result<WorkerNode> {
        let id = parse_id("id", &id)?;
        Ok(service::set_status(ctx.state(), ctx.identity(), id, status).await?)
    }

    /// Administrators: a new token (shown once); the old one stops working.
    async fn rotate_worker_node_token(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<WorkerNodeWithToken> {
        let id = parse_id("id", &id)?;
        let (node, node_token) = service::rotate_token(ctx.state(), ctx.identity(), id).await?;
        Ok(WorkerNodeWithToken { node, node_token })
    }

    /// Administrators.
    async fn delete_worker_node(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let id = parse_id("id", &id)?;
        service::delete(ctx.state(), ctx.identity(), id).await?;
        Ok(true)
    }

    /// Node agents (node token only): report the node's state.
    async fn node_heartbeat(
        &self,
        ctx: &Context<'_>,
        input: Option<NodeHeartbeatInput>,
    ) -> Result<HeartbeatAck> {
        let state = ctx.state();
        let report = input.unwrap_or_default().into_report()?;
        let ack = state
            .heartbeats
            .accept(&state.pool, ctx.identity(), report)
            .await?;
        Ok(HeartbeatAck {
            node_id: ID(ack.node_id.to_string()),
            status: ack.status,
            server_time: ack.server_time,
            next_heartbeat_in_seconds: state.settings.heartbeat_interval.as_secs() as i32,
        })
    }
}

#[derive(Default)]
pub struct NodesSubscription;

#[Subscription]
impl NodesSubscription {
    /// Administrators: every worker-node status change, as it commits (on any replica).
    async fn worker_node_status_changed(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = WorkerNodeStatusChange>> {
        let actor = ctx.identity().admin()?.clone();
        let state = ctx.state().clone();
        let events = state.events.subscribe();
        Ok(futures_util::stream::unfold(
            (events, state, actor),
            |(mut events, state, actor)| async move {
                loop {
                    let message = match events.recv().await {
                        Ok(message) => message,
                        Err(RecvError::Lagged(missed)) => {
                            tracing::warn!(missed, "a slow subscriber missed events");
                            continue;
                        }
                        Err(RecvError::Closed) => return None,
                    };
                    let Some(service::StatusChanged {
                        node_id,
                        previous_status,
                        status,
                        at,
                    }) = message.decode(service::STATUS_TOPIC)
                    else {
                        continue;
                    };
                    // Whoever was demoted, deactivated or signed out since subscribing hears no more.
                    let node = match service::node_for_subscriber(&state, &actor, node_id).await {
                        Ok(node) => node,
                        Err(_) => return None,
                    };
                    let change = WorkerNodeStatusChange {
                        node,
                        node_id: ID(node_id.to_string()),
                        previous_status,
                        status,
                        at,
                    };
                    return Some((change, (events, state, actor)));
                }
            },
        ))
    }
}

/// The names (and regions) of the nodes instances are placed on: what an instance's owner
/// may know of its node (the instance was judged visible before asking).
pub type NodeNameLoader =
    async_graphql::dataloader::DataLoader<NodeNames, crate::graphql::loader_cache::EpochCache>;

pub struct NodeNames {
    pub state: AppState,
}

impl async_graphql::dataloader::Loader<Uuid> for NodeNames {
    type Value = (String, Option<String>);
    type Error = async_graphql::Error;
    async fn load(
        &self,
        keys: &[Uuid],
    ) -> async_graphql::Result<std::collections::HashMap<Uuid, Self::Value>> {
        Ok(service::names(&self.state, keys).await?)
    }
}
