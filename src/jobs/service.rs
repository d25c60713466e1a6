//! Reading the job queue (administrators).

use super::model::{self, Job, JobFilter};
use crate::auth::Identity;
use crate::error::AppResult;
use crate::pagination::{Page, PageArgs};
use crate::state::AppState;

pub async fn list(
    state: &AppState,
    identity: &Identity,
    filter: JobFilter,
    page: PageArgs,
) -> AppResult<Page<Job>> {
    identity.admin()?;
    let mut conn = state.pool.get().await?;
    let rows = model::list(&mut conn, &filter, &page).await?;
    let total = model::count(&mut conn, &filter).await?;
    Ok(Page::from_rows(rows, &page, total))
}
