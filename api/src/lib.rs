//! `drover-api`: the shared language of Drover's master, agent, CLI and
//! policies (DESIGN §1). Types and validation only; no server code.

pub mod config;
pub mod ids;
pub mod policy;
pub mod protocol;
pub mod quantity;
pub mod spec;
pub mod state;

pub use ids::{AllocId, IdError, JobId, NodeId, TaskId};
pub use policy::{PolicyKind, UnknownPolicy};
pub use quantity::{Cpu, Memory, QuantityError};
pub use spec::{
    Constraints, Elastic, FieldError, JobSpec, JobType, ResourceRequest, RestartPolicy, SpecError,
    ValidationErrors,
};
pub use state::{AllocState, JobState, TaskState, Transition, UnknownState};
