//! The immutable snapshot a policy decides over, and the tasks it places.
//!
//! The master builds a [`ClusterView`] from its own books at the start of
//! every scheduling pass, sharing the nodes it keeps between passes
//! ([`ClusterView::with_sorted_nodes`]). What a node has allocated is not a
//! field: it is derived from the live allocations in the view, so the two
//! can never disagree.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use drover_api::Elastic;
use drover_api::{AllocId, JobId, NodeId, TaskId};

/// Whether a node may take new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeStatus {
    /// Heartbeating and eligible.
    Ready,
    /// Missed heartbeats; not yet declared down. No new work.
    Suspect,
    /// Being drained by an operator. No new work.
    Draining,
    /// Marked ineligible by an operator; existing work stays.
    Ineligible,
    /// Declared down by liveness.
    Down,
}

/// One GPU device of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuView {
    /// The device index the agent reported (what `CUDA_VISIBLE_DEVICES` uses).
    pub index: u32,
    pub model: String,
}

/// One node as the master's books see it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub id: NodeId,
    pub status: NodeStatus,
    /// Allocatable CPU: the node's capacity less what it reserves.
    pub cpu_millis: u64,
    /// Allocatable memory: the node's capacity less what it reserves.
    pub memory_bytes: u64,
    pub gpus: Vec<GpuView>,
    pub labels: BTreeMap<String, String>,
    /// Live utilisation (0.0..=1.0) from the agent's last heartbeat, used only
    /// to break ties between equally loaded nodes.
    pub utilisation: f64,
}

/// An allocation the master considers live: assigned, running, or stopping
/// (its processes have not exited yet, so it still holds what it had).
#[derive(Debug, Clone)]
pub struct AllocView {
    pub id: AllocId,
    pub node: NodeId,
    pub priority: u8,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Device indices held, as in [`GpuView::index`].
    pub gpus: Vec<u32>,
    /// Set when the alloc belongs to an elastic-sharding job.
    pub elastic: Option<Elastic>,
    /// The master is stopping it: it holds its resources until it exits,
    /// and it is never chosen as a preemption victim again.
    pub stopping: bool,
}

/// Capacity held on a node for a task that preempted allocs there (its
/// nominated node, as Kubernetes calls it): no other task may use it while
/// the victims stop. The task itself is placed by [`crate::nominated`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub task: TaskId,
    pub node: NodeId,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Device indices held for the task.
    pub gpus: Vec<u32>,
}

impl AllocView {
    pub fn job(&self) -> &JobId {
        &self.id.task.job
    }
}

/// What a task needs from a node. Tasks of one job share one `Arc<Demand>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Demand {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    /// Every assigned GPU must be of this model.
    pub gpu_model: Option<String>,
    /// The node must carry each of these labels with this value.
    pub labels: BTreeMap<String, String>,
}

/// A task waiting to be placed.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    pub task: TaskId,
    pub priority: u8,
    /// Submission order; earlier first among equal priorities.
    pub submit_seq: u64,
    pub demand: Arc<Demand>,
    /// Set for the shards of an elastic-sharding job.
    pub elastic: Option<Elastic>,
}

impl TaskRequest {
    pub fn job(&self) -> &JobId {
        &self.task.job
    }
}

/// The cluster at the start of a scheduling pass: nodes sorted by id, their
/// GPUs sorted by index, the live allocations, and the capacity reserved
/// for preemptors.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Shared, not copied: the master keeps its nodes' views between passes.
    nodes: Arc<Vec<NodeView>>,
    allocs: Vec<AllocView>,
    reservations: Vec<Reservation>,
}

impl ClusterView {
    /// Sorts what needs a stable order; the caller's order never matters.
    pub fn new(mut nodes: Vec<NodeView>, allocs: Vec<AllocView>) -> Self {
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes.dedup_by(|a, b| a.id == b.id);
        for node in &mut nodes {
            node.gpus.sort_by_key(|g| g.index);
        }
        ClusterView::with_sorted_nodes(Arc::new(nodes), allocs)
    }

    /// A view over nodes that are already in id order, unique, with their
    /// GPUs in index order (checked in debug builds), shared with whoever
    /// keeps them rather than copied.
    pub fn with_sorted_nodes(nodes: Arc<Vec<NodeView>>, mut allocs: Vec<AllocView>) -> Self {
        debug_assert!(nodes.windows(2).all(|w| w[0].id < w[1].id));
        debug_assert!(nodes
            .iter()
            .all(|n| n.gpus.windows(2).all(|g| g[0].index <= g[1].index)));
        allocs.sort_by(|a, b| a.id.cmp(&b.id));
        ClusterView {
            nodes,
            allocs,
            reservations: Vec::new(),
        }
    }

    /// The same view with capacity reserved for these preemptors.
    pub fn with_reservations(mut self, mut reservations: Vec<Reservation>) -> Self {
        reservations.sort_by(|a, b| a.task.cmp(&b.task));
        reservations.dedup_by(|a, b| a.task == b.task);
        self.reservations = reservations;
        self
    }

    pub fn reservations(&self) -> &[Reservation] {
        &self.reservations
    }

    pub fn nodes(&self) -> &[NodeView] {
        &self.nodes
    }

    pub fn allocs(&self) -> &[AllocView] {
        &self.allocs
    }

    /// Position of a node in [`ClusterView::nodes`].
    pub fn node_index(&self, id: &NodeId) -> Option<usize> {
        self.nodes.binary_search_by(|n| n.id.cmp(id)).ok()
    }
}
