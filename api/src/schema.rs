//! JSON Schemas of the types whose serde form is written by hand (ids,
//! quantities, reasons, the job spec), for the OpenAPI document
//! ([`crate::openapi`]). The derived types get theirs from `#[derive(JsonSchema)]`.
//!
//! These schemas describe what the parsers accept: each is as strict as the
//! parser where JSON Schema can say it (patterns, ranges, lengths), and
//! looser where it cannot (rules across fields, capacity). The validator's
//! 400 with `fields[].path` remains the authority.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

use crate::ids::{AllocId, JobId, NodeId, TaskId, MAX_JOB_NAME_LEN, MAX_NODE_ID_LEN};
use crate::quantity::{Cpu, Memory};
use crate::spec::{
    JobSpec, MAX_ARG_BYTES, MAX_COMMAND_ARGS, MAX_ENV_VARS, MAX_GPUS_PER_TASK, MAX_LABELS,
    MAX_LABEL_BYTES, MAX_RESTART_ATTEMPTS, MAX_TASKS,
};
use crate::state::Reason;

/// A job name, as a regular expression.
const JOB: &str = "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?";
/// A task index or an attempt: a decimal without leading zeros.
const INDEX: &str = "(?:0|[1-9][0-9]{0,9})";
const ATTEMPT: &str = "[1-9][0-9]{0,9}";

/// A string with a pattern and a description.
fn string(pattern: String, description: &str) -> Schema {
    json_schema!({
        "type": "string",
        "pattern": pattern,
        "description": description,
    })
}

macro_rules! string_schema {
    ($ty:ty, $name:literal, $schema:expr) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

string_schema!(
    JobId,
    "JobId",
    json_schema!({
        "type": "string",
        "pattern": format!("^{JOB}$"),
        "maxLength": MAX_JOB_NAME_LEN,
        "description": "A job's name: 1 to 63 of [a-z0-9-], starting and ending with a letter or digit.",
    })
);
string_schema!(
    TaskId,
    "TaskId",
    string(
        format!("^{JOB}/{INDEX}$"),
        "A task: `<job>/<index>`, indexes from 0."
    )
);
string_schema!(
    AllocId,
    "AllocId",
    string(
        format!("^{JOB}/{INDEX}/{ATTEMPT}$"),
        "An attempt of a task on a node: `<job>/<index>/<attempt>`, attempts from 1."
    )
);
string_schema!(
    NodeId,
    "NodeId",
    json_schema!({
        "type": "string",
        "pattern": "^[A-Za-z0-9._-]+$",
        "minLength": 1,
        "maxLength": MAX_NODE_ID_LEN,
        "description": "A node's id: 1 to 128 of [A-Za-z0-9._-].",
    })
);

impl JsonSchema for Reason {
    fn schema_name() -> Cow<'static, str> {
        "Reason".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "Short and human: \"submitted\", \"exit code 1\", \"node node-3 down\".",
        })
    }
}

string_schema!(
    Cpu,
    "Cpu",
    json_schema!({
        "description": "CPU as cores (`2`, `0.5`) or millicores (`\"500m\"`); more than zero, at most 65536 cores. Answers write the string form.",
        "type": ["string", "number"],
        "examples": ["500m", "2"],
    })
);
string_schema!(
    Memory,
    "Memory",
    json_schema!({
        "description": "A size in bytes, or with a binary (`\"256Mi\"`) or decimal (`\"100M\"`) suffix; more than zero, at most 1Pi. Answers write the string form.",
        "type": ["string", "integer"],
        "examples": ["256Mi", "2Gi"],
    })
);

/// A duration as humantime writes and reads it.
fn duration(description: &str) -> Schema {
    json_schema!({
        "type": ["string", "null"],
        "description": description,
        "examples": ["1s", "500ms", "1m 30s"],
    })
}

/// Text without NUL bytes (they cannot reach `execve`).
const NO_NUL: &str = "^[^\\u0000]*$";

/// A mapping of names to text; numbers and booleans are taken as their text.
fn text_map(description: &str, max: usize, names: Schema, value: Schema) -> Schema {
    json_schema!({
        "type": ["object", "null"],
        "description": description,
        "maxProperties": max,
        "propertyNames": names,
        "additionalProperties": value,
    })
}

/// The rules across fields that the validator checks, as far as JSON Schema
/// can say them. A null field counts as absent, as in the validator.
fn cross_field_rules() -> serde_json::Value {
    let int = |field: &str| json_schema!({"properties": {field: {"type": "integer"}}, "required": [field]});
    let object = |field: &str| json_schema!({"properties": {field: {"type": "object"}}, "required": [field]});
    serde_json::json!([
        // count or shards, not both.
        {"not": {"allOf": [int("count"), int("shards")]}},
        // elastic bounds shards, and only elastic-sharding places it.
        {"if": object("elastic"), "then": {
            "allOf": [int("shards")],
            "properties": {"policy": {"enum": ["elastic-sharding", null]}},
        }},
        {"if": {"properties": {"policy": {"const": "elastic-sharding"}}, "required": ["policy"]},
         "then": {"allOf": [int("shards"), object("elastic")]}},
        // Shards run once to success: batch only.
        {"if": {"properties": {"type": {"const": "service"}}, "required": ["type"]},
         "then": {"not": int("shards")}},
        // A GPU model constrains GPUs the task asks for.
        {"if": {"properties": {"constraints": {"properties": {"gpu_model": {"type": "string"}}, "required": ["gpu_model"]}}, "required": ["constraints"]},
         "then": {"properties": {"resources": {"properties": {"gpu": {"type": "integer", "minimum": 1}}, "required": ["gpu"]}}, "required": ["resources"]}},
    ])
}

impl JsonSchema for JobSpec {
    fn schema_name() -> Cow<'static, str> {
        "JobSpec".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        let count = json_schema!({"type": ["integer", "null"], "minimum": 1, "maximum": MAX_TASKS});
        json_schema!({
            "type": "object",
            "description": "A job as submitted (JSON, or YAML with `Content-Type: application/yaml`). Absent or null fields take their defaults; answers write every field in its canonical form. Rules across fields (`count` or `shards`, `elastic` needs `shards`, GPU model needs a GPU) are checked by the validator, which answers 400 naming each field.",
            "required": ["name", "command"],
            "additionalProperties": false,
            "allOf": cross_field_rules(),
            "properties": {
                "name": g.subschema_for::<JobId>(),
                "type": {
                    "type": ["string", "null"],
                    "enum": ["batch", "service", null],
                    "description": "`batch` tasks run to completion; `service` tasks are restarted whenever they end. Default batch.",
                },
                "priority": {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "maximum": 100,
                    "description": "Higher runs first and, under the priority policy, may preempt. Default 50.",
                },
                "policy": {
                    "type": ["string", "null"],
                    "enum": ["round-robin", "least-loaded", "priority", "elastic-sharding", null],
                    "description": "The placement policy; the master's default when absent.",
                },
                "count": count.clone(),
                "shards": count,
                "elastic": {
                    "type": ["object", "null"],
                    "description": "Start when `min` shards can run at once, grow to `max` (at most `shards`).",
                    "required": ["min", "max"],
                    "additionalProperties": false,
                    "properties": {
                        "min": {"type": "integer", "minimum": 1, "maximum": MAX_TASKS},
                        "max": {"type": "integer", "minimum": 1, "maximum": MAX_TASKS},
                    },
                },
                "command": {
                    "type": "array",
                    "description": "The program and its arguments; no shell.",
                    "minItems": 1,
                    "maxItems": MAX_COMMAND_ARGS,
                    "prefixItems": [{"minLength": 1}],
                    "items": {"type": "string", "maxLength": MAX_ARG_BYTES, "pattern": NO_NUL},
                },
                "env": text_map(
                    "Extra environment for every task. DROVER_* and CUDA_VISIBLE_DEVICES are reserved: Drover sets them.",
                    MAX_ENV_VARS,
                    json_schema!({
                        "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
                        "not": {"anyOf": [{"pattern": "^DROVER_"}, {"const": "CUDA_VISIBLE_DEVICES"}]},
                    }),
                    json_schema!({"type": ["string", "number", "boolean"], "pattern": NO_NUL}),
                ),
                "resources": {
                    "type": ["object", "null"],
                    "description": "What one task needs on its node. Defaults: cpu 100m, memory 64Mi, gpu 0.",
                    "additionalProperties": false,
                    "properties": {
                        "cpu": g.subschema_for::<Cpu>(),
                        "memory": g.subschema_for::<Memory>(),
                        "gpu": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_GPUS_PER_TASK},
                    },
                },
                "constraints": {
                    "type": ["object", "null"],
                    "description": "Where a task may run.",
                    "additionalProperties": false,
                    "properties": {
                        "labels": text_map(
                            "Every label must be present on the node with this value.",
                            MAX_LABELS,
                            json_schema!({"minLength": 1, "maxLength": MAX_LABEL_BYTES}),
                            json_schema!({"type": ["string", "number", "boolean"], "maxLength": MAX_LABEL_BYTES}),
                        ),
                        "gpu_model": {
                            "type": ["string", "null"],
                            "maxLength": MAX_LABEL_BYTES,
                            "pattern": "\\S",
                            "description": "Only GPUs whose model contains this text (needs resources.gpu >= 1).",
                        },
                    },
                },
                "restart": {
                    "type": ["object", "null"],
                    "description": "How a failed or lost task is retried: `delay * backoff^(n-1)`, at most `max_delay`.",
                    "additionalProperties": false,
                    "properties": {
                        "attempts": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_RESTART_ATTEMPTS},
                        "delay": duration("Before the first restart. Default 1s; at most a year."),
                        "backoff": {"type": ["number", "null"], "minimum": 1, "description": "Default 2."},
                        "max_delay": duration("Default 5m; at most a year."),
                    },
                },
                "kill_timeout": duration("Between SIGTERM and SIGKILL when a task is stopped; the master's scheduler.kill_grace when absent. At most 1h."),
            },
        })
    }
}
