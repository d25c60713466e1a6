//! The `email_outbox` table.

use chrono::{DateTime, Utc};
use diesel::deserialize::FromSqlRow;
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::templates::EmailTemplate;
use crate::db::Conn;
use crate::db::schema::email_outbox;
use crate::pagination::{Cursor, PageArgs};

#[derive(async_graphql::Enum, AsExpression, FromSqlRow, Clone, Copy, Debug, PartialEq, Eq)]
#[diesel(sql_type = Text)]
pub enum EmailStatus {
    /// Waiting for its next try.
    Queued,
    /// Accepted by the mail server (or written to a file).
    Sent,
    /// Refused by the mail server, or out of tries: `retryEmail` queues it again.
    Failed,
}

crate::text_enum!(EmailStatus {
    Queued => "QUEUED",
    Sent => "SENT",
    Failed => "FAILED",
});

#[derive(Queryable, Selectable, Clone, Debug)]
#[diesel(table_name = email_outbox, check_for_backend(Pg))]
pub struct Email {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub recipient: String,
    pub template: EmailTemplate,
    pub subject: String,
    pub params: serde_json::Value,
    pub secret: Option<Vec<u8>>,
    pub status: EmailStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub unique_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
}

impl Email {
    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.created_at, self.id)
    }
}

#[derive(Insertable)]
#[diesel(table_name = email_outbox)]
pub struct NewEmail<'a> {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub recipient: &'a str,
    pub template: EmailTemplate,
    pub subject: &'a str,
    pub params: &'a serde_json::Value,
    pub secret: Option<Vec<u8>>,
    pub unique_key: Option<&'a str>,
}

/// Inserts the message; false (and nothing written) when its unique key was used before.
pub async fn insert(conn: &mut Conn, email: &NewEmail<'_>) -> QueryResult<bool> {
    let n = diesel::insert_into(email_outbox::table)
        .values(email)
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Inserts messages in one statement; returns the ids of those whose unique key was free.
pub async fn insert_many(conn: &mut Conn, emails: &[NewEmail<'_>]) -> QueryResult<Vec<Uuid>> {
    diesel::insert_into(email_outbox::table)
        .values(emails)
        .on_conflict_do_nothing()
        .returning(email_outbox::id)
        .get_results(conn)
        .await
}

pub async fn find(conn: &mut Conn, id: Uuid) -> QueryResult<Option<Email>> {
    email_outbox::table
        .find(id)
        .select(Email::as_select())
        .first(conn)
        .await
        .optional()
}

/// SENT, and the one-time token it carried erased.
pub async fn mark_sent(conn: &mut Conn, id: Uuid) -> QueryResult<()> {
    diesel::update(email_outbox::table.find(id))
        .set((
            email_outbox::status.eq(EmailStatus::Sent),
            email_outbox::sent_at.eq(diesel::dsl::now),
            email_outbox::last_attempt_at.eq(diesel::dsl::now),
            email_outbox::attempts.eq(email_outbox::attempts + 1),
            email_outbox::secret.eq(None::<Vec<u8>>),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Records a failed try: still QUEUED for the next one, or FAILED when `give_up`.
pub async fn record_failure(
    conn: &mut Conn,
    id: Uuid,
    error: &str,
    give_up: bool,
) -> QueryResult<()> {
    let error: String = error.chars().take(2000).collect();
    let status = if give_up {
        EmailStatus::Failed
    } else {
        EmailStatus::Queued
    };
    diesel::update(email_outbox::table.find(id))
        .filter(email_outbox::status.ne(EmailStatus::Sent))
        .set((
            email_outbox::status.eq(status),
            email_outbox::last_error.eq(error),
            email_outbox::last_attempt_at.eq(diesel::dsl::now),
            email_outbox::attempts.eq(email_outbox::attempts + 1),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// A QUEUED message is given up: FAILED with `why` (nothing else changes: a message already
/// SENT or FAILED stays as it is).
pub async fn abandon(conn: &mut Conn, id: Uuid, why: &str) -> QueryResult<()> {
    diesel::update(email_outbox::table.find(id))
        .filter(email_outbox::status.eq(EmailStatus::Queued))
        .set((
            email_outbox::status.eq(EmailStatus::Failed),
            email_outbox::last_error.eq(why),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// QUEUED messages that no `email.send` job will ever send (a crash between a job's end and
/// the message's): FAILED, where administrators see them. Returns how many.
pub async fn fail_orphans(conn: &mut Conn) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE email_outbox o SET status = 'FAILED',
             last_error = 'no job was left to send it (a worker stopped at the wrong moment)'
         WHERE o.status = 'QUEUED' AND NOT EXISTS (
             SELECT 1 FROM jobs j WHERE j.kind = 'email.send' AND j.status IN ('QUEUED', 'RUNNING')
               AND j.payload->>'emailId' = o.id::text)",
    )
    .execute(conn)
    .await
}

/// Sealed one-time links older than `before` (dead by now) are erased from unsent messages.
pub async fn erase_dead_links(conn: &mut Conn, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::update(
        email_outbox::table
            .filter(email_outbox::secret.is_not_null())
            .filter(email_outbox::created_at.lt(before)),
    )
    .set(email_outbox::secret.eq(None::<Vec<u8>>))
    .execute(conn)
    .await
}

/// A FAILED message back to QUEUED; `None` unless it was FAILED.
pub async fn requeue_failed(conn: &mut Conn, id: Uuid) -> QueryResult<Option<Email>> {
    diesel::update(email_outbox::table.find(id))
        .filter(email_outbox::status.eq(EmailStatus::Failed))
        .set(email_outbox::status.eq(EmailStatus::Queued))
        .returning(Email::as_returning())
        .get_result(conn)
        .await
        .optional()
}

fn filtered(status: Option<EmailStatus>) -> email_outbox::BoxedQuery<'static, Pg> {
    let mut query = email_outbox::table.into_boxed();
    if let Some(status) = status {
        query = query.filter(email_outbox::status.eq(status));
    }
    query
}

/// One page, newest first, from `email_outbox_created_at_idx` or `..._status_created_at_idx`.
pub async fn list(
    conn: &mut Conn,
    status: Option<EmailStatus>,
    page: &PageArgs,
) -> QueryResult<Vec<Email>> {
    crate::newest_first_page!(filtered(status), email_outbox, page)
        .select(Email::as_select())
        .load(conn)
        .await
}

pub async fn count(conn: &mut Conn, status: Option<EmailStatus>) -> QueryResult<i64> {
    filtered(status)
        .select(diesel::dsl::count_star())
        .first::<i64>(conn)
        .await
}

/// How many messages are QUEUED and how many FAILED (from the status index).
pub async fn unsent_counts(conn: &mut Conn) -> QueryResult<(i64, i64)> {
    let count = |status: EmailStatus| {
        email_outbox::table
            .filter(email_outbox::status.eq(status))
            .select(diesel::dsl::count_star())
    };
    let queued = count(EmailStatus::Queued).first(conn).await?;
    let failed = count(EmailStatus::Failed).first(conn).await?;
    Ok((queued, failed))
}

/// SENT messages older than `before` go (FAILED ones stay until someone looks).
pub async fn prune_sent(conn: &mut Conn, before: DateTime<Utc>) -> QueryResult<usize> {
    diesel::delete(
        email_outbox::table
            .filter(email_outbox::status.eq(EmailStatus::Sent))
            .filter(email_outbox::created_at.lt(before)),
    )
    .execute(conn)
    .await
}

/// Account mail (verification links, reset links, registration notices) that `recipient`
/// got in the last hour. Takes a transaction-scoped lock on the address first, so that
/// parallel requests count one after the other: call it inside the transaction that queues.
pub async fn account_mail_last_hour(conn: &mut Conn, recipient: &str) -> QueryResult<i64> {
    #[derive(QueryableByName)]
    struct Counted {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended('podium mail ' || $1, 0))")
        .bind::<Text, _>(recipient)
        .execute(conn)
        .await?;
    diesel::sql_query(
        "SELECT count(*) AS n FROM email_outbox
         WHERE recipient = $1 AND created_at > now() - interval '1 hour'
           AND template IN ('VERIFY_EMAIL', 'PASSWORD_RESET', 'REGISTRATION_ATTEMPT')",
    )
    .bind::<Text, _>(recipient)
    .get_result::<Counted>(conn)
    .await
    .map(|c| c.n)
}
