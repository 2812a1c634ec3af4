//! What one run leaves behind: the engine fills a [`RunRecord`];
//! [`crate::report`] and [`crate::plot`] read it.

use serde::Serialize;

/// One workload run under one policy.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// The policy, e.g. "least-loaded", or "as-submitted" when the jobs'
    /// own `policy:` fields are respected.
    pub policy: String,
    /// The whole cluster, every node up.
    pub capacity: Amounts,
    /// In time order. The engine records one at every event time; there
    /// may be many (plots downsample).
    pub samples: Vec<Sample>,
    pub tasks: Vec<TaskOutcome>,
    pub preemptions: u64,
    /// Tasks requeued after node failures (lost).
    pub rescheduled: u64,
    /// Virtual time at which the run stopped, in seconds.
    pub end_s: f64,
}

/// CPU, memory and GPUs together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Amounts {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u64,
}

/// The cluster at one moment; it holds until the next sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    pub at_s: f64,
    /// Tasks waiting to be placed.
    pub queued: u64,
    /// Held by running (or starting, or stopping) tasks.
    pub held: Amounts,
    /// Of the nodes up at that moment.
    pub capacity: Amounts,
}

/// How one task fared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskOutcome {
    pub job: String,
    pub index: u32,
    pub priority: u8,
    /// Whether its job is elastic (sharded with `elastic:` bounds).
    pub elastic: bool,
    pub submitted_s: f64,
    /// When its first attempt began running.
    pub started_s: Option<f64>,
    /// When it succeeded.
    pub finished_s: Option<f64>,
    /// The master's reason why it still waited at the end; `None` for a
    /// task that ran.
    pub never_ran: Option<String>,
}
