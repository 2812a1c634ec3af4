//! `drover-bench`: runs the end-to-end benchmarks against a fresh
//! `drover dev` and prints the results as Markdown table rows for
//! BENCHMARKS.md. Build in release mode for numbers worth writing down:
//!
//!   cargo build --release --bins && target/release/drover-bench latency --n 200
//!   target/release/drover-bench throughput --tasks 10000
//!   target/release/drover-bench spawn-limit
//!   target/release/drover-bench sim --nodes 1000 --tasks 100000 --jobs 100 --runs 3
//!   target/release/drover-bench soak --duration 30m --out soak.md

use clap::{Parser, Subcommand};
use drover_bench::{
    disk_bytes, drover_binary, heartbeats, latency, spawn_limit, throughput, DevCluster, Summary,
};

mod sim_cmd;
mod soak;

#[derive(Debug, Parser)]
#[command(about = "End-to-end benchmarks of a drover dev cluster")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Idle submit → running latency of single-task jobs, one at a time.
    Latency {
        #[arg(long, default_value_t = 200)]
        n: usize,
    },
    /// /bin/true tasks per second on one agent, from submit to complete,
    /// also as a share of this machine's spawn-limit and per tenth of the run.
    Throughput {
        #[arg(long, default_value_t = 10_000)]
        tasks: u32,
        /// Runs, each on a fresh cluster (min/median/max reported).
        #[arg(long, default_value_t = 1)]
        runs: u32,
        /// After each run, a second job of this many tasks on the same
        /// cluster: does a cluster with that history run slower?
        #[arg(long)]
        then: Option<u32>,
    },
    /// /bin/true started and reaped as fast as this machine allows: one
    /// thread per core spawning and waiting in a loop.
    SpawnLimit {
        #[arg(long, default_value_t = 20_000)]
        processes: u32,
        /// Runs (min/median/max reported).
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// A real drover-master driven by simulated agents in this process:
    /// time until every task ran, placements/s, the master's memory and
    /// CPU.
    Sim(sim_cmd::SimArgs),
    /// Idle submit → running latency on a real drover-master with many
    /// simulated agents: single-task jobs, one at a time, each timed from
    /// its submission until its `running` report was acknowledged.
    SimLatency {
        #[arg(long, default_value_t = 10_000)]
        nodes: usize,
        #[arg(long, default_value_t = 100)]
        n: u32,
    },
    /// A real drover-master and drover-agents under mixed churn (submits,
    /// stops, purges, agent and node restarts) for --duration, sampling
    /// memory, open files, store and data dir sizes: does anything grow?
    Soak(soak::SoakArgs),
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn ms(d: std::time::Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.bench {
        Bench::Latency { n } => {
            let drover = drover_binary()?;
            let cluster = DevCluster::start(&drover, 1)?;
            let samples = latency(&cluster.client(), n).await?;
            let s = Summary::of(&samples).ok_or_else(|| anyhow::anyhow!("no samples"))?;
            println!("| submissions | min | p50 | p99 | max |");
            println!("|---|---|---|---|---|");
            println!(
                "| {} | {} | {} | {} | {} |",
                s.count,
                ms(s.min),
                ms(s.p50),
                ms(s.p99),
                ms(s.max)
            );
        }
        Bench::Throughput { tasks, runs, then } => {
            let drover = drover_binary()?;
            let limit = spawn_limit(10_000, cores())?;
            eprintln!("spawn-limit: {limit:.0} processes/s");
            let mut rates = Vec::new();
            for run in 1..=runs {
                let cluster = DevCluster::start(&drover, 1)?;
                let client = cluster.client();
                let beats_before = heartbeats(&client).await?;
                let t = throughput(&client, "throughput", tasks).await?;
                let beats = heartbeats(&client).await? - beats_before;
                // The agents' data dirs only: the master's store is not
                // the agent's footprint.
                let disk: u64 = std::fs::read_dir(cluster.data_dir())?
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("agent"))
                    .map(|e| disk_bytes(&e.path()))
                    .sum();
                eprintln!(
                    "run {run}: {beats:.0} heartbeats ({:.1} tasks each); agent data dir {} KiB \
                     ({:.0} bytes per finished alloc); drover dev RSS {} MiB",
                    f64::from(tasks) / beats.max(1.0),
                    disk / 1024,
                    disk as f64 / f64::from(tasks),
                    cluster.rss_kib().unwrap_or(0) / 1024
                );
                if let Some(n) = then {
                    let after = throughput(&client, "then", n).await?;
                    eprintln!(
                        "run {run}, then: {n} tasks in {:.2} s = {:.0} tasks/s on the same cluster",
                        after.elapsed.as_secs_f64(),
                        after.tasks_per_second()
                    );
                }
                let tenths: Vec<String> = t.tenths.iter().map(|r| format!("{r:.0}")).collect();
                eprintln!(
                    "run {run}: {} tasks in {:.2} s = {:.0} tasks/s ({} retried); per tenth: {}",
                    t.tasks,
                    t.elapsed.as_secs_f64(),
                    t.tasks_per_second(),
                    t.retried,
                    tenths.join(" ")
                );
                rates.push(t.tasks_per_second());
            }
            rates.sort_by(f64::total_cmp);
            let median = rates[rates.len() / 2];
            println!("| tasks | runs | min | median | max | median / spawn-limit |");
            println!("|---|---|---|---|---|---|");
            println!(
                "| {tasks} | {runs} | {:.0}/s | {median:.0}/s | {:.0}/s | {:.1} % of {limit:.0}/s |",
                rates[0],
                rates[rates.len() - 1],
                100.0 * median / limit
            );
        }
        Bench::SpawnLimit { processes, runs } => {
            let threads = cores();
            let mut rates = Vec::new();
            for _ in 0..runs.max(1) {
                rates.push(spawn_limit(processes, threads)?);
            }
            rates.sort_by(f64::total_cmp);
            println!("| processes | threads | runs | min | median | max |");
            println!("|---|---|---|---|---|---|");
            println!(
                "| {processes} | {threads} | {} | {:.0}/s | {:.0}/s | {:.0}/s |",
                rates.len(),
                rates[0],
                rates[rates.len() / 2],
                rates[rates.len() - 1]
            );
        }
        Bench::Sim(a) => sim_cmd::run(a).await?,
        Bench::Soak(a) => soak::run(a).await?,
        Bench::SimLatency { nodes, n } => {
            let samples = sim_cmd::latency(nodes, n).await?;
            let s = Summary::of(&samples).ok_or_else(|| anyhow::anyhow!("no samples"))?;
            println!("| nodes | submissions | min | p50 | p99 | max |");
            println!("|---|---|---|---|---|---|");
            println!(
                "| {nodes} | {} | {} | {} | {} | {} |",
                s.count,
                ms(s.min),
                ms(s.p50),
                ms(s.p99),
                ms(s.max)
            );
        }
    }
    Ok(())
}
