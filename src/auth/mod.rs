//! Authentication: argon2 passwords, JWT access tokens, rotating refresh tokens in
//! session families, and the identity attached to each request.

pub mod cache;
pub mod email_tokens;
pub mod graphql;
pub mod identity;
pub mod jwt;
pub mod model;
pub mod password;
pub mod recovery;
pub mod service;

pub use identity::{Actor, Identity};

use sha2::{Digest, Sha256};

/// SHA-256 of an opaque token: what the database stores instead of the token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A new opaque token: `prefix` + 32 random bytes, base64url.
pub fn new_opaque_token(prefix: &str) -> String {
    use base64::Engine;
    use rand::TryRng;
    let mut bytes = [0u8; 32];
    rand::rngs::SysRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random source");
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}
