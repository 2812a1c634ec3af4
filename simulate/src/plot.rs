//! Pictures of runs: queue length and utilisation over time, one curve per
//! policy on shared axes, as SVG (drawn with `plotters`' SVG backend; no
//! fonts are needed, text is left to the viewer as `<text>` elements).

use std::path::Path;

use plotters::prelude::*;

use crate::record::{RunRecord, Sample};
use crate::SimError;

/// Each curve is averaged into this many equal slices of the time axis:
/// at most twice as many vertices once drawn as steps.
pub const BUCKETS: usize = 500;

const WIDTH: u32 = 1000;
const PANEL_HEIGHT: u32 = 260;

/// Tableau 10: distinct, and readable on white.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of the `i`-th run's curves.
pub(crate) fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

struct Panel {
    title: &'static str,
    y_desc: &'static str,
    /// The plotted value of a sample of a run.
    value: fn(&RunRecord, &Sample) -> f64,
    /// A fixed top of the y axis (percentages); else fit to the data.
    y_max: Option<f64>,
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64 * 100.0
    }
}

/// The time unit of the x axis: seconds for short runs, hours for long ones.
fn time_unit(x_max_s: f64) -> (f64, &'static str) {
    if x_max_s <= 120.0 {
        (1.0, "time (s)")
    } else if x_max_s <= 3.0 * 3600.0 {
        (60.0, "time (min)")
    } else {
        (3600.0, "time (h)")
    }
}

/// The run's step function (each sample holds until the next; zero before
/// the first) averaged over `n` equal slices of [0, x_max], for the slices
/// before the run's end. Averaging keeps the area under the curve, which is
/// what utilisation means; a bare pick of one sample per slice would not.
fn bucket_means(run: &RunRecord, value: impl Fn(&Sample) -> f64, x_max: f64, n: usize) -> Vec<f64> {
    let end = run.end_s.min(x_max);
    // Written so that NaN (a record from a broken run) also returns here.
    if n == 0 || end.is_nan() || end <= 0.0 || x_max.is_nan() || x_max <= 0.0 {
        return Vec::new();
    }
    let w = x_max / n as f64;
    let slices = ((end / w).ceil() as usize).clamp(1, n);
    let mut area = vec![0.0f64; slices];
    for (i, s) in run.samples.iter().enumerate() {
        let a = s.at_s.max(0.0);
        let b = run
            .samples
            .get(i + 1)
            .map_or(end, |next| next.at_s)
            .min(end);
        if b.is_nan() || b <= a {
            continue;
        }
        let v = value(s);
        let first = ((a / w) as usize).min(slices - 1);
        let last = ((b / w) as usize).min(slices - 1);
        for (k, slot) in area.iter_mut().enumerate().take(last + 1).skip(first) {
            let lo = a.max(k as f64 * w);
            let hi = b.min((k + 1) as f64 * w);
            if hi > lo {
                *slot += v * (hi - lo);
            }
        }
    }
    area.iter()
        .enumerate()
        .map(|(k, total)| {
            let covered = end.min((k + 1) as f64 * w) - k as f64 * w;
            if covered > 0.0 {
                total / covered
            } else {
                0.0
            }
        })
        .collect()
}

/// Step vertices of slice means: a vertex only where the value changes.
fn steps(means: &[f64], w: f64, end: f64, scale: f64) -> Vec<(f64, f64)> {
    let mut pts = Vec::new();
    let Some(&first) = means.first() else {
        return pts;
    };
    pts.push((0.0, first));
    let mut prev = first;
    for (k, &v) in means.iter().enumerate().skip(1) {
        if v != prev {
            let t = k as f64 * w / scale;
            pts.push((t, prev));
            pts.push((t, v));
            prev = v;
        }
    }
    pts.push((end / scale, prev));
    pts
}

/// "20", "2.5": no ".0" on whole ticks.
fn tick(x: &f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{:.0}", x.round())
    } else {
        let text = format!("{x:.2}");
        text.trim_end_matches('0').to_string()
    }
}

fn plot_err<E: std::fmt::Display>(e: E) -> SimError {
    SimError::Plot(e.to_string())
}

/// Writes an SVG: panels stacked (queue length; CPU, memory and, when the
/// cluster has GPUs, GPU utilisation in % of the whole cluster), one curve
/// per policy, same axes, a legend naming each policy, axis labels with
/// units. Each run is downsampled to at most about 1000 points.
pub fn svg(runs: &[RunRecord]) -> Result<String, SimError> {
    if runs.is_empty() {
        return Err(SimError::Plot("no runs to plot".to_string()));
    }
    let mut panels = vec![
        Panel {
            title: "Queue length",
            y_desc: "queued tasks",
            value: |_, s| s.queued as f64,
            y_max: None,
        },
        Panel {
            title: "CPU utilisation",
            y_desc: "CPU held (%)",
            value: |r, s| pct(s.held.cpu_millis, r.capacity.cpu_millis),
            y_max: Some(100.0),
        },
        Panel {
            title: "Memory utilisation",
            y_desc: "memory held (%)",
            value: |r, s| pct(s.held.memory_bytes, r.capacity.memory_bytes),
            y_max: Some(100.0),
        },
    ];
    if runs.iter().any(|r| r.capacity.gpus > 0) {
        panels.push(Panel {
            title: "GPU utilisation",
            y_desc: "GPUs held (%)",
            value: |r, s| pct(s.held.gpus, r.capacity.gpus),
            y_max: Some(100.0),
        });
    }

    let x_max = runs
        .iter()
        .map(|r| r.end_s)
        .chain(runs.iter().filter_map(|r| r.samples.last().map(|s| s.at_s)))
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max)
        .max(1.0);
    let (scale, x_desc) = time_unit(x_max);
    let w = x_max / BUCKETS as f64;

    let mut out = String::new();
    {
        let height = PANEL_HEIGHT * panels.len() as u32;
        let root = SVGBackend::with_string(&mut out, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let areas = root.split_evenly((panels.len(), 1));
        for (pi, (panel, area)) in panels.iter().zip(areas.iter()).enumerate() {
            let curves: Vec<Vec<(f64, f64)>> = runs
                .iter()
                .map(|run| {
                    let means = bucket_means(run, |s| (panel.value)(run, s), x_max, BUCKETS);
                    steps(&means, w, run.end_s.min(x_max), scale)
                })
                .collect();
            let y_max = panel.y_max.unwrap_or_else(|| {
                let top = curves.iter().flatten().map(|p| p.1).fold(0.0f64, f64::max);
                (top * 1.1).max(1.0)
            });
            let mut chart = ChartBuilder::on(area)
                .caption(panel.title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..x_max / scale, 0.0..y_max)
                .map_err(plot_err)?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(panel.y_desc)
                .x_label_formatter(&tick)
                .y_label_formatter(&tick)
                .light_line_style(WHITE.mix(0.0))
                .draw()
                .map_err(plot_err)?;
            for (i, (run, points)) in runs.iter().zip(curves).enumerate() {
                let style = color(i).stroke_width(2);
                let series = chart
                    .draw_series(LineSeries::new(points, style))
                    .map_err(plot_err)?;
                // One legend, on the top panel: the colours are the same below.
                if pi == 0 {
                    series
                        .label(run.policy.as_str())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                }
            }
            if pi == 0 {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .draw()
                    .map_err(plot_err)?;
            }
        }
        root.present().map_err(plot_err)?;
    }
    Ok(out)
}

/// Draws the runs into `path`. Only `.svg` is supported: a PNG would need
/// fonts and a rasteriser this crate leaves out.
pub fn write(path: &Path, runs: &[RunRecord]) -> Result<(), SimError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("svg") => {}
        Some("png") => {
            return Err(SimError::Unsupported(format!(
                "{}: only SVG plots are supported; name the file .svg (a browser or `rsvg-convert` turns it into a PNG)",
                path.display()
            )))
        }
        _ => {
            return Err(SimError::Unsupported(format!(
                "{}: plots are written as SVG; name the file .svg",
                path.display()
            )))
        }
    }
    let text = svg(runs)?;
    std::fs::write(path, text).map_err(|source| SimError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests;
