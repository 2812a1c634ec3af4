//! The master-level harness: the real pass, lifecycle, preemption and
//! liveness code on a virtual clock, with the test playing the agents.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_api::protocol::NodeResources;
use drover_api::{AllocState, JobSpec, NodeId, TaskId, TaskState};
use drover_master::core::Settings;
use drover_master::harness::Harness;

fn node(id: &str) -> NodeId {
    NodeId::new(id).expect("a node id")
}

fn cores(n: u64) -> NodeResources {
    NodeResources {
        cpu_millis: n * 1000,
        memory_bytes: 8 << 30,
        gpus: Vec::new(),
    }
}

fn spec(yaml: &str) -> JobSpec {
    JobSpec::parse_yaml(yaml).expect("a valid spec")
}

async fn task_state(h: &Harness, id: &str) -> TaskState {
    let c = h.master().lock().await;
    c.tasks[&id.parse::<TaskId>().expect("a task id")].state
}

/// Starts every alloc the master placed and stops every one it is
/// stopping, as agents would at once.
async fn obey(h: &Harness) -> (usize, usize) {
    let orders = h.orders().await;
    for (n, a) in &orders.start {
        h.report(n, &[(a.clone(), AllocState::Running, None)])
            .await
            .expect("report running");
    }
    for (n, a) in &orders.stop {
        h.report(n, &[(a.clone(), AllocState::Killed, None)])
            .await
            .expect("report killed");
    }
    (orders.start.len(), orders.stop.len())
}

#[test]
fn a_high_priority_job_preempts_on_the_virtual_cluster_and_runs_once_its_victims_stop() {
    let rt = Harness::runtime().expect("a runtime");
    rt.block_on(async {
        let h = Harness::new(Settings::default()).await.expect("a harness");
        h.add_node(&node("n1"), cores(2), BTreeMap::new())
            .await
            .expect("register");
        h.submit(spec(
            "name: low\ncount: 2\npriority: 10\npolicy: priority\ncommand: [x]\nresources: {cpu: 1, memory: 1Gi}\n",
        ))
        .await
        .expect("submit low");
        assert_eq!(h.pass().await.expect("pass"), 2);
        assert_eq!(obey(&h).await, (2, 0));
        h.submit(spec(
            "name: high\ncount: 1\npriority: 90\npolicy: priority\ncommand: [x]\nresources: {cpu: 1, memory: 1Gi}\n",
        ))
        .await
        .expect("submit high");
        // The pass evicts one low task and reserves its room; high starts
        // only once the victim has stopped.
        assert_eq!(h.pass().await.expect("pass"), 0);
        assert_eq!(obey(&h).await, (0, 1));
        assert_eq!(task_state(&h, "high/0").await, TaskState::Pending);
        assert_eq!(h.pass().await.expect("pass"), 1);
        assert_eq!(obey(&h).await, (1, 0));
        assert_eq!(task_state(&h, "high/0").await, TaskState::Running);
        assert_eq!(h.master().metrics.preemptions.get(), 1);
    });
}

#[test]
fn a_node_left_silent_goes_down_after_node_timeout_of_virtual_time_and_its_task_moves() {
    let rt = Harness::runtime().expect("a runtime");
    rt.block_on(async {
        let settings = Settings::default();
        let timeout = settings.node_timeout;
        let h = Harness::new(settings).await.expect("a harness");
        for n in ["n1", "n2"] {
            h.add_node(&node(n), cores(1), BTreeMap::new())
                .await
                .expect("register");
        }
        h.submit(spec(
            "name: web\ntype: service\ncount: 2\ncommand: [x]\nresources: {cpu: 1, memory: 1Gi}\n",
        ))
        .await
        .expect("submit");
        assert_eq!(h.pass().await.expect("pass"), 2);
        obey(&h).await;
        let started = h.now_ms();
        // n2 goes on talking; n1 says nothing more.
        let mut down = Vec::new();
        while down.is_empty() {
            h.advance(Duration::from_millis(500)).await;
            h.keep_alive(&[node("n2")]).await;
            down = h.check_liveness().await.expect("liveness");
        }
        assert_eq!(down, vec![node("n1")]);
        let silent_for = Duration::from_millis(h.now_ms() - started);
        assert!(
            silent_for > timeout && silent_for <= timeout + Duration::from_secs(1),
            "{silent_for:?}"
        );
        // Its task waits: n2 is full.
        let c = h.master().lock().await;
        let waiting: Vec<String> = c.pending.iter().map(ToString::to_string).collect();
        assert_eq!(waiting.len(), 1, "{waiting:?}");
    });
}
