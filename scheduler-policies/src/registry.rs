//! Policies by name, as the master config and job specs select them.

use drover_api::policy::UnknownPolicy;
use drover_api::PolicyKind;

use crate::{ElasticSharding, LeastLoaded, Policy, Priority, RoundRobin};

/// A fresh instance of a built-in policy.
pub fn build(kind: PolicyKind) -> Box<dyn Policy> {
    match kind {
        PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
        PolicyKind::LeastLoaded => Box::new(LeastLoaded),
        PolicyKind::Priority => Box::new(Priority),
        PolicyKind::ElasticSharding => Box::new(ElasticSharding),
    }
}

/// A fresh instance of the built-in policy called `name`.
pub fn by_name(name: &str) -> Result<Box<dyn Policy>, UnknownPolicy> {
    Ok(build(name.parse()?))
}

/// The names of every built-in policy.
pub fn names() -> [&'static str; 4] {
    PolicyKind::ALL.map(PolicyKind::name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_name_builds_the_policy_of_that_name() {
        for name in names() {
            assert_eq!(by_name(name).unwrap().name(), name);
        }
        assert!(by_name("random").is_err());
    }
}
