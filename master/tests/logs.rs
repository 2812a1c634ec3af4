//! Task logs are proxied from the log server of the agent that ran the
//! latest attempt. The agent's log server is stood in for by a real HTTP
//! server on loopback speaking the agent's side of the contract
//! (`GET /v1/allocs/{alloc}/logs?stream&offset&follow`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drover_api::JobSpec;
use drover_master::auth::{Auth, Principal};
use drover_master::clock::Clock;
use drover_master::core::{Master, Settings};
use drover_master::lifecycle;
use drover_master::state::Txn;
use drover_master::store::EmbeddedStore;
use warp::{Filter, Reply};

mod support;
use support::register_request;

/// A log server: stdout of `render/0/1` is "line 0\n".."line 9\n"; with
/// `follow=true` it sends three more lines, one at a time, then ends.
async fn start_log_server() -> SocketAddr {
    #[derive(serde::Deserialize)]
    struct Q {
        stream: String,
        offset: usize,
        follow: bool,
    }
    let route = warp::path!("v1" / "allocs" / String / String / String / "logs")
        .and(warp::query::<Q>())
        .map(|job: String, index: String, attempt: String, q: Q| {
            if format!("{job}/{index}/{attempt}") != "render/0/1" {
                return warp::reply::with_status(
                    "no such alloc",
                    warp::http::StatusCode::NOT_FOUND,
                )
                .into_response();
            }
            let text: String = (0..10)
                .map(|i| {
                    format!(
                        "{} {i}\n",
                        if q.stream == "stderr" { "err" } else { "line" }
                    )
                })
                .collect();
            let head = Bytes::from(text[q.offset.min(text.len())..].to_string());
            let mut chunks = vec![head];
            if q.follow {
                chunks.extend((10..13).map(|i| Bytes::from(format!("line {i}\n"))));
            }
            let stream = futures_util::stream::unfold(chunks.into_iter(), |mut it| async move {
                let next = it.next()?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((Ok::<_, Infallible>(next), it))
            });
            warp::reply::stream(stream).into_response()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    addr
}

/// A master (its data dir returned so it lives as long as the test) with
/// node n1, whose log server is `log_addr`, running task render/0.
async fn master_with_node(log_addr: String) -> (Arc<Master>, tempfile::TempDir) {
    let dir = tempfile::TempDir::new().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let m = Master::open(Settings::default(), Arc::new(store), Clock::system())
        .await
        .unwrap();
    m.register(
        register_request("n1", &log_addr, vec![]),
        &Principal::Anyone,
    )
    .await
    .unwrap();
    let spec = JobSpec::parse_yaml("name: render\ncommand: [/bin/true]\n").unwrap();
    {
        let mut c = m.lock().await;
        let changes = {
            let mut txn = Txn::new(&c);
            lifecycle::submit(&mut txn, spec, m.clock.wall_ms());
            txn.into_changes()
        };
        let durable = m.stage(&mut c, changes);
        drop(c);
        durable.wait().await.unwrap();
    }
    assert_eq!(m.schedule_pass().await.unwrap(), 1);
    (m, dir)
}

async fn get(m: &Arc<Master>, path: &str) -> (u16, String) {
    let routes =
        drover_master::http::routes(Arc::clone(m), Arc::new(Auth::disabled()), "test".into());
    let resp = warp::test::request()
        .method("GET")
        .path(path)
        .reply(&routes)
        .await;
    (
        resp.status().as_u16(),
        String::from_utf8_lossy(resp.body()).into_owned(),
    )
}

#[tokio::test]
async fn logs_come_from_the_agent_that_ran_the_latest_attempt() {
    let (m, _dir) = master_with_node(start_log_server().await.to_string()).await;
    let (status, body) = get(&m, "/v1/tasks/render/0/logs").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("line 0\nline 1\n") && body.ends_with("line 9\n"),
        "{body}"
    );
    let (_, body) = get(&m, "/v1/tasks/render/0/logs?stream=stderr").await;
    assert!(body.starts_with("err 0\n"), "{body}");
}

#[tokio::test]
async fn an_offset_is_passed_through_to_the_agent() {
    let (m, _dir) = master_with_node(start_log_server().await.to_string()).await;
    let (status, body) = get(&m, "/v1/tasks/render/0/logs?offset=7").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("line 1\n"), "{body}");
}

#[tokio::test]
async fn following_streams_what_the_agent_sends_until_it_ends() {
    let (m, _dir) = master_with_node(start_log_server().await.to_string()).await;
    let (status, body) = get(&m, "/v1/tasks/render/0/logs?follow=true").await;
    assert_eq!(status, 200);
    assert!(body.ends_with("line 10\nline 11\nline 12\n"), "{body}");
}

#[tokio::test]
async fn an_unreachable_agent_is_a_502_naming_its_address() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let (m, _dir) = master_with_node("127.0.0.1:1".to_string()).await;
    let (status, body) = get(&m, "/v1/tasks/render/0/logs").await;
    assert_eq!(status, 502, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "agent_unavailable");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:1"),
        "{body}"
    );
}
