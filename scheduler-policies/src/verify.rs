//! Checks a decision list against the promises every policy makes. Used by
//! the property tests, and cheap enough for the master to run on every pass
//! in debug builds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use drover_api::{AllocId, JobId, NodeId, TaskId};

use crate::feasibility::{gpu_model_matches, static_misfit};
use crate::view::{ClusterView, TaskRequest};
use crate::Decision;

/// A promise a decision list broke, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

/// What a valid decision list did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub placed: BTreeMap<TaskId, NodeId>,
    pub preempted: BTreeSet<AllocId>,
    pub waiting: BTreeSet<TaskId>,
}

fn fail<T>(msg: String) -> Result<T, Violation> {
    Err(Violation(msg))
}

/// Checks that every queued task is answered exactly once (placed or
/// waiting); that placements go only to ready, feasible nodes with the right
/// number of free GPUs of the right model; that a preemption only evicts a
/// live alloc of strictly lower priority that is not already stopping, once,
/// for a task placed right after; and that no node that receives work ends
/// up over-committed in cpu, memory or any GPU device, counting what
/// stopping allocs still hold and what is reserved for preemptors.
pub fn verify(
    view: &ClusterView,
    queue: &[TaskRequest],
    decisions: &[Decision],
) -> Result<Outcome, Violation> {
    let by_id: BTreeMap<&TaskId, &TaskRequest> = queue.iter().map(|t| (&t.task, t)).collect();
    let alloc_by_id: BTreeMap<&AllocId, usize> = view
        .allocs()
        .iter()
        .enumerate()
        .map(|(i, a)| (&a.id, i))
        .collect();
    let n = view.nodes().len();
    let mut cpu = vec![0u64; n];
    let mut mem = vec![0u64; n];
    let mut gpu_holders: Vec<BTreeMap<u32, String>> = vec![BTreeMap::new(); n];
    for a in view.allocs() {
        if let Some(ni) = view.node_index(&a.node) {
            cpu[ni] += a.cpu_millis;
            mem[ni] += a.memory_bytes;
            for g in &a.gpus {
                gpu_holders[ni].insert(*g, a.id.to_string());
            }
        }
    }
    for r in view.reservations() {
        if let Some(ni) = view.node_index(&r.node) {
            cpu[ni] += r.cpu_millis;
            mem[ni] += r.memory_bytes;
            for g in &r.gpus {
                gpu_holders[ni].insert(*g, format!("the reservation for {}", r.task));
            }
        }
    }
    let mut out = Outcome::default();
    let mut answered: BTreeSet<&TaskId> = BTreeSet::new();
    let mut pending_preempts: BTreeMap<&TaskId, usize> = BTreeMap::new();
    let mut touched = BTreeSet::new();
    for d in decisions {
        let Some(task) = by_id.get(d.task()) else {
            return fail(format!("decision about {} which is not queued", d.task()));
        };
        if !answered.insert(&task.task) {
            return fail(format!(
                "{} decided after it was already placed or left waiting",
                task.task
            ));
        }
        match d {
            Decision::Wait { reason, .. } => {
                if reason.is_empty() {
                    return fail(format!("{} waits without a reason", task.task));
                }
                if pending_preempts.contains_key(&task.task) {
                    return fail(format!("preempted for {} but left it waiting", task.task));
                }
                out.waiting.insert(task.task.clone());
            }
            Decision::Preempt { victim, .. } => {
                answered.remove(&task.task);
                let Some(&ai) = alloc_by_id.get(victim) else {
                    return fail(format!("preempts {victim}, which is not a live alloc"));
                };
                let a = &view.allocs()[ai];
                if a.stopping {
                    return fail(format!("preempts {victim}, which is already stopping"));
                }
                if a.priority >= task.priority {
                    return fail(format!(
                        "preempts {victim} (priority {}) for {} (priority {})",
                        a.priority, task.task, task.priority
                    ));
                }
                if !out.preempted.insert(victim.clone()) {
                    return fail(format!("preempts {victim} twice"));
                }
                if let Some(ni) = view.node_index(&a.node) {
                    cpu[ni] -= a.cpu_millis;
                    mem[ni] -= a.memory_bytes;
                    for g in &a.gpus {
                        gpu_holders[ni].remove(g);
                    }
                }
                *pending_preempts.entry(&task.task).or_default() += 1;
            }
            Decision::Place { node, gpus, .. } => {
                pending_preempts.remove(&task.task);
                let Some(ni) = view.node_index(node) else {
                    return fail(format!("places {} on unknown node {node}", task.task));
                };
                let nv = &view.nodes()[ni];
                if let Some(m) = static_misfit(nv, &task.demand) {
                    return fail(format!(
                        "places {} on {node}, which is infeasible: {m}",
                        task.task
                    ));
                }
                if gpus.len() != task.demand.gpus as usize {
                    return fail(format!(
                        "places {} with {} GPUs, it asked for {}",
                        task.task,
                        gpus.len(),
                        task.demand.gpus
                    ));
                }
                for g in gpus {
                    let Ok(pos) = nv.gpus.binary_search_by_key(g, |x| x.index) else {
                        return fail(format!(
                            "gives {} GPU {g}, which {node} does not have",
                            task.task
                        ));
                    };
                    if !gpu_model_matches(&task.demand, &nv.gpus[pos].model) {
                        return fail(format!("gives {} GPU {g} of the wrong model", task.task));
                    }
                    if let Some(holder) = gpu_holders[ni].insert(*g, task.task.to_string()) {
                        return fail(format!(
                            "gives {} GPU {g} on {node}, held by {holder}",
                            task.task
                        ));
                    }
                }
                cpu[ni] += task.demand.cpu_millis;
                mem[ni] += task.demand.memory_bytes;
                touched.insert(ni);
                out.placed.insert(task.task.clone(), node.clone());
            }
        }
    }
    if let Some((task, _)) = pending_preempts.into_iter().next() {
        return fail(format!("preempted for {task} but did not place it"));
    }
    for t in queue {
        if !answered.contains(&t.task) {
            return fail(format!("{} got no decision", t.task));
        }
    }
    for ni in touched {
        let nv = &view.nodes()[ni];
        if cpu[ni] > nv.cpu_millis || mem[ni] > nv.memory_bytes {
            return fail(format!(
                "{} over-committed: cpu {}/{}m, memory {}/{} bytes",
                nv.id, cpu[ni], nv.cpu_millis, mem[ni], nv.memory_bytes
            ));
        }
    }
    Ok(out)
}

/// Checks the elastic-sharding promises on a verified outcome: no elastic
/// job that gained shards ends above `max` live shards, and a job with no
/// live shard starts with at least `min` of them (or all it has queued, when
/// fewer remain).
pub fn verify_elastic(
    view: &ClusterView,
    queue: &[TaskRequest],
    out: &Outcome,
) -> Result<(), Violation> {
    let mut live: BTreeMap<&JobId, i64> = BTreeMap::new();
    for a in view.allocs().iter().filter(|a| a.elastic.is_some()) {
        *live.entry(a.job()).or_default() += 1;
    }
    let mut queued: BTreeMap<&JobId, (u32, u32, i64)> = BTreeMap::new();
    for t in queue {
        if let Some(e) = t.elastic {
            let entry = queued.entry(t.job()).or_insert((e.min, e.max, 0));
            entry.2 += 1;
        }
    }
    let mut placed: BTreeMap<&JobId, i64> = BTreeMap::new();
    for task in out.placed.keys() {
        if queued.contains_key(&task.job) {
            *placed.entry(&task.job).or_default() += 1;
        }
    }
    let mut preempted: BTreeMap<&JobId, i64> = BTreeMap::new();
    for a in &out.preempted {
        *preempted.entry(&a.task.job).or_default() += 1;
    }
    for (job, (min, max, n_queued)) in queued {
        let got = placed.get(job).copied().unwrap_or(0);
        if got == 0 {
            continue;
        }
        let before = live.get(job).copied().unwrap_or(0);
        let after = before - preempted.get(job).copied().unwrap_or(0) + got;
        if after > i64::from(max) {
            return fail(format!("{job} runs {after} shards, above its max {max}"));
        }
        let gang = i64::from(min).min(n_queued);
        if before == 0 && got < gang {
            return fail(format!(
                "{job} started with {got} shards, below its min {min}"
            ));
        }
    }
    Ok(())
}
