//! The audit log for administrators.

use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, ID, Json, Object, Result};
use chrono::{DateTime, Utc};

use super::model::{AuditEntry, AuditFilter};
use super::service;
use crate::graphql::{ContextExt, PodiumConnection, connection, parse_id};
use crate::pagination::PageArgs;
use crate::users::graphql::UserLoader;
use crate::users::model::User;

#[Object(name = "AuditLogEntry")]
impl AuditEntry {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    /// Who did it; null once that user is deleted.
    async fn actor(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let Some(actor_id) = self.actor_id else {
            return Ok(None);
        };
        ctx.data_unchecked::<DataLoader<UserLoader>>()
            .load_one(actor_id)
            .await
    }
    /// Kept after the actor is deleted.
    async fn actor_id(&self) -> Option<ID> {
        self.actor_id.map(|id| ID(id.to_string()))
    }
    /// The actor's email when they acted; kept after the actor is deleted.
    async fn actor_email(&self) -> Option<&str> {
        self.actor_email.as_deref()
    }
    /// e.g. `user.create`, `user.update`, `user.delete`, `user.bulk_update`.
    async fn action(&self) -> &str {
        &self.action
    }
    async fn target_type(&self) -> &str {
        &self.target_type
    }
    async fn target_id(&self) -> Option<&str> {
        self.target_id.as_deref()
    }
    async fn metadata(&self) -> Json<&serde_json::Value> {
        Json(&self.metadata)
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
}

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// Administrators: the audit trail, newest first.
    #[graphql(complexity = "crate::pagination::page_cost(first, child_complexity)")]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        actor_id: Option<ID>,
        action: Option<String>,
    ) -> Result<PodiumConnection<AuditEntry>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let filter = AuditFilter {
            actor_id: actor_id
                .as_ref()
                .map(|id| parse_id("actorId", id))
                .transpose()?,
            action,
        };
        let page = service::list(ctx.state(), ctx.identity(), filter, page).await?;
        Ok(connection(page, AuditEntry::cursor, |e| e))
    }
}
