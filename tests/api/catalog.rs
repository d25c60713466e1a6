//! The catalog: what anonymous users, USERs and administrators see; validation; N+1.

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};

use crate::helpers::*;

const SERVICES: &str = "query($first: Int, $category: String, $search: String, $featured: Boolean) {
    services(first: $first, category: $category, search: $search, featured: $featured) {
        totalCount edges { node { slug name isActive category { slug } plans { name planType monthlyPrice { amount currency } isActive } } } } }";

fn slugs(r: &Gql) -> Vec<String> {
    let mut v: Vec<String> = r
        .data("services.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["slug"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_users_see_the_seeded_catalog_with_plans() {
    let app = spawn_app().await;
    app.seed().await;
    let r = app.gql(None, SERVICES, json!({})).await.ok();
    assert_eq!(
        slugs(&r),
        [
            "ghost",
            "gitea",
            "n8n",
            "plausible",
            "uptime-kuma",
            "wordpress"
        ]
    );
    let n8n = r
        .data("services.edges")
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"]["slug"] == "n8n")
        .unwrap()["node"]
        .clone();
    assert_eq!(n8n["category"]["slug"], "automation");
    assert_eq!(n8n["plans"][0]["name"], "Basic");
    assert_eq!(
        n8n["plans"][0]["monthlyPrice"],
        json!({ "amount": "25000.00", "currency": "IDR" })
    );
    assert!(n8n["plans"].as_array().unwrap().len() >= 2);

    let r = app
        .gql(None, SERVICES, json!({ "category": "content" }))
        .await
        .ok();
    assert_eq!(slugs(&r), ["ghost", "wordpress"]);
    let r = app
        .gql(None, SERVICES, json!({ "search": "KUMA" }))
        .await
        .ok();
    assert_eq!(slugs(&r), ["uptime-kuma"]);
    let r = app
        .gql(None, SERVICES, json!({ "featured": true }))
        .await
        .ok();
    assert_eq!(slugs(&r), ["ghost", "n8n", "uptime-kuma"]);

    let cats = app
        .gql(None, "{ serviceCategories { slug } }", json!({}))
        .await
        .ok();
    assert_eq!(cats.data("serviceCategories").as_array().unwrap().len(), 5);
    let one = app
        .gql(
            None,
            "query { service(slug: \"ghost\") { name plans { name isAvailable remainingQuota } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(one.str("service.name"), "Ghost");
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_fields_are_for_administrators_only() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, _) = app.register("curious").await;
    let query = "query { service(slug: \"ghost\") { name dockerImage containerPort envTemplate volumeMountPath plans { name usedQuota totalQuota } } }";
    for token in [None, Some(user.access.as_str())] {
        let r = app.gql(token, query, json!({})).await;
        assert_eq!(r.0["data"]["service"]["name"], "Ghost", "{}", r.0);
        for field in [
            "dockerImage",
            "containerPort",
            "envTemplate",
            "volumeMountPath",
        ] {
            assert!(
                r.0["data"]["service"][field].is_null(),
                "{field} leaked: {}",
                r.0
            );
        }
        assert!(
            r.0["data"]["service"]["plans"][0]["usedQuota"].is_null(),
            "{}",
            r.0
        );
        let errors = r.0["errors"].as_array().unwrap();
        assert!(
            errors
                .iter()
                .all(|e| e["extensions"]["code"] == "FORBIDDEN"),
            "{}",
            r.0
        );
    }
    let r = app.gql(Some(&admin.access), query, json!({})).await.ok();
    assert_eq!(r.str("service.dockerImage"), "ghost:5.96-alpine");
    assert_eq!(r.data("service.containerPort"), &json!(2368));
    assert!(r.data("service.plans").as_array().unwrap()[0]["usedQuota"].is_number());
}

async fn service_id(app: &TestApp, token: &str, slug: &str) -> String {
    app.gql(
        Some(token),
        "query($s: String!) { service(slug: $s) { id plans { id name } } }",
        json!({ "s": slug }),
    )
    .await
    .ok()
    .str("service.id")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deactivated_service_disappears_for_customers_but_not_administrators() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, _) = app.register("shopper").await;
    let ghost = service_id(&app, &admin.access, "ghost").await;
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { updateService(id: $id, input: {isActive: false}) { isActive } }",
        json!({ "id": ghost }),
    )
    .await
    .ok();

    for token in [None, Some(user.access.as_str())] {
        let r = app.gql(token, SERVICES, json!({})).await.ok();
        assert!(!slugs(&r).contains(&"ghost".to_string()));
        assert_eq!(r.data("services.totalCount"), &json!(5));
        let one = app
            .gql(token, "{ service(slug: \"ghost\") { id } }", json!({}))
            .await;
        assert_eq!(one.code(), "NOT_FOUND");
    }
    let r = app.gql(Some(&admin.access), SERVICES, json!({})).await.ok();
    assert!(slugs(&r).contains(&"ghost".to_string()));
    assert_eq!(r.data("services.totalCount"), &json!(6));

    // A service whose plans are all inactive is not for sale either.
    let plans = app
        .gql(
            Some(&admin.access),
            "{ service(slug: \"gitea\") { plans { id } } }",
            json!({}),
        )
        .await
        .ok();
    for plan in plans.data("service.plans").as_array().unwrap() {
        app.gql(
            Some(&admin.access),
            "mutation($id: ID!) { updateServicePlan(id: $id, input: {isActive: false}) { isActive } }",
            json!({ "id": plan["id"] }),
        )
        .await
        .ok();
    }
    let r = app.gql(None, SERVICES, json!({})).await.ok();
    assert!(!slugs(&r).contains(&"gitea".to_string()));
    // Customers never see inactive plans.
    let r = app
        .gql(
            None,
            "{ service(slug: \"n8n\") { plans { isActive } } }",
            json!({}),
        )
        .await
        .ok();
    assert!(
        r.data("service.plans")
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["isActive"] == true)
    );
}

fn catalog_mutations(
    service: &str,
    plan: &str,
    category: &str,
) -> Vec<(&'static str, String, Value)> {
    vec![
        ("createServiceCategory", "mutation { createServiceCategory(input: {slug: \"matrix\", name: \"Matrix\"}) { id } }".into(), json!({})),
        ("updateServiceCategory", "mutation($id: ID!) { updateServiceCategory(id: $id, input: {name: \"Renamed\"}) { id } }".into(), json!({ "id": category })),
        (
            "createService",
            "mutation { createService(input: {slug: \"matrix-app\", name: \"Matrix\", dockerImage: \"nginx:1.27\", containerPort: 80}) { id } }".into(),
            json!({}),
        ),
        ("updateService", "mutation($id: ID!) { updateService(id: $id, input: {name: \"Renamed\"}) { id } }".into(), json!({ "id": service })),
        (
            "createServicePlan",
            "mutation($s: ID!) { createServicePlan(input: {serviceId: $s, name: \"Matrix\", monthlyPrice: {amount: \"1000\"}, cpuMilli: 100, memoryMb: 128, storageGb: 1}) { id } }".into(),
            json!({ "s": service }),
        ),
        ("updateServicePlan", "mutation($id: ID!) { updateServicePlan(id: $id, input: {sortOrder: 9}) { id } }".into(), json!({ "id": plan })),
        ("deleteServicePlan", "mutation($id: ID!) { deleteServicePlan(id: $id) }".into(), json!({ "id": plan })),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_changes_are_for_administrators_only_and_audited() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, _) = app.register("catalog-user").await;
    let ids = app
        .gql(
            Some(&admin.access),
            "{ service(slug: \"n8n\") { id category { id } plans { id } } }",
            json!({}),
        )
        .await
        .ok();
    let service = ids.str("service.id");
    let category = ids.str("service.category.id");
    let plan = ids.data("service.plans")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    for (name, query, vars) in catalog_mutations(&service, &plan, &category) {
        let anonymous = app.gql(None, &query, vars.clone()).await;
        assert_eq!(anonymous.code(), "UNAUTHENTICATED", "anonymous {name}");
        let as_user = app.gql(Some(&user.access), &query, vars.clone()).await;
        assert_eq!(as_user.code(), "FORBIDDEN", "USER {name}");
    }
    for (name, query, vars) in catalog_mutations(&service, &plan, &category) {
        let r = app.gql(Some(&admin.access), &query, vars).await;
        assert!(r.0.get("errors").is_none(), "ADMINISTRATOR {name}: {}", r.0);
    }
    let audit = app
        .gql(
            Some(&admin.access),
            "{ auditLog(first: 100) { edges { node { action } } } }",
            json!({}),
        )
        .await
        .ok();
    let actions: Vec<&str> = audit
        .data("auditLog.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["action"].as_str().unwrap())
        .collect();
    for action in [
        "category.create",
        "service.update",
        "plan.create",
        "plan.delete",
    ] {
        assert!(actions.contains(&action), "{action} audited: {actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_catalog_input_names_every_bad_field_and_changes_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let r = app
        .gql(
            Some(&admin.access),
            "mutation { createService(input: {slug: \"Bad Slug\", name: \"X\", dockerImage: \"UPPER/case:\", containerPort: 70000, volumeMountPath: \"relative\"}) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(r.code(), "BAD_USER_INPUT");
    let fields = &r.error()["extensions"]["fields"];
    for f in ["slug", "dockerImage", "containerPort", "volumeMountPath"] {
        assert!(fields[f].is_array(), "{f}: {fields}");
    }
    let service = service_id(&app, &admin.access, "n8n").await;
    let r = app
        .gql(
            Some(&admin.access),
            "mutation($s: ID!) { createServicePlan(input: {serviceId: $s, name: \"Bad\", monthlyPrice: {amount: \"-5\", currency: \"rupiah\"}, cpuMilli: 0, memoryMb: 128, storageGb: 1}) { id } }",
            json!({ "s": service }),
        )
        .await;
    assert_eq!(r.code(), "BAD_USER_INPUT");
    let fields = &r.error()["extensions"]["fields"];
    assert!(
        fields["monthlyPrice"].is_array() && fields["cpuMilli"].is_array(),
        "{fields}"
    );
    let r = app
        .gql(
            Some(&admin.access),
            "mutation($s: ID!) { createServicePlan(input: {serviceId: $s, name: \"Cents\", monthlyPrice: {amount: \"10.999\", currency: \"USD\"}, cpuMilli: 1, memoryMb: 1, storageGb: 1}) { id } }",
            json!({ "s": service }),
        )
        .await;
    assert_eq!(r.code(), "BAD_USER_INPUT");
    let plans = app
        .gql(
            None,
            "{ service(slug: \"n8n\") { plans { name } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(
        plans.data("service.plans").as_array().unwrap().len(),
        3,
        "nothing was created"
    );
    let dup = app
        .gql(
            Some(&admin.access),
            "mutation { createService(input: {slug: \"n8n\", name: \"Again\", dockerImage: \"n8nio/n8n\", containerPort: 5678}) { id } }",
            json!({}),
        )
        .await;
    assert_eq!(dup.code(), "CONFLICT");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_with_live_subscriptions_cannot_be_deleted() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let ids = app
        .gql(
            Some(&admin.access),
            "{ service(slug: \"n8n\") { plans { id } } }",
            json!({}),
        )
        .await
        .ok();
    let plan = ids.data("service.plans")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut conn = AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    diesel::sql_query(format!(
        "UPDATE service_plans SET used_quota = 2 WHERE id = '{plan}'"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let r = app
        .gql(
            Some(&admin.access),
            "mutation($id: ID!) { deleteServicePlan(id: $id) }",
            json!({ "id": plan }),
        )
        .await;
    assert_eq!(r.code(), "CONFLICT");
    let r = app
        .gql(
            Some(&admin.access),
            "mutation($id: ID!) { updateServicePlan(id: $id, input: {totalQuota: 1}) { id } }",
            json!({ "id": plan }),
        )
        .await;
    assert_eq!(r.code(), "BAD_USER_INPUT", "quota below what is used");
    let r = app
        .gql(Some(&admin.access), "mutation($id: ID!) { updateServicePlan(id: $id, input: {isActive: false}) { isActive usedQuota } }", json!({ "id": plan }))
        .await
        .ok();
    assert_eq!(r.data("updateServicePlan.usedQuota"), &json!(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_services_costs_the_same_queries_for_10_or_100() {
    let app = spawn_app_with(&[("PODIUM_JOBS_ENABLED", "false")]).await;
    // Seeded first: the 120 services below are newer, so they fill the pages.
    let admin = app.admin().await;
    let mut conn = AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    diesel::sql_query(
        "WITH c AS (INSERT INTO service_categories (slug, name) SELECT 'cat-' || g, 'Category ' || g FROM generate_series(1, 10) g RETURNING id, slug),
              s AS (INSERT INTO services (slug, name, docker_image, container_port, category_id)
                    SELECT 'svc-' || g, 'Service ' || g, 'nginx:1.27', 80, (SELECT id FROM c WHERE slug = 'cat-' || (g % 10 + 1))
                    FROM generate_series(1, 120) g RETURNING id)
         INSERT INTO service_plans (service_id, name, plan_type, monthly_price, currency, cpu_milli, memory_mb, storage_gb)
         SELECT s.id, p.name, 'BASIC', 100000, 'IDR', 100, 128, 1 FROM s, (VALUES ('Small'), ('Large')) AS p(name)",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    // The counter is the whole pool's: background work (node sync, the event tailer) may
    // add to one measurement, never take away, so each cost is the least of three.
    let cost = async |token: Option<&str>, first: i64| {
        let mut least = u64::MAX;
        for _ in 0..3 {
            let before = app.state.queries.get();
            let r = app
                .gql(token, SERVICES, json!({ "first": first }))
                .await
                .ok();
            least = least.min(app.state.queries.get() - before);
            let edges = r.data("services.edges").as_array().unwrap();
            assert_eq!(edges.len(), first as usize);
            assert!(
                edges
                    .iter()
                    .all(|e| e["node"]["plans"].as_array().unwrap().len() == 2
                        && e["node"]["category"]["slug"].is_string())
            );
        }
        least
    };
    // An administrator's page is read from the database (customers' from memory, below).
    app.me(&admin.access).await.ok();
    let mut costs = Vec::new();
    for first in [10, 100] {
        costs.push(cost(Some(&admin.access), first).await);
    }
    eprintln!("queries for 10 and for 100 services: {costs:?}");
    assert_eq!(
        costs[0], costs[1],
        "queries for 10 and for 100 services: {costs:?}"
    );
    assert!(
        costs[1] <= 5,
        "a constant, small number of queries: {costs:?}"
    );

    // The anonymous page comes from the public catalog in memory, once loaded.
    app.gql(None, SERVICES, json!({ "first": 10 })).await.ok();
    for first in [10, 100] {
        assert_eq!(cost(None, first).await, 0, "first: {first}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reference_to_a_missing_category_is_bad_input_not_internal() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let r = app
        .gql(
            Some(&admin.access),
            "mutation($c: ID!) { createService(input: {slug: \"orphan-app\", name: \"Orphan\", dockerImage: \"nginx:1.27\", containerPort: 80, categoryId: $c}) { id } }",
            json!({ "c": uuid::Uuid::new_v4().to_string() }),
        )
        .await;
    assert_eq!(r.code(), "BAD_USER_INPUT", "{}", r.0);
    let found = app
        .gql(
            Some(&admin.access),
            "{ services(search: \"orphan\") { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(found.data("services.totalCount"), &json!(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_currency_is_refused() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let service = service_id(&app, &admin.access, "ghost").await;
    let r = app
        .gql(
            Some(&admin.access),
            "mutation($s: ID!) { createServicePlan(input: {serviceId: $s, name: \"Odd\", monthlyPrice: {amount: \"10\", currency: \"XYZ\"}, cpuMilli: 500, memoryMb: 512, storageGb: 1}) { id } }",
            json!({ "s": service }),
        )
        .await;
    assert_eq!(r.code(), "BAD_USER_INPUT", "{}", r.0);
    assert!(
        r.0["errors"][0]["extensions"]["fields"]
            .to_string()
            .contains("ISO 4217"),
        "{}",
        r.0
    );
}
