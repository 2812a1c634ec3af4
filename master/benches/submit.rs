//! Submission over loopback HTTP against a real master, once on each store
//! backend (embedded, fsync per commit; and a private local etcd, as
//! several masters run): latency of one submission, submissions/s with
//! concurrent clients, and idle submit → assignment latency as seen by an
//! agent's long poll. `cargo bench -p drover-master --bench submit` prints a
//! table for BENCHMARKS.md; under `cargo test --benches` it runs a few
//! requests only, as a smoke test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_master::auth::Auth;
use drover_master::clock::Clock;
use drover_master::core::{Master, Settings};
use drover_master::store::etcd::EtcdOptions;
use drover_master::store::{EmbeddedStore, EtcdStore, Store};
use tokio::net::TcpListener;

#[path = "../tests/support/http.rs"]
mod support;
use support::http;

fn job(name: &str) -> String {
    format!(
        r#"{{"name":"{name}","command":["/bin/true"],"resources":{{"cpu":"10m","memory":"1Mi"}}}}"#
    )
}

/// A job only the idle node can take.
fn idle_job(name: &str) -> String {
    format!(
        r#"{{"name":"{name}","command":["/bin/true"],"resources":{{"cpu":"10m","memory":"1Mi"}},"constraints":{{"labels":{{"role":"idle"}}}}}}"#
    )
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// How many requests each part makes.
#[derive(Clone, Copy)]
struct Sizes {
    sequential: usize,
    concurrent: usize,
    clients: usize,
    polls: usize,
}

struct Row {
    lat: Vec<Duration>,
    rate: f64,
    to_agent: Vec<Duration>,
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            sequential: 1000,
            concurrent: 4000,
            clients: 32,
            polls: 200,
        }
    } else {
        Sizes {
            sequential: 5,
            concurrent: 20,
            clients: 4,
            polls: 3,
        }
    };
    let dir = tempfile::TempDir::new().expect("temp dir");
    let embedded = EmbeddedStore::open(dir.path()).expect("store");
    let embedded = measure(Arc::new(embedded), sizes).await;
    let etcd_server = drover_e2e::etcd::Etcd::start();
    let etcd = EtcdStore::connect(EtcdOptions::new(vec![etcd_server.endpoint()]))
        .await
        .expect("connect to etcd");
    let etcd = measure(Arc::new(etcd), sizes).await;
    drop(etcd_server);

    let Sizes {
        sequential,
        concurrent,
        clients,
        polls,
    } = sizes;
    let per_client = concurrent / clients;
    println!("| measure | embedded | etcd |");
    println!("|---|---|---|");
    let three = |v: &[Duration]| {
        format!(
            "{} / {} / {}",
            ms(pct(v, 0.5)),
            ms(pct(v, 0.99)),
            ms(v[v.len() - 1])
        )
    };
    println!(
        "| submit latency, sequential, p50 / p99 / max ({sequential} jobs) | {} | {} |",
        three(&embedded.lat),
        three(&etcd.lat)
    );
    println!(
        "| submissions/s, {clients} concurrent clients ({} jobs) | {:.0} | {:.0} |",
        per_client * clients,
        embedded.rate,
        etcd.rate
    );
    println!(
        "| idle submit → agent poll returns assignment, p50 / p99 / max ({polls} jobs) | {} | {} |",
        three(&embedded.to_agent),
        three(&etcd.to_agent)
    );
}

async fn measure(store: Arc<dyn Store>, sizes: Sizes) -> Row {
    let Sizes {
        sequential,
        concurrent,
        clients,
        polls,
    } = sizes;
    let settings = Settings {
        poll_timeout: Duration::from_secs(10),
        ..Settings::default()
    };
    let master = Master::open(settings, store, Clock::system())
        .await
        .expect("master");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(drover_master::server::run(
        Arc::clone(&master),
        Arc::new(Auth::disabled()),
        listener,
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    let register = r#"{"node_id":"bench-node","hostname":"bench","log_addr":"127.0.0.1:1","resources":{"cpu_millis":100000000,"memory_bytes":1099511627776},"version":"bench","protocol":1}"#;
    assert_eq!(
        http(
            addr,
            "POST",
            "/v1/agent/register",
            "application/json",
            register
        )
        .await
        .0,
        200
    );
    // A second node, empty, for the idle latency: the agent's view of an
    // idle cluster, not of a node holding thousands of allocs.
    let idle = r#"{"node_id":"idle-node","hostname":"idle","log_addr":"127.0.0.1:1","resources":{"cpu_millis":100000,"memory_bytes":1099511627776},"labels":{"role":"idle"},"version":"bench","protocol":1}"#;
    assert_eq!(
        http(addr, "POST", "/v1/agent/register", "application/json", idle)
            .await
            .0,
        200
    );
    // The simulated agent heartbeats, or liveness would declare it down mid-run.
    let heartbeats = tokio::spawn(async move {
        loop {
            for node in ["bench-node", "idle-node"] {
                let hb = format!(
                    r#"{{"node_id":"{node}","offer":{{"cpu_millis":0,"memory_bytes":0}},"usage":{{"cpu_millis":0,"memory_bytes":0}}}}"#
                );
                assert_eq!(
                    http(addr, "POST", "/v1/agent/heartbeat", "application/json", &hb)
                        .await
                        .0,
                    200
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    // 1. Sequential submissions: latency of one.
    let mut lat = Vec::new();
    for i in 0..sequential {
        let t = Instant::now();
        let (status, body) = http(
            addr,
            "POST",
            "/v1/jobs",
            "application/json",
            &job(&format!("seq-{i}")),
        )
        .await;
        lat.push(t.elapsed());
        assert_eq!(status, 201, "{body}");
    }
    lat.sort();

    // 2. Concurrent submissions: throughput.
    let t = Instant::now();
    let per_client = concurrent / clients;
    let mut handles = Vec::new();
    for c in 0..clients {
        handles.push(tokio::spawn(async move {
            for i in 0..per_client {
                let (status, _) = http(
                    addr,
                    "POST",
                    "/v1/jobs",
                    "application/json",
                    &job(&format!("par-{c}-{i}")),
                )
                .await;
                assert_eq!(status, 201);
            }
        }));
    }
    for h in handles {
        h.await.expect("client");
    }
    let rate = (per_client * clients) as f64 / t.elapsed().as_secs_f64();

    // 3. Idle submit -> the agent's long poll returns the new assignment.
    let mut to_agent = Vec::new();
    let (_, body) = http(
        addr,
        "POST",
        "/v1/agent/poll",
        "application/json",
        r#"{"node_id":"idle-node","known_version":0}"#,
    )
    .await;
    let mut version: u64 = serde_json::from_str::<serde_json::Value>(&body).expect("json")
        ["version"]
        .as_u64()
        .expect("version");
    for i in 0..polls {
        let poll_body = format!(r#"{{"node_id":"idle-node","known_version":{version}}}"#);
        let poll = tokio::spawn(async move {
            http(
                addr,
                "POST",
                "/v1/agent/poll",
                "application/json",
                &poll_body,
            )
            .await
        });
        // Let the poll reach the master and park before submitting.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let name = format!("idle-{i}");
        let t = Instant::now();
        let (status, _) = http(
            addr,
            "POST",
            "/v1/jobs",
            "application/json",
            &idle_job(&name),
        )
        .await;
        assert_eq!(status, 201);
        let (_, body) = poll.await.expect("poll");
        to_agent.push(t.elapsed());
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert!(
            body.contains(&format!("\"{name}/0/1\"")),
            "assignment missing: {body}"
        );
        version = v["version"].as_u64().expect("version");
    }
    to_agent.sort();
    heartbeats.abort();
    let _ = stop.send(());
    server.await.expect("server");

    Row {
        lat,
        rate,
        to_agent,
    }
}
