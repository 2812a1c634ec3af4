//! Properties every policy keeps on random clusters and queues: no node is
//! over-committed (cpu, memory, each GPU device), no task is placed twice,
//! only feasible nodes are chosen, only strictly lower priority is ever
//! preempted, elastic jobs stay within `min`/`max`, and the same input gives
//! the same decisions. Capacity held by stopping allocs, and capacity
//! reserved for preemptors whose victims are stopping, is never handed out,
//! and a stopping alloc is never preempted again.

use std::collections::BTreeMap;

use proptest::prelude::*;
use scheduler_policies::feasibility::{gpu_model_matches, static_misfit};
use scheduler_policies::registry;
use scheduler_policies::testkit::{job, node, JobBuilder, GIB};
use scheduler_policies::verify::{verify, verify_elastic, Outcome};
use scheduler_policies::{
    AllocView, ClusterView, Decision, NodeStatus, NodeView, PolicyKind, Reservation, TaskRequest,
};

const MODELS: [&str; 2] = ["A100", "H100"];

fn arb_node(i: usize) -> impl Strategy<Value = NodeView> {
    (
        1u64..=16,
        1u64..=16,
        0u32..=3,
        0usize..2,
        prop::option::of(0usize..2),
        prop::sample::select(vec![
            NodeStatus::Ready,
            NodeStatus::Ready,
            NodeStatus::Ready,
            NodeStatus::Ready,
            NodeStatus::Draining,
            NodeStatus::Down,
            NodeStatus::Suspect,
            NodeStatus::Ineligible,
        ]),
        0.0f64..=1.0,
    )
        .prop_map(move |(cores_half, gib, gpus, model, zone, status, util)| {
            let mut b = node(&format!("n{i:02}"))
                .cpu(cores_half * 500)
                .mem(gib * GIB)
                .status(status)
                .utilisation(util)
                .gpus(MODELS[model], gpus);
            if let Some(z) = zone {
                b = b.label("zone", ["a", "b"][z]);
            }
            b.build()
        })
}

/// A job builder and how many tasks it queues.
fn arb_job(i: usize) -> impl Strategy<Value = (JobBuilder, u32)> {
    (
        0u8..=100,
        1u64..=16,
        1u64..=32,
        0u32..=2,
        prop::option::of(0usize..2),
        prop::option::of(0usize..2),
        prop::option::of((1u32..=4, 0u32..=3)),
        1u32..=8,
    )
        .prop_map(
            move |(priority, cpu_quarters, mem_quarters, gpus, model, zone, elastic, n)| {
                let mut b = job(&format!("j{i:02}"))
                    .priority(priority)
                    .submitted(i as u64)
                    .cpu(cpu_quarters * 250)
                    .mem(mem_quarters * GIB / 4)
                    .gpus(gpus);
                if let (Some(m), true) = (model, gpus > 0) {
                    b = b.gpu_model(MODELS[m]);
                }
                if let Some(z) = zone {
                    b = b.label("zone", ["a", "b"][z]);
                }
                if let Some((min, extra)) = elastic {
                    b = b.elastic(min, min + extra);
                }
                (b, n)
            },
        )
}

#[derive(Debug, Clone)]
struct Scenario {
    view: ClusterView,
    queue: Vec<TaskRequest>,
}

/// Nodes, live allocs made by really scheduling a first batch of jobs (so the
/// starting state is one a policy could have produced), and a second queue.
fn arb_scenario() -> impl Strategy<Value = Scenario> {
    let nodes = (0usize..=8).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>());
    let jobs = (1usize..=8).prop_flat_map(|n| (0..n).map(arb_job).collect::<Vec<_>>());
    (
        nodes,
        jobs,
        0usize..=8,
        prop::sample::select(PolicyKind::ALL.to_vec()),
        // What each first-batch placement became: 0-1 a live alloc, 2 a
        // stopping alloc, 3 a reservation for a preemptor.
        prop::collection::vec(0u8..4, 64),
    )
        .prop_map(|(nodes, jobs, split, first_policy, roles)| {
            let split = split.min(jobs.len());
            let empty = ClusterView::new(nodes.clone(), vec![]);
            let first: Vec<TaskRequest> = jobs[..split]
                .iter()
                .flat_map(|(b, n)| b.tasks(*n))
                .collect();
            let decisions = registry::build(first_policy).schedule(&empty, &first);
            let by_task: BTreeMap<_, _> = first.iter().map(|t| (t.task.clone(), t)).collect();
            let mut allocs: Vec<AllocView> = Vec::new();
            let mut reservations = Vec::new();
            let placements = decisions.iter().filter_map(|d| match d {
                Decision::Place { task, node, gpus } => Some((task, node, gpus)),
                _ => None,
            });
            for (i, (task, node, gpus)) in placements.enumerate() {
                let t = by_task[task];
                let role = roles[i % roles.len()];
                if role == 3 {
                    reservations.push(Reservation {
                        task: task.clone(),
                        node: node.clone(),
                        cpu_millis: t.demand.cpu_millis,
                        memory_bytes: t.demand.memory_bytes,
                        gpus: gpus.clone(),
                    });
                    continue;
                }
                allocs.push(AllocView {
                    id: task.alloc(1),
                    node: node.clone(),
                    priority: t.priority,
                    cpu_millis: t.demand.cpu_millis,
                    memory_bytes: t.demand.memory_bytes,
                    gpus: gpus.clone(),
                    elastic: t.elastic,
                    stopping: role == 2,
                });
            }
            // The second queue: the jobs not yet submitted, plus the queued
            // leftovers of the first ones (their shards keep their ids).
            let placed: Vec<_> = allocs
                .iter()
                .map(|a| a.id.task.clone())
                .chain(reservations.iter().map(|r| r.task.clone()))
                .collect();
            let queue = jobs
                .iter()
                .flat_map(|(b, n)| b.tasks(*n))
                .filter(|t| !placed.contains(&t.task))
                .collect();
            Scenario {
                view: ClusterView::new(nodes, allocs).with_reservations(reservations),
                queue,
            }
        })
}

/// After the decisions, could `task` still be placed somewhere? Used to check
/// that policies that place greedily never leave placeable work waiting.
fn fits_somewhere_after(
    s: &Scenario,
    decisions: &[Decision],
    out: &Outcome,
    task: &TaskRequest,
) -> bool {
    let by_id: BTreeMap<_, _> = s.queue.iter().map(|t| (&t.task, t)).collect();
    s.view.nodes().iter().any(|n| {
        if static_misfit(n, &task.demand).is_some() {
            return false;
        }
        let (mut cpu, mut mem, mut gpus) = (0, 0, Vec::new());
        for a in s
            .view
            .allocs()
            .iter()
            .filter(|a| a.node == n.id && !out.preempted.contains(&a.id))
        {
            cpu += a.cpu_millis;
            mem += a.memory_bytes;
            gpus.extend(&a.gpus);
        }
        for r in s.view.reservations().iter().filter(|r| r.node == n.id) {
            cpu += r.cpu_millis;
            mem += r.memory_bytes;
            gpus.extend(&r.gpus);
        }
        for d in decisions {
            if let Decision::Place {
                task: t,
                node,
                gpus: g,
            } = d
            {
                if *node == n.id {
                    cpu += by_id[t].demand.cpu_millis;
                    mem += by_id[t].demand.memory_bytes;
                    gpus.extend(g);
                }
            }
        }
        let free_matching = n
            .gpus
            .iter()
            .filter(|g| gpu_model_matches(&task.demand, &g.model) && !gpus.contains(&g.index))
            .count();
        cpu + task.demand.cpu_millis <= n.cpu_millis
            && mem + task.demand.memory_bytes <= n.memory_bytes
            && free_matching >= task.demand.gpus as usize
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_policy_keeps_its_promises(s in arb_scenario()) {
        for kind in PolicyKind::ALL {
            let decisions = registry::build(kind).schedule(&s.view, &s.queue);
            let out = verify(&s.view, &s.queue, &decisions)
                .map_err(|v| TestCaseError::fail(format!("{kind}: {v}")))?;
            if matches!(kind, PolicyKind::RoundRobin | PolicyKind::LeastLoaded) {
                prop_assert!(out.preempted.is_empty(), "{} preempted", kind);
            }
            if kind == PolicyKind::ElasticSharding {
                verify_elastic(&s.view, &s.queue, &out)
                    .map_err(|v| TestCaseError::fail(format!("{kind}: {v}")))?;
            }
        }
    }

    #[test]
    fn same_input_in_any_order_gives_the_same_decisions(s in arb_scenario()) {
        for kind in PolicyKind::ALL {
            let first = registry::build(kind).schedule(&s.view, &s.queue);
            let mut nodes = s.view.nodes().to_vec();
            nodes.reverse();
            let mut allocs = s.view.allocs().to_vec();
            allocs.reverse();
            let mut queue = s.queue.clone();
            queue.reverse();
            let mut reservations = s.view.reservations().to_vec();
            reservations.reverse();
            let view = ClusterView::new(nodes, allocs).with_reservations(reservations);
            let second = registry::build(kind).schedule(&view, &queue);
            prop_assert_eq!(first, second, "{}", kind);
        }
    }

    #[test]
    fn what_stopping_allocs_hold_and_preemptors_reserve_is_never_handed_out(s in arb_scenario()) {
        for kind in PolicyKind::ALL {
            let decisions = registry::build(kind).schedule(&s.view, &s.queue);
            for d in &decisions {
                match d {
                    Decision::Preempt { victim, .. } => {
                        let a = s.view.allocs().iter().find(|a| a.id == *victim).unwrap();
                        prop_assert!(!a.stopping, "{}: preempted {} again", kind, victim);
                    }
                    Decision::Place { task, node, gpus } => {
                        for g in gpus {
                            let held = s.view.allocs().iter().any(|a| {
                                a.stopping && a.node == *node && a.gpus.contains(g)
                            }) || s.view.reservations().iter().any(|r| {
                                r.node == *node && r.gpus.contains(g)
                            });
                            prop_assert!(!held, "{}: gave {} GPU {} on {}, still held", kind, task, g, node);
                        }
                    }
                    Decision::Wait { .. } => {}
                }
            }
            // cpu and memory, per node, with stopping allocs and reservations counted.
            verify(&s.view, &s.queue, &decisions)
                .map_err(|v| TestCaseError::fail(format!("{kind}: {v}")))?;
        }
    }

    #[test]
    fn greedy_policies_never_leave_placeable_work_waiting(s in arb_scenario()) {
        for kind in [PolicyKind::RoundRobin, PolicyKind::LeastLoaded, PolicyKind::Priority] {
            let decisions = registry::build(kind).schedule(&s.view, &s.queue);
            let out = verify(&s.view, &s.queue, &decisions)
                .map_err(|v| TestCaseError::fail(format!("{kind}: {v}")))?;
            for t in s.queue.iter().filter(|t| out.waiting.contains(&t.task)) {
                prop_assert!(!fits_somewhere_after(&s, &decisions, &out, t), "{}: {} waits but fits", kind, t.task);
            }
        }
    }
}
