//! Buying, changing, cancelling and reading subscriptions. Each business step is one
//! transaction: the subscription row (or, for a new one, the buyer's wallet) is locked
//! first, so concurrent steps on one subscription or one wallet queue.

use chrono::{DateTime, Months, Utc};
use diesel_async::AsyncConnection;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::events;
use super::model::{self, Subscription, SubscriptionFilter, SubscriptionStatus};
use crate::audit;
use crate::auth::{Actor, Identity};
use crate::billing::invoice::Line;
use crate::billing::model::TransactionType;
use crate::billing::service::{self as billing, Charge, Credit};
use crate::catalog::service::{self as catalog, ForSale};
use crate::db::Conn;
use crate::email::notify;
use crate::error::{AppError, AppResult};
use crate::idempotency::{self, Claim};
use crate::instances::model::{DesiredState, ServiceInstance};
use crate::instances::service as instances;
use crate::pagination::{Page, PageArgs, Total};
use crate::state::AppState;

/// One calendar month after `t` (the 31st becomes the month's last day).
pub fn month_after(t: DateTime<Utc>) -> DateTime<Utc> {
    t.checked_add_months(Months::new(1))
        .expect("dates stay in range")
}

/// `amount` for the part of a period still to run at `now`, by the second, rounded half up.
pub fn prorate(amount: i64, start: DateTime<Utc>, end: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    let whole = (end - start).num_seconds().max(1);
    let left = (end - now).num_seconds().clamp(0, whole);
    let scaled = i128::from(amount) * i128::from(left);
    ((scaled * 2 + i128::from(whole)) / (2 * i128::from(whole))) as i64
}

/// The invoice purpose of one period of a subscription: the unique key of its charge.
pub fn period_purpose(start: DateTime<Utc>) -> String {
    format!("period:{}", start.timestamp())
}

/// The line of a monthly charge.
pub fn period_line(sale: &ForSale, name: &str, price: i64) -> Line {
    Line {
        description: format!(
            "{} {} for \"{name}\", one month",
            sale.service.name, sale.plan.name
        ),
        quantity: 1,
        unit_price: price,
    }
}

/// Who may act on a subscription: its owner or an administrator.
fn may_act(actor: &Actor, sub: &Subscription) -> AppResult<()> {
    if actor.is_admin() || sub.user_id == actor.user_id {
        Ok(())
    } else {
        Err(AppError::not_found("subscription"))
    }
}

/// Locks a subscription the caller may act on (NOT_FOUND otherwise: no probing).
async fn lock_for(conn: &mut Conn, actor: &Actor, id: Uuid) -> AppResult<Subscription> {
    // A customer's lock never touches someone else's row, not even for a moment.
    let owner = (!actor.is_admin()).then_some(actor.user_id);
    let sub = model::lock_owned(conn, id, owner)
        .await?
        .ok_or_else(|| AppError::not_found("subscription"))?;
    may_act(actor, &sub)?;
    Ok(sub)
}

/// Characters that print as nothing or reorder what follows: names on invoices and
/// in the admin console must read as what they are.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

fn validate_name(name: &str) -> AppResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 63 {
        return Err(AppError::field(
            "name",
            "must be between 1 and 63 characters",
        ));
    }
    if name.chars().any(is_hidden) {
        return Err(AppError::field(
            "name",
            "must not contain control, invisible or direction-changing characters",
        ));
    }
    Ok(name.to_string())
}

/// Checks that a plan is priced in the wallets' currency.
fn same_currency(state: &AppState, sale: &ForSale) -> AppResult<()> {
    let wallets = &state.settings.default_currency;
    if &sale.plan.currency != wallets {
        return Err(AppError::Conflict(format!(
            "this plan is priced in {} but wallets on this platform hold {wallets}",
            sale.plan.currency
        )));
    }
    Ok(())
}

/// Checks the plan's per-user limit and the platform's, for one more subscription.
async fn within_limits(
    conn: &mut Conn,
    state: &AppState,
    user_id: Uuid,
    sale: &ForSale,
) -> AppResult<()> {
    plan_limit(conn, user_id, sale).await?;
    let max = state.settings.billing.max_subscriptions_per_user;
    if model::live_count(conn, user_id, None).await? >= max {
        return Err(AppError::Conflict(format!(
            "you already hold {max} subscriptions, the most one customer may hold"
        )));
    }
    Ok(())
}

/// Checks the plan's per-user limit for one more subscription to it.
async fn plan_limit(conn: &mut Conn, user_id: Uuid, sale: &ForSale) -> AppResult<()> {
    if let Some(max) = sale.plan.max_instances_per_user {
        let held = model::live_count(conn, user_id, Some(sale.plan.id)).await?;
        if held >= i64::from(max) {
            return Err(AppError::Conflict(format!(
                "you already hold {held} subscription(s) to this plan, its limit per customer"
            )));
        }
    }
    Ok(())
}

/// After commit: wake this replica's job workers (the provisioning or settling job) and
/// its event outbox, and let its catalog show quotas as they now are.
pub(super) fn committed(state: &AppState) {
    state.jobs_wakeup.notify_waiters();
    state.events.outbox_written();
    catalog::quota_committed(state);
}

// ---- buying

#[derive(Debug, Clone)]
pub struct SubscribeInput {
    pub plan_id: Uuid,
    pub name: String,
    pub idempotency_key: Option<String>,
}

/// What `subscribe` made.
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub subscription: Subscription,
    pub instance: ServiceInstance,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscribedIds {
    subscription_id: Uuid,
}

/// Buys a plan: in one transaction the wallet is debited, the invoice issued PAID, the
/// subscription made ACTIVE for a month, its instance created (desired RUNNING), the
/// plan's quota taken and the provisioning job queued. Short: PAYMENT_REQUIRED with the
/// shortfall, and nothing changes.
pub async fn subscribe(
    state: &AppState,
    identity: &Identity,
    input: SubscribeInput,
) -> AppResult<Subscribed> {
    let actor = identity.actor()?.clone();
    let name = validate_name(&input.name)?;
    let key = idempotency::validate(input.idempotency_key.as_deref())?;
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let made = crate::retry_transient!(
        conn.transaction(async |conn| {
            if let Some(key) = &key {
                let args = json!({ "planId": input.plan_id, "name": name });
                if let Claim::Replay(ids) =
                    idempotency::claim(conn, actor.user_id, key, "subscribe", &args, now).await?
                {
                    let ids: SubscribedIds =
                        serde_json::from_value(ids).map_err(AppError::internal)?;
                    return Ok(Err(ids.subscription_id));
                }
            }
            let sale = catalog::plan_for_sale(conn, input.plan_id).await?;
            same_currency(state, &sale)?;
            // The wallet's lock makes the checks below and the debit one step per user.
            let wallet =
                billing::lock_wallet(conn, actor.user_id, &state.settings.default_currency).await?;
            within_limits(conn, state, actor.user_id, &sale).await?;
            let price = sale.plan.monthly_price;
            let line = period_line(&sale, &name, price);
            let total = billing::total_of(&state.settings.billing, std::slice::from_ref(&line));
            if wallet.balance < total {
                return Err(AppError::payment_required(
                    total,
                    wallet.balance,
                    &wallet.currency,
                ));
            }
            catalog::take_quota(conn, sale.plan.id).await?;
            let (start, end) = (now, month_after(now));
            let subscription = model::insert(
                conn,
                &model::NewSubscription {
                    id: Uuid::new_v4(),
                    user_id: actor.user_id,
                    plan_id: sale.plan.id,
                    name: &name,
                    status: SubscriptionStatus::Active,
                    price,
                    currency: &sale.plan.currency,
                    current_period_start: start,
                    current_period_end: end,
                    created_at: now,
                    updated_at: now,
                },
            )
            .await?;
            let instance = instances::create_for_subscription(
                conn,
                state,
                subscription.id,
                actor.user_id,
                &name,
                now,
            )
            .await?;
            let description = format!(
                "Subscription \"{name}\": {} {}",
                sale.service.name, sale.plan.name
            );
            let purpose = period_purpose(start);
            let paid = billing::charge(
                conn,
                &state.settings.billing,
                &Charge {
                    user_id: actor.user_id,
                    subscription_id: subscription.id,
                    kind: TransactionType::Subscription,
                    purpose: &purpose,
                    currency: &sale.plan.currency,
                    period: Some((start, end)),
                    lines: vec![line],
                    description: &description,
                    now,
                },
            )
            .await?
            .map_err(|short| short.error(&sale.plan.currency))?;
            queue_provisioning(conn, instance.id).await?;
            let billed = notify::Billed {
                sub: &subscription,
                service: &sale.service.name,
                plan: &sale.plan.name,
                amount: paid.total,
                balance: wallet.balance - paid.total,
            };
            notify::subscription_activated(conn, state, &billed, &instance, &paid.number).await?;
            events::changed(conn, &subscription).await?;
            if let Some(key) = &key {
                let ids = SubscribedIds {
                    subscription_id: subscription.id,
                };
                idempotency::finish(conn, actor.user_id, key, &ids).await?;
            }
            Ok::<_, AppError>(Ok(Subscribed {
                subscription,
                instance,
            }))
        })
        .await
    )?;
    match made {
        Ok(made) => {
            committed(state);
            tracing::info!(
                subscription_id = %made.subscription.id,
                user_id = %actor.user_id,
                plan_id = %made.subscription.plan_id,
                "subscribed"
            );
            Ok(made)
        }
        // A retry: the first call's result, as it is now.
        Err(id) => {
            let subscription = model::find(&mut conn, id)
                .await?
                .ok_or_else(|| AppError::not_found("subscription"))?;
            let instance = crate::instances::model::of_subscriptions(&mut conn, &[id])
                .await?
                .pop()
                .ok_or_else(|| AppError::not_found("instance"))?;
            Ok(Subscribed {
                subscription,
                instance,
            })
        }
    }
}

async fn queue_provisioning(conn: &mut Conn, instance_id: Uuid) -> AppResult<()> {
    instances::queue_reconcile(conn, instance_id).await
}

/// Moves the subscription's instance to a desired state, and queues the provisioner.
pub(super) async fn desire(
    conn: &mut Conn,
    sub: &Subscription,
    desired: DesiredState,
    now: DateTime<Utc>,
) -> AppResult<()> {
    if let Some(instance) = instances::set_desired_state(conn, sub.id, desired, now).await? {
        queue_provisioning(conn, instance.id).await?;
    }
    Ok(())
}

/// Ends a subscription for good: its instance deleted, its place in the quota given back.
pub(super) async fn end(
    conn: &mut Conn,
    sub: &Subscription,
    status: SubscriptionStatus,
    now: DateTime<Utc>,
) -> AppResult<Subscription> {
    let mut cycle = sub.cycle();
    cycle.status = status;
    cycle.holds_quota = false;
    cycle.next_retry_at = None;
    cycle.grace_until = None;
    cycle.cancel_at_period_end = false;
    match status {
        SubscriptionStatus::Expired => cycle.expired_at = Some(now),
        _ => cycle.cancelled_at = Some(now),
    }
    cycle.updated_at = now;
    if sub.holds_quota {
        catalog::release_quota(conn, sub.plan_id).await?;
    }
    billing::void_open(conn, sub.id, now).await?;
    desire(conn, sub, DesiredState::Deleted, now).await?;
    let saved = model::save(conn, sub.id, &cycle).await?;
    events::changed(conn, &saved).await?;
    Ok(saved)
}

// ---- changing

/// Switches to another plan of the same service: an upgrade charges the price difference
/// for the seconds left in the period now, a downgrade credits it to the wallet; the new
/// plan's price applies from now on.
pub async fn change_plan(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    plan_id: Uuid,
    idempotency_key: Option<String>,
) -> AppResult<Subscription> {
    let actor = identity.actor()?.clone();
    let key = idempotency::validate(idempotency_key.as_deref())?;
    let now = state.clock.now();
    let billing_settings = &state.settings.billing;
    let mut conn = state.pool.get().await?;
    let changed = crate::retry_transient!(
        conn.transaction(async |conn| {
            if let Some(key) = &key {
                let args = json!({ "subscriptionId": id, "planId": plan_id });
                if let Claim::Replay(_) = idempotency::claim(
                    conn,
                    actor.user_id,
                    key,
                    "changeSubscriptionPlan",
                    &args,
                    now,
                )
                .await?
                {
                    return Ok(None);
                }
            }
            let sub = lock_for(conn, &actor, id).await?;
            if sub.status != SubscriptionStatus::Active {
                return Err(AppError::Conflict(format!(
                    "a {} subscription can't change plans: only an active one can",
                    sub.status.as_str()
                )));
            }
            if sub.plan_id == plan_id {
                return Err(AppError::field(
                    "planId",
                    "is already this subscription's plan",
                ));
            }
            let old = catalog::plan_held(conn, sub.plan_id).await?;
            let new = catalog::plan_for_sale(conn, plan_id).await?;
            if new.plan.service_id != old.plan.service_id {
                return Err(AppError::Conflict(format!(
                    "a subscription to {} can only change to another plan of {}",
                    old.service.name, old.service.name
                )));
            }
            same_currency(state, &new)?;
            let wallet = billing::lock_wallet(conn, sub.user_id, &sub.currency).await?;
            plan_limit(conn, sub.user_id, &new).await?;
            if !crate::provisioner::service::room_for_plan(conn, sub.id, new.plan.id).await? {
                return Err(AppError::Conflict(format!(
                    "the worker node this instance runs on has no room for the {} plan",
                    new.plan.name
                )));
            }
            // Every step takes its rows in one order (subscription, wallet, the placement
            // lock, plans by id, the invoice counter last), so no two steps can wait on each
            // other.
            catalog::move_quota(conn, old.plan.id, new.plan.id).await?;
            let (start, end) = (sub.current_period_start, sub.current_period_end);
            let unused = prorate(sub.price, start, end, now);
            let remaining = prorate(new.plan.monthly_price, start, end, now);
            let difference = remaining - unused;
            let lines = vec![
                Line {
                    description: format!("Unused time on {} {}", old.service.name, old.plan.name),
                    quantity: 1,
                    unit_price: -unused,
                },
                Line {
                    description: format!(
                        "Remaining time on {} {}",
                        new.service.name, new.plan.name
                    ),
                    quantity: 1,
                    unit_price: remaining,
                },
            ];
            if difference > 0 {
                let total = billing::total_of(billing_settings, &lines);
                if wallet.balance < total {
                    return Err(AppError::payment_required(
                        total,
                        wallet.balance,
                        &wallet.currency,
                    ));
                }
                let purpose = format!("change:{}", Uuid::new_v4());
                let description = format!(
                    "Upgrade of \"{}\" to {} {}",
                    sub.name, new.service.name, new.plan.name
                );
                billing::charge(
                    conn,
                    billing_settings,
                    &Charge {
                        user_id: sub.user_id,
                        subscription_id: sub.id,
                        kind: TransactionType::Upgrade,
                        purpose: &purpose,
                        currency: &sub.currency,
                        period: Some((now, end)),
                        lines,
                        description: &description,
                        now,
                    },
                )
                .await?
                .map_err(|short| short.error(&sub.currency))?;
            } else if difference < 0 {
                // Tax comes back at the rate it was paid at.
                let debits = billing::period_debits(conn, sub.id, start).await?;
                let credit = -difference;
                let description = format!(
                    "Downgrade of \"{}\" to {} {}: unused time credited",
                    sub.name, new.service.name, new.plan.name
                );
                billing::credit_back(
                    conn,
                    &debits,
                    &Credit {
                        user_id: sub.user_id,
                        kind: TransactionType::Refund,
                        amount: credit,
                        currency: &sub.currency,
                        description: &description,
                        reference: None,
                        subscription_id: Some(sub.id),
                        refund_of: None,
                        unique_key: None,
                        created_by: Some(actor.user_id),
                        now,
                    },
                )
                .await?;
            }
            let mut cycle = sub.cycle();
            cycle.plan_id = new.plan.id;
            cycle.price = new.plan.monthly_price;
            cycle.updated_at = now;
            let saved = model::save(conn, sub.id, &cycle).await?;
            // Resources change right away: the provisioner applies the new plan's.
            if let Some(instance) = crate::instances::model::of_subscriptions(conn, &[sub.id])
                .await?
                .pop()
            {
                instances::resources_changed(conn, instance.id).await?;
                queue_provisioning(conn, instance.id).await?;
            }
            events::changed(conn, &saved).await?;
            if let Some(key) = &key {
                idempotency::finish(conn, actor.user_id, key, &json!({ "subscriptionId": id }))
                    .await?;
            }
            Ok::<_, AppError>(Some(saved))
        })
        .await
    )?;
    committed(state);
    match changed {
        Some(sub) => {
            tracing::info!(subscription_id = %id, plan_id = %plan_id, "subscription plan changed");
            Ok(sub)
        }
        None => get(state, identity, id).await,
    }
}

/// Cancels: at the period's end (default; it runs until then), or now, crediting the
/// unused part of a paid period and deleting the instance.
pub async fn cancel(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    at_period_end: bool,
) -> AppResult<Subscription> {
    let actor = identity.actor()?.clone();
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let saved = crate::retry_transient!(
        conn.transaction(async |conn| {
            let sub = lock_for(conn, &actor, id).await?;
            if sub.status.is_final() {
                return Err(AppError::Conflict(format!(
                    "the subscription is already {}",
                    sub.status.as_str()
                )));
            }
            // Paid for the period: ACTIVE, or stopped by an administrator within it.
            let paid_up = sub.status == SubscriptionStatus::Active
                || (sub.suspended_by_admin && billing::open_invoice(conn, sub.id).await?.is_none());
            if at_period_end && sub.status == SubscriptionStatus::Active {
                if sub.cancel_at_period_end {
                    return Ok(sub);
                }
                let mut cycle = sub.cycle();
                cycle.cancel_at_period_end = true;
                cycle.updated_at = now;
                let saved = model::save(conn, sub.id, &cycle).await?;
                events::changed(conn, &saved).await?;
                return Ok(saved);
            }
            // Now (or unpaid, which has no period left to run): credit what is unused. Time
            // an administrator had it stopped counts as unused.
            if paid_up {
                let from = match (sub.suspended_by_admin, sub.suspended_at) {
                    (true, Some(at)) => at.min(now),
                    _ => now,
                };
                let description = format!("Cancellation of \"{}\": unused time credited", sub.name);
                let key = format!("cancel:{}", sub.id);
                credit_time(
                    conn,
                    &sub,
                    (from, sub.current_period_end),
                    &description,
                    Some(&key),
                    Some(actor.user_id),
                    now,
                )
                .await?;
            }
            end(conn, &sub, SubscriptionStatus::Cancelled, now).await
        })
        .await
    )?;
    committed(state);
    tracing::info!(subscription_id = %id, at_period_end, "subscription cancelled");
    Ok(saved)
}

/// Undoes a pending cancellation at period end.
pub async fn resume(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<Subscription> {
    let actor = identity.actor()?.clone();
    let now = state.clock.now();
    update(state, &actor, id, move |sub| {
        if !sub.cancel_at_period_end || sub.status.is_final() {
            return Err(AppError::Conflict(
                "the subscription has no pending cancellation to undo".into(),
            ));
        }
        let mut cycle = sub.cycle();
        cycle.cancel_at_period_end = false;
        cycle.updated_at = now;
        Ok(cycle)
    })
    .await
}

/// Turns renewal at period end on or off (off: the subscription ends with its period).
pub async fn set_auto_renew(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    auto_renew: bool,
) -> AppResult<Subscription> {
    let actor = identity.actor()?.clone();
    let now = state.clock.now();
    update(state, &actor, id, move |sub| {
        if sub.status.is_final() {
            return Err(AppError::Conflict(format!(
                "the subscription is already {}",
                sub.status.as_str()
            )));
        }
        let mut cycle = sub.cycle();
        cycle.auto_renew = auto_renew;
        cycle.updated_at = now;
        Ok(cycle)
    })
    .await
}

/// Locks, changes and saves one subscription the actor may act on, publishing the change.
async fn update(
    state: &AppState,
    actor: &Actor,
    id: Uuid,
    change: impl FnOnce(&Subscription) -> AppResult<model::Cycle> + Send,
) -> AppResult<Subscription> {
    let mut conn = state.pool.get().await?;
    conn.transaction(async |conn| {
        let sub = lock_for(conn, actor, id).await?;
        let cycle = change(&sub)?;
        let saved = model::save(conn, sub.id, &cycle).await?;
        events::changed(conn, &saved).await?;
        Ok(saved)
    })
    .await
    .inspect(|_| committed(state))
}

/// What an administrator's change makes of a locked subscription: its new state, its
/// instance's desired state, and what the audit row records.
type AdminChange = AppResult<(model::Cycle, DesiredState, serde_json::Value)>;

/// An administrator's change to one subscription: locked, changed, its instance told,
/// published and audited in one transaction.
async fn by_admin<F>(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    action: &'static str,
    change: F,
) -> AppResult<Subscription>
where
    F: for<'c> FnOnce(
            &'c mut Conn,
            Subscription,
        ) -> futures_util::future::BoxFuture<'c, AdminChange>
        + Send
        + 'static,
{
    let actor = identity.admin()?;
    let now = state.clock.now();
    let saved = audit::audited(state, actor, action, "ServiceSubscription", move |conn| {
        async move {
            let sub = model::lock(conn, id)
                .await?
                .ok_or_else(|| AppError::not_found("subscription"))?;
            let (mut cycle, desired, metadata) = change(conn, sub.clone()).await?;
            cycle.updated_at = now;
            desire(conn, &sub, desired, now).await?;
            let saved = model::save(conn, sub.id, &cycle).await?;
            events::changed(conn, &saved).await?;
            Ok((saved, Some(id), metadata))
        }
        .boxed()
    })
    .await?;
    committed(state);
    Ok(saved)
}

/// An administrator stops a subscription's service (its instance stopped, data kept);
/// the billing cycle leaves it alone until it is unsuspended.
pub async fn suspend(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<Subscription> {
    let now = state.clock.now();
    by_admin(
        state,
        identity,
        id,
        "subscription.suspend",
        move |_conn, sub| {
            async move {
                if sub.status.is_final() || sub.status == SubscriptionStatus::Suspended {
                    return Err(AppError::Conflict(format!(
                        "the subscription is already {}",
                        sub.status.as_str()
                    )));
                }
                let mut cycle = sub.cycle();
                cycle.status = SubscriptionStatus::Suspended;
                cycle.suspended_by_admin = true;
                cycle.suspended_at = Some(now);
                Ok((
                    cycle,
                    DesiredState::Stopped,
                    json!({ "previousStatus": sub.status.as_str() }),
                ))
            }
            .boxed()
        },
    )
    .await
}

/// Lifts an administrator's suspension: ACTIVE again, or back to the dunning it was in.
/// The paid time it stood stopped is credited to the wallet (nobody pays for days an
/// administrator stopped), and grace and retries move on by as long.
pub async fn unsuspend(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<Subscription> {
    let now = state.clock.now();
    by_admin(state, identity, id, "subscription.unsuspend", move |conn, sub| {
        async move {
            if sub.status != SubscriptionStatus::Suspended || !sub.suspended_by_admin {
                return Err(AppError::Conflict(
                    "only a subscription an administrator suspended can be unsuspended; a suspension for non-payment ends when it is paid".into(),
                ));
            }
            let mut cycle = sub.cycle();
            cycle.status = if billing::open_invoice(conn, sub.id).await?.is_some() {
                SubscriptionStatus::PastDue
            } else {
                SubscriptionStatus::Active
            };
            let stopped_at = sub.suspended_at.unwrap_or(now);
            let stopped = (now - stopped_at).max(chrono::Duration::zero());
            // Paid time it stood stopped goes back to the wallet; dunning's clock (grace,
            // retries) stood still meanwhile.
            let description = format!("\"{}\" stopped by an administrator: paid time credited", sub.name);
            let key = format!("unsuspend:{}:{}", sub.id, stopped_at.timestamp_micros());
            credit_time(conn, &sub, (stopped_at, now), &description, Some(&key), None, now).await?;
            let later = |t: DateTime<Utc>| later_by(t, stopped_at, stopped);
            cycle.grace_until = sub.grace_until.map(later);
            cycle.next_retry_at = sub.next_retry_at.map(later);
            if cycle.status == SubscriptionStatus::PastDue {
                // Money that arrived meanwhile settles it now.
                billing::settle_soon(conn, sub.user_id).await?;
            }
            cycle.suspended_by_admin = false;
            cycle.suspended_at = None;
            Ok((
                cycle,
                DesiredState::Running,
                json!({ "stoppedSeconds": stopped.num_seconds() }),
            ))
        }
        .boxed()
    })
    .await
}

/// Credits the paid time between `span.0` and `span.1` (within the current period) back to
/// the wallet, with its tax at the rate it was paid at, as REFUNDs of the period's debits
/// (never more than they paid); returns what was credited.
async fn credit_time(
    conn: &mut Conn,
    sub: &Subscription,
    span: (DateTime<Utc>, DateTime<Utc>),
    description: &str,
    key: Option<&str>,
    created_by: Option<Uuid>,
    now: DateTime<Utc>,
) -> AppResult<i64> {
    let (start, end_at) = (sub.current_period_start, sub.current_period_end);
    let (from, to) = (span.0.clamp(start, end_at), span.1.clamp(start, end_at));
    if to <= from {
        return Ok(0);
    }
    // What `from` leaves of the period, less what `to` leaves.
    let unused = prorate(sub.price, start, end_at, from) - prorate(sub.price, start, end_at, to);
    // The wallet first: what was refunded so far is read under its lock.
    billing::lock_wallet(conn, sub.user_id, &sub.currency).await?;
    let debits = billing::period_debits(conn, sub.id, start).await?;
    if unused <= 0 {
        return Ok(0);
    }
    billing::credit_back(
        conn,
        &debits,
        &Credit {
            user_id: sub.user_id,
            kind: TransactionType::Refund,
            amount: unused,
            currency: &sub.currency,
            description,
            reference: None,
            subscription_id: Some(sub.id),
            refund_of: None,
            unique_key: key,
            created_by,
            now,
        },
    )
    .await
}

/// `t` moved on by `by` if it was still ahead at `since` (time that stood still).
fn later_by(t: DateTime<Utc>, since: DateTime<Utc>, by: chrono::Duration) -> DateTime<Utc> {
    if t > since { t + by } else { t }
}

// ---- reading

/// One subscription, for its owner or an administrator.
pub async fn get(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<Subscription> {
    let actor = identity.actor()?;
    let mut conn = state.pool.get().await?;
    let sub = model::find(&mut conn, id)
        .await?
        .ok_or_else(|| AppError::not_found("subscription"))?;
    may_act(actor, &sub)?;
    Ok(sub)
}

/// Subscriptions, newest first: the caller's own (`mine`), or anyone's for administrators.
pub async fn list(
    state: &AppState,
    identity: &Identity,
    mut filter: SubscriptionFilter,
    mine: bool,
    page: PageArgs,
) -> AppResult<Page<Subscription>> {
    let actor = identity.actor()?;
    if mine {
        filter.user_id = Some(actor.user_id);
    } else {
        identity.admin()?;
    }
    let mut conn = state.pool.get().await?;
    let rows = model::list(&mut conn, &filter, &page).await?;
    let total = Total::deferred(&state.pool, filter, |conn, filter| {
        model::count(conn, filter).boxed()
    });
    Ok(Page::from_rows(rows, &page, total))
}

/// A subscription event as `identity` may see it now: its owner's, or any for
/// administrators.
pub async fn changed_for(
    state: &AppState,
    identity: &Identity,
    event: &events::SubscriptionChanged,
) -> AppResult<Option<Subscription>> {
    let actor = identity.actor()?;
    if !actor.is_admin() && actor.user_id != event.user_id {
        return Ok(None);
    }
    let mut conn = state.pool.get().await?;
    Ok(model::find(&mut conn, event.subscription_id)
        .await?
        .filter(|s| may_act(actor, s).is_ok()))
}

/// Subscriptions by id that the caller may read (for DataLoaders).
pub async fn by_ids(
    state: &AppState,
    identity: &Identity,
    ids: &[Uuid],
) -> AppResult<Vec<Subscription>> {
    let actor = identity.actor()?;
    let mut conn = state.pool.get().await?;
    Ok(model::by_ids(&mut conn, ids)
        .await?
        .into_iter()
        .filter(|s| actor.is_admin() || s.user_id == actor.user_id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn prorates_by_the_second() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 1, 31, 0, 0, 0).unwrap();
        let half = Utc.with_ymd_and_hms(2026, 1, 16, 0, 0, 0).unwrap();
        assert_eq!(prorate(3000, start, end, half), 1500);
        assert_eq!(prorate(3000, start, end, start), 3000);
        assert_eq!(prorate(3000, start, end, end), 0);
        // One second left of a 30-day period: rounds to the nearest minor unit.
        assert_eq!(
            prorate(100_000_000, start, end, end - chrono::Duration::seconds(1)),
            39
        );
    }

    #[test]
    fn months_are_calendar_months() {
        let jan31 = Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap();
        assert_eq!(
            month_after(jan31),
            Utc.with_ymd_and_hms(2026, 2, 28, 12, 0, 0).unwrap()
        );
    }
}
