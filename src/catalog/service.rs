//! Catalog rules: who sees what, validation, and the administrators' changes (audited).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use futures_util::FutureExt;
use serde_json::json;
use uuid::Uuid;

use super::cache::PublicCatalog;
use super::model::{
    self, Category, CategoryChanges, Plan, PlanChanges, Service, ServiceChanges, ServiceFilter,
};
use crate::audit;
use crate::auth::Identity;
use crate::cache::Invalidated;
use crate::error::{AppError, AppResult, FieldErrors, conflict_if_duplicate};
use crate::pagination::{Page, PageArgs, Total};
use crate::state::AppState;

pub const PLAN_TYPES: [&str; 4] = ["BASIC", "STANDARD", "PREMIUM", "ENTERPRISE"];

/// Collects field errors, so one answer lists every problem of an input.
#[derive(Default)]
pub struct Checks(FieldErrors);

impl Checks {
    pub fn check(&mut self, ok: bool, field: &str, message: &str) {
        if !ok {
            self.0
                .entry(field.to_string())
                .or_default()
                .push(message.to_string());
        }
    }

    pub fn absorb(&mut self, result: AppResult<()>) {
        if let Err(AppError::BadUserInput { fields, .. }) = result {
            for (field, messages) in fields {
                self.0.entry(field).or_default().extend(messages);
            }
        }
    }

    pub fn finish(self) -> AppResult<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        let summary = self
            .0
            .iter()
            .map(|(f, m)| format!("{f}: {}", m.join(", ")))
            .collect::<Vec<_>>()
            .join("; ");
        Err(AppError::BadUserInput {
            message: format!("invalid input: {summary}"),
            fields: self.0,
        })
    }
}

pub fn is_slug(s: &str) -> bool {
    (2..=63).contains(&s.len())
        && s.split('-').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// `[host[:port]/]path[:tag][@sha256:<64 hex>]`, as Docker parses image references.
pub fn is_image_reference(s: &str) -> bool {
    if s.is_empty() || s.len() > 255 {
        return false;
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest {
        let ok = d.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        });
        if !ok {
            return false;
        }
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let ok = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !ok {
            return false;
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let first = parts[0];
    if parts.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost") {
        let (host, port) = first.split_once(':').unwrap_or((first, "0"));
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !host_ok || port.parse::<u16>().is_err() {
            return false;
        }
        parts.remove(0);
    }
    !parts.is_empty()
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
                && p.starts_with(|c: char| c.is_ascii_alphanumeric())
                && p.ends_with(|c: char| c.is_ascii_alphanumeric())
        })
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// ---- reading

/// The public catalog from memory (loaded when missing); `None` when caching is off.
async fn public_catalog(state: &AppState) -> AppResult<Option<Arc<PublicCatalog>>> {
    let cache = &state.catalog_cache;
    if let Some(catalog) = cache.current() {
        return Ok(Some(catalog));
    }
    let _one_load = cache.loading.lock().await;
    if let Some(catalog) = cache.current() {
        return Ok(Some(catalog));
    }
    let Some(ticket) = cache.ticket() else {
        return Ok(None);
    };
    let mut conn = state.pool.get().await?;
    let visible = ServiceFilter {
        customer_view: true,
        ..Default::default()
    };
    let services = model::all_services(&mut conn, &visible).await?;
    let ids: Vec<Uuid> = services.iter().map(|s| s.id).collect();
    let mut plans: HashMap<Uuid, Vec<Plan>> = ids.iter().map(|id| (*id, Vec::new())).collect();
    for plan in model::plans_of_services(&mut conn, &ids).await? {
        plans.entry(plan.service_id).or_default().push(plan);
    }
    let categories = model::categories(&mut conn, true).await?;
    let catalog = Arc::new(PublicCatalog {
        services,
        plans,
        categories,
    });
    cache.store(ticket, catalog.clone());
    Ok(Some(catalog))
}

pub async fn categories(state: &AppState, identity: &Identity) -> AppResult<Vec<Category>> {
    let admin = identity.is_admin();
    if let Some(catalog) = public_catalog(state).await? {
        return Ok(catalog
            .categories
            .iter()
            .filter(|c| c.is_active || admin)
            .cloned()
            .collect());
    }
    let mut conn = state.pool.get().await?;
    Ok(model::categories(&mut conn, admin).await?)
}

pub struct ServiceQuery {
    pub category_slug: Option<String>,
    pub search: Option<String>,
    pub featured: Option<bool>,
}

/// Customers see active, public services with at least one active plan; administrators see all.
pub async fn services(
    state: &AppState,
    identity: &Identity,
    query: ServiceQuery,
    page: PageArgs,
) -> AppResult<Page<Service>> {
    // Searches stay in the database, which defines what ILIKE matches.
    if !identity.is_admin()
        && query.search.is_none()
        && let Some(catalog) = public_catalog(state).await?
    {
        return Ok(catalog.page(query.category_slug.as_deref(), query.featured, &page));
    }
    let mut conn = state.pool.get().await?;
    let mut filter = ServiceFilter {
        category_id: None,
        search: query.search,
        featured: query.featured,
        customer_view: !identity.is_admin(),
    };
    if let Some(slug) = query.category_slug {
        match model::category_by_slug(&mut conn, &slug).await? {
            Some(c) if c.is_active || identity.is_admin() => filter.category_id = Some(c.id),
            _ => return Ok(Page::from_rows(Vec::new(), &page, Total::known(0))),
        }
    }
    let rows = model::list_services(&mut conn, &filter, &page).await?;
    let total = Total::deferred(&state.pool, filter, |conn, filter| {
        model::count_services(conn, filter).boxed()
    });
    Ok(Page::from_rows(rows, &page, total))
}

pub async fn service_by_slug(
    state: &AppState,
    identity: &Identity,
    slug: &str,
) -> AppResult<Service> {
    if !identity.is_admin()
        && let Some(catalog) = public_catalog(state).await?
    {
        // The snapshot holds every service a customer may see.
        return catalog
            .services
            .iter()
            .find(|s| s.slug == slug)
            .cloned()
            .ok_or_else(|| AppError::not_found("service"));
    }
    let mut conn = state.pool.get().await?;
    let service = model::service_by_slug(&mut conn, slug).await?;
    let visible = match &service {
        Some(s) if identity.is_admin() => true,
        Some(s) if s.is_active && s.is_public => model::plans_of_services(&mut conn, &[s.id])
            .await?
            .iter()
            .any(|p| p.is_active),
        _ => false,
    };
    match service {
        Some(s) if visible => Ok(s),
        _ => Err(AppError::not_found("service")),
    }
}

/// Plans per service, for the DataLoader: customers see active plans only.
pub async fn plans_of_services(
    state: &AppState,
    identity: &Identity,
    service_ids: &[Uuid],
) -> AppResult<BTreeMap<Uuid, Vec<Plan>>> {
    let admin = identity.is_admin();
    let visible = |plans: Vec<Plan>| -> Vec<Plan> {
        plans.into_iter().filter(|p| p.is_active || admin).collect()
    };
    if let Some(catalog) = state.catalog_cache.current()
        && service_ids.iter().all(|id| catalog.plans.contains_key(id))
    {
        return Ok(service_ids
            .iter()
            .map(|id| (*id, visible(catalog.plans[id].clone())))
            .collect());
    }
    let mut conn = state.pool.get().await?;
    let mut by_service: BTreeMap<Uuid, Vec<Plan>> = BTreeMap::new();
    for plan in model::plans_of_services(&mut conn, service_ids).await? {
        by_service.entry(plan.service_id).or_default().push(plan);
    }
    Ok(by_service
        .into_iter()
        .map(|(id, plans)| (id, visible(plans)))
        .collect())
}

/// Categories by id, for the DataLoader: customers see active ones only.
pub async fn categories_by_ids(
    state: &AppState,
    identity: &Identity,
    ids: &[Uuid],
) -> AppResult<Vec<Category>> {
    let cached = state.catalog_cache.current().and_then(|catalog| {
        let found: Vec<Category> = catalog
            .categories
            .iter()
            .filter(|c| ids.contains(&c.id))
            .cloned()
            .collect();
        (found.len() == ids.len()).then_some(found)
    });
    let mut found = match cached {
        Some(found) => found,
        None => {
            let mut conn = state.pool.get().await?;
            model::categories_by_ids(&mut conn, ids).await?
        }
    };
    found.retain(|c| c.is_active || identity.is_admin());
    Ok(found)
}

/// Operator fields (images, ports, environment templates, quotas) are for administrators:
/// customers and anonymous callers see the public catalog only.
pub fn operator_field<T>(identity: &Identity, value: T) -> AppResult<T> {
    if identity.is_admin() {
        Ok(value)
    } else {
        Err(AppError::Forbidden("administrators only".into()))
    }
}

/// After an administrator's change commits: this replica forgets the public catalog at
/// once (the others hear the database's event).
fn changed<T>(state: &AppState, result: AppResult<T>) -> AppResult<T> {
    if result.is_ok() {
        state.catalog_cache.clear();
    }
    result
}

// ---- administrators' changes

pub struct CategoryInput {
    pub slug: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub icon: Option<String>,
    pub sort_order: Option<i32>,
    pub is_active: Option<bool>,
}

impl CategoryInput {
    pub fn validate(&self, creating: bool) -> AppResult<CategoryChanges> {
        let mut checks = Checks::default();
        checks.check(!creating || self.slug.is_some(), "slug", "is required");
        checks.check(!creating || self.name.is_some(), "name", "is required");
        if let Some(slug) = &self.slug {
            checks.check(
                is_slug(slug),
                "slug",
                "must be 2 to 63 lowercase letters, digits and single hyphens",
            );
        }
        if let Some(name) = &self.name {
            checks.check(
                (1..=100).contains(&name.trim().chars().count()),
                "name",
                "must be 1 to 100 characters",
            );
        }
        checks.finish()?;
        Ok(CategoryChanges {
            slug: self.slug.clone(),
            name: self.name.as_ref().map(|n| n.trim().to_string()),
            description: self.description.clone(),
            icon: self.icon.clone().map(Some),
            sort_order: self.sort_order,
            is_active: self.is_active,
        })
    }
}

pub async fn create_category(
    state: &AppState,
    identity: &Identity,
    input: CategoryInput,
) -> AppResult<Category> {
    let actor = identity.admin()?;
    let changes = input.validate(true)?;
    let result = audit::audited(
        state,
        actor,
        "category.create",
        "ServiceCategory",
        move |conn| {
            async move {
                let c = model::insert_category(conn, &changes)
                    .await
                    .map_err(conflict_if_duplicate("a category with this slug"))?;
                let (id, metadata) = (c.id, json!({ "slug": c.slug }));
                Ok((c, Some(id), metadata))
            }
            .boxed()
        },
    )
    .await;
    changed(state, result)
}

pub async fn update_category(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    input: CategoryInput,
) -> AppResult<Category> {
    let actor = identity.admin()?;
    let changes = input.validate(false)?;
    let result = audit::audited(
        state,
        actor,
        "category.update",
        "ServiceCategory",
        move |conn| {
            async move {
                let c = model::update_category(conn, id, &changes)
                    .await
                    .map_err(conflict_if_duplicate("a category with this slug"))?
                    .ok_or_else(|| AppError::not_found("category"))?;
                let metadata = json!({ "slug": c.slug, "isActive": c.is_active });
                Ok((c, Some(id), metadata))
            }
            .boxed()
        },
    )
    .await;
    changed(state, result)
}

#[derive(Default)]
pub struct ServiceInput {
    pub category_id: Option<Option<Uuid>>,
    pub slug: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub icon: Option<String>,
    pub docker_image: Option<String>,
    pub container_port: Option<i32>,
    pub env_template: Option<serde_json::Value>,
    pub volume_mount_path: Option<String>,
    pub tags: Option<Vec<String>>,
    pub is_active: Option<bool>,
    pub is_public: Option<bool>,
    pub is_featured: Option<bool>,
}

impl ServiceInput {
    pub fn validate(&self, creating: bool) -> AppResult<ServiceChanges> {
        let mut checks = Checks::default();
        for (field, present) in [
            ("slug", self.slug.is_some()),
            ("name", self.name.is_some()),
            ("dockerImage", self.docker_image.is_some()),
            ("containerPort", self.container_port.is_some()),
        ] {
            checks.check(!creating || present, field, "is required");
        }
        if let Some(slug) = &self.slug {
            checks.check(
                is_slug(slug),
                "slug",
                "must be 2 to 63 lowercase letters, digits and single hyphens",
            );
        }
        if let Some(name) = &self.name {
            checks.check(
                (1..=100).contains(&name.trim().chars().count()),
                "name",
                "must be 1 to 100 characters",
            );
        }
        if let Some(image) = &self.docker_image {
            checks.check(
                is_image_reference(image),
                "dockerImage",
                "must be a container image reference such as n8nio/n8n:1.64.0 or ghcr.io/org/app@sha256:<digest>",
            );
        }
        if let Some(port) = self.container_port {
            checks.check(
                (1..=65535).contains(&port),
                "containerPort",
                "must be between 1 and 65535",
            );
        }
        if let Some(env) = &self.env_template {
            let ok = env
                .as_object()
                .is_some_and(|o| o.iter().all(|(k, v)| is_env_name(k) && v.is_string()));
            checks.check(
                ok,
                "envTemplate",
                "must be an object of variable names (letters, digits, _) to string templates",
            );
        }
        if let Some(path) = &self.volume_mount_path {
            checks.check(
                path.starts_with('/') && !path.contains(".."),
                "volumeMountPath",
                "must be an absolute path",
            );
        }
        if let Some(tags) = &self.tags {
            checks.check(
                tags.len() <= 20 && tags.iter().all(|t| (1..=40).contains(&t.len())),
                "tags",
                "at most 20 tags of 1 to 40 characters",
            );
        }
        checks.finish()?;
        Ok(ServiceChanges {
            category_id: self.category_id,
            slug: self.slug.clone(),
            name: self.name.as_ref().map(|n| n.trim().to_string()),
            description: self.description.clone(),
            icon: self.icon.clone().map(Some),
            docker_image: self.docker_image.clone(),
            container_port: self.container_port,
            env_template: self.env_template.clone(),
            volume_mount_path: self.volume_mount_path.clone().map(Some),
            tags: self.tags.clone(),
            is_active: self.is_active,
            is_public: self.is_public,
            is_featured: self.is_featured,
        })
    }
}

pub async fn create_service(
    state: &AppState,
    identity: &Identity,
    input: ServiceInput,
) -> AppResult<Service> {
    let actor = identity.admin()?;
    let changes = input.validate(true)?;
    let result = audit::audited(state, actor, "service.create", "Service", move |conn| {
        async move {
            let s = model::insert_service(conn, &changes)
                .await
                .map_err(conflict_if_duplicate("a service with this slug"))?;
            let (id, metadata) = (s.id, json!({ "slug": s.slug, "image": s.docker_image }));
            Ok((s, Some(id), metadata))
        }
        .boxed()
    })
    .await;
    changed(state, result)
}

pub async fn update_service(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    input: ServiceInput,
) -> AppResult<Service> {
    let actor = identity.admin()?;
    let changes = input.validate(false)?;
    let result = audit::audited(state, actor, "service.update", "Service", move |conn| {
        async move {
            let s = model::update_service(conn, id, &changes)
                .await
                .map_err(conflict_if_duplicate("a service with this slug"))?
                .ok_or_else(|| AppError::not_found("service"))?;
            let metadata =
                json!({ "slug": s.slug, "isActive": s.is_active, "isPublic": s.is_public, "image": s.docker_image });
            Ok((s, Some(id), metadata))
        }
        .boxed()
    })
    .await;
    changed(state, result)
}

#[derive(Default)]
pub struct PlanInput {
    pub service_id: Option<Uuid>,
    pub name: Option<String>,
    pub plan_type: Option<String>,
    /// (minor units, currency), already parsed.
    pub monthly_price: Option<AppResult<(i64, String)>>,
    pub cpu_milli: Option<i32>,
    pub memory_mb: Option<i32>,
    pub storage_gb: Option<i32>,
    pub total_quota: Option<Option<i32>>,
    pub max_instances_per_user: Option<Option<i32>>,
    pub sort_order: Option<i32>,
    pub is_active: Option<bool>,
}

impl PlanInput {
    pub fn validate(self, creating: bool) -> AppResult<PlanChanges> {
        let mut checks = Checks::default();
        for (field, present) in [
            ("serviceId", self.service_id.is_some()),
            ("name", self.name.is_some()),
            ("monthlyPrice", self.monthly_price.is_some()),
            ("cpuMilli", self.cpu_milli.is_some()),
            ("memoryMb", self.memory_mb.is_some()),
            ("storageGb", self.storage_gb.is_some()),
        ] {
            checks.check(!creating || present, field, "is required");
        }
        if let Some(name) = &self.name {
            checks.check(
                (1..=60).contains(&name.trim().chars().count()),
                "name",
                "must be 1 to 60 characters",
            );
        }
        if let Some(t) = &self.plan_type {
            checks.check(
                PLAN_TYPES.contains(&t.as_str()),
                "planType",
                "must be BASIC, STANDARD, PREMIUM or ENTERPRISE",
            );
        }
        for (field, value) in [
            ("cpuMilli", self.cpu_milli),
            ("memoryMb", self.memory_mb),
            ("storageGb", self.storage_gb),
        ] {
            if let Some(v) = value {
                checks.check(v > 0, field, "must be above zero");
            }
        }
        if let Some(Some(q)) = self.total_quota {
            checks.check(
                q >= 0,
                "totalQuota",
                "must not be negative (null means unlimited)",
            );
        }
        if let Some(Some(m)) = self.max_instances_per_user {
            checks.check(
                m > 0,
                "maxInstancesPerUser",
                "must be above zero (null means no limit)",
            );
        }
        let price = match self.monthly_price {
            Some(Ok(p)) => Some(p),
            Some(Err(e)) => {
                checks.absorb(Err(e));
                None
            }
            None => None,
        };
        checks.finish()?;
        Ok(PlanChanges {
            service_id: self.service_id,
            name: self.name.map(|n| n.trim().to_string()),
            plan_type: self
                .plan_type
                .or_else(|| creating.then(|| "BASIC".to_string())),
            monthly_price: price.as_ref().map(|p| p.0),
            currency: price.map(|p| p.1),
            cpu_milli: self.cpu_milli,
            memory_mb: self.memory_mb,
            storage_gb: self.storage_gb,
            total_quota: self.total_quota,
            max_instances_per_user: self.max_instances_per_user,
            sort_order: self.sort_order,
            is_active: self.is_active,
        })
    }
}

pub async fn create_plan(
    state: &AppState,
    identity: &Identity,
    input: PlanInput,
) -> AppResult<Plan> {
    let actor = identity.admin()?;
    let changes = input.validate(true)?;
    let result = audit::audited(state, actor, "plan.create", "ServicePlan", move |conn| {
        async move {
            let service_id = changes.service_id.expect("validated");
            model::service(conn, service_id)
                .await?
                .ok_or_else(|| AppError::not_found("service"))?;
            let p = model::insert_plan(conn, &changes)
                .await
                .map_err(conflict_if_duplicate("a plan with this name for this service"))?;
            let metadata = json!({ "serviceId": p.service_id, "name": p.name, "monthlyPrice": p.monthly_price, "currency": p.currency });
            let id = p.id;
            Ok((p, Some(id), metadata))
        }
        .boxed()
    })
    .await;
    changed(state, result)
}

pub async fn update_plan(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    input: PlanInput,
) -> AppResult<Plan> {
    let actor = identity.admin()?;
    let changes = input.validate(false)?;
    let result = audit::audited(state, actor, "plan.update", "ServicePlan", move |conn| {
        async move {
            let p = model::update_plan(conn, id, &changes)
                .await
                .map_err(|e| match &e {
                    diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::CheckViolation, _) => {
                        AppError::field("totalQuota", "cannot be below the quota already used")
                    }
                    _ => conflict_if_duplicate("a plan with this name for this service")(e),
                })?
                .ok_or_else(|| AppError::not_found("plan"))?;
            let metadata = json!({ "name": p.name, "monthlyPrice": p.monthly_price, "currency": p.currency, "isActive": p.is_active });
            Ok((p, Some(id), metadata))
        }
        .boxed()
    })
    .await;
    changed(state, result)
}

/// Deletes a plan nobody holds. A plan with live subscriptions is deactivated instead
/// (CONFLICT); subscriptions keep the price they were sold at until their next renewal.
pub async fn delete_plan(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<()> {
    let actor = identity.admin()?;
    let result = audit::audited(state, actor, "plan.delete", "ServicePlan", move |conn| {
        async move {
            let plan = model::plan(conn, id)
                .await?
                .ok_or_else(|| AppError::not_found("plan"))?;
            // `used_quota` counts the plan's live subscriptions.
            if plan.used_quota > 0 {
                return Err(AppError::Conflict(format!(
                    "the plan has {} live subscription(s): deactivate it instead",
                    plan.used_quota
                )));
            }
            model::delete_plan(conn, id).await?;
            Ok(((), Some(id), json!({ "name": plan.name })))
        }
        .boxed()
    })
    .await;
    changed(state, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        for ok in [
            "n8nio/n8n:1.64.0",
            "ghost:5-alpine",
            "wordpress",
            "ghcr.io/plausible/community-edition:v2.1.4",
            "localhost:5000/app",
            "gitea/gitea@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(is_image_reference(ok), "{ok}");
        }
        for bad in [
            "",
            "UPPER/case",
            "n8n:",
            "a//b",
            "n8n:tag with space",
            "x@sha256:short",
            "-lead/img",
        ] {
            assert!(!is_image_reference(bad), "{bad}");
        }
    }

    #[test]
    fn slugs() {
        assert!(is_slug("uptime-kuma"));
        assert!(!is_slug("Uptime"));
        assert!(!is_slug("a--b"));
        assert!(!is_slug("-a"));
    }
}

// ---- for subscriptions

/// A plan and its service, as sold.
#[derive(Clone, Debug)]
pub struct ForSale {
    pub plan: Plan,
    pub service: Service,
}

/// The plan and its service if both are on sale (inside the buyer's transaction).
pub async fn plan_for_sale(conn: &mut crate::db::Conn, plan_id: Uuid) -> AppResult<ForSale> {
    let plan = model::plan(conn, plan_id)
        .await?
        .ok_or_else(|| AppError::not_found("plan"))?;
    let service = model::service(conn, plan.service_id)
        .await?
        .ok_or_else(|| AppError::not_found("plan"))?;
    if !service.is_active || !service.is_public {
        return Err(AppError::not_found("plan"));
    }
    if !plan.is_active {
        return Err(AppError::Conflict(
            "this plan is no longer sold: choose another".into(),
        ));
    }
    Ok(ForSale { plan, service })
}

/// A plan (sold or not) and its service, for a subscription that already holds it.
pub async fn plan_held(conn: &mut crate::db::Conn, plan_id: Uuid) -> AppResult<ForSale> {
    let plan = model::plan(conn, plan_id)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("plan {plan_id} is gone")))?;
    let service = model::service(conn, plan.service_id)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("service of plan {plan_id} is gone")))?;
    Ok(ForSale { plan, service })
}

/// Takes a place in the plan's quota (CONFLICT when it is sold out).
pub async fn take_quota(conn: &mut crate::db::Conn, plan_id: Uuid) -> AppResult<()> {
    match model::take_quota(conn, plan_id).await? {
        Some(_) => Ok(()),
        None => Err(AppError::Conflict(
            "this plan is sold out: its quota is used up".into(),
        )),
    }
}

/// Moves a subscription's place from one plan's quota to another's (CONFLICT when the
/// other is sold out).
pub async fn move_quota(conn: &mut crate::db::Conn, from: Uuid, to: Uuid) -> AppResult<()> {
    if model::move_quota(conn, from, to).await? {
        Ok(())
    } else {
        Err(AppError::Conflict(
            "this plan is sold out: its quota is used up".into(),
        ))
    }
}

/// After a committed change of some plan's quota (a subscription bought, moved or ended):
/// this replica forgets its catalog snapshot at once, so its next read shows the new
/// `usedQuota` (the other replicas hear the database's event within milliseconds).
pub fn quota_committed(state: &AppState) {
    state.catalog_cache.clear();
}

/// Gives a place back to the plan's quota.
pub async fn release_quota(conn: &mut crate::db::Conn, plan_id: Uuid) -> AppResult<()> {
    Ok(model::release_quota(conn, plan_id).await?)
}

/// Plans by id, sold or not: a subscription shows the plan it holds. Customers see them
/// as they see any plan (operator fields stay guarded by `operator_field`).
pub async fn plans_by_ids(state: &AppState, ids: &[Uuid]) -> AppResult<Vec<Plan>> {
    let mut conn = state.pool.get().await?;
    Ok(model::plans_by_ids(&mut conn, ids).await?)
}

/// Services by id, for the plans of subscriptions.
pub async fn services_by_ids(state: &AppState, ids: &[Uuid]) -> AppResult<Vec<Service>> {
    let mut conn = state.pool.get().await?;
    Ok(model::services_by_ids(&mut conn, ids).await?)
}
