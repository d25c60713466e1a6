//! The audit trail: one row per administrative change, written in the change's transaction.

pub mod graphql;
pub mod model;
pub mod service;

pub use service::{audited, record};
