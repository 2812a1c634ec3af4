//! A full disk under the agent's data dir (issue 20): tasks keep running
//! and their exits are reported, a log that cannot be written is cut with
//! a marker (and resumes once there is room), `state.json` is saved again
//! once it can be, and nothing that was reported runs again.
//!
//! The data dir is a small tmpfs, so these tests need root to mount it;
//! without root, or where mounting fails, they say why and skip.
//!
//! Waiting is always "poll a condition, with a deadline", never a bare sleep.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_agent::agent::Agent;
use drover_agent::config::AgentConfig;
use drover_agent::executor::{ExecConfig, Executor, LaunchSpec, SAVE_RETRY};
use drover_agent::fingerprint::Probe;
use drover_agent::local_state::{STATE_FILE, STDOUT_LOG};
use drover_agent::metrics::AgentMetrics;
use drover_agent::output::cut_marker;
use drover_agent::shim::SHIM_ARG;
use drover_api::protocol::{AllocUpdate, Assignment};
use drover_api::AllocState;

const PATIENCE: Duration = Duration::from_secs(30);

/// The line that ends a log cut by a full disk.
fn full_disk_marker() -> String {
    cut_marker("no space left on device")
}

/// Polls `f` until it returns `Some`, for at most [`PATIENCE`].
fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    support::wait_for(what, PATIENCE, f)
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    })
}

/// A tmpfs of a few MiB as the data dir. Dropped, it stops what still runs
/// from it and goes (lazily: a shim may still hold a file there).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None`, said why, when this machine cannot mount one.
    fn mount(bytes: u64) -> Option<SmallDisk> {
        // Mounting needs root, as the user-switching tests do; CI runs as root.
        if !running_as_root() {
            eprintln!("skipped: mounting a small tmpfs needs root");
            return None;
        }
        let dir = tempfile::TempDir::new().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { dir }),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        let data = self.path().join("data");
        fs::create_dir_all(&data).unwrap();
        data
    }

    /// Takes `bytes` with a file of the test's own, to give back later.
    fn ballast(&self, bytes: usize) {
        fs::write(self.path().join("ballast"), vec![0u8; bytes]).unwrap();
    }

    /// Takes every byte left with a file of the test's own.
    fn fill(&self) {
        let mut f = fs::File::create(self.filler()).unwrap();
        let chunk = vec![0u8; 64 << 10];
        let err = loop {
            if let Err(e) = f.write_all(&chunk) {
                break e;
            }
        };
        assert_eq!(err.raw_os_error(), Some(nix::libc::ENOSPC), "{err}");
        assert_eq!(self.free(), 0, "the disk is full");
    }

    /// Gives back what [`SmallDisk::ballast`] and [`SmallDisk::fill`] took.
    fn make_room(&self) {
        fs::remove_file(self.filler()).unwrap();
        let _ = fs::remove_file(self.path().join("ballast"));
        assert!(self.free() >= 1 << 20, "room again: {} bytes", self.free());
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    fn free(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(self.path()).unwrap();
        st.blocks_available() * st.fragment_size()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        for pid in shims_under(self.path()) {
            // SIGUSR1: the shim SIGKILLs its task's group, then ends.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGUSR1,
            );
        }
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// Shims running for an alloc dir under `root`, by their command lines.
fn shims_under(root: &Path) -> Vec<i32> {
    let Ok(proc) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let dir = Path::new(std::str::from_utf8(args.get(2)?).ok()?);
            (args.get(1) == Some(&SHIM_ARG.as_bytes()) && dir.starts_with(root)).then_some(pid)
        })
        .collect()
}

fn exec_config(data: &Path) -> ExecConfig {
    ExecConfig {
        shim_program: env!("CARGO_BIN_EXE_drover-agent").into(),
        user: running_as_root().then(|| "nobody".into()),
        kill_grace: Duration::from_secs(2),
        ..ExecConfig::new(data)
    }
}

mod support;

fn agent(data: &Path, metrics: AgentMetrics) -> Arc<Agent> {
    let executor = Executor::open(exec_config(data)).unwrap();
    let settings = support::settings(data);
    let probe = Probe::new(&AgentConfig::default());
    Agent::new(settings, executor, probe, metrics)
}

fn assignment(alloc: &str, script: &str) -> Assignment {
    support::assignment(alloc, script, &[])
}

/// Collects exits until `alloc` has an update in `state`.
fn wait_update(agent: &Agent, alloc: &str, state: AllocState) -> AllocUpdate {
    wait_for(&format!("{alloc} to be {state}"), || {
        agent.collect_exits();
        agent
            .pending_updates()
            .into_iter()
            .find(|u| u.alloc.to_string() == alloc && u.state == state)
    })
}

fn disk_write_errors(metrics: &AgentMetrics, what: &str) -> u64 {
    metrics.disk_write_errors.with_label_values(&[what]).get()
}

#[test]
fn an_agent_on_a_full_disk_keeps_supervising_reports_exits_and_cuts_logs_with_a_marker() {
    let Some(disk) = SmallDisk::mount(4 << 20) else {
        return;
    };
    // Room that comes back later, as a clean-up on a real machine would.
    disk.ballast(2 << 20);
    let data = disk.data();
    let metrics = AgentMetrics::new();
    let a = agent(&data, metrics.clone());
    let chatty_dir = data.join("allocs/chatty/0/1");
    let quiet_dir = data.join("allocs/quiet/0/1");

    // Twice the disk's size, then it waits; once let go, a line every 50 ms
    // until told to stop.
    let chatty = assignment(
        "chatty/0/1",
        "yes drover | head -c 8000000; touch wrote; \
         while [ ! -e more ]; do sleep 0.05; done; \
         i=0; while [ ! -e stop ]; do echo \"after $i\"; i=$((i+1)); sleep 0.05; done",
    );
    let quiet = assignment(
        "quiet/0/1",
        "while [ ! -e go ]; do sleep 0.05; done; echo late; exit 3",
    );
    a.reconcile(&[chatty.clone(), quiet.clone()]);
    wait_update(&a, "chatty/0/1", AllocState::Running);
    wait_update(&a, "quiet/0/1", AllocState::Running);

    // All 8 MB went into the pipe (the task never blocked on it), and the
    // log, cut when the disk filled, ends with the marker on a line of its own.
    let stdout = chatty_dir.join(STDOUT_LOG);
    let marker = full_disk_marker();
    wait_for("the chatty task to write all its output", || {
        chatty_dir.join("work/wrote").exists().then_some(())
    });
    let log = wait_for("the cut marker at the end of the log", || {
        fs::read_to_string(&stdout)
            .ok()
            .filter(|l| l.ends_with(&marker))
    });
    assert!(log.len() < 2 << 20, "{} bytes in 2 MiB of room", log.len());
    let kept = &log[..log.len() - marker.len()];
    assert!(kept.len() > 1 << 20, "only {} bytes kept", kept.len());
    assert!(
        kept.lines().all(|l| l == "drover"),
        "only whole lines of output before the marker"
    );
    assert_eq!(log.matches("[drover: log truncated").count(), 1);
    // Whatever room the cut left, the test takes.
    disk.fill();

    // A task that ends now has its exit, with its code, reported.
    fs::write(quiet_dir.join("work/go"), "").unwrap();
    let quiet_exit = wait_update(&a, "quiet/0/1", AllocState::Failed);
    assert_eq!(quiet_exit.exit_code, Some(3), "{quiet_exit:?}");
    assert!(!quiet_dir.join("exit.json.reserved").exists());

    // A launch on the full disk: its shim finds no room to record an exit
    // and does not start it, which is reported; state.json cannot be saved,
    // which is counted and leaves no temporary file behind.
    let before = disk_write_errors(&metrics, "state");
    a.reconcile(&[
        chatty.clone(),
        quiet.clone(),
        assignment("late/0/1", "echo ran > ran"),
    ]);
    let late = wait_update(&a, "late/0/1", AllocState::Failed);
    assert_eq!(late.exit_code, None, "{late:?}");
    assert!(
        late.message.as_deref().unwrap_or("").contains("no room"),
        "{late:?}"
    );
    assert!(!data.join("allocs/late/0/1/work/ran").exists());
    assert!(disk_write_errors(&metrics, "state") > before);
    let state = fs::read_to_string(data.join(STATE_FILE)).unwrap();
    assert!(!state.contains("late/0/1"), "{state}");
    assert!(!data.join("state.json.tmp").exists());
    // The chatty task was never stopped.
    assert!(a.is_running(&"chatty/0/1".parse().unwrap()));

    // Room again: the log resumes, saying how much was dropped, and the
    // state is saved without any further change.
    disk.make_room();
    fs::write(chatty_dir.join("work/more"), "").unwrap();
    let resumed = wait_for("the log to resume", || {
        let log = fs::read_to_string(&stdout).ok()?;
        let tail = log.split(marker.as_str()).nth(1)?;
        let mut lines = tail.lines();
        let resumed = lines.next()?.to_string();
        lines.next()?.starts_with("after ").then_some(resumed)
    });
    let dropped: u64 = resumed
        .strip_prefix("[drover: log resumed: ")
        .and_then(|r| r.strip_suffix(" bytes of output were dropped]"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a resume line: {resumed:?}"));
    assert!(dropped > 0, "{resumed}");
    wait_for("state.json saved again", || {
        a.collect_exits();
        let state = fs::read_to_string(data.join(STATE_FILE)).ok()?;
        state.contains("late/0/1").then_some(())
    });

    fs::write(chatty_dir.join("work/stop"), "").unwrap();
    let chatty_exit = wait_update(&a, "chatty/0/1", AllocState::Succeeded);
    assert_eq!(chatty_exit.exit_code, Some(0), "{chatty_exit:?}");
    assert!(
        disk_write_errors(&metrics, "log") >= 1,
        "{}",
        metrics.render()
    );
    // Each exit reported once.
    let ended: Vec<String> = a
        .pending_updates()
        .iter()
        .filter(|u| u.state.is_terminal())
        .map(|u| u.alloc.to_string())
        .collect();
    assert_eq!(ended, ["quiet/0/1", "late/0/1", "chatty/0/1"]);
}

#[test]
fn exits_acknowledged_on_a_full_disk_are_never_reported_or_run_again() {
    let Some(disk) = SmallDisk::mount(2 << 20) else {
        return;
    };
    let data = disk.data();
    let metrics = AgentMetrics::new();
    let spec = |index: u32, script: &str| LaunchSpec {
        alloc: format!("acked/{index}/1").parse().unwrap(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        shard_count: None,
        cpu_millis: 0,
        memory_bytes: 0,
        gpus: Vec::new(),
    };
    // Leaves nothing but its exit (usually one line of finished.jsonl, and
    // no directory), and one with output (usually reported.json).
    let silent = spec(0, "true");
    let chatty = spec(1, "echo out");
    let mut exec = Executor::open(exec_config(&data)).unwrap();
    exec.set_metrics(metrics.clone());
    exec.launch(silent.clone()).unwrap();
    exec.launch(chatty.clone()).unwrap();
    exec.flush();
    assert!(exec.is_saved());
    let mut exited = Vec::new();
    wait_for("both exits", || {
        exited.extend(exec.poll());
        (exited.len() == 2).then_some(())
    });
    assert!(exited.iter().all(|e| e.succeeded()), "{exited:?}");

    disk.fill();
    exec.ack(&[silent.alloc.clone(), chatty.alloc.clone()]);
    assert!(!exec.is_saved());
    assert!(
        disk_write_errors(&metrics, "state") >= 2,
        "the index and the state"
    );
    // Without room for the index line, the silent alloc keeps its
    // directory, marked reported like the other one.
    for s in [&silent, &chatty] {
        let dir = exec.alloc_dir(&s.alloc);
        assert!(dir.join("reported.json").exists(), "{}", dir.display());
        assert!(!exec.launch(s.clone()).unwrap().started);
    }
    assert!(exec.poll().is_empty());

    // A restart on the still full disk (its state.json still lists both as
    // unreported) neither reports nor runs them again.
    drop(exec);
    let mut exec = Executor::open(exec_config(&data)).unwrap();
    exec.set_metrics(metrics.clone());
    assert!(exec.known().is_empty(), "{:?}", exec.known());
    assert!(exec.poll().is_empty(), "reported again after a restart");

    // Room again: the state is saved without any further change, and a
    // launch that could now start them still does not.
    disk.make_room();
    let failed_at = Instant::now();
    wait_for("state.json saved again", || {
        assert!(exec.poll().is_empty());
        exec.is_saved().then_some(())
    });
    assert!(
        failed_at.elapsed() <= SAVE_RETRY + Duration::from_secs(2),
        "retried within {SAVE_RETRY:?}, took {:?}",
        failed_at.elapsed()
    );
    let state = fs::read_to_string(data.join(STATE_FILE)).unwrap();
    assert!(!state.contains("acked/"), "{state}");
    for s in [&silent, &chatty] {
        assert!(!exec.launch(s.clone()).unwrap().started);
    }
}
