//! Wallets, the ledger, top-ups and invoices: rows and their queries.

use chrono::{DateTime, Utc};
use diesel::deserialize::FromSqlRow;
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::Conn;
use crate::db::schema::{invoice_lines, invoices, top_ups, wallet_transactions, wallets};
use crate::pagination::PageArgs;

#[derive(
    async_graphql::Enum,
    AsExpression,
    FromSqlRow,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TransactionType {
    TopUp,
    Subscription,
    Renewal,
    Upgrade,
    Refund,
    Adjustment,
    Coupon,
}

crate::text_enum!(TransactionType {
    TopUp => "TOP_UP",
    Subscription => "SUBSCRIPTION",
    Renewal => "RENEWAL",
    Upgrade => "UPGRADE",
    Refund => "REFUND",
    Adjustment => "ADJUSTMENT",
    Coupon => "COUPON",
});

#[derive(
    async_graphql::Enum,
    AsExpression,
    FromSqlRow,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TopUpStatus {
    Pending,
    Succeeded,
    Failed,
    Cancelled,
}

crate::text_enum!(TopUpStatus {
    Pending => "PENDING",
    Succeeded => "SUCCEEDED",
    Failed => "FAILED",
    Cancelled => "CANCELLED",
});

#[derive(
    async_graphql::Enum,
    AsExpression,
    FromSqlRow,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InvoiceStatus {
    /// Issued, not yet paid (a renewal the wallet could not cover).
    Open,
    Paid,
    /// Never to be paid (its subscription expired unpaid).
    Void,
}

crate::text_enum!(InvoiceStatus {
    Open => "OPEN",
    Paid => "PAID",
    Void => "VOID",
});

#[derive(Queryable, Selectable, Clone, Debug)]
#[diesel(table_name = wallets, check_for_backend(Pg))]
pub struct Wallet {
    pub user_id: Uuid,
    pub currency: String,
    pub balance: i64,
    pub stripe_customer_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable, Clone, Debug, Serialize, Deserialize)]
#[diesel(table_name = wallet_transactions, check_for_backend(Pg))]
#[serde(rename_all = "camelCase")]
pub struct WalletTransaction {
    pub id: Uuid,
    pub user_id: Uuid,
    #[diesel(column_name = type_)]
    pub kind: TransactionType,
    pub amount: i64,
    pub currency: String,
    pub balance_before: i64,
    pub balance_after: i64,
    pub reference: Option<String>,
    pub description: String,
    pub subscription_id: Option<Uuid>,
    pub invoice_id: Option<Uuid>,
    pub refund_of: Option<Uuid>,
    pub unique_key: Option<String>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Insertable, Debug)]
#[diesel(table_name = wallet_transactions)]
pub struct NewTransaction<'a> {
    pub user_id: Uuid,
    #[diesel(column_name = type_)]
    pub kind: TransactionType,
    pub amount: i64,
    pub currency: &'a str,
    pub balance_before: i64,
    pub balance_after: i64,
    pub reference: Option<&'a str>,
    pub description: &'a str,
    pub subscription_id: Option<Uuid>,
    pub invoice_id: Option<Uuid>,
    pub refund_of: Option<Uuid>,
    pub unique_key: Option<&'a str>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable, Clone, Debug)]
#[diesel(table_name = top_ups, check_for_backend(Pg))]
pub struct TopUp {
    pub id: Uuid,
    pub user_id: Uuid,
    pub amount: i64,
    pub currency: String,
    pub status: TopUpStatus,
    pub payment_intent_id: Option<String>,
    pub client_secret: Option<String>,
    pub failure_message: Option<String>,
    pub settled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable, Clone, Debug)]
#[diesel(table_name = invoices, check_for_backend(Pg))]
pub struct Invoice {
    pub id: Uuid,
    pub number: String,
    pub year: i32,
    pub sequence: i32,
    pub user_id: Uuid,
    pub subscription_id: Option<Uuid>,
    pub status: InvoiceStatus,
    pub currency: String,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
    pub subtotal: i64,
    pub tax: i64,
    pub total: i64,
    pub tax_name: Option<String>,
    pub tax_rate_bp: i32,
    pub purpose: String,
    pub issued_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable, Clone, Debug, Serialize, Deserialize)]
#[diesel(table_name = invoice_lines, check_for_backend(Pg))]
pub struct InvoiceLine {
    pub id: Uuid,
    pub invoice_id: Uuid,
    pub position: i32,
    pub description: String,
    pub quantity: i32,
    pub unit_price: i64,
    pub amount: i64,
}

// ---- wallets and the ledger

/// The user's wallet, locked until the transaction ends (made on first use).
pub async fn lock_wallet(conn: &mut Conn, user_id: Uuid, currency: &str) -> QueryResult<Wallet> {
    let locked = wallets::table
        .find(user_id)
        .for_update()
        .select(Wallet::as_select())
        .first(conn)
        .await
        .optional()?;
    if let Some(wallet) = locked {
        return Ok(wallet);
    }
    diesel::insert_into(wallets::table)
        .values((wallets::user_id.eq(user_id), wallets::currency.eq(currency)))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    wallets::table
        .find(user_id)
        .for_update()
        .select(Wallet::as_select())
        .first(conn)
        .await
}

pub async fn find_wallet(conn: &mut Conn, user_id: Uuid) -> QueryResult<Option<Wallet>> {
    wallets::table
        .find(user_id)
        .select(Wallet::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn set_balance(
    conn: &mut Conn,
    user_id: Uuid,
    balance: i64,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(wallets::table.find(user_id))
        .set((wallets::balance.eq(balance), wallets::updated_at.eq(now)))
        .execute(conn)
        .await
        .map(drop)
}

/// Remembers the wallet's Stripe customer unless one is already remembered (two first
/// top-ups racing keep the first); returns the one the wallet now has.
pub async fn set_stripe_customer(
    conn: &mut Conn,
    user_id: Uuid,
    customer_id: &str,
) -> QueryResult<Option<String>> {
    diesel::update(wallets::table.find(user_id))
        .filter(wallets::stripe_customer_id.is_null())
        .set(wallets::stripe_customer_id.eq(customer_id))
        .execute(conn)
        .await?;
    wallets::table
        .find(user_id)
        .select(wallets::stripe_customer_id)
        .first(conn)
        .await
}

pub async fn insert_transaction(
    conn: &mut Conn,
    row: &NewTransaction<'_>,
) -> QueryResult<WalletTransaction> {
    diesel::insert_into(wallet_transactions::table)
        .values(row)
        .returning(WalletTransaction::as_returning())
        .get_result(conn)
        .await
}

pub async fn transaction_by_key(
    conn: &mut Conn,
    key: &str,
) -> QueryResult<Option<WalletTransaction>> {
    wallet_transactions::table
        .filter(wallet_transactions::unique_key.eq(key))
        .select(WalletTransaction::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn find_transaction(conn: &mut Conn, id: Uuid) -> QueryResult<Option<WalletTransaction>> {
    wallet_transactions::table
        .find(id)
        .select(WalletTransaction::as_select())
        .first(conn)
        .await
        .optional()
}

/// What has been refunded of a movement so far (a positive number).
pub async fn refunded_of(conn: &mut Conn, id: Uuid) -> QueryResult<i64> {
    wallet_transactions::table
        .filter(wallet_transactions::refund_of.eq(id))
        .select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "coalesce(sum(amount), 0)::bigint",
        ))
        .first(conn)
        .await
}

#[derive(Debug, Clone, Default)]
pub struct TransactionFilter {
    pub user_id: Option<Uuid>,
    pub kind: Option<TransactionType>,
}

fn filtered(filter: &TransactionFilter) -> wallet_transactions::BoxedQuery<'static, Pg> {
    let mut query = wallet_transactions::table.into_boxed();
    if let Some(user_id) = filter.user_id {
        query = query.filter(wallet_transactions::user_id.eq(user_id));
    }
    if let Some(kind) = filter.kind {
        query = query.filter(wallet_transactions::type_.eq(kind));
    }
    query
}

pub async fn list_transactions(
    conn: &mut Conn,
    filter: &TransactionFilter,
    page: &PageArgs,
) -> QueryResult<Vec<WalletTransaction>> {
    crate::newest_first_page!(filtered(filter), wallet_transactions, page)
        .select(WalletTransaction::as_select())
        .load(conn)
        .await
}

pub async fn count_transactions(conn: &mut Conn, filter: &TransactionFilter) -> QueryResult<i64> {
    filtered(filter).count().get_result(conn).await
}

// ---- top-ups

pub async fn insert_top_up(
    conn: &mut Conn,
    user_id: Uuid,
    amount: i64,
    currency: &str,
    now: DateTime<Utc>,
) -> QueryResult<TopUp> {
    diesel::insert_into(top_ups::table)
        .values((
            top_ups::user_id.eq(user_id),
            top_ups::amount.eq(amount),
            top_ups::currency.eq(currency),
            top_ups::created_at.eq(now),
            top_ups::updated_at.eq(now),
        ))
        .returning(TopUp::as_returning())
        .get_result(conn)
        .await
}

pub async fn find_top_up(conn: &mut Conn, id: Uuid) -> QueryResult<Option<TopUp>> {
    top_ups::table
        .find(id)
        .select(TopUp::as_select())
        .first(conn)
        .await
        .optional()
}

/// Locked until the transaction ends.
pub async fn lock_top_up(conn: &mut Conn, id: Uuid) -> QueryResult<Option<TopUp>> {
    top_ups::table
        .find(id)
        .for_update()
        .select(TopUp::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn lock_top_up_by_intent(conn: &mut Conn, intent: &str) -> QueryResult<Option<TopUp>> {
    top_ups::table
        .filter(top_ups::payment_intent_id.eq(intent))
        .for_update()
        .select(TopUp::as_select())
        .first(conn)
        .await
        .optional()
}

/// Records the top-up's PaymentIntent unless it already has one (another retry of the same
/// createTopUp won) or is no longer PENDING; true when this one was recorded.
pub async fn set_top_up_intent(
    conn: &mut Conn,
    id: Uuid,
    intent: &str,
    client_secret: &str,
    now: DateTime<Utc>,
) -> QueryResult<bool> {
    let n = diesel::update(
        top_ups::table
            .find(id)
            .filter(top_ups::payment_intent_id.is_null())
            .filter(top_ups::status.eq(TopUpStatus::Pending)),
    )
    .set((
        top_ups::payment_intent_id.eq(intent),
        top_ups::client_secret.eq(client_secret),
        top_ups::updated_at.eq(now),
    ))
    .execute(conn)
    .await?;
    Ok(n == 1)
}

/// Marks a top-up FAILED with why it needs an operator (a payment that does not match it).
pub async fn flag_top_up(
    conn: &mut Conn,
    id: Uuid,
    message: &str,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    // FAILED: out of the pending cap and of the abandonment sweep; reconciliation asks
    // about it again only within its re-check window, and a matching success still credits.
    diesel::update(top_ups::table.find(id))
        .set((
            top_ups::status.eq(TopUpStatus::Failed),
            top_ups::failure_message.eq(message),
            top_ups::updated_at.eq(now),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// How many of the user's top-ups are PENDING.
pub async fn count_pending_top_ups(conn: &mut Conn, user_id: Uuid) -> QueryResult<i64> {
    top_ups::table
        .filter(top_ups::user_id.eq(user_id))
        .filter(top_ups::status.eq(TopUpStatus::Pending))
        .count()
        .get_result(conn)
        .await
}

pub async fn settle_top_up(
    conn: &mut Conn,
    id: Uuid,
    status: TopUpStatus,
    failure_message: Option<&str>,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(top_ups::table.find(id))
        .set((
            top_ups::status.eq(status),
            top_ups::failure_message.eq(failure_message),
            top_ups::settled_at.eq(now),
            top_ups::updated_at.eq(now),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Top-ups to ask Stripe about, oldest first, after the `(created_at, id)` of the last one
/// seen (a sweep pages through all of them, so old ones can't starve it): PENDING ones
/// created before `before`, and FAILED ones with a PaymentIntent (which can still be paid
/// with another card) created between `failed_since` and `before`.
pub async fn top_ups_to_reconcile(
    conn: &mut Conn,
    before: DateTime<Utc>,
    failed_since: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<TopUp>> {
    let mut query = top_ups::table
        .filter(top_ups::created_at.lt(before))
        .filter(
            top_ups::status.eq(TopUpStatus::Pending).or(top_ups::status
                .eq(TopUpStatus::Failed)
                .and(top_ups::payment_intent_id.is_not_null())
                .and(top_ups::created_at.ge(failed_since))),
        )
        .into_boxed();
    if let Some((created_at, id)) = after {
        query = query.filter(
            top_ups::created_at
                .gt(created_at)
                .or(top_ups::created_at.eq(created_at).and(top_ups::id.gt(id))),
        );
    }
    query
        .order((top_ups::created_at, top_ups::id))
        .limit(limit)
        .select(TopUp::as_select())
        .load(conn)
        .await
}

pub async fn list_top_ups(
    conn: &mut Conn,
    user_id: Uuid,
    page: &PageArgs,
) -> QueryResult<Vec<TopUp>> {
    crate::newest_first_page!(
        top_ups::table
            .filter(top_ups::user_id.eq(user_id))
            .into_boxed(),
        top_ups,
        page
    )
    .select(TopUp::as_select())
    .load(conn)
    .await
}

pub async fn count_top_ups(conn: &mut Conn, user_id: Uuid) -> QueryResult<i64> {
    top_ups::table
        .filter(top_ups::user_id.eq(user_id))
        .count()
        .get_result(conn)
        .await
}

/// Records a provider's event; false when it was recorded before (act on it only once).
pub async fn record_webhook_event(
    conn: &mut Conn,
    provider: &str,
    event_id: &str,
    event_type: &str,
) -> QueryResult<bool> {
    use crate::db::schema::processed_webhook_events as events;
    let inserted = diesel::insert_into(events::table)
        .values((
            events::provider.eq(provider),
            events::event_id.eq(event_id),
            events::event_type.eq(event_type),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

// ---- invoices

pub async fn find_invoice(conn: &mut Conn, id: Uuid) -> QueryResult<Option<Invoice>> {
    invoices::table
        .find(id)
        .select(Invoice::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn invoice_by_purpose(
    conn: &mut Conn,
    subscription_id: Uuid,
    purpose: &str,
) -> QueryResult<Option<Invoice>> {
    invoices::table
        .filter(invoices::subscription_id.eq(subscription_id))
        .filter(invoices::purpose.eq(purpose))
        .select(Invoice::as_select())
        .first(conn)
        .await
        .optional()
}

/// The subscription's unpaid invoice, if any (at most one is open at a time).
pub async fn open_invoice(conn: &mut Conn, subscription_id: Uuid) -> QueryResult<Option<Invoice>> {
    invoices::table
        .filter(invoices::subscription_id.eq(subscription_id))
        .filter(invoices::status.eq(InvoiceStatus::Open))
        .select(Invoice::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn lines_of(conn: &mut Conn, ids: &[Uuid]) -> QueryResult<Vec<InvoiceLine>> {
    invoice_lines::table
        .filter(invoice_lines::invoice_id.eq_any(ids))
        .order((invoice_lines::invoice_id, invoice_lines::position))
        .select(InvoiceLine::as_select())
        .load(conn)
        .await
}

/// Those of `ids` that are invoices of `user_id`.
pub async fn invoices_of_user(
    conn: &mut Conn,
    ids: &[Uuid],
    user_id: Uuid,
) -> QueryResult<Vec<Uuid>> {
    invoices::table
        .filter(invoices::id.eq_any(ids))
        .filter(invoices::user_id.eq(user_id))
        .select(invoices::id)
        .load(conn)
        .await
}

#[derive(Debug, Clone, Default)]
pub struct InvoiceFilter {
    pub user_id: Option<Uuid>,
    pub subscription_id: Option<Uuid>,
}

fn invoices_filtered(filter: &InvoiceFilter) -> invoices::BoxedQuery<'static, Pg> {
    let mut query = invoices::table.into_boxed();
    if let Some(user_id) = filter.user_id {
        query = query.filter(invoices::user_id.eq(user_id));
    }
    if let Some(id) = filter.subscription_id {
        query = query.filter(invoices::subscription_id.eq(id));
    }
    query
}

pub async fn list_invoices(
    conn: &mut Conn,
    filter: &InvoiceFilter,
    page: &PageArgs,
) -> QueryResult<Vec<Invoice>> {
    crate::newest_first_page!(invoices_filtered(filter), invoices, page)
        .select(Invoice::as_select())
        .load(conn)
        .await
}

pub async fn count_invoices(conn: &mut Conn, filter: &InvoiceFilter) -> QueryResult<i64> {
    invoices_filtered(filter).count().get_result(conn).await
}

pub async fn mark_invoice(
    conn: &mut Conn,
    id: Uuid,
    status: InvoiceStatus,
    paid_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(invoices::table.find(id))
        .set((
            invoices::status.eq(status),
            invoices::paid_at.eq(paid_at),
            invoices::updated_at.eq(now),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// Moves an unpaid invoice's period (a suspended subscription restarts when it is paid).
pub async fn set_invoice_period(
    conn: &mut Conn,
    id: Uuid,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(invoices::table.find(id))
        .set((
            invoices::period_start.eq(start),
            invoices::period_end.eq(end),
        ))
        .execute(conn)
        .await
        .map(drop)
}
