//! Job workers: sweep expired leases, claim a due job, run its handler while renewing the
//! job's lease, record the outcome (only while still holding the lease); retry with
//! exponential backoff until the job's attempts are spent. A panicking handler fails its job,
//! not the worker.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use chrono::Utc;
use diesel_async::RunQueryDsl;
use futures_util::FutureExt;
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use super::model::{self, Job};
use super::{
    BILLING_DUNNING, BILLING_RECONCILE_TOP_UPS, BILLING_RENEWALS, DIAGNOSTIC_SLEEP,
    INSTANCES_RESYNC, JOBS_PRUNE, MAIL_REMINDERS, NODE_STALENESS, TOKEN_CLEANUP,
};
use crate::billing::service::SETTLE_JOB;
use crate::error::AppError;
use crate::instances::service::RECONCILE_JOB;
use crate::state::AppState;

/// Finished jobs are deleted this many per statement.
const PRUNE_BATCH: i64 = 1000;

/// Runs one job's handler.
async fn run(state: &AppState, job: &Job) -> anyhow::Result<()> {
    match job.kind.as_str() {
        NODE_STALENESS => {
            crate::nodes::service::mark_stale_nodes(state).await?;
            Ok(())
        }
        TOKEN_CLEANUP => {
            let mut conn = state.pool.get().await?;
            let n = diesel::sql_query(
                "DELETE FROM sessions WHERE (revoked_at IS NOT NULL AND revoked_at < now() - interval '30 days')
                    OR NOT EXISTS (SELECT 1 FROM refresh_tokens t WHERE t.session_id = sessions.id AND t.expires_at > now())",
            )
            .execute(&mut conn)
            .await?;
            tracing::info!(sessions = n, "expired sessions removed");
            let keys = crate::idempotency::prune(&mut conn, state.clock.now()).await?;
            tracing::info!(keys, "expired idempotency keys removed");
            let day = chrono::Duration::days(1);
            let tokens =
                crate::auth::email_tokens::prune(&mut conn, state.clock.now() - day).await?;
            let sent = crate::email::model::prune_sent(&mut conn, Utc::now() - day * 90).await?;
            crate::email::model::erase_dead_links(&mut conn, Utc::now() - day).await?;
            let orphans = crate::email::model::fail_orphans(&mut conn).await?;
            if orphans > 0 {
                tracing::warn!(orphans, "queued mail without a job marked FAILED");
            }
            tracing::info!(
                tokens,
                sent,
                "expired mail tokens and old sent mail removed"
            );
            Ok(())
        }
        JOBS_PRUNE => {
            let before = Utc::now() - chrono::Duration::from_std(state.settings.job_retention)?;
            let mut conn = state.pool.get().await?;
            let n = model::prune_finished(&mut conn, before, PRUNE_BATCH).await?;
            tracing::info!(jobs = n, "finished jobs pruned");
            Ok(())
        }
        DIAGNOSTIC_SLEEP => diagnostic_sleep(state, job).await,
        BILLING_RENEWALS => {
            crate::subscriptions::cycle::run_renewals(state).await?;
            Ok(())
        }
        BILLING_DUNNING => {
            crate::subscriptions::cycle::run_dunning(state).await?;
            Ok(())
        }
        BILLING_RECONCILE_TOP_UPS => {
            let done = crate::billing::topup::reconcile(state).await?;
            if done.checked > 0 {
                tracing::info!(?done, "top-ups reconciled with Stripe");
            }
            Ok(())
        }
        SETTLE_JOB => {
            let user_id: uuid::Uuid = serde_json::from_value(job.payload["userId"].clone())?;
            crate::subscriptions::cycle::settle_user(state, user_id).await?;
            Ok(())
        }
        RECONCILE_JOB => {
            let id: uuid::Uuid = serde_json::from_value(job.payload["instanceId"].clone())?;
            crate::provisioner::reconcile::reconcile(state, id)
                .await
                .map_err(AppError::into_anyhow)
        }
        crate::auth::recovery::MAIL_REQUEST_JOB => {
            crate::auth::recovery::run_mail_request(state, &job.payload)
                .await
                .map_err(AppError::into_anyhow)
        }
        crate::email::SEND_JOB => {
            let id: uuid::Uuid = serde_json::from_value(job.payload["emailId"].clone())?;
            crate::email::outbox::deliver(state, id, job.attempts >= job.max_attempts).await
        }
        MAIL_REMINDERS => {
            crate::subscriptions::reminders::run(state).await?;
            Ok(())
        }
        INSTANCES_RESYNC => crate::provisioner::reconcile::resync(state)
            .await
            .map_err(AppError::into_anyhow),
        other => anyhow::bail!("no handler for job kind {other:?}"),
    }
}

/// What a kind does once one of its jobs failed for good, its handler perhaps never having
/// said so (its last try lost with its worker, a panic): like `run`, by kind.
async fn given_up(conn: &mut crate::db::Conn, kind: &str, payload: &serde_json::Value, why: &str) {
    if kind == crate::email::SEND_JOB {
        crate::email::outbox::job_gave_up(conn, payload, why).await;
    }
}

/// `diagnostic.sleep`, payload `{"ms": N, "panic": "message"}` (both optional): sleeps N
/// milliseconds (at most ten minutes) while holding its lease, then panics with the message if
/// one is given, else counts the run in `payload.completions`. Harmless, so always available:
/// it lets an operator watch workers, leases and crash handling at work (and tests kill a
/// server in the middle of it).
async fn diagnostic_sleep(state: &AppState, job: &Job) -> anyhow::Result<()> {
    let ms = job.payload["ms"].as_u64().unwrap_or(0).min(600_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    if let Some(message) = job.payload["panic"].as_str() {
        panic!("{message}");
    }
    let mut conn = state.pool.get().await?;
    model::count_completion(&mut conn, job.id).await?;
    Ok(())
}

/// 2^attempts seconds (capped at an hour) before the next try.
fn backoff(attempts: i32) -> chrono::Duration {
    chrono::Duration::seconds(2i64.saturating_pow(attempts.clamp(0, 12) as u32).min(3600))
}

/// How holding a job ended.
enum Held {
    /// The handler returned (`Err`: it panicked, with the panic's payload).
    Finished(std::thread::Result<anyhow::Result<()>>),
    /// Another worker took the job after this one's lease expired: the handler was stopped.
    Lost,
}

/// Runs the handler, renewing the lease every third of its length from a task of its own (so
/// that a busy handler can't starve it); stops the handler if the lease is lost.
async fn hold(state: &AppState, worker: &str, job: &Job) -> Held {
    let lease = state.settings.job_lease;
    let (lost_tx, lost_rx) = oneshot::channel::<()>();
    let renewer = {
        let (state, worker, id) = (state.clone(), worker.to_string(), job.id);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                let renewed = match state.pool.get().await {
                    Ok(mut conn) => model::renew(&mut conn, id, &worker, lease)
                        .await
                        .map_err(anyhow::Error::from),
                    Err(e) => Err(e.into()),
                };
                match renewed {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = lost_tx.send(());
                        return;
                    }
                    // The lease may still be renewed before it runs out.
                    Err(e) => tracing::warn!(error = %e, "renewing a job lease failed"),
                }
            }
        })
    };
    let work = AssertUnwindSafe(run(state, job)).catch_unwind();
    let held = tokio::select! {
        done = work => Held::Finished(done),
        _ = lost_rx => Held::Lost,
    };
    renewer.abort();
    held
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Requeues jobs whose lease expired, then claims and runs one job; returns whether there
/// was one.
pub async fn run_one(state: &AppState, worker: &str) -> anyhow::Result<bool> {
    let mut conn = state.pool.get().await?;
    for job in model::requeue_expired(&mut conn).await? {
        tracing::warn!(id = %job.id, kind = %job.kind, attempt = job.attempts,
            now = job.status.as_str(), "job lease expired: its worker stopped renewing it");
        if job.status == model::JobStatus::Failed {
            let why = "its last try was lost: the worker stopped (killed or stuck)";
            given_up(&mut conn, &job.kind, &job.payload, why).await;
        }
    }
    let Some(job) = model::claim(&mut conn, worker, state.settings.job_lease).await? else {
        return Ok(false);
    };
    drop(conn);
    let span = tracing::info_span!("job", id = %job.id, kind = %job.kind, attempt = job.attempts);
    let outcome = match hold(state, worker, &job).instrument(span.clone()).await {
        Held::Lost => {
            tracing::warn!(parent: &span, "lost the lease while running: stopped, nothing recorded");
            return Ok(true);
        }
        Held::Finished(Ok(Ok(()))) => Ok(()),
        Held::Finished(Ok(Err(e))) => Err(format!("{e:#}")),
        Held::Finished(Err(panic)) => Err(format!("panicked: {}", panic_message(&*panic))),
    };
    let mut conn = state.pool.get().await?;
    let recorded = match outcome {
        Ok(()) => model::succeed(&mut conn, job.id, worker).await?,
        Err(error) => {
            tracing::warn!(parent: &span, %error, "job failed");
            let retry_at = Utc::now() + backoff(job.attempts);
            let recorded = model::fail(&mut conn, &job, worker, &error, Some(retry_at)).await?;
            if recorded && job.attempts >= job.max_attempts {
                given_up(&mut conn, &job.kind, &job.payload, &error).await;
            }
            recorded
        }
    };
    if !recorded {
        tracing::warn!(parent: &span, "lost the lease before recording the outcome: discarded");
    }
    Ok(true)
}

/// `count` workers polling every `poll` (sooner when this process enqueues) until `shutdown`.
pub fn spawn_workers(
    state: AppState,
    count: usize,
    poll: Duration,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    // The random part keeps a restarted process (same host name and pid, as in a container)
    // from passing for its predecessor.
    let process_id = format!(
        "{}-{}-{}",
        hostname(),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    (0..count)
        .map(|i| {
            let state = state.clone();
            let mut shutdown = shutdown.clone();
            let worker = format!("{}-{i}", process_id);
            tokio::spawn(async move {
                loop {
                    if *shutdown.borrow() {
                        return;
                    }
                    match run_one(&state, &worker).await {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "job worker error"),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        _ = state.jobs_wakeup.notified() => {}
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    }
                }
            })
        })
        .collect()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "podium".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(super::backoff(1).num_seconds(), 2);
        assert_eq!(super::backoff(3).num_seconds(), 8);
        assert_eq!(super::backoff(40).num_seconds(), 3600);
    }
}
