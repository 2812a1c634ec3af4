//! The records the master persists (one JSON value per key, DESIGN §7) and
//! the in-memory views of them the REST API returns.

use std::collections::BTreeMap;

use drover_api::protocol::NodeDescriptor;
use drover_api::state::Transition;
use drover_api::views::Amounts;
use drover_api::{AllocId, AllocState, JobId, JobSpec, JobState, NodeId, TaskId, TaskState};
use serde::{Deserialize, Serialize};

/// A submitted job: its spec and version. Its state is derived from its
/// tasks (see [`crate::state::Cluster::job_state`]), so it cannot disagree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub spec: JobSpec,
    /// 1 on first submission; +1 whenever a changed spec is submitted.
    pub version: u64,
    /// Global submission order, for the queue's tie-break.
    pub submit_seq: u64,
    pub submitted_at_ms: u64,
    /// Set by `DELETE /v1/jobs/{id}`.
    #[serde(default)]
    pub stopped: bool,
    /// The name of the token that first submitted it; `None` when
    /// authentication was off. A submitter may change only its own jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// One task of a job and its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub state: TaskState,
    /// The job version this task runs.
    pub job_version: u64,
    /// Allocations made so far; the next attempt number is `attempts + 1`.
    pub attempts: u32,
    /// Restarts used against `restart.attempts` (preemption does not count).
    #[serde(default)]
    pub restarts: u32,
    /// Earliest time (unix ms) the task may be placed again (restart delay).
    #[serde(default)]
    pub not_before_ms: u64,
    /// Set while the task waits for the allocs it preempted to exit: the
    /// room they leave is held for it (see `scheduler_policies::nominated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nominated: Option<Nomination>,
    pub history: Vec<Transition<TaskState>>,
}

/// Where a preemptor will run, and the GPU devices held for it there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nomination {
    pub node: NodeId,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
}

impl TaskRecord {
    /// The latest attempt's alloc id, if any.
    pub fn latest_alloc(&self) -> Option<AllocId> {
        (self.attempts > 0).then(|| self.id.alloc(self.attempts))
    }

    pub fn reason(&self) -> &str {
        self.history.last().map_or("", |t| t.reason.as_str())
    }
}

/// One attempt of a task on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AllocRecord {
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

impl AllocRecord {
    /// Assigned, running or stopping: holds resources on its node.
    pub fn is_live(&self) -> bool {
        !self.state.is_terminal()
    }

    /// Being stopped by the master: still holds its resources, but its node
    /// must stop it rather than run it.
    pub fn is_stopping(&self) -> bool {
        self.state == AllocState::Stopping
    }
}

/// A node's persisted state. Heartbeat data (last seen, usage) is not
/// persisted (volume); see [`NodeLive`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    #[serde(flatten)]
    pub desc: NodeDescriptor,
    /// Declared down by liveness; cleared when it heartbeats or registers.
    #[serde(default)]
    pub down: bool,
    /// SHA-256 of the node's credential (see [`crate::identity`]); `None`
    /// for a node that joined while authentication was off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_sha256: Option<String>,
    /// Its credential was revoked (`drover node revoke`): no agent may speak
    /// for it again, and it stays down.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// The key the master signs this node's log capabilities with (hex; see
    /// `drover_api::capability`). Made at the node's first registration and
    /// kept, so that any master of the cluster can sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
    pub registered_at_ms: u64,
}

impl NodeRecord {
    /// Capacity less what is reserved (saturating: nodes report any
    /// capacity they like).
    pub fn allocatable(&self) -> Amounts {
        let (r, reserved) = (&self.desc.resources, &self.desc.reserved);
        Amounts {
            cpu_millis: r.cpu_millis.saturating_sub(reserved.cpu_millis),
            memory_bytes: r.memory_bytes.saturating_sub(reserved.memory_bytes),
            gpus: r.gpus.len() as u64,
        }
    }

    /// The node's state given what its heartbeats said (`live`).
    pub fn state(&self, live: Option<&NodeLive>) -> NodeState {
        if self.down {
            NodeState::Down
        } else if live.is_some_and(|l| l.suspect) {
            NodeState::Suspect
        } else if self.drain.is_some() {
            NodeState::Draining
        } else {
            NodeState::Ready
        }
    }
}

#[cfg(test)]
impl NodeRecord {
    /// A node as its first registration leaves it, with authentication off.
    pub(crate) fn joined(id: NodeId, desc: NodeDescriptor, at_ms: u64) -> NodeRecord {
        NodeRecord {
            id,
            desc,
            down: false,
            credential_sha256: None,
            revoked: false,
            log_key: None,
            drain: None,
            registered_at_ms: at_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub started_at_ms: u64,
    /// By then every alloc still on the node is stopped and replaced.
    pub deadline_ms: u64,
}

pub use drover_api::NodeState;

/// What the master knows of a node from its heartbeats; not persisted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeLive {
    /// Missed enough heartbeats to be suspect, not yet down.
    pub suspect: bool,
    pub usage_cpu_millis: u64,
    pub usage_memory_bytes: u64,
    pub offer_cpu_millis: u64,
    pub offer_memory_bytes: u64,
    pub last_heartbeat_ms: u64,
}

/// Task counts of one job by state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TaskCounts(pub BTreeMap<TaskState, u32>);

impl TaskCounts {
    pub fn get(&self, s: TaskState) -> u32 {
        self.0.get(&s).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u32 {
        self.0.values().sum()
    }

    pub fn add(&mut self, s: TaskState, delta: i64) {
        let n = self.0.entry(s).or_insert(0);
        *n = (i64::from(*n) + delta).max(0) as u32;
        if *n == 0 {
            self.0.remove(&s);
        }
    }
}

/// Derives a job's state from whether it was stopped and its tasks' states.
pub fn job_state(stopped: bool, counts: &TaskCounts) -> JobState {
    let total = counts.total();
    if stopped {
        JobState::Stopped
    } else if counts.get(TaskState::Dead) > 0 {
        JobState::Failed
    } else if total > 0 && counts.get(TaskState::Succeeded) == total {
        JobState::Complete
    } else if counts.get(TaskState::Running)
        + counts.get(TaskState::Assigned)
        + counts.get(TaskState::Stopping)
        > 0
    {
        JobState::Running
    } else {
        JobState::Pending
    }
}
