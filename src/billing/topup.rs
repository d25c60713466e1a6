//! Top-ups through Stripe: a PaymentIntent per top-up, the wallet credited once when
//! Stripe says it succeeded (a signed webhook, or the reconciliation job asking Stripe).
//!
//! createTopUp commits the PENDING top-up (and its idempotency key) first, then talks to
//! Stripe, then records the PaymentIntent. The Stripe call runs under the top-up's row lock
//! only: retries of the same top-up queue behind it and find its PaymentIntent, so one
//! top-up never gets two (Stripe's Idempotency-Key says the same to Stripe); nothing else
//! waits on that lock. A PaymentIntent is credited under the key `topup:<id>`, so the
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
    let mut conn = state.pool.get().await?;

    // 1. The top-up row and the key, committed before Stripe hears of it.
    let (top_up, customer) = conn
        .transaction(async |conn| {
            let wallet = super::service::lock_wallet(conn, actor.user_id, &currency).await?;
            if let Some(key) = &key {
                let args = serde_json::json!({ "amount": amount, "currency": currency });
                if let Claim::Replay(ids) =
                    idempotency::claim(conn, actor.user_id, key, "createTopUp", &args, now).await?
                {
                    let ids: TopUpIds = serde_json::from_value(ids).map_err(AppError::internal)?;
                    let top_up = model::find_top_up(conn, ids.top_up_id)
                        .await?
                        .ok_or_else(|| AppError::not_found("top-up"))?;
                    return Ok::<_, AppError>((top_up, wallet.stripe_customer_id));
                }
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
        .await?;
    if let (Some(_), Some(secret)) = (&top_up.payment_intent_id, &top_up.client_secret) {
        let client_secret = secret.clone();
        return Ok(CreatedTopUp {
            top_up,
            client_secret,
        });
    }

    // 2. The user's Stripe customer, made on first use (outside any transaction).
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
            model::set_stripe_customer(&mut conn, actor.user_id, &made)
                .await?
                .unwrap_or(made)
        }
    };

    // 3. The PaymentIntent, under the top-up's row lock so that retries of this top-up
    //    queue behind this call and find its PaymentIntent.
    let top_up_id = top_up.id;
    let created = conn
        .transaction(async |conn| {
            let top_up = model::lock_top_up(conn, top_up_id)
                .await?
                .ok_or_else(|| AppError::not_found("top-up"))?;
            if let (Some(_), Some(secret)) = (&top_up.payment_intent_id, &top_up.client_secret) {
                let client_secret = secret.clone();
                return Ok::<_, AppError>(CreatedTopUp {
                    top_up,
                    client_secret,
                });
            }
            if top_up.status != TopUpStatus::Pending {
                return Err(AppError::Conflict(
                    "this top-up could not be started; start a new one with another idempotency key".into(),
                ));
            }
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
            let now = state.clock.now();
            model::set_top_up_intent(conn, top_up.id, &intent.id, &client_secret, now).await?;
            let top_up = model::find_top_up(conn, top_up.id)
                .await?
                .ok_or_else(|| AppError::not_found("top-up"))?;
            Ok(CreatedTopUp {
                top_up,
                client_secret,
            })
        })
        .await?;
    tracing::info!(top_up_id = %created.top_up.id, user_id = %actor.user_id,
        payment_intent = created.top_up.payment_intent_id.as_deref().unwrap_or(""), "top-up started");
    Ok(created)
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
    Succeeded,
    Failed(String),
    Canceled,
    /// Still waiting for the customer or the bank: leave it.
    Open,
}

impl Outcome {
    /// From the PaymentIntent's current state (what the reconciliation job sees). A
    /// PaymentIntent whose last attempt failed waits for another payment method at Stripe;
    /// the top-up is marked FAILED, and is still credited if a later attempt succeeds.
    pub fn of(intent: &PaymentIntent) -> Self {
        match intent.status.as_str() {
            "succeeded" => Outcome::Succeeded,
            "canceled" => Outcome::Canceled,
            "requires_payment_method" if intent.last_payment_error.is_some() => {
                Outcome::Failed(intent.failure_message())
            }
            _ => Outcome::Open,
        }
    }
}

/// Applies an outcome to a top-up (locked by the caller's transaction); returns whether the
/// wallet was credited now. Money that arrived is always credited (once, by unique key),
/// even after a failure was recorded; a late failure never undoes a success.
async fn settle(
    conn: &mut Conn,
    top_up: &TopUp,
    intent_id: &str,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> AppResult<bool> {
    match outcome {
        Outcome::Succeeded => {
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
            Ok(matches!(posted, Posted::New(_)))
        }
        Outcome::Failed(message) => {
            if top_up.status == TopUpStatus::Pending {
                model::settle_top_up(conn, top_up.id, TopUpStatus::Failed, Some(message), now)
                    .await?;
            }
            Ok(false)
        }
        Outcome::Canceled => {
            if matches!(top_up.status, TopUpStatus::Pending | TopUpStatus::Failed) {
                model::settle_top_up(conn, top_up.id, TopUpStatus::Cancelled, None, now).await?;
            }
            Ok(false)
        }
        Outcome::Open => Ok(false),
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
    let outcome = match event.kind.as_str() {
        "payment_intent.succeeded" => Outcome::Succeeded,
        "payment_intent.payment_failed" => {
            let intent: Option<PaymentIntent> =
                serde_json::from_value(event.data.object.clone()).ok();
            Outcome::Failed(
                intent
                    .map(|i| i.failure_message())
                    .unwrap_or_else(|| "the payment failed".into()),
            )
        }
        "payment_intent.canceled" => Outcome::Canceled,
        other => {
            tracing::debug!(event_id = %event.id, kind = other, "Stripe event ignored");
            return WebhookResult::Accepted;
        }
    };
    let Some(intent_id) = event.data.object["id"].as_str().map(str::to_string) else {
        return WebhookResult::Rejected("event without a PaymentIntent id");
    };
    match apply_event(state, &event, &intent_id, &outcome).await {
        Ok(credited) => {
            if credited {
                state.jobs_wakeup.notify_waiters();
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
) -> AppResult<bool> {
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    conn.transaction(async |conn| {
        if !model::record_webhook_event(conn, PROVIDER, &event.id, &event.kind).await? {
            tracing::info!(event_id = %event.id, kind = %event.kind, "Stripe event already processed");
            return Ok(false);
        }
        let Some(top_up) = model::lock_top_up_by_intent(conn, intent_id).await? else {
            tracing::warn!(event_id = %event.id, payment_intent = intent_id,
                "Stripe event for a PaymentIntent that is not a top-up here: ignored");
            return Ok(false);
        };
        let credited = settle(conn, &top_up, intent_id, outcome, now).await?;
        tracing::info!(event_id = %event.id, kind = %event.kind, top_up_id = %top_up.id, credited,
            "Stripe event processed");
        Ok::<_, AppError>(credited)
    })
    .await
}

/// What a reconciliation sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// PENDING top-ups looked at.
    pub checked: usize,
    /// Credited now (their webhook never came).
    pub credited: usize,
    /// Marked FAILED or CANCELLED.
    pub closed: usize,
    /// Stripe could not be asked; tried again next time.
    pub errors: usize,
}

/// The reconciliation job: every top-up still PENDING `top_up_reconcile_after` after it
/// was made is settled by what Stripe says of its PaymentIntent (credited once through the
/// same path as the webhook; failed or canceled marked; still open left for next time). A
/// top-up that never got a PaymentIntent (its creation failed half-way) is marked FAILED.
pub async fn reconcile(state: &AppState) -> anyhow::Result<Reconciled> {
    const BATCH: i64 = 100;
    let mut done = Reconciled::default();
    let Some(stripe) = state.stripe.as_ref() else {
        return Ok(done);
    };
    let after = chrono::Duration::from_std(state.settings.billing.top_up_reconcile_after)?;
    let before = state.clock.now() - after;
    let mut cursor = None;
    loop {
        let batch = {
            let mut conn = state.pool.get().await?;
            model::stale_pending_top_ups(&mut conn, before, cursor, BATCH).await?
        };
        let Some(last) = batch.last() else { break };
        cursor = Some((last.created_at, last.id));
        for top_up in &batch {
            done.checked += 1;
            let (intent_id, outcome) = match &top_up.payment_intent_id {
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
            if outcome == Outcome::Open {
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
                    if current.status != TopUpStatus::Pending
                        || current.payment_intent_id.as_deref() != intent_id.as_deref()
                    {
                        return Ok(None);
                    }
                    let intent = intent_id.as_deref().unwrap_or("");
                    Ok(Some(settle(conn, &current, intent, &outcome, now).await?))
                })
                .await
                .map_err(|e| anyhow::anyhow!("settling top-up {}: {}", top_up.id, e.message()))?;
            match settled {
                Some(true) => done.credited += 1,
                Some(false) => done.closed += 1,
                None => {}
            }
            tracing::info!(top_up_id = %top_up.id, ?outcome, "top-up reconciled with Stripe");
        }
    }
    if done.credited > 0 {
        state.jobs_wakeup.notify_waiters();
    }
    Ok(done)
}
