//! Wallets and subscribing: the debit, the invoice, the instance; shortfalls, limits,
//! quotas, currencies; concurrency and idempotency; who sees what; live events.

use serde_json::{Value, json};

use crate::helpers::*;
use crate::subscriptions::{connect, recv, send};

pub const SUBSCRIBE: &str = "mutation($plan: ID!, $name: String!, $key: String) {
    subscribe(input: {planId: $plan, name: $name, idempotencyKey: $key}) {
        subscription { id name status price { amount currency } currentPeriodStart currentPeriodEnd
                       plan { id name } service { slug } }
        instance { id name subdomain url status desiredState }
    }
}";

pub const WALLET: &str = "{ wallet { balance { amount currency }
    transactions(first: 100) { totalCount edges { node { id type amount { amount } balanceBefore { amount }
        balanceAfter { amount } reference description invoiceId subscriptionId } } } } }";

pub const SUBSCRIPTION: &str = "query($id: ID!) { serviceSubscription(id: $id) {
    id status price { amount } currentPeriodStart currentPeriodEnd autoRenew cancelAtPeriodEnd
    failedCharges graceUntil nextRetryAt suspendedAt cancelledAt expiredAt
    plan { id name } instance { status desiredState } } }";

pub const INVOICES: &str = "{ myInvoices(first: 100) { totalCount edges { node {
    id number status periodStart periodEnd subtotal { amount } tax { amount } total { amount }
    lines { description quantity unitPrice { amount } amount { amount } } issuedAt paidAt } } } }";

/// The id of a seeded plan, e.g. ("n8n", "Basic").
pub async fn plan_id(app: &TestApp, service: &str, plan: &str) -> String {
    let r = app
        .gql(
            None,
            "query($s: String!) { service(slug: $s) { plans { id name } } }",
            json!({ "s": service }),
        )
        .await
        .ok();
    r.data("service.plans")
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == plan)
        .unwrap_or_else(|| panic!("no plan {service} {plan}"))["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Credits (or debits) a wallet as the administrator.
pub async fn adjust(app: &TestApp, admin: &Session, user_id: &str, amount: &str) -> Gql {
    app.gql(
        Some(&admin.access),
        "mutation($u: ID!, $a: String!) { adjustWalletBalance(userId: $u, amount: $a, reason: \"test\") { id amount { amount } balanceAfter { amount } } }",
        json!({ "u": user_id, "a": amount }),
    )
    .await
}

/// A new customer whose wallet holds `amount` (major units of IDR).
pub async fn funded_user(app: &TestApp, admin: &Session, name: &str, amount: &str) -> Session {
    let (s, _) = app.register(name).await;
    adjust(app, admin, &s.user_id, amount).await.ok();
    s
}

pub async fn subscribe(app: &TestApp, s: &Session, plan: &str, name: &str) -> Gql {
    app.gql(
        Some(&s.access),
        SUBSCRIBE,
        json!({ "plan": plan, "name": name }),
    )
    .await
}

pub async fn balance(app: &TestApp, s: &Session) -> String {
    app.gql(Some(&s.access), WALLET, json!({}))
        .await
        .ok()
        .str("wallet.balance.amount")
}

pub fn nodes(v: &Value) -> Vec<Value> {
    v["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

pub async fn used_quota(app: &TestApp, admin: &Session, service: &str, plan: &str) -> i64 {
    let r = app
        .gql(
            Some(&admin.access),
            "query($s: String!) { service(slug: $s) { plans { name usedQuota } } }",
            json!({ "s": service }),
        )
        .await
        .ok();
    r.data("service.plans")
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == plan)
        .unwrap()["usedQuota"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seeded_user_subscribes_and_sees_the_debit_the_invoice_and_a_pending_instance() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = app.login(USER_EMAIL, USER_PASSWORD).await;
    // The demo account starts with a recorded balance.
    let w = app.gql(Some(&user.access), WALLET, json!({})).await.ok();
    assert_eq!(w.str("wallet.balance.amount"), "200000.00");
    assert_eq!(w.str("wallet.balance.currency"), "IDR");
    let first = &nodes(w.data("wallet.transactions"))[0];
    assert_eq!(first["type"], "ADJUSTMENT");
    assert_eq!(first["balanceAfter"]["amount"], "200000.00");

    let basic = plan_id(&app, "n8n", "Basic").await;
    let r = subscribe(&app, &user, &basic, "My Flows").await.ok();
    assert_eq!(r.str("subscribe.subscription.status"), "ACTIVE");
    assert_eq!(r.str("subscribe.subscription.price.amount"), "25000.00");
    assert_eq!(r.str("subscribe.subscription.plan.name"), "Basic");
    assert_eq!(r.str("subscribe.subscription.service.slug"), "n8n");
    assert_eq!(r.str("subscribe.instance.status"), "PENDING");
    assert_eq!(r.str("subscribe.instance.desiredState"), "RUNNING");
    assert!(
        r.str("subscribe.instance.subdomain")
            .starts_with("my-flows-")
    );
    let start =
        chrono::DateTime::parse_from_rfc3339(&r.str("subscribe.subscription.currentPeriodStart"))
            .unwrap();
    let end =
        chrono::DateTime::parse_from_rfc3339(&r.str("subscribe.subscription.currentPeriodEnd"))
            .unwrap();
    assert!(
        (28..=31).contains(&(end - start).num_days()),
        "one calendar month"
    );

    let w = app.gql(Some(&user.access), WALLET, json!({})).await.ok();
    assert_eq!(w.str("wallet.balance.amount"), "175000.00");
    let debit = &nodes(w.data("wallet.transactions"))[0];
    assert_eq!(debit["type"], "SUBSCRIPTION");
    assert_eq!(debit["amount"]["amount"], "-25000.00");
    assert_eq!(debit["balanceBefore"]["amount"], "200000.00");
    assert_eq!(debit["balanceAfter"]["amount"], "175000.00");

    let inv = app.gql(Some(&user.access), INVOICES, json!({})).await.ok();
    let invoices = nodes(inv.data("myInvoices"));
    assert_eq!(invoices.len(), 1);
    let invoice = &invoices[0];
    let year = chrono::Utc::now().format("%Y").to_string();
    assert_eq!(invoice["number"], format!("INV-{year}-000001"));
    assert_eq!(invoice["status"], "PAID");
    assert_eq!(invoice["total"]["amount"], "25000.00");
    assert_eq!(invoice["lines"][0]["amount"]["amount"], "25000.00");
    assert_eq!(
        debit["reference"], invoice["number"],
        "the debit names its invoice"
    );
    assert_eq!(debit["invoiceId"], invoice["id"]);
    assert_eq!(used_quota(&app, &admin, "n8n", "Basic").await, 1);

    let mine = app
        .gql(
            Some(&user.access),
            "{ mySubscriptions { totalCount edges { node { name status instance { status } } } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(mine.data("mySubscriptions.totalCount"), 1);
    assert_eq!(
        mine.data("mySubscriptions.edges")[0]["node"]["instance"]["status"],
        "PENDING"
    );
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscribe_beyond_the_balance_is_payment_required_and_changes_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = funded_user(&app, &admin, "short", "10000").await;
    let basic = plan_id(&app, "n8n", "Basic").await;
    let r = subscribe(&app, &user, &basic, "too dear").await;
    assert_eq!(r.code(), "PAYMENT_REQUIRED", "{:?}", r.0);
    assert_eq!(r.error()["extensions"]["shortfall"]["amount"], "15000.00");
    assert_eq!(r.error()["extensions"]["shortfall"]["currency"], "IDR");
    assert_eq!(balance(&app, &user).await, "10000.00");
    let mine = app
        .gql(
            Some(&user.access),
            "{ mySubscriptions { totalCount } myInvoices { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(mine.data("mySubscriptions.totalCount"), 0);
    assert_eq!(mine.data("myInvoices.totalCount"), 0);
    assert_eq!(used_quota(&app, &admin, "n8n", "Basic").await, 0);
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_quotas_currencies_and_plans_in_use() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = funded_user(&app, &admin, "limits", "1000000").await;
    // n8n Basic allows three per customer.
    let basic = plan_id(&app, "n8n", "Basic").await;
    for i in 0..3 {
        subscribe(&app, &user, &basic, &format!("flow {i}"))
            .await
            .ok();
    }
    let fourth = subscribe(&app, &user, &basic, "flow 4").await;
    assert_eq!(fourth.code(), "CONFLICT");
    assert!(
        fourth.error()["message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );

    // A plan with a quota of one sells once.
    let service = app
        .gql(
            Some(&admin.access),
            "{ service(slug: \"ghost\") { id } }",
            json!({}),
        )
        .await
        .ok()
        .str("service.id");
    let create = "mutation($s: ID!, $n: String!, $c: String) { createServicePlan(input: {serviceId: $s, name: $n, planType: \"BASIC\", monthlyPrice: {amount: \"1000\", currency: $c}, cpuMilli: 100, memoryMb: 128, storageGb: 1, totalQuota: 1}) { id } }";
    let scarce = app
        .gql(
            Some(&admin.access),
            create,
            json!({ "s": service, "n": "Scarce", "c": "IDR" }),
        )
        .await
        .ok()
        .str("createServicePlan.id");
    subscribe(&app, &user, &scarce, "the only one").await.ok();
    let other = funded_user(&app, &admin, "late", "10000").await;
    let sold_out = subscribe(&app, &other, &scarce, "too late").await;
    assert_eq!(sold_out.code(), "CONFLICT");
    assert!(
        sold_out.error()["message"]
            .as_str()
            .unwrap()
            .contains("sold out")
    );
    assert_eq!(balance(&app, &other).await, "10000.00");

    // A plan in use can't be deleted.
    let del = app
        .gql(
            Some(&admin.access),
            "mutation($id: ID!) { deleteServicePlan(id: $id) }",
            json!({ "id": scarce }),
        )
        .await;
    assert_eq!(del.code(), "CONFLICT");

    // A plan priced in another currency than the wallets' can't be bought.
    let dollars = app
        .gql(
            Some(&admin.access),
            create,
            json!({ "s": service, "n": "Dollars", "c": "USD" }),
        )
        .await
        .ok()
        .str("createServicePlan.id");
    let r = subscribe(&app, &other, &dollars, "in dollars").await;
    assert_eq!(r.code(), "CONFLICT");
    let message = r.error()["message"].as_str().unwrap();
    assert!(
        message.contains("USD") && message.contains("IDR"),
        "{message}"
    );
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_subscribes_against_a_balance_covering_three() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    // Ghost Basic costs 30000 and has no per-customer limit: only the balance limits.
    let user = funded_user(&app, &admin, "racer", "90000").await;
    let plan = plan_id(&app, "ghost", "Basic").await;
    let attempts = (0..50).map(|i| {
        let (app, user, plan) = (&app, &user, &plan);
        async move { subscribe(app, user, plan, &format!("blog {i}")).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let ok = results.iter().filter(|r| r.0["errors"].is_null()).count();
    let short = results
        .iter()
        .filter(|r| r.0["errors"].is_array() && r.code() == "PAYMENT_REQUIRED")
        .count();
    assert_eq!(ok, 3, "exactly three fit the balance");
    assert_eq!(short, 47, "the rest are short, nothing else");
    assert_eq!(balance(&app, &user).await, "0.00");
    let mine = app
        .gql(
            Some(&user.access),
            "{ mySubscriptions { totalCount } myInvoices { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(mine.data("mySubscriptions.totalCount"), 3);
    assert_eq!(mine.data("myInvoices.totalCount"), 3);
    assert_eq!(used_quota(&app, &admin, "ghost", "Basic").await, 3);
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_retries_with_one_idempotency_key_make_one_subscription_and_one_charge() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = funded_user(&app, &admin, "retrier", "100000").await;
    let plan = plan_id(&app, "ghost", "Basic").await;
    let vars = json!({ "plan": plan, "name": "retried", "key": "order-42" });
    let attempts = (0..20).map(|_| app.gql(Some(&user.access), SUBSCRIBE, vars.clone()));
    let results = futures_util::future::join_all(attempts).await;
    let ids: std::collections::BTreeSet<String> = results
        .into_iter()
        .map(|r| r.ok().str("subscribe.subscription.id"))
        .collect();
    assert_eq!(ids.len(), 1, "every retry returns the first result");
    assert_eq!(balance(&app, &user).await, "70000.00", "charged once");

    // Later, the same key again: the same subscription, nothing charged.
    let again = app.gql(Some(&user.access), SUBSCRIBE, vars).await.ok();
    assert_eq!(
        &again.str("subscribe.subscription.id"),
        ids.first().unwrap()
    );
    assert_eq!(balance(&app, &user).await, "70000.00");
    // The same key with other arguments is a conflict.
    let other = app
        .gql(
            Some(&user.access),
            SUBSCRIBE,
            json!({ "plan": plan, "name": "different", "key": "order-42" }),
        )
        .await;
    assert_eq!(other.code(), "CONFLICT");
    // Another customer's identical key is theirs alone.
    let someone = funded_user(&app, &admin, "someone", "100000").await;
    let theirs = app
        .gql(
            Some(&someone.access),
            SUBSCRIBE,
            json!({ "plan": plan, "name": "retried", "key": "order-42" }),
        )
        .await
        .ok();
    assert_ne!(
        &theirs.str("subscribe.subscription.id"),
        ids.first().unwrap()
    );
    assert_eq!(balance(&app, &someone).await, "70000.00");
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn customers_see_and_touch_only_their_own_subscriptions_and_invoices() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let alice = funded_user(&app, &admin, "alice", "100000").await;
    let bob = funded_user(&app, &admin, "bob", "100000").await;
    let plan = plan_id(&app, "ghost", "Basic").await;
    let sub = subscribe(&app, &alice, &plan, "alice blog")
        .await
        .ok()
        .str("subscribe.subscription.id");
    let invoice = app.gql(Some(&alice.access), INVOICES, json!({})).await.ok();
    let invoice_id = nodes(invoice.data("myInvoices"))[0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    for (query, vars) in [
        (SUBSCRIPTION, json!({ "id": sub })),
        (
            "mutation($id: ID!) { cancelSubscription(id: $id, atPeriodEnd: false) { id } }",
            json!({ "id": sub }),
        ),
        (
            "mutation($id: ID!) { setSubscriptionAutoRenew(id: $id, autoRenew: false) { id } }",
            json!({ "id": sub }),
        ),
        (
            "query($id: ID!) { invoice(id: $id) { number } }",
            json!({ "id": invoice_id }),
        ),
    ] {
        let r = app.gql(Some(&bob.access), query, vars).await;
        assert_eq!(r.code(), "NOT_FOUND", "{query}: {:?}", r.0);
    }
    for query in [
        "{ allSubscriptions { totalCount } }",
        "{ transactions { totalCount } }",
        "mutation { suspendSubscription(id: \"00000000-0000-0000-0000-000000000000\") { id } }",
    ] {
        assert_eq!(
            app.gql(Some(&bob.access), query, json!({})).await.code(),
            "FORBIDDEN",
            "{query}"
        );
    }
    let bobs = app
        .gql(
            Some(&bob.access),
            "{ mySubscriptions { totalCount } myInvoices { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(bobs.data("mySubscriptions.totalCount"), 0);
    assert_eq!(bobs.data("myInvoices.totalCount"), 0);
    // Administrators see everyone's.
    let all = app
        .gql(
            Some(&admin.access),
            "query($u: ID) { allSubscriptions(userId: $u) { totalCount } }",
            json!({ "u": alice.user_id }),
        )
        .await
        .ok();
    assert_eq!(all.data("allSubscriptions.totalCount"), 1);
    app.gql(Some(&admin.access), SUBSCRIPTION, json!({ "id": sub }))
        .await
        .ok();
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_adjustments_and_refunds_never_go_below_zero_and_are_audited() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = funded_user(&app, &admin, "adjusted", "50000").await;
    let too_much = adjust(&app, &admin, &user.user_id, "-50000.01").await;
    assert_eq!(too_much.code(), "CONFLICT");
    assert!(
        too_much.error()["message"]
            .as_str()
            .unwrap()
            .contains("0.01 IDR more")
    );
    for (bad, why) in [
        ("++5", "two signs"),
        ("1e5", "exponent"),
        ("5.001", "three decimals"),
    ] {
        assert_eq!(
            adjust(&app, &admin, &user.user_id, bad).await.code(),
            "BAD_USER_INPUT",
            "{why}"
        );
    }
    adjust(&app, &admin, &user.user_id, "-20000").await.ok();
    assert_eq!(balance(&app, &user).await, "30000.00");

    let plan = plan_id(&app, "ghost", "Basic").await;
    subscribe(&app, &user, &plan, "refunded").await.ok();
    assert_eq!(balance(&app, &user).await, "0.00");
    let w = app.gql(Some(&user.access), WALLET, json!({})).await.ok();
    let debit = nodes(w.data("wallet.transactions"))[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let refund = "mutation($id: ID!, $a: String) { refundTransaction(id: $id, amount: $a) { type amount { amount } balanceAfter { amount } } }";
    let part = app
        .gql(
            Some(&admin.access),
            refund,
            json!({ "id": debit, "a": "10000" }),
        )
        .await
        .ok();
    assert_eq!(part.str("refundTransaction.type"), "REFUND");
    assert_eq!(
        part.str("refundTransaction.balanceAfter.amount"),
        "10000.00"
    );
    // What is left: 20000; more than that is refused; the rest by default.
    let over = app
        .gql(
            Some(&admin.access),
            refund,
            json!({ "id": debit, "a": "20000.01" }),
        )
        .await;
    assert_eq!(over.code(), "CONFLICT");
    app.gql(Some(&admin.access), refund, json!({ "id": debit }))
        .await
        .ok();
    assert_eq!(balance(&app, &user).await, "30000.00");
    let again = app
        .gql(Some(&admin.access), refund, json!({ "id": debit }))
        .await;
    assert!(again.0["errors"].is_array(), "nothing is left to refund");
    // Users can't adjust.
    assert_eq!(
        adjust(&app, &user, &user.user_id, "1000").await.code(),
        "FORBIDDEN"
    );
    let audit = app
        .gql(
            Some(&admin.access),
            "{ auditLog(first: 50) { edges { node { action } } } }",
            json!({}),
        )
        .await;
    let text = audit.0.to_string();
    assert!(
        text.contains("wallet.adjust") && text.contains("wallet.refund"),
        "{text}"
    );
    assert_billing_consistent(&app).await;
}

/// The data of the next two events on a socket (of `kind`: "next" or legacy "data"): the
/// one for subscription id "w" (the wallet) and the one for "s" (subscriptions).
async fn wallet_and_subscription_events(
    ws: &mut crate::subscriptions::Ws,
    kind: &str,
) -> (Value, Value) {
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let m = recv(ws).await;
        assert_eq!(m["type"], kind, "{m}");
        seen.push(m);
    }
    let data = |id: &str| {
        seen.iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("an event for {id}"))["payload"]["data"]
            .clone()
    };
    (data("w"), data("s"))
}

#[tokio::test(flavor = "multi_thread")]
async fn wallet_and_subscription_changes_arrive_live_over_websocket() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = funded_user(&app, &admin, "watcher", "100000").await;
    let other = funded_user(&app, &admin, "other", "100000").await;
    let before = app.state.events.subscribers();
    let mut ws = connect(&app, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", user.access) } })).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    send(&mut ws, json!({ "id": "w", "type": "subscribe", "payload": { "query": "subscription { walletChanged { balance { amount } transaction { type amount { amount } } } }" } })).await;
    send(&mut ws, json!({ "id": "s", "type": "subscribe", "payload": { "query": "subscription { serviceSubscriptionChanged { name status } }" } })).await;
    eventually("both subscriptions listen", || async {
        app.state.events.subscribers() >= before + 2
    })
    .await;

    // Someone else's movements are not delivered; the caller's are.
    adjust(&app, &admin, &other.user_id, "5").await.ok();
    let plan = plan_id(&app, "ghost", "Basic").await;
    subscribe(&app, &other, &plan, "not yours").await.ok();
    subscribe(&app, &user, &plan, "yours").await.ok();
    let (wallet, sub) = wallet_and_subscription_events(&mut ws, "next").await;
    assert_eq!(wallet["walletChanged"]["balance"]["amount"], "70000.00");
    assert_eq!(
        wallet["walletChanged"]["transaction"]["type"],
        "SUBSCRIPTION"
    );
    assert_eq!(sub["serviceSubscriptionChanged"]["name"], "yours");

    // A renewal in bulk on this replica reaches a subscriber on another one (legacy protocol).
    let replica = spawn_app_on(&app.database_url, &[]).await;
    let far_before = replica.state.events.subscribers();
    let mut far = connect(&replica, "graphql-ws").await;
    send(&mut far, json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", user.access) } })).await;
    assert_eq!(recv(&mut far).await["type"], "connection_ack");
    send(&mut far, json!({ "id": "w", "type": "start", "payload": { "query": "subscription { walletChanged { balance { amount } transaction { type } } }" } })).await;
    send(&mut far, json!({ "id": "s", "type": "start", "payload": { "query": "subscription { serviceSubscriptionChanged { name status } }" } })).await;
    eventually("the far subscriptions listen", || async {
        replica.state.events.subscribers() >= far_before + 2
    })
    .await;
    app.state.clock.advance(chrono::Duration::days(32));
    let summary = podium::subscriptions::cycle::run_renewals(&app.state)
        .await
        .unwrap();
    assert_eq!(summary.renewed, 2, "both customers' subscriptions");
    let (wallet, sub) = wallet_and_subscription_events(&mut far, "data").await;
    assert_eq!(wallet["walletChanged"]["transaction"]["type"], "RENEWAL");
    assert_eq!(wallet["walletChanged"]["balance"]["amount"], "40000.00");
    assert_eq!(sub["serviceSubscriptionChanged"]["name"], "yours");
    assert_billing_consistent(&app).await;
}
