//! What every request handler and service function shares.

use std::sync::Arc;

use crate::auth::cache::IdentityCache;
use crate::auth::jwt::JwtKeys;
use crate::catalog::cache::CatalogCache;
use crate::clock::Clock;
use crate::config::Settings;
use crate::db::{DbPool, QueryCounter};
use crate::events::EventBus;
use crate::nodes::heartbeat::Heartbeats;
use crate::ratelimit::Limits;

#[derive(Clone)]
pub struct AppState {
    pub pool: DbPool,
    pub jwt: JwtKeys,
    pub settings: Arc<Settings>,
    pub limits: Arc<Limits>,
    /// The newest embedded migration: `/readyz` checks the database has it.
    pub latest_migration: Arc<str>,
    pub events: EventBus,
    pub heartbeats: Arc<Heartbeats>,
    /// Wakes this process's job workers when it enqueues a job.
    pub jobs_wakeup: Arc<tokio::sync::Notify>,
    /// Statements run by the pool's connections.
    pub queries: QueryCounter,
    /// Users and live sessions, and the public catalog, in memory (kept fresh by events).
    pub identity_cache: Arc<IdentityCache>,
    pub catalog_cache: Arc<CatalogCache>,
    /// The time billing reads (tests move it forward).
    pub clock: Clock,
    /// The Stripe client for top-ups; `None` without `STRIPE_SECRET_KEY`.
    pub stripe: Option<crate::billing::stripe::Stripe>,
    /// Seals instances' credentials at rest.
    pub sealer: Arc<crate::provisioner::credentials::Sealer>,
    /// The Kubernetes cluster instances run on (the embedded one by default).
    pub cluster: Option<crate::provisioner::cluster::Cluster>,
    /// Where the outbox's messages go: SMTP, or files in the embedded default.
    pub mailer: Arc<crate::email::transport::Transport>,
}

/// Who is calling from where: for sessions, throttling and the audit trail.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    /// The client's address: the socket peer, or behind a trusted proxy the right-most
    /// `X-Forwarded-For` hop that is not itself trusted.
    pub ip: std::net::IpAddr,
    pub user_agent: Option<String>,
}

impl Default for ClientInfo {
    fn default() -> Self {
        ClientInfo {
            ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            user_agent: None,
        }
    }
}
