//! The real `drover` binary against a real master started in this process
//! (the `drover_master` library on an embedded store, on an ephemeral
//! loopback port). Where tasks must run, the test plays the agent: it
//! registers a node through the agent protocol and reports the node's
//! allocations running, then succeeded or failed.
//!
//! Every wait is a poll with a deadline; a CLI process that outlives its
//! deadline is killed and the test fails.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drover_api::client::Client;
use drover_api::protocol::{
    AllocUpdate, HeartbeatRequest, NodeDescriptor, NodeResources, NodeUsage, Offer,
    RegisterRequest, Reserved, PROTOCOL_VERSION,
};
use drover_api::views::{
    ClusterSummary, JobView, NodeView, PlanAnswer, StopAnswer, SubmitAnswer, SubmitOutcome,
    TaskView,
};
use drover_api::{AllocId, AllocState, JobId, JobState, NodeId, NodeState, TaskState};
use drover_master::auth::{Auth, Role};
use drover_master::clock::Clock;
use drover_master::core::{Master, Settings};
use drover_master::server;
use drover_master::store::EmbeddedStore;
use tempfile::TempDir;
use tokio::sync::oneshot;
use warp::Filter;

/// How long any awaited condition, or one CLI run, may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// A batch job of two tasks that fit a test node (4 CPUs, 8 GiB) together.
const HELLO: &str = r#"name: hello
count: 2
command: ["/bin/true"]
resources: { cpu: 500m, memory: 256Mi }
"#;

// ---------------------------------------------------------------------------
// Harness: a master, the binary, a fake agent
// ---------------------------------------------------------------------------

/// A master serving on loopback from its own runtime, so that the test
/// thread may block on the CLI process meanwhile.
struct TestMaster {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    /// For the test's own calls: reading state and playing the agent.
    client: Client,
    dir: TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl TestMaster {
    fn start() -> TestMaster {
        TestMaster::with_auth(Auth::disabled(), None)
    }

    fn with_auth(auth: Auth, token: Option<&str>) -> TestMaster {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temp dir");
        // Long liveness timers: the fake agent heartbeats only when it
        // reports, and its node must not turn suspect meanwhile.
        let settings = Settings {
            heartbeat_interval: Duration::from_secs(60),
            node_timeout: Duration::from_secs(600),
            ..Settings::default()
        };
        let store_dir = dir.path().join("store");
        let (addr, stop) = rt.block_on(async {
            let store = Arc::new(EmbeddedStore::open(&store_dir).expect("open the store"));
            let master = Master::open(settings, store, Clock::system())
                .await
                .expect("open the master");
            let listener = server::bind("127.0.0.1:0".parse().expect("an address")).expect("bind");
            let addr = listener.local_addr().expect("a local address");
            let (tx, rx) = oneshot::channel::<()>();
            tokio::spawn(server::run(master, Arc::new(auth), listener, None, async {
                let _ = rx.await;
            }));
            (addr, tx)
        });
        let client = Client::new(vec![addr.to_string()], token.map(str::to_string));
        TestMaster {
            rt,
            addr,
            client,
            dir,
            stop: Some(stop),
        }
    }

    fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `drover --addr <this master> ARGS`, run to its end.
    fn drover(&self, args: &[&str]) -> Done {
        self.spawn(args).finish()
    }

    /// As `drover`, with `-o json`, expecting success; the output parsed.
    fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> T {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let done = self.drover(&all);
        done.assert_code(0);
        serde_json::from_str(&done.stdout)
            .unwrap_or_else(|e| panic!("`drover {}` did not print the type: {e}", all.join(" ")))
    }

    fn spawn(&self, args: &[&str]) -> Proc {
        let mut cmd = drover();
        cmd.arg("--addr").arg(self.addr()).args(args);
        Proc::spawn(cmd)
    }

    /// Writes a spec file into the test's temp dir.
    fn spec_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a spec file");
        path
    }

    /// Submits `text` with the CLI and expects success.
    fn submit(&self, name: &str, text: &str) {
        let path = self.spec_file(name, text);
        self.drover(&["job", "run", path_str(&path)]).assert_code(0);
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    // ---- the fake agent ----

    /// Registers a node with 4 CPUs and 8 GiB whose log server is `log_addr`.
    fn add_node(&self, id: &str, log_addr: &str) {
        let req = RegisterRequest {
            node_id: Some(NodeId::new(id).expect("a node id")),
            desc: NodeDescriptor {
                hostname: format!("{id}.test"),
                log_addr: log_addr.to_string(),
                resources: NodeResources {
                    cpu_millis: 4000,
                    memory_bytes: 8 << 30,
                    gpus: Vec::new(),
                },
                reserved: Reserved::default(),
                labels: [("zone".to_string(), "a".to_string())].into(),
                attributes: BTreeMap::new(),
                version: "0.1.0-test".to_string(),
            },
            protocol: PROTOCOL_VERSION,
            running_allocs: Vec::new(),
        };
        self.block_on(self.client.register(&req))
            .expect("register a node");
    }

    /// Reports alloc state changes from `node`, oldest first.
    fn report(&self, node: &str, updates: &[(&AllocId, AllocState, Option<i32>)]) {
        let req = HeartbeatRequest {
            node_id: NodeId::new(node).expect("a node id"),
            offer: Offer::default(),
            usage: NodeUsage::default(),
            updates: updates
                .iter()
                .map(|(alloc, state, exit_code)| AllocUpdate {
                    alloc: (*alloc).clone(),
                    state: *state,
                    exit_code: *exit_code,
                    signal: None,
                    message: None,
                    at_unix_ms: unix_ms(),
                })
                .collect(),
        };
        let answer = self
            .block_on(self.client.heartbeat(&req))
            .expect("heartbeat");
        assert!(!answer.reregister, "the master forgot node {node}");
    }

    /// The job's tasks; `None` while it does not exist.
    fn tasks(&self, job: &str) -> Option<Vec<TaskView>> {
        let id = JobId::new(job).expect("a job id");
        self.block_on(self.client.tasks(&id)).ok()
    }

    /// Waits until each of the job's `count` tasks has an assigned alloc
    /// and returns those allocs.
    fn assigned(&self, job: &str, count: usize) -> Vec<AllocId> {
        eventually(&format!("{count} assigned tasks of {job}"), || {
            let tasks = self.tasks(job)?;
            let allocs: Vec<AllocId> = tasks
                .iter()
                .filter_map(|t| t.latest())
                .filter(|a| a.state == AllocState::Assigned)
                .map(|a| a.id.clone())
                .collect();
            (tasks.len() == count && allocs.len() == count).then_some(allocs)
        })
    }

    /// Plays the agent for a job on node `node`: reports each task's alloc
    /// running and then ending as `end` says (`None`: left running).
    fn run_job(
        &self,
        node: &str,
        job: &str,
        count: usize,
        end: impl Fn(&AllocId) -> Option<(AllocState, Option<i32>)>,
    ) {
        for alloc in self.assigned(job, count) {
            let mut updates = vec![(&alloc, AllocState::Running, None)];
            if let Some((state, code)) = end(&alloc) {
                updates.push((&alloc, state, code));
            }
            self.report(node, &updates);
        }
    }

    fn job_state(&self, job: &str) -> Option<JobState> {
        let id = JobId::new(job).expect("a job id");
        self.block_on(self.client.job(&id)).ok().map(|j| j.state)
    }

    fn wait_job_state(&self, job: &str, state: JobState) {
        eventually(&format!("job {job} {state}"), || {
            (self.job_state(job) == Some(state)).then_some(())
        });
    }
}

impl Drop for TestMaster {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The binary, with no address or token from the test's own environment.
fn drover() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drover"));
    cmd.env_remove("DROVER_ADDR").env_remove("DROVER_TOKEN");
    cmd
}

/// A running CLI process whose output goes to files (no pipe to fill up).
struct Proc {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    _dir: TempDir,
}

/// A finished CLI process.
#[derive(Debug)]
struct Done {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        Proc::spawn_with_stdin(&mut cmd, Stdio::null())
    }

    fn spawn_with_stdin(cmd: &mut Command, stdin: Stdio) -> Proc {
        let dir = tempfile::tempdir().expect("a temp dir");
        let out = dir.path().join("stdout");
        let err = dir.path().join("stderr");
        let child = cmd
            .stdin(stdin)
            .stdout(std::fs::File::create(&out).expect("create stdout file"))
            .stderr(std::fs::File::create(&err).expect("create stderr file"))
            .spawn()
            .expect("start drover");
        Proc {
            child,
            out,
            err,
            _dir: dir,
        }
    }

    /// Waits for the process, killing it (and failing) past the deadline.
    fn finish(mut self) -> Done {
        let end = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for drover") {
                break status;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "drover ran past {DEADLINE:?}; stdout: {} stderr: {}",
                    read(&self.out),
                    read(&self.err)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Done {
            code: status.code().unwrap_or(-1),
            stdout: read(&self.out),
            stderr: read(&self.err),
        }
    }
}

impl Done {
    #[track_caller]
    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit status; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The words of the stdout line whose first word is `first`.
    #[track_caller]
    fn row(&self, first: &str) -> Vec<&str> {
        self.stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.first() == Some(&first))
            .unwrap_or_else(|| panic!("no line starting with {first:?} in:\n{}", self.stdout))
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Polls `f` until it gives a value, failing the test past the deadline.
#[track_caller]
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port that nothing listens on (bound, then released).
fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("an address");
    drop(l);
    addr.to_string()
}

fn succeed(_: &AllocId) -> Option<(AllocState, Option<i32>)> {
    Some((AllocState::Succeeded, Some(0)))
}

// ---------------------------------------------------------------------------
// job run
// ---------------------------------------------------------------------------

#[test]
fn job_run_creates_a_job_and_a_resubmission_reports_it_unchanged() {
    let m = TestMaster::start();
    let spec = m.spec_file("hello.yaml", HELLO);

    let first = m.drover(&["job", "run", path_str(&spec)]);
    first.assert_code(0);
    assert_eq!(
        first.stdout,
        "job hello created (version 1, 2 tasks)\nsee it with: drover job status hello\n"
    );

    let again = m.drover(&["job", "run", path_str(&spec)]);
    again.assert_code(0);
    assert!(
        again.stdout.starts_with("job hello unchanged (version 1, "),
        "{}",
        again.stdout
    );

    let changed = m.spec_file("hello2.yaml", &HELLO.replace("count: 2", "count: 3"));
    let updated = m.drover(&["job", "run", path_str(&changed)]);
    updated.assert_code(0);
    assert!(
        updated
            .stdout
            .starts_with("job hello updated to version 2 (3 tasks)\n"),
        "{}",
        updated.stdout
    );
}

#[test]
fn job_run_with_json_output_prints_the_submit_answer() {
    let m = TestMaster::start();
    let spec = m.spec_file("hello.json", &json_spec());

    let created: SubmitAnswer = m.json(&["job", "run", path_str(&spec)]);
    assert_eq!(created.outcome, SubmitOutcome::Created);
    assert_eq!(created.job.id.as_str(), "hello");
    assert_eq!(created.job.total(), 2);

    let unchanged: SubmitAnswer = m.json(&["job", "run", path_str(&spec)]);
    assert_eq!(unchanged.outcome, SubmitOutcome::Unchanged);
    assert_eq!(unchanged.job.version, 1);
}

/// HELLO as JSON, to check that a `.json` file is sent as JSON.
fn json_spec() -> String {
    serde_json::json!({
        "name": "hello",
        "count": 2,
        "command": ["/bin/true"],
        "resources": {"cpu": "500m", "memory": "256Mi"},
    })
    .to_string()
}

#[test]
fn job_run_reads_the_spec_from_stdin_when_the_file_is_a_dash() {
    let m = TestMaster::start();
    let spec = m.spec_file("hello.yaml", HELLO);
    let mut cmd = drover();
    cmd.arg("--addr").arg(m.addr()).args(["job", "run", "-"]);
    let stdin = std::fs::File::open(&spec).expect("open the spec");
    let done = Proc::spawn_with_stdin(&mut cmd, stdin.into()).finish();
    done.assert_code(0);
    assert!(
        done.stdout.starts_with("job hello created"),
        "{}",
        done.stdout
    );
    assert_eq!(m.job_state("hello"), Some(JobState::Pending));
}

#[test]
fn job_run_wait_exits_0_once_the_agent_reports_every_task_succeeded() {
    let m = TestMaster::start();
    m.add_node("n1", "127.0.0.1:1");
    let spec = m.spec_file("hello.yaml", HELLO);
    let waiting = m.spawn(&["job", "run", path_str(&spec), "--wait"]);

    m.run_job("n1", "hello", 2, succeed);
    let done = waiting.finish();
    done.assert_code(0);
    let lines: Vec<&str> = done.stdout.lines().collect();
    assert_eq!(lines[0], "job hello created (version 1, 2 tasks)");
    assert!(
        lines[1].starts_with("job hello complete: 2 succeeded in "),
        "{}",
        done.stdout
    );
    // No terminal on stderr: the progress bar stays hidden.
    assert_eq!(done.stderr, "");
}

#[test]
fn job_run_wait_exits_1_and_names_the_dead_task_when_one_fails_with_no_restarts_left() {
    let m = TestMaster::start();
    m.add_node("n1", "127.0.0.1:1");
    let spec = m.spec_file(
        "flaky.yaml",
        &(HELLO.replace("name: hello", "name: flaky") + "restart: { attempts: 0 }\n"),
    );
    let waiting = m.spawn(&["job", "run", path_str(&spec), "--wait"]);

    m.run_job("n1", "flaky", 2, |alloc| {
        Some(if alloc.task.index == 1 {
            (AllocState::Failed, Some(3))
        } else {
            (AllocState::Succeeded, Some(0))
        })
    });
    let done = waiting.finish();
    done.assert_code(1);
    assert!(
        done.stdout.contains("job flaky failed: "),
        "{}",
        done.stdout
    );
    // The dead task, its node, attempt and exit code.
    let row = done.row("flaky/1");
    assert_eq!(&row[..5], ["flaky/1", "dead", "n1", "1", "3"], "{row:?}");
    assert!(
        !done.stdout.lines().any(|l| l.starts_with("flaky/0")),
        "only the tasks that died are listed:\n{}",
        done.stdout
    );
}

#[test]
fn job_run_wait_for_a_service_returns_once_every_task_runs() {
    let m = TestMaster::start();
    m.add_node("n1", "127.0.0.1:1");
    let spec = m.spec_file(
        "web.yaml",
        &HELLO.replace("name: hello", "name: web\ntype: service"),
    );
    let waiting = m.spawn(&["job", "run", path_str(&spec), "--wait", "-o", "json"]);

    m.run_job("n1", "web", 2, |_| None);
    let done = waiting.finish();
    done.assert_code(0);
    let report: serde_json::Value = serde_json::from_str(&done.stdout).expect("JSON");
    assert_eq!(report["outcome"], "created");
    let job: JobView = serde_json::from_value(report["job"].clone()).expect("a job");
    assert_eq!(job.state, JobState::Running);
    let tasks: Vec<TaskView> = serde_json::from_value(report["tasks"].clone()).expect("tasks");
    assert!(tasks.iter().all(|t| t.state == TaskState::Running));
}

#[test]
fn job_run_detach_overrides_wait_and_returns_at_once() {
    let m = TestMaster::start();
    let spec = m.spec_file("hello.yaml", HELLO);
    // No node: a wait would never end.
    let done = m.drover(&["job", "run", path_str(&spec), "--wait", "--detach"]);
    done.assert_code(0);
    assert!(
        done.stdout.starts_with("job hello created"),
        "{}",
        done.stdout
    );
}

#[test]
fn an_invalid_spec_prints_each_field_path_exits_1_and_stores_nothing() {
    let m = TestMaster::start();
    let spec = m.spec_file(
        "bad.yaml",
        "name: bad\ncount: 0\ncommand: [\"/bin/true\"]\nresources: { cpu: 500m, memory: 12Zb }\n",
    );
    let done = m.drover(&["job", "run", path_str(&spec)]);
    done.assert_code(1);
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert!(lines[0].starts_with("error: "), "{}", done.stderr);
    for field in ["count", "resources.memory"] {
        assert!(
            lines.iter().any(|l| l.starts_with(&format!("  {field}: "))),
            "no line for {field}:\n{}",
            done.stderr
        );
    }
    assert_eq!(done.stdout, "");
    let jobs = m.block_on(m.client.jobs(None)).expect("list jobs");
    assert!(jobs.is_empty(), "{jobs:?}");
}

#[test]
fn a_missing_spec_file_is_named_and_exits_1() {
    let m = TestMaster::start();
    let missing = m.dir.path().join("nope.yaml");
    let done = m.drover(&["job", "run", path_str(&missing)]);
    done.assert_code(1);
    assert!(
        done.stderr.starts_with(&format!(
            "error: cannot read the job spec {}: ",
            missing.display()
        )),
        "{}",
        done.stderr
    );
}

// ---------------------------------------------------------------------------
// job ls / status / stop / plan
// ---------------------------------------------------------------------------

#[test]
fn job_ls_and_job_status_show_jobs_in_tables_and_json() {
    let m = TestMaster::start();
    m.add_node("n1", "127.0.0.1:1");
    m.submit("hello.yaml", HELLO);
    m.run_job("n1", "hello", 2, succeed);
    m.wait_job_state("hello", JobState::Complete);
    // Needs more CPU than any node has: stays pending.
    m.submit(
        "big.yaml",
        &HELLO
            .replace("name: hello", "name: big")
            .replace("cpu: 500m", "cpu: 64"),
    );

    let ls = m.drover(&["job", "ls"]);
    ls.assert_code(0);
    assert_eq!(
        ls.stdout
            .lines()
            .next()
            .map(|l| l.split_whitespace().collect::<Vec<_>>()),
        Some(vec![
            "ID",
            "STATE",
            "TYPE",
            "VERSION",
            "PRIORITY",
            "OWNER",
            "SUBMITTED",
            "TASKS"
        ])
    );
    // No tokens here: jobs belong to no one.
    assert_eq!(
        &ls.row("hello")[..6],
        ["hello", "complete", "batch", "1", "50", "-"]
    );
    assert_eq!(&ls.row("big")[..2], ["big", "pending"]);
    assert!(
        ls.row("hello").ends_with(&["2", "succeeded"]),
        "{}",
        ls.stdout
    );

    let complete = m.drover(&["job", "ls", "--state", "complete"]);
    complete.assert_code(0);
    assert!(!complete.stdout.contains("big"), "{}", complete.stdout);
    let jobs: Vec<JobView> = m.json(&["job", "ls", "--state", "pending"]);
    let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, ["big"]);
    let none = m.drover(&["job", "ls", "--state", "failed"]);
    assert_eq!(none.stdout, "no failed jobs\n");

    let status = m.drover(&["job", "status", "hello"]);
    status.assert_code(0);
    assert_eq!(status.row("state"), ["state", "complete"]);
    assert_eq!(status.row("command"), ["command", "/bin/true"]);
    assert_eq!(
        status.row("resources"),
        [
            "resources",
            "500m",
            "cpu,",
            "256Mi",
            "memory",
            "per",
            "task"
        ]
    );
    assert_eq!(
        status.row("tasks"),
        ["tasks", "2", "succeeded", "(2", "total)"]
    );
    assert_eq!(
        &status.row("hello/1")[..5],
        ["hello/1", "succeeded", "n1", "1", "0"]
    );

    let job: JobView = m.json(&["job", "status", "hello"]);
    assert_eq!(job.state, JobState::Complete);
    assert_eq!(job.count(TaskState::Succeeded), 2);
    assert!(job.spec.is_some(), "status includes the spec");
}

#[test]
fn job_status_of_an_unknown_job_exits_1_with_the_masters_message() {
    let m = TestMaster::start();
    let done = m.drover(&["job", "status", "ghost"]);
    done.assert_code(1);
    assert!(done.stderr.starts_with("error: "), "{}", done.stderr);
    assert!(done.stderr.contains("ghost"), "{}", done.stderr);
}

#[test]
fn job_stop_kills_the_job_and_purge_forgets_it() {
    let m = TestMaster::start();
    m.add_node("n1", "127.0.0.1:1");
    m.submit("hello.yaml", HELLO);
    m.run_job("n1", "hello", 2, |_| None);
    m.wait_job_state("hello", JobState::Running);

    let stop = m.drover(&["job", "stop", "hello"]);
    stop.assert_code(0);
    assert!(
        stop.stdout.starts_with("job hello stopped ("),
        "{}",
        stop.stdout
    );
    assert_eq!(m.job_state("hello"), Some(JobState::Stopped));

    let purged: StopAnswer = m.json(&["job", "stop", "hello", "--purge"]);
    assert!(
        matches!(&purged, StopAnswer::Purged { id, purged: true } if id.as_str() == "hello"),
        "{purged:?}"
    );
    assert_eq!(m.job_state("hello"), None, "purged jobs are gone");

    m.submit("hello.yaml", HELLO);
    let done = m.drover(&["job", "stop", "hello", "--purge"]);
    done.assert_code(0);
    assert_eq!(done.stdout, "job hello stopped and purged\n");
}

#[test]
fn job_plan_shows_placements_and_waiting_tasks_with_reasons_and_stores_nothing() {
    let m = TestMaster::start();
    m.add_node("n1", "127.0.0.1:1");
    // Three tasks of 2 CPUs on one 4-CPU node: two fit, one waits.
    let spec = m.spec_file(
        "wide.yaml",
        &HELLO
            .replace("name: hello", "name: wide")
            .replace("count: 2", "count: 3")
            .replace("cpu: 500m", "cpu: 2"),
    );

    let plan = m.drover(&["job", "plan", path_str(&spec)]);
    plan.assert_code(0);
    let lines: Vec<&str> = plan.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "2 tasks would be placed, 0 allocs preempted, 1 task would wait"
    );
    assert_eq!(plan.row("TASK"), ["TASK", "NODE", "GPUS"]);
    let placed: Vec<Vec<&str>> = ["wide/0", "wide/1", "wide/2"]
        .iter()
        .filter(|t| {
            plan.stdout
                .lines()
                .any(|l| l.starts_with(*t) && l.contains("n1"))
        })
        .map(|t| plan.row(t))
        .collect();
    assert_eq!(placed.len(), 2, "{}", plan.stdout);
    let waiting = plan
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("WAITING TASK"))
        .nth(1)
        .unwrap_or_else(|| panic!("no waiting table:\n{}", plan.stdout));
    assert!(waiting.starts_with("wide/"), "{waiting}");
    assert!(
        waiting.contains("cpu"),
        "the reason names the resource: {waiting}"
    );

    let answer: PlanAnswer = m.json(&["job", "plan", path_str(&spec)]);
    assert_eq!(answer.placements.len(), 2);
    assert_eq!(answer.waiting.len(), 1);
    assert!(answer.preemptions.is_empty());
    assert_eq!(m.job_state("wide"), None, "a plan writes nothing");
}

// ---------------------------------------------------------------------------
// task ls / status / logs
// ---------------------------------------------------------------------------

#[test]
fn task_ls_and_task_status_show_attempts_in_tables_and_json() {
    let m = TestMaster::start();
    m.add_node("n1", "127.0.0.1:1");
    m.submit("hello.yaml", HELLO);
    m.run_job("n1", "hello", 2, |alloc| {
        (alloc.task.index == 0).then_some((AllocState::Succeeded, Some(0)))
    });

    let ls = m.drover(&["task", "ls", "hello"]);
    ls.assert_code(0);
    assert_eq!(
        ls.row("TASK"),
        ["TASK", "STATE", "NODE", "ATTEMPT", "EXIT", "UPDATED", "REASON"]
    );
    assert_eq!(
        &ls.row("hello/0")[..5],
        ["hello/0", "succeeded", "n1", "1", "0"]
    );
    assert_eq!(
        &ls.row("hello/1")[..5],
        ["hello/1", "running", "n1", "1", "-"]
    );
    let tasks: Vec<TaskView> = m.json(&["task", "ls", "hello"]);
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[1].state, TaskState::Running);

    let status = m.drover(&["task", "status", "hello/0"]);
    status.assert_code(0);
    assert_eq!(status.row("task"), ["task", "hello/0"]);
    assert_eq!(status.row("state"), ["state", "succeeded"]);
    assert_eq!(status.row("job"), ["job", "hello", "(version", "1)"]);
    assert_eq!(
        &status.row("hello/0/1")[..7],
        ["hello/0/1", "n1", "succeeded", "0", "500m", "256Mi", "-"]
    );
    assert_eq!(status.row("WHEN"), ["WHEN", "STATE", "REASON"]);

    let task: TaskView = m.json(&["task", "status", "hello/0"]);
    assert_eq!(task.attempts.len(), 1);
    assert_eq!(task.attempts[0].exit_code, Some(0));

    let bad = m.drover(&["task", "status", "hello/7"]);
    bad.assert_code(1);
}

/// An agent log server: `stream` of any alloc is "<stream> 0\n".."<stream>
/// 2\n"; when followed, two more lines come, one at a time, then it ends.
fn start_log_server(m: &TestMaster) -> SocketAddr {
    #[derive(serde::Deserialize)]
    struct Q {
        stream: String,
        follow: bool,
    }
    let route = warp::path!("v1" / "allocs" / String / String / String / "logs")
        .and(warp::query::<Q>())
        .map(|_job: String, _index: String, _attempt: String, q: Q| {
            let mut chunks: Vec<String> =
                vec![(0..3).map(|i| format!("{} {i}\n", q.stream)).collect()];
            if q.follow {
                chunks.extend((3..5).map(|i| format!("{} {i}\n", q.stream)));
            }
            let stream = futures_util::stream::iter(
                chunks
                    .into_iter()
                    .map(|c| Ok::<_, Infallible>(bytes::Bytes::from(c))),
            );
            warp::reply::stream(stream)
        });
    m.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("an address");
        tokio::spawn(warp::serve(route).incoming(listener).run());
        addr
    })
}

#[test]
fn task_logs_prints_what_the_agents_log_server_serves() {
    let m = TestMaster::start();
    let log_addr = start_log_server(&m);
    m.add_node("n1", &log_addr.to_string());
    m.submit("hello.yaml", HELLO);
    m.run_job("n1", "hello", 2, |_| None);

    let out = m.drover(&["task", "logs", "hello/0"]);
    out.assert_code(0);
    assert_eq!(out.stdout, "stdout 0\nstdout 1\nstdout 2\n");
    let err = m.drover(&["task", "logs", "hello/0", "--stderr"]);
    err.assert_code(0);
    assert_eq!(err.stdout, "stderr 0\nstderr 1\nstderr 2\n");
    let followed = m.drover(&["task", "logs", "hello/1", "--follow"]);
    followed.assert_code(0);
    assert_eq!(
        followed.stdout,
        "stdout 0\nstdout 1\nstdout 2\nstdout 3\nstdout 4\n"
    );
}

// ---------------------------------------------------------------------------
// node ls / status / drain, cluster status
// ---------------------------------------------------------------------------

#[test]
fn node_ls_and_node_status_show_the_registered_node_in_tables_and_json() {
    let m = TestMaster::start();
    let none = m.drover(&["node", "ls"]);
    none.assert_code(0);
    assert!(none.stdout.starts_with("no nodes"), "{}", none.stdout);

    m.add_node("n1", "127.0.0.1:1");
    m.submit("hello.yaml", HELLO);
    m.assigned("hello", 2);

    let ls = m.drover(&["node", "ls"]);
    ls.assert_code(0);
    assert_eq!(
        ls.row("ID"),
        [
            "ID",
            "STATE",
            "HOSTNAME",
            "CPU",
            "MEMORY",
            "GPUS",
            "ALLOCS",
            "HEARTBEAT"
        ]
    );
    assert_eq!(
        &ls.row("n1")[..7],
        ["n1", "ready", "n1.test", "1/4", "512Mi/8Gi", "0/0", "2"]
    );
    let nodes: Vec<NodeView> = m.json(&["node", "ls"]);
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].allocated.cpu_millis, 1000);

    let status = m.drover(&["node", "status", "n1"]);
    status.assert_code(0);
    assert_eq!(status.row("node"), ["node", "n1"]);
    assert_eq!(status.row("labels"), ["labels", "zone=a"]);
    assert_eq!(&status.row("cpu")[..3], ["cpu", "4", "1"]);
    assert_eq!(&status.row("memory")[..3], ["memory", "8Gi", "512Mi"]);
    assert_eq!(status.row("hello/0/1"), ["hello/0/1"]);
    let node: NodeView = m.json(&["node", "status", "n1"]);
    assert_eq!(node.state, NodeState::Ready);
    assert_eq!(node.allocs.len(), 2);

    let unknown = m.drover(&["node", "status", "n9"]);
    unknown.assert_code(1);
}

#[test]
fn node_drain_with_a_deadline_then_disable_changes_the_node_state() {
    let m = TestMaster::start();
    m.add_node("n1", "127.0.0.1:1");

    let drain = m.drover(&["node", "drain", "n1", "--deadline", "5m"]);
    drain.assert_code(0);
    assert_eq!(
        drain.stdout,
        "node n1: draining, deadline in 5m (0 allocs on it)\n"
    );
    let node: NodeView = m.json(&["node", "status", "n1"]);
    assert_eq!(node.state, NodeState::Draining);
    let d = node.drain.expect("a drain");
    assert_eq!(d.deadline_ms - d.started_at_ms, 300_000);

    let undrain = m.drover(&["node", "drain", "n1", "--disable"]);
    undrain.assert_code(0);
    assert_eq!(
        undrain.stdout,
        "node n1: ready, not draining (0 allocs on it)\n"
    );
    let node: NodeView = m.json(&["node", "drain", "n1", "--disable"]);
    assert_eq!(node.state, NodeState::Ready);
    assert!(node.drain.is_none());

    let bad = m.drover(&["node", "drain", "n1", "--deadline", "soon"]);
    bad.assert_code(2);
}

#[test]
fn cluster_status_shows_totals_in_tables_and_json() {
    let m = TestMaster::start();
    m.add_node("n1", "127.0.0.1:1");
    m.add_node("n2", "127.0.0.1:1");
    m.submit("hello.yaml", HELLO);
    m.assigned("hello", 2);

    let status = m.drover(&["cluster", "status"]);
    status.assert_code(0);
    assert_eq!(status.row("store"), ["store", "embedded"]);
    assert_eq!(status.row("nodes"), ["nodes", "2", "ready"]);
    assert_eq!(status.row("jobs"), ["jobs", "1", "running"]);
    assert_eq!(status.row("tasks"), ["tasks", "2", "assigned"]);
    assert_eq!(status.row("queue"), ["queue", "0", "tasks", "waiting"]);
    assert_eq!(
        status.row("cpu"),
        ["cpu", "1", "of", "8", "allocated", "(13%)"]
    );
    assert_eq!(
        status.row("memory"),
        ["memory", "512Mi", "of", "16Gi", "allocated", "(3%)"]
    );

    let summary: ClusterSummary = m.json(&["cluster", "status"]);
    assert_eq!(summary.nodes.get("ready"), Some(&2));
    assert_eq!(summary.capacity.cpu_millis, 8000);
    assert_eq!(summary.allocated.cpu_millis, 1000);
    assert_eq!(summary.store_backend, "embedded");
}

// ---------------------------------------------------------------------------
// addresses, tokens, usage
// ---------------------------------------------------------------------------

#[test]
fn an_unreachable_master_exits_3_with_a_hint_to_start_one() {
    let addr = dead_addr();
    let mut cmd = drover();
    cmd.args(["--addr", &addr, "job", "ls"]);
    let done = Proc::spawn(cmd).finish();
    done.assert_code(3);
    assert_eq!(
        done.stderr,
        format!(
            "error: cannot reach the master at {addr} (connection refused). Is it running? \
             Start one with `drover dev`, or set --addr / DROVER_ADDR.\n"
        )
    );
    assert_eq!(done.stdout, "");
}

#[test]
fn the_drover_addr_variable_picks_the_master_and_may_list_several() {
    let m = TestMaster::start();
    let mut cmd = drover();
    cmd.env("DROVER_ADDR", m.addr()).args(["job", "ls"]);
    let done = Proc::spawn(cmd).finish();
    done.assert_code(0);
    assert_eq!(done.stdout, "no jobs\n");

    // A dead master first: the client moves on to the next one.
    let mut cmd = drover();
    cmd.env("DROVER_ADDR", format!("{},{}", dead_addr(), m.addr()))
        .args(["cluster", "status", "-o", "json"]);
    let done = Proc::spawn(cmd).finish();
    done.assert_code(0);
    let summary: ClusterSummary = serde_json::from_str(&done.stdout).expect("a summary");
    assert_eq!(summary.store_backend, "embedded");

    // --addr wins over the environment.
    let mut cmd = drover();
    cmd.env("DROVER_ADDR", m.addr())
        .args(["--addr", &dead_addr(), "job", "ls"]);
    Proc::spawn(cmd).finish().assert_code(3);
}

#[test]
fn a_master_with_tokens_refuses_a_cli_without_one_and_serves_drover_token() {
    const TOKEN: &str = "ops-token-0123456789";
    let auth = Auth::new([("ops".to_string(), Role::Admin, TOKEN.to_string())]);
    let m = TestMaster::with_auth(auth, Some(TOKEN));

    let refused = m.drover(&["job", "ls"]);
    refused.assert_code(1);
    assert!(
        refused
            .stderr
            .contains("hint: this master requires a token: set DROVER_TOKEN"),
        "{}",
        refused.stderr
    );

    let mut cmd = drover();
    cmd.env("DROVER_TOKEN", TOKEN)
        .args(["--addr", &m.addr(), "job", "ls"]);
    let done = Proc::spawn(cmd).finish();
    done.assert_code(0);
    assert_eq!(done.stdout, "no jobs\n");

    let file = m.spec_file("token", &format!("{TOKEN}\n"));
    m.drover(&["--token-file", path_str(&file), "cluster", "status"])
        .assert_code(0);

    let mut cmd = drover();
    cmd.env("DROVER_TOKEN", "wrong-token-0123456789")
        .args(["--addr", &m.addr(), "job", "ls"]);
    let wrong = Proc::spawn(cmd).finish();
    wrong.assert_code(1);
    assert!(
        wrong.stderr.contains("did not accept the token"),
        "{}",
        wrong.stderr
    );
}

#[test]
fn completions_bash_prints_a_script() {
    let mut cmd = drover();
    cmd.args(["completions", "bash"]);
    let done = Proc::spawn(cmd).finish();
    done.assert_code(0);
    assert!(
        done.stdout.contains("complete -F _drover"),
        "{}",
        done.stdout
    );
    assert!(done.stdout.contains("drain"), "subcommands are completed");
}

#[test]
fn the_help_of_job_run_contains_an_example() {
    for flag in ["-h", "--help"] {
        let mut cmd = drover();
        cmd.args(["job", "run", flag]);
        let done = Proc::spawn(cmd).finish();
        done.assert_code(0);
        assert!(
            done.stdout.contains("drover job run hello.yaml --wait"),
            "{}",
            done.stdout
        );
        assert!(done.stdout.contains("name: hello"), "{}", done.stdout);
    }
}

#[test]
fn a_bad_command_line_exits_2_without_reaching_any_master() {
    for args in [
        vec!["job", "frobnicate"],
        vec!["task", "status", "not-a-task-id"],
        vec!["job", "ls", "--state", "sideways"],
        vec!["node", "drain", "n1", "--deadline", "5m", "--disable"],
        vec!["-o", "yaml", "job", "ls"],
    ] {
        let mut cmd = drover();
        // Nothing listens there: a 3 would mean the command line passed.
        cmd.arg("--addr").arg(dead_addr()).args(&args);
        let done = Proc::spawn(cmd).finish();
        done.assert_code(2);
        assert!(
            done.stderr.starts_with("error: "),
            "{args:?}: {}",
            done.stderr
        );
    }
}

#[test]
fn simulate_from_master_replays_its_queue_under_every_policy_and_changes_nothing() {
    let m = TestMaster::start();
    m.add_node("n1", "127.0.0.1:1");
    // Three tasks of 2 cores on a node of 4: two run, one waits.
    m.submit(
        "big.yaml",
        "name: big\ncount: 3\ncommand: [x]\nresources: {cpu: 2, memory: 1Gi}\n",
    );
    let before: Vec<TaskView> = m.tasks("big").expect("big's tasks");
    let report: serde_json::Value =
        m.json(&["simulate", "--from-master", "--assume-duration", "1m"]);
    let policies = report["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 4, "{report}");
    for p in policies {
        // Two waves of a minute each, whatever the policy.
        assert_eq!(p["tasks"], 3, "{p}");
        assert_eq!(p["makespan_s"], 120.0, "{p}");
    }
    // It only read: the master's tasks are as they were.
    let after: Vec<TaskView> = m.tasks("big").expect("big's tasks");
    assert_eq!(
        serde_json::to_value(&before).expect("JSON"),
        serde_json::to_value(&after).expect("JSON")
    );
}

#[test]
fn simulate_runs_the_shipped_sample_and_draws_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("a temp dir");
    let svg = dir.path().join("out.svg");
    let done = Proc::spawn({
        let mut c = drover();
        c.args(["simulate", "--workload"])
            .arg(root.join("config/simulate/workload.jsonl"))
            .arg("--cluster")
            .arg(root.join("config/simulate/cluster.yaml"))
            .args(["--policies", "least-loaded,priority", "--plot"])
            .arg(&svg);
        c
    })
    .finish();
    done.assert_code(0);
    assert!(done.row("least-loaded").len() > 5, "{}", done.stdout);
    assert!(done.row("priority").len() > 5, "{}", done.stdout);
    let drawn = read(&svg);
    assert!(drawn.contains("least-loaded") && drawn.contains("priority"));
    // A PNG is refused with a clear word, before anything runs.
    let png = Proc::spawn({
        let mut c = drover();
        c.args(["simulate", "--workload"])
            .arg(root.join("config/simulate/workload.jsonl"))
            .arg("--cluster")
            .arg(root.join("config/simulate/cluster.yaml"))
            .arg("--plot")
            .arg(dir.path().join("out.png"));
        c
    })
    .finish();
    assert_ne!(png.code, 0);
    assert!(png.stderr.contains("SVG"), "{}", png.stderr);
}
