//! Proving an address and recovering an account by mail: verification links (24 h) and
//! password resets (1 h). Tokens are single use and stored hashed; a token is bound to the
//! address it was sent to.
//!
//! Requests that send mail to an address given by a stranger (`requestPasswordReset`,
//! `resendVerificationEmail` signed out) only enqueue an `account.mail_request` job and
//! answer: the answer and its timing are the same whether or not the address has an
//! account. They are limited per client address, and each address gets at most a few
//! account messages an hour, counted under a lock so that parallel requests can't exceed it.

use chrono::{DateTime, Duration, Utc};
use diesel_async::AsyncConnection;
use serde_json::json;
use validator::Validate;

use super::email_tokens::{self, Purpose};
use super::{Identity, model as sessions, new_opaque_token, password, token_hash};
use crate::db::Conn;
use crate::email::{self, EmailTemplate, Mail, Recipient};
use crate::error::{AppError, AppResult};
use crate::ratelimit::address_key;
use crate::state::{AppState, ClientInfo};
use crate::users::model::{self as users, User, UserChanges};
use crate::users::service::PasswordInput;

/// Looks up the account behind a stranger's request and mails it (payload
/// `{"purpose": "RESET_PASSWORD" | "VERIFY_EMAIL", "email": ...}`).
pub const MAIL_REQUEST_JOB: &str = "account.mail_request";
/// Account messages (links, registration notices) one address receives per hour, at most.
pub const PER_ADDRESS_PER_HOUR: i64 = 5;
/// No account has a longer address (registration enforces it).
const MAX_EMAIL_LEN: usize = 254;

impl Purpose {
    fn ttl(self) -> Duration {
        self.template()
            .link_ttl()
            .expect("link messages have a TTL")
    }

    fn template(self) -> EmailTemplate {
        match self {
            Purpose::VerifyEmail => EmailTemplate::VerifyEmail,
            Purpose::ResetPassword => EmailTemplate::PasswordReset,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Purpose::VerifyEmail => "pdv_",
            Purpose::ResetPassword => "pdp_",
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

/// Whether `email` may get another account message this hour; call it in the transaction
/// that queues the message (it locks the address until then).
pub async fn under_address_cap(conn: &mut Conn, email: &str) -> AppResult<bool> {
    Ok(email::model::account_mail_last_hour(conn, email).await? < PER_ADDRESS_PER_HOUR)
}

fn throttle(state: &AppState, client: &ClientInfo) -> AppResult<()> {
    state
        .limits
        .mail_requests_per_ip
        .hit(&address_key(client.ip))
        .map_err(AppError::rate_limited)
}

/// Uses a token of `purpose`: its (locked) user, active and still at the address the token
/// was sent to.
async fn redeem(
    conn: &mut Conn,
    token: &str,
    purpose: Purpose,
    now: DateTime<Utc>,
) -> AppResult<User> {
    let (user_id, sent_to) = email_tokens::consume(conn, &token_hash(token.trim()), purpose, now)
        .await?
        .ok_or_else(refused)?;
    let user = users::find_for_update(conn, user_id)
        .await?
        .ok_or_else(refused)?;
    if user.email != sent_to {
        return Err(refused());
    }
    if !user.is_active {
        return Err(AppError::Forbidden("this account is deactivated".into()));
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
                    // Proven now: greeted by name.
                    let to = Recipient {
                        name: user.name.clone(),
                        ..Recipient::from(&user)
                    };
                    let welcome = Mail::new(EmailTemplate::Welcome, to, json!({}));
                    email::queue(conn, state, welcome).await?;
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

/// Enqueues the lookup of a stranger's request for mail to `email`: one insert, whatever
/// the address.
async fn enqueue_request(state: &AppState, purpose: Purpose, email: &str) -> AppResult<()> {
    let email = email.trim().to_lowercase();
    if email.len() > MAX_EMAIL_LEN {
        return Ok(());
    }
    let mut conn = state.pool.get().await?;
    crate::jobs::model::enqueue(
        &mut conn,
        MAIL_REQUEST_JOB,
        json!({ "purpose": purpose.as_str(), "email": email }),
        Utc::now(),
        None,
    )
    .await?;
    state.jobs_wakeup.notify_waiters();
    Ok(())
}

/// The `account.mail_request` job: mails a reset link to an active account, or a new
/// verification link to an unverified one, within the address's hourly share.
pub async fn run_mail_request(state: &AppState, payload: &serde_json::Value) -> AppResult<()> {
    let purpose: Purpose = payload["purpose"]
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e: String| AppError::Internal(anyhow::anyhow!(e)))?;
    let email = payload["email"].as_str().unwrap_or_default();
    let mut conn = state.pool.get().await?;
    let wanted = |u: &User| {
        u.is_active && (purpose == Purpose::ResetPassword || u.email_verified_at.is_none())
    };
    let Some(user) = users::find_by_email(&mut conn, email).await?.filter(wanted) else {
        return Ok(());
    };
    drop(conn);
    send_link(state, &user, purpose).await
}

/// Queues a link for `purpose` to `user`, unless the address had its hourly share.
async fn send_link(state: &AppState, user: &User, purpose: Purpose) -> AppResult<()> {
    let mut conn = state.pool.get().await?;
    conn.transaction(async |conn| {
        if under_address_cap(conn, &user.email).await? {
            queue_token_mail(conn, state, user, purpose).await?;
        } else {
            tracing::info!(user_id = %user.id, purpose = purpose.as_str(), "account mail not sent: hourly cap for this address");
        }
        Ok::<_, AppError>(())
    })
    .await?;
    state.jobs_wakeup.notify_waiters();
    Ok(())
}

/// `resendVerificationEmail`: a new link to the signed-in user's address, or, signed out
/// (when sign-in waits for verification), to `email`'s account. Answers alike whether
/// the account exists, is verified already, or got its hourly share of mail.
pub async fn resend_verification(
    state: &AppState,
    identity: &Identity,
    email: Option<&str>,
    client: &ClientInfo,
) -> AppResult<()> {
    throttle(state, client)?;
    let Ok(actor) = identity.actor() else {
        let email =
            email.ok_or_else(|| AppError::field("email", "is required when not signed in"))?;
        return enqueue_request(state, Purpose::VerifyEmail, email).await;
    };
    let mut conn = state.pool.get().await?;
    let Some(user) = users::find(&mut conn, actor.user_id)
        .await?
        .filter(|u| u.is_active && u.email_verified_at.is_none())
    else {
        return Ok(());
    };
    drop(conn);
    send_link(state, &user, Purpose::VerifyEmail).await
}

/// `requestPasswordReset`: a reset link to `email` if it is an active account's. The
/// answer is the same either way.
pub async fn request_password_reset(
    state: &AppState,
    email: &str,
    client: &ClientInfo,
) -> AppResult<()> {
    throttle(state, client)?;
    enqueue_request(state, Purpose::ResetPassword, email).await
}

/// `resetPassword`: a new password for the token's account; every session is signed out,
/// the address counts as verified (the link reached it), and a "password changed" message
/// goes out, all in one transaction.
pub async fn reset_password(
    state: &AppState,
    token: &str,
    new_password: PasswordInput,
    client: &ClientInfo,
) -> AppResult<()> {
    // Hashing costs memory and CPU: limited like sign-in, and only for a live token.
    state
        .limits
        .login_attempts_per_ip
        .hit(&address_key(client.ip))
        .map_err(AppError::rate_limited)?;
    // Bad input changes nothing: the token stays usable.
    new_password.validate()?;
    let now = state.clock.now();
    let hash = token_hash(token.trim());
    let mut conn = state.pool.get().await?;
    if !email_tokens::is_live(&mut conn, &hash, Purpose::ResetPassword, now).await? {
        return Err(refused());
    }
    let password_hash = password::hash(&new_password.new_password).await?;
    let user = conn
        .transaction(async |conn| {
            let user = redeem(conn, token, Purpose::ResetPassword, now).await?;
            users::update(
                conn,
                user.id,
                &UserChanges {
                    password_hash: Some(password_hash),
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

/// A password changed by other means: outstanding reset links stop working.
pub async fn retire_reset_links(
    conn: &mut Conn,
    user_id: uuid::Uuid,
    now: DateTime<Utc>,
) -> AppResult<()> {
    email_tokens::retire(conn, user_id, Purpose::ResetPassword, now).await?;
    Ok(())
}
