//! Sign-up, sign-in and session mutations.

use async_graphql::{Context, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::recovery;
use super::service::{self, AuthTokens, Registration};
use crate::graphql::ContextExt;
use crate::users::model::User;
use crate::users::service::{AccountInput, PasswordInput};

#[derive(SimpleObject)]
pub struct AuthPayload {
    /// JWT for `Authorization: Bearer`; short-lived.
    pub access_token: String,
    /// Opaque; exchange it with `refreshToken` for a new pair. Each one works once.
    pub refresh_token: String,
    pub access_token_expires_at: DateTime<Utc>,
    pub user: User,
}

impl From<AuthTokens> for AuthPayload {
    fn from(t: AuthTokens) -> Self {
        AuthPayload {
            access_token: t.access_token,
            refresh_token: t.refresh_token,
            access_token_expires_at: t.access_token_expires_at,
            user: t.user,
        }
    }
}

/// What `register` answers. With `PODIUM_REQUIRE_VERIFIED_EMAIL`, nobody is signed in (the
/// token fields and `user` are null, `verificationRequired` is true) and the answer is the
/// same whether or not the address already had an account; otherwise the new account is
/// signed in.
#[derive(SimpleObject)]
pub struct RegisterPayload {
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
    pub access_token_expires_at: Option<DateTime<Utc>>,
    pub user: Option<User>,
    /// True when the address must be verified before signing in.
    pub verification_required: bool,
    /// What to tell the person who registered.
    pub message: String,
}

impl From<Registration> for RegisterPayload {
    fn from(r: Registration) -> Self {
        match r {
            Registration::SignedIn(t) => RegisterPayload {
                access_token: Some(t.access_token),
                refresh_token: Some(t.refresh_token),
                access_token_expires_at: Some(t.access_token_expires_at),
                user: Some(t.user),
                verification_required: false,
                message: "Welcome! We sent you a link to confirm your email address.".into(),
            },
            Registration::CheckMail => RegisterPayload {
                access_token: None,
                refresh_token: None,
                access_token_expires_at: None,
                user: None,
                verification_required: true,
                message: "Check your mail: we sent you a link to finish signing up.".into(),
            },
        }
    }
}

#[derive(InputObject)]
pub struct RegisterInput {
    pub name: String,
    pub email: String,
    pub password: String,
}

#[derive(InputObject)]
pub struct LoginInput {
    pub email: String,
    pub password: String,
}

#[derive(InputObject)]
pub struct ChangePasswordInput {
    pub current_password: String,
    pub new_password: String,
}

#[derive(Default)]
pub struct AuthMutation;

#[Object]
impl AuthMutation {
    /// Creates a USER account and mails a link to verify its address. Signs it in at once,
    /// unless sign-in waits for a verified address (see `RegisterPayload`).
    async fn register(&self, ctx: &Context<'_>, input: RegisterInput) -> Result<RegisterPayload> {
        let account = AccountInput {
            name: input.name,
            email: input.email,
            password: input.password,
        };
        Ok(service::register(ctx.state(), account, ctx.client())
            .await?
            .into())
    }

    async fn login(&self, ctx: &Context<'_>, input: LoginInput) -> Result<AuthPayload> {
        Ok(
            service::login(ctx.state(), &input.email, &input.password, ctx.client())
                .await?
                .into(),
        )
    }

    /// Rotates a refresh token. Presenting an already-rotated token revokes its whole session.
    async fn refresh_token(&self, ctx: &Context<'_>, token: String) -> Result<AuthPayload> {
        Ok(service::refresh(ctx.state(), &token).await?.into())
    }

    /// Ends the session the refresh token belongs to.
    async fn logout(&self, ctx: &Context<'_>, refresh_token: String) -> Result<bool> {
        service::logout(ctx.state(), &refresh_token).await?;
        Ok(true)
    }

    /// Ends every session of the signed-in user; returns how many were live.
    async fn logout_all(&self, ctx: &Context<'_>) -> Result<i64> {
        Ok(service::logout_all(ctx.state(), ctx.identity()).await?)
    }

    /// Verifies the address a verification link was sent to. The token works once, for 24 h.
    async fn verify_email(&self, ctx: &Context<'_>, token: String) -> Result<bool> {
        recovery::verify_email(ctx.state(), &token).await?;
        Ok(true)
    }

    /// Sends a new verification link: to the signed-in user, or (signed out) to `email`'s
    /// account. Always true: it does not tell whether an account exists.
    async fn resend_verification_email(
        &self,
        ctx: &Context<'_>,
        email: Option<String>,
    ) -> Result<bool> {
        recovery::resend_verification(ctx.state(), ctx.identity(), email.as_deref(), ctx.client())
            .await?;
        Ok(true)
    }

    /// Mails a password-reset link (valid 1 h, once) if `email` has an account. Always
    /// true: it does not tell whether an account exists. Rate limited.
    async fn request_password_reset(&self, ctx: &Context<'_>, email: String) -> Result<bool> {
        recovery::request_password_reset(ctx.state(), &email, ctx.client()).await?;
        Ok(true)
    }

    /// Sets a new password with a reset link's token; every session is signed out.
    async fn reset_password(
        &self,
        ctx: &Context<'_>,
        token: String,
        new_password: String,
    ) -> Result<bool> {
        let new_password = PasswordInput { new_password };
        recovery::reset_password(ctx.state(), &token, new_password, ctx.client()).await?;
        Ok(true)
    }

    /// Changes the password; the user's other sessions are signed out.
    async fn change_password(&self, ctx: &Context<'_>, input: ChangePasswordInput) -> Result<bool> {
        let new = PasswordInput {
            new_password: input.new_password,
        };
        service::change_password(ctx.state(), ctx.identity(), &input.current_password, new).await?;
        Ok(true)
    }
}
