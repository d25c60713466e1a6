//! GraphQL over WebSocket on `/graphql` (graphql-transport-ws and legacy graphql-ws).
//!
//! The socket remembers only the credentials from `connection_init`; every operation on it
//! is admitted like an HTTP request (`caller::admit`: the caller's current state, the same
//! rate limits). A watcher re-judges the caller every few seconds and closes the socket
//! (4403 when access was revoked, 4401 when the token expired), which ends its subscriptions.

use std::any::TypeId;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason};
use async_graphql::http::{ALL_WEBSOCKET_PROTOCOLS, WebSocket, WebSocketProtocols, WsMessage};
use async_graphql::{Data, ErrorExtensions, Executor, Pos, Request, Response};
use futures_util::stream::{self, BoxStream, StreamExt};

use super::caller::{self, client_info};
use super::handlers::error_response;
use super::{PodiumSchema, request_data};
use crate::auth::Identity;
use crate::auth::identity::{self, Credentials};
use crate::error::AppError;
use crate::ratelimit::address_key;
use crate::state::{AppState, ClientInfo};

/// How often an open socket's caller is judged again.
const RECHECK_EVERY: Duration = Duration::from_secs(2);
/// A socket silent for this long (no frame, not even a pong to our pings) is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
const PING_EVERY: Duration = Duration::from_secs(10);

pub async fn graphql_ws(
    state: web::Data<AppState>,
    schema: web::Data<PodiumSchema>,
    req: HttpRequest,
    payload: web::Payload,
) -> actix_web::Result<HttpResponse> {
    let client = client_info(&req, &state.settings.trusted_proxies);
    let address = address_key(client.ip);
    if let Err(wait) = state.limits.per_ip.hit(&address) {
        return Ok(error_response(AppError::rate_limited(wait)));
    }
    // Each open socket holds memory and is re-judged every few seconds: bounded per address.
    let Some(opened) = state
        .limits
        .open_sockets
        .open(address, state.settings.ws_max_per_address)
    else {
        return Ok(error_response(AppError::rate_limited(
            RECHECK_EVERY.as_secs(),
        )));
    };
    let protocol = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
        .ok_or_else(|| {
            actix_web::error::ErrorBadRequest(
                "Sec-WebSocket-Protocol must offer graphql-transport-ws or graphql-ws",
            )
        })?;
    let (response, session, messages) =
        actix_ws::handle_with_protocols(&req, payload, &ALL_WEBSOCKET_PROTOCOLS)?;
    let socket = Socket {
        state: state.get_ref().clone(),
        schema: schema.get_ref().clone(),
        client,
        credentials: Arc::default(),
    };
    actix_web::rt::spawn(async move {
        socket.serve(protocol, session, messages).await;
        drop(opened);
    });
    Ok(response)
}

/// One connection: what every operation on it is executed with.
#[derive(Clone)]
struct Socket {
    state: AppState,
    schema: PodiumSchema,
    client: ClientInfo,
    /// Set by `connection_init`; read by the watcher.
    credentials: Arc<OnceLock<Credentials>>,
}

impl Socket {
    async fn serve(
        self,
        protocol: WebSocketProtocols,
        mut session: actix_ws::Session,
        messages: actix_ws::MessageStream,
    ) {
        let last_seen = Arc::new(Mutex::new(Instant::now()));
        let input = {
            let session = session.clone();
            let last_seen = last_seen.clone();
            messages
                .aggregate_continuations()
                .max_continuation_size(self.state.settings.max_body_bytes)
                // A close frame or a protocol error ends the input, and with it the socket.
                .take_while(|m| {
                    std::future::ready(matches!(
                        m,
                        Ok(AggregatedMessage::Text(_)
                            | AggregatedMessage::Binary(_)
                            | AggregatedMessage::Ping(_)
                            | AggregatedMessage::Pong(_))
                    ))
                })
                .filter_map(move |m| {
                    let mut session = session.clone();
                    *last_seen.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    async move {
                        match m {
                            Ok(AggregatedMessage::Text(text)) => Some(text.into_bytes()),
                            Ok(AggregatedMessage::Binary(bytes)) => Some(bytes),
                            Ok(AggregatedMessage::Ping(bytes)) => {
                                let _ = session.pong(&bytes).await;
                                None
                            }
                            _ => None,
                        }
                    }
                })
        };
        let init = {
            let socket = self.clone();
            move |payload: serde_json::Value| socket.connection_init(payload)
        };
        let mut protocol_stream =
            std::pin::pin!(WebSocket::new(self.clone(), input, protocol).on_connection_init(init));
        let mut recheck = tokio::time::interval(RECHECK_EVERY);
        let mut ping = tokio::time::interval(PING_EVERY);
        let close = loop {
            tokio::select! {
                out = protocol_stream.next() => match out {
                    Some(WsMessage::Text(text)) => {
                        if session.text(text).await.is_err() {
                            return;
                        }
                    }
                    Some(WsMessage::Close(code, reason)) => break Some(self.close_reason(code, reason)),
                    None => break None,
                },
                _ = recheck.tick() => {
                    if let Some(reason) = self.lost_access().await {
                        break Some(reason);
                    }
                }
                _ = ping.tick() => {
                    let silent = last_seen.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
                    if silent > CLIENT_TIMEOUT || session.ping(b"").await.is_err() {
                        break None;
                    }
                }
            }
        };
        // Dropping the protocol stream ends every subscription of this socket.
        let _ = session.close(close).await;
    }

    /// Keeps the credentials the client presents; a token refused now refuses the socket.
    async fn connection_init(self, payload: serde_json::Value) -> async_graphql::Result<Data> {
        let authorization = ["authorization", "Authorization"]
            .iter()
            .find_map(|k| payload.get(*k).and_then(|v| v.as_str()));
        let credentials = identity::credentials(&self.state, authorization);
        let identity = identity::judge(&self.state, &credentials).await?;
        let credentials = match identity {
            Identity::Invalid => Credentials::Invalid,
            _ => credentials,
        };
        let _ = self.credentials.set(credentials.clone());
        if matches!(credentials, Credentials::Invalid) {
            return Err(AppError::Unauthenticated(
                "the access token is invalid, expired or revoked".into(),
            )
            .into());
        }
        let mut data = Data::default();
        data.insert(credentials);
        Ok(data)
    }

    /// Why the socket must close now, if it must: the caller's token expired or its
    /// session or account lost access. A demoted user keeps the socket (what a USER may do
    /// still works): each operation is judged by the current role, and every admin-only
    /// subscription must re-check the role before each event, as `node_for_subscriber` does.
    async fn lost_access(&self) -> Option<CloseReason> {
        let Some(Credentials::User {
            user_id,
            session_id,
            expires_at,
        }) = self.credentials.get()
        else {
            return None;
        };
        if *expires_at <= chrono::Utc::now().timestamp() {
            return Some(reason(4401, "the access token expired"));
        }
        match identity::current(&self.state, *user_id, *session_id).await {
            Ok(Some(_)) => None,
            Ok(None) => Some(reason(4403, "access revoked")),
            // The database is unreachable: keep the socket; operations still fail closed.
            Err(_) => None,
        }
    }

    /// A refused `connection_init` closes with 4403 (graphql-transport-ws), not 1002.
    fn close_reason(&self, code: u16, description: String) -> CloseReason {
        match self.credentials.get() {
            Some(Credentials::Invalid) => reason(4403, "Forbidden"),
            _ => CloseReason {
                code: CloseCode::from(code),
                description: Some(description),
            },
        }
    }

    /// Admits one operation, then runs it with this request's identity.
    async fn admitted(
        self,
        mut request: Request,
        session: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        let credentials = session
            .as_ref()
            .and_then(|data| data.get(&TypeId::of::<Credentials>()))
            .and_then(|c| c.downcast_ref::<Credentials>())
            .cloned()
            .unwrap_or(Credentials::None);
        match caller::admit(&self.state, &credentials, &self.client).await {
            Ok(identity) => {
                request.data = request_data(&self.state, identity, self.client.clone());
                self.schema
                    .execute_stream_with_session_data(request, session.unwrap_or_default())
            }
            Err(e) => stream::once(std::future::ready(Response::from_errors(vec![
                e.extend().into_server_error(Pos::default()),
            ])))
            .boxed(),
        }
    }
}

fn reason(code: u16, description: &str) -> CloseReason {
    CloseReason {
        code: CloseCode::from(code),
        description: Some(description.into()),
    }
}

impl Executor for Socket {
    async fn execute(&self, request: Request) -> Response {
        self.clone()
            .admitted(request, None)
            .await
            .next()
            .await
            .unwrap_or_default()
    }

    fn execute_stream(
        &self,
        request: Request,
        session_data: Option<Arc<Data>>,
    ) -> BoxStream<'static, Response> {
        stream::once(self.clone().admitted(request, session_data))
            .flatten()
            .boxed()
    }
}
