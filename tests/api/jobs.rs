//! The job queue: retries with backoff, final failure, and cron ticks enqueued once.

use chrono::Utc;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use podium::jobs::{model, runner, scheduler};
use serde_json::json;

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
