//! The billing cycle: renewals at period end, dunning retries, suspension after grace,
//! expiry after a long suspension, and settling debts as soon as money arrives.
//!
//! Each step handles one subscription in one transaction that holds its row lock, and
//! decides from the row as it is then, so a step run twice, by two replicas at once, or
//! killed half-way does nothing twice: the second run finds the period already moved (or
//! the row locked, and skips it). Every charge also carries a unique key per subscription
//! and period. A renewal moves the period by one month, so after downtime the loop
//! renews period after period, each with its own charge and invoice, until it is current.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use diesel_async::AsyncConnection;
use futures_util::StreamExt;
use uuid::Uuid;

use super::events;
use super::model::{self, Subscription, SubscriptionStatus};
use super::service::{desire, end, month_after, period_line, period_purpose};
use crate::billing::model::TransactionType;
use crate::billing::service::{self as billing, Charge};
use crate::catalog::service::{self as catalog, ForSale};
use crate::db::Conn;
use crate::email::Recipient;
use crate::email::notify::{self, Billed};
use crate::error::{AppError, AppResult};
use crate::instances::model::DesiredState;
use crate::state::AppState;

/// Subscriptions fetched per round.
const BATCH: i64 = 2_000;

/// What one run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub renewed: usize,
    pub past_due: usize,
    pub retried: usize,
    pub recovered: usize,
    pub suspended: usize,
    pub expired: usize,
    pub cancelled: usize,
    /// Locked by another worker at the time: that worker handles them.
    pub skipped: usize,
}

impl std::ops::AddAssign for Summary {
    fn add_assign(&mut self, other: Summary) {
        self.renewed += other.renewed;
        self.past_due += other.past_due;
        self.retried += other.retried;
        self.recovered += other.recovered;
        self.suspended += other.suspended;
        self.expired += other.expired;
        self.cancelled += other.cancelled;
        self.skipped += other.skipped;
    }
}

impl Summary {
    fn add(&mut self, step: Step) {
        match step {
            Step::Renewed => self.renewed += 1,
            Step::PastDue => self.past_due += 1,
            Step::Retried => self.retried += 1,
            Step::Recovered => self.recovered += 1,
            Step::Suspended => self.suspended += 1,
            Step::Expired => self.expired += 1,
            Step::Cancelled => self.cancelled += 1,
            Step::Skipped | Step::NotDue => self.skipped += 1,
        }
    }

    fn changed(&self) -> usize {
        self.renewed
            + self.past_due
            + self.retried
            + self.recovered
            + self.suspended
            + self.expired
            + self.cancelled
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Renewed,
    PastDue,
    Retried,
    Recovered,
    Suspended,
    Expired,
    Cancelled,
    Skipped,
    NotDue,
}

/// Plans and services by plan id, read once per run (they change rarely, and a renewal
/// reads the price at its own moment from the row it locks anyway: see `renew`).
#[derive(Default)]
pub(super) struct Plans(Mutex<HashMap<Uuid, ForSale>>);

impl Plans {
    pub(super) async fn get(&self, conn: &mut Conn, plan_id: Uuid) -> AppResult<ForSale> {
        if let Some(found) = self.0.lock().expect("not poisoned").get(&plan_id) {
            return Ok(found.clone());
        }
        let found = catalog::plan_held(conn, plan_id).await?;
        self.0
            .lock()
            .expect("not poisoned")
            .insert(plan_id, found.clone());
        Ok(found)
    }
}

/// How many subscriptions a run works on at once: most of the pool, leaving room for
/// requests.
fn parallelism(state: &AppState) -> usize {
    (state.settings.db_pool_size as usize * 3 / 4).max(1)
}

/// Subscriptions renewed per statement by the bulk path.
const BULK_BATCH: i64 = 1_000;

/// Renews (or ends) every ACTIVE subscription whose period has ended by now, period by
/// period, until none is due: the common case in bulk first, then one by one whatever
/// needs a decision (a short wallet, a cancellation, ...).
pub async fn run_renewals(state: &AppState) -> anyhow::Result<Summary> {
    // Whatever the bulk pass could not do (it failed, even), the one-at-a-time pass does.
    let bulk = renew_in_bulk(state).await.unwrap_or_else(|e| {
        tracing::error!(error = %e, "bulk renewals failed; renewing one at a time");
        0
    });
    let plans = Plans::default();
    let mut summary = run(state, &plans, |conn, now| {
        Box::pin(model::renewal_due(conn, now, BATCH))
    })
    .await?;
    summary.renewed += bulk;
    Ok(summary)
}

/// A few workers renewing batches until none is left; returns how many were renewed.
/// (`run_renewals` runs it first; tests call it alone to see what the bulk path does.)
pub async fn renew_in_bulk(state: &AppState) -> anyhow::Result<usize> {
    let workers = parallelism(state).clamp(1, 3);
    let batches = (0..workers).map(|_| async {
        let mut renewed = 0;
        loop {
            let mut conn = state.pool.get().await?;
            let now = state.clock.now();
            let batch = crate::retry_transient!(
                conn.transaction(async |conn| {
                    let batch =
                        super::bulk::renew_batch(conn, &state.settings.billing, now, BULK_BATCH)
                            .await?;
                    notify_renewed(conn, state, &batch).await?;
                    Ok::<_, AppError>(batch)
                })
                .await
            )
            .map_err(|e| anyhow::anyhow!("bulk renewal: {e:?}"))?;
            if batch.is_empty() {
                return Ok::<_, anyhow::Error>(renewed);
            }
            renewed += batch.len();
        }
    });
    let mut total = 0;
    for result in futures_util::future::join_all(batches).await {
        // What the other workers committed still counts; the failed batch's rows are left
        // to the one-at-a-time pass.
        match result {
            Ok(renewed) => total += renewed,
            Err(e) => tracing::error!(error = %e, "a bulk renewal worker stopped"),
        }
    }
    if total > 0 {
        tracing::info!(renewed = total, "subscriptions renewed in bulk");
        super::service::committed(state);
    }
    Ok(total)
}

/// Queues the "renewal paid" message of each subscription a bulk batch renewed (in the
/// batch's transaction).
async fn notify_renewed(
    conn: &mut Conn,
    state: &AppState,
    batch: &[Subscription],
) -> AppResult<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = batch.iter().map(|s| s.id).collect();
    let facts: HashMap<Uuid, super::bulk::Renewed> = super::bulk::renewed(conn, &ids)
        .await?
        .into_iter()
        .map(|r| (r.subscription_id, r))
        .collect();
    let mails = batch
        .iter()
        .filter_map(|sub| {
            let r = facts.get(&sub.id)?;
            let billed = Billed {
                sub,
                service: &r.service_name,
                plan: &r.plan_name,
                amount: r.total,
                balance: r.balance,
            };
            let to = Recipient {
                user_id: Some(sub.user_id),
                email: r.email.clone(),
                name: r.user_name.clone(),
            };
            Some(notify::renewal_paid_mail(
                state,
                &billed,
                to,
                r.invoice_id,
                &r.number,
            ))
        })
        .collect();
    crate::email::outbox::queue_many(conn, state, mails).await?;
    Ok(())
}

/// Retries, suspends and expires PAST_DUE and SUSPENDED subscriptions that are due.
pub async fn run_dunning(state: &AppState) -> anyhow::Result<Summary> {
    let plans = Plans::default();
    let expire_after = Duration::days(i64::from(state.settings.billing.expire_after_days));
    run(state, &plans, move |conn, now| {
        Box::pin(model::dunning_due(conn, now, now - expire_after, BATCH))
    })
    .await
}

async fn run<F>(state: &AppState, plans: &Plans, due: F) -> anyhow::Result<Summary>
where
    F: for<'c> Fn(
        &'c mut Conn,
        DateTime<Utc>,
    ) -> futures_util::future::BoxFuture<'c, diesel::QueryResult<Vec<Uuid>>>,
{
    let mut summary = Summary::default();
    loop {
        let now = state.clock.now();
        let ids = {
            let mut conn = state.pool.get().await?;
            due(&mut conn, now).await?
        };
        if ids.is_empty() {
            break;
        }
        let mut round = Summary::default();
        let steps = futures_util::stream::iter(ids)
            .map(|id| async move { (id, step(state, plans, id).await) })
            .buffer_unordered(parallelism(state));
        futures_util::pin_mut!(steps);
        while let Some((id, result)) = steps.next().await {
            match result {
                Ok(s) => round.add(s),
                // One subscription's failure must not stop the others; the next run retries.
                Err(e) => {
                    tracing::error!(subscription_id = %id, error = ?e, "billing step failed");
                    round.skipped += 1;
                }
            }
        }
        summary += round;
        // Nothing moved (all locked elsewhere, or failing): leave them to the next run.
        if round.changed() == 0 {
            break;
        }
    }
    if summary.changed() > 0 {
        tracing::info!(?summary, "billing cycle ran");
        super::service::committed(state);
    }
    Ok(summary)
}

/// One subscription, one transaction, decided from its locked row.
async fn step(state: &AppState, plans: &Plans, id: Uuid) -> AppResult<Step> {
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    conn.transaction(async |conn| {
        let Some(sub) = model::try_lock(conn, id).await? else {
            return Ok(Step::Skipped);
        };
        decide(state, plans, conn, &sub, now).await
    })
    .await
}

async fn decide(
    state: &AppState,
    plans: &Plans,
    conn: &mut Conn,
    sub: &Subscription,
    now: DateTime<Utc>,
) -> AppResult<Step> {
    let billing_settings = &state.settings.billing;
    match sub.status {
        SubscriptionStatus::Active if sub.current_period_end <= now => {
            if sub.cancel_at_period_end || !sub.auto_renew {
                end(conn, sub, SubscriptionStatus::Cancelled, now).await?;
                return Ok(Step::Cancelled);
            }
            renew(state, plans, conn, sub, now).await
        }
        SubscriptionStatus::PastDue => {
            let grace_over = sub.grace_until.is_some_and(|g| g <= now);
            let retry_due = sub.next_retry_at.is_some_and(|r| r <= now);
            if !grace_over && !retry_due {
                return Ok(Step::NotDue);
            }
            if settle(state, plans, conn, sub, now).await? {
                return Ok(Step::Recovered);
            }
            let mut cycle = sub.cycle();
            cycle.updated_at = now;
            let step = if grace_over {
                // Never before the paid period ends: grace starts after it.
                cycle.status = SubscriptionStatus::Suspended;
                cycle.suspended_at = sub.grace_until;
                cycle.next_retry_at = None;
                desire(conn, sub, DesiredState::Stopped, now).await?;
                Step::Suspended
            } else {
                cycle.failed_charges += 1;
                // Retries count from the first failed charge, when grace began.
                let began = sub.grace_until.map_or(sub.current_period_end, |g| {
                    g - Duration::days(i64::from(billing_settings.grace_days))
                });
                cycle.next_retry_at = next_retry(began, &billing_settings.dunning_retry_days, now);
                Step::Retried
            };
            let saved = model::save(conn, sub.id, &cycle).await?;
            events::changed(conn, &saved).await?;
            let sale = plans.get(conn, sub.plan_id).await?;
            let billed = Billed {
                sub: &saved,
                service: &sale.service.name,
                plan: &sale.plan.name,
                amount: owed(conn, state, sub).await?,
                balance: billing::balance(conn, sub.user_id).await?,
            };
            if step == Step::Suspended {
                notify::suspended(conn, state, &billed).await?;
            } else {
                notify::payment_failed(conn, state, &billed).await?;
            }
            Ok(step)
        }
        SubscriptionStatus::Suspended if !sub.suspended_by_admin => {
            let expire_at = sub
                .suspended_at
                .map(|s| s + Duration::days(i64::from(billing_settings.expire_after_days)));
            if expire_at.is_none_or(|e| e > now) {
                return Ok(Step::NotDue);
            }
            if settle(state, plans, conn, sub, now).await? {
                return Ok(Step::Recovered);
            }
            // What it owed, read before expiry voids the invoice.
            let amount = owed(conn, state, sub).await?;
            let saved = end(conn, sub, SubscriptionStatus::Expired, now).await?;
            let sale = plans.get(conn, sub.plan_id).await?;
            let billed = Billed {
                sub: &saved,
                service: &sale.service.name,
                plan: &sale.plan.name,
                amount,
                balance: billing::balance(conn, sub.user_id).await?,
            };
            notify::expired(conn, state, &billed).await?;
            Ok(Step::Expired)
        }
        _ => Ok(Step::NotDue),
    }
}

/// What a subscription in debt owes: its open invoice's total (else a period at its price).
pub(super) async fn owed(conn: &mut Conn, state: &AppState, sub: &Subscription) -> AppResult<i64> {
    Ok(match billing::open_invoice(conn, sub.id).await? {
        Some(invoice) => invoice.total,
        None => sub.price + billing::tax_of(&state.settings.billing, sub.price),
    })
}

/// The price a renewal charges: the plan's of the day, unless the plan has since been
/// repriced in another currency than the subscription's (and its wallet's): then the
/// price it was sold at.
pub(super) fn renewal_price(sale: &ForSale, sub: &Subscription) -> i64 {
    if sale.plan.currency == sub.currency {
        sale.plan.monthly_price
    } else {
        tracing::warn!(
            subscription_id = %sub.id,
            plan_currency = %sale.plan.currency,
            currency = %sub.currency,
            "plan repriced in another currency: renewing at the subscription's own price"
        );
        sub.price
    }
}

/// The first retry day after `now`, counted from the first failed charge.
fn next_retry(began: DateTime<Utc>, days: &[u32], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    days.iter()
        .map(|d| began + Duration::days(i64::from(*d)))
        .find(|t| *t > now)
}

/// Charges the next period at the plan's current price (the subscription kept its old
/// price until now) and moves the period on; when the wallet is short, issues the
/// period's invoice OPEN and goes PAST_DUE with a grace period.
async fn renew(
    state: &AppState,
    plans: &Plans,
    conn: &mut Conn,
    sub: &Subscription,
    now: DateTime<Utc>,
) -> AppResult<Step> {
    let billing_settings = &state.settings.billing;
    let sale = plans.get(conn, sub.plan_id).await?;
    let start = sub.current_period_end;
    let end_at = month_after(start);
    let price = renewal_price(&sale, sub);
    let purpose = period_purpose(start);
    let description = format!(
        "Renewal of \"{}\": {} {}",
        sub.name, sale.service.name, sale.plan.name
    );
    let charge = Charge {
        user_id: sub.user_id,
        subscription_id: sub.id,
        kind: TransactionType::Renewal,
        purpose: &purpose,
        currency: &sub.currency,
        period: Some((start, end_at)),
        lines: vec![period_line(&sale, &sub.name, price)],
        description: &description,
        now,
    };
    let mut cycle = sub.cycle();
    cycle.updated_at = now;
    let (step, paid, balance) = match billing::charge(conn, billing_settings, &charge).await {
        Ok(Ok(paid)) => {
            cycle.price = price;
            cycle.current_period_start = start;
            cycle.current_period_end = end_at;
            cycle.failed_charges = 0;
            let balance = match &paid.transaction {
                Some(t) => t.balance_after,
                None => billing::balance(conn, sub.user_id).await?,
            };
            (Step::Renewed, Some(paid), balance)
        }
        Ok(Err(short)) => {
            billing::issue_open(conn, billing_settings, &charge).await?;
            cycle.price = price;
            past_due(&mut cycle, billing_settings, now);
            (Step::PastDue, None, short.balance)
        }
        Err(e) => return Err(e),
    };
    let saved = model::save(conn, sub.id, &cycle).await?;
    events::changed(conn, &saved).await?;
    let billed = Billed {
        sub: &saved,
        service: &sale.service.name,
        plan: &sale.plan.name,
        amount: billing::total_of(billing_settings, &charge.lines),
        balance,
    };
    match paid {
        Some(paid) => {
            notify::renewal_paid(conn, state, &billed, paid.invoice_id, &paid.number).await?
        }
        None => notify::payment_failed(conn, state, &billed).await?,
    };
    Ok(step)
}

/// The first failed charge: grace and retries count from now, not from the period's end,
/// so a charge that fails late (after downtime, or after an administrator's suspension)
/// still gets the whole grace period. The service keeps running meanwhile.
fn past_due(
    cycle: &mut model::Cycle,
    billing: &crate::config::BillingSettings,
    now: DateTime<Utc>,
) {
    cycle.status = SubscriptionStatus::PastDue;
    cycle.failed_charges = 1;
    cycle.grace_until = Some(now + Duration::days(i64::from(billing.grace_days)));
    cycle.next_retry_at = next_retry(now, &billing.dunning_retry_days, now);
}

/// Pays a PAST_DUE or SUSPENDED subscription's open invoice if the wallet covers it, and
/// makes it ACTIVE: a PAST_DUE one continues its periods (it kept running), a SUSPENDED
/// one starts a fresh period now. Returns whether it was settled.
async fn settle(
    state: &AppState,
    plans: &Plans,
    conn: &mut Conn,
    sub: &Subscription,
    now: DateTime<Utc>,
) -> AppResult<bool> {
    let Some(invoice) = billing::open_invoice(conn, sub.id).await? else {
        return Ok(false);
    };
    let period = match sub.status {
        SubscriptionStatus::Suspended => (now, month_after(now)),
        _ => (sub.current_period_end, month_after(sub.current_period_end)),
    };
    let description = format!("Renewal of \"{}\" (overdue)", sub.name);
    let paid = billing::pay_open(
        conn,
        &invoice,
        TransactionType::Renewal,
        &description,
        (sub.status == SubscriptionStatus::Suspended).then_some(period),
        now,
    )
    .await?;
    let Ok(paid) = paid else {
        return Ok(false);
    };
    let mut cycle = sub.cycle();
    cycle.status = SubscriptionStatus::Active;
    cycle.current_period_start = period.0;
    cycle.current_period_end = period.1;
    cycle.failed_charges = 0;
    cycle.grace_until = None;
    cycle.next_retry_at = None;
    cycle.suspended_at = None;
    cycle.updated_at = now;
    if sub.status == SubscriptionStatus::Suspended {
        desire(conn, sub, DesiredState::Running, now).await?;
    }
    let saved = model::save(conn, sub.id, &cycle).await?;
    events::changed(conn, &saved).await?;
    let sale = plans.get(conn, sub.plan_id).await?;
    let balance = match paid {
        Some(t) => t.balance_after,
        None => billing::balance(conn, sub.user_id).await?,
    };
    let billed = Billed {
        sub: &saved,
        service: &sale.service.name,
        plan: &sale.plan.name,
        amount: invoice.total,
        balance,
    };
    notify::renewal_paid(conn, state, &billed, invoice.id, &invoice.number).await?;
    Ok(true)
}

/// Settles what a user owes right after money arrived (the `billing.settle` job).
pub async fn settle_user(state: &AppState, user_id: Uuid) -> anyhow::Result<usize> {
    let mut conn = state.pool.get().await?;
    let ids = model::in_debt(&mut conn, user_id).await?;
    let plans = Plans::default();
    let mut settled = 0;
    for id in ids {
        let now = state.clock.now();
        let done = conn
            .transaction(async |conn| {
                let Some(sub) = model::lock(conn, id).await? else {
                    return Ok::<_, AppError>(false);
                };
                let in_debt = sub.status == SubscriptionStatus::PastDue
                    || (sub.status == SubscriptionStatus::Suspended && !sub.suspended_by_admin);
                if !in_debt {
                    return Ok(false);
                }
                settle(state, &plans, conn, &sub, now).await
            })
            .await
            .map_err(|e| anyhow::anyhow!("settling subscription {id}: {e:?}"))?;
        if done {
            super::service::committed(state);
            settled += 1;
            tracing::info!(subscription_id = %id, %user_id, "overdue subscription settled");
        }
        // One the wallet can't cover doesn't keep the smaller ones after it unpaid.
    }
    Ok(settled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retries_follow_the_schedule_from_the_period_end() {
        let end = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let days = [1, 3, 5];
        assert_eq!(next_retry(end, &days, end), Some(end + Duration::days(1)));
        assert_eq!(
            next_retry(end, &days, end + Duration::days(1)),
            Some(end + Duration::days(3))
        );
        assert_eq!(next_retry(end, &days, end + Duration::days(6)), None);
    }
}
