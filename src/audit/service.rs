//! Writing and reading the audit trail.

use uuid::Uuid;

use super::model::{self, AuditEntry, AuditFilter, NewAuditEntry};
use crate::auth::Identity;
use crate::db::Conn;
use crate::error::AppResult;
use crate::pagination::{Page, PageArgs};
use crate::state::AppState;

/// Writes one audit row; call it inside the transaction of the change it records.
pub async fn record(
    conn: &mut Conn,
    actor_id: Uuid,
    action: &str,
    target_type: &str,
    target_id: impl Into<Option<Uuid>>,
    metadata: serde_json::Value,
) -> AppResult<()> {
    let entry = NewAuditEntry {
        actor_id: Some(actor_id),
        action,
        target_type,
        target_id: target_id.into().map(|id| id.to_string()),
        metadata,
    };
    model::insert(conn, &entry).await?;
    tracing::info!(%actor_id, action, target_type, target_id = ?entry.target_id, "audit");
    Ok(())
}

pub async fn list(
    state: &AppState,
    identity: &Identity,
    filter: AuditFilter,
    page: PageArgs,
) -> AppResult<Page<AuditEntry>> {
    identity.admin()?;
    let mut conn = state.pool.get().await?;
    let rows = model::list(&mut conn, &filter, &page).await?;
    let total = model::count(&mut conn, &filter).await?;
    Ok(Page::from_rows(rows, &page, total))
}
