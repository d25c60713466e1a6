//! Top-ups through Stripe: a PaymentIntent per top-up, the wallet credited once when
//! Stripe says it succeeded (a signed webhook, or the reconciliation job asking Stripe),
//! and only for the amount and currency of the top-up.
//!
//! createTopUp commits the PENDING top-up (and its idempotency key) first, then talks to
//! Stripe holding no database connection, then records the PaymentIntent only if the
//! top-up has none yet: Stripe's Idempotency-Key gives retries of one top-up the same
//! PaymentIntent, and should it not (localstripe), the first one recorded wins and the
//! others are cancelled. A PaymentIntent is credited under the key `topup:<id>`, so the
//! webhook, a replay of it and the reconciliation job together credit it once.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::{self, TopUp, TopUpStatus, TransactionType};
use super::service::{Credit, credit};
use super::stripe::{self, PaymentIntent, SignatureError, Stripe};
use super::wallet::Posted;
use crate::auth::Identity;
use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::idempotency::{self, Claim};
use crate::pagination::{Page, PageArgs, Total};
use crate::state::AppState;

/// Job kind: settle PENDING top-ups whose webhook never came, by asking Stripe.
pub const RECONCILE_JOB: &str = "billing.reconcile_top_ups";

/// A FAILED top-up's PaymentIntent can still be paid with another card: reconciliation
/// keeps asking Stripe about it for this many days after the top-up was made.
pub const FAILED_RECHECK_DAYS: i64 = 7;

/// A PENDING top-up still unpaid this many hours after its PaymentIntent was made is
/// abandoned: the PaymentIntent is cancelled at Stripe and the top-up marked CANCELLED.
pub const ABANDON_AFTER_HOURS: i64 = 24;

/// At most this many PENDING top-ups per user; createTopUp answers CONFLICT beyond.
pub const MAX_PENDING_PER_USER: i64 = 5;

/// `processed_webhook_events.provider` of Stripe's events.
const PROVIDER: &str = "stripe";

/// A new (or replayed) top-up and the secret the client confirms its payment with.
#[derive(Debug, Clone)]
pub struct CreatedTopUp {
    pub top_up: TopUp,
    pub client_secret: String,
}

/// What an idempotency key remembers of a createTopUp.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TopUpIds {
    top_up_id: Uuid,
}

fn stripe_of(state: &AppState) -> AppResult<&Stripe> {
    state.stripe.as_ref().ok_or_else(|| {
        AppError::Conflict(
            "top-ups are not configured on this server (no STRIPE_SECRET_KEY); an administrator can credit your wallet with adjustWalletBalance".into(),
        )
    })
}

/// `amount` (a decimal string in major units of the platform currency) within the limits.
fn validate_amount(state: &AppState, amount: &str) -> AppResult<i64> {
    let currency = &state.settings.default_currency;
    let billing = &state.settings.billing;
    let minor = crate::money::parse_amount("amount", amount, currency)?;
    if minor < billing.top_up_min || minor > billing.top_up_max {
        return Err(AppError::field(
            "amount",
            format!(
                "must be between {} and {} {currency}",
                crate::money::format_amount(billing.top_up_min, currency),
                crate::money::format_amount(billing.top_up_max, currency),
            ),
        ));
    }
    stripe::stripe_amount(minor, currency).map_err(|why| AppError::field("amount", why))?;
    Ok(minor)
}

/// The top-up and its client secret once it has a PaymentIntent.
fn started(top_up: TopUp) -> Option<CreatedTopUp> {
    match (&top_up.payment_intent_id, &top_up.client_secret) {
        (Some(_), Some(secret)) => {
            let client_secret = secret.clone();
            Some(CreatedTopUp {
                top_up,
                client_secret,
            })
        }
        _ => None,
    }
}

fn not_startable() -> AppError {
    AppError::Conflict(
        "this top-up could not be started; start a new one with another idempotency key".into(),
    )
}

/// Starts a top-up of the caller's wallet: a PENDING top-up and its PaymentIntent. The same
/// idempotency key (within 24 h) returns the same top-up and client secret.
pub async fn create_top_up(
    state: &AppState,
    identity: &Identity,
    amount: &str,
    idempotency_key: Option<&str>,
) -> AppResult<CreatedTopUp> {
    let actor = identity.actor()?.clone();
    let stripe = stripe_of(state)?;
    let amount = validate_amount(state, amount)?;
    let key = idempotency::validate(idempotency_key)?;
    let currency = state.settings.default_currency.clone();
    let now = state.clock.now();

    // 1. The top-up row and the key, committed before Stripe hears of it. The key is claimed
    //    before the wallet is locked, in the order `subscribe` takes them, so the two can't
    //    deadlock on one user's key.
    let (top_up, customer) = {
        let mut conn = state.pool.get().await?;
        conn.transaction(async |conn| {
            let mut replayed = None;
            if let Some(key) = &key {
                let args = serde_json::json!({ "amount": amount, "currency": currency });
                if let Claim::Replay(ids) =
                    idempotency::claim(conn, actor.user_id, key, "createTopUp", &args, now).await?
                {
                    let ids: TopUpIds = serde_json::from_value(ids).map_err(AppError::internal)?;
                    replayed = Some(ids.top_up_id);
                }
            }
            // Also serializes one user's createTopUps, which keeps the pending cap exact.
            let wallet = super::service::lock_wallet(conn, actor.user_id, &currency).await?;
            if let Some(id) = replayed {
                let top_up = model::find_top_up(conn, id)
                    .await?
                    .ok_or_else(|| AppError::not_found("top-up"))?;
                return Ok::<_, AppError>((top_up, wallet.stripe_customer_id));
            }
            if model::count_pending_top_ups(conn, actor.user_id).await? >= MAX_PENDING_PER_USER {
                return Err(AppError::Conflict(format!(
                    "you already have {MAX_PENDING_PER_USER} top-ups waiting for payment; pay one of them or wait until they expire ({ABANDON_AFTER_HOURS} h) before starting another"
                )));
            }
            let top_up = model::insert_top_up(conn, actor.user_id, amount, &currency, now).await?;
            if let Some(key) = &key {
                idempotency::finish(
                    conn,
                    actor.user_id,
                    key,
                    &TopUpIds {
                        top_up_id: top_up.id,
                    },
                )
                .await?;
            }
            Ok((top_up, wallet.stripe_customer_id))
        })
        .await?
    };
    if top_up.payment_intent_id.is_some() {
        return started(top_up).ok_or_else(not_startable);
    }
    if top_up.status != TopUpStatus::Pending {
        return Err(not_startable());
    }

    // No database connection is held across a call to Stripe below: a slow Stripe must not
    // drain the pool.
    // 2. The user's Stripe customer, made on first use.
    let customer = match customer {
        Some(customer) => customer,
        None => {
            let email = crate::users::service::me(state, identity).await?.email;
            // One key per user: concurrent first top-ups get the same customer from Stripe,
            // and the conditional update keeps whichever was remembered first.
            let made = stripe
                .create_customer(
                    actor.user_id,
                    Some(&email),
                    &format!("podium-customer-{}", actor.user_id),
                )
                .await
                .map_err(AppError::internal)?;
            let mut conn = state.pool.get().await?;
            model::set_stripe_customer(&mut conn, actor.user_id, &made)
                .await?
                .unwrap_or(made)
        }
    };

    // 3. The PaymentIntent, recorded only if no retry of this top-up recorded one first.
    let intent = stripe
        .create_payment_intent(
            top_up.amount,
            &top_up.currency,
            &customer,
            top_up.id,
            top_up.user_id,
            &format!("podium-topup-{}", top_up.id),
        )
        .await
        .map_err(AppError::internal)?;
    let client_secret = intent.client_secret.clone().ok_or_else(|| {
        AppError::internal(anyhow::anyhow!("the PaymentIntent has no client secret"))
    })?;
    let (recorded, stored) = {
        let mut conn = state.pool.get().await?;
        let now = state.clock.now();
        let recorded =
            model::set_top_up_intent(&mut conn, top_up.id, &intent.id, &client_secret, now).await?;
        let stored = model::find_top_up(&mut conn, top_up.id)
            .await?
            .ok_or_else(|| AppError::not_found("top-up"))?;
        (recorded, stored)
    };
    if !recorded {
        // Another retry won. A PaymentIntent other than its own is never shown to the
        // customer: cancel it so it can't be paid (best effort; it is harmless unpaid).
        if stored.payment_intent_id.as_deref() != Some(intent.id.as_str())
            && let Err(e) = stripe.cancel_payment_intent(&intent.id).await
        {
            tracing::warn!(top_up_id = %top_up.id, payment_intent = %intent.id, error = %e,
                "cancelling a surplus PaymentIntent failed");
        }
        return started(stored).ok_or_else(not_startable);
    }
    tracing::info!(top_up_id = %stored.id, user_id = %actor.user_id,
        payment_intent = %intent.id, "top-up started");
    Ok(CreatedTopUp {
        top_up: stored,
        client_secret,
    })
}

/// The caller's top-ups, newest first.
pub async fn my_top_ups(
    state: &AppState,
    identity: &Identity,
    page: PageArgs,
) -> AppResult<Page<TopUp>> {
    let user_id = identity.actor()?.user_id;
    let mut conn = state.pool.get().await?;
    let rows = model::list_top_ups(&mut conn, user_id, &page).await?;
    let total = Total::deferred(&state.pool, user_id, |conn, user_id| {
        model::count_top_ups(conn, *user_id).boxed()
    });
    Ok(Page::from_rows(rows, &page, total))
}

/// What Stripe says became of a PaymentIntent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded(Paid),
    Failed(String),
    Canceled,
    /// Still waiting for the customer or the bank: leave it.
    Open,
}

/// What Stripe says was paid: checked against the top-up before anything is credited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paid {
    pub amount: i64,
    pub amount_received: Option<i64>,
    pub currency: String,
}

impl Paid {
    fn of(intent: &PaymentIntent) -> Self {
        Paid {
            amount: intent.amount,
            amount_received: intent.amount_received,
            currency: intent.currency.clone(),
        }
    }

    /// Whether this is exactly the top-up's amount and currency (Stripe's minor units are
    /// ours: see `stripe::stripe_amount`).
    fn matches(&self, top_up: &TopUp) -> bool {
        self.amount == top_up.amount
            && self.amount_received.unwrap_or(top_up.amount) == top_up.amount
            && self.currency.eq_ignore_ascii_case(&top_up.currency)
    }
}

impl Outcome {
    /// From the PaymentIntent's current state (what the reconciliation job sees). A
    /// PaymentIntent whose last attempt failed waits for another payment method at Stripe;
    /// the top-up is marked FAILED, and is still credited if a later attempt succeeds.
    pub fn of(intent: &PaymentIntent) -> Self {
        match intent.status.as_str() {
            "succeeded" => Outcome::Succeeded(Paid::of(intent)),
            "canceled" => Outcome::Canceled,
            "requires_payment_method" if intent.last_payment_error.is_some() => {
                Outcome::Failed(intent.failure_message())
            }
            _ => Outcome::Open,
        }
    }
}

/// What `settle` did to a top-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// The wallet was credited now.
    Credited,
    /// Marked FAILED or CANCELLED.
    Closed,
    /// Stripe's amount or currency differs from the top-up's: nothing credited, flagged.
    Mismatch,
    /// Nothing to do (already so, or still open).
    Unchanged,
}

/// Applies an outcome to a top-up (locked by the caller's transaction). Money that arrived
/// is always credited (once, by unique key), even after a failure was recorded, but only
/// when it is the top-up's amount and currency; a late failure never undoes a success.
async fn settle(
    state: &AppState,
    conn: &mut Conn,
    top_up: &TopUp,
    intent_id: &str,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> AppResult<Settled> {
    match outcome {
        Outcome::Succeeded(paid) if !paid.matches(top_up) => {
            tracing::error!(top_up_id = %top_up.id, payment_intent = intent_id,
                expected_amount = top_up.amount, expected_currency = %top_up.currency,
                stripe_amount = paid.amount, stripe_amount_received = ?paid.amount_received,
                stripe_currency = %paid.currency,
                "a PaymentIntent succeeded for another amount or currency than its top-up: nothing credited, an operator must look into it");
            if top_up.status != TopUpStatus::Succeeded {
                model::flag_top_up(
                    conn,
                    top_up.id,
                    "the payment at Stripe does not match this top-up's amount or currency; nothing was credited and support will look into it",
                    now,
                )
                .await?;
            }
            Ok(Settled::Mismatch)
        }
        Outcome::Succeeded(_) => {
            if top_up.status != TopUpStatus::Succeeded {
                model::settle_top_up(conn, top_up.id, TopUpStatus::Succeeded, None, now).await?;
            }
            let key = format!("topup:{}", top_up.id);
            let posted = credit(
                conn,
                &Credit {
                    user_id: top_up.user_id,
                    kind: TransactionType::TopUp,
                    amount: top_up.amount,
                    currency: &top_up.currency,
                    description: "Top-up by card (Stripe)",
                    reference: Some(intent_id),
                    subscription_id: None,
                    refund_of: None,
                    unique_key: Some(&key),
                    created_by: None,
                    now,
                },
            )
            .await?;
            Ok(match posted {
                Posted::New(t) => {
                    crate::email::notify::top_up_received(conn, state, top_up, t.balance_after)
                        .await?;
                    Settled::Credited
                }
                _ => Settled::Unchanged,
            })
        }
        Outcome::Failed(message) => {
            if top_up.status == TopUpStatus::Pending {
                model::settle_top_up(conn, top_up.id, TopUpStatus::Failed, Some(message), now)
                    .await?;
                return Ok(Settled::Closed);
            }
            Ok(Settled::Unchanged)
        }
        Outcome::Canceled => {
            if matches!(top_up.status, TopUpStatus::Pending | TopUpStatus::Failed) {
                model::settle_top_up(conn, top_up.id, TopUpStatus::Cancelled, None, now).await?;
                return Ok(Settled::Closed);
            }
            Ok(Settled::Unchanged)
        }
        Outcome::Open => Ok(Settled::Unchanged),
    }
}

/// What the webhook endpoint answers.
#[derive(Debug)]
pub enum WebhookResult {
    /// Acted on, a duplicate, or nothing to do: 200.
    Accepted,
    /// Missing, malformed, wrong or stale signature, or an unreadable body: 400.
    Rejected(&'static str),
    /// No STRIPE_WEBHOOK_SECRET: 503, so Stripe retries once it is configured.
    NotConfigured,
    /// A database failure: 500, so Stripe retries.
    Failed(AppError),
}

#[derive(Deserialize)]
struct Event {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: EventData,
}

#[derive(Deserialize)]
struct EventData {
    object: serde_json::Value,
}

/// Handles one delivery to `POST /webhooks/stripe`: verifies its signature, then acts on a
/// PaymentIntent event once per event id (recorded in the same transaction as its effect).
pub async fn handle_webhook(
    state: &AppState,
    payload: &[u8],
    signature: Option<&str>,
) -> WebhookResult {
    let Some(secret) = state.settings.billing.stripe_webhook_secret.as_deref() else {
        tracing::warn!("a Stripe webhook arrived but STRIPE_WEBHOOK_SECRET is not set");
        return WebhookResult::NotConfigured;
    };
    let Some(signature) = signature else {
        return WebhookResult::Rejected("missing Stripe-Signature");
    };
    // Signatures are about real time, not the billing clock tests move.
    match stripe::verify_signature(payload, signature, secret, Utc::now().timestamp()) {
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(reason = ?e, "a Stripe webhook with a bad signature was refused");
            return WebhookResult::Rejected(match e {
                SignatureError::Malformed => "malformed Stripe-Signature",
                SignatureError::Mismatch => "signature mismatch",
                SignatureError::Stale => "signature too old",
            });
        }
    }
    let event: Event = match serde_json::from_slice(payload) {
        Ok(event) => event,
        Err(_) => return WebhookResult::Rejected("unreadable event"),
    };
    if !matches!(
        event.kind.as_str(),
        "payment_intent.succeeded" | "payment_intent.payment_failed" | "payment_intent.canceled"
    ) {
        tracing::debug!(event_id = %event.id, kind = %event.kind, "Stripe event ignored");
        return WebhookResult::Accepted;
    }
    // Correctly signed, so from Stripe: answering 400 would only make it retry for days.
    let Some(intent_id) = event.data.object["id"].as_str().map(str::to_string) else {
        tracing::warn!(event_id = %event.id, kind = %event.kind,
            "a signed Stripe event without a PaymentIntent id: ignored");
        return WebhookResult::Accepted;
    };
    let intent: Option<PaymentIntent> = serde_json::from_value(event.data.object.clone()).ok();
    let outcome = match (event.kind.as_str(), intent) {
        ("payment_intent.succeeded", Some(intent)) => Outcome::Succeeded(Paid::of(&intent)),
        ("payment_intent.succeeded", None) => {
            tracing::error!(event_id = %event.id, payment_intent = %intent_id,
                "a signed payment_intent.succeeded without a readable amount: nothing credited");
            return WebhookResult::Accepted;
        }
        ("payment_intent.payment_failed", intent) => Outcome::Failed(
            intent
                .map(|i| i.failure_message())
                .unwrap_or_else(|| "the payment failed".into()),
        ),
        _ => Outcome::Canceled,
    };
    match apply_event(state, &event, &intent_id, &outcome).await {
        Ok(settled) => {
            if settled == Settled::Credited {
                state.jobs_wakeup.notify_waiters();
                state.events.outbox_written();
            }
            WebhookResult::Accepted
        }
        Err(e) => WebhookResult::Failed(e),
    }
}

async fn apply_event(
    state: &AppState,
    event: &Event,
    intent_id: &str,
    outcome: &Outcome,
) -> AppResult<Settled> {
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    conn.transaction(async |conn| {
        if !model::record_webhook_event(conn, PROVIDER, &event.id, &event.kind).await? {
            tracing::info!(event_id = %event.id, kind = %event.kind, "Stripe event already processed");
            return Ok(Settled::Unchanged);
        }
        let Some(top_up) = model::lock_top_up_by_intent(conn, intent_id).await? else {
            tracing::warn!(event_id = %event.id, payment_intent = intent_id,
                "Stripe event for a PaymentIntent that is not a top-up here: ignored");
            return Ok(Settled::Unchanged);
        };
        let settled = settle(state, conn, &top_up, intent_id, outcome, now).await?;
        tracing::info!(event_id = %event.id, kind = %event.kind, top_up_id = %top_up.id, ?settled,
            "Stripe event processed");
        Ok::<_, AppError>(settled)
    })
    .await
}

/// What a reconciliation sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Top-ups looked at (PENDING, and FAILED within `FAILED_RECHECK_DAYS`).
    pub checked: usize,
    /// Credited now (their webhook never came).
    pub credited: usize,
    /// Marked FAILED or CANCELLED by what Stripe says.
    pub closed: usize,
    /// Unpaid after `ABANDON_AFTER_HOURS`: cancelled at Stripe and marked CANCELLED.
    pub expired: usize,
    /// Paid at Stripe for another amount or currency: nothing credited, flagged.
    pub mismatched: usize,
    /// Stripe could not be asked (or cancel); tried again next time.
    pub errors: usize,
}

/// The reconciliation job: every top-up still PENDING `top_up_reconcile_after` after it
/// was made is settled by what Stripe says of its PaymentIntent (credited once through the
/// same path as the webhook; failed or canceled marked; still open left for next time). A
/// FAILED top-up is asked about too for `FAILED_RECHECK_DAYS` (another card may have paid
/// it since). A top-up unpaid after `ABANDON_AFTER_HOURS` has its PaymentIntent cancelled at
/// Stripe and is marked CANCELLED, so nothing is asked about forever. A top-up that never
/// got a PaymentIntent (its creation failed half-way) is marked FAILED.
pub async fn reconcile(state: &AppState) -> anyhow::Result<Reconciled> {
    const BATCH: i64 = 100;
    let mut done = Reconciled::default();
    let Some(stripe) = state.stripe.as_ref() else {
        return Ok(done);
    };
    let after = chrono::Duration::from_std(state.settings.billing.top_up_reconcile_after)?;
    let start = state.clock.now();
    let before = start - after;
    let failed_since = start - chrono::Duration::days(FAILED_RECHECK_DAYS);
    let abandoned_before = start - chrono::Duration::hours(ABANDON_AFTER_HOURS);
    let mut cursor = None;
    loop {
        let batch = {
            let mut conn = state.pool.get().await?;
            model::top_ups_to_reconcile(&mut conn, before, failed_since, cursor, BATCH).await?
        };
        let Some(last) = batch.last() else { break };
        cursor = Some((last.created_at, last.id));
        for top_up in &batch {
            done.checked += 1;
            let (intent_id, mut outcome) = match &top_up.payment_intent_id {
                None => (
                    None,
                    Outcome::Failed("no payment was started for this top-up".into()),
                ),
                Some(id) => match stripe.retrieve_payment_intent(id).await {
                    Ok(intent) => (Some(intent.id.clone()), Outcome::of(&intent)),
                    Err(e) => {
                        done.errors += 1;
                        tracing::warn!(top_up_id = %top_up.id, error = %e, "asking Stripe about a top-up failed");
                        continue;
                    }
                },
            };
            let unpaid = matches!(outcome, Outcome::Open | Outcome::Failed(_));
            let mut expiring = false;
            // Only PENDING ones, counted from when their PaymentIntent was recorded (a retry
            // may have made it long after the top-up); FAILED ones keep their re-check window.
            if let (true, Some(id)) = (unpaid, &intent_id)
                && top_up.status == TopUpStatus::Pending
                && top_up.updated_at < abandoned_before
            {
                match stripe.cancel_payment_intent(id).await {
                    Ok(intent) => {
                        outcome = Outcome::of(&intent);
                        expiring = outcome == Outcome::Canceled;
                    }
                    Err(e) => {
                        // Perhaps paid meanwhile: the next run sees it.
                        done.errors += 1;
                        tracing::warn!(top_up_id = %top_up.id, error = %e,
                            "cancelling an abandoned top-up's PaymentIntent failed");
                        continue;
                    }
                }
            }
            // Open, or failed again: nothing new to record.
            if outcome == Outcome::Open
                || (matches!(outcome, Outcome::Failed(_)) && top_up.status == TopUpStatus::Failed)
            {
                continue;
            }
            let now = state.clock.now();
            let mut conn = state.pool.get().await?;
            let settled = conn
                .transaction(async |conn| {
                    // Locked and re-read: a webhook (or a createTopUp still making the
                    // PaymentIntent) may have got there first.
                    let Some(current) = model::lock_top_up(conn, top_up.id).await? else {
                        return Ok::<_, AppError>(None);
                    };
                    if current.status != top_up.status
                        || current.payment_intent_id.as_deref() != intent_id.as_deref()
                    {
                        return Ok(None);
                    }
                    let intent = intent_id.as_deref().unwrap_or("");
                    Ok(Some(
                        settle(state, conn, &current, intent, &outcome, now).await?,
                    ))
                })
                .await
                .map_err(|e| anyhow::anyhow!("settling top-up {}: {}", top_up.id, e.message()))?;
            match settled {
                Some(Settled::Credited) => done.credited += 1,
                Some(Settled::Closed) if expiring => done.expired += 1,
                Some(Settled::Closed) => done.closed += 1,
                Some(Settled::Mismatch) => done.mismatched += 1,
                Some(Settled::Unchanged) | None => {}
            }
            tracing::info!(top_up_id = %top_up.id, ?outcome, ?settled, "top-up reconciled with Stripe");
        }
    }
    if done.credited > 0 {
        state.jobs_wakeup.notify_waiters();
        state.events.outbox_written();
    }
    Ok(done)
}
