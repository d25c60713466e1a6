//! Invoices: gapless numbers per year under concurrency and rollbacks, what customers
//! see of them, tax, and the printable page `GET /invoices/{id}`.

use chrono::Datelike;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use podium::billing::invoice::{self, Draft, Line};
use podium::billing::model::InvoiceStatus;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

pub const SUBSCRIBE: &str = "mutation($p: ID!, $n: String!) { subscribe(input: {planId: $p, name: $n}) { subscription { id status } } }";

pub use crate::billing::plan_id;

/// Credits a wallet through the administrators' mutation (`amount` in major units).
pub async fn fund(app: &TestApp, admin: &str, user_id: &str, amount: &str) {
    app.gql(
        Some(admin),
        "mutation($u: ID!, $a: String!) { adjustWalletBalance(userId: $u, amount: $a, reason: \"test funds\") { id } }",
        json!({ "u": user_id, "a": amount }),
    )
    .await
    .ok();
}

pub async fn subscribe(app: &TestApp, token: &str, plan: &str, name: &str) -> Gql {
    app.gql(Some(token), SUBSCRIBE, json!({ "p": plan, "n": name }))
        .await
}

const MY_INVOICES: &str = "{ myInvoices(first: 50) { edges { node { id number status periodStart periodEnd issuedAt paidAt
    user { id } subscription { id name }
    lines { description quantity unitPrice { amount currency } amount { amount currency } }
    subtotal { amount currency } tax { amount currency } total { amount currency } taxName taxRatePercent } } } }";

async fn my_invoices(app: &TestApp, token: &str) -> Vec<serde_json::Value> {
    app.gql(Some(token), MY_INVOICES, json!({}))
        .await
        .ok()
        .data("myInvoices.edges")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect()
}

async fn db(app: &TestApp) -> AsyncPgConnection {
    AsyncPgConnection::establish(&app.database_url)
        .await
        .expect("connecting to the test database")
}

#[derive(diesel::QueryableByName, Debug)]
struct Numbered {
    #[diesel(sql_type = diesel::sql_types::Text)]
    number: String,
    #[diesel(sql_type = diesel::sql_types::Int4)]
    sequence: i32,
}

#[derive(diesel::QueryableByName, Debug)]
struct Waiting {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Issues an invoice in a transaction and rolls it back: its number was taken, then given back.
async fn issue_and_roll_back(app: &TestApp, user_id: Uuid) -> String {
    let mut conn = db(app).await;
    let billing = app.state.settings.billing.clone();
    let mut taken = String::new();
    let result = conn
        .transaction(async |conn| {
            let number = invoice::issue(
                conn,
                &billing,
                &Draft {
                    id: Uuid::new_v4(),
                    user_id,
                    subscription_id: None,
                    purpose: "test:rolled-back",
                    currency: "IDR",
                    period: None,
                    lines: vec![Line {
                        description: "never billed".into(),
                        quantity: 1,
                        unit_price: 100,
                    }],
                    status: InvoiceStatus::Open,
                    now: chrono::Utc::now(),
                    paid_by: None,
                },
            )
            .await?;
            taken = number;
            Err::<(), _>(diesel::result::Error::RollbackTransaction)
        })
        .await;
    assert!(result.is_err(), "the transaction rolled back");
    taken
}

#[tokio::test(flavor = "multi_thread")]
async fn invoice_numbers_have_no_gaps_under_concurrency_and_rollbacks() {
    let app = spawn_app_with(&[
        ("PODIUM_DB_POOL_SIZE", "16"),
        // 30 sign-ups from one address.
        ("PODIUM_LOGIN_MAX_ATTEMPTS_PER_IP", "100"),
    ])
    .await;
    let admin = app.admin().await;
    let plan = plan_id(&app, "n8n", "Basic").await;
    let admin_id: Uuid = admin.user_id.parse().unwrap();
    let year = chrono::Utc::now().year();

    // 30 customers: 20 can pay the 25000 plan, 10 can't (PAYMENT_REQUIRED).
    let mut customers = Vec::new();
    for i in 0..30 {
        let (s, _) = app.register(&format!("buyer{i}")).await;
        let funds = if i % 3 == 2 { "10000" } else { "30000" };
        fund(&app, &admin.access, &s.user_id, funds).await;
        customers.push((s, i % 3 != 2));
    }

    // A transaction holds the year's counter with number 1 taken while every subscribe
    // starts; it rolls back only once some of them queue behind it.
    let mut holder = db(&app).await;
    diesel::sql_query("BEGIN")
        .execute(&mut holder)
        .await
        .unwrap();
    let held = invoice::issue(
        &mut holder,
        &app.state.settings.billing,
        &Draft {
            id: Uuid::new_v4(),
            user_id: admin_id,
            subscription_id: None,
            purpose: "test:held",
            currency: "IDR",
            period: None,
            lines: vec![Line {
                description: "never billed".into(),
                quantity: 1,
                unit_price: 100,
            }],
            status: InvoiceStatus::Open,
            now: chrono::Utc::now(),
            paid_by: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(held, format!("INV-{year}-000001"));

    let mut tasks = Vec::new();
    for (i, (s, _)) in customers.iter().enumerate() {
        let app_client = app.client.clone();
        let address = app.address.clone();
        let token = s.access.clone();
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            gql_at(
                &app_client,
                &address,
                Some(&token),
                SUBSCRIBE,
                json!({ "p": plan, "n": format!("app-{i}") }),
            )
            .await
        }));
    }
    // Outside the server's pool, which the queued subscribes hold.
    let url = app.database_url.clone();
    eventually("subscribes queued behind the held invoice number", || {
        let url = url.clone();
        async move {
            let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
            let w: Waiting = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .get_result(&mut conn)
            .await
            .unwrap();
            w.n >= 3
        }
    })
    .await;
    diesel::sql_query("ROLLBACK")
        .execute(&mut holder)
        .await
        .unwrap();
    // More numbers taken and given back while the subscribes run.
    let rollbacks: Vec<_> = (0..5)
        .map(|_| {
            let app_ref = &app;
            async move { issue_and_roll_back(app_ref, admin_id).await }
        })
        .collect();
    let given_back = futures_util::future::join_all(rollbacks).await;
    assert!(
        given_back
            .iter()
            .all(|n| n.starts_with(&format!("INV-{year}-")))
    );

    let mut paid = 0;
    for (task, (_, can_pay)) in tasks.into_iter().zip(&customers) {
        let r = task.await.unwrap();
        if *can_pay {
            assert_eq!(r.ok().str("subscribe.subscription.status"), "ACTIVE");
            paid += 1;
        } else {
            assert_eq!(r.code(), "PAYMENT_REQUIRED", "{}", r.0);
        }
    }
    assert_eq!(paid, 20);

    // Exactly 1..20 in this year, whatever was taken and given back.
    let mut check = db(&app).await;
    let numbered: Vec<Numbered> =
        diesel::sql_query("SELECT number, sequence FROM invoices ORDER BY sequence")
            .load(&mut check)
            .await
            .unwrap();
    let sequences: Vec<i32> = numbered.iter().map(|n| n.sequence).collect();
    assert_eq!(sequences, (1..=20).collect::<Vec<i32>>());
    for n in &numbered {
        assert_eq!(n.number, format!("INV-{year}-{:06}", n.sequence));
    }

    // Each customer sees their own invoice, with its line and money; no one else's.
    let mut seen = std::collections::HashSet::new();
    for (s, can_pay) in &customers {
        let mine = my_invoices(&app, &s.access).await;
        if !can_pay {
            assert!(mine.is_empty(), "a refused subscribe leaves no invoice");
            continue;
        }
        assert_eq!(mine.len(), 1, "{mine:?}");
        let inv = &mine[0];
        assert!(seen.insert(inv["number"].as_str().unwrap().to_string()));
        assert_eq!(inv["status"], "PAID");
        assert_eq!(inv["user"]["id"], s.user_id.as_str());
        assert!(
            inv["paidAt"].is_string()
                && inv["periodStart"].is_string()
                && inv["periodEnd"].is_string()
        );
        assert_eq!(inv["lines"].as_array().unwrap().len(), 1);
        let line = &inv["lines"][0];
        assert_eq!(line["quantity"], 1);
        assert_eq!(
            line["unitPrice"],
            json!({ "amount": "25000.00", "currency": "IDR" })
        );
        assert_eq!(
            line["amount"],
            json!({ "amount": "25000.00", "currency": "IDR" })
        );
        assert_eq!(inv["subtotal"]["amount"], "25000.00");
        assert_eq!(inv["tax"]["amount"], "0.00");
        assert_eq!(
            inv["total"],
            json!({ "amount": "25000.00", "currency": "IDR" })
        );
        assert!(inv["taxName"].is_null());
    }
    assert_eq!(seen.len(), 20);

    // Another customer's invoice is NOT_FOUND, like an unknown one.
    let (a, b) = (&customers[0].0, &customers[1].0);
    let theirs = my_invoices(&app, &b.access).await[0]["id"].clone();
    let q = "query($id: ID!) { invoice(id: $id) { number } }";
    let r = app.gql(Some(&a.access), q, json!({ "id": theirs })).await;
    assert_eq!(r.code(), "NOT_FOUND");
    let r = app
        .gql(Some(&a.access), q, json!({ "id": Uuid::new_v4() }))
        .await;
    assert_eq!(r.code(), "NOT_FOUND");
    let r = app
        .gql(Some(&b.access), q, json!({ "id": theirs }))
        .await
        .ok();
    assert!(r.str("invoice.number").starts_with("INV-"));
    app.assert_billing_consistent().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invoice_carries_the_configured_tax_and_the_debit_is_its_total() {
    let app = spawn_app_with(&[
        ("PODIUM_TAX_RATE_PERCENT", "11"),
        ("PODIUM_TAX_NAME", "PPN"),
    ])
    .await;
    let admin = app.admin().await;
    let plan = plan_id(&app, "n8n", "Basic").await;
    let (s, _) = app.register("taxpayer").await;
    fund(&app, &admin.access, &s.user_id, "100000").await;
    subscribe(&app, &s.access, &plan, "taxed").await.ok();

    let inv = my_invoices(&app, &s.access).await.remove(0);
    assert_eq!(inv["subtotal"]["amount"], "25000.00");
    assert_eq!(inv["tax"]["amount"], "2750.00");
    assert_eq!(inv["total"]["amount"], "27750.00");
    assert_eq!(inv["taxName"], "PPN");
    assert_eq!(inv["taxRatePercent"], "11.00");

    let w = app
        .gql(
            Some(&s.access),
            "{ wallet { balance { amount } transactions(first: 10, type: SUBSCRIPTION) { edges { node { amount { amount } reference invoiceId } } } } }",
            json!({}),
        )
        .await
        .ok();
    assert_eq!(w.str("wallet.balance.amount"), "72250.00");
    let debit = &w.data("wallet.transactions.edges")[0]["node"];
    assert_eq!(debit["amount"]["amount"], "-27750.00");
    assert_eq!(debit["reference"], inv["number"]);
    assert_eq!(debit["invoiceId"], inv["id"]);

    let page = app
        .client
        .get(format!(
            "{}/invoices/{}",
            app.address,
            inv["id"].as_str().unwrap()
        ))
        .bearer_auth(&s.access)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("PPN (11.00 %)"), "{html}");
    assert!(
        html.contains("2750.00 IDR") && html.contains("27750.00 IDR"),
        "{html}"
    );
    app.assert_billing_consistent().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_printable_invoice_is_for_its_owner_and_administrators_only() {
    let app = spawn_app_with(&[
        ("PODIUM_PLATFORM_NAME", "Acme <Cloud>"),
        ("PODIUM_PUBLIC_URL", "https://cloud.example.com"),
    ])
    .await;
    let admin = app.admin().await;
    let plan = plan_id(&app, "n8n", "Basic").await;
    let (owner, email) = app.register("owner").await;
    fund(&app, &admin.access, &owner.user_id, "100000").await;
    let name = r#"<script>alert("x")</script>&co"#;
    subscribe(&app, &owner.access, &plan, name).await.ok();
    let inv = my_invoices(&app, &owner.access).await.remove(0);
    let id = inv["id"].as_str().unwrap();
    let number = inv["number"].as_str().unwrap();

    let page = |token: Option<String>, id: String| {
        let req = app.client.get(format!("{}/invoices/{id}", app.address));
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        async move { req.send().await.unwrap() }
    };

    let r = page(Some(owner.access.clone()), id.into()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.headers()["cache-control"], "private, no-store");
    let html = r.text().await.unwrap();
    assert!(html.contains(number), "{html}");
    assert!(
        html.contains(&email) && html.contains(">owner<br>"),
        "{html}"
    );
    assert!(
        html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;co"),
        "the subscription name is escaped: {html}"
    );
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("Acme &lt;Cloud&gt;") && html.contains("https://cloud.example.com"));
    assert!(
        html.contains("25000.00 IDR") && html.contains("Paid "),
        "{html}"
    );

    // An administrator sees it too.
    let r = page(Some(admin.access.clone()), id.into()).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(number));

    // Someone else gets 404, like for an unknown or malformed id.
    let (other, _) = app.register("other").await;
    for probe in [id.to_string(), Uuid::new_v4().to_string(), "nope".into()] {
        let r = page(Some(other.access.clone()), probe).await;
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["cache-control"], "private, no-store");
        assert!(!r.text().await.unwrap().contains(number));
    }

    // No or a bad token: 401, nothing shown.
    let r = page(None, id.into()).await;
    assert_eq!(r.status(), 401);
    assert!(!r.text().await.unwrap().contains(number));
    let r = page(Some("not-a-token".into()), id.into()).await;
    assert_eq!(r.status(), 401);
}
