//! Demo data from `seeds/` (embedded in the binary), loaded idempotently.

use serde::Deserialize;

use crate::db::DbPool;
use crate::users::model::Role;
use crate::users::service::{AccountInput, ensure_account};

const USERS: &str = include_str!("../seeds/users.json");

#[derive(Deserialize)]
pub struct SeedUser {
    pub name: String,
    pub email: String,
    pub password: String,
    pub role: String,
}

pub fn demo_users() -> Vec<SeedUser> {
    serde_json::from_str(USERS).expect("seeds/users.json is valid")
}

/// Loads the seed data; what exists already is left as it is. Returns the emails created.
pub async fn run(pool: &DbPool) -> anyhow::Result<Vec<String>> {
    let mut conn = pool.get().await?;
    let mut created = Vec::new();
    for user in demo_users() {
        let role = match user.role.as_str() {
            "ADMINISTRATOR" => Role::Administrator,
            _ => Role::User,
        };
        let account = AccountInput {
            name: user.name,
            email: user.email.clone(),
            password: user.password,
        };
        if ensure_account(&mut conn, account, role)
            .await
            .map_err(|e| anyhow::anyhow!("seeding {}: {e:?}", user.email))?
        {
            created.push(user.email);
        }
    }
    Ok(created)
}

/// The demo logins, for the first start's banner.
pub fn demo_logins() -> String {
    demo_users()
        .iter()
        .map(|u| format!("  {:<16} {:<14} ({})", u.email, u.password, u.role))
        .collect::<Vec<_>>()
        .join("\n")
}
