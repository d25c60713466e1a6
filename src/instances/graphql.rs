//! The instance a subscription runs, as its owner sees it.

use async_graphql::{ID, Object};
use chrono::{DateTime, Utc};

use super::model::{DesiredState, InstanceStatus, ServiceInstance};

#[Object(name = "ServiceInstance")]
impl ServiceInstance {
    async fn id(&self) -> ID {
        ID(self.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.name
    }
    /// The DNS label: the instance answers at `<subdomain>.<base domain>`.
    async fn subdomain(&self) -> &str {
        &self.subdomain
    }
    /// Where the app will answer once it runs.
    async fn url(&self) -> Option<&str> {
        self.public_url.as_deref()
    }
    async fn status(&self) -> InstanceStatus {
        self.status
    }
    /// What the status means for people ("waiting to be placed on a worker node", ...).
    async fn status_message(&self) -> Option<&str> {
        self.status_message.as_deref()
    }
    /// What billing and its owner want it to be doing; `status` follows.
    async fn desired_state(&self) -> DesiredState {
        self.desired_state
    }
    async fn subscription_id(&self) -> ID {
        ID(self.subscription_id.to_string())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.updated_at
    }
}
