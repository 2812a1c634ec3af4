//! The REST API (DESIGN §5) and the agent protocol endpoints (§6), on warp.
//!
//! The routes are data ([`drover_api::routes::ROUTES`]): each becomes a warp
//! filter here (path, method, token, leader, query and body), the metrics
//! label their requests by the route's path pattern, and [`dispatch`] binds
//! each to its handler in a module per resource. Handlers parse, authorize
//! and call the master; they never touch its records.
//!
//! Every error is `{"error": {"code", "message"}}` with a proper status;
//! bad input is rejected before anything is staged, let alone stored.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use drover_api::routes::{match_order, Access, Body, Method, Route, RouteId};
use drover_api::views::{ErrorBody, ErrorDetail, FieldProblem};
use drover_api::{JobSpec, SpecError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::auth::{Auth, AuthError, Principal, Role};
use crate::core::{CommitError, Master};
use crate::role::{Caller, Front, Serving};

mod agent;
mod jobs;
mod nodes;
mod status;
mod tasks;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    fields: Vec<FieldProblem>,
    retry_after: Option<u64>,
    www_authenticate: Option<&'static str>,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            fields: Vec::new(),
            retry_after: None,
            www_authenticate: None,
        }
    }

    fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn spec(err: SpecError) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_spec", err.to_string());
        e.fields = err
            .field_errors()
            .iter()
            .map(|f| FieldProblem {
                path: f.path.clone(),
                message: f.message.clone(),
            })
            .collect();
        e
    }

    /// This master does not lead. 503 rather than a redirect: clients and
    /// agents hold every master's address and move on to the next on a
    /// 5xx, and a redirect could not carry a request body safely anyway.
    fn not_leader(leader: Option<&str>) -> Self {
        let message = match leader {
            Some(l) => format!("this master is a follower; the leader is {l}"),
            None => "this master is a follower and no leader is elected yet".to_string(),
        };
        ApiError::retry_soon("not_leader", message)
    }

    /// 503 with `Retry-After: 1`: nothing was done; the same request may
    /// succeed in a moment (here or, for a client with several addresses,
    /// at another master).
    fn retry_soon(code: &'static str, message: impl Into<String>) -> Self {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after = Some(1);
        e
    }

    /// 429: too much at once; nothing was done, and the same request
    /// may succeed after `Retry-After`.
    fn overloaded(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        e.retry_after = Some(retry_after);
        e
    }

    fn auth(err: AuthError) -> Self {
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut e = ApiError::new(status, err.code(), err.to_string());
        e.www_authenticate = err.www_authenticate();
        e
    }

    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                fields: self.fields,
            },
        };
        let mut resp =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        if let Some(v) = self.www_authenticate {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static(v));
        }
        resp
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Conflict(msg) => {
                return ApiError::new(StatusCode::CONFLICT, "conflict", msg)
            }
            CommitError::Unauthenticated(msg) => {
                let mut e = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg);
                e.www_authenticate = AuthError::Unauthenticated.www_authenticate();
                return e;
            }
            CommitError::Forbidden(msg) => {
                return ApiError::new(StatusCode::FORBIDDEN, "forbidden", msg)
            }
            CommitError::Backlog { .. } => {
                return ApiError::overloaded("backlog_full", e.to_string(), 5)
            }
            CommitError::Store(_) => {}
        }
        tracing::warn!(error = %e, "write not committed");
        ApiError::retry_soon("unavailable", e.to_string())
    }
}

type Answer = Result<Response, ApiError>;

fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

fn ok<T: Serialize>(body: &T) -> Answer {
    Ok(json_reply(StatusCode::OK, body))
}

/// 200 with the view, or 404 naming what was looked for.
fn found<T: Serialize>(view: Option<T>, what: impl std::fmt::Display) -> Answer {
    match view {
        Some(v) => ok(&v),
        None => Err(ApiError::not_found(what)),
    }
}

/// One request, as its route's filter extracted it.
#[derive(Debug)]
struct Call {
    front: Front,
    /// Resolved before the body is read when the route needs the leader.
    master: Option<Arc<Master>>,
    /// Who the request is from (`Anyone` on open routes).
    principal: Principal,
    params: Vec<String>,
    query: String,
    content_type: Option<String>,
    body: Bytes,
}

impl Call {
    /// The leading master, or 503 on a follower.
    fn master(&self) -> Result<Arc<Master>, ApiError> {
        match &self.master {
            Some(m) => Ok(Arc::clone(m)),
            None => leader(&self.front),
        }
    }

    /// The `i`th path parameter.
    fn param(&self, i: usize) -> &str {
        self.params.get(i).map_or("", String::as_str)
    }

    fn query<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_urlencoded::from_str(&self.query)
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
    }

    /// The body's media type, lowercased, without parameters; JSON when absent.
    fn mime(&self) -> String {
        self.content_type
            .as_deref()
            .unwrap_or("application/json")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }

    fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        match self.mime().as_str() {
            "application/json" => serde_json::from_slice(&self.body)
                .map_err(|e| ApiError::bad_request(format!("invalid body: {e}"))),
            other => Err(unsupported(other, "application/json")),
        }
    }

    /// A job spec, as JSON or YAML by the content type.
    fn spec(&self) -> Result<JobSpec, ApiError> {
        let mime = self.mime();
        let text = std::str::from_utf8(&self.body)
            .map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
        match mime.as_str() {
            "application/json" => JobSpec::parse_json(text).map_err(ApiError::spec),
            "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
                JobSpec::parse_yaml(text).map_err(ApiError::spec)
            }
            other => Err(unsupported(other, "application/json or application/yaml")),
        }
    }
}

fn unsupported(got: &str, want: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("content type {got:?}: send {want}"),
    )
}

fn leader(front: &Front) -> Result<Arc<Master>, ApiError> {
    match front.serving() {
        Serving::Leader(master) => Ok(master),
        Serving::Follower { leader } => Err(ApiError::not_leader(leader.as_deref())),
    }
}

/// The handler of each route.
async fn dispatch(id: RouteId, call: Call) -> Answer {
    match id {
        RouteId::SubmitJob => jobs::submit(call).await,
        RouteId::PlanJob => jobs::plan(call).await,
        RouteId::ListJobs => jobs::list(call).await,
        RouteId::GetJob => jobs::get(call).await,
        RouteId::StopJob => jobs::stop(call).await,
        RouteId::ListJobTasks => jobs::tasks(call).await,
        RouteId::GetTask => tasks::get(call).await,
        RouteId::GetTaskLogs => tasks::logs(call).await,
        RouteId::GetAlloc => tasks::alloc(call).await,
        RouteId::ListNodes => nodes::list(call).await,
        RouteId::GetNode => nodes::get(call).await,
        RouteId::DrainNode => nodes::drain(call).await,
        RouteId::RevokeNode => nodes::revoke(call).await,
        RouteId::GetCluster => status::cluster(call).await,
        RouteId::GetLeader => status::leader(call),
        RouteId::GetOpenapi => Ok(status::openapi()),
        RouteId::AgentRegister => agent::register(call).await,
        RouteId::AgentHeartbeat => agent::heartbeat(call).await,
        RouteId::AgentPoll => agent::poll(call).await,
        RouteId::Metrics => Ok(status::metrics(call).await),
        RouteId::Healthz => Ok(status::healthz()),
        RouteId::Readyz => Ok(status::readyz(call)),
    }
}

// ---- wiring ----

fn answer(a: Answer) -> Response {
    a.unwrap_or_else(ApiError::into_response)
}

/// Turns warp's own rejections into JSON errors with the right status.
async fn recover(err: Rejection) -> Result<Response, Infallible> {
    let e = if err.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if let Some(e) = err.find::<ApiError>() {
        ApiError {
            status: e.status,
            code: e.code,
            message: e.message.clone(),
            fields: e.fields.clone(),
            retry_after: e.retry_after,
            www_authenticate: e.www_authenticate,
        }
    } else if err.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
    } else if err.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::new(
            StatusCode::LENGTH_REQUIRED,
            "length_required",
            "send a Content-Length header",
        )
    } else if err.find::<warp::reject::UnsupportedMediaType>().is_some() {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json",
        )
    } else if let Some(e) = err.find::<warp::filters::body::BodyDeserializeError>() {
        ApiError::bad_request(format!("invalid body: {e}"))
    } else if let Some(e) = err.find::<warp::reject::InvalidQuery>() {
        ApiError::bad_request(format!("invalid query: {e}"))
    } else if err.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route",
        )
    } else if let Some(e) = err.find::<warp::reject::InvalidHeader>() {
        ApiError::bad_request(e.to_string())
    } else {
        tracing::error!(?err, "unhandled rejection");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    };
    Ok(e.into_response())
}

/// Every route of a master that always leads with `master` (the embedded
/// store, tests). `leader` is the address this master advertises.
pub fn routes(
    master: Arc<Master>,
    auth: Arc<Auth>,
    leader: String,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    front_routes(Front::leader(master, leader), auth)
}

/// The filter of one route: path first, then method (a known path with
/// another method answers 405), token, leader, query and body.
fn route_filter(
    route: &'static Route,
    front: &Front,
    auth: &Arc<Auth>,
) -> BoxedFilter<(Response,)> {
    let path = warp::path::full()
        .and_then(move |p: warp::path::FullPath| async move {
            route
                .matches(p.as_str())
                .map(|ps| ps.into_iter().map(str::to_string).collect::<Vec<_>>())
                .ok_or_else(warp::reject::not_found)
        })
        .boxed();
    let method = match route.method {
        Method::Get => warp::get().boxed(),
        Method::Post => warp::post().boxed(),
        Method::Delete => warp::delete().boxed(),
    };
    let token = match route.access {
        Access::Open => warp::any().map(|| Principal::Anyone).boxed(),
        Access::Token(role) => allow(Arc::clone(auth), role, route),
    };
    let master = {
        let front = front.clone();
        warp::any()
            .and_then(move || {
                let resolved = route.leader.then(|| leader(&front));
                async move {
                    match resolved {
                        None => Ok(None),
                        Some(Ok(m)) => Ok(Some(m)),
                        Some(Err(e)) => Err(warp::reject::custom(e)),
                    }
                }
            })
            .boxed()
    };
    // Before the body is read: a refused call costs its headers only.
    let slot = match route.access {
        Access::Open => warp::any().map(|| None).boxed(),
        Access::Token(role) => {
            let (caller, reason) = if role == Role::Agent {
                (Caller::Agent, "agent")
            } else {
                (Caller::User, "api")
            };
            let front = front.clone();
            warp::any()
                .and_then(move || {
                    let slot = front.admit(caller).map(Some).ok_or_else(|| {
                        front
                            .metrics
                            .http_throttled
                            .with_label_values(&[reason])
                            .inc();
                        warp::reject::custom(ApiError::overloaded(
                            "overloaded",
                            "the master is serving as many calls as it is allowed \
                             (api.max_requests, api.max_agent_requests); try again after Retry-After",
                            1,
                        ))
                    });
                    async move { slot }
                })
                .boxed()
        }
    };
    let query = warp::query::raw()
        .or(warp::any().map(String::new))
        .unify()
        .boxed();
    let body = match route.body {
        Body::None => warp::any().map(Bytes::new).boxed(),
        Body::Json(_) | Body::Spec => warp::body::content_length_limit(front.max_body_bytes)
            .and(warp::body::bytes())
            .boxed(),
    };
    let front = front.clone();
    path.and(method)
        .and(token)
        .and(master)
        .and(slot)
        .and(query)
        .and(warp::header::optional::<String>("content-type"))
        .and(body)
        .then(
            move |params: Vec<String>,
                  principal: Principal,
                  master,
                  slot: Option<tokio::sync::OwnedSemaphorePermit>,
                  query,
                  content_type,
                  body| {
                let who = principal.name();
                let target = fill(route.path, &params);
                let call = Call {
                    front: front.clone(),
                    master,
                    principal,
                    params,
                    query,
                    content_type,
                    body,
                };
                async move {
                    let answer = dispatch(route.id, call).await;
                    drop(slot);
                    if audited(route) {
                        let status = match &answer {
                            Ok(r) => r.status(),
                            Err(e) => e.status,
                        };
                        audit(route, &who, &target, status);
                    }
                    answer
                }
            },
        )
        .map(answer)
        .boxed()
}

/// Passes requests whose token grants `role`, as whom they are from. A
/// refused write is audited here, since it never reaches its handler.
fn allow(auth: Arc<Auth>, role: Role, route: &'static Route) -> BoxedFilter<(Principal,)> {
    warp::header::optional::<String>("authorization")
        .and_then(move |h: Option<String>| {
            let checked = auth.check(h.as_deref(), role).map_err(|e| {
                if audited(route) {
                    let who = match e {
                        AuthError::Unauthenticated => "unauthenticated".to_string(),
                        AuthError::Forbidden { have, .. } => format!("a {have} token"),
                    };
                    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN);
                    audit(route, &who, route.path, status);
                }
                warp::reject::custom(ApiError::auth(e))
            });
            async move { checked }
        })
        .boxed()
}

/// Writes that are audited: every call that can change the cluster but the
/// agent protocol's routine (heartbeats and polls, many per second, whose
/// effects show in task and alloc histories). Registrations are audited.
fn audited(route: &Route) -> bool {
    route.method != Method::Get
        && !matches!(
            route.id,
            RouteId::PlanJob | RouteId::AgentHeartbeat | RouteId::AgentPoll
        )
}

/// One line per write, on a target of its own (`drover::audit`), so that it
/// can be kept, shipped or filtered apart from the rest of the log.
fn audit(route: &Route, who: &str, target: &str, status: StatusCode) {
    tracing::info!(
        target: "drover::audit",
        who,
        action = %route.id.name(),
        target,
        status = status.as_u16(),
        outcome = if status.is_success() { "done" } else { "refused" },
        "audit"
    );
}

/// The route's path with its parameters filled in: what was acted on.
fn fill(pattern: &str, params: &[String]) -> String {
    let mut params = params.iter();
    pattern
        .split('/')
        .map(|seg| {
            if seg.starts_with('{') {
                params.next().map_or(seg, String::as_str)
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Every route, with auth, body limits, JSON errors and request metrics,
/// answered as `front`'s role is at each request: the cluster API needs the
/// leader; the routes marked otherwise answer in either role.
pub fn front_routes(
    front: Front,
    auth: Arc<Auth>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    // Boxed one by one: a 20-deep chain of unboxed warp filters takes
    // rustc many minutes to type-check.
    let api = match_order()
        .map(|r| route_filter(r, &front, &auth))
        .reduce(|a, b| a.or(b).unify().boxed())
        .expect("the route table is not empty");

    let metrics = front.metrics.clone();
    warp::method()
        .and(warp::path::full())
        .and(warp::any().map(Instant::now))
        .and(api.recover(recover).unify())
        .map(
            move |method: warp::http::Method,
                  path: warp::path::FullPath,
                  started: Instant,
                  resp: Response| {
                let route = drover_api::routes::label(method.as_str(), path.as_str());
                let code = resp.status().as_u16().to_string();
                let m = &metrics;
                m.http_requests
                    .with_label_values(&[route.as_str(), code.as_str()])
                    .inc();
                m.http_duration
                    .with_label_values(&[route.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                resp
            },
        )
}
