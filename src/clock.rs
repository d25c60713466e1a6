//! The time billing reads. Production runs on the system clock; tests move it forward
//! (renewals, dunning, grace, expiry) or stop it at an instant (proration to the second)
//! instead of waiting. Every billing decision takes its "now" from here, never from the
//! database's `now()`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Duration, Utc};

/// Not stopped.
const RUNNING: i64 = i64::MIN;

/// The system clock plus an offset that only moves forward; or stopped at an instant.
#[derive(Clone, Debug)]
pub struct Clock {
    offset_us: Arc<AtomicI64>,
    stopped_at_us: Arc<AtomicI64>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            offset_us: Arc::new(AtomicI64::new(0)),
            stopped_at_us: Arc::new(AtomicI64::new(RUNNING)),
        }
    }
}

impl Clock {
    /// Whole microseconds, as PostgreSQL stores them: a time read here and written there
    /// compares equal when read back.
    pub fn now(&self) -> DateTime<Utc> {
        let micros = match self.stopped_at_us.load(Ordering::Relaxed) {
            RUNNING => Utc::now().timestamp_micros() + self.offset_us.load(Ordering::Relaxed),
            at => at,
        };
        DateTime::from_timestamp_micros(micros).expect("a valid instant")
    }

    /// Moves this clock (and every clone of it) forward.
    pub fn advance(&self, by: Duration) {
        // Microseconds: what PostgreSQL keeps of a timestamp.
        let by = by.num_microseconds().unwrap_or(i64::MAX).max(0);
        self.offset_us.fetch_add(by, Ordering::Relaxed);
        let _ = self
            .stopped_at_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |at| {
                (at != RUNNING).then_some(at + by)
            });
    }

    /// Moves this clock forward to `to` (never back).
    pub fn advance_to(&self, to: DateTime<Utc>) {
        let by = to - self.now();
        if by > Duration::zero() {
            self.advance(by);
        }
    }

    /// Stops the clock at its current reading: it moves only when advanced.
    pub fn stop(&self) {
        let now = self.now().timestamp_micros();
        self.stopped_at_us.store(now, Ordering::Relaxed);
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

    #[test]
    fn a_stopped_clock_moves_only_when_advanced() {
        let clock = Clock::default();
        clock.stop();
        let at = clock.now();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(clock.now(), at);
        clock.advance(Duration::seconds(90));
        assert_eq!(clock.now(), at + Duration::seconds(90));
    }
}
