//! Registration, login, token rotation and revocation, token validation.

use base64::Engine;
use serde_json::json;

use crate::helpers::*;

const REGISTER: &str = "mutation($n: String!, $e: String!, $p: String!) { register(input: {name: $n, email: $e, password: $p}) { accessToken user { email role } } }";
const REFRESH: &str =
    "mutation($t: String!) { refreshToken(token: $t) { accessToken refreshToken } }";

#[tokio::test(flavor = "multi_thread")]
async fn register_login_and_me() {
    let app = spawn_app().await;
    let r = app
        .gql(
            None,
            REGISTER,
            json!({ "n": "Ada", "e": "  Ada@Example.COM ", "p": "Password123" }),
        )
        .await
        .ok();
    assert_eq!(r.str("register.user.email"), "ada@example.com");
    assert_eq!(r.str("register.user.role"), "USER");

    let session = app.login("ADA@example.com", "Password123").await;
    let me = app.me(&session.access).await.ok();
    assert_eq!(me.str("me.email"), "ada@example.com");
    assert_eq!(me.str("me.id"), session.user_id);
    let r = app
        .gql(Some(&session.access), "{ me { lastLoginAt } }", json!({}))
        .await
        .ok();
    assert!(
        r.data("me.lastLoginAt").is_string(),
        "login records lastLoginAt"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_errors_name_their_fields_and_change_nothing() {
    let app = spawn_app().await;
    let r = app
        .gql(
            None,
            REGISTER,
            json!({ "n": "", "e": "not-an-email", "p": "short" }),
        )
        .await;
    assert_eq!(r.code(), "BAD_USER_INPUT");
    let fields = &r.error()["extensions"]["fields"];
    assert!(
        fields["email"][0].as_str().unwrap().contains("valid email"),
        "{fields}"
    );
    assert!(fields["name"].is_array(), "{fields}");
    assert!(fields["password"].is_array(), "{fields}");

    // A password with no digit is refused too.
    let r = app
        .gql(
            None,
            REGISTER,
            json!({ "n": "Bob", "e": "bob@example.com", "p": "onlyletters" }),
        )
        .await;
    assert_eq!(r.code(), "BAD_USER_INPUT");
    assert!(r.error()["extensions"]["fields"]["password"].is_array());
    assert_eq!(
        app.try_login("bob@example.com", "onlyletters").await.code(),
        "UNAUTHENTICATED"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_email_is_a_conflict_case_insensitively() {
    let app = spawn_app().await;
    app.gql(
        None,
        REGISTER,
        json!({ "n": "A", "e": "dup@example.com", "p": "Password123" }),
    )
    .await
    .ok();
    let r = app
        .gql(
            None,
            REGISTER,
            json!({ "n": "B", "e": "DUP@example.com", "p": "Password123" }),
        )
        .await;
    assert_eq!(r.code(), "CONFLICT");
}

#[tokio::test(flavor = "multi_thread")]
async fn simultaneous_registrations_with_one_email_exactly_one_wins() {
    let app = spawn_app().await;
    let vars = json!({ "n": "Racer", "e": "race@example.com", "p": "Password123" });
    let (a, b) = tokio::join!(
        app.gql(None, REGISTER, vars.clone()),
        app.gql(None, REGISTER, vars.clone())
    );
    let outcomes = [&a, &b].map(|r| r.0.get("errors").map(|_| r.code().to_string()));
    assert_eq!(
        outcomes.iter().filter(|o| o.is_none()).count(),
        1,
        "exactly one succeeds: {} / {}",
        a.0,
        b.0
    );
    assert!(
        outcomes.contains(&Some("CONFLICT".to_string())),
        "{} / {}",
        a.0,
        b.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_unknown_email_look_the_same() {
    let app = spawn_app().await;
    app.seed().await;
    let wrong = app.try_login(USER_EMAIL, "Wrong123456").await;
    let unknown = app.try_login("nobody@example.com", "Wrong123456").await;
    assert_eq!(wrong.code(), "UNAUTHENTICATED");
    assert_eq!(unknown.code(), "UNAUTHENTICATED");
    assert_eq!(wrong.error()["message"], unknown.error()["message"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_rotates_and_reuse_revokes_the_whole_family() {
    let app = spawn_app().await;
    let (first, email) = app.register("rotator").await;
    // A second session of the same user, which the reuse must leave alone.
    let bystander = app.login(&email, PASSWORD).await;

    let r1 = app
        .gql(None, REFRESH, json!({ "t": first.refresh }))
        .await
        .ok();
    let second_refresh = r1.str("refreshToken.refreshToken");
    let second_access = r1.str("refreshToken.accessToken");
    assert_ne!(second_refresh, first.refresh);
    let r2 = app
        .gql(None, REFRESH, json!({ "t": second_refresh }))
        .await
        .ok();
    let newest_refresh = r2.str("refreshToken.refreshToken");
    let newest_access = r2.str("refreshToken.accessToken");
    app.me(&newest_access).await.ok();

    // The first token was rotated already: presenting it again is reuse.
    let reuse = app.gql(None, REFRESH, json!({ "t": first.refresh })).await;
    assert_eq!(reuse.code(), "UNAUTHENTICATED");
    // The newest token of that family stops working too, and so do its access tokens.
    let newest = app.gql(None, REFRESH, json!({ "t": newest_refresh })).await;
    assert_eq!(newest.code(), "UNAUTHENTICATED");
    assert_eq!(app.me(&newest_access).await.code(), "UNAUTHENTICATED");
    assert_eq!(app.me(&second_access).await.code(), "UNAUTHENTICATED");

    // The user's other session is untouched: its access token works and its refresh
    // token still rotates.
    app.me(&bystander.access).await.ok();
    app.gql(None, REFRESH, json!({ "t": bystander.refresh }))
        .await
        .ok();
    // An unknown token is refused.
    let unknown = app.gql(None, REFRESH, json!({ "t": "pdr_unknown" })).await;
    assert_eq!(unknown.code(), "UNAUTHENTICATED");
}

#[tokio::test(flavor = "multi_thread")]
async fn logout_revokes_the_session_and_logout_all_every_session() {
    let app = spawn_app().await;
    let (a, email) = app.register("leaver").await;
    let b = app.login(&email, PASSWORD).await;
    let c = app.login(&email, PASSWORD).await;

    let r = app
        .gql(
            None,
            "mutation($t: String!) { logout(refreshToken: $t) }",
            json!({ "t": a.refresh }),
        )
        .await
        .ok();
    assert_eq!(r.data("logout"), &json!(true));
    assert_eq!(
        app.gql(None, REFRESH, json!({ "t": a.refresh }))
            .await
            .code(),
        "UNAUTHENTICATED"
    );
    assert_eq!(app.me(&a.access).await.code(), "UNAUTHENTICATED");
    app.me(&b.access).await.ok();

    let r = app
        .gql(Some(&b.access), "mutation { logoutAll }", json!({}))
        .await
        .ok();
    assert_eq!(r.data("logoutAll"), &json!(2));
    assert_eq!(app.me(&c.access).await.code(), "UNAUTHENTICATED");
    assert_eq!(
        app.gql(None, REFRESH, json!({ "t": c.refresh }))
            .await
            .code(),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        app.gql(None, "mutation { logoutAll }", json!({}))
            .await
            .code(),
        "UNAUTHENTICATED"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn change_password_signs_out_other_sessions() {
    let app = spawn_app().await;
    let (current, email) = app.register("changer").await;
    let other = app.login(&email, PASSWORD).await;
    let q = "mutation($c: String!, $n: String!) { changePassword(input: {currentPassword: $c, newPassword: $n}) }";

    let wrong = app
        .gql(
            Some(&current.access),
            q,
            json!({ "c": "Nope1234567", "n": "NewPassword456" }),
        )
        .await;
    assert_eq!(wrong.code(), "BAD_USER_INPUT");
    assert!(wrong.error()["extensions"]["fields"]["currentPassword"].is_array());

    let weak = app
        .gql(
            Some(&current.access),
            q,
            json!({ "c": PASSWORD, "n": "weak" }),
        )
        .await;
    assert_eq!(weak.code(), "BAD_USER_INPUT");
    assert!(weak.error()["extensions"]["fields"]["newPassword"].is_array());

    app.gql(
        Some(&current.access),
        q,
        json!({ "c": PASSWORD, "n": "NewPassword456" }),
    )
    .await
    .ok();
    app.me(&current.access).await.ok();
    assert_eq!(app.me(&other.access).await.code(), "UNAUTHENTICATED");
    assert_eq!(
        app.try_login(&email, PASSWORD).await.code(),
        "UNAUTHENTICATED"
    );
    app.login(&email, "NewPassword456").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn update_profile_validates_the_name() {
    let app = spawn_app().await;
    let (s, _) = app.register("profiled").await;
    let q = "mutation($n: String!) { updateProfile(input: {name: $n}) { name } }";
    let r = app
        .gql(Some(&s.access), q, json!({ "n": "  New Name " }))
        .await
        .ok();
    assert_eq!(r.str("updateProfile.name"), "New Name");
    let r = app
        .gql(Some(&s.access), q, json!({ "n": "x".repeat(101) }))
        .await;
    assert_eq!(r.code(), "BAD_USER_INPUT");
    assert!(r.error()["extensions"]["fields"]["name"].is_array());
    assert_eq!(
        app.gql(None, q, json!({ "n": "Anon" })).await.code(),
        "UNAUTHENTICATED"
    );
}

fn forge(claims: serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_tampered_and_unsigned_tokens_are_refused() {
    let app = spawn_app().await;
    let (s, _) = app.register("tokens").await;
    let claims = app.state.jwt.verify(&s.access).unwrap();
    let now = chrono::Utc::now().timestamp();
    let base = json!({
        "sub": claims.sub, "role": "ADMINISTRATOR", "sid": claims.sid,
        "iat": now - 3600, "exp": now - 1800, "jti": uuid::Uuid::new_v4(), "iss": "podium"
    });

    // Expired, though correctly signed.
    assert_eq!(
        app.me(&forge(base.clone(), JWT_SECRET)).await.code(),
        "UNAUTHENTICATED"
    );

    // Signed with another secret.
    let mut fresh = base.clone();
    fresh["exp"] = json!(now + 600);
    assert_eq!(
        app.me(&forge(fresh.clone(), "another-secret-0123456789abcdef0123"))
            .await
            .code(),
        "UNAUTHENTICATED"
    );
    // The same claims with our secret work (so the two refusals above are about expiry and key).
    app.me(&forge(fresh.clone(), JWT_SECRET)).await.ok();
    // Its role claim says ADMINISTRATOR, but the server reads the user's current role.
    let claimed_admin = forge(fresh.clone(), JWT_SECRET);
    assert_eq!(
        app.gql(Some(&claimed_admin), "{ userStats { total } }", json!({}))
            .await
            .code(),
        "FORBIDDEN"
    );

    // Tampered payload: the signature no longer matches.
    let mut parts: Vec<String> = s.access.split('.').map(str::to_string).collect();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    parts[1] = b64.encode(serde_json::to_vec(&fresh).unwrap());
    assert_eq!(app.me(&parts.join(".")).await.code(), "UNAUTHENTICATED");

    // alg: none.
    let none = format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        parts[1]
    );
    assert_eq!(app.me(&none).await.code(), "UNAUTHENTICATED");

    // Garbage as a bearer token.
    assert_eq!(app.me("garbage").await.code(), "UNAUTHENTICATED");
    // A valid token under another scheme is not accepted as a bearer token.
    for scheme in ["Basic", "Token", "Bearer:"] {
        let r = app
            .client
            .post(format!("{}/graphql", app.address))
            .header("authorization", format!("{scheme} {}", s.access))
            .json(&json!({ "query": "{ me { id } }" }))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
            "{scheme}: {body}"
        );
    }
    // The same token as a bearer token works, so the refusals above are the scheme's.
    app.me(&s.access).await.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deactivated_user_is_refused_at_once_and_cannot_log_in() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (user, email) = app.register("soon-inactive").await;
    app.me(&user.access).await.ok();

    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { updateUser(id: $id, input: {isActive: false}) { isActive } }",
        json!({ "id": user.user_id }),
    )
    .await
    .ok();
    // The access token has not expired, but the user is now inactive.
    assert_eq!(app.me(&user.access).await.code(), "UNAUTHENTICATED");
    assert_eq!(
        app.gql(None, REFRESH, json!({ "t": user.refresh }))
            .await
            .code(),
        "UNAUTHENTICATED"
    );
    assert_eq!(app.try_login(&email, PASSWORD).await.code(), "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demoted_administrator_loses_admin_rights_at_once() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (other, _) = app.register("second-admin").await;
    let promote =
        "mutation($id: ID!, $r: Role!) { updateUser(id: $id, input: {role: $r}) { role } }";
    app.gql(
        Some(&admin.access),
        promote,
        json!({ "id": other.user_id, "r": "ADMINISTRATOR" }),
    )
    .await
    .ok();
    // The token was issued while a USER, but the current role counts.
    app.gql(Some(&other.access), "{ userStats { total } }", json!({}))
        .await
        .ok();
    app.gql(
        Some(&admin.access),
        promote,
        json!({ "id": other.user_id, "r": "USER" }),
    )
    .await
    .ok();
    assert_eq!(
        app.gql(Some(&other.access), "{ userStats { total } }", json!({}))
            .await
            .code(),
        "FORBIDDEN"
    );
}
