//! Logs with `tracing`: human text by default, JSON on request, level from
//! config or `RUST_LOG`. No log line carries a token or claims: decisions are
//! counted in metrics, not logged.

use crate::settings::LogFormat;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (stderr). `RUST_LOG`, when set, wins over `level`.
pub(crate) fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// At most one log line per interval; the next line reports how many were suppressed.
#[derive(Debug)]
pub(crate) struct RateLimited {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimited {
    pub(crate) const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Calls `log(suppressed_since_last_line)` unless a line went out less than `every` ago.
    pub(crate) fn log(&self, log: impl FnOnce(u64)) {
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
