//! Top-ups through Stripe, against localstripe (started by `scripts/test`): the wallet is
//! credited exactly once per successful PaymentIntent, whether the signed webhook arrives
//! once, twice, or never (then the reconciliation job asks Stripe), and only for the
//! top-up's own amount and currency.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

const KEY: &str = "sk_test_podium";

fn stripe_url() -> String {
    std::env::var("PODIUM_TEST_STRIPE_URL").expect(
        "PODIUM_TEST_STRIPE_URL is not set: run the tests with ./scripts/test, which starts localstripe",
    )
}

/// A server talking to localstripe with its own webhook secret; with `webhook`, localstripe
/// delivers its events to this server.
async fn stripe_app(webhook: bool) -> (TestApp, String) {
    stripe_app_with(webhook, &[]).await
}

/// [`stripe_app`] with more settings.
pub(crate) async fn stripe_app_with(
    webhook: bool,
    overrides: &[(&str, &str)],
) -> (TestApp, String) {
    let secret = format!("whsec_{}", Uuid::new_v4().simple());
    let base = stripe_url();
    let mut vars = vec![
        ("STRIPE_SECRET_KEY", KEY),
        ("STRIPE_WEBHOOK_SECRET", secret.as_str()),
        ("STRIPE_API_BASE", base.as_str()),
    ];
    vars.extend_from_slice(overrides);
    let app = spawn_app_with(&vars).await;
    if webhook {
        let url = format!("{}/webhooks/stripe", app.address);
        let resp = app
            .client
            .post(format!(
                "{base}/_config/webhooks/{}",
                Uuid::new_v4().simple()
            ))
            .form(&[("url", url.as_str()), ("secret", secret.as_str())])
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "registering the webhook");
    }
    (app, secret)
}

/// A call to localstripe's API.
async fn stripe_call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let resp = app
        .client
        .request(method, format!("{}{path}", stripe_url()))
        .bearer_auth(KEY)
        .form(form)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Pays a PaymentIntent as the customer's browser would: attach the card, confirm.
pub(crate) async fn pay(app: &TestApp, intent: &str, card: &str) -> (u16, Value) {
    let (status, _) = stripe_call(
        app,
        reqwest::Method::POST,
        &format!("/v1/payment_intents/{intent}"),
        &[("payment_method", card)],
    )
    .await;
    assert_eq!(status, 200, "attaching {card}");
    stripe_call(
        app,
        reqwest::Method::POST,
        &format!("/v1/payment_intents/{intent}/confirm"),
        &[],
    )
    .await
}

const CREATE: &str = "mutation($a: String!, $k: String) { createTopUp(amount: $a, idempotencyKey: $k) { clientSecret topUp { id status paymentIntentId amount { amount currency } } } }";

pub(crate) async fn create_top_up(
    app: &TestApp,
    token: &str,
    amount: &str,
    key: Option<&str>,
) -> Gql {
    app.gql(Some(token), CREATE, json!({ "a": amount, "k": key }))
        .await
}

async fn balance(app: &TestApp, token: &str) -> String {
    app.gql(Some(token), "{ wallet { balance { amount } } }", json!({}))
        .await
        .ok()
        .str("wallet.balance.amount")
}

/// The caller's TOP_UP movements.
async fn top_up_movements(app: &TestApp, token: &str) -> Vec<Value> {
    let r = app
        .gql(
            Some(token),
            "{ wallet { transactions(type: TOP_UP) { totalCount edges { node { type amount { amount } balanceAfter { amount } reference } } } } }",
            json!({}),
        )
        .await
        .ok();
    r.data("wallet.transactions.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

/// The caller's top-ups, newest first.
async fn my_top_ups(app: &TestApp, token: &str) -> Vec<Value> {
    let r = app
        .gql(
            Some(token),
            "{ myTopUps(first: 50) { totalCount edges { node { id status paymentIntentId failureMessage settledAt } } } }",
            json!({}),
        )
        .await
        .ok();
    r.data("myTopUps.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

async fn top_up_status(app: &TestApp, token: &str, id: &str) -> String {
    my_top_ups(app, token)
        .await
        .into_iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("top-up {id} is listed"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// localstripe's event of this type about this PaymentIntent, as it sent it.
async fn stripe_event(app: &TestApp, kind: &str, intent: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, list) = stripe_call(
            app,
            reqwest::Method::GET,
            &format!("/v1/events?type={kind}&limit=10000"),
            &[],
        )
        .await;
        if let Some(event) = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["data"]["object"]["id"] == intent)
        {
            return event.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} event for {intent}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Delivers a payload to the server's webhook with this `Stripe-Signature`.
async fn deliver(app: &TestApp, payload: &str, signature: Option<&str>) -> u16 {
    let mut req = app
        .client
        .post(format!("{}/webhooks/stripe", app.address))
        .header("Content-Type", "application/json")
        .body(payload.to_string());
    if let Some(signature) = signature {
        req = req.header("Stripe-Signature", signature);
    }
    req.send().await.unwrap().status().as_u16()
}

fn signed_now(payload: &str, secret: &str) -> String {
    podium::billing::stripe::signature_header(
        payload.as_bytes(),
        secret,
        chrono::Utc::now().timestamp(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paid_top_up_credits_the_wallet_once_even_when_the_webhook_repeats() {
    let (app, secret) = stripe_app(true).await;
    let (user, _) = app.register("payer").await;
    let r = create_top_up(&app, &user.access, "50000", None).await.ok();
    assert_eq!(r.str("createTopUp.topUp.status"), "PENDING");
    assert_eq!(r.str("createTopUp.topUp.amount.amount"), "50000.00");
    let id = r.str("createTopUp.topUp.id");
    let intent = r.str("createTopUp.topUp.paymentIntentId");
    assert!(r.str("createTopUp.clientSecret").starts_with(&intent));
    assert_eq!(balance(&app, &user.access).await, "0.00");

    let (status, paid) = pay(&app, &intent, "pm_card_visa").await;
    assert_eq!(status, 200, "{paid}");
    assert_eq!(paid["status"], "succeeded");
    eventually("the webhook credits the wallet", || async {
        balance(&app, &user.access).await == "50000.00"
    })
    .await;
    assert_eq!(top_up_status(&app, &user.access, &id).await, "SUCCEEDED");

    // The same event again, twice (a retried delivery, or a replay by hand), each under a
    // fresh signature so that it passes the signature's age check: acknowledged, and
    // nothing moves (the event id was recorded).
    let event = stripe_event(&app, "payment_intent.succeeded", &intent).await;
    let payload = event.to_string();
    for _ in 0..2 {
        let status = deliver(&app, &payload, Some(&signed_now(&payload, &secret))).await;
        assert_eq!(status, 200);
    }
    // Even an event with a new id for the same PaymentIntent credits nothing more.
    let mut copy = event.clone();
    copy["id"] = json!(format!("evt_{}", Uuid::new_v4().simple()));
    let copy = copy.to_string();
    assert_eq!(
        deliver(&app, &copy, Some(&signed_now(&copy, &secret))).await,
        200
    );

    assert_eq!(balance(&app, &user.access).await, "50000.00");
    let moves = top_up_movements(&app, &user.access).await;
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!(moves[0]["amount"]["amount"], "50000.00");
    assert_eq!(moves[0]["balanceAfter"]["amount"], "50000.00");
    assert_eq!(moves[0]["reference"], intent.as_str());

    // A second top-up uses the customer made by the first.
    let second = create_top_up(&app, &user.access, "10000", None).await.ok();
    let second_intent = second.str("createTopUp.topUp.paymentIntentId");
    let customer_of = |pi: String| {
        let app = &app;
        async move {
            stripe_call(
                app,
                reqwest::Method::GET,
                &format!("/v1/payment_intents/{pi}"),
                &[],
            )
            .await
            .1["customer"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let customer = customer_of(intent.clone()).await;
    assert!(customer.starts_with("cus_"));
    assert_eq!(customer_of(second_intent).await, customer);
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_with_a_bad_or_stale_signature_is_refused_and_credits_nothing() {
    // No webhook registered: this test delivers the event itself.
    let (app, secret) = stripe_app(false).await;
    let (user, _) = app.register("forger").await;
    let r = create_top_up(&app, &user.access, "20000", None).await.ok();
    let id = r.str("createTopUp.topUp.id");
    let intent = r.str("createTopUp.topUp.paymentIntentId");
    let (status, _) = pay(&app, &intent, "pm_card_visa").await;
    assert_eq!(status, 200);
    let payload = stripe_event(&app, "payment_intent.succeeded", &intent)
        .await
        .to_string();
    let now = chrono::Utc::now().timestamp();
    let sign = |secret: &str, t: i64| {
        podium::billing::stripe::signature_header(payload.as_bytes(), secret, t)
    };

    assert_eq!(deliver(&app, &payload, None).await, 400, "no signature");
    assert_eq!(
        deliver(&app, &payload, Some("garbage")).await,
        400,
        "malformed"
    );
    assert_eq!(
        deliver(&app, &payload, Some(&sign("whsec_wrong", now))).await,
        400,
        "another secret"
    );
    assert_eq!(
        deliver(&app, &payload, Some(&sign(&secret, now - 301))).await,
        400,
        "older than 300 s"
    );
    assert_eq!(
        deliver(&app, &payload, Some(&sign(&secret, now + 301))).await,
        400,
        "more than 300 s in the future"
    );
    let tampered = payload.replace("20000", "90000");
    assert_ne!(tampered, payload);
    assert_eq!(
        deliver(&app, &tampered, Some(&sign(&secret, now))).await,
        400,
        "a body other than the one signed"
    );
    assert_eq!(balance(&app, &user.access).await, "0.00");
    assert_eq!(top_up_status(&app, &user.access, &id).await, "PENDING");

    // The refusals recorded nothing: the genuine delivery still counts.
    assert_eq!(
        deliver(&app, &payload, Some(&sign(&secret, now))).await,
        200
    );
    assert_eq!(balance(&app, &user.access).await, "20000.00");
    assert_eq!(top_up_status(&app, &user.access, &id).await, "SUCCEEDED");

    // Other event types are acknowledged and ignored.
    let other = json!({ "id": "evt_other", "type": "customer.created", "data": { "object": { "id": "cus_x" } } }).to_string();
    assert_eq!(
        deliver(&app, &other, Some(&signed_now(&other, &secret))).await,
        200
    );
    // An event about a PaymentIntent that is no top-up here is acknowledged too.
    let unknown = json!({ "id": "evt_unknown", "type": "payment_intent.succeeded", "data": { "object": { "id": "pi_unknown", "status": "succeeded", "amount": 20000, "currency": "idr" } } }).to_string();
    assert_eq!(
        deliver(&app, &unknown, Some(&signed_now(&unknown, &secret))).await,
        200
    );
    // A signed PaymentIntent event without a PaymentIntent id (or without an amount) is
    // Stripe's: acknowledged, so it isn't retried for days, and nothing moves.
    for object in [json!({}), json!({ "id": intent, "status": "succeeded" })] {
        let odd = json!({ "id": format!("evt_{}", Uuid::new_v4().simple()), "type": "payment_intent.succeeded", "data": { "object": object } }).to_string();
        assert_eq!(
            deliver(&app, &odd, Some(&signed_now(&odd, &secret))).await,
            200,
            "{odd}"
        );
    }
    assert_eq!(balance(&app, &user.access).await, "20000.00");
    assert_eq!(top_up_movements(&app, &user.access).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_card_leaves_the_top_up_failed() {
    let (app, _) = stripe_app(true).await;
    let (user, _) = app.register("declined").await;
    let r = create_top_up(&app, &user.access, "30000", None).await.ok();
    let id = r.str("createTopUp.topUp.id");
    let intent = r.str("createTopUp.topUp.paymentIntentId");
    let (status, body) = pay(&app, &intent, "pm_card_chargeCustomerFail").await;
    assert_eq!(status, 402, "{body}");
    eventually("the failure webhook marks the top-up", || async {
        top_up_status(&app, &user.access, &id).await == "FAILED"
    })
    .await;
    let top_up = my_top_ups(&app, &user.access).await.remove(0);
    assert!(
        top_up["failureMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{top_up}"
    );
    assert!(top_up["settledAt"].is_string());
    assert_eq!(balance(&app, &user.access).await, "0.00");
    assert!(top_up_movements(&app, &user.access).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn reconciliation_settles_top_ups_whose_webhook_never_came() {
    // No webhook registered: Stripe's word reaches the server only by asking.
    let (app, _) = stripe_app(false).await;
    let (user, _) = app.register("unheard").await;
    let (paid, paid_intent) = start_top_up(&app, &user.access, "40000").await;
    let (cancelled, cancelled_intent) = start_top_up(&app, &user.access, "15000").await;
    let (declined, declined_intent) = start_top_up(&app, &user.access, "12000").await;
    let (open, _) = start_top_up(&app, &user.access, "11000").await;
    assert_eq!(pay(&app, &paid_intent, "pm_card_visa").await.0, 200);
    let (status, _) = stripe_call(
        &app,
        reqwest::Method::POST,
        &format!("/v1/payment_intents/{cancelled_intent}/cancel"),
        &[],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        pay(&app, &declined_intent, "pm_card_chargeCustomerFail")
            .await
            .0,
        402
    );

    // Too young: left for the webhook.
    let done = podium::billing::topup::reconcile(&app.state).await.unwrap();
    assert_eq!(done.checked, 0);
    assert_eq!(top_up_status(&app, &user.access, &paid).await, "PENDING");

    let after = app.state.settings.billing.top_up_reconcile_after;
    app.state
        .clock
        .advance(chrono::Duration::from_std(after).unwrap() + chrono::Duration::seconds(1));
    let done = podium::billing::topup::reconcile(&app.state).await.unwrap();
    assert_eq!(
        (done.checked, done.credited, done.closed, done.errors),
        (4, 1, 2, 0)
    );
    assert_eq!(top_up_status(&app, &user.access, &paid).await, "SUCCEEDED");
    assert_eq!(
        top_up_status(&app, &user.access, &cancelled).await,
        "CANCELLED"
    );
    assert_eq!(top_up_status(&app, &user.access, &declined).await, "FAILED");
    assert_eq!(top_up_status(&app, &user.access, &open).await, "PENDING");
    assert_eq!(balance(&app, &user.access).await, "40000.00");

    // Run again (a second replica, the next tick): nothing more moves. The open one and
    // the FAILED one (which another card could still pay) are asked about again.
    let done = podium::billing::topup::reconcile(&app.state).await.unwrap();
    assert_eq!((done.checked, done.credited, done.closed), (2, 0, 0));
    assert_eq!(top_up_status(&app, &user.access, &declined).await, "FAILED");
    assert_eq!(balance(&app, &user.access).await, "40000.00");
    assert_eq!(top_up_movements(&app, &user.access).await.len(), 1);
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reconciliation_job_is_scheduled_and_runs_from_the_queue() {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    #[derive(diesel::QueryableByName)]
    struct Cron {
        #[diesel(sql_type = diesel::sql_types::Text)]
        cron: String,
    }
    let (app, _) = stripe_app(false).await;
    let mut conn = AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let found = loop {
        let found: Vec<Cron> = diesel::sql_query(
            "SELECT cron FROM schedules WHERE name = 'billing.reconcile_top_ups'",
        )
        .load(&mut conn)
        .await
        .unwrap();
        if let Some(found) = found.into_iter().next() {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the schedule is never registered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(found.cron, app.state.settings.billing.top_up_reconcile_cron);

    // A tick of it, run by the server's own workers, credits a paid top-up.
    let (user, _) = app.register("queued").await;
    let r = create_top_up(&app, &user.access, "35000", None).await.ok();
    let intent = r.str("createTopUp.topUp.paymentIntentId");
    assert_eq!(pay(&app, &intent, "pm_card_visa").await.0, 200);
    app.state.clock.advance(chrono::Duration::minutes(10));
    podium::jobs::model::enqueue(
        &mut conn,
        podium::jobs::BILLING_RECONCILE_TOP_UPS,
        json!({}),
        chrono::Utc::now(),
        None,
    )
    .await
    .unwrap();
    eventually("the queued reconciliation credits the wallet", || async {
        balance(&app, &user.access).await == "35000.00"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_top_up_without_a_stripe_key_says_top_ups_are_not_configured() {
    let app = spawn_app().await;
    let (user, _) = app.register("nokey").await;
    let r = create_top_up(&app, &user.access, "50000", None).await;
    assert_eq!(r.code(), "CONFLICT");
    let message = r.error()["message"].as_str().unwrap();
    assert!(message.contains("not configured"), "{message}");
    assert!(my_top_ups(&app, &user.access).await.is_empty());
    // Anonymous callers are turned away before that.
    let r = app
        .gql(None, CREATE, json!({ "a": "50000", "k": null }))
        .await;
    assert_eq!(r.code(), "UNAUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_idempotency_key_gives_one_top_up_and_one_payment_intent() {
    let (app, _) = stripe_app(false).await;
    let (user, _) = app.register("retrier").await;
    let key = format!("topup-{}", Uuid::new_v4());
    // Concurrent retries of one request (a client that timed out and retried).
    let calls = (0..5).map(|_| create_top_up(&app, &user.access, "25000", Some(&key)));
    let results: Vec<Gql> = futures_util::future::join_all(calls).await;
    let mut ids = Vec::new();
    let mut secrets = Vec::new();
    for r in results {
        let r = r.ok();
        ids.push(r.str("createTopUp.topUp.id"));
        secrets.push(r.str("createTopUp.clientSecret"));
    }
    // And once more, later.
    let again = create_top_up(&app, &user.access, "25000", Some(&key))
        .await
        .ok();
    ids.push(again.str("createTopUp.topUp.id"));
    secrets.push(again.str("createTopUp.clientSecret"));
    ids.dedup();
    secrets.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(secrets.len(), 1, "{secrets:?}");
    assert_eq!(my_top_ups(&app, &user.access).await.len(), 1);

    // Stripe holds one payable PaymentIntent for this user's customer (Stripe's
    // Idempotency-Key makes it one; localstripe ignores that key, and the PaymentIntents
    // of the retries that lost the race are cancelled).
    let intent = again.str("createTopUp.topUp.paymentIntentId");
    let (_, pi) = stripe_call(
        &app,
        reqwest::Method::GET,
        &format!("/v1/payment_intents/{intent}"),
        &[],
    )
    .await;
    let customer = pi["customer"].as_str().unwrap().to_string();
    let (_, all) = stripe_call(
        &app,
        reqwest::Method::GET,
        "/v1/payment_intents?limit=10000",
        &[],
    )
    .await;
    let mine = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["customer"] == customer.as_str() && p["status"] != "canceled")
        .count();
    assert_eq!(mine, 1);

    // The same key with another amount is a conflict; a new key is a new top-up.
    let r = create_top_up(&app, &user.access, "26000", Some(&key)).await;
    assert_eq!(r.code(), "CONFLICT");
    let other = create_top_up(&app, &user.access, "25000", Some("another-key"))
        .await
        .ok();
    assert_ne!(other.str("createTopUp.topUp.id"), ids[0]);
    assert_eq!(my_top_ups(&app, &user.access).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn top_up_amounts_are_checked_against_the_limits() {
    let (app, _) = stripe_app(false).await;
    let (user, _) = app.register("limits").await;
    // Defaults: 10000 to 10000000 IDR.
    for amount in ["9999.99", "10000000.01", "abc", "-10000", "10000.001"] {
        let r = create_top_up(&app, &user.access, amount, None).await;
        assert_eq!(r.code(), "BAD_USER_INPUT", "{amount}: {}", r.0);
        assert!(
            r.error()["extensions"]["fields"]["amount"].is_array(),
            "{}",
            r.0
        );
    }
    let r = create_top_up(&app, &user.access, "5", None).await;
    let text = r.0.to_string();
    assert!(
        text.contains("10000.00") && text.contains("10000000.00"),
        "{text}"
    );
    assert!(my_top_ups(&app, &user.access).await.is_empty());
    // The limits themselves are accepted.
    for amount in ["10000", "10000000.00"] {
        create_top_up(&app, &user.access, amount, None).await.ok();
    }
    assert_eq!(my_top_ups(&app, &user.access).await.len(), 2);
}

/// Tops up through Stripe as a customer would: create, pay with a card, webhook.
async fn top_up_and_pay(app: &TestApp, token: &str, amount: &str) {
    let r = create_top_up(app, token, amount, None).await.ok();
    let intent = r.str("createTopUp.topUp.paymentIntentId");
    let (status, paid) = pay(app, &intent, "pm_card_visa").await;
    assert_eq!(status, 200, "{paid}");
}

#[tokio::test(flavor = "multi_thread")]
async fn acceptance_the_seeded_user_tops_up_subscribes_and_a_suspended_subscription_recovers_on_a_top_up()
 {
    use crate::billing::{INVOICES, SUBSCRIBE, WALLET, nodes, plan_id};
    let (app, _) = stripe_app(true).await;
    app.seed().await;
    let user = app.login(USER_EMAIL, USER_PASSWORD).await;
    assert_eq!(balance(&app, &user.access).await, "200000.00");

    // The seeded user tops up; the signed webhook credits the wallet once.
    top_up_and_pay(&app, &user.access, "50000").await;
    eventually("the top-up lands", || async {
        balance(&app, &user.access).await == "250000.00"
    })
    .await;
    assert_eq!(top_up_movements(&app, &user.access).await.len(), 1);

    // Subscribes to the basic n8n plan: the debit, the invoice, a PENDING instance.
    let basic = plan_id(&app, "n8n", "Basic").await;
    let r = app
        .gql(
            Some(&user.access),
            SUBSCRIBE,
            json!({ "plan": basic, "name": "flows" }),
        )
        .await
        .ok();
    assert_eq!(r.str("subscribe.instance.status"), "PENDING");
    let w = app.gql(Some(&user.access), WALLET, json!({})).await.ok();
    assert_eq!(w.str("wallet.balance.amount"), "225000.00");
    let debit = &nodes(w.data("wallet.transactions"))[0];
    assert_eq!(debit["type"], "SUBSCRIPTION");
    assert_eq!(debit["amount"]["amount"], "-25000.00");
    let invoices = nodes(
        app.gql(Some(&user.access), INVOICES, json!({}))
            .await
            .ok()
            .data("myInvoices"),
    );
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0]["status"], "PAID");
    assert_eq!(invoices[0]["total"]["amount"], "25000.00");

    // Beyond the balance: PAYMENT_REQUIRED, and nothing changes.
    let business = plan_id(&app, "wordpress", "Business").await;
    for i in 0..2 {
        let r = app
            .gql(
                Some(&user.access),
                SUBSCRIBE,
                json!({ "plan": business, "name": format!("shop {i}") }),
            )
            .await;
        if i == 0 {
            r.ok();
        } else {
            assert_eq!(r.code(), "PAYMENT_REQUIRED");
            assert_eq!(r.error()["extensions"]["shortfall"]["amount"], "75000.00");
        }
    }
    assert_eq!(balance(&app, &user.access).await, "75000.00");
    let counts = app
        .gql(
            Some(&user.access),
            "{ mySubscriptions { totalCount } myInvoices { totalCount } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(counts.data("mySubscriptions.totalCount"), 2);
    assert_eq!(counts.data("myInvoices.totalCount"), 2);

    // A customer whose wallet ran dry: PAST_DUE, SUSPENDED after grace, and ACTIVE again
    // right after a Stripe top-up lands (not at the next tick of the billing jobs).
    let (dry, _) = app.register("dry").await;
    top_up_and_pay(&app, &dry.access, "30000").await;
    eventually("the first top-up lands", || async {
        balance(&app, &dry.access).await == "30000.00"
    })
    .await;
    let ghost = plan_id(&app, "ghost", "Basic").await;
    let id = app
        .gql(
            Some(&dry.access),
            SUBSCRIBE,
            json!({ "plan": ghost, "name": "dry blog" }),
        )
        .await
        .ok()
        .str("subscribe.subscription.id");
    let status = || async {
        app.gql(
            Some(&dry.access),
            "query($id: ID!) { serviceSubscription(id: $id) { status } }",
            json!({ "id": id }),
        )
        .await
        .ok()
        .str("serviceSubscription.status")
    };
    app.state.clock.advance(chrono::Duration::days(32));
    podium::subscriptions::cycle::run_renewals(&app.state)
        .await
        .unwrap();
    assert_eq!(status().await, "PAST_DUE");
    app.state.clock.advance(chrono::Duration::days(8));
    podium::subscriptions::cycle::run_dunning(&app.state)
        .await
        .unwrap();
    assert_eq!(status().await, "SUSPENDED");
    top_up_and_pay(&app, &dry.access, "30000").await;
    eventually("the top-up settles the debt at once", || async {
        status().await == "ACTIVE"
    })
    .await;
    assert_eq!(balance(&app, &dry.access).await, "0.00");
    assert_billing_consistent(&app).await;
}

/// Runs SQL against the app's database (to set up what Stripe's fake can't).
async fn sql(app: &TestApp, query: &str) {
    use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
    let mut conn = AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    diesel::sql_query(query).execute(&mut conn).await.unwrap();
}

/// A new top-up of `amount`: its id and its PaymentIntent's.
async fn start_top_up(app: &TestApp, token: &str, amount: &str) -> (String, String) {
    let r = create_top_up(app, token, amount, None).await.ok();
    (
        r.str("createTopUp.topUp.id"),
        r.str("createTopUp.topUp.paymentIntentId"),
    )
}

/// Moves the billing clock past the reconciliation delay.
fn past_reconcile_delay(app: &TestApp) {
    let after = app.state.settings.billing.top_up_reconcile_after;
    app.state
        .clock
        .advance(chrono::Duration::from_std(after).unwrap() + chrono::Duration::seconds(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_top_up_paid_later_with_another_card_is_credited_by_reconciliation() {
    // No webhook registered: the success never reaches the server by itself.
    let (app, secret) = stripe_app(false).await;
    let (user, _) = app.register("second-card").await;
    let r = create_top_up(&app, &user.access, "45000", None).await.ok();
    let id = r.str("createTopUp.topUp.id");
    let intent = r.str("createTopUp.topUp.paymentIntentId");
    // The first card is declined and that webhook arrives. (localstripe can't confirm a
    // PaymentIntent again after a real decline, so the decline is the signed event alone.)
    let failed = json!({
        "id": format!("evt_{}", Uuid::new_v4().simple()),
        "type": "payment_intent.payment_failed",
        "data": { "object": {
            "id": intent, "status": "requires_payment_method", "amount": 45000, "currency": "idr",
            "last_payment_error": { "code": "card_declined", "message": "Your card was declined." }
        } }
    })
    .to_string();
    assert_eq!(
        deliver(&app, &failed, Some(&signed_now(&failed, &secret))).await,
        200
    );
    assert_eq!(top_up_status(&app, &user.access, &id).await, "FAILED");

    // Then the customer pays the same PaymentIntent with another card; its webhook is lost.
    assert_eq!(pay(&app, &intent, "pm_card_visa").await.0, 200);
    past_reconcile_delay(&app);
    let done = podium::billing::topup::reconcile(&app.state).await.unwrap();
    assert_eq!((done.checked, done.credited, done.errors), (1, 1, 0));
    assert_eq!(top_up_status(&app, &user.access, &id).await, "SUCCEEDED");
    assert_eq!(balance(&app, &user.access).await, "45000.00");

    // Once: the next run and a late webhook credit nothing more.
    let done = podium::billing::topup::reconcile(&app.state).await.unwrap();
    assert_eq!((done.checked, done.credited), (0, 0));
    let event = stripe_event(&app, "payment_intent.succeeded", &intent)
        .await
        .to_string();
    assert_eq!(
        deliver(&app, &event, Some(&signed_now(&event, &secret))).await,
        200
    );
    assert_eq!(balance(&app, &user.access).await, "45000.00");
    assert_eq!(top_up_movements(&app, &user.access).await.len(), 1);

    // A FAILED top-up older than the re-check window is no longer asked about.
    let r = create_top_up(&app, &user.access, "10000", None).await.ok();
    let old = r.str("createTopUp.topUp.id");
    sql(
        &app,
        &format!(
            "UPDATE top_ups SET status = 'FAILED', created_at = created_at - interval '{} days 1 minute' WHERE id = '{old}'",
            podium::billing::topup::FAILED_RECHECK_DAYS
        ),
    )
    .await;
    let done = podium::billing::topup::reconcile(&app.state).await.unwrap();
    assert_eq!(done.checked, 0);
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_for_another_amount_or_currency_credits_nothing() {
    let (app, secret) = stripe_app(false).await;
    let (user, _) = app.register("mismatch").await;
    let r = create_top_up(&app, &user.access, "20000", None).await.ok();
    let id = r.str("createTopUp.topUp.id");
    let intent = r.str("createTopUp.topUp.paymentIntentId");
    assert_eq!(pay(&app, &intent, "pm_card_visa").await.0, 200);
    let event = stripe_event(&app, "payment_intent.succeeded", &intent).await;

    // Signed events about this PaymentIntent, each with a new id, for another amount,
    // another amount received, another currency: acknowledged (200, so Stripe stops
    // retrying), nothing credited, the top-up left PENDING with a message for an operator.
    let paid = event["data"]["object"]["amount"].as_i64().unwrap();
    assert_eq!(paid, 2_000_000, "20000.00 IDR in minor units");
    let mut forged = Vec::new();
    for (field, value) in [
        ("amount", json!(paid * 10)),
        ("amount_received", json!(paid - 100)),
        ("currency", json!("usd")),
    ] {
        let mut e = event.clone();
        e["id"] = json!(format!("evt_{}", Uuid::new_v4().simple()));
        e["data"]["object"][field] = value;
        forged.push(e.to_string());
    }
    for payload in &forged {
        assert_eq!(
            deliver(&app, payload, Some(&signed_now(payload, &secret))).await,
            200,
            "{payload}"
        );
    }
    assert_eq!(balance(&app, &user.access).await, "0.00");
    let top_up = my_top_ups(&app, &user.access).await.remove(0);
    assert_eq!(
        top_up["status"], "FAILED",
        "out of the pending cap and the abandonment sweep"
    );
    assert!(
        top_up["failureMessage"]
            .as_str()
            .is_some_and(|m| m.contains("does not match")),
        "{top_up}"
    );

    // Reconciliation checks too: with the top-up's row saying another amount than the
    // PaymentIntent, nothing is credited.
    sql(
        &app,
        &format!("UPDATE top_ups SET amount = 3000000 WHERE id = '{id}'"),
    )
    .await;
    past_reconcile_delay(&app);
    let done = podium::billing::topup::reconcile(&app.state).await.unwrap();
    assert_eq!((done.checked, done.credited, done.mismatched), (1, 0, 1));
    assert_eq!(balance(&app, &user.access).await, "0.00");
    assert_eq!(top_up_status(&app, &user.access, &id).await, "FAILED");

    // Put right, the genuine event credits it.
    sql(
        &app,
        &format!("UPDATE top_ups SET amount = 2000000 WHERE id = '{id}'"),
    )
    .await;
    let genuine = event.to_string();
    assert_eq!(
        deliver(&app, &genuine, Some(&signed_now(&genuine, &secret))).await,
        200
    );
    assert_eq!(balance(&app, &user.access).await, "20000.00");
    assert_eq!(top_up_status(&app, &user.access, &id).await, "SUCCEEDED");
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_top_up_unpaid_after_a_day_is_cancelled_at_stripe() {
    let (app, _) = stripe_app(false).await;
    let (user, _) = app.register("abandoner").await;
    let (open, open_intent) = start_top_up(&app, &user.access, "11000").await;
    let (declined, declined_intent) = start_top_up(&app, &user.access, "12000").await;
    let (paid, paid_intent) = start_top_up(&app, &user.access, "13000").await;
    assert_eq!(
        pay(&app, &declined_intent, "pm_card_chargeCustomerFail")
            .await
            .0,
        402
    );
    past_reconcile_delay(&app);
    let done = podium::billing::topup::reconcile(&app.state).await.unwrap();
    assert_eq!((done.checked, done.closed, done.expired), (3, 1, 0));
    assert_eq!(top_up_status(&app, &user.access, &open).await, "PENDING");
    assert_eq!(top_up_status(&app, &user.access, &declined).await, "FAILED");

    // A day later the unpaid PENDING one is given up: cancelled at Stripe (so nobody can pay
    // it uncredited) and here. One paid meanwhile (its webhook lost) is credited. The
    // declined one stays FAILED (payable with another card) within its re-check window.
    assert_eq!(pay(&app, &paid_intent, "pm_card_visa").await.0, 200);
    app.state.clock.advance(chrono::Duration::hours(
        podium::billing::topup::ABANDON_AFTER_HOURS,
    ));
    let done = podium::billing::topup::reconcile(&app.state).await.unwrap();
    assert_eq!(
        (done.checked, done.credited, done.expired, done.errors),
        (3, 1, 1, 0)
    );
    assert_eq!(top_up_status(&app, &user.access, &open).await, "CANCELLED");
    assert_eq!(top_up_status(&app, &user.access, &declined).await, "FAILED");
    for (intent, status) in [
        (&open_intent, "canceled"),
        (&declined_intent, "requires_payment_method"),
    ] {
        let (_, pi) = stripe_call(
            &app,
            reqwest::Method::GET,
            &format!("/v1/payment_intents/{intent}"),
            &[],
        )
        .await;
        assert_eq!(pi["status"], status, "{pi}");
    }
    assert_eq!(top_up_status(&app, &user.access, &paid).await, "SUCCEEDED");
    assert_eq!(balance(&app, &user.access).await, "13000.00");

    // Only the declined one is still asked about, until its window closes.
    let done = podium::billing::topup::reconcile(&app.state).await.unwrap();
    assert_eq!(done.checked, 1);
    app.state.clock.advance(chrono::Duration::days(
        podium::billing::topup::FAILED_RECHECK_DAYS,
    ));
    let done = podium::billing::topup::reconcile(&app.state).await.unwrap();
    assert_eq!(done.checked, 0);
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_has_at_most_five_top_ups_waiting_for_payment() {
    let (app, _) = stripe_app(true).await;
    let (user, _) = app.register("hoarder").await;
    let max = podium::billing::topup::MAX_PENDING_PER_USER as usize;
    let mut intents = Vec::new();
    for i in 0..max {
        let key = format!("cap-{i}");
        let r = create_top_up(&app, &user.access, "10000", Some(&key))
            .await
            .ok();
        intents.push(r.str("createTopUp.topUp.paymentIntentId"));
    }
    let r = create_top_up(&app, &user.access, "10000", None).await;
    assert_eq!(r.code(), "CONFLICT");
    let message = r.error()["message"].as_str().unwrap();
    assert!(message.contains("waiting for payment"), "{message}");
    assert_eq!(my_top_ups(&app, &user.access).await.len(), max);
    // A retry of one already made is still answered.
    let again = create_top_up(&app, &user.access, "10000", Some("cap-0"))
        .await
        .ok();
    assert_eq!(again.str("createTopUp.topUp.paymentIntentId"), intents[0]);
    // Another user is not affected.
    let (other, _) = app.register("other").await;
    create_top_up(&app, &other.access, "10000", None).await.ok();

    // Once one is paid, there is room for another.
    assert_eq!(pay(&app, &intents[0], "pm_card_visa").await.0, 200);
    eventually("the webhook credits the wallet", || async {
        balance(&app, &user.access).await == "10000.00"
    })
    .await;
    create_top_up(&app, &user.access, "10000", None).await.ok();
    assert_eq!(my_top_ups(&app, &user.access).await.len(), max + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_top_up_and_subscribe_with_one_key_at_once_never_deadlock() {
    use crate::billing::{SUBSCRIBE, plan_id};
    // Both claim the key before locking the wallet: the second waits for the first and then
    // sees the key taken (CONFLICT) or free; neither fails as a deadlock (INTERNAL).
    let (app, _) = stripe_app(false).await;
    app.seed().await;
    let plan = plan_id(&app, "n8n", "Basic").await;
    let (user, _) = app.register("racer").await;
    for round in 0..20 {
        let key = format!("race-{round}");
        let (top_up, subscribe) = tokio::join!(
            create_top_up(&app, &user.access, "10000", Some(&key)),
            app.gql(
                Some(&user.access),
                SUBSCRIBE,
                json!({ "plan": plan, "name": format!("race {round}"), "key": key }),
            ),
        );
        for r in [&top_up, &subscribe] {
            let code = r.0["errors"][0]["extensions"]["code"].as_str();
            assert!(
                matches!(code, None | Some("CONFLICT") | Some("PAYMENT_REQUIRED")),
                "round {round}: {}",
                r.0
            );
        }
        // Keep under the pending cap.
        sql(
            &app,
            "UPDATE top_ups SET status = 'CANCELLED' WHERE status = 'PENDING'",
        )
        .await;
    }
}

/// A TCP proxy to localstripe that holds every connection it accepts until `open` says
/// true: a Stripe that is slow to answer. Returns its URL and how many connections wait.
async fn stalling_stripe() -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::sync::watch::Sender<bool>,
) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let target = stripe_url().trim_start_matches("http://").to_string();
    let waiting = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (open, gate) = tokio::sync::watch::channel(false);
    let counter = waiting.clone();
    // Ends with the test's runtime.
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let (counter, mut gate, target) = (counter.clone(), gate.clone(), target.clone());
            tokio::spawn(async move {
                counter.fetch_add(1, Ordering::SeqCst);
                if gate.wait_for(|open| *open).await.is_err() {
                    return;
                }
                counter.fetch_sub(1, Ordering::SeqCst);
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (url, waiting, open)
}

#[tokio::test(flavor = "multi_thread")]
async fn create_top_up_holds_no_database_connection_while_stripe_is_slow() {
    let (stripe, waiting, open) = stalling_stripe().await;
    // Two pooled connections, three createTopUps stuck at Stripe.
    let app = spawn_app_with(&[
        ("STRIPE_SECRET_KEY", KEY),
        ("STRIPE_API_BASE", &stripe),
        ("PODIUM_DB_POOL_SIZE", "2"),
    ])
    .await;
    let (user, _) = app.register("patient").await;
    let creates = futures_util::future::join_all(
        (0..3).map(|_| create_top_up(&app, &user.access, "10000", None)),
    );
    let meanwhile = async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while waiting.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the three createTopUps never all reached Stripe"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // The pool still serves other requests: the three top-ups are already listed.
        let listed = my_top_ups(&app, &user.access).await;
        open.send(true).unwrap();
        listed
    };
    let (created, listed) = tokio::join!(creates, meanwhile);
    assert_eq!(listed.len(), 3);
    assert!(
        listed.iter().all(|t| t["status"] == "PENDING"),
        "{listed:?}"
    );
    let mut intents: Vec<String> = created
        .into_iter()
        .map(|r| r.ok().str("createTopUp.topUp.paymentIntentId"))
        .collect();
    intents.sort();
    intents.dedup();
    assert_eq!(intents.len(), 3);
}
