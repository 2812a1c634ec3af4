//! Importer for the Alibaba cluster-trace-v2018 `batch_task.csv`.
//!
//! The published schema: no header; one row per task (a task of a job, in
//! Alibaba's terms: `instance_num` identical instances), columns in order
//!
//! | column       | type   | meaning                                      |
//! |--------------|--------|----------------------------------------------|
//! | task_name    | string | unique within a job; encodes the DAG         |
//! | instance_num | bigint | number of instances                          |
//! | job_name     | string |                                              |
//! | task_type    | string | one of 12 types                              |
//! | status       | string | Terminated, Failed, Waiting, Running, ...    |
//! | start_time   | bigint | seconds since the trace's start              |
//! | end_time     | bigint | seconds since the trace's start              |
//! | plan_cpu     | double | CPU asked for; 100 is one core               |
//! | plan_mem     | double | memory asked for, normalised to [0, 100]     |
//!
//! Each usable row becomes one job:
//!
//! - name: `<job_name>-<task_name>` made a valid Drover job name (lowercase,
//!   `[a-z0-9-]`, at most 63 bytes), made unique with `-2`, `-3`, ...
//! - `count`: `instance_num`;
//! - submit: `start_time` minus the earliest `start_time` imported. The
//!   trace has no submit times; a task's start is the closest it has, so
//!   the imported workload arrives as Alibaba's scheduler started it;
//! - duration: fixed, `end_time - start_time`, at least 1 s;
//! - CPU: `plan_cpu * 10` millicores;
//! - memory: `plan_mem`% of a machine (96 GiB by default, the machines of
//!   the trace), rounded to the nearest MiB (at least 1 MiB);
//! - priority 50 and the default policy: the trace has neither.
//!
//! Rows with a wrong number of columns or a field that does not read are
//! skipped and listed ([`Import::invalid`]); so are rows whose status is
//! not `Terminated` when [`AlibabaOptions::only_terminated`] is set
//! (counted in [`Import::skipped_status`]).

use std::collections::HashSet;
use std::path::Path;

use drover_api::spec::{MAX_CPU_MILLIS, MAX_MEMORY_BYTES, MAX_TASKS};
use drover_api::{Cpu, JobId, JobSpec, Memory};

use crate::input::{sort_jobs, Duration, WorkloadJob, DEFAULT_COMMAND};
use crate::{read_text, SimError};

/// The memory of one machine of the trace, which `plan_mem` is a
/// percentage of: 96 GiB, as the trace's paper describes its machines.
pub const TRACE_MACHINE_MEMORY_BYTES: u64 = 96 << 30;

const MIB: u64 = 1 << 20;
const MAX_NAME: usize = drover_api::ids::MAX_JOB_NAME_LEN;

/// How to read the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlibabaOptions {
    /// What `plan_mem` = 100 means.
    pub machine_memory_bytes: u64,
    /// Import only the first N usable tasks.
    pub limit: Option<usize>,
    /// Skip tasks whose status is not `Terminated` (failed, cancelled,
    /// still waiting or running when the trace ended).
    pub only_terminated: bool,
}

impl Default for AlibabaOptions {
    fn default() -> Self {
        AlibabaOptions {
            machine_memory_bytes: TRACE_MACHINE_MEMORY_BYTES,
            limit: None,
            only_terminated: true,
        }
    }
}

/// A row that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRow {
    /// 1-based.
    pub line: usize,
    pub reason: String,
}

/// What an import made, and what it left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// Sorted by submit time, then name, as [`crate::input::parse_workload`] returns them.
    pub jobs: Vec<WorkloadJob>,
    /// Rows left out for their status.
    pub skipped_status: usize,
    /// Rows left out because they do not read.
    pub invalid: Vec<SkippedRow>,
}

/// One WorkloadJob per usable CSV row; see the module doc. Rows that do not
/// read are skipped (see [`import_batch_tasks_detailed`] for which).
pub fn import_batch_tasks(csv: &str, opts: &AlibabaOptions) -> Result<Vec<WorkloadJob>, SimError> {
    import_batch_tasks_detailed(csv, opts).map(|i| i.jobs)
}

/// [`import_batch_tasks`] with the rows it skipped. Fails only when the
/// options are unusable, or when there were rows and none could be read
/// (most likely not a batch_task.csv at all).
pub fn import_batch_tasks_detailed(csv: &str, opts: &AlibabaOptions) -> Result<Import, SimError> {
    if opts.machine_memory_bytes == 0 {
        return Err(SimError::invalid(
            None,
            "machine_memory_bytes",
            "must be more than zero",
        ));
    }
    let mut rows: Vec<Row> = Vec::new();
    let mut invalid = Vec::new();
    let mut skipped_status = 0;
    let mut seen_rows = 0;
    for (i, raw) in csv.lines().enumerate() {
        if opts.limit.is_some_and(|n| rows.len() >= n) {
            break;
        }
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        // The published files have no header, but a copy with one added
        // should not count a bad row for it.
        if i == 0 && line.starts_with("task_name,") {
            continue;
        }
        seen_rows += 1;
        match parse_row(line, opts) {
            Ok(Some(row)) => rows.push(row),
            Ok(None) => skipped_status += 1,
            Err(reason) => invalid.push(SkippedRow {
                line: i + 1,
                reason,
            }),
        }
    }
    if rows.is_empty() && !invalid.is_empty() && skipped_status == 0 {
        let first = &invalid[0];
        return Err(SimError::invalid(
            Some(first.line),
            "",
            format!(
                "none of the {seen_rows} rows is a batch_task.csv row (task_name, instance_num, job_name, task_type, status, start_time, end_time, plan_cpu, plan_mem): {}",
                first.reason
            ),
        ));
    }
    let t0 = rows.iter().map(|r| r.start).min().unwrap_or(0);
    let mut used: HashSet<String> = HashSet::new();
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        let name = unique_name(&sanitize(&format!("{}-{}", row.job, row.task)), &mut used);
        let id = JobId::new(name).map_err(|e| SimError::invalid(None, "name", e.to_string()))?;
        let mut spec = JobSpec::new(id, vec![DEFAULT_COMMAND.to_string()]);
        spec.count = row.instances;
        spec.resources.cpu = Cpu(row.cpu_millis);
        spec.resources.memory = Memory(row.memory_bytes);
        jobs.push(WorkloadJob {
            submit_s: (row.start - t0) as f64,
            spec,
            duration: Duration::Fixed(((row.end - row.start).max(1)) as f64),
        });
    }
    sort_jobs(&mut jobs);
    Ok(Import {
        jobs,
        skipped_status,
        invalid,
    })
}

/// [`import_batch_tasks_detailed`] on a file; errors name the file.
pub fn load_batch_tasks(path: &Path, opts: &AlibabaOptions) -> Result<Import, SimError> {
    import_batch_tasks_detailed(&read_text(path)?, opts).map_err(|e| e.in_file(path))
}

struct Row {
    task: String,
    job: String,
    instances: u32,
    start: i64,
    end: i64,
    cpu_millis: u64,
    memory_bytes: u64,
}

/// A usable row, `None` for one skipped for its status, or why it is unusable.
fn parse_row(line: &str, opts: &AlibabaOptions) -> Result<Option<Row>, String> {
    let f: Vec<&str> = line.split(',').map(str::trim).collect();
    if f.len() != 9 {
        return Err(format!("expected 9 columns, got {}", f.len()));
    }
    let [task, instances, job, _task_type, status, start, end, cpu, mem] =
        [f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]];
    if opts.only_terminated && status != "Terminated" {
        return Ok(None);
    }
    if task.is_empty() {
        return Err("task_name is empty".into());
    }
    if job.is_empty() {
        return Err("job_name is empty".into());
    }
    let instances = integer("instance_num", instances)?;
    if instances < 1 || instances > i64::from(MAX_TASKS) {
        return Err(format!(
            "instance_num must be between 1 and {MAX_TASKS}, got {instances}"
        ));
    }
    let start = integer("start_time", start)?;
    let end = integer("end_time", end)?;
    if start < 0 {
        return Err(format!("start_time must be at least 0, got {start}"));
    }
    if start == 0 && end == 0 {
        // How the trace writes a task that never started (status Waiting).
        return Err("no start_time or end_time: the task never ran in the trace".into());
    }
    if end < start {
        return Err(format!("end_time ({end}) is before start_time ({start})"));
    }
    let cpu = real("plan_cpu", cpu)?;
    let cpu_millis = (cpu * 10.0).round();
    if !(cpu_millis >= 1.0 && cpu_millis <= MAX_CPU_MILLIS as f64) {
        return Err(format!("plan_cpu must be more than 0, got {cpu}"));
    }
    let mem = real("plan_mem", mem)?;
    if !(mem > 0.0 && mem <= 100.0) {
        return Err(format!("plan_mem must be in (0, 100], got {mem}"));
    }
    let mib = (mem / 100.0 * opts.machine_memory_bytes as f64 / MIB as f64)
        .round()
        .max(1.0);
    let memory_bytes = (mib as u64).saturating_mul(MIB).min(MAX_MEMORY_BYTES);
    Ok(Some(Row {
        task: task.to_string(),
        job: job.to_string(),
        instances: instances as u32,
        start,
        end,
        cpu_millis: cpu_millis as u64,
        memory_bytes,
    }))
}

/// A bigint column; "12.0" is accepted as 12 (some exports write floats).
fn integer(column: &str, text: &str) -> Result<i64, String> {
    if let Ok(n) = text.parse::<i64>() {
        return Ok(n);
    }
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x.fract() == 0.0 && x.abs() < 9e15 => Ok(x as i64),
        _ => Err(format!("{column} is not an integer: {text:?}")),
    }
}

fn real(column: &str, text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("{column} is not a number: {text:?}")),
    }
}

/// Lowercase, runs of anything but `[a-z0-9]` made one '-', no '-' at
/// either end, at most 63 bytes; "task" if nothing is left.
pub fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(MAX_NAME);
    let trimmed = out.trim_end_matches('-');
    if trimmed.is_empty() {
        "task".to_string()
    } else {
        trimmed.to_string()
    }
}

/// `base`, or `base-2`, `base-3`, ... (cut to fit 63 bytes), whichever is
/// free first; the name taken is added to `used`.
fn unique_name(base: &str, used: &mut HashSet<String>) -> String {
    if used.insert(base.to_string()) {
        return base.to_string();
    }
    for n in 2u64.. {
        let suffix = format!("-{n}");
        let mut head = base[..base.len().min(MAX_NAME - suffix.len())].to_string();
        while head.ends_with('-') {
            head.pop();
        }
        let name = format!("{head}{suffix}");
        if used.insert(name.clone()) {
            return name;
        }
    }
    unreachable!("some suffix is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_valid_job_ids() {
        assert_eq!(sanitize("j_1-M1"), "j-1-m1");
        assert_eq!(sanitize("__X__"), "x");
        assert_eq!(sanitize("%%%"), "task");
        let long = sanitize(&"a".repeat(100));
        assert_eq!(long.len(), 63);
        let mut used = HashSet::new();
        assert_eq!(unique_name("j-1-m1", &mut used), "j-1-m1");
        assert_eq!(unique_name("j-1-m1", &mut used), "j-1-m1-2");
        assert_eq!(unique_name("j-1-m1", &mut used), "j-1-m1-3");
        let a = unique_name(&long, &mut used);
        let b = unique_name(&long, &mut used);
        assert_eq!(b.len(), 63);
        assert!(b.ends_with("-2"));
        assert_ne!(a, b);
        assert!(JobId::new(b).is_ok());
    }
}
