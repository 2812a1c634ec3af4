//! The agent protocol (DESIGN §6). Placeholder until filled in.

/// Bumped on every incompatible change to the agent protocol messages.
pub const PROTOCOL_VERSION: u32 = 1;
