//! A typed HTTP client for the master (feature `client`): the REST API of
//! DESIGN §5 for the CLI and tests, and the agent protocol of §6 for agents.
//!
//! It knows several master addresses and fails over between them: a master
//! that cannot be reached or answers 5xx is skipped for the next one, while
//! a 4xx answer is final (the next master would refuse the same request).
//! Plain HTTP/1.1 over kept-alive connections: a call whose answer has been
//! read leaves its connection for the next (an agent heartbeats and polls
//! for its whole life; a fresh TCP connection per call cost the master as
//! much as the call itself). A pooled connection the master closed is
//! replaced transparently: a request that was never sent is sent again on a
//! new one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::protocol::{
    HeartbeatRequest, HeartbeatResponse, PollRequest, PollResponse, RegisterRequest,
    RegisterResponse, HEARTBEAT_PATH, POLL_PATH, REGISTER_PATH,
};
use crate::views::{
    AllocView, ClusterSummary, ErrorBody, FieldProblem, JobView, LeaderView, NodeView, PlanAnswer,
    StopAnswer, SubmitAnswer, TaskView,
};
use crate::{AllocId, JobId, JobState, NodeId, TaskId};

/// Bodies above this size may meet a master's `api.max_body` limit.
const LARGE_BODY: usize = 1 << 20;

/// How long an ordinary call may take, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a call waits out 429 answers, in all, by default.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the master at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{message} (HTTP {status} from {addr})")]
    Api {
        addr: String,
        status: u16,
        /// The error's `code`, or `http_{status}` when the body was not an
        /// API error.
        code: String,
        message: String,
        fields: Vec<FieldProblem>,
        /// Seconds, from `Retry-After`.
        retry_after: Option<u64>,
    },
    #[error("the master at {addr} sent an answer that is not the expected JSON: {reason}")]
    Decode { addr: String, reason: String },
    #[error("no master address given")]
    NoAddress,
}

impl ClientError {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A job spec's text and how it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFormat {
    Yaml,
    Json,
}

impl SpecFormat {
    /// JSON for `.json` files, YAML otherwise.
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => SpecFormat::Json,
            _ => SpecFormat::Yaml,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            SpecFormat::Yaml => "application/yaml",
            SpecFormat::Json => "application/json",
        }
    }
}

/// Which output stream of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn name(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// A plain answer: status and the whole body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// A task's log, read as it arrives.
#[derive(Debug)]
pub struct LogReader {
    addr: String,
    body: Incoming,
}

impl LogReader {
    /// The next piece of the log; `None` at its end (never, when following,
    /// until the task's alloc ends or the connection drops).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(ClientError::Unreachable {
                        addr: self.addr.clone(),
                        reason: e.to_string(),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// A client of the masters at `addrs`, remembering which one answered last.
pub struct Client {
    addrs: Vec<String>,
    current: AtomicUsize,
    /// The bearer token; an agent swaps its join token for its node's
    /// credential once it has one.
    token: std::sync::RwLock<Option<String>>,
    /// TLS to every master; `None`: plain HTTP.
    tls: Option<drover_tls::ClientTls>,
    /// Some address was given as `https://`: plain HTTP is never used then.
    https: bool,
    timeout: Duration,
    /// How long to keep waiting out 429 answers before giving one back.
    patience: Duration,
    idle: Mutex<Vec<Idle>>,
}

// Hand-written so that the token is never printed.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addrs", &self.addrs)
            .field("current", &self.current)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// At most this many idle connections are kept (an agent uses two at once:
/// its long poll and its heartbeat).
const MAX_IDLE: usize = 4;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A kept-alive connection whose last answer has been read.
struct Idle {
    addr: String,
    sender: Sender,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("addr", &self.addr).finish()
    }
}

/// An answer's head, and the connection it came on, to be kept once its
/// body has been read.
struct Head {
    addr: String,
    resp: hyper::Response<Incoming>,
    sender: Option<Sender>,
}

struct Request<'a> {
    method: hyper::Method,
    path: &'a str,
    body: Option<(&'static str, Bytes)>,
    timeout: Duration,
}

impl Client {
    /// `addrs` are `host:port`; an `http://` prefix and a trailing `/` are
    /// accepted and dropped.
    pub fn new(addrs: Vec<String>, token: Option<String>) -> Self {
        let https = addrs.iter().any(|a| a.trim().starts_with("https://"));
        let addrs = addrs
            .into_iter()
            .map(|a| {
                a.trim()
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .trim_end_matches('/')
                    .to_string()
            })
            .filter(|a| !a.is_empty())
            .collect();
        Client {
            addrs,
            current: AtomicUsize::new(0),
            token: std::sync::RwLock::new(token),
            tls: None,
            https,
            timeout: DEFAULT_TIMEOUT,
            patience: DEFAULT_PATIENCE,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection to `addr` that can take a request now.
    fn take_idle(&self, addr: &str) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|c| !c.sender.is_closed());
        let i = idle.iter().rposition(|c| c.addr == addr)?;
        Some(idle.swap_remove(i).sender)
    }

    /// Keeps a connection whose answer has been read, for the next call.
    fn keep(&self, addr: String, sender: Option<Sender>) {
        let Some(sender) = sender.filter(|s| !s.is_closed()) else {
            return;
        };
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle { addr, sender });
    }

    /// Speaks TLS to every master, verifying them with `connector`.
    pub fn with_tls(mut self, connector: drover_tls::ClientTls) -> Self {
        self.tls = Some(connector);
        self
    }

    /// Sends `token` as the bearer token from now on.
    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
    }

    /// Per-call time limit for everything but long polls and followed logs.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a call keeps waiting out an overloaded master's 429s
    /// (each for its `Retry-After`) before the 429 is returned; zero:
    /// never wait.
    pub fn with_patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// The master that answered last (the first one before any call).
    pub fn current_addr(&self) -> &str {
        let n = self.addrs.len().max(1);
        self.addrs
            .get(self.current.load(Ordering::Relaxed) % n)
            .map_or("", String::as_str)
    }

    // ---- REST API ----

    /// `POST /v1/jobs`: submit (or update) a job.
    pub async fn submit(
        &self,
        spec: &str,
        format: SpecFormat,
    ) -> Result<SubmitAnswer, ClientError> {
        self.send_json(
            hyper::Method::POST,
            "/v1/jobs",
            Some(spec_body(spec, format)),
        )
        .await
    }

    /// `POST /v1/jobs/plan`: what submitting would do, writing nothing.
    pub async fn plan(&self, spec: &str, format: SpecFormat) -> Result<PlanAnswer, ClientError> {
        self.send_json(
            hyper::Method::POST,
            "/v1/jobs/plan",
            Some(spec_body(spec, format)),
        )
        .await
    }

    /// `GET /v1/jobs[?state=]`.
    pub async fn jobs(&self, state: Option<JobState>) -> Result<Vec<JobView>, ClientError> {
        match state {
            None => self.get("/v1/jobs").await,
            Some(s) => self.get(&format!("/v1/jobs?state={s}")).await,
        }
    }

    /// `GET /v1/jobs/{id}`, spec included.
    pub async fn job(&self, id: &JobId) -> Result<JobView, ClientError> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    /// `DELETE /v1/jobs/{id}[?purge=true]`.
    pub async fn stop(&self, id: &JobId, purge: bool) -> Result<StopAnswer, ClientError> {
        let path = format!("/v1/jobs/{id}?purge={purge}");
        self.send_json(hyper::Method::DELETE, &path, None).await
    }

    /// `GET /v1/jobs/{id}/tasks`.
    pub async fn tasks(&self, job: &JobId) -> Result<Vec<TaskView>, ClientError> {
        self.get(&format!("/v1/jobs/{job}/tasks")).await
    }

    /// `GET /v1/tasks/{job}/{index}`.
    pub async fn task(&self, id: &TaskId) -> Result<TaskView, ClientError> {
        self.get(&format!("/v1/tasks/{id}")).await
    }

    /// `GET /v1/allocs/{job}/{index}/{attempt}`.
    pub async fn alloc(&self, id: &AllocId) -> Result<AllocView, ClientError> {
        self.get(&format!("/v1/allocs/{id}")).await
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.get("/v1/nodes").await
    }

    /// `GET /v1/nodes/{id}`.
    pub async fn node(&self, id: &NodeId) -> Result<NodeView, ClientError> {
        self.get(&format!("/v1/nodes/{id}")).await
    }

    /// `POST /v1/nodes/{id}/revoke`: the node's credential is revoked and
    /// the node is down.
    pub async fn revoke_node(&self, id: &NodeId) -> Result<NodeView, ClientError> {
        let path = format!("/v1/nodes/{id}/revoke");
        self.send_json(
            hyper::Method::POST,
            &path,
            Some(("application/json", Bytes::new())),
        )
        .await
    }

    /// `POST /v1/nodes/{id}/drain`: start a drain (with a deadline; the
    /// master's default is one hour) or end one.
    pub async fn drain(
        &self,
        id: &NodeId,
        enable: bool,
        deadline: Option<Duration>,
    ) -> Result<NodeView, ClientError> {
        let mut body = serde_json::json!({ "enable": enable });
        if let Some(d) = deadline {
            body["deadline"] = humantime::format_duration(d).to_string().into();
        }
        let body = Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        let path = format!("/v1/nodes/{id}/drain");
        self.send_json(hyper::Method::POST, &path, Some(("application/json", body)))
            .await
    }

    /// `GET /v1/cluster`.
    pub async fn cluster(&self) -> Result<ClusterSummary, ClientError> {
        self.get("/v1/cluster").await
    }

    /// `GET /v1/status/leader`.
    pub async fn leader(&self) -> Result<LeaderView, ClientError> {
        self.get("/v1/status/leader").await
    }

    /// `GET /v1/tasks/{id}/logs`: the log of the task's latest attempt from
    /// byte `offset`; with `follow`, the reader keeps delivering new output.
    pub async fn logs(
        &self,
        task: &TaskId,
        stream: LogStream,
        offset: u64,
        follow: bool,
    ) -> Result<LogReader, ClientError> {
        let path = format!(
            "/v1/tasks/{task}/logs?stream={}&offset={offset}&follow={follow}",
            stream.name()
        );
        let req = Request {
            method: hyper::Method::GET,
            path: &path,
            body: None,
            timeout: self.timeout,
        };
        // A followed log holds its connection for as long as it is read:
        // it is not kept for other calls.
        let Head { addr, resp, .. } = self.call_head(&req).await?;
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(LogReader {
                addr,
                body: resp.into_body(),
            });
        }
        let body = collect(&addr, resp, self.timeout).await?;
        Err(api_error(&addr, status, None, &body))
    }

    /// Any `GET`, read as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send_json(hyper::Method::GET, path, None).await
    }

    /// Any request, with the answer returned whatever its status: for
    /// callers that check error answers themselves (tests, scripts). A 429
    /// is waited out like any call's unless the client has no patience
    /// ([`Client::with_patience`]).
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<Reply, ClientError> {
        let method =
            hyper::Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::Unreachable {
                addr: self.current_addr().to_string(),
                reason: format!("bad method: {e}"),
            })?;
        let req = Request {
            method,
            path,
            body,
            timeout: self.timeout,
        };
        let Head { addr, resp, sender } = self.call_head(&req).await?;
        let status = resp.status().as_u16();
        let body = collect(&addr, resp, self.timeout).await?;
        self.keep(addr, sender);
        Ok(Reply { status, body })
    }

    // ---- agent protocol ----

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.post_json(REGISTER_PATH, req, self.timeout).await
    }

    pub async fn heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.post_json(HEARTBEAT_PATH, req, self.timeout).await
    }

    /// A long poll: `wait` must exceed the master's poll timeout.
    pub async fn poll(
        &self,
        req: &PollRequest,
        wait: Duration,
    ) -> Result<PollResponse, ClientError> {
        self.post_json(POLL_PATH, req, wait).await
    }

    // ---- plumbing ----

    async fn post_json<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let body = Bytes::from(serde_json::to_vec(req).unwrap_or_default());
        let req = Request {
            method: hyper::Method::POST,
            path,
            body: Some(("application/json", body)),
            timeout,
        };
        self.call_json(&req).await
    }

    async fn send_json<T: DeserializeOwned>(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<T, ClientError> {
        let req = Request {
            method,
            path,
            body,
            timeout: self.timeout,
        };
        self.call_json(&req).await
    }

    async fn call_json<T: DeserializeOwned>(&self, req: &Request<'_>) -> Result<T, ClientError> {
        let Head { addr, resp, sender } = self.call_head(req).await?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = collect(&addr, resp, req.timeout).await?;
        self.keep(addr.clone(), sender);
        if (200..300).contains(&status) {
            serde_json::from_slice(&body).map_err(|e| ClientError::Decode {
                addr,
                reason: e.to_string(),
            })
        } else {
            Err(api_error(&addr, status, retry_after, &body))
        }
    }

    /// [`Client::call_once`], sent again after each 429's `Retry-After`
    /// (a master refuses calls beyond its limits before doing anything)
    /// until the client's patience runs out; then the 429 is the answer.
    async fn call_head(&self, req: &Request<'_>) -> Result<Head, ClientError> {
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut refused = 0u32;
        loop {
            let head = self.call_once(req).await?;
            if head.resp.status() != hyper::StatusCode::TOO_MANY_REQUESTS {
                return Ok(head);
            }
            let secs = head
                .resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 60);
            // Each refusal in a row doubles the wait (to half a minute):
            // thousands of callers coming back every second would keep an
            // overloaded master busy refusing them. Up to half as long
            // again, so that the refused do not all return at one instant.
            let backoff = 1u64 << refused.min(5);
            let wait = Duration::from_secs(secs.max(backoff).min(30)).mul_f64(1.0 + jitter() / 2.0);
            if tokio::time::Instant::now() + wait > deadline {
                return Ok(head);
            }
            let Head { addr, resp, sender } = head;
            if collect(&addr, resp, req.timeout).await.is_ok() {
                self.keep(addr, sender);
            }
            tokio::time::sleep(wait).await;
            refused += 1;
        }
    }

    /// Sends `req` to each master in turn, starting with the one that
    /// answered last, until one answers below 500 (or 502: a master's own
    /// answer that an agent it proxies to is unreachable, which another
    /// master would repeat). Returns the answer's head; its body is unread.
    async fn call_once(&self, req: &Request<'_>) -> Result<Head, ClientError> {
        let n = self.addrs.len();
        if n == 0 {
            return Err(ClientError::NoAddress);
        }
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let addr = &self.addrs[i];
            let outcome = tokio::time::timeout(req.timeout, self.send(addr, req)).await;
            match outcome {
                Ok(Ok((resp, sender))) => {
                    let status = resp.status().as_u16();
                    if status < 500 || status == 502 || k + 1 == n {
                        self.current.store(i, Ordering::Relaxed);
                        return Ok(Head {
                            addr: addr.clone(),
                            resp,
                            sender: Some(sender),
                        });
                    }
                    let body = collect(addr, resp, req.timeout).await.unwrap_or_default();
                    last = Some(api_error(addr, status, None, &body));
                }
                Ok(Err(reason)) => {
                    last = Some(ClientError::Unreachable {
                        addr: addr.clone(),
                        reason,
                    })
                }
                Err(_) => {
                    last = Some(ClientError::Unreachable {
                        addr: addr.clone(),
                        reason: format!(
                            "no answer within {}",
                            humantime::format_duration(req.timeout)
                        ),
                    })
                }
            }
        }
        Err(last.unwrap_or(ClientError::NoAddress))
    }

    /// Sends `req` on an idle connection to `addr` if there is one, else
    /// on a new one; returns the answer's head and the connection.
    async fn send(
        &self,
        addr: &str,
        req: &Request<'_>,
    ) -> Result<(hyper::Response<Incoming>, Sender), String> {
        let mut request = self.build(addr, req)?;
        // A kept connection the master has closed meanwhile gives the
        // request back unsent: it goes on the next one, then a new one. One
        // that it closed while the request was on its way (the race every
        // keep-alive client has) is answered by nobody: the request goes
        // on a new connection, which only a master that closes connections
        // mid-request (a crash) could make a repeat; the agent protocol and
        // the REST API's writes are idempotent.
        while let Some(mut sender) = self.take_idle(addr) {
            // Its last answer was read to the end: it is ready at once, or
            // closed.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(resp) => return Ok((resp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None if closed_early(e.error()) => request = self.build(addr, req)?,
                    None => return Err(self.send_error(e.into_error(), req)),
                },
            }
        }
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut sender = match (&self.tls, self.https) {
            (Some(tls), _) => {
                let stream = tls.connect(addr, tcp).await?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }
            (None, true) => {
                return Err(
                    "an https:// address needs the CA that signed the master's certificate \
                     (--cacert, DROVER_CACERT or ca_file)"
                        .to_string(),
                )
            }
            (None, false) => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }
        };
        let resp = sender
            .send_request(request)
            .await
            .map_err(|e| self.send_error(e, req))?;
        Ok((resp, sender))
    }

    fn build(&self, addr: &str, req: &Request<'_>) -> Result<hyper::Request<Full<Bytes>>, String> {
        let mut builder = hyper::Request::builder()
            .method(req.method.clone())
            .uri(req.path)
            .header("host", addr);
        if let Some(token) = &*self.token.read().unwrap_or_else(|e| e.into_inner()) {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let body = match &req.body {
            Some((content_type, bytes)) => {
                builder = builder.header("content-type", *content_type);
                bytes.clone()
            }
            None => Bytes::new(),
        };
        builder
            .body(Full::new(body))
            .map_err(|e| format!("bad request: {e}"))
    }

    fn send_error(&self, e: hyper::Error, req: &Request<'_>) -> String {
        let len = req.body.as_ref().map_or(0, |(_, b)| b.len());
        // A master refuses a body over its limit from the Content-Length
        // alone and closes the connection, which the client may see as a
        // failed write rather than the 413.
        if len > LARGE_BODY {
            format!(
                "{e} (the master may have refused this {len}-byte body as too large: \
                 see api.max_body in its config)"
            )
        } else {
            e.to_string()
        }
    }
}

/// The connection ended before any answer began: the kept-alive race.
fn closed_early(e: &hyper::Error) -> bool {
    e.is_incomplete_message() || e.is_canceled() || e.is_closed()
}

fn spec_body(spec: &str, format: SpecFormat) -> (&'static str, Bytes) {
    (
        format.content_type(),
        Bytes::copy_from_slice(spec.as_bytes()),
    )
}

/// A number in [0, 1), different at each call (std's hasher keys are
/// random), for spreading retries.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let h = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (h >> 11) as f64 / (1u64 << 53) as f64
}

async fn collect(
    addr: &str,
    resp: hyper::Response<Incoming>,
    timeout: Duration,
) -> Result<Bytes, ClientError> {
    match tokio::time::timeout(timeout, resp.into_body().collect()).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(e)) => Err(ClientError::Unreachable {
            addr: addr.to_string(),
            reason: format!("reading the answer: {e}"),
        }),
        Err(_) => Err(ClientError::Unreachable {
            addr: addr.to_string(),
            reason: "the answer did not arrive in time".into(),
        }),
    }
}

/// An error answer, from the API's error body when it is one.
fn api_error(addr: &str, status: u16, retry_after: Option<u64>, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Api {
            addr: addr.to_string(),
            status,
            code: e.error.code,
            message: e.error.message,
            fields: e.error.fields,
            retry_after,
        },
        Err(_) => {
            let text: String = String::from_utf8_lossy(body).chars().take(500).collect();
            ClientError::Api {
                addr: addr.to_string(),
                status,
                code: format!("http_{status}"),
                message: if text.trim().is_empty() {
                    format!("HTTP {status}")
                } else {
                    text.trim().to_string()
                },
                fields: Vec::new(),
                retry_after,
            }
        }
    }
}
