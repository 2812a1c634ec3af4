use super::*;
use drover_api::PolicyKind;

fn only_problem(err: &SimError) -> &Problem {
    assert_eq!(err.problems().len(), 1, "{err}");
    &err.problems()[0]
}

// ---------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------

#[test]
fn a_workload_reads_with_its_spec_fields_and_defaults() {
    let text = r#"
# a comment, then a blank line

{"submit": "1m 30s", "duration": "5m", "name": "b", "count": 3, "resources": {"cpu": "500m", "memory": "256Mi"}}
{"submit": 12.5, "duration": {"pareto": {"min": "10s", "alpha": 1.5}}, "name": "a", "priority": 90, "policy": "priority", "resources": {"gpu": 1}}
{"duration": 30, "name": "s", "shards": 8, "elastic": {"min": 2, "max": 4}}
"#;
    let jobs = parse_workload(text).unwrap();
    let names: Vec<&str> = jobs.iter().map(|j| j.spec.name.as_str()).collect();
    assert_eq!(names, ["s", "a", "b"], "sorted by submit time");
    assert_eq!(jobs[0].submit_s, 0.0);
    assert_eq!(jobs[0].duration, Duration::Fixed(30.0));
    assert_eq!(jobs[0].spec.task_count(), 8);
    assert_eq!(jobs[0].spec.elastic.map(|e| (e.min, e.max)), Some((2, 4)));
    assert_eq!(jobs[1].submit_s, 12.5);
    assert_eq!(
        jobs[1].duration,
        Duration::Pareto {
            min_s: 10.0,
            alpha: 1.5
        }
    );
    assert_eq!(jobs[1].spec.policy, Some(PolicyKind::Priority));
    assert_eq!(jobs[1].spec.resources.gpu, 1);
    assert_eq!(jobs[2].submit_s, 90.0);
    assert_eq!(jobs[2].duration, Duration::Fixed(300.0));
    assert_eq!(jobs[2].spec.count, 3);
    assert_eq!(jobs[2].spec.resources.cpu.millis(), 500);
    assert_eq!(jobs[2].spec.resources.memory.bytes(), 256 << 20);
    assert_eq!(jobs[2].spec.command, ["/bin/true"]);
}

#[test]
fn every_distribution_reads() {
    let cases = [
        (
            r#"{"exponential": {"mean": "2m"}}"#,
            Duration::Exponential { mean_s: 120.0 },
        ),
        (
            r#"{"uniform": {"min": "1m", "max": 180}}"#,
            Duration::Uniform {
                min_s: 60.0,
                max_s: 180.0,
            },
        ),
        (
            r#"{"lognormal": {"median": "1m", "sigma": 1.0}}"#,
            Duration::LogNormal {
                median_s: 60.0,
                sigma: 1.0,
            },
        ),
        (r#"{"fixed": "500ms"}"#, Duration::Fixed(0.5)),
        ("2.5", Duration::Fixed(2.5)),
    ];
    for (json, want) in cases {
        let line = format!(r#"{{"duration": {json}, "name": "x"}}"#);
        let jobs = parse_workload(&line).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(jobs[0].duration, want, "{json}");
    }
}

#[test]
fn spec_errors_name_the_line_and_the_field() {
    let text = "{\"duration\": 1, \"name\": \"ok\"}\n\n{\"duration\": 1, \"name\": \"bad\", \"resources\": {\"cpu\": \"lots\"}}\n";
    let err = parse_workload(text).unwrap_err();
    assert_eq!(err.line(), Some(3));
    let p = only_problem(&err);
    assert_eq!(p.field, "resources.cpu");
    assert!(p.message.contains("\"lots\""), "{}", p.message);
    assert!(
        err.to_string().starts_with("line 3: resources.cpu: "),
        "{err}"
    );
}

#[test]
fn duration_and_submit_errors_name_their_fields_with_the_spec_errors() {
    let text = r#"{"submit": -3, "duration": {"pareto": {"min": "10s", "alpha": "big"}}, "name": "Bad Name"}"#;
    let err = parse_workload(text).unwrap_err();
    assert_eq!(err.line(), Some(1));
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["submit", "duration.pareto.alpha", "name"]);

    let err = parse_workload(r#"{"name": "x"}"#).unwrap_err();
    assert_eq!(only_problem(&err).field, "duration");
    assert!(only_problem(&err).message.starts_with("required"));

    let err = parse_workload(r#"{"name": "x", "duration": {"weibull": {"k": 1}}}"#).unwrap_err();
    assert_eq!(only_problem(&err).field, "duration.weibull");

    let err =
        parse_workload(r#"{"name": "x", "duration": {"uniform": {"min": "3m", "max": "1m"}}}"#)
            .unwrap_err();
    assert_eq!(only_problem(&err).field, "duration.uniform.max");

    let err = parse_workload(r#"{"name": "x", "duration": "5 parsecs"}"#).unwrap_err();
    assert_eq!(only_problem(&err).field, "duration");

    let err = parse_workload(r#"{"name": "x", "duration": 1, "colour": "red"}"#).unwrap_err();
    assert_eq!(only_problem(&err).field, "colour");
}

#[test]
fn syntax_errors_duplicates_and_non_objects_are_refused_with_their_line() {
    let err = parse_workload("{\"duration\": 1, \"name\": \"a\"}\n{\"duration\": 1,").unwrap_err();
    assert_eq!(err.line(), Some(2));
    assert!(only_problem(&err).message.starts_with("not valid JSON"));

    let err = parse_workload(r#"{"duration": 1, "name": "a", "name": "b"}"#).unwrap_err();
    assert!(
        only_problem(&err).message.contains("duplicate key"),
        "{err}"
    );

    let err = parse_workload("[1, 2]").unwrap_err();
    assert!(only_problem(&err).message.contains("JSON object"), "{err}");

    let err =
        parse_workload("{\"duration\": 1, \"name\": \"a\"}\n{\"duration\": 2, \"name\": \"a\"}")
            .unwrap_err();
    assert_eq!(err.line(), Some(2));
    assert_eq!(only_problem(&err).field, "name");
    assert!(only_problem(&err).message.contains("line 1"));
}

#[test]
fn load_names_the_file() {
    let dir = std::env::temp_dir().join(format!("drover-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.jsonl");
    std::fs::write(&path, "{\"duration\": 1, \"name\": \"a\", \"count\": 0}\n").unwrap();
    let err = load_workload(&path).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:1: count: ", path.display())),
        "{text}"
    );
    let missing = load_workload(&dir.join("nope.jsonl")).unwrap_err();
    assert!(matches!(missing, SimError::Io { .. }));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn to_jsonl_round_trips() {
    let text = r#"{"submit": 0.1, "duration": {"lognormal": {"median": 61.5, "sigma": 0.7}}, "name": "a", "type": "service", "count": 2, "env": {"A": "1"}, "constraints": {"labels": {"zone": "b"}}, "restart": {"attempts": 0}, "kill_timeout": "5s", "command": ["/bin/sleep", "1"]}
{"submit": "1h", "duration": {"uniform": {"min": 1, "max": 2}}, "name": "b", "shards": 6, "elastic": {"min": 1, "max": 3}, "policy": "elastic-sharding"}
{"submit": 7, "duration": {"exponential": {"mean": 0.333}}, "name": "c", "priority": 0, "resources": {"gpu": 2, "memory": "1.5Gi"}, "constraints": {"gpu_model": "H100"}}
{"submit": 7, "duration": {"pareto": {"min": 3, "alpha": 1.1}}, "name": "d"}
"#;
    let jobs = parse_workload(text).unwrap();
    let out = to_jsonl(&jobs);
    assert_eq!(out.lines().count(), 4);
    let back = parse_workload(&out).unwrap();
    assert_eq!(back, jobs);
    assert_eq!(to_jsonl(&back), out);
    // Defaults are left out; what is not default is kept.
    let d = out.lines().find(|l| l.contains(r#""name":"d""#)).unwrap();
    assert_eq!(
        d,
        r#"{"submit":7.0,"duration":{"pareto":{"min":3.0,"alpha":1.1}},"name":"d","priority":50,"count":1,"resources":{"cpu":"100m","memory":"64Mi","gpu":0}}"#
    );
    assert!(out.lines().next().unwrap().contains(r#""restart":"#));
}

// ---------------------------------------------------------------------------
// Duration::sample
// ---------------------------------------------------------------------------

#[test]
fn samples_are_a_pure_function_of_seed_job_and_index() {
    let d = Duration::Exponential { mean_s: 60.0 };
    let a = d.sample(1, "job", 3);
    assert_eq!(a, d.sample(1, "job", 3));
    assert_ne!(a, d.sample(2, "job", 3));
    assert_ne!(a, d.sample(1, "job", 4));
    assert_ne!(a, d.sample(1, "other", 3));
    // Pinned: a change to the generator or the keying changes every
    // simulation's results and must be deliberate.
    assert_eq!(
        Duration::Uniform {
            min_s: 0.0,
            max_s: 1.0
        }
        .sample(0, "a", 0)
        .to_bits(),
        {
            let mut r = SplitMix64::keyed(0, &[b"duration", b"a", &0u32.to_le_bytes()]);
            r.next_f64().to_bits()
        }
    );
}

#[test]
fn samples_stay_in_bounds_and_follow_their_distribution() {
    let n = 20_000u32;
    let draw = |d: Duration| -> Vec<f64> { (0..n).map(|i| d.sample(9, "j", i)).collect() };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;

    assert!(draw(Duration::Fixed(0.0))
        .iter()
        .all(|&x| x == MIN_SAMPLE_S));
    assert!(draw(Duration::Fixed(42.0)).iter().all(|&x| x == 42.0));

    let u = draw(Duration::Uniform {
        min_s: 60.0,
        max_s: 180.0,
    });
    assert!(u.iter().all(|&x| (60.0..180.0).contains(&x)));
    assert!((mean(&u) - 120.0).abs() < 2.0);

    let e = draw(Duration::Exponential { mean_s: 10.0 });
    assert!(e.iter().all(|&x| x >= MIN_SAMPLE_S));
    assert!((mean(&e) - 10.0).abs() < 0.4, "{}", mean(&e));

    let mut l = draw(Duration::LogNormal {
        median_s: 60.0,
        sigma: 1.0,
    });
    l.sort_by(f64::total_cmp);
    let median = l[l.len() / 2];
    assert!((median - 60.0).abs() < 3.0, "{median}");

    let p = draw(Duration::Pareto {
        min_s: 30.0,
        alpha: 1.6,
    });
    assert!(p.iter().all(|&x| (30.0..=MAX_SAMPLE_S).contains(&x)));
    // P(X > 2 min) = 2^-alpha.
    let share = p.iter().filter(|&&x| x > 60.0).count() as f64 / f64::from(n);
    assert!((share - 2f64.powf(-1.6)).abs() < 0.015, "{share}");

    assert_eq!(
        Duration::Pareto {
            min_s: 1.0,
            alpha: 1e-300
        }
        .sample(0, "j", 0),
        MAX_SAMPLE_S
    );
    assert_eq!(Duration::Fixed(f64::NAN).sample(0, "j", 0), MIN_SAMPLE_S);
}

#[test]
fn means_are_known_where_finite() {
    assert_eq!(Duration::Fixed(3.0).mean_s(), Some(3.0));
    assert_eq!(
        Duration::Pareto {
            min_s: 30.0,
            alpha: 1.5
        }
        .mean_s(),
        Some(90.0)
    );
    assert_eq!(
        Duration::Pareto {
            min_s: 30.0,
            alpha: 1.0
        }
        .mean_s(),
        None
    );
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

const CLUSTER: &str = "\
- name: cpu
  count: 2
  cpu: 16
  memory: 64Gi
  labels: {zone: a, rack: 3}
- name: gpu
  cpu: 32000m
  memory: 256Gi
  gpus: 4
  gpu_model: H100
- name: edge
  count: 1
  cpu: 0.5
  memory: 512Mi
  gpus: 1
";

#[test]
fn a_cluster_reads_and_names_its_nodes() {
    let classes = parse_cluster(CLUSTER).unwrap();
    assert_eq!(classes.len(), 3);
    assert_eq!(classes[0].count, 2);
    assert_eq!(classes[0].cpu_millis, 16_000);
    assert_eq!(classes[0].memory_bytes, 64 << 30);
    assert_eq!(classes[0].gpus, 0);
    assert_eq!(classes[0].gpu_model, "");
    assert_eq!(classes[0].labels["rack"], "3");
    assert_eq!(classes[1].count, 1, "count defaults to 1");
    assert_eq!(classes[1].cpu_millis, 32_000);
    assert_eq!(classes[1].gpu_model, "H100");
    assert_eq!(classes[2].cpu_millis, 500);
    assert_eq!(classes[2].gpu_model, "GPU", "a default model for GPU nodes");
    let ids = node_ids(&classes);
    let want = [("cpu-0", 0), ("cpu-1", 0), ("gpu-0", 1), ("edge-0", 2)];
    let got: Vec<(&str, usize)> = ids.iter().map(|(id, c)| (id.as_str(), *c)).collect();
    assert_eq!(got, want);
    for (id, _) in &ids {
        assert!(drover_api::NodeId::new(id.clone()).is_ok(), "{id}");
    }
}

#[test]
fn cluster_errors_name_the_line_and_the_field() {
    let bad_memory = CLUSTER.replace("memory: 256Gi", "memory: 256Gb");
    let err = parse_cluster(&bad_memory).unwrap_err();
    assert_eq!(err.line(), Some(8), "{err}");
    let p = only_problem(&err);
    assert_eq!(p.field, "[1].memory");
    assert!(
        p.message.starts_with("\"256Gb\""),
        "no path repeated: {}",
        p.message
    );
    assert!(
        p.message.contains("\"256Gb\" is not a size"),
        "{}",
        p.message
    );
    assert!(!p.message.contains("column"), "{}", p.message);

    let zero = CLUSTER.replace("cpu: 0.5", "cpu: 0");
    let err = parse_cluster(&zero).unwrap_err();
    assert_eq!(err.line(), Some(13), "{err}");
    assert_eq!(only_problem(&err).field, "[2].cpu");

    let typo = CLUSTER.replace("gpus: 4", "gpu: 4");
    let err = parse_cluster(&typo).unwrap_err();
    assert_eq!(err.line(), Some(9), "{err}");
    assert!(
        only_problem(&err).message.contains("unknown field `gpu`"),
        "{err}"
    );

    let name = CLUSTER.replace("name: edge", "name: edge node");
    let err = parse_cluster(&name).unwrap_err();
    assert_eq!(err.line(), Some(11), "{err}");
    assert_eq!(only_problem(&err).field, "[2].name");

    let dup = CLUSTER.replace("name: edge", "name: cpu");
    let err = parse_cluster(&dup).unwrap_err();
    assert_eq!(only_problem(&err).field, "[2].name");
    assert!(
        err.to_string().contains("also the name of class [0]"),
        "{err}"
    );

    let missing = CLUSTER.replace("  memory: 512Mi\n", "");
    let err = parse_cluster(&missing).unwrap_err();
    assert!(
        only_problem(&err)
            .message
            .contains("missing field `memory`"),
        "{err}"
    );

    assert!(parse_cluster("# nothing\n").is_err());
    assert!(parse_cluster("- {name: a, count: 0, cpu: 1, memory: 1Gi}").is_err());
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

fn nodes() -> Vec<(String, usize)> {
    node_ids(&parse_cluster(CLUSTER).unwrap())
}

#[test]
fn given_failures_read_in_time_order() {
    let text = "\
at:
  - {node: gpu-0, at: 10m, recover_after: 5m}
  - node: cpu-1
    at: 30
";
    let f = parse_faults(text, &nodes(), 0).unwrap();
    assert_eq!(
        f.events,
        [
            FaultEvent {
                node: "cpu-1".into(),
                at_s: 30.0,
                recover_after_s: None
            },
            FaultEvent {
                node: "gpu-0".into(),
                at_s: 600.0,
                recover_after_s: Some(300.0)
            },
        ]
    );
    assert_eq!(
        parse_faults("# none\n", &nodes(), 0).unwrap(),
        Faults::default()
    );
}

#[test]
fn fault_errors_name_the_line_and_the_field() {
    let text = "at:\n  - {node: gpu-0, at: 10m}\n  - {node: gpu-7, at: 10m}\n";
    let err = parse_faults(text, &nodes(), 0).unwrap_err();
    assert_eq!(err.line(), Some(3), "{err}");
    let p = only_problem(&err);
    assert_eq!(p.field, "at[1].node");
    assert!(
        p.message.contains("cpu-0..cpu-1, gpu-0, edge-0"),
        "{}",
        p.message
    );

    let err = parse_faults("at:\n  - {node: gpu-0, at: soon}\n", &nodes(), 0).unwrap_err();
    assert_eq!(err.line(), Some(2));
    assert_eq!(only_problem(&err).field, "at[0].at");

    let err = parse_faults("rate:\n  per_node_per_hour: 1\n", &nodes(), 0).unwrap_err();
    assert!(
        only_problem(&err).message.contains("missing field `until`"),
        "{err}"
    );

    let err = parse_faults(
        "rate: {per_node_per_hour: 1, until: 1h, classes: [tpu]}\n",
        &nodes(),
        0,
    )
    .unwrap_err();
    assert_eq!(only_problem(&err).field, "rate.classes[0]");

    let err = parse_faults("rate: {per_node_per_hour: -1, until: 1h}\n", &nodes(), 0).unwrap_err();
    assert_eq!(only_problem(&err).field, "rate.per_node_per_hour");
}

#[test]
fn rate_failures_expand_deterministically_from_the_seed() {
    let text = "rate: {per_node_per_hour: 2, recover_after: 10m, until: 10h}\n";
    let a = parse_faults(text, &nodes(), 5).unwrap();
    assert_eq!(a, parse_faults(text, &nodes(), 5).unwrap());
    assert_ne!(a, parse_faults(text, &nodes(), 6).unwrap());
    assert!(!a.events.is_empty());
    assert!(a
        .events
        .windows(2)
        .all(|w| (w[0].at_s, &w[0].node) <= (w[1].at_s, &w[1].node)));
    for node in ["cpu-0", "cpu-1", "gpu-0", "edge-0"] {
        let times: Vec<f64> = a
            .events
            .iter()
            .filter(|e| e.node == node)
            .map(|e| e.at_s)
            .collect();
        // About 2 per hour of up time over 10 h, each costing 10 min down.
        assert!((5..=35).contains(&times.len()), "{node}: {}", times.len());
        assert!(times.iter().all(|&t| t < 36_000.0));
        assert!(
            times.windows(2).all(|w| w[1] - w[0] >= 600.0),
            "no failure while down"
        );
    }
    assert!(a.events.iter().all(|e| e.recover_after_s == Some(600.0)));

    // A node's failures depend on its own id, not on the others.
    let fewer = node_ids(&parse_cluster(&CLUSTER.replace("count: 2", "count: 1")).unwrap());
    let b = parse_faults(text, &fewer, 5).unwrap();
    let of = |f: &Faults, n: &str| -> Vec<f64> {
        f.events
            .iter()
            .filter(|e| e.node == n)
            .map(|e| e.at_s)
            .collect()
    };
    assert_eq!(of(&a, "gpu-0"), of(&b, "gpu-0"));

    // Never back: at most one failure per node; classes filter.
    let once = parse_faults(
        "rate: {per_node_per_hour: 5, until: 10h, classes: [cpu]}\n",
        &nodes(),
        5,
    )
    .unwrap();
    assert_eq!(once.events.len(), 2);
    assert!(once
        .events
        .iter()
        .all(|e| e.node.starts_with("cpu-") && e.recover_after_s.is_none()));
}
