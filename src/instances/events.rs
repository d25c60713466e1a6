//! Instance status events, through the event outbox (provisioning writes many). Each
//! carries the transition and the instance as it committed: one status change may go to
//! thousands of subscribers, who then need no query each (only their own identity, from
//! memory, is judged again).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::{InstanceStatus, ServiceInstance};
use crate::db::Conn;

pub const TOPIC: &str = "instances.status";

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatusChanged {
    pub instance_id: Uuid,
    pub user_id: Uuid,
    pub previous_status: InstanceStatus,
    pub status: InstanceStatus,
    pub message: Option<String>,
    pub at: DateTime<Utc>,
    pub instance: ServiceInstance,
}

/// Queues the event of a transition (delivered once the transaction commits).
pub async fn status_changed(
    conn: &mut Conn,
    previous: InstanceStatus,
    now: &ServiceInstance,
) -> diesel::QueryResult<()> {
    crate::events::enqueue(
        conn,
        TOPIC,
        &InstanceStatusChanged {
            instance_id: now.id,
            user_id: now.user_id,
            previous_status: previous,
            status: now.status,
            message: now.status_message.clone(),
            at: now.updated_at,
            instance: now.clone(),
        },
    )
    .await
}
