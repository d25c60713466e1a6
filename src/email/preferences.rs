//! Which notifications a user wants. Only the non-essential ones have a switch (instance
//! alerts, renewal reminders that the wallet covers); account and money messages have none.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::templates::Category;
use crate::auth::Identity;
use crate::db::Conn;
use crate::db::schema::notification_preferences as prefs;
use crate::error::{AppError, AppResult};
use crate::state::AppState;

#[derive(Queryable, Selectable, Clone, Debug, PartialEq, Eq)]
#[diesel(table_name = prefs, check_for_backend(diesel::pg::Pg))]
pub struct NotificationPreferences {
    pub user_id: Uuid,
    pub instance_alerts: bool,
    pub renewal_reminders: bool,
    pub updated_at: DateTime<Utc>,
}

impl NotificationPreferences {
    /// Everything on: a user who never chose.
    fn defaults(user_id: Uuid) -> Self {
        NotificationPreferences {
            user_id,
            instance_alerts: true,
            renewal_reminders: true,
            updated_at: DateTime::<Utc>::UNIX_EPOCH,
        }
    }
}

/// A change: `None` keeps a switch as it is.
#[derive(Clone, Debug, Default)]
pub struct PreferencesUpdate {
    pub instance_alerts: Option<bool>,
    pub renewal_reminders: Option<bool>,
}

pub async fn load(conn: &mut Conn, user_id: Uuid) -> QueryResult<NotificationPreferences> {
    Ok(prefs::table
        .find(user_id)
        .select(NotificationPreferences::as_select())
        .first(conn)
        .await
        .optional()?
        .unwrap_or_else(|| NotificationPreferences::defaults(user_id)))
}

/// Whether `user_id` gets messages of `category`.
pub async fn wants(conn: &mut Conn, user_id: Uuid, category: Category) -> QueryResult<bool> {
    Ok(match category {
        Category::Essential => true,
        Category::InstanceAlerts => load(conn, user_id).await?.instance_alerts,
        Category::RenewalReminders => load(conn, user_id).await?.renewal_reminders,
    })
}

/// The caller's own switches.
pub async fn mine(state: &AppState, identity: &Identity) -> AppResult<NotificationPreferences> {
    let actor = identity.actor()?;
    let mut conn = state.pool.get().await?;
    Ok(load(&mut conn, actor.user_id).await?)
}

/// Sets the caller's own switches.
pub async fn update(
    state: &AppState,
    identity: &Identity,
    update: PreferencesUpdate,
) -> AppResult<NotificationPreferences> {
    let actor = identity.actor()?;
    let mut conn = state.pool.get().await?;
    let current = load(&mut conn, actor.user_id).await?;
    let instance_alerts = update.instance_alerts.unwrap_or(current.instance_alerts);
    let renewal_reminders = update
        .renewal_reminders
        .unwrap_or(current.renewal_reminders);
    let saved = diesel::insert_into(prefs::table)
        .values((
            prefs::user_id.eq(actor.user_id),
            prefs::instance_alerts.eq(instance_alerts),
            prefs::renewal_reminders.eq(renewal_reminders),
        ))
        .on_conflict(prefs::user_id)
        .do_update()
        .set((
            prefs::instance_alerts.eq(instance_alerts),
            prefs::renewal_reminders.eq(renewal_reminders),
            prefs::updated_at.eq(diesel::dsl::now),
        ))
        .returning(NotificationPreferences::as_returning())
        .get_result(&mut conn)
        .await
        .map_err(AppError::from)?;
    tracing::info!(user_id = %actor.user_id, instance_alerts, renewal_reminders, "notification preferences changed");
    Ok(saved)
}
