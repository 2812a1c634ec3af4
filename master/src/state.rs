//! The cluster in memory, and transactions over it.
//!
//! Every change goes through a [`Txn`]: an overlay that reads through to the
//! [`Cluster`] and stages writes. Bad input is refused before anything is
//! staged, so it never leaves a partial write behind. The staged changes are
//! applied to the `Cluster` at once ([`Cluster::apply`]), sharing their
//! records with it, and the committer turns them into a store [`Batch`];
//! the writer acknowledges only once that batch is stored, and a failed
//! commit makes the master reload the cluster from the store (see
//! `core::committer`).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use drover_api::{AllocId, JobId, JobState, NodeId, NodeState, TaskId, TaskState};

use crate::model::{
    job_state, AllocRecord, JobRecord, NodeLive, NodeRecord, TaskCounts, TaskRecord,
};
use crate::store::{Batch, Snapshot, StoreError};
use crate::view::{alloc_view, NodeViews};
use scheduler_policies::AllocView;

#[derive(Debug, Default)]
pub struct Cluster {
    /// Records are shared with the changes that wrote them, so that the
    /// committer serializes them for the store after the lock is released.
    pub jobs: BTreeMap<JobId, Arc<JobRecord>>,
    pub tasks: BTreeMap<TaskId, Arc<TaskRecord>>,
    pub allocs: BTreeMap<AllocId, Arc<AllocRecord>>,
    pub nodes: BTreeMap<NodeId, Arc<NodeRecord>>,
    /// Heartbeat-derived node data; not persisted.
    pub live: BTreeMap<NodeId, NodeLive>,
    /// Derived indexes, rebuilt on load and kept by `apply`.
    pub counts: BTreeMap<JobId, TaskCounts>,
    pub pending: BTreeSet<TaskId>,
    pub live_allocs_by_node: BTreeMap<NodeId, BTreeSet<AllocId>>,
    /// What the live allocs of each node hold, summed: the pass bounds its
    /// work by the free room without walking every alloc.
    pub held_by_node: BTreeMap<NodeId, Held>,
    /// Pending tasks that hold a nomination (room reserved on a node while
    /// the allocs they preempted stop).
    pub nominated: BTreeSet<TaskId>,
    /// Why each pending task is still waiting, from the last pass.
    pub wait_reasons: BTreeMap<TaskId, String>,
    /// For jobs with more waiting tasks than the cluster could hold, which
    /// the last pass did not all examine: why the last one it examined
    /// waits, which stands for the others.
    pub job_wait_reasons: BTreeMap<JobId, String>,
    pub next_seq: u64,
    /// The policies' views of the nodes, kept between passes.
    pub node_views: NodeViews,
    /// The policies' views of the live allocs, kept as allocs change.
    pub alloc_views: BTreeMap<AllocId, AllocView>,
    /// What `GET /v1/cluster` and the gauges report, kept as changes are
    /// applied, and `published` for reading without the cluster lock.
    pub tally: Tally,
    pub published: Arc<Mutex<Tally>>,
}

/// A kind of state's slots, by the state's place in its `ALL`.
type ByState = [u64; 16];
const _: () = assert!(NodeState::ALL.len() <= 16);
const _: () = assert!(JobState::ALL.len() <= 16);
const _: () = assert!(TaskState::ALL.len() <= 16);

fn slot<S: PartialEq>(all: &[S], state: &S) -> usize {
    all.iter().position(|s| s == state).unwrap_or(0)
}

/// Counts of nodes, jobs and tasks by state, the allocatable capacity of
/// the nodes that are not down and what the live allocs hold (cpu,
/// memory, GPUs; summed exactly in u128 so that they can be taken back,
/// reported saturated as the per-node sums are).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub nodes: ByState,
    pub jobs: ByState,
    pub tasks: ByState,
    pub capacity: [u128; 3],
    pub allocated: [u128; 3],
}

impl Tally {
    /// Counted from scratch: what the kept tally must always equal.
    pub fn count(c: &Cluster) -> Tally {
        let mut t = Tally::default();
        for n in c.nodes.values() {
            t.node(c.node_state(n), n, 1);
        }
        for id in c.jobs.keys() {
            t.job(c.job_state_of(id), 1);
        }
        for task in c.tasks.values() {
            t.tasks[slot(TaskState::ALL, &task.state)] += 1;
        }
        for h in c.held_by_node.values() {
            t.held(*h, 1);
        }
        t
    }

    pub fn task_count(&self, state: TaskState) -> u64 {
        self.tasks[slot(TaskState::ALL, &state)]
    }

    fn node(&mut self, state: NodeState, n: &NodeRecord, sign: i8) {
        let i = slot(NodeState::ALL, &state);
        self.nodes[i] = add_signed(self.nodes[i], sign);
        if state != NodeState::Down {
            let a = n.allocatable();
            bump(
                &mut self.capacity,
                [a.cpu_millis, a.memory_bytes, a.gpus],
                sign,
            );
        }
    }

    fn job(&mut self, state: Option<JobState>, sign: i8) {
        if let Some(state) = state {
            let i = slot(JobState::ALL, &state);
            self.jobs[i] = add_signed(self.jobs[i], sign);
        }
    }

    fn held(&mut self, h: Held, sign: i8) {
        bump(
            &mut self.allocated,
            [h.cpu_millis, h.memory_bytes, h.gpus],
            sign,
        );
    }
}

fn add_signed(v: u64, sign: i8) -> u64 {
    if sign > 0 {
        v + 1
    } else {
        v.saturating_sub(1)
    }
}

fn bump(sums: &mut [u128; 3], by: [u64; 3], sign: i8) {
    for (s, b) in sums.iter_mut().zip(by) {
        if sign > 0 {
            *s += u128::from(b);
        } else {
            *s = s.saturating_sub(u128::from(b));
        }
    }
}

/// Resources held on one node by its live allocs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpus: u64,
}

impl Held {
    // Saturating: a node may report any capacity, and so hold any sum.
    fn hold(&mut self, a: &AllocRecord) {
        self.cpu_millis = self.cpu_millis.saturating_add(a.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_add(a.memory_bytes);
        self.gpus = self.gpus.saturating_add(a.gpus.len() as u64);
    }

    fn release(&mut self, a: &AllocRecord) {
        self.cpu_millis = self.cpu_millis.saturating_sub(a.cpu_millis);
        self.memory_bytes = self.memory_bytes.saturating_sub(a.memory_bytes);
        self.gpus = self.gpus.saturating_sub(a.gpus.len() as u64);
    }
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
}

/// Range over every task id of one job.
fn job_task_range(job: &JobId) -> (Bound<TaskId>, Bound<TaskId>) {
    (
        Bound::Included(job.task(0)),
        Bound::Included(job.task(u32::MAX)),
    )
}

/// Range over every alloc id of one job.
fn job_alloc_range(job: &JobId) -> (Bound<AllocId>, Bound<AllocId>) {
    (
        Bound::Included(AllocId {
            task: job.task(0),
            attempt: 0,
        }),
        Bound::Included(AllocId {
            task: job.task(u32::MAX),
            attempt: u32::MAX,
        }),
    )
}

impl Cluster {
    /// Rebuilds the cluster from everything stored.
    pub fn from_snapshot(snapshot: &Snapshot) -> Result<Cluster, StoreError> {
        let mut c = Cluster::default();
        for (key, value) in snapshot {
            let (kind, _) = key.split_once('/').unwrap_or((key.as_str(), ""));
            match kind {
                "jobs" => {
                    let j: JobRecord = decode(key, value)?;
                    c.next_seq = c.next_seq.max(j.submit_seq + 1);
                    c.jobs.insert(j.id.clone(), Arc::new(j));
                }
                "tasks" => {
                    let t: TaskRecord = decode(key, value)?;
                    c.index_task(None, Some(&t));
                    c.tasks.insert(t.id.clone(), Arc::new(t));
                }
                "allocs" => {
                    let a: AllocRecord = decode(key, value)?;
                    c.index_alloc(None, Some(&a));
                    c.allocs.insert(a.id.clone(), Arc::new(a));
                }
                "nodes" => {
                    let n: NodeRecord = decode(key, value)?;
                    c.live.insert(n.id.clone(), NodeLive::default());
                    c.nodes.insert(n.id.clone(), Arc::new(n));
                }
                _ => {}
            }
        }
        // Allocs may be read before their jobs.
        for (id, view) in c.alloc_views.iter_mut() {
            view.elastic = c.jobs.get(&id.task.job).and_then(|j| j.spec.elastic);
        }
        // Counted once the indexes are whole; kept from here on.
        c.tally = Tally::count(&c);
        c.publish();
        Ok(c)
    }

    fn index_task(&mut self, old: Option<&TaskRecord>, new: Option<&TaskRecord>) {
        let job = old.or(new).map(|t| t.id.job.clone());
        let before = job.as_ref().and_then(|j| self.job_state_of(j));
        self.count_tasks(old, new);
        if let Some(job) = job {
            let after = self.job_state_of(&job);
            if before != after {
                self.tally.job(before, -1);
                self.tally.job(after, 1);
            }
        }
    }

    fn count_tasks(&mut self, old: Option<&TaskRecord>, new: Option<&TaskRecord>) {
        if let Some(t) = old {
            let i = slot(TaskState::ALL, &t.state);
            self.tally.tasks[i] = add_signed(self.tally.tasks[i], -1);
        }
        if let Some(t) = new {
            self.tally.tasks[slot(TaskState::ALL, &t.state)] += 1;
        }
        if let Some(t) = old {
            if let Some(c) = self.counts.get_mut(&t.id.job) {
                c.add(t.state, -1);
            }
            self.pending.remove(&t.id);
            self.nominated.remove(&t.id);
        }
        if let Some(t) = new {
            self.counts
                .entry(t.id.job.clone())
                .or_default()
                .add(t.state, 1);
            if t.state == TaskState::Pending {
                self.pending.insert(t.id.clone());
                if t.nominated.is_some() {
                    self.nominated.insert(t.id.clone());
                }
            } else {
                self.wait_reasons.remove(&t.id);
            }
        }
    }

    fn index_alloc(&mut self, old: Option<&AllocRecord>, new: Option<&AllocRecord>) {
        if let Some(a) = old {
            if let Some(set) = self.live_allocs_by_node.get_mut(&a.node) {
                if set.remove(&a.id) {
                    if let Some(h) = self.held_by_node.get_mut(&a.node) {
                        self.tally.held(*h, -1);
                        h.release(a);
                        self.tally.held(*h, 1);
                    }
                    self.alloc_views.remove(&a.id);
                }
            }
        }
        if let Some(a) = new.filter(|a| a.is_live()) {
            let fresh = self
                .live_allocs_by_node
                .entry(a.node.clone())
                .or_default()
                .insert(a.id.clone());
            if fresh {
                let h = self.held_by_node.entry(a.node.clone()).or_default();
                self.tally.held(*h, -1);
                h.hold(a);
                self.tally.held(*h, 1);
            }
            let elastic = self.jobs.get(&a.id.task.job).and_then(|j| j.spec.elastic);
            self.alloc_views
                .insert(a.id.clone(), alloc_view(a, elastic));
        }
    }

    /// Applies staged changes (the committer stores the same records, now
    /// shared, once the lock is released).
    pub fn apply(&mut self, changes: &Changes) {
        for (id, rec) in &changes.jobs {
            let before = self.job_state_of(id);
            match rec {
                Some(j) => {
                    self.jobs.insert(id.clone(), Arc::clone(j));
                }
                None => {
                    self.jobs.remove(id);
                    self.counts.remove(id);
                }
            }
            let after = self.job_state_of(id);
            self.tally.job(before, -1);
            self.tally.job(after, 1);
            // An update may change the spec; a purged job's stopping
            // allocs outlive it.
            let elastic = rec.as_ref().and_then(|j| j.spec.elastic);
            for (_, view) in self.alloc_views.range_mut(job_alloc_range(id)) {
                view.elastic = elastic;
            }
        }
        for (id, rec) in &changes.tasks {
            let old = self.tasks.remove(id);
            self.index_task(old.as_deref(), rec.as_deref());
            match rec {
                Some(t) => {
                    self.tasks.insert(id.clone(), Arc::clone(t));
                }
                None => {
                    self.wait_reasons.remove(id);
                }
            }
        }
        for (id, rec) in &changes.allocs {
            let old = self.allocs.remove(id);
            self.index_alloc(old.as_deref(), rec.as_deref());
            if let Some(a) = rec {
                self.allocs.insert(id.clone(), Arc::clone(a));
            }
        }
        if !changes.nodes.is_empty() {
            self.node_views.invalidate();
        }
        for (id, rec) in &changes.nodes {
            if let Some(old) = self.nodes.get(id).cloned() {
                let state = self.node_state(&old);
                self.tally.node(state, &old, -1);
            }
            match rec {
                Some(n) => {
                    self.live.entry(id.clone()).or_default();
                    self.nodes.insert(id.clone(), Arc::clone(n));
                    let state = self.node_state(n);
                    self.tally.node(state, n, 1);
                }
                None => {
                    self.nodes.remove(id);
                    self.live.remove(id);
                }
            }
        }
        self.next_seq = self.next_seq.max(changes.next_seq);
        self.publish();
    }

    /// A job's state now, if it is known.
    fn job_state_of(&self, id: &JobId) -> Option<JobState> {
        let job = self.jobs.get(id)?;
        Some(self.job_state(job))
    }

    /// Marks a node suspect (missed heartbeats) or not, keeping the tally.
    pub fn set_suspect(&mut self, id: &NodeId, suspect: bool) {
        let live = self.live.entry(id.clone()).or_default();
        if live.suspect == suspect {
            return;
        }
        let node = self.nodes.get(id).cloned();
        if let Some(n) = &node {
            let state = self.node_state(n);
            self.tally.node(state, n, -1);
        }
        if let Some(live) = self.live.get_mut(id) {
            live.suspect = suspect;
        }
        if let Some(n) = &node {
            let state = self.node_state(n);
            self.tally.node(state, n, 1);
        }
        self.publish();
    }

    /// Makes the tally readable without the cluster lock.
    pub fn publish(&self) {
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = self.tally;
    }

    pub fn job_counts(&self, job: &JobId) -> TaskCounts {
        self.counts.get(job).cloned().unwrap_or_default()
    }

    pub fn job_state(&self, job: &JobRecord) -> JobState {
        job_state(job.stopped, &self.job_counts(&job.id))
    }

    pub fn tasks_of<'a>(&'a self, job: &JobId) -> impl Iterator<Item = &'a TaskRecord> + 'a {
        self.tasks.range(job_task_range(job)).map(|(_, t)| &**t)
    }

    pub fn node_state(&self, node: &NodeRecord) -> NodeState {
        node.state(self.live.get(&node.id))
    }

    /// Live allocs on a node, in id order.
    pub fn live_allocs_on(&self, node: &NodeId) -> impl Iterator<Item = &AllocRecord> + '_ {
        self.live_allocs_by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.allocs.get(id).map(|a| &**a))
    }
}

/// Staged writes: `Some` puts, `None` deletes.
#[derive(Debug, Default)]
pub struct Changes {
    pub jobs: BTreeMap<JobId, Option<Arc<JobRecord>>>,
    pub tasks: BTreeMap<TaskId, Option<Arc<TaskRecord>>>,
    pub allocs: BTreeMap<AllocId, Option<Arc<AllocRecord>>>,
    pub nodes: BTreeMap<NodeId, Option<Arc<NodeRecord>>>,
    pub next_seq: u64,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.tasks.is_empty()
            && self.allocs.is_empty()
            && self.nodes.is_empty()
    }

    /// The store batch that makes these changes durable.
    pub fn batch(&self) -> Batch {
        fn stage<K: std::fmt::Display, V: serde::Serialize>(
            b: &mut Batch,
            prefix: &str,
            map: &BTreeMap<K, Option<Arc<V>>>,
        ) {
            for (id, rec) in map {
                // The layout of `store::keys`: "<kind>/<id>".
                let key = format!("{prefix}/{id}");
                match rec {
                    Some(v) => b.put_json(key, &**v),
                    None => b.delete(key),
                };
            }
        }
        let mut b = Batch::new();
        // Parents before children, so that a reader of a prefix-ordered
        // store never sees a task without its job.
        stage(&mut b, "jobs", &self.jobs);
        stage(&mut b, "tasks", &self.tasks);
        stage(&mut b, "allocs", &self.allocs);
        stage(&mut b, "nodes", &self.nodes);
        b
    }

    /// Nodes whose set of live allocs may have changed, with the allocs
    /// changed on each (deleted allocs are looked up in `base`, the cluster
    /// before these changes).
    pub fn touched_allocs(&self, base: &Cluster) -> BTreeMap<NodeId, BTreeSet<AllocId>> {
        let mut touched: BTreeMap<NodeId, BTreeSet<AllocId>> = self
            .nodes
            .keys()
            .map(|n| (n.clone(), BTreeSet::new()))
            .collect();
        for (id, rec) in &self.allocs {
            let node = match rec {
                Some(a) => Some(&a.node),
                None => base.allocs.get(id).map(|a| &a.node),
            };
            if let Some(node) = node {
                touched.entry(node.clone()).or_default().insert(id.clone());
            }
        }
        touched
    }
}

/// An overlay over the cluster: reads see staged writes.
#[derive(Debug)]
pub struct Txn<'c> {
    pub base: &'c Cluster,
    changes: Changes,
}

macro_rules! overlay {
    ($get:ident, $get_mut:ident, $put:ident, $delete:ident, $field:ident, $id:ty, $rec:ty) => {
        pub fn $get(&self, id: &$id) -> Option<&$rec> {
            match self.changes.$field.get(id) {
                Some(staged) => staged.as_deref(),
                None => self.base.$field.get(id).map(|r| &**r),
            }
        }

        /// Stages a copy on first write.
        pub fn $get_mut(&mut self, id: &$id) -> Option<&mut $rec> {
            if !self.changes.$field.contains_key(id) {
                let current: $rec = (**self.base.$field.get(id)?).clone();
                self.changes
                    .$field
                    .insert(id.clone(), Some(Arc::new(current)));
            }
            // Not shared: only this transaction holds what it staged.
            self.changes
                .$field
                .get_mut(id)
                .and_then(Option::as_mut)
                .map(Arc::make_mut)
        }

        pub fn $put(&mut self, rec: $rec) {
            self.changes
                .$field
                .insert(rec.id.clone(), Some(Arc::new(rec)));
        }

        pub fn $delete(&mut self, id: &$id) {
            self.changes.$field.insert(id.clone(), None);
        }
    };
}

impl<'c> Txn<'c> {
    pub fn new(base: &'c Cluster) -> Self {
        Txn {
            base,
            changes: Changes {
                next_seq: base.next_seq,
                ..Changes::default()
            },
        }
    }

    overlay!(job, job_mut, put_job, delete_job, jobs, JobId, JobRecord);
    overlay!(
        task,
        task_mut,
        put_task,
        delete_task,
        tasks,
        TaskId,
        TaskRecord
    );
    overlay!(
        alloc,
        alloc_mut,
        put_alloc,
        delete_alloc,
        allocs,
        AllocId,
        AllocRecord
    );
    overlay!(
        node,
        node_mut,
        put_node,
        delete_node,
        nodes,
        NodeId,
        NodeRecord
    );

    /// A job, shared: for reading it while changing its tasks.
    pub fn job_shared(&self, id: &JobId) -> Option<Arc<JobRecord>> {
        match self.changes.jobs.get(id) {
            Some(staged) => staged.clone(),
            None => self.base.jobs.get(id).cloned(),
        }
    }

    pub fn next_seq(&mut self) -> u64 {
        let seq = self.changes.next_seq;
        self.changes.next_seq += 1;
        seq
    }

    /// Task ids of a job, staged ones included, in index order.
    pub fn task_ids_of(&self, job: &JobId) -> Vec<TaskId> {
        let mut ids: BTreeSet<TaskId> = self
            .base
            .tasks
            .range(job_task_range(job))
            .map(|(id, _)| id.clone())
            .collect();
        for (id, rec) in self.changes.tasks.range(job_task_range(job)) {
            if rec.is_some() {
                ids.insert(id.clone());
            } else {
                ids.remove(id);
            }
        }
        ids.into_iter().collect()
    }

    /// Live allocs on a node, staged changes included.
    pub fn live_alloc_ids_on(&self, node: &NodeId) -> Vec<AllocId> {
        let mut ids: BTreeSet<AllocId> = self
            .base
            .live_allocs_by_node
            .get(node)
            .cloned()
            .unwrap_or_default();
        for (id, rec) in &self.changes.allocs {
            match rec {
                Some(a) if a.node == *node && a.is_live() => {
                    ids.insert(id.clone());
                }
                _ => {
                    ids.remove(id);
                }
            }
        }
        ids.into_iter().collect()
    }

    /// Pending tasks holding a nomination, staged changes included, in id
    /// order.
    pub fn nominated(&self) -> Vec<&TaskRecord> {
        let mut out: BTreeMap<&TaskId, &TaskRecord> = self
            .base
            .nominated
            .iter()
            .filter_map(|id| self.base.tasks.get(id).map(|t| (id, &**t)))
            .collect();
        for (id, rec) in &self.changes.tasks {
            match rec {
                Some(t) if t.state == TaskState::Pending && t.nominated.is_some() => {
                    out.insert(id, &**t);
                }
                _ => {
                    out.remove(id);
                }
            }
        }
        out.into_values().collect()
    }

    /// Tasks holding a nomination for `node`, staged changes included.
    pub fn nominated_on(&self, node: &NodeId) -> Vec<TaskId> {
        self.nominated()
            .into_iter()
            .filter(|t| t.nominated.as_ref().is_some_and(|n| n.node == *node))
            .map(|t| t.id.clone())
            .collect()
    }

    /// Allocs written in this transaction (`None`: deleted).
    pub fn staged_allocs(&self) -> &BTreeMap<AllocId, Option<Arc<AllocRecord>>> {
        &self.changes.allocs
    }

    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn into_changes(self) -> Changes {
        self.changes
    }
}
