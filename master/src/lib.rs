//! The Drover master: REST API, cluster state, scheduler loop, liveness and
//! store backends. Not built yet; see the master issue. The crate exists so
//! that the workspace layout of DESIGN §1 is in place and later work slots in.

/// The placement policies this master can run, by name.
pub fn policy_names() -> Vec<&'static str> {
    drover_api::PolicyKind::ALL
        .iter()
        .map(|p| p.name())
        .collect()
}
