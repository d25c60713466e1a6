//! Node sync: with a cluster, its Node objects are mirrored into worker nodes (capacity,
//! Ready condition, kubelet version, labels, taints), merged with heartbeat data: a
//! Ready node counts as heard from, like a heartbeat. Polled (one list per interval)
//! rather than watched: a kubelet refreshes its Node every few seconds anyway.

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ListParams;
use tokio::sync::watch as signal;

use super::cluster::Cluster;
use crate::error::AppResult;
use crate::nodes::service::ClusterNode;
use crate::state::AppState;

pub fn spawn(
    state: AppState,
    mut stopping: signal::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let cluster = state.cluster.clone()?;
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(state.settings.heartbeat_interval);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
            if let Err(e) = sync_once(&state, &cluster).await {
                tracing::warn!(error = ?e, "syncing the cluster's nodes failed");
            }
        }
    }))
}

/// One pass: every Node of the cluster into worker nodes.
pub async fn sync_once(state: &AppState, cluster: &Cluster) -> AppResult<usize> {
    let nodes = cluster.nodes().list(&ListParams::default()).await?.items;
    let facts: Vec<ClusterNode> = nodes.iter().filter_map(facts_of).collect();
    crate::nodes::service::sync_from_cluster(state, &facts).await
}

/// What Podium keeps of a Node.
pub fn facts_of(node: &Node) -> Option<ClusterNode> {
    let name = node.metadata.name.clone()?;
    let status = node.status.as_ref()?;
    let capacity = status.capacity.clone().unwrap_or_default();
    let info = status.node_info.as_ref();
    let ready = status
        .conditions
        .as_ref()
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let address = status
        .addresses
        .as_ref()
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.clone());
    Some(ClusterNode {
        hostname: labels
            .get("kubernetes.io/hostname")
            .cloned()
            .unwrap_or_else(|| name.clone()),
        name,
        ip_address: address.unwrap_or_else(|| "0.0.0.0".into()),
        cpu_cores: capacity.get("cpu").and_then(cores).unwrap_or(0),
        memory_mb: capacity.get("memory").and_then(mebibytes).unwrap_or(0),
        storage_mb: capacity
            .get("ephemeral-storage")
            .and_then(mebibytes)
            .unwrap_or(0),
        max_pods: capacity
            .get("pods")
            .and_then(|q| q.0.parse().ok())
            .unwrap_or(110),
        architecture: info.map_or("amd64".into(), |i| i.architecture.clone()),
        operating_system: info.map_or("linux".into(), |i| i.operating_system.clone()),
        ready,
        kubelet_version: info.map(|i| i.kubelet_version.clone()),
        container_runtime: info.map(|i| i.container_runtime_version.clone()),
        kernel_version: info.map(|i| i.kernel_version.clone()),
        os_image: info.map(|i| i.os_image.clone()),
        labels: serde_json::to_value(labels).unwrap_or_default(),
        taints: serde_json::to_value(taints).unwrap_or_default(),
    })
}

/// "8", "7500m" -> whole cores.
fn cores(q: &Quantity) -> Option<i32> {
    match q.0.strip_suffix('m') {
        Some(milli) => milli.parse::<i64>().ok().map(|m| (m / 1000) as i32),
        None => q.0.parse::<f64>().ok().map(|c| c as i32),
    }
}

/// "32Gi", "33554432Ki", "500000Mi", plain bytes -> MiB.
fn mebibytes(q: &Quantity) -> Option<i64> {
    let s = q.0.as_str();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let bytes = match unit {
        "" => n,
        "Ki" => n * 1024.0,
        "Mi" => n * 1048576.0,
        "Gi" => n * 1073741824.0,
        "Ti" => n * 1099511627776.0,
        "k" => n * 1e3,
        "M" => n * 1e6,
        "G" => n * 1e9,
        "T" => n * 1e12,
        _ => return None,
    };
    Some((bytes / 1048576.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_convert() {
        assert_eq!(cores(&Quantity("8".into())), Some(8));
        assert_eq!(cores(&Quantity("7500m".into())), Some(7));
        assert_eq!(mebibytes(&Quantity("32Gi".into())), Some(32768));
        assert_eq!(mebibytes(&Quantity("33554432Ki".into())), Some(32768));
        assert_eq!(mebibytes(&Quantity("1048576".into())), Some(1));
    }
}
