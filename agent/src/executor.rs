//! The task executor: launches each alloc under a [shim](crate::shim),
//! stops it, notices its exit, and keeps its records in
//! [local state](crate::local_state) so that an agent restart re-attaches to
//! running tasks and reports every exit exactly once.
//!
//! The API is synchronous. Everything but starting a shim only reads and
//! updates the executor's books (and `state.json`, once per batch); a
//! launch is split so that a caller holding the executor under a lock
//! starts shims without it: [`Executor::prepare`] under the lock,
//! [`start_all`] outside it, [`Executor::finish`] under it again.
//!
//! - [`Executor::launch`] is idempotent on the alloc id: a known alloc
//!   (running, exited, being started, in memory or only on disk) is never
//!   started again.
//! - [`Executor::stop`] sends SIGTERM to the task's process group (through
//!   the shim) and records a deadline; [`Executor::poll`] sends SIGKILL once
//!   it has passed.
//! - [`Executor::poll`] returns each finished alloc once, across restarts.
//!
//! A full disk under the data dir stops none of this: `state.json` is an
//! index that the alloc dirs can rebuild (see [`crate::local_state`]), so a
//! save that fails leaves the records in memory authoritative, is logged
//! once (and once more when a save works again), counted in
//! `drover_agent_disk_write_errors_total{what="state"}`, and retried by
//! `poll` at most every [`SAVE_RETRY`]. The shims record exits in room they
//! took before their tasks started, and cut a log rather than stop its task.
//!
//! Under systemd the agent's unit needs `KillMode=process`, or stopping the
//! agent kills the shims and their tasks with it.

use std::collections::BTreeSet;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drover_api::AllocId;
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{Pid, Uid, User};

use crate::local_state::{
    alloc_dir, append_finished, proc_stat, read_exit, read_finished, record_from_dir,
    rewrite_finished, shim_alive, write_atomic, AllocRecord, AllocStatus, ExitRecord, Finished,
    LoadOutcome, LocalState, ShimIdentity, StateError, ALLOCS_DIR, EXIT_FILE, REPORTED_FILE,
    SHIM_LOG, WORK_DIR,
};
use crate::metrics::AgentMetrics;
use crate::shim::{self, CgroupPlan, ShimPlan, TaskIds, SHIM_ARG};

/// How often a failed save of `state.json` is retried.
pub const SAVE_RETRY: Duration = Duration::from_secs(1);

/// Default cgroup mount point.
pub const DEFAULT_CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The directory, under each hierarchy, that holds the allocs' cgroups.
pub const CGROUP_PARENT: &str = "drover";

/// How the executor runs tasks.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// Alloc directories and `state.json` live here.
    pub data_dir: PathBuf,
    /// The binary started as `<shim_program> __shim <alloc-dir>`: the agent itself.
    pub shim_program: PathBuf,
    /// The user tasks run as. `None`: the agent's own user.
    pub user: Option<String>,
    /// Allow tasks to run as uid 0.
    pub allow_root: bool,
    /// The grace period of [`Executor::stop`] when none is given.
    pub kill_grace: Duration,
    /// Where cgroups are mounted; `None` disables resource limits.
    pub cgroup_root: Option<PathBuf>,
    /// Reported allocs that left nothing but their exit are kept as a line
    /// of `finished.jsonl`, the newest this many (a launch of one of them
    /// is refused).
    pub max_finished: usize,
}

impl ExecConfig {
    /// Defaults: this binary as the shim, the agent's own user, root refused,
    /// 10 s grace, cgroups under `/sys/fs/cgroup`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ExecConfig {
            data_dir: data_dir.into(),
            shim_program: default_shim_program(),
            user: None,
            allow_root: false,
            kill_grace: Duration::from_secs(10),
            cgroup_root: Some(PathBuf::from(DEFAULT_CGROUP_ROOT)),
            max_finished: DEFAULT_MAX_FINISHED,
        }
    }
}

/// `drover-shim` beside this binary when it is there (small: it starts in
/// a fraction of the time the agent's own binary takes), else this binary,
/// which acts as the shim when started as `<it> __shim <dir>`.
pub fn default_shim_program() -> PathBuf {
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let small = me.with_file_name(SHIM_BINARY);
    if small.is_file() {
        small
    } else {
        me
    }
}

/// Default [`ExecConfig::max_finished`].
pub const DEFAULT_MAX_FINISHED: usize = 10_000;

/// The name of the dedicated shim binary.
pub const SHIM_BINARY: &str = "drover-shim";

/// What to run for one alloc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub alloc: AllocId,
    /// Program and arguments; the program is looked up in the task's `PATH`.
    pub command: Vec<String>,
    /// The job's environment; `DROVER_*` and `CUDA_VISIBLE_DEVICES` are set
    /// by the executor (see `drover_api::protocol::task_env`).
    pub env: BTreeMap<String, String>,
    /// For elastic-sharding jobs: the number of shards (`DROVER_SHARD_COUNT`).
    pub shard_count: Option<u32>,
    /// CPU limit in millicores; 0: none.
    pub cpu_millis: u64,
    /// Memory limit in bytes; 0: none.
    pub memory_bytes: u64,
    /// GPU indexes assigned (`CUDA_VISIBLE_DEVICES`).
    pub gpus: Vec<u32>,
}

/// The result of [`Executor::launch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub alloc: AllocId,
    /// The shim's pid, which is also its process group and session id.
    /// `None` for an alloc whose shim was never recorded.
    pub shim_pid: Option<u32>,
    /// `false`: the alloc was already known and nothing was started.
    pub started: bool,
    /// The alloc has already exited (only when `started` is false).
    pub exited: bool,
    /// The alloc's directory (logs, `work/`).
    pub dir: PathBuf,
}

/// An alloc whose task has ended, as [`Executor::poll`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    pub alloc: AllocId,
    /// The exit status, when the task exited by itself.
    pub exit_code: Option<i32>,
    /// The signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// The cgroup's OOM killer killed one of its processes.
    pub oom_killed: bool,
    /// How many times its output was cut because its log could not be
    /// written (a full disk).
    pub log_cuts: u32,
    pub finished_at_unix_ms: u64,
    /// For people: "exited with status 3", "killed by SIGKILL (out of memory…)".
    pub message: String,
}

impl Exited {
    /// The task exited with status 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Which resource limits this node enforces (for the node's attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limits {
    /// Unified hierarchy; allocs under `<parent>/<alloc>`.
    CgroupV2 { parent: PathBuf },
    /// Legacy hierarchies; allocs under `<memory>/<alloc>`, `<cpu>/<alloc>`.
    CgroupV1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
    /// No cgroup is writable: tasks run without limits.
    None,
}

impl Limits {
    /// `cgroup-v2`, `cgroup-v1` or `none`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Limits::CgroupV2 { .. } => "cgroup-v2",
            Limits::CgroupV1 { .. } => "cgroup-v1",
            Limits::None => "none",
        }
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an executor operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("refusing to run tasks as root ({0}); set a task user, or allow_root: true")]
    RootRefused(String),
    #[error("task user {0:?} does not exist")]
    UnknownUser(String),
    #[error("cannot run tasks as {user:?}: {reason}")]
    CannotSwitchUser { user: String, reason: String },
    #[error("invalid launch spec for {alloc}: {reason}")]
    InvalidSpec { alloc: AllocId, reason: String },
    #[error("unknown alloc {0}")]
    UnknownAlloc(AllocId),
    #[error("alloc {0} is still running")]
    StillRunning(AllocId),
    #[error("cannot start {program}: {reason}")]
    CannotStart { program: String, reason: String },
    #[error("cannot start the shim {program} for {alloc}: {source}")]
    Spawn {
        alloc: AllocId,
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExecError + 'a {
    move |source| ExecError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What is only known while this executor lives.
#[derive(Debug, Default)]
struct Live {
    /// The shim, when this executor started it (to reap it).
    child: Option<Pid>,
    /// When SIGKILL is due, after a stop.
    kill_at: Option<Instant>,
    killed: bool,
}

/// Launches, stops and watches allocs. See the module doc.
#[derive(Debug)]
pub struct Executor {
    cfg: ExecConfig,
    ids: Option<TaskIds>,
    limits: Limits,
    state: LocalState,
    live: HashMap<AllocId, Live>,
    load_outcome: LoadOutcome,
    /// Exits `poll` has returned but the agent has not yet acknowledged
    /// (see [`Executor::ack`]); not returned again by this process.
    surfaced: BTreeSet<AllocId>,
    /// `finished.jsonl` as in memory, oldest first, and its ids.
    finished: Vec<Finished>,
    finished_ids: BTreeSet<AllocId>,
    /// Changed since `state.json` was last saved.
    dirty: bool,
    /// The last save failed: when the last attempt was.
    save_failed_at: Option<Instant>,
    /// Failed writes of the executor's own files, before `metrics` was set.
    write_errors: u64,
    metrics: Option<AgentMetrics>,
    /// Prepared and not yet finished: being started outside the executor.
    starting: BTreeSet<AllocId>,
}

impl Executor {
    /// Checks the task user, finds the usable cgroups, loads the records,
    /// re-attaches to live shims and picks up exits that happened meanwhile.
    pub fn open(cfg: ExecConfig) -> Result<Self, ExecError> {
        let ids = resolve_user(cfg.user.as_deref(), cfg.allow_root)?;
        let allocs = cfg.data_dir.join(ALLOCS_DIR);
        fs::create_dir_all(&allocs).map_err(io_err("cannot create", &allocs))?;
        let limits = match &cfg.cgroup_root {
            Some(root) => detect_limits(root),
            None => Limits::None,
        };
        let (mut state, load_outcome) = LocalState::load(&cfg.data_dir)?;
        if let LoadOutcome::Recovered { reason } = &load_outcome {
            tracing::warn!(%reason, "executor state rebuilt from the alloc directories");
        }
        let data_dir = cfg.data_dir.clone();
        let finished = read_finished(&cfg.data_dir);
        let finished_ids: BTreeSet<AllocId> = finished.iter().map(|f| f.alloc.clone()).collect();
        // Acknowledged after the state file was last saved (the save failed
        // on a full disk, or the agent died first): the master has these
        // exits, and the marks in the data dir say so.
        let acked: Vec<AllocId> = state
            .records()
            .filter(|r| {
                finished_ids.contains(&r.alloc)
                    || alloc_dir(&data_dir, &r.alloc).join(REPORTED_FILE).exists()
            })
            .map(|r| r.alloc.clone())
            .collect();
        for alloc in &acked {
            state.remove(alloc);
        }
        for rec in state.records_mut() {
            if rec.status != AllocStatus::Running {
                continue;
            }
            let dir = alloc_dir(&data_dir, &rec.alloc);
            // Liveness before exit.json: the shim writes it before exiting.
            let alive = rec.shim.as_ref().map(shim_alive);
            if let Some(exit) = read_exit(&dir) {
                rec.status = AllocStatus::Exited { exit };
                continue;
            }
            match alive {
                Some(true) => {}
                Some(false) => {
                    rec.status = AllocStatus::Exited {
                        exit: ExitRecord::failed(
                            "the shim died without recording the exit (found at agent start)",
                        ),
                    }
                }
                None => {
                    // The launch was cut short between starting the shim and
                    // recording it: look for it, so it is neither lost nor rerun.
                    rec.shim = find_shim_by_cmdline(&dir);
                    if rec.shim.is_none() {
                        rec.status = AllocStatus::Exited {
                            exit: read_exit(&dir).unwrap_or_else(|| {
                                ExitRecord::failed(
                                    "the agent stopped while launching this alloc; it was not run",
                                )
                            }),
                        }
                    }
                }
            }
        }
        let mut executor = Executor {
            cfg,
            ids,
            limits,
            state,
            live: HashMap::new(),
            load_outcome,
            surfaced: BTreeSet::new(),
            finished,
            finished_ids,
            dirty: false,
            save_failed_at: None,
            write_errors: 0,
            metrics: None,
            starting: BTreeSet::new(),
        };
        // An agent restarted on a full disk still re-attaches to its tasks.
        executor.save();
        Ok(executor)
    }

    /// Where failed writes of the executor's own files are counted
    /// (`drover_agent_disk_write_errors_total{what="state"}`), those before
    /// this call included.
    pub fn set_metrics(&mut self, metrics: AgentMetrics) {
        metrics.count_disk_write_errors("state", std::mem::take(&mut self.write_errors));
        self.metrics = Some(metrics);
    }

    fn count_write_error(&mut self) {
        match &self.metrics {
            Some(m) => m.count_disk_write_errors("state", 1),
            None => self.write_errors += 1,
        }
    }

    /// Whether `state.json` holds every change made so far.
    pub fn is_saved(&self) -> bool {
        !self.dirty
    }

    /// Saves `state.json` now. A failure is not an error of the operation
    /// that changed the state: the records in memory stay authoritative and
    /// the save is retried (by `flush` and `poll`). Logged when saving
    /// starts failing and when it works again, not at each attempt.
    fn save(&mut self) {
        self.dirty = true;
        match self.state.save() {
            Ok(()) => {
                self.dirty = false;
                if self.save_failed_at.take().is_some() {
                    tracing::info!("executor state saved again");
                }
            }
            Err(e) => {
                self.count_write_error();
                if self.save_failed_at.is_none() {
                    tracing::warn!(error = %e, retry = ?SAVE_RETRY, "cannot save the executor state; keeping it in memory and retrying (tasks keep running, exits are still reported)");
                }
                self.save_failed_at = Some(Instant::now());
            }
        }
    }

    /// Saves `state.json` if it has changed, unless a save failed less
    /// than [`SAVE_RETRY`] ago.
    fn retry_save(&mut self) {
        if self.dirty
            && self
                .save_failed_at
                .is_none_or(|t| t.elapsed() >= SAVE_RETRY)
        {
            self.save();
        }
    }

    /// The resource limits this node enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How the records were loaded by `open`.
    pub fn load_outcome(&self) -> &LoadOutcome {
        &self.load_outcome
    }

    /// Where an alloc's files live.
    pub fn alloc_dir(&self, alloc: &AllocId) -> PathBuf {
        alloc_dir(&self.cfg.data_dir, alloc)
    }

    /// Starts the alloc under a new shim, or returns what is known of it.
    /// If the shim cannot be started the alloc is recorded as failed (and
    /// reported by `poll`) and an error is returned; it is not retried.
    /// [`Executor::prepare`], [`Prepared::start`] and [`Executor::finish`]
    /// in one: a caller with many to start runs the middle step without
    /// the executor, several at once ([`start_all`]).
    pub fn launch(&mut self, spec: LaunchSpec) -> Result<Launch, ExecError> {
        match self.prepare(spec)? {
            Prepare::Known(launch) => Ok(launch),
            Prepare::Start(prepared) => self.finish(prepared.start()),
        }
    }

    /// The part of a launch that needs the executor's books: is the alloc
    /// known (running, exited, finished, or being started right now)? If
    /// not, it is marked as being started until [`Executor::finish`].
    pub fn prepare(&mut self, spec: LaunchSpec) -> Result<Prepare, ExecError> {
        if let Some(rec) = self.state.get(&spec.alloc) {
            return Ok(Prepare::Known(self.existing(rec)));
        }
        let finished = self.finished_ids.contains(&spec.alloc);
        if finished || self.starting.contains(&spec.alloc) {
            return Ok(Prepare::Known(Launch {
                dir: self.alloc_dir(&spec.alloc),
                alloc: spec.alloc,
                shim_pid: None,
                started: false,
                exited: finished,
            }));
        }
        validate(&spec)?;
        let plan = ShimPlan {
            alloc: spec.alloc.clone(),
            command: spec.command.clone(),
            env: drover_api::protocol::task_env(
                &spec.alloc,
                spec.shard_count,
                &spec.gpus,
                &spec.env,
            ),
            ids: self.ids.clone(),
            cgroup: self.cgroup_plan(&spec),
        };
        self.starting.insert(spec.alloc.clone());
        Ok(Prepare::Start(Box::new(Prepared {
            dir: self.alloc_dir(&spec.alloc),
            program: self.cfg.shim_program.clone(),
            owner: self.ids.as_ref().map(|ids| (ids.uid, ids.gid)),
            plan,
            spec,
        })))
    }

    /// Books what [`Prepared::start`] did: a started shim is watched from
    /// now on, a failure after the alloc's directory was claimed is
    /// recorded (and reported by `poll`) and returned as the error.
    pub fn finish(&mut self, started: Started) -> Result<Launch, ExecError> {
        let Started { prepared, outcome } = started;
        let alloc = prepared.spec.alloc;
        self.starting.remove(&alloc);
        match outcome {
            Outcome::Spawned { child, id } => {
                self.live.entry(alloc.clone()).or_default().child = Some(child);
                // Not saved here but by `flush`, once per batch: an fsync per
                // launch capped a node at a few dozen launches a second, and
                // a shim started just before a crash is found by its
                // command line (see `open`).
                self.dirty = true;
                self.state.insert(AllocRecord {
                    alloc: alloc.clone(),
                    shim: Some(id),
                    status: AllocStatus::Running,
                    reported: false,
                });
                Ok(Launch {
                    alloc,
                    shim_pid: u32::try_from(id.pid).ok(),
                    started: true,
                    exited: false,
                    dir: prepared.dir,
                })
            }
            Outcome::Claimed => {
                let rec = record_from_dir(&prepared.dir, alloc);
                let launch = self.existing(&rec);
                self.state.insert(rec);
                self.save();
                Ok(launch)
            }
            Outcome::Unclaimed(err) => Err(err),
            Outcome::Failed(err) => {
                self.state.insert(AllocRecord {
                    alloc,
                    shim: None,
                    status: AllocStatus::Exited {
                        exit: ExitRecord::failed(err.to_string()),
                    },
                    reported: false,
                });
                self.save();
                Err(err)
            }
        }
    }

    /// Saves `state.json` if something changed since it was last saved:
    /// once after a batch of launches. A save that fails is logged and
    /// retried later (see the module doc); [`Executor::is_saved`] says
    /// whether it is done.
    pub fn flush(&mut self) {
        self.retry_save();
    }

    fn existing(&self, rec: &AllocRecord) -> Launch {
        Launch {
            alloc: rec.alloc.clone(),
            shim_pid: rec.shim.and_then(|s| u32::try_from(s.pid).ok()),
            started: false,
            exited: matches!(rec.status, AllocStatus::Exited { .. }),
            dir: self.alloc_dir(&rec.alloc),
        }
    }

    /// The alloc's cgroup directory name under each hierarchy's parent.
    fn cgroup_dir_name(&self, alloc: &AllocId) -> String {
        // Alloc ids are unique in a cluster, but several agents may share a
        // machine (tests, `drover dev --agents N`): the data dir tells them apart.
        let agent = crate::local_state::fnv1a64(self.cfg.data_dir.as_os_str().as_encoded_bytes());
        format!("{:08x}_{}", agent as u32, cgroup_name(alloc))
    }

    /// Removes the cgroups of an alloc whose shim died without cleaning up
    /// (its task died with it). Best effort: a cgroup still holding a
    /// process cannot be removed and stays for the next attempt at GC.
    fn remove_cgroups(&self, alloc: &AllocId) {
        let name = self.cgroup_dir_name(alloc);
        let parents: Vec<&PathBuf> = match &self.limits {
            Limits::None => vec![],
            Limits::CgroupV2 { parent } => vec![parent],
            Limits::CgroupV1 { memory, cpu } => memory.iter().chain(cpu.iter()).collect(),
        };
        for parent in parents {
            let dir = parent.join(&name);
            if dir.exists() {
                if let Err(e) = fs::remove_dir(&dir) {
                    tracing::debug!(dir = %dir.display(), error = %e, "cgroup not removed");
                }
            }
        }
    }

    fn cgroup_plan(&self, spec: &LaunchSpec) -> CgroupPlan {
        let name = self.cgroup_dir_name(&spec.alloc);
        match &self.limits {
            Limits::None => CgroupPlan::None,
            Limits::CgroupV2 { parent } => CgroupPlan::V2 {
                dir: parent.join(&name),
                memory_bytes: spec.memory_bytes,
                cpu_millis: spec.cpu_millis,
            },
            Limits::CgroupV1 { memory, cpu } => CgroupPlan::V1 {
                memory_dir: memory.as_ref().map(|m| m.join(&name)),
                cpu_dir: cpu.as_ref().map(|c| c.join(&name)),
                memory_bytes: spec.memory_bytes,
                cpu_millis: spec.cpu_millis,
            },
        }
    }

    /// Records an alloc the master stopped before this node started it, as
    /// ended with `message`, so that its end is reported like any exit (at
    /// least once, across restarts) and it can never start. False, changing
    /// nothing, if this node already knows the alloc or ever had it.
    pub fn record_unstarted(&mut self, alloc: &AllocId, message: &str) -> Result<bool, ExecError> {
        if self.state.get(alloc).is_some() {
            return Ok(false);
        }
        let dir = self.alloc_dir(alloc);
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        }
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err("cannot create", &dir)(e)),
        }
        self.state.insert(AllocRecord {
            alloc: alloc.clone(),
            shim: None,
            status: AllocStatus::Exited {
                exit: ExitRecord::failed(message),
            },
            reported: false,
        });
        self.save();
        Ok(true)
    }

    /// Asks the alloc's task to stop: SIGTERM to its process group now,
    /// SIGKILL from `poll` once `grace` (default: the config's `kill_grace`)
    /// has passed. Stopping an exited alloc does nothing.
    pub fn stop(&mut self, alloc: &AllocId, grace: Option<Duration>) -> Result<(), ExecError> {
        let rec = self
            .state
            .get(alloc)
            .ok_or_else(|| ExecError::UnknownAlloc(alloc.clone()))?;
        let (AllocStatus::Running, Some(shim)) = (&rec.status, rec.shim) else {
            return Ok(());
        };
        let grace = grace.unwrap_or(self.cfg.kill_grace);
        signal_shim(&shim, Signal::SIGTERM);
        let live = self.live.entry(alloc.clone()).or_default();
        let at = Instant::now() + grace;
        live.kill_at = Some(live.kill_at.map_or(at, |old| old.min(at)));
        if grace.is_zero() && !live.killed {
            signal_shim(&shim, Signal::SIGUSR1);
            live.killed = true;
        }
        Ok(())
    }

    /// Enforces stop deadlines and returns the allocs that have ended since
    /// the last call. An exit is returned once per process until it is
    /// acknowledged with [`Executor::ack`]; an agent that dies before
    /// acknowledging gets it again after its restart (at least once, never
    /// lost).
    pub fn poll(&mut self) -> Vec<Exited> {
        let now = Instant::now();
        let data_dir = self.cfg.data_dir.clone();
        let mut out = Vec::new();
        let mut orphaned_cgroups = Vec::new();
        for rec in self.state.records_mut() {
            if let (AllocStatus::Running, Some(shim)) = (&rec.status, rec.shim) {
                let live = self.live.get_mut(&rec.alloc);
                // How the shim ended, when it was this process's child.
                let mut shim_status = None;
                let alive = match live {
                    Some(live) => {
                        if live.kill_at.is_some_and(|t| t <= now) && !live.killed {
                            signal_shim(&shim, Signal::SIGUSR1);
                            live.killed = true;
                        }
                        match live
                            .child
                            .map(|pid| waitpid(pid, Some(WaitPidFlag::WNOHANG)))
                        {
                            Some(Ok(WaitStatus::StillAlive)) => true,
                            Some(Ok(status)) => {
                                live.child = None;
                                shim_status = Some(status);
                                false
                            }
                            Some(Err(_)) | None => shim_alive(&shim),
                        }
                    }
                    None => shim_alive(&shim),
                };
                // A live shim is still at work (it writes exit.json, then
                // cleans up, then exits): only a dead one's file is read, so
                // a poll costs a waitpid per task, not a file read.
                if alive {
                    continue;
                }
                // Read exit.json after the liveness check: the shim writes it
                // before exiting, so a dead shim without it never wrote it.
                let dir = alloc_dir(&data_dir, &rec.alloc);
                match read_exit(&dir) {
                    Some(exit) => rec.status = AllocStatus::Exited { exit },
                    None => {
                        let log = fs::read_to_string(dir.join(SHIM_LOG)).unwrap_or_default();
                        let mut msg = match shim_status {
                            Some(WaitStatus::Exited(_, shim::EXIT_NO_ROOM)) => String::from(
                                "not started: no room on the data dir's disk to record its exit",
                            ),
                            Some(WaitStatus::Exited(_, shim::EXIT_SOFTWARE)) => String::from(
                                "the shim could not record the exit (is the data dir's disk full?)",
                            ),
                            _ => String::from("the shim died without recording the exit"),
                        };
                        if !log.trim().is_empty() {
                            msg.push_str(": ");
                            msg.push_str(log.trim());
                        }
                        rec.status = AllocStatus::Exited {
                            exit: ExitRecord::failed(msg),
                        };
                        orphaned_cgroups.push(rec.alloc.clone());
                    }
                }
                self.live.remove(&rec.alloc);
            }
            if let AllocStatus::Exited { exit } = &rec.status {
                if !rec.reported && self.surfaced.insert(rec.alloc.clone()) {
                    out.push(exited(&rec.alloc, exit));
                }
            }
        }
        // Not saved: the exit is durable in exit.json (the shim syncs it),
        // and a restarted agent reads it for every record still "running".
        for alloc in orphaned_cgroups {
            self.remove_cgroups(&alloc);
        }
        if self.save_failed_at.is_some() {
            self.retry_save();
        }
        out
    }

    /// Records that these exits reached the master, so that they are never
    /// reported again, also across restarts.
    ///
    /// The record leaves `state.json` (which so holds only what is live or
    /// not yet reported, and saving it stays cheap however many allocs this
    /// node has run). What a later launch of the same id finds, and refuses
    /// to run again, is `reported.json` in the alloc dir; or, for an alloc
    /// that left nothing else (no output, nothing in its work dir), a line
    /// of `finished.jsonl`, and no directory at all.
    pub fn ack(&mut self, allocs: &[AllocId]) {
        let wanted: BTreeSet<&AllocId> = allocs.iter().collect();
        let done: Vec<(AllocId, ExitRecord)> = self
            .state
            .records()
            .filter(|r| wanted.contains(&r.alloc) && !r.reported)
            .filter_map(|r| match &r.status {
                AllocStatus::Exited { exit } => Some((r.alloc.clone(), exit.clone())),
                AllocStatus::Running => None,
            })
            .collect();
        if done.is_empty() {
            return;
        }
        let mut compacted = Vec::new();
        let mut unmarked = 0;
        for (alloc, exit) in &done {
            let dir = alloc_dir(&self.cfg.data_dir, alloc);
            if holds_only_its_exit(&dir) {
                compacted.push(Finished {
                    alloc: alloc.clone(),
                    exit: exit.clone(),
                });
            } else if !mark_reported(&dir, alloc, exit) {
                unmarked += 1;
            }
        }
        // The lines first: a crash in between leaves a directory and a
        // line, both saying the same. Without the lines (a full disk) the
        // directories stay, marked as the others are: they alone keep
        // these allocs from ever running again.
        if !compacted.is_empty() {
            if let Err(e) = append_finished(&self.cfg.data_dir, &compacted) {
                tracing::warn!(error = %e, "cannot append to the finished allocs; keeping their directories");
                self.count_write_error();
                for f in compacted.drain(..) {
                    let dir = alloc_dir(&self.cfg.data_dir, &f.alloc);
                    if !mark_reported(&dir, &f.alloc, &f.exit) {
                        unmarked += 1;
                    }
                }
            }
        }
        for _ in 0..unmarked {
            self.count_write_error();
        }
        for (alloc, _) in &done {
            self.surfaced.remove(alloc);
            self.live.remove(alloc);
            self.state.remove(alloc);
        }
        if !compacted.is_empty() {
            for f in &compacted {
                let dir = alloc_dir(&self.cfg.data_dir, &f.alloc);
                let _ = fs::remove_file(dir.join(EXIT_FILE));
                let _ = fs::remove_dir(dir.join(WORK_DIR));
                let _ = fs::remove_dir(&dir);
                // The task's index dir, if this was its last attempt here,
                // and the job's, if this was its last task here: empty
                // directories would otherwise pile up, one per job.
                if let Some(index) = dir.parent() {
                    if fs::remove_dir(index).is_ok() {
                        if let Some(job) = index.parent() {
                            let _ = fs::remove_dir(job);
                        }
                    }
                }
                self.finished_ids.insert(f.alloc.clone());
            }
            self.finished.extend(compacted);
            self.trim_finished();
        }
        self.save();
    }

    /// Keeps the newest `max_finished` lines, rewriting the file once it
    /// holds twice that (so that each append costs O(1) on average).
    fn trim_finished(&mut self) {
        let max = self.cfg.max_finished;
        if self.finished.len() <= max.saturating_mul(2).max(1) {
            return;
        }
        let drop = self.finished.len() - max;
        for f in self.finished.drain(..drop) {
            self.finished_ids.remove(&f.alloc);
        }
        if let Err(e) = rewrite_finished(&self.cfg.data_dir, &self.finished) {
            tracing::warn!(error = %e, "cannot rewrite the finished allocs");
            self.count_write_error();
        }
    }

    /// The allocs whose shims are running, with the shim's pid (= its
    /// process group id).
    pub fn running(&self) -> Vec<(AllocId, u32)> {
        self.state
            .records()
            .filter(|r| r.status == AllocStatus::Running)
            .filter_map(|r| Some((r.alloc.clone(), u32::try_from(r.shim?.pid).ok()?)))
            .collect()
    }

    /// The alloc runs, or its exit has not been acknowledged yet.
    pub fn holds(&self, alloc: &AllocId) -> bool {
        self.state.get(alloc).is_some()
    }

    /// Every alloc known, running or not.
    pub fn known(&self) -> Vec<AllocId> {
        self.state.records().map(|r| r.alloc.clone()).collect()
    }

    /// Forgets an ended alloc and deletes its directory (logs included).
    pub fn forget(&mut self, alloc: &AllocId) -> Result<(), ExecError> {
        let rec = self
            .state
            .get(alloc)
            .ok_or_else(|| ExecError::UnknownAlloc(alloc.clone()))?;
        if rec.status == AllocStatus::Running {
            return Err(ExecError::StillRunning(alloc.clone()));
        }
        let dir = self.alloc_dir(alloc);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove", &dir)(e)),
        }
        self.state.remove(alloc);
        self.live.remove(alloc);
        self.save();
        Ok(())
    }
}

fn exited(alloc: &AllocId, exit: &ExitRecord) -> Exited {
    let mut message = match (exit.exit_code, exit.signal) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {sig}"),
        },
        (None, None) => String::new(),
    };
    if let Some(m) = &exit.message {
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(m);
    }
    if message.is_empty() {
        message.push_str("ended without an exit status");
    }
    Exited {
        alloc: alloc.clone(),
        exit_code: exit.exit_code,
        signal: exit.signal,
        oom_killed: exit.oom_killed,
        log_cuts: exit.log_cuts,
        finished_at_unix_ms: exit.finished_at_unix_ms,
        message,
    }
}

/// What [`Executor::prepare`] found.
#[derive(Debug)]
pub enum Prepare {
    /// The alloc is known (or being started): nothing to start.
    Known(Launch),
    /// To be started by [`Prepared::start`], then booked by [`Executor::finish`].
    Start(Box<Prepared>),
}

/// A launch the executor has agreed to: everything starting the shim
/// needs, so that [`Prepared::start`] runs without the executor (and
/// without the lock a caller keeps it under).
#[derive(Debug)]
pub struct Prepared {
    spec: LaunchSpec,
    dir: PathBuf,
    program: PathBuf,
    /// The task user's uid and gid, who owns `work/`.
    owner: Option<(u32, u32)>,
    plan: ShimPlan,
}

/// What [`Prepared::start`] did, for [`Executor::finish`].
#[derive(Debug)]
pub struct Started {
    prepared: Prepared,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    Spawned {
        child: Pid,
        id: ShimIdentity,
    },
    /// The directory was there already: an earlier agent process claimed
    /// the alloc, and what it left there is the record.
    Claimed,
    /// Failed before the alloc's directory was claimed: nothing to record.
    Unclaimed(ExecError),
    /// Failed after claiming it: the alloc is recorded as failed.
    Failed(ExecError),
}

impl Started {
    /// The alloc this launch is for.
    pub fn alloc(&self) -> &AllocId {
        &self.prepared.spec.alloc
    }
}

impl Prepared {
    /// The alloc this launch is for.
    pub fn alloc(&self) -> &AllocId {
        &self.spec.alloc
    }

    /// Claims the alloc's directory and starts its shim (a `posix_spawn`
    /// of the small shim binary) with the launch plan on a pipe.
    pub fn start(self) -> Started {
        let dir = &self.dir;
        if let Some(parent) = dir.parent() {
            if let Err(e) = fs::create_dir_all(parent) {
                let err = io_err("cannot create", parent)(e);
                return self.ended(Outcome::Unclaimed(err));
            }
        }
        // Creating the directory claims the alloc: it is never run twice.
        let outcome = match fs::create_dir(dir) {
            Ok(()) => match check_program(&self.spec).and_then(|()| self.spawn()) {
                Ok((child, id)) => Outcome::Spawned { child, id },
                Err(err) => Outcome::Failed(err),
            },
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Outcome::Claimed,
            Err(e) => Outcome::Unclaimed(io_err("cannot create", dir)(e)),
        };
        self.ended(outcome)
    }

    fn ended(self, outcome: Outcome) -> Started {
        Started {
            prepared: self,
            outcome,
        }
    }

    fn spawn(&self) -> Result<(Pid, ShimIdentity), ExecError> {
        let dir = &self.dir;
        let work = dir.join(WORK_DIR);
        fs::create_dir(&work).map_err(io_err("cannot create", &work))?;
        if let Some((uid, gid)) = self.owner {
            nix::unistd::chown(
                &work,
                Some(Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(gid)),
            )
            .map_err(|e| io_err("cannot chown", &work)(e.into()))?;
        }
        let plan =
            serde_json::to_vec(&self.plan).map_err(|e| io_err("cannot encode", dir)(e.into()))?;
        let (child, plan_pipe) =
            spawn_shim(&self.program, dir).map_err(|errno| ExecError::Spawn {
                alloc: self.spec.alloc.clone(),
                program: self.program.clone(),
                source: io::Error::from(errno),
            })?;
        let pid = child.as_raw();
        // Until reaped (by `poll`, once `finish` has booked it) the shim is
        // at worst a zombie, so its stat is readable here.
        let start_time = proc_stat(pid).map(|s| s.start_time).unwrap_or(0);
        // A shim that died before reading it has recorded nothing; poll
        // finds it dead and reports the alloc failed.
        if let Err(e) = (&plan_pipe).write_all(&plan) {
            tracing::warn!(alloc = %self.spec.alloc, error = %e, "the shim did not take its launch plan");
        }
        Ok((child, ShimIdentity { pid, start_time }))
    }
}

/// Starts a batch of prepared launches on up to as many threads as the
/// machine has cores, and returns them in the order given. A launch is
/// mostly system calls (directories, `posix_spawn`), which do not wait
/// for one another.
pub fn start_all(batch: Vec<Prepared>) -> Vec<Started> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_LAUNCH_THREADS);
    // A thread costs about what a launch does: not worth it for a few.
    if threads < 2 || batch.len() < 2 * threads {
        return batch.into_iter().map(Prepared::start).collect();
    }
    let per = batch.len().div_ceil(threads);
    let mut chunks: Vec<Vec<Prepared>> = Vec::with_capacity(threads);
    let mut rest = batch.into_iter();
    loop {
        let chunk: Vec<Prepared> = rest.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        chunks.push(chunk);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                scope.spawn(move || chunk.into_iter().map(Prepared::start).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// At most this many threads start shims at once.
const MAX_LAUNCH_THREADS: usize = 8;

/// Starts `program __shim <dir>` with posix_spawn (vfork semantics): a fork
/// would copy the page tables of the whole agent (in `drover dev`, master
/// and agent together) for every task. It starts with the signals it
/// forwards already blocked, so that a stop sent the moment it exists is
/// queued for it rather than fatal; it starts its own session itself.
/// Its stdin is the read end of a pipe, whose write end is returned for the
/// launch plan; its stdout and stderr are `/dev/null` (it writes what it
/// has to say to `shim.log`).
fn spawn_shim(program: &Path, dir: &Path) -> nix::Result<(Pid, File)> {
    use nix::spawn::{posix_spawn, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::io::AsRawFd;

    let cstr = |bytes: &[u8]| CString::new(bytes).map_err(|_| Errno::EINVAL);
    let null = fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))?;
    // Both ends close-on-exec: the shim gets the read end as its fd 0
    // (dup2 clears the flag), and no other process ever holds either.
    let (plan_in, plan_out) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut actions = PosixSpawnFileActions::init()?;
    actions.add_dup2(plan_in.as_raw_fd(), 0)?;
    actions.add_dup2(null.as_raw_fd(), 1)?;
    actions.add_dup2(null.as_raw_fd(), 2)?;
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_sigmask(&shim::blocked_signals())?;
    // The agent ignores SIGPIPE (as every Rust program does); the shim
    // starts with the default, as a process started by std would.
    let mut default = nix::sys::signal::SigSet::empty();
    default.add(Signal::SIGPIPE);
    attr.set_sigdefault(&default)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )?;
    let args = [
        cstr(program.as_os_str().as_bytes())?,
        cstr(SHIM_ARG.as_bytes())?,
        cstr(dir.as_os_str().as_bytes())?,
    ];
    let env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let pid = posix_spawn(program, &actions, &attr, &args, &env)?;
    Ok((pid, File::from(plan_out)))
}

/// Signals the shim, after checking that its pid still belongs to it.
fn signal_shim(shim: &ShimIdentity, sig: Signal) {
    if matches!(proc_stat(shim.pid), Some(s) if s.start_time == shim.start_time) {
        let _ = kill(Pid::from_raw(shim.pid), sig);
    }
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::from)?;
    write_atomic(path, &bytes)
}

/// Renames the alloc's `exit.json` to `reported.json` (which takes no room
/// on the disk), or writes `reported.json` when the executor recorded the
/// exit itself (a launch that failed, a stop before the start). False,
/// logged, when neither worked.
fn mark_reported(dir: &Path, alloc: &AllocId, exit: &ExitRecord) -> bool {
    match fs::rename(dir.join(EXIT_FILE), dir.join(REPORTED_FILE)) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match write_json(&dir.join(REPORTED_FILE), exit) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(alloc = %alloc, error = %e, "cannot mark an exit reported");
                    false
                }
            }
        }
        Err(e) => {
            tracing::warn!(alloc = %alloc, error = %e, "cannot mark an exit reported");
            false
        }
    }
}

/// The alloc dir holds its `exit.json` (or nothing) and at most an empty
/// work dir: the task left no output and no files.
fn holds_only_its_exit(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().all(|e| {
        let name = e.file_name();
        name == EXIT_FILE
            || (name == WORK_DIR
                && fs::read_dir(e.path()).is_ok_and(|mut inner| inner.next().is_none()))
    })
}

/// Finds out before starting a shim whether the program can be executed at
/// all, so that a command that does not exist fails at once, in one plain
/// message, and is never reported running. A relative path with a `/` is
/// left to the shim: it names a file in the task's work dir, made later.
fn check_program(spec: &LaunchSpec) -> Result<(), ExecError> {
    let Some(program) = spec.command.first() else {
        return Ok(());
    };
    let cannot = |errno: Errno| ExecError::CannotStart {
        program: program.clone(),
        reason: errno.desc().to_string(),
    };
    let executable = |path: &Path| -> Result<(), Errno> {
        let meta = fs::metadata(path)
            .map_err(|e| e.raw_os_error().map_or(Errno::ENOENT, Errno::from_raw))?;
        if meta.is_dir() || meta.permissions().mode() & 0o111 == 0 {
            return Err(Errno::EACCES);
        }
        Ok(())
    };
    if program.starts_with('/') {
        return executable(Path::new(program)).map_err(cannot);
    }
    if program.contains('/') {
        return Ok(());
    }
    let path = spec
        .env
        .get("PATH")
        .map_or(crate::shim::DEFAULT_PATH, String::as_str);
    let found = path
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|d| executable(&Path::new(d).join(program)).is_ok());
    if found {
        Ok(())
    } else {
        Err(ExecError::CannotStart {
            program: program.clone(),
            reason: format!("not found in PATH ({path})"),
        })
    }
}

fn validate(spec: &LaunchSpec) -> Result<(), ExecError> {
    let bad = |reason: &str| {
        Err(ExecError::InvalidSpec {
            alloc: spec.alloc.clone(),
            reason: reason.to_string(),
        })
    };
    if spec.command.first().is_none_or(|p| p.is_empty()) {
        return bad("the command is empty");
    }
    if spec.command.iter().any(|a| a.contains('\0')) {
        return bad("the command contains a NUL byte");
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return bad(&format!("invalid environment variable {k:?}"));
        }
    }
    Ok(())
}

/// `render/3/1` → `render_3_1` (job names have no `_`, so this is unambiguous).
pub fn cgroup_name(alloc: &AllocId) -> String {
    alloc.to_string().replace('/', "_")
}

/// Who tasks run as. `None`: the agent's own user, no switch.
fn resolve_user(user: Option<&str>, allow_root: bool) -> Result<Option<TaskIds>, ExecError> {
    let me = Uid::effective();
    let Some(name) = user else {
        if me.is_root() && !allow_root {
            return Err(ExecError::RootRefused(
                "no task user is configured and the agent runs as root".into(),
            ));
        }
        return Ok(None);
    };
    let u = User::from_name(name)
        .map_err(|e| ExecError::CannotSwitchUser {
            user: name.to_string(),
            reason: e.to_string(),
        })?
        .ok_or_else(|| ExecError::UnknownUser(name.to_string()))?;
    if u.uid.is_root() && !allow_root {
        return Err(ExecError::RootRefused(format!(
            "task user {name:?} is uid 0"
        )));
    }
    if u.uid == me {
        return Ok(None);
    }
    if !me.is_root() {
        return Err(ExecError::CannotSwitchUser {
            user: name.to_string(),
            reason: format!("the agent runs as uid {me}, not root"),
        });
    }
    let groups = std::ffi::CString::new(name)
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, u.gid).ok())
        .unwrap_or_else(|| vec![u.gid]);
    Ok(Some(TaskIds {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
        groups: groups.iter().map(|g| g.as_raw()).collect(),
    }))
}

/// Finds the cgroup hierarchy this agent can use, preparing its `drover`
/// parent: v2 when `<root>/cgroup.controllers` exists and the memory and cpu
/// controllers can be delegated, else v1 `memory` and/or `cpu`, else none.
pub fn detect_limits(root: &Path) -> Limits {
    if root.join("cgroup.controllers").exists() {
        let parent = root.join(CGROUP_PARENT);
        let enable = |controller: &str| {
            fs::write(root.join("cgroup.subtree_control"), controller).is_ok()
                && fs::write(parent.join("cgroup.subtree_control"), controller).is_ok()
        };
        // The memory controller is required; cpu is used when it can be
        // enabled (it cannot while real-time processes sit outside the root).
        if fs::create_dir_all(&parent).is_ok() && enable("+memory") {
            let _ = enable("+cpu");
            return Limits::CgroupV2 { parent };
        }
    }
    let v1 = |controller: &str, probe: &str| {
        let base = root.join(controller);
        if !base.join(probe).exists() {
            return None;
        }
        let parent = base.join(CGROUP_PARENT);
        fs::create_dir_all(&parent).ok()?;
        // Writable: the kernel lets us create (and remove) a child cgroup.
        let test = parent.join(format!(".probe-{}", std::process::id()));
        fs::create_dir(&test).ok()?;
        let _ = fs::remove_dir(&test);
        Some(parent)
    };
    let memory = v1("memory", "memory.limit_in_bytes");
    let cpu = v1("cpu", "cpu.cfs_quota_us");
    if memory.is_none() && cpu.is_none() {
        Limits::None
    } else {
        Limits::CgroupV1 { memory, cpu }
    }
}

/// A running shim for `dir`, found by its command line in `/proc`.
fn find_shim_by_cmdline(dir: &Path) -> Option<ShimIdentity> {
    use std::os::unix::ffi::OsStrExt;
    let want = dir.as_os_str().as_bytes();
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1) == Some(&SHIM_ARG.as_bytes()) && args.get(2) == Some(&want) {
            let stat = proc_stat(pid)?;
            if stat.state != 'Z' {
                return Some(ShimIdentity {
                    pid,
                    start_time: stat.start_time,
                });
            }
        }
    }
    None
}
