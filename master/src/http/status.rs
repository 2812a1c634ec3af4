//! The cluster as a whole, leadership, probes, metrics and the API's own
//! description.

use std::sync::OnceLock;

use drover_api::views::{HealthView, LeaderView, ReadyView};
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::Reply;

use super::{json_reply, ok, Answer, ApiError, Call};
use crate::role::Serving;

pub(super) async fn cluster(call: Call) -> Answer {
    let master = call.master()?;
    ok(&master.summary(&call.front.advertise).await)
}

pub(super) fn leader(call: Call) -> Answer {
    let leader = match call.front.serving() {
        Serving::Leader(_) => call.front.advertise.to_string(),
        Serving::Follower { leader: Some(l) } => l,
        Serving::Follower { leader: None } => return Err(ApiError::not_leader(None)),
    };
    ok(&LeaderView { leader })
}

/// The OpenAPI document, generated once per process.
pub(super) fn openapi() -> Response {
    static TEXT: OnceLock<String> = OnceLock::new();
    let text = TEXT.get_or_init(drover_api::openapi::document_text);
    let mut resp = text.clone().into_response();
    resp.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    resp
}

pub(super) fn healthz() -> Response {
    json_reply(
        StatusCode::OK,
        &HealthView {
            status: "ok".to_string(),
        },
    )
}

/// Ready means "send me API traffic": only the leader is. A follower is
/// healthy (`/healthz`) but not ready, so a load balancer skips it.
pub(super) fn readyz(call: Call) -> Response {
    match call.front.serving() {
        Serving::Leader(_) => json_reply(
            StatusCode::OK,
            &ReadyView {
                ready: true,
                role: "leader".to_string(),
                leader: None,
            },
        ),
        Serving::Follower { leader } => json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &ReadyView {
                ready: false,
                role: "follower".to_string(),
                leader,
            },
        ),
    }
}

pub(super) async fn metrics(call: Call) -> Response {
    let front = &call.front;
    let m = &front.metrics;
    match front.serving() {
        Serving::Leader(master) => {
            let s = master.summary(&front.advertise).await;
            for (state, n) in &s.nodes {
                m.nodes.with_label_values(&[state]).set(*n as f64);
            }
            for (state, n) in &s.jobs {
                m.jobs.with_label_values(&[state]).set(*n as f64);
            }
            for (state, n) in &s.tasks {
                m.tasks.with_label_values(&[state]).set(*n as f64);
            }
            for (g, a) in [(&m.capacity, &s.capacity), (&m.allocated, &s.allocated)] {
                g.with_label_values(&["cpu"]).set(a.cpu_millis as f64);
                g.with_label_values(&["memory"]).set(a.memory_bytes as f64);
                g.with_label_values(&["gpu"]).set(a.gpus as f64);
            }
            m.queue_depth.set(s.queue_depth as f64);
        }
        Serving::Follower { .. } => {
            // A follower knows nothing of the cluster: it reports no
            // cluster gauges rather than the last ones it led with, so a
            // sum over masters counts the leader's alone.
            for g in [&m.nodes, &m.jobs, &m.tasks, &m.capacity, &m.allocated] {
                g.reset();
            }
            m.queue_depth.set(0.0);
        }
    }
    let mut resp = m.render().into_response();
    resp.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}
