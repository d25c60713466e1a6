//! The time billing reads. Production runs on the system clock; tests move it forward
//! (renewals, dunning, grace, expiry) instead of waiting. Every billing decision takes its
//! "now" from here, never from the database's `now()`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};

/// The system clock plus an offset that only moves forward.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every clone of it) forward.
    pub fn advance(&self, by: Duration) {
        self.offset_ms
            .fetch_add(by.num_milliseconds().max(0), Ordering::Relaxed);
    }

    /// Moves this clock forward to `to` (never back).
    pub fn advance_to(&self, to: DateTime<Utc>) {
        let by = to - self.now();
        if by > Duration::zero() {
            self.advance(by);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advances_all_clones_and_never_goes_back() {
        let clock = Clock::default();
        let other = clock.clone();
        let before = other.now();
        clock.advance(Duration::days(31));
        assert!(other.now() - before >= Duration::days(31));
        let later = other.now();
        clock.advance_to(later - Duration::days(5));
        assert!(clock.now() >= later);
    }
}
