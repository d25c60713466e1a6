//! Mail. Every message goes through a durable outbox: it is written in the transaction of
//! what causes it (a registration, a renewal, an instance that came up) and sent by the
//! `email.send` job, which retries with backoff, so that a mail server that is down delays
//! mail and loses none. Delivery is at least once: a process killed after the server
//! accepted a message and before it was marked SENT sends it again, under the same
//! Message-ID (`<outbox-id@domain>`), which lets mail systems drop the copy.
//!
//! Transports: SMTP (`PODIUM_SMTP_URL`) or, without it (the embedded default), files under
//! `<PODIUM_DATA_DIR>/mail`. Templates (MiniJinja, HTML and plain text) are compiled in.

pub mod graphql;
pub mod model;
pub mod notify;
pub mod outbox;
pub mod preferences;
pub mod service;
pub mod templates;
pub mod transport;

pub use outbox::{Mail, Recipient, queue};
pub use templates::EmailTemplate;

/// Sends one outbox message (payload `{"emailId": ...}`).
pub const SEND_JOB: &str = "email.send";
