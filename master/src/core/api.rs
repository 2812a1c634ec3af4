//! What the REST API asks of the master: reads, answered as the wire views of
//! `drover_api::views`, and the job writes (submit, stop, purge) and dry runs.
//! The HTTP handlers parse, authorize and call these; they never see the
//! cluster's records or open a transaction.

use std::sync::Arc;

use drover_api::views::{
    AllocView, Amounts, ClusterSummary, DrainView, JobView, NodeView, PlanAnswer, PlannedPlacement,
    PlannedPreemption, PlannedWait, StopAnswer, SubmitAnswer, SubmitOutcome, TaskView,
};
use drover_api::{AllocId, JobId, JobSpec, JobState, NodeId, NodeState, TaskId, TaskState};
use scheduler_policies::{registry, Decision, TaskRequest};

use super::{CommitError, Master};
use crate::auth::{Principal, Role};
use crate::lifecycle::{self, Submitted};
use crate::model::{AllocRecord, JobRecord, NodeRecord, TaskRecord};
use crate::state::{Cluster, Held, Txn};
use crate::view::{build_view, demand_of, node_views, task_request};

/// Why the logs of a task cannot be fetched from its node.
#[derive(Debug, thiserror::Error)]
pub enum LogSourceError {
    #[error("task {0} not found")]
    NoTask(TaskId),
    #[error("logs of {0}: it has not run yet")]
    NotRun(TaskId),
    #[error("logs of {0}: its node is gone")]
    NodeGone(TaskId),
}

impl Master {
    /// Submits a job, or a new version of it, for `who`; answers once it is
    /// durable. A new job belongs to `who`'s token.
    pub async fn submit(
        &self,
        spec: JobSpec,
        who: &Principal,
    ) -> Result<SubmitAnswer, CommitError> {
        let now_ms = self.clock.wall_ms();
        let id = spec.name.clone();
        let mut cluster = self.lock().await;
        let had = match cluster.jobs.get(&id) {
            Some(job) => {
                may_change(who, job)?;
                job.spec.task_count()
            }
            None => 0,
        };
        let adding = spec.task_count().saturating_sub(had) as usize;
        let limit = self.settings.max_pending_tasks;
        let pending = cluster.pending.len();
        if adding > 0 && pending.saturating_add(adding) > limit {
            self.metrics
                .http_throttled
                .with_label_values(&["backlog"])
                .inc();
            return Err(CommitError::Backlog {
                pending,
                adding,
                limit,
            });
        }
        let (outcome, changes) = {
            let mut txn = Txn::new(&cluster);
            let outcome = lifecycle::submit(&mut txn, spec, now_ms);
            if outcome == Submitted::Created {
                if let (Some(job), Principal::Token { name, .. }) = (txn.job_mut(&id), who) {
                    job.owner = Some(name.clone());
                }
            }
            (outcome, txn.into_changes())
        };
        let durable = self.stage(&mut cluster, changes);
        let job = cluster
            .jobs
            .get(&id)
            .map(|j| job_view(self, &cluster, j, false));
        drop(cluster);
        // The pass may run now: its placements are staged after this write,
        // so they can never be stored without it.
        if outcome != Submitted::Unchanged {
            self.wake_scheduler();
        }
        durable.wait().await?;
        let outcome = match outcome {
            Submitted::Created => SubmitOutcome::Created,
            Submitted::Unchanged => SubmitOutcome::Unchanged,
            Submitted::Updated => SubmitOutcome::Updated,
        };
        let job = job.ok_or_else(|| {
            CommitError::Conflict(format!("job {id} was purged while it was submitted"))
        })?;
        Ok(SubmitAnswer { job, outcome })
    }

    /// Stops a job (or purges it) for `who`; `None` when there is no such job.
    pub async fn stop_job(
        &self,
        id: &JobId,
        purge: bool,
        who: &Principal,
    ) -> Result<Option<StopAnswer>, CommitError> {
        let now_ms = self.clock.wall_ms();
        let mut cluster = self.lock().await;
        let Some(job) = cluster.jobs.get(id) else {
            return Ok(None);
        };
        may_change(who, job)?;
        let changes = {
            let mut txn = Txn::new(&cluster);
            if purge {
                lifecycle::purge(&mut txn, id, now_ms);
            } else {
                lifecycle::stop(&mut txn, id, now_ms);
            }
            txn.into_changes()
        };
        let durable = self.stage(&mut cluster, changes);
        let answer = match cluster.jobs.get(id) {
            Some(j) => StopAnswer::Stopped(Box::new(job_view(self, &cluster, j, false))),
            None => StopAnswer::Purged {
                id: id.clone(),
                purged: true,
            },
        };
        drop(cluster);
        durable.wait().await?;
        tracing::info!(job = %id, purge, "job stopped");
        self.wake_scheduler();
        Ok(Some(answer))
    }

    /// Dry run: where each task would go now, or why it cannot. Writes
    /// nothing, and uses a fresh policy so that round-robin's cursor is not
    /// moved.
    pub async fn plan(&self, spec: &JobSpec) -> PlanAnswer {
        let mut cluster = self.lock().await;
        let nodes = node_views(&mut cluster);
        let txn = Txn::new(&cluster);
        let view = build_view(&txn, nodes);
        let demand = Arc::new(demand_of(spec));
        // Queued after everything already waiting, as a real submission would be.
        let queue: Vec<TaskRequest> = (0..spec.task_count())
            .map(|i| task_request(spec, i, u64::MAX, &demand))
            .collect();
        let mut policy = registry::build(spec.effective_policy(self.settings.default_policy));
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
                Decision::Wait { task, reason } => {
                    answer.waiting.push(PlannedWait { task, reason })
                }
            }
        }
        answer
    }

    /// Every job, or those in `state`.
    pub async fn jobs(&self, state: Option<JobState>) -> Vec<JobView> {
        let cluster = self.lock().await;
        cluster
            .jobs
            .values()
            .filter(|j| state.is_none_or(|s| cluster.job_state(j) == s))
            .map(|j| job_view(self, &cluster, j, false))
            .collect()
    }

    /// One job, with its spec.
    pub async fn job(&self, id: &JobId) -> Option<JobView> {
        let cluster = self.lock().await;
        let job = cluster.jobs.get(id)?;
        Some(job_view(self, &cluster, job, true))
    }

    /// Every task of a job; `None` when there is no such job.
    pub async fn job_tasks(&self, id: &JobId) -> Option<Vec<TaskView>> {
        let cluster = self.lock().await;
        cluster.jobs.contains_key(id).then(|| {
            cluster
                .tasks_of(id)
                .map(|t| task_view(&cluster, t))
                .collect()
        })
    }

    pub async fn task(&self, id: &TaskId) -> Option<TaskView> {
        let cluster = self.lock().await;
        cluster.tasks.get(id).map(|t| task_view(&cluster, t))
    }

    pub async fn alloc(&self, id: &AllocId) -> Option<AllocView> {
        let cluster = self.lock().await;
        cluster.allocs.get(id).map(|a| alloc_view(a))
    }

    pub async fn nodes(&self) -> Vec<NodeView> {
        let cluster = self.lock().await;
        cluster
            .nodes
            .values()
            .map(|n| node_view(&cluster, n))
            .collect()
    }

    pub async fn node(&self, id: &NodeId) -> Option<NodeView> {
        let cluster = self.lock().await;
        cluster.nodes.get(id).map(|n| node_view(&cluster, n))
    }

    /// Where the logs of a task's latest attempt are: the alloc, its node's
    /// log server, and a capability to read them there.
    pub async fn log_source(
        &self,
        id: &TaskId,
    ) -> Result<(AllocId, String, Option<String>), LogSourceError> {
        let cluster = self.lock().await;
        let task = cluster
            .tasks
            .get(id)
            .ok_or_else(|| LogSourceError::NoTask(id.clone()))?;
        let alloc = task
            .latest_alloc()
            .ok_or_else(|| LogSourceError::NotRun(id.clone()))?;
        let node = cluster
            .allocs
            .get(&alloc)
            .and_then(|a| cluster.nodes.get(&a.node))
            .ok_or_else(|| LogSourceError::NodeGone(id.clone()))?;
        let capability = node
            .log_key
            .as_deref()
            .and_then(|key| drover_api::capability::sign(key, &alloc, self.clock.wall_ms()));
        Ok((alloc, node.desc.log_addr.clone(), capability))
    }

    /// Cluster-wide numbers; also what the `/metrics` gauges show. `leader`
    /// is the address this master advertises.
    pub async fn summary(&self, leader: &str) -> ClusterSummary {
        // Kept as changes are applied: a read never waits for the lock.
        let t = *self.tally.lock().unwrap_or_else(|e| e.into_inner());
        fn by_name<S: Copy>(
            all: &[S],
            name: fn(S) -> &'static str,
            counts: &[u64],
        ) -> std::collections::BTreeMap<String, u64> {
            all.iter()
                .zip(counts)
                .map(|(s, n)| (name(*s).to_string(), *n))
                .collect()
        }
        let sum = |s: [u128; 3]| Amounts {
            cpu_millis: saturate(s[0]),
            memory_bytes: saturate(s[1]),
            gpus: saturate(s[2]),
        };
        ClusterSummary {
            nodes: by_name(NodeState::ALL, NodeState::name, &t.nodes),
            jobs: by_name(JobState::ALL, JobState::name, &t.jobs),
            tasks: by_name(TaskState::ALL, TaskState::name, &t.tasks),
            capacity: sum(t.capacity),
            allocated: sum(t.allocated),
            queue_depth: t.task_count(TaskState::Pending),
            leader: leader.to_string(),
            store_backend: self.backend().to_string(),
        }
    }
}

fn saturate(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Whether `who` may update, stop or purge `job`: an admin any job, a
/// submitter its own (one submitted while authentication was off belongs to
/// no one, so to admins only).
fn may_change(who: &Principal, job: &JobRecord) -> Result<(), CommitError> {
    match who {
        Principal::Anyone => Ok(()),
        Principal::Token {
            role: Role::Admin, ..
        } => Ok(()),
        Principal::Token { name, .. } if job.owner.as_deref() == Some(name.as_str()) => Ok(()),
        _ => Err(CommitError::Forbidden(match &job.owner {
            Some(owner) => format!(
                "job {} belongs to {owner}; {} may change only its own jobs",
                job.id,
                who.name()
            ),
            None => format!("job {} has no owner: only an admin may change it", job.id),
        })),
    }
}

fn job_view(master: &Master, c: &Cluster, j: &JobRecord, with_spec: bool) -> JobView {
    JobView {
        id: j.id.clone(),
        version: j.version,
        state: c.job_state(j),
        job_type: j.spec.job_type,
        priority: j.spec.priority,
        policy: j
            .spec
            .effective_policy(master.settings.default_policy)
            .name()
            .to_string(),
        submitted_at_ms: j.submitted_at_ms,
        owner: j.owner.clone(),
        tasks: c.job_counts(&j.id).0,
        spec: with_spec.then(|| j.spec.clone()),
    }
}

fn alloc_view(a: &AllocRecord) -> AllocView {
    AllocView {
        id: a.id.clone(),
        node: a.node.clone(),
        state: a.state,
        cpu_millis: a.cpu_millis,
        memory_bytes: a.memory_bytes,
        gpus: a.gpus.clone(),
        priority: a.priority,
        exit_code: a.exit_code,
        signal: a.signal,
        history: a.history.clone(),
    }
}

fn task_view(c: &Cluster, t: &TaskRecord) -> TaskView {
    let waiting = c.wait_reasons.get(&t.id).or_else(|| {
        (t.state == TaskState::Pending)
            .then(|| c.job_wait_reasons.get(&t.id.job))
            .flatten()
    });
    TaskView {
        id: t.id.clone(),
        state: t.state,
        reason: t.reason().to_string(),
        waiting: waiting.cloned(),
        job_version: t.job_version,
        restarts: t.restarts,
        attempts: (1..=t.attempts)
            .filter_map(|a| c.allocs.get(&t.id.alloc(a)).map(|a| alloc_view(a)))
            .collect(),
        history: t.history.clone(),
    }
}

fn amounts(h: Held) -> Amounts {
    Amounts {
        cpu_millis: h.cpu_millis,
        memory_bytes: h.memory_bytes,
        gpus: h.gpus,
    }
}

fn node_view(c: &Cluster, n: &NodeRecord) -> NodeView {
    let live = c.live.get(&n.id);
    NodeView {
        id: n.id.clone(),
        desc: n.desc.clone(),
        down: n.down,
        revoked: n.revoked,
        drain: n.drain.as_ref().map(|d| DrainView {
            started_at_ms: d.started_at_ms,
            deadline_ms: d.deadline_ms,
        }),
        registered_at_ms: n.registered_at_ms,
        state: c.node_state(n),
        allocatable: n.allocatable(),
        allocated: amounts(c.held_by_node.get(&n.id).copied().unwrap_or_default()),
        usage: Amounts {
            cpu_millis: live.map_or(0, |l| l.usage_cpu_millis),
            memory_bytes: live.map_or(0, |l| l.usage_memory_bytes),
            gpus: 0,
        },
        last_heartbeat_ms: live.map_or(0, |l| l.last_heartbeat_ms),
        allocs: c.live_allocs_on(&n.id).map(|a| a.id.clone()).collect(),
    }
}
