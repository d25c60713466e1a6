//! Queueing a message (inside the caller's transaction) and delivering it (the `email.send` job).

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::Utc;
use lettre::Message;
use lettre::message::{Mailbox, MultiPart};
use serde_json::json;
use uuid::Uuid;

use super::model::{self, Email, EmailStatus, NewEmail};
use super::templates::{self, Category, Common, EmailTemplate};
use super::transport::SendError;
use super::{SEND_JOB, preferences};
use crate::db::Conn;
use crate::error::AppResult;
use crate::state::AppState;
use crate::users::model::User;

/// Who a message goes to.
#[derive(Clone, Debug)]
pub struct Recipient {
    /// The account it is about; its notification switches apply.
    pub user_id: Option<Uuid>,
    pub email: String,
    pub name: String,
}

impl From<&User> for Recipient {
    /// An address nobody proved yet is greeted without the account's name: whoever
    /// registered it chose that name.
    fn from(user: &User) -> Self {
        let name = match user.email_verified_at {
            Some(_) => user.name.clone(),
            None => "there".into(),
        };
        Recipient {
            user_id: Some(user.id),
            email: user.email.clone(),
            name,
        }
    }
}

/// A message to queue.
pub struct Mail {
    pub template: EmailTemplate,
    pub to: Recipient,
    /// What the template prints (see `templates::sample_params`); never a secret.
    pub params: serde_json::Value,
    /// A one-time token for the message's link: sealed in the outbox until the message is sent.
    pub token: Option<String>,
    /// Set for a message that must go once (a reminder for one period, one dunning retry).
    pub unique_key: Option<String>,
}

impl Mail {
    pub fn new(
        template: EmailTemplate,
        to: impl Into<Recipient>,
        params: serde_json::Value,
    ) -> Self {
        Mail {
            template,
            to: to.into(),
            params,
            token: None,
            unique_key: None,
        }
    }

    pub fn once(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    pub fn with_token(mut self, token: String) -> Self {
        self.token = Some(token);
        self
    }

    /// A renewal reminder that warns of a low balance is a money message: always sent.
    fn category(&self) -> Category {
        match self.template {
            EmailTemplate::RenewalReminder if self.params["low_balance"] == json!(true) => {
                Category::Essential
            }
            t => t.category(),
        }
    }
}

fn common<'a>(state: &'a AppState, to: &'a Recipient, link: Option<String>) -> Common<'a> {
    let settings = &state.settings;
    Common {
        platform: &settings.platform_name,
        public_url: &settings.public_url,
        portal_url: &settings.mail.portal_url,
        name: &to.name,
        email: &to.email,
        link,
    }
}

fn link(state: &AppState, template: EmailTemplate, token: Option<&str>) -> Option<String> {
    let (path, token) = (template.link_path()?, token?);
    Some(format!(
        "{}{path}?token={token}",
        state.settings.mail.portal_url
    ))
}

/// Queues `mail` and its `email.send` job on `conn`: call it inside the transaction of what
/// causes the message, so that both commit or neither. Returns the outbox id; `None` when
/// the recipient switched this kind of message off, or its unique key was used before.
pub async fn queue(conn: &mut Conn, state: &AppState, mail: Mail) -> AppResult<Option<Uuid>> {
    if let Some(user_id) = mail.to.user_id
        && !preferences::wants(conn, user_id, mail.category()).await?
    {
        return Ok(None);
    }
    let row = Prepared::of(state, mail)?;
    let fresh = model::insert(conn, &row.new_email()).await?;
    if !fresh {
        return Ok(None);
    }
    enqueue_send(conn, state.settings.mail.max_attempts, row.id, "").await?;
    Ok(Some(row.id))
}

/// [`queue`] for many messages at once (a bulk step's), in two statements whatever their
/// number; returns how many were queued.
pub async fn queue_many(conn: &mut Conn, state: &AppState, mails: Vec<Mail>) -> AppResult<usize> {
    let mut rows = Vec::with_capacity(mails.len());
    for mail in mails {
        if let Some(user_id) = mail.to.user_id
            && !preferences::wants(conn, user_id, mail.category()).await?
        {
            continue;
        }
        rows.push(Prepared::of(state, mail)?);
    }
    if rows.is_empty() {
        return Ok(0);
    }
    let fresh = model::insert_many(
        conn,
        &rows.iter().map(Prepared::new_email).collect::<Vec<_>>(),
    )
    .await?;
    let jobs: Vec<(serde_json::Value, String)> = fresh
        .iter()
        .map(|id| (json!({ "emailId": id }), format!("{SEND_JOB}:{id}")))
        .collect();
    crate::jobs::model::enqueue_many(
        conn,
        SEND_JOB,
        &jobs,
        Utc::now(),
        state.settings.mail.max_attempts,
    )
    .await?;
    Ok(fresh.len())
}

/// An outbox row ready to insert: its subject rendered, its token sealed.
struct Prepared {
    id: Uuid,
    mail: Mail,
    subject: String,
    params: serde_json::Value,
    secret: Option<Vec<u8>>,
}

impl Prepared {
    fn of(state: &AppState, mut mail: Mail) -> AppResult<Self> {
        let id = Uuid::new_v4();
        let mut params = match std::mem::take(&mut mail.params) {
            serde_json::Value::Object(map) => serde_json::Value::Object(map),
            _ => json!({}),
        };
        // Rendered again at send time, with the name it was queued for.
        params["name"] = json!(mail.to.name);
        // The subject holds no secret: rendered with a placeholder link.
        let placeholder = link(state, mail.template, mail.token.as_ref().map(|_| "…"));
        // A template fault must never undo the business step the message is about: the
        // message is queued anyway and fails at send time, where administrators see it.
        let subject = templates::subject(
            mail.template,
            &common(state, &mail.to, placeholder),
            &params,
        )
        .unwrap_or_else(|e| {
            tracing::error!(template = mail.template.as_str(), error = %e, "email subject template failed");
            format!("{} ({})", state.settings.platform_name, mail.template.as_str())
        });
        let secret = mail.token.take().map(|token| {
            state
                .sealer
                .seal(id, &BTreeMap::from([("token".to_string(), token)]))
        });
        Ok(Prepared {
            id,
            mail,
            subject,
            params,
            secret,
        })
    }

    fn new_email(&self) -> NewEmail<'_> {
        NewEmail {
            id: self.id,
            user_id: self.mail.to.user_id,
            recipient: &self.mail.to.email,
            template: self.mail.template,
            subject: &self.subject,
            params: &self.params,
            secret: self.secret.clone(),
            unique_key: self.mail.unique_key.as_deref(),
        }
    }
}

/// The job that sends message `id`; `round` tells an administrator's retry from the first.
pub(super) async fn enqueue_send(
    conn: &mut Conn,
    max_attempts: i32,
    id: Uuid,
    round: &str,
) -> AppResult<()> {
    crate::jobs::model::enqueue_tries(
        conn,
        SEND_JOB,
        json!({ "emailId": id }),
        Utc::now(),
        Some(&format!("{SEND_JOB}:{id}{round}")),
        max_attempts,
    )
    .await?;
    Ok(())
}

/// The `email.send` job: renders and hands over message `id`. A refusal (5xx) fails it for
/// good; anything else is retried by the job queue until `last_try`, then FAILED.
pub async fn deliver(state: &AppState, id: Uuid, last_try: bool) -> anyhow::Result<()> {
    let mut conn = state.pool.get().await?;
    let Some(email) = model::find(&mut conn, id).await? else {
        return Ok(());
    };
    if email.status != EmailStatus::Queued {
        return Ok(());
    }
    if let Some(ttl) = email.template.link_ttl()
        && (email.secret.is_none() || email.created_at + ttl <= Utc::now())
    {
        model::abandon(
            &mut conn,
            id,
            "its one-time link expired before it could be sent; the user can ask for a new one",
        )
        .await?;
        tracing::warn!(email_id = %id, "mail not sent: its link expired while it waited");
        return Ok(());
    }
    // No connection is held while talking to the mail server.
    drop(conn);
    let outcome = match build(state, &email) {
        Ok(message) => state.mailer.send(&message, &file_name(&email)).await,
        Err(e) => Err(SendError::Permanent(format!("{e:#}"))),
    };
    let mut conn = state.pool.get().await?;
    match outcome {
        Ok(()) => {
            model::mark_sent(&mut conn, id).await?;
            tracing::info!(email_id = %id, template = email.template.as_str(), "mail sent");
            Ok(())
        }
        Err(SendError::Permanent(error)) => {
            model::record_failure(&mut conn, id, &error, true).await?;
            tracing::warn!(email_id = %id, %error, "mail refused: not retried");
            Ok(())
        }
        Err(SendError::Transient(error)) => {
            model::record_failure(&mut conn, id, &error, last_try).await?;
            anyhow::bail!("mail not sent: {error}")
        }
    }
}

/// An `email.send` job that ended without recording its outcome (its last try was lost to a
/// killed worker, a panic, a database outage): its message becomes FAILED, so that it shows
/// among the failures and `retryEmail` can send it.
pub async fn job_gave_up(conn: &mut Conn, payload: &serde_json::Value, why: &str) {
    let Some(id) = payload["emailId"]
        .as_str()
        .and_then(|s| s.parse::<Uuid>().ok())
    else {
        return;
    };
    if let Err(e) = model::abandon(conn, id, why).await {
        tracing::warn!(email_id = %id, error = %e, "marking an abandoned message FAILED");
    }
}

/// Sortable by time and unique: `<created>-<id>`.
fn file_name(email: &Email) -> String {
    format!(
        "{}-{}",
        email.created_at.format("%Y%m%dT%H%M%S%.6fZ"),
        email.id
    )
}

fn build(state: &AppState, email: &Email) -> anyhow::Result<Message> {
    let settings = &state.settings.mail;
    let token = match &email.secret {
        None => None,
        Some(sealed) => Some(
            state
                .sealer
                .open(email.id, sealed)
                .and_then(|mut m| m.remove("token"))
                .context(
                    "its one-time token can't be unsealed (was PODIUM_CREDENTIALS_KEY changed?)",
                )?,
        ),
    };
    let user_name = email.params["name"].as_str();
    let to = Recipient {
        user_id: email.user_id,
        email: email.recipient.clone(),
        name: user_name.unwrap_or("there").to_string(),
    };
    let rendered = templates::render(
        email.template,
        &common(state, &to, link(state, email.template, token.as_deref())),
        &email.params,
    )
    .with_context(|| format!("rendering {:?}", email.template))?;
    let from: Mailbox = settings.from.parse().context("PODIUM_MAIL_FROM")?;
    let domain = from.email.domain().to_string();
    let message = Message::builder()
        .from(from)
        .to(email.recipient.parse().context("the recipient's address")?)
        .subject(rendered.subject)
        // Stable per outbox row: a message sent twice (at least once) is recognisably one.
        .message_id(Some(format!("<{}@{domain}>", email.id)))
        .date(email.created_at.into())
        .multipart(MultiPart::alternative_plain_html(
            rendered.text,
            rendered.html,
        ))?;
    Ok(message)
}
