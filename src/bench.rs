//! Benchmarks against a server on a scratch database next to the configured one.
//!
//! `podium bench heartbeat`: registers N nodes and sends heartbeats from C concurrent
//! clients over keep-alive HTTP for S seconds, then prints throughput and latency
//! percentiles, and checks the reports reached the database.
//!
//! `podium bench api`: the hot reads (`{ __typename }`, an authenticated `{ me }`, the
//! anonymous catalog page) from C concurrent keep-alive clients, S seconds each.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use diesel::sql_types::{Array, Bytea, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::auth::{new_opaque_token, token_hash};
use crate::config::Settings;
use crate::startup::Application;

pub mod fanout;
pub mod renewals;

pub struct HeartbeatBench {
    pub nodes: usize,
    pub concurrency: usize,
    pub seconds: u64,
}

pub struct BenchReport {
    pub heartbeats: usize,
    pub errors: usize,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub written: i64,
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (prefix, _) = base.rsplit_once('/').unwrap_or((base, ""));
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}

pub async fn heartbeat(settings: Settings, bench: HeartbeatBench) -> anyhow::Result<BenchReport> {
    on_scratch_database(settings, async |settings, url| {
        run(settings, url, &bench).await
    })
    .await
}

/// Runs `f` against a new database next to the configured one, dropped afterwards.
pub(crate) async fn on_scratch_database<T>(
    settings: Settings,
    f: impl AsyncFnOnce(Settings, &str) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let url = settings
        .database_url
        .clone()
        .context("a database is needed")?;
    let scratch = format!("podium_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = AsyncPgConnection::establish(&url).await?;
    diesel::sql_query(format!("CREATE DATABASE {scratch}"))
        .execute(&mut admin)
        .await
        .context("creating the scratch database (the database user needs CREATEDB)")?;
    let scratch_url = with_database(&url, &scratch);
    let result = f(settings, &scratch_url).await;
    let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    result
}

async fn run(settings: Settings, url: &str, bench: &HeartbeatBench) -> anyhow::Result<BenchReport> {
    // The rate limits stay as configured (as shipped, by default): heartbeats of known
    // nodes are counted per node, so one load generator on one address is not throttled.
    let (address, handle, state, server) = start_server(settings, url).await?;

    // Register the nodes in one statement, as a running fleet (ACTIVE and ready): the
    // steady state. A status change is a write of its own and not what this measures.
    let tokens: Vec<String> = (0..bench.nodes)
        .map(|_| new_opaque_token(crate::nodes::TOKEN_PREFIX))
        .collect();
    let names: Vec<String> = (0..bench.nodes).map(|i| format!("bench-{i}")).collect();
    let hashes: Vec<Vec<u8>> = tokens.iter().map(|t| token_hash(t)).collect();
    let mut conn = AsyncPgConnection::establish(url).await?;
    diesel::sql_query(
        "INSERT INTO worker_nodes (name, hostname, ip_address, cpu_cores, memory_mb, storage_mb, token_hash,
                                   status, is_ready, last_heartbeat)
         SELECT n, n || '.bench', '10.0.0.1', 8, 32768, 500000, h, 'ACTIVE', TRUE, now()
         FROM unnest($1, $2) AS t(n, h)",
    )
    .bind::<Array<Text>, _>(&names)
    .bind::<Array<Bytea>, _>(&hashes)
    .execute(&mut conn)
    .await?;
    // As if the server had started with these nodes registered.
    state
        .heartbeats
        .reload(&state.pool)
        .await
        .map_err(|e| anyhow::anyhow!("loading node tokens: {e:?}"))?;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(bench.concurrency)
        .build()?;
    let measured = load(
        &client,
        &address,
        (bench.concurrency, bench.seconds),
        BODY.to_string(),
        tokens.iter().map(|t| format!("Bearer {t}")).collect(),
    )
    .await;

    // Every acknowledged report is in the database within a flush interval.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    #[derive(diesel::QueryableByName)]
    struct Written {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let written: Written =
        diesel::sql_query("SELECT count(*) AS n FROM worker_nodes WHERE last_heartbeat >= $1")
            .bind::<diesel::sql_types::Timestamptz, _>(measured.since)
            .get_result(&mut conn)
            .await?;
    drop(conn);
    handle.stop(true).await;
    let _ = server.await;

    let latencies = &measured.latencies;
    Ok(BenchReport {
        heartbeats: latencies.len(),
        errors: measured.errors,
        per_second: latencies.len() as f64 / measured.seconds,
        p50_ms: percentile(latencies, 0.50),
        p99_ms: percentile(latencies, 0.99),
        max_ms: percentile(latencies, 1.0),
        written: written.n,
    })
}

/// One heartbeat, as a node agent sends it.
const BODY: &str = r#"{"query":"mutation Heartbeat($i: NodeHeartbeatInput) { nodeHeartbeat(input: $i) { status nextHeartbeatInSeconds } }","variables":{"i":{"isReady":true,"currentPods":3,"allocatedCpu":1.25,"allocatedMemoryMb":2048,"allocatedStorageMb":10240}}}"#;

pub struct ApiBench {
    pub concurrency: usize,
    pub seconds: u64,
}

/// The per-address and per-user limits of the scratch server: every client of the
/// benchmark shares one address (and, for `me`, one user), so the shipped limits
/// would answer RATE_LIMITED after a few hundred requests. The limiters still run.
pub const API_BENCH_RATE_LIMIT: u32 = 1_000_000_000;

pub struct Scenario {
    pub name: &'static str,
    pub requests: usize,
    pub errors: usize,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The anonymous catalog page: 20 services with their plans, without `totalCount`.
pub const CATALOG_PAGE: &str = "{ services(first: 20) { edges { node { id slug name plans { id name monthlyPrice { amount currency } } } } } }";

pub async fn api(settings: Settings, bench: ApiBench) -> anyhow::Result<Vec<Scenario>> {
    on_scratch_database(settings, async |settings, url| {
        run_api(settings, url, &bench).await
    })
    .await
}

async fn run_api(
    mut settings: Settings,
    url: &str,
    bench: &ApiBench,
) -> anyhow::Result<Vec<Scenario>> {
    settings.rate_limit_per_ip = API_BENCH_RATE_LIMIT;
    settings.rate_limit_per_user = API_BENCH_RATE_LIMIT;
    let (address, handle, state, server) = start_server(settings, url).await?;

    // 20 public services with 3 active plans each, and one signed-in user.
    let mut conn = AsyncPgConnection::establish(url).await?;
    diesel::sql_query(
        "WITH s AS (INSERT INTO services (slug, name, description, docker_image, container_port)
                    SELECT 'bench-' || g, 'Bench service ' || g, 'A service to measure with', 'nginx:1.27', 80
                    FROM generate_series(1, 20) g RETURNING id)
         INSERT INTO service_plans (service_id, name, plan_type, monthly_price, currency, cpu_milli, memory_mb, storage_gb)
         SELECT s.id, p.name, 'BASIC', p.price, 'IDR', 500, 512, 5
         FROM s, (VALUES ('Small', 50000), ('Medium', 100000), ('Large', 200000)) AS p(name, price)",
    )
    .execute(&mut conn)
    .await?;
    drop(conn);
    let account = crate::users::service::AccountInput {
        name: "Bench User".into(),
        email: "bench@example.com".into(),
        password: "bench-password-0123".into(),
    };
    let registered =
        crate::auth::service::register(&state, account, &crate::state::ClientInfo::default())
            .await
            .map_err(|e| anyhow::anyhow!("registering the bench user: {e:?}"))?;
    let crate::auth::service::Registration::SignedIn(tokens) = registered else {
        anyhow::bail!("the bench registers with PODIUM_REQUIRE_VERIFIED_EMAIL off");
    };
    let bearer = format!("Bearer {}", tokens.access_token);

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(bench.concurrency)
        .build()?;
    let catalog = client
        .post(&address)
        .json(&serde_json::json!({ "query": CATALOG_PAGE }))
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?;
    let edges = catalog["data"]["services"]["edges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    anyhow::ensure!(
        edges.len() == 20
            && edges
                .iter()
                .all(|e| e["node"]["plans"].as_array().is_some_and(|p| p.len() == 3)),
        "the catalog page is not 20 services with 3 plans each: {catalog}"
    );

    let scenarios: [(&str, String, Option<&str>); 3] = [
        ("__typename", body("{ __typename }"), None),
        ("me", body("{ me { id name email role } }"), Some(&bearer)),
        ("catalog page", body(CATALOG_PAGE), None),
    ];
    let mut results = Vec::new();
    for (name, body, authorization) in scenarios {
        let measured = load(
            &client,
            &address,
            (bench.concurrency, bench.seconds),
            body,
            authorization.map(str::to_string).into_iter().collect(),
        )
        .await;
        let latencies = &measured.latencies;
        results.push(Scenario {
            name,
            requests: latencies.len(),
            errors: measured.errors,
            per_second: latencies.len() as f64 / measured.seconds,
            p50_ms: percentile(latencies, 0.50),
            p99_ms: percentile(latencies, 0.99),
        });
    }
    handle.stop(true).await;
    let _ = server.await;
    Ok(results)
}

fn body(query: &str) -> String {
    serde_json::json!({ "query": query }).to_string()
}

/// Milliseconds at percentile `p` of sorted microsecond latencies.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)] as f64 / 1000.0
}

/// A server for the benchmark on the scratch database `url`, on a free port, without
/// job workers; returns its GraphQL URL, handle, state and task.
async fn start_server(
    mut settings: Settings,
    url: &str,
) -> anyhow::Result<(
    String,
    actix_web::dev::ServerHandle,
    crate::state::AppState,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    settings.database_url = Some(url.to_string().into());
    settings.listen = "127.0.0.1:0".parse()?;
    settings.jobs_enabled = false;
    let app = Application::build(settings).await?;
    let address = format!("http://127.0.0.1:{}/graphql", app.port());
    let handle = app.handle();
    let state = app.state().clone();
    let server = tokio::spawn(app.run_until_stopped());
    Ok((address, handle, state, server))
}

/// What one load run measured: sorted latencies (µs) of the answers without errors.
struct Load {
    latencies: Vec<u32>,
    errors: usize,
    /// Seconds measured (after the warm-up).
    seconds: f64,
    /// When measuring began.
    since: chrono::DateTime<chrono::Utc>,
}

/// `concurrency` clients send `body` in a loop, each request with the next of
/// `authorizations` in turn (none if empty): one second of warm-up, then `seconds`
/// measured.
async fn load(
    client: &reqwest::Client,
    address: &str,
    (concurrency, seconds): (usize, u64),
    body: String,
    authorizations: Vec<String>,
) -> Load {
    let authorizations = Arc::new(authorizations);
    let next = Arc::new(AtomicUsize::new(0));
    let recording = Arc::new(AtomicBool::new(false));
    let warmup = Duration::from_secs(1);
    let stop_at = Instant::now() + warmup + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, recording, address, body, authorizations, next) = (
                client.clone(),
                recording.clone(),
                address.to_string(),
                body.clone(),
                authorizations.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                let mut latencies: Vec<u32> = Vec::with_capacity(1 << 16);
                let mut errors = 0usize;
                while Instant::now() < stop_at {
                    let t0 = Instant::now();
                    let mut request = client
                        .post(&address)
                        .header("content-type", "application/json")
                        .body(body.clone());
                    if !authorizations.is_empty() {
                        let i = next.fetch_add(1, Ordering::Relaxed) % authorizations.len();
                        request = request.header("authorization", &authorizations[i]);
                    }
                    let ok = match request.send().await {
                        Ok(resp) => {
                            resp.status().is_success()
                                && resp
                                    .bytes()
                                    .await
                                    .is_ok_and(|b| !b.windows(8).any(|w| w == b"\"errors\""))
                        }
                        Err(_) => false,
                    };
                    if AtomicBool::load(&recording, Ordering::Relaxed) {
                        if ok {
                            latencies.push(t0.elapsed().as_micros() as u32);
                        } else {
                            errors += 1;
                        }
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    tokio::time::sleep(warmup).await;
    recording.store(true, Ordering::Relaxed);
    let measured_from = Instant::now();
    let since = chrono::Utc::now();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        if let Ok((l, e)) = w.await {
            latencies.extend(l);
            errors += e;
        }
    }
    let seconds = measured_from.elapsed().as_secs_f64();
    latencies.sort_unstable();
    Load {
        latencies,
        errors,
        seconds,
        since,
    }
}
