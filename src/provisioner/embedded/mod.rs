//! The embedded Kubernetes API stand-in (default mode and tests): an HTTP server on
//! 127.0.0.1 speaking the part of the Kubernetes API Podium's kube-rs adapter uses (get,
//! list, watch, create, replace, patch incl. server-side apply, delete, pod logs), backed
//! by kube-fake-client's in-memory store, plus a simulated kubelet that runs Nodes and the
//! pods of Deployments. A kube client reaches it over HTTP like any cluster:
//! `kube::Client::try_from(cluster.client_config())`.
//!
//! Modules: `apipath` (paths), `store` (the fake store and what is added on top), `ssa`
//! (fields a manager stops applying are removed), `watch`
//! (events, history, selectors), `server` (HTTP), `kubelet` + `pods` + `sched` (the
//! simulated node agent, pod lives, scheduling), `logs` (container logs).

mod apipath;
mod kubelet;
mod logs;
mod pods;
mod sched;
mod server;
mod ssa;
mod store;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use anyhow::Context;
use serde_json::json;
use tokio::task::JoinHandle;

use apipath::ApiPath;
use store::Store;

/// Makes ring rustls's process-wide crypto provider, once (later calls change nothing).
/// Needed before any `kube::Client` is built from a `kube::Config`: kube-fake-client's
/// dependency jsonschema enables rustls's aws-lc-rs feature next to kube's ring, and with
/// two providers compiled in rustls panics ("Could not automatically determine the
/// process-level CryptoProvider") instead of choosing one.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The Node object of a simulated node: what `start` creates, and what a node added later
/// is created with through the API (the kubelet runs every Node it finds).
pub fn node_object(n: &SimNode) -> serde_json::Value {
    kubelet::node_object(n)
}

/// A simulated worker node (a Node object the kubelet runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNode {
    pub name: String,
    pub cpu_cores: i32,
    pub memory_mb: i64,
    pub storage_mb: i64,
    pub max_pods: i32,
    /// "amd64" when empty.
    pub architecture: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    pub nodes: Vec<SimNode>,
    /// How long a new pod's containers take to start (or fail).
    pub start_delay: Duration,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            nodes: Vec::new(),
            start_delay: Duration::from_secs(2),
        }
    }
}

/// A running stand-in; stopped by `stop` or when dropped.
pub struct EmbeddedCluster {
    url: String,
    server: ServerHandle,
    _server_task: JoinHandle<std::io::Result<()>>,
    kubelet: tokio::task::AbortHandle,
}

impl EmbeddedCluster {
    /// Starts the store, the HTTP server (on a free loopback port) and the kubelet, with
    /// the namespaces every cluster has and the configured nodes.
    pub async fn start(config: EmbeddedConfig) -> anyhow::Result<EmbeddedCluster> {
        install_crypto_provider();
        let store = Arc::new(Store::new().await.context("starting the embedded store")?);
        let namespaces = ApiPath::parse("/api/v1/namespaces").expect("static path");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let body = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": ns },
                               "spec": { "finalizers": ["kubernetes"] }, "status": { "phase": "Active" } });
            let r = store
                .mutate(
                    "POST",
                    &namespaces,
                    "",
                    Some("application/json"),
                    body.to_string().as_bytes(),
                )
                .await;
            anyhow::ensure!(r.is_success(), "creating namespace {ns}: {}", r.body);
        }
        let nodes = ApiPath::parse("/api/v1/nodes").expect("static path");
        for n in &config.nodes {
            let body = kubelet::node_object(n).to_string();
            let r = store
                .mutate(
                    "POST",
                    &nodes,
                    "",
                    Some("application/json"),
                    body.as_bytes(),
                )
                .await;
            anyhow::ensure!(r.is_success(), "creating node {}: {}", n.name, r.body);
        }
        let (server, port) =
            server::serve(store.clone()).context("binding the embedded Kubernetes API")?;
        let url = format!("http://127.0.0.1:{port}");
        let handle = server.handle();
        let server_task = tokio::spawn(server);
        let task = tokio::spawn(kubelet::Kubelet::new(store, config.start_delay).run());
        let kubelet = task.abort_handle();
        // A panic would otherwise freeze every pod silently.
        tokio::spawn(async move {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!("the simulated kubelet panicked: embedded pods no longer change");
            }
        });
        tracing::warn!(
            %url,
            nodes = config.nodes.len(),
            "the Kubernetes cluster is SIMULATED: an embedded stand-in API with a simulated kubelet; no containers run"
        );
        Ok(EmbeddedCluster {
            url,
            server: handle,
            _server_task: server_task,
            kubelet,
        })
    }

    /// "http://127.0.0.1:PORT".
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kube Config pointing at the stand-in (plain HTTP, no credentials).
    pub fn client_config(&self) -> kube::Config {
        kube::Config::new(self.url.parse().expect("the stand-in's URL is a valid URI"))
    }

    pub async fn stop(self) {
        self.kubelet.abort();
        self.server.stop(false).await;
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        self.kubelet.abort();
        // Sends the stop command at once (the returned future only waits for completion);
        // the server task then ends by itself.
        drop(self.server.stop(false));
    }
}
