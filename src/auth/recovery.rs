//! Proving an address and recovering an account by mail: verification links (24 h) and
//! password resets (1 h). Tokens are single use and stored hashed; a token is bound to the
//! address it was sent to. Requests that send mail answer alike whether or not an account
//! exists (no enumeration), are limited per client address, and each address gets at most
//! a few such messages an hour.

use chrono::{DateTime, Duration, Utc};
use diesel_async::AsyncConnection;
use serde_json::json;
use validator::Validate;

use super::email_tokens::{self, Purpose};
use super::{Identity, model as sessions, new_opaque_token, password, token_hash};
use crate::db::Conn;
use crate::email::{self, EmailTemplate, Mail};
use crate::error::{AppError, AppResult};
use crate::ratelimit::address_key;
use crate::state::{AppState, ClientInfo};
use crate::users::model::{self as users, User, UserChanges};
use crate::users::service::PasswordInput;

const VERIFY_PREFIX: &str = "pdv_";
const RESET_PREFIX: &str = "pdp_";
/// Messages of one kind one address receives per hour, at most.
const PER_ADDRESS_PER_HOUR: i64 = 3;
/// No account has a longer address (registration enforces it).
const MAX_EMAIL_LEN: usize = 254;

impl Purpose {
    fn ttl(self) -> Duration {
        match self {
            Purpose::VerifyEmail => Duration::hours(24),
            Purpose::ResetPassword => Duration::hours(1),
        }
    }

    fn template(self) -> EmailTemplate {
        match self {
            Purpose::VerifyEmail => EmailTemplate::VerifyEmail,
            Purpose::ResetPassword => EmailTemplate::PasswordReset,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => VERIFY_PREFIX,
            Purpose::ResetPassword => RESET_PREFIX,
        }
    }
}

fn refused() -> AppError {
    AppError::field(
        "token",
        "is invalid, was already used, or has expired: ask for a new link",
    )
}

/// Queues a message carrying a fresh one-time token for `purpose`, inside the caller's
/// transaction (the token row and the message commit together).
pub async fn queue_token_mail(
    conn: &mut Conn,
    state: &AppState,
    user: &User,
    purpose: Purpose,
) -> AppResult<()> {
    let token = new_opaque_token(purpose.prefix());
    let expires_at = state.clock.now() + purpose.ttl();
    email_tokens::insert(
        conn,
        user.id,
        purpose,
        &token_hash(&token),
        &user.email,
        expires_at,
    )
    .await?;
    email::queue(
        conn,
        state,
        Mail::new(purpose.template(), user, json!({})).with_token(token),
    )
    .await?;
    Ok(())
}

/// Whether `email` may get another message of `template` this hour.
async fn under_address_cap(
    conn: &mut Conn,
    state: &AppState,
    email: &str,
    template: EmailTemplate,
) -> AppResult<bool> {
    let since = state.clock.now() - Duration::hours(1);
    Ok(email::model::recent_to(conn, email, template, since).await? < PER_ADDRESS_PER_HOUR)
}

fn throttle(state: &AppState, client: &ClientInfo) -> AppResult<()> {
    state
        .limits
        .mail_requests_per_ip
        .hit(&address_key(client.ip))
        .map_err(AppError::rate_limited)
}

/// Uses a token of `purpose`: its (locked) user, who still has the address it was sent to.
async fn redeem(
    conn: &mut Conn,
    token: &str,
    purpose: Purpose,
    now: DateTime<Utc>,
) -> AppResult<User> {
    let (user_id, sent_to) = email_tokens::consume(conn, &token_hash(token.trim()), purpose, now)
        .await?
        .ok_or_else(refused)?;
    let user = users::find(conn, user_id).await?.ok_or_else(refused)?;
    if user.email != sent_to {
        return Err(refused());
    }
    email_tokens::retire(conn, user.id, purpose, now).await?;
    Ok(user)
}

/// `verifyEmail`: the address the token was sent to is verified. With
/// `PODIUM_REQUIRE_VERIFIED_EMAIL`, this is when the welcome message goes out.
pub async fn verify_email(state: &AppState, token: &str) -> AppResult<()> {
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let user = conn
        .transaction(async |conn| {
            let user = redeem(conn, token, Purpose::VerifyEmail, now).await?;
            if user.email_verified_at.is_none() {
                users::mark_verified(conn, user.id, now).await?;
                if state.settings.mail.require_verified_email {
                    email::queue(
                        conn,
                        state,
                        Mail::new(EmailTemplate::Welcome, &user, json!({})),
                    )
                    .await?;
                }
            }
            Ok::<_, AppError>(user)
        })
        .await?;
    state.identity_cache.forget(&[user.id]);
    state.jobs_wakeup.notify_waiters();
    tracing::info!(user_id = %user.id, "email address verified");
    Ok(())
}

/// `resendVerificationEmail`: a new link to the signed-in user's address, or, signed out
/// (when sign-in waits for verification), to `email`'s account. Answers alike whether
/// the account exists, is verified already, or got its hourly share of links.
pub async fn resend_verification(
    state: &AppState,
    identity: &Identity,
    email: Option<&str>,
    client: &ClientInfo,
) -> AppResult<()> {
    throttle(state, client)?;
    let mut conn = state.pool.get().await?;
    let user = match identity.actor() {
        Ok(actor) => users::find(&mut conn, actor.user_id).await?,
        Err(_) => {
            let email = email
                .map(|e| e.trim().to_lowercase())
                .ok_or_else(|| AppError::field("email", "is required when not signed in"))?;
            if email.len() > MAX_EMAIL_LEN {
                return Ok(());
            }
            users::find_by_email(&mut conn, &email).await?
        }
    };
    let Some(user) = user.filter(|u| u.is_active && u.email_verified_at.is_none()) else {
        return Ok(());
    };
    conn.transaction(async |conn| {
        if under_address_cap(conn, state, &user.email, EmailTemplate::VerifyEmail).await? {
            queue_token_mail(conn, state, &user, Purpose::VerifyEmail).await?;
        }
        Ok::<_, AppError>(())
    })
    .await?;
    state.jobs_wakeup.notify_waiters();
    Ok(())
}

/// `requestPasswordReset`: a reset link to `email` if it is an active account's. The
/// answer is the same either way.
pub async fn request_password_reset(
    state: &AppState,
    email: &str,
    client: &ClientInfo,
) -> AppResult<()> {
    throttle(state, client)?;
    let email = email.trim().to_lowercase();
    if email.len() > MAX_EMAIL_LEN {
        return Ok(());
    }
    let mut conn = state.pool.get().await?;
    let Some(user) = users::find_by_email(&mut conn, &email)
        .await?
        .filter(|u| u.is_active)
    else {
        tracing::info!(ip = %client.ip, "password reset asked for an address without an account");
        return Ok(());
    };
    conn.transaction(async |conn| {
        if under_address_cap(conn, state, &user.email, EmailTemplate::PasswordReset).await? {
            queue_token_mail(conn, state, &user, Purpose::ResetPassword).await?;
        } else {
            tracing::info!(user_id = %user.id, "password reset not sent: hourly cap for this address");
        }
        Ok::<_, AppError>(())
    })
    .await?;
    state.jobs_wakeup.notify_waiters();
    Ok(())
}

/// `resetPassword`: a new password for the token's account; every session is signed out,
/// the address counts as verified (the link reached it), and a "password changed" message
/// goes out, all in one transaction.
pub async fn reset_password(
    state: &AppState,
    token: &str,
    new_password: PasswordInput,
) -> AppResult<()> {
    // Bad input changes nothing: the token stays usable.
    new_password.validate()?;
    let hash = password::hash(&new_password.new_password).await?;
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let user = conn
        .transaction(async |conn| {
            let user = redeem(conn, token, Purpose::ResetPassword, now).await?;
            if !user.is_active {
                return Err(AppError::Forbidden("this account is deactivated".into()));
            }
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
            users::mark_verified(conn, user.id, now).await?;
            sessions::revoke_user_sessions(conn, &[user.id], None, "password reset").await?;
            email::queue(
                conn,
                state,
                Mail::new(EmailTemplate::PasswordChanged, &user, json!({})),
            )
            .await?;
            Ok::<_, AppError>(user)
        })
        .await?;
    state.identity_cache.forget(&[user.id]);
    state.jobs_wakeup.notify_waiters();
    tracing::info!(user_id = %user.id, "password reset: every session signed out");
    Ok(())
}
