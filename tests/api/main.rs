//! Integration tests: one binary, a fresh PostgreSQL database per test, in parallel.

mod auth;
mod binary;
mod helpers;
mod infra;
mod rest;
mod schema;
mod subscriptions;
mod users;
