//! Podium: the GraphQL API server of a platform that sells managed app instances.

pub mod audit;
pub mod auth;
pub mod bench;
pub mod billing;
pub mod cache;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod graphql;
pub mod http;
pub mod idempotency;
pub mod instances;
pub mod jobs;
pub mod money;
pub mod nodes;
pub mod pagination;
pub mod ratelimit;
pub mod seed;
pub mod startup;
pub mod state;
pub mod subscriptions;
pub mod telemetry;
pub mod users;
