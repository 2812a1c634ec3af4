//! What the REST API answers (DESIGN §5): the one set of wire types. The
//! master serializes these, the typed client and the CLI read them, and the
//! OpenAPI document ([`crate::openapi`]) describes them from their derived
//! JSON Schemas, doc comments included. Unknown fields are ignored when
//! reading, so an older CLI keeps working against a newer master.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::protocol::NodeDescriptor;
use crate::{
    AllocId, AllocState, JobId, JobSpec, JobState, JobType, NodeId, NodeState, TaskId, TaskState,
    Transition,
};

/// `GET /v1/jobs/{id}` and the items of `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobView {
    pub id: JobId,
    pub version: u64,
    pub state: JobState,
    #[serde(rename = "type")]
    pub job_type: JobType,
    pub priority: u8,
    /// The policy that places the job (its own, or the master's default).
    pub policy: String,
    pub submitted_at_ms: u64,
    /// The name of the token that submitted it (absent when the master has
    /// no tokens). A submitter may update, stop or purge only its own jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Task counts by state; states with no task are left out.
    pub tasks: BTreeMap<TaskState, u32>,
    /// Only in `GET /v1/jobs/{id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<JobSpec>,
}

impl JobView {
    /// Tasks in `state`.
    pub fn count(&self, state: TaskState) -> u32 {
        self.tasks.get(&state).copied().unwrap_or(0)
    }

    /// All tasks of the job.
    pub fn total(&self) -> u32 {
        self.tasks.values().sum()
    }
}

/// What a submission did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubmitOutcome {
    /// A new job (201).
    Created,
    /// The same spec as the current version: nothing changed (200).
    Unchanged,
    /// A changed spec: a new version (200).
    Updated,
}

/// `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubmitAnswer {
    #[serde(flatten)]
    pub job: JobView,
    pub outcome: SubmitOutcome,
}

/// `DELETE /v1/jobs/{id}`: the stopped job, or a note that it was purged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StopAnswer {
    Stopped(Box<JobView>),
    Purged { id: JobId, purged: bool },
}

/// One attempt of a task on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AllocView {
    pub id: AllocId,
    pub node: NodeId,
    pub state: AllocState,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    #[serde(default)]
    pub gpus: Vec<u32>,
    pub priority: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub history: Vec<Transition<AllocState>>,
}

/// `GET /v1/tasks/{job}/{index}` and the items of `GET /v1/jobs/{id}/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskView {
    pub id: TaskId,
    pub state: TaskState,
    /// Why it entered its state.
    pub reason: String,
    /// While pending: why no node takes it ("2 nodes: insufficient memory").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    pub job_version: u64,
    pub restarts: u32,
    /// Every attempt, oldest first.
    pub attempts: Vec<AllocView>,
    pub history: Vec<Transition<TaskState>>,
}

impl TaskView {
    /// The newest attempt, if the task was ever placed.
    pub fn latest(&self) -> Option<&AllocView> {
        self.attempts.last()
    }
}

/// Amounts of cpu, memory and GPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Amounts {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u64,
}

/// A node's drain, while one is under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DrainView {
    pub started_at_ms: u64,
    /// By then every alloc still on the node is stopped and replaced.
    pub deadline_ms: u64,
}

/// `GET /v1/nodes/{id}` and the items of `GET /v1/nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeView {
    pub id: NodeId,
    #[serde(flatten)]
    pub desc: NodeDescriptor,
    #[serde(default)]
    pub down: bool,
    /// Its credential was revoked: it stays down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainView>,
    pub registered_at_ms: u64,
    pub state: NodeState,
    /// Capacity less what is reserved.
    pub allocatable: Amounts,
    /// Held by live allocs.
    pub allocated: Amounts,
    /// Measured by the agent (GPU usage is not reported here).
    pub usage: Amounts,
    pub last_heartbeat_ms: u64,
    /// Live allocs on the node.
    pub allocs: Vec<AllocId>,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClusterSummary {
    /// Node counts by state (every state present, zeros included).
    pub nodes: BTreeMap<String, u64>,
    pub jobs: BTreeMap<String, u64>,
    pub tasks: BTreeMap<String, u64>,
    /// Allocatable capacity of nodes that are not down.
    pub capacity: Amounts,
    pub allocated: Amounts,
    /// Tasks waiting to be placed.
    pub queue_depth: u64,
    /// Address of the leading master.
    pub leader: String,
    pub store_backend: String,
}

/// `POST /v1/jobs/plan`: what submitting the spec now would do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlanAnswer {
    pub placements: Vec<PlannedPlacement>,
    pub preemptions: Vec<PlannedPreemption>,
    pub waiting: Vec<PlannedWait>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlannedPlacement {
    pub task: TaskId,
    pub node: NodeId,
    pub gpus: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlannedPreemption {
    pub victim: AllocId,
    pub for_task: TaskId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlannedWait {
    pub task: TaskId,
    pub reason: String,
}

/// `GET /v1/status/leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LeaderView {
    pub leader: String,
}

/// The body of every error answer: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_spec`, `not_found`, `unavailable`...
    pub code: String,
    /// For people.
    pub message: String,
    /// Per-field problems of a rejected spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldProblem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldProblem {
    /// e.g. `resources.memory`.
    pub path: String,
    pub message: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HealthView {
    /// Always `ok`.
    pub status: String,
}

/// `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReadyView {
    pub ready: bool,
    /// `leader` or `follower`.
    pub role: String,
    /// On a follower: the leader's address, once one is elected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// The query of `GET /v1/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// Only jobs in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
}

/// The query of `DELETE /v1/jobs/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StopQuery {
    /// Delete the job and its history instead of keeping it as `stopped`.
    #[serde(default)]
    pub purge: bool,
}

/// Which output of a task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    #[default]
    Stdout,
    Stderr,
}

impl LogStream {
    pub const fn name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// The query of `GET /v1/tasks/{job}/{index}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    #[serde(default)]
    pub stream: LogStream,
    /// Skip this many bytes.
    #[serde(default)]
    pub offset: u64,
    /// Keep the answer open and stream new output until the task ends.
    #[serde(default)]
    pub follow: bool,
}

/// `POST /v1/nodes/{id}/drain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Start (true) or end (false) the drain.
    pub enable: bool,
    /// How long the node's allocs have to finish before they are stopped
    /// and replaced, as `"30m"` or `"1h 30m"`. Default 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
}
