//! Moving money: every change of a balance is one ledger row written in the same
//! transaction as the cached balance, under the wallet's row lock, so concurrent debits
//! queue and the balance never goes below zero (the table's checks say so too).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::events::{WALLET_TOPIC, WalletEvent};
use super::model::{self, NewTransaction, TransactionType, WalletTransaction};
use crate::db::Conn;
use crate::error::{AppError, AppResult};

/// One movement to write. `amount` is signed: credits positive, debits negative.
#[derive(Debug, Clone)]
pub struct Posting<'a> {
    pub user_id: Uuid,
    pub kind: TransactionType,
    pub amount: i64,
    pub currency: &'a str,
    pub reference: Option<&'a str>,
    pub description: &'a str,
    pub subscription_id: Option<Uuid>,
    pub invoice_id: Option<Uuid>,
    pub refund_of: Option<Uuid>,
    /// Names a movement that must happen once (a top-up, one period's renewal).
    pub unique_key: Option<&'a str>,
    pub created_by: Option<Uuid>,
    pub now: DateTime<Utc>,
}

/// What `post` did.
#[derive(Debug, Clone)]
pub enum Posted {
    New(WalletTransaction),
    /// The unique key was posted before: nothing moved this time.
    Already(WalletTransaction),
}

impl Posted {
    pub fn transaction(&self) -> &WalletTransaction {
        match self {
            Posted::New(t) | Posted::Already(t) => t,
        }
    }
}

/// Writes one movement (call it inside the business step's transaction). A debit the
/// balance can't cover is PAYMENT_REQUIRED with the shortfall; a wallet in another
/// currency is a CONFLICT.
pub async fn post(conn: &mut Conn, p: &Posting<'_>) -> AppResult<Posted> {
    if p.amount == 0 {
        return Err(AppError::field("amount", "must not be zero"));
    }
    let wallet = model::lock_wallet(conn, p.user_id, p.currency).await?;
    if let Some(key) = p.unique_key
        && let Some(done) = model::transaction_by_key(conn, key).await?
    {
        return Ok(Posted::Already(done));
    }
    if wallet.currency != p.currency {
        return Err(AppError::Conflict(format!(
            "the wallet holds {} and cannot pay in {}",
            wallet.currency, p.currency
        )));
    }
    let after = wallet
        .balance
        .checked_add(p.amount)
        .ok_or_else(|| AppError::field("amount", "is too large"))?;
    if after < 0 {
        return Err(AppError::payment_required(
            -p.amount,
            wallet.balance,
            &wallet.currency,
        ));
    }
    let row = model::insert_transaction(
        conn,
        &NewTransaction {
            user_id: p.user_id,
            kind: p.kind,
            amount: p.amount,
            currency: &wallet.currency,
            balance_before: wallet.balance,
            balance_after: after,
            reference: p.reference,
            description: p.description,
            subscription_id: p.subscription_id,
            invoice_id: p.invoice_id,
            refund_of: p.refund_of,
            unique_key: p.unique_key,
            created_by: p.created_by,
            created_at: p.now,
        },
    )
    .await?;
    model::set_balance(conn, p.user_id, after, p.now).await?;
    super::events::emit(
        conn,
        WALLET_TOPIC,
        &WalletEvent {
            user_id: p.user_id,
            transaction_id: row.id,
        },
    )
    .await?;
    Ok(Posted::New(row))
}

/// The wallet's balance (zero before its first movement), for checks inside a step that
/// has not locked the wallet.
pub async fn balance(conn: &mut Conn, user_id: Uuid) -> AppResult<i64> {
    Ok(model::find_wallet(conn, user_id)
        .await?
        .map_or(0, |w| w.balance))
}
