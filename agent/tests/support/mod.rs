//! What the in-process agent tests share.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use drover_agent::agent::AgentSettings;
use drover_api::protocol::{task_env, Assignment, NodeResources};
use drover_api::{AllocId, JobType};

/// An agent of 2 cores and 1 GiB on `dir` whose masters are a closed
/// port: what it would send stays in its queue of updates, which the tests
/// read.
pub fn settings(dir: &Path) -> AgentSettings {
    AgentSettings {
        masters: vec!["127.0.0.1:1".into()],
        token: None,
        node_id: None,
        data_dir: dir.to_path_buf(),
        hostname: "test".into(),
        log_addr: "127.0.0.1:1".into(),
        resources: NodeResources {
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            gpus: vec![],
        },
        reserved: Default::default(),
        labels: BTreeMap::new(),
        attributes: BTreeMap::new(),
        kill_grace: Duration::from_secs(2),
        stop_after_disconnect: None,
        poll_wait: Duration::from_secs(1),
        log_key: Default::default(),
        master_tls: None,
    }
}

/// A batch task running `script` under sh, on `gpus`.
pub fn assignment(alloc: &str, script: &str, gpus: &[u32]) -> Assignment {
    let id: AllocId = alloc.parse().expect("an alloc id");
    Assignment {
        env: task_env(&id, None, gpus, &BTreeMap::new()),
        alloc: id,
        job_type: JobType::Batch,
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        cpu_millis: 100,
        memory_bytes: 64 << 20,
        gpus: gpus.to_vec(),
        kill_timeout_ms: 2000,
        stop: false,
    }
}

/// Polls `f` until it returns `Some`, for at most `patience`.
pub fn wait_for<T>(what: &str, patience: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < patience, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
