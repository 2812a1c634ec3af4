//! Stopping is not finishing: every way the master stops a running task
//! (preemption, drain, job update, job stop), against real binaries, with
//! tasks that trap SIGTERM and take 2 s to exit.
//!
//! Each task writes its own start and end, with the clock of the machine
//! and the GPUs it was given, to one file. From those lines alone each test
//! checks that no node ever ran more cpu than it has, that no two attempts
//! of one task overlapped, and that no GPU device was used by two tasks at
//! once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use drover_api::client::SpecFormat;
use drover_api::views::{SubmitOutcome, TaskView};
use drover_api::{AllocId, AllocState, JobState, NodeId, TaskId, TaskState};
use drover_e2e::{eventually, read_lines, sh_quote, Cluster, Job};

const WAIT: Duration = Duration::from_secs(30);

/// A task that, on SIGTERM, takes 2 s before it records its end and exits.
/// It records its start once its trap is set (see [`wait_started`]).
/// `sleep` runs in the background and is waited for, so that the shell
/// runs its trap as soon as the signal arrives.
fn slow_to_stop(events: &Path) -> String {
    let f = sh_quote(events.display().to_string());
    format!(
        "trap 'sleep 2; echo \"end $DROVER_ALLOC_ID $(date +%s%N)\" >> {f}; exit 0' TERM\n\
         echo \"start $DROVER_ALLOC_ID $(date +%s%N) ${{CUDA_VISIBLE_DEVICES:-}}\" >> {f}\n\
         while :; do sleep 0.1 & wait $!; done\n"
    )
}

/// Waits until `n` tasks have recorded their start: a `running` report
/// only says the shim started, not that the task's trap is set yet.
async fn wait_started(events: &Path, n: usize) {
    eventually("the tasks to record their start", WAIT, || async {
        let started = read_lines(events)
            .iter()
            .filter(|l| l.starts_with("start "))
            .count();
        if started >= n {
            Ok(())
        } else {
            Err(format!("{started} started"))
        }
    })
    .await;
}

/// A task that records its start, works for `secs` and records its end.
fn works_for(events: &Path, secs: u32) -> String {
    let f = sh_quote(events.display().to_string());
    format!(
        "echo \"start $DROVER_ALLOC_ID $(date +%s%N) ${{CUDA_VISIBLE_DEVICES:-}}\" >> {f}\n\
         sleep {secs}\n\
         echo \"end $DROVER_ALLOC_ID $(date +%s%N)\" >> {f}\n"
    )
}

/// One attempt as its own process saw it.
#[derive(Debug, Clone)]
struct Span {
    alloc: AllocId,
    start_ns: u128,
    /// `None`: still running when the lines were read.
    end_ns: Option<u128>,
    gpus: Vec<u32>,
}

impl Span {
    fn end(&self) -> u128 {
        self.end_ns.unwrap_or(u128::MAX)
    }

    fn overlaps(&self, other: &Span) -> bool {
        self.start_ns < other.end() && other.start_ns < self.end()
    }
}

fn spans(events: &Path) -> BTreeMap<AllocId, Span> {
    let mut out: BTreeMap<AllocId, Span> = BTreeMap::new();
    for line in read_lines(events) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["start", alloc, ns, rest @ ..] => {
                let alloc: AllocId = alloc.parse().expect("an alloc id");
                let gpus = rest
                    .first()
                    .map(|g| g.split(',').map(|d| d.parse().expect("a device")).collect())
                    .unwrap_or_default();
                let span = Span {
                    alloc: alloc.clone(),
                    start_ns: ns.parse().expect("a time"),
                    end_ns: None,
                    gpus,
                };
                assert!(out.insert(alloc, span).is_none(), "started twice: {line}");
            }
            ["end", alloc, ns] => {
                let alloc: AllocId = alloc.parse().expect("an alloc id");
                let span = out.get_mut(&alloc).expect("an end after its start");
                span.end_ns = Some(ns.parse().expect("a time"));
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
    out
}

/// What each alloc held, from the master's books.
struct Held {
    node: NodeId,
    cpu_millis: u64,
}

async fn held(cluster: &Cluster, spans: &BTreeMap<AllocId, Span>) -> BTreeMap<AllocId, Held> {
    let mut out = BTreeMap::new();
    for id in spans.keys() {
        let a = cluster.client().alloc(id).await.expect("the alloc");
        out.insert(
            id.clone(),
            Held {
                node: a.node,
                cpu_millis: a.cpu_millis,
            },
        );
    }
    out
}

/// The three promises, checked on what the processes recorded.
async fn check_promises(cluster: &Cluster, events: &Path) -> BTreeMap<AllocId, Span> {
    let spans = spans(events);
    let held = held(cluster, &spans).await;
    // No two attempts of one task at once.
    for a in spans.values() {
        for b in spans.values() {
            if a.alloc.task == b.alloc.task && a.alloc.attempt < b.alloc.attempt {
                assert!(
                    !a.overlaps(b),
                    "{} and {} ran at once: {a:?} {b:?}",
                    a.alloc,
                    b.alloc
                );
            }
        }
    }
    // No node ever ran more cpu than it has: the load only rises at a start.
    for s in spans.values() {
        let node = &held[&s.alloc].node;
        let capacity = cluster.node_view(node).await.allocatable.cpu_millis;
        let running: Vec<&Span> = spans
            .values()
            .filter(|o| held[&o.alloc].node == *node)
            .filter(|o| o.start_ns <= s.start_ns && s.start_ns < o.end())
            .collect();
        let load: u64 = running.iter().map(|o| held[&o.alloc].cpu_millis).sum();
        assert!(
            load <= capacity,
            "{node} ran {load}m of {capacity}m when {} started: {running:?}",
            s.alloc
        );
    }
    // No GPU device used by two tasks at once.
    for a in spans.values() {
        for b in spans.values().filter(|b| b.alloc > a.alloc) {
            let shared = held[&a.alloc].node == held[&b.alloc].node
                && a.gpus.iter().any(|g| b.gpus.contains(g));
            assert!(
                !(shared && a.overlaps(b)),
                "{} and {} shared a GPU: {a:?} {b:?}",
                a.alloc,
                b.alloc
            );
        }
    }
    spans
}

/// Waits until task `id` is `state` at attempt `attempt`, and returns it.
async fn task_reaches(cluster: &Cluster, id: &str, state: TaskState, attempt: u32) -> TaskView {
    let id: TaskId = id.parse().expect("a task id");
    let what = format!("{id} to be {state} at attempt {attempt}");
    eventually(&what, WAIT, || async {
        let t = cluster.task(&id).await;
        if t.state == state && t.attempts.len() == attempt as usize {
            Ok(t)
        } else {
            Err(format!("{t:?}"))
        }
    })
    .await
}

/// Allocatable cpu of agent `i`'s node.
async fn cpu_of(cluster: &Cluster, i: usize) -> u64 {
    cluster
        .node_view(&cluster.node(i))
        .await
        .allocatable
        .cpu_millis
}

fn alloc(s: &str) -> AllocId {
    s.parse().expect("an alloc id")
}

#[tokio::test]
async fn a_preemptor_starts_only_once_its_victims_have_exited_and_takes_their_gpus() {
    let cluster = Cluster::builder().agents(1).fake_gpus(2).start().await;
    let events = cluster.file("events");
    let n1 = cluster.node(0);
    let all = cpu_of(&cluster, 0).await;
    let low = Job::batch("low", &slow_to_stop(&events))
        .count(2)
        .policy("priority")
        .priority(10)
        .cpu_millis(all / 2)
        .gpus(1)
        .kill_timeout("10s");
    cluster.submit(&low).await;
    cluster.wait_running(&low.id(), WAIT).await;
    wait_started(&events, 2).await;
    let high = Job::batch("high", &works_for(&events, 1))
        .policy("priority")
        .priority(90)
        .cpu_millis(all)
        .gpus(2);
    cluster.submit(&high).await;

    // While the victims run their SIGTERM handlers, they still hold the
    // node (and say why), and the preemptor waits on its reservation.
    let victims = eventually("the victims to be stopping", WAIT, || async {
        let tasks = cluster.tasks(&low.id()).await;
        if tasks.iter().all(|t| t.state == TaskState::Stopping) {
            Ok(tasks)
        } else {
            Err(format!(
                "{:?}",
                tasks.iter().map(|t| t.state).collect::<Vec<_>>()
            ))
        }
    })
    .await;
    for t in &victims {
        assert_eq!(t.reason, "preempted by high/0", "{t:?}");
        assert_eq!(t.latest().unwrap().state, AllocState::Stopping);
    }
    let node = cluster.node_view(&n1).await;
    assert_eq!(node.allocated.cpu_millis, all / 2 * 2, "{node:?}");
    assert_eq!(node.allocated.gpus, 2, "{node:?}");
    let waiting = cluster.task(&"high/0".parse().unwrap()).await;
    assert_eq!(waiting.state, TaskState::Pending, "{waiting:?}");
    let why = waiting.waiting.unwrap_or_default();
    assert!(why.starts_with("reserved on n1: waiting for 2"), "{why}");

    cluster.wait_job(&high.id(), JobState::Complete, WAIT).await;
    // The victims come back once the preemptor is done, as attempt 2.
    eventually("the victims' second attempts", WAIT, || async {
        let tasks = cluster.tasks(&low.id()).await;
        let second = tasks
            .iter()
            .filter(|t| t.state == TaskState::Running && t.attempts.len() == 2)
            .count();
        if second == 2 {
            Ok(())
        } else {
            Err(format!("{tasks:?}"))
        }
    })
    .await;
    let spans = check_promises(&cluster, &events).await;
    let high_start = spans[&alloc("high/0/1")].start_ns;
    for v in ["low/0/1", "low/1/1"] {
        let end = spans[&alloc(v)]
            .end_ns
            .expect("the victim ran its handler to the end");
        assert!(end <= high_start, "{v} ended after high/0/1 started");
    }
    assert_eq!(spans[&alloc("high/0/1")].gpus, vec![0, 1]);
    for v in ["low/0/1", "low/1/1"] {
        let a = cluster.client().alloc(&alloc(v)).await.unwrap();
        assert_eq!(a.state, AllocState::Killed, "{a:?}");
    }
}

#[tokio::test]
async fn a_drained_service_moves_only_once_its_old_process_has_exited() {
    let cluster = Cluster::builder().agents(2).start().await;
    let events = cluster.file("events");
    let all = cpu_of(&cluster, 0).await;
    let web = Job::service("web", &slow_to_stop(&events))
        .cpu_millis(all)
        .kill_timeout("10s");
    cluster.submit(&web).await;
    let first = cluster.wait_running(&web.id(), WAIT).await;
    wait_started(&events, 1).await;
    let from = first[0].latest().unwrap().node.clone();
    cluster
        .client()
        .drain(&from, true, Some(Duration::from_secs(60)))
        .await
        .expect("drain");
    let task = task_reaches(&cluster, "web/0", TaskState::Stopping, 1).await;
    assert_eq!(task.reason, format!("node {from} draining"));
    let moved = task_reaches(&cluster, "web/0", TaskState::Running, 2).await;
    assert_ne!(moved.latest().unwrap().node, from);
    let spans = check_promises(&cluster, &events).await;
    assert!(spans[&alloc("web/0/1")].end_ns.is_some(), "{spans:?}");
}

#[tokio::test]
async fn an_updated_job_starts_its_new_version_once_the_old_attempt_has_exited() {
    let cluster = Cluster::builder().agents(1).start().await;
    let events = cluster.file("events");
    let all = cpu_of(&cluster, 0).await;
    let v1 = Job::batch("app", &slow_to_stop(&events))
        .cpu_millis(all)
        .kill_timeout("10s");
    cluster.submit(&v1).await;
    cluster.wait_running(&v1.id(), WAIT).await;
    wait_started(&events, 1).await;
    let v2 = v1.clone().env("VERSION", "2");
    let answer = cluster
        .client()
        .submit(&v2.to_json(), SpecFormat::Json)
        .await
        .expect("an update");
    assert_eq!(answer.outcome, SubmitOutcome::Updated);
    assert_eq!(answer.job.version, 2);
    let t = cluster.task(&"app/0".parse().unwrap()).await;
    assert_eq!(t.state, TaskState::Stopping, "{t:?}");
    assert_eq!(t.job_version, 2);
    task_reaches(&cluster, "app/0", TaskState::Running, 2).await;
    let spans = check_promises(&cluster, &events).await;
    assert!(spans[&alloc("app/0/1")].end_ns.is_some(), "{spans:?}");
}

#[tokio::test]
async fn a_stopped_job_frees_its_node_only_once_its_processes_have_exited() {
    let cluster = Cluster::builder().agents(1).start().await;
    let events = cluster.file("events");
    let all = cpu_of(&cluster, 0).await;
    // Two tasks fill the node; the third waits for room.
    let old = Job::batch("old", &slow_to_stop(&events))
        .count(3)
        .cpu_millis(all / 2)
        .kill_timeout("10s");
    cluster.submit(&old).await;
    eventually("two tasks of old to run", WAIT, || async {
        let job = cluster.job(&old.id()).await;
        if job.count(TaskState::Running) == 2 {
            Ok(())
        } else {
            Err(format!("{:?}", job.tasks))
        }
    })
    .await;
    wait_started(&events, 2).await;
    cluster.client().stop(&old.id(), false).await.expect("stop");
    let next = Job::batch("next", &works_for(&events, 0)).cpu_millis(all);
    cluster.submit(&next).await;

    let job = cluster.job(&old.id()).await;
    assert_eq!(job.state, JobState::Stopped);
    assert_eq!(job.count(TaskState::Stopping), 2, "{job:?}");
    assert_eq!(job.count(TaskState::Cancelled), 1, "{job:?}");
    cluster.wait_job(&next.id(), JobState::Complete, WAIT).await;
    let job = cluster.job(&old.id()).await;
    assert_eq!(job.count(TaskState::Killed), 2, "{job:?}");
    let cancelled: Vec<_> = cluster
        .tasks(&old.id())
        .await
        .into_iter()
        .filter(|t| t.state == TaskState::Cancelled)
        .collect();
    assert!(
        cancelled[0].attempts.is_empty(),
        "it never ran: {cancelled:?}"
    );

    let spans = check_promises(&cluster, &events).await;
    let next_start = spans[&alloc("next/0/1")].start_ns;
    for s in spans.values().filter(|s| s.alloc.task.job == old.id()) {
        assert!(
            s.end() <= next_start,
            "{} outlived the stop: {s:?}",
            s.alloc
        );
    }
}
