//! Builds the application: migrations, pool, schema (once), and the bound HTTP server.

use std::net::TcpListener;
use std::sync::Arc;

use actix_cors::Cors;
use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, guard, http::header, web};
use anyhow::Context;
use tracing_actix_web::TracingLogger;

use crate::auth::cache::IdentityCache;
use crate::auth::{jwt::JwtKeys, password};
use crate::cache::spawn_invalidator;
use crate::catalog::cache::CatalogCache;
use crate::config::Settings;
use crate::db::{self, QueryCounter, migrate};
use crate::events::EventBus;
use crate::graphql::{self, PodiumSchema, SchemaLimits, handlers};
use crate::http;
use crate::jobs;
use crate::nodes::heartbeat::Heartbeats;
use crate::ratelimit::Limits;
use crate::state::AppState;
use tokio::sync::watch;

pub struct Application {
    port: u16,
    server: Server,
    state: AppState,
    shutdown: watch::Sender<bool>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Migrates the database and binds the listener (`PODIUM_LISTEN`; port 0 picks a free one).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        // Before any TLS client (Stripe's, kube's) is made: see `install_crypto_provider`.
        crate::provisioner::embedded::install_crypto_provider();
        let url = settings
            .database_url
            .clone()
            .context("no database URL: set DATABASE_URL or use the embedded default")?;
        let secret = settings
            .jwt_secret
            .clone()
            .context("PODIUM_JWT_SECRET is required")?;
        let applied = migrate::run(&url).await?;
        if applied > 0 {
            tracing::info!(applied, "database migrations applied");
        }
        let queries = QueryCounter::default();
        let pool = db::connect_counted_pool(&url, settings.db_pool_size, queries.clone()).await?;
        tokio::task::spawn_blocking(password::warm_up);

        let stripe = crate::billing::stripe::Stripe::from_settings(&settings.billing)?;
        let nodes = crate::nodes::model::all(&mut *pool.get().await?).await?;
        let cluster = crate::provisioner::connect(&settings, &nodes).await?;
        let sealer = Arc::new(crate::provisioner::credentials::Sealer::from_secret(
            settings.kube.credentials_key.as_deref().unwrap_or(&secret),
        ));
        let mailer = Arc::new(crate::email::transport::Transport::from_settings(
            &settings.mail,
        )?);
        tracing::info!(transport = %mailer.describe(), "mail");
        let state = AppState {
            mailer,
            pool,
            jwt: JwtKeys::new(&secret, settings.access_token_ttl),
            limits: Arc::new(Limits::from_settings(&settings)),
            latest_migration: migrate::latest_version().into(),
            events: EventBus::default(),
            heartbeats: Arc::new(Heartbeats::default()),
            jobs_wakeup: Arc::new(tokio::sync::Notify::new()),
            queries,
            identity_cache: Arc::new(IdentityCache::new(settings.cache_ttl)),
            catalog_cache: Arc::new(CatalogCache::new(settings.cache_ttl)),
            settings: Arc::new(settings),
            clock: Default::default(),
            stripe,
            cluster: Some(cluster),
            sealer,
        };
        let (shutdown, stopping) = watch::channel(false);
        let background = spawn_background(&state, &url, stopping).await;
        let schema = graphql::build_schema(SchemaLimits::from(state.settings.as_ref()));
        let listener = TcpListener::bind(state.settings.listen)
            .with_context(|| format!("binding PODIUM_LISTEN={}", state.settings.listen))?;
        let port = listener.local_addr()?.port();
        let server = serve(listener, state.clone(), schema)?;
        Ok(Application {
            port,
            server,
            state,
            shutdown,
            background,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until SIGINT/SIGTERM (graceful: in-flight requests finish) or `handle().stop()`.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let served = self.server.await;
        // Background work stops after the last request: pending heartbeats are flushed.
        self.shutdown.send_replace(true);
        for task in self.background {
            let _ = task.await;
        }
        served
    }
}

/// The event listener and outbox tailer, the heartbeat flusher, and (unless disabled) job workers and the scheduler.
async fn spawn_background(
    state: &AppState,
    url: &str,
    stopping: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![
        // Before the listener: a cache is trusted only once it hears invalidations.
        spawn_invalidator(
            state.identity_cache.clone(),
            &state.events,
            stopping.clone(),
        ),
        spawn_invalidator(state.catalog_cache.clone(), &state.events, stopping.clone()),
        state
            .events
            .spawn_listener(url.to_string(), stopping.clone()),
        state.events.spawn_outbox_tailer(
            url.to_string(),
            state.settings.outbox_notify,
            stopping.clone(),
        ),
        state
            .heartbeats
            .clone()
            .spawn_reloader(state.pool.clone(), stopping.clone()),
        state.clone().heartbeats.spawn_flusher(
            state.pool.clone(),
            state.settings.heartbeat_flush,
            stopping.clone(),
        ),
    ];
    // Keep the heartbeat path's view of node statuses and tokens current across replicas,
    // in event order and without lagging.
    let heartbeats = state.heartbeats.clone();
    state
        .events
        .observe_first(move |message| heartbeats.observe(message));
    // Rate limiters forget idle keys, so their memory follows the active clients only.
    let limits = state.limits.clone();
    let mut stop = stopping.clone();
    tasks.push(tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
        loop {
            tokio::select! {
                _ = every.tick() => limits.prune(),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }));
    tasks.extend(crate::provisioner::watch::spawn_pod_watcher(
        state.clone(),
        stopping.clone(),
    ));
    tasks.extend(crate::provisioner::nodesync::spawn(
        state.clone(),
        stopping.clone(),
    ));
    tasks.push(crate::provisioner::watch::spawn_placer(
        state.clone(),
        stopping.clone(),
    ));
    if state.settings.jobs_enabled {
        tasks.extend(jobs::runner::spawn_workers(
            state.clone(),
            state.settings.job_workers,
            state.settings.job_poll,
            stopping.clone(),
        ));
        tasks.push(jobs::scheduler::spawn(state.clone(), stopping));
    }
    if !state
        .events
        .wait_listening(std::time::Duration::from_secs(10))
        .await
    {
        tracing::warn!("the event listener is not connected yet; live events may be delayed");
    }
    if !state
        .events
        .wait_tailing(std::time::Duration::from_secs(10))
        .await
    {
        tracing::warn!("the event outbox tailer is not connected yet; live events may be delayed");
    }
    tasks
}

fn serve(listener: TcpListener, state: AppState, schema: PodiumSchema) -> anyhow::Result<Server> {
    let settings = state.settings.clone();
    let workers = settings.workers;
    let state = web::Data::new(state);
    let schema = web::Data::new(schema);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(cors(&settings.cors_origins))
            .wrap(http::security_headers())
            .wrap(TracingLogger::default())
            .app_data(state.clone())
            .app_data(schema.clone())
            .app_data(web::PayloadConfig::new(settings.max_body_bytes))
            .route("/healthz", web::get().to(http::healthz))
            .route("/readyz", web::get().to(http::readyz))
            .route("/metrics", web::get().to(http::metrics))
            .route("/webhooks/stripe", web::post().to(http::stripe_webhook))
            .route("/invoices/{id}", web::get().to(http::invoice::invoice_page))
            .service(
                web::resource("/verify-email")
                    .route(web::get().to(http::account_pages::verify_form))
                    .route(web::post().to(http::account_pages::verify)),
            )
            .service(
                web::resource("/reset-password")
                    .route(web::get().to(http::account_pages::reset_form))
                    .route(web::post().to(http::account_pages::reset)),
            )
            .service(
                web::resource("/graphql")
                    .route(web::post().to(handlers::graphql))
                    .route(
                        web::get()
                            .guard(guard::Header("upgrade", "websocket"))
                            .to(graphql::socket::graphql_ws),
                    )
                    .route(
                        web::get()
                            .guard(guard::fn_guard(|ctx| {
                                ctx.head().uri.query().is_some_and(|q| !q.is_empty())
                            }))
                            .to(handlers::graphql),
                    )
                    .route(web::get().to(handlers::graphiql)),
            )
    })
    .workers(workers)
    .shutdown_timeout(10)
    .listen(listener)?
    .run();
    Ok(server)
}

/// Cross-origin requests only from the configured allowlist (none by default).
fn cors(origins: &[String]) -> Cors {
    origins
        .iter()
        .fold(Cors::default(), |cors, origin| cors.allowed_origin(origin))
        .allowed_methods(["GET", "POST"])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(3600)
}
