//! `/v1/nodes`: list, get and drain.

use std::time::Duration;

use drover_api::views::DrainRequest;
use drover_api::NodeId;

use super::{found, ok, Answer, ApiError, Call};

fn node_id(raw: &str) -> Result<NodeId, ApiError> {
    NodeId::new(raw).map_err(|_| ApiError::not_found(format!("node {raw:?}")))
}

pub(super) async fn list(call: Call) -> Answer {
    let master = call.master()?;
    ok(&master.nodes().await)
}

pub(super) async fn get(call: Call) -> Answer {
    let master = call.master()?;
    let id = node_id(call.param(0))?;
    found(master.node(&id).await, format!("node {id}"))
}

pub(super) async fn drain(call: Call) -> Answer {
    let master = call.master()?;
    let id = node_id(call.param(0))?;
    let req: DrainRequest = call.json()?;
    let deadline = match req.deadline.as_deref() {
        None => Duration::from_secs(3600),
        Some(s) => humantime::parse_duration(s).map_err(|e| {
            ApiError::bad_request(format!("deadline: {s:?} is not a duration: {e}"))
        })?,
    };
    if master.set_drain(&id, req.enable, deadline).await?.is_none() {
        return Err(ApiError::not_found(format!("node {id}")));
    }
    found(master.node(&id).await, format!("node {id}"))
}

pub(super) async fn revoke(call: Call) -> Answer {
    let master = call.master()?;
    let id = node_id(call.param(0))?;
    if !master.revoke_node(&id).await? {
        return Err(ApiError::not_found(format!("node {id}")));
    }
    found(master.node(&id).await, format!("node {id}"))
}
