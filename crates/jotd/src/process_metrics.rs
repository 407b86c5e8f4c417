//! The standard Prometheus process metrics, under the names, types and help
//! texts of the official clients' process collectors (client_golang,
//! client_python), so stock dashboards and alerts work unchanged:
//! `process_cpu_seconds_total` (counter), `process_start_time_seconds`,
//! `process_open_fds`, `process_max_fds`, `process_resident_memory_bytes` and
//! `process_virtual_memory_bytes` (gauges).
//!
//! Read from /proc at each scrape and rendered by hand after the exporter's
//! text: the `metrics` crate's counters are integers, CPU seconds are not.
//! Linux only (the module is not built elsewhere, and `/metrics` has no
//! process section there). A value whose source cannot be read is left out
//! (with its `# HELP`/`# TYPE`), never guessed.
//!
//! Clock ticks (for CPU time and the start time) and the page size (for the
//! resident set) come from the auxiliary vector the kernel gave the process
//! (/proc/self/auxv: `AT_CLKTCK`, `AT_PAGESZ`), which is where libc's
//! `sysconf` finds them, without the `unsafe` a libc call would need.

use std::fmt::Write as _;
use std::sync::OnceLock;

/// One reading; `None` where its source could not be read.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Sample {
    cpu_seconds: Option<f64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
}

/// Appends the process section (Prometheus text format) to `out`, which ends
/// with a newline unless empty.
pub(crate) fn render(out: &mut String) {
    write_sample(out, &sample());
}

fn write_sample(out: &mut String, s: &Sample) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    metric(
        out,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        s.cpu_seconds,
    );
    metric(
        out,
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        s.start_time_seconds,
    );
    metric(
        out,
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        s.open_fds,
    );
    metric(
        out,
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        s.max_fds,
    );
    metric(
        out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        s.resident_bytes,
    );
    metric(
        out,
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        s.virtual_bytes,
    );
}

/// One metric without labels: help, type and its sample; nothing when `value`
/// is `None`. (`f64`'s `Display` never uses an exponent: valid sample text.)
fn metric(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    value: Option<impl std::fmt::Display>,
) {
    if let Some(v) = value {
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"
        );
    }
}

/// What /proc/self/stat says: CPU ticks (user + system), start time in ticks
/// after boot, virtual size in bytes, resident set in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    cpu_ticks: u64,
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Parses /proc/[pid]/stat (proc(5)): fields after the command name, which is
/// in parentheses and may itself hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<Stat> {
    let (_, rest) = stat.rsplit_once(") ")?;
    // `rest` starts at field 3 (state); field n of proc(5) is rest[n - 3].
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The `btime` line of /proc/stat: boot time, Unix seconds.
fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The soft limit of "Max open files" in /proc/[pid]/limits (`None` when
/// "unlimited", which RLIMIT_NOFILE cannot be on Linux).
fn parse_max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `(AT_PAGESZ, AT_CLKTCK)` from an auxiliary vector: pairs of native-endian
/// machine words (type, value), ended by `AT_NULL`.
fn parse_auxv(auxv: &[u8]) -> (Option<u64>, Option<u64>) {
    const AT_NULL: usize = 0;
    const AT_PAGESZ: usize = 6;
    const AT_CLKTCK: usize = 17;
    const WORD: usize = size_of::<usize>();
    let (mut page_size, mut clock_ticks) = (None, None);
    for pair in auxv.chunks_exact(2 * WORD) {
        let (kind, value) = pair.split_at(WORD);
        let word = |b: &[u8]| b.try_into().map(usize::from_ne_bytes).ok();
        let (Some(kind), Some(value)) = (word(kind), word(value)) else {
            break;
        };
        let value = u64::try_from(value).ok().filter(|v| *v > 0);
        match kind {
            AT_NULL => break,
            AT_PAGESZ => page_size = value,
            AT_CLKTCK => clock_ticks = value,
            _ => {}
        }
    }
    (page_size, clock_ticks)
}

/// `(page size, clock ticks per second)`: fixed for the life of the process.
fn page_size_and_ticks() -> (Option<u64>, Option<u64>) {
    static AUXV: OnceLock<(Option<u64>, Option<u64>)> = OnceLock::new();
    *AUXV.get_or_init(|| std::fs::read("/proc/self/auxv").map_or((None, None), |a| parse_auxv(&a)))
}

/// Boot time, Unix seconds: fixed as well.
fn boot_time() -> Option<u64> {
    static BOOT: OnceLock<Option<u64>> = OnceLock::new();
    *BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(parse_boot_time)
    })
}

/// This process's resident set now, in bytes (`None` where /proc cannot tell).
pub(crate) fn resident_bytes() -> Option<u64> {
    sample().resident_bytes
}

/// Reads this process's values now.
fn sample() -> Sample {
    let (page_size, ticks) = page_size_and_ticks();
    let stat = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse_stat);
    let seconds = |t: u64| ticks.map(|hz| t as f64 / hz as f64);
    Sample {
        cpu_seconds: stat.and_then(|s| seconds(s.cpu_ticks)),
        start_time_seconds: stat.and_then(|s| Some(boot_time()? as f64 + seconds(s.start_ticks)?)),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        max_fds: std::fs::read_to_string("/proc/self/limits")
            .ok()
            .as_deref()
            .and_then(parse_max_open_files),
        resident_bytes: stat.and_then(|s| s.resident_pages.checked_mul(page_size?)),
        virtual_bytes: stat.map(|s| s.virtual_bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_command_name_with_spaces_and_parentheses() {
        let line = "9383 (jo) d (x)) R 9381 9381 3984 0 -1 4194304 99 0 0 0 \
                    250 125 0 0 20 0 1 0 154851 3133440 393 18446744073709551615 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                cpu_ticks: 375,
                start_ticks: 154_851,
                virtual_bytes: 3_133_440,
                resident_pages: 393,
            })
        );
        assert_eq!(parse_stat("9383 (cat) R 1 2 3"), None, "cut short");
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn boot_time_and_open_files_limit() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1796059632\nprocesses 9\n"),
            Some(1_796_059_632)
        );
        assert_eq!(parse_boot_time("cpu 1\n"), None);
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63429                63429                processes \n\
                      Max open files            1024                 1048576              files     \n";
        assert_eq!(parse_max_open_files(limits), Some(1024), "the soft limit");
        assert_eq!(
            parse_max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn auxv_page_size_and_clock_ticks() {
        let mut v = Vec::new();
        for (k, val) in [
            (33usize, 0x7fb9usize),
            (6, 16384),
            (17, 250),
            (0, 0),
            (6, 1),
        ] {
            v.extend_from_slice(&k.to_ne_bytes());
            v.extend_from_slice(&val.to_ne_bytes());
        }
        assert_eq!(parse_auxv(&v), (Some(16384), Some(250)), "stops at AT_NULL");
        assert_eq!(parse_auxv(&[]), (None, None));
        assert_eq!(parse_auxv(&v[..3]), (None, None), "a torn pair is ignored");
    }

    #[test]
    fn rendering_names_types_and_leaves_out_what_is_unknown() {
        let mut out = String::from("jotd_build_info{version=\"0\"} 1");
        write_sample(
            &mut out,
            &Sample {
                cpu_seconds: Some(1.25),
                start_time_seconds: Some(1_796_059_700.5),
                open_fds: Some(12),
                max_fds: None,
                resident_bytes: Some(4096),
                virtual_bytes: Some(8192),
            },
        );
        assert_eq!(
            out,
            "jotd_build_info{version=\"0\"} 1\n\
             # HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
             # TYPE process_cpu_seconds_total counter\n\
             process_cpu_seconds_total 1.25\n\
             # HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
             # TYPE process_start_time_seconds gauge\n\
             process_start_time_seconds 1796059700.5\n\
             # HELP process_open_fds Number of open file descriptors.\n\
             # TYPE process_open_fds gauge\n\
             process_open_fds 12\n\
             # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
             # TYPE process_resident_memory_bytes gauge\n\
             process_resident_memory_bytes 4096\n\
             # HELP process_virtual_memory_bytes Virtual memory size in bytes.\n\
             # TYPE process_virtual_memory_bytes gauge\n\
             process_virtual_memory_bytes 8192\n"
        );
    }

    #[test]
    fn this_process_has_every_value() {
        let s = sample();
        for (name, v) in [
            ("cpu", s.cpu_seconds),
            ("start", s.start_time_seconds),
            ("open", s.open_fds.map(|v| v as f64)),
            ("max", s.max_fds.map(|v| v as f64)),
            ("resident", s.resident_bytes.map(|v| v as f64)),
            ("virtual", s.virtual_bytes.map(|v| v as f64)),
        ] {
            assert!(v.is_some_and(|v| v >= 0.0), "{name}: {s:?}");
        }
    }
}
