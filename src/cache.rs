//! What the in-memory read caches share: when an entry may be trusted, and the task that
//! keeps a cache in step with the live events (see `auth::cache`, `catalog::cache`).
//!
//! Every change to cached data publishes an event inside its transaction (database
//! triggers do it, so no write path can forget), and the replica that made the change
//! also forgets it locally right after commit. Entries are trusted only while this
//! replica's LISTEN connection is up; a (re)connection clears everything (events may have
//! been missed meanwhile), and no entry outlives `PODIUM_CACHE_TTL_SECS`, which bounds
//! staleness if the connection dies silently before its health check notices.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::events::{EventBus, Message};

/// Taken before reading the database: what was read may be stored only if nothing was
/// invalidated in between (the read may predate the change).
#[derive(Clone, Copy, Debug)]
pub struct Ticket(u64);

pub struct Freshness {
    ttl: Duration,
    /// Bumped by every invalidation and every change of the listener's state.
    epoch: AtomicU64,
    /// Whether this replica hears invalidations (and caching is on at all).
    enabled: AtomicBool,
}

impl Freshness {
    /// A zero `ttl` turns caching off.
    pub fn new(ttl: Duration) -> Self {
        Freshness {
            ttl,
            epoch: AtomicU64::new(0),
            enabled: AtomicBool::new(false),
        }
    }

    /// `None`: caching is off right now; read through and store nothing.
    pub fn ticket(&self) -> Option<Ticket> {
        self.enabled
            .load(Ordering::SeqCst)
            .then(|| Ticket(self.epoch.load(Ordering::SeqCst)))
    }

    /// Whether an entry stored at `at` may be used now.
    pub fn fresh(&self, at: Instant) -> bool {
        self.enabled.load(Ordering::Relaxed) && at.elapsed() < self.ttl
    }

    /// Whether what was read under `ticket` may be stored: call it under the cache's
    /// write lock, which `invalidate` callers take after bumping the epoch.
    pub fn storable(&self, ticket: Ticket) -> bool {
        self.enabled.load(Ordering::SeqCst) && self.epoch.load(Ordering::SeqCst) == ticket.0
    }

    /// Call before removing entries: reads in flight will not store what they read.
    pub fn invalidate(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn set_listening(&self, listening: bool) {
        self.invalidate();
        self.enabled
            .store(listening && !self.ttl.is_zero(), Ordering::SeqCst);
    }
}

/// A cache kept in step with the live events.
pub trait Invalidated: Send + Sync + 'static {
    fn freshness(&self) -> &Freshness;
    /// Applies one event (most are for other topics).
    fn apply(&self, message: &Message);
    /// Forgets everything.
    fn clear(&self);
}

/// Applies the events this replica hears to `cache` as they arrive, before any subscriber
/// hears them (so a subscription re-checking its caller sees every earlier change), and
/// clears it whenever the listener connects or disconnects.
pub fn spawn_invalidator<C: Invalidated>(
    cache: std::sync::Arc<C>,
    bus: &EventBus,
    mut stopping: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let observed = cache.clone();
    bus.observe_first(move |message| observed.apply(message));
    let mut listening = bus.listening();
    tokio::spawn(async move {
        let reset = |up: bool| {
            cache.freshness().set_listening(up);
            cache.clear();
        };
        reset(*listening.borrow_and_update());
        loop {
            tokio::select! {
                changed = listening.changed() => match changed {
                    Ok(()) => reset(*listening.borrow_and_update()),
                    Err(_) => return,
                },
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    })
}
