//! actix handlers: GraphQL over HTTP on `POST /graphql` and `GET /graphql?query=`
//! (parsing and response shape in `over_http`), GraphiQL on a bare `GET /graphql`
//! (WebSockets: `socket.rs`).

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use async_graphql::ErrorExtensions;
use async_graphql::http::GraphiQLSource;
use serde_json::json;

use super::caller::{self, client_info};
use super::{PodiumSchema, over_http, request_data};
use crate::auth::identity;
use crate::error::AppError;
use crate::state::AppState;

pub async fn graphql(
    state: web::Data<AppState>,
    schema: web::Data<PodiumSchema>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let client = client_info(&req, &state.settings.trusted_proxies);
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let credentials = identity::credentials(&state, authorization);
    // Limits first (per address, or per known node), then the caller's current state.
    let identity = match caller::admit(&state, &credentials, &client).await {
        Ok(identity) => identity,
        Err(e) => return error_response(e),
    };
    let (request, media) =
        match over_http::read_request(&req, payload, state.settings.max_body_bytes).await {
            Ok(parsed) => parsed,
            Err(refusal) => return refusal,
        };
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
