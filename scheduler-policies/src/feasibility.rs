//! Feasibility: can this node take this task, and if not, why not — in words
//! a user can act on. Shared by every policy and by `POST /v1/jobs/plan`.

use std::collections::BTreeMap;
use std::fmt;

use crate::view::{Demand, NodeStatus, NodeView};

/// The first reason a node cannot take a task. The order of the variants is
/// the order of the checks: static properties of the node first, free
/// resources last, so "insufficient memory" is only said of nodes that would
/// otherwise qualify.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Misfit {
    Down,
    NotResponding,
    Draining,
    Ineligible,
    MissingLabel { key: String, value: String },
    NoGpuModel(String),
    TooFewGpus,
    TooSmallCpu,
    TooSmallMemory,
    InsufficientCpu,
    InsufficientMemory,
    InsufficientGpus,
}

impl Misfit {
    /// True when the node could take the task if other work made room.
    pub fn is_capacity(&self) -> bool {
        matches!(
            self,
            Misfit::InsufficientCpu | Misfit::InsufficientMemory | Misfit::InsufficientGpus
        )
    }
}

impl fmt::Display for Misfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Misfit::Down => f.write_str("down"),
            Misfit::NotResponding => f.write_str("not responding"),
            Misfit::Draining => f.write_str("draining"),
            Misfit::Ineligible => f.write_str("ineligible"),
            Misfit::MissingLabel { key, value } => write!(f, "label {key}={value} not matched"),
            Misfit::NoGpuModel(model) => write!(f, "no GPU of model {model}"),
            Misfit::TooFewGpus => f.write_str("too few GPUs in total"),
            Misfit::TooSmallCpu => f.write_str("cpu capacity too small"),
            Misfit::TooSmallMemory => f.write_str("memory capacity too small"),
            Misfit::InsufficientCpu => f.write_str("insufficient cpu"),
            Misfit::InsufficientMemory => f.write_str("insufficient memory"),
            Misfit::InsufficientGpus => f.write_str("insufficient GPUs"),
        }
    }
}

/// True when GPU `model` satisfies the task's model constraint: the
/// reported model contains the wanted text, so `H100` matches what NVML
/// reports, `NVIDIA H100 80GB HBM3`.
pub fn gpu_model_matches(demand: &Demand, model: &str) -> bool {
    demand
        .gpu_model
        .as_deref()
        .is_none_or(|want| model.contains(want))
}

/// Checks what no amount of freed capacity can change: status, labels, GPU
/// model and the node's total size.
pub fn static_misfit(node: &NodeView, demand: &Demand) -> Option<Misfit> {
    match node.status {
        NodeStatus::Ready => {}
        NodeStatus::Suspect => return Some(Misfit::NotResponding),
        NodeStatus::Draining => return Some(Misfit::Draining),
        NodeStatus::Ineligible => return Some(Misfit::Ineligible),
        NodeStatus::Down => return Some(Misfit::Down),
    }
    for (key, value) in &demand.labels {
        if node.labels.get(key) != Some(value) {
            return Some(Misfit::MissingLabel {
                key: key.clone(),
                value: value.clone(),
            });
        }
    }
    if demand.gpus > 0 {
        let matching = node
            .gpus
            .iter()
            .filter(|g| gpu_model_matches(demand, &g.model))
            .count();
        if matching == 0 {
            if let Some(model) = &demand.gpu_model {
                return Some(Misfit::NoGpuModel(model.clone()));
            }
        }
        if (matching as u64) < u64::from(demand.gpus) {
            return Some(Misfit::TooFewGpus);
        }
    }
    if node.cpu_millis < demand.cpu_millis {
        return Some(Misfit::TooSmallCpu);
    }
    if node.memory_bytes < demand.memory_bytes {
        return Some(Misfit::TooSmallMemory);
    }
    None
}

/// Counts reasons over nodes and says them the way an operator reads them:
/// most common first, `"3 nodes: insufficient memory, 1 node: draining"`.
#[derive(Debug, Default)]
pub struct Explanation {
    counts: BTreeMap<Misfit, usize>,
}

impl Explanation {
    pub fn add(&mut self, misfit: Misfit) {
        *self.counts.entry(misfit).or_default() += 1;
    }

    pub fn render(&self) -> String {
        if self.counts.is_empty() {
            return "no nodes in the cluster".to_string();
        }
        let mut parts: Vec<(&Misfit, usize)> = self.counts.iter().map(|(m, n)| (m, *n)).collect();
        // Stable sort: equal counts keep the check order of `Misfit`.
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        parts
            .iter()
            .map(|(m, n)| format!("{n} node{}: {m}", if *n == 1 { "" } else { "s" }))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::GpuView;
    use drover_api::NodeId;

    fn node(status: NodeStatus) -> NodeView {
        NodeView {
            id: NodeId::new("n1").unwrap(),
            status,
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            gpus: vec![GpuView {
                index: 0,
                model: "A100".into(),
            }],
            labels: [("zone".to_string(), "a".to_string())].into(),
            utilisation: 0.0,
        }
    }

    #[test]
    fn a_ready_node_with_matching_labels_and_gpu_model_is_statically_feasible() {
        let demand = Demand {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            gpus: 1,
            gpu_model: Some("A100".into()),
            labels: [("zone".to_string(), "a".to_string())].into(),
        };
        assert_eq!(static_misfit(&node(NodeStatus::Ready), &demand), None);
    }

    #[test]
    fn node_status_is_checked_before_anything_else() {
        let demand = Demand {
            cpu_millis: 1_000_000,
            ..Demand::default()
        };
        assert_eq!(
            static_misfit(&node(NodeStatus::Draining), &demand),
            Some(Misfit::Draining)
        );
        assert_eq!(
            static_misfit(&node(NodeStatus::Down), &demand),
            Some(Misfit::Down)
        );
        assert_eq!(
            static_misfit(&node(NodeStatus::Ready), &demand),
            Some(Misfit::TooSmallCpu)
        );
    }

    #[test]
    fn a_gpu_model_constraint_matches_part_of_the_reported_name() {
        let demand = Demand {
            gpus: 1,
            gpu_model: Some("A100".into()),
            ..Demand::default()
        };
        let mut n = node(NodeStatus::Ready);
        n.gpus[0].model = "NVIDIA A100-SXM4-80GB".into();
        assert_eq!(static_misfit(&n, &demand), None);
        n.gpus[0].model = "NVIDIA H100 80GB HBM3".into();
        assert!(static_misfit(&n, &demand).is_some());
    }

    #[test]
    fn a_wrong_gpu_model_is_named_in_the_reason() {
        let demand = Demand {
            gpus: 1,
            gpu_model: Some("H100".into()),
            ..Demand::default()
        };
        let misfit = static_misfit(&node(NodeStatus::Ready), &demand).unwrap();
        assert_eq!(misfit.to_string(), "no GPU of model H100");
    }

    #[test]
    fn explanations_list_the_most_common_reason_first() {
        let mut e = Explanation::default();
        e.add(Misfit::Draining);
        for _ in 0..3 {
            e.add(Misfit::InsufficientMemory);
        }
        assert_eq!(e.render(), "3 nodes: insufficient memory, 1 node: draining");
        assert_eq!(Explanation::default().render(), "no nodes in the cluster");
    }
}
