//! The `users` table and its queries.

use chrono::{DateTime, Utc};
use diesel::deserialize::FromSqlRow;
use diesel::expression::AsExpression;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use crate::db::Conn;
use crate::db::schema::users;
use crate::pagination::{Cursor, PageArgs};

#[derive(
    async_graphql::Enum,
    AsExpression,
    FromSqlRow,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    User,
    Administrator,
}

crate::text_enum!(Role {
    User => "USER",
    Administrator => "ADMINISTRATOR",
});

#[derive(Queryable, Selectable, Identifiable, Clone, Debug)]
#[diesel(table_name = users, check_for_backend(Pg))]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    pub is_active: bool,
    pub email_verified_at: Option<DateTime<Utc>>,
    pub last_login_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl User {
    pub fn cursor(&self) -> Cursor {
        Cursor::new(self.created_at, self.id)
    }
}

#[derive(Insertable, Debug)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub name: &'a str,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub role: Role,
    pub is_active: bool,
    /// Set for accounts whose address someone already vouched for (seeded, created by an
    /// administrator or the operator's CLI); self-registered ones verify by mail.
    pub email_verified_at: Option<DateTime<Utc>>,
}

#[derive(AsChangeset, Default, Debug)]
#[diesel(table_name = users)]
pub struct UserChanges {
    pub name: Option<String>,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Default, Debug, Clone)]
pub struct UserFilter {
    pub search: Option<String>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
}

fn filtered(filter: &UserFilter) -> users::BoxedQuery<'static, Pg> {
    let mut query = users::table.into_boxed();
    if let Some(search) = filter
        .search
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let pattern = format!("%{}%", escape_like(search));
        query = query.filter(
            users::name
                .ilike(pattern.clone())
                .or(users::email.ilike(pattern)),
        );
    }
    if let Some(role) = filter.role {
        query = query.filter(users::role.eq(role));
    }
    if let Some(active) = filter.is_active {
        query = query.filter(users::is_active.eq(active));
    }
    query
}

/// Escapes LIKE wildcards so a search for `50%` means the text `50%`.
pub fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// Newest first, keyset-paginated; fetches one extra row to tell whether more follow.
pub async fn list(conn: &mut Conn, filter: &UserFilter, page: &PageArgs) -> QueryResult<Vec<User>> {
    crate::newest_first_page!(filtered(filter), users, page)
        .select(User::as_select())
        .load(conn)
        .await
}

pub async fn count(conn: &mut Conn, filter: &UserFilter) -> QueryResult<i64> {
    filtered(filter).count().get_result(conn).await
}

pub async fn find(conn: &mut Conn, id: Uuid) -> QueryResult<Option<User>> {
    users::table
        .find(id)
        .select(User::as_select())
        .first(conn)
        .await
        .optional()
}

/// The user, locked until the transaction ends.
pub async fn find_for_update(conn: &mut Conn, id: Uuid) -> QueryResult<Option<User>> {
    users::table
        .find(id)
        .select(User::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

pub async fn find_many(conn: &mut Conn, ids: &[Uuid]) -> QueryResult<Vec<User>> {
    users::table
        .filter(users::id.eq_any(ids))
        .select(User::as_select())
        .load(conn)
        .await
}

pub async fn find_by_email(conn: &mut Conn, email: &str) -> QueryResult<Option<User>> {
    users::table
        .filter(users::email.eq(email))
        .select(User::as_select())
        .first(conn)
        .await
        .optional()
}

pub async fn insert(conn: &mut Conn, new: &NewUser<'_>) -> QueryResult<User> {
    diesel::insert_into(users::table)
        .values(new)
        .returning(User::as_returning())
        .get_result(conn)
        .await
}

/// Inserts unless the email is taken; `None` when it is.
pub async fn insert_new(conn: &mut Conn, new: &NewUser<'_>) -> QueryResult<Option<User>> {
    diesel::insert_into(users::table)
        .values(new)
        .on_conflict(users::email)
        .do_nothing()
        .returning(User::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// The address is verified (from `at`, unless it was already).
pub async fn mark_verified(conn: &mut Conn, id: Uuid, at: DateTime<Utc>) -> QueryResult<()> {
    diesel::update(
        users::table
            .find(id)
            .filter(users::email_verified_at.is_null()),
    )
    .set(users::email_verified_at.eq(at))
    .execute(conn)
    .await
    .map(drop)
}

/// Inserts unless the email is taken; returns whether a row was written.
pub async fn insert_if_absent(conn: &mut Conn, new: &NewUser<'_>) -> QueryResult<bool> {
    let n = diesel::insert_into(users::table)
        .values(new)
        .on_conflict(users::email)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

pub async fn update(conn: &mut Conn, id: Uuid, changes: &UserChanges) -> QueryResult<Option<User>> {
    diesel::update(users::table.find(id))
        .set(changes)
        .returning(User::as_returning())
        .get_result(conn)
        .await
        .optional()
}

pub async fn update_many(
    conn: &mut Conn,
    ids: &[Uuid],
    changes: &UserChanges,
) -> QueryResult<usize> {
    diesel::update(users::table.filter(users::id.eq_any(ids)))
        .set(changes)
        .execute(conn)
        .await
}

pub async fn delete(conn: &mut Conn, id: Uuid) -> QueryResult<usize> {
    diesel::delete(users::table.find(id)).execute(conn).await
}

pub async fn touch_last_login(conn: &mut Conn, id: Uuid) -> QueryResult<()> {
    diesel::update(users::table.find(id))
        .set(users::last_login_at.eq(diesel::dsl::now))
        .execute(conn)
        .await
        .map(drop)
}

pub async fn count_active_admins(conn: &mut Conn) -> QueryResult<i64> {
    users::table
        .filter(users::role.eq(Role::Administrator))
        .filter(users::is_active.eq(true))
        .count()
        .get_result(conn)
        .await
}

#[derive(Debug, Clone, Copy, QueryableByName)]
pub struct UserStats {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub total: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub active: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub inactive: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub administrators: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub registered_last_30_days: i64,
}

/// All the figures in one scan.
pub async fn stats(conn: &mut Conn) -> QueryResult<UserStats> {
    diesel::sql_query(
        "SELECT count(*) AS total,
                count(*) FILTER (WHERE is_active) AS active,
                count(*) FILTER (WHERE NOT is_active) AS inactive,
                count(*) FILTER (WHERE role = 'ADMINISTRATOR') AS administrators,
                count(*) FILTER (WHERE created_at > now() - interval '30 days') AS registered_last_30_days
         FROM users",
    )
    .get_result(conn)
    .await
}
