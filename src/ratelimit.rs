//! Request rate limits and login-failure counters. In-process: each replica counts on its
//! own, which bounds abuse per replica (documented in the README).
//!
//! Request limits are GCRA buckets from `governor` (a check costs the same however many
//! keys there are); idle keys are dropped by `prune`, which the server runs periodically,
//! so memory stays bounded by the keys active within one window.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use uuid::Uuid;

use crate::config::Settings;

/// `limit` requests per `window` per key, refilled continuously.
pub struct RateLimiter<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(limit: u32, window: Duration) -> Self {
        let burst = NonZeroU32::new(limit.max(1)).expect("at least one");
        let period = (window / burst.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .expect("a positive period")
            .allow_burst(burst);
        RateLimiter {
            limiter: governor::RateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one request for `key`; `Err(seconds to wait)` when over the limit.
    pub fn hit(&self, key: &K) -> Result<(), u64> {
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()).as_secs().max(1))
    }

    /// Forgets keys whose buckets are full again (indistinguishable from new ones).
    pub fn prune(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The key a client address is limited by: IPv6 clients by their /64, since one host
/// usually holds a whole /64 and could otherwise pick a fresh address per request.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
    }
}

/// Counts failures per key within a window, with reservations: an attempt reserves a slot
/// before the password is checked and gives it back on success, so parallel guesses can't
/// all pass the check before any of them is counted.
pub struct FailureCounter {
    limit: u32,
    window: Duration,
    entries: Mutex<HashMap<String, (Instant, u32)>>,
}

/// A reserved attempt; `release` returns the slot (a success, or a failure that was not the
/// caller's guess, such as a database error); dropping it keeps it as a failure.
pub struct Reservation<'a> {
    counter: &'a FailureCounter,
    key: String,
    started: Instant,
}

impl Reservation<'_> {
    pub fn release(self) {
        let mut entries = self.counter.lock();
        if let Some(entry) = entries.get_mut(&self.key)
            && entry.0 == self.started
        {
            entry.1 = entry.1.saturating_sub(1);
        }
    }
}

impl FailureCounter {
    /// Entries kept at most; beyond it, expired ones are dropped first, then the oldest.
    const MAX_KEYS: usize = 100_000;

    pub fn new(limit: u32, window: Duration) -> Self {
        FailureCounter {
            limit,
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, u32)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves one attempt for `key`, or `Err(seconds to wait)` when its failures
    /// (and attempts in flight) reached the limit in the current window.
    pub fn reserve(&self, key: String) -> Result<Reservation<'_>, u64> {
        let now = Instant::now();
        let mut entries = self.lock();
        if entries.len() >= Self::MAX_KEYS && !entries.contains_key(&key) {
            entries.retain(|_, (start, _)| now.duration_since(*start) < self.window);
            if entries.len() >= Self::MAX_KEYS {
                // Still full of live windows: drop the oldest tenth at once, so that this
                // O(n) pass happens once per many insertions, not on each.
                let mut starts: Vec<Instant> = entries.values().map(|(start, _)| *start).collect();
                let cut = starts.len() / 10;
                let (_, oldest_kept, _) = starts.select_nth_unstable(cut);
                let oldest_kept = *oldest_kept;
                entries.retain(|_, (start, _)| *start >= oldest_kept);
            }
        }
        let entry = entries.entry(key.clone()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            let left = self.window.saturating_sub(now.duration_since(entry.0));
            return Err(left.as_secs().max(1));
        }
        entry.1 += 1;
        Ok(Reservation {
            counter: self,
            key,
            started: entry.0,
        })
    }

    /// Counts one failure for `key` outright (a counter that only slows down, never refuses).
    pub fn record(&self, key: String) {
        // A reservation not given back is a failure.
        let _ = self.reserve(key);
    }

    /// Failures counted for `key` in its current window.
    pub fn count(&self, key: &str) -> u32 {
        let now = Instant::now();
        self.lock()
            .get(key)
            .filter(|(start, _)| now.duration_since(*start) < self.window)
            .map_or(0, |(_, n)| *n)
    }

    pub fn prune(&self) {
        let now = Instant::now();
        self.lock()
            .retain(|_, (start, _)| now.duration_since(*start) < self.window);
    }
}

/// Open connections per key (WebSockets per client address), with a ceiling.
#[derive(Default)]
pub struct OpenCounts {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open connection; dropping it takes it off the count.
pub struct Opened {
    counts: Arc<OpenCounts>,
    key: IpAddr,
}

impl OpenCounts {
    /// Counts one more open connection for `key`, unless it has `max` already.
    pub fn open(self: &Arc<Self>, key: IpAddr, max: usize) -> Option<Opened> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Opened {
            counts: self.clone(),
            key,
        })
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Every limiter the server uses.
pub struct Limits {
    /// Requests per client address (nodes with a known token are counted per node instead).
    pub per_ip: RateLimiter<IpAddr>,
    pub per_user: RateLimiter<Uuid>,
    /// Heartbeats and other requests per worker node: a fleet behind one NAT all gets through.
    pub per_node: RateLimiter<Uuid>,
    /// Login, registration and password attempts per client address.
    pub login_attempts_per_ip: RateLimiter<IpAddr>,
    /// Failed logins per (email, address): the lock-out a guesser meets.
    pub login_failures_per_pair: FailureCounter,
    /// Failed logins per email from any address: past a threshold every attempt is slowed
    /// down, never refused, so a flood from many addresses can't lock the owner out.
    pub login_failures_per_email: FailureCounter,
    /// Wrong current passwords given to `changePassword`, per user.
    pub password_failures_per_user: FailureCounter,
    /// Open WebSockets per client address.
    pub open_sockets: Arc<OpenCounts>,
    /// Requests that send account mail (password resets, verification links) per client
    /// address; each address's own mail is also capped in the database.
    pub mail_requests_per_ip: RateLimiter<IpAddr>,
}

impl Limits {
    pub fn from_settings(s: &Settings) -> Self {
        Limits {
            per_ip: RateLimiter::new(s.rate_limit_per_ip, s.rate_limit_window),
            per_user: RateLimiter::new(s.rate_limit_per_user, s.rate_limit_window),
            per_node: RateLimiter::new(s.rate_limit_per_node, s.rate_limit_window),
            login_attempts_per_ip: RateLimiter::new(s.login_max_attempts_per_ip, s.login_window),
            login_failures_per_pair: FailureCounter::new(
                s.login_max_failures_per_email,
                s.login_window,
            ),
            // Only counts: it never refuses (see `login_slowdown`).
            login_failures_per_email: FailureCounter::new(u32::MAX, s.login_window),
            password_failures_per_user: FailureCounter::new(
                s.login_max_failures_per_email,
                s.login_window,
            ),
            open_sockets: Arc::default(),
            mail_requests_per_ip: RateLimiter::new(s.mail.requests_per_ip, s.login_window),
        }
    }

    /// Drops idle keys; run periodically.
    pub fn prune(&self) {
        self.per_ip.prune();
        self.per_user.prune();
        self.per_node.prune();
        self.login_attempts_per_ip.prune();
        self.login_failures_per_pair.prune();
        self.login_failures_per_email.prune();
        self.password_failures_per_user.prune();
    }
}

/// How long a login for an email with `failures` recent failures (from any address) waits
/// before its password is checked: nothing up to `free`, then doubling from 250 ms, capped
/// at 4 s. It slows a distributed guesser without ever refusing the owner.
pub fn login_slowdown(failures: u32, free: u32) -> Duration {
    match failures.checked_sub(free) {
        None | Some(0) => Duration::ZERO,
        Some(over) => Duration::from_millis(250u64 << (over - 1).min(4)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key() {
        let l = RateLimiter::new(2, Duration::from_secs(60));
        assert!(l.hit(&1).is_ok());
        assert!(l.hit(&1).is_ok());
        let wait = l.hit(&1).unwrap_err();
        assert!((1..=60).contains(&wait));
        assert!(l.hit(&2).is_ok());
    }

    #[test]
    fn reservations_count_failures_and_return_successes() {
        let c = FailureCounter::new(2, Duration::from_secs(60));
        let a = c.reserve("k".into()).unwrap();
        let b = c.reserve("k".into()).unwrap();
        // Both slots are taken while the two attempts are in flight.
        assert!(c.reserve("k".into()).is_err());
        a.release();
        drop(b); // a failure
        assert_eq!(c.count("k"), 1);
        assert!(c.reserve("k".into()).is_ok());
        assert!(c.reserve("k".into()).is_err());
        assert!(c.reserve("other".into()).is_ok());
    }

    #[test]
    fn a_full_counter_drops_its_oldest_tenth_and_stays_bounded() {
        let c = FailureCounter::new(5, Duration::from_secs(60));
        for i in 0..FailureCounter::MAX_KEYS {
            c.record(format!("k{i}"));
        }
        assert_eq!(c.lock().len(), FailureCounter::MAX_KEYS);
        c.record("newcomer".into());
        let len = c.lock().len();
        assert!(len <= FailureCounter::MAX_KEYS * 9 / 10 + 1, "{len}");
        assert_eq!(c.count("newcomer"), 1);
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(address_key(v4), v4);
    }

    #[test]
    fn slowdown_grows_and_is_capped() {
        assert_eq!(login_slowdown(5, 10), Duration::ZERO);
        assert_eq!(login_slowdown(10, 10), Duration::ZERO);
        assert_eq!(login_slowdown(11, 10), Duration::from_millis(250));
        assert_eq!(login_slowdown(12, 10), Duration::from_millis(500));
        assert_eq!(login_slowdown(100, 10), Duration::from_secs(4));
    }
}
