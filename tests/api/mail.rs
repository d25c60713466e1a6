//! Mail: the outbox, the transports, and the account flows that send mail.

use serde_json::json;

use crate::helpers::*;
use crate::mail_helpers::*;

#[tokio::test]
async fn registering_writes_a_verification_message_to_a_file_whose_link_verifies_the_address() {
    let app = spawn_app().await;
    let (session, email) = app.register("Fay").await;
    let dir = app.state.settings.mail.dir.clone();
    let mailbox = Mailbox::at(&dir);
    let message = mailbox.wait_for(&email, "Confirm your email address").await;
    assert!(message.message_id.contains('@'), "{message:?}");
    let token = message.token("/verify-email");
    let portal = &app.state.settings.mail.portal_url;
    assert!(
        message
            .link("/verify-email")
            .starts_with(&format!("{portal}/verify-email?token=pdv_")),
        "{message:?}"
    );
    let verified_at = async || {
        let me = app.gql(
            Some(&session.access),
            "{ me { emailVerifiedAt } }",
            json!({}),
        );
        me.await.ok().0["data"]["me"]["emailVerifiedAt"].clone()
    };
    assert!(verified_at().await.is_null());
    app.gql(
        None,
        "mutation($t: String!) { verifyEmail(token: $t) }",
        json!({ "t": token }),
    )
    .await
    .ok();
    assert!(verified_at().await.is_string(), "verified now");
    let again = app
        .gql(
            None,
            "mutation($t: String!) { verifyEmail(token: $t) }",
            json!({ "t": token }),
        )
        .await;
    assert_eq!(again.code(), "BAD_USER_INPUT", "single use");
}

const RESET: &str = "mutation($e: String!) { requestPasswordReset(email: $e) }";
const DO_RESET: &str =
    "mutation($t: String!, $p: String!) { resetPassword(token: $t, newPassword: $p) }";

async fn smtp_app(extra: &[(&str, &str)]) -> TestApp {
    app_mailing_to(&shared_smtp_url(), extra).await
}

#[tokio::test]
async fn a_password_reset_arrives_over_smtp_works_once_and_signs_every_session_out() {
    let app = smtp_app(&[]).await;
    let (session, email) = app.register("Gus").await;
    app.gql(None, RESET, json!({ "e": email.to_uppercase() }))
        .await
        .ok();
    let mailbox = Mailbox::shared();
    let message = mailbox.wait_for(&email, "Reset your Podium password").await;
    assert!(
        message.html.contains("Choose a new password"),
        "{message:?}"
    );
    let token = message.token("/reset-password");
    assert!(token.starts_with("pdp_"));

    let weak = app
        .gql(None, DO_RESET, json!({ "t": token, "p": "short" }))
        .await;
    assert_eq!(
        weak.code(),
        "BAD_USER_INPUT",
        "a weak password changes nothing"
    );
    app.gql(None, DO_RESET, json!({ "t": token, "p": "BrandNew-456" }))
        .await
        .ok();
    assert_eq!(
        app.me(&session.access).await.code(),
        "UNAUTHENTICATED",
        "every session is signed out"
    );
    assert_eq!(
        app.try_login(&email, PASSWORD).await.code(),
        "UNAUTHENTICATED"
    );
    app.login(&email, "BrandNew-456").await;
    mailbox.wait_for(&email, "password was changed").await;

    let again = app
        .gql(None, DO_RESET, json!({ "t": token, "p": "Another-789" }))
        .await;
    assert_eq!(again.code(), "BAD_USER_INPUT", "used twice: {}", again.0);
    assert_eq!(
        again.error()["extensions"]["fields"]["token"][0]
            .as_str()
            .map(|m| m.contains("already used")),
        Some(true)
    );
    app.login(&email, "BrandNew-456").await;

    // Stored hashed; the sealed copy in the outbox is erased once sent (marked just after
    // the server accepted the message).
    all_sent(&app, &email).await;
    let rows = outbox_to(&app, &email).await;
    assert!(rows.iter().all(|r| !r.sealed), "{rows:?}");
    use diesel_async::RunQueryDsl;
    let mut conn = app.state.pool.get().await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let count = async |conn: &mut diesel_async::AsyncPgConnection, sql: &str| -> i64 {
        diesel::sql_query(sql)
            .bind::<diesel::sql_types::Text, _>(&token)
            .get_result::<Found>(conn)
            .await
            .unwrap()
            .n
    };
    assert_eq!(
        count(&mut conn, "SELECT count(*) AS n FROM email_tokens WHERE token_hash = sha256(convert_to($1, 'UTF8'))").await,
        1,
        "its SHA-256 is what is stored"
    );
    for (table, columns) in [
        ("email_tokens", "email || purpose"),
        (
            "email_outbox",
            "subject || params::text || coalesce(last_error, '') || coalesce(unique_key, '')",
        ),
        (
            "jobs",
            "payload::text || coalesce(unique_key, '') || coalesce(last_error, '')",
        ),
        ("audit_log", "metadata::text"),
    ] {
        let sql = format!("SELECT count(*) AS n FROM {table} WHERE position($1 in {columns}) > 0");
        assert_eq!(
            count(&mut conn, &sql).await,
            0,
            "the token is not in {table}"
        );
    }
}

#[tokio::test]
async fn a_reset_token_after_its_hour_is_refused() {
    let app = smtp_app(&[]).await;
    let (_, email) = app.register("Hal").await;
    app.gql(None, RESET, json!({ "e": email })).await.ok();
    let token = Mailbox::shared()
        .wait_for(&email, "Reset your")
        .await
        .token("/reset-password");
    app.state.clock.advance(chrono::Duration::minutes(61));
    let late = app
        .gql(None, DO_RESET, json!({ "t": token, "p": "BrandNew-456" }))
        .await;
    assert_eq!(late.code(), "BAD_USER_INPUT");
    app.login(&email, PASSWORD).await;
}

#[tokio::test]
async fn a_reset_for_an_unknown_address_sends_nothing_and_answers_the_same() {
    let app = smtp_app(&[]).await;
    let (_, known) = app.register("Ivy").await;
    let unknown = format!("nobody-{}@example.com", uuid::Uuid::new_v4().simple());
    let for_unknown = app.gql(None, RESET, json!({ "e": unknown })).await;
    let for_known = app.gql(None, RESET, json!({ "e": known })).await;
    assert_eq!(for_unknown.0, for_known.0, "the same answer");
    assert_eq!(for_known.0["data"], json!({ "requestPasswordReset": true }));
    Mailbox::shared().wait_for(&known, "Reset your").await;
    mail_requests_done(&app).await;
    assert!(outbox_to(&app, &unknown).await.is_empty());
    assert!(Mailbox::shared().to(&unknown).is_empty());
}

#[tokio::test]
async fn reset_requests_are_limited_per_address_and_per_client() {
    let app = smtp_app(&[("PODIUM_MAIL_REQUESTS_PER_IP", "5")]).await;
    let (_, email) = app.register("Jo").await;
    for _ in 0..5 {
        app.gql(None, RESET, json!({ "e": email })).await.ok();
    }
    let limited = app.gql(None, RESET, json!({ "e": email })).await;
    assert_eq!(limited.code(), "RATE_LIMITED", "{}", limited.0);
    mail_requests_done(&app).await;
    let resets = outbox_to(&app, &email)
        .await
        .into_iter()
        .filter(|r| r.template == "PASSWORD_RESET")
        .count();
    assert_eq!(
        resets, 4,
        "an address gets five account messages an hour at most (its verification link was one)"
    );
}

const REGISTER: &str = "mutation($n: String!, $e: String!, $p: String!) { register(input: {name: $n, email: $e, password: $p}) { accessToken refreshToken user { id } verificationRequired message } }";

#[tokio::test]
async fn when_sign_in_waits_for_verification_register_answers_alike_and_tells_the_owner() {
    let app = smtp_app(&[("PODIUM_REQUIRE_VERIFIED_EMAIL", "true")]).await;
    let email = format!("kim-{}@example.com", uuid::Uuid::new_v4().simple());
    let first = app
        .gql(
            None,
            REGISTER,
            json!({ "n": "Kim", "e": email, "p": PASSWORD }),
        )
        .await
        .ok();
    let second = app
        .gql(
            None,
            REGISTER,
            json!({ "n": "Mallory", "e": email, "p": "Other-pass-123" }),
        )
        .await
        .ok();
    assert_eq!(first.0, second.0, "a taken address answers like a new one");
    assert_eq!(first.0["data"]["register"]["accessToken"], json!(null));
    assert_eq!(
        first.0["data"]["register"]["verificationRequired"],
        json!(true)
    );

    let mailbox = Mailbox::shared();
    let verification = mailbox.wait_for(&email, "Confirm your email address").await;
    mailbox.wait_for(&email, "Someone tried to sign up").await;
    let refused = app.try_login(&email, PASSWORD).await;
    assert_eq!(
        refused.code(),
        "FORBIDDEN",
        "not verified yet: {}",
        refused.0
    );
    assert_eq!(
        app.try_login(&email, "Other-pass-123").await.code(),
        "UNAUTHENTICATED",
        "the second registration changed nothing"
    );

    // Signed out, a new link can be asked for by address (answered alike for any address).
    let resend = "mutation($e: String) { resendVerificationEmail(email: $e) }";
    let nobody = format!("nobody-{}@example.com", uuid::Uuid::new_v4().simple());
    let known = app.gql(None, resend, json!({ "e": email })).await.ok();
    let unknown = app.gql(None, resend, json!({ "e": nobody })).await.ok();
    assert_eq!(known.0["data"], unknown.0["data"]);
    mail_requests_done(&app).await;
    assert!(outbox_to(&app, &nobody).await.is_empty());
    assert!(
        !outbox_to(&app, &email)
            .await
            .iter()
            .any(|r| r.template == "WELCOME"),
        "the welcome waits for the verified address"
    );
    eventually("a second verification link", || async {
        outbox_to(&app, &email)
            .await
            .iter()
            .filter(|r| r.template == "VERIFY_EMAIL")
            .count()
            == 2
    })
    .await;

    app.gql(
        None,
        "mutation($t: String!) { verifyEmail(token: $t) }",
        json!({ "t": verification.token("/verify-email") }),
    )
    .await
    .ok();
    app.login(&email, PASSWORD).await;
    mailbox.wait_for(&email, "Welcome to Podium").await;
}

#[tokio::test]
async fn a_mail_server_that_is_down_delays_mail_and_loses_none() {
    let mut smtp = SmtpServer::new();
    let app = app_mailing_to(&smtp.url(), &[]).await;
    let (_, email) = app.register("Lou").await;
    waiting_after_error(&app, &email, "VERIFY_EMAIL", "").await;
    smtp.start().await;
    let mailbox = smtp.mailbox();
    let verification = mailbox.wait_for(&email, "Confirm your email address").await;
    mailbox.wait_for(&email, "Welcome to Podium").await;
    all_sent(&app, &email).await;
    let rows = outbox_to(&app, &email).await;
    let row = rows.iter().find(|r| r.template == "VERIFY_EMAIL").unwrap();
    assert!(
        verification.message_id.contains(&row.id.to_string()),
        "a stable Message-ID per outbox row: {}",
        verification.message_id
    );
}

#[tokio::test]
async fn mail_goes_over_starttls_or_tls_to_a_server_whose_certificate_chains_to_the_given_ca() {
    for implicit in [false, true] {
        let mut smtp = SmtpServer::new();
        let ca = smtp.use_tls(implicit);
        smtp.start().await;
        let scheme = if implicit { "smtps" } else { "smtp+starttls" };
        let url = format!("{scheme}://127.0.0.1:{}", smtp.port());
        let app = app_mailing_to(&url, &[("PODIUM_SMTP_CA_FILE", ca.to_str().unwrap())]).await;
        let (_, email) = app.register("Tess").await;
        // aiosmtpd with a STARTTLS certificate refuses mail until the session is encrypted.
        smtp.mailbox()
            .wait_for(&email, "Confirm your email address")
            .await;

        // Without the CA, the certificate is not trusted: nothing goes, the message waits.
        let untrusting = app_mailing_to(&url, &[]).await;
        let (_, email) = untrusting.register("Tess").await;
        waiting_after_error(&untrusting, &email, "VERIFY_EMAIL", "certificate").await;
        assert!(smtp.mailbox().to(&email).is_empty(), "{scheme}");
    }
}

#[tokio::test]
async fn mail_signs_in_to_the_server_with_the_urls_credentials_after_starttls() {
    let mut smtp = SmtpServer::new();
    let ca = smtp.use_tls(false);
    smtp.require_login("podium", "p@ss word");
    smtp.start().await;
    let ca = ca.to_str().unwrap();
    let port = smtp.port();
    let url = format!("smtp+starttls://podium:p%40ss%20word@127.0.0.1:{port}");
    let app = app_mailing_to(&url, &[("PODIUM_SMTP_CA_FILE", ca)]).await;
    let (_, email) = app.register("Wes").await;
    smtp.mailbox()
        .wait_for(&email, "Confirm your email address")
        .await;

    // A wrong password is refused (535): retried like an outage, nothing sent, and the
    // password is in no error.
    let url = format!("smtp+starttls://podium:Wr0ngSecret@127.0.0.1:{port}");
    let refused = app_mailing_to(&url, &[("PODIUM_SMTP_CA_FILE", ca)]).await;
    let (_, email) = refused.register("Wes").await;
    waiting_after_error(&refused, &email, "VERIFY_EMAIL", "535").await;
    let rows = outbox_to(&refused, &email).await;
    assert!(
        rows.iter().all(|r| !r
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("Wr0ngSecret")),
        "{rows:?}"
    );
    assert!(smtp.mailbox().to(&email).is_empty());
}

#[tokio::test]
async fn a_mail_server_that_stalls_costs_a_retry_not_a_worker() {
    // Accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("smtp://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let app = app_mailing_to(&url, &[("PODIUM_SMTP_TIMEOUT_SECS", "1")]).await;
    let (_, email) = app.register("Xan").await;
    waiting_after_error(&app, &email, "VERIFY_EMAIL", "did not finish within 1 s").await;
    drop(silent);
}

const OUTBOX: &str = "query($s: EmailStatus) { emailOutbox(first: 50, status: $s) { totalCount edges { node { id recipient template subject status attempts lastError } } } }";

#[tokio::test]
async fn a_running_mail_server_stopped_then_started_again_gets_the_reset_sent_meanwhile() {
    let mut smtp = SmtpServer::new();
    smtp.start().await;
    let app = app_mailing_to(&smtp.url(), &[]).await;
    let (_, email) = app.register("Ola").await;
    let mailbox = smtp.mailbox();
    // Delivered while it runs.
    mailbox.wait_for(&email, "Welcome to Podium").await;
    smtp.stop();
    app.gql(None, RESET, json!({ "e": email })).await.ok();
    waiting_after_error(&app, &email, "PASSWORD_RESET", "").await;
    smtp.start().await;
    let reset = mailbox.wait_for(&email, "Reset your").await;
    app.gql(
        None,
        DO_RESET,
        json!({ "t": reset.token("/reset-password"), "p": "BrandNew-456" }),
    )
    .await
    .ok();
    app.login(&email, "BrandNew-456").await;
}

#[tokio::test]
async fn a_send_whose_last_try_was_lost_is_failed_and_can_be_retried_again_and_again() {
    // No workers: the test plays a worker that died holding the last try, twice.
    let smtp = SmtpServer::new();
    let app = app_mailing_to(&smtp.url(), &[("PODIUM_JOBS_ENABLED", "false")]).await;
    let admin = app.admin().await;
    let (_, email) = app.register("Pia").await;
    let lose_the_last_try = async || {
        sql(
            &app,
            "UPDATE jobs SET status = 'RUNNING', attempts = max_attempts, locked_by = 'dead',
                 lease_expires_at = now() - interval '1 second'
             WHERE kind = 'email.send' AND status = 'QUEUED'",
        )
        .await;
        podium::jobs::runner::run_one(&app.state, "survivor")
            .await
            .unwrap();
    };
    let retry = async |id: uuid::Uuid| {
        app.gql(
            Some(&admin.access),
            "mutation($id: ID!) { retryEmail(id: $id) { status } }",
            json!({ "id": id }),
        )
        .await
        .ok()
        .str("retryEmail.status")
    };
    lose_the_last_try().await;
    let rows = outbox_to(&app, &email).await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|r| r.status == "FAILED"
            && r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("last try was lost"))),
        "{rows:?}"
    );
    let id = rows[1].id;
    assert_eq!(retry(id).await, "QUEUED");
    lose_the_last_try().await;
    assert_eq!(retry(id).await, "QUEUED", "FAILED again, and retried again");
    let waiting = sql_count(
        &app,
        &format!(
            "SELECT count(*) AS n FROM jobs WHERE kind = 'email.send' AND status = 'QUEUED' AND payload->>'emailId' = '{id}'"
        ),
    )
    .await;
    assert_eq!(waiting, 1, "the second retry has a job to send it");
}

#[tokio::test]
async fn a_link_that_died_while_its_message_waited_is_not_sent_nor_retried() {
    let app = app_mailing_to(&shared_smtp_url(), &[("PODIUM_JOBS_ENABLED", "false")]).await;
    let admin = app.admin().await;
    let (_, email) = app.register("Rae").await;
    sql(
        &app,
        "UPDATE email_outbox SET created_at = now() - interval '25 hours' WHERE template = 'VERIFY_EMAIL'",
    )
    .await;
    // And one whose sealed link was erased (the clean-up does that to day-old ones).
    let (_, erased) = app.register("Rae").await;
    sql(
        &app,
        &format!("UPDATE email_outbox SET secret = NULL WHERE recipient = '{}' AND template = 'VERIFY_EMAIL'", erased.to_lowercase()),
    )
    .await;
    while podium::jobs::runner::run_one(&app.state, "worker")
        .await
        .unwrap()
    {}
    Mailbox::shared()
        .wait_for(&email, "Welcome to Podium")
        .await;
    let rows = outbox_to(&app, &email).await;
    let verify = rows.iter().find(|r| r.template == "VERIFY_EMAIL").unwrap();
    assert_eq!(verify.status, "FAILED");
    assert!(verify.last_error.as_deref().unwrap().contains("expired"));
    for address in [&email, &erased] {
        Mailbox::shared()
            .wait_for(address, "Welcome to Podium")
            .await;
        assert!(
            !Mailbox::shared()
                .to(address)
                .iter()
                .any(|m| m.subject.contains("Confirm")),
            "a dead link is not mailed"
        );
    }
    let erased_row = outbox_to(&app, &erased).await;
    assert!(
        erased_row
            .iter()
            .any(|r| r.template == "VERIFY_EMAIL" && r.status == "FAILED"),
        "{erased_row:?}"
    );
    let retried = app
        .gql(
            Some(&admin.access),
            "mutation($id: ID!) { retryEmail(id: $id) { status } }",
            json!({ "id": verify.id }),
        )
        .await;
    assert_eq!(retried.code(), "CONFLICT");
}

#[tokio::test]
async fn queued_mail_that_no_job_will_send_is_failed_by_the_clean_up() {
    let app = spawn_app_with(&[("PODIUM_JOBS_ENABLED", "false")]).await;
    let (_, email) = app.register("Sol").await;
    sql(&app, "DELETE FROM jobs WHERE kind = 'email.send'").await;
    let mut conn = app.state.pool.get().await.unwrap();
    assert_eq!(
        podium::email::model::fail_orphans(&mut conn).await.unwrap(),
        2
    );
    assert!(
        outbox_to(&app, &email)
            .await
            .iter()
            .all(|r| r.status == "FAILED")
    );
}

#[tokio::test]
async fn names_with_line_breaks_are_refused_and_unproven_addresses_are_not_greeted_by_name() {
    let app = spawn_app().await;
    let refused = app
        .gql(
            None,
            REGISTER,
            json!({ "n": "Eve\nVisit https://evil.example", "e": "eve@example.com", "p": PASSWORD }),
        )
        .await;
    assert_eq!(refused.code(), "BAD_USER_INPUT");
    let (_, email) = app.register("Quinn").await;
    let message = Mailbox::at(&app.state.settings.mail.dir)
        .wait_for(&email, "Confirm your email address")
        .await;
    assert!(message.text.starts_with("Hello there,"), "{}", message.text);
}

#[tokio::test]
async fn seeded_demo_accounts_are_verified_and_sign_in_when_verification_is_required() {
    let app = spawn_app_with(&[("PODIUM_REQUIRE_VERIFIED_EMAIL", "true")]).await;
    app.seed().await;
    app.login(USER_EMAIL, USER_PASSWORD).await;
    app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
}

#[tokio::test]
async fn administrators_read_the_outbox_with_errors_and_retry_a_failed_message() {
    let mut smtp = SmtpServer::new();
    let app = app_mailing_to(&smtp.url(), &[("PODIUM_MAIL_MAX_ATTEMPTS", "1")]).await;
    let admin = app.admin().await;
    let (user, email) = app.register("Max").await;
    eventually("both messages FAILED after their only try", || async {
        let rows = outbox_to(&app, &email).await;
        rows.len() == 2 && rows.iter().all(|r| r.status == "FAILED")
    })
    .await;
    let failed = app
        .gql(Some(&admin.access), OUTBOX, json!({ "s": "FAILED" }))
        .await
        .ok();
    let edges = failed.data("emailOutbox.edges").as_array().unwrap().clone();
    let node = edges
        .iter()
        .map(|e| &e["node"])
        .find(|n| n["recipient"] == json!(email.to_lowercase()) && n["template"] == "VERIFY_EMAIL")
        .expect("the failed verification message")
        .clone();
    assert!(
        node["lastError"].as_str().is_some_and(|e| !e.is_empty()),
        "{node}"
    );
    assert_eq!(node["subject"], "Confirm your email address for Podium");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("podium_mail_outbox{status=\"FAILED\"} 2"),
        "an operator can alert on failed mail: {metrics}"
    );

    let denied = app
        .gql(Some(&user.access), OUTBOX, json!({ "s": null }))
        .await;
    assert_eq!(denied.code(), "FORBIDDEN");
    let retry = "mutation($id: ID!) { retryEmail(id: $id) { id status } }";
    let denied = app
        .gql(Some(&user.access), retry, json!({ "id": node["id"] }))
        .await;
    assert_eq!(denied.code(), "FORBIDDEN");

    smtp.start().await;
    let retried = app
        .gql(Some(&admin.access), retry, json!({ "id": node["id"] }))
        .await
        .ok();
    assert_eq!(retried.data("retryEmail.status"), "QUEUED");
    smtp.mailbox()
        .wait_for(&email, "Confirm your email address")
        .await;
    eventually("SENT", || async {
        outbox_to(&app, &email)
            .await
            .iter()
            .any(|r| r.template == "VERIFY_EMAIL" && r.status == "SENT")
    })
    .await;
    let twice = app
        .gql(Some(&admin.access), retry, json!({ "id": node["id"] }))
        .await;
    assert_eq!(twice.code(), "CONFLICT", "a sent message is not sent again");
    assert_eq!(
        smtp.mailbox()
            .to(&email)
            .iter()
            .filter(|m| m.subject.contains("Confirm"))
            .count(),
        1
    );
    // The welcome message is still FAILED, untouched by the other's retry.
    assert!(
        outbox_to(&app, &email)
            .await
            .iter()
            .any(|r| r.template == "WELCOME" && r.status == "FAILED")
    );
}

#[tokio::test]
async fn without_a_portal_podiums_own_pages_complete_verification_and_reset() {
    let app = spawn_app().await;
    let (_, email) = app.register("Ned").await;
    let mailbox = Mailbox::at(&app.state.settings.mail.dir);
    let verification = mailbox.wait_for(&email, "Confirm your email address").await;
    let token = verification.token("/verify-email");
    let hostile = app
        .get("/verify-email?token=%22%3E%3Cscript%3Ealert(1)%3C/script%3E")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !hostile.contains("<script>") && hostile.contains("&quot;&gt;&lt;script&gt;"),
        "what the link carries is escaped: {hostile}"
    );
    let page = app.get(&format!("/verify-email?token={token}")).await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&format!("value=\"{token}\"")),
        "a form posting the token"
    );
    // A browser submitting one of the pages' forms.
    let submit = async |path: &str, fields: &[(&str, &str)]| {
        app.client
            .post(format!("{}{path}", app.address))
            .form(fields)
            .send()
            .await
            .unwrap()
    };
    let verified = |app: &TestApp| {
        let app_pool = app.state.pool.clone();
        let email = email.to_lowercase();
        async move {
            let mut conn = app_pool.get().await.unwrap();
            podium::users::model::find_by_email(&mut conn, &email)
                .await
                .unwrap()
                .unwrap()
                .email_verified_at
                .is_some()
        }
    };
    assert!(!verified(&app).await, "opening the link changes nothing");
    let done = submit("/verify-email", &[("token", &token)]).await;
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("Address confirmed"));
    assert!(verified(&app).await);
    let reused = submit("/verify-email", &[("token", &token)]).await;
    assert_eq!(reused.status(), 400);
    assert!(
        reused
            .text()
            .await
            .unwrap()
            .contains("This link is invalid")
    );

    // Asking for a reset from the page, then setting the password on it.
    let asked = submit("/reset-password", &[("email", &email)]).await;
    assert_eq!(asked.status(), 200);
    let token = mailbox
        .wait_for(&email, "Reset your")
        .await
        .token("/reset-password");
    let page = app
        .get(&format!("/reset-password?token={token}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("type=\"password\""));
    let weak = submit(
        "/reset-password",
        &[("token", &token), ("password", "short")],
    )
    .await;
    assert_eq!(weak.status(), 400);
    let weak = weak.text().await.unwrap();
    assert!(
        weak.contains("The new password") && weak.contains(&format!("value=\"{token}\"")),
        "{weak}"
    );
    let done = submit(
        "/reset-password",
        &[("token", &token), ("password", "BrandNew-456")],
    )
    .await;
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("Password changed"));
    app.login(&email, "BrandNew-456").await;
}

#[tokio::test]
async fn notification_switches_are_the_callers_own() {
    let app = spawn_app().await;
    let (user, _) = app.register("Uma").await;
    let read = "{ myNotificationPreferences { instanceAlerts renewalReminders } }";
    assert_eq!(
        app.gql(None, read, json!({})).await.code(),
        "UNAUTHENTICATED"
    );
    let defaults = app.gql(Some(&user.access), read, json!({})).await.ok();
    assert_eq!(
        defaults.0["data"]["myNotificationPreferences"],
        json!({ "instanceAlerts": true, "renewalReminders": true })
    );
    let update = "mutation($i: NotificationPreferencesInput!) { updateNotificationPreferences(input: $i) { instanceAlerts renewalReminders } }";
    let off = json!({ "i": { "renewalReminders": false } });
    assert_eq!(
        app.gql(None, update, off.clone()).await.code(),
        "UNAUTHENTICATED"
    );
    let changed = app.gql(Some(&user.access), update, off).await.ok();
    assert_eq!(
        changed.0["data"]["updateNotificationPreferences"],
        json!({ "instanceAlerts": true, "renewalReminders": false }),
        "an omitted switch stays as it was"
    );
    let (other, _) = app.register("Vic").await;
    let theirs = app.gql(Some(&other.access), read, json!({})).await.ok();
    assert_eq!(
        theirs.0["data"]["myNotificationPreferences"]["renewalReminders"], true,
        "one user's switch is not another's"
    );
}
