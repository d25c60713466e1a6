//! The billing cycle with a controllable clock: renewal, dunning, suspension, recovery,
//! expiry, cancellation, plan changes with proration, catch-up, replicas.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::billing::*;
use crate::helpers::*;
use podium::subscriptions::cycle::{run_dunning, run_renewals};

pub(crate) fn at(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

pub(crate) async fn sub(app: &TestApp, s: &Session, id: &str) -> Value {
    app.gql(Some(&s.access), SUBSCRIPTION, json!({ "id": id }))
        .await
        .ok()
        .data("serviceSubscription")
        .clone()
}

/// The caller's invoices, newest first.
pub(crate) async fn invoices(app: &TestApp, s: &Session) -> Vec<Value> {
    let r = app.gql(Some(&s.access), INVOICES, json!({})).await.ok();
    nodes(r.data("myInvoices"))
}

/// Cancels a subscription now (its unused time credited).
async fn cancel_now(app: &TestApp, user: &Session, id: &str) -> Gql {
    app.gql(
        Some(&user.access),
        "mutation($id: ID!) { cancelSubscription(id: $id, atPeriodEnd: false) { status } }",
        json!({ "id": id }),
    )
    .await
}

/// Moves the app's clock to `t` and runs both billing jobs' work.
async fn tick(app: &TestApp, t: DateTime<Utc>) {
    app.state.clock.advance_to(t);
    run_renewals(&app.state).await.expect("renewals");
    run_dunning(&app.state).await.expect("dunning");
}

/// A customer with one Ghost Basic (30000) subscription; their wallet keeps `left` after.
async fn subscribed(app: &TestApp, admin: &Session, left: i64) -> (Session, String) {
    let user = funded_user(app, admin, "cycled", &(30000 + left).to_string()).await;
    let plan = plan_id(app, "ghost", "Basic").await;
    let id = subscribe(app, &user, &plan, "cycled blog")
        .await
        .ok()
        .str("subscribe.subscription.id");
    (user, id)
}

#[tokio::test(flavor = "multi_thread")]
async fn renewed_after_a_month_with_a_second_invoice() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, id) = subscribed(&app, &admin, 40000).await;
    let first = sub(&app, &user, &id).await;
    let end = at(&first["currentPeriodEnd"]);

    // A day before the end nothing happens.
    tick(&app, end - Duration::days(1)).await;
    assert_eq!(invoices(&app, &user).await.len(), 1);
    tick(&app, end + Duration::minutes(1)).await;
    let renewed = sub(&app, &user, &id).await;
    assert_eq!(renewed["status"], "ACTIVE");
    assert_eq!(at(&renewed["currentPeriodStart"]), end);
    assert!(at(&renewed["currentPeriodEnd"]) > end + Duration::days(27));
    let all = invoices(&app, &user).await;
    assert_eq!(all.len(), 2);
    assert_eq!(all[0]["status"], "PAID");
    assert_eq!(at(&all[0]["periodStart"]), end);
    assert_eq!(balance(&app, &user).await, "10000.00");
    let w = app.gql(Some(&user.access), WALLET, json!({})).await.ok();
    let last = &nodes(w.data("wallet.transactions"))[0];
    assert_eq!(last["type"], "RENEWAL");
    assert_eq!(last["reference"], all[0]["number"]);

    // Running again at the same moment changes nothing.
    tick(&app, end + Duration::minutes(2)).await;
    assert_eq!(invoices(&app, &user).await.len(), 2);
    assert_eq!(balance(&app, &user).await, "10000.00");
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_wallet_goes_past_due_then_suspended_after_grace_then_active_right_after_a_payment()
 {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, id) = subscribed(&app, &admin, 0).await;
    let end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);

    // Charged at the period's end, a minute late: grace and retries count from then.
    let failed = end + Duration::minutes(1);
    app.state.clock.stop();
    app.state.clock.advance_to(failed);
    tick(&app, failed).await;
    let due = sub(&app, &user, &id).await;
    assert_eq!(due["status"], "PAST_DUE");
    assert_eq!(due["failedCharges"], 1);
    assert_eq!(at(&due["graceUntil"]), failed + Duration::days(7));
    assert_eq!(at(&due["nextRetryAt"]), failed + Duration::days(1));
    assert_eq!(
        due["instance"]["desiredState"], "RUNNING",
        "the paid period is never suspended"
    );
    let open = &invoices(&app, &user).await[0];
    assert_eq!(open["status"], "OPEN");
    assert_eq!(at(&open["periodStart"]), end);

    // Dunning retries on days 1, 3 and 5 of grace, not a second early.
    tick(&app, failed + Duration::days(1) - Duration::seconds(1)).await;
    assert_eq!(sub(&app, &user, &id).await["failedCharges"], 1);
    for (day, failures, next) in [(1, 2, Some(3)), (3, 3, Some(5)), (5, 4, None)] {
        tick(&app, failed + Duration::days(day)).await;
        let s = sub(&app, &user, &id).await;
        assert_eq!(s["status"], "PAST_DUE", "day {day}");
        assert_eq!(s["failedCharges"], failures, "day {day}");
        assert_eq!(
            s["nextRetryAt"].as_str().map(|_| at(&s["nextRetryAt"])),
            next.map(|d| failed + Duration::days(d))
        );
    }
    tick(&app, failed + Duration::days(7) - Duration::seconds(1)).await;
    assert_eq!(
        sub(&app, &user, &id).await["status"],
        "PAST_DUE",
        "grace runs to its end"
    );
    tick(&app, failed + Duration::days(7)).await;
    let suspended = sub(&app, &user, &id).await;
    assert_eq!(suspended["status"], "SUSPENDED");
    assert_eq!(at(&suspended["suspendedAt"]), failed + Duration::days(7));
    assert_eq!(suspended["instance"]["desiredState"], "STOPPED");

    // Money arrives: settled at once (by the job the credit queued), not at the next tick.
    let paid_at = app.state.clock.now();
    adjust(&app, &admin, &user.user_id, "30000").await.ok();
    eventually("the subscription is settled", || async {
        sub(&app, &user, &id).await["status"] == "ACTIVE"
    })
    .await;
    let active = sub(&app, &user, &id).await;
    assert_eq!(active["instance"]["desiredState"], "RUNNING");
    assert_eq!(active["failedCharges"], 0);
    assert!(
        at(&active["currentPeriodStart"]) >= paid_at,
        "a fresh period from the payment"
    );
    let paid = &invoices(&app, &user).await[0];
    assert_eq!(paid["status"], "PAID");
    assert_eq!(balance(&app, &user).await, "0.00");
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_past_due_subscription_paid_within_grace_continues_its_periods() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, id) = subscribed(&app, &admin, 0).await;
    let end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);
    tick(&app, end + Duration::hours(2)).await;
    assert_eq!(sub(&app, &user, &id).await["status"], "PAST_DUE");
    adjust(&app, &admin, &user.user_id, "30000").await.ok();
    eventually("settled", || async {
        sub(&app, &user, &id).await["status"] == "ACTIVE"
    })
    .await;
    let s = sub(&app, &user, &id).await;
    assert_eq!(
        at(&s["currentPeriodStart"]),
        end,
        "it kept running: no free days"
    );
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expiry_after_thirty_days_suspended_deletes_the_instance_and_releases_the_quota() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, id) = subscribed(&app, &admin, 0).await;
    assert_eq!(used_quota(&app, &admin, "ghost", "Basic").await, 1);
    let end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);
    tick(&app, end + Duration::minutes(1)).await;
    tick(&app, end + Duration::days(7) + Duration::minutes(2)).await;
    assert_eq!(sub(&app, &user, &id).await["status"], "SUSPENDED");
    tick(&app, end + Duration::days(36)).await;
    assert_eq!(
        sub(&app, &user, &id).await["status"],
        "SUSPENDED",
        "not yet 30 days"
    );
    tick(&app, end + Duration::days(37) + Duration::minutes(3)).await;
    let expired = sub(&app, &user, &id).await;
    assert_eq!(expired["status"], "EXPIRED");
    assert_eq!(expired["instance"]["desiredState"], "DELETED");
    assert_eq!(used_quota(&app, &admin, "ghost", "Basic").await, 0);
    assert_eq!(invoices(&app, &user).await[0]["status"], "VOID");
    // Money arriving later no longer revives it.
    adjust(&app, &admin, &user.user_id, "30000").await.ok();
    tick(&app, end + Duration::days(38)).await;
    assert_eq!(sub(&app, &user, &id).await["status"], "EXPIRED");
    assert_eq!(balance(&app, &user).await, "30000.00");
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_at_period_end_runs_to_the_end_and_resume_undoes_it() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, id) = subscribed(&app, &admin, 100000).await;
    let end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);
    let cancel = "mutation($id: ID!) { cancelSubscription(id: $id) { status cancelAtPeriodEnd } }";
    let r = app
        .gql(Some(&user.access), cancel, json!({ "id": id }))
        .await
        .ok();
    assert_eq!(r.str("cancelSubscription.status"), "ACTIVE");
    assert_eq!(r.data("cancelSubscription.cancelAtPeriodEnd"), true);
    let resume = "mutation($id: ID!) { resumeSubscription(id: $id) { cancelAtPeriodEnd } }";
    let r = app
        .gql(Some(&user.access), resume, json!({ "id": id }))
        .await
        .ok();
    assert_eq!(r.data("resumeSubscription.cancelAtPeriodEnd"), false);
    assert_eq!(
        app.gql(Some(&user.access), resume, json!({ "id": id }))
            .await
            .code(),
        "CONFLICT"
    );

    app.gql(Some(&user.access), cancel, json!({ "id": id }))
        .await
        .ok();
    tick(&app, end - Duration::minutes(1)).await;
    assert_eq!(
        sub(&app, &user, &id).await["status"],
        "ACTIVE",
        "runs to the end"
    );
    tick(&app, end + Duration::minutes(1)).await;
    let s = sub(&app, &user, &id).await;
    assert_eq!(s["status"], "CANCELLED");
    assert_eq!(s["instance"]["desiredState"], "DELETED");
    assert_eq!(balance(&app, &user).await, "100000.00", "not renewed");
    assert_eq!(used_quota(&app, &admin, "ghost", "Basic").await, 0);

    // Auto-renew off ends the same way.
    let (user, id) = subscribed(&app, &admin, 100000).await;
    let end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);
    app.gql(
        Some(&user.access),
        "mutation($id: ID!) { setSubscriptionAutoRenew(id: $id, autoRenew: false) { autoRenew } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    tick(&app, end + Duration::minutes(1)).await;
    assert_eq!(sub(&app, &user, &id).await["status"], "CANCELLED");
    assert_eq!(balance(&app, &user).await, "100000.00");
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_now_credits_the_unused_part_by_the_second() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.state.clock.stop();
    let (user, id) = subscribed(&app, &admin, 0).await;
    let s = sub(&app, &user, &id).await;
    let (start, end) = (at(&s["currentPeriodStart"]), at(&s["currentPeriodEnd"]));
    // A quarter of the period used.
    let now = start + (end - start) / 4;
    app.state.clock.advance_to(now);
    let r = app
        .gql(Some(&user.access), "mutation($id: ID!) { cancelSubscription(id: $id, atPeriodEnd: false) { status instance { desiredState } } }", json!({ "id": id }))
        .await
        .ok();
    assert_eq!(r.str("cancelSubscription.status"), "CANCELLED");
    assert_eq!(r.str("cancelSubscription.instance.desiredState"), "DELETED");
    let whole = (end - start).num_seconds() as i128;
    let left = (end - now).num_seconds() as i128;
    let expected = (3_000_000i128 * left * 2 + whole) / (2 * whole);
    assert_eq!(
        balance(&app, &user).await,
        podium::money::format_amount(expected as i64, "IDR")
    );
    let again = cancel_now(&app, &user, &id).await;
    assert_eq!(again.code(), "CONFLICT");
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrade_and_downgrade_are_prorated_by_the_second() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.state.clock.stop();
    let user = funded_user(&app, &admin, "changer", "200000").await;
    let basic = plan_id(&app, "n8n", "Basic").await; // 25000
    let standard = plan_id(&app, "n8n", "Standard").await; // 50000
    let id = subscribe(&app, &user, &basic, "flows")
        .await
        .ok()
        .str("subscribe.subscription.id");
    let s = sub(&app, &user, &id).await;
    let (start, end) = (at(&s["currentPeriodStart"]), at(&s["currentPeriodEnd"]));
    let whole = (end - start).num_seconds() as i128;
    let prorate = |amount: i128, now: DateTime<Utc>| {
        let left = (end - now).num_seconds() as i128;
        (amount * left * 2 + whole) / (2 * whole)
    };

    // Upgrade a third of the way in: pay the difference for what is left.
    let t1 = start + (end - start) / 3 + Duration::seconds(7);
    app.state.clock.advance_to(t1);
    let change = "mutation($id: ID!, $p: ID!, $k: String) { changeSubscriptionPlan(id: $id, planId: $p, idempotencyKey: $k) { plan { name } price { amount } } }";
    let r = app
        .gql(
            Some(&user.access),
            change,
            json!({ "id": id, "p": standard, "k": "up-1" }),
        )
        .await
        .ok();
    assert_eq!(r.str("changeSubscriptionPlan.plan.name"), "Standard");
    assert_eq!(r.str("changeSubscriptionPlan.price.amount"), "50000.00");
    let upgrade = prorate(5_000_000, t1) - prorate(2_500_000, t1);
    let after_upgrade = 17_500_000i128 - upgrade;
    assert_eq!(
        balance(&app, &user).await,
        podium::money::format_amount(after_upgrade as i64, "IDR")
    );
    // A retry with the key charges nothing more.
    app.gql(
        Some(&user.access),
        change,
        json!({ "id": id, "p": standard, "k": "up-1" }),
    )
    .await
    .ok();
    assert_eq!(
        balance(&app, &user).await,
        podium::money::format_amount(after_upgrade as i64, "IDR")
    );
    let upgrade_invoice = &invoices(&app, &user).await[0];
    assert_eq!(
        upgrade_invoice["total"]["amount"],
        podium::money::format_amount(upgrade as i64, "IDR")
    );
    assert_eq!(upgrade_invoice["lines"].as_array().unwrap().len(), 2);
    assert_eq!(used_quota(&app, &admin, "n8n", "Standard").await, 1);
    assert_eq!(used_quota(&app, &admin, "n8n", "Basic").await, 0);

    // Downgrade later: the difference comes back to the wallet.
    let t2 = start + (end - start) * 2 / 3;
    app.state.clock.advance_to(t2);
    app.gql(Some(&user.access), change, json!({ "id": id, "p": basic }))
        .await
        .ok();
    let credit = prorate(5_000_000, t2) - prorate(2_500_000, t2);
    assert_eq!(
        balance(&app, &user).await,
        podium::money::format_amount((after_upgrade + credit) as i64, "IDR")
    );
    let w = app.gql(Some(&user.access), WALLET, json!({})).await.ok();
    let kinds: Vec<Value> = nodes(w.data("wallet.transactions"))
        .iter()
        .map(|t| t["type"].clone())
        .collect();
    assert_eq!(kinds[..2], [json!("REFUND"), json!("UPGRADE")]);

    // Another service's plan, or a suspended subscription, can't be changed to.
    let ghost = plan_id(&app, "ghost", "Basic").await;
    assert_eq!(
        app.gql(Some(&user.access), change, json!({ "id": id, "p": ghost }))
            .await
            .code(),
        "CONFLICT"
    );
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_downtime_the_cycle_catches_up_period_by_period() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, id) = subscribed(&app, &admin, 90000).await;
    let end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);
    // Three months and a bit later, one run renews each missed period once.
    tick(&app, end + Duration::days(62) + Duration::hours(1)).await;
    let all = invoices(&app, &user).await;
    assert_eq!(all.len(), 4, "the first and three renewals");
    let mut periods: Vec<(DateTime<Utc>, DateTime<Utc>)> = all
        .iter()
        .map(|i| (at(&i["periodStart"]), at(&i["periodEnd"])))
        .collect();
    periods.sort();
    assert_eq!(
        periods[1].0, end,
        "the first renewal starts where the paid month ended"
    );
    for pair in periods.windows(2) {
        assert_eq!(
            pair[0].1, pair[1].0,
            "periods follow each other without a gap"
        );
    }
    assert_eq!(balance(&app, &user).await, "0.00");
    assert_eq!(sub(&app, &user, &id).await["status"], "ACTIVE");
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_renewing_at_once_charge_each_subscription_once() {
    let app = spawn_app().await;
    let other = spawn_app_on(&app.database_url, &[]).await;
    let admin = app.admin().await;
    let plan = plan_id(&app, "ghost", "Basic").await;
    // Customers with two subscriptions each (their wallets are wanted by two renewals at
    // once); the last three can pay only one of the two renewals.
    let mut customers = Vec::new();
    for i in 0..9 {
        let left = if i < 6 { "60000" } else { "30000" };
        let user = funded_user(
            &app,
            &admin,
            &format!("pair{i}"),
            &(60000 + left.parse::<i64>().unwrap()).to_string(),
        )
        .await;
        for n in 0..2 {
            subscribe(&app, &user, &plan, &format!("site {n}"))
                .await
                .ok();
        }
        customers.push((user, i < 6));
    }
    let later = Utc::now() + Duration::days(32);
    app.state.clock.advance_to(later);
    other.state.clock.advance_to(later);
    let (a, b, c, d) = tokio::join!(
        run_renewals(&app.state),
        run_renewals(&other.state),
        run_renewals(&app.state),
        run_renewals(&other.state)
    );
    let runs = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
    let renewed: usize = runs.iter().map(|r| r.renewed).sum();
    let past_due: usize = runs.iter().map(|r| r.past_due).sum();
    assert_eq!((renewed, past_due), (12 + 3, 3), "{runs:?}");
    for (user, both) in &customers {
        assert_eq!(balance(&app, user).await, "0.00");
        assert_eq!(
            invoices(&app, user).await.len(),
            4,
            "two charges, two renewals (paid or open)"
        );
        let mine = app
            .gql(
                Some(&user.access),
                "{ mySubscriptions { edges { node { status } } } }",
                json!({}),
            )
            .await
            .ok();
        let due = mine.0.to_string().matches("PAST_DUE").count();
        assert_eq!(due, if *both { 0 } else { 1 });
    }
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_administrators_suspension_stops_the_instance_and_the_cycle_leaves_it_alone() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, id) = subscribed(&app, &admin, 0).await;
    let end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);
    let suspend = "mutation($id: ID!) { suspendSubscription(id: $id) { status suspendedByAdministrator instance { desiredState } } }";
    let unsuspend = "mutation($id: ID!) { unsuspendSubscription(id: $id) { status instance { desiredState } } }";
    // Customers can't lift it themselves, nor suspend.
    assert_eq!(
        app.gql(Some(&user.access), suspend, json!({ "id": id }))
            .await
            .code(),
        "FORBIDDEN"
    );
    let r = app
        .gql(Some(&admin.access), suspend, json!({ "id": id }))
        .await
        .ok();
    assert_eq!(r.str("suspendSubscription.status"), "SUSPENDED");
    assert_eq!(r.data("suspendSubscription.suspendedByAdministrator"), true);
    assert_eq!(
        r.str("suspendSubscription.instance.desiredState"),
        "STOPPED"
    );
    assert_eq!(
        app.gql(Some(&admin.access), suspend, json!({ "id": id }))
            .await
            .code(),
        "CONFLICT"
    );
    assert_eq!(
        app.gql(Some(&user.access), unsuspend, json!({ "id": id }))
            .await
            .code(),
        "FORBIDDEN"
    );

    // Forty days on: not renewed, not expired, nothing charged.
    tick(&app, end + Duration::days(40)).await;
    assert_eq!(sub(&app, &user, &id).await["status"], "SUSPENDED");
    assert_eq!(invoices(&app, &user).await.len(), 1);

    let r = app
        .gql(Some(&admin.access), unsuspend, json!({ "id": id }))
        .await
        .ok();
    assert_eq!(r.str("unsuspendSubscription.status"), "ACTIVE");
    assert_eq!(
        r.str("unsuspendSubscription.instance.desiredState"),
        "RUNNING"
    );
    // The paid time it stood stopped (almost all of its month) comes back to the wallet.
    let credited: f64 = balance(&app, &user).await.parse().unwrap();
    assert!(credited > 29_000.0 && credited <= 30_000.0, "{credited}");
    assert_eq!(at(&sub(&app, &user, &id).await["currentPeriodEnd"]), end);
    // Then it is billed from its period's end as usual: one month paid from the credit,
    // the next one short (PAST_DUE).
    tick(&app, end + Duration::days(40) + Duration::minutes(1)).await;
    assert_eq!(sub(&app, &user, &id).await["status"], "PAST_DUE");
    let audit = app
        .gql(
            Some(&admin.access),
            "{ auditLog(first: 50) { edges { node { action } } } }",
            json!({}),
        )
        .await
        .0
        .to_string();
    assert!(audit.contains("subscription.suspend") && audit.contains("subscription.unsuspend"));
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_the_field_named_and_changes_nothing() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = funded_user(&app, &admin, "careless", "100000").await;
    let plan = plan_id(&app, "ghost", "Basic").await;
    let long_key = "k".repeat(256);
    for (vars, field) in [
        (json!({ "plan": plan, "name": "  " }), "name"),
        (json!({ "plan": plan, "name": "x".repeat(64) }), "name"),
        (
            json!({ "plan": plan, "name": "invoice\u{202E}gpj.exe" }),
            "name",
        ),
        (json!({ "plan": plan, "name": "\u{200B}" }), "name"),
        (json!({ "plan": "not-an-id", "name": "ok" }), "planId"),
        (
            json!({ "plan": plan, "name": "ok", "key": long_key }),
            "idempotencyKey",
        ),
    ] {
        let r = app.gql(Some(&user.access), SUBSCRIBE, vars).await;
        assert_eq!(r.code(), "BAD_USER_INPUT", "{field}");
        assert!(
            r.error()["extensions"]["fields"][field].is_array(),
            "{field}: {:?}",
            r.0
        );
    }
    let unknown = app
        .gql(
            Some(&user.access),
            SUBSCRIBE,
            json!({ "plan": "00000000-0000-0000-0000-000000000000", "name": "ok" }),
        )
        .await;
    assert_eq!(unknown.code(), "NOT_FOUND");
    let anonymous = app
        .gql(None, SUBSCRIBE, json!({ "plan": plan, "name": "ok" }))
        .await;
    assert_eq!(anonymous.code(), "UNAUTHENTICATED");
    assert_eq!(
        adjust(&app, &admin, &user.user_id, "12.345").await.code(),
        "BAD_USER_INPUT",
        "IDR has two decimals"
    );
    assert_eq!(balance(&app, &user).await, "100000.00");
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_pays_the_plans_new_price_or_its_own_when_the_plan_changed_currency() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (cheap, cheap_id) = subscribed(&app, &admin, 100000).await;
    let (dollar, dollar_id) = subscribed(&app, &admin, 100000).await;
    let plan = plan_id(&app, "ghost", "Basic").await;
    let reprice = "mutation($id: ID!, $a: String!, $c: String) { updateServicePlan(id: $id, input: {monthlyPrice: {amount: $a, currency: $c}}) { id } }";
    // Repriced at 35000 IDR: the subscriptions keep 30000 until their renewal, then pay 35000.
    app.gql(
        Some(&admin.access),
        reprice,
        json!({ "id": plan, "a": "35000", "c": "IDR" }),
    )
    .await
    .ok();
    let end = at(&sub(&app, &cheap, &cheap_id).await["currentPeriodEnd"]);
    tick(&app, end + Duration::hours(1)).await;
    assert_eq!(
        sub(&app, &cheap, &cheap_id).await["price"]["amount"],
        "35000.00"
    );
    assert_eq!(balance(&app, &cheap).await, "65000.00");
    // Repriced in dollars: a wallet in IDR can't pay USD, so the next renewal charges the
    // price it was sold at (never 10 "dollars" taken as rupiah).
    app.gql(
        Some(&admin.access),
        reprice,
        json!({ "id": plan, "a": "10", "c": "USD" }),
    )
    .await
    .ok();
    let end = at(&sub(&app, &dollar, &dollar_id).await["currentPeriodEnd"]);
    tick(&app, end + Duration::hours(1)).await;
    let s = sub(&app, &dollar, &dollar_id).await;
    assert_eq!(s["status"], "ACTIVE");
    assert_eq!(s["price"]["amount"], "35000.00");
    assert_eq!(
        balance(&app, &dollar).await,
        "30000.00",
        "35000 then 35000 again"
    );
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refunds_cancellations_and_downgrades_together_never_give_back_more_than_was_paid() {
    let app = spawn_app_with(&[("PODIUM_TAX_RATE_PERCENT", "10")]).await;
    let admin = app.admin().await;
    app.state.clock.stop();
    // 30000 + 10 % tax = 33000 paid.
    let user = funded_user(&app, &admin, "refunded", "33000").await;
    let plan = plan_id(&app, "ghost", "Basic").await;
    let id = subscribe(&app, &user, &plan, "goodwill")
        .await
        .ok()
        .str("subscribe.subscription.id");
    assert_eq!(balance(&app, &user).await, "0.00");
    // The operator raises the tax afterwards: a credit gives back what was paid, at 10 %.
    let w = app.gql(Some(&user.access), WALLET, json!({})).await.ok();
    let debit = nodes(w.data("wallet.transactions"))
        .into_iter()
        .find(|t| t["type"] == "SUBSCRIPTION")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // An administrator refunds 30000 of it as goodwill; then the customer cancels at once.
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { refundTransaction(id: $id, amount: \"30000\") { id } }",
        json!({ "id": debit }),
    )
    .await
    .ok();
    let r = cancel_now(&app, &user, &id).await.ok();
    assert_eq!(r.str("cancelSubscription.status"), "CANCELLED");
    assert_eq!(
        balance(&app, &user).await,
        "33000.00",
        "never more than the 33000 paid"
    );
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn credits_give_tax_back_at_the_rate_it_was_paid_at() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    app.state.clock.stop();
    let (user, id) = subscribed(&app, &admin, 0).await;
    let s = sub(&app, &user, &id).await;
    let (start, end) = (at(&s["currentPeriodStart"]), at(&s["currentPeriodEnd"]));
    // Paid without tax; a tax of 11 % is switched on (a restart with the new setting).
    let taxed = spawn_app_on(&app.database_url, &[("PODIUM_TAX_RATE_PERCENT", "11")]).await;
    taxed.state.clock.stop();
    taxed.state.clock.advance_to(start + (end - start) / 2);
    let r = cancel_now(&taxed, &user, &id).await.ok();
    assert_eq!(r.str("cancelSubscription.status"), "CANCELLED");
    assert_eq!(
        balance(&app, &user).await,
        "15000.00",
        "half of 30000, and no tax never paid"
    );

    // Bought untaxed, upgraded half way at 11 %, cancelled at once: the unused half of the
    // new plan comes back as the upgrade (with its 11 %) and the untaxed rest.
    let user = funded_user(&app, &admin, "upgraded", "46650").await;
    let basic = plan_id(&app, "ghost", "Basic").await; // 30000
    let standard = plan_id(&app, "ghost", "Standard").await; // 60000
    let id = subscribe(&app, &user, &basic, "taxed later")
        .await
        .ok()
        .str("subscribe.subscription.id");
    let s = sub(&app, &user, &id).await;
    let (start, end) = (at(&s["currentPeriodStart"]), at(&s["currentPeriodEnd"]));
    taxed.state.clock.advance_to(start + (end - start) / 2);
    let change = "mutation($id: ID!, $p: ID!) { changeSubscriptionPlan(id: $id, planId: $p) { plan { name } } }";
    taxed
        .gql(
            Some(&user.access),
            change,
            json!({ "id": id, "p": standard }),
        )
        .await
        .ok();
    assert_eq!(
        balance(&app, &user).await,
        "0.00",
        "15000 more, plus 1650 tax"
    );
    cancel_now(&taxed, &user, &id).await.ok();
    assert_eq!(
        balance(&app, &user).await,
        "31650.00",
        "16650 with its tax, and 15000"
    );
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn changing_plans_works_at_the_platform_limit_and_races_subscribes_without_deadlock() {
    let app = spawn_app_with(&[("PODIUM_MAX_SUBSCRIPTIONS_PER_USER", "2")]).await;
    let admin = app.admin().await;
    let user = funded_user(&app, &admin, "capped", "1000000").await;
    let basic = plan_id(&app, "n8n", "Basic").await;
    let standard = plan_id(&app, "n8n", "Standard").await;
    let a = subscribe(&app, &user, &basic, "a")
        .await
        .ok()
        .str("subscribe.subscription.id");
    subscribe(&app, &user, &standard, "b").await.ok();
    assert_eq!(
        subscribe(&app, &user, &basic, "c").await.code(),
        "CONFLICT",
        "at the limit"
    );
    let change = "mutation($id: ID!, $p: ID!) { changeSubscriptionPlan(id: $id, planId: $p) { plan { name } } }";
    let r = app
        .gql(
            Some(&user.access),
            change,
            json!({ "id": a, "p": standard }),
        )
        .await
        .ok();
    assert_eq!(
        r.str("changeSubscriptionPlan.plan.name"),
        "Standard",
        "a change is not a new subscription"
    );

    // Customers changing between two plans both ways while others subscribe to them: every
    // call ends in success or a clear refusal, never INTERNAL (a deadlock).
    let mut changers = Vec::new();
    for i in 0..6 {
        let s = funded_user(&app, &admin, &format!("changer{i}"), "1000000").await;
        let from = if i % 2 == 0 { &basic } else { &standard };
        let id = subscribe(&app, &s, from, "flows")
            .await
            .ok()
            .str("subscribe.subscription.id");
        changers.push((
            s,
            id,
            if i % 2 == 0 {
                standard.clone()
            } else {
                basic.clone()
            },
        ));
    }
    let mut buyers = Vec::new();
    for i in 0..6 {
        buyers.push(funded_user(&app, &admin, &format!("buyer{i}"), "1000000").await);
    }
    let changes = changers
        .iter()
        .map(|(s, id, to)| app.gql(Some(&s.access), change, json!({ "id": id, "p": to })));
    let buys = buyers
        .iter()
        .enumerate()
        .map(|(i, s)| subscribe(&app, s, if i % 2 == 0 { &basic } else { &standard }, "new"));
    let (changed, bought) = tokio::join!(
        futures_util::future::join_all(changes),
        futures_util::future::join_all(buys)
    );
    for r in changed.iter().chain(bought.iter()) {
        assert!(r.0["errors"].is_null(), "{}", r.0);
    }
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn money_settles_every_debt_it_covers_past_an_administrators_suspension_and_a_debt_it_cannot()
{
    let app = spawn_app().await;
    let admin = app.admin().await;
    let user = funded_user(&app, &admin, "debtor", "230000").await;
    let business = plan_id(&app, "wordpress", "Business").await; // 150000
    let ghost = plan_id(&app, "ghost", "Basic").await; // 30000
    let big = subscribe(&app, &user, &business, "shop")
        .await
        .ok()
        .str("subscribe.subscription.id");
    let held = subscribe(&app, &user, &ghost, "held")
        .await
        .ok()
        .str("subscribe.subscription.id");
    let small = subscribe(&app, &user, &ghost, "blog")
        .await
        .ok()
        .str("subscribe.subscription.id");
    assert_eq!(balance(&app, &user).await, "20000.00");
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { suspendSubscription(id: $id) { id } }",
        json!({ "id": held }),
    )
    .await
    .ok();
    let end = at(&sub(&app, &user, &small).await["currentPeriodEnd"]);
    tick(&app, end + Duration::hours(1)).await;
    assert_eq!(sub(&app, &user, &big).await["status"], "PAST_DUE");
    assert_eq!(sub(&app, &user, &small).await["status"], "PAST_DUE");
    // 20000 + 15000 covers the blog's 30000, not the shop's 150000 (older in the queue).
    adjust(&app, &admin, &user.user_id, "15000").await.ok();
    eventually("the blog is settled", || async {
        sub(&app, &user, &small).await["status"] == "ACTIVE"
    })
    .await;
    assert_eq!(sub(&app, &user, &big).await["status"], "PAST_DUE");
    assert_eq!(sub(&app, &user, &held).await["status"], "SUSPENDED");
    assert_eq!(balance(&app, &user).await, "5000.00");
    assert_billing_consistent(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn live_subscription_events_show_nested_data_as_it_is_now() {
    use crate::subscriptions::{connect, recv, send};
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, id) = subscribed(&app, &admin, 0).await;
    let before = app.state.events.subscribers();
    let mut ws = connect(&app, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", user.access) } })).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    send(&mut ws, json!({ "id": "s", "type": "subscribe", "payload": { "query": "subscription { serviceSubscriptionChanged { status instance { desiredState } } }" } })).await;
    eventually("listening", || async {
        app.state.events.subscribers() > before
    })
    .await;
    let cancel = "mutation($id: ID!) { cancelSubscription(id: $id) { id } }";
    app.gql(Some(&user.access), cancel, json!({ "id": id }))
        .await
        .ok();
    let first = recv(&mut ws).await;
    assert_eq!(
        first["payload"]["data"]["serviceSubscriptionChanged"]["instance"]["desiredState"],
        "RUNNING"
    );
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { suspendSubscription(id: $id) { id } }",
        json!({ "id": id }),
    )
    .await
    .ok();
    // The subscribe's or the cancel's event may still be on its way (the outbox is tailed
    // asynchronously): read on to the suspension. Such a late event shows the instance as
    // it is when it is delivered, which may already be after the suspension.
    let changed = loop {
        let next = recv(&mut ws).await;
        let changed = next["payload"]["data"]["serviceSubscriptionChanged"].clone();
        if changed["status"] == "SUSPENDED" {
            break changed;
        }
    };
    assert_eq!(
        changed["instance"]["desiredState"], "STOPPED",
        "not the first event's cached instance"
    );
}
