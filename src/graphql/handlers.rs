//! actix handlers: `POST /graphql` and GraphiQL on `GET /graphql` (WebSockets: `socket.rs`).

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use async_graphql::ErrorExtensions;
use async_graphql::http::GraphiQLSource;
use serde_json::json;

use super::caller::{self, client_info};
use super::{PodiumSchema, request_data};
use crate::auth::identity;
use crate::error::AppError;
use crate::state::AppState;

pub async fn graphql(
    state: web::Data<AppState>,
    schema: web::Data<PodiumSchema>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let client = client_info(&req, &state.settings.trusted_proxies);
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let credentials = identity::credentials(&state, authorization);
    let identity = match caller::admit(&state, &credentials, &client).await {
        Ok(identity) => identity,
        Err(e) => return error_response(e),
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(AppError::BadUserInput {
                message: format!("the body is not a GraphQL request: {e}"),
                fields: Default::default(),
            });
        }
    };
    let mut request = request;
    request.data = request_data(&state, identity, client);
    let response = schema.execute(request).await;

    let retry_after = response.errors.iter().find_map(|e| {
        let ext = e.extensions.as_ref()?;
        match (ext.get("code"), ext.get("retryAfter")) {
            (Some(async_graphql::Value::String(code)), Some(async_graphql::Value::Number(n)))
                if code == "RATE_LIMITED" =>
            {
                n.as_u64()
            }
            _ => None,
        }
    });
    let mut builder = HttpResponse::Ok();
    builder.insert_header((header::CACHE_CONTROL, "no-store"));
    for (name, value) in response.http_headers.iter() {
        if let Ok(value) = value.to_str() {
            builder.insert_header((name.as_str(), value));
        }
    }
    if let Some(secs) = retry_after {
        builder.insert_header((header::RETRY_AFTER, secs.to_string()));
    }
    builder.json(&response)
}

pub async fn graphiql() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(
            GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql")
                .finish(),
        )
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
