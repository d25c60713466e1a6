//! The public catalog in memory: what customers and anonymous visitors may see, as one
//! snapshot, so that the catalog page costs no query. Dropped on every catalog change
//! through the live events (see `crate::cache`).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

use super::model::{Category, Plan, Service};
use crate::cache::{Freshness, Invalidated, Ticket};
use crate::events::Message;
use crate::pagination::{Page, PageArgs, Total};

/// Published (by database triggers) on any change to categories, services or plans.
pub const TOPIC: &str = "catalog.changed";

pub struct PublicCatalog {
    /// Active, public services with an active plan, newest first (the services' order).
    pub services: Vec<Service>,
    /// Every plan of those services, inactive ones too, in display order.
    pub plans: HashMap<Uuid, Vec<Plan>>,
    /// Every category, inactive ones too, in display order.
    pub categories: Vec<Category>,
}

impl PublicCatalog {
    /// A customer's page of services: what `services` answers from the database.
    pub fn page(
        &self,
        category_slug: Option<&str>,
        featured: Option<bool>,
        args: &PageArgs,
    ) -> Page<Service> {
        let category = match category_slug {
            None => None,
            Some(slug) => match self.categories.iter().find(|c| c.slug == slug) {
                Some(c) if c.is_active => Some(c.id),
                _ => return Page::from_rows(Vec::new(), args, Total::known(0)),
            },
        };
        let matching = self.services.iter().filter(|s| {
            category.is_none_or(|c| s.category_id == Some(c))
                && featured.is_none_or(|f| s.is_featured == f)
        });
        let total = matching.clone().count() as i64;
        let rows = matching
            .filter(|s| {
                args.after
                    .is_none_or(|a| (s.created_at, s.id) < (a.created_at, a.id))
            })
            .take(args.first + 1)
            .cloned()
            .collect();
        Page::from_rows(rows, args, Total::known(total))
    }
}

pub struct CatalogCache {
    freshness: Freshness,
    snapshot: RwLock<Option<(Arc<PublicCatalog>, Instant)>>,
    /// One load at a time: concurrent misses wait for it instead of all loading.
    pub loading: tokio::sync::Mutex<()>,
}

impl CatalogCache {
    pub fn new(ttl: Duration) -> Self {
        CatalogCache {
            freshness: Freshness::new(ttl),
            snapshot: RwLock::new(None),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    pub fn current(&self) -> Option<Arc<PublicCatalog>> {
        let snapshot = self.snapshot.read().unwrap_or_else(|e| e.into_inner());
        match &*snapshot {
            Some((catalog, at)) if self.freshness.fresh(*at) => Some(catalog.clone()),
            _ => None,
        }
    }

    /// Take before loading; `None`: caching is off, read through.
    pub fn ticket(&self) -> Option<Ticket> {
        self.freshness.ticket()
    }

    pub fn store(&self, ticket: Ticket, catalog: Arc<PublicCatalog>) {
        let mut snapshot = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        if self.freshness.storable(ticket) {
            *snapshot = Some((catalog, Instant::now()));
        }
    }
}

impl Invalidated for CatalogCache {
    fn freshness(&self) -> &Freshness {
        &self.freshness
    }

    fn apply(&self, message: &Message) {
        if message.topic == TOPIC {
            self.clear();
        }
    }

    /// Also what the replica that changed the catalog calls after commit.
    fn clear(&self) {
        self.freshness.invalidate();
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
