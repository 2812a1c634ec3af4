//! `drover dev`: a whole cluster in one process for trying Drover on one
//! machine: a master on the embedded store and one or more local agents,
//! loopback only, no auth. Ctrl-C stops the agents' tasks, then everything.
//!
//! The master and agents are the same library code the `drover-master` and
//! `drover-agent` binaries run (`server::run`, `service::start`); only their
//! configuration differs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use drover_agent::config::{AgentConfig, FakeGpu};
use drover_agent::service::{RunningAgent, StartOptions};
use drover_api::client::Client;
use drover_api::protocol::{GpuDevice, NodeResources};
use drover_api::{Memory, NodeId, NodeState};
use drover_master::auth::Auth;
use drover_master::clock::Clock;
use drover_master::config::MasterConfig;
use drover_master::core::{Master, Settings};
use drover_master::store::EmbeddedStore;
use tokio::sync::watch;

/// The most local agents `--agents` accepts.
const MAX_AGENTS: u32 = 64;
/// Stopping a task at exit: SIGTERM, then SIGKILL after this.
const DEV_KILL_GRACE: Duration = Duration::from_secs(2);
/// How long the agents get to register before `drover dev` gives up.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Run a local cluster: a master and agents in this process.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Address of the master (loopback only; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Keep the cluster's state here, to pick it up again on the next run
    /// (default: a temp dir removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Number of local agents. The first reports this machine's resources;
    /// the others report 4 CPUs, 8 GiB and one fake GPU each (node ids
    /// dev-1, dev-2, ...), for trying placement policies.
    #[arg(long, default_value_t = 1)]
    pub agents: u32,
}

/// Runs until Ctrl-C or SIGTERM, then stops the agents' tasks and exits.
/// Once every agent has registered it prints, among others, a line
/// `export DROVER_ADDR=<host:port>` (scripts and tests look for it).
pub fn run(args: DevArgs) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "--listen {}: drover dev has no authentication and listens on loopback only \
             (e.g. 127.0.0.1:7070); run drover-master with tokens to serve a network",
            args.listen
        );
    }
    if !(1..=MAX_AGENTS).contains(&args.agents) {
        bail!("--agents {}: must be 1 to {MAX_AGENTS}", args.agents);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,drover=info")),
        )
        .init();
    tokio::runtime::Runtime::new()
        .context("starting the runtime")?
        .block_on(run_cluster(args))
}

async fn run_cluster(args: DevArgs) -> anyhow::Result<()> {
    let (temp, root) = match &args.data_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let t = tempfile::Builder::new()
                .prefix("drover-dev-")
                .tempdir()
                .context("creating a temp dir for the cluster's state")?;
            let path = t.path().to_path_buf();
            (Some(t), path)
        }
    };
    prepare_root(&root)?;

    let config = MasterConfig {
        listen: args.listen,
        data_dir: root.join("master"),
        ..MasterConfig::default()
    };
    config.validate()?;
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
        .await
        .context("opening the embedded store")??;
    let master = Master::open(
        Settings::from_config(&config),
        Arc::new(store),
        Clock::system(),
    )
    .await?;
    let listener = drover_master::server::bind(args.listen)
        .with_context(|| format!("listening on {} (is another drover running?)", args.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let (stop_tx, mut master_stop) = watch::channel(false);
    let server = tokio::spawn(drover_master::server::run(
        master,
        Arc::new(Auth::disabled()),
        listener,
        None,
        async move {
            let _ = master_stop.wait_for(|s| *s).await;
        },
    ));

    let mut agents = Vec::new();
    for i in 1..=args.agents {
        agents.push(start_agent(i, addr, &root).await?);
    }
    wait_until_ready(addr, args.agents).await?;
    print_banner(addr, &root, temp.is_some(), args.agents);

    wait_for_signal().await?;
    eprintln!("drover dev: stopping tasks and agents");
    // Agents first, so none launches anything more; then their tasks; the
    // master last, so the agents' final heartbeats still reach it.
    for running in agents {
        let agent = running.stop().await;
        let left = agent.stop_all_tasks(DEV_KILL_GRACE).await;
        if left > 0 {
            tracing::warn!(left, "tasks still running after SIGKILL");
        }
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    drop(temp);
    Ok(())
}

/// Tasks run as `nobody` when `drover dev` runs as root: they must be able
/// to reach their alloc dirs under the (owner-only) temp dir.
fn prepare_root(root: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {} readable", root.display()))
}

fn fake_gpu() -> FakeGpu {
    FakeGpu {
        model: "Drover Fake GPU 16GB".into(),
        memory: Memory(16 << 30),
    }
}

async fn start_agent(i: u32, master: SocketAddr, root: &Path) -> anyhow::Result<RunningAgent> {
    let is_root = nix::unistd::Uid::effective().is_root();
    let config = AgentConfig {
        masters: vec![master.to_string()],
        node_id: Some(NodeId::new(format!("dev-{i}")).context("node id")?),
        data_dir: root.join(format!("agent-{i}")),
        log_listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        // One pretend GPU when NVML finds none, so GPU jobs can be tried.
        fake_gpus: vec![fake_gpu()],
        kill_grace: DEV_KILL_GRACE,
        labels: [("dev".to_string(), "true".to_string())].into(),
        ..AgentConfig::default()
    };
    config.validate()?;
    let resources = (i > 1).then(|| NodeResources {
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        gpus: vec![GpuDevice {
            index: 0,
            uuid: format!("FAKE-dev-{i}-0"),
            model: fake_gpu().model,
            memory_bytes: fake_gpu().memory.bytes(),
        }],
    });
    let opts = StartOptions {
        resources,
        // Not root: tasks run as the developer, who cannot switch users.
        run_as_self: !is_root,
    };
    drover_agent::service::start(&config, opts)
        .await
        .with_context(|| format!("starting agent dev-{i}"))
}

/// Waits until `n` nodes are ready, so that a job submitted right after the
/// banner is placed at once.
async fn wait_until_ready(addr: SocketAddr, n: u32) -> anyhow::Result<()> {
    let client = Client::new(vec![addr.to_string()], None).with_timeout(Duration::from_secs(5));
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let ready = match client.nodes().await {
            Ok(nodes) => nodes.iter().filter(|n| n.state == NodeState::Ready).count(),
            Err(_) => 0,
        };
        if ready >= n as usize {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "only {ready} of {n} agents registered within {READY_WITHIN:?}; see the log above"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_banner(addr: SocketAddr, root: &Path, temporary: bool, agents: u32) {
    let state = if temporary {
        format!("{} (removed on exit)", root.display())
    } else {
        root.display().to_string()
    };
    let nodes: Vec<String> = (1..=agents).map(|i| format!("dev-{i}")).collect();
    println!(
        "drover dev: master on http://{addr}, agents {}",
        nodes.join(", ")
    );
    println!("state: {state}");
    println!("export DROVER_ADDR={addr}");
    println!("try:   drover job run config/jobs/hello.yaml --wait");
    println!("Ctrl-C stops the cluster and its tasks.");
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}
