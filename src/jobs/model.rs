//! The `jobs` and `schedules` tables.

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::deserialize::FromSqlRow;
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Integer, Text, Timestamptz};
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
    pub lease_expires_at: Option<DateTime<Utc>>,
}

impl Job {
    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.created_at, self.id)
    }
}

/// Tries a job gets unless its kind asks for more.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 5;

/// Enqueues a job; with a `unique_key` already used, nothing happens. Returns whether it was new.
pub async fn enqueue(
    conn: &mut Conn,
    kind: &str,
    payload: serde_json::Value,
    run_at: DateTime<Utc>,
    unique_key: Option<&str>,
) -> QueryResult<bool> {
    enqueue_tries(
        conn,
        kind,
        payload,
        run_at,
        unique_key,
        DEFAULT_MAX_ATTEMPTS,
    )
    .await
}

/// [`enqueue`] with its own number of tries.
pub async fn enqueue_tries(
    conn: &mut Conn,
    kind: &str,
    payload: serde_json::Value,
    run_at: DateTime<Utc>,
    unique_key: Option<&str>,
    max_attempts: i32,
) -> QueryResult<bool> {
    let n = diesel::insert_into(jobs::table)
        .values((
            jobs::kind.eq(kind),
            jobs::payload.eq(payload),
            jobs::run_at.eq(run_at),
            jobs::unique_key.eq(unique_key),
            jobs::max_attempts.eq(max_attempts),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Jobs of one kind, each with its payload and unique key, in one statement (those whose
/// key was used before are skipped); returns how many were queued.
pub async fn enqueue_many(
    conn: &mut Conn,
    kind: &str,
    items: &[(serde_json::Value, String)],
    run_at: DateTime<Utc>,
    max_attempts: i32,
) -> QueryResult<usize> {
    if items.is_empty() {
        return Ok(0);
    }
    let rows: Vec<_> = items
        .iter()
        .map(|(payload, key)| {
            (
                jobs::kind.eq(kind),
                jobs::payload.eq(payload),
                jobs::run_at.eq(run_at),
                jobs::unique_key.eq(Some(key.as_str())),
                jobs::max_attempts.eq(max_attempts),
            )
        })
        .collect();
    diesel::insert_into(jobs::table)
        .values(rows)
        .on_conflict_do_nothing()
        .execute(conn)
        .await
}

/// Claims the next due job for `worker`, holding it for `lease` (renewed with [`renew`]).
pub async fn claim(conn: &mut Conn, worker: &str, lease: Duration) -> QueryResult<Option<Job>> {
    diesel::sql_query(
        "UPDATE jobs SET status = 'RUNNING', attempts = attempts + 1, locked_by = $1, locked_at = now(),
                lease_expires_at = now() + make_interval(secs => $2)
         WHERE id = (SELECT id FROM jobs WHERE status = 'QUEUED' AND run_at <= now()
                     ORDER BY run_at LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING *",
    )
    .bind::<Text, _>(worker)
    .bind::<Double, _>(lease.as_secs_f64())
    .get_result(conn)
    .await
    .optional()
}

/// Extends `worker`'s lease on a running job; false when it no longer holds it.
pub async fn renew(conn: &mut Conn, id: Uuid, worker: &str, lease: Duration) -> QueryResult<bool> {
    let n = diesel::sql_query(
        "UPDATE jobs SET lease_expires_at = now() + make_interval(secs => $3)
         WHERE id = $1 AND locked_by = $2 AND status = 'RUNNING'",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<Text, _>(worker)
    .bind::<Double, _>(lease.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// The lease holder's running job, and only that: whoever lost the lease touches nothing.
macro_rules! held_by {
    ($id:expr, $worker:expr) => {
        jobs::table
            .filter(jobs::id.eq($id))
            .filter(jobs::locked_by.eq($worker))
            .filter(jobs::status.eq(JobStatus::Running))
    };
}

/// Marks `worker`'s job done; false (and nothing written) when it no longer holds the lease.
pub async fn succeed(conn: &mut Conn, id: Uuid, worker: &str) -> QueryResult<bool> {
    let n = diesel::update(held_by!(id, worker))
        .set((
            jobs::status.eq(JobStatus::Succeeded),
            jobs::finished_at.eq(diesel::dsl::now),
            jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
        ))
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// Records a failure of `worker`'s attempt: retried at `retry_at`, or FAILED for good when
/// attempts are spent. False (and nothing written) when it no longer holds the lease.
pub async fn fail(
    conn: &mut Conn,
    job: &Job,
    worker: &str,
    error: &str,
    retry_at: Option<DateTime<Utc>>,
) -> QueryResult<bool> {
    let error: String = error.chars().take(2000).collect();
    let n = match retry_at {
        Some(at) if job.attempts < job.max_attempts => {
            diesel::update(held_by!(job.id, worker))
                .set((
                    jobs::status.eq(JobStatus::Queued),
                    jobs::run_at.eq(at),
                    jobs::last_error.eq(error),
                    jobs::locked_by.eq(None::<String>),
                    jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
                ))
                .execute(conn)
                .await?
        }
        _ => {
            diesel::update(held_by!(job.id, worker))
                .set((
                    jobs::status.eq(JobStatus::Failed),
                    jobs::finished_at.eq(diesel::dsl::now),
                    jobs::last_error.eq(error),
                    jobs::lease_expires_at.eq(None::<DateTime<Utc>>),
                ))
                .execute(conn)
                .await?
        }
    };
    Ok(n == 1)
}

#[derive(QueryableByName, Debug)]
pub struct Expired {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Text)]
    pub status: JobStatus,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    pub payload: serde_json::Value,
}

/// Jobs whose lease ran out (their worker died or hangs) go back to the queue, or fail for
/// good when that was their last attempt: the lost attempt counts.
pub async fn requeue_expired(conn: &mut Conn) -> QueryResult<Vec<Expired>> {
    diesel::sql_query(
        "UPDATE jobs SET
             status = CASE WHEN attempts >= max_attempts THEN 'FAILED' ELSE 'QUEUED' END,
             finished_at = CASE WHEN attempts >= max_attempts THEN now() END,
             run_at = now(),
             last_error = 'lease expired: worker ' || coalesce(locked_by, '?')
                          || ' stopped renewing it (killed or stuck)',
             locked_by = CASE WHEN attempts >= max_attempts THEN locked_by END,
             lease_expires_at = NULL
         WHERE id IN (SELECT id FROM jobs WHERE status = 'RUNNING' AND lease_expires_at < now()
                      ORDER BY lease_expires_at LIMIT 100 FOR UPDATE SKIP LOCKED)
         RETURNING id, kind, status, attempts, payload",
    )
    .load(conn)
    .await
}

/// Deletes jobs that finished (succeeded or failed for good) before `before`, `batch` rows
/// per statement so that no statement holds many locks for long. Returns how many went.
pub async fn prune_finished(
    conn: &mut Conn,
    before: DateTime<Utc>,
    batch: i64,
) -> QueryResult<usize> {
    let mut total = 0;
    loop {
        let n = diesel::sql_query(
            "DELETE FROM jobs WHERE id IN (
                 SELECT id FROM jobs WHERE status IN ('SUCCEEDED', 'FAILED') AND finished_at < $1
                 LIMIT $2)",
        )
        .bind::<Timestamptz, _>(before)
        .bind::<BigInt, _>(batch)
        .execute(conn)
        .await?;
        total += n;
        if (n as i64) < batch {
            return Ok(total);
        }
    }
}

/// `diagnostic.sleep`'s visible trace: one more run got to its end.
pub async fn count_completion(conn: &mut Conn, id: Uuid) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE jobs SET payload = jsonb_set(payload, '{completions}',
             to_jsonb(coalesce((payload->>'completions')::int, 0) + 1))
         WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .execute(conn)
    .await
    .map(drop)
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

/// One page, newest first: served from the index matching the filter (`jobs_created_at_idx`,
/// `jobs_status_created_at_idx`, `jobs_kind_created_at_idx` or `jobs_kind_status_created_at_idx`),
/// starting at the cursor, so a page costs the same on page one and page ten thousand.
pub fn list_query(filter: &JobFilter, page: &PageArgs) -> jobs::BoxedQuery<'static, Pg> {
    crate::newest_first_page!(filtered(filter), jobs, page)
}

pub async fn list(conn: &mut Conn, filter: &JobFilter, page: &PageArgs) -> QueryResult<Vec<Job>> {
    list_query(filter, page)
        .select(Job::as_select())
        .load(conn)
        .await
}

/// Up to this many jobs are counted exactly; beyond, `count` gives the planner's estimate.
pub const EXACT_COUNT_LIMIT: i64 = 10_000;

#[derive(QueryableByName)]
struct Counted {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Plan {
    #[diesel(sql_type = diesel::sql_types::Json, column_name = "QUERY PLAN")]
    plan: serde_json::Value,
}

/// The filter's SQL condition (` WHERE ...` or nothing) with its parameters.
fn conditions(filter: &JobFilter) -> (String, Vec<String>) {
    let mut terms = Vec::new();
    let mut binds = Vec::new();
    if let Some(status) = filter.status {
        binds.push(status.as_str().to_string());
        terms.push(format!("status = ${}", binds.len()));
    }
    if let Some(kind) = &filter.kind {
        binds.push(kind.clone());
        terms.push(format!("kind = ${}", binds.len()));
    }
    let sql = if terms.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", terms.join(" AND "))
    };
    (sql, binds)
}

fn bound(
    sql: String,
    binds: &[String],
) -> diesel::query_builder::BoxedSqlQuery<'static, Pg, diesel::query_builder::SqlQuery> {
    binds
        .iter()
        .fold(diesel::sql_query(sql).into_boxed(), |q, b| {
            q.bind::<Text, _>(b.clone())
        })
}

/// The number of jobs matching `filter`, cheap at any table size: exact up to
/// [`EXACT_COUNT_LIMIT`] (an index scan that stops there), the planner's estimate beyond.
pub async fn count(conn: &mut Conn, filter: &JobFilter) -> QueryResult<i64> {
    let (condition, binds) = conditions(filter);
    let exact = bound(
        format!(
            "SELECT count(*) AS n FROM (SELECT 1 FROM jobs{condition} LIMIT {}) capped",
            EXACT_COUNT_LIMIT + 1
        ),
        &binds,
    )
    .get_result::<Counted>(conn)
    .await?
    .n;
    if exact <= EXACT_COUNT_LIMIT {
        return Ok(exact);
    }
    let plan = bound(
        format!("EXPLAIN (FORMAT JSON) SELECT 1 FROM jobs{condition}"),
        &binds,
    )
    .get_result::<Plan>(conn)
    .await?
    .plan;
    let estimate = plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(0.0) as i64;
    Ok(estimate.max(exact))
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
