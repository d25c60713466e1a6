//! Renewals in bulk: the common case (ACTIVE, due, renewing, the wallet covers it) for a
//! batch of subscriptions in one statement and one transaction, writing exactly the rows
//! the one-at-a-time path (`cycle::renew`) writes: the RENEWAL debit with its balance
//! chain, the PAID invoice with its gapless number and line, the wallet's balance, the
//! subscription's next period. A renewal per transaction commits a few hundred times a
//! second; this renews 100,000 subscriptions in seconds.
//!
//! It reaches into billing's tables directly, against the rule that domains meet through
//! `service.rs`, because only one statement is fast enough; the integrity check
//! (`podium billing verify`) and the tests hold it to the same rules. Whatever it leaves
//! (short wallets, cancellations, free plans, currency mismatches) the per-subscription
//! path handles. Safety is the same as there: rows are locked (SKIP LOCKED, so replicas
//! take disjoint batches), the period is read from the locked row, and the debit's unique
//! key and the invoice's (subscription, purpose) key make a second charge impossible.
//! Its live events go to the outbox in the same statement.

use chrono::{DateTime, Datelike, Utc};
use diesel::sql_types::{Int4, Int8, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl;

use super::model::Subscription;
use crate::config::BillingSettings;
use crate::db::Conn;

/// Renews up to `batch` due subscriptions (at most one per customer per batch, so that
/// each wallet is debited once per statement); returns them as renewed.
pub async fn renew_batch(
    conn: &mut Conn,
    billing: &BillingSettings,
    now: DateTime<Utc>,
    batch: i64,
) -> diesel::QueryResult<Vec<Subscription>> {
    let tax_name = (billing.tax_rate_bp > 0).then(|| billing.tax_name.clone());
    diesel::sql_query(
        r#"WITH locked AS (
            SELECT s.id, s.user_id, s.plan_id, s.name, s.currency, s.current_period_end AS start
            FROM service_subscriptions s
            WHERE s.status = 'ACTIVE' AND s.current_period_end <= $1
              AND s.auto_renew AND NOT s.cancel_at_period_end
            ORDER BY s.current_period_end
            LIMIT $2
            FOR UPDATE OF s SKIP LOCKED
        ), one AS (
            SELECT DISTINCT ON (user_id) * FROM locked ORDER BY user_id, start
        ), priced AS (
            SELECT one.*, p.monthly_price AS price, (p.monthly_price * $3 + 5000) / 10000 AS tax,
                   p.name AS plan_name, sv.name AS service_name
            FROM one
            JOIN service_plans p ON p.id = one.plan_id
            JOIN services sv ON sv.id = p.service_id
            WHERE p.currency = one.currency
        ), wal AS (
            SELECT w.user_id, w.balance
            FROM wallets w JOIN priced ON priced.user_id = w.user_id AND w.currency = priced.currency
            ORDER BY w.user_id -- one lock order for every batch: concurrent batches can't deadlock
            FOR UPDATE OF w
        ), go AS (
            SELECT priced.*, wal.balance, priced.price + priced.tax AS total,
                   floor(extract(epoch FROM priced.start))::bigint AS start_epoch,
                   ((priced.start AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC' AS next_end,
                   row_number() OVER (ORDER BY priced.id) AS rn,
                   count(*) OVER () AS n
            FROM priced JOIN wal USING (user_id)
            WHERE priced.price + priced.tax > 0 AND wal.balance >= priced.price + priced.tax
        ), counter AS (
            INSERT INTO invoice_counters (year, last_number)
            SELECT $4, count(*) FROM go HAVING count(*) > 0
            ON CONFLICT (year) DO UPDATE SET last_number = invoice_counters.last_number + EXCLUDED.last_number
            RETURNING last_number
        ), numbered AS (
            SELECT go.*, gen_random_uuid() AS invoice_id,
                   (counter.last_number - go.n + go.rn)::int AS seq
            FROM go, counter
        ), inv AS (
            INSERT INTO invoices (id, number, year, sequence, user_id, subscription_id, status,
                currency, period_start, period_end, subtotal, tax, total, tax_name, tax_rate_bp,
                purpose, issued_at, paid_at, created_at, updated_at)
            SELECT invoice_id, 'INV-' || $4 || '-' || lpad(seq::text, greatest(6, length(seq::text)), '0'),
                   $4, seq, user_id, id, 'PAID', currency, start, next_end, price, tax, total,
                   $5, $3, 'period:' || start_epoch, $1, $1, $1, $1
            FROM numbered
            RETURNING id, number
        ), lines AS (
            INSERT INTO invoice_lines (invoice_id, position, description, quantity, unit_price, amount)
            SELECT invoice_id, 1, service_name || ' ' || plan_name || ' for "' || name || '", one month',
                   1, price, price
            FROM numbered
        ), ledger AS (
            INSERT INTO wallet_transactions (user_id, type, amount, currency, balance_before,
                balance_after, reference, description, subscription_id, invoice_id, unique_key, created_at)
            SELECT n.user_id, 'RENEWAL', -n.total, n.currency, n.balance, n.balance - n.total, inv.number,
                   'Renewal of "' || n.name || '": ' || n.service_name || ' ' || n.plan_name,
                   n.id, n.invoice_id, 'charge:' || n.id || ':period:' || n.start_epoch, $1
            FROM numbered n JOIN inv ON inv.id = n.invoice_id
            RETURNING id, user_id
        ), events AS (
            INSERT INTO event_outbox (topic, payload)
            SELECT $6, jsonb_build_object('userId', user_id, 'transactionId', id) FROM ledger
            UNION ALL
            SELECT $7, jsonb_build_object('subscriptionId', id, 'userId', user_id) FROM go
        ), debited AS (
            UPDATE wallets w SET balance = go.balance - go.total, updated_at = $1
            FROM go WHERE w.user_id = go.user_id
        )
        UPDATE service_subscriptions s
        SET price = go.price, current_period_start = go.start, current_period_end = go.next_end,
            failed_charges = 0, updated_at = $1
        FROM go WHERE s.id = go.id
        RETURNING s.*"#,
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Int8, _>(batch)
    .bind::<Int4, _>(billing.tax_rate_bp)
    .bind::<Int4, _>(now.year())
    .bind::<Nullable<Text>, _>(tax_name)
    .bind::<Text, _>(crate::billing::events::WALLET_TOPIC)
    .bind::<Text, _>(super::events::TOPIC)
    .load::<Subscription>(conn)
    .await
}

/// What the message of one renewal says, read back after `renew_batch` in its transaction.
#[derive(diesel::QueryableByName, Debug, Clone)]
pub struct Renewed {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub subscription_id: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub invoice_id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    pub number: String,
    #[diesel(sql_type = Int8)]
    pub total: i64,
    #[diesel(sql_type = Int8)]
    pub balance: i64,
    #[diesel(sql_type = Text)]
    pub service_name: String,
    #[diesel(sql_type = Text)]
    pub plan_name: String,
    #[diesel(sql_type = Text)]
    pub email: String,
    #[diesel(sql_type = Text)]
    pub user_name: String,
}

/// The invoices that paid the current periods of `ids` (just renewed), with the wallets'
/// balances, the names the messages print and their owners' addresses: one statement for
/// a whole batch.
pub async fn renewed(conn: &mut Conn, ids: &[uuid::Uuid]) -> diesel::QueryResult<Vec<Renewed>> {
    diesel::sql_query(
        "SELECT s.id AS subscription_id, i.id AS invoice_id, i.number, i.total, w.balance,
                sv.name AS service_name, p.name AS plan_name, u.email, u.name AS user_name
         FROM service_subscriptions s
         JOIN users u ON u.id = s.user_id
         JOIN invoices i ON i.subscription_id = s.id
              AND i.purpose = 'period:' || floor(extract(epoch FROM s.current_period_start))::bigint
         JOIN wallets w ON w.user_id = s.user_id
         JOIN service_plans p ON p.id = s.plan_id
         JOIN services sv ON sv.id = p.service_id
         WHERE s.id = ANY($1)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
    .load(conn)
    .await
}
