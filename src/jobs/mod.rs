//! The durable job queue in PostgreSQL and the cron scheduler that feeds it. Any number
//! of replicas may run workers and schedulers: jobs are claimed with FOR UPDATE SKIP
//! LOCKED and held by a lease their worker renews; every worker requeues jobs whose lease
//! expired (a killed process), and only the lease holder records an outcome. Each cron tick
//! is enqueued once (a unique key), and a tick missed during downtime runs once on the next
//! start. Finished jobs are pruned after `PODIUM_JOB_RETENTION_DAYS`.
//!
//! A handler must be idempotent: a worker that loses its lease (say, cut off from the
//! database for longer than the lease) may still be running when another takes the job
//! over. Billing handlers get that from unique keys per period and row locks.

pub mod graphql;
pub mod model;
pub mod runner;
pub mod scheduler;
pub mod service;

/// Job kinds. A kind's handler lives in `runner::run`.
pub const NODE_STALENESS: &str = "node.staleness";
pub const TOKEN_CLEANUP: &str = "auth.token_cleanup";
pub const JOBS_PRUNE: &str = "jobs.prune";
/// Renew (or end) subscriptions whose period has ended.
pub const BILLING_RENEWALS: &str = "billing.renewals";
/// Retry, suspend and expire unpaid subscriptions.
pub const BILLING_DUNNING: &str = "billing.dunning";
/// Settle PENDING top-ups whose webhook never came, by asking Stripe.
pub const BILLING_RECONCILE_TOP_UPS: &str = crate::billing::topup::RECONCILE_JOB;
/// Queue renewal reminders (with low-balance warnings) and expiry warnings.
pub const MAIL_REMINDERS: &str = "mail.reminders";
/// Look at every instance again: the level-triggered safety net of the provisioner.
pub const INSTANCES_RESYNC: &str = "instances.resync";
/// Sleeps, optionally panics: for watching workers and leases (see `runner`).
pub const DIAGNOSTIC_SLEEP: &str = "diagnostic.sleep";
