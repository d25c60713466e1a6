//! Billing's business rules: what subscriptions charge and credit (inside their own
//! transactions), wallets and invoices as their owners and administrators see them, and
//! administrators' corrections.

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use serde_json::json;
use uuid::Uuid;

use super::invoice::{self, Draft, Line};
use super::model::{
    self, Invoice, InvoiceFilter, InvoiceLine, InvoiceStatus, TransactionFilter, TransactionType,
    Wallet, WalletTransaction,
};
use super::wallet::{self, Posted, Posting};
use crate::audit;
use crate::auth::Identity;
use crate::config::BillingSettings;
use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::pagination::{Page, PageArgs, Total};
use crate::state::AppState;

/// Job kind: settle the debts of a user whose wallet was just credited.
pub const SETTLE_JOB: &str = "billing.settle";

/// A wallet that could not pay: what was due and what it held.
#[derive(Debug, Clone, Copy)]
pub struct Shortfall {
    pub needed: i64,
    pub balance: i64,
}

impl Shortfall {
    pub fn error(self, currency: &str) -> AppError {
        AppError::payment_required(self.needed, self.balance, currency)
    }
}

/// A subscription's charge: the invoice it issues and the movement that pays it.
#[derive(Debug, Clone)]
pub struct Charge<'a> {
    pub user_id: Uuid,
    pub subscription_id: Uuid,
    pub kind: TransactionType,
    /// Unique per subscription: charging the same purpose twice moves money once.
    pub purpose: &'a str,
    pub currency: &'a str,
    pub period: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub lines: Vec<Line>,
    pub description: &'a str,
    pub now: DateTime<Utc>,
}

impl Charge<'_> {
    /// The charge's invoice, as issued with `status`.
    fn draft(&self, id: Uuid, status: InvoiceStatus, paid_by: Option<Uuid>) -> Draft<'_> {
        Draft {
            id,
            user_id: self.user_id,
            subscription_id: Some(self.subscription_id),
            purpose: self.purpose,
            currency: self.currency,
            period: self.period,
            lines: self.lines.clone(),
            status,
            now: self.now,
            paid_by,
        }
    }
}

/// A paid charge: its invoice and the movement (none when the total is zero).
#[derive(Debug, Clone)]
pub struct Paid {
    pub invoice_id: Uuid,
    pub number: String,
    pub total: i64,
    pub transaction: Option<WalletTransaction>,
}

/// The total a charge of these lines comes to, tax included.
pub fn total_of(billing: &BillingSettings, lines: &[Line]) -> i64 {
    invoice::totals(lines, billing.tax_rate_bp).2
}

/// Tax on an amount at the configured rate.
pub fn tax_of(billing: &BillingSettings, amount: i64) -> i64 {
    invoice::tax_of(amount, billing.tax_rate_bp)
}

/// The wallet, locked until the transaction ends: a step that checks the balance first
/// and then charges holds it throughout, so concurrent steps of one user queue.
pub async fn lock_wallet(conn: &mut Conn, user_id: Uuid, currency: &str) -> AppResult<Wallet> {
    let wallet = model::lock_wallet(conn, user_id, currency).await?;
    if wallet.currency != currency {
        return Err(AppError::Conflict(format!(
            "the wallet holds {} and cannot pay in {currency}",
            wallet.currency
        )));
    }
    Ok(wallet)
}

/// Debits the charge's total and issues its invoice PAID, in the caller's transaction.
/// When the wallet is short nothing changes and the shortfall is returned.
pub async fn charge(
    conn: &mut Conn,
    billing: &BillingSettings,
    c: &Charge<'_>,
) -> AppResult<Result<Paid, Shortfall>> {
    let total = total_of(billing, &c.lines);
    let wallet = lock_wallet(conn, c.user_id, c.currency).await?;
    if wallet.balance < total {
        return Ok(Err(Shortfall {
            needed: total,
            balance: wallet.balance,
        }));
    }
    let invoice_id = Uuid::new_v4();
    let key = format!("charge:{}:{}", c.subscription_id, c.purpose);
    let transaction = if total > 0 {
        match wallet::post(
            conn,
            &Posting {
                user_id: c.user_id,
                kind: c.kind,
                amount: -total,
                currency: c.currency,
                reference: None,
                description: c.description,
                subscription_id: Some(c.subscription_id),
                invoice_id: Some(invoice_id),
                refund_of: None,
                unique_key: Some(&key),
                created_by: None,
                now: c.now,
            },
        )
        .await?
        {
            Posted::New(t) => Some(t),
            // The caller's row lock and period checks make this unreachable; the unique
            // key is the backstop that keeps it from charging twice if they ever fail.
            Posted::Already(_) => {
                return Err(AppError::internal(anyhow::anyhow!(
                    "charge {key} was already posted"
                )));
            }
        }
    } else {
        None
    };
    let number = invoice::issue(
        conn,
        billing,
        &c.draft(
            invoice_id,
            InvoiceStatus::Paid,
            transaction.as_ref().map(|t| t.id),
        ),
    )
    .await?;
    Ok(Ok(Paid {
        invoice_id,
        number,
        total,
        transaction,
    }))
}

/// Issues the charge's invoice OPEN, to be paid later (`pay_open`); its number is taken now.
pub async fn issue_open(
    conn: &mut Conn,
    billing: &BillingSettings,
    c: &Charge<'_>,
) -> AppResult<Uuid> {
    let id = Uuid::new_v4();
    invoice::issue(conn, billing, &c.draft(id, InvoiceStatus::Open, None)).await?;
    Ok(id)
}

/// The wallet's balance (zero before its first movement), as the caller's transaction sees it.
pub async fn balance(conn: &mut Conn, user_id: Uuid) -> AppResult<i64> {
    wallet::balance(conn, user_id).await
}

/// The subscription's unpaid invoice, if any.
pub async fn open_invoice(conn: &mut Conn, subscription_id: Uuid) -> AppResult<Option<Invoice>> {
    Ok(model::open_invoice(conn, subscription_id).await?)
}

/// Pays an OPEN invoice from the wallet if it covers the total (caller's transaction).
/// `period` re-dates the invoice (a suspended subscription restarts when it pays).
pub async fn pay_open(
    conn: &mut Conn,
    invoice: &Invoice,
    kind: TransactionType,
    description: &str,
    period: Option<(DateTime<Utc>, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> AppResult<Result<Option<WalletTransaction>, Shortfall>> {
    let wallet = lock_wallet(conn, invoice.user_id, &invoice.currency).await?;
    if wallet.balance < invoice.total {
        return Ok(Err(Shortfall {
            needed: invoice.total,
            balance: wallet.balance,
        }));
    }
    let key = format!("invoice:{}", invoice.id);
    let transaction = if invoice.total > 0 {
        let posted = wallet::post(
            conn,
            &Posting {
                user_id: invoice.user_id,
                kind,
                amount: -invoice.total,
                currency: &invoice.currency,
                reference: Some(&invoice.number),
                description,
                subscription_id: invoice.subscription_id,
                invoice_id: Some(invoice.id),
                refund_of: None,
                unique_key: Some(&key),
                created_by: None,
                now,
            },
        )
        .await?;
        Some(posted.transaction().clone())
    } else {
        None
    };
    if let Some((start, end)) = period {
        model::set_invoice_period(conn, invoice.id, start, end).await?;
    }
    model::mark_invoice(conn, invoice.id, InvoiceStatus::Paid, Some(now), now).await?;
    Ok(Ok(transaction))
}

/// Voids the subscription's unpaid invoice (it expired without paying).
pub async fn void_open(
    conn: &mut Conn,
    subscription_id: Uuid,
    now: DateTime<Utc>,
) -> AppResult<()> {
    if let Some(open) = model::open_invoice(conn, subscription_id).await? {
        model::mark_invoice(conn, open.id, InvoiceStatus::Void, None, now).await?;
    }
    Ok(())
}

/// A credit to a user's wallet (a downgrade, a cancellation's unused part, a refund, an
/// administrator's adjustment), then a job to settle their debts with it.
#[derive(Debug, Clone)]
pub struct Credit<'a> {
    pub user_id: Uuid,
    pub kind: TransactionType,
    pub amount: i64,
    pub currency: &'a str,
    pub description: &'a str,
    pub reference: Option<&'a str>,
    pub subscription_id: Option<Uuid>,
    pub refund_of: Option<Uuid>,
    pub unique_key: Option<&'a str>,
    pub created_by: Option<Uuid>,
    pub now: DateTime<Utc>,
}

pub async fn credit(conn: &mut Conn, c: &Credit<'_>) -> AppResult<Posted> {
    let posted = posted_credit(conn, c).await?;
    if c.amount > 0 && matches!(posted, Posted::New(_)) {
        settle_soon(conn, c.user_id).await?;
    }
    Ok(posted)
}

/// The credit's movement alone.
async fn posted_credit(conn: &mut Conn, c: &Credit<'_>) -> AppResult<Posted> {
    wallet::post(
        conn,
        &Posting {
            user_id: c.user_id,
            kind: c.kind,
            amount: c.amount,
            currency: c.currency,
            reference: c.reference,
            description: c.description,
            subscription_id: c.subscription_id,
            invoice_id: None,
            refund_of: c.refund_of,
            unique_key: c.unique_key,
            created_by: c.created_by,
            now: c.now,
        },
    )
    .await
}

/// A debit that paid for a subscription's current period (its charge, an upgrade), with
/// what is left of it to give back and the tax rate it was charged at.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct PeriodDebit {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub left: i64,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub tax_rate_bp: i32,
}

/// The debits that paid for the period starting at `period_start`, newest first: what was
/// bought last (an upgrade) is given back first, with the tax it was paid with.
pub async fn period_debits(
    conn: &mut Conn,
    subscription_id: Uuid,
    period_start: DateTime<Utc>,
) -> AppResult<Vec<PeriodDebit>> {
    use diesel::sql_types::{Timestamptz, Uuid as SqlUuid};
    use diesel_async::RunQueryDsl;
    Ok(diesel::sql_query(
        "SELECT t.id, -t.amount - coalesce((SELECT sum(r.amount) FROM wallet_transactions r
                                             WHERE r.refund_of = t.id), 0)::bigint AS left,
                i.tax_rate_bp
         FROM wallet_transactions t JOIN invoices i ON i.id = t.invoice_id
         WHERE t.subscription_id = $1 AND i.subscription_id = $1 AND t.amount < 0
           AND i.period_start >= $2
         ORDER BY t.created_at DESC, t.id DESC",
    )
    .bind::<SqlUuid, _>(subscription_id)
    .bind::<Timestamptz, _>(period_start)
    .load(conn)
    .await?)
}

/// Gives back to the wallet `credit.amount` (before tax) of what was paid for a
/// subscription's current period, each part with its tax at the rate its debit was
/// charged at, as REFUND movements naming the debit they give back (so refunds, plan
/// changes and cancellations together never return more than was paid); returns what
/// was credited. Call it with the wallet locked.
pub async fn credit_back(
    conn: &mut Conn,
    debits: &[PeriodDebit],
    credit: &Credit<'_>,
) -> AppResult<i64> {
    let mut untaxed = credit.amount;
    let mut credited = 0;
    for debit in debits {
        if untaxed <= 0 {
            break;
        }
        let wanted = untaxed + invoice::tax_of(untaxed, debit.tax_rate_bp);
        let take = wanted.min(debit.left);
        if take <= 0 {
            continue;
        }
        // The untaxed part this debit gives back.
        let covered = if take == wanted {
            untaxed
        } else {
            (i128::from(take) * 10_000 / (10_000 + i128::from(debit.tax_rate_bp))) as i64
        };
        let key = credit.unique_key.map(|k| format!("{k}:{}", debit.id));
        posted_credit(
            conn,
            &Credit {
                amount: take,
                refund_of: Some(debit.id),
                unique_key: key.as_deref(),
                ..credit.clone()
            },
        )
        .await?;
        untaxed -= covered;
        credited += take;
    }
    if credited > 0 {
        settle_soon(conn, credit.user_id).await?;
    }
    Ok(credited)
}

/// Queues the settling of a user's PAST_DUE and SUSPENDED subscriptions, to run right
/// after this transaction commits (a durable job, so a crash can't lose it).
pub async fn settle_soon(conn: &mut Conn, user_id: Uuid) -> AppResult<()> {
    crate::jobs::model::enqueue(
        conn,
        SETTLE_JOB,
        json!({ "userId": user_id }),
        Utc::now(),
        None,
    )
    .await?;
    Ok(())
}

// ---- reading

/// A wallet event as `identity` may see it now: the movement, for the wallet's owner only.
pub async fn wallet_event_for(
    state: &AppState,
    identity: &Identity,
    event: &super::events::WalletEvent,
) -> AppResult<Option<WalletTransaction>> {
    let actor = identity.actor()?;
    if actor.user_id != event.user_id {
        return Ok(None);
    }
    let mut conn = state.pool.get().await?;
    Ok(model::find_transaction(&mut conn, event.transaction_id)
        .await?
        .filter(|t| t.user_id == actor.user_id))
}

/// The caller's wallet (an empty one before its first movement).
pub async fn my_wallet(state: &AppState, identity: &Identity) -> AppResult<Wallet> {
    let actor = identity.actor()?;
    let mut conn = state.pool.get().await?;
    let now = state.clock.now();
    Ok(model::find_wallet(&mut conn, actor.user_id)
        .await?
        .unwrap_or_else(|| Wallet {
            user_id: actor.user_id,
            currency: state.settings.default_currency.clone(),
            balance: 0,
            stripe_customer_id: None,
            created_at: now,
            updated_at: now,
        }))
}

/// Wallet movements, newest first: the caller's own (`mine`), or anyone's for
/// administrators.
pub async fn transactions(
    state: &AppState,
    identity: &Identity,
    mut filter: TransactionFilter,
    mine: bool,
    page: PageArgs,
) -> AppResult<Page<WalletTransaction>> {
    if mine {
        filter.user_id = Some(identity.actor()?.user_id);
    } else {
        identity.admin()?;
    }
    let mut conn = state.pool.get().await?;
    let rows = model::list_transactions(&mut conn, &filter, &page).await?;
    let total = Total::deferred(&state.pool, filter, |conn, filter| {
        model::count_transactions(conn, filter).boxed()
    });
    Ok(Page::from_rows(rows, &page, total))
}

/// Invoices, newest first: the caller's own (`mine`) or, for administrators, anyone's.
pub async fn invoices(
    state: &AppState,
    identity: &Identity,
    mut filter: InvoiceFilter,
    mine: bool,
    page: PageArgs,
) -> AppResult<Page<Invoice>> {
    if mine {
        filter.user_id = Some(identity.actor()?.user_id);
    } else {
        identity.admin()?;
    }
    let mut conn = state.pool.get().await?;
    let rows = model::list_invoices(&mut conn, &filter, &page).await?;
    let total = Total::deferred(&state.pool, filter, |conn, filter| {
        model::count_invoices(conn, filter).boxed()
    });
    Ok(Page::from_rows(rows, &page, total))
}

/// One invoice, for its owner or an administrator (others get NOT_FOUND: no probing).
pub async fn invoice(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<Invoice> {
    let actor = identity.actor()?;
    let mut conn = state.pool.get().await?;
    match model::find_invoice(&mut conn, id).await? {
        Some(i) if actor.is_admin() || i.user_id == actor.user_id => Ok(i),
        _ => Err(AppError::not_found("invoice")),
    }
}

/// The lines of invoices the caller may read, by invoice id.
pub async fn lines_of(
    state: &AppState,
    identity: &Identity,
    invoice_ids: &[Uuid],
) -> AppResult<Vec<InvoiceLine>> {
    let actor = identity.actor()?;
    let mut conn = state.pool.get().await?;
    let ids: Vec<Uuid> = if actor.is_admin() {
        invoice_ids.to_vec()
    } else {
        model::invoices_of_user(&mut conn, invoice_ids, actor.user_id).await?
    };
    Ok(model::lines_of(&mut conn, &ids).await?)
}

// ---- administrators

/// Moves a wallet by a signed amount (never below zero), audited; a credit settles debts.
pub async fn adjust_balance(
    state: &AppState,
    identity: &Identity,
    user_id: Uuid,
    amount: i64,
    reason: String,
) -> AppResult<WalletTransaction> {
    let actor = identity.admin()?;
    let reason = reason.trim().to_string();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(AppError::field(
            "reason",
            "must say why, in at most 500 characters",
        ));
    }
    if reason.chars().any(crate::subscriptions::service::is_hidden) {
        return Err(AppError::field(
            "reason",
            "must not contain control, invisible or direction-changing characters",
        ));
    }
    if amount == 0 {
        return Err(AppError::field("amount", "must not be zero"));
    }
    let currency = state.settings.default_currency.clone();
    let now = state.clock.now();
    let admin = actor.user_id;
    let tx = audit::audited(state, actor, "wallet.adjust", "Wallet", move |conn| {
        async move {
            crate::users::service::require_exists(conn, user_id).await?;
            let description = format!("Adjustment: {reason}");
            let posted = credit(
                conn,
                &Credit {
                    user_id,
                    kind: TransactionType::Adjustment,
                    amount,
                    currency: &currency,
                    description: &description,
                    reference: None,
                    subscription_id: None,
                    refund_of: None,
                    unique_key: None,
                    created_by: Some(admin),
                    now,
                },
            )
            .await
            .map_err(|e| match e {
                // Said to an administrator: the balance can't go below zero.
                AppError::PaymentRequired {
                    shortfall,
                    currency,
                    ..
                } => AppError::Conflict(format!(
                    "a wallet never goes below zero: this debit is {} {currency} more than it holds",
                    crate::money::format_amount(shortfall, &currency)
                )),
                other => other,
            })?;
            let tx = posted.transaction().clone();
            let meta = json!({ "userId": user_id, "amount": amount, "currency": currency, "reason": reason, "transactionId": tx.id });
            Ok((tx, Some(user_id), meta))
        }
        .boxed()
    })
    .await?;
    state.jobs_wakeup.notify_waiters();
    state.events.outbox_written();
    Ok(tx)
}

/// Gives back (part of) a debit to the wallet, at most what is left unrefunded; audited.
pub async fn refund(
    state: &AppState,
    identity: &Identity,
    transaction_id: Uuid,
    amount: Option<i64>,
) -> AppResult<WalletTransaction> {
    let actor = identity.admin()?;
    let now = state.clock.now();
    let admin = actor.user_id;
    let tx = audit::audited(state, actor, "wallet.refund", "WalletTransaction", move |conn| {
        async move {
            let original = model::find_transaction(conn, transaction_id)
                .await?
                .ok_or_else(|| AppError::not_found("transaction"))?;
            if original.amount >= 0 {
                return Err(AppError::Conflict(
                    "only a debit can be refunded; adjust the balance instead".into(),
                ));
            }
            // Lock the wallet before reading what was refunded: refunds of one debit queue.
            lock_wallet(conn, original.user_id, &original.currency).await?;
            let refunded = model::refunded_of(conn, original.id).await?;
            let left = -original.amount - refunded;
            let amount = amount.unwrap_or(left);
            if amount <= 0 {
                return Err(AppError::field("amount", "must be greater than zero"));
            }
            if amount > left {
                return Err(AppError::Conflict(format!(
                    "at most {} {} of this movement is left to refund",
                    crate::money::format_amount(left, &original.currency),
                    original.currency
                )));
            }
            let description = format!("Refund of {}", original.description);
            let posted = credit(
                conn,
                &Credit {
                    user_id: original.user_id,
                    kind: TransactionType::Refund,
                    amount,
                    currency: &original.currency,
                    description: &description,
                    reference: original.reference.as_deref(),
                    subscription_id: original.subscription_id,
                    refund_of: Some(original.id),
                    unique_key: None,
                    created_by: Some(admin),
                    now,
                },
            )
            .await?;
            let tx = posted.transaction().clone();
            let meta = json!({ "userId": original.user_id, "amount": amount, "refundOf": original.id });
            Ok((tx, Some(transaction_id), meta))
        }
        .boxed()
    })
    .await?;
    state.jobs_wakeup.notify_waiters();
    state.events.outbox_written();
    Ok(tx)
}

/// Credits a seeded demo account's starting balance, once (a recorded ADJUSTMENT).
pub async fn seed_balance(
    conn: &mut Conn,
    email: &str,
    amount: i64,
    currency: &str,
) -> AppResult<()> {
    use diesel_async::AsyncConnection;
    let user_id = crate::users::service::id_by_email(conn, email).await?;
    let key = format!("seed:starting-balance:{user_id}");
    // Posted directly: a new demo account owes nothing, so no settling job is queued.
    conn.transaction(async |conn| {
        wallet::post(
            conn,
            &Posting {
                user_id,
                kind: TransactionType::Adjustment,
                amount,
                currency,
                reference: None,
                description: "Starting balance of the demo account",
                subscription_id: None,
                invoice_id: None,
                refund_of: None,
                unique_key: Some(&key),
                created_by: None,
                now: Utc::now(),
            },
        )
        .await
    })
    .await?;
    Ok(())
}

// ---- consistency and figures

/// The integrity check over the whole database (the CLI's `billing verify`, the tests).
pub async fn verify(conn: &mut Conn) -> AppResult<super::integrity::Report> {
    Ok(super::integrity::check(conn).await?)
}

/// Administrators: the integrity check.
pub async fn integrity(
    state: &AppState,
    identity: &Identity,
) -> AppResult<super::integrity::Report> {
    identity.admin()?;
    let mut conn = state.pool.get().await?;
    verify(&mut conn).await
}

/// Administrators: MRR, subscriptions by status, revenue and top-ups of the last 30 days.
pub async fn stats(state: &AppState, identity: &Identity) -> AppResult<super::stats::BillingStats> {
    identity.admin()?;
    let mut conn = state.pool.get().await?;
    Ok(super::stats::compute(
        &mut conn,
        &state.settings.default_currency,
        state.clock.now(),
    )
    .await?)
}

/// What a printable invoice shows: the invoice, its lines, its customer and subscription.
#[derive(Debug, Clone)]
pub struct Printable {
    pub invoice: Invoice,
    pub lines: Vec<InvoiceLine>,
    pub customer: crate::users::model::User,
    pub subscription_name: Option<String>,
}

/// One invoice to print, for its owner or an administrator (NOT_FOUND otherwise).
pub async fn printable(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<Printable> {
    let invoice = invoice(state, identity, id).await?;
    let mut conn = state.pool.get().await?;
    let lines = model::lines_of(&mut conn, &[invoice.id]).await?;
    let customer = crate::users::model::find(&mut conn, invoice.user_id)
        .await?
        .ok_or_else(|| AppError::not_found("invoice"))?;
    let subscription_name = match invoice.subscription_id {
        Some(sid) => crate::subscriptions::model::find(&mut conn, sid)
            .await?
            .map(|s| s.name),
        None => None,
    };
    Ok(Printable {
        invoice,
        lines,
        customer,
        subscription_name,
    })
}
