//! Simulated agents: a load generator for the master (issue 9).
//!
//! [`Sim`] runs many fake nodes in this one process. Each speaks the real
//! agent protocol (DESIGN §6) over real HTTP to a real master: it registers
//! with made-up resources, heartbeats at the interval the master asks for,
//! and long-polls for its assignments. A new assignment is reported
//! `running` at once (an early heartbeat, as the real agent sends on every
//! status change) and, `task_duration` after it arrived but never before
//! that report was acknowledged, `succeeded` with exit code 0. No process
//! is started.
//!
//! Along the way the simulation checks the master's promises and records
//! every breach as an error:
//! - no node is ever over-committed: the CPU, memory and GPUs of the allocs
//!   it was assigned and has not yet ended stay within its capacity less
//!   its reserve (an alloc's resources count as free from the moment the
//!   report that ends it is sent);
//! - no task is placed twice: a task gets a second alloc only after the
//!   master took the first one away (preemption, elastic give-back). The
//!   simulation never fails a task, so any other second alloc is a
//!   duplicate.
//!
//! [`MasterProcess`] starts a `drover-master` binary with a generated config
//! for the simulation to drive, and reads its memory and CPU time from
//! `/proc`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use drover_api::protocol::{
    AllocUpdate, AllocUsage, Assignment, Desired, GpuDevice, HeartbeatRequest, HeartbeatResponse,
    NodeDescriptor, NodeResources, NodeUsage, Offer, PollRequest, PollResponse, RegisterRequest,
    RegisterResponse, Reserved, HEARTBEAT_PATH, POLL_PATH, PROTOCOL_VERSION, REGISTER_PATH,
};
use drover_api::{AllocId, AllocState, NodeId};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// Kept back on every simulated node, as an agent's `reserved` setting.
pub const RESERVED: Reserved = Reserved {
    cpu_millis: 500,
    memory_bytes: GIB,
};

/// The made-up GPU model of the simulated nodes.
pub const GPU_MODEL: &str = "Drover Sim GPU 80GB";

/// How long one heartbeat or registration may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// At most this many errors are kept in words; the rest are counted.
const MAX_ERRORS_KEPT: usize = 50;

// ---------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------

/// What simulated node `i` offers: 8, 16 or 32 CPUs; 32, 64 or 128 GiB;
/// one node in four with fake GPUs (4 or 8); zones a, b, c.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeShape {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    pub zone: &'static str,
}

impl NodeShape {
    pub fn of(i: usize) -> NodeShape {
        NodeShape {
            cpu_millis: [8_000, 16_000, 32_000][i % 3],
            memory_bytes: [32, 64, 128][(i / 3) % 3] * GIB,
            gpus: match i % 8 {
                3 => 4,
                7 => 8,
                _ => 0,
            },
            zone: ["a", "b", "c"][(i / 9) % 3],
        }
    }

    /// What the scheduler may hand out: capacity less [`RESERVED`].
    pub fn allocatable(&self) -> (u64, u64) {
        (
            self.cpu_millis.saturating_sub(RESERVED.cpu_millis),
            self.memory_bytes.saturating_sub(RESERVED.memory_bytes),
        )
    }

    fn resources(&self) -> NodeResources {
        NodeResources {
            cpu_millis: self.cpu_millis,
            memory_bytes: self.memory_bytes,
            gpus: (0..self.gpus)
                .map(|index| GpuDevice {
                    index,
                    uuid: format!("GPU-sim-{index}"),
                    model: GPU_MODEL.to_string(),
                    memory_bytes: 80 * GIB,
                })
                .collect(),
        }
    }
}

/// One job of the simulated workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPlan {
    pub name: String,
    pub tasks: u32,
    pub policy: &'static str,
    pub priority: u8,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u32,
    /// The spec as submitted (YAML).
    pub spec: String,
}

/// `tasks` tasks in `jobs` jobs (sizes differ by at most one), named
/// `<prefix>-0`, `<prefix>-1`, …, cycling through the four policies: least-loaded,
/// round-robin, priority (priorities 10..=90), and elastic-sharding
/// (`shards`, `elastic: {min: 2, max: shards/2}`). Tasks ask for 50m–500m
/// CPU and 64–512 MiB; with `gpus`, one job in eight (round-robin ones)
/// asks for a GPU. Tasks never fail (`restart: {attempts: 0}`).
pub fn plan_jobs(prefix: &str, tasks: u32, jobs: u32, gpus: bool) -> Vec<JobPlan> {
    let jobs = jobs.clamp(1, tasks.max(1));
    let (per, extra) = (tasks / jobs, tasks % jobs);
    (0..jobs)
        .map(|j| {
            let n = per + u32::from(j < extra);
            let (policy, priority) = match j % 4 {
                0 => ("least-loaded", 50),
                1 => ("round-robin", 50),
                2 => ("priority", 10 + u8::try_from(j * 37 % 81).unwrap_or(0)),
                _ => ("elastic-sharding", 50),
            };
            let cpu_millis = [50, 100, 250, 500][(j as usize / 2) % 4];
            let memory_bytes = [64, 128, 256, 512][(j as usize / 3) % 4] * MIB;
            let gpu = u32::from(gpus && j % 8 == 5);
            let name = format!("{prefix}-{j}");
            let mut spec = format!(
                "name: {name}\ntype: batch\npriority: {priority}\npolicy: {policy}\n\
                 command: [/bin/true]\nrestart: {{attempts: 0}}\n\
                 resources: {{cpu: {cpu_millis}m, memory: {}Mi, gpu: {gpu}}}\n",
                memory_bytes / MIB
            );
            if policy == "elastic-sharding" {
                let min = n.min(2);
                spec += &format!(
                    "shards: {n}\nelastic: {{min: {min}, max: {}}}\n",
                    (n / 2).max(min)
                );
            } else {
                spec += &format!("count: {n}\n");
            }
            JobPlan {
                name,
                tasks: n,
                policy,
                priority,
                cpu_millis,
                memory_bytes,
                gpus: gpu,
                spec,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------
// HTTP: one pool of kept-alive connections for every simulated node
// ---------------------------------------------------------------------------

/// HTTP/1.1 `POST`s of JSON to one master over a shared pool of kept-alive
/// connections: a call takes an idle connection or opens one, and gives it
/// back when the answer is read. 10,000 nodes' long polls hold 10,000
/// connections; heartbeats reuse whatever is idle.
///
/// Requests in flight, and so connections open, are capped at
/// `max_connections` (below the open-file limit); a request beyond waits
/// its turn. On loopback, connections are spread over the source addresses
/// 127.0.1.1–127.0.1.64 so that the 28,000 ephemeral ports of one
/// (source, destination) pair do not run out.
#[derive(Debug)]
struct Http {
    addr: SocketAddr,
    host: String,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    in_flight: Semaphore,
    opened: AtomicU64,
}

impl Http {
    async fn new(addr: &str, max_connections: usize) -> anyhow::Result<Http> {
        let host = addr.trim_start_matches("http://").trim_end_matches('/');
        let resolved = tokio::net::lookup_host(host)
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} resolves to no address"))?;
        Ok(Http {
            addr: resolved,
            host: host.to_string(),
            idle: Mutex::new(Vec::new()),
            in_flight: Semaphore::new(max_connections.max(1)),
            opened: AtomicU64::new(0),
        })
    }

    async fn connect(&self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        let socket = match self.addr.ip() {
            IpAddr::V4(ip) => {
                let s = tokio::net::TcpSocket::new_v4()?;
                if ip.is_loopback() {
                    let source = Ipv4Addr::new(127, 0, 1, 1 + (n % 64) as u8);
                    s.bind(SocketAddr::new(source.into(), 0))?;
                }
                s
            }
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        let tcp = socket
            .connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// An idle connection that is still open and ready for a request.
    async fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        loop {
            let mut sender = lock(&self.idle).pop()?;
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    async fn send(&self, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let _turn = self.in_flight.acquire().await?;
        // A pooled connection may have been closed by the master meanwhile:
        // then try another, and in the end a fresh one.
        for _ in 0..3 {
            let Some(sender) = self.take_idle().await else {
                break;
            };
            if let Ok(answer) = self.send_on(sender, path, body.clone()).await {
                return Ok(answer);
            }
        }
        let sender = self.connect().await?;
        self.send_on(sender, path, body).await
    }

    async fn send_on(
        &self,
        mut sender: SendRequest<Full<Bytes>>,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        let request = hyper::Request::post(path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let resp = sender.send_request(request).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        if !sender.is_closed() {
            lock(&self.idle).push(sender);
        }
        Ok((status, body))
    }

    async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> anyhow::Result<Resp> {
        let body = Bytes::from(serde_json::to_vec(req)?);
        let (status, body) = tokio::time::timeout(timeout, self.send(path, body))
            .await
            .map_err(|_| anyhow!("{path}: no answer within {timeout:?}"))??;
        if !(200..300).contains(&status) {
            let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            bail!("{path}: HTTP {status}: {text}");
        }
        serde_json::from_slice(&body).with_context(|| format!("{path}: decoding the answer"))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------
// The books: every task of the plan, and what the master did with it
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    /// No alloc seen yet.
    #[default]
    Unplaced,
    /// Assigned to a node, running there (reported or about to be).
    Live,
    /// The node reported it succeeded (sent).
    Ended,
    /// The master took the alloc away (preempted, given back).
    Taken,
}

/// The latest alloc of one task.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    attempt: u32,
    node: u32,
    phase: Phase,
    /// How many allocs the task got.
    allocs: u16,
    /// Its `running` report was acknowledged (for some alloc).
    ran: bool,
    /// Its `succeeded` report was acknowledged.
    succeeded: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Tasks reported running (acknowledged) at least once.
    pub running: u64,
    /// Tasks reported succeeded (acknowledged).
    pub succeeded: u64,
}

#[derive(Debug, Default)]
struct Book {
    jobs: HashMap<String, usize>,
    slots: Vec<Vec<Slot>>,
    total: u64,
    progress: Progress,
    all_running_at: Option<Instant>,
    all_succeeded_at: Option<Instant>,
    /// New allocs of tasks whose previous alloc the master took away.
    restarts: u64,
    /// Allocs the master took away from a node while they ran.
    taken: u64,
    /// Poll answers still listing an alloc the node had already ended.
    stale: u64,
    /// The fullest any node got: its largest share of CPU, memory or GPUs.
    peak_share: f64,
    errors: Vec<String>,
    error_count: u64,
}

impl Book {
    fn error(&mut self, e: String) {
        self.error_count += 1;
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(e);
        }
    }

    fn slot(&mut self, alloc: &AllocId) -> Option<&mut Slot> {
        let j = *self.jobs.get(alloc.task.job.as_str())?;
        self.slots.get_mut(j)?.get_mut(alloc.task.index as usize)
    }
}

/// What an assignment in a poll answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A new alloc: run it.
    New,
    /// One this node already ended; the master has not processed that yet.
    Stale,
}

#[derive(Debug, Default)]
struct Counters {
    registers: AtomicU64,
    heartbeats: AtomicU64,
    /// Notified after every acknowledged heartbeat.
    beat: Notify,
    heartbeat_errors: AtomicU64,
    polls: AtomicU64,
    poll_errors: AtomicU64,
}

/// State shared by every simulated node.
#[derive(Debug)]
struct Shared {
    http: Http,
    book: Mutex<Book>,
    progress: watch::Sender<Progress>,
    counters: Counters,
    task_duration: Duration,
    poll_wait: Duration,
    /// Last transport errors, for the report (not correctness errors).
    last_transport_error: Mutex<Option<String>>,
    node_names: Vec<String>,
}

impl Shared {
    /// Books for the tasks of `plan`, and nodes named `sim-00000`, ….
    async fn new(
        addr: &str,
        nodes: usize,
        plan: &[JobPlan],
        options: &SimOptions,
    ) -> anyhow::Result<Shared> {
        let width = nodes.saturating_sub(1).to_string().len().max(5);
        let node_names: Vec<String> = (0..nodes).map(|i| format!("sim-{i:0width$}")).collect();
        let mut book = Book::default();
        for (j, job) in plan.iter().enumerate() {
            book.jobs.insert(job.name.clone(), j);
            book.slots.push(vec![Slot::default(); job.tasks as usize]);
            book.total += u64::from(job.tasks);
        }
        Ok(Shared {
            http: Http::new(addr, options.max_connections.min(fd_budget())).await?,
            book: Mutex::new(book),
            progress: watch::channel(Progress::default()).0,
            counters: Counters::default(),
            task_duration: options.task_duration,
            poll_wait: options.poll_wait,
            last_transport_error: Mutex::new(None),
            node_names,
        })
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        lock(&self.book)
    }

    fn transport_error(&self, e: &anyhow::Error) {
        *lock(&self.last_transport_error) = Some(format!("{e:#}"));
    }

    /// Classifies an alloc the master lists on `node`, recording breaches.
    fn assigned(&self, book: &mut Book, alloc: &AllocId, node: u32) -> Seen {
        let Some(slot) = book.slot(alloc) else {
            book.error(format!(
                "{alloc} assigned to {}: no such task was submitted",
                self.node_names[node as usize]
            ));
            return Seen::New;
        };
        let prev = *slot;
        if prev.phase != Phase::Unplaced && prev.attempt == alloc.attempt {
            if prev.node != node {
                let msg = format!(
                    "{alloc} assigned to two nodes: {} and {}",
                    self.node_names[prev.node as usize], self.node_names[node as usize]
                );
                book.error(msg);
                return Seen::New;
            }
            if prev.phase == Phase::Taken {
                book.error(format!(
                    "{alloc} listed on {} again after the master took it away",
                    self.node_names[node as usize]
                ));
            }
            book.stale += 1;
            return Seen::Stale;
        }
        *slot = Slot {
            attempt: alloc.attempt,
            node,
            phase: Phase::Live,
            allocs: prev.allocs.saturating_add(1),
            ran: prev.ran,
            succeeded: prev.succeeded,
        };
        let problem = match prev.phase {
            Phase::Unplaced => None,
            Phase::Taken => {
                book.restarts += 1;
                None
            }
            Phase::Live => Some(format!(
                "{alloc} assigned to {} while attempt {} still runs on {}: the task runs twice",
                self.node_names[node as usize], prev.attempt, self.node_names[prev.node as usize]
            )),
            Phase::Ended => Some(format!(
                "{alloc} assigned to {} after attempt {} succeeded on {}",
                self.node_names[node as usize], prev.attempt, self.node_names[prev.node as usize]
            )),
        };
        if let Some(p) = problem {
            book.error(p);
        }
        Seen::New
    }

    fn set_phase(book: &mut Book, alloc: &AllocId, phase: Phase) {
        if let Some(slot) = book.slot(alloc).filter(|s| s.attempt == alloc.attempt) {
            slot.phase = phase;
        }
    }

    /// The master acknowledged these reports.
    fn acknowledged(&self, updates: &[AllocUpdate]) {
        let mut book = self.book();
        let now = Instant::now();
        for u in updates {
            let Some(slot) = book.slot(&u.alloc) else {
                continue;
            };
            match u.state {
                AllocState::Running if !slot.ran => {
                    slot.ran = true;
                    book.progress.running += 1;
                    if book.progress.running == book.total {
                        book.all_running_at = Some(now);
                    }
                }
                AllocState::Succeeded if !slot.succeeded => {
                    slot.succeeded = true;
                    book.progress.succeeded += 1;
                    if book.progress.succeeded == book.total {
                        book.all_succeeded_at = Some(now);
                    }
                }
                _ => {}
            }
        }
        let p = book.progress;
        drop(book);
        self.progress.send_if_modified(|old| {
            let changed = *old != p;
            *old = p;
            changed
        });
    }
}

// ---------------------------------------------------------------------------
// One simulated node
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct LiveAlloc {
    cpu_millis: u64,
    memory_bytes: u64,
    gpus: Vec<u32>,
    seen: Instant,
}

#[derive(Debug)]
struct NodeState {
    live: BTreeMap<AllocId, LiveAlloc>,
    /// Allocs the master stopped before this node started them, reported
    /// `killed` once.
    stopped_unstarted: BTreeSet<AllocId>,
    cpu_used: u64,
    memory_used: u64,
    gpus_used: BTreeSet<u32>,
    /// Reports not yet acknowledged, oldest first.
    updates: Vec<AllocUpdate>,
    /// When each running alloc (its `running` acknowledged) ends.
    due: BinaryHeap<Reverse<(Instant, AllocId)>>,
    interval: Duration,
}

impl NodeState {
    fn release(&mut self, alloc: &AllocId) -> bool {
        let Some(a) = self.live.remove(alloc) else {
            return false;
        };
        self.cpu_used -= a.cpu_millis;
        self.memory_used -= a.memory_bytes;
        for g in &a.gpus {
            self.gpus_used.remove(g);
        }
        true
    }

    fn report(&mut self, alloc: AllocId, state: AllocState) {
        let (exit_code, signal, message) = match state {
            AllocState::Succeeded => (Some(0), None, None),
            AllocState::Killed => (None, Some(15), Some("stopped (simulated)".to_string())),
            _ => (None, None, None),
        };
        self.updates.push(AllocUpdate {
            alloc,
            state,
            exit_code,
            signal,
            message,
            at_unix_ms: now_ms(),
        });
    }
}

#[derive(Debug)]
struct SimNode {
    index: u32,
    id: NodeId,
    shape: NodeShape,
    state: Mutex<NodeState>,
    /// Woken when a report is queued: the heartbeat goes out at once.
    report_now: Notify,
}

impl SimNode {
    fn new(index: usize, name: &str) -> anyhow::Result<SimNode> {
        Ok(SimNode {
            index: u32::try_from(index)?,
            id: NodeId::new(name)?,
            shape: NodeShape::of(index),
            state: Mutex::new(NodeState {
                live: BTreeMap::new(),
                stopped_unstarted: BTreeSet::new(),
                cpu_used: 0,
                memory_used: 0,
                gpus_used: BTreeSet::new(),
                updates: Vec::new(),
                due: BinaryHeap::new(),
                interval: Duration::from_secs(1),
            }),
            report_now: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, NodeState> {
        lock(&self.state)
    }

    async fn register(&self, shared: &Shared) -> anyhow::Result<RegisterResponse> {
        let req = RegisterRequest {
            node_id: Some(self.id.clone()),
            desc: NodeDescriptor {
                hostname: self.id.to_string(),
                log_addr: "127.0.0.1:9".to_string(),
                resources: self.shape.resources(),
                reserved: RESERVED,
                labels: [("zone".to_string(), self.shape.zone.to_string())].into(),
                attributes: [("simulated".to_string(), "true".to_string())].into(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            protocol: PROTOCOL_VERSION,
            running_allocs: self.state().live.keys().cloned().collect(),
        };
        let mut wait = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            match shared
                .http
                .post::<_, RegisterResponse>(REGISTER_PATH, &req, CALL_TIMEOUT)
                .await
            {
                Ok(resp) => {
                    shared.counters.registers.fetch_add(1, Ordering::Relaxed);
                    self.state().interval =
                        Duration::from_millis(resp.heartbeat_interval_ms.max(50));
                    return Ok(resp);
                }
                Err(e) if tries < 10 => {
                    shared.transport_error(&e);
                    tries += 1;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e.context(format!("registering {}", self.id))),
            }
        }
    }

    /// Applies a poll answer: allocs no longer listed were taken away;
    /// new ones start (and are checked against the node's capacity).
    /// Returns whether a report was queued.
    fn reconcile(&self, shared: &Shared, desired: &[Assignment]) -> bool {
        let wanted: BTreeSet<&AllocId> = desired
            .iter()
            .filter(|a| !a.stop)
            .map(|a| &a.alloc)
            .collect();
        let mut st = self.state();
        let mut book = shared.book();
        let mut queued = false;
        let gone: Vec<AllocId> = st
            .live
            .keys()
            .filter(|a| !wanted.contains(a))
            .cloned()
            .collect();
        for alloc in &gone {
            let alloc = alloc.clone();
            st.release(&alloc);
            Shared::set_phase(&mut book, &alloc, Phase::Taken);
            book.taken += 1;
            st.report(alloc, AllocState::Killed);
            queued = true;
        }
        // A simulated process stops at once; one never started here has
        // nothing to stop, but the master waits to hear that it ended.
        for a in desired
            .iter()
            .filter(|a| a.stop && !gone.contains(&a.alloc))
        {
            if st.stopped_unstarted.insert(a.alloc.clone()) {
                st.report(a.alloc.clone(), AllocState::Killed);
                queued = true;
            }
        }
        let (cpu_cap, mem_cap) = self.shape.allocatable();
        for a in desired.iter().filter(|a| !a.stop) {
            if st.live.contains_key(&a.alloc)
                || shared.assigned(&mut book, &a.alloc, self.index) == Seen::Stale
            {
                continue;
            }
            let mut problems = Vec::new();
            if st.cpu_used + a.cpu_millis > cpu_cap {
                problems.push(format!(
                    "cpu {}m + {}m > {}m",
                    st.cpu_used, a.cpu_millis, cpu_cap
                ));
            }
            if st.memory_used + a.memory_bytes > mem_cap {
                problems.push(format!(
                    "memory {} + {} > {} bytes",
                    st.memory_used, a.memory_bytes, mem_cap
                ));
            }
            for g in &a.gpus {
                if *g >= self.shape.gpus {
                    problems.push(format!("GPU {g} does not exist"));
                } else if st.gpus_used.contains(g) {
                    problems.push(format!("GPU {g} is already taken"));
                }
            }
            if !problems.is_empty() {
                book.error(format!(
                    "{} over-committed by {}: {}",
                    self.id,
                    a.alloc,
                    problems.join(", ")
                ));
            }
            st.cpu_used += a.cpu_millis;
            st.memory_used += a.memory_bytes;
            st.gpus_used.extend(a.gpus.iter().copied());
            let share = (st.cpu_used as f64 / cpu_cap.max(1) as f64)
                .max(st.memory_used as f64 / mem_cap.max(1) as f64)
                .max(st.gpus_used.len() as f64 / f64::from(self.shape.gpus.max(1)));
            book.peak_share = book.peak_share.max(share);
            st.live.insert(
                a.alloc.clone(),
                LiveAlloc {
                    cpu_millis: a.cpu_millis,
                    memory_bytes: a.memory_bytes,
                    gpus: a.gpus.clone(),
                    seen: Instant::now(),
                },
            );
            st.report(a.alloc.clone(), AllocState::Running);
            queued = true;
        }
        queued
    }

    /// The next heartbeat: allocs whose time has come end now (their
    /// resources free from here on), then every unacknowledged report.
    fn heartbeat_request(&self, shared: &Shared) -> HeartbeatRequest {
        let now = Instant::now();
        let mut st = self.state();
        let mut ended = Vec::new();
        while let Some(Reverse((at, _))) = st.due.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, alloc))) = st.due.pop() else {
                break;
            };
            if st.release(&alloc) {
                st.report(alloc.clone(), AllocState::Succeeded);
                ended.push(alloc);
            }
        }
        if !ended.is_empty() {
            let mut book = shared.book();
            for alloc in &ended {
                Shared::set_phase(&mut book, alloc, Phase::Ended);
            }
        }
        let (cpu_cap, mem_cap) = self.shape.allocatable();
        let usage = NodeUsage {
            cpu_millis: st.cpu_used / 2,
            memory_bytes: st.memory_used / 2,
            allocs: st
                .live
                .iter()
                .map(|(id, a)| {
                    let u = AllocUsage {
                        cpu_millis: a.cpu_millis / 2,
                        memory_bytes: a.memory_bytes / 2,
                    };
                    (id.clone(), u)
                })
                .collect(),
        };
        HeartbeatRequest {
            node_id: self.id.clone(),
            offer: Offer {
                cpu_millis: cpu_cap.saturating_sub(usage.cpu_millis),
                memory_bytes: mem_cap.saturating_sub(usage.memory_bytes),
                free_gpus: (0..self.shape.gpus)
                    .filter(|g| !st.gpus_used.contains(g))
                    .collect(),
            },
            usage,
            updates: st.updates.clone(),
        }
    }

    /// The master has the first `sent` reports: forget them, and start the
    /// clock of each alloc whose `running` it now knows.
    fn acknowledged(&self, shared: &Shared, sent: &[AllocUpdate], interval_ms: u64) {
        let now = Instant::now();
        {
            let mut st = self.state();
            let n = sent.len().min(st.updates.len());
            st.updates.drain(..n);
            st.interval = Duration::from_millis(interval_ms.max(50));
            for u in sent.iter().filter(|u| u.state == AllocState::Running) {
                if let Some(a) = st.live.get(&u.alloc) {
                    let at = (a.seen + shared.task_duration).max(now);
                    st.due.push(Reverse((at, u.alloc.clone())));
                }
            }
        }
        shared.acknowledged(sent);
    }

    fn next_due(&self) -> Option<Instant> {
        self.state().due.peek().map(|Reverse((at, _))| *at)
    }

    async fn heartbeat_loop(
        self: Arc<Self>,
        shared: Arc<Shared>,
        first: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut periodic = tokio::time::Instant::now() + first;
        loop {
            let wake = match self.next_due() {
                Some(due) => periodic.min(due.into()),
                None => periodic,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.report_now.notified() => {}
                _ = shutdown.changed() => return,
            }
            let req = self.heartbeat_request(&shared);
            let result = tokio::select! {
                r = shared.http.post::<_, HeartbeatResponse>(HEARTBEAT_PATH, &req, CALL_TIMEOUT) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(resp) => {
                    shared.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                    shared.counters.beat.notify_waiters();
                    self.acknowledged(&shared, &req.updates, resp.heartbeat_interval_ms);
                    if resp.reregister {
                        if let Err(e) = self.register(&shared).await {
                            shared.transport_error(&e);
                        }
                    }
                }
                Err(e) => {
                    shared
                        .counters
                        .heartbeat_errors
                        .fetch_add(1, Ordering::Relaxed);
                    shared.transport_error(&e);
                }
            }
            let interval = self.state().interval;
            periodic = tokio::time::Instant::now() + interval;
        }
    }

    async fn poll_loop(self: Arc<Self>, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
        let mut known = 0u64;
        let mut desired = Desired::default();
        loop {
            let req = PollRequest {
                node_id: self.id.clone(),
                known_version: known,
                delta: true,
            };
            let result = tokio::select! {
                r = shared.http.post::<_, PollResponse>(POLL_PATH, &req, shared.poll_wait) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(resp) => {
                    shared.counters.polls.fetch_add(1, Ordering::Relaxed);
                    known = resp.version;
                    desired.apply(resp);
                    if self.reconcile(&shared, &desired.assignments()) {
                        self.report_now.notify_one();
                    }
                }
                Err(e) => {
                    shared.counters.poll_errors.fetch_add(1, Ordering::Relaxed);
                    shared.transport_error(&e);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The simulation
// ---------------------------------------------------------------------------

/// How the simulated nodes behave.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// From an assignment's arrival until its alloc is reported succeeded
    /// (never before its `running` report was acknowledged).
    pub task_duration: Duration,
    /// How long a long poll may be held: longer than the master's
    /// `api.poll_timeout`.
    pub poll_wait: Duration,
    /// Registrations in flight at once.
    pub register_concurrency: usize,
    /// Connections to the master, at most (and never more than the
    /// open-file limit less 1,024). Each node's long poll holds one.
    pub max_connections: usize,
}

/// Open files this process may spend on connections.
fn fd_budget() -> usize {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| {
            usize::try_from(soft).unwrap_or(usize::MAX)
        })
        .saturating_sub(1024)
        .max(64)
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            task_duration: Duration::ZERO,
            poll_wait: Duration::from_secs(90),
            register_concurrency: 64,
            max_connections: usize::MAX,
        }
    }
}

/// Counts of what the simulated nodes saw, at one moment.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub tasks: u64,
    pub progress: Progress,
    /// From [`Sim::mark_start`] until every task was reported running,
    /// and until every task was reported succeeded.
    pub all_running: Option<Duration>,
    pub all_succeeded: Option<Duration>,
    /// Tasks that got exactly one alloc.
    pub placed_once: u64,
    /// New allocs of tasks whose previous alloc the master took away.
    pub restarts: u64,
    /// Allocs the master took away from a node while they ran.
    pub taken: u64,
    /// Poll answers still listing an alloc its node had already ended.
    pub stale: u64,
    /// The fullest any node got: its largest share of CPU, memory or GPUs
    /// (1.0: full).
    pub peak_share: f64,
    /// Breaches of the master's promises (over-commit, duplicates); at
    /// most 50 in words, all counted in `error_count`.
    pub errors: Vec<String>,
    pub error_count: u64,
    pub registers: u64,
    pub heartbeats: u64,
    pub heartbeat_errors: u64,
    pub polls: u64,
    pub poll_errors: u64,
    pub connections_opened: u64,
    pub last_transport_error: Option<String>,
}

/// Simulated nodes registered with a master, heartbeating and polling
/// until [`Sim::stop`].
#[derive(Debug)]
pub struct Sim {
    shared: Arc<Shared>,
    nodes: Vec<Arc<SimNode>>,
    loops: JoinSet<()>,
    shutdown: watch::Sender<bool>,
    start: Mutex<Option<Instant>>,
}

impl Sim {
    /// Registers `nodes` simulated nodes (`sim-00000`, …) with the master
    /// at `addr`, expecting the tasks of `plan`, then starts their
    /// heartbeats (spread over one interval) and long polls.
    pub async fn start(
        addr: &str,
        nodes: usize,
        plan: &[JobPlan],
        options: SimOptions,
    ) -> anyhow::Result<Sim> {
        let shared = Arc::new(Shared::new(addr, nodes, plan, &options).await?);
        let connections = shared.http.in_flight.available_permits();
        if nodes + 16 > connections {
            bail!(
                "{nodes} nodes hold as many long polls, but only {connections} connections \
                 fit under the open-file limit (and SimOptions::max_connections): raise them"
            );
        }
        let nodes: Vec<Arc<SimNode>> = shared
            .node_names
            .iter()
            .enumerate()
            .map(|(i, name)| SimNode::new(i, name).map(Arc::new))
            .collect::<anyhow::Result<_>>()?;

        let permits = Arc::new(Semaphore::new(options.register_concurrency.max(1)));
        let mut registering = JoinSet::new();
        for node in &nodes {
            let (node, shared, permits) =
                (Arc::clone(node), Arc::clone(&shared), Arc::clone(&permits));
            registering.spawn(async move {
                let _permit = permits.acquire_owned().await?;
                node.register(&shared).await.map(|_| ())
            });
        }
        while let Some(r) = registering.join_next().await {
            r??;
        }

        let (shutdown, rx) = watch::channel(false);
        let mut loops = JoinSet::new();
        let n = nodes.len().max(1) as u32;
        for node in &nodes {
            let first = node.state().interval * node.index / n;
            loops.spawn(Arc::clone(node).poll_loop(Arc::clone(&shared), rx.clone()));
            loops.spawn(Arc::clone(node).heartbeat_loop(Arc::clone(&shared), first, rx.clone()));
        }
        Ok(Sim {
            shared,
            nodes,
            loops,
            shutdown,
            start: Mutex::new(None),
        })
    }

    /// The moment the measurement starts (just before the first job is
    /// submitted); `all_running` and `all_succeeded` count from here.
    pub fn mark_start(&self) {
        *lock(&self.start) = Some(Instant::now());
    }

    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Waits until every task of the plan was reported succeeded, or
    /// `timeout` passes (then returns `false`).
    pub async fn wait_all_succeeded(&self, timeout: Duration) -> bool {
        let total = self.shared.book().total;
        let mut rx = self.shared.progress.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|p| p.succeeded >= total))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Follows [`Sim::progress`] as it changes.
    pub fn watch(&self) -> watch::Receiver<Progress> {
        self.shared.progress.subscribe()
    }

    /// Tasks reported running and succeeded so far.
    pub fn progress(&self) -> Progress {
        *self.shared.progress.borrow()
    }

    /// Heartbeats the master acknowledged so far.
    pub fn heartbeats(&self) -> u64 {
        self.shared.counters.heartbeats.load(Ordering::Relaxed)
    }

    /// Waits until the master acknowledged `n` heartbeats in all (e.g. one
    /// per node: every node is heartbeating and has its long poll open).
    pub async fn wait_heartbeats(&self, n: u64) {
        let beat = &self.shared.counters.beat;
        loop {
            let next = beat.notified();
            tokio::pin!(next);
            next.as_mut().enable();
            if self.heartbeats() >= n {
                return;
            }
            next.await;
        }
    }

    pub fn report(&self) -> SimReport {
        let start = *lock(&self.start);
        let since = |t: Option<Instant>| Some(t?.saturating_duration_since(start?));
        let book = self.shared.book();
        let c = &self.shared.counters;
        SimReport {
            tasks: book.total,
            progress: book.progress,
            all_running: since(book.all_running_at),
            all_succeeded: since(book.all_succeeded_at),
            placed_once: book
                .slots
                .iter()
                .flatten()
                .filter(|s| s.allocs == 1)
                .count() as u64,
            restarts: book.restarts,
            taken: book.taken,
            stale: book.stale,
            peak_share: book.peak_share,
            errors: book.errors.clone(),
            error_count: book.error_count,
            registers: c.registers.load(Ordering::Relaxed),
            heartbeats: c.heartbeats.load(Ordering::Relaxed),
            heartbeat_errors: c.heartbeat_errors.load(Ordering::Relaxed),
            polls: c.polls.load(Ordering::Relaxed),
            poll_errors: c.poll_errors.load(Ordering::Relaxed),
            connections_opened: self.shared.http.opened.load(Ordering::Relaxed),
            last_transport_error: lock(&self.shared.last_transport_error).clone(),
        }
    }

    /// Stops every node's loops (their long polls are dropped).
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        while self.loops.join_next().await.is_some() {}
    }
}

// ---------------------------------------------------------------------------
// The master, as a child process
// ---------------------------------------------------------------------------

/// Liveness and poll settings for a simulated fleet's master.
#[derive(Debug, Clone, Copy)]
pub struct MasterSettings {
    pub heartbeat_interval: Duration,
    pub node_timeout: Duration,
    pub poll_timeout: Duration,
}

impl MasterSettings {
    /// 1 s heartbeats up to 1,000 nodes, 5 s beyond; a node is down after
    /// 12 missed heartbeats (at least 30 s); polls held 30 s.
    pub fn for_nodes(nodes: usize) -> MasterSettings {
        let heartbeat_interval = if nodes <= 1000 {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        MasterSettings {
            heartbeat_interval,
            node_timeout: (heartbeat_interval * 12).max(Duration::from_secs(30)),
            poll_timeout: Duration::from_secs(30),
        }
    }
}

/// Memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`, bytes.
    pub rss: u64,
    /// `VmHWM` (peak RSS), bytes.
    pub peak: u64,
}

/// `VmRSS` and `VmHWM` of process `pid`.
pub fn memory_of(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok(Memory {
        rss: field("VmRSS:"),
        peak: field("VmHWM:"),
    })
}

/// User + system CPU time of process `pid` (`/proc/<pid>/stat`, in the
/// kernel's USER_HZ ticks of 10 ms).
pub fn cpu_time_of(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3, utime 14, stime 15.
    let tick = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i - 3)
            .ok_or_else(|| anyhow!("short /proc/{pid}/stat"))?
            .parse()?)
    };
    Ok(Duration::from_millis((tick(14)? + tick(15)?) * 10))
}

/// Raises this process's open-file limit as far as it may go: to the hard
/// limit, or, where the process may raise that too (root), to the kernel's
/// `nr_open`. Children (the master) inherit it. Returns the new soft limit.
pub fn raise_fd_limit() -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    if ceiling > hard && setrlimit(Resource::RLIMIT_NOFILE, ceiling, ceiling).is_ok() {
        return Ok(ceiling);
    }
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// The `drover-master` binary next to this one, unless `DROVER_MASTER_BIN`
/// names another.
pub fn master_binary() -> anyhow::Result<PathBuf> {
    crate::sibling_binary("drover-master", "DROVER_MASTER_BIN")
}

/// A `drover-master` child process on a free loopback port with the
/// embedded store in a temp dir; stopped (SIGTERM) and reaped when dropped.
#[derive(Debug)]
pub struct MasterProcess {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
    /// Warning and error lines it logged.
    warnings: Arc<AtomicU64>,
    /// Set when its log no longer matters (the simulation is being torn
    /// down: dropped long polls make it log connection errors).
    quiet: Arc<std::sync::atomic::AtomicBool>,
}

impl MasterProcess {
    pub fn start(binary: &Path, settings: MasterSettings) -> anyhow::Result<MasterProcess> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let config = format!(
            "liveness:\n  heartbeat_interval: {}\n  node_timeout: {}\n\
             api:\n  poll_timeout: {}\n",
            ms(settings.heartbeat_interval),
            ms(settings.node_timeout),
            ms(settings.poll_timeout),
        );
        MasterProcess::start_with(binary, &config)
    }

    /// Starts one with `config` (YAML, without `log:`, which is set here:
    /// the address is read from the JSON log) and the embedded store.
    pub fn start_with(binary: &Path, config: &str) -> anyhow::Result<MasterProcess> {
        let dir = tempfile::Builder::new()
            .prefix("drover-sim-")
            .tempdir()
            .context("temp dir")?;
        let config_path = dir.path().join("master.yaml");
        std::fs::write(
            &config_path,
            format!("{config}log:\n  level: \"warn,drover_master::server=info\"\n  format: json\n"),
        )?;
        let data = dir.path().join("data");
        let mut child = Command::new(binary)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        // Its log (JSON lines) goes to stdout.
        let log = child.stdout.take().context("the master's stdout")?;
        let warnings = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let counted = Arc::clone(&warnings);
        let quiet = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hush = Arc::clone(&quiet);
        // Reads the log for the listening address, then keeps draining it
        // (echoing the first warnings) so the master never blocks on it.
        std::thread::spawn(move || {
            for line in BufReader::new(log).lines() {
                let Ok(line) = line else { break };
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["fields"]["message"] == "master listening" {
                    if let Some(addr) = v["fields"]["addr"].as_str() {
                        let _ = tx.send(addr.to_string());
                    }
                    continue;
                }
                let level = v["level"].as_str().unwrap_or("");
                if (level != "WARN" && level != "ERROR") || hush.load(Ordering::Relaxed) {
                    continue;
                }
                if counted.fetch_add(1, Ordering::Relaxed) < 20 {
                    eprintln!("  master: {line}");
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                bail!("drover-master did not start listening (exit: {status:?})");
            }
        };
        Ok(MasterProcess {
            child,
            addr,
            dir,
            warnings,
            quiet,
        })
    }

    /// Stops echoing and counting its warnings (before tearing down the
    /// simulated nodes, whose dropped connections it would log).
    pub fn quiet(&self) {
        self.quiet.store(true, Ordering::Relaxed);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory_of(self.pid())
    }

    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time_of(self.pid())
    }

    /// Warning and error lines the master logged so far.
    pub fn warnings(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }

    /// Bytes in its data dir (the embedded store's file).
    pub fn store_bytes(&self) -> u64 {
        fn size(p: &Path) -> u64 {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => std::fs::read_dir(p)
                    .map(|d| d.flatten().map(|e| size(&e.path())).sum())
                    .unwrap_or(0),
                Ok(m) => m.len(),
                Err(_) => 0,
            }
        }
        size(&self.dir.path().join("data"))
    }

    pub fn stop(&mut self) -> std::io::Result<std::process::ExitStatus> {
        crate::terminate(&mut self.child)
    }
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The numeric samples of a Prometheus text exposition, by series
/// (`name{labels}` as written).
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Submits every job of `plan`, one after another.
pub async fn submit_plan(
    client: &drover_api::client::Client,
    plan: &[JobPlan],
) -> anyhow::Result<()> {
    for job in plan {
        client
            .submit(&job.spec, drover_api::client::SpecFormat::Yaml)
            .await
            .with_context(|| format!("submitting {}", job.name))?;
    }
    Ok(())
}

/// Totals from the master's `/metrics` (counts, and seconds summed over
/// them).
#[derive(Debug, Clone, Copy, Default)]
pub struct MasterMetrics {
    pub passes: f64,
    pub pass_seconds: f64,
    pub commits: f64,
    pub commit_seconds: f64,
    pub heartbeats: f64,
    pub heartbeat_seconds: f64,
    pub registers: f64,
    pub register_seconds: f64,
    pub submits: f64,
    pub submit_seconds: f64,
    pub placements: f64,
    pub preemptions: f64,
    pub node_failures: f64,
    /// Quantiles of the master's histograms, interpolated within their
    /// buckets as Prometheus' `histogram_quantile` does.
    pub pass_p50: Option<f64>,
    pub pass_p99: Option<f64>,
    pub lock_p99: Option<f64>,
}

impl MasterMetrics {
    pub async fn fetch(client: &drover_api::client::Client) -> anyhow::Result<MasterMetrics> {
        let reply = client.raw("GET", "/metrics", None).await?;
        if reply.status != 200 {
            bail!("/metrics: HTTP {}", reply.status);
        }
        Ok(MasterMetrics::from_text(&String::from_utf8_lossy(
            &reply.body,
        )))
    }

    pub fn from_text(text: &str) -> MasterMetrics {
        let m = parse_metrics(text);
        let sum = |name: &str, label: &str| -> f64 {
            m.iter()
                .filter(|(k, _)| {
                    (k.as_str() == name || k.starts_with(&format!("{name}{{"))) && k.contains(label)
                })
                .map(|(_, v)| v)
                .sum()
        };
        let http = "drover_http_request_duration_seconds";
        // Route labels read "POST /v1/agent/heartbeat".
        let (hb, reg) = ("/v1/agent/heartbeat\"", "/v1/agent/register\"");
        MasterMetrics {
            passes: sum("drover_schedule_pass_duration_seconds_count", ""),
            pass_seconds: sum("drover_schedule_pass_duration_seconds_sum", ""),
            commits: sum("drover_store_op_duration_seconds_count", "\"commit\""),
            commit_seconds: sum("drover_store_op_duration_seconds_sum", "\"commit\""),
            heartbeats: sum(&format!("{http}_count"), hb),
            heartbeat_seconds: sum(&format!("{http}_sum"), hb),
            registers: sum(&format!("{http}_count"), reg),
            register_seconds: sum(&format!("{http}_sum"), reg),
            submits: sum(&format!("{http}_count"), "\"POST /v1/jobs\""),
            submit_seconds: sum(&format!("{http}_sum"), "\"POST /v1/jobs\""),
            placements: sum("drover_placements_total", ""),
            preemptions: sum("drover_preemptions_total", ""),
            node_failures: sum("drover_node_failures_total", ""),
            pass_p50: histogram_quantile(&m, "drover_schedule_pass_duration_seconds", 0.5),
            pass_p99: histogram_quantile(&m, "drover_schedule_pass_duration_seconds", 0.99),
            lock_p99: histogram_quantile(&m, "drover_schedule_lock_seconds", 0.99),
        }
    }
}

/// Quantile `q` of an unlabelled histogram in parsed metrics, linear within
/// the bucket it falls in (as Prometheus' `histogram_quantile`); the upper
/// bound of the last finite bucket when it falls in `+Inf`.
pub fn histogram_quantile(m: &BTreeMap<String, f64>, name: &str, q: f64) -> Option<f64> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let within = count - below;
            let share = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (bound - lower) * share);
        }
        (lower, below) = (bound, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_interpolate_within_the_bucket() {
        let text = "h_bucket{le=\"0.1\"} 50\nh_bucket{le=\"0.2\"} 90\nh_bucket{le=\"0.4\"} 100\nh_bucket{le=\"+Inf\"} 100\nh_count 100\n";
        let m = parse_metrics(text);
        let near = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(near(histogram_quantile(&m, "h", 0.5), 0.1));
        assert!(near(histogram_quantile(&m, "h", 0.7), 0.15));
        assert!(near(histogram_quantile(&m, "h", 0.99), 0.38));
        assert_eq!(histogram_quantile(&m, "nothing", 0.5), None);
        let spill = parse_metrics("h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 10\n");
        assert!(near(histogram_quantile(&spill, "h", 0.99), 1.0));
    }

    #[test]
    fn plans_split_tasks_evenly_and_cycle_through_the_policies() {
        let plan = plan_jobs("sim", 10, 4, true);
        let sizes: Vec<u32> = plan.iter().map(|j| j.tasks).collect();
        assert_eq!(sizes, [3, 3, 2, 2]);
        let policies: Vec<&str> = plan.iter().map(|j| j.policy).collect();
        assert_eq!(
            policies,
            [
                "least-loaded",
                "round-robin",
                "priority",
                "elastic-sharding"
            ]
        );
        for job in &plan {
            let spec = drover_api::JobSpec::parse_yaml(&job.spec)
                .unwrap_or_else(|e| panic!("{}: {e}\n{}", job.name, job.spec));
            assert_eq!(spec.task_count(), job.tasks);
        }
        assert_eq!(plan_jobs("sim", 3, 10, false).len(), 3, "no empty jobs");
    }

    fn assignment(alloc: &str, cpu_millis: u64, gpus: &[u32]) -> Assignment {
        Assignment {
            alloc: alloc.parse().unwrap(),
            job_type: drover_api::JobType::Batch,
            command: vec!["/bin/true".into()],
            env: BTreeMap::new(),
            cpu_millis,
            memory_bytes: MIB,
            gpus: gpus.to_vec(),
            kill_timeout_ms: 0,
            stop: false,
        }
    }

    #[tokio::test]
    async fn the_books_catch_over_commitment_and_tasks_placed_twice_but_allow_restarts() {
        let plan = plan_jobs("t", 8, 1, false);
        let shared = Shared::new("127.0.0.1:9", 4, &plan, &SimOptions::default())
            .await
            .unwrap();
        let node: Vec<SimNode> = (0..4)
            .map(|i| SimNode::new(i, &shared.node_names[i]).unwrap())
            .collect();
        let errors = |n: u64| {
            let book = shared.book();
            assert_eq!(book.error_count, n, "{:#?}", book.errors);
            book.errors.last().cloned().unwrap_or_default()
        };
        // Node 0 has 8 CPUs, 7.5 allocatable.
        let mut on0 = vec![assignment("t-0/0/1", 7000, &[])];
        assert!(node[0].reconcile(&shared, &on0));
        errors(0);
        on0.push(assignment("t-0/1/1", 1000, &[]));
        node[0].reconcile(&shared, &on0);
        assert!(
            errors(1).contains("sim-00000 over-committed by t-0/1/1: cpu 7000m + 1000m > 7500m")
        );

        // Node 2 (32 CPUs) from here on. A second alloc of a task whose
        // first still runs elsewhere.
        let mut on2 = Vec::new();
        node[1].reconcile(&shared, &[assignment("t-0/2/1", 100, &[])]);
        on2.push(assignment("t-0/2/2", 100, &[]));
        node[2].reconcile(&shared, &on2);
        assert!(errors(2).contains("the task runs twice"));

        // Taken away from node 1 (preempted), then placed again: fine.
        node[1].reconcile(&shared, &[assignment("t-0/4/1", 100, &[])]);
        node[1].reconcile(&shared, &[]);
        assert_eq!(
            node[1].state().updates.last().unwrap().state,
            AllocState::Killed
        );
        on2.push(assignment("t-0/4/2", 100, &[]));
        node[2].reconcile(&shared, &on2);
        errors(2);
        assert_eq!(shared.book().restarts, 1);

        // Succeeded on node 1; listed there once more before the master
        // processed that (stale, fine); then placed again (a duplicate).
        let on1 = [assignment("t-0/5/1", 100, &[])];
        node[1].reconcile(&shared, &on1);
        let running = node[1].heartbeat_request(&shared).updates;
        node[1].acknowledged(&shared, &running, 1000);
        let done = node[1].heartbeat_request(&shared).updates;
        assert_eq!(done.last().unwrap().state, AllocState::Succeeded);
        assert_eq!(done.last().unwrap().exit_code, Some(0));
        assert!(!node[1].reconcile(&shared, &on1), "nothing new to report");
        assert_eq!(shared.book().stale, 1);
        on2.push(assignment("t-0/5/2", 100, &[]));
        node[2].reconcile(&shared, &on2);
        assert!(errors(3).contains("after attempt 1 succeeded on sim-00001"));

        // Node 3 has 4 GPUs: each goes to one alloc at a time.
        let mut on3 = vec![assignment("t-0/6/1", 100, &[1])];
        node[3].reconcile(&shared, &on3);
        errors(3);
        on3.push(assignment("t-0/7/1", 100, &[1, 4]));
        node[3].reconcile(&shared, &on3);
        let e = errors(4);
        assert!(
            e.contains("GPU 1 is already taken") && e.contains("GPU 4 does not exist"),
            "{e}"
        );
    }

    #[test]
    fn node_shapes_mix_sizes_and_give_every_fourth_node_gpus() {
        let shapes: Vec<NodeShape> = (0..24).map(NodeShape::of).collect();
        let cpus: BTreeSet<u64> = shapes.iter().map(|s| s.cpu_millis).collect();
        assert_eq!(cpus, [8_000, 16_000, 32_000].into());
        assert_eq!(shapes.iter().filter(|s| s.gpus > 0).count(), 6);
        assert!(shapes
            .iter()
            .all(|s| (32..=128).contains(&(s.memory_bytes / GIB))));
    }

    #[test]
    fn cpu_time_and_memory_of_this_process_are_read_from_proc() {
        let me = std::process::id();
        assert!(memory_of(me).unwrap().rss > 0);
        assert!(cpu_time_of(me).is_ok());
        let m = parse_metrics("# HELP x\nx_sum{a=\"b c\"} 1.5\ny 2\n");
        assert_eq!(m["x_sum{a=\"b c\"}"], 1.5);
        assert_eq!(m["y"], 2.0);
        let mm = MasterMetrics::from_text(
            "drover_schedule_pass_duration_seconds_sum 2.5\n\
             drover_store_op_duration_seconds_count{op=\"commit\"} 7\n\
             drover_store_op_duration_seconds_count{op=\"load\"} 1\n\
             drover_http_request_duration_seconds_count{route=\"POST /v1/agent/heartbeat\"} 3\n\
             drover_placements_total{policy=\"round-robin\"} 4\n\
             drover_placements_total{policy=\"priority\"} 5\n",
        );
        assert_eq!(mm.pass_seconds, 2.5);
        assert_eq!(mm.commits, 7.0);
        assert_eq!(mm.heartbeats, 3.0);
        assert_eq!(mm.placements, 9.0);
    }
}
