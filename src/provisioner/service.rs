//! What callers read from the cluster about an instance: its logs and its credentials.
//! Who may read them is decided by the instances service first.

use std::collections::BTreeMap;

use futures_util::{AsyncBufReadExt, Stream, StreamExt};
use uuid::Uuid;

use crate::auth::Identity;
use crate::error::{AppError, AppResult};
use crate::instances::service as instances;
use crate::state::AppState;

/// Log lines a caller may ask for at once.
pub const MAX_TAIL_LINES: i32 = 5000;

fn tail(lines: Option<i32>) -> AppResult<i64> {
    match lines.unwrap_or(100) {
        n @ 1..=MAX_TAIL_LINES => Ok(i64::from(n)),
        _ => Err(AppError::field(
            "tailLines",
            format!("must be between 1 and {MAX_TAIL_LINES}"),
        )),
    }
}

fn kube_failed(e: kube::Error) -> AppError {
    AppError::Internal(anyhow::Error::from(e).context("reading from the cluster"))
}

/// The current pod of an instance the caller may see.
async fn pod_of(state: &AppState, identity: &Identity, id: Uuid) -> AppResult<(String, String)> {
    let instance = instances::get(state, identity, id).await?;
    let namespace = instance.namespace.clone().unwrap_or_default();
    let pod = super::cluster(state)?
        .current_pod(&namespace, id)
        .await
        .map_err(kube_failed)?
        .and_then(|p| p.metadata.name)
        .ok_or_else(|| {
            AppError::Conflict(format!(
                "the instance has no container to read logs from (it is {})",
                instance.status.as_str().to_lowercase()
            ))
        })?;
    Ok((namespace, pod))
}

/// Whether a subscription's instance can take another plan's resources where it runs
/// (billing's plan change asks, inside its transaction).
pub async fn room_for_plan(
    conn: &mut crate::db::Conn,
    subscription_id: Uuid,
    plan_id: Uuid,
) -> AppResult<bool> {
    Ok(super::placement::room_for_plan(conn, subscription_id, plan_id).await?)
}

/// The last `tail_lines` lines of the instance's log (owner or administrator).
pub async fn logs(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    tail_lines: Option<i32>,
    container: Option<String>,
) -> AppResult<String> {
    let lines = tail(tail_lines)?;
    let (namespace, pod) = pod_of(state, identity, id).await?;
    let named = container.is_some();
    super::cluster(state)?
        .logs(&namespace, &pod, container, lines)
        .await
        .map_err(|e| match e {
            // Kubernetes: 400 "container x is not valid for pod y" (a stand-in may say 404).
            kube::Error::Api(s) if named && (s.code == 404 || s.message.contains("not valid")) => {
                AppError::field("container", "no such container in the instance")
            }
            // The kubelet has no log yet: the container is still being created.
            kube::Error::Api(s) if s.code == 400 => AppError::Conflict(
                "the instance's container has not started yet: try again in a moment".into(),
            ),
            e => kube_failed(e),
        })
}

/// The instance's log, line by line as it is written, starting with the last
/// `tail_lines` (owner or administrator). The stream ends when the pod goes away.
pub async fn follow_logs(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
    tail_lines: Option<i32>,
) -> AppResult<impl Stream<Item = String> + use<>> {
    let lines = tail(tail_lines)?;
    let (namespace, pod) = pod_of(state, identity, id).await?;
    let reader = super::cluster(state)?
        .follow_logs(&namespace, &pod, lines)
        .await
        .map_err(kube_failed)?;
    let lines = reader.lines().filter_map(|l| async move { l.ok() }).boxed();
    let actor = identity.actor()?.clone();
    let state = state.clone();
    let mut every = tokio::time::interval(ACCESS_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Judged again every few seconds (not only when a line comes): a caller who loses
    // access (signed out, deactivated, demoted) stops receiving within moments.
    Ok(futures_util::stream::unfold(
        (lines, every, state, actor),
        move |(mut lines, mut every, state, actor)| async move {
            loop {
                tokio::select! {
                    line = lines.next() => return line.map(|l| (l, (lines, every, state, actor))),
                    _ = every.tick() => {
                        if !still_allowed(&state, &actor, id).await {
                            return None;
                        }
                    }
                }
            }
        },
    ))
}

/// How often a log follower's access is judged again.
const ACCESS_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

async fn still_allowed(state: &AppState, actor: &crate::auth::Actor, id: Uuid) -> bool {
    match crate::auth::identity::current(state, actor.user_id, actor.session_id).await {
        Ok(Some(now)) => instances::get(state, &Identity::User(now), id)
            .await
            .is_ok(),
        _ => false,
    }
}

/// The generated credentials and settings of the instance: to its owner only (not even
/// administrators read a customer's passwords).
pub async fn credentials(
    state: &AppState,
    identity: &Identity,
    id: Uuid,
) -> AppResult<BTreeMap<String, String>> {
    let actor = identity.actor()?;
    let instance = instances::get(state, identity, id).await?;
    if instance.user_id != actor.user_id {
        return Err(AppError::Forbidden(
            "credentials are shown to the instance's owner only".into(),
        ));
    }
    match &instance.credentials {
        // Not provisioned yet: nothing generated.
        None => Ok(BTreeMap::new()),
        Some(sealed) => state.sealer.open(id, sealed).ok_or_else(|| {
            AppError::Internal(anyhow::anyhow!(
                "an instance's credentials do not open with the credentials key"
            ))
        }),
    }
}
