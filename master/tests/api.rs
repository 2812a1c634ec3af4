//! The master's REST API and agent protocol (DESIGN §5, §6), end to end
//! through `http::routes` with `warp::test`, plus what only a real store
//! and a real socket show: bad input never reaches the store, a restarted
//! master recovers everything, and a real server takes a burst of
//! concurrent submissions without losing one.
//!
//! No background loops run in the handler tests: where tasks must be placed
//! the test calls `Master::schedule_pass` itself.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use drover_api::protocol::{
    AllocUpdate, Assignment, Desired, GpuDevice, HeartbeatRequest, NodeDescriptor, NodeResources,
    NodeUsage, Offer, PollRequest, PollResponse, RegisterRequest, Reserved, PROTOCOL_VERSION,
};
use drover_api::routes::{label, Access, Body, Route, RouteId, ROUTES};
use drover_api::{AllocId, AllocState, NodeId};
use drover_master::auth::{Auth, Role};
use drover_master::clock::Clock;
use drover_master::core::{Master, Settings};
use drover_master::http::{front_routes, routes};
use drover_master::metrics::Metrics;
use drover_master::role::{Front, Limits, Serving};
use drover_master::store::{Batch, EmbeddedStore, Snapshot, Store, StoreError};
use serde::Serialize;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::reply::Response;
use warp::test::RequestBuilder;
use warp::Filter;

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// The address the master under test advertises as leader.
const LEADER: &str = "10.1.2.3:7070";

const READER_TOKEN: &str = "reader-token-0123456789";
const SUBMITTER_TOKEN: &str = "submitter-token-0123456789";
const ADMIN_TOKEN: &str = "admin-token-0123456789";
const JOIN_TOKEN: &str = "agent-join-token-0123456789";
const OTHER_SUBMITTER_TOKEN: &str = "other-submitter-token-0123456789";

/// The embedded store, with a switch that makes every commit fail as an
/// unreachable store would (`StoreError::Unavailable`, nothing written).
#[derive(Debug)]
struct SwitchableStore {
    inner: EmbeddedStore,
    failing: Arc<AtomicBool>,
    gate: Arc<Gate>,
}

/// Holds commits at the door while a test keeps it shut, counting those
/// that arrived.
#[derive(Debug, Default)]
struct Gate {
    door: tokio::sync::RwLock<()>,
    arrived: AtomicUsize,
}

#[async_trait]
impl Store for SwitchableStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load().await
    }

    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.gate.arrived.fetch_add(1, Ordering::SeqCst);
        drop(self.gate.door.read().await);
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "switched off by the test".to_string(),
            ));
        }
        self.inner.commit(batch).await
    }

    async fn size_bytes(&self) -> Option<u64> {
        self.inner.size_bytes().await
    }

    async fn compact(&self) -> Result<bool, StoreError> {
        self.inner.compact().await
    }
}

/// A master on an embedded store in a temp dir, and its routes.
struct Harness {
    dir: TempDir,
    master: Arc<Master>,
    auth: Arc<Auth>,
    store_failing: Arc<AtomicBool>,
    store_gate: Arc<Gate>,
}

async fn open_master(
    dir: &Path,
    settings: Settings,
    failing: Arc<AtomicBool>,
    gate: Arc<Gate>,
) -> Arc<Master> {
    let inner = EmbeddedStore::open(dir).unwrap_or_else(|e| panic!("open the store: {e}"));
    let store = Arc::new(SwitchableStore {
        inner,
        failing,
        gate,
    });
    Master::open(settings, store, Clock::system())
        .await
        .unwrap_or_else(|e| panic!("open the master: {e}"))
}

impl Harness {
    async fn new() -> Harness {
        Harness::with(Settings::default(), Auth::disabled()).await
    }

    async fn with_settings(settings: Settings) -> Harness {
        Harness::with(settings, Auth::disabled()).await
    }

    async fn with_tokens() -> Harness {
        let auth = Auth::new([
            ("dash".to_string(), Role::Reader, READER_TOKEN.to_string()),
            (
                "ci".to_string(),
                Role::Submitter,
                SUBMITTER_TOKEN.to_string(),
            ),
            ("ops".to_string(), Role::Admin, ADMIN_TOKEN.to_string()),
            ("join".to_string(), Role::Agent, JOIN_TOKEN.to_string()),
            (
                "other".to_string(),
                Role::Submitter,
                OTHER_SUBMITTER_TOKEN.to_string(),
            ),
        ]);
        Harness::with(Settings::default(), auth).await
    }

    async fn with(settings: Settings, auth: Auth) -> Harness {
        let dir = tempfile::tempdir().expect("create a temp dir");
        let failing = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(Gate::default());
        let master = open_master(
            dir.path(),
            settings,
            Arc::clone(&failing),
            Arc::clone(&gate),
        )
        .await;
        Harness {
            dir,
            master,
            auth: Arc::new(auth),
            store_failing: failing,
            store_gate: gate,
        }
    }

    /// Drops the master (and with it the store, releasing the redb file)
    /// and opens a new one on the same data dir.
    async fn restart(self) -> Harness {
        let settings = self.master.settings.clone();
        let Harness {
            dir,
            master,
            auth,
            store_failing,
            store_gate,
        } = self;
        release(master);
        let master = open_master(
            dir.path(),
            settings,
            Arc::clone(&store_failing),
            Arc::clone(&store_gate),
        )
        .await;
        Harness {
            dir,
            master,
            auth,
            store_failing,
            store_gate,
        }
    }

    /// Drops the master and reads what the store holds.
    async fn shut_down_and_load(self) -> Snapshot {
        let Harness { dir, master, .. } = self;
        release(master);
        load_store(dir.path()).await
    }

    fn api(&self) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + 'static {
        routes(
            Arc::clone(&self.master),
            Arc::clone(&self.auth),
            LEADER.to_string(),
        )
    }

    async fn send(&self, req: RequestBuilder) -> Resp {
        Resp::from(req.reply(&self.api()).await)
    }

    async fn get(&self, path: &str) -> Resp {
        self.send(warp::test::request().method("GET").path(path))
            .await
    }

    async fn delete(&self, path: &str) -> Resp {
        self.send(warp::test::request().method("DELETE").path(path))
            .await
    }

    async fn post_json(&self, path: &str, body: &impl Serialize) -> Resp {
        let body = serde_json::to_vec(body).expect("serialize a request body");
        self.send(post(path, "application/json", body)).await
    }

    async fn submit(&self, spec: &Value) -> Resp {
        self.post_json("/v1/jobs", spec).await
    }

    /// Submits and expects a new job.
    async fn create(&self, spec: &Value) {
        self.submit(spec).await.expect(201);
    }

    async fn register(&self, req: &RegisterRequest) -> Resp {
        self.post_json("/v1/agent/register", req).await
    }

    /// Registers a node with 4 CPUs and 8 GiB and expects it to succeed.
    async fn add_node(&self, id: &str) {
        self.register(&node(id)).await.expect(200);
    }

    async fn report(&self, node_id: &str, updates: Vec<AllocUpdate>) -> Resp {
        self.post_json("/v1/agent/heartbeat", &heartbeat(node_id, updates))
            .await
    }

    /// Reports one alloc's new state from its node and expects a 200.
    async fn report_one(&self, node_id: &str, alloc: &str, state: AllocState, exit: Option<i32>) {
        let r = self
            .report(node_id, vec![update(alloc, state, exit)])
            .await
            .expect(200);
        assert_eq!(r["reregister"], false, "{r}");
    }

    async fn poll(&self, node_id: &str, known_version: u64) -> PollResponse {
        self.poll_with(node_id, known_version, false).await
    }

    async fn poll_with(&self, node_id: &str, known_version: u64, delta: bool) -> PollResponse {
        let req = PollRequest {
            node_id: node_id_of(node_id),
            known_version,
            delta,
        };
        let v = self.post_json("/v1/agent/poll", &req).await.expect(200);
        serde_json::from_value(v).expect("a poll response")
    }

    async fn schedule(&self) -> usize {
        self.master
            .schedule_pass()
            .await
            .unwrap_or_else(|e| panic!("scheduling pass: {e}"))
    }

    /// The node an alloc was placed on.
    async fn node_of(&self, alloc: &str) -> String {
        let a = self.get(&format!("/v1/allocs/{alloc}")).await.expect(200);
        a["node"].as_str().expect("node").to_string()
    }
}

/// Drops the last handle to a master; a handle left anywhere would keep the
/// store's file locked.
fn release(master: Arc<Master>) {
    match Arc::try_unwrap(master) {
        Ok(m) => drop(m),
        Err(m) => panic!(
            "the master is still shared ({} handles), so its store stays open",
            Arc::strong_count(&m)
        ),
    }
}

async fn load_store(dir: &Path) -> Snapshot {
    let store = EmbeddedStore::open(dir).unwrap_or_else(|e| panic!("reopen the store: {e}"));
    store
        .load()
        .await
        .unwrap_or_else(|e| panic!("load the store: {e}"))
}

fn keys_under<'a>(snapshot: &'a Snapshot, prefix: &str) -> Vec<&'a str> {
    snapshot
        .keys()
        .filter(|k| k.starts_with(prefix))
        .map(String::as_str)
        .collect()
}

fn post(path: &str, content_type: &str, body: impl AsRef<[u8]>) -> RequestBuilder {
    warp::test::request()
        .method("POST")
        .path(path)
        .header("content-type", content_type)
        .body(body)
}

/// A response, read whole.
#[derive(Debug)]
struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl From<warp::http::Response<bytes::Bytes>> for Resp {
    fn from(r: warp::http::Response<bytes::Bytes>) -> Resp {
        let (parts, body) = r.into_parts();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body: body.to_vec(),
        }
    }
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    fn expect(self, status: u16) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        self.json()
    }

    /// Asserts the status and the error shape `{"error": {"code", "message"}}`
    /// with a JSON content type; returns the `error` object.
    #[track_caller]
    fn expect_error(self, status: u16, code: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_json_error(&self, code)
    }
}

#[track_caller]
fn assert_json_error(r: &Resp, code: &str) -> Value {
    let ctype = r.header("content-type").unwrap_or_default();
    assert!(
        ctype.starts_with("application/json"),
        "content type {ctype:?} for {}",
        r.text()
    );
    let body = r.json();
    let err = body
        .get("error")
        .unwrap_or_else(|| panic!("no \"error\" object: {body}"));
    assert_eq!(err["code"], code, "{body}");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "an error needs a message: {body}");
    err.clone()
}

// ---- request builders ----

/// A batch job of `count` tasks needing 500m CPU and 256 MiB each.
fn spec(name: &str, count: u32) -> Value {
    json!({
        "name": name,
        "command": ["/bin/true"],
        "count": count,
        "resources": {"cpu": "500m", "memory": "256Mi"},
    })
}

/// `spec` with extra top-level fields.
fn spec_with(name: &str, count: u32, extra: Value) -> Value {
    let mut s = spec(name, count);
    let (Value::Object(base), Value::Object(extra)) = (&mut s, extra) else {
        panic!("specs are objects");
    };
    base.extend(extra);
    s
}

fn node_id_of(id: &str) -> NodeId {
    NodeId::new(id).expect("a valid node id")
}

/// A node with 4 CPUs and 8 GiB, no GPUs, registering under its own id.
fn node(id: &str) -> RegisterRequest {
    RegisterRequest {
        node_id: Some(node_id_of(id)),
        desc: NodeDescriptor {
            hostname: format!("{id}.example"),
            log_addr: format!("{id}.example:7071"),
            resources: NodeResources {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
                gpus: Vec::new(),
            },
            reserved: Reserved::default(),
            labels: BTreeMap::new(),
            attributes: BTreeMap::new(),
            version: "0.1.0-test".to_string(),
        },
        protocol: PROTOCOL_VERSION,
        running_allocs: Vec::new(),
    }
}

fn alloc_id(s: &str) -> AllocId {
    s.parse().expect("a valid alloc id")
}

fn update(alloc: &str, state: AllocState, exit_code: Option<i32>) -> AllocUpdate {
    AllocUpdate {
        alloc: alloc_id(alloc),
        state,
        exit_code,
        signal: None,
        message: None,
        at_unix_ms: 1,
    }
}

fn heartbeat(node_id: &str, updates: Vec<AllocUpdate>) -> HeartbeatRequest {
    HeartbeatRequest {
        node_id: node_id_of(node_id),
        offer: Offer::default(),
        usage: NodeUsage::default(),
        updates,
    }
}

fn states_of(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|t| t["state"].as_str().expect("a state").to_string())
        .collect()
}

fn ids_of(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a list")
        .iter()
        .map(|t| t["id"].as_str().expect("an id").to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// POST /v1/jobs
// ---------------------------------------------------------------------------

#[tokio::test]
async fn submitting_a_new_json_job_answers_201_created_at_version_1_with_pending_tasks() {
    let h = Harness::new().await;
    let v = h.submit(&spec("render", 3)).await.expect(201);
    assert_eq!(v["id"], "render");
    assert_eq!(v["outcome"], "created");
    assert_eq!(v["version"], 1);
    assert_eq!(v["state"], "pending");
    assert_eq!(v["tasks"]["pending"], 3, "{v}");
    let tasks = h.get("/v1/jobs/render/tasks").await.expect(200);
    assert_eq!(ids_of(&tasks), ["render/0", "render/1", "render/2"]);
}

#[tokio::test]
async fn resubmitting_the_same_spec_answers_200_unchanged_and_keeps_version_1() {
    let h = Harness::new().await;
    h.create(&spec("render", 2)).await;
    let v = h.submit(&spec("render", 2)).await.expect(200);
    assert_eq!(v["outcome"], "unchanged");
    assert_eq!(v["version"], 1);
    // The same document in YAML is the same spec.
    let yaml =
        "name: render\ncommand: [/bin/true]\ncount: 2\nresources: {cpu: 500m, memory: 256Mi}\n";
    let v = h
        .send(post("/v1/jobs", "application/yaml", yaml))
        .await
        .expect(200);
    assert_eq!(v["outcome"], "unchanged", "{v}");
}

#[tokio::test]
async fn submitting_a_changed_spec_answers_200_updated_at_version_2_and_replaces_the_tasks() {
    let h = Harness::new().await;
    h.create(&spec("render", 3)).await;
    h.add_node("n1").await;
    assert_eq!(h.schedule().await, 3);

    let v = h.submit(&spec("render", 2)).await.expect(200);
    assert_eq!(v["outcome"], "updated");
    assert_eq!(v["version"], 2);

    // The version-1 attempts are stopping: they hold n1 until they exit,
    // and the version-2 tasks wait for them.
    let tasks = h.get("/v1/jobs/render/tasks").await.expect(200);
    assert_eq!(ids_of(&tasks), ["render/0", "render/1", "render/2"]);
    for t in tasks.as_array().unwrap() {
        assert_eq!(t["state"], "stopping", "{t}");
    }
    assert_eq!(h.schedule().await, 0, "no attempt 2 while attempt 1 runs");
    for a in ["render/0/1", "render/1/1", "render/2/1"] {
        h.report_one("n1", a, AllocState::Killed, None).await;
    }
    let tasks = h.get("/v1/jobs/render/tasks").await.expect(200);
    assert_eq!(ids_of(&tasks), ["render/0", "render/1"], "{tasks}");
    for t in tasks.as_array().unwrap() {
        assert_eq!(t["state"], "pending", "{t}");
        assert_eq!(t["job_version"], 2, "{t}");
    }
    // The version-1 attempts were ended, not left running.
    for a in ["render/0/1", "render/1/1", "render/2/1"] {
        let alloc = h.get(&format!("/v1/allocs/{a}")).await.expect(200);
        assert_eq!(alloc["state"], "killed", "{alloc}");
    }
    h.get("/v1/tasks/render/2")
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn a_yaml_spec_sent_as_application_yaml_is_accepted_with_201() {
    let h = Harness::new().await;
    let yaml = "\
name: train
type: batch
priority: 70
count: 2
command: [\"/usr/bin/train\", \"--epochs\", \"3\"]
env: { QUALITY: high }
resources: { cpu: 1, memory: 1Gi }
restart: { attempts: 1, delay: 2s }
";
    let v = h
        .send(post("/v1/jobs", "application/yaml", yaml))
        .await
        .expect(201);
    assert_eq!(v["id"], "train");
    assert_eq!(v["priority"], 70);
    let job = h.get("/v1/jobs/train").await.expect(200);
    assert_eq!(
        job["spec"]["command"],
        json!(["/usr/bin/train", "--epochs", "3"])
    );
    assert_eq!(job["spec"]["env"]["QUALITY"], "high");
    assert_eq!(job["tasks"]["pending"], 2, "{job}");
}

// ---------------------------------------------------------------------------
// POST /v1/jobs/plan
// ---------------------------------------------------------------------------

#[tokio::test]
async fn plan_places_each_task_on_a_registered_node_that_fits() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    let v = h
        .post_json("/v1/jobs/plan", &spec("render", 2))
        .await
        .expect(200);
    let placements = v["placements"].as_array().expect("placements");
    let placed: BTreeSet<_> = placements
        .iter()
        .map(|p| p["task"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        placed,
        BTreeSet::from(["render/0".to_string(), "render/1".to_string()]),
        "{v}"
    );
    assert!(placements.iter().all(|p| p["node"] == "n1"), "{v}");
    assert_eq!(v["waiting"], json!([]), "{v}");
}

#[tokio::test]
async fn plan_says_per_node_why_a_task_that_fits_nowhere_would_wait() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.add_node("n2").await;
    let big = json!({
        "name": "huge",
        "command": ["/bin/true"],
        "resources": {"cpu": "1", "memory": "64Gi"},
    });
    let v = h.post_json("/v1/jobs/plan", &big).await.expect(200);
    assert_eq!(v["placements"], json!([]), "{v}");
    let waiting = v["waiting"].as_array().expect("waiting");
    assert_eq!(waiting.len(), 1, "{v}");
    assert_eq!(waiting[0]["task"], "huge/0");
    let reason = waiting[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("2 nodes") && reason.contains("memory"),
        "{reason}"
    );
    // With one node busy and one draining, each gets its own reason.
    h.create(&spec_with(
        "filler",
        1,
        json!({"resources": {"cpu": "4", "memory": "1Gi"}}),
    ))
    .await;
    assert_eq!(h.schedule().await, 1);
    let busy = h.node_of("filler/0/1").await;
    let other = if busy == "n1" { "n2" } else { "n1" };
    h.post_json(
        &format!("/v1/nodes/{other}/drain"),
        &json!({"enable": true}),
    )
    .await
    .expect(200);
    let v = h
        .post_json("/v1/jobs/plan", &spec("later", 1))
        .await
        .expect(200);
    assert_eq!(v["placements"], json!([]), "{v}");
    let reason = v["waiting"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("1 node: insufficient cpu") && reason.contains("1 node: draining"),
        "{v}"
    );
}

#[tokio::test]
async fn plan_writes_nothing_the_planned_job_does_not_exist_afterwards() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.post_json("/v1/jobs/plan", &spec("dry", 2))
        .await
        .expect(200);

    h.get("/v1/jobs/dry").await.expect_error(404, "not_found");
    assert_eq!(h.get("/v1/jobs").await.expect(200), json!([]));
    let c = h.get("/v1/cluster").await.expect(200);
    assert_eq!(c["queue_depth"], 0, "{c}");
    assert_eq!(c["allocated"]["cpu_millis"], 0, "{c}");
    // Nor in the store.
    let snapshot = h.shut_down_and_load().await;
    assert!(keys_under(&snapshot, "jobs/").is_empty(), "{snapshot:?}");
    assert!(keys_under(&snapshot, "tasks/").is_empty());
    assert!(keys_under(&snapshot, "allocs/").is_empty());
}

// ---------------------------------------------------------------------------
// GET /v1/jobs, GET /v1/jobs/{id}, DELETE /v1/jobs/{id}, tasks
// ---------------------------------------------------------------------------

#[tokio::test]
async fn listing_jobs_returns_every_job_and_filters_by_state() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.create(&spec("fits", 1)).await;
    h.create(&spec_with(
        "too-big",
        1,
        json!({"resources": {"cpu": "1", "memory": "64Gi"}}),
    ))
    .await;
    assert_eq!(h.schedule().await, 1);

    let all = h.get("/v1/jobs").await.expect(200);
    assert_eq!(ids_of(&all), ["fits", "too-big"]);
    let running = h.get("/v1/jobs?state=running").await.expect(200);
    assert_eq!(ids_of(&running), ["fits"], "{running}");
    let pending = h.get("/v1/jobs?state=pending").await.expect(200);
    assert_eq!(ids_of(&pending), ["too-big"], "{pending}");
    let complete = h.get("/v1/jobs?state=complete").await.expect(200);
    assert_eq!(complete, json!([]));
}

#[tokio::test]
async fn listing_jobs_by_a_state_that_does_not_exist_is_400() {
    let h = Harness::new().await;
    let err = h
        .get("/v1/jobs?state=bogus")
        .await
        .expect_error(400, "bad_request");
    assert!(err["message"].as_str().unwrap().contains("bogus"), "{err}");
    // An unknown query parameter is refused too, not silently ignored.
    h.get("/v1/jobs?status=running")
        .await
        .expect_error(400, "bad_request");
}

#[tokio::test]
async fn getting_a_job_shows_its_spec_policy_and_task_counts_by_state() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    // 3 x 2 CPUs on a 4-CPU node: two run, one waits.
    h.create(&spec_with(
        "render",
        3,
        json!({"resources": {"cpu": "2", "memory": "1Gi"}}),
    ))
    .await;
    assert_eq!(h.schedule().await, 2);
    let job = h.get("/v1/jobs/render").await.expect(200);
    assert_eq!(job["id"], "render");
    assert_eq!(job["state"], "running");
    assert_eq!(job["policy"], "least-loaded");
    assert_eq!(job["type"], "batch");
    assert_eq!(job["tasks"], json!({"pending": 1, "assigned": 2}), "{job}");
    assert_eq!(job["spec"]["name"], "render");
    assert_eq!(job["spec"]["count"], 3);
    // The task that waits says why.
    let t = h.get("/v1/tasks/render/2").await.expect(200);
    assert_eq!(t["state"], "pending");
    let waiting = t["waiting"].as_str().unwrap_or_default();
    assert!(waiting.contains("insufficient cpu"), "{t}");
}

#[tokio::test]
async fn a_pass_examines_what_fits_of_a_big_job_and_its_other_tasks_share_the_reason() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    // 3 CPUs each on a 4-CPU node: one fits; a pass looks at two of the
    // 1,000 (the one it places, and one to say why the rest wait).
    h.create(&spec_with(
        "wide",
        1000,
        json!({"resources": {"cpu": "3", "memory": "1Gi"}}),
    ))
    .await;
    h.create(&spec("small", 1)).await;
    // The later, smaller job is not held up behind the big one's queue.
    assert_eq!(h.schedule().await, 2);
    let small = h.get("/v1/tasks/small/0").await.expect(200);
    assert_eq!(small["state"], "assigned", "{small}");
    for index in [1, 999] {
        let t = h.get(&format!("/v1/tasks/wide/{index}")).await.expect(200);
        assert_eq!(t["state"], "pending");
        let waiting = t["waiting"].as_str().unwrap_or_default();
        assert!(waiting.contains("insufficient cpu"), "{t}");
    }
}

/// The value of one series (name and labels, as printed) in a `/metrics` text.
fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// `drover_schedule_examined_tasks_total` as the master reports it.
async fn examined(h: &Harness) -> u64 {
    let text = h.get("/metrics").await.text();
    let n = metric_value(&text, "drover_schedule_examined_tasks_total")
        .unwrap_or_else(|| panic!("no examined counter in:\n{text}"));
    n as u64
}

#[tokio::test]
async fn purging_a_large_job_compacts_the_store_and_its_size_is_a_metric() {
    let h = Harness::with_settings(Settings {
        compact_after_deletes: 500,
        ..Settings::default()
    })
    .await;
    // Nothing to run them on: the tasks wait, and only the store grows.
    for job in ["a", "b", "c"] {
        h.create(&spec(job, 400)).await;
    }
    let file = h.dir.path().join(drover_master::store::embedded::FILE_NAME);
    let full = std::fs::metadata(&file).expect("the store file").len();
    let text = h.get("/metrics").await.text();
    assert_eq!(
        metric_value(&text, "drover_store_compactions_total"),
        Some(0.0)
    );
    let reported = metric_value(&text, "drover_store_file_bytes").unwrap_or(0.0);
    assert!(reported > 0.0, "no store size in:\n{text}");

    // 401 deleted keys: not yet worth a compaction.
    h.delete("/v1/jobs/a?purge=true").await.expect(200);
    let text = h.get("/metrics").await.text();
    assert_eq!(
        metric_value(&text, "drover_store_compactions_total"),
        Some(0.0)
    );
    // 802: compacted before the purge is answered.
    h.delete("/v1/jobs/b?purge=true").await.expect(200);
    let text = h.get("/metrics").await.text();
    assert_eq!(
        metric_value(&text, "drover_store_compactions_total"),
        Some(1.0),
        "{text}"
    );
    let compacted = std::fs::metadata(&file).expect("the store file").len();
    assert!(
        compacted < full,
        "the store file did not shrink: {full} -> {compacted} bytes"
    );
    assert_eq!(
        metric_value(&text, "drover_store_file_bytes"),
        Some(compacted as f64),
        "{text}"
    );
    // What was not purged is all there, after a restart too.
    let h = h.restart().await;
    let c = h.get("/v1/jobs/c").await.expect(200);
    assert_eq!(c["tasks"]["pending"], 400, "{c}");
    h.get("/v1/jobs/a").await.expect(404);
}

#[tokio::test]
async fn a_pass_on_a_full_cluster_examines_one_task_per_waiting_job_until_room_frees() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    // 8 x 500m fill the 4-CPU node.
    h.create(&spec("full", 8)).await;
    assert_eq!(h.schedule().await, 8);
    let before = examined(&h).await;
    assert_eq!(before, 8);
    h.create(&spec("later", 1000)).await;
    assert_eq!(h.schedule().await, 0);
    // No free room: one task, whose reason stands for the other 999.
    assert_eq!(examined(&h).await - before, 1);
    let t = h.get("/v1/tasks/later/700").await.expect(200);
    let waiting = t["waiting"].as_str().unwrap_or_default();
    assert!(waiting.contains("insufficient cpu"), "{t}");
    // One task's room frees: the next pass looks at what fits, plus one.
    h.report_one("n1", "full/0/1", AllocState::Running, None)
        .await;
    h.report_one("n1", "full/0/1", AllocState::Succeeded, Some(0))
        .await;
    let before = examined(&h).await;
    assert_eq!(h.schedule().await, 1);
    assert_eq!(examined(&h).await - before, 2);
}

#[tokio::test]
async fn deleting_a_job_stops_it_and_kills_its_live_allocs() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.create(&spec("render", 2)).await;
    assert_eq!(h.schedule().await, 2);
    h.report_one("n1", "render/0/1", AllocState::Running, None)
        .await;

    let v = h.delete("/v1/jobs/render").await.expect(200);
    assert_eq!(v["state"], "stopped", "{v}");
    let job = h.get("/v1/jobs/render").await.expect(200);
    assert_eq!(job["state"], "stopped");
    assert_eq!(job["tasks"], json!({"stopping": 2}), "{job}");
    // The node is told to stop them, and holds them until they have exited.
    let stop: Vec<_> = h.poll("n1", 0).await.allocs;
    assert!(stop.iter().all(|a| a.stop) && stop.len() == 2, "{stop:?}");
    let n = h.get("/v1/nodes/n1").await.expect(200);
    assert_eq!(n["allocated"]["cpu_millis"], 1000, "{n}");
    for a in ["render/0/1", "render/1/1"] {
        h.report_one("n1", a, AllocState::Killed, None).await;
    }
    let job = h.get("/v1/jobs/render").await.expect(200);
    assert_eq!(job["tasks"], json!({"killed": 2}), "{job}");
    for a in ["render/0/1", "render/1/1"] {
        let alloc = h.get(&format!("/v1/allocs/{a}")).await.expect(200);
        assert_eq!(alloc["state"], "killed", "{alloc}");
    }
    // Nothing is left for the node to run.
    let n = h.get("/v1/nodes/n1").await.expect(200);
    assert_eq!(n["allocs"], json!([]), "{n}");
    assert_eq!(h.poll("n1", 0).await.allocs, vec![]);
    // And nothing is placed again.
    assert_eq!(h.schedule().await, 0);
}

#[tokio::test]
async fn deleting_a_job_with_purge_forgets_it_so_every_later_read_is_404() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.create(&spec("render", 1)).await;
    assert_eq!(h.schedule().await, 1);

    let v = h.delete("/v1/jobs/render?purge=true").await.expect(200);
    assert_eq!(v, json!({"id": "render", "purged": true}));
    h.get("/v1/jobs/render")
        .await
        .expect_error(404, "not_found");
    h.get("/v1/jobs/render/tasks")
        .await
        .expect_error(404, "not_found");
    h.get("/v1/tasks/render/0")
        .await
        .expect_error(404, "not_found");
    h.delete("/v1/jobs/render")
        .await
        .expect_error(404, "not_found");
    assert_eq!(h.get("/v1/jobs").await.expect(200), json!([]));
    // Its attempt is stopping: its node is told to stop it, and it keeps
    // its room there until its process has exited; then it is forgotten.
    let a = h.get("/v1/allocs/render/0/1").await.expect(200);
    assert_eq!(a["state"], "stopping", "{a}");
    let stop = h.poll("n1", 0).await.allocs;
    assert!(stop.len() == 1 && stop[0].stop, "{stop:?}");
    let n = h.get("/v1/nodes/n1").await.expect(200);
    assert_eq!(n["allocated"]["cpu_millis"], 500, "{n}");
    h.report_one("n1", "render/0/1", AllocState::Killed, None)
        .await;
    h.get("/v1/allocs/render/0/1")
        .await
        .expect_error(404, "not_found");
    assert_eq!(h.poll("n1", 0).await.allocs, vec![]);
    assert_eq!(h.get("/v1/nodes/n1").await.expect(200)["allocs"], json!([]));
    let snapshot = h.shut_down_and_load().await;
    let left: Vec<_> = snapshot.keys().filter(|k| k.contains("render")).collect();
    assert!(left.is_empty(), "purged keys still stored: {left:?}");
}

#[tokio::test]
async fn a_jobs_tasks_are_listed_in_index_order_with_their_states() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.create(&spec("render", 3)).await;
    assert_eq!(h.schedule().await, 3);
    h.report_one("n1", "render/1/1", AllocState::Running, None)
        .await;
    let tasks = h.get("/v1/jobs/render/tasks").await.expect(200);
    assert_eq!(ids_of(&tasks), ["render/0", "render/1", "render/2"]);
    assert_eq!(states_of(&tasks), ["assigned", "running", "assigned"]);
    assert_eq!(tasks[1]["attempts"][0]["id"], "render/1/1", "{tasks}");
}

#[tokio::test]
async fn a_task_shows_the_history_of_its_attempts() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.create(&spec_with(
        "flaky",
        1,
        json!({"restart": {"attempts": 2, "delay": "0s"}}),
    ))
    .await;
    assert_eq!(h.schedule().await, 1);
    h.report_one("n1", "flaky/0/1", AllocState::Running, None)
        .await;
    h.report_one("n1", "flaky/0/1", AllocState::Failed, Some(3))
        .await;
    assert_eq!(h.schedule().await, 1, "the restart is placed");

    let t = h.get("/v1/tasks/flaky/0").await.expect(200);
    assert_eq!(t["id"], "flaky/0");
    assert_eq!(t["state"], "assigned");
    assert_eq!(t["restarts"], 1);
    let attempts = t["attempts"].as_array().expect("attempts");
    assert_eq!(ids_of(&t["attempts"]), ["flaky/0/1", "flaky/0/2"], "{t}");
    assert_eq!(attempts[0]["state"], "failed");
    assert_eq!(attempts[0]["exit_code"], 3);
    assert_eq!(attempts[0]["node"], "n1");
    assert_eq!(attempts[1]["state"], "assigned");
    assert_eq!(
        states_of(&t["history"]),
        ["pending", "assigned", "running", "pending", "assigned"],
        "{t}"
    );
    let reasons: Vec<&str> = t["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons[0], "submitted");
    assert!(reasons[1].contains("n1"), "{reasons:?}");
    assert!(reasons[3].contains("exit code 3"), "{reasons:?}");
    let times: Vec<u64> = t["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["at_unix_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(times[0] > 1_600_000_000_000, "wall-clock times: {times:?}");
}

#[tokio::test]
async fn task_logs_are_404_before_the_task_ran_and_name_a_bad_stream_after() {
    let h = Harness::new().await;
    h.create(&spec("render", 1)).await;
    h.get("/v1/tasks/render/0/logs")
        .await
        .expect_error(404, "not_found");
    h.add_node("n1").await;
    assert_eq!(h.schedule().await, 1);
    // Proxying itself is tested against a log server in tests/logs.rs.
    h.get("/v1/tasks/render/0/logs?stream=stdin")
        .await
        .expect_error(400, "bad_request");
}

#[tokio::test]
async fn an_alloc_is_shown_by_job_index_and_attempt() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.create(&spec("render", 1)).await;
    assert_eq!(h.schedule().await, 1);
    let a = h.get("/v1/allocs/render/0/1").await.expect(200);
    assert_eq!(a["id"], "render/0/1");
    assert_eq!(a["node"], "n1");
    assert_eq!(a["state"], "assigned");
    assert_eq!(a["cpu_millis"], 500);
    assert_eq!(a["memory_bytes"], 256u64 << 20);
    assert_eq!(a["priority"], 50);
    assert_eq!(states_of(&a["history"]), ["assigned"]);
    h.get("/v1/allocs/render/0/2")
        .await
        .expect_error(404, "not_found");
}

// ---------------------------------------------------------------------------
// Nodes, cluster, leader, health
// ---------------------------------------------------------------------------

#[tokio::test]
async fn nodes_are_listed_with_state_capacity_allocated_and_allocs() {
    let h = Harness::new().await;
    let mut n1 = node("n1");
    n1.desc.reserved = Reserved {
        cpu_millis: 500,
        memory_bytes: 1 << 30,
    };
    n1.desc.labels.insert("zone".to_string(), "a".to_string());
    h.register(&n1).await.expect(200);
    h.add_node("n2").await;
    h.create(&spec_with(
        "render",
        1,
        json!({"constraints": {"labels": {"zone": "a"}}}),
    ))
    .await;
    assert_eq!(h.schedule().await, 1);

    let nodes = h.get("/v1/nodes").await.expect(200);
    assert_eq!(ids_of(&nodes), ["n1", "n2"]);
    let n = &nodes[0];
    assert_eq!(n["state"], "ready");
    assert_eq!(n["hostname"], "n1.example");
    assert_eq!(n["labels"], json!({"zone": "a"}));
    assert_eq!(n["allocatable"]["cpu_millis"], 3500, "{n}");
    assert_eq!(n["allocatable"]["memory_bytes"], 7u64 << 30, "{n}");
    assert_eq!(n["allocated"]["cpu_millis"], 500, "{n}");
    assert_eq!(n["allocs"], json!(["render/0/1"]));
    assert_eq!(nodes[1]["allocs"], json!([]));
}

#[tokio::test]
async fn a_node_is_shown_by_id() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    let n = h.get("/v1/nodes/n1").await.expect(200);
    assert_eq!(n["id"], "n1");
    assert_eq!(n["state"], "ready");
    assert_eq!(n["resources"]["cpu_millis"], 4000);
    assert_eq!(n["version"], "0.1.0-test");
    h.get("/v1/nodes/n9").await.expect_error(404, "not_found");
}

#[tokio::test]
async fn draining_a_node_with_a_deadline_marks_it_draining_and_keeps_new_work_off_it() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    let n = h
        .post_json(
            "/v1/nodes/n1/drain",
            &json!({"enable": true, "deadline": "5m"}),
        )
        .await
        .expect(200);
    assert_eq!(n["state"], "draining", "{n}");
    let started = n["drain"]["started_at_ms"].as_u64().expect("drain start");
    let deadline = n["drain"]["deadline_ms"].as_u64().expect("drain deadline");
    assert_eq!(deadline - started, 300_000);

    h.create(&spec("render", 1)).await;
    assert_eq!(
        h.schedule().await,
        0,
        "nothing is placed on a draining node"
    );

    let n = h
        .post_json("/v1/nodes/n1/drain", &json!({"enable": false}))
        .await
        .expect(200);
    assert_eq!(n["state"], "ready", "{n}");
    assert_eq!(h.schedule().await, 1);
}

#[tokio::test]
async fn a_drain_deadline_that_is_not_a_duration_is_400() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    let err = h
        .post_json(
            "/v1/nodes/n1/drain",
            &json!({"enable": true, "deadline": "soon"}),
        )
        .await
        .expect_error(400, "bad_request");
    assert!(err["message"].as_str().unwrap().contains("soon"), "{err}");
    let n = h.get("/v1/nodes/n1").await.expect(200);
    assert_eq!(n["state"], "ready", "a refused drain changes nothing");
}

#[tokio::test]
async fn draining_an_unknown_node_is_404() {
    let h = Harness::new().await;
    h.post_json("/v1/nodes/ghost/drain", &json!({"enable": true}))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn the_cluster_summary_counts_nodes_jobs_and_tasks_and_names_leader_and_backend() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.add_node("n2").await;
    h.post_json("/v1/nodes/n2/drain", &json!({"enable": true}))
        .await
        .expect(200);
    h.create(&spec("render", 3)).await;
    h.create(&spec_with(
        "huge",
        1,
        json!({"resources": {"cpu": "1", "memory": "64Gi"}}),
    ))
    .await;
    assert_eq!(h.schedule().await, 3);

    let c = h.get("/v1/cluster").await.expect(200);
    assert_eq!(c["leader"], LEADER);
    assert_eq!(c["store_backend"], "embedded");
    assert_eq!(c["nodes"]["ready"], 1, "{c}");
    assert_eq!(c["nodes"]["draining"], 1, "{c}");
    assert_eq!(c["jobs"]["running"], 1, "{c}");
    assert_eq!(c["jobs"]["pending"], 1, "{c}");
    assert_eq!(c["tasks"]["assigned"], 3, "{c}");
    assert_eq!(c["tasks"]["pending"], 1, "{c}");
    assert_eq!(c["queue_depth"], 1, "{c}");
    assert_eq!(c["capacity"]["cpu_millis"], 8000, "{c}");
    assert_eq!(c["allocated"]["cpu_millis"], 1500, "{c}");
    assert_eq!(c["allocated"]["memory_bytes"], 768u64 << 20, "{c}");
}

#[tokio::test]
async fn the_leader_status_names_the_advertised_address() {
    let h = Harness::new().await;
    let v = h.get("/v1/status/leader").await.expect(200);
    assert_eq!(v, json!({"leader": LEADER}));
}

#[tokio::test]
async fn healthz_and_readyz_answer_200() {
    let h = Harness::with_tokens().await;
    // Probes carry no token.
    let v = h.get("/healthz").await.expect(200);
    assert_eq!(v["status"], "ok");
    let v = h.get("/readyz").await.expect(200);
    assert_eq!(v["ready"], true);
}

// ---------------------------------------------------------------------------
// Agent protocol
// ---------------------------------------------------------------------------

#[tokio::test]
async fn registering_answers_the_node_id_and_interval_and_which_running_allocs_to_kill() {
    let h = Harness::new().await;
    let mut req = node("n1");
    req.node_id = None;
    req.desc.hostname = "gpu box 7".to_string();
    let v = h.register(&req).await.expect(200);
    let id = v["node_id"].as_str().expect("an id chosen by the master");
    assert_eq!(id, "gpu-box-7", "derived from the hostname");
    assert_eq!(v["heartbeat_interval_ms"], 1000);
    h.get(&format!("/v1/nodes/{id}")).await.expect(200);

    // A node coming back with an alloc the master never gave it is told to
    // kill it; one it still wants is kept.
    h.add_node("n2").await;
    h.create(&spec("render", 1)).await;
    // Only n2 may take it: the other node is drained.
    h.post_json(&format!("/v1/nodes/{id}/drain"), &json!({"enable": true}))
        .await
        .expect(200);
    assert_eq!(h.schedule().await, 1);
    assert_eq!(h.node_of("render/0/1").await, "n2");
    let mut again = node("n2");
    again.running_allocs = vec![alloc_id("render/0/1"), alloc_id("old/0/4")];
    let v = h.register(&again).await.expect(200);
    assert_eq!(v["kill"], json!(["old/0/4"]), "{v}");
    assert_eq!(
        h.get("/v1/allocs/render/0/1").await.expect(200)["state"],
        "assigned"
    );
}

#[tokio::test]
async fn registering_with_another_protocol_version_is_400() {
    let h = Harness::new().await;
    let mut req = node("n1");
    req.protocol = PROTOCOL_VERSION + 1;
    h.register(&req)
        .await
        .expect_error(400, "protocol_mismatch");
    h.get("/v1/nodes/n1").await.expect_error(404, "not_found");
}

#[tokio::test]
async fn registering_a_known_node_id_from_another_hostname_is_409() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    let mut impostor = node("n1");
    impostor.desc.hostname = "elsewhere.example".to_string();
    let err = h.register(&impostor).await.expect_error(409, "conflict");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("elsewhere.example"),
        "{err}"
    );
    let n = h.get("/v1/nodes/n1").await.expect(200);
    assert_eq!(
        n["hostname"], "n1.example",
        "the first node keeps its record"
    );
    // The same host registering again is fine.
    h.add_node("n1").await;
}

#[tokio::test]
async fn a_heartbeat_from_an_unknown_node_asks_it_to_reregister() {
    let h = Harness::new().await;
    let v = h.report("ghost", vec![]).await.expect(200);
    assert_eq!(v["reregister"], true, "{v}");
    assert_eq!(v["heartbeat_interval_ms"], 1000);
    let v = {
        h.add_node("n1").await;
        h.report("n1", vec![]).await.expect(200)
    };
    assert_eq!(v["reregister"], false, "{v}");
}

#[tokio::test]
async fn a_heartbeat_reporting_running_then_succeeded_moves_the_task_to_succeeded() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.create(&spec("render", 1)).await;
    assert_eq!(h.schedule().await, 1);

    h.report_one("n1", "render/0/1", AllocState::Running, None)
        .await;
    let t = h.get("/v1/tasks/render/0").await.expect(200);
    assert_eq!(t["state"], "running");
    assert_eq!(
        h.get("/v1/jobs/render").await.expect(200)["state"],
        "running"
    );

    h.report_one("n1", "render/0/1", AllocState::Succeeded, Some(0))
        .await;
    let t = h.get("/v1/tasks/render/0").await.expect(200);
    assert_eq!(t["state"], "succeeded", "{t}");
    let a = h.get("/v1/allocs/render/0/1").await.expect(200);
    assert_eq!(a["state"], "succeeded");
    assert_eq!(a["exit_code"], 0);
    assert_eq!(
        h.get("/v1/jobs/render").await.expect(200)["state"],
        "complete"
    );
    // The node is free again.
    let n = h.get("/v1/nodes/n1").await.expect(200);
    assert_eq!(n["allocated"]["cpu_millis"], 0, "{n}");
}

#[tokio::test]
async fn one_heartbeat_carrying_running_and_succeeded_applies_them_in_order() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.create(&spec("render", 1)).await;
    assert_eq!(h.schedule().await, 1);
    // A failure, so that the task restarts and keeps its whole history (a
    // finished task keeps only its first and last transitions).
    h.report(
        "n1",
        vec![
            update("render/0/1", AllocState::Running, None),
            update("render/0/1", AllocState::Failed, Some(1)),
        ],
    )
    .await
    .expect(200);
    let t = h.get("/v1/tasks/render/0").await.expect(200);
    assert_eq!(
        states_of(&t["history"]),
        ["pending", "assigned", "running", "pending"],
        "{t}"
    );
}

#[tokio::test]
async fn a_finished_task_keeps_its_first_and_last_transitions() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.create(&spec("render", 1)).await;
    assert_eq!(h.schedule().await, 1);
    h.report_one("n1", "render/0/1", AllocState::Running, None)
        .await;
    // While it runs, every transition is there.
    let t = h.get("/v1/tasks/render/0").await.expect(200);
    assert_eq!(
        states_of(&t["history"]),
        ["pending", "assigned", "running"],
        "{t}"
    );
    h.report_one("n1", "render/0/1", AllocState::Succeeded, Some(0))
        .await;
    let t = h.get("/v1/tasks/render/0").await.expect(200);
    assert_eq!(states_of(&t["history"]), ["pending", "succeeded"], "{t}");
    assert_eq!(t["history"][0]["reason"], "submitted", "{t}");
    assert_eq!(t["history"][1]["reason"], "exited 0", "{t}");
    // An attempt's history is short by nature, and says what its task's
    // no longer does.
    let a = &t["attempts"][0];
    assert_eq!(
        states_of(&a["history"]),
        ["assigned", "running", "succeeded"],
        "{a}"
    );
    assert_eq!(a["exit_code"], 0, "{a}");
    // What the store holds is as small: a restarted master shows the same.
    let t_before = t.clone();
    let h = h.restart().await;
    let t = h.get("/v1/tasks/render/0").await.expect(200);
    assert_eq!(t, t_before);
}

#[tokio::test]
async fn a_heartbeat_about_an_alloc_of_another_node_is_ignored() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.add_node("n2").await;
    h.create(&spec("render", 1)).await;
    assert_eq!(h.schedule().await, 1);
    let owner = h.node_of("render/0/1").await;
    let other = if owner == "n1" { "n2" } else { "n1" };

    h.report_one(other, "render/0/1", AllocState::Running, None)
        .await;
    h.report_one(other, "render/0/1", AllocState::Failed, Some(1))
        .await;
    let a = h.get("/v1/allocs/render/0/1").await.expect(200);
    assert_eq!(a["state"], "assigned", "{a}");
    assert_eq!(a.get("exit_code"), None, "{a}");
    let t = h.get("/v1/tasks/render/0").await.expect(200);
    assert_eq!(t["state"], "assigned", "{t}");
    // Reports about allocs nobody has are ignored as well.
    h.report_one(&owner, "nothing/0/1", AllocState::Running, None)
        .await;
    // While the owner's own report counts.
    h.report_one(&owner, "render/0/1", AllocState::Running, None)
        .await;
    assert_eq!(
        h.get("/v1/tasks/render/0").await.expect(200)["state"],
        "running"
    );
}

#[tokio::test]
async fn a_poll_returns_the_nodes_assignments_with_the_drover_environment() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    let before = h.poll("n1", 0).await;
    assert!(before.allocs.is_empty());

    h.create(&spec_with(
        "render",
        2,
        json!({"env": {"QUALITY": "high"}, "command": ["/usr/bin/render", "--fast"]}),
    ))
    .await;
    assert_eq!(h.schedule().await, 2);
    let r = h.poll("n1", before.version).await;
    assert!(
        r.version > before.version,
        "{} then {}",
        before.version,
        r.version
    );
    let ids: Vec<String> = r.allocs.iter().map(|a| a.alloc.to_string()).collect();
    assert_eq!(ids, ["render/0/1", "render/1/1"]);
    let a = &r.allocs[1];
    assert_eq!(a.command, ["/usr/bin/render", "--fast"]);
    assert_eq!(a.cpu_millis, 500);
    assert_eq!(a.memory_bytes, 256 << 20);
    assert_eq!(a.kill_timeout_ms, 5000);
    let env: Vec<(&str, &str)> = a
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("DROVER_ALLOC_ID", "render/1/1"),
            ("DROVER_ATTEMPT", "1"),
            ("DROVER_JOB", "render"),
            ("DROVER_TASK_ID", "render/1"),
            ("DROVER_TASK_INDEX", "1"),
            ("QUALITY", "high"),
        ]
    );
}

/// A node with two H100s as an agent fingerprints them.
fn gpu_node(id: &str) -> RegisterRequest {
    let mut req = node(id);
    req.desc.resources.gpus = (0..2)
        .map(|index| GpuDevice {
            index,
            uuid: format!("GPU-{index}"),
            model: "NVIDIA H100 80GB HBM3".to_string(),
            memory_bytes: 80 << 30,
        })
        .collect();
    req
}

#[tokio::test]
async fn gpu_tasks_get_distinct_devices_named_in_cuda_visible_devices() {
    let h = Harness::new().await;
    h.register(&gpu_node("g1")).await.expect(200);
    h.create(&spec_with(
        "train",
        2,
        json!({"resources": {"cpu": "1", "memory": "1Gi", "gpu": 1}}),
    ))
    .await;
    assert_eq!(h.schedule().await, 2);
    let r = h.poll("g1", 0).await;
    assert_eq!(r.allocs.len(), 2);
    let mut devices = BTreeSet::new();
    for a in &r.allocs {
        assert_eq!(a.gpus.len(), 1, "{a:?}");
        assert_eq!(
            a.env["CUDA_VISIBLE_DEVICES"],
            a.gpus[0].to_string(),
            "{a:?}"
        );
        devices.insert(a.gpus[0]);
    }
    assert_eq!(devices, BTreeSet::from([0, 1]));
    let c = h.get("/v1/cluster").await.expect(200);
    assert_eq!(c["allocated"]["gpus"], 2, "{c}");
}

#[tokio::test]
async fn a_gpu_model_constraint_matches_part_of_the_reported_model_name() {
    let h = Harness::new().await;
    h.register(&gpu_node("g1")).await.expect(200);
    let train = spec_with(
        "train",
        1,
        json!({"resources": {"cpu": "1", "memory": "1Gi", "gpu": 2}, "constraints": {"gpu_model": "H100"}}),
    );
    let plan = h.post_json("/v1/jobs/plan", &train).await.expect(200);
    assert_eq!(plan["waiting"], json!([]), "{plan}");
    h.create(&train).await;
    assert_eq!(h.schedule().await, 1);
    let r = h.poll("g1", 0).await;
    assert_eq!(r.allocs.len(), 1);
    assert_eq!(r.allocs[0].gpus, [0, 1]);
    assert_eq!(r.allocs[0].env["CUDA_VISIBLE_DEVICES"], "0,1");
}

fn alloc_ids(allocs: &[Assignment]) -> Vec<String> {
    allocs.iter().map(|a| a.alloc.to_string()).collect()
}

#[tokio::test]
async fn a_delta_poll_answers_what_changed_since_the_known_version_and_a_gap_the_whole_set() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.create(&spec("render", 3)).await;
    assert_eq!(h.schedule().await, 3);
    // Knowing nothing (version 0): the whole set, deltas asked for or not.
    let first = h.poll_with("n1", 0, true).await;
    assert!(first.full);
    assert_eq!(
        alloc_ids(&first.allocs),
        ["render/0/1", "render/1/1", "render/2/1"]
    );

    // One ends, one more is placed: only those two travel.
    h.report_one("n1", "render/1/1", AllocState::Succeeded, Some(0))
        .await;
    h.create(&spec("more", 1)).await;
    assert_eq!(h.schedule().await, 1);
    let delta = h.poll_with("n1", first.version, true).await;
    assert!(!delta.full, "{delta:?}");
    assert!(delta.version > first.version);
    assert_eq!(alloc_ids(&delta.allocs), ["more/0/1"]);
    assert_eq!(delta.removed, ["render/1/1".parse::<AllocId>().unwrap()]);
    // Applied to what the agent knew, it is the whole set the master holds.
    let mut desired = Desired::default();
    desired.apply(first.clone());
    desired.apply(delta.clone());
    let whole = h.poll_with("n1", 0, true).await;
    assert_eq!(desired.assignments(), whole.allocs);

    // A stop travels as a changed alloc, marked stop.
    h.delete("/v1/jobs/more").await.expect(200);
    let stop = h.poll_with("n1", delta.version, true).await;
    assert!(!stop.full);
    assert_eq!(alloc_ids(&stop.allocs), ["more/0/1"]);
    assert!(stop.allocs[0].stop);
    assert!(stop.removed.is_empty());

    // Without deltas, or from a version this master never gave (another
    // master's, or one too old to remember), the whole set.
    let plain = h.poll_with("n1", delta.version, false).await;
    assert!(plain.full);
    assert_eq!(plain.allocs.len(), 3, "{plain:?}");
    let foreign = h.poll_with("n1", 7, true).await;
    assert!(foreign.full);
    assert_eq!(alloc_ids(&foreign.allocs), alloc_ids(&plain.allocs));
}

#[tokio::test]
async fn a_poll_at_the_current_version_returns_as_soon_as_a_new_assignment_arrives() {
    let settings = Settings {
        poll_timeout: Duration::from_secs(30),
        ..Settings::default()
    };
    let h = Harness::with_settings(settings).await;
    h.add_node("n1").await;
    let current = h.poll("n1", 0).await.version;

    let api = h.api();
    let body = serde_json::to_vec(&PollRequest {
        node_id: node_id_of("n1"),
        known_version: current,
        delta: false,
    })
    .unwrap();
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        post("/v1/agent/poll", "application/json", body)
            .reply(&api)
            .await
    });
    // This test runs on one thread: the poll runs only when this task
    // yields, and with nothing new it must park rather than answer.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(!poll.is_finished(), "the poll answered with nothing new");

    h.create(&spec("render", 1)).await;
    assert_eq!(h.schedule().await, 1);
    let resp = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the poll returned before its timeout")
        .expect("the poll task did not panic");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let v = Resp::from(resp).expect(200);
    let r: PollResponse = serde_json::from_value(v).unwrap();
    assert!(r.version > current, "{} then {}", current, r.version);
    assert_eq!(r.allocs.len(), 1);
    assert_eq!(r.allocs[0].alloc.to_string(), "render/0/1");
}

#[tokio::test]
async fn a_poll_at_the_current_version_with_nothing_new_returns_it_unchanged_after_the_poll_timeout(
) {
    let settings = Settings {
        poll_timeout: Duration::from_millis(150),
        ..Settings::default()
    };
    let h = Harness::with_settings(settings).await;
    h.add_node("n1").await;
    h.create(&spec("render", 1)).await;
    assert_eq!(h.schedule().await, 1);
    let first = h.poll("n1", 0).await;
    assert_eq!(first.allocs.len(), 1);

    let started = Instant::now();
    let again = h.poll("n1", first.version).await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "it waited for the poll timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(again, first);
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_placements_and_requests_by_route_without_ids_in_labels() {
    let h = Harness::new().await;
    h.add_node("node-secret-7").await;
    h.create(&spec("job-secret-9", 2)).await;
    assert_eq!(h.schedule().await, 2);
    h.get("/v1/jobs/job-secret-9").await.expect(200);
    h.get("/v1/jobs/job-secret-9/tasks").await.expect(200);
    h.get("/v1/tasks/job-secret-9/0").await.expect(200);
    h.get("/v1/allocs/job-secret-9/0/1").await.expect(200);
    h.get("/v1/nodes/node-secret-7").await.expect(200);
    h.get("/v1/jobs/no-such-job-secret").await.expect(404);
    h.get("/job-secret-9/whatever").await.expect(404);

    let r = h.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    assert!(
        text.contains("drover_placements_total{policy=\"least-loaded\"} 2"),
        "{text}"
    );
    for id in ["job-secret-9", "node-secret-7", "no-such-job-secret"] {
        assert!(!text.contains(id), "{id} appears in a label:\n{text}");
    }
    let routes: BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("drover_http_requests_total{"))
        .filter_map(|l| l.split("route=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    for expected in [
        "POST /v1/jobs",
        "POST /v1/agent/register",
        "GET /v1/jobs/{id}",
        "GET /v1/jobs/{id}/tasks",
        "GET /v1/tasks/{job}/{index}",
        "GET /v1/allocs/{job}/{index}/{attempt}",
        "GET /v1/nodes/{id}",
        "GET other",
    ] {
        assert!(
            routes.contains(expected),
            "{expected} missing from {routes:?}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("drover_http_requests_total{")
                && l.contains("code=\"404\"")
                && l.contains("route=\"GET /v1/jobs/{id}\"")),
        "{text}"
    );
    for family in [
        "drover_nodes{state=\"ready\"} 1",
        "drover_jobs{state=\"running\"} 1",
        "drover_tasks{state=\"assigned\"} 2",
        "drover_cluster_capacity{resource=\"cpu\"} 4000",
        "drover_cluster_allocated{resource=\"cpu\"} 1000",
        "drover_queue_depth 0",
        "drover_is_leader 1",
        "drover_preemptions_total 0",
        "drover_node_failures_total 0",
        "drover_scheduling_latency_seconds_count 2",
        "drover_schedule_pass_duration_seconds_count",
        "drover_schedule_lock_seconds_count",
        "drover_http_request_duration_seconds_bucket",
        "drover_store_op_duration_seconds_bucket",
    ] {
        assert!(text.contains(family), "{family} missing:\n{text}");
    }
}

#[tokio::test]
async fn request_metrics_stay_bounded_whatever_method_a_client_invents() {
    let h = Harness::new().await;
    for i in 0..20 {
        let r = h
            .send(
                warp::test::request()
                    .method(&format!("INVENTED{i}"))
                    .path("/v1/jobs"),
            )
            .await;
        assert!(r.status.is_client_error(), "{}", r.status);
    }
    let text = h.get("/metrics").await.text();
    let series: BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("drover_http_requests_total{"))
        .collect();
    assert!(
        !text.contains("INVENTED"),
        "{} request series: {series:#?}",
        series.len()
    );
}

#[test]
fn every_route_has_a_metrics_label_without_ids() {
    for route in ROUTES {
        let path = route
            .path
            .split('/')
            .map(|seg| {
                if seg.starts_with('{') {
                    "secret-7"
                } else {
                    seg
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let method = route.method.as_str();
        assert_eq!(
            label(method, &path),
            format!("{method} {}", route.path),
            "{method} {path}"
        );
    }
    assert_eq!(label("GET", "/v1/render/3/1/x/y"), "GET other");
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[tokio::test]
async fn an_invalid_spec_is_400_with_the_path_of_every_bad_field() {
    let h = Harness::new().await;
    let bad = json!({
        "name": "Bad_Name",
        "command": ["/bin/true"],
        "priority": 101,
        "resources": {"cpu": "500m", "memory": "-1Gi"},
    });
    let err = h.submit(&bad).await.expect_error(400, "invalid_spec");
    let paths: BTreeSet<&str> = err["fields"]
        .as_array()
        .unwrap_or_else(|| panic!("no fields: {err}"))
        .iter()
        .map(|f| {
            assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()), "{f}");
            f["path"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from(["name", "priority", "resources.memory"]),
        "{err}"
    );
    // The same through plan, and in YAML.
    h.post_json("/v1/jobs/plan", &bad)
        .await
        .expect_error(400, "invalid_spec");
    let err = h
        .send(post(
            "/v1/jobs",
            "application/yaml",
            "name: ok\ncommand: [x]\nresources: {cpu: -2}\n",
        ))
        .await
        .expect_error(400, "invalid_spec");
    assert_eq!(err["fields"][0]["path"], "resources.cpu", "{err}");
    // Syntax errors have no fields but say where.
    let err = h
        .send(post("/v1/jobs", "application/json", "{\"name\": "))
        .await
        .expect_error(400, "invalid_spec");
    assert!(err["message"].as_str().unwrap().contains("line 1"), "{err}");
}

#[tokio::test]
async fn a_malformed_json_body_on_the_agent_routes_is_400() {
    let h = Harness::new().await;
    for path in [
        "/v1/agent/register",
        "/v1/agent/heartbeat",
        "/v1/agent/poll",
        "/v1/nodes/n1/drain",
    ] {
        for body in ["{not json", "{\"node_id\": 7}", "[]"] {
            let r = h.send(post(path, "application/json", body)).await;
            assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
            assert_json_error(&r, "bad_request");
        }
    }
    assert_eq!(h.get("/v1/nodes").await.expect(200), json!([]));
}

#[tokio::test]
async fn a_request_without_a_valid_token_is_401_with_www_authenticate_when_tokens_are_configured() {
    let h = Harness::with_tokens().await;
    let reqs = [
        warp::test::request().method("GET").path("/v1/jobs"),
        warp::test::request().method("GET").path("/v1/jobs/unknown"),
        post("/v1/jobs", "application/json", spec("x", 1).to_string()),
        post("/v1/agent/heartbeat", "application/json", "{}"),
        warp::test::request()
            .method("GET")
            .path("/v1/nodes")
            .header("authorization", "Bearer not-a-known-token"),
        warp::test::request()
            .method("GET")
            .path("/v1/nodes")
            .header("authorization", format!("Basic {ADMIN_TOKEN}")),
    ];
    for req in reqs {
        let r = h.send(req).await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert_json_error(&r, "unauthorized");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{challenge:?}");
    }
    // A known token gets in.
    let r = h
        .send(
            warp::test::request()
                .method("GET")
                .path("/v1/jobs")
                .header("authorization", format!("Bearer {READER_TOKEN}")),
        )
        .await;
    assert_eq!(r.expect(200), json!([]));
}

#[tokio::test]
async fn a_token_whose_role_is_too_low_is_403() {
    let h = Harness::with_tokens().await;
    let as_ =
        |token: &str, req: RequestBuilder| req.header("authorization", format!("Bearer {token}"));
    let body = spec("render", 1).to_string();
    let r = h
        .send(as_(
            READER_TOKEN,
            post("/v1/jobs", "application/json", &body),
        ))
        .await;
    let err = r.expect_error(403, "forbidden");
    assert!(
        err["message"].as_str().unwrap().contains("submitter"),
        "{err}"
    );
    assert_eq!(
        h.send(as_(
            SUBMITTER_TOKEN,
            warp::test::request().method("GET").path("/v1/jobs")
        ))
        .await
        .expect(200),
        json!([]),
        "the reader's refused submission stored nothing"
    );
    // A submitter may submit, not drain nodes or speak for agents.
    h.send(as_(
        SUBMITTER_TOKEN,
        post("/v1/jobs", "application/json", &body),
    ))
    .await
    .expect(201);
    let drain = post(
        "/v1/nodes/n1/drain",
        "application/json",
        "{\"enable\":true}",
    );
    h.send(as_(SUBMITTER_TOKEN, drain))
        .await
        .expect_error(403, "forbidden");
    let reg = serde_json::to_vec(&node("n1")).unwrap();
    h.send(as_(
        SUBMITTER_TOKEN,
        post("/v1/agent/register", "application/json", &reg),
    ))
    .await
    .expect_error(403, "forbidden");
    // Nor may an admin: agents join with an agent token.
    h.send(as_(
        ADMIN_TOKEN,
        post("/v1/agent/register", "application/json", &reg),
    ))
    .await
    .expect_error(403, "forbidden");
    h.send(as_(
        JOIN_TOKEN,
        post("/v1/agent/register", "application/json", &reg),
    ))
    .await
    .expect(200);
}

#[tokio::test]
async fn unknown_routes_and_unknown_jobs_tasks_nodes_and_allocs_are_404() {
    let h = Harness::new().await;
    h.create(&spec("render", 1)).await;
    for path in [
        "/v1/nope",
        "/v2/jobs",
        "/v1/jobs/render/tasks/extra",
        "/v1/jobs/missing",
        "/v1/jobs/Not_A_Job_Id",
        "/v1/jobs/missing/tasks",
        "/v1/tasks/missing/0",
        "/v1/tasks/render/7",
        "/v1/tasks/render/not-a-number",
        "/v1/tasks/missing/0/logs",
        "/v1/allocs/render/0/1",
        "/v1/allocs/render/0/zero",
        "/v1/nodes/missing",
    ] {
        let r = h.get(path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_json_error(&r, "not_found");
    }
    h.delete("/v1/jobs/missing")
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn a_method_a_route_does_not_allow_gets_a_json_error() {
    let h = Harness::new().await;
    for (method, path) in [
        ("PUT", "/v1/jobs"),
        ("PATCH", "/v1/jobs/render"),
        ("DELETE", "/v1/nodes"),
        ("GET", "/v1/agent/poll"),
    ] {
        let r = h
            .send(warp::test::request().method(method).path(path))
            .await;
        match r.status.as_u16() {
            405 => assert_json_error(&r, "method_not_allowed"),
            404 => assert_json_error(&r, "not_found"),
            other => panic!("{method} {path}: {other} {}", r.text()),
        };
    }
}

#[tokio::test]
async fn a_body_without_a_content_length_is_411() {
    let h = Harness::new().await;
    // warp's test request sets Content-Length only when given a body.
    let r = h
        .send(
            warp::test::request()
                .method("POST")
                .path("/v1/jobs")
                .header("content-type", "application/json"),
        )
        .await;
    r.expect_error(411, "length_required");
}

#[tokio::test]
async fn a_body_larger_than_max_body_bytes_is_413() {
    let settings = Settings {
        max_body_bytes: 1024,
        ..Settings::default()
    };
    let h = Harness::with_settings(settings).await;
    let padded = spec_with("big", 1, json!({"env": {"PAD": "x".repeat(2000)}}));
    h.submit(&padded)
        .await
        .expect_error(413, "payload_too_large");
    h.post_json("/v1/jobs/plan", &padded)
        .await
        .expect_error(413, "payload_too_large");
    let mut req = node("n1");
    req.desc
        .attributes
        .insert("pad".to_string(), "y".repeat(2000));
    h.register(&req)
        .await
        .expect_error(413, "payload_too_large");
    // Just under the limit is fine.
    let small = spec("small", 1);
    assert!(small.to_string().len() < 1024);
    h.create(&small).await;
    h.get("/v1/jobs/big").await.expect_error(404, "not_found");
}

#[tokio::test]
async fn a_spec_of_an_unsupported_content_type_is_415() {
    let h = Harness::new().await;
    let body = spec("render", 1).to_string();
    let err = h
        .send(post("/v1/jobs", "text/plain", &body))
        .await
        .expect_error(415, "unsupported_media_type");
    assert!(
        err["message"].as_str().unwrap().contains("text/plain"),
        "{err}"
    );
    h.send(post("/v1/jobs/plan", "application/xml", &body))
        .await
        .expect_error(415, "unsupported_media_type");
    // The agent routes speak JSON only.
    let hb = serde_json::to_vec(&heartbeat("n1", vec![])).unwrap();
    h.send(post("/v1/agent/heartbeat", "text/plain", hb))
        .await
        .expect_error(415, "unsupported_media_type");
    // No content type at all is read as JSON.
    h.send(
        warp::test::request()
            .method("POST")
            .path("/v1/jobs")
            .body(spec("untyped", 1).to_string()),
    )
    .await
    .expect(201);
    // A parameter on the media type is fine.
    h.send(post("/v1/jobs", "application/json; charset=utf-8", &body))
        .await
        .expect(201);
}

#[tokio::test]
async fn a_submission_past_the_pending_limit_is_429_with_retry_after_and_changes_nothing() {
    let h = Harness::with_settings(Settings {
        max_pending_tasks: 3,
        ..Settings::default()
    })
    .await;
    h.submit(&spec("first", 2)).await.expect(201);
    let r = h.submit(&spec("second", 2)).await;
    assert_eq!(r.header("retry-after"), Some("5"));
    let e = r.expect_error(429, "backlog_full");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(message.contains("scheduler.max_pending_tasks"), "{message}");
    h.get("/v1/jobs/second")
        .await
        .expect_error(404, "not_found");
    // What adds no task still goes through: the same spec again, and a job
    // that fits in what is left.
    h.submit(&spec("first", 2)).await.expect(200);
    h.submit(&spec("third", 1)).await.expect(201);
    let c = h.get("/v1/cluster").await.expect(200);
    assert_eq!(c["queue_depth"], 3, "{c}");
    h.submit(&spec("fourth", 1))
        .await
        .expect_error(429, "backlog_full");
}

#[tokio::test]
async fn a_submission_the_store_cannot_commit_is_503_with_retry_after_and_changes_nothing() {
    let h = Harness::new().await;
    h.store_failing.store(true, Ordering::SeqCst);
    let r = h.submit(&spec("render", 2)).await;
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "retry-after: {:?}",
        r.header("retry-after")
    );
    r.expect_error(503, "unavailable");
    // Agents and operators get the same answer.
    h.register(&node("n1"))
        .await
        .expect_error(503, "unavailable");

    h.get("/v1/jobs/render")
        .await
        .expect_error(404, "not_found");
    h.get("/v1/tasks/render/0")
        .await
        .expect_error(404, "not_found");
    assert_eq!(h.get("/v1/jobs").await.expect(200), json!([]));
    assert_eq!(h.get("/v1/nodes").await.expect(200), json!([]));
    let c = h.get("/v1/cluster").await.expect(200);
    assert_eq!(c["queue_depth"], 0, "{c}");

    h.store_failing.store(false, Ordering::SeqCst);
    let v = h.submit(&spec("render", 2)).await.expect(201);
    assert_eq!(v["version"], 1, "the retry is a first submission: {v}");
    assert_eq!(
        h.get("/v1/jobs/render").await.expect(200)["tasks"]["pending"],
        2
    );
    let snapshot = h.shut_down_and_load().await;
    assert_eq!(keys_under(&snapshot, "jobs/"), ["jobs/render"]);
    assert_eq!(
        keys_under(&snapshot, "tasks/"),
        ["tasks/render/0", "tasks/render/1"]
    );
}

#[tokio::test]
async fn writes_staged_while_a_failing_commit_runs_fail_with_it_and_leave_nothing() {
    let h = Arc::new(Harness::new().await);
    // The first submission's commit waits at the door...
    let door = h.store_gate.door.write().await;
    let submit = |name: &'static str| {
        let h = Arc::clone(&h);
        tokio::spawn(async move { h.submit(&spec(name, 1)).await })
    };
    let first = submit("first");
    while h.store_gate.arrived.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // ...while two more are staged behind it (applied in memory at once).
    let later = [submit("second"), submit("third")];
    loop {
        let jobs = h.get("/v1/jobs").await.expect(200);
        if jobs.as_array().is_some_and(|j| j.len() == 3) {
            break;
        }
        tokio::task::yield_now().await;
    }
    h.store_failing.store(true, Ordering::SeqCst);
    drop(door);
    for call in std::iter::once(first).chain(later) {
        call.await.unwrap().expect_error(503, "unavailable");
    }
    assert_eq!(h.get("/v1/jobs").await.expect(200), json!([]));
    h.store_failing.store(false, Ordering::SeqCst);
    h.submit(&spec("fourth", 1)).await.expect(201);
    let h = Arc::into_inner(h).expect("every call is done");
    let snapshot = h.shut_down_and_load().await;
    assert_eq!(keys_under(&snapshot, "jobs/"), ["jobs/fourth"]);
}

#[tokio::test]
async fn a_scheduling_pass_the_store_cannot_commit_places_nothing() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.create(&spec("render", 1)).await;
    h.store_failing.store(true, Ordering::SeqCst);
    assert!(h.master.schedule_pass().await.is_err());
    let t = h.get("/v1/tasks/render/0").await.expect(200);
    assert_eq!(t["state"], "pending", "{t}");
    assert_eq!(t["attempts"], json!([]));
    h.get("/v1/allocs/render/0/1")
        .await
        .expect_error(404, "not_found");
    h.store_failing.store(false, Ordering::SeqCst);
    assert_eq!(h.schedule().await, 1);
    assert_eq!(h.node_of("render/0/1").await, "n1");
}

#[tokio::test]
async fn a_scheduling_pass_the_store_cannot_commit_counts_no_placements() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.create(&spec("render", 1)).await;
    h.store_failing.store(true, Ordering::SeqCst);
    assert!(h.master.schedule_pass().await.is_err());
    assert!(h.master.schedule_pass().await.is_err());
    h.store_failing.store(false, Ordering::SeqCst);
    assert_eq!(h.schedule().await, 1);
    let text = h.get("/metrics").await.text();
    assert!(
        text.contains("drover_placements_total{policy=\"least-loaded\"} 1"),
        "one task was placed once:\n{text}"
    );
    assert!(
        text.contains("drover_scheduling_latency_seconds_count 1"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------

#[tokio::test]
async fn bad_input_never_reaches_the_store() {
    let h = Harness::new().await;
    let ten_mib = format!(
        "{{\"name\":\"big\",\"command\":[\"x\"],\"env\":{{\"PAD\":\"{}\"}}}}",
        "x".repeat(10 << 20)
    );
    let attempts: Vec<(&str, String, u16)> = vec![
        (
            "application/yaml",
            "name: [unclosed\ncommand: x\n".to_string(),
            400,
        ),
        (
            "application/yaml",
            "name: yaml-bad\ncommand: [x]\ncount: lots\n".to_string(),
            400,
        ),
        (
            "application/json",
            json!({"name": "unknown-field", "command": ["x"], "colour": "red"}).to_string(),
            400,
        ),
        (
            "application/json",
            json!({"name": "neg", "command": ["x"], "resources": {"memory": "-1Gi"}}).to_string(),
            400,
        ),
        (
            "application/json",
            json!({"name": "neg-cpu", "command": ["x"], "resources": {"cpu": -1}}).to_string(),
            400,
        ),
        (
            "application/json",
            json!({"name": "no-command"}).to_string(),
            400,
        ),
        (
            "application/json",
            "name: yaml-as-json\ncommand: [x]\n".to_string(),
            400,
        ),
        ("application/json", "\u{0}\u{1}".to_string(), 400),
        ("application/json", ten_mib, 413),
        ("text/plain", spec("wrong-type", 1).to_string(), 415),
    ];
    for (ctype, body, status) in attempts {
        let r = h.send(post("/v1/jobs", ctype, body.as_bytes())).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "{ctype} {:.60}: {}",
            body,
            r.text()
        );
        assert!(r.json().get("error").is_some(), "{}", r.text());
    }
    // Nor do invalid UTF-8, a drain of a node nobody knows, or a plan.
    h.send(post("/v1/jobs", "application/json", [0xff_u8, 0xfe, 0x7b]))
        .await
        .expect_error(400, "bad_request");
    h.post_json("/v1/jobs/plan", &spec("planned", 1))
        .await
        .expect(200);
    h.post_json("/v1/nodes/ghost/drain", &json!({"enable": true}))
        .await
        .expect(404);

    let snapshot = h.shut_down_and_load().await;
    // Only the format marker a new store gets when its master opens it.
    let keys: Vec<&String> = snapshot.keys().collect();
    assert_eq!(keys, ["meta/format"], "bad input reached the store");
}

/// The persisted books of a master, and the indexes derived from them.
#[derive(Debug, PartialEq)]
struct Books {
    jobs: String,
    tasks: String,
    allocs: String,
    nodes: String,
    pending: Vec<String>,
    counts: String,
    live_allocs_by_node: String,
    next_seq: u64,
}

async fn books(master: &Master) -> Books {
    let c = master.lock().await;
    Books {
        jobs: format!("{:?}", c.jobs),
        tasks: format!("{:?}", c.tasks),
        allocs: format!("{:?}", c.allocs),
        nodes: format!("{:?}", c.nodes),
        pending: c.pending.iter().map(ToString::to_string).collect(),
        counts: format!("{:?}", c.counts),
        live_allocs_by_node: format!("{:?}", c.live_allocs_by_node),
        next_seq: c.next_seq,
    }
}

/// What the API shows of jobs, tasks and allocs that must survive a restart.
async fn views(h: &Harness) -> Vec<Value> {
    let mut out = Vec::new();
    for p in [
        "/v1/jobs",
        "/v1/jobs/alpha",
        "/v1/jobs/alpha/tasks",
        "/v1/jobs/beta/tasks",
        "/v1/tasks/gamma/0",
        "/v1/allocs/alpha/2/1",
    ] {
        out.push(h.get(p).await.expect(200));
    }
    out
}

/// The node list without heartbeat data, which is not persisted (DESIGN §7).
async fn persisted_node_views(h: &Harness) -> Vec<Value> {
    let nodes = h.get("/v1/nodes").await.expect(200);
    nodes
        .as_array()
        .expect("a list")
        .iter()
        .map(|n| {
            let mut n = n.clone();
            let fields = n.as_object_mut().expect("an object");
            fields.remove("last_heartbeat_ms");
            fields.remove("usage");
            n
        })
        .collect()
}

#[tokio::test]
async fn a_restarted_master_recovers_jobs_tasks_allocs_and_nodes_from_its_data_dir() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    let mut n2 = node("n2");
    n2.desc.labels.insert("zone".to_string(), "b".to_string());
    n2.desc.resources.cpu_millis = 2000;
    h.register(&n2).await.expect(200);

    h.create(&spec("alpha", 3)).await;
    h.create(&spec("beta", 1)).await;
    h.create(&spec_with("gamma", 1, json!({"restart": {"attempts": 0}})))
        .await;
    h.create(&spec("delta", 1)).await;
    h.create(&spec_with(
        "huge",
        1,
        json!({"resources": {"cpu": "1", "memory": "64Gi"}}),
    ))
    .await;
    // A second version of beta.
    h.submit(&spec_with("beta", 1, json!({"priority": 80})))
        .await
        .expect(200);
    assert_eq!(h.schedule().await, 6);

    for alloc in ["alpha/0/1", "alpha/1/1", "alpha/2/1", "gamma/0/1"] {
        let node = h.node_of(alloc).await;
        h.report_one(&node, alloc, AllocState::Running, None).await;
    }
    let n = h.node_of("alpha/1/1").await;
    h.report_one(&n, "alpha/1/1", AllocState::Succeeded, Some(0))
        .await;
    let n = h.node_of("alpha/2/1").await;
    h.report_one(&n, "alpha/2/1", AllocState::Failed, Some(3))
        .await;
    let n = h.node_of("gamma/0/1").await;
    h.report_one(&n, "gamma/0/1", AllocState::Failed, Some(1))
        .await;
    h.delete("/v1/jobs/delta").await.expect(200);
    h.post_json(
        "/v1/nodes/n2/drain",
        &json!({"enable": true, "deadline": "1h"}),
    )
    .await
    .expect(200);

    // The scenario covers the states it claims to.
    let tasks = h.get("/v1/jobs/alpha/tasks").await.expect(200);
    assert_eq!(states_of(&tasks), ["running", "succeeded", "pending"]);
    assert_eq!(
        h.get("/v1/tasks/gamma/0").await.expect(200)["state"],
        "dead"
    );
    assert_eq!(
        h.get("/v1/jobs/delta").await.expect(200)["state"],
        "stopped"
    );
    assert_eq!(h.get("/v1/jobs/beta").await.expect(200)["version"], 2);

    let before = books(&h.master).await;
    let views_before = views(&h).await;
    let nodes_before = persisted_node_views(&h).await;

    let h = h.restart().await;

    assert_eq!(books(&h.master).await, before);
    assert_eq!(views(&h).await, views_before);
    let nodes_after = persisted_node_views(&h).await;
    assert_eq!(nodes_after, nodes_before);

    // The recovered master carries on: reports about its allocs still
    // count, and new submissions queue behind the old ones.
    let n = h.node_of("alpha/0/1").await;
    h.report_one(&n, "alpha/0/1", AllocState::Succeeded, Some(0))
        .await;
    assert_eq!(
        h.get("/v1/tasks/alpha/0").await.expect(200)["state"],
        "succeeded"
    );
    h.create(&spec("epsilon", 1)).await;
    let c = h.master.lock().await;
    let seqs: Vec<u64> = c.jobs.values().map(|j| j.submit_seq).collect();
    let eps = c
        .jobs
        .values()
        .find(|j| j.id.as_str() == "epsilon")
        .unwrap();
    assert_eq!(
        seqs.iter().filter(|s| **s == eps.submit_seq).count(),
        1,
        "a fresh submit_seq: {seqs:?}"
    );
    assert!(seqs.iter().all(|s| *s <= eps.submit_seq), "{seqs:?}");
}

// ---------------------------------------------------------------------------
// Real HTTP
// ---------------------------------------------------------------------------

/// One HTTP/1.1 request on its own connection: status and body.
async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let phase = |what: &'static str| {
        move |e: std::io::Error| std::io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    let mut stream = TcpStream::connect(addr).await.map_err(phase("connect"))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(phase("write"))?;
    stream.write_all(body).await.map_err(phase("write"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(phase("read"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_server_takes_1000_concurrent_submissions_in_fewer_commits_and_persists_every_one() {
    const JOBS: usize = 1000;
    let dir = tempfile::tempdir().expect("a temp dir");
    // Room for all at once: this is about commits, not admission.
    let settings = Settings {
        max_requests: JOBS,
        ..Settings::default()
    };
    let master = open_master(dir.path(), settings, Arc::default(), Arc::default()).await;
    // A burst of 1000 connects needs the deep accept queue the binary uses.
    let listener =
        drover_master::server::bind("127.0.0.1:0".parse().expect("an address")).expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(drover_master::server::run(
        Arc::clone(&master),
        Arc::new(Auth::disabled()),
        listener,
        None,
        async move {
            let _ = stopped.await;
        },
    ));

    let work = async {
        let clients: Vec<_> = (0..JOBS)
            .map(|i| {
                tokio::spawn(async move {
                    let body = spec(&format!("job-{i:04}"), 1).to_string();
                    http_request(
                        addr,
                        "POST",
                        "/v1/jobs",
                        "application/json",
                        body.as_bytes(),
                    )
                    .await
                })
            })
            .collect();
        let mut failures = Vec::new();
        for (i, c) in clients.into_iter().enumerate() {
            match c.await.expect("client task") {
                Ok((status, _)) if (200..300).contains(&status) => {}
                other => failures.push((i, format!("{other:?}"))),
            }
        }
        assert!(
            failures.is_empty(),
            "{} submissions failed, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        let (status, body) = http_request(addr, "GET", "/v1/jobs", "application/json", b"")
            .await
            .expect("list jobs");
        assert_eq!(status, 200, "{body}");
        let listed: Value = serde_json::from_str(&body).expect("JSON list");
        assert_eq!(listed.as_array().map(Vec::len), Some(JOBS));
        // Writes that arrive while others are being stored share a commit
        // (group commit): fewer fsyncs than submissions.
        let (_, metrics) = http_request(addr, "GET", "/metrics", "text/plain", b"")
            .await
            .expect("metrics");
        let commits = metric_value(
            &metrics,
            "drover_store_op_duration_seconds_count{op=\"commit\"}",
        )
        .expect("the commit count");
        assert!(
            commits < JOBS as f64,
            "{commits} commits for {JOBS} submissions"
        );
        eprintln!("{JOBS} submissions took {commits} commits");
        let (status, body) = http_request(addr, "GET", "/v1/jobs/nope", "application/json", b"")
            .await
            .expect("get a missing job");
        assert_eq!(status, 404, "{body}");
        let err: Value = serde_json::from_str(&body).expect("a JSON error");
        assert_eq!(err["error"]["code"], "not_found");

        stop.send(()).expect("the server is listening");
        server.await.expect("the server stopped cleanly");
    };
    tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .expect("1000 submissions and a shutdown within 60 s");

    release(master);
    let snapshot = load_store(dir.path()).await;
    let jobs = keys_under(&snapshot, "jobs/");
    assert_eq!(jobs.len(), JOBS);
    assert_eq!(keys_under(&snapshot, "tasks/").len(), JOBS);
    let expected: Vec<String> = (0..JOBS).map(|i| format!("jobs/job-{i:04}")).collect();
    assert_eq!(jobs, expected);
}

// ---------------------------------------------------------------------------
// Contract with drover-api's client types
// ---------------------------------------------------------------------------

/// Reads `body` as `T` and writes it back: the JSON must come out the same,
/// so a field the master sends that the client type lacks (or names
/// differently, or types differently) fails here and not in a user's CLI.
#[track_caller]
fn assert_reads_back_unchanged<T: serde::de::DeserializeOwned + Serialize>(
    what: &str,
    body: Value,
) {
    let typed: T = serde_json::from_value(body.clone())
        .unwrap_or_else(|e| panic!("{what} does not read as the client type: {e}\n{body}"));
    let again = serde_json::to_value(&typed).expect("serialize the client type");
    assert_eq!(
        again, body,
        "{what}: the client type loses or changes fields"
    );
}

#[tokio::test]
async fn every_answer_reads_back_unchanged_through_the_client_types() {
    use drover_api::views::{
        AllocView, ClusterSummary, ErrorBody, JobView, LeaderView, NodeView, PlanAnswer,
        StopAnswer, SubmitAnswer, TaskView,
    };
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.register(&gpu_node("g1")).await.expect(200);
    let submitted = h.submit(&spec("web", 2)).await.expect(201);
    assert_reads_back_unchanged::<SubmitAnswer>("submit", submitted);
    assert_eq!(h.schedule().await, 2);
    h.report_one("n1", "web/0/1", AllocState::Running, None)
        .await;
    h.report_one("n1", "web/0/1", AllocState::Failed, Some(2))
        .await;
    h.create(&spec("huge", 1)).await;
    h.post_json(
        "/v1/nodes/g1/drain",
        &json!({"enable": true, "deadline": "5m"}),
    )
    .await
    .expect(200);

    let plan = h
        .post_json(
            "/v1/jobs/plan",
            &spec_with("p", 2, json!({"resources": {"cpu": "64"}})),
        )
        .await
        .expect(200);
    assert_reads_back_unchanged::<PlanAnswer>("plan", plan);
    let plan = h
        .post_json("/v1/jobs/plan", &spec("q", 1))
        .await
        .expect(200);
    assert!(!plan["placements"].as_array().unwrap().is_empty(), "{plan}");
    assert_reads_back_unchanged::<PlanAnswer>("plan", plan);
    for path in ["/v1/jobs", "/v1/jobs?state=running"] {
        let list = h.get(path).await.expect(200);
        assert_reads_back_unchanged::<Vec<JobView>>(path, list);
    }
    let job = h.get("/v1/jobs/web").await.expect(200);
    assert!(job["spec"].is_object(), "{job}");
    assert_reads_back_unchanged::<JobView>("job", job);
    let tasks = h.get("/v1/jobs/web/tasks").await.expect(200);
    assert_reads_back_unchanged::<Vec<TaskView>>("tasks", tasks);
    let task = h.get("/v1/tasks/web/0").await.expect(200);
    assert_reads_back_unchanged::<TaskView>("task", task);
    let alloc = h.get("/v1/allocs/web/0/1").await.expect(200);
    assert_reads_back_unchanged::<AllocView>("alloc", alloc);
    let nodes = h.get("/v1/nodes").await.expect(200);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["drain"].is_object()),
        "{nodes}"
    );
    assert_reads_back_unchanged::<Vec<NodeView>>("nodes", nodes);
    let node = h.get("/v1/nodes/g1").await.expect(200);
    assert_reads_back_unchanged::<NodeView>("node", node);
    let cluster = h.get("/v1/cluster").await.expect(200);
    assert_reads_back_unchanged::<ClusterSummary>("cluster", cluster);
    let leader = h.get("/v1/status/leader").await.expect(200);
    assert_reads_back_unchanged::<LeaderView>("leader", leader);
    let bad = h
        .submit(&json!({"name": "bad", "command": [], "resources": {"memory": "12Zb"}}))
        .await
        .expect(400);
    assert!(bad["error"]["fields"].is_array(), "{bad}");
    assert_reads_back_unchanged::<ErrorBody>("a spec error", bad);
    let missing = h.get("/v1/jobs/nope").await.expect(404);
    assert_reads_back_unchanged::<ErrorBody>("a 404", missing);
    let stopped = h.delete("/v1/jobs/web").await.expect(200);
    assert!(matches!(
        serde_json::from_value::<StopAnswer>(stopped.clone()),
        Ok(StopAnswer::Stopped(_))
    ));
    assert_reads_back_unchanged::<StopAnswer>("stop", stopped);
    let purged = h.delete("/v1/jobs/web?purge=true").await.expect(200);
    assert!(matches!(
        serde_json::from_value::<StopAnswer>(purged.clone()),
        Ok(StopAnswer::Purged { .. })
    ));
    assert_reads_back_unchanged::<StopAnswer>("purge", purged);
}

#[tokio::test]
async fn room_freed_by_preemption_is_held_for_the_preemptor_even_across_a_restart() {
    let h = Harness::new().await;
    h.add_node("n1").await; // 4 cpus
    let low = json!({"priority": 10, "policy": "priority", "resources": {"cpu": "2"}});
    h.create(&spec_with("low", 2, low)).await;
    assert_eq!(h.schedule().await, 2);
    for a in ["low/0/1", "low/1/1"] {
        h.report_one("n1", a, AllocState::Running, None).await;
    }
    let high = json!({"priority": 90, "policy": "priority", "resources": {"cpu": "2"}});
    h.create(&spec_with("high", 1, high)).await;
    assert_eq!(h.schedule().await, 0, "the victim still runs");
    let victim = h.get("/v1/allocs/low/0/1").await.expect(200);
    assert_eq!(victim["state"], "stopping", "{victim}");
    let t = h.get("/v1/tasks/high/0").await.expect(200);
    assert_eq!(
        t["waiting"], "reserved on n1: waiting for 1 stopping alloc to exit",
        "{t}"
    );
    // A task that would fit in the freed room arrives meanwhile; a master
    // restart forgets nothing of the reservation.
    let mid = json!({"priority": 50, "policy": "least-loaded", "resources": {"cpu": "2"}});
    h.create(&spec_with("mid", 1, mid)).await;
    let h = h.restart().await;
    h.add_node("n1").await;
    assert_eq!(h.schedule().await, 0);
    h.report_one("n1", "low/0/1", AllocState::Killed, None)
        .await;
    assert_eq!(h.schedule().await, 1);
    assert_eq!(h.node_of("high/0/1").await, "n1");
    let mid = h.get("/v1/tasks/mid/0").await.expect(200);
    assert_eq!(mid["state"], "pending", "the room was not mid's: {mid}");
    let low = h.get("/v1/tasks/low/0").await.expect(200);
    assert_eq!(low["state"], "pending", "{low}");
    assert_eq!(low["restarts"], 0, "{low}");
}

// ---------------------------------------------------------------------------
// The OpenAPI document
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_served_document_is_the_checked_in_one() {
    let h = Harness::new().await;
    let r = h.get("/v1/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let served = String::from_utf8(r.body).expect("UTF-8");
    assert!(
        served == include_str!("../../api/openapi.json"),
        "api/openapi.json is not what the master serves: regenerate it with \
         `cargo run -p drover --bin drover -- api openapi > api/openapi.json` \
         and review the diff"
    );
}

/// Where each documented answer can be had, on a master with tokens, one
/// node whose log server is unreachable, a job whose task runs there, and a
/// follower beside it.
struct Reach {
    h: Harness,
    follower: BoxedFilter<(Response,)>,
    /// The same master, admitting no call at once.
    full: BoxedFilter<(Response,)>,
    /// n1's credential, for the agent routes.
    n1: String,
}

impl Reach {
    async fn new() -> Reach {
        let h = Harness::with_tokens().await;
        // n1's log server answers; dark's is a closed port.
        let logs = warp::path!("v1" / "allocs" / String / String / String / "logs")
            .map(|_, _, _| "a line\n");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a log server");
        let log_addr = listener.local_addr().expect("its address");
        tokio::spawn(warp::serve(logs).incoming(listener).run());
        let mut n1 = String::new();
        for (id, addr) in [("n1", log_addr.to_string()), ("dark", "127.0.0.1:1".into())] {
            let mut n = node(id);
            n.desc.log_addr = addr;
            n.desc.labels.insert("logs".into(), id.into());
            let joined = h
                .send(authed(post_body("/v1/agent/register", &n), JOIN_TOKEN))
                .await
                .expect(200);
            if id == "n1" {
                n1 = joined["credential"]
                    .as_str()
                    .expect("a credential")
                    .to_string();
            }
        }
        for (name, on) in [("known", "n1"), ("stopme", "n1"), ("dark", "dark")] {
            let job = spec_with(name, 1, json!({"constraints": {"labels": {"logs": on}}}));
            h.send(authed(post_body("/v1/jobs", &job), ADMIN_TOKEN))
                .await
                .expect(201);
        }
        h.schedule().await;
        let (_, serving) = watch::channel(Serving::Follower { leader: None });
        let limits = Limits {
            max_body_bytes: 1 << 20,
            max_requests: 512,
            max_agent_requests: 512,
        };
        let front = Front::new(serving, Metrics::new(), limits, LEADER.to_string());
        let follower = front_routes(front, Arc::clone(&h.auth)).boxed();
        let (_, serving) = watch::channel(Serving::Leader(Arc::clone(&h.master)));
        let no_room = Limits {
            max_requests: 0,
            max_agent_requests: 0,
            ..limits
        };
        let front = Front::new(serving, Metrics::new(), no_room, LEADER.to_string());
        let full = front_routes(front, Arc::clone(&h.auth)).boxed();
        Reach {
            h,
            follower,
            full,
            n1,
        }
    }

    /// The request that should earn `status` from `route`.
    fn request(&self, route: &Route, status: u16) -> (RequestBuilder, bool) {
        let missing = status == 404;
        let path = route
            .path
            .split('/')
            .map(|seg| match seg {
                // Revoking n1 would leave no node for the agent routes after it.
                "{id}" if route.id == RouteId::RevokeNode && !missing => "dark",
                "{id}" if route.path.starts_with("/v1/nodes") => {
                    if missing {
                        "nope"
                    } else {
                        "n1"
                    }
                }
                "{id}" if route.id == RouteId::StopJob && !missing => "stopme",
                "{job}" if status == 502 => "dark",
                "{id}" | "{job}" => {
                    if missing {
                        "missing"
                    } else {
                        "known"
                    }
                }
                "{index}" => "0",
                "{attempt}" => "1",
                s => s,
            })
            .collect::<Vec<_>>()
            .join("/");
        let agent = route.access == Access::Token(Role::Agent);
        let token = match status {
            401 => None,
            403 => Some(READER_TOKEN),
            // A new node joins with the join token; n1 speaks with its own.
            _ if agent && route.id == RouteId::AgentRegister && status != 409 => Some(JOIN_TOKEN),
            _ if agent => Some(self.n1.as_str()),
            _ => Some(ADMIN_TOKEN),
        };
        let has_body = !matches!(route.body, Body::None);
        let body: Option<Vec<u8>> = match (route.id, status) {
            _ if !has_body => None,
            (_, 400) => Some(b"{".to_vec()),
            (_, 413) => Some(vec![b' '; (1 << 20) + 1]),
            (RouteId::SubmitJob, 201) => Some(json_bytes(&spec("fresh", 1))),
            (RouteId::SubmitJob | RouteId::PlanJob, _) => Some(json_bytes(&spec("known", 1))),
            (RouteId::DrainNode, _) => Some(json_bytes(&json!({"enable": false}))),
            (RouteId::AgentRegister, 409) => {
                let mut other = node("n1");
                other.desc.hostname = "someone-else".to_string();
                Some(json_bytes(&other))
            }
            (RouteId::AgentRegister, _) => Some(json_bytes(&node("n2"))),
            (RouteId::AgentHeartbeat, _) => Some(json_bytes(&heartbeat("n1", Vec::new()))),
            (RouteId::AgentPoll, _) => Some(json_bytes(&PollRequest {
                node_id: node_id_of("n1"),
                known_version: 0,
                delta: false,
            })),
            _ => None,
        };
        let query = match (route.query.is_some(), status) {
            (true, 400) if !has_body => "?bogus=1",
            _ => "",
        };
        let mut req = warp::test::request()
            .method(route.method.as_str())
            .path(&format!("{path}{query}"));
        if let Some(t) = token.filter(|_| route.access != Access::Open) {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(body) = body.filter(|_| status != 411) {
            let ctype = if status == 415 {
                "text/plain"
            } else {
                "application/json"
            };
            req = req.header("content-type", ctype).body(body);
        } else if status == 411 {
            req = req.header("content-type", "application/json");
        }
        (req, status == 503)
    }
}

fn json_bytes(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialize")
}

fn post_body(path: &str, body: &impl Serialize) -> RequestBuilder {
    post(path, "application/json", json_bytes(body))
}

fn authed(req: RequestBuilder, token: &str) -> RequestBuilder {
    req.header("authorization", format!("Bearer {token}"))
}

#[tokio::test]
async fn every_documented_status_of_every_route_is_answered() {
    let reach = Reach::new().await;
    let doc = drover_api::openapi::document();
    let mut answered = Vec::new();
    for route in ROUTES {
        let op = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
        let documented: Vec<u16> = op["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .map(|k| k.parse().expect("a status"))
            .collect();
        for status in documented {
            let (req, on_follower) = reach.request(route, status);
            let r = if on_follower {
                Resp::from(req.reply(&reach.follower).await)
            } else if status == 429 {
                Resp::from(req.reply(&reach.full).await)
            } else {
                reach.h.send(req).await
            };
            assert_eq!(
                r.status.as_u16(),
                status,
                "{} {}: documented {status}, answered {} {}",
                route.method.as_str(),
                route.path,
                r.status,
                r.text()
            );
            let ctype = r
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .to_string();
            let content = &op["responses"][status.to_string()]["content"];
            assert!(
                content.get(&ctype).is_some(),
                "{} {} {status}: content type {ctype:?} is not documented: {content}",
                route.method.as_str(),
                route.path
            );
            answered.push((route.id, status));
        }
    }
    assert!(answered.len() > ROUTES.len() * 3, "{answered:?}");
}

// ---------------------------------------------------------------------------
// Node identity
// ---------------------------------------------------------------------------

impl Harness {
    async fn as_(&self, token: &str, req: RequestBuilder) -> Resp {
        self.send(authed(req, token)).await
    }

    async fn get_as(&self, token: &str, path: &str) -> Resp {
        self.as_(token, warp::test::request().method("GET").path(path))
            .await
    }

    /// Joins `id` with the join token; its credential.
    async fn join(&self, id: &str) -> String {
        let v = self
            .as_(JOIN_TOKEN, post_body("/v1/agent/register", &node(id)))
            .await
            .expect(200);
        let c = v["credential"].as_str().expect("a credential").to_string();
        assert!(c.starts_with(&format!("drover-node.{id}.")), "{c}");
        c
    }
}

#[tokio::test]
async fn a_node_speaks_with_its_own_credential_and_no_other() {
    let h = Harness::with_tokens().await;
    let c1 = h.join("n1").await;
    let c2 = h.join("n2").await;
    let hb = |n: &str| post_body("/v1/agent/heartbeat", &heartbeat(n, Vec::new()));
    let poll = |n: &str| {
        post_body(
            "/v1/agent/poll",
            &PollRequest {
                node_id: node_id_of(n),
                known_version: 0,
                delta: false,
            },
        )
    };
    h.as_(&c1, hb("n1")).await.expect(200);
    h.as_(&c1, poll("n1")).await.expect(200);
    // Another node's credential, the join token, an admin: 403.
    for token in [c2.as_str(), JOIN_TOKEN, ADMIN_TOKEN] {
        h.as_(token, hb("n1")).await.expect_error(403, "forbidden");
        h.as_(token, poll("n1"))
            .await
            .expect_error(403, "forbidden");
    }
    // A forged secret under n1's name: 401.
    let forged = format!("drover-node.n1.{}", "a".repeat(64));
    h.as_(&forged, hb("n1"))
        .await
        .expect_error(401, "unauthorized");
    // The join token cannot take over a node that has joined; its own
    // credential re-registers it, and no new credential is handed out.
    h.as_(JOIN_TOKEN, post_body("/v1/agent/register", &node("n1")))
        .await
        .expect_error(403, "forbidden");
    let again = h
        .as_(&c1, post_body("/v1/agent/register", &node("n1")))
        .await
        .expect(200);
    assert!(again.get("credential").is_none(), "{again}");
    // A credential is for the agent protocol only.
    h.get_as(&c1, "/v1/jobs")
        .await
        .expect_error(403, "forbidden");
    // The store holds the credential's hash, never the credential.
    let snapshot = h.shut_down_and_load().await;
    let stored = String::from_utf8_lossy(&snapshot["nodes/n1"]).to_string();
    assert!(stored.contains("credential_sha256"), "{stored}");
    let secret = c1.rsplit('.').next().unwrap();
    assert!(!stored.contains(secret), "{stored}");
}

#[tokio::test]
async fn a_node_cannot_report_on_another_nodes_alloc_and_the_attempt_is_counted() {
    let h = Harness::with_tokens().await;
    let c1 = h.join("n1").await;
    let c2 = h.join("n2").await;
    let job = spec_with("render", 1, json!({"constraints": {"labels": {}}}));
    h.as_(ADMIN_TOKEN, post_body("/v1/jobs", &job))
        .await
        .expect(201);
    h.schedule().await;
    let task = h
        .get_as(ADMIN_TOKEN, "/v1/tasks/render/0")
        .await
        .expect(200);
    let owner = task["attempts"][0]["node"].as_str().unwrap().to_string();
    let (owner_c, other, other_c) = if owner == "n1" {
        (&c1, "n2", &c2)
    } else {
        (&c2, "n1", &c1)
    };
    h.as_(
        owner_c,
        post_body(
            "/v1/agent/heartbeat",
            &heartbeat(
                &owner,
                vec![update("render/0/1", AllocState::Running, None)],
            ),
        ),
    )
    .await
    .expect(200);
    // The other node claims the alloc succeeded: refused, and counted.
    let forged = heartbeat(
        other,
        vec![update("render/0/1", AllocState::Succeeded, Some(0))],
    );
    h.as_(other_c, post_body("/v1/agent/heartbeat", &forged))
        .await
        .expect(200);
    let alloc = h
        .get_as(ADMIN_TOKEN, "/v1/allocs/render/0/1")
        .await
        .expect(200);
    assert_eq!(alloc["state"], "running", "{alloc}");
    let metrics = h.get("/metrics").await.text();
    assert!(
        metrics.contains("drover_rejected_agent_updates_total{reason=\"foreign_alloc\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_revoked_node_is_down_its_work_moves_and_its_credential_is_dead() {
    let h = Harness::with_tokens().await;
    let c1 = h.join("n1").await;
    h.as_(ADMIN_TOKEN, post_body("/v1/jobs", &spec("render", 1)))
        .await
        .expect(201);
    h.schedule().await;
    // Only an admin may revoke.
    let revoke = || {
        warp::test::request()
            .method("POST")
            .path("/v1/nodes/n1/revoke")
    };
    h.as_(SUBMITTER_TOKEN, revoke())
        .await
        .expect_error(403, "forbidden");
    let n = h.as_(ADMIN_TOKEN, revoke()).await.expect(200);
    assert_eq!(
        (n["state"].as_str(), n["revoked"].as_bool()),
        (Some("down"), Some(true)),
        "{n}"
    );
    let alloc = h
        .get_as(ADMIN_TOKEN, "/v1/allocs/render/0/1")
        .await
        .expect(200);
    assert_eq!(alloc["state"], "lost", "{alloc}");
    let hb = post_body("/v1/agent/heartbeat", &heartbeat("n1", Vec::new()));
    h.as_(&c1, hb).await.expect_error(403, "forbidden");
    h.as_(&c1, post_body("/v1/agent/register", &node("n1")))
        .await
        .expect_error(403, "forbidden");
    h.as_(JOIN_TOKEN, post_body("/v1/agent/register", &node("n1")))
        .await
        .expect_error(403, "forbidden");
    // The revocation is stored: a restarted master still refuses it.
    let h = h.restart().await;
    let hb = post_body("/v1/agent/heartbeat", &heartbeat("n1", Vec::new()));
    h.as_(&c1, hb).await.expect_error(403, "forbidden");
    let n = h.get_as(ADMIN_TOKEN, "/v1/nodes/n1").await.expect(200);
    assert_eq!(n["state"], "down", "{n}");
}

// ---------------------------------------------------------------------------
// Job ownership
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_submitter_changes_only_its_own_jobs_and_an_admin_any() {
    let h = Harness::with_tokens().await;
    h.as_(SUBMITTER_TOKEN, post_body("/v1/jobs", &spec("mine", 1)))
        .await
        .expect(201);
    let job = h.get_as(READER_TOKEN, "/v1/jobs/mine").await.expect(200);
    assert_eq!(job["owner"], "ci", "{job}");
    let listed = h.get_as(READER_TOKEN, "/v1/jobs").await.expect(200);
    assert_eq!(listed[0]["owner"], "ci", "{listed}");

    // Another submitter may neither update, stop nor purge it.
    let err = h
        .as_(
            OTHER_SUBMITTER_TOKEN,
            post_body("/v1/jobs", &spec("mine", 2)),
        )
        .await
        .expect_error(403, "forbidden");
    assert!(
        err["message"].as_str().unwrap().contains("belongs to ci"),
        "{err}"
    );
    for path in ["/v1/jobs/mine", "/v1/jobs/mine?purge=true"] {
        h.as_(
            OTHER_SUBMITTER_TOKEN,
            warp::test::request().method("DELETE").path(path),
        )
        .await
        .expect_error(403, "forbidden");
    }
    let job = h.get_as(READER_TOKEN, "/v1/jobs/mine").await.expect(200);
    assert_eq!(
        (job["version"].as_u64(), job["state"].as_str()),
        (Some(1), Some("pending")),
        "{job}"
    );

    // Its owner may; an admin may too, and taking over keeps the owner.
    h.as_(SUBMITTER_TOKEN, post_body("/v1/jobs", &spec("mine", 2)))
        .await
        .expect(200);
    h.as_(ADMIN_TOKEN, post_body("/v1/jobs", &spec("mine", 3)))
        .await
        .expect(200);
    let job = h.get_as(READER_TOKEN, "/v1/jobs/mine").await.expect(200);
    assert_eq!(
        (job["version"].as_u64(), job["owner"].as_str()),
        (Some(3), Some("ci")),
        "{job}"
    );
    h.as_(
        SUBMITTER_TOKEN,
        warp::test::request().method("DELETE").path("/v1/jobs/mine"),
    )
    .await
    .expect(200);
    h.as_(
        ADMIN_TOKEN,
        warp::test::request()
            .method("DELETE")
            .path("/v1/jobs/mine?purge=true"),
    )
    .await
    .expect(200);
}

// ---------------------------------------------------------------------------
// Quantities and the master's arithmetic
// ---------------------------------------------------------------------------

mod arithmetic {
    use super::*;
    use proptest::prelude::*;

    /// CPU as people and fuzzers write it: cores, millicores, decimals,
    /// huge numbers, bare JSON numbers.
    fn cpu() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u64>().prop_map(|n| json!(format!("{n}m"))),
            any::<u64>().prop_map(|n| json!(n.to_string())),
            (any::<u32>(), any::<u32>()).prop_map(|(a, b)| json!(format!("{a}.{b}"))),
            (1u64..=70_000).prop_map(|n| json!(n)),
            (1u64..=70_000_000).prop_map(|n| json!(format!("{n}m"))),
        ]
    }

    fn memory() -> impl Strategy<Value = Value> {
        let suffix = prop_oneof![
            Just(""),
            Just("Ki"),
            Just("Mi"),
            Just("Gi"),
            Just("Ti"),
            Just("Pi"),
            Just("Ei"),
            Just("k"),
            Just("M"),
            Just("G"),
            Just("T"),
            Just("P"),
        ];
        prop_oneof![
            (any::<u64>(), suffix.clone()).prop_map(|(n, s)| json!(format!("{n}{s}"))),
            (1u64..=2048, suffix).prop_map(|(n, s)| json!(format!("{n}{s}"))),
            any::<u64>().prop_map(|n| json!(n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Whatever quantity a spec holds and whatever capacity nodes
        /// report, the master's sums (held per node, capacity, the cluster
        /// summary) neither panic nor wrap: a spec is refused with a 400, or
        /// placed within capacity.
        #[test]
        fn no_parseable_quantity_overflows_the_masters_arithmetic(
            cpu in cpu(),
            memory in memory(),
            count in 1u32..=40,
            caps in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..=3),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let h = Harness::new().await;
                for (i, (cpu_millis, memory_bytes)) in caps.iter().enumerate() {
                    let mut n = node(&format!("n{i}"));
                    n.desc.resources.cpu_millis = *cpu_millis;
                    n.desc.resources.memory_bytes = *memory_bytes;
                    h.register(&n).await.expect(200);
                }
                h.get("/v1/cluster").await.expect(200);
                let job = spec_with(
                    "q",
                    count,
                    json!({"resources": {"cpu": cpu, "memory": memory}}),
                );
                let r = h.submit(&job).await;
                match r.status.as_u16() {
                    201 => {}
                    400 => return,
                    other => panic!("{other}: {}", r.text()),
                }
                h.schedule().await;
                let c = h.get("/v1/cluster").await.expect(200);
                for res in ["cpu_millis", "memory_bytes"] {
                    let (alloc, cap) = (c["allocated"][res].as_u64(), c["capacity"][res].as_u64());
                    assert!(alloc <= cap, "{res}: {alloc:?} > {cap:?}: {c}");
                }
                h.get("/v1/nodes").await.expect(200);
                h.get("/v1/jobs/q/tasks").await.expect(200);
            });
        }
    }
}

#[tokio::test]
async fn a_revoked_node_stays_down_with_authentication_off_too() {
    let h = Harness::new().await;
    h.add_node("n1").await;
    h.post_json("/v1/nodes/n1/revoke", &json!({}))
        .await
        .expect(200);
    h.report("n1", Vec::new())
        .await
        .expect_error(403, "forbidden");
    h.register(&node("n1")).await.expect_error(403, "forbidden");
    let n = h.get("/v1/nodes/n1").await.expect(200);
    assert_eq!(
        (n["state"].as_str(), n["revoked"].as_bool()),
        (Some("down"), Some(true)),
        "{n}"
    );
}
