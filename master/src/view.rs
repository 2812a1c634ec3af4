//! The scheduler's snapshot of the cluster, built from the master's books.

use std::sync::Arc;

use drover_api::JobSpec;
use scheduler_policies::{
    AllocView, ClusterView, Demand, GpuView, NodeStatus, NodeView, Reservation, TaskRequest,
};

use crate::state::Txn;

/// Nodes with their allocatable capacity (capacity less reserved), every
/// live alloc (stopping ones too: they hold what they had until they exit),
/// and the room held for preemptors; staged changes included, so that
/// several policies in one pass see each other's decisions.
pub fn build_view(txn: &Txn<'_>) -> ClusterView {
    let cluster = txn.base;
    let nodes = cluster
        .nodes
        .values()
        .map(|n| {
            let cpu = n.resources.cpu_millis.saturating_sub(n.reserved.cpu_millis);
            let live = cluster.live.get(&n.id);
            let status = if n.down {
                NodeStatus::Down
            } else if live.is_some_and(|l| l.suspect) {
                NodeStatus::Suspect
            } else if n.drain.is_some() {
                NodeStatus::Draining
            } else {
                NodeStatus::Ready
            };
            NodeView {
                id: n.id.clone(),
                status,
                cpu_millis: cpu,
                memory_bytes: n
                    .resources
                    .memory_bytes
                    .saturating_sub(n.reserved.memory_bytes),
                gpus: n
                    .resources
                    .gpus
                    .iter()
                    .map(|g| GpuView {
                        index: g.index,
                        model: g.model.clone(),
                    })
                    .collect(),
                labels: n.labels.clone(),
                utilisation: live.map_or(0.0, |l| {
                    if cpu == 0 {
                        0.0
                    } else {
                        l.usage_cpu_millis as f64 / cpu as f64
                    }
                }),
            }
        })
        .collect();
    let allocs = txn
        .live_allocs()
        .into_iter()
        .map(|a| AllocView {
            id: a.id.clone(),
            node: a.node.clone(),
            priority: a.priority,
            cpu_millis: a.cpu_millis,
            memory_bytes: a.memory_bytes,
            gpus: a.gpus.clone(),
            elastic: txn.job(&a.id.task.job).and_then(|j| j.spec.elastic),
            stopping: a.is_stopping(),
        })
        .collect();
    let reservations = txn
        .nominated()
        .into_iter()
        .filter_map(|t| {
            let n = t.nominated.as_ref()?;
            let spec = &txn.job(&t.id.job)?.spec;
            Some(Reservation {
                task: t.id.clone(),
                node: n.node.clone(),
                cpu_millis: spec.resources.cpu.millis(),
                memory_bytes: spec.resources.memory.bytes(),
                gpus: n.gpus.clone(),
            })
        })
        .collect();
    ClusterView::new(nodes, allocs).with_reservations(reservations)
}

/// What each task of a job needs from a node.
pub fn demand_of(spec: &JobSpec) -> Demand {
    Demand {
        cpu_millis: spec.resources.cpu.millis(),
        memory_bytes: spec.resources.memory.bytes(),
        gpus: spec.resources.gpu,
        gpu_model: spec.constraints.gpu_model.clone(),
        labels: spec.constraints.labels.clone(),
    }
}

/// Task `index` of a job, as the policies queue it.
pub fn task_request(
    spec: &JobSpec,
    index: u32,
    submit_seq: u64,
    demand: &Arc<Demand>,
) -> TaskRequest {
    TaskRequest {
        task: spec.name.task(index),
        priority: spec.priority,
        submit_seq,
        demand: Arc::clone(demand),
        elastic: spec.elastic,
    }
}
