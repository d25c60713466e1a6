//! Stripe, as top-ups need it: customers, PaymentIntents, and webhook signatures.
//!
//! Customers go through async-stripe. PaymentIntents go through a plain form POST/GET with
//! reqwest into a small struct of the fields we read: async-stripe's `PaymentIntent` requires
//! fields (`amount_received`, `confirmation_method`, `payment_method_types`, ...) that the
//! localstripe fake our tests run against leaves out, so its typed responses fail to parse
//! there. For the same reason webhooks are verified here rather than by
//! `stripe_webhook::Webhook::construct_event`, which parses the whole event into those types
//! after checking the signature (localstripe's events also lack `pending_webhooks`).
//!
//! Amounts go to Stripe in the currency's ISO 4217 minor units, which `money.rs` stores:
//! that is Stripe's unit too for two-decimal currencies (IDR, USD, EUR, ...) and zero-decimal
//! ones (JPY, KRW, ...); Stripe's three-decimal currencies (KWD, BHD, ...) take only
//! multiples of 10, which `stripe_amount` enforces.

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use stripe::{IdempotencyKey, RequestStrategy, StripeRequest};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::config::BillingSettings;

/// How long one call to Stripe may take before it counts as failed.
const TIMEOUT: Duration = Duration::from_secs(20);

/// How old a webhook's signature may be (and how far in the future), in seconds.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

/// A Stripe API client for one secret key and base URL (`STRIPE_API_BASE`).
#[derive(Clone)]
pub struct Stripe {
    client: stripe::Client,
    http: reqwest::Client,
    base: String,
    key: String,
}

impl std::fmt::Debug for Stripe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stripe").field("base", &self.base).finish()
    }
}

/// A PaymentIntent's fields that top-ups read.
#[derive(Deserialize, Clone, Debug)]
pub struct PaymentIntent {
    pub id: String,
    pub status: String,
    pub amount: i64,
    /// Absent from localstripe's PaymentIntents.
    pub amount_received: Option<i64>,
    pub currency: String,
    pub client_secret: Option<String>,
    pub last_payment_error: Option<PaymentError>,
}

#[derive(Deserialize, Clone, Debug)]
pub struct PaymentError {
    pub message: Option<String>,
    pub code: Option<String>,
}

impl PaymentIntent {
    /// Why its last payment attempt failed, as Stripe put it.
    pub fn failure_message(&self) -> String {
        self.last_payment_error
            .as_ref()
            .and_then(|e| e.message.clone().or_else(|| e.code.clone()))
            .unwrap_or_else(|| "the payment failed".into())
    }
}

/// Stripe's error body: `{"error": {"message": ...}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl Stripe {
    /// The client for these settings, or `None` without `STRIPE_SECRET_KEY`.
    pub fn from_settings(billing: &BillingSettings) -> anyhow::Result<Option<Self>> {
        let Some(key) = billing.stripe_secret_key.as_deref() else {
            return Ok(None);
        };
        let base = billing.stripe_api_base.trim_end_matches('/').to_string();
        let client = stripe::ClientBuilder::new(key)
            .url(format!("{base}/"))
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| anyhow::anyhow!("STRIPE_API_BASE or STRIPE_SECRET_KEY is invalid: {e}"))?;
        let http = reqwest::Client::builder().timeout(TIMEOUT).build()?;
        Ok(Some(Stripe {
            client,
            http,
            base,
            key: key.to_string(),
        }))
    }

    /// Creates the customer that a user's top-ups are paid by. `idempotency_key` makes a
    /// retried (or concurrent) creation return the first customer.
    pub async fn create_customer(
        &self,
        user_id: Uuid,
        email: Option<&str>,
        idempotency_key: &str,
    ) -> anyhow::Result<String> {
        let metadata = HashMap::from([("podium_user_id".to_string(), user_id.to_string())]);
        let mut request = stripe_core::customer::CreateCustomer::new().metadata(metadata);
        if let Some(email) = email {
            request = request.email(email);
        }
        let customer = request
            .customize()
            .request_strategy(RequestStrategy::Idempotent(IdempotencyKey::new(
                idempotency_key,
            )?))
            .send(&self.client)
            .await
            .map_err(|e| anyhow::anyhow!("creating a Stripe customer: {e}"))?;
        Ok(customer.id.to_string())
    }

    /// Creates a PaymentIntent of `amount` (Stripe's minor units) for the customer.
    pub async fn create_payment_intent(
        &self,
        amount: i64,
        currency: &str,
        customer: &str,
        top_up_id: Uuid,
        user_id: Uuid,
        idempotency_key: &str,
    ) -> anyhow::Result<PaymentIntent> {
        let form = [
            ("amount", amount.to_string()),
            ("currency", currency.to_lowercase()),
            ("customer", customer.to_string()),
            ("metadata[podium_top_up_id]", top_up_id.to_string()),
            ("metadata[podium_user_id]", user_id.to_string()),
        ];
        let request = self
            .http
            .post(format!("{}/v1/payment_intents", self.base))
            .header("Idempotency-Key", idempotency_key)
            .form(&form);
        self.send(request, "creating a PaymentIntent").await
    }

    /// The PaymentIntent as Stripe has it now.
    pub async fn retrieve_payment_intent(&self, id: &str) -> anyhow::Result<PaymentIntent> {
        check_id(id)?;
        let request = self
            .http
            .get(format!("{}/v1/payment_intents/{id}", self.base));
        self.send(request, "retrieving a PaymentIntent").await
    }

    /// Cancels a PaymentIntent (one not yet paid), so it can no longer be paid.
    pub async fn cancel_payment_intent(&self, id: &str) -> anyhow::Result<PaymentIntent> {
        check_id(id)?;
        let request = self
            .http
            .post(format!("{}/v1/payment_intents/{id}/cancel", self.base));
        self.send(request, "cancelling a PaymentIntent").await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> anyhow::Result<PaymentIntent> {
        let response = request
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {}", e.without_url()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| anyhow::anyhow!("{what}: {}", e.without_url()))?;
        if !status.is_success() {
            let detail = serde_json::from_slice::<ErrorBody>(&body)
                .map(|b| {
                    format!(
                        "{}: {}",
                        b.error.kind.unwrap_or_default(),
                        b.error.message.unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            anyhow::bail!("{what}: Stripe answered {status} {detail}");
        }
        serde_json::from_slice(&body).map_err(|e| anyhow::anyhow!("{what}: unreadable answer: {e}"))
    }
}

/// An id goes into a path: accept only what Stripe's ids look like.
fn check_id(id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "not a PaymentIntent id"
    );
    Ok(())
}

/// Our minor units -> Stripe's `amount` (see the module's comment), or why it can't be.
pub fn stripe_amount(minor: i64, currency: &str) -> Result<i64, String> {
    const THREE_DECIMAL: [&str; 5] = ["BHD", "JOD", "KWD", "OMR", "TND"];
    if THREE_DECIMAL.contains(&currency) && minor % 10 != 0 {
        return Err(format!("Stripe takes {currency} amounts in steps of 0.010"));
    }
    Ok(minor)
}

/// Why a webhook's signature was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// No `t=` or no `v1=` in the header, or a malformed one.
    Malformed,
    /// No `v1` signature matches the payload under our secret.
    Mismatch,
    /// Signed longer ago (or further ahead) than the tolerance.
    Stale,
}

fn mac(secret: &str, timestamp: i64, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a `Stripe-Signature` header (`t=<unix time>,v1=<hex HMAC-SHA256 of "t.payload">`,
/// possibly several `v1` while a secret rotates) against the endpoint's `whsec_` secret,
/// comparing in constant time, within `SIGNATURE_TOLERANCE_SECS` of `now` (Unix seconds).
pub fn verify_signature(
    payload: &[u8],
    header: &str,
    secret: &str,
    now: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?)
            }
            Some(("v1", v1)) => signatures.push(v1),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let expected = hex(&mac(secret, timestamp, payload).finalize().into_bytes());
    let matches = signatures
        .iter()
        .any(|s| bool::from(s.as_bytes().ct_eq(expected.as_bytes())));
    if !matches {
        return Err(SignatureError::Mismatch);
    }
    if (now - timestamp).abs() > SIGNATURE_TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// The `Stripe-Signature` header Stripe would send for this payload at `timestamp`: for
/// tests and for replaying an event by hand.
pub fn signature_header(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let signature = hex(&mac(secret, timestamp, payload).finalize().into_bytes());
    format!("t={timestamp},v1={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_for_secret_payload_and_age() {
        let payload = br#"{"id":"evt_1"}"#;
        let header = signature_header(payload, "whsec_a", 1_000);
        assert_eq!(verify_signature(payload, &header, "whsec_a", 1_000), Ok(()));
        assert_eq!(verify_signature(payload, &header, "whsec_a", 1_300), Ok(()));
        assert_eq!(
            verify_signature(payload, &header, "whsec_a", 1_301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(payload, &header, "whsec_b", 1_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(br#"{"id":"evt_2"}"#, &header, "whsec_a", 1_000),
            Err(SignatureError::Mismatch)
        );
        // A rotated secret: any matching v1 will do.
        let both = format!("{header},v1=00ff");
        assert_eq!(verify_signature(payload, &both, "whsec_a", 1_000), Ok(()));
        assert_eq!(
            verify_signature(payload, "v1=abc", "whsec_a", 1_000),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(payload, "t=1000", "whsec_a", 1_000),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn three_decimal_currencies_take_steps_of_ten() {
        assert_eq!(stripe_amount(1_000_000, "IDR"), Ok(1_000_000));
        assert_eq!(stripe_amount(1_230, "KWD"), Ok(1_230));
        assert!(stripe_amount(1_234, "KWD").is_err());
    }
}
