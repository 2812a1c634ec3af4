//! `/v1/jobs`: submit, plan, list, get, stop and purge, and a job's tasks.

use drover_api::views::{JobsQuery, StopQuery};
use drover_api::JobId;
use warp::http::StatusCode;

use super::{found, json_reply, ok, Answer, ApiError, Call};
use drover_api::views::SubmitOutcome;

/// A job id from the path; one that cannot exist is simply not found.
pub(super) fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::new(raw).map_err(|_| ApiError::not_found(format!("job {raw:?}")))
}

pub(super) async fn submit(call: Call) -> Answer {
    let master = call.master()?;
    let spec = call.spec()?;
    let answer = master.submit(spec, &call.principal).await?;
    let status = match answer.outcome {
        SubmitOutcome::Created => StatusCode::CREATED,
        SubmitOutcome::Unchanged | SubmitOutcome::Updated => StatusCode::OK,
    };
    Ok(json_reply(status, &answer))
}

pub(super) async fn plan(call: Call) -> Answer {
    let master = call.master()?;
    let spec = call.spec()?;
    ok(&master.plan(&spec).await)
}

pub(super) async fn list(call: Call) -> Answer {
    let master = call.master()?;
    let q: JobsQuery = call.query()?;
    ok(&master.jobs(q.state).await)
}

pub(super) async fn get(call: Call) -> Answer {
    let master = call.master()?;
    let id = job_id(call.param(0))?;
    found(master.job(&id).await, format!("job {id}"))
}

pub(super) async fn stop(call: Call) -> Answer {
    let master = call.master()?;
    let id = job_id(call.param(0))?;
    let q: StopQuery = call.query()?;
    found(
        master.stop_job(&id, q.purge, &call.principal).await?,
        format!("job {id}"),
    )
}

pub(super) async fn tasks(call: Call) -> Answer {
    let master = call.master()?;
    let id = job_id(call.param(0))?;
    found(master.job_tasks(&id).await, format!("job {id}"))
}
