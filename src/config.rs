//! Typed settings from environment variables (and an optional `.env`, loaded by `main`).
//! Every variable is documented in the README; a bad value names its variable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

/// A secret setting: reads as a `&str`, never prints (`Debug` shows `[redacted]`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::ops::Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// A database URL: `Debug` shows it with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // scheme://user:password@host... -> scheme://user:***@host...
        let shown = match self.0.split_once("://") {
            Some((scheme, rest)) => match rest.rsplit_once('@') {
                Some((credentials, host)) => {
                    let user = credentials.split(':').next().unwrap_or("");
                    let hidden = if credentials.contains(':') {
                        ":***"
                    } else {
                        ""
                    };
                    format!("{scheme}://{user}{hidden}@{host}")
                }
                None => self.0.clone(),
            },
            None => "[redacted]".into(),
        };
        write!(f, "{shown:?}")
    }
}

impl std::ops::Deref for DatabaseUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for DatabaseUrl {
    fn from(s: String) -> Self {
        DatabaseUrl(s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    /// `None` means the embedded default: a private PostgreSQL cluster under `data_dir`.
    pub database_url: Option<DatabaseUrl>,
    pub data_dir: PathBuf,
    /// `None` is only allowed in the embedded default, which generates and keeps one.
    pub jwt_secret: Option<Secret>,
    pub public_url: String,
    /// The platform's name on printable invoices.
    pub platform_name: String,
    pub base_domain: String,
    /// ISO 4217 code for prices given without a currency.
    pub default_currency: String,
    pub log_format: LogFormat,
    pub workers: usize,
    pub db_pool_size: u32,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub max_query_depth: usize,
    pub max_query_complexity: usize,
    pub max_aliases: usize,
    pub max_body_bytes: usize,
    pub introspection: bool,
    pub cors_origins: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed (empty: none).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub rate_limit_per_ip: u32,
    pub rate_limit_per_user: u32,
    pub rate_limit_per_node: u32,
    /// WebSockets one client address may hold open at once.
    pub ws_max_per_address: usize,
    pub rate_limit_window: Duration,
    pub login_max_failures_per_email: u32,
    pub login_max_attempts_per_ip: u32,
    /// Failed logins for one email (from any address) after which each attempt is slowed down.
    pub login_slowdown_after: u32,
    pub login_window: Duration,
    /// What node agents are told: send the next heartbeat in this many seconds.
    pub heartbeat_interval: Duration,
    /// Pending heartbeats are written at least this often.
    pub heartbeat_flush: Duration,
    /// A replica reads the event outbox, and wakes the others' (one NOTIFY), at most this often.
    pub outbox_notify: Duration,
    /// A node silent for longer becomes INACTIVE (and counts as offline).
    pub node_stale_after: Duration,
    pub node_staleness_cron: String,
    pub token_cleanup_cron: String,
    /// Run the job workers and the cron scheduler in this process.
    pub jobs_enabled: bool,
    pub job_workers: usize,
    pub job_poll: Duration,
    /// How long a claimed job is held without renewal; its worker renews every third of it.
    pub job_lease: Duration,
    /// Finished jobs older than this are pruned by the `jobs.prune` schedule.
    pub job_retention: Duration,
    pub job_prune_cron: String,
    /// When set, `/metrics` requires `Authorization: Bearer <token>`.
    pub metrics_token: Option<Secret>,
    /// The longest an in-memory read (users, sessions, the public catalog) is trusted
    /// without an event; zero turns the caches off.
    pub cache_ttl: Duration,
    pub billing: BillingSettings,
    pub kube: KubeSettings,
    pub mail: MailSettings,
}

/// How mail goes out, and where its links point.
#[derive(Clone, Debug)]
pub struct MailSettings {
    /// `PODIUM_SMTP_URL`; without it, messages are written as files under `dir`.
    pub smtp_url: Option<Secret>,
    /// `PODIUM_SMTP_TIMEOUT_SECS`: the longest one message may take to hand over, all of it
    /// (connecting, TLS, sign-in, sending); a server that stalls costs a retry, not a worker.
    pub smtp_timeout: Duration,
    /// `PODIUM_SMTP_CA_FILE`: PEM root certificates to trust for the mail server's TLS, on
    /// top of the public ones (a private CA, a self-signed relay).
    pub smtp_ca_file: Option<PathBuf>,
    /// `PODIUM_MAIL_FROM`: the From of every message.
    pub from: String,
    /// Where the file transport writes (`<PODIUM_DATA_DIR>/mail`).
    pub dir: PathBuf,
    /// `PODIUM_PORTAL_URL`: links in mail point here (default: the public URL, where
    /// Podium serves small pages for them).
    pub portal_url: String,
    /// `PODIUM_REQUIRE_VERIFIED_EMAIL`: sign-in waits for a verified address.
    pub require_verified_email: bool,
    /// Renewal reminders, low-balance warnings and expiry warnings are looked for on this schedule.
    pub reminder_cron: String,
    /// A message is tried this many times before it is FAILED (an administrator can retry it).
    pub max_attempts: i32,
    /// Password-reset and verification requests per client address per
    /// `PODIUM_LOGIN_WINDOW_SECS`.
    pub requests_per_ip: u32,
}

/// Money settings: Stripe, top-up limits, tax, and the billing cycle's schedule.
#[derive(Clone, Debug)]
pub struct BillingSettings {
    /// `STRIPE_SECRET_KEY`; without it top-ups are off (administrators can still credit).
    pub stripe_secret_key: Option<Secret>,
    /// `STRIPE_WEBHOOK_SECRET`: verifies `Stripe-Signature` on `/webhooks/stripe`.
    pub stripe_webhook_secret: Option<Secret>,
    /// `STRIPE_API_BASE` (default `https://api.stripe.com`): localstripe in tests.
    pub stripe_api_base: String,
    /// Smallest and largest top-up, in minor units of the platform currency.
    pub top_up_min: i64,
    pub top_up_max: i64,
    /// PENDING top-ups older than this are settled by asking Stripe.
    pub top_up_reconcile_after: Duration,
    pub top_up_reconcile_cron: String,
    /// Tax on invoices, in basis points (1100 = 11 %), and its name on the invoice.
    pub tax_rate_bp: i32,
    pub tax_name: String,
    pub renewal_cron: String,
    pub dunning_cron: String,
    /// Days after a failed renewal on which the charge is retried.
    pub dunning_retry_days: Vec<u32>,
    /// Days PAST_DUE before SUSPENDED, and days SUSPENDED before EXPIRED.
    pub grace_days: u32,
    pub expire_after_days: u32,
    /// Live (not cancelled or expired) subscriptions one user may hold, over all plans.
    pub max_subscriptions_per_user: i64,
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads settings from any set of variables (tests pass their own).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env = Env(vars
            .into_iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .collect());
        let listen: SocketAddr = env.parse("PODIUM_LISTEN", "127.0.0.1:8080".parse().unwrap())?;
        let jwt_secret = env.get("PODIUM_JWT_SECRET");
        let default_currency = {
            let c = env
                .get("PODIUM_DEFAULT_CURRENCY")
                .unwrap_or_else(|| "IDR".into());
            crate::money::validate_currency("currency", &c).map_err(|_| ConfigError {
                var: "PODIUM_DEFAULT_CURRENCY",
                message: "must be a three-letter ISO 4217 code".into(),
            })?
        };
        if let Some(secret) = &jwt_secret
            && secret.len() < 32
        {
            return Err(ConfigError {
                var: "PODIUM_JWT_SECRET",
                message: "must be at least 32 characters".into(),
            });
        }
        let database_url = env.get("DATABASE_URL");
        if let Some(url) = &database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError {
                    var: "DATABASE_URL",
                    message: "must be a postgres:// or postgresql:// URL".into(),
                });
            }
            if jwt_secret.is_none() {
                return Err(ConfigError {
                    var: "PODIUM_JWT_SECRET",
                    message: "is required when DATABASE_URL is set (generate one with `openssl rand -hex 32`)".into(),
                });
            }
        }
        let log_format = match env.get("PODIUM_LOG_FORMAT").as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(_) => {
                return Err(ConfigError {
                    var: "PODIUM_LOG_FORMAT",
                    message: "must be `pretty` or `json`".into(),
                });
            }
        };
        let public_url = env
            .get("PODIUM_PUBLIC_URL")
            .unwrap_or_else(|| format!("http://{listen}"));
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(ConfigError {
                var: "PODIUM_PUBLIC_URL",
                message: "must start with http:// or https://".into(),
            });
        }
        let cors_origins = env
            .get("PODIUM_CORS_ORIGINS")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().trim_end_matches('/').to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let data_dir = PathBuf::from(
            env.get("PODIUM_DATA_DIR")
                .unwrap_or_else(|| "./.data".into()),
        );
        let default_workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Settings {
            listen,
            database_url: database_url.map(DatabaseUrl),
            mail: mail_settings(&env, &public_url, &data_dir)?,
            data_dir,
            jwt_secret: jwt_secret.map(Secret),
            public_url: public_url.trim_end_matches('/').to_string(),
            platform_name: env
                .get("PODIUM_PLATFORM_NAME")
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "Podium".into()),
            base_domain: env
                .get("PODIUM_BASE_DOMAIN")
                .unwrap_or_else(|| "apps.localhost".into()),
            log_format,
            workers: env.positive("PODIUM_WORKERS", default_workers)?,
            db_pool_size: env.positive("PODIUM_DB_POOL_SIZE", 10)?,
            access_token_ttl: Duration::from_secs(
                env.positive("PODIUM_ACCESS_TOKEN_TTL_SECS", 900)?,
            ),
            refresh_token_ttl: Duration::from_secs(
                env.positive("PODIUM_REFRESH_TOKEN_TTL_SECS", 30 * 24 * 3600)?,
            ),
            max_query_depth: env.positive("PODIUM_MAX_QUERY_DEPTH", 12)?,
            max_query_complexity: env.positive("PODIUM_MAX_QUERY_COMPLEXITY", 20_000)?,
            max_aliases: env.positive("PODIUM_MAX_ALIASES", 30)?,
            max_body_bytes: env.positive("PODIUM_MAX_BODY_BYTES", 1024 * 1024)?,
            introspection: env.parse("PODIUM_INTROSPECTION", true)?,
            cors_origins,
            trusted_proxies: env.cidrs("PODIUM_TRUSTED_PROXIES")?,
            rate_limit_per_ip: env.positive("PODIUM_RATE_LIMIT_PER_IP", 600)?,
            rate_limit_per_user: env.positive("PODIUM_RATE_LIMIT_PER_USER", 300)?,
            rate_limit_per_node: env.positive("PODIUM_RATE_LIMIT_PER_NODE", 300)?,
            ws_max_per_address: env.positive("PODIUM_WS_MAX_PER_ADDRESS", 200)?,
            rate_limit_window: Duration::from_secs(
                env.positive("PODIUM_RATE_LIMIT_WINDOW_SECS", 60)?,
            ),
            login_max_failures_per_email: env.positive("PODIUM_LOGIN_MAX_FAILURES_PER_EMAIL", 5)?,
            login_max_attempts_per_ip: env.positive("PODIUM_LOGIN_MAX_ATTEMPTS_PER_IP", 30)?,
            login_slowdown_after: env.positive("PODIUM_LOGIN_SLOWDOWN_AFTER", 20)?,
            login_window: Duration::from_secs(env.positive("PODIUM_LOGIN_WINDOW_SECS", 900)?),
            heartbeat_interval: Duration::from_secs(
                env.positive("PODIUM_HEARTBEAT_INTERVAL_SECS", 10)?,
            ),
            heartbeat_flush: Duration::from_millis(
                env.positive("PODIUM_HEARTBEAT_FLUSH_MS", 500)?.min(1000),
            ),
            outbox_notify: Duration::from_millis(
                env.positive("PODIUM_OUTBOX_NOTIFY_MS", 25)?.min(1000),
            ),
            node_stale_after: Duration::from_secs(
                env.positive("PODIUM_NODE_STALE_AFTER_SECS", 60)?,
            ),
            node_staleness_cron: env.cron("PODIUM_NODE_STALENESS_CRON", "*/15 * * * * *")?,
            token_cleanup_cron: env.cron("PODIUM_TOKEN_CLEANUP_CRON", "0 17 3 * * *")?,
            jobs_enabled: env.parse("PODIUM_JOBS_ENABLED", true)?,
            job_workers: env.positive("PODIUM_JOB_WORKERS", 2)?,
            job_poll: Duration::from_millis(env.positive("PODIUM_JOB_POLL_MS", 1000)?),
            job_lease: Duration::from_secs(env.positive("PODIUM_JOB_LEASE_SECS", 30)?),
            job_retention: Duration::from_secs(
                env.positive::<u64>("PODIUM_JOB_RETENTION_DAYS", 7)?
                    .saturating_mul(24 * 3600),
            ),
            job_prune_cron: env.cron("PODIUM_JOB_PRUNE_CRON", "0 23 * * * *")?,
            metrics_token: env.get("PODIUM_METRICS_TOKEN").map(Secret),
            cache_ttl: Duration::from_secs(env.parse("PODIUM_CACHE_TTL_SECS", 5)?),
            billing: billing_settings(&env, &default_currency)?,
            kube: kube_settings(&env)?,
            default_currency,
        })
    }

    /// The embedded default runs when no external database is configured.
    pub fn is_embedded(&self) -> bool {
        self.database_url.is_none()
    }
}

fn mail_settings(
    env: &Env,
    public_url: &str,
    data_dir: &std::path::Path,
) -> Result<MailSettings, ConfigError> {
    let smtp_url = env.get("PODIUM_SMTP_URL");
    if let Some(url) = &smtp_url
        && crate::email::transport::smtp_url(url).is_none()
    {
        return Err(ConfigError {
            var: "PODIUM_SMTP_URL",
            message: "must be smtp://, smtps:// or smtp+starttls://[user:password@]host[:port]"
                .into(),
        });
    }
    if env.get("PODIUM_SMTP_CA_FILE").is_some()
        && !smtp_url
            .as_deref()
            .is_some_and(|u| u.starts_with("smtps://") || u.starts_with("smtp+starttls://"))
    {
        return Err(ConfigError {
            var: "PODIUM_SMTP_CA_FILE",
            message: "is for TLS: PODIUM_SMTP_URL must be smtps:// or smtp+starttls://".into(),
        });
    }
    let from = env.get("PODIUM_MAIL_FROM").unwrap_or_else(|| {
        let host = public_url
            .split_once("://")
            .map_or(public_url, |(_, rest)| rest)
            .split(['/', ':'])
            .next()
            .unwrap_or("localhost");
        format!("Podium <noreply@{host}>")
    });
    if from.parse::<lettre::message::Mailbox>().is_err() {
        return Err(ConfigError {
            var: "PODIUM_MAIL_FROM",
            message: "must be an address, optionally with a name: `Podium <noreply@example.com>`"
                .into(),
        });
    }
    let portal_url = env
        .get("PODIUM_PORTAL_URL")
        .unwrap_or_else(|| public_url.to_string());
    if !(portal_url.starts_with("http://") || portal_url.starts_with("https://")) {
        return Err(ConfigError {
            var: "PODIUM_PORTAL_URL",
            message: "must start with http:// or https://".into(),
        });
    }
    Ok(MailSettings {
        smtp_url: smtp_url.map(Secret),
        smtp_ca_file: env.get("PODIUM_SMTP_CA_FILE").map(PathBuf::from),
        smtp_timeout: Duration::from_secs(env.positive("PODIUM_SMTP_TIMEOUT_SECS", 60)?),
        from,
        dir: data_dir.join("mail"),
        portal_url: portal_url.trim_end_matches('/').to_string(),
        require_verified_email: env.parse("PODIUM_REQUIRE_VERIFIED_EMAIL", false)?,
        reminder_cron: env.cron("PODIUM_MAIL_REMINDER_CRON", "0 0 * * * *")?,
        max_attempts: env.positive("PODIUM_MAIL_MAX_ATTEMPTS", 30)?,
        requests_per_ip: env.positive("PODIUM_MAIL_REQUESTS_PER_IP", 10)?,
    })
}

/// Where instances run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubeTarget {
    /// The embedded stand-in with a simulated kubelet (the default without a cluster).
    Embedded,
    /// A real cluster, from `KUBECONFIG`, `~/.kube/config` or the in-cluster service account.
    Cluster,
    /// An API server at this URL, without credentials (`kubectl proxy`, or another
    /// replica's embedded cluster).
    Url(String),
}

#[derive(Clone, Debug)]
pub struct KubeSettings {
    pub target: KubeTarget,
    pub ingress_class: Option<String>,
    pub cluster_issuer: String,
    pub storage_class: Option<String>,
    pub ingress_namespace: String,
    /// The embedded kubelet: how long a container takes to start.
    pub embedded_start_delay: Duration,
    pub resync_cron: String,
    /// Seals instances' credentials at rest; unset: derived from the JWT secret.
    pub credentials_key: Option<Secret>,
}

fn kube_settings(env: &Env) -> Result<KubeSettings, ConfigError> {
    let in_cluster = env.get("KUBERNETES_SERVICE_HOST").is_some();
    let target = match (
        env.get("PODIUM_KUBE_API_URL"),
        env.get("PODIUM_KUBE_MODE").as_deref().unwrap_or("auto"),
    ) {
        (Some(url), _) => KubeTarget::Url(url),
        (None, "embedded") => KubeTarget::Embedded,
        (None, "cluster") => KubeTarget::Cluster,
        (None, "auto") if env.get("KUBECONFIG").is_some() || in_cluster => KubeTarget::Cluster,
        (None, "auto") => KubeTarget::Embedded,
        (None, other) => {
            return Err(ConfigError {
                var: "PODIUM_KUBE_MODE",
                message: format!("must be auto, embedded or cluster, not {other:?}"),
            });
        }
    };
    Ok(KubeSettings {
        target,
        ingress_class: Some(
            env.get("PODIUM_KUBE_INGRESS_CLASS")
                .unwrap_or_else(|| "nginx".into()),
        )
        .filter(|c| c != "none"),
        cluster_issuer: env
            .get("PODIUM_KUBE_CLUSTER_ISSUER")
            .unwrap_or_else(|| "letsencrypt".into()),
        storage_class: env.get("PODIUM_KUBE_STORAGE_CLASS"),
        ingress_namespace: env
            .get("PODIUM_KUBE_INGRESS_NAMESPACE")
            .unwrap_or_else(|| "ingress-nginx".into()),
        embedded_start_delay: Duration::from_millis(
            env.parse("PODIUM_EMBEDDED_KUBE_START_DELAY_MS", 2000)?,
        ),
        resync_cron: env.cron("PODIUM_INSTANCE_RESYNC_CRON", "30 * * * * *")?,
        credentials_key: env.get("PODIUM_CREDENTIALS_KEY").map(Secret),
    })
}

fn billing_settings(env: &Env, currency: &str) -> Result<BillingSettings, ConfigError> {
    let top_up_min = env.money("PODIUM_TOP_UP_MIN", "10000", currency)?;
    let top_up_max = env.money("PODIUM_TOP_UP_MAX", "10000000", currency)?;
    if top_up_min <= 0 || top_up_max < top_up_min {
        return Err(ConfigError {
            var: "PODIUM_TOP_UP_MAX",
            message: "PODIUM_TOP_UP_MIN must be positive and at most PODIUM_TOP_UP_MAX".into(),
        });
    }
    let tax_rate_bp = match env.get("PODIUM_TAX_RATE_PERCENT") {
        None => 0,
        Some(raw) => {
            let bp = crate::money::parse_amount("PODIUM_TAX_RATE_PERCENT", &raw, "USD")
                .ok()
                .filter(|bp| *bp <= 10_000)
                .ok_or_else(|| ConfigError {
                    var: "PODIUM_TAX_RATE_PERCENT",
                    message: format!(
                        "{raw:?} is not a percentage between 0 and 100 with at most two decimals"
                    ),
                })?;
            bp as i32
        }
    };
    let dunning_retry_days = match env.get("PODIUM_DUNNING_RETRY_DAYS") {
        None => vec![1, 3, 5],
        Some(raw) => {
            let days: Result<Vec<u32>, _> = raw.split(',').map(|d| d.trim().parse()).collect();
            match days {
                Ok(days) if !days.is_empty() && days.windows(2).all(|w| w[0] < w[1]) => days,
                _ => {
                    return Err(ConfigError {
                        var: "PODIUM_DUNNING_RETRY_DAYS",
                        message: format!("{raw:?} is not a rising list of days such as 1,3,5"),
                    });
                }
            }
        }
    };
    let grace_days = env.positive("PODIUM_BILLING_GRACE_DAYS", 7)?;
    if dunning_retry_days.last().is_some_and(|d| *d >= grace_days) {
        return Err(ConfigError {
            var: "PODIUM_DUNNING_RETRY_DAYS",
            message: "every retry must fall within PODIUM_BILLING_GRACE_DAYS".into(),
        });
    }
    Ok(BillingSettings {
        stripe_secret_key: env.get("STRIPE_SECRET_KEY").map(Secret),
        stripe_webhook_secret: env.get("STRIPE_WEBHOOK_SECRET").map(Secret),
        stripe_api_base: env
            .get("STRIPE_API_BASE")
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| "https://api.stripe.com".into()),
        top_up_min,
        top_up_max,
        top_up_reconcile_after: Duration::from_secs(
            env.positive("PODIUM_TOP_UP_RECONCILE_AFTER_SECS", 300)?,
        ),
        top_up_reconcile_cron: env.cron("PODIUM_TOP_UP_RECONCILE_CRON", "30 */5 * * * *")?,
        tax_rate_bp,
        tax_name: env.get("PODIUM_TAX_NAME").unwrap_or_else(|| "Tax".into()),
        renewal_cron: env.cron("PODIUM_BILLING_RENEWAL_CRON", "0 * * * * *")?,
        dunning_cron: env.cron("PODIUM_BILLING_DUNNING_CRON", "15 */10 * * * *")?,
        dunning_retry_days,
        grace_days,
        expire_after_days: env.positive("PODIUM_BILLING_EXPIRE_AFTER_DAYS", 30)?,
        max_subscriptions_per_user: env.positive("PODIUM_MAX_SUBSCRIPTIONS_PER_USER", 50)?,
    })
}

struct Env(HashMap<String, String>);

impl Env {
    fn get(&self, var: &str) -> Option<String> {
        self.0.get(var).map(|v| v.trim().to_string())
    }

    fn parse<T: FromStr>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(var) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e: T::Err| ConfigError {
                var,
                message: format!("cannot parse {raw:?}: {e}"),
            }),
        }
    }

    /// An amount in major units of `currency` (e.g. "100000" or "19.99") -> minor units.
    fn money(&self, var: &'static str, default: &str, currency: &str) -> Result<i64, ConfigError> {
        let raw = self.get(var).unwrap_or_else(|| default.to_string());
        crate::money::parse_amount(var, &raw, currency).map_err(|_| ConfigError {
            var,
            message: format!("{raw:?} is not an amount of {currency} such as 100000 or 19.99"),
        })
    }

    /// Comma-separated CIDRs (a bare address is a /32 or /128).
    fn cidrs(&self, var: &'static str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(Vec::new());
        };
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<ipnet::IpNet>()
                    .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| ConfigError {
                        var,
                        message: format!("{s:?} is not an address or CIDR (e.g. 10.0.0.0/8)"),
                    })
            })
            .collect()
    }

    /// A cron expression with seconds: `sec min hour day-of-month month day-of-week`.
    fn cron(&self, var: &'static str, default: &str) -> Result<String, ConfigError> {
        let expr = self.get(var).unwrap_or_else(|| default.to_string());
        expr.parse::<cron::Schedule>().map_err(|e| ConfigError {
            var,
            message: format!("not a cron expression (sec min hour day month weekday): {e}"),
        })?;
        Ok(expr)
    }

    fn positive<T>(&self, var: &'static str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + Default + Copy,
        T::Err: std::fmt::Display,
    {
        let value = self.parse(var, default)?;
        if value <= T::default() {
            return Err(ConfigError {
                var,
                message: "must be greater than zero".into(),
            });
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert!(s.is_embedded());
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.access_token_ttl, Duration::from_secs(900));
    }

    #[test]
    fn external_database_requires_a_jwt_secret() {
        let err = Settings::from_vars(vars(&[("DATABASE_URL", "postgres://x@localhost/db")]))
            .unwrap_err();
        assert_eq!(err.var, "PODIUM_JWT_SECRET");
    }

    #[test]
    fn mail_settings_refuse_what_would_send_in_the_clear_or_nowhere() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert!(s.mail.smtp_url.is_none(), "files by default");
        assert_eq!(s.mail.dir, PathBuf::from("./.data/mail"));
        assert_eq!(s.mail.portal_url, s.public_url);
        let err = |pairs: &[(&str, &str)]| Settings::from_vars(vars(pairs)).unwrap_err().var;
        assert_eq!(
            err(&[("PODIUM_SMTP_URL", "http://mail.example.com")]),
            "PODIUM_SMTP_URL"
        );
        assert_eq!(
            err(&[
                ("PODIUM_SMTP_URL", "smtp://mail.example.com"),
                ("PODIUM_SMTP_CA_FILE", "/etc/ca.pem"),
            ]),
            "PODIUM_SMTP_CA_FILE",
            "a CA file with plain SMTP would be ignored"
        );
        assert_eq!(
            err(&[("PODIUM_MAIL_FROM", "not an address")]),
            "PODIUM_MAIL_FROM"
        );
        assert_eq!(
            err(&[("PODIUM_PORTAL_URL", "portal.example.com")]),
            "PODIUM_PORTAL_URL"
        );
    }

    #[test]
    fn trusted_proxies_are_cidrs() {
        let s = Settings::from_vars(vars(&[(
            "PODIUM_TRUSTED_PROXIES",
            "10.0.0.0/8, 127.0.0.1,::1/128",
        )]))
        .unwrap();
        assert_eq!(s.trusted_proxies.len(), 3);
        assert!(s.trusted_proxies[1].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
        let err = Settings::from_vars(vars(&[("PODIUM_TRUSTED_PROXIES", "10.0.0/8")])).unwrap_err();
        assert_eq!(err.var, "PODIUM_TRUSTED_PROXIES");
    }

    #[test]
    fn job_leases_and_retention() {
        let s = Settings::from_vars(vars(&[])).unwrap();
        assert_eq!(s.job_lease, Duration::from_secs(30));
        assert_eq!(s.job_retention, Duration::from_secs(7 * 24 * 3600));
        let s = Settings::from_vars(vars(&[
            ("PODIUM_JOB_LEASE_SECS", "2"),
            ("PODIUM_JOB_RETENTION_DAYS", "1"),
        ]))
        .unwrap();
        assert_eq!(s.job_lease, Duration::from_secs(2));
        assert_eq!(s.job_retention, Duration::from_secs(24 * 3600));
        for var in ["PODIUM_JOB_LEASE_SECS", "PODIUM_JOB_RETENTION_DAYS"] {
            assert_eq!(
                Settings::from_vars(vars(&[(var, "0")])).unwrap_err().var,
                var
            );
        }
        let err = Settings::from_vars(vars(&[("PODIUM_JOB_PRUNE_CRON", "hourly")])).unwrap_err();
        assert_eq!(err.var, "PODIUM_JOB_PRUNE_CRON");
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let s = Settings::from_vars(vars(&[
            (
                "DATABASE_URL",
                "postgres://podium:db-pass-1234@db.internal:5432/podium",
            ),
            ("PODIUM_JWT_SECRET", "jwt-secret-0123456789abcdef0123456789"),
            ("PODIUM_METRICS_TOKEN", "metrics-token-42"),
        ]))
        .unwrap();
        let shown = format!("{s:?} {s:#?}");
        for secret in ["db-pass-1234", "jwt-secret-0123456789", "metrics-token-42"] {
            assert!(!shown.contains(secret), "{secret} printed: {shown}");
        }
        assert!(
            shown.contains("postgres://podium:***@db.internal:5432/podium"),
            "{shown}"
        );
        assert_eq!(
            s.jwt_secret.as_deref(),
            Some("jwt-secret-0123456789abcdef0123456789")
        );
    }

    #[test]
    fn bad_values_name_their_variable() {
        let err = Settings::from_vars(vars(&[("PODIUM_LISTEN", "nope")])).unwrap_err();
        assert_eq!(err.var, "PODIUM_LISTEN");
        let err = Settings::from_vars(vars(&[("PODIUM_DB_POOL_SIZE", "0")])).unwrap_err();
        assert_eq!(err.var, "PODIUM_DB_POOL_SIZE");
    }
}
