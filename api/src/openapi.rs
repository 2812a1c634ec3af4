//! The OpenAPI 3.1 document of the master's REST API, generated from the
//! route table ([`crate::routes::ROUTES`]) and the wire types' JSON Schemas
//! (schemars reads their serde attributes and doc comments). Nothing in it is
//! written by hand but the error statuses' meanings; the master serves it at
//! `GET /v1/openapi.json`, `drover api openapi` prints it, and `api/openapi.json`
//! is a checked-in copy that a test keeps equal.

use schemars::generate::SchemaSettings;
use schemars::{Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

use crate::ids::{JobId, NodeId};
use crate::routes::{Access, Body, Content, Route, RouteId, ROUTES};
use crate::views::ErrorBody;
use crate::JobSpec;

/// Where shared schemas live, as OpenAPI wants them.
const COMPONENTS: &str = "/components/schemas";

/// The document, as JSON.
pub fn document() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = COMPONENTS.into();
    settings.meta_schema = None;
    let mut g = SchemaGenerator::new(settings);
    let docs = operation_docs();

    let mut paths = Map::new();
    for route in ROUTES {
        let item = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        let method = route.method.as_str().to_ascii_lowercase();
        item[method] = operation(route, &docs, &mut g);
    }
    let schemas = g.take_definitions(true);

    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Drover",
            "version": env!("CARGO_PKG_VERSION"),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
            "description": "The REST API of Drover's master: jobs, tasks, nodes and the agent protocol. \
                Every error answers `{\"error\": {\"code\", \"message\"}}`; a rejected job spec adds \
                `fields[]`, each with the field's path. Unknown routes answer 404 and known paths with \
                another method 405, both with the same error body. With tokens configured \
                (`auth.tokens`), every route but the probes, `/metrics` and this document needs \
                `Authorization: Bearer <token>` of a role that allows it.",
        },
        "tags": [
            {"name": "jobs", "description": "Submitting, planning, listing and stopping jobs."},
            {"name": "tasks", "description": "Tasks, their attempts and their logs."},
            {"name": "nodes", "description": "Nodes and draining."},
            {"name": "status", "description": "The cluster as a whole, leadership, probes and metrics."},
            {"name": "agent", "description": "The agent protocol (DESIGN §6): registration, heartbeats and assignment polls."},
        ],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token from the master's `auth.tokens`, with its role: reader < submitter < admin.",
                },
            },
        },
    })
}

/// The document, pretty-printed, with a final newline: what is served and
/// checked in.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

/// Each route's description, from the doc comment of its [`RouteId`]
/// variant (schemars carries doc comments into the schema).
fn operation_docs() -> Map<String, Value> {
    let schema = SchemaGenerator::default().into_root_schema_for::<RouteId>();
    schema
        .get("oneOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| {
            let name = v.get("const")?.as_str()?;
            let doc = v.get("description")?.clone();
            Some((name.to_string(), doc))
        })
        .collect()
}

/// The first sentence of a description.
fn summary(description: &str) -> String {
    let end = description
        .find(". ")
        .map_or(description.len(), |i| i + 1)
        .min(description.len());
    description[..end].trim_end_matches('.').to_string()
}

fn operation(route: &Route, docs: &Map<String, Value>, g: &mut SchemaGenerator) -> Value {
    let id = route.id.name();
    let description = docs.get(&id).and_then(Value::as_str).unwrap_or_default();
    let mut op = json!({
        "operationId": id,
        "summary": summary(description),
        "description": description,
        "tags": [route.tag],
    });
    let mut parameters: Vec<Value> = route
        .params()
        .map(|name| {
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": path_schema(route, name, g),
            })
        })
        .collect();
    if let Some(query) = route.query {
        parameters.extend(query_parameters(query, g));
    }
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    match route.body {
        Body::None => {}
        Body::Json(schema) => {
            op["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": schema(g)}},
            });
        }
        Body::Spec => {
            let spec = g.subschema_for::<JobSpec>();
            op["requestBody"] = json!({
                "required": true,
                "description": "A job spec, as JSON or as YAML.",
                "content": {
                    "application/json": {"schema": spec},
                    "application/yaml": {"schema": spec},
                },
            });
        }
    }
    op["security"] = match route.access {
        Access::Open => json!([]),
        Access::Token(role) => {
            op["x-drover-role"] = json!(role.name());
            // A token is needed only when the master has tokens at all
            // (`drover dev` on loopback has none).
            json!([{"token": []}, {}])
        }
    };
    let mut responses = Map::new();
    for ok in route.ok {
        let content = match ok.content {
            Content::Json(schema) => json!({"application/json": {"schema": schema(g)}}),
            Content::Text => json!({"text/plain": {"schema": {"type": "string"}}}),
        };
        responses.insert(
            ok.status.to_string(),
            json!({"description": ok.description, "content": content}),
        );
    }
    let error = g.subschema_for::<ErrorBody>();
    for status in route.errors() {
        if responses.contains_key(&status.to_string()) {
            continue;
        }
        let mut answer = json!({
            "description": error_description(route, status),
            "content": {"application/json": {"schema": error}},
        });
        match status {
            503 => {
                answer["headers"] = json!({"Retry-After": {
                    "description": "Seconds to wait before trying again (here or at another master).",
                    "schema": {"type": "integer", "minimum": 0},
                }});
            }
            429 => {
                answer["headers"] = json!({"Retry-After": {
                    "description": "Seconds to wait before sending the same request again.",
                    "schema": {"type": "integer", "minimum": 0},
                }});
            }
            401 => {
                answer["headers"] = json!({"WWW-Authenticate": {
                    "description": "`Bearer`.",
                    "schema": {"type": "string"},
                }});
            }
            _ => {}
        }
        responses.insert(status.to_string(), answer);
    }
    op["responses"] = Value::Object(responses);
    op
}

fn path_schema(route: &Route, name: &str, g: &mut SchemaGenerator) -> Schema {
    match name {
        "id" if route.path.starts_with("/v1/nodes") => g.subschema_for::<NodeId>(),
        "id" | "job" => g.subschema_for::<JobId>(),
        "index" => schemars::json_schema!({
            "type": "string",
            "pattern": "^(0|[1-9][0-9]{0,9})$",
            "description": "The task's index in its job, from 0.",
        }),
        "attempt" => schemars::json_schema!({
            "type": "string",
            "pattern": "^[1-9][0-9]{0,9}$",
            "description": "The attempt, from 1.",
        }),
        _ => schemars::json_schema!({"type": "string"}),
    }
}

/// The properties of a query struct, as query parameters.
fn query_parameters(query: crate::routes::SchemaFn, g: &mut SchemaGenerator) -> Vec<Value> {
    let reference = query(g);
    let name = reference
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .unwrap_or_default()
        .to_string();
    let Some(object) = g.definitions_mut().remove(&name) else {
        return Vec::new();
    };
    let props = object
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    props
        .into_iter()
        .map(|(name, mut schema)| {
            let description = schema.as_object_mut().and_then(|o| o.remove("description"));
            let mut p = json!({"name": name, "in": "query", "required": false, "schema": schema});
            if let Some(d) = description {
                p["description"] = d;
            }
            p
        })
        .collect()
}

fn error_description(route: &Route, status: u16) -> String {
    let what = match route.id {
        RouteId::GetJob | RouteId::StopJob | RouteId::ListJobTasks => "No such job.",
        RouteId::GetTask => "No such task.",
        RouteId::GetTaskLogs => {
            "No such task, it has not run yet, its node is gone, or the agent has no log for it."
        }
        RouteId::GetAlloc => "No such alloc.",
        RouteId::GetNode | RouteId::DrainNode => "No such node.",
        _ => "Not found.",
    };
    match status {
        400 => "Bad input: the body or query does not parse or validate; nothing was done. \
                A rejected job spec lists every problem in `error.fields[]`, each with its field path."
            .to_string(),
        401 => "No token, or an unknown one (only when the master has tokens).".to_string(),
        403 => "The token's role does not allow this route.".to_string(),
        404 => what.to_string(),
        409 => "The node id belongs to another host that is not down.".to_string(),
        411 => "The body has no Content-Length.".to_string(),
        413 => "The body is larger than `api.max_body`.".to_string(),
        415 => "The body's Content-Type is not one this route reads.".to_string(),
        429 if route.id == RouteId::SubmitJob => {
            "Overloaded: the master is serving as many calls as `api.max_requests` allows \
             (`overloaded`), or the job's tasks would take the pending queue past \
             `scheduler.max_pending_tasks` (`backlog_full`); nothing was done. Send the same \
             request again after `Retry-After` seconds."
                .to_string()
        }
        429 => "Overloaded: the master is serving as many calls of this kind as \
                `api.max_requests` (users) or `api.max_agent_requests` (agents) allows; nothing \
                was done. Send the same request again after `Retry-After` seconds."
            .to_string(),
        502 => "The agent's log server did not answer.".to_string(),
        503 if !route.leader => "No master leads yet.".to_string(),
        503 => "This master does not lead, is stopping, or cannot write for now; nothing was \
                done. Retry after `Retry-After` seconds, here or at another master."
            .to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_doc_comment() {
        let doc = document();
        for route in ROUTES {
            let op = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
            let description = op["description"].as_str().unwrap_or_default();
            assert!(
                !description.is_empty(),
                "{:?} has no description: {op}",
                route.id
            );
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"$ref\":\"").skip(1) {
            let target = part.split('"').next().unwrap();
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("a $ref outside components: {target}"));
            assert!(schemas.contains_key(name), "{target} does not resolve");
        }
    }

    #[test]
    fn errors_are_described_with_their_headers() {
        let doc = document();
        let submit = &doc["paths"]["/v1/jobs"]["post"]["responses"];
        for status in [
            "201", "200", "400", "401", "403", "411", "413", "415", "429", "503",
        ] {
            assert!(submit.get(status).is_some(), "POST /v1/jobs lacks {status}");
        }
        assert!(submit["503"]["headers"]["Retry-After"].is_object());
        assert!(submit["429"]["headers"]["Retry-After"].is_object());
        let health = &doc["paths"]["/healthz"]["get"]["responses"];
        assert!(
            health.get("429").is_none(),
            "open routes are never throttled"
        );
        let logs = &doc["paths"]["/v1/tasks/{job}/{index}/logs"]["get"];
        assert!(logs["responses"]["502"].is_object());
        let names: Vec<_> = logs["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["job", "index", "follow", "offset", "stream"]);
        let fields = &doc["components"]["schemas"]["FieldProblem"]["properties"]["path"];
        assert!(
            fields.is_object(),
            "the error body's fields[].path is described"
        );
    }
}
