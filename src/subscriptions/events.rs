//! Subscription events: ids only; subscribers read the subscription through the service,
//! as they may see it now. Through the event outbox (renewals write thousands a second).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::Subscription;
use crate::db::Conn;

/// A subscription changed: its owner and administrators hear about it.
pub const TOPIC: &str = "subscriptions.changed";

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionChanged {
    pub subscription_id: Uuid,
    pub user_id: Uuid,
}

/// Queues the event of a changed subscription (delivered once the transaction commits).
pub async fn changed(conn: &mut Conn, subscription: &Subscription) -> diesel::QueryResult<()> {
    crate::events::enqueue(
        conn,
        TOPIC,
        &SubscriptionChanged {
            subscription_id: subscription.id,
            user_id: subscription.user_id,
        },
    )
    .await
}
