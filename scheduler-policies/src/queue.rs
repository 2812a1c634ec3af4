//! Queue order and the per-pass memory of task shapes that fit nowhere.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::view::{Demand, TaskRequest};
use crate::workspace::Workspace;

/// Positions of `queue` in scheduling order: priority descending, then
/// submission order, then task id, whatever order the caller passed.
pub(crate) fn order(queue: &[TaskRequest]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..queue.len()).collect();
    idx.sort_by(|a, b| {
        let (a, b) = (&queue[*a], &queue[*b]);
        (Reverse(a.priority), a.submit_seq, &a.task).cmp(&(
            Reverse(b.priority),
            b.submit_seq,
            &b.task,
        ))
    });
    idx
}

/// Shapes that fit nowhere in this pass, with the reason.
///
/// Within a pass free capacity only shrinks (placements), and preemption only
/// ever frees room that an earlier, higher-priority task of the same shape
/// could already have claimed; so once a shape fits nowhere, later tasks of
/// that shape do not either, and the O(nodes) explanation is computed once
/// per shape instead of once per task. Rolling back a tentative group (gang
/// admission) returns capacity, so it must call [`Unplaceable::clear`].
#[derive(Debug, Default)]
pub(crate) struct Unplaceable {
    reasons: BTreeMap<Demand, String>,
}

impl Unplaceable {
    pub(crate) fn get(&self, demand: &Demand) -> Option<&String> {
        if self.reasons.is_empty() {
            return None;
        }
        self.reasons.get(demand)
    }

    /// Explains why `demand` fits nowhere, remembers it, and returns it.
    pub(crate) fn remember(&mut self, ws: &Workspace<'_>, demand: &Demand, suffix: &str) -> String {
        let reason = format!("{}{suffix}", ws.explain(demand));
        self.reasons.insert(demand.clone(), reason.clone());
        reason
    }

    pub(crate) fn clear(&mut self) {
        self.reasons.clear();
    }
}
