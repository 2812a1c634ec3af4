//! A job's life on a real cluster: submit, run, succeed, read its logs;
//! bad input refused at the door; preemption by a higher-priority job.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use drover_api::client::LogStream;
use drover_api::views::ErrorBody;
use drover_api::{AllocState, JobState, TaskState};
use drover_e2e::{eventually, pid_alive, read_pid, sh_quote, Cluster, Job};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_submitted_job_runs_then_succeeds_and_its_logs_are_readable_through_the_master() {
    let cluster = Cluster::builder().agents(1).start().await;
    let gate = cluster.file("hello.gate");
    // Holds at the gate so the test sees it running, then finishes.
    let script = format!(
        "echo \"hello from $DROVER_TASK_ID\"; echo 'to stderr' >&2; \
         while [ ! -e {gate} ]; do sleep 0.05; done; echo bye",
        gate = sh_quote(gate.to_string_lossy())
    );
    let job = Job::batch("hello", &script);
    let submitted = cluster.submit(&job).await;
    assert_eq!(submitted.state, JobState::Pending, "{submitted:?}");
    assert_eq!(submitted.count(TaskState::Pending), 1, "{submitted:?}");

    let task = job.id().task(0);
    let running = cluster.wait_running(&job.id(), WAIT).await;
    let alloc = running[0].latest().expect("a running task has an attempt");
    assert_eq!(alloc.id, task.alloc(1));
    assert_eq!(alloc.node, cluster.node(0));
    assert_eq!(cluster.job(&job.id()).await.state, JobState::Running);
    // The log of a running task is served by its agent, through the master.
    eventually("the running task's first line in its log", WAIT, || async {
        let out = cluster.logs(&task, LogStream::Stdout).await;
        if out == "hello from hello/0\n" {
            Ok(())
        } else {
            Err(format!("{out:?}"))
        }
    })
    .await;

    cluster.touch(&gate);
    let done = cluster.wait_job(&job.id(), JobState::Complete, WAIT).await;
    assert_eq!(done.count(TaskState::Succeeded), 1, "{done:?}");
    let view = cluster.task(&task).await;
    assert_eq!(view.state, TaskState::Succeeded);
    assert_eq!(view.attempts.len(), 1, "{view:?}");
    let alloc = &view.attempts[0];
    assert_eq!(alloc.state, AllocState::Succeeded);
    assert_eq!(alloc.exit_code, Some(0));
    let states: Vec<AllocState> = alloc.history.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [
            AllocState::Assigned,
            AllocState::Running,
            AllocState::Succeeded
        ]
    );
    assert_eq!(
        cluster.logs(&task, LogStream::Stdout).await,
        "hello from hello/0\nbye\n"
    );
    assert_eq!(cluster.logs(&task, LogStream::Stderr).await, "to stderr\n");
}

/// Sends `body` to `POST /v1/jobs`; returns the status and the error body.
async fn post_job(
    cluster: &Cluster,
    content_type: &'static str,
    body: Vec<u8>,
) -> (u16, ErrorBody) {
    let reply = cluster
        .client()
        .raw("POST", "/v1/jobs", Some((content_type, Bytes::from(body))))
        .await
        .expect("the master answers");
    let error = serde_json::from_slice(&reply.body).unwrap_or_else(|e| {
        panic!(
            "HTTP {}: not an error body ({e}): {}",
            reply.status,
            String::from_utf8_lossy(&reply.body)
        )
    });
    (reply.status, error)
}

/// `POST /v1/jobs` over a plain TCP connection that reads the answer while
/// the body is still being written, as curl does: the master answers 413 as
/// soon as it sees the Content-Length and closes the connection without
/// reading the body, so the writer fails with a reset. (The typed client,
/// on hyper, then reports that write error instead of the 413 about half
/// of the time; see the report of issue 6.)
async fn post_reading_early_answer(
    addr: std::net::SocketAddr,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rx, mut tx) = stream.into_split();
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        // Fails once the master has closed; that is expected.
        let _ = tx.write_all(head.as_bytes()).await;
        let _ = tx.write_all(&body).await;
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // A reset after the whole answer arrived.
            Err(e) if !answer.is_empty() => {
                eprintln!("after {} bytes of answer: {e}", answer.len());
                break;
            }
            Err(e) => panic!("no answer to an oversized body: {e}"),
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

fn paths(error: &ErrorBody) -> BTreeSet<&str> {
    error.error.fields.iter().map(|f| f.path.as_str()).collect()
}

#[tokio::test]
async fn bad_input_over_http_is_refused_with_4xx_naming_the_field_and_nothing_is_stored() {
    let cluster = Cluster::builder().agents(0).start().await;
    const YAML: &str = "application/yaml";
    const JSON: &str = "application/json";

    // Not YAML at all: refused, with where it went wrong.
    let (status, err) = post_job(&cluster, YAML, b"name: [unclosed\ncommand: x\n".to_vec()).await;
    assert_eq!(status, 400, "{err:?}");
    assert_eq!(err.error.code, "invalid_spec", "{err:?}");
    assert!(err.error.message.contains("line"), "{err:?}");

    // Unknown fields, at the top and nested, each by its path.
    let (status, err) = post_job(
        &cluster,
        YAML,
        b"name: typo\ncommand: [/bin/true]\ncolour: red\nresources: { cpu: 1, disk: 10Gi }\n"
            .to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{err:?}");
    assert_eq!(err.error.code, "invalid_spec");
    assert_eq!(
        paths(&err),
        BTreeSet::from(["colour", "resources.disk"]),
        "{err:?}"
    );

    let (status, err) = post_job(
        &cluster,
        JSON,
        br#"{"name": "typo", "command": ["/bin/true"], "restart": {"attempt": 2}}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{err:?}");
    assert_eq!(paths(&err), BTreeSet::from(["restart.attempt"]), "{err:?}");

    // Negative resources.
    let (status, err) = post_job(
        &cluster,
        YAML,
        b"name: negative\ncommand: [/bin/true]\nresources: { cpu: -1, memory: -64Mi }\n".to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{err:?}");
    assert_eq!(
        paths(&err),
        BTreeSet::from(["resources.cpu", "resources.memory"]),
        "{err:?}"
    );

    // A body that is neither YAML nor JSON by its Content-Type.
    let (status, err) = post_job(
        &cluster,
        "text/plain",
        b"name: plain\ncommand: [/bin/true]\n".to_vec(),
    )
    .await;
    assert_eq!(status, 415, "{err:?}");

    // 10 MiB: over api.max_body (1 MiB), refused without being read whole.
    let mut huge = b"name: huge\ncommand: [/bin/true]\nenv: { A: \"".to_vec();
    huge.resize(10 << 20, b'x');
    let (status, body) = post_reading_early_answer(cluster.master().addr(), YAML, huge).await;
    assert_eq!(status, 413, "{body}");
    let err: ErrorBody = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(err.error.code, "payload_too_large", "{err:?}");

    // None of it reached the store.
    let jobs = cluster.client().jobs(None).await.expect("GET /v1/jobs");
    assert!(jobs.is_empty(), "{jobs:?}");
    let summary = cluster.client().cluster().await.expect("GET /v1/cluster");
    assert_eq!(summary.queue_depth, 0, "{summary:?}");
    assert!(summary.tasks.values().all(|&n| n == 0), "{summary:?}");
    for name in ["typo", "negative", "plain", "huge"] {
        let reply = cluster
            .client()
            .raw("GET", &format!("/v1/jobs/{name}"), None)
            .await
            .expect("the master answers");
        assert_eq!(reply.status, 404, "{name}");
    }
}

#[tokio::test]
async fn a_high_priority_job_preempts_a_low_priority_one_which_is_requeued_and_completes_after_it()
{
    let cluster = Cluster::builder().agents(1).start().await;
    // Each job asks for the whole node: they cannot run side by side.
    let cpu = cluster
        .node_view(&cluster.node(0))
        .await
        .allocatable
        .cpu_millis;
    let gate = cluster.file("release");
    let script = |name: &str| {
        format!(
            "echo $$ > {pid}-$DROVER_ATTEMPT.pid; \
             while [ ! -e {gate} ]; do sleep 0.05; done",
            pid = sh_quote(cluster.file(name).to_string_lossy()),
            gate = sh_quote(gate.to_string_lossy()),
        )
    };
    let low = Job::batch("low", &script("low"))
        .policy("priority")
        .priority(10)
        .cpu_millis(cpu);
    let high = Job::batch("high", &script("high"))
        .policy("priority")
        .priority(90)
        .cpu_millis(cpu);

    cluster.submit(&low).await;
    cluster.wait_running(&low.id(), WAIT).await;
    let low_pid = eventually("the low task's PID", WAIT, || async {
        read_pid(&cluster.file("low-1.pid")).ok_or_else(|| "no PID file".to_string())
    })
    .await;

    cluster.submit(&high).await;
    cluster.wait_running(&high.id(), WAIT).await;
    let low_task = low.id().task(0);
    let view = cluster.task(&low_task).await;
    assert_eq!(view.state, TaskState::Pending, "{view:?}");
    assert_eq!(view.attempts.len(), 1, "{view:?}");
    let victim = &view.attempts[0];
    assert_eq!(victim.state, AllocState::Killed, "{victim:?}");
    let stopping = victim
        .history
        .iter()
        .find(|h| h.state == AllocState::Stopping);
    let reason = &stopping.expect("a stopping phase").reason;
    assert!(reason.contains("preempted by high/0"), "{reason}");
    // While the high job holds the node, the low one waits and says why
    // (from the next scheduling pass on).
    let why = eventually("the low task to say why it waits", WAIT, || async {
        let t = cluster
            .client()
            .task(&low_task)
            .await
            .map_err(|e| e.to_string())?;
        t.waiting.clone().ok_or_else(|| format!("{t:?}"))
    })
    .await;
    assert!(why.contains("cpu"), "{why}");
    // And the agent really stopped the preempted process.
    eventually("the preempted process to be gone", WAIT, || async {
        if pid_alive(low_pid) {
            Err(format!("PID {low_pid} alive"))
        } else {
            Ok(())
        }
    })
    .await;

    cluster.touch(&gate);
    cluster.wait_job(&high.id(), JobState::Complete, WAIT).await;
    cluster.wait_job(&low.id(), JobState::Complete, WAIT).await;
    let view = cluster.task(&low_task).await;
    assert_eq!(view.attempts.len(), 2, "{view:?}");
    let rerun = &view.attempts[1];
    assert_eq!(rerun.state, AllocState::Succeeded, "{rerun:?}");
    // A preemption is not a failure: no restart was spent on it.
    assert_eq!(view.restarts, 0, "{view:?}");
    // The low job went back on the node only once the high one had finished.
    let high_alloc = cluster.task(&high.id().task(0)).await.attempts[0].clone();
    let high_end = high_alloc.history.last().expect("a history");
    assert_eq!(high_end.state, AllocState::Succeeded);
    let rerun_placed = rerun.history.first().expect("a history").at_unix_ms;
    assert!(
        rerun_placed >= high_end.at_unix_ms,
        "low placed again at {rerun_placed}, before high ended at {}",
        high_end.at_unix_ms
    );
}
