//! Synthetic workloads: Poisson arrivals, heavy-tailed task durations, a
//! share of GPU jobs, a mix of priorities and a few elastic jobs.
//!
//! Per job, in order, from one stream seeded by the seed:
//!
//! - its submit time: the previous one plus an exponential gap of mean
//!   `1 / arrival_rate_per_s` (a Poisson process);
//! - its number of tasks: 1 + a geometric count, mean `mean_tasks`;
//! - whether it needs GPUs (`gpu_fraction`): one GPU per task (a quarter of
//!   such jobs two), 4 cores and 16 GiB;
//! - else its size: 250m-4 cores with 1 GiB per core (memory-heavy jobs 4
//!   GiB per core, one in five);
//! - its priority, from `priority_mix`; jobs in the high band (75 and up)
//!   ask for the `priority` policy, so that a run that respects the jobs'
//!   own policies preempts for them;
//! - whether it is elastic (`elastic_fraction`, CPU jobs only): at least 4
//!   shards, starting at a quarter of them and growing to half.
//!
//! Every job's tasks draw their times from `duration` (Pareto by default:
//! most tasks short, a few very long).

use drover_api::{Cpu, Elastic, JobId, JobSpec, Memory, PolicyKind};

use crate::input::{Duration, WorkloadJob, DEFAULT_COMMAND};
use crate::rng::SplitMix64;
use crate::{Problem, SimError};

/// Most tasks a generated job has.
pub const MAX_GENERATED_TASKS: u32 = 1000;

const GIB: u64 = 1 << 30;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub jobs: usize,
    pub seed: u64,
    /// Mean arrivals per second of the Poisson process.
    pub arrival_rate_per_s: f64,
    /// Mean tasks per job (at least 1).
    pub mean_tasks: f64,
    /// Share of jobs that need GPUs, 0 to 1.
    pub gpu_fraction: f64,
    /// (priority, weight) pairs; weights need not sum to 1.
    pub priority_mix: [(u8, f64); 3],
    /// Every task's running time.
    pub duration: Duration,
    /// Share of jobs that are elastic, 0 to 1.
    pub elastic_fraction: f64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            jobs: 200,
            seed: 0,
            arrival_rate_per_s: 0.5,
            mean_tasks: 8.0,
            gpu_fraction: 0.1,
            priority_mix: [(10, 0.5), (50, 0.35), (90, 0.15)],
            duration: Duration::Pareto {
                min_s: 30.0,
                alpha: 1.6,
            },
            elastic_fraction: 0.05,
        }
    }
}

impl GenerateOptions {
    /// Every problem with the options, named as the CLI's flags would be.
    pub fn validate(&self) -> Result<(), SimError> {
        let mut problems = Vec::new();
        let mut bad = |field: &str, message: &str| {
            problems.push(Problem {
                field: field.to_string(),
                message: message.to_string(),
            })
        };
        if self.jobs == 0 || self.jobs > 1_000_000 {
            bad("jobs", "must be between 1 and 1000000");
        }
        if !(self.arrival_rate_per_s.is_finite() && self.arrival_rate_per_s > 0.0) {
            bad("arrival_rate_per_s", "must be more than zero");
        }
        if !(self.mean_tasks.is_finite()
            && (1.0..=f64::from(MAX_GENERATED_TASKS)).contains(&self.mean_tasks))
        {
            bad(
                "mean_tasks",
                &format!("must be between 1 and {MAX_GENERATED_TASKS}"),
            );
        }
        for (field, share) in [
            ("gpu_fraction", self.gpu_fraction),
            ("elastic_fraction", self.elastic_fraction),
        ] {
            if !(share.is_finite() && (0.0..=1.0).contains(&share)) {
                bad(field, "must be between 0 and 1");
            }
        }
        if self
            .priority_mix
            .iter()
            .any(|&(p, w)| p > 100 || !w.is_finite() || w < 0.0)
            || self.priority_mix.iter().all(|&(_, w)| w <= 0.0)
        {
            bad(
                "priority_mix",
                "priorities must be 0 to 100, weights at least 0 and not all 0",
            );
        }
        problems.extend(self.duration.check());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(SimError::Invalid {
                file: None,
                line: None,
                problems,
            })
        }
    }
}

/// A workload, deterministic from `opts.seed`; jobs named gen-0001,
/// gen-0002, ... in submit order. Options out of range are clamped (see
/// [`GenerateOptions::validate`] to refuse them instead).
pub fn generate(opts: &GenerateOptions) -> Vec<WorkloadJob> {
    let mut r = SplitMix64::keyed(opts.seed, &[b"generate"]);
    let width = opts.jobs.to_string().len().max(4);
    let rate = if opts.arrival_rate_per_s.is_finite() && opts.arrival_rate_per_s > 0.0 {
        opts.arrival_rate_per_s
    } else {
        1.0
    };
    let mean_tasks = if opts.mean_tasks.is_finite() {
        opts.mean_tasks.clamp(1.0, f64::from(MAX_GENERATED_TASKS))
    } else {
        1.0
    };
    let weights: Vec<f64> = opts.priority_mix.iter().map(|&(_, w)| w).collect();
    let mut t = 0.0;
    let mut jobs = Vec::with_capacity(opts.jobs);
    for i in 1..=opts.jobs {
        t += r.exponential(1.0 / rate);
        let tasks = geometric_tasks(&mut r, mean_tasks);
        let gpu = r.next_f64() < opts.gpu_fraction;
        let gpus_per_task = if r.next_f64() < 0.25 { 2 } else { 1 };
        let cpu_millis = [250, 500, 1000, 2000, 4000][r.weighted(&[0.2, 0.3, 0.25, 0.15, 0.1])];
        let memory_heavy = r.next_f64() < 0.2;
        let priority = opts.priority_mix[r.weighted(&weights)].0.min(100);
        let elastic = !gpu && r.next_f64() < opts.elastic_fraction;

        let name = JobId::new(format!("gen-{i:0width$}")).expect("gen-N is a valid job name");
        let mut spec = JobSpec::new(name, vec![DEFAULT_COMMAND.to_string()]);
        spec.priority = priority;
        if gpu {
            spec.count = tasks;
            spec.resources.cpu = Cpu(4000);
            spec.resources.memory = Memory(16 * GIB);
            spec.resources.gpu = gpus_per_task;
        } else {
            spec.resources.cpu = Cpu(cpu_millis);
            let per_core = if memory_heavy { 4 * GIB } else { GIB };
            spec.resources.memory = Memory(per_core * cpu_millis / 1000);
        }
        if elastic {
            let shards = tasks.max(4);
            spec.shards = Some(shards);
            spec.count = 1;
            spec.elastic = Some(Elastic {
                min: (shards / 4).max(1),
                max: (shards / 2).max(1),
            });
            spec.policy = Some(PolicyKind::ElasticSharding);
        } else {
            if !gpu {
                spec.count = tasks;
            }
            if priority >= 75 {
                spec.policy = Some(PolicyKind::Priority);
            }
        }
        jobs.push(WorkloadJob {
            submit_s: (t * 1000.0).round() / 1000.0,
            spec,
            duration: opts.duration,
        });
    }
    jobs
}

/// 1 + a geometric number of failures with success chance 1/mean: mean
/// `mean`, most jobs small, a few wide.
fn geometric_tasks(r: &mut SplitMix64, mean: f64) -> u32 {
    if mean <= 1.0 {
        return 1;
    }
    let p = 1.0 / mean;
    let extra = (r.next_open_f64().ln() / (1.0 - p).ln()).floor();
    (1.0 + extra).min(f64::from(MAX_GENERATED_TASKS)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{parse_workload, to_jsonl};

    #[test]
    fn the_same_seed_gives_the_same_workload_and_another_seed_another() {
        let opts = GenerateOptions {
            jobs: 100,
            seed: 42,
            ..GenerateOptions::default()
        };
        let a = to_jsonl(&generate(&opts));
        let b = to_jsonl(&generate(&opts));
        assert_eq!(a, b);
        let c = to_jsonl(&generate(&GenerateOptions { seed: 43, ..opts }));
        assert_ne!(a, c);
    }

    #[test]
    fn generated_workloads_are_valid_and_round_trip() {
        let jobs = generate(&GenerateOptions {
            jobs: 300,
            seed: 7,
            ..GenerateOptions::default()
        });
        let text = to_jsonl(&jobs);
        let back = parse_workload(&text).unwrap();
        assert_eq!(back, jobs);
        assert_eq!(jobs[0].spec.name.as_str(), "gen-0001");
        assert_eq!(jobs[299].spec.name.as_str(), "gen-0300");
        assert!(jobs.windows(2).all(|w| w[0].submit_s <= w[1].submit_s));
    }

    #[test]
    fn shares_and_rates_are_roughly_as_asked() {
        let opts = GenerateOptions {
            jobs: 4000,
            seed: 1,
            gpu_fraction: 0.25,
            elastic_fraction: 0.1,
            ..GenerateOptions::default()
        };
        let jobs = generate(&opts);
        let n = jobs.len() as f64;
        let gpu = jobs.iter().filter(|j| j.spec.resources.gpu > 0).count() as f64 / n;
        assert!((gpu - 0.25).abs() < 0.03, "GPU share {gpu}");
        // Elastic jobs are drawn among CPU jobs: 0.1 of the other 0.75.
        let elastic = jobs.iter().filter(|j| j.spec.elastic.is_some()).count() as f64 / n;
        assert!((elastic - 0.075).abs() < 0.02, "elastic share {elastic}");
        let high = jobs.iter().filter(|j| j.spec.priority == 90).count() as f64 / n;
        assert!((high - 0.15).abs() < 0.03, "priority-90 share {high}");
        let tasks: f64 = jobs
            .iter()
            .map(|j| f64::from(j.spec.task_count()))
            .sum::<f64>()
            / n;
        // Elastic jobs round their shards up to 4, which lifts the mean a little.
        assert!((7.0..9.5).contains(&tasks), "mean tasks {tasks}");
        let rate = n / jobs.last().unwrap().submit_s;
        assert!((rate - 0.5).abs() < 0.05, "arrival rate {rate}");
        for j in &jobs {
            if j.spec.priority >= 75 && j.spec.elastic.is_none() {
                assert_eq!(j.spec.policy, Some(PolicyKind::Priority));
            }
        }
    }

    #[test]
    fn bad_options_are_named() {
        let err = GenerateOptions {
            gpu_fraction: 1.5,
            arrival_rate_per_s: 0.0,
            ..GenerateOptions::default()
        }
        .validate()
        .unwrap_err();
        let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["arrival_rate_per_s", "gpu_fraction"]);
        assert!(GenerateOptions::default().validate().is_ok());
    }
}
