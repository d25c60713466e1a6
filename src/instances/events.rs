//! Instance status events, through the event outbox (provisioning writes many). Each
//! carries the transition; subscribers read the instance itself through the service, as
//! they may see it now.

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
        },
    )
    .await
}
