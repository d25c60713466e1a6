//! Service subscriptions: buying a plan, changing and cancelling it, and the billing
//! cycle (renewals, dunning, suspension, expiry) that runs them month after month.

pub mod bulk;
pub mod cycle;
pub mod events;
pub mod graphql;
pub mod model;
pub mod reminders;
pub mod service;
