//! The simulator's inputs: a workload, a cluster and optional faults.
//!
//! # Workload: JSON Lines
//!
//! One job per line; blank lines and lines starting with `#` are skipped.
//! Each line is an object with two keys of the simulator's own, and every
//! other key a field of a Drover job spec, read and validated by
//! `drover-api` exactly as `drover job run` reads it:
//!
//! ```text
//! {"submit": 12.5, "duration": "5m", "name": "etl", "count": 4, "resources": {"cpu": "500m", "memory": "256Mi"}}
//! {"submit": "1m 30s", "duration": {"pareto": {"min": "10s", "alpha": 1.5}}, "name": "train", "priority": 90, "policy": "priority", "resources": {"gpu": 1}}
//! ```
//!
//! - `submit`: when the job is submitted, after the start of the run:
//!   seconds as a number, or a duration such as `"1m 30s"`. Default 0.
//! - `duration`: how long each task runs once started (required). A
//!   number of seconds or a duration string for a fixed time, or one of
//!   `{"exponential": {"mean": D}}`, `{"uniform": {"min": D, "max": D}}`,
//!   `{"lognormal": {"median": D, "sigma": X}}`,
//!   `{"pareto": {"min": D, "alpha": X}}`, where each `D` is a number of
//!   seconds or a duration string. Each task draws its own time, from the
//!   run's seed, the job's name and the task's index
//!   ([`Duration::sample`]).
//! - everything else: the job spec (`name`, `type`, `priority`, `policy`,
//!   `count` or `shards` and `elastic`, `resources`, `constraints`,
//!   `restart`, ...). `command` may be left out (the simulator runs
//!   nothing); it is then `["/bin/true"]`.
//!
//! Jobs are returned sorted by submit time, then name; names must be unique.
//!
//! # Cluster: YAML
//!
//! A list of node classes:
//!
//! ```yaml
//! - name: cpu          # node ids are cpu-0, cpu-1, ...
//!   count: 8           # default 1
//!   cpu: 16            # cores, or "16000m"
//!   memory: 64Gi
//!   labels: {zone: a}  # optional
//! - name: gpu
//!   count: 2
//!   cpu: 32
//!   memory: 256Gi
//!   gpus: 4            # default 0
//!   gpu_model: H100    # default "GPU" when gpus > 0
//! ```
//!
//! # Faults: YAML
//!
//! ```yaml
//! at:                        # failures at given times
//!   - {node: gpu-0, at: 10m, recover_after: 5m}   # no recover_after: never back
//! rate:                      # and/or failures at random
//!   per_node_per_hour: 0.1
//!   recover_after: 10m       # absent: a failed node never comes back
//!   until: 2h                # required: no failure starts after this
//!   classes: [cpu]           # optional: only nodes of these classes
//! ```
//!
//! Times are numbers of seconds or duration strings (`"90s"`, `"1h 30m"`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::str::FromStr;

use drover_api::quantity::QuantityError;
use drover_api::spec::SpecError;
use drover_api::{Cpu, JobSpec, JobType, Memory, RestartPolicy};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::rng::SplitMix64;
use crate::{read_text, Problem, SimError};

/// The command given to jobs whose line has none.
pub const DEFAULT_COMMAND: &str = "/bin/true";
/// No sampled task runs for less than this, so that every task takes
/// some virtual time and events stay ordered.
pub const MIN_SAMPLE_S: f64 = 0.001;
/// Nor for more than this (about 32 years): a wild draw from a heavy tail
/// must not overflow the engine's clock.
pub const MAX_SAMPLE_S: f64 = 1e9;

// ---------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------

/// One job of a workload.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadJob {
    /// Seconds after the start of the run.
    pub submit_s: f64,
    /// The job spec fields (name, type, count or shards+elastic, resources,
    /// priority, policy, restart ...), as drover-api parses and validates
    /// them. command is filled in if absent.
    pub spec: JobSpec,
    /// How long each of its tasks runs.
    pub duration: Duration,
}

/// How long a task runs once started: a fixed time or a distribution, all
/// in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Duration {
    Fixed(f64),
    Exponential {
        mean_s: f64,
    },
    Uniform {
        min_s: f64,
        max_s: f64,
    },
    /// `median * e^(sigma * Z)`, Z standard normal.
    LogNormal {
        median_s: f64,
        sigma: f64,
    },
    /// `min * U^(-1/alpha)`: heavy-tailed; infinite mean for alpha <= 1.
    Pareto {
        min_s: f64,
        alpha: f64,
    },
}

impl Duration {
    /// Deterministic: a pure function of (seed, job name, task index).
    /// Never below 0.001 s ([`MIN_SAMPLE_S`]) nor above [`MAX_SAMPLE_S`].
    pub fn sample(&self, seed: u64, job: &str, index: u32) -> f64 {
        let mut r = SplitMix64::keyed(seed, &[b"duration", job.as_bytes(), &index.to_le_bytes()]);
        let x = match *self {
            Duration::Fixed(s) => s,
            Duration::Exponential { mean_s } => r.exponential(mean_s),
            Duration::Uniform { min_s, max_s } => min_s + (max_s - min_s) * r.next_f64(),
            Duration::LogNormal { median_s, sigma } => median_s * (sigma * r.normal()).exp(),
            Duration::Pareto { min_s, alpha } => min_s * r.next_open_f64().powf(-1.0 / alpha),
        };
        if x.is_nan() {
            // Only parameters that skipped validation get here.
            MIN_SAMPLE_S
        } else {
            x.clamp(MIN_SAMPLE_S, MAX_SAMPLE_S)
        }
    }

    /// The expected time, where it is finite.
    pub fn mean_s(&self) -> Option<f64> {
        let mean = match *self {
            Duration::Fixed(s) => s,
            Duration::Exponential { mean_s } => mean_s,
            Duration::Uniform { min_s, max_s } => (min_s + max_s) / 2.0,
            Duration::LogNormal { median_s, sigma } => median_s * (sigma * sigma / 2.0).exp(),
            Duration::Pareto { min_s, alpha } if alpha > 1.0 => alpha * min_s / (alpha - 1.0),
            Duration::Pareto { .. } => return None,
        };
        mean.is_finite().then_some(mean)
    }

    /// The problems with the parameters, each with its field path under
    /// `duration`.
    pub fn check(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |field: &str, message: &str| {
            out.push(Problem {
                field: field.to_string(),
                message: message.to_string(),
            })
        };
        let nonneg = |x: f64| x.is_finite() && x >= 0.0;
        let positive = |x: f64| x.is_finite() && x > 0.0;
        match *self {
            Duration::Fixed(s) => {
                if !nonneg(s) {
                    bad("duration", "must be a finite number of seconds, at least 0");
                }
            }
            Duration::Exponential { mean_s } => {
                if !positive(mean_s) {
                    bad("duration.exponential.mean", "must be more than zero");
                }
            }
            Duration::Uniform { min_s, max_s } => {
                if !nonneg(min_s) {
                    bad("duration.uniform.min", "must be at least 0");
                }
                if !nonneg(max_s) || max_s < min_s {
                    bad("duration.uniform.max", "must be at least uniform.min");
                }
            }
            Duration::LogNormal { median_s, sigma } => {
                if !positive(median_s) {
                    bad("duration.lognormal.median", "must be more than zero");
                }
                if !nonneg(sigma) || sigma > 10.0 {
                    bad("duration.lognormal.sigma", "must be between 0 and 10");
                }
            }
            Duration::Pareto { min_s, alpha } => {
                if !positive(min_s) {
                    bad("duration.pareto.min", "must be more than zero");
                }
                // Below 0.1 nearly every draw is astronomically long.
                if !alpha.is_finite() || alpha < 0.1 {
                    bad("duration.pareto.alpha", "must be at least 0.1");
                }
            }
        }
        out
    }

    /// The JSON form [`parse_workload`] reads, times in seconds, keys in
    /// the documented order (built by hand: a `serde_json::Map` orders its
    /// keys one way or the other depending on a feature some other crate
    /// may switch on).
    pub fn to_json(&self) -> String {
        let obj = |kind: &str, fields: &[(&str, f64)]| {
            let inner: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("\"{k}\":{}", json_number(*v)))
                .collect();
            format!("{{\"{kind}\":{{{}}}}}", inner.join(","))
        };
        match *self {
            Duration::Fixed(s) => json_number(s).to_string(),
            Duration::Exponential { mean_s } => obj("exponential", &[("mean", mean_s)]),
            Duration::Uniform { min_s, max_s } => obj("uniform", &[("min", min_s), ("max", max_s)]),
            Duration::LogNormal { median_s, sigma } => {
                obj("lognormal", &[("median", median_s), ("sigma", sigma)])
            }
            Duration::Pareto { min_s, alpha } => obj("pareto", &[("min", min_s), ("alpha", alpha)]),
        }
    }
}

fn json_number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        message: message.into(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

const DURATION_HINT: &str = "a number of seconds or a duration such as \"90s\", \"5m\", \"1h 30m\"";

/// Seconds from a JSON number or a duration string.
fn seconds(field: &str, v: &Value) -> Result<f64, Problem> {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
            _ => Err(problem(field, format!("must be at least 0, got {n}"))),
        },
        Value::String(s) => parse_duration_text(s).map_err(|m| problem(field, m)),
        other => Err(problem(
            field,
            format!("expected {DURATION_HINT}, got {}", kind(other)),
        )),
    }
}

fn parse_duration_text(s: &str) -> Result<f64, String> {
    if s.trim_start().starts_with('-') {
        return Err(format!("{s:?} is negative"));
    }
    humantime::parse_duration(s.trim())
        .map(|d| d.as_secs_f64())
        .map_err(|e| format!("{s:?} is not a duration ({e}): use {DURATION_HINT}"))
}

fn number(field: &str, v: &Value) -> Result<f64, Problem> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(problem(
            field,
            format!("expected a number, got {}", kind(v)),
        )),
    }
}

/// Reads `duration`, reporting every problem with its path.
fn parse_duration_value(v: &Value) -> Result<Duration, Vec<Problem>> {
    let Value::Object(map) = v else {
        return seconds("duration", v)
            .map(Duration::Fixed)
            .map_err(|p| vec![p]);
    };
    const KINDS: &str = "fixed, exponential, uniform, lognormal, pareto";
    if map.len() != 1 {
        return Err(vec![problem(
            "duration",
            format!("expected one of {KINDS}, as a mapping with one key"),
        )]);
    }
    let (kind_name, params) = map.iter().next().expect("one entry");
    let base = format!("duration.{kind_name}");
    let fields: &[&str] = match kind_name.as_str() {
        "fixed" => {
            return seconds(&base, params)
                .map(Duration::Fixed)
                .map_err(|p| vec![p])
        }
        "exponential" => &["mean"],
        "uniform" => &["min", "max"],
        "lognormal" => &["median", "sigma"],
        "pareto" => &["min", "alpha"],
        other => {
            return Err(vec![problem(
                format!("duration.{other}"),
                format!("unknown distribution, expected one of {KINDS}"),
            )])
        }
    };
    let Value::Object(params) = params else {
        return Err(vec![problem(
            base.clone(),
            format!(
                "expected a mapping of {}, got {}",
                fields.join(", "),
                kind(params)
            ),
        )]);
    };
    let mut problems = Vec::new();
    for key in params.keys() {
        if !fields.contains(&key.as_str()) {
            problems.push(problem(
                format!("{base}.{key}"),
                format!("unknown field, expected one of {}", fields.join(", ")),
            ));
        }
    }
    let mut values = Vec::new();
    for &f in fields {
        let path = format!("{base}.{f}");
        let got = match params.get(f) {
            None => Err(problem(path, "required")),
            // sigma and alpha are shape parameters, not times.
            Some(v) if f == "sigma" || f == "alpha" => number(&path, v),
            Some(v) => seconds(&path, v),
        };
        match got {
            Ok(x) => values.push(x),
            Err(p) => problems.push(p),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let d = match kind_name.as_str() {
        "exponential" => Duration::Exponential { mean_s: values[0] },
        "uniform" => Duration::Uniform {
            min_s: values[0],
            max_s: values[1],
        },
        "lognormal" => Duration::LogNormal {
            median_s: values[0],
            sigma: values[1],
        },
        _ => Duration::Pareto {
            min_s: values[0],
            alpha: values[1],
        },
    };
    let problems = d.check();
    if problems.is_empty() {
        Ok(d)
    } else {
        Err(problems)
    }
}

/// Reads a workload (see the module doc). Errors name the line number and
/// the field path; the first line with problems is reported, with all of
/// its problems.
pub fn parse_workload(text: &str) -> Result<Vec<WorkloadJob>, SimError> {
    let mut jobs = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let job = parse_line(line).map_err(|problems| SimError::Invalid {
            file: None,
            line: Some(line_no),
            problems,
        })?;
        if let Some(first) = seen.insert(job.spec.name.to_string(), line_no) {
            return Err(SimError::invalid(
                Some(line_no),
                "name",
                format!(
                    "{:?} is also the name of the job on line {first}: names must be unique",
                    job.spec.name.as_str()
                ),
            ));
        }
        jobs.push(job);
    }
    sort_jobs(&mut jobs);
    Ok(jobs)
}

/// By submit time, then name: the order the engine submits in.
pub(crate) fn sort_jobs(jobs: &mut [WorkloadJob]) {
    jobs.sort_by(|a, b| {
        a.submit_s
            .total_cmp(&b.submit_s)
            .then_with(|| a.spec.name.cmp(&b.spec.name))
    });
}

fn parse_line(line: &str) -> Result<WorkloadJob, Vec<Problem>> {
    // drover-api's strict reader first, for what a plain JSON value would
    // let through: a key given twice, a number too big for a float. Its
    // field complaints (submit and duration are not spec fields) are
    // ignored here; the spec is checked below without them.
    if let Err(SpecError::Syntax {
        column, message, ..
    }) = JobSpec::parse_json(line)
    {
        let at = column.map(|c| format!(" (column {c})")).unwrap_or_default();
        return Err(vec![problem("", format!("not valid JSON: {message}{at}"))]);
    }
    let value: Value = serde_json::from_str(line)
        .map_err(|e| vec![problem("", format!("not valid JSON: {e}"))])?;
    let Value::Object(mut map) = value else {
        return Err(vec![problem(
            "",
            format!("expected a JSON object (one job), got {}", kind(&value)),
        )]);
    };
    let mut problems = Vec::new();
    let submit_s = match map.remove("submit") {
        None | Some(Value::Null) => 0.0,
        Some(v) => seconds("submit", &v).unwrap_or_else(|p| {
            problems.push(p);
            0.0
        }),
    };
    let duration = match map.remove("duration") {
        None | Some(Value::Null) => {
            problems.push(problem(
                "duration",
                "required: how long each task runs, e.g. 30, \"5m\" or {\"exponential\": {\"mean\": \"2m\"}}",
            ));
            None
        }
        Some(v) => match parse_duration_value(&v) {
            Ok(d) => Some(d),
            Err(mut p) => {
                problems.append(&mut p);
                None
            }
        },
    };
    map.entry("command")
        .or_insert_with(|| Value::Array(vec![Value::String(DEFAULT_COMMAND.to_string())]));
    let spec = match JobSpec::from_value(Value::Object(map)) {
        Ok(spec) => Some(spec),
        Err(e) => {
            problems.extend(
                e.field_errors()
                    .iter()
                    .map(|f| problem(&f.path, &f.message)),
            );
            if let SpecError::Syntax { message, .. } = e {
                problems.push(problem("", message));
            }
            None
        }
    };
    match (spec, duration) {
        (Some(spec), Some(duration)) if problems.is_empty() => Ok(WorkloadJob {
            submit_s,
            spec,
            duration,
        }),
        _ => Err(problems),
    }
}

/// [`parse_workload`] on a file; errors name the file.
pub fn load_workload(path: &Path) -> Result<Vec<WorkloadJob>, SimError> {
    parse_workload(&read_text(path)?).map_err(|e| e.in_file(path))
}

/// The workload as JSON Lines that [`parse_workload`] reads back to equal
/// jobs: `submit` and `duration` in seconds, then the spec's fields in the
/// spec's order, leaving out those at their defaults (type batch, the
/// default command, no env, no constraints, the default restart policy).
pub fn to_jsonl(jobs: &[WorkloadJob]) -> String {
    fn field(out: &mut String, key: &str, value: &impl serde::Serialize) {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        // Cannot fail: every value here is a plain tree of strings and numbers.
        out.push_str(&serde_json::to_string(value).unwrap_or_else(|_| "null".into()));
    }
    let mut out = String::new();
    for job in jobs {
        let spec = &job.spec;
        out.push_str("{\"submit\":");
        out.push_str(&json_number(job.submit_s).to_string());
        out.push_str(",\"duration\":");
        out.push_str(&job.duration.to_json());
        field(&mut out, "name", &spec.name);
        if spec.job_type != JobType::Batch {
            field(&mut out, "type", &spec.job_type);
        }
        field(&mut out, "priority", &spec.priority);
        if let Some(policy) = spec.policy {
            field(&mut out, "policy", &policy);
        }
        match spec.shards {
            Some(shards) => field(&mut out, "shards", &shards),
            None => field(&mut out, "count", &spec.count),
        }
        if let Some(elastic) = spec.elastic {
            field(&mut out, "elastic", &elastic);
        }
        if spec.command != [DEFAULT_COMMAND] {
            field(&mut out, "command", &spec.command);
        }
        if !spec.env.is_empty() {
            field(&mut out, "env", &spec.env);
        }
        field(&mut out, "resources", &spec.resources);
        if !spec.constraints.labels.is_empty() || spec.constraints.gpu_model.is_some() {
            field(&mut out, "constraints", &spec.constraints);
        }
        if spec.restart != RestartPolicy::default() {
            field(&mut out, "restart", &spec.restart);
        }
        if let Some(d) = spec.kill_timeout {
            field(
                &mut out,
                "kill_timeout",
                &humantime::format_duration(d).to_string(),
            );
        }
        out.push_str("}\n");
    }
    out
}

// ---------------------------------------------------------------------------
// YAML helpers: typed reading with serde_yaml, so that problems come with
// the line serde_yaml was at, and serde_path_to_error for the field path.
// ---------------------------------------------------------------------------

/// Strips serde_yaml's " at line L column C" (the line is reported apart).
fn yaml_problem(err: serde_path_to_error::Error<serde_yaml::Error>) -> SimError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let line = inner.location().map(|l| l.line());
    let mut message = inner.to_string();
    if let Some(loc) = inner.location() {
        let at = format!(" at line {} column {}", loc.line(), loc.column());
        if let Some(i) = message.find(&at) {
            message.replace_range(i..i + at.len(), "");
        }
    }
    // serde_yaml puts its own path (".[2].cpu: ") before the message; the
    // field is reported apart.
    for prefix in [format!("{path}: "), format!(".{path}: ")] {
        if let Some(rest) = message.strip_prefix(&prefix) {
            message = rest.to_string();
            break;
        }
    }
    let field = if path == "." { String::new() } else { path };
    SimError::Invalid {
        file: None,
        line,
        problems: vec![problem(field, message)],
    }
}

fn from_yaml<T: de::DeserializeOwned>(text: &str) -> Result<T, SimError> {
    serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(text)).map_err(yaml_problem)
}

/// Whether a YAML text holds nothing but comments and blanks.
fn yaml_is_empty(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t == "---"
    })
}

/// Reads a string and checks it inside the visitor: serde_yaml gives the
/// value's own line only to errors raised while it reads the value.
fn checked_str<'de, D, T>(
    d: D,
    expecting: &'static str,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<F>(&'static str, F);
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.1)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(expecting, check))
}

/// A CPU or memory amount, more than zero. Checked inside the visitor so
/// that serde_yaml puts the line of the value itself on the error.
struct Positive<T>(T);

impl<'de, T> Deserialize<'de> for Positive<T>
where
    T: FromStr<Err = QuantityError> + Copy + PositiveAmount,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: FromStr<Err = QuantityError> + Copy + PositiveAmount> Visitor<'_> for V<T> {
            type Value = Positive<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let q: T = v.parse().map_err(E::custom)?;
                if q.is_zero() {
                    return Err(E::custom("must be more than zero"));
                }
                Ok(Positive(q))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

trait PositiveAmount {
    const EXPECTING: &'static str;
    fn is_zero(&self) -> bool;
}

impl PositiveAmount for Cpu {
    const EXPECTING: &'static str = "cores (16) or millicores (\"16000m\")";
    fn is_zero(&self) -> bool {
        self.millis() == 0
    }
}

impl PositiveAmount for Memory {
    const EXPECTING: &'static str = "a size such as \"64Gi\"";
    fn is_zero(&self) -> bool {
        self.bytes() == 0
    }
}

/// Seconds: a number, or a duration string. `POSITIVE` refuses zero.
struct Secs<const POSITIVE: bool>(f64);

impl<'de, const POSITIVE: bool> Deserialize<'de> for Secs<POSITIVE> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const P: bool>;
        impl<const P: bool> V<P> {
            fn check<E: de::Error>(x: f64) -> Result<Secs<P>, E> {
                if !x.is_finite() || x < 0.0 || (P && x == 0.0) {
                    let least = if P { "more than 0" } else { "at least 0" };
                    return Err(E::custom(format!("must be {least} seconds, got {x}")));
                }
                Ok(Secs(x))
            }
        }
        impl<const P: bool> Visitor<'_> for V<P> {
            type Value = Secs<P>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_HINT)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secs<P>, E> {
                Self::check(parse_duration_text(v).map_err(E::custom)?)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Secs<P>, E> {
                Self::check(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Secs<P>, E> {
                Self::check(v as f64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Secs<P>, E> {
                Self::check(v)
            }
        }
        d.deserialize_any(V::<POSITIVE>)
    }
}

/// A label value: YAML scalars of any kind, as text (`rack: 3` is "3").
struct LabelValue(String);

impl<'de> Deserialize<'de> for LabelValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = LabelValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<LabelValue, E> {
                Ok(LabelValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

/// Longest class name: its node ids get `-<index>` added and must stay
/// within drover-api's 128 bytes.
pub const MAX_CLASS_NAME_LEN: usize = 100;

/// `count` identical nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeClass {
    pub name: String,
    pub count: u32,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    /// What the nodes' GPUs call themselves (a job's
    /// `constraints.gpu_model` must be a substring of it).
    pub gpu_model: String,
    pub labels: BTreeMap<String, String>,
}

struct ClassName(String);

impl<'de> Deserialize<'de> for ClassName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "a class name", |s| {
            let ok = !s.is_empty()
                && s.len() <= MAX_CLASS_NAME_LEN
                && s.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
            if ok {
                Ok(ClassName(s.to_string()))
            } else {
                Err(format!(
                    "{s:?} is not a class name: use 1 to {MAX_CLASS_NAME_LEN} of [A-Za-z0-9._-] (node ids are <name>-<index>)"
                ))
            }
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    name: ClassName,
    #[serde(default = "one")]
    count: u32,
    cpu: Positive<Cpu>,
    memory: Positive<Memory>,
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    gpu_model: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, LabelValue>,
}

fn one() -> u32 {
    1
}

/// Reads a cluster: a YAML list of node classes (see the module doc).
pub fn parse_cluster(text: &str) -> Result<Vec<NodeClass>, SimError> {
    if yaml_is_empty(text) {
        return Err(SimError::invalid(
            None,
            "",
            "no node classes: expected a list such as [{name: cpu, count: 4, cpu: 16, memory: 64Gi}]",
        ));
    }
    let raw: Vec<RawClass> = from_yaml(text)?;
    let mut classes = Vec::with_capacity(raw.len());
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, c) in raw.into_iter().enumerate() {
        let name = c.name.0;
        if let Some(first) = seen.insert(name.clone(), i) {
            return Err(SimError::invalid(
                None,
                format!("[{i}].name"),
                format!("{name:?} is also the name of class [{first}]: names must be unique"),
            ));
        }
        for key in c.labels.keys() {
            if key.is_empty() {
                return Err(SimError::invalid(
                    None,
                    format!("[{i}].labels"),
                    "label names must not be empty",
                ));
            }
        }
        let gpu_model = match c.gpu_model {
            Some(m) => m,
            None if c.gpus > 0 => "GPU".to_string(),
            None => String::new(),
        };
        classes.push(NodeClass {
            name,
            count: c.count,
            cpu_millis: c.cpu.0.millis(),
            memory_bytes: c.memory.0.bytes(),
            gpus: c.gpus,
            gpu_model,
            labels: c.labels.into_iter().map(|(k, v)| (k, v.0)).collect(),
        });
    }
    if classes.iter().all(|c| c.count == 0) {
        return Err(SimError::invalid(
            None,
            "",
            "the cluster has no nodes: every class has count 0",
        ));
    }
    Ok(classes)
}

/// [`parse_cluster`] on a file; errors name the file.
pub fn load_cluster(path: &Path) -> Result<Vec<NodeClass>, SimError> {
    parse_cluster(&read_text(path)?).map_err(|e| e.in_file(path))
}

/// Node ids the engine gives the nodes: `<class name>-<i>` for i in
/// 0..count, class by class, in file order. Never two alike: the part
/// after the last '-' is the index, so equal ids mean equal classes.
pub fn node_ids(classes: &[NodeClass]) -> Vec<(String, usize)> {
    classes
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| (0..c.count).map(move |i| (format!("{}-{i}", c.name), ci)))
        .collect()
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

/// Node failures, in time order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Faults {
    pub events: Vec<FaultEvent>,
}

/// One node failure.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultEvent {
    /// A node id as [`node_ids`] names them.
    pub node: String,
    /// Seconds after the start of the run.
    pub at_s: f64,
    /// How long the node stays down; `None`: never back.
    pub recover_after_s: Option<f64>,
}

thread_local! {
    /// The cluster's node ids and class names while a faults file is read.
    /// serde_yaml gives a line only to errors raised while it reads the
    /// value itself, so "no such node" must be found there, by a
    /// `Deserialize` that has no other way to see the cluster.
    static CLUSTER: RefCell<Option<KnownCluster>> = const { RefCell::new(None) };
}

struct KnownCluster {
    nodes: BTreeSet<String>,
    classes: BTreeSet<String>,
    /// "cpu-0..cpu-7, gpu-0..gpu-1", for messages.
    summary: String,
}

/// Clears [`CLUSTER`] however the reading ends.
struct ClusterGuard;

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        CLUSTER.with(|c| c.borrow_mut().take());
    }
}

fn class_of(node: &str) -> &str {
    node.rsplit_once('-').map_or(node, |(class, _)| class)
}

impl KnownCluster {
    fn new(nodes: &[(String, usize)]) -> Self {
        let mut ranges: Vec<(usize, &str, &str)> = Vec::new();
        for (id, ci) in nodes {
            match ranges.last_mut() {
                Some((last_ci, _, last)) if last_ci == ci => *last = id,
                _ => ranges.push((*ci, id, id)),
            }
        }
        let summary = ranges
            .iter()
            .map(|(_, first, last)| {
                if first == last {
                    first.to_string()
                } else {
                    format!("{first}..{last}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        KnownCluster {
            nodes: nodes.iter().map(|(id, _)| id.clone()).collect(),
            classes: nodes
                .iter()
                .map(|(id, _)| class_of(id).to_string())
                .collect(),
            summary,
        }
    }
}

/// A node id of the cluster.
struct KnownNode(String);

impl<'de> Deserialize<'de> for KnownNode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "a node id such as gpu-0", |id| {
            CLUSTER.with(|c| match &*c.borrow() {
                Some(k) if !k.nodes.contains(id) => Err(format!(
                    "{id:?} is not a node of the cluster: nodes are {}",
                    k.summary
                )),
                _ => Ok(KnownNode(id.to_string())),
            })
        })
    }
}

/// A class name of the cluster.
struct KnownClass(String);

impl<'de> Deserialize<'de> for KnownClass {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, "a node class name", |name| {
            CLUSTER.with(|c| match &*c.borrow() {
                Some(k) if !k.classes.contains(name) => Err(format!(
                    "{name:?} is not a class of the cluster: classes are {}",
                    k.classes.iter().cloned().collect::<Vec<_>>().join(", ")
                )),
                _ => Ok(KnownClass(name.to_string())),
            })
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFaults {
    #[serde(default)]
    at: Vec<RawAt>,
    #[serde(default)]
    rate: Option<RawRate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAt {
    node: KnownNode,
    at: Secs<false>,
    #[serde(default)]
    recover_after: Option<Secs<true>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    per_node_per_hour: PerHour,
    #[serde(default)]
    recover_after: Option<Secs<true>>,
    until: Secs<true>,
    #[serde(default)]
    classes: Option<Vec<KnownClass>>,
}

/// A rate: a finite number, at least 0.
struct PerHour(f64);

impl<'de> Deserialize<'de> for PerHour {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PerHour;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of failures per node per hour")
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<PerHour, E> {
                if x.is_finite() && x >= 0.0 {
                    Ok(PerHour(x))
                } else {
                    Err(E::custom(format!("must be at least 0, got {x}")))
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PerHour, E> {
                self.visit_f64(v as f64)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PerHour, E> {
                self.visit_f64(v as f64)
            }
        }
        d.deserialize_any(V)
    }
}

/// Reads faults (see the module doc) for the cluster whose nodes are
/// `nodes`. The rate form is expanded to events here, deterministically
/// from the seed: for each node, exponential times between failures
/// (drawn from a stream keyed by the seed and the node id, so adding a node
/// does not move the others' failures), no failure while the node is down,
/// none starting at or after `until`. Events are sorted by time, then node.
pub fn parse_faults(text: &str, nodes: &[(String, usize)], seed: u64) -> Result<Faults, SimError> {
    if yaml_is_empty(text) {
        return Ok(Faults::default());
    }
    let raw: RawFaults = {
        CLUSTER.with(|c| *c.borrow_mut() = Some(KnownCluster::new(nodes)));
        let _guard = ClusterGuard;
        from_yaml(text)?
    };
    let mut events: Vec<FaultEvent> = raw
        .at
        .into_iter()
        .map(|a| FaultEvent {
            node: a.node.0,
            at_s: a.at.0,
            recover_after_s: a.recover_after.map(|s| s.0),
        })
        .collect();
    if let Some(rate) = raw.rate {
        let per_s = rate.per_node_per_hour.0 / 3600.0;
        let until = rate.until.0;
        let recover = rate.recover_after.map(|s| s.0);
        let classes: Option<BTreeSet<String>> =
            rate.classes.map(|cs| cs.into_iter().map(|c| c.0).collect());
        if per_s > 0.0 {
            for (node, _) in nodes {
                if classes
                    .as_ref()
                    .is_some_and(|cs| !cs.contains(class_of(node)))
                {
                    continue;
                }
                let mut r = SplitMix64::keyed(seed, &[b"faults", node.as_bytes()]);
                let mut t = 0.0;
                loop {
                    t += r.exponential(1.0 / per_s);
                    if t >= until {
                        break;
                    }
                    events.push(FaultEvent {
                        node: node.clone(),
                        at_s: t,
                        recover_after_s: recover,
                    });
                    match recover {
                        Some(down) => t += down,
                        None => break,
                    }
                }
            }
        }
    }
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s).then_with(|| a.node.cmp(&b.node)));
    Ok(Faults { events })
}

/// [`parse_faults`] on a file; errors name the file.
pub fn load_faults(path: &Path, nodes: &[(String, usize)], seed: u64) -> Result<Faults, SimError> {
    parse_faults(&read_text(path)?, nodes, seed).map_err(|e| e.in_file(path))
}

#[cfg(test)]
mod tests;
