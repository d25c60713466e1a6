//! Worker nodes: the registry administrators manage, and the heartbeat path node agents use.

pub mod agent;
pub mod graphql;
pub mod heartbeat;
pub mod model;
pub mod service;

/// Node tokens look like `pdn_<43 base64url characters>`.
pub const TOKEN_PREFIX: &str = "pdn_";
