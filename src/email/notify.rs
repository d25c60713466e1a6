//! Billing and instance notifications: one function per message, each building the
//! template's parameters (see `templates::sample_params`) from the rows of the event and
//! queueing it with [`queue`]. The services call them inside the transaction of the event,
//! so that a message is queued exactly when its event commits. Every message that must not
//! repeat carries a unique key naming its occasion (a period, a retry, a suspension): a
//! step run twice, or a reminder job run twice, queues it once.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::outbox::{Mail, Recipient, queue};
use super::templates::EmailTemplate;
use crate::billing::model::TopUp;
use crate::db::Conn;
use crate::error::{AppError, AppResult};
use crate::instances::model::ServiceInstance;
use crate::state::AppState;
use crate::subscriptions::model::Subscription;

/// `12345.00 IDR` (no thousands separator).
pub fn money(minor: i64, currency: &str) -> String {
    format!(
        "{} {currency}",
        crate::money::format_amount(minor, currency)
    )
}

fn day(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

async fn recipient(conn: &mut Conn, user_id: Uuid) -> AppResult<Recipient> {
    let user = crate::users::model::find(conn, user_id)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("no user {user_id} to mail")))?;
    Ok(Recipient::from(&user))
}

/// What every subscription message says about it, as of the event.
pub struct Billed<'a> {
    /// The subscription as the event left it.
    pub sub: &'a Subscription,
    pub service: &'a str,
    pub plan: &'a str,
    /// What its period costs (or cost), tax included.
    pub amount: i64,
    /// The wallet's balance after the event.
    pub balance: i64,
}

impl Billed<'_> {
    /// When the subscription was suspended (it names the suspension).
    fn suspended_since(&self) -> DateTime<Utc> {
        self.sub.suspended_at.unwrap_or(self.sub.updated_at)
    }

    fn params(&self) -> Value {
        let currency = &self.sub.currency;
        json!({
            "service": self.service,
            "plan": self.plan,
            "amount": money(self.amount, currency),
            "balance": money(self.balance, currency),
            "shortfall": money((self.amount - self.balance).max(0), currency),
        })
    }

    fn mail(&self, to: Recipient, template: EmailTemplate, extra: Value, key: String) -> Mail {
        let mut params = self.params();
        if let (Some(p), Value::Object(extra)) = (params.as_object_mut(), extra) {
            p.extend(extra);
        }
        Mail::new(template, to, params).once(key)
    }

    async fn send(
        &self,
        conn: &mut Conn,
        state: &AppState,
        template: EmailTemplate,
        extra: Value,
        key: String,
    ) -> AppResult<Option<Uuid>> {
        let to = recipient(conn, self.sub.user_id).await?;
        queue(conn, state, self.mail(to, template, extra, key)).await
    }
}

/// The subscription was bought (its first period paid).
pub async fn subscription_activated(
    conn: &mut Conn,
    state: &AppState,
    billed: &Billed<'_>,
    instance: &ServiceInstance,
    invoice_number: &str,
) -> AppResult<Option<Uuid>> {
    let sub = billed.sub;
    let extra = json!({
        "instance": instance.name,
        "invoice_number": invoice_number,
        "period_end": day(sub.current_period_end),
    });
    let key = format!("subscription-activated:{}", sub.id);
    billed
        .send(
            conn,
            state,
            EmailTemplate::SubscriptionActivated,
            extra,
            key,
        )
        .await
}

/// The printable invoice's address (see `http::invoice`).
fn invoice_url(state: &AppState, invoice_id: Uuid) -> String {
    format!(
        "{}/invoices/{invoice_id}",
        state.settings.public_url.trim_end_matches('/')
    )
}

/// A period was paid: a renewal, or an overdue invoice settled.
pub async fn renewal_paid(
    conn: &mut Conn,
    state: &AppState,
    billed: &Billed<'_>,
    invoice_id: Uuid,
    invoice_number: &str,
) -> AppResult<Option<Uuid>> {
    let to = recipient(conn, billed.sub.user_id).await?;
    let mail = renewal_paid_mail(state, billed, to, invoice_id, invoice_number);
    queue(conn, state, mail).await
}

/// The "renewal paid" message, for a bulk step to queue with others (`queue_many`).
pub fn renewal_paid_mail(
    state: &AppState,
    billed: &Billed<'_>,
    to: Recipient,
    invoice_id: Uuid,
    invoice_number: &str,
) -> Mail {
    let extra = json!({
        "invoice_number": invoice_number,
        "invoice_url": invoice_url(state, invoice_id),
        "period_end": day(billed.sub.current_period_end),
    });
    let key = format!("renewal-paid:{invoice_id}");
    billed.mail(to, EmailTemplate::RenewalPaid, extra, key)
}

/// A renewal charge failed (the first time, or at a dunning retry): once per period and
/// attempt (`failed_charges` of the subscription as the event left it).
pub async fn payment_failed(
    conn: &mut Conn,
    state: &AppState,
    billed: &Billed<'_>,
) -> AppResult<Option<Uuid>> {
    let sub = billed.sub;
    let suspend_on = sub.grace_until.unwrap_or(sub.current_period_end);
    let extra = json!({ "suspend_on": day(suspend_on) });
    // A PAST_DUE subscription's period stays the unpaid one's predecessor: its end names it.
    let key = format!(
        "payment-failed:{}:{}:{}",
        sub.id,
        sub.current_period_end.timestamp(),
        sub.failed_charges
    );
    billed
        .send(conn, state, EmailTemplate::PaymentFailed, extra, key)
        .await
}

/// When a subscription suspended for non-payment expires (as `subscriptions::cycle` decides).
pub fn expires_at(state: &AppState, suspended_at: DateTime<Utc>) -> DateTime<Utc> {
    suspended_at + Duration::days(i64::from(state.settings.billing.expire_after_days))
}

/// Suspended after its grace period ran out unpaid.
pub async fn suspended(
    conn: &mut Conn,
    state: &AppState,
    billed: &Billed<'_>,
) -> AppResult<Option<Uuid>> {
    let (sub, since) = (billed.sub, billed.suspended_since());
    let extra = json!({ "expire_on": day(expires_at(state, since)) });
    let key = format!("suspended:{}:{}", sub.id, since.timestamp());
    billed
        .send(conn, state, EmailTemplate::Suspended, extra, key)
        .await
}

/// A suspended subscription expires within days.
pub async fn expiring_soon(
    conn: &mut Conn,
    state: &AppState,
    billed: &Billed<'_>,
) -> AppResult<Option<Uuid>> {
    let (sub, since) = (billed.sub, billed.suspended_since());
    let extra = json!({
        "suspended_on": day(since),
        "expire_on": day(expires_at(state, since)),
    });
    let key = format!("expiring-soon:{}:{}", sub.id, since.timestamp());
    billed
        .send(conn, state, EmailTemplate::ExpiringSoon, extra, key)
        .await
}

/// Expired (its instance and data deleted).
pub async fn expired(
    conn: &mut Conn,
    state: &AppState,
    billed: &Billed<'_>,
) -> AppResult<Option<Uuid>> {
    let key = format!("expired:{}", billed.sub.id);
    billed
        .send(conn, state, EmailTemplate::Expired, json!({}), key)
        .await
}

/// The period ends within days and renews then: once per period. Warns (and cannot be
/// switched off) when the balance does not cover the renewal.
pub async fn renewal_reminder(
    conn: &mut Conn,
    state: &AppState,
    billed: &Billed<'_>,
) -> AppResult<Option<Uuid>> {
    let sub = billed.sub;
    let extra = json!({
        "renews_on": day(sub.current_period_end),
        "low_balance": billed.balance < billed.amount,
    });
    // The warning has a key of its own: a wallet emptied after a calm reminder still
    // gets it.
    let kind = if billed.balance < billed.amount {
        "renewal-low-balance"
    } else {
        "renewal-reminder"
    };
    let key = format!("{kind}:{}:{}", sub.id, sub.current_period_end.timestamp());
    billed
        .send(conn, state, EmailTemplate::RenewalReminder, extra, key)
        .await
}

/// An instance is RUNNING for the first time: its address.
pub async fn instance_ready(
    conn: &mut Conn,
    state: &AppState,
    instance: &ServiceInstance,
    service: &str,
) -> AppResult<Option<Uuid>> {
    let url = instance.public_url.clone().unwrap_or_default();
    let params = json!({ "instance": instance.name, "service": service, "url": url });
    let to = recipient(conn, instance.user_id).await?;
    let mail = Mail::new(EmailTemplate::InstanceReady, to, params)
        .once(format!("instance-ready:{}", instance.id));
    queue(conn, state, mail).await
}

/// An instance FAILED: at most once an hour per instance and generation (what it should
/// be), so an instance that flaps between RUNNING and FAILED does not flood its owner, and
/// one that fails again later is told again.
pub async fn instance_failed(
    conn: &mut Conn,
    state: &AppState,
    instance: &ServiceInstance,
    service: &str,
) -> AppResult<Option<Uuid>> {
    let message = instance.status_message.clone().unwrap_or_default();
    let params = json!({ "instance": instance.name, "service": service, "message": message });
    let to = recipient(conn, instance.user_id).await?;
    let hour = state.clock.now().timestamp() / 3600;
    let mail = Mail::new(EmailTemplate::InstanceFailed, to, params).once(format!(
        "instance-failed:{}:{}:{hour}",
        instance.id, instance.generation
    ));
    queue(conn, state, mail).await
}

/// A top-up was credited to the wallet, which now holds `balance`.
pub async fn top_up_received(
    conn: &mut Conn,
    state: &AppState,
    top_up: &TopUp,
    balance: i64,
) -> AppResult<Option<Uuid>> {
    let params = json!({
        "amount": money(top_up.amount, &top_up.currency),
        "balance": money(balance, &top_up.currency),
    });
    let to = recipient(conn, top_up.user_id).await?;
    let mail = Mail::new(EmailTemplate::TopUpReceived, to, params)
        .once(format!("top-up-received:{}", top_up.id));
    queue(conn, state, mail).await
}
