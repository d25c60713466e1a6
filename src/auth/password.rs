//! argon2id password hashing (OWASP parameters) off the async threads.

use std::sync::LazyLock;

use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::error::{AppError, AppResult};

/// OWASP: argon2id, m = 19 MiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters"),
    )
}

/// Verified against when the email is unknown, so that costs what a wrong password costs.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    hash_blocking("dummy password for timing").expect("hashing the dummy password")
});

fn hash_blocking(password: &str) -> AppResult<String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AppError::internal(anyhow::anyhow!("hashing a password: {e}")))
}

/// Hashes in flight at once: each holds 19 MiB, so a burst of logins queues here instead
/// of exhausting memory or starving the blocking pool.
static HASHING: LazyLock<tokio::sync::Semaphore> = LazyLock::new(|| {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::sync::Semaphore::new(cpus.max(2))
});

/// Runs one argon2 computation on the blocking pool, within the concurrency bound.
async fn run_bounded<T: Send + 'static>(
    work: impl FnOnce() -> AppResult<T> + Send + 'static,
) -> AppResult<T> {
    let _permit = HASHING.acquire().await.map_err(AppError::internal)?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(AppError::internal)?
}

pub async fn hash(password: &str) -> AppResult<String> {
    let password = password.to_string();
    run_bounded(move || hash_blocking(&password)).await
}

/// Checks `password` against `stored`; with no stored hash it spends the same time and fails.
pub async fn verify(password: &str, stored: Option<&str>) -> AppResult<bool> {
    let password = password.to_string();
    let stored = stored.map(str::to_string);
    run_bounded(move || {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| DUMMY_HASH.clone());
        let parsed = PasswordHash::new(&stored).map_err(|e| {
            AppError::internal(anyhow::anyhow!("stored password hash is malformed: {e}"))
        })?;
        Ok(known
            && argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
    })
    .await
}

/// Computes the dummy hash ahead of the first login, so it doesn't skew that one's timing.
pub fn warm_up() {
    LazyLock::force(&DUMMY_HASH);
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hashes_verify_and_differ() {
        let a = super::hash("correct horse 1").await.unwrap();
        let b = super::hash("correct horse 1").await.unwrap();
        assert_ne!(a, b, "salted");
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(super::verify("correct horse 1", Some(&a)).await.unwrap());
        assert!(!super::verify("wrong horse 1", Some(&a)).await.unwrap());
        assert!(!super::verify("correct horse 1", None).await.unwrap());
    }
}
