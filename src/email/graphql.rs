//! The outbox (administrators) and notification switches (everyone, for themselves).

use async_graphql::{Context, ID, InputObject, Object, Result};
use chrono::{DateTime, Utc};

use super::model::{Email, EmailStatus};
use super::preferences::{self, NotificationPreferences, PreferencesUpdate};
use super::service;
use super::templates::EmailTemplate;
use crate::graphql::{ContextExt, PodiumConnection, connection, parse_id};
use crate::pagination::PageArgs;

#[Object(name = "Email")]
impl Email {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn recipient(&self) -> &str {
        &self.recipient
    }
    async fn user_id(&self) -> Option<ID> {
        self.user_id.map(|id| ID(id.to_string()))
    }
    async fn template(&self) -> EmailTemplate {
        self.template
    }
    async fn subject(&self) -> &str {
        &self.subject
    }
    async fn status(&self) -> EmailStatus {
        self.status
    }
    /// Tries so far (each job attempt, and each retry's).
    async fn attempts(&self) -> i32 {
        self.attempts
    }
    /// Why the latest try failed.
    async fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    async fn last_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.last_attempt_at
    }
    async fn sent_at(&self) -> Option<DateTime<Utc>> {
        self.sent_at
    }
}

#[Object(name = "NotificationPreferences")]
impl NotificationPreferences {
    /// Mail when an instance fails.
    async fn instance_alerts(&self) -> bool {
        self.instance_alerts
    }
    /// Mail a few days before a renewal the wallet covers. (A renewal the wallet won't cover
    /// is always announced, like every account and money message.)
    async fn renewal_reminders(&self) -> bool {
        self.renewal_reminders
    }
}

#[derive(InputObject)]
pub struct NotificationPreferencesInput {
    pub instance_alerts: Option<bool>,
    pub renewal_reminders: Option<bool>,
}

#[derive(Default)]
pub struct EmailQuery;

#[Object]
impl EmailQuery {
    /// Administrators: outgoing mail, newest first, with delivery errors.
    #[graphql(complexity = "crate::pagination::page_cost(first, child_complexity)")]
    async fn email_outbox(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<EmailStatus>,
    ) -> Result<PodiumConnection<Email>> {
        let page = PageArgs::new(first, after.as_deref())?;
        let page = service::list(ctx.state(), ctx.identity(), status, page).await?;
        Ok(connection(page, Email::cursor, |e| e))
    }

    /// The signed-in user's notification switches.
    async fn my_notification_preferences(
        &self,
        ctx: &Context<'_>,
    ) -> Result<NotificationPreferences> {
        Ok(preferences::mine(ctx.state(), ctx.identity()).await?)
    }
}

#[derive(Default)]
pub struct EmailMutation;

#[Object]
impl EmailMutation {
    /// Administrators: sends a FAILED message again (audited).
    async fn retry_email(&self, ctx: &Context<'_>, id: ID) -> Result<Email> {
        Ok(service::retry(ctx.state(), ctx.identity(), parse_id("id", &id)?).await?)
    }

    /// Switches non-essential notifications on or off; omitted switches stay as they are.
    /// Account and money messages can't be switched off.
    async fn update_notification_preferences(
        &self,
        ctx: &Context<'_>,
        input: NotificationPreferencesInput,
    ) -> Result<NotificationPreferences> {
        let update = PreferencesUpdate {
            instance_alerts: input.instance_alerts,
            renewal_reminders: input.renewal_reminders,
        };
        Ok(preferences::update(ctx.state(), ctx.identity(), update).await?)
    }
}
