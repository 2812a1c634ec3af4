//! Harness for Drover's end-to-end tests: the real `drover-master` and
//! `drover-agent` binaries, each on loopback with ephemeral ports and its own
//! directories under one temp dir per test, driven through the typed client.
//!
//! - [`Cluster`] starts a master and N agents (node ids `n1`, `n2`, ...,
//!   each labelled `slot: <id>` so a job can be pinned to one node) and waits
//!   until every agent is registered. It kills, stops and restarts agents on
//!   the same data dir and node id. Dropping it kills the master and agents
//!   by their PIDs, then every shim and task left behind (see
//!   [`kill_leftovers`]), so nothing outlives a test even after `kill -9`.
//! - [`Job`] builds job specs whose tasks are `/bin/sh -c <script>`.
//! - [`Cluster::scratch`] is a world-writable directory for the files tasks
//!   write (PID files, markers, gates: tasks run as `nobody`); [`read_pid`],
//!   [`pid_alive`], [`read_lines`] and [`sh_quote`] help with them.
//! - [`eventually`] polls a condition until it holds or a deadline passes:
//!   tests never sleep as a way to synchronise.
//!
//! The binaries are found next to the test executable (`target/debug`):
//! build them first with `cargo build --workspace --bins` (scripts/test.sh
//! does).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_api::client::{Client, LogStream};
use drover_api::views::{JobView, NodeView, TaskView};
use drover_api::{JobId, JobState, NodeId, NodeState, TaskId};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

pub mod etcd;

use etcd::Etcd;

/// Heartbeat interval of test masters: short, so that failures are seen fast.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(300);
/// `node_timeout` of clusters built with
/// [`ClusterBuilder::fast_failure_detection`]: a dead agent is noticed
/// quickly (the master requires more than 3 heartbeat intervals).
pub const FAST_NODE_TIMEOUT: Duration = Duration::from_secs(2);
/// `node_timeout` otherwise: long, so that a live agent starved of CPU on a
/// loaded CI machine (tests run in parallel) is never declared down, nor
/// (see `suspect_after_missed`) suspect, which would skew placements.
pub const SLOW_NODE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long start-up (binaries, registration) may take on a loaded CI box.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often [`eventually`] looks again.
const POLL_EVERY: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Calls `check` every 50 ms until it returns `Ok`, and returns that value.
/// `Err` carries what was seen instead (a state, a count); when `timeout`
/// passes, panics with it and with `what` was awaited.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(POLL_EVERY).await,
        }
    }
}

/// Blocking version of [`eventually`] for code outside the runtime (Drop).
fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Files tasks write, and processes
// ---------------------------------------------------------------------------

/// `s` as one single-quoted shell word.
pub fn sh_quote(s: impl AsRef<str>) -> String {
    format!("'{}'", s.as_ref().replace('\'', r"'\''"))
}

/// The PID a task wrote to `path` (`echo $$ > path`); `None` while the file
/// is missing or not yet complete.
pub fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether `pid` is a live process (a zombie counts as gone: it has exited
/// and merely awaits its parent).
pub fn pid_alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match proc_stat(pid) {
        Some(stat) => stat.state != 'Z',
        // Gone between the two checks.
        None => false,
    }
}

/// The lines of a file; empty when it does not exist.
pub fn read_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

/// What `/proc/<pid>/stat` says about a process that matters here.
#[derive(Debug, Clone, Copy)]
struct ProcStat {
    state: char,
    session: i32,
}

fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid pgrp session ...`; comm may hold spaces and
    // parentheses, so the fields are counted from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let session = fields.nth(2)?.parse().ok()?;
    Some(ProcStat { state, session })
}

fn all_pids() -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live processes whose command line mentions `dir` (shims are
/// `drover-agent __shim <alloc-dir>`, and alloc dirs are under the agents'
/// data dirs; the agents themselves have `--config <dir>/...`).
fn processes_mentioning(dir: &Path) -> Vec<i32> {
    let needle = format!("{}/", dir.display()).into_bytes();
    let me = std::process::id() as i32;
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me && pid_alive(pid))
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.windows(needle.len()).any(|w| w == needle.as_slice()))
        })
        .collect()
}

/// Kills everything a test's cluster left running under `dir`: every
/// process whose command line mentions it (agents, shims) and every process
/// in those processes' sessions (a shim is a session leader and its task
/// runs in that session, in its own process group).
///
/// Tasks go first so that their shims see them exit and clean up after them
/// (cgroups, `exit.json`) as they always do; shims still there after three
/// seconds are killed too. Returns how many processes were found.
pub fn kill_leftovers(dir: &Path) -> usize {
    let mut seen = BTreeSet::new();
    let started = Instant::now();
    loop {
        let owners = processes_mentioning(dir);
        if owners.is_empty() {
            return seen.len();
        }
        let sessions: BTreeSet<i32> = owners.iter().copied().collect();
        for pid in all_pids() {
            if sessions.contains(&pid) {
                continue;
            }
            if proc_stat(pid).is_some_and(|s| sessions.contains(&s.session) && s.state != 'Z') {
                seen.insert(pid);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if started.elapsed() > Duration::from_secs(3) {
            for &pid in &owners {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "e2e: processes under {} would not die: {owners:?}",
                dir.display()
            );
            return seen.len();
        }
        seen.extend(owners);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where the agent puts its allocs' cgroups (v1 hierarchies, and v2).
const CGROUP_PARENTS: [&str; 3] = [
    "/sys/fs/cgroup/memory/drover",
    "/sys/fs/cgroup/cpu/drover",
    "/sys/fs/cgroup/drover",
];

/// Removes the alloc cgroups an agent with `data_dir` left behind (a shim
/// killed before it could clean up). The agent names them
/// `<fnv1a64(data_dir) as 8 hex digits>_<alloc>` so that agents sharing a
/// machine never collide; empty cgroups are all that can be left once every
/// process is gone. Best effort: a cgroup still busy stays.
pub fn remove_agent_cgroups(data_dir: &Path) {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let prefix = format!("{:08x}_", hash as u32);
    for parent in CGROUP_PARENTS {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_dir(entry.path());
            }
        }
    }
}

/// The directory holding `drover-master` and `drover-agent`: the test
/// executable is `<target>/debug/deps/<test>-<hash>`, the binaries are in
/// `<target>/debug`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test executable is in <target>/<profile>/deps")
        .to_path_buf()
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: the e2e tests run the real binaries; build them first with \
         `cargo build --workspace --bins`",
        path.display()
    );
    path
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn make_dir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------
// Job specs
// ---------------------------------------------------------------------------

/// A job spec under construction, sent as JSON. Tasks run `/bin/sh -c script`.
#[derive(Debug, Clone)]
pub struct Job {
    spec: serde_json::Value,
}

impl Job {
    /// A batch job of one task (every other field at its default).
    pub fn batch(name: &str, script: &str) -> Job {
        Job {
            spec: serde_json::json!({
                "name": name,
                "command": ["/bin/sh", "-c", script],
            }),
        }
    }

    /// A service job of one task: restarted whenever it ends.
    pub fn service(name: &str, script: &str) -> Job {
        Job::batch(name, script).set("type", "service")
    }

    fn set(mut self, key: &str, value: impl Into<serde_json::Value>) -> Job {
        self.spec[key] = value.into();
        self
    }

    pub fn count(self, n: u32) -> Job {
        self.set("count", n)
    }

    /// `round-robin`, `least-loaded`, `priority` or `elastic-sharding`.
    pub fn policy(self, policy: &str) -> Job {
        self.set("policy", policy)
    }

    pub fn priority(self, priority: u8) -> Job {
        self.set("priority", priority)
    }

    /// `resources.cpu` in millicores.
    pub fn cpu_millis(mut self, millis: u64) -> Job {
        self.spec["resources"]["cpu"] = format!("{millis}m").into();
        self
    }

    /// `shards: n` with `elastic: {min, max}`.
    pub fn elastic(self, shards: u32, min: u32, max: u32) -> Job {
        self.set("shards", shards)
            .set("elastic", serde_json::json!({ "min": min, "max": max }))
    }

    /// Only on the node started as `node` (agents carry the label `slot: <id>`).
    pub fn on_node(mut self, node: &NodeId) -> Job {
        self.spec["constraints"]["labels"]["slot"] = node.as_str().into();
        self
    }

    /// `resources.gpu`.
    pub fn gpus(mut self, n: u32) -> Job {
        self.spec["resources"]["gpu"] = n.into();
        self
    }

    /// `kill_timeout`, e.g. `"10s"`.
    pub fn kill_timeout(self, d: &str) -> Job {
        self.set("kill_timeout", d)
    }

    /// One entry of `env`.
    pub fn env(mut self, key: &str, value: &str) -> Job {
        self.spec["env"][key] = value.into();
        self
    }

    /// `restart: {attempts, delay}`.
    pub fn restart(mut self, attempts: u32, delay: &str) -> Job {
        self.spec["restart"] = serde_json::json!({ "attempts": attempts, "delay": delay });
        self
    }

    pub fn id(&self) -> JobId {
        self.spec["name"]
            .as_str()
            .and_then(|n| JobId::new(n).ok())
            .expect("the job's name is a valid job id")
    }

    pub fn to_json(&self) -> String {
        self.spec.to_string()
    }
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A `drover-master` process.
#[derive(Debug)]
pub struct MasterProc {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
}

impl MasterProc {
    /// The master's log (JSON lines).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Starts a master with `config` (YAML) in `dir`, listening on an
    /// ephemeral port that it reports in its JSON log ("master listening").
    fn start(dir: &Path, config: &str, env: &[(String, String)]) -> MasterProc {
        let config_path = dir.join("master.yaml");
        fs::write(&config_path, config).expect("writing the master config");
        MasterProc::spawn(dir, env)
    }

    /// Starts `dir`'s master on its config; an earlier run's log is kept
    /// as `master.log.1`.
    fn spawn(dir: &Path, env: &[(String, String)]) -> MasterProc {
        let log = dir.join("master.log");
        if log.exists() {
            fs::rename(&log, dir.join("master.log.1")).expect("keeping the earlier log");
        }
        let file = File::create(&log).expect("creating the master's log");
        let child = Command::new(binary("drover-master"))
            .arg("--config")
            .arg(dir.join("master.yaml"))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            // tracing's fmt logs to stdout; errors at start go to stderr.
            .stdout(file.try_clone().expect("cloning a file handle"))
            .stderr(file)
            .spawn()
            .expect("starting drover-master");
        let mut master = MasterProc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            dir: dir.to_path_buf(),
            env: env.to_vec(),
        };
        let found = wait_until(START_TIMEOUT, || {
            if let Some(addr) = listening_addr(&master.log) {
                master.addr = addr;
                return true;
            }
            assert!(
                !matches!(master.child.try_wait(), Ok(Some(_))),
                "drover-master exited at start:\n{}",
                tail(&master.log, 40)
            );
            false
        });
        assert!(
            found,
            "drover-master did not log its address within {START_TIMEOUT:?}:\n{}",
            tail(&master.log, 40)
        );
        master
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process has exited (or was killed).
    pub fn exited(&self) -> bool {
        !pid_alive(self.child.id() as i32)
    }
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `addr` of the "master listening" line of a JSON log.
fn listening_addr(log: &Path) -> Option<SocketAddr> {
    fs::read_to_string(log).ok()?.lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = v.get("fields")?;
        if fields.get("message")?.as_str()? != "master listening" {
            return None;
        }
        fields.get("addr")?.as_str()?.parse().ok()
    })
}

/// A `drover-agent` with its node id and data dir; its process comes and goes.
#[derive(Debug)]
pub struct AgentProc {
    node: NodeId,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Runs in this network namespace (`ip netns exec`).
    netns: Option<String>,
    /// Lines appended to its config.
    extra: String,
}

impl AgentProc {
    /// The agent's log (stdout and stderr, across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// `<dir>/data`: node id, `state.json`, alloc dirs.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The running process's PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(
        &mut self,
        masters: &[SocketAddr],
        kill_grace: Duration,
        fake_gpus: u32,
        token: Option<&str>,
        pki: Option<&TestPki>,
    ) {
        let masters: Vec<String> = masters.iter().map(|m| format!("\"{m}\"")).collect();
        let config = format!(
            "masters: [{masters}]\n\
             node_id: {node}\n\
             data_dir: {data}\n\
             log_listen: 127.0.0.1:0\n\
             labels: {{ slot: {node} }}\n\
             kill_grace: {grace}ms\n\
             fake_gpus: [{gpus}]\n\
             token: {token}\n\
             {tls}{extra}",
            extra = self.extra,
            token = token.unwrap_or("null"),
            tls = match pki {
                Some(p) => format!(
                    "ca_file: {}\ntls: {{ cert_file: {}, key_file: {} }}\n",
                    p.ca.display(),
                    p.agent.0.display(),
                    p.agent.1.display()
                ),
                None => String::new(),
            },
            masters = masters.join(", "),
            node = self.node,
            data = serde_json::Value::from(self.data_dir().display().to_string()),
            grace = kill_grace.as_millis(),
            gpus = vec!["{model: T4, memory: 16Gi}"; fake_gpus as usize].join(", "),
        );
        let config_path = self.dir.join("agent.yaml");
        fs::write(&config_path, config).expect("writing an agent config");
        // One log across restarts, so a failure shows the whole story.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening an agent's log");
        let mut command = match &self.netns {
            // `ip netns exec` execs the agent: the child's PID is the agent's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary("drover-agent"));
                c
            }
            None => Command::new(binary("drover-agent")),
        };
        let child = command
            .arg("--config")
            .arg(&config_path)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning a file handle"))
            .stderr(log)
            .spawn()
            .expect("starting drover-agent");
        self.child = Some(child);
    }

    /// `kill -9`: the agent dies; its shims and tasks go on.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit: the agent stops, tasks go on.
    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        kill(pid, Signal::SIGTERM).expect("sending SIGTERM to the agent");
        let exited = wait_until(Duration::from_secs(15), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "drover-agent {} did not stop within 15 s of SIGTERM:\n{}",
                self.node,
                tail(&self.log, 40)
            );
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    agents: usize,
    node_timeout: Duration,
    suspect_after_missed: u32,
    default_policy: &'static str,
    kill_grace: Duration,
    /// Masters on a private etcd (0: one master on the embedded store).
    etcd_masters: usize,
    fake_gpus: u32,
    /// Authentication on: the client holds [`ADMIN_TOKEN`], the agents join
    /// with [`JOIN_TOKEN`].
    tokens: bool,
    /// TLS everywhere: the REST API, the agents' log servers, and every
    /// client of them, with a CA of the test's own.
    tls: bool,
    /// The master listens here rather than on 127.0.0.1 (with `insecure`
    /// when there are no tokens).
    master_ip: Option<std::net::IpAddr>,
    /// Environment of the master processes.
    master_env: Vec<(String, String)>,
    /// `liveness.max_down_per_second`.
    max_down_per_second: u32,
    /// `api.max_requests`, `api.max_agent_requests`.
    max_requests: Option<(usize, usize)>,
    /// `scheduler.max_pending_tasks`.
    max_pending_tasks: Option<usize>,
    /// By agent index: the network namespace it runs in.
    agent_netns: BTreeMap<usize, String>,
    /// By agent index: lines added to its config.
    agent_extra: BTreeMap<usize, String>,
}

/// A CA and the certificates it signed for a test cluster, as PEM files.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca: PathBuf,
    pub master: (PathBuf, PathBuf),
    pub agent: (PathBuf, PathBuf),
}

impl TestPki {
    /// Makes a CA and certificates for 127.0.0.1 in `dir`.
    pub fn create(dir: &Path) -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "drover e2e CA");
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("the CA certificate");
        let ca_path = dir.join("ca.pem");
        fs::write(&ca_path, ca_cert.pem()).expect("writing the CA");
        let issuer = Issuer::from_params(&ca, &ca_key);
        let issue = |name: &str| {
            let params =
                CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("cert params");
            let key = KeyPair::generate().expect("a key");
            let cert = params.signed_by(&key, &issuer).expect("a certificate");
            let (c, k) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            fs::write(&c, cert.pem()).expect("writing a certificate");
            fs::write(&k, key.serialize_pem()).expect("writing a key");
            (c, k)
        };
        let master = issue("master");
        let agent = issue("agent");
        TestPki {
            ca: ca_path,
            master,
            agent,
        }
    }
}

/// With [`ClusterBuilder::tokens`]: the client's token (admin role).
pub const ADMIN_TOKEN: &str = "e2e-admin-token-0123456789";
/// With [`ClusterBuilder::tokens`]: the agents' join token (agent role).
pub const JOIN_TOKEN: &str = "e2e-join-token-0123456789";
/// With [`ClusterBuilder::tokens`]: two submitters, `ci` and `other`.
pub const CI_TOKEN: &str = "e2e-ci-token-0123456789";
pub const OTHER_TOKEN: &str = "e2e-other-token-0123456789";

impl ClusterBuilder {
    /// Authentication on: an admin token for the client and an agent join
    /// token with which each agent joins and gets its node's credential.
    pub fn tokens(mut self) -> Self {
        self.tokens = true;
        self
    }

    /// TLS for the REST API and the agents' log servers; the client and the
    /// agents verify with the cluster's own CA ([`Cluster::pki`]).
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Agents to start (node ids `n1` ...); 0 for a master alone.
    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }

    /// A master that declares a silent node down after
    /// [`FAST_NODE_TIMEOUT`] (suspect after 3 missed heartbeats), for the
    /// tests that kill agents. Default: [`SLOW_NODE_TIMEOUT`], suspect after
    /// 20 missed heartbeats.
    pub fn fast_failure_detection(mut self) -> Self {
        self.node_timeout = FAST_NODE_TIMEOUT;
        self.suspect_after_missed = 3;
        self
    }

    pub fn default_policy(mut self, policy: &'static str) -> Self {
        self.default_policy = policy;
        self
    }

    /// Each agent reports `n` pretend GPUs (model `T4`).
    pub fn fake_gpus(mut self, n: u32) -> Self {
        self.fake_gpus = n;
        self
    }

    /// `n` masters on a private etcd (leader lease [`LEASE_TTL`]) instead
    /// of one on the embedded store. Agents and the client are given every
    /// master's address.
    pub fn etcd_masters(mut self, n: usize) -> Self {
        self.etcd_masters = n;
        self
    }

    /// The master listens on `ip` (one of this machine's addresses, such as
    /// the host end of a veth pair the test made) instead of 127.0.0.1.
    pub fn master_ip(mut self, ip: std::net::IpAddr) -> Self {
        self.master_ip = Some(ip);
        self
    }

    /// An environment variable for the master processes.
    pub fn master_env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.master_env.push((key.to_string(), value.into()));
        self
    }

    /// `liveness.max_down_per_second` (default 1).
    pub fn max_down_per_second(mut self, n: u32) -> Self {
        self.max_down_per_second = n;
        self
    }

    /// `api.max_requests` and `api.max_agent_requests`.
    pub fn max_requests(mut self, users: usize, agents: usize) -> Self {
        self.max_requests = Some((users, agents));
        self
    }

    /// `scheduler.max_pending_tasks`.
    pub fn max_pending_tasks(mut self, n: usize) -> Self {
        self.max_pending_tasks = Some(n);
        self
    }

    /// Agent `i` (0-based) runs in network namespace `ns`, which the test
    /// made, and which must reach the master's address.
    pub fn agent_netns(mut self, i: usize, ns: &str) -> Self {
        self.agent_netns.insert(i, ns.to_string());
        self
    }

    /// Lines added to agent `i`'s config (YAML, each ending in a newline).
    pub fn agent_config(mut self, i: usize, yaml: &str) -> Self {
        self.agent_extra.insert(i, yaml.to_string());
        self
    }

    /// Starts the master, then the agents, and returns once every agent is
    /// registered and ready.
    pub async fn start(self) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("drover-e2e-")
            .tempdir()
            .expect("creating the test's temp dir");
        // Tasks run as `nobody`: it must get through to the agents' alloc
        // dirs and write to the scratch dir.
        make_dir(root.path(), 0o755);
        let scratch = root.path().join("scratch");
        make_dir(&scratch, 0o777);
        let pki = self.tls.then(|| TestPki::create(root.path()));
        let etcd = (self.etcd_masters > 0).then(Etcd::start);
        let store = match &etcd {
            Some(etcd) => format!(
                "store: {{ backend: etcd, etcd: {{ endpoints: [\"{}\"], lease_ttl: {}s }} }}\n",
                etcd.endpoint(),
                LEASE_TTL.as_secs()
            ),
            None => String::new(),
        };
        let mut masters = Vec::new();
        for i in 1..=self.etcd_masters.max(1) {
            let name = if etcd.is_some() {
                format!("master-{i}")
            } else {
                "master".to_string()
            };
            let master_dir = root.path().join(name);
            make_dir(&master_dir, 0o755);
            let config = format!(
                "listen: {ip}:0\n\
                 insecure: {insecure}\n\
                 data_dir: {data}\n\
                 {store}\
                 scheduler: {{ default_policy: {policy}, pass_interval: 250ms{pending} }}\n\
                 liveness: {{ heartbeat_interval: {hb}ms, node_timeout: {timeout}ms, suspect_after_missed: {suspect}, max_down_per_second: {down_rate} }}\n\
                 {api}\
                 log: {{ level: info, format: json }}\n\
                 {auth}{tls}",
                ip = self
                    .master_ip
                    .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
                insecure = self.master_ip.is_some() && !self.tls,
                pending = self
                    .max_pending_tasks
                    .map(|n| format!(", max_pending_tasks: {n}"))
                    .unwrap_or_default(),
                down_rate = self.max_down_per_second,
                api = self
                    .max_requests
                    .map(|(u, a)| {
                        format!("api: {{ max_requests: {u}, max_agent_requests: {a} }}\n")
                    })
                    .unwrap_or_default(),
                tls = match &pki {
                    Some(p) => format!(
                        "tls: {{ cert_file: {}, key_file: {}, agent_ca_file: {} }}\n",
                        p.master.0.display(),
                        p.master.1.display(),
                        p.ca.display()
                    ),
                    None => String::new(),
                },
                auth = if self.tokens {
                    format!(
                        "auth: {{ tokens: [{{ name: ops, role: admin, token: {ADMIN_TOKEN} }}, \
                         {{ name: join, role: agent, token: {JOIN_TOKEN} }}, \
                         {{ name: ci, role: submitter, token: {CI_TOKEN} }}, \
                         {{ name: other, role: submitter, token: {OTHER_TOKEN} }}] }}\n"
                    )
                } else {
                    String::new()
                },
                data = serde_json::Value::from(master_dir.join("data").display().to_string()),
                policy = self.default_policy,
                hb = HEARTBEAT_INTERVAL.as_millis(),
                timeout = self.node_timeout.as_millis(),
                suspect = self.suspect_after_missed,
            );
            masters.push(MasterProc::start(&master_dir, &config, &self.master_env));
        }
        let addrs: Vec<String> = masters.iter().map(|m| m.addr().to_string()).collect();
        let client = make_client(addrs, self.tokens, pki.as_ref());
        let mut cluster = Cluster {
            join_token: self.tokens.then(|| JOIN_TOKEN.to_string()),
            pki,
            masters,
            etcd,
            agents: Vec::new(),
            client,
            scratch,
            kill_grace: self.kill_grace,
            fake_gpus: self.fake_gpus,
            node_timeout: self.node_timeout,
            root,
        };
        if cluster.etcd.is_some() {
            cluster.leader(START_TIMEOUT).await;
        }
        for i in 1..=self.agents {
            let node = NodeId::new(format!("n{i}")).expect("a valid node id");
            let dir = cluster.root.path().join("agents").join(node.as_str());
            make_dir(&dir, 0o755);
            cluster.agents.push(AgentProc {
                log: dir.join("agent.log"),
                node,
                dir,
                child: None,
                netns: self.agent_netns.get(&(i - 1)).cloned(),
                extra: self.agent_extra.get(&(i - 1)).cloned().unwrap_or_default(),
            });
        }
        for i in 0..self.agents {
            cluster.start_agent(i).await;
        }
        cluster
    }
}

/// A client of `addrs` with the admin token when `tokens`, and the
/// cluster's CA when it has one.
fn make_client(addrs: Vec<String>, tokens: bool, pki: Option<&TestPki>) -> Client {
    let token = tokens.then(|| ADMIN_TOKEN.to_string());
    let client = Client::new(addrs, token).with_timeout(Duration::from_secs(10));
    match pki {
        Some(p) => {
            let files = drover_tls::ClientFiles {
                ca_file: Some(p.ca.clone()),
                identity: None,
            };
            client.with_tls(drover_tls::connector(&files).expect("the test CA"))
        }
        None => client,
    }
}

/// The leader lease of clusters built with [`ClusterBuilder::etcd_masters`].
pub const LEASE_TTL: Duration = Duration::from_secs(2);

/// A master (or several, on etcd) and its agents, all stopped (with
/// whatever they started) on drop.
#[derive(Debug)]
pub struct Cluster {
    /// One, or [`ClusterBuilder::etcd_masters`]; a killed one stays here.
    masters: Vec<MasterProc>,
    etcd: Option<Etcd>,
    agents: Vec<AgentProc>,
    client: Client,
    /// What the agents join with, when authentication is on.
    join_token: Option<String>,
    /// The CA and certificates, when TLS is on.
    pki: Option<TestPki>,
    scratch: PathBuf,
    kill_grace: Duration,
    fake_gpus: u32,
    node_timeout: Duration,
    // Last, so that it is removed after every process is gone.
    root: TempDir,
}

impl Cluster {
    /// A master with 3 agents, heartbeats every 300 ms, `node_timeout`
    /// [`SLOW_NODE_TIMEOUT`] unless [`ClusterBuilder::fast_failure_detection`],
    /// agents' `kill_grace` 500 ms.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            agents: 3,
            node_timeout: SLOW_NODE_TIMEOUT,
            suspect_after_missed: 20,
            default_policy: "least-loaded",
            kill_grace: Duration::from_millis(500),
            etcd_masters: 0,
            fake_gpus: 0,
            tokens: false,
            tls: false,
            master_ip: None,
            master_env: Vec::new(),
            max_down_per_second: 1,
            max_requests: None,
            max_pending_tasks: None,
            agent_netns: BTreeMap::new(),
            agent_extra: BTreeMap::new(),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The CA and certificates of a cluster built with [`ClusterBuilder::tls`].
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_ref()
    }

    /// The first master (the only one without etcd).
    pub fn master(&self) -> &MasterProc {
        &self.masters[0]
    }

    /// Every master's address, as agents and the client are given them.
    pub fn master_addrs(&self) -> Vec<String> {
        self.masters.iter().map(|m| m.addr().to_string()).collect()
    }

    /// Master `i` (from 0).
    pub fn master_at(&self, i: usize) -> &MasterProc {
        &self.masters[i]
    }

    /// The private etcd of a cluster built with
    /// [`ClusterBuilder::etcd_masters`].
    pub fn etcd(&self) -> &Etcd {
        self.etcd
            .as_ref()
            .expect("a cluster built with etcd masters")
    }

    /// `kill -9` master `i`.
    pub fn kill_master(&mut self, i: usize) {
        self.masters[i].kill();
    }

    /// `kill -9` master `i` and start it again on its data dir and config.
    /// Its port is new: the client is pointed at it, the agents are not.
    pub fn restart_master(&mut self, i: usize) {
        self.masters[i].kill();
        let (dir, env) = (self.masters[i].dir.clone(), self.masters[i].env.clone());
        self.masters[i] = MasterProc::spawn(&dir, &env);
        let addrs: Vec<String> = self.masters.iter().map(|m| m.addr().to_string()).collect();
        self.client = make_client(addrs, self.join_token.is_some(), self.pki.as_ref());
    }

    /// The value of one sample on the leader's `/metrics`, such as
    /// `drover_http_throttled_total{reason="api"}`; 0 when absent (a
    /// labelled counter appears at its first increment).
    pub async fn metric(&self, sample: &str) -> f64 {
        let reply = self
            .client
            .raw("GET", "/metrics", None)
            .await
            .expect("reading /metrics");
        String::from_utf8_lossy(&reply.body)
            .lines()
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// SIGSTOP agent `i`: it falls silent at once, as a hung or cut-off
    /// machine does; its tasks run on.
    pub fn pause_agent(&self, i: usize) {
        let pid = self.agents[i].pid().expect("the agent is running");
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("SIGSTOP to the agent");
    }

    /// SIGCONT agent `i` after [`Cluster::pause_agent`].
    pub fn resume_agent(&self, i: usize) {
        let pid = self.agents[i].pid().expect("the agent is running");
        kill(Pid::from_raw(pid as i32), Signal::SIGCONT).expect("SIGCONT to the agent");
    }

    /// Which master leads (its `/readyz` answers 200), waiting up to
    /// `timeout` for one to.
    pub async fn leader(&self, timeout: Duration) -> usize {
        eventually("a master to lead", timeout, || async {
            for (i, m) in self.masters.iter().enumerate() {
                if m.exited() {
                    continue;
                }
                let ready = Client::new(vec![m.addr().to_string()], None)
                    .with_timeout(Duration::from_secs(2))
                    .raw("GET", "/readyz", None)
                    .await;
                if matches!(ready, Ok(r) if r.status == 200) {
                    return Ok(i);
                }
            }
            Err("none ready".to_string())
        })
        .await
    }

    pub fn node_timeout(&self) -> Duration {
        self.node_timeout
    }

    /// The agent started `i`-th (from 0).
    pub fn agent(&self, i: usize) -> &AgentProc {
        &self.agents[i]
    }

    /// Node id of agent `i` (`n{i+1}`).
    pub fn node(&self, i: usize) -> NodeId {
        self.agents[i].node.clone()
    }

    /// World-writable directory for the files tasks write.
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// A path in the scratch dir.
    pub fn file(&self, name: &str) -> PathBuf {
        self.scratch.join(name)
    }

    /// A new world-writable directory in the scratch dir.
    pub fn scratch_dir(&self, name: &str) -> PathBuf {
        let dir = self.scratch.join(name);
        make_dir(&dir, 0o777);
        dir
    }

    /// Creates an empty file (a gate a task waits for).
    pub fn touch(&self, path: &Path) {
        File::create(path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
    }

    /// Starts agent `i` (again) on its data dir and node id, and waits until
    /// the master has its new registration.
    pub async fn start_agent(&mut self, i: usize) {
        assert!(
            self.agents[i].child.is_none(),
            "agent {} is already running",
            self.agents[i].node
        );
        let node = self.agents[i].node.clone();
        let before = self
            .client
            .node(&node)
            .await
            .map_or(0, |n| n.registered_at_ms);
        let masters: Vec<SocketAddr> = self.masters.iter().map(MasterProc::addr).collect();
        let token = self.join_token.clone();
        let pki = self.pki.clone();
        self.agents[i].spawn(
            &masters,
            self.kill_grace,
            self.fake_gpus,
            token.as_deref(),
            pki.as_ref(),
        );
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(n) = self.client.node(&node).await {
                if n.registered_at_ms > before {
                    // The log server's port was picked by the kernel (port 0)
                    // and advertised by the agent.
                    assert!(!n.desc.log_addr.ends_with(":0"), "{n:?}");
                    return;
                }
            }
            let agent = &mut self.agents[i];
            let exited = agent
                .child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
            assert!(
                !exited,
                "drover-agent {node} exited at start:\n{}",
                tail(&agent.log, 40)
            );
            assert!(
                Instant::now() < deadline,
                "drover-agent {node} did not register within {START_TIMEOUT:?}:\n{}",
                tail(&agent.log, 40)
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// `kill -9` agent `i` (only the agent: its shims and tasks keep running,
    /// as they would after an agent crash).
    pub fn kill_agent(&mut self, i: usize) {
        self.agents[i].kill();
    }

    /// SIGTERM agent `i` and wait for it to exit (tasks keep running).
    pub fn stop_agent(&mut self, i: usize) {
        self.agents[i].terminate();
    }

    /// Submits `job`, expecting a new job.
    pub async fn submit(&self, job: &Job) -> JobView {
        let answer = self
            .client
            .submit(&job.to_json(), drover_api::client::SpecFormat::Json)
            .await
            .unwrap_or_else(|e| panic!("submitting {}: {e}", job.id()));
        assert_eq!(
            answer.outcome,
            drover_api::views::SubmitOutcome::Created,
            "{answer:?}"
        );
        answer.job
    }

    pub async fn job(&self, id: &JobId) -> JobView {
        self.client
            .job(id)
            .await
            .unwrap_or_else(|e| panic!("GET job {id}: {e}"))
    }

    pub async fn tasks(&self, id: &JobId) -> Vec<TaskView> {
        self.client
            .tasks(id)
            .await
            .unwrap_or_else(|e| panic!("GET tasks of {id}: {e}"))
    }

    pub async fn task(&self, id: &TaskId) -> TaskView {
        self.client
            .task(id)
            .await
            .unwrap_or_else(|e| panic!("GET task {id}: {e}"))
    }

    pub async fn node_view(&self, id: &NodeId) -> NodeView {
        self.client
            .node(id)
            .await
            .unwrap_or_else(|e| panic!("GET node {id}: {e}"))
    }

    /// Waits until job `id` is in `state`, and returns it.
    pub async fn wait_job(&self, id: &JobId, state: JobState, timeout: Duration) -> JobView {
        eventually(&format!("job {id} to be {state}"), timeout, || async {
            let job = self.client.job(id).await.map_err(|e| e.to_string())?;
            if job.state == state {
                Ok(job)
            } else {
                Err(format!("{} with tasks {:?}", job.state, job.tasks))
            }
        })
        .await
    }

    /// Waits until node `id` is in `state`, and returns it.
    pub async fn wait_node(&self, id: &NodeId, state: NodeState, timeout: Duration) -> NodeView {
        eventually(&format!("node {id} to be {state}"), timeout, || async {
            let node = self.client.node(id).await.map_err(|e| e.to_string())?;
            if node.state == state {
                Ok(node)
            } else {
                Err(format!("{node:?}"))
            }
        })
        .await
    }

    /// Waits until every task of `id` has its latest attempt running, and
    /// returns the tasks.
    pub async fn wait_running(&self, id: &JobId, timeout: Duration) -> Vec<TaskView> {
        eventually(&format!("every task of {id} to run"), timeout, || async {
            let tasks = self.client.tasks(id).await.map_err(|e| e.to_string())?;
            let states: Vec<String> = tasks
                .iter()
                .map(|t| format!("{}: {}", t.id, t.state))
                .collect();
            if !tasks.is_empty()
                && tasks
                    .iter()
                    .all(|t| t.state == drover_api::TaskState::Running)
            {
                Ok(tasks)
            } else {
                Err(states.join(", "))
            }
        })
        .await
    }

    /// How many tasks of `id` each node ran (by their latest attempt).
    pub async fn placements(&self, id: &JobId) -> BTreeMap<NodeId, usize> {
        let mut by_node = BTreeMap::new();
        for task in self.tasks(id).await {
            if let Some(alloc) = task.latest() {
                *by_node.entry(alloc.node.clone()).or_default() += 1;
            }
        }
        by_node
    }

    /// The whole log of a task's latest attempt, read through the master.
    pub async fn logs(&self, task: &TaskId, stream: LogStream) -> String {
        let mut reader = self
            .client
            .logs(task, stream, 0, false)
            .await
            .unwrap_or_else(|e| panic!("logs of {task}: {e}"));
        let mut out = Vec::new();
        while let Some(chunk) = reader
            .chunk()
            .await
            .unwrap_or_else(|e| panic!("reading the logs of {task}: {e}"))
        {
            out.extend_from_slice(&chunk);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The last lines of every process's log, for a failing test's output.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for (i, m) in self.masters.iter().enumerate() {
            let _ = writeln!(
                out,
                "--- master {i} (pid {}) ---\n{}",
                m.pid(),
                tail(&m.log, lines)
            );
        }
        if let Some(etcd) = &self.etcd {
            let _ = writeln!(out, "--- etcd ---\n{}", etcd.log_tail());
        }
        for a in &self.agents {
            let _ = writeln!(out, "--- agent {} ---\n{}", a.node, tail(&a.log, lines));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(
                err,
                "e2e: test failed; cluster under {}\n{}",
                self.root.path().display(),
                self.log_tails(30)
            );
        }
        for master in &mut self.masters {
            master.kill();
        }
        for agent in &mut self.agents {
            agent.kill();
        }
        kill_leftovers(self.root.path());
        for agent in &self.agents {
            remove_agent_cgroups(&agent.data_dir());
        }
    }
}
