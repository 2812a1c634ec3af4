use super::*;
use serde_json::json;

/// The example from DESIGN §5, verbatim.
const README_EXAMPLE: &str = r#"
name: render                 # id; [a-z0-9-], 1..63
type: batch                  # batch | service (service tasks are restarted whenever they end)
priority: 50                 # 0..100
policy: least-loaded         # optional; master default otherwise
count: 8                     # identical tasks (not with shards)
command: ["/usr/bin/render", "--fast"]
env: { QUALITY: high }
resources: { cpu: 500m, memory: 256Mi, gpu: 1 }   # cpu: millicores or cores ("2")
constraints: { labels: { zone: a }, gpu_model: "H100" }
restart: { attempts: 3, delay: 1s, backoff: 2.0 }
# elastic-sharding jobs:  shards: 64   elastic: { min: 2, max: 16 }
"#;

fn minimal() -> Value {
    json!({"name": "job", "command": ["/bin/true"]})
}

fn with(mut base: Value, path: &[&str], value: Value) -> Value {
    let mut cur = &mut base;
    for key in &path[..path.len() - 1] {
        cur = cur
            .as_object_mut()
            .unwrap()
            .entry(key.to_string())
            .or_insert_with(|| json!({}));
    }
    cur.as_object_mut()
        .unwrap()
        .insert(path[path.len() - 1].to_string(), value);
    base
}

/// The field errors of an invalid document (panics, failing the test, if it is valid).
fn errors(doc: Value) -> Vec<FieldError> {
    match JobSpec::from_value(doc.clone()) {
        Ok(spec) => panic!("accepted {doc}: {spec:?}"),
        Err(SpecError::Invalid(errs)) => errs.0,
        Err(other) => panic!("not a validation error: {other}"),
    }
}

/// The single error for `doc`, as `path: message`.
fn one_error(doc: Value) -> String {
    let errs = errors(doc);
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs[0].to_string()
}

fn error_for(doc: Value, path: &str) -> String {
    let errs = errors(doc);
    errs.iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("no error at {path}: {errs:?}"))
        .message
        .clone()
}

fn accepted(doc: Value) -> JobSpec {
    JobSpec::from_value(doc.clone()).unwrap_or_else(|e| panic!("{doc} refused: {e}"))
}

// --- the whole document -------------------------------------------------

#[test]
fn the_readme_example_parses_as_yaml() {
    let spec = JobSpec::parse_yaml(README_EXAMPLE).unwrap();
    assert_eq!(spec.name.as_str(), "render");
    assert_eq!(spec.job_type, JobType::Batch);
    assert_eq!(spec.priority, 50);
    assert_eq!(spec.policy, Some(PolicyKind::LeastLoaded));
    assert_eq!(spec.count, 8);
    assert_eq!(spec.task_count(), 8);
    assert_eq!(spec.command, ["/usr/bin/render", "--fast"]);
    assert_eq!(spec.env["QUALITY"], "high");
    assert_eq!(spec.resources.cpu, Cpu(500));
    assert_eq!(spec.resources.memory, Memory(256 << 20));
    assert_eq!(spec.resources.gpu, 1);
    assert_eq!(spec.constraints.labels["zone"], "a");
    assert_eq!(spec.constraints.gpu_model.as_deref(), Some("H100"));
    assert_eq!(spec.restart.attempts, 3);
    assert_eq!(spec.restart.delay, Duration::from_secs(1));
    assert_eq!(spec.restart.backoff, 2.0);
    assert_eq!(spec.restart.max_delay, Duration::from_secs(300));
}

#[test]
fn the_readme_example_with_its_elastic_comment_applied_parses_too() {
    let text = README_EXAMPLE
        .replace("count: 8 ", "shards: 64\nelastic: { min: 2, max: 16 }\n#")
        .replace("policy: least-loaded", "policy: elastic-sharding");
    let spec = JobSpec::parse_yaml(&text).unwrap();
    assert_eq!(spec.shards, Some(64));
    assert_eq!(spec.elastic, Some(Elastic { min: 2, max: 16 }));
    assert_eq!(spec.task_count(), 64);
    assert_eq!(spec.count, 1);
}

#[test]
fn a_minimal_spec_gets_every_default() {
    let spec = accepted(minimal());
    assert_eq!(
        spec,
        JobSpec::new(JobId::new("job").unwrap(), vec!["/bin/true".into()])
    );
    assert_eq!(spec.job_type, JobType::Batch);
    assert_eq!(spec.priority, 50);
    assert_eq!(spec.count, 1);
    assert_eq!(spec.resources.cpu.to_string(), "100m");
    assert_eq!(spec.resources.memory.to_string(), "64Mi");
    assert_eq!(spec.resources.gpu, 0);
    assert_eq!(spec.restart, RestartPolicy::default());
    assert_eq!(spec.restart.max_delay, Duration::from_secs(5 * 60));
}

#[test]
fn a_spec_with_three_problems_reports_all_three_with_paths() {
    let doc = json!({
        "name": "Bad_Name",
        "command": ["/bin/true"],
        "resources": {"memory": "12Zb"},
        "restart": {"delay": "soon"},
    });
    let errs = errors(doc);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["name", "resources.memory", "restart.delay"]);
    assert!(errs[1]
        .to_string()
        .starts_with("resources.memory: \"12Zb\" is not a size"));
}

#[test]
fn validation_errors_display_as_path_and_message_joined_by_semicolons() {
    let err =
        JobSpec::from_value(json!({"name": "x", "command": [], "priority": 101})).unwrap_err();
    assert_eq!(
        err.to_string(),
        "priority: must be between 0 and 100, got 101; \
         command: must not be empty: give the program and its arguments"
    );
    assert_eq!(err.field_errors().len(), 2);
}

#[test]
fn the_root_must_be_a_mapping() {
    for doc in [json!([1, 2]), json!("render"), json!(3), Value::Null] {
        let msg = one_error(doc);
        assert!(msg.starts_with("(root): expected a mapping, got "), "{msg}");
    }
    let err = JobSpec::parse_yaml("- a\n- b\n").unwrap_err();
    assert_eq!(err.to_string(), "(root): expected a mapping, got a list");
}

#[test]
fn unknown_fields_are_rejected_at_every_level_with_the_allowed_list() {
    let doc = json!({
        "name": "x", "command": ["a"], "cont": 3,
        "elastic": {"min": 1, "max": 1, "mid": 1}, "shards": 2,
        "resources": {"disk": "1Gi"},
        "constraints": {"label": {}},
        "restart": {"tries": 2},
    });
    let errs = errors(doc);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "cont: unknown field, expected one of name, type, priority, policy, count, shards, \
             elastic, command, env, resources, constraints, restart, kill_timeout",
            "elastic.mid: unknown field, expected one of min, max",
            "resources.disk: unknown field, expected one of cpu, memory, gpu",
            "constraints.label: unknown field, expected one of labels, gpu_model",
            "restart.tries: unknown field, expected one of attempts, delay, backoff, max_delay",
        ]
    );
}

#[test]
fn unknown_keys_that_are_not_plain_words_are_quoted_in_the_path() {
    let msg = one_error(with(minimal(), &["resources", "gpu model"], json!(1)));
    assert!(
        msg.starts_with("resources.\"gpu model\": unknown field"),
        "{msg}"
    );
}

#[test]
fn wrong_types_are_named() {
    assert_eq!(
        one_error(with(minimal(), &["priority"], json!("high"))),
        "priority: expected an integer, got a string"
    );
    assert_eq!(
        one_error(with(minimal(), &["name"], json!(7))),
        "name: expected a string, got an integer"
    );
    assert_eq!(
        one_error(with(minimal(), &["resources"], json!([]))),
        "resources: expected a mapping, got a list"
    );
    assert_eq!(
        one_error(with(minimal(), &["restart", "backoff"], json!(true))),
        "restart.backoff: expected a number, got a boolean"
    );
    assert_eq!(
        one_error(with(minimal(), &["count"], json!(2.5))),
        "count: expected an integer, got 2.5"
    );
}

#[test]
fn integral_floats_count_as_integers() {
    let spec = accepted(with(minimal(), &["count"], json!(3.0)));
    assert_eq!(spec.count, 3);
    assert_eq!(
        one_error(with(minimal(), &["count"], json!(1e300))),
        "count: must be between 1 and 1000000, got 1e+300"
    );
}

#[test]
fn null_optional_fields_mean_absent() {
    let doc = json!({
        "name": "x", "command": ["a"], "type": null, "priority": null, "policy": null,
        "count": null, "shards": null, "elastic": null, "env": null,
        "resources": {"cpu": null, "memory": null, "gpu": null},
        "constraints": {"labels": null, "gpu_model": null},
        "restart": {"attempts": null, "delay": null, "backoff": null, "max_delay": null},
    });
    let mut spec = accepted(doc);
    assert_eq!(
        spec,
        JobSpec::new(JobId::new("x").unwrap(), vec!["a".into()])
    );
    spec = JobSpec::parse_yaml("name: x\ncommand: [a]\nresources:\nrestart: ~\n").unwrap();
    assert_eq!(spec.resources, ResourceRequest::default());
}

// --- name, type, priority, policy -------------------------------------

#[test]
fn name_is_required() {
    assert_eq!(one_error(json!({"command": ["a"]})), "name: required");
    assert_eq!(
        one_error(json!({"name": null, "command": ["a"]})),
        "name: required"
    );
}

#[test]
fn name_must_be_a_valid_job_id() {
    for bad in ["", "Render", "-x", "x-", "a_b", &"a".repeat(64)] {
        let msg = error_for(with(minimal(), &["name"], json!(bad)), "name");
        assert!(msg.contains("is not a job name"), "{bad}: {msg}");
    }
    assert_eq!(
        accepted(with(minimal(), &["name"], json!("a-1")))
            .name
            .as_str(),
        "a-1"
    );
}

#[test]
fn type_must_be_batch_or_service() {
    assert_eq!(
        accepted(with(minimal(), &["type"], json!("service"))).job_type,
        JobType::Service
    );
    assert_eq!(
        one_error(with(minimal(), &["type"], json!("cron"))),
        "type: \"cron\" is not a job type: use batch or service"
    );
}

#[test]
fn priority_must_be_an_integer_between_0_and_100() {
    assert_eq!(
        accepted(with(minimal(), &["priority"], json!(0))).priority,
        0
    );
    assert_eq!(
        accepted(with(minimal(), &["priority"], json!(100))).priority,
        100
    );
    assert_eq!(
        one_error(with(minimal(), &["priority"], json!(101))),
        "priority: must be between 0 and 100, got 101"
    );
    assert_eq!(
        one_error(with(minimal(), &["priority"], json!(-1))),
        "priority: must be between 0 and 100, got -1"
    );
}

#[test]
fn policy_must_be_a_known_name() {
    for p in [
        PolicyKind::RoundRobin,
        PolicyKind::LeastLoaded,
        PolicyKind::Priority,
    ] {
        assert_eq!(
            accepted(with(minimal(), &["policy"], json!(p.name()))).policy,
            Some(p)
        );
    }
    let msg = one_error(with(minimal(), &["policy"], json!("fifo")));
    assert!(msg.starts_with("policy: \"fifo\" is not a policy"), "{msg}");
}

// --- count, shards, elastic -------------------------------------------

#[test]
fn count_must_be_between_1_and_a_million() {
    assert_eq!(
        accepted(with(minimal(), &["count"], json!(1_000_000))).count,
        1_000_000
    );
    for bad in [0, 1_000_001] {
        let msg = one_error(with(minimal(), &["count"], json!(bad)));
        assert_eq!(
            msg,
            format!("count: must be between 1 and 1000000, got {bad}")
        );
    }
}

#[test]
fn count_and_shards_cannot_be_combined() {
    let doc = with(with(minimal(), &["count"], json!(2)), &["shards"], json!(4));
    assert_eq!(
        one_error(doc),
        "count: cannot be used with shards: a job has either count identical tasks or shards"
    );
}

#[test]
fn shards_must_be_between_1_and_a_million() {
    let spec = accepted(with(minimal(), &["shards"], json!(64)));
    assert_eq!((spec.shards, spec.task_count()), (Some(64), 64));
    assert_eq!(
        one_error(with(minimal(), &["shards"], json!(0))),
        "shards: must be between 1 and 1000000, got 0"
    );
}

#[test]
fn elastic_needs_shards_and_both_bounds() {
    assert_eq!(
        one_error(with(minimal(), &["elastic"], json!({"min": 1, "max": 2}))),
        "elastic: requires shards: elastic bounds how many shards run at once"
    );
    let sharded = with(minimal(), &["shards"], json!(8));
    let errs = errors(with(sharded, &["elastic"], json!({})));
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["elastic.min: required", "elastic.max: required"]);
}

#[test]
fn elastic_bounds_must_satisfy_1_le_min_le_max_le_shards() {
    let sharded = with(minimal(), &["shards"], json!(8));
    let ok = accepted(with(
        sharded.clone(),
        &["elastic"],
        json!({"min": 1, "max": 8}),
    ));
    assert_eq!(ok.elastic, Some(Elastic { min: 1, max: 8 }));
    assert_eq!(
        one_error(with(
            sharded.clone(),
            &["elastic"],
            json!({"min": 0, "max": 2})
        )),
        "elastic.min: must be between 1 and 1000000, got 0"
    );
    assert_eq!(
        one_error(with(
            sharded.clone(),
            &["elastic"],
            json!({"min": 3, "max": 2})
        )),
        "elastic.min: must not exceed elastic.max (2), got 3"
    );
    assert_eq!(
        one_error(with(sharded, &["elastic"], json!({"min": 2, "max": 9}))),
        "elastic.max: must not exceed shards (8), got 9"
    );
}

#[test]
fn elastic_jobs_only_accept_the_elastic_sharding_policy() {
    let elastic = with(
        with(minimal(), &["shards"], json!(8)),
        &["elastic"],
        json!({"min": 1, "max": 4}),
    );
    assert_eq!(
        accepted(with(
            elastic.clone(),
            &["policy"],
            json!("elastic-sharding")
        ))
        .policy,
        Some(PolicyKind::ElasticSharding)
    );
    assert_eq!(
        one_error(with(elastic, &["policy"], json!("priority"))),
        "policy: jobs with elastic are placed by elastic-sharding, not priority"
    );
}

#[test]
fn the_elastic_sharding_policy_needs_shards_and_elastic() {
    let doc = with(minimal(), &["policy"], json!("elastic-sharding"));
    assert_eq!(
        one_error(doc.clone()),
        "policy: elastic-sharding needs shards and elastic: {min, max}"
    );
    assert_eq!(
        one_error(with(doc, &["shards"], json!(4))),
        "policy: elastic-sharding needs shards and elastic: {min, max}"
    );
}

#[test]
fn service_jobs_cannot_be_sharded() {
    let doc = with(
        with(minimal(), &["type"], json!("service")),
        &["shards"],
        json!(4),
    );
    assert_eq!(
        one_error(doc),
        "shards: service jobs cannot be sharded: shards run once to success (use count)"
    );
    let spec = accepted(with(
        with(minimal(), &["type"], json!("service")),
        &["count"],
        json!(3),
    ));
    assert_eq!(spec.task_count(), 3);
}

// --- command ------------------------------------------------------------

#[test]
fn command_is_required_and_must_be_a_non_empty_list_of_strings() {
    assert_eq!(one_error(json!({"name": "x"})), "command: required");
    assert_eq!(
        one_error(json!({"name": "x", "command": "/bin/echo hi"})),
        "command: expected a list of strings such as [\"/bin/echo\", \"hi\"], got a string"
    );
    assert_eq!(
        one_error(json!({"name": "x", "command": []})),
        "command: must not be empty: give the program and its arguments"
    );
    assert_eq!(
        one_error(json!({"name": "x", "command": ["sleep", 10]})),
        "command[1]: expected a string, got an integer (quote it: \"10\")"
    );
    assert_eq!(
        one_error(json!({"name": "x", "command": ["sleep", {"a": 1}]})),
        "command[1]: expected a string, got a mapping"
    );
}

#[test]
fn the_program_must_not_be_empty_but_later_arguments_may_be() {
    assert_eq!(
        one_error(json!({"name": "x", "command": ["", "a"]})),
        "command[0]: the program must not be empty"
    );
    assert_eq!(
        accepted(json!({"name": "x", "command": ["echo", ""]})).command[1],
        ""
    );
}

#[test]
fn command_arguments_must_not_contain_nul_bytes() {
    assert_eq!(
        one_error(json!({"name": "x", "command": ["echo", "a\u{0}b"]})),
        "command[1]: must not contain NUL bytes"
    );
}

#[test]
fn command_is_limited_to_256_arguments_of_4096_bytes() {
    let just_fits: Vec<String> = (0..256).map(|_| "a".repeat(4096)).collect();
    assert_eq!(
        accepted(json!({"name": "x", "command": just_fits}))
            .command
            .len(),
        256
    );
    let too_many: Vec<String> = (0..257).map(|i| i.to_string()).collect();
    assert_eq!(
        one_error(json!({"name": "x", "command": too_many})),
        "command: at most 256 arguments, got 257"
    );
    assert_eq!(
        one_error(json!({"name": "x", "command": ["a", "b".repeat(4097)]})),
        "command[1]: at most 4096 bytes, got 4097"
    );
}

// --- env ------------------------------------------------------------------

#[test]
fn env_keys_must_be_variable_names() {
    let spec = accepted(with(minimal(), &["env"], json!({"_A1": "x", "b": "y"})));
    assert_eq!(spec.env.len(), 2);
    for bad in ["1X", "A-B", "A B", ""] {
        let errs = errors(with(minimal(), &["env"], json!({ bad: "v" })));
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(
            errs[0].message.starts_with("not a variable name"),
            "{bad}: {errs:?}"
        );
        assert!(errs[0].path.starts_with("env."), "{errs:?}");
    }
    assert_eq!(
        error_for(with(minimal(), &["env"], json!({"A B": 1})), "env.\"A B\""),
        "not a variable name: use letters, digits and _, not starting with a digit"
    );
}

#[test]
fn drover_and_cuda_env_keys_are_reserved_because_drover_sets_them() {
    let errs = errors(with(
        minimal(),
        &["env"],
        json!({"DROVER_JOB": "x", "DROVER_ANYTHING": "y", "CUDA_VISIBLE_DEVICES": "0"}),
    ));
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "env.CUDA_VISIBLE_DEVICES: reserved: Drover sets CUDA_VISIBLE_DEVICES to the GPUs \
             it assigns (ask with resources.gpu)",
            "env.DROVER_ANYTHING: reserved: Drover sets the DROVER_* variables itself",
            "env.DROVER_JOB: reserved: Drover sets the DROVER_* variables itself",
        ]
    );
    // Only the exact prefix is reserved.
    accepted(with(
        minimal(),
        &["env"],
        json!({"DROVER": "x", "drover_job": "y"}),
    ));
}

#[test]
fn env_values_accept_numbers_and_booleans_as_their_text() {
    let spec = JobSpec::parse_yaml(
        "name: x\ncommand: [a]\nenv: {PORT: 8080, DEBUG: true, RATIO: 0.5, NAME: web}\n",
    )
    .unwrap();
    assert_eq!(spec.env["PORT"], "8080");
    assert_eq!(spec.env["DEBUG"], "true");
    assert_eq!(spec.env["RATIO"], "0.5");
    assert_eq!(spec.env["NAME"], "web");
    assert_eq!(
        one_error(with(minimal(), &["env"], json!({"A": [1]}))),
        "env.A: expected a string, got a list"
    );
    assert_eq!(
        one_error(with(minimal(), &["env"], json!({"A": null}))),
        "env.A: expected a string, got null (write \"\" for an empty value)"
    );
    assert_eq!(
        one_error(with(minimal(), &["env"], json!(["A=1"]))),
        "env: expected a mapping of variable names to values, got a list"
    );
}

#[test]
fn env_values_must_not_contain_nul_bytes() {
    assert_eq!(
        one_error(with(minimal(), &["env"], json!({"A": "x\u{0}"}))),
        "env.A: must not contain NUL bytes"
    );
}

#[test]
fn env_is_limited_to_256_entries() {
    let env: Map<String, Value> = (0..257).map(|i| (format!("V{i}"), json!("x"))).collect();
    assert_eq!(
        one_error(with(minimal(), &["env"], Value::Object(env.clone()))),
        "env: at most 256 variables, got 257"
    );
    let fits: Map<String, Value> = env.into_iter().take(256).collect();
    assert_eq!(
        accepted(with(minimal(), &["env"], Value::Object(fits)))
            .env
            .len(),
        256
    );
}

// --- resources --------------------------------------------------------------

#[test]
fn cpu_and_memory_accept_strings_and_numbers() {
    let spec = accepted(with(
        minimal(),
        &["resources"],
        json!({"cpu": 2, "memory": 1024}),
    ));
    assert_eq!(spec.resources.cpu, Cpu(2000));
    assert_eq!(spec.resources.memory, Memory(1024));
    let spec = accepted(with(
        minimal(),
        &["resources"],
        json!({"cpu": 0.25, "memory": "1.5Gi"}),
    ));
    assert_eq!(spec.resources.cpu, Cpu(250));
    assert_eq!(spec.resources.memory, Memory(3 << 29));
}

#[test]
fn unparseable_quantities_quote_the_input() {
    assert!(
        one_error(with(minimal(), &["resources", "memory"], json!("12Zb")))
            .starts_with("resources.memory: \"12Zb\" is not a size")
    );
    assert!(
        one_error(with(minimal(), &["resources", "cpu"], json!("fast")))
            .starts_with("resources.cpu: \"fast\" is not a CPU amount")
    );
    assert_eq!(
        one_error(with(minimal(), &["resources", "cpu"], json!(true))),
        "resources.cpu: expected a CPU amount such as \"500m\" or 2, got a boolean"
    );
}

#[test]
fn cpu_and_memory_no_machine_has_are_refused_not_queued_forever() {
    for (field, huge) in [
        ("cpu", json!("999999")),
        ("cpu", json!("18446744073709551m")),
        ("cpu", json!(65_537)),
        ("memory", json!("15Ei")),
        ("memory", json!("1025Ti")),
    ] {
        let e = one_error(with(minimal(), &["resources", field], huge.clone()));
        assert!(
            e.starts_with(&format!("resources.{field}: at most "))
                && e.ends_with("no node could ever run it"),
            "{huge}: {e}"
        );
    }
    for (field, big) in [("cpu", json!(65_536)), ("memory", json!("1Pi"))] {
        accepted(with(minimal(), &["resources", field], big));
    }
}

#[test]
fn cpu_and_memory_must_be_positive_and_negatives_say_so() {
    for (field, zero) in [
        ("cpu", json!("0m")),
        ("memory", json!(0)),
        ("cpu", json!(0)),
    ] {
        assert_eq!(
            one_error(with(minimal(), &["resources", field], zero)),
            format!("resources.{field}: must be more than zero")
        );
    }
    for (field, negative) in [
        ("cpu", json!(-1)),
        ("cpu", json!("-500m")),
        ("memory", json!(-0.5)),
        ("memory", json!("-1Gi")),
    ] {
        assert_eq!(
            one_error(with(minimal(), &["resources", field], negative)),
            format!("resources.{field}: must not be negative")
        );
    }
}

#[test]
fn gpu_must_be_between_0_and_64() {
    assert_eq!(
        accepted(with(minimal(), &["resources", "gpu"], json!(64)))
            .resources
            .gpu,
        64
    );
    assert_eq!(
        one_error(with(minimal(), &["resources", "gpu"], json!(65))),
        "resources.gpu: must be between 0 and 64, got 65"
    );
}

// --- constraints ------------------------------------------------------------

#[test]
fn labels_map_names_to_text_with_dns_sized_limits() {
    let spec = accepted(with(
        minimal(),
        &["constraints", "labels"],
        json!({"zone": "a", "kubernetes.io/arch": "amd64", "rack": 7, "ssd": true, "empty": ""}),
    ));
    assert_eq!(spec.constraints.labels["rack"], "7");
    assert_eq!(spec.constraints.labels["ssd"], "true");
    assert_eq!(spec.constraints.labels["empty"], "");

    assert_eq!(
        one_error(with(
            minimal(),
            &["constraints", "labels"],
            json!({"": "a"})
        )),
        "constraints.labels.\"\": label names must not be empty"
    );
    let long = "k".repeat(254);
    assert_eq!(
        errors(with(
            minimal(),
            &["constraints", "labels"],
            json!({ long: "a" })
        ))[0]
            .message,
        "label names must be at most 253 bytes, got 254"
    );
    assert_eq!(
        one_error(with(
            minimal(),
            &["constraints", "labels"],
            json!({"zone": "z".repeat(254)})
        )),
        "constraints.labels.zone: must be at most 253 bytes, got 254"
    );
    assert_eq!(
        one_error(with(
            minimal(),
            &["constraints", "labels"],
            json!({"zone": ["a"]})
        )),
        "constraints.labels.zone: expected a string, got a list"
    );
    let long_ok = "z".repeat(253);
    accepted(with(
        minimal(),
        &["constraints", "labels"],
        json!({ long_ok.clone(): long_ok }),
    ));
}

#[test]
fn gpu_model_requires_at_least_one_gpu() {
    let gpu = with(minimal(), &["resources", "gpu"], json!(2));
    let spec = accepted(with(gpu, &["constraints", "gpu_model"], json!("A100")));
    assert_eq!(spec.constraints.gpu_model.as_deref(), Some("A100"));
    assert_eq!(
        one_error(with(
            minimal(),
            &["constraints", "gpu_model"],
            json!("A100")
        )),
        "constraints.gpu_model: requires resources.gpu of at least 1"
    );
    let zero = with(minimal(), &["resources", "gpu"], json!(0));
    assert_eq!(
        one_error(with(zero, &["constraints", "gpu_model"], json!("A100"))),
        "constraints.gpu_model: requires resources.gpu of at least 1"
    );
}

#[test]
fn gpu_model_must_not_be_empty() {
    let gpu = with(minimal(), &["resources", "gpu"], json!(1));
    assert_eq!(
        one_error(with(gpu, &["constraints", "gpu_model"], json!(" "))),
        "constraints.gpu_model: must not be empty"
    );
}

// --- restart ------------------------------------------------------------------

#[test]
fn restart_attempts_are_between_0_and_1000() {
    assert_eq!(
        accepted(with(minimal(), &["restart", "attempts"], json!(0)))
            .restart
            .attempts,
        0
    );
    assert_eq!(
        one_error(with(minimal(), &["restart", "attempts"], json!(1001))),
        "restart.attempts: must be between 0 and 1000, got 1001"
    );
}

#[test]
fn restart_delays_are_humantime_strings() {
    let spec = accepted(with(
        minimal(),
        &["restart"],
        json!({"delay": "500ms", "max_delay": "1m 30s"}),
    ));
    assert_eq!(spec.restart.delay, Duration::from_millis(500));
    assert_eq!(spec.restart.max_delay, Duration::from_secs(90));
    assert_eq!(
        one_error(with(minimal(), &["restart", "delay"], json!(5))),
        "restart.delay: expected a duration such as \"1s\" or \"500ms\", got an integer"
    );
    let msg = one_error(with(minimal(), &["restart", "delay"], json!("5 parsecs")));
    assert!(
        msg.starts_with("restart.delay: \"5 parsecs\" is not a duration ("),
        "{msg}"
    );
    assert_eq!(
        one_error(with(minimal(), &["restart", "max_delay"], json!("-1s"))),
        "restart.max_delay: must not be negative"
    );
    assert_eq!(
        one_error(with(minimal(), &["restart", "max_delay"], json!("2years"))),
        "restart.max_delay: must be at most 1year"
    );
}

#[test]
fn restart_backoff_is_a_finite_number_between_1_and_100() {
    assert_eq!(
        accepted(with(minimal(), &["restart", "backoff"], json!(1)))
            .restart
            .backoff,
        1.0
    );
    assert_eq!(
        accepted(with(minimal(), &["restart", "backoff"], json!(100.0)))
            .restart
            .backoff,
        100.0
    );
    for bad in [json!(0.99), json!(100.5), json!(-2)] {
        let msg = one_error(with(minimal(), &["restart", "backoff"], bad.clone()));
        assert_eq!(
            msg,
            format!("restart.backoff: must be between 1.0 and 100.0, got {bad}")
        );
    }
    assert_eq!(
        one_error(with(minimal(), &["restart", "backoff"], json!("2.0"))),
        "restart.backoff: expected a number, got a string"
    );
}

#[test]
fn yaml_nan_and_infinity_are_refused_instead_of_becoming_null() {
    for bad in [".nan", ".inf", "-.inf"] {
        let text = format!("name: x\ncommand: [a]\nrestart: {{backoff: {bad}}}\n");
        match JobSpec::parse_yaml(&text) {
            Err(SpecError::Syntax { line, message, .. }) => {
                assert_eq!(line, Some(3), "{message}");
                assert!(message.contains("is not a finite number"), "{message}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn max_delay_must_be_at_least_delay() {
    assert_eq!(
        one_error(with(
            minimal(),
            &["restart"],
            json!({"delay": "10s", "max_delay": "5s"})
        )),
        "restart.max_delay: must be at least restart.delay (10s), got 5s"
    );
    assert_eq!(
        one_error(with(minimal(), &["restart", "delay"], json!("10m"))),
        "restart.delay: must not exceed restart.max_delay (5m by default), got 10m"
    );
    let equal = accepted(with(
        minimal(),
        &["restart"],
        json!({"delay": "7s", "max_delay": "7s"}),
    ));
    assert_eq!(equal.restart.delay, equal.restart.max_delay);
}

#[test]
fn delay_grows_by_backoff_per_attempt_and_stops_at_max_delay() {
    let restart = RestartPolicy::default(); // 1s, x2, max 5m
    let secs: Vec<u64> = (1..=11).map(|a| restart.delay_for(a).as_secs()).collect();
    assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    assert_eq!(restart.delay_for(0), Duration::from_secs(1));
    let fractional = RestartPolicy {
        delay: Duration::from_millis(100),
        backoff: 1.5,
        ..restart
    };
    assert_eq!(fractional.delay_for(3), Duration::from_millis(225));
}

#[test]
fn delay_for_never_overflows_or_returns_nonsense() {
    let extreme = RestartPolicy {
        attempts: 1000,
        delay: Duration::MAX,
        backoff: 100.0,
        max_delay: Duration::MAX,
    };
    assert_eq!(extreme.delay_for(u32::MAX), Duration::MAX);
    let zero = RestartPolicy {
        delay: Duration::ZERO,
        ..extreme
    };
    assert_eq!(zero.delay_for(u32::MAX), Duration::ZERO);
    let nan = RestartPolicy {
        backoff: f64::NAN,
        ..RestartPolicy::default()
    };
    assert_eq!(nan.delay_for(5), Duration::from_secs(1));
    let inverted = RestartPolicy {
        delay: Duration::from_secs(10),
        max_delay: Duration::from_secs(3),
        ..RestartPolicy::default()
    };
    assert_eq!(inverted.delay_for(1), Duration::from_secs(3));
    assert_eq!(inverted.delay_for(9), Duration::from_secs(3));
}

// --- methods ----------------------------------------------------------------

#[test]
fn elastic_jobs_are_always_placed_by_elastic_sharding() {
    let mut spec = accepted(minimal());
    assert_eq!(
        spec.effective_policy(PolicyKind::RoundRobin),
        PolicyKind::RoundRobin
    );
    spec.policy = Some(PolicyKind::Priority);
    assert_eq!(
        spec.effective_policy(PolicyKind::RoundRobin),
        PolicyKind::Priority
    );
    spec.shards = Some(10);
    spec.elastic = Some(Elastic { min: 1, max: 5 });
    spec.policy = None;
    assert_eq!(
        spec.effective_policy(PolicyKind::LeastLoaded),
        PolicyKind::ElasticSharding
    );
    assert_eq!(spec.task_count(), 10);
}

// --- text, syntax and serde ----------------------------------------------------

#[test]
fn syntax_errors_carry_line_and_column() {
    match JobSpec::parse_json("{\n  \"name\": \"x\",\n  \"command\": [\n}") {
        Err(SpecError::Syntax {
            line,
            column,
            message,
        }) => {
            assert_eq!(line, Some(4));
            assert!(column.is_some());
            assert!(!message.contains("at line"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match JobSpec::parse_yaml("name: x\ncommand: [a\nenv: {") {
        Err(
            e @ SpecError::Syntax {
                line: Some(_),
                column: Some(_),
                ..
            },
        ) => {
            assert!(e.to_string().starts_with("line "), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicate_keys_are_syntax_errors_in_both_formats() {
    match JobSpec::parse_yaml("name: x\ncommand: [a]\nname: y\n") {
        Err(SpecError::Syntax { line, message, .. }) => {
            assert_eq!(line, Some(3));
            assert!(message.contains("duplicate key \"name\""), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match JobSpec::parse_json(r#"{"name": "x", "command": ["a"], "env": {"A": "1", "A": "2"}}"#) {
        Err(SpecError::Syntax {
            line: Some(1),
            message,
            ..
        }) => {
            assert!(message.contains("duplicate key \"A\""), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_and_non_document_inputs_are_errors_not_panics() {
    for text in [
        "",
        "   ",
        "---",
        "~",
        "[]",
        "!!binary aGk=",
        "*x",
        "a: &x [*x]",
    ] {
        assert!(JobSpec::parse_yaml(text).is_err(), "{text:?}");
    }
    for text in ["", "null", "{", "[1,", "{\"name\":1e999}", "\u{0}"] {
        assert!(JobSpec::parse_json(text).is_err(), "{text:?}");
    }
}

#[test]
fn deserialize_goes_through_the_validator() {
    let ok: JobSpec = serde_json::from_str(r#"{"name": "x", "command": ["a"]}"#).unwrap();
    assert_eq!(ok.name.as_str(), "x");
    let err =
        serde_json::from_str::<JobSpec>(r#"{"name": "x", "command": ["a"], "priority": 500}"#)
            .unwrap_err();
    assert!(
        err.to_string()
            .contains("priority: must be between 0 and 100, got 500"),
        "{err}"
    );
    let err = serde_yaml::from_str::<JobSpec>("name: X\ncommand: [a]\n").unwrap_err();
    assert!(
        err.to_string().contains("name: \"X\" is not a job name"),
        "{err}"
    );
    let err = serde_json::from_value::<JobSpec>(json!({"name": "x"})).unwrap_err();
    assert!(err.to_string().contains("command: required"), "{err}");
}

#[test]
fn serialize_writes_the_canonical_form_with_every_field() {
    let spec = accepted(minimal());
    assert_eq!(
        spec.to_yaml(),
        "name: job\ntype: batch\npriority: 50\ncount: 1\ncommand:\n- /bin/true\nenv: {}\n\
         resources:\n  cpu: 100m\n  memory: 64Mi\n  gpu: 0\nconstraints:\n  labels: {}\n\
         restart:\n  attempts: 3\n  delay: 1s\n  backoff: 2.0\n  max_delay: 5m\n"
    );
    let json: Value = serde_json::from_str(&spec.to_json()).unwrap();
    assert!(json.get("policy").is_none());
    assert!(json.get("shards").is_none());
    assert!(json.get("elastic").is_none());
    assert!(json["constraints"].get("gpu_model").is_none());
    assert_eq!(json["restart"]["delay"], "1s");
    assert_eq!(json["resources"]["memory"], "64Mi");
}

#[test]
fn serialize_omits_count_when_sharded_and_names_optional_fields_when_set() {
    let spec = JobSpec::parse_yaml(
        "name: idx\nshards: 64\nelastic: {min: 2, max: 16}\npolicy: elastic-sharding\n\
         command: [a]\nresources: {gpu: 1}\nconstraints: {gpu_model: H100}\n\
         restart: {delay: 1500ms, max_delay: 1h}\n",
    )
    .unwrap();
    let json: Value = serde_json::from_str(&spec.to_json()).unwrap();
    assert!(json.get("count").is_none());
    assert_eq!(json["shards"], 64);
    assert_eq!(json["elastic"], json!({"min": 2, "max": 16}));
    assert_eq!(json["policy"], "elastic-sharding");
    assert_eq!(json["constraints"]["gpu_model"], "H100");
    assert_eq!(json["restart"]["delay"], "1s 500ms");
    assert_eq!(json["restart"]["max_delay"], "1h");
    assert_eq!(JobSpec::parse_json(&spec.to_json()).unwrap(), spec);
    assert_eq!(JobSpec::parse_yaml(&spec.to_yaml()).unwrap(), spec);
}

#[test]
fn too_many_problems_are_counted_rather_than_listed() {
    let junk: Map<String, Value> = (0..500)
        .map(|i| (format!("junk{i:03}"), json!(1)))
        .collect();
    let mut doc = Value::Object(junk);
    doc["name"] = json!("x");
    doc["command"] = json!(["a"]);
    let errs = errors(doc);
    assert_eq!(errs.len(), MAX_REPORTED_ERRORS + 1);
    assert_eq!(
        errs.last().unwrap().to_string(),
        "(root): 400 more problems not shown"
    );
}

#[test]
fn deeply_nested_input_is_an_error_not_a_stack_overflow() {
    let depth = 100_000;
    let json = format!("{{\"name\": {}{}}}", "[".repeat(depth), "]".repeat(depth));
    assert!(JobSpec::parse_json(&json).is_err());
    let yaml = format!("name: {}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(JobSpec::parse_yaml(&yaml).is_err());
    let yaml_block = (0..2_000)
        .map(|i| format!("{}- x\n", " ".repeat(i * 2)))
        .collect::<String>();
    assert!(JobSpec::parse_yaml(&yaml_block).is_err());
}

#[test]
fn yaml_nesting_past_the_limit_is_refused_before_parsing() {
    let deep = format!(
        "name: x\ncommand: {}true{}\n",
        "[".repeat(40),
        "]".repeat(40)
    );
    let err = JobSpec::parse_yaml(&deep).unwrap_err();
    assert!(
        err.to_string().contains("nesting deeper than 32 levels"),
        "{err}"
    );
}

#[test]
fn brackets_inside_quotes_and_comments_do_not_count_as_nesting() {
    let brackets = "[".repeat(50);
    let yaml = format!(
        "name: web # {brackets}\ncommand: [\"/bin/echo\", \"{brackets}\", '{brackets}', it's]\n"
    );
    let spec = JobSpec::parse_yaml(&yaml).unwrap();
    assert_eq!(spec.command[1], brackets);
    assert_eq!(spec.command[3], "it's");
}
