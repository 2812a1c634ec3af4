//! Breaking a real cluster: an agent killed with `kill -9` (and brought
//! back), an agent restarted under a running task, a node drained, and an
//! elastic job that loses a node mid-run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use drover_api::views::TaskView;
use drover_api::{AllocId, AllocState, JobState, NodeState, TaskId, TaskState};
use drover_e2e::{eventually, pid_alive, read_lines, read_pid, sh_quote, Cluster, Job};

const WAIT: Duration = Duration::from_secs(15);

/// A task script that writes its PID to `<dir>/<task index>-<attempt>.pid`
/// and then runs `rest`.
fn writes_pid_then(dir: &Path, rest: &str) -> String {
    format!(
        "echo $$ > {}/$DROVER_TASK_INDEX-$DROVER_ATTEMPT.pid; {rest}",
        sh_quote(dir.to_string_lossy())
    )
}

/// Waits for the PID a task's attempt wrote (see [`writes_pid_then`]).
async fn pid_of(dir: &Path, task: &TaskId, attempt: u32) -> i32 {
    let path = dir.join(format!("{}-{attempt}.pid", task.index));
    eventually(&format!("{}", path.display()), WAIT, || async {
        read_pid(&path).ok_or_else(|| "no PID file yet".to_string())
    })
    .await
}

async fn gone(pid: i32, what: &str) {
    eventually(what, WAIT, || async {
        if pid_alive(pid) {
            Err(format!("PID {pid} still alive"))
        } else {
            Ok(())
        }
    })
    .await
}

#[tokio::test]
async fn a_killed_agents_tasks_run_elsewhere_within_node_timeout_and_its_stale_tasks_die_when_it_returns(
) {
    let mut cluster = Cluster::builder().fast_failure_detection().start().await;
    let pids = cluster.scratch_dir("pids");
    let job = Job::service("web", &writes_pid_then(&pids, "exec sleep 600")).count(3);
    cluster.submit(&job).await;
    let tasks = cluster.wait_running(&job.id(), WAIT).await;
    // Least-loaded: one task per node.
    let on_node = |tasks: &[TaskView], node: &drover_api::NodeId| -> Vec<TaskId> {
        tasks
            .iter()
            .filter(|t| t.latest().is_some_and(|a| &a.node == node))
            .map(|t| t.id.clone())
            .collect()
    };
    let victim_node = cluster.node(1);
    let victims = on_node(&tasks, &victim_node);
    assert_eq!(victims.len(), 1, "{tasks:?}");
    let victim = victims[0].clone();
    let orphan_pid = pid_of(&pids, &victim, 1).await;

    let killed_at = Instant::now();
    cluster.kill_agent(1);
    // The replacement's process writes its PID first thing: that is the
    // moment the task runs again (the master hears of it a heartbeat later).
    let replacement_pid = eventually(
        "the dead node's task to start again",
        cluster.node_timeout() + WAIT,
        || async {
            read_pid(&pids.join(format!("{}-2.pid", victim.index)))
                .ok_or_else(|| "no PID file".to_string())
        },
    )
    .await;
    let elapsed = killed_at.elapsed();
    eprintln!(
        "the dead node's task ran again {elapsed:?} after kill -9 (node_timeout {:?})",
        cluster.node_timeout()
    );
    assert!(
        elapsed <= cluster.node_timeout() + Duration::from_secs(1),
        "took {elapsed:?} to run again; node_timeout is {:?}",
        cluster.node_timeout()
    );
    let replacement = eventually("the master to see the replacement run", WAIT, || async {
        let t = cluster
            .client()
            .task(&victim)
            .await
            .map_err(|e| e.to_string())?;
        match t.latest() {
            Some(a) if a.state == AllocState::Running => Ok(a.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_ne!(replacement.node, victim_node, "{replacement:?}");
    assert_eq!(replacement.id, victim.alloc(2));
    let down = cluster.node_view(&victim_node).await;
    assert_eq!(down.state, NodeState::Down, "{down:?}");
    assert!(down.allocs.is_empty(), "{down:?}");
    let lost = cluster.client().alloc(&victim.alloc(1)).await.unwrap();
    assert_eq!(lost.state, AllocState::Lost, "{lost:?}");
    // Only the agent died: its task goes on under its shim, and now runs twice.
    assert!(pid_alive(orphan_pid), "the orphan died with its agent");
    assert!(pid_alive(replacement_pid));

    // Back on the same data dir and node id: the master tells it to kill the
    // attempt that was replaced.
    cluster.start_agent(1).await;
    gone(
        orphan_pid,
        "the stale attempt on the returning node to be killed",
    )
    .await;
    let back = cluster.node_view(&victim_node).await;
    assert_eq!(back.state, NodeState::Ready, "{back:?}");
    let lost = cluster.client().alloc(&victim.alloc(1)).await.unwrap();
    assert_eq!(
        lost.state,
        AllocState::Lost,
        "a lost attempt never comes back"
    );
    let t = cluster.task(&victim).await;
    assert_eq!(t.attempts.len(), 2, "{t:?}");
    assert_eq!(t.state, TaskState::Running);
    assert!(pid_alive(replacement_pid), "the replacement was killed too");
    // The tasks on the nodes that stayed up were never touched.
    for t in cluster.tasks(&job.id()).await {
        if t.id != victim {
            assert_eq!(t.attempts.len(), 1, "{t:?}");
            assert_eq!(t.state, TaskState::Running, "{t:?}");
            assert!(pid_alive(pid_of(&pids, &t.id, 1).await));
        }
    }
}

#[tokio::test]
async fn an_agent_restart_after_kill_9_or_sigterm_keeps_the_task_process_and_the_same_attempt_succeeds(
) {
    // The default, long node_timeout: the restarts must be seen as
    // restarts, not as a node failure, however slow the machine.
    let mut cluster = Cluster::builder().agents(1).start().await;
    let pids = cluster.scratch_dir("pids");
    let gate = cluster.file("finish");
    let script = writes_pid_then(
        &pids,
        &format!(
            "while [ ! -e {} ]; do sleep 0.05; done; echo finished",
            sh_quote(gate.to_string_lossy())
        ),
    );
    let job = Job::batch("long", &script);
    cluster.submit(&job).await;
    cluster.wait_running(&job.id(), WAIT).await;
    let task = job.id().task(0);
    let pid = pid_of(&pids, &task, 1).await;

    for how in ["kill -9", "SIGTERM"] {
        let before = cluster.node_view(&cluster.node(0)).await.registered_at_ms;
        if how == "kill -9" {
            cluster.kill_agent(0);
        } else {
            cluster.stop_agent(0);
        }
        assert!(pid_alive(pid), "the task died with its agent ({how})");
        cluster.start_agent(0).await;
        let node = cluster.node_view(&cluster.node(0)).await;
        assert!(node.registered_at_ms > before, "{node:?}");
        assert_eq!(node.allocs, [task.alloc(1)], "after {how}: {node:?}");
        let view = cluster.task(&task).await;
        assert_eq!(view.state, TaskState::Running, "after {how}: {view:?}");
        assert_eq!(view.attempts.len(), 1, "after {how}: {view:?}");
        assert!(
            pid_alive(pid),
            "the task died when its agent came back ({how})"
        );
    }

    // The re-attached agent still sees the task through to its end.
    cluster.touch(&gate);
    cluster.wait_job(&job.id(), JobState::Complete, WAIT).await;
    let view = cluster.task(&task).await;
    assert_eq!(view.state, TaskState::Succeeded);
    assert_eq!(view.attempts.len(), 1, "{view:?}");
    assert_eq!(view.attempts[0].state, AllocState::Succeeded);
    assert_eq!(view.attempts[0].exit_code, Some(0));
    assert!(!pid_alive(pid));
    let log = cluster
        .logs(&task, drover_api::client::LogStream::Stdout)
        .await;
    assert_eq!(log, "finished\n");
}

#[tokio::test]
async fn draining_a_node_moves_its_service_tasks_to_the_other_nodes_and_keeps_new_work_away() {
    let cluster = Cluster::builder().start().await;
    let pids = cluster.scratch_dir("pids");
    let job = Job::service("web", &writes_pid_then(&pids, "exec sleep 600")).count(3);
    cluster.submit(&job).await;
    let tasks = cluster.wait_running(&job.id(), WAIT).await;
    let n1 = cluster.node(0);
    let moved: Vec<TaskId> = tasks
        .iter()
        .filter(|t| t.latest().is_some_and(|a| a.node == n1))
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "least-loaded puts one task per node: {tasks:?}"
    );
    let old_pid = pid_of(&pids, &moved[0], 1).await;

    let answer = cluster
        .client()
        .drain(&n1, true, Some(Duration::from_secs(60)))
        .await
        .expect("drain n1");
    assert_eq!(answer.state, NodeState::Draining, "{answer:?}");
    assert!(answer.drain.is_some(), "{answer:?}");

    eventually("n1's task to run on another node", WAIT, || async {
        let t = cluster
            .client()
            .task(&moved[0])
            .await
            .map_err(|e| e.to_string())?;
        match t.latest() {
            Some(a) if a.node != n1 && a.state == AllocState::Running => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    gone(old_pid, "the drained node's task process to stop").await;
    let node = cluster.node_view(&n1).await;
    assert_eq!(node.state, NodeState::Draining, "{node:?}");
    assert!(node.allocs.is_empty(), "{node:?}");
    let old = cluster.client().alloc(&moved[0].alloc(1)).await.unwrap();
    assert_eq!(old.state, AllocState::Killed, "{old:?}");
    // Stopped for the drain, and ended once its process had exited.
    let stopping = old.history.iter().find(|h| h.state == AllocState::Stopping);
    let reason = &stopping.expect("a stopping phase").reason;
    assert!(reason.contains("draining"), "{reason}");
    let placements = cluster.placements(&job.id()).await;
    assert!(!placements.contains_key(&n1), "{placements:?}");

    // No new work goes to a draining node either.
    let more = Job::batch("more", "exec sleep 600").count(4);
    cluster.submit(&more).await;
    cluster.wait_running(&more.id(), WAIT).await;
    let placements = cluster.placements(&more.id()).await;
    assert!(!placements.contains_key(&n1), "{placements:?}");
}

/// Shards, 20 over 3 agents with 2..=6 at once. Each writes its marker by
/// appending one line (its alloc id) as its very last act, so a shard killed
/// mid-way leaves none.
///
/// Exactly-once side effects need care with `kill -9` of an agent: its shims
/// keep their tasks running while the master, after `node_timeout`, runs
/// replacements elsewhere. An orphan that finishes in that window (or one
/// whose exit the agent had not yet reported when it died) writes a second
/// marker; nothing in the system can prevent it (the orphan cannot know it
/// was replaced). What the system does guarantee: the returning agent kills
/// the replaced attempts, and the master counts each shard succeeded once.
/// So the test holds every shard before its marker (a `hold` file) across
/// the kill, the failover and the return, and releases them afterwards: the
/// orphans, killed while held, must never write, and every shard must end
/// with exactly one marker, written by its one succeeded attempt.
#[tokio::test]
async fn every_shard_of_an_elastic_job_succeeds_exactly_once_when_an_agent_dies_mid_run() {
    let mut cluster = Cluster::builder().fast_failure_detection().start().await;
    let pids = cluster.scratch_dir("pids");
    let held = cluster.scratch_dir("held");
    let markers = cluster.scratch_dir("markers");
    let hold = cluster.file("hold");
    let q = |p: &Path| sh_quote(p.to_string_lossy());
    let script = format!(
        "a=$DROVER_SHARD-$DROVER_ATTEMPT; echo $$ > {pids}/$a; sleep 0.2; \
         while [ -e {hold} ]; do touch {held}/$a; sleep 0.05; done; \
         echo $DROVER_ALLOC_ID >> {markers}/$DROVER_SHARD",
        pids = q(&pids),
        hold = q(&hold),
        held = q(&held),
        markers = q(&markers),
    );
    let shards = 20;
    let job = Job::batch("shards", &script).elastic(shards, 2, 6);
    cluster.submit(&job).await;

    // Mid-run: some shards done, then the rest held.
    eventually("a few shards to succeed", WAIT, || async {
        let j = cluster
            .client()
            .job(&job.id())
            .await
            .map_err(|e| e.to_string())?;
        if j.count(TaskState::Succeeded) >= 4 {
            Ok(())
        } else {
            Err(format!("{:?}", j.tasks))
        }
    })
    .await;
    cluster.touch(&hold);
    let victim_node = cluster.node(1);
    // Kill only when every attempt n2 holds is parked at the hold: none can
    // then finish (or have finished unreported) while its node is dead.
    let doomed: Vec<AllocId> = eventually("n2's shards all held", WAIT, || async {
        let node = cluster
            .client()
            .node(&victim_node)
            .await
            .map_err(|e| e.to_string())?;
        let parked = |a: &AllocId| {
            held.join(format!("{}-{}", a.task.index, a.attempt))
                .exists()
        };
        if !node.allocs.is_empty() && node.allocs.iter().all(parked) {
            Ok(node.allocs)
        } else {
            Err(format!("{:?}", node.allocs))
        }
    })
    .await;
    let orphans: Vec<i32> = doomed
        .iter()
        .map(|a| read_pid(&pids.join(format!("{}-{}", a.task.index, a.attempt))))
        .collect::<Option<_>>()
        .expect("a held shard wrote its PID");

    let killed_at = Instant::now();
    cluster.kill_agent(1);
    eventually(
        "n2's shards to run elsewhere",
        cluster.node_timeout() + WAIT,
        || async {
            let mut waiting = Vec::new();
            for a in &doomed {
                let t = cluster
                    .client()
                    .task(&a.task)
                    .await
                    .map_err(|e| e.to_string())?;
                match t.latest() {
                    Some(l) if l.node != victim_node && l.state == AllocState::Running => {}
                    other => waiting.push(format!("{other:?}")),
                }
            }
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(waiting.join("; "))
            }
        },
    )
    .await;
    eprintln!(
        "{} shards of the dead node running elsewhere {:?} after kill -9",
        doomed.len(),
        killed_at.elapsed()
    );
    for a in &doomed {
        let old = cluster.client().alloc(a).await.unwrap();
        assert_eq!(old.state, AllocState::Lost, "{old:?}");
    }
    assert!(orphans.iter().all(|&p| pid_alive(p)), "orphans died early");

    cluster.start_agent(1).await;
    for &pid in &orphans {
        gone(pid, "the returning agent to kill its replaced shards").await;
    }
    std::fs::remove_file(&hold).expect("removing the hold");
    let done = cluster
        .wait_job(&job.id(), JobState::Complete, Duration::from_secs(30))
        .await;
    assert_eq!(done.count(TaskState::Succeeded), shards, "{done:?}");

    // Exactly once, in the master's books and on disk.
    let mut marker_lines = BTreeMap::new();
    for task in cluster.tasks(&job.id()).await {
        let succeeded: Vec<&AllocId> = task
            .attempts
            .iter()
            .filter(|a| a.state == AllocState::Succeeded)
            .map(|a| &a.id)
            .collect();
        assert_eq!(succeeded.len(), 1, "{task:?}");
        let lines = read_lines(&markers.join(task.id.index.to_string()));
        assert_eq!(
            lines,
            [succeeded[0].to_string()],
            "shard {}'s marker: {task:?}",
            task.id.index
        );
        marker_lines.insert(task.id.index, lines.len());
    }
    let indexes: BTreeSet<u32> = marker_lines.keys().copied().collect();
    assert_eq!(indexes, (0..shards).collect());
    let files = std::fs::read_dir(&markers).unwrap().count();
    assert_eq!(
        files, shards as usize,
        "markers for shards that do not exist"
    );
}
