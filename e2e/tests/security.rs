//! Identity on real binaries: an agent joins with a join token, keeps the
//! credential it is given (0600), speaks with it from then on (across a
//! restart), and is shut out once an operator revokes it; a submitter may
//! change only its own jobs, and every write leaves one audit line; and
//! every attack tried with one node's stolen credential fails and changes
//! nothing.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use drover_api::client::{Client, ClientError, LogStream, SpecFormat};
use drover_api::protocol::{
    AllocUpdate, HeartbeatRequest, NodeDescriptor, NodeResources, RegisterRequest, PROTOCOL_VERSION,
};
use drover_api::{AllocState, NodeId, TaskState};
use drover_api::{JobState, NodeState};
use drover_e2e::{eventually, Cluster, Job, CI_TOKEN, JOIN_TOKEN, OTHER_TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn an_agent_joins_keeps_its_credential_across_a_restart_and_is_shut_out_when_revoked() {
    let mut cluster = Cluster::builder()
        .agents(1)
        .fast_failure_detection()
        .tokens()
        .start()
        .await;
    let node = cluster.node(0);
    let file = cluster.agent(0).data_dir().join("credential");
    let credential = std::fs::read_to_string(&file).expect("the agent kept its credential");
    assert!(
        credential.starts_with(&format!("drover-node.{node}.")),
        "{credential}"
    );
    assert!(!credential.contains(JOIN_TOKEN));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");

    let job = Job::batch("first", "echo DB_PASSWORD=hunter2");
    cluster.submit(&job).await;
    cluster.wait_job(&job.id(), JobState::Complete, WAIT).await;
    // Through the master, the log is there; straight from the agent's log
    // server, without the master's capability, it is not.
    let task = job.id().task(0);
    assert_eq!(
        cluster.logs(&task, LogStream::Stdout).await,
        "DB_PASSWORD=hunter2\n"
    );
    let log_addr = cluster.node_view(&node).await.desc.log_addr;
    let (status, body) = raw_get(&log_addr, &format!("/v1/allocs/{}/logs", task.alloc(1))).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains("hunter2"), "{body}");

    // Restarted, the agent speaks with its credential: the join token alone
    // could no longer register this node.
    cluster.kill_agent(0);
    cluster.start_agent(0).await;
    let again = std::fs::read_to_string(&file).unwrap();
    assert_eq!(again, credential, "a rejoin would have issued another");
    let job = Job::batch("second", "true");
    cluster.submit(&job).await;
    cluster.wait_job(&job.id(), JobState::Complete, WAIT).await;

    let revoked = cluster
        .client()
        .revoke_node(&node)
        .await
        .expect("an admin may revoke");
    assert!(
        revoked.revoked && revoked.state == NodeState::Down,
        "{revoked:?}"
    );
    // The agent's heartbeats are refused now: the node stays down.
    tokio::time::sleep(cluster.node_timeout()).await;
    eventually("the revoked node still down", WAIT, || async {
        let n = cluster.node_view(&node).await;
        if n.state == NodeState::Down {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    let log = std::fs::read_to_string(cluster.agent(0).log_path()).unwrap_or_default();
    assert!(log.contains("revoked"), "the agent's log says why:\n{log}");
}

#[tokio::test]
async fn a_submitter_may_stop_only_its_own_jobs_and_every_write_is_audited_once() {
    let cluster = Cluster::builder().agents(1).tokens().start().await;
    let addrs = cluster.master_addrs();
    let ci = Client::new(addrs.clone(), Some(CI_TOKEN.to_string()));
    let other = Client::new(addrs, Some(OTHER_TOKEN.to_string()));
    let spec = Job::batch("mine", "sleep 30").to_json();
    ci.submit(&spec, SpecFormat::Json)
        .await
        .expect("ci submits");
    let id = Job::batch("mine", "").id();
    assert_eq!(cluster.job(&id).await.owner.as_deref(), Some("ci"));
    let refused = other.stop(&id, true).await.expect_err("not other's job");
    assert!(refused.to_string().contains("belongs to ci"), "{refused}");
    assert_ne!(cluster.job(&id).await.state, JobState::Stopped);
    ci.stop(&id, false).await.expect("ci stops its own job");
    cluster
        .client()
        .stop(&id, true)
        .await
        .expect("an admin purges any job");

    // One JSON line per write on the drover::audit target: who, what, outcome.
    let log = std::fs::read_to_string(cluster.master().log_path()).unwrap();
    let audit: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "drover::audit")
        .collect();
    let seen: Vec<(String, String, u64)> = audit
        .iter()
        .filter(|v| v["fields"]["action"] != "agent_register")
        .map(|v| {
            let f = &v["fields"];
            (
                f["who"].as_str().unwrap_or_default().to_string(),
                f["action"].as_str().unwrap_or_default().to_string(),
                f["status"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let expect = [
        ("ci", "submit_job", 201),
        ("other", "stop_job", 403),
        ("ci", "stop_job", 200),
        ("ops", "stop_job", 200),
    ]
    .map(|(w, a, s)| (w.to_string(), a.to_string(), s));
    assert_eq!(seen, expect, "{audit:#?}");
    assert!(
        audit
            .iter()
            .any(|v| v["fields"]["action"] == "agent_register" && v["fields"]["who"] == "join"),
        "the agent's join is audited too: {audit:#?}"
    );
}

/// A plain GET, as anyone on the network could send it.
async fn raw_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// What an attacker on node n1 has: the credential in n1's data dir.
fn stolen_credential(cluster: &Cluster) -> String {
    std::fs::read_to_string(cluster.agent(0).data_dir().join("credential"))
        .expect("n1's credential")
}

fn status(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::Api { status, .. } => Some(*status),
        _ => None,
    }
}

#[tokio::test]
async fn a_stolen_node_credential_can_do_nothing_but_speak_for_its_own_node() {
    let cluster = Cluster::builder().agents(2).tokens().start().await;
    let (n1, n2) = (cluster.node(0), cluster.node(1));
    // Someone's job runs on n2.
    let ci = Client::new(cluster.master_addrs(), Some(CI_TOKEN.to_string()));
    let spec = Job::batch("victim", "sleep 60").on_node(&n2).to_json();
    ci.submit(&spec, SpecFormat::Json)
        .await
        .expect("ci submits");
    let id = Job::batch("victim", "").id();
    let running = cluster.wait_running(&id, WAIT).await;
    let alloc = running[0].latest().unwrap().id.clone();

    let thief = Client::new(cluster.master_addrs(), Some(stolen_credential(&cluster)));
    // Not a user: no submitting, purging, draining.
    let e = thief
        .submit(&Job::batch("mine", "true").to_json(), SpecFormat::Json)
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(403), "{e}");
    let e = thief.stop(&id, true).await.unwrap_err();
    assert_eq!(status(&e), Some(403), "{e}");
    let e = thief.drain(&n2, true, None).await.unwrap_err();
    assert_eq!(status(&e), Some(403), "{e}");

    // Not another node: no fake node, no heartbeat as n2.
    let mut fake = RegisterRequest {
        node_id: Some(NodeId::new("fake-64").unwrap()),
        desc: NodeDescriptor {
            hostname: "fake".into(),
            log_addr: "127.0.0.1:1".into(),
            resources: NodeResources {
                cpu_millis: 64_000,
                memory_bytes: 512 << 30,
                gpus: vec![],
            },
            version: "evil".into(),
            ..NodeDescriptor::default()
        },
        protocol: PROTOCOL_VERSION,
        running_allocs: vec![],
    };
    let e = thief.register(&fake).await.unwrap_err();
    assert_eq!(status(&e), Some(403), "{e}");
    fake.node_id = Some(n2.clone());
    let e = thief.register(&fake).await.unwrap_err();
    assert_eq!(status(&e), Some(403), "{e}");
    let forged = |node: &NodeId| HeartbeatRequest {
        node_id: node.clone(),
        offer: Default::default(),
        usage: Default::default(),
        updates: vec![AllocUpdate {
            alloc: alloc.clone(),
            state: AllocState::Succeeded,
            exit_code: Some(0),
            signal: None,
            message: None,
            at_unix_ms: 1,
        }],
    };
    let e = thief.heartbeat(&forged(&n2)).await.unwrap_err();
    assert_eq!(status(&e), Some(403), "{e}");
    // As n1 itself, a report about n2's alloc is refused and counted.
    thief
        .heartbeat(&forged(&n1))
        .await
        .expect("n1 may heartbeat for itself");

    // Nothing changed: the victim's task still runs, its job is still there,
    // no node was added or drained.
    let task = cluster.task(&id.task(0)).await;
    assert_eq!(task.state, TaskState::Running, "{task:?}");
    assert_eq!(task.latest().unwrap().state, AllocState::Running);
    assert_eq!(cluster.job(&id).await.state, JobState::Running);
    let nodes = cluster.client().nodes().await.unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    assert!(nodes.iter().all(|n| n.drain.is_none()), "{nodes:?}");
    let metrics = cluster.client().raw("GET", "/metrics", None).await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    assert!(
        text.contains("drover_rejected_agent_updates_total{reason=\"foreign_alloc\"} 1"),
        "{text}"
    );
    // And nobody without a token gets a task's log from an agent directly.
    let log_addr = cluster.node_view(&n2).await.desc.log_addr;
    let (code, _) = raw_get(&log_addr, &format!("/v1/allocs/{alloc}/logs")).await;
    assert_eq!(code, 401);
    // Specs asking for what no machine has are a 400, not a queued task.
    let e = ci
        .submit(
            r#"{"name": "huge", "command": ["true"], "resources": {"cpu": "999999", "memory": "15Ei"}}"#,
            SpecFormat::Json,
        )
        .await
        .unwrap_err();
    assert_eq!(status(&e), Some(400), "{e}");
    assert!(e.to_string().contains("resources.cpu"), "{e}");
}
