//! Statistics of runs, as a table for people or JSON for scripts.
//!
//! Definitions (all times in seconds of virtual time):
//!
//! - **makespan**: the last task's finish minus the first job's submit;
//!   none when no task finished.
//! - **wait**: a task's first start minus its submit, over the tasks that
//!   started. Percentiles are **nearest-rank**: the p-th percentile of n
//!   sorted waits is the one at rank `ceil(p / 100 * n)` (at least 1), so it
//!   is always a wait that some task had.
//! - **priority bands**: low 0-24, normal 25-74, high 75-100; only bands
//!   that have tasks are listed.
//! - **utilisation**: held / capacity of the whole cluster (nodes down
//!   count as capacity not used), averaged over time from the first submit
//!   to the end of the makespan (the end of the run if nothing finished).
//!   Each sample holds until the next; before the first, nothing is held.
//! - **elastic throughput**: elastic tasks (shards) finished per minute,
//!   between the first elastic start and the last elastic finish.
//!
//! Figures are rounded (times to the millisecond, fractions to 1e-6) so that
//! the JSON does not show float noise; the same records always give the same
//! bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::record::{Amounts, RunRecord};

/// Priority bands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    Low,
    Normal,
    High,
}

impl Band {
    pub const ALL: [Band; 3] = [Band::Low, Band::Normal, Band::High];

    pub fn of(priority: u8) -> Band {
        match priority {
            0..=24 => Band::Low,
            25..=74 => Band::Normal,
            _ => Band::High,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Band::Low => "low",
            Band::Normal => "normal",
            Band::High => "high",
        }
    }

    /// The priorities in the band, as text: "0-24".
    pub const fn range(self) -> &'static str {
        match self {
            Band::Low => "0-24",
            Band::Normal => "25-74",
            Band::High => "75-100",
        }
    }
}

/// Waits of one priority band.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BandReport {
    pub band: Band,
    /// "0-24", "25-74" or "75-100".
    pub priorities: String,
    pub tasks: u64,
    pub started: u64,
    pub wait_p50_s: Option<f64>,
    pub wait_p99_s: Option<f64>,
}

/// Tasks that never ran, by the master's reason.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NeverRan {
    pub count: u64,
    pub reasons: BTreeMap<String, u64>,
}

/// One policy's run, summarised (see the module doc for definitions).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    pub policy: String,
    pub tasks: u64,
    pub started: u64,
    pub finished: u64,
    pub makespan_s: Option<f64>,
    pub wait_p50_s: Option<f64>,
    pub wait_p99_s: Option<f64>,
    pub bands: Vec<BandReport>,
    /// Fractions (0.5 is half); none where the cluster has none of it.
    pub cpu_utilisation: Option<f64>,
    pub memory_utilisation: Option<f64>,
    pub gpu_utilisation: Option<f64>,
    pub preemptions: u64,
    pub rescheduled: u64,
    /// Shards per minute; none when the workload has no elastic job.
    pub elastic_shards_per_min: Option<f64>,
    pub never_ran: NeverRan,
    /// Virtual time at which the run stopped.
    pub end_s: f64,
}

/// Every policy's run of one workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub seed: u64,
    /// A label for the workload, such as its file name.
    pub workload: String,
    pub policies: Vec<PolicyReport>,
}

/// Nearest-rank percentile of sorted values: the value at rank
/// `ceil(p / 100 * n)`, at least 1. None for no values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

fn round_ms(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round_frac(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The time-weighted mean of held / capacity over [from, to], per resource.
fn utilisation(run: &RunRecord, from: f64, to: f64) -> [Option<f64>; 3] {
    let span = to - from;
    if span.is_nan() || span <= 0.0 {
        return [None; 3];
    }
    let mut area = [0.0f64; 3];
    for (i, s) in run.samples.iter().enumerate() {
        let next = run.samples.get(i + 1).map_or(to, |n| n.at_s);
        let a = s.at_s.max(from);
        let b = next.min(to);
        if b > a {
            let Amounts {
                cpu_millis,
                memory_bytes,
                gpus,
            } = s.held;
            area[0] += cpu_millis as f64 * (b - a);
            area[1] += memory_bytes as f64 * (b - a);
            area[2] += gpus as f64 * (b - a);
        }
    }
    let cap = [
        run.capacity.cpu_millis as f64,
        run.capacity.memory_bytes as f64,
        run.capacity.gpus as f64,
    ];
    let mut out = [None; 3];
    for k in 0..3 {
        if cap[k] > 0.0 {
            out[k] = Some(round_frac(area[k] / (cap[k] * span)));
        }
    }
    out
}

/// One run's statistics.
pub fn summarize(run: &RunRecord) -> PolicyReport {
    let tasks = &run.tasks;
    let first_submit = tasks
        .iter()
        .map(|t| t.submitted_s)
        .min_by(f64::total_cmp)
        .unwrap_or(0.0);
    let last_finish = tasks
        .iter()
        .filter_map(|t| t.finished_s)
        .max_by(f64::total_cmp);
    let waits = |band: Option<Band>| {
        sorted(
            tasks
                .iter()
                .filter(|t| band.is_none_or(|b| Band::of(t.priority) == b))
                .filter_map(|t| t.started_s.map(|s| s - t.submitted_s))
                .collect(),
        )
    };
    let all = waits(None);
    let bands = Band::ALL
        .into_iter()
        .filter_map(|band| {
            let count = tasks
                .iter()
                .filter(|t| Band::of(t.priority) == band)
                .count() as u64;
            (count > 0).then(|| {
                let w = waits(Some(band));
                BandReport {
                    band,
                    priorities: band.range().to_string(),
                    tasks: count,
                    started: w.len() as u64,
                    wait_p50_s: percentile(&w, 50.0).map(round_ms),
                    wait_p99_s: percentile(&w, 99.0).map(round_ms),
                }
            })
        })
        .collect();
    let [cpu, memory, gpu] = utilisation(run, first_submit, last_finish.unwrap_or(run.end_s));
    let elastic: Vec<_> = tasks.iter().filter(|t| t.elastic).collect();
    let elastic_shards_per_min = (!elastic.is_empty()).then(|| {
        let finished: Vec<f64> = elastic.iter().filter_map(|t| t.finished_s).collect();
        let first_start = elastic
            .iter()
            .filter_map(|t| t.started_s)
            .min_by(f64::total_cmp);
        let last_finish = finished.iter().copied().max_by(f64::total_cmp);
        match (first_start, last_finish) {
            (Some(a), Some(b)) if b > a => round_frac(finished.len() as f64 / ((b - a) / 60.0)),
            _ => 0.0,
        }
    });
    let mut never_ran = NeverRan::default();
    for t in tasks {
        if let Some(reason) = &t.never_ran {
            never_ran.count += 1;
            *never_ran.reasons.entry(reason.clone()).or_default() += 1;
        }
    }
    PolicyReport {
        policy: run.policy.clone(),
        tasks: tasks.len() as u64,
        started: all.len() as u64,
        finished: tasks.iter().filter(|t| t.finished_s.is_some()).count() as u64,
        makespan_s: last_finish.map(|f| round_ms(f - first_submit)),
        wait_p50_s: percentile(&all, 50.0).map(round_ms),
        wait_p99_s: percentile(&all, 99.0).map(round_ms),
        bands,
        cpu_utilisation: cpu,
        memory_utilisation: memory,
        gpu_utilisation: gpu,
        preemptions: run.preemptions,
        rescheduled: run.rescheduled,
        elastic_shards_per_min,
        never_ran,
        end_s: round_ms(run.end_s),
    }
}

/// A span as people read it: "850ms", "12.3s", "5m 2s", "1h 2m", "3d 4h";
/// "-" for none.
pub fn human_duration(secs: Option<f64>) -> String {
    let Some(s) = secs.filter(|s| s.is_finite()) else {
        return "-".to_string();
    };
    let s = s.max(0.0);
    if s < 0.9995 {
        return format!("{}ms", (s * 1000.0).round() as u64);
    }
    if s < 59.95 {
        return format!("{s:.1}s");
    }
    let total = s.round() as u64;
    let join = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit} {small}{small_unit}")
        }
    };
    match total {
        0..3600 => join(total / 60, "m", total % 60, "s"),
        3600..86_400 => join(total / 3600, "h", total % 3600 / 60, "m"),
        _ => join(total / 86_400, "d", total % 86_400 / 3600, "h"),
    }
}

/// "63.2%", or "-".
fn percent(fraction: Option<f64>) -> String {
    fraction.map_or_else(|| "-".to_string(), |f| format!("{:.1}%", f * 100.0))
}

/// Columns as wide as their widest cell, two spaces apart, no trailing
/// blanks: the CLI's table style (the CLI renders its own tables with it).
pub fn render_table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.extend(std::iter::repeat_n(
                    ' ',
                    widths[c] - cell.chars().count() + 2,
                ));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn header(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// The report for people: the workload and seed, one row per policy, then
/// waits per priority band, then why tasks never ran (when any did not).
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "workload  {}", report.workload);
    let _ = writeln!(out, "seed      {}", report.seed);
    out.push('\n');

    let mut rows = vec![header(&[
        "POLICY",
        "MAKESPAN",
        "WAIT-P50",
        "WAIT-P99",
        "CPU",
        "MEM",
        "GPU",
        "PREEMPT",
        "RESCHED",
        "ELASTIC",
        "NEVER-RAN",
    ])];
    for p in &report.policies {
        rows.push(vec![
            p.policy.clone(),
            human_duration(p.makespan_s),
            human_duration(p.wait_p50_s),
            human_duration(p.wait_p99_s),
            percent(p.cpu_utilisation),
            percent(p.memory_utilisation),
            percent(p.gpu_utilisation),
            p.preemptions.to_string(),
            p.rescheduled.to_string(),
            p.elastic_shards_per_min
                .map_or_else(|| "-".to_string(), |r| format!("{r:.1}/min")),
            p.never_ran.count.to_string(),
        ]);
    }
    out.push_str(&render_table(&rows));

    let mut rows = vec![header(&[
        "POLICY", "BAND", "PRIORITY", "TASKS", "STARTED", "WAIT-P50", "WAIT-P99",
    ])];
    for p in &report.policies {
        for b in &p.bands {
            rows.push(vec![
                p.policy.clone(),
                b.band.name().to_string(),
                b.priorities.clone(),
                b.tasks.to_string(),
                b.started.to_string(),
                human_duration(b.wait_p50_s),
                human_duration(b.wait_p99_s),
            ]);
        }
    }
    if rows.len() > 1 {
        out.push('\n');
        out.push_str(&render_table(&rows));
    }

    let mut rows = vec![header(&["POLICY", "NEVER-RAN", "REASON"])];
    for p in &report.policies {
        for (reason, n) in &p.never_ran.reasons {
            rows.push(vec![p.policy.clone(), n.to_string(), reason.clone()]);
        }
    }
    if rows.len() > 1 {
        out.push('\n');
        out.push_str(&render_table(&rows));
    }
    out
}

/// The report as pretty JSON, ending in a newline. Field order is the
/// structs' and maps are sorted, so the same report gives the same bytes.
pub fn json(report: &Report) -> String {
    // Cannot fail: strings, integers, finite floats and string-keyed maps.
    let mut text = serde_json::to_string_pretty(report).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests;
