//! Administrators' user management, its authorization, the audit trail.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

/// Every admin operation, with variables that would be valid for an administrator.
fn admin_operations(target: &str) -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("users", "{ users { totalCount } }", json!({})),
        (
            "user",
            "query($id: ID!) { user(id: $id) { id } }",
            json!({ "id": target }),
        ),
        ("userStats", "{ userStats { total } }", json!({})),
        ("auditLog", "{ auditLog { totalCount } }", json!({})),
        (
            "createUser",
            "mutation { createUser(input: {name: \"N\", email: \"matrix@example.com\", password: \"Password123\"}) { id } }",
            json!({}),
        ),
        (
            "updateUser",
            "mutation($id: ID!) { updateUser(id: $id, input: {name: \"Renamed\"}) { id } }",
            json!({ "id": target }),
        ),
        (
            "bulkUpdateUsers",
            "mutation($id: ID!) { bulkUpdateUsers(ids: [$id], input: {isActive: true}) }",
            json!({ "id": target }),
        ),
        (
            "deleteUser",
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({ "id": target }),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_matrix_for_every_admin_operation() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, _) = app.register("plain").await;
    let (target, _) = app.register("target").await;

    for (name, query, vars) in admin_operations(&target.user_id) {
        let anonymous = app.gql(None, query, vars.clone()).await;
        assert_eq!(
            anonymous.code(),
            "UNAUTHENTICATED",
            "anonymous {name}: {}",
            anonymous.0
        );
        let as_user = app.gql(Some(&user.access), query, vars.clone()).await;
        assert_eq!(as_user.code(), "FORBIDDEN", "USER {name}: {}", as_user.0);
    }
    // Nothing the refused calls asked for happened.
    let r = app
        .gql(
            Some(&admin.access),
            "query($id: ID!) { user(id: $id) { name } }",
            json!({ "id": target.user_id }),
        )
        .await
        .ok();
    assert_eq!(r.str("user.name"), "target");

    for (name, query, vars) in admin_operations(&target.user_id) {
        let r = app.gql(Some(&admin.access), query, vars).await;
        assert!(r.0.get("errors").is_none(), "ADMINISTRATOR {name}: {}", r.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn users_are_paginated_filtered_and_counted() {
    let app = spawn_app().await;
    let admin = app.admin().await; // 2 seeded accounts
    for i in 0..5 {
        app.register(&format!("pager{i}")).await;
    }
    let q = "query($first: Int, $after: String, $search: String, $role: Role, $active: Boolean) {
        users(first: $first, after: $after, search: $search, role: $role, isActive: $active) {
            totalCount edges { cursor node { email name } } pageInfo { hasNextPage endCursor } } }";

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let r = app
            .gql(
                Some(&admin.access),
                q,
                json!({ "first": 3, "after": after }),
            )
            .await
            .ok();
        assert_eq!(r.data("users.totalCount"), &json!(7));
        let edges = r.data("users.edges").as_array().unwrap().clone();
        assert!(edges.len() <= 3);
        seen.extend(
            edges
                .iter()
                .map(|e| e["node"]["email"].as_str().unwrap().to_string()),
        );
        if !r.data("users.pageInfo.hasNextPage").as_bool().unwrap() {
            break;
        }
        after = Some(r.str("users.pageInfo.endCursor"));
    }
    assert_eq!(seen.len(), 7, "every user once: {seen:?}");
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 7);

    let r = app
        .gql(Some(&admin.access), q, json!({ "search": "PAGER" }))
        .await
        .ok();
    assert_eq!(r.data("users.totalCount"), &json!(5));
    let r = app
        .gql(Some(&admin.access), q, json!({ "role": "ADMINISTRATOR" }))
        .await
        .ok();
    assert_eq!(r.data("users.totalCount"), &json!(1));
    let r = app
        .gql(Some(&admin.access), q, json!({ "search": "100%_" }))
        .await
        .ok();
    assert_eq!(
        r.data("users.totalCount"),
        &json!(0),
        "LIKE wildcards are literal"
    );

    let r = app.gql(Some(&admin.access), q, json!({ "first": 0 })).await;
    assert_eq!(r.code(), "BAD_USER_INPUT");
    assert!(r.error()["extensions"]["fields"]["first"].is_array());
    let r = app
        .gql(Some(&admin.access), q, json!({ "first": 101 }))
        .await;
    assert_eq!(r.code(), "BAD_USER_INPUT");
    let r = app
        .gql(Some(&admin.access), q, json!({ "after": "not a cursor" }))
        .await;
    assert_eq!(r.code(), "BAD_USER_INPUT");
    assert!(r.error()["extensions"]["fields"]["after"].is_array());
}

#[tokio::test(flavor = "multi_thread")]
async fn create_update_delete_and_stats() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let create = "mutation($e: String!) { createUser(input: {name: \"Made\", email: $e, password: \"Password123\", role: ADMINISTRATOR}) { id email role isActive } }";
    let r = app
        .gql(
            Some(&admin.access),
            create,
            json!({ "e": "Made@Example.com" }),
        )
        .await
        .ok();
    let id = r.str("createUser.id");
    assert_eq!(r.str("createUser.email"), "made@example.com");
    assert_eq!(r.str("createUser.role"), "ADMINISTRATOR");
    assert_eq!(
        app.gql(
            Some(&admin.access),
            create,
            json!({ "e": "made@example.com" })
        )
        .await
        .code(),
        "CONFLICT"
    );
    let bad = app
        .gql(Some(&admin.access), create, json!({ "e": "nope" }))
        .await;
    assert_eq!(bad.code(), "BAD_USER_INPUT");
    assert!(bad.error()["extensions"]["fields"]["email"].is_array());

    // The new account can sign in.
    app.login("made@example.com", "Password123").await;

    let update = "mutation($id: ID!, $e: String) { updateUser(id: $id, input: {email: $e, isActive: false}) { email isActive } }";
    let r = app
        .gql(
            Some(&admin.access),
            update,
            json!({ "id": id, "e": "renamed@example.com" }),
        )
        .await
        .ok();
    assert_eq!(r.str("updateUser.email"), "renamed@example.com");
    assert_eq!(r.data("updateUser.isActive"), &json!(false));
    let dup = app
        .gql(
            Some(&admin.access),
            update,
            json!({ "id": id, "e": ADMIN_EMAIL }),
        )
        .await;
    assert_eq!(dup.code(), "CONFLICT");

    let stats = app
        .gql(
            Some(&admin.access),
            "{ userStats { total active inactive administrators registeredLast30Days } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(
        stats.data("userStats"),
        &json!({ "total": 3, "active": 2, "inactive": 1, "administrators": 2, "registeredLast30Days": 3 })
    );

    let missing = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        app.gql(
            Some(&admin.access),
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({ "id": missing })
        )
        .await
        .code(),
        "NOT_FOUND"
    );
    assert_eq!(
        app.gql(
            Some(&admin.access),
            "query($id: ID!) { user(id: $id) { id } }",
            json!({ "id": "not-a-uuid" })
        )
        .await
        .code(),
        "BAD_USER_INPUT"
    );
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { deleteUser(id: $id) }",
        json!({ "id": id }),
    )
    .await
    .ok();
    assert_eq!(
        app.gql(
            Some(&admin.access),
            "query($id: ID!) { user(id: $id) { id } }",
            json!({ "id": id })
        )
        .await
        .code(),
        "NOT_FOUND"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_active_administrator_is_protected() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let me = admin.user_id.clone();
    let update = "mutation($id: ID!, $r: Role, $a: Boolean) { updateUser(id: $id, input: {role: $r, isActive: $a}) { id } }";

    let demote = app
        .gql(
            Some(&admin.access),
            update,
            json!({ "id": me, "r": "USER" }),
        )
        .await;
    assert_eq!(demote.code(), "CONFLICT");
    let deactivate = app
        .gql(Some(&admin.access), update, json!({ "id": me, "a": false }))
        .await;
    assert_eq!(deactivate.code(), "CONFLICT");
    let bulk = app
        .gql(
            Some(&admin.access),
            "mutation($id: ID!) { bulkUpdateUsers(ids: [$id], input: {role: USER}) }",
            json!({ "id": me }),
        )
        .await;
    assert_eq!(bulk.code(), "CONFLICT");
    let delete_self = app
        .gql(
            Some(&admin.access),
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({ "id": me }),
        )
        .await;
    assert_eq!(delete_self.code(), "FORBIDDEN");
    // Still an administrator.
    app.gql(
        Some(&admin.access),
        "{ userStats { administrators } }",
        json!({}),
    )
    .await
    .ok();

    // With a second administrator, the first may step down; the second then can't.
    let (second, _) = app.register("second").await;
    app.gql(
        Some(&admin.access),
        update,
        json!({ "id": second.user_id, "r": "ADMINISTRATOR" }),
    )
    .await
    .ok();
    app.gql(
        Some(&admin.access),
        update,
        json!({ "id": me, "r": "USER" }),
    )
    .await
    .ok();
    let last = app
        .gql(
            Some(&second.access),
            update,
            json!({ "id": second.user_id, "a": false }),
        )
        .await;
    assert_eq!(last.code(), "CONFLICT");
    let delete_last = app
        .gql(
            Some(&second.access),
            "mutation($id: ID!) { deleteUser(id: $id) }",
            json!({ "id": second.user_id }),
        )
        .await;
    assert_eq!(delete_last.code(), "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_administrators_demoting_each_other_at_once_leave_one() {
    let app = spawn_app().await;
    let a = app.admin().await;
    let (b, _) = app.register("other-admin").await;
    let update = "mutation($id: ID!) { updateUser(id: $id, input: {role: USER}) { id } }";
    app.gql(
        Some(&a.access),
        "mutation($id: ID!) { updateUser(id: $id, input: {role: ADMINISTRATOR}) { id } }",
        json!({ "id": b.user_id }),
    )
    .await
    .ok();
    // Two tasks released together by a barrier, each demoting the other.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let demote = |token: String, target: String| {
        let (client, address, barrier) = (app.client.clone(), app.address.clone(), barrier.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            gql_at(
                &client,
                &address,
                Some(&token),
                update,
                json!({ "id": target }),
            )
            .await
        })
    };
    let ta = demote(a.access.clone(), b.user_id.clone());
    let tb = demote(b.access.clone(), a.user_id.clone());
    let (ra, rb) = (ta.await.unwrap(), tb.await.unwrap());
    let failures = [&ra, &rb]
        .iter()
        .filter(|r| r.0.get("errors").is_some())
        .count();
    assert_eq!(
        failures, 1,
        "exactly one demotion wins: {} / {}",
        ra.0, rb.0
    );
    let stats = app
        .gql(
            Some(&a.access),
            "{ userStats { administrators } }",
            json!({}),
        )
        .await;
    let stats = if stats.0.get("errors").is_some() {
        app.gql(
            Some(&b.access),
            "{ userStats { administrators } }",
            json!({}),
        )
        .await
    } else {
        stats
    };
    assert_eq!(stats.ok().data("userStats.administrators"), &json!(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_update_is_all_or_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (u1, _) = app.register("bulk1").await;
    let (u2, _) = app.register("bulk2").await;
    let q = "mutation($ids: [ID!]!) { bulkUpdateUsers(ids: $ids, input: {isActive: false}) }";
    let missing = uuid::Uuid::new_v4().to_string();

    let r = app
        .gql(
            Some(&admin.access),
            q,
            json!({ "ids": [u1.user_id, missing] }),
        )
        .await;
    assert_eq!(r.code(), "NOT_FOUND");
    app.me(&u1.access).await.ok(); // unchanged: still active

    let r = app
        .gql(
            Some(&admin.access),
            q,
            json!({ "ids": [u1.user_id, u2.user_id] }),
        )
        .await
        .ok();
    assert_eq!(r.data("bulkUpdateUsers"), &json!(2));
    assert_eq!(app.me(&u1.access).await.code(), "UNAUTHENTICATED");
    assert_eq!(app.me(&u2.access).await.code(), "UNAUTHENTICATED");

    let empty = app.gql(Some(&admin.access), q, json!({ "ids": [] })).await;
    assert_eq!(empty.code(), "BAD_USER_INPUT");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_mutations_are_audited() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (u, _) = app.register("audited").await;
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { updateUser(id: $id, input: {name: \"Audited Name\"}) { id } }",
        json!({ "id": u.user_id }),
    )
    .await
    .ok();
    app.gql(
        Some(&admin.access),
        "mutation { createUser(input: {name: \"A\", email: \"a-audit@example.com\", password: \"Password123\"}) { id } }",
        json!({}),
    )
    .await
    .ok();
    // A refused mutation leaves no audit row.
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { deleteUser(id: $id) }",
        json!({ "id": admin.user_id }),
    )
    .await;

    let q = "query($actor: ID, $action: String) { auditLog(actorId: $actor, action: $action) {
        totalCount edges { node { action targetType targetId metadata actor { email } createdAt } } } }";
    let r = app
        .gql(Some(&admin.access), q, json!({ "actor": admin.user_id }))
        .await
        .ok();
    assert_eq!(r.data("auditLog.totalCount"), &json!(2));
    let newest = &r.data("auditLog.edges")[0]["node"];
    assert_eq!(newest["action"], "user.create");
    assert_eq!(newest["actor"]["email"], ADMIN_EMAIL);
    let r = app
        .gql(Some(&admin.access), q, json!({ "action": "user.update" }))
        .await
        .ok();
    assert_eq!(r.data("auditLog.totalCount"), &json!(1));
    let entry = &r.data("auditLog.edges")[0]["node"];
    assert_eq!(entry["targetId"], json!(u.user_id));
    assert_eq!(entry["metadata"]["name"], "Audited Name");
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_rows_keep_their_actor_after_the_actor_is_deleted() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let email = format!("passing-admin-{}@example.com", Uuid::new_v4().simple());
    let created = app
        .gql(
            Some(&admin.access),
            "mutation($e: String!) { createUser(input: {name: \"Passing\", email: $e, password: \"Password123\", role: ADMINISTRATOR}) { id } }",
            json!({ "e": email }),
        )
        .await
        .ok();
    let passing_id = created.str("createUser.id");
    let passing = app.login(&email, PASSWORD).await;
    app.gql(
        Some(&passing.access),
        "mutation { createServiceCategory(input: {slug: \"left-behind\", name: \"Left behind\"}) { id } }",
        json!({}),
    )
    .await
    .ok();
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { deleteUser(id: $id) }",
        json!({ "id": passing_id }),
    )
    .await
    .ok();

    let r = app
        .gql(
            Some(&admin.access),
            "query($a: ID) { auditLog(actorId: $a) { totalCount edges { node { action actorId actorEmail actor { id } } } } }",
            json!({ "a": passing_id }),
        )
        .await
        .ok();
    assert_eq!(r.data("auditLog.totalCount"), &json!(1));
    let entry = &r.data("auditLog.edges")[0]["node"];
    assert_eq!(entry["action"], "category.create");
    assert_eq!(entry["actorId"], json!(passing_id));
    assert_eq!(entry["actorEmail"], json!(email));
    assert!(entry["actor"].is_null(), "the user is gone: {entry}");
}
