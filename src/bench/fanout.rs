//! `podium bench fanout`: N WebSocket subscribers of one instance's status on one server
//! (a `podium serve` child process, so its memory is its own), then status changes written
//! the way the provisioner writes them (the change and its outbox event in one
//! transaction, then a wake-up): prints the delivery latency from commit to each
//! subscriber (p50/p99/max) and the server's memory. Then instances provisioned per second
//! through the Kubernetes adapter against the embedded stand-in.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::sql_types::{Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

use crate::config::Settings;
use crate::instances::model::{self as instances, InstanceStatus};
use crate::provisioner::embedded::{EmbeddedCluster, EmbeddedConfig, SimNode};
use crate::provisioner::objects::{ClusterOptions, InstanceSpec};

pub struct FanoutBench {
    pub subscribers: usize,
    pub changes: usize,
    pub instances: usize,
}

pub struct FanoutReport {
    pub subscribed_seconds: f64,
    pub deliveries: usize,
    pub missing: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub rss_before_mb: f64,
    pub rss_subscribed_mb: f64,
    pub rss_peak_mb: f64,
    pub provisioned: usize,
    pub provision_seconds: f64,
}

/// Sockets opened at once.
const CONNECTING: usize = 200;

pub async fn fanout(settings: Settings, bench: FanoutBench) -> anyhow::Result<FanoutReport> {
    super::on_scratch_database(settings, async |settings, url| {
        run(settings, url, &bench).await
    })
    .await
}

async fn run(settings: Settings, url: &str, bench: &FanoutBench) -> anyhow::Result<FanoutReport> {
    crate::db::migrate::run(url).await?;
    let pool = crate::db::connect_pool(url, 4).await?;
    crate::seed::run(&pool, &settings.default_currency).await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let limit = (bench.subscribers * 4 + 1000).to_string();
    let mut server = tokio::process::Command::new(std::env::current_exe()?)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .env("PODIUM_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "PODIUM_JWT_SECRET",
            Uuid::new_v4().simple().to_string().repeat(2),
        )
        .env("PODIUM_JOBS_ENABLED", "false")
        .env("PODIUM_KUBE_MODE", "embedded")
        .env("PODIUM_WS_MAX_PER_ADDRESS", &limit)
        .env("PODIUM_RATE_LIMIT_PER_IP", &limit)
        .env("PODIUM_RATE_LIMIT_PER_USER", &limit)
        .env("RUST_LOG", "warn")
        .envs(std::env::vars().filter(|(k, _)| k.starts_with("MALLOC_")))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the server")?;
    let pid = server.id().context("the server's pid")?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(Instant::now() < deadline, "the server did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let registered: Value = http
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": "mutation { register(input: {name: \"Bench\", email: \"fanout@example.com\", password: \"bench-password-1\"}) { accessToken user { id } } }" }))
        .send()
        .await?
        .json()
        .await?;
    let token = registered["data"]["register"]["accessToken"]
        .as_str()
        .with_context(|| format!("registering: {registered}"))?
        .to_string();
    let user_id: Uuid = registered["data"]["register"]["user"]["id"]
        .as_str()
        .context("a user id")?
        .parse()?;
    let instance_id = seed_instance(&pool, user_id).await?;
    let rss_before_mb = rss_mb(pid, "VmRSS");
    let baseline = live_subscribers(&http, &base).await?;

    // The subscribers, each reporting (change number, arrival time).
    let started = Instant::now();
    let (arrivals, mut arrived) = mpsc::unbounded_channel::<(usize, Instant)>();
    let ws_url = format!("ws://127.0.0.1:{port}/graphql");
    let sockets: Vec<_> = futures_util::stream::iter(0..bench.subscribers)
        .map(|_| subscriber(&ws_url, &token, instance_id, arrivals.clone()))
        .buffer_unordered(CONNECTING)
        .collect()
        .await;
    let mut tasks = Vec::with_capacity(sockets.len());
    for s in sockets {
        tasks.push(s?);
    }
    drop(arrivals);
    // Every socket's subscription is running on the server.
    while live_subscribers(&http, &base).await? < baseline + bench.subscribers as u64 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the subscriptions did not all start within 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Change 0 warms up: once every subscriber has it, all are listening.
    let mut conn = pool.get().await?;
    let mut latencies: Vec<f64> = Vec::with_capacity(bench.subscribers * bench.changes);
    let mut missing = 0;
    let mut subscribed_seconds = 0.0;
    for k in 0..=bench.changes {
        let status = if k % 2 == 0 {
            InstanceStatus::Restarting
        } else {
            InstanceStatus::Running
        };
        let mut attempt = 0;
        let committed = loop {
            let sent = Instant::now();
            attempt += 1;
            // A repeated warm-up must still be a change (a new message), or no event comes.
            change(
                &mut conn,
                instance_id,
                status,
                &format!("bench {k} {attempt}"),
            )
            .await?;
            if k > 0 {
                break sent;
            }
            // Until every socket listens, the warm-up is repeated.
            let got = collect(&mut arrived, k, bench.subscribers, Duration::from_secs(2)).await;
            if got.len() == bench.subscribers {
                subscribed_seconds = started.elapsed().as_secs_f64();
                break sent;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(300),
                "only {} of {} subscribers listen after 5 minutes",
                got.len(),
                bench.subscribers
            );
        };
        if k == 0 {
            continue;
        }
        let got = collect(&mut arrived, k, bench.subscribers, Duration::from_secs(10)).await;
        missing += bench.subscribers - got.len();
        latencies.extend(
            got.iter()
                .map(|t| t.saturating_duration_since(committed).as_secs_f64() * 1000.0),
        );
    }
    let rss_subscribed_mb = rss_mb(pid, "VmRSS");
    let rss_peak_mb = rss_mb(pid, "VmHWM");
    for t in tasks {
        t.abort();
    }
    let _ = server.kill().await;

    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let (provisioned, provision_seconds) = provision(bench.instances).await?;
    Ok(FanoutReport {
        subscribed_seconds,
        deliveries: latencies.len(),
        missing,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        rss_before_mb,
        rss_subscribed_mb,
        rss_peak_mb,
        provisioned,
        provision_seconds,
    })
}

/// A subscription and its instance for the bench user, straight in the database (no
/// money is needed to watch a status).
async fn seed_instance(pool: &crate::db::DbPool, user_id: Uuid) -> anyhow::Result<Uuid> {
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = SqlUuid)]
        id: Uuid,
    }
    let mut conn = pool.get().await?;
    let row: Id = diesel::sql_query(
        "WITH plan AS (SELECT id, monthly_price, currency FROM service_plans ORDER BY id LIMIT 1),
         s AS (
             INSERT INTO service_subscriptions (user_id, plan_id, name, status, price, currency,
                 current_period_start, current_period_end)
             SELECT $1, plan.id, 'fanout', 'ACTIVE', plan.monthly_price, plan.currency, now(),
                 now() + interval '1 month' FROM plan
             RETURNING id)
         INSERT INTO service_instances (subscription_id, user_id, name, subdomain, desired_state, status)
         SELECT s.id, $1, 'fanout', $2, 'RUNNING', 'RUNNING' FROM s
         RETURNING id",
    )
    .bind::<SqlUuid, _>(user_id)
    .bind::<Text, _>(format!("fanout-{}", &Uuid::new_v4().simple().to_string()[..6]))
    .get_result(&mut conn)
    .await
    .context("seeding the watched instance")?;
    Ok(row.id)
}

/// One status change as the provisioner writes it, then the wake-up a replica sends.
async fn change(
    conn: &mut crate::db::Conn,
    id: Uuid,
    status: InstanceStatus,
    message: &str,
) -> anyhow::Result<()> {
    conn.transaction(async |conn| {
        if let Some((previous, after)) =
            instances::set_status(conn, id, 0, status, message, chrono::Utc::now()).await?
        {
            crate::instances::events::status_changed(conn, previous, &after).await?;
        }
        Ok::<_, diesel::result::Error>(())
    })
    .await?;
    diesel::sql_query(format!("NOTIFY {}", crate::events::outbox::WAKE_CHANNEL))
        .execute(conn)
        .await?;
    Ok(())
}

/// The arrival times of change `k`, until `n` arrived or `within` passed.
async fn collect(
    arrived: &mut mpsc::UnboundedReceiver<(usize, Instant)>,
    k: usize,
    n: usize,
    within: Duration,
) -> Vec<Instant> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + within;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, arrived.recv()).await {
            Ok(Some((change, at))) if change == k => got.push(at),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    got
}

/// Opens one socket, subscribes, and reports each status event's change number.
async fn subscriber(
    url: &str,
    token: &str,
    instance: Uuid,
    arrivals: mpsc::UnboundedSender<(usize, Instant)>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "graphql-transport-ws".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let init = json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } });
    ws.send(Message::Text(init.to_string().into())).await?;
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": {
        "query": "subscription($id: ID) { instanceStatusChanged(instanceId: $id) { status message } }",
        "variables": { "id": instance } } });
    ws.send(Message::Text(subscribe.to_string().into())).await?;
    Ok(tokio::spawn(async move {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let at = Instant::now();
            // The change number, without parsing the whole message: the load generator
            // shares the machine with the server and should take as little as it can.
            if let Some(k) = text
                .split_once("\"message\":\"bench ")
                .and_then(|(_, rest)| rest.split([' ', '"']).next()?.parse().ok())
            {
                let _ = arrivals.send((k, at));
            }
        }
    }))
}

/// The server's `podium_live_subscribers` gauge.
async fn live_subscribers(http: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix("podium_live_subscribers "))
        .and_then(|n| n.parse().ok())
        .context("no podium_live_subscribers in /metrics")
}

/// The server's resident memory from /proc, in MB.
fn rss_mb(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Instances provisioned through the adapter against the embedded stand-in: every object
/// applied and the pod running and ready. Returns (count, seconds).
async fn provision(n: usize) -> anyhow::Result<(usize, f64)> {
    if n == 0 {
        return Ok((0, 0.0));
    }
    let node = SimNode {
        name: "bench-node".into(),
        cpu_cores: 100_000,
        memory_mb: 100_000_000,
        storage_mb: 1_000_000_000,
        max_pods: (n + 10) as i32,
        architecture: "amd64".into(),
        labels: BTreeMap::new(),
    };
    let embedded = EmbeddedCluster::start(EmbeddedConfig {
        nodes: vec![node],
        start_delay: Duration::from_millis(100),
    })
    .await?;
    let client = kube::Client::try_from(embedded.client_config())?;
    let cluster = crate::provisioner::cluster::Cluster::new(
        client,
        ClusterOptions {
            ingress_class: Some("nginx".into()),
            cluster_issuer: "letsencrypt".into(),
            storage_class: None,
            ingress_namespace: "ingress-nginx".into(),
        },
    );
    let started = Instant::now();
    let specs: Vec<InstanceSpec> = (0..n).map(bench_spec).collect();
    let applied: Vec<kube::Result<()>> = futures_util::stream::iter(&specs)
        .map(|spec| cluster.apply(spec))
        .buffer_unordered(16)
        .collect()
        .await;
    for a in applied {
        a?;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let ready = cluster
            .pods()
            .list(&kube::api::ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|c| c.iter().all(|c| c.ready))
            })
            .count();
        if ready >= n {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "only {ready} of {n} pods ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    embedded.stop().await;
    Ok((n, seconds))
}

fn bench_spec(i: usize) -> InstanceSpec {
    let user = Uuid::new_v4();
    InstanceSpec {
        instance_id: Uuid::new_v4(),
        subscription_id: Uuid::new_v4(),
        user_id: user,
        namespace: format!("podium-u-{}", user.simple()),
        subdomain: format!("bench-{i}"),
        host: format!("bench-{i}.apps.localhost"),
        service_slug: "n8n".into(),
        image: "n8nio/n8n:1.64.3".into(),
        container_port: 5678,
        volume_mount_path: Some("/home/node/.n8n".into()),
        cpu_milli: 500,
        memory_mb: 512,
        storage_gb: 5,
        node_name: "bench-node".into(),
        env: BTreeMap::from([("N8N_PORT".into(), "5678".into())]),
        replicas: 1,
        restarted_at: None,
    }
}
