//! `drover-master`: flags and config in, `drover_master::server::run` out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use drover_api::PolicyKind;
use drover_master::auth::Auth;
use drover_master::clock::Clock;
use drover_master::config::{LogFormat, MasterConfig, Overrides, StoreBackend};
use drover_master::core::{Master, Settings};
use drover_master::ha::Candidate;
use drover_master::store::{EmbeddedStore, EtcdStore};

// The master allocates and frees small records on every request and pass;
// glibc's allocator took a fifth of its CPU at 1,000 simulated nodes
// (BENCHMARKS.md, "Scale").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The Drover master: REST API, scheduler and liveness for a cluster.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// YAML config file; every key has a default (see config/master.yaml).
    #[arg(long, env = "DROVER_MASTER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:7070).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where the embedded store keeps its file.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Allow listening beyond loopback without auth tokens.
    #[arg(long)]
    insecure: bool,
    /// Policy for jobs that name none.
    #[arg(long)]
    default_policy: Option<PolicyKind>,
    /// embedded or etcd.
    #[arg(long)]
    store_backend: Option<StoreBackend>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Read the whole store and check it (format, every record), then say
    /// what it holds; change nothing. Exit status 1 when it cannot be used.
    CheckStore,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => MasterConfig::load(path)?,
        None => MasterConfig::default(),
    };
    config.apply(&Overrides {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        insecure: args.insecure,
        default_policy: args.default_policy,
        store_backend: args.store_backend,
    });
    if let Some(Command::CheckStore) = args.command {
        return check_store(&config).await;
    }
    config.validate()?;
    // warp logs every connection a client drops mid-request (an agent
    // killed, a curl interrupted) as an ERROR of the server's; they are
    // not, so they are left out unless the level names warp itself.
    let level = if config.log.level.contains("warp") {
        config.log.level.clone()
    } else {
        format!("{},warp::server::run=off", config.log.level)
    };
    let logs = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(level));
    match config.log.format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    raise_fd_limit();
    let tokens = config.resolve_tokens()?;
    let auth = Arc::new(Auth::new(tokens));
    let tls = match &config.tls {
        Some(t) => Some(drover_tls::acceptor(&t.server_files()).context("tls")?),
        None => None,
    };
    let listener = drover_master::server::bind(config.listen)
        .with_context(|| format!("listening on {}", config.listen))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        // In-flight requests and the loops still finish after this; systemd
        // shows the unit as deactivating meanwhile instead of active.
        notify_systemd(sd_notify::NotifyState::Stopping);
    };
    let mut settings = Settings::from_config(&config);
    if let Some(ca) = config.tls.as_ref().and_then(|t| t.agent_ca_file.clone()) {
        let files = drover_tls::ClientFiles {
            ca_file: Some(ca),
            identity: None,
        };
        settings.agent_tls = Some(drover_tls::connector(&files).context("tls.agent_ca_file")?);
    }
    match config.store.backend {
        StoreBackend::Embedded => {
            let dir = config.data_dir.clone();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir))
                .await
                .context("opening the embedded store")??;
            let file = config
                .data_dir
                .join(drover_master::store::embedded::FILE_NAME);
            let master = Master::open(settings, Arc::new(store), Clock::system())
                .await
                .with_context(|| {
                    format!(
                        "refusing to start on {} (drover-master check-store says more)",
                        file.display()
                    )
                })?;
            // The socket is listening (connections queue in the kernel from
            // here on) and the store is open: a `Type=notify` unit's
            // dependents, and `systemctl start`, may go on. Sent before
            // `run` only because `run` does not return until shutdown.
            notify_systemd(sd_notify::NotifyState::Ready);
            drover_master::server::run(master, auth, listener, tls, shutdown).await;
        }
        StoreBackend::Etcd => {
            // Every master listens at once and answers as a follower until
            // elected (see `drover_master::ha`); leading is a role that
            // comes and goes, not a condition of the process being up.
            let etcd = EtcdStore::from_config(&config.store.etcd)
                .await
                .context("connecting to etcd")?;
            let advertise = match &config.advertise {
                Some(a) => a.clone(),
                None => listener
                    .local_addr()
                    .context("reading the listening address")?
                    .to_string(),
            };
            let candidate = Candidate {
                etcd,
                advertise,
                lease_ttl: config.store.etcd.lease_ttl,
                settings,
                clock: Clock::system(),
            };
            notify_systemd(sd_notify::NotifyState::Ready);
            drover_master::ha::run(candidate, auth, listener, tls, shutdown).await;
        }
    }
    Ok(())
}

/// `drover-master check-store`: opens the configured store, reads it all as
/// a starting master would, and reports; writes nothing.
/// Every agent holds a connection (its long poll) and every client call
/// takes one: the soft open-file limit (often 1024) would cap a cluster far
/// below `api.max_agent_requests`. The hard limit is what the operator set.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

async fn check_store(config: &MasterConfig) -> anyhow::Result<()> {
    let (store, place): (Arc<dyn drover_master::store::Store>, String) = match config.store.backend
    {
        StoreBackend::Embedded => {
            let dir = config.data_dir.clone();
            let place = dir.join(drover_master::store::embedded::FILE_NAME);
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open_existing(&dir))
                .await
                .context("opening the embedded store")?
                .with_context(|| format!("{}", place.display()))?;
            (Arc::new(store), place.display().to_string())
        }
        StoreBackend::Etcd => {
            let etcd = EtcdStore::from_config(&config.store.etcd)
                .await
                .context("connecting to etcd")?;
            let place = format!(
                "etcd {} under {:?}",
                config.store.etcd.endpoints.join(","),
                config.store.etcd.prefix
            );
            (Arc::new(etcd), place)
        }
    };
    let snapshot = store.load().await.with_context(|| place.clone())?;
    let found = drover_master::store::check_format(&snapshot).with_context(|| place.clone())?;
    let cluster =
        drover_master::state::Cluster::from_snapshot(&snapshot).with_context(|| place.clone())?;
    let size = store
        .size_bytes()
        .await
        .map_or_else(|| "size unknown".to_string(), |b| format!("{b} bytes"));
    println!(
        "{place}: ok, format {}{}, {} jobs, {} tasks, {} allocs, {} nodes, {} keys, {size}",
        drover_master::store::FORMAT,
        match found {
            drover_master::store::Found::Current => "",
            drover_master::store::Found::Empty => " (empty: a new cluster)",
            drover_master::store::Found::Unmarked =>
                " (not marked yet: the master marks it at start)",
        },
        cluster.jobs.len(),
        cluster.tasks.len(),
        cluster.allocs.len(),
        cluster.nodes.len(),
        snapshot.len(),
    );
    Ok(())
}

/// Tells systemd about a state change (the unit is `Type=notify`). Without
/// `NOTIFY_SOCKET` (not started by systemd) this does nothing; a failure to
/// send is logged, not fatal: the master works the same without systemd.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}
