//! The catalog: what customers can buy (services and their plans, by category).

pub mod cache;
pub mod graphql;
pub mod model;
pub mod service;
