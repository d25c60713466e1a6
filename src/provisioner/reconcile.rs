//! The reconciler: makes the cluster follow each instance's desired state, and writes what
//! it sees as the instance's status. Level-triggered: every pass starts from the database
//! and the cluster as they are now, so a pass may run twice, late, or on another replica,
//! and after a restart work simply resumes.
//!
//! - `reconcile` (the `instances.reconcile` job, retried with backoff): places the
//!   instance, applies or deletes its objects, then observes.
//! - `observe` (the pod watcher, on every pod event): reads the pods, writes the status.
//! - `resync` (the `instances.resync` schedule): queues a reconcile for every instance not
//!   yet TERMINATED, catching whatever a lost event or a crash left behind.

use std::collections::BTreeMap;

use diesel_async::{AsyncConnection, RunQueryDsl};
use uuid::Uuid;

use super::cluster::Cluster;
use super::objects::{self, InstanceSpec};
use super::placement;
use super::status::{Observed, status_of};
use super::template;
use crate::error::{AppError, AppResult};
use crate::instances::model::{DesiredState, InstanceStatus, Workload};
use crate::instances::service as instances;
use crate::state::AppState;

/// Instances the resync reads at a time (it goes through all of them).
const RESYNC_BATCH: i64 = 1000;

/// One reconcile pass over one instance. Passes over one instance never overlap, on any
/// replica: each holds the instance's advisory lock (in a transaction of its own, released
/// if the process dies) and reads the instance only once it has it, so a pass that waited
/// acts on what is wanted now, never on what was wanted when it was queued.
pub async fn reconcile(state: &AppState, id: Uuid) -> AppResult<()> {
    let mut lock = state.pool.get().await?;
    lock.transaction(async |lock| {
        diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
            .bind::<diesel::sql_types::Text, _>(id.to_string())
            .execute(lock)
            .await?;
        pass(state, id).await
    })
    .await
}

async fn pass(state: &AppState, id: Uuid) -> AppResult<()> {
    let cluster = super::cluster(state)?;
    let Some(mut w) = instances::workload(state, id).await? else {
        return Ok(()); // deleted with its user: nothing to do
    };
    let name = objects::object_name(&w.subdomain);
    if w.desired_state == DesiredState::Deleted {
        if w.status == InstanceStatus::Terminated {
            return Ok(());
        }
        if w.status != InstanceStatus::Pending || w.node_id.is_some() {
            record(
                state,
                &w,
                InstanceStatus::Terminating,
                "removing the app and its data",
            )
            .await?;
        }
        cluster.delete(&w.namespace, &name).await?;
        let terminated = observe_workload(state, cluster, &w).await?;
        if terminated == InstanceStatus::Terminated {
            // Its node has room again.
            instances::queue_unplaced(state).await?;
        }
        return Ok(());
    }
    if w.node_id.is_none() {
        if w.desired_state == DesiredState::Stopped {
            // Nothing to run and no data yet: no room is taken until it is started.
            record(state, &w, InstanceStatus::Stopped, "stopped").await?;
            return Ok(());
        }
        match placement::place(state, id, w.generation)
            .await
            .map_err(AppError::Internal)?
        {
            Some(placed) => {
                tracing::info!(instance = %id, node = %placed.node_name, "instance placed");
                w.node_id = Some(placed.node_id);
                w.node_name = Some(placed.node_name);
                w.generation = placed.generation;
                record(
                    state,
                    &w,
                    InstanceStatus::Provisioning,
                    "placed on a worker node; creating the app's resources",
                )
                .await?;
            }
            None => {
                let waiting = format!(
                    "waiting for room on a worker node: no node has {} millicores, {} MB of \
                     memory and {} GB of storage free; it will be placed as soon as one has",
                    w.cpu_milli, w.memory_mb, w.storage_gb
                );
                record(state, &w, InstanceStatus::Pending, &waiting).await?;
                return Ok(());
            }
        }
    }
    let node = w.node_name.clone().unwrap_or_default();
    if cluster.simulated_url().is_some()
        && let Some(node_id) = w.node_id
        && let Some(worker) = crate::nodes::service::find_internal(state, node_id).await?
    {
        // The simulated kubelet runs the worker nodes Podium knows, however late they came.
        cluster.ensure_simulated_node(&worker).await?;
    }
    // The stored credentials are the truth; an instance provisioned before they were
    // stored keeps what its Secret holds.
    let stored = w
        .credentials
        .as_deref()
        .and_then(|c| state.sealer.open(id, c));
    if w.credentials.is_some() && stored.is_none() {
        return Err(AppError::Internal(anyhow::anyhow!(
            "the instance's stored credentials do not open with the credentials key"
        )));
    }
    let kept = match stored.clone() {
        Some(env) => Some(env),
        None => cluster.secret_values(&w.namespace, &name).await?,
    };
    let spec = spec_of(&w, node, kept.as_ref());
    if stored.as_ref() != Some(&spec.env) {
        instances::store_credentials(state, id, &state.sealer.seal(id, &spec.env)).await?;
    }
    match cluster.apply(&spec).await {
        Ok(()) => {}
        // Refused for good (invalid, forbidden, over a quota): retrying the same objects
        // changes nothing until an operator does. The owner sees FAILED; the resync tries
        // again every pass.
        Err(kube::Error::Api(e)) if [400, 403, 404, 422].contains(&e.code) => {
            tracing::error!(instance = %id, code = e.code, reason = %e.reason, message = %e.message,
                "the cluster refused an instance's objects");
            record(
                state,
                &w,
                InstanceStatus::Failed,
                "the cluster refused the app's resources; the platform's operators have been told",
            )
            .await?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    observe_workload(state, cluster, &w).await?;
    Ok(())
}

async fn record(
    state: &AppState,
    w: &Workload,
    status: InstanceStatus,
    message: &str,
) -> AppResult<()> {
    instances::record_status(state, w.id, w.generation, status, message).await?;
    Ok(())
}

/// The objects' input for a workload placed on `node`.
pub fn spec_of(
    w: &Workload,
    node: String,
    existing: Option<&BTreeMap<String, String>>,
) -> InstanceSpec {
    let host = w
        .public_url
        .as_deref()
        .and_then(|u| u.split("://").nth(1))
        .unwrap_or(&w.subdomain)
        .trim_end_matches('/')
        .to_string();
    InstanceSpec {
        instance_id: w.id,
        subscription_id: w.subscription_id,
        user_id: w.user_id,
        namespace: w.namespace.clone(),
        subdomain: w.subdomain.clone(),
        env: template::render(&w.env_template, &host, existing),
        host,
        service_slug: w.service_slug.clone(),
        image: w.image.clone(),
        container_port: w.container_port,
        volume_mount_path: w.volume_mount_path.clone(),
        cpu_milli: w.cpu_milli,
        memory_mb: w.memory_mb,
        storage_gb: w.storage_gb,
        node_name: node,
        replicas: i32::from(w.desired_state == DesiredState::Running),
        restarted_at: w.restarted_at.map(|t| t.to_rfc3339()),
    }
}

/// Reads the instance's pods and writes the status they mean (the pod watcher's entry).
pub async fn observe(state: &AppState, id: Uuid) -> AppResult<()> {
    let cluster = super::cluster(state)?;
    let Some(w) = instances::workload(state, id).await? else {
        return Ok(());
    };
    // Unplaced instances have nothing in the cluster to look at; a finished deletion
    // stays finished.
    if (w.node_id.is_none() && w.desired_state != DesiredState::Deleted)
        || w.status == InstanceStatus::Terminated
    {
        return Ok(());
    }
    observe_workload(state, cluster, &w).await?;
    Ok(())
}

async fn observe_workload(
    state: &AppState,
    cluster: &Cluster,
    w: &Workload,
) -> AppResult<InstanceStatus> {
    let name = objects::object_name(&w.subdomain);
    let found = cluster.find(&w.namespace, &name, w.id).await?;
    let restarted_at = w.restarted_at.map(|t| t.to_rfc3339());
    let (status, message) = status_of(&Observed {
        desired: w.desired_state,
        deployed: found.deployed,
        any_object: found.any_object,
        pods: &found.pods,
        restarted_at: restarted_at.as_deref(),
        url: w.public_url.as_deref(),
    });
    let changed = instances::record_status(state, w.id, w.generation, status, &message).await?;
    if let Some(i) = &changed {
        tracing::info!(instance = %w.id, status = i.status.as_str(), %message, "instance status");
    }
    Ok(status)
}

/// Reconciles every instance that is not where it should be: not yet TERMINATED and
/// either unsettled in the database or drifted in the cluster (a Deployment missing or
/// with the wrong replica count). One list of Deployments, not one request per instance.
pub async fn resync(state: &AppState) -> AppResult<()> {
    let cluster = super::cluster(state)?;
    let deployed: std::collections::HashMap<String, i32> = cluster
        .deployments()
        .list(&kube::api::ListParams::default().labels(&format!(
            "{}={}",
            objects::MANAGED_BY,
            objects::FIELD_MANAGER
        )))
        .await?
        .items
        .into_iter()
        .filter_map(|d| {
            let id = d.metadata.labels?.get(objects::INSTANCE_ID_LABEL)?.clone();
            Some((id, d.spec?.replicas.unwrap_or(1)))
        })
        .collect();
    let mut passes = 0;
    let mut after = None;
    loop {
        let rows = instances::unsettled(state, after, RESYNC_BATCH).await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = Some(last.id);
        for i in rows {
            let replicas = deployed.get(&i.id.to_string()).copied();
            let settled = match i.desired_state {
                DesiredState::Running => i.status == InstanceStatus::Running && replicas == Some(1),
                DesiredState::Stopped => i.status == InstanceStatus::Stopped && replicas == Some(0),
                DesiredState::Deleted => false,
            };
            if settled {
                continue;
            }
            passes += 1;
            if let Err(e) = reconcile(state, i.id).await {
                tracing::warn!(instance = %i.id, error = ?e, "resync of an instance failed");
            }
        }
    }
    if passes > 0 {
        tracing::info!(instances = passes, "resync reconciled instances");
    }
    Ok(())
}
