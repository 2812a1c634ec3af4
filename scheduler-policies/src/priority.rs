//! `priority`: least-loaded placement; a task that fits nowhere may preempt
//! strictly lower-priority allocs on one node, choosing the fewest and
//! lowest-priority victims that make room. Equal or higher priority work is
//! never preempted.

use crate::least_loaded::least_loaded;
use crate::preempt::Victims;
use crate::view::{ClusterView, TaskRequest};
use crate::{Decision, Policy};

#[derive(Debug, Default, Clone)]
pub struct Priority;

impl Policy for Priority {
    fn name(&self) -> &'static str {
        "priority"
    }

    fn schedule(&mut self, cluster: &ClusterView, queue: &[TaskRequest]) -> Vec<Decision> {
        least_loaded(cluster, queue, Some(Victims::AnyLowerPriority))
    }
}
