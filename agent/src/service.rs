//! A whole agent started from its config: fingerprint, executor, log server,
//! log maintenance and the register / poll / heartbeat loop, as one handle.
//! The `drover-agent` binary and `drover dev` (several agents in one
//! process) both start agents through [`start`], so they cannot differ.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use drover_api::protocol::NodeResources;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent::{Agent, AgentSettings};
use crate::config::{AgentConfig, ConfigError};
use crate::executor::{ExecConfig, ExecError, Executor};
use crate::fingerprint::Probe;
use crate::logs::LogKey;
use crate::metrics::AgentMetrics;

/// How long a long poll may be held; longer than any master's poll timeout.
const POLL_WAIT: Duration = Duration::from_secs(90);
/// How often old alloc directories and rotated logs are collected.
const LOG_MAINTENANCE_EVERY: Duration = Duration::from_secs(30);

/// What `drover dev` changes beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Report these resources instead of the fingerprinted ones.
    pub resources: Option<NodeResources>,
    /// Run tasks as the agent's own user, ignoring `user` (a developer's
    /// machine where the agent is not root and cannot switch users).
    pub run_as_self: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("creating the data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Executor(#[from] ExecError),
    #[error("tls: {0}")]
    Tls(#[from] drover_tls::TlsError),
    #[error("log server on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A started agent. Dropping it does not stop it; call [`RunningAgent::stop`].
#[derive(Debug)]
pub struct RunningAgent {
    pub agent: Arc<Agent>,
    /// Where the log server listens (its port, when `log_listen` asked for 0).
    pub log_addr: std::net::SocketAddr,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts an agent on `config` (already validated). Tasks that an earlier
/// run of this agent left running are re-attached.
pub async fn start(config: &AgentConfig, opts: StartOptions) -> Result<RunningAgent, StartError> {
    let token = config.resolve_token()?;
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let mut probe = Probe::new(config);
    let fingerprint = probe.fingerprint();
    let executor = Executor::open(ExecConfig {
        user: (!opts.run_as_self).then(|| config.user.clone()),
        allow_root: config.allow_root,
        kill_grace: config.kill_grace,
        max_finished: config.logs.max_finished,
        ..ExecConfig::new(&config.data_dir)
    })?;
    let listener = tokio::net::TcpListener::bind(config.log_listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.log_listen,
            source,
        })?;
    let log_addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.log_listen,
        source,
    })?;
    let mut attributes = fingerprint.attributes.clone();
    attributes.insert("limits".into(), executor.limits().to_string());
    let master_tls = match &config.ca_file {
        Some(ca) => Some(drover_tls::connector(&drover_tls::ClientFiles {
            ca_file: Some(ca.clone()),
            identity: config
                .tls
                .as_ref()
                .map(|t| (t.cert_file.clone(), t.key_file.clone())),
        })?),
        None => None,
    };
    let log_tls = match &config.tls {
        Some(t) => Some(drover_tls::acceptor(&drover_tls::ServerFiles {
            cert_file: t.cert_file.clone(),
            key_file: t.key_file.clone(),
            client_ca_file: None,
        })?),
        None => None,
    };
    // The master fetches logs over TLS from a log server that serves it.
    let advertised = config
        .advertise_log_addr
        .clone()
        .unwrap_or_else(|| log_addr.to_string());
    let advertised = match (&log_tls, advertised.starts_with("https://")) {
        (Some(_), false) => format!("https://{advertised}"),
        _ => advertised,
    };
    let settings = AgentSettings {
        masters: config.masters.clone(),
        token,
        node_id: config.node_id.clone(),
        data_dir: config.data_dir.clone(),
        hostname: fingerprint.hostname.clone(),
        // The bound address, so that `log_listen` may ask for port 0.
        log_addr: advertised,
        resources: opts.resources.unwrap_or(fingerprint.resources),
        reserved: config.reserved(),
        labels: config.labels.clone(),
        attributes,
        kill_grace: config.kill_grace,
        stop_after_disconnect: config.stop_after_disconnect,
        poll_wait: POLL_WAIT,
        log_key: LogKey::default(),
        master_tls,
    };
    let metrics = AgentMetrics::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let logs = tokio::spawn(crate::logs::serve(
        listener,
        config.data_dir.clone(),
        metrics.clone(),
        settings.log_key.clone(),
        log_tls,
        stopped(stop_rx.clone()),
    ));
    let agent = Agent::new(settings, executor, probe, metrics);
    let gc_agent = Arc::clone(&agent);
    let maintenance = tokio::spawn(crate::logs::maintain(
        config.data_dir.clone(),
        config.logs.clone(),
        LOG_MAINTENANCE_EVERY,
        move |alloc| gc_agent.is_live(alloc),
        stopped(stop_rx.clone()),
    ));
    let run = tokio::spawn(Arc::clone(&agent).run(stop_rx));
    Ok(RunningAgent {
        agent,
        log_addr,
        stop_tx,
        tasks: vec![run, logs, maintenance],
    })
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl RunningAgent {
    /// Stops the agent's loops and log server. Its tasks keep running under
    /// their shims, for the next start of this agent to re-attach.
    pub async fn stop(self) -> Arc<Agent> {
        let _ = self.stop_tx.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        self.agent
    }
}
