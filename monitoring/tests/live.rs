//! The monitoring files against a live cluster: `drover dev --agents 2`
//! (the real binary) with jobs flowing through it, scraped every second by
//! a real Prometheus that runs the shipped scrape config and alerting rules.
//!
//! One cluster for every check, since starting one is most of the cost:
//! the master's and agents' `/metrics` match the catalog and pass `promtool
//! check metrics`; the master's labels carry no ids; the scenario moved the
//! counters it should have; every dashboard panel's query returns data; the
//! alerting rules evaluate cleanly and none fires.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use drover_api::client::{Client, SpecFormat};
use drover_api::views::JobView;
use drover_api::{JobId, JobState, NodeId, TaskState};
use drover_bench::{drover_binary, DevCluster};
use drover_monitoring::catalog::{self, Entry};
use drover_monitoring::exposition::{self, Family};
use drover_monitoring::prom::{self, Prometheus};
use drover_monitoring::{dashboards, dashboards_dir, promql};

/// What `$__rate_interval` stands for: longer than the whole run, so that
/// every rate covers all of the scenario's events.
const RATE_INTERVAL: &str = "1m";
/// The scenario's jobs: no master label value may contain one.
const JOBS: [&str; 5] = ["svc", "batch", "flaky", "backfill", "urgent"];
const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_cluster_fills_every_panel_with_catalogued_metrics_that_promtool_accepts() {
    // Missing tools fail here, with the hint, before a cluster starts.
    for tool in ["prometheus", "promtool"] {
        prom::tool(tool).unwrap_or_else(|e| panic!("{e:#}"));
    }
    let catalog = catalog::load().unwrap();
    let dashboards = dashboards::load_all().unwrap();

    let binary = drover_binary().unwrap();
    let cluster = tokio::task::spawn_blocking(move || DevCluster::start(&binary, 2))
        .await
        .unwrap()
        .unwrap();
    let client = cluster.client();
    let nodes = client.nodes().await.unwrap();
    // Two fake GPUs, or more where NVML finds real ones for dev-1.
    let gpus: usize = nodes.iter().map(|n| n.desc.resources.gpus.len()).sum();
    let agents: Vec<(NodeId, String)> =
        nodes.into_iter().map(|n| (n.id, n.desc.log_addr)).collect();
    assert_eq!(agents.len(), 2, "{agents:?}");

    let prometheus = Prometheus::start(&scrape_config(&cluster.addr, &agents))
        .await
        .unwrap();
    // Scraped once before anything happens, so the scenario's increases
    // are seen as increases.
    let targets = 1 + agents.len();
    poll("every target to be scraped and up", || async {
        let up = prometheus.query("up == 1").await?;
        Ok((up.len() == targets).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nprometheus log:\n{}", prometheus.log()));

    scenario(&client, gpus).await.unwrap();
    let ended = unix_seconds();
    // A successful scrape of every target more than a second after the
    // last event: every counter has samples after its last move. Queries
    // are then evaluated at that moment, so a later failed scrape (which
    // would mark series stale) cannot take their data away.
    poll("every target scraped and up after the scenario", || async {
        let oldest = prometheus
            .query(&format!(
                "min(timestamp(up)) and on () count(up == 1) == {targets}"
            ))
            .await?;
        Ok(oldest.first().filter(|s| s.value > ended + 1.0).map(|_| ()))
    })
    .await
    .unwrap();
    let at = unix_seconds();

    let mut problems = Vec::new();
    let master_text = metrics_text(&cluster.addr).await.unwrap();
    let mut agent_texts = Vec::new();
    for (node, addr) in &agents {
        agent_texts.push((format!("agent {node}"), metrics_text(addr).await.unwrap()));
    }
    promtool_check_metrics("master", &master_text, &mut problems);
    for (who, text) in &agent_texts {
        promtool_check_metrics(who, text, &mut problems);
    }
    let master = exposition::parse(&master_text).unwrap();
    let mut agent = BTreeMap::new();
    for (_, text) in &agent_texts {
        agent.extend(exposition::parse(text).unwrap());
    }
    compare_with_catalog("master", &master, &catalog, false, &mut problems);
    compare_with_catalog("agents", &agent, &catalog, true, &mut problems);
    no_ids_in_master_labels(&master, &agents, &mut problems);
    counters_moved(&prometheus, at, &mut problems).await;
    every_panel_has_data(&prometheus, at, &dashboards, &mut problems).await;
    rules_evaluate_and_none_fires(&prometheus, &mut problems).await;

    assert!(
        problems.is_empty(),
        "{} problem(s):\n  {}\nprometheus log:\n{}",
        problems.len(),
        problems.join("\n  "),
        prometheus.log()
    );
}

/// The shipped `prometheus.yml`, pointed at this cluster: its jobs and
/// rule files as they are, every target replaced, scraped every second.
fn scrape_config(master: &str, agents: &[(NodeId, String)]) -> String {
    let dir = dashboards_dir().join("prometheus");
    let text = std::fs::read_to_string(dir.join("prometheus.yml")).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["scrape_timeout"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    let rules: Vec<serde_yaml::Value> = config["rule_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|f| dir.join(f.as_str().unwrap()).display().to_string().into())
        .collect();
    config["rule_files"] = rules.into();
    for job in config["scrape_configs"].as_sequence_mut().unwrap() {
        let targets = match job["job_name"].as_str() {
            Some("drover-master") => serde_yaml::to_value([BTreeMap::from([(
                "targets",
                vec![master.to_string()],
            )])]),
            Some("drover-agent") => serde_yaml::to_value(
                agents
                    .iter()
                    .map(|(node, addr)| {
                        serde_json::json!({"targets": [addr], "labels": {"node": node.to_string()}})
                    })
                    .collect::<Vec<_>>(),
            ),
            other => panic!("prometheus.yml: unexpected job {other:?}"),
        };
        job["static_configs"] = targets.unwrap();
    }
    serde_yaml::to_string(&config).unwrap()
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Calls `check` every 50 ms until it gives a value, for up to [`WAIT`].
async fn poll<T, F, Fut>(what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(e) => bail!("timed out after {WAIT:?} waiting for {what}; last error: {e:#}"),
                None => bail!("timed out after {WAIT:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics_text(addr: &str) -> anyhow::Result<String> {
    let reply = Client::new(vec![addr.to_string()], None)
        .raw("GET", "/metrics", None)
        .await
        .with_context(|| format!("GET {addr}/metrics"))?;
    ensure!(reply.status == 200, "GET {addr}/metrics: {}", reply.status);
    Ok(String::from_utf8(reply.body.to_vec())?)
}

async fn submit(client: &Client, spec: &str) -> anyhow::Result<JobId> {
    let answer = client.submit(spec, SpecFormat::Yaml).await?;
    Ok(answer.job.id)
}

async fn until_job(
    client: &Client,
    job: &JobId,
    what: &str,
    ok: impl Fn(&JobView) -> bool,
) -> anyhow::Result<()> {
    poll(&format!("job {job}: {what}"), || async {
        let view = client.job(job).await?;
        Ok(ok(&view).then_some(()))
    })
    .await
}

/// Jobs that move every metric a panel shows: placements by three
/// policies, completions, a restart, a preemption, a drain, a 404.
async fn scenario(client: &Client, gpus: usize) -> anyhow::Result<()> {
    // A service: its allocs run to the end, so the agents expose
    // per-alloc series when Prometheus and this test read them.
    let svc = submit(
        client,
        "name: svc\ntype: service\ncount: 2\npolicy: least-loaded\n\
         command: [/bin/sleep, \"600\"]\nresources: {cpu: 10m, memory: 16Mi}\n",
    )
    .await?;
    let both_run = |j: &JobView| j.count(TaskState::Running) == 2;
    until_job(client, &svc, "2 tasks running", both_run).await?;

    let batch = submit(
        client,
        "name: batch\ncount: 3\npolicy: round-robin\ncommand: [/bin/true]\n\
         resources: {cpu: 10m, memory: 16Mi}\n",
    )
    .await?;
    let done = |j: &JobView| j.state == JobState::Complete;
    until_job(client, &batch, "complete", done).await?;

    // Fails, is restarted once (a `restart` reschedule), fails for good.
    let flaky = submit(
        client,
        "name: flaky\ncommand: [/bin/false]\nresources: {cpu: 10m, memory: 16Mi}\n\
         restart: {attempts: 1, delay: 100ms, backoff: 1, max_delay: 100ms}\n",
    )
    .await?;
    until_job(client, &flaky, "failed", |j| j.state == JobState::Failed).await?;

    // A preemption pair: backfill holds every GPU, urgent evicts one of
    // its tasks, which runs again once urgent is done.
    let backfill = submit(
        client,
        &format!(
            "name: backfill\npriority: 10\npolicy: priority\ncount: {gpus}\n\
             command: [/bin/sleep, \"600\"]\nresources: {{cpu: 10m, memory: 16Mi, gpu: 1}}\n"
        ),
    )
    .await?;
    let all_gpus = |j: &JobView| j.count(TaskState::Running) as usize == gpus;
    until_job(client, &backfill, "a task per GPU running", all_gpus).await?;
    let urgent = submit(
        client,
        "name: urgent\npriority: 90\npolicy: priority\ncommand: [/bin/true]\n\
         resources: {cpu: 10m, memory: 16Mi, gpu: 1}\n",
    )
    .await?;
    until_job(client, &urgent, "complete", done).await?;
    until_job(client, &backfill, "a task per GPU running again", all_gpus).await?;

    // Drain a node at once: its allocs move (`drained`); its backfill task
    // waits in the queue for a GPU until the drain ends.
    let node = NodeId::new("dev-2")?;
    client.drain(&node, true, Some(Duration::ZERO)).await?;
    until_job(client, &svc, "2 tasks running after the drain", both_run).await?;
    client.drain(&node, false, None).await?;
    until_job(
        client,
        &backfill,
        "a task per GPU after the drain",
        all_gpus,
    )
    .await?;

    // An error answer for the API dashboard's error panels.
    let reply = client.raw("GET", "/v1/jobs/no-such-job", None).await?;
    ensure!(reply.status == 404, "GET a missing job: {}", reply.status);
    Ok(())
}

fn promtool_check_metrics(who: &str, text: &str, problems: &mut Vec<String>) {
    match prom::promtool(
        &["check", "metrics"],
        &dashboards_dir(),
        Some(text.as_bytes()),
    ) {
        Ok(out) => {
            let said = prom::printed(&out);
            if !out.status.success() || !said.trim().is_empty() {
                problems.push(format!(
                    "promtool check metrics on the {who}'s /metrics ({}): {said}",
                    out.status
                ));
            }
        }
        Err(e) => problems.push(format!("promtool: {e:#}")),
    }
}

/// The families exposed are exactly the catalog's (the agents' or the
/// master's), each with the catalog's type, help text and label names.
fn compare_with_catalog(
    who: &str,
    exposed: &BTreeMap<String, Family>,
    catalog: &[Entry],
    agents: bool,
    problems: &mut Vec<String>,
) {
    let listed: BTreeMap<&str, &Entry> = catalog
        .iter()
        .filter(|e| e.is_agent() == agents)
        .map(|e| (e.name.as_str(), e))
        .collect();
    for (name, family) in exposed {
        let Some(entry) = listed.get(name.as_str()) else {
            problems.push(format!(
                "{who} expose {name}, which METRICS.md does not list"
            ));
            continue;
        };
        if family.kind != entry.kind {
            problems.push(format!(
                "{name}: {who} say {}, METRICS.md says {}",
                family.kind, entry.kind
            ));
        }
        if family.help != entry.help {
            problems.push(format!(
                "{name}: help text differs:\n    exposed:    {}\n    METRICS.md: {}",
                family.help, entry.help
            ));
        }
        if family.label_names() != entry.labels {
            problems.push(format!(
                "{name}: labels {:?} exposed, {:?} in METRICS.md",
                family.label_names(),
                entry.labels
            ));
        }
    }
    for name in listed.keys() {
        if !exposed.contains_key(*name) {
            problems.push(format!(
                "{name} is in METRICS.md but the {who} do not expose it"
            ));
        }
    }
}

/// No job, task, alloc or node id in any master label value (they would
/// make the series unbounded).
fn no_ids_in_master_labels(
    master: &BTreeMap<String, Family>,
    agents: &[(NodeId, String)],
    problems: &mut Vec<String>,
) {
    let ids: Vec<String> = JOBS
        .iter()
        .map(|j| j.to_string())
        .chain(agents.iter().map(|(n, _)| n.to_string()))
        .collect();
    for (name, family) in master {
        for sample in &family.samples {
            for (label, value) in &sample.labels {
                if ids.iter().any(|id| value.contains(id.as_str())) {
                    problems.push(format!("{name}: {label}={value:?} carries an id"));
                }
            }
        }
    }
}

/// What the scenario did, as Prometheus saw it.
async fn counters_moved(prometheus: &Prometheus, at: f64, problems: &mut Vec<String>) {
    for expr in [
        "drover_placements_total{policy=\"least-loaded\"}",
        "drover_placements_total{policy=\"round-robin\"}",
        "drover_placements_total{policy=\"priority\"}",
        "drover_preemptions_total",
        "drover_task_reschedules_total{reason=\"restart\"}",
        "drover_task_reschedules_total{reason=\"preempted\"}",
        "drover_task_reschedules_total{reason=\"drained\"}",
        "drover_http_requests_total{code=\"404\"}",
        "drover_scheduling_latency_seconds_count",
        "drover_tasks{state=\"dead\"}",
        "drover_jobs{state=\"complete\"}",
        "drover_agent_alloc_memory_bytes",
    ] {
        match prometheus.query_at(&format!("sum({expr}) > 0"), at).await {
            Ok(r) if !r.is_empty() => {}
            Ok(_) => problems.push(format!("{expr} is 0 or absent after the scenario")),
            Err(e) => problems.push(format!("{expr}: {e:#}")),
        }
    }
}

/// Each panel query, its variables replaced as Grafana would (`$__rate_interval`,
/// and each query variable by its "All" value once its own query offers
/// values), returns at least one series with a number (not NaN).
async fn every_panel_has_data(
    prometheus: &Prometheus,
    at: f64,
    dashboards: &[dashboards::Dashboard],
    problems: &mut Vec<String>,
) {
    for d in dashboards {
        let mut vars = BTreeMap::from([("__rate_interval".to_string(), RATE_INTERVAL.to_string())]);
        for v in d.variables().into_iter().filter(|v| v["type"] == "query") {
            let name = v["name"].as_str().unwrap_or("").to_string();
            let Some((metric, label)) = dashboards::label_values_query(v) else {
                problems.push(format!("{}: variable {name} is not label_values()", d.file));
                continue;
            };
            match prometheus.label_values(&metric, &label).await {
                Ok(values) if !values.is_empty() => {}
                Ok(_) => problems.push(format!("{}: variable {name} offers no values", d.file)),
                Err(e) => problems.push(format!("{}: variable {name}: {e:#}", d.file)),
            }
            let all = v["allValue"].as_str().unwrap_or(".*").to_string();
            vars.insert(name, all);
        }
        for q in d.queries() {
            let expr = promql::substitute(&q.expr, &vars);
            let left: BTreeSet<String> = promql::variables(&expr);
            if !left.is_empty() {
                problems.push(format!("{q}: variables {left:?} left unsubstituted"));
                continue;
            }
            match prometheus.query_at(&expr, at).await {
                Ok(series) if series.iter().any(|s| !s.value.is_nan()) => {}
                Ok(series) => problems.push(format!("{q}: no data ({series:?})")),
                Err(e) => problems.push(format!("{q}: {e:#}")),
            }
        }
    }
}

/// The shipped alerting rules, loaded by the shipped config: each evaluated
/// without error, and none firing on this healthy cluster.
async fn rules_evaluate_and_none_fires(prometheus: &Prometheus, problems: &mut Vec<String>) {
    let data = match prometheus.api("/api/v1/rules").await {
        Ok(d) => d,
        Err(e) => return problems.push(format!("rules: {e:#}")),
    };
    let mut count = 0;
    for group in data["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            count += 1;
            let name = rule["name"].as_str().unwrap_or("");
            if rule["health"] != "ok" {
                problems.push(format!(
                    "rule {name}: health {} {}",
                    rule["health"], rule["lastError"]
                ));
            }
            if rule["state"] == "firing" {
                problems.push(format!(
                    "alert {name} fires on a healthy cluster: {}",
                    rule["alerts"]
                ));
            }
        }
    }
    if count == 0 {
        problems.push("Prometheus loaded no alerting rules".to_string());
    }
}
