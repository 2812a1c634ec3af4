//! The agent loop's reconciliation with real processes: the desired allocs
//! from a poll are launched once, allocs no longer desired are stopped, and
//! every change becomes a status update for the next heartbeat.

use std::time::{Duration, Instant};

use drover_agent::agent::{Agent, AgentSettings};
use drover_agent::config::AgentConfig;
use drover_agent::executor::{ExecConfig, Executor};
use drover_agent::fingerprint::Probe;
use drover_agent::metrics::AgentMetrics;
use drover_api::protocol::Assignment;
use drover_api::{AllocId, AllocState};

mod support;

fn agent(dir: &std::path::Path) -> std::sync::Arc<Agent> {
    agent_with(dir, None)
}

fn agent_with(
    dir: &std::path::Path,
    stop_after_disconnect: Option<Duration>,
) -> std::sync::Arc<Agent> {
    let executor = Executor::open(ExecConfig {
        shim_program: env!("CARGO_BIN_EXE_drover-agent").into(),
        user: Some("nobody".into()),
        kill_grace: Duration::from_secs(2),
        ..ExecConfig::new(dir)
    })
    .unwrap();
    let settings = AgentSettings {
        stop_after_disconnect,
        ..support::settings(dir)
    };
    let probe = Probe::new(&AgentConfig::default());
    Agent::new(settings, executor, probe, AgentMetrics::new())
}

fn assignment(alloc: &str, script: &str) -> Assignment {
    support::assignment(alloc, script, &[])
}

fn gpu_assignment(alloc: &str, script: &str, gpus: &[u32]) -> Assignment {
    support::assignment(alloc, script, gpus)
}

/// Collects exits until `alloc` has an update in `state`, for at most 10 s.
fn wait_for(agent: &Agent, alloc: &str, state: AllocState) -> drover_api::protocol::AllocUpdate {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        agent.collect_exits();
        if let Some(u) = agent
            .pending_updates()
            .into_iter()
            .find(|u| u.alloc.to_string() == alloc && u.state == state)
        {
            return u;
        }
        assert!(
            Instant::now() < deadline,
            "{alloc} never became {state}: {:?}",
            agent.pending_updates()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn desired_allocs_start_once_and_their_exit_is_reported() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = agent(dir.path());
    let job = assignment("job/0/1", "echo run >> runs; exit 3");
    a.reconcile(std::slice::from_ref(&job));
    a.reconcile(std::slice::from_ref(&job));
    let failed = wait_for(&a, "job/0/1", AllocState::Failed);
    assert_eq!(failed.exit_code, Some(3));
    let running: Vec<_> = a
        .pending_updates()
        .into_iter()
        .filter(|u| u.state == AllocState::Running)
        .collect();
    assert_eq!(running.len(), 1, "launched once: {running:?}");
    let runs = std::fs::read_to_string(dir.path().join("allocs/job/0/1/work/runs")).unwrap();
    assert_eq!(runs.lines().count(), 1);
}

#[test]
fn allocs_the_master_no_longer_wants_are_stopped_and_reported_killed() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = agent(dir.path());
    a.reconcile(&[assignment("svc/0/1", "sleep 1000")]);
    wait_for(&a, "svc/0/1", AllocState::Running);
    a.reconcile(&[]);
    let killed = wait_for(&a, "svc/0/1", AllocState::Killed);
    assert_eq!(killed.signal, Some(15), "{killed:?}");
    assert!(!a.is_running(&"svc/0/1".parse().unwrap()));
}

#[test]
fn an_alloc_marked_stop_gets_its_kill_timeout_and_is_reported_once_its_group_is_gone() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = agent(dir.path());
    // Ignores SIGTERM: only the SIGKILL after the alloc's own kill timeout
    // (300 ms, not the agent's 2 s kill_grace) ends it.
    let mut stubborn = assignment(
        "svc/0/1",
        "trap '' TERM; touch ignoring; while :; do sleep 0.05; done",
    );
    a.reconcile(std::slice::from_ref(&stubborn));
    wait_for(&a, "svc/0/1", AllocState::Running);
    let ignoring = dir.path().join("allocs/svc/0/1/work/ignoring");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ignoring.exists() {
        assert!(Instant::now() < deadline, "the task never set its trap");
        std::thread::sleep(Duration::from_millis(10));
    }
    stubborn.stop = true;
    stubborn.kill_timeout_ms = 300;
    let asked = Instant::now();
    a.reconcile(std::slice::from_ref(&stubborn));
    a.reconcile(std::slice::from_ref(&stubborn));
    let killed = wait_for(&a, "svc/0/1", AllocState::Killed);
    let took = asked.elapsed();
    assert_eq!(killed.signal, Some(9), "{killed:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "SIGKILL after the alloc's kill timeout, took {took:?}"
    );
    assert!(!a.is_running(&"svc/0/1".parse().unwrap()));
    let runs = a
        .pending_updates()
        .into_iter()
        .filter(|u| u.state == AllocState::Running)
        .count();
    assert_eq!(runs, 1, "a stop never starts anything");
}

#[test]
fn an_alloc_stopped_before_it_started_here_is_reported_killed_and_never_starts() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = agent(dir.path());
    let mut never = assignment("job/0/1", "echo ran > ran");
    never.stop = true;
    a.reconcile(std::slice::from_ref(&never));
    a.reconcile(std::slice::from_ref(&never));
    let killed = wait_for(&a, "job/0/1", AllocState::Killed);
    assert_eq!(killed.message.as_deref(), Some("stopped before it started"));
    let reports: Vec<_> = a.pending_updates();
    assert_eq!(
        reports.len(),
        1,
        "one report, however often asked: {reports:?}"
    );
    // Should the master ever ask it to run after all, it does not.
    never.stop = false;
    a.reconcile(std::slice::from_ref(&never));
    assert!(!a.is_running(&"job/0/1".parse().unwrap()));
    assert!(!dir.path().join("allocs/job/0/1/work/ran").exists());
}

#[test]
fn a_command_that_cannot_start_fails_once_in_plain_words_and_is_never_running() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = agent(dir.path());
    let mut missing = assignment("job/0/1", "");
    missing.command = vec!["/nonexistent".into()];
    a.reconcile(std::slice::from_ref(&missing));
    let failed = wait_for(&a, "job/0/1", AllocState::Failed);
    assert_eq!(
        failed.message.as_deref(),
        Some("cannot start /nonexistent: No such file or directory")
    );
    assert!(
        a.pending_updates()
            .iter()
            .all(|u| u.state != AllocState::Running),
        "{:?}",
        a.pending_updates()
    );
}

#[test]
fn a_task_never_outlives_its_shim() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = agent(dir.path());
    a.reconcile(&[assignment("orphan/0/1", "echo $$ > pid; exec sleep 1000")]);
    wait_for(&a, "orphan/0/1", AllocState::Running);
    let pid_file = dir.path().join("allocs/orphan/0/1/work/pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    let task_pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the task never wrote its pid");
        std::thread::sleep(Duration::from_millis(20));
    };
    // The shim is known by the state file, saved once the batch launched.
    let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    let state: serde_json::Value = serde_json::from_str(&state).unwrap();
    let shim_pid = state["allocs"][0]["shim"]["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{task_pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "task {task_pid} outlived its shim {shim_pid}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The agent learns the attempt failed, and removes the cgroup the dead
    // shim could not.
    let failed = wait_for(&a, "orphan/0/1", AllocState::Failed);
    assert!(failed.message.unwrap_or_default().contains("shim died"));
    let agent_hash =
        drover_agent::local_state::fnv1a64(dir.path().as_os_str().as_encoded_bytes()) as u32;
    for hierarchy in ["memory", "cpu"] {
        let cgroup = format!("/sys/fs/cgroup/{hierarchy}/drover/{agent_hash:08x}_orphan_0_1");
        assert!(
            !std::path::Path::new(&cgroup).exists(),
            "{cgroup} left behind"
        );
    }
}

#[test]
fn each_task_sees_exactly_the_gpus_it_was_assigned() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = agent(dir.path());
    let script = "test \"$CUDA_VISIBLE_DEVICES\" = \"$WANT\"";
    let mut first = gpu_assignment("gpu/0/1", script, &[0]);
    first.env.insert("WANT".into(), "0".into());
    let mut second = gpu_assignment("gpu/1/1", script, &[1, 3]);
    second.env.insert("WANT".into(), "1,3".into());
    let mut none = gpu_assignment("gpu/2/1", "test -z \"${CUDA_VISIBLE_DEVICES+set}\"", &[]);
    none.env.insert("WANT".into(), String::new());
    a.reconcile(&[first, second, none]);
    for alloc in ["gpu/0/1", "gpu/1/1", "gpu/2/1"] {
        let done = wait_for(&a, alloc, AllocState::Succeeded);
        assert_eq!(done.exit_code, Some(0), "{alloc}");
    }
}

#[tokio::test]
async fn with_stop_after_disconnect_tasks_stop_when_no_master_answers() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = agent_with(dir.path(), Some(Duration::from_millis(300)));
    a.reconcile(&[assignment("lonely/0/1", "sleep 1000")]);
    let alloc: AllocId = "lonely/0/1".parse().unwrap();
    assert!(a.is_running(&alloc));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(std::sync::Arc::clone(&a).run(stopped));
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.is_running(&alloc) {
        a.collect_exits();
        assert!(
            Instant::now() < deadline,
            "the task kept running without a master"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(true).unwrap();
    run.await.unwrap();
}

#[tokio::test]
async fn without_stop_after_disconnect_tasks_keep_running_when_no_master_answers() {
    let dir = tempfile::TempDir::new().unwrap();
    let a = agent(dir.path());
    a.reconcile(&[assignment("loyal/0/1", "sleep 1000")]);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(std::sync::Arc::clone(&a).run(stopped));
    // Several failed registrations (backoff starts at 100 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.collect_exits();
    assert!(a.is_running(&"loyal/0/1".parse().unwrap()));
    stop.send(true).unwrap();
    run.await.unwrap();
    a.reconcile(&[]);
    wait_for(&a, "loyal/0/1", AllocState::Killed);
}
