//! The real `drover-master` binary: started on loopback with a temp data
//! dir, it takes the README's example job, and an agent speaking the
//! protocol receives the assignment; after `kill -9` and a restart the job
//! is still there. Stopped by its own PID.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;
use support::http::http;
use support::{free_port, MasterProcess};

use drover_master::store::{Batch, EmbeddedStore, Store};

/// The job spec from the README (and DESIGN §5).
const README_JOB: &str = r#"name: render
type: batch
priority: 50
policy: least-loaded
count: 8
command: ["/usr/bin/render", "--fast"]
env: { QUALITY: high }
resources: { cpu: 500m, memory: 256Mi, gpu: 1 }
constraints: { labels: { zone: a }, gpu_model: "H100" }
restart: { attempts: 3, delay: 1s, backoff: 2.0 }
"#;

async fn start(addr: SocketAddr, data_dir: &std::path::Path) -> MasterProcess {
    let child = Command::new(env!("CARGO_BIN_EXE_drover-master"))
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let proc = MasterProcess(child);
    // Wait until it answers, for at most 10 s.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http(addr, "GET", "/healthz", "text/plain", "").await.0 == 200
        {
            return proc;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("drover-master did not start on {addr}");
}

#[tokio::test]
async fn the_binary_takes_the_readme_job_and_an_agent_receives_it_and_it_survives_kill_9() {
    let dir = tempfile::TempDir::new().unwrap();
    let addr = free_port();
    let mut master = start(addr, dir.path()).await;

    let gpus: Vec<String> = (0..8)
        .map(|i| {
            format!(r#"{{"index":{i},"uuid":"GPU-{i}","model":"H100","memory_bytes":85899345920}}"#)
        })
        .collect();
    let register = format!(
        r#"{{"node_id":"gpu-1","hostname":"gpu-1","log_addr":"127.0.0.1:1","resources":{{"cpu_millis":64000,"memory_bytes":549755813888,"gpus":[{}]}},"labels":{{"zone":"a"}},"version":"test","protocol":1}}"#,
        gpus.join(",")
    );
    let (status, body) = http(
        addr,
        "POST",
        "/v1/agent/register",
        "application/json",
        &register,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let poll = tokio::spawn(async move {
        http(
            addr,
            "POST",
            "/v1/agent/poll",
            "application/json",
            r#"{"node_id":"gpu-1","known_version":0}"#,
        )
        .await
    });
    let (status, body) = http(addr, "POST", "/v1/jobs", "application/yaml", README_JOB).await;
    assert_eq!(status, 201, "{body}");

    // The first poll may answer before the placement; poll until all 8 arrive.
    let (mut status, mut body) = poll.await.unwrap();
    for _ in 0..50 {
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if v["allocs"].as_array().unwrap().len() == 8 {
            break;
        }
        let next = format!(r#"{{"node_id":"gpu-1","known_version":{}}}"#, v["version"]);
        (status, body) = http(addr, "POST", "/v1/agent/poll", "application/json", &next).await;
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let allocs = v["allocs"].as_array().unwrap();
    assert_eq!(allocs.len(), 8, "{body}");
    let mut devices: Vec<String> = allocs
        .iter()
        .map(|a| {
            a["env"]["CUDA_VISIBLE_DEVICES"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    devices.sort();
    devices.dedup();
    assert_eq!(devices.len(), 8, "each task gets its own GPU: {devices:?}");
    assert_eq!(allocs[0]["env"]["QUALITY"], "high");

    // kill -9, restart on the same data dir: the job and its placements remain.
    master.0.kill().unwrap();
    master.0.wait().unwrap();
    let _master = start(addr, dir.path()).await;
    let (status, body) = http(addr, "GET", "/v1/jobs/render", "text/plain", "").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["tasks"]["assigned"], 8, "{body}");
}

#[tokio::test]
async fn sigterm_answers_pending_long_polls_and_exits_without_waiting_out_the_poll_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let mut master = start(addr, dir.path()).await;
    let (status, body) = http(
        addr,
        "POST",
        "/v1/agent/register",
        "application/json",
        &serde_json::to_string(&support::register_request("n1", "127.0.0.1:1", vec![])).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let version: u64 = {
        let (_, body) = http(
            addr,
            "POST",
            "/v1/agent/poll",
            "application/json",
            r#"{"node_id":"n1","known_version":0}"#,
        )
        .await;
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["version"]
            .as_u64()
            .unwrap()
    };
    // A poll at the current version waits (up to the 30 s poll timeout).
    let body = format!(r#"{{"node_id":"n1","known_version":{version}}}"#);
    let poll = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let (status, body) = http(addr, "POST", "/v1/agent/poll", "application/json", &body).await;
        (status, body, started.elapsed())
    });
    // Give the poll time to reach the master. If it has not, it is cut off
    // rather than answered and the test fails: this cannot make it pass.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = std::time::Instant::now();
    master.signal("-TERM");
    let status = master.0.wait().unwrap();
    let took = stopping.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    let (poll_status, poll_body, waited) = poll.await.unwrap();
    // Answered, not cut off; with "ask another master", not with what a
    // master on its way out last knew.
    assert_eq!(poll_status, 503, "{poll_body}");
    assert!(poll_body.contains("\"unavailable\""), "{poll_body}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
}

/// Runs the binary to completion (a refusal to start, or a subcommand).
fn run_master(args: &[&str], data_dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drover-master"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn store_file(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join(drover_master::store::embedded::FILE_NAME)
}

#[tokio::test]
async fn a_corrupt_or_foreign_store_is_refused_naming_the_file_and_check_store_says_why() {
    // A garbage file and a truncated one: refused, the file named, untouched.
    for len in [100usize, 64 * 1024] {
        let dir = tempfile::TempDir::new().unwrap();
        let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(store_file(dir.path()), &garbage).unwrap();
        let (ok, out) = run_master(&[], dir.path());
        assert!(!ok, "started on garbage: {out}");
        assert!(out.contains("drover.redb"), "the file is not named: {out}");
        let (ok, out) = run_master(&["check-store"], dir.path());
        assert!(!ok && out.contains("drover.redb"), "{out}");
        assert_eq!(std::fs::read(store_file(dir.path())).unwrap(), garbage);
    }

    // A store another (newer) version wrote, and one with keys not Drover's.
    for (key, value, says) in [
        ("meta/format", r#"{"format": 99}"#, "newer Drover"),
        ("widgets/w1", "{}", "not Drover's"),
    ] {
        let dir = tempfile::TempDir::new().unwrap();
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let mut batch = Batch::new();
            batch.put(key, value.as_bytes().to_vec());
            store.commit(batch).await.unwrap();
        }
        let (ok, out) = run_master(&[], dir.path());
        assert!(!ok, "started on a foreign store: {out}");
        assert!(out.contains(says) && out.contains("drover.redb"), "{out}");
        let (ok, out) = run_master(&["check-store"], dir.path());
        assert!(!ok && out.contains(says), "{out}");
    }

    // No store at all: check-store says so rather than making one.
    let empty = tempfile::TempDir::new().unwrap();
    let (ok, out) = run_master(&["check-store"], empty.path());
    assert!(!ok && out.contains("no store file"), "{out}");
    assert!(!store_file(empty.path()).exists());
}

#[tokio::test]
async fn check_store_reports_what_a_good_store_holds_and_a_started_master_marks_its_format() {
    let dir = tempfile::TempDir::new().unwrap();
    let addr = free_port();
    let mut master = start(addr, dir.path()).await;
    let (status, body) = http(addr, "POST", "/v1/jobs", "application/yaml", README_JOB).await;
    assert_eq!(status, 201, "{body}");
    // SIGTERM, and wait: the store file is free once the process is gone.
    master.signal("-TERM");
    let _ = master.0.wait();
    let (ok, out) = run_master(&["check-store"], dir.path());
    assert!(ok, "{out}");
    assert!(
        out.contains("ok, format 1,") && out.contains("1 jobs, 8 tasks"),
        "{out}"
    );
}

/// A tmpfs of `bytes` mounted on a new temp dir, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::TempDir::new().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test]
async fn a_full_disk_makes_writes_503_and_service_resumes_once_there_is_room() {
    // Mounting needs root, as the agent's user-switching tests do; CI runs
    // as root.
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    });
    if !root {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let disk = SmallDisk::mount(8 << 20).expect("mount a tmpfs");
    let data = disk.dir.path().join("data");
    // Room the test gives back later.
    let filler = disk.dir.path().join("filler");
    let addr = free_port();
    let _master = start(addr, &data).await;
    std::fs::write(&filler, vec![0u8; 5 << 20]).unwrap();

    let mut refused = 0;
    let mut stored = Vec::new();
    for i in 0..400 {
        let job = format!(
            "name: fill-{i}\ncount: 20\ncommand: [\"/bin/true\"]\nenv: {{PAD: \"{}\"}}\n",
            "x".repeat(3000)
        );
        let (status, body) = http(addr, "POST", "/v1/jobs", "application/yaml", &job).await;
        match status {
            201 => stored.push(format!("fill-{i}")),
            503 => {
                refused += 1;
                if refused >= 3 {
                    break;
                }
            }
            other => panic!("job {i}: {other} {body}"),
        }
    }
    assert!(
        refused >= 3,
        "the disk never filled ({} stored)",
        stored.len()
    );
    // Every acknowledged job is still there.
    for name in &stored {
        let (status, body) = http(addr, "GET", &format!("/v1/jobs/{name}"), "text/plain", "").await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    // Room again: writes are taken again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let mut resumed = false;
    for _ in 0..50 {
        let job = "name: after-room\ncommand: [\"/bin/true\"]\n";
        let (status, _) = http(addr, "POST", "/v1/jobs", "application/yaml", job).await;
        if status == 201 {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(resumed, "writes were still refused after the disk had room");
}
