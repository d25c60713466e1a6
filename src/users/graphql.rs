//! User objects, the profile, and the administrators' user management.

use std::collections::HashMap;

use async_graphql::dataloader::Loader;
use async_graphql::{Context, ID, InputObject, Object, Result, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use uuid::Uuid;

use super::model::{Role, User, UserFilter, UserStats};
use super::service::{self, AccountInput, UserUpdate};
use crate::auth::Identity;
use crate::error::AppError;
use crate::graphql::{ContextExt, PodiumConnection, connection, parse_id};
use crate::pagination::PageArgs;
use crate::state::AppState;

#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.name
    }
    async fn email(&self) -> &str {
        &self.email
    }
    async fn role(&self) -> Role {
        self.role
    }
    async fn is_active(&self) -> bool {
        self.is_active
    }
    async fn email_verified_at(&self) -> Option<DateTime<Utc>> {
        self.email_verified_at
    }
    async fn last_login_at(&self) -> Option<DateTime<Utc>> {
        self.last_login_at
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.updated_at
    }
}

#[derive(SimpleObject)]
#[graphql(name = "UserStats")]
pub struct UserStatsObject {
    total: i64,
    active: i64,
    inactive: i64,
    administrators: i64,
    #[graphql(name = "registeredLast30Days")]
    registered_last_30_days: i64,
}

impl From<UserStats> for UserStatsObject {
    fn from(s: UserStats) -> Self {
        UserStatsObject {
            total: s.total,
            active: s.active,
            inactive: s.inactive,
            administrators: s.administrators,
            registered_last_30_days: s.registered_last_30_days,
        }
    }
}

#[derive(InputObject)]
pub struct UpdateProfileInput {
    pub name: String,
}

#[derive(InputObject)]
pub struct CreateUserInput {
    pub name: String,
    pub email: String,
    pub password: String,
    #[graphql(default_with = "Role::User")]
    pub role: Role,
    #[graphql(default = true)]
    pub is_active: bool,
}

#[derive(InputObject)]
pub struct UpdateUserInput {
    pub name: Option<String>,
    pub email: Option<String>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
}

#[derive(InputObject)]
pub struct BulkUpdateUsersInput {
    pub is_active: Option<bool>,
    pub role: Option<Role>,
}

#[derive(Default)]
pub struct UsersQuery;

#[Object]
impl UsersQuery {
    /// The signed-in user.
    async fn me(&self, ctx: &Context<'_>) -> Result<User> {
        Ok(service::me(ctx.state(), ctx.identity()).await?)
    }

    /// Administrators: users, newest first. `search` matches name or email, case-insensitively.
    #[graphql(complexity = "crate::pagination::page_cost(first, child_complexity)")]
    async fn users(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        search: Option<String>,
        role: Option<Role>,
        is_active: Option<bool>,
    ) -> Result<PodiumConnection<User>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let filter = UserFilter {
            search,
            role,
            is_active,
        };
        let page = service::list(ctx.state(), ctx.identity(), filter, page).await?;
        Ok(connection(page, User::cursor, |u| u))
    }

    /// Administrators: one user.
    async fn user(&self, ctx: &Context<'_>, id: ID) -> Result<User> {
        let id = parse_id("id", &id)?;
        Ok(service::get(ctx.state(), ctx.identity(), id).await?)
    }

    /// Administrators: counts of users.
    async fn user_stats(&self, ctx: &Context<'_>) -> Result<UserStatsObject> {
        Ok(service::stats(ctx.state(), ctx.identity()).await?.into())
    }
}

#[derive(Default)]
pub struct UsersMutation;

#[Object]
impl UsersMutation {
    async fn update_profile(&self, ctx: &Context<'_>, input: UpdateProfileInput) -> Result<User> {
        Ok(service::update_profile(ctx.state(), ctx.identity(), input.name).await?)
    }

    /// Administrators: creates an account.
    async fn create_user(&self, ctx: &Context<'_>, input: CreateUserInput) -> Result<User> {
        let account = AccountInput {
            name: input.name,
            email: input.email,
            password: input.password,
        };
        Ok(service::create(
            ctx.state(),
            ctx.identity(),
            account,
            input.role,
            input.is_active,
        )
        .await?)
    }

    /// Administrators: changes a user. Deactivating signs the user out everywhere.
    async fn update_user(&self, ctx: &Context<'_>, id: ID, input: UpdateUserInput) -> Result<User> {
        let id = parse_id("id", &id)?;
        let update = UserUpdate {
            name: input.name,
            email: input.email,
            role: input.role,
            is_active: input.is_active,
        };
        Ok(service::update(ctx.state(), ctx.identity(), id, update).await?)
    }

    /// Administrators: deletes a user (not yourself, not the last active administrator).
    async fn delete_user(&self, ctx: &Context<'_>, id: ID) -> Result<bool> {
        let id = parse_id("id", &id)?;
        service::delete(ctx.state(), ctx.identity(), id).await?;
        Ok(true)
    }

    /// Administrators: one change to many users, all or nothing; returns how many changed.
    async fn bulk_update_users(
        &self,
        ctx: &Context<'_>,
        ids: Vec<ID>,
        input: BulkUpdateUsersInput,
    ) -> Result<i64> {
        let ids = ids
            .iter()
            .map(|id| parse_id("ids", id))
            .collect::<Result<Vec<_>, AppError>>()?;
        Ok(service::bulk_update(
            ctx.state(),
            ctx.identity(),
            ids,
            input.role,
            input.is_active,
        )
        .await?)
    }
}

#[derive(Default)]
pub struct UsersSubscription;

#[Subscription]
impl UsersSubscription {
    /// The signed-in user, once: lets a client check its WebSocket authentication.
    async fn me(&self, ctx: &Context<'_>) -> Result<impl Stream<Item = User>> {
        let user = service::me(ctx.state(), ctx.identity()).await?;
        Ok(futures_util::stream::iter([user]))
    }
}

/// Batches user lookups (e.g. the actors of an audit page) into one query.
pub struct UserLoader {
    state: AppState,
    identity: Identity,
}

impl UserLoader {
    pub fn new(state: AppState, identity: Identity) -> Self {
        UserLoader { state, identity }
    }
}

impl Loader<Uuid> for UserLoader {
    type Value = User;
    type Error = async_graphql::Error;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, User>, Self::Error> {
        let users = service::load_many(&self.state, &self.identity, keys).await?;
        Ok(users.into_iter().map(|u| (u.id, u)).collect())
    }
}
