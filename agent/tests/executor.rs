//! The executor with real processes: the agent binary as the shim, `sh` as
//! the task. Each test has its own data dir and its own job name (with this
//! process's pid, so that cgroups of concurrent runs never collide).
//!
//! Waiting is always "poll a condition, at most 10 s", never a bare sleep.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use drover_agent::executor::{
    start_all, ExecConfig, ExecError, Executor, Exited, LaunchSpec, Limits, Prepare,
};
use drover_agent::local_state::{proc_stat, STATE_FILE};
use drover_agent::shim::{self, SHIM_ARG};
use drover_api::AllocId;
use nix::unistd::Uid;

mod support;

const PATIENCE: Duration = Duration::from_secs(10);

/// The shim binary: the agent itself, or `DROVER_TEST_SHIM` (any binary whose
/// `main` dispatches `__shim` to `drover_agent::shim::main`).
fn shim_program() -> PathBuf {
    std::env::var_os("DROVER_TEST_SHIM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_drover-agent")))
}

/// Polls `f` until it returns `Some`, for at most [`PATIENCE`].
fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    support::wait_for(what, PATIENCE, f)
}

struct Fixture {
    dir: tempfile::TempDir,
    job: String,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let program = shim_program();
        let probe = Command::new(&program)
            .arg(SHIM_ARG)
            .output()
            .expect("run the agent binary");
        assert_eq!(
            probe.status.code(),
            Some(shim::EXIT_USAGE),
            "{} does not act as the shim: agent/src/main.rs must call \
             drover_agent::shim::main(args) when argv[1] == {SHIM_ARG:?} \
             (or set DROVER_TEST_SHIM to a binary that does)",
            program.display()
        );
        Fixture {
            dir: tempfile::tempdir().expect("tempdir"),
            job: format!("{name}-{}", std::process::id()),
        }
    }

    /// Tasks run as `nobody` when the tests run as root, else as ourselves.
    fn config(&self) -> ExecConfig {
        let mut cfg = ExecConfig::new(self.dir.path());
        cfg.shim_program = shim_program();
        if Uid::effective().is_root() {
            cfg.user = Some("nobody".into());
        }
        cfg.kill_grace = Duration::from_secs(5);
        cfg
    }

    fn open(&self) -> Executor {
        Executor::open(self.config()).expect("open executor")
    }

    fn alloc(&self, index: u32) -> AllocId {
        format!("{}/{index}/1", self.job).parse().expect("alloc id")
    }

    fn spec(&self, index: u32, script: &str) -> LaunchSpec {
        LaunchSpec {
            alloc: self.alloc(index),
            command: vec!["sh".into(), "-c".into(), script.into()],
            env: BTreeMap::new(),
            shard_count: None,
            cpu_millis: 0,
            memory_bytes: 0,
            gpus: Vec::new(),
        }
    }

    fn work(&self, exec: &Executor, index: u32) -> PathBuf {
        exec.alloc_dir(&self.alloc(index)).join("work")
    }
}

impl Drop for Fixture {
    /// A failed test must not leave its tasks running: SIGUSR1 makes each
    /// shim still running under this data dir SIGKILL its task's group.
    fn drop(&mut self) {
        for pid in shims_under(self.dir.path()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGUSR1,
            );
        }
    }
}

fn wait_exit(exec: &mut Executor, alloc: &AllocId) -> Exited {
    wait_for(&format!("{alloc} to exit"), || {
        let done = exec.poll();
        assert!(
            done.iter().all(|e| &e.alloc == alloc),
            "unexpected exits: {done:?}"
        );
        done.into_iter().next()
    })
}

fn read_when_written(path: &Path) -> String {
    wait_for(&format!("{}", path.display()), || {
        fs::read_to_string(path).ok().filter(|s| s.ends_with('\n'))
    })
}

fn pid_alive(pid: i32, start_time: u64) -> bool {
    matches!(proc_stat(pid), Some(s) if s.start_time == start_time && s.state != 'Z' && s.state != 'X')
}

/// Running shims (pid, alloc dir), found by their command lines.
/// Shim processes by pid and alloc dir. A shim's child between its fork
/// and its exec still shows the shim's command line: it is not a shim.
fn shims() -> Vec<(i32, PathBuf)> {
    let all = shim_like_processes();
    let pids: Vec<i32> = all.iter().map(|(pid, _)| *pid).collect();
    all.into_iter()
        .filter(|(pid, _)| !parent_of(*pid).is_some_and(|ppid| pids.contains(&ppid)))
        .collect()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 4, after the parenthesised command name (which may hold spaces).
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn shim_like_processes() -> Vec<(i32, PathBuf)> {
    let Ok(proc) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if args.get(1).map(String::as_str) != Some(SHIM_ARG) {
                return None;
            }
            Some((pid, PathBuf::from(args.get(2)?)))
        })
        .collect()
}

/// How many shims run for one alloc dir.
fn shims_for(dir: &Path) -> usize {
    shims().iter().filter(|(_, d)| d == dir).count()
}

fn shims_under(root: &Path) -> Vec<i32> {
    shims()
        .into_iter()
        .filter(|(_, d)| d.starts_with(root))
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn a_task_exit_code_and_output_are_reported() {
    let fx = Fixture::new("exit-code");
    let mut exec = fx.open();
    let launch = exec
        .launch(fx.spec(0, "echo out; echo err >&2; exit 3"))
        .expect("launch");
    assert!(launch.started);
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!(exit.exit_code, Some(3), "{exit:?}");
    assert_eq!(exit.signal, None);
    assert!(exit.message.contains("status 3"), "{}", exit.message);
    assert_eq!(
        fs::read_to_string(launch.dir.join("stdout.log")).expect("stdout"),
        "out\n"
    );
    assert_eq!(
        fs::read_to_string(launch.dir.join("stderr.log")).expect("stderr"),
        "err\n"
    );
    assert!(exec.running().is_empty());
    assert!(exec.poll().is_empty(), "reported twice");
}

#[test]
fn a_task_killed_by_a_signal_reports_the_signal() {
    let fx = Fixture::new("signal");
    let mut exec = fx.open();
    exec.launch(fx.spec(0, "kill -USR1 $$")).expect("launch");
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!(exit.signal, Some(libc_sigusr1()), "{exit:?}");
    assert_eq!(exit.exit_code, None);
    assert!(exit.message.contains("SIGUSR1"), "{}", exit.message);
}

fn libc_sigusr1() -> i32 {
    nix::sys::signal::Signal::SIGUSR1 as i32
}

#[test]
fn a_command_that_does_not_exist_is_reported_as_failed() {
    let fx = Fixture::new("no-such-command");
    let mut exec = fx.open();
    let mut spec = fx.spec(0, "");
    spec.command = vec!["/nonexistent/drover-test-program".into()];
    let err = exec.launch(spec.clone()).expect_err("nothing to start");
    let said = "cannot start /nonexistent/drover-test-program: No such file or directory";
    assert_eq!(err.to_string(), said);
    // Recorded as ended, in the same words, once; never started again.
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!((exit.exit_code, exit.signal), (None, None), "{exit:?}");
    assert_eq!(exit.message, said);
    let again = exec.launch(spec).expect("known");
    assert!(!again.started && again.exited && again.shim_pid.is_none());
}

#[test]
fn a_program_missing_from_path_or_not_executable_fails_at_once() {
    let fx = Fixture::new("not-in-path");
    let mut exec = fx.open();
    let mut spec = fx.spec(0, "");
    spec.command = vec!["drover-no-such-program".into()];
    spec.env.insert("PATH".into(), "/usr/bin:/bin".into());
    let err = exec.launch(spec).expect_err("not in PATH");
    assert_eq!(
        err.to_string(),
        "cannot start drover-no-such-program: not found in PATH (/usr/bin:/bin)"
    );
    let plain = fx.dir.path().join("plain-file");
    std::fs::write(&plain, "not a program").unwrap();
    std::fs::set_permissions(&plain, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut spec = fx.spec(1, "");
    spec.command = vec![plain.display().to_string()];
    let err = exec.launch(spec).expect_err("not executable");
    assert_eq!(
        err.to_string(),
        format!("cannot start {}: Permission denied", plain.display())
    );
}

#[test]
fn an_empty_command_is_refused() {
    let fx = Fixture::new("empty");
    let mut exec = fx.open();
    let mut spec = fx.spec(0, "");
    spec.command.clear();
    let err = exec.launch(spec).expect_err("empty command");
    assert!(matches!(err, ExecError::InvalidSpec { .. }), "{err}");
    assert!(exec.known().is_empty());
}

#[test]
fn the_environment_is_exactly_the_spec_plus_drover_variables() {
    let fx = Fixture::new("env");
    let mut exec = fx.open();
    let mut spec = fx.spec(2, "env > env.txt");
    spec.alloc = format!("{}/2/3", fx.job).parse().expect("id");
    spec.gpus = vec![0, 2];
    spec.env.insert("QUALITY".into(), "high".into());
    spec.env.insert("DROVER_JOB".into(), "spoofed".into());
    let alloc = spec.alloc.clone();
    let launch = exec.launch(spec).expect("launch");
    let exit = wait_exit(&mut exec, &alloc);
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");
    let text = fs::read_to_string(launch.dir.join("work/env.txt")).expect("env.txt");
    let env: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    assert_eq!(env.get("DROVER_JOB"), Some(&fx.job.as_str()));
    let task = format!("{}/2", fx.job);
    assert_eq!(env.get("DROVER_TASK_ID"), Some(&task.as_str()));
    assert_eq!(env.get("DROVER_TASK_INDEX"), Some(&"2"));
    assert_eq!(
        env.get("DROVER_ALLOC_ID"),
        Some(&alloc.to_string().as_str())
    );
    assert_eq!(env.get("DROVER_ATTEMPT"), Some(&"3"));
    assert_eq!(env.get("CUDA_VISIBLE_DEVICES"), Some(&"0,2"));
    assert_eq!(env.get("QUALITY"), Some(&"high"));
    assert!(env.contains_key("PATH"));
    for leaked in ["HOME", "CARGO", "CARGO_PKG_NAME", "RUST_TEST_THREADS"] {
        assert!(!env.contains_key(leaked), "{leaked} leaked into {env:?}");
    }
}

#[test]
fn stop_kills_the_whole_process_group_including_a_grandchild() {
    let fx = Fixture::new("stop-group");
    let mut exec = fx.open();
    exec.launch(fx.spec(0, "sleep 1000 & echo $! > child.pid; wait"))
        .expect("launch");
    let pid_file = fx.work(&exec, 0).join("child.pid");
    let grandchild: i32 = read_when_written(&pid_file).trim().parse().expect("pid");
    let start = proc_stat(grandchild).expect("grandchild runs").start_time;

    exec.stop(&fx.alloc(0), Some(Duration::from_secs(5)))
        .expect("stop");
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!(
        exit.signal,
        Some(nix::sys::signal::Signal::SIGTERM as i32),
        "{exit:?}"
    );
    wait_for("the grandchild to die", || {
        (!pid_alive(grandchild, start)).then_some(())
    });
}

#[test]
fn a_task_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let fx = Fixture::new("stop-grace");
    let mut exec = fx.open();
    exec.launch(fx.spec(
        0,
        "trap '' TERM; echo ready > ready; while :; do sleep 0.05; done",
    ))
    .expect("launch");
    read_when_written(&fx.work(&exec, 0).join("ready"));
    let grace = Duration::from_millis(300);
    let asked = Instant::now();
    exec.stop(&fx.alloc(0), Some(grace)).expect("stop");
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!(
        exit.signal,
        Some(nix::sys::signal::Signal::SIGKILL as i32),
        "{exit:?}"
    );
    assert!(asked.elapsed() >= grace, "killed before the grace period");
}

#[test]
fn a_duplicate_launch_starts_one_process() {
    let fx = Fixture::new("dup");
    let mut exec = fx.open();
    let script = "echo run >> runs; exec sleep 1000";
    let first = exec.launch(fx.spec(0, script)).expect("launch");
    let second = exec.launch(fx.spec(0, script)).expect("launch again");
    assert!(first.started);
    assert!(!second.started);
    assert_eq!(first.shim_pid, second.shim_pid);
    assert_eq!(exec.running().len(), 1);
    // Counted once the task runs: a process caught in the middle of its
    // exec shows no command line yet.
    read_when_written(&first.dir.join("work/runs"));
    assert_eq!(shims_for(&first.dir), 1);
    exec.stop(&fx.alloc(0), Some(Duration::ZERO)).expect("stop");
    wait_exit(&mut exec, &fx.alloc(0));
    let third = exec.launch(fx.spec(0, script)).expect("launch after exit");
    assert!(!third.started && third.exited);
    assert_eq!(shims_for(&first.dir), 0);
    assert_eq!(
        fs::read_to_string(first.dir.join("work/runs")).expect("runs"),
        "run\n"
    );
}

#[test]
fn a_batch_started_outside_the_executor_runs_each_alloc_once_in_order() {
    let fx = Fixture::new("batch");
    let mut exec = fx.open();
    let n = 24;
    let script = "echo run >> runs";
    let mut prepared = Vec::new();
    for i in 0..n {
        match exec.prepare(fx.spec(i, script)).expect("prepare") {
            Prepare::Start(p) => prepared.push(*p),
            Prepare::Known(l) => panic!("{} known before it started: {l:?}", l.alloc),
        }
    }
    let mut missing = fx.spec(n, "");
    missing.command = vec!["/nonexistent/drover-test-program".into()];
    match exec.prepare(missing).expect("prepare") {
        Prepare::Start(p) => prepared.push(*p),
        Prepare::Known(l) => panic!("known before it started: {l:?}"),
    }
    // While it is being started, a second poll's answer starts nothing.
    match exec.prepare(fx.spec(0, script)).expect("prepare again") {
        Prepare::Known(l) => assert!(!l.started && !l.exited, "{l:?}"),
        Prepare::Start(_) => panic!("prepared twice"),
    }
    let started = start_all(prepared);
    let order: Vec<AllocId> = started.iter().map(|s| s.alloc().clone()).collect();
    assert_eq!(order, (0..=n).map(|i| fx.alloc(i)).collect::<Vec<_>>());
    for s in started {
        let alloc = s.alloc().clone();
        match exec.finish(s) {
            Ok(launch) => assert!(launch.started && alloc != fx.alloc(n), "{launch:?}"),
            Err(e) => {
                assert_eq!(alloc, fx.alloc(n));
                assert!(e.to_string().contains("No such file"), "{e}");
            }
        }
    }
    exec.flush();
    assert!(exec.is_saved());
    let mut exited = BTreeMap::new();
    wait_for("every task to exit", || {
        for e in exec.poll() {
            let alloc = e.alloc.clone();
            assert!(exited.insert(alloc, e).is_none(), "an exit reported twice");
        }
        (exited.len() == n as usize + 1).then_some(())
    });
    for i in 0..n {
        assert!(
            exited[&fx.alloc(i)].succeeded(),
            "{:?}",
            exited[&fx.alloc(i)]
        );
        let runs = fs::read_to_string(fx.work(&exec, i).join("runs")).expect("runs");
        assert_eq!(runs, "run\n", "alloc {i}");
    }
    assert!(!exited[&fx.alloc(n)].succeeded());
    // Booked: known from now on, never started again.
    let again = exec.launch(fx.spec(0, script)).expect("known");
    assert!(!again.started && again.exited);
    let running: BTreeSet<AllocId> = exec.running().into_iter().map(|(a, _)| a).collect();
    assert!(running.is_empty(), "{running:?}");
}

#[test]
fn a_new_executor_reattaches_and_reports_an_exit_from_while_it_was_down_once() {
    let fx = Fixture::new("reattach");
    let alloc = fx.alloc(0);
    let mut exec = fx.open();
    let launch = exec
        .launch(fx.spec(
            0,
            "echo up > up; while [ ! -e go ]; do sleep 0.02; done; exit 7",
        ))
        .expect("launch");
    let pid = launch.shim_pid.expect("pid");
    read_when_written(&launch.dir.join("work/up"));
    drop(exec); // the agent dies; the shim must not

    let mut exec = fx.open();
    assert_eq!(exec.running(), vec![(alloc.clone(), pid)]);
    assert!(exec.poll().is_empty());
    drop(exec);

    fs::write(launch.dir.join("work/go"), "").expect("go");
    wait_for("exit.json", || {
        launch.dir.join("exit.json").exists().then_some(())
    });

    let mut exec = fx.open();
    let done = exec.poll();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].alloc, alloc);
    assert_eq!(done[0].exit_code, Some(7));
    assert!(exec.poll().is_empty());
    drop(exec);

    // Not acknowledged (the agent died before the master had it): again.
    let mut exec = fx.open();
    let again = exec.poll();
    assert_eq!(
        again.len(),
        1,
        "an unacknowledged exit must not be lost: {again:?}"
    );
    exec.ack(std::slice::from_ref(&alloc));
    assert!(exec.poll().is_empty());
    drop(exec);

    let mut exec = fx.open();
    assert!(
        exec.poll().is_empty(),
        "reported again after it was acknowledged"
    );
    assert!(exec.running().is_empty());
}

#[test]
fn an_acknowledged_exit_leaves_the_state_file_yet_the_alloc_is_never_run_again() {
    let fx = Fixture::new("forgotten");
    let mut exec = fx.open();
    exec.launch(fx.spec(0, "echo run >> runs")).expect("launch");
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!(exit.exit_code, Some(0));
    exec.ack(&[fx.alloc(0)]);
    assert!(exec.known().is_empty(), "{:?}", exec.known());
    let state = fs::read_to_string(fx.dir.path().join(STATE_FILE)).expect("state");
    assert!(!state.contains(&fx.alloc(0).to_string()), "{state}");

    // A late poll answer still listing the alloc must not start it again,
    // in this process or after a restart.
    let again = exec.launch(fx.spec(0, "echo run >> runs")).expect("launch");
    assert!(!again.started, "{again:?}");
    drop(exec);
    let mut exec = fx.open();
    let again = exec.launch(fx.spec(0, "echo run >> runs")).expect("launch");
    assert!(!again.started, "{again:?}");
    assert!(exec.poll().is_empty(), "not reported a second time");
    let runs = fs::read_to_string(again.dir.join("work/runs")).expect("runs");
    assert_eq!(runs, "run\n");
}

#[test]
fn acknowledging_a_jobs_last_quiet_exit_leaves_no_directory_of_it_behind() {
    let fx = Fixture::new("quiet");
    let mut exec = fx.open();
    let launched = exec.launch(fx.spec(0, "true")).expect("launch");
    let job_dir = launched
        .dir
        .ancestors()
        .nth(2)
        .expect("allocs/<job>/<index>/<attempt>")
        .to_path_buf();
    assert!(job_dir.ends_with(&fx.job), "{}", job_dir.display());
    wait_exit(&mut exec, &fx.alloc(0));
    exec.ack(&[fx.alloc(0)]);
    // One empty directory per job would add up over months of churn.
    assert!(!job_dir.exists(), "{} is left", job_dir.display());
}

#[test]
fn a_corrupt_state_file_is_recovered_from_the_alloc_dirs_without_relaunching() {
    let fx = Fixture::new("corrupt");
    let mut exec = fx.open();
    let running = exec
        .launch(fx.spec(
            0,
            "echo run >> runs; while [ ! -e go ]; do sleep 0.02; done",
        ))
        .expect("launch");
    exec.launch(fx.spec(1, "exit 4")).expect("launch");
    let reported = wait_exit(&mut exec, &fx.alloc(1));
    assert_eq!(reported.exit_code, Some(4));
    exec.ack(&[fx.alloc(1)]);
    exec.launch(fx.spec(2, "exit 5")).expect("launch");
    wait_for("alloc 2's exit.json", || {
        exec.alloc_dir(&fx.alloc(2))
            .join("exit.json")
            .exists()
            .then_some(())
    });
    drop(exec);

    let state = fx.dir.path().join(STATE_FILE);
    let bytes = fs::read(&state).expect("state");
    fs::write(&state, &bytes[..bytes.len() / 2]).expect("truncate");

    let mut exec = fx.open();
    assert!(
        matches!(
            exec.load_outcome(),
            drover_agent::local_state::LoadOutcome::Recovered { .. }
        ),
        "{:?}",
        exec.load_outcome()
    );
    assert_eq!(
        exec.running(),
        vec![(fx.alloc(0), running.shim_pid.expect("pid"))]
    );
    let again = exec
        .launch(fx.spec(0, "echo run >> runs"))
        .expect("launch again");
    assert!(!again.started);
    assert_eq!(shims_for(&running.dir), 1);

    // Alloc 1 was reported before the corruption, alloc 2 was not.
    let done = exec.poll();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(
        (done[0].alloc.clone(), done[0].exit_code),
        (fx.alloc(2), Some(5))
    );

    fs::write(running.dir.join("work/go"), "").expect("go");
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(
        fs::read_to_string(running.dir.join("work/runs")).expect("runs"),
        "run\n"
    );
}

#[test]
fn a_task_over_its_memory_limit_is_killed() {
    let fx = Fixture::new("oom");
    let mut exec = fx.open();
    match exec.limits() {
        Limits::None => {
            eprintln!("skipped: no writable cgroup memory controller on this machine");
            return;
        }
        Limits::CgroupV1 { memory: None, .. } => {
            eprintln!("skipped: the cgroup v1 memory controller is not writable");
            return;
        }
        _ => {}
    }
    let mut spec = fx.spec(0, "head -c 300M /dev/zero | tail > /dev/null");
    spec.memory_bytes = 64 << 20;
    exec.launch(spec).expect("launch");
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    // `tail` is OOM-killed; sh reports it as status 128 + 9.
    let killed = exit.signal == Some(9) || exit.exit_code == Some(137);
    assert!(killed, "{exit:?}");
    assert!(exit.oom_killed, "{exit:?}");
    assert!(exit.message.contains("out of memory"), "{}", exit.message);
}

#[test]
fn a_task_within_its_memory_limit_succeeds() {
    let fx = Fixture::new("no-oom");
    let mut exec = fx.open();
    let mut spec = fx.spec(0, "head -c 1M /dev/zero | tail > /dev/null");
    spec.memory_bytes = 64 << 20;
    spec.cpu_millis = 500;
    exec.launch(spec).expect("launch");
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!(
        exit.exit_code,
        Some(0),
        "{exit:?} (limits: {})",
        exec.limits()
    );
    assert!(!exit.oom_killed);
}

#[test]
fn tasks_run_as_nobody_without_new_privileges() {
    if !Uid::effective().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let fx = Fixture::new("nobody");
    let mut exec = fx.open();
    let launch = exec
        .launch(fx.spec(
            0,
            "id -u > uid; id -g > gid; grep NoNewPrivs /proc/self/status > nnp",
        ))
        .expect("launch");
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");
    let work = launch.dir.join("work");
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("getpwnam")
        .expect("nobody exists");
    assert_eq!(
        fs::read_to_string(work.join("uid")).expect("uid").trim(),
        nobody.uid.to_string()
    );
    assert_eq!(
        fs::read_to_string(work.join("gid")).expect("gid").trim(),
        nobody.gid.to_string()
    );
    let nnp = fs::read_to_string(work.join("nnp")).expect("nnp");
    assert!(nnp.split_whitespace().any(|w| w == "1"), "{nnp}");
}

#[test]
fn uid_0_is_refused_unless_allowed() {
    if !Uid::effective().is_root() {
        eprintln!("skipped: the root checks need root");
        return;
    }
    let fx = Fixture::new("root");
    let mut cfg = fx.config();
    cfg.user = Some("root".into());
    let err = Executor::open(cfg.clone()).expect_err("root refused");
    assert!(matches!(err, ExecError::RootRefused(_)), "{err}");
    assert!(err.to_string().contains("allow_root"), "{err}");

    cfg.user = None;
    let err = Executor::open(cfg.clone()).expect_err("implicit root refused");
    assert!(matches!(err, ExecError::RootRefused(_)), "{err}");

    cfg.user = Some("root".into());
    cfg.allow_root = true;
    let mut exec = Executor::open(cfg).expect("root allowed");
    let launch = exec.launch(fx.spec(0, "id -u > uid")).expect("launch");
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");
    assert_eq!(
        fs::read_to_string(launch.dir.join("work/uid"))
            .expect("uid")
            .trim(),
        "0"
    );
}

#[test]
fn an_unknown_task_user_is_a_clear_error() {
    let fx = Fixture::new("no-user");
    let mut cfg = fx.config();
    cfg.user = Some("drover-no-such-user".into());
    let err = Executor::open(cfg).expect_err("unknown user");
    assert!(matches!(err, ExecError::UnknownUser(_)), "{err}");
}

#[test]
fn forget_removes_an_exited_alloc_but_not_a_running_one() {
    let fx = Fixture::new("forget");
    let mut exec = fx.open();
    let a = exec.launch(fx.spec(0, "exit 0")).expect("launch");
    let b = exec.launch(fx.spec(1, "exec sleep 1000")).expect("launch");
    wait_exit(&mut exec, &fx.alloc(0));
    let err = exec.forget(&fx.alloc(1)).expect_err("still running");
    assert!(matches!(err, ExecError::StillRunning(_)), "{err}");
    exec.forget(&fx.alloc(0)).expect("forget");
    assert!(!a.dir.exists());
    assert_eq!(exec.known(), vec![fx.alloc(1)]);
    exec.stop(&fx.alloc(1), Some(Duration::ZERO)).expect("stop");
    wait_exit(&mut exec, &fx.alloc(1));
    assert!(b.dir.exists());
}

#[test]
fn the_shim_rejects_bad_arguments() {
    assert_eq!(shim::main(vec![OsString::from("agent")]), shim::EXIT_USAGE);
    assert!(!shim::is_shim_invocation(&[OsString::from("agent")]));
    assert!(shim::is_shim_invocation(&[
        OsString::from("agent"),
        OsString::from(SHIM_ARG)
    ]));
}

#[test]
fn without_a_writable_cgroup_tasks_run_without_limits() {
    let fx = Fixture::new("no-cgroup");
    let fake_root = tempfile::tempdir().expect("tempdir");
    let mut cfg = fx.config();
    cfg.cgroup_root = Some(fake_root.path().to_path_buf());
    let mut exec = Executor::open(cfg).expect("open");
    assert_eq!(exec.limits(), &Limits::None);
    assert_eq!(exec.limits().to_string(), "none");
    let mut spec = fx.spec(0, "exit 0");
    spec.memory_bytes = 1 << 20;
    exec.launch(spec).expect("launch");
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!(exit.exit_code, Some(0), "{exit:?}");
}

/// Every file and directory under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn a_task_that_leaves_nothing_becomes_one_line_once_reported_and_never_runs_again() {
    let fx = Fixture::new("silent");
    let mut exec = fx.open();
    let launch = exec.launch(fx.spec(0, "true")).expect("launch");
    let exit = wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!(exit.exit_code, Some(0));
    // Empty logs and an empty work dir are removed by the shim, which had
    // nothing to say itself: only the exit record is left.
    assert_eq!(tree(&launch.dir), ["exit.json"]);

    exec.ack(&[fx.alloc(0)]);
    assert!(!launch.dir.exists(), "{:?}", tree(fx.dir.path()));
    assert!(
        !launch.dir.parent().unwrap().exists(),
        "the task's index dir goes with its only attempt"
    );
    let finished = fs::read_to_string(fx.dir.path().join("finished.jsonl")).expect("index");
    let lines: Vec<&str> = finished.lines().collect();
    assert_eq!(lines.len(), 1, "{finished}");
    assert!(
        lines[0].starts_with(&format!("{{\"alloc\":\"{}\",", fx.alloc(0))),
        "{finished}"
    );
    assert!(lines[0].contains("\"exit_code\":0"), "{finished}");

    // Never run again, in this process or the next.
    let again = exec.launch(fx.spec(0, "true")).expect("launch");
    assert!(!again.started && again.exited, "{again:?}");
    drop(exec);
    let mut exec = fx.open();
    let again = exec.launch(fx.spec(0, "true")).expect("launch");
    assert!(!again.started && again.exited, "{again:?}");
    assert!(!launch.dir.exists());
    assert!(exec.poll().is_empty(), "not reported a second time");
}

#[test]
fn a_task_with_output_keeps_its_logs_and_its_exit_as_reported_json() {
    let fx = Fixture::new("chatty");
    let mut exec = fx.open();
    let launch = exec.launch(fx.spec(0, "echo out")).expect("launch");
    wait_exit(&mut exec, &fx.alloc(0));
    assert_eq!(tree(&launch.dir), ["exit.json", "stdout.log"]);
    exec.ack(&[fx.alloc(0)]);
    assert_eq!(tree(&launch.dir), ["reported.json", "stdout.log"]);
    assert_eq!(
        fs::read_to_string(launch.dir.join("stdout.log")).unwrap(),
        "out\n"
    );
    assert!(!fx.dir.path().join("finished.jsonl").exists());
    drop(exec);
    let mut exec = fx.open();
    assert!(exec.known().is_empty(), "{:?}", exec.known());
    let again = exec.launch(fx.spec(0, "echo out")).expect("launch");
    assert!(!again.started, "{again:?}");
    assert!(exec.poll().is_empty(), "not reported a second time");
}

#[test]
fn the_finished_index_keeps_the_newest_allocs() {
    let fx = Fixture::new("index");
    let mut cfg = fx.config();
    cfg.max_finished = 2;
    let mut exec = Executor::open(cfg).expect("open");
    for i in 0..5 {
        exec.launch(fx.spec(i, "true")).expect("launch");
        wait_exit(&mut exec, &fx.alloc(i));
        exec.ack(&[fx.alloc(i)]);
    }
    let finished = fs::read_to_string(fx.dir.path().join("finished.jsonl")).expect("index");
    let ids: Vec<String> = finished
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["alloc"].to_string())
        .collect();
    // Trimmed to the newest 2 once it held more than twice that.
    assert_eq!(
        ids,
        [fx.alloc(3), fx.alloc(4)].map(|a| format!("\"{a}\"")),
        "{finished}"
    );
}
