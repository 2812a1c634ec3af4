//! Small builders for clusters and queues, shared by the policies' table
//! tests, property tests and benches: policies are tested on views built by
//! hand, with no master. The master-level harness, where the real
//! lifecycle, pass and liveness code run on a virtual clock, is
//! `drover_master::harness`.

use std::collections::BTreeMap;
use std::sync::Arc;

use drover_api::{AllocId, JobId, NodeId};

use crate::view::{AllocView, Demand, Elastic, GpuView, NodeStatus, NodeView, TaskRequest};

pub const GIB: u64 = 1 << 30;

/// A node with 4 cores and 8 GiB, ready, no GPUs, no labels.
pub fn node(id: &str) -> NodeBuilder {
    NodeBuilder(NodeView {
        id: NodeId::new(id).expect("test node ids are valid"),
        status: NodeStatus::Ready,
        cpu_millis: 4000,
        memory_bytes: 8 * GIB,
        gpus: Vec::new(),
        labels: BTreeMap::new(),
        utilisation: 0.0,
    })
}

#[derive(Debug, Clone)]
pub struct NodeBuilder(NodeView);

impl NodeBuilder {
    pub fn cpu(mut self, millis: u64) -> Self {
        self.0.cpu_millis = millis;
        self
    }
    pub fn mem(mut self, bytes: u64) -> Self {
        self.0.memory_bytes = bytes;
        self
    }
    /// Adds `count` GPUs of `model`, indexed after the existing ones.
    pub fn gpus(mut self, model: &str, count: u32) -> Self {
        let start = self.0.gpus.len() as u32;
        self.0
            .gpus
            .extend((start..start + count).map(|index| GpuView {
                index,
                model: model.to_string(),
            }));
        self
    }
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.labels.insert(key.to_string(), value.to_string());
        self
    }
    pub fn status(mut self, status: NodeStatus) -> Self {
        self.0.status = status;
        self
    }
    pub fn utilisation(mut self, u: f64) -> Self {
        self.0.utilisation = u;
        self
    }
    pub fn build(self) -> NodeView {
        self.0
    }
}

/// A job whose tasks each ask for 1 core and 1 GiB at priority 50.
pub fn job(name: &str) -> JobBuilder {
    JobBuilder {
        job: JobId::new(name).expect("test job names are valid"),
        priority: 50,
        submit_seq: 0,
        demand: Demand {
            cpu_millis: 1000,
            memory_bytes: GIB,
            ..Demand::default()
        },
        elastic: None,
    }
}

#[derive(Debug, Clone)]
pub struct JobBuilder {
    job: JobId,
    priority: u8,
    submit_seq: u64,
    demand: Demand,
    elastic: Option<Elastic>,
}

impl JobBuilder {
    pub fn priority(mut self, p: u8) -> Self {
        self.priority = p;
        self
    }
    pub fn submitted(mut self, seq: u64) -> Self {
        self.submit_seq = seq;
        self
    }
    pub fn cpu(mut self, millis: u64) -> Self {
        self.demand.cpu_millis = millis;
        self
    }
    pub fn mem(mut self, bytes: u64) -> Self {
        self.demand.memory_bytes = bytes;
        self
    }
    pub fn gpus(mut self, n: u32) -> Self {
        self.demand.gpus = n;
        self
    }
    pub fn gpu_model(mut self, model: &str) -> Self {
        self.demand.gpu_model = Some(model.to_string());
        self
    }
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.demand
            .labels
            .insert(key.to_string(), value.to_string());
        self
    }
    pub fn elastic(mut self, min: u32, max: u32) -> Self {
        self.elastic = Some(Elastic { min, max });
        self
    }
    /// Tasks `0..n`, sharing one demand.
    pub fn tasks(&self, n: u32) -> Vec<TaskRequest> {
        let demand = Arc::new(self.demand.clone());
        (0..n)
            .map(|i| TaskRequest {
                task: self.job.task(i),
                priority: self.priority,
                submit_seq: self.submit_seq,
                demand: Arc::clone(&demand),
                elastic: self.elastic,
            })
            .collect()
    }
    /// A live alloc of task `index`, attempt 1, on `node`, using this job's
    /// demand and the given GPU device indices.
    pub fn alloc_on(&self, index: u32, node: &str, gpus: &[u32]) -> AllocView {
        AllocView {
            id: AllocId {
                task: self.job.task(index),
                attempt: 1,
            },
            node: NodeId::new(node).expect("test node ids are valid"),
            priority: self.priority,
            cpu_millis: self.demand.cpu_millis,
            memory_bytes: self.demand.memory_bytes,
            gpus: gpus.to_vec(),
            elastic: self.elastic,
            stopping: false,
        }
    }
}
