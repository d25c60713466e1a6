//! HS256 access tokens. The algorithm is pinned: a token signed with anything else,
//! or with `none`, is rejected.

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const ISSUER: &str = "podium";

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    /// The role at issue time, for clients; the server always reads the current role.
    pub role: String,
    /// The session (refresh-token family) this token belongs to.
    pub sid: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
    pub iss: String,
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: chrono::Duration,
}

impl JwtKeys {
    pub fn new(secret: &str, ttl: std::time::Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
        validation.leeway = 5;
        JwtKeys {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
            ttl: chrono::Duration::from_std(ttl).expect("token lifetime fits"),
        }
    }

    pub fn issue(
        &self,
        user_id: Uuid,
        role: &str,
        session_id: Uuid,
    ) -> anyhow::Result<(String, DateTime<Utc>)> {
        let now = Utc::now();
        let expires = now + self.ttl;
        let claims = Claims {
            sub: user_id,
            role: role.to_string(),
            sid: session_id,
            iat: now.timestamp(),
            exp: expires.timestamp(),
            jti: Uuid::new_v4(),
            iss: ISSUER.into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok((
            token,
            DateTime::from_timestamp(claims.exp, 0).unwrap_or(expires),
        ))
    }

    /// The claims of a valid, unexpired token signed by us with HS256.
    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn keys() -> JwtKeys {
        JwtKeys::new(
            "0123456789abcdef0123456789abcdef",
            std::time::Duration::from_secs(60),
        )
    }

    #[test]
    fn round_trip() {
        let k = keys();
        let (token, _) = k.issue(Uuid::new_v4(), "USER", Uuid::new_v4()).unwrap();
        assert_eq!(k.verify(&token).unwrap().role, "USER");
    }

    #[test]
    fn rejects_alg_none_and_other_secrets() {
        let k = keys();
        let (token, _) = k.issue(Uuid::new_v4(), "USER", Uuid::new_v4()).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none_header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        assert!(k.verify(&format!("{none_header}.{payload}.")).is_err());
        let other = JwtKeys::new(
            "another secret that is long enough!!",
            std::time::Duration::from_secs(60),
        );
        assert!(other.verify(&token).is_err());
    }
}
