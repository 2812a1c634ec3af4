//! `drover cluster status`.

use std::collections::BTreeMap;

use drover_api::views::ClusterSummary;
use drover_api::{JobState, NodeState, TaskState};

use crate::args::ClusterCommand;
use crate::output::{cpu, emit, emit_json, fields, mem, percent, plural};
use crate::{error, Ctx};

pub async fn run(ctx: &Ctx, command: ClusterCommand) -> anyhow::Result<u8> {
    match command {
        ClusterCommand::Status => status(ctx).await,
    }
}

async fn status(ctx: &Ctx) -> anyhow::Result<u8> {
    let summary = ctx.client.cluster().await?;
    if ctx.json() {
        emit_json(&summary)?;
    } else {
        emit(&status_text(&summary))?;
    }
    Ok(error::OK)
}

fn status_text(s: &ClusterSummary) -> String {
    let node_states: Vec<&str> = NodeState::ALL.iter().map(|s| s.name()).collect();
    let job_states: Vec<&str> = JobState::ALL.iter().map(|s| s.name()).collect();
    let task_states: Vec<&str> = TaskState::ALL.iter().map(|s| s.name()).collect();
    let (cap, used) = (&s.capacity, &s.allocated);
    fields(&[
        ("leader", s.leader.clone()),
        ("store", s.store_backend.clone()),
        ("nodes", in_order(&s.nodes, &node_states)),
        ("jobs", in_order(&s.jobs, &job_states)),
        ("tasks", in_order(&s.tasks, &task_states)),
        (
            "queue",
            format!("{} waiting", plural(s.queue_depth, "task")),
        ),
        (
            "cpu",
            format!(
                "{} of {} allocated ({})",
                cpu(used.cpu_millis),
                cpu(cap.cpu_millis),
                percent(used.cpu_millis, cap.cpu_millis)
            ),
        ),
        (
            "memory",
            format!(
                "{} of {} allocated ({})",
                mem(used.memory_bytes),
                mem(cap.memory_bytes),
                percent(used.memory_bytes, cap.memory_bytes)
            ),
        ),
        (
            "gpus",
            format!(
                "{} of {} allocated ({})",
                used.gpus,
                cap.gpus,
                percent(used.gpus, cap.gpus)
            ),
        ),
    ])
}

/// "2 ready, 1 down": counts in lifecycle order (the map's own order is
/// alphabetical), zeros left out; states this CLI does not know come last.
fn in_order(counts: &BTreeMap<String, u64>, order: &[&str]) -> String {
    let known = order.iter().filter_map(|s| counts.get_key_value(*s));
    let unknown = counts.iter().filter(|(k, _)| !order.contains(&k.as_str()));
    let parts: Vec<String> = known
        .chain(unknown)
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_lifecycle_and_skip_zeros() {
        let m: BTreeMap<String, u64> = [("down", 1), ("draining", 0), ("ready", 2), ("new", 3)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        assert_eq!(
            in_order(&m, &["ready", "suspect", "draining", "down"]),
            "2 ready, 1 down, 3 new"
        );
        assert_eq!(in_order(&BTreeMap::new(), &["ready"]), "none");
    }
}
