//! `least-loaded`: each task goes to the feasible node with the lowest
//! dominant share of allocated resources; live utilisation breaks ties, then
//! node id. Spreads work, which keeps room for big tasks on every node
//! (Kubernetes' LeastAllocated scoring, with DRF's dominant share).

use crate::preempt::{self, Victims};
use crate::queue::{self, Unplaceable};
use crate::view::{ClusterView, TaskRequest};
use crate::workspace::Workspace;
use crate::{Decision, Policy};

#[derive(Debug, Default, Clone)]
pub struct LeastLoaded;

impl Policy for LeastLoaded {
    fn name(&self) -> &'static str {
        "least-loaded"
    }

    fn schedule(&mut self, cluster: &ClusterView, queue: &[TaskRequest]) -> Vec<Decision> {
        least_loaded(cluster, queue, None)
    }
}

/// Each task, in queue order, to the least-loaded node that fits; a task
/// that fits nowhere preempts by `preemption`'s rule if one is given.
pub(crate) fn least_loaded(
    cluster: &ClusterView,
    queue: &[TaskRequest],
    preemption: Option<Victims>,
) -> Vec<Decision> {
    let mut ws = Workspace::new(cluster);
    let mut unplaceable = Unplaceable::default();
    for i in queue::order(queue) {
        let task = &queue[i];
        if let Some(reason) = unplaceable.get(&task.demand) {
            ws.wait(&task.task, reason.clone());
            continue;
        }
        if let Some(ni) = ws.least_loaded_fit(&task.demand) {
            ws.place(ni, task);
            continue;
        }
        if preemption.is_some_and(|rule| preempt::place_by_preempting(&mut ws, task, rule)) {
            continue;
        }
        let suffix = match preemption {
            Some(_) => "; preempting lower-priority work would not make room",
            None => "",
        };
        let reason = unplaceable.remember(&ws, &task.demand, suffix);
        ws.wait(&task.task, reason);
    }
    ws.into_decisions()
}
