//! Instances end to end against the embedded Kubernetes stand-in, reached by the real
//! kube client over HTTP: placement, provisioning, live status over WebSocket, stop, start,
//! restart, failures, billing's suspension and expiry, drain, logs, credentials, and who
//! may do what.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

use crate::billing::{funded_user, plan_id, subscribe};
use crate::helpers::*;
use crate::subscriptions::{Ws, connect, recv, send};

pub const INSTANCE: &str = "query($id: ID!) { serviceInstance(id: $id) {
    id name status statusMessage desiredState url subdomain node { name region } } }";
const STATUS_EVENTS: &str = "subscription($id: ID) { instanceStatusChanged(instanceId: $id) {
    previousStatus status message at instance { id status desiredState } } }";
const REGISTER: &str = "mutation($name: String!, $cpu: Int!) { registerWorkerNode(input: {name: $name,
    hostname: \"w.internal\", ipAddress: \"10.0.0.9\", cpuCores: $cpu, memoryMb: 16384, storageMb: 200000}) {
    nodeToken node { id } } }";
const HEARTBEAT: &str = "mutation { nodeHeartbeat(input: {isReady: true}) { status } }";

/// A worker node that reports ready (ACTIVE); returns its id.
pub async fn ready_node(app: &TestApp, admin: &Session, name: &str, cpu: i32) -> String {
    let r = app
        .gql(
            Some(&admin.access),
            REGISTER,
            json!({ "name": name, "cpu": cpu }),
        )
        .await
        .ok();
    let token = r.str("registerWorkerNode.nodeToken");
    let id = r.str("registerWorkerNode.node.id");
    app.gql(Some(&token), HEARTBEAT, json!({})).await.ok();
    eventually("the node is ACTIVE", || async {
        app.gql(
            Some(&admin.access),
            "query($id: ID!) { workerNode(id: $id) { status } }",
            json!({ "id": id }),
        )
        .await
        .ok()
        .str("workerNode.status")
            == "ACTIVE"
    })
    .await;
    id
}

/// A funded customer subscribed to a plan of `service`; returns (customer,
/// subscription id, instance id).
/// Subscribes `user` to `plan` with an instance called `name`: (subscription id, instance id).
pub async fn subscribed_ids(
    app: &TestApp,
    user: &Session,
    plan: &str,
    name: &str,
) -> (String, String) {
    let r = subscribe(app, user, plan, name).await.ok();
    (
        r.str("subscribe.subscription.id"),
        r.str("subscribe.instance.id"),
    )
}

pub async fn customer_with_instance(
    app: &TestApp,
    admin: &Session,
    service: &str,
    plan: &str,
) -> (Session, String, String) {
    let user = funded_user(app, admin, "owner", "500000").await;
    let plan = plan_id(app, service, plan).await;
    let (sub, id) = subscribed_ids(app, &user, &plan, &format!("my {service}")).await;
    (user, sub, id)
}

pub async fn instance(app: &TestApp, s: &Session, id: &str) -> Value {
    app.gql(Some(&s.access), INSTANCE, json!({ "id": id }))
        .await
        .ok()
        .data("serviceInstance")
        .clone()
}

/// Waits (20 s at most) for the instance to reach `status`; returns it then.
pub async fn wait_status(app: &TestApp, s: &Session, id: &str, status: &str) -> Value {
    let mut last = Value::Null;
    let reached = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            last = instance(app, s, id).await;
            if last["status"] == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "never {status}; last seen {last}");
    last
}

/// The namespace and object name of an instance, from the instance as the API shows it.
fn names(s: &Session, i: &Value) -> (String, String) {
    let ns = format!(
        "podium-u-{}",
        s.user_id.parse::<uuid::Uuid>().unwrap().simple()
    );
    (
        ns,
        podium::provisioner::objects::object_name(i["subdomain"].as_str().unwrap()),
    )
}

fn kube(app: &TestApp) -> kube::Client {
    app.state
        .cluster
        .as_ref()
        .expect("a cluster")
        .client()
        .clone()
}

/// The Deployment's replica count in the (embedded) cluster, if it exists.
async fn replicas(app: &TestApp, ns: &str, name: &str) -> Option<i32> {
    Api::<Deployment>::namespaced(kube(app), ns)
        .get_opt(name)
        .await
        .unwrap()
        .map(|d| d.spec.unwrap().replicas.unwrap_or(1))
}

async fn pods(app: &TestApp, ns: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(kube(app), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

/// Cancels a subscription now: its instance is deleted.
async fn cancel_now(app: &TestApp, s: &Session, subscription: &str) -> Gql {
    app.gql(
        Some(&s.access),
        "mutation($id: ID!) { cancelSubscription(id: $id, atPeriodEnd: false) { status } }",
        json!({ "id": subscription }),
    )
    .await
}

/// `startInstance`, `stopInstance` or `restartInstance`.
async fn operate(app: &TestApp, s: &Session, operation: &str, id: &str) -> Gql {
    app.gql(
        Some(&s.access),
        &format!("mutation($id: ID!) {{ {operation}(id: $id) {{ id status desiredState }} }}"),
        json!({ "id": id }),
    )
    .await
}

const LOG_LINES: &str =
    "subscription($id: ID!, $tail: Int) { instanceLogLines(instanceId: $id, tailLines: $tail) }";

/// A signed-in `graphql-transport-ws` socket with one subscription (id "1") started.
async fn subscribed(app: &TestApp, token: &str, query: &str, variables: Value) -> Ws {
    let mut ws = connect(app, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } })).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": { "query": query, "variables": variables } })).await;
    ws
}

/// Opens a socket and subscribes to status events (of one instance, or all the caller's).
async fn status_events(app: &TestApp, s: &Session, protocol: &str, id: Option<&str>) -> Ws {
    let before = app.state.events.subscribers();
    let mut ws = connect(app, protocol).await;
    send(&mut ws, json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", s.access) } })).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    let start = if protocol == "graphql-ws" {
        "start"
    } else {
        "subscribe"
    };
    send(&mut ws, json!({ "id": "1", "type": start, "payload": { "query": STATUS_EVENTS, "variables": { "id": id } } })).await;
    eventually("the subscriber listens", || async {
        app.state.events.subscribers() > before
    })
    .await;
    ws
}

/// Reads status events until one with `status`; returns every event read.
async fn events_until(ws: &mut Ws, status: &str) -> Vec<Value> {
    let mut seen = vec![];
    loop {
        let m = recv(ws).await;
        let e = m["payload"]["data"]["instanceStatusChanged"].clone();
        assert!(!e.is_null(), "not a status event: {m}");
        seen.push(e.clone());
        if e["status"] == status {
            return seen;
        }
    }
}

fn statuses(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect()
}

/// Each event continues from the one before.
fn assert_chained(events: &[Value], from: &str) {
    let mut previous = from.to_string();
    for e in events {
        assert_eq!(e["previousStatus"], previous.as_str(), "{events:#?}");
        previous = e["status"].as_str().unwrap().to_string();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribing_brings_provisioning_then_running_over_a_websocket_and_stop_scales_to_zero() {
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let app = spawn_app().await;
        let admin = app.admin().await;
        ready_node(&app, &admin, "node-a", 8).await;
        let user = funded_user(&app, &admin, "watcher", "100000").await;
        let mut ws = status_events(&app, &user, protocol, None).await;
        let plan = plan_id(&app, "n8n", "Basic").await;
        let r = subscribe(&app, &user, &plan, "flows").await.ok();
        assert_eq!(r.str("subscribe.instance.status"), "PENDING");
        let id = r.str("subscribe.instance.id");

        let events = events_until(&mut ws, "RUNNING").await;
        assert_eq!(
            statuses(&events),
            ["PROVISIONING", "RUNNING"],
            "{protocol}: {events:#?}"
        );
        assert_chained(&events, "PENDING");
        assert_eq!(events[1]["instance"]["id"], id.as_str());
        assert!(
            events[1]["message"]
                .as_str()
                .unwrap()
                .starts_with("running at https://flows-"),
            "{events:#?}"
        );

        // The same over HTTP, with the node it landed on.
        let i = instance(&app, &user, &id).await;
        assert_eq!(i["status"], "RUNNING");
        assert_eq!(i["node"]["name"], "node-a");
        let (ns, name) = names(&user, &i);
        assert_eq!(replicas(&app, &ns, &name).await, Some(1));

        let stopped = operate(&app, &user, "stopInstance", &id).await.ok();
        assert_eq!(stopped.str("stopInstance.desiredState"), "STOPPED");
        let events = events_until(&mut ws, "STOPPED").await;
        assert_chained(&events, "RUNNING");
        assert_eq!(replicas(&app, &ns, &name).await, Some(0), "scaled to zero");
        assert!(pods(&app, &ns).await.is_empty());
        let claim = Api::<PersistentVolumeClaim>::namespaced(kube(&app), &ns)
            .get_opt(&name)
            .await
            .unwrap();
        assert!(claim.is_some(), "stopping keeps the data");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn start_and_restart_bring_it_back_with_a_fresh_pod() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    ready_node(&app, &admin, "node-a", 8).await;
    let (user, _, id) = customer_with_instance(&app, &admin, "ghost", "Basic").await;
    let i = wait_status(&app, &user, &id, "RUNNING").await;
    let (ns, name) = names(&user, &i);
    let first_pod = pods(&app, &ns).await[0].metadata.name.clone();

    let op = |m: &'static str| {
        let (app, user, id) = (&app, &user, id.clone());
        async move {
            app.gql(
                Some(&user.access),
                &format!("mutation($id: ID!) {{ {m}(id: $id) {{ status desiredState }} }}"),
                json!({ "id": id }),
            )
            .await
        }
    };
    let restarted = op("restartInstance").await.ok();
    assert_eq!(restarted.str("restartInstance.status"), "RESTARTING");
    wait_status(&app, &user, &id, "RUNNING").await;
    let after = pods(&app, &ns).await;
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].metadata.name, first_pod, "a new pod");
    assert!(
        after[0]
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("kubectl.kubernetes.io/restartedAt"))
    );

    op("stopInstance").await.ok();
    wait_status(&app, &user, &id, "STOPPED").await;
    assert_eq!(
        op("restartInstance").await.code(),
        "CONFLICT",
        "a stopped instance is started, not restarted"
    );
    op("startInstance").await.ok();
    wait_status(&app, &user, &id, "RUNNING").await;
    assert_eq!(replicas(&app, &ns, &name).await, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_looping_or_unpullable_image_ends_failed_with_a_readable_message() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    ready_node(&app, &admin, "node-a", 16).await;
    for (slug, tag, expected) in [
        ("ghost", "crashloop", "the app keeps crashing"),
        ("gitea", "pullfail", "could not be pulled"),
    ] {
        let service = app
            .gql(
                None,
                "query($s: String!) { service(slug: $s) { id } }",
                json!({ "s": slug }),
            )
            .await
            .ok()
            .str("service.id");
        app.gql(
            Some(&admin.access),
            "mutation($id: ID!, $image: String!) { updateService(id: $id, input: {dockerImage: $image}) { id } }",
            json!({ "id": service, "image": format!("example/{slug}:{tag}") }),
        )
        .await
        .ok();
        let (user, _, id) = customer_with_instance(&app, &admin, slug, "Basic").await;
        let failed = wait_status(&app, &user, &id, "FAILED").await;
        let message = failed["statusMessage"].as_str().unwrap();
        assert!(message.contains(expected), "{slug}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_capacity_it_waits_pending_and_is_placed_once_a_node_is_added() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    // A node too small for the Pro plan (2000 millicores): nothing fits.
    ready_node(&app, &admin, "tiny", 1).await;
    let (user, _, id) = customer_with_instance(&app, &admin, "n8n", "Pro").await;
    let mut ws = status_events(&app, &user, "graphql-transport-ws", Some(&id)).await;
    eventually("the provisioner looked", || async {
        instance(&app, &user, &id).await["statusMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("waiting for room"))
    })
    .await;
    let waiting = instance(&app, &user, &id).await;
    assert_eq!(waiting["status"], "PENDING");
    assert!(waiting["node"].is_null());

    ready_node(&app, &admin, "roomy", 8).await;
    let events = events_until(&mut ws, "RUNNING").await;
    assert_chained(&events, "PENDING");
    let placed = instance(&app, &user, &id).await;
    assert_eq!(placed["node"]["name"], "roomy");
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_suspension_scales_to_zero_recovery_scales_back_and_expiry_removes_everything() {
    use chrono::{DateTime, Duration as Days, Utc};
    use podium::subscriptions::cycle::{run_dunning, run_renewals};
    let app = spawn_app().await;
    let admin = app.admin().await;
    ready_node(&app, &admin, "node-a", 8).await;
    let user = funded_user(&app, &admin, "debtor", "30000").await;
    let plan = plan_id(&app, "ghost", "Basic").await;
    let (sub, id) = subscribed_ids(&app, &user, &plan, "journal").await;
    let i = wait_status(&app, &user, &id, "RUNNING").await;
    let (ns, name) = names(&user, &i);
    let period_end = || async {
        app.gql(
            Some(&user.access),
            "query($id: ID!) { serviceSubscription(id: $id) { currentPeriodEnd } }",
            json!({ "id": sub }),
        )
        .await
        .ok()
        .str("serviceSubscription.currentPeriodEnd")
        .parse::<DateTime<Utc>>()
        .unwrap()
    };
    let end = period_end().await;
    let tick = |t: DateTime<Utc>| {
        let state = app.state.clone();
        async move {
            state.clock.advance_to(t);
            run_renewals(&state).await.unwrap();
            run_dunning(&state).await.unwrap();
        }
    };
    tick(end + Days::minutes(1)).await;
    tick(end + Days::days(7) + Days::minutes(2)).await;
    let stopped = wait_status(&app, &user, &id, "STOPPED").await;
    assert_eq!(stopped["desiredState"], "STOPPED");
    assert_eq!(replicas(&app, &ns, &name).await, Some(0));
    let refused = operate(&app, &user, "startInstance", &id).await;
    assert_eq!(refused.code(), "CONFLICT", "suspended: no starting it");

    // A payment settles the debt: running again.
    crate::billing::adjust(&app, &admin, &user.user_id, "30000")
        .await
        .ok();
    wait_status(&app, &user, &id, "RUNNING").await;
    assert_eq!(replicas(&app, &ns, &name).await, Some(1));

    // Unpaid again, suspended, then expired after 30 days: everything removed.
    let end = period_end().await;
    tick(end + Days::minutes(1)).await;
    tick(end + Days::days(7) + Days::minutes(2)).await;
    wait_status(&app, &user, &id, "STOPPED").await;
    tick(end + Days::days(37) + Days::minutes(3)).await;
    let gone = wait_status(&app, &user, &id, "TERMINATED").await;
    assert_eq!(gone["desiredState"], "DELETED");
    assert_eq!(replicas(&app, &ns, &name).await, None);
    assert!(
        Api::<Secret>::namespaced(kube(&app), &ns)
            .get_opt(&name)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<PersistentVolumeClaim>::namespaced(kube(&app), &ns)
            .get_opt(&name)
            .await
            .unwrap()
            .is_none()
    );
    assert!(pods(&app, &ns).await.is_empty());
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn owners_and_administrators_operate_others_get_not_found_and_credentials_are_the_owners() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    ready_node(&app, &admin, "node-a", 8).await;
    let (owner, _, id) = customer_with_instance(&app, &admin, "n8n", "Basic").await;
    let (stranger, _) = app.register("stranger").await;
    wait_status(&app, &owner, &id, "RUNNING").await;

    for q in [
        "query($id: ID!) { serviceInstance(id: $id) { id } }",
        "query($id: ID!) { instanceLogs(id: $id) }",
        "mutation($id: ID!) { stopInstance(id: $id) { id } }",
        "mutation($id: ID!) { startInstance(id: $id) { id } }",
        "mutation($id: ID!) { restartInstance(id: $id) { id } }",
    ] {
        let r = app
            .gql(Some(&stranger.access), q, json!({ "id": id }))
            .await;
        assert_eq!(r.code(), "NOT_FOUND", "{q}");
        let r = app.gql(None, q, json!({ "id": id })).await;
        assert_eq!(r.code(), "UNAUTHENTICATED", "{q}");
    }
    let theirs = app
        .gql(
            Some(&stranger.access),
            "{ myInstances { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(theirs.data("myInstances.totalCount"), 0);

    let creds = "query($id: ID!) { serviceInstance(id: $id) { credentials { name value } } }";
    let mine = app
        .gql(Some(&owner.access), creds, json!({ "id": id }))
        .await
        .ok();
    let vars = mine.data("serviceInstance.credentials").as_array().unwrap();
    let key = vars
        .iter()
        .find(|v| v["name"] == "N8N_ENCRYPTION_KEY")
        .expect("the generated key");
    assert_eq!(key["value"].as_str().unwrap().len(), 32);
    assert_eq!(
        app.gql(Some(&admin.access), creds, json!({ "id": id }))
            .await
            .code(),
        "FORBIDDEN",
        "not even administrators read a customer's passwords"
    );

    // An administrator may operate it (audited) and read its logs.
    let logs = app
        .gql(
            Some(&admin.access),
            "query($id: ID!) { instanceLogs(id: $id, tailLines: 50) }",
            json!({ "id": id }),
        )
        .await
        .ok();
    assert!(!logs.str("instanceLogs").is_empty());
    let bad = app
        .gql(
            Some(&owner.access),
            "query($id: ID!) { instanceLogs(id: $id, tailLines: 0) }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(bad.code(), "BAD_USER_INPUT");
    operate(&app, &admin, "stopInstance", &id).await.ok();
    wait_status(&app, &owner, &id, "STOPPED").await;
    let audit = app
        .gql(
            Some(&admin.access),
            "{ auditLog(first: 20) { edges { node { action } } } }",
            json!({}),
        )
        .await
        .ok();
    assert!(audit.0.to_string().contains("instance.stop"));
    // The key survives stop and start: re-applying never rotates a password.
    operate(&app, &owner, "startInstance", &id).await.ok();
    wait_status(&app, &owner, &id, "RUNNING").await;
    let again = app
        .gql(Some(&owner.access), creds, json!({ "id": id }))
        .await
        .ok();
    assert_eq!(
        again.data("serviceInstance.credentials"),
        &Value::Array(vars.clone())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn log_lines_stream_live_and_stop_when_the_caller_loses_access() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    ready_node(&app, &admin, "node-a", 8).await;
    let (owner, _, id) = customer_with_instance(&app, &admin, "uptime-kuma", "Basic").await;
    wait_status(&app, &owner, &id, "RUNNING").await;
    let mut ws = subscribed(
        &app,
        &owner.access,
        LOG_LINES,
        json!({ "id": id, "tail": 10 }),
    )
    .await;
    let first = recv(&mut ws).await;
    assert!(
        first["payload"]["data"]["instanceLogLines"].is_string(),
        "{first}"
    );
    // Deactivated: the stream (and the socket) end within moments.
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { updateUser(id: $id, input: {isActive: false}) { id } }",
        json!({ "id": owner.user_id }),
    )
    .await
    .ok();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        use futures_util::StreamExt;
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => return,
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "complete" || v["type"] == "error" {
                        return;
                    }
                }
                _ => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the log stream kept going after deactivation"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn draining_a_node_moves_its_instances_with_a_warning() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let first = ready_node(&app, &admin, "node-a", 8).await;
    let (owner, _, id) = customer_with_instance(&app, &admin, "n8n", "Basic").await;
    assert_eq!(
        wait_status(&app, &owner, &id, "RUNNING").await["node"]["name"],
        "node-a"
    );
    ready_node(&app, &admin, "node-b", 4).await;
    let drained = app
        .gql(
            Some(&admin.access),
            "mutation($id: ID!) { drainWorkerNode(id: $id) { isSchedulable } }",
            json!({ "id": first }),
        )
        .await
        .ok();
    assert_eq!(drained.data("drainWorkerNode.isSchedulable"), false);
    let moved = wait_status(&app, &owner, &id, "RUNNING").await;
    assert_eq!(moved["node"]["name"], "node-b");
    let (ns, _) = names(&owner, &moved);
    let pod = &pods(&app, &ns).await[0];
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some("node-b")
    );
    let audit = app
        .gql(
            Some(&admin.access),
            "{ auditLog(first: 20) { edges { node { action } } } }",
            json!({}),
        )
        .await
        .ok();
    assert!(audit.0.to_string().contains("node.drain"));
    assert_eq!(
        app.gql(
            Some(&owner.access),
            "mutation($id: ID!) { drainWorkerNode(id: $id) { id } }",
            json!({ "id": first })
        )
        .await
        .code(),
        "FORBIDDEN"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_changes_reach_a_subscriber_on_another_replica() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    ready_node(&app, &admin, "node-a", 8).await;
    let url = app
        .state
        .cluster
        .as_ref()
        .unwrap()
        .simulated_url()
        .unwrap()
        .to_string();
    // The second replica shares the database and the cluster and runs no jobs: the
    // provisioning is the first's, the subscriber the second's.
    let other = spawn_app_on(
        &app.database_url,
        &[
            ("PODIUM_KUBE_API_URL", &url),
            ("PODIUM_JOBS_ENABLED", "false"),
        ],
    )
    .await;
    let user = funded_user(&app, &admin, "far", "100000").await;
    let mut ws = status_events(&other, &user, "graphql-transport-ws", None).await;
    let plan = plan_id(&app, "n8n", "Basic").await;
    subscribe(&app, &user, &plan, "remote").await.ok();
    let events = events_until(&mut ws, "RUNNING").await;
    assert_chained(&events, "PENDING");
}

/// Against a real cluster, opt-in: `PODIUM_KUBE_E2E=1 KUBECONFIG=... ./scripts/test
/// real_cluster`. Its Nodes are mirrored into worker nodes; an Uptime Kuma instance is
/// subscribed to, runs, is stopped, started and deleted; its namespace is removed after.
#[tokio::test(flavor = "multi_thread")]
async fn real_cluster_subscribe_run_stop_start_delete() {
    if std::env::var("PODIUM_KUBE_E2E").as_deref() != Ok("1") {
        eprintln!("skipped: set PODIUM_KUBE_E2E=1 and KUBECONFIG to run against a real cluster");
        return;
    }
    let app = spawn_app_with(&[
        ("PODIUM_KUBE_MODE", "cluster"),
        ("PODIUM_HEARTBEAT_INTERVAL_SECS", "2"),
    ])
    .await;
    let admin = app.admin().await;
    eventually_within(
        "the cluster's nodes are mirrored",
        Duration::from_secs(60),
        || async {
            app.gql(
                Some(&admin.access),
                "{ workerNodes(status: ACTIVE) { totalCount } }",
                json!({}),
            )
            .await
            .ok()
            .data("workerNodes.totalCount")
            .as_i64()
            .unwrap_or(0)
                > 0
        },
    )
    .await;
    let (user, sub, id) = customer_with_instance(&app, &admin, "uptime-kuma", "Basic").await;
    let deadline = Duration::from_secs(600);
    let wait = |status: &'static str| {
        let (app, user, id) = (&app, &user, id.clone());
        eventually_within(status, deadline, move || {
            let id = id.clone();
            async move { instance(app, user, &id).await["status"] == status }
        })
    };
    wait("RUNNING").await;
    let op = |m: &str| {
        let query = format!("mutation($id: ID!) {{ {m}(id: $id) {{ id }} }}");
        let (app, user, id) = (&app, &user, id.clone());
        async move {
            app.gql(Some(&user.access), &query, json!({ "id": id }))
                .await
        }
    };
    op("stopInstance").await.ok();
    wait("STOPPED").await;
    op("startInstance").await.ok();
    wait("RUNNING").await;
    cancel_now(&app, &user, &sub).await.ok();
    wait("TERMINATED").await;
    let ns = format!(
        "podium-u-{}",
        user.user_id.parse::<uuid::Uuid>().unwrap().simple()
    );
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(kube(&app))
        .delete(&ns, &Default::default())
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn live_status_and_logs_of_someone_elses_instance_are_not_found_and_a_demoted_administrator_stops_following()
 {
    let app = spawn_app().await;
    let admin = app.admin().await;
    ready_node(&app, &admin, "node-a", 8).await;
    let (owner, _, id) = customer_with_instance(&app, &admin, "n8n", "Basic").await;
    wait_status(&app, &owner, &id, "RUNNING").await;
    let (stranger, _) = app.register("stranger").await;
    for query in [
        "subscription($id: ID) { instanceStatusChanged(instanceId: $id) { status } }",
        "subscription($id: ID!) { instanceLogLines(instanceId: $id) }",
    ] {
        let mut ws = subscribed(&app, &stranger.access, query, json!({ "id": id })).await;
        let answer = recv(&mut ws).await;
        let errors = if answer["type"] == "error" {
            &answer["payload"]
        } else {
            &answer["payload"]["errors"]
        };
        assert_eq!(errors[0]["extensions"]["code"], "NOT_FOUND", "{answer}");
        assert!(answer["payload"]["data"].is_null(), "{answer}");
    }

    // A second administrator follows the customer's log, then is demoted: the socket stays
    // (what a USER may do still works) but the log stream ends.
    let (second, email) = app.register("second-admin").await;
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { updateUser(id: $id, input: {role: ADMINISTRATOR}) { id } }",
        json!({ "id": second.user_id }),
    )
    .await
    .ok();
    let second = app.login(&email, PASSWORD).await;
    let mut ws = subscribed(
        &app,
        &second.access,
        LOG_LINES,
        json!({ "id": id, "tail": 5 }),
    )
    .await;
    assert!(recv(&mut ws).await["payload"]["data"]["instanceLogLines"].is_string());
    app.demote(&admin, &second.user_id).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = recv(&mut ws).await;
            if m["type"] == "complete" || m["type"] == "error" {
                return m;
            }
        }
    })
    .await
    .expect("the log stream of a demoted administrator ends");
    assert_eq!(ended["id"], "1");
}

#[tokio::test(flavor = "multi_thread")]
async fn stopped_instances_keep_their_room_and_a_deleted_one_frees_it_for_a_waiting_one() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    // One core: room for two Basic plans (500 millicores each), not three.
    ready_node(&app, &admin, "small", 1).await;
    let user = funded_user(&app, &admin, "tenant", "500000").await;
    let plan = plan_id(&app, "n8n", "Basic").await;
    let mut ids = vec![];
    for name in ["first", "second", "third"] {
        ids.push(subscribed_ids(&app, &user, &plan, name).await);
    }
    // Whichever two were placed first run; the other waits.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let settled = loop {
        let mut settled = vec![];
        for (_, id) in &ids {
            settled.push(instance(&app, &user, id).await);
        }
        let running = settled.iter().filter(|i| i["status"] == "RUNNING").count();
        let waiting = settled
            .iter()
            .filter(|i| {
                i["status"] == "PENDING"
                    && i["statusMessage"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("waiting for room"))
            })
            .count();
        if running == 2 && waiting == 1 {
            break settled;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "two should run and one wait: {settled:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pending = settled
        .iter()
        .position(|i| i["status"] == "PENDING")
        .unwrap();
    let waiting = ids.remove(pending);
    ids.push(waiting);
    assert!(instance(&app, &user, &ids[2].1).await["node"].is_null());

    // Stopped, a running one keeps its room (its volume stays on the node).
    operate(&app, &user, "stopInstance", &ids[0].1).await.ok();
    wait_status(&app, &user, &ids[0].1, "STOPPED").await;
    // A resync looks at the waiting one again, as when any room may have appeared.
    podium::provisioner::reconcile::resync(&app.state)
        .await
        .unwrap();
    assert!(
        instance(&app, &user, &ids[2].1).await["node"].is_null(),
        "a stopped instance's room is not given away"
    );

    // Deleted, it frees its room: the waiting one is placed.
    cancel_now(&app, &user, &ids[0].0).await.ok();
    wait_status(&app, &user, &ids[0].1, "TERMINATED").await;
    let placed = wait_status(&app, &user, &ids[2].1, "RUNNING").await;
    assert_eq!(placed["node"]["name"], "small");
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_never_placed_is_deleted_straight_to_terminated() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, sub, id) = customer_with_instance(&app, &admin, "ghost", "Basic").await;
    eventually("the provisioner looked", || async {
        instance(&app, &user, &id).await["statusMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("waiting for room"))
    })
    .await;
    cancel_now(&app, &user, &sub).await.ok();
    let gone = wait_status(&app, &user, &id, "TERMINATED").await;
    assert_eq!(gone["desiredState"], "DELETED");
    assert!(gone["node"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bigger_plan_that_its_node_has_no_room_for_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    ready_node(&app, &admin, "small", 1).await;
    let user = funded_user(&app, &admin, "grower", "500000").await;
    let basic = plan_id(&app, "n8n", "Basic").await;
    let standard = plan_id(&app, "n8n", "Standard").await;
    let first = subscribe(&app, &user, &basic, "first").await.ok();
    let second = subscribe(&app, &user, &basic, "second").await.ok();
    for r in [&first, &second] {
        wait_status(&app, &user, &r.str("subscribe.instance.id"), "RUNNING").await;
    }
    let change = "mutation($id: ID!, $plan: ID!) { changeSubscriptionPlan(id: $id, planId: $plan) { plan { name } } }";
    let before = crate::billing::balance(&app, &user).await;
    let refused = app
        .gql(
            Some(&user.access),
            change,
            json!({ "id": first.str("subscribe.subscription.id"), "plan": standard }),
        )
        .await;
    assert_eq!(refused.code(), "CONFLICT");
    assert!(
        refused.error()["message"]
            .as_str()
            .unwrap()
            .contains("no room"),
        "{:?}",
        refused.0
    );
    assert_eq!(
        crate::billing::balance(&app, &user).await,
        before,
        "nothing charged"
    );

    // With the other instance gone, the node has room for it.
    cancel_now(&app, &user, &second.str("subscribe.subscription.id"))
        .await
        .ok();
    wait_status(
        &app,
        &user,
        &second.str("subscribe.instance.id"),
        "TERMINATED",
    )
    .await;
    let changed = app
        .gql(
            Some(&user.access),
            change,
            json!({ "id": first.str("subscribe.subscription.id"), "plan": standard }),
        )
        .await
        .ok();
    assert_eq!(changed.str("changeSubscriptionPlan.plan.name"), "Standard");
    assert_billing_consistent(&app).await;
}
