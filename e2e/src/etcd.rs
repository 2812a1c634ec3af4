//! A private etcd server for a test: `/usr/bin/etcd` on free loopback ports
//! with its data in a temp dir, killed (SIGKILL) when dropped. One per test
//! process is the natural unit (nextest runs each test in its own process);
//! tests that share one keep to key prefixes of their own.
//!
//! The server runs with a 10 ms heartbeat and 100 ms election timeout, so
//! that a single member elects itself, and starts answering, within a few
//! hundred milliseconds instead of the default second or two.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The etcd binary the tests run (Debian's `etcd-server` package).
pub const ETCD_BIN: &str = "/usr/bin/etcd";

/// How long a start may take before the test fails: generous, since the
/// machine may be busy compiling.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// Attempts at finding free ports another process does not grab first.
const PORT_ATTEMPTS: usize = 5;

/// TLS files for a server started with [`Etcd::start_tls`].
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate this CA signed.
    pub client_ca_file: Option<PathBuf>,
}

/// A running etcd. Methods take `&self` so that one can be shared (behind an
/// `Arc`) by several harnesses in a test.
#[derive(Debug)]
pub struct Etcd {
    dir: TempDir,
    tls: Option<ServerTls>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    /// Plain-HTTP `/health` and `/metrics`, whatever the client side speaks.
    metrics_port: u16,
}

impl Etcd {
    /// Starts a new etcd over an empty data dir and waits until it answers.
    /// Panics, with a hint to run scripts/setup.sh, when etcd is not
    /// installed: the tests must fail there, not pass without testing.
    pub fn start() -> Etcd {
        Self::start_with(None)
    }

    /// Like [`Etcd::start`], serving clients over TLS only.
    pub fn start_tls(tls: ServerTls) -> Etcd {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<ServerTls>) -> Etcd {
        assert!(
            Path::new(ETCD_BIN).is_file(),
            "{ETCD_BIN} is missing: the etcd store tests run a real etcd; \
             run scripts/setup.sh --tests (it installs the etcd-server package)"
        );
        let etcd = Etcd {
            dir: tempfile::tempdir().expect("create a temp dir for etcd"),
            tls,
            state: Mutex::new(State {
                child: None,
                client_port: 0,
                peer_port: 0,
                metrics_port: 0,
            }),
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let [client_port, peer_port, metrics_port] = free_ports();
            {
                let mut state = etcd.lock();
                state.client_port = client_port;
                state.peer_port = peer_port;
                state.metrics_port = metrics_port;
            }
            match etcd.launch() {
                Ok(()) => return etcd,
                // Another process took a port between our probe and etcd's
                // bind: try new ones.
                Err(log) if attempt < PORT_ATTEMPTS && log.contains("address already in use") => {
                    continue
                }
                Err(log) => panic!("etcd did not start:\n{log}"),
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding it leaves nothing half-done.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `http://127.0.0.1:<port>`, or `https://` for a TLS server.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.lock().client_port)
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.lock().child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL) and reaps it. Its data stays.
    pub fn kill(&self) {
        if let Some(mut child) = self.lock().child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts it again over the same data
    /// dir and ports, and waits until it answers.
    pub fn restart(&self) {
        self.kill();
        if let Err(log) = self.launch() {
            panic!("etcd did not restart:\n{log}");
        }
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel
    /// but nothing answers, like a hung or partitioned etcd.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("etcd is not running");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed: {status}");
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The last lines etcd logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Spawns etcd on the ports in `state` and waits for `/health`. On
    /// failure the process is gone and the error holds its log.
    fn launch(&self) -> Result<(), String> {
        let (client_port, peer_port, metrics_port) = {
            let state = self.lock();
            (state.client_port, state.peer_port, state.metrics_port)
        };
        let client_url = format!(
            "{}://127.0.0.1:{client_port}",
            if self.tls.is_some() { "https" } else { "http" }
        );
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("open the etcd log");
        let mut command = Command::new(ETCD_BIN);
        command
            .arg("--name=default")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{metrics_port}"
            ))
            .arg("--heartbeat-interval=10")
            .arg("--election-timeout=100")
            .arg("--logger=zap")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.cert_file.display()))
                .arg(format!("--key-file={}", tls.key_file.display()));
            if let Some(ca) = &tls.client_ca_file {
                command
                    .arg("--client-cert-auth")
                    .arg(format!("--trusted-ca-file={}", ca.display()));
            }
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {ETCD_BIN}: {e}"));
        self.lock().child = Some(child);

        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self
                .lock()
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.lock().child = None;
                return Err(format!(
                    "etcd exited with {status}; its log:\n{}",
                    self.log_tail()
                ));
            }
            // The metrics listener is plain HTTP even when clients must
            // use TLS, so one probe serves both.
            if healthy(metrics_port) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "etcd did not report healthy within {START_DEADLINE:?}; its log:\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // SIGKILL also ends a paused (SIGSTOPped) server.
        self.kill();
    }
}

/// Distinct ports nothing listens on right now. All are bound at once, so
/// they differ; etcd may still lose one to another process before it binds
/// it, which [`Etcd::start`] retries.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// Whether etcd's `/health` on `port` says it is healthy (it has a leader
/// and serves requests).
fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(1));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}
