//! The scheduler's snapshot of the cluster, built from the master's books.

use scheduler_policies::{AllocView, ClusterView, GpuView, NodeStatus, NodeView};

use crate::state::Txn;

/// Nodes with their allocatable capacity (capacity less reserved), and every
/// live alloc, staged ones included so that several policies in one pass see
/// each other's placements.
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
        })
        .collect();
    ClusterView::new(nodes, allocs)
}
