//! The cron scheduler: each schedule's next tick lives in the database; whichever
//! replica takes the tick's row lock enqueues it (once, by unique key) and advances it.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use tokio::sync::watch;

use super::model;
use super::{
    BILLING_DUNNING, BILLING_RECONCILE_TOP_UPS, BILLING_RENEWALS, INSTANCES_RESYNC, JOBS_PRUNE,
    MAIL_REMINDERS, NODE_STALENESS, TOKEN_CLEANUP,
};
use crate::state::AppState;

pub struct Schedule {
    pub name: &'static str,
    pub cron: String,
}

pub fn schedules(state: &AppState) -> Vec<Schedule> {
    vec![
        Schedule {
            name: NODE_STALENESS,
            cron: state.settings.node_staleness_cron.clone(),
        },
        Schedule {
            name: TOKEN_CLEANUP,
            cron: state.settings.token_cleanup_cron.clone(),
        },
        Schedule {
            name: JOBS_PRUNE,
            cron: state.settings.job_prune_cron.clone(),
        },
        Schedule {
            name: BILLING_RENEWALS,
            cron: state.settings.billing.renewal_cron.clone(),
        },
        Schedule {
            name: BILLING_DUNNING,
            cron: state.settings.billing.dunning_cron.clone(),
        },
        Schedule {
            name: BILLING_RECONCILE_TOP_UPS,
            cron: state.settings.billing.top_up_reconcile_cron.clone(),
        },
        Schedule {
            name: MAIL_REMINDERS,
            cron: state.settings.mail.reminder_cron.clone(),
        },
        Schedule {
            name: INSTANCES_RESYNC,
            cron: state.settings.kube.resync_cron.clone(),
        },
    ]
}

fn next_after(cron: &str, after: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    cron::Schedule::from_str(cron)?
        .after(&after)
        .next()
        .ok_or_else(|| anyhow::anyhow!("cron expression {cron:?} never fires"))
}

/// Enqueues every due tick; returns how many this replica enqueued.
pub async fn tick(state: &AppState, schedules: &[Schedule]) -> anyhow::Result<usize> {
    let mut enqueued = 0;
    let mut conn = state.pool.get().await?;
    for schedule in schedules {
        let took = conn
            .transaction(async |conn| {
                let Some(due) = model::due_tick(conn, schedule.name).await? else {
                    return Ok::<_, anyhow::Error>(false);
                };
                let key = format!("cron:{}:{}", schedule.name, due.timestamp());
                model::enqueue(
                    conn,
                    schedule.name,
                    serde_json::json!({ "tick": due }),
                    Utc::now(),
                    Some(&key),
                )
                .await?;
                // Missed ticks collapse into this one: the next is computed from now.
                model::advance_schedule(
                    conn,
                    schedule.name,
                    next_after(&schedule.cron, Utc::now())?,
                )
                .await?;
                Ok(true)
            })
            .await?;
        if took {
            enqueued += 1;
        }
    }
    if enqueued > 0 {
        state.jobs_wakeup.notify_waiters();
    }
    Ok(enqueued)
}

/// Registers the schedules, then enqueues due ticks every second until `shutdown`.
pub fn spawn(state: AppState, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let schedules = schedules(&state);
        let registered = async {
            let mut conn = state.pool.get().await?;
            for s in &schedules {
                model::upsert_schedule(
                    &mut conn,
                    s.name,
                    &s.cron,
                    next_after(&s.cron, Utc::now())?,
                )
                .await?;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if let Err(e) = registered {
            tracing::error!(error = %e, "registering the schedules failed; the scheduler is off");
            return;
        }
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            if let Err(e) = tick(&state, &schedules).await {
                tracing::warn!(error = %e, "scheduler tick failed");
            }
        }
    })
}
