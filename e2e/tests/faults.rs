//! Faults a production cluster meets, against the real binaries: most
//! nodes falling silent at once, and a network partition that cuts one
//! machine off (a network namespace of the test's own, behind a veth pair).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use drover_api::views::TaskView;
use drover_api::{AllocState, NodeId, NodeState, TaskId};
use drover_e2e::{eventually, pid_alive, read_pid, sh_quote, Cluster, Job};

const WAIT: Duration = Duration::from_secs(20);

/// A task script that writes its PID to `<dir>/<task index>-<attempt>.pid`,
/// then sleeps.
fn sleeper(dir: &Path) -> String {
    format!(
        "echo $$ > {}/$DROVER_TASK_INDEX-$DROVER_ATTEMPT.pid; exec sleep 600",
        sh_quote(dir.display().to_string())
    )
}

/// Each task's node, by the attempt now live.
fn nodes_of(tasks: &[TaskView]) -> BTreeMap<TaskId, NodeId> {
    tasks
        .iter()
        .filter_map(|t| Some((t.id.clone(), t.latest()?.node.clone())))
        .collect()
}

async fn gone(pid: i32, what: &str) {
    eventually(what, WAIT, || async move {
        if pid_alive(pid) {
            Err(format!("PID {pid} still alive"))
        } else {
            Ok(())
        }
    })
    .await;
}

/// Every task of `job` running, on its latest attempt.
async fn all_running(cluster: &Cluster, job: &Job) -> Vec<TaskView> {
    eventually("every task running", WAIT, || async {
        let tasks = cluster.tasks(&job.id()).await;
        let running = tasks
            .iter()
            .all(|t| t.latest().is_some_and(|a| a.state == AllocState::Running));
        if running {
            Ok(tasks)
        } else {
            Err(format!("{tasks:?}"))
        }
    })
    .await
}

#[tokio::test]
async fn when_most_nodes_fall_silent_they_go_down_one_a_second_and_no_reschedule_storm_follows_their_return(
) {
    let cluster = Cluster::builder()
        .agents(10)
        .fast_failure_detection()
        .max_down_per_second(1)
        .start()
        .await;
    let pids = cluster.scratch_dir("pids");
    let job = Job::service("spread", &sleeper(&pids))
        .count(10)
        .cpu_millis(100);
    cluster.submit(&job).await;
    let tasks = cluster.wait_running(&job.id(), WAIT).await;
    let placed = nodes_of(&tasks);
    let mut per_node: BTreeMap<&NodeId, usize> = BTreeMap::new();
    for node in placed.values() {
        *per_node.entry(node).or_default() += 1;
    }
    assert_eq!(per_node.len(), 10, "least-loaded spreads: {placed:?}");

    // Six of ten go silent at once, as if the master had lost its network.
    let silent: Vec<usize> = (0..6).collect();
    let started = Instant::now();
    for &i in &silent {
        cluster.pause_agent(i);
    }
    eventually(
        "three silent nodes down",
        cluster.node_timeout() + WAIT,
        || async {
            let n = cluster.metric("drover_node_failures_total").await;
            if n >= 3.0 {
                Ok(())
            } else {
                Err(format!("{n} down"))
            }
        },
    )
    .await;
    let elapsed = started.elapsed();
    let deferred = cluster.metric("drover_nodes_down_deferred").await;
    for &i in &silent {
        cluster.resume_agent(i);
    }
    eprintln!("3 of 6 silent nodes down after {elapsed:?}; {deferred} held back");
    // All six were past node_timeout within a tick of each other; one a
    // second went down.
    assert!(
        elapsed >= cluster.node_timeout() + Duration::from_millis(1500),
        "three down {elapsed:?} after the silence began: not rate-limited"
    );
    assert!(deferred >= 1.0, "no silent node was held back");
    let log = std::fs::read_to_string(cluster.master().log_path()).expect("the master's log");
    assert!(
        log.contains("more than half of the nodes went silent at once"),
        "the master did not say so"
    );

    // They come back: those still up keep their tasks; only the tasks of
    // the nodes that went down ran again.
    for i in 0..10 {
        cluster
            .wait_node(&cluster.node(i), NodeState::Ready, WAIT)
            .await;
    }
    let downs = cluster.metric("drover_node_failures_total").await as usize;
    assert!((3..6).contains(&downs), "{downs} nodes went down");
    let after = all_running(&cluster, &job).await;
    let moved: Vec<&TaskView> = after.iter().filter(|t| t.attempts.len() > 1).collect();
    assert_eq!(moved.len(), downs, "{after:?}");
    for t in &after {
        if t.attempts.len() == 1 {
            let first = read_pid(&pids.join(format!("{}-1.pid", t.id.index))).expect("a PID");
            assert!(pid_alive(first), "{}'s first attempt died", t.id);
        }
    }
    let lost = cluster
        .metric(r#"drover_task_reschedules_total{reason="lost"}"#)
        .await;
    assert_eq!(lost as usize, downs);
    // And nothing more follows: a few node timeouts later, nothing else has
    // been lost or moved. (Waiting here is the point: what is checked is
    // that nothing happens.)
    tokio::time::sleep(cluster.node_timeout() * 3).await;
    let later = cluster
        .metric(r#"drover_task_reschedules_total{reason="lost"}"#)
        .await;
    assert_eq!(later, lost, "a reschedule storm followed the return");
    assert_eq!(
        cluster.metric("drover_node_failures_total").await as usize,
        downs
    );
    let still = cluster.tasks(&job.id()).await;
    assert_eq!(nodes_of(&still), nodes_of(&after));
}

/// A network namespace with a veth pair to this one, removed on drop:
/// `host` here, `inside` there, on a /30 of their own.
struct Netns {
    name: String,
    inner_link: String,
    host: std::net::IpAddr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// `None` (the test skips) where this process may not make one.
    fn create() -> Option<Netns> {
        if !nix::unistd::Uid::effective().is_root() {
            return None;
        }
        let id = std::process::id();
        let name = format!("drover-part-{id}");
        let (outer, inner) = (format!("dvh{id}"), format!("dvn{id}"));
        let net = format!("10.213.{}", id % 250);
        let (host, inside) = (format!("{net}.1"), format!("{net}.2"));
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name: name.clone(),
            inner_link: inner.clone(),
            host: host.parse().expect("an address"),
        };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &name,
        ]);
        ip(&["addr", "add", &format!("{host}/30"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            &inner,
        ]);
        ip(&["-n", &name, "link", "set", &inner, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Some(ns)
    }

    /// Cuts the link: packets from inside go nowhere, and none come in.
    fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.inner_link, "down"]);
    }

    fn heal(&self) {
        ip(&["-n", &self.name, "link", "set", &self.inner_link, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Removing the namespace removes the pair with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[tokio::test]
async fn a_partitioned_nodes_tasks_run_elsewhere_it_stops_its_own_when_told_to_and_nothing_runs_twice_after(
) {
    let Some(net) = Netns::create() else {
        eprintln!("skipped: network namespaces need root");
        return;
    };
    // n4 and n5 live behind the veth pair; n5 stops its tasks once it has
    // not heard from a master for a second.
    let stop_after = Duration::from_secs(1);
    let mut cluster = Cluster::builder()
        .agents(5)
        .fast_failure_detection()
        .master_ip(net.host)
        .agent_netns(3, &net.name)
        .agent_netns(4, &net.name)
        .agent_config(4, "stop_after_disconnect: 1s\n")
        .start()
        .await;
    let pids = cluster.scratch_dir("pids");
    let job = Job::service("web", &sleeper(&pids))
        .count(5)
        .cpu_millis(100);
    cluster.submit(&job).await;
    let tasks = cluster.wait_running(&job.id(), WAIT).await;
    let placed = nodes_of(&tasks);
    let on = |node: &NodeId| -> TaskId {
        let found: Vec<&TaskId> = placed
            .iter()
            .filter(|(_, n)| *n == node)
            .map(|(t, _)| t)
            .collect();
        assert_eq!(found.len(), 1, "one task per node: {placed:?}");
        found[0].clone()
    };
    let (n4, n5) = (cluster.node(3), cluster.node(4));
    let (t4, t5) = (on(&n4), on(&n5));
    let pid_file = |t: &TaskId, attempt: u32| pids.join(format!("{}-{attempt}.pid", t.index));
    let first4 = read_pid(&pid_file(&t4, 1)).expect("t4's PID");
    let first5 = read_pid(&pid_file(&t5, 1)).expect("t5's PID");

    let cut_at = Instant::now();
    net.cut();
    // Their tasks are lost and run elsewhere within node_timeout (+1 s).
    for t in [&t4, &t5] {
        eventually(
            "a cut-off node's task to run again elsewhere",
            cluster.node_timeout() + WAIT,
            || async { read_pid(&pid_file(t, 2)).ok_or_else(|| "no PID file yet".to_string()) },
        )
        .await;
    }
    let elapsed = cut_at.elapsed();
    eprintln!("the cut-off nodes' tasks ran again {elapsed:?} after the cut");
    assert!(
        elapsed <= cluster.node_timeout() + Duration::from_secs(1),
        "took {elapsed:?}; node_timeout is {:?}",
        cluster.node_timeout()
    );
    for (node, t) in [(&n4, &t4), (&n5, &t5)] {
        let view = cluster.node_view(node).await;
        assert_eq!(view.state, NodeState::Down, "{view:?}");
        let lost = cluster.client().alloc(&t.alloc(1)).await.expect("alloc");
        assert_eq!(lost.state, AllocState::Lost, "{lost:?}");
        let now = cluster.task(t).await;
        let latest = now.latest().expect("an attempt");
        assert_ne!(&latest.node, node);
        assert!(latest.node != n4 && latest.node != n5, "{latest:?}");
    }
    // n5 stopped its own task (stop_after_disconnect); n4 keeps its orphan
    // running, as the README says a cut-off node does by default.
    gone(first5, "n5 to stop its task after losing the masters").await;
    assert!(cut_at.elapsed() >= stop_after);
    assert!(pid_alive(first4), "n4's task died without being told to");

    // The link returns: n4 hears that its attempt was replaced and kills
    // it; both nodes are ready again; each task runs exactly once.
    net.heal();
    gone(
        first4,
        "n4 to kill its replaced attempt once the link is back",
    )
    .await;
    for node in [&n4, &n5] {
        cluster.wait_node(node, NodeState::Ready, WAIT).await;
    }
    let after = all_running(&cluster, &job).await;
    for t in &after {
        let attempt = t.attempts.len() as u32;
        let live = read_pid(&pid_file(&t.id, attempt)).expect("the live attempt's PID");
        assert!(
            pid_alive(live),
            "{}: attempt {attempt} is not running",
            t.id
        );
        for earlier in 1..attempt {
            if let Some(old) = read_pid(&pid_file(&t.id, earlier)) {
                assert!(!pid_alive(old), "{} attempt {earlier} still runs", t.id);
            }
        }
    }
    let lost = cluster
        .metric(r#"drover_task_reschedules_total{reason="lost"}"#)
        .await;
    assert_eq!(lost, 2.0, "only the two cut-off tasks moved");
    cluster.stop_agent(3);
    cluster.stop_agent(4);
}

/// libfaketime, which makes a process's wall clock read what a file says.
fn libfaketime() -> std::path::PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .expect("libfaketime is not installed: run scripts/setup.sh --tests (apt: libfaketime)")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// Sets the master's wall clock `hours` off the real one, and waits until
/// its log shows it (the log's timestamps come from the wall clock; the
/// audited no-op drain gives it a line to write).
async fn set_master_clock(cluster: &Cluster, file: &Path, hours: i64) {
    std::fs::write(file, format!("{hours:+}h\n")).expect("writing the clock file");
    eventually("the master's wall clock to move", WAIT, || async {
        let _ = cluster.client().drain(&cluster.node(0), false, None).await;
        let log = std::fs::read_to_string(cluster.master().log_path()).unwrap_or_default();
        let last = log
            .lines()
            .rev()
            .find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                humantime::parse_rfc3339(v.get("timestamp")?.as_str()?).ok()
            })
            .ok_or("no timestamp in the log")?;
        let shown = last
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_millis() as i64;
        let skew = shown - now_ms() as i64;
        let want = hours * 3_600_000;
        if (skew - want).abs() < 60_000 {
            Ok(())
        } else {
            Err(format!("the master's log is {skew} ms off, not {want}"))
        }
    })
    .await;
}

#[tokio::test]
async fn a_master_whose_wall_clock_jumps_an_hour_each_way_keeps_its_timers_and_timestamps() {
    let lib = libfaketime();
    let clock = tempfile::NamedTempFile::new().expect("a clock file");
    std::fs::write(clock.path(), "+0h\n").expect("writing the clock file");
    let cluster = Cluster::builder()
        .fast_failure_detection()
        .master_env("LD_PRELOAD", lib.display().to_string())
        .master_env(
            "FAKETIME_TIMESTAMP_FILE",
            clock.path().display().to_string(),
        )
        // Re-read the file every second; only the wall clock is faked, as
        // an NTP step or an operator's `date -s` would move it.
        .master_env("FAKETIME_CACHE_DURATION", "1")
        .master_env("DONT_FAKE_MONOTONIC", "1")
        .start()
        .await;
    let started_ms = now_ms();
    let delay = Duration::from_secs(3);
    // Fails its first attempt, then succeeds after the restart delay.
    let script = r#"[ "$DROVER_ATTEMPT" -ge 2 ]"#;
    let first = Job::batch("jump-ahead", script).restart(2, "3s");
    let second = Job::batch("jump-back", script).restart(2, "3s");
    for (job, hours) in [(&first, 1), (&second, -1)] {
        cluster.submit(job).await;
        let failed_at = eventually("the first attempt to fail", WAIT, || async {
            let t = cluster.task(&job.id().task(0)).await;
            match t.attempts.first() {
                Some(a) if a.state == AllocState::Failed => Ok(Instant::now()),
                _ => Err(format!("{t:?}")),
            }
        })
        .await;
        // The clock jumps while the restart waits out its delay: it fires
        // neither at once (ahead) nor an hour late (back).
        set_master_clock(&cluster, clock.path(), hours).await;
        assert!(
            failed_at.elapsed() < delay,
            "the clock moved only after the restart was due: nothing tested"
        );
        let restarted = eventually("the second attempt", delay + WAIT, || async {
            let t = cluster.task(&job.id().task(0)).await;
            if t.attempts.len() >= 2 {
                Ok(Instant::now())
            } else {
                Err(format!("{t:?}"))
            }
        })
        .await;
        let waited = restarted - failed_at;
        eprintln!("clock {hours:+}h: restarted {waited:?} after the failure (delay {delay:?})");
        assert!(
            waited + Duration::from_millis(500) >= delay,
            "restarted after {waited:?}, before its {delay:?} delay"
        );
        assert!(waited < delay + Duration::from_secs(5), "{waited:?}");
        cluster
            .wait_job(&job.id(), drover_api::JobState::Complete, WAIT)
            .await;
    }
    // No node was declared down by the jumps.
    assert_eq!(cluster.metric("drover_node_failures_total").await, 0.0);
    for i in 0..3 {
        let n = cluster.node_view(&cluster.node(i)).await;
        assert_eq!(n.state, NodeState::Ready, "{n:?}");
    }
    // The API's timestamps neither jumped nor went back: each history is in
    // order and within the test's real time.
    let ended_ms = now_ms();
    for job in [&first, &second] {
        let t = cluster.task(&job.id().task(0)).await;
        let mut stamps: Vec<u64> = t.history.iter().map(|h| h.at_unix_ms).collect();
        for a in &t.attempts {
            let own: Vec<u64> = a.history.iter().map(|h| h.at_unix_ms).collect();
            assert!(own.windows(2).all(|w| w[0] <= w[1]), "{own:?}");
            stamps.extend(own);
        }
        assert!(
            t.history
                .windows(2)
                .all(|w| w[0].at_unix_ms <= w[1].at_unix_ms),
            "{:?}",
            t.history
        );
        for at in stamps {
            assert!(
                at + 5_000 >= started_ms && at <= ended_ms + 5_000,
                "{}: a timestamp {at} outside [{started_ms}, {ended_ms}]",
                t.id
            );
        }
    }
}
