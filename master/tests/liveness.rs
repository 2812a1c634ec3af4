//! Liveness with paused tokio time (DESIGN §8): nodes go suspect, then
//! down; their tasks are requeued; mass silence is rate-limited; a new
//! master waits one node_timeout; drains end at their deadline. Time only
//! moves when a test advances it; the background loops are not running, so
//! each check is an explicit `check_liveness()`.

use std::sync::Arc;
use std::time::Duration;

use drover_api::protocol::{AllocUpdate, HeartbeatRequest, NodeUsage, Offer};
use drover_api::{AllocId, AllocState, JobSpec, NodeId, TaskState};
use drover_master::auth::Principal;
use drover_master::clock::Clock;
use drover_master::core::{Master, Settings};
use drover_master::lifecycle;
use drover_master::model::NodeState;
use drover_master::state::{Tally, Txn};
use drover_master::store::EmbeddedStore;
use tempfile::TempDir;

mod support;
use support::register_request;

fn settings() -> Settings {
    Settings {
        heartbeat_interval: Duration::from_secs(1),
        node_timeout: Duration::from_secs(10),
        suspect_after_missed: 3,
        max_down_per_second: 1,
        ..Settings::default()
    }
}

async fn open(dir: &TempDir) -> Arc<Master> {
    let store = EmbeddedStore::open(dir.path()).unwrap();
    Master::open(settings(), Arc::new(store), Clock::starting_at(1_000_000))
        .await
        .unwrap()
}

fn nid(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

async fn register(m: &Master, id: &str, running: Vec<AllocId>) -> Vec<AllocId> {
    m.register(
        register_request(id, "127.0.0.1:1", running),
        &Principal::Anyone,
    )
    .await
    .unwrap()
    .kill
}

async fn heartbeat(m: &Master, id: &str) {
    report(m, id, vec![]).await;
}

async fn report(m: &Master, id: &str, updates: Vec<AllocUpdate>) {
    let resp = m
        .heartbeat(
            HeartbeatRequest {
                node_id: nid(id),
                offer: Offer {
                    cpu_millis: 4000,
                    memory_bytes: 8 << 30,
                    free_gpus: vec![],
                },
                usage: NodeUsage {
                    cpu_millis: 0,
                    memory_bytes: 0,
                    allocs: Default::default(),
                },
                updates,
            },
            &Principal::Anyone,
        )
        .await
        .unwrap();
    assert!(!resp.reregister);
}

async fn submit(m: &Master, yaml: &str) {
    let spec = JobSpec::parse_yaml(yaml).unwrap();
    let mut c = m.lock().await;
    let changes = {
        let mut txn = Txn::new(&c);
        lifecycle::submit(&mut txn, spec, m.clock.wall_ms());
        txn.into_changes()
    };
    let durable = m.stage(&mut c, changes);
    drop(c);
    durable.wait().await.unwrap();
}

async fn node_state(m: &Master, id: &str) -> NodeState {
    let c = m.lock().await;
    c.node_state(&c.nodes[&nid(id)])
}

/// Advances time one second at a time, with heartbeats from `alive` only.
async fn seconds_pass(m: &Master, n: u32, alive: &[&str]) -> Vec<NodeId> {
    let mut down = Vec::new();
    for _ in 0..n {
        tokio::time::advance(Duration::from_secs(1)).await;
        for a in alive {
            heartbeat(m, a).await;
        }
        down.extend(m.check_liveness().await.unwrap());
        assert_tally_kept(m).await;
    }
    down
}

/// The tally that `GET /v1/cluster` reads is what the books say, through
/// suspect, down and back.
async fn assert_tally_kept(m: &Master) {
    let c = m.lock().await;
    assert_eq!(c.tally, Tally::count(&c));
    assert_eq!(*c.published.lock().unwrap(), c.tally);
}

/// Node of the live alloc of each task of job `web`.
async fn placements(m: &Master) -> Vec<(String, String)> {
    let c = m.lock().await;
    c.allocs
        .values()
        .filter(|a| a.is_live())
        .map(|a| (a.id.task.to_string(), a.node.to_string()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_silent_node_becomes_suspect_then_down_and_its_tasks_run_elsewhere() {
    let dir = TempDir::new().unwrap();
    let m = open(&dir).await;
    for n in ["n1", "n2", "n3"] {
        register(&m, n, vec![]).await;
    }
    submit(&m, "name: web\ncount: 3\ncommand: [/bin/true]\n").await;
    assert_eq!(m.schedule_pass().await.unwrap(), 3);
    assert!(placements(&m).await.iter().any(|(_, n)| n == "n1"));

    assert!(seconds_pass(&m, 4, &["n2", "n3"]).await.is_empty());
    assert_eq!(node_state(&m, "n1").await, NodeState::Suspect);
    assert_eq!(node_state(&m, "n2").await, NodeState::Ready);
    let summary = m.summary("here").await;
    assert_eq!(summary.nodes["suspect"], 1, "{summary:?}");
    assert_eq!(summary.nodes["ready"], 2, "{summary:?}");
    assert_eq!(summary.tasks["assigned"], 3, "{summary:?}");

    let down = seconds_pass(&m, 7, &["n2", "n3"]).await;
    assert_eq!(down, vec![nid("n1")]);
    assert_eq!(node_state(&m, "n1").await, NodeState::Down);
    {
        let c = m.lock().await;
        let requeued: Vec<_> = c.pending.iter().map(ToString::to_string).collect();
        assert_eq!(requeued.len(), 1);
        let task = &c.tasks[&requeued[0].parse().unwrap()];
        assert_eq!(task.state, TaskState::Pending);
        assert!(
            task.reason().starts_with("node n1 down"),
            "{}",
            task.reason()
        );
    }
    assert_eq!(m.schedule_pass().await.unwrap(), 1);
    let now = placements(&m).await;
    assert_eq!(now.len(), 3);
    assert!(now.iter().all(|(_, n)| n != "n1"), "{now:?}");
}

#[tokio::test(start_paused = true)]
async fn when_most_nodes_go_silent_at_once_they_are_marked_down_at_a_bounded_rate() {
    let dir = TempDir::new().unwrap();
    let m = open(&dir).await;
    for n in ["n1", "n2", "n3", "n4"] {
        register(&m, n, vec![]).await;
    }
    // Only n4 keeps talking: 3 of 4 silent looks like the master is cut off.
    let first = seconds_pass(&m, 11, &["n4"]).await;
    assert_eq!(first.len(), 1, "one per second at most: {first:?}");
    let second = seconds_pass(&m, 1, &["n4"]).await;
    assert_eq!(second.len(), 1);
    let rest = seconds_pass(&m, 5, &["n4"]).await;
    assert_eq!(rest.len(), 1, "only n3 was left: {rest:?}");
    assert_eq!(node_state(&m, "n4").await, NodeState::Ready);
}

#[tokio::test(start_paused = true)]
async fn a_mass_silence_stays_rate_limited_until_every_silent_node_is_down_or_back() {
    let dir = TempDir::new().unwrap();
    let m = open(&dir).await;
    let nodes: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    for n in &nodes {
        register(&m, n, vec![]).await;
    }
    let alive = ["n6", "n7", "n8", "n9"];
    // Six of ten silent. Once two are down, the other four are no longer
    // "more than half" of the eight left, yet they still go one a second:
    // the silence began as a mass one.
    let mut downs = Vec::new();
    for second in 0..14 {
        let down = seconds_pass(&m, 1, &alive).await;
        assert!(down.len() <= 1, "second {second}: {down:?}");
        downs.extend(down);
    }
    assert_eq!(downs.len(), 4, "{downs:?}");
    assert_eq!(m.metrics.nodes_down_deferred.get(), 2);
    // The last two come back before their turn: nothing more is marked
    // down, and the episode ends.
    let back = ["n4", "n5", "n6", "n7", "n8", "n9"];
    for n in ["n4", "n5"] {
        heartbeat(&m, n).await;
    }
    assert!(seconds_pass(&m, 5, &back).await.is_empty());
    assert_eq!(m.metrics.nodes_down_deferred.get(), 0);
    for n in back {
        assert_eq!(node_state(&m, n).await, NodeState::Ready, "{n}");
    }
    // A single node going silent later is an ordinary failure again.
    let down = seconds_pass(&m, 12, &["n4", "n5", "n6", "n7", "n8"]).await;
    assert_eq!(down, vec![nid("n9")]);
}

#[tokio::test(start_paused = true)]
async fn a_new_master_waits_one_node_timeout_before_declaring_any_node_down() {
    let dir = TempDir::new().unwrap();
    {
        let m = open(&dir).await;
        register(&m, "n1", vec![]).await;
        // The node is already silent for a long time under the old master.
        tokio::time::advance(Duration::from_secs(60)).await;
    }
    let m = open(&dir).await;
    tokio::time::advance(Duration::from_millis(9_900)).await;
    assert!(m.check_liveness().await.unwrap().is_empty());
    tokio::time::advance(Duration::from_millis(200)).await;
    assert_eq!(m.check_liveness().await.unwrap(), vec![nid("n1")]);
}

#[tokio::test(start_paused = true)]
async fn a_node_that_comes_back_is_told_to_kill_the_allocs_that_were_replaced() {
    let dir = TempDir::new().unwrap();
    let m = open(&dir).await;
    register(&m, "n1", vec![]).await;
    submit(&m, "name: web\ncommand: [/bin/true]\n").await;
    m.schedule_pass().await.unwrap();
    let stale: AllocId = "web/0/1".parse().unwrap();
    register(&m, "n2", vec![]).await;
    seconds_pass(&m, 11, &["n2"]).await;
    assert_eq!(node_state(&m, "n1").await, NodeState::Down);
    m.schedule_pass().await.unwrap();
    assert_eq!(
        placements(&m).await,
        vec![("web/0".to_string(), "n2".to_string())]
    );

    let kill = register(&m, "n1", vec![stale.clone()]).await;
    assert_eq!(kill, vec![stale]);
    assert_eq!(node_state(&m, "n1").await, NodeState::Ready);
    let assignments = m
        .assignments(&nid("n1"), None)
        .await
        .expect("settled assignments");
    assert!(assignments.full && assignments.allocs.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_draining_node_keeps_batch_work_until_the_deadline_then_it_moves() {
    let dir = TempDir::new().unwrap();
    let m = open(&dir).await;
    register(&m, "n1", vec![]).await;
    submit(&m, "name: web\ncommand: [/bin/true]\n").await;
    m.schedule_pass().await.unwrap();
    register(&m, "n2", vec![]).await;
    m.set_drain(&nid("n1"), true, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(node_state(&m, "n1").await, NodeState::Draining);

    seconds_pass(&m, 29, &["n1", "n2"]).await;
    assert_eq!(
        placements(&m).await,
        vec![("web/0".to_string(), "n1".to_string())]
    );
    seconds_pass(&m, 2, &["n1", "n2"]).await;
    // Past the deadline the alloc stops, but holds n1 until it has exited:
    // no second attempt starts meanwhile.
    m.schedule_pass().await.unwrap();
    assert_eq!(
        placements(&m).await,
        vec![("web/0".to_string(), "n1".to_string())]
    );
    let on_n1 = m.assignments(&nid("n1"), None).await.unwrap().allocs;
    assert!(on_n1[0].stop, "n1 is told to stop it: {on_n1:?}");
    let exited = AllocUpdate {
        alloc: "web/0/1".parse().unwrap(),
        state: AllocState::Killed,
        exit_code: None,
        signal: Some(15),
        message: Some("killed by SIGTERM".into()),
        at_unix_ms: m.clock.wall_ms(),
    };
    report(&m, "n1", vec![exited]).await;
    m.schedule_pass().await.unwrap();
    assert_eq!(
        placements(&m).await,
        vec![("web/0".to_string(), "n2".to_string())]
    );
}
