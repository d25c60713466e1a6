//! actix handlers: GraphQL over HTTP on `POST /graphql` and `GET /graphql?query=`
//! (parsing and response shape in `over_http`), GraphiQL on a bare `GET /graphql`,
//! subscriptions over WebSocket on `/graphql` (graphql-transport-ws and legacy graphql-ws).

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use async_graphql::ErrorExtensions;
use async_graphql::http::GraphiQLSource;
use async_graphql_actix_web::GraphQLSubscription;
use serde_json::json;

use super::{PodiumSchema, over_http, request_data};
use crate::auth::identity;
use crate::error::AppError;
use crate::state::{AppState, ClientInfo};

pub async fn graphql(
    state: web::Data<AppState>,
    schema: web::Data<PodiumSchema>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let client = client_info(&req, state.settings.trust_proxy);
    if let Err(wait) = state
        .limits
        .per_ip
        .hit(client.ip.as_deref().unwrap_or("unknown"))
    {
        return error_response(AppError::RateLimited {
            retry_after_secs: wait,
        });
    }
    let (request, media) =
        match over_http::read_request(&req, payload, state.settings.max_body_bytes).await {
            Ok(parsed) => parsed,
            Err(refusal) => return refusal,
        };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let identity = match identity::resolve(&state, authorization).await {
        Ok(identity) => identity,
        Err(e) => return error_response(e),
    };
    if let crate::auth::Identity::User(actor) = &identity
        && let Err(wait) = state.limits.per_user.hit(&actor.user_id.to_string())
    {
        return error_response(AppError::RateLimited {
            retry_after_secs: wait,
        });
    }
    let mut request = request;
    request.data = request_data(&state, identity, client);
    let response = schema.execute(request).await;

    over_http::respond(response, media)
}

/// GraphiQL, only where introspection (its docs and autocomplete) is on.
pub async fn graphiql(state: web::Data<AppState>) -> HttpResponse {
    if !state.settings.introspection {
        return HttpResponse::NotFound().finish();
    }
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(
            GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql")
                .finish(),
        )
}

/// Subscriptions: the identity comes from the `connection_init` payload
/// (`{"authorization": "Bearer <jwt>"}`), judged like an HTTP request's.
pub async fn graphql_ws(
    state: web::Data<AppState>,
    schema: web::Data<PodiumSchema>,
    req: HttpRequest,
    payload: web::Payload,
) -> actix_web::Result<HttpResponse> {
    let client = client_info(&req, state.settings.trust_proxy);
    if let Err(wait) = state
        .limits
        .per_ip
        .hit(client.ip.as_deref().unwrap_or("unknown"))
    {
        return Ok(error_response(AppError::RateLimited {
            retry_after_secs: wait,
        }));
    }
    let state = state.get_ref().clone();
    GraphQLSubscription::new(schema.get_ref().clone())
        .on_connection_init(move |payload: serde_json::Value| async move {
            let authorization = ["authorization", "Authorization"]
                .iter()
                .find_map(|k| payload.get(*k).and_then(|v| v.as_str()));
            let identity = identity::resolve(&state, authorization)
                .await
                .map_err(async_graphql::Error::from)?;
            Ok(request_data(&state, identity, client))
        })
        .start(&req, payload)
}

/// The caller's address: the socket peer, or with `PODIUM_TRUST_PROXY` the first
/// `X-Forwarded-For` entry set by the proxy in front.
pub fn client_info(req: &HttpRequest, trust_proxy: bool) -> ClientInfo {
    let forwarded = trust_proxy
        .then(|| {
            req.headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|ip| ip.trim().to_string())
        })
        .flatten();
    ClientInfo {
        ip: forwarded.or_else(|| req.peer_addr().map(|a| a.ip().to_string())),
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    }
}

/// An error outside GraphQL execution, in the GraphQL response shape.
pub fn error_response(e: AppError) -> HttpResponse {
    let gql = e.extend();
    let body = json!({ "errors": [ { "message": gql.message, "extensions": gql.extensions } ] });
    let mut builder = match &e {
        AppError::RateLimited { retry_after_secs } => {
            let mut b = HttpResponse::TooManyRequests();
            b.insert_header((
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after_secs.to_string())
                    .expect("digits are a valid header"),
            ));
            b
        }
        AppError::BadUserInput { .. } => HttpResponse::BadRequest(),
        AppError::Internal(_) => HttpResponse::InternalServerError(),
        _ => HttpResponse::Ok(),
    };
    builder.json(body)
}
