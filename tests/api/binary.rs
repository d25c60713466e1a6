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
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `podium ARGS` with only the given Podium variables set, output to `log`.
fn podium_with(args: &[&str], env: &[(&str, &str)], log: &Path) -> Child {
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
        .stderr(log)
        .spawn()
        .expect("starting podium")
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
    gql(
        &client,
        port,
        None,
        "mutation { register(input: {name: \"Kept\", email: \"kept@example.com\", password: \"Password123\"}) { accessToken } }",
        json!({}),
    )
    .await
    .ok();
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
async fn with_an_external_database_serve_seeds_nothing_and_seed_is_idempotent() {
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

    let log = dir.0.join("serve.log");
    let mut child = podium_with(&[], &env, &log);
    wait_ready(&client, port, &mut child, &log).await;
    let r = gql(
        &client,
        port,
        None,
        LOGIN,
        json!({ "e": ADMIN_EMAIL, "p": ADMIN_PASSWORD }),
    )
    .await;
    assert_eq!(
        r.code(),
        "UNAUTHENTICATED",
        "no demo accounts against an external database"
    );
    stop(&mut child, libc::SIGTERM);
    assert!(!data_dir.exists(), "no embedded cluster either");

    for run in 0..2 {
        let log = dir.0.join(format!("seed{run}.log"));
        let status = podium_with(&["seed"], &env, &log).wait().unwrap();
        assert!(
            status.success(),
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
    }
    let log = dir.0.join("migrate.log");
    assert!(
        podium_with(&["migrate"], &env, &log)
            .wait()
            .unwrap()
            .success()
    );
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("applied 0 migration(s)")
    );

    let mut child = podium_with(&[], &env, &log);
    wait_ready(&client, port, &mut child, &log).await;
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
    assert_eq!(
        user_count(&client, port, &admin).await,
        json!(2),
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

async fn job_row(conn: &mut diesel_async::AsyncPgConnection, id: uuid::Uuid) -> model::Job {
    use podium::db::schema::jobs;
    jobs::table
        .find(id)
        .select(model::Job::as_select())
        .first(conn)
        .await
        .unwrap()
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
