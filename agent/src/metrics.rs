//! Agent metrics (DESIGN §9), served at `/metrics` on the log server.
//!
//! Per-alloc series (`{alloc="<job>/<index>/<attempt>"}`) exist while the
//! alloc runs on this node: call [`AgentMetrics::remove_alloc`] when it ends,
//! so a node's series stay bounded by what it runs.
//!
//! The `drover_agent_node_*` gauges describe the whole node, for per-node
//! dashboards: each agent is its own scrape target, so the target's
//! `instance` label says which node. `dashboards/METRICS.md` is the catalog.

use drover_api::protocol::{NodeResources, NodeUsage};
use drover_api::{AllocId, AllocState};
use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Debug, Clone)]
pub struct AgentMetrics {
    pub registry: Registry,
    /// `drover_agent_allocs{state}`: allocs on this node by state.
    pub allocs: IntGaugeVec,
    /// `drover_agent_alloc_cpu_seconds_total{alloc}`: CPU time used.
    pub alloc_cpu_seconds: CounterVec,
    /// `drover_agent_alloc_memory_bytes{alloc}`: resident memory.
    pub alloc_memory: GaugeVec,
    /// `drover_agent_gpu_utilization{gpu}`: 0..1, by device index.
    pub gpu_utilization: GaugeVec,
    /// `drover_agent_node_cpu_capacity_cores`: CPUs this node reports.
    pub node_cpu_capacity: Gauge,
    /// `drover_agent_node_cpu_usage_cores`: CPUs busy, whoever uses them.
    pub node_cpu_usage: Gauge,
    /// `drover_agent_node_memory_capacity_bytes`: memory this node reports.
    pub node_memory_capacity: Gauge,
    /// `drover_agent_node_memory_used_bytes`: memory in use on the node.
    pub node_memory_used: Gauge,
    /// `drover_agent_node_gpus`: GPUs this node reports.
    pub node_gpus: IntGauge,
    /// `drover_agent_disk_write_errors_total{what}`: writes under the data
    /// dir that failed (a full disk): `log`, a task's output cut; `state`,
    /// the agent's own records.
    pub disk_write_errors: IntCounterVec,
}

/// The `what` values of `drover_agent_disk_write_errors_total`.
pub const DISK_WRITE_KINDS: [&str; 2] = ["log", "state"];

fn gauge(r: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).expect("static metric definition");
    r.register(Box::new(g.clone())).expect("once");
    g
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let allocs = IntGaugeVec::new(
            Opts::new("drover_agent_allocs", "Allocations on this node by state"),
            &["state"],
        )
        .expect("static metric definition");
        r.register(Box::new(allocs.clone())).expect("once");
        let alloc_cpu_seconds = CounterVec::new(
            Opts::new(
                "drover_agent_alloc_cpu_seconds_total",
                "CPU time used by an allocation's processes, in seconds",
            ),
            &["alloc"],
        )
        .expect("static metric definition");
        r.register(Box::new(alloc_cpu_seconds.clone()))
            .expect("once");
        let alloc_memory = GaugeVec::new(
            Opts::new(
                "drover_agent_alloc_memory_bytes",
                "Resident memory of an allocation's processes, in bytes",
            ),
            &["alloc"],
        )
        .expect("static metric definition");
        r.register(Box::new(alloc_memory.clone())).expect("once");
        let gpu_utilization = GaugeVec::new(
            Opts::new(
                "drover_agent_gpu_utilization",
                "Fraction of time (0 to 1) a GPU was busy over the last sample period, by device index",
            ),
            &["gpu"],
        )
        .expect("static metric definition");
        r.register(Box::new(gpu_utilization.clone())).expect("once");
        let node_gpus = IntGauge::new("drover_agent_node_gpus", "GPUs this node reports")
            .expect("static metric definition");
        r.register(Box::new(node_gpus.clone())).expect("once");
        let disk_write_errors = IntCounterVec::new(
            Opts::new(
                "drover_agent_disk_write_errors_total",
                "Writes under the agent's data dir that failed, by what was written (log: a task's output was cut, counted when the task ends; state: the agent's own records)",
            ),
            &["what"],
        )
        .expect("static metric definition");
        r.register(Box::new(disk_write_errors.clone()))
            .expect("once");
        for what in DISK_WRITE_KINDS {
            disk_write_errors.with_label_values(&[what]);
        }
        for state in AllocState::ALL.iter() {
            allocs.with_label_values(&[state.name()]).set(0);
        }
        AgentMetrics {
            allocs,
            alloc_cpu_seconds,
            alloc_memory,
            gpu_utilization,
            node_cpu_capacity: gauge(
                &r,
                "drover_agent_node_cpu_capacity_cores",
                "CPUs this node reports to the master, in cores",
            ),
            node_cpu_usage: gauge(
                &r,
                "drover_agent_node_cpu_usage_cores",
                "CPUs busy on this node over the last sample period (tasks and everything else), in cores",
            ),
            node_memory_capacity: gauge(
                &r,
                "drover_agent_node_memory_capacity_bytes",
                "Memory this node reports to the master, in bytes",
            ),
            node_memory_used: gauge(
                &r,
                "drover_agent_node_memory_used_bytes",
                "Memory in use on this node (tasks and everything else), in bytes",
            ),
            node_gpus,
            disk_write_errors,
            registry: r,
        }
    }

    /// Counts `n` failed writes of `what` (`log` or `state`).
    pub fn count_disk_write_errors(&self, what: &str, n: u64) {
        self.disk_write_errors.with_label_values(&[what]).inc_by(n);
    }

    /// Sets the node's capacity gauges from what it reports to the master.
    pub fn set_capacity(&self, resources: &NodeResources) {
        self.node_cpu_capacity
            .set(resources.cpu_millis as f64 / 1000.0);
        self.node_memory_capacity.set(resources.memory_bytes as f64);
        self.node_gpus
            .set(i64::try_from(resources.gpus.len()).unwrap_or(i64::MAX));
    }

    /// Sets the node's usage gauges from a measurement.
    pub fn set_usage(&self, usage: &NodeUsage) {
        self.node_cpu_usage.set(usage.cpu_millis as f64 / 1000.0);
        self.node_memory_used.set(usage.memory_bytes as f64);
    }

    /// Sets `drover_agent_allocs` from a count per state; states not given
    /// are 0.
    pub fn set_alloc_states(&self, counts: impl IntoIterator<Item = (AllocState, usize)>) {
        let mut all = vec![0i64; AllocState::ALL.len()];
        for (state, n) in counts {
            if let Some(i) = AllocState::ALL.iter().position(|s| *s == state) {
                all[i] += i64::try_from(n).unwrap_or(i64::MAX);
            }
        }
        for (state, n) in AllocState::ALL.iter().zip(all) {
            self.allocs.with_label_values(&[state.name()]).set(n);
        }
    }

    /// Records an alloc's observed usage: total CPU seconds so far (the
    /// counter follows it; a smaller total, after its processes were
    /// replaced, restarts the counter) and resident memory now.
    pub fn observe_alloc(&self, alloc: &AllocId, cpu_seconds_total: f64, memory_bytes: u64) {
        let label = alloc.to_string();
        let cpu = self.alloc_cpu_seconds.with_label_values(&[&label]);
        let total = if cpu_seconds_total.is_finite() {
            cpu_seconds_total.max(0.0)
        } else {
            0.0
        };
        let now = cpu.get();
        if total >= now {
            cpu.inc_by(total - now);
        } else {
            cpu.reset();
            cpu.inc_by(total);
        }
        self.alloc_memory
            .with_label_values(&[&label])
            .set(memory_bytes as f64);
    }

    /// Drops a finished alloc's series.
    pub fn remove_alloc(&self, alloc: &AllocId) {
        let label = alloc.to_string();
        let _ = self.alloc_cpu_seconds.remove_label_values(&[&label]);
        let _ = self.alloc_memory.remove_label_values(&[&label]);
    }

    /// GPU `index` was busy `ratio` (0..1) of the last sample period.
    pub fn set_gpu_utilization(&self, index: u32, ratio: f64) {
        self.gpu_utilization
            .with_label_values(&[&index.to_string()])
            .set(ratio.clamp(0.0, 1.0));
    }

    /// The Prometheus text exposition of every agent metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(s: &str) -> AllocId {
        s.parse().unwrap()
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn every_family_is_rendered_with_help_once_set() {
        let m = AgentMetrics::new();
        m.set_alloc_states([(AllocState::Running, 2), (AllocState::Failed, 1)]);
        m.observe_alloc(&alloc("render/0/1"), 1.5, 4096);
        m.set_gpu_utilization(0, 0.75);
        let text = m.render();
        for family in [
            "drover_agent_allocs",
            "drover_agent_alloc_cpu_seconds_total",
            "drover_agent_alloc_memory_bytes",
            "drover_agent_gpu_utilization",
            "drover_agent_disk_write_errors_total",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family} missing:\n{text}"
            );
        }
        assert!(text.contains("# TYPE drover_agent_alloc_cpu_seconds_total counter"));
        assert_eq!(
            line(&text, "drover_agent_allocs{state=\"running\"}"),
            Some("drover_agent_allocs{state=\"running\"} 2")
        );
        assert_eq!(
            line(&text, "drover_agent_allocs{state=\"assigned\"}"),
            Some("drover_agent_allocs{state=\"assigned\"} 0")
        );
        assert_eq!(
            line(&text, "drover_agent_alloc_cpu_seconds_total{"),
            Some("drover_agent_alloc_cpu_seconds_total{alloc=\"render/0/1\"} 1.5")
        );
        assert_eq!(
            line(&text, "drover_agent_alloc_memory_bytes{"),
            Some("drover_agent_alloc_memory_bytes{alloc=\"render/0/1\"} 4096")
        );
        assert_eq!(
            line(&text, "drover_agent_gpu_utilization{"),
            Some("drover_agent_gpu_utilization{gpu=\"0\"} 0.75")
        );
        assert!(text.contains("# TYPE drover_agent_disk_write_errors_total counter"));
        // Both kinds exist from the start, at 0, so a rate() has a series.
        assert_eq!(
            line(&text, "drover_agent_disk_write_errors_total{what=\"log\"}"),
            Some("drover_agent_disk_write_errors_total{what=\"log\"} 0")
        );
        m.count_disk_write_errors("state", 2);
        assert_eq!(
            line(
                &m.render(),
                "drover_agent_disk_write_errors_total{what=\"state\"}"
            ),
            Some("drover_agent_disk_write_errors_total{what=\"state\"} 2")
        );
    }

    #[test]
    fn node_gauges_show_capacity_and_usage_in_base_units() {
        use drover_api::protocol::GpuDevice;
        let m = AgentMetrics::new();
        let gpu = |index| GpuDevice {
            index,
            uuid: format!("FAKE-{index}"),
            model: "Fake".into(),
            memory_bytes: 1 << 30,
        };
        m.set_capacity(&NodeResources {
            cpu_millis: 4500,
            memory_bytes: 8 << 30,
            gpus: vec![gpu(0), gpu(1)],
        });
        m.set_usage(&NodeUsage {
            cpu_millis: 1250,
            memory_bytes: 3 << 30,
            allocs: Default::default(),
        });
        let text = m.render();
        for (family, value) in [
            ("drover_agent_node_cpu_capacity_cores", "4.5"),
            ("drover_agent_node_cpu_usage_cores", "1.25"),
            ("drover_agent_node_memory_capacity_bytes", "8589934592"),
            ("drover_agent_node_memory_used_bytes", "3221225472"),
            ("drover_agent_node_gpus", "2"),
        ] {
            assert_eq!(
                line(&text, &format!("{family} ")),
                Some(format!("{family} {value}").as_str()),
                "{text}"
            );
            assert!(text.contains(&format!("# HELP {family} ")), "{text}");
        }
    }

    #[test]
    fn cpu_counter_follows_observed_totals() {
        let m = AgentMetrics::new();
        let a = alloc("web/3/2");
        m.observe_alloc(&a, 2.0, 1);
        m.observe_alloc(&a, 3.5, 1);
        assert_eq!(
            m.alloc_cpu_seconds.with_label_values(&["web/3/2"]).get(),
            3.5
        );
        m.observe_alloc(&a, 1.0, 1);
        assert_eq!(
            m.alloc_cpu_seconds.with_label_values(&["web/3/2"]).get(),
            1.0
        );
        m.observe_alloc(&a, f64::NAN, 1);
        assert_eq!(
            m.alloc_cpu_seconds.with_label_values(&["web/3/2"]).get(),
            0.0
        );
    }

    #[test]
    fn remove_alloc_drops_its_series() {
        let m = AgentMetrics::new();
        m.observe_alloc(&alloc("a/0/1"), 1.0, 10);
        m.observe_alloc(&alloc("b/0/1"), 1.0, 10);
        m.remove_alloc(&alloc("a/0/1"));
        m.remove_alloc(&alloc("never/0/1"));
        let text = m.render();
        assert!(!text.contains("a/0/1"), "{text}");
        assert!(text.contains("b/0/1"), "{text}");
    }
}
