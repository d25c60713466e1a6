//! The `podium` binary: serve (default) | migrate | seed | admin | billing | print-schema |
//! node-agent | bench.

use std::path::Path;

use anyhow::Context;
use clap::{Parser, Subcommand};
use podium::config::Settings;
use podium::db::embedded::{EmbeddedPostgres, write_private};
use podium::startup::Application;
use podium::{db, graphql, seed, telemetry};

#[derive(Parser)]
#[command(
    name = "podium",
    version,
    about = "GraphQL API server for managed app instances"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server (the default). With no DATABASE_URL, runs the embedded default.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Load the catalog idempotently and exit; with --demo, the demo accounts and nodes too.
    Seed {
        /// Also create the demo accounts (published passwords) and demo worker nodes.
        #[arg(long)]
        demo: bool,
    },
    /// Operator accounts.
    #[command(subcommand)]
    Admin(Admin),
    /// Billing maintenance.
    #[command(subcommand)]
    Billing(Billing),
    /// Print the GraphQL schema (SDL) and exit.
    PrintSchema,
    /// Run on a worker node: send heartbeats describing this machine to the server.
    NodeAgent {
        /// Base URL of the Podium server, e.g. https://api.example.com
        #[arg(long, env = "PODIUM_SERVER")]
        server: String,
        /// The node's token (`pdn_...`), as registerWorkerNode returned it.
        #[arg(long, env = "PODIUM_NODE_TOKEN", hide_env_values = true)]
        token: String,
        /// Time between heartbeats (e.g. 10s, 500ms); never slower than the server asks.
        #[arg(long, default_value = "10s")]
        interval: String,
        /// The filesystem whose use is reported as allocated storage.
        #[arg(long, default_value = "/")]
        disk_path: std::path::PathBuf,
        /// Send one heartbeat and exit.
        #[arg(long)]
        once: bool,
    },
    /// Benchmarks; they print their figures.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Admin {
    /// Create an administrator. The password is the first line of standard input (prompted
    /// for, unechoed, on a terminal), or PODIUM_ADMIN_PASSWORD when that is set.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum Billing {
    /// Recompute every wallet from its ledger, every invoice from its lines and payment,
    /// the invoice numbering and every plan's used quota; print each mismatch and exit
    /// non-zero if there is any. Read-only.
    Verify,
}

#[derive(Subcommand)]
enum Bench {
    /// Heartbeat throughput and latency through the real HTTP + GraphQL path, against a
    /// scratch database next to the configured one (or the embedded default's).
    Heartbeat {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// The hot reads: `{ __typename }`, an authenticated `{ me }` and the anonymous
    /// catalog page (20 services with 3 plans each), each for `--seconds`, on a scratch
    /// database next to the configured one (or the embedded default's).
    Api {
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// N WebSocket subscribers of one instance's status on one server (a child process):
    /// delivery latency from commit to every subscriber and the server's memory; then
    /// instances provisioned per second against the embedded Kubernetes stand-in.
    Fanout {
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Status changes measured (each delivered to every subscriber).
        #[arg(long, default_value_t = 20)]
        changes: usize,
        /// Instances provisioned through the adapter against the stand-in.
        #[arg(long, default_value_t = 500)]
        instances: usize,
    },
    /// One run of the renewal job over N subscriptions whose period just ended, on a
    /// scratch database: renewals per second and the batch's total time.
    Renewals {
        #[arg(long, default_value_t = 100_000)]
        subscriptions: usize,
        /// Subscriptions renewed at once (the database pool is sized to fit).
        #[arg(long, default_value_t = 12)]
        concurrency: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::PrintSchema) = cli.command {
        print!("{}", graphql::sdl());
        return Ok(());
    }
    let _ = dotenvy::dotenv();
    if let Some(Command::NodeAgent {
        server,
        token,
        interval,
        disk_path,
        once,
    }) = cli.command
    {
        telemetry::init(podium::config::LogFormat::Pretty);
        let options = podium::nodes::agent::options(server, token, &interval, disk_path, once)?;
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(podium::nodes::agent::run(options));
    }
    let settings = Settings::from_env()?;
    telemetry::init(settings.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let command = cli.command.unwrap_or(Command::Serve);
            let (settings, embedded) = resolve_database(settings).await?;
            // `billing verify` found mismatches: exit 1 once everything is stopped.
            let mut mismatches = false;
            let result = match command {
                Command::Serve => serve(settings, embedded.as_ref()).await,
                Command::Migrate => {
                    let url = settings.database_url.as_deref().expect("resolved");
                    let applied = db::migrate::run(url).await?;
                    println!("applied {applied} migration(s)");
                    Ok(())
                }
                Command::Seed { demo } => {
                    let url = settings.database_url.as_deref().expect("resolved");
                    db::migrate::run(url).await?;
                    let pool = db::connect_pool(url, 2).await?;
                    let report = if demo {
                        seed::run(&pool, &settings.default_currency).await?
                    } else {
                        seed::catalog(&pool).await?
                    };
                    println!(
                        "seeded: {} new account(s), {} new service(s), {} new node(s)",
                        report.users.len(),
                        report.services.len(),
                        report.nodes.len()
                    );
                    if demo {
                        // Node tokens only where the demo is private to this machine.
                        print!("{}", seed::banner(&report, embedded.is_some()));
                        if embedded.is_none() && !report.nodes.is_empty() {
                            println!(
                                "Demo node tokens are not shown against an external database; \
                                 rotateWorkerNodeToken issues one."
                            );
                        }
                    }
                    Ok(())
                }
                Command::Admin(Admin::Create { email, name }) => {
                    admin_create(&settings, email, name).await
                }
                Command::Billing(Billing::Verify) => {
                    billing_verify(&settings).await.map(|clean| mismatches = !clean)
                }
                Command::Bench(Bench::Heartbeat {
                    nodes,
                    concurrency,
                    seconds,
                }) => {
                    let bench = podium::bench::HeartbeatBench {
                        nodes: nodes.max(1),
                        concurrency: concurrency.max(1),
                        seconds: seconds.max(1),
                    };
                    println!(
                        "heartbeat benchmark: {} nodes, {} concurrent clients, {} s, {} CPU(s), {} build",
                        bench.nodes,
                        bench.concurrency,
                        bench.seconds,
                        std::thread::available_parallelism().map_or(1, |n| n.get()),
                        if cfg!(debug_assertions) { "debug" } else { "release" }
                    );
                    let nodes = bench.nodes;
                    let r = podium::bench::heartbeat(settings, bench).await?;
                    println!("  heartbeats/s  {:.0}", r.per_second);
                    println!("  latency p50   {:.2} ms", r.p50_ms);
                    println!("  latency p99   {:.2} ms", r.p99_ms);
                    println!("  latency max   {:.2} ms", r.max_ms);
                    println!("  heartbeats    {} ({} errors)", r.heartbeats, r.errors);
                    println!("  in database   {}/{nodes} nodes' latest reports written", r.written);
                    Ok(())
                }
                Command::Bench(Bench::Api {
                    concurrency,
                    seconds,
                }) => {
                    let bench = podium::bench::ApiBench {
                        concurrency: concurrency.max(1),
                        seconds: seconds.max(1),
                    };
                    println!(
                        "api benchmark: {} concurrent keep-alive clients, {} s per scenario, {} CPU(s), {} build",
                        bench.concurrency,
                        bench.seconds,
                        std::thread::available_parallelism().map_or(1, |n| n.get()),
                        if cfg!(debug_assertions) { "debug" } else { "release" }
                    );
                    println!(
                        "  the scratch server's per-IP and per-user rate limits are raised to {} per window \
                         (all clients share one address and one user; the limiters still run)",
                        podium::bench::API_BENCH_RATE_LIMIT
                    );
                    let results = podium::bench::api(settings, bench).await?;
                    let base = results.first().map_or(1.0, |r| r.per_second.max(1.0));
                    println!(
                        "  {:<14} {:>9} {:>9} {:>9} {:>13} {:>8}",
                        "scenario", "req/s", "p50 ms", "p99 ms", "of typename", "errors"
                    );
                    for r in &results {
                        println!(
                            "  {:<14} {:>9.0} {:>9.2} {:>9.2} {:>12.1}% {:>8}",
                            r.name,
                            r.per_second,
                            r.p50_ms,
                            r.p99_ms,
                            100.0 * r.per_second / base,
                            r.errors
                        );
                    }
                    Ok(())
                }
                Command::Bench(Bench::Renewals {
                    subscriptions,
                    concurrency,
                }) => {
                    let mut settings = settings;
                    // The cycle uses three quarters of the pool.
                    settings.db_pool_size = (concurrency.max(1) * 4).div_ceil(3) as u32;
                    println!(
                        "renewal benchmark: {subscriptions} subscriptions due, {} at once, {} CPU(s), {} build",
                        concurrency.max(1),
                        std::thread::available_parallelism().map_or(1, |n| n.get()),
                        if cfg!(debug_assertions) { "debug" } else { "release" }
                    );
                    let bench = podium::bench::renewals::RenewalBench { subscriptions };
                    let r = podium::bench::renewals::renewals(settings, bench).await?;
                    println!("  seeded        {subscriptions} due subscriptions in {:.1} s", r.seed_seconds);
                    println!("  renewed       {} in {:.2} s", r.renewed, r.seconds);
                    println!("  throughput    {:.0} renewals/s", r.per_second);
                    println!(
                        "  in database   {} renewal charges, {} invoices (exactly one each: {})",
                        r.charges,
                        r.invoices,
                        if r.charges == subscriptions as i64 && r.invoices == subscriptions as i64 { "yes" } else { "NO" }
                    );
                    println!(
                        "  billing verify {} mismatches ({:.1} s)",
                        r.mismatches, r.verify_seconds
                    );
                    Ok(())
                }
                Command::Bench(Bench::Fanout {
                    subscribers,
                    changes,
                    instances,
                }) => {
                    println!(
                        "fan-out benchmark: {subscribers} WebSocket subscribers of one instance, {changes} status changes, {} CPU(s), {} build",
                        std::thread::available_parallelism().map_or(1, |n| n.get()),
                        if cfg!(debug_assertions) { "debug" } else { "release" }
                    );
                    let bench = podium::bench::fanout::FanoutBench {
                        subscribers,
                        changes,
                        instances,
                    };
                    let r = podium::bench::fanout::fanout(settings, bench).await?;
                    println!("  subscribed    {subscribers} sockets listening after {:.1} s", r.subscribed_seconds);
                    println!(
                        "  delivered     {} events ({} missing)",
                        r.deliveries, r.missing
                    );
                    println!(
                        "  latency       p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (commit to subscriber; target p99 < 100 ms)",
                        r.p50_ms, r.p99_ms, r.max_ms
                    );
                    println!(
                        "  server memory {:.0} MB before the sockets, {:.0} MB with them, peak {:.0} MB (target < 300 MB)",
                        r.rss_before_mb, r.rss_subscribed_mb, r.rss_peak_mb
                    );
                    println!(
                        "  provisioning  {} instances in {:.2} s against the embedded stand-in: {:.0} instances/s",
                        r.provisioned,
                        r.provision_seconds,
                        r.provisioned as f64 / r.provision_seconds.max(1e-9)
                    );
                    Ok(())
                }
                Command::PrintSchema | Command::NodeAgent { .. } => unreachable!(),
            };
            if let Some(pg) = embedded {
                pg.stop().await;
            }
            if result.is_ok() && mismatches {
                std::process::exit(1);
            }
            result
        })
}

/// With no DATABASE_URL, starts the embedded PostgreSQL and uses (or creates) the
/// JWT secret kept in the data directory.
async fn resolve_database(
    mut settings: Settings,
) -> anyhow::Result<(Settings, Option<EmbeddedPostgres>)> {
    if !settings.is_embedded() {
        return Ok((settings, None));
    }
    tracing::warn!(
        data_dir = %settings.data_dir.display(),
        "no DATABASE_URL: running the embedded default (private PostgreSQL in the data directory)"
    );
    let pg = EmbeddedPostgres::start(&settings.data_dir).await?;
    settings.database_url = Some(pg.database_url().into());
    if settings.jwt_secret.is_none() {
        settings.jwt_secret = Some(embedded_jwt_secret(&settings.data_dir)?.into());
    }
    Ok((settings, Some(pg)))
}

fn embedded_jwt_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("jwt-secret");
    if let Ok(secret) = std::fs::read_to_string(&path) {
        return Ok(secret.trim().to_string());
    }
    let secret = podium::auth::new_opaque_token("");
    write_private(&path, &secret).context("keeping the generated JWT secret")?;
    Ok(secret)
}

async fn admin_create(settings: &Settings, email: String, name: String) -> anyhow::Result<()> {
    let password = admin_password()?;
    let url = settings.database_url.as_deref().expect("resolved");
    db::migrate::run(url).await?;
    let pool = db::connect_pool(url, 1).await?;
    let mut conn = pool.get().await?;
    let input = podium::users::service::AccountInput {
        name,
        email,
        password,
    };
    match podium::users::service::create_administrator(&mut conn, input).await {
        Ok(user) => {
            println!("administrator {} created (id {})", user.email, user.id);
            Ok(())
        }
        Err(podium::error::AppError::Internal(e)) => Err(e.context("creating the administrator")),
        Err(e) => anyhow::bail!("cannot create the administrator: {}", e.message()),
    }
}

/// `podium billing verify`: the report on standard output; whether it found no mismatch.
async fn billing_verify(settings: &Settings) -> anyhow::Result<bool> {
    let url = settings.database_url.as_deref().expect("resolved");
    let pool = db::connect_pool(url, 1).await?;
    let mut conn = pool.get().await?;
    if !db::migrate::is_current(&mut conn, &db::migrate::latest_version()).await? {
        anyhow::bail!("the database has migrations pending: run `podium migrate` first");
    }
    let report = match podium::billing::service::verify(&mut conn).await {
        Ok(report) => report,
        Err(podium::error::AppError::Internal(e)) => return Err(e.context("running the check")),
        Err(e) => anyhow::bail!("cannot run the check: {}", e.message()),
    };
    print!("{report}");
    Ok(report.is_clean())
}

/// PODIUM_ADMIN_PASSWORD, else the first line of standard input (unechoed on a terminal).
fn admin_password() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal};
    if let Ok(password) = std::env::var("PODIUM_ADMIN_PASSWORD")
        && !password.is_empty()
    {
        return Ok(password);
    }
    let stdin = std::io::stdin();
    let echo_off = stdin.is_terminal().then(|| {
        eprint!("Password for the new administrator: ");
        EchoOff::new()
    });
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if echo_off.is_some() {
        eprintln!();
    }
    drop(echo_off);
    read.context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        anyhow::bail!(
            "no password given: write it as the first line of standard input, or set PODIUM_ADMIN_PASSWORD"
        );
    }
    Ok(password)
}

/// Turns the terminal's echo off on standard input until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> Self {
        // SAFETY: termios is plain data; tcgetattr fills it or fails, and then we leave it alone.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut saved) != 0 {
                return EchoOff(None);
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet);
            EchoOff(Some(saved))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
        }
    }
}

async fn serve(settings: Settings, embedded: Option<&EmbeddedPostgres>) -> anyhow::Result<()> {
    let data_dir = settings.data_dir.clone();
    let app = Application::build(settings).await?;
    // Demo accounts only in the embedded default, once; `podium seed` loads them elsewhere.
    if embedded.is_some() {
        let marker = data_dir.join("seeded");
        if !marker.exists() {
            let report =
                seed::run(&app.state().pool, &app.state().settings.default_currency).await?;
            std::fs::write(&marker, "demo data loaded\n")?;
            podium::provisioner::simulate_known_nodes(app.state())
                .await
                .map_err(podium::error::AppError::into_anyhow)?;
            println!(
                "\nPodium demo data loaded (first start of the embedded default). {}",
                seed::banner(&report, true)
            );
        }
    }
    tracing::info!(
        url = %format!("{}/graphql", app.state().settings.public_url),
        port = app.port(),
        "Podium is listening"
    );
    app.run_until_stopped().await?;
    tracing::info!("server stopped");
    Ok(())
}
