//! Billing and instance notifications, delivered over SMTP to the aiosmtpd that
//! `scripts/test` runs: each arrives at its owner with its subject and its facts (amounts,
//! invoice numbers and links, the instance's address), once per occasion, and the ones a
//! user switched off stay away while money messages still come.

use chrono::{DateTime, Duration, Utc};
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};

use crate::billing::{adjust, plan_id};
use crate::billing_cycle::{at, invoices, sub};
use crate::helpers::*;
use crate::instances::{ready_node, subscribed_ids, wait_status};
use crate::mail_helpers::*;
use podium::subscriptions::cycle::{run_dunning, run_renewals};
use podium::subscriptions::reminders;

/// A server that sends its mail to the shared aiosmtpd.
async fn smtp_app() -> TestApp {
    app_mailing_to(&shared_smtp_url(), &[]).await
}

/// A registered customer with `amount` in the wallet: (session, address).
async fn customer(app: &TestApp, admin: &Session, name: &str, amount: &str) -> (Session, String) {
    let (s, email) = app.register(name).await;
    if amount != "0" {
        adjust(app, admin, &s.user_id, amount).await.ok();
    }
    (s, email)
}

/// Subscribes to Ghost Basic (30000.00 IDR a month); returns (subscription id, instance id).
async fn ghost(app: &TestApp, s: &Session, name: &str) -> (String, String) {
    let plan = plan_id(app, "ghost", "Basic").await;
    subscribed_ids(app, s, &plan, name).await
}

fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

/// Moves the app's clock to `t` and runs both billing jobs' work.
async fn tick(app: &TestApp, t: DateTime<Utc>) {
    app.state.clock.advance_to(t);
    run_renewals(&app.state).await.expect("renewals");
    run_dunning(&app.state).await.expect("dunning");
}

/// Outbox rows of one kind for one address, SENT or not.
async fn queued(app: &TestApp, to: &str, template: &str) -> usize {
    outbox_to(app, to)
        .await
        .iter()
        .filter(|r| r.template == template)
        .count()
}

/// Messages to `to` whose subject contains `subject`, once `n` of them have arrived.
async fn arrived(to: &str, subject: &str, n: usize) -> Vec<Received> {
    let mailbox = Mailbox::shared();
    let with = |m: &Received| m.subject.contains(subject);
    eventually_within(
        &format!("{n} message(s) {subject:?} to {to}"),
        std::time::Duration::from_secs(30),
        || {
            let mailbox = mailbox.clone();
            async move { mailbox.to(to).iter().filter(|m| with(m)).count() >= n }
        },
    )
    .await;
    mailbox.to(to).into_iter().filter(|m| with(m)).collect()
}

async fn set_preferences(app: &TestApp, s: &Session, prefs: Value) {
    app.gql(
        Some(&s.access),
        "mutation($i: NotificationPreferencesInput!) { updateNotificationPreferences(input: $i) { instanceAlerts renewalReminders } }",
        json!({ "i": prefs }),
    )
    .await
    .ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribing_sends_the_activation_then_the_instance_address_once_it_runs() {
    let app = smtp_app().await;
    let admin = app.admin().await;
    ready_node(&app, &admin, "node-a", 16).await;
    let (user, email) = customer(&app, &admin, "buyer", "50000").await;
    let (id, instance_id) = ghost(&app, &user, "notified blog").await;

    let activated = Mailbox::shared()
        .wait_for(&email, "Your Ghost subscription is active")
        .await;
    let invoice = &invoices(&app, &user).await[0];
    let number = invoice["number"].as_str().unwrap();
    let end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);
    for fact in ["30000.00 IDR", "Basic", number, &day(end), "notified blog"] {
        assert!(activated.text.contains(fact), "{fact}: {}", activated.text);
    }

    let running = wait_status(&app, &user, &instance_id, "RUNNING").await;
    let url = running["url"].as_str().expect("an address");
    assert!(url.starts_with("https://"), "{url}");
    let ready = Mailbox::shared()
        .wait_for(&email, "notified blog is running")
        .await;
    assert!(ready.text.contains(url), "{}", ready.text);
    // Running again after a stop is not news.
    let op = "mutation($id: ID!) { stopInstance(id: $id) { id } }";
    app.gql(Some(&user.access), op, json!({ "id": instance_id }))
        .await
        .ok();
    wait_status(&app, &user, &instance_id, "STOPPED").await;
    let op = "mutation($id: ID!) { startInstance(id: $id) { id } }";
    app.gql(Some(&user.access), op, json!({ "id": instance_id }))
        .await
        .ok();
    wait_status(&app, &user, &instance_id, "RUNNING").await;
    assert_eq!(queued(&app, &email, "INSTANCE_READY").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_sends_its_invoice_number_and_link() {
    let app = smtp_app().await;
    let admin = app.admin().await;
    let (user, email) = customer(&app, &admin, "renewer", "70000").await;
    let (id, _) = ghost(&app, &user, "renewed blog").await;
    // Another customer renewed in the same (bulk) batch hears of their own invoice.
    let (other, other_email) = customer(&app, &admin, "another", "60000").await;
    let (other_id, _) = ghost(&app, &other, "another blog").await;
    let end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);
    let other_end = at(&sub(&app, &other, &other_id).await["currentPeriodEnd"]);
    // The bulk path alone (the one-at-a-time pass would hide a failed bulk batch).
    app.state
        .clock
        .advance_to(end.max(other_end) + Duration::minutes(1));
    let bulk = podium::subscriptions::cycle::renew_in_bulk(&app.state)
        .await
        .unwrap();
    assert_eq!(bulk, 2, "both renewed in bulk");
    assert_eq!(queued(&app, &email, "RENEWAL_PAID").await, 1);
    tick(&app, end.max(other_end) + Duration::minutes(1)).await;
    let other_paid = Mailbox::shared()
        .wait_for(&other_email, "Renewal paid")
        .await;
    let other_number = invoices(&app, &other).await[0]["number"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(other_paid.subject.contains(&other_number));
    assert!(
        other_paid.text.contains("Wallet balance: 0.00 IDR"),
        "{}",
        other_paid.text
    );

    let paid = Mailbox::shared().wait_for(&email, "Renewal paid").await;
    let invoice = &invoices(&app, &user).await[0];
    let number = invoice["number"].as_str().unwrap();
    let link = format!(
        "{}/invoices/{}",
        app.state.settings.public_url.trim_end_matches('/'),
        invoice["id"].as_str().unwrap()
    );
    assert!(paid.subject.contains(number), "{}", paid.subject);
    let new_end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);
    for fact in ["30000.00 IDR", "10000.00 IDR", link.as_str(), &day(new_end)] {
        assert!(paid.text.contains(fact), "{fact}: {}", paid.text);
    }
    // The invoice link opens the printable invoice for its owner.
    let page = app
        .client
        .get(link.replace(
            app.state.settings.public_url.trim_end_matches('/'),
            &app.address,
        ))
        .bearer_auth(&user.access)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains(number));

    // Running the cycle again renews nothing and mails nothing.
    tick(&app, end.max(other_end) + Duration::minutes(2)).await;
    assert_eq!(queued(&app, &email, "RENEWAL_PAID").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn dunning_mails_each_failed_attempt_the_suspension_the_coming_deletion_and_the_expiry() {
    let app = smtp_app().await;
    let admin = app.admin().await;
    let (user, email) = customer(&app, &admin, "debtor", "30000").await;
    let (id, _) = ghost(&app, &user, "unpaid blog").await;
    let end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);
    app.state.clock.stop();

    // The renewal fails: past due, with what it costs, what the wallet holds, and when the
    // service stops.
    let failed = end + Duration::minutes(1);
    tick(&app, failed).await;
    let first = &arrived(&email, "Payment failed: Ghost is past due", 1).await[0];
    let grace_end = failed + Duration::days(7);
    for fact in [
        "costs 30000.00 IDR",
        "your wallet holds 0.00 IDR",
        &day(grace_end),
    ] {
        assert!(first.text.contains(fact), "{fact}: {}", first.text);
    }
    // Each dunning retry (days 1, 3 and 5) fails again, with a message of its own; a run
    // with nothing due mails nothing.
    tick(&app, failed + Duration::days(1)).await;
    tick(&app, failed + Duration::days(1) + Duration::hours(1)).await;
    arrived(&email, "Payment failed", 2).await;
    tick(&app, failed + Duration::days(3)).await;
    tick(&app, failed + Duration::days(5)).await;
    arrived(&email, "Payment failed", 4).await;
    assert_eq!(queued(&app, &email, "PAYMENT_FAILED").await, 4);

    // Grace over: suspended, kept for 30 days.
    tick(&app, grace_end).await;
    assert_eq!(sub(&app, &user, &id).await["status"], "SUSPENDED");
    let expire_on = grace_end + Duration::days(30);
    let suspended = Mailbox::shared()
        .wait_for(&email, "Ghost is suspended")
        .await;
    assert!(
        suspended.text.contains(&day(expire_on)),
        "{}",
        suspended.text
    );

    // Three days before the data goes, the reminder job warns once.
    app.state.clock.advance_to(expire_on - Duration::days(4));
    let early = reminders::run(&app.state).await.unwrap();
    assert_eq!(early.expiries, 0, "not yet within three days");
    app.state.clock.advance_to(expire_on - Duration::days(2));
    assert_eq!(reminders::run(&app.state).await.unwrap().expiries, 1);
    assert_eq!(reminders::run(&app.state).await.unwrap().expiries, 0);
    let soon = Mailbox::shared()
        .wait_for(&email, "data will be deleted on")
        .await;
    assert!(soon.subject.contains(&day(expire_on)), "{}", soon.subject);
    for fact in [day(grace_end), "30000.00 IDR".to_string()] {
        assert!(soon.text.contains(&fact), "{fact}: {}", soon.text);
    }

    tick(&app, expire_on + Duration::minutes(1)).await;
    assert_eq!(sub(&app, &user, &id).await["status"], "EXPIRED");
    let expired = Mailbox::shared()
        .wait_for(&email, "Ghost has expired")
        .await;
    assert!(expired.text.contains("Basic"), "{}", expired.text);
    for (template, n) in [("SUSPENDED", 1), ("EXPIRING_SOON", 1), ("EXPIRED", 1)] {
        assert_eq!(queued(&app, &email, template).await, n, "{template}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn settling_a_suspended_subscription_mails_the_paid_invoice() {
    let app = smtp_app().await;
    let admin = app.admin().await;
    let (user, email) = customer(&app, &admin, "payer", "30000").await;
    let (id, _) = ghost(&app, &user, "revived blog").await;
    let end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);
    app.state.clock.stop();
    tick(&app, end + Duration::minutes(1)).await;
    tick(&app, end + Duration::days(7) + Duration::minutes(2)).await;
    assert_eq!(sub(&app, &user, &id).await["status"], "SUSPENDED");
    adjust(&app, &admin, &user.user_id, "45000").await.ok();
    eventually("the subscription is settled", || async {
        sub(&app, &user, &id).await["status"] == "ACTIVE"
    })
    .await;
    let number = invoices(&app, &user).await[0]["number"]
        .as_str()
        .unwrap()
        .to_string();
    let paid = Mailbox::shared().wait_for(&email, "Renewal paid").await;
    assert!(paid.subject.contains(&number), "{}", paid.subject);
    assert!(paid.text.contains("15000.00 IDR"), "{}", paid.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_reminders_go_once_per_period_and_warn_when_the_wallet_falls_short() {
    let app = smtp_app().await;
    let admin = app.admin().await;
    // Covered: 30000 left for a 30000 renewal. Short: 5000 left. Quiet: covered, but
    // switched reminders off. Short and quiet: switched off, yet warned (money).
    let (covered, covered_email) = customer(&app, &admin, "covered", "60000").await;
    let (short, short_email) = customer(&app, &admin, "short", "35000").await;
    let (quiet, quiet_email) = customer(&app, &admin, "quiet", "60000").await;
    let (warned, warned_email) = customer(&app, &admin, "warned", "30000").await;
    set_preferences(&app, &quiet, json!({ "renewalReminders": false })).await;
    set_preferences(&app, &warned, json!({ "renewalReminders": false })).await;
    let mut ends = Vec::new();
    for s in [&covered, &short, &quiet, &warned] {
        let (id, _) = ghost(&app, s, "reminded blog").await;
        ends.push(at(&sub(&app, s, &id).await["currentPeriodEnd"]));
    }
    let end = *ends.iter().max().unwrap();
    let first = *ends.iter().min().unwrap();
    app.state.clock.stop();

    // Four days ahead: nothing yet.
    app.state.clock.advance_to(first - Duration::days(4));
    assert_eq!(reminders::run(&app.state).await.unwrap().renewals, 0);

    app.state.clock.advance_to(end - Duration::days(2));
    assert_eq!(reminders::run(&app.state).await.unwrap().renewals, 3);

    let calm = Mailbox::shared()
        .wait_for(&covered_email, "Ghost renews on")
        .await;
    assert!(!calm.subject.starts_with("Top up"), "{}", calm.subject);
    assert!(calm.subject.contains(&day(ends[0])), "{}", calm.subject);
    assert!(calm.text.contains("which covers it"), "{}", calm.text);
    assert!(calm.text.contains("30000.00 IDR"), "{}", calm.text);

    let low = Mailbox::shared()
        .wait_for(&short_email, "Top up before")
        .await;
    for fact in [
        "does not cover it",
        "Your wallet holds 5000.00 IDR",
        "top up at least 25000.00 IDR",
    ] {
        assert!(low.text.contains(fact), "{fact}: {}", low.text);
    }
    Mailbox::shared()
        .wait_for(&warned_email, "Top up before")
        .await;
    assert_eq!(queued(&app, &quiet_email, "RENEWAL_REMINDER").await, 0);

    // Again, from the job queue this time: the schedule is registered, its job runs the
    // same work, and nobody is reminded twice.
    let mut conn = AsyncPgConnection::establish(&app.database_url)
        .await
        .unwrap();
    #[derive(diesel::QueryableByName)]
    struct Cron {
        #[diesel(sql_type = Text)]
        cron: String,
    }
    let cron = app.state.settings.mail.reminder_cron.clone();
    eventually("the reminder schedule is registered", || {
        let url = app.database_url.clone();
        let cron = cron.clone();
        async move {
            let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
            let found: Vec<Cron> =
                diesel::sql_query("SELECT cron FROM schedules WHERE name = 'mail.reminders'")
                    .load(&mut conn)
                    .await
                    .unwrap();
            found.iter().any(|c| c.cron == cron)
        }
    })
    .await;
    podium::jobs::model::enqueue(
        &mut conn,
        podium::jobs::MAIL_REMINDERS,
        json!({}),
        Utc::now(),
        Some("test:reminders"),
    )
    .await
    .unwrap();
    #[derive(diesel::QueryableByName)]
    struct Status {
        #[diesel(sql_type = Text)]
        status: String,
    }
    eventually("the queued reminder job succeeds", || {
        let url = app.database_url.clone();
        async move {
            let mut conn = AsyncPgConnection::establish(&url).await.unwrap();
            let s: Vec<Status> =
                diesel::sql_query("SELECT status FROM jobs WHERE unique_key = 'test:reminders'")
                    .load(&mut conn)
                    .await
                    .unwrap();
            s.iter().any(|s| s.status == "SUCCEEDED")
        }
    })
    .await;
    for to in [&covered_email, &short_email, &warned_email] {
        assert_eq!(queued(&app, to, "RENEWAL_REMINDER").await, 1, "{to}");
        assert_eq!(
            Mailbox::shared()
                .to(to)
                .iter()
                .filter(|m| m.subject.contains("renews on"))
                .count(),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_top_up_by_card_mails_the_amount_and_the_new_balance() {
    let (app, _) =
        crate::topups::stripe_app_with(true, &[("PODIUM_SMTP_URL", &shared_smtp_url())]).await;
    let (user, email) = app.register("topper").await;
    let r = crate::topups::create_top_up(&app, &user.access, "50000", None)
        .await
        .ok();
    let intent = r.str("createTopUp.topUp.paymentIntentId");
    let (status, paid) = crate::topups::pay(&app, &intent, "pm_card_visa").await;
    assert_eq!(status, 200, "{paid}");
    let received = Mailbox::shared()
        .wait_for(&email, "Top-up received: 50000.00 IDR")
        .await;
    assert!(
        received.text.contains("Balance: 50000.00 IDR"),
        "{}",
        received.text
    );
    assert_eq!(queued(&app, &email, "TOP_UP_RECEIVED").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_instance_is_mailed_unless_its_owner_switched_instance_alerts_off() {
    let app = smtp_app().await;
    // One hour for the whole test: a failure alert goes at most once per clock hour.
    app.state.clock.stop();
    let admin = app.admin().await;
    ready_node(&app, &admin, "node-a", 16).await;
    let service = app
        .gql(None, "{ service(slug: \"ghost\") { id } }", json!({}))
        .await
        .ok()
        .str("service.id");
    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { updateService(id: $id, input: {dockerImage: \"example/ghost:crashloop\"}) { id } }",
        json!({ "id": service }),
    )
    .await
    .ok();

    let (alerted, alerted_email) = customer(&app, &admin, "alerted", "50000").await;
    let (_, id) = ghost(&app, &alerted, "crashing blog").await;
    wait_status(&app, &alerted, &id, "FAILED").await;
    let problem = Mailbox::shared()
        .wait_for(&alerted_email, "crashing blog has a problem")
        .await;
    assert!(
        problem.text.contains("the app keeps crashing"),
        "{}",
        problem.text
    );

    let (muted, muted_email) = customer(&app, &admin, "muted", "50000").await;
    set_preferences(&app, &muted, json!({ "instanceAlerts": false })).await;
    let (_, id) = ghost(&app, &muted, "quiet crash").await;
    let failed = wait_status(&app, &muted, &id, "FAILED").await;
    assert!(
        failed["statusMessage"]
            .as_str()
            .unwrap()
            .contains("crashing")
    );
    // Money mail still comes; the alert was never queued (it would have been in the
    // transaction that recorded FAILED).
    Mailbox::shared()
        .wait_for(&muted_email, "Your Ghost subscription is active")
        .await;
    assert_eq!(queued(&app, &muted_email, "INSTANCE_FAILED").await, 0);
    assert_eq!(queued(&app, &alerted_email, "INSTANCE_FAILED").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_mail_server_down_the_instance_address_and_the_dunning_mail_arrive_once_it_is_back()
 {
    let mut smtp = SmtpServer::new();
    let app = app_mailing_to(&smtp.url(), &[]).await;
    let admin = app.admin().await;
    ready_node(&app, &admin, "node-a", 16).await;
    let (user, email) = customer(&app, &admin, "patient", "30000").await;
    let (id, instance_id) = ghost(&app, &user, "patient blog").await;
    wait_status(&app, &user, &instance_id, "RUNNING").await;
    let end = at(&sub(&app, &user, &id).await["currentPeriodEnd"]);
    app.state.clock.stop();
    tick(&app, end + Duration::minutes(1)).await;
    eventually_within(
        "the instance's address and the failed payment tried and failed",
        std::time::Duration::from_secs(30),
        || async {
            let rows = outbox_to(&app, &email).await;
            ["INSTANCE_READY", "PAYMENT_FAILED"].iter().all(|t| {
                rows.iter().any(|r| {
                    r.template == *t
                        && r.status == "QUEUED"
                        && r.attempts >= 1
                        && r.last_error.is_some()
                })
            })
        },
    )
    .await;
    smtp.start().await;
    let mailbox = smtp.mailbox();
    let within = std::time::Duration::from_secs(60);
    let ready = mailbox
        .wait_within(&email, "patient blog is running", within)
        .await;
    assert!(ready.text.contains("https://"), "{}", ready.text);
    mailbox
        .wait_within(&email, "Payment failed: Ghost is past due", within)
        .await;
}
