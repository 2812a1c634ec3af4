//! `drover-bench soak`: a real `drover-master` and real `drover-agent`s
//! under mixed churn for a given time (submits, stops and purges, agent
//! restarts, node restarts), sampling what could leak: the processes'
//! memory and open files, the store's size and the agents' data dirs.
//! Writes a Markdown section (tables, Mermaid charts, and a verdict per
//! series computed from the samples) for BENCHMARKS.md. Not run in CI.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use drover_api::client::{Client, SpecFormat};
use drover_api::views::JobView;
use drover_api::{JobId, JobType, NodeId, NodeState, TaskState};
use drover_bench::sim::{
    master_binary, memory_of, parse_metrics, raise_fd_limit, MasterMetrics, MasterProcess,
};
use drover_bench::{agent_binary, disk_bytes};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

/// Heartbeats as in the e2e tests, and a short `node_timeout`: each node
/// restart is seen as a node down within seconds.
const HEARTBEAT: Duration = Duration::from_millis(300);
const NODE_TIMEOUT: Duration = Duration::from_secs(3);
/// A series "grows" when its last third's mean exceeds its first third's
/// by more than this share.
const GROWTH_LIMIT: f64 = 0.20;
/// Submissions pause while this many batch jobs are unfinished, so that a
/// slow machine gets a steady load rather than an ever longer queue.
const MAX_BATCH_IN_FLIGHT: usize = 20;
/// Service jobs kept running (each lives 30–90 s, then is stopped).
const MIN_SERVICES: usize = 4;
const REAP_EVERY: Duration = Duration::from_secs(2);
/// Longest an agent may take to stop on SIGTERM or to register.
const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long to churn, e.g. `30m`.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Agents, as nodes `n1`, `n2`, ...
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// Time between samples.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    sample: Duration,
    /// Write the Markdown section here instead of to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Mean time between restarts, which alternate: an agent restart
    /// (SIGTERM, tasks survive), then a node restart (agent and tasks
    /// killed, down, back).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    restart_every: Duration,
    /// The agents' `logs.max_finished`: small, so that a run of minutes
    /// reaches the bound (the default, 10,000, would take hours).
    #[arg(long, default_value_t = 1000)]
    agent_max_finished: usize,
    /// The agents' `logs.retention`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    agent_log_retention: Duration,
    /// Seed of the churn's choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
}

pub async fn run(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.agents > 0, "--agents must be at least 1");
    anyhow::ensure!(!args.sample.is_zero(), "--sample must be more than 0");
    raise_fd_limit()?;
    become_subreaper()?;
    // Now, not at the end: the checkout may move on during a long run.
    let commit = commit();
    let seed = args
        .seed
        .unwrap_or_else(|| unix_ms() ^ u64::from(std::process::id()));
    let mut rng = Rng::new(seed);
    let root = tempfile::Builder::new()
        .prefix("drover-soak-")
        .tempdir()
        .context("temp dir")?;
    // Tasks run as `nobody`: it must get through to the alloc dirs.
    make_dir(root.path())?;
    let mut master = MasterProcess::start_with(&master_binary()?, &master_config())?;
    own(master.pid());
    let client = Arc::new(
        Client::new(vec![master.addr.clone()], None).with_timeout(Duration::from_secs(30)),
    );
    let mut agents = Agents::create(root.path(), &master.addr, &args, Arc::clone(&client))?;
    for i in 0..args.agents {
        agents.start(i, 0).await?;
    }
    eprintln!(
        "soak: master {} (pid {}), {} agents under {}; seed {seed}; churning for {}",
        master.addr,
        master.pid(),
        args.agents,
        root.path().display(),
        humantime::format_duration(args.duration)
    );
    let churn = Arc::new(Churn::default());
    let (stop_tx, stop) = watch::channel(false);
    let submitting = tokio::spawn(submitter(
        Arc::clone(&client),
        Arc::clone(&churn),
        Rng::new(rng.next()),
        stop.clone(),
    ));
    let reaping = tokio::spawn(reaper(
        Arc::clone(&client),
        Arc::clone(&churn),
        stop.clone(),
    ));
    let reaping_orphans = tokio::spawn(orphan_reaper(stop.clone()));
    let probe = Probe {
        master_pid: master.pid(),
        pids: Arc::clone(&agents.pids),
        data_dirs: agents.list.iter().map(Agent::data_dir).collect(),
        root: root.path().to_path_buf(),
    };
    let mut restarting = tokio::spawn(restarter(
        agents,
        Arc::clone(&churn),
        Rng::new(rng.next()),
        args.restart_every,
        stop.clone(),
    ));

    let (samples, ended, restarted) =
        sample_until(&args, &master, &probe, &client, &churn, &mut restarting).await;
    let _ = stop_tx.send(true);
    let _ = submitting.await;
    let _ = reaping.await;
    let metrics = master_totals(&client).await;
    let restarted = match restarted {
        Some(r) => r,
        None => restarting.await,
    };
    let (agents, restart_error) = match restarted {
        Ok((agents, r)) => (Some(agents), r.err()),
        Err(e) => (None, Some(anyhow::anyhow!("the restarter panicked: {e}"))),
    };
    let ended = match restart_error {
        Some(e) => format!("{ended} (the restarts stopped: {e:#})"),
        None => ended,
    };
    let agent_warnings = agents.as_ref().map_or(0, Agents::warning_lines);
    let _ = reaping_orphans.await;
    teardown(agents, root.path(), &mut master);

    let report = Report {
        command: command_line(),
        machine: machine(),
        commit,
        args: &args,
        seed,
        ended,
        churn: churn.totals(),
        errors: churn.first_errors(),
        metrics,
        master_warnings: master.warnings(),
        agent_warnings,
        samples: &samples,
    }
    .render();
    match &args.out {
        Some(path) => {
            fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("soak: report written to {}", path.display());
        }
        None => print!("{report}"),
    }
    Ok(())
}

fn master_config() -> String {
    format!(
        "scheduler:\n  pass_interval: 250ms\n\
         liveness:\n  heartbeat_interval: {}ms\n  node_timeout: {}ms\n  suspect_after_missed: 3\n",
        HEARTBEAT.as_millis(),
        NODE_TIMEOUT.as_millis()
    )
}

type Restarted = Result<(Agents, anyhow::Result<()>), tokio::task::JoinError>;

/// Samples every `--sample` until `--duration` has passed, the restarter
/// gave up, the master died or the run was interrupted; says which (and
/// what the restarter returned, if it did).
async fn sample_until(
    args: &SoakArgs,
    master: &MasterProcess,
    probe: &Probe,
    client: &Client,
    churn: &Churn,
    restarting: &mut tokio::task::JoinHandle<(Agents, anyhow::Result<()>)>,
) -> (Vec<Sample>, String, Option<Restarted>) {
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut next = tokio::time::Instant::now();
    loop {
        let s = probe.sample(start.elapsed(), master, client, churn).await;
        eprintln!("{}", progress_line(&s, &churn.totals()));
        samples.push(s);
        if start.elapsed() >= args.duration {
            return (samples, "ran for its full duration".to_string(), None);
        }
        let secs = start.elapsed().as_secs_f64();
        if !alive(master.pid()) {
            return (
                samples,
                format!("ended early: the master exited after {secs:.0} s"),
                None,
            );
        }
        next += args.sample;
        // The last sample lands on the duration, not up to a period after.
        let until = next.min(tokio::time::Instant::from_std(start + args.duration));
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            r = &mut *restarting => {
                return (samples, format!("ended early, after {secs:.0} s"), Some(r));
            }
            _ = interrupted() => {
                return (samples, format!("ended early: interrupted after {secs:.0} s"), None);
            }
        }
    }
}

/// SIGINT or SIGTERM.
async fn interrupted() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Kills every agent and everything they started, then the master.
fn teardown(agents: Option<Agents>, root: &Path, master: &mut MasterProcess) {
    if let Some(mut agents) = agents {
        for a in &mut agents.list {
            a.kill();
        }
    }
    power_off(root);
    reap_orphans();
    master.quiet();
    let _ = master.stop();
    // Cgroups can only go once their processes are gone.
    for entry in fs::read_dir(root.join("agents"))
        .into_iter()
        .flatten()
        .flatten()
    {
        remove_agent_cgroups(&entry.path().join("data"));
    }
}

/// Counters from the master's `/metrics` worth reporting at the end.
#[derive(Debug, Clone, Copy, Default)]
struct MasterTotals {
    placements: f64,
    node_failures: f64,
    compactions: f64,
    reschedules: f64,
}

async fn master_totals(client: &Client) -> Option<MasterTotals> {
    let reply = client.raw("GET", "/metrics", None).await.ok()?;
    let text = String::from_utf8_lossy(&reply.body);
    let m = MasterMetrics::from_text(&text);
    let all = parse_metrics(&text);
    let sum = |name: &str| -> f64 {
        all.iter()
            .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    };
    Some(MasterTotals {
        placements: m.placements,
        node_failures: m.node_failures,
        compactions: sum("drover_store_compactions_total"),
        reschedules: sum("drover_task_reschedules_total"),
    })
}

// ---------------------------------------------------------------------------
// Churn
// ---------------------------------------------------------------------------

/// What the churn did, for the report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ChurnTotals {
    jobs_submitted: u64,
    tasks_submitted: u64,
    services_submitted: u64,
    submits_skipped: u64,
    services_stopped: u64,
    jobs_purged: u64,
    tasks_succeeded: u64,
    /// Batch tasks that failed for good (`dead`), killed or cancelled.
    tasks_failed: u64,
    agent_restarts: u64,
    node_restarts: u64,
    /// Shims and tasks SIGKILLed by node restarts.
    processes_killed: u64,
    /// Exited shims and tasks that outlived their parents, reaped here.
    orphans_reaped: u64,
    errors: u64,
}

impl ChurnTotals {
    fn tasks_done(&self) -> u64 {
        self.tasks_succeeded + self.tasks_failed
    }
}

#[derive(Debug, Default)]
struct Churn {
    totals: Mutex<ChurnTotals>,
    first_errors: Mutex<Vec<String>>,
}

impl Churn {
    fn bump(&self, f: impl FnOnce(&mut ChurnTotals)) {
        f(&mut self.totals.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn totals(&self) -> ChurnTotals {
        ChurnTotals {
            orphans_reaped: REAPED.load(Ordering::Relaxed),
            ..*self.totals.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }

    /// Counts an error; the first ten are kept for the report and shown.
    fn error(&self, what: &str, e: impl std::fmt::Display) {
        self.bump(|t| t.errors += 1);
        let mut first = self
            .first_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if first.len() < 10 {
            let line = format!("{what}: {e}");
            eprintln!("soak: error: {line}");
            first.push(line);
        }
    }

    fn first_errors(&self) -> Vec<String> {
        self.first_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Sleeps `d`, less if the soak ends meanwhile; true once it has ended.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// xorshift64*: the churn's choices need no better, and a seed in the
/// report makes a run repeatable.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    /// 10–50 short tasks.
    Many,
    /// One short task.
    One,
    /// 1–5 tasks that exit 3, each retried once.
    Failing,
    /// 1–2 long-running tasks, stopped by the reaper after 30–90 s.
    Service,
}

/// Short commands: one that succeeds silently (no alloc dir kept), one
/// that writes logs (its dir is kept until retention), one that fails.
const SHORT: [&str; 4] = [
    "[/bin/true]",
    "[/bin/sleep, \"0.1\"]",
    "[/bin/sh, -c, \"echo out; echo err >&2\"]",
    "[/bin/false]",
];

const SERVICE: [&str; 2] = [
    "[/bin/sleep, \"3600\"]",
    "[/bin/sh, -c, \"while :; do echo tick; sleep 5; done\"]",
];

impl JobKind {
    fn pick(rng: &mut Rng, live_services: usize) -> JobKind {
        if live_services < MIN_SERVICES {
            return JobKind::Service;
        }
        match rng.between(0, 99) {
            0..45 => JobKind::Many,
            45..80 => JobKind::One,
            _ => JobKind::Failing,
        }
    }
}

/// A job to submit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Submission {
    name: String,
    kind: JobKind,
    tasks: u32,
    yaml: String,
}

fn submission(kind: JobKind, seq: u64, rng: &mut Rng) -> Submission {
    let pick =
        |rng: &mut Rng, list: &[&'static str]| list[rng.between(0, list.len() as u64 - 1) as usize];
    let (tag, tasks, command, job_type, restart) = match kind {
        JobKind::Many => (
            "b",
            rng.between(10, 50),
            pick(rng, &SHORT),
            "batch",
            "{attempts: 0}",
        ),
        JobKind::One => ("o", 1, pick(rng, &SHORT), "batch", "{attempts: 0}"),
        JobKind::Failing => (
            "f",
            rng.between(1, 5),
            "[/bin/sh, -c, \"sleep 0.2; exit 3\"]",
            "batch",
            "{attempts: 1, delay: 500ms}",
        ),
        JobKind::Service => (
            "s",
            rng.between(1, 2),
            pick(rng, &SERVICE),
            "service",
            "{attempts: 3, delay: 1s}",
        ),
    };
    let name = format!("soak-{tag}-{seq:06}");
    let tasks = u32::try_from(tasks).unwrap_or(1);
    let yaml = format!(
        "name: {name}\ntype: {job_type}\ncount: {tasks}\ncommand: {command}\n\
         resources: {{cpu: 10m, memory: 16Mi}}\nrestart: {restart}\n"
    );
    Submission {
        name,
        kind,
        tasks,
        yaml,
    }
}

fn unfinished(jobs: &[JobView], job_type: JobType) -> usize {
    jobs.iter()
        .filter(|j| j.job_type == job_type && !j.state.is_terminal())
        .count()
}

/// Submits a job every 0.5–1.5 s: services up to [`MIN_SERVICES`], batch
/// jobs otherwise, unless [`MAX_BATCH_IN_FLIGHT`] are unfinished.
async fn submitter(
    client: Arc<Client>,
    churn: Arc<Churn>,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
) {
    let mut seq = 0;
    while !pause(&mut stop, Duration::from_millis(rng.between(500, 1500))).await {
        let jobs = match client.jobs(None).await {
            Ok(j) => j,
            Err(e) => {
                churn.error("listing jobs", e);
                continue;
            }
        };
        if unfinished(&jobs, JobType::Batch) >= MAX_BATCH_IN_FLIGHT {
            churn.bump(|t| t.submits_skipped += 1);
            continue;
        }
        seq += 1;
        let kind = JobKind::pick(&mut rng, unfinished(&jobs, JobType::Service));
        let s = submission(kind, seq, &mut rng);
        match client.submit(&s.yaml, SpecFormat::Yaml).await {
            Ok(_) => churn.bump(|t| {
                t.jobs_submitted += 1;
                t.tasks_submitted += u64::from(s.tasks);
                t.services_submitted += u64::from(kind == JobKind::Service);
            }),
            Err(e) => churn.error(&format!("submitting {}", s.name), e),
        }
    }
}

/// FNV-1a of a job's name: its service's lifetime and how it is stopped
/// are fixed per job, so a restart of the reaper would not change them.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// How long a service job runs before it is stopped (30–90 s), and whether
/// it is purged at once rather than stopped and purged once it has ended.
fn service_fate(id: &JobId) -> (Duration, bool) {
    let h = name_hash(id.as_str());
    (Duration::from_secs(30 + h % 61), (h >> 16) % 2 == 0)
}

/// Every 2 s: purges finished jobs (counting their tasks), and stops or
/// purges the service jobs that have run their time.
async fn reaper(client: Arc<Client>, churn: Arc<Churn>, mut stop: watch::Receiver<bool>) {
    while !pause(&mut stop, REAP_EVERY).await {
        let jobs = match client.jobs(None).await {
            Ok(j) => j,
            Err(e) => {
                churn.error("listing jobs", e);
                continue;
            }
        };
        let now = unix_ms();
        for job in jobs {
            let (life, purge_running) = service_fate(&job.id);
            let age = Duration::from_millis(now.saturating_sub(job.submitted_at_ms));
            if job.state.is_terminal() {
                match client.stop(&job.id, true).await {
                    Ok(_) => churn.bump(|t| count_purged(t, &job)),
                    Err(e) => churn.error(&format!("purging {}", job.id), e),
                }
            } else if job.job_type == JobType::Service && age >= life {
                match client.stop(&job.id, purge_running).await {
                    Ok(_) => churn.bump(|t| {
                        t.services_stopped += 1;
                        t.jobs_purged += u64::from(purge_running);
                    }),
                    Err(e) => churn.error(&format!("stopping {}", job.id), e),
                }
            }
        }
    }
}

fn count_purged(t: &mut ChurnTotals, job: &JobView) {
    t.jobs_purged += 1;
    if job.job_type != JobType::Batch {
        return;
    }
    let n = |s: TaskState| u64::from(job.count(s));
    t.tasks_succeeded += n(TaskState::Succeeded);
    t.tasks_failed += n(TaskState::Dead) + n(TaskState::Killed) + n(TaskState::Cancelled);
}

/// Restarts an agent every `every` (± half), alternating an agent restart
/// and a node restart. Hands the agents back at the end, for the teardown.
async fn restarter(
    mut agents: Agents,
    churn: Arc<Churn>,
    mut rng: Rng,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> (Agents, anyhow::Result<()>) {
    let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(2);
    let mut node_restart = false;
    while !pause(
        &mut stop,
        Duration::from_millis(rng.between(ms / 2, ms * 3 / 2)),
    )
    .await
    {
        let i = rng.between(0, agents.list.len() as u64 - 1) as usize;
        let done = if node_restart {
            agents.node_restart(i).await.map(|killed| {
                churn.bump(|t| {
                    t.node_restarts += 1;
                    t.processes_killed += killed as u64;
                });
            })
        } else {
            agents
                .agent_restart(i)
                .await
                .map(|()| churn.bump(|t| t.agent_restarts += 1))
        };
        if let Err(e) = done {
            return (agents, Err(e));
        }
        node_restart = !node_restart;
    }
    (agents, Ok(()))
}

// ---------------------------------------------------------------------------
// Agents
// ---------------------------------------------------------------------------

/// A `drover-agent` with its node id and directory; its process comes and
/// goes. `<dir>/data` is its data dir, `<dir>/agent.log` its log across
/// restarts.
#[derive(Debug)]
struct Agent {
    node: NodeId,
    dir: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }

    fn spawn(&mut self, binary: &Path) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        let child = Command::new(binary)
            .arg("--config")
            .arg(self.dir.join("agent.yaml"))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        own(child.id());
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: the agent only; its shims and tasks go on.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: the agent stops, its tasks go on.
    async fn terminate(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + AGENT_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "agent {} did not stop within {AGENT_TIMEOUT:?} of SIGTERM:\n{}",
                    self.node,
                    tail(&self.log(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug)]
struct Agents {
    binary: PathBuf,
    list: Vec<Agent>,
    /// The running agents' PIDs, for the sampler.
    pids: Arc<Mutex<Vec<Option<u32>>>>,
    client: Arc<Client>,
}

impl Agents {
    /// Writes each agent's config under `root/agents/n<i>`.
    fn create(
        root: &Path,
        master: &str,
        args: &SoakArgs,
        client: Arc<Client>,
    ) -> anyhow::Result<Agents> {
        make_dir(&root.join("agents"))?;
        let mut list = Vec::new();
        for i in 1..=args.agents {
            let node = NodeId::new(format!("n{i}"))?;
            let dir = root.join("agents").join(node.as_str());
            make_dir(&dir)?;
            let data = serde_json::Value::from(dir.join("data").display().to_string());
            fs::write(
                dir.join("agent.yaml"),
                format!(
                    "masters: [\"{master}\"]\nnode_id: {node}\ndata_dir: {data}\n\
                     log_listen: 127.0.0.1:0\nlabels: {{ slot: {node} }}\nkill_grace: 500ms\n\
                     logs: {{ max_finished: {}, retention: {} }}\n",
                    args.agent_max_finished,
                    humantime::format_duration(args.agent_log_retention)
                ),
            )?;
            list.push(Agent {
                node,
                dir,
                child: None,
            });
        }
        Ok(Agents {
            binary: agent_binary()?,
            pids: Arc::new(Mutex::new(vec![None; list.len()])),
            list,
            client,
        })
    }

    fn publish(&self) {
        *self.pids.lock().unwrap_or_else(PoisonError::into_inner) =
            self.list.iter().map(Agent::pid).collect();
    }

    async fn registered_at(&self, i: usize) -> u64 {
        self.client
            .node(&self.list[i].node)
            .await
            .map_or(0, |n| n.registered_at_ms)
    }

    /// Starts agent `i` and waits until the master has a registration of
    /// it newer than `after_ms`.
    async fn start(&mut self, i: usize, after_ms: u64) -> anyhow::Result<()> {
        self.list[i].spawn(&self.binary)?;
        self.publish();
        let deadline = Instant::now() + AGENT_TIMEOUT;
        loop {
            if self.registered_at(i).await > after_ms {
                return Ok(());
            }
            let agent = &mut self.list[i];
            let exited = agent
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            if exited || Instant::now() >= deadline {
                bail!(
                    "agent {} {} :\n{}",
                    agent.node,
                    if exited {
                        "exited at start"
                    } else {
                        "did not register in time"
                    },
                    tail(&agent.log(), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM and start again on the same data dir: the tasks live on.
    async fn agent_restart(&mut self, i: usize) -> anyhow::Result<()> {
        let before = self.registered_at(i).await;
        let stopped = self.list[i].terminate().await;
        self.publish();
        stopped?;
        self.start(i, before).await
    }

    /// What a power cut and a reboot do: the agent and every process it
    /// started die at once, the master marks the node down, and the agent
    /// comes back on the data dir as it was. Returns the processes killed.
    async fn node_restart(&mut self, i: usize) -> anyhow::Result<usize> {
        let before = self.registered_at(i).await;
        self.list[i].kill();
        self.publish();
        let dir = self.list[i].dir.clone();
        let killed = tokio::task::spawn_blocking(move || {
            let killed = power_off(&dir);
            reap_orphans();
            killed
        })
        .await?;
        remove_agent_cgroups(&self.list[i].data_dir());
        self.wait_down(i).await?;
        self.start(i, before).await?;
        Ok(killed)
    }

    async fn wait_down(&self, i: usize) -> anyhow::Result<()> {
        let node = &self.list[i].node;
        let deadline = Instant::now() + NODE_TIMEOUT + AGENT_TIMEOUT;
        loop {
            if self
                .client
                .node(node)
                .await
                .is_ok_and(|n| n.state == NodeState::Down)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the master did not mark node {node} down");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Warning and error lines in the agents' logs.
    fn warning_lines(&self) -> u64 {
        self.list
            .iter()
            .map(|a| {
                fs::read_to_string(a.log())
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                    .count() as u64
            })
            .sum()
    }
}

fn make_dir(path: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// PIDs of the children this process started itself (the master, the
/// agents): the orphan reaper must leave them to their `Child`.
static OWN: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

fn own(pid: u32) {
    OWN.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(pid as i32);
}

/// Shims outlive a restarted agent and tasks outlive a killed shim; their
/// parent is then the nearest subreaper. Where PID 1 does not reap (as in
/// some containers), they would pile up as zombies, and a zombie shim still
/// answers `kill(pid, 0)`: this process reaps them instead, as init would.
fn become_subreaper() -> anyhow::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")
}

/// Reaps exited orphans every second until the soak ends.
async fn orphan_reaper(mut stop: watch::Receiver<bool>) {
    loop {
        reap_orphans();
        if pause(&mut stop, Duration::from_secs(1)).await {
            return;
        }
    }
}

/// Orphans reaped so far.
static REAPED: AtomicU64 = AtomicU64::new(0);

/// Reaps this process's exited children other than its own: also right
/// after a power cut, as a cgroup cannot be removed while its processes
/// are unreaped.
fn reap_orphans() {
    let me = std::process::id() as i32;
    let own = OWN.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for pid in all_pids() {
        if own.contains(&pid) {
            continue;
        }
        if proc_stat(pid).is_some_and(|s| s.parent == me && s.state == 'Z') {
            let flags = nix::sys::wait::WaitPidFlag::WNOHANG;
            if nix::sys::wait::waitpid(Pid::from_raw(pid), Some(flags)).is_ok() {
                REAPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What `/proc/<pid>/stat` says that matters here.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    state: char,
    parent: i32,
    session: i32,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp session ...`; comm may hold spaces and
    // parentheses, so the fields are counted from the last ')'.
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    let session = fields.nth(1)?.parse().ok()?;
    Some(ProcStat {
        state,
        parent,
        session,
    })
}

fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live shims under `dir`: processes started as `<shim> __shim
/// <alloc-dir>` with the alloc dir under it. (Only shims: a shell that
/// happens to name the dir is no business of a power cut.)
fn shims_under(dir: &Path) -> Vec<i32> {
    let needle = format!("{}/", dir.display()).into_bytes();
    all_pids()
        .into_iter()
        .filter(|&pid| proc_stat(pid).is_some_and(|s| s.state != 'Z'))
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
                cmd.split(|&b| b == 0).any(|arg| arg == b"__shim")
                    && cmd.windows(needle.len()).any(|w| w == needle.as_slice())
            })
        })
        .collect()
}

/// SIGKILLs, all in one sweep, every shim under `dir` and every process in
/// their sessions (a shim leads a session, its task runs in it), until none
/// is left: no shim lives to record its task's exit, as after a power cut.
/// Returns how many were killed.
fn power_off(dir: &Path) -> usize {
    let mut killed = BTreeSet::new();
    // Kept across sweeps: a process its task forked during a sweep is
    // still in the session of the shim killed in it.
    let mut sessions = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut victims = shims_under(dir);
        sessions.extend(victims.iter().copied());
        victims.extend(all_pids().into_iter().filter(|&pid| {
            !sessions.contains(&pid)
                && proc_stat(pid).is_some_and(|s| sessions.contains(&s.session) && s.state != 'Z')
        }));
        if victims.is_empty() {
            return killed.len();
        }
        for &pid in &victims {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            killed.insert(pid);
        }
        if Instant::now() >= deadline {
            eprintln!(
                "soak: processes under {} would not die: {victims:?}",
                dir.display()
            );
            return killed.len();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the alloc cgroups of the agent with `data_dir` (a reboot leaves
/// none). The agent names them `<fnv1a64(data_dir) as 8 hex digits>_<alloc>`
/// so that agents sharing a machine never collide. Best effort: a cgroup
/// still busy stays.
fn remove_agent_cgroups(data_dir: &Path) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let prefix = format!("{:08x}_", hash as u32);
    for parent in [
        "/sys/fs/cgroup/memory/drover",
        "/sys/fs/cgroup/cpu/drover",
        "/sys/fs/cgroup/drover",
    ] {
        for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
}

/// Whether `pid` runs (a zombie has exited).
fn alive(pid: u32) -> bool {
    proc_stat(pid as i32).is_some_and(|s| s.state != 'Z')
}

fn open_fds(pid: u32) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

// ---------------------------------------------------------------------------
// Samples
// ---------------------------------------------------------------------------

/// One sample; sizes in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Sample {
    /// Seconds since the churn began.
    at: f64,
    master_rss: u64,
    master_fds: u64,
    store: u64,
    agents_up: u64,
    /// Summed over the agents running at the time.
    agent_rss: u64,
    agent_fds: u64,
    /// Summed over every agent's data dir.
    agent_data: u64,
    shims: u64,
    jobs: u64,
    tasks: u64,
    tasks_done: u64,
}

/// Where the sampler looks.
#[derive(Debug)]
struct Probe {
    master_pid: u32,
    pids: Arc<Mutex<Vec<Option<u32>>>>,
    data_dirs: Vec<PathBuf>,
    root: PathBuf,
}

impl Probe {
    async fn sample(
        &self,
        at: Duration,
        master: &MasterProcess,
        client: &Client,
        churn: &Churn,
    ) -> Sample {
        let pids: Vec<u32> = self
            .pids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flatten()
            .copied()
            .collect();
        let (jobs, tasks) = match client.cluster().await {
            Ok(c) => (c.jobs.values().sum(), c.tasks.values().sum()),
            Err(e) => {
                churn.error("GET /v1/cluster", e);
                (0, 0)
            }
        };
        Sample {
            at: at.as_secs_f64(),
            master_rss: memory_of(self.master_pid).map_or(0, |m| m.rss),
            master_fds: open_fds(self.master_pid).unwrap_or(0),
            store: master.store_bytes(),
            agents_up: pids.len() as u64,
            agent_rss: pids
                .iter()
                .filter_map(|&p| memory_of(p).ok())
                .map(|m| m.rss)
                .sum(),
            agent_fds: pids.iter().filter_map(|&p| open_fds(p)).sum(),
            agent_data: self.data_dirs.iter().map(|d| disk_bytes(d)).sum(),
            shims: shims_under(&self.root).len() as u64,
            jobs,
            tasks,
            tasks_done: churn.totals().tasks_done(),
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn progress_line(s: &Sample, t: &ChurnTotals) -> String {
    format!(
        "soak {:>6.0} s: master {:.1} MiB {} fds, store {:.2} MiB | {} agents {:.1} MiB {} fds, data {:.2} MiB, {} shims | \
         {} jobs {} tasks held, {} done | {} submitted, {} services stopped, {} purged, {}+{} restarts, {} errors",
        s.at,
        mib(s.master_rss),
        s.master_fds,
        mib(s.store),
        s.agents_up,
        mib(s.agent_rss),
        s.agent_fds,
        mib(s.agent_data),
        s.shims,
        s.jobs,
        s.tasks,
        s.tasks_done,
        t.jobs_submitted,
        t.services_stopped,
        t.jobs_purged,
        t.agent_restarts,
        t.node_restarts,
        t.errors
    )
}

/// A column of the samples, with its verdict and chart.
#[derive(Debug, Clone, Copy)]
struct Series {
    label: &'static str,
    /// Of the chart's y axis.
    unit: &'static str,
    value: fn(&Sample) -> f64,
}

const fn column(label: &'static str, unit: &'static str, value: fn(&Sample) -> f64) -> Series {
    Series { label, unit, value }
}

fn series() -> [Series; 9] {
    [
        column("master RSS (MiB)", "MiB", |s| mib(s.master_rss)),
        column("master open fds", "fds", |s| s.master_fds as f64),
        column("store file (MiB)", "MiB", |s| mib(s.store)),
        column("agents' RSS, sum (MiB)", "MiB", |s| mib(s.agent_rss)),
        column("agents' open fds, sum", "fds", |s| s.agent_fds as f64),
        column("agents' data dirs, sum (MiB)", "MiB", |s| mib(s.agent_data)),
        column("live shims", "processes", |s| s.shims as f64),
        column("jobs held by the master", "jobs", |s| s.jobs as f64),
        column("tasks held by the master", "tasks", |s| s.tasks as f64),
    ]
}

// ---------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------

/// How a series moved over the run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Trend {
    /// Means of the first, middle and last thirds of the samples.
    first: f64,
    middle: f64,
    last: f64,
    /// Least-squares slope over every sample, per hour.
    per_hour: f64,
}

impl Trend {
    /// From `(seconds, value)` points in time order; `None` under three.
    fn of(points: &[(f64, f64)]) -> Option<Trend> {
        let n = points.len();
        if n < 3 {
            return None;
        }
        let third = n / 3;
        let mean = |p: &[(f64, f64)]| p.iter().map(|&(_, v)| v).sum::<f64>() / p.len() as f64;
        Some(Trend {
            first: mean(&points[..third]),
            middle: mean(&points[third..n - third]),
            last: mean(&points[n - third..]),
            per_hour: slope(points) * 3600.0,
        })
    }

    /// Last third against first, as a share of the first.
    fn change(&self) -> Option<f64> {
        (self.first > 0.0).then(|| (self.last - self.first) / self.first)
    }

    fn grows(&self) -> bool {
        match self.change() {
            Some(c) => c > GROWTH_LIMIT,
            None => self.last > 0.0,
        }
    }
}

/// Least-squares slope of `y` over `x`; 0 when every `x` is the same.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (cov, var) = points.iter().fold((0.0, 0.0), |(c, v), &(x, y)| {
        (c + (x - mx) * (y - my), v + (x - mx) * (x - mx))
    });
    if var > 0.0 {
        cov / var
    } else {
        0.0
    }
}

/// A number as a chart or table shows it: at most two decimals, none when
/// it is whole.
fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

/// `num` with a `+` before a positive value.
fn signed(v: f64) -> String {
    let n = num(v);
    if v > 0.0 && n != "0" {
        format!("+{n}")
    } else {
        n
    }
}

/// The smallest of 1, 2, 5 × 10ⁿ at or above `v` (at least 1): an axis
/// from 0 to it shows a flat series as flat, not its noise magnified.
fn axis_top(v: f64) -> f64 {
    if v.is_nan() || v <= 1.0 {
        return 1.0;
    }
    let unit = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * unit)
        .find(|&t| t >= v)
        .unwrap_or(10.0 * unit)
}

/// A Mermaid `xychart-beta` line chart of `values`, evenly spread over
/// `0..=minutes`.
fn mermaid_chart(title: &str, unit: &str, minutes: f64, values: &[f64]) -> String {
    let top = axis_top(values.iter().copied().fold(0.0, f64::max) * 1.1);
    let line: Vec<String> = values.iter().map(|&v| num(v)).collect();
    format!(
        "```mermaid\nxychart-beta\n    title \"{title}\"\n    x-axis \"minutes\" 0 --> {}\n    \
         y-axis \"{unit}\" 0 --> {}\n    line [{}]\n```\n",
        num(if minutes > 0.0 { minutes } else { 1.0 }),
        num(top),
        line.join(", ")
    )
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Report<'a> {
    command: String,
    machine: String,
    commit: String,
    args: &'a SoakArgs,
    seed: u64,
    ended: String,
    churn: ChurnTotals,
    errors: Vec<String>,
    metrics: Option<MasterTotals>,
    master_warnings: u64,
    agent_warnings: u64,
    samples: &'a [Sample],
}

impl Report<'_> {
    fn render(&self) -> String {
        let mut out = String::new();
        self.header(&mut out);
        self.verdicts(&mut out);
        self.minute_table(&mut out);
        self.charts(&mut out);
        out
    }

    fn minutes(&self) -> f64 {
        self.samples.last().map_or(0.0, |s| s.at / 60.0)
    }

    fn header(&self, out: &mut String) {
        let a = self.args;
        let t = &self.churn;
        let _ = writeln!(
            out,
            "## Soak: {} of mixed churn (issue 20)\n",
            humantime::format_duration(a.duration)
        );
        let _ = writeln!(out, "Command: `{}` (seed {})\n", self.command, self.seed);
        let _ = writeln!(out, "Machine: {}; commit {}.\n", self.machine, self.commit);
        let _ = writeln!(
            out,
            "Cluster: one `drover-master` (embedded store, synced at every commit; heartbeats every {} ms, \
             `node_timeout` {} s, a scheduling pass at least every 250 ms) and {} `drover-agent`s on this one machine, \
             tasks as `nobody`. The agents keep at most {} finished allocs and their logs for {} \
             (`logs.max_finished`, `logs.retention`; the defaults, 10,000 and 24 h, are not reached in a run this short).\n",
            HEARTBEAT.as_millis(),
            NODE_TIMEOUT.as_secs(),
            a.agents,
            a.agent_max_finished,
            humantime::format_duration(a.agent_log_retention)
        );
        let _ = writeln!(
            out,
            "Churn, concurrently: a job every 0.5–1.5 s (batch jobs of 10–50 or 1 short tasks: `true`, `sleep 0.1`, \
             a task that writes to stdout and stderr, `false`; jobs of 1–5 tasks that exit 3 and are retried once; \
             at least {MIN_SERVICES} service jobs), paused while {MAX_BATCH_IN_FLIGHT} batch jobs are unfinished; \
             every 2 s finished jobs are purged and service jobs older than their 30–90 s are stopped \
             (half of them purged at once, the rest once stopped); about every {} an agent restart \
             (SIGTERM, started again on its data dir) alternating with a node restart (the agent, its shims and \
             tasks SIGKILLed at once, the node seen down, the agent started again on its data dir). It {}.\n",
            humantime::format_duration(a.restart_every),
            self.ended
        );
        let _ = writeln!(
            out,
            "| jobs submitted | tasks submitted | service jobs | services stopped | jobs purged | tasks succeeded | \
             tasks failed | agent restarts | node restarts | processes killed by node restarts | orphans reaped | \
             submissions paused | errors |"
        );
        let _ = writeln!(out, "|{}", "---|".repeat(13));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.jobs_submitted,
            t.tasks_submitted,
            t.services_submitted,
            t.services_stopped,
            t.jobs_purged,
            t.tasks_succeeded,
            t.tasks_failed,
            t.agent_restarts,
            t.node_restarts,
            t.processes_killed,
            t.orphans_reaped,
            t.submits_skipped,
            t.errors
        );
        if let Some(m) = self.metrics {
            let _ = writeln!(
                out,
                "The master's counters at the end: {} placements, {} task reschedules, {} node failures \
                 (for {} node restarts), {} store compactions. Warning and error lines logged: {} by the master, \
                 {} by the agents.\n",
                m.placements, m.reschedules, m.node_failures, t.node_restarts, m.compactions, self.master_warnings, self.agent_warnings
            );
        }
        if !self.errors.is_empty() {
            let _ = writeln!(out, "First errors of the churn's own calls:\n");
            for e in &self.errors {
                let _ = writeln!(out, "- `{}`", e.replace('`', "'").replace('\n', " "));
            }
            out.push('\n');
        }
    }

    fn verdicts(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### Verdict\n\nPer series: the means of the first, middle and last thirds of the {} samples, the \
             least-squares slope over all of them, and **GROWS** where the last third's mean is more than {:.0} % \
             above the first third's (computed by the bench).\n",
            self.samples.len(),
            GROWTH_LIMIT * 100.0
        );
        let _ = writeln!(out, "| series | first third | middle third | last third | change | slope per hour | verdict |");
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        for s in series() {
            let points: Vec<(f64, f64)> =
                self.samples.iter().map(|x| (x.at, (s.value)(x))).collect();
            let Some(t) = Trend::of(&points) else {
                let _ = writeln!(out, "| {} | — | — | — | — | — | too few samples |", s.label);
                continue;
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                s.label,
                num(t.first),
                num(t.middle),
                num(t.last),
                t.change()
                    .map_or("—".to_string(), |c| format!("{:+.1} %", c * 100.0)),
                signed(t.per_hour),
                if t.grows() { "**GROWS**" } else { "flat" }
            );
        }
        out.push('\n');
    }

    fn sample_row(s: &Sample) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            num(s.at / 60.0),
            num(mib(s.master_rss)),
            s.master_fds,
            num(mib(s.store)),
            s.agents_up,
            num(mib(s.agent_rss)),
            s.agent_fds,
            num(mib(s.agent_data)),
            s.shims,
            s.jobs,
            s.tasks,
            s.tasks_done
        )
    }

    fn sample_table(rows: impl Iterator<Item = String>, out: &mut String) {
        let _ = writeln!(
            out,
            "| minute | master RSS (MiB) | master fds | store (MiB) | agents up | agents' RSS (MiB) | agents' fds | \
             agents' data (MiB) | shims | jobs | tasks | tasks done |"
        );
        let _ = writeln!(out, "|{}", "---|".repeat(12));
        for r in rows {
            let _ = writeln!(out, "{r}");
        }
    }

    fn minute_table(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### Samples\n\nThe first sample of each minute, and the last:\n"
        );
        Self::sample_table(
            per_minute(self.samples).into_iter().map(Self::sample_row),
            out,
        );
        let _ = writeln!(
            out,
            "\n<details><summary>All {} samples</summary>\n",
            self.samples.len()
        );
        Self::sample_table(self.samples.iter().map(Self::sample_row), out);
        let _ = writeln!(out, "\n</details>\n");
    }

    fn charts(&self, out: &mut String) {
        let _ = writeln!(out, "### Charts\n");
        for s in series() {
            let values: Vec<f64> = self.samples.iter().map(|x| (s.value)(x)).collect();
            let title = s.label.replace('"', "'");
            out.push_str(&mermaid_chart(&title, s.unit, self.minutes(), &values));
            out.push('\n');
        }
    }
}

/// The first sample of each whole minute, and the last sample.
fn per_minute(samples: &[Sample]) -> Vec<&Sample> {
    let mut picked: Vec<&Sample> = Vec::new();
    let mut minute = None;
    for s in samples {
        let m = (s.at / 60.0).floor() as u64;
        if minute != Some(m) {
            minute = Some(m);
            picked.push(s);
        }
    }
    if let (Some(last), Some(&&end)) = (samples.last(), picked.last()) {
        if *last != end {
            picked.push(last);
        }
    }
    picked
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This command as typed, the program by its name only.
fn command_line() -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(program) = args.first_mut() {
        if let Some(name) = Path::new(program.as_str()).file_name() {
            *program = name.to_string_lossy().into_owned();
        }
    }
    args.join(" ")
}

fn first_line(path: &str, key: &str) -> Option<String> {
    fs::read_to_string(path).ok()?.lines().find_map(|l| {
        l.strip_prefix(key)
            .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
    })
}

/// Cores, CPU model, memory and kernel of this machine.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model =
        first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".to_string());
    let mem_kib: f64 = first_line("/proc/meminfo", "MemTotal")
        .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({model}), {:.1} GiB memory, Linux {}",
        mem_kib / f64::from(1 << 20),
        kernel.trim()
    )
}

/// `git rev-parse --short HEAD` of the current directory, noting
/// uncommitted changes; "unknown" outside a checkout.
fn commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(c) if git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty()) => {
            format!("`{c}` (with uncommitted changes)")
        }
        Some(c) => format!("`{c}`"),
        None => "unknown".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn line(n: usize, f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..n)
            .map(|i| (i as f64 * 10.0, f(i as f64 * 10.0)))
            .collect()
    }

    #[test]
    fn a_flat_series_is_flat_and_its_slope_is_zero() {
        let t = Trend::of(&line(180, |_| 42.0)).unwrap();
        assert_eq!((t.first, t.middle, t.last), (42.0, 42.0, 42.0));
        assert_eq!(t.per_hour, 0.0);
        assert_eq!(t.change(), Some(0.0));
        assert!(!t.grows());
    }

    #[test]
    fn the_slope_is_per_hour_from_a_least_squares_fit() {
        // 1 unit per second = 3600 per hour, whatever the intercept.
        let t = Trend::of(&line(30, |x| 5.0 + x)).unwrap();
        assert!((t.per_hour - 3600.0).abs() < 1e-6, "{t:?}");
        // Noise symmetric about a line does not move the fit.
        let noisy: Vec<(f64, f64)> = line(40, |x| 2.0 * x)
            .into_iter()
            .enumerate()
            .map(|(i, (x, y))| (x, y + if i % 2 == 0 { 3.0 } else { -3.0 }))
            .collect();
        assert!((slope(&noisy) - 2.0).abs() < 0.01, "{}", slope(&noisy));
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 5.0)]), 0.0);
    }

    #[test]
    fn thirds_are_split_by_count_and_growth_beyond_a_fifth_is_flagged() {
        // 9 samples: 1,1,1 | 2,2,2 | 3,3,3.
        let steps: Vec<(f64, f64)> = (0..9)
            .map(|i| (f64::from(i), f64::from(i / 3 + 1)))
            .collect();
        let t = Trend::of(&steps).unwrap();
        assert_eq!((t.first, t.middle, t.last), (1.0, 2.0, 3.0));
        assert_eq!(t.change(), Some(2.0));
        assert!(t.grows());
        // 10 samples: thirds of 3, the middle takes the extra one.
        let t = Trend::of(&line(10, |x| if x >= 90.0 { 100.0 } else { 1.0 })).unwrap();
        assert_eq!((t.first, t.last), (1.0, 34.0));

        let just_under = Trend::of(&[(0.0, 100.0), (1.0, 110.0), (2.0, 119.0)]).unwrap();
        assert!(!just_under.grows());
        let just_over = Trend::of(&[(0.0, 100.0), (1.0, 110.0), (2.0, 121.0)]).unwrap();
        assert!(just_over.grows());
        // Shrinking is not growing.
        assert!(!Trend::of(&line(12, |x| 1000.0 - x)).unwrap().grows());
    }

    #[test]
    fn from_nothing_anything_is_growth_and_nothing_stays_flat() {
        let t = Trend::of(&[(0.0, 0.0), (1.0, 0.0), (2.0, 5.0)]).unwrap();
        assert_eq!(t.change(), None);
        assert!(t.grows());
        assert!(!Trend::of(&line(6, |_| 0.0)).unwrap().grows());
        assert_eq!(Trend::of(&[(0.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn numbers_are_short_and_axes_end_on_round_values() {
        assert_eq!(num(12.0), "12");
        assert_eq!(num(12.5), "12.5");
        assert_eq!(num(0.123), "0.12");
        assert_eq!(num(-0.001), "0");
        assert_eq!(num(100.0), "100");
        assert_eq!(axis_top(0.0), 1.0);
        assert_eq!(axis_top(0.3), 1.0);
        assert_eq!(axis_top(1.0), 1.0);
        assert_eq!(axis_top(1.5), 2.0);
        assert_eq!(axis_top(47.0), 50.0);
        assert_eq!(axis_top(120.0), 200.0);
        assert_eq!(axis_top(600.0), 1000.0);
        assert_eq!(axis_top(f64::NAN), 1.0);
    }

    #[test]
    fn a_chart_is_a_mermaid_xychart_with_every_value() {
        let chart = mermaid_chart("master RSS (MiB)", "MiB", 29.9, &[10.0, 12.25, 11.5]);
        assert_eq!(
            chart,
            "```mermaid\nxychart-beta\n    title \"master RSS (MiB)\"\n    x-axis \"minutes\" 0 --> 29.9\n    \
             y-axis \"MiB\" 0 --> 20\n    line [10, 12.25, 11.5]\n```\n"
        );
        // An empty or tiny run still has axes Mermaid accepts.
        assert!(mermaid_chart("t", "u", 0.0, &[])
            .contains("x-axis \"minutes\" 0 --> 1\n    y-axis \"u\" 0 --> 1\n    line []"));
    }

    fn sample(at: f64, master_rss: u64) -> Sample {
        Sample {
            at,
            master_rss,
            ..Sample::default()
        }
    }

    #[test]
    fn the_minute_table_takes_each_minutes_first_sample_and_the_last() {
        let samples: Vec<Sample> = (0..14).map(|i| sample(f64::from(i) * 10.0, 1)).collect();
        let at: Vec<f64> = per_minute(&samples).iter().map(|s| s.at).collect();
        assert_eq!(at, [0.0, 60.0, 120.0, 130.0]);
        let exact: Vec<Sample> = (0..13).map(|i| sample(f64::from(i) * 10.0, 1)).collect();
        let at: Vec<f64> = per_minute(&exact).iter().map(|s| s.at).collect();
        assert_eq!(at, [0.0, 60.0, 120.0]);
        assert!(per_minute(&[]).is_empty());
    }

    #[test]
    fn the_report_computes_its_verdicts_and_draws_every_series() {
        let samples: Vec<Sample> = (0..30)
            .map(|i| Sample {
                agent_data: (1 + i) << 20,
                ..sample(f64::from(i as u32) * 10.0, 50 << 20)
            })
            .collect();
        let args = SoakArgs {
            duration: Duration::from_secs(300),
            agents: 3,
            sample: Duration::from_secs(10),
            out: None,
            restart_every: Duration::from_secs(30),
            agent_max_finished: 1000,
            agent_log_retention: Duration::from_secs(600),
            seed: None,
        };
        let text = Report {
            command: "drover-bench soak --duration 5m".to_string(),
            machine: "test".to_string(),
            commit: "`abc`".to_string(),
            args: &args,
            seed: 7,
            ended: "ran for its full duration".to_string(),
            churn: ChurnTotals {
                jobs_submitted: 3,
                ..ChurnTotals::default()
            },
            errors: vec!["listing jobs: `boom`".to_string()],
            metrics: None,
            master_warnings: 0,
            agent_warnings: 0,
            samples: &samples,
        }
        .render();
        assert!(
            text.contains("| master RSS (MiB) | 50 | 50 | 50 | +0.0 % | 0 | flat |"),
            "{text}"
        );
        assert!(text.contains("| agents' data dirs, sum (MiB) | 5.5 | 15.5 | 25.5 | +363.6 % | +360 | **GROWS** |"), "{text}");
        assert_eq!(text.matches("```mermaid").count(), series().len());
        assert!(text.contains("<details><summary>All 30 samples</summary>"));
        assert!(text.contains("- `listing jobs: 'boom'`"));
    }

    #[test]
    fn job_specs_parse_and_count_their_tasks() {
        let mut rng = Rng::new(1);
        for (seq, kind) in [
            JobKind::Many,
            JobKind::One,
            JobKind::Failing,
            JobKind::Service,
        ]
        .into_iter()
        .enumerate()
        {
            for _ in 0..20 {
                let s = submission(kind, seq as u64, &mut rng);
                let spec = drover_api::JobSpec::parse_yaml(&s.yaml)
                    .unwrap_or_else(|e| panic!("{}: {e:?}", s.yaml));
                assert_eq!(spec.count, s.tasks);
                assert_eq!(spec.job_type == JobType::Service, kind == JobKind::Service);
                match kind {
                    JobKind::Many => assert!((10..=50).contains(&s.tasks)),
                    JobKind::One => assert_eq!(s.tasks, 1),
                    JobKind::Failing => assert_eq!(spec.restart.attempts, 1),
                    JobKind::Service => assert!((1..=2).contains(&s.tasks)),
                }
            }
        }
        assert_eq!(JobKind::pick(&mut rng, 0), JobKind::Service);
    }

    #[test]
    fn a_services_fate_is_fixed_by_its_name() {
        let id = JobId::new("soak-s-000001").unwrap();
        assert_eq!(service_fate(&id), service_fate(&id));
        let lives: BTreeMap<bool, usize> = (0..200)
            .map(|i| service_fate(&JobId::new(format!("soak-s-{i:06}")).unwrap()))
            .inspect(|(life, _)| assert!((30..=90).contains(&life.as_secs())))
            .fold(BTreeMap::new(), |mut m, (_, purge)| {
                *m.entry(purge).or_insert(0) += 1;
                m
            });
        assert!(lives.values().all(|&n| n > 50), "{lives:?}");
    }
}
