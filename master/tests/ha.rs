//! Two real `drover-master` binaries on one real etcd (DESIGN §7): one is
//! elected and serves; the other follows, answering the API with 503 and
//! the leader's address. When the leader is killed with `kill -9`, the
//! other takes office after the lease expires, with every job the first one
//! acknowledged; a leader paused past its lease steps down, and is elected
//! again, reloading what was written meanwhile, when the other one dies.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

mod support;
use support::etcd::Etcd;
use support::http::{exchange, http};
use support::{free_port, MasterProcess};

fn start_master(
    dir: &std::path::Path,
    name: &str,
    etcd: &str,
    listen: SocketAddr,
) -> MasterProcess {
    let config = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &config,
        format!(
            "listen: {listen}\ndata_dir: {}\nstore:\n  backend: etcd\n  etcd:\n    endpoints: [{etcd}]\n    prefix: /ha-test/\n    lease_ttl: 2s\n",
            dir.join(name).display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_drover-master"))
        .arg("--config")
        .arg(&config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    MasterProcess(child)
}

/// Polls `addr` until it leads (`/readyz` answers 200), for at most
/// `within`, and returns how long that took.
async fn leading_within(addr: SocketAddr, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http(addr, "GET", "/readyz", "text/plain", "").await.0 == 200
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Polls `addr` until it answers as a follower: healthy, not ready.
async fn following_within(addr: SocketAddr, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && http(addr, "GET", "/healthz", "text/plain", "").await.0 == 200
            && http(addr, "GET", "/readyz", "text/plain", "").await.0 == 503
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The value of `drover_is_leader` on `addr`'s `/metrics`.
async fn is_leader_metric(addr: SocketAddr) -> f64 {
    let (status, body) = http(addr, "GET", "/metrics", "text/plain", "").await;
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix("drover_is_leader "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no drover_is_leader in:\n{body}"))
}

/// One etcd and two masters on it: `a`, elected and serving, and `b`, its
/// standby. Fields named `_…` only need to live as long as the test.
struct Pair {
    _etcd: Etcd,
    _dir: tempfile::TempDir,
    a: MasterProcess,
    a_addr: SocketAddr,
    _b: MasterProcess,
    b_addr: SocketAddr,
}

impl Pair {
    async fn start() -> Pair {
        let etcd = Etcd::start();
        let dir = tempfile::tempdir().unwrap();
        let (a_addr, b_addr) = (free_port(), free_port());
        let a = start_master(dir.path(), "a", &etcd.endpoint(), a_addr);
        leading_within(a_addr, Duration::from_secs(15))
            .await
            .expect("the first master is elected and serves");
        let b = start_master(dir.path(), "b", &etcd.endpoint(), b_addr);
        assert!(
            following_within(b_addr, Duration::from_secs(15)).await,
            "the second master listens as a follower"
        );
        Pair {
            _etcd: etcd,
            _dir: dir,
            a,
            a_addr,
            _b: b,
            b_addr,
        }
    }
}

#[tokio::test]
async fn a_standby_master_takes_over_with_every_acknowledged_job_when_the_leader_is_killed() {
    let Pair {
        _etcd,
        _dir,
        mut a,
        a_addr,
        _b,
        b_addr,
    } = Pair::start().await;

    for i in 0..20 {
        let spec = format!("name: job-{i}\ncommand: [/bin/true]\n");
        let (status, body) = http(a_addr, "POST", "/v1/jobs", "application/yaml", &spec).await;
        assert_eq!(status, 201, "{body}");
    }
    // The standby follows: it refuses the API with 503, Retry-After and
    // the leader's address, so that clients move on to the leader.
    let (status, head, body) = exchange(
        b_addr,
        "POST",
        "/v1/jobs",
        "application/yaml",
        "name: refused\ncommand: [/bin/true]\n",
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(body.contains("\"not_leader\""), "{body}");
    let (status, body) = http(b_addr, "GET", "/v1/jobs", "text/plain", "").await;
    assert_eq!(status, 503, "{body}");
    // Who leads, once the follower has asked etcd (every second).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http(b_addr, "GET", "/v1/status/leader", "text/plain", "").await;
        if status == 200 {
            assert!(body.contains(&a_addr.to_string()), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never named the leader: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(is_leader_metric(a_addr).await, 1.0);
    assert_eq!(is_leader_metric(b_addr).await, 0.0);

    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let took = leading_within(b_addr, Duration::from_secs(15))
        .await
        .expect("the standby takes office");
    eprintln!("the standby took office {took:?} after the leader was killed");
    // Lease TTL 2 s, plus a second to load and listen.
    assert!(took < Duration::from_secs(3), "took office after {took:?}");
    let mut expected: Vec<String> = (0..20).map(|i| format!("job-{i}")).collect();
    expected.sort();
    assert_eq!(job_names(b_addr).await, expected);
    let (status, body) = http(b_addr, "GET", "/v1/cluster", "text/plain", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"store_backend\":\"etcd\""), "{body}");
    assert_eq!(is_leader_metric(b_addr).await, 1.0);
}

async fn job_names(addr: SocketAddr) -> Vec<String> {
    let (status, body) = http(addr, "GET", "/v1/jobs", "text/plain", "").await;
    assert_eq!(status, 200, "{body}");
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let mut names: Vec<String> = jobs
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_leader_paused_past_its_lease_has_its_writes_refused_steps_down_and_leads_again_later() {
    let Pair {
        _etcd,
        _dir,
        a,
        a_addr,
        _b: mut b,
        b_addr,
    } = Pair::start().await;
    let spec = |name: &str| format!("name: {name}\ncommand: [/bin/true]\n");
    let (status, body) = http(
        a_addr,
        "POST",
        "/v1/jobs",
        "application/yaml",
        &spec("before"),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // Frozen (a long GC pause, a stalled VM): its lease runs out and the
    // standby takes office.
    a.signal("-STOP");
    leading_within(b_addr, Duration::from_secs(15))
        .await
        .expect("the standby takes office while the leader is frozen");
    let (status, body) = http(
        b_addr,
        "POST",
        "/v1/jobs",
        "application/yaml",
        &spec("on-b"),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // A submission reaches the frozen master (its kernel accepts the
    // connection); it is handled only once the master runs again.
    let late = tokio::spawn(async move {
        http(
            a_addr,
            "POST",
            "/v1/jobs",
            "application/yaml",
            &spec("late"),
        )
        .await
    });
    a.signal("-CONT");
    // Answered with an error (the fenced commit fails, or the master has
    // stepped down first): never acknowledged.
    let (status, body) = late.await.unwrap();
    assert!(
        !(200..300).contains(&status),
        "a deposed master acknowledged a write: {status} {body}"
    );
    // It notices the lost lease and follows, without exiting.
    assert!(
        following_within(a_addr, Duration::from_secs(10)).await,
        "the deposed master did not step down"
    );
    assert_eq!(is_leader_metric(a_addr).await, 0.0);
    assert_eq!(job_names(b_addr).await, ["before", "on-b"]);

    // When the other master dies, it is elected again and serves what was
    // written while it followed.
    b.0.kill().unwrap();
    b.0.wait().unwrap();
    leading_within(a_addr, Duration::from_secs(15))
        .await
        .expect("the first master leads again");
    assert_eq!(job_names(a_addr).await, ["before", "on-b"]);
    assert_eq!(is_leader_metric(a_addr).await, 1.0);
}
