//! `priority`: least-loaded placement; a task that fits nowhere may preempt
//! strictly lower-priority allocs on one node, choosing the fewest and
//! lowest-priority victims that make room. Equal or higher priority work is
//! never preempted.

use crate::preempt::{self, Victims};
use crate::queue::{self, Unplaceable};
use crate::view::{ClusterView, TaskRequest};
use crate::workspace::Workspace;
use crate::{Decision, Policy};

#[derive(Debug, Default, Clone)]
pub struct Priority;

impl Policy for Priority {
    fn name(&self) -> &'static str {
        "priority"
    }

    fn schedule(&mut self, cluster: &ClusterView, queue: &[TaskRequest]) -> Vec<Decision> {
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
            } else if !preempt::place_by_preempting(&mut ws, task, Victims::AnyLowerPriority) {
                let reason = unplaceable.remember(
                    &ws,
                    &task.demand,
                    "; preempting lower-priority work would not make room",
                );
                ws.wait(&task.task, reason);
            }
        }
        ws.into_decisions()
    }
}
