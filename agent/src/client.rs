//! The agent's side of the agent protocol (DESIGN §6): JSON over HTTP/1.1 to
//! one of several masters, failing over to the next when one does not
//! answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use drover_api::protocol::{
    HeartbeatRequest, HeartbeatResponse, PollRequest, PollResponse, RegisterRequest,
    RegisterResponse, HEARTBEAT_PATH, POLL_PATH, REGISTER_PATH,
};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("master {addr} unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("master {addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("master {addr} sent an answer that is not the expected JSON: {reason}")]
    Decode { addr: String, reason: String },
}

/// A client for the masters in `addrs`, remembering which one answered last.
#[derive(Debug)]
pub struct MasterClient {
    addrs: Vec<String>,
    current: AtomicUsize,
    token: Option<String>,
}

impl MasterClient {
    pub fn new(addrs: Vec<String>, token: Option<String>) -> Self {
        MasterClient {
            addrs,
            current: AtomicUsize::new(0),
            token,
        }
    }

    pub fn current_addr(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.addrs.len().max(1);
        self.addrs.get(i).map_or("", String::as_str)
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        self.call(REGISTER_PATH, req, Duration::from_secs(10)).await
    }

    pub async fn heartbeat(
        &self,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        self.call(HEARTBEAT_PATH, req, Duration::from_secs(10))
            .await
    }

    /// A long poll: `wait` must exceed the master's poll timeout.
    pub async fn poll(
        &self,
        req: &PollRequest,
        wait: Duration,
    ) -> Result<PollResponse, ClientError> {
        self.call(POLL_PATH, req, wait).await
    }

    /// Tries each master once, starting with the one that answered last.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let body = serde_json::to_vec(req).unwrap_or_default();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..self.addrs.len().max(1) {
            let i = (start + k) % self.addrs.len().max(1);
            let Some(addr) = self.addrs.get(i) else { break };
            match tokio::time::timeout(timeout, self.post(addr, path, body.clone())).await {
                Ok(Ok((200, bytes))) => {
                    self.current.store(i, Ordering::Relaxed);
                    return serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                        addr: addr.clone(),
                        reason: e.to_string(),
                    });
                }
                // A master that answers but refuses (4xx) will refuse on the
                // next one too: no failover.
                Ok(Ok((status, bytes))) if (400..500).contains(&status) => {
                    return Err(ClientError::Status {
                        addr: addr.clone(),
                        status,
                        body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                    })
                }
                Ok(Ok((status, bytes))) => {
                    last = Some(ClientError::Status {
                        addr: addr.clone(),
                        status,
                        body: String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                    })
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
                        reason: format!("no answer within {timeout:?}"),
                    })
                }
            }
        }
        Err(last.unwrap_or(ClientError::Unreachable {
            addr: String::new(),
            reason: "no master addresses configured".into(),
        }))
    }

    async fn post(&self, addr: &str, path: &str, body: Vec<u8>) -> Result<(u16, Bytes), String> {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::post(path)
            .header("host", addr)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, bytes))
    }
}
