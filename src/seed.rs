//! Seed data from `seeds/` (embedded in the binary), loaded idempotently: what exists
//! (by email, slug, plan name or node name) is left as it is. The catalog is for every
//! installation; the demo accounts (published passwords) and demo nodes only on request.

use diesel_async::AsyncConnection;
use serde::Deserialize;

use crate::catalog::model as catalog;
use crate::catalog::service::{CategoryInput, PlanInput, ServiceInput};
use crate::db::DbPool;
use crate::error::AppError;
use crate::nodes::model::NodeChanges;
use crate::nodes::service::seed_node;
use crate::users::model::Role;
use crate::users::service::{AccountInput, ensure_account};

const USERS: &str = include_str!("../seeds/users.json");
const CATALOG: &str = include_str!("../seeds/catalog.json");
const NODES: &str = include_str!("../seeds/nodes.json");

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeedUser {
    pub name: String,
    pub email: String,
    pub password: String,
    pub role: String,
    /// Credited once (a recorded ADJUSTMENT), in major units of the platform currency, so
    /// that a newcomer can subscribe at once.
    #[serde(default)]
    pub starting_balance: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeedCatalog {
    currency: String,
    categories: Vec<SeedCategory>,
    services: Vec<SeedService>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeedCategory {
    slug: String,
    name: String,
    description: String,
    icon: Option<String>,
    sort_order: i32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeedService {
    slug: String,
    name: String,
    category: String,
    featured: bool,
    description: String,
    icon: Option<String>,
    docker_image: String,
    container_port: i32,
    volume_mount_path: Option<String>,
    env_template: serde_json::Value,
    tags: Vec<String>,
    plans: Vec<SeedPlan>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeedPlan {
    name: String,
    plan_type: String,
    price: String,
    cpu_milli: i32,
    memory_mb: i32,
    storage_gb: i32,
    total_quota: Option<i32>,
    max_instances_per_user: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SeedNode {
    name: String,
    hostname: String,
    ip_address: String,
    cpu_cores: i32,
    cpu_model: Option<String>,
    memory_mb: i64,
    storage_mb: i64,
    architecture: String,
    operating_system: String,
    region: Option<String>,
    max_pods: i32,
    labels: serde_json::Value,
}

/// What a seed run created.
#[derive(Debug, Default)]
pub struct SeedReport {
    pub users: Vec<String>,
    pub services: Vec<String>,
    /// (node name, its token): tokens are only known when the node is created.
    pub nodes: Vec<(String, String)>,
}

pub fn demo_users() -> Vec<SeedUser> {
    serde_json::from_str(USERS).expect("seeds/users.json is valid")
}

fn invalid(what: &str) -> impl Fn(AppError) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("seed {what} is invalid: {e:?}")
}

/// The catalog only: what `podium seed` loads.
pub async fn catalog(pool: &DbPool) -> anyhow::Result<SeedReport> {
    let mut conn = pool.get().await?;
    Ok(SeedReport {
        services: load_catalog(&mut conn).await?,
        ..Default::default()
    })
}

/// The catalog plus the demo accounts and demo nodes: `podium seed --demo`, the embedded
/// default's first start, and the tests. Demo wallets hold `currency` (the platform's).
pub async fn run(pool: &DbPool, currency: &str) -> anyhow::Result<SeedReport> {
    let mut report = SeedReport::default();
    let mut conn = pool.get().await?;
    for user in demo_users() {
        let role = if user.role == "ADMINISTRATOR" {
            Role::Administrator
        } else {
            Role::User
        };
        let account = AccountInput {
            name: user.name,
            email: user.email.clone(),
            password: user.password,
        };
        if ensure_account(&mut conn, account, role)
            .await
            .map_err(invalid(&user.email))?
        {
            report.users.push(user.email.clone());
        }
        if let Some(amount) = &user.starting_balance {
            let amount = crate::money::parse_amount("startingBalance", amount, currency)
                .map_err(invalid(&user.email))?;
            crate::billing::service::seed_balance(&mut conn, &user.email, amount, currency)
                .await
                .map_err(invalid(&user.email))?;
        }
    }

    report.services = load_catalog(&mut conn).await?;

    let nodes: Vec<SeedNode> = serde_json::from_str(NODES).expect("seeds/nodes.json is valid");
    for n in nodes {
        let changes = NodeChanges {
            name: Some(n.name.clone()),
            hostname: Some(n.hostname),
            ip_address: Some(n.ip_address),
            cpu_cores: Some(n.cpu_cores),
            cpu_model: Some(n.cpu_model),
            memory_mb: Some(n.memory_mb),
            storage_mb: Some(n.storage_mb),
            architecture: Some(n.architecture),
            operating_system: Some(n.operating_system),
            region: Some(n.region),
            max_pods: Some(n.max_pods),
            labels: Some(n.labels),
            taints: Some(serde_json::json!([])),
            is_schedulable: Some(true),
        };
        if let Some(token) = seed_node(&mut conn, changes)
            .await
            .map_err(invalid(&n.name))?
        {
            report.nodes.push((n.name, token));
        }
    }
    Ok(report)
}

/// Categories, services and their plans; returns the slugs of the new services.
async fn load_catalog(conn: &mut crate::db::Conn) -> anyhow::Result<Vec<String>> {
    let seed: SeedCatalog = serde_json::from_str(CATALOG).expect("seeds/catalog.json is valid");
    conn.transaction(async |conn| {
        let mut created = Vec::new();
        for c in &seed.categories {
            if catalog::category_by_slug(conn, &c.slug).await?.is_none() {
                let input = CategoryInput {
                    slug: Some(c.slug.clone()),
                    name: Some(c.name.clone()),
                    description: Some(c.description.clone()),
                    icon: c.icon.clone(),
                    sort_order: Some(c.sort_order),
                    is_active: Some(true),
                };
                catalog::insert_category(conn, &input.validate(true).map_err(invalid(&c.slug))?)
                    .await?;
            }
        }
        for s in &seed.services {
            if catalog::service_by_slug(conn, &s.slug).await?.is_some() {
                continue;
            }
            let category = catalog::category_by_slug(conn, &s.category)
                .await?
                .map(|c| c.id);
            let input = ServiceInput {
                category_id: Some(category),
                slug: Some(s.slug.clone()),
                name: Some(s.name.clone()),
                description: Some(s.description.clone()),
                icon: s.icon.clone(),
                docker_image: Some(s.docker_image.clone()),
                container_port: Some(s.container_port),
                env_template: Some(s.env_template.clone()),
                volume_mount_path: s.volume_mount_path.clone(),
                tags: Some(s.tags.clone()),
                is_active: Some(true),
                is_public: Some(true),
                is_featured: Some(s.featured),
            };
            let service =
                catalog::insert_service(conn, &input.validate(true).map_err(invalid(&s.slug))?)
                    .await?;
            for (order, p) in s.plans.iter().enumerate() {
                let money = crate::money::MoneyInput {
                    amount: p.price.clone(),
                    currency: Some(seed.currency.clone()),
                };
                let input = PlanInput {
                    service_id: Some(service.id),
                    name: Some(p.name.clone()),
                    plan_type: Some(p.plan_type.clone()),
                    monthly_price: Some(money.parse("price", &seed.currency)),
                    cpu_milli: Some(p.cpu_milli),
                    memory_mb: Some(p.memory_mb),
                    storage_gb: Some(p.storage_gb),
                    total_quota: Some(p.total_quota),
                    max_instances_per_user: Some(p.max_instances_per_user),
                    sort_order: Some(order as i32),
                    is_active: Some(true),
                };
                catalog::insert_plan(conn, &input.validate(true).map_err(invalid(&s.slug))?)
                    .await?;
            }
            created.push(s.slug.clone());
        }
        Ok::<_, anyhow::Error>(created)
    })
    .await
}

/// The demo logins and, when `node_tokens` (only the embedded default), the new demo nodes' tokens.
pub fn banner(report: &SeedReport, node_tokens: bool) -> String {
    let mut out = String::from("Demo logins:\n");
    for u in demo_users() {
        out.push_str(&format!(
            "  {:<16} {:<14} ({})\n",
            u.email, u.password, u.role
        ));
    }
    if node_tokens && !report.nodes.is_empty() {
        out.push_str("Demo worker-node tokens (shown once; `podium node-agent --token ...`):\n");
        for (name, token) in &report.nodes {
            out.push_str(&format!("  {name:<14} {token}\n"));
        }
    }
    out
}
