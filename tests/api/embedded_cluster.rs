//! The embedded Kubernetes stand-in, driven only through its public interface and a real
//! `kube::Client` over HTTP, as Podium's adapter drives it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use kube::api::{
    Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::runtime::watcher;
use podium::provisioner::embedded::{EmbeddedCluster, EmbeddedConfig, SimNode};
use serde_json::{Value, json};

const NS: &str = "customer-1";
const DEADLINE: Duration = Duration::from_secs(20);

fn sim_node(name: &str) -> SimNode {
    SimNode {
        name: name.to_string(),
        cpu_cores: 4,
        memory_mb: 8192,
        storage_mb: 100_000,
        max_pods: 110,
        architecture: "arm64".to_string(),
        labels: BTreeMap::from([("podium.io/zone".to_string(), "a".to_string())]),
    }
}

/// A stand-in with the given nodes (fast pods), a client, and the customer namespace.
async fn cluster(nodes: &[&str]) -> (EmbeddedCluster, kube::Client) {
    let cluster = EmbeddedCluster::start(EmbeddedConfig {
        nodes: nodes.iter().map(|n| sim_node(n)).collect(),
        start_delay: Duration::from_millis(200),
    })
    .await
    .expect("starting the stand-in");
    assert!(cluster.url().starts_with("http://127.0.0.1:"));
    let client = kube::Client::try_from(cluster.client_config()).expect("a client");
    let ns: Namespace =
        from(json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NS } }));
    Api::<Namespace>::all(client.clone())
        .patch(NS, &apply(), &Patch::Apply(&ns))
        .await
        .expect("applying the namespace");
    (cluster, client)
}

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

fn apply() -> PatchParams {
    PatchParams::apply("podium").force()
}

/// Polls `check` until it yields a value; fails with `what` at the deadline.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn deployment(name: &str, image: &str, node: &str, replicas: i32) -> Deployment {
    from(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name, "namespace": NS, "labels": { "app.kubernetes.io/name": name } },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "nodeSelector": { "kubernetes.io/hostname": node },
                    "containers": [{ "name": "app", "image": image,
                                     "ports": [{ "containerPort": 5432 }],
                                     "resources": { "requests": { "cpu": "250m", "memory": "256Mi" },
                                                    "limits": { "cpu": "500m", "memory": "512Mi" } } }],
                },
            },
        },
    }))
}

/// Server-side applies a namespaced object under its own name, as Podium's field manager.
async fn apply_object<K>(client: &kube::Client, object: &K) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let name = object.meta().name.clone().expect("a named object");
    Api::<K>::namespaced(client.clone(), NS)
        .patch(&name, &apply(), &Patch::Apply(object))
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e}"))
}

async fn apply_deployment(client: &kube::Client, d: &Deployment) -> Deployment {
    apply_object(client, d).await
}

async fn pods_of(client: &kube::Client, app: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), NS)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("listing pods")
        .items
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn waiting_reason(p: &Pod) -> Option<String> {
    p.status.as_ref()?.container_statuses.as_ref()?[0]
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

/// The single running, ready pod of an app.
async fn running_pod(client: &kube::Client, app: &str) -> Pod {
    eventually(&format!("one running, ready pod of {app}"), || async {
        let pods = pods_of(client, app).await;
        (pods.len() == 1 && phase(&pods[0]) == "Running" && ready(&pods[0]))
            .then(|| pods[0].clone())
    })
    .await
}

#[tokio::test]
async fn embedded_cluster_nodes_are_listed_with_capacity_and_ready() {
    let (cluster, client) = cluster(&["node-a", "node-b"]).await;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let names: Vec<_> = nodes
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let node = Api::<Node>::all(client.clone())
        .get("node-a")
        .await
        .unwrap();
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "node-a");
    assert_eq!(labels["kubernetes.io/arch"], "arm64");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["podium.io/zone"], "a");
    let status = node.status.unwrap();
    let capacity = status.capacity.unwrap();
    assert_eq!(capacity["cpu"].0, "4");
    assert_eq!(capacity["memory"].0, "8192Mi");
    assert_eq!(capacity["pods"].0, "110");
    assert_eq!(capacity["ephemeral-storage"].0, "100000Mi");
    assert!(status.allocatable.is_some());
    let conditions = status.conditions.unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    let info = status.node_info.unwrap();
    assert_eq!(info.kubelet_version, "v1.33.0-podium-sim");
    assert_eq!(info.architecture, "arm64");
    assert_eq!(info.operating_system, "linux");
    assert!(!info.container_runtime_version.is_empty() && !info.kernel_version.is_empty());

    // A streaming list (watch with sendInitialEvents) ends with its bookmark.
    let config = watcher::Config::default().streaming_lists();
    let mut stream = Box::pin(watcher(Api::<Node>::all(client.clone()), config));
    let mut listed = 0;
    loop {
        match tokio::time::timeout(DEADLINE, stream.try_next()).await {
            Ok(Ok(Some(watcher::Event::InitApply(_)))) => listed += 1,
            Ok(Ok(Some(watcher::Event::InitDone))) => break,
            Ok(Ok(Some(_))) => {}
            other => panic!("the streaming list failed: {other:?}"),
        }
    }
    assert_eq!(listed, 2);

    // A node posted through the API is run too.
    let posted: Node =
        from(json!({ "apiVersion": "v1", "kind": "Node", "metadata": { "name": "node-c" } }));
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &posted)
        .await
        .unwrap();
    let node = eventually("the posted node to be Ready", || async {
        let n = Api::<Node>::all(client.clone()).get("node-c").await.ok()?;
        let ready = n
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(n)
    })
    .await;
    assert_eq!(
        node.metadata.labels.unwrap()["kubernetes.io/hostname"],
        "node-c"
    );
    assert!(node.status.unwrap().capacity.unwrap().contains_key("cpu"));
    cluster.stop().await;
}

#[tokio::test]
async fn embedded_cluster_an_applied_deployment_runs_and_scales_to_zero() {
    let (cluster, client) = cluster(&["node-a"]).await;
    let applied = apply_deployment(&client, &deployment("db", "postgres:16", "node-a", 1)).await;
    let managed = applied.metadata.managed_fields.unwrap_or_default();
    assert!(
        managed
            .iter()
            .any(|m| m.manager.as_deref() == Some("podium")),
        "{managed:?}"
    );

    let pod = running_pod(&client, "db").await;
    let name = pod.metadata.name.clone().unwrap();
    assert!(name.starts_with("db-"), "{name}");
    assert_eq!(
        name.split('-').count(),
        3,
        "<deploy>-<hash>-<suffix>: {name}"
    );
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node-a")
    );
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Deployment", "db")
    );
    assert!(
        pod.metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key("pod-template-hash")
    );
    let status = pod.status.unwrap();
    assert!(status.pod_ip.is_some());
    let c = &status.container_statuses.unwrap()[0];
    assert!(c.ready && c.state.as_ref().unwrap().running.is_some());
    let deployments = Api::<Deployment>::namespaced(client.clone(), NS);
    eventually("the deployment to report 1 ready replica", || async {
        let s = deployments.get("db").await.ok()?.status?;
        (s.ready_replicas == Some(1)
            && s.available_replicas == Some(1)
            && s.observed_generation.is_some())
        .then_some(())
    })
    .await;

    // Re-applying the same thing changes nothing (no new resourceVersion).
    let again = apply_deployment(&client, &deployment("db", "postgres:16", "node-a", 1)).await;
    let now = deployments.get("db").await.unwrap();
    assert_eq!(
        again.metadata.resource_version,
        now.metadata.resource_version
    );

    apply_deployment(&client, &deployment("db", "postgres:16", "node-a", 0)).await;
    eventually("the pods to be gone after scaling to 0", || async {
        pods_of(&client, "db").await.is_empty().then_some(())
    })
    .await;
    let d = deployments.get("db").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(0));
    cluster.stop().await;
}

#[tokio::test]
async fn embedded_cluster_image_tags_crashloop_and_pullfail() {
    let (cluster, client) = cluster(&["node-a"]).await;
    apply_deployment(
        &client,
        &deployment("crash", "example/app:crashloop", "node-a", 1),
    )
    .await;
    apply_deployment(
        &client,
        &deployment("nopull", "example/app:pullfail", "node-a", 1),
    )
    .await;

    let crashed = eventually("CrashLoopBackOff with restarts", || async {
        let pods = pods_of(&client, "crash").await;
        let p = pods.first()?;
        let c = p.status.as_ref()?.container_statuses.as_ref()?[0].clone();
        (waiting_reason(p).as_deref() == Some("CrashLoopBackOff") && c.restart_count >= 2)
            .then(|| (p.clone(), c))
    })
    .await;
    let (pod, c) = crashed;
    assert_eq!(phase(&pod), "Running");
    assert!(!ready(&pod) && !c.ready);
    let message = c.state.unwrap().waiting.unwrap().message.unwrap();
    assert!(
        message.starts_with("back-off") && message.contains("restarting failed container=app"),
        "{message}"
    );
    let last = c.last_state.unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));

    let pod = eventually("ImagePullBackOff", || async {
        let pods = pods_of(&client, "nopull").await;
        let p = pods.first()?;
        (waiting_reason(p).as_deref() == Some("ImagePullBackOff")).then(|| p.clone())
    })
    .await;
    assert_eq!(phase(&pod), "Pending");
    let message = pod.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .waiting
        .unwrap()
        .message
        .unwrap();
    assert_eq!(message, "Back-off pulling image \"example/app:pullfail\"");
    cluster.stop().await;
}

#[tokio::test]
async fn embedded_cluster_a_restarted_at_annotation_replaces_the_pod() {
    let (cluster, client) = cluster(&["node-a"]).await;
    let mut d = deployment("web", "nginx:1.27", "node-a", 1);
    apply_deployment(&client, &d).await;
    let first = running_pod(&client, "web").await.metadata.name.unwrap();

    let template_meta = d
        .spec
        .as_mut()
        .unwrap()
        .template
        .metadata
        .get_or_insert_default();
    template_meta.annotations = Some(BTreeMap::from([(
        "kubectl.kubernetes.io/restartedAt".to_string(),
        "2026-11-22T19:00:00Z".to_string(),
    )]));
    apply_deployment(&client, &d).await;
    let second = eventually("a new pod in place of the first", || async {
        let pods = pods_of(&client, "web").await;
        (pods.len() == 1 && pods[0].metadata.name.as_deref() != Some(&first) && ready(&pods[0]))
            .then(|| pods[0].clone())
    })
    .await;
    let annotations = second.metadata.annotations.unwrap();
    assert_eq!(
        annotations["kubectl.kubernetes.io/restartedAt"],
        "2026-11-22T19:00:00Z"
    );

    // Applying without the annotation removes it, as server-side apply does with fields
    // its manager no longer sets (and the template change replaces the pod again).
    let second = second.metadata.name.unwrap();
    let applied = apply_deployment(&client, &deployment("web", "nginx:1.27", "node-a", 1)).await;
    let template = applied.spec.unwrap().template.metadata.unwrap_or_default();
    assert!(
        !template
            .annotations
            .unwrap_or_default()
            .contains_key("kubectl.kubernetes.io/restartedAt"),
        "the dropped annotation is gone"
    );
    eventually("a third pod", || async {
        let pods = pods_of(&client, "web").await;
        (pods.len() == 1 && pods[0].metadata.name.as_deref() != Some(&second) && ready(&pods[0]))
            .then_some(())
    })
    .await;
    cluster.stop().await;
}

#[tokio::test]
async fn embedded_cluster_deletes_cascade_to_pods_and_namespace_contents() {
    let (cluster, client) = cluster(&["node-a"]).await;
    apply_deployment(&client, &deployment("api", "example/api:1", "node-a", 2)).await;
    eventually("two running pods", || async {
        let pods = pods_of(&client, "api").await;
        (pods.len() == 2 && pods.iter().all(ready)).then_some(())
    })
    .await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), NS);
    deployments
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();
    // The delete takes the pods along, and the kubelet makes no new ones.
    eventually("the pods gone with their deployment", || async {
        pods_of(&client, "api").await.is_empty().then_some(())
    })
    .await;
    assert!(deployments.get_opt("api").await.unwrap().is_none());

    // Deleting the namespace deletes everything in it.
    apply_deployment(&client, &deployment("api", "example/api:1", "node-a", 1)).await;
    let secret: Secret = from(json!({ "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "creds", "namespace": NS }, "stringData": { "password": "x" } }));
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    apply_object(&client, &secret).await;
    eventually("a pod", || async {
        (!pods_of(&client, "api").await.is_empty()).then_some(())
    })
    .await;
    Api::<Namespace>::all(client.clone())
        .delete(NS, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the pods gone with their namespace", || async {
        pods_of(&client, "api").await.is_empty().then_some(())
    })
    .await;
    assert!(secrets.get_opt("creds").await.unwrap().is_none());
    assert!(deployments.get_opt("api").await.unwrap().is_none());
    assert!(
        Api::<Namespace>::all(client.clone())
            .get_opt(NS)
            .await
            .unwrap()
            .is_none()
    );
    cluster.stop().await;
}

#[tokio::test]
async fn embedded_cluster_the_runtime_watcher_sees_a_pod_go_from_pending_to_running() {
    let (cluster, client) = cluster(&["node-a"]).await;
    // Something before the watcher starts: its list must carry a resourceVersion to resume from.
    apply_deployment(&client, &deployment("early", "nginx:1", "node-a", 1)).await;
    running_pod(&client, "early").await;

    let stream = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels("app=late"),
    );
    let mut stream = Box::pin(stream);
    // The initial (empty) list is done before the deployment appears.
    let mut seen_init_done = false;
    while !seen_init_done {
        match tokio::time::timeout(DEADLINE, stream.try_next()).await {
            Ok(Ok(Some(watcher::Event::InitDone))) => seen_init_done = true,
            Ok(Ok(Some(_))) => {}
            other => panic!("the watcher's initial list failed: {other:?}"),
        }
    }
    apply_deployment(&client, &deployment("late", "nginx:1", "node-a", 1)).await;
    let mut phases = Vec::new();
    loop {
        let event = tokio::time::timeout(DEADLINE, stream.try_next())
            .await
            .expect("a watch event in time")
            .expect("a watch event")
            .expect("the stream goes on");
        if let watcher::Event::Apply(pod) = event {
            assert_eq!(
                pod.metadata.labels.as_ref().unwrap()["app"],
                "late",
                "the label selector holds"
            );
            phases.push(phase(&pod));
            if phase(&pod) == "Running" && ready(&pod) {
                break;
            }
        }
    }
    assert_eq!(
        phases.first().map(String::as_str),
        Some("Pending"),
        "{phases:?}"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn embedded_cluster_a_watch_resumes_from_a_resource_version() {
    let (cluster, client) = cluster(&["node-a"]).await;
    let secrets = Api::<Secret>::namespaced(client.clone(), NS);
    let list = secrets.list(&ListParams::default()).await.unwrap();
    let from_rv = list.metadata.resource_version.unwrap();
    assert_ne!(
        from_rv, "1",
        "lists carry the store's current resourceVersion"
    );
    let secret = |name: &str| -> Secret {
        from(
            json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name, "namespace": NS } }),
        )
    };
    secrets
        .create(&PostParams::default(), &secret("one"))
        .await
        .unwrap();
    secrets
        .patch(
            "one",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "x": "y" } } })),
        )
        .await
        .unwrap();
    secrets
        .delete("one", &DeleteParams::default())
        .await
        .unwrap();

    // A watch from before those changes replays them, in order, then stops at its timeout.
    let events: Vec<_> = secrets
        .watch(&WatchParams::default().timeout(1), &from_rv)
        .await
        .unwrap()
        .collect()
        .await;
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match e.as_ref().unwrap() {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            WatchEvent::Bookmark(_) => "BOOKMARK",
            WatchEvent::Error(_) => "ERROR",
        })
        .collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    let rvs: Vec<u64> = events
        .iter()
        .filter_map(|e| match e.as_ref().unwrap() {
            WatchEvent::Added(s) | WatchEvent::Modified(s) | WatchEvent::Deleted(s) => {
                s.metadata.resource_version.as_ref()?.parse().ok()
            }
            _ => None,
        })
        .collect();
    assert!(
        rvs.windows(2).all(|w| w[0] < w[1]),
        "increasing resourceVersions: {rvs:?}"
    );

    // With a selector, leaving the selection is DELETED and entering it ADDED.
    let from_rv = secrets
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    secrets
        .create(&PostParams::default(), &secret("two"))
        .await
        .unwrap();
    for tier in ["a", "b", "a"] {
        let relabel = Patch::Merge(json!({ "metadata": { "labels": { "tier": tier } } }));
        secrets
            .patch("two", &PatchParams::default(), &relabel)
            .await
            .unwrap();
    }
    let kinds: Vec<String> = secrets
        .watch(
            &WatchParams::default().labels("tier=a").timeout(1),
            &from_rv,
        )
        .await
        .unwrap()
        .map(|e| match e.unwrap() {
            WatchEvent::Added(_) => "ADDED".to_string(),
            WatchEvent::Modified(_) => "MODIFIED".to_string(),
            WatchEvent::Deleted(_) => "DELETED".to_string(),
            other => format!("{other:?}"),
        })
        .collect()
        .await;
    assert_eq!(kinds, ["ADDED", "DELETED", "ADDED"]);
    cluster.stop().await;
}

#[tokio::test]
async fn embedded_cluster_pod_logs_tail_and_follow() {
    let (cluster, client) = cluster(&["node-a"]).await;
    apply_deployment(&client, &deployment("db", "postgres:16", "node-a", 1)).await;
    let name = eventually("a pod", || async {
        pods_of(&client, "db")
            .await
            .first()
            .and_then(|p| p.metadata.name.clone())
    })
    .await;
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    // Once running: the start lines, then health checks.
    running_pod(&client, "db").await;
    let all = pods.logs(&name, &LogParams::default()).await.unwrap();
    assert!(
        all.starts_with("Starting postgres:16\nListening on 0.0.0.0:5432\n"),
        "{all}"
    );
    let tail = pods
        .logs(
            &name,
            &LogParams {
                tail_lines: Some(1),
                timestamps: true,
                container: Some("app".into()),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(
        tail.starts_with("20") && tail.contains("Z "),
        "timestamped: {tail}"
    );

    let stream = pods
        .log_stream(
            &name,
            &LogParams {
                follow: true,
                tail_lines: Some(1),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    let mut lines = stream.lines();
    let first = tokio::time::timeout(DEADLINE, lines.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    // A new line arrives while following (the periodic health check).
    let next = tokio::time::timeout(DEADLINE, lines.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next, "GET /healthz 200");
    // Deleting the pod ends the stream.
    pods.delete(&name, &DeleteParams::default()).await.unwrap();
    let end = tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(_)) = lines.next().await {}
    })
    .await;
    assert!(end.is_ok(), "the log stream ends when its pod is deleted");

    let missing = pods.logs("nope", &LogParams::default()).await.unwrap_err();
    assert!(
        matches!(missing, kube::Error::Api(ref s) if s.code == 404),
        "{missing:?}"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn embedded_cluster_a_missing_node_leaves_the_pod_unschedulable_until_it_appears() {
    let (cluster, client) = cluster(&["node-a"]).await;
    apply_deployment(&client, &deployment("db", "postgres:16", "node-z", 1)).await;
    let pod = eventually("an Unschedulable pod", || async {
        let pods = pods_of(&client, "db").await;
        let p = pods.first()?;
        let c = p
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "PodScheduled")?
            .clone();
        (c.status == "False").then(|| (p.clone(), c))
    })
    .await;
    let (pod, condition) = pod;
    assert_eq!(phase(&pod), "Pending");
    assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));
    let message = condition.message.unwrap();
    assert!(message.starts_with("0/1 nodes are available"), "{message}");
    assert!(pod.spec.unwrap().node_name.is_none());

    // The node appears: the pod is bound to it and runs.
    let node: Node = from(json!({ "apiVersion": "v1", "kind": "Node",
        "metadata": { "name": "node-z", "labels": { "kubernetes.io/hostname": "node-z" } } }));
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
    let pod = running_pod(&client, "db").await;
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("node-z"));
    cluster.stop().await;
}

#[tokio::test]
async fn embedded_cluster_stores_every_kind_the_adapter_writes_and_answers_errors_with_status() {
    let (cluster, client) = cluster(&["node-a"]).await;
    let labels = json!({ "app.kubernetes.io/managed-by": "podium", "podium.io/instance": "i1" });
    let meta = |name: &str| json!({ "name": name, "namespace": NS, "labels": labels });
    let pvc: PersistentVolumeClaim = from(
        json!({ "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta("data"),
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "10Gi" } } } }),
    );
    let svc: Service = from(
        json!({ "apiVersion": "v1", "kind": "Service", "metadata": meta("db"),
        "spec": { "selector": { "app": "db" }, "ports": [{ "port": 5432, "targetPort": 5432 }] } }),
    );
    let ingress: Ingress = from(
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta("db"),
        "spec": { "rules": [{ "host": "db.example.test", "http": { "paths": [{ "path": "/", "pathType": "Prefix",
            "backend": { "service": { "name": "db", "port": { "number": 5432 } } } }] } }] } }),
    );
    let policy: NetworkPolicy = from(
        json!({ "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta("isolate"),
        "spec": { "podSelector": {}, "policyTypes": ["Ingress"] } }),
    );
    let secret: Secret = from(
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": meta("creds"),
        "stringData": { "password": "s3cret" } }),
    );
    apply_object(&client, &pvc).await;
    apply_object(&client, &svc).await;
    apply_object(&client, &ingress).await;
    apply_object(&client, &policy).await;
    apply_object(&client, &secret).await;

    let selector =
        ListParams::default().labels("podium.io/instance=i1,app.kubernetes.io/managed-by");
    assert_eq!(
        Api::<Service>::namespaced(client.clone(), NS)
            .list(&selector)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        Api::<Ingress>::all(client.clone())
            .list(&selector)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        Api::<NetworkPolicy>::namespaced(client.clone(), NS)
            .list(&selector)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let other = ListParams::default().labels("podium.io/instance!=i1");
    assert!(
        Api::<Secret>::namespaced(client.clone(), NS)
            .list(&other)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let ns = Api::<Namespace>::all(client.clone()).get(NS).await.unwrap();
    eventually("the namespace Active and the claim Bound", || async {
        let ns = Api::<Namespace>::all(client.clone()).get(NS).await.ok()?;
        let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS)
            .get("data")
            .await
            .ok()?;
        (ns.status?.phase.as_deref() == Some("Active")
            && pvc.status?.phase.as_deref() == Some("Bound"))
        .then_some(())
    })
    .await;
    assert_eq!(ns.metadata.name.as_deref(), Some(NS));

    // Errors are Kubernetes Status objects with the right codes.
    let code = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("not a Status error: {other:?}"),
    };
    let missing_ns: Secret = from(
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "x", "namespace": "nowhere" } }),
    );
    let err = Api::<Secret>::namespaced(client.clone(), "nowhere")
        .create(&PostParams::default(), &missing_ns)
        .await
        .unwrap_err();
    assert_eq!(code(err), (404, "NotFound".to_string()));
    let bad: Secret =
        from(json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "Bad_Name" } }));
    let err = Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert_eq!(code(err), (422, "Invalid".to_string()));
    let err = Api::<Secret>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap_err();
    assert_eq!(code(err).0, 409);
    let err = Api::<Pod>::namespaced(client.clone(), NS)
        .get("nope")
        .await
        .unwrap_err();
    assert_eq!(code(err), (404, "NotFound".to_string()));

    // Paths it does not serve: a Status, not a crash.
    let http = reqwest::Client::new();
    for (method, path, want) in [
        ("GET", "/apis/example.com/v1/namespaces/x/widgets", 404),
        ("GET", "/api/v1/namespaces/x/pods/p/exec", 404),
        ("GET", "/nonsense", 404),
        ("OPTIONS", "/api/v1/pods", 405),
        ("PUT", "/api/v1/pods", 405),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("{}{path}", cluster.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["kind"], "Status", "{method} {path}: {body}");
        assert_eq!(body["code"], want);
    }
    cluster.stop().await;
}

#[tokio::test]
async fn embedded_cluster_scale_subresource_and_cordoned_nodes() {
    let (cluster, client) = cluster(&["node-a"]).await;
    apply_deployment(&client, &deployment("db", "postgres:16", "node-a", 1)).await;
    running_pod(&client, "db").await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), NS);
    let scale = deployments.get_scale("db").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=db"));
    let zero = Patch::Merge(json!({ "spec": { "replicas": 0 } }));
    deployments
        .patch_scale("db", &PatchParams::default(), &zero)
        .await
        .unwrap();
    eventually("no pods after scaling to 0", || async {
        pods_of(&client, "db").await.is_empty().then_some(())
    })
    .await;

    // A cordoned node takes no new pods (and carries the unschedulable taint).
    let nodes = Api::<Node>::all(client.clone());
    let cordon = |on: bool| Patch::Merge(json!({ "spec": { "unschedulable": on } }));
    nodes
        .patch("node-a", &PatchParams::default(), &cordon(true))
        .await
        .unwrap();
    eventually("the unschedulable taint", || async {
        let taints = nodes.get("node-a").await.ok()?.spec?.taints?;
        taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unschedulable" && t.effect == "NoSchedule")
            .then_some(())
    })
    .await;
    let one = Patch::Merge(json!({ "spec": { "replicas": 1 } }));
    deployments
        .patch_scale("db", &PatchParams::default(), &one)
        .await
        .unwrap();
    let message = eventually("an Unschedulable pod on the cordoned node", || async {
        let pods = pods_of(&client, "db").await;
        let c = pods
            .first()?
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "PodScheduled")?
            .clone();
        (c.status == "False").then(|| c.message.unwrap_or_default())
    })
    .await;
    assert!(
        message.contains("1 node(s) were unschedulable"),
        "{message}"
    );
    nodes
        .patch("node-a", &PatchParams::default(), &cordon(false))
        .await
        .unwrap();
    running_pod(&client, "db").await;
    assert!(
        nodes
            .get("node-a")
            .await
            .unwrap()
            .spec
            .unwrap()
            .taints
            .unwrap_or_default()
            .is_empty()
    );
    cluster.stop().await;
}
