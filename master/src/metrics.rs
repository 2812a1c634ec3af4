//! Master metrics (DESIGN §9). Counters and histograms are updated where
//! things happen; gauges that describe the cluster (nodes, jobs, tasks,
//! capacity, queue depth) are read at scrape time from the tally the
//! cluster keeps as it changes (`state::Tally`; tests hold it equal to a
//! count from scratch after every change), without the cluster lock. No
//! per-task or per-job labels.
//!
//! `dashboards/METRICS.md` is the catalog of these and the agent's metrics;
//! the `drover-monitoring` tests hold the two to each other.

use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub nodes: GaugeVec,
    pub jobs: GaugeVec,
    pub tasks: GaugeVec,
    pub capacity: GaugeVec,
    pub allocated: GaugeVec,
    pub queue_depth: Gauge,
    pub is_leader: Gauge,
    pub scheduling_latency: Histogram,
    pub pass_duration: Histogram,
    /// How long each pass holds the cluster lock (the pass less its
    /// wait for the store).
    pub pass_lock: Histogram,
    pub examined: IntCounter,
    pub placements: IntCounterVec,
    pub preemptions: IntCounter,
    pub reschedules: IntCounterVec,
    /// Agent reports refused, by reason (`foreign_alloc`: about an alloc
    /// assigned to another node).
    pub rejected_updates: IntCounterVec,
    pub node_failures: IntCounter,
    /// Requests refused with 429, by why (api, agent: too many at once;
    /// backlog: the pending queue is full).
    pub http_throttled: IntCounterVec,
    /// Silent nodes not yet marked down because too many went silent at
    /// once (DESIGN §8).
    pub nodes_down_deferred: IntGauge,
    pub http_requests: CounterVec,
    pub http_duration: HistogramVec,
    pub store_op_duration: HistogramVec,
    pub store_bytes: IntGauge,
    pub store_compactions: IntCounter,
}

/// Registers `m` with `r` and hands it back.
fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn gauge_vec(r: &Registry, name: &str, help: &str, label: &str) -> GaugeVec {
    register(
        r,
        GaugeVec::new(Opts::new(name, help), &[label]).expect("static metric definition"),
    )
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("static metric definition"),
    )
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    buckets: Vec<f64>,
) -> HistogramVec {
    register(
        r,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &[label])
            .expect("static metric definition"),
    )
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition"),
    )
}

/// The `reason` values of `drover_task_reschedules_total`: `restart` (the
/// task's own attempt ended and its restart policy runs it again), `lost`
/// (its node went down), `preempted`, `drained`.
pub const RESCHEDULE_REASONS: [&str; 4] = ["restart", "lost", "preempted", "drained"];

/// 0.5 ms .. ~30 s.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0005, 2.0, 17).expect("valid buckets")
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let queue_depth = register(
            &r,
            Gauge::new("drover_queue_depth", "Tasks waiting to be placed").expect("static"),
        );
        let is_leader = register(
            &r,
            Gauge::new("drover_is_leader", "1 if this master is the leader, else 0")
                .expect("static"),
        );
        let preemptions = register(
            &r,
            IntCounter::new(
                "drover_preemptions_total",
                "Allocations evicted for higher-priority tasks",
            )
            .expect("static"),
        );
        let node_failures = register(
            &r,
            IntCounter::new(
                "drover_node_failures_total",
                "Nodes declared down (no heartbeat within node_timeout)",
            )
            .expect("static"),
        );
        let examined = register(&r, IntCounter::new(
            "drover_schedule_examined_tasks_total",
            "Waiting tasks the scheduling passes handed to a policy (a pass examines what it may place, plus one per waiting job)",
        ).expect("static"));
        let http_requests = register(
            &r,
            CounterVec::new(
                Opts::new(
                    "drover_http_requests_total",
                    "HTTP requests by route and status code",
                ),
                &["route", "code"],
            )
            .expect("static"),
        );
        let store_bytes = register(&r, IntGauge::new(
            "drover_store_file_bytes",
            "Bytes the store takes on disk (the embedded store's file, or the etcd member's database)",
        ).expect("static"));
        let store_compactions = register(
            &r,
            IntCounter::new(
                "drover_store_compactions_total",
                "Store compactions run (after store.compact_after_deletes deleted keys)",
            )
            .expect("static"),
        );
        let m = Metrics {
            nodes: gauge_vec(&r, "drover_nodes", "Nodes by state", "state"),
            jobs: gauge_vec(&r, "drover_jobs", "Jobs by state", "state"),
            tasks: gauge_vec(&r, "drover_tasks", "Tasks by state", "state"),
            capacity: gauge_vec(
                &r,
                "drover_cluster_capacity",
                "Allocatable capacity of live nodes (cpu in millicores, memory in bytes, gpu in devices)",
                "resource",
            ),
            allocated: gauge_vec(
                &r,
                "drover_cluster_allocated",
                "Capacity held by live allocations (cpu in millicores, memory in bytes, gpu in devices)",
                "resource",
            ),
            queue_depth,
            is_leader,
            scheduling_latency: histogram(
                &r,
                "drover_scheduling_latency_seconds",
                "Time from a task becoming pending (submitted, requeued, or due again after a restart delay) to its placement, in seconds",
                latency_buckets(),
            ),
            pass_duration: histogram(
                &r,
                "drover_schedule_pass_duration_seconds",
                "Duration of one scheduling pass, in seconds",
                latency_buckets(),
            ),
            pass_lock: histogram(
                &r,
                "drover_schedule_lock_seconds",
                "Time one scheduling pass holds the cluster lock (the pass less its wait for the store), in seconds",
                latency_buckets(),
            ),
            examined,
            placements: counter_vec(&r, "drover_placements_total", "Tasks placed, by policy", &["policy"]),
            preemptions,
            reschedules: counter_vec(
                &r,
                "drover_task_reschedules_total",
                "Tasks requeued for another attempt, by reason (restart, lost, preempted, drained)",
                &["reason"],
            ),
            rejected_updates: counter_vec(
                &r,
                "drover_rejected_agent_updates_total",
                "Alloc updates from agents refused, by reason (foreign_alloc: the alloc is assigned to another node)",
                &["reason"],
            ),
            node_failures,
            http_throttled: counter_vec(
                &r,
                "drover_http_throttled_total",
                "Requests answered 429 with Retry-After, by reason (api, agent: too many calls at once; backlog: the pending queue is full)",
                &["reason"],
            ),
            nodes_down_deferred: register(&r, IntGauge::new(
                "drover_nodes_down_deferred",
                "Silent nodes past node_timeout not yet marked down, because more than half of the nodes went silent at once and down-marking is rate-limited",
            ).expect("static")),
            http_requests,
            http_duration: histogram_vec(
                &r,
                "drover_http_request_duration_seconds",
                "HTTP request duration by route, in seconds",
                "route",
                latency_buckets(),
            ),
            store_op_duration: histogram_vec(
                &r,
                "drover_store_op_duration_seconds",
                "Duration of store operations (load, commit, compact), in seconds",
                "op",
                latency_buckets(),
            ),
            store_bytes,
            store_compactions,
            registry: r,
        };
        // Every bounded label value exists from the start at 0, so rates and
        // alerts see a series before the first event, not a gap.
        for policy in drover_api::PolicyKind::ALL {
            m.placements.with_label_values(&[policy.name()]);
        }
        for reason in RESCHEDULE_REASONS {
            m.reschedules.with_label_values(&[reason]);
        }
        m.rejected_updates.with_label_values(&["foreign_alloc"]);
        for reason in ["api", "agent", "backlog"] {
            m.http_throttled.with_label_values(&[reason]);
        }
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding text into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_and_reschedule_reason_is_a_series_at_zero_from_the_start() {
        let text = Metrics::new().render();
        for policy in drover_api::PolicyKind::ALL {
            let line = format!("drover_placements_total{{policy=\"{}\"}} 0", policy.name());
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        for reason in RESCHEDULE_REASONS {
            let line = format!("drover_task_reschedules_total{{reason=\"{reason}\"}} 0");
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
