//! The log server over real TCP, rotation and retention on a real directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use drover_agent::logs::{self, alloc_dir, gc, rotate, rotated_path, LogKey, Retention, Stream};
use drover_agent::metrics::AgentMetrics;
use drover_api::{capability, AllocId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const LIMIT: Duration = Duration::from_secs(10);
/// The log key these servers are given, as a master would at registration.
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    metrics: AgentMetrics,
}

async fn start(data_dir: &Path) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let metrics = AgentMetrics::new();
    let key = LogKey::default();
    key.set(Some(KEY.to_string()));
    let task = tokio::spawn(logs::serve(
        listener,
        data_dir.to_path_buf(),
        metrics.clone(),
        key,
        None,
        async move {
            let _ = rx.await;
        },
    ));
    Server {
        addr,
        stop: Some(tx),
        task,
        metrics,
    }
}

impl Server {
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(LIMIT, self.task)
            .await
            .expect("server did not stop")
            .unwrap();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// The capability a master would send for the alloc a log path names.
fn capability_for(path: &str) -> Option<String> {
    let alloc: AllocId = path
        .strip_prefix("/v1/allocs/")?
        .split('?')
        .next()?
        .strip_suffix("/logs")?
        .parse()
        .ok()?;
    capability::sign(KEY, &alloc, now_ms())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A request as the master sends it: with the capability for its alloc.
async fn send(addr: SocketAddr, path: &str) -> TcpStream {
    let auth = capability_for(path)
        .map(|c| format!("Authorization: Bearer {c}\r\n"))
        .unwrap_or_default();
    send_raw(addr, path, &auth).await
}

async fn send_raw(addr: SocketAddr, path: &str, extra_headers: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Reads until `raw` contains `needle`.
async fn read_until(s: &mut TcpStream, raw: &mut Vec<u8>, needle: &str) {
    tokio::time::timeout(LIMIT, async {
        while !String::from_utf8_lossy(raw).contains(needle) {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "EOF before {needle:?}: {}",
                String::from_utf8_lossy(raw)
            );
            raw.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in {}", String::from_utf8_lossy(raw)));
}

/// Reads to EOF and parses status, headers and (de-chunked) body.
async fn finish(mut s: TcpStream, mut raw: Vec<u8>) -> Resp {
    tokio::time::timeout(LIMIT, s.read_to_end(&mut raw))
        .await
        .expect("the response did not end")
        .unwrap();
    parse(&raw)
}

async fn get(addr: SocketAddr, path: &str) -> Resp {
    let s = send(addr, path).await;
    finish(s, Vec::new()).await
}

fn parse(raw: &[u8]) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    let head = std::str::from_utf8(&raw[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_text = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[..size]);
        assert_eq!(&rest[size..size + 2], b"\r\n", "chunk not followed by CRLF");
        rest = &rest[size + 2..];
    }
}

fn alloc(s: &str) -> AllocId {
    s.parse().unwrap()
}

/// An alloc directory with the given stdout and stderr.
fn make_alloc(data: &Path, id: &str, stdout: &str, stderr: &str) -> PathBuf {
    let dir = alloc_dir(data, &alloc(id));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("stdout.log"), stdout).unwrap();
    fs::write(dir.join("stderr.log"), stderr).unwrap();
    dir
}

fn append(path: &Path, text: &str) {
    OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

fn finish_alloc(dir: &Path) {
    fs::write(dir.join(logs::EXIT_FILE), r#"{"exit_code":0}"#).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_stream_from_an_offset() {
    let tmp = tempfile::tempdir().unwrap();
    make_alloc(tmp.path(), "render/3/1", "hello world\n", "oops\n");
    let srv = start(tmp.path()).await;

    let r = get(srv.addr, "/v1/allocs/render/3/1/logs").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello world\n");
    assert!(
        r.header("content-type").unwrap().starts_with("text/plain"),
        "{r:?}"
    );

    let r = get(
        srv.addr,
        "/v1/allocs/render/3/1/logs?stream=stdout&offset=6&follow=false",
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, "world\n"));

    let r = get(srv.addr, "/v1/allocs/render/3/1/logs?stream=stderr").await;
    assert_eq!((r.status, r.text().as_str()), (200, "oops\n"));

    let r = get(srv.addr, "/v1/allocs/render/3/1/logs?offset=1000").await;
    assert_eq!((r.status, r.text().as_str()), (200, ""));
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_alloc_that_left_nothing_has_empty_logs_not_a_404() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("finished.jsonl"),
        "{\"alloc\":\"quiet/0/1\",\"exit\":{\"exit_code\":0,\"signal\":null,\"finished_at_unix_ms\":1}}\n",
    )
    .unwrap();
    let srv = start(tmp.path()).await;
    for stream in ["stdout", "stderr"] {
        let r = get(
            srv.addr,
            &format!("/v1/allocs/quiet/0/1/logs?stream={stream}"),
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body.is_empty(), "{r:?}");
    }
    // Another attempt of the same task is unknown here.
    let r = get(srv.addr, "/v1/allocs/quiet/0/2/logs").await;
    assert_eq!(r.status, 404);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_allocs_and_bad_queries_are_json_errors() {
    let tmp = tempfile::tempdir().unwrap();
    make_alloc(tmp.path(), "render/3/1", "x", "");
    let srv = start(tmp.path()).await;

    let r = get(srv.addr, "/v1/allocs/render/3/2/logs").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("render/3/2"));

    let r = get(srv.addr, "/v1/allocs/render/3/1/logs?stream=stdin").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "bad_request");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("stdin"));

    let r = get(srv.addr, "/v1/allocs/render/3/1/logs?offset=-1").await;
    assert_eq!(r.status, 400);
    // Not an alloc id (and not a way out of the data dir).
    let r = get(srv.addr, "/v1/allocs/../3/1/logs").await;
    assert!(r.status == 400 || r.status == 404, "{r:?}");
    let r = get(srv.addr, "/v1/allocs/Render/3/1/logs").await;
    assert_eq!(r.status, 400);
    let r = get(srv.addr, "/v1/allocs/render/3/0/logs").await;
    assert_eq!(r.status, 400);
    let r = get(srv.addr, "/v1/nothing").await;
    assert_eq!(r.status, 404);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_appended_bytes_until_exit_json_appears() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_alloc(tmp.path(), "web/0/1", "first\n", "");
    let srv = start(tmp.path()).await;

    let mut s = send(srv.addr, "/v1/allocs/web/0/1/logs?follow=true").await;
    let mut raw = Vec::new();
    read_until(&mut s, &mut raw, "first\n").await;
    // Written after the request was answered in part.
    append(&dir.join("stdout.log"), "second\n");
    read_until(&mut s, &mut raw, "second\n").await;
    append(&dir.join("stdout.log"), "third\n");
    finish_alloc(&dir);
    let r = finish(s, raw).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "first\nsecond\nthird\n");

    // A finished alloc: follow sends everything and ends at once.
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        get(srv.addr, "/v1/allocs/web/0/1/logs?follow=true&offset=6"),
    )
    .await
    .unwrap();
    assert_eq!(r.text(), "second\nthird\n");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_keeps_every_byte_across_a_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_alloc(tmp.path(), "web/1/1", "", "");
    let log = dir.join("stderr.log");
    let srv = start(tmp.path()).await;

    let mut s = send(
        srv.addr,
        "/v1/allocs/web/1/1/logs?stream=stderr&follow=true",
    )
    .await;
    let mut raw = Vec::new();
    append(&log, "aaaa\n");
    read_until(&mut s, &mut raw, "aaaa\n").await;
    // Written and rotated away between two polls of the follower.
    append(&log, "bbbb\n");
    assert_eq!(rotate(&dir, 1, 2).unwrap(), vec![Stream::Stderr]);
    append(&log, "cc\n");
    finish_alloc(&dir);
    let r = finish(s, raw).await;
    assert_eq!(r.text(), "aaaa\nbbbb\ncc\n");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_follow_streams() {
    let tmp = tempfile::tempdir().unwrap();
    make_alloc(tmp.path(), "web/2/1", "still running\n", "");
    let srv = start(tmp.path()).await;
    let mut s = send(srv.addr, "/v1/allocs/web/2/1/logs?follow=true").await;
    let mut raw = Vec::new();
    read_until(&mut s, &mut raw, "still running\n").await;
    srv.shutdown().await;
    let r = finish(s, raw).await;
    assert_eq!(r.text(), "still running\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = start(tmp.path()).await;
    srv.metrics
        .observe_alloc(&alloc("render/0/1"), 2.5, 1 << 20);
    let r = get(srv.addr, "/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    assert!(
        text.contains("drover_agent_allocs{state=\"running\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("drover_agent_alloc_cpu_seconds_total{alloc=\"render/0/1\"} 2.5"),
        "{text}"
    );
    let r = get(srv.addr, "/healthz").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    srv.shutdown().await;
}

#[test]
fn rotation_keeps_keep_old_files_and_restarts_the_current_one() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_alloc(tmp.path(), "job/0/1", "", "small");
    let out = dir.join("stdout.log");
    // The log's descriptor, as the shim opens it.
    let mut task_fd = OpenOptions::new().append(true).open(&out).unwrap();

    for gen in 1..=4 {
        task_fd
            .write_all(format!("generation {gen}\n").as_bytes())
            .unwrap();
        assert_eq!(
            rotate(&dir, 10, 2).unwrap(),
            vec![Stream::Stdout],
            "gen {gen}"
        );
        assert_eq!(fs::metadata(&out).unwrap().len(), 0);
    }
    let read = |n| fs::read_to_string(rotated_path(&dir, Stream::Stdout, n)).unwrap();
    assert_eq!(read(1), "generation 4\n");
    assert_eq!(read(2), "generation 3\n");
    assert!(!rotated_path(&dir, Stream::Stdout, 3).exists());
    // Under the size: left alone; stderr ("small") never reached it.
    assert!(rotate(&dir, 10, 2).unwrap().is_empty());
    assert!(!rotated_path(&dir, Stream::Stderr, 1).exists());

    // The shim keeps writing through its O_APPEND descriptor: the current
    // file restarts at 0, no hole.
    task_fd.write_all(b"after\n").unwrap();
    assert_eq!(fs::read_to_string(&out).unwrap(), "after\n");

    // A smaller keep drops the copies beyond it.
    assert_eq!(
        rotate(&dir, 1, 1).unwrap(),
        vec![Stream::Stdout, Stream::Stderr]
    );
    assert_eq!(read(1), "after\n");
    assert!(!rotated_path(&dir, Stream::Stdout, 2).exists());
    assert_eq!(
        fs::read_to_string(rotated_path(&dir, Stream::Stderr, 1)).unwrap(),
        "small"
    );
    // keep 0: truncate only.
    task_fd.write_all(b"gone\n").unwrap();
    rotate(&dir, 1, 0).unwrap();
    assert!(!rotated_path(&dir, Stream::Stdout, 1).exists());
    assert_eq!(fs::metadata(&out).unwrap().len(), 0);
}

fn age(dir: &Path, by: Duration) {
    let t = SystemTime::now() - by;
    for entry in fs::read_dir(dir).unwrap() {
        File::options()
            .write(true)
            .open(entry.unwrap().path())
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    File::open(dir).unwrap().set_modified(t).unwrap();
}

/// Keeps by age only.
fn by_age(age: Duration) -> Retention {
    Retention {
        age,
        max_dirs: usize::MAX,
        max_bytes: u64::MAX,
    }
}

#[test]
fn gc_keeps_at_most_max_dirs_and_max_bytes_of_finished_allocs_the_newest() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let day = Duration::from_secs(24 * 3600);
    // Four finished allocs, each a minute newer than the one before, and a
    // live one older than them all.
    for (i, minutes) in [(0, 40), (1, 30), (2, 20), (3, 10)] {
        let dir = make_alloc(data, &format!("many/{i}/1"), &"x".repeat(10_000), "");
        finish_alloc(&dir);
        age(&dir, Duration::from_secs(minutes * 60));
    }
    let live = make_alloc(data, "many/9/1", "running", "");
    age(&live, Duration::from_secs(3600));
    let is_live = |a: &AllocId| *a == alloc("many/9/1");

    let removed = gc(
        data,
        Retention {
            max_dirs: 3,
            ..by_age(day)
        },
        is_live,
    )
    .unwrap();
    assert_eq!(removed, vec![alloc("many/0/1")]);

    // On disk each takes 16 to 21 KB (a 10,000-byte log in 4 KiB blocks,
    // its exit file, its directory): 45,000 bytes hold two, not three.
    let removed = gc(
        data,
        Retention {
            max_bytes: 45_000,
            ..by_age(day)
        },
        is_live,
    )
    .unwrap();
    assert_eq!(removed, vec![alloc("many/1/1")]);
    assert!(alloc_dir(data, &alloc("many/2/1")).exists());
    assert!(alloc_dir(data, &alloc("many/3/1")).exists());
    assert!(live.exists(), "a live alloc is kept whatever the limits");

    let removed = gc(
        data,
        Retention {
            max_dirs: 0,
            ..by_age(day)
        },
        is_live,
    )
    .unwrap();
    assert_eq!(removed, vec![alloc("many/2/1"), alloc("many/3/1")]);
    assert!(live.exists());
}

#[test]
fn gc_removes_old_finished_allocs_and_keeps_live_and_recent_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let day = Duration::from_secs(24 * 3600);
    let old_done = make_alloc(data, "batch/0/1", "done", "");
    finish_alloc(&old_done);
    age(&old_done, 2 * day);
    let old_live = make_alloc(data, "svc/0/1", "still going", "");
    age(&old_live, 2 * day);
    let recent_done = make_alloc(data, "batch/1/1", "done", "");
    finish_alloc(&recent_done);
    let stranger = data.join("allocs/Not_A_Job/0/1");
    fs::create_dir_all(&stranger).unwrap();
    age(&stranger, 2 * day);

    let live = alloc("svc/0/1");
    let removed = gc(data, by_age(day), |a| *a == live).unwrap();
    assert_eq!(removed, vec![alloc("batch/0/1")]);
    assert!(!old_done.exists());
    // Its now-empty index directory goes too; the job's stays for batch/1.
    assert!(!data.join("allocs/batch/0").exists());
    assert!(old_live.exists());
    assert!(recent_done.exists());
    assert!(stranger.exists());

    // Once the service alloc is no longer live, its old directory goes.
    let removed = gc(data, by_age(day), |_| false).unwrap();
    assert_eq!(removed, vec![alloc("svc/0/1")]);
    assert!(!data.join("allocs/svc").exists());
    // No allocs directory at all: nothing to do.
    let empty = tempfile::tempdir().unwrap();
    assert!(gc(empty.path(), by_age(day), |_| false).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_served_only_with_the_masters_capability_for_that_alloc() {
    let dir = tempfile::tempdir().unwrap();
    let alloc: AllocId = "secret/0/1".parse().unwrap();
    let d = make_alloc(dir.path(), "secret/0/1", "DB_PASSWORD=hunter2\n", "");
    finish_alloc(&d);
    let srv = start(dir.path()).await;
    let path = "/v1/allocs/secret/0/1/logs";

    let ok = get(srv.addr, path).await;
    assert_eq!(
        (ok.status, ok.text()),
        (200, "DB_PASSWORD=hunter2\n".to_string())
    );

    let other = capability::sign(KEY, &"secret/0/2".parse().unwrap(), now_ms()).unwrap();
    let stale = capability::sign(KEY, &alloc, now_ms() - 3_600_000).unwrap();
    let foreign_key = capability::new_key().unwrap();
    let forged = capability::sign(&foreign_key, &alloc, now_ms()).unwrap();
    for (why, headers) in [
        ("none", String::new()),
        (
            "another alloc's",
            format!("Authorization: Bearer {other}\r\n"),
        ),
        (
            "an expired one",
            format!("Authorization: Bearer {stale}\r\n"),
        ),
        (
            "another key's",
            format!("Authorization: Bearer {forged}\r\n"),
        ),
        ("junk", "Authorization: Bearer 1.2\r\n".to_string()),
    ] {
        let r = finish(send_raw(srv.addr, path, &headers).await, Vec::new()).await;
        assert_eq!(r.status, 401, "{why}: {}", r.text());
        assert!(!r.text().contains("hunter2"), "{why}");
        assert!(r.header("www-authenticate").is_some(), "{why}");
    }
    // Metrics and health stay open: they say nothing of a task's output.
    assert_eq!(get(srv.addr, "/metrics").await.status, 200);
    assert_eq!(get(srv.addr, "/healthz").await.status, 200);
    srv.shutdown().await;
}
