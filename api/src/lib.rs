//! `drover-api`: the shared language of Drover's master, agent, CLI and
//! policies (DESIGN §1). Types and validation only; no server code. With the `client`
//! feature, also a typed HTTP client of the master ([`client::Client`]).

pub mod capability;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
pub mod ids;
pub mod openapi;
pub mod policy;
pub mod protocol;
pub mod quantity;
pub mod routes;
mod schema;
pub mod spec;
pub mod state;
pub mod views;

pub use ids::{AllocId, IdError, JobId, NodeId, TaskId};
pub use policy::{PolicyKind, UnknownPolicy};
pub use quantity::{Cpu, Memory, QuantityError};
pub use spec::{
    Constraints, Elastic, FieldError, JobSpec, JobType, ResourceRequest, RestartPolicy, SpecError,
    ValidationErrors,
};
pub use state::{AllocState, JobState, NodeState, Reason, TaskState, Transition, UnknownState};
