//! `drover-api`: the shared language of Drover's master, agent, CLI and
//! policies (DESIGN §1). Types and validation only; no server code.

pub mod ids;
pub mod policy;
pub mod protocol;
pub mod quantity;

pub use ids::{AllocId, IdError, JobId, NodeId, TaskId};
pub use policy::PolicyKind;
pub use quantity::{Cpu, Memory, QuantityError};
