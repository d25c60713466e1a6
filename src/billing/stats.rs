//! Administrators' billing figures, in one statement.
//!
//! - MRR: the monthly prices of ACTIVE and PAST_DUE subscriptions (the price each was sold
//!   at). PAST_DUE ones still run and are being chased; SUSPENDED ones are stopped and
//!   count only once they pay again.
//! - Revenue: subscription, renewal and upgrade debits minus refunds (downgrade and
//!   cancellation credits are REFUND movements too) in the last 30 days by the clock.
//! - Top-ups: TOP_UP credits in the last 30 days.

use chrono::{DateTime, Duration, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text, Timestamptz};
use diesel_async::RunQueryDsl;

use crate::db::Conn;

/// The figures, money in minor units of `currency`.
#[derive(QueryableByName, Clone, Debug, PartialEq, Eq)]
pub struct BillingStats {
    #[diesel(sql_type = BigInt)]
    pub mrr: i64,
    #[diesel(sql_type = BigInt)]
    pub active_subscriptions: i64,
    #[diesel(sql_type = BigInt)]
    pub past_due: i64,
    #[diesel(sql_type = BigInt)]
    pub suspended: i64,
    #[diesel(sql_type = BigInt)]
    pub revenue_last_30_days: i64,
    #[diesel(sql_type = BigInt)]
    pub top_ups_last_30_days: i64,
}

/// The figures at `now`, for money in `currency` (the platform's).
pub async fn compute(
    conn: &mut Conn,
    currency: &str,
    now: DateTime<Utc>,
) -> diesel::QueryResult<BillingStats> {
    diesel::sql_query(
        "WITH subs AS (
             SELECT coalesce(sum(price) FILTER (WHERE status IN ('ACTIVE', 'PAST_DUE') AND currency = $1), 0)::bigint AS mrr,
                    count(*) FILTER (WHERE status = 'ACTIVE') AS active_subscriptions,
                    count(*) FILTER (WHERE status = 'PAST_DUE') AS past_due,
                    count(*) FILTER (WHERE status = 'SUSPENDED') AS suspended
             FROM service_subscriptions
             WHERE status IN ('ACTIVE', 'PAST_DUE', 'SUSPENDED')
         ), money AS (
             SELECT coalesce(-sum(amount) FILTER (WHERE type IN ('SUBSCRIPTION', 'RENEWAL', 'UPGRADE')), 0)
                    - coalesce(sum(amount) FILTER (WHERE type = 'REFUND'), 0) AS revenue,
                    coalesce(sum(amount) FILTER (WHERE type = 'TOP_UP'), 0) AS top_ups
             FROM wallet_transactions
             WHERE created_at > $2 AND created_at <= $3 AND currency = $1
         )
         SELECT subs.mrr, subs.active_subscriptions, subs.past_due, subs.suspended,
                money.revenue::bigint AS revenue_last_30_days,
                money.top_ups::bigint AS top_ups_last_30_days
         FROM subs, money",
    )
    .bind::<Text, _>(currency)
    .bind::<Timestamptz, _>(now - Duration::days(30))
    .bind::<Timestamptz, _>(now)
    .get_result(conn)
    .await
}
