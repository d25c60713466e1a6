//! Users: profiles and the administrators' user management.

pub mod graphql;
pub mod model;
pub mod service;
