//! Request-shape tests: the adapter talks to a mock API server (tower-test) that checks
//! each request it receives, in order: method, path and query (field manager, force),
//! content type and the whole body, so a change in what Podium sends to a cluster fails
//! here. The expected bodies are written out in full on purpose: they are what a real API
//! server receives.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use chrono::TimeZone;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::cluster::Cluster;
use super::objects::{ClusterOptions, InstanceSpec};
use super::reconcile::spec_of;
use crate::instances::model::{DesiredState, InstanceStatus, Workload};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
type Reply = tower_test::mock::SendResponse<Response<Body>>;

/// A scenario missing a request fails after this instead of hanging.
const TIMEOUT: Duration = Duration::from_secs(20);

const INSTANCE: Uuid = Uuid::from_u128(0x1111_1111_1111_4111_8111_1111_1111_1111);
const SUBSCRIPTION: Uuid = Uuid::from_u128(0x2222_2222_2222_4222_8222_2222_2222_2222);
const USER: Uuid = Uuid::from_u128(0x3333_3333_3333_4333_8333_3333_3333_3333);
const NS: &str = "podium-u-33333333333343338333333333333333";
const NAME: &str = "i-blog-k3x9q2";
const HOST: &str = "blog-k3x9q2.apps.example.com";
/// What every server-side apply must carry: Podium's field manager, forced (Podium owns
/// these objects and takes fields over from whoever changed them by hand).
const APPLY: &str = "?&force=true&fieldManager=podium";
const APPLY_CONTENT_TYPE: &str = "application/apply-patch+yaml";

fn options() -> ClusterOptions {
    ClusterOptions {
        ingress_class: Some("nginx".into()),
        cluster_issuer: "letsencrypt".into(),
        storage_class: Some("local-path".into()),
        ingress_namespace: "ingress-nginx".into(),
    }
}

/// A ghost instance on the Basic plan, placed on worker-jkt-1, as the reconciler sees it.
fn workload(desired: DesiredState) -> Workload {
    Workload {
        id: INSTANCE,
        subscription_id: SUBSCRIPTION,
        user_id: USER,
        namespace: NS.into(),
        subdomain: "blog-k3x9q2".into(),
        public_url: Some(format!("https://{HOST}")),
        desired_state: desired,
        status: InstanceStatus::Running,
        restarted_at: None,
        generation: 0,
        credentials: None,
        node_id: Some(Uuid::from_u128(7)),
        node_name: Some("worker-jkt-1".into()),
        service_slug: "ghost".into(),
        image: "ghost:5.96-alpine".into(),
        container_port: 2368,
        volume_mount_path: Some("/var/lib/ghost/content".into()),
        env_template: json!({
            "url": "https://${host}",
            "NODE_ENV": "production",
            "ADMIN_KEY": "${secret:24}",
        }),
        cpu_milli: 500,
        memory_mb: 512,
        storage_gb: 5,
    }
}

fn spec(desired: DesiredState, existing: Option<&BTreeMap<String, String>>) -> InstanceSpec {
    spec_of(&workload(desired), "worker-jkt-1".into(), existing)
}

fn mock_cluster() -> (Cluster, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    (Cluster::new(client, options()), handle)
}

/// Runs the adapter's side against the mock server's scenario. The adapter's future owns
/// the client: once it is done the client is gone, so a scenario still waiting for a
/// request fails at once ("no request") rather than at the timeout. A failed assertion in
/// the scenario is re-raised here with its own message.
async fn run<T>(adapter: impl Future<Output = T>, scenario: JoinHandle<()>) -> T {
    tokio::time::timeout(TIMEOUT, async {
        let out = adapter.await;
        if let Err(e) = scenario.await {
            std::panic::resume_unwind(e.into_panic());
        }
        out
    })
    .await
    .expect("the scenario timed out: a request it expects never came")
}

/// The labels every namespaced object of the instance carries.
fn labels() -> Value {
    json!({
        "app.kubernetes.io/name": "ghost",
        "app.kubernetes.io/instance": NAME,
        "app.kubernetes.io/component": "app",
        "app.kubernetes.io/part-of": "podium",
        "app.kubernetes.io/managed-by": "podium",
        "podium.io/instance-id": INSTANCE.to_string(),
        "podium.io/subscription-id": SUBSCRIPTION.to_string(),
        "podium.io/user-id": USER.to_string(),
    })
}

fn metadata() -> Value {
    json!({ "name": NAME, "namespace": NS, "labels": labels() })
}

fn selector() -> Value {
    json!({ "app.kubernetes.io/instance": NAME, "podium.io/instance-id": INSTANCE.to_string() })
}

fn expected_namespace() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": { "name": NS, "labels": {
            "app.kubernetes.io/managed-by": "podium",
            "app.kubernetes.io/part-of": "podium",
            "podium.io/user-id": USER.to_string(),
        } },
    })
}

/// The Secret without its data (checked on its own: it holds a generated credential).
fn expected_secret() -> Value {
    json!({ "apiVersion": "v1", "kind": "Secret", "metadata": metadata(), "type": "Opaque" })
}

fn expected_claim(size: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": metadata(),
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "local-path",
            "resources": { "requests": { "storage": size } },
        },
    })
}

fn expected_deployment(replicas: i32) -> Value {
    let resources = json!({ "cpu": "500m", "memory": "512Mi" });
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(),
        "spec": {
            "replicas": replicas,
            "strategy": { "type": "Recreate" },
            "selector": { "matchLabels": selector() },
            "template": {
                "metadata": { "labels": labels() },
                "spec": {
                    "containers": [{
                        "name": "app",
                        "image": "ghost:5.96-alpine",
                        "ports": [{ "name": "http", "containerPort": 2368, "protocol": "TCP" }],
                        "envFrom": [{ "secretRef": { "name": NAME } }],
                        "resources": { "requests": resources, "limits": resources },
                        "readinessProbe": {
                            "tcpSocket": { "port": "http" },
                            "initialDelaySeconds": 5, "periodSeconds": 10, "failureThreshold": 3,
                        },
                        "livenessProbe": {
                            "tcpSocket": { "port": "http" },
                            "initialDelaySeconds": 60, "periodSeconds": 20, "failureThreshold": 6,
                        },
                        "volumeMounts": [{ "name": "data", "mountPath": "/var/lib/ghost/content" }],
                    }],
                    "nodeSelector": { "kubernetes.io/hostname": "worker-jkt-1" },
                    "automountServiceAccountToken": false,
                    "enableServiceLinks": false,
                    "volumes": [{ "name": "data", "persistentVolumeClaim": { "claimName": NAME } }],
                },
            },
        },
    })
}

fn expected_service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": metadata(),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(),
            "ports": [{ "name": "http", "port": 80, "targetPort": "http", "protocol": "TCP" }],
        },
    })
}

fn expected_ingress() -> Value {
    let mut meta = metadata();
    meta["annotations"] = json!({ "cert-manager.io/cluster-issuer": "letsencrypt" });
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": meta,
        "spec": {
            "ingressClassName": "nginx",
            "tls": [{ "hosts": [HOST], "secretName": format!("{NAME}-tls") }],
            "rules": [{
                "host": HOST,
                "http": { "paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": { "service": { "name": NAME, "port": { "name": "http" } } },
                }] },
            }],
        },
    })
}

fn expected_network_policy() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(),
        "spec": {
            "podSelector": { "matchLabels": selector() },
            "policyTypes": ["Ingress"],
            "ingress": [{ "from": [
                { "namespaceSelector": { "matchLabels": {
                    "kubernetes.io/metadata.name": "ingress-nginx" } } },
                { "podSelector": {} },
            ] }],
        },
    })
}

fn status(code: u16, reason: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": if code < 400 { "Success" } else { "Failure" },
        "reason": reason, "code": code,
        "message": format!("{reason} ({code})"),
    })
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

/// The mock API server's side of a scenario.
struct Server {
    handle: Handle,
}

impl Server {
    /// The next request: its method, path with query, content type and JSON body.
    async fn next(&mut self, what: &str) -> (String, String, Option<String>, Value, Reply) {
        let (request, reply) =
            self.handle.next_request().await.unwrap_or_else(|| {
                panic!("expected {what}, but the adapter sent no more requests")
            });
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("a request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{what}: body is not JSON: {e}"))
        };
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        (
            parts.method.to_string(),
            parts.uri.to_string(),
            content_type,
            body,
            reply,
        )
    }

    /// A server-side apply of `expected` at `path`: answered with the object as stored.
    /// Returns the body it carried.
    async fn apply(&mut self, path: &str, expected: &Value) -> Value {
        let what = format!("the apply of {path}");
        let (method, uri, content_type, body, reply) = self.next(&what).await;
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("PATCH", format!("{path}{APPLY}").as_str()),
            "{what}"
        );
        assert_eq!(content_type.as_deref(), Some(APPLY_CONTENT_TYPE), "{what}");
        let mut compared = body.clone();
        if body["kind"] == "Secret" {
            compared.as_object_mut().unwrap().remove("data");
        }
        assert!(
            compared == *expected,
            "{what}: the body differs\n--- sent:\n{}\n--- expected:\n{}",
            pretty(&compared),
            pretty(expected)
        );
        let mut stored = body.clone();
        stored["metadata"]["uid"] = json!(Uuid::new_v4().to_string());
        stored["metadata"]["resourceVersion"] = json!("1001");
        reply.send_response(json_response(StatusCode::OK, &stored));
        body
    }

    /// A GET of `path`, answered with `found` or a 404.
    /// The last three applies of every pass: Service, Ingress, NetworkPolicy, in that order.
    async fn apply_network(&mut self) {
        self.apply(&path(SERVICES), &expected_service()).await;
        self.apply(&path(INGRESSES), &expected_ingress()).await;
        self.apply(&path(POLICIES), &expected_network_policy())
            .await;
    }

    async fn get(&mut self, path: &str, found: Option<Value>) {
        let what = format!("GET {path}");
        let (method, uri, _, body, reply) = self.next(&what).await;
        assert_eq!((method.as_str(), uri.as_str()), ("GET", path), "{what}");
        assert_eq!(body, Value::Null, "{what}: a GET has no body");
        reply.send_response(match found {
            Some(object) => json_response(StatusCode::OK, &object),
            None => json_response(StatusCode::NOT_FOUND, &status(404, "NotFound")),
        });
    }

    /// A DELETE of `path` with background propagation, answered 200 or, when `gone`, 404.
    async fn delete(&mut self, path: &str, gone: bool) {
        let what = format!("DELETE {path}");
        let (method, uri, content_type, body, reply) = self.next(&what).await;
        assert_eq!(
            (method.as_str(), uri.as_str()),
            ("DELETE", format!("{path}?").as_str()),
            "{what}"
        );
        assert_eq!(content_type.as_deref(), Some("application/json"), "{what}");
        assert_eq!(body, json!({ "propagationPolicy": "Background" }), "{what}");
        reply.send_response(if gone {
            json_response(StatusCode::NOT_FOUND, &status(404, "NotFound"))
        } else {
            json_response(StatusCode::OK, &status(200, "Deleted"))
        });
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn path(kind_path: &str) -> String {
    format!("{kind_path}/{NAME}")
}

const SECRETS: &str = "/api/v1/namespaces/podium-u-33333333333343338333333333333333/secrets";
const CLAIMS: &str =
    "/api/v1/namespaces/podium-u-33333333333343338333333333333333/persistentvolumeclaims";
const DEPLOYMENTS: &str =
    "/apis/apps/v1/namespaces/podium-u-33333333333343338333333333333333/deployments";
const SERVICES: &str = "/api/v1/namespaces/podium-u-33333333333343338333333333333333/services";
const INGRESSES: &str =
    "/apis/networking.k8s.io/v1/namespaces/podium-u-33333333333343338333333333333333/ingresses";
const POLICIES: &str = "/apis/networking.k8s.io/v1/namespaces/podium-u-33333333333343338333333333333333/networkpolicies";

/// The Secret's data, decoded.
fn secret_data(body: &Value) -> BTreeMap<String, String> {
    body["data"]
        .as_object()
        .expect("the Secret has data")
        .iter()
        .map(|(k, v)| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().expect("base64 text"))
                .expect("valid base64");
            (k.clone(), String::from_utf8(bytes).unwrap())
        })
        .collect()
}

/// The first reconcile of an instance: its Secret is read (none yet, so credentials are
/// generated), then every object is applied in order, the claim after a GET (404: new).
#[tokio::test]
async fn shapes_create_applies_every_object_in_order() {
    let (cluster, handle) = mock_cluster();
    let scenario = tokio::spawn(async move {
        let mut s = Server { handle };
        s.get(&path(SECRETS), None).await;
        s.apply(&format!("/api/v1/namespaces/{NS}"), &expected_namespace())
            .await;
        let secret = s.apply(&path(SECRETS), &expected_secret()).await;
        let data = secret_data(&secret);
        assert_eq!(
            data.keys().map(String::as_str).collect::<Vec<_>>(),
            ["ADMIN_KEY", "NODE_ENV", "url"]
        );
        assert_eq!(data["url"], format!("https://{HOST}"));
        assert_eq!(data["NODE_ENV"], "production");
        let key = &data["ADMIN_KEY"];
        assert!(
            key.len() == 24 && key.chars().all(|c| c.is_ascii_alphanumeric()),
            "a generated credential: {key:?}"
        );
        s.get(&path(CLAIMS), None).await;
        s.apply(&path(CLAIMS), &expected_claim("5Gi")).await;
        s.apply(&path(DEPLOYMENTS), &expected_deployment(1)).await;
        s.apply_network().await;
    });
    run(
        async move {
            let existing = cluster.secret_values(NS, NAME).await.expect("read secret");
            assert_eq!(existing, None);
            let spec = spec(DesiredState::Running, existing.as_ref());
            assert_eq!(spec.replicas, 1);
            cluster.apply(&spec).await.expect("apply");
        },
        scenario,
    )
    .await;
}

/// Stopping is the same apply with 0 replicas: the Deployment's template is unchanged (no
/// rollout), the generated credential read back from the Secret is sent again unchanged,
/// and the volume (its data) stays.
#[tokio::test]
async fn shapes_stop_applies_zero_replicas_with_the_same_template() {
    let (cluster, handle) = mock_cluster();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let stored_secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": metadata(), "type": "Opaque",
        "data": {
            "ADMIN_KEY": b64("Kept0Kept1Kept2Kept3Kept"),
            "NODE_ENV": b64("production"),
            "url": b64(&format!("https://{HOST}")),
        },
    });
    let stored_claim = expected_claim("5Gi");
    let scenario = tokio::spawn(async move {
        let mut s = Server { handle };
        s.get(&path(SECRETS), Some(stored_secret)).await;
        s.apply(&format!("/api/v1/namespaces/{NS}"), &expected_namespace())
            .await;
        let secret = s.apply(&path(SECRETS), &expected_secret()).await;
        assert_eq!(
            secret_data(&secret)["ADMIN_KEY"],
            "Kept0Kept1Kept2Kept3Kept"
        );
        s.get(&path(CLAIMS), Some(stored_claim)).await;
        s.apply(&path(CLAIMS), &expected_claim("5Gi")).await;
        let deployment = s.apply(&path(DEPLOYMENTS), &expected_deployment(0)).await;
        assert_eq!(deployment["spec"]["replicas"], 0);
        assert_eq!(
            deployment["spec"]["template"],
            expected_deployment(1)["spec"]["template"],
            "stopping does not touch the pod template"
        );
        s.apply_network().await;
    });
    run(
        async move {
            let existing = cluster.secret_values(NS, NAME).await.expect("read secret");
            let spec = spec(DesiredState::Stopped, existing.as_ref());
            assert_eq!(spec.replicas, 0);
            cluster.apply(&spec).await.expect("apply");
        },
        scenario,
    )
    .await;
}

/// A restart is the same apply with the restartedAt annotation on the pod template (a
/// rollout); replicas stay at 1.
#[tokio::test]
async fn shapes_restart_annotates_the_pod_template() {
    let (cluster, handle) = mock_cluster();
    let at = chrono::Utc
        .with_ymd_and_hms(2026, 11, 22, 19, 30, 0)
        .unwrap();
    let scenario = tokio::spawn(async move {
        let mut s = Server { handle };
        s.apply(&format!("/api/v1/namespaces/{NS}"), &expected_namespace())
            .await;
        s.apply(&path(SECRETS), &expected_secret()).await;
        s.get(&path(CLAIMS), Some(expected_claim("5Gi"))).await;
        s.apply(&path(CLAIMS), &expected_claim("5Gi")).await;
        let mut expected = expected_deployment(1);
        expected["spec"]["template"]["metadata"]["annotations"] =
            json!({ "kubectl.kubernetes.io/restartedAt": "2026-11-22T19:30:00+00:00" });
        s.apply(&path(DEPLOYMENTS), &expected).await;
        s.apply_network().await;
    });
    run(
        async move {
            let mut w = workload(DesiredState::Running);
            w.restarted_at = Some(at);
            cluster
                .apply(&spec_of(&w, "worker-jkt-1".into(), None))
                .await
                .expect("apply");
        },
        scenario,
    )
    .await;
}

/// A volume only grows: on a smaller plan the claim keeps the size the cluster has
/// (shrinking a claim is refused by Kubernetes).
#[tokio::test]
async fn shapes_a_claim_keeps_a_bigger_size() {
    let (cluster, handle) = mock_cluster();
    let scenario = tokio::spawn(async move {
        let mut s = Server { handle };
        s.apply(&format!("/api/v1/namespaces/{NS}"), &expected_namespace())
            .await;
        s.apply(&path(SECRETS), &expected_secret()).await;
        s.get(&path(CLAIMS), Some(expected_claim("20Gi"))).await;
        s.apply(&path(CLAIMS), &expected_claim("20Gi")).await;
        s.apply(&path(DEPLOYMENTS), &expected_deployment(1)).await;
        s.apply_network().await;
    });
    run(
        async move {
            cluster
                .apply(&spec(DesiredState::Running, None))
                .await
                .expect("apply");
        },
        scenario,
    )
    .await;
}

/// Deleting removes the six objects in order, the app first and its data last, each with
/// background propagation (its pods go too); one already gone (404) is not an error.
#[tokio::test]
async fn shapes_delete_removes_six_objects_in_order() {
    let (cluster, handle) = mock_cluster();
    let scenario = tokio::spawn(async move {
        let mut s = Server { handle };
        s.delete(&path(DEPLOYMENTS), false).await;
        s.delete(&path(POLICIES), false).await;
        s.delete(&path(INGRESSES), true).await;
        s.delete(&path(SERVICES), false).await;
        s.delete(&path(CLAIMS), false).await;
        s.delete(&path(SECRETS), false).await;
    });
    let any = run(
        async move { cluster.delete(NS, NAME).await.expect("delete") },
        scenario,
    )
    .await;
    assert!(any, "objects were still there");
}

/// Deleting again once everything is gone: every DELETE is a 404, and nothing was left.
#[tokio::test]
async fn shapes_delete_of_nothing_reports_nothing() {
    let (cluster, handle) = mock_cluster();
    let scenario = tokio::spawn(async move {
        let mut s = Server { handle };
        for kind in [DEPLOYMENTS, POLICIES, INGRESSES, SERVICES, CLAIMS, SECRETS] {
            s.delete(&path(kind), true).await;
        }
    });
    let any = run(
        async move { cluster.delete(NS, NAME).await.expect("delete") },
        scenario,
    )
    .await;
    assert!(!any, "nothing was there");
}

/// Any other error while deleting stops the deletion (it is retried as a whole).
#[tokio::test]
async fn shapes_delete_fails_on_a_server_error() {
    let (cluster, handle) = mock_cluster();
    let scenario = tokio::spawn(async move {
        let mut s = Server { handle };
        s.delete(&path(DEPLOYMENTS), false).await;
        let (method, uri, _, _, reply) = s.next("DELETE of the NetworkPolicy").await;
        assert_eq!(
            (method.as_str(), uri),
            ("DELETE", format!("{}?", path(POLICIES)))
        );
        reply.send_response(json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &status(500, "InternalError"),
        ));
    });
    let result = run(async move { cluster.delete(NS, NAME).await }, scenario).await;
    match result {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 500),
        other => panic!("expected the server error, got {other:?}"),
    }
}
