//! The `audit_log` table.

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::db::Conn;
use crate::db::schema::{audit_log, users};
use crate::pagination::{Cursor, PageArgs};

#[derive(Queryable, Selectable, Debug, Clone)]
#[diesel(table_name = audit_log, check_for_backend(Pg))]
pub struct AuditEntry {
    pub id: Uuid,
    pub actor_id: Option<Uuid>,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    /// The actor's email when the row was written.
    pub actor_email: Option<String>,
}

impl AuditEntry {
    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.created_at, self.id)
    }
}

#[derive(Insertable, Debug)]
#[diesel(table_name = audit_log)]
pub struct NewAuditEntry<'a> {
    pub actor_id: Option<Uuid>,
    pub actor_email: Option<String>,
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: Option<String>,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    pub actor_id: Option<Uuid>,
    pub action: Option<String>,
}

fn filtered(filter: &AuditFilter) -> audit_log::BoxedQuery<'static, Pg> {
    let mut query = audit_log::table.into_boxed();
    if let Some(actor) = filter.actor_id {
        query = query.filter(audit_log::actor_id.eq(actor));
    }
    if let Some(action) = filter.action.clone() {
        query = query.filter(audit_log::action.eq(action));
    }
    query
}

/// The email of the user acting now, to be kept with the row.
pub async fn actor_email(conn: &mut Conn, actor_id: Uuid) -> QueryResult<Option<String>> {
    users::table
        .find(actor_id)
        .select(users::email)
        .first(conn)
        .await
        .optional()
}

pub async fn insert(conn: &mut Conn, entry: &NewAuditEntry<'_>) -> QueryResult<()> {
    diesel::insert_into(audit_log::table)
        .values(entry)
        .execute(conn)
        .await
        .map(drop)
}

pub async fn list(
    conn: &mut Conn,
    filter: &AuditFilter,
    page: &PageArgs,
) -> QueryResult<Vec<AuditEntry>> {
    crate::newest_first_page!(filtered(filter), audit_log, page)
        .select(AuditEntry::as_select())
        .load(conn)
        .await
}

pub async fn count(conn: &mut Conn, filter: &AuditFilter) -> QueryResult<i64> {
    filtered(filter).count().get_result(conn).await
}
