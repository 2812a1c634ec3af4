//! `GET /v1/tasks/{id}/logs`: proxied from the log server of the agent that
//! ran the task's latest attempt, streamed through as it arrives (so
//! `follow=true` keeps flowing).
//!
//! The agent side of the contract: `GET http://{log_addr}/v1/allocs/{alloc}/logs
//! ?stream=stdout|stderr&offset=N&follow=true|false` answers `200` with the
//! bytes from `offset`, `404` when it has no such alloc.

use std::time::Duration;

use bytes::Bytes;
use drover_api::views::LogQuery;
use drover_api::AllocId;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Empty};
use hyper_util::rt::TokioIo;
use warp::Reply;

/// Why logs could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the agent at {addr} did not answer: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the agent has no logs for {0}")]
    NotFound(AllocId),
    #[error("the agent answered {status} for the logs of {alloc}")]
    Agent { status: u16, alloc: AllocId },
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// HTTP/1 on `io`, its connection driven in the background.
async fn handshake<I>(io: I) -> Result<Sender, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "log proxy connection ended");
        }
    });
    Ok(sender)
}

/// Connects to the agent's log server and returns its answer as a
/// streaming reply.
pub async fn proxy(
    log_addr: &str,
    tls: Option<&drover_tls::ClientTls>,
    alloc: &AllocId,
    capability: Option<&str>,
    q: &LogQuery,
) -> Result<warp::reply::Response, LogError> {
    let unreachable = |reason: String| LogError::Unreachable {
        addr: log_addr.to_string(),
        reason,
    };
    let (host, https) = match log_addr.strip_prefix("https://") {
        Some(host) => (host, true),
        None => (log_addr.strip_prefix("http://").unwrap_or(log_addr), false),
    };
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
        .await
        .map_err(|_| unreachable("connect timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let mut sender =
        match (https, tls) {
            (true, Some(tls)) => {
                let stream = tls.connect(host, tcp).await.map_err(unreachable)?;
                handshake(TokioIo::new(stream)).await.map_err(unreachable)?
            }
            (true, None) => return Err(unreachable(
                "its log server serves TLS and this master has no tls.agent_ca_file to verify it"
                    .to_string(),
            )),
            (false, _) => handshake(TokioIo::new(tcp)).await.map_err(unreachable)?,
        };
    let uri = format!(
        "/v1/allocs/{alloc}/logs?stream={}&offset={}&follow={}",
        q.stream.name(),
        q.offset,
        q.follow
    );
    let mut req = hyper::Request::get(uri).header("host", host);
    if let Some(c) = capability {
        req = req.header("authorization", format!("Bearer {c}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    match resp.status().as_u16() {
        200 => {}
        404 => return Err(LogError::NotFound(alloc.clone())),
        status => {
            return Err(LogError::Agent {
                status,
                alloc: alloc.clone(),
            })
        }
    }
    let chunks = BodyStream::new(resp.into_body().map_err(std::io::Error::other)).filter_map(
        |frame| async move {
            match frame {
                Ok(f) => f.into_data().ok().map(Ok),
                Err(e) => Some(Err(e)),
            }
        },
    );
    let mut reply = warp::reply::stream(chunks).into_response();
    reply.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(reply)
}
