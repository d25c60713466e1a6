//! Query cost, depth, alias and introspection limits.

use serde_json::{Value, json};

use crate::helpers::*;

/// graphql-js 16 `getIntrospectionQuery()`, verbatim: what GraphiQL, graphql-codegen,
/// Apollo and Postman send.
const INTROSPECTION_QUERY: &str = include_str!("../fixtures/introspection-query.graphql");
/// The same with every option on (descriptions, specifiedByURL, isRepeatable,
/// schema description, deprecated input values, isOneOf).
const INTROSPECTION_QUERY_ALL_OPTIONS: &str =
    include_str!("../fixtures/introspection-query-all-options.graphql");

const PAGE: &str = "services(first: 100) { edges { node { id name plans { id name } } } }";

fn aliased_pages(n: usize) -> String {
    let fields: Vec<String> = (0..n).map(|i| format!("p{i}: {PAGE}")).collect();
    format!("{{ {} }}", fields.join(" "))
}

fn assert_refused(r: &Gql, code: &str) {
    assert_eq!(r.code(), code, "{}", r.0);
    assert!(
        r.0.get("data").is_none(),
        "a refused request has no data: {}",
        r.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cost_of_ninety_aliased_hundred_item_pages_is_refused() {
    let app = spawn_app().await;
    let r = app.gql(None, &aliased_pages(90), json!({})).await;
    assert_refused(&r, "QUERY_TOO_COMPLEX");
    // Each page costs 100 x (edges 1 + node 1 + id 1 + name 1 + 5 plans x 2).
    assert_eq!(r.error()["extensions"]["cost"]["requested"], 90 * 1400);
    assert_eq!(r.error()["extensions"]["cost"]["limit"], 20_000);
    assert_eq!(r.0["extensions"]["cost"]["requested"], 90 * 1400);
    // Under the alias cap the cost alone still refuses it.
    let r = app.gql(None, &aliased_pages(15), json!({})).await;
    assert_refused(&r, "QUERY_TOO_COMPLEX");
}

#[tokio::test(flavor = "multi_thread")]
async fn cost_of_one_page_of_hundred_services_with_plans_is_accepted_and_reported() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    for i in 0..100 {
        let s = app
            .gql(
                Some(&admin.access),
                "mutation($slug: String!) { createService(input: {slug: $slug, name: $slug, dockerImage: \"nginx:1.27\", containerPort: 80}) { id } }",
                json!({ "slug": format!("bulk-{i}") }),
            )
            .await
            .ok();
        app.gql(
            Some(&admin.access),
            "mutation($s: ID!) { createServicePlan(input: {serviceId: $s, name: \"Basic\", monthlyPrice: {amount: \"1000\"}, cpuMilli: 100, memoryMb: 128, storageGb: 1}) { id } }",
            json!({ "s": s.str("createService.id") }),
        )
        .await
        .ok();
    }
    let r = app
        .gql(None, &format!("{{ {PAGE} }}"), json!({}))
        .await
        .ok();
    let edges = r.data("services.edges").as_array().unwrap();
    assert_eq!(edges.len(), 100);
    assert!(
        edges
            .iter()
            .all(|e| !e["node"]["plans"].as_array().unwrap().is_empty())
    );
    assert_eq!(
        r.0["extensions"]["cost"],
        json!({ "requested": 1400, "limit": 20_000 })
    );
    // The default page size (20) is what an absent `first` costs.
    let r = app
        .gql(None, "{ services { edges { node { id } } } }", json!({}))
        .await
        .ok();
    assert_eq!(r.0["extensions"]["cost"]["requested"], 20 * 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn query_aliases_are_capped_counting_fragment_spreads() {
    let app = spawn_app_with(&[("PODIUM_MAX_ALIASES", "4")]).await;
    app.gql(
        None,
        "{ a: __typename b: __typename c: __typename d: __typename }",
        json!({}),
    )
    .await
    .ok();
    let r = app
        .gql(
            None,
            "{ a: __typename b: __typename c: __typename d: __typename e: __typename }",
            json!({}),
        )
        .await;
    assert_refused(&r, "TOO_MANY_ALIASES");
    assert_eq!(r.error()["extensions"]["limit"], 4);
    // A fragment's aliases count each time it is spread.
    let r = app
        .gql(
            None,
            "{ ...F x: serviceCategories { ...G } } fragment F on Query { a: __typename b: __typename } fragment G on ServiceCategory { ...H ...H } fragment H on ServiceCategory { s: slug }",
            json!({}),
        )
        .await;
    assert_refused(&r, "TOO_MANY_ALIASES");
    assert_eq!(r.error()["extensions"]["aliases"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn deep_queries_are_refused_with_a_code_unless_only_introspection() {
    let app = spawn_app_with(&[("PODIUM_MAX_QUERY_DEPTH", "3")]).await;
    let (s, _) = app.register("deep").await;
    let deep = "{ auditLog { edges { node { actor { email } } } } }";
    let r = app.gql(Some(&s.access), deep, json!({})).await;
    assert_refused(&r, "QUERY_TOO_DEEP");
    assert_eq!(r.error()["extensions"]["depth"], 5);
    assert_eq!(r.error()["extensions"]["limit"], 3);

    // The standard introspection query is 15 deep; alone it passes...
    let r = app.gql(None, INTROSPECTION_QUERY, json!({})).await.ok();
    assert_eq!(r.str("__schema.queryType.name"), "Query");
    // ...but mixed with ordinary fields the depth limit applies to it all.
    let mixed = INTROSPECTION_QUERY.replacen("__schema {", "me { id } __schema {", 1);
    let r = app.gql(None, &mixed, json!({})).await;
    assert_refused(&r, "QUERY_TOO_DEEP");

    // Introspection's own lists may not nest three deep (graphql-js's rule).
    let r = app
        .gql(
            None,
            "{ __schema { types { fields { type { fields { type { fields { name } } } } } } } }",
            json!({}),
        )
        .await;
    assert_refused(&r, "QUERY_TOO_DEEP");
    assert_eq!(r.error()["message"], "Maximum introspection depth exceeded");

    // The parser's own nesting guard carries a code too.
    let nested = format!(
        "{{ {}__typename{} }}",
        "... on Query { ".repeat(40),
        " }".repeat(40)
    );
    let r = app.gql(None, &nested, json!({})).await;
    assert_refused(&r, "QUERY_TOO_DEEP");
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_query_of_graphql_js_is_answered() {
    let app = spawn_app().await;
    for query in [INTROSPECTION_QUERY, INTROSPECTION_QUERY_ALL_OPTIONS] {
        let r = app.gql(None, query, json!({})).await.ok();
        let types = r.data("__schema.types").as_array().unwrap();
        let names: Vec<&str> = types.iter().filter_map(|t| t["name"].as_str()).collect();
        for expected in ["Query", "Mutation", "Subscription", "Service", "__Schema"] {
            assert!(names.contains(&expected), "{expected} missing: {names:?}");
        }
        assert_eq!(r.str("__schema.mutationType.name"), "Mutation");
        let cost = &r.0["extensions"]["cost"];
        assert!(
            cost["requested"].as_u64().unwrap() < cost["limit"].as_u64().unwrap(),
            "{cost}"
        );
    }
    // GraphiQL is served: with introspection it has docs and autocomplete.
    let page = app.get("/graphql").await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("graphiql"));
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_off_refuses_the_standard_query_and_hides_graphiql() {
    let app = spawn_app_with(&[("PODIUM_INTROSPECTION", "false")]).await;
    for query in [
        INTROSPECTION_QUERY,
        "{ __type(name: \"Query\") { name } }",
        "{ ...F } fragment F on Query { __schema { queryType { name } } }",
    ] {
        let r = app.gql(None, query, json!({})).await;
        assert_refused(&r, "INTROSPECTION_DISABLED");
        assert_eq!(
            r.error()["message"],
            "introspection is disabled on this server"
        );
    }
    // `__typename` is not introspection of the schema.
    let r = app.gql(None, "{ __typename }", json!({})).await.ok();
    assert_eq!(r.str("__typename"), "Query");
    assert_eq!(app.get("/graphql").await.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn parse_and_validation_failures_carry_codes() {
    let app = spawn_app().await;
    let r = app.gql(None, "{", json!({})).await;
    assert_refused(&r, "GRAPHQL_PARSE_FAILED");
    let r = app.gql(None, "{ noSuchField }", json!({})).await;
    assert_refused(&r, "GRAPHQL_VALIDATION_FAILED");
    let r: Value = app
        .post_graphql(json!({ "query": "{ services(first: 1000) { totalCount } }" }))
        .await
        .json()
        .await
        .unwrap();
    // `first` above the page size is refused by the resolver, and costed as 100.
    assert_eq!(r["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert_eq!(r["extensions"]["cost"]["requested"], 100);
}
