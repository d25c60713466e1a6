//! Job workers: claim a due job, run its handler, record the outcome; retry with
//! exponential backoff until the job's attempts are spent.

use std::time::Duration;

use chrono::Utc;
use diesel_async::RunQueryDsl;
use tokio::sync::watch;

use super::model::{self, Job};
use super::{NODE_STALENESS, TOKEN_CLEANUP};
use crate::state::AppState;

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
            Ok(())
        }
        other => anyhow::bail!("no handler for job kind {other:?}"),
    }
}

/// 2^attempts seconds (capped at an hour) before the next try.
fn backoff(attempts: i32) -> chrono::Duration {
    chrono::Duration::seconds(2i64.saturating_pow(attempts.clamp(0, 12) as u32).min(3600))
}

/// Claims and runs one job; returns whether there was one.
pub async fn run_one(state: &AppState, worker: &str) -> anyhow::Result<bool> {
    let mut conn = state.pool.get().await?;
    let Some(job) = model::claim(&mut conn, worker).await? else {
        return Ok(false);
    };
    drop(conn);
    let span = tracing::info_span!("job", id = %job.id, kind = %job.kind, attempt = job.attempts);
    let outcome = {
        let _enter = span.enter();
        tracing::debug!("running");
        run(state, &job).await
    };
    let mut conn = state.pool.get().await?;
    match outcome {
        Ok(()) => model::succeed(&mut conn, job.id).await?,
        Err(e) => {
            tracing::warn!(id = %job.id, kind = %job.kind, attempt = job.attempts, error = %e, "job failed");
            let retry_at = Utc::now() + backoff(job.attempts);
            model::fail(&mut conn, &job, &format!("{e:#}"), Some(retry_at)).await?;
        }
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
    (0..count)
        .map(|i| {
            let state = state.clone();
            let mut shutdown = shutdown.clone();
            let worker = format!("{}-{}-{i}", hostname(), std::process::id());
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
