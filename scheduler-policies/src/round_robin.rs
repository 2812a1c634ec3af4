//! `round-robin`: walk the nodes in id order, continuing after the node used
//! last (across passes too), and place on the next node that fits.

use drover_api::NodeId;

use crate::queue::{self, Unplaceable};
use crate::view::{ClusterView, TaskRequest};
use crate::workspace::Workspace;
use crate::{Decision, Policy};

#[derive(Debug, Default, Clone)]
pub struct RoundRobin {
    /// The node used last. Kept by id, not position, so that nodes joining or
    /// leaving between passes do not make the walk skip or repeat nodes.
    last: Option<NodeId>,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn schedule(&mut self, cluster: &ClusterView, queue: &[TaskRequest]) -> Vec<Decision> {
        let mut ws = Workspace::new(cluster);
        let mut unplaceable = Unplaceable::default();
        let nodes = cluster.nodes();
        let n = nodes.len();
        let mut cursor = match &self.last {
            Some(last) => nodes.partition_point(|node| node.id <= *last),
            None => 0,
        };
        for i in queue::order(queue) {
            let task = &queue[i];
            if let Some(reason) = unplaceable.get(&task.demand) {
                ws.wait(&task.task, reason.clone());
                continue;
            }
            let found = (0..n)
                .map(|k| (cursor + k) % n)
                .find(|ni| ws.fits(*ni, &task.demand));
            match found {
                Some(ni) => {
                    ws.place(ni, task);
                    cursor = ni + 1;
                    self.last = Some(nodes[ni].id.clone());
                }
                None => {
                    let reason = unplaceable.remember(&ws, &task.demand, "");
                    ws.wait(&task.task, reason);
                }
            }
        }
        ws.into_decisions()
    }
}
