//! Catalog objects, public queries and administrators' mutations.

use std::collections::HashMap;

use async_graphql::dataloader::{DataLoader, Loader};
use async_graphql::{Context, ID, InputObject, Json, MaybeUndefined, Object, Result};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::model::{Category, Plan, Service};
use super::service::{self, CategoryInput, PlanInput, ServiceInput, ServiceQuery};
use crate::auth::Identity;
use crate::graphql::{ContextExt, PodiumConnection, connection, parse_id};
use crate::money::{Money, MoneyInput};
use crate::pagination::PageArgs;
use crate::state::AppState;

#[Object(name = "ServiceCategory")]
impl Category {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn slug(&self) -> &str {
        &self.slug
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn description(&self) -> &str {
        &self.description
    }
    async fn icon(&self) -> Option<&str> {
        self.icon.as_deref()
    }
    async fn sort_order(&self) -> i32 {
        self.sort_order
    }
    async fn is_active(&self) -> bool {
        self.is_active
    }
}

#[Object(name = "Service")]
impl Service {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn slug(&self) -> &str {
        &self.slug
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn description(&self) -> &str {
        &self.description
    }
    async fn icon(&self) -> Option<&str> {
        self.icon.as_deref()
    }
    /// Administrators only (FORBIDDEN for others).
    async fn docker_image(&self, ctx: &Context<'_>) -> Result<Option<&str>> {
        Ok(Some(service::operator_field(
            ctx.identity(),
            self.docker_image.as_str(),
        )?))
    }
    /// Administrators only (FORBIDDEN for others).
    async fn container_port(&self, ctx: &Context<'_>) -> Result<Option<i32>> {
        Ok(Some(service::operator_field(
            ctx.identity(),
            self.container_port,
        )?))
    }
    /// Administrators only (FORBIDDEN for others). Environment variable name -> template;
    /// `${host}` is the instance's host and `${secret:N}` a generated secret of N characters.
    async fn env_template(&self, ctx: &Context<'_>) -> Result<Option<Json<&serde_json::Value>>> {
        Ok(Some(service::operator_field(
            ctx.identity(),
            Json(&self.env_template),
        )?))
    }
    /// Administrators only (FORBIDDEN for others).
    async fn volume_mount_path(&self, ctx: &Context<'_>) -> Result<Option<&str>> {
        Ok(service::operator_field(
            ctx.identity(),
            self.volume_mount_path.as_deref(),
        )?)
    }
    async fn tags(&self) -> Vec<&str> {
        self.tags.iter().flatten().map(String::as_str).collect()
    }
    async fn is_active(&self) -> bool {
        self.is_active
    }
    async fn is_public(&self) -> bool {
        self.is_public
    }
    async fn is_featured(&self) -> bool {
        self.is_featured
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.updated_at
    }
    async fn category(&self, ctx: &Context<'_>) -> Result<Option<Category>> {
        let Some(id) = self.category_id else {
            return Ok(None);
        };
        let category = ctx
            .data_unchecked::<CatalogDataLoader>()
            .load_one(CategoryKey(id))
            .await?;
        Ok(category)
    }
    /// The plans on sale (administrators also see inactive ones), cheapest first.
    #[graphql(complexity = "crate::pagination::small_list_cost(child_complexity)")]
    async fn plans(&self, ctx: &Context<'_>) -> Result<Vec<Plan>> {
        Ok(ctx
            .data_unchecked::<CatalogDataLoader>()
            .load_one(PlansOf(self.id))
            .await?
            .unwrap_or_default())
    }
}

#[Object(name = "ServicePlan")]
impl Plan {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn service_id(&self) -> ID {
        ID(self.service_id.to_string())
    }
    async fn name(&self) -> &str {
        &self.name
    }
    /// BASIC, STANDARD, PREMIUM or ENTERPRISE.
    async fn plan_type(&self) -> &str {
        &self.plan_type
    }
    async fn monthly_price(&self) -> Money {
        Money::new(self.monthly_price, &self.currency)
    }
    async fn cpu_milli(&self) -> i32 {
        self.cpu_milli
    }
    async fn memory_mb(&self) -> i32 {
        self.memory_mb
    }
    async fn storage_gb(&self) -> i32 {
        self.storage_gb
    }
    /// Administrators only (FORBIDDEN for others). Null: unlimited.
    async fn total_quota(&self, ctx: &Context<'_>) -> Result<Option<i32>> {
        Ok(service::operator_field(ctx.identity(), self.total_quota)?)
    }
    /// Administrators only (FORBIDDEN for others).
    async fn used_quota(&self, ctx: &Context<'_>) -> Result<Option<i32>> {
        Ok(Some(service::operator_field(
            ctx.identity(),
            self.used_quota,
        )?))
    }
    /// Null: unlimited.
    async fn remaining_quota(&self) -> Option<i32> {
        self.total_quota.map(|t| (t - self.used_quota).max(0))
    }
    /// Whether it can be bought now: active and with quota left.
    async fn is_available(&self) -> bool {
        self.is_active && self.total_quota.is_none_or(|t| self.used_quota < t)
    }
    async fn max_instances_per_user(&self) -> Option<i32> {
        self.max_instances_per_user
    }
    async fn sort_order(&self) -> i32 {
        self.sort_order
    }
    async fn is_active(&self) -> bool {
        self.is_active
    }
}

/// Cached per request, so a parent resolver can prefetch for its children.
pub type CatalogDataLoader = DataLoader<CatalogLoader, crate::graphql::loader_cache::EpochCache>;

/// Batches the categories and plans a page of services refers to.
pub struct CatalogLoader {
    state: AppState,
    identity: Identity,
}

impl CatalogLoader {
    pub fn new(state: AppState, identity: Identity) -> Self {
        CatalogLoader { state, identity }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CategoryKey(pub Uuid);

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlansOf(pub Uuid);

impl Loader<CategoryKey> for CatalogLoader {
    type Value = Category;
    type Error = async_graphql::Error;

    async fn load(
        &self,
        keys: &[CategoryKey],
    ) -> Result<HashMap<CategoryKey, Category>, Self::Error> {
        let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
        let found = service::categories_by_ids(&self.state, &self.identity, &ids).await?;
        Ok(found.into_iter().map(|c| (CategoryKey(c.id), c)).collect())
    }
}

impl Loader<PlansOf> for CatalogLoader {
    type Value = Vec<Plan>;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[PlansOf]) -> Result<HashMap<PlansOf, Vec<Plan>>, Self::Error> {
        let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
        let found = service::plans_of_services(&self.state, &self.identity, &ids).await?;
        Ok(found
            .into_iter()
            .map(|(id, plans)| (PlansOf(id), plans))
            .collect())
    }
}

/// Loads the plans and categories a page of services will show in one read each (from
/// the public catalog in memory, or one query) and hands them to the request's loader,
/// so the fields below find them without waiting for a batch.
async fn prefetch(ctx: &Context<'_>, services: &[Service]) -> Result<()> {
    let look = ctx.look_ahead();
    let wants = |field: &str| {
        look.field("edges").field("node").field(field).exists()
            || look.field("nodes").field(field).exists()
    };
    let loader = ctx.data_unchecked::<CatalogDataLoader>();
    if wants("plans") && !services.is_empty() {
        let ids: Vec<Uuid> = services.iter().map(|s| s.id).collect();
        let mut plans = service::plans_of_services(ctx.state(), ctx.identity(), &ids).await?;
        loader
            .feed_many(
                ids.iter()
                    .map(|id| (PlansOf(*id), plans.remove(id).unwrap_or_default())),
            )
            .await;
    }
    let mut category_ids: Vec<Uuid> = services.iter().filter_map(|s| s.category_id).collect();
    category_ids.sort_unstable();
    category_ids.dedup();
    if wants("category") && !category_ids.is_empty() {
        let found = service::categories_by_ids(ctx.state(), ctx.identity(), &category_ids).await?;
        loader
            .feed_many(found.into_iter().map(|c| (CategoryKey(c.id), c)))
            .await;
    }
    Ok(())
}

#[derive(Default)]
pub struct CatalogQuery;

#[Object]
impl CatalogQuery {
    /// Categories, in display order (administrators also see inactive ones).
    #[graphql(complexity = "crate::pagination::small_list_cost(child_complexity)")]
    async fn service_categories(&self, ctx: &Context<'_>) -> Result<Vec<Category>> {
        Ok(service::categories(ctx.state(), ctx.identity()).await?)
    }

    /// Services for sale, newest first: active, public and with an active plan
    /// (administrators see all). `category` is a category slug.
    #[graphql(complexity = "crate::pagination::page_cost(first, child_complexity)")]
    async fn services(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        category: Option<String>,
        search: Option<String>,
        featured: Option<bool>,
    ) -> Result<PodiumConnection<Service>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let query = ServiceQuery {
            category_slug: category,
            search,
            featured,
        };
        let page = service::services(ctx.state(), ctx.identity(), query, page).await?;
        prefetch(ctx, &page.items).await?;
        Ok(connection(page, Service::cursor, |s| s))
    }

    /// One service by slug, with its plans.
    async fn service(&self, ctx: &Context<'_>, slug: String) -> Result<Service> {
        Ok(service::service_by_slug(ctx.state(), ctx.identity(), &slug).await?)
    }
}

#[derive(InputObject)]
pub struct CreateServiceCategoryInput {
    pub slug: String,
    pub name: String,
    pub description: Option<String>,
    pub icon: Option<String>,
    pub sort_order: Option<i32>,
}

#[derive(InputObject)]
pub struct UpdateServiceCategoryInput {
    pub slug: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub icon: Option<String>,
    pub sort_order: Option<i32>,
    pub is_active: Option<bool>,
}

#[derive(InputObject)]
pub struct CreateServiceInput {
    pub category_id: Option<ID>,
    pub slug: String,
    pub name: String,
    pub description: Option<String>,
    pub icon: Option<String>,
    pub docker_image: String,
    pub container_port: i32,
    pub env_template: Option<Json<serde_json::Value>>,
    pub volume_mount_path: Option<String>,
    pub tags: Option<Vec<String>>,
    #[graphql(default = true)]
    pub is_active: bool,
    #[graphql(default = true)]
    pub is_public: bool,
    #[graphql(default = false)]
    pub is_featured: bool,
}

#[derive(InputObject)]
pub struct UpdateServiceInput {
    /// Null removes the category.
    pub category_id: MaybeUndefined<ID>,
    pub slug: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub icon: Option<String>,
    pub docker_image: Option<String>,
    pub container_port: Option<i32>,
    pub env_template: Option<Json<serde_json::Value>>,
    pub volume_mount_path: Option<String>,
    pub tags: Option<Vec<String>>,
    pub is_active: Option<bool>,
    pub is_public: Option<bool>,
    pub is_featured: Option<bool>,
}

#[derive(InputObject)]
pub struct CreateServicePlanInput {
    pub service_id: ID,
    pub name: String,
    /// BASIC (default), STANDARD, PREMIUM or ENTERPRISE.
    pub plan_type: Option<String>,
    pub monthly_price: MoneyInput,
    pub cpu_milli: i32,
    pub memory_mb: i32,
    pub storage_gb: i32,
    /// Null or absent: unlimited.
    pub total_quota: Option<i32>,
    pub max_instances_per_user: Option<i32>,
    pub sort_order: Option<i32>,
    #[graphql(default = true)]
    pub is_active: bool,
}

#[derive(InputObject)]
pub struct UpdateServicePlanInput {
    pub name: Option<String>,
    pub plan_type: Option<String>,
    /// Applies to new subscriptions and renewals; live subscriptions keep their price until then.
    pub monthly_price: Option<MoneyInput>,
    pub cpu_milli: Option<i32>,
    pub memory_mb: Option<i32>,
    pub storage_gb: Option<i32>,
    /// Null: unlimited.
    pub total_quota: MaybeUndefined<i32>,
    pub max_instances_per_user: MaybeUndefined<i32>,
    pub sort_order: Option<i32>,
    pub is_active: Option<bool>,
}

fn maybe<T>(m: MaybeUndefined<T>) -> Option<Option<T>> {
    match m {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(v) => Some(Some(v)),
    }
}

#[derive(Default)]
pub struct CatalogMutation;

#[Object]
impl CatalogMutation {
    /// Administrators.
    async fn create_service_category(
        &self,
        ctx: &Context<'_>,
        input: CreateServiceCategoryInput,
    ) -> Result<Category> {
        let input = CategoryInput {
            slug: Some(input.slug),
            name: Some(input.name),
            description: input.description,
            icon: input.icon,
            sort_order: input.sort_order,
            is_active: None,
        };
        Ok(service::create_category(ctx.state(), ctx.identity(), input).await?)
    }

    /// Administrators; `isActive: false` deactivates.
    async fn update_service_category(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateServiceCategoryInput,
    ) -> Result<Category> {
        let id = parse_id("id", &id)?;
        let input = CategoryInput {
            slug: input.slug,
            name: input.name,
            description: input.description,
            icon: input.icon,
            sort_order: input.sort_order,
            is_active: input.is_active,
        };
        Ok(service::update_category(ctx.state(), ctx.identity(), id, input).await?)
    }

    /// Administrators.
    async fn create_service(
        &self,
        ctx: &Context<'_>,
        input: CreateServiceInput,
    ) -> Result<Service> {
        let category_id = input
            .category_id
            .as_ref()
            .map(|id| parse_id("categoryId", id))
            .transpose()?;
        let input = ServiceInput {
            category_id: Some(category_id),
            slug: Some(input.slug),
            name: Some(input.name),
            description: input.description,
            icon: input.icon,
            docker_image: Some(input.docker_image),
            container_port: Some(input.container_port),
            env_template: input.env_template.map(|j| j.0),
            volume_mount_path: input.volume_mount_path,
            tags: input.tags,
            is_active: Some(input.is_active),
            is_public: Some(input.is_public),
            is_featured: Some(input.is_featured),
        };
        Ok(service::create_service(ctx.state(), ctx.identity(), input).await?)
    }

    /// Administrators; `isActive: false` deactivates (it disappears from the public catalog).
    async fn update_service(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateServiceInput,
    ) -> Result<Service> {
        let id = parse_id("id", &id)?;
        let category_id = match maybe(input.category_id) {
            Some(Some(c)) => Some(Some(parse_id("categoryId", &c)?)),
            Some(None) => Some(None),
            None => None,
        };
        let input = ServiceInput {
            category_id,
            slug: input.slug,
            name: input.name,
            description: input.description,
            icon: input.icon,
            docker_image: input.docker_image,
            container_port: input.container_port,
            env_template: input.env_template.map(|j| j.0),
            volume_mount_path: input.volume_mount_path,
            tags: input.tags,
            is_active: input.is_active,
            is_public: input.is_public,
            is_featured: input.is_featured,
        };
        Ok(service::update_service(ctx.state(), ctx.identity(), id, input).await?)
    }

    /// Administrators.
    async fn create_service_plan(
        &self,
        ctx: &Context<'_>,
        input: CreateServicePlanInput,
    ) -> Result<Plan> {
        let input = PlanInput {
            service_id: Some(parse_id("serviceId", &input.service_id)?),
            name: Some(input.name),
            plan_type: input.plan_type,
            monthly_price: Some(
                input
                    .monthly_price
                    .parse("monthlyPrice", &ctx.state().settings.default_currency),
            ),
            cpu_milli: Some(input.cpu_milli),
            memory_mb: Some(input.memory_mb),
            storage_gb: Some(input.storage_gb),
            total_quota: Some(input.total_quota),
            max_instances_per_user: Some(input.max_instances_per_user),
            sort_order: input.sort_order,
            is_active: Some(input.is_active),
        };
        Ok(service::create_plan(ctx.state(), ctx.identity(), input).await?)
    }

    /// Administrators; `isActive: false` deactivates.
    async fn update_service_plan(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateServicePlanInput,
    ) -> Result<Plan> {
        let id = parse_id("id", &id)?;
        let input = PlanInput {
            service_id: None,
            name: input.name,
            plan_type: input.plan_type,
            monthly_price: input
                .monthly_price
                .map(|m| m.parse("monthlyPrice", &ctx.state().settings.default_currency)),
            cpu_milli: input.cpu_milli,
            memory_mb: input.memory_mb,
            storage_gb: input.storage_gb,
            total_quota: maybe(input.total_quota),
            max_instances_per_user: maybe(input.max_instances_per_user),
            sort_order: input.sort_order,
            is_active: input.is_active,
        };
        Ok(service::update_plan(ctx.state(), ctx.identity(), id, input).await?)
    }

    /// Administrators: deletes a plan nobody holds; one with live subscriptions is a
    /// CONFLICT (deactivate it instead).
    async fn delete_service_plan(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let id = parse_id("id", &id)?;
        service::delete_plan(ctx.state(), ctx.identity(), id).await?;
        Ok(true)
    }
}
