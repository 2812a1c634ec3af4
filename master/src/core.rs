//! The master's shared core: the cluster behind one lock, the store, the
//! scheduler loop, liveness, and node assignment notifications.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant as StdInstant};

use drover_api::protocol::{
    task_env, AllocUpdate, Assignment, HeartbeatRequest, HeartbeatResponse, PollResponse,
    RegisterRequest, RegisterResponse,
};
use drover_api::{AllocId, JobId, JobType, NodeId, PolicyKind, TaskId, TaskState};
use scheduler_policies::{
    nominated, registry, ClusterView, Decision, Demand, Nominated, Policy, TaskRequest,
};
use tokio::sync::{mpsc, oneshot, watch, Mutex, MutexGuard, Notify};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::lifecycle::{self, KillCause};
use crate::metrics::Metrics;
use crate::model::{AllocRecord, Drain, NodeLive, NodeRecord, Nomination, TaskRecord};
use crate::state::{Changes, Cluster, Txn};
use crate::store::{Batch, Op, Store, StoreError};
use crate::view::{build_view, demand_of, task_request, Capacity};

/// Runtime parameters of the master (from its config file and flags).
#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub node_timeout: Duration,
    /// Missed heartbeats before a node is suspect.
    pub suspect_after_missed: u32,
    /// When more than half the nodes go silent at once, mark at most this
    /// many down per second (the master may be the one cut off).
    pub max_down_per_second: u32,
    pub default_policy: PolicyKind,
    /// The scheduler also runs this often without being woken (restart delays).
    pub pass_interval: Duration,
    pub poll_timeout: Duration,
    /// Grace between SIGTERM and SIGKILL, told to agents.
    pub kill_timeout: Duration,
    pub max_body_bytes: u64,
    /// Compact the store after this many deleted keys; 0: never.
    pub compact_after_deletes: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(10),
            suspect_after_missed: 3,
            max_down_per_second: 1,
            default_policy: PolicyKind::LeastLoaded,
            pass_interval: Duration::from_secs(1),
            poll_timeout: Duration::from_secs(30),
            kill_timeout: Duration::from_secs(5),
            max_body_bytes: 1 << 20,
            compact_after_deletes: 10_000,
        }
    }
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request contradicts what the master knows (HTTP 409).
    #[error("{0}")]
    Conflict(String),
}

#[derive(Debug)]
pub struct Master {
    pub settings: Settings,
    pub clock: Clock,
    pub metrics: Metrics,
    store: Arc<dyn Store>,
    cluster: Mutex<Cluster>,
    /// Heartbeat receive times, by the master's monotonic clock.
    last_seen: std::sync::Mutex<BTreeMap<NodeId, Instant>>,
    /// Each node's assignment version and what its recent versions changed.
    feeds: std::sync::Mutex<BTreeMap<NodeId, Feed>>,
    /// Where this master's feeds start (see [`Feed::new`]).
    feed_base: u64,
    policies: std::sync::Mutex<BTreeMap<PolicyKind, Box<dyn Policy>>>,
    wake: Notify,
    /// Token bucket for marking nodes down during a mass silence.
    down_budget: std::sync::Mutex<(f64, Instant)>,
    /// Set when the master begins to shut down: long polls answer at once.
    closing: watch::Sender<bool>,
    /// Staged writes on their way to the store (see [`Master::stage`]).
    committer: mpsc::UnboundedSender<Staged>,
    /// Set from a failed commit until the cluster is reloaded: memory may
    /// be ahead of the store, so nothing more is staged on top of it.
    stale: AtomicBool,
    /// Sequence number of the last write staged (under the cluster lock).
    staged_seq: AtomicU64,
    /// The last staged write that is settled (stored, or failed and undone
    /// by a reload), and how many reloads there have been: what an agent is
    /// shown must be settled and from the current epoch.
    settled: watch::Sender<(u64, u64)>,
}

/// A write applied in memory and queued for the store.
#[derive(Debug)]
struct Staged {
    seq: u64,
    changes: Changes,
    touched: Touched,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The allocs a write changed, by node (a node whose record alone changed
/// has none).
type Touched = BTreeMap<NodeId, BTreeSet<AllocId>>;

/// A random start for this master's node versions, far from 0 (an agent
/// that knows nothing) and from overflow.
fn feed_base() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (random >> 2).max(1 << 32)
}

/// How many versions back a node's feed remembers what changed: an agent
/// that polls again at once is a version or two behind; one further behind
/// gets the whole set.
const FEED_DEPTH: usize = 32;

/// A node's assignment version, which its long polls wait on, and the
/// allocs each of its recent versions changed, from which a poll that knows
/// an earlier version is answered with what changed since.
#[derive(Debug)]
struct Feed {
    version: watch::Sender<u64>,
    recent: VecDeque<(u64, BTreeSet<AllocId>)>,
}

impl Feed {
    /// Starts at `base`, which differs from one master to the next: an
    /// agent's version from another master (before a restart or a
    /// failover) is then never mistaken for one of this master's.
    fn new(base: u64) -> Feed {
        Feed {
            version: watch::channel(base).0,
            recent: VecDeque::new(),
        }
    }

    /// The allocs changed since `known`, if every version since is still
    /// remembered.
    fn changed_since(&self, known: u64) -> Option<BTreeSet<AllocId>> {
        let now = *self.version.borrow();
        if known == now {
            return Some(BTreeSet::new());
        }
        if known > now || self.recent.front().is_none_or(|(v, _)| *v > known + 1) {
            return None;
        }
        Some(
            self.recent
                .iter()
                .filter(|(v, _)| *v > known)
                .flat_map(|(_, ids)| ids.iter().cloned())
                .collect(),
        )
    }
}

/// The most staged writes one store commit takes: a group, however large,
/// costs one fsync (embedded) or one round of transactions (etcd).
const MAX_GROUP: usize = 1024;

/// A staged write's way to durability: await [`Durable::wait`] after
/// releasing the cluster lock, and only then acknowledge the write.
#[must_use = "a write is acknowledged only once it is durable"]
#[derive(Debug)]
pub struct Durable(Option<oneshot::Receiver<Result<(), StoreError>>>);

impl Durable {
    /// Resolves once the write is in the store, or failed (then the master
    /// has reloaded its state from the store: the write is undone).
    pub async fn wait(self) -> Result<(), CommitError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(result) => Ok(result?),
                Err(_) => Err(CommitError::Store(StoreError::Unavailable(
                    "the master stopped before the write was stored".into(),
                ))),
            },
        }
    }
}

impl Master {
    /// Loads the cluster from the store. Every known node counts as seen
    /// now, so no node is declared down before one `node_timeout` has passed
    /// since this master took office (DESIGN §7).
    pub async fn open(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Clock,
    ) -> Result<Arc<Master>, StoreError> {
        Master::open_with_metrics(settings, store, clock, Metrics::new()).await
    }

    /// [`Master::open`], counting into `metrics`: a process that leads
    /// several terms (etcd) keeps one set of series across them.
    pub async fn open_with_metrics(
        settings: Settings,
        store: Arc<dyn Store>,
        clock: Clock,
        metrics: Metrics,
    ) -> Result<Arc<Master>, StoreError> {
        let started = StdInstant::now();
        let snapshot = store.load().await?;
        let cluster = Cluster::from_snapshot(&snapshot)?;
        metrics
            .store_op_duration
            .with_label_values(&["load"])
            .observe(started.elapsed().as_secs_f64());
        metrics.is_leader.set(1.0);
        let now = clock.now();
        let last_seen = cluster.nodes.keys().map(|n| (n.clone(), now)).collect();
        tracing::info!(
            jobs = cluster.jobs.len(),
            tasks = cluster.tasks.len(),
            nodes = cluster.nodes.len(),
            backend = store.backend(),
            "cluster state loaded"
        );
        let (committer, queue) = mpsc::unbounded_channel();
        Ok(Arc::new_cyclic(|me: &Weak<Master>| {
            tokio::spawn(run_committer(me.clone(), queue));
            Master {
                settings,
                metrics,
                store,
                cluster: Mutex::new(cluster),
                last_seen: std::sync::Mutex::new(last_seen),
                feeds: std::sync::Mutex::new(BTreeMap::new()),
                feed_base: feed_base(),
                policies: std::sync::Mutex::new(BTreeMap::new()),
                wake: Notify::new(),
                down_budget: std::sync::Mutex::new((0.0, now)),
                closing: watch::channel(false).0,
                committer,
                stale: AtomicBool::new(false),
                staged_seq: AtomicU64::new(0),
                settled: watch::channel((0, 0)).0,
                clock,
            }
        }))
    }

    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    pub async fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().await
    }

    /// Applies `changes` to the cluster now and queues them for the store;
    /// the caller releases the lock, then awaits the returned [`Durable`]
    /// before acknowledging anything. Writes staged while others are being
    /// stored go to the store together, in order, in one commit (group
    /// commit): the lock is never held across a store round trip, so a
    /// thousand heartbeats cost a few fsyncs, not a thousand.
    ///
    /// Nodes whose assignments changed are told (their long polls answer)
    /// only once the change is durable. If a commit fails, every write
    /// staged after it fails too and the master reloads the cluster from the
    /// store, so memory never stays ahead of what is stored.
    pub fn stage(&self, cluster: &mut Cluster, changes: Changes) -> Durable {
        if changes.is_empty() {
            return Durable(None);
        }
        let (done, rx) = oneshot::channel();
        if self.stale.load(Ordering::SeqCst) {
            let _ = done.send(Err(StoreError::Unavailable(
                "a write failed; the master is reloading the cluster from the store".into(),
            )));
            return Durable(Some(rx));
        }
        let touched = changes.touched_allocs(cluster);
        cluster.apply(&changes);
        let seq = self.staged_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let staged = Staged {
            seq,
            changes,
            touched,
            done,
        };
        if let Err(mpsc::error::SendError(staged)) = self.committer.send(staged) {
            // Only once the runtime is shutting down.
            let _ = staged.done.send(Err(StoreError::Unavailable(
                "the master is stopping".into(),
            )));
        }
        Durable(Some(rx))
    }

    /// Moves each touched node to its next version, remembering what it
    /// changed. `forget`: what changed is unknown (the cluster was reloaded),
    /// so every node's next poll gets its whole set.
    fn bump_nodes(&self, touched: Touched, forget: bool) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        for (node, allocs) in touched {
            let feed = feeds
                .entry(node)
                .or_insert_with(|| Feed::new(self.feed_base));
            if forget {
                feed.recent.clear();
            }
            feed.version.send_modify(|v| *v += 1);
            if !forget {
                feed.recent.push_back((*feed.version.borrow(), allocs));
                if feed.recent.len() > FEED_DEPTH {
                    feed.recent.pop_front();
                }
            }
        }
    }

    /// A receiver of a node's assignment version; it changes whenever the
    /// node's live allocs do.
    pub fn node_version(&self, node: &NodeId) -> watch::Receiver<u64> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        feeds
            .entry(node.clone())
            .or_insert_with(|| Feed::new(self.feed_base))
            .version
            .subscribe()
    }

    /// Asks the scheduler loop for a pass soon.
    pub fn wake_scheduler(&self) {
        self.wake.notify_one();
    }

    // ---- scheduling ----

    /// Runs passes when woken or every `pass_interval`, until `shutdown`.
    pub async fn run_scheduler(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.pass_interval) => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.schedule_pass().await {
                tracing::warn!(error = %e, "scheduling pass not committed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.wake_scheduler();
            }
        }
    }

    /// One pass: snapshot, run each policy on its share of the queue,
    /// commit all decisions in one batch.
    pub async fn schedule_pass(&self) -> Result<usize, CommitError> {
        let started = StdInstant::now();
        let mut cluster = self.lock().await;
        if cluster.pending.is_empty() {
            return Ok(0);
        }
        let now_ms = self.clock.wall_ms();
        let default = self.settings.default_policy;
        let mut demands: BTreeMap<JobId, Arc<Demand>> = BTreeMap::new();
        let mut groups: BTreeMap<PolicyKind, Vec<TaskRequest>> = BTreeMap::new();
        // Preemptors waiting for their victims: decided before the policies.
        let mut nominated: Vec<(PolicyKind, TaskRequest, NodeId)> = Vec::new();
        let mut pending_since: BTreeMap<TaskId, u64> = BTreeMap::new();
        // Per job: tasks examined, and how many at most (see Capacity). A
        // policy that never preempts is bound by the free room; one that
        // may preempt (or shrink elastic jobs) by all of it.
        let total = Capacity::of(&cluster);
        let free = Capacity::free(&cluster);
        let mut examined: BTreeMap<JobId, (usize, usize)> = BTreeMap::new();
        let mut capped: BTreeSet<JobId> = BTreeSet::new();
        let mut consider = |tid: &TaskId| -> Examine {
            let (Some(task), Some(job)) = (cluster.tasks.get(tid), cluster.jobs.get(&tid.job))
            else {
                return Examine::Next;
            };
            if job.stopped || task.not_before_ms > now_ms {
                return Examine::Next;
            }
            let spec = &job.spec;
            let kind = spec.effective_policy(default);
            let demand = demands
                .entry(job.id.clone())
                .or_insert_with(|| Arc::new(demand_of(spec)));
            // Elastic jobs are not capped: gang admission looks at how
            // many shards of the job are queued.
            if task.nominated.is_none() && spec.elastic.is_none() {
                let (seen, most) = examined.entry(job.id.clone()).or_insert_with(|| {
                    let bound = match kind {
                        PolicyKind::RoundRobin | PolicyKind::LeastLoaded => &free,
                        PolicyKind::Priority | PolicyKind::ElasticSharding => &total,
                    };
                    (0, bound.examine_at_most(demand))
                });
                if *seen >= *most {
                    capped.insert(job.id.clone());
                    return Examine::SkipJob;
                }
                *seen += 1;
            }
            let since = task.history.last().map_or(now_ms, |t| t.at_unix_ms);
            pending_since.insert(tid.clone(), since.max(task.not_before_ms));
            let request = task_request(spec, tid.index, job.submit_seq, demand);
            match &task.nominated {
                Some(n) => nominated.push((kind, request, n.node.clone())),
                None => groups.entry(kind).or_default().push(request),
            }
            Examine::Next
        };
        // The queue is in task id order, so a capped job's other waiting
        // tasks are skipped with one range lookup: a pass costs what it
        // may place, plus one task per waiting job, not what waits.
        let mut next = cluster.pending.first();
        while let Some(tid) = next {
            match consider(tid) {
                Examine::Next => {
                    next = cluster.pending.range((Excluded(tid), Unbounded)).next();
                }
                Examine::SkipJob => {
                    let last = tid.job.task(u32::MAX);
                    // Preemptors holding a reservation are never capped.
                    for held in cluster.nominated.range((Excluded(tid), Included(&last))) {
                        consider(held);
                    }
                    next = cluster.pending.range((Excluded(&last), Unbounded)).next();
                }
            }
        }
        let examined_tasks = pending_since.len() as u64;
        // Counted while staging, published only once the commit succeeds.
        let mut placed_by: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut latencies = Vec::new();
        let mut preempted = 0u64;
        let mut waits = Vec::new();
        let changes = {
            let mut txn = Txn::new(&cluster);
            let mut placed = |txn: &mut Txn<'_>, task: &TaskId, node: &NodeId, gpus, policy| {
                if lifecycle::place(txn, task, node, gpus, policy, now_ms).is_some() {
                    *placed_by.entry(policy).or_default() += 1;
                    let since = pending_since.get(task).copied().unwrap_or(now_ms);
                    latencies.push(now_ms.saturating_sub(since) as f64 / 1000.0);
                }
            };
            if !nominated.is_empty() {
                let view = build_view(&txn);
                for (kind, request, node) in nominated {
                    match nominated::decide(&view, &request) {
                        Nominated::Place { gpus } => {
                            placed(&mut txn, &request.task, &node, gpus, kind.name());
                        }
                        Nominated::Wait { reason } => waits.push((request.task, reason)),
                        Nominated::Release => {
                            if let Some(t) = txn.task_mut(&request.task) {
                                t.nominated = None;
                            }
                            groups.entry(kind).or_default().push(request);
                        }
                    }
                }
            }
            let mut policies = self.policies.lock().unwrap_or_else(|e| e.into_inner());
            for (kind, queue) in &groups {
                let view: ClusterView = build_view(&txn);
                let policy = policies
                    .entry(*kind)
                    .or_insert_with(|| registry::build(*kind));
                // Tasks that evicted allocs in this pass, and how many.
                let mut preempting: BTreeMap<TaskId, usize> = BTreeMap::new();
                for decision in policy.schedule(&view, queue) {
                    match decision {
                        Decision::Place { task, node, gpus } => match preempting.remove(&task) {
                            // The victims hold their room until they exit:
                            // reserve it, and place the task once they have.
                            Some(victims) => {
                                if let Some(t) = txn.task_mut(&task) {
                                    t.nominated = Some(Nomination {
                                        node: node.clone(),
                                        gpus,
                                    });
                                }
                                waits.push((task, nominated::waiting_reason(&node, victims)));
                            }
                            None => placed(&mut txn, &task, &node, gpus, kind.name()),
                        },
                        Decision::Preempt { victim, for_task } => {
                            *preempting.entry(for_task.clone()).or_default() += 1;
                            if lifecycle::kill(
                                &mut txn,
                                &victim,
                                KillCause::Preempted { by: for_task },
                                now_ms,
                            ) {
                                preempted += 1;
                            }
                        }
                        Decision::Wait { task, reason } => waits.push((task, reason)),
                    }
                }
            }
            txn.into_changes()
        };
        let durable = self.stage(&mut cluster, changes);
        let mut job_waits = BTreeMap::new();
        for (task, reason) in waits {
            if capped.contains(&task.job) {
                job_waits.insert(task.job.clone(), reason.clone());
            }
            cluster.wait_reasons.insert(task, reason);
        }
        cluster.job_wait_reasons = job_waits;
        let waiting = cluster.pending.len();
        drop(cluster);
        durable.wait().await?;
        let placed: u64 = placed_by.values().sum();
        for (policy, n) in placed_by {
            self.metrics
                .placements
                .with_label_values(&[policy])
                .inc_by(n);
        }
        for l in latencies {
            self.metrics.scheduling_latency.observe(l);
        }
        self.metrics.preemptions.inc_by(preempted);
        self.metrics.examined.inc_by(examined_tasks);
        self.metrics
            .reschedules
            .with_label_values(&["preempted"])
            .inc_by(preempted);
        let elapsed = started.elapsed();
        self.metrics.pass_duration.observe(elapsed.as_secs_f64());
        if placed > 0 {
            tracing::debug!(placed, waiting, ?elapsed, "scheduling pass");
        }
        Ok(placed as usize)
    }

    // ---- agents ----

    fn interval_ms(&self) -> u64 {
        u64::try_from(self.settings.heartbeat_interval.as_millis()).unwrap_or(u64::MAX)
    }

    pub async fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, CommitError> {
        let now_ms = self.clock.wall_ms();
        let mut cluster = self.lock().await;
        let node_id = match &req.node_id {
            Some(id) => id.clone(),
            None => fresh_node_id(&cluster, &req.hostname),
        };
        let changes = {
            let mut txn = Txn::new(&cluster);
            let previous = txn.node(&node_id).cloned();
            if let Some(p) = previous
                .as_ref()
                .filter(|p| !p.down && p.hostname != req.hostname)
            {
                return Err(CommitError::Conflict(format!(
                    "node id {node_id} belongs to host {:?}; this agent runs on {:?}",
                    p.hostname, req.hostname
                )));
            }
            txn.put_node(NodeRecord {
                id: node_id.clone(),
                hostname: req.hostname.clone(),
                log_addr: req.log_addr.clone(),
                resources: req.resources.clone(),
                reserved: req.reserved,
                labels: req.labels.clone(),
                attributes: req.attributes.clone(),
                version: req.version.clone(),
                down: false,
                drain: previous.as_ref().and_then(|p| p.drain.clone()),
                registered_at_ms: now_ms,
            });
            txn.into_changes()
        };
        let durable = self.stage(&mut cluster, changes);
        let live: Vec<AllocId> = cluster
            .live_allocs_on(&node_id)
            .map(|a| a.id.clone())
            .collect();
        let kill = req
            .running_allocs
            .iter()
            .filter(|a| !live.contains(a))
            .cloned()
            .collect();
        self.seen(&node_id, &mut cluster);
        drop(cluster);
        durable.wait().await?;
        tracing::info!(node = %node_id, hostname = %req.hostname, "node registered");
        self.wake_scheduler();
        Ok(RegisterResponse {
            node_id,
            heartbeat_interval_ms: self.interval_ms(),
            kill,
        })
    }

    fn seen(&self, node: &NodeId, cluster: &mut Cluster) {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.clone(), self.clock.now());
        if let Some(live) = cluster.live.get_mut(node) {
            live.suspect = false;
            live.last_heartbeat_ms = self.clock.wall_ms();
        }
    }

    pub async fn heartbeat(&self, req: HeartbeatRequest) -> Result<HeartbeatResponse, CommitError> {
        let now_ms = self.clock.wall_ms();
        let mut cluster = self.lock().await;
        let Some(node) = cluster.nodes.get(&req.node_id) else {
            return Ok(HeartbeatResponse {
                heartbeat_interval_ms: self.interval_ms(),
                reregister: true,
            });
        };
        let was_down = node.down;
        let (changes, applied) = {
            let mut txn = Txn::new(&cluster);
            if was_down {
                if let Some(n) = txn.node_mut(&req.node_id) {
                    n.down = false;
                }
            }
            let applied = apply_reports(&mut txn, &req.node_id, &req.updates, now_ms);
            (txn.into_changes(), applied)
        };
        let durable = self.stage(&mut cluster, changes);
        let ended = applied.ended;
        self.seen(&req.node_id, &mut cluster);
        if let Some(live) = cluster.live.get_mut(&req.node_id) {
            live.usage_cpu_millis = req.usage.cpu_millis;
            live.usage_memory_bytes = req.usage.memory_bytes;
            live.offer_cpu_millis = req.offer.cpu_millis;
            live.offer_memory_bytes = req.offer.memory_bytes;
        }
        drop(cluster);
        durable.wait().await?;
        self.metrics
            .reschedules
            .with_label_values(&["restart"])
            .inc_by(applied.restarted);
        if was_down {
            tracing::info!(node = %req.node_id, "node is back");
        }
        if ended || was_down {
            self.wake_scheduler();
        }
        Ok(HeartbeatResponse {
            heartbeat_interval_ms: self.interval_ms(),
            reregister: false,
        })
    }

    /// The node's desired allocs and the version they are at, once durable:
    /// an agent is never shown an alloc a crash could still undo. `None`
    /// while the cluster in memory is ahead of the store (a failed write
    /// not yet undone by a reload).
    pub async fn assignments(&self, node: &NodeId, known: Option<u64>) -> Option<PollResponse> {
        loop {
            let (answer, seq, epoch) = {
                let cluster = self.lock().await;
                if self.stale.load(Ordering::SeqCst) {
                    return None;
                }
                let answer = self.assignments_now(&cluster, node, known);
                (
                    answer,
                    self.staged_seq.load(Ordering::SeqCst),
                    self.settled.borrow().1,
                )
            };
            let mut settled = self.settled.subscribe();
            if settled.wait_for(|(done, _)| *done >= seq).await.is_err() {
                return None;
            }
            if settled.borrow().1 == epoch {
                return Some(answer);
            }
        }
    }

    /// The node's assignments as the cluster holds them now: all of them,
    /// or, given a `known` version whose changes since are remembered,
    /// only the allocs those changes touched (as they are now).
    fn assignments_now(
        &self,
        cluster: &Cluster,
        node: &NodeId,
        known: Option<u64>,
    ) -> PollResponse {
        let (version, changed) = {
            let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
            let feed = feeds
                .entry(node.clone())
                .or_insert_with(|| Feed::new(self.feed_base));
            let version = *feed.version.borrow();
            (version, known.and_then(|k| feed.changed_since(k)))
        };
        match changed {
            None => PollResponse {
                version,
                full: true,
                allocs: cluster
                    .live_allocs_on(node)
                    .map(|a| self.assignment(cluster, a))
                    .collect(),
                removed: Vec::new(),
            },
            Some(ids) => {
                let mut allocs = Vec::new();
                let mut removed = Vec::new();
                for id in ids {
                    match cluster.allocs.get(&id) {
                        Some(a) if a.node == *node && a.is_live() => {
                            allocs.push(self.assignment(cluster, a));
                        }
                        _ => removed.push(id),
                    }
                }
                PollResponse {
                    version,
                    full: false,
                    allocs,
                    removed,
                }
            }
        }
    }

    fn assignment(&self, cluster: &Cluster, a: &AllocRecord) -> Assignment {
        let Some(spec) = cluster.jobs.get(&a.id.task.job).map(|j| &j.spec) else {
            // A purged job's attempt, kept while it stops: nothing to
            // launch, only to stop.
            return Assignment {
                alloc: a.id.clone(),
                job_type: JobType::Batch,
                command: Vec::new(),
                env: BTreeMap::new(),
                cpu_millis: a.cpu_millis,
                memory_bytes: a.memory_bytes,
                gpus: a.gpus.clone(),
                kill_timeout_ms: lifecycle::duration_ms(self.settings.kill_timeout),
                stop: true,
            };
        };
        Assignment {
            alloc: a.id.clone(),
            job_type: spec.job_type,
            command: spec.command.clone(),
            env: task_env(&a.id, spec.shards, &a.gpus, &spec.env),
            cpu_millis: a.cpu_millis,
            memory_bytes: a.memory_bytes,
            gpus: a.gpus.clone(),
            kill_timeout_ms: lifecycle::duration_ms(
                spec.kill_timeout.unwrap_or(self.settings.kill_timeout),
            ),
            stop: a.is_stopping(),
        }
    }

    /// Waits until the node's assignments differ from `known`, or the poll
    /// timeout passes; then returns them: whole, or with `delta`, what
    /// changed since `known` when the master still knows that.
    pub async fn poll(&self, node: &NodeId, known: u64, delta: bool) -> Option<PollResponse> {
        let mut rx = self.node_version(node);
        let mut closing = self.closing.subscribe();
        if *rx.borrow_and_update() == known && !*closing.borrow_and_update() {
            tokio::select! {
                _ = tokio::time::timeout(self.settings.poll_timeout, rx.changed()) => {}
                _ = closing.changed() => {}
            }
        }
        // A master whose term is over (stopping, or deposed) must not hand
        // out what it last knew: another master may already have changed
        // the node's assignments.
        if *closing.borrow() {
            return None;
        }
        // Version 0 is an agent that knows nothing yet.
        let known = (delta && known > 0).then_some(known);
        self.assignments(node, known).await
    }

    /// The master's term is ending (shutdown, or lost leadership): pending
    /// long polls answer now, with "ask another master", so that a graceful
    /// shutdown does not wait out `poll_timeout` on each of them.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    // ---- operators ----

    pub async fn set_drain(
        &self,
        node: &NodeId,
        enable: bool,
        deadline: Duration,
    ) -> Result<Option<NodeRecord>, CommitError> {
        let now_ms = self.clock.wall_ms();
        let mut cluster = self.lock().await;
        if !cluster.nodes.contains_key(node) {
            return Ok(None);
        }
        let mut drained = 0u64;
        let changes = {
            let mut txn = Txn::new(&cluster);
            if let Some(n) = txn.node_mut(node) {
                n.drain = enable.then(|| Drain {
                    started_at_ms: now_ms,
                    deadline_ms: now_ms
                        .saturating_add(u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX)),
                });
            }
            // Services move at once; batch tasks may finish until the deadline.
            if enable {
                drained = lifecycle::drain(&mut txn, node, deadline.is_zero(), now_ms);
            }
            txn.into_changes()
        };
        let durable = self.stage(&mut cluster, changes);
        let rec = cluster.nodes.get(node).map(|n| NodeRecord::clone(n));
        drop(cluster);
        durable.wait().await?;
        self.metrics
            .reschedules
            .with_label_values(&["drained"])
            .inc_by(drained);
        tracing::info!(node = %node, enable, ?deadline, "drain updated");
        self.wake_scheduler();
        Ok(rec)
    }

    // ---- liveness ----

    /// Checks heartbeats every half interval until `shutdown`.
    pub async fn run_liveness(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.heartbeat_interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.check_liveness().await {
                tracing::warn!(error = %e, "liveness changes not committed; retrying next tick");
            }
        }
    }

    /// Marks silent nodes suspect, then down (their allocs lost), and
    /// enforces drain deadlines. Returns the nodes declared down.
    pub async fn check_liveness(&self) -> Result<Vec<NodeId>, CommitError> {
        let now = self.clock.now();
        let now_ms = self.clock.wall_ms();
        let mut cluster = self.lock().await;
        let suspect_after = self.settings.heartbeat_interval * self.settings.suspect_after_missed;
        let mut candidates = Vec::new();
        let mut alive = 0usize;
        {
            let seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<NodeId> = cluster
                .nodes
                .values()
                .filter(|n| !n.down)
                .map(|n| n.id.clone())
                .collect();
            for id in ids {
                alive += 1;
                let silent = seen
                    .get(&id)
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t));
                let live = cluster
                    .live
                    .entry(id.clone())
                    .or_insert_with(NodeLive::default);
                live.suspect = silent > suspect_after;
                if silent > self.settings.node_timeout {
                    candidates.push(id);
                }
            }
        }
        let down = self.limit_mass_failure(candidates, alive, now);
        let (mut lost, mut drained) = (0u64, 0u64);
        let changes = {
            let mut txn = Txn::new(&cluster);
            for node in &down {
                lost += txn.live_alloc_ids_on(node).len() as u64;
                lifecycle::node_down(&mut txn, node, now_ms);
            }
            let overdue: Vec<NodeId> = cluster
                .nodes
                .values()
                .filter(|n| !n.down && n.drain.as_ref().is_some_and(|d| d.deadline_ms <= now_ms))
                .map(|n| n.id.clone())
                .collect();
            for node in overdue {
                drained += lifecycle::drain(&mut txn, &node, true, now_ms);
            }
            txn.into_changes()
        };
        let changed = !changes.is_empty();
        let durable = self.stage(&mut cluster, changes);
        drop(cluster);
        durable.wait().await?;
        self.metrics
            .reschedules
            .with_label_values(&["lost"])
            .inc_by(lost);
        self.metrics
            .reschedules
            .with_label_values(&["drained"])
            .inc_by(drained);
        for node in &down {
            self.metrics.node_failures.inc();
            tracing::warn!(node = %node, timeout = ?self.settings.node_timeout, "node down: no heartbeat");
        }
        if changed {
            self.wake_scheduler();
        }
        Ok(down)
    }

    /// If more than half of the live nodes went silent at once, the master
    /// is more likely cut off than they are dead: let only a trickle through.
    fn limit_mass_failure(
        &self,
        mut candidates: Vec<NodeId>,
        alive: usize,
        now: Instant,
    ) -> Vec<NodeId> {
        if candidates.len() * 2 <= alive || alive < 2 {
            return candidates;
        }
        let rate = f64::from(self.settings.max_down_per_second.max(1));
        let mut budget = self.down_budget.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(budget.1).as_secs_f64();
        budget.0 = (budget.0 + elapsed * rate).min(rate);
        budget.1 = now;
        let allowed = budget.0.floor() as usize;
        tracing::error!(
            silent = candidates.len(),
            alive,
            allowed,
            "more than half of the nodes went silent at once; this master may be the one cut off; marking nodes down at most {rate}/s"
        );
        candidates.truncate(allowed);
        budget.0 -= candidates.len() as f64;
        candidates
    }
}

/// What a heartbeat's reports did.
#[derive(Debug, Default)]
struct Applied {
    /// Some alloc ended: its resources are free for the scheduler.
    ended: bool,
    /// Tasks whose attempt ended and that their restart policy requeued.
    restarted: u64,
}

fn apply_reports(
    txn: &mut Txn<'_>,
    node: &NodeId,
    updates: &[AllocUpdate],
    now_ms: u64,
) -> Applied {
    let mut applied = Applied::default();
    for u in updates {
        // Only the task's latest attempt moves the task; a task pending
        // after that attempt ended was requeued by its restart policy.
        let latest = txn
            .task(&u.alloc.task)
            .and_then(TaskRecord::latest_alloc)
            .is_some_and(|a| a == u.alloc);
        // A stopped attempt's task was requeued by whoever stopped it
        // (preemption, drain, update), and counted then.
        let stopping = txn.alloc(&u.alloc).is_some_and(|a| a.is_stopping());
        if lifecycle::report(txn, node, u, now_ms) {
            applied.ended |= u.state.is_terminal();
            if latest
                && !stopping
                && u.state.is_terminal()
                && txn
                    .task(&u.alloc.task)
                    .is_some_and(|t| t.state == TaskState::Pending)
            {
                applied.restarted += 1;
            }
        } else {
            tracing::debug!(node = %node, alloc = %u.alloc, state = %u.state, "ignored report about an alloc that is not live here");
        }
    }
    applied
}

/// A node id from the hostname, made unique.
fn fresh_node_id(cluster: &Cluster, hostname: &str) -> NodeId {
    let base: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    let base = if base.is_empty() {
        "node".to_string()
    } else {
        base
    };
    (0..)
        .map(|i| {
            if i == 0 {
                base.clone()
            } else {
                format!("{base}-{i}")
            }
        })
        .filter_map(|s| NodeId::new(s).ok())
        .find(|id| !cluster.nodes.contains_key(id))
        .unwrap_or_else(|| NodeId::new("node").expect("valid literal"))
}

/// Writes staged changes to the store in groups, in the order they were
/// staged (see [`Master::stage`]).
///
/// It holds the master only while a group is in flight: dropping the last
/// other handle drops the master, and closes its store, at once.
/// How often the committer reads the store's size while writes go on.
const SIZE_EVERY: Duration = Duration::from_secs(10);

/// Keeps `drover_store_file_bytes` current, and compacts the store once
/// enough keys have been deleted. Runs in the committer after a commit and
/// before its writers are answered: no write is in flight, and the writes
/// that asked for it (a purge) answer once it is done.
#[derive(Debug, Default)]
struct Upkeep {
    deleted: u64,
    sized_at: Option<StdInstant>,
}

impl Upkeep {
    async fn after_commit(&mut self, m: &Master, deleted: u64) {
        self.deleted += deleted;
        let every = m.settings.compact_after_deletes;
        if every > 0 && self.deleted >= every {
            let deleted = std::mem::take(&mut self.deleted);
            let started = StdInstant::now();
            match m.store.compact().await {
                Ok(done) => {
                    m.metrics
                        .store_op_duration
                        .with_label_values(&["compact"])
                        .observe(started.elapsed().as_secs_f64());
                    if done {
                        m.metrics.store_compactions.inc();
                    }
                    tracing::info!(deleted, compacted = done, elapsed = ?started.elapsed(), "store compaction after deletes");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store compaction failed; trying again after more deletes")
                }
            }
            self.sized_at = None;
        }
        if self.sized_at.is_none_or(|at| at.elapsed() >= SIZE_EVERY) {
            self.sized_at = Some(StdInstant::now());
            if let Some(bytes) = m.store.size_bytes().await {
                m.metrics
                    .store_bytes
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
    }
}

async fn run_committer(master: Weak<Master>, mut queue: mpsc::UnboundedReceiver<Staged>) {
    let mut upkeep = Upkeep::default();
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let mut batch = Batch::new();
        let mut touched = Touched::new();
        let mut waiting: Vec<oneshot::Sender<Result<(), StoreError>>> =
            Vec::with_capacity(group.len());
        let mut last = 0;
        for staged in group {
            last = staged.seq;
            // Serialized here, not under the cluster lock: the records
            // are shared with the cluster, and no longer change.
            batch.append(staged.changes.batch());
            for (node, allocs) in staged.touched {
                touched.entry(node).or_default().extend(allocs);
            }
            waiting.push(staged.done);
        }
        let Some(m) = master.upgrade() else { return };
        let deleted = batch
            .ops()
            .iter()
            .filter(|op| matches!(op, Op::Delete { .. }))
            .count() as u64;
        let started = StdInstant::now();
        let result = m.store.commit(batch).await;
        m.metrics
            .store_op_duration
            .with_label_values(&["commit"])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                m.settled.send_modify(|(seq, _)| *seq = last);
                m.bump_nodes(touched, false);
                // Before the writers hear back: a compaction holds them
                // (and no handle on the master outlives their answer).
                upkeep.after_commit(&m, deleted).await;
                for done in waiting {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, writes = waiting.len(), "group commit failed: reloading the cluster from the store");
                // Every write staged since built on the failed one.
                {
                    let _cluster = m.lock().await;
                    m.stale.store(true, Ordering::SeqCst);
                    while let Ok(staged) = queue.try_recv() {
                        last = staged.seq;
                        waiting.push(staged.done);
                    }
                }
                // Writers hear of the failure once memory is back in step
                // with the store, when the store answers at all: a failed
                // write then leaves no trace for their next request to see.
                let reloaded = m.reload().await;
                // Settled, as undone: whoever waited on them re-reads.
                m.settled.send_modify(|(seq, epoch)| {
                    *seq = last;
                    *epoch += 1;
                });
                for done in waiting {
                    let _ = done.send(Err(e.clone()));
                }
                drop(m);
                if reloaded.is_err() && !reload_until_done(&master).await {
                    return;
                }
            }
        }
    }
}

/// Retries [`Master::reload`] while the store is away, without holding the
/// cluster lock meanwhile (writes answer 503; reads and heartbeats go on).
/// Gives up, returning false, once the master's term is over.
async fn reload_until_done(master: &Weak<Master>) -> bool {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(m) = master.upgrade() else {
            return false;
        };
        if *m.closing.borrow() {
            return false;
        }
        match m.reload().await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %e, "reloading the cluster failed; retrying"),
        }
    }
}

impl Master {
    /// Replaces the cluster in memory with what the store holds, and lets
    /// writes be staged again.
    async fn reload(&self) -> Result<(), StoreError> {
        let snapshot = self.store.load().await?;
        let fresh = Cluster::from_snapshot(&snapshot)?;
        let mut cluster = self.lock().await;
        *cluster = fresh;
        self.stale.store(false, Ordering::SeqCst);
        // Polls refused while the cluster was stale: answer them now.
        let nodes: Touched = cluster
            .nodes
            .keys()
            .map(|n| (n.clone(), BTreeSet::new()))
            .collect();
        drop(cluster);
        self.bump_nodes(nodes, true);
        self.wake_scheduler();
        tracing::info!("cluster reloaded from the store");
        Ok(())
    }
}

/// What the pass does after examining one waiting task.
enum Examine {
    Next,
    /// The job has as many tasks examined as could be placed: skip the rest.
    SkipJob,
}
