//! Instances as billing and their owners see them. Billing only ever sets the desired
//! state; the provisioner (its own issue) makes the cluster follow and writes the status.

use chrono::{DateTime, Utc};
use rand::RngExt;
use uuid::Uuid;

use diesel_async::AsyncConnection;
use futures_util::FutureExt;
use serde_json::json;

use super::events;
use super::model::{self, DesiredState, InstanceStatus, NewInstance, ServiceInstance, Workload};
use crate::auth::Identity;
use crate::db::Conn;
use crate::email::notify;
use crate::error::{AppError, AppResult};
use crate::pagination::{Page, PageArgs, Total};
use crate::state::AppState;

/// Job kind: bring an instance to its desired state (the provisioner's work).
pub const RECONCILE_JOB: &str = "instances.reconcile";

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

/// Queues the provisioner for an instance (inside the transaction that changed it).
pub async fn queue_reconcile(conn: &mut Conn, instance_id: Uuid) -> AppResult<()> {
    crate::jobs::model::enqueue(
        conn,
        RECONCILE_JOB,
        json!({ "instanceId": instance_id }),
        Utc::now(),
        None,
    )
    .await?;
    Ok(())
}

/// Its plan changed (inside the change's transaction): passes that read the old plan
/// write no status.
pub async fn resources_changed(conn: &mut Conn, instance_id: Uuid) -> AppResult<()> {
    model::bump_generation(conn, instance_id).await?;
    Ok(())
}

/// After a commit that queued work or events (here, or a drain's in the nodes service):
/// wake this replica's workers and outbox.
pub fn committed(state: &AppState) {
    state.jobs_wakeup.notify_waiters();
    state.events.outbox_written();
}

/// One instance the caller may see (its owner or an administrator); others' are NOT_FOUND.
pub async fn get(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<ServiceInstance> {
    let actor = identity.actor()?;
    let mut conn = state.pool.get().await?;
    model::find(&mut conn, id)
        .await?
        .filter(|i| actor.is_admin() || i.user_id == actor.user_id)
        .ok_or_else(|| AppError::not_found("instance"))
}

/// Whether the caller may watch the status of one instance (`None`: of all their own):
/// someone else's is NOT_FOUND now, not a silent stream.
pub async fn watch_status(
    state: &AppState,
    identity: &Identity,
    only: Option<Uuid>,
) -> AppResult<()> {
    match only {
        Some(id) => get(state, identity, id).await.map(drop),
        None => identity.actor().map(drop),
    }
}

/// A status event as a subscriber (judged as they are now) may receive it: the watched
/// instance's, or without one their own instances'; visible to its owner and
/// administrators. No query: the event carries the instance.
pub fn status_event_for(
    identity: &Identity,
    only: Option<Uuid>,
    event: events::InstanceStatusChanged,
) -> AppResult<Option<events::InstanceStatusChanged>> {
    let actor = identity.actor()?;
    let wanted = match only {
        Some(id) => id == event.instance_id,
        None => actor.user_id == event.user_id,
    };
    let visible = actor.is_admin() || actor.user_id == event.user_id;
    Ok((wanted && visible).then_some(event))
}

/// The caller's own instances (`all` for administrators: everyone's).
pub async fn list(
    state: &AppState,
    identity: &Identity,
    all: bool,
    page: PageArgs,
) -> AppResult<Page<ServiceInstance>> {
    let actor = identity.actor()?;
    let user_id = if all {
        identity.admin()?;
        None
    } else {
        Some(actor.user_id)
    };
    let mut conn = state.pool.get().await?;
    let rows = model::list(&mut conn, user_id, &page).await?;
    let total = Total::deferred(&state.pool, user_id, |conn, user_id| {
        model::count(conn, *user_id).boxed()
    });
    Ok(Page::from_rows(rows, &page, total))
}

/// What an owner can ask of a running instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Start,
    Stop,
    Restart,
}

/// Start, stop or restart an instance (its owner or an administrator, audited). Refused
/// (CONFLICT) while its subscription is suspended, expired or cancelled, or while the
/// instance is being deleted; the provisioner does the work.
pub async fn operate(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    op: Operation,
) -> AppResult<ServiceInstance> {
    let actor = identity.actor()?;
    let now = state.clock.now();
    let action = match op {
        Operation::Start => "instance.start",
        Operation::Stop => "instance.stop",
        Operation::Restart => "instance.restart",
    };
    let (user_id, admin) = (actor.user_id, actor.is_admin());
    let instance = crate::audit::audited(state, actor, action, "ServiceInstance", move |conn| {
        async move {
            let instance = model::lock(conn, id)
                .await?
                .filter(|i| admin || i.user_id == user_id)
                .ok_or_else(|| AppError::not_found("instance"))?;
            if instance.desired_state == DesiredState::Deleted {
                return Err(AppError::Conflict(
                    "the instance is being deleted with its subscription".into(),
                ));
            }
            let held = model::subscription_status(conn, instance.subscription_id).await?;
            if matches!(held.as_str(), "SUSPENDED" | "EXPIRED" | "CANCELLED") {
                return Err(AppError::Conflict(format!(
                    "its subscription is {}: settle the subscription first",
                    held.to_lowercase()
                )));
            }
            let (desired, restarted_at) = match op {
                Operation::Start => (DesiredState::Running, None),
                Operation::Stop => (DesiredState::Stopped, None),
                Operation::Restart if instance.desired_state != DesiredState::Running => {
                    return Err(AppError::Conflict(
                        "the instance is stopped: start it instead".into(),
                    ));
                }
                Operation::Restart => (DesiredState::Running, Some(now)),
            };
            let mut after = model::set_desired(conn, id, desired, restarted_at, now).await?;
            let shown = match op {
                Operation::Restart => Some((InstanceStatus::Restarting, "restarting")),
                Operation::Stop if after.status != InstanceStatus::Stopped => {
                    Some((InstanceStatus::Stopping, "stopping"))
                }
                Operation::Start if after.status == InstanceStatus::Stopped => {
                    Some((InstanceStatus::Provisioning, "starting"))
                }
                _ => None,
            };
            if let Some((status, message)) = shown
                && let Some((previous, now_row)) =
                    model::set_status(conn, id, after.generation, status, message, now).await?
            {
                events::status_changed(conn, previous, &now_row).await?;
                after = now_row;
            }
            queue_reconcile(conn, id).await?;
            let metadata = json!({ "name": after.name, "desiredState": desired.as_str() });
            Ok((after, Some(id), metadata))
        }
        .boxed()
    })
    .await?;
    committed(state);
    Ok(instance)
}

/// The provisioner's view of an instance (no caller: internal).
pub async fn workload(state: &AppState, id: Uuid) -> AppResult<Option<Workload>> {
    let mut conn = state.pool.get().await?;
    Ok(model::workload(&mut conn, id).await?)
}

/// Keeps the instance's sealed credentials (the provisioner, internal).
pub async fn store_credentials(state: &AppState, id: Uuid, sealed: &[u8]) -> AppResult<()> {
    let mut conn = state.pool.get().await?;
    model::store_credentials(&mut conn, id, sealed).await?;
    Ok(())
}

/// Records a status the provisioner observed at `generation` (see `model::set_status`),
/// with its event, in one transaction; returns the instance if the status changed.
pub async fn record_status(
    state: &AppState,
    id: Uuid,
    generation: i64,
    status: InstanceStatus,
    message: &str,
) -> AppResult<Option<ServiceInstance>> {
    let now = state.clock.now();
    let mut conn = state.pool.get().await?;
    let changed = conn
        .transaction(async |conn| {
            let Some((previous, after)) =
                model::set_status(conn, id, generation, status, message, now).await?
            else {
                return Ok::<_, AppError>(None);
            };
            if previous != after.status {
                events::status_changed(conn, previous, &after).await?;
                notify_status(conn, state, &after).await?;
            }
            Ok(Some(after))
        })
        .await?;
    if changed.is_some() {
        committed(state);
    }
    Ok(changed)
}

/// Tells the owner that an instance came up (the first time only) or failed (once per
/// generation), inside the transaction that records the status.
async fn notify_status(
    conn: &mut Conn,
    state: &AppState,
    after: &ServiceInstance,
) -> AppResult<()> {
    if !matches!(
        after.status,
        InstanceStatus::Running | InstanceStatus::Failed
    ) {
        return Ok(());
    }
    let service = model::service_name(conn, after.subscription_id).await?;
    if after.status == InstanceStatus::Running {
        notify::instance_ready(conn, state, after, &service).await?;
    } else {
        notify::instance_failed(conn, state, after, &service).await?;
    }
    Ok(())
}

/// Instances to look at again: a page (by id, after `after`) of those not yet TERMINATED.
pub async fn unsettled(
    state: &AppState,
    after: Option<Uuid>,
    limit: i64,
) -> AppResult<Vec<ServiceInstance>> {
    let mut conn = state.pool.get().await?;
    Ok(model::unsettled(&mut conn, after, limit).await?)
}

/// Instances waiting for a node: queued for placement (capacity appeared).
pub async fn queue_unplaced(state: &AppState) -> AppResult<usize> {
    let mut conn = state.pool.get().await?;
    let ids = conn
        .transaction(async |conn| {
            let ids = model::unplaced(conn).await?;
            for id in &ids {
                queue_reconcile(conn, *id).await?;
            }
            Ok::<_, AppError>(ids)
        })
        .await?;
    committed(state);
    Ok(ids.len())
}

/// Takes every instance off a node being drained (inside the drain's transaction): each
/// is placed again elsewhere, its status warning that node-local data stays behind.
pub async fn unplace_from_node(
    conn: &mut Conn,
    node_id: Uuid,
    now: DateTime<Utc>,
) -> AppResult<usize> {
    const MOVING: &str = "moving to another node (its node is being drained): data on \
        node-local volumes does not move with it";
    let moved = model::unplace_from(conn, node_id, MOVING, now).await?;
    for (previous, after) in &moved {
        events::status_changed(conn, *previous, after).await?;
        queue_reconcile(conn, after.id).await?;
    }
    Ok(moved.len())
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
