//! The shim: a small supervisor between the agent and one task, so that the
//! task survives an agent crash (`kill -9`, upgrade) and its exit status is
//! never lost.
//!
//! The executor starts `drover-shim __shim <alloc-dir>` (a small binary of
//! its own, which starts in a fraction of the agent's time; the agent's own
//! binary when it is not installed) with posix_spawn, the forwarded signals
//! and `SIGCHLD` blocked, stdout and stderr on `/dev/null` and the launch
//! plan on a pipe as stdin. The shim then:
//!
//! 1. starts a session of its own (so its process group id is its pid) and
//!    reads the [`ShimPlan`] from stdin, to its end: nothing on disk;
//! 2. creates the alloc's cgroup(s) and writes the limits;
//! 3. takes the room `exit.json` will need ([`EXIT_RESERVED`]), so that the
//!    task's exit is recorded even if its output (or another task's) fills
//!    the disk meanwhile; with no room for even that, the task is not
//!    started and the shim exits [`EXIT_NO_ROOM`];
//! 4. starts the task: cwd `work/`, exactly the planned environment (plus
//!    `PATH` if absent), stdout/stderr on pipes that the shim copies to
//!    `stdout.log`/`stderr.log` (see [`crate::output`]: a log that cannot
//!    be written is cut, and the task never notices), stdin `/dev/null`,
//!    in its own process group, and — between fork and exec — joins the
//!    cgroup, drops to the task user (supplementary groups, gid, uid) and
//!    sets `PR_SET_NO_NEW_PRIVS`;
//! 5. forwards `SIGTERM`/`SIGINT`/`SIGHUP` to the task's process group and
//!    turns `SIGUSR1` into `SIGKILL` for that group (this is how the executor
//!    escalates after the grace period without killing the shim itself);
//! 6. when the task's main process exits, kills what is left of its process
//!    group and cgroup, reaps it, copies what is left in the pipes, removes
//!    the log files and the work dir if they are empty, and writes
//!    `exit.json` atomically, into the room taken in step 3.
//!
//! It is one thread: signals (from a signalfd), the task's exit (`SIGCHLD`)
//! and its output are taken in turn from `poll`. Its own diagnostics go to
//! `shim.log`, which exists only if it had something to say.
//!
//! A binary that acts as the shim must dispatch to [`main`] before anything
//! else (no runtime, no logging set up) when `argv[1] == "__shim"`; see
//! [`is_shim_invocation`].

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use drover_api::AllocId;
use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::local_state::{
    now_unix_ms, proc_stat, sync_dir, write_atomic, ExitRecord, EXIT_FILE, EXIT_RESERVED, SHIM_LOG,
    STDERR_LOG, STDOUT_LOG, WORK_DIR,
};
use crate::output::{pump, LogSink};

/// `argv[1]` that makes the agent binary act as a shim.
pub const SHIM_ARG: &str = "__shim";

/// `PATH` given to tasks whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit status of the shim when its arguments are wrong.
pub const EXIT_USAGE: i32 = 64;
/// Exit status of the shim when it could not record the task's exit.
pub const EXIT_SOFTWARE: i32 = 70;
/// Exit status of the shim when there was no room in the alloc dir for the
/// task's exit record: the task was not started (`EX_TEMPFAIL`).
pub const EXIT_NO_ROOM: i32 = 75;
/// Bytes taken for `exit.json` before the task starts: far more than an
/// exit record takes.
const EXIT_ROOM: usize = 4096;
/// Largest chunk of output read from a pipe at once.
const OUTPUT_CHUNK: usize = 64 << 10;
/// At most this much output is copied between two looks at the signals.
const OUTPUT_BUDGET: usize = 1 << 20;
/// At most this much output is copied once the task has ended: a process
/// that escaped its group and cgroup may hold the pipe and write forever.
const OUTPUT_AFTER_EXIT: usize = 16 << 20;

/// The agent was started as a shim: `argv[1] == "__shim"`.
pub fn is_shim_invocation(args: &[OsString]) -> bool {
    args.get(1).is_some_and(|a| a == SHIM_ARG)
}

/// The user a task runs as, when the shim must switch to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskIds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// The cgroup(s) an alloc runs in, and its limits (0: unlimited).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CgroupPlan {
    None,
    V2 {
        dir: PathBuf,
        memory_bytes: u64,
        cpu_millis: u64,
    },
    V1 {
        memory_dir: Option<PathBuf>,
        cpu_dir: Option<PathBuf>,
        memory_bytes: u64,
        cpu_millis: u64,
    },
}

/// Everything the shim needs, decided by the executor and handed over on
/// the shim's stdin as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimPlan {
    pub alloc: AllocId,
    pub command: Vec<String>,
    /// The task's whole environment.
    pub env: BTreeMap<String, String>,
    /// `None`: run as the shim's own user.
    pub ids: Option<TaskIds>,
    pub cgroup: CgroupPlan,
}

/// The shim's entry point: `args` is the whole argv (`[agent, "__shim", dir]`).
/// Returns the process exit status: 0 once `exit.json` is written, whatever
/// the task's own status.
pub fn main(args: Vec<OsString>) -> i32 {
    let dir = match args.as_slice() {
        [_, arg, dir] if arg == SHIM_ARG => PathBuf::from(dir),
        _ => {
            eprintln!("usage: drover-shim {SHIM_ARG} <alloc-dir>");
            return EXIT_USAGE;
        }
    };
    {
        // A panic is the shim's diagnostic like any other.
        let dir = dir.clone();
        std::panic::set_hook(Box::new(move |info| note(&dir, &info.to_string())));
    }
    // First of all, before the agent could want to stop the task: the
    // signals to forward are blocked (and taken from `sigwait`, with the
    // task's SIGCHLD), and the shim leads a session of its own, so that it
    // outlives the agent and a signal to the agent's group never reaches it.
    let signals = blocked_signals();
    if let Err(e) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), None) {
        note(&dir, &format!("cannot block signals: {e}"));
    }
    if let Err(e) = nix::unistd::setsid() {
        // Only a process that already leads its group (started by hand
        // from a shell script, say) cannot; it still supervises.
        note(&dir, &format!("cannot start a session: {e}"));
    }
    // Holds no directory of the agent's (which might be unmounted later).
    if let Err(e) = std::env::set_current_dir("/") {
        note(&dir, &format!("cannot change to /: {e}"));
    }
    // A task whose exit could not be recorded must not run: the executor
    // would report it failed while it might have succeeded.
    let room = match ExitRoom::take(&dir) {
        Ok(r) => r,
        Err(e) => {
            note(&dir, &format!("cannot take room for {EXIT_FILE}: {e}"));
            return EXIT_NO_ROOM;
        }
    };
    let exit = supervise(&dir, signals);
    tidy(&dir);
    let written = serde_json::to_vec(&exit)
        .map_err(io::Error::from)
        .and_then(|bytes| {
            room.fill(&dir, &bytes).or_else(|_| {
                let _ = fs::remove_file(dir.join(EXIT_RESERVED));
                write_atomic(&dir.join(EXIT_FILE), &bytes)
            })
        });
    match written {
        Ok(()) => 0,
        Err(e) => {
            note(&dir, &format!("cannot write {EXIT_FILE}: {e}"));
            EXIT_SOFTWARE
        }
    }
}

/// The room for `exit.json`, taken before the task starts: a file of
/// [`EXIT_ROOM`] bytes, whose blocks (or tmpfs pages) are then allocated,
/// so that overwriting them later needs none, however full the disk is.
#[derive(Debug)]
struct ExitRoom {
    file: File,
    path: PathBuf,
}

impl ExitRoom {
    fn take(dir: &Path) -> io::Result<ExitRoom> {
        let path = dir.join(EXIT_RESERVED);
        let taken = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(&[b' '; EXIT_ROOM])?;
                Ok(file)
            });
        match taken {
            Ok(file) => Ok(ExitRoom { file, path }),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Writes `bytes` into the room, durably, and renames it `exit.json`.
    fn fill(self, dir: &Path, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, 0)?;
        self.file.set_len(bytes.len() as u64)?;
        self.file.sync_all()?;
        fs::rename(&self.path, dir.join(EXIT_FILE))?;
        sync_dir(dir)
    }
}

/// Appends one line to the alloc's `shim.log` (created by the first).
fn note(dir: &Path, message: &str) {
    let line = format!("drover shim: {message}\n");
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(SHIM_LOG))
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if written.is_err() {
        let _ = io::stderr().write_all(line.as_bytes());
    }
}

/// Removes what a finished task left empty: its log files and its work
/// dir. Before `exit.json`, so that a finished alloc's dir no longer
/// changes (and a `/bin/true` leaves nothing but its exit record).
fn tidy(dir: &Path) {
    for log in [STDOUT_LOG, STDERR_LOG] {
        let path = dir.join(log);
        if fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            let _ = fs::remove_file(&path);
        }
    }
    // Fails, as it should, when the task left files there.
    let _ = fs::remove_dir(dir.join(WORK_DIR));
}

/// What the shim blocks from its first instruction (it is started with
/// them blocked): the signals it forwards, and SIGCHLD, which tells it the
/// task has exited.
pub(crate) fn blocked_signals() -> SigSet {
    let mut set = forwarded_signals();
    set.add(Signal::SIGCHLD);
    set
}

/// The signals the shim forwards to the task.
fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        set.add(s);
    }
    set
}

fn supervise(dir: &Path, signals: SigSet) -> ExitRecord {
    // The agent writes the plan and closes its end; an agent that died
    // before it finished leaves a plan that does not parse, and the task
    // is not run.
    let plan: ShimPlan = match serde_json::from_reader(io::stdin().lock()) {
        Ok(p) => p,
        Err(e) => return ExitRecord::failed(format!("no launch plan on stdin: {e}")),
    };
    let Some((program, args)) = plan.command.split_first() else {
        return ExitRecord::failed("empty command");
    };
    let cgroup = match Cgroup::setup(&plan.cgroup) {
        Ok(c) => c,
        Err(e) => return ExitRecord::failed(format!("cannot set up the cgroup: {e}")),
    };
    let (stdout, stderr) = match (
        LogSink::open(&dir.join(STDOUT_LOG)),
        LogSink::open(&dir.join(STDERR_LOG)),
    ) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            cgroup.cleanup();
            return ExitRecord::failed(format!("cannot open the log files: {e}"));
        }
    };
    let (pipes, ends) = match (output_pipe(), output_pipe()) {
        (Ok((out_r, out_w)), Ok((err_r, err_w))) => ([out_r, err_r], [out_w, err_w]),
        (Err(e), _) | (_, Err(e)) => {
            cgroup.cleanup();
            return ExitRecord::failed(format!("cannot make the output pipes: {e}"));
        }
    };
    // Made before the task starts: signals sent meanwhile stay pending
    // (they are blocked) and are read from it all the same.
    let signal_fd =
        match SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
            Ok(fd) => fd,
            Err(e) => {
                cgroup.cleanup();
                return ExitRecord::failed(format!("cannot watch signals: {e}"));
            }
        };
    let procs = match cgroup.procs_files() {
        Ok(p) => p,
        Err(e) => {
            cgroup.cleanup();
            return ExitRecord::failed(format!("bad cgroup path: {e}"));
        }
    };

    let mut cmd = Command::new(program);
    cgroup.warnings.iter().for_each(|w| note(dir, w));
    let [out_w, err_w] = ends;
    cmd.args(args)
        .env_clear()
        .envs(&plan.env)
        .current_dir(dir.join(WORK_DIR))
        .stdin(Stdio::null())
        .stdout(out_w)
        .stderr(err_w)
        .process_group(0);
    if !plan.env.contains_key("PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    set_child_setup(
        &mut cmd,
        ChildSetup {
            setsid: false,
            mask: Some((SigmaskHow::SIG_SETMASK, SigSet::empty())),
            cgroup_procs: procs,
            ids: plan.ids.as_ref().map(|ids| {
                (
                    Uid::from_raw(ids.uid),
                    Gid::from_raw(ids.gid),
                    ids.groups.iter().map(|g| Gid::from_raw(*g)).collect(),
                )
            }),
            no_new_privs: true,
            die_with_parent: Some(nix::unistd::getpid()),
        },
    );
    let oom_before = cgroup.oom_kills();
    let spawned = cmd.spawn();
    // The write ends go with it: the pipes end when the task's processes
    // have all closed them, not when the shim does.
    drop(cmd);
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            cgroup.cleanup();
            // The words a shell would use: "No such file or directory".
            let why = e
                .raw_os_error()
                .map_or_else(|| e.to_string(), |n| Errno::from_raw(n).desc().to_string());
            return ExitRecord::failed(format!("cannot start {program}: {why}"));
        }
    };
    let Ok(raw_pid) = i32::try_from(child.id()) else {
        return ExitRecord::failed("task pid out of range");
    };
    // The task is reaped with waitid/waitpid below, not through `child`.
    drop(child);
    let pid = Pid::from_raw(raw_pid);
    let mut output = Output {
        streams: pipes.map(|p| Some(File::from(p))),
        sinks: [stdout, stderr],
        buf: vec![0u8; OUTPUT_CHUNK],
    };

    // Forward signals to the task's group and copy its output until it has
    // exited. It is not reaped until the loop is over: the zombie keeps the
    // process group id reserved, so neither a forward nor the kill of what
    // is left of the group below can reach a stranger that reused the id.
    loop {
        let exited = waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG,
        );
        match exited {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
            Ok(_) | Err(_) => break,
        }
        let waited = {
            let mut fds = vec![PollFd::new(signal_fd.as_fd(), PollFlags::POLLIN)];
            fds.extend(
                output
                    .streams
                    .iter()
                    .flatten()
                    .map(|p| PollFd::new(p.as_fd(), PollFlags::POLLIN)),
            );
            poll(&mut fds, PollTimeout::NONE)
        };
        if let Err(e) = waited {
            if e != Errno::EINTR {
                // Not expected (poll fails for bad arguments or no
                // memory); the task is still watched, only less promptly.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        while let Ok(Some(info)) = signal_fd.read_signal() {
            let Some(sig) = i32::try_from(info.ssi_signo)
                .ok()
                .and_then(|n| Signal::try_from(n).ok())
            else {
                continue;
            };
            match sig {
                Signal::SIGCHLD => {}
                Signal::SIGUSR1 => {
                    let _ = killpg(pid, Signal::SIGKILL);
                }
                sig => {
                    let _ = killpg(pid, sig);
                }
            }
        }
        output.copy(OUTPUT_BUDGET);
    }
    let _ = killpg(pid, Signal::SIGKILL);
    cgroup.kill_all();
    let status = loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    // What the task's processes wrote before they died is in the pipes.
    output.copy(OUTPUT_AFTER_EXIT);
    let log_cuts = output.sinks.iter().map(LogSink::cuts).sum();
    drop(output);
    let oom_killed = matches!((oom_before, cgroup.oom_kills()), (Some(a), Some(b)) if b > a);
    cgroup.cleanup();

    let mut exit = ExitRecord {
        exit_code: None,
        signal: None,
        finished_at_unix_ms: now_unix_ms(),
        message: None,
        oom_killed,
        log_cuts,
    };
    match status {
        Ok(WaitStatus::Exited(_, code)) => exit.exit_code = Some(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => exit.signal = Some(sig as i32),
        Ok(other) => exit.message = Some(format!("unexpected wait status {other:?}")),
        Err(e) => exit.message = Some(format!("cannot wait for the task: {e}")),
    }
    if oom_killed {
        exit.message = Some("out of memory: the cgroup's memory limit was reached".into());
    }
    exit
}

/// The task's stdout and stderr on their way to the logs.
#[derive(Debug)]
struct Output {
    /// The read ends of the pipes; `None` once at their end.
    streams: [Option<File>; 2],
    sinks: [LogSink; 2],
    buf: Vec<u8>,
}

impl Output {
    /// Copies what the pipes hold, up to `budget` bytes from each.
    fn copy(&mut self, budget: usize) {
        for (stream, sink) in self.streams.iter_mut().zip(self.sinks.iter_mut()) {
            if let Some(pipe) = stream {
                if !pump(pipe, sink, &mut self.buf, budget) {
                    *stream = None;
                }
            }
        }
    }
}

/// A pipe for one output stream: the shim's read end non-blocking (it
/// reads what is there and goes back to `poll`), the task's write end
/// blocking, as a task expects its stdout to be. Both close-on-exec: the
/// write end becomes the task's fd 1 or 2 (which clears the flag there).
fn output_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    Ok((read, write))
}

/// What a child does between fork and exec. Plain data prepared by the
/// parent, so that the child only makes system calls.
#[derive(Debug)]
pub(crate) struct ChildSetup {
    /// Start a new session (and process group) led by the child.
    pub setsid: bool,
    pub mask: Option<(SigmaskHow, SigSet)>,
    /// `cgroup.procs` files to join (by writing "0", i.e. "this process").
    pub cgroup_procs: Vec<CString>,
    /// Switch to this uid, gid and supplementary groups.
    pub ids: Option<(Uid, Gid, Vec<Gid>)>,
    pub no_new_privs: bool,
    /// SIGKILL the child if its parent (the shim) dies: a task must never
    /// outlive the process that records its exit, or a restarted agent would
    /// rerun an attempt while the old one still runs. Holds the parent's
    /// pid, to check it did not die before the signal was set.
    pub die_with_parent: Option<nix::unistd::Pid>,
}

impl ChildSetup {
    fn run(&self) -> io::Result<()> {
        if self.setsid {
            nix::unistd::setsid()?;
        }
        if let Some((how, set)) = &self.mask {
            sigprocmask(*how, Some(set), None)?;
        }
        for procs in &self.cgroup_procs {
            let fd = open(
                procs.as_c_str(),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            nix::unistd::write(&fd, b"0")?;
        }
        if let Some((uid, gid, groups)) = &self.ids {
            nix::unistd::setgroups(groups)?;
            nix::unistd::setgid(*gid)?;
            nix::unistd::setuid(*uid)?;
        }
        if self.no_new_privs {
            nix::sys::prctl::set_no_new_privs()?;
        }
        // After the uid switch, which clears the parent-death signal.
        if let Some(parent) = self.die_with_parent {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
            // The shim may have died before the line above: then the
            // parent is already someone else.
            if nix::unistd::getppid() != parent {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
        }
        Ok(())
    }
}

/// Installs `setup` to run in the child between fork and exec.
#[allow(unsafe_code)]
pub(crate) fn set_child_setup(cmd: &mut Command, setup: ChildSetup) {
    // SAFETY: the closure runs in the forked child of a possibly
    // multi-threaded parent, where only async-signal-safe functions may be
    // called. `ChildSetup::run` only reads data prepared by the parent
    // (C strings, a sigset, id lists) and calls setsid, sigprocmask, open,
    // write, close, setgroups, setgid, setuid, prctl and getppid — all plain system
    // calls; it allocates nothing (nix errors convert to `io::Error` as raw
    // OS errors, without allocating) and takes no locks.
    unsafe {
        cmd.pre_exec(move || setup.run());
    }
}

/// The cgroup directories of one alloc.
#[derive(Debug, Default)]
struct Cgroup {
    /// What could not be set up, the task runs all the same (for `shim.log`).
    warnings: Vec<String>,
    /// The directories the task joins (one for v2; memory and/or cpu for v1).
    dirs: Vec<PathBuf>,
    /// Where the OOM kill counter is read: `(file, key)`.
    oom_file: Option<PathBuf>,
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

impl Cgroup {
    fn setup(plan: &CgroupPlan) -> io::Result<Cgroup> {
        let mut cg = Cgroup::default();
        match plan {
            CgroupPlan::None => {}
            CgroupPlan::V2 {
                dir,
                memory_bytes,
                cpu_millis,
            } => {
                fs::create_dir_all(dir)?;
                cg.dirs.push(dir.clone());
                let mem = if *memory_bytes > 0 {
                    memory_bytes.to_string()
                } else {
                    "max".into()
                };
                write_file(&dir.join("memory.max"), &mem)?;
                if *memory_bytes > 0 {
                    // No swap: over the limit means the OOM killer, not thrashing.
                    let _ = fs::write(dir.join("memory.swap.max"), "0");
                }
                let quota = if *cpu_millis > 0 {
                    (cpu_millis * 100).max(1000).to_string()
                } else {
                    "max".into()
                };
                // Absent when the cpu controller could not be enabled.
                let cpu_max = dir.join("cpu.max");
                if cpu_max.exists() {
                    write_file(&cpu_max, &format!("{quota} 100000"))?;
                } else if *cpu_millis > 0 {
                    cg.warnings
                        .push("no cpu controller; the CPU limit is not enforced".into());
                }
                cg.oom_file = Some(dir.join("memory.events"));
            }
            CgroupPlan::V1 {
                memory_dir,
                cpu_dir,
                memory_bytes,
                cpu_millis,
            } => {
                if let Some(dir) = memory_dir {
                    fs::create_dir_all(dir)?;
                    cg.dirs.push(dir.clone());
                    let mem = if *memory_bytes > 0 {
                        memory_bytes.to_string()
                    } else {
                        "-1".into()
                    };
                    write_file(&dir.join("memory.limit_in_bytes"), &mem)?;
                    // Memory + swap at the same limit: no swapping past it.
                    // Absent when swap accounting is off.
                    let _ = fs::write(dir.join("memory.memsw.limit_in_bytes"), &mem);
                    cg.oom_file = Some(dir.join("memory.oom_control"));
                }
                if let Some(dir) = cpu_dir {
                    fs::create_dir_all(dir)?;
                    cg.dirs.push(dir.clone());
                    write_file(&dir.join("cpu.cfs_period_us"), "100000")?;
                    let quota = if *cpu_millis > 0 {
                        (cpu_millis * 100).max(1000).to_string()
                    } else {
                        "-1".into()
                    };
                    write_file(&dir.join("cpu.cfs_quota_us"), &quota)?;
                }
            }
        }
        Ok(cg)
    }

    fn procs_files(&self) -> io::Result<Vec<CString>> {
        use std::os::unix::ffi::OsStrExt;
        self.dirs
            .iter()
            .map(|d| {
                CString::new(d.join("cgroup.procs").as_os_str().as_bytes())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
            })
            .collect()
    }

    /// The cgroup's OOM kill count (`oom_kill` in `memory.events` or
    /// `memory.oom_control`), when the kernel reports it.
    fn oom_kills(&self) -> Option<u64> {
        let text = fs::read_to_string(self.oom_file.as_ref()?).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == "oom_kill").then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// SIGKILLs every process left in the cgroup (those that left the task's
    /// process group with setsid/setpgid), a bounded number of rounds.
    fn kill_all(&self) {
        let Some(dir) = self.dirs.first() else { return };
        for _ in 0..50 {
            let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) else {
                return;
            };
            // Zombies (the reaped-later task leader) may still be listed.
            let pids: Vec<i32> = text
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .filter(|p| matches!(proc_stat(*p), Some(s) if s.state != 'Z' && s.state != 'X'))
                .collect();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Removes the cgroup directories (best effort: killed processes may take
    /// a moment to leave).
    fn cleanup(&self) {
        for dir in &self.dirs {
            for _ in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }
}
