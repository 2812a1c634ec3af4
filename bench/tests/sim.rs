//! The simulated-agents load generator against a real `drover-master`
//! binary, small enough for CI. It checks correctness only, never speed:
//! every task placed exactly once and succeeded, no node over-committed.

use std::time::Duration;

use drover_api::client::Client;
use drover_api::TaskState;
use drover_bench::sim::{
    master_binary, plan_jobs, raise_fd_limit, submit_plan, MasterProcess, MasterSettings, Sim,
    SimOptions, SimReport,
};

/// Starts a master, registers `nodes` simulated nodes, submits the plan and
/// waits for every task to succeed; returns what the nodes saw.
async fn run(
    nodes: usize,
    tasks: u32,
    jobs: u32,
    options: SimOptions,
) -> (MasterProcess, Client, SimReport) {
    raise_fd_limit().unwrap();
    let master =
        MasterProcess::start(&master_binary().unwrap(), MasterSettings::for_nodes(nodes)).unwrap();
    let client = Client::new(vec![master.addr.clone()], None);
    let plan = plan_jobs("sim", tasks, jobs, true);
    let sim = Sim::start(&master.addr, nodes, &plan, options)
        .await
        .unwrap();
    sim.mark_start();
    submit_plan(&client, &plan).await.unwrap();
    let done = sim.wait_all_succeeded(Duration::from_secs(120)).await;
    let report = sim.report();
    master.quiet();
    sim.stop().await;
    assert!(done, "not every task succeeded in time: {report:#?}");
    (master, client, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_run_two_thousand_tasks_each_placed_once_on_nodes_never_over_committed() {
    let (_master, client, r) = run(50, 2000, 20, SimOptions::default()).await;
    assert_eq!(r.error_count, 0, "{:#?}", r.errors);
    assert_eq!(r.tasks, 2000);
    assert_eq!(r.progress.running, 2000);
    assert_eq!(r.progress.succeeded, 2000);
    assert_eq!(
        r.placed_once, 2000,
        "every task got exactly one alloc: {r:#?}"
    );
    assert_eq!((r.restarts, r.taken), (0, 0), "{r:#?}");
    assert!(r.all_running.unwrap() <= r.all_succeeded.unwrap());

    // The master agrees: every job complete, every task one attempt.
    let jobs = client.jobs(None).await.unwrap();
    assert_eq!(jobs.len(), 20);
    for job in &jobs {
        assert_eq!(job.state, drover_api::JobState::Complete, "{job:?}");
        for task in client.tasks(&job.id).await.unwrap() {
            assert_eq!(task.state, TaskState::Succeeded, "{task:?}");
            assert_eq!(task.attempts.len(), 1, "{task:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_too_small_for_its_queue_is_filled_but_never_over_committed() {
    // Four nodes (62 allocatable CPUs, 4 GPUs on one) for 400 tasks of
    // 50m–500m that each hold their resources for 200 ms: most of the
    // queue waits, and high-priority tasks may preempt (a restart, fine).
    let options = SimOptions {
        task_duration: Duration::from_millis(200),
        ..SimOptions::default()
    };
    let (_master, _client, r) = run(4, 400, 8, options).await;
    assert_eq!(r.error_count, 0, "{:#?}", r.errors);
    assert_eq!(r.progress.succeeded, 400);
    assert!(r.peak_share >= 0.99, "some node was filled: {r:#?}");
    assert_eq!(
        r.restarts, r.taken,
        "each alloc taken away was replaced once: {r:#?}"
    );
}
