//! Embedded migrations, applied under a PostgreSQL advisory lock so that several
//! servers starting against one database at once don't race.

use anyhow::Context;
use diesel::sql_types::{BigInt, Text};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Arbitrary but fixed: every Podium server takes the same lock.
const MIGRATION_LOCK_KEY: i64 = 0x0070_6f64_6975_6d00;

/// Applies pending migrations; returns how many ran.
pub async fn run(url: &str) -> anyhow::Result<usize> {
    let url = url.to_string();
    // diesel_migrations is synchronous: run it on a blocking thread over the async connection.
    tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        use diesel::{Connection, RunQueryDsl};
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)
            .context("connecting to the database to migrate")?;
        diesel::sql_query("SELECT pg_advisory_lock($1)")
            .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
            .execute(&mut conn)
            .context("taking the migration lock")?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.len())
            .map_err(|e| anyhow::anyhow!("applying migrations: {e}"));
        // Closing the connection releases the lock too; unlock explicitly all the same.
        let _ = diesel::sql_query("SELECT pg_advisory_unlock($1)")
            .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
            .execute(&mut conn);
        applied
    })
    .await
    .context("migration task panicked")?
}

/// The version of the newest embedded migration; `/readyz` checks the database has it.
pub fn latest_version() -> String {
    use diesel::migration::MigrationSource;
    MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .expect("embedded migrations are readable")
        .iter()
        .map(|m| m.name().version().to_string())
        .max()
        .unwrap_or_default()
}

/// Whether the database has applied the newest embedded migration.
pub async fn is_current(conn: &mut AsyncPgConnection, latest: &str) -> anyhow::Result<bool> {
    use diesel::QueryableByName;
    use diesel_async::RunQueryDsl;
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        found: bool,
    }
    let row: Found = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM __diesel_schema_migrations WHERE version = $1) AS found",
    )
    .bind::<Text, _>(latest)
    .get_result(conn)
    .await?;
    Ok(row.found)
}
