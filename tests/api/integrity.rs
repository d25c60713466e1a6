//! The billing integrity check (`podium billing verify`, `billingIntegrity`) and the
//! administrators' `billingStats`.

use std::process::Command;

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use podium::billing::model::TransactionType;
use podium::billing::wallet::{self, Posting};
use serde_json::json;

use crate::helpers::*;
use crate::invoices::{fund, plan_id, subscribe};

async fn sql(app: &TestApp, statements: &[String]) {
    let mut conn = AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    for s in statements {
        diesel::sql_query(s)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

#[derive(diesel::QueryableByName, Debug)]
struct InvoiceRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    number: String,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    year: i32,
}

async fn invoices(app: &TestApp) -> Vec<InvoiceRow> {
    let mut conn = AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    diesel::sql_query("SELECT id::text AS id, number, year FROM invoices ORDER BY sequence")
        .load(&mut conn)
        .await
        .unwrap()
}

const INTEGRITY: &str = "{ billingIntegrity { ok checkedWallets checkedTransactions checkedInvoices checkedPlans checkedSubscriptions mismatches { kind subject expected found message } } }";

/// Two customers with three subscriptions between them (invoices 1 to 3).
struct Billed {
    admin: Session,
    u: Session,
    v: Session,
    basic: String,
    standard: String,
}

async fn billed(app: &TestApp) -> Billed {
    let admin = app.admin().await;
    let basic = plan_id(app, "n8n", "Basic").await;
    let standard = plan_id(app, "n8n", "Standard").await;
    let (u, _) = app.register("u").await;
    let (v, _) = app.register("v").await;
    fund(app, &admin.access, &u.user_id, "100000").await;
    fund(app, &admin.access, &v.user_id, "30000").await;
    subscribe(app, &u.access, &basic, "one").await.ok();
    subscribe(app, &u.access, &standard, "two").await.ok();
    subscribe(app, &v.access, &basic, "three").await.ok();
    Billed {
        admin,
        u,
        v,
        basic,
        standard,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_integrity_is_clean_after_real_billing_and_for_administrators_only() {
    let app = spawn_app().await;
    let b = billed(&app).await;
    // A partial refund and a debit by an administrator: still consistent.
    let debit = app
        .gql(
            Some(&b.u.access),
            "{ wallet { transactions(first: 1, type: SUBSCRIPTION) { edges { node { id } } } } }",
            json!({}),
        )
        .await
        .ok()
        .data("wallet.transactions.edges")[0]["node"]["id"]
        .clone();
    app.gql(
        Some(&b.admin.access),
        "mutation($id: ID!) { refundTransaction(id: $id, amount: \"5000\") { id } }",
        json!({ "id": debit }),
    )
    .await
    .ok();
    fund(&app, &b.admin.access, &b.v.user_id, "-1000").await;

    let report = billing_report(&app).await;
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.checked_invoices, 3);
    assert!(report.checked_wallets >= 2);
    app.assert_billing_consistent().await;

    let r = app
        .gql(Some(&b.admin.access), INTEGRITY, json!({}))
        .await
        .ok();
    assert_eq!(r.data("billingIntegrity.ok"), &json!(true));
    assert_eq!(r.data("billingIntegrity.mismatches"), &json!([]));
    assert_eq!(r.data("billingIntegrity.checkedInvoices"), &json!(3));
    assert!(r.data("billingIntegrity.checkedWallets").as_i64().unwrap() >= 2);
    assert!(r.data("billingIntegrity.checkedPlans").as_i64().unwrap() > 0);

    let r = app.gql(Some(&b.u.access), INTEGRITY, json!({})).await;
    assert_eq!(r.code(), "FORBIDDEN");
    let r = app.gql(None, INTEGRITY, json!({})).await;
    assert_eq!(r.code(), "UNAUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_integrity_reports_each_kind_of_tampering() {
    let app = spawn_app().await;
    let b = billed(&app).await;
    let inv = invoices(&app).await;
    assert_eq!(inv.len(), 3);
    let (u, v) = (&b.u.user_id, &b.v.user_id);
    let year = inv[2].year;
    sql(
        &app,
        &[
            // u is charged twice for invoice 1 (a consistent ledger row, cached balance too).
            format!(
                "INSERT INTO wallet_transactions (user_id, type, amount, currency, balance_before, balance_after,
                     description, subscription_id, invoice_id)
                 SELECT user_id, type, amount, currency, 2500000, 0, 'tampered', subscription_id, invoice_id
                 FROM wallet_transactions WHERE invoice_id = '{}'",
                inv[0].id
            ),
            // ... and its cached balance drifts from the ledger (which now sums to 0).
            format!("UPDATE wallets SET balance = 500 WHERE user_id = '{u}'"),
            // v loses an update: a second debit from the balance the first one left.
            format!(
                "INSERT INTO wallet_transactions (user_id, type, amount, currency, balance_before, balance_after, description)
                 VALUES ('{v}', 'ADJUSTMENT', -100000, 'IDR', 3000000, 2900000, 'stale read')"
            ),
            format!("UPDATE wallets SET balance = 400000 WHERE user_id = '{v}'"),
            // A line of invoice 1 no longer adds up; invoice 2's total is not subtotal + tax.
            format!(
                "UPDATE invoice_lines SET amount = amount + 1 WHERE invoice_id = '{}'",
                inv[0].id
            ),
            format!(
                "UPDATE invoices SET total = total - 100 WHERE id = '{}'",
                inv[1].id
            ),
            // Invoice 3 becomes number 5: 3 and 4 are missing, the counter says 3.
            format!(
                "UPDATE invoices SET sequence = 5, number = 'INV-{year}-000005' WHERE id = '{}'",
                inv[2].id
            ),
            // Basic's used quota drifts; "two" stops holding its place in Standard.
            format!(
                "UPDATE service_plans SET used_quota = used_quota + 2 WHERE id = '{}'",
                b.basic
            ),
            "UPDATE service_subscriptions SET holds_quota = false WHERE name = 'two'".into(),
        ],
    )
    .await;

    let report = billing_report(&app).await;
    let has = |kind: &str, subject: &str, expected: &str, found_: &str| {
        assert!(
            report.mismatches.iter().any(|m| m.kind == kind
                && m.subject.contains(subject)
                && m.expected.contains(expected)
                && m.found.contains(found_)),
            "no {kind} about {subject} (expected {expected}, found {found_}) in:\n{report}"
        );
    };
    has("WALLET_BALANCE", &format!("wallet {u}"), "0", "500");
    has(
        "WALLET_CHAIN",
        &format!("wallet {v}"),
        "to 400000",
        "3000000",
    );
    has(
        "DOUBLE_CHARGE",
        &inv[0].number,
        "one debit of -2500000",
        "2 debit(s)",
    );
    has("INVOICE_LINE_AMOUNT", &inv[0].number, "2500000", "2500001");
    has("INVOICE_SUBTOTAL", &inv[0].number, "2500001", "2500000");
    has("INVOICE_TOTAL", &inv[1].number, "5000000", "4999900");
    has(
        "INVOICE_PAYMENT",
        &inv[1].number,
        "one debit of -4999900",
        "-5000000",
    );
    has(
        "INVOICE_NUMBER_GAP",
        &format!("INV-{year}-000005"),
        "sequence 3",
        "sequence 5",
    );
    has("INVOICE_COUNTER", &year.to_string(), "5", "3");
    has("PLAN_USED_QUOTA", &b.basic, "2", "4");
    has("PLAN_USED_QUOTA", &b.standard, "0", "1");
    has("SUBSCRIPTION_QUOTA", "(ACTIVE)", "true", "false");
    assert_eq!(
        report.mismatches.len(),
        12,
        "exactly these, nothing else:\n{report}"
    );
    assert!(report.to_string().contains("numbers 3 to 4 of"), "{report}");

    let r = app
        .gql(Some(&b.admin.access), INTEGRITY, json!({}))
        .await
        .ok();
    assert_eq!(r.data("billingIntegrity.ok"), &json!(false));
    assert_eq!(
        r.data("billingIntegrity.mismatches")
            .as_array()
            .unwrap()
            .len(),
        12
    );
}

/// Runs `podium billing verify` against a database: (exit code, output).
async fn verify_cli(database_url: &str) -> (Option<i32>, String) {
    let url = database_url.to_string();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_podium"));
        for (key, _) in std::env::vars() {
            if key.starts_with("PODIUM_") || key == "DATABASE_URL" {
                cmd.env_remove(key);
            }
        }
        let out = cmd
            .args(["billing", "verify"])
            .env("DATABASE_URL", url)
            .env("PODIUM_JWT_SECRET", JWT_SECRET)
            .env("RUST_LOG", "warn")
            .env("PODIUM_DATA_DIR", "/nonexistent/podium-verify-test")
            .output()
            .expect("running podium billing verify");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_verify_cli_exits_zero_when_clean_and_non_zero_on_a_tampered_database() {
    let app = spawn_app().await;
    let b = billed(&app).await;
    let (code, out) = verify_cli(&app.database_url).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("no mismatches"), "{out}");
    assert!(out.contains("3 invoice(s)"), "{out}");

    sql(
        &app,
        &[format!(
            "UPDATE wallets SET balance = balance + 1 WHERE user_id = '{}'",
            b.v.user_id
        )],
    )
    .await;
    let (code, out) = verify_cli(&app.database_url).await;
    assert_eq!(code, Some(1), "a mismatch fails the command: {out}");
    assert!(out.contains("WALLET_BALANCE"), "{out}");
    assert!(out.contains(&b.v.user_id), "{out}");
    assert!(out.contains("1 mismatch(es):"), "{out}");
    assert!(!out.contains("no mismatches"), "{out}");
}

const STATS: &str = "{ billingStats { mrr { amount currency } activeSubscriptions pastDue suspended revenueLast30Days { amount currency } topUpsLast30Days { amount currency } } }";

fn money(amount: &str) -> serde_json::Value {
    json!({ "amount": amount, "currency": "IDR" })
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_stats_count_subscriptions_mrr_revenue_and_top_ups_of_the_last_30_days() {
    // The cycle runs only when the test says so.
    let app = spawn_app_with(&[("PODIUM_JOBS_ENABLED", "false")]).await;
    let admin = app.admin().await;
    let basic = plan_id(&app, "n8n", "Basic").await;
    let standard = plan_id(&app, "n8n", "Standard").await;
    let (a, _) = app.register("a").await;
    let (b, _) = app.register("b").await;
    let (c, _) = app.register("c").await;
    fund(&app, &admin.access, &a.user_id, "100000").await;
    fund(&app, &admin.access, &b.user_id, "30000").await;
    fund(&app, &admin.access, &c.user_id, "60000").await;
    subscribe(&app, &a.access, &basic, "a-app").await.ok();
    subscribe(&app, &b.access, &basic, "b-app").await.ok();
    let c_sub = subscribe(&app, &c.access, &standard, "c-app")
        .await
        .ok()
        .str("subscribe.subscription.id");
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { suspendSubscription(id: $id) { status } }",
        json!({ "id": c_sub }),
    )
    .await
    .ok();
    // 10000 of a's charge refunded; a tops up 20000 (as the Stripe webhook would post it).
    let debit = app
        .gql(
            Some(&a.access),
            "{ wallet { transactions(first: 1, type: SUBSCRIPTION) { edges { node { id } } } } }",
            json!({}),
        )
        .await
        .ok()
        .data("wallet.transactions.edges")[0]["node"]["id"]
        .clone();
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { refundTransaction(id: $id, amount: \"10000\") { id } }",
        json!({ "id": debit }),
    )
    .await
    .ok();
    let mut conn = app.state.pool.get().await.unwrap();
    let a_id = a.user_id.parse().unwrap();
    let now = app.state.clock.now();
    conn.transaction(async |conn| {
        wallet::post(
            conn,
            &Posting {
                user_id: a_id,
                kind: TransactionType::TopUp,
                amount: 2_000_000,
                currency: "IDR",
                reference: Some("pi_test"),
                description: "Top-up",
                subscription_id: None,
                invoice_id: None,
                refund_of: None,
                unique_key: Some("topup:test"),
                created_by: None,
                now,
            },
        )
        .await
    })
    .await
    .unwrap();
    drop(conn);

    let s = app.gql(Some(&admin.access), STATS, json!({})).await.ok();
    assert_eq!(
        s.data("billingStats"),
        &json!({
            // a and b (c is suspended)
            "mrr": money("50000.00"),
            "activeSubscriptions": 2,
            "pastDue": 0,
            "suspended": 1,
            // 25000 + 25000 + 50000 charged, 10000 refunded
            "revenueLast30Days": money("90000.00"),
            "topUpsLast30Days": money("20000.00"),
        })
    );

    // A month on: a renews (it has 105000), b can't pay (5000) and is PAST_DUE; what
    // happened a month ago is out of the window.
    app.state.clock.advance(chrono::Duration::days(31));
    podium::subscriptions::cycle::run_renewals(&app.state)
        .await
        .unwrap();
    let s = app.gql(Some(&admin.access), STATS, json!({})).await.ok();
    assert_eq!(
        s.data("billingStats"),
        &json!({
            // PAST_DUE still counts: it runs and is being chased.
            "mrr": money("50000.00"),
            "activeSubscriptions": 1,
            "pastDue": 1,
            "suspended": 1,
            "revenueLast30Days": money("25000.00"),
            "topUpsLast30Days": money("0.00"),
        })
    );
    app.assert_billing_consistent().await;

    let r = app.gql(Some(&a.access), STATS, json!({})).await;
    assert_eq!(r.code(), "FORBIDDEN");
}

const STATUS: &str = "query($id: ID!) { serviceSubscription(id: $id) { status } }";

async fn status_of(app: &TestApp, token: &str, id: &str) -> String {
    app.gql(Some(token), STATUS, json!({ "id": id }))
        .await
        .ok()
        .str("serviceSubscription.status")
}

/// Empties a wallet with an administrator's negative adjustment.
async fn drain(app: &TestApp, admin: &str, token: &str, user_id: &str) {
    let balance = app
        .gql(Some(token), "{ wallet { balance { amount } } }", json!({}))
        .await
        .ok()
        .str("wallet.balance.amount");
    if balance != "0.00" {
        fund(app, admin, user_id, &format!("-{balance}")).await;
    }
}

/// Every billing step the lifecycle has, each followed by a clean integrity check: the
/// check has no false alarms on what the billing engine really writes.
#[tokio::test(flavor = "multi_thread")]
async fn billing_integrity_holds_through_every_step_of_the_billing_cycle() {
    let app = spawn_app_with(&[
        ("PODIUM_JOBS_ENABLED", "false"),
        ("PODIUM_TAX_RATE_PERCENT", "11"),
    ])
    .await;
    let admin = app.admin().await;
    let basic = plan_id(&app, "n8n", "Basic").await;
    let standard = plan_id(&app, "n8n", "Standard").await;
    let (u, _) = app.register("cycler").await;
    let uid: uuid::Uuid = u.user_id.parse().unwrap();
    fund(&app, &admin.access, &u.user_id, "1000000").await;
    let day = chrono::Duration::days(1);

    // Subscribe, upgrade mid-period, downgrade, renew at period end, cancel now.
    let a = subscribe(&app, &u.access, &basic, "a")
        .await
        .ok()
        .str("subscribe.subscription.id");
    app.assert_billing_consistent().await;
    app.state.clock.advance(day * 10);
    let change =
        "mutation($id: ID!, $p: ID!) { changeSubscriptionPlan(id: $id, planId: $p) { status } }";
    app.gql(Some(&u.access), change, json!({ "id": a, "p": standard }))
        .await
        .ok();
    app.assert_billing_consistent().await;
    app.state.clock.advance(day * 5);
    app.gql(Some(&u.access), change, json!({ "id": a, "p": basic }))
        .await
        .ok();
    app.assert_billing_consistent().await;
    app.state.clock.advance(day * 17);
    podium::subscriptions::cycle::run_renewals(&app.state)
        .await
        .unwrap();
    assert_eq!(status_of(&app, &u.access, &a).await, "ACTIVE");
    app.assert_billing_consistent().await;
    let cancel = "mutation($id: ID!, $end: Boolean!) { cancelSubscription(id: $id, atPeriodEnd: $end) { status } }";
    app.gql(Some(&u.access), cancel, json!({ "id": a, "end": false }))
        .await
        .ok();
    assert_eq!(status_of(&app, &u.access, &a).await, "CANCELLED");
    app.assert_billing_consistent().await;

    // Cancel at period end.
    let b = subscribe(&app, &u.access, &basic, "b")
        .await
        .ok()
        .str("subscribe.subscription.id");
    app.gql(Some(&u.access), cancel, json!({ "id": b, "end": true }))
        .await
        .ok();
    app.state.clock.advance(day * 32);
    podium::subscriptions::cycle::run_renewals(&app.state)
        .await
        .unwrap();
    assert_eq!(status_of(&app, &u.access, &b).await, "CANCELLED");
    app.assert_billing_consistent().await;

    // An empty wallet at renewal: PAST_DUE, SUSPENDED after grace, ACTIVE again once paid.
    let c = subscribe(&app, &u.access, &basic, "c")
        .await
        .ok()
        .str("subscribe.subscription.id");
    drain(&app, &admin.access, &u.access, &u.user_id).await;
    app.state.clock.advance(day * 32);
    podium::subscriptions::cycle::run_renewals(&app.state)
        .await
        .unwrap();
    assert_eq!(status_of(&app, &u.access, &c).await, "PAST_DUE");
    app.assert_billing_consistent().await;
    app.state.clock.advance(day * 8);
    podium::subscriptions::cycle::run_dunning(&app.state)
        .await
        .unwrap();
    assert_eq!(status_of(&app, &u.access, &c).await, "SUSPENDED");
    app.assert_billing_consistent().await;
    fund(&app, &admin.access, &u.user_id, "30000").await;
    podium::subscriptions::cycle::settle_user(&app.state, uid)
        .await
        .unwrap();
    assert_eq!(status_of(&app, &u.access, &c).await, "ACTIVE");
    app.assert_billing_consistent().await;

    // Unpaid for good: SUSPENDED, then EXPIRED with its invoice void and its quota back.
    drain(&app, &admin.access, &u.access, &u.user_id).await;
    app.state.clock.advance(day * 32);
    podium::subscriptions::cycle::run_renewals(&app.state)
        .await
        .unwrap();
    app.state.clock.advance(day * 8);
    podium::subscriptions::cycle::run_dunning(&app.state)
        .await
        .unwrap();
    assert_eq!(status_of(&app, &u.access, &c).await, "SUSPENDED");
    app.state.clock.advance(day * 31);
    podium::subscriptions::cycle::run_dunning(&app.state)
        .await
        .unwrap();
    assert_eq!(status_of(&app, &u.access, &c).await, "EXPIRED");
    let report = billing_report(&app).await;
    assert!(report.is_clean(), "{report}");
    assert!(report.checked_invoices >= 6, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn billing_integrity_reports_free_periods_over_refunds_bad_tax_and_charges_without_invoice() {
    let app = spawn_app().await;
    let b = billed(&app).await;
    let inv = invoices(&app).await;
    let (u, v) = (&b.u.user_id, &b.v.user_id);
    sql(
        &app,
        &[
            // "one" runs a month nobody paid for.
            "UPDATE service_subscriptions SET current_period_end = current_period_end + interval '1 month'
             WHERE name = 'one'"
                .into(),
            // v is refunded more than it was charged (ledger and cached balance consistent).
            format!(
                "INSERT INTO wallet_transactions (user_id, type, amount, currency, balance_before, balance_after,
                     description, refund_of)
                 SELECT user_id, 'REFUND', 3000000, 'IDR', 500000, 3500000, 'too generous', id
                 FROM wallet_transactions WHERE invoice_id = '{}'",
                inv[2].id
            ),
            format!("UPDATE wallets SET balance = 3500000 WHERE user_id = '{v}'"),
            // Invoice 2's tax is not its rate's (0 %).
            format!(
                "UPDATE invoices SET tax = 7, total = total + 7 WHERE id = '{}'",
                inv[1].id
            ),
            // u's charge for invoice 1 loses its invoice.
            format!(
                "UPDATE wallet_transactions SET invoice_id = NULL WHERE invoice_id = '{}'",
                inv[0].id
            ),
        ],
    )
    .await;
    let report = billing_report(&app).await;
    let kinds: Vec<&str> = {
        let mut k: Vec<&str> = report.mismatches.iter().map(|m| m.kind.as_str()).collect();
        k.sort();
        k
    };
    assert_eq!(
        kinds,
        [
            "CHARGE_WITHOUT_INVOICE",
            "INVOICE_PAYMENT", // invoice 1: paid, but by no debit
            "INVOICE_PAYMENT", // invoice 2: its debit is not its new total
            "INVOICE_TAX",
            "PERIOD_UNPAID",
            "REFUND",
        ],
        "{report}"
    );
    let about = |kind: &str| {
        report
            .mismatches
            .iter()
            .filter(|m| m.kind == kind)
            .map(|m| m.subject.clone())
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(about("CHARGE_WITHOUT_INVOICE").contains(u.as_str()));
    assert!(about("INVOICE_PAYMENT").contains(&inv[0].number));
    assert!(about("INVOICE_PAYMENT").contains(&inv[1].number));
    assert!(about("INVOICE_TAX").contains(&inv[1].number));
    assert!(about("REFUND").contains(v.as_str()));
}
