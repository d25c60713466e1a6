//! The integrity check (`podium billing verify`, the `billingIntegrity` query): recomputes
//! what the billing tables cache or imply from what they record, and reports each
//! difference. Every check is one set-based statement (hash aggregates and window
//! functions over whole tables, no per-row round trips), and all of them read one
//! snapshot (REPEATABLE READ), so a check run while the server charges and renews never
//! sees half of a business step.
//!
//! A wallet's ledger rows are not checked in `created_at` order: their time comes from
//! the clock read before the step took the wallet's lock, so two concurrent steps can
//! commit in the opposite order of their timestamps (and equal timestamps are common).
//! Instead the links `balance_before -> balance_after` are checked as a set: they must
//! form one trail from 0 to the ledger's sum, i.e. every balance is entered as often as
//! it is left, except 0 (left once more) and the final balance (entered once more), and
//! the trail starts at 0. Together with the per-row check constraint
//! (`balance_after = balance_before + amount`) this catches a lost update (two rows
//! leaving one balance), a missing, duplicated or rewritten row, and a cached balance
//! that drifted from its ledger.

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;
use serde::Serialize;

use crate::db::Conn;

/// At most this many mismatches of one check are listed.
pub const MAX_PER_KIND: i64 = 1000;

/// One difference: what it is about, what the records imply and what was found.
#[derive(QueryableByName, Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// A stable code, e.g. `WALLET_BALANCE`, `INVOICE_NUMBER_GAP`, `PLAN_USED_QUOTA`.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// What it is about, with ids, e.g. `wallet 5f0c...` or `invoice INV-2026-000004 (id ...)`.
    #[diesel(sql_type = Text)]
    pub subject: String,
    #[diesel(sql_type = Text)]
    pub expected: String,
    #[diesel(sql_type = Text)]
    pub found: String,
    /// What is wrong, for people.
    #[diesel(sql_type = Text)]
    pub message: String,
}

/// What was checked and every difference found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub checked_wallets: i64,
    pub checked_transactions: i64,
    pub checked_invoices: i64,
    pub checked_plans: i64,
    pub checked_subscriptions: i64,
    pub mismatches: Vec<Mismatch>,
    /// Some kind had more than `MAX_PER_KIND` mismatches: only the first are listed.
    pub truncated: bool,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.mismatches.is_empty()
    }

    /// The mismatches of one kind.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Mismatch> + 'a {
        self.mismatches.iter().filter(move |m| m.kind == kind)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "checked {} wallet(s) with {} ledger row(s), {} invoice(s), {} plan(s), {} subscription(s)",
            self.checked_wallets,
            self.checked_transactions,
            self.checked_invoices,
            self.checked_plans,
            self.checked_subscriptions
        )?;
        if self.is_clean() {
            return writeln!(f, "no mismatches: the billing records are consistent");
        }
        if self.truncated {
            writeln!(
                f,
                "{} mismatch(es) listed (only the first {MAX_PER_KIND} of a kind):",
                self.mismatches.len()
            )?;
        } else {
            writeln!(f, "{} mismatch(es):", self.mismatches.len())?;
        }
        for m in &self.mismatches {
            writeln!(
                f,
                "  {} {}: expected {}, found {} ({})",
                m.kind, m.subject, m.expected, m.found, m.message
            )?;
        }
        Ok(())
    }
}

#[derive(QueryableByName)]
struct Counts {
    #[diesel(sql_type = BigInt)]
    wallets: i64,
    #[diesel(sql_type = BigInt)]
    transactions: i64,
    #[diesel(sql_type = BigInt)]
    invoices: i64,
    #[diesel(sql_type = BigInt)]
    plans: i64,
    #[diesel(sql_type = BigInt)]
    subscriptions: i64,
}

/// Each check: a statement yielding (kind, subject, expected, found, message) rows.
const CHECKS: &[&str] = &[
    // (a) The cached balance is the sum of the ledger.
    "SELECT 'WALLET_BALANCE' AS kind, 'wallet ' || w.user_id AS subject,
            coalesce(l.total, 0)::text AS expected, w.balance::text AS found,
            'the cached balance differs from the sum of its ledger' AS message
     FROM wallets w
     LEFT JOIN (SELECT user_id, sum(amount) AS total FROM wallet_transactions GROUP BY user_id) l
       ON l.user_id = w.user_id
     WHERE w.balance <> coalesce(l.total, 0)",
    // (a) The links form one trail from 0 to the sum: with a closing link sum -> 0 added,
    // every balance is entered exactly as often as it is left.
    "WITH sums AS (
         SELECT user_id, sum(amount) AS total FROM wallet_transactions GROUP BY user_id
     ), ends AS (
         SELECT user_id, balance_before::numeric AS v, 1 AS d FROM wallet_transactions
         UNION ALL SELECT user_id, balance_after::numeric, -1 FROM wallet_transactions
         UNION ALL SELECT user_id, total, 1 FROM sums
         UNION ALL SELECT user_id, 0, -1 FROM sums
     ), unbalanced AS (
         SELECT user_id, v, sum(d) AS net FROM ends GROUP BY user_id, v HAVING sum(d) <> 0
     )
     SELECT 'WALLET_CHAIN' AS kind, 'wallet ' || u.user_id AS subject,
            'one chain of movements from 0 to ' || s.total AS expected,
            'a broken chain at balance(s) ' || string_agg(
                u.v || CASE WHEN u.net > 0 THEN ' (left ' || u.net || ' more time(s) than reached)'
                            ELSE ' (reached ' || -u.net || ' more time(s) than left)' END,
                ', ' ORDER BY u.v) AS found,
            'a movement is missing, duplicated or does not start from the balance before it' AS message
     FROM unbalanced u JOIN sums s ON s.user_id = u.user_id
     GROUP BY u.user_id, s.total",
    // (a) The trail starts at 0 (a ledger of cycles alone would pass the check above).
    "SELECT 'WALLET_CHAIN' AS kind, 'wallet ' || w.user_id AS subject,
            'a first movement from 0' AS expected, 'none starts from 0' AS found,
            'the ledger does not start from an empty wallet' AS message
     FROM (SELECT DISTINCT user_id FROM wallet_transactions) w
     WHERE NOT EXISTS (SELECT 1 FROM wallet_transactions t
                       WHERE t.user_id = w.user_id AND t.balance_before = 0)",
    // (a) Every movement is in its wallet's currency.
    "SELECT 'TRANSACTION_CURRENCY' AS kind, 'transaction ' || t.id || ' of wallet ' || t.user_id AS subject,
            w.currency AS expected, t.currency AS found,
            'a movement in another currency than its wallet' AS message
     FROM wallet_transactions t JOIN wallets w ON w.user_id = t.user_id
     WHERE t.currency <> w.currency",
    // (b) Each line is quantity x unit price.
    "SELECT 'INVOICE_LINE_AMOUNT' AS kind,
            'invoice ' || i.number || ' (id ' || i.id || ') line ' || l.position AS subject,
            (l.quantity::bigint * l.unit_price)::text AS expected, l.amount::text AS found,
            'the line amount is not quantity x unit price' AS message
     FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id
     WHERE l.amount <> l.quantity::bigint * l.unit_price",
    // (b) The subtotal is the sum of the lines.
    "SELECT 'INVOICE_SUBTOTAL' AS kind, 'invoice ' || i.number || ' (id ' || i.id || ')' AS subject,
            coalesce(l.total, 0)::text AS expected, i.subtotal::text AS found,
            'the subtotal is not the sum of the lines' AS message
     FROM invoices i
     LEFT JOIN (SELECT invoice_id, sum(amount) AS total FROM invoice_lines GROUP BY invoice_id) l
       ON l.invoice_id = i.id
     WHERE i.subtotal <> coalesce(l.total, 0)",
    // (b) The tax is the rate of the subtotal (rounded half away from zero, as issued).
    "SELECT 'INVOICE_TAX' AS kind, 'invoice ' || i.number || ' (id ' || i.id || ')' AS subject,
            round(i.subtotal::numeric * i.tax_rate_bp / 10000)::text AS expected, i.tax::text AS found,
            'the tax is not ' || (i.tax_rate_bp / 100.0)::numeric(10, 2) || ' % of the subtotal' AS message
     FROM invoices i
     WHERE i.tax <> round(i.subtotal::numeric * i.tax_rate_bp / 10000)",
    // (b) The total is subtotal plus tax.
    "SELECT 'INVOICE_TOTAL' AS kind, 'invoice ' || i.number || ' (id ' || i.id || ')' AS subject,
            (i.subtotal + i.tax)::text AS expected, i.total::text AS found,
            'the total is not subtotal + tax' AS message
     FROM invoices i
     WHERE i.total <> i.subtotal + i.tax",
    // (b, e) A PAID invoice with a positive total is paid by exactly one debit of its
    // total; any other invoice by none. Two debits for one invoice are a double charge.
    "WITH debits AS (
         SELECT invoice_id, count(*) AS n, sum(amount) AS total
         FROM wallet_transactions WHERE invoice_id IS NOT NULL AND amount < 0
         GROUP BY invoice_id
     )
     SELECT CASE WHEN coalesce(d.n, 0) > 1 THEN 'DOUBLE_CHARGE' ELSE 'INVOICE_PAYMENT' END AS kind,
            'invoice ' || i.number || ' (id ' || i.id || ', ' || i.status || ')' AS subject,
            CASE WHEN i.status = 'PAID' AND i.total > 0 THEN 'one debit of ' || -i.total
                 ELSE 'no debit' END AS expected,
            coalesce(d.n, 0) || ' debit(s) totalling ' || coalesce(d.total, 0) AS found,
            CASE WHEN coalesce(d.n, 0) > 1 THEN 'the invoice was charged more than once'
                 WHEN i.status = 'PAID' AND i.total > 0 THEN 'the paid invoice is not paid by one debit of its total'
                 ELSE 'money was taken for an invoice that is not paid' END AS message
     FROM invoices i LEFT JOIN debits d ON d.invoice_id = i.id
     WHERE CASE WHEN i.status = 'PAID' AND i.total > 0
                THEN coalesce(d.n, 0) <> 1 OR d.total <> -i.total
                ELSE d.n IS NOT NULL END",
    // (b) A debit names an invoice that exists, of its own wallet and subscription.
    "SELECT 'CHARGE_INVOICE' AS kind, 'transaction ' || t.id || ' of wallet ' || t.user_id AS subject,
            'invoice ' || t.invoice_id || ' of this wallet' ||
                coalesce(' and subscription ' || t.subscription_id, '') AS expected,
            CASE WHEN i.id IS NULL THEN 'no such invoice'
                 ELSE 'invoice ' || i.number || ' of user ' || i.user_id ||
                      coalesce(' and subscription ' || i.subscription_id, '') END AS found,
            'the movement names an invoice that is not its own' AS message
     FROM wallet_transactions t LEFT JOIN invoices i ON i.id = t.invoice_id
     WHERE t.invoice_id IS NOT NULL
       AND (i.id IS NULL OR i.user_id <> t.user_id
            OR i.subscription_id IS DISTINCT FROM t.subscription_id)",
    // (b, e) Charges for subscriptions are debits with an invoice.
    "SELECT 'CHARGE_WITHOUT_INVOICE' AS kind, 'transaction ' || t.id || ' of wallet ' || t.user_id AS subject,
            'a debit with an invoice' AS expected,
            CASE WHEN t.amount > 0 THEN 'a credit of ' || t.amount ELSE 'no invoice' END AS found,
            'a ' || t.type || ' movement is not the payment of an invoice' AS message
     FROM wallet_transactions t
     WHERE t.type IN ('SUBSCRIPTION', 'RENEWAL', 'UPGRADE')
       AND (t.invoice_id IS NULL OR t.amount > 0)",
    // Refunds give back at most what was taken, to the same wallet.
    "SELECT 'REFUND' AS kind, 'transaction ' || o.id || ' of wallet ' || o.user_id AS subject,
            'refunds of at most ' || greatest(-o.amount, 0) || ' to this wallet' AS expected,
            count(*) || ' refund(s) of ' || sum(r.amount) ||
                CASE WHEN bool_or(r.user_id <> o.user_id) THEN ', some to another wallet' ELSE '' END AS found,
            'more was refunded than was taken, or to another wallet' AS message
     FROM wallet_transactions r JOIN wallet_transactions o ON o.id = r.refund_of
     GROUP BY o.id, o.user_id, o.amount
     HAVING sum(r.amount) > -o.amount OR bool_or(r.user_id <> o.user_id) OR bool_or(r.amount <= 0)",
    // (c) Numbers run 1, 2, 3, ... within each year.
    "SELECT CASE WHEN sequence = prev THEN 'INVOICE_NUMBER_DUPLICATE' ELSE 'INVOICE_NUMBER_GAP' END AS kind,
            'invoice ' || number || ' (id ' || id || ')' AS subject,
            'sequence ' || (prev + 1) || ' of ' || year AS expected,
            'sequence ' || sequence AS found,
            CASE WHEN sequence = prev THEN 'the number is used twice'
                 WHEN sequence = prev + 2 THEN 'number ' || (prev + 1) || ' of ' || year || ' is missing'
                 ELSE 'numbers ' || (prev + 1) || ' to ' || (sequence - 1) || ' of ' || year || ' are missing' END AS message
     FROM (SELECT id, number, year, sequence,
                  lag(sequence, 1, 0) OVER (PARTITION BY year ORDER BY sequence, id) AS prev
           FROM invoices) s
     WHERE sequence <> prev + 1",
    // (c) The number says its year and sequence; the year is the issue date's (UTC).
    "SELECT 'INVOICE_NUMBER_FORMAT' AS kind, 'invoice ' || number || ' (id ' || id || ')' AS subject,
            'INV-' || extract(year FROM issued_at AT TIME ZONE 'UTC')::int || '-' ||
                lpad(sequence::text, greatest(6, length(sequence::text)), '0') AS expected,
            number AS found,
            'the number does not match the year it was issued in and its sequence' AS message
     FROM invoices
     WHERE number <> 'INV-' || year || '-' || lpad(sequence::text, greatest(6, length(sequence::text)), '0')
        OR year <> extract(year FROM issued_at AT TIME ZONE 'UTC')",
    // (c) Each year's counter is its last number.
    "SELECT 'INVOICE_COUNTER' AS kind, 'invoice counter of ' || coalesce(c.year, m.year) AS subject,
            coalesce(m.last, 0)::text AS expected, coalesce(c.last_number::text, 'no counter') AS found,
            'the counter is not the year''s last invoice number' AS message
     FROM invoice_counters c
     FULL JOIN (SELECT year, max(sequence) AS last FROM invoices GROUP BY year) m ON m.year = c.year
     WHERE c.last_number IS DISTINCT FROM m.last",
    // (d) A plan's used quota counts the subscriptions that hold a place in it.
    "SELECT 'PLAN_USED_QUOTA' AS kind,
            'plan ' || p.id || ' (' || sv.slug || ' ' || p.name || ')' AS subject,
            coalesce(s.n, 0)::text AS expected, p.used_quota::text AS found,
            'the used quota differs from the subscriptions holding a place' AS message
     FROM service_plans p JOIN services sv ON sv.id = p.service_id
     LEFT JOIN (SELECT plan_id, count(*) AS n FROM service_subscriptions WHERE holds_quota GROUP BY plan_id) s
       ON s.plan_id = p.id
     WHERE p.used_quota <> coalesce(s.n, 0)",
    // (d) A subscription holds its place until it is CANCELLED or EXPIRED.
    "SELECT 'SUBSCRIPTION_QUOTA' AS kind, 'subscription ' || id || ' (' || status || ')' AS subject,
            (status NOT IN ('CANCELLED', 'EXPIRED'))::text AS expected, holds_quota::text AS found,
            'holds_quota does not follow the status' AS message
     FROM service_subscriptions
     WHERE holds_quota <> (status NOT IN ('CANCELLED', 'EXPIRED'))",
    // (e) The paid periods of one subscription never overlap: no period is charged twice.
    "SELECT 'DOUBLE_CHARGE' AS kind, 'subscription ' || subscription_id AS subject,
            'invoice ' || number || ' to start at or after ' || prev_end || ' (end of ' || prev_number || ')' AS expected,
            'its period starts at ' || period_start AS found,
            'two paid invoices cover the same time' AS message
     FROM (SELECT subscription_id, number, period_start,
                  lag(period_end) OVER w AS prev_end, lag(number) OVER w AS prev_number
           FROM invoices
           WHERE status = 'PAID' AND purpose LIKE 'period:%' AND subscription_id IS NOT NULL
           WINDOW w AS (PARTITION BY subscription_id ORDER BY period_start, id)) s
     WHERE period_start < prev_end",
    // (e) An ACTIVE subscription's current period is paid: no period was skipped.
    "SELECT 'PERIOD_UNPAID' AS kind, 'subscription ' || s.id || ' (ACTIVE)' AS subject,
            'a paid invoice for ' || s.current_period_start || ' to ' || s.current_period_end AS expected,
            'none' AS found,
            'the subscription runs a period nobody paid for' AS message
     FROM service_subscriptions s
     WHERE s.status = 'ACTIVE'
       AND NOT EXISTS (SELECT 1 FROM invoices i
                       WHERE i.subscription_id = s.id AND i.status = 'PAID'
                         AND i.period_start = s.current_period_start
                         AND i.period_end = s.current_period_end)",
];

/// Runs every check on one snapshot of the database.
pub async fn check(conn: &mut Conn) -> diesel::QueryResult<Report> {
    conn.build_transaction()
        .repeatable_read()
        .read_only()
        .run(async |conn| {
            // Whole-table hash aggregates: room to keep them in memory (this transaction only).
            diesel::sql_query("SET LOCAL work_mem = '128MB'")
                .execute(conn)
                .await?;
            let counts: Counts = diesel::sql_query(
                "SELECT (SELECT count(*) FROM wallets) AS wallets,
                        (SELECT count(*) FROM wallet_transactions) AS transactions,
                        (SELECT count(*) FROM invoices) AS invoices,
                        (SELECT count(*) FROM service_plans) AS plans,
                        (SELECT count(*) FROM service_subscriptions) AS subscriptions",
            )
            .get_result(conn)
            .await?;
            let mut mismatches = Vec::new();
            let mut truncated = false;
            for sql in CHECKS {
                let mut found: Vec<Mismatch> = diesel::sql_query(format!(
                    "SELECT * FROM ({sql}) c LIMIT {}",
                    MAX_PER_KIND + 1
                ))
                .load(conn)
                .await?;
                if found.len() as i64 > MAX_PER_KIND {
                    found.truncate(MAX_PER_KIND as usize);
                    truncated = true;
                }
                mismatches.extend(found);
            }
            Ok(Report {
                checked_wallets: counts.wallets,
                checked_transactions: counts.transactions,
                checked_invoices: counts.invoices,
                checked_plans: counts.plans,
                checked_subscriptions: counts.subscriptions,
                mismatches,
                truncated,
            })
        })
        .await
}
