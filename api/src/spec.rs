//! The job spec (DESIGN §5): what a user submits, typed and validated.
//!
//! Text is first read into a `serde_json::Value` (YAML and JSON alike), then a
//! hand-written walk over that value checks every field and **collects every
//! problem**, each with the path of the field it is about:
//!
//! ```text
//! resources.memory: "12Zb" is not a size: ...; command[0]: the program must not be empty
//! ```
//!
//! [`JobSpec`]'s `Deserialize` goes through the same walk, so a `JobSpec` read
//! from the wire is always valid. Its `Serialize` writes the canonical form
//! (every field present, defaults filled in), which parses back to an equal spec.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::ser::SerializeStruct;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::ids::JobId;
use crate::policy::PolicyKind;
use crate::quantity::{Cpu, Memory, QuantityError};

/// Most tasks (`count`) or shards (`shards`) a job may have.
pub const MAX_TASKS: u32 = 1_000_000;
/// Most CPU one task may ask for, in millicores: 65,536 cores, beyond any
/// machine built, so that a typo ("999999") is a 400 rather than a task
/// that waits forever.
pub const MAX_CPU_MILLIS: u64 = 65_536_000;
/// Most memory one task may ask for: 1 PiB, for the same reason.
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// Most GPUs one task may ask for.
pub const MAX_GPUS_PER_TASK: u32 = 64;
/// Most elements of `command`, the program included.
pub const MAX_COMMAND_ARGS: usize = 256;
/// Longest element of `command`, in bytes.
pub const MAX_ARG_BYTES: usize = 4096;
/// Most entries in `env`.
pub const MAX_ENV_VARS: usize = 256;
/// Most entries in `constraints.labels`.
pub const MAX_LABELS: usize = 256;
/// Longest label key or value (and `gpu_model`), in bytes, as for DNS names.
pub const MAX_LABEL_BYTES: usize = 253;
/// Most restart attempts.
pub const MAX_RESTART_ATTEMPTS: u32 = 1000;
/// Longest `restart.delay` / `restart.max_delay`: one year, as humantime counts it.
pub const MAX_RESTART_DELAY: Duration = Duration::from_secs(31_557_600);
/// Longest `kill_timeout`: a stopping task holds its node's resources (and
/// blocks its next attempt) for this long at worst.
pub const MAX_KILL_TIMEOUT: Duration = Duration::from_secs(3600);
/// At most this many problems are listed; the rest are counted.
pub const MAX_REPORTED_ERRORS: usize = 100;
/// Prefix of the environment variables that Drover sets itself.
pub const RESERVED_ENV_PREFIX: &str = "DROVER_";
/// The GPU variable Drover sets from the devices it assigns.
pub const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";

const ROOT_FIELDS: &[&str] = &[
    "name",
    "type",
    "priority",
    "policy",
    "count",
    "shards",
    "elastic",
    "command",
    "env",
    "resources",
    "constraints",
    "restart",
    "kill_timeout",
];
const ELASTIC_FIELDS: &[&str] = &["min", "max"];
const RESOURCE_FIELDS: &[&str] = &["cpu", "memory", "gpu"];
const CONSTRAINT_FIELDS: &[&str] = &["labels", "gpu_model"];
const RESTART_FIELDS: &[&str] = &["attempts", "delay", "backoff", "max_delay"];

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/// A validated job spec. Build one with [`JobSpec::parse_yaml`],
/// [`JobSpec::parse_json`], [`JobSpec::from_value`] or serde, or in code with
/// [`JobSpec::new`] and the public fields.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The job's id.
    pub name: JobId,
    /// `type:` in the spec.
    pub job_type: JobType,
    /// 0..=100; higher runs first and, under the `priority` policy, may preempt.
    pub priority: u8,
    /// The placement policy; the master's default when `None`.
    pub policy: Option<PolicyKind>,
    /// Identical tasks. Not meaningful when `shards` is set (it is then 1);
    /// use [`JobSpec::task_count`].
    pub count: u32,
    /// Shards, each processed once to success (batch jobs only).
    pub shards: Option<u32>,
    /// Gang-admission and growth bounds for sharded jobs.
    pub elastic: Option<Elastic>,
    /// Program and arguments; no shell.
    pub command: Vec<String>,
    /// Extra environment for every task.
    pub env: BTreeMap<String, String>,
    pub resources: ResourceRequest,
    pub constraints: Constraints,
    pub restart: RestartPolicy,
    /// How long a stopped task has between SIGTERM and SIGKILL; the
    /// master's `scheduler.kill_grace` when `None`. At most
    /// [`MAX_KILL_TIMEOUT`].
    pub kill_timeout: Option<Duration>,
}

/// `batch` tasks run to completion; `service` tasks are restarted whenever they end.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    #[default]
    Batch,
    Service,
}

/// `elastic: {min, max}`: start when `min` shards can run at once, grow to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Elastic {
    pub min: u32,
    pub max: u32,
}

/// What one task needs on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ResourceRequest {
    pub cpu: Cpu,
    pub memory: Memory,
    pub gpu: u32,
}

/// Where a task may run.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize)]
pub struct Constraints {
    /// Every label must be present on the node with this value.
    pub labels: BTreeMap<String, String>,
    /// Only GPUs whose model contains this text (needs `resources.gpu >= 1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
}

/// How a failed or lost task is retried.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RestartPolicy {
    /// Further attempts after the first one fails; 0 means never restart.
    pub attempts: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub delay: Duration,
    /// Each restart waits `backoff` times longer than the one before.
    pub backoff: f64,
    #[serde(serialize_with = "serialize_duration")]
    pub max_delay: Duration,
}

impl Default for ResourceRequest {
    fn default() -> Self {
        ResourceRequest {
            cpu: Cpu(100),
            memory: Memory(64 << 20),
            gpu: 0,
        }
    }
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            attempts: 3,
            delay: Duration::from_secs(1),
            backoff: 2.0,
            max_delay: Duration::from_secs(300),
        }
    }
}

impl JobType {
    pub const fn name(self) -> &'static str {
        match self {
            JobType::Batch => "batch",
            JobType::Service => "service",
        }
    }
}

impl fmt::Display for JobType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a string is not a job type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a job type: use batch or service")]
pub struct UnknownJobType(pub String);

impl FromStr for JobType {
    type Err = UnknownJobType;
    fn from_str(s: &str) -> Result<Self, UnknownJobType> {
        match s {
            "batch" => Ok(JobType::Batch),
            "service" => Ok(JobType::Service),
            _ => Err(UnknownJobType(s.to_string())),
        }
    }
}

impl RestartPolicy {
    /// How long to wait before restarting a task whose attempt number
    /// `attempt` (1-based) failed: `delay * backoff^(attempt - 1)`, never more
    /// than `max_delay`. Attempt 0 is treated as 1.
    ///
    /// Saturates at `max_delay` instead of overflowing, whatever the fields hold.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let cap = self.max_delay;
        let base = self.delay.min(cap);
        let exponent = attempt.saturating_sub(1);
        if exponent == 0 || base.is_zero() {
            return base;
        }
        // A backoff below 1 or NaN could only come from code that skipped
        // validation; treat it as "no growth".
        let backoff = if self.backoff >= 1.0 {
            self.backoff
        } else {
            1.0
        };
        if backoff == 1.0 {
            return base;
        }
        let secs = self.delay.as_secs_f64() * backoff.powf(f64::from(exponent));
        match Duration::try_from_secs_f64(secs) {
            Ok(d) if d < cap => d,
            _ => cap,
        }
    }
}

impl JobSpec {
    /// A spec with every default: one batch task, priority 50, 100m CPU,
    /// 64Mi memory, 3 restart attempts.
    pub fn new(name: JobId, command: Vec<String>) -> Self {
        JobSpec {
            name,
            job_type: JobType::Batch,
            priority: 50,
            policy: None,
            count: 1,
            shards: None,
            elastic: None,
            command,
            env: BTreeMap::new(),
            resources: ResourceRequest::default(),
            constraints: Constraints::default(),
            restart: RestartPolicy::default(),
            kill_timeout: None,
        }
    }

    /// The number of tasks: `shards` when set, else `count`.
    pub fn task_count(&self) -> u32 {
        self.shards.unwrap_or(self.count)
    }

    /// The policy that places this job: elastic jobs always use
    /// elastic-sharding; others their own `policy`, else `default`.
    pub fn effective_policy(&self, default: PolicyKind) -> PolicyKind {
        if self.elastic.is_some() {
            PolicyKind::ElasticSharding
        } else {
            self.policy.unwrap_or(default)
        }
    }

    /// Parses and validates a YAML spec.
    pub fn parse_yaml(text: &str) -> Result<JobSpec, SpecError> {
        check_yaml_flow_depth(text)?;
        let StrictValue(value) = serde_yaml::from_str(text).map_err(SpecError::from_yaml)?;
        JobSpec::from_value(value)
    }

    /// Parses and validates a JSON spec.
    pub fn parse_json(text: &str) -> Result<JobSpec, SpecError> {
        let StrictValue(value) = serde_json::from_str(text).map_err(SpecError::from_json)?;
        JobSpec::from_value(value)
    }

    /// Validates an already parsed document.
    pub fn from_value(value: Value) -> Result<JobSpec, SpecError> {
        validate(&value).map_err(SpecError::Invalid)
    }

    /// The canonical YAML form.
    pub fn to_yaml(&self) -> String {
        // Cannot fail: every key is a string and every value a plain scalar,
        // sequence or mapping. Should a serializer ever refuse, JSON is YAML too.
        serde_yaml::to_string(self).unwrap_or_else(|_| self.to_json())
    }

    /// The canonical JSON form, pretty-printed.
    pub fn to_json(&self) -> String {
        // Cannot fail, for the same reasons as `to_yaml`.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

fn serialize_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

impl Serialize for JobSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let len = 9
            + usize::from(self.kill_timeout.is_some())
            + usize::from(self.policy.is_some())
            + usize::from(self.shards.is_some())
            + usize::from(self.elastic.is_some());
        let mut st = s.serialize_struct("JobSpec", len)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("type", &self.job_type)?;
        st.serialize_field("priority", &self.priority)?;
        match &self.policy {
            Some(policy) => st.serialize_field("policy", policy)?,
            None => st.skip_field("policy")?,
        }
        match &self.shards {
            Some(shards) => {
                st.skip_field("count")?;
                st.serialize_field("shards", shards)?;
            }
            None => {
                st.serialize_field("count", &self.count)?;
                st.skip_field("shards")?;
            }
        }
        match &self.elastic {
            Some(elastic) => st.serialize_field("elastic", elastic)?,
            None => st.skip_field("elastic")?,
        }
        st.serialize_field("command", &self.command)?;
        st.serialize_field("env", &self.env)?;
        st.serialize_field("resources", &self.resources)?;
        st.serialize_field("constraints", &self.constraints)?;
        st.serialize_field("restart", &self.restart)?;
        match &self.kill_timeout {
            Some(d) => {
                st.serialize_field("kill_timeout", &humantime::format_duration(*d).to_string())?
            }
            None => st.skip_field("kill_timeout")?,
        }
        st.end()
    }
}

impl<'de> Deserialize<'de> for JobSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let StrictValue(value) = StrictValue::deserialize(d)?;
        JobSpec::from_value(value).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The text is not YAML / JSON at all (or has duplicate keys, or a
    /// non-finite number). Line and column are 1-based.
    #[error("{}", syntax_display(*line, *column, message))]
    Syntax {
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// The document was read but breaks the rules; every problem is listed.
    #[error("{0}")]
    Invalid(ValidationErrors),
}

fn syntax_display(line: Option<usize>, column: Option<usize>, message: &str) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("line {l}, column {c}: {message}"),
        (Some(l), None) => format!("line {l}: {message}"),
        _ => message.to_string(),
    }
}

/// Deepest `[`/`{` nesting a YAML spec may have. A spec needs 3.
pub const MAX_YAML_FLOW_DEPTH: usize = 32;

/// libyaml (under serde_yaml) takes time quadratic in flow nesting before its
/// own recursion limit applies: 100k `[` in a 200 KB body cost 30 s of CPU.
/// A linear pre-scan refuses such input first. It skips quoted scalars and
/// comments; a bracket inside a plain scalar counts, which can only make it
/// stricter, and no real spec comes near the limit.
fn check_yaml_flow_depth(text: &str) -> Result<(), SpecError> {
    let mut depth = 0usize;
    let mut line = 1usize;
    let mut column = 0usize;
    let mut chars = text.chars().peekable();
    let mut prev_blank = true;
    while let Some(c) = chars.next() {
        column += 1;
        match c {
            '\n' => {
                line += 1;
                column = 0;
            }
            '#' if prev_blank => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '"' if prev_blank => {
                while let Some(q) = chars.next() {
                    match q {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        '\n' => line += 1,
                        _ => {}
                    }
                }
            }
            '\'' if prev_blank => {
                while let Some(q) = chars.next() {
                    match q {
                        '\'' if chars.peek() == Some(&'\'') => {
                            chars.next();
                        }
                        '\'' => break,
                        '\n' => line += 1,
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                if depth > MAX_YAML_FLOW_DEPTH {
                    return Err(SpecError::Syntax {
                        line: Some(line),
                        column: Some(column),
                        message: format!("nesting deeper than {MAX_YAML_FLOW_DEPTH} levels"),
                    });
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        // Quotes and comments only start after a separator; mid-word they
        // are part of a plain scalar (`it's`, `a"b`, `a#b`).
        prev_blank = c.is_whitespace() || matches!(c, '[' | '{' | ',' | ':');
    }
    Ok(())
}

impl SpecError {
    /// The field problems, empty for syntax errors.
    pub fn field_errors(&self) -> &[FieldError] {
        match self {
            SpecError::Invalid(errors) => &errors.0,
            SpecError::Syntax { .. } => &[],
        }
    }

    fn from_yaml(err: serde_yaml::Error) -> SpecError {
        let full = err.to_string();
        match err.location() {
            Some(loc) => {
                let at = format!(" at line {} column {}", loc.line(), loc.column());
                let message = match full.find(&at) {
                    Some(i) => format!("{}{}", &full[..i], &full[i + at.len()..]),
                    None => full,
                };
                SpecError::Syntax {
                    line: Some(loc.line()),
                    column: Some(loc.column()),
                    message,
                }
            }
            None => SpecError::Syntax {
                line: None,
                column: None,
                message: full,
            },
        }
    }

    fn from_json(err: serde_json::Error) -> SpecError {
        let full = err.to_string();
        if err.line() == 0 {
            return SpecError::Syntax {
                line: None,
                column: None,
                message: full,
            };
        }
        let at = format!(" at line {} column {}", err.line(), err.column());
        let message = full.strip_suffix(&at).map(str::to_string).unwrap_or(full);
        SpecError::Syntax {
            line: Some(err.line()),
            column: Some(err.column()),
            message,
        }
    }
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    /// `name`, `resources.cpu`, `command[0]`, `env.FOO`, `constraints.labels.zone`;
    /// `(root)` for the document itself. Keys that are not plain words are quoted.
    pub path: String,
    pub message: String,
}

/// Every problem found in a spec, in the order the fields are checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// The problems about exactly this path.
    pub fn at<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a FieldError> + 'a {
        self.0.iter().filter(move |e| e.path == path)
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

// ---------------------------------------------------------------------------
// Reading text into a Value, strictly
// ---------------------------------------------------------------------------

/// A `serde_json::Value` that refuses duplicate keys and non-finite numbers
/// (YAML's `.nan`/`.inf`, which `serde_json::Value` would silently turn into
/// `null`). Works with any deserializer, so both parsers report the position.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON or YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        match i64::try_from(v) {
            Ok(small) => Ok(Value::from(small)),
            // Too big for any field; keep it as an (imprecise) number so the
            // validator can say which field is out of range.
            Err(_) => self.visit_f64(v as f64),
        }
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        match u64::try_from(v) {
            Ok(small) => Ok(Value::from(small)),
            Err(_) => self.visit_f64(v as f64),
        }
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a finite number")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(NewKey(&out))? {
            let StrictValue(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Reads a mapping key, refusing one already in the mapping. Checking here
/// rather than after the fact lets the parser point at the repeated key.
struct NewKey<'a>(&'a Map<String, Value>);

impl<'de> de::DeserializeSeed<'de> for NewKey<'_> {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl de::Visitor<'_> for NewKey<'_> {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<String, E> {
        if self.0.contains_key(key) {
            return Err(E::custom(format_args!("duplicate key {key:?}")));
        }
        Ok(key.to_string())
    }
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// A field's outcome: not given (or null), given but wrong (already
/// reported), or given and fine. Cross-field rules only look at fields whose
/// own value was fine or absent, so one mistake is reported once.
enum Got<T> {
    Absent,
    Bad,
    Ok(T),
}

impl<T> Got<T> {
    fn present(&self) -> bool {
        !matches!(self, Got::Absent)
    }
    fn ok(&self) -> Option<&T> {
        match self {
            Got::Ok(v) => Some(v),
            _ => None,
        }
    }
    fn or(self, default: T) -> T {
        match self {
            Got::Ok(v) => v,
            _ => default,
        }
    }
    fn or_none(self) -> Option<T> {
        match self {
            Got::Ok(v) => Some(v),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Cx {
    errors: Vec<FieldError>,
    dropped: usize,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `parent.key`, quoting keys that are not plain words and shortening huge ones.
fn child(parent: &str, key: &str) -> String {
    const MAX_SHOWN: usize = 64;
    let shown = if is_plain_key(key) && key.len() <= MAX_SHOWN {
        key.to_string()
    } else if key.chars().count() <= MAX_SHOWN {
        format!("{key:?}")
    } else {
        let head: String = key.chars().take(MAX_SHOWN).collect();
        format!("{:?}", format!("{head}..."))
    };
    if parent.is_empty() {
        shown
    } else {
        format!("{parent}.{shown}")
    }
}

fn root_path(path: &str) -> &str {
    if path.is_empty() {
        "(root)"
    } else {
        path
    }
}

/// A present, non-null value of `map[key]`.
fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

impl Cx {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        if self.errors.len() < MAX_REPORTED_ERRORS {
            self.errors.push(FieldError {
                path: root_path(path).to_string(),
                message: message.into(),
            });
        } else {
            self.dropped += 1;
        }
    }

    fn type_err(&mut self, path: &str, expected: &str, got: &Value) {
        self.err(path, format!("expected {expected}, got {}", kind(got)));
    }

    fn finish(mut self) -> ValidationErrors {
        if self.dropped > 0 {
            self.errors.push(FieldError {
                path: "(root)".to_string(),
                message: format!("{} more problems not shown", self.dropped),
            });
        }
        ValidationErrors(self.errors)
    }

    /// Checks `map[key]` with `check` when it is present and not null.
    fn opt<T>(
        &mut self,
        map: &Map<String, Value>,
        parent: &str,
        key: &str,
        check: impl FnOnce(&mut Cx, &str, &Value) -> Option<T>,
    ) -> Got<T> {
        match get(map, key) {
            None => Got::Absent,
            Some(v) => match check(self, &child(parent, key), v) {
                Some(t) => Got::Ok(t),
                None => Got::Bad,
            },
        }
    }

    /// Like `opt`, but reports a missing field.
    fn required<T>(
        &mut self,
        map: &Map<String, Value>,
        parent: &str,
        key: &str,
        check: impl FnOnce(&mut Cx, &str, &Value) -> Option<T>,
    ) -> Got<T> {
        let got = self.opt(map, parent, key, check);
        if !got.present() {
            self.err(&child(parent, key), "required");
            return Got::Bad;
        }
        got
    }

    /// A mapping whose keys are all in `allowed`.
    fn mapping<'a>(
        &mut self,
        path: &str,
        v: &'a Value,
        allowed: &[&str],
    ) -> Option<&'a Map<String, Value>> {
        let Value::Object(map) = v else {
            self.type_err(path, "a mapping", v);
            return None;
        };
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                self.err(
                    &child(path, key),
                    format!("unknown field, expected one of {}", allowed.join(", ")),
                );
            }
        }
        // Unknown fields are reported; the known ones are still checked.
        Some(map)
    }

    /// A whole number in `min..=max`. Integral floats (`3.0`) count, as in
    /// JSON Schema: JSON itself has only "numbers".
    fn int(&mut self, path: &str, v: &Value, min: u64, max: u64) -> Option<u64> {
        let range = |n: &dyn fmt::Display| format!("must be between {min} and {max}, got {n}");
        let Value::Number(n) = v else {
            self.type_err(path, "an integer", v);
            return None;
        };
        if let Some(u) = n.as_u64() {
            if (min..=max).contains(&u) {
                return Some(u);
            }
            self.err(path, range(&u));
            return None;
        }
        if let Some(i) = n.as_i64() {
            self.err(path, range(&i));
            return None;
        }
        let f = n.as_f64().unwrap_or(f64::NAN);
        if f.fract() != 0.0 || !f.is_finite() {
            self.err(path, format!("expected an integer, got {n}"));
            return None;
        }
        if f >= min as f64 && f <= max as f64 {
            return Some(f as u64);
        }
        self.err(path, range(n));
        None
    }

    fn u32(&mut self, path: &str, v: &Value, min: u32, max: u32) -> Option<u32> {
        self.int(path, v, u64::from(min), u64::from(max))
            .and_then(|n| u32::try_from(n).ok())
    }

    fn string<'a>(&mut self, path: &str, v: &'a Value) -> Option<&'a str> {
        match v {
            Value::String(s) => Some(s),
            _ => {
                self.type_err(path, "a string", v);
                None
            }
        }
    }

    /// A string; numbers and booleans are taken as their text (`PORT: 8080`).
    fn scalar_text(&mut self, path: &str, v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null => {
                self.err(
                    path,
                    "expected a string, got null (write \"\" for an empty value)",
                );
                None
            }
            _ => {
                self.type_err(path, "a string", v);
                None
            }
        }
    }

    fn quantity<T: FromStr<Err = QuantityError>>(
        &mut self,
        path: &str,
        v: &Value,
        expected: &str,
    ) -> Option<T> {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => {
                self.type_err(path, expected, v);
                return None;
            }
        };
        if text.trim_start().starts_with('-') {
            self.err(path, "must not be negative");
            return None;
        }
        match text.parse::<T>() {
            Ok(q) => Some(q),
            Err(e) => {
                self.err(path, e.to_string());
                None
            }
        }
    }

    fn duration(&mut self, path: &str, v: &Value) -> Option<Duration> {
        let Value::String(s) = v else {
            self.type_err(path, "a duration such as \"1s\" or \"500ms\"", v);
            return None;
        };
        if s.trim_start().starts_with('-') {
            self.err(path, "must not be negative");
            return None;
        }
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d <= MAX_RESTART_DELAY => Some(d),
            Ok(_) => {
                self.err(
                    path,
                    format!(
                        "must be at most {}",
                        humantime::format_duration(MAX_RESTART_DELAY)
                    ),
                );
                None
            }
            Err(e) => {
                self.err(
                    path,
                    format!(
                        "{s:?} is not a duration ({e}): use e.g. \"1s\", \"500ms\", \"1m 30s\""
                    ),
                );
                None
            }
        }
    }
}

fn check_name(cx: &mut Cx, path: &str, v: &Value) -> Option<JobId> {
    let s = cx.string(path, v)?;
    match JobId::new(s) {
        Ok(id) => Some(id),
        Err(e) => {
            cx.err(path, e.to_string());
            None
        }
    }
}

fn check_job_type(cx: &mut Cx, path: &str, v: &Value) -> Option<JobType> {
    let s = cx.string(path, v)?;
    match s.parse() {
        Ok(t) => Some(t),
        Err(e) => {
            cx.err(path, e.to_string());
            None
        }
    }
}

fn check_policy(cx: &mut Cx, path: &str, v: &Value) -> Option<PolicyKind> {
    let s = cx.string(path, v)?;
    match s.parse::<PolicyKind>() {
        Ok(p) => Some(p),
        Err(e) => {
            cx.err(path, e.to_string());
            None
        }
    }
}

fn check_elastic(cx: &mut Cx, path: &str, v: &Value) -> Option<Elastic> {
    let map = cx.mapping(path, v, ELASTIC_FIELDS)?;
    let min = cx.required(map, path, "min", |cx, p, v| cx.u32(p, v, 1, MAX_TASKS));
    let max = cx.required(map, path, "max", |cx, p, v| cx.u32(p, v, 1, MAX_TASKS));
    let (Got::Ok(min), Got::Ok(max)) = (min, max) else {
        return None;
    };
    if min > max {
        cx.err(
            &child(path, "min"),
            format!("must not exceed elastic.max ({max}), got {min}"),
        );
        return None;
    }
    Some(Elastic { min, max })
}

fn check_command(cx: &mut Cx, path: &str, v: &Value) -> Option<Vec<String>> {
    let Value::Array(items) = v else {
        cx.type_err(path, "a list of strings such as [\"/bin/echo\", \"hi\"]", v);
        return None;
    };
    let mut ok = true;
    if items.is_empty() {
        cx.err(
            path,
            "must not be empty: give the program and its arguments",
        );
        return None;
    }
    if items.len() > MAX_COMMAND_ARGS {
        ok = false;
        cx.err(
            path,
            format!("at most {MAX_COMMAND_ARGS} arguments, got {}", items.len()),
        );
    }
    let mut args = Vec::with_capacity(items.len().min(MAX_COMMAND_ARGS));
    for (i, item) in items.iter().take(MAX_COMMAND_ARGS).enumerate() {
        let p = format!("{path}[{i}]");
        let arg = match item {
            Value::String(s) => s,
            Value::Number(_) | Value::Bool(_) => {
                cx.err(
                    &p,
                    format!(
                        "expected a string, got {} (quote it: \"{item}\")",
                        kind(item)
                    ),
                );
                ok = false;
                continue;
            }
            _ => {
                cx.type_err(&p, "a string", item);
                ok = false;
                continue;
            }
        };
        if i == 0 && arg.is_empty() {
            cx.err(&p, "the program must not be empty");
            ok = false;
        } else if arg.contains('\0') {
            cx.err(&p, "must not contain NUL bytes");
            ok = false;
        } else if arg.len() > MAX_ARG_BYTES {
            cx.err(
                &p,
                format!("at most {MAX_ARG_BYTES} bytes, got {}", arg.len()),
            );
            ok = false;
        }
        args.push(arg.clone());
    }
    ok.then_some(args)
}

fn is_env_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_env(cx: &mut Cx, path: &str, v: &Value) -> Option<BTreeMap<String, String>> {
    let Value::Object(map) = v else {
        cx.type_err(path, "a mapping of variable names to values", v);
        return None;
    };
    let mut ok = true;
    if map.len() > MAX_ENV_VARS {
        ok = false;
        cx.err(
            path,
            format!("at most {MAX_ENV_VARS} variables, got {}", map.len()),
        );
    }
    let mut env = BTreeMap::new();
    for (key, value) in map.iter().take(MAX_ENV_VARS) {
        let p = child(path, key);
        if !is_env_name(key) {
            cx.err(
                &p,
                "not a variable name: use letters, digits and _, not starting with a digit",
            );
            ok = false;
            continue;
        }
        if key.starts_with(RESERVED_ENV_PREFIX) {
            cx.err(
                &p,
                format!("reserved: Drover sets the {RESERVED_ENV_PREFIX}* variables itself"),
            );
            ok = false;
            continue;
        }
        if key == CUDA_VISIBLE_DEVICES {
            cx.err(
                &p,
                "reserved: Drover sets CUDA_VISIBLE_DEVICES to the GPUs it assigns (ask with resources.gpu)",
            );
            ok = false;
            continue;
        }
        let Some(text) = cx.scalar_text(&p, value) else {
            ok = false;
            continue;
        };
        if text.contains('\0') {
            cx.err(&p, "must not contain NUL bytes");
            ok = false;
            continue;
        }
        env.insert(key.clone(), text);
    }
    ok.then_some(env)
}

fn check_resources(
    cx: &mut Cx,
    path: &str,
    v: &Value,
) -> Option<(Got<Cpu>, Got<Memory>, Got<u32>)> {
    let map = cx.mapping(path, v, RESOURCE_FIELDS)?;
    let cpu = cx.opt(map, path, "cpu", |cx, p, v| {
        let cpu: Cpu = cx.quantity(p, v, "a CPU amount such as \"500m\" or 2")?;
        if cpu.millis() == 0 {
            cx.err(p, "must be more than zero");
            return None;
        }
        if cpu.millis() > MAX_CPU_MILLIS {
            cx.err(
                p,
                format!(
                    "at most {} cores, got {cpu}: no node could ever run it",
                    MAX_CPU_MILLIS / 1000
                ),
            );
            return None;
        }
        Some(cpu)
    });
    let memory = cx.opt(map, path, "memory", |cx, p, v| {
        let mem: Memory = cx.quantity(p, v, "a size such as \"256Mi\"")?;
        if mem.bytes() == 0 {
            cx.err(p, "must be more than zero");
            return None;
        }
        if mem.bytes() > MAX_MEMORY_BYTES {
            cx.err(
                p,
                format!("at most 1Pi, got {mem}: no node could ever run it"),
            );
            return None;
        }
        Some(mem)
    });
    let gpu = cx.opt(map, path, "gpu", |cx, p, v| {
        cx.u32(p, v, 0, MAX_GPUS_PER_TASK)
    });
    Some((cpu, memory, gpu))
}

fn check_labels(cx: &mut Cx, path: &str, v: &Value) -> Option<BTreeMap<String, String>> {
    let Value::Object(map) = v else {
        cx.type_err(path, "a mapping of label names to values", v);
        return None;
    };
    let mut ok = true;
    if map.len() > MAX_LABELS {
        ok = false;
        cx.err(
            path,
            format!("at most {MAX_LABELS} labels, got {}", map.len()),
        );
    }
    let mut labels = BTreeMap::new();
    for (key, value) in map.iter().take(MAX_LABELS) {
        let p = child(path, key);
        if key.is_empty() {
            cx.err(&p, "label names must not be empty");
            ok = false;
            continue;
        }
        if key.len() > MAX_LABEL_BYTES {
            cx.err(
                &p,
                format!(
                    "label names must be at most {MAX_LABEL_BYTES} bytes, got {}",
                    key.len()
                ),
            );
            ok = false;
            continue;
        }
        let Some(text) = cx.scalar_text(&p, value) else {
            ok = false;
            continue;
        };
        if text.len() > MAX_LABEL_BYTES {
            cx.err(
                &p,
                format!(
                    "must be at most {MAX_LABEL_BYTES} bytes, got {}",
                    text.len()
                ),
            );
            ok = false;
            continue;
        }
        labels.insert(key.clone(), text);
    }
    ok.then_some(labels)
}

fn check_gpu_model(cx: &mut Cx, path: &str, v: &Value) -> Option<String> {
    let s = cx.string(path, v)?;
    if s.trim().is_empty() {
        cx.err(path, "must not be empty");
        return None;
    }
    if s.len() > MAX_LABEL_BYTES {
        cx.err(
            path,
            format!("must be at most {MAX_LABEL_BYTES} bytes, got {}", s.len()),
        );
        return None;
    }
    Some(s.to_string())
}

fn check_backoff(cx: &mut Cx, path: &str, v: &Value) -> Option<f64> {
    let Value::Number(n) = v else {
        cx.type_err(path, "a number", v);
        return None;
    };
    match n.as_f64() {
        Some(f) if f.is_finite() && (1.0..=100.0).contains(&f) => Some(f),
        _ => {
            cx.err(path, format!("must be between 1.0 and 100.0, got {n}"));
            None
        }
    }
}

fn check_restart(cx: &mut Cx, path: &str, v: &Value) -> Option<RestartPolicy> {
    let map = cx.mapping(path, v, RESTART_FIELDS)?;
    let defaults = RestartPolicy::default();
    let attempts = cx.opt(map, path, "attempts", |cx, p, v| {
        cx.u32(p, v, 0, MAX_RESTART_ATTEMPTS)
    });
    let delay = cx.opt(map, path, "delay", Cx::duration);
    let backoff = cx.opt(map, path, "backoff", check_backoff);
    let max_delay = cx.opt(map, path, "max_delay", Cx::duration);
    let mut ok = !matches!(attempts, Got::Bad)
        && !matches!(delay, Got::Bad)
        && !matches!(backoff, Got::Bad)
        && !matches!(max_delay, Got::Bad);
    if ok {
        let max_given = max_delay.present();
        let d = delay.ok().copied().unwrap_or(defaults.delay);
        let m = max_delay.ok().copied().unwrap_or(defaults.max_delay);
        if m < d {
            ok = false;
            let (d_text, m_text) = (humantime::format_duration(d), humantime::format_duration(m));
            if max_given {
                cx.err(
                    &child(path, "max_delay"),
                    format!("must be at least restart.delay ({d_text}), got {m_text}"),
                );
            } else {
                cx.err(
                    &child(path, "delay"),
                    format!(
                        "must not exceed restart.max_delay ({m_text} by default), got {d_text}"
                    ),
                );
            }
        }
    }
    ok.then(|| RestartPolicy {
        attempts: attempts.or(defaults.attempts),
        delay: delay.or(defaults.delay),
        backoff: backoff.or(defaults.backoff),
        max_delay: max_delay.or(defaults.max_delay),
    })
}

fn validate(root: &Value) -> Result<JobSpec, ValidationErrors> {
    let mut cx = Cx::default();
    let Some(map) = cx.mapping("", root, ROOT_FIELDS) else {
        return Err(cx.finish());
    };

    let name = cx.required(map, "", "name", check_name);
    let job_type = cx.opt(map, "", "type", check_job_type);
    let priority = cx.opt(map, "", "priority", |cx, p, v| {
        cx.int(p, v, 0, 100).and_then(|n| u8::try_from(n).ok())
    });
    let policy = cx.opt(map, "", "policy", check_policy);
    let count = cx.opt(map, "", "count", |cx, p, v| cx.u32(p, v, 1, MAX_TASKS));
    let shards = cx.opt(map, "", "shards", |cx, p, v| cx.u32(p, v, 1, MAX_TASKS));
    let elastic = cx.opt(map, "", "elastic", check_elastic);
    let command = cx.required(map, "", "command", check_command);
    let env = cx.opt(map, "", "env", check_env);
    let resources = cx.opt(map, "", "resources", check_resources);
    let (cpu, memory, gpu) = match resources {
        Got::Ok(parts) => parts,
        Got::Absent => (Got::Absent, Got::Absent, Got::Absent),
        Got::Bad => (Got::Bad, Got::Bad, Got::Bad),
    };
    let constraints = cx.opt(map, "", "constraints", |cx, p, v| {
        let map = cx.mapping(p, v, CONSTRAINT_FIELDS)?;
        let labels = cx.opt(map, p, "labels", check_labels);
        let gpu_model = cx.opt(map, p, "gpu_model", check_gpu_model);
        Some((labels, gpu_model))
    });
    let (labels, gpu_model) = match constraints {
        Got::Ok(parts) => parts,
        Got::Absent => (Got::Absent, Got::Absent),
        Got::Bad => (Got::Bad, Got::Bad),
    };
    let restart = cx.opt(map, "", "restart", check_restart);
    let kill_timeout = cx.opt(map, "", "kill_timeout", |cx, p, v| {
        let d = cx.duration(p, v)?;
        if d > MAX_KILL_TIMEOUT {
            cx.err(
                p,
                format!(
                    "must be at most {}, got {}",
                    humantime::format_duration(MAX_KILL_TIMEOUT),
                    humantime::format_duration(d)
                ),
            );
            return None;
        }
        Some(d)
    });

    // Rules across fields.
    if count.present() && shards.present() {
        cx.err(
            "count",
            "cannot be used with shards: a job has either count identical tasks or shards",
        );
    }
    if elastic.present() && !shards.present() {
        cx.err(
            "elastic",
            "requires shards: elastic bounds how many shards run at once",
        );
    }
    if let (Some(e), Some(&n)) = (elastic.ok(), shards.ok()) {
        if e.max > n {
            cx.err(
                "elastic.max",
                format!("must not exceed shards ({n}), got {}", e.max),
            );
        }
    }
    match policy.ok() {
        Some(&p) if p != PolicyKind::ElasticSharding && elastic.present() => cx.err(
            "policy",
            format!("jobs with elastic are placed by elastic-sharding, not {p}"),
        ),
        Some(PolicyKind::ElasticSharding) if !(shards.present() && elastic.present()) => cx.err(
            "policy",
            "elastic-sharding needs shards and elastic: {min, max}",
        ),
        _ => {}
    }
    if matches!(job_type, Got::Ok(JobType::Service)) && shards.present() {
        cx.err(
            "shards",
            "service jobs cannot be sharded: shards run once to success (use count)",
        );
    }
    if gpu_model.present() && matches!(gpu, Got::Absent | Got::Ok(0)) {
        cx.err(
            "constraints.gpu_model",
            "requires resources.gpu of at least 1",
        );
    }

    if !cx.errors.is_empty() || cx.dropped > 0 {
        return Err(cx.finish());
    }
    let (Got::Ok(name), Got::Ok(command)) = (name, command) else {
        // Unreachable: a missing or bad name/command was reported above.
        cx.err("(root)", "name and command are required");
        return Err(cx.finish());
    };
    let defaults = ResourceRequest::default();
    let shards = shards.or_none();
    Ok(JobSpec {
        name,
        job_type: job_type.or(JobType::Batch),
        priority: priority.or(50),
        policy: policy.or_none(),
        count: if shards.is_some() { 1 } else { count.or(1) },
        shards,
        elastic: elastic.or_none(),
        command,
        env: env.or(BTreeMap::new()),
        resources: ResourceRequest {
            cpu: cpu.or(defaults.cpu),
            memory: memory.or(defaults.memory),
            gpu: gpu.or(defaults.gpu),
        },
        constraints: Constraints {
            labels: labels.or(BTreeMap::new()),
            gpu_model: gpu_model.or_none(),
        },
        restart: restart.or(RestartPolicy::default()),
        kill_timeout: kill_timeout.or_none(),
    })
}

#[cfg(test)]
mod tests;
