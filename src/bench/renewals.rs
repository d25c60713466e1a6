//! `podium bench renewals`: N subscriptions whose period has just ended, renewed by one
//! run of the billing cycle (what the `billing.renewals` job does); prints renewals per
//! second and the batch's total time, then checks every one was charged exactly once.

use std::time::Instant;

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use diesel::sql_types::{BigInt, Int8, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::config::Settings;
use crate::db::{Conn, DbPool};
use crate::startup::Application;

pub struct RenewalBench {
    pub subscriptions: usize,
}

pub struct RenewalReport {
    pub renewed: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub seed_seconds: f64,
    pub charges: i64,
    pub invoices: i64,
    /// Mismatches the integrity check (`podium billing verify`) found afterwards.
    pub mismatches: usize,
    pub verify_seconds: f64,
}

/// Inserts `n` customers, each with a wallet holding two months of the plan's price (a
/// recorded ADJUSTMENT, so the ledger adds up) and an ACTIVE subscription to the plan whose
/// period ended an hour before `now`, with its instance. Set-based, for benchmarks and
/// crash tests.
pub async fn seed_due(
    conn: &mut Conn,
    n: usize,
    plan_id: Uuid,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let run = Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    let end = now - Duration::hours(1);
    let start = end - Duration::days(30);
    diesel::sql_query(
        "WITH plan AS (SELECT monthly_price, currency FROM service_plans WHERE id = $1),
         u AS (
             INSERT INTO users (name, email, password_hash)
             SELECT 'Bench ' || i, 'bench-' || $2 || '-' || i || '@example.com', '!'
             FROM generate_series(1, $3) AS i
             RETURNING id
         ), w AS (
             INSERT INTO wallets (user_id, currency, balance)
             SELECT u.id, plan.currency, plan.monthly_price * 2 FROM u, plan
             RETURNING user_id, currency, balance
         ), t AS (
             INSERT INTO wallet_transactions (user_id, type, amount, currency, balance_before, balance_after, description, created_at)
             SELECT user_id, 'ADJUSTMENT', balance, currency, 0, balance, 'Benchmark funds', $5 FROM w
         ), s AS (
             INSERT INTO service_subscriptions (user_id, plan_id, name, status, price, currency,
                 current_period_start, current_period_end, created_at, updated_at)
             SELECT u.id, $1, 'bench', 'ACTIVE', plan.monthly_price, plan.currency, $5, $4, $5, $5
             FROM u, plan
             RETURNING id, user_id
         ), i AS (
             INSERT INTO service_instances (subscription_id, user_id, name, subdomain, desired_state)
             SELECT s.id, s.user_id, 'bench', 'bench-' || $2 || '-' || row_number() OVER (), 'RUNNING' FROM s
         )
         UPDATE service_plans SET used_quota = used_quota + $3 WHERE id = $1",
    )
    .bind::<SqlUuid, _>(plan_id)
    .bind::<Text, _>(run)
    .bind::<Int8, _>(n as i64)
    .bind::<Timestamptz, _>(end)
    .bind::<Timestamptz, _>(start)
    .execute(conn)
    .await
    .context("seeding due subscriptions")?;
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(conn: &mut Conn, sql: &str) -> anyhow::Result<i64> {
    Ok(diesel::sql_query(sql).get_result::<Count>(conn).await?.n)
}

/// The id of a seeded plan with no quota limit (Ghost Basic).
async fn bench_plan(pool: &DbPool) -> anyhow::Result<Uuid> {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    let mut conn = pool.get().await?;
    Ok(diesel::sql_query(
        "SELECT p.id FROM service_plans p JOIN services s ON s.id = p.service_id
         WHERE s.slug = 'ghost' AND p.name = 'Basic'",
    )
    .get_result::<Id>(&mut conn)
    .await
    .context("the seeded Ghost Basic plan")?
    .id)
}

pub async fn renewals(settings: Settings, bench: RenewalBench) -> anyhow::Result<RenewalReport> {
    super::on_scratch_database(settings, async |mut settings, url| {
        settings.database_url = Some(url.to_string().into());
        settings.listen = "127.0.0.1:0".parse().expect("an address");
        // The run below is the renewal job's work; the scheduler must not start it too.
        settings.jobs_enabled = false;
        let app = Application::build(settings).await?;
        let state = app.state().clone();
        crate::seed::catalog(&state.pool).await?;
        let plan = bench_plan(&state.pool).await?;
        let seeding = Instant::now();
        {
            let mut conn = state.pool.get().await?;
            seed_due(&mut conn, bench.subscriptions, plan, state.clock.now()).await?;
            diesel::sql_query("ANALYZE").execute(&mut conn).await?;
        }
        let seed_seconds = seeding.elapsed().as_secs_f64();
        let started = Instant::now();
        let summary = crate::subscriptions::cycle::run_renewals(&state).await?;
        let seconds = started.elapsed().as_secs_f64();
        let mut conn = state.pool.get().await?;
        let charges = count(
            &mut conn,
            "SELECT count(*) AS n FROM wallet_transactions WHERE type = 'RENEWAL'",
        )
        .await?;
        let invoices = count(&mut conn, "SELECT count(*) AS n FROM invoices").await?;
        let verifying = Instant::now();
        let report = crate::billing::service::verify(&mut conn)
            .await
            .map_err(|e| anyhow::anyhow!("billing verify: {e:?}"))?;
        let verify_seconds = verifying.elapsed().as_secs_f64();
        drop(conn);
        Ok(RenewalReport {
            renewed: summary.renewed,
            seconds,
            per_second: summary.renewed as f64 / seconds,
            seed_seconds,
            charges,
            invoices,
            mismatches: report.mismatches.len(),
            verify_seconds,
        })
    })
    .await
}
