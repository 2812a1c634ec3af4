//! `drover-agent`: the shim dispatch, then config and fingerprint in,
//! `Agent::run` and the log server out.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use drover_agent::agent::{Agent, AgentSettings};
use drover_agent::config::AgentConfig;
use drover_agent::executor::{ExecConfig, Executor};
use drover_agent::fingerprint::Probe;
use drover_agent::metrics::AgentMetrics;

/// The Drover agent: runs the tasks a master assigns to this machine.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// YAML config file; every key has a default (see config/agent.yaml).
    #[arg(long, env = "DROVER_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Master address (host:port); repeat for several masters.
    #[arg(long = "master")]
    masters: Vec<String>,
    /// Where alloc dirs, logs and the agent's state live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of this agent's log server.
    #[arg(long)]
    log_listen: Option<std::net::SocketAddr>,
}

fn main() -> anyhow::Result<()> {
    // Tasks are supervised by the agent binary itself in shim mode; that
    // must be decided before anything else starts (threads, logging).
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if drover_agent::shim::is_shim_invocation(&argv) {
        std::process::exit(drover_agent::shim::main(argv));
    }
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => AgentConfig::load(path)?,
        None => AgentConfig::default(),
    };
    if !args.masters.is_empty() {
        config.masters = args.masters.clone();
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(addr) = args.log_listen {
        config.log_listen = addr;
    }
    config.validate()?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    tokio::runtime::Runtime::new()
        .context("starting the runtime")?
        .block_on(run(config))
}

async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let token = config.resolve_token()?;
    let mut probe = Probe::new(&config);
    let fingerprint = probe.fingerprint();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let executor = Executor::open(ExecConfig {
        user: Some(config.user.clone()),
        allow_root: config.allow_root,
        kill_grace: config.kill_grace,
        ..ExecConfig::new(&config.data_dir)
    })?;
    let mut attributes = fingerprint.attributes.clone();
    attributes.insert("limits".into(), executor.limits().to_string());
    let settings = AgentSettings {
        masters: config.masters.clone(),
        token,
        node_id: config.node_id.clone(),
        data_dir: config.data_dir.clone(),
        hostname: fingerprint.hostname.clone(),
        log_addr: config.log_addr(),
        resources: fingerprint.resources.clone(),
        reserved: config.reserved(),
        labels: config.labels.clone(),
        attributes,
        kill_grace: config.kill_grace,
        stop_after_disconnect: config.stop_after_disconnect,
        poll_wait: Duration::from_secs(90),
    };
    let metrics = AgentMetrics::new();
    let listener = tokio::net::TcpListener::bind(config.log_listen)
        .await
        .with_context(|| format!("log server on {}", config.log_listen))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut log_stop = stop_rx.clone();
    let logs = tokio::spawn(drover_agent::logs::serve(
        listener,
        config.data_dir.clone(),
        metrics.clone(),
        async move {
            let _ = log_stop.changed().await;
        },
    ));
    let agent = Agent::new(settings, executor, probe, metrics);
    let gc_agent = Arc::clone(&agent);
    let mut gc_stop = stop_rx.clone();
    let maintenance = tokio::spawn(drover_agent::logs::maintain(
        config.data_dir.clone(),
        config.logs.clone(),
        Duration::from_secs(30),
        move |alloc| gc_agent.is_running(alloc),
        async move {
            let _ = gc_stop.changed().await;
        },
    ));
    let run = tokio::spawn(Arc::clone(&agent).run(stop_rx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("agent stopping; tasks keep running under their shims");
    let _ = stop_tx.send(true);
    let _ = run.await;
    let _ = logs.await;
    let _ = maintenance.await;
    Ok(())
}
