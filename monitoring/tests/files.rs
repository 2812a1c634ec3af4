//! The monitoring files on their own, no cluster: the catalog's shape, the
//! dashboards' schema and queries, the provisioning files, and `promtool`
//! on the scrape config, the alerting rules and the rules' unit tests.

use std::collections::{BTreeMap, BTreeSet};

use drover_monitoring::{catalog, dashboards, dashboards_dir, prom, promql};
use serde_json::Value;

/// DESIGN §9's list: the catalog may add to it, never leave one out.
const DESIGN_METRICS: [&str; 20] = [
    "drover_nodes",
    "drover_jobs",
    "drover_tasks",
    "drover_cluster_capacity",
    "drover_cluster_allocated",
    "drover_queue_depth",
    "drover_scheduling_latency_seconds",
    "drover_schedule_pass_duration_seconds",
    "drover_placements_total",
    "drover_preemptions_total",
    "drover_task_reschedules_total",
    "drover_node_failures_total",
    "drover_http_requests_total",
    "drover_http_request_duration_seconds",
    "drover_store_op_duration_seconds",
    "drover_is_leader",
    "drover_agent_allocs",
    "drover_agent_alloc_cpu_seconds_total",
    "drover_agent_alloc_memory_bytes",
    "drover_agent_gpu_utilization",
];

/// Labels whose values a master keeps bounded (states, resources, policy
/// names, reasons, route patterns, status codes, store operations).
const MASTER_LABELS: [&str; 7] = [
    "state", "resource", "policy", "reason", "route", "code", "op",
];

/// Grafana's own variables a query may use.
const GRAFANA_VARIABLES: [&str; 3] = ["__rate_interval", "__interval", "__range"];

fn check(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

fn yaml(path: &str) -> serde_yaml::Value {
    let path = dashboards_dir().join(path);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn alert_rules() -> Vec<(String, String)> {
    let rules = yaml("prometheus/alerts.yml");
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().into_iter().flatten() {
        for rule in group["rules"].as_sequence().into_iter().flatten() {
            out.push((
                rule["alert"].as_str().unwrap_or("").to_string(),
                rule["expr"].as_str().unwrap_or("").to_string(),
            ));
        }
    }
    out
}

#[test]
fn the_catalog_lists_each_metric_once_with_its_unit_and_kind_in_its_name() {
    let entries = catalog::load().unwrap();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for e in &entries {
        let n = &e.name;
        if !seen.insert(n.clone()) {
            problems.push(format!("{n}: listed twice"));
        }
        if !matches!(e.kind.as_str(), "counter" | "gauge" | "histogram") {
            problems.push(format!(
                "{n}: type {:?} is not counter, gauge or histogram",
                e.kind
            ));
        }
        if (e.kind == "counter") != n.ends_with("_total") {
            problems.push(format!("{n}: `_total` is for counters and only for them"));
        }
        let base = n.strip_suffix("_total").unwrap_or(n);
        for unit in ["seconds", "bytes", "cores"] {
            if base.ends_with(&format!("_{unit}")) && e.unit != unit {
                problems.push(format!("{n}: unit column {:?}, name says {unit}", e.unit));
            }
        }
        if e.kind == "histogram" && !n.ends_with("_seconds") {
            problems.push(format!("{n}: a histogram without its unit in the name"));
        }
        if e.help.is_empty() || e.unit.is_empty() {
            problems.push(format!("{n}: help and unit may not be empty"));
        }
        if !e.is_agent() {
            for label in &e.labels {
                if !MASTER_LABELS.contains(&label.as_str()) {
                    problems.push(format!(
                        "{n}: label `{label}` on the master is not one of the bounded {MASTER_LABELS:?}"
                    ));
                }
            }
        }
    }
    for name in DESIGN_METRICS {
        if !seen.contains(name) {
            problems.push(format!("{name}: in DESIGN §9 but not in the catalog"));
        }
    }
    check(problems);
}

#[test]
fn every_dashboard_is_grafana_schema_39_and_takes_its_datasource_from_a_variable() {
    let all = dashboards::load_all().unwrap();
    let files: BTreeSet<&str> = all.iter().map(|d| d.file.as_str()).collect();
    assert_eq!(
        files,
        BTreeSet::from([
            "api.json",
            "cluster-overview.json",
            "nodes.json",
            "scheduler.json"
        ])
    );
    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    for d in &all {
        let f = &d.file;
        let j = &d.json;
        if j["schemaVersion"].as_u64().unwrap_or(0) < 39 {
            problems.push(format!("{f}: schemaVersion {} < 39", j["schemaVersion"]));
        }
        let uid = j["uid"].as_str().unwrap_or("");
        if uid.is_empty() || !uids.insert(uid.to_string()) {
            problems.push(format!("{f}: uid {uid:?} missing or not unique"));
        }
        if !j["title"].as_str().unwrap_or("").starts_with("Drover / ") {
            problems.push(format!(
                "{f}: title {} does not start with \"Drover / \"",
                j["title"]
            ));
        }
        if !j["id"].is_null() {
            problems.push(format!("{f}: id must be null (Grafana assigns it)"));
        }
        let vars = d.variables();
        let defined: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        if !vars.iter().any(|v| {
            v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"
        }) {
            problems.push(format!(
                "{f}: no `datasource` variable of type datasource (prometheus)"
            ));
        }
        for v in vars.iter().filter(|v| v["type"] == "query") {
            if dashboards::label_values_query(v).is_none() {
                problems.push(format!(
                    "{f}: variable {} is not a label_values() query",
                    v["name"]
                ));
            }
        }
        datasources(j, f, &mut problems);

        let mut ids = BTreeSet::new();
        for p in d.panels() {
            let title = p["title"].as_str().unwrap_or("");
            if title.is_empty() || p["description"].as_str().unwrap_or("").is_empty() {
                problems.push(format!(
                    "{f}: panel {} needs a title and a description",
                    p["id"]
                ));
            }
            if !ids.insert(p["id"].as_u64().unwrap_or(0)) {
                problems.push(format!("{f}: panel id {} missing or not unique", p["id"]));
            }
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_u64(), g["w"].as_u64());
            if g["h"].as_u64().is_none()
                || g["y"].as_u64().is_none()
                || x.zip(w).is_none_or(|(x, w)| x + w > 24)
            {
                problems.push(format!(
                    "{f}: {title:?}: gridPos {g} is not within 24 columns"
                ));
            }
            let targets = p["targets"].as_array().cloned().unwrap_or_default();
            let refs: BTreeSet<&str> = targets.iter().filter_map(|t| t["refId"].as_str()).collect();
            if targets.is_empty() || refs.len() != targets.len() {
                problems.push(format!(
                    "{f}: {title:?}: needs targets with distinct refIds"
                ));
            }
        }
        for q in d.queries() {
            if q.expr.trim().is_empty() {
                problems.push(format!("{q}: empty query"));
            }
            for v in promql::variables(&q.expr) {
                if !defined.contains(v.as_str()) && !GRAFANA_VARIABLES.contains(&v.as_str()) {
                    problems.push(format!("{q}: uses ${v}, which is not defined"));
                }
            }
            // Ranges follow the scrape interval through $__rate_interval;
            // a fixed `[5m]` breaks with another scrape interval.
            for range in promql::ranges(&q.expr) {
                if range != "$__rate_interval" {
                    problems.push(format!("{q}: range [{range}], use [$__rate_interval]"));
                }
            }
        }
    }
    check(problems);
}

/// Every `datasource` object in a dashboard: the variable, or Grafana's own
/// (the built-in annotations); never a data source's fixed uid.
fn datasources(v: &Value, file: &str, problems: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(ds) = map.get("datasource") {
                let ok = match ds {
                    Value::Object(_) => {
                        (ds["type"] == "prometheus" && ds["uid"] == "${datasource}")
                            || (ds["type"] == "grafana" && ds["uid"] == "-- Grafana --")
                    }
                    _ => false,
                };
                if !ok {
                    problems.push(format!(
                        "{file}: datasource {ds} is not {{\"type\": \"prometheus\", \"uid\": \"${{datasource}}\"}}"
                    ));
                }
            }
            map.values().for_each(|c| datasources(c, file, problems));
        }
        Value::Array(items) => items.iter().for_each(|c| datasources(c, file, problems)),
        _ => {}
    }
}

#[test]
fn every_metric_a_panel_variable_or_alert_uses_is_in_the_catalog() {
    let entries = catalog::load().unwrap();
    let kinds: BTreeMap<&str, &str> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind.as_str()))
        .collect();
    let histograms: BTreeSet<&str> = kinds
        .iter()
        .filter(|(_, k)| **k == "histogram")
        .map(|(n, _)| *n)
        .collect();
    let mut uses: Vec<(String, String)> = Vec::new();
    for d in dashboards::load_all().unwrap() {
        for q in d.queries() {
            uses.push((q.to_string(), q.expr.clone()));
        }
        for v in d.variables() {
            if let Some((metric, _)) = dashboards::label_values_query(v) {
                uses.push((format!("{} / variable {}", d.file, v["name"]), metric));
            }
        }
    }
    for (alert, expr) in alert_rules() {
        uses.push((format!("alerts.yml / {alert}"), expr));
    }
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in &uses {
        for name in promql::drover_metrics(expr) {
            let family = promql::family_of(&name, &histograms);
            used.insert(family.to_string());
            if !kinds.contains_key(family) {
                problems.push(format!("{place}: {name} is not in METRICS.md"));
            } else if histograms.contains(name.as_str()) {
                problems.push(format!(
                    "{place}: {name} is a histogram: query its _bucket, _sum or _count"
                ));
            }
        }
    }
    assert!(used.len() > 20, "the dashboards use only {used:?}");
    check(problems);
}

#[test]
fn promtool_accepts_the_scrape_config_and_the_alerting_rules() {
    let dir = dashboards_dir().join("prometheus");
    // check config also checks the rule files it names.
    for args in [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "alerts.yml"],
    ] {
        let out = prom::promtool(&args, &dir, None).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(
            out.status.success(),
            "promtool {}: {}",
            args.join(" "),
            prom::printed(&out)
        );
    }
}

#[test]
fn each_alert_fires_in_its_unit_test_and_the_unit_tests_pass() {
    let dir = dashboards_dir().join("prometheus");
    let out = prom::promtool(&["test", "rules", "alerts_test.yml"], &dir, None)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        out.status.success(),
        "promtool test rules: {}",
        prom::printed(&out)
    );

    let tests = yaml("prometheus/alerts_test.yml");
    let mut fired = BTreeSet::new();
    for t in tests["tests"].as_sequence().into_iter().flatten() {
        for case in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            if case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty())
            {
                fired.insert(case["alertname"].as_str().unwrap_or("").to_string());
            }
        }
    }
    let alerts: BTreeSet<String> = alert_rules().into_iter().map(|(a, _)| a).collect();
    for required in [
        "DroverNodeDown",
        "DroverQueueGrowing",
        "DroverNoLeader",
        "DroverSchedulingLatencyHigh",
    ] {
        assert!(alerts.contains(required), "alerts.yml lacks {required}");
    }
    let untested: Vec<&String> = alerts.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "no unit test sees these fire: {untested:?}"
    );
}

#[test]
fn the_scrape_config_names_the_jobs_the_alerts_select() {
    let config = yaml("prometheus/prometheus.yml");
    let jobs: BTreeSet<&str> = config["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s["job_name"].as_str())
        .collect();
    assert_eq!(jobs, BTreeSet::from(["drover-master", "drover-agent"]));
    assert_eq!(config["rule_files"][0].as_str(), Some("alerts.yml"));
    for (alert, expr) in alert_rules() {
        for job in expr
            .split("job=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
        {
            assert!(
                jobs.contains(job),
                "{alert} selects job {job:?}, which is not scraped"
            );
        }
    }
}

#[test]
fn grafana_provisioning_adds_a_prometheus_datasource_and_a_drover_folder() {
    let ds = yaml("grafana/provisioning/datasources/drover.yaml");
    assert_eq!(ds["apiVersion"].as_u64(), Some(1));
    let sources = ds["datasources"]
        .as_sequence()
        .expect("datasources: a list");
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0]["type"].as_str(), Some("prometheus"));
    assert!(sources[0]["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("http")));

    let dash = yaml("grafana/provisioning/dashboards/drover.yaml");
    assert_eq!(dash["apiVersion"].as_u64(), Some(1));
    let providers = dash["providers"].as_sequence().expect("providers: a list");
    assert_eq!(providers.len(), 1);
    assert_eq!(providers[0]["type"].as_str(), Some("file"));
    assert_eq!(providers[0]["folder"].as_str(), Some("Drover"));
    assert!(providers[0]["options"]["path"]
        .as_str()
        .is_some_and(|p| p.starts_with('/')));
}
