//! `drover-bench sim`: a fresh `drover-master` (a child process, unless
//! `--master` names a running one) driven by `--nodes` simulated agents in
//! this process, `--runs` times. Prints Markdown tables: per run, the
//! summary (min/median/max), and the master's memory and CPU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use drover_api::client::{Client, SpecFormat};
use drover_bench::sim::{
    cpu_time_of, master_binary, plan_jobs, raise_fd_limit, MasterMetrics, MasterProcess,
    MasterSettings, Memory, Sim, SimOptions, SimReport,
};
use drover_bench::Summary;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Simulated nodes (8/16/32 CPUs, 32–128 GiB, one in four with GPUs).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Tasks in all, split evenly over the jobs.
    #[arg(long, default_value_t = 10_000)]
    tasks: u32,
    /// Jobs, cycling through least-loaded, round-robin, priority and
    /// elastic-sharding.
    #[arg(long, default_value_t = 10)]
    jobs: u32,
    /// Runs, each on a fresh master.
    #[arg(long, default_value_t = 1)]
    runs: u32,
    /// How long each task "runs": from its assignment until it is reported
    /// succeeded (0: as soon as its running report is acknowledged).
    #[arg(long, default_value_t = 0)]
    task_duration_ms: u64,
    /// A running master (host:port) instead of a fresh drover-master child;
    /// its memory and CPU are then not measured.
    #[arg(long)]
    master: Option<String>,
    /// Heartbeat interval of the child master (default: 1 s up to 1,000
    /// nodes, 5 s beyond; node_timeout is 12 intervals, at least 30 s).
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// Give up on a run after this many seconds from its first submission;
    /// what it reached is still reported.
    #[arg(long, default_value_t = 3600)]
    max_wait_s: u64,
    /// After every task succeeded: seconds over which the idle master's
    /// CPU time (heartbeats and poll renewals only) is measured.
    #[arg(long, default_value_t = 10)]
    idle_window_s: u64,
}

/// What one run measured.
#[derive(Debug)]
struct RunNumbers {
    report: SimReport,
    register: Duration,
    /// Until the last job was accepted; `None` if that did not happen in time.
    submit: Option<Duration>,
    /// Tasks in the jobs accepted.
    submitted: u64,
    finished: bool,
    /// First submission until every task succeeded, or until giving up.
    elapsed: Duration,
    mem_start: Option<Memory>,
    mem_registered: Option<Memory>,
    mem_rest: Option<Memory>,
    /// The master's CPU time from the first submission to the end.
    master_cpu: Option<Duration>,
    /// This process's (the simulated nodes') CPU time over the same span.
    sim_cpu: Duration,
    idle: Option<Idle>,
    metrics: Option<MasterMetrics>,
    store_bytes: Option<u64>,
    warnings: Option<u64>,
    /// `GET /v1/cluster` from a client of its own every 100 ms while the
    /// run lasts: how long each answer took, and how many failed.
    cluster_reads: Vec<Duration>,
    cluster_read_errors: u64,
}

/// Reads `GET /v1/cluster` every 100 ms on connections of its own until
/// `stop`: the latency a user sees while the master is busy placing.
fn probe_cluster(addr: &str, mut stop: watch::Receiver<bool>) -> JoinHandle<(Vec<Duration>, u64)> {
    let client = Client::new(vec![addr.to_string()], None);
    tokio::spawn(async move {
        let (mut samples, mut errors) = (Vec::new(), 0);
        while !*stop.borrow() {
            let t = Instant::now();
            match client.raw("GET", "/v1/cluster", None).await {
                Ok(r) if r.status == 200 => samples.push(t.elapsed()),
                _ => errors += 1,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => {}
            }
        }
        (samples, errors)
    })
}

#[derive(Debug, Clone, Copy)]
struct Idle {
    master_cpu: Duration,
    heartbeats: u64,
    window: Duration,
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let limit = raise_fd_limit()?;
    eprintln!("open-file limit: {limit}");
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        // Interrupted, the run is dropped: its master is stopped with it.
        let n = tokio::select! {
            n = one_run(&args, run) => n?,
            _ = interrupted() => anyhow::bail!("interrupted"),
        };
        let r = &n.report;
        eprintln!(
            "run {run}: {} tasks running in {}, succeeded in {}; {} errors",
            r.progress.running,
            opt_secs(r.all_running),
            opt_secs(r.all_succeeded),
            r.error_count
        );
        for e in &r.errors {
            eprintln!("  error: {e}");
        }
        runs.push(n);
    }
    print_tables(&args, &runs);
    Ok(())
}

/// Idle submit → running latency with `nodes` simulated agents: `n`
/// single-task jobs submitted one at a time, each timed until the sim saw
/// its `running` report acknowledged, and let finish before the next.
pub async fn latency(nodes: usize, n: u32) -> anyhow::Result<Vec<Duration>> {
    raise_fd_limit()?;
    let settings = MasterSettings::for_nodes(nodes);
    let mut master = MasterProcess::start(&master_binary()?, settings)?;
    let plan = plan_jobs("probe", n, n, false);
    let options = SimOptions {
        poll_wait: settings.poll_timeout + Duration::from_secs(60),
        ..SimOptions::default()
    };
    let sim = Sim::start(&master.addr, nodes, &plan, options).await?;
    sim.wait_heartbeats(nodes as u64).await;
    eprintln!("{nodes} nodes registered; submitting {n} jobs one at a time");
    sim.mark_start();
    let client = Client::new(vec![master.addr.clone()], None);
    let mut progress = sim.watch();
    let mut samples = Vec::with_capacity(plan.len());
    for (i, job) in (1u64..).zip(&plan) {
        let t = Instant::now();
        client
            .submit(&job.spec, SpecFormat::Yaml)
            .await
            .with_context(|| format!("submitting {}", job.name))?;
        progress.wait_for(|p| p.running >= i).await?;
        samples.push(t.elapsed());
        progress.wait_for(|p| p.succeeded >= i).await?;
    }
    let report = sim.report();
    master.quiet();
    sim.stop().await;
    let _ = master.stop();
    anyhow::ensure!(report.error_count == 0, "errors: {:?}", report.errors);
    Ok(samples)
}

/// SIGINT or SIGTERM.
async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn one_run(args: &SimArgs, run: u32) -> anyhow::Result<RunNumbers> {
    let mut settings = MasterSettings::for_nodes(args.nodes);
    if let Some(ms) = args.heartbeat_interval_ms {
        settings.heartbeat_interval = Duration::from_millis(ms);
        settings.node_timeout = (settings.heartbeat_interval * 12).max(Duration::from_secs(30));
    }
    let mut master = match &args.master {
        Some(_) => None,
        None => Some(MasterProcess::start(&master_binary()?, settings)?),
    };
    let (addr, prefix) = match (&args.master, &master) {
        (Some(addr), _) => {
            // Job names unique to this run on a long-lived master.
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() % 1_000_000);
            (addr.clone(), format!("sim-{stamp}-{run}"))
        }
        (None, Some(m)) => (m.addr.clone(), "sim".to_string()),
        (None, None) => anyhow::bail!("no master"),
    };
    let pid = master.as_ref().map(MasterProcess::pid);
    let mem = || pid.and_then(|p| drover_bench::sim::memory_of(p).ok());
    let cpu = || pid.and_then(|p| cpu_time_of(p).ok());
    // A submission of a big job is one large store batch: allow for it.
    let client = Client::new(vec![addr.clone()], None).with_timeout(Duration::from_secs(600));
    let mem_start = mem();
    let plan = plan_jobs(&prefix, args.tasks, args.jobs, args.nodes >= 4);
    let options = SimOptions {
        task_duration: Duration::from_millis(args.task_duration_ms),
        poll_wait: settings.poll_timeout + Duration::from_secs(60),
        ..SimOptions::default()
    };
    let t = Instant::now();
    let sim = Sim::start(&addr, args.nodes, &plan, options).await?;
    let register = t.elapsed();
    // Memory with every node heartbeating and holding its long poll.
    sim.wait_heartbeats(args.nodes as u64).await;
    let mem_registered = mem();
    eprintln!(
        "run {run}: {} nodes registered in {:.1} s with {}; submitting {} tasks in {} jobs",
        args.nodes,
        register.as_secs_f64(),
        addr,
        args.tasks,
        plan.len()
    );

    let mut watch = sim.watch();
    let reporter = tokio::spawn(async move {
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let p = *watch.borrow_and_update();
            let rss = pid
                .and_then(|p| drover_bench::sim::memory_of(p).ok())
                .map_or(String::new(), |m| format!(", master RSS {}", mib(m.rss)));
            eprintln!(
                "  {:>5.0} s: {} running, {} succeeded{rss}",
                started.elapsed().as_secs_f64(),
                p.running,
                p.succeeded
            );
        }
    });
    let (master_cpu0, sim_cpu0) = (cpu(), cpu_time_of(std::process::id())?);
    sim.mark_start();
    let started = Instant::now();
    let (stop_probe, probe_stopped) = watch::channel(false);
    let probe = probe_cluster(&addr, probe_stopped);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.max_wait_s);
    // Jobs go in one after another while the nodes run what is placed;
    // both count against --max-wait-s.
    let submitted = Arc::new(AtomicU64::new(0));
    let mut submitting = {
        let client = Client::new(vec![addr.clone()], None).with_timeout(Duration::from_secs(600));
        let submitted = Arc::clone(&submitted);
        tokio::spawn(async move {
            for job in &plan {
                client
                    .submit(&job.spec, SpecFormat::Yaml)
                    .await
                    .with_context(|| format!("submitting {}", job.name))?;
                submitted.fetch_add(u64::from(job.tasks), Ordering::Relaxed);
            }
            anyhow::Ok(started.elapsed())
        })
    };
    let submit = tokio::select! {
        r = &mut submitting => Some(r??),
        _ = tokio::time::sleep_until(deadline) => {
            submitting.abort();
            None
        }
    };
    let finished = submit.is_some()
        && sim
            .wait_all_succeeded(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await;
    let elapsed = started.elapsed();
    let master_cpu = cpu().zip(master_cpu0).map(|(b, a)| b.saturating_sub(a));
    let sim_cpu = cpu_time_of(std::process::id())?.saturating_sub(sim_cpu0);
    reporter.abort();
    let _ = stop_probe.send(true);
    let (cluster_reads, cluster_read_errors) = probe.await.unwrap_or_default();
    let metrics = match MasterMetrics::fetch(&client).await {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("  could not read the master's metrics: {e:#}");
            None
        }
    };

    // At rest: every task ended; only heartbeats and poll renewals remain.
    let mut idle = None;
    if finished {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let mem_rest = mem();
    if finished {
        let window = Duration::from_secs(args.idle_window_s);
        let (c0, h0) = (cpu(), sim.heartbeats());
        tokio::time::sleep(window).await;
        let (c1, h1) = (cpu(), sim.heartbeats());
        idle = c1.zip(c0).map(|(b, a)| Idle {
            master_cpu: b.saturating_sub(a),
            heartbeats: h1 - h0,
            window,
        });
    }
    let report = sim.report();
    if let Some(m) = &master {
        m.quiet();
    }
    sim.stop().await;
    let store_bytes = master.as_ref().map(MasterProcess::store_bytes);
    let warnings = master.as_ref().map(MasterProcess::warnings);
    if let Some(m) = master.as_mut() {
        let _ = m.stop();
    }
    Ok(RunNumbers {
        report,
        register,
        submit,
        submitted: submitted.load(Ordering::Relaxed),
        finished,
        elapsed,
        mem_start,
        mem_registered,
        mem_rest,
        master_cpu,
        sim_cpu,
        idle,
        metrics,
        store_bytes,
        warnings,
        cluster_reads,
        cluster_read_errors,
    })
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map_or("—".to_string(), secs)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / f64::from(1 << 20))
}

fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

fn ms(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1000.0)
}

fn ms_mean(sum: f64, count: f64) -> String {
    if count > 0.0 {
        format!("{:.2} ms", sum / count * 1000.0)
    } else {
        "—".to_string()
    }
}

/// Thousands separated by commas.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> Option<T> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied()
}

fn print_tables(args: &SimArgs, runs: &[RunNumbers]) {
    let (nodes, tasks) = (
        thousands(args.nodes as u64),
        thousands(u64::from(args.tasks)),
    );
    println!("Per run:\n");
    println!(
        "| run | register | submit (mean at master) | all running | all succeeded | passes (mean) | store commits (mean) | heartbeat at master (mean) | pass p50 / p99 | lock held p99 | GET /v1/cluster p50 / p99 / max (failed) | preemptions | restarts | errors | master CPU | sim CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, n) in runs.iter().enumerate() {
        let r = &n.report;
        let m = n.metrics.unwrap_or_default();
        let reached = if n.finished {
            String::new()
        } else {
            format!(
                " (gave up after {}: {} submitted, {} running, {} succeeded)",
                secs(n.elapsed),
                thousands(n.submitted),
                thousands(r.progress.running),
                thousands(r.progress.succeeded)
            )
        };
        let reads = Summary::of(&n.cluster_reads);
        let read = |at: fn(&Summary) -> Duration| {
            reads
                .as_ref()
                .map_or("—".to_string(), |s| ms(at(s).as_secs_f64()))
        };
        println!(
            "| {} | {} | {} ({}) | {} | {}{reached} | {} ({}) | {} ({}) | {} | {} / {} | {} | {} / {} / {} ({}) | {} | {} | {} | {} | {} |",
            i + 1,
            secs(n.register),
            opt_secs(n.submit),
            ms_mean(m.submit_seconds, m.submits),
            opt_secs(r.all_running),
            opt_secs(r.all_succeeded),
            thousands(m.passes as u64),
            ms_mean(m.pass_seconds, m.passes),
            thousands(m.commits as u64),
            ms_mean(m.commit_seconds, m.commits),
            ms_mean(m.heartbeat_seconds, m.heartbeats),
            m.pass_p50.map_or("—".to_string(), ms),
            m.pass_p99.map_or("—".to_string(), ms),
            m.lock_p99.map_or("—".to_string(), ms),
            read(|s| s.p50),
            read(|s| s.p99),
            read(|s| s.max),
            n.cluster_read_errors,
            m.preemptions,
            r.restarts,
            r.error_count,
            n.master_cpu.map_or("—".to_string(), secs),
            secs(n.sim_cpu),
        );
    }

    let running: Vec<Duration> = runs.iter().filter_map(|n| n.report.all_running).collect();
    let succeeded: Vec<Duration> = runs.iter().filter_map(|n| n.report.all_succeeded).collect();
    let rate = median(
        running
            .iter()
            .map(|d| f64::from(args.tasks) / d.as_secs_f64())
            .collect(),
    );
    let (min, max) = (running.iter().min(), running.iter().max());
    println!(
        "\nSummary ({} of {} runs finished):\n",
        running.len(),
        runs.len()
    );
    println!(
        "| nodes | tasks | jobs | runs | all running: min | median | max | placements/s (median) | all succeeded (median) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {nodes} | {tasks} | {} | {} | {} | {} | {} | {} | {} |",
        args.jobs,
        runs.len(),
        opt_secs(min.copied()),
        opt_secs(median(running.clone())),
        opt_secs(max.copied()),
        rate.map_or("—".to_string(), |r| format!("{}/s", thousands(r as u64))),
        opt_secs(median(succeeded)),
    );

    if args.master.is_some() {
        return;
    }
    let med_u64 =
        |f: &dyn Fn(&RunNumbers) -> Option<u64>| median(runs.iter().filter_map(f).collect());
    let med_f64 =
        |f: &dyn Fn(&RunNumbers) -> Option<f64>| median(runs.iter().filter_map(f).collect());
    let registered = med_u64(&|n| n.mem_registered.map(|m| m.rss));
    let per_node = med_f64(&|n| {
        let (a, b) = (n.mem_start?.rss as f64, n.mem_registered?.rss as f64);
        Some((b - a) / args.nodes.max(1) as f64)
    });
    let rest = med_u64(&|n| n.mem_rest.map(|m| m.rss));
    // Per task the master holds (those submitted), and per task done.
    let per_task = med_f64(&|n| {
        let (a, b) = (n.mem_registered?.rss as f64, n.mem_rest?.rss as f64);
        Some((b - a) / n.submitted.max(1) as f64)
    });
    let peak = med_u64(&|n| n.mem_rest.map(|m| m.peak));
    let cpu_per_k = med_f64(&|n| {
        let done = n.report.progress.succeeded.max(1) as f64;
        Some(n.master_cpu?.as_secs_f64() / (done / 1000.0))
    });
    let idle_per_hb = med_f64(&|n| {
        let i = n.idle?;
        (i.heartbeats > 0).then(|| i.master_cpu.as_secs_f64() / i.heartbeats as f64 * 1e6)
    });
    let idle_share = med_f64(&|n| {
        let i = n.idle?;
        Some(i.master_cpu.as_secs_f64() / i.window.as_secs_f64() * 100.0)
    });
    let store = med_u64(&|n| n.store_bytes);
    let warnings = runs.iter().filter_map(|n| n.warnings).max().unwrap_or(0);
    println!("\nMaster cost (medians):\n");
    println!(
        "| nodes | tasks | RSS, nodes registered | per node | RSS at rest | per task | peak RSS | CPU per 1k tasks done | idle CPU per heartbeat | idle CPU (% of a core) | store file |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let dash = || "—".to_string();
    println!(
        "| {nodes} | {tasks} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        registered.map_or_else(dash, mib),
        per_node.map_or_else(dash, kib),
        rest.map_or_else(dash, mib),
        per_task.map_or_else(dash, kib),
        peak.map_or_else(dash, mib),
        cpu_per_k.map_or_else(dash, |s| format!("{s:.2} s")),
        idle_per_hb.map_or_else(dash, |us| format!("{us:.0} µs")),
        idle_share.map_or_else(dash, |p| format!("{p:.1} %")),
        store.map_or_else(dash, mib),
    );
    if warnings > 0 {
        println!("\nThe master logged {warnings} warning lines (the first 20 went to stderr).");
    }
}
