//! Probes, migrations under concurrency, limits, headers, error hygiene.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 200);

    // Un-apply the newest migration's record: the server is no longer ready.
    let mut conn = AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    diesel::sql_query("DELETE FROM __diesel_schema_migrations")
        .execute(&mut conn)
        .await
        .unwrap();
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_servers_migrating_one_empty_database_both_come_up() {
    let url = fresh_database(false).await;
    let (a, b) = tokio::join!(spawn_app_on(&url, &[]), spawn_app_on(&url, &[]));
    for app in [&a, &b] {
        let ready = app.get("/readyz").await;
        assert_eq!(ready.status(), 200);
    }
    // Both serve the same data.
    let (_, email) = a.register("shared").await;
    b.login(&email, PASSWORD).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn security_headers_and_graphiql() {
    let app = spawn_app().await;
    let r = app.get("/graphql").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(r.text().await.unwrap().contains("graphiql"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_allows_only_listed_origins() {
    let app = spawn_app_with(&[("PODIUM_CORS_ORIGINS", "https://portal.example.com")]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, format!("{}/graphql", app.address))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .send()
    };
    let ok = preflight("https://portal.example.com").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://portal.example.com"
    );
    let other = preflight("https://evil.example.com").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_are_refused() {
    let app = spawn_app_with(&[("PODIUM_MAX_BODY_BYTES", "1024")]).await;
    let query = format!("{{ __typename }} # {}", "x".repeat(4096));
    let r = app.post_graphql(json!({ "query": query })).await;
    assert_eq!(r.status(), 413);
    let bad = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: serde_json::Value = bad.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_ip_rate_limit_answers_rate_limited_with_retry_after() {
    let app = spawn_app_with(&[("PODIUM_RATE_LIMIT_PER_IP", "3")]).await;
    for _ in 0..3 {
        app.gql(None, "{ __typename }", json!({})).await.ok();
    }
    let r = app.post_graphql(json!({ "query": "{ __typename }" })).await;
    assert_eq!(r.status(), 429);
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
}

#[tokio::test(flavor = "multi_thread")]
async fn per_user_rate_limit() {
    let app = spawn_app_with(&[("PODIUM_RATE_LIMIT_PER_USER", "2")]).await;
    let (s, _) = app.register("busy").await;
    app.me(&s.access).await.ok();
    app.me(&s.access).await.ok();
    let r = app.me(&s.access).await;
    assert_eq!(r.code(), "RATE_LIMITED");
    // Anonymous requests from the same address are not this user's budget.
    app.gql(None, "{ __typename }", json!({})).await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn login_is_throttled_per_email_and_per_ip() {
    let app = spawn_app_with(&[("PODIUM_LOGIN_MAX_FAILURES_PER_EMAIL", "3")]).await;
    app.seed().await;
    for _ in 0..3 {
        assert_eq!(
            app.try_login(USER_EMAIL, "Wrong123456").await.code(),
            "UNAUTHENTICATED"
        );
    }
    // Even the right password is refused until the window passes.
    let r = app.post_graphql(json!({ "query": "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { accessToken } }",
                       "variables": { "e": USER_EMAIL, "p": USER_PASSWORD } })).await;
    assert!(r.headers().get("retry-after").is_some());
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    // Another account is not locked by it.
    app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;

    let app = spawn_app_with(&[("PODIUM_LOGIN_MAX_ATTEMPTS_PER_IP", "2")]).await;
    app.try_login("a@example.com", "Wrong123456").await;
    app.try_login("b@example.com", "Wrong123456").await;
    assert_eq!(
        app.try_login("c@example.com", "Wrong123456").await.code(),
        "RATE_LIMITED"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn query_depth_and_introspection_limits() {
    let app = spawn_app_with(&[
        ("PODIUM_MAX_QUERY_DEPTH", "3"),
        ("PODIUM_INTROSPECTION", "false"),
    ])
    .await;
    let (s, _) = app.register("deep").await;
    let deep = "{ auditLog { edges { node { actor { email } } } } }";
    let r = app.gql(Some(&s.access), deep, json!({})).await;
    assert_eq!(r.code(), "QUERY_TOO_DEEP");
    let r = app
        .gql(None, "{ __schema { types { name } } }", json!({}))
        .await;
    assert_eq!(r.code(), "INTROSPECTION_DISABLED");
    assert!(r.0.get("data").is_none(), "introspection is off: {}", r.0);
    let app = spawn_app().await;
    let r = app
        .gql(None, "{ __schema { queryType { name } } }", json!({}))
        .await
        .ok();
    assert_eq!(r.str("__schema.queryType.name"), "Query");
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_errors_carry_no_detail() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let mut conn = AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    diesel::sql_query("ALTER TABLE audit_log RENAME TO audit_log_gone")
        .execute(&mut conn)
        .await
        .unwrap();
    let r = app
        .gql(
            Some(&admin.access),
            "{ auditLog { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(r.code(), "INTERNAL");
    assert_eq!(r.error()["message"], "internal error");
    assert!(!r.0.to_string().contains("audit_log"), "{}", r.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_exposed_and_can_require_a_token() {
    let app = spawn_app().await;
    app.gql(None, "{ serviceCategories { slug } }", json!({}))
        .await
        .ok();
    let body = app.get("/metrics").await.text().await.unwrap();
    let queries: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("podium_db_queries_total "))
        .expect("the query counter")
        .parse()
        .unwrap();
    assert!(queries >= 1, "{body}");
    assert!(body.contains("podium_events_listening 1"), "{body}");

    let app = spawn_app_with(&[("PODIUM_METRICS_TOKEN", "scrape-secret")]).await;
    assert_eq!(app.get("/metrics").await.status(), 401);
    let ok = app
        .client
        .get(format!("{}/metrics", app.address))
        .bearer_auth("scrape-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}
