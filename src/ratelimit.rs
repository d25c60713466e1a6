//! Fixed-window rate limiters keyed by client IP, user or email. In-process: each
//! replica counts on its own, which bounds abuse per replica (documented in the README).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Settings;

pub struct RateLimiter {
    limit: u32,
    window: Duration,
    windows: Mutex<HashMap<String, (Instant, u32)>>,
}

impl RateLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            limit,
            window,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one hit for `key`; `Err(seconds to wait)` when over the limit.
    pub fn hit(&self, key: &str) -> Result<(), u64> {
        self.check(key, 1)
    }

    /// Whether `key` is over the limit, without counting a hit.
    pub fn peek(&self, key: &str) -> Result<(), u64> {
        self.check(key, 0)
    }

    fn check(&self, key: &str, add: u32) -> Result<(), u64> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if windows.len() > 100_000 {
            windows.retain(|_, (start, _)| now.duration_since(*start) < self.window);
        }
        let entry = windows.entry(key.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.limit {
            let left = self.window.saturating_sub(now.duration_since(entry.0));
            return Err(left.as_secs().max(1));
        }
        entry.1 += add;
        Ok(())
    }

    pub fn reset(&self, key: &str) {
        self.windows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Every limiter the server uses.
pub struct Limits {
    pub per_ip: RateLimiter,
    pub per_user: RateLimiter,
    pub login_failures_per_email: RateLimiter,
    pub login_attempts_per_ip: RateLimiter,
}

impl Limits {
    pub fn from_settings(s: &Settings) -> Self {
        Limits {
            per_ip: RateLimiter::new(s.rate_limit_per_ip, s.rate_limit_window),
            per_user: RateLimiter::new(s.rate_limit_per_user, s.rate_limit_window),
            login_failures_per_email: RateLimiter::new(
                s.login_max_failures_per_email,
                s.login_window,
            ),
            login_attempts_per_ip: RateLimiter::new(s.login_max_attempts_per_ip, s.login_window),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_key() {
        let l = RateLimiter::new(2, Duration::from_secs(60));
        assert!(l.hit("a").is_ok());
        assert!(l.hit("a").is_ok());
        let wait = l.hit("a").unwrap_err();
        assert!((1..=60).contains(&wait));
        assert!(l.hit("b").is_ok());
        l.reset("a");
        assert!(l.hit("a").is_ok());
    }
}
