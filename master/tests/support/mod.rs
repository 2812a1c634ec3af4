//! Helpers shared by the integration tests. Each test crate uses a part.
#![allow(dead_code)]

pub mod etcd;
pub mod http;

use drover_api::protocol::{NodeResources, RegisterRequest, PROTOCOL_VERSION};
use drover_api::AllocId;

/// What an agent with 4 cores and 8 GiB, no GPUs, sends when it registers.
pub fn register_request(id: &str, log_addr: &str, running_allocs: Vec<AllocId>) -> RegisterRequest {
    RegisterRequest {
        node_id: Some(id.parse().expect("valid node id")),
        hostname: id.to_string(),
        log_addr: log_addr.to_string(),
        resources: NodeResources {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
            gpus: vec![],
        },
        reserved: Default::default(),
        labels: Default::default(),
        attributes: Default::default(),
        version: "test".into(),
        protocol: PROTOCOL_VERSION,
        running_allocs,
    }
}
