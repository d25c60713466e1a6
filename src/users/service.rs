//! Profiles and administrators' user management. Authorization is checked here, not
//! only in resolvers; every admin mutation writes its audit row in the same transaction.

use chrono::Utc;
use diesel::sql_types::BigInt;
use diesel_async::RunQueryDsl;
use futures_util::FutureExt;
use serde_json::json;
use uuid::Uuid;
use validator::{Validate, ValidationError};

use super::model::{self, NewUser, Role, User, UserChanges, UserFilter, UserStats};
use crate::audit;
use crate::auth::model as sessions;
use crate::auth::{Identity, password};
use crate::db::Conn;
use crate::error::{AppError, AppResult, conflict_if_duplicate};
use crate::pagination::{Page, PageArgs, Total};
use crate::state::AppState;

/// What a duplicate email conflicts with (registration, creation, updates).
pub const EMAIL_TAKEN: &str = "an account with this email";

/// Serializes changes to the set of active administrators (see `ensure_an_admin_remains`).
const ADMIN_SET_LOCK_KEY: i64 = 0x0070_6f64_6164_6d00;

pub fn validate_password(password: &str) -> Result<(), ValidationError> {
    let long_enough = password.chars().count() >= 10;
    let has_letter = password.chars().any(char::is_alphabetic);
    let has_digit = password.chars().any(|c| c.is_ascii_digit());
    if long_enough && has_letter && has_digit && password.len() <= 256 {
        Ok(())
    } else {
        Err(ValidationError::new("password").with_message(
            "must be 10 to 256 characters with at least one letter and one digit".into(),
        ))
    }
}

/// Names are printed in mail and pages: no line breaks or other control characters.
pub fn validate_name(name: &str) -> Result<(), ValidationError> {
    if name.chars().any(char::is_control) {
        return Err(ValidationError::new("name")
            .with_message("must not contain line breaks or control characters".into()));
    }
    Ok(())
}

/// Name, email and password of a new account (self-registered or created by an administrator).
#[derive(Debug, Clone, Validate)]
pub struct AccountInput {
    #[validate(
        length(min = 1, max = 100, message = "must be 1 to 100 characters"),
        custom(function = "validate_name")
    )]
    pub name: String,
    #[validate(
        email(message = "must be a valid email address"),
        length(max = 254, message = "is too long")
    )]
    pub email: String,
    #[validate(custom(function = "validate_password"))]
    pub password: String,
}

impl AccountInput {
    pub fn normalized(self) -> Self {
        AccountInput {
            name: self.name.trim().to_string(),
            email: self.email.trim().to_lowercase(),
            password: self.password,
        }
    }
}

#[derive(Debug, Clone, Validate)]
pub struct PasswordInput {
    #[validate(custom(function = "validate_password"))]
    pub new_password: String,
}

#[derive(Debug, Clone, Default, Validate)]
pub struct UserUpdate {
    #[validate(
        length(min = 1, max = 100, message = "must be 1 to 100 characters"),
        custom(function = "validate_name")
    )]
    pub name: Option<String>,
    #[validate(
        email(message = "must be a valid email address"),
        length(max = 254, message = "is too long")
    )]
    pub email: Option<String>,
    pub role: Option<Role>,
    pub is_active: Option<bool>,
}

impl UserUpdate {
    fn normalized(self) -> Self {
        UserUpdate {
            name: self.name.map(|n| n.trim().to_string()),
            email: self.email.map(|e| e.trim().to_lowercase()),
            ..self
        }
    }

    fn changes(&self) -> UserChanges {
        UserChanges {
            name: self.name.clone(),
            email: self.email.clone(),
            role: self.role,
            is_active: self.is_active,
            updated_at: Some(Utc::now()),
            ..Default::default()
        }
    }

    /// What changed, for the audit trail.
    fn audit_metadata(&self) -> serde_json::Value {
        json!({ "name": self.name, "email": self.email, "role": self.role, "isActive": self.is_active })
    }
}

pub async fn me(state: &AppState, identity: &Identity) -> AppResult<User> {
    let actor = identity.actor()?;
    // Judging the request just read (or found) this row.
    if let Some(user) = state.identity_cache.user(actor.user_id) {
        return Ok(User::clone(&user));
    }
    let mut conn = state.pool.get().await?;
    model::find(&mut conn, actor.user_id)
        .await?
        .ok_or_else(AppError::unauthenticated)
}

pub async fn update_profile(
    state: &AppState,
    identity: &Identity,
    name: String,
) -> AppResult<User> {
    let actor = identity.actor()?;
    let update = UserUpdate {
        name: Some(name),
        ..Default::default()
    }
    .normalized();
    update.validate()?;
    let mut conn = state.pool.get().await?;
    let user = model::update(&mut conn, actor.user_id, &update.changes())
        .await?
        .ok_or_else(AppError::unauthenticated)?;
    state.identity_cache.forget(&[actor.user_id]);
    Ok(user)
}

pub async fn list(
    state: &AppState,
    identity: &Identity,
    filter: UserFilter,
    page: PageArgs,
) -> AppResult<Page<User>> {
    identity.admin()?;
    let mut conn = state.pool.get().await?;
    let rows = model::list(&mut conn, &filter, &page).await?;
    let total = Total::deferred(&state.pool, filter, |conn, filter| {
        model::count(conn, filter).boxed()
    });
    Ok(Page::from_rows(rows, &page, total))
}

pub async fn get(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<User> {
    identity.admin()?;
    let mut conn = state.pool.get().await?;
    model::find(&mut conn, id)
        .await?
        .ok_or_else(|| AppError::not_found("user"))
}

pub async fn stats(state: &AppState, identity: &Identity) -> AppResult<UserStats> {
    identity.admin()?;
    let mut conn = state.pool.get().await?;
    Ok(model::stats(&mut conn).await?)
}

pub async fn create(
    state: &AppState,
    identity: &Identity,
    input: AccountInput,
    role: Role,
    is_active: bool,
) -> AppResult<User> {
    let actor = identity.admin()?;
    let input = input.normalized();
    input.validate()?;
    let hash = password::hash(&input.password).await?;
    audit::audited(state, actor, "user.create", "User", move |conn| {
        async move {
            let new = NewUser {
                name: &input.name,
                email: &input.email,
                password_hash: &hash,
                role,
                is_active,
                // The administrator vouches for the address.
                email_verified_at: Some(chrono::Utc::now()),
            };
            let user = model::insert(conn, &new)
                .await
                .map_err(conflict_if_duplicate(EMAIL_TAKEN))?;
            let metadata = json!({ "email": user.email, "role": role, "isActive": is_active });
            let id = user.id;
            Ok((user, Some(id), metadata))
        }
        .boxed()
    })
    .await
}

pub async fn update(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    update: UserUpdate,
) -> AppResult<User> {
    let actor = identity.admin()?;
    let update = update.normalized();
    update.validate()?;
    let result = audit::audited(state, actor, "user.update", "User", move |conn| {
        async move {
            lock_admin_set(conn).await?;
            let user = model::update(conn, id, &update.changes())
                .await
                .map_err(conflict_if_duplicate(EMAIL_TAKEN))?
                .ok_or_else(|| AppError::not_found("user"))?;
            ensure_an_admin_remains(conn).await?;
            if update.is_active == Some(false) {
                sessions::revoke_user_sessions(conn, &[id], None, "user deactivated").await?;
            }
            Ok((user, Some(id), update.audit_metadata()))
        }
        .boxed()
    })
    .await;
    forget(state, &[id], result)
}

pub async fn delete(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<()> {
    let actor = identity.admin()?;
    if id == actor.user_id {
        return Err(AppError::Forbidden(
            "you cannot delete your own account".into(),
        ));
    }
    let result = audit::audited(state, actor, "user.delete", "User", move |conn| {
        async move {
            lock_admin_set(conn).await?;
            let user = model::find(conn, id)
                .await?
                .ok_or_else(|| AppError::not_found("user"))?;
            model::delete(conn, id).await?;
            ensure_an_admin_remains(conn).await?;
            Ok(((), Some(id), json!({ "email": user.email })))
        }
        .boxed()
    })
    .await;
    forget(state, &[id], result)
}

/// Applies one change to many users, all or nothing; returns how many were updated.
pub async fn bulk_update(
    state: &AppState,
    identity: &Identity,
    ids: Vec<Uuid>,
    role: Option<Role>,
    is_active: Option<bool>,
) -> AppResult<i64> {
    let actor = identity.admin()?;
    let mut ids = ids;
    ids.sort();
    ids.dedup();
    if ids.is_empty() || ids.len() > 1000 {
        return Err(AppError::field("ids", "must list 1 to 1000 users"));
    }
    if role.is_none() && is_active.is_none() {
        return Err(AppError::field("input", "must change role or isActive"));
    }
    let forgotten = ids.clone();
    let result = audit::audited(state, actor, "user.bulk_update", "User", move |conn| {
        async move {
            lock_admin_set(conn).await?;
            let changes = UserChanges {
                role,
                is_active,
                updated_at: Some(Utc::now()),
                ..Default::default()
            };
            let updated = model::update_many(conn, &ids, &changes).await?;
            if updated != ids.len() {
                return Err(AppError::NotFound(format!(
                    "{} of the {} users do not exist; nothing was changed",
                    ids.len() - updated,
                    ids.len()
                )));
            }
            ensure_an_admin_remains(conn).await?;
            if is_active == Some(false) {
                sessions::revoke_user_sessions(conn, &ids, None, "user deactivated").await?;
            }
            let metadata = json!({ "ids": ids, "role": role, "isActive": is_active });
            Ok((updated as i64, None, metadata))
        }
        .boxed()
    })
    .await;
    forget(state, &forgotten, result)
}

/// After a change to users commits: this replica forgets them at once, so their next
/// request is judged by the new state (the others hear the database's event).
fn forget<T>(state: &AppState, ids: &[Uuid], result: AppResult<T>) -> AppResult<T> {
    if result.is_ok() {
        state.identity_cache.forget(ids);
    }
    result
}

/// Loads users by id (for the DataLoader): administrators see anyone, others only themselves.
pub async fn load_many(
    state: &AppState,
    identity: &Identity,
    ids: &[Uuid],
) -> AppResult<Vec<User>> {
    let actor = identity.actor()?;
    let ids: Vec<Uuid> = if actor.is_admin() {
        ids.to_vec()
    } else {
        ids.iter()
            .copied()
            .filter(|id| *id == actor.user_id)
            .collect()
    };
    let mut conn = state.pool.get().await?;
    Ok(model::find_many(&mut conn, &ids).await?)
}

/// Inserts the account unless its email exists (seeding); returns whether it was new.
pub async fn ensure_account(conn: &mut Conn, input: AccountInput, role: Role) -> AppResult<bool> {
    let input = input.normalized();
    input.validate()?;
    if model::find_by_email(conn, &input.email).await?.is_some() {
        return Ok(false);
    }
    let hash = password::hash(&input.password).await?;
    let new = NewUser {
        name: &input.name,
        email: &input.email,
        password_hash: &hash,
        role,
        is_active: true,
        // Seeded accounts (the demo logins) are verified.
        email_verified_at: Some(Utc::now()),
    };
    Ok(model::insert_if_absent(conn, &new).await?)
}

/// `podium admin create`: an active administrator, under registration's rules. There is no
/// caller: whoever runs the binary against the database already owns it. Audited with no actor.
pub async fn create_administrator(conn: &mut Conn, input: AccountInput) -> AppResult<User> {
    let input = input.normalized();
    input.validate()?;
    let hash = password::hash(&input.password).await?;
    let new = NewUser {
        name: &input.name,
        email: &input.email,
        password_hash: &hash,
        role: Role::Administrator,
        is_active: true,
        // The operator who runs the CLI vouches for the address.
        email_verified_at: Some(Utc::now()),
    };
    let user = model::insert(conn, &new)
        .await
        .map_err(conflict_if_duplicate(EMAIL_TAKEN))?;
    let entry = audit::model::NewAuditEntry {
        actor_id: None,
        actor_email: None,
        action: "user.create",
        target_type: "User",
        target_id: Some(user.id.to_string()),
        metadata: json!({ "email": user.email, "role": Role::Administrator, "isActive": true, "via": "cli" }),
    };
    if let Err(e) = audit::model::insert(conn, &entry).await {
        // The account exists; a missing audit row must not hide that from the operator.
        tracing::warn!(error = %e, "writing the audit row for `podium admin create` failed");
    }
    Ok(user)
}

async fn lock_admin_set(conn: &mut Conn) -> AppResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<BigInt, _>(ADMIN_SET_LOCK_KEY)
        .execute(conn)
        .await?;
    Ok(())
}

/// Called after a change, under the admin-set lock: rolls it back if no active administrator is left.
async fn ensure_an_admin_remains(conn: &mut Conn) -> AppResult<()> {
    if model::count_active_admins(conn).await? == 0 {
        return Err(AppError::Conflict(
            "the last active administrator cannot be deleted, deactivated or demoted".into(),
        ));
    }
    Ok(())
}

/// NOT_FOUND unless the user exists (inside another domain's transaction).
pub async fn require_exists(conn: &mut Conn, id: Uuid) -> AppResult<()> {
    match model::find(conn, id).await? {
        Some(_) => Ok(()),
        None => Err(AppError::not_found("user")),
    }
}

/// The id of the account with this email (NOT_FOUND without one).
pub async fn id_by_email(conn: &mut Conn, email: &str) -> AppResult<Uuid> {
    model::find_by_email(conn, &email.trim().to_lowercase())
        .await?
        .map(|u| u.id)
        .ok_or_else(|| AppError::not_found("user"))
}
