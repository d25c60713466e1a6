//! GraphQL over HTTP, to the letter (issue 6, item 13): the reference audit and the
//! status codes and shapes it relies on.

use std::path::Path;

use reqwest::header::{ACCEPT, ALLOW, CONTENT_TYPE};
use serde_json::{Value, json};

use crate::helpers::*;

const OFFICIAL: &str = "application/graphql-response+json";

/// `graphql-http`'s `auditServer`, run with Node (20 or newer) against a test server:
/// every audit, MUST, SHOULD and MAY, must pass. `scripts/test` installs the pinned
/// packages (`npm ci --prefix tests/graphql-http`).
#[tokio::test(flavor = "multi_thread")]
async fn graphql_http_audit_reports_no_errors_or_warnings() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/graphql-http");
    assert!(
        dir.join("node_modules/graphql-http").is_dir(),
        "the graphql-http audit is not installed: run `npm ci --prefix tests/graphql-http` \
         (./scripts/test does it when npm is present)"
    );
    let app = spawn_app().await;
    let output = tokio::process::Command::new("node")
        .arg("audit.mjs")
        .arg(format!("{}/graphql", app.address))
        .current_dir(&dir)
        .output()
        .await
        .unwrap_or_else(|e| panic!("this test needs Node.js 20 or newer as `node`: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the audit did not run: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("unexpected audit output ({e}): {stdout}"));
    let failures = serde_json::to_string_pretty(&summary["failures"]).unwrap();
    assert_eq!(summary["error"], 0, "errors: {failures}");
    assert_eq!(summary["warn"], 0, "warnings: {failures}");
    assert_eq!(summary["notice"], 0, "notices: {failures}");
    assert!(summary["ok"].as_u64().unwrap() >= 55, "{summary}");
}

async fn post(app: &TestApp, accept: Option<&str>, body: Value) -> reqwest::Response {
    let mut req = app
        .client
        .post(format!("{}/graphql", app.address))
        .json(&body);
    if let Some(accept) = accept {
        req = req.header(ACCEPT, accept);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn over_http_official_media_type_makes_request_errors_400_without_data() {
    let app = spawn_app().await;
    let ok = post(&app, Some(OFFICIAL), json!({ "query": "{ __typename }" })).await;
    assert_eq!(ok.status(), 200);
    assert!(
        ok.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with(OFFICIAL)
    );

    for (body, code) in [
        (json!({ "query": "{" }), "GRAPHQL_PARSE_FAILED"),
        (json!({ "query": "{ nope }" }), "GRAPHQL_VALIDATION_FAILED"),
        (
            json!({ "query": "query($id: ID!) { user(id: $id) { id } }", "variables": { "id": null } }),
            "GRAPHQL_VALIDATION_FAILED",
        ),
    ] {
        // Official media type: 400, no data.
        let r = post(&app, Some(OFFICIAL), body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        assert!(
            r.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(OFFICIAL)
        );
        let json: Value = r.json().await.unwrap();
        assert!(json.get("data").is_none(), "{json}");
        assert_eq!(json["errors"][0]["extensions"]["code"], code, "{json}");
        // Legacy application/json: 200, still no data.
        let r = post(&app, Some("application/json"), body.clone()).await;
        assert_eq!(r.status(), 200, "{body}");
        assert!(
            r.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let json: Value = r.json().await.unwrap();
        assert!(json.get("data").is_none(), "{json}");
        assert_eq!(json["errors"][0]["extensions"]["code"], code, "{json}");
    }

    // A field error is not a request error: the data entry is there and the status is 200.
    let r = post(
        &app,
        Some(OFFICIAL),
        json!({ "query": "{ me { id } __typename }" }),
    )
    .await;
    assert_eq!(r.status(), 200);
    let json: Value = r.json().await.unwrap();
    assert_eq!(json["data"]["__typename"], "Query", "{json}");
    assert_eq!(json["errors"][0]["extensions"]["code"], "UNAUTHENTICATED");
    assert_eq!(json["errors"][0]["path"], json!(["me"]));

    // Accepting neither JSON type: 406.
    let r = post(
        &app,
        Some("text/html"),
        json!({ "query": "{ __typename }" }),
    )
    .await;
    assert_eq!(r.status(), 406);
    let json: Value = r.json().await.unwrap();
    assert_eq!(json["errors"][0]["extensions"]["code"], "NOT_ACCEPTABLE");
}

#[tokio::test(flavor = "multi_thread")]
async fn over_http_post_needs_a_json_content_type_and_valid_parameters() {
    let app = spawn_app().await;
    let url = format!("{}/graphql", app.address);
    let body = r#"{"query":"{ __typename }"}"#;
    let none = app.client.post(&url).body(body).send().await.unwrap();
    assert_eq!(none.status(), 415);
    let json: Value = none.json().await.unwrap();
    assert_eq!(
        json["errors"][0]["extensions"]["code"],
        "UNSUPPORTED_MEDIA_TYPE"
    );
    let text = app
        .client
        .post(&url)
        .header(CONTENT_TYPE, "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 415);
    let utf8 = app
        .client
        .post(&url)
        .header(CONTENT_TYPE, "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(utf8.status(), 200);

    for bad in [
        json!({ "qeury": "{ __typename }" }),
        json!({ "query": ["{ __typename }"] }),
        json!({ "query": "{ __typename }", "operationName": 0 }),
        json!({ "query": "{ __typename }", "variables": "{}" }),
        json!({ "query": "{ __typename }", "extensions": [] }),
    ] {
        let r = app.post_graphql(bad.clone()).await;
        assert_eq!(r.status(), 400, "{bad}");
        let json: Value = r.json().await.unwrap();
        assert_eq!(json["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    }
    let empty = app
        .client
        .post(&url)
        .header(CONTENT_TYPE, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_http_get_runs_queries_but_never_mutations() {
    let app = spawn_app().await;
    let url = format!("{}/graphql", app.address);
    let r = app
        .client
        .get(&url)
        .query(&[
            (
                "query",
                "query T($name: String!) { __type(name: $name) { name } }",
            ),
            ("variables", r#"{"name":"Query"}"#),
            ("operationName", "T"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let json: Value = r.json().await.unwrap();
    assert_eq!(json["data"]["__type"]["name"], "Query", "{json}");

    let (_, email) = app.register("getter").await;
    let login = format!(
        "mutation {{ login(input: {{email: \"{email}\", password: \"{PASSWORD}\"}}) {{ accessToken }} }}"
    );
    let r = app
        .client
        .get(&url)
        .header(ACCEPT, OFFICIAL)
        .query(&[("query", login.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()[ALLOW], "POST");
    let json: Value = r.json().await.unwrap();
    assert_eq!(
        json["errors"][0]["extensions"]["code"],
        "METHOD_NOT_ALLOWED"
    );
    // The mutation in a document of several is found by its operation name.
    let doc = format!(
        "query Q {{ __typename }} {}",
        login.replacen("mutation", "mutation M", 1)
    );
    let r = app
        .client
        .get(&url)
        .query(&[("query", doc.as_str()), ("operationName", "M")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = app
        .client
        .get(&url)
        .query(&[("query", doc.as_str()), ("operationName", "Q")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_http_rate_limit_comes_before_request_parsing() {
    let app = spawn_app_with(&[("PODIUM_RATE_LIMIT_PER_IP", "1")]).await;
    app.gql(None, "{ __typename }", json!({})).await.ok();
    let r = app
        .client
        .post(format!("{}/graphql", app.address))
        .body("not even JSON, and no content type")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_http_too_large_bodies_are_413_with_a_code() {
    let app = spawn_app_with(&[("PODIUM_MAX_BODY_BYTES", "1024")]).await;
    let query = format!("{{ __typename }} # {}", "x".repeat(2048));
    let r = post(&app, Some(OFFICIAL), json!({ "query": query })).await;
    assert_eq!(r.status(), 413);
    let json: Value = r.json().await.unwrap();
    assert_eq!(json["errors"][0]["extensions"]["code"], "PAYLOAD_TOO_LARGE");
    let small = post(&app, Some(OFFICIAL), json!({ "query": "{ __typename }" })).await;
    assert_eq!(small.status(), 200);
}
