//! The agent protocol (DESIGN §6): JSON over HTTP between each agent and the
//! master. Durations are whole milliseconds in `*_ms` fields, resources plain
//! integers (`cpu_millis`, `memory_bytes`), ids their string forms.
//!
//! Unknown fields are ignored and empty lists/maps may be left out, so either
//! side can gain optional fields without a [`PROTOCOL_VERSION`] bump.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{AllocId, NodeId};
use crate::spec::{JobType, CUDA_VISIBLE_DEVICES};
use crate::state::AllocState;

/// Bumped on every incompatible change to the agent protocol messages.
pub const PROTOCOL_VERSION: u32 = 1;

/// `POST` a [`RegisterRequest`], get a [`RegisterResponse`].
pub const REGISTER_PATH: &str = "/v1/agent/register";
/// `POST` a [`HeartbeatRequest`], get a [`HeartbeatResponse`].
pub const HEARTBEAT_PATH: &str = "/v1/agent/heartbeat";
/// `POST` a [`PollRequest`], get a [`PollResponse`] as soon as the node's
/// assignments differ from `known_version` (or when the poll times out).
pub const POLL_PATH: &str = "/v1/agent/poll";

/// One GPU as the agent found it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct GpuDevice {
    /// The device index, as `CUDA_VISIBLE_DEVICES` counts.
    pub index: u32,
    pub uuid: String,
    /// e.g. "NVIDIA H100 80GB HBM3".
    pub model: String,
    pub memory_bytes: u64,
}

/// A node's total capacity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub struct NodeResources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    #[serde(default)]
    pub gpus: Vec<GpuDevice>,
}

/// Capacity kept back for the system and the agent itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub struct Reserved {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// What a node says about itself: the same fields in its registration, in
/// the master's record of it, and in the API's view of it (flattened into
/// each, so the JSON of all three is flat).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub struct NodeDescriptor {
    pub hostname: String,
    /// `host:port` of the agent's log server.
    pub log_addr: String,
    pub resources: NodeResources,
    #[serde(default)]
    pub reserved: Reserved,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Facts about the node (OS, kernel, driver versions) for display.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// The agent's software version.
    pub version: String,
}

/// `POST /v1/agent/register`: sent on every agent start and whenever the
/// master asks for it ([`HeartbeatResponse::reregister`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RegisterRequest {
    /// The id kept in the agent's data dir; `None` on a node's first start
    /// (the master picks one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<NodeId>,
    #[serde(flatten)]
    pub desc: NodeDescriptor,
    /// The agent's [`PROTOCOL_VERSION`].
    #[schemars(range(min = PROTOCOL_VERSION, max = PROTOCOL_VERSION))]
    pub protocol: u32,
    /// Allocations the agent is still running from before.
    #[serde(default)]
    pub running_allocs: Vec<AllocId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RegisterResponse {
    /// The node's id; the agent keeps it.
    pub node_id: NodeId,
    pub heartbeat_interval_ms: u64,
    /// Of the `running_allocs`, those the master no longer wants (they were
    /// replaced while the node was away): kill them.
    #[serde(default)]
    pub kill: Vec<AllocId>,
    /// Given once, when a node joins with a join token: the credential that
    /// every later call for this node must carry as its bearer token. The
    /// master keeps only its hash; the agent keeps it 0600 in its data dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// The node's log key (hex): the agent's log server serves a task's log
    /// only to a request carrying a capability signed with it
    /// ([`crate::capability`]), which only the master makes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_key: Option<String>,
}

/// Free resources as the agent sees them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub struct Offer {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Indexes of the GPUs no allocation holds.
    #[serde(default)]
    pub free_gpus: Vec<u32>,
}

/// Live usage of one allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub struct AllocUsage {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// Live usage of the whole node and of each allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
pub struct NodeUsage {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    #[serde(default)]
    pub allocs: BTreeMap<AllocId, AllocUsage>,
}

/// An allocation changed state on the agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct AllocUpdate {
    pub alloc: AllocId,
    pub state: AllocState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Why, in words: "exec: no such file", "OOM killed".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the agent saw the change (agent clock).
    pub at_unix_ms: u64,
}

/// `POST /v1/agent/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HeartbeatRequest {
    pub node_id: NodeId,
    pub offer: Offer,
    pub usage: NodeUsage,
    /// State changes since the last acknowledged heartbeat, oldest first.
    #[serde(default)]
    pub updates: Vec<AllocUpdate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct HeartbeatResponse {
    pub heartbeat_interval_ms: u64,
    /// The master does not know this node (e.g. it was declared down and
    /// forgotten, or a new leader lost it): register again.
    #[serde(default)]
    pub reregister: bool,
}

/// `POST /v1/agent/poll`: a long poll for the node's desired allocations.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct PollRequest {
    pub node_id: NodeId,
    /// The `version` of the last [`PollResponse`] acted upon; 0 at start.
    pub known_version: u64,
    /// The agent keeps what it was told ([`Desired`]) and takes answers
    /// that say only what changed since `known_version`. Without it, every
    /// answer is the whole set.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delta: bool,
}

/// The node's desired allocations: all of them, or what changed since the
/// poll's `known_version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PollResponse {
    pub version: u64,
    /// `true`: `allocs` is the whole set. Anything the agent runs that is
    /// not listed must be killed; anything listed that it does not run yet
    /// must be started (launch is idempotent on the alloc id), unless it is
    /// marked [`Assignment::stop`]. Always so on the first poll, when the
    /// agent did not ask for deltas, and when the master no longer has
    /// every change since `known_version` (a version gap, a restart).
    ///
    /// `false`: `allocs` are the allocs added or changed since
    /// `known_version`, and `removed` those no longer wanted; the rest is
    /// as the agent last knew it.
    #[serde(default = "yes")]
    pub full: bool,
    #[serde(default)]
    pub allocs: Vec<Assignment>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<AllocId>,
}

fn yes() -> bool {
    true
}

/// What an agent was told to run, kept between polls: a full answer
/// replaces it, a delta updates it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    allocs: BTreeMap<AllocId, Assignment>,
}

impl Desired {
    /// Takes in one poll's answer.
    pub fn apply(&mut self, answer: PollResponse) {
        if answer.full {
            self.allocs.clear();
        }
        for id in &answer.removed {
            self.allocs.remove(id);
        }
        for a in answer.allocs {
            self.allocs.insert(a.alloc.clone(), a);
        }
    }

    /// Every desired alloc, in id order.
    pub fn assignments(&self) -> Vec<Assignment> {
        self.allocs.values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.allocs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.allocs.is_empty()
    }
}

/// One allocation to run, with everything the agent needs to launch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Assignment {
    pub alloc: AllocId,
    pub job_type: JobType,
    pub command: Vec<String>,
    /// The complete environment to add: the spec's `env` plus [`task_env`]'s.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// GPU indexes assigned to this allocation.
    #[serde(default)]
    pub gpus: Vec<u32>,
    /// Time between SIGTERM and SIGKILL when stopping it.
    pub kill_timeout_ms: u64,
    /// The master is stopping this alloc and holds its resources until the
    /// agent reports it ended: stop it (SIGTERM, SIGKILL after
    /// `kill_timeout_ms`) and report `killed` once its processes are gone;
    /// never start it. An alloc the agent never started is reported
    /// `killed` at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop: bool,
}

/// The environment of one allocation: `user_env` plus Drover's variables
/// (DESIGN §3, §5): `DROVER_JOB`, `DROVER_TASK_ID`, `DROVER_TASK_INDEX`,
/// `DROVER_ALLOC_ID`, `DROVER_ATTEMPT`; for sharded jobs (`shard_count` set)
/// `DROVER_SHARD` (the task index) and `DROVER_SHARD_COUNT`; and
/// `CUDA_VISIBLE_DEVICES` (comma-joined indexes) when `gpus` is non-empty.
///
/// Drover's variables win over `user_env`; a `user_env` entry for a reserved
/// name (which a validated spec never has) is dropped.
pub fn task_env(
    alloc: &AllocId,
    shard_count: Option<u32>,
    gpus: &[u32],
    user_env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = user_env
        .iter()
        .filter(|(k, _)| {
            !k.starts_with(crate::spec::RESERVED_ENV_PREFIX) && *k != CUDA_VISIBLE_DEVICES
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let task = &alloc.task;
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    set("DROVER_JOB", task.job.to_string());
    set("DROVER_TASK_ID", task.to_string());
    set("DROVER_TASK_INDEX", task.index.to_string());
    set("DROVER_ALLOC_ID", alloc.to_string());
    set("DROVER_ATTEMPT", alloc.attempt.to_string());
    if let Some(n) = shard_count {
        set("DROVER_SHARD", task.index.to_string());
        set("DROVER_SHARD_COUNT", n.to_string());
    }
    if !gpus.is_empty() {
        let list: Vec<String> = gpus.iter().map(u32::to_string).collect();
        set(CUDA_VISIBLE_DEVICES, list.join(","));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use std::fmt::Debug;

    fn alloc(s: &str) -> AllocId {
        s.parse().unwrap()
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(
        msg: &T,
    ) -> serde_json::Value {
        let text = serde_json::to_string(msg).unwrap();
        let back: T = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, msg, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    fn register() -> RegisterRequest {
        RegisterRequest {
            node_id: Some(NodeId::new("gpu-1").unwrap()),
            desc: NodeDescriptor {
                hostname: "gpu-1.example".into(),
                log_addr: "10.0.0.7:7071".into(),
                resources: NodeResources {
                    cpu_millis: 64_000,
                    memory_bytes: 512 << 30,
                    gpus: vec![GpuDevice {
                        index: 0,
                        uuid: "GPU-8f1c".into(),
                        model: "NVIDIA H100 80GB HBM3".into(),
                        memory_bytes: 80 << 30,
                    }],
                },
                reserved: Reserved {
                    cpu_millis: 1000,
                    memory_bytes: 2 << 30,
                },
                labels: [("zone".to_string(), "a".to_string())].into(),
                attributes: [("os".to_string(), "linux".to_string())].into(),
                version: "0.1.0".into(),
            },
            protocol: PROTOCOL_VERSION,
            running_allocs: vec![alloc("render/3/1")],
        }
    }

    #[test]
    fn register_messages_round_trip_through_json_with_ids_as_strings() {
        let json = round_trip(&register());
        assert_eq!(json["node_id"], "gpu-1");
        assert_eq!(json["running_allocs"][0], "render/3/1");
        assert_eq!(
            json["resources"]["gpus"][0]["model"],
            "NVIDIA H100 80GB HBM3"
        );
        let resp = RegisterResponse {
            node_id: NodeId::new("gpu-1").unwrap(),
            heartbeat_interval_ms: 1000,
            kill: vec![alloc("render/3/1")],
            credential: None,
            log_key: None,
        };
        assert_eq!(round_trip(&resp)["kill"][0], "render/3/1");
    }

    #[test]
    fn heartbeat_messages_round_trip_with_per_alloc_usage_keyed_by_alloc_id() {
        let req = HeartbeatRequest {
            node_id: NodeId::new("n1").unwrap(),
            offer: Offer {
                cpu_millis: 3500,
                memory_bytes: 1 << 30,
                free_gpus: vec![1, 3],
            },
            usage: NodeUsage {
                cpu_millis: 500,
                memory_bytes: 3 << 30,
                allocs: [(
                    alloc("etl/10/2"),
                    AllocUsage {
                        cpu_millis: 250,
                        memory_bytes: 1 << 20,
                    },
                )]
                .into(),
            },
            updates: vec![
                AllocUpdate {
                    alloc: alloc("etl/10/2"),
                    state: AllocState::Running,
                    exit_code: None,
                    signal: None,
                    message: None,
                    at_unix_ms: 1,
                },
                AllocUpdate {
                    alloc: alloc("etl/9/1"),
                    state: AllocState::Failed,
                    exit_code: Some(137),
                    signal: Some(9),
                    message: Some("OOM killed".into()),
                    at_unix_ms: 2,
                },
            ],
        };
        let json = round_trip(&req);
        assert_eq!(json["usage"]["allocs"]["etl/10/2"]["cpu_millis"], 250);
        assert_eq!(json["updates"][1]["state"], "failed");
        assert!(json["updates"][0].get("exit_code").is_none());
        let resp = HeartbeatResponse {
            heartbeat_interval_ms: 1000,
            reregister: true,
        };
        assert_eq!(round_trip(&resp)["reregister"], true);
    }

    #[test]
    fn poll_messages_round_trip_and_empty_lists_may_be_left_out() {
        let req = PollRequest {
            node_id: NodeId::new("n1").unwrap(),
            known_version: 41,
            delta: true,
        };
        round_trip(&req);
        let resp = PollResponse {
            version: 42,
            full: true,
            removed: Vec::new(),
            allocs: vec![Assignment {
                alloc: alloc("train/0/1"),
                job_type: JobType::Batch,
                command: vec!["python".into(), "train.py".into()],
                env: task_env(&alloc("train/0/1"), Some(4), &[2], &BTreeMap::new()),
                cpu_millis: 2000,
                memory_bytes: 8 << 30,
                gpus: vec![2],
                kill_timeout_ms: 5000,
                stop: false,
            }],
        };
        let json = round_trip(&resp);
        assert_eq!(json["allocs"][0]["job_type"], "batch");
        assert_eq!(json["allocs"][0]["env"]["DROVER_SHARD_COUNT"], "4");

        // An answer that does not say is the whole set, as before deltas.
        let minimal: PollResponse = serde_json::from_str(r#"{"version": 7}"#).unwrap();
        assert!(minimal.allocs.is_empty() && minimal.full && minimal.removed.is_empty());
        let old: PollRequest =
            serde_json::from_str(r#"{"node_id":"n1","known_version":3}"#).unwrap();
        assert!(!old.delta);
        let hb: HeartbeatRequest = serde_json::from_str(
            r#"{"node_id":"n1","offer":{"cpu_millis":1,"memory_bytes":2},
                "usage":{"cpu_millis":0,"memory_bytes":0},"future_field":true}"#,
        )
        .unwrap();
        assert!(hb.updates.is_empty() && hb.offer.free_gpus.is_empty());
        assert!(
            serde_json::from_str::<PollRequest>(r#"{"node_id":"bad id","known_version":0}"#)
                .is_err()
        );
    }

    fn assignment(id: &str, stop: bool) -> Assignment {
        Assignment {
            alloc: alloc(id),
            job_type: JobType::Batch,
            command: vec!["true".into()],
            env: BTreeMap::new(),
            cpu_millis: 100,
            memory_bytes: 1 << 20,
            gpus: Vec::new(),
            kill_timeout_ms: 5000,
            stop,
        }
    }

    #[test]
    fn desired_takes_a_full_answer_whole_and_a_delta_as_changes() {
        let mut d = Desired::default();
        d.apply(PollResponse {
            version: 1,
            full: true,
            allocs: vec![assignment("a/0/1", false), assignment("a/1/1", false)],
            removed: Vec::new(),
        });
        assert_eq!(d.len(), 2);
        // A delta: one changed (now stopping), one gone, one new.
        d.apply(PollResponse {
            version: 3,
            full: false,
            allocs: vec![assignment("a/1/1", true), assignment("b/0/1", false)],
            removed: vec![alloc("a/0/1")],
        });
        let ids: Vec<(String, bool)> = d
            .assignments()
            .iter()
            .map(|a| (a.alloc.to_string(), a.stop))
            .collect();
        assert_eq!(
            ids,
            [("a/1/1".to_string(), true), ("b/0/1".to_string(), false)]
        );
        // A full answer replaces everything.
        d.apply(PollResponse {
            version: 4,
            full: true,
            allocs: vec![assignment("c/0/1", false)],
            removed: Vec::new(),
        });
        assert_eq!(d.assignments()[0].alloc, alloc("c/0/1"));
        assert_eq!(d.len(), 1);
        // An empty delta changes nothing.
        d.apply(PollResponse {
            version: 4,
            full: false,
            allocs: Vec::new(),
            removed: Vec::new(),
        });
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn task_env_sets_the_drover_variables_from_the_alloc_id() {
        let user: BTreeMap<String, String> = [("QUALITY".to_string(), "high".to_string())].into();
        let env = task_env(&alloc("render/3/2"), None, &[], &user);
        let expected: BTreeMap<String, String> = [
            ("DROVER_ALLOC_ID", "render/3/2"),
            ("DROVER_ATTEMPT", "2"),
            ("DROVER_JOB", "render"),
            ("DROVER_TASK_ID", "render/3"),
            ("DROVER_TASK_INDEX", "3"),
            ("QUALITY", "high"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn task_env_adds_shard_variables_and_cuda_devices_when_relevant() {
        let env = task_env(&alloc("index/17/1"), Some(64), &[0, 3], &BTreeMap::new());
        assert_eq!(env["DROVER_SHARD"], "17");
        assert_eq!(env["DROVER_SHARD_COUNT"], "64");
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "0,3");
        let plain = task_env(&alloc("index/17/1"), None, &[], &BTreeMap::new());
        assert!(!plain.contains_key("DROVER_SHARD"));
        assert!(!plain.contains_key("DROVER_SHARD_COUNT"));
        assert!(!plain.contains_key("CUDA_VISIBLE_DEVICES"));
    }

    #[test]
    fn task_env_never_lets_user_env_override_reserved_names() {
        let user: BTreeMap<String, String> = [
            ("DROVER_JOB", "evil"),
            ("DROVER_EXTRA", "x"),
            ("CUDA_VISIBLE_DEVICES", "0,1,2,3"),
            ("OK", "yes"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let env = task_env(&alloc("a/0/1"), None, &[], &user);
        assert_eq!(env["DROVER_JOB"], "a");
        assert!(!env.contains_key("DROVER_EXTRA"));
        assert!(!env.contains_key("CUDA_VISIBLE_DEVICES"));
        assert_eq!(env["OK"], "yes");
    }
}
