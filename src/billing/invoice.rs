//! Issuing invoices. Numbers run without gaps per year (`INV-2026-000123`): the year's
//! counter row is incremented in the transaction that issues the invoice, so a rollback
//! gives the number back and concurrent issuers queue on that row. The counter is taken in
//! the same statement that writes the invoice, as late in the transaction as possible, so
//! the queue moves at the speed of commits.

use chrono::{DateTime, Datelike, Utc};
use diesel::sql_types::{BigInt, Int4, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use serde::Serialize;
use uuid::Uuid;

use super::model::InvoiceStatus;
use crate::config::BillingSettings;
use crate::db::Conn;

/// One line of an invoice.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub description: String,
    pub quantity: i32,
    pub unit_price: i64,
}

/// What to issue. The caller picks the id (a ledger row may point at it first).
#[derive(Debug, Clone)]
pub struct Draft<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub subscription_id: Option<Uuid>,
    /// Unique per subscription: what this invoice bills ("period:<start>", ...).
    pub purpose: &'a str,
    pub currency: &'a str,
    pub period: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub lines: Vec<Line>,
    pub status: InvoiceStatus,
    pub now: DateTime<Utc>,
    /// The ledger row that paid it: its `reference` becomes the invoice number.
    pub paid_by: Option<Uuid>,
}

/// Subtotal, tax (rounded half up) and total of some lines.
pub fn totals(lines: &[Line], tax_rate_bp: i32) -> (i64, i64, i64) {
    let subtotal: i64 = lines
        .iter()
        .map(|l| l.unit_price * i64::from(l.quantity))
        .sum();
    let tax = tax_of(subtotal, tax_rate_bp);
    (subtotal, tax, subtotal + tax)
}

/// Tax on an amount, rounded half away from zero to the minor unit.
pub fn tax_of(amount: i64, tax_rate_bp: i32) -> i64 {
    let scaled = i128::from(amount) * i128::from(tax_rate_bp);
    let rounded = if scaled >= 0 {
        (scaled + 5_000) / 10_000
    } else {
        (scaled - 5_000) / 10_000
    };
    rounded as i64
}

#[derive(diesel::QueryableByName)]
struct Issued {
    #[diesel(sql_type = Text)]
    number: String,
}

/// Issues the invoice (call it last in the business step's transaction); returns its number.
pub async fn issue(
    conn: &mut Conn,
    billing: &BillingSettings,
    draft: &Draft<'_>,
) -> diesel::QueryResult<String> {
    let (subtotal, tax, total) = totals(&draft.lines, billing.tax_rate_bp);
    let lines: Vec<serde_json::Value> = draft
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::json!({
                "position": i as i32 + 1,
                "description": l.description,
                "quantity": l.quantity,
                "unit_price": l.unit_price,
                "amount": l.unit_price * i64::from(l.quantity),
            })
        })
        .collect();
    let tax_name = (billing.tax_rate_bp > 0).then(|| billing.tax_name.clone());
    let paid_at = (draft.status == InvoiceStatus::Paid).then_some(draft.now);
    let issued = diesel::sql_query(
        "WITH n AS (
             INSERT INTO invoice_counters (year, last_number) VALUES ($1, 1)
             ON CONFLICT (year) DO UPDATE SET last_number = invoice_counters.last_number + 1
             RETURNING last_number
         ), inv AS (
             INSERT INTO invoices (id, number, year, sequence, user_id, subscription_id, status,
                 currency, period_start, period_end, subtotal, tax, total, tax_name, tax_rate_bp,
                 purpose, issued_at, paid_at, created_at, updated_at)
             SELECT $2, 'INV-' || $1 || '-' || lpad(n.last_number::text, greatest(6, length(n.last_number::text)), '0'),
                 $1, n.last_number, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $15, $15
             FROM n
             RETURNING id, number
         ), l AS (
             INSERT INTO invoice_lines (invoice_id, position, description, quantity, unit_price, amount)
             SELECT inv.id, l.position, l.description, l.quantity, l.unit_price, l.amount
             FROM inv, jsonb_to_recordset($17) AS l(position int, description text, quantity int,
                                                    unit_price bigint, amount bigint)
         ), paid AS (
             UPDATE wallet_transactions SET reference = inv.number FROM inv
             WHERE wallet_transactions.id = $18
         )
         SELECT number FROM inv",
    )
    .bind::<Int4, _>(draft.now.year())
    .bind::<SqlUuid, _>(draft.id)
    .bind::<SqlUuid, _>(draft.user_id)
    .bind::<Nullable<SqlUuid>, _>(draft.subscription_id)
    .bind::<Text, _>(draft.status.as_str())
    .bind::<Text, _>(draft.currency)
    .bind::<Nullable<Timestamptz>, _>(draft.period.map(|p| p.0))
    .bind::<Nullable<Timestamptz>, _>(draft.period.map(|p| p.1))
    .bind::<BigInt, _>(subtotal)
    .bind::<BigInt, _>(tax)
    .bind::<BigInt, _>(total)
    .bind::<Nullable<Text>, _>(tax_name)
    .bind::<Int4, _>(billing.tax_rate_bp)
    .bind::<Text, _>(draft.purpose)
    .bind::<Timestamptz, _>(draft.now)
    .bind::<Nullable<Timestamptz>, _>(paid_at)
    .bind::<Jsonb, _>(serde_json::Value::Array(lines))
    .bind::<Nullable<SqlUuid>, _>(draft.paid_by)
    .get_result::<Issued>(conn)
    .await?;
    Ok(issued.number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tax_rounds_half_up_to_the_minor_unit() {
        assert_eq!(tax_of(10_000, 1100), 1_100);
        assert_eq!(tax_of(5, 1000), 1); // 0.5 rounds up
        assert_eq!(tax_of(4, 1000), 0);
        assert_eq!(tax_of(12_345, 0), 0);
        let lines = vec![
            Line {
                description: "a".into(),
                quantity: 2,
                unit_price: 1_000,
            },
            Line {
                description: "b".into(),
                quantity: 1,
                unit_price: 333,
            },
        ];
        assert_eq!(totals(&lines, 1100), (2_333, 257, 2_590));
    }
}
