//! End-to-end benchmarks of a real cluster: `drover dev` (master, embedded
//! store, one agent, real task processes) started as a child process and
//! driven over its REST API, exactly as a user would.
//!
//! - [`latency`]: idle submit → running. One single-task job at a time on
//!   an otherwise idle cluster: the time from sending the submission until
//!   the master reports the task `running` (the agent has started it and
//!   said so).
//! - [`throughput`]: many trivial tasks (`/bin/true`) in one job on one
//!   agent: tasks per second from submission until the job is complete.
//! - [`sim`]: a real `drover-master` driven by thousands of simulated
//!   agents in this process (real protocol, real HTTP, no task processes):
//!   how the master scales with nodes and tasks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use drover_api::client::{Client, SpecFormat};
use drover_api::{JobId, JobState, TaskId, TaskState};

pub mod sim;

/// A `drover dev` cluster in a child process, stopped (SIGTERM, which makes
/// it stop its tasks) and reaped when dropped.
#[derive(Debug)]
pub struct DevCluster {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl DevCluster {
    /// Starts `drover dev` on a free loopback port with its state in a
    /// temp dir, and waits for its `export DROVER_ADDR=` line (printed once
    /// the agents have registered).
    pub fn start(drover: &Path, agents: u32) -> anyhow::Result<DevCluster> {
        let dir = tempfile::Builder::new()
            .prefix("drover-bench-")
            .tempdir()
            .context("temp dir")?;
        let mut child = Command::new(drover)
            .args(["dev", "--listen", "127.0.0.1:0", "--agents"])
            .arg(agents.to_string())
            .arg("--data-dir")
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} dev", drover.display()))?;
        let stdout = child.stdout.take().context("the child's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("export DROVER_ADDR=") {
                        break addr.trim().to_string();
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("drover dev exited before it was ready");
                }
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(DevCluster {
            child,
            addr,
            _dir: dir,
        })
    }

    pub fn client(&self) -> Client {
        Client::new(vec![self.addr.clone()], None)
    }

    /// Where the cluster keeps its state (alloc dirs under `agent-N/`).
    pub fn data_dir(&self) -> &Path {
        self._dir.path()
    }

    /// The resident memory of `drover dev` (master and agents together), KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Stops it as Ctrl-C would (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) -> std::io::Result<std::process::ExitStatus> {
        terminate(&mut self.child)
    }
}

/// Sends `child` SIGTERM and waits for it to exit.
pub fn terminate(child: &mut std::process::Child) -> std::io::Result<std::process::ExitStatus> {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    child.wait()
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The `drover` binary next to this one (both are built into the same
/// target dir), unless `DROVER_BIN` names another.
pub fn drover_binary() -> anyhow::Result<PathBuf> {
    sibling_binary("drover", "DROVER_BIN")
}

/// The `drover-agent` binary next to this one, unless `DROVER_AGENT_BIN`
/// names another.
pub fn agent_binary() -> anyhow::Result<PathBuf> {
    sibling_binary("drover-agent", "DROVER_AGENT_BIN")
}

/// The workspace binary `name` next to this executable (or up to two
/// directories above it, as from `target/debug/deps`), unless the
/// environment variable `env` names another.
pub(crate) fn sibling_binary(name: &str, env: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no {name} binary next to {}; build it (cargo build --workspace --bins) or set {env}",
        exe.display()
    )
}

/// Percentiles of a set of durations.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub min: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        let mut s = samples.to_vec();
        s.sort();
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize];
        (!s.is_empty()).then(|| Summary {
            count: s.len(),
            min: s[0],
            p50: at(0.50),
            p99: at(0.99),
            max: s[s.len() - 1],
        })
    }
}

async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Submits `n` single-task jobs one after another, each on an idle
/// cluster, and returns each one's submit → running time. Each job is
/// purged (its task killed) before the next is submitted.
pub async fn latency(client: &Client, n: usize) -> anyhow::Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("latency-{i}");
        let spec = format!(
            "name: {name}\ncommand: [/bin/sleep, \"300\"]\nresources: {{cpu: 10m, memory: 16Mi}}\n"
        );
        let job = JobId::new(&name)?;
        let task: TaskId = job.task(0);
        let started = Instant::now();
        client.submit(&spec, SpecFormat::Yaml).await?;
        // Polled every millisecond: the resolution of the measurement.
        let every = Duration::from_millis(1);
        wait_until(
            &format!("{task} running"),
            Duration::from_secs(30),
            every,
            async || {
                let t = client.task(&task).await?;
                Ok((t.state == TaskState::Running).then_some(()))
            },
        )
        .await?;
        samples.push(started.elapsed());
        client.stop(&job, true).await?;
        // Idle again: no live alloc left on the node.
        wait_until(
            "the node to be idle",
            Duration::from_secs(30),
            every,
            async || {
                let nodes = client.nodes().await?;
                Ok(nodes.iter().all(|n| n.allocs.is_empty()).then_some(()))
            },
        )
        .await?;
    }
    Ok(samples)
}

/// What a throughput run measured.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub tasks: u32,
    /// Submission until every task succeeded.
    pub elapsed: Duration,
    /// Tasks that needed more than one attempt (should be 0).
    pub retried: usize,
    /// Tasks/s over each tenth of the tasks, in the order they finished
    /// (by the master's clock): a run that slows down as it goes shows it.
    pub tenths: Vec<f64>,
}

/// Tasks/s over each tenth of `done` (finish times in unix ms, any order),
/// counting from `start_ms`. Empty when there are fewer than 10.
pub fn rates_by_tenth(start_ms: u64, mut done: Vec<u64>) -> Vec<f64> {
    done.sort_unstable();
    let n = done.len();
    if n < 10 {
        return Vec::new();
    }
    let mut from = start_ms;
    (1..=10)
        .map(|k| {
            let (lo, hi) = ((k - 1) * n / 10, k * n / 10);
            let to = done[hi - 1];
            let secs = (to.saturating_sub(from)).max(1) as f64 / 1000.0;
            from = to;
            (hi - lo) as f64 / secs
        })
        .collect()
}

/// How fast this machine itself starts and reaps `/bin/true`: one thread
/// per core, each spawning (posix_spawn, as std does when no hook runs
/// between fork and exec) and waiting for processes in a loop, `total` in
/// all. The ceiling for any launcher of trivial tasks here.
pub fn spawn_limit(total: u32, threads: usize) -> anyhow::Result<f64> {
    use std::sync::atomic::{AtomicU32, Ordering};
    let next = std::sync::Arc::new(AtomicU32::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let next = std::sync::Arc::clone(&next);
            std::thread::spawn(move || -> std::io::Result<()> {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let status = Command::new("/bin/true")
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()?;
                    if !status.success() {
                        return Err(std::io::Error::other(format!("/bin/true: {status}")));
                    }
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a spawning thread panicked"))??;
    }
    Ok(f64::from(total) / started.elapsed().as_secs_f64())
}

impl Throughput {
    pub fn tasks_per_second(&self) -> f64 {
        f64::from(self.tasks) / self.elapsed.as_secs_f64()
    }
}

/// The bytes `dir` and everything under it take on disk (allocated blocks).
pub fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return 0;
    };
    let mut bytes = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            bytes += disk_bytes(&entry.path());
        }
    }
    bytes
}

/// Heartbeats the master has answered (`drover_http_requests_total` of the
/// heartbeat route, all codes).
pub async fn heartbeats(client: &Client) -> anyhow::Result<f64> {
    let reply = client.raw("GET", "/metrics", None).await?;
    let text = String::from_utf8_lossy(&reply.body);
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("drover_http_requests_total{")
                && l.contains("route=\"POST /v1/agent/heartbeat\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Runs one job of `tasks` `/bin/true` tasks, named `name`, and waits for
/// it to complete.
pub async fn throughput(client: &Client, name: &str, tasks: u32) -> anyhow::Result<Throughput> {
    let spec = format!(
        "name: {name}\ncount: {tasks}\ncommand: [/bin/true]\nresources: {{cpu: 10m, memory: 16Mi}}\nrestart: {{attempts: 0}}\n"
    );
    let job = JobId::new(name)?;
    let started = Instant::now();
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut last_report = started;
    client.submit(&spec, SpecFormat::Yaml).await?;
    let view = wait_until(
        "the job to finish",
        Duration::from_secs(3600),
        Duration::from_millis(20),
        async || {
            let j = client.job(&job).await?;
            if last_report.elapsed() >= Duration::from_secs(5) {
                eprintln!("  {:.0} s: {:?}", started.elapsed().as_secs_f64(), j.tasks);
                last_report = Instant::now();
            }
            Ok(j.state.is_terminal().then_some(j))
        },
    )
    .await?;
    let elapsed = started.elapsed();
    if view.state != JobState::Complete {
        bail!("the job ended {} ({:?})", view.state, view.tasks);
    }
    let views = client.tasks(&job).await?;
    let retried = views.iter().filter(|t| t.attempts.len() != 1).count();
    let done = views
        .iter()
        .filter_map(|t| t.history.last().map(|h| h.at_unix_ms))
        .collect();
    Ok(Throughput {
        tasks,
        elapsed,
        retried,
        tenths: rates_by_tenth(started_ms, done),
    })
}
