//! The outbox for administrators: reading it, and queueing a failed message again.

use futures_util::FutureExt;
use serde_json::json;
use uuid::Uuid;

use super::model::{self, Email, EmailStatus};
use super::outbox::enqueue_send;
use crate::audit::service::audited;
use crate::auth::Identity;
use crate::error::{AppError, AppResult};
use crate::pagination::{Page, PageArgs, Total};
use crate::state::AppState;

pub async fn list(
    state: &AppState,
    identity: &Identity,
    status: Option<EmailStatus>,
    page: PageArgs,
) -> AppResult<Page<Email>> {
    identity.admin()?;
    let mut conn = state.pool.get().await?;
    let rows = model::list(&mut conn, status, &page).await?;
    let total = Total::deferred(&state.pool, status, |conn, status| {
        model::count(conn, *status).boxed()
    });
    Ok(Page::from_rows(rows, &page, total))
}

/// Queues a FAILED message again (audited). A message that is queued or sent already is a
/// CONFLICT: retrying never sends a message twice; so is one whose one-time link expired.
pub async fn retry(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<Email> {
    let actor = identity.admin()?;
    let max_attempts = state.settings.mail.max_attempts;
    let email = audited(state, actor, "email.retry", "email", move |conn| {
        async move {
            if let Some(e) = model::find(conn, id).await?
                && let Some(ttl) = e.template.link_ttl()
                && e.created_at + ttl <= chrono::Utc::now()
            {
                return Err(AppError::Conflict(
                    "its one-time link has expired: the user can ask for a new one".into(),
                ));
            }
            let Some(email) = model::requeue_failed(conn, id).await? else {
                return Err(match model::find(conn, id).await? {
                    None => AppError::NotFound("no such email".into()),
                    Some(e) => AppError::Conflict(format!(
                        "only a FAILED message can be retried; this one is {}",
                        e.status.as_str()
                    )),
                });
            };
            // A key of its own per retry: the row's FAILED -> QUEUED step already makes
            // concurrent retries of one message one.
            let round = format!(":retry:{}", Uuid::new_v4().simple());
            enqueue_send(conn, max_attempts, id, &round).await?;
            let metadata =
                json!({ "template": email.template.as_str(), "attempts": email.attempts });
            Ok((email, Some(id), metadata))
        }
        .boxed()
    })
    .await?;
    state.jobs_wakeup.notify_waiters();
    Ok(email)
}
