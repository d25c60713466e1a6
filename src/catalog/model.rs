//! The catalog tables and their queries.

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::db::Conn;
use crate::db::schema::{service_categories, service_plans, services};
use crate::pagination::{Cursor, PageArgs};

#[derive(Queryable, Selectable, Identifiable, Clone, Debug)]
#[diesel(table_name = service_categories, check_for_backend(Pg))]
pub struct Category {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub icon: Option<String>,
    pub sort_order: i32,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Insertable, AsChangeset, Default, Debug)]
#[diesel(table_name = service_categories)]
pub struct CategoryChanges {
    pub slug: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub icon: Option<Option<String>>,
    pub sort_order: Option<i32>,
    pub is_active: Option<bool>,
}

#[derive(Queryable, Selectable, Identifiable, Clone, Debug)]
#[diesel(table_name = services, check_for_backend(Pg))]
pub struct Service {
    pub id: Uuid,
    pub category_id: Option<Uuid>,
    pub slug: String,
    pub name: String,
    pub description: String,
    pub icon: Option<String>,
    pub docker_image: String,
    pub container_port: i32,
    pub env_template: serde_json::Value,
    pub volume_mount_path: Option<String>,
    pub tags: Vec<Option<String>>,
    pub is_active: bool,
    pub is_public: bool,
    pub is_featured: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Service {
    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.created_at, self.id)
    }
}

#[derive(Insertable, AsChangeset, Default, Debug)]
#[diesel(table_name = services)]
pub struct ServiceChanges {
    pub category_id: Option<Option<Uuid>>,
    pub slug: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub icon: Option<Option<String>>,
    pub docker_image: Option<String>,
    pub container_port: Option<i32>,
    pub env_template: Option<serde_json::Value>,
    pub volume_mount_path: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    pub is_active: Option<bool>,
    pub is_public: Option<bool>,
    pub is_featured: Option<bool>,
}

#[derive(Queryable, Selectable, Identifiable, Clone, Debug)]
#[diesel(table_name = service_plans, check_for_backend(Pg))]
pub struct Plan {
    pub id: Uuid,
    pub service_id: Uuid,
    pub name: String,
    pub plan_type: String,
    pub monthly_price: i64,
    pub currency: String,
    pub cpu_milli: i32,
    pub memory_mb: i32,
    pub storage_gb: i32,
    pub total_quota: Option<i32>,
    pub used_quota: i32,
    pub max_instances_per_user: Option<i32>,
    pub sort_order: i32,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Insertable, AsChangeset, Default, Debug)]
#[diesel(table_name = service_plans)]
pub struct PlanChanges {
    pub service_id: Option<Uuid>,
    pub name: Option<String>,
    pub plan_type: Option<String>,
    pub monthly_price: Option<i64>,
    pub currency: Option<String>,
    pub cpu_milli: Option<i32>,
    pub memory_mb: Option<i32>,
    pub storage_gb: Option<i32>,
    pub total_quota: Option<Option<i32>>,
    pub max_instances_per_user: Option<Option<i32>>,
    pub sort_order: Option<i32>,
    pub is_active: Option<bool>,
}

// ---- categories

pub async fn categories(conn: &mut Conn, include_inactive: bool) -> QueryResult<Vec<Category>> {
    let mut query = service_categories::table.into_boxed();
    if !include_inactive {
        query = query.filter(service_categories::is_active.eq(true));
    }
    query
        .order((service_categories::sort_order, service_categories::name))
        .select(Category::as_select())
        .load(conn)
        .await
}

pub async fn categories_by_ids(conn: &mut Conn, ids: &[Uuid]) -> QueryResult<Vec<Category>> {
    service_categories::table
        .filter(service_categories::id.eq_any(ids))
        .select(Category::as_select())
        .load(conn)
        .await
}

pub async fn category_by_slug(conn: &mut Conn, slug: &str) -> QueryResult<Option<Category>> {
    service_categories::table
        .filter(service_categories::slug.eq(slug))
        .select(Category::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn insert_category(conn: &mut Conn, new: &CategoryChanges) -> QueryResult<Category> {
    diesel::insert_into(service_categories::table)
        .values(new)
        .returning(Category::as_returning())
        .get_result(conn)
        .await
}

pub async fn update_category(
    conn: &mut Conn,
    id: Uuid,
    changes: &CategoryChanges,
) -> QueryResult<Option<Category>> {
    diesel::update(service_categories::table.find(id))
        .set((changes, service_categories::updated_at.eq(diesel::dsl::now)))
        .returning(Category::as_returning())
        .get_result(conn)
        .await
        .optional()
}

// ---- services

#[derive(Debug, Default, Clone)]
pub struct ServiceFilter {
    pub category_id: Option<Uuid>,
    pub search: Option<String>,
    pub featured: Option<bool>,
    /// Customers see only active, public services with an active plan.
    pub customer_view: bool,
}

fn filtered_services(filter: &ServiceFilter) -> services::BoxedQuery<'static, Pg> {
    let mut query = services::table.into_boxed();
    if let Some(category) = filter.category_id {
        query = query.filter(services::category_id.eq(category));
    }
    if let Some(search) = filter
        .search
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let pattern = format!("%{}%", crate::users::model::escape_like(search));
        query = query.filter(
            services::name
                .ilike(pattern.clone())
                .or(services::slug.ilike(pattern.clone()))
                .or(services::description.ilike(pattern)),
        );
    }
    if let Some(featured) = filter.featured {
        query = query.filter(services::is_featured.eq(featured));
    }
    if filter.customer_view {
        query = query
            .filter(services::is_active.eq(true))
            .filter(services::is_public.eq(true))
            .filter(diesel::dsl::exists(
                service_plans::table
                    .filter(service_plans::service_id.eq(services::id))
                    .filter(service_plans::is_active.eq(true)),
            ));
    }
    query
}

pub async fn list_services(
    conn: &mut Conn,
    filter: &ServiceFilter,
    page: &PageArgs,
) -> QueryResult<Vec<Service>> {
    crate::newest_first_page!(filtered_services(filter), services, page)
        .select(Service::as_select())
        .load(conn)
        .await
}

/// The whole filtered list, newest first (for the public catalog's snapshot).
pub async fn all_services(conn: &mut Conn, filter: &ServiceFilter) -> QueryResult<Vec<Service>> {
    filtered_services(filter)
        .order((services::created_at.desc(), services::id.desc()))
        .select(Service::as_select())
        .load(conn)
        .await
}

pub async fn count_services(conn: &mut Conn, filter: &ServiceFilter) -> QueryResult<i64> {
    filtered_services(filter).count().get_result(conn).await
}

pub async fn service_by_slug(conn: &mut Conn, slug: &str) -> QueryResult<Option<Service>> {
    services::table
        .filter(services::slug.eq(slug))
        .select(Service::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn service(conn: &mut Conn, id: Uuid) -> QueryResult<Option<Service>> {
    services::table
        .find(id)
        .select(Service::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn insert_service(conn: &mut Conn, new: &ServiceChanges) -> QueryResult<Service> {
    diesel::insert_into(services::table)
        .values(new)
        .returning(Service::as_returning())
        .get_result(conn)
        .await
}

pub async fn update_service(
    conn: &mut Conn,
    id: Uuid,
    changes: &ServiceChanges,
) -> QueryResult<Option<Service>> {
    diesel::update(services::table.find(id))
        .set((changes, services::updated_at.eq(diesel::dsl::now)))
        .returning(Service::as_returning())
        .get_result(conn)
        .await
        .optional()
}

// ---- plans

pub async fn plans_of_services(conn: &mut Conn, service_ids: &[Uuid]) -> QueryResult<Vec<Plan>> {
    service_plans::table
        .filter(service_plans::service_id.eq_any(service_ids))
        .order((
            service_plans::sort_order,
            service_plans::monthly_price,
            service_plans::name,
        ))
        .select(Plan::as_select())
        .load(conn)
        .await
}

pub async fn plan(conn: &mut Conn, id: Uuid) -> QueryResult<Option<Plan>> {
    service_plans::table
        .find(id)
        .select(Plan::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn insert_plan(conn: &mut Conn, new: &PlanChanges) -> QueryResult<Plan> {
    diesel::insert_into(service_plans::table)
        .values(new)
        .returning(Plan::as_returning())
        .get_result(conn)
        .await
}

pub async fn update_plan(
    conn: &mut Conn,
    id: Uuid,
    changes: &PlanChanges,
) -> QueryResult<Option<Plan>> {
    diesel::update(service_plans::table.find(id))
        .set((changes, service_plans::updated_at.eq(diesel::dsl::now)))
        .returning(Plan::as_returning())
        .get_result(conn)
        .await
        .optional()
}

pub async fn delete_plan(conn: &mut Conn, id: Uuid) -> QueryResult<usize> {
    diesel::delete(service_plans::table.find(id))
        .execute(conn)
        .await
}

pub async fn plans_by_ids(conn: &mut Conn, ids: &[Uuid]) -> QueryResult<Vec<Plan>> {
    service_plans::table
        .filter(service_plans::id.eq_any(ids))
        .select(Plan::as_select())
        .load(conn)
        .await
}

pub async fn services_by_ids(conn: &mut Conn, ids: &[Uuid]) -> QueryResult<Vec<Service>> {
    services::table
        .filter(services::id.eq_any(ids))
        .select(Service::as_select())
        .load(conn)
        .await
}

/// Takes one place of the plan's quota, locking the plan row until the transaction ends;
/// `None` when the quota is used up.
pub async fn take_quota(conn: &mut Conn, id: Uuid) -> QueryResult<Option<Plan>> {
    diesel::update(
        service_plans::table.find(id).filter(
            service_plans::total_quota
                .is_null()
                .or(service_plans::used_quota
                    .nullable()
                    .lt(service_plans::total_quota)),
        ),
    )
    .set(service_plans::used_quota.eq(service_plans::used_quota + 1))
    .returning(Plan::as_returning())
    .get_result(conn)
    .await
    .optional()
}

pub async fn release_quota(conn: &mut Conn, id: Uuid) -> QueryResult<()> {
    diesel::update(
        service_plans::table
            .find(id)
            .filter(service_plans::used_quota.gt(0)),
    )
    .set(service_plans::used_quota.eq(service_plans::used_quota - 1))
    .execute(conn)
    .await
    .map(drop)
}

/// Moves one place of quota from one plan to another, taking both rows in id order (so
/// that two opposite moves can't wait on each other); `false` when `to` is sold out.
pub async fn move_quota(conn: &mut Conn, from: Uuid, to: Uuid) -> QueryResult<bool> {
    let mut ids = [from, to];
    ids.sort();
    service_plans::table
        .filter(service_plans::id.eq_any(ids))
        .order(service_plans::id)
        .for_update()
        .select(service_plans::id)
        .load::<Uuid>(conn)
        .await?;
    if take_quota(conn, to).await?.is_none() {
        return Ok(false);
    }
    release_quota(conn, from).await?;
    Ok(true)
}
