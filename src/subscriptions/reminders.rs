//! The `mail.reminders` job: looks ahead for what a customer should hear about before it
//! happens. A renewal in the next days (warning when the wallet won't cover it), and a
//! suspended subscription whose data is deleted in the next days. Each message has a unique
//! key (its period, its suspension), so the job runs as often as it likes and each goes once.

use chrono::{DateTime, Duration, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;

use super::cycle::{Plans, owed, renewal_price};
use super::model::{self, Subscription};
use super::service::period_line;
use crate::billing::service as billing;
use crate::db::Conn;
use crate::email::notify::{self, Billed};
use crate::error::AppResult;
use crate::state::AppState;

/// How far ahead a renewal or an expiry is announced.
pub const AHEAD_DAYS: i64 = 3;

/// Subscriptions per page, each page one short transaction.
const PAGE: i64 = 500;

/// What one run queued.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reminded {
    pub renewals: usize,
    pub expiries: usize,
}

/// Queues the reminders due at the clock's now.
pub async fn run(state: &AppState) -> anyhow::Result<Reminded> {
    let now = state.clock.now();
    let plans = Plans::default();
    let done = Reminded {
        renewals: renewals(state, &plans, now).await?,
        expiries: expiries(state, &plans, now).await?,
    };
    if done != Reminded::default() {
        state.jobs_wakeup.notify_waiters();
        tracing::info!(?done, "reminders queued");
    }
    Ok(done)
}

/// ACTIVE, renewing subscriptions whose period ends within `AHEAD_DAYS`.
async fn renewals(state: &AppState, plans: &Plans, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let until = now + Duration::days(AHEAD_DAYS);
    let mut after = None;
    let mut queued = 0;
    loop {
        let mut conn = state.pool.get().await?;
        let (page, sent) = conn
            .transaction(async |conn| {
                let page = model::renewing_between(conn, now, until, after, PAGE).await?;
                let mut sent = 0;
                for sub in &page {
                    sent += usize::from(renewal_reminder(state, plans, conn, sub).await?);
                }
                Ok::<_, crate::error::AppError>((page, sent))
            })
            .await
            .map_err(|e| anyhow::anyhow!("renewal reminders: {e:?}"))?;
        queued += sent;
        match page.last() {
            Some(last) if page.len() as i64 == PAGE => {
                after = Some((last.current_period_end, last.id));
            }
            _ => return Ok(queued),
        }
    }
}

async fn renewal_reminder(
    state: &AppState,
    plans: &Plans,
    conn: &mut Conn,
    sub: &Subscription,
) -> AppResult<bool> {
    let sale = plans.get(conn, sub.plan_id).await?;
    // What the renewal will charge (see `cycle::renew`).
    let line = period_line(&sale, &sub.name, renewal_price(&sale, sub));
    let billed = Billed {
        sub,
        service: &sale.service.name,
        plan: &sale.plan.name,
        amount: billing::total_of(&state.settings.billing, &[line]),
        balance: billing::balance(conn, sub.user_id).await?,
    };
    Ok(notify::renewal_reminder(conn, state, &billed)
        .await?
        .is_some())
}

/// Subscriptions suspended for non-payment that expire within `AHEAD_DAYS`.
async fn expiries(state: &AppState, plans: &Plans, now: DateTime<Utc>) -> anyhow::Result<usize> {
    let expire_after = Duration::days(i64::from(state.settings.billing.expire_after_days));
    // Expiring in (now, now + AHEAD]: suspended in (now - expiry, now + AHEAD - expiry].
    let (from, to) = (
        now - expire_after,
        now + Duration::days(AHEAD_DAYS) - expire_after,
    );
    let mut after: Option<Uuid> = None;
    let mut queued = 0;
    loop {
        let mut conn = state.pool.get().await?;
        let (page, sent) = conn
            .transaction(async |conn| {
                let page = model::suspended_between(conn, from, to, after, PAGE).await?;
                let mut sent = 0;
                for sub in &page {
                    let sale = plans.get(conn, sub.plan_id).await?;
                    let billed = Billed {
                        sub,
                        service: &sale.service.name,
                        plan: &sale.plan.name,
                        amount: owed(conn, state, sub).await?,
                        balance: billing::balance(conn, sub.user_id).await?,
                    };
                    sent +=
                        usize::from(notify::expiring_soon(conn, state, &billed).await?.is_some());
                }
                Ok::<_, crate::error::AppError>((page, sent))
            })
            .await
            .map_err(|e| anyhow::anyhow!("expiry reminders: {e:?}"))?;
        queued += sent;
        match page.last() {
            Some(last) if page.len() as i64 == PAGE => after = Some(last.id),
            _ => return Ok(queued),
        }
    }
}
