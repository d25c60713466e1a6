//! The `service_subscriptions` table and its queries.

use chrono::{DateTime, Utc};
use diesel::deserialize::FromSqlRow;
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::db::Conn;
use crate::db::schema::service_subscriptions as subs;
use crate::pagination::PageArgs;

#[derive(
    async_graphql::Enum,
    AsExpression,
    FromSqlRow,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SubscriptionStatus {
    Pending,
    Active,
    PastDue,
    Suspended,
    Cancelled,
    Expired,
}

crate::text_enum!(SubscriptionStatus {
    Pending => "PENDING",
    Active => "ACTIVE",
    PastDue => "PAST_DUE",
    Suspended => "SUSPENDED",
    Cancelled => "CANCELLED",
    Expired => "EXPIRED",
});

impl SubscriptionStatus {
    /// Over: nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SubscriptionStatus::Cancelled | SubscriptionStatus::Expired
        )
    }
}

#[derive(
    Queryable, QueryableByName, Selectable, Identifiable, Clone, Debug, Serialize, Deserialize,
)]
#[diesel(table_name = subs, check_for_backend(Pg))]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: Uuid,
    pub user_id: Uuid,
    pub plan_id: Uuid,
    pub name: String,
    pub status: SubscriptionStatus,
    pub price: i64,
    pub currency: String,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    pub auto_renew: bool,
    pub cancel_at_period_end: bool,
    pub failed_charges: i32,
    pub grace_until: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub suspended_at: Option<DateTime<Utc>>,
    pub suspended_by_admin: bool,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub holds_quota: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Insertable, Debug)]
#[diesel(table_name = subs)]
pub struct NewSubscription<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub plan_id: Uuid,
    pub name: &'a str,
    pub status: SubscriptionStatus,
    pub price: i64,
    pub currency: &'a str,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Every column the billing cycle moves, written back at once.
#[derive(AsChangeset, Debug, Clone)]
#[diesel(table_name = subs, treat_none_as_null = true)]
pub struct Cycle {
    pub plan_id: Uuid,
    pub status: SubscriptionStatus,
    pub price: i64,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    pub auto_renew: bool,
    pub cancel_at_period_end: bool,
    pub failed_charges: i32,
    pub grace_until: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub suspended_at: Option<DateTime<Utc>>,
    pub suspended_by_admin: bool,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub expired_at: Option<DateTime<Utc>>,
    pub holds_quota: bool,
    pub updated_at: DateTime<Utc>,
}

impl Subscription {
    pub fn cycle(&self) -> Cycle {
        Cycle {
            plan_id: self.plan_id,
            status: self.status,
            price: self.price,
            current_period_start: self.current_period_start,
            current_period_end: self.current_period_end,
            auto_renew: self.auto_renew,
            cancel_at_period_end: self.cancel_at_period_end,
            failed_charges: self.failed_charges,
            grace_until: self.grace_until,
            next_retry_at: self.next_retry_at,
            suspended_at: self.suspended_at,
            suspended_by_admin: self.suspended_by_admin,
            cancelled_at: self.cancelled_at,
            expired_at: self.expired_at,
            holds_quota: self.holds_quota,
            updated_at: self.updated_at,
        }
    }
}

pub async fn insert(conn: &mut Conn, row: &NewSubscription<'_>) -> QueryResult<Subscription> {
    diesel::insert_into(subs::table)
        .values(row)
        .returning(Subscription::as_returning())
        .get_result(conn)
        .await
}

pub async fn save(conn: &mut Conn, id: Uuid, cycle: &Cycle) -> QueryResult<Subscription> {
    diesel::update(subs::table.find(id))
        .set(cycle)
        .returning(Subscription::as_returning())
        .get_result(conn)
        .await
}

pub async fn find(conn: &mut Conn, id: Uuid) -> QueryResult<Option<Subscription>> {
    subs::table
        .find(id)
        .select(Subscription::as_select())
        .first(conn)
        .await
        .optional()
}

/// Locked until the transaction ends.
pub async fn lock(conn: &mut Conn, id: Uuid) -> QueryResult<Option<Subscription>> {
    subs::table
        .find(id)
        .for_update()
        .select(Subscription::as_select())
        .first(conn)
        .await
        .optional()
}

/// Locked, if it exists (and belongs to `owner`, when given).
pub async fn lock_owned(
    conn: &mut Conn,
    id: Uuid,
    owner: Option<Uuid>,
) -> QueryResult<Option<Subscription>> {
    let Some(owner) = owner else {
        return lock(conn, id).await;
    };
    subs::table
        .find(id)
        .filter(subs::user_id.eq(owner))
        .for_update()
        .select(Subscription::as_select())
        .first(conn)
        .await
        .optional()
}

/// Locked, or `None` when another transaction holds it (a billing worker on it already).
pub async fn try_lock(conn: &mut Conn, id: Uuid) -> QueryResult<Option<Subscription>> {
    subs::table
        .find(id)
        .for_update()
        .skip_locked()
        .select(Subscription::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn by_ids(conn: &mut Conn, ids: &[Uuid]) -> QueryResult<Vec<Subscription>> {
    subs::table
        .filter(subs::id.eq_any(ids))
        .select(Subscription::as_select())
        .load(conn)
        .await
}

/// Subscriptions of this user to this plan that still hold a place in its quota.
pub async fn live_count(conn: &mut Conn, user_id: Uuid, plan_id: Option<Uuid>) -> QueryResult<i64> {
    let mut query = subs::table
        .filter(subs::user_id.eq(user_id))
        .filter(subs::holds_quota.eq(true))
        .into_boxed();
    if let Some(plan_id) = plan_id {
        query = query.filter(subs::plan_id.eq(plan_id));
    }
    query.count().get_result(conn).await
}

#[derive(Debug, Clone, Default)]
pub struct SubscriptionFilter {
    pub user_id: Option<Uuid>,
    pub status: Option<SubscriptionStatus>,
}

fn filtered(filter: &SubscriptionFilter) -> subs::BoxedQuery<'static, Pg> {
    let mut query = subs::table.into_boxed();
    if let Some(user_id) = filter.user_id {
        query = query.filter(subs::user_id.eq(user_id));
    }
    if let Some(status) = filter.status {
        query = query.filter(subs::status.eq(status));
    }
    query
}

pub async fn list(
    conn: &mut Conn,
    filter: &SubscriptionFilter,
    page: &PageArgs,
) -> QueryResult<Vec<Subscription>> {
    crate::newest_first_page!(filtered(filter), subs, page)
        .select(Subscription::as_select())
        .load(conn)
        .await
}

pub async fn count(conn: &mut Conn, filter: &SubscriptionFilter) -> QueryResult<i64> {
    filtered(filter).count().get_result(conn).await
}

/// ACTIVE subscriptions whose period ended by `now`: renewal or the end they asked for.
pub async fn renewal_due(
    conn: &mut Conn,
    now: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<Uuid>> {
    subs::table
        .filter(subs::status.eq(SubscriptionStatus::Active))
        .filter(subs::current_period_end.le(now))
        .order(subs::current_period_end)
        .limit(limit)
        .select(subs::id)
        .load(conn)
        .await
}

/// PAST_DUE subscriptions with a retry or the end of grace due, and SUSPENDED ones (not
/// by an administrator) suspended since before `expire_before`.
pub async fn dunning_due(
    conn: &mut Conn,
    now: DateTime<Utc>,
    expire_before: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<Uuid>> {
    subs::table
        .filter(
            subs::status
                .eq(SubscriptionStatus::PastDue)
                .and(subs::next_retry_at.le(now).or(subs::grace_until.le(now)))
                .or(subs::status
                    .eq(SubscriptionStatus::Suspended)
                    .and(subs::suspended_by_admin.eq(false))
                    .and(subs::suspended_at.le(expire_before))),
        )
        .order(subs::current_period_end)
        .limit(limit)
        .select(subs::id)
        .load(conn)
        .await
}

/// ACTIVE subscriptions that renew at the end of a period ending in `(from, to]`, a page
/// in (period end, id) order after `after` (from `service_subscriptions_due_idx`).
pub async fn renewing_between(
    conn: &mut Conn,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> QueryResult<Vec<Subscription>> {
    let mut query = subs::table
        .filter(subs::status.eq(SubscriptionStatus::Active))
        .filter(subs::auto_renew.eq(true))
        .filter(subs::cancel_at_period_end.eq(false))
        .filter(subs::current_period_end.gt(from))
        .filter(subs::current_period_end.le(to))
        .into_boxed();
    if let Some((end, id)) = after {
        query = query.filter(
            subs::current_period_end
                .gt(end)
                .or(subs::current_period_end.eq(end).and(subs::id.gt(id))),
        );
    }
    query
        .order((subs::current_period_end, subs::id))
        .limit(limit)
        .select(Subscription::as_select())
        .load(conn)
        .await
}

/// SUSPENDED subscriptions (for non-payment, not by an administrator) suspended in
/// `(from, to]`, a page in id order after `after`.
pub async fn suspended_between(
    conn: &mut Conn,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<Subscription>> {
    let mut query = subs::table
        .filter(subs::status.eq(SubscriptionStatus::Suspended))
        .filter(subs::suspended_by_admin.eq(false))
        .filter(subs::suspended_at.gt(from))
        .filter(subs::suspended_at.le(to))
        .into_boxed();
    if let Some(id) = after {
        query = query.filter(subs::id.gt(id));
    }
    query
        .order(subs::id)
        .limit(limit)
        .select(Subscription::as_select())
        .load(conn)
        .await
}

/// PAST_DUE or SUSPENDED subscriptions of one user, oldest debt first.
pub async fn in_debt(conn: &mut Conn, user_id: Uuid) -> QueryResult<Vec<Uuid>> {
    subs::table
        .filter(subs::user_id.eq(user_id))
        .filter(subs::suspended_by_admin.eq(false))
        .filter(subs::status.eq_any(vec![
            SubscriptionStatus::PastDue,
            SubscriptionStatus::Suspended,
        ]))
        .order(subs::current_period_end)
        .select(subs::id)
        .load(conn)
        .await
}
