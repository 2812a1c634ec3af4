//! The Drover agent: fingerprinting, the task executor and the heartbeat /
//! assignment loop. Not built yet; see the agent issue. The crate exists so
//! that the workspace layout of DESIGN §1 is in place and later work slots in.

/// The protocol version this agent speaks.
pub fn protocol_version() -> u32 {
    drover_api::protocol::PROTOCOL_VERSION
}
