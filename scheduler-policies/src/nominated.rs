//! Placing a task that preempted others, on the node it preempted on.
//!
//! A victim keeps its resources until its processes have exited, so the
//! task that evicted it cannot start at once. The master reserves the room
//! for it instead (a [`Reservation`], Kubernetes' nominated node), which
//! every policy treats as taken, and asks [`decide`] on each pass whether
//! the task fits there yet. The policies never see the task while it holds
//! a reservation, so it cannot preempt a second set of victims while the
//! first set is still stopping.

use drover_api::NodeId;

use crate::feasibility::{gpu_model_matches, static_misfit};
use crate::view::{ClusterView, NodeView, Reservation, TaskRequest};

/// What to do with a task that holds a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nominated {
    /// It fits on its node now: place it there with these GPU devices.
    Place { gpus: Vec<u32> },
    /// Its victims are still stopping: keep the reservation and wait.
    Wait { reason: String },
    /// The reservation can no longer help (the node went away, drains, or
    /// its victims are gone and it still does not fit): drop it and let the
    /// task's policy decide again.
    Release,
}

/// Decides for `task`, which must hold one of the view's reservations
/// ([`Nominated::Release`] if it holds none).
pub fn decide(view: &ClusterView, task: &TaskRequest) -> Nominated {
    let Some(own) = view.reservations().iter().find(|r| r.task == task.task) else {
        return Nominated::Release;
    };
    let Some(node) = view.node_index(&own.node).map(|ni| &view.nodes()[ni]) else {
        return Nominated::Release;
    };
    let demand = &task.demand;
    if static_misfit(node, demand).is_some() {
        return Nominated::Release;
    }
    let mut used_cpu = 0u64;
    let mut used_mem = 0u64;
    let mut held = vec![false; node.gpus.len()];
    let mut stopping = 0usize;
    let hold = |gpus: &[u32], held: &mut Vec<bool>| {
        for dev in gpus {
            if let Ok(pos) = node.gpus.binary_search_by_key(dev, |g| g.index) {
                held[pos] = true;
            }
        }
    };
    for a in view.allocs().iter().filter(|a| a.node == node.id) {
        used_cpu = used_cpu.saturating_add(a.cpu_millis);
        used_mem = used_mem.saturating_add(a.memory_bytes);
        hold(&a.gpus, &mut held);
        stopping += usize::from(a.stopping);
    }
    let others = view
        .reservations()
        .iter()
        .filter(|r| r.node == node.id && r.task != task.task);
    for r in others {
        used_cpu = used_cpu.saturating_add(r.cpu_millis);
        used_mem = used_mem.saturating_add(r.memory_bytes);
        hold(&r.gpus, &mut held);
    }
    let fits = node.cpu_millis.saturating_sub(used_cpu) >= demand.cpu_millis
        && node.memory_bytes.saturating_sub(used_mem) >= demand.memory_bytes;
    let gpus = fits.then(|| pick_gpus(node, own, &held, task)).flatten();
    match gpus {
        Some(gpus) => Nominated::Place { gpus },
        None if stopping > 0 => Nominated::Wait {
            reason: waiting_reason(&node.id, stopping),
        },
        None => Nominated::Release,
    }
}

/// Why a preemptor waits: the same words on the pass that preempted and on
/// every pass after.
pub fn waiting_reason(node: &NodeId, stopping: usize) -> String {
    let s = if stopping == 1 { "" } else { "s" };
    format!("reserved on {node}: waiting for {stopping} stopping alloc{s} to exit")
}

/// The devices reserved for the task when they are all free, else the
/// lowest free devices of the right model; `None` if too few are free.
fn pick_gpus(
    node: &NodeView,
    own: &Reservation,
    held: &[bool],
    task: &TaskRequest,
) -> Option<Vec<u32>> {
    let want = task.demand.gpus as usize;
    let free = |pos: usize| !held[pos] && gpu_model_matches(&task.demand, &node.gpus[pos].model);
    let reserved: Vec<u32> = own
        .gpus
        .iter()
        .filter(|dev| {
            node.gpus
                .binary_search_by_key(*dev, |g| g.index)
                .is_ok_and(free)
        })
        .copied()
        .collect();
    if reserved.len() == want && own.gpus.len() == want {
        return Some(reserved);
    }
    let any: Vec<u32> = (0..node.gpus.len())
        .filter(|pos| free(*pos))
        .map(|pos| node.gpus[pos].index)
        .take(want)
        .collect();
    (any.len() == want).then_some(any)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{job, node, GIB};

    fn reservation(task: &TaskRequest, node: &str, gpus: &[u32]) -> Reservation {
        Reservation {
            task: task.task.clone(),
            node: node.parse().unwrap(),
            cpu_millis: task.demand.cpu_millis,
            memory_bytes: task.demand.memory_bytes,
            gpus: gpus.to_vec(),
        }
    }

    #[test]
    fn a_preemptor_waits_while_its_victims_stop_then_takes_their_devices() {
        let nodes = vec![node("g1").cpu(2000).gpus("A100", 2).build()];
        let low = job("low").priority(10).cpu(2000).gpus(2);
        let high = job("high").priority(90).cpu(2000).gpus(2).tasks(1);
        let mut victim = low.alloc_on(0, "g1", &[0, 1]);
        victim.stopping = true;
        let r = reservation(&high[0], "g1", &[0, 1]);
        let view = ClusterView::new(nodes.clone(), vec![victim]).with_reservations(vec![r.clone()]);
        let Nominated::Wait { reason } = decide(&view, &high[0]) else {
            panic!("the victim still holds both GPUs");
        };
        assert_eq!(
            reason,
            "reserved on g1: waiting for 1 stopping alloc to exit"
        );
        let gone = ClusterView::new(nodes, vec![]).with_reservations(vec![r]);
        assert_eq!(
            decide(&gone, &high[0]),
            Nominated::Place { gpus: vec![0, 1] }
        );
    }

    #[test]
    fn another_tasks_reservation_is_not_the_preemptors_to_take() {
        let nodes = vec![node("n1").cpu(2000).build()];
        let a = job("a").priority(90).cpu(1500).tasks(1);
        let b = job("b").priority(80).cpu(1000).tasks(1);
        let view = ClusterView::new(nodes, vec![]).with_reservations(vec![
            reservation(&a[0], "n1", &[]),
            reservation(&b[0], "n1", &[]),
        ]);
        assert_eq!(
            decide(&view, &a[0]),
            Nominated::Release,
            "b holds 1000m of 2000m"
        );
    }

    #[test]
    fn a_reservation_that_cannot_help_any_more_is_released() {
        let nodes = vec![node("n1").cpu(2000).mem(4 * GIB).build()];
        let high = job("high").priority(90).cpu(4000).tasks(1);
        // Nothing is stopping and the node is too small: it never fits.
        let view = ClusterView::new(nodes.clone(), vec![]).with_reservations(vec![reservation(
            &high[0],
            "n1",
            &[],
        )]);
        assert_eq!(decide(&view, &high[0]), Nominated::Release);
        let none = ClusterView::new(nodes, vec![]);
        assert_eq!(decide(&none, &high[0]), Nominated::Release);
    }
}
