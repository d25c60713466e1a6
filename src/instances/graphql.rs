//! Instances in the API: reading them, starting, stopping and restarting them, their logs
//! and credentials, and their live status.

use async_graphql::{Context, ID, Object, Result, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;

use super::events::{InstanceStatusChanged, TOPIC};
use super::model::{DesiredState, InstanceStatus, ServiceInstance};
use super::service::{self, Operation};
use crate::graphql::{ContextExt, PodiumConnection, connection, parse_id};
use crate::pagination::{PageArgs, page_cost};
use crate::provisioner::service as cluster;

#[Object(name = "ServiceInstance")]
impl ServiceInstance {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.name
    }
    /// The DNS label: the instance answers at `<subdomain>.<base domain>`.
    async fn subdomain(&self) -> &str {
        &self.subdomain
    }
    /// Where the app answers once it runs.
    async fn url(&self) -> Option<&str> {
        self.public_url.as_deref()
    }
    async fn status(&self) -> InstanceStatus {
        self.status
    }
    /// What the status means for people ("waiting for room on a worker node", "the app
    /// keeps crashing: ...").
    async fn status_message(&self) -> Option<&str> {
        self.status_message.as_deref()
    }
    /// What billing and its owner want it to be doing; `status` follows.
    async fn desired_state(&self) -> DesiredState {
        self.desired_state
    }
    async fn subscription_id(&self) -> ID {
        ID(self.subscription_id.to_string())
    }
    /// The worker node it is placed on (none while PENDING).
    async fn node(&self, ctx: &Context<'_>) -> Result<Option<InstanceNode>> {
        let Some(node_id) = self.node_id else {
            return Ok(None);
        };
        Ok(ctx
            .data_unchecked::<crate::nodes::graphql::NodeNameLoader>()
            .load_one(node_id)
            .await?
            .map(|(name, region)| InstanceNode { name, region }))
    }
    /// The generated credentials and settings the app runs with. Its owner only: others
    /// (administrators included) get FORBIDDEN. Read from the cluster on each request.
    async fn credentials(&self, ctx: &Context<'_>) -> Result<Vec<InstanceSetting>> {
        Ok(cluster::credentials(ctx.state(), ctx.identity(), self.id)
            .await?
            .into_iter()
            .map(|(name, value)| InstanceSetting { name, value })
            .collect())
    }
    async fn restarted_at(&self) -> Option<DateTime<Utc>> {
        self.restarted_at
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.updated_at
    }
}

/// Where an instance runs, as its owner may know it.
#[derive(SimpleObject)]
pub struct InstanceNode {
    pub name: String,
    pub region: Option<String>,
}

/// One environment variable of an instance.
#[derive(SimpleObject)]
pub struct InstanceSetting {
    pub name: String,
    pub value: String,
}

/// One status transition of an instance.
pub struct InstanceStatusEvent {
    event: InstanceStatusChanged,
}

#[Object]
impl InstanceStatusEvent {
    /// The instance as this change left it.
    async fn instance(&self) -> &ServiceInstance {
        &self.event.instance
    }
    async fn previous_status(&self) -> InstanceStatus {
        self.event.previous_status
    }
    async fn status(&self) -> InstanceStatus {
        self.event.status
    }
    async fn message(&self) -> Option<&str> {
        self.event.message.as_deref()
    }
    async fn at(&self) -> DateTime<Utc> {
        self.event.at
    }
}

#[derive(Default)]
pub struct InstancesQuery;

#[Object]
impl InstancesQuery {
    /// One instance: its owner's, or any for administrators.
    async fn service_instance(&self, ctx: &Context<'_>, id: ID) -> Result<ServiceInstance> {
        let id = parse_id("id", &id)?;
        Ok(service::get(ctx.state(), ctx.identity(), id).await?)
    }

    /// The caller's instances, newest first.
    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn my_instances(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<PodiumConnection<ServiceInstance>> {
        list(ctx, first, after, false).await
    }

    /// Administrators: every instance, newest first.
    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn all_instances(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<PodiumConnection<ServiceInstance>> {
        list(ctx, first, after, true).await
    }

    /// The last `tailLines` (1..5000, default 100) lines of the instance's log.
    async fn instance_logs(
        &self,
        ctx: &Context<'_>,
        id: ID,
        tail_lines: Option<i32>,
        container: Option<String>,
    ) -> Result<String> {
        let id = parse_id("id", &id)?;
        Ok(cluster::logs(ctx.state(), ctx.identity(), id, tail_lines, container).await?)
    }
}

async fn list(
    ctx: &Context<'_>,
    first: Option<i32>,
    after: Option<String>,
    all: bool,
) -> Result<PodiumConnection<ServiceInstance>> {
    let page = PageArgs::new(first, after.as_deref())?;
    let found = service::list(ctx.state(), ctx.identity(), all, page).await?;
    Ok(connection(found, ServiceInstance::cursor, |i| i))
}

#[derive(Default)]
pub struct InstancesMutation;

#[Object]
impl InstancesMutation {
    /// Runs a stopped instance again. CONFLICT while its subscription is suspended,
    /// expired or cancelled.
    async fn start_instance(&self, ctx: &Context<'_>, id: ID) -> Result<ServiceInstance> {
        operate(ctx, id, Operation::Start).await
    }

    /// Stops the instance (scaled to zero; its data is kept).
    async fn stop_instance(&self, ctx: &Context<'_>, id: ID) -> Result<ServiceInstance> {
        operate(ctx, id, Operation::Stop).await
    }

    /// Replaces the instance's container with a fresh one.
    async fn restart_instance(&self, ctx: &Context<'_>, id: ID) -> Result<ServiceInstance> {
        operate(ctx, id, Operation::Restart).await
    }
}

async fn operate(ctx: &Context<'_>, id: ID, op: Operation) -> Result<ServiceInstance> {
    let id = parse_id("id", &id)?;
    Ok(service::operate(ctx.state(), ctx.identity(), id, op).await?)
}

#[derive(Default)]
pub struct InstancesSubscription;

#[Subscription]
impl InstancesSubscription {
    /// Every status transition of the instance (its owner or an administrator), or of all
    /// the caller's own instances without an id: in order, as it commits, on any replica.
    async fn instance_status_changed(
        &self,
        ctx: &Context<'_>,
        instance_id: Option<ID>,
    ) -> Result<impl Stream<Item = InstanceStatusEvent>> {
        let only = instance_id
            .map(|id| parse_id("instanceId", &id))
            .transpose()?;
        service::watch_status(ctx.state(), ctx.identity(), only).await?;
        Ok(crate::graphql::live(
            ctx,
            TOPIC,
            move |_state, identity, event: InstanceStatusChanged| async move {
                Ok(service::status_event_for(&identity, only, event)?
                    .map(|event| InstanceStatusEvent { event }))
            },
        )?)
    }

    /// The instance's log, line by line as it is written, after its last `tailLines`
    /// (default 100). Ends when the container goes away or the caller loses access.
    async fn instance_log_lines(
        &self,
        ctx: &Context<'_>,
        instance_id: ID,
        tail_lines: Option<i32>,
    ) -> Result<impl Stream<Item = String>> {
        let id = parse_id("instanceId", &instance_id)?;
        Ok(cluster::follow_logs(ctx.state(), ctx.identity(), id, tail_lines).await?)
    }
}
