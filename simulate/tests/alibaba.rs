//! The Alibaba importer on a small batch_task.csv written from the trace's
//! published schema; every expected value is worked out by hand below.

use std::path::Path;

use drover_simulate::alibaba::{
    import_batch_tasks, import_batch_tasks_detailed, load_batch_tasks, AlibabaOptions,
};
use drover_simulate::input::{parse_workload, to_jsonl, Duration};

const MIB: u64 = 1 << 20;

fn fixture() -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alibaba_batch_task.csv"),
    )
    .unwrap()
}

/// (name, count, submit_s, duration_s, cpu_millis, memory_bytes)
type Row<N> = (N, u32, f64, f64, u64, u64);

#[test]
fn terminated_tasks_import_with_the_values_worked_out_by_hand() {
    let import = import_batch_tasks_detailed(&fixture(), &AlibabaOptions::default()).unwrap();
    // 18 rows: Failed, Waiting, Cancelled and Running are skipped for
    // their status; four do not read.
    assert_eq!(import.skipped_status, 4);
    let invalid: Vec<(usize, &str)> = import
        .invalid
        .iter()
        .map(|s| (s.line, s.reason.as_str()))
        .collect();
    assert_eq!(
        invalid,
        [
            (8, "expected 9 columns, got 6"),
            (9, "end_time (87100) is before start_time (87200)"),
            (10, "instance_num must be between 1 and 1000000, got 0"),
            (11, "plan_cpu is not a number: \"\""),
        ]
    );
    // Memory: plan_mem % of 96 GiB = 98304 MiB, to the nearest MiB.
    // Submit: start_time - 86400 (the earliest start imported).
    let want: [Row<&str>; 10] = [
        // 0.5% -> 491.52 MiB -> 492; 100 -> 1 core.
        ("j-1-m1", 1, 0.0, 60.0, 1000, 492 * MIB),
        // 0.2% -> 196.608 -> 197.
        ("j-1-r2-1", 3, 70.0, 60.0, 500, 197 * MIB),
        // start = end: at least 1 s. 1% -> 983.04 -> 983.
        ("j-2-m1", 10, 100.0, 1.0, 2000, 983 * MIB),
        // 0.39% -> 383.3856 -> 383.
        (
            "j-3-task-ltg0mtuwnta5mjg4mdkznji3ma",
            1,
            200.0,
            300.0,
            1000,
            383 * MIB,
        ),
        // 2.5% -> 2457.6 -> 2458.
        ("j-5-j3-1-2", 5, 600.0, 600.0, 3000, 2458 * MIB),
        // "J_1"/"M1" sanitizes to j-1-m1, already taken.
        ("j-1-m1-2", 1, 1100.0, 60.0, 1000, 492 * MIB),
        // "j.1"/"m1" too.
        ("j-1-m1-3", 4, 1200.0, 60.0, 1000, 492 * MIB),
        // 1.5% -> 1474.56 -> 1475.
        ("j-10-r4-2-3", 1, 1600.0, 2000.0, 1500, 1475 * MIB),
        // plan_cpu 0.5 -> 5 millicores; 0.01% -> 9.8304 -> 10.
        ("j-13-m3", 7, 1900.0, 60.0, 5, 10 * MIB),
        ("j-14-m1", 1, 2000.0, 1.0, 1000, 492 * MIB),
    ];
    let got: Vec<Row<String>> = import
        .jobs
        .iter()
        .map(|j| {
            let Duration::Fixed(d) = j.duration else {
                panic!("{}: {:?}", j.spec.name, j.duration)
            };
            (
                j.spec.name.to_string(),
                j.spec.count,
                j.submit_s,
                d,
                j.spec.resources.cpu.millis(),
                j.spec.resources.memory.bytes(),
            )
        })
        .collect();
    let want: Vec<Row<String>> = want
        .iter()
        .map(|&(n, c, s, d, cpu, mem)| (n.to_string(), c, s, d, cpu, mem))
        .collect();
    assert_eq!(got, want);
    for j in &import.jobs {
        assert_eq!(j.spec.priority, 50);
        assert_eq!(j.spec.policy, None);
        assert_eq!(j.spec.resources.gpu, 0);
    }
    // What `drover simulate --import alibaba` prints reads back as a workload.
    let text = to_jsonl(&import.jobs);
    assert_eq!(parse_workload(&text).unwrap(), import.jobs);
}

#[test]
fn other_statuses_limits_and_machine_sizes_are_options() {
    let all = import_batch_tasks_detailed(
        &fixture(),
        &AlibabaOptions {
            only_terminated: false,
            ..AlibabaOptions::default()
        },
    )
    .unwrap();
    // Failed and Cancelled rows now count; Waiting (no times) and Running
    // (no end yet) do not read.
    assert_eq!(all.skipped_status, 0);
    assert_eq!(all.invalid.len(), 6);
    assert_eq!(all.jobs.len(), 12);
    let failed = all
        .jobs
        .iter()
        .find(|j| j.spec.name.as_str() == "j-4-m1")
        .unwrap();
    assert_eq!((failed.spec.count, failed.submit_s), (2, 300.0));
    assert!(all.jobs.iter().any(|j| j.spec.name.as_str() == "j-11-m5"));

    let first = import_batch_tasks(
        &fixture(),
        &AlibabaOptions {
            limit: Some(3),
            ..AlibabaOptions::default()
        },
    )
    .unwrap();
    let names: Vec<&str> = first.iter().map(|j| j.spec.name.as_str()).collect();
    assert_eq!(names, ["j-1-m1", "j-1-r2-1", "j-2-m1"]);

    let small = import_batch_tasks(
        &fixture(),
        &AlibabaOptions {
            machine_memory_bytes: 64 << 30,
            limit: Some(1),
            ..AlibabaOptions::default()
        },
    )
    .unwrap();
    // 0.5% of 65536 MiB = 327.68 -> 328.
    assert_eq!(small[0].spec.resources.memory.bytes(), 328 * MIB);
}

#[test]
fn a_file_that_is_not_a_batch_task_csv_is_refused_with_its_name() {
    let dir = std::env::temp_dir().join(format!("drover-alibaba-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("machine_meta.csv");
    std::fs::write(&path, "m_1,0,1,a,96,100,USING\nm_2,0,1,a,96,100,USING\n").unwrap();
    let err = load_batch_tasks(&path, &AlibabaOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("{}:1: ", path.display())),
        "{text}"
    );
    assert!(text.contains("none of the 2 rows"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(import_batch_tasks("", &AlibabaOptions::default())
        .unwrap()
        .is_empty());
}
