//! `drover dev`: a master on the embedded store and local agents in one
//! process, loopback only. (Being written; see `run`.)

use std::path::PathBuf;

/// Run a local cluster: a master and agents in this process.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Address of the master (loopback only; port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,
    /// Keep the cluster's state here (default: a temp dir removed on exit).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Number of local agents (the second and later ones report fake resources).
    #[arg(long, default_value_t = 1)]
    pub agents: u32,
}

/// Runs until Ctrl-C or SIGTERM, then stops the agents' tasks and exits.
/// Prints a line `export DROVER_ADDR=<host:port>` once the master listens.
pub fn run(args: DevArgs) -> anyhow::Result<()> {
    anyhow::bail!("drover dev is not implemented yet ({args:?})")
}
