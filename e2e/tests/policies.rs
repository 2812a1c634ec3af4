//! Each of the four built-in policies, observed placing real tasks on three
//! real agents.
//!
//! Node `n1` first gets a ballast task holding half of its CPU. Then a job of
//! six small tasks shows the policy's character: round-robin walks the nodes
//! regardless of load (2 / 2 / 2), least-loaded and priority avoid the loaded
//! node (0 / 3 / 3). Placement is checked both in the master's books and on
//! the agents' disks, where every task left its alloc dir and its output.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_api::{AllocState, JobState, NodeId, TaskState};
use drover_e2e::{read_lines, Cluster, Job};

const WAIT: Duration = Duration::from_secs(15);

/// Starts 3 agents, loads `n1` with half its CPU, runs six small tasks under
/// `policy`, and returns how many of them each node ran.
async fn six_tasks_beside_a_ballast_on_n1(policy: &str) -> BTreeMap<NodeId, usize> {
    let cluster = Cluster::builder().start().await;
    let n1 = cluster.node(0);
    let half = cluster.node_view(&n1).await.allocatable.cpu_millis / 2;
    let ballast = Job::batch("ballast", "exec sleep 600")
        .on_node(&n1)
        .cpu_millis(half);
    cluster.submit(&ballast).await;
    cluster.wait_running(&ballast.id(), WAIT).await;

    let job = Job::batch("six", "echo ran $DROVER_TASK_ID")
        .count(6)
        .policy(policy);
    cluster.submit(&job).await;
    let done = cluster.wait_job(&job.id(), JobState::Complete, WAIT).await;
    assert_eq!(done.policy, policy);
    assert_eq!(done.count(TaskState::Succeeded), 6, "{done:?}");

    let mut per_node = BTreeMap::new();
    for task in cluster.tasks(&job.id()).await {
        assert_eq!(task.attempts.len(), 1, "{task:?}");
        let alloc = &task.attempts[0];
        assert_eq!(alloc.state, AllocState::Succeeded, "{alloc:?}");
        let placed = &alloc.history[0].reason;
        assert!(placed.contains(&format!("by {policy}")), "{placed}");
        // The agent of that node ran it: its alloc dir holds the output.
        let i = cluster_index(&alloc.node);
        let out = cluster
            .agent(i)
            .data_dir()
            .join("allocs/six")
            .join(task.id.index.to_string())
            .join("1/stdout.log");
        assert_eq!(
            read_lines(&out),
            [format!("ran {}", task.id)],
            "{}",
            out.display()
        );
        *per_node.entry(alloc.node.clone()).or_insert(0) += 1;
    }
    per_node
}

/// `n1` → 0, `n2` → 1, ...
fn cluster_index(node: &NodeId) -> usize {
    node.as_str()[1..]
        .parse::<usize>()
        .expect("node ids are n<k>")
        - 1
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<NodeId, usize> {
    pairs
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(id, n)| (NodeId::new(*id).expect("a valid node id"), *n))
        .collect()
}

#[tokio::test]
async fn round_robin_places_six_tasks_on_all_three_nodes_two_each_whatever_their_load() {
    let placed = six_tasks_beside_a_ballast_on_n1("round-robin").await;
    assert_eq!(placed, counts(&[("n1", 2), ("n2", 2), ("n3", 2)]));
}

#[tokio::test]
async fn least_loaded_spreads_six_tasks_over_the_two_nodes_without_load() {
    let placed = six_tasks_beside_a_ballast_on_n1("least-loaded").await;
    assert_eq!(placed, counts(&[("n1", 0), ("n2", 3), ("n3", 3)]));
}

#[tokio::test]
async fn priority_places_six_tasks_by_load_like_least_loaded_when_all_fit() {
    let placed = six_tasks_beside_a_ballast_on_n1("priority").await;
    assert_eq!(placed, counts(&[("n1", 0), ("n2", 3), ("n3", 3)]));
}

/// The most intervals of `spans` (start, end) open at one instant.
fn peak_overlap(spans: &[(u128, u128)]) -> usize {
    let mut edges: Vec<(u128, i32)> = spans.iter().flat_map(|&(s, e)| [(s, 1), (e, -1)]).collect();
    // Ends before starts at the same instant: touching is not overlapping.
    edges.sort();
    let (mut open, mut peak) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        peak = peak.max(open);
    }
    peak as usize
}

#[tokio::test]
async fn elastic_sharding_runs_between_min_and_max_shards_at_once_spread_over_all_nodes() {
    let cluster = Cluster::builder().start().await;
    let spans = cluster.scratch_dir("spans");
    // Each shard records when it ran, by the machine's clock.
    let script = format!(
        "s=$(date +%s%N); sleep 0.6; echo \"$s $(date +%s%N)\" > {}/$DROVER_SHARD",
        drover_e2e::sh_quote(spans.to_string_lossy())
    );
    let (shards, min, max) = (12, 2, 4);
    let job = Job::batch("sharded", &script).elastic(shards, min, max);
    let submitted = cluster.submit(&job).await;
    assert_eq!(submitted.policy, "elastic-sharding");

    // The master's books, sampled until the job completes: never more than
    // `max` shards live, and it does grow to `max`.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut peak_live = 0;
    loop {
        let tasks = cluster.tasks(&job.id()).await;
        let live = tasks
            .iter()
            .filter(|t| matches!(t.state, TaskState::Assigned | TaskState::Running))
            .count();
        assert!(live <= max as usize, "{live} shards live, max is {max}");
        peak_live = peak_live.max(live);
        if tasks.iter().all(|t| t.state == TaskState::Succeeded) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sharded job did not complete: {:?}",
            cluster.job(&job.id()).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(peak_live, max as usize, "the job never grew to its max");
    assert_eq!(cluster.job(&job.id()).await.state, JobState::Complete);

    let mut nodes = BTreeMap::new();
    for task in cluster.tasks(&job.id()).await {
        // Each shard ran once: one attempt, succeeded.
        assert_eq!(task.attempts.len(), 1, "{task:?}");
        assert_eq!(task.attempts[0].state, AllocState::Succeeded);
        *nodes.entry(task.attempts[0].node.clone()).or_insert(0) += 1;
    }
    assert_eq!(
        nodes.len(),
        3,
        "shards not spread over every node: {nodes:?}"
    );

    // What really ran at once, by the tasks' own clocks: within the bounds
    // (the master frees a slot only once the agent has reported the exit).
    let spans: Vec<(u128, u128)> = (0..shards)
        .map(|i| {
            let line = read_lines(&spans.join(i.to_string()));
            let v: Vec<u128> = line
                .first()
                .unwrap_or_else(|| panic!("shard {i} left no record"))
                .split(' ')
                .map(|n| n.parse().expect("nanoseconds"))
                .collect();
            (v[0], v[1])
        })
        .collect();
    let peak = peak_overlap(&spans);
    assert!(
        (min as usize..=max as usize).contains(&peak),
        "{peak} shards ran at once; the job's bounds are {min}..={max}"
    );
}
