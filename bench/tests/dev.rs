//! `drover dev` itself: its tasks do not outlive it.

use std::time::{Duration, Instant};

use drover_api::client::SpecFormat;
use drover_api::{JobId, TaskState};
use drover_bench::{drover_binary, DevCluster};

/// Pids of the shims whose command line mentions `needle` (a shim's
/// carries its alloc dir, under the cluster's data dir).
fn shims_under(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("__shim") && cmdline.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Exists and is not a zombie waiting to be reaped.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .map(str::trim_start)
            .is_some_and(|s| !s.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_drover_dev_stops_every_task_it_started() {
    let mut cluster = DevCluster::start(&drover_binary().unwrap(), 2).unwrap();
    let client = cluster.client();
    let spec = "name: forever\ntype: service\ncount: 3\ncommand: [/bin/sleep, \"3600\"]\n";
    client.submit(spec, SpecFormat::Yaml).await.unwrap();
    let job = JobId::new("forever").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tasks = client.tasks(&job).await.unwrap();
        if tasks.iter().all(|t| t.state == TaskState::Running) {
            break;
        }
        assert!(Instant::now() < deadline, "tasks never ran: {tasks:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dir = cluster.data_dir().to_string_lossy().into_owned();
    let shims = shims_under(&dir);
    assert_eq!(shims.len(), 3, "one shim per task: {shims:?}");

    let status = cluster.stop().unwrap();
    assert!(
        status.success(),
        "drover dev exits cleanly on SIGTERM: {status}"
    );
    let left: Vec<u32> = shims.into_iter().filter(|pid| alive(*pid)).collect();
    assert!(left.is_empty(), "shims outlived drover dev: {left:?}");
}
