//! The Drover agent (DESIGN §1, §6): fingerprinting, the task executor
//! (each task under a shim that outlives the agent), logs and their server,
//! and the register / poll / heartbeat loop.

pub mod agent;
pub mod client;
pub mod config;
pub mod executor;
pub mod fingerprint;
pub mod local_state;
pub mod logs;
pub mod metrics;
pub mod output;
pub mod service;
pub mod shim;

/// The protocol version this agent speaks.
pub fn protocol_version() -> u32 {
    drover_api::protocol::PROTOCOL_VERSION
}
