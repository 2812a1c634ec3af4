//! The sample inputs in config/simulate/ read, and say what their comments
//! say they do.

use std::path::PathBuf;

use drover_api::PolicyKind;
use drover_simulate::input::{
    load_cluster, load_faults, load_workload, node_ids, parse_workload, to_jsonl,
};

fn sample(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../config/simulate")
        .join(name)
}

#[test]
fn the_sample_workload_reads_and_has_the_promised_mix() {
    let jobs = load_workload(&sample("workload.jsonl")).unwrap();
    assert_eq!(jobs.len(), 40);
    let last = jobs.last().unwrap().submit_s;
    assert!(
        (500.0..=720.0).contains(&last),
        "arrivals over ~10 minutes: {last}"
    );
    assert!(jobs
        .iter()
        .any(|j| j.spec.priority >= 90 && j.spec.policy == Some(PolicyKind::Priority)));
    assert_eq!(jobs.iter().filter(|j| j.spec.elastic.is_some()).count(), 1);
    assert!(jobs.iter().filter(|j| j.spec.resources.gpu > 0).count() >= 3);
    let kinds: std::collections::HashSet<_> = jobs
        .iter()
        .map(|j| std::mem::discriminant(&j.duration))
        .collect();
    assert_eq!(kinds.len(), 5, "every kind of duration");
    // And survives a round trip through the importers' output format.
    assert_eq!(parse_workload(&to_jsonl(&jobs)).unwrap(), jobs);
}

#[test]
fn the_sample_cluster_and_faults_read() {
    let classes = load_cluster(&sample("cluster.yaml")).unwrap();
    let names: Vec<&str> = classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["cpu", "gpu", "small"]);
    let nodes = node_ids(&classes);
    assert_eq!(nodes.len(), 14);
    let cores: u64 = classes
        .iter()
        .map(|c| c.cpu_millis * u64::from(c.count))
        .sum();
    assert_eq!(cores, 208_000);
    let gpus: u32 = classes.iter().map(|c| c.gpus * c.count).sum();
    assert_eq!(gpus, 8);

    let faults = load_faults(&sample("faults.yaml"), &nodes, 1).unwrap();
    let events: Vec<(&str, f64, Option<f64>)> = faults
        .events
        .iter()
        .map(|e| (e.node.as_str(), e.at_s, e.recover_after_s))
        .collect();
    assert_eq!(
        events,
        [("gpu-0", 240.0, Some(300.0)), ("cpu-3", 420.0, Some(600.0))]
    );
}

#[test]
fn the_sample_workload_asks_for_more_than_the_cluster_has() {
    // Queueing is what makes the policies differ: the first five minutes'
    // arrivals alone ask for more cores than the cluster's 208.
    let jobs = load_workload(&sample("workload.jsonl")).unwrap();
    let early: u64 = jobs
        .iter()
        .filter(|j| j.submit_s < 300.0)
        .map(|j| j.spec.resources.cpu.millis() * u64::from(j.spec.task_count()))
        .sum();
    assert!(early > 208_000, "{early}");
}
