//! Helpers shared by the integration tests. Each test crate uses a part.
#![allow(dead_code)]

pub mod http;

/// The private etcd of the end-to-end harness, shared with these tests.
#[allow(unused_imports)]
pub use drover_e2e::etcd;

use drover_api::protocol::{NodeDescriptor, NodeResources, RegisterRequest, PROTOCOL_VERSION};
use drover_api::AllocId;

/// What an agent with 4 cores and 8 GiB, no GPUs, sends when it registers.
pub fn register_request(id: &str, log_addr: &str, running_allocs: Vec<AllocId>) -> RegisterRequest {
    RegisterRequest {
        node_id: Some(id.parse().expect("valid node id")),
        desc: NodeDescriptor {
            hostname: id.to_string(),
            log_addr: log_addr.to_string(),
            resources: NodeResources {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
                gpus: vec![],
            },
            version: "test".into(),
            ..NodeDescriptor::default()
        },
        protocol: PROTOCOL_VERSION,
        running_allocs,
    }
}

/// A child process (a real `drover-master`) killed and reaped when dropped.
#[derive(Debug)]
pub struct MasterProcess(pub std::process::Child);

impl MasterProcess {
    /// Sends `sig` (`-TERM`, `-STOP`, `-CONT`…) with kill(1).
    pub fn signal(&self, sig: &str) {
        let sent = std::process::Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill {sig}");
    }
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback address whose port is free now; the master binds it right
/// after (a race with another process is possible and makes the test fail
/// loudly, never pass wrongly).
pub fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("its address")
}
