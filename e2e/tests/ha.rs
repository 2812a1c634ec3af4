//! High availability on a real etcd (DESIGN §7): several real
//! `drover-master` binaries elect a leader, real agents run real tasks, and
//! the leader is killed mid-burst, or etcd itself goes away for a while.
//! Tasks append their alloc id to a marker file of their own, so a task run
//! twice shows as two lines.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use drover_api::client::{Client, SpecFormat};
use drover_api::{JobId, JobState, NodeState};
use drover_e2e::{eventually, pid_alive, read_lines, read_pid, sh_quote, Cluster, Job, LEASE_TTL};

const WAIT: Duration = Duration::from_secs(60);

/// A task that appends its alloc id to `<dir>/<job>` and exits.
fn marking_job(dir: &Path, name: &str) -> Job {
    let marker = dir.join(name);
    Job::batch(
        name,
        &format!(
            "echo $DROVER_ALLOC_ID >> {}",
            sh_quote(marker.to_string_lossy())
        ),
    )
    .cpu_millis(10)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

/// A client of every master, as agents and the CLI are configured.
fn client_of(cluster: &Cluster) -> Arc<Client> {
    Arc::new(Client::new(cluster.master_addrs(), None).with_timeout(Duration::from_secs(5)))
}

/// Submits `job` until a master acknowledges it (2xx), as a user retrying
/// through a failover would. Gives up after `patience`.
async fn submit_until_acknowledged(client: &Client, job: &Job, patience: Duration) -> bool {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        if client
            .submit(&job.to_json(), SpecFormat::Json)
            .await
            .is_ok()
        {
            return true;
        }
        if started.elapsed() > patience {
            return false;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(500));
    }
}

async fn job_names(client: &Client) -> BTreeSet<String> {
    let jobs = client.jobs(None).await.expect("list jobs");
    jobs.iter().map(|j| j.id.to_string()).collect()
}

/// Waits until every job in `names` has succeeded.
async fn all_succeeded(client: &Client, names: &BTreeSet<String>) {
    eventually("every acknowledged job to complete", WAIT, || async {
        let jobs = client.jobs(None).await.map_err(|e| e.to_string())?;
        let succeeded: BTreeSet<String> = jobs
            .iter()
            .filter(|j| j.state == JobState::Complete)
            .map(|j| j.id.to_string())
            .collect();
        let missing: Vec<&String> = names.difference(&succeeded).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} not complete yet, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            ))
        }
    })
    .await
}

/// Every job in `names` ran exactly once: one line in its marker file and
/// one attempt in the master's record.
async fn ran_exactly_once(client: &Client, markers: &Path, names: &BTreeSet<String>) {
    for name in names {
        let lines = read_lines(&markers.join(name));
        assert_eq!(
            lines.len(),
            1,
            "job {name} ran {} times: {lines:?}",
            lines.len()
        );
        let id: JobId = name.parse().expect("a job id");
        let tasks = client.tasks(&id).await.expect("the job's tasks");
        assert_eq!(tasks.len(), 1, "{tasks:?}");
        assert_eq!(tasks[0].attempts.len(), 1, "{:?}", tasks[0]);
        assert_eq!(tasks[0].attempts[0].id.to_string(), lines[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_mid_burst_of_500_submissions_loses_no_acknowledged_job_and_runs_none_twice(
) {
    const JOBS: usize = 500;
    const SUBMITTERS: usize = 20;
    let mut cluster = Cluster::builder().etcd_masters(3).agents(2).start().await;
    let markers = cluster.scratch_dir("markers");
    let leader = cluster.leader(WAIT).await;
    let client = client_of(&cluster);

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let gave_up = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|k| {
            let (client, acked, gave_up, count, markers) = (
                Arc::clone(&client),
                Arc::clone(&acked),
                Arc::clone(&gave_up),
                Arc::clone(&count),
                markers.clone(),
            );
            tokio::spawn(async move {
                for i in (k..JOBS).step_by(SUBMITTERS) {
                    let name = format!("burst-{i:03}");
                    let job = marking_job(&markers, &name);
                    if submit_until_acknowledged(&client, &job, WAIT).await {
                        acked.lock().unwrap().insert(name);
                        count.fetch_add(1, Ordering::SeqCst);
                    } else {
                        gave_up.lock().unwrap().push(name);
                    }
                }
            })
        })
        .collect();

    // Kill the leader a third of the way into the burst.
    eventually("a third of the burst to be acknowledged", WAIT, || async {
        let n = count.load(Ordering::SeqCst);
        if n >= JOBS / 3 {
            Ok(())
        } else {
            Err(format!("{n} acknowledged"))
        }
    })
    .await;
    cluster.kill_master(leader);
    // Taken once the old leader is dead: any placement stamped later is
    // the new leader's.
    let killed_at_ms = now_ms();
    let at_kill = count.load(Ordering::SeqCst);

    for s in submitters {
        s.await.expect("a submitter");
    }
    let gave_up = gave_up.lock().unwrap().clone();
    assert!(gave_up.is_empty(), "never acknowledged: {gave_up:?}");
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), JOBS);
    assert!(at_kill < JOBS, "the leader died after the burst was over");

    let new_leader = cluster.leader(WAIT).await;
    assert_ne!(new_leader, leader);
    // Every acknowledged job exists, and nothing else does.
    assert_eq!(job_names(&client).await, acked);
    all_succeeded(&client, &acked).await;
    ran_exactly_once(&client, &markers, &acked).await;

    // The new leader placed work within a lease TTL and a second of the
    // kill (the burst went on, so there was work waiting for it).
    let mut first_placement = u64::MAX;
    for name in &acked {
        let id: JobId = name.parse().expect("a job id");
        for task in client.tasks(&id).await.expect("tasks") {
            for alloc in &task.attempts {
                if let Some(placed) = alloc.history.first() {
                    if placed.at_unix_ms > killed_at_ms {
                        first_placement = first_placement.min(placed.at_unix_ms);
                    }
                }
            }
        }
    }
    assert_ne!(
        first_placement,
        u64::MAX,
        "nothing was placed after the kill"
    );
    let took = Duration::from_millis(first_placement - killed_at_ms);
    eprintln!("the new leader placed its first task {took:?} after the leader was killed");
    assert!(
        took <= LEASE_TTL + Duration::from_secs(1),
        "the new leader placed work {took:?} after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_etcd_down_for_10_seconds_tasks_keep_running_writes_get_503_and_all_is_well_after() {
    let cluster = Cluster::builder().etcd_masters(2).agents(2).start().await;
    let client = client_of(&cluster);
    let markers = cluster.scratch_dir("markers");
    let pids = cluster.scratch_dir("pids");
    // Two long-running service tasks that record their PIDs.
    let steady = Job::service(
        "steady",
        &format!(
            "echo $$ > {}/$DROVER_TASK_INDEX; exec sleep 1000",
            sh_quote(pids.to_string_lossy())
        ),
    )
    .count(2)
    .cpu_millis(10);
    assert!(submit_until_acknowledged(&client, &steady, WAIT).await);
    let before = marking_job(&markers, "before");
    assert!(submit_until_acknowledged(&client, &before, WAIT).await);
    cluster.wait_running(&steady.id(), WAIT).await;
    cluster
        .wait_job(&before.id(), JobState::Complete, WAIT)
        .await;
    let pid_files: Vec<PathBuf> = (0..2).map(|i| pids.join(i.to_string())).collect();
    let task_pids: Vec<i32> = eventually("both PID files", WAIT, || async {
        pid_files
            .iter()
            .map(|p| read_pid(p))
            .collect::<Option<Vec<i32>>>()
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let steady_allocs: Vec<String> = cluster
        .tasks(&steady.id())
        .await
        .iter()
        .map(|t| t.latest().expect("placed").id.to_string())
        .collect();

    cluster.etcd().kill();
    let outage = Instant::now();
    // Submissions throughout the outage: none may be acknowledged unless
    // it is kept, and once the leader's lease is gone every master says
    // 503 with Retry-After.
    let mut acked_during = BTreeSet::new();
    let mut refused = 0;
    let mut n = 0;
    while outage.elapsed() < Duration::from_secs(10) {
        n += 1;
        let name = format!("during-{n:03}");
        let job = marking_job(&markers, &name);
        match client.submit(&job.to_json(), SpecFormat::Json).await {
            Ok(_) => {
                acked_during.insert(name);
            }
            Err(e) => {
                assert_eq!(e.status(), Some(503), "{e}");
                refused += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        refused > 0,
        "every submission was acknowledged with etcd down"
    );
    for addr in cluster.master_addrs() {
        let one = Client::new(vec![addr.clone()], None);
        let reply = one
            .raw(
                "POST",
                "/v1/jobs",
                Some((
                    "application/json",
                    marking_job(&markers, "refused").to_json().into(),
                )),
            )
            .await
            .expect("an answer");
        assert_eq!(reply.status, 503, "{addr}: {:?}", reply.body);
        let ready = one.raw("GET", "/readyz", None).await.expect("an answer");
        assert_eq!(ready.status, 503, "{addr} is ready with etcd down");
    }
    for pid in &task_pids {
        assert!(
            pid_alive(*pid),
            "task PID {pid} died during the etcd outage"
        );
    }

    cluster.etcd().restart();
    let recovered = Instant::now();
    cluster.leader(WAIT).await;
    eprintln!(
        "a leader again {:?} after etcd came back",
        recovered.elapsed()
    );
    let after = marking_job(&markers, "after");
    assert!(submit_until_acknowledged(&client, &after, WAIT).await);
    cluster
        .wait_job(&after.id(), JobState::Complete, WAIT)
        .await;

    // Nothing acknowledged was lost, and nothing ran twice.
    let mut expected: BTreeSet<String> = acked_during.clone();
    expected.extend(["before".to_string(), "after".to_string()]);
    let mut listed = job_names(&client).await;
    listed.remove("steady");
    assert!(
        expected.is_subset(&listed),
        "lost: {:?}",
        expected.difference(&listed).collect::<Vec<_>>()
    );
    all_succeeded(&client, &listed).await;
    ran_exactly_once(&client, &markers, &listed).await;
    // The service tasks ran on untouched: same processes, same attempts,
    // and both nodes still up.
    for pid in &task_pids {
        assert!(pid_alive(*pid), "task PID {pid} died after the outage");
    }
    let allocs_after: Vec<String> = cluster
        .tasks(&steady.id())
        .await
        .iter()
        .map(|t| t.latest().expect("placed").id.to_string())
        .collect();
    assert_eq!(allocs_after, steady_allocs);
    for i in 0..2 {
        let node = cluster.node_view(&cluster.node(i)).await;
        assert_eq!(node.state, NodeState::Ready, "{node:?}");
    }
}
