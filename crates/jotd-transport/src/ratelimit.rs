//! Log lines that may repeat without bound (a refusal per connection, a
//! failed check per request): at most one per interval, the next one saying
//! how many were left out. Used by both binaries.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per interval; the next line reports how many were suppressed.
#[derive(Debug)]
pub struct RateLimited {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimited {
    /// At most one line per `every`.
    #[must_use]
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Calls `log(suppressed_since_last_line)` unless a line went out less than `every` ago.
    pub fn log(&self, log: impl FnOnce(u64)) {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if st
            .0
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            st.1 += 1;
            return;
        }
        let suppressed = st.1;
        *st = (Some(now), 0);
        drop(st);
        log(suppressed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_counts_what_it_suppresses() {
        let r = RateLimited::new(Duration::from_secs(3600));
        let mut lines = Vec::new();
        for _ in 0..5 {
            r.log(|s| lines.push(s));
        }
        assert_eq!(lines, [0]);
        let r = RateLimited::new(Duration::ZERO);
        let mut lines = Vec::new();
        for _ in 0..3 {
            r.log(|s| lines.push(s));
        }
        assert_eq!(lines, [0, 0, 0]);
    }
}
