//! The job queue: retries with backoff, final failure, cron ticks enqueued once, leases,
//! panics, pruning, and the admin list on a big table.

use std::time::{Duration, Instant};

use chrono::Utc;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use podium::jobs::{DIAGNOSTIC_SLEEP, JOBS_PRUNE, model, runner, scheduler};
use podium::pagination::{Cursor, PageArgs};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_job_is_retried_with_backoff_then_fails_for_good() {
    let app = spawn_app_with(&[("PODIUM_JOBS_ENABLED", "false")]).await;
    let mut conn = AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    assert!(
        model::enqueue(
            &mut conn,
            "no.such.kind",
            json!({}),
            Utc::now(),
            Some("once")
        )
        .await
        .unwrap()
    );
    assert!(
        !model::enqueue(
            &mut conn,
            "no.such.kind",
            json!({}),
            Utc::now(),
            Some("once")
        )
        .await
        .unwrap(),
        "a unique key enqueues once"
    );
    diesel::sql_query("UPDATE jobs SET max_attempts = 2")
        .execute(&mut conn)
        .await
        .unwrap();

    assert!(runner::run_one(&app.state, "test-worker").await.unwrap());
    let admin = app.admin().await;
    let q = "{ jobs { edges { node { status attempts lastError runAt } } } }";
    let r = app.gql(Some(&admin.access), q, json!({})).await.ok();
    let job = r.data("jobs.edges")[0]["node"].clone();
    assert_eq!(job["status"], "QUEUED", "retried: {job}");
    assert_eq!(job["attempts"], 1);
    assert!(job["lastError"].as_str().unwrap().contains("no handler"));
    let run_at: chrono::DateTime<Utc> = job["runAt"].as_str().unwrap().parse().unwrap();
    assert!(run_at > Utc::now(), "backed off into the future");
    assert!(
        !runner::run_one(&app.state, "test-worker").await.unwrap(),
        "not due yet"
    );

    diesel::sql_query("UPDATE jobs SET run_at = now()")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(runner::run_one(&app.state, "test-worker").await.unwrap());
    let r = app.gql(Some(&admin.access), q, json!({})).await.ok();
    assert_eq!(r.data("jobs.edges")[0]["node"]["status"], "FAILED");
    assert_eq!(r.data("jobs.edges")[0]["node"]["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_due_cron_tick_is_enqueued_once_by_concurrent_schedulers() {
    let app = spawn_app_with(&[("PODIUM_JOBS_ENABLED", "false")]).await;
    let mut conn = AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    let schedules = scheduler::schedules(&app.state);
    for s in &schedules {
        // Due since an hour ago: as after downtime.
        model::upsert_schedule(
            &mut conn,
            s.name,
            &s.cron,
            Utc::now() - chrono::Duration::hours(1),
        )
        .await
        .unwrap();
    }
    let (a, b, c) = tokio::join!(
        scheduler::tick(&app.state, &schedules),
        scheduler::tick(&app.state, &schedules),
        scheduler::tick(&app.state, &schedules),
    );
    let total = a.unwrap() + b.unwrap() + c.unwrap();
    assert_eq!(
        total,
        schedules.len(),
        "each missed schedule runs once, not once per replica or per missed tick"
    );
    assert_eq!(
        scheduler::tick(&app.state, &schedules).await.unwrap(),
        0,
        "the next tick is in the future"
    );
    while runner::run_one(&app.state, "test-worker").await.unwrap() {}
    let admin = app.admin().await;
    let r = app
        .gql(
            Some(&admin.access),
            "{ jobs(status: SUCCEEDED) { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(r.data("jobs.totalCount"), &json!(schedules.len()));
}

/// Inserts a job row directly (kind, status, ages in hours, max attempts); returns its id.
async fn insert_job(
    conn: &mut AsyncPgConnection,
    kind: &str,
    payload: serde_json::Value,
    status: &str,
    finished_hours_ago: Option<i64>,
    max_attempts: i32,
) -> Uuid {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
    }
    diesel::sql_query(
        "INSERT INTO jobs (kind, payload, status, finished_at, max_attempts, run_at)
         VALUES ($1, $2, $3, now() - make_interval(hours => $4), $5, clock_timestamp())
         RETURNING id",
    )
    .bind::<Text, _>(kind)
    .bind::<diesel::sql_types::Jsonb, _>(payload)
    .bind::<Text, _>(status)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Integer>, _>(
        finished_hours_ago.map(|h| h as i32),
    )
    .bind::<diesel::sql_types::Integer, _>(max_attempts)
    .get_result::<Id>(conn)
    .await
    .unwrap()
    .id
}

pub async fn job_row(conn: &mut AsyncPgConnection, id: Uuid) -> model::Job {
    use podium::db::schema::jobs;
    jobs::table
        .find(id)
        .select(model::Job::as_select())
        .first(conn)
        .await
        .unwrap()
}

async fn db(app: &TestApp) -> AsyncPgConnection {
    AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_lease_holder_completes_fails_or_renews_a_job() {
    let app = spawn_app_with(&[("PODIUM_JOBS_ENABLED", "false")]).await;
    let mut conn = db(&app).await;
    let lease = Duration::from_secs(30);
    let id = insert_job(&mut conn, "no.such.kind", json!({}), "QUEUED", None, 5).await;
    let job = model::claim(&mut conn, "worker-a", lease)
        .await
        .unwrap()
        .expect("a due job");
    assert_eq!(job.id, id);
    assert!(job.lease_expires_at.unwrap() > Utc::now() + chrono::Duration::seconds(20));

    assert!(!model::succeed(&mut conn, id, "worker-b").await.unwrap());
    assert!(
        !model::fail(&mut conn, &job, "worker-b", "not mine", None)
            .await
            .unwrap()
    );
    assert!(
        !model::renew(&mut conn, id, "worker-b", lease)
            .await
            .unwrap()
    );
    let row = job_row(&mut conn, id).await;
    assert_eq!(row.status, model::JobStatus::Running, "untouched by others");
    assert_eq!(row.locked_by.as_deref(), Some("worker-a"));
    assert_eq!(row.last_error, None);

    assert!(
        model::renew(&mut conn, id, "worker-a", lease)
            .await
            .unwrap()
    );
    assert!(model::succeed(&mut conn, id, "worker-a").await.unwrap());
    let row = job_row(&mut conn, id).await;
    assert_eq!(row.status, model::JobStatus::Succeeded);
    assert_eq!(
        row.locked_by.as_deref(),
        Some("worker-a"),
        "who finished it"
    );
    assert!(
        !model::succeed(&mut conn, id, "worker-a").await.unwrap(),
        "a finished job is nobody's to complete again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_lease_is_taken_over_by_another_worker_and_counts_as_an_attempt() {
    let app = spawn_app_with(&[("PODIUM_JOBS_ENABLED", "false")]).await;
    let mut conn = db(&app).await;
    let lease = Duration::from_secs(30);
    let id = insert_job(&mut conn, DIAGNOSTIC_SLEEP, json!({}), "QUEUED", None, 5).await;
    let last_try = insert_job(&mut conn, DIAGNOSTIC_SLEEP, json!({}), "QUEUED", None, 1).await;
    let a = model::claim(&mut conn, "worker-a", lease)
        .await
        .unwrap()
        .unwrap();
    model::claim(&mut conn, "worker-a2", lease)
        .await
        .unwrap()
        .unwrap();
    // Worker A dies: nobody renews, and the lease runs out.
    diesel::sql_query("UPDATE jobs SET lease_expires_at = now() - interval '1 second'")
        .execute(&mut conn)
        .await
        .unwrap();

    assert!(runner::run_one(&app.state, "worker-b").await.unwrap());
    let row = job_row(&mut conn, id).await;
    assert_eq!(row.status, model::JobStatus::Succeeded, "{row:?}");
    assert_eq!(row.attempts, 2, "the lost attempt counts");
    assert_eq!(row.locked_by.as_deref(), Some("worker-b"));
    let error = row.last_error.unwrap();
    assert!(
        error.contains("lease expired") && error.contains("worker-a"),
        "{error}"
    );
    assert_eq!(row.payload["completions"], 1, "ran to its end once");
    assert!(
        !model::succeed(&mut conn, id, "worker-a").await.unwrap()
            && !model::fail(&mut conn, &a, "worker-a", "late", None)
                .await
                .unwrap(),
        "the expired holder can't record anything"
    );

    let row = job_row(&mut conn, last_try).await;
    assert_eq!(
        row.status,
        model::JobStatus::Failed,
        "its one attempt was lost"
    );
    assert!(row.last_error.unwrap().contains("lease expired"));
    assert!(row.finished_at.is_some());
    assert!(!runner::run_one(&app.state, "worker-b").await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_job_fails_with_its_message_and_the_worker_runs_the_next_one() {
    let app = spawn_app_with(&[("PODIUM_JOBS_ENABLED", "false")]).await;
    let mut conn = db(&app).await;
    let panics = insert_job(
        &mut conn,
        DIAGNOSTIC_SLEEP,
        json!({ "panic": "the handler blew up" }),
        "QUEUED",
        None,
        1,
    )
    .await;
    let next = insert_job(&mut conn, DIAGNOSTIC_SLEEP, json!({}), "QUEUED", None, 1).await;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let workers = runner::spawn_workers(app.state.clone(), 1, Duration::from_millis(50), stopping);

    let deadline = Instant::now() + Duration::from_secs(20);
    let row = loop {
        let row = job_row(&mut conn, next).await;
        if row.status == model::JobStatus::Succeeded {
            break row;
        }
        assert!(Instant::now() < deadline, "the next job never ran: {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failed = job_row(&mut conn, panics).await;
    assert_eq!(failed.status, model::JobStatus::Failed);
    assert_eq!(
        failed.last_error.as_deref(),
        Some("panicked: the handler blew up")
    );
    assert_eq!(failed.locked_by, row.locked_by, "the same worker went on");
    assert!(!workers[0].is_finished(), "and is still running");
    stop.send_replace(true);
    for w in workers {
        w.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_removes_old_finished_jobs_and_keeps_recent_and_unfinished_ones() {
    let app = spawn_app_with(&[
        ("PODIUM_JOBS_ENABLED", "false"),
        ("PODIUM_JOB_RETENTION_DAYS", "7"),
    ])
    .await;
    let mut conn = db(&app).await;
    let mut old = Vec::new();
    for status in ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "FAILED", "FAILED"] {
        old.push(insert_job(&mut conn, "x", json!({}), status, Some(8 * 24), 5).await);
    }
    let mut kept = vec![
        insert_job(&mut conn, "x", json!({}), "SUCCEEDED", Some(24), 5).await,
        insert_job(&mut conn, "x", json!({}), "FAILED", Some(6 * 24), 5).await,
    ];
    // Not finished, however old: queued (a retry far in the future) and running.
    let queued = insert_job(&mut conn, "x", json!({}), "QUEUED", None, 5).await;
    let running = insert_job(&mut conn, "x", json!({}), "RUNNING", None, 5).await;
    diesel::sql_query("UPDATE jobs SET created_at = now() - interval '90 days', run_at = now() + interval '1 day' WHERE status IN ('QUEUED', 'RUNNING')")
        .execute(&mut conn)
        .await
        .unwrap();
    kept.extend([queued, running]);

    let before = Utc::now() - chrono::Duration::days(7);
    assert_eq!(
        model::prune_finished(&mut conn, before, 2).await.unwrap(),
        5,
        "in batches of two"
    );
    let left: Vec<Uuid> = podium::db::schema::jobs::table
        .select(podium::db::schema::jobs::id)
        .load(&mut conn)
        .await
        .unwrap();
    for id in &kept {
        assert!(left.contains(id), "kept {id}");
    }
    assert!(old.iter().all(|id| !left.contains(id)));

    // The scheduled job does the same.
    let stale = insert_job(&mut conn, "x", json!({}), "SUCCEEDED", Some(8 * 24), 5).await;
    assert!(
        scheduler::schedules(&app.state)
            .iter()
            .any(|s| s.name == JOBS_PRUNE)
    );
    model::enqueue(&mut conn, JOBS_PRUNE, json!({}), Utc::now(), None)
        .await
        .unwrap();
    assert!(runner::run_one(&app.state, "w").await.unwrap());
    let left: Vec<Uuid> = podium::db::schema::jobs::table
        .select(podium::db::schema::jobs::id)
        .load(&mut conn)
        .await
        .unwrap();
    assert!(!left.contains(&stale));
    assert_eq!(left.len(), kept.len() + 1, "the prune job itself stays");
}

/// `EXPLAIN (ANALYZE, FORMAT JSON) <query>`, binds and all.
struct Explain<Q>(Q);

impl<Q> QueryId for Explain<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Explain<Q> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        out.unsafe_to_cache_prepared();
        out.push_sql("EXPLAIN (ANALYZE, FORMAT JSON) ");
        self.0.walk_ast(out.reborrow())
    }
}

impl<Q> Query for Explain<Q> {
    type SqlType = diesel::sql_types::Json;
}

/// Rows a plan read and then dropped, over all its nodes.
fn rows_removed(plan: &serde_json::Value) -> i64 {
    match plan {
        serde_json::Value::Object(node) => node
            .iter()
            .map(|(key, value)| match key.as_str() {
                "Rows Removed by Filter" => value.as_i64().unwrap_or(0),
                _ => rows_removed(value),
            })
            .sum(),
        serde_json::Value::Array(items) => items.iter().map(rows_removed).sum(),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_jobs_list_reads_pages_from_an_index_and_counts_cheaply() {
    let app = spawn_app_with(&[("PODIUM_JOBS_ENABLED", "false")]).await;
    let mut conn = db(&app).await;
    // 30,000 finished jobs, one a second back in time; every tenth a token cleanup, every
    // hundredth (all token cleanups) failed.
    diesel::sql_query(
        "INSERT INTO jobs (kind, status, created_at, finished_at, attempts)
         SELECT CASE WHEN g % 10 = 0 THEN 'auth.token_cleanup' ELSE 'node.staleness' END,
                CASE WHEN g % 100 = 0 THEN 'FAILED' ELSE 'SUCCEEDED' END,
                now() - g * interval '1 second', now() - g * interval '1 second', 1
         FROM generate_series(1, 30000) g",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query("ANALYZE jobs")
        .execute(&mut conn)
        .await
        .unwrap();

    let filters = [
        model::JobFilter::default(),
        model::JobFilter {
            status: Some(model::JobStatus::Failed),
            kind: None,
        },
        model::JobFilter {
            status: None,
            kind: Some("auth.token_cleanup".into()),
        },
        model::JobFilter {
            status: Some(model::JobStatus::Succeeded),
            kind: Some("auth.token_cleanup".into()),
        },
    ];
    let deep = PageArgs {
        first: 20,
        after: Some(Cursor::new(
            Utc::now() - chrono::Duration::seconds(20_000),
            Uuid::from_u128(u128::MAX),
        )),
    };
    for filter in &filters {
        let plan: serde_json::Value = Explain(model::list_query(filter, &deep))
            .get_result(&mut conn)
            .await
            .unwrap();
        let removed = rows_removed(&plan);
        let plan = plan.to_string();
        assert!(
            !plan.contains("\"Sort\"") && !plan.contains("Seq Scan"),
            "{filter:?}: {plan}"
        );
        assert!(
            plan.contains("\"Index Cond\":\"") && plan.contains("created_at <="),
            "the cursor bounds the index scan: {filter:?}: {plan}"
        );
        assert!(
            removed <= 5,
            "the index matches the filter: {removed} rows read and dropped: {filter:?}: {plan}"
        );
    }

    let admin = app.admin().await;
    let q = "query($s: JobStatus, $k: String, $a: String) {
        jobs(first: 100, status: $s, kind: $k, after: $a) {
            totalCount edges { node { id createdAt status kind } } pageInfo { endCursor hasNextPage } } }";
    let total = |r: &Gql| r.data("jobs.totalCount").as_i64().unwrap();
    let r = app.gql(Some(&admin.access), q, json!({})).await.ok();
    let estimate = total(&r);
    assert!(
        (15_000..=60_000).contains(&estimate),
        "beyond 10,000, the planner's estimate: {estimate}"
    );
    let r = app
        .gql(Some(&admin.access), q, json!({ "s": "FAILED" }))
        .await
        .ok();
    assert_eq!(total(&r), 300, "exact below 10,000");
    let r = app
        .gql(
            Some(&admin.access),
            q,
            json!({ "s": "SUCCEEDED", "k": "auth.token_cleanup" }),
        )
        .await
        .ok();
    assert_eq!(total(&r), 2700);

    // Keyset pages: newest first, no row twice, none skipped.
    let mut seen = Vec::new();
    let mut after = None::<String>;
    for _ in 0..3 {
        let r = app
            .gql(Some(&admin.access), q, json!({ "s": "FAILED", "a": after }))
            .await
            .ok();
        for edge in r.data("jobs.edges").as_array().unwrap() {
            let node = &edge["node"];
            assert_eq!(node["status"], "FAILED");
            assert_eq!(node["kind"], "auth.token_cleanup");
            seen.push((
                node["createdAt"]
                    .as_str()
                    .unwrap()
                    .parse::<chrono::DateTime<Utc>>()
                    .unwrap(),
                node["id"].as_str().unwrap().to_string(),
            ));
        }
        after = Some(r.str("jobs.pageInfo.endCursor"));
    }
    assert_eq!(seen.len(), 300);
    assert!(
        seen.windows(2).all(|w| w[0].0 > w[1].0),
        "strictly newest first"
    );
}
