//! Writing and reading the audit trail.

use diesel_async::AsyncConnection;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use uuid::Uuid;

use super::model::{self, AuditEntry, AuditFilter, NewAuditEntry};
use crate::auth::{Actor, Identity};
use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::pagination::{Page, PageArgs, Total};
use crate::state::AppState;

/// What an audited change returns: its result, its target's id, and what to record of it.
pub type Change<T> = AppResult<(T, Option<Uuid>, serde_json::Value)>;

/// Runs an administrator's change and writes its audit row, in one transaction; the
/// change is logged once it has committed.
pub async fn audited<T, F>(
    state: &AppState,
    actor: &Actor,
    action: &str,
    target_type: &str,
    change: F,
) -> AppResult<T>
where
    T: Send,
    F: for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Change<T>> + Send,
{
    let mut conn = state.pool.get().await?;
    let (value, target) = conn
        .transaction(async |conn| {
            let (value, target, metadata) = change(conn).await?;
            record(conn, actor.user_id, action, target_type, target, metadata).await?;
            Ok::<_, AppError>((value, target))
        })
        .await?;
    tracing::info!(actor_id = %actor.user_id, action, target_type, target_id = ?target, "audit");
    Ok(value)
}

/// Writes one audit row, with the actor's email as it is now; call it inside the
/// transaction of the change it records.
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
        actor_email: model::actor_email(conn, actor_id).await?,
        action,
        target_type,
        target_id: target_id.into().map(|id| id.to_string()),
        metadata,
    };
    model::insert(conn, &entry).await?;
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
    let total = Total::deferred(&state.pool, filter, |conn, filter| {
        model::count(conn, filter).boxed()
    });
    Ok(Page::from_rows(rows, &page, total))
}
