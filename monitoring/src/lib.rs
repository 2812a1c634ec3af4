//! Checks for Drover's monitoring files in `dashboards/`: the metrics
//! catalog (`METRICS.md`), the Grafana dashboards, the Prometheus scrape
//! config and alerting rules. The tests in `tests/` use these helpers:
//! `files.rs` checks the files on their own (and with `promtool`),
//! `live.rs` against a `drover dev` cluster scraped by a real Prometheus.

use std::path::PathBuf;

pub mod catalog;
pub mod dashboards;
pub mod exposition;
pub mod prom;
pub mod promql;

/// The repository's `dashboards/` directory.
pub fn dashboards_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("dashboards")
}
