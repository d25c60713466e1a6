//! Message templates: for each kind a plain-text template (`templates/email/<name>.txt`, whose
//! `subject` block is the subject) and an HTML one (`<name>.html`), compiled into the binary.
//! A missing parameter is an error, not an empty gap (`UndefinedBehavior::Strict`).

use std::sync::OnceLock;

use diesel::deserialize::FromSqlRow;
use diesel::expression::AsExpression;
use diesel::sql_types::Text;
use minijinja::{Environment, UndefinedBehavior, Value, context};

/// What a message is about.
#[derive(async_graphql::Enum, AsExpression, FromSqlRow, Clone, Copy, Debug, PartialEq, Eq)]
#[diesel(sql_type = Text)]
pub enum EmailTemplate {
    VerifyEmail,
    PasswordReset,
    PasswordChanged,
    Welcome,
    /// Someone tried to register with an address that has an account.
    RegistrationAttempt,
    SubscriptionActivated,
    InstanceReady,
    InstanceFailed,
    RenewalPaid,
    /// Renewal in a few days, with a low-balance warning when the wallet won't cover it.
    RenewalReminder,
    PaymentFailed,
    Suspended,
    ExpiringSoon,
    Expired,
    TopUpReceived,
}

crate::text_enum!(EmailTemplate {
    VerifyEmail => "VERIFY_EMAIL",
    PasswordReset => "PASSWORD_RESET",
    PasswordChanged => "PASSWORD_CHANGED",
    Welcome => "WELCOME",
    RegistrationAttempt => "REGISTRATION_ATTEMPT",
    SubscriptionActivated => "SUBSCRIPTION_ACTIVATED",
    InstanceReady => "INSTANCE_READY",
    InstanceFailed => "INSTANCE_FAILED",
    RenewalPaid => "RENEWAL_PAID",
    RenewalReminder => "RENEWAL_REMINDER",
    PaymentFailed => "PAYMENT_FAILED",
    Suspended => "SUSPENDED",
    ExpiringSoon => "EXPIRING_SOON",
    Expired => "EXPIRED",
    TopUpReceived => "TOP_UP_RECEIVED",
});

/// Whether a user can switch a message off, and with which switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Category {
    /// Account and money messages: always sent.
    Essential,
    /// An instance failed.
    InstanceAlerts,
    /// A renewal coming that the wallet covers (the low-balance warning is essential).
    RenewalReminders,
}

#[cfg(test)]
const ALL: [EmailTemplate; 15] = [
    EmailTemplate::VerifyEmail,
    EmailTemplate::PasswordReset,
    EmailTemplate::PasswordChanged,
    EmailTemplate::Welcome,
    EmailTemplate::RegistrationAttempt,
    EmailTemplate::SubscriptionActivated,
    EmailTemplate::InstanceReady,
    EmailTemplate::InstanceFailed,
    EmailTemplate::RenewalPaid,
    EmailTemplate::RenewalReminder,
    EmailTemplate::PaymentFailed,
    EmailTemplate::Suspended,
    EmailTemplate::ExpiringSoon,
    EmailTemplate::Expired,
    EmailTemplate::TopUpReceived,
];

impl EmailTemplate {
    /// The file name stem under `templates/email`.
    fn file(self) -> &'static str {
        match self {
            EmailTemplate::VerifyEmail => "verify_email",
            EmailTemplate::PasswordReset => "password_reset",
            EmailTemplate::PasswordChanged => "password_changed",
            EmailTemplate::Welcome => "welcome",
            EmailTemplate::RegistrationAttempt => "registration_attempt",
            EmailTemplate::SubscriptionActivated => "subscription_activated",
            EmailTemplate::InstanceReady => "instance_ready",
            EmailTemplate::InstanceFailed => "instance_failed",
            EmailTemplate::RenewalPaid => "renewal_paid",
            EmailTemplate::RenewalReminder => "renewal_reminder",
            EmailTemplate::PaymentFailed => "payment_failed",
            EmailTemplate::Suspended => "suspended",
            EmailTemplate::ExpiringSoon => "expiring_soon",
            EmailTemplate::Expired => "expired",
            EmailTemplate::TopUpReceived => "top_up_received",
        }
    }

    /// The page (under the portal's URL) a message's one-time token opens.
    pub fn link_path(self) -> Option<&'static str> {
        match self {
            EmailTemplate::VerifyEmail => Some("/verify-email"),
            EmailTemplate::PasswordReset => Some("/reset-password"),
            _ => None,
        }
    }

    /// How long the one-time link of a message lives: a message still unsent by then is
    /// not sent at all (its link would be dead).
    pub fn link_ttl(self) -> Option<chrono::Duration> {
        match self {
            EmailTemplate::VerifyEmail => Some(chrono::Duration::hours(24)),
            EmailTemplate::PasswordReset => Some(chrono::Duration::hours(1)),
            _ => None,
        }
    }

    /// A renewal reminder is essential when it warns of a low balance: see `Mail::category`.
    pub fn category(self) -> Category {
        match self {
            EmailTemplate::InstanceFailed => Category::InstanceAlerts,
            EmailTemplate::RenewalReminder => Category::RenewalReminders,
            _ => Category::Essential,
        }
    }
}

/// Every template, compiled once.
fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        macro_rules! sources {
            ($($name:literal),+ $(,)?) => {
                [$(
                    (concat!($name, ".txt"), include_str!(concat!("../../templates/email/", $name, ".txt"))),
                    (concat!($name, ".html"), include_str!(concat!("../../templates/email/", $name, ".html"))),
                )+]
            };
        }
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // `.html` templates escape what they print; `.txt` ones don't.
        for (name, source) in sources!(
            "layout", "verify_email", "password_reset", "password_changed", "welcome",
            "registration_attempt", "subscription_activated", "instance_ready", "instance_failed",
            "renewal_paid", "renewal_reminder", "payment_failed", "suspended", "expiring_soon",
            "expired", "top_up_received",
        ) {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("template {name}: {e:#}"));
        }
        env
    })
}

/// What every message can print, besides its own parameters.
pub struct Common<'a> {
    pub platform: &'a str,
    pub public_url: &'a str,
    pub portal_url: &'a str,
    /// The recipient's name and address.
    pub name: &'a str,
    pub email: &'a str,
    /// The one-time link, for messages that carry one.
    pub link: Option<String>,
}

fn context_for(common: &Common, params: &serde_json::Value) -> Value {
    context! {
        platform => common.platform,
        public_url => common.public_url,
        portal_url => common.portal_url,
        name => common.name,
        email => common.email,
        link => common.link.as_deref(),
        ..Value::from(minijinja::value::Serde(params))
    }
}

pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The plain-text message and its subject block.
fn text_and_subject(
    template: EmailTemplate,
    ctx: Value,
) -> Result<(String, String), minijinja::Error> {
    let mut captured = environment()
        .get_template(&format!("{}.txt", template.file()))?
        .render_captured(ctx)?;
    let subject = captured.with_state_mut(|state| state.render_block("subject"))?;
    // One line, whatever the template's whitespace.
    let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    Ok((captured.into_output().trim_start().to_string(), subject))
}

/// The subject alone (the outbox keeps it for administrators to read).
pub fn subject(
    template: EmailTemplate,
    common: &Common,
    params: &serde_json::Value,
) -> Result<String, minijinja::Error> {
    Ok(text_and_subject(template, context_for(common, params))?.1)
}

pub fn render(
    template: EmailTemplate,
    common: &Common,
    params: &serde_json::Value,
) -> Result<Rendered, minijinja::Error> {
    let ctx = context_for(common, params);
    let (text, subject) = text_and_subject(template, ctx.clone())?;
    let html = environment()
        .get_template(&format!("{}.html", template.file()))?
        .render(ctx)?;
    Ok(Rendered {
        subject,
        text,
        html,
    })
}

/// Parameters every template renders with: the contract between the code that queues a
/// message and its template (tested below).
pub fn sample_params(template: EmailTemplate) -> serde_json::Value {
    use serde_json::json;
    let subscription = json!({
        "service": "n8n", "plan": "Starter", "amount": "150000.00 IDR",
        "balance": "20000.00 IDR", "shortfall": "130000.00 IDR",
    });
    let mut params = match template {
        EmailTemplate::VerifyEmail
        | EmailTemplate::PasswordReset
        | EmailTemplate::PasswordChanged
        | EmailTemplate::Welcome
        | EmailTemplate::RegistrationAttempt => json!({}),
        EmailTemplate::SubscriptionActivated => json!({
            "instance": "my-n8n", "invoice_number": "INV-2026-000001", "period_end": "2026-12-22",
        }),
        EmailTemplate::InstanceReady => {
            json!({ "instance": "my-n8n", "service": "n8n", "url": "https://my-n8n.apps.example.com" })
        }
        EmailTemplate::InstanceFailed => json!({
            "instance": "my-n8n", "service": "n8n", "message": "the app keeps crashing",
        }),
        EmailTemplate::RenewalPaid => json!({
            "invoice_number": "INV-2026-000002", "invoice_url": "https://podium.example.com/invoices/1",
            "period_end": "2027-01-22",
        }),
        EmailTemplate::RenewalReminder => json!({ "renews_on": "2026-12-22", "low_balance": true }),
        EmailTemplate::PaymentFailed => json!({ "suspend_on": "2026-12-29" }),
        EmailTemplate::Suspended => json!({ "expire_on": "2027-01-28" }),
        EmailTemplate::ExpiringSoon => {
            json!({ "suspended_on": "2026-12-29", "expire_on": "2027-01-28" })
        }
        EmailTemplate::Expired => json!({}),
        EmailTemplate::TopUpReceived => {
            json!({ "amount": "500000.00 IDR", "balance": "520000.00 IDR" })
        }
    };
    if matches!(
        template,
        EmailTemplate::SubscriptionActivated
            | EmailTemplate::RenewalPaid
            | EmailTemplate::RenewalReminder
            | EmailTemplate::PaymentFailed
            | EmailTemplate::Suspended
            | EmailTemplate::ExpiringSoon
            | EmailTemplate::Expired
    ) {
        for (k, v) in subscription.as_object().expect("an object") {
            params[k] = v.clone();
        }
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(link: Option<String>) -> Common<'static> {
        Common {
            platform: "Podium",
            public_url: "https://podium.example.com",
            portal_url: "https://portal.example.com",
            name: "Ann <Admin>",
            email: "ann@example.com",
            link,
        }
    }

    #[test]
    fn every_template_renders_with_its_parameters() {
        for template in ALL {
            let link = template
                .link_path()
                .map(|p| format!("https://portal.example.com{p}?token=pdv_abc"));
            let r = render(template, &common(link.clone()), &sample_params(template))
                .unwrap_or_else(|e| panic!("{template:?}: {e:#}"));
            assert!(
                !r.subject.is_empty() && !r.subject.contains('\n'),
                "{template:?}"
            );
            assert!(
                r.text.starts_with("Hello Ann <Admin>,"),
                "{template:?}: {}",
                r.text
            );
            assert!(
                !r.text.contains(&r.subject),
                "{template:?}: the subject is not in the body"
            );
            assert!(
                r.html.contains("Hello Ann &lt;Admin&gt;,"),
                "{template:?}: escaped"
            );
            if let Some(link) = link {
                assert!(
                    r.text.contains(&link) && r.html.contains("token=pdv_abc"),
                    "{template:?}"
                );
            }
        }
    }

    #[test]
    fn a_missing_parameter_is_an_error() {
        let e = render(
            EmailTemplate::TopUpReceived,
            &common(None),
            &serde_json::json!({}),
        );
        assert!(e.is_err());
    }

    #[test]
    fn the_low_balance_warning_shows_only_when_the_wallet_falls_short() {
        let mut params = sample_params(EmailTemplate::RenewalReminder);
        let warned = render(EmailTemplate::RenewalReminder, &common(None), &params).unwrap();
        assert!(
            warned.subject.starts_with("Top up before"),
            "{}",
            warned.subject
        );
        assert!(warned.text.contains("does not cover it"));
        params["low_balance"] = false.into();
        let calm = render(EmailTemplate::RenewalReminder, &common(None), &params).unwrap();
        assert_eq!(calm.subject, "n8n renews on 2026-12-22");
        assert!(calm.text.contains("which covers it"));
    }
}
