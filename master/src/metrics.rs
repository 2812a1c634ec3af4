//! Master metrics (DESIGN §9). Counters and histograms are updated where
//! things happen; gauges that describe the cluster (nodes, jobs, tasks,
//! capacity, queue depth) are computed from the cluster at scrape time, so
//! they cannot drift. No per-task or per-job labels.
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
    pub examined: IntCounter,
    pub placements: IntCounterVec,
    pub preemptions: IntCounter,
    pub reschedules: IntCounterVec,
    pub node_failures: IntCounter,
    pub http_requests: CounterVec,
    pub http_duration: HistogramVec,
    pub store_op_duration: HistogramVec,
    pub store_bytes: IntGauge,
    pub store_compactions: IntCounter,
}

fn gauge_vec(r: &Registry, name: &str, help: &str, label: &str) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), &[label]).expect("static metric definition");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("static metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &[label])
        .expect("static metric definition");
    r.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
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
        let queue_depth =
            Gauge::new("drover_queue_depth", "Tasks waiting to be placed").expect("static");
        r.register(Box::new(queue_depth.clone())).expect("once");
        let is_leader = Gauge::new("drover_is_leader", "1 if this master is the leader, else 0")
            .expect("static");
        r.register(Box::new(is_leader.clone())).expect("once");
        let preemptions = IntCounter::new(
            "drover_preemptions_total",
            "Allocations evicted for higher-priority tasks",
        )
        .expect("static");
        r.register(Box::new(preemptions.clone())).expect("once");
        let node_failures = IntCounter::new(
            "drover_node_failures_total",
            "Nodes declared down (no heartbeat within node_timeout)",
        )
        .expect("static");
        r.register(Box::new(node_failures.clone())).expect("once");
        let examined = IntCounter::new(
            "drover_schedule_examined_tasks_total",
            "Waiting tasks the scheduling passes handed to a policy (a pass examines what it may place, plus one per waiting job)",
        )
        .expect("static");
        r.register(Box::new(examined.clone())).expect("once");
        let http_requests = CounterVec::new(
            Opts::new(
                "drover_http_requests_total",
                "HTTP requests by route and status code",
            ),
            &["route", "code"],
        )
        .expect("static");
        r.register(Box::new(http_requests.clone())).expect("once");
        let store_bytes = IntGauge::new(
            "drover_store_file_bytes",
            "Bytes the store takes on disk (the embedded store's file, or the etcd member's database)",
        )
        .expect("static");
        r.register(Box::new(store_bytes.clone())).expect("once");
        let store_compactions = IntCounter::new(
            "drover_store_compactions_total",
            "Store compactions run (after store.compact_after_deletes deleted keys)",
        )
        .expect("static");
        r.register(Box::new(store_compactions.clone()))
            .expect("once");
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
            examined,
            placements: counter_vec(&r, "drover_placements_total", "Tasks placed, by policy", &["policy"]),
            preemptions,
            reschedules: counter_vec(
                &r,
                "drover_task_reschedules_total",
                "Tasks requeued for another attempt, by reason (restart, lost, preempted, drained)",
                &["reason"],
            ),
            node_failures,
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
