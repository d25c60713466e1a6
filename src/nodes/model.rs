//! The `worker_nodes` table and its queries.

use chrono::{DateTime, Utc};
use diesel::deserialize::FromSqlRow;
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Int4, Int8, Jsonb, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::Conn;
use crate::db::schema::worker_nodes;
use crate::pagination::{Cursor, PageArgs};

#[derive(
    async_graphql::Enum,
    AsExpression,
    FromSqlRow,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeStatus {
    Active,
    Inactive,
    Maintenance,
    Pending,
    NotReady,
}

crate::text_enum!(NodeStatus {
    Active => "ACTIVE",
    Inactive => "INACTIVE",
    Maintenance => "MAINTENANCE",
    Pending => "PENDING",
    NotReady => "NOT_READY",
});

#[derive(Queryable, Selectable, Identifiable, Clone, Debug)]
#[diesel(table_name = worker_nodes, check_for_backend(Pg))]
pub struct WorkerNode {
    pub id: Uuid,
    pub name: String,
    pub hostname: String,
    pub ip_address: String,
    pub cpu_cores: i32,
    pub cpu_model: Option<String>,
    pub memory_mb: i64,
    pub storage_mb: i64,
    pub architecture: String,
    pub operating_system: String,
    pub region: Option<String>,
    pub status: NodeStatus,
    pub is_ready: bool,
    pub is_schedulable: bool,
    pub max_pods: i32,
    pub current_pods: i32,
    pub allocated_cpu_milli: i32,
    pub allocated_memory_mb: i64,
    pub allocated_storage_mb: i64,
    pub labels: serde_json::Value,
    pub taints: serde_json::Value,
    pub kubelet_version: Option<String>,
    pub container_runtime: Option<String>,
    pub kernel_version: Option<String>,
    pub os_image: Option<String>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    pub last_health_check: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl WorkerNode {
    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.created_at, self.id)
    }
}

/// Columns an administrator sets (registration and updates).
#[derive(Insertable, AsChangeset, Default, Debug, Clone)]
#[diesel(table_name = worker_nodes)]
pub struct NodeChanges {
    pub name: Option<String>,
    pub hostname: Option<String>,
    pub ip_address: Option<String>,
    pub cpu_cores: Option<i32>,
    pub cpu_model: Option<Option<String>>,
    pub memory_mb: Option<i64>,
    pub storage_mb: Option<i64>,
    pub architecture: Option<String>,
    pub operating_system: Option<String>,
    pub region: Option<Option<String>>,
    pub max_pods: Option<i32>,
    pub labels: Option<serde_json::Value>,
    pub taints: Option<serde_json::Value>,
    pub is_schedulable: Option<bool>,
}

#[derive(Debug, Default, Clone)]
pub struct NodeFilter {
    pub status: Option<NodeStatus>,
    pub is_schedulable: Option<bool>,
    /// Heard from within `stale_after`.
    pub online: Option<bool>,
    pub stale_after: chrono::Duration,
    pub search: Option<String>,
}

fn filtered(filter: &NodeFilter) -> worker_nodes::BoxedQuery<'static, Pg> {
    let mut query = worker_nodes::table.into_boxed();
    if let Some(status) = filter.status {
        query = query.filter(worker_nodes::status.eq(status));
    }
    if let Some(s) = filter.is_schedulable {
        query = query.filter(worker_nodes::is_schedulable.eq(s));
    }
    if let Some(online) = filter.online {
        let since = Utc::now() - filter.stale_after;
        query = if online {
            query.filter(worker_nodes::last_heartbeat.gt(since))
        } else {
            query.filter(
                worker_nodes::last_heartbeat
                    .le(since)
                    .or(worker_nodes::last_heartbeat.is_null()),
            )
        };
    }
    if let Some(search) = filter
        .search
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let pattern = format!("%{}%", crate::users::model::escape_like(search));
        query = query.filter(
            worker_nodes::name
                .ilike(pattern.clone())
                .or(worker_nodes::hostname.ilike(pattern.clone()))
                .or(worker_nodes::ip_address.ilike(pattern)),
        );
    }
    query
}

pub async fn list(
    conn: &mut Conn,
    filter: &NodeFilter,
    page: &PageArgs,
) -> QueryResult<Vec<WorkerNode>> {
    crate::newest_first_page!(filtered(filter), worker_nodes, page)
        .select(WorkerNode::as_select())
        .load(conn)
        .await
}

pub async fn count(conn: &mut Conn, filter: &NodeFilter) -> QueryResult<i64> {
    filtered(filter).count().get_result(conn).await
}

pub async fn find(conn: &mut Conn, id: Uuid) -> QueryResult<Option<WorkerNode>> {
    worker_nodes::table
        .find(id)
        .select(WorkerNode::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn all(conn: &mut Conn) -> QueryResult<Vec<WorkerNode>> {
    worker_nodes::table
        .order(worker_nodes::name)
        .select(WorkerNode::as_select())
        .load(conn)
        .await
}

pub async fn find_many(conn: &mut Conn, ids: &[Uuid]) -> QueryResult<Vec<WorkerNode>> {
    worker_nodes::table
        .filter(worker_nodes::id.eq_any(ids))
        .select(WorkerNode::as_select())
        .load(conn)
        .await
}

/// (id, status) of the node holding this token.
pub async fn find_by_token(
    conn: &mut Conn,
    token_hash: &[u8],
) -> QueryResult<Option<(Uuid, NodeStatus)>> {
    worker_nodes::table
        .filter(worker_nodes::token_hash.eq(token_hash))
        .select((worker_nodes::id, worker_nodes::status))
        .first(conn)
        .await
        .optional()
}

/// (token hash, id, status) of every node, for the heartbeat path's token map.
pub async fn all_tokens(conn: &mut Conn) -> QueryResult<Vec<(Vec<u8>, Uuid, NodeStatus)>> {
    worker_nodes::table
        .select((
            worker_nodes::token_hash,
            worker_nodes::id,
            worker_nodes::status,
        ))
        .load(conn)
        .await
}

pub async fn insert(
    conn: &mut Conn,
    changes: &NodeChanges,
    token_hash: &[u8],
) -> QueryResult<WorkerNode> {
    diesel::insert_into(worker_nodes::table)
        .values((changes, worker_nodes::token_hash.eq(token_hash)))
        .returning(WorkerNode::as_returning())
        .get_result(conn)
        .await
}

/// Inserts unless the name is taken (seeding); returns whether a row was written.
pub async fn insert_if_absent(
    conn: &mut Conn,
    changes: &NodeChanges,
    token_hash: &[u8],
) -> QueryResult<bool> {
    let n = diesel::insert_into(worker_nodes::table)
        .values((changes, worker_nodes::token_hash.eq(token_hash)))
        .on_conflict(worker_nodes::name)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

pub async fn update(
    conn: &mut Conn,
    id: Uuid,
    changes: &NodeChanges,
) -> QueryResult<Option<WorkerNode>> {
    diesel::update(worker_nodes::table.find(id))
        .set((changes, worker_nodes::updated_at.eq(diesel::dsl::now)))
        .returning(WorkerNode::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Updates a node found by name; returns its id.
pub async fn update_by_name(
    conn: &mut Conn,
    name: &str,
    changes: &NodeChanges,
) -> QueryResult<Option<Uuid>> {
    diesel::update(worker_nodes::table.filter(worker_nodes::name.eq(name)))
        .set((changes, worker_nodes::updated_at.eq(diesel::dsl::now)))
        .returning(worker_nodes::id)
        .get_result(conn)
        .await
        .optional()
}

pub async fn set_token(conn: &mut Conn, id: Uuid, token_hash: &[u8]) -> QueryResult<usize> {
    diesel::update(worker_nodes::table.find(id))
        .set((
            worker_nodes::token_hash.eq(token_hash),
            worker_nodes::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
}

pub async fn delete(conn: &mut Conn, id: Uuid) -> QueryResult<usize> {
    diesel::delete(worker_nodes::table.find(id))
        .execute(conn)
        .await
}

#[derive(QueryableByName, Debug)]
pub struct StatusChange {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub previous_status: NodeStatus,
    #[diesel(sql_type = Text)]
    pub status: NodeStatus,
}

/// Sets a node's status (readiness follows: only ACTIVE is ready... unless `ready` says);
/// returns the change when there was one.
pub async fn set_status(
    conn: &mut Conn,
    id: Uuid,
    status: NodeStatus,
) -> QueryResult<Option<StatusChange>> {
    diesel::sql_query(
        "UPDATE worker_nodes w SET status = $2, updated_at = now()
         FROM worker_nodes old WHERE w.id = $1 AND old.id = w.id
         RETURNING w.id, old.status AS previous_status, w.status",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<Text, _>(status)
    .get_result(conn)
    .await
    .optional()
}

/// Nodes silent for longer than `stale_after` become INACTIVE and not ready
/// (MAINTENANCE and PENDING nodes are left alone). Rows another replica holds are skipped.
pub async fn mark_stale(conn: &mut Conn, stale_after_secs: i64) -> QueryResult<Vec<StatusChange>> {
    diesel::sql_query(
        "WITH stale AS (
             SELECT id, status FROM worker_nodes
             WHERE status IN ('ACTIVE', 'NOT_READY')
               AND last_heartbeat < now() - make_interval(secs => $1)
             FOR UPDATE SKIP LOCKED)
         UPDATE worker_nodes w SET status = 'INACTIVE', is_ready = FALSE, updated_at = now()
         FROM stale WHERE w.id = stale.id
         RETURNING w.id, stale.status AS previous_status, w.status",
    )
    .bind::<BigInt, _>(stale_after_secs)
    .load(conn)
    .await
}

/// The latest report of one node, as the heartbeat path coalesces it.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub at: DateTime<Utc>,
    pub is_ready: Option<bool>,
    pub allocated_cpu_milli: Option<i32>,
    pub allocated_memory_mb: Option<i64>,
    pub allocated_storage_mb: Option<i64>,
    pub current_pods: Option<i32>,
    pub kubelet_version: Option<String>,
    pub container_runtime: Option<String>,
    pub kernel_version: Option<String>,
    pub os_image: Option<String>,
    pub labels: Option<serde_json::Value>,
    pub taints: Option<serde_json::Value>,
}

/// Writes many nodes' reports in one statement. Status follows readiness: a ready report
/// brings PENDING, INACTIVE and NOT_READY to ACTIVE, a not-ready one takes ACTIVE to
/// NOT_READY; MAINTENANCE is the administrator's and stays. Returns only the status
/// changes (the batch may hold thousands of rows).
pub async fn apply_reports(
    conn: &mut Conn,
    reports: &[(Uuid, Report)],
) -> QueryResult<Vec<StatusChange>> {
    fn col<T>(reports: &[(Uuid, Report)], f: impl Fn(&Report) -> T) -> Vec<T> {
        reports.iter().map(|(_, r)| f(r)).collect()
    }
    let ids: Vec<Uuid> = reports.iter().map(|(id, _)| *id).collect();
    let at: Vec<DateTime<Utc>> = col(reports, |r| r.at);
    let ready: Vec<Option<bool>> = col(reports, |r| r.is_ready);
    let cpu: Vec<Option<i32>> = col(reports, |r| r.allocated_cpu_milli);
    let memory: Vec<Option<i64>> = col(reports, |r| r.allocated_memory_mb);
    let storage: Vec<Option<i64>> = col(reports, |r| r.allocated_storage_mb);
    let pods: Vec<Option<i32>> = col(reports, |r| r.current_pods);
    let kubelet: Vec<Option<String>> = col(reports, |r| r.kubelet_version.clone());
    let runtime: Vec<Option<String>> = col(reports, |r| r.container_runtime.clone());
    let kernel: Vec<Option<String>> = col(reports, |r| r.kernel_version.clone());
    let os_image: Vec<Option<String>> = col(reports, |r| r.os_image.clone());
    let labels: Vec<Option<serde_json::Value>> = col(reports, |r| r.labels.clone());
    let taints: Vec<Option<serde_json::Value>> = col(reports, |r| r.taints.clone());
    // The rows are locked first, in id order: overlapping flushes (from several replicas)
    // then wait for each other instead of deadlocking, and the previous status is the one
    // committed last, not the statement's snapshot, so no transition is lost or doubled.
    diesel::sql_query(
        "WITH v AS (
             SELECT * FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 AS v(id, at, ready, cpu, memory, storage, pods, kubelet, runtime, kernel, os_image, labels, taints)),
         old AS (
             SELECT w.id, w.status FROM worker_nodes w JOIN v ON v.id = w.id
             ORDER BY w.id FOR UPDATE OF w),
         updated AS (UPDATE worker_nodes w SET
             last_heartbeat = GREATEST(v.at, w.last_heartbeat),
             last_health_check = now(),
             is_ready = COALESCE(v.ready, w.is_ready),
             allocated_cpu_milli = COALESCE(v.cpu, w.allocated_cpu_milli),
             allocated_memory_mb = COALESCE(v.memory, w.allocated_memory_mb),
             allocated_storage_mb = COALESCE(v.storage, w.allocated_storage_mb),
             current_pods = COALESCE(v.pods, w.current_pods),
             kubelet_version = COALESCE(v.kubelet, w.kubelet_version),
             container_runtime = COALESCE(v.runtime, w.container_runtime),
             kernel_version = COALESCE(v.kernel, w.kernel_version),
             os_image = COALESCE(v.os_image, w.os_image),
             labels = COALESCE(v.labels, w.labels),
             taints = COALESCE(v.taints, w.taints),
             status = CASE
                 WHEN v.ready AND w.status IN ('PENDING', 'INACTIVE', 'NOT_READY') THEN 'ACTIVE'
                 WHEN v.ready = FALSE AND w.status = 'ACTIVE' THEN 'NOT_READY'
                 ELSE w.status END,
             updated_at = now()
         FROM v JOIN old ON old.id = v.id
         WHERE w.id = v.id
         RETURNING w.id, old.status AS previous_status, w.status)
         SELECT * FROM updated WHERE previous_status <> status",
    )
    .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
    .bind::<Array<Timestamptz>, _>(at)
    .bind::<Array<Nullable<Bool>>, _>(ready)
    .bind::<Array<Nullable<Int4>>, _>(cpu)
    .bind::<Array<Nullable<Int8>>, _>(memory)
    .bind::<Array<Nullable<Int8>>, _>(storage)
    .bind::<Array<Nullable<Int4>>, _>(pods)
    .bind::<Array<Nullable<Text>>, _>(kubelet)
    .bind::<Array<Nullable<Text>>, _>(runtime)
    .bind::<Array<Nullable<Text>>, _>(kernel)
    .bind::<Array<Nullable<Text>>, _>(os_image)
    .bind::<Array<Nullable<Jsonb>>, _>(labels)
    .bind::<Array<Nullable<Jsonb>>, _>(taints)
    .load(conn)
    .await
}

#[derive(QueryableByName, Debug, Clone)]
pub struct NodeTotals {
    #[diesel(sql_type = BigInt)]
    pub total: i64,
    #[diesel(sql_type = BigInt)]
    pub online: i64,
    #[diesel(sql_type = BigInt)]
    pub cpu_cores: i64,
    #[diesel(sql_type = BigInt)]
    pub allocated_cpu_milli: i64,
    #[diesel(sql_type = BigInt)]
    pub memory_mb: i64,
    #[diesel(sql_type = BigInt)]
    pub allocated_memory_mb: i64,
    #[diesel(sql_type = BigInt)]
    pub storage_mb: i64,
    #[diesel(sql_type = BigInt)]
    pub allocated_storage_mb: i64,
    #[diesel(sql_type = BigInt)]
    pub current_pods: i64,
    #[diesel(sql_type = BigInt)]
    pub max_pods: i64,
}

pub async fn totals(conn: &mut Conn, stale_after_secs: i64) -> QueryResult<NodeTotals> {
    diesel::sql_query(
        "SELECT count(*) AS total,
                count(*) FILTER (WHERE last_heartbeat > now() - make_interval(secs => $1)) AS online,
                COALESCE(sum(cpu_cores), 0)::int8 AS cpu_cores,
                COALESCE(sum(allocated_cpu_milli), 0)::int8 AS allocated_cpu_milli,
                COALESCE(sum(memory_mb), 0)::int8 AS memory_mb,
                COALESCE(sum(allocated_memory_mb), 0)::int8 AS allocated_memory_mb,
                COALESCE(sum(storage_mb), 0)::int8 AS storage_mb,
                COALESCE(sum(allocated_storage_mb), 0)::int8 AS allocated_storage_mb,
                COALESCE(sum(current_pods), 0)::int8 AS current_pods,
                COALESCE(sum(max_pods), 0)::int8 AS max_pods
         FROM worker_nodes",
    )
    .bind::<BigInt, _>(stale_after_secs)
    .get_result(conn)
    .await
}

pub async fn count_by_status(conn: &mut Conn) -> QueryResult<Vec<(NodeStatus, i64)>> {
    worker_nodes::table
        .group_by(worker_nodes::status)
        .select((worker_nodes::status, diesel::dsl::count_star()))
        .load(conn)
        .await
}
