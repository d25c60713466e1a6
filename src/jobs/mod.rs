//! The durable job queue in PostgreSQL and the cron scheduler that feeds it. Any number
//! of replicas may run workers and schedulers: jobs are claimed with FOR UPDATE SKIP
//! LOCKED, each cron tick is enqueued once (a unique key), and a tick missed during
//! downtime runs once on the next start.

pub mod graphql;
pub mod model;
pub mod runner;
pub mod scheduler;
pub mod service;

/// Job kinds. A kind's handler lives in `runner::run`.
pub const NODE_STALENESS: &str = "node.staleness";
pub const TOKEN_CLEANUP: &str = "auth.token_cleanup";
