//! Choosing preemption victims: on each node that could take the task if
//! some lower-priority work left, pick victims lowest priority first (then
//! biggest first, so fewer are needed), drop any that turn out unnecessary,
//! and keep the node whose victim set is smallest, then lowest in priority.
//! A greedy choice, as in Nomad and Kubernetes: exact minimisation is a
//! knapsack problem and not worth its cost on a scheduling hot path.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use drover_api::JobId;

use crate::feasibility::{gpu_model_matches, static_misfit};
use crate::view::{AllocView, Demand, TaskRequest};
use crate::workspace::Workspace;

/// Which allocs may be preempted. Whatever the rule, only allocs of strictly
/// lower priority than the task are ever candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Victims {
    /// Any lower-priority alloc (the `priority` policy).
    AnyLowerPriority,
    /// Only shards of elastic jobs above their `min` (elastic jobs giving
    /// back concurrency to higher-priority waiting work).
    ElasticExcess,
}

/// Room on a node: free resources plus what chosen victims would free.
#[derive(Debug, Clone, Copy)]
struct Room {
    cpu: u64,
    mem: u64,
    gpus: u64,
}

impl Room {
    fn covers(&self, d: &Demand) -> bool {
        self.cpu >= d.cpu_millis && self.mem >= d.memory_bytes && self.gpus >= u64::from(d.gpus)
    }
}

/// A victim's contribution to room for this demand.
fn frees(alloc: &AllocView, ws: &Workspace<'_>, ni: usize, d: &Demand) -> Room {
    let node = &ws.view.nodes()[ni];
    let gpus = alloc
        .gpus
        .iter()
        .filter(|dev| {
            node.gpus
                .binary_search_by_key(*dev, |g| g.index)
                .is_ok_and(|pos| gpu_model_matches(d, &node.gpus[pos].model))
        })
        .count() as u64;
    Room {
        cpu: alloc.cpu_millis,
        mem: alloc.memory_bytes,
        gpus,
    }
}

fn add(a: Room, b: Room) -> Room {
    Room {
        cpu: a.cpu.saturating_add(b.cpu),
        mem: a.mem.saturating_add(b.mem),
        gpus: a.gpus.saturating_add(b.gpus),
    }
}

fn sub(a: Room, b: Room) -> Room {
    Room {
        cpu: a.cpu.saturating_sub(b.cpu),
        mem: a.mem.saturating_sub(b.mem),
        gpus: a.gpus.saturating_sub(b.gpus),
    }
}

/// How good a victim set is; lower is better.
type Cost = (usize, u8, u64, (u64, u64), usize);

/// The victims to evict on one node, or `None` if evicting every eligible
/// alloc there still would not make room.
fn victims_on_node(
    ws: &Workspace<'_>,
    ni: usize,
    task: &TaskRequest,
    rule: Victims,
) -> Option<Vec<usize>> {
    let d = &task.demand;
    if static_misfit(&ws.view.nodes()[ni], d).is_some() {
        return None;
    }
    let allocs = ws.view.allocs();
    let mut candidates: Vec<usize> = ws
        .live_allocs_on(ni)
        .filter(|ai| {
            let a = &allocs[*ai];
            a.priority < task.priority
                && match rule {
                    Victims::AnyLowerPriority => true,
                    Victims::ElasticExcess => a.elastic.is_some(),
                }
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    candidates.sort_by_key(|ai| {
        let a = &allocs[*ai];
        (
            a.priority,
            Reverse((a.gpus.len(), a.memory_bytes, a.cpu_millis)),
            *ai,
        )
    });
    let mut room = Room {
        cpu: ws.free_cpu(ni),
        mem: ws.free_mem(ni),
        gpus: ws.free_gpus(ni, d) as u64,
    };
    // Shards an elastic job can still give up on this pass without going
    // below its `min`.
    let mut budget: BTreeMap<&JobId, u32> = BTreeMap::new();
    let mut chosen = Vec::new();
    for ai in candidates {
        if room.covers(d) {
            break;
        }
        let a = &allocs[ai];
        if rule == Victims::ElasticExcess {
            let min = a.elastic.map_or(0, |e| e.min);
            let left = budget
                .entry(a.job())
                .or_insert_with(|| ws.job_live(a.job()).saturating_sub(min));
            if *left == 0 {
                continue;
            }
            *left -= 1;
        }
        room = add(room, frees(a, ws, ni, d));
        chosen.push(ai);
    }
    if !room.covers(d) {
        return None;
    }
    // A later, bigger victim may have made an earlier one unnecessary.
    let mut k = chosen.len();
    while k > 0 {
        k -= 1;
        let without = sub(room, frees(&allocs[chosen[k]], ws, ni, d));
        if without.covers(d) {
            room = without;
            chosen.remove(k);
        }
    }
    Some(chosen)
}

/// Finds the cheapest set of victims on any node, preempts them and places
/// the task there. Returns false, changing nothing, if no set makes room.
pub(crate) fn place_by_preempting(
    ws: &mut Workspace<'_>,
    task: &TaskRequest,
    rule: Victims,
) -> bool {
    let mut best: Option<(Cost, usize, Vec<usize>)> = None;
    for ni in 0..ws.node_count() {
        let Some(victims) = victims_on_node(ws, ni, task, rule) else {
            continue;
        };
        let allocs = ws.view.allocs();
        let cost: Cost = (
            victims.len(),
            victims
                .iter()
                .map(|ai| allocs[*ai].priority)
                .max()
                .unwrap_or(0),
            victims
                .iter()
                .map(|ai| u64::from(allocs[*ai].priority))
                .sum(),
            ws.load(ni),
            ni,
        );
        if best.as_ref().is_none_or(|(c, _, _)| cost < *c) {
            best = Some((cost, ni, victims));
        }
    }
    let Some((_, ni, victims)) = best else {
        return false;
    };
    for ai in victims {
        ws.preempt(ai, &task.task);
    }
    debug_assert!(
        ws.fits(ni, &task.demand),
        "victims were chosen to make room"
    );
    ws.place(ni, task);
    true
}
