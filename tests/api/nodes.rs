//! Worker nodes: administration, heartbeat authentication and coalescing, staleness,
//! and live status events (also across two server instances).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::*;
use crate::subscriptions::{Ws, connect, recv, send};

const REGISTER: &str = "mutation($name: String!) { registerWorkerNode(input: {name: $name, hostname: \"n1.internal\",
    ipAddress: \"10.0.0.5\", cpuCores: 4, memoryMb: 8192, storageMb: 100000}) { nodeToken node { id status } } }";
const HEARTBEAT: &str = "mutation($input: NodeHeartbeatInput) { nodeHeartbeat(input: $input) { nodeId status serverTime nextHeartbeatInSeconds } }";
const NODE: &str = "query($id: ID!) { workerNode(id: $id) { status isReady isOnline currentPods allocatedCpu allocatedMemoryMb kernelVersion labels lastHeartbeat } }";

/// Registers a node; returns (id, token).
pub async fn register(app: &TestApp, admin: &str, name: &str) -> (String, String) {
    let r = app
        .gql(Some(admin), REGISTER, json!({ "name": name }))
        .await
        .ok();
    assert_eq!(r.str("registerWorkerNode.node.status"), "PENDING");
    (
        r.str("registerWorkerNode.node.id"),
        r.str("registerWorkerNode.nodeToken"),
    )
}

pub async fn heartbeat(app: &TestApp, token: &str, input: Value) -> Gql {
    app.gql(Some(token), HEARTBEAT, json!({ "input": input }))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_token_authenticates_heartbeats_and_a_user_jwt_does_not() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, _) = app.register("not-a-node").await;
    let (id, token) = register(&app, &admin.access, "hb-node").await;
    assert!(token.starts_with("pdn_"));

    let ack = heartbeat(
        &app,
        &token,
        json!({ "isReady": true, "currentPods": 3, "allocatedCpu": 1.5,
        "allocatedMemoryMb": 2048, "kernelVersion": "6.1.0-26-amd64", "labels": { "zone": "a" } }),
    )
    .await
    .ok();
    assert_eq!(ack.str("nodeHeartbeat.nodeId"), id);
    assert_eq!(
        ack.str("nodeHeartbeat.status"),
        "ACTIVE",
        "a PENDING node reporting ready becomes ACTIVE"
    );
    assert_eq!(ack.data("nodeHeartbeat.nextHeartbeatInSeconds"), &json!(10));

    assert_eq!(
        heartbeat(&app, &user.access, json!({})).await.code(),
        "FORBIDDEN"
    );
    assert_eq!(
        heartbeat(&app, &admin.access, json!({})).await.code(),
        "FORBIDDEN"
    );
    assert_eq!(
        heartbeat(&app, "pdn_not-a-real-token", json!({}))
            .await
            .code(),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        app.gql(None, HEARTBEAT, json!({})).await.code(),
        "UNAUTHENTICATED"
    );
    // A node token is no user: it reads nothing else.
    assert_eq!(
        app.gql(Some(&token), "{ me { id } }", json!({}))
            .await
            .code(),
        "FORBIDDEN"
    );

    // Coalesced reports reach the database within the flush interval.
    heartbeat(&app, &token, json!({ "currentPods": 7 }))
        .await
        .ok();
    eventually("the coalesced report to be written", || async {
        let r = app
            .gql(Some(&admin.access), NODE, json!({ "id": id }))
            .await
            .ok();
        r.data("workerNode.currentPods") == &json!(7)
    })
    .await;
    let r = app
        .gql(Some(&admin.access), NODE, json!({ "id": id }))
        .await
        .ok();
    let node = r.data("workerNode");
    assert_eq!(node["status"], "ACTIVE");
    assert_eq!(node["isOnline"], true);
    assert_eq!(node["allocatedCpu"], json!(1.5));
    assert_eq!(
        node["kernelVersion"], "6.1.0-26-amd64",
        "an omitted field keeps its value"
    );
    assert_eq!(node["labels"], json!({ "zone": "a" }));

    let bad = heartbeat(&app, &token, json!({ "currentPods": -1 })).await;
    assert_eq!(bad.code(), "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotating_a_token_refuses_the_old_one_and_maintenance_stays() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (id, old) = register(&app, &admin.access, "rotating").await;
    heartbeat(&app, &old, json!({ "isReady": true })).await.ok();

    let r = app
        .gql(
            Some(&admin.access),
            "mutation($id: ID!) { rotateWorkerNodeToken(id: $id) { nodeToken } }",
            json!({ "id": id }),
        )
        .await
        .ok();
    let new = r.str("rotateWorkerNodeToken.nodeToken");
    assert_eq!(
        heartbeat(&app, &old, json!({})).await.code(),
        "UNAUTHENTICATED"
    );
    heartbeat(&app, &new, json!({})).await.ok();

    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { setWorkerNodeStatus(id: $id, status: MAINTENANCE) { status } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    let ack = heartbeat(&app, &new, json!({ "isReady": true })).await.ok();
    assert_eq!(
        ack.str("nodeHeartbeat.status"),
        "MAINTENANCE",
        "maintenance is the administrator's"
    );

    let r = app
        .gql(Some(&admin.access), "mutation($id: ID!) { setWorkerNodeSchedulable(id: $id, schedulable: false) { isSchedulable } }", json!({ "id": id }))
        .await
        .ok();
    assert_eq!(
        r.data("setWorkerNodeSchedulable.isSchedulable"),
        &json!(false)
    );
    let listed = app
        .gql(
            Some(&admin.access),
            "{ workerNodes(isSchedulable: false) { totalCount edges { node { name } } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(listed.data("workerNodes.totalCount"), &json!(1));

    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { deleteWorkerNode(id: $id) }",
        json!({ "id": id }),
    )
    .await
    .ok();
    assert_eq!(
        heartbeat(&app, &new, json!({})).await.code(),
        "UNAUTHENTICATED"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn node_administration_is_for_administrators_only_and_validated() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, _) = app.register("nosy").await;
    let (id, _) = register(&app, &admin.access, "guarded").await;
    let ops: Vec<(&str, &str, Value)> = vec![
        ("workerNodes", "{ workerNodes { totalCount } }", json!({})),
        (
            "workerNode",
            "query($id: ID!) { workerNode(id: $id) { id } }",
            json!({ "id": id }),
        ),
        (
            "workerNodeStats",
            "{ workerNodeStats { total } }",
            json!({}),
        ),
        ("jobs", "{ jobs { totalCount } }", json!({})),
        (
            "registerWorkerNode",
            REGISTER,
            json!({ "name": "intruder" }),
        ),
        (
            "updateWorkerNode",
            "mutation($id: ID!) { updateWorkerNode(id: $id, input: {maxPods: 50}) { id } }",
            json!({ "id": id }),
        ),
        (
            "setWorkerNodeSchedulable",
            "mutation($id: ID!) { setWorkerNodeSchedulable(id: $id, schedulable: false) { id } }",
            json!({ "id": id }),
        ),
        (
            "setWorkerNodeStatus",
            "mutation($id: ID!) { setWorkerNodeStatus(id: $id, status: MAINTENANCE) { id } }",
            json!({ "id": id }),
        ),
        (
            "rotateWorkerNodeToken",
            "mutation($id: ID!) { rotateWorkerNodeToken(id: $id) { nodeToken } }",
            json!({ "id": id }),
        ),
        (
            "deleteWorkerNode",
            "mutation($id: ID!) { deleteWorkerNode(id: $id) }",
            json!({ "id": id }),
        ),
    ];
    for (name, query, vars) in &ops {
        assert_eq!(
            app.gql(None, query, vars.clone()).await.code(),
            "UNAUTHENTICATED",
            "anonymous {name}"
        );
        assert_eq!(
            app.gql(Some(&user.access), query, vars.clone())
                .await
                .code(),
            "FORBIDDEN",
            "USER {name}"
        );
    }
    let r = app
        .gql(
            Some(&admin.access),
            "query($id: ID!) { workerNode(id: $id) { status isSchedulable } }",
            json!({ "id": id }),
        )
        .await
        .ok();
    assert_eq!(
        r.data("workerNode"),
        &json!({ "status": "PENDING", "isSchedulable": true }),
        "unchanged"
    );

    let bad = app
        .gql(
            Some(&admin.access),
            "mutation { registerWorkerNode(input: {name: \"bad name!\", hostname: \"h\", ipAddress: \"300.1.1.1\", cpuCores: 0, memoryMb: 1, storageMb: 1}) { nodeToken } }",
            json!({}),
        )
        .await;
    assert_eq!(bad.code(), "BAD_USER_INPUT");
    let fields = &bad.error()["extensions"]["fields"];
    for f in ["name", "ipAddress", "cpuCores"] {
        assert!(fields[f].is_array(), "{f}: {fields}");
    }
    assert_eq!(
        app.gql(Some(&admin.access), REGISTER, json!({ "name": "guarded" }))
            .await
            .code(),
        "CONFLICT"
    );

    let stats = app
        .gql(
            Some(&admin.access),
            "{ workerNodeStats { total online offline cpuCores byStatus { status count } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(
        stats.data("workerNodeStats.total"),
        &json!(4),
        "three demo nodes and one registered"
    );
    assert_eq!(stats.data("workerNodeStats.online"), &json!(0));
    let pending = stats
        .data("workerNodeStats.byStatus")
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == "PENDING")
        .unwrap()
        .clone();
    assert_eq!(pending["count"], json!(4));
}

/// Subscribes to node status changes and returns once the server's subscription is
/// listening (the protocol has no per-subscription acknowledgement), so that no change
/// made afterwards can be missed.
async fn subscribe_status(app: &TestApp, token: &str) -> Ws {
    let mut ws = connect(app, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } })).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    let before = app.state.events.subscribers();
    send(
        &mut ws,
        json!({ "id": "s", "type": "subscribe", "payload": { "query":
            "subscription { workerNodeStatusChanged { nodeId previousStatus status at node { name } } }" } }),
    )
    .await;
    eventually("the subscription to listen", || async {
        app.state.events.subscribers() > before
    })
    .await;
    ws
}

async fn next_change(ws: &mut Ws) -> Value {
    let msg = recv(ws).await;
    assert_eq!(msg["type"], "next", "{msg}");
    msg["payload"]["data"]["workerNodeStatusChanged"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_node_turns_inactive_and_the_next_heartbeat_brings_it_back() {
    let app = spawn_app_with(&[
        ("PODIUM_NODE_STALE_AFTER_SECS", "1"),
        ("PODIUM_NODE_STALENESS_CRON", "* * * * * *"),
        ("PODIUM_JOB_POLL_MS", "100"),
    ])
    .await;
    let admin = app.admin().await;
    let mut ws = subscribe_status(&app, &admin.access).await;
    let (id, token) = register(&app, &admin.access, "flaky").await;

    heartbeat(&app, &token, json!({ "isReady": true }))
        .await
        .ok();
    let change = next_change(&mut ws).await;
    assert_eq!(
        (change["previousStatus"].as_str(), change["status"].as_str()),
        (Some("PENDING"), Some("ACTIVE"))
    );
    assert_eq!(change["node"]["name"], "flaky");

    // Silence: threshold (1 s) plus a scheduler tick (1 s), well within recv's deadline.
    let change = next_change(&mut ws).await;
    assert_eq!(change["nodeId"], json!(id));
    assert_eq!(
        (change["previousStatus"].as_str(), change["status"].as_str()),
        (Some("ACTIVE"), Some("INACTIVE"))
    );
    let r = app
        .gql(Some(&admin.access), NODE, json!({ "id": id }))
        .await
        .ok();
    assert_eq!(r.data("workerNode.status"), "INACTIVE");
    assert_eq!(r.data("workerNode.isReady"), &json!(false));

    let ack = heartbeat(&app, &token, json!({ "isReady": true }))
        .await
        .ok();
    assert_eq!(ack.str("nodeHeartbeat.status"), "ACTIVE");
    let change = next_change(&mut ws).await;
    assert_eq!(
        (change["previousStatus"].as_str(), change["status"].as_str()),
        (Some("INACTIVE"), Some("ACTIVE"))
    );

    // The staleness job ran as recorded jobs.
    let jobs = app
        .gql(
            Some(&admin.access),
            "{ jobs(kind: \"node.staleness\", status: SUCCEEDED) { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert!(jobs.data("jobs.totalCount").as_i64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_committed_on_one_instance_reaches_a_subscriber_of_another() {
    let url = fresh_database(true).await;
    let a = spawn_app_on(&url, &[]).await;
    let b = spawn_app_on(&url, &[]).await;
    let admin = a.admin().await;
    let (id, _) = register(&a, &admin.access, "shared-node").await;
    let mut ws = subscribe_status(&b, &admin.access).await;

    a.gql(
        Some(&admin.access),
        "mutation($id: ID!) { setWorkerNodeStatus(id: $id, status: MAINTENANCE) { status } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    let change = next_change(&mut ws).await;
    assert_eq!(change["nodeId"], json!(id));
    assert_eq!(
        (change["previousStatus"].as_str(), change["status"].as_str()),
        (Some("PENDING"), Some("MAINTENANCE"))
    );

    // USERs may not subscribe.
    let (user, _) = b.register("watcher").await;
    let mut ws = connect(&b, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", user.access) } })).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    send(&mut ws, json!({ "id": "s", "type": "subscribe", "payload": { "query": "subscription { workerNodeStatusChanged { status } }" } })).await;
    assert!(recv(&mut ws).await.to_string().contains("FORBIDDEN"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_agent_keeps_its_node_active_and_stops_on_a_refused_token() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (id, token) = register(&app, &admin.access, "agent-node").await;
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_podium"))
        .args([
            "node-agent",
            "--server",
            &app.address,
            "--interval",
            "200ms",
        ])
        .env("PODIUM_NODE_TOKEN", &token)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        "the agent to make its node ACTIVE with this machine's data",
        || async {
            let r = app
                .gql(Some(&admin.access), NODE, json!({ "id": id }))
                .await
                .ok();
            r.data("workerNode.status") == "ACTIVE"
                && r.data("workerNode.kernelVersion").is_string()
        },
    )
    .await;
    let first = app
        .gql(Some(&admin.access), NODE, json!({ "id": id }))
        .await
        .ok()
        .str("workerNode.lastHeartbeat");
    eventually("later heartbeats", || async {
        app.gql(Some(&admin.access), NODE, json!({ "id": id }))
            .await
            .ok()
            .str("workerNode.lastHeartbeat")
            != first
    })
    .await;

    // Rotating the token: the running agent is refused and exits with an explanation.
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { rotateWorkerNodeToken(id: $id) { nodeToken } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the agent kept running with a refused token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_podium"))
        .args([
            "node-agent",
            "--server",
            &app.address,
            "--token",
            &token,
            "--once",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused this node's token"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demoted_administrator_stops_hearing_node_events() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (other, _) = app.register("short-lived-admin").await;
    let set_role =
        "mutation($id: ID!, $r: Role!) { updateUser(id: $id, input: {role: $r}) { role } }";
    app.gql(
        Some(&admin.access),
        set_role,
        json!({ "id": other.user_id, "r": "ADMINISTRATOR" }),
    )
    .await
    .ok();
    let mut ws = subscribe_status(&app, &other.access).await;
    let (id, _) = register(&app, &admin.access, "watched").await;
    let set_status = "mutation($id: ID!, $s: NodeStatus!) { setWorkerNodeStatus(id: $id, status: $s) { status } }";
    app.gql(
        Some(&admin.access),
        set_status,
        json!({ "id": id, "s": "MAINTENANCE" }),
    )
    .await
    .ok();
    assert_eq!(next_change(&mut ws).await["status"], "MAINTENANCE");

    app.gql(
        Some(&admin.access),
        set_role,
        json!({ "id": other.user_id, "r": "USER" }),
    )
    .await
    .ok();
    app.gql(
        Some(&admin.access),
        set_status,
        json!({ "id": id, "s": "ACTIVE" }),
    )
    .await
    .ok();
    let msg = recv(&mut ws).await;
    assert_eq!(
        msg["type"], "complete",
        "the stream ends instead of delivering: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_within_one_flush_interval_become_one_write() {
    use std::sync::atomic::Ordering;
    let app = spawn_app_with(&[("PODIUM_HEARTBEAT_FLUSH_MS", "1000")]).await;
    let admin = app.admin().await;
    let (id, token) = register(&app, &admin.access, "coalesced").await;
    heartbeat(&app, &token, json!({ "isReady": true }))
        .await
        .ok();
    let beats = &app.state.heartbeats;
    // Line up with the flusher: once a report has just been written, a new interval begins.
    heartbeat(&app, &token, json!({ "currentPods": 1 }))
        .await
        .ok();
    let before = beats.flushed.load(Ordering::Relaxed);
    eventually("a flush", || async {
        beats.flushed.load(Ordering::Relaxed) > before
    })
    .await;
    let written = beats.flushed.load(Ordering::Relaxed);
    let accepted = beats.accepted.load(Ordering::Relaxed);

    let sends = (1..=20).map(|pods| heartbeat(&app, &token, json!({ "currentPods": pods })));
    for r in futures_util::future::join_all(sends).await {
        r.ok();
    }
    assert_eq!(beats.accepted.load(Ordering::Relaxed) - accepted, 20);
    eventually("the next flush", || async {
        beats.flushed.load(Ordering::Relaxed) > written
    })
    .await;
    assert_eq!(
        beats.flushed.load(Ordering::Relaxed) - written,
        1,
        "20 heartbeats of one node in one interval are one row written"
    );
    let r = app
        .gql(Some(&admin.access), NODE, json!({ "id": id }))
        .await
        .ok();
    let pods = r.data("workerNode.currentPods").as_i64().unwrap();
    assert!(
        (1..=20).contains(&pods),
        "one of the reports was written: {pods}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_heartbeats_on_two_replicas_publish_every_transition_once_in_order() {
    use podium::nodes::service::{STATUS_TOPIC, StatusChanged};
    let url = fresh_database(true).await;
    let a = spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await;
    let b = spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await;
    let admin = a.admin().await;
    let (id, token) = register(&a, &admin.access, "contended").await;
    let node_id: uuid::Uuid = id.parse().unwrap();
    let mut events = a.state.events.subscribe();

    // Four clients flip readiness as fast as they can, through both replicas at once,
    // while the staleness check runs too.
    let mut tasks = Vec::new();
    for client in 0..4 {
        let app = if client % 2 == 0 { &a } else { &b };
        let (http, address, token) = (app.client.clone(), app.address.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let ready = (i + client) % 2 == 0;
                let r = gql_at(
                    &http,
                    &address,
                    Some(&token),
                    HEARTBEAT,
                    json!({ "input": { "isReady": ready } }),
                )
                .await;
                assert!(r.0.get("errors").is_none(), "{}", r.0);
            }
        }));
    }
    let stale = {
        let state = b.state.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                podium::nodes::service::mark_stale_nodes(&state)
                    .await
                    .unwrap();
            }
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    stale.await.unwrap();
    for app in [&a, &b] {
        app.state.heartbeats.flush(&app.state.pool).await.unwrap();
    }
    let last = a
        .gql(Some(&admin.access), NODE, json!({ "id": id }))
        .await
        .ok()
        .str("workerNode.status");

    // Every transition arrives once, in order: each starts where the previous one ended,
    // and the last ends where the node is.
    let mut chain: Vec<(String, String)> = Vec::new();
    loop {
        let settled = chain.last().is_some_and(|(_, to)| *to == last);
        let wait = if settled { 500 } else { 10_000 };
        match tokio::time::timeout(Duration::from_millis(wait), events.recv()).await {
            Ok(Ok(message)) => {
                let Some(StatusChanged {
                    node_id: n,
                    previous_status,
                    status,
                    ..
                }) = message.decode(STATUS_TOPIC)
                else {
                    continue;
                };
                if n == node_id {
                    chain.push((
                        previous_status.as_str().to_string(),
                        status.as_str().to_string(),
                    ));
                }
            }
            Ok(Err(e)) => panic!("event bus: {e}"),
            Err(_) if settled => break,
            Err(_) => panic!("the transitions stopped short of {last}: {chain:?}"),
        }
    }
    assert_eq!(chain[0].0, "PENDING", "{chain:?}");
    for pair in chain.windows(2) {
        assert_eq!(
            pair[0].1, pair[1].0,
            "a transition was lost or doubled: {chain:?}"
        );
    }
    assert!(chain.len() > 2, "the test flipped the status: {chain:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_agent_takes_the_graphql_url_and_explains_a_wrong_one() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (_, token) = register(&app, &admin.access, "agent-urls").await;
    let agent = |server: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_podium"))
            .args(["node-agent", "--server", &server, "--once"])
            .env("PODIUM_NODE_TOKEN", &token)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running the agent")
    };
    let ok = agent(format!("{}/graphql/", app.address));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let wrong = agent(format!("{}/api/v1", app.address));
    assert!(!wrong.status.success());
    let said = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        said.contains("404") && said.contains("--server must be"),
        "the agent should explain the 404: {said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_rotated_on_one_replica_is_refused_by_another_within_a_second() {
    let url = fresh_database(true).await;
    let a = spawn_app_on(&url, &[]).await;
    let b = spawn_app_on(&url, &[]).await;
    let admin = a.admin().await;
    let (id, old) = register(&a, &admin.access, "rotated-elsewhere").await;
    let (_, doomed) = register(&a, &admin.access, "deleted-elsewhere").await;
    // B knows both tokens (its token map answers without the database from now on).
    heartbeat(&b, &old, json!({ "isReady": true })).await.ok();
    heartbeat(&b, &doomed, json!({ "isReady": false }))
        .await
        .ok();

    a.gql(
        Some(&admin.access),
        "mutation($id: ID!) { rotateWorkerNodeToken(id: $id) { nodeToken } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    let doomed_id = b
        .state
        .heartbeats
        .known_node(&podium::auth::token_hash(&doomed));
    a.gql(
        Some(&admin.access),
        "mutation($id: ID!) { deleteWorkerNode(id: $id) }",
        json!({ "id": doomed_id.unwrap().to_string() }),
    )
    .await
    .ok();

    // The token map reloads every 10 s; the event must beat it by far.
    let started = Instant::now();
    for token in [&old, &doomed] {
        loop {
            let r = heartbeat(&b, token, json!({ "isReady": true })).await;
            if r.0.get("errors").is_some() {
                assert_eq!(r.code(), "UNAUTHENTICATED", "{}", r.0);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "replica B still accepts a revoked token"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
