//! Subscriptions in the API: buying, changing, cancelling, reading, live changes.

use std::collections::HashMap;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use uuid::Uuid;

use super::events::{SubscriptionChanged, TOPIC};
use super::model::{Subscription as ServiceSubscription, SubscriptionFilter, SubscriptionStatus};
use super::service;
use crate::auth::Identity;
use crate::catalog::model::{Plan, Service};
use crate::graphql::{ContextExt, PodiumConnection, connection, parse_id};
use crate::instances::model::ServiceInstance;
use crate::money::Money;
use crate::pagination::{Cursor, PageArgs, page_cost};
use crate::state::AppState;
use crate::users::model::User;

pub type SubscriptionDataLoader =
    DataLoader<SubscriptionLoader, crate::graphql::loader_cache::EpochCache>;

/// Batches what a page of subscriptions (or invoices) refers to: subscriptions, plans,
/// services, instances.
pub struct SubscriptionLoader {
    state: AppState,
    identity: Identity,
}

impl SubscriptionLoader {
    pub fn new(state: AppState, identity: Identity) -> Self {
        SubscriptionLoader { state, identity }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanKey(pub Uuid);
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServiceKey(pub Uuid);
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceOf(pub Uuid);
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionKey(pub Uuid);

impl Loader<SubscriptionKey> for SubscriptionLoader {
    type Value = ServiceSubscription;
    type Error = async_graphql::Error;
    async fn load(
        &self,
        keys: &[SubscriptionKey],
    ) -> Result<HashMap<SubscriptionKey, ServiceSubscription>> {
        let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
        let found = service::by_ids(&self.state, &self.identity, &ids).await?;
        Ok(found
            .into_iter()
            .map(|s| (SubscriptionKey(s.id), s))
            .collect())
    }
}

impl Loader<PlanKey> for SubscriptionLoader {
    type Value = Plan;
    type Error = async_graphql::Error;
    async fn load(&self, keys: &[PlanKey]) -> Result<HashMap<PlanKey, Plan>> {
        let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
        let found = crate::catalog::service::plans_by_ids(&self.state, &ids).await?;
        Ok(found.into_iter().map(|p| (PlanKey(p.id), p)).collect())
    }
}

impl Loader<ServiceKey> for SubscriptionLoader {
    type Value = Service;
    type Error = async_graphql::Error;
    async fn load(&self, keys: &[ServiceKey]) -> Result<HashMap<ServiceKey, Service>> {
        let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
        let found = crate::catalog::service::services_by_ids(&self.state, &ids).await?;
        Ok(found.into_iter().map(|s| (ServiceKey(s.id), s)).collect())
    }
}

impl Loader<InstanceOf> for SubscriptionLoader {
    type Value = ServiceInstance;
    type Error = async_graphql::Error;
    async fn load(&self, keys: &[InstanceOf]) -> Result<HashMap<InstanceOf, ServiceInstance>> {
        let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
        let found =
            crate::instances::service::of_subscriptions(&self.state, &self.identity, &ids).await?;
        Ok(found
            .into_iter()
            .map(|i| (InstanceOf(i.subscription_id), i))
            .collect())
    }
}

#[Object(name = "ServiceSubscription")]
impl ServiceSubscription {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn status(&self) -> SubscriptionStatus {
        self.status
    }
    /// The monthly price it was sold at; it holds until the next renewal.
    async fn price(&self) -> Money {
        Money::new(self.price, &self.currency)
    }
    async fn current_period_start(&self) -> DateTime<Utc> {
        self.current_period_start
    }
    async fn current_period_end(&self) -> DateTime<Utc> {
        self.current_period_end
    }
    async fn auto_renew(&self) -> bool {
        self.auto_renew
    }
    async fn cancel_at_period_end(&self) -> bool {
        self.cancel_at_period_end
    }
    /// Failed renewal charges since the last payment.
    async fn failed_charges(&self) -> i32 {
        self.failed_charges
    }
    /// While PAST_DUE: when it will be SUSPENDED unless paid.
    async fn grace_until(&self) -> Option<DateTime<Utc>> {
        self.grace_until
    }
    /// While PAST_DUE: when the charge is retried next.
    async fn next_retry_at(&self) -> Option<DateTime<Utc>> {
        self.next_retry_at
    }
    async fn suspended_at(&self) -> Option<DateTime<Utc>> {
        self.suspended_at
    }
    /// Suspended by an administrator (not for non-payment).
    async fn suspended_by_administrator(&self) -> bool {
        self.suspended_by_admin
    }
    async fn cancelled_at(&self) -> Option<DateTime<Utc>> {
        self.cancelled_at
    }
    async fn expired_at(&self) -> Option<DateTime<Utc>> {
        self.expired_at
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.updated_at
    }
    async fn plan(&self, ctx: &Context<'_>) -> Result<Option<Plan>> {
        let loader = ctx.data_unchecked::<SubscriptionDataLoader>();
        loader.load_one(PlanKey(self.plan_id)).await
    }
    async fn service(&self, ctx: &Context<'_>) -> Result<Option<Service>> {
        let loader = ctx.data_unchecked::<SubscriptionDataLoader>();
        let Some(plan) = loader.load_one(PlanKey(self.plan_id)).await? else {
            return Ok(None);
        };
        loader.load_one(ServiceKey(plan.service_id)).await
    }
    async fn instance(&self, ctx: &Context<'_>) -> Result<Option<ServiceInstance>> {
        let loader = ctx.data_unchecked::<SubscriptionDataLoader>();
        loader.load_one(InstanceOf(self.id)).await
    }
    /// The customer (their own record, or any for administrators).
    async fn user(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let loader = ctx.data_unchecked::<DataLoader<crate::users::graphql::UserLoader>>();
        loader.load_one(self.user_id).await
    }
}

#[derive(InputObject)]
pub struct SubscribeInput {
    pub plan_id: ID,
    /// What the customer calls the instance (1 to 63 characters); its subdomain derives from it.
    pub name: String,
    /// Retries with the same key within 24 h return the first result and charge nothing more.
    pub idempotency_key: Option<String>,
}

#[derive(SimpleObject)]
pub struct SubscribePayload {
    pub subscription: ServiceSubscription,
    pub instance: ServiceInstance,
}

#[derive(Default)]
pub struct SubscriptionsQuery;

#[Object]
impl SubscriptionsQuery {
    /// The caller's subscriptions, newest first.
    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn my_subscriptions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<SubscriptionStatus>,
    ) -> Result<PodiumConnection<ServiceSubscription>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let filter = SubscriptionFilter {
            status,
            ..Default::default()
        };
        let found = service::list(ctx.state(), ctx.identity(), filter, true, page).await?;
        Ok(connection(
            found,
            |s| Cursor::new(s.created_at, s.id),
            |s| s,
        ))
    }

    /// One subscription: its owner's, or any for administrators.
    async fn service_subscription(&self, ctx: &Context<'_>, id: ID) -> Result<ServiceSubscription> {
        let id = parse_id("id", &id)?;
        Ok(service::get(ctx.state(), ctx.identity(), id).await?)
    }

    /// Administrators: every subscription, newest first.
    #[graphql(complexity = "page_cost(first, child_complexity)")]
    async fn all_subscriptions(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<SubscriptionStatus>,
        user_id: Option<ID>,
    ) -> Result<PodiumConnection<ServiceSubscription>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let filter = SubscriptionFilter {
            status,
            user_id: user_id
                .as_ref()
                .map(|id| parse_id("userId", id))
                .transpose()?,
        };
        let found = service::list(ctx.state(), ctx.identity(), filter, false, page).await?;
        Ok(connection(
            found,
            |s| Cursor::new(s.created_at, s.id),
            |s| s,
        ))
    }
}

#[derive(Default)]
pub struct SubscriptionsMutation;

#[Object]
impl SubscriptionsMutation {
    /// Buys a plan: one month paid from the wallet now, an invoice, and an instance that
    /// the provisioner starts. PAYMENT_REQUIRED (with `extensions.shortfall`) when the
    /// wallet is short; nothing changes then.
    async fn subscribe(
        &self,
        ctx: &Context<'_>,
        input: SubscribeInput,
    ) -> Result<SubscribePayload> {
        let made = service::subscribe(
            ctx.state(),
            ctx.identity(),
            service::SubscribeInput {
                plan_id: parse_id("planId", &input.plan_id)?,
                name: input.name,
                idempotency_key: input.idempotency_key,
            },
        )
        .await?;
        Ok(SubscribePayload {
            subscription: made.subscription,
            instance: made.instance,
        })
    }

    /// Moves to another plan of the same service, prorated by the second: an upgrade is
    /// charged now, a downgrade credited to the wallet.
    async fn change_subscription_plan(
        &self,
        ctx: &Context<'_>,
        id: ID,
        plan_id: ID,
        idempotency_key: Option<String>,
    ) -> Result<ServiceSubscription> {
        let (id, plan_id) = (parse_id("id", &id)?, parse_id("planId", &plan_id)?);
        Ok(service::change_plan(ctx.state(), ctx.identity(), id, plan_id, idempotency_key).await?)
    }

    /// Cancels at the end of the paid period (default), or now with the unused part
    /// credited to the wallet; the instance is deleted when it ends.
    async fn cancel_subscription(
        &self,
        ctx: &Context<'_>,
        id: ID,
        #[graphql(default = true)] at_period_end: bool,
    ) -> Result<ServiceSubscription> {
        let id = parse_id("id", &id)?;
        Ok(service::cancel(ctx.state(), ctx.identity(), id, at_period_end).await?)
    }

    /// Undoes a pending cancellation at period end.
    async fn resume_subscription(&self, ctx: &Context<'_>, id: ID) -> Result<ServiceSubscription> {
        let id = parse_id("id", &id)?;
        Ok(service::resume(ctx.state(), ctx.identity(), id).await?)
    }

    /// With auto-renew off the subscription ends with its paid period.
    async fn set_subscription_auto_renew(
        &self,
        ctx: &Context<'_>,
        id: ID,
        auto_renew: bool,
    ) -> Result<ServiceSubscription> {
        let id = parse_id("id", &id)?;
        Ok(service::set_auto_renew(ctx.state(), ctx.identity(), id, auto_renew).await?)
    }

    /// Administrators: stops the service (instance stopped, data kept) until unsuspended.
    async fn suspend_subscription(&self, ctx: &Context<'_>, id: ID) -> Result<ServiceSubscription> {
        let id = parse_id("id", &id)?;
        Ok(service::suspend(ctx.state(), ctx.identity(), id).await?)
    }

    /// Administrators: lifts their own suspension.
    async fn unsuspend_subscription(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> Result<ServiceSubscription> {
        let id = parse_id("id", &id)?;
        Ok(service::unsuspend(ctx.state(), ctx.identity(), id).await?)
    }
}

#[derive(Default)]
pub struct SubscriptionsSubscription;

#[Subscription]
impl SubscriptionsSubscription {
    /// Every change to the caller's subscriptions (administrators: everyone's), as it
    /// commits, on any replica.
    async fn service_subscription_changed(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = ServiceSubscription>> {
        Ok(crate::graphql::live(
            ctx,
            TOPIC,
            |state, identity, event: SubscriptionChanged| async move {
                service::changed_for(&state, &identity, &event).await
            },
        )?)
    }
}
