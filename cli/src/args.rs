//! The command line: every command, flag and `--help` example.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use drover_api::{JobId, JobState, NodeId, TaskId};

use crate::dev::DevArgs;

/// The examples under `drover --help`.
macro_rules! top_examples {
    () => {
        "Examples:
  drover dev                          # a local master and agent
  drover job run hello.yaml --wait    # submit and wait for the tasks
  drover job ls
  drover task logs hello/0 --follow
  drover node ls -o json

Environment:
  DROVER_ADDR   master address(es), as --addr
  DROVER_TOKEN  bearer token, when the master requires one"
    };
}

/// The exit status contract, shown by `--help` (long form).
macro_rules! exit_codes {
    () => {
        "Exit status:
  0  success (job run --wait: the batch job completed, or every service task runs)
  1  the command failed: the master refused it, a file could not be read,
     or (job run --wait) the job failed or was stopped
  2  usage: the command line is wrong
  3  the master could not be reached"
    };
}

/// The examples under `drover job run --help`.
macro_rules! job_run_examples {
    () => {
        "Examples:
  drover job run hello.yaml            # submit; prints created/updated/unchanged
  drover job run hello.yaml --wait     # ... and wait: exit 0 complete, 1 failed
  cat job.json | drover job run -      # from stdin (YAML, which includes JSON)

A minimal spec (hello.yaml):
  name: hello
  count: 2
  command: [\"/bin/sh\", \"-c\", \"echo hello from $DROVER_TASK_ID\"]
  resources: { cpu: 100m, memory: 64Mi }"
    };
}

/// Drover: submit jobs to a cluster and watch them run.
#[derive(Debug, Parser)]
#[command(
    name = "drover",
    version,
    after_help = top_examples!(),
    after_long_help = concat!(top_examples!(), "\n\n", exit_codes!())
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Master address, host:port; several masters comma-separated (the
    /// first that answers is used).
    #[arg(
        long,
        global = true,
        env = "DROVER_ADDR",
        default_value = "127.0.0.1:7070",
        value_name = "HOST:PORT[,...]"
    )]
    pub addr: String,
    /// Read the bearer token from this file (instead of DROVER_TOKEN).
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Speak TLS to the master and trust only certificates from this CA
    /// (PEM). Also implied by an https:// address, which then needs it.
    #[arg(long, global = true, env = "DROVER_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM) for a master with tls.client_ca_file.
    #[arg(
        long,
        global = true,
        env = "DROVER_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(
        long,
        global = true,
        env = "DROVER_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// Output format: aligned tables for people, or the API's JSON for scripts.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit, inspect, plan and stop jobs.
    #[command(subcommand)]
    Job(JobCommand),
    /// Inspect tasks and read their logs.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Inspect and drain nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The cluster as a whole.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// The REST API's description.
    #[command(subcommand)]
    Api(ApiCommand),
    /// Replay a workload through the real scheduler on a virtual clock, once
    /// per policy, and compare them (no master needed).
    Simulate(Box<crate::simulate::SimulateArgs>),
    /// Run a local cluster: a master and agents in this process.
    #[command(after_help = "Examples:\n  \
        drover dev                          # master on 127.0.0.1:7070, one agent\n  \
        drover dev --agents 3 --listen 127.0.0.1:0\n  \
        drover dev --data-dir /tmp/drover   # keep the state across runs")]
    Dev(DevArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        drover completions bash > /etc/bash_completion.d/drover\n  \
        drover completions zsh > \"${fpath[1]}/_drover\"\n  \
        drover completions fish > ~/.config/fish/completions/drover.fish")]
    Completions {
        /// The shell to write the script for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// A job spec file: YAML, or JSON when the name ends in `.json`; `-` is stdin (YAML).
#[derive(Debug, Args)]
pub struct SpecFile {
    /// Job spec: YAML, or JSON when the name ends in .json; `-` reads stdin.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Submit a job (or a new version of one) and optionally wait for it.
    #[command(
        after_help = job_run_examples!(),
        after_long_help = concat!(
            job_run_examples!(),
            "\n\n",
            "With --wait, a batch job is followed until it completes, fails or is
stopped, a service job until every task runs (or it fails). A progress bar
shows on a terminal; Ctrl-C stops the waiting, not the job.\n\n",
            exit_codes!()
        )
    )]
    Run {
        #[command(flatten)]
        spec: SpecFile,
        /// Wait for the job: a batch job to finish, a service's tasks to run.
        #[arg(long, overrides_with = "detach")]
        wait: bool,
        /// Return once the job is submitted (the default; overrides --wait).
        #[arg(long, overrides_with = "wait")]
        detach: bool,
    },
    /// One job: its state, task counts and tasks.
    #[command(after_help = "Examples:\n  \
        drover job status hello\n  \
        drover job status hello -o json | jq .tasks")]
    Status {
        /// The job's name.
        id: JobId,
    },
    /// List jobs.
    #[command(after_help = "Examples:\n  \
        drover job ls\n  \
        drover job ls --state running\n  \
        drover job ls -o json | jq -r '.[].id'")]
    Ls {
        /// Only jobs in this state: pending, running, complete, failed, stopped.
        #[arg(long)]
        state: Option<JobState>,
    },
    /// Stop a job: kill its running tasks. With --purge, also forget it.
    #[command(after_help = "Examples:\n  \
        drover job stop hello\n  \
        drover job stop hello --purge        # and remove it from the master")]
    Stop {
        /// The job's name.
        id: JobId,
        /// Also remove the job, its tasks and their history.
        #[arg(long)]
        purge: bool,
    },
    /// Dry run: where each task would be placed, or why it would wait.
    #[command(after_help = "Examples:\n  \
        drover job plan render.yaml\n  \
        drover job plan render.yaml -o json")]
    Plan {
        #[command(flatten)]
        spec: SpecFile,
    },
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// A job's tasks: state, node, attempts, exit code.
    #[command(after_help = "Examples:\n  \
        drover task ls hello\n  \
        drover task ls hello -o json")]
    Ls {
        /// The job's name.
        job: JobId,
    },
    /// One task and every attempt to run it.
    #[command(after_help = "Examples:\n  \
        drover task status hello/0           # <job>/<index>, indexes start at 0")]
    Status {
        /// The task: <job>/<index>.
        task: TaskId,
    },
    /// Print a task's output (its latest attempt), as it arrives.
    #[command(after_help = "Examples:\n  \
        drover task logs hello/0\n  \
        drover task logs hello/0 --stderr\n  \
        drover task logs web/2 --follow      # until the task ends or Ctrl-C")]
    Logs {
        /// The task: <job>/<index>.
        task: TaskId,
        /// Keep printing new output until the task ends (or Ctrl-C).
        #[arg(short, long)]
        follow: bool,
        /// Print standard error instead of standard output.
        #[arg(long)]
        stderr: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes: state, capacity and what is allocated.
    #[command(after_help = "Examples:\n  \
        drover node ls\n  \
        drover node ls -o json | jq -r '.[] | select(.state == \"ready\") | .id'")]
    Ls,
    /// One node: resources, GPUs, labels, allocations, drain.
    #[command(after_help = "Examples:\n  \
        drover node status gpu-1")]
    Status {
        /// The node's id.
        id: NodeId,
    },
    /// Drain a node (no new work; its allocations move by the deadline), or
    /// end a drain with --disable.
    #[command(after_help = "Examples:\n  \
        drover node drain gpu-1 --deadline 5m\n  \
        drover node drain gpu-1 --disable    # take work again")]
    Drain {
        /// The node's id.
        id: NodeId,
        /// When the allocations still on the node are stopped and replaced
        /// (e.g. 30s, 5m, 1h; the master's default is one hour).
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "disable")]
        deadline: Option<Duration>,
        /// End the drain: the node takes new work again.
        #[arg(long)]
        disable: bool,
    },
    /// Revoke a node's credential: its agent can no longer speak for it,
    /// the node is down at once and its allocations move elsewhere. The
    /// machine may rejoin only under a new node id.
    #[command(after_help = "Examples:\n  \
        drover node revoke gpu-1")]
    Revoke {
        /// The node's id.
        id: NodeId,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Totals: nodes, jobs and tasks by state, capacity, allocation, leader.
    #[command(after_help = "Examples:\n  \
        drover cluster status\n  \
        drover cluster status -o json | jq .queue_depth")]
    Status,
}

#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// Print the OpenAPI 3.1 document of the REST API (what a master
    /// serves at /v1/openapi.json); needs no master.
    #[command(after_help = "Examples:\n  \
        drover api openapi > drover.json\n  \
        drover api openapi | jq '.paths | keys'")]
    Openapi,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
