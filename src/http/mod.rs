//! Routes outside GraphQL: liveness and readiness probes, and response hardening.

use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::db::migrate;
use crate::state::AppState;

/// The process is up.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// The database is reachable and has every migration this build knows.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let ready = async {
        let mut conn = state.pool.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        migrate::is_current(&mut conn, &state.latest_migration).await
    }
    .await;
    match ready {
        Ok(true) => HttpResponse::Ok().json(json!({ "status": "ready" })),
        Ok(false) => {
            HttpResponse::ServiceUnavailable().json(json!({ "status": "migrations pending" }))
        }
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            HttpResponse::ServiceUnavailable().json(json!({ "status": "database unreachable" }))
        }
    }
}

/// Standard security headers on every response.
pub fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("Cross-Origin-Opener-Policy", "same-origin"))
        .add(("Content-Security-Policy", "frame-ancestors 'none'"))
        .add((
            "Permissions-Policy",
            "camera=(), microphone=(), geolocation=()",
        ))
}
