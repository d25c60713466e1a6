//! Instances as billing and their owners see them. Billing only ever sets the desired
//! state; the provisioner (its own issue) makes the cluster follow and writes the status.

use chrono::{DateTime, Utc};
use rand::RngExt;
use uuid::Uuid;

use super::model::{self, DesiredState, NewInstance, ServiceInstance};
use crate::auth::Identity;
use crate::db::Conn;
use crate::error::AppResult;
use crate::state::AppState;

/// A DNS label from a name: lower-case letters, digits and dashes, plus a random suffix
/// so that two customers' "blog" never collide.
fn subdomain_for(name: &str) -> String {
    let mut base: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    base = base
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    base.truncate(40);
    let base = base.trim_end_matches('-');
    let base = if base.is_empty() { "app" } else { base };
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let suffix: String = (0..6)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{base}-{suffix}")
}

/// Creates the instance of a new subscription, desired RUNNING and PENDING until the
/// provisioner places it (inside the subscribe transaction).
pub async fn create_for_subscription(
    conn: &mut Conn,
    state: &AppState,
    subscription_id: Uuid,
    user_id: Uuid,
    name: &str,
    now: DateTime<Utc>,
) -> AppResult<ServiceInstance> {
    let mut subdomain = subdomain_for(name);
    while model::subdomain_taken(conn, &subdomain).await? {
        subdomain = subdomain_for(name);
    }
    let url = format!("https://{subdomain}.{}", state.settings.base_domain);
    let namespace = format!("podium-u-{}", user_id.simple());
    Ok(model::insert(
        conn,
        &NewInstance {
            subscription_id,
            user_id,
            name,
            subdomain: &subdomain,
            namespace: Some(&namespace),
            desired_state: DesiredState::Running,
            status_message: Some("waiting to be placed on a worker node"),
            public_url: Some(&url),
            created_at: now,
            updated_at: now,
        },
    )
    .await?)
}

/// Sets what the subscription's instance should be doing (inside billing's transaction).
pub async fn set_desired_state(
    conn: &mut Conn,
    subscription_id: Uuid,
    desired: DesiredState,
    now: DateTime<Utc>,
) -> AppResult<Option<ServiceInstance>> {
    Ok(model::set_desired_state(conn, subscription_id, desired, now).await?)
}

/// The instances of some subscriptions the caller may see, by subscription id.
pub async fn of_subscriptions(
    state: &AppState,
    identity: &Identity,
    subscription_ids: &[Uuid],
) -> AppResult<Vec<ServiceInstance>> {
    let actor = identity.actor()?;
    let mut conn = state.pool.get().await?;
    let rows = model::of_subscriptions(&mut conn, subscription_ids).await?;
    Ok(rows
        .into_iter()
        .filter(|i| actor.is_admin() || i.user_id == actor.user_id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_are_dns_labels() {
        let s = subdomain_for("My Blog!! (prod)");
        assert!(s.starts_with("my-blog-prod-"), "{s}");
        assert!(s.len() <= 63);
        assert!(subdomain_for("!!!").starts_with("app-"));
        assert_ne!(subdomain_for("x"), subdomain_for("x"));
    }
}
