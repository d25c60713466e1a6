//! Test harness: a fresh database per test (cloned from a migrated template) and a
//! real server on a free port, talked to over HTTP.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use podium::config::Settings;
use podium::startup::Application;
use podium::state::AppState;
use serde_json::{Value, json};
use uuid::Uuid;

pub const ADMIN_EMAIL: &str = "admin@paas.com";
pub const ADMIN_PASSWORD: &str = "Admin123!@#";
pub const USER_EMAIL: &str = "user@paas.com";
pub const USER_PASSWORD: &str = "User123!@#";
pub const PASSWORD: &str = "Password123";

/// The cluster's maintenance database URL, set by `scripts/test`.
pub fn admin_url() -> String {
    std::env::var("PODIUM_TEST_DATABASE_URL").expect(
        "PODIUM_TEST_DATABASE_URL is not set: run the tests with ./scripts/test, which starts PostgreSQL",
    )
}

fn url_for(database: &str) -> String {
    let base = admin_url();
    let (prefix, _) = base.rsplit_once('/').expect("a database URL");
    format!("{prefix}/{database}")
}

async fn admin_conn() -> AsyncPgConnection {
    AsyncPgConnection::establish(&admin_url())
        .await
        .expect("connecting to the test cluster")
}

/// The migrated template, made once per test process on a thread of its own.
fn template() -> &'static str {
    static TEMPLATE: OnceLock<String> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let name = format!("podium_template_{}", Uuid::new_v4().simple());
                let mut conn = admin_conn().await;
                diesel::sql_query(format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                podium::db::migrate::run(&url_for(&name))
                    .await
                    .expect("migrating the template");
                name
            })
        })
        .join()
        .expect("creating the template database")
    })
}

/// A new database: migrated (from the template) or empty.
pub async fn fresh_database(migrated: bool) -> String {
    let name = format!("podium_test_{}", Uuid::new_v4().simple());
    let template = if migrated { template() } else { "template0" };
    let mut conn = admin_conn().await;
    diesel::sql_query(format!("CREATE DATABASE {name} TEMPLATE {template}"))
        .execute(&mut conn)
        .await
        .expect("creating a test database");
    url_for(&name)
}

pub fn test_settings(database_url: &str, overrides: &[(&str, &str)]) -> Settings {
    let mut vars: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), database_url.into()),
        ("PODIUM_JWT_SECRET".into(), JWT_SECRET.into()),
        ("PODIUM_LISTEN".into(), "127.0.0.1:0".into()),
        ("PODIUM_WORKERS".into(), "1".into()),
        ("PODIUM_DB_POOL_SIZE".into(), "8".into()),
        // The billing jobs run when a test runs them (on the clock it moves), not on a
        // cron tick that could land in the middle of it; tests of the schedules set their own.
        ("PODIUM_BILLING_RENEWAL_CRON".into(), NEVER.into()),
        ("PODIUM_BILLING_DUNNING_CRON".into(), NEVER.into()),
        ("PODIUM_TOP_UP_RECONCILE_CRON".into(), NEVER.into()),
        ("PODIUM_MAIL_REMINDER_CRON".into(), NEVER.into()),
        // Each test app runs its own embedded Kubernetes cluster, whose containers start
        // quickly; the resync runs when a test asks for it.
        ("PODIUM_KUBE_MODE".into(), "embedded".into()),
        ("PODIUM_EMBEDDED_KUBE_START_DELAY_MS".into(), "150".into()),
        ("PODIUM_INSTANCE_RESYNC_CRON".into(), NEVER.into()),
        // Mail goes to files in a directory of the test's own unless it sets PODIUM_SMTP_URL.
        (
            "PODIUM_DATA_DIR".into(),
            std::env::temp_dir()
                .join(format!("podium-test-data-{}", Uuid::new_v4().simple()))
                .to_string_lossy()
                .into_owned(),
        ),
    ];
    vars.extend(
        overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    Settings::from_vars(vars).expect("valid test settings")
}

/// A port for a process the test starts later (a `podium` binary, an aiosmtpd): free now,
/// and below the kernel's ephemeral range (32768 and up), so that no test server binding
/// port 0, and no outgoing connection, can take it in the meantime, as a port merely
/// released by a `bind(0)` could be.
pub fn unused_port() -> u16 {
    loop {
        let port = 20_000 + (Uuid::new_v4().as_u128() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A cron expression that fires once a year, at midnight on January 1st.
pub const NEVER: &str = "0 0 0 1 1 *";

pub const JWT_SECRET: &str = "test-secret-0123456789abcdef0123456789";

pub struct TestApp {
    pub address: String,
    pub database_url: String,
    pub client: reqwest::Client,
    pub state: AppState,
    handle: ServerHandle,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Sends the stop command now; the returned future only waits for it.
        drop(self.handle.stop(false));
        if self
            .state
            .settings
            .data_dir
            .starts_with(std::env::temp_dir())
        {
            let _ = std::fs::remove_dir_all(&self.state.settings.data_dir);
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    let database_url = fresh_database(true).await;
    spawn_app_on(&database_url, overrides).await
}

pub async fn spawn_app_on(database_url: &str, overrides: &[(&str, &str)]) -> TestApp {
    let app = Application::build(test_settings(database_url, overrides))
        .await
        .expect("building the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let state = app.state().clone();
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        database_url: database_url.to_string(),
        client: reqwest::Client::new(),
        state,
        handle,
    }
}

/// Sends a GraphQL request to the server at `base` (e.g. `http://127.0.0.1:8080`).
pub async fn gql_at(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> Gql {
    let mut req = client
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": query, "variables": variables }));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await.expect("request");
    Gql(resp.json().await.expect("JSON response"))
}

/// A GraphQL response.
pub struct Gql(pub Value);

impl Gql {
    pub fn data(&self, path: &str) -> &Value {
        let mut v = &self.0["data"];
        for key in path.split('.') {
            v = &v[key];
        }
        assert!(!v.is_null(), "no data at {path}: {}", self.0);
        v
    }

    pub fn str(&self, path: &str) -> String {
        self.data(path)
            .as_str()
            .unwrap_or_else(|| panic!("{path} is not a string: {}", self.0))
            .to_string()
    }

    pub fn ok(self) -> Self {
        assert!(
            self.0.get("errors").is_none(),
            "unexpected errors: {}",
            self.0
        );
        self
    }

    /// The code of the first error (panics when there is none).
    pub fn code(&self) -> &str {
        self.0["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error: {}", self.0))
    }

    pub fn error(&self) -> &Value {
        &self.0["errors"][0]
    }
}

pub struct Session {
    pub access: String,
    pub refresh: String,
    pub user_id: String,
}

impl TestApp {
    pub async fn gql(&self, token: Option<&str>, query: &str, variables: Value) -> Gql {
        gql_at(&self.client, &self.address, token, query, variables).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .expect("request")
    }

    /// A raw POST to /graphql, for checking status codes and headers.
    pub async fn post_graphql(&self, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}/graphql", self.address))
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn seed(&self) {
        podium::seed::run(&self.state.pool, &self.state.settings.default_currency)
            .await
            .expect("seeding");
    }

    pub async fn try_login(&self, email: &str, password: &str) -> Gql {
        self.gql(
            None,
            "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { accessToken refreshToken user { id } } }",
            json!({ "e": email, "p": password }),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Session {
        let r = self.try_login(email, password).await.ok();
        Session {
            access: r.str("login.accessToken"),
            refresh: r.str("login.refreshToken"),
            user_id: r.str("login.user.id"),
        }
    }

    /// Seeds the demo accounts and signs in as the administrator.
    pub async fn admin(&self) -> Session {
        self.seed().await;
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await
    }

    /// Registers a new USER with a unique email.
    pub async fn register(&self, name: &str) -> (Session, String) {
        let email = format!("{name}-{}@example.com", Uuid::new_v4().simple());
        let r = self
            .gql(
                None,
                "mutation($n: String!, $e: String!, $p: String!) { register(input: {name: $n, email: $e, password: $p}) { accessToken refreshToken user { id } } }",
                json!({ "n": name, "e": email, "p": PASSWORD }),
            )
            .await
            .ok();
        (
            Session {
                access: r.str("register.accessToken"),
                refresh: r.str("register.refreshToken"),
                user_id: r.str("register.user.id"),
            },
            email,
        )
    }

    /// `admin` makes the account a USER (it stays active and signed in).
    pub async fn demote(&self, admin: &Session, user_id: &str) {
        self.gql(
            Some(&admin.access),
            "mutation($id: ID!) { updateUser(id: $id, input: {role: USER}) { role } }",
            json!({ "id": user_id }),
        )
        .await
        .ok();
    }

    pub async fn me(&self, token: &str) -> Gql {
        self.gql(Some(token), "{ me { id email role isActive } }", json!({}))
            .await
    }
}

/// Polls `check` until it holds, failing after 10 s.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(10), check).await
}

/// Polls `check` every 10 ms until it holds, failing once `within` has passed.
pub async fn eventually_within<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The billing integrity check (`podium billing verify`) on the app's database.
pub async fn billing_report(app: &TestApp) -> podium::billing::integrity::Report {
    let mut conn = app.state.pool.get().await.expect("a connection");
    podium::billing::service::verify(&mut conn)
        .await
        .expect("running the billing integrity check")
}

/// Runs the billing integrity check and panics listing every mismatch: call it at the
/// end of any test that moves money (concurrency, crashes, replays).
pub async fn assert_billing_consistent(app: &TestApp) {
    let report = billing_report(app).await;
    assert!(
        report.is_clean(),
        "billing records are inconsistent:\n{report}"
    );
}

impl TestApp {
    /// See [`assert_billing_consistent`].
    pub async fn assert_billing_consistent(&self) {
        assert_billing_consistent(self).await
    }
}
