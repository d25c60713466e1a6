//! Billing's live events and who may receive them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::WalletTransaction;
use crate::auth::Identity;
use crate::db::Conn;

/// A wallet moved: its owner sees the new balance and the movement.
pub const WALLET_TOPIC: &str = "billing.wallet";

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct WalletEvent {
    pub user_id: Uuid,
    pub transaction: WalletTransaction,
}

impl WalletEvent {
    /// Only the wallet's owner hears about it.
    pub fn visible_to(&self, identity: &Identity) -> bool {
        identity.actor().is_ok_and(|a| a.user_id == self.user_id)
    }
}

/// Queues an event for delivery after the surrounding transaction commits.
pub async fn emit(
    conn: &mut Conn,
    topic: &str,
    payload: &impl Serialize,
) -> diesel::QueryResult<()> {
    crate::events::publish(conn, topic, payload).await
}
