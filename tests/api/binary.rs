//! The `podium` binary as operators run it: the embedded default with nothing set (its own
//! PostgreSQL, demo data once, data kept across restarts), against an external database, and
//! killed with SIGKILL in the middle of a job.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use podium::jobs::{DIAGNOSTIC_SLEEP, model};
use serde_json::json;

use crate::helpers::*;
use crate::jobs::job_row;

struct TempDir(PathBuf);

impl TempDir {
    fn new(mode: u32) -> Self {
        let path = PathBuf::from(format!(
            "/tmp/podium-embedded-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    /// Also kills any PostgreSQL left working in the directory by a failed test.
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for pid in entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            {
                if std::fs::read_link(format!("/proc/{pid}/cwd"))
                    .is_ok_and(|cwd| cwd.starts_with(&self.0))
                    && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "postgres")
                {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    crate::helpers::unused_port()
}

/// Runs `podium ARGS` with only the given Podium variables set, output to `log`.
fn podium_with(args: &[&str], env: &[(&str, &str)], log: &Path) -> Child {
    podium_command(args, env, log)
        .spawn()
        .expect("starting podium")
}

/// Runs `podium ARGS` to its end with `input` on standard input.
fn podium_input(args: &[&str], env: &[(&str, &str)], log: &Path, input: &str) -> bool {
    use std::io::Write;
    let mut child = podium_command(args, env, log)
        .stdin(Stdio::piped())
        .spawn()
        .expect("starting podium");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait().unwrap().success()
}

fn podium_command(args: &[&str], env: &[(&str, &str)], log: &Path) -> Command {
    let log = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_podium"));
    for (key, _) in std::env::vars() {
        if key.starts_with("PODIUM_") || key == "DATABASE_URL" {
            cmd.env_remove(key);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env("PODIUM_WORKERS", "1")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    cmd
}

/// The embedded default: nothing set but where to keep data and listen.
fn podium(data_dir: &Path, port: u16, log: &Path) -> Child {
    let listen = format!("127.0.0.1:{port}");
    podium_with(
        &[],
        &[
            ("PODIUM_DATA_DIR", data_dir.to_str().unwrap()),
            ("PODIUM_LISTEN", &listen),
        ],
        log,
    )
}

/// Registers `kept@example.com`: data a restart must keep.
async fn register_kept(client: &reqwest::Client, port: u16) {
    gql(
        client,
        port,
        None,
        "mutation { register(input: {name: \"Kept\", email: \"kept@example.com\", password: \"Password123\"}) { accessToken } }",
        json!({}),
    )
    .await
    .ok();
}

async fn wait_ready(client: &reqwest::Client, port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "podium exited with {status}: {}",
                std::fs::read_to_string(log).unwrap()
            );
        }
        assert!(
            Instant::now() < deadline,
            "not ready in time: {}",
            std::fs::read_to_string(log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop(child: &mut Child, signal: i32) {
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "clean exit after signal {signal}: {status}"
            );
            return;
        }
        assert!(Instant::now() < deadline, "podium did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn gql(
    client: &reqwest::Client,
    port: u16,
    token: Option<&str>,
    query: &str,
    vars: serde_json::Value,
) -> Gql {
    gql_at(
        client,
        &format!("http://127.0.0.1:{port}"),
        token,
        query,
        vars,
    )
    .await
}

async fn user_count(client: &reqwest::Client, port: u16, token: &str) -> serde_json::Value {
    let r = gql(
        client,
        port,
        Some(token),
        "{ users { totalCount } }",
        json!({}),
    )
    .await
    .ok();
    r.data("users.totalCount").clone()
}

const LOGIN: &str = "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { accessToken } }";

#[tokio::test(flavor = "multi_thread")]
async fn embedded_default_runs_with_nothing_set_and_keeps_data() {
    let dir = TempDir::new(0o755);
    let data = dir.0.join("data");
    let client = reqwest::Client::new();
    let port = free_port();

    let first_log = dir.0.join("first.log");
    let mut child = podium(&data, port, &first_log);
    wait_ready(&client, port, &mut child, &first_log).await;
    let admin = gql(
        &client,
        port,
        None,
        LOGIN,
        json!({ "e": ADMIN_EMAIL, "p": ADMIN_PASSWORD }),
    )
    .await
    .ok()
    .str("login.accessToken");
    assert_eq!(user_count(&client, port, &admin).await, json!(2));
    register_kept(&client, port).await;
    stop(&mut child, libc::SIGINT);
    assert!(
        !data.join("postgres/postmaster.pid").exists(),
        "PostgreSQL stopped with the server"
    );
    let first_output = std::fs::read_to_string(&first_log).unwrap();
    assert!(
        first_output.contains("admin@paas.com"),
        "first start prints the demo logins"
    );
    assert!(
        first_output.contains("pdn_"),
        "and the demo nodes' tokens: {first_output}"
    );

    let second_log = dir.0.join("second.log");
    let mut child = podium(&data, port, &second_log);
    wait_ready(&client, port, &mut child, &second_log).await;
    gql(
        &client,
        port,
        None,
        LOGIN,
        json!({ "e": "kept@example.com", "p": "Password123" }),
    )
    .await
    .ok();
    assert_eq!(
        user_count(&client, port, &admin).await,
        json!(3),
        "the JWT secret and the data survived"
    );
    stop(&mut child, libc::SIGTERM);
    assert!(
        !std::fs::read_to_string(&second_log)
            .unwrap()
            .contains("Demo logins"),
        "seeded once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_data_directory_is_explained() {
    if unsafe { libc::geteuid() } != 0 {
        return; // Only root hands the server to the `postgres` user.
    }
    let closed = TempDir::new(0o700);
    let log = closed.0.join("out.log");
    let mut child = podium(&closed.0.join("data"), free_port(), &log);
    let status = child.wait().unwrap();
    assert!(!status.success());
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(
        output.contains("cannot reach") && output.contains("PODIUM_DATA_DIR"),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn external_database_has_no_published_password_until_admin_create_or_seed_demo() {
    let url = fresh_database(false).await;
    let dir = TempDir::new(0o755);
    let client = reqwest::Client::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data_dir = dir.0.join("unused-data");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("PODIUM_JWT_SECRET", JWT_SECRET),
        ("PODIUM_LISTEN", listen.as_str()),
        ("PODIUM_DATA_DIR", data_dir.to_str().unwrap()),
    ];
    let read = |log: &Path| std::fs::read_to_string(log).unwrap();
    let demo_admin_login = async || {
        gql(
            &client,
            port,
            None,
            LOGIN,
            json!({ "e": ADMIN_EMAIL, "p": ADMIN_PASSWORD }),
        )
        .await
    };

    let log = dir.0.join("serve.log");
    let mut child = podium_with(&[], &env, &log);
    wait_ready(&client, port, &mut child, &log).await;
    assert_eq!(
        demo_admin_login().await.code(),
        "UNAUTHENTICATED",
        "no demo accounts against an external database"
    );
    stop(&mut child, libc::SIGTERM);
    assert!(!data_dir.exists(), "no embedded cluster either");

    // `podium migrate && podium seed` (twice: idempotent) loads the catalog, no accounts.
    let log = dir.0.join("migrate.log");
    assert!(
        podium_with(&["migrate"], &env, &log)
            .wait()
            .unwrap()
            .success()
    );
    for run in 0..2 {
        let log = dir.0.join(format!("seed{run}.log"));
        let status = podium_with(&["seed"], &env, &log).wait().unwrap();
        assert!(status.success(), "{}", read(&log));
        assert!(
            read(&log).contains("seeded: 0 new account(s)"),
            "{}",
            read(&log)
        );
    }
    let log = dir.0.join("migrate.log");
    assert!(
        podium_with(&["migrate"], &env, &log)
            .wait()
            .unwrap()
            .success()
    );
    assert!(read(&log).contains("applied 0 migration(s)"));

    let log = dir.0.join("serve2.log");
    let mut child = podium_with(&[], &env, &log);
    wait_ready(&client, port, &mut child, &log).await;
    assert_eq!(
        demo_admin_login().await.code(),
        "UNAUTHENTICATED",
        "`podium seed` creates no account with a published password"
    );
    let services = gql(
        &client,
        port,
        None,
        "{ services { totalCount } }",
        json!({}),
    )
    .await
    .ok();
    assert!(
        services.data("services.totalCount").as_i64().unwrap() > 0,
        "the catalog was seeded"
    );

    // The operator's own administrator, password on standard input.
    let create = [
        "admin",
        "create",
        "--email",
        "Ops@Example.com",
        "--name",
        "Ops",
    ];
    let log = dir.0.join("admin.log");
    assert!(
        podium_input(&create, &env, &log, "Operator-pass-42\n"),
        "{}",
        read(&log)
    );
    assert!(
        !read(&log).contains("Operator-pass-42"),
        "the password is not echoed"
    );
    let ops = gql(
        &client,
        port,
        None,
        LOGIN,
        json!({ "e": "ops@example.com", "p": "Operator-pass-42" }),
    )
    .await
    .ok()
    .str("login.accessToken");
    assert_eq!(
        user_count(&client, port, &ops).await,
        json!(1),
        "an administrator, and the only account"
    );
    let audit = gql(
        &client,
        port,
        Some(&ops),
        "{ auditLog(action: \"user.create\") { nodes { actorId metadata } } }",
        json!({}),
    )
    .await
    .ok();
    assert_eq!(
        audit.data("auditLog.nodes").clone(),
        json!([{ "actorId": null, "metadata": { "email": "ops@example.com", "role": "ADMINISTRATOR", "isActive": true, "via": "cli" } }]),
        "audited, with no actor"
    );

    // Bad input and an existing email: a clear message and a failure exit.
    assert!(!podium_input(&create, &env, &log, "Another-pass-42\n"));
    assert!(read(&log).contains("already exists"), "{}", read(&log));
    let weak = [
        "admin",
        "create",
        "--email",
        "weak@example.com",
        "--name",
        "W",
    ];
    assert!(!podium_input(&weak, &env, &log, "short\n"));
    assert!(read(&log).contains("password"), "{}", read(&log));
    assert!(!podium_input(&weak, &env, &log, ""));
    assert!(read(&log).contains("no password given"), "{}", read(&log));
    // PODIUM_ADMIN_PASSWORD instead of standard input.
    let with_password: Vec<_> = env
        .iter()
        .copied()
        .chain([("PODIUM_ADMIN_PASSWORD", "From-env-pass-42")])
        .collect();
    assert!(
        podium_input(&weak, &with_password, &log, ""),
        "{}",
        read(&log)
    );
    gql(
        &client,
        port,
        None,
        LOGIN,
        json!({ "e": "weak@example.com", "p": "From-env-pass-42" }),
    )
    .await
    .ok();

    // The demo accounts only when asked for, and no node tokens outside the embedded default.
    for run in 0..2 {
        let log = dir.0.join(format!("demo{run}.log"));
        let status = podium_with(&["seed", "--demo"], &env, &log).wait().unwrap();
        assert!(status.success(), "{}", read(&log));
        assert!(!read(&log).contains("pdn_"), "{}", read(&log));
    }
    let admin = demo_admin_login().await.ok().str("login.accessToken");
    assert_eq!(
        user_count(&client, port, &admin).await,
        json!(4),
        "seeded once, twice run"
    );
    stop(&mut child, libc::SIGTERM);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_setting_is_named_at_start() {
    let dir = TempDir::new(0o755);
    let log = dir.0.join("out.log");
    let env = [("DATABASE_URL", "postgres://x@127.0.0.1:1/none")];
    assert!(!podium_with(&[], &env, &log).wait().unwrap().success());
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("PODIUM_JWT_SECRET")
    );
    let env = [("PODIUM_LISTEN", "not-an-address")];
    assert!(!podium_with(&[], &env, &log).wait().unwrap().success());
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("PODIUM_LISTEN")
    );
}

/// Polls the job until `done` holds for it, failing after `secs` with the server's log.
async fn wait_for_job(
    conn: &mut diesel_async::AsyncPgConnection,
    id: uuid::Uuid,
    secs: u64,
    log: &Path,
    done: impl Fn(&model::Job) -> bool,
) -> model::Job {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let job = job_row(conn, id).await;
        if done(&job) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {job:?} after {secs} s; log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_whose_server_is_killed_is_finished_by_another_instance_exactly_once() {
    use diesel_async::AsyncConnection;
    let url = fresh_database(true).await;
    let mut conn = diesel_async::AsyncPgConnection::establish(&url)
        .await
        .unwrap();
    let dir = TempDir::new(0o755);
    let client = reqwest::Client::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data_dir = dir.0.join("unused-data");
    let lease = [
        ("PODIUM_JOB_LEASE_SECS", "2"),
        ("PODIUM_JOB_POLL_MS", "100"),
        ("PODIUM_JOB_WORKERS", "1"),
    ];
    let mut env = vec![
        ("DATABASE_URL", url.as_str()),
        ("PODIUM_JWT_SECRET", JWT_SECRET),
        ("PODIUM_LISTEN", listen.as_str()),
        ("PODIUM_DATA_DIR", data_dir.to_str().unwrap()),
    ];
    env.extend(lease);
    let log = dir.0.join("a.log");
    let mut a = podium_with(&[], &env, &log);
    wait_ready(&client, port, &mut a, &log).await;

    // Four seconds of work, twice the lease: A must renew it to keep the job.
    model::enqueue(
        &mut conn,
        DIAGNOSTIC_SLEEP,
        json!({ "ms": 4000 }),
        chrono::Utc::now(),
        Some("killed-mid-job"),
    )
    .await
    .unwrap();
    let id: uuid::Uuid = podium::db::schema::jobs::table
        .filter(podium::db::schema::jobs::unique_key.eq("killed-mid-job"))
        .select(podium::db::schema::jobs::id)
        .first(&mut conn)
        .await
        .unwrap();
    let a_marker = format!("-{}-", a.id());
    let claimed = wait_for_job(&mut conn, id, 30, &log, |j| {
        j.status == model::JobStatus::Running
            && j.locked_by
                .as_deref()
                .is_some_and(|w| w.contains(&a_marker))
    })
    .await;
    let a_worker = claimed.locked_by.clone().unwrap();
    let first_lease = claimed.lease_expires_at.unwrap();
    wait_for_job(&mut conn, id, 10, &log, |j| {
        j.lease_expires_at.is_some_and(|l| l > first_lease)
    })
    .await;

    unsafe { libc::kill(a.id() as i32, libc::SIGKILL) };
    a.wait().unwrap();
    let orphan = job_row(&mut conn, id).await;
    assert_eq!(
        orphan.status,
        model::JobStatus::Running,
        "A died holding it"
    );
    assert_eq!(
        orphan.payload.get("completions"),
        None,
        "A never finished it"
    );

    // Instance B (in-process, same database) takes the job over once A's lease runs out.
    let b = spawn_app_on(&url, &lease).await;
    let done = wait_for_job(&mut conn, id, 30, &log, |j| {
        j.status != model::JobStatus::Running && j.status != model::JobStatus::Queued
    })
    .await;
    assert_eq!(done.status, model::JobStatus::Succeeded, "{done:?}");
    assert_eq!(done.attempts, 2, "A's lost attempt and B's: {done:?}");
    assert_eq!(
        done.payload["completions"], 1,
        "ran to its end exactly once"
    );
    let b_worker = done.locked_by.clone().unwrap();
    assert!(
        b_worker.contains(&format!("-{}-", std::process::id())),
        "B finished it: {b_worker}"
    );
    let error = done.last_error.clone().unwrap();
    assert!(
        error.contains("lease expired") && error.contains(&a_worker),
        "{error}"
    );
    assert!(
        !model::succeed(&mut conn, id, &a_worker).await.unwrap()
            && !model::fail(&mut conn, &claimed, &a_worker, "late", None)
                .await
                .unwrap(),
        "A's lease no longer lets anything complete it"
    );
    assert_eq!(
        job_row(&mut conn, id).await.status,
        model::JobStatus::Succeeded
    );
    drop(b);
}

/// Kills the child when dropped (a failing test leaves no server behind).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn count_of(conn: &mut diesel_async::AsyncPgConnection, sql: &str) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<N>(conn)
        .await
        .unwrap()
        .n
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_batch_killed_half_way_and_run_again_charges_each_subscription_once() {
    use diesel_async::AsyncConnection;
    const DUE: usize = 20_000;
    let url = fresh_database(true).await;
    let setup = spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await;
    setup.seed().await;
    let mut conn = diesel_async::AsyncPgConnection::establish(&url)
        .await
        .unwrap();
    let plan: uuid::Uuid = podium::db::schema::service_plans::table
        .inner_join(podium::db::schema::services::table)
        .filter(podium::db::schema::services::slug.eq("ghost"))
        .filter(podium::db::schema::service_plans::name.eq("Basic"))
        .select(podium::db::schema::service_plans::id)
        .first(&mut conn)
        .await
        .unwrap();
    podium::bench::renewals::seed_due(&mut conn, DUE, plan, chrono::Utc::now())
        .await
        .unwrap();
    drop(setup);

    // The real server renews on a cron tick every second; it is killed mid-batch.
    let dir = TempDir::new(0o755);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data_dir = dir.0.join("unused-data");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("PODIUM_JWT_SECRET", JWT_SECRET),
        ("PODIUM_LISTEN", listen.as_str()),
        ("PODIUM_DATA_DIR", data_dir.to_str().unwrap()),
        ("PODIUM_BILLING_RENEWAL_CRON", "* * * * * *"),
        ("PODIUM_JOB_POLL_MS", "50"),
    ];
    let log = dir.0.join("renewals.log");
    let mut server = KillOnDrop(podium_with(&[], &env, &log));
    wait_ready(&reqwest::Client::new(), port, &mut server.0, &log).await;
    let renewals = "SELECT count(*) AS n FROM wallet_transactions WHERE type = 'RENEWAL'";
    let deadline = Instant::now() + Duration::from_secs(60);
    let partial = loop {
        let n = count_of(&mut conn, renewals).await;
        if n > 0 {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal started: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    unsafe { libc::kill(server.0.id() as i32, libc::SIGKILL) };
    server.0.wait().unwrap();
    let after_kill = count_of(&mut conn, renewals).await;
    assert!(
        partial < DUE as i64 && after_kill < DUE as i64,
        "killed half-way: {after_kill} of {DUE} renewed"
    );

    // Another instance runs the renewals again: every subscription charged exactly once.
    let again = spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await;
    let summary = podium::subscriptions::cycle::run_renewals(&again.state)
        .await
        .unwrap();
    assert_eq!(
        summary.renewed as i64 + after_kill,
        DUE as i64,
        "{summary:?}"
    );
    assert_eq!(count_of(&mut conn, renewals).await, DUE as i64);
    let twice = count_of(
        &mut conn,
        "SELECT count(*) AS n FROM (SELECT subscription_id FROM wallet_transactions WHERE type = 'RENEWAL'
         GROUP BY subscription_id HAVING count(*) > 1) t",
    )
    .await;
    assert_eq!(twice, 0, "no subscription charged twice");
    assert_eq!(
        count_of(&mut conn, "SELECT count(*) AS n FROM invoices").await,
        DUE as i64
    );
    let unrenewed = count_of(
        &mut conn,
        "SELECT count(*) AS n FROM service_subscriptions WHERE current_period_end <= now()",
    )
    .await;
    assert_eq!(unrenewed, 0, "no period skipped");
    // Each moved on by exactly one period, the one its charge paid.
    let off = count_of(
        &mut conn,
        "SELECT count(*) AS n FROM service_subscriptions s JOIN invoices i ON i.subscription_id = s.id
         WHERE i.period_start <> s.current_period_start OR i.period_end <> s.current_period_end",
    )
    .await;
    assert_eq!(off, 0, "every period is the one its invoice billed");
    let starts = count_of(
        &mut conn,
        "SELECT count(DISTINCT current_period_start) AS n FROM service_subscriptions",
    )
    .await;
    assert_eq!(starts, 1, "all start where the seeded period ended");
    assert_billing_consistent(&again).await;
}

/// The embedded cluster's PostgreSQL processes still alive (zombies aside): those working in
/// its data directory.
fn cluster_processes(data: &Path) -> Vec<i32> {
    let pg_dir = std::fs::canonicalize(data.join("postgres")).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == pg_dir)
                && running(*pid)
        })
        .collect()
}

fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

fn postmaster_pid(data: &Path) -> i32 {
    let file = std::fs::read_to_string(data.join("postgres/postmaster.pid")).unwrap();
    file.lines().next().unwrap().trim().parse().unwrap()
}

fn assert_no_cluster_left(data: &Path) {
    assert!(
        !data.join("postgres/postmaster.pid").exists(),
        "postmaster.pid is gone"
    );
    // `pg_ctl stop -w` returns once the postmaster removed its pid file; its last children
    // may take a moment more to exit.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cluster_processes(data).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        cluster_processes(data),
        Vec::<i32>::new(),
        "no PostgreSQL process of this data directory remains"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_postgres_orphaned_by_sigkill_is_taken_over_and_stopped_at_the_end() {
    let dir = TempDir::new(0o755);
    let data = dir.0.join("data");
    let client = reqwest::Client::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let secret = "embedded-jwt-secret-that-must-not-reach-postgres";
    let env = [
        ("PODIUM_DATA_DIR", data.to_str().unwrap()),
        ("PODIUM_LISTEN", listen.as_str()),
        ("PODIUM_JWT_SECRET", secret),
        ("PODIUM_METRICS_TOKEN", "metrics-token-kept-from-postgres"),
    ];

    let log = dir.0.join("first.log");
    let mut child = podium_with(&[], &env, &log);
    wait_ready(&client, port, &mut child, &log).await;
    let orphan = postmaster_pid(&data);
    let environ =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{orphan}/environ")).unwrap())
            .replace('\0', "\n");
    assert!(
        !environ.contains("PODIUM_") && !environ.contains(secret) && environ.contains("LC_ALL=C"),
        "PostgreSQL runs in a clean environment: {environ}"
    );
    register_kept(&client, port).await;

    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert!(
        running(orphan),
        "PostgreSQL outlives a Podium killed with SIGKILL (the case under test)"
    );

    let log = dir.0.join("second.log");
    let mut child = podium_with(&[], &env, &log);
    wait_ready(&client, port, &mut child, &log).await;
    gql(
        &client,
        port,
        None,
        LOGIN,
        json!({ "e": "kept@example.com", "p": "Password123" }),
    )
    .await
    .ok();
    gql(
        &client,
        port,
        None,
        LOGIN,
        json!({ "e": ADMIN_EMAIL, "p": ADMIN_PASSWORD }),
    )
    .await
    .ok();
    let server = postmaster_pid(&data);
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("outlived the Podium that started it"),
        "the orphan was found and taken over"
    );

    // Another Podium next to the owner shares its PostgreSQL and leaves it running.
    let seed_log = dir.0.join("seed.log");
    let status = podium_with(&["seed"], &env, &seed_log).wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&seed_log).unwrap()
    );
    assert!(
        running(server),
        "`podium seed` did not stop the server's PostgreSQL"
    );
    assert_eq!(
        client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    stop(&mut child, libc::SIGINT);
    assert!(!running(orphan) && !running(server));
    assert_no_cluster_left(&data);
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_postgres_moves_to_another_port_when_its_own_is_taken() {
    let dir = TempDir::new(0o755);
    let data = dir.0.join("data");
    let client = reqwest::Client::new();
    let port = free_port();
    let port_file = data.join("postgres.port");
    let pg_port = |path: &Path| -> u16 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };

    let log = dir.0.join("first.log");
    let mut child = podium(&data, port, &log);
    wait_ready(&client, port, &mut child, &log).await;
    stop(&mut child, libc::SIGINT);
    let taken = pg_port(&port_file);
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();

    let log = dir.0.join("second.log");
    let mut child = podium(&data, port, &log);
    wait_ready(&client, port, &mut child, &log).await;
    gql(
        &client,
        port,
        None,
        LOGIN,
        json!({ "e": ADMIN_EMAIL, "p": ADMIN_PASSWORD }),
    )
    .await
    .ok();
    assert_ne!(pg_port(&port_file), taken, "another port was picked");
    stop(&mut child, libc::SIGINT);
    assert_no_cluster_left(&data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_embedded_start_stops_the_postgres_it_started() {
    let dir = TempDir::new(0o755);
    let data = dir.0.join("data");
    // Keeping the generated JWT secret fails, after PostgreSQL has started.
    std::fs::create_dir_all(data.join("jwt-secret")).unwrap();
    let log = dir.0.join("out.log");
    let status = podium(&data, free_port(), &log).wait().unwrap();
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{output}");
    assert!(output.contains("JWT secret"), "{output}");
    assert!(
        data.join("postgres/PG_VERSION").exists(),
        "PostgreSQL was created (and started) before the failure"
    );
    assert_no_cluster_left(&data);
}

/// An instance's status and sealed credentials, read from the database.
async fn instance_row(
    conn: &mut diesel_async::AsyncPgConnection,
    id: &str,
) -> (String, Option<Vec<u8>>) {
    use podium::db::schema::service_instances as i;
    i::table
        .find(id.parse::<uuid::Uuid>().unwrap())
        .select((i::status, i::credentials))
        .first(conn)
        .await
        .unwrap()
}

async fn instance_status(conn: &mut diesel_async::AsyncPgConnection, id: &str) -> String {
    instance_row(conn, id).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn podium_killed_while_provisioning_finishes_the_work_after_a_restart() {
    use diesel_async::AsyncConnection;
    let url = fresh_database(true).await;
    // A customer subscribed; the provisioning job waits in the queue.
    let setup = spawn_app_on(&url, &[("PODIUM_JOBS_ENABLED", "false")]).await;
    let admin = setup.admin().await;
    crate::instances::ready_node(&setup, &admin, "node-a", 8).await;
    let (_, _, id) = crate::instances::customer_with_instance(&setup, &admin, "n8n", "Basic").await;
    drop(setup);
    let mut conn = diesel_async::AsyncPgConnection::establish(&url)
        .await
        .unwrap();
    assert_eq!(instance_status(&mut conn, &id).await, "PENDING");

    let dir = TempDir::new(0o755);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let data_dir = dir.0.join("unused-data");
    let run = |delay_ms: &'static str, log: &Path| {
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("PODIUM_JWT_SECRET", JWT_SECRET),
            ("PODIUM_LISTEN", listen.as_str()),
            ("PODIUM_DATA_DIR", data_dir.to_str().unwrap()),
            ("PODIUM_KUBE_MODE", "embedded"),
            ("PODIUM_EMBEDDED_KUBE_START_DELAY_MS", delay_ms),
            ("PODIUM_INSTANCE_RESYNC_CRON", "* * * * * *"),
            ("PODIUM_JOB_POLL_MS", "50"),
        ];
        KillOnDrop(podium_with(&[], &env, log))
    };
    // Its containers never start in time: killed in the middle of provisioning.
    let log = dir.0.join("first.log");
    let mut server = run("600000", &log);
    wait_ready(&reqwest::Client::new(), port, &mut server.0, &log).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Placed (PROVISIONING) and its generated credentials kept, sealed: the pass stores them
    // right after recording the status, before it applies the objects.
    let sealed = loop {
        let sealed = credentials_of(&mut conn, &id).await;
        if instance_status(&mut conn, &id).await == "PROVISIONING" && sealed.is_some() {
            break sealed;
        }
        assert!(
            Instant::now() < deadline,
            "never provisioning with sealed credentials: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    unsafe { libc::kill(server.0.id() as i32, libc::SIGKILL) };
    server.0.wait().unwrap();

    // Started again (its embedded cluster empty, like a cluster that lost the objects):
    // the work resumes from the database and ends RUNNING.
    let log = dir.0.join("second.log");
    let mut server = run("100", &log);
    wait_ready(&reqwest::Client::new(), port, &mut server.0, &log).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while instance_status(&mut conn, &id).await != "RUNNING" {
        assert!(
            Instant::now() < deadline,
            "not RUNNING after the restart: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        credentials_of(&mut conn, &id).await,
        sealed,
        "the lost Secret was written again with the same credentials, not new ones"
    );
}

async fn credentials_of(conn: &mut diesel_async::AsyncPgConnection, id: &str) -> Option<Vec<u8>> {
    instance_row(conn, id).await.1
}

/// The acceptance of the provisioning issue, with the README's run command alone: the
/// seeded customer subscribes and watches the instance go PENDING, PROVISIONING, RUNNING
/// over a WebSocket; `stopInstance` makes it STOPPED with 0 replicas in the embedded cluster.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_run_command_alone_the_seeded_user_watches_an_instance_come_up_and_stops_it() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let dir = TempDir::new(0o755);
    let data = dir.0.join("data");
    let client = reqwest::Client::new();
    let port = free_port();
    let log = dir.0.join("serve.log");
    let mut child = KillOnDrop(podium(&data, port, &log));
    wait_ready(&client, port, &mut child.0, &log).await;
    let output = std::fs::read_to_string(&log).unwrap();
    let simulated = output
        .lines()
        .find(|l| l.contains("SIMULATED"))
        .unwrap_or_else(|| panic!("the server says the cluster is simulated: {output}"));
    let cluster_url = simulated
        .split(|c: char| c.is_whitespace() || c == '"')
        .find_map(|w| w.find("http://127.0.0.1:").map(|i| w[i..].to_string()))
        .expect("the embedded cluster's address in the log");
    let token = gql(
        &client,
        port,
        None,
        LOGIN,
        json!({ "e": "user@paas.com", "p": "User123!@#" }),
    )
    .await
    .ok()
    .str("login.accessToken");

    let mut req = format!("ws://127.0.0.1:{port}/graphql")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let subscribers = async || -> u64 {
        let text = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("podium_live_subscribers "))
            .and_then(|n| n.parse().ok())
            .expect("the subscribers gauge")
    };
    let before = subscribers().await;
    let send = |v: serde_json::Value| Message::Text(v.to_string().into());
    ws.send(send(json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } })))
        .await
        .unwrap();
    ws.send(send(json!({ "id": "1", "type": "subscribe", "payload": {
        "query": "subscription { instanceStatusChanged { previousStatus status message instance { id subdomain } } }" } })))
        .await
        .unwrap();
    let mut next_status = async || -> serde_json::Value {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Some(Ok(Message::Text(t))) = ws.next().await {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "next" {
                        return v["payload"]["data"]["instanceStatusChanged"].clone();
                    }
                }
            }
        })
        .await
        .expect("a status event within a minute")
    };
    // Subscribing only once the socket listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    while subscribers().await <= before {
        assert!(Instant::now() < deadline, "the socket never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let plans = gql(
        &client,
        port,
        None,
        "{ service(slug: \"n8n\") { plans { id name } } }",
        json!({}),
    )
    .await
    .ok();
    let plan = plans.data("service.plans").as_array().unwrap()[0]["id"].clone();
    let subscribed = gql(
        &client,
        port,
        Some(&token),
        "mutation($p: ID!) { subscribe(input: {planId: $p, name: \"flows\"}) { instance { id status } } }",
        json!({ "p": plan }),
    )
    .await
    .ok();
    assert_eq!(subscribed.str("subscribe.instance.status"), "PENDING");
    let id = subscribed.str("subscribe.instance.id");
    let provisioning = next_status().await;
    assert_eq!(
        (&provisioning["previousStatus"], &provisioning["status"]),
        (&json!("PENDING"), &json!("PROVISIONING"))
    );
    let running = next_status().await;
    assert_eq!(running["status"], "RUNNING", "{running}");
    assert_eq!(running["instance"]["id"], id.as_str());

    gql(
        &client,
        port,
        Some(&token),
        "mutation($id: ID!) { stopInstance(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    while next_status().await["status"] != "STOPPED" {}
    // This process may not have built an app (which installs rustls's provider) yet.
    podium::provisioner::embedded::install_crypto_provider();
    let kube = kube::Client::try_from(kube::Config::new(cluster_url.parse().unwrap())).unwrap();
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::all(kube);
    let name = podium::provisioner::objects::object_name(
        running["instance"]["subdomain"].as_str().unwrap(),
    );
    let deployment = deployments
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|d| d.metadata.name.as_deref() == Some(name.as_str()))
        .expect("the instance's Deployment");
    assert_eq!(deployment.spec.unwrap().replicas, Some(0));

    // Mail without SMTP: registering writes a verification message under the data
    // directory's `mail`, and its link verifies the address on Podium's own page.
    let registered = gql(
        &client,
        port,
        None,
        "mutation { register(input: {name: \"Nia\", email: \"nia@example.com\", password: \"Password123\"}) { accessToken } }",
        json!({}),
    )
    .await
    .ok();
    let nia = registered.str("register.accessToken");
    let mailbox = crate::mail_helpers::Mailbox::at(data.join("mail"));
    let message = mailbox
        .wait_for("nia@example.com", "Confirm your email address")
        .await;
    let link = message.link("/verify-email");
    assert!(
        link.starts_with(&format!("http://127.0.0.1:{port}/verify-email?token=")),
        "{link}"
    );
    let page = client.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let confirmed = client
        .post(format!("http://127.0.0.1:{port}/verify-email"))
        .form(&[("token", message.token("/verify-email"))])
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status(), 200);
    let me = gql(
        &client,
        port,
        Some(&nia),
        "{ me { emailVerifiedAt } }",
        json!({}),
    )
    .await
    .ok();
    assert!(me.data("me.emailVerifiedAt").is_string());
    stop(&mut child.0, libc::SIGINT);
}
