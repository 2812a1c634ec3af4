//! Every task and alloc state transition (DESIGN §3), in one place.
//!
//! Functions here stage changes in a [`Txn`]; the caller commits them. Each
//! transition appends a history entry with a reason and a time. Terminal
//! alloc states never change; reports about allocs the master no longer
//! considers live are ignored (fencing by alloc id).
//!
//! Stopping is not finishing: an alloc the master stops (preemption, drain,
//! job update or stop) becomes `stopping` and keeps its cpu, memory and GPUs
//! until its agent reports that its processes are gone, or its node is
//! declared down. Its task is `stopping` meanwhile, and only then requeued
//! (or, for a stopped job, `killed`), so two attempts of a task never run
//! at once and a node never runs more than it has.

use std::collections::BTreeSet;
use std::time::Duration;

use drover_api::protocol::AllocUpdate;
use drover_api::state::{Reason, Transition};
use drover_api::{AllocId, AllocState, JobId, JobSpec, JobType, NodeId, TaskId, TaskState};

use crate::model::{AllocRecord, JobRecord, TaskRecord};
use crate::state::Txn;

/// What submitting a spec did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// A new job (HTTP 201).
    Created,
    /// Same name, same spec, not stopped: nothing changed (HTTP 200).
    Unchanged,
    /// Same name, new spec (or a stopped job submitted again): a new version
    /// whose tasks replace the old ones (HTTP 200).
    Updated,
}

/// The most transitions a task keeps while it lives: the first, and the
/// latest ones. A service that restarts for months holds as much as one
/// that just started. (An alloc's history is short by nature: its states
/// only move forward.)
pub const HISTORY_MAX: usize = 16;

fn push<S>(history: &mut Vec<Transition<S>>, state: S, reason: impl Into<Reason>, now_ms: u64) {
    history.push(Transition::new(state, reason, now_ms));
    bound(history);
}

/// Keeps the first transition and the latest ones, [`HISTORY_MAX`] in all.
fn bound<S>(history: &mut Vec<Transition<S>>) {
    if history.len() > HISTORY_MAX {
        history.drain(1..=history.len() - HISTORY_MAX);
    }
}

/// Moves a task. A finished task keeps only its first transition (when it
/// was submitted) and its last (how it ended): the master holds every
/// finished task until its job is purged, and its counters (attempts,
/// restarts) and each attempt's alloc, with its own history, say the rest.
fn set_task(t: &mut TaskRecord, state: TaskState, reason: impl Into<Reason>, now_ms: u64) {
    t.state = state;
    push(&mut t.history, state, reason, now_ms);
    if state.is_terminal() {
        let h = &mut t.history;
        if h.len() > 2 {
            h.drain(1..h.len() - 1);
        }
        h.shrink_to_fit();
    }
}

fn new_task(id: TaskId, job_version: u64, attempts: u32, reason: &str, now_ms: u64) -> TaskRecord {
    let mut t = TaskRecord {
        id,
        state: TaskState::Pending,
        job_version,
        attempts,
        restarts: 0,
        not_before_ms: 0,
        nominated: None,
        history: Vec::new(),
    };
    push(&mut t.history, TaskState::Pending, reason, now_ms);
    t
}

/// Submits a job spec: creates it, leaves it alone, or makes a new version.
pub fn submit(txn: &mut Txn<'_>, spec: JobSpec, now_ms: u64) -> Submitted {
    let id = spec.name.clone();
    let count = spec.task_count();
    let Some(existing) = txn.job(&id).cloned() else {
        let job = JobRecord {
            id: id.clone(),
            spec,
            version: 1,
            submit_seq: txn.next_seq(),
            submitted_at_ms: now_ms,
            stopped: false,
            owner: None,
        };
        txn.put_job(job);
        for index in 0..count {
            txn.put_task(new_task(id.task(index), 1, 0, "submitted", now_ms));
        }
        return Submitted::Created;
    };
    if existing.spec == spec && !existing.stopped {
        return Submitted::Unchanged;
    }
    let version = existing.version + 1;
    let reason = format!("job updated to version {version}");
    // Old attempts stop; task ids keep their attempt counters so that alloc
    // ids are never reused. A task whose attempt is stopping waits for it:
    // one beyond the new count is removed then, the others start their new
    // version then.
    let mut stopping = BTreeSet::new();
    for task_id in txn.task_ids_of(&id) {
        if stop_live_attempt(txn, &task_id, &reason, now_ms) {
            stopping.insert(task_id.clone());
        }
        if task_id.index >= count && !stopping.contains(&task_id) {
            txn.delete_task(&task_id);
        }
    }
    for index in 0..count {
        let tid = id.task(index);
        let attempts = txn.task(&tid).map_or(0, |t| t.attempts);
        let mut task = new_task(tid.clone(), version, attempts, &reason, now_ms);
        if stopping.contains(&tid) {
            set_task(
                &mut task,
                TaskState::Stopping,
                format!("{reason}; waiting for attempt {attempts} to stop"),
                now_ms,
            );
        }
        if let Some(old) = txn.task(&tid) {
            let mut history = old.history.clone();
            history.append(&mut task.history);
            bound(&mut history);
            task.history = history;
        }
        txn.put_task(task);
    }
    for tid in stopping.iter().filter(|t| t.index >= count) {
        if let Some(task) = txn.task_mut(tid) {
            set_task(task, TaskState::Stopping, reason.clone(), now_ms);
        }
    }
    let submit_seq = txn.next_seq();
    txn.put_job(JobRecord {
        spec,
        version,
        submit_seq,
        submitted_at_ms: now_ms,
        stopped: false,
        ..existing
    });
    Submitted::Updated
}

/// Moves the task's latest alloc to `stopping` if it is assigned or
/// running, without touching the task's state. True when that attempt is
/// stopping now (also if it already was).
fn stop_live_attempt(txn: &mut Txn<'_>, task_id: &TaskId, reason: &str, now_ms: u64) -> bool {
    let Some(alloc_id) = txn.task(task_id).and_then(TaskRecord::latest_alloc) else {
        return false;
    };
    let Some(alloc) = txn.alloc(&alloc_id) else {
        return false;
    };
    if alloc.is_stopping() {
        return true;
    }
    if !alloc.is_live() {
        return false;
    }
    if let Some(alloc) = txn.alloc_mut(&alloc_id) {
        alloc.state = AllocState::Stopping;
        push(&mut alloc.history, AllocState::Stopping, reason, now_ms);
    }
    true
}

/// Places a pending task: a new alloc, attempt `attempts + 1`.
pub fn place(
    txn: &mut Txn<'_>,
    task_id: &TaskId,
    node: &NodeId,
    gpus: Vec<u32>,
    policy: &str,
    now_ms: u64,
) -> Option<AllocId> {
    let job = txn.job_shared(&task_id.job)?;
    let task = txn.task_mut(task_id)?;
    if task.state != TaskState::Pending {
        return None;
    }
    task.attempts += 1;
    task.nominated = None;
    let alloc_id = task_id.alloc(task.attempts);
    let reason = format!("placed on {node} by {policy}");
    set_task(task, TaskState::Assigned, reason.clone(), now_ms);
    let mut alloc = AllocRecord {
        id: alloc_id.clone(),
        node: node.clone(),
        state: AllocState::Assigned,
        cpu_millis: job.spec.resources.cpu.millis(),
        memory_bytes: job.spec.resources.memory.bytes(),
        gpus,
        priority: job.spec.priority,
        exit_code: None,
        signal: None,
        history: Vec::new(),
    };
    push(&mut alloc.history, AllocState::Assigned, reason, now_ms);
    txn.put_alloc(alloc);
    Some(alloc_id)
}

/// Why an alloc is being stopped by the master. Once it has stopped, its
/// task is `killed` if its job was stopped, else requeued at once without
/// using a restart.
#[derive(Debug, Clone)]
pub enum KillCause {
    /// The job was stopped.
    JobStopped,
    /// Evicted for a higher-priority task.
    Preempted { by: TaskId },
    /// Its node is draining.
    Drained { node: NodeId },
}

/// Stops a live alloc on the master's initiative: the alloc and its task
/// become `stopping` until the agent reports the processes gone (see
/// [`report`]) or the node is declared down ([`node_down`]). False if the
/// alloc is not its task's latest attempt, or not assigned or running.
pub fn kill(txn: &mut Txn<'_>, alloc_id: &AllocId, cause: KillCause, now_ms: u64) -> bool {
    let reason = match &cause {
        KillCause::JobStopped => "job stopped".to_string(),
        KillCause::Preempted { by } => format!("preempted by {by}"),
        KillCause::Drained { node } => format!("node {node} draining"),
    };
    let latest = txn.task(&alloc_id.task).and_then(TaskRecord::latest_alloc);
    let assigned_or_running = txn
        .alloc(alloc_id)
        .is_some_and(|a| a.is_live() && !a.is_stopping());
    if latest.as_ref() != Some(alloc_id) || !assigned_or_running {
        return false;
    }
    stop_live_attempt(txn, &alloc_id.task, &reason, now_ms);
    if let Some(task) = txn.task_mut(&alloc_id.task) {
        set_task(task, TaskState::Stopping, reason, now_ms);
    }
    true
}

/// The task's stopping attempt has ended (`how` says how, in words): the
/// task is killed if its job was stopped, else requeued at once, as after a
/// lost node. A task that no longer exists in the job's current version is
/// removed.
fn stop_finished(txn: &mut Txn<'_>, task_id: &TaskId, how: &str, now_ms: u64) {
    if txn
        .job(&task_id.job)
        .is_some_and(|j| task_id.index >= j.spec.task_count())
    {
        txn.delete_task(task_id);
        return;
    }
    attempt_ended(txn, task_id, AllocState::Lost, how, now_ms);
}

/// Moves work off a draining node: its service allocs, or with `all` every
/// live alloc (the deadline has come), are killed and their tasks requeued.
/// Returns how many.
pub fn drain(txn: &mut Txn<'_>, node: &NodeId, all: bool, now_ms: u64) -> u64 {
    let mut moved = 0;
    for alloc_id in txn.live_alloc_ids_on(node) {
        let service = txn
            .job(&alloc_id.task.job)
            .is_some_and(|j| j.spec.job_type == JobType::Service);
        if (all || service)
            && kill(
                txn,
                &alloc_id,
                KillCause::Drained { node: node.clone() },
                now_ms,
            )
        {
            moved += 1;
        }
    }
    moved
}

/// Applies an agent's report about one of its allocs. Returns false when the
/// report is ignored: unknown alloc, another node's alloc, an alloc already
/// terminal in the master's books, or a transition that cannot happen.
pub fn report(txn: &mut Txn<'_>, node: &NodeId, update: &AllocUpdate, now_ms: u64) -> bool {
    let Some(alloc) = txn.alloc(&update.alloc) else {
        return false;
    };
    if alloc.node != *node
        || update.state == AllocState::Stopping
        || !alloc.state.can_transition_to(update.state)
    {
        return false;
    }
    let was_stopping = alloc.is_stopping();
    let reason = describe_exit(update);
    let Some(alloc) = txn.alloc_mut(&update.alloc) else {
        return false;
    };
    alloc.state = update.state;
    alloc.exit_code = update.exit_code.or(alloc.exit_code);
    alloc.signal = update.signal.or(alloc.signal);
    push(&mut alloc.history, update.state, reason.clone(), now_ms);
    let task_id = update.alloc.task.clone();
    // The attempt of a purged job, kept while it stopped: gone now.
    if txn.task(&task_id).is_none() && update.state.is_terminal() {
        txn.delete_alloc(&update.alloc);
        return true;
    }
    // Only the task's latest attempt moves the task.
    if txn
        .task(&task_id)
        .and_then(TaskRecord::latest_alloc)
        .as_ref()
        != Some(&update.alloc)
    {
        return true;
    }
    if was_stopping {
        if txn.task(&task_id).map(|t| t.state) == Some(TaskState::Stopping) {
            stop_finished(txn, &task_id, &reason, now_ms);
        }
        return true;
    }
    if update.state == AllocState::Running {
        if let Some(task) = txn.task_mut(&task_id) {
            set_task(task, TaskState::Running, "started", now_ms);
        }
    } else {
        attempt_ended(txn, &task_id, update.state, &reason, now_ms);
    }
    true
}

fn describe_exit(update: &AllocUpdate) -> String {
    let message = update.message.as_deref().filter(|m| !m.is_empty());
    // The agent's own words say how it ended ("exited with status 3",
    // "killed by SIGKILL (out of memory)"); codes alone only when it gave none.
    if let (true, Some(m)) = (update.state.is_terminal(), message) {
        let m: String = m.chars().take(200).collect();
        return format!("{}: {m}", update.state);
    }
    let mut parts = Vec::new();
    match update.state {
        AllocState::Running => parts.push("started".to_string()),
        AllocState::Succeeded => parts.push("exited 0".to_string()),
        s => parts.push(s.to_string()),
    }
    if let Some(code) = update
        .exit_code
        .filter(|_| update.state != AllocState::Succeeded)
    {
        parts.push(format!("exit code {code}"));
    }
    if let Some(sig) = update.signal {
        parts.push(format!("signal {sig}"));
    }
    if let Some(m) = message {
        parts.push(m.chars().take(200).collect());
    }
    parts.join(", ")
}

/// Marks every live alloc of a node lost and requeues their tasks.
pub fn node_down(txn: &mut Txn<'_>, node: &NodeId, now_ms: u64) {
    if let Some(n) = txn.node_mut(node) {
        n.down = true;
    }
    let reason = format!("node {node} down");
    for alloc_id in txn.live_alloc_ids_on(node) {
        if let Some(a) = txn.alloc_mut(&alloc_id) {
            a.state = AllocState::Lost;
            push(&mut a.history, AllocState::Lost, reason.clone(), now_ms);
        }
        let Some(task) = txn.task(&alloc_id.task) else {
            // A purged job's attempt, kept while it stopped.
            txn.delete_alloc(&alloc_id);
            continue;
        };
        if task.latest_alloc().as_ref() != Some(&alloc_id) {
            continue;
        }
        // A lost attempt cannot be waited for: its task moves on now.
        if task.state == TaskState::Stopping {
            stop_finished(txn, &alloc_id.task, &reason, now_ms);
        } else {
            attempt_ended(txn, &alloc_id.task, AllocState::Lost, &reason, now_ms);
        }
    }
    // Room held here for preemptors is of no use any more.
    for task_id in txn.nominated_on(node) {
        if let Some(t) = txn.task_mut(&task_id) {
            t.nominated = None;
        }
    }
}

/// Decides what happens to a task whose latest attempt ended: done,
/// restarted after a delay, rescheduled at once (its node was lost), or dead
/// (restart policy exhausted).
fn attempt_ended(txn: &mut Txn<'_>, task_id: &TaskId, how: AllocState, reason: &str, now_ms: u64) {
    let Some(job) = txn.job_shared(&task_id.job) else {
        return;
    };
    let Some(task) = txn.task_mut(task_id) else {
        return;
    };
    if job.stopped {
        set_task(
            task,
            TaskState::Killed,
            format!("{reason}; job stopped"),
            now_ms,
        );
        return;
    }
    let restart = &job.spec.restart;
    let service = job.spec.job_type == JobType::Service;
    match how {
        AllocState::Succeeded if !service => {
            set_task(task, TaskState::Succeeded, reason, now_ms);
        }
        AllocState::Killed if !service => {
            set_task(task, TaskState::Killed, reason, now_ms);
        }
        // The node failed, or the master stopped the attempt, not the task:
        // run it again at once, without using a restart (Nomad's
        // reschedule, as opposed to its restart).
        AllocState::Lost => {
            task.not_before_ms = 0;
            set_task(
                task,
                TaskState::Pending,
                format!("{reason}; rescheduling"),
                now_ms,
            );
        }
        _ if service || task.restarts < restart.attempts => {
            task.restarts += 1;
            let delay = restart.delay_for(task.restarts);
            task.not_before_ms = now_ms.saturating_add(duration_ms(delay));
            let why = format!(
                "{reason}; restart {} in {}",
                task.restarts,
                humantime::format_duration(delay)
            );
            set_task(task, TaskState::Pending, why, now_ms);
        }
        _ => {
            let why = format!("{reason}; no restarts left ({} used)", task.restarts);
            set_task(task, TaskState::Dead, why, now_ms);
        }
    }
}

pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Stops a job: its assigned and running allocs start stopping (their
/// tasks end `killed` once they have), and its tasks waiting to be placed
/// end `cancelled`.
pub fn stop(txn: &mut Txn<'_>, job_id: &JobId, now_ms: u64) -> bool {
    let Some(job) = txn.job_mut(job_id) else {
        return false;
    };
    job.stopped = true;
    for task_id in txn.task_ids_of(job_id) {
        let latest = txn.task(&task_id).and_then(TaskRecord::latest_alloc);
        if let Some(alloc_id) = latest {
            if kill(txn, &alloc_id, KillCause::JobStopped, now_ms) {
                continue;
            }
        }
        if let Some(task) = txn.task_mut(&task_id) {
            if task.state == TaskState::Pending {
                task.nominated = None;
                set_task(
                    task,
                    TaskState::Cancelled,
                    "job stopped before it was placed",
                    now_ms,
                );
            }
        }
    }
    true
}

/// Stops a job and forgets it: job, tasks and every alloc record, except
/// the attempts still stopping. Those keep their room on their nodes until
/// their processes have exited, and are forgotten then (see [`report`] and
/// [`node_down`]).
pub fn purge(txn: &mut Txn<'_>, job_id: &JobId, now_ms: u64) -> bool {
    if !stop(txn, job_id, now_ms) {
        return false;
    }
    for task_id in txn.task_ids_of(job_id) {
        let attempts = txn.task(&task_id).map_or(0, |t| t.attempts);
        for attempt in 1..=attempts {
            let id = task_id.alloc(attempt);
            if !txn.alloc(&id).is_some_and(AllocRecord::is_live) {
                txn.delete_alloc(&id);
            }
        }
        txn.delete_task(&task_id);
    }
    txn.delete_job(job_id);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeRecord;
    use crate::state::Cluster;
    use drover_api::protocol::{NodeDescriptor, NodeResources};
    use drover_api::JobState;

    const T0: u64 = 1_000_000;

    fn exit_update(state: AllocState, code: Option<i32>, message: Option<&str>) -> AllocUpdate {
        AllocUpdate {
            alloc: "j/0/1".parse().unwrap(),
            state,
            exit_code: code,
            signal: None,
            message: message.map(str::to_string),
            at_unix_ms: T0,
        }
    }

    #[test]
    fn an_exit_is_described_in_the_agents_words_when_it_gave_some_and_by_code_otherwise() {
        let said = exit_update(AllocState::Failed, Some(3), Some("exited with status 3"));
        assert_eq!(describe_exit(&said), "failed: exited with status 3");
        let ok = exit_update(AllocState::Succeeded, Some(0), Some("exited with status 0"));
        assert_eq!(describe_exit(&ok), "succeeded: exited with status 0");
        let bare = exit_update(AllocState::Failed, Some(3), None);
        assert_eq!(describe_exit(&bare), "failed, exit code 3");
        let started = exit_update(AllocState::Running, None, Some("pid 42"));
        assert_eq!(describe_exit(&started), "started, pid 42");
    }

    fn spec(yaml: &str) -> JobSpec {
        JobSpec::parse_yaml(yaml).unwrap()
    }

    fn batch(count: u32, attempts: u32) -> JobSpec {
        spec(&format!(
            "name: web\ncount: {count}\ncommand: [/bin/true]\nrestart: {{attempts: {attempts}, delay: 1s, backoff: 2.0, max_delay: 3s}}\n"
        ))
    }

    /// Runs `f` in a transaction and applies its changes, as a commit would.
    fn step<R>(c: &mut Cluster, f: impl FnOnce(&mut Txn<'_>) -> R) -> R {
        let (r, changes) = {
            let mut txn = Txn::new(c);
            let r = f(&mut txn);
            (r, txn.into_changes())
        };
        c.apply(&changes);
        assert_alloc_views_kept(c);
        assert_eq!(c.tally, crate::state::Tally::count(c), "the kept tally");
        r
    }

    /// The policies' alloc views kept by `apply` are what the records say
    /// now: every live alloc, as it is, with its job's elastic settings.
    fn assert_alloc_views_kept(c: &Cluster) {
        let fresh: Vec<String> = c
            .allocs
            .values()
            .filter(|a| a.is_live())
            .map(|a| {
                let elastic = c.jobs.get(&a.id.task.job).and_then(|j| j.spec.elastic);
                format!("{:?}", crate::view::alloc_view(a, elastic))
            })
            .collect();
        let kept: Vec<String> = c.alloc_views.values().map(|v| format!("{v:?}")).collect();
        assert_eq!(kept, fresh);
    }

    fn node(c: &mut Cluster, id: &str) -> NodeId {
        let id = NodeId::new(id).unwrap();
        let desc = NodeDescriptor {
            hostname: id.to_string(),
            log_addr: String::new(),
            resources: NodeResources {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
                gpus: vec![],
            },
            version: "test".into(),
            ..NodeDescriptor::default()
        };
        let rec = NodeRecord::joined(id.clone(), desc, T0);
        step(c, |t| t.put_node(rec));
        id
    }

    fn tid(s: &str) -> TaskId {
        s.parse().unwrap()
    }

    fn aid(s: &str) -> AllocId {
        s.parse().unwrap()
    }

    fn update(alloc: &str, state: AllocState, exit_code: Option<i32>) -> AllocUpdate {
        AllocUpdate {
            alloc: aid(alloc),
            state,
            exit_code,
            signal: None,
            message: None,
            at_unix_ms: T0,
        }
    }

    fn task_state(c: &Cluster, id: &str) -> TaskState {
        c.tasks[&tid(id)].state
    }

    fn job_state(c: &Cluster) -> JobState {
        c.job_state(&c.jobs[&JobId::new("web").unwrap()])
    }

    /// A cluster with job `web` (count tasks) and node n1, task web/0 placed.
    fn placed(count: u32, attempts: u32) -> (Cluster, NodeId) {
        let mut c = Cluster::default();
        let n1 = node(&mut c, "n1");
        step(&mut c, |t| submit(t, batch(count, attempts), T0));
        step(&mut c, |t| {
            place(t, &tid("web/0"), &n1, vec![], "least-loaded", T0 + 1)
        });
        (c, n1)
    }

    #[test]
    fn a_new_job_creates_count_pending_tasks_with_a_submitted_reason() {
        let mut c = Cluster::default();
        assert_eq!(
            step(&mut c, |t| submit(t, batch(3, 1), T0)),
            Submitted::Created
        );
        assert_eq!(c.pending.len(), 3);
        let t = &c.tasks[&tid("web/2")];
        assert_eq!(
            (t.state, t.reason(), t.history[0].at_unix_ms),
            (TaskState::Pending, "submitted", T0)
        );
        assert_eq!(job_state(&c), JobState::Pending);
    }

    #[test]
    fn resubmitting_the_same_spec_changes_nothing() {
        let (mut c, _) = placed(2, 1);
        let changed = {
            let mut txn = Txn::new(&c);
            let out = submit(&mut txn, batch(2, 1), T0 + 5);
            (out, txn.is_empty())
        };
        assert_eq!(changed, (Submitted::Unchanged, true));
        assert_eq!(
            step(&mut c, |t| submit(t, batch(2, 1), T0)),
            Submitted::Unchanged
        );
    }

    #[test]
    fn a_changed_spec_is_a_new_version_whose_tasks_wait_for_their_old_attempts_to_stop() {
        let (mut c, n1) = placed(3, 1);
        assert_eq!(
            step(&mut c, |t| submit(t, batch(2, 5), T0 + 10)),
            Submitted::Updated
        );
        assert_eq!(c.jobs[&JobId::new("web").unwrap()].version, 2);
        assert_eq!(c.allocs[&aid("web/0/1")].state, AllocState::Stopping);
        assert_eq!(c.live_allocs_on(&n1).count(), 1, "it still holds its room");
        assert!(
            !c.tasks.contains_key(&tid("web/2")),
            "the third task, which never ran, is gone"
        );
        assert_eq!(task_state(&c, "web/0"), TaskState::Stopping);
        assert_eq!(c.tasks[&tid("web/0")].job_version, 2);
        assert_eq!(task_state(&c, "web/1"), TaskState::Pending);
        let early = step(&mut c, |t| {
            place(t, &tid("web/0"), &n1, vec![], "least-loaded", T0 + 11)
        });
        assert_eq!(early, None, "no second attempt while the first runs");
        step(&mut c, |t| {
            report(
                t,
                &n1,
                &update("web/0/1", AllocState::Killed, None),
                T0 + 12,
            )
        });
        assert_eq!(task_state(&c, "web/0"), TaskState::Pending);
        let next = step(&mut c, |t| {
            place(t, &tid("web/0"), &n1, vec![], "least-loaded", T0 + 13)
        });
        assert_eq!(next, Some(aid("web/0/2")), "alloc ids are never reused");
    }

    #[test]
    fn an_update_that_makes_a_job_elastic_reaches_the_views_of_its_live_allocs() {
        let (mut c, _) = placed(2, 1);
        assert_eq!(c.alloc_views[&aid("web/0/1")].elastic, None);
        let elastic =
            spec("name: web\nshards: 2\ncommand: [/bin/true]\nelastic: {min: 1, max: 2}\n");
        step(&mut c, |t| submit(t, elastic, T0 + 10));
        // Stopping, it still holds its room, now as a shard of an elastic job.
        let view = &c.alloc_views[&aid("web/0/1")];
        assert!(view.stopping);
        assert!(view.elastic.is_some());
    }

    #[test]
    fn a_task_dropped_by_an_update_goes_once_its_attempt_has_stopped() {
        let (mut c, n1) = placed(2, 1);
        step(&mut c, |t| {
            place(t, &tid("web/1"), &n1, vec![], "least-loaded", T0 + 1)
        });
        step(&mut c, |t| submit(t, batch(1, 1), T0 + 10));
        assert_eq!(task_state(&c, "web/1"), TaskState::Stopping);
        step(&mut c, |t| {
            report(
                t,
                &n1,
                &update("web/1/1", AllocState::Killed, None),
                T0 + 12,
            )
        });
        assert!(!c.tasks.contains_key(&tid("web/1")));
        assert_eq!(c.allocs[&aid("web/1/1")].state, AllocState::Killed);
    }

    #[test]
    fn a_batch_task_that_exits_zero_succeeds_and_its_job_completes() {
        let (mut c, n1) = placed(1, 1);
        assert!(step(&mut c, |t| report(
            t,
            &n1,
            &update("web/0/1", AllocState::Running, None),
            T0 + 2
        )));
        assert_eq!(
            (task_state(&c, "web/0"), job_state(&c)),
            (TaskState::Running, JobState::Running)
        );
        assert!(step(&mut c, |t| report(
            t,
            &n1,
            &update("web/0/1", AllocState::Succeeded, Some(0)),
            T0 + 3
        )));
        assert_eq!(task_state(&c, "web/0"), TaskState::Succeeded);
        assert_eq!(job_state(&c), JobState::Complete);
    }

    #[test]
    fn failures_restart_with_growing_delay_until_attempts_run_out_then_the_task_is_dead() {
        let (mut c, n1) = placed(1, 2);
        let mut expected_delays = vec![1000, 2000];
        for attempt in 1..=3u32 {
            if attempt > 1 {
                step(&mut c, |t| {
                    place(t, &tid("web/0"), &n1, vec![], "least-loaded", T0)
                })
                .unwrap();
            }
            let alloc = format!("web/0/{attempt}");
            step(&mut c, |t| {
                report(t, &n1, &update(&alloc, AllocState::Failed, Some(1)), T0)
            });
            let task = &c.tasks[&tid("web/0")];
            if attempt <= 2 {
                assert_eq!(task.state, TaskState::Pending);
                assert_eq!(task.not_before_ms - T0, expected_delays.remove(0));
                assert!(task.reason().contains("exit code 1"), "{}", task.reason());
            } else {
                assert_eq!(task.state, TaskState::Dead);
                assert!(
                    task.reason().contains("no restarts left"),
                    "{}",
                    task.reason()
                );
            }
        }
        assert_eq!(job_state(&c), JobState::Failed);
    }

    #[test]
    fn a_service_task_is_restarted_even_after_it_succeeds() {
        let mut c = Cluster::default();
        let n1 = node(&mut c, "n1");
        let svc = spec("name: web\ntype: service\ncommand: [/bin/true]\nrestart: {attempts: 0}\n");
        step(&mut c, |t| submit(t, svc, T0));
        step(&mut c, |t| {
            place(t, &tid("web/0"), &n1, vec![], "least-loaded", T0)
        });
        step(&mut c, |t| {
            report(
                t,
                &n1,
                &update("web/0/1", AllocState::Succeeded, Some(0)),
                T0,
            )
        });
        assert_eq!(task_state(&c, "web/0"), TaskState::Pending);
    }

    #[test]
    fn terminal_allocs_never_change() {
        let (mut c, n1) = placed(1, 1);
        step(&mut c, |t| {
            report(
                t,
                &n1,
                &update("web/0/1", AllocState::Succeeded, Some(0)),
                T0,
            )
        });
        let applied = step(&mut c, |t| {
            report(t, &n1, &update("web/0/1", AllocState::Failed, Some(1)), T0)
        });
        assert!(!applied);
        assert_eq!(c.allocs[&aid("web/0/1")].state, AllocState::Succeeded);
    }

    #[test]
    fn reports_about_allocs_of_another_node_or_unknown_allocs_are_ignored() {
        let (mut c, _) = placed(1, 1);
        let n2 = node(&mut c, "n2");
        assert!(!step(&mut c, |t| report(
            t,
            &n2,
            &update("web/0/1", AllocState::Running, None),
            T0
        )));
        assert!(!step(&mut c, |t| report(
            t,
            &n2,
            &update("web/0/9", AllocState::Running, None),
            T0
        )));
        assert_eq!(c.allocs[&aid("web/0/1")].state, AllocState::Assigned);
    }

    #[test]
    fn a_late_report_about_an_old_attempt_does_not_move_the_task() {
        let (mut c, n1) = placed(1, 1);
        step(&mut c, |t| node_down(t, &n1, T0));
        let n2 = node(&mut c, "n2");
        step(&mut c, |t| {
            place(t, &tid("web/0"), &n2, vec![], "least-loaded", T0)
        })
        .unwrap();
        // web/0/1 is lost in the books: its success report is ignored.
        assert!(!step(&mut c, |t| report(
            t,
            &n1,
            &update("web/0/1", AllocState::Succeeded, Some(0)),
            T0
        )));
        assert_eq!(task_state(&c, "web/0"), TaskState::Assigned);
    }

    #[test]
    fn a_down_node_loses_its_allocs_and_their_tasks_are_requeued() {
        let (mut c, n1) = placed(1, 3);
        step(&mut c, |t| node_down(t, &n1, T0 + 5));
        assert_eq!(c.allocs[&aid("web/0/1")].state, AllocState::Lost);
        let task = &c.tasks[&tid("web/0")];
        assert_eq!(task.state, TaskState::Pending);
        assert!(
            task.reason().starts_with("node n1 down"),
            "{}",
            task.reason()
        );
        assert_eq!(
            (task.restarts, task.not_before_ms),
            (0, 0),
            "a lost node is not the task's fault"
        );
        assert!(c.nodes[&n1].down);
        assert!(c.live_allocs_on(&n1).next().is_none());
    }

    #[test]
    fn a_preempted_task_is_requeued_once_its_attempt_has_exited_without_using_a_restart() {
        let (mut c, n1) = placed(1, 0);
        let by = tid("urgent/0");
        assert!(step(&mut c, |t| kill(
            t,
            &aid("web/0/1"),
            KillCause::Preempted { by: by.clone() },
            T0
        )));
        assert_eq!(c.allocs[&aid("web/0/1")].state, AllocState::Stopping);
        assert_eq!(task_state(&c, "web/0"), TaskState::Stopping);
        assert_eq!(c.tasks[&tid("web/0")].reason(), "preempted by urgent/0");
        assert!(c.pending.is_empty(), "not placeable while it stops");
        assert!(
            !step(&mut c, |t| kill(
                t,
                &aid("web/0/1"),
                KillCause::JobStopped,
                T0
            )),
            "a stopping alloc is not stopped twice"
        );
        // A late "running" changes nothing; the exit ends the attempt.
        assert!(!step(&mut c, |t| report(
            t,
            &n1,
            &update("web/0/1", AllocState::Running, None),
            T0 + 1
        )));
        let mut gone = update("web/0/1", AllocState::Killed, None);
        gone.signal = Some(15);
        gone.message = Some("killed by SIGTERM".into());
        assert!(step(&mut c, |t| report(t, &n1, &gone, T0 + 2)));
        let task = &c.tasks[&tid("web/0")];
        assert_eq!(
            (task.state, task.restarts, task.not_before_ms),
            (TaskState::Pending, 0, 0)
        );
        assert_eq!(task.reason(), "killed: killed by SIGTERM; rescheduling");
        assert_eq!(c.allocs[&aid("web/0/1")].state, AllocState::Killed);
        assert!(c.live_allocs_on(&n1).next().is_none());
    }

    #[test]
    fn a_stopping_attempt_on_a_node_that_goes_down_is_not_waited_for() {
        let (mut c, n1) = placed(2, 0);
        step(&mut c, |t| {
            place(t, &tid("web/1"), &n1, vec![], "least-loaded", T0)
        });
        step(&mut c, |t| {
            kill(
                t,
                &aid("web/0/1"),
                KillCause::Drained { node: n1.clone() },
                T0,
            )
        });
        step(&mut c, |t| {
            kill(t, &aid("web/1/1"), KillCause::JobStopped, T0)
        });
        step(&mut c, |t| node_down(t, &n1, T0 + 5));
        assert_eq!(c.allocs[&aid("web/0/1")].state, AllocState::Lost);
        assert_eq!(task_state(&c, "web/0"), TaskState::Pending);
        assert_eq!(
            c.tasks[&tid("web/0")].reason(),
            "node n1 down; rescheduling"
        );
        assert_eq!(task_state(&c, "web/1"), TaskState::Pending);
    }

    #[test]
    fn stopping_a_job_stops_its_running_allocs_and_cancels_its_waiting_tasks() {
        let (mut c, n1) = placed(2, 1);
        assert!(step(&mut c, |t| stop(t, &JobId::new("web").unwrap(), T0)));
        assert_eq!(c.allocs[&aid("web/0/1")].state, AllocState::Stopping);
        assert_eq!(task_state(&c, "web/0"), TaskState::Stopping);
        assert_eq!(task_state(&c, "web/1"), TaskState::Cancelled);
        assert_eq!(c.tasks[&tid("web/1")].attempts, 0, "it never ran");
        assert!(c.pending.is_empty());
        assert_eq!(job_state(&c), JobState::Stopped);
        step(&mut c, |t| {
            report(t, &n1, &update("web/0/1", AllocState::Killed, None), T0 + 1)
        });
        assert_eq!(task_state(&c, "web/0"), TaskState::Killed);
        assert_eq!(c.tasks[&tid("web/0")].reason(), "killed; job stopped");
    }

    #[test]
    fn purging_forgets_the_job_its_tasks_and_every_alloc_once_it_has_stopped() {
        let (mut c, n1) = placed(2, 1);
        assert!(step(&mut c, |t| purge(t, &JobId::new("web").unwrap(), T0)));
        assert!(c.jobs.is_empty() && c.tasks.is_empty() && c.counts.is_empty());
        // The running attempt holds its room until its process has exited.
        assert_eq!(c.allocs[&aid("web/0/1")].state, AllocState::Stopping);
        assert_eq!(c.live_allocs_on(&n1).count(), 1);
        assert!(step(&mut c, |t| report(
            t,
            &n1,
            &update("web/0/1", AllocState::Killed, None),
            T0 + 1
        )));
        assert!(c.allocs.is_empty());
        assert!(c.live_allocs_on(&n1).next().is_none());
    }

    #[test]
    fn every_transition_records_a_reason_and_a_time() {
        let (mut c, n1) = placed(1, 1);
        step(&mut c, |t| {
            report(
                t,
                &n1,
                &update("web/0/1", AllocState::Running, None),
                T0 + 7,
            )
        });
        for t in &c.tasks[&tid("web/0")].history {
            assert!(!t.reason.is_empty() && t.at_unix_ms >= T0, "{t:?}");
        }
        for t in &c.allocs[&aid("web/0/1")].history {
            assert!(!t.reason.is_empty() && t.at_unix_ms >= T0, "{t:?}");
        }
    }

    #[test]
    fn a_living_history_keeps_its_first_and_latest_transitions_and_a_finished_task_its_ends() {
        let mut t = new_task(tid("web/0"), 1, 0, "submitted", T0);
        for i in 1..=40u64 {
            let state = if i % 2 == 1 {
                TaskState::Running
            } else {
                TaskState::Pending
            };
            set_task(&mut t, state, format!("step {i}"), T0 + i);
            assert!(t.history.len() <= HISTORY_MAX, "{}", t.history.len());
        }
        let h = &t.history;
        assert_eq!(h.len(), HISTORY_MAX);
        assert_eq!(h[0].reason.as_str(), "submitted");
        assert_eq!(h[HISTORY_MAX - 1].reason.as_str(), "step 40");
        // In order, with nothing lost but the oldest.
        for w in h[1..].windows(2) {
            assert_eq!(w[0].at_unix_ms + 1, w[1].at_unix_ms);
        }
        set_task(&mut t, TaskState::Succeeded, "exited 0", T0 + 41);
        let kept: Vec<&str> = t.history.iter().map(|t| t.reason.as_str()).collect();
        assert_eq!(kept, ["submitted", "exited 0"]);
    }
}
