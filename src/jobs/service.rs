//! Reading the job queue (administrators).

use super::model::{self, Job, JobFilter};
use crate::auth::Identity;
use crate::error::AppResult;
use crate::pagination::{Page, PageArgs, Total};
use crate::state::AppState;
use futures_util::FutureExt;

pub async fn list(
    state: &AppState,
    identity: &Identity,
    filter: JobFilter,
    page: PageArgs,
) -> AppResult<Page<Job>> {
    identity.admin()?;
    let mut conn = state.pool.get().await?;
    let rows = model::list(&mut conn, &filter, &page).await?;
    let total = Total::deferred(&state.pool, filter, |conn, filter| {
        model::count(conn, filter).boxed()
    });
    Ok(Page::from_rows(rows, &page, total))
}
