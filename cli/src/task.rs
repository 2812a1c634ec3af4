//! `drover task ls | status | logs`.

use std::io::Write;

use drover_api::client::LogStream;
use drover_api::views::{AllocView, TaskView};
use drover_api::{JobId, TaskId};

use crate::args::TaskCommand;
use crate::output::{self, ago, emit, emit_json, fields, Table};
use crate::{error, Ctx};

pub async fn run(ctx: &Ctx, command: TaskCommand) -> anyhow::Result<u8> {
    match command {
        TaskCommand::Ls { job } => list(ctx, &job).await,
        TaskCommand::Status { task } => status(ctx, &task).await,
        TaskCommand::Logs {
            task,
            follow,
            stderr,
        } => logs(ctx, &task, follow, stderr).await,
    }
}

async fn list(ctx: &Ctx, job: &JobId) -> anyhow::Result<u8> {
    let tasks = ctx.client.tasks(job).await?;
    if ctx.json() {
        emit_json(&tasks)?;
    } else {
        emit(&table(&tasks, output::now_ms()))?;
    }
    Ok(error::OK)
}

/// One row per task: where its latest attempt ran and how it ended.
pub fn table(tasks: &[TaskView], now: u64) -> String {
    let mut t = Table::new(&[
        "TASK", "STATE", "NODE", "ATTEMPT", "EXIT", "UPDATED", "REASON",
    ]);
    for task in tasks {
        let latest = task.latest();
        t.row(vec![
            task.id.to_string(),
            task.state.to_string(),
            output::or_dash(latest.map(|a| &a.node)),
            output::or_dash(latest.map(|a| a.id.attempt)),
            latest.map_or_else(|| "-".to_string(), exit_of),
            ago(task.history.last().map_or(0, |h| h.at_unix_ms), now),
            reason_of(task),
        ]);
    }
    t.render()
}

/// Why a task is where it is; for a pending task, why no node takes it.
pub fn reason_of(task: &TaskView) -> String {
    match &task.waiting {
        Some(w) => format!("waiting: {w}"),
        None => task.reason.clone(),
    }
}

/// "0", "1", "signal 9", or "-" while it runs.
pub fn exit_of(alloc: &AllocView) -> String {
    match (alloc.exit_code, alloc.signal) {
        (Some(code), _) => code.to_string(),
        (None, Some(sig)) => format!("signal {sig}"),
        (None, None) => "-".to_string(),
    }
}

async fn status(ctx: &Ctx, id: &TaskId) -> anyhow::Result<u8> {
    let task = ctx.client.task(id).await?;
    if ctx.json() {
        emit_json(&task)?;
    } else {
        emit(&status_text(&task, output::now_ms()))?;
    }
    Ok(error::OK)
}

/// The task, a table of its attempts, and its history.
fn status_text(task: &TaskView, now: u64) -> String {
    let mut f = vec![
        ("task", task.id.to_string()),
        ("state", task.state.to_string()),
        ("reason", task.reason.clone()),
        (
            "job",
            format!("{} (version {})", task.id.job, task.job_version),
        ),
        ("restarts", task.restarts.to_string()),
    ];
    if let Some(w) = &task.waiting {
        f.push(("waiting", w.clone()));
    }
    let mut text = fields(&f);
    if !task.attempts.is_empty() {
        text.push('\n');
        text.push_str(&attempts_table(&task.attempts, now));
    }
    let mut h = Table::new(&["WHEN", "STATE", "REASON"]);
    for step in &task.history {
        h.row(vec![
            ago(step.at_unix_ms, now),
            step.state.to_string(),
            step.reason.to_string(),
        ]);
    }
    text.push('\n');
    text.push_str(&h.render());
    text
}

fn attempts_table(attempts: &[AllocView], now: u64) -> String {
    let mut t = Table::new(&[
        "ATTEMPT", "NODE", "STATE", "EXIT", "CPU", "MEMORY", "GPUS", "STARTED", "ENDED", "REASON",
    ]);
    for a in attempts {
        let first = a.history.first();
        let last = a.history.last();
        let ended = match last {
            Some(step) if a.state.is_terminal() => ago(step.at_unix_ms, now),
            _ => "-".to_string(),
        };
        t.row(vec![
            a.id.to_string(),
            a.node.to_string(),
            a.state.to_string(),
            exit_of(a),
            output::cpu(a.cpu_millis),
            output::mem(a.memory_bytes),
            output::gpu_list(&a.gpus),
            ago(first.map_or(0, |s| s.at_unix_ms), now),
            ended,
            last.map_or_else(String::new, |s| s.reason.to_string()),
        ]);
    }
    t.render()
}

/// Copies the log to stdout as it arrives. With `follow` it goes on until
/// the task's attempt ends or the user presses Ctrl-C (whose default
/// action, ending the process, is what a reader of a log wants).
async fn logs(ctx: &Ctx, id: &TaskId, follow: bool, stderr: bool) -> anyhow::Result<u8> {
    let stream = if stderr {
        LogStream::Stderr
    } else {
        LogStream::Stdout
    };
    let mut reader = ctx.client.logs(id, stream, 0, follow).await?;
    let mut out = std::io::stdout().lock();
    while let Some(bytes) = reader.chunk().await? {
        out.write_all(&bytes)?;
        // Flushed per chunk so that `--follow` shows lines as they come.
        out.flush()?;
    }
    Ok(error::OK)
}
