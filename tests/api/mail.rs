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
    let me = app
        .gql(
            Some(&session.access),
            "{ me { emailVerifiedAt } }",
            json!({}),
        )
        .await
        .ok();
    assert!(me.data("me.emailVerifiedAt").is_null());
    app.gql(
        None,
        "mutation($t: String!) { verifyEmail(token: $t) }",
        json!({ "t": token }),
    )
    .await
    .ok();
    let me = app
        .gql(
            Some(&session.access),
            "{ me { emailVerifiedAt } }",
            json!({}),
        )
        .await
        .ok();
    assert!(me.data("me.emailVerifiedAt").is_string(), "verified now");
    let again = app
        .gql(
            None,
            "mutation($t: String!) { verifyEmail(token: $t) }",
            json!({ "t": token }),
        )
        .await;
    assert_eq!(again.code(), "BAD_USER_INPUT", "single use");
}
