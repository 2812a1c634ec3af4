//! Every example job under `config/jobs/` is submitted to a real master
//! with the nodes `drover dev --agents 2` registers, and must do what its
//! comments promise, so the examples the README points to cannot rot.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use drover_api::protocol::{
    AllocUpdate, GpuDevice, HeartbeatRequest, NodeUsage, Offer, RegisterRequest,
};
use drover_api::views::{JobView, TaskView};
use drover_api::{AllocState, JobSpec, TaskState};
use drover_master::auth::{Auth, Principal};
use drover_master::clock::Clock;
use drover_master::core::{Master, Settings};
use drover_master::http::routes;
use drover_master::store::EmbeddedStore;
use tempfile::TempDir;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/jobs")
}

fn example(name: &str) -> String {
    let path = examples_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// What a `drover dev` agent registers: 4 cores, 8 GiB, one fake GPU.
fn dev_node(i: u32) -> RegisterRequest {
    let mut req = support::register_request(&format!("dev-{i}"), "127.0.0.1:1", Vec::new());
    req.desc.resources.gpus = vec![GpuDevice {
        index: 0,
        uuid: format!("FAKE-dev-{i}-0"),
        model: "Drover Fake GPU 16GB".into(),
        memory_bytes: 16 << 30,
    }];
    req.desc.labels = BTreeMap::from([("dev".into(), "true".into())]);
    req
}

struct Dev {
    _dir: TempDir,
    master: Arc<Master>,
}

impl Dev {
    async fn with_agents(n: u32) -> Dev {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path()).expect("open the store");
        let master = Master::open(Settings::default(), Arc::new(store), Clock::system())
            .await
            .expect("open the master");
        for i in 1..=n {
            master
                .register(dev_node(i), &Principal::Anyone)
                .await
                .expect("register");
        }
        Dev { _dir: dir, master }
    }

    async fn call(&self, method: &str, path: &str, ctype: &str, body: &str) -> (u16, String) {
        let api = routes(
            Arc::clone(&self.master),
            Arc::new(Auth::disabled()),
            "127.0.0.1:7070".into(),
        );
        let r = warp::test::request()
            .method(method)
            .path(path)
            .header("content-type", ctype)
            .body(body)
            .reply(&api)
            .await;
        (
            r.status().as_u16(),
            String::from_utf8_lossy(r.body()).into_owned(),
        )
    }

    async fn submit(&self, file: &str) -> JobView {
        let (status, body) = self
            .call("POST", "/v1/jobs", "application/yaml", &example(file))
            .await;
        assert_eq!(status, 201, "{file}: {body}");
        serde_json::from_str(&body).expect("a job view")
    }

    async fn tasks(&self, job: &str) -> Vec<TaskView> {
        let (status, body) = self
            .call(
                "GET",
                &format!("/v1/jobs/{job}/tasks"),
                "application/json",
                "",
            )
            .await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("task views")
    }

    async fn schedule(&self) -> usize {
        self.master.schedule_pass().await.expect("scheduling pass")
    }

    /// Reports every assigned alloc of `job` running, as its agent would.
    async fn report_running(&self, job: &str) {
        self.report(job, AllocState::Assigned, AllocState::Running)
            .await;
    }

    /// What the agents say once the processes of `job`'s stopping allocs
    /// have exited.
    async fn report_stopped(&self, job: &str) {
        self.report(job, AllocState::Stopping, AllocState::Killed)
            .await;
    }

    /// Reports `to` for the latest alloc of each of `job`'s tasks that is `from`.
    async fn report(&self, job: &str, from: AllocState, to: AllocState) {
        for t in self.tasks(job).await {
            let Some(a) = t.latest().filter(|a| a.state == from) else {
                continue;
            };
            self.master
                .heartbeat(
                    HeartbeatRequest {
                        node_id: a.node.clone(),
                        offer: Offer::default(),
                        usage: NodeUsage::default(),
                        updates: vec![AllocUpdate {
                            alloc: a.id.clone(),
                            state: to,
                            exit_code: None,
                            signal: None,
                            message: None,
                            at_unix_ms: 1,
                        }],
                    },
                    &Principal::Anyone,
                )
                .await
                .expect("heartbeat");
        }
    }
}

fn count(tasks: &[TaskView], state: TaskState) -> usize {
    tasks.iter().filter(|t| t.state == state).count()
}

#[test]
fn every_example_job_is_a_valid_spec_named_as_its_comment_says() {
    let mut names = BTreeMap::new();
    for entry in std::fs::read_dir(examples_dir()).expect("config/jobs exists") {
        let path = entry.expect("dir entry").path();
        let text = std::fs::read_to_string(&path).expect("read example");
        let spec = JobSpec::parse_yaml(&text)
            .unwrap_or_else(|e| panic!("{} is not a valid job: {e}", path.display()));
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        names.insert(file, spec.name.to_string());
    }
    // A new example must be added here and get a test below.
    let expected = BTreeMap::from(
        [
            ("gpu.yaml", "train"),
            ("hello.yaml", "hello"),
            ("preempt-high.yaml", "urgent"),
            ("preempt-low.yaml", "backfill"),
            ("shards.yaml", "shards"),
            ("web.yaml", "web"),
        ]
        .map(|(f, n)| (f.to_string(), n.to_string())),
    );
    assert_eq!(names, expected);
}

#[tokio::test]
async fn the_hello_batch_job_places_both_tasks_on_one_dev_agent() {
    let dev = Dev::with_agents(1).await;
    let job = dev.submit("hello.yaml").await;
    assert_eq!(job.total(), 2);
    assert_eq!(dev.schedule().await, 2);
    let tasks = dev.tasks("hello").await;
    assert_eq!(count(&tasks, TaskState::Assigned), 2, "{tasks:?}");
}

#[tokio::test]
async fn the_web_service_spreads_three_tasks_over_three_dev_agents() {
    let dev = Dev::with_agents(3).await;
    let job = dev.submit("web.yaml").await;
    assert_eq!(job.policy, "least-loaded");
    assert_eq!(dev.schedule().await, 3);
    let nodes: std::collections::BTreeSet<String> = dev
        .tasks("web")
        .await
        .iter()
        .filter_map(|t| t.latest().map(|a| a.node.to_string()))
        .collect();
    assert_eq!(nodes.len(), 3, "least-loaded spreads: {nodes:?}");
}

#[tokio::test]
async fn the_gpu_job_gets_a_dev_agents_fake_gpu() {
    let dev = Dev::with_agents(1).await;
    dev.submit("gpu.yaml").await;
    assert_eq!(dev.schedule().await, 1);
    let tasks = dev.tasks("train").await;
    let alloc = tasks[0].latest().expect("placed");
    assert_eq!(alloc.gpus, vec![0]);
}

#[tokio::test]
async fn the_sharded_job_starts_at_most_six_of_twenty_shards_at_once() {
    let dev = Dev::with_agents(3).await;
    let job = dev.submit("shards.yaml").await;
    assert_eq!(job.total(), 20);
    let placed = dev.schedule().await;
    assert!((2..=6).contains(&placed), "placed {placed}");
    let tasks = dev.tasks("shards").await;
    assert_eq!(count(&tasks, TaskState::Assigned), placed);
}

#[tokio::test]
async fn the_high_priority_example_preempts_the_low_priority_one_which_is_requeued() {
    let dev = Dev::with_agents(2).await;
    dev.submit("preempt-low.yaml").await;
    assert_eq!(dev.schedule().await, 2, "backfill takes both fake GPUs");
    dev.report_running("backfill").await;
    dev.submit("preempt-high.yaml").await;
    // One pass evicts the backfill tasks and reserves their GPUs for
    // urgent, which starts only once the evicted processes have exited.
    for _ in 0..3 {
        dev.schedule().await;
    }
    let urgent = dev.tasks("urgent").await;
    assert_eq!(count(&urgent, TaskState::Pending), 2, "{urgent:?}");
    for t in &urgent {
        let waiting = t.waiting.as_deref().unwrap_or_default();
        assert!(waiting.contains("waiting for 1 stopping alloc"), "{t:?}");
    }
    let backfill = dev.tasks("backfill").await;
    assert_eq!(count(&backfill, TaskState::Stopping), 2, "{backfill:?}");
    dev.report_stopped("backfill").await;
    dev.schedule().await;
    let urgent = dev.tasks("urgent").await;
    assert_eq!(count(&urgent, TaskState::Assigned), 2, "{urgent:?}");
    let backfill = dev.tasks("backfill").await;
    assert_eq!(count(&backfill, TaskState::Pending), 2, "{backfill:?}");
    for t in &backfill {
        assert!(
            t.history
                .iter()
                .any(|h| h.reason.contains("preempted by urgent/")),
            "{t:?}"
        );
    }
}
