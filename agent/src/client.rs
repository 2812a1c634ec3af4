//! The agent's side of the agent protocol (DESIGN §6) is drover-api's typed
//! client: JSON over HTTP/1.1 to one of several masters, failing over to the
//! next when one does not answer.

pub use drover_api::client::{Client as MasterClient, ClientError};
