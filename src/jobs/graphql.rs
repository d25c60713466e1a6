//! Administrators' view of the job queue.

use async_graphql::{Context, ID, Json, Object, Result};
use chrono::{DateTime, Utc};

use super::model::{Job, JobFilter, JobStatus};
use super::service;
use crate::graphql::{ContextExt, PodiumConnection, connection};
use crate::pagination::PageArgs;

#[Object(name = "Job")]
impl Job {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    /// e.g. `node.staleness`.
    async fn kind(&self) -> &str {
        &self.kind
    }
    async fn payload(&self) -> Json<&serde_json::Value> {
        Json(&self.payload)
    }
    async fn status(&self) -> JobStatus {
        self.status
    }
    async fn run_at(&self) -> DateTime<Utc> {
        self.run_at
    }
    async fn attempts(&self) -> i32 {
        self.attempts
    }
    async fn max_attempts(&self) -> i32 {
        self.max_attempts
    }
    /// The error of the latest failed attempt.
    async fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.finished_at
    }
    /// The worker running the job, or the one that finished it.
    async fn locked_by(&self) -> Option<&str> {
        self.locked_by.as_deref()
    }
    /// While RUNNING: until when the worker holds the job unless it renews its lease; past it,
    /// any worker puts the job back in the queue (an attempt lost to "lease expired").
    async fn lease_expires_at(&self) -> Option<DateTime<Utc>> {
        self.lease_expires_at
    }
}

#[derive(Default)]
pub struct JobsQuery;

#[Object]
impl JobsQuery {
    /// Administrators: recent jobs, newest first, with their errors. `totalCount` is exact up
    /// to 10,000 jobs and PostgreSQL's estimate beyond, so that it stays cheap on a big queue.
    #[graphql(complexity = "crate::pagination::page_cost(first, child_complexity)")]
    async fn jobs(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<JobStatus>,
        kind: Option<String>,
    ) -> Result<PodiumConnection<Job>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let page = service::list(
            ctx.state(),
            ctx.identity(),
            JobFilter { status, kind },
            page,
        )
        .await?;
        Ok(connection(page, Job::cursor, |j| j))
    }
}
