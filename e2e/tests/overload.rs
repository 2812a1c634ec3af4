//! Overload against the real binaries: ten thousand submissions at once
//! while a node's agent restarts every second. The master refuses what it
//! cannot take with 429 and `Retry-After` rather than queueing it, clients
//! and agents wait and come back, and every acknowledged job is stored.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_api::client::{Client, ClientError, SpecFormat};
use drover_api::views::SubmitOutcome;
use drover_api::{JobId, NodeState};
use drover_e2e::{Cluster, Job};

const SUBMISSIONS: usize = 10_000;
/// Tasks that may wait to be placed: far fewer than the submissions, so
/// that the backlog limit is met even on a slow machine (this one takes
/// 1,300 to 6,000 of the 10,000 in the first 30 s, as its disk allows).
const MAX_PENDING: usize = 1_000;
/// What the master may take in resident memory meanwhile (a debug build;
/// measured 23 MiB at rest and 144 MiB at the peak of this test).
const RSS_BOUND: u64 = 400 << 20;

/// Resident bytes of `pid`, from /proc.
fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Ten thousand sockets to the master from this process, as many in the
/// master (which inherits the limit): up to the kernel's `nr_open` where
/// this process may (root), else the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard)
        .min(1 << 20);
    let limit = if setrlimit(Resource::RLIMIT_NOFILE, ceiling, ceiling).is_ok() {
        ceiling
    } else {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
        hard
    };
    assert!(
        limit >= SUBMISSIONS as u64 + 4096,
        "the open-file limit {limit} is too low for this test"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_submissions_at_once_meet_429s_not_growth_and_every_acknowledged_job_is_stored(
) {
    raise_fd_limit();
    let cluster = Cluster::builder()
        .fast_failure_detection()
        .max_requests(64, 6)
        .max_pending_tasks(MAX_PENDING)
        .start()
        .await;
    let master_pid = cluster.master().pid();
    let rss_at_rest = rss_of(master_pid).expect("the master's RSS");

    // The master's peak memory, sampled until the flood is over.
    let flooding = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(rss_at_rest));
    let sampler = {
        let (flooding, peak) = (Arc::clone(&flooding), Arc::clone(&peak));
        std::thread::spawn(move || {
            while flooding.load(Ordering::Relaxed) {
                if let Some(rss) = rss_of(master_pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Tasks no node can take: each acknowledged one stays pending, so the
    // backlog fills up.
    let client = Arc::new(
        Client::new(vec![cluster.master().addr().to_string()], None)
            .with_timeout(Duration::from_secs(60))
            .with_patience(Duration::from_secs(30)),
    );
    let started = Instant::now();
    let flood: Vec<_> = (0..SUBMISSIONS)
        .map(|i| {
            let client = Arc::clone(&client);
            tokio::spawn(async move {
                let job = Job::batch(&format!("flood-{i}"), "true").cpu_millis(512_000);
                (
                    job.id(),
                    client.submit(&job.to_json(), SpecFormat::Json).await,
                )
            })
        })
        .collect();
    let flood = tokio::spawn(async move {
        let mut answers = Vec::with_capacity(flood.len());
        for submission in flood {
            answers.push(submission.await);
        }
        answers
    });

    // Meanwhile a node flaps: silent past node_timeout (down), then back
    // (registering again), over and over.
    let mut flaps = 0;
    while !flood.is_finished() {
        cluster.pause_agent(2);
        tokio::time::sleep(cluster.node_timeout() + Duration::from_millis(500)).await;
        cluster.resume_agent(2);
        flaps += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let results = flood.await.expect("the flood");
    flooding.store(false, Ordering::Relaxed);
    sampler.join().expect("the sampler");
    eprintln!(
        "{SUBMISSIONS} submissions answered in {:?}, {flaps} flaps, master RSS {} MiB at rest, {} MiB at the peak",
        started.elapsed(),
        rss_at_rest >> 20,
        peak.load(Ordering::Relaxed) >> 20
    );

    // Each call was acknowledged, or refused with 429 after the client's
    // patience ran out; nothing else.
    let mut acknowledged = BTreeSet::new();
    let (mut backlog_full, mut overloaded) = (0, 0);
    for joined in results {
        let (id, answer) = joined.expect("a submission task");
        match answer {
            Ok(a) => {
                assert_eq!(a.outcome, SubmitOutcome::Created, "{id}: {a:?}");
                acknowledged.insert(id);
            }
            Err(ClientError::Api {
                status: 429,
                code,
                retry_after,
                ..
            }) => match code.as_str() {
                "backlog_full" => {
                    assert_eq!(retry_after, Some(5), "{id}");
                    backlog_full += 1;
                }
                "overloaded" => {
                    assert_eq!(retry_after, Some(1), "{id}");
                    overloaded += 1;
                }
                other => panic!("{id}: 429 {other}"),
            },
            Err(e) => panic!("{id}: {e}"),
        }
    }
    for sample in [
        "drover_schedule_pass_duration_seconds_sum",
        "drover_schedule_pass_duration_seconds_count",
        "drover_node_failures_total",
        r#"drover_http_throttled_total{reason="agent"}"#,
        r#"drover_http_throttled_total{reason="api"}"#,
    ] {
        eprintln!("{sample} {}", cluster.metric(sample).await);
    }
    eprintln!(
        "final answers: {} acknowledged, {backlog_full} backlog full, {overloaded} still overloaded after 30 s",
        acknowledged.len()
    );
    assert_eq!(
        acknowledged.len(),
        MAX_PENDING,
        "the backlog fills up to its limit and no further"
    );
    assert!(backlog_full > 0);
    let summary = cluster.client().cluster().await.expect("the cluster");
    assert_eq!(summary.queue_depth, MAX_PENDING as u64, "{summary:?}");
    let throttled_api = cluster
        .metric(r#"drover_http_throttled_total{reason="api"}"#)
        .await;
    let throttled_agent = cluster
        .metric(r#"drover_http_throttled_total{reason="agent"}"#)
        .await;
    let backlog = cluster
        .metric(r#"drover_http_throttled_total{reason="backlog"}"#)
        .await;
    eprintln!("429s: {throttled_api} api, {throttled_agent} agent, {backlog} backlog");
    assert!(
        throttled_api > 0.0,
        "64 calls at once never turned a caller away"
    );
    assert!(backlog >= backlog_full as f64, "{backlog} < {backlog_full}");
    let peak = peak.load(Ordering::Relaxed);
    assert!(
        peak < RSS_BOUND,
        "the master grew to {} MiB (bound {} MiB)",
        peak >> 20,
        RSS_BOUND >> 20
    );
    assert!(flaps >= 1);
    let failures = cluster.metric("drover_node_failures_total").await;
    assert!(failures >= 1.0, "the flapping node was never down");
    // The agents, throttled or not, are all there, the flapping one back.
    for i in 0..3 {
        cluster
            .wait_node(&cluster.node(i), NodeState::Ready, Duration::from_secs(10))
            .await;
    }
    let mut cluster = cluster;

    // Every acknowledged job survives a crash; no refused one was stored.
    cluster.restart_master(0);
    let stored: BTreeSet<JobId> = cluster
        .client()
        .jobs(None)
        .await
        .expect("the jobs")
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(stored.len(), acknowledged.len());
    assert!(
        stored == acknowledged,
        "the stored jobs are not the acknowledged ones"
    );
}
