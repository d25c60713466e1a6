//! Instance credentials at rest. The rendered environment (generated secrets included) is
//! kept in the database sealed with ChaCha20-Poly1305 under a key derived from
//! `PODIUM_CREDENTIALS_KEY` (default: `PODIUM_JWT_SECRET`). It is the source of truth: a
//! Secret lost from the cluster (or an embedded cluster that started empty) is written
//! again with the same passwords, and the owner reads them without asking the cluster.
//! Changing the key makes the stored credentials unreadable: say so before rotating it.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use rand::RngExt;
use sha2::Sha256;
use uuid::Uuid;

const NONCE_LEN: usize = 12;

pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl Sealer {
    pub fn from_secret(secret: &str) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(b"podium instance credentials v1");
        let key = mac.finalize().into_bytes();
        Sealer {
            cipher: ChaCha20Poly1305::new(&Key::try_from(key.as_slice()).expect("32 bytes")),
        }
    }

    /// A random nonce, then the ciphertext of the environment as JSON, bound to its
    /// instance (sealed credentials copied to another row do not open there).
    pub fn seal(&self, instance: Uuid, env: &BTreeMap<String, String>) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce);
        let plain = serde_json::to_vec(env).expect("strings serialize");
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: instance.as_bytes(),
                },
            )
            .expect("sealing never fails");
        [nonce.as_slice(), &sealed].concat()
    }

    /// `None` when the bytes were not sealed with this key (or were tampered with).
    pub fn open(&self, instance: Uuid, sealed: &[u8]) -> Option<BTreeMap<String, String>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).ok()?;
        let plain = self
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: body,
                    aad: instance.as_bytes(),
                },
            )
            .ok()?;
        serde_json::from_slice(&plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_credentials_open_only_with_their_key() {
        let env = BTreeMap::from([("PASSWORD".to_string(), "s3cret".to_string())]);
        let sealer = Sealer::from_secret("one key");
        let (id, other) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = sealer.seal(id, &env);
        assert!(!String::from_utf8_lossy(&sealed).contains("s3cret"));
        assert_eq!(sealer.open(id, &sealed), Some(env.clone()));
        assert_ne!(sealer.seal(id, &env), sealed, "a fresh nonce each time");
        assert_eq!(Sealer::from_secret("another key").open(id, &sealed), None);
        assert_eq!(sealer.open(other, &sealed), None, "bound to its instance");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(sealer.open(id, &tampered), None);
    }
}
