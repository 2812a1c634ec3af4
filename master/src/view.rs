//! The scheduler's snapshot of the cluster, built from the master's books.

use std::sync::Arc;

use drover_api::JobSpec;
use scheduler_policies::{
    AllocView, ClusterView, Demand, GpuView, NodeStatus, NodeView, Reservation, TaskRequest,
};

use crate::state::{Cluster, Txn};

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
            let cpu = n
                .desc
                .resources
                .cpu_millis
                .saturating_sub(n.desc.reserved.cpu_millis);
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
                    .desc
                    .resources
                    .memory_bytes
                    .saturating_sub(n.desc.reserved.memory_bytes),
                gpus: n
                    .desc
                    .resources
                    .gpus
                    .iter()
                    .map(|g| GpuView {
                        index: g.index,
                        model: g.model.clone(),
                    })
                    .collect(),
                labels: n.desc.labels.clone(),
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

/// What every node that takes work could hold, all of it free: nothing a
/// pass places can exceed it, whatever the policy (preemption and elastic
/// shrinking make room only within it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u64,
}

impl Capacity {
    /// Allocatable capacity summed over the nodes that are neither down
    /// nor draining.
    pub fn of(cluster: &Cluster) -> Capacity {
        Capacity::sum(cluster, false)
    }

    /// What of [`Capacity::of`] no live alloc holds (stopping ones hold
    /// theirs too). Only a policy that never preempts is bound by it.
    pub fn free(cluster: &Cluster) -> Capacity {
        Capacity::sum(cluster, true)
    }

    fn sum(cluster: &Cluster, less_held: bool) -> Capacity {
        let mut c = Capacity::default();
        for n in cluster
            .nodes
            .values()
            .filter(|n| !n.down && n.drain.is_none())
        {
            let held = less_held
                .then(|| cluster.held_by_node.get(&n.id).copied())
                .flatten()
                .unwrap_or_default();
            // Saturating: nodes report any capacity they like.
            c.cpu_millis = c.cpu_millis.saturating_add(
                n.desc
                    .resources
                    .cpu_millis
                    .saturating_sub(n.desc.reserved.cpu_millis)
                    .saturating_sub(held.cpu_millis),
            );
            c.memory_bytes = c.memory_bytes.saturating_add(
                n.desc
                    .resources
                    .memory_bytes
                    .saturating_sub(n.desc.reserved.memory_bytes)
                    .saturating_sub(held.memory_bytes),
            );
            c.gpus = c
                .gpus
                .saturating_add((n.desc.resources.gpus.len() as u64).saturating_sub(held.gpus));
        }
        c
    }

    /// How many waiting tasks of this demand a pass need examine: as many
    /// as could fit, plus one, whose wait reason stands for the rest. A
    /// pass so costs what it can place, not how many tasks wait.
    pub fn examine_at_most(&self, d: &Demand) -> usize {
        let fit = |have: u64, want: u64| (want > 0).then(|| have / want);
        [
            fit(self.cpu_millis, d.cpu_millis),
            fit(self.memory_bytes, d.memory_bytes),
            fit(self.gpus, u64::from(d.gpus)),
        ]
        .into_iter()
        .flatten()
        .min()
        .map_or(usize::MAX, |n| {
            usize::try_from(n).unwrap_or(usize::MAX).saturating_add(1)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(cpu_millis: u64, memory_bytes: u64, gpus: u32) -> Demand {
        Demand {
            cpu_millis,
            memory_bytes,
            gpus,
            gpu_model: None,
            labels: Default::default(),
        }
    }

    #[test]
    fn a_pass_examines_what_could_fit_plus_one() {
        let c = Capacity {
            cpu_millis: 2000,
            memory_bytes: 8 << 30,
            gpus: 2,
        };
        // cpu binds: 2000 / 10 = 200.
        assert_eq!(c.examine_at_most(&demand(10, 16 << 20, 0)), 201);
        // memory binds: 8 GiB / 4 GiB = 2.
        assert_eq!(c.examine_at_most(&demand(10, 4 << 30, 0)), 3);
        // gpus bind.
        assert_eq!(c.examine_at_most(&demand(1, 1, 1)), 3);
        // More than the whole cluster: one, for the reason.
        assert_eq!(c.examine_at_most(&demand(4000, 0, 0)), 1);
        // Asks for nothing: no bound.
        assert_eq!(c.examine_at_most(&demand(0, 0, 0)), usize::MAX);
        assert_eq!(Capacity::default().examine_at_most(&demand(1, 0, 0)), 1);
    }
}
