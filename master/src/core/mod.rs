//! The master: the cluster behind one lock, and what works on it. Each job
//! of the master has a module of its own: `scheduler` (the scheduling
//! pass), `liveness` (heartbeat timeouts), `agents` (the agent protocol:
//! register, heartbeat, long polls and their per-node feeds) and
//! `committer` (staging writes and storing them in groups). This module
//! holds what they share: the [`Master`] itself, its settings and opening,
//! and the operator actions that fit none of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant as StdInstant};

use drover_api::{NodeId, PolicyKind};
use scheduler_policies::Policy;
use tokio::sync::{mpsc, watch, Mutex, MutexGuard, Notify};
use tokio::time::Instant;

use crate::clock::Clock;
use crate::lifecycle;
use crate::metrics::Metrics;
use crate::model::{Drain, NodeRecord};
use crate::state::{Cluster, Tally, Txn};
use crate::store::{Store, StoreError};

mod agents;
mod api;
mod committer;
mod liveness;
mod scheduler;

use agents::{Feeds, Touched};
pub use api::LogSourceError;
pub use committer::Durable;
use committer::{run_committer, Staged};

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
    /// Users' REST calls served at once (`api.max_requests`).
    pub max_requests: usize,
    /// Agent protocol calls served at once (`api.max_agent_requests`).
    pub max_agent_requests: usize,
    /// Tasks that may wait to be placed (`scheduler.max_pending_tasks`).
    pub max_pending_tasks: usize,
    /// Compact the store after this many deleted keys; 0: never.
    pub compact_after_deletes: u64,
    /// TLS to agents' log servers that serve it (`tls.agent_ca_file`).
    pub agent_tls: Option<drover_tls::ClientTls>,
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
            max_requests: 512,
            max_agent_requests: 16_384,
            max_pending_tasks: 2_000_000,
            compact_after_deletes: 10_000,
            agent_tls: None,
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
    /// The caller has no valid credential for the node it speaks for (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this, whoever it is (403).
    #[error("{0}")]
    Forbidden(String),
    /// The pending queue is full: nothing was done; try again later (429).
    #[error("{pending} tasks are waiting to be placed and this job's {adding} would pass the limit of {limit} (scheduler.max_pending_tasks); try again later")]
    Backlog {
        pending: usize,
        adding: usize,
        limit: usize,
    },
}

#[derive(Debug)]
pub struct Master {
    pub settings: Settings,
    pub clock: Clock,
    pub metrics: Metrics,
    store: Arc<dyn Store>,
    cluster: Mutex<Cluster>,
    /// The cluster's tally as of its last change: `GET /v1/cluster` and the
    /// gauges read it without waiting for the cluster lock.
    tally: Arc<std::sync::Mutex<Tally>>,
    /// Heartbeat receive times, by the master's monotonic clock.
    last_seen: std::sync::Mutex<BTreeMap<NodeId, Instant>>,
    /// Each node's assignment version and what its recent versions changed.
    feeds: std::sync::Mutex<Feeds>,
    policies: std::sync::Mutex<BTreeMap<PolicyKind, Box<dyn Policy>>>,
    wake: Notify,
    /// Rate-limits marking nodes down during a mass silence.
    mass_silence: std::sync::Mutex<liveness::MassSilence>,
    /// When the simulation harness watches: the allocs each commit
    /// changed, gathered until it takes them.
    touched_log: std::sync::Mutex<Option<std::collections::BTreeSet<drover_api::AllocId>>>,
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
        let found = crate::store::check_format(&snapshot)?;
        let cluster = Cluster::from_snapshot(&snapshot)?;
        if found != crate::store::Found::Current {
            let mut batch = crate::store::Batch::new();
            batch.put(
                crate::store::keys::meta("format"),
                crate::store::format_marker(),
            );
            store.commit(batch).await?;
        }
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
                tally: Arc::clone(&cluster.published),
                cluster: Mutex::new(cluster),
                last_seen: std::sync::Mutex::new(last_seen),
                feeds: std::sync::Mutex::new(Feeds::new()),
                policies: std::sync::Mutex::new(BTreeMap::new()),
                wake: Notify::new(),
                mass_silence: std::sync::Mutex::new(liveness::MassSilence::new(now)),
                touched_log: std::sync::Mutex::new(None),
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
}
