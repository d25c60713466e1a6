//! Integration tests: one binary, a fresh PostgreSQL database per test, in parallel.

mod auth;
mod binary;
mod caching;
mod catalog;
mod helpers;
mod infra;
mod jobs;
mod nodes;
mod rest;
mod schema;
mod subscriptions;
mod users;
