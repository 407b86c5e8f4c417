//! `jotd check`: decide JSON-lines requests offline against a config.
//!
//! Input, one object per line: `{"token": "...", "tenant": "...", "method":
//! "...", "addresses": [...], "origin": "...", "user_agent": "..."}` (all but
//! `tenant` optional). Output, one line per input line, in order:
//! `{"index": N, "allow": bool, "reason": "...", "kid", "sub", "exp", "claims"}`:
//! `kid`, `sub` and `exp` when the signature verified and the token has them;
//! `claims` always, an object (see [`decision_json`]). A line that is not such
//! an object yields `malformed` with an `error`.

use anyhow::Context;
use clap::Args;
use jotd_core::{Decision, Engine, Reason, Request, Scratch, UnixTime};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::time::SystemTime;

/// Options of `jotd check`.
#[derive(Args, Debug)]
pub(crate) struct CheckArgs {
    /// The config file (tenants, keys, and `[verify]` as `jotd serve` reads it).
    #[arg(long)]
    config: PathBuf,
    /// JSON-lines input; standard input when absent.
    #[arg(long)]
    input: Option<PathBuf>,
    /// The time to check claims against, in Unix seconds (default: now).
    #[arg(long)]
    now: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    #[serde(default)]
    token: Option<String>,
    tenant: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
}

/// The JSON line for one decision. `claims` is always present: the tenant's
/// `claims_to_return` found in a verified token, `{}` when there are none or
/// no token verified, so a reader never has to tell "absent" from "empty".
pub(crate) fn decision_json(index: usize, d: &Decision) -> Value {
    let mut out = Map::new();
    out.insert("index".into(), json!(index));
    out.insert("allow".into(), json!(d.allow()));
    out.insert("reason".into(), json!(d.reason().as_str()));
    let mut claims = Map::new();
    if let Some(t) = d.token() {
        if let Some(kid) = t.kid() {
            out.insert("kid".into(), json!(kid));
        }
        if let Some(sub) = t.sub() {
            out.insert("sub".into(), json!(sub));
        }
        if let Some(exp) = t.exp() {
            out.insert("exp".into(), json!(exp));
        }
        claims.extend(t.claims().iter().map(|(k, raw)| {
            (
                k.to_string(),
                serde_json::from_str(raw).unwrap_or(Value::Null),
            )
        }));
    }
    out.insert("claims".into(), Value::Object(claims));
    Value::Object(out)
}

pub(crate) fn run(args: &CheckArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    // One parse of the file: the keys, and the daemon's sections (`[verify]`
    // decides too: a token over max_token_bytes is token_too_large here as in
    // `jotd serve`).
    let (settings, cfg) = crate::settings::load(&args.config)?;
    let snapshot = cfg.snapshot(1, &|_, _| None);
    let now = match args.now {
        Some(n) => n,
        None => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .context("clock before 1970")?
            .as_secs(),
    };
    let mut input: Box<dyn BufRead> = match &args.input {
        Some(path) => Box::new(BufReader::new(
            std::fs::File::open(path)
                .with_context(|| format!("{}: cannot open", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let engine = Engine::new(settings.engine_config());
    let mut scratch = Scratch::new();
    let mut out = BufWriter::new(out);
    let mut buf = Vec::new();
    for index in 0.. {
        let Some(line) = next_line(&mut input, &mut buf)
            .with_context(|| format!("input line {}: cannot read", index + 1))?
        else {
            break;
        };
        // A line that is too long or not UTF-8 gets its own `malformed` answer; the
        // lines after it are still decided.
        let parsed =
            line.and_then(|text| serde_json::from_str::<Line>(text).map_err(|e| e.to_string()));
        let value = match parsed {
            Ok(l) => {
                let addresses: Vec<&str> = l.addresses.iter().map(String::as_str).collect();
                let req = Request {
                    token: l.token.as_deref().map(str::as_bytes),
                    tenant: &l.tenant,
                    method: l.method.as_deref(),
                    addresses: &addresses,
                    origin: l.origin.as_deref(),
                    user_agent: l.user_agent.as_deref(),
                };
                decision_json(
                    index,
                    &engine.verify_with(&mut scratch, &snapshot, &req, UnixTime(now)),
                )
            }
            Err(e) => {
                let mut v = decision_json(index, &Decision::without_token(Reason::Malformed));
                v["error"] = json!(format!("input line {}: {e}", index + 1));
                v
            }
        };
        writeln!(out, "{value}")?;
    }
    out.flush()?;
    Ok(())
}

/// The longest input line read: far above any request (tokens are capped at
/// `max_token_bytes`), far below what a stray binary file would make us buffer.
const MAX_LINE_BYTES: usize = 1 << 20;

/// Reads one line into `buf` (without its newline): `None` at the end of the input,
/// `Some(Err(why))` for a line over [`MAX_LINE_BYTES`] (skipped to its end without
/// buffering it) or not UTF-8.
fn next_line<'b>(
    input: &mut dyn BufRead,
    buf: &'b mut Vec<u8>,
) -> std::io::Result<Option<Result<&'b str, String>>> {
    use std::io::Read as _;
    buf.clear();
    let n = input
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE_BYTES {
        // Skip the rest of the line.
        loop {
            let rest = input.fill_buf()?;
            if rest.is_empty() {
                break;
            }
            if let Some(end) = rest.iter().position(|&b| b == b'\n') {
                input.consume(end + 1);
                break;
            }
            let all = rest.len();
            input.consume(all);
        }
        return Ok(Some(Err(format!("longer than {MAX_LINE_BYTES} bytes"))));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(
        std::str::from_utf8(buf).map_err(|e| format!("not UTF-8 ({e})")),
    ))
}
