use super::*;
use crate::record::{Sample, TaskOutcome};

fn task(job: &str, index: u32, priority: u8, submitted: f64) -> TaskOutcome {
    TaskOutcome {
        job: job.to_string(),
        index,
        priority,
        elastic: false,
        submitted_s: submitted,
        started_s: None,
        finished_s: None,
        never_ran: None,
    }
}

fn ran(mut t: TaskOutcome, started: f64, finished: Option<f64>) -> TaskOutcome {
    t.started_s = Some(started);
    t.finished_s = finished;
    t
}

fn amounts(cpu_millis: u64, memory_bytes: u64, gpus: u64) -> Amounts {
    Amounts {
        cpu_millis,
        memory_bytes,
        gpus,
    }
}

/// A run whose every figure is worked out by hand in the test below.
fn hand_built() -> RunRecord {
    let capacity = amounts(10_000, 100, 4);
    let sample = |at_s: f64, queued: u64, held: Amounts| Sample {
        at_s,
        queued,
        held,
        capacity,
    };
    let mut tasks = Vec::new();
    // Ten normal-band tasks submitted at 10 s, waiting 1..=10 s, finishing
    // by 100 s at the latest.
    for i in 0..10u32 {
        let wait = f64::from(i + 1);
        tasks.push(ran(
            task("batch", i, 50, 10.0),
            10.0 + wait,
            Some(20.0 + wait * 8.0),
        ));
    }
    // Two high-band tasks: waits 0 and 4.
    tasks.push(ran(task("urgent", 0, 90, 30.0), 30.0, Some(40.0)));
    tasks.push(ran(task("urgent", 1, 90, 30.0), 34.0, Some(50.0)));
    // Low band: one ran (wait 20) and did not finish; three never ran.
    tasks.push(ran(task("backfill", 0, 10, 10.0), 30.0, None));
    let mut stuck = task("huge", 0, 10, 15.0);
    stuck.never_ran = Some("no node has 8 GPUs".into());
    tasks.push(stuck.clone());
    stuck.index = 1;
    tasks.push(stuck.clone());
    stuck.job = "picky".into();
    stuck.index = 0;
    stuck.never_ran = Some("no node has label zone=z".into());
    tasks.push(stuck);
    // Elastic: 6 shards, first start 40 s, last finish 70 s: 12 per minute.
    for i in 0..6u32 {
        let mut t = ran(
            task("shards", i, 50, 35.0),
            40.0 + f64::from(i),
            Some(70.0 - f64::from(i)),
        );
        t.elastic = true;
        tasks.push(t);
    }
    RunRecord {
        policy: "least-loaded".into(),
        capacity,
        // Window: first submit 10 s to last finish 100 s (90 s).
        // cpu: 0 over [10, 20) (the sample before 10 s counts from 10 s),
        // 5000 over [20, 40), 10000 over [40, 70), 2500 over [70, 100):
        // (0*10 + 5000*20 + 10000*30 + 2500*30) / (10000*90) = 0.527778 (6 places).
        // memory: 50 held from 20 s to 100 s: 50*80 / (100*90) = 0.444444.
        // gpus: 2 from 40 s to 70 s: 2*30 / (4*90) = 0.166667.
        samples: vec![
            sample(0.0, 0, amounts(0, 0, 0)),
            sample(20.0, 5, amounts(5000, 50, 0)),
            sample(40.0, 3, amounts(10_000, 50, 2)),
            sample(70.0, 1, amounts(2500, 50, 0)),
            // After the makespan: outside the window.
            sample(120.0, 0, amounts(10_000, 100, 4)),
        ],
        tasks,
        preemptions: 2,
        rescheduled: 1,
        end_s: 150.0,
    }
}

#[test]
fn nearest_rank_percentiles() {
    let v: Vec<f64> = (1..=10).map(f64::from).collect();
    assert_eq!(percentile(&v, 50.0), Some(5.0));
    assert_eq!(percentile(&v, 99.0), Some(10.0));
    assert_eq!(percentile(&v, 90.0), Some(9.0));
    assert_eq!(percentile(&v, 0.0), Some(1.0));
    assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    assert_eq!(percentile(&[], 50.0), None);
    let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
    assert_eq!(percentile(&hundred, 99.0), Some(99.0));
}

#[test]
fn a_hand_built_run_gives_the_figures_worked_out_by_hand() {
    let r = summarize(&hand_built());
    assert_eq!(r.policy, "least-loaded");
    assert_eq!(r.tasks, 22);
    assert_eq!(r.started, 19);
    assert_eq!(r.finished, 18);
    // Last finish 100 s (batch/9: 20 + 10*8), first submit 10 s.
    assert_eq!(r.makespan_s, Some(90.0));
    // Waits: urgent 0 and 4, batch 1..=10, shards 5..=10 (started 40+i,
    // submitted 35), backfill 20. Sorted, the nineteen are
    // 0 1 2 3 4 4 5 5 6 6 7 7 8 8 9 9 10 10 20: p50 is rank ceil(9.5) = 10,
    // a 6; p99 is rank ceil(18.81) = 19, the 20.
    assert_eq!(r.wait_p50_s, Some(6.0));
    assert_eq!(r.wait_p99_s, Some(20.0));

    type BandRow = (Band, u64, u64, Option<f64>, Option<f64>);
    let bands: Vec<BandRow> = r
        .bands
        .iter()
        .map(|b| (b.band, b.tasks, b.started, b.wait_p50_s, b.wait_p99_s))
        .collect();
    assert_eq!(
        bands,
        [
            // low: 4 tasks, one started (wait 20).
            (Band::Low, 4, 1, Some(20.0), Some(20.0)),
            // normal: batch 1..10 and shards 5..10: 16 waits, p50 rank 8.
            // sorted: 1,2,3,4,5,5,6,6,7,7,8,8,9,9,10,10 -> 6; p99 rank 16 -> 10.
            (Band::Normal, 16, 16, Some(6.0), Some(10.0)),
            // high: 0 and 4; rank 1 -> 0, rank 2 -> 4.
            (Band::High, 2, 2, Some(0.0), Some(4.0)),
        ]
    );
    assert_eq!(r.bands[0].priorities, "0-24");

    assert_eq!(r.cpu_utilisation, Some(0.527778));
    assert_eq!(r.memory_utilisation, Some(0.444444));
    assert_eq!(r.gpu_utilisation, Some(0.166667));
    assert_eq!(r.preemptions, 2);
    assert_eq!(r.rescheduled, 1);
    assert_eq!(r.elastic_shards_per_min, Some(12.0));
    assert_eq!(r.never_ran.count, 3);
    assert_eq!(
        r.never_ran.reasons,
        BTreeMap::from([
            ("no node has 8 GPUs".to_string(), 2),
            ("no node has label zone=z".to_string(), 1),
        ])
    );
    assert_eq!(r.end_s, 150.0);
}

#[test]
fn empty_and_gpu_less_runs_have_no_figures_rather_than_wrong_ones() {
    let run = RunRecord {
        policy: "priority".into(),
        capacity: amounts(1000, 1000, 0),
        samples: vec![],
        tasks: vec![task("a", 0, 50, 5.0)],
        preemptions: 0,
        rescheduled: 0,
        end_s: 5.0,
    };
    let r = summarize(&run);
    assert_eq!(r.makespan_s, None);
    assert_eq!(r.wait_p50_s, None);
    // Window [5, 5]: empty.
    assert_eq!(r.cpu_utilisation, None);
    assert_eq!(r.gpu_utilisation, None);
    assert_eq!(r.elastic_shards_per_min, None);
    assert_eq!(r.bands.len(), 1);
    assert_eq!(r.bands[0].started, 0);

    let mut longer = run.clone();
    longer.end_s = 15.0;
    let r = summarize(&longer);
    assert_eq!(r.cpu_utilisation, Some(0.0));
    assert_eq!(r.gpu_utilisation, None, "no GPUs in the cluster");
}

#[test]
fn durations_read_as_people_write_them() {
    let cases = [
        (None, "-"),
        (Some(0.0), "0ms"),
        (Some(0.85), "850ms"),
        (Some(0.9996), "1.0s"),
        (Some(12.34), "12.3s"),
        (Some(59.96), "1m"),
        (Some(302.0), "5m 2s"),
        (Some(3720.0), "1h 2m"),
        (Some(7200.0), "2h"),
        (Some(90_000.0), "1d 1h"),
    ];
    for (secs, want) in cases {
        assert_eq!(human_duration(secs), want, "{secs:?}");
    }
}

fn report() -> Report {
    let mut other = hand_built();
    other.policy = "round-robin".into();
    other.preemptions = 0;
    Report {
        seed: 42,
        workload: "config/simulate/workload.jsonl".into(),
        policies: vec![summarize(&hand_built()), summarize(&other)],
    }
}

#[test]
fn the_table_is_aligned_complete_and_deterministic() {
    let text = table(&report());
    assert_eq!(text, table(&report()));
    let want = "\
workload  config/simulate/workload.jsonl
seed      42

POLICY        MAKESPAN  WAIT-P50  WAIT-P99  CPU    MEM    GPU    PREEMPT  RESCHED  ELASTIC   NEVER-RAN
least-loaded  1m 30s    6.0s      20.0s     52.8%  44.4%  16.7%  2        1        12.0/min  3
round-robin   1m 30s    6.0s      20.0s     52.8%  44.4%  16.7%  0        1        12.0/min  3

POLICY        BAND    PRIORITY  TASKS  STARTED  WAIT-P50  WAIT-P99
least-loaded  low     0-24      4      1        20.0s     20.0s
least-loaded  normal  25-74     16     16       6.0s      10.0s
least-loaded  high    75-100    2      2        0ms       4.0s
round-robin   low     0-24      4      1        20.0s     20.0s
round-robin   normal  25-74     16     16       6.0s      10.0s
round-robin   high    75-100    2      2        0ms       4.0s

POLICY        NEVER-RAN  REASON
least-loaded  2          no node has 8 GPUs
least-loaded  1          no node has label zone=z
round-robin   2          no node has 8 GPUs
round-robin   1          no node has label zone=z
";
    assert_eq!(text, want);
    assert!(text.lines().all(|l| !l.ends_with(' ')));
}

#[test]
fn the_json_is_deterministic_and_complete() {
    let text = json(&report());
    assert_eq!(text, json(&report()));
    assert!(text.ends_with("}\n"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["seed"], 42);
    let p = &v["policies"][0];
    assert_eq!(p["policy"], "least-loaded");
    assert_eq!(p["makespan_s"], 90.0);
    assert_eq!(p["cpu_utilisation"], 0.527778);
    assert_eq!(p["bands"][2]["band"], "high");
    assert_eq!(p["never_ran"]["reasons"]["no node has 8 GPUs"], 2);
    assert_eq!(v["policies"][1]["preemptions"], 0);
}
