//! The Drover master: REST API, cluster state, scheduler loop, liveness and
//! store backends (DESIGN §2, §3, §5-§10).

pub mod store;

/// The placement policies this master can run, by name.
pub fn policy_names() -> Vec<&'static str> {
    drover_api::PolicyKind::ALL.iter().map(|p| p.name()).collect()
}
