//! Routes outside GraphQL: liveness and readiness probes, metrics, Stripe's webhook,
//! printable invoices, and response hardening.

pub mod account_pages;
pub mod invoice;

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

/// Prometheus text metrics. With `PODIUM_METRICS_TOKEN` set, only for `Bearer <token>`.
pub async fn metrics(state: web::Data<AppState>, req: actix_web::HttpRequest) -> HttpResponse {
    if let Some(expected) = &state.settings.metrics_token {
        let given = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = subtle::ConstantTimeEq::ct_eq(
            crate::auth::token_hash(given).as_slice(),
            crate::auth::token_hash(expected).as_slice(),
        )
        .into();
        if !ok {
            return HttpResponse::Unauthorized().finish();
        }
    }
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let pool = state.pool.state();
    let hb = &state.heartbeats;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "podium_db_queries_total",
        "counter",
        "Statements run by the connection pool.",
        state.queries.get(),
    );
    metric(
        "podium_db_pool_connections",
        "gauge",
        "Open pool connections.",
        pool.connections as u64,
    );
    metric(
        "podium_db_pool_idle_connections",
        "gauge",
        "Idle pool connections.",
        pool.idle_connections as u64,
    );
    metric(
        "podium_heartbeats_accepted_total",
        "counter",
        "Heartbeats acknowledged.",
        hb.accepted.load(Relaxed),
    );
    metric(
        "podium_heartbeats_flushed_total",
        "counter",
        "Coalesced reports written.",
        hb.flushed.load(Relaxed),
    );
    metric(
        "podium_heartbeats_pending",
        "gauge",
        "Reports waiting for the next flush.",
        hb.pending_len() as u64,
    );
    metric(
        "podium_events_listening",
        "gauge",
        "1 while the LISTEN connection for live events is up.",
        state.events.is_listening() as u64,
    );
    metric(
        "podium_live_subscribers",
        "gauge",
        "Receivers of this replica's live events (GraphQL subscriptions and background tasks).",
        state.events.subscribers() as u64,
    );
    // Mail waiting or given up: what an operator alerts on (a mail server down, a rejected login).
    // At most a second: the other figures matter most when the database is the trouble.
    let outbox = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        let mut conn = state.pool.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok::<_, anyhow::Error>(crate::email::model::unsent_counts(&mut conn).await?)
    })
    .await
    .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
    match outbox {
        Ok((queued, failed)) => {
            let _ = writeln!(
                out,
                "# HELP podium_mail_outbox Messages in the mail outbox not sent (yet).\n# TYPE podium_mail_outbox gauge\npodium_mail_outbox{{status=\"QUEUED\"}} {queued}\npodium_mail_outbox{{status=\"FAILED\"}} {failed}"
            );
        }
        Err(e) => tracing::warn!(error = %e, "reading the mail outbox for /metrics"),
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(out)
}

/// `POST /webhooks/stripe`: 200 once an event is handled (or deliberately ignored), 400 for
/// a missing, wrong or stale signature (nothing is done), 500/503 so that Stripe retries.
/// The body is read raw: the signature covers its exact bytes.
pub async fn stripe_webhook(
    state: web::Data<AppState>,
    req: actix_web::HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    use crate::billing::topup::{WebhookResult, handle_webhook};
    let signature = req
        .headers()
        .get("Stripe-Signature")
        .and_then(|v| v.to_str().ok());
    match handle_webhook(&state, &body, signature).await {
        WebhookResult::Accepted => HttpResponse::Ok().json(json!({ "received": true })),
        WebhookResult::Rejected(why) => HttpResponse::BadRequest().json(json!({ "error": why })),
        WebhookResult::NotConfigured => HttpResponse::ServiceUnavailable()
            .json(json!({ "error": "webhooks are not configured" })),
        WebhookResult::Failed(e) => {
            tracing::error!(error = ?e, "handling a Stripe webhook failed");
            HttpResponse::InternalServerError().json(json!({ "error": "internal error" }))
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
