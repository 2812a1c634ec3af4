//! `elastic-sharding`: jobs of `shards: N` with `elastic: {min, max}`.
//!
//! - Gang admission: a job with no live shard starts only if `min` of its
//!   queued shards can be placed at once (or all of them, when fewer than
//!   `min` remain); otherwise none start and the job waits whole.
//! - Growth: a started job takes one more shard wherever one fits, up to
//!   `max` live shards, as capacity frees or nodes join.
//! - Spread: a shard goes to the least-loaded feasible node holding the
//!   fewest shards of its job, so losing one node loses few shards.
//! - Yielding: a task that fits nowhere may preempt shards of strictly
//!   lower-priority elastic jobs that run above their `min`.
//!
//! Exactly-once processing of each shard is the master's business (a
//! succeeded shard is never queued again); this policy only never places a
//! shard twice in one pass. Tasks without `elastic` in the same queue are
//! placed least-loaded, and may also take back room from elastic excess.

use std::collections::BTreeMap;

use drover_api::JobId;

use crate::preempt::{self, Victims};
use crate::queue::{self, Unplaceable};
use crate::view::{ClusterView, TaskRequest};
use crate::workspace::Workspace;
use crate::{Decision, Policy};

#[derive(Debug, Default, Clone)]
pub struct ElasticSharding;

/// The least-loaded feasible node with the fewest shards of the task's job.
fn spread_fit(ws: &Workspace<'_>, task: &TaskRequest) -> Option<usize> {
    let Some(per_node) = ws.job_nodes(task.job()) else {
        return ws.least_loaded_fit(&task.demand);
    };
    // Nodes come least-loaded first, so the first feasible node without a
    // shard of this job is the answer; at most `max` nodes hold one.
    let mut best: Option<(u32, usize)> = None;
    for ni in ws.by_load(&task.demand) {
        let here = per_node.get(&ni).copied().unwrap_or(0);
        if best.is_some_and(|(count, _)| count <= here) || !ws.fits(ni, &task.demand) {
            continue;
        }
        if here == 0 {
            return Some(ni);
        }
        best = Some((here, ni));
    }
    best.map(|(_, ni)| ni)
}

/// Places one task (spread for shards), yielding elastic excess if needed.
fn place_one(
    ws: &mut Workspace<'_>,
    unplaceable: &mut Unplaceable,
    task: &TaskRequest,
) -> Result<(), String> {
    if let Some(reason) = unplaceable.get(&task.demand) {
        return Err(reason.clone());
    }
    let found = if task.elastic.is_some() {
        spread_fit(ws, task)
    } else {
        ws.least_loaded_fit(&task.demand)
    };
    if let Some(ni) = found {
        ws.place(ni, task);
        return Ok(());
    }
    if preempt::place_by_preempting(ws, task, Victims::ElasticExcess) {
        return Ok(());
    }
    Err(unplaceable.remember(ws, &task.demand, ""))
}

impl Policy for ElasticSharding {
    fn name(&self) -> &'static str {
        "elastic-sharding"
    }

    fn schedule(&mut self, cluster: &ClusterView, queue: &[TaskRequest]) -> Vec<Decision> {
        let mut ws = Workspace::new(cluster);
        let mut unplaceable = Unplaceable::default();
        let order = queue::order(queue);
        // Each elastic job's queued shards, in scheduling order.
        let mut shards_of: BTreeMap<&JobId, Vec<usize>> = BTreeMap::new();
        for &i in &order {
            if queue[i].elastic.is_some() {
                shards_of.entry(queue[i].job()).or_default().push(i);
            }
        }
        let mut decided = vec![false; queue.len()];
        for &i in &order {
            if decided[i] {
                continue;
            }
            decided[i] = true;
            let task = &queue[i];
            let Some(elastic) = task.elastic else {
                if let Err(reason) = place_one(&mut ws, &mut unplaceable, task) {
                    ws.wait(&task.task, reason);
                }
                continue;
            };
            let live = ws.job_live(task.job());
            if live >= elastic.max {
                let reason = format!(
                    "job {} already runs its elastic maximum of {} shards",
                    task.job(),
                    elastic.max
                );
                ws.wait(&task.task, reason);
                continue;
            }
            if live > 0 {
                if let Err(reason) = place_one(&mut ws, &mut unplaceable, task) {
                    ws.wait(&task.task, reason);
                }
                continue;
            }
            // Gang admission: this shard and the next ones of its job.
            let remaining: Vec<usize> = shards_of[task.job()]
                .iter()
                .copied()
                .filter(|j| *j == i || !decided[*j])
                .collect();
            let gang_size = (elastic.min.min(elastic.max).max(1) as usize).min(remaining.len());
            let mark = ws.mark();
            let mut failure = None;
            for (placed, &j) in remaining[..gang_size].iter().enumerate() {
                if let Err(reason) = place_one(&mut ws, &mut unplaceable, &queue[j]) {
                    failure = Some((placed, reason));
                    break;
                }
            }
            match failure {
                None => {
                    for &j in &remaining[..gang_size] {
                        decided[j] = true;
                    }
                }
                Some((placed, why)) => {
                    ws.rollback(mark);
                    unplaceable.clear();
                    let reason = format!(
                        "gang admission: {gang_size} shards must start together, only {placed} fit ({why})"
                    );
                    for &j in &remaining {
                        decided[j] = true;
                        ws.wait(&queue[j].task, reason.clone());
                    }
                }
            }
        }
        ws.into_decisions()
    }
}
