//! The `service_instances` table and its queries.

use chrono::{DateTime, Utc};
use diesel::deserialize::FromSqlRow;
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::Conn;
use crate::db::schema::service_instances;

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
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DesiredState {
    Running,
    Stopped,
    Deleted,
}

crate::text_enum!(DesiredState {
    Running => "RUNNING",
    Stopped => "STOPPED",
    Deleted => "DELETED",
});

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
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceStatus {
    Pending,
    Provisioning,
    Running,
    Stopping,
    Stopped,
    Restarting,
    Failed,
    Terminating,
    Terminated,
}

crate::text_enum!(InstanceStatus {
    Pending => "PENDING",
    Provisioning => "PROVISIONING",
    Running => "RUNNING",
    Stopping => "STOPPING",
    Stopped => "STOPPED",
    Restarting => "RESTARTING",
    Failed => "FAILED",
    Terminating => "TERMINATING",
    Terminated => "TERMINATED",
});

#[derive(Queryable, Selectable, Clone, Debug, Serialize, Deserialize)]
#[diesel(table_name = service_instances, check_for_backend(Pg))]
#[serde(rename_all = "camelCase")]
pub struct ServiceInstance {
    pub id: Uuid,
    pub subscription_id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub subdomain: String,
    pub node_id: Option<Uuid>,
    pub namespace: Option<String>,
    pub desired_state: DesiredState,
    pub status: InstanceStatus,
    pub status_message: Option<String>,
    pub public_url: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The last restart asked for: the pod template carries it, so re-applying keeps it.
    pub restarted_at: Option<DateTime<Utc>>,
    pub placed_at: Option<DateTime<Utc>>,
    /// Bumped by every change of what it should be; see `set_status`.
    pub generation: i64,
    /// Sealed (see `provisioner::credentials`); never in events or logs.
    #[serde(skip)]
    pub credentials: Option<Vec<u8>>,
}

#[derive(Insertable, Debug)]
#[diesel(table_name = service_instances)]
pub struct NewInstance<'a> {
    pub subscription_id: Uuid,
    pub user_id: Uuid,
    pub name: &'a str,
    pub subdomain: &'a str,
    pub namespace: Option<&'a str>,
    pub desired_state: DesiredState,
    pub status_message: Option<&'a str>,
    pub public_url: Option<&'a str>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn insert(conn: &mut Conn, row: &NewInstance<'_>) -> QueryResult<ServiceInstance> {
    diesel::insert_into(service_instances::table)
        .values(row)
        .returning(ServiceInstance::as_returning())
        .get_result(conn)
        .await
}

pub async fn of_subscriptions(
    conn: &mut Conn,
    subscription_ids: &[Uuid],
) -> QueryResult<Vec<ServiceInstance>> {
    service_instances::table
        .filter(service_instances::subscription_id.eq_any(subscription_ids))
        .select(ServiceInstance::as_select())
        .load(conn)
        .await
}

pub async fn subdomain_taken(conn: &mut Conn, subdomain: &str) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        service_instances::table.filter(service_instances::subdomain.eq(subdomain)),
    ))
    .get_result(conn)
    .await
}

/// Sets the desired state of the subscription's instance; returns it if it changed.
pub async fn set_desired_state(
    conn: &mut Conn,
    subscription_id: Uuid,
    desired: DesiredState,
    now: DateTime<Utc>,
) -> QueryResult<Option<ServiceInstance>> {
    diesel::update(
        service_instances::table
            .filter(service_instances::subscription_id.eq(subscription_id))
            .filter(service_instances::desired_state.ne(desired)),
    )
    .set((
        service_instances::desired_state.eq(desired),
        service_instances::generation.eq(service_instances::generation + 1),
        service_instances::updated_at.eq(now),
    ))
    .returning(ServiceInstance::as_returning())
    .get_result(conn)
    .await
    .optional()
}

pub async fn find(conn: &mut Conn, id: Uuid) -> QueryResult<Option<ServiceInstance>> {
    service_instances::table
        .find(id)
        .select(ServiceInstance::as_select())
        .get_result(conn)
        .await
        .optional()
}

pub async fn lock(conn: &mut Conn, id: Uuid) -> QueryResult<Option<ServiceInstance>> {
    service_instances::table
        .find(id)
        .select(ServiceInstance::as_select())
        .for_update()
        .get_result(conn)
        .await
        .optional()
}

/// A page of one user's instances (all users' when `user_id` is `None`), newest first.
pub async fn list(
    conn: &mut Conn,
    user_id: Option<Uuid>,
    page: &crate::pagination::PageArgs,
) -> QueryResult<Vec<ServiceInstance>> {
    let mut q = service_instances::table
        .select(ServiceInstance::as_select())
        .into_boxed();
    if let Some(user_id) = user_id {
        q = q.filter(service_instances::user_id.eq(user_id));
    }
    let q = crate::newest_first_page!(q, service_instances, page);
    q.load(conn).await
}

pub async fn count(conn: &mut Conn, user_id: Option<Uuid>) -> QueryResult<i64> {
    let mut q = service_instances::table.count().into_boxed();
    if let Some(user_id) = user_id {
        q = q.filter(service_instances::user_id.eq(user_id));
    }
    q.get_result(conn).await
}

impl ServiceInstance {
    pub fn cursor(&self) -> crate::pagination::Cursor {
        crate::pagination::Cursor::new(self.created_at, self.id)
    }
}

/// Writes a status observed under `generation`, if the instance is still at it (a newer
/// desire, restart or placement has its own pass coming, and an observation from before it
/// would be stale). Returns the row before and after.
pub async fn set_status(
    conn: &mut Conn,
    id: Uuid,
    generation: i64,
    status: InstanceStatus,
    message: &str,
    now: DateTime<Utc>,
) -> QueryResult<Option<(InstanceStatus, ServiceInstance)>> {
    let Some(before) = lock(conn, id).await? else {
        return Ok(None);
    };
    // TERMINATED is final: nothing observed later (a late pod event) reopens it.
    if before.status == InstanceStatus::Terminated
        || before.generation != generation
        || (before.status == status && before.status_message.as_deref() == Some(message))
    {
        return Ok(None);
    }
    let after = diesel::update(service_instances::table.find(id))
        .set((
            service_instances::status.eq(status),
            service_instances::status_message.eq(message),
            service_instances::updated_at.eq(now),
        ))
        .returning(ServiceInstance::as_returning())
        .get_result(conn)
        .await?;
    Ok(Some((before.status, after)))
}

/// The owner's operations: a new desired state (and, for a restart, the time asked).
pub async fn set_desired(
    conn: &mut Conn,
    id: Uuid,
    desired: DesiredState,
    restarted_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> QueryResult<ServiceInstance> {
    diesel::update(service_instances::table.find(id))
        .set((
            service_instances::desired_state.eq(desired),
            service_instances::generation.eq(service_instances::generation + 1),
            service_instances::restarted_at.eq(diesel::dsl::sql::<
                diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>,
            >("COALESCE(")
            .bind::<diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>, _>(restarted_at)
            .sql(", restarted_at)")),
            service_instances::updated_at.eq(now),
        ))
        .returning(ServiceInstance::as_returning())
        .get_result(conn)
        .await
}

/// The subscription status an instance's operations depend on.
pub async fn subscription_status(conn: &mut Conn, subscription_id: Uuid) -> QueryResult<String> {
    use crate::db::schema::service_subscriptions as subs;
    subs::table
        .find(subscription_id)
        .select(subs::status)
        .get_result(conn)
        .await
}

/// The name of the service a subscription is to (for its owner's messages).
pub async fn service_name(conn: &mut Conn, subscription_id: Uuid) -> QueryResult<String> {
    use crate::db::schema::{service_plans, service_subscriptions as subs, services};
    subs::table
        .inner_join(service_plans::table.inner_join(services::table))
        .filter(subs::id.eq(subscription_id))
        .select(services::name)
        .get_result(conn)
        .await
}

/// Everything the provisioner needs about one instance: the instance, its plan's
/// resources, its service's image and template, and the node it is placed on.
#[derive(QueryableByName, Clone, Debug)]
pub struct Workload {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub subscription_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub user_id: Uuid,
    #[diesel(sql_type = Text)]
    pub namespace: String,
    #[diesel(sql_type = Text)]
    pub subdomain: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    pub public_url: Option<String>,
    #[diesel(sql_type = Text)]
    pub desired_state: DesiredState,
    #[diesel(sql_type = Text)]
    pub status: InstanceStatus,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    pub restarted_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub generation: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Bytea>)]
    pub credentials: Option<Vec<u8>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    pub node_id: Option<Uuid>,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    pub node_name: Option<String>,
    #[diesel(sql_type = Text)]
    pub service_slug: String,
    #[diesel(sql_type = Text)]
    pub image: String,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    pub container_port: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    pub volume_mount_path: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    pub env_template: serde_json::Value,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    pub cpu_milli: i32,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    pub memory_mb: i32,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    pub storage_gb: i32,
}

pub async fn workload(conn: &mut Conn, id: Uuid) -> QueryResult<Option<Workload>> {
    diesel::sql_query(
        "SELECT i.id, i.subscription_id, i.user_id, COALESCE(i.namespace, '') AS namespace,
                i.subdomain, i.public_url, i.desired_state, i.status, i.restarted_at, i.generation, i.credentials,
                i.node_id, n.name AS node_name, sv.slug AS service_slug,
                sv.docker_image AS image, sv.container_port, sv.volume_mount_path,
                sv.env_template, p.cpu_milli, p.memory_mb, p.storage_gb
         FROM service_instances i
         JOIN service_subscriptions s ON s.id = i.subscription_id
         JOIN service_plans p ON p.id = s.plan_id
         JOIN services sv ON sv.id = p.service_id
         LEFT JOIN worker_nodes n ON n.id = i.node_id
         WHERE i.id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .get_result(conn)
    .await
    .optional()
}

/// A page of the instances whose cluster state may differ from what is desired (for the
/// resync): not yet TERMINATED, by id after `after`.
pub async fn unsettled(
    conn: &mut Conn,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<ServiceInstance>> {
    let mut q = service_instances::table
        .filter(service_instances::status.ne(InstanceStatus::Terminated))
        .select(ServiceInstance::as_select())
        .order(service_instances::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        q = q.filter(service_instances::id.gt(after));
    }
    q.load(conn).await
}

/// Instances waiting for a node.
pub async fn unplaced(conn: &mut Conn) -> QueryResult<Vec<Uuid>> {
    service_instances::table
        .filter(service_instances::node_id.is_null())
        .filter(service_instances::desired_state.ne(DesiredState::Deleted))
        .select(service_instances::id)
        .load(conn)
        .await
}

/// Takes the instances off a node (drain): they are placed again elsewhere.
pub async fn unplace_from(
    conn: &mut Conn,
    node_id: Uuid,
    message: &str,
    now: DateTime<Utc>,
) -> QueryResult<Vec<(InstanceStatus, ServiceInstance)>> {
    let before: Vec<ServiceInstance> = service_instances::table
        .filter(service_instances::node_id.eq(node_id))
        .filter(service_instances::status.ne(InstanceStatus::Terminated))
        .select(ServiceInstance::as_select())
        .for_update()
        .load(conn)
        .await?;
    let mut moved = Vec::with_capacity(before.len());
    for b in before {
        let after = diesel::update(service_instances::table.find(b.id))
            .set((
                service_instances::node_id.eq(None::<Uuid>),
                service_instances::generation.eq(service_instances::generation + 1),
                service_instances::status.eq(InstanceStatus::Pending),
                service_instances::status_message.eq(message),
                service_instances::updated_at.eq(now),
            ))
            .returning(ServiceInstance::as_returning())
            .get_result(conn)
            .await?;
        moved.push((b.status, after));
    }
    Ok(moved)
}

/// Keeps the instance's sealed credentials.
pub async fn store_credentials(conn: &mut Conn, id: Uuid, sealed: &[u8]) -> QueryResult<usize> {
    diesel::update(service_instances::table.find(id))
        .set(service_instances::credentials.eq(sealed))
        .execute(conn)
        .await
}

pub async fn bump_generation(conn: &mut Conn, id: Uuid) -> QueryResult<usize> {
    diesel::update(service_instances::table.find(id))
        .set(service_instances::generation.eq(service_instances::generation + 1))
        .execute(conn)
        .await
}
