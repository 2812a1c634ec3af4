//! Properties of the job spec: canonical text round-trips, no input makes the
//! parsers panic, and a wrongly typed field is reported at its own path.

use std::time::Duration;

use drover_api::spec::{MAX_CPU_MILLIS, MAX_MEMORY_BYTES, MAX_RESTART_DELAY, MAX_TASKS};
use drover_api::{
    Constraints, Cpu, Elastic, JobId, JobSpec, JobType, Memory, PolicyKind, ResourceRequest,
    RestartPolicy, SpecError,
};
use proptest::prelude::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------
// Valid specs
// ---------------------------------------------------------------------------

/// How many tasks, and how: `count`, or `shards` with optional elastic bounds.
#[derive(Debug, Clone)]
enum Shape {
    Count(u32),
    Shards(u32, Option<Elastic>),
}

fn task_number() -> impl Strategy<Value = u32> {
    prop_oneof![1..=10u32, 1..=MAX_TASKS, Just(MAX_TASKS)]
}

fn shape(job_type: JobType) -> BoxedStrategy<Shape> {
    let count = task_number().prop_map(Shape::Count);
    if job_type == JobType::Service {
        return count.boxed();
    }
    let shards = task_number()
        .prop_flat_map(|n| {
            let elastic = (1..=n)
                .prop_flat_map(move |max| (1..=max, Just(max)))
                .prop_map(|(min, max)| Elastic { min, max });
            (Just(n), proptest::option::of(elastic))
        })
        .prop_map(|(n, elastic)| Shape::Shards(n, elastic));
    prop_oneof![count, shards].boxed()
}

fn policy_for(elastic: bool) -> BoxedStrategy<Option<PolicyKind>> {
    if elastic {
        proptest::option::of(Just(PolicyKind::ElasticSharding)).boxed()
    } else {
        proptest::option::of(prop_oneof![
            Just(PolicyKind::RoundRobin),
            Just(PolicyKind::LeastLoaded),
            Just(PolicyKind::Priority),
        ])
        .boxed()
    }
}

/// Text without NUL, including newlines, quotes, YAML punctuation and
/// anything else Unicode has, plus strings that look like other YAML types.
fn odd_text(max: usize) -> BoxedStrategy<String> {
    prop_oneof![
        4 => proptest::string::string_regex(&format!("(?s)[^\\x00]{{0,{max}}}")).unwrap(),
        1 => prop::sample::select(vec![
            "", "true", "no", "null", "~", "1", "-1", "0x1F", "1e3", ".inf", "1.0", "- a",
            "a: b", "#x", "&x", "*x", "!x", "'", "\"", "{}", "[]", " lead", "trail ", "\t", "\r\n",
            "%YAML", "---", "...", "@", "`", "\u{85}", "\u{feff}", "\u{2028}", "é", "日本",
        ])
        .prop_map(str::to_string),
    ]
    .boxed()
}

fn non_empty_odd_text(max: usize) -> BoxedStrategy<String> {
    odd_text(max)
        .prop_filter("non-empty", |s| !s.is_empty())
        .boxed()
}

fn env_name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,15}".prop_filter("not reserved", |k| {
        !k.starts_with("DROVER_") && k != "CUDA_VISIBLE_DEVICES"
    })
}

fn duration() -> BoxedStrategy<Duration> {
    prop_oneof![
        prop::sample::select(vec![0u64, 1, 500, 1000, 60_000, 86_400_000])
            .prop_map(Duration::from_millis),
        (0..=MAX_RESTART_DELAY.as_secs(), 0..1_000_000_000u32)
            .prop_map(|(s, n)| Duration::new(s, n).min(MAX_RESTART_DELAY)),
        (0..100u64, 0..1_000_000_000u32).prop_map(|(s, n)| Duration::new(s, n)),
    ]
    .boxed()
}

fn restart() -> impl Strategy<Value = RestartPolicy> {
    (
        0..=1000u32,
        duration(),
        duration(),
        prop_oneof![Just(1.0), Just(2.0), Just(100.0), 1.0..=100.0f64],
    )
        .prop_map(|(attempts, a, b, backoff)| RestartPolicy {
            attempts,
            delay: a.min(b),
            backoff,
            max_delay: a.max(b),
        })
}

fn resources_and_model() -> impl Strategy<Value = (ResourceRequest, Option<String>)> {
    (
        prop_oneof![1..=64_000u64, 1..=MAX_CPU_MILLIS],
        prop_oneof![
            1..=(1u64 << 40),
            1..=MAX_MEMORY_BYTES,
            (1..=1024u64).prop_map(|m| m << 20)
        ],
        prop_oneof![Just(0u32), 0..=64u32],
    )
        .prop_flat_map(|(cpu, memory, gpu)| {
            let model = if gpu == 0 {
                Just(None).boxed()
            } else {
                proptest::option::of(
                    non_empty_odd_text(24).prop_filter("not blank", |s| !s.trim().is_empty()),
                )
                .boxed()
            };
            let resources = ResourceRequest {
                cpu: Cpu(cpu),
                memory: Memory(memory),
                gpu,
            };
            (Just(resources), model)
        })
}

prop_compose! {
    fn valid_spec()(
        job_type in prop_oneof![Just(JobType::Batch), Just(JobType::Service)],
    )(
        shape in shape(job_type),
        job_type in Just(job_type),
        name in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?",
        priority in 0..=100u8,
        program in non_empty_odd_text(16),
        args in prop::collection::vec(odd_text(16), 0..5),
        env in prop::collection::btree_map(env_name(), odd_text(16), 0..5),
        labels in prop::collection::btree_map(
            prop_oneof![non_empty_odd_text(16), "[a-z][a-z0-9./-]{0,20}"],
            odd_text(16),
            0..4,
        ),
        (resources, gpu_model) in resources_and_model(),
        restart in restart(),
        kill_timeout in proptest::option::of((0..=3_600_000u64).prop_map(Duration::from_millis)),
        elastic_policy in policy_for(true),
        other_policy in policy_for(false),
    ) -> JobSpec {
        let (count, shards, elastic) = match shape {
            Shape::Count(n) => (n, None, None),
            Shape::Shards(n, elastic) => (1, Some(n), elastic),
        };
        let policy = if elastic.is_some() { elastic_policy } else { other_policy };
        let mut command = vec![program];
        command.extend(args);
        JobSpec {
            name: JobId::new(name).unwrap(),
            job_type,
            priority,
            policy,
            count,
            shards,
            elastic,
            command,
            env,
            resources,
            constraints: Constraints { labels, gpu_model },
            restart,
            kill_timeout,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (a) to_yaml → parse_yaml → to_json → parse_json → to_yaml is the identity.
    #[test]
    fn valid_specs_survive_yaml_then_json_unchanged(spec in valid_spec()) {
        let yaml = spec.to_yaml();
        let from_yaml = JobSpec::parse_yaml(&yaml)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(&from_yaml, &spec);
        let json = from_yaml.to_json();
        let from_json = JobSpec::parse_json(&json)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{json}")))?;
        prop_assert_eq!(&from_json, &spec);
        prop_assert_eq!(from_json.to_yaml(), yaml);
    }

    /// Serde's own entry points agree with the parse functions.
    #[test]
    fn serde_round_trips_valid_specs(spec in valid_spec()) {
        let text = serde_json::to_string(&spec).unwrap();
        let back: JobSpec = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(&back, &spec);
        let value = serde_json::to_value(&spec).unwrap();
        prop_assert_eq!(JobSpec::from_value(value).unwrap(), spec);
    }

    #[test]
    fn restart_delays_never_shrink_and_never_pass_max_delay(
        restart in restart(),
        attempt in any::<u32>(),
    ) {
        let now = restart.delay_for(attempt);
        let next = restart.delay_for(attempt.saturating_add(1));
        prop_assert!(now <= next, "{:?} then {:?}", now, next);
        prop_assert!(next <= restart.max_delay);
        prop_assert!(restart.delay_for(1) == restart.delay);
    }
}

// ---------------------------------------------------------------------------
// Garbage in
// ---------------------------------------------------------------------------

/// What any parse result must look like: a spec, a syntax error with a
/// message, or field errors that each name a path.
fn check_outcome(result: Result<JobSpec, SpecError>) -> Result<(), TestCaseError> {
    match result {
        Ok(spec) => {
            // Whatever was accepted must be canonical-printable and re-parse.
            prop_assert_eq!(JobSpec::parse_yaml(&spec.to_yaml()).ok(), Some(spec));
        }
        Err(SpecError::Syntax {
            message,
            line,
            column,
        }) => {
            prop_assert!(!message.is_empty());
            prop_assert!(line.is_some() || column.is_none());
        }
        Err(SpecError::Invalid(errors)) => {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                prop_assert!(!e.path.is_empty() && !e.message.is_empty(), "{:?}", e);
            }
        }
    }
    Ok(())
}

fn json_ish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            " ",
            "\n",
            "null",
            "true",
            "false",
            "\"",
            "\\",
            "\"name\"",
            "\"command\"",
            "\"env\"",
            "\"resources\"",
            "\"restart\"",
            "\"cpu\"",
            "\"memory\"",
            "\"shards\"",
            "\"elastic\"",
            "\"min\"",
            "\"max\"",
            "\"delay\"",
            "\"x\"",
            "\"500m\"",
            "\"1s\"",
            "-",
            "0",
            "1e999",
            "-1",
            "1.5",
            "18446744073709551616",
            "\"\\u0000\"",
            "\"\\ud800\"",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,4}",
        any::<u64>().prop_map(|n| n.to_string()),
    ];
    prop::collection::vec(token, 0..64).prop_map(|t| t.concat())
}

fn yaml_ish() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        prop::sample::select(vec![
            "name: ",
            "command: ",
            "env:",
            "resources:",
            "restart:",
            "labels:",
            "shards: ",
            "elastic: {min: 1, max: 2}",
            "- ",
            "\n",
            "  ",
            "    ",
            ": ",
            "? ",
            "{",
            "}",
            "[",
            "]",
            ",",
            "&a ",
            "*a",
            "<<: ",
            "!!str ",
            "!tag ",
            "!!binary ",
            "---\n",
            "...\n",
            "#",
            "|\n",
            ">-\n",
            "'",
            "\"",
            "~",
            ".nan",
            ".inf",
            "0x1F",
            "0o7",
            "1e3",
            "-",
            "%YAML 1.2\n",
            "\t",
            "\u{feff}",
            "x",
            "ab-c",
            "500m",
            "1Gi",
            "5 m",
        ])
        .prop_map(str::to_string),
        "[ -~]{0,4}",
        any::<i64>().prop_map(|n| n.to_string()),
    ];
    prop::collection::vec(token, 0..64).prop_map(|t| t.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// (b) Random bytes never panic either parser.
    #[test]
    fn random_bytes_never_panic_the_parsers(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let text = String::from_utf8_lossy(&bytes);
        check_outcome(JobSpec::parse_yaml(&text))?;
        check_outcome(JobSpec::parse_json(&text))?;
    }

    #[test]
    fn json_ish_text_never_panics_the_parsers(text in json_ish()) {
        check_outcome(JobSpec::parse_json(&text))?;
        check_outcome(JobSpec::parse_yaml(&text))?;
    }

    #[test]
    fn yaml_ish_text_never_panics_the_parsers(text in yaml_ish()) {
        check_outcome(JobSpec::parse_yaml(&text))?;
        check_outcome(JobSpec::parse_json(&text))?;
    }

    /// Damaged real specs reach deeper into the validator than noise does.
    #[test]
    fn damaged_valid_specs_never_panic_the_parsers(
        spec in valid_spec(),
        cut in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        for text in [spec.to_yaml(), spec.to_json()] {
            let mut bytes = text.into_bytes();
            bytes.truncate(cut.index(bytes.len() + 1));
            for (at, byte) in &edits {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = *byte;
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            check_outcome(JobSpec::parse_yaml(&text))?;
            check_outcome(JobSpec::parse_json(&text))?;
        }
    }

    /// Any JSON value at all (not just text) goes through `from_value` safely.
    #[test]
    fn arbitrary_values_never_panic_the_validator(value in arbitrary_value()) {
        check_outcome(JobSpec::from_value(value.clone()))?;
        check_outcome(JobSpec::from_value(json!({"name": "x", "command": ["a"], "env": value.clone(), "resources": value.clone()})))?;
        check_outcome(JobSpec::from_value(json!({"name": "x", "command": value.clone(), "restart": value})))?;
    }
}

fn arbitrary_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,8}".prop_map(Value::String),
        prop::sample::select(vec!["name", "command", "cpu", "1s", "500m", "batch", "min"])
            .prop_map(|s| Value::String(s.to_string())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let key = prop_oneof![
            prop::sample::select(vec![
                "name",
                "command",
                "type",
                "priority",
                "policy",
                "count",
                "shards",
                "elastic",
                "env",
                "resources",
                "constraints",
                "restart",
                "cpu",
                "memory",
                "gpu",
                "labels",
                "gpu_model",
                "attempts",
                "delay",
                "backoff",
                "max_delay",
                "min",
                "max",
            ])
            .prop_map(str::to_string),
            ".{0,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

// ---------------------------------------------------------------------------
// One field of the wrong type
// ---------------------------------------------------------------------------

/// What a field holds, and so which values are of the wrong type for it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Number,
    Quantity,
    Duration,
    Scalar,
    List,
    Mapping,
}

impl Kind {
    fn wrong_values(self) -> Vec<Value> {
        match self {
            Kind::Str => vec![json!(1), json!(true), json!([]), json!({}), json!(1.5)],
            Kind::Int => vec![json!("1"), json!(true), json!([1]), json!({}), json!(0.5)],
            Kind::Number => vec![json!("2.0"), json!(false), json!([]), json!({"a": 1})],
            Kind::Quantity => vec![json!(true), json!([]), json!({"cpu": 1})],
            Kind::Duration => vec![json!(1), json!(true), json!(["1s"]), json!({})],
            Kind::Scalar => vec![json!([]), json!({"a": "b"}), Value::Null],
            Kind::List => vec![json!("a b"), json!(1), json!({}), json!(true)],
            Kind::Mapping => vec![json!("x"), json!(1), json!([]), json!(false)],
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every field present in a canonical spec document: where it is, how its
/// error path is written, and what it holds.
fn fields(doc: &Value) -> Vec<(Vec<Step>, String, Kind)> {
    let key = |k: &str| Step::Key(k.to_string());
    let mut out = Vec::new();
    let root_kinds = [
        ("name", Kind::Str),
        ("type", Kind::Str),
        ("priority", Kind::Int),
        ("policy", Kind::Str),
        ("count", Kind::Int),
        ("shards", Kind::Int),
        ("elastic", Kind::Mapping),
        ("command", Kind::List),
        ("env", Kind::Mapping),
        ("resources", Kind::Mapping),
        ("constraints", Kind::Mapping),
        ("restart", Kind::Mapping),
    ];
    for (name, kind) in root_kinds {
        if doc.get(name).is_some() {
            out.push((vec![key(name)], name.to_string(), kind));
        }
    }
    let nested = [
        ("elastic", "min", Kind::Int),
        ("elastic", "max", Kind::Int),
        ("resources", "cpu", Kind::Quantity),
        ("resources", "memory", Kind::Quantity),
        ("resources", "gpu", Kind::Int),
        ("constraints", "labels", Kind::Mapping),
        ("constraints", "gpu_model", Kind::Str),
        ("restart", "attempts", Kind::Int),
        ("restart", "delay", Kind::Duration),
        ("restart", "backoff", Kind::Number),
        ("restart", "max_delay", Kind::Duration),
    ];
    for (parent, name, kind) in nested {
        if doc.get(parent).and_then(|p| p.get(name)).is_some() {
            out.push((
                vec![key(parent), key(name)],
                format!("{parent}.{name}"),
                kind,
            ));
        }
    }
    if let Some(Value::Array(args)) = doc.get("command") {
        for i in 0..args.len() {
            out.push((
                vec![key("command"), Step::Index(i)],
                format!("command[{i}]"),
                Kind::Str,
            ));
        }
    }
    if let Some(Value::Object(env)) = doc.get("env") {
        for k in env.keys() {
            out.push((vec![key("env"), key(k)], format!("env.{k}"), Kind::Scalar));
        }
    }
    let plain = |k: &str| {
        !k.is_empty()
            && k.len() <= 64
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if let Some(Value::Object(labels)) = doc.pointer("/constraints/labels") {
        for k in labels.keys().filter(|k| plain(k)) {
            out.push((
                vec![key("constraints"), key("labels"), key(k)],
                format!("constraints.labels.{k}"),
                Kind::Scalar,
            ));
        }
    }
    out
}

fn set(doc: &mut Value, steps: &[Step], value: Value) {
    let mut cur = doc;
    for step in steps {
        cur = match step {
            Step::Key(k) => &mut cur[k.as_str()],
            Step::Index(i) => &mut cur[*i],
        };
    }
    *cur = value;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// (c) Changing one field to a value of the wrong type is reported at
    /// exactly that field's path, through JSON, YAML and `from_value`.
    #[test]
    fn a_wrongly_typed_field_is_reported_at_its_path(
        spec in valid_spec(),
        which in any::<prop::sample::Index>(),
        wrong in any::<prop::sample::Index>(),
    ) {
        let mut doc = serde_json::to_value(&spec).unwrap();
        let candidates = fields(&doc);
        let (steps, path, kind) = which.get(&candidates).clone();
        let bad = wrong.get(&kind.wrong_values()).clone();
        set(&mut doc, &steps, bad.clone());

        let yaml = serde_yaml::to_string(&doc).unwrap();
        for (how, result) in [
            ("from_value", JobSpec::from_value(doc.clone())),
            ("json", JobSpec::parse_json(&doc.to_string())),
            ("yaml", JobSpec::parse_yaml(&yaml)),
        ] {
            match result {
                Err(SpecError::Invalid(errors)) => prop_assert!(
                    errors.0.iter().any(|e| e.path == path),
                    "{}: {} set to {} gave {}", how, path, bad, errors
                ),
                other => prop_assert!(false, "{}: {} set to {} gave {:?}", how, path, bad, other),
            }
        }
    }
}

#[test]
fn the_field_list_used_by_the_mutation_property_covers_every_kind_of_field() {
    let spec = JobSpec::parse_yaml(
        "name: a\nshards: 4\nelastic: {min: 1, max: 2}\ncommand: [x, y]\nenv: {A: b}\n\
         resources: {gpu: 1}\nconstraints: {labels: {zone: a}, gpu_model: H100}\npolicy: elastic-sharding\n",
    )
    .unwrap();
    let doc = serde_json::to_value(&spec).unwrap();
    let paths: Vec<String> = fields(&doc).into_iter().map(|(_, p, _)| p).collect();
    for expected in [
        "name",
        "type",
        "priority",
        "policy",
        "shards",
        "elastic",
        "command",
        "env",
        "resources",
        "constraints",
        "restart",
        "elastic.min",
        "elastic.max",
        "resources.cpu",
        "resources.memory",
        "resources.gpu",
        "constraints.labels",
        "constraints.gpu_model",
        "restart.attempts",
        "restart.delay",
        "restart.backoff",
        "restart.max_delay",
        "command[0]",
        "command[1]",
        "env.A",
        "constraints.labels.zone",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} missing from {paths:?}"
        );
    }
    assert!(
        !paths.iter().any(|p| p == "count"),
        "count is omitted for sharded jobs"
    );
}
