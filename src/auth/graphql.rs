//! Sign-up, sign-in and session mutations.

use async_graphql::{Context, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};

use super::service::{self, AuthTokens};
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
    /// Creates a USER account and signs it in.
    async fn register(&self, ctx: &Context<'_>, input: RegisterInput) -> Result<AuthPayload> {
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

    /// Changes the password; the user's other sessions are signed out.
    async fn change_password(&self, ctx: &Context<'_>, input: ChangePasswordInput) -> Result<bool> {
        let new = PasswordInput {
            new_password: input.new_password,
        };
        service::change_password(ctx.state(), ctx.identity(), &input.current_password, new).await?;
        Ok(true)
    }
}
