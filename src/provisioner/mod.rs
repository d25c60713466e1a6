//! The Kubernetes side of instances: the adapter that writes each instance's objects with
//! kube-rs, placement on worker nodes, the reconciler that makes the cluster follow each
//! instance's desired state, node sync, and the embedded cluster the default mode runs
//! against.

pub mod cluster;
pub mod credentials;
pub mod embedded;
pub mod nodesync;
pub mod objects;
pub mod placement;
pub mod reconcile;
pub mod service;
#[cfg(test)]
mod shapes_tests;
pub mod status;
pub mod template;
#[cfg(test)]
mod validate_tests;
pub mod watch;

use std::collections::BTreeMap;

use anyhow::Context;

use crate::config::{KubeTarget, Settings};
use crate::nodes::model::WorkerNode;
use cluster::Cluster;
use embedded::{EmbeddedCluster, EmbeddedConfig, SimNode};
use objects::ClusterOptions;

/// Connects to the configured cluster; in the default mode starts the embedded one,
/// running `nodes` (the worker nodes Podium knows).
pub async fn connect(settings: &Settings, nodes: &[WorkerNode]) -> anyhow::Result<Cluster> {
    let kube = &settings.kube;
    let options = ClusterOptions {
        ingress_class: kube.ingress_class.clone(),
        cluster_issuer: kube.cluster_issuer.clone(),
        storage_class: kube.storage_class.clone(),
        ingress_namespace: kube.ingress_namespace.clone(),
    };
    embedded::install_crypto_provider();
    match &kube.target {
        KubeTarget::Embedded => {
            let embedded = EmbeddedCluster::start(EmbeddedConfig {
                nodes: nodes.iter().map(sim_node).collect(),
                start_delay: kube.embedded_start_delay,
            })
            .await
            .context("starting the embedded Kubernetes cluster")?;
            tracing::warn!(
                "instances run in the SIMULATED cluster, not on real nodes: set KUBECONFIG (or \
                 run Podium inside a cluster) for a real one"
            );
            let client = kube::Client::try_from(embedded.client_config())?;
            Ok(Cluster::simulated(client, options, embedded))
        }
        KubeTarget::Cluster => {
            let config = kube::Config::infer()
                .await
                .context("reading the Kubernetes configuration (KUBECONFIG or in-cluster)")?;
            tracing::info!(cluster = %config.cluster_url, "using a Kubernetes cluster");
            Ok(Cluster::new(kube::Client::try_from(config)?, options))
        }
        KubeTarget::Url(url) => {
            let config = kube::Config::new(
                url.parse()
                    .with_context(|| format!("PODIUM_KUBE_API_URL {url:?} is not a URL"))?,
            );
            tracing::info!(cluster = %url, "using the Kubernetes API at PODIUM_KUBE_API_URL");
            Ok(Cluster::new(kube::Client::try_from(config)?, options))
        }
    }
}

/// In the embedded cluster, runs a simulated Node for every worker node Podium knows (the
/// demo nodes seeded after the cluster started, on the first start of the embedded
/// default), then syncs them back at once so that they are ready for placement.
pub async fn simulate_known_nodes(state: &crate::state::AppState) -> crate::error::AppResult<()> {
    let Some(cluster) = state
        .cluster
        .as_ref()
        .filter(|c| c.simulated_url().is_some())
    else {
        return Ok(());
    };
    for node in crate::nodes::service::all_internal(state).await? {
        cluster.ensure_simulated_node(&node).await?;
    }
    nodesync::sync_once(state, cluster).await?;
    Ok(())
}

/// The cluster instances run on (every server has one; `None` only in states built by hand).
pub fn cluster(state: &crate::state::AppState) -> crate::error::AppResult<&Cluster> {
    state.cluster.as_ref().ok_or_else(|| {
        crate::error::AppError::Conflict("no Kubernetes cluster is configured".into())
    })
}

/// The simulated Node of a worker node.
pub fn sim_node(node: &WorkerNode) -> SimNode {
    let labels = string_map(&node.labels);
    SimNode {
        name: node.name.clone(),
        cpu_cores: node.cpu_cores,
        memory_mb: node.memory_mb,
        storage_mb: node.storage_mb,
        max_pods: node.max_pods,
        architecture: node.architecture.clone(),
        labels,
    }
}

/// The string values of a JSON object (labels, annotations); others are left out.
pub fn string_map(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}
