//! `drover-agent`: the shim dispatch, then config in, `service::start` out.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use drover_agent::config::AgentConfig;
use drover_agent::service::{start, StartOptions};

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
    let running = start(&config, StartOptions::default())
        .await
        .context("starting the agent")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // The log server is listening, earlier tasks are re-attached and the
    // register / poll / heartbeat loop is running (registering is that
    // loop's job: it retries until a master answers, so waiting for it here
    // would hold `systemctl start` for as long as the masters are down).
    notify_systemd(sd_notify::NotifyState::Ready);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("agent stopping; tasks keep running under their shims");
    notify_systemd(sd_notify::NotifyState::Stopping);
    running.stop().await;
    Ok(())
}

/// Tells systemd about a state change (the unit is `Type=notify`). Without
/// `NOTIFY_SOCKET` (not started by systemd) this does nothing; a failure to
/// send is logged, not fatal. The shims inherit `NOTIFY_SOCKET` but systemd
/// takes notifications from the main process only (`NotifyAccess=main`),
/// and tasks start with a cleared environment.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
