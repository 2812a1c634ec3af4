//! The REST API (DESIGN §5) and the agent protocol endpoints (§6), on warp.
//!
//! Every error is `{"error": {"code", "message"}}` with a proper status;
//! bad input is rejected before anything is staged, let alone stored.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use drover_api::protocol::{HeartbeatRequest, PollRequest, RegisterRequest, PROTOCOL_VERSION};
use drover_api::{AllocId, JobId, JobSpec, JobState, NodeId, SpecError, TaskId, TaskState};
use scheduler_policies::{registry, Decision, TaskRequest};
use serde::{Deserialize, Serialize};
use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::auth::{Auth, AuthError, Role};
use crate::core::{CommitError, Master};
use crate::lifecycle::{self, Submitted};
use crate::logs::{self, LogError, LogQuery};
use crate::model::{AllocRecord, JobRecord, NodeRecord, NodeState, TaskCounts, TaskRecord};
use crate::role::{Front, Role as ServingRole};
use crate::state::{Cluster, Held, Txn};
use crate::view::{build_view, demand_of, task_request};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: Option<serde_json::Value>,
    retry_after: Option<u64>,
    www_authenticate: Option<&'static str>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: None,
            retry_after: None,
            www_authenticate: None,
        }
    }

    fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn spec(err: SpecError) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_spec", err.to_string());
        let fields: Vec<_> = err
            .field_errors()
            .iter()
            .map(|f| json!({"path": f.path, "message": f.message}))
            .collect();
        if !fields.is_empty() {
            e.fields = Some(serde_json::Value::Array(fields));
        }
        e
    }

    /// This master does not lead. 503 rather than a redirect: clients and
    /// agents hold every master's address and move on to the next on a
    /// 5xx, and a redirect could not carry a request body safely anyway.
    fn not_leader(leader: Option<&str>) -> Self {
        let message = match leader {
            Some(l) => format!("this master is a follower; the leader is {l}"),
            None => "this master is a follower and no leader is elected yet".to_string(),
        };
        ApiError::retry_soon("not_leader", message)
    }

    /// 503 with `Retry-After: 1`: nothing was done; the same request may
    /// succeed in a moment (here or, for a client with several addresses,
    /// at another master).
    fn retry_soon(code: &'static str, message: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after = Some(1);
        e
    }

    fn auth(err: AuthError) -> Self {
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut e = ApiError::new(status, err.code(), err.to_string());
        e.www_authenticate = err.www_authenticate();
        e
    }

    fn into_response(self) -> Response {
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if let Some(fields) = self.fields {
            body["error"]["fields"] = fields;
        }
        let mut resp =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        if let Some(v) = self.www_authenticate {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static(v));
        }
        resp
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> Self {
        if let CommitError::Conflict(msg) = e {
            return ApiError::new(StatusCode::CONFLICT, "conflict", msg);
        }
        tracing::warn!(error = %e, "write not committed");
        ApiError::retry_soon("unavailable", e.to_string())
    }
}

type Answer = Result<Response, ApiError>;

fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

fn ok<T: Serialize>(body: &T) -> Answer {
    Ok(json_reply(StatusCode::OK, body))
}

// ---- views ----

#[derive(Debug, Serialize)]
struct JobView<'a> {
    id: &'a JobId,
    version: u64,
    state: JobState,
    #[serde(rename = "type")]
    job_type: drover_api::JobType,
    priority: u8,
    policy: &'static str,
    submitted_at_ms: u64,
    tasks: TaskCounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<&'a JobSpec>,
}

fn job_view<'a>(master: &Master, c: &Cluster, j: &'a JobRecord, with_spec: bool) -> JobView<'a> {
    JobView {
        id: &j.id,
        version: j.version,
        state: c.job_state(j),
        job_type: j.spec.job_type,
        priority: j.spec.priority,
        policy: j
            .spec
            .effective_policy(master.settings.default_policy)
            .name(),
        submitted_at_ms: j.submitted_at_ms,
        tasks: c.job_counts(&j.id),
        spec: with_spec.then_some(&j.spec),
    }
}

#[derive(Debug, Serialize)]
struct TaskView<'a> {
    id: &'a TaskId,
    state: TaskState,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting: Option<&'a String>,
    job_version: u64,
    restarts: u32,
    attempts: Vec<&'a AllocRecord>,
    history: &'a [drover_api::state::Transition<TaskState>],
}

fn task_view<'a>(c: &'a Cluster, t: &'a TaskRecord) -> TaskView<'a> {
    TaskView {
        id: &t.id,
        state: t.state,
        reason: t.reason(),
        waiting: c.wait_reasons.get(&t.id).or_else(|| {
            (t.state == TaskState::Pending)
                .then(|| c.job_wait_reasons.get(&t.id.job))
                .flatten()
        }),
        job_version: t.job_version,
        restarts: t.restarts,
        attempts: (1..=t.attempts)
            .filter_map(|a| c.allocs.get(&t.id.alloc(a)).map(|a| &**a))
            .collect(),
        history: &t.history,
    }
}

#[derive(Debug, Default, Serialize)]
struct Amounts {
    cpu_millis: u64,
    memory_bytes: u64,
    gpus: u64,
}

impl From<Held> for Amounts {
    fn from(h: Held) -> Amounts {
        Amounts {
            cpu_millis: h.cpu_millis,
            memory_bytes: h.memory_bytes,
            gpus: h.gpus,
        }
    }
}

#[derive(Debug, Serialize)]
struct NodeView<'a> {
    #[serde(flatten)]
    record: &'a NodeRecord,
    state: NodeState,
    allocatable: Amounts,
    allocated: Amounts,
    usage: Amounts,
    last_heartbeat_ms: u64,
    allocs: Vec<&'a AllocId>,
}

fn node_view<'a>(c: &'a Cluster, n: &'a NodeRecord) -> NodeView<'a> {
    let allocated = c
        .held_by_node
        .get(&n.id)
        .copied()
        .unwrap_or_default()
        .into();
    let allocs = c.live_allocs_on(&n.id).map(|a| &a.id).collect();
    let live = c.live.get(&n.id);
    NodeView {
        record: n,
        state: c.node_state(n),
        allocatable: Amounts {
            cpu_millis: n.resources.cpu_millis.saturating_sub(n.reserved.cpu_millis),
            memory_bytes: n
                .resources
                .memory_bytes
                .saturating_sub(n.reserved.memory_bytes),
            gpus: n.resources.gpus.len() as u64,
        },
        allocated,
        usage: Amounts {
            cpu_millis: live.map_or(0, |l| l.usage_cpu_millis),
            memory_bytes: live.map_or(0, |l| l.usage_memory_bytes),
            gpus: 0,
        },
        last_heartbeat_ms: live.map_or(0, |l| l.last_heartbeat_ms),
        allocs,
    }
}

// ---- handlers ----

fn parse_spec(content_type: Option<&str>, body: &[u8]) -> Result<JobSpec, ApiError> {
    let mime = content_type
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    match mime.as_str() {
        "application/json" => JobSpec::parse_json(text).map_err(ApiError::spec),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
            JobSpec::parse_yaml(text).map_err(ApiError::spec)
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type {other:?}: send application/json or application/yaml"),
        )),
    }
}

async fn submit(master: Arc<Master>, content_type: Option<String>, body: Bytes) -> Answer {
    let spec = parse_spec(content_type.as_deref(), &body)?;
    let now_ms = master.clock.wall_ms();
    let mut cluster = master.lock().await;
    let (outcome, changes) = {
        let mut txn = Txn::new(&cluster);
        let outcome = lifecycle::submit(&mut txn, spec, now_ms);
        (outcome, txn.into_changes())
    };
    let durable = master.stage(&mut cluster, changes);
    let job = cluster
        .jobs
        .get(&body_job_name(&cluster, &body, content_type.as_deref()))
        .cloned();
    let status = if outcome == Submitted::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let answer = job.map(|j| {
        let mut v =
            serde_json::to_value(job_view(&master, &cluster, &j, false)).unwrap_or_default();
        v["outcome"] = json!(match outcome {
            Submitted::Created => "created",
            Submitted::Unchanged => "unchanged",
            Submitted::Updated => "updated",
        });
        v
    });
    drop(cluster);
    // The pass may run now: its placements are staged after this write,
    // so they can never be stored without it.
    if outcome != Submitted::Unchanged {
        master.wake_scheduler();
    }
    durable.wait().await?;
    Ok(json_reply(status, &answer))
}

/// The submitted job's id (the spec parsed once already; this only re-reads
/// the name, which is valid by now).
fn body_job_name(_c: &Cluster, body: &[u8], content_type: Option<&str>) -> JobId {
    parse_spec(content_type, body)
        .map(|s| s.name)
        .unwrap_or_else(|_| JobId::new("unknown").expect("valid literal"))
}

#[derive(Debug, Serialize)]
struct PlanAnswer {
    placements: Vec<PlannedPlacement>,
    preemptions: Vec<PlannedPreemption>,
    waiting: Vec<PlannedWait>,
}

#[derive(Debug, Serialize)]
struct PlannedPlacement {
    task: TaskId,
    node: NodeId,
    gpus: Vec<u32>,
}

#[derive(Debug, Serialize)]
struct PlannedPreemption {
    victim: AllocId,
    for_task: TaskId,
}

#[derive(Debug, Serialize)]
struct PlannedWait {
    task: TaskId,
    reason: String,
}

/// Dry run: where each task would go now, or why it cannot. Writes nothing,
/// and uses a fresh policy so that round-robin's cursor is not moved.
async fn plan(master: Arc<Master>, content_type: Option<String>, body: Bytes) -> Answer {
    let spec = parse_spec(content_type.as_deref(), &body)?;
    let cluster = master.lock().await;
    let txn = Txn::new(&cluster);
    let view = build_view(&txn);
    let demand = Arc::new(demand_of(&spec));
    // Queued after everything already waiting, as a real submission would be.
    let queue: Vec<TaskRequest> = (0..spec.task_count())
        .map(|i| task_request(&spec, i, u64::MAX, &demand))
        .collect();
    let mut policy = registry::build(spec.effective_policy(master.settings.default_policy));
    let mut answer = PlanAnswer {
        placements: Vec::new(),
        preemptions: Vec::new(),
        waiting: Vec::new(),
    };
    for d in policy.schedule(&view, &queue) {
        match d {
            Decision::Place { task, node, gpus } => {
                answer
                    .placements
                    .push(PlannedPlacement { task, node, gpus })
            }
            Decision::Preempt { victim, for_task } => answer
                .preemptions
                .push(PlannedPreemption { victim, for_task }),
            Decision::Wait { task, reason } => answer.waiting.push(PlannedWait { task, reason }),
        }
    }
    ok(&answer)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListJobs {
    state: Option<String>,
}

async fn list_jobs(master: Arc<Master>, q: ListJobs) -> Answer {
    let wanted = match q.state.as_deref() {
        None => None,
        Some(s) => Some(
            s.parse::<JobState>()
                .map_err(|e| ApiError::bad_request(format!("state: {e}")))?,
        ),
    };
    let cluster = master.lock().await;
    let jobs: Vec<_> = cluster
        .jobs
        .values()
        .map(|j| job_view(&master, &cluster, j, false))
        .filter(|v| wanted.is_none_or(|w| v.state == w))
        .collect();
    ok(&jobs)
}

fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::new(raw).map_err(|_| ApiError::not_found(format!("job {raw:?}")))
}

async fn get_job(master: Arc<Master>, id: String) -> Answer {
    let id = job_id(&id)?;
    let cluster = master.lock().await;
    let job = cluster
        .jobs
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))?;
    ok(&job_view(&master, &cluster, job, true))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopQuery {
    #[serde(default)]
    purge: bool,
}

async fn stop_job(master: Arc<Master>, id: String, q: StopQuery) -> Answer {
    let id = job_id(&id)?;
    let now_ms = master.clock.wall_ms();
    let mut cluster = master.lock().await;
    if !cluster.jobs.contains_key(&id) {
        return Err(ApiError::not_found(format!("job {id}")));
    }
    let changes = {
        let mut txn = Txn::new(&cluster);
        if q.purge {
            lifecycle::purge(&mut txn, &id, now_ms);
        } else {
            lifecycle::stop(&mut txn, &id, now_ms);
        }
        txn.into_changes()
    };
    let durable = master.stage(&mut cluster, changes);
    let body = match cluster.jobs.get(&id) {
        Some(j) => serde_json::to_value(job_view(&master, &cluster, j, false)).unwrap_or_default(),
        None => json!({"id": id, "purged": true}),
    };
    drop(cluster);
    durable.wait().await?;
    tracing::info!(job = %id, purge = q.purge, "job stopped");
    master.wake_scheduler();
    ok(&body)
}

async fn job_tasks(master: Arc<Master>, id: String) -> Answer {
    let id = job_id(&id)?;
    let cluster = master.lock().await;
    if !cluster.jobs.contains_key(&id) {
        return Err(ApiError::not_found(format!("job {id}")));
    }
    let tasks: Vec<_> = cluster
        .tasks_of(&id)
        .map(|t| task_view(&cluster, t))
        .collect();
    ok(&tasks)
}

fn task_id(job: &str, index: &str) -> Result<TaskId, ApiError> {
    format!("{job}/{index}")
        .parse()
        .map_err(|_| ApiError::not_found(format!("task {job}/{index}")))
}

async fn get_task(master: Arc<Master>, job: String, index: String) -> Answer {
    let id = task_id(&job, &index)?;
    let cluster = master.lock().await;
    let task = cluster
        .tasks
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("task {id}")))?;
    ok(&task_view(&cluster, task))
}

async fn task_logs(master: Arc<Master>, job: String, index: String, q: LogQuery) -> Answer {
    let id = task_id(&job, &index)?;
    let (alloc, log_addr) = {
        let cluster = master.lock().await;
        let task = cluster
            .tasks
            .get(&id)
            .ok_or_else(|| ApiError::not_found(format!("task {id}")))?;
        let alloc = task
            .latest_alloc()
            .ok_or_else(|| ApiError::not_found(format!("logs of {id}: it has not run yet")))?;
        let node = cluster.allocs.get(&alloc).map(|a| a.node.clone());
        let addr = node
            .and_then(|n| cluster.nodes.get(&n))
            .map(|n| n.log_addr.clone())
            .ok_or_else(|| ApiError::not_found(format!("logs of {id}: its node is gone")))?;
        (alloc, addr)
    };
    logs::proxy(&log_addr, &alloc, &q)
        .await
        .map_err(|e| match e {
            LogError::BadStream(_) => ApiError::bad_request(e.to_string()),
            LogError::NotFound(_) => ApiError::not_found(format!("logs of {alloc}")),
            LogError::Unreachable { .. } | LogError::Agent { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "agent_unavailable", e.to_string())
            }
        })
}

async fn get_alloc(master: Arc<Master>, job: String, index: String, attempt: String) -> Answer {
    let raw = format!("{job}/{index}/{attempt}");
    let id: AllocId = raw
        .parse()
        .map_err(|_| ApiError::not_found(format!("alloc {raw}")))?;
    let cluster = master.lock().await;
    let alloc = cluster
        .allocs
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("alloc {id}")))?;
    ok(&**alloc)
}

async fn list_nodes(master: Arc<Master>) -> Answer {
    let cluster = master.lock().await;
    let nodes: Vec<_> = cluster
        .nodes
        .values()
        .map(|n| node_view(&cluster, n))
        .collect();
    ok(&nodes)
}

fn node_id(raw: &str) -> Result<NodeId, ApiError> {
    NodeId::new(raw).map_err(|_| ApiError::not_found(format!("node {raw:?}")))
}

async fn get_node(master: Arc<Master>, id: String) -> Answer {
    let id = node_id(&id)?;
    let cluster = master.lock().await;
    let node = cluster
        .nodes
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("node {id}")))?;
    ok(&node_view(&cluster, node))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    enable: bool,
    #[serde(default)]
    deadline: Option<String>,
}

async fn drain(master: Arc<Master>, id: String, req: DrainRequest) -> Answer {
    let id = node_id(&id)?;
    let deadline = match req.deadline.as_deref() {
        None => Duration::from_secs(3600),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            ApiError::bad_request(format!("deadline: {s:?} is not a duration: {e}"))
        })?,
    };
    match master.set_drain(&id, req.enable, deadline).await? {
        None => Err(ApiError::not_found(format!("node {id}"))),
        Some(_) => {
            let cluster = master.lock().await;
            let node = cluster
                .nodes
                .get(&id)
                .ok_or_else(|| ApiError::not_found(format!("node {id}")))?;
            ok(&node_view(&cluster, node))
        }
    }
}

/// Cluster-wide numbers; also what `/metrics` gauges show.
#[derive(Debug, Serialize)]
struct ClusterSummary {
    nodes: BTreeMap<&'static str, u64>,
    jobs: BTreeMap<&'static str, u64>,
    tasks: BTreeMap<&'static str, u64>,
    capacity: Amounts,
    allocated: Amounts,
    queue_depth: u64,
    leader: String,
    store_backend: &'static str,
}

fn summarize(master: &Master, c: &Cluster, leader: &str) -> ClusterSummary {
    let mut s = ClusterSummary {
        nodes: NodeState::ALL.iter().map(|n| (n.name(), 0)).collect(),
        jobs: JobState::ALL.iter().map(|j| (j.name(), 0)).collect(),
        tasks: TaskState::ALL.iter().map(|t| (t.name(), 0)).collect(),
        capacity: Amounts::default(),
        allocated: Amounts::default(),
        queue_depth: c.pending.len() as u64,
        leader: leader.to_string(),
        store_backend: master.backend(),
    };
    for n in c.nodes.values() {
        let state = c.node_state(n);
        *s.nodes.entry(state.name()).or_default() += 1;
        if state != NodeState::Down {
            s.capacity.cpu_millis += n.resources.cpu_millis.saturating_sub(n.reserved.cpu_millis);
            s.capacity.memory_bytes += n
                .resources
                .memory_bytes
                .saturating_sub(n.reserved.memory_bytes);
            s.capacity.gpus += n.resources.gpus.len() as u64;
        }
        if let Some(h) = c.held_by_node.get(&n.id) {
            s.allocated.cpu_millis += h.cpu_millis;
            s.allocated.memory_bytes += h.memory_bytes;
            s.allocated.gpus += h.gpus;
        }
    }
    for j in c.jobs.values() {
        *s.jobs.entry(c.job_state(j).name()).or_default() += 1;
    }
    for counts in c.counts.values() {
        for (state, n) in &counts.0 {
            *s.tasks.entry(state.name()).or_default() += u64::from(*n);
        }
    }
    s
}

async fn cluster_summary(master: Arc<Master>, leader: Arc<String>) -> Answer {
    let cluster = master.lock().await;
    ok(&summarize(&master, &cluster, &leader))
}

async fn metrics(front: Front) -> Response {
    let m = &front.metrics;
    match front.role() {
        ServingRole::Leader(master) => {
            let s = {
                let cluster = master.lock().await;
                summarize(&master, &cluster, &front.advertise)
            };
            for (state, n) in &s.nodes {
                m.nodes.with_label_values(&[state]).set(*n as f64);
            }
            for (state, n) in &s.jobs {
                m.jobs.with_label_values(&[state]).set(*n as f64);
            }
            for (state, n) in &s.tasks {
                m.tasks.with_label_values(&[state]).set(*n as f64);
            }
            for (g, a) in [(&m.capacity, &s.capacity), (&m.allocated, &s.allocated)] {
                g.with_label_values(&["cpu"]).set(a.cpu_millis as f64);
                g.with_label_values(&["memory"]).set(a.memory_bytes as f64);
                g.with_label_values(&["gpu"]).set(a.gpus as f64);
            }
            m.queue_depth.set(s.queue_depth as f64);
        }
        ServingRole::Follower { .. } => {
            // A follower knows nothing of the cluster: it reports no
            // cluster gauges rather than the last ones it led with, so a
            // sum over masters counts the leader's alone.
            for g in [&m.nodes, &m.jobs, &m.tasks, &m.capacity, &m.allocated] {
                g.reset();
            }
            m.queue_depth.set(0.0);
        }
    }
    let mut resp = m.render().into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn register(master: Arc<Master>, req: RegisterRequest) -> Answer {
    if req.protocol != PROTOCOL_VERSION {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "protocol_mismatch",
            format!(
                "agent speaks protocol {}, this master {PROTOCOL_VERSION}",
                req.protocol
            ),
        ));
    }
    ok(&master.register(req).await?)
}

async fn heartbeat(master: Arc<Master>, req: HeartbeatRequest) -> Answer {
    ok(&master.heartbeat(req).await?)
}

async fn poll(master: Arc<Master>, req: PollRequest) -> Answer {
    match master.poll(&req.node_id, req.known_version, req.delta).await {
        Some(answer) => ok(&answer),
        None => Err(ApiError::retry_soon(
            "unavailable",
            "this master cannot answer for now (stopping, no longer leading, or reloading after a failed write); poll again",
        )),
    }
}

// ---- wiring ----

fn answer(a: Answer) -> Response {
    a.unwrap_or_else(ApiError::into_response)
}

fn json_body<T: serde::de::DeserializeOwned + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::body::content_length_limit(limit).and(warp::body::json())
}

/// Turns warp's own rejections into JSON errors with the right status.
async fn recover(err: Rejection) -> Result<Response, Infallible> {
    let e = if err.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if let Some(e) = err.find::<ApiError>() {
        ApiError {
            status: e.status,
            code: e.code,
            message: e.message.clone(),
            fields: e.fields.clone(),
            retry_after: e.retry_after,
            www_authenticate: e.www_authenticate,
        }
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
    } else if err.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send a Content-Length header",
        )
    } else if err.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json",
        )
    } else if let Some(e) = err.find::<warp::filters::body::BodyDeserializeError>() {
        ApiError::bad_request(format!("invalid body: {e}"))
    } else if let Some(e) = err.find::<warp::reject::InvalidQuery>() {
        ApiError::bad_request(format!("invalid query: {e}"))
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    } else if let Some(e) = err.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(e.to_string())
    } else {
        tracing::error!(?err, "unhandled rejection");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    };
    Ok(e.into_response())
}

/// A bounded route label for metrics: ids replaced by placeholders.
pub fn route_label(method: &str, path: &str) -> String {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let pattern = match segs.as_slice() {
        ["v1", "jobs"] => "/v1/jobs",
        ["v1", "jobs", "plan"] => "/v1/jobs/plan",
        ["v1", "jobs", _] => "/v1/jobs/{id}",
        ["v1", "jobs", _, "tasks"] => "/v1/jobs/{id}/tasks",
        ["v1", "tasks", _, _] => "/v1/tasks/{id}",
        ["v1", "tasks", _, _, "logs"] => "/v1/tasks/{id}/logs",
        ["v1", "allocs", _, _, _] => "/v1/allocs/{id}",
        ["v1", "nodes"] => "/v1/nodes",
        ["v1", "nodes", _] => "/v1/nodes/{id}",
        ["v1", "nodes", _, "drain"] => "/v1/nodes/{id}/drain",
        ["v1", "cluster"] => "/v1/cluster",
        ["v1", "status", "leader"] => "/v1/status/leader",
        ["v1", "agent", "register"] => "/v1/agent/register",
        ["v1", "agent", "heartbeat"] => "/v1/agent/heartbeat",
        ["v1", "agent", "poll"] => "/v1/agent/poll",
        ["metrics"] => "/metrics",
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        _ => "other",
    };
    // Methods are bounded too: a client may send any token as a method.
    let method = match method {
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" => method,
        _ => "OTHER",
    };
    format!("{method} {pattern}")
}

/// Every route of a master that always leads with `master` (the embedded
/// store, tests). `leader` is the address this master advertises.
pub fn routes(
    master: Arc<Master>,
    auth: Arc<Auth>,
    leader: String,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    front_routes(Front::leader(master, leader), auth)
}

/// Every route, with auth, body limits, JSON errors and request metrics,
/// answered as `front`'s role is at each request: the cluster API needs the
/// leader; `/healthz`, `/readyz`, `/metrics` and `/v1/status/leader` answer
/// in either role.
pub fn front_routes(
    front: Front,
    auth: Arc<Auth>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    let leader = Arc::clone(&front.advertise);
    let limit = front.max_body_bytes;
    let m = {
        let front = front.clone();
        warp::any().and_then(move || {
            let role = front.role();
            async move {
                match role {
                    ServingRole::Leader(master) => Ok(master),
                    ServingRole::Follower { leader } => Err(warp::reject::custom(
                        ApiError::not_leader(leader.as_deref()),
                    )),
                }
            }
        })
    };
    let lead = {
        let leader = Arc::clone(&leader);
        warp::any().map(move || Arc::clone(&leader))
    };
    let current = {
        let front = front.clone();
        warp::any().map(move || front.clone())
    };
    let allow = move |role: Role| {
        let auth = Arc::clone(&auth);
        warp::header::optional::<String>("authorization")
            .and_then(move |h: Option<String>| {
                let auth = Arc::clone(&auth);
                async move {
                    auth.check(h.as_deref(), role)
                        .map(|_| ())
                        .map_err(|e| warp::reject::custom(ApiError::auth(e)))
                }
            })
            .untuple_one()
    };
    let body = warp::body::content_length_limit(limit).and(warp::body::bytes());
    let ctype = warp::header::optional::<String>("content-type");

    let submit = warp::path!("v1" / "jobs")
        .and(warp::post())
        .and(allow(Role::Submitter))
        .and(m.clone())
        .and(ctype)
        .and(body)
        .then(submit)
        .map(answer)
        .boxed();
    let plan = warp::path!("v1" / "jobs" / "plan")
        .and(warp::post())
        .and(allow(Role::Submitter))
        .and(m.clone())
        .and(ctype)
        .and(body)
        .then(plan)
        .map(answer)
        .boxed();
    let list = warp::path!("v1" / "jobs")
        .and(warp::get())
        .and(allow(Role::Reader))
        .and(m.clone())
        .and(warp::query::<ListJobs>())
        .then(list_jobs)
        .map(answer)
        .boxed();
    let get = warp::path!("v1" / "jobs" / String)
        .and(warp::get())
        .and(allow(Role::Reader))
        .and(m.clone())
        .then(|id, m| get_job(m, id))
        .map(answer)
        .boxed();
    let stop = warp::path!("v1" / "jobs" / String)
        .and(warp::delete())
        .and(allow(Role::Submitter))
        .and(m.clone())
        .and(warp::query::<StopQuery>())
        .then(|id, m, q| stop_job(m, id, q))
        .map(answer)
        .boxed();
    let tasks = warp::path!("v1" / "jobs" / String / "tasks")
        .and(warp::get())
        .and(allow(Role::Reader))
        .and(m.clone())
        .then(|id, m| job_tasks(m, id))
        .map(answer)
        .boxed();
    let task = warp::path!("v1" / "tasks" / String / String)
        .and(warp::get())
        .and(allow(Role::Reader))
        .and(m.clone())
        .then(|j, i, m| get_task(m, j, i))
        .map(answer)
        .boxed();
    let logs = warp::path!("v1" / "tasks" / String / String / "logs")
        .and(warp::get())
        .and(allow(Role::Reader))
        .and(m.clone())
        .and(warp::query::<LogQuery>())
        .then(|j, i, m, q| task_logs(m, j, i, q))
        .map(answer)
        .boxed();
    let alloc = warp::path!("v1" / "allocs" / String / String / String)
        .and(warp::get())
        .and(allow(Role::Reader))
        .and(m.clone())
        .then(|j, i, a, m| get_alloc(m, j, i, a))
        .map(answer)
        .boxed();
    let nodes = warp::path!("v1" / "nodes")
        .and(warp::get())
        .and(allow(Role::Reader))
        .and(m.clone())
        .then(list_nodes)
        .map(answer)
        .boxed();
    let node = warp::path!("v1" / "nodes" / String)
        .and(warp::get())
        .and(allow(Role::Reader))
        .and(m.clone())
        .then(|id, m| get_node(m, id))
        .map(answer)
        .boxed();
    let drain = warp::path!("v1" / "nodes" / String / "drain")
        .and(warp::post())
        .and(allow(Role::Admin))
        .and(m.clone())
        .and(json_body(limit))
        .then(|id, m, req| drain(m, id, req))
        .map(answer)
        .boxed();
    let cluster = warp::path!("v1" / "cluster")
        .and(warp::get())
        .and(allow(Role::Reader))
        .and(m.clone())
        .and(lead.clone())
        .then(cluster_summary)
        .map(answer)
        .boxed();
    let leader_route = warp::path!("v1" / "status" / "leader")
        .and(warp::get())
        .and(allow(Role::Reader))
        .and(current.clone())
        .map(|f: Front| match f.role() {
            ServingRole::Leader(_) => json_reply(StatusCode::OK, &json!({"leader": *f.advertise})),
            ServingRole::Follower { leader: Some(l) } => {
                json_reply(StatusCode::OK, &json!({"leader": l}))
            }
            ServingRole::Follower { leader: None } => ApiError::not_leader(None).into_response(),
        })
        .boxed();
    // Agents are infrastructure: their token needs the admin role.
    let reg = warp::path!("v1" / "agent" / "register")
        .and(warp::post())
        .and(allow(Role::Admin))
        .and(m.clone())
        .and(json_body(limit))
        .then(register)
        .map(answer)
        .boxed();
    let hb = warp::path!("v1" / "agent" / "heartbeat")
        .and(warp::post())
        .and(allow(Role::Admin))
        .and(m.clone())
        .and(json_body(limit))
        .then(heartbeat)
        .map(answer)
        .boxed();
    let pl = warp::path!("v1" / "agent" / "poll")
        .and(warp::post())
        .and(allow(Role::Admin))
        .and(m.clone())
        .and(json_body(limit))
        .then(poll)
        .map(answer)
        .boxed();
    let metrics_route = warp::path!("metrics")
        .and(warp::get())
        .and(current.clone())
        .then(metrics)
        .boxed();
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &json!({"status": "ok"})))
        .boxed();
    // Ready means "send me API traffic": only the leader is. A follower is
    // healthy (`/healthz`) but not ready, so a load balancer skips it.
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(current)
        .map(|f: Front| match f.role() {
            ServingRole::Leader(_) => {
                json_reply(StatusCode::OK, &json!({"ready": true, "role": "leader"}))
            }
            ServingRole::Follower { leader } => json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"ready": false, "role": "follower", "leader": leader}),
            ),
        })
        .boxed();

    // Boxed one by one: a 19-deep chain of unboxed warp filters takes
    // rustc many minutes to type-check.
    let all: Vec<BoxedFilter<(Response,)>> = vec![
        submit,
        plan,
        list,
        get,
        stop,
        tasks,
        task,
        logs,
        alloc,
        nodes,
        node,
        drain,
        cluster,
        leader_route,
        reg,
        hb,
        pl,
        metrics_route,
        healthz,
        readyz,
    ];
    let api = all
        .into_iter()
        .reduce(|a, b| a.or(b).unify().boxed())
        .expect("the route list is not empty");

    let metrics = front.metrics.clone();
    warp::method()
        .and(warp::path::full())
        .and(warp::any().map(Instant::now))
        .and(api.recover(recover).unify())
        .map(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  started: Instant,
                  resp: Response| {
                let route = route_label(method.as_str(), path.as_str());
                let code = resp.status().as_u16().to_string();
                let m = &metrics;
                m.http_requests
                    .with_label_values(&[route.as_str(), code.as_str()])
                    .inc();
                m.http_duration
                    .with_label_values(&[route.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                resp
            },
        )
}
