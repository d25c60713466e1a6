//! Billing's live events and who may receive them. Events carry ids; a subscriber reads
//! the rows through the service (as it may see them now). They go through the event
//! outbox (`events::enqueue`): renewals write thousands per second, which NOTIFY per
//! transaction could not carry.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::Conn;

/// A wallet moved: its owner sees the new balance and the movement.
pub const WALLET_TOPIC: &str = "billing.wallet";

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct WalletEvent {
    pub user_id: Uuid,
    pub transaction_id: Uuid,
}

/// Queues an event for delivery after the surrounding transaction commits.
pub async fn emit(
    conn: &mut Conn,
    topic: &str,
    payload: &impl Serialize,
) -> diesel::QueryResult<()> {
    crate::events::enqueue(conn, topic, payload).await
}
