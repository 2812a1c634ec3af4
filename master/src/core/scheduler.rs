//! The scheduling pass: the waiting tasks a pass examines, the policies
//! over a view of the cluster, and the placements staged in one write.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use drover_api::{AllocId, JobId, NodeId, NodeState, PolicyKind, TaskId, TaskState};
use scheduler_policies::{
    nominated, registry, AllocView, ClusterView, Decision, Demand, Nominated, Reservation,
    TaskRequest,
};
use tokio::sync::watch;

use crate::lifecycle::{self, KillCause};
use crate::model::Nomination;
use crate::state::{Cluster, Txn};
use crate::view::{build_view, demand_of, task_request, Capacity};

use super::{CommitError, Master};

impl Master {
    /// Asks the scheduler loop for a pass soon.
    pub fn wake_scheduler(&self) {
        self.wake.notify_one();
    }

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

    /// One pass, in three steps, as Nomad's plan applier does it: a
    /// snapshot of the waiting tasks and the cluster, taken under the lock;
    /// the policies' decisions over it, without the lock (submissions,
    /// heartbeats and polls go on meanwhile); and the decisions applied
    /// under the lock, each checked again against the cluster as it is now.
    /// A placement that no longer fits is not applied: its task stays
    /// waiting for the next pass.
    pub async fn schedule_pass(&self) -> Result<usize, CommitError> {
        match self.plan_pass().await {
            Some(plan) => self.apply_pass(plan).await,
            None => Ok(0),
        }
    }

    /// The first two steps of [`Master::schedule_pass`]: what the policies
    /// decide over a snapshot. `None` when nothing waits.
    pub async fn plan_pass(&self) -> Option<PassPlan> {
        let started = StdInstant::now();
        let snapshot = {
            let cluster = self.lock().await;
            if cluster.pending.is_empty() {
                return None;
            }
            let locked = StdInstant::now();
            let snapshot = self.snapshot(&cluster);
            drop(cluster);
            self.metrics
                .pass_lock
                .with_label_values(&["snapshot"])
                .observe(locked.elapsed().as_secs_f64());
            snapshot
        };
        Some(self.decide(snapshot, started))
    }

    fn snapshot(&self, cluster: &Cluster) -> Snapshot {
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
        let total = Capacity::of(cluster);
        let free = Capacity::free(cluster);
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
        Snapshot {
            now_ms,
            view: build_view(&Txn::new(cluster)),
            groups,
            nominated,
            pending_since,
            capped,
        }
    }

    /// The policies over the snapshot, one group after another, each
    /// seeing what the groups before it decided. No lock is held.
    fn decide(&self, snapshot: Snapshot, started: StdInstant) -> PassPlan {
        let Snapshot {
            now_ms,
            mut view,
            mut groups,
            nominated,
            pending_since,
            capped,
        } = snapshot;
        let examined = pending_since.len() as u64;
        let mut steps = Vec::new();
        for (kind, request, node) in nominated {
            match nominated::decide(&view, &request) {
                Nominated::Place { gpus } => steps.push(Step::Place {
                    request,
                    node,
                    gpus,
                    policy: kind.name(),
                }),
                Nominated::Wait { reason } => steps.push(Step::Wait {
                    task: request.task,
                    reason,
                }),
                Nominated::Release => {
                    steps.push(Step::Release {
                        task: request.task.clone(),
                    });
                    groups.entry(kind).or_default().push(request);
                }
            }
        }
        view = with_steps(view, &steps);
        let mut policies = self.policies.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, queue) in &groups {
            let first = steps.len();
            let policy = policies
                .entry(*kind)
                .or_insert_with(|| registry::build(*kind));
            let requests: BTreeMap<&TaskId, &TaskRequest> =
                queue.iter().map(|r| (&r.task, r)).collect();
            // Tasks that evicted allocs in this pass, and how many.
            let mut preempting: BTreeMap<TaskId, usize> = BTreeMap::new();
            for decision in policy.schedule(&view, queue) {
                match decision {
                    Decision::Place { task, node, gpus } => match preempting.remove(&task) {
                        // The victims hold their room until they exit:
                        // reserve it, and place the task once they have.
                        Some(victims) => {
                            if let Some(r) = requests.get(&task) {
                                steps.push(Step::Reserve {
                                    request: (*r).clone(),
                                    node,
                                    gpus,
                                    victims,
                                });
                            }
                        }
                        None => {
                            if let Some(r) = requests.get(&task) {
                                steps.push(Step::Place {
                                    request: (*r).clone(),
                                    node,
                                    gpus,
                                    policy: kind.name(),
                                });
                            }
                        }
                    },
                    Decision::Preempt { victim, for_task } => {
                        *preempting.entry(for_task.clone()).or_default() += 1;
                        steps.push(Step::Preempt { victim, for_task });
                    }
                    Decision::Wait { task, reason } => steps.push(Step::Wait { task, reason }),
                }
            }
            view = with_steps(view, &steps[first..]);
        }
        PassPlan {
            started,
            now_ms,
            steps,
            pending_since,
            capped,
            examined,
        }
    }

    /// The last step of [`Master::schedule_pass`]: applies a plan under
    /// the lock, each placement checked against the cluster as it is now,
    /// and stores it. Returns how many tasks were placed.
    pub async fn apply_pass(&self, plan: PassPlan) -> Result<usize, CommitError> {
        let PassPlan {
            started,
            now_ms,
            steps,
            pending_since,
            capped,
            examined,
        } = plan;
        // Counted while staging, published only once the commit succeeds.
        let mut placed_by: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut latencies = Vec::new();
        let mut preempted = 0u64;
        let mut stale = 0u64;
        let mut waits = Vec::new();
        let mut cluster = self.lock().await;
        let locked = StdInstant::now();
        let changes = {
            let mut txn = Txn::new(&cluster);
            let mut room = Room::default();
            for step in steps {
                match step {
                    Step::Place {
                        request,
                        node,
                        gpus,
                        policy,
                    } => {
                        let task = &request.task;
                        if let Err(why) = room.check(&txn, task, &node, &gpus) {
                            stale += 1;
                            waits.push((task.clone(), why));
                            continue;
                        }
                        let Some(alloc) =
                            lifecycle::place(&mut txn, task, &node, gpus, policy, now_ms)
                        else {
                            continue;
                        };
                        if let Some(a) = txn.alloc(&alloc) {
                            room.take(&node, a.cpu_millis, a.memory_bytes, &a.gpus);
                        }
                        *placed_by.entry(policy).or_default() += 1;
                        let since = pending_since.get(task).copied().unwrap_or(now_ms);
                        latencies.push(now_ms.saturating_sub(since) as f64 / 1000.0);
                    }
                    Step::Reserve {
                        request,
                        node,
                        gpus,
                        victims,
                    } => {
                        let waiting = txn
                            .task(&request.task)
                            .is_some_and(|t| t.state == TaskState::Pending);
                        if waiting {
                            room.take(
                                &node,
                                request.demand.cpu_millis,
                                request.demand.memory_bytes,
                                &gpus,
                            );
                            if let Some(t) = txn.task_mut(&request.task) {
                                t.nominated = Some(Nomination {
                                    node: node.clone(),
                                    gpus,
                                });
                            }
                            waits.push((request.task, nominated::waiting_reason(&node, victims)));
                        }
                    }
                    Step::Release { task } => {
                        if let Some(t) = txn.task_mut(&task) {
                            t.nominated = None;
                        }
                    }
                    Step::Preempt { victim, for_task } => {
                        if lifecycle::kill(
                            &mut txn,
                            &victim,
                            KillCause::Preempted { by: for_task },
                            now_ms,
                        ) {
                            preempted += 1;
                        }
                    }
                    Step::Wait { task, reason } => waits.push((task, reason)),
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
            if cluster
                .tasks
                .get(&task)
                .is_some_and(|t| t.state == TaskState::Pending)
            {
                cluster.wait_reasons.insert(task, reason);
            }
        }
        cluster.job_wait_reasons = job_waits;
        let waiting = cluster.pending.len();
        drop(cluster);
        let held = locked.elapsed();
        self.metrics
            .pass_lock
            .with_label_values(&["apply"])
            .observe(held.as_secs_f64());
        if stale > 0 {
            // The cluster moved under the plan: try those tasks again soon.
            self.metrics.stale_placements.inc_by(stale);
            self.wake_scheduler();
        }
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
        self.metrics.examined.inc_by(examined);
        self.metrics
            .reschedules
            .with_label_values(&["preempted"])
            .inc_by(preempted);
        let elapsed = started.elapsed();
        self.metrics.pass_duration.observe(elapsed.as_secs_f64());
        if placed > 0 || stale > 0 {
            tracing::debug!(placed, stale, waiting, ?elapsed, ?held, "scheduling pass");
        }
        Ok(placed as usize)
    }
}

/// What a pass examined, taken under the lock.
struct Snapshot {
    now_ms: u64,
    view: ClusterView,
    groups: BTreeMap<PolicyKind, Vec<TaskRequest>>,
    nominated: Vec<(PolicyKind, TaskRequest, NodeId)>,
    pending_since: BTreeMap<TaskId, u64>,
    capped: BTreeSet<JobId>,
}

/// What the policies decided over a snapshot, to be applied with
/// [`Master::apply_pass`].
#[derive(Debug)]
pub struct PassPlan {
    started: StdInstant,
    now_ms: u64,
    steps: Vec<Step>,
    pending_since: BTreeMap<TaskId, u64>,
    capped: BTreeSet<JobId>,
    examined: u64,
}

impl PassPlan {
    /// The tasks it places, in order.
    pub fn placements(&self) -> Vec<(&TaskId, &NodeId)> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Place { request, node, .. } => Some((&request.task, node)),
                _ => None,
            })
            .collect()
    }
}

/// One decision of a pass, in the order it is applied.
#[derive(Debug)]
enum Step {
    Place {
        request: TaskRequest,
        node: NodeId,
        gpus: Vec<u32>,
        policy: &'static str,
    },
    /// Room held on `node` for a task whose `victims` are stopping.
    Reserve {
        request: TaskRequest,
        node: NodeId,
        gpus: Vec<u32>,
        victims: usize,
    },
    /// A reservation that is no longer needed.
    Release {
        task: TaskId,
    },
    Preempt {
        victim: AllocId,
        for_task: TaskId,
    },
    Wait {
        task: TaskId,
        reason: String,
    },
}

/// The view with a group's decisions in it, for the groups after it:
/// placements hold their room, victims stop, reservations hold theirs.
fn with_steps(view: ClusterView, steps: &[Step]) -> ClusterView {
    if steps.is_empty() {
        return view;
    }
    let mut allocs = view.allocs().to_vec();
    let mut reservations = view.reservations().to_vec();
    let victims: BTreeSet<&AllocId> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Preempt { victim, .. } => Some(victim),
            _ => None,
        })
        .collect();
    for a in &mut allocs {
        if victims.contains(&a.id) {
            a.stopping = true;
        }
    }
    for step in steps {
        match step {
            Step::Place {
                request,
                node,
                gpus,
                ..
            } => {
                reservations.retain(|r| r.task != request.task);
                allocs.push(AllocView {
                    // Not yet numbered: no later group may preempt it.
                    id: request.task.alloc(u32::MAX),
                    node: node.clone(),
                    priority: request.priority,
                    cpu_millis: request.demand.cpu_millis,
                    memory_bytes: request.demand.memory_bytes,
                    gpus: gpus.clone(),
                    elastic: request.elastic,
                    stopping: true,
                });
            }
            Step::Reserve {
                request,
                node,
                gpus,
                ..
            } => reservations.push(Reservation {
                task: request.task.clone(),
                node: node.clone(),
                cpu_millis: request.demand.cpu_millis,
                memory_bytes: request.demand.memory_bytes,
                gpus: gpus.clone(),
            }),
            Step::Release { task } => reservations.retain(|r| r.task != *task),
            Step::Preempt { .. } | Step::Wait { .. } => {}
        }
    }
    ClusterView::new(view.nodes().to_vec(), allocs).with_reservations(reservations)
}

/// What an applying pass has added to each node so far, on top of what the
/// cluster's live allocs hold.
#[derive(Debug, Default)]
struct Room {
    taken: BTreeMap<NodeId, (u64, u64, BTreeSet<u32>)>,
}

impl Room {
    fn take(&mut self, node: &NodeId, cpu: u64, memory: u64, gpus: &[u32]) {
        let t = self.taken.entry(node.clone()).or_default();
        t.0 += cpu;
        t.1 += memory;
        t.2.extend(gpus.iter().copied());
    }

    /// Whether `task` still fits on `node` as the cluster is now: the node
    /// takes work, and its allocatable room, less what its live allocs,
    /// other tasks' reservations and this pass hold, has the task's cpu,
    /// memory and these GPU devices free. Else why not.
    fn check(
        &self,
        txn: &Txn<'_>,
        task: &TaskId,
        node: &NodeId,
        gpus: &[u32],
    ) -> Result<(), String> {
        let cluster = txn.base;
        let Some(n) = cluster.nodes.get(node) else {
            return Err(format!("{node} is gone; placing it again"));
        };
        if cluster.node_state(n) != NodeState::Ready {
            return Err(format!("{node} no longer takes work; placing it again"));
        }
        let Some(job) = txn.job(&task.job) else {
            return Err("its job is gone".to_string());
        };
        let demand = demand_of(&job.spec);
        let held = cluster.held_by_node.get(node).copied().unwrap_or_default();
        let (mut cpu, mut memory) = (held.cpu_millis, held.memory_bytes);
        let mut busy: BTreeSet<u32> = cluster
            .live_allocs_on(node)
            .flat_map(|a| a.gpus.iter().copied())
            .collect();
        if let Some((c, m, g)) = self.taken.get(node) {
            cpu += c;
            memory += m;
            busy.extend(g.iter().copied());
        }
        for other in &cluster.nominated {
            if other == task {
                continue;
            }
            let Some(r) = cluster.tasks.get(other).and_then(|t| t.nominated.as_ref()) else {
                continue;
            };
            if r.node != *node {
                continue;
            }
            if let Some(j) = cluster.jobs.get(&other.job) {
                cpu += j.spec.resources.cpu.millis();
                memory += j.spec.resources.memory.bytes();
            }
            busy.extend(r.gpus.iter().copied());
        }
        let cpu_room = n.resources.cpu_millis.saturating_sub(n.reserved.cpu_millis);
        let memory_room = n
            .resources
            .memory_bytes
            .saturating_sub(n.reserved.memory_bytes);
        let known = |g: &u32| n.resources.gpus.iter().any(|d| d.index == *g);
        if cpu + demand.cpu_millis > cpu_room
            || memory + demand.memory_bytes > memory_room
            || gpus.iter().any(|g| busy.contains(g) || !known(g))
        {
            return Err(format!("{node} filled up meanwhile; placing it again"));
        }
        Ok(())
    }
}

/// What the pass does after examining one waiting task.
enum Examine {
    Next,
    /// The job has as many tasks examined as could be placed: skip the rest.
    SkipJob,
}
