//! The Drover master: REST API, cluster state, scheduler loop, liveness and
//! store backends (DESIGN §2, §3, §5-§10).

pub mod auth;
pub mod clock;
pub mod config;
pub mod core;
pub mod ha;
pub mod harness;
pub mod http;
pub mod identity;
pub mod lifecycle;
pub mod logs;
pub mod metrics;
pub mod model;
pub mod role;
pub mod server;
pub mod state;
pub mod store;
pub mod view;

/// The placement policies this master can run, by name.
pub fn policy_names() -> Vec<&'static str> {
    drover_api::PolicyKind::ALL
        .iter()
        .map(|p| p.name())
        .collect()
}
