//! The engine end to end: the real master's code on virtual time, checked
//! against a case worked out on paper, and for byte-identical reports.

use std::path::Path;
use std::time::Duration;

use drover_api::PolicyKind;
use drover_simulate::engine::{run, PolicyChoice, Setup};
use drover_simulate::input::{
    load_cluster, load_faults, load_workload, node_ids, parse_cluster, parse_workload, Faults,
};
use drover_simulate::record::RunRecord;
use drover_simulate::report::{self, PolicyReport, Report};

fn sample(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/simulate")
        .join(name)
}

/// Two nodes of one core; three long low-priority tasks at once, then two
/// short high-priority ones while the first two run.
const PAPER_WORKLOAD: &str = r#"
{"submit": 0, "duration": 10, "name": "a", "priority": 10, "resources": {"cpu": "1", "memory": "1Gi"}}
{"submit": 0, "duration": 10, "name": "b", "priority": 10, "resources": {"cpu": "1", "memory": "1Gi"}}
{"submit": 0, "duration": 10, "name": "c", "priority": 10, "resources": {"cpu": "1", "memory": "1Gi"}}
{"submit": 2, "duration": 4, "name": "d", "priority": 90, "resources": {"cpu": "1", "memory": "1Gi"}}
{"submit": 3, "duration": 4, "name": "e", "priority": 90, "resources": {"cpu": "1", "memory": "1Gi"}}
"#;

const PAPER_CLUSTER: &str = "- {name: n, count: 2, cpu: 1, memory: 4Gi}\n";

fn paper_run(policy: PolicyKind) -> (RunRecord, PolicyReport) {
    let workload = parse_workload(PAPER_WORKLOAD).expect("the workload");
    let cluster = parse_cluster(PAPER_CLUSTER).expect("the cluster");
    let faults = Faults::default();
    let setup = Setup {
        workload: &workload,
        cluster: &cluster,
        faults: &faults,
        seed: 1,
        round: Duration::from_secs(1),
    };
    let record = run(setup, PolicyChoice::Every(policy)).expect("a run");
    let summary = report::summarize(&record);
    (record, summary)
}

fn started(r: &RunRecord, job: &str) -> f64 {
    let t = r.tasks.iter().find(|t| t.job == job).expect("the task");
    t.started_s.expect("it started") - t.submitted_s
}

#[test]
fn least_loaded_makes_the_urgent_jobs_wait_for_room_and_priority_preempts_for_them_as_worked_out_on_paper(
) {
    // Least-loaded never preempts: a and b run 0-10 s; d (t=2) and e (t=3)
    // wait for them and run 10-14 s, ahead of c (the queue is by priority);
    // c runs 14-24 s. Waits: a 0, b 0, c 14, d 8, e 7.
    let (ll, sum) = paper_run(PolicyKind::LeastLoaded);
    assert_eq!(sum.makespan_s, Some(24.0), "{sum:?}");
    assert_eq!(
        ["a", "b", "c", "d", "e"].map(|j| started(&ll, j)),
        [0.0, 0.0, 14.0, 8.0, 7.0]
    );
    // Nearest rank over [0, 0, 7, 8, 14]: p50 the 3rd, p99 the 5th.
    assert_eq!(sum.wait_p50_s, Some(7.0));
    assert_eq!(sum.wait_p99_s, Some(14.0));
    assert_eq!(sum.preemptions, 0);

    // Priority evicts a low task for d at 2 s and the other for e at 3 s;
    // they run 2-6 and 3-7. The evicted two start over (10 s each), a at 6
    // and b at 7 (first submitted, first again), and c at 16, ending at 26.
    // Waits (to the first start): a 0, b 0, c 16, d 0, e 0.
    let (pr, sum) = paper_run(PolicyKind::Priority);
    assert_eq!(sum.makespan_s, Some(26.0), "{sum:?}");
    assert_eq!(
        ["a", "b", "c", "d", "e"].map(|j| started(&pr, j)),
        [0.0, 0.0, 16.0, 0.0, 0.0]
    );
    assert_eq!(sum.preemptions, 2);
    let high = sum
        .bands
        .iter()
        .find(|b| b.band.name() == "high")
        .expect("a high band");
    assert_eq!((high.wait_p50_s, high.wait_p99_s), (Some(0.0), Some(0.0)));
    assert_eq!(sum.never_ran.count, 0);
}

fn sample_report(seed: u64) -> (String, String, String) {
    let workload = load_workload(&sample("workload.jsonl")).expect("the sample workload");
    let cluster = load_cluster(&sample("cluster.yaml")).expect("the sample cluster");
    let faults = load_faults(&sample("faults.yaml"), &node_ids(&cluster), seed).expect("faults");
    let setup = Setup {
        workload: &workload,
        cluster: &cluster,
        faults: &faults,
        seed,
        round: Duration::from_secs(1),
    };
    let runs: Vec<RunRecord> = [
        PolicyKind::RoundRobin,
        PolicyKind::LeastLoaded,
        PolicyKind::Priority,
        PolicyKind::ElasticSharding,
    ]
    .into_iter()
    .map(|p| run(setup, PolicyChoice::Every(p)).expect("a run"))
    .collect();
    let report = Report {
        seed,
        workload: "sample".to_string(),
        policies: runs.iter().map(report::summarize).collect(),
    };
    let svg = drover_simulate::plot::svg(&runs).expect("the plot");
    (report::table(&report), report::json(&report), svg)
}

#[test]
fn the_same_inputs_and_seed_give_byte_identical_reports_and_plots_with_a_curve_per_policy() {
    let first = sample_report(7);
    let again = sample_report(7);
    assert!(first.0 == again.0, "the tables differ");
    assert!(first.1 == again.1, "the JSON differs");
    assert!(first.2 == again.2, "the plots differ");
    // The sample queues, so the policies differ; and faults move tasks.
    let json: serde_json::Value = serde_json::from_str(&first.1).expect("JSON");
    let policies = json["policies"].as_array().expect("policies");
    assert_eq!(policies.len(), 4);
    let makespans: std::collections::BTreeSet<String> = policies
        .iter()
        .map(|p| p["makespan_s"].to_string())
        .collect();
    assert!(makespans.len() > 1, "every policy gave the same makespan");
    assert!(policies.iter().all(|p| p["rescheduled"].as_u64() > Some(0)));
    let svg = &first.2;
    for name in [
        "round-robin",
        "least-loaded",
        "priority",
        "elastic-sharding",
    ] {
        assert!(svg.contains(name), "the legend lacks {name}");
    }
    // One curve per policy in each of the four panels (queue, cpu, memory,
    // GPUs), each with many vertices.
    let curves: Vec<&str> = svg
        .split("<polyline")
        .skip(1)
        .filter(|c| {
            c.split("points=\"")
                .nth(1)
                .is_some_and(|p| p.split(' ').count() > 20)
        })
        .collect();
    assert!(curves.len() >= 16, "{} curves", curves.len());
}
