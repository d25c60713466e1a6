//! The Kubernetes adapter: writes an instance's objects with server-side apply under one
//! field manager, scales, deletes, and reads pods and logs, through an ordinary
//! `kube::Client`, whether it points at a real cluster or at the embedded stand-in.

use std::collections::BTreeMap;

use futures_util::AsyncBufRead;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    Namespace, Node, PersistentVolumeClaim, Pod, Secret, Service as KubeService,
};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::objects::{self, ClusterOptions, FIELD_MANAGER, INSTANCE_ID_LABEL, InstanceSpec};

/// What the cluster holds of one instance.
pub struct Found {
    pub deployed: bool,
    pub any_object: bool,
    pub pods: Vec<Pod>,
}

#[derive(Clone)]
pub struct Cluster {
    client: Client,
    pub options: ClusterOptions,
    /// The embedded stand-in (its server runs as long as this handle lives).
    simulated: Option<std::sync::Arc<super::embedded::EmbeddedCluster>>,
}

impl Cluster {
    pub fn new(client: Client, options: ClusterOptions) -> Self {
        Cluster {
            client,
            options,
            simulated: None,
        }
    }

    pub fn simulated(
        client: Client,
        options: ClusterOptions,
        embedded: super::embedded::EmbeddedCluster,
    ) -> Self {
        Cluster {
            client,
            options,
            simulated: Some(std::sync::Arc::new(embedded)),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The embedded cluster's address, when the cluster is simulated.
    pub fn simulated_url(&self) -> Option<&str> {
        self.simulated.as_deref().map(|c| c.url())
    }

    fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Applies every object of the instance (idempotent: the same spec changes nothing).
    pub async fn apply(&self, spec: &InstanceSpec) -> kube::Result<()> {
        let ns = &spec.namespace;
        let name = spec.object_name();
        apply(
            &Api::<Namespace>::all(self.client.clone()),
            ns,
            &objects::namespace(spec),
        )
        .await?;
        apply(&self.api::<Secret>(ns), &name, &objects::secret(spec)).await?;
        let mut claim = objects::volume_claim(spec, &self.options);
        // A volume only grows: a smaller plan keeps the size it has (shrinking is refused).
        if let Some(current) = self
            .api::<PersistentVolumeClaim>(ns)
            .get_opt(&name)
            .await?
            .and_then(|c| c.spec?.resources?.requests?.get("storage").cloned())
            && gibibytes(&current).is_some_and(|gi| gi > i64::from(spec.storage_gb))
            && let Some(requests) = claim
                .spec
                .as_mut()
                .and_then(|s| s.resources.as_mut())
                .and_then(|r| r.requests.as_mut())
        {
            requests.insert("storage".into(), current);
        }
        apply(&self.api::<PersistentVolumeClaim>(ns), &name, &claim).await?;
        apply(
            &self.api::<Deployment>(ns),
            &name,
            &objects::deployment(spec),
        )
        .await?;
        apply(&self.api::<KubeService>(ns), &name, &objects::service(spec)).await?;
        apply(
            &self.api::<Ingress>(ns),
            &name,
            &objects::ingress(spec, &self.options),
        )
        .await?;
        apply(
            &self.api::<NetworkPolicy>(ns),
            &name,
            &objects::network_policy(spec, &self.options),
        )
        .await
    }

    /// The values of the instance's Secret, if it exists (generated credentials are kept
    /// from one apply to the next).
    pub async fn secret_values(
        &self,
        namespace: &str,
        name: &str,
    ) -> kube::Result<Option<BTreeMap<String, String>>> {
        let Some(secret) = self.api::<Secret>(namespace).get_opt(name).await? else {
            return Ok(None);
        };
        Ok(Some(
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect(),
        ))
    }

    /// Deletes the instance's objects (its volume and data included); returns whether any
    /// was still there.
    pub async fn delete(&self, namespace: &str, name: &str) -> kube::Result<bool> {
        let ns = namespace;
        let mut any = false;
        any |= delete(&self.api::<Deployment>(ns), name).await?;
        any |= delete(&self.api::<NetworkPolicy>(ns), name).await?;
        any |= delete(&self.api::<Ingress>(ns), name).await?;
        any |= delete(&self.api::<KubeService>(ns), name).await?;
        any |= delete(&self.api::<PersistentVolumeClaim>(ns), name).await?;
        any |= delete(&self.api::<Secret>(ns), name).await?;
        Ok(any)
    }

    /// The instance's Deployment and pods, as they are now.
    pub async fn find(
        &self,
        namespace: &str,
        name: &str,
        instance_id: uuid::Uuid,
    ) -> kube::Result<Found> {
        let deployed = self
            .api::<Deployment>(namespace)
            .get_opt(name)
            .await?
            .is_some();
        let pods = self.pods_of(namespace, instance_id).await?;
        let any_object = deployed
            || !pods.is_empty()
            || self
                .api::<PersistentVolumeClaim>(namespace)
                .get_opt(name)
                .await?
                .is_some()
            || self.api::<Secret>(namespace).get_opt(name).await?.is_some();
        Ok(Found {
            deployed,
            any_object,
            pods,
        })
    }

    async fn pods_of(&self, namespace: &str, instance_id: uuid::Uuid) -> kube::Result<Vec<Pod>> {
        Ok(self
            .api::<Pod>(namespace)
            .list(&ListParams::default().labels(&format!("{INSTANCE_ID_LABEL}={instance_id}")))
            .await?
            .items)
    }

    /// The newest pod of the instance that is not being deleted.
    pub async fn current_pod(
        &self,
        namespace: &str,
        instance_id: uuid::Uuid,
    ) -> kube::Result<Option<Pod>> {
        Ok(self
            .pods_of(namespace, instance_id)
            .await?
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .max_by_key(|p| p.metadata.creation_timestamp.clone()))
    }

    pub async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<String>,
        tail_lines: i64,
    ) -> kube::Result<String> {
        self.api::<Pod>(namespace)
            .logs(pod, &log_params(container, tail_lines, false))
            .await
    }

    pub async fn follow_logs(
        &self,
        namespace: &str,
        pod: &str,
        tail_lines: i64,
    ) -> kube::Result<impl AsyncBufRead + use<>> {
        self.api::<Pod>(namespace)
            .log_stream(pod, &log_params(None, tail_lines, true))
            .await
    }

    /// Creates the simulated Node of a worker node the embedded cluster does not run yet.
    pub async fn ensure_simulated_node(
        &self,
        worker: &crate::nodes::model::WorkerNode,
    ) -> kube::Result<()> {
        if self.simulated.is_none() || self.nodes().get_opt(&worker.name).await?.is_some() {
            return Ok(());
        }
        let node: Node =
            serde_json::from_value(super::embedded::node_object(&super::sim_node(worker)))
                .expect("a Node");
        match self
            .nodes()
            .create(&kube::api::PostParams::default(), &node)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::all(self.client.clone())
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::all(self.client.clone())
    }
}

/// A log read holds at most this much (an app decides what it writes).
const LOG_LIMIT_BYTES: i64 = 1024 * 1024;

fn log_params(container: Option<String>, tail_lines: i64, follow: bool) -> LogParams {
    LogParams {
        container,
        tail_lines: Some(tail_lines),
        follow,
        limit_bytes: (!follow).then_some(LOG_LIMIT_BYTES),
        ..Default::default()
    }
}

/// Server-side apply under Podium's field manager, forced: Podium owns these objects.
async fn apply<K>(api: &Api<K>, name: &str, object: &K) -> kube::Result<()>
where
    K: Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await?;
    Ok(())
}

/// Deletes one object; `false` when it was already gone.
async fn delete<K>(api: &Api<K>, name: &str) -> kube::Result<bool>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// "5Gi" -> 5 (other units: not compared).
fn gibibytes(q: &Quantity) -> Option<i64> {
    q.0.strip_suffix("Gi")?.parse().ok()
}
