//! Background tasks that keep instances and nodes current between reconciles: the pod
//! watcher (every pod event of a Podium instance re-observes that instance) and placement
//! of waiting instances when a node becomes ACTIVE.

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch as signal;
use uuid::Uuid;

use super::objects::{FIELD_MANAGER, INSTANCE_ID_LABEL, MANAGED_BY};
use crate::nodes::model::NodeStatus;
use crate::nodes::service::{STATUS_TOPIC, StatusChanged};
use crate::state::AppState;

fn instance_of(pod: &Pod) -> Option<Uuid> {
    pod.metadata
        .labels
        .as_ref()?
        .get(INSTANCE_ID_LABEL)?
        .parse()
        .ok()
}

/// Follows every Podium pod in the cluster (relisting after a lost watch, with backoff).
pub fn spawn_pod_watcher(
    state: AppState,
    mut stopping: signal::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let cluster = state.cluster.clone()?;
    Some(tokio::spawn(async move {
        let config = watcher::Config::default().labels(&format!("{MANAGED_BY}={FIELD_MANAGER}"));
        let mut events = watcher::watcher(cluster.pods(), config)
            .default_backoff()
            .boxed();
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                _ = stopping.wait_for(|s| *s) => return,
            };
            let pod = match event {
                Some(Ok(Event::Apply(pod) | Event::Delete(pod) | Event::InitApply(pod))) => pod,
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching pods failed; retrying");
                    continue;
                }
                None => return,
            };
            if let Some(id) = instance_of(&pod)
                && let Err(e) = super::reconcile::observe(&state, id).await
            {
                tracing::warn!(instance = %id, error = ?e, "observing an instance failed");
            }
        }
    }))
}

/// Queues the waiting instances whenever a worker node becomes ACTIVE (on any replica).
pub fn spawn_placer(
    state: AppState,
    mut stopping: signal::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut events = state.events.subscribe();
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                m = events.recv() => m,
                _ = stopping.wait_for(|s| *s) => return,
            };
            let message = match message {
                Ok(m) => m,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            let Some(change) = message.decode::<StatusChanged>(STATUS_TOPIC) else {
                continue;
            };
            if change.status == NodeStatus::Active
                && let Err(e) = crate::instances::service::queue_unplaced(&state).await
            {
                tracing::warn!(error = ?e, "queueing waiting instances failed");
            }
        }
    })
}
