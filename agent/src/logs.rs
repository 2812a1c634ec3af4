//! Task logs on the agent: where they are, rotation, retention, and the log
//! server that the master proxies `GET /v1/tasks/{id}/logs` to.
//!
//! Layout (the executor writes it; this module only reads, rotates and
//! removes): `<data_dir>/allocs/<job>/<index>/<attempt>/` holds
//! `stdout.log` and `stderr.log`, appended to by the task's shim (with
//! `O_APPEND`; see [`crate::output`] for a log the disk cannot take) and
//! removed at its end if empty, and `exit.json` (later `reported.json`)
//! once the alloc has finished. A finished alloc that left nothing has no
//! directory, only a line in `finished.jsonl`: its logs are empty.
//!
//! Rotation is copytruncate: `stdout.log` is copied to `stdout.log.1` (older
//! copies shift to `.2` … `.<keep>`) and truncated in place, so the shim
//! keeps writing through its `O_APPEND` descriptor. Bytes written in the
//! instant between the last copy and the truncation are lost; that is the
//! price of not signalling the task.
//!
//! The log server: `GET /v1/allocs/{job}/{index}/{attempt}/logs
//! ?stream=stdout|stderr&offset=N&follow=true|false` answers `200 text/plain`
//! with the bytes of the current file from `offset`; with `follow=true` it
//! keeps sending what is appended (polling every 100 ms) until `exit.json`
//! appears, then sends the rest and ends. `404` when this node knows no such
//! alloc, `400` for a bad stream, offset or id. Errors have the REST
//! API's JSON body `{"error": {"code", "message"}}`. `GET /metrics` renders
//! the agent's metrics, `GET /healthz` answers `ok`.

use std::convert::Infallible;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use drover_api::{capability, AllocId, JobId};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use warp::http::{HeaderValue, StatusCode};
use warp::{Filter, Rejection, Reply};

use crate::config::LogsConfig;
use crate::metrics::AgentMetrics;

// The layout of an alloc's directory is the executor's (local_state).
pub use crate::local_state::{alloc_dir, ALLOCS_DIR, EXIT_FILE};
use crate::local_state::{is_in_finished, REPORTED_FILE, STDERR_LOG, STDOUT_LOG};
/// How often a followed log is polled for new bytes.
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Largest chunk read and sent at once.
const CHUNK: usize = 64 << 10;

/// A task's output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Stdout, Stream::Stderr];

    pub const fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// `stdout.log` / `stderr.log`.
    pub const fn file_name(self) -> &'static str {
        match self {
            Stream::Stdout => STDOUT_LOG,
            Stream::Stderr => STDERR_LOG,
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a stream: use stdout or stderr")]
pub struct UnknownStream(pub String);

impl FromStr for Stream {
    type Err = UnknownStream;
    fn from_str(s: &str) -> Result<Self, UnknownStream> {
        Stream::ALL
            .into_iter()
            .find(|st| st.name() == s)
            .ok_or_else(|| UnknownStream(s.to_string()))
    }
}

/// The current log file of `stream` in an alloc directory.
pub fn log_path(alloc_dir: &Path, stream: Stream) -> PathBuf {
    alloc_dir.join(stream.file_name())
}

/// `stdout.log.<n>`: the `n`th most recent rotated copy.
pub fn rotated_path(alloc_dir: &Path, stream: Stream, n: u32) -> PathBuf {
    alloc_dir.join(format!("{}.{n}", stream.file_name()))
}

/// Whether the alloc has finished (`exit.json` or `reported.json` exists).
pub fn is_finished(alloc_dir: &Path) -> bool {
    alloc_dir.join(EXIT_FILE).exists() || alloc_dir.join(REPORTED_FILE).exists()
}

/// Every alloc directory under `data_dir`, sorted by alloc id. Entries that
/// are not `<job>/<index>/<attempt>` directories in canonical form are
/// left alone.
pub fn alloc_dirs(data_dir: &Path) -> io::Result<Vec<(AllocId, PathBuf)>> {
    let mut out = Vec::new();
    for (job, job_dir) in subdirs(&data_dir.join(ALLOCS_DIR))? {
        if JobId::new(job.as_str()).is_err() {
            continue;
        }
        for (index, index_dir) in subdirs(&job_dir)? {
            for (attempt, dir) in subdirs(&index_dir)? {
                let text = format!("{job}/{index}/{attempt}");
                match text.parse::<AllocId>() {
                    Ok(id) if id.to_string() == text => out.push((id, dir)),
                    _ => {}
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Subdirectories by name; a missing directory has none.
fn subdirs(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

/// Rotates each stream of one alloc whose current file has reached
/// `max_bytes`: `.<keep-1>` → `.<keep>`, …, `.1` → `.2`, the current file
/// copied to `.1` and truncated in place. Copies beyond `keep` are removed;
/// with `keep == 0` the file is only truncated. Returns the streams rotated.
pub fn rotate(alloc_dir: &Path, max_bytes: u64, keep: u32) -> io::Result<Vec<Stream>> {
    let mut rotated = Vec::new();
    for stream in Stream::ALL {
        let path = log_path(alloc_dir, stream);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if len == 0 || len < max_bytes {
            continue;
        }
        rotate_one(alloc_dir, stream, keep)?;
        rotated.push(stream);
    }
    Ok(rotated)
}

fn rotate_one(alloc_dir: &Path, stream: Stream, keep: u32) -> io::Result<()> {
    // Copies beyond `keep`, left from a larger `keep` (or all, for 0).
    let mut n = keep.saturating_add(1);
    loop {
        match fs::remove_file(rotated_path(alloc_dir, stream, n)) {
            Ok(()) => n = n.saturating_add(1),
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(e),
        }
    }
    let path = log_path(alloc_dir, stream);
    if keep > 0 {
        for i in (1..keep).rev() {
            match fs::rename(
                rotated_path(alloc_dir, stream, i),
                rotated_path(alloc_dir, stream, i + 1),
            ) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        // Copy into a temporary name, then rename: a reader never sees a
        // half-written `.1`.
        let tmp = alloc_dir.join(format!("{}.rotating", stream.file_name()));
        let copied = File::open(&path).and_then(|mut src| {
            let mut dst = File::create(&tmp)?;
            io::copy(&mut src, &mut dst)?;
            // Catch up with what the task wrote during the copy, then
            // truncate right away to keep the window for lost bytes small.
            io::copy(&mut src, &mut dst)?;
            OpenOptions::new().write(true).open(&path)?.set_len(0)?;
            dst.flush()
        });
        if let Err(e) = copied {
            // A half copy (the disk is full) would only make it fuller.
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, rotated_path(alloc_dir, stream, 1))?;
    } else {
        OpenOptions::new().write(true).open(&path)?.set_len(0)?;
    }
    Ok(())
}

/// Rotates the logs of every unfinished alloc under `data_dir` as `cfg`
/// says. Returns how many files were rotated; an alloc that fails is
/// logged and skipped.
pub fn rotate_all(data_dir: &Path, cfg: &LogsConfig) -> io::Result<usize> {
    let mut count = 0;
    for (id, dir) in alloc_dirs(data_dir)? {
        if is_finished(&dir) {
            continue;
        }
        match rotate(&dir, cfg.max_bytes.bytes(), cfg.keep) {
            Ok(streams) => count += streams.len(),
            Err(e) => tracing::warn!(alloc = %id, error = %e, "cannot rotate logs"),
        }
    }
    Ok(count)
}

/// How much of finished allocs [`gc`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Directories in which nothing has changed for this long go.
    pub age: Duration,
    /// At most this many directories stay, the newest.
    pub max_dirs: usize,
    /// At most this many bytes (as allocated on disk) stay, the newest.
    pub max_bytes: u64,
}

impl From<&LogsConfig> for Retention {
    fn from(cfg: &LogsConfig) -> Self {
        Retention {
            age: cfg.retention,
            max_dirs: cfg.max_finished,
            max_bytes: cfg.max_finished_bytes.bytes(),
        }
    }
}

/// Removes the directories of allocs that are not live (per `is_live`: the
/// agent neither runs them nor still has to report their exit): those in
/// which nothing has changed for `keep.age`, then the oldest until at most
/// `keep.max_dirs` directories and `keep.max_bytes` bytes are left; then
/// any job or index directories left empty. Returns the allocs removed.
/// Live allocs are never touched, whatever their age or size.
pub fn gc(
    data_dir: &Path,
    keep: Retention,
    is_live: impl Fn(&AllocId) -> bool,
) -> io::Result<Vec<AllocId>> {
    let now = SystemTime::now();
    // (newest change, id, dir, bytes), oldest first once sorted.
    let mut done = Vec::new();
    for (id, dir) in alloc_dirs(data_dir)? {
        if is_live(&id) {
            continue;
        }
        match footprint(&dir) {
            Ok((newest, bytes)) => done.push((newest, id, dir, bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    done.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut count = done.len();
    let mut total: u64 = done.iter().map(|d| d.3).sum();
    let mut removed = Vec::new();
    for (newest, id, dir, bytes) in done {
        // A time in the future (clock stepped back) counts as fresh.
        let age = now.duration_since(newest).unwrap_or(Duration::ZERO);
        if age < keep.age && count <= keep.max_dirs && total <= keep.max_bytes {
            break;
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(id),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        count -= 1;
        total = total.saturating_sub(bytes);
        // Tidy up: the index and job directories, if now empty.
        if let Some(index_dir) = dir.parent() {
            if fs::remove_dir(index_dir).is_ok() {
                if let Some(job_dir) = index_dir.parent() {
                    let _ = fs::remove_dir(job_dir);
                }
            }
        }
    }
    Ok(removed)
}

/// The latest modification time of a directory and the files in it, and
/// the bytes they take on disk (the work dir's top level included).
fn footprint(dir: &Path) -> io::Result<(SystemTime, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(dir)?;
    let mut newest = meta.modified()?;
    let mut bytes = meta.blocks() * 512;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Ok(m) = entry.metadata() {
            bytes += m.blocks() * 512;
            if let Ok(t) = m.modified() {
                newest = newest.max(t);
            }
            if m.is_dir() {
                for inner in fs::read_dir(entry.path())?.flatten() {
                    bytes += inner.metadata().map_or(0, |m| m.blocks() * 512);
                }
            }
        }
    }
    Ok((newest, bytes))
}

/// Runs [`rotate_all`] and [`gc`] every `every` until `shutdown` resolves.
pub async fn maintain(
    data_dir: PathBuf,
    cfg: LogsConfig,
    every: Duration,
    is_live: impl Fn(&AllocId) -> bool + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send,
) {
    let is_live = Arc::new(is_live);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let (dir, cfg, live) = (data_dir.clone(), cfg.clone(), is_live.clone());
        let done = tokio::task::spawn_blocking(move || {
            if let Err(e) = rotate_all(&dir, &cfg) {
                tracing::warn!(error = %e, "log rotation failed");
            }
            match gc(&dir, Retention::from(&cfg), |id| live(id)) {
                Ok(removed) if !removed.is_empty() => {
                    tracing::info!(count = removed.len(), "removed old alloc directories")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "alloc directory cleanup failed"),
            }
        });
        if let Err(e) = done.await {
            tracing::warn!(error = %e, "log maintenance task failed");
        }
    }
}

// ---------------------------------------------------------------------------
// The log server.

/// What the logs route accepts; unknown parameters are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogQuery {
    pub stream: Stream,
    pub offset: u64,
    pub follow: bool,
}

impl LogQuery {
    /// Parses a raw query string such as `stream=stderr&offset=10&follow=true`.
    pub fn parse(query: &str) -> Result<LogQuery, String> {
        let mut q = LogQuery {
            stream: Stream::Stdout,
            offset: 0,
            follow: false,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "stream" => q.stream = value.parse().map_err(|e: UnknownStream| e.to_string())?,
                "offset" => {
                    q.offset = value.parse().map_err(|_| {
                        format!("offset: {value:?} is not a byte offset (a whole number ≥ 0)")
                    })?
                }
                "follow" => {
                    q.follow = match value {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        _ => return Err(format!("follow: {value:?} is not true or false")),
                    }
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

fn error_reply(
    status: StatusCode,
    code: &str,
    message: impl Into<String>,
) -> warp::reply::Response {
    let body = serde_json::json!({ "error": { "code": code, "message": message.into() } });
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

#[derive(Debug, Clone)]
struct Ctx {
    data_dir: Arc<PathBuf>,
    stop: watch::Receiver<bool>,
    key: LogKey,
}

/// The node's log key, as the master gave it at registration: shared by the
/// agent, which sets it, and its log server, which checks each request's
/// capability with it (`drover_api::capability`). Until the agent has
/// registered there is none, and no log is served.
#[derive(Clone, Default)]
pub struct LogKey(Arc<std::sync::RwLock<Option<String>>>);

impl LogKey {
    pub fn set(&self, key: Option<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    fn get(&self) -> Option<String> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

// Hand-written: the key is never printed.
impl std::fmt::Debug for LogKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.0.read().map(|k| k.is_some()).unwrap_or(false);
        write!(f, "LogKey({})", if set { "set" } else { "unset" })
    }
}

/// The log server's routes: logs (for the master only: each request must
/// carry a capability signed with `key`), and `/metrics` and `/healthz`,
/// which stay open: Prometheus scrapes agents without a token, and neither
/// tells anything about a task's output. Follow streams run until their
/// alloc finishes or the client goes away.
pub fn log_routes(
    data_dir: PathBuf,
    metrics: AgentMetrics,
    key: LogKey,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static
{
    // Never signalled (the sender is dropped at once; readers only look at
    // the value): these routes stop only with their server.
    let (_, rx) = watch::channel(false);
    routes(data_dir, metrics, key, rx)
}

fn routes(
    data_dir: PathBuf,
    metrics: AgentMetrics,
    key: LogKey,
    stop: watch::Receiver<bool>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone + Send + Sync + 'static
{
    let ctx = Ctx {
        data_dir: Arc::new(data_dir),
        stop,
        key,
    };
    let with_ctx = warp::any().map(move || ctx.clone());
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let logs = warp::get()
        .and(warp::path!(
            "v1" / "allocs" / String / String / String / "logs"
        ))
        .and(raw_query)
        .and(warp::header::optional::<String>("authorization"))
        .and(with_ctx)
        .then(
            |job: String,
             index: String,
             attempt: String,
             query: String,
             auth: Option<String>,
             ctx: Ctx| async move {
                logs_reply(&job, &index, &attempt, &query, auth.as_deref(), ctx).await
            },
        );
    let metrics_route = warp::get().and(warp::path!("metrics")).map(move || {
        let mut resp = metrics.render().into_response();
        resp.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    });
    let healthz = warp::get()
        .and(warp::path!("healthz"))
        .map(|| "ok\n".into_response());
    logs.or(metrics_route)
        .unify()
        .or(healthz)
        .unify()
        .recover(|r: Rejection| async move { Ok::<_, Infallible>(rejection_reply(r)) })
        .unify()
}

fn rejection_reply(r: Rejection) -> warp::reply::Response {
    if r.is_not_found() {
        error_reply(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        error_reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "only GET is served here",
        )
    } else {
        error_reply(StatusCode::BAD_REQUEST, "bad_request", format!("{r:?}"))
    }
}

async fn logs_reply(
    job: &str,
    index: &str,
    attempt: &str,
    query: &str,
    authorization: Option<&str>,
    ctx: Ctx,
) -> warp::reply::Response {
    let text = format!("{job}/{index}/{attempt}");
    let alloc = match text.parse::<AllocId>() {
        Ok(a) => a,
        Err(e) => return error_reply(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
    };
    let capability = authorization.and_then(|h| {
        let (scheme, rest) = h.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    if let Err(e) = capability::verify(ctx.key.get().as_deref(), &alloc, capability, now_ms) {
        tracing::warn!(alloc = %alloc, error = %e, "log request refused");
        let mut resp = error_reply(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string());
        resp.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Bearer realm=\"drover-logs\""),
        );
        return resp;
    }
    let q = match LogQuery::parse(query) {
        Ok(q) => q,
        Err(msg) => return error_reply(StatusCode::BAD_REQUEST, "bad_request", msg),
    };
    let dir = alloc_dir(&ctx.data_dir, &alloc);
    if !dir.is_dir() {
        let data_dir = Arc::clone(&ctx.data_dir);
        let id = alloc.clone();
        let left_nothing = tokio::task::spawn_blocking(move || is_in_finished(&data_dir, &id))
            .await
            .unwrap_or(false);
        if left_nothing {
            return text_reply(Vec::new());
        }
        return error_reply(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no logs for allocation {alloc} on this node"),
        );
    }
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(produce(dir, q, ctx.stop, tx));
    let mut resp = warp::reply::stream(ChunkStream(rx)).into_response();
    text_headers(&mut resp);
    resp
}

/// A whole log as one body: for a finished alloc that wrote nothing.
fn text_reply(body: Vec<u8>) -> warp::reply::Response {
    let mut resp = warp::reply::Response::new(body.into());
    text_headers(&mut resp);
    resp
}

fn text_headers(resp: &mut warp::reply::Response) {
    let headers = resp.headers_mut();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

type Chunk = Result<Bytes, io::Error>;

/// The body: chunks from the producer task. Dropped when the client goes
/// away, which the producer notices and stops.
struct ChunkStream(mpsc::Receiver<Chunk>);

impl futures_util::Stream for ChunkStream {
    type Item = Chunk;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        self.0.poll_recv(cx)
    }
}

/// Where a reader is: in the current file, or catching up on the copy a
/// rotation made of the bytes it had not read yet.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    pos: u64,
    in_rotated: bool,
    /// The current file has been seen at least `pos` long, so a shorter file
    /// later means it was truncated by a rotation.
    confirmed: bool,
}

/// Reads the next chunk at the cursor; empty at the end of the current file.
fn read_next(dir: &Path, stream: Stream, cur: &mut Cursor) -> io::Result<Vec<u8>> {
    loop {
        if cur.in_rotated {
            let chunk = read_at(&rotated_path(dir, stream, 1), cur.pos)?;
            if chunk.is_empty() {
                *cur = Cursor {
                    pos: 0,
                    in_rotated: false,
                    confirmed: true,
                };
                continue;
            }
            cur.pos += chunk.len() as u64;
            return Ok(chunk);
        }
        let path = log_path(dir, stream);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        if len < cur.pos {
            if cur.confirmed {
                // Rotated: the unread tail is at the end of `.1`.
                cur.in_rotated = true;
                continue;
            }
            return Ok(Vec::new());
        }
        cur.confirmed = true;
        let chunk = read_at(&path, cur.pos)?;
        cur.pos += chunk.len() as u64;
        return Ok(chunk);
    }
}

/// Up to [`CHUNK`] bytes of `path` from `pos`; empty past the end or when
/// the file does not exist.
fn read_at(path: &Path, pos: u64) -> io::Result<Vec<u8>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    f.seek(SeekFrom::Start(pos))?;
    let mut buf = Vec::with_capacity(CHUNK.min(8 << 10));
    f.take(CHUNK as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

async fn produce(dir: PathBuf, q: LogQuery, stop: watch::Receiver<bool>, tx: mpsc::Sender<Chunk>) {
    let mut cur = Cursor {
        pos: q.offset,
        in_rotated: false,
        confirmed: false,
    };
    // Without follow, send what is there now and do not chase a writer.
    let end = if q.follow {
        u64::MAX
    } else {
        fs::metadata(log_path(&dir, q.stream)).map_or(0, |m| m.len())
    };
    loop {
        if tx.is_closed() || *stop.borrow() {
            return;
        }
        // Checked before reading: everything written before `exit.json`
        // appeared is read before the stream ends.
        let finished = !q.follow || is_finished(&dir) || !dir.is_dir();
        let read_dir = dir.clone();
        let result = tokio::task::spawn_blocking(move || {
            let chunk = read_next(&read_dir, q.stream, &mut cur);
            (chunk, cur)
        })
        .await;
        let chunk = match result {
            Ok((chunk, next)) => {
                cur = next;
                chunk
            }
            Err(e) => Err(io::Error::other(e)),
        };
        match chunk {
            Ok(mut bytes) if !bytes.is_empty() => {
                let past_end = !cur.in_rotated && cur.pos >= end;
                if past_end {
                    let extra = usize::try_from(cur.pos - end).unwrap_or(usize::MAX);
                    bytes.truncate(bytes.len().saturating_sub(extra));
                }
                if !bytes.is_empty() && tx.send(Ok(Bytes::from(bytes))).await.is_err() {
                    return;
                }
                if past_end {
                    return;
                }
            }
            Ok(_) if finished => return,
            Ok(_) => {
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_POLL) => {}
                    _ = tx.closed() => return,
                }
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot read a log file");
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Serves [`log_routes`] on `listener` until `shutdown` resolves; follow
/// streams end then too, so the server does not wait on them.
pub async fn serve(
    listener: TcpListener,
    data_dir: PathBuf,
    metrics: AgentMetrics,
    key: LogKey,
    tls: Option<drover_tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "log server listening");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let routes = routes(data_dir, metrics, key, stop_rx);
    match tls {
        Some(tls) => drover_tls::serve(routes, listener, tls, shutdown).await,
        None => {
            warp::serve(routes)
                .incoming(listener)
                .graceful(shutdown)
                .run()
                .await
        }
    }
}
