//! What people read: aligned plain-text tables, key/value blocks, humane
//! quantities and times; and the JSON documents scripts read.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A table with a header row; columns are as wide as their widest cell.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) -> &mut Self {
        self.rows.push(cells);
        self
    }

    pub fn render(&self) -> String {
        drover_simulate::report::render_table(&self.rows)
    }
}

/// `key  value` lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(format!("{k:<width$}  {v}").trim_end());
        out.push('\n');
    }
    out
}

/// Writes `text` to stdout. A closed pipe (`drover job ls | head -1`) is
/// reported as an `io::Error` of kind `BrokenPipe`, which `main` treats as
/// success rather than a crash.
pub fn emit(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// One pretty-printed JSON document on stdout.
pub fn emit_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    emit(&text)?;
    Ok(())
}

/// CPU as people write it in specs: whole cores ("2") or millicores ("500m").
pub fn cpu(millis: u64) -> String {
    if millis % 1000 == 0 {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

const BINARY_UNITS: [(&str, u64); 6] = [
    ("Ei", 1 << 60),
    ("Pi", 1 << 50),
    ("Ti", 1 << 40),
    ("Gi", 1 << 30),
    ("Mi", 1 << 20),
    ("Ki", 1 << 10),
];

/// A size in the largest binary unit it reaches: "256Mi", "1.5Gi", exact
/// where it can be and to one decimal otherwise; bytes below 1Ki as a plain
/// number (as specs take them).
pub fn mem(bytes: u64) -> String {
    for (suffix, unit) in BINARY_UNITS {
        if bytes >= unit {
            if bytes % unit == 0 {
                return format!("{}{suffix}", bytes / unit);
            }
            let tenths = (bytes as f64 / unit as f64 * 10.0).round() / 10.0;
            return format!("{tenths}{suffix}");
        }
    }
    bytes.to_string()
}

/// `part` of `whole` as a whole percentage, "-" when there is no whole.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{}%", (part as f64 / whole as f64 * 100.0).round() as u64)
    }
}

/// Milliseconds since the Unix epoch, the master's time base.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A short span: "850ms", "4.2s", "12s", "3m", "2h", "5d" (the largest
/// unit, truncated: enough to tell how long ago, not a stopwatch).
pub fn span(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        10_000..60_000 => format!("{s}s"),
        60_000..3_600_000 => format!("{}m", s / 60),
        3_600_000..86_400_000 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// When `at_ms` (Unix ms) is, from `now_ms`: "12s ago", "in 5m"; "-" for 0
/// (never happened).
pub fn ago(at_ms: u64, now_ms: u64) -> String {
    if at_ms == 0 {
        "-".to_string()
    } else if at_ms <= now_ms {
        let d = Duration::from_millis(now_ms - at_ms);
        if d < Duration::from_secs(1) {
            "just now".to_string()
        } else {
            format!("{} ago", whole(d))
        }
    } else {
        // Rounded up: a deadline set to 5m reads "in 5m", not "in 4m".
        let secs = (at_ms - now_ms).div_ceil(1000);
        format!("in {}", whole(Duration::from_secs(secs)))
    }
}

/// As `span` but in whole seconds at least ("4s", not "4.2s").
fn whole(d: Duration) -> String {
    span(Duration::from_secs(d.as_secs().max(1)))
}

/// "3 running, 5 succeeded": counts in the order of `states` (lifecycle
/// order for the API's maps), zeros left out; "none" when all are zero.
pub fn counts<S: Display>(states: &BTreeMap<S, impl Into<u64> + Copy>) -> String {
    let parts: Vec<String> = states
        .iter()
        .filter(|(_, n)| (**n).into() > 0)
        .map(|(s, n)| format!("{} {s}", (*n).into()))
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// "1 task", "3 tasks".
pub fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A value or "-".
pub fn or_dash<T: Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// GPU indexes "0,3", or "-" for none.
pub fn gpu_list(gpus: &[u32]) -> String {
    if gpus.is_empty() {
        "-".to_string()
    } else {
        gpus.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_leave_no_trailing_blanks() {
        let mut t = Table::new(&["ID", "STATE", "REASON"]);
        t.row(vec!["render".into(), "running".into(), String::new()]);
        t.row(vec!["a".into(), "failed".into(), "exit code 1".into()]);
        assert_eq!(
            t.render(),
            "ID      STATE    REASON\nrender  running\na       failed   exit code 1\n"
        );
    }

    #[test]
    fn fields_align_their_values() {
        let text = fields(&[("job", "render".into()), ("submitted", "1s ago".into())]);
        assert_eq!(text, "job        render\nsubmitted  1s ago\n");
    }

    #[test]
    fn cpu_reads_as_cores_or_millicores() {
        assert_eq!(cpu(0), "0");
        assert_eq!(cpu(500), "500m");
        assert_eq!(cpu(2000), "2");
        assert_eq!(cpu(1500), "1500m");
    }

    #[test]
    fn sizes_use_the_largest_binary_unit_they_reach() {
        assert_eq!(mem(0), "0");
        assert_eq!(mem(512), "512");
        assert_eq!(mem(256 << 20), "256Mi");
        assert_eq!(mem(8 << 30), "8Gi");
        assert_eq!(mem(3 << 29), "1.5Gi");
        assert_eq!(mem((1 << 30) + 1), "1Gi");
        assert_eq!(mem(1 << 10), "1Ki");
    }

    #[test]
    fn times_read_relative_to_now() {
        let now = 1_000_000_000;
        assert_eq!(ago(0, now), "-");
        assert_eq!(ago(now - 300, now), "just now");
        assert_eq!(ago(now - 12_400, now), "12s ago");
        assert_eq!(ago(now - 185_000, now), "3m ago");
        assert_eq!(ago(now - 7_300_000, now), "2h ago");
        assert_eq!(ago(now - 3 * 86_400_000, now), "3d ago");
        assert_eq!(ago(now + 300_000, now), "in 5m");
        assert_eq!(ago(now + 299_900, now), "in 5m");
        assert_eq!(span(Duration::from_millis(4_240)), "4.2s");
        assert_eq!(span(Duration::from_millis(90)), "90ms");
    }

    #[test]
    fn counts_leave_out_zeros_and_keep_the_map_order() {
        let m: BTreeMap<&str, u32> = [("a-pending", 2), ("b-running", 0), ("c-done", 5)].into();
        assert_eq!(counts(&m), "2 a-pending, 5 c-done");
        let empty: BTreeMap<&str, u32> = BTreeMap::new();
        assert_eq!(counts(&empty), "none");
        assert_eq!(percent(1, 4), "25%");
        assert_eq!(percent(1, 0), "-");
    }
}
