//! The scheduler's snapshot of the cluster, built from the master's books.

use std::sync::Arc;

use drover_api::{Elastic, JobSpec, NodeState};
use scheduler_policies::{
    AllocView, ClusterView, Demand, GpuView, NodeStatus, NodeView, Reservation, TaskRequest,
};

use crate::model::{AllocRecord, NodeLive, NodeRecord};
use crate::state::{Cluster, Txn};

/// The policies' views of the nodes, kept between passes: rebuilt only
/// after a node record changed (registered, updated, drained, down, gone),
/// otherwise refreshed in place (status and utilisation come from the
/// heartbeats), so a pass does not copy every node's labels and GPUs.
#[derive(Debug, Default)]
pub struct NodeViews {
    nodes: Arc<Vec<NodeView>>,
    /// Whether `nodes` holds the current node records.
    current: bool,
}

impl NodeViews {
    /// A node record changed: rebuild on the next read.
    pub fn invalidate(&mut self) {
        self.current = false;
    }
}

/// The nodes as the policies see them, in id order, current as of now.
pub fn node_views(cluster: &mut Cluster) -> Arc<Vec<NodeView>> {
    let Cluster {
        nodes,
        live,
        node_views,
        ..
    } = cluster;
    if !node_views.current || node_views.nodes.len() != nodes.len() {
        node_views.nodes = Arc::new(
            nodes
                .values()
                .map(|n| node_view(n, live.get(&n.id)))
                .collect(),
        );
        node_views.current = true;
    } else {
        // Only a pass holds the views, and it drops them before it ends,
        // so this is in place.
        let views = Arc::make_mut(&mut node_views.nodes);
        let mut live = live.iter().peekable();
        for (view, node) in views.iter_mut().zip(nodes.values()) {
            debug_assert_eq!(view.id, node.id);
            while live.next_if(|(id, _)| **id < node.id).is_some() {}
            let l = live.next_if(|(id, _)| **id == node.id).map(|(_, l)| l);
            view.status = node_status(node, l);
            view.utilisation = utilisation(l, view.cpu_millis);
        }
    }
    Arc::clone(&node_views.nodes)
}

fn node_status(n: &NodeRecord, live: Option<&NodeLive>) -> NodeStatus {
    match n.state(live) {
        NodeState::Ready => NodeStatus::Ready,
        NodeState::Suspect => NodeStatus::Suspect,
        NodeState::Draining => NodeStatus::Draining,
        NodeState::Down => NodeStatus::Down,
    }
}

fn utilisation(live: Option<&NodeLive>, cpu_millis: u64) -> f64 {
    match live {
        Some(l) if cpu_millis > 0 => l.usage_cpu_millis as f64 / cpu_millis as f64,
        _ => 0.0,
    }
}

fn node_view(n: &NodeRecord, live: Option<&NodeLive>) -> NodeView {
    let allocatable = n.allocatable();
    let mut gpus: Vec<GpuView> = n
        .desc
        .resources
        .gpus
        .iter()
        .map(|g| GpuView {
            index: g.index,
            model: g.model.clone(),
        })
        .collect();
    gpus.sort_by_key(|g| g.index);
    NodeView {
        id: n.id.clone(),
        status: node_status(n, live),
        cpu_millis: allocatable.cpu_millis,
        memory_bytes: allocatable.memory_bytes,
        gpus,
        labels: n.desc.labels.clone(),
        utilisation: utilisation(live, allocatable.cpu_millis),
    }
}

/// `nodes` (from [`node_views`]), every live alloc (stopping ones too: they
/// hold what they had until they exit), and the room held for preemptors;
/// staged changes included, so that several policies in one pass see each
/// other's decisions.
pub fn build_view(txn: &Txn<'_>, nodes: Arc<Vec<NodeView>>) -> ClusterView {
    // The kept views of the base, less what this transaction rewrote,
    // plus what it left live.
    let staged = txn.staged_allocs();
    let mut allocs: Vec<AllocView> = txn
        .base
        .alloc_views
        .iter()
        .filter(|(id, _)| !staged.contains_key(*id))
        .map(|(_, v)| v.clone())
        .collect();
    allocs.extend(staged.values().flatten().filter(|a| a.is_live()).map(|a| {
        let elastic = txn.job(&a.id.task.job).and_then(|j| j.spec.elastic);
        alloc_view(a, elastic)
    }));
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
    ClusterView::with_sorted_nodes(nodes, allocs).with_reservations(reservations)
}

/// How the policies see a live alloc.
pub fn alloc_view(a: &AllocRecord, elastic: Option<Elastic>) -> AllocView {
    AllocView {
        id: a.id.clone(),
        node: a.node.clone(),
        priority: a.priority,
        cpu_millis: a.cpu_millis,
        memory_bytes: a.memory_bytes,
        gpus: a.gpus.clone(),
        elastic,
        stopping: a.is_stopping(),
    }
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
            let a = n.allocatable();
            c.cpu_millis = c
                .cpu_millis
                .saturating_add(a.cpu_millis.saturating_sub(held.cpu_millis));
            c.memory_bytes = c
                .memory_bytes
                .saturating_add(a.memory_bytes.saturating_sub(held.memory_bytes));
            c.gpus = c.gpus.saturating_add(a.gpus.saturating_sub(held.gpus));
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
    use crate::model::Drain;
    use crate::state::Changes;
    use drover_api::protocol::{GpuDevice, NodeDescriptor, NodeResources};
    use drover_api::NodeId;

    fn record(id: &str, gpus: &[u32]) -> NodeRecord {
        let desc = NodeDescriptor {
            hostname: id.into(),
            resources: NodeResources {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
                gpus: gpus
                    .iter()
                    .map(|i| GpuDevice {
                        index: *i,
                        uuid: format!("GPU-{i}"),
                        model: "T4".into(),
                        memory_bytes: 1 << 30,
                    })
                    .collect(),
            },
            ..NodeDescriptor::default()
        };
        NodeRecord::joined(NodeId::new(id).unwrap(), desc, 0)
    }

    fn put(c: &mut Cluster, records: Vec<NodeRecord>, gone: &[&str]) {
        let mut changes = Changes::default();
        for r in records {
            changes.nodes.insert(r.id.clone(), Some(Arc::new(r)));
        }
        for id in gone {
            changes.nodes.insert(NodeId::new(*id).unwrap(), None);
        }
        c.apply(&changes);
    }

    /// The views a pass would get, and the ones built afresh from the books.
    fn kept_and_fresh(c: &mut Cluster) -> (String, String) {
        let kept = format!("{:?}", node_views(c));
        let fresh: Vec<NodeView> = c
            .nodes
            .values()
            .map(|n| node_view(n, c.live.get(&n.id)))
            .collect();
        (kept, format!("{fresh:?}"))
    }

    #[test]
    fn kept_node_views_follow_records_and_heartbeats() {
        let mut c = Cluster::default();
        put(&mut c, vec![record("b", &[3, 1]), record("a", &[])], &[]);
        let (kept, fresh) = kept_and_fresh(&mut c);
        assert_eq!(kept, fresh);
        let views = node_views(&mut c);
        assert_eq!(views[0].id.as_str(), "a");
        let indexes: Vec<u32> = views[1].gpus.iter().map(|g| g.index).collect();
        assert_eq!(indexes, [1, 3]);
        drop(views);

        // Heartbeats change no record: the views are refreshed in place.
        let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
        c.live.get_mut(&a).unwrap().usage_cpu_millis = 2000;
        c.live.get_mut(&b).unwrap().suspect = true;
        let views = node_views(&mut c);
        assert_eq!(views[0].utilisation, 0.5);
        assert_eq!(views[1].status, NodeStatus::Suspect);
        drop(views);
        c.live.get_mut(&b).unwrap().suspect = false;
        assert_eq!(node_views(&mut c)[1].status, NodeStatus::Ready);

        // Record changes: drained, down, a node joins, another leaves.
        let mut drained = record("a", &[]);
        drained.drain = Some(Drain {
            started_at_ms: 0,
            deadline_ms: 1,
        });
        let mut down = record("b", &[0]);
        down.down = true;
        put(&mut c, vec![drained, down, record("c", &[])], &[]);
        let views = node_views(&mut c);
        let statuses: Vec<NodeStatus> = views.iter().map(|v| v.status).collect();
        assert_eq!(
            statuses,
            [NodeStatus::Draining, NodeStatus::Down, NodeStatus::Ready]
        );
        assert_eq!(views[1].gpus.len(), 1);
        drop(views);
        put(&mut c, vec![], &["a"]);
        let (kept, fresh) = kept_and_fresh(&mut c);
        assert_eq!(kept, fresh);
        assert!(!kept.contains("\"a\""), "{kept}");
    }

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
