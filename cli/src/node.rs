//! `drover node ls | status | drain`.

use std::collections::BTreeMap;
use std::time::Duration;

use drover_api::views::NodeView;
use drover_api::NodeId;

use crate::args::NodeCommand;
use crate::output::{self, ago, cpu, emit, emit_json, fields, mem, plural, Table};
use crate::{error, Ctx};

pub async fn run(ctx: &Ctx, command: NodeCommand) -> anyhow::Result<u8> {
    match command {
        NodeCommand::Ls => list(ctx).await,
        NodeCommand::Status { id } => status(ctx, &id).await,
        NodeCommand::Drain {
            id,
            deadline,
            disable,
        } => drain(ctx, &id, !disable, deadline).await,
        NodeCommand::Revoke { id } => revoke(ctx, &id).await,
    }
}

async fn list(ctx: &Ctx) -> anyhow::Result<u8> {
    let nodes = ctx.client.nodes().await?;
    if ctx.json() {
        emit_json(&nodes)?;
        return Ok(error::OK);
    }
    if nodes.is_empty() {
        emit("no nodes: start an agent (or `drover dev`)\n")?;
        return Ok(error::OK);
    }
    let now = output::now_ms();
    // Resource columns read "allocated/allocatable".
    let mut t = Table::new(&[
        "ID",
        "STATE",
        "HOSTNAME",
        "CPU",
        "MEMORY",
        "GPUS",
        "ALLOCS",
        "HEARTBEAT",
    ]);
    for n in &nodes {
        t.row(vec![
            n.id.to_string(),
            n.state.to_string(),
            n.desc.hostname.clone(),
            format!(
                "{}/{}",
                cpu(n.allocated.cpu_millis),
                cpu(n.allocatable.cpu_millis)
            ),
            format!(
                "{}/{}",
                mem(n.allocated.memory_bytes),
                mem(n.allocatable.memory_bytes)
            ),
            format!("{}/{}", n.allocated.gpus, n.allocatable.gpus),
            n.allocs.len().to_string(),
            ago(n.last_heartbeat_ms, now),
        ]);
    }
    emit(&t.render())?;
    Ok(error::OK)
}

async fn status(ctx: &Ctx, id: &NodeId) -> anyhow::Result<u8> {
    let node = ctx.client.node(id).await?;
    if ctx.json() {
        emit_json(&node)?;
    } else {
        emit(&status_text(&node, output::now_ms()))?;
    }
    Ok(error::OK)
}

/// The node's facts, a table of its resources, its GPUs and its allocs.
fn status_text(n: &NodeView, now: u64) -> String {
    let mut f = vec![
        ("node", n.id.to_string()),
        ("state", n.state.to_string()),
        ("hostname", n.desc.hostname.clone()),
        ("version", n.desc.version.clone()),
        ("registered", ago(n.registered_at_ms, now)),
        ("heartbeat", ago(n.last_heartbeat_ms, now)),
        ("log server", n.desc.log_addr.clone()),
    ];
    if let Some(d) = &n.drain {
        f.push((
            "drain",
            format!(
                "started {}, deadline {}",
                ago(d.started_at_ms, now),
                ago(d.deadline_ms, now)
            ),
        ));
    }
    f.push(("labels", pairs(&n.desc.labels)));
    if !n.desc.attributes.is_empty() {
        f.push(("attributes", pairs(&n.desc.attributes)));
    }
    let mut text = fields(&f);

    let mut r = Table::new(&["RESOURCE", "ALLOCATABLE", "ALLOCATED", "USAGE", "RESERVED"]);
    r.row(vec![
        "cpu".into(),
        cpu(n.allocatable.cpu_millis),
        cpu(n.allocated.cpu_millis),
        cpu(n.usage.cpu_millis),
        cpu(n.desc.reserved.cpu_millis),
    ]);
    r.row(vec![
        "memory".into(),
        mem(n.allocatable.memory_bytes),
        mem(n.allocated.memory_bytes),
        mem(n.usage.memory_bytes),
        mem(n.desc.reserved.memory_bytes),
    ]);
    r.row(vec![
        "gpus".into(),
        n.allocatable.gpus.to_string(),
        n.allocated.gpus.to_string(),
        "-".into(),
        "-".into(),
    ]);
    text.push('\n');
    text.push_str(&r.render());

    if !n.desc.resources.gpus.is_empty() {
        let mut g = Table::new(&["GPU", "MODEL", "MEMORY", "UUID"]);
        for gpu in &n.desc.resources.gpus {
            g.row(vec![
                gpu.index.to_string(),
                gpu.model.clone(),
                mem(gpu.memory_bytes),
                gpu.uuid.clone(),
            ]);
        }
        text.push('\n');
        text.push_str(&g.render());
    }
    if !n.allocs.is_empty() {
        let mut a = Table::new(&["ALLOC"]);
        for id in &n.allocs {
            a.row(vec![id.to_string()]);
        }
        text.push('\n');
        text.push_str(&a.render());
    }
    text
}

/// "zone=a, rack=3", or "-".
fn pairs(map: &BTreeMap<String, String>) -> String {
    if map.is_empty() {
        return "-".to_string();
    }
    map.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn drain(
    ctx: &Ctx,
    id: &NodeId,
    enable: bool,
    deadline: Option<Duration>,
) -> anyhow::Result<u8> {
    let node = ctx.client.drain(id, enable, deadline).await?;
    if ctx.json() {
        emit_json(&node)?;
    } else {
        emit(&drain_line(&node, output::now_ms()))?;
    }
    Ok(error::OK)
}

async fn revoke(ctx: &Ctx, id: &NodeId) -> anyhow::Result<u8> {
    let node = ctx.client.revoke_node(id).await?;
    if ctx.json() {
        emit_json(&node)?;
    } else {
        emit(&format!(
            "node {}: credential revoked, {} (its allocations are placed elsewhere)\n",
            node.id, node.state
        ))?;
    }
    Ok(error::OK)
}

/// "node n1: draining, deadline in 5m (2 allocs on it)" or "node n1: ready".
fn drain_line(n: &NodeView, now: u64) -> String {
    let allocs = plural(n.allocs.len() as u64, "alloc");
    match &n.drain {
        Some(d) => format!(
            "node {}: {}, deadline {} ({allocs} on it)\n",
            n.id,
            n.state,
            ago(d.deadline_ms, now)
        ),
        None => format!(
            "node {}: {}, not draining ({allocs} on it)\n",
            n.id, n.state
        ),
    }
}
