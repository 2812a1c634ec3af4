//! `least-loaded`: each task goes to the feasible node with the lowest
//! dominant share of allocated resources; live utilisation breaks ties, then
//! node id. Spreads work, which keeps room for big tasks on every node
//! (Kubernetes' LeastAllocated scoring, with DRF's dominant share).

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
        let mut ws = Workspace::new(cluster);
        let mut unplaceable = Unplaceable::default();
        for i in queue::order(queue) {
            let task = &queue[i];
            if let Some(reason) = unplaceable.get(&task.demand) {
                ws.wait(&task.task, reason.clone());
                continue;
            }
            match ws.least_loaded_fit(&task.demand) {
                Some(ni) => ws.place(ni, task),
                None => {
                    let reason = unplaceable.remember(&ws, &task.demand, "");
                    ws.wait(&task.task, reason);
                }
            }
        }
        ws.into_decisions()
    }
}
