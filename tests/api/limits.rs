//! Rate limits as an attacker meets them: client addresses behind trusted proxies, login
//! throttling that can't be raced or turned against the account's owner, and worker nodes
//! limited per node rather than per address.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;
use crate::nodes::{heartbeat, register};

const LOGIN: &str = "mutation($e: String!, $p: String!) { login(input: {email: $e, password: $p}) { accessToken } }";

/// A login sent through a proxy that appended `forwarded_for` to `X-Forwarded-For`.
async fn login_via(app: &TestApp, forwarded_for: &str, email: &str, password: &str) -> Gql {
    let r = app
        .client
        .post(format!("{}/graphql", app.address))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({ "query": LOGIN, "variables": { "e": email, "p": password } }))
        .send()
        .await
        .unwrap();
    Gql(r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_a_forged_left_most_address_does_not_escape_the_limits() {
    let app = spawn_app_with(&[("PODIUM_TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    app.seed().await;
    let mut codes = Vec::new();
    for i in 0..40 {
        // The client forges the left-most entry; the proxy appends the address it saw.
        let chain = format!("10.66.{}.{}, 203.0.113.7", i / 200, i % 200 + 1);
        let r = login_via(&app, &chain, USER_EMAIL, "Wrong123456").await;
        codes.push(r.code().to_string());
    }
    assert_eq!(codes.last().unwrap(), "RATE_LIMITED", "{codes:?}");
    let unauthenticated = codes.iter().filter(|c| *c == "UNAUTHENTICATED").count();
    assert!(
        unauthenticated <= 5,
        "{unauthenticated} guesses got through: {codes:?}"
    );

    // A different client behind the same proxy is not held back by that one.
    let other = login_via(&app, "198.51.100.20", USER_EMAIL, USER_PASSWORD).await;
    assert!(other.0["errors"].is_null(), "{}", other.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_trusted_proxies_x_forwarded_for_is_ignored() {
    let app = spawn_app_with(&[("PODIUM_LOGIN_MAX_ATTEMPTS_PER_IP", "3")]).await;
    let mut last = String::new();
    for i in 0..4 {
        let r = login_via(
            &app,
            &format!("192.0.2.{i}"),
            "x@example.com",
            "Wrong123456",
        )
        .await;
        last = r.code().to_string();
    }
    assert_eq!(last, "RATE_LIMITED");
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_login_guesses_cannot_slip_past_the_failure_limit() {
    let app = spawn_app_with(&[("PODIUM_LOGIN_MAX_FAILURES_PER_EMAIL", "5")]).await;
    app.seed().await;
    let guesses = (0..20).map(|_| app.try_login(USER_EMAIL, "Wrong123456"));
    let codes: Vec<String> = futures_util::future::join_all(guesses)
        .await
        .iter()
        .map(|r| r.code().to_string())
        .collect();
    let checked = codes.iter().filter(|c| *c == "UNAUTHENTICATED").count();
    let refused = codes.iter().filter(|c| *c == "RATE_LIMITED").count();
    assert_eq!((checked, refused), (5, 15), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_failures_from_many_addresses_slows_the_account_but_never_locks_out_its_owner() {
    let app = spawn_app_with(&[
        ("PODIUM_TRUSTED_PROXIES", "127.0.0.1/32"),
        ("PODIUM_LOGIN_SLOWDOWN_AFTER", "1"),
    ])
    .await;
    app.seed().await;
    // What a login costs the owner when nobody is guessing.
    let started = Instant::now();
    let calm = login_via(&app, "198.51.100.1", USER_EMAIL, USER_PASSWORD).await;
    assert!(calm.0["errors"].is_null(), "{}", calm.0);
    let baseline = started.elapsed();
    // 2 attackers, 3 guesses each: every pair stays under its limit of 5.
    for attacker in 0..2 {
        for _ in 0..3 {
            let r = login_via(
                &app,
                &format!("10.9.0.{}", attacker + 1),
                USER_EMAIL,
                "Wrong123456",
            )
            .await;
            assert_eq!(r.code(), "UNAUTHENTICATED", "{}", r.0);
        }
    }
    // 6 failures, 5 past the threshold of 1: the owner's attempt waits 4 s, but is not refused.
    let started = Instant::now();
    let owner = login_via(&app, "198.51.100.1", USER_EMAIL, USER_PASSWORD).await;
    assert!(
        owner.0["errors"].is_null(),
        "the owner was refused: {}",
        owner.0
    );
    assert!(owner.0["data"]["login"]["accessToken"].is_string());
    assert!(
        started.elapsed() >= baseline + Duration::from_secs(3),
        "attempts at a flooded account are slowed down: {:?} against {baseline:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn change_password_is_throttled_per_user() {
    let app = spawn_app_with(&[("PODIUM_LOGIN_MAX_FAILURES_PER_EMAIL", "3")]).await;
    let (user, _) = app.register("guesser").await;
    let change = "mutation($c: String!) { changePassword(input: {currentPassword: $c, newPassword: \"Another12345\"}) }";
    for _ in 0..3 {
        let r = app
            .gql(Some(&user.access), change, json!({ "c": "Wrong123456" }))
            .await;
        assert_eq!(r.code(), "BAD_USER_INPUT", "{}", r.0);
    }
    // Even the right password waits for the window now.
    let r = app
        .gql(Some(&user.access), change, json!({ "c": PASSWORD }))
        .await;
    assert_eq!(r.code(), "RATE_LIMITED", "{}", r.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_are_limited_per_node_not_per_address() {
    let app = spawn_app_with(&[("PODIUM_RATE_LIMIT_PER_IP", "600")]).await;
    let admin = app.admin().await;
    let mut tokens = Vec::new();
    // (Per address, this test's own requests would be 700 in well under a minute: the
    // 600-a-minute budget could not refill fast enough for them.)
    for i in 0..10 {
        tokens.push(register(&app, &admin.access, &format!("nat-{i}")).await.1);
    }
    // 700 heartbeats from one address (a fleet behind one NAT), within a minute.
    let mut refused = 0;
    for round in 0..70 {
        let sends = tokens
            .iter()
            .map(|t| heartbeat(&app, t, json!({ "isReady": true, "currentPods": round })));
        for r in futures_util::future::join_all(sends).await {
            if r.0.get("errors").is_some() {
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 0, "heartbeats from one address were refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_of_known_nodes_use_no_per_address_budget() {
    let app = spawn_app_with(&[("PODIUM_RATE_LIMIT_PER_IP", "20")]).await;
    let admin = app.admin().await;
    let (_, token) = register(&app, &admin.access, "budget").await;
    for _ in 0..30 {
        heartbeat(&app, &token, json!({ "isReady": true }))
            .await
            .ok();
    }
    // The address has budget left for anonymous requests: the heartbeats were the node's.
    let anonymous = app.post_graphql(json!({ "query": "{ __typename }" })).await;
    assert!(anonymous.status().is_success(), "{}", anonymous.status());
    // A node token buys nothing but heartbeats.
    let r = app
        .gql(Some(&token), "{ services { totalCount } }", json!({}))
        .await;
    assert_eq!(r.code(), "FORBIDDEN", "{}", r.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_is_limited_on_its_own() {
    let app = spawn_app_with(&[("PODIUM_RATE_LIMIT_PER_NODE", "5")]).await;
    let admin = app.admin().await;
    let (_, token) = register(&app, &admin.access, "eager").await;
    let mut codes = Vec::new();
    for _ in 0..8 {
        let r = heartbeat(&app, &token, json!({ "isReady": true })).await;
        codes.push(
            r.0["errors"][0]["extensions"]["code"]
                .as_str()
                .unwrap_or("OK")
                .to_string(),
        );
    }
    // The first heartbeat introduces the token (counted per address); then 5 per node.
    assert_eq!(codes[..6], ["OK"; 6], "{codes:?}");
    assert_eq!(codes[6..], ["RATE_LIMITED"; 2], "{codes:?}");
}
