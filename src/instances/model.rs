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
        service_instances::updated_at.eq(now),
    ))
    .returning(ServiceInstance::as_returning())
    .get_result(conn)
    .await
    .optional()
}
