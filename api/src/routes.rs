//! The master's routes as data (DESIGN §5, §6): method, path, who may call
//! it, what it reads and answers. The master builds its warp filters and its
//! metrics' route labels from [`ROUTES`], [`crate::openapi`] builds the
//! OpenAPI document from it, and the master binds each [`RouteId`] to its
//! handler with one exhaustive `match`, so no route lacks a handler or a
//! description.

use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::protocol::{
    HeartbeatRequest, HeartbeatResponse, PollRequest, PollResponse, RegisterRequest,
    RegisterResponse,
};
use crate::views::{
    AllocView, ClusterSummary, DrainRequest, HealthView, JobView, JobsQuery, LeaderView, LogQuery,
    NodeView, PlanAnswer, ReadyView, StopAnswer, StopQuery, SubmitAnswer, TaskView,
};

/// What a token may do. `reader < submitter < admin`: a role grants
/// everything the lower ones do. `agent` stands apart: it may call the agent
/// protocol and nothing else, and no other role may call that.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// `GET` routes: jobs, tasks, logs, nodes, cluster.
    Reader,
    /// Reader, plus submitting, planning and stopping jobs.
    Submitter,
    /// Everything but the agent protocol: draining and revoking nodes too.
    Admin,
    /// The agent protocol only: a join token, with which a new node
    /// registers and gets its own credential (DESIGN §12).
    Agent,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Reader, Role::Submitter, Role::Admin, Role::Agent];

    pub const fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
            Role::Agent => "agent",
        }
    }

    /// Whether a token with this role may do what `needed` allows.
    pub fn grants(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Agent, Role::Agent) => true,
            (Role::Agent, _) | (_, Role::Agent) => false,
            (have, needed) => have >= needed,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a role: use one of reader, submitter, admin, agent")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

/// Every route of the master. The serde name of each is its OpenAPI
/// `operationId`, and its doc comment the operation's description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RouteId {
    /// Submits a job, or a new version of it. The same spec again changes
    /// nothing (200, `unchanged`); a changed spec makes a new version whose
    /// tasks replace the old ones (200, `updated`). Answers once the write is
    /// durable.
    SubmitJob,
    /// A dry run of a submission: where each task would be placed now,
    /// whom it would preempt, or why it would wait. Writes nothing.
    PlanJob,
    /// Every job, optionally only those in one state.
    ListJobs,
    /// One job, with its spec.
    GetJob,
    /// Stops a job: its live tasks are killed and it stays listed as
    /// `stopped`. With `purge=true` the job and its history are deleted.
    StopJob,
    /// Every task of a job, each with its attempts and history.
    ListJobTasks,
    /// One task, with its attempts and history.
    GetTask,
    /// The stdout or stderr of the task's latest attempt, proxied from the
    /// log server of the agent that ran it. With `follow=true` the answer
    /// streams until the task ends.
    GetTaskLogs,
    /// One attempt of a task on a node.
    GetAlloc,
    /// Every node, with what it has, holds and runs.
    ListNodes,
    /// One node.
    GetNode,
    /// Revokes a node's credential: its agent can no longer speak for it,
    /// the node is down at once and its allocs are lost and placed
    /// elsewhere. The node id stays taken; a machine rejoins under a new id.
    RevokeNode,
    /// Starts (`enable: true`) or ends a node's drain. A draining node takes
    /// no new work; its allocs are stopped and replaced elsewhere, all of
    /// them by the deadline.
    DrainNode,
    /// Cluster-wide counts and capacity; what the `/metrics` gauges show.
    GetCluster,
    /// The address of the leading master. Any master answers.
    GetLeader,
    /// This document.
    GetOpenapi,
    /// Agent protocol: a node registers on every agent start, and whenever
    /// a heartbeat answer asks for it. With tokens configured, a new node
    /// registers with an `agent` join token and is given a credential bound
    /// to its id; every later call for that node must carry it.
    AgentRegister,
    /// Agent protocol: a node reports liveness, usage and alloc updates.
    AgentHeartbeat,
    /// Agent protocol: a long poll for the node's assignments, answered as
    /// soon as they differ from `known_version` (or when the poll times out).
    AgentPoll,
    /// Prometheus metrics, in the text exposition format. Any master answers.
    Metrics,
    /// Liveness: the process serves HTTP. Any master answers.
    Healthz,
    /// Readiness: 200 on the leader, 503 on a follower, so that a load
    /// balancer sends API traffic to the leader only.
    Readyz,
}

impl RouteId {
    /// The `operationId`: the serde name.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// HTTP methods the master serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: probes and metrics scrapers carry no token.
    Open,
    /// A token of at least this role (when the master has tokens at all).
    Token(Role),
}

/// A JSON Schema, made on demand (the generator collects shared definitions).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// What a route reads from its body.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    None,
    /// `application/json`.
    Json(SchemaFn),
    /// A job spec, as `application/json` or `application/yaml`.
    Spec,
}

/// One answer a route gives on success.
#[derive(Debug, Clone, Copy)]
pub struct Success {
    pub status: u16,
    pub description: &'static str,
    pub content: Content,
}

/// The body of an answer.
#[derive(Debug, Clone, Copy)]
pub enum Content {
    Json(SchemaFn),
    /// `text/plain`.
    Text,
}

/// One route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub id: RouteId,
    pub method: Method,
    /// With `{name}` for each path parameter (one segment each).
    pub path: &'static str,
    pub access: Access,
    /// Needs the leading master: a follower answers 503 with `Retry-After`.
    pub leader: bool,
    pub tag: &'static str,
    pub body: Body,
    /// The query's parameters, as the schema of an object.
    pub query: Option<SchemaFn>,
    pub ok: &'static [Success],
    /// Error statuses beyond those every route of its kind can answer (see
    /// [`Route::errors`]).
    pub errors: &'static [u16],
}

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

const fn json(status: u16, description: &'static str, s: SchemaFn) -> Success {
    Success {
        status,
        description,
        content: Content::Json(s),
    }
}

const OK: &str = "OK";

const fn api(
    id: RouteId,
    method: Method,
    path: &'static str,
    role: Role,
    tag: &'static str,
) -> Route {
    Route {
        id,
        method,
        path,
        access: Access::Token(role),
        leader: true,
        tag,
        body: Body::None,
        query: None,
        ok: &[],
        errors: &[],
    }
}

const fn open(id: RouteId, path: &'static str, ok: &'static [Success]) -> Route {
    Route {
        id,
        method: Method::Get,
        path,
        access: Access::Open,
        leader: false,
        tag: "status",
        body: Body::None,
        query: None,
        ok,
        errors: &[],
    }
}

use Method::{Delete, Get, Post};
use Role::{Admin, Reader, Submitter};

/// Every route, in the order the master tries them.
pub static ROUTES: &[Route] = &[
    Route {
        body: Body::Spec,
        ok: &[
            json(201, "A new job", schema::<SubmitAnswer>),
            json(
                200,
                "The job existed: unchanged, or updated to a new version",
                schema::<SubmitAnswer>,
            ),
        ],
        ..api(RouteId::SubmitJob, Post, "/v1/jobs", Submitter, "jobs")
    },
    Route {
        body: Body::Spec,
        ok: &[json(200, OK, schema::<PlanAnswer>)],
        ..api(RouteId::PlanJob, Post, "/v1/jobs/plan", Submitter, "jobs")
    },
    Route {
        query: Some(schema::<JobsQuery>),
        ok: &[json(200, OK, schema::<Vec<JobView>>)],
        ..api(RouteId::ListJobs, Get, "/v1/jobs", Reader, "jobs")
    },
    Route {
        ok: &[json(200, OK, schema::<JobView>)],
        errors: &[404],
        ..api(RouteId::GetJob, Get, "/v1/jobs/{id}", Reader, "jobs")
    },
    Route {
        query: Some(schema::<StopQuery>),
        ok: &[json(
            200,
            "The stopped job, or a note that it was purged",
            schema::<StopAnswer>,
        )],
        errors: &[404],
        ..api(RouteId::StopJob, Delete, "/v1/jobs/{id}", Submitter, "jobs")
    },
    Route {
        ok: &[json(200, OK, schema::<Vec<TaskView>>)],
        errors: &[404],
        ..api(
            RouteId::ListJobTasks,
            Get,
            "/v1/jobs/{id}/tasks",
            Reader,
            "jobs",
        )
    },
    Route {
        ok: &[json(200, OK, schema::<TaskView>)],
        errors: &[404],
        ..api(
            RouteId::GetTask,
            Get,
            "/v1/tasks/{job}/{index}",
            Reader,
            "tasks",
        )
    },
    Route {
        query: Some(schema::<LogQuery>),
        ok: &[Success {
            status: 200,
            description: "The log's bytes from `offset`",
            content: Content::Text,
        }],
        errors: &[404, 502],
        ..api(
            RouteId::GetTaskLogs,
            Get,
            "/v1/tasks/{job}/{index}/logs",
            Reader,
            "tasks",
        )
    },
    Route {
        ok: &[json(200, OK, schema::<AllocView>)],
        errors: &[404],
        ..api(
            RouteId::GetAlloc,
            Get,
            "/v1/allocs/{job}/{index}/{attempt}",
            Reader,
            "tasks",
        )
    },
    Route {
        ok: &[json(200, OK, schema::<Vec<NodeView>>)],
        ..api(RouteId::ListNodes, Get, "/v1/nodes", Reader, "nodes")
    },
    Route {
        ok: &[json(200, OK, schema::<NodeView>)],
        errors: &[404],
        ..api(RouteId::GetNode, Get, "/v1/nodes/{id}", Reader, "nodes")
    },
    Route {
        body: Body::Json(schema::<DrainRequest>),
        ok: &[json(200, "The node, as it is now", schema::<NodeView>)],
        errors: &[404],
        ..api(
            RouteId::DrainNode,
            Post,
            "/v1/nodes/{id}/drain",
            Admin,
            "nodes",
        )
    },
    Route {
        ok: &[json(200, "The node, now down", schema::<NodeView>)],
        errors: &[404],
        ..api(
            RouteId::RevokeNode,
            Post,
            "/v1/nodes/{id}/revoke",
            Admin,
            "nodes",
        )
    },
    Route {
        ok: &[json(200, OK, schema::<ClusterSummary>)],
        ..api(RouteId::GetCluster, Get, "/v1/cluster", Reader, "status")
    },
    Route {
        leader: false,
        ok: &[json(200, OK, schema::<LeaderView>)],
        errors: &[503],
        ..api(
            RouteId::GetLeader,
            Get,
            "/v1/status/leader",
            Reader,
            "status",
        )
    },
    open(
        RouteId::GetOpenapi,
        "/v1/openapi.json",
        &[json(
            200,
            "The OpenAPI 3.1 document",
            schema::<serde_json::Map<String, serde_json::Value>>,
        )],
    ),
    Route {
        body: Body::Json(schema::<RegisterRequest>),
        ok: &[json(200, OK, schema::<RegisterResponse>)],
        errors: &[409],
        ..api(
            RouteId::AgentRegister,
            Post,
            crate::protocol::REGISTER_PATH,
            Role::Agent,
            "agent",
        )
    },
    Route {
        body: Body::Json(schema::<HeartbeatRequest>),
        ok: &[json(200, OK, schema::<HeartbeatResponse>)],
        ..api(
            RouteId::AgentHeartbeat,
            Post,
            crate::protocol::HEARTBEAT_PATH,
            Role::Agent,
            "agent",
        )
    },
    Route {
        body: Body::Json(schema::<PollRequest>),
        ok: &[json(200, OK, schema::<PollResponse>)],
        ..api(
            RouteId::AgentPoll,
            Post,
            crate::protocol::POLL_PATH,
            Role::Agent,
            "agent",
        )
    },
    open(
        RouteId::Metrics,
        "/metrics",
        &[Success {
            status: 200,
            description: "Prometheus text format 0.0.4",
            content: Content::Text,
        }],
    ),
    open(
        RouteId::Healthz,
        "/healthz",
        &[json(200, OK, schema::<HealthView>)],
    ),
    open(
        RouteId::Readyz,
        "/readyz",
        &[
            json(200, "This master leads", schema::<ReadyView>),
            json(
                503,
                "This master follows: send API traffic to the leader",
                schema::<ReadyView>,
            ),
        ],
    ),
];

impl Route {
    /// The path's parameter names, in order.
    pub fn params(&self) -> impl Iterator<Item = &'static str> {
        self.path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
    }

    /// The path parameters of `path` if it matches this route's pattern.
    pub fn matches<'p>(&self, path: &'p str) -> Option<Vec<&'p str>> {
        let mut want = self.path.trim_matches('/').split('/');
        let mut got = path.trim_matches('/').split('/');
        let mut params = Vec::new();
        loop {
            match (want.next(), got.next()) {
                (None, None) => return Some(params),
                (Some(w), Some(g)) if w.starts_with('{') => {
                    if g.is_empty() {
                        return None;
                    }
                    params.push(g);
                }
                (Some(w), Some(g)) if w == g => {}
                _ => return None,
            }
        }
    }

    /// Every error status the route can answer, sorted: its own, plus those
    /// of every route with a body, a token, or the leader's state.
    pub fn errors(&self) -> Vec<u16> {
        let mut all = self.errors.to_vec();
        if self.query.is_some() || !matches!(self.body, Body::None) {
            all.push(400);
        }
        if !matches!(self.body, Body::None) {
            all.extend([411, 413, 415]);
        }
        if let Access::Token(role) = self.access {
            // Calls that need a token are admitted a bounded number at once.
            all.extend([401, 429]);
            // Every token is at least a reader.
            if role > Role::Reader {
                all.push(403);
            }
        }
        if self.leader {
            all.push(503);
        }
        all.sort_unstable();
        all.dedup();
        all
    }
}

fn is_agent(r: &Route) -> bool {
    matches!(r.access, Access::Token(Role::Agent))
}

/// The routes in the order requests are matched: the agents' first (on a
/// large cluster they are nearly every call, and no other route's pattern
/// matches their paths: tested), then the rest in table order.
pub fn match_order() -> impl Iterator<Item = &'static Route> {
    ROUTES
        .iter()
        .filter(|r| is_agent(r))
        .chain(ROUTES.iter().filter(|r| !is_agent(r)))
}

/// The route `method path` takes, if any. Paths are matched by segments,
/// in [`match_order`].
pub fn find(method: &str, path: &str) -> Option<&'static Route> {
    match_order().find(|r| r.method.as_str() == method && r.matches(path).is_some())
}

/// The metrics label of a request: `METHOD /path/{param}` of its route, or
/// `METHOD other`. Bounded: ids never appear, and unknown methods are `OTHER`.
pub fn label(method: &str, path: &str) -> String {
    let method = match method {
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" => method,
        _ => "OTHER",
    };
    let pattern = match_order()
        .find(|r| r.matches(path).is_some())
        .map_or("other", |r| r.path);
    format!("{method} {pattern}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_unique_and_named() {
        let mut seen = std::collections::BTreeSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method.as_str(), r.path)),
                "{} {} twice",
                r.method.as_str(),
                r.path
            );
            assert!(!r.id.name().is_empty());
            assert!(!r.ok.is_empty(), "{:?} answers nothing", r.id);
        }
        let ids: std::collections::HashSet<_> = ROUTES.iter().map(|r| r.id).collect();
        assert_eq!(ids.len(), ROUTES.len(), "a route id used twice");
    }

    #[test]
    fn paths_match_by_segment() {
        let r = find("GET", "/v1/tasks/render/3").unwrap();
        assert_eq!(r.id, RouteId::GetTask);
        assert_eq!(r.matches("/v1/tasks/render/3"), Some(vec!["render", "3"]));
        assert_eq!(r.params().collect::<Vec<_>>(), ["job", "index"]);
        assert!(r.matches("/v1/tasks/render").is_none());
        assert!(r.matches("/v1/tasks//3").is_none());
        assert_eq!(find("POST", "/v1/jobs/plan").unwrap().id, RouteId::PlanJob);
        assert_eq!(find("GET", "/v1/jobs/plan").unwrap().id, RouteId::GetJob);
        assert!(find("PUT", "/v1/jobs").is_none());
    }

    #[test]
    fn agent_paths_are_matched_by_their_own_routes_alone() {
        let agents: Vec<&Route> = ROUTES.iter().filter(|r| is_agent(r)).collect();
        assert_eq!(agents.len(), 3);
        for a in agents {
            let others: Vec<&str> = ROUTES
                .iter()
                .filter(|r| r.path != a.path && r.matches(a.path).is_some())
                .map(|r| r.path)
                .collect();
            assert!(others.is_empty(), "{} also matches {others:?}", a.path);
        }
        // Matched first, and the table's order kept for the rest.
        let order: Vec<RouteId> = match_order().map(|r| r.id).collect();
        assert_eq!(order[0], RouteId::AgentRegister);
        assert_eq!(order.len(), ROUTES.len());
        let rest: Vec<RouteId> = ROUTES
            .iter()
            .filter(|r| !is_agent(r))
            .map(|r| r.id)
            .collect();
        assert_eq!(order[3..], rest[..]);
    }

    #[test]
    fn labels_hide_ids_and_bound_methods() {
        assert_eq!(label("GET", "/v1/jobs/x"), "GET /v1/jobs/{id}");
        assert_eq!(
            label("GET", "/v1/allocs/a/1/2"),
            "GET /v1/allocs/{job}/{index}/{attempt}"
        );
        assert_eq!(label("BREW", "/nope/x"), "OTHER other");
        assert_eq!(label("PUT", "/v1/jobs"), "PUT /v1/jobs");
    }

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Admin.grants(Role::Submitter));
        assert!(!Role::Reader.grants(Role::Submitter));
        assert!(Role::Agent.grants(Role::Agent));
        for other in [Role::Reader, Role::Submitter, Role::Admin] {
            assert!(!Role::Agent.grants(other), "agent grants {other}");
            assert!(!other.grants(Role::Agent), "{other} grants agent");
        }
        for r in Role::ALL {
            assert_eq!(r.name().parse::<Role>().unwrap(), r);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
