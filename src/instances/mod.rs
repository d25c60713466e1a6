//! Service instances: what a subscription runs. Billing and users set an instance's
//! desired state; the provisioner reconciles the cluster to it and writes its status.

pub mod events;
pub mod graphql;
pub mod model;
pub mod service;
