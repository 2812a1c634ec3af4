//! Table tests: one rule of one policy per test, on clusters small enough to
//! read. Every decision list is also checked by `verify`.

use scheduler_policies::testkit::{job, node, GIB};
use scheduler_policies::verify::{verify, verify_elastic, Outcome};
use scheduler_policies::{
    AllocView, ClusterView, Decision, ElasticSharding, LeastLoaded, NodeStatus, NodeView, Policy,
    Priority, RoundRobin, TaskRequest,
};

fn run(
    policy: &mut dyn Policy,
    view: &ClusterView,
    queue: &[TaskRequest],
) -> (Vec<Decision>, Outcome) {
    let decisions = policy.schedule(view, queue);
    let outcome = verify(view, queue, &decisions)
        .unwrap_or_else(|v| panic!("{}: {v}\n{decisions:#?}", policy.name()));
    (decisions, outcome)
}

fn cluster(nodes: Vec<NodeView>, allocs: Vec<AllocView>) -> ClusterView {
    ClusterView::new(nodes, allocs)
}

/// Node of each placement, in decision order.
fn placements(decisions: &[Decision]) -> Vec<String> {
    decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Place { node, .. } => Some(node.to_string()),
            _ => None,
        })
        .collect()
}

fn wait_reason(decisions: &[Decision], task: &str) -> String {
    decisions
        .iter()
        .find_map(|d| match d {
            Decision::Wait { task: t, reason } if t.to_string() == task => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{task} does not wait: {decisions:#?}"))
}

fn preempted(outcome: &Outcome) -> Vec<String> {
    outcome.preempted.iter().map(ToString::to_string).collect()
}

// ---- round-robin ----

#[test]
fn round_robin_walks_nodes_in_id_order_and_wraps() {
    let view = cluster(
        vec![node("n3").build(), node("n1").build(), node("n2").build()],
        vec![],
    );
    let (d, _) = run(&mut RoundRobin::default(), &view, &job("a").tasks(4));
    assert_eq!(placements(&d), ["n1", "n2", "n3", "n1"]);
}

#[test]
fn round_robin_continues_after_the_last_node_used_in_the_previous_pass() {
    let view = cluster(
        vec![node("n1").build(), node("n2").build(), node("n3").build()],
        vec![],
    );
    let mut rr = RoundRobin::default();
    let (first, _) = run(&mut rr, &view, &job("a").tasks(2));
    let (second, _) = run(&mut rr, &view, &job("b").tasks(2));
    assert_eq!(placements(&first), ["n1", "n2"]);
    assert_eq!(placements(&second), ["n3", "n1"]);
}

#[test]
fn round_robin_skips_nodes_that_cannot_take_the_task() {
    let view = cluster(
        vec![
            node("n1").build(),
            node("n2").status(NodeStatus::Draining).build(),
            node("n3").mem(GIB / 2).build(),
            node("n4").build(),
        ],
        vec![],
    );
    let (d, _) = run(&mut RoundRobin::default(), &view, &job("a").tasks(3));
    assert_eq!(placements(&d), ["n1", "n4", "n1"]);
}

// ---- least-loaded ----

#[test]
fn least_loaded_picks_the_node_with_the_lowest_dominant_share() {
    // n1 has half its memory used (dominant share 0.5); n2 a quarter of its cpu.
    let busy = job("busy").cpu(100).mem(4 * GIB);
    let light = job("light").cpu(1000).mem(GIB / 8);
    let view = cluster(
        vec![node("n1").build(), node("n2").build()],
        vec![busy.alloc_on(0, "n1", &[]), light.alloc_on(0, "n2", &[])],
    );
    let (d, _) = run(
        &mut LeastLoaded,
        &view,
        &job("a").cpu(100).mem(GIB / 8).tasks(1),
    );
    assert_eq!(placements(&d), ["n2"]);
}

#[test]
fn least_loaded_breaks_ties_by_live_utilisation_then_node_id() {
    let view = cluster(
        vec![
            node("n1").utilisation(0.9).build(),
            node("n2").utilisation(0.1).build(),
            node("n3").utilisation(0.1).build(),
        ],
        vec![],
    );
    let (d, _) = run(
        &mut LeastLoaded,
        &view,
        &job("a").cpu(10).mem(1 << 20).tasks(1),
    );
    assert_eq!(placements(&d), ["n2"]);
}

#[test]
fn least_loaded_spreads_a_job_evenly() {
    let view = cluster(
        vec![node("n1").build(), node("n2").build(), node("n3").build()],
        vec![],
    );
    let (d, _) = run(&mut LeastLoaded, &view, &job("a").tasks(6));
    let mut nodes = placements(&d);
    nodes.sort();
    assert_eq!(nodes, ["n1", "n1", "n2", "n2", "n3", "n3"]);
}

#[test]
fn gpu_tasks_get_free_devices_of_the_requested_model_lowest_index_first() {
    let trainer = job("train").gpus(1).gpu_model("H100");
    let view = cluster(
        vec![node("n1").gpus("A100", 2).gpus("H100", 2).build()],
        vec![trainer.alloc_on(0, "n1", &[2])],
    );
    let (d, _) = run(
        &mut LeastLoaded,
        &view,
        &job("b").gpus(1).gpu_model("H100").tasks(2),
    );
    let Decision::Place { gpus, .. } = &d[0] else {
        panic!("{d:?}")
    };
    assert_eq!(gpus, &[3]);
    assert_eq!(wait_reason(&d, "b/1"), "1 node: insufficient GPUs");
}

#[test]
fn label_constraints_only_match_nodes_with_that_label_value() {
    let view = cluster(
        vec![
            node("n1").label("zone", "a").build(),
            node("n2").label("zone", "b").build(),
            node("n3").build(),
        ],
        vec![],
    );
    let (d, _) = run(
        &mut LeastLoaded,
        &view,
        &job("a").label("zone", "b").tasks(2),
    );
    assert_eq!(placements(&d), ["n2", "n2"]);
}

#[test]
fn a_waiting_task_says_why_per_node_class() {
    let hog = job("hog").cpu(100).mem(7 * GIB);
    let view = cluster(
        vec![
            node("n1").build(),
            node("n2").build(),
            node("n3").status(NodeStatus::Draining).build(),
            node("n4").status(NodeStatus::Down).build(),
        ],
        vec![hog.alloc_on(0, "n1", &[]), hog.alloc_on(1, "n2", &[])],
    );
    let (d, _) = run(&mut LeastLoaded, &view, &job("a").mem(2 * GIB).tasks(1));
    assert_eq!(
        wait_reason(&d, "a/0"),
        "2 nodes: insufficient memory, 1 node: down, 1 node: draining"
    );
}

#[test]
fn an_empty_cluster_says_so() {
    let (d, _) = run(
        &mut LeastLoaded,
        &cluster(vec![], vec![]),
        &job("a").tasks(1),
    );
    assert_eq!(wait_reason(&d, "a/0"), "no nodes in the cluster");
}

#[test]
fn higher_priority_tasks_are_placed_first_whatever_the_queue_order() {
    let view = cluster(vec![node("n1").build()], vec![]);
    let mut queue = job("low").priority(10).cpu(3000).tasks(1);
    queue.extend(job("high").priority(90).cpu(3000).submitted(5).tasks(1));
    let (d, o) = run(&mut LeastLoaded, &view, &queue);
    assert!(o.placed.keys().any(|t| t.to_string() == "high/0"), "{d:?}");
    assert!(o.waiting.iter().any(|t| t.to_string() == "low/0"));
}

// ---- priority ----

#[test]
fn priority_places_without_preempting_when_a_node_has_room() {
    let low = job("low").priority(10);
    let view = cluster(
        vec![node("n1").build(), node("n2").build()],
        vec![low.alloc_on(0, "n1", &[])],
    );
    let (_, o) = run(&mut Priority, &view, &job("high").priority(90).tasks(1));
    assert!(o.preempted.is_empty());
}

#[test]
fn priority_preempts_the_lowest_priority_victim_that_makes_room() {
    let a = job("a").priority(20).cpu(2000);
    let b = job("b").priority(10).cpu(2000);
    let view = cluster(
        vec![node("n1").build()],
        vec![a.alloc_on(0, "n1", &[]), b.alloc_on(0, "n1", &[])],
    );
    let (d, o) = run(
        &mut Priority,
        &view,
        &job("high").priority(90).cpu(2000).tasks(1),
    );
    assert_eq!(preempted(&o), ["b/0/1"]);
    assert!(
        matches!(&d[0], Decision::Preempt { .. }),
        "preemption comes before the placement"
    );
    assert_eq!(placements(&d), ["n1"]);
}

#[test]
fn priority_never_preempts_equal_or_higher_priority_work() {
    let same = job("same").priority(50).cpu(4000);
    let view = cluster(vec![node("n1").build()], vec![same.alloc_on(0, "n1", &[])]);
    let (d, o) = run(&mut Priority, &view, &job("a").priority(50).tasks(1));
    assert!(o.preempted.is_empty());
    assert_eq!(
        wait_reason(&d, "a/0"),
        "1 node: insufficient cpu; preempting lower-priority work would not make room"
    );
}

#[test]
fn priority_prefers_the_node_needing_the_fewest_victims() {
    let small = job("small").priority(5).cpu(1000);
    let big = job("big").priority(30).cpu(3000);
    let view = cluster(
        vec![node("n1").build(), node("n2").build()],
        vec![
            small.alloc_on(0, "n1", &[]),
            small.alloc_on(1, "n1", &[]),
            small.alloc_on(2, "n1", &[]),
            small.alloc_on(3, "n1", &[]),
            big.alloc_on(0, "n2", &[]),
            small.alloc_on(4, "n2", &[]),
        ],
    );
    let (_, o) = run(
        &mut Priority,
        &view,
        &job("high").priority(90).cpu(2500).tasks(1),
    );
    // n1 needs three 1-core victims; n2 is freed by its one 3-core alloc.
    assert_eq!(preempted(&o), ["big/0/1"]);
}

#[test]
fn priority_drops_victims_that_a_bigger_victim_made_unnecessary() {
    let tiny = job("tiny").priority(5).cpu(500).mem(GIB / 4);
    let large = job("large").priority(6).cpu(3000);
    let view = cluster(
        vec![node("n1").build()],
        vec![tiny.alloc_on(0, "n1", &[]), large.alloc_on(0, "n1", &[])],
    );
    // Lowest priority first takes tiny, then large; large alone is enough.
    let (_, o) = run(
        &mut Priority,
        &view,
        &job("high").priority(90).cpu(3000).tasks(1),
    );
    assert_eq!(preempted(&o), ["large/0/1"]);
}

#[test]
fn priority_frees_gpus_by_preempting_gpu_holders() {
    let low = job("low").priority(1).gpus(1).cpu(100);
    let view = cluster(
        vec![node("n1").gpus("A100", 1).build()],
        vec![low.alloc_on(0, "n1", &[0])],
    );
    let (d, o) = run(
        &mut Priority,
        &view,
        &job("high").priority(99).gpus(1).cpu(100).tasks(1),
    );
    assert_eq!(preempted(&o), ["low/0/1"]);
    assert!(matches!(&d[1], Decision::Place { gpus, .. } if gpus == &[0]));
}

// ---- elastic-sharding ----

#[test]
fn elastic_job_does_not_start_until_min_shards_fit_at_once() {
    let view = cluster(vec![node("n1").cpu(2000).build()], vec![]);
    let (d, o) = run(
        &mut ElasticSharding,
        &view,
        &job("e").elastic(3, 5).tasks(8),
    );
    assert!(o.placed.is_empty(), "{d:?}");
    let reason = wait_reason(&d, "e/0");
    assert!(
        reason.starts_with("gang admission: 3 shards must start together, only 2 fit"),
        "{reason}"
    );
}

#[test]
fn elastic_job_grows_to_max_and_no_further() {
    let view = cluster(
        vec![node("n1").build(), node("n2").build(), node("n3").build()],
        vec![],
    );
    let queue = job("e").elastic(2, 4).tasks(10);
    let (d, o) = run(&mut ElasticSharding, &view, &queue);
    verify_elastic(&view, &queue, &o).unwrap();
    assert_eq!(o.placed.len(), 4);
    assert_eq!(
        wait_reason(&d, "e/9"),
        "job e already runs its elastic maximum of 4 shards"
    );
}

#[test]
fn elastic_shards_spread_across_nodes_before_doubling_up() {
    // n1 is far emptier, but a second shard on it would put two eggs in one basket.
    let view = cluster(
        vec![
            node("n1").cpu(64_000).mem(64 * GIB).build(),
            node("n2").build(),
            node("n3").build(),
        ],
        vec![],
    );
    let (d, _) = run(
        &mut ElasticSharding,
        &view,
        &job("e").elastic(3, 3).tasks(3),
    );
    let mut nodes = placements(&d);
    nodes.sort();
    assert_eq!(nodes, ["n1", "n2", "n3"]);
}

#[test]
fn a_running_elastic_job_grows_one_shard_at_a_time() {
    let e = job("e").elastic(3, 6);
    let view = cluster(
        vec![node("n1").cpu(2000).build()],
        vec![e.alloc_on(0, "n1", &[])],
    );
    let queue: Vec<_> = e.tasks(6).into_iter().skip(1).collect();
    let (_, o) = run(&mut ElasticSharding, &view, &queue);
    assert_eq!(
        o.placed.len(),
        1,
        "one more shard fits; no gang rule once started"
    );
}

#[test]
fn elastic_jobs_give_back_shards_above_min_to_higher_priority_work() {
    let e = job("e").priority(10).elastic(2, 4).cpu(2000);
    let view = cluster(
        vec![node("n1").build(), node("n2").build()],
        (0..4)
            .map(|i| e.alloc_on(i, if i % 2 == 0 { "n1" } else { "n2" }, &[]))
            .collect(),
    );
    let queue = job("urgent").priority(80).cpu(2000).tasks(3);
    let (d, o) = run(&mut ElasticSharding, &view, &queue);
    assert_eq!(
        o.preempted.len(),
        2,
        "only the two shards above min yield: {d:#?}"
    );
    assert_eq!(o.placed.len(), 2);
    assert!(o.waiting.iter().any(|t| t.to_string() == "urgent/2"));
}

#[test]
fn elastic_jobs_at_min_keep_their_shards() {
    let e = job("e").priority(10).elastic(2, 4).cpu(4000);
    let view = cluster(
        vec![node("n1").build(), node("n2").build()],
        vec![e.alloc_on(0, "n1", &[]), e.alloc_on(1, "n2", &[])],
    );
    let (_, o) = run(
        &mut ElasticSharding,
        &view,
        &job("urgent").priority(80).tasks(1),
    );
    assert!(o.preempted.is_empty());
}

#[test]
fn a_gang_that_fails_leaves_the_cluster_as_it_found_it() {
    // The small job fits; the elastic gang does not and must not hold room.
    let view = cluster(vec![node("n1").cpu(3000).build()], vec![]);
    let mut queue = job("e").priority(60).elastic(4, 4).tasks(4);
    queue.extend(job("small").priority(40).cpu(3000).tasks(1));
    let (_, o) = run(&mut ElasticSharding, &view, &queue);
    assert_eq!(
        o.placed.keys().map(ToString::to_string).collect::<Vec<_>>(),
        ["small/0"]
    );
}

#[test]
fn the_last_shards_of_a_job_start_even_when_fewer_than_min_remain() {
    let view = cluster(vec![node("n1").build()], vec![]);
    let queue: Vec<_> = job("e")
        .elastic(3, 4)
        .tasks(10)
        .into_iter()
        .skip(9)
        .collect();
    let (_, o) = run(&mut ElasticSharding, &view, &queue);
    assert_eq!(o.placed.len(), 1);
}
