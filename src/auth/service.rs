//! Sign-up, sign-in, token rotation and sign-out.

use chrono::{DateTime, Utc};
use diesel_async::AsyncConnection;
use uuid::Uuid;
use validator::Validate;

use serde_json::json;

use super::email_tokens::Purpose;
use super::recovery::{queue_token_mail, retire_reset_links, under_address_cap};
use super::{Identity, model, new_opaque_token, password, token_hash};
use crate::db::Conn;
use crate::email::{self, EmailTemplate, Mail};
use crate::error::{AppError, AppResult, conflict_if_duplicate};
use crate::ratelimit::{address_key, login_slowdown};
use crate::state::{AppState, ClientInfo};
use crate::users::model::{self as users, NewUser, Role, User, UserChanges};
use crate::users::service::{AccountInput, EMAIL_TAKEN, PasswordInput};

const REFRESH_TOKEN_PREFIX: &str = "pdr_";
/// The longest email address (RFC 5321 path limit); registration enforces it too.
const MAX_EMAIL_LEN: usize = 254;

pub struct AuthTokens {
    pub access_token: String,
    pub access_token_expires_at: DateTime<Utc>,
    pub refresh_token: String,
    pub user: User,
}

/// How a registration ended.
pub enum Registration {
    /// Signed in at once (sign-in does not wait for a verified address).
    SignedIn(Box<AuthTokens>),
    /// "Check your mail": the answer for a new address and for one with an account alike,
    /// when sign-in waits for a verified address (`PODIUM_REQUIRE_VERIFIED_EMAIL`).
    CheckMail,
}

/// Creates a USER account and mails a verification link. Without
/// `PODIUM_REQUIRE_VERIFIED_EMAIL` it signs in at once, with a welcome message, and a taken
/// address is a CONFLICT. With it, nobody is signed in and the answer is the same whether or
/// not the address has an account: the owner of an existing one is told of the attempt.
pub async fn register(
    state: &AppState,
    input: AccountInput,
    client: &ClientInfo,
) -> AppResult<Registration> {
    throttle_ip(state, client)?;
    let input = input.normalized();
    input.validate()?;
    let hash = password::hash(&input.password).await?;
    let new = NewUser {
        name: &input.name,
        email: &input.email,
        password_hash: &hash,
        role: Role::User,
        is_active: true,
        email_verified_at: None,
    };
    let mut conn = state.pool.get().await?;
    if state.settings.mail.require_verified_email {
        conn.transaction(async |conn| {
            match users::insert_new(conn, &new).await? {
                Some(user) => {
                    queue_token_mail(conn, state, &user, Purpose::VerifyEmail).await?;
                    tracing::info!(user_id = %user.id, "user registered: verification sent");
                }
                None => {
                    let owner = users::find_by_email(conn, &input.email).await?;
                    if let Some(owner) = owner.filter(|o| o.is_active)
                        && under_address_cap(conn, &owner.email).await?
                    {
                        let notice = Mail::new(EmailTemplate::RegistrationAttempt, &owner, json!({}));
                        email::queue(conn, state, notice).await?;
                    }
                    tracing::info!(ip = %client.ip, "registration with an address that has an account");
                }
            }
            Ok::<_, AppError>(())
        })
        .await?;
        state.jobs_wakeup.notify_waiters();
        return Ok(Registration::CheckMail);
    }
    let (user, session_id, refresh_token) = conn
        .transaction(async |conn| {
            let user = users::insert(conn, &new)
                .await
                .map_err(conflict_if_duplicate(EMAIL_TAKEN))?;
            queue_token_mail(conn, state, &user, Purpose::VerifyEmail).await?;
            let welcome = Mail::new(EmailTemplate::Welcome, &user, json!({}));
            email::queue(conn, state, welcome).await?;
            let (session_id, refresh) = start_session(conn, state, user.id, client).await?;
            Ok::<_, AppError>((user, session_id, refresh))
        })
        .await?;
    state.jobs_wakeup.notify_waiters();
    tracing::info!(user_id = %user.id, "user registered");
    tokens(state, user, session_id, refresh_token).map(|t| Registration::SignedIn(Box::new(t)))
}

pub async fn login(
    state: &AppState,
    email: &str,
    password_attempt: &str,
    client: &ClientInfo,
) -> AppResult<AuthTokens> {
    throttle_ip(state, client)?;
    let email = email.trim().to_lowercase();
    let refused = || AppError::Unauthenticated("invalid email or password".into());
    // No account has a longer one; refused before it can become a throttling key.
    if email.len() > MAX_EMAIL_LEN {
        return Err(refused());
    }
    let limits = &state.limits;
    // Reserved before the password is checked, so parallel guesses can't all get past it.
    let attempt = limits
        .login_failures_per_pair
        .reserve(format!("{email} {}", address_key(client.ip)))
        .map_err(AppError::rate_limited)?;
    let user = match check_password(state, &email, password_attempt).await {
        Ok(Some(user)) => user,
        Ok(None) => {
            // The reservation is kept: a failure.
            limits.login_failures_per_email.record(email);
            tracing::info!(ip = %client.ip, "failed login");
            return Err(refused());
        }
        Err(e) => {
            // Not the caller's guess (e.g. the database is down): nothing to count.
            attempt.release();
            return Err(e);
        }
    };
    attempt.release();
    if !user.is_active {
        return Err(AppError::Forbidden("this account is deactivated".into()));
    }
    // Said only to whoever knows the password.
    if state.settings.mail.require_verified_email && user.email_verified_at.is_none() {
        return Err(AppError::Forbidden(
            "verify your email address first: follow the link we sent you, or ask for a new one with resendVerificationEmail".into(),
        ));
    }
    let mut conn = state.pool.get().await?;
    let (session_id, refresh_token) = conn
        .transaction(async |conn| {
            users::touch_last_login(conn, user.id).await?;
            start_session(conn, state, user.id, client).await
        })
        .await?;
    state.identity_cache.forget(&[user.id]);
    tracing::info!(user_id = %user.id, "user logged in");
    tokens(state, user, session_id, refresh_token)
}

/// The account if `password_attempt` is its password. Failures from every address slow
/// each attempt at this email down, but never refuse it: a flood from many addresses
/// can't lock the owner out.
async fn check_password(
    state: &AppState,
    email: &str,
    password_attempt: &str,
) -> AppResult<Option<User>> {
    let slowdown = login_slowdown(
        state.limits.login_failures_per_email.count(email),
        state.settings.login_slowdown_after,
    );
    if !slowdown.is_zero() {
        tracing::info!(
            delay_ms = slowdown.as_millis() as u64,
            "login slowed down: many recent failures for this account"
        );
        tokio::time::sleep(slowdown).await;
    }
    let mut conn = state.pool.get().await?;
    let user = users::find_by_email(&mut conn, email).await?;
    drop(conn);
    // Unknown emails are checked against a dummy hash: same cost, same answer.
    let ok = password::verify(
        password_attempt,
        user.as_ref().map(|u| u.password_hash.as_str()),
    )
    .await?;
    Ok(user.filter(|_| ok))
}

enum Rotation {
    Rotated {
        user: User,
        session_id: Uuid,
        refresh_token: String,
    },
    Reused {
        session_id: Uuid,
        user_id: Uuid,
    },
    Refused(&'static str),
}

/// Exchanges a refresh token for a new pair. A token already exchanged is reuse: the
/// whole session (family) is revoked, newest token included.
pub async fn refresh(state: &AppState, token: &str) -> AppResult<AuthTokens> {
    let hash = token_hash(token.trim());
    let mut conn = state.pool.get().await?;
    let outcome = conn
        .transaction(async |conn| {
            let Some((stored, session)) = model::find_token_for_update(conn, &hash).await? else {
                return Ok::<_, AppError>(Rotation::Refused("unknown refresh token"));
            };
            if session.revoked_at.is_some() {
                return Ok(Rotation::Refused("the session was revoked"));
            }
            if stored.rotated_at.is_some() {
                model::revoke_session(conn, session.id, "refresh token reuse").await?;
                return Ok(Rotation::Reused {
                    session_id: session.id,
                    user_id: session.user_id,
                });
            }
            if stored.expires_at <= Utc::now() {
                return Ok(Rotation::Refused("the refresh token expired"));
            }
            let user = users::find(conn, session.user_id)
                .await?
                .ok_or_else(AppError::unauthenticated)?;
            if !user.is_active {
                model::revoke_session(conn, session.id, "user deactivated").await?;
                return Ok(Rotation::Refused("the account is deactivated"));
            }
            model::mark_rotated(conn, stored.id).await?;
            model::touch_session(conn, session.id).await?;
            let refresh_token = issue_refresh_token(conn, state, session.id).await?;
            Ok(Rotation::Rotated {
                user,
                session_id: session.id,
                refresh_token,
            })
        })
        .await?;
    match outcome {
        Rotation::Rotated {
            user,
            session_id,
            refresh_token,
        } => tokens(state, user, session_id, refresh_token),
        Rotation::Reused {
            session_id,
            user_id,
        } => {
            state.identity_cache.forget(&[user_id]);
            tracing::warn!(%session_id, "refresh token reused: session revoked");
            Err(AppError::Unauthenticated(
                "this refresh token was already used; the session has been revoked".into(),
            ))
        }
        Rotation::Refused(why) => Err(AppError::Unauthenticated(format!("{why}; sign in again"))),
    }
}

/// Revokes the session the refresh token belongs to. Unknown tokens are fine: the outcome is the same.
pub async fn logout(state: &AppState, token: &str) -> AppResult<()> {
    let hash = token_hash(token.trim());
    let mut conn = state.pool.get().await?;
    let user_id = conn
        .transaction(async |conn| {
            let Some((_, session)) = model::find_token_for_update(conn, &hash).await? else {
                return Ok::<_, AppError>(None);
            };
            model::revoke_session(conn, session.id, "logout").await?;
            Ok(Some(session.user_id))
        })
        .await?;
    // This replica refuses the session at once; the others hear the database's event.
    if let Some(id) = user_id {
        state.identity_cache.forget(&[id]);
    }
    Ok(())
}

/// Revokes every session of the signed-in user; returns how many were live.
pub async fn logout_all(state: &AppState, identity: &Identity) -> AppResult<i64> {
    let actor = identity.actor()?;
    let mut conn = state.pool.get().await?;
    let n = model::revoke_user_sessions(&mut conn, &[actor.user_id], None, "logout all").await?;
    state.identity_cache.forget(&[actor.user_id]);
    Ok(n as i64)
}

/// Changes the password after checking the current one; other sessions are signed out.
pub async fn change_password(
    state: &AppState,
    identity: &Identity,
    current: &str,
    new: PasswordInput,
) -> AppResult<()> {
    let actor = identity.actor()?;
    new.validate()?;
    // A stolen access token must not become a way to guess the password.
    let attempt = state
        .limits
        .password_failures_per_user
        .reserve(actor.user_id.to_string())
        .map_err(AppError::rate_limited)?;
    let checked = async {
        let mut conn = state.pool.get().await?;
        let user = users::find(&mut conn, actor.user_id)
            .await?
            .ok_or_else(AppError::unauthenticated)?;
        let ok = password::verify(current, Some(&user.password_hash)).await?;
        Ok::<_, AppError>((user, ok, conn))
    }
    .await;
    let (user, mut conn) = match checked {
        Ok((user, true, conn)) => (user, conn),
        // The reservation is kept: a failure.
        Ok((_, false, _)) => return Err(AppError::field("currentPassword", "is incorrect")),
        Err(e) => {
            attempt.release();
            return Err(e);
        }
    };
    attempt.release();
    let hash = password::hash(&new.new_password).await?;
    conn.transaction(async |conn| {
        users::update(
            conn,
            user.id,
            &UserChanges {
                password_hash: Some(hash),
                updated_at: Some(Utc::now()),
                ..Default::default()
            },
        )
        .await?;
        model::revoke_user_sessions(conn, &[user.id], Some(actor.session_id), "password changed")
            .await?;
        retire_reset_links(conn, user.id, state.clock.now()).await?;
        email::queue(
            conn,
            state,
            Mail::new(EmailTemplate::PasswordChanged, &user, json!({})),
        )
        .await?;
        Ok::<_, AppError>(())
    })
    .await?;
    state.identity_cache.forget(&[user.id]);
    state.jobs_wakeup.notify_waiters();
    tracing::info!(user_id = %user.id, "password changed");
    Ok(())
}

/// Login and registration attempts per client address.
fn throttle_ip(state: &AppState, client: &ClientInfo) -> AppResult<()> {
    state
        .limits
        .login_attempts_per_ip
        .hit(&address_key(client.ip))
        .map_err(AppError::rate_limited)
}

async fn start_session(
    conn: &mut Conn,
    state: &AppState,
    user_id: Uuid,
    client: &ClientInfo,
) -> AppResult<(Uuid, String)> {
    let session_id = model::create_session(conn, user_id, client).await?;
    let refresh = issue_refresh_token(conn, state, session_id).await?;
    Ok((session_id, refresh))
}

async fn issue_refresh_token(
    conn: &mut Conn,
    state: &AppState,
    session_id: Uuid,
) -> AppResult<String> {
    let token = new_opaque_token(REFRESH_TOKEN_PREFIX);
    let ttl =
        chrono::Duration::from_std(state.settings.refresh_token_ttl).map_err(AppError::internal)?;
    model::insert_refresh_token(conn, session_id, &token_hash(&token), Utc::now() + ttl).await?;
    Ok(token)
}

fn tokens(
    state: &AppState,
    user: User,
    session_id: Uuid,
    refresh_token: String,
) -> AppResult<AuthTokens> {
    let (access_token, access_token_expires_at) = state
        .jwt
        .issue(user.id, user.role.as_str(), session_id)
        .map_err(AppError::internal)?;
    Ok(AuthTokens {
        access_token,
        access_token_expires_at,
        refresh_token,
        user,
    })
}
