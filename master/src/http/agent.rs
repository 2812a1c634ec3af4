//! The agent protocol (DESIGN §6): register, heartbeat, poll.

use drover_api::protocol::{HeartbeatRequest, PollRequest, RegisterRequest, PROTOCOL_VERSION};
use warp::http::StatusCode;

use super::{ok, Answer, ApiError, Call};

pub(super) async fn register(call: Call) -> Answer {
    let master = call.master()?;
    let req: RegisterRequest = call.json()?;
    if req.protocol != PROTOCOL_VERSION {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "protocol_mismatch",
            format!(
                "agent speaks protocol {}, this master {PROTOCOL_VERSION}",
                req.protocol
            ),
        ));
    }
    ok(&master.register(req, &call.principal).await?)
}

pub(super) async fn heartbeat(call: Call) -> Answer {
    let master = call.master()?;
    let req: HeartbeatRequest = call.json()?;
    ok(&master.heartbeat(req, &call.principal).await?)
}

pub(super) async fn poll(call: Call) -> Answer {
    let master = call.master()?;
    let req: PollRequest = call.json()?;
    master.check_node(&call.principal, &req.node_id).await?;
    match master.poll(&req.node_id, req.known_version, req.delta).await {
        Some(answer) => ok(&answer),
        None => Err(ApiError::retry_soon(
            "unavailable",
            "this master cannot answer for now (stopping, no longer leading, or reloading after a failed write); poll again",
        )),
    }
}
