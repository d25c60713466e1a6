//! The `jobs` and `schedules` tables.

use chrono::{DateTime, Utc};
use diesel::deserialize::FromSqlRow;
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Text, Timestamptz};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::db::Conn;
use crate::db::schema::{jobs, schedules};
use crate::pagination::{Cursor, PageArgs};

#[derive(async_graphql::Enum, AsExpression, FromSqlRow, Clone, Copy, Debug, PartialEq, Eq)]
#[diesel(sql_type = Text)]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

crate::text_enum!(JobStatus {
    Queued => "QUEUED",
    Running => "RUNNING",
    Succeeded => "SUCCEEDED",
    Failed => "FAILED",
});

#[derive(Queryable, Selectable, QueryableByName, Clone, Debug)]
#[diesel(table_name = jobs, check_for_backend(Pg))]
pub struct Job {
    pub id: Uuid,
    pub kind: String,
    pub payload: serde_json::Value,
    pub status: JobStatus,
    pub run_at: DateTime<Utc>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub unique_key: Option<String>,
    pub locked_by: Option<String>,
    pub locked_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl Job {
    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.created_at, self.id)
    }
}

/// Enqueues a job; with a `unique_key` already used, nothing happens. Returns whether it was new.
pub async fn enqueue(
    conn: &mut Conn,
    kind: &str,
    payload: serde_json::Value,
    run_at: DateTime<Utc>,
    unique_key: Option<&str>,
) -> QueryResult<bool> {
    let n = diesel::insert_into(jobs::table)
        .values((
            jobs::kind.eq(kind),
            jobs::payload.eq(payload),
            jobs::run_at.eq(run_at),
            jobs::unique_key.eq(unique_key),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Claims the next due job for `worker`, or none.
pub async fn claim(conn: &mut Conn, worker: &str) -> QueryResult<Option<Job>> {
    diesel::sql_query(
        "UPDATE jobs SET status = 'RUNNING', attempts = attempts + 1, locked_by = $1, locked_at = now()
         WHERE id = (SELECT id FROM jobs WHERE status = 'QUEUED' AND run_at <= now()
                     ORDER BY run_at LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING *",
    )
    .bind::<Text, _>(worker)
    .get_result(conn)
    .await
    .optional()
}

pub async fn succeed(conn: &mut Conn, id: Uuid) -> QueryResult<()> {
    diesel::update(jobs::table.find(id))
        .set((
            jobs::status.eq(JobStatus::Succeeded),
            jobs::finished_at.eq(diesel::dsl::now),
            jobs::locked_by.eq(None::<String>),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Records a failure: retried at `retry_at`, or FAILED for good when attempts are spent.
pub async fn fail(
    conn: &mut Conn,
    job: &Job,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> QueryResult<()> {
    let error: String = error.chars().take(2000).collect();
    match retry_at {
        Some(at) if job.attempts < job.max_attempts => diesel::update(jobs::table.find(job.id))
            .set((
                jobs::status.eq(JobStatus::Queued),
                jobs::run_at.eq(at),
                jobs::last_error.eq(error),
                jobs::locked_by.eq(None::<String>),
            ))
            .execute(conn)
            .await
            .map(drop),
        _ => diesel::update(jobs::table.find(job.id))
            .set((
                jobs::status.eq(JobStatus::Failed),
                jobs::finished_at.eq(diesel::dsl::now),
                jobs::last_error.eq(error),
                jobs::locked_by.eq(None::<String>),
            ))
            .execute(conn)
            .await
            .map(drop),
    }
}

/// Jobs left RUNNING by a process that died go back to the queue.
pub async fn requeue_abandoned(conn: &mut Conn, older_than_secs: i64) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE jobs SET status = 'QUEUED', locked_by = NULL, last_error = 'abandoned by its worker'
         WHERE status = 'RUNNING' AND locked_at < now() - make_interval(secs => $1)",
    )
    .bind::<diesel::sql_types::BigInt, _>(older_than_secs)
    .execute(conn)
    .await
}

#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
}

fn filtered(filter: &JobFilter) -> jobs::BoxedQuery<'static, Pg> {
    let mut query = jobs::table.into_boxed();
    if let Some(status) = filter.status {
        query = query.filter(jobs::status.eq(status));
    }
    if let Some(kind) = filter.kind.clone() {
        query = query.filter(jobs::kind.eq(kind));
    }
    query
}

pub async fn list(conn: &mut Conn, filter: &JobFilter, page: &PageArgs) -> QueryResult<Vec<Job>> {
    crate::newest_first_page!(filtered(filter), jobs, page)
        .select(Job::as_select())
        .load(conn)
        .await
}

pub async fn count(conn: &mut Conn, filter: &JobFilter) -> QueryResult<i64> {
    filtered(filter).count().get_result(conn).await
}

/// Registers a schedule, keeping its next run unless the expression changed.
pub async fn upsert_schedule(
    conn: &mut Conn,
    name: &str,
    cron: &str,
    next_run_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO schedules (name, cron, next_run_at) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET cron = EXCLUDED.cron,
             next_run_at = CASE WHEN schedules.cron = EXCLUDED.cron THEN schedules.next_run_at
                                ELSE EXCLUDED.next_run_at END",
    )
    .bind::<Text, _>(name)
    .bind::<Text, _>(cron)
    .bind::<Timestamptz, _>(next_run_at)
    .execute(conn)
    .await
    .map(drop)
}

/// The due tick of a schedule, locked so that one replica takes it; none if not due or taken.
pub async fn due_tick(conn: &mut Conn, name: &str) -> QueryResult<Option<DateTime<Utc>>> {
    schedules::table
        .filter(schedules::name.eq(name))
        .filter(schedules::next_run_at.le(diesel::dsl::now))
        .select(schedules::next_run_at)
        .for_update()
        .skip_locked()
        .first(conn)
        .await
        .optional()
}

pub async fn advance_schedule(
    conn: &mut Conn,
    name: &str,
    next_run_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(schedules::table.find(name))
        .set((
            schedules::next_run_at.eq(next_run_at),
            schedules::last_run_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await
        .map(drop)
}
