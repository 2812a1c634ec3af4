//! The agent protocol: register, heartbeat, and long polls answered from
//! each node's feed of assignment versions.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;

use drover_api::protocol::{
    task_env, AllocUpdate, Assignment, HeartbeatRequest, HeartbeatResponse, PollResponse,
    RegisterRequest, RegisterResponse,
};
use drover_api::{AllocId, JobType, NodeId, TaskState};
use tokio::sync::watch;

use crate::auth::{Principal, Role};
use crate::identity;
use crate::lifecycle;
use crate::model::{AllocRecord, NodeRecord, TaskRecord};
use crate::state::{Cluster, Txn};

use super::{CommitError, Master};

/// The allocs a write changed, by node (a node whose record alone changed
/// has none).
pub(super) type Touched = BTreeMap<NodeId, BTreeSet<AllocId>>;

/// Every node's feed, all starting at this master's base.
#[derive(Debug)]
pub(super) struct Feeds {
    base: u64,
    by_node: BTreeMap<NodeId, Feed>,
}

impl Feeds {
    /// Feeds whose versions start at a random base, far from 0 (an agent
    /// that knows nothing) and from overflow (see [`Feed::new`]).
    pub(super) fn new() -> Feeds {
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Feeds {
            base: (random >> 2).max(1 << 32),
            by_node: BTreeMap::new(),
        }
    }

    fn of(&mut self, node: &NodeId) -> &mut Feed {
        let base = self.base;
        self.by_node
            .entry(node.clone())
            .or_insert_with(|| Feed::new(base))
    }
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

impl Master {
    /// Moves each touched node to its next version, remembering what it
    /// changed. `forget`: what changed is unknown (the cluster was reloaded),
    /// so every node's next poll gets its whole set.
    pub(super) fn bump_nodes(&self, touched: Touched, forget: bool) {
        if let Some(log) = self
            .touched_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            for allocs in touched.values() {
                log.extend(allocs.iter().cloned());
            }
        }
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        for (node, allocs) in touched {
            let feed = feeds.of(&node);
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

    /// From now on, gathers the allocs that each commit changes, for
    /// [`Master::take_touched`] (the simulation harness, which acts on
    /// what changed instead of walking every alloc).
    pub fn log_touched(&self) {
        let mut log = self.touched_log.lock().unwrap_or_else(|e| e.into_inner());
        log.get_or_insert_with(Default::default);
    }

    /// The allocs changed since the last call (see [`Master::log_touched`]).
    pub fn take_touched(&self) -> std::collections::BTreeSet<AllocId> {
        let mut log = self.touched_log.lock().unwrap_or_else(|e| e.into_inner());
        log.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// A receiver of a node's assignment version; it changes whenever the
    /// node's live allocs do.
    pub fn node_version(&self, node: &NodeId) -> watch::Receiver<u64> {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        feeds.of(node).version.subscribe()
    }

    fn interval_ms(&self) -> u64 {
        u64::try_from(self.settings.heartbeat_interval.as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a node on behalf of `who`. With authentication on, a new
    /// node (or one from before it was on) joins with an `agent` join token
    /// and is given its credential; a known node must present its own.
    pub async fn register(
        &self,
        req: RegisterRequest,
        who: &Principal,
    ) -> Result<RegisterResponse, CommitError> {
        let now_ms = self.clock.wall_ms();
        let mut cluster = self.lock().await;
        let node_id = match (&req.node_id, who) {
            (Some(id), _) => id.clone(),
            (None, Principal::Node { node, .. }) => node.clone(),
            (None, _) => fresh_node_id(&cluster, &req.desc.hostname),
        };
        let credential = match who {
            Principal::Anyone => {
                node_access(&cluster, who, &node_id)?;
                None
            }
            Principal::Node { .. } => {
                node_access(&cluster, who, &node_id)?;
                None
            }
            Principal::Token {
                role: Role::Agent, ..
            } => {
                if let Some(known) = cluster.nodes.get(&node_id) {
                    if known.revoked || known.credential_sha256.is_some() {
                        return Err(CommitError::Forbidden(format!(
                            "node {node_id} has joined already: its agent must present the node's credential (a join token cannot take over a node)"
                        )));
                    }
                }
                Some(identity::issue(&node_id).map_err(|e| CommitError::Forbidden(e.to_string()))?)
            }
            Principal::Token { name, role } => {
                return Err(CommitError::Forbidden(format!(
                    "token {name} has the {role} role; agents join with an agent token"
                )))
            }
        };
        let log_key = cluster
            .nodes
            .get(&node_id)
            .and_then(|n| n.log_key.clone())
            .or_else(drover_api::capability::new_key);
        let changes = {
            let mut txn = Txn::new(&cluster);
            let previous = txn.node(&node_id).cloned();
            if let Some(p) = previous
                .as_ref()
                .filter(|p| !p.down && p.desc.hostname != req.desc.hostname)
            {
                return Err(CommitError::Conflict(format!(
                    "node id {node_id} belongs to host {:?}; this agent runs on {:?}",
                    p.desc.hostname, req.desc.hostname
                )));
            }
            txn.put_node(NodeRecord {
                id: node_id.clone(),
                desc: req.desc.clone(),
                down: false,
                credential_sha256: match &credential {
                    Some((_, hash)) => Some(hash.clone()),
                    None => previous.as_ref().and_then(|p| p.credential_sha256.clone()),
                },
                revoked: false,
                log_key: log_key.clone(),
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
        tracing::info!(node = %node_id, hostname = %req.desc.hostname, "node registered");
        self.wake_scheduler();
        if credential.is_some() {
            tracing::info!(node = %node_id, by = %who.name(), "node joined: credential issued");
        }
        Ok(RegisterResponse {
            node_id,
            heartbeat_interval_ms: self.interval_ms(),
            kill,
            credential: credential.map(|(c, _)| c),
            log_key,
        })
    }

    /// Counts `nodes` as heard from now: the simulation harness's virtual
    /// agents, which send nothing when they have nothing to say.
    pub async fn keep_alive(&self, nodes: &[NodeId]) {
        let mut cluster = self.lock().await;
        for node in nodes {
            self.seen(node, &mut cluster);
        }
    }

    fn seen(&self, node: &NodeId, cluster: &mut Cluster) {
        self.last_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node.clone(), self.clock.now());
        let was_suspect = cluster.live.get_mut(node).is_some_and(|live| {
            live.last_heartbeat_ms = self.clock.wall_ms();
            live.suspect
        });
        if was_suspect {
            cluster.set_suspect(node, false);
        }
    }

    pub async fn heartbeat(
        &self,
        req: HeartbeatRequest,
        who: &Principal,
    ) -> Result<HeartbeatResponse, CommitError> {
        let now_ms = self.clock.wall_ms();
        let mut cluster = self.lock().await;
        node_access(&cluster, who, &req.node_id)?;
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
        if applied.foreign > 0 {
            self.metrics
                .rejected_updates
                .with_label_values(&["foreign_alloc"])
                .inc_by(applied.foreign);
            tracing::warn!(node = %req.node_id, count = applied.foreign, "rejected reports about allocs assigned to other nodes");
        }
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

    /// Whether `who` may speak for `node` (polls check this before waiting).
    /// With authentication off it checks nothing, not even revocation: a
    /// revoked node is down and has no assignments, and a poll should not
    /// cost a second turn of the cluster lock.
    pub async fn check_node(&self, who: &Principal, node: &NodeId) -> Result<(), CommitError> {
        if *who == Principal::Anyone {
            return Ok(());
        }
        node_access(&*self.lock().await, who, node)
    }

    /// Revokes a node's credential: it is down at once, its allocs lost and
    /// requeued, and no agent may speak for it again. `false`: no such node.
    pub async fn revoke_node(&self, node: &NodeId) -> Result<bool, CommitError> {
        let now_ms = self.clock.wall_ms();
        let mut cluster = self.lock().await;
        if !cluster.nodes.contains_key(node) {
            return Ok(false);
        }
        let lost = cluster.live_allocs_on(node).count() as u64;
        let changes = {
            let mut txn = Txn::new(&cluster);
            lifecycle::node_down(&mut txn, node, now_ms);
            if let Some(n) = txn.node_mut(node) {
                n.revoked = true;
                n.credential_sha256 = None;
            }
            txn.into_changes()
        };
        let durable = self.stage(&mut cluster, changes);
        drop(cluster);
        durable.wait().await?;
        self.metrics
            .reschedules
            .with_label_values(&["lost"])
            .inc_by(lost);
        tracing::warn!(node = %node, lost, "node credential revoked: node down");
        self.wake_scheduler();
        Ok(true)
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
            let feed = feeds.of(node);
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
}

/// What a heartbeat's reports did.
#[derive(Debug, Default)]
struct Applied {
    /// Some alloc ended: its resources are free for the scheduler.
    ended: bool,
    /// Tasks whose attempt ended and that their restart policy requeued.
    restarted: u64,
    /// Reports about allocs assigned to another node: refused.
    foreign: u64,
}

fn apply_reports(
    txn: &mut Txn<'_>,
    node: &NodeId,
    updates: &[AllocUpdate],
    now_ms: u64,
) -> Applied {
    let mut applied = Applied::default();
    for u in updates {
        if txn.alloc(&u.alloc).is_some_and(|a| a.node != *node) {
            applied.foreign += 1;
            continue;
        }
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
/// Whether `who` may speak for `node`: with authentication on, only with
/// that node's own, unrevoked credential.
fn node_access(cluster: &Cluster, who: &Principal, node: &NodeId) -> Result<(), CommitError> {
    // Revoked is revoked, with authentication on or off.
    if cluster.nodes.get(node).is_some_and(|n| n.revoked) {
        return Err(CommitError::Forbidden(format!(
            "node {node}'s credential was revoked"
        )));
    }
    match who {
        Principal::Anyone => Ok(()),
        Principal::Token { name, .. } => Err(CommitError::Forbidden(format!(
            "token {name} cannot speak for node {node}: after joining, an agent calls with its node's credential"
        ))),
        Principal::Node {
            node: claimed,
            credential,
        } => {
            if claimed != node {
                return Err(CommitError::Forbidden(format!(
                    "this credential is node {claimed}'s, not node {node}'s"
                )));
            }
            match cluster
                .nodes
                .get(node)
                .and_then(|n| n.credential_sha256.as_deref())
            {
                Some(hash) if identity::verify(credential, hash) => Ok(()),
                _ => Err(CommitError::Unauthenticated(format!(
                    "not a valid credential for node {node}"
                ))),
            }
        }
    }
}

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
