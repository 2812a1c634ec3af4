//! `drover job run --wait`: follow a submitted job until it is settled, with
//! a progress bar of its tasks on stderr, then print how it ended.
//!
//! Settled means: a batch job in a terminal state (complete, failed,
//! stopped); a service job with every task running, or failed or stopped.
//! The job and its tasks are polled every [`POLL`]: cheap for the master,
//! and quick enough that a finished job is reported within a blink.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_api::client::ClientError;
use drover_api::views::{JobView, SubmitAnswer, SubmitOutcome, TaskView};
use drover_api::{JobId, JobState, JobType, TaskState};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::output::{self, emit, emit_json, span};
use crate::{error, task, Ctx};

/// How often the job is polled.
const POLL: Duration = Duration::from_millis(250);
/// How long the master may stay unreachable (or answer 5xx, as during a
/// leader change) before waiting gives up.
const GIVE_UP: Duration = Duration::from_secs(30);

/// `-o json` output of `job run --wait`: the submission's outcome and the
/// job and its tasks as they were when it settled.
#[derive(Debug, Serialize)]
struct WaitReport {
    outcome: SubmitOutcome,
    job: JobView,
    tasks: Vec<TaskView>,
}

/// Waits for the submitted job and reports; the exit status is 0 when it
/// completed (or its services all run), 1 when it failed or was stopped.
pub async fn run(ctx: &Ctx, submitted: SubmitAnswer) -> anyhow::Result<u8> {
    let id = submitted.job.id.clone();
    let started = Instant::now();
    let bar = progress_bar(&submitted.job);
    let settled = tokio::select! {
        r = watch(ctx, &id, submitted.job.job_type, &bar) => r,
        // Only the waiting stops; the job goes on at the master.
        Ok(()) = tokio::signal::ctrl_c() => {
            bar.finish_and_clear();
            eprintln!("stopped waiting; job {id} goes on (drover job status {id})");
            return Ok(error::INTERRUPTED);
        }
    };
    bar.finish_and_clear();
    let (job, tasks) = settled?;
    let code = if succeeded(&job) {
        error::OK
    } else {
        error::FAILED
    };
    if ctx.json() {
        emit_json(&WaitReport {
            outcome: submitted.outcome,
            job,
            tasks,
        })?;
    } else {
        emit(&summary(&job, &tasks, started.elapsed()))?;
    }
    Ok(code)
}

/// Drawn on stderr, and hidden by indicatif when stderr is not a terminal,
/// so logs and pipes get only the summary.
fn progress_bar(job: &JobView) -> ProgressBar {
    let bar = ProgressBar::new(u64::from(job.total()));
    if let Ok(style) = ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(output::counts(&job.tasks));
    bar
}

/// Polls until the job is settled. Transient failures (no master, 5xx) are
/// retried for up to [`GIVE_UP`]; anything else (e.g. the job was purged:
/// 404) ends the wait.
async fn watch(
    ctx: &Ctx,
    id: &JobId,
    job_type: JobType,
    bar: &ProgressBar,
) -> Result<(JobView, Vec<TaskView>), ClientError> {
    let mut failing_since: Option<Instant> = None;
    loop {
        match fetch(ctx, id).await {
            Ok((job, tasks)) => {
                failing_since = None;
                show(bar, &tasks, job_type);
                if settled(&job, &tasks, job_type) {
                    return Ok((job, tasks));
                }
            }
            Err(e) if transient(&e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= GIVE_UP {
                    return Err(e);
                }
                bar.set_message(format!("(retrying: {e})"));
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn fetch(ctx: &Ctx, id: &JobId) -> Result<(JobView, Vec<TaskView>), ClientError> {
    let job = ctx.client.job(id).await?;
    let tasks = ctx.client.tasks(id).await?;
    Ok((job, tasks))
}

fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } => true,
        ClientError::Api { status, .. } => *status >= 500,
        _ => false,
    }
}

/// Bar: finished tasks (batch) or running tasks (service) of all tasks;
/// message: the counts by state (of the same task list, so that the two agree).
fn show(bar: &ProgressBar, tasks: &[TaskView], job_type: JobType) {
    let done = match job_type {
        JobType::Batch => tasks.iter().filter(|t| t.state.is_terminal()).count(),
        JobType::Service => tasks
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .count(),
    };
    bar.set_length(tasks.len() as u64);
    bar.set_position(done as u64);
    let mut message = output::counts(&by_state(tasks));
    // Why tasks wait is what a person watching a stuck bar wants to know.
    if let Some(why) = tasks.iter().find_map(|t| t.waiting.as_deref()) {
        message.push_str(&format!(" (waiting: {why})"));
    }
    bar.set_message(message);
}

fn by_state(tasks: &[TaskView]) -> BTreeMap<TaskState, u32> {
    let mut counts = BTreeMap::new();
    for t in tasks {
        *counts.entry(t.state).or_insert(0) += 1;
    }
    counts
}

fn settled(job: &JobView, tasks: &[TaskView], job_type: JobType) -> bool {
    if job.state.is_terminal() {
        return true;
    }
    job_type == JobType::Service
        && !tasks.is_empty()
        && tasks.iter().all(|t| t.state == TaskState::Running)
}

/// Complete, or (a service) running.
fn succeeded(job: &JobView) -> bool {
    matches!(job.state, JobState::Complete | JobState::Running)
}

/// How the job ended; when it failed, a table of the tasks that did not
/// succeed, with their latest attempt's exit code and reason.
fn summary(job: &JobView, tasks: &[TaskView], took: Duration) -> String {
    let counts = output::counts(&by_state(tasks));
    match job.state {
        JobState::Complete => format!("job {} complete: {counts} in {}\n", job.id, span(took)),
        JobState::Running => format!(
            "job {} running: all {} running after {}\n",
            job.id,
            output::plural(tasks.len() as u64, "task"),
            span(took)
        ),
        state => {
            let mut text = format!("job {} {state}: {counts}\n", job.id);
            let broken: Vec<TaskView> = tasks
                .iter()
                .filter(|t| {
                    matches!(
                        t.state,
                        TaskState::Dead
                            | TaskState::Failed
                            | TaskState::Killed
                            | TaskState::Lost
                            | TaskState::Cancelled
                    )
                })
                .cloned()
                .collect();
            if !broken.is_empty() {
                text.push('\n');
                text.push_str(&task::table(&broken, output::now_ms()));
            }
            text
        }
    }
}
