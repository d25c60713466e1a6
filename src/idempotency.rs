//! Idempotency keys for money mutations: the same key from the same user within 24 h
//! returns the first result and does nothing more; the same key with other arguments is a
//! CONFLICT. The key is claimed inside the business step's transaction, so a retry racing
//! the first call waits for it to commit (or roll back, and then does the work itself).

use chrono::{DateTime, Duration, Utc};
use diesel::sql_types::{Bytea, Jsonb, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::db::Conn;
use crate::error::{AppError, AppResult};

/// How long a key is remembered.
pub const RETENTION: Duration = Duration::hours(24);

/// What claiming a key found.
pub enum Claim {
    /// First use: do the work, then `finish` with its result.
    Fresh,
    /// A finished earlier call with the same arguments: its result.
    Replay(serde_json::Value),
}

/// A key as the client sent it: 1 to 255 characters.
pub fn validate(key: Option<&str>) -> AppResult<Option<String>> {
    match key.map(str::trim) {
        None => Ok(None),
        Some(k) if k.is_empty() || k.len() > 255 => Err(AppError::field(
            "idempotencyKey",
            "must be between 1 and 255 characters",
        )),
        Some(k) => Ok(Some(k.to_string())),
    }
}

#[derive(diesel::QueryableByName)]
struct Stored {
    #[diesel(sql_type = Text)]
    operation: String,
    #[diesel(sql_type = Bytea)]
    request_hash: Vec<u8>,
    #[diesel(sql_type = Jsonb)]
    result: serde_json::Value,
}

#[derive(diesel::QueryableByName)]
struct Inserted {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    #[allow(dead_code)]
    fresh: bool,
}

/// Claims `key` for `operation` with these arguments (call inside the transaction that
/// does the work).
pub async fn claim(
    conn: &mut Conn,
    user_id: Uuid,
    key: &str,
    operation: &str,
    arguments: &impl Serialize,
    now: DateTime<Utc>,
) -> AppResult<Claim> {
    let hash = Sha256::digest(serde_json::to_vec(arguments).expect("arguments serialize")).to_vec();
    // An expired key is taken over as if new.
    let fresh = diesel::sql_query(
        "INSERT INTO idempotency_keys (user_id, key, operation, request_hash, created_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id, key) DO UPDATE
             SET operation = EXCLUDED.operation, request_hash = EXCLUDED.request_hash,
                 result = '{}'::jsonb, created_at = EXCLUDED.created_at
             WHERE idempotency_keys.created_at < $6
         RETURNING true AS fresh",
    )
    .bind::<SqlUuid, _>(user_id)
    .bind::<Text, _>(key)
    .bind::<Text, _>(operation)
    .bind::<Bytea, _>(&hash)
    .bind::<Timestamptz, _>(now)
    .bind::<Timestamptz, _>(now - RETENTION)
    .get_results::<Inserted>(conn)
    .await?;
    if !fresh.is_empty() {
        return Ok(Claim::Fresh);
    }
    let stored = diesel::sql_query(
        "SELECT operation, request_hash, result FROM idempotency_keys WHERE user_id = $1 AND key = $2",
    )
    .bind::<SqlUuid, _>(user_id)
    .bind::<Text, _>(key)
    .get_result::<Stored>(conn)
    .await?;
    if stored.operation != operation || stored.request_hash != hash {
        return Err(AppError::Conflict(
            "this idempotency key was already used for a different request".into(),
        ));
    }
    Ok(Claim::Replay(stored.result))
}

/// Records the result of the work a fresh claim did (same transaction).
pub async fn finish(
    conn: &mut Conn,
    user_id: Uuid,
    key: &str,
    result: &impl Serialize,
) -> AppResult<()> {
    diesel::sql_query("UPDATE idempotency_keys SET result = $3 WHERE user_id = $1 AND key = $2")
        .bind::<SqlUuid, _>(user_id)
        .bind::<Text, _>(key)
        .bind::<Jsonb, _>(serde_json::to_value(result).expect("results serialize"))
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets keys past their retention (the token-cleanup job calls it).
pub async fn prune(conn: &mut Conn, now: DateTime<Utc>) -> diesel::QueryResult<usize> {
    diesel::sql_query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind::<Timestamptz, _>(now - RETENTION)
        .execute(conn)
        .await
}
