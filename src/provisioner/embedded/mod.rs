//! The embedded Kubernetes API stand-in (default mode and tests). Placeholder until the
//! stand-in lands: the interface the provisioner codes against.

use std::collections::BTreeMap;
use std::time::Duration;

pub struct SimNode {
    pub name: String,
    pub cpu_cores: i32,
    pub memory_mb: i64,
    pub storage_mb: i64,
    pub max_pods: i32,
    pub architecture: String,
    pub labels: BTreeMap<String, String>,
}

pub struct EmbeddedConfig {
    pub nodes: Vec<SimNode>,
    pub start_delay: Duration,
}

pub struct EmbeddedCluster {
    url: String,
}

impl EmbeddedCluster {
    pub async fn start(_config: EmbeddedConfig) -> anyhow::Result<EmbeddedCluster> {
        anyhow::bail!("the embedded cluster is not built yet")
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn client_config(&self) -> kube::Config {
        kube::Config::new(self.url.parse().expect("a URL"))
    }

    pub async fn stop(self) {}

    pub async fn add_node(&self, _node: SimNode) -> kube::Result<()> {
        Ok(())
    }
}
