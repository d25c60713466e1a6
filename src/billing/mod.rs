//! Money: the wallet and its ledger, Stripe top-ups (`topup`, `stripe`), invoices. Subscriptions (and the
//! billing cycle that renews them) live in `subscriptions/` and move money only through
//! `wallet::post` and `invoice::issue`.

pub mod events;
pub mod graphql;
pub mod integrity;
pub mod invoice;
pub mod model;
pub mod service;
pub mod stats;
pub mod stripe;
pub mod topup;
pub mod wallet;
