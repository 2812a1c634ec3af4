//! `/v1/tasks` and `/v1/allocs`: a task, its logs, one of its attempts.

use drover_api::views::LogQuery;
use drover_api::{AllocId, TaskId};
use warp::http::StatusCode;

use super::{found, Answer, ApiError, Call};
use crate::core::LogSourceError;
use crate::logs::{self, LogError};

fn task_id(call: &Call) -> Result<TaskId, ApiError> {
    let (job, index) = (call.param(0), call.param(1));
    format!("{job}/{index}")
        .parse()
        .map_err(|_| ApiError::not_found(format!("task {job}/{index}")))
}

pub(super) async fn get(call: Call) -> Answer {
    let master = call.master()?;
    let id = task_id(&call)?;
    found(master.task(&id).await, format!("task {id}"))
}

pub(super) async fn logs(call: Call) -> Answer {
    let master = call.master()?;
    let id = task_id(&call)?;
    let q: LogQuery = call.query()?;
    let (alloc, log_addr, capability) = master.log_source(&id).await.map_err(|e| match e {
        LogSourceError::NoTask(_) => ApiError::not_found(format!("task {id}")),
        e => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
    })?;
    let tls = master.settings.agent_tls.as_ref();
    logs::proxy(&log_addr, tls, &alloc, capability.as_deref(), &q)
        .await
        .map_err(|e| match e {
            LogError::NotFound(_) => ApiError::not_found(format!("logs of {alloc}")),
            LogError::Unreachable { .. } | LogError::Agent { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "agent_unavailable", e.to_string())
            }
        })
}

pub(super) async fn alloc(call: Call) -> Answer {
    let master = call.master()?;
    let raw = call.params.join("/");
    let id: AllocId = raw
        .parse()
        .map_err(|_| ApiError::not_found(format!("alloc {raw}")))?;
    found(master.alloc(&id).await, format!("alloc {id}"))
}
