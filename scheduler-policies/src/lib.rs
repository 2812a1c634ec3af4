//! Pure, deterministic placement policies (DESIGN §4).
//!
//! A policy is a function of an immutable [`ClusterView`] and a queue of
//! [`TaskRequest`]s to a list of [`Decision`]s. Nothing here does I/O, reads
//! a clock, spawns, or iterates a hash map: the same input always gives the
//! same decisions, so the master can replay a pass and a test can pin one.
//!
//! Every policy works the way Nomad's and Kubernetes' schedulers do:
//! feasibility first ([`feasibility`]: status, labels, GPU model, size), then
//! ranking among the feasible nodes; a task that fits nowhere gets a
//! [`Decision::Wait`] whose reason counts nodes per cause, the same
//! explanation `POST /v1/jobs/plan` shows.

pub mod feasibility;
pub mod nominated;
pub mod registry;
pub mod testkit;
pub mod verify;
pub mod view;

mod elastic;
mod least_loaded;
mod preempt;
mod priority;
mod queue;
mod round_robin;
mod workspace;

pub use drover_api::PolicyKind;
pub use elastic::ElasticSharding;
pub use least_loaded::LeastLoaded;
pub use nominated::Nominated;
pub use priority::Priority;
pub use round_robin::RoundRobin;
pub use view::{
    AllocView, ClusterView, Demand, Elastic, GpuView, NodeStatus, NodeView, Reservation,
    TaskRequest,
};

use drover_api::{AllocId, NodeId, TaskId};

/// What a policy decided for one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Run `task` on `node` with these GPU device indices.
    Place {
        task: TaskId,
        node: NodeId,
        gpus: Vec<u32>,
    },
    /// Kill `victim` to make room for `for_task`; the victim's task is
    /// requeued by the master. Always followed, in the same decision list, by
    /// the `Place` of `for_task` that the room was made for.
    Preempt { victim: AllocId, for_task: TaskId },
    /// `task` stays queued; `reason` says why, per node class.
    Wait { task: TaskId, reason: String },
}

impl Decision {
    /// The queued task this decision is about.
    pub fn task(&self) -> &TaskId {
        match self {
            Decision::Place { task, .. } | Decision::Wait { task, .. } => task,
            Decision::Preempt { for_task, .. } => for_task,
        }
    }
}

/// A placement policy. `&mut self` lets a policy carry state from one pass to
/// the next (round-robin's cursor); that state must itself be deterministic.
///
/// Every queued task gets exactly one `Place` or `Wait`. Tasks are decided
/// in queue order (priority descending, then submission order), except that
/// a gang is decided together; `Preempt`s come right before the `Place` they
/// make room for. [`verify::verify`] checks these promises.
pub trait Policy: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    fn schedule(&mut self, cluster: &ClusterView, queue: &[TaskRequest]) -> Vec<Decision>;
}
