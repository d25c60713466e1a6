//! Hot reads served from memory, and what must not get slower or staler for it:
//! `totalCount` only when asked for; revocation, demotion and catalog edits seen at once,
//! on the instance that made them and on another one sharing the database.

use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;

use crate::helpers::*;

/// Statements the server runs for one request (the fewest of three tries, so that a
/// background task's query cannot inflate it).
async fn statements(app: &TestApp, token: &str, query: &str) -> u64 {
    let mut fewest = u64::MAX;
    for _ in 0..3 {
        let before = app.state.queries.get();
        app.gql(Some(token), query, json!({})).await.ok();
        fewest = fewest.min(app.state.queries.get() - before);
    }
    fewest
}

#[tokio::test(flavor = "multi_thread")]
async fn total_count_is_counted_only_when_selected() {
    let app = spawn_app_with(&[("PODIUM_JOBS_ENABLED", "false")]).await;
    let admin = app.admin().await;
    for list in ["users", "auditLog", "services", "workerNodes", "jobs"] {
        let without =
            format!("{{ {list}(first: 2) {{ edges {{ cursor }} pageInfo {{ hasNextPage }} }} }}");
        let with = format!(
            "{{ {list}(first: 2) {{ totalCount edges {{ cursor }} pageInfo {{ hasNextPage }} }} }}"
        );
        let r = app.gql(Some(&admin.access), &with, json!({})).await.ok();
        assert!(r.data(&format!("{list}.totalCount")).is_i64());
        let (cost_without, cost_with) = (
            statements(&app, &admin.access, &without).await,
            statements(&app, &admin.access, &with).await,
        );
        assert_eq!(
            cost_with,
            cost_without + 1,
            "{list}: {cost_without} statements without totalCount, {cost_with} with it"
        );
    }
    // Asked for twice on one page (aliases), it is counted once.
    let twice = "{ users(first: 1) { a: totalCount b: totalCount edges { cursor } } }";
    let once = "{ users(first: 1) { totalCount edges { cursor } } }";
    assert_eq!(
        statements(&app, &admin.access, twice).await,
        statements(&app, &admin.access, once).await
    );
    let r = app.gql(Some(&admin.access), twice, json!({})).await.ok();
    assert_eq!(r.data("users.a"), &json!(2));
    assert_eq!(r.data("users.b"), &json!(2));
}

/// Two servers on one database, whose caches only an event can invalidate (an entry
/// would otherwise be trusted for an hour).
async fn two_instances() -> (TestApp, TestApp) {
    let url = fresh_database(true).await;
    let settings = [
        ("PODIUM_JOBS_ENABLED", "false"),
        ("PODIUM_CACHE_TTL_SECS", "3600"),
    ];
    let a = spawn_app_on(&url, &settings).await;
    let b = spawn_app_on(&url, &settings).await;
    (a, b)
}

/// Whether `query` was answered from memory: no statement, in at least one of three
/// tries (so that a background task's query cannot fail it).
async fn served_from_memory(app: &TestApp, token: Option<&str>, query: &str) -> bool {
    for _ in 0..3 {
        let before = app.state.queries.get();
        app.gql(token, query, json!({})).await.ok();
        if app.state.queries.get() == before {
            return true;
        }
    }
    false
}

/// `me` works on both instances, and on `b` from memory: what follows must invalidate it.
async fn warm(a: &TestApp, b: &TestApp, token: &str) {
    a.me(token).await.ok();
    b.me(token).await.ok();
    for app in [a, b] {
        assert!(
            served_from_memory(app, Some(token), "{ me { id role } }").await,
            "me is not served from memory"
        );
    }
}

/// Polls `app` until the token is refused: "within milliseconds", so two seconds is plenty.
async fn refused_soon(app: &TestApp, token: &str, query: &str, code: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = app.gql(Some(token), query, json!({})).await;
        if r.0.get("errors").is_some() {
            assert_eq!(r.code(), code, "{}", r.0);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still accepted two seconds after the change: {}",
            r.0
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const ME: &str = "{ me { id role } }";

#[tokio::test(flavor = "multi_thread")]
async fn revocation_through_one_instance_is_refused_at_once_there_and_within_ms_on_another() {
    let (a, b) = two_instances().await;
    let admin = a.admin().await;

    // logout
    let (user, _) = a.register("logout").await;
    warm(&a, &b, &user.access).await;
    a.gql(
        None,
        "mutation($t: String!) { logout(refreshToken: $t) }",
        json!({ "t": user.refresh }),
    )
    .await
    .ok();
    assert_eq!(a.me(&user.access).await.code(), "UNAUTHENTICATED");
    refused_soon(&b, &user.access, ME, "UNAUTHENTICATED").await;

    // logoutAll
    let (first, email) = a.register("logout-all").await;
    let second = a.login(&email, PASSWORD).await;
    warm(&a, &b, &first.access).await;
    warm(&a, &b, &second.access).await;
    a.gql(Some(&second.access), "mutation { logoutAll }", json!({}))
        .await
        .ok();
    assert_eq!(a.me(&first.access).await.code(), "UNAUTHENTICATED");
    refused_soon(&b, &first.access, ME, "UNAUTHENTICATED").await;
    refused_soon(&b, &second.access, ME, "UNAUTHENTICATED").await;

    // changePassword signs out the other sessions, not the one it was made with
    let (other, email) = a.register("password").await;
    let current = a.login(&email, PASSWORD).await;
    warm(&a, &b, &other.access).await;
    warm(&a, &b, &current.access).await;
    a.gql(
        Some(&current.access),
        "mutation($c: String!, $n: String!) { changePassword(input: {currentPassword: $c, newPassword: $n}) }",
        json!({ "c": PASSWORD, "n": "Another-password-42" }),
    )
    .await
    .ok();
    assert_eq!(a.me(&other.access).await.code(), "UNAUTHENTICATED");
    refused_soon(&b, &other.access, ME, "UNAUTHENTICATED").await;
    b.me(&current.access).await.ok();

    // refresh-token reuse revokes the session, newest access token included
    let (user, _) = a.register("reuse").await;
    const REFRESH: &str =
        "mutation($t: String!) { refreshToken(token: $t) { accessToken refreshToken } }";
    let rotated = a
        .gql(None, REFRESH, json!({ "t": user.refresh }))
        .await
        .ok()
        .str("refreshToken.accessToken");
    warm(&a, &b, &rotated).await;
    assert_eq!(
        a.gql(None, REFRESH, json!({ "t": user.refresh }))
            .await
            .code(),
        "UNAUTHENTICATED"
    );
    assert_eq!(a.me(&rotated).await.code(), "UNAUTHENTICATED");
    refused_soon(&b, &rotated, ME, "UNAUTHENTICATED").await;

    // deactivation
    let (user, _) = a.register("deactivated").await;
    warm(&a, &b, &user.access).await;
    a.gql(
        Some(&admin.access),
        "mutation($id: ID!) { updateUser(id: $id, input: {isActive: false}) { isActive } }",
        json!({ "id": user.user_id }),
    )
    .await
    .ok();
    assert_eq!(a.me(&user.access).await.code(), "UNAUTHENTICATED");
    refused_soon(&b, &user.access, ME, "UNAUTHENTICATED").await;

    // deletion
    let (user, _) = a.register("deleted").await;
    warm(&a, &b, &user.access).await;
    a.gql(
        Some(&admin.access),
        "mutation($id: ID!) { deleteUser(id: $id) }",
        json!({ "id": user.user_id }),
    )
    .await
    .ok();
    assert_eq!(a.me(&user.access).await.code(), "UNAUTHENTICATED");
    refused_soon(&b, &user.access, ME, "UNAUTHENTICATED").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demotion_through_one_instance_applies_at_once_there_and_within_ms_on_another() {
    let (a, b) = two_instances().await;
    let admin = a.admin().await;
    let email = "second-admin@example.com";
    let id = a
        .gql(
            Some(&admin.access),
            "mutation($e: String!, $p: String!) { createUser(input: {name: \"Second\", email: $e, password: $p, role: ADMINISTRATOR}) { id } }",
            json!({ "e": email, "p": PASSWORD }),
        )
        .await
        .ok()
        .str("createUser.id");
    let second = a.login(email, PASSWORD).await;
    const ADMIN_ONLY: &str = "{ users(first: 1) { edges { cursor } } }";
    a.gql(Some(&second.access), ADMIN_ONLY, json!({}))
        .await
        .ok();
    b.gql(Some(&second.access), ADMIN_ONLY, json!({}))
        .await
        .ok();
    warm(&a, &b, &second.access).await;

    a.demote(&admin, &id).await;
    assert_eq!(
        a.gql(Some(&second.access), ADMIN_ONLY, json!({}))
            .await
            .code(),
        "FORBIDDEN"
    );
    refused_soon(&b, &second.access, ADMIN_ONLY, "FORBIDDEN").await;
    // Still signed in, as a USER: the cached row is the new one.
    let r = b.me(&second.access).await.ok();
    assert_eq!(r.data("me.role"), &json!("USER"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_catalog_edit_through_one_instance_shows_at_once_there_and_within_ms_on_another() {
    let (a, b) = two_instances().await;
    let admin = a.admin().await;
    const PAGE: &str = "{ services(first: 20) { edges { node { slug name plans { name } } } } }";
    let names = |r: &Gql| -> Vec<String> {
        r.data("services.edges")
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["node"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    for app in [&a, &b] {
        let r = app.gql(None, PAGE, json!({})).await.ok();
        assert!(names(&r).contains(&"Ghost".to_string()), "{}", r.0);
        assert!(served_from_memory(app, None, PAGE).await);
    }
    let id = a
        .gql(
            Some(&admin.access),
            "{ service(slug: \"ghost\") { id } }",
            json!({}),
        )
        .await
        .ok()
        .str("service.id");

    const UPDATE: &str =
        "mutation($id: ID!, $i: UpdateServiceInput!) { updateService(id: $id, input: $i) { id } }";
    a.gql(
        Some(&admin.access),
        UPDATE,
        json!({ "id": id, "i": { "name": "Ghost Pro" } }),
    )
    .await
    .ok();
    let renamed = |r: &Gql| names(r).contains(&"Ghost Pro".to_string());
    assert!(renamed(&a.gql(None, PAGE, json!({})).await.ok()));
    eventually_within_2s("the new name on the other instance", || async {
        renamed(&b.gql(None, PAGE, json!({})).await.ok())
    })
    .await;

    a.gql(
        Some(&admin.access),
        UPDATE,
        json!({ "id": id, "i": { "isActive": false } }),
    )
    .await
    .ok();
    const ONE: &str = "{ service(slug: \"ghost\") { name } }";
    assert_eq!(a.gql(None, ONE, json!({})).await.code(), "NOT_FOUND");
    eventually_within_2s(
        "the deactivated service gone on the other instance",
        || async {
            b.gql(None, ONE, json!({})).await.0.get("errors").is_some()
                && !names(&b.gql(None, PAGE, json!({})).await.ok()).contains(&"Ghost Pro".into())
        },
    )
    .await;
}

async fn eventually_within_2s<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(what, Duration::from_secs(2), check).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_missed_while_the_event_listener_was_down_is_not_served_from_memory() {
    let (app, other) = two_instances().await;
    let (user, _) = app.register("missed").await;
    warm(&other, &app, &user.access).await;

    // Cut the instance's LISTEN connection, then change the user behind its back (a
    // statement of our own: not through the instance, so nothing is forgotten locally).
    let mut conn = AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    #[derive(diesel::QueryableByName)]
    struct Cut {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let cut: Cut = diesel::sql_query(
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'podium-listener'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(cut.n, 2, "both instances' listeners");
    diesel::sql_query("UPDATE users SET is_active = FALSE WHERE id = $1::uuid")
        .bind::<diesel::sql_types::Text, _>(&user.user_id)
        .execute(&mut conn)
        .await
        .unwrap();
    refused_soon(&app, &user.access, ME, "UNAUTHENTICATED").await;

    // The listener reconnects, and the cache serves again.
    let (user, _) = app.register("after").await;
    eventually_within(
        "the cache to serve again",
        Duration::from_secs(15),
        || async {
            app.me(&user.access).await.ok();
            served_from_memory(&app, Some(&user.access), ME).await
        },
    )
    .await;
}
