//! `drover simulate`: replays a workload through the real scheduler on a
//! virtual clock (`drover_simulate`), once per policy, and compares them.
//! Needs no master, except with `--from-master`, which reads one (and
//! writes nothing to it).

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use drover_api::protocol::NodeResources;
use drover_api::{JobState, PolicyKind};
use drover_simulate::engine::{self, PolicyChoice, Setup};
use drover_simulate::input::{self, Duration as TaskDuration, Faults, NodeClass, WorkloadJob};
use drover_simulate::report::{self, Report};

use crate::{error, output, Ctx};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    drover simulate --workload config/simulate/workload.jsonl --cluster config/simulate/cluster.yaml\n  \
    drover simulate --workload w.jsonl --cluster c.yaml --faults f.yaml --plot policies.svg\n  \
    drover simulate --workload w.jsonl --cluster c.yaml --policies priority --as-submitted -o json\n  \
    drover simulate --generate 500 --seed 7 > synthetic.jsonl\n  \
    drover simulate --import-alibaba batch_task.csv --limit 10000 > alibaba.jsonl\n  \
    drover simulate --from-master --addr 10.0.0.5:7070")]
pub struct SimulateArgs {
    /// The jobs: JSON Lines, one job per line with `submit`, `duration`
    /// and the job spec's fields (see config/simulate/README.md).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["generate", "import_alibaba", "from_master"])]
    pub workload: Option<PathBuf>,
    /// The nodes: a YAML list of node classes (name, count, cpu, memory,
    /// gpus, gpu_model, labels).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["generate", "import_alibaba", "from_master"])]
    pub cluster: Option<PathBuf>,
    /// Node failures (YAML): at given times, or at a rate, with recovery.
    #[arg(long, value_name = "FILE")]
    pub faults: Option<PathBuf>,
    /// Policies to compare, comma-separated (default: all four). Each run
    /// places every job by that policy.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub policies: Vec<PolicyKind>,
    /// One run in which each job keeps its own `policy:` field; the first
    /// of --policies (default least-loaded) places the others.
    #[arg(long)]
    pub as_submitted: bool,
    /// Seed for durations drawn from distributions, rate-based faults and
    /// --generate: the same inputs and seed give the same report, byte for
    /// byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Virtual time is handled in rounds of this length: what falls due
    /// within one is reported together and followed by one scheduling pass
    /// (agents batch their reports into heartbeats alike).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub round: std::time::Duration,
    /// Draw the queue length and utilisation over time, every policy on the
    /// same axes, as SVG.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Print a synthetic workload of this many jobs (Poisson arrivals,
    /// heavy-tailed durations, some GPU and elastic jobs, a priority mix)
    /// as JSON Lines, and exit.
    #[arg(long, value_name = "JOBS", conflicts_with_all = ["workload", "import_alibaba", "from_master"])]
    pub generate: Option<usize>,
    /// Convert an Alibaba cluster-trace-v2018 batch_task.csv into a
    /// workload (JSON Lines on stdout), and exit.
    #[arg(long, value_name = "CSV", conflicts_with_all = ["workload", "from_master"])]
    pub import_alibaba: Option<PathBuf>,
    /// With --import-alibaba: only the first N tasks of the trace.
    #[arg(long, value_name = "N", requires = "import_alibaba")]
    pub limit: Option<usize>,
    /// What-if on a live cluster: the nodes that are up and the jobs that
    /// are pending or running, read from the master at --addr, all
    /// submitted at once (running tasks placed anew, before pending ones).
    #[arg(long, conflicts_with_all = ["workload", "cluster"])]
    pub from_master: bool,
    /// With --from-master: how long each task is assumed to run (the
    /// master does not know).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = humantime::parse_duration, requires = "from_master")]
    pub assume_duration: std::time::Duration,
}

pub async fn run(ctx: &Ctx, args: SimulateArgs) -> anyhow::Result<u8> {
    if let Some(jobs) = args.generate {
        let opts = drover_simulate::generate::GenerateOptions {
            jobs,
            seed: args.seed,
            ..Default::default()
        };
        output::emit(&input::to_jsonl(&drover_simulate::generate::generate(
            &opts,
        )))?;
        return Ok(error::OK);
    }
    if let Some(csv) = &args.import_alibaba {
        let text = std::fs::read_to_string(csv)
            .with_context(|| format!("cannot read {}", csv.display()))?;
        let opts = drover_simulate::alibaba::AlibabaOptions {
            limit: args.limit,
            ..Default::default()
        };
        let jobs = drover_simulate::alibaba::import_batch_tasks(&text, &opts)?;
        output::emit(&input::to_jsonl(&jobs))?;
        return Ok(error::OK);
    }
    if let Some(path) = &args.plot {
        let svg = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
        if !svg {
            bail!(
                "--plot {}: only SVG plots are supported (name the file .svg)",
                path.display()
            );
        }
    }
    let (workload, cluster, label) = if args.from_master {
        let (w, c) = from_master(ctx, args.assume_duration.as_secs_f64()).await?;
        (w, c, format!("the queue of {}", ctx.client.current_addr()))
    } else {
        let (Some(w), Some(c)) = (&args.workload, &args.cluster) else {
            bail!("--workload and --cluster are both needed");
        };
        (
            input::load_workload(w)?,
            input::load_cluster(c)?,
            w.display().to_string(),
        )
    };
    let faults = match &args.faults {
        Some(path) => input::load_faults(path, &input::node_ids(&cluster), args.seed)?,
        None => Faults { events: Vec::new() },
    };
    let choices = choices(&args);
    let setup = Setup {
        workload: &workload,
        cluster: &cluster,
        faults: &faults,
        seed: args.seed,
        round: args.round,
    };
    // The runs are independent and each is single-threaded: one per core.
    let runs = std::thread::scope(|s| {
        let handles: Vec<_> = choices
            .iter()
            .map(|&choice| s.spawn(move || engine::run(setup, choice)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail_panic()))
            .collect::<Result<Vec<_>, _>>()
    })?;
    if let Some(path) = &args.plot {
        drover_simulate::plot::write(path, &runs)?;
    }
    let report = Report {
        seed: args.seed,
        workload: label,
        policies: runs.iter().map(report::summarize).collect(),
    };
    if ctx.json() {
        output::emit(&report::json(&report))?;
    } else {
        output::emit(&report::table(&report))?;
    }
    Ok(error::OK)
}

fn bail_panic() -> Result<drover_simulate::record::RunRecord, drover_simulate::SimError> {
    Err(drover_simulate::SimError::Engine(
        "a simulation run panicked".to_string(),
    ))
}

fn choices(args: &SimulateArgs) -> Vec<PolicyChoice> {
    let all = [
        PolicyKind::RoundRobin,
        PolicyKind::LeastLoaded,
        PolicyKind::Priority,
        PolicyKind::ElasticSharding,
    ];
    if args.as_submitted {
        let default = args
            .policies
            .first()
            .copied()
            .unwrap_or(PolicyKind::LeastLoaded);
        return vec![PolicyChoice::AsSubmitted(default)];
    }
    let picked: &[PolicyKind] = if args.policies.is_empty() {
        &all
    } else {
        &args.policies
    };
    let mut seen = Vec::new();
    for p in picked {
        if !seen.contains(p) {
            seen.push(*p);
        }
    }
    seen.into_iter().map(PolicyChoice::Every).collect()
}

/// The nodes that are up, one class each, and the pending and running
/// jobs, all submitted at time 0 (running ones first).
async fn from_master(
    ctx: &Ctx,
    duration_s: f64,
) -> anyhow::Result<(Vec<WorkloadJob>, Vec<NodeClass>)> {
    let nodes = ctx.client.nodes().await?;
    let mut cluster = Vec::new();
    for n in nodes.iter().filter(|n| !n.down && !n.revoked) {
        let r: &NodeResources = &n.desc.resources;
        cluster.push(NodeClass {
            name: n.id.to_string(),
            count: 1,
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
            gpus: r.gpus.len() as u32,
            gpu_model: r.gpus.first().map(|g| g.model.clone()).unwrap_or_default(),
            labels: n.desc.labels.clone(),
        });
    }
    if cluster.is_empty() {
        bail!("the master has no node up to simulate on");
    }
    let mut workload = Vec::new();
    for state in [JobState::Running, JobState::Pending] {
        for j in ctx.client.jobs(Some(state)).await? {
            let full = ctx.client.job(&j.id).await?;
            let Some(spec) = full.spec else {
                continue;
            };
            workload.push(WorkloadJob {
                submit_s: 0.0,
                spec,
                duration: TaskDuration::Fixed(duration_s),
            });
        }
    }
    Ok((workload, cluster))
}
