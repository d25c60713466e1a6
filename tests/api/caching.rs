//! Hot reads served from memory, and what must not get slower or staler for it:
//! `totalCount` only when asked for; revocation, demotion and catalog edits seen at once,
//! on the instance that made them and on another one sharing the database.

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
