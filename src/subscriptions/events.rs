//! Subscription events and who may receive them.

use serde::{Deserialize, Serialize};

use super::model::Subscription;
use crate::auth::Identity;
use crate::db::Conn;

/// A subscription changed: its owner and administrators hear about it.
pub const TOPIC: &str = "subscriptions.changed";

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionChanged {
    pub subscription: Subscription,
}

impl SubscriptionChanged {
    pub fn visible_to(&self, identity: &Identity) -> bool {
        identity
            .actor()
            .is_ok_and(|a| a.is_admin() || a.user_id == self.subscription.user_id)
    }
}

/// Queues the event of a changed subscription (delivered once the transaction commits).
pub async fn changed(conn: &mut Conn, subscription: &Subscription) -> diesel::QueryResult<()> {
    crate::events::publish(
        conn,
        TOPIC,
        &SubscriptionChanged {
            subscription: subscription.clone(),
        },
    )
    .await
}
