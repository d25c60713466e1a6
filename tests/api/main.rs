//! Integration tests: one binary, a fresh PostgreSQL database per test, in parallel.

mod auth;
mod billing;
mod billing_cycle;
mod binary;
mod caching;
mod catalog;
mod cost;
mod embedded_cluster;
mod helpers;
mod infra;
mod instances;
mod integrity;
mod invoices;
mod jobs;
mod limits;
mod mail;
mod mail_helpers;
mod nodes;
mod outbox;
mod over_http;
mod rest;
mod schema;
mod socket;
mod subscriptions;
mod topups;
mod users;
