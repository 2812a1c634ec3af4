//! A small run of each end-to-end benchmark, for CI: it checks that the
//! benchmarks still work and that what they measure is correct (every task
//! runs once and succeeds), not how fast it is.

use drover_bench::{drover_binary, latency, throughput, DevCluster, Summary};

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
    let t = throughput(&cluster.client(), 100).await.unwrap();
    assert_eq!(t.tasks, 100);
    assert_eq!(t.retried, 0, "every task succeeded at its first attempt");
    let job = cluster
        .client()
        .job(&"throughput".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(job.count(drover_api::TaskState::Succeeded), 100, "{job:?}");
}
