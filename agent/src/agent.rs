//! The agent's loop: register, then long-poll for the node's desired allocs
//! and reconcile the executor with them, and heartbeat at the interval the
//! master asks for with usage, and at once whenever an alloc's status
//! changes (a task started or ended: shim exits are noticed by SIGCHLD), so
//! the master learns of them in milliseconds, not a heartbeat later. When the master is
//! unreachable the agent keeps its tasks running and retries with jittered
//! backoff; after `stop_after_disconnect` (off by default) it stops them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_api::protocol::{
    AllocUpdate, Assignment, Desired, HeartbeatRequest, NodeDescriptor, NodeResources, NodeUsage,
    Offer, PollRequest, RegisterRequest, Reserved, PROTOCOL_VERSION,
};
use drover_api::{AllocId, AllocState, NodeId};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::{ClientError, MasterClient};
use crate::executor::{self, ExecError, Executor, Exited, Launch, LaunchSpec, Prepare, Prepared};
use crate::fingerprint::Probe;
use crate::logs::LogKey;
use crate::metrics::AgentMetrics;

/// What the agent loop needs to know, from the config file and fingerprint.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub masters: Vec<String>,
    pub token: Option<String>,
    /// Configured id; else the one kept in `data_dir/node-id`; else the
    /// master picks one at first registration.
    pub node_id: Option<NodeId>,
    pub data_dir: PathBuf,
    pub hostname: String,
    pub log_addr: String,
    pub resources: NodeResources,
    pub reserved: Reserved,
    pub labels: BTreeMap<String, String>,
    pub attributes: BTreeMap<String, String>,
    pub kill_grace: Duration,
    pub stop_after_disconnect: Option<Duration>,
    /// How long a long poll may be held (longer than the master's poll timeout).
    pub poll_wait: Duration,
    /// Set from each registration's answer; the log server checks with it.
    pub log_key: LogKey,
    /// TLS to the masters (`ca_file`); `None`: plain HTTP.
    pub master_tls: Option<drover_tls::ClientTls>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Jittered exponential backoff: 100 ms doubling to 5 s, ±25 %.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    async fn wait(&mut self) {
        // Jitter from the clock's nanoseconds: enough to de-synchronise a
        // fleet of agents reconnecting after a master failover.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
        tokio::time::sleep(self.next.mul_f64(factor)).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }
}

fn node_id_file(data_dir: &Path) -> PathBuf {
    data_dir.join("node-id")
}

/// The node id kept from an earlier run, if any.
pub fn stored_node_id(data_dir: &Path) -> Option<NodeId> {
    std::fs::read_to_string(node_id_file(data_dir))
        .ok()
        .and_then(|s| NodeId::new(s.trim()).ok())
}

fn credential_file(data_dir: &Path) -> PathBuf {
    data_dir.join("credential")
}

/// The node's credential (DESIGN §12), once the master has given one.
pub fn stored_credential(data_dir: &Path) -> Option<String> {
    std::fs::read_to_string(credential_file(data_dir))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Keeps the credential, readable by this user alone, before it is used:
/// a crash right after registering must not lose the only copy.
fn store_credential(data_dir: &Path, credential: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join("credential.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(credential.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, credential_file(data_dir))?;
    std::fs::File::open(data_dir)?.sync_all()
}

fn store_node_id(data_dir: &Path, id: &NodeId) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join("node-id.tmp");
    std::fs::write(&tmp, id.as_str())?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, node_id_file(data_dir))
}

/// State shared by the poll and heartbeat tasks.
#[derive(Debug, Default)]
struct Shared {
    node_id: Option<NodeId>,
    /// Status changes not yet acknowledged by a heartbeat.
    updates: Vec<AllocUpdate>,
    /// Allocs this agent stopped because the master no longer wants them.
    stopping: BTreeSet<AllocId>,
    interval: Duration,
    reregister: bool,
}

/// The running agent.
#[derive(Debug)]
pub struct Agent {
    settings: AgentSettings,
    client: MasterClient,
    executor: Mutex<Executor>,
    probe: Mutex<Probe>,
    metrics: AgentMetrics,
    shared: Mutex<Shared>,
    last_contact: Mutex<Instant>,
    /// Woken when an update is queued: the heartbeat goes out at once.
    report_now: tokio::sync::Notify,
    /// Usage as last measured: measuring walks every task's processes, so
    /// it is done once per interval, not for every early heartbeat.
    usage: Mutex<Option<(Instant, NodeUsage)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    pub fn new(
        settings: AgentSettings,
        mut executor: Executor,
        probe: Probe,
        metrics: AgentMetrics,
    ) -> Arc<Agent> {
        executor.set_metrics(metrics.clone());
        // Once the node has its credential, the join token is not used again.
        let token = stored_credential(&settings.data_dir).or_else(|| settings.token.clone());
        let mut client = MasterClient::new(settings.masters.clone(), token);
        if let Some(tls) = &settings.master_tls {
            client = client.with_tls(tls.clone());
        }
        let node_id = settings
            .node_id
            .clone()
            .or_else(|| stored_node_id(&settings.data_dir));
        metrics.set_capacity(&settings.resources);
        Arc::new(Agent {
            client,
            executor: Mutex::new(executor),
            probe: Mutex::new(probe),
            metrics,
            shared: Mutex::new(Shared {
                node_id,
                interval: Duration::from_secs(1),
                ..Shared::default()
            }),
            last_contact: Mutex::new(Instant::now()),
            report_now: tokio::sync::Notify::new(),
            usage: Mutex::new(None),
            settings,
        })
    }

    /// Whether the executor still runs this alloc.
    pub fn is_running(&self, alloc: &AllocId) -> bool {
        lock(&self.executor)
            .running()
            .iter()
            .any(|(a, _)| a == alloc)
    }

    /// Whether the executor still needs this alloc's directory: it runs,
    /// or its exit has not reached the master yet (log GC keeps its files).
    pub fn is_live(&self, alloc: &AllocId) -> bool {
        lock(&self.executor).holds(alloc)
    }

    pub fn node_id(&self) -> Option<NodeId> {
        lock(&self.shared).node_id.clone()
    }

    fn contact(&self) {
        *lock(&self.last_contact) = Instant::now();
    }

    /// Registers, retrying until a master answers or shutdown.
    async fn register(&self, shutdown: &mut watch::Receiver<bool>) -> Option<NodeId> {
        let mut backoff = Backoff::new();
        loop {
            let running: Vec<AllocId> = lock(&self.executor)
                .running()
                .into_iter()
                .map(|(a, _)| a)
                .collect();
            let req = RegisterRequest {
                node_id: self.node_id(),
                desc: NodeDescriptor {
                    hostname: self.settings.hostname.clone(),
                    log_addr: self.settings.log_addr.clone(),
                    resources: self.settings.resources.clone(),
                    reserved: self.settings.reserved,
                    labels: self.settings.labels.clone(),
                    attributes: self.settings.attributes.clone(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                },
                protocol: PROTOCOL_VERSION,
                running_allocs: running,
            };
            match self.client.register(&req).await {
                Ok(resp) => {
                    self.contact();
                    if let Err(e) = store_node_id(&self.settings.data_dir, &resp.node_id) {
                        tracing::warn!(error = %e, "could not keep the node id in the data dir");
                        self.metrics.count_disk_write_errors("state", 1);
                    }
                    self.settings.log_key.set(resp.log_key);
                    if let Some(credential) = resp.credential {
                        match store_credential(&self.settings.data_dir, &credential) {
                            Ok(()) => {
                                tracing::info!(node = %resp.node_id, "joined: node credential kept in the data dir")
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "could not keep the node credential in the data dir; the next start cannot rejoin as this node");
                                self.metrics.count_disk_write_errors("state", 1);
                            }
                        }
                        self.client.set_token(Some(credential));
                    }
                    {
                        let mut s = lock(&self.shared);
                        s.node_id = Some(resp.node_id.clone());
                        s.interval = Duration::from_millis(resp.heartbeat_interval_ms.max(50));
                        s.reregister = false;
                    }
                    for alloc in resp.kill {
                        self.stop(&alloc, None);
                    }
                    tracing::info!(node = %resp.node_id, master = self.client.current_addr(), "registered");
                    return Some(resp.node_id);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registration failed; retrying");
                    self.maybe_stop_all();
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = shutdown.changed() => return None,
                    }
                }
            }
        }
    }

    /// SIGTERM to the alloc's process group, SIGKILL once `grace` has
    /// passed (the agent's `kill_grace` when the master named none). The
    /// exit is reported `killed` once the shim has seen the group gone.
    fn stop(&self, alloc: &AllocId, grace: Option<Duration>) {
        lock(&self.shared).stopping.insert(alloc.clone());
        let grace = grace.unwrap_or(self.settings.kill_grace);
        if let Err(e) = lock(&self.executor).stop(alloc, Some(grace)) {
            tracing::warn!(alloc = %alloc, error = %e, "could not stop alloc");
        }
    }

    /// Makes the executor run exactly the desired allocs. Unwanted ones,
    /// and those the master marks `stop`, are signalled first: a preempted
    /// task gets its SIGTERM before the task that replaces it starts.
    pub fn reconcile(&self, desired: &[Assignment]) {
        let wanted: BTreeSet<&AllocId> = desired
            .iter()
            .filter(|a| !a.stop)
            .map(|a| &a.alloc)
            .collect();
        let grace: BTreeMap<&AllocId, Duration> = desired
            .iter()
            .map(|a| (&a.alloc, Duration::from_millis(a.kill_timeout_ms)))
            .collect();
        let running = lock(&self.executor).running();
        for (alloc, _) in running {
            if !wanted.contains(&alloc) && !lock(&self.shared).stopping.contains(&alloc) {
                tracing::info!(alloc = %alloc, "no longer wanted here; stopping");
                self.stop(&alloc, grace.get(&alloc).copied());
            }
        }
        // The master holds a stopped alloc's resources until it hears the
        // alloc has ended; one that never started here has ended already.
        for a in desired.iter().filter(|a| a.stop) {
            let recorded =
                lock(&self.executor).record_unstarted(&a.alloc, "stopped before it started");
            match recorded {
                Ok(true) => {
                    tracing::info!(alloc = %a.alloc, "stopped before it started");
                    lock(&self.shared).stopping.insert(a.alloc.clone());
                    self.report_now.notify_one();
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(alloc = %a.alloc, error = %e, "cannot record a stopped alloc")
                }
            }
        }
        let specs = desired.iter().filter(|a| !a.stop).map(|a| LaunchSpec {
            alloc: a.alloc.clone(),
            command: a.command.clone(),
            env: a.env.clone(),
            shard_count: a.env.get("DROVER_SHARD_COUNT").and_then(|n| n.parse().ok()),
            cpu_millis: a.cpu_millis,
            memory_bytes: a.memory_bytes,
            gpus: a.gpus.clone(),
        });
        // The executor's books are checked and updated under its lock, but
        // the shims start without it (and several at once), so that exits
        // are collected and reported while a batch starts.
        let mut refused = Vec::new();
        let prepared: Vec<Prepared> = {
            let mut executor = lock(&self.executor);
            specs
                .filter_map(|spec| {
                    let alloc = spec.alloc.clone();
                    match executor.prepare(spec) {
                        Ok(Prepare::Start(p)) => Some(*p),
                        Ok(Prepare::Known(_)) => None,
                        Err(e) => {
                            refused.push((alloc, e));
                            None
                        }
                    }
                })
                .collect()
        };
        let started = executor::start_all(prepared);
        let results: Vec<(AllocId, Result<Launch, ExecError>)> = {
            let mut executor = lock(&self.executor);
            let results = started
                .into_iter()
                .map(|s| (s.alloc().clone(), executor.finish(s)))
                .collect();
            // A failed save is logged, counted and retried by the executor.
            executor.flush();
            results
        };
        let failed = refused.into_iter().map(|(alloc, e)| (alloc, Err(e)));
        for (alloc, result) in results.into_iter().chain(failed) {
            match result {
                Ok(launch) if launch.started => {
                    tracing::info!(alloc = %alloc, shim_pid = ?launch.shim_pid, "task started");
                    self.push(alloc, AllocState::Running, None, None, None);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(alloc = %alloc, error = %e, "task could not start");
                    self.push(alloc, AllocState::Failed, None, None, Some(e.to_string()));
                }
            }
        }
    }

    fn push(
        &self,
        alloc: AllocId,
        state: AllocState,
        exit_code: Option<i32>,
        signal: Option<i32>,
        message: Option<String>,
    ) {
        lock(&self.shared).updates.push(AllocUpdate {
            alloc,
            state,
            exit_code,
            signal,
            message,
            at_unix_ms: now_ms(),
        });
        self.report_now.notify_one();
    }

    /// Status changes not yet acknowledged by the master.
    pub fn pending_updates(&self) -> Vec<AllocUpdate> {
        lock(&self.shared).updates.clone()
    }

    /// Turns finished processes into status updates.
    pub fn collect_exits(&self) {
        let exited: Vec<Exited> = lock(&self.executor).poll();
        for e in exited {
            let stopped = lock(&self.shared).stopping.remove(&e.alloc);
            let state = if stopped {
                AllocState::Killed
            } else if e.exit_code == Some(0) && e.signal.is_none() {
                AllocState::Succeeded
            } else {
                AllocState::Failed
            };
            tracing::info!(alloc = %e.alloc, ?state, exit_code = ?e.exit_code, signal = ?e.signal, "task ended");
            if e.log_cuts > 0 {
                tracing::warn!(alloc = %e.alloc, cuts = e.log_cuts, "the task's output was cut: its log could not be written (is the data dir's disk full?)");
                self.metrics
                    .count_disk_write_errors("log", u64::from(e.log_cuts));
            }
            self.metrics.remove_alloc(&e.alloc);
            self.push(e.alloc, state, e.exit_code, e.signal, Some(e.message));
        }
    }

    /// With `stop_after_disconnect` set, stops every task once the masters
    /// have been unreachable that long.
    fn maybe_stop_all(&self) {
        let Some(limit) = self.settings.stop_after_disconnect else {
            return;
        };
        if lock(&self.last_contact).elapsed() < limit {
            return;
        }
        let running = lock(&self.executor).running();
        for (alloc, _) in running {
            if !lock(&self.shared).stopping.contains(&alloc) {
                tracing::warn!(alloc = %alloc, ?limit, "masters unreachable too long; stopping task");
                self.stop(&alloc, None);
            }
        }
    }

    /// With `stop_after_disconnect`, watches the time since a master last
    /// answered on a clock of its own: on a dead link a heartbeat does not
    /// fail, it hangs until the client's timeout, longer than the limit.
    async fn disconnect_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(limit) = self.settings.stop_after_disconnect else {
            return;
        };
        let every = (limit / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            self.maybe_stop_all();
        }
    }

    async fn heartbeat_once(&self) -> Result<(), ClientError> {
        self.collect_exits();
        let Some(node_id) = self.node_id() else {
            return Ok(());
        };
        let updates = lock(&self.shared).updates.clone();
        let usage = self.recent_usage();
        let r = &self.settings.resources;
        let req = HeartbeatRequest {
            node_id,
            offer: Offer {
                cpu_millis: r.cpu_millis.saturating_sub(usage.cpu_millis),
                memory_bytes: r.memory_bytes.saturating_sub(usage.memory_bytes),
                free_gpus: vec![],
            },
            usage,
            updates,
        };
        let sent = req.updates.len();
        let resp = self.client.heartbeat(&req).await?;
        self.contact();
        // Only now is an exit safe to forget: the master has it.
        let ended: Vec<AllocId> = req
            .updates
            .iter()
            .filter(|u| u.state.is_terminal())
            .map(|u| u.alloc.clone())
            .collect();
        if !ended.is_empty() {
            lock(&self.executor).ack(&ended);
        }
        let mut s = lock(&self.shared);
        let acked = sent.min(s.updates.len());
        s.updates.drain(..acked);
        s.interval = Duration::from_millis(resp.heartbeat_interval_ms.max(50));
        s.reregister |= resp.reregister;
        Ok(())
    }

    /// Node and per-alloc usage (each alloc measured from its shim down),
    /// also published as agent metrics.
    fn measure(&self) -> NodeUsage {
        let running = lock(&self.executor).running();
        let pids: BTreeMap<AllocId, Vec<u32>> = running
            .iter()
            .map(|(a, pid)| (a.clone(), vec![*pid]))
            .collect();
        let mut probe = lock(&self.probe);
        let usage = probe.usage(&pids);
        for (alloc, u) in probe.alloc_usage(&pids) {
            self.metrics
                .observe_alloc(&alloc, u.cpu_time.as_secs_f64(), u.rss_bytes);
        }
        for (index, ratio) in probe.gpu_utilization() {
            self.metrics.set_gpu_utilization(index, ratio);
        }
        // Without NVML the GPUs are the configured fakes: they never do any
        // work, and a 0 says so (rather than no series at all).
        if !probe.has_nvml() {
            for gpu in &self.settings.resources.gpus {
                self.metrics.set_gpu_utilization(gpu.index, 0.0);
            }
        }
        self.metrics.set_usage(&usage);
        let stopping = {
            let shared = lock(&self.shared);
            running
                .iter()
                .filter(|(a, _)| shared.stopping.contains(a))
                .count()
        };
        self.metrics.set_alloc_states([
            (AllocState::Running, running.len() - stopping),
            (AllocState::Stopping, stopping),
        ]);
        usage
    }

    /// Usage measured at most one interval ago.
    fn recent_usage(&self) -> NodeUsage {
        let interval = lock(&self.shared).interval;
        if let Some((at, usage)) = &*lock(&self.usage) {
            if at.elapsed() < interval {
                return usage.clone();
            }
        }
        let usage = self.measure();
        *lock(&self.usage) = Some((Instant::now(), usage.clone()));
        usage
    }

    async fn heartbeat_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut failed = false;
        loop {
            let interval = lock(&self.shared).interval;
            if failed {
                // Unreachable masters are retried at the interval, however
                // many updates queue up meanwhile.
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.changed() => return,
                }
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = self.report_now.notified() => {}
                    _ = shutdown.changed() => return,
                }
            }
            failed = false;
            if let Err(e) = self.heartbeat_once().await {
                tracing::warn!(error = %e, "heartbeat failed; tasks keep running");
                self.maybe_stop_all();
                failed = true;
            }
            if lock(&self.shared).reregister {
                tracing::info!("master asked this agent to register again");
                self.register(&mut shutdown).await;
            }
        }
    }

    async fn poll_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut known = 0u64;
        // What the master wants run here, kept between polls so that it
        // answers with what changed (a full set after a gap or a restart).
        let mut desired = Desired::default();
        let mut backoff = Backoff::new();
        loop {
            let Some(node_id) = self.node_id() else {
                return;
            };
            let req = PollRequest {
                node_id,
                known_version: known,
                delta: true,
            };
            let result = tokio::select! {
                r = self.client.poll(&req, self.settings.poll_wait) => r,
                _ = shutdown.changed() => return,
            };
            match result {
                Ok(resp) => {
                    backoff.reset();
                    self.contact();
                    known = resp.version;
                    desired.apply(resp);
                    // Starting a batch of shims blocks (posix_spawn, file
                    // system calls, a thread per core): not on a runtime
                    // worker, which the heartbeat and exit loops share.
                    let this = Arc::clone(&self);
                    let allocs = desired.assignments();
                    if let Err(e) =
                        tokio::task::spawn_blocking(move || this.reconcile(&allocs)).await
                    {
                        tracing::error!(error = %e, "reconciling the node's assignments failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "assignment poll failed; retrying");
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    /// Stops every task (SIGTERM, SIGKILL after `grace`) and waits until
    /// their shims are gone, or `grace` plus a second has passed. For a
    /// stopped agent whose tasks must not outlive it (`drover dev`).
    /// Returns how many tasks were still running at the end.
    pub async fn stop_all_tasks(&self, grace: Duration) -> usize {
        let running = lock(&self.executor).running();
        for (alloc, _) in &running {
            lock(&self.shared).stopping.insert(alloc.clone());
            if let Err(e) = lock(&self.executor).stop(alloc, Some(grace)) {
                tracing::warn!(alloc = %alloc, error = %e, "could not stop alloc");
            }
        }
        let deadline = Instant::now() + grace + Duration::from_secs(1);
        loop {
            // poll() enforces the SIGKILL deadline and reaps exits.
            self.collect_exits();
            let left = lock(&self.executor).running().len();
            if left == 0 || Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Collects task exits as they happen: a shim is this agent's child, so
    /// its exit raises SIGCHLD. Shims re-attached after an agent restart are
    /// not children; they are checked every 250 ms.
    async fn exit_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGCHLD stream; checking task exits by polling");
                None
            }
        };
        loop {
            tokio::select! {
                _ = async {
                    match sigchld.as_mut() {
                        Some(s) => { s.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => return,
            }
            self.collect_exits();
        }
    }

    /// Registers, then polls and heartbeats until `shutdown` turns true.
    /// Tasks keep running after the agent stops (they are supervised by
    /// their shims); a restarted agent re-attaches to them.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        if self.register(&mut shutdown).await.is_none() {
            return;
        }
        let polls = tokio::spawn(Arc::clone(&self).poll_loop(shutdown.clone()));
        let beats = tokio::spawn(Arc::clone(&self).heartbeat_loop(shutdown.clone()));
        let exits = tokio::spawn(Arc::clone(&self).exit_loop(shutdown.clone()));
        let cutoff = tokio::spawn(Arc::clone(&self).disconnect_loop(shutdown.clone()));
        let _ = polls.await;
        let _ = beats.await;
        let _ = exits.await;
        let _ = cutoff.await;
        // Report what ended during shutdown, best effort.
        let _ = self.heartbeat_once().await;
    }
}
