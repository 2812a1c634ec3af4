//! A small run of each end-to-end benchmark, for CI: it checks that the
//! benchmarks still work and that what they measure is correct (every task
//! runs once and succeeds), not how fast it is.

use drover_bench::{
    drover_binary, latency, rates_by_tenth, spawn_limit, throughput, DevCluster, Summary,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_submissions_each_reach_running_and_are_measured() {
    let cluster = DevCluster::start(&drover_binary().unwrap(), 1).unwrap();
    let samples = latency(&cluster.client(), 5).await.unwrap();
    let s = Summary::of(&samples).unwrap();
    assert_eq!(s.count, 5);
    assert!(s.min <= s.p50 && s.p50 <= s.p99 && s.p99 <= s.max, "{s:?}");
    let jobs = cluster.client().jobs(None).await.unwrap();
    assert!(
        jobs.is_empty(),
        "each job is purged after it is measured: {jobs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_throughput_run_completes_every_task_exactly_once() {
    let cluster = DevCluster::start(&drover_binary().unwrap(), 1).unwrap();
    let t = throughput(&cluster.client(), "throughput", 100)
        .await
        .unwrap();
    assert_eq!(t.tasks, 100);
    assert_eq!(t.retried, 0, "every task succeeded at its first attempt");
    let job = cluster
        .client()
        .job(&"throughput".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(job.count(drover_api::TaskState::Succeeded), 100, "{job:?}");
    assert_eq!(t.tenths.len(), 10, "{t:?}");
    assert!(t.tenths.iter().all(|r| r.is_finite() && *r > 0.0), "{t:?}");
}

#[test]
fn the_spawn_limit_starts_and_reaps_every_process() {
    let rate = spawn_limit(200, 2).unwrap();
    assert!(rate.is_finite() && rate > 0.0, "{rate}");
}

#[test]
fn rates_by_tenth_count_each_tenth_from_the_end_of_the_one_before() {
    // 20 tasks: two finish every 100 ms, then the last tenth takes 1 s.
    let mut done: Vec<u64> = (1..=18u64).map(|i| 1000 + i.div_ceil(2) * 100).collect();
    done.extend([2900, 2900]);
    let r = rates_by_tenth(1000, done);
    assert_eq!(r.len(), 10);
    assert!(r[..9].iter().all(|x| (*x - 20.0).abs() < 1e-9), "{r:?}");
    assert!((r[9] - 2.0).abs() < 1e-9, "{r:?}");
    assert!(rates_by_tenth(0, vec![1, 2, 3]).is_empty());
}
