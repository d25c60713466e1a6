//! The Kubernetes objects of one instance, built from what Podium knows about it. Pure: no
//! client, no database, so that request-shape tests and `kubernetes-validate` see exactly
//! what is applied.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use serde_json::{Value, json};
use uuid::Uuid;

/// The field manager of every object Podium applies.
pub const FIELD_MANAGER: &str = "podium";
/// The label every Podium object carries (selects them in watches and the resync).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const INSTANCE_ID_LABEL: &str = "podium.io/instance-id";
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

/// Cluster-wide choices an operator makes (settings).
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub ingress_class: Option<String>,
    pub cluster_issuer: String,
    pub storage_class: Option<String>,
    /// The namespace of the ingress controller, whose pods may reach the instances.
    pub ingress_namespace: String,
}

/// Everything the objects of one instance are made from. No `Debug`: it holds the
/// instance's credentials, which are never logged.
#[derive(Clone)]
pub struct InstanceSpec {
    pub instance_id: Uuid,
    pub subscription_id: Uuid,
    pub user_id: Uuid,
    pub namespace: String,
    pub subdomain: String,
    pub host: String,
    pub service_slug: String,
    pub image: String,
    pub container_port: i32,
    pub volume_mount_path: Option<String>,
    pub cpu_milli: i32,
    pub memory_mb: i32,
    pub storage_gb: i32,
    /// The worker node's Kubernetes name: the pod is pinned to it.
    pub node_name: String,
    /// The rendered environment (credentials included): the Secret's data.
    pub env: BTreeMap<String, String>,
    /// 1 to run, 0 to stop (data kept).
    pub replicas: i32,
    pub restarted_at: Option<String>,
}

impl InstanceSpec {
    /// The name every object of the instance shares: a DNS-1035 label (the subdomain is
    /// at most 47 characters, so this fits in 63).
    pub fn object_name(&self) -> String {
        object_name(&self.subdomain)
    }

    fn labels(&self) -> Value {
        json!({
            "app.kubernetes.io/name": self.service_slug,
            "app.kubernetes.io/instance": self.object_name(),
            "app.kubernetes.io/component": "app",
            "app.kubernetes.io/part-of": "podium",
            MANAGED_BY: FIELD_MANAGER,
            INSTANCE_ID_LABEL: self.instance_id.to_string(),
            "podium.io/subscription-id": self.subscription_id.to_string(),
            "podium.io/user-id": self.user_id.to_string(),
        })
    }

    fn selector(&self) -> Value {
        json!({
            "app.kubernetes.io/instance": self.object_name(),
            INSTANCE_ID_LABEL: self.instance_id.to_string(),
        })
    }

    fn metadata(&self) -> Value {
        json!({ "name": self.object_name(), "namespace": self.namespace, "labels": self.labels() })
    }
}

/// The name of an instance's objects, from its subdomain.
pub fn object_name(subdomain: &str) -> String {
    format!("i-{subdomain}")
}

/// The customer's namespace.
pub fn namespace(spec: &InstanceSpec) -> Namespace {
    typed(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {
            "name": spec.namespace,
            "labels": {
                MANAGED_BY: FIELD_MANAGER,
                "app.kubernetes.io/part-of": "podium",
                "podium.io/user-id": spec.user_id.to_string(),
            },
        },
    }))
}

/// The generated credentials and the rest of the environment.
pub fn secret(spec: &InstanceSpec) -> Secret {
    use base64::Engine;
    let data: BTreeMap<&String, String> = spec
        .env
        .iter()
        .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
        .collect();
    typed(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": spec.metadata(),
        "type": "Opaque",
        "data": data,
    }))
}

/// The app's volume, sized from the plan.
pub fn volume_claim(spec: &InstanceSpec, options: &ClusterOptions) -> PersistentVolumeClaim {
    let mut claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": spec.metadata(),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": { "requests": { "storage": format!("{}Gi", spec.storage_gb) } },
        },
    });
    if let Some(class) = &options.storage_class {
        claim["spec"]["storageClassName"] = json!(class);
    }
    typed(claim)
}

/// One replica (or none, stopped) of the app, pinned to its node, with the plan's requests
/// and limits and probes on the container port. `Recreate`, because the volume can be
/// attached to one pod at a time.
pub fn deployment(spec: &InstanceSpec) -> Deployment {
    let name = spec.object_name();
    let resources = json!({
        "cpu": format!("{}m", spec.cpu_milli),
        "memory": format!("{}Mi", spec.memory_mb),
    });
    let probe = |initial: i32, period: i32, failures: i32| {
        json!({
            "tcpSocket": { "port": "http" },
            "initialDelaySeconds": initial,
            "periodSeconds": period,
            "failureThreshold": failures,
        })
    };
    let mut container = json!({
        "name": "app",
        "image": spec.image,
        "ports": [{ "name": "http", "containerPort": spec.container_port, "protocol": "TCP" }],
        "envFrom": [{ "secretRef": { "name": name } }],
        "resources": { "requests": resources, "limits": resources },
        "readinessProbe": probe(5, 10, 3),
        "livenessProbe": probe(60, 20, 6),
    });
    let mut pod_spec = json!({
        "containers": [],
        "nodeSelector": { "kubernetes.io/hostname": spec.node_name },
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
    });
    if let Some(path) = &spec.volume_mount_path {
        container["volumeMounts"] = json!([{ "name": "data", "mountPath": path }]);
        pod_spec["volumes"] =
            json!([{ "name": "data", "persistentVolumeClaim": { "claimName": name } }]);
    }
    pod_spec["containers"] = json!([container]);
    let mut template_meta = json!({ "labels": spec.labels() });
    if let Some(at) = &spec.restarted_at {
        template_meta["annotations"] = json!({ RESTARTED_AT: at });
    }
    typed(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": spec.metadata(),
        "spec": {
            "replicas": spec.replicas,
            "strategy": { "type": "Recreate" },
            "selector": { "matchLabels": spec.selector() },
            "template": { "metadata": template_meta, "spec": pod_spec },
        },
    }))
}

pub fn service(spec: &InstanceSpec) -> Service {
    typed(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": spec.metadata(),
        "spec": {
            "type": "ClusterIP",
            "selector": spec.selector(),
            "ports": [{ "name": "http", "port": 80, "targetPort": "http", "protocol": "TCP" }],
        },
    }))
}

/// `https://<subdomain>.<base domain>`, its certificate from cert-manager.
pub fn ingress(spec: &InstanceSpec, options: &ClusterOptions) -> Ingress {
    let name = spec.object_name();
    let mut ingress = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": spec.metadata(),
        "spec": {
            "tls": [{ "hosts": [spec.host], "secretName": format!("{name}-tls") }],
            "rules": [{
                "host": spec.host,
                "http": { "paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": { "service": { "name": name, "port": { "name": "http" } } },
                }] },
            }],
        },
    });
    ingress["metadata"]["annotations"] =
        json!({ "cert-manager.io/cluster-issuer": options.cluster_issuer });
    if let Some(class) = &options.ingress_class {
        ingress["spec"]["ingressClassName"] = json!(class);
    }
    typed(ingress)
}

/// Only the ingress controller and the customer's own pods may reach the app: other
/// customers' namespaces are shut out.
pub fn network_policy(spec: &InstanceSpec, options: &ClusterOptions) -> NetworkPolicy {
    typed(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": spec.metadata(),
        "spec": {
            "podSelector": { "matchLabels": spec.selector() },
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [
                    { "namespaceSelector": { "matchLabels": {
                        "kubernetes.io/metadata.name": options.ingress_namespace } } },
                    { "podSelector": {} },
                ],
            }],
        },
    }))
}

/// Every object of an instance, in the order they are applied, as JSON (for tests and
/// `kubernetes-validate`).
pub fn all(spec: &InstanceSpec, options: &ClusterOptions) -> Vec<Value> {
    fn v(o: impl serde::Serialize) -> Value {
        serde_json::to_value(o).expect("objects serialize")
    }
    vec![
        v(namespace(spec)),
        v(secret(spec)),
        v(volume_claim(spec, options)),
        v(deployment(spec)),
        v(service(spec)),
        v(ingress(spec, options)),
        v(network_policy(spec, options)),
    ]
}

/// From the JSON above to its typed form: a shape error is a bug caught by any test.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(value: Value) -> T {
    let object: T =
        serde_json::from_value(value.clone()).expect("the object matches its Kubernetes type");
    // A field the type does not know (a misspelling) would be dropped without a word.
    debug_assert_eq!(
        serde_json::to_value(&object).ok().as_ref(),
        Some(&value),
        "every field is one the Kubernetes type knows"
    );
    object
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn example() -> InstanceSpec {
        InstanceSpec {
            instance_id: Uuid::nil(),
            subscription_id: Uuid::nil(),
            user_id: Uuid::nil(),
            namespace: "podium-u-0".into(),
            subdomain: "blog-abc123".into(),
            host: "blog-abc123.apps.example.com".into(),
            service_slug: "ghost".into(),
            image: "ghost:5".into(),
            container_port: 2368,
            volume_mount_path: Some("/var/lib/ghost/content".into()),
            cpu_milli: 500,
            memory_mb: 512,
            storage_gb: 5,
            node_name: "worker-1".into(),
            env: BTreeMap::from([("url".into(), "https://blog".into())]),
            replicas: 1,
            restarted_at: None,
        }
    }

    #[test]
    fn the_deployment_is_pinned_sized_and_probed() {
        let d = serde_json::to_value(deployment(&example())).unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["nodeSelector"]["kubernetes.io/hostname"], "worker-1");
        let c = &pod["containers"][0];
        assert_eq!(c["resources"]["limits"]["cpu"], "500m");
        assert_eq!(c["resources"]["requests"]["memory"], "512Mi");
        assert_eq!(c["readinessProbe"]["tcpSocket"]["port"], "http");
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/var/lib/ghost/content");
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["metadata"]["labels"][MANAGED_BY], "podium");
    }
}
