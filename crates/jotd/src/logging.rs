//! Logs with `tracing`: human text by default, JSON on request, level from
//! config or `RUST_LOG`. No log line carries a token or claims: decisions are
//! counted in metrics, not logged.

use crate::settings::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (stderr). `RUST_LOG`, when set, wins over `level`.
pub(crate) fn init(format: LogFormat, level: &str) {
    // An unreadable RUST_LOG is said so once logging is up, not dropped
    // quietly. A blank one (`Environment=RUST_LOG=`, a Helm value left
    // empty) is unset: as a filter it has no rule and allows nothing, so
    // the daemon would log nothing at all, errors included.
    let mut bad_env = None;
    let env = std::env::var("RUST_LOG").ok().filter(|v| !blank_filter(v));
    let filter = match env.map(|v| EnvFilter::try_new(&v)) {
        Some(Ok(f)) => Ok(f),
        Some(Err(e)) => {
            bad_env = Some(e.to_string());
            EnvFilter::try_new(level)
        }
        None => EnvFilter::try_new(level),
    }
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
    if let Some(e) = bad_env {
        tracing::warn!(error = %Escaped(e), config_level = level, "RUST_LOG is not a valid filter; using the config's level");
    }
}

/// Whether a filter string names no directive (empty, blanks, commas): as a
/// filter it would allow nothing.
pub(crate) fn blank_filter(filter: &str) -> bool {
    filter.split(',').all(|d| d.trim().is_empty())
}

/// Displays `T` with its control characters escaped (`\n`, `\u{1b}`): for
/// errors whose text can carry bytes from outside the daemon (a JWKS
/// document's `alg` or `kty`, a key in a config or denylist file that
/// automation writes). Text logs print a `%` field as it is, so a line break
/// or a terminal escape in it would forge or hide log lines.
pub(crate) struct Escaped<T>(pub(crate) T);

impl<T: std::fmt::Display> std::fmt::Display for Escaped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.to_string().chars() {
            // Control characters, and the line separators and bidirectional
            // overrides that break or reorder a line on a terminal or viewer.
            if c.is_control()
                || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
            {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Escaped;

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        let hostile = "unknown algorithm `x\u{1b}[2J\nFAKE line\r`, é ok";
        assert_eq!(
            Escaped(hostile).to_string(),
            "unknown algorithm `x\\u{1b}[2J\\nFAKE line\\r`, é ok"
        );
        assert_eq!(Escaped("plain").to_string(), "plain");
        assert_eq!(
            Escaped("a\u{202e}b\u{2028}c").to_string(),
            "a\\u{202e}b\\u{2028}c"
        );
    }
}
