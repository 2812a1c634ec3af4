//! The scheduling pass: the waiting tasks a pass examines, the policies
//! over a view of the cluster, and the placements staged in one write.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Included, Unbounded};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use drover_api::{JobId, NodeId, PolicyKind, TaskId};
use scheduler_policies::{
    nominated, registry, ClusterView, Decision, Demand, Nominated, TaskRequest,
};
use tokio::sync::watch;

use crate::lifecycle::{self, KillCause};
use crate::model::Nomination;
use crate::state::Txn;
use crate::view::{build_view, demand_of, node_views, task_request, Capacity};

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

    /// One pass: snapshot, run each policy on its share of the queue,
    /// commit all decisions in one batch.
    pub async fn schedule_pass(&self) -> Result<usize, CommitError> {
        let started = StdInstant::now();
        let mut cluster = self.lock().await;
        let locked = StdInstant::now();
        if cluster.pending.is_empty() {
            return Ok(0);
        }
        let now_ms = self.clock.wall_ms();
        let nodes = node_views(&mut cluster);
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
                let view = build_view(&txn, Arc::clone(&nodes));
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
                let view: ClusterView = build_view(&txn, Arc::clone(&nodes));
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
        self.metrics
            .pass_lock
            .observe(locked.elapsed().as_secs_f64());
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
}

/// What the pass does after examining one waiting task.
enum Examine {
    Next,
    /// The job has as many tasks examined as could be placed: skip the rest.
    SkipJob,
}
