//! GraphQL subscriptions over WebSocket, both protocols, auth in `connection_init`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(app: &TestApp, protocol: &str) -> Ws {
    let url = format!("{}/graphql", app.address.replace("http://", "ws://"));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("websocket handshake");
    assert_eq!(resp.headers()["sec-websocket-protocol"], protocol);
    ws
}

pub async fn send(ws: &mut Ws, msg: Value) {
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON message that is not a keep-alive, within a deadline.
pub async fn recv(ws: &mut Ws) -> Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await.expect("stream open").expect("frame") {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] != "ka" && v["type"] != "ping" {
                        return v;
                    }
                }
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => {}
            }
        }
    })
    .await
    .expect("a message before the deadline")
}

#[tokio::test(flavor = "multi_thread")]
async fn graphql_transport_ws_authenticates_in_connection_init() {
    let app = spawn_app().await;
    let (s, email) = app.register("subscriber").await;
    let mut ws = connect(&app, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", s.access) } })).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { me { email } }" } })).await;
    let next = recv(&mut ws).await;
    assert_eq!(next["type"], "next", "{next}");
    assert_eq!(next["payload"]["data"]["me"]["email"], email);
    assert_eq!(recv(&mut ws).await["type"], "complete");
}

#[tokio::test(flavor = "multi_thread")]
async fn legacy_graphql_ws_and_anonymous_subscribers() {
    let app = spawn_app().await;
    let (s, email) = app.register("legacy").await;
    let mut ws = connect(&app, "graphql-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", s.access) } })).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    send(&mut ws, json!({ "id": "1", "type": "start", "payload": { "query": "subscription { me { email } }" } })).await;
    let data = recv(&mut ws).await;
    assert_eq!(data["type"], "data", "{data}");
    assert_eq!(data["payload"]["data"]["me"]["email"], email);

    // No token: the subscription is refused with UNAUTHENTICATED.
    let mut ws = connect(&app, "graphql-transport-ws").await;
    send(&mut ws, json!({ "type": "connection_init", "payload": {} })).await;
    assert_eq!(recv(&mut ws).await["type"], "connection_ack");
    send(&mut ws, json!({ "id": "1", "type": "subscribe", "payload": { "query": "subscription { me { email } }" } })).await;
    let refused = recv(&mut ws).await;
    assert!(refused.to_string().contains("UNAUTHENTICATED"), "{refused}");
}
