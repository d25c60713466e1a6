//! Operations over a WebSocket are judged like HTTP ones, by the caller's current state,
//! and a socket whose caller loses access is closed.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;
use crate::subscriptions::{Ws, connect, send};

/// What the server sent next: a JSON message, or the close frame's code.
enum Next {
    Json(Value),
    Closed(u16),
}

async fn next(ws: &mut Ws) -> Next {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return Next::Closed(0),
                Some(Ok(Message::Close(frame))) => {
                    return Next::Closed(frame.map_or(0, |f| u16::from(f.code)));
                }
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] != "ka" && v["type"] != "ping" && v["type"] != "pong" {
                        return Next::Json(v);
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("a message or a close before the deadline")
}

async fn open_socket(app: &TestApp, token: &str) -> Ws {
    let mut ws = connect(app, "graphql-transport-ws").await;
    send(
        &mut ws,
        json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {token}") } }),
    )
    .await;
    match next(&mut ws).await {
        Next::Json(v) => assert_eq!(v["type"], "connection_ack", "{v}"),
        Next::Closed(code) => panic!("closed with {code} instead of an ack"),
    }
    ws
}

/// Waits for the close frame, skipping whatever else comes first.
async fn closed_with(ws: &mut Ws) -> u16 {
    loop {
        if let Next::Closed(code) = next(ws).await {
            return code;
        }
    }
}

/// Sends `query` `n` times on the socket; the error code of each answer ("OK" for none).
async fn operation_codes(ws: &mut Ws, query: &str, n: usize) -> Vec<String> {
    let mut codes = Vec::new();
    for id in 0..n {
        send(
            ws,
            json!({ "id": id.to_string(), "type": "subscribe", "payload": { "query": query } }),
        )
        .await;
        loop {
            match next(ws).await {
                Next::Json(v) if v["type"] == "next" => {
                    codes.push(
                        v["payload"]["errors"][0]["extensions"]["code"]
                            .as_str()
                            .unwrap_or("OK")
                            .to_string(),
                    );
                    break;
                }
                Next::Json(_) => {}
                Next::Closed(code) => panic!("closed with {code}"),
            }
        }
    }
    codes
}

async fn create_admin(app: &TestApp, admin: &Session) -> (Session, String) {
    let email = format!("second-admin-{}@example.com", uuid::Uuid::new_v4().simple());
    app.gql(
        Some(&admin.access),
        "mutation($e: String!, $p: String!) { createUser(input: {name: \"Second\", email: $e, password: $p, role: ADMINISTRATOR}) { id } }",
        json!({ "e": email, "p": PASSWORD }),
    )
    .await
    .ok();
    (app.login(&email, PASSWORD).await, email)
}

async fn user_count(app: &TestApp, admin: &Session, email: &str) -> i64 {
    app.gql(
        Some(&admin.access),
        "query($s: String!) { users(search: $s) { totalCount } }",
        json!({ "s": email }),
    )
    .await
    .ok()
    .data("users.totalCount")
    .as_i64()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_of_a_demoted_and_deactivated_administrator_creates_no_administrator() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (second, _) = create_admin(&app, &admin).await;
    let mut ws = open_socket(&app, &second.access).await;

    // The socket works while its user is an administrator.
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ userStats { total } }" } })).await;
    match next(&mut ws).await {
        Next::Json(v) => assert!(
            v["payload"]["data"]["userStats"]["total"].is_number(),
            "{v}"
        ),
        Next::Closed(code) => panic!("closed early with {code}"),
    }

    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { updateUser(id: $id, input: {role: USER, isActive: false}) { role isActive } }",
        json!({ "id": second.user_id }),
    )
    .await
    .ok();

    let rogue = format!("rogue-{}@example.com", uuid::Uuid::new_v4().simple());
    send(&mut ws, json!({ "id": "2", "type": "subscribe", "payload": {
        "query": "mutation($e: String!, $p: String!) { createUser(input: {name: \"Rogue\", email: $e, password: $p, role: ADMINISTRATOR}) { id } }",
        "variables": { "e": rogue, "p": PASSWORD } } })).await;
    loop {
        match next(&mut ws).await {
            Next::Json(v) if v["type"] == "complete" => continue,
            Next::Json(v) => {
                assert_eq!(v["id"], "2", "{v}");
                assert!(v["payload"]["data"].is_null(), "the mutation ran: {v}");
                let code = &v["payload"]["errors"][0]["extensions"]["code"];
                assert!(code == "UNAUTHENTICATED" || code == "FORBIDDEN", "{v}");
                break;
            }
            Next::Closed(code) => {
                assert!(code == 4401 || code == 4403, "closed with {code}");
                break;
            }
        }
    }
    assert_eq!(user_count(&app, &admin, &rogue).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_of_a_deactivated_user_is_closed_and_its_subscription_ends() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (second, _) = create_admin(&app, &admin).await;
    let mut ws = open_socket(&app, &second.access).await;
    let listeners = app.state.events.subscribers();
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { workerNodeStatusChanged { status } }" } })).await;
    // The subscription is running before access is lost.
    eventually("the subscription to start", || async {
        app.state.events.subscribers() > listeners
    })
    .await;

    app.gql(
        Some(&admin.access),
        "mutation($id: ID!) { updateUser(id: $id, input: {isActive: false}) { isActive } }",
        json!({ "id": second.user_id }),
    )
    .await
    .ok();
    assert_eq!(closed_with(&mut ws).await, 4403);
    // Its subscription ended with the socket.
    eventually("the subscription to end with its socket", || async {
        app.state.events.subscribers() == listeners
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_of_a_signed_out_session_is_closed_and_its_operations_refused() {
    let app = spawn_app().await;
    let (user, _) = app.register("leaver").await;
    let mut ws = open_socket(&app, &user.access).await;
    app.gql(
        None,
        "mutation($t: String!) { logout(refreshToken: $t) }",
        json!({ "t": user.refresh }),
    )
    .await
    .ok();
    // The very next operation is refused, whether or not the watcher closed the socket yet.
    send(
        &mut ws,
        json!({ "id": "1", "type": "subscribe", "payload": { "query": "{ me { email } }" } }),
    )
    .await;
    match next(&mut ws).await {
        Next::Json(v) => {
            assert_eq!(
                v["payload"]["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
                "{v}"
            );
            assert_eq!(closed_with(&mut ws).await, 4403);
        }
        Next::Closed(code) => assert_eq!(code, 4403),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_with_an_expired_token_is_closed_with_4401() {
    let app = spawn_app_with(&[("PODIUM_ACCESS_TOKEN_TTL_SECS", "3")]).await;
    let (user, _) = app.register("brief").await;
    let mut ws = open_socket(&app, &user.access).await;
    assert_eq!(closed_with(&mut ws).await, 4401);
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_refuses_an_invalid_token_at_connection_init_with_4403() {
    let app = spawn_app().await;
    let mut ws = connect(&app, "graphql-transport-ws").await;
    send(
        &mut ws,
        json!({ "type": "connection_init", "payload": { "authorization": "Bearer not-a-token" } }),
    )
    .await;
    assert_eq!(closed_with(&mut ws).await, 4403);
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_operations_count_against_the_per_user_limit() {
    let app = spawn_app_with(&[("PODIUM_RATE_LIMIT_PER_USER", "3")]).await;
    let (user, _) = app.register("chatty").await;
    let mut ws = open_socket(&app, &user.access).await;
    let codes = operation_codes(&mut ws, "{ me { email } }", 5).await;
    assert_eq!(
        codes,
        ["OK", "OK", "OK", "RATE_LIMITED", "RATE_LIMITED"],
        "socket operations share the user's budget"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_of_a_demoted_administrator_is_refused_admin_operations_at_once() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (second, _) = create_admin(&app, &admin).await;
    let mut ws = open_socket(&app, &second.access).await;
    // Demoted only: the account stays active and the socket open.
    app.demote(&admin, &second.user_id).await;
    let rogue = format!("rogue-{}@example.com", uuid::Uuid::new_v4().simple());
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": {
        "query": "mutation($e: String!, $p: String!) { createUser(input: {name: \"Rogue\", email: $e, password: $p, role: ADMINISTRATOR}) { id } }",
        "variables": { "e": rogue, "p": PASSWORD } } })).await;
    match next(&mut ws).await {
        Next::Json(v) => {
            assert_eq!(
                v["payload"]["errors"][0]["extensions"]["code"], "FORBIDDEN",
                "{v}"
            );
            assert!(v["payload"]["data"].is_null(), "{v}");
        }
        Next::Closed(code) => panic!("a demoted user keeps the socket; closed with {code}"),
    }
    // What a USER may do still works on the same socket.
    send(
        &mut ws,
        json!({ "id": "2", "type": "subscribe", "payload": { "query": "{ me { role } }" } }),
    )
    .await;
    loop {
        match next(&mut ws).await {
            Next::Json(v) if v["id"] == "2" && v["type"] == "next" => {
                assert_eq!(v["payload"]["data"]["me"]["role"], "USER", "{v}");
                break;
            }
            Next::Json(_) => {}
            Next::Closed(code) => panic!("closed with {code}"),
        }
    }
    assert_eq!(user_count(&app, &admin, &rogue).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_operations_count_against_the_per_address_limit() {
    let app = spawn_app_with(&[("PODIUM_RATE_LIMIT_PER_IP", "4")]).await;
    // The upgrade request itself is one of the four.
    let mut ws = connect(&app, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": {} })).await;
    match next(&mut ws).await {
        Next::Json(v) => assert_eq!(v["type"], "connection_ack", "{v}"),
        Next::Closed(code) => panic!("closed with {code}"),
    }
    let codes = operation_codes(&mut ws, "{ __typename }", 5).await;
    assert_eq!(codes, ["OK", "OK", "OK", "RATE_LIMITED", "RATE_LIMITED"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn open_sockets_are_capped_per_address() {
    let app = spawn_app_with(&[("PODIUM_WS_MAX_PER_ADDRESS", "2")]).await;
    let url = format!("{}/graphql", app.address.replace("http://", "ws://"));
    let handshake = || {
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        tokio_tungstenite::connect_async(req)
    };
    let first = connect(&app, "graphql-transport-ws").await;
    let _second = connect(&app, "graphql-transport-ws").await;
    match handshake().await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!(
            "a third socket from one address was accepted: {:?}",
            other.map(|_| ())
        ),
    }
    // Closing one makes room.
    drop(first);
    eventually("a socket slot to free up", || async {
        handshake().await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_of_a_demoted_administrator_reads_and_retries_no_mail() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let (second, _) = create_admin(&app, &admin).await;
    let mut ws = open_socket(&app, &second.access).await;
    let outbox = "{ emailOutbox(first: 5) { totalCount edges { node { recipient subject } } } }";
    let retry = format!(
        "mutation {{ retryEmail(id: \"{}\") {{ id }} }}",
        uuid::Uuid::new_v4()
    );
    assert_eq!(operation_codes(&mut ws, outbox, 1).await, ["OK"]);
    assert_eq!(operation_codes(&mut ws, &retry, 1).await, ["NOT_FOUND"]);
    app.demote(&admin, &second.user_id).await;
    assert_eq!(operation_codes(&mut ws, outbox, 1).await, ["FORBIDDEN"]);
    assert_eq!(operation_codes(&mut ws, &retry, 1).await, ["FORBIDDEN"]);
}
