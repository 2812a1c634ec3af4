//! `drover job run | status | ls | stop | plan`.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use drover_api::client::SpecFormat;
use drover_api::views::{JobView, PlanAnswer, StopAnswer, SubmitAnswer, SubmitOutcome};
use drover_api::{JobId, JobSpec, JobState};

use crate::args::JobCommand;
use crate::output::{self, ago, emit, emit_json, fields, plural, Table};
use crate::{error, task, wait, Ctx};

pub async fn run(ctx: &Ctx, command: JobCommand) -> anyhow::Result<u8> {
    match command {
        JobCommand::Run { spec, wait, detach } => submit(ctx, &spec.file, wait && !detach).await,
        JobCommand::Status { id } => status(ctx, &id).await,
        JobCommand::Ls { state } => list(ctx, state).await,
        JobCommand::Stop { id, purge } => stop(ctx, &id, purge).await,
        JobCommand::Plan { spec } => plan(ctx, &spec.file).await,
    }
}

/// The spec's text and format: `-` is stdin (YAML, which JSON also is),
/// a `.json` name is JSON, anything else YAML.
fn read_spec(path: &Path) -> anyhow::Result<(String, SpecFormat)> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the job spec from stdin")?;
        return Ok((text, SpecFormat::Yaml));
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the job spec {}", path.display()))?;
    Ok((text, SpecFormat::from_path(path)))
}

async fn submit(ctx: &Ctx, file: &Path, wait: bool) -> anyhow::Result<u8> {
    let (text, format) = read_spec(file)?;
    let answer = ctx.client.submit(&text, format).await?;
    if wait {
        if !ctx.json() {
            emit(&submitted_line(&answer))?;
        }
        return wait::run(ctx, answer).await;
    }
    if ctx.json() {
        emit_json(&answer)?;
    } else {
        emit(&format!(
            "{}see it with: drover job status {}\n",
            submitted_line(&answer),
            answer.job.id
        ))?;
    }
    Ok(error::OK)
}

/// "job hello created (version 1, 2 tasks)".
pub fn submitted_line(answer: &SubmitAnswer) -> String {
    let job = &answer.job;
    let tasks = plural(u64::from(job.total()), "task");
    match answer.outcome {
        SubmitOutcome::Created => format!(
            "job {} created (version {}, {tasks})\n",
            job.id, job.version
        ),
        SubmitOutcome::Updated => {
            format!(
                "job {} updated to version {} ({tasks})\n",
                job.id, job.version
            )
        }
        SubmitOutcome::Unchanged => format!(
            "job {} unchanged (version {}, {})\n",
            job.id, job.version, job.state
        ),
    }
}

async fn status(ctx: &Ctx, id: &JobId) -> anyhow::Result<u8> {
    let job = ctx.client.job(id).await?;
    if ctx.json() {
        emit_json(&job)?;
        return Ok(error::OK);
    }
    let tasks = ctx.client.tasks(id).await?;
    let now = output::now_ms();
    let mut text = fields(&job_fields(&job, now));
    if !tasks.is_empty() {
        text.push('\n');
        text.push_str(&task::table(&tasks, now));
    }
    emit(&text)?;
    Ok(error::OK)
}

fn job_fields(job: &JobView, now: u64) -> Vec<(&'static str, String)> {
    let mut f = vec![
        ("job", job.id.to_string()),
        ("state", job.state.to_string()),
        ("type", job.job_type.to_string()),
        ("version", job.version.to_string()),
        ("priority", job.priority.to_string()),
        ("policy", job.policy.clone()),
        ("submitted", ago(job.submitted_at_ms, now)),
    ];
    if let Some(spec) = &job.spec {
        f.push(("command", command_line(&spec.command)));
        f.push(("resources", resources(spec)));
    }
    f.push((
        "tasks",
        format!("{} ({} total)", output::counts(&job.tasks), job.total()),
    ));
    f
}

/// The command as a shell would read it back: arguments with blanks or
/// quotes are quoted.
fn command_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
            if plain {
                a.clone()
            } else {
                format!("{a:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// "500m cpu, 256Mi memory, 1 gpu" per task.
fn resources(spec: &JobSpec) -> String {
    let r = &spec.resources;
    let mut text = format!(
        "{} cpu, {} memory",
        output::cpu(r.cpu.millis()),
        output::mem(r.memory.bytes())
    );
    if r.gpu > 0 {
        text.push_str(&format!(", {}", plural(u64::from(r.gpu), "gpu")));
    }
    text.push_str(" per task");
    text
}

async fn list(ctx: &Ctx, state: Option<JobState>) -> anyhow::Result<u8> {
    let jobs = ctx.client.jobs(state).await?;
    if ctx.json() {
        emit_json(&jobs)?;
        return Ok(error::OK);
    }
    if jobs.is_empty() {
        let what = state.map_or_else(|| "jobs".to_string(), |s| format!("{s} jobs"));
        emit(&format!("no {what}\n"))?;
        return Ok(error::OK);
    }
    let now = output::now_ms();
    let mut t = Table::new(&[
        "ID",
        "STATE",
        "TYPE",
        "VERSION",
        "PRIORITY",
        "OWNER",
        "SUBMITTED",
        "TASKS",
    ]);
    for j in &jobs {
        t.row(vec![
            j.id.to_string(),
            j.state.to_string(),
            j.job_type.to_string(),
            j.version.to_string(),
            j.priority.to_string(),
            j.owner.clone().unwrap_or_else(|| "-".to_string()),
            ago(j.submitted_at_ms, now),
            output::counts(&j.tasks),
        ]);
    }
    emit(&t.render())?;
    Ok(error::OK)
}

async fn stop(ctx: &Ctx, id: &JobId, purge: bool) -> anyhow::Result<u8> {
    let answer = ctx.client.stop(id, purge).await?;
    if ctx.json() {
        emit_json(&answer)?;
        return Ok(error::OK);
    }
    let line = match &answer {
        StopAnswer::Stopped(job) => {
            format!(
                "job {} {} ({})\n",
                job.id,
                job.state,
                output::counts(&job.tasks)
            )
        }
        StopAnswer::Purged { id, .. } => format!("job {id} stopped and purged\n"),
    };
    emit(&line)?;
    Ok(error::OK)
}

async fn plan(ctx: &Ctx, file: &Path) -> anyhow::Result<u8> {
    let (text, format) = read_spec(file)?;
    let answer = ctx.client.plan(&text, format).await?;
    if ctx.json() {
        emit_json(&answer)?;
    } else {
        emit(&plan_text(&answer))?;
    }
    Ok(error::OK)
}

/// A summary line, then a table per non-empty section: placements,
/// preemptions, waiting tasks.
fn plan_text(plan: &PlanAnswer) -> String {
    let mut text = format!(
        "{} would be placed, {} preempted, {} would wait\n",
        plural(plan.placements.len() as u64, "task"),
        plural(plan.preemptions.len() as u64, "alloc"),
        plural(plan.waiting.len() as u64, "task"),
    );
    if !plan.placements.is_empty() {
        let mut t = Table::new(&["TASK", "NODE", "GPUS"]);
        for p in &plan.placements {
            t.row(vec![
                p.task.to_string(),
                p.node.to_string(),
                output::gpu_list(&p.gpus),
            ]);
        }
        text.push('\n');
        text.push_str(&t.render());
    }
    if !plan.preemptions.is_empty() {
        let mut t = Table::new(&["PREEMPTED ALLOC", "FOR TASK"]);
        for p in &plan.preemptions {
            t.row(vec![p.victim.to_string(), p.for_task.to_string()]);
        }
        text.push('\n');
        text.push_str(&t.render());
    }
    if !plan.waiting.is_empty() {
        let mut t = Table::new(&["WAITING TASK", "REASON"]);
        for w in &plan.waiting {
            t.row(vec![w.task.to_string(), w.reason.clone()]);
        }
        text.push('\n');
        text.push_str(&t.render());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_quote_only_the_arguments_that_need_it() {
        let argv: Vec<String> = ["/bin/sh", "-c", "echo hi", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(command_line(&argv), r#"/bin/sh -c "echo hi" """#);
    }

    #[test]
    fn a_plan_lists_placements_preemptions_and_waiting_tasks() {
        use drover_api::views::{PlannedPlacement, PlannedPreemption, PlannedWait};
        let plan = PlanAnswer {
            placements: vec![PlannedPlacement {
                task: "train/0".parse().unwrap(),
                node: "gpu-1".parse().unwrap(),
                gpus: vec![0, 3],
            }],
            preemptions: vec![PlannedPreemption {
                victim: "batch/4/2".parse().unwrap(),
                for_task: "train/0".parse().unwrap(),
            }],
            waiting: vec![PlannedWait {
                task: "train/1".parse().unwrap(),
                reason: "2 nodes: insufficient GPUs".into(),
            }],
        };
        assert_eq!(
            plan_text(&plan),
            "1 task would be placed, 1 alloc preempted, 1 task would wait\n\n\
             TASK     NODE   GPUS\n\
             train/0  gpu-1  0,3\n\n\
             PREEMPTED ALLOC  FOR TASK\n\
             batch/4/2        train/0\n\n\
             WAITING TASK  REASON\n\
             train/1       2 nodes: insufficient GPUs\n"
        );
    }

    #[test]
    fn a_missing_spec_file_names_its_path() {
        let err = read_spec(Path::new("/nonexistent/job.yaml")).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("cannot read the job spec /nonexistent/job.yaml: "),
            "{err:#}"
        );
    }
}
