//! One error type for the service layer. It becomes a GraphQL error carrying
//! `extensions.code`; internal causes are logged, never sent to the client.

use std::collections::BTreeMap;

use async_graphql::ErrorExtensions;

pub type AppResult<T> = Result<T, AppError>;

/// Field name (as the client spelled it, camelCase) -> messages.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

// Deliberately not `Display`: async-graphql converts any `Display` error by its text
// alone, which would drop the code. `From<AppError>` below keeps it.
#[derive(Debug)]
pub enum AppError {
    Unauthenticated(String),
    Forbidden(String),
    NotFound(String),
    BadUserInput {
        message: String,
        fields: FieldErrors,
    },
    Conflict(String),
    /// The wallet is short: by `shortfall` minor units of `currency`.
    PaymentRequired {
        message: String,
        shortfall: i64,
        currency: String,
    },
    RateLimited {
        retry_after_secs: u64,
    },
    /// The cause is logged, never sent.
    Internal(anyhow::Error),
}

impl AppError {
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Unauthenticated(_) => "UNAUTHENTICATED",
            AppError::Forbidden(_) => "FORBIDDEN",
            AppError::NotFound(_) => "NOT_FOUND",
            AppError::BadUserInput { .. } => "BAD_USER_INPUT",
            AppError::Conflict(_) => "CONFLICT",
            AppError::PaymentRequired { .. } => "PAYMENT_REQUIRED",
            AppError::RateLimited { .. } => "RATE_LIMITED",
            AppError::Internal(_) => "INTERNAL",
        }
    }

    /// What the client is told.
    pub fn message(&self) -> String {
        match self {
            AppError::Unauthenticated(m)
            | AppError::Forbidden(m)
            | AppError::NotFound(m)
            | AppError::Conflict(m)
            | AppError::PaymentRequired { message: m, .. } => m.clone(),
            AppError::BadUserInput { message, .. } => message.clone(),
            AppError::RateLimited { retry_after_secs } => {
                format!("too many requests, retry in {retry_after_secs} s")
            }
            AppError::Internal(_) => "internal error".into(),
        }
    }

    pub fn unauthenticated() -> Self {
        AppError::Unauthenticated("authentication required".into())
    }

    pub fn forbidden() -> Self {
        AppError::Forbidden("you are not allowed to do this".into())
    }

    /// Over a limit: retry after this many seconds.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        AppError::RateLimited { retry_after_secs }
    }

    pub fn not_found(what: &str) -> Self {
        AppError::NotFound(format!("{what} not found"))
    }

    /// A single-field validation error.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        AppError::BadUserInput {
            message: format!("{field}: {message}"),
            fields: BTreeMap::from([(field.to_string(), vec![message])]),
        }
    }

    /// The wallet holds `balance` but `needed` is due.
    pub fn payment_required(needed: i64, balance: i64, currency: &str) -> Self {
        let shortfall = needed - balance;
        let show = |minor| crate::money::format_amount(minor, currency);
        AppError::PaymentRequired {
            message: format!(
                "your wallet holds {} {currency} but {} {currency} is due: top up at least {} {currency}",
                show(balance),
                show(needed),
                show(shortfall)
            ),
            shortfall,
            currency: currency.to_string(),
        }
    }

    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        AppError::Internal(cause.into())
    }

    /// PostgreSQL broke a deadlock or a serialization conflict by aborting this
    /// transaction: running it again is safe and likely to succeed.
    pub fn is_transient(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        let AppError::Internal(cause) = self else {
            return false;
        };
        match cause.downcast_ref::<Error>() {
            Some(Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _)) => true,
            Some(Error::DatabaseError(_, info)) => info.message().contains("deadlock detected"),
            _ => false,
        }
    }
}

/// Evaluates a business step (one awaited transaction) again, up to three times in all,
/// when the database aborted it to break a deadlock or a serialization conflict; every
/// step locks or claims what it changes first, so a second run decides afresh. (A macro:
/// a generic function over async closures can't promise the `Send` futures resolvers need.)
#[macro_export]
macro_rules! retry_transient {
    ($step:expr) => {{
        let mut tries = 0;
        loop {
            tries += 1;
            match $step {
                Err(e) if $crate::error::AppError::is_transient(&e) && tries < 3 => {
                    tracing::warn!(
                        tries,
                        "a transaction was aborted to break a deadlock; running it again"
                    );
                }
                done => break done,
            }
        }
    }};
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::NotFound => AppError::NotFound("not found".into()),
            // The database keeps references whole; say which way the change broke one.
            Error::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info) => {
                // "update or delete on table ... violates foreign key constraint" (what it
                // broke is in the detail: "... is still referenced from table ...").
                if info.message().starts_with("update or delete") {
                    AppError::Conflict("it is still in use by other records".into())
                } else {
                    AppError::BadUserInput {
                        message: "refers to something that does not exist".into(),
                        fields: Default::default(),
                    }
                }
            }
            other => AppError::Internal(other.into()),
        }
    }
}

/// The cluster failed or refused: logged, never shown.
impl From<kube::Error> for AppError {
    fn from(e: kube::Error) -> Self {
        AppError::Internal(anyhow::Error::from(e).context("Kubernetes API"))
    }
}

impl AppError {
    /// For background work that reports `anyhow` errors (jobs): the whole cause.
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            AppError::Internal(e) => e,
            other => anyhow::anyhow!("{other:?}"),
        }
    }
}

impl From<crate::db::PoolError> for AppError {
    fn from(e: crate::db::PoolError) -> Self {
        AppError::Internal(anyhow::anyhow!("database pool: {e}"))
    }
}

impl From<validator::ValidationErrors> for AppError {
    fn from(errors: validator::ValidationErrors) -> Self {
        let mut fields = FieldErrors::new();
        for (field, errs) in errors.field_errors() {
            let messages = errs
                .iter()
                .map(|e| {
                    e.message
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| format!("is invalid ({})", e.code))
                })
                .collect();
            fields.insert(camel_case(&field), messages);
        }
        let summary = fields
            .iter()
            .map(|(f, m)| format!("{f}: {}", m.join(", ")))
            .collect::<Vec<_>>()
            .join("; ");
        AppError::BadUserInput {
            message: format!("invalid input: {summary}"),
            fields,
        }
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(e: AppError) -> Self {
        e.extend()
    }
}

impl ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        if let AppError::Internal(cause) = self {
            // Logged inside the request's span, so the line carries its request id.
            tracing::error!(error = ?cause, "internal error");
        }
        async_graphql::Error::new(self.message()).extend_with(|_, ext| {
            ext.set("code", self.code());
            match self {
                AppError::BadUserInput { fields, .. } => {
                    let mut map = async_graphql::indexmap::IndexMap::new();
                    for (field, messages) in fields {
                        map.insert(
                            async_graphql::Name::new(field),
                            async_graphql::Value::List(
                                messages
                                    .iter()
                                    .map(|m| async_graphql::Value::from(m.as_str()))
                                    .collect(),
                            ),
                        );
                    }
                    ext.set("fields", async_graphql::Value::Object(map));
                }
                AppError::RateLimited { retry_after_secs } => {
                    ext.set("retryAfter", *retry_after_secs)
                }
                AppError::PaymentRequired {
                    shortfall,
                    currency,
                    ..
                } => {
                    let mut money = async_graphql::indexmap::IndexMap::new();
                    money.insert(
                        async_graphql::Name::new("amount"),
                        async_graphql::Value::from(crate::money::format_amount(
                            *shortfall, currency,
                        )),
                    );
                    money.insert(
                        async_graphql::Name::new("currency"),
                        async_graphql::Value::from(currency.as_str()),
                    );
                    ext.set("shortfall", async_graphql::Value::Object(money));
                }
                _ => {}
            }
        })
    }
}

fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// Maps a unique-key violation to CONFLICT "`what` already exists"; other errors stay
/// internal. The unique index decides, so two racing requests cannot both succeed.
pub fn conflict_if_duplicate(what: &'static str) -> impl Fn(diesel::result::Error) -> AppError {
    move |e| match e {
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ) => AppError::Conflict(format!("{what} already exists")),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_cases_field_names() {
        assert_eq!(camel_case("new_password"), "newPassword");
        assert_eq!(camel_case("email"), "email");
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let e: async_graphql::Error = AppError::internal(anyhow::anyhow!("secret detail")).into();
        assert_eq!(e.message, "internal error");
    }
}
