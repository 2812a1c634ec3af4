use super::*;
use crate::record::Amounts;

/// A run of `n` samples whose queue and holdings move with `phase`, so
/// that each policy's curves differ.
fn run(policy: &str, n: usize, phase: f64, gpus: u64) -> RunRecord {
    let capacity = Amounts {
        cpu_millis: 64_000,
        memory_bytes: 256 << 30,
        gpus,
    };
    let samples = (0..n)
        .map(|i| {
            let t = i as f64 * 2.0;
            let wave = ((t / 300.0 + phase).sin() + 1.0) / 2.0;
            Sample {
                at_s: t,
                queued: (wave * 40.0) as u64,
                held: Amounts {
                    cpu_millis: (wave * 64_000.0) as u64,
                    memory_bytes: (wave * (128u64 << 30) as f64) as u64,
                    gpus: (wave * gpus as f64).round() as u64,
                },
                capacity,
            }
        })
        .collect();
    RunRecord {
        policy: policy.to_string(),
        capacity,
        samples,
        tasks: vec![],
        preemptions: 0,
        rescheduled: 0,
        end_s: n as f64 * 2.0,
    }
}

fn polylines(svg: &str) -> Vec<&str> {
    svg.match_indices("<polyline")
        .map(|(i, _)| {
            let rest = &svg[i..];
            &rest[..rest.find("/>").expect("closed")]
        })
        .collect()
}

fn points(polyline: &str) -> Vec<(f64, f64)> {
    let start = polyline.find("points=\"").expect("points") + 8;
    let text = &polyline[start..];
    let text = &text[..text.find('"').unwrap()];
    text.split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

fn rgb(i: usize) -> String {
    let c = color(i);
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

#[test]
fn every_policy_has_a_varying_curve_in_every_panel_and_a_legend_entry() {
    let policies = [
        "round-robin",
        "least-loaded",
        "priority",
        "elastic-sharding",
    ];
    let runs: Vec<RunRecord> = policies
        .iter()
        .enumerate()
        // 5000 samples: well past the downsampling limit.
        .map(|(i, p)| run(p, 5000, i as f64, 8))
        .collect();
    let svg = svg(&runs).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
    assert!(svg.len() > 5000, "{} bytes", svg.len());
    for title in [
        "Queue length",
        "CPU utilisation",
        "Memory utilisation",
        "GPU utilisation",
    ] {
        assert!(svg.contains(title), "panel {title}");
    }
    for label in ["queued tasks", "CPU held (%)", "time (min)"] {
        assert!(svg.contains(label), "axis label {label}");
    }
    let lines = polylines(&svg);
    for (i, policy) in policies.iter().enumerate() {
        assert!(
            svg.contains(&format!(">{policy}<")) || svg.contains(&format!(">\n{policy}\n<")),
            "legend entry for {policy}"
        );
        let color = rgb(i);
        let mine: Vec<&&str> = lines
            .iter()
            .filter(|l| l.to_ascii_uppercase().contains(&color))
            .collect();
        // Four panels, plus the legend's sample line.
        assert_eq!(mine.len(), 5, "{policy}: {}", mine.len());
        for l in mine.iter().filter(|l| points(l).len() > 2) {
            let pts = points(l);
            assert!(pts.len() <= 2 * BUCKETS + 2, "{} points", pts.len());
            let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
            let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            assert!(hi - lo > 10.0, "{policy}: a flat curve ({lo}..{hi})");
        }
        assert_eq!(
            mine.iter().filter(|l| points(l).len() > 2).count(),
            4,
            "{policy}: one real curve per panel"
        );
    }
}

#[test]
fn a_cluster_without_gpus_has_no_gpu_panel_and_short_runs_use_seconds() {
    let runs = [run("a", 30, 0.0, 0), run("b", 30, 1.0, 0)];
    let svg = svg(&runs).unwrap();
    assert!(!svg.contains("GPU utilisation"));
    assert!(svg.contains("time (s)"));
}

#[test]
fn bucket_means_keep_the_area_of_the_step_function() {
    let mut r = run("x", 0, 0.0, 0);
    r.end_s = 10.0;
    let cap = r.capacity;
    r.samples = vec![
        Sample {
            at_s: 2.0,
            queued: 4,
            held: Amounts::default(),
            capacity: cap,
        },
        Sample {
            at_s: 7.0,
            queued: 1,
            held: Amounts::default(),
            capacity: cap,
        },
    ];
    // Slices of 5 s over [0, 20]: the run ends at 10, so two of them.
    // [0,5): 0 for 2 s, 4 for 3 s -> 2.4; [5,10): 4 for 2 s, 1 for 3 s -> 2.2.
    let m = bucket_means(&r, |s| s.queued as f64, 20.0, 4);
    assert_eq!(m.len(), 2);
    assert!(
        (m[0] - 2.4).abs() < 1e-9 && (m[1] - 2.2).abs() < 1e-9,
        "{m:?}"
    );
    let s = steps(&m, 5.0, 10.0, 1.0);
    assert_eq!(s, [(0.0, 2.4), (5.0, 2.4), (5.0, 2.2), (10.0, 2.2)]);
}

#[test]
fn only_svg_files_are_written() {
    let runs = [run("a", 10, 0.0, 0)];
    let dir = std::env::temp_dir().join(format!("drover-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = write(&dir.join("out.png"), &runs).unwrap_err();
    assert!(matches!(err, SimError::Unsupported(_)));
    assert!(err.to_string().contains("only SVG"), "{err}");
    let path = dir.join("out.svg");
    write(&path, &runs).unwrap();
    assert!(std::fs::read_to_string(&path)
        .unwrap()
        .contains("<polyline"));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(svg(&[]).is_err());
}
