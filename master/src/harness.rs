//! A master with nothing around it: no HTTP, no store on disk, no agents,
//! no wall time. The real lifecycle, scheduling pass, restart policy,
//! preemption, elastic sharding and liveness code run as they do in
//! `drover-master`, but the caller plays the agents and moves the clock
//! (tokio's, paused). Nomad's scheduler `Harness` is the model.
//! `drover simulate` replays workloads through it, and the master's own
//! tests use it where they would otherwise fake a cluster by hand.
//!
//! Virtual agents differ from real ones in one way: they do not send a
//! heartbeat every interval. A node the caller keeps alive
//! ([`Harness::keep_alive`]) counts as heard from; one it stops keeping
//! alive falls silent and goes down after `node_timeout`, through the real
//! liveness check.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use drover_api::protocol::{
    AllocUpdate, HeartbeatRequest, NodeDescriptor, NodeResources, NodeUsage, Offer,
    RegisterRequest, PROTOCOL_VERSION,
};
use drover_api::views::SubmitAnswer;
use drover_api::{AllocId, AllocState, JobSpec, NodeId};

use crate::auth::Principal;
use crate::clock::Clock;
use crate::core::{CommitError, Master, Settings};
use crate::store::{Batch, Snapshot, Store, StoreError};

/// A store that keeps nothing: a simulation has no crash to survive, and
/// fsyncs would cost more than the scheduling it measures.
#[derive(Debug, Default)]
pub struct NullStore;

#[async_trait]
impl Store for NullStore {
    fn backend(&self) -> &'static str {
        "none"
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::new())
    }

    async fn commit(&self, _batch: Batch) -> Result<(), StoreError> {
        Ok(())
    }

    async fn size_bytes(&self) -> Option<u64> {
        None
    }

    async fn compact(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// What the master wants of the virtual agents after a pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Orders {
    /// Allocs placed and not yet started, with their nodes.
    pub start: Vec<(NodeId, AllocId)>,
    /// Allocs the master is stopping (preempted, stopped jobs, shrunk
    /// elastic jobs), with their nodes.
    pub stop: Vec<(NodeId, AllocId)>,
}

#[derive(Debug)]
pub struct Harness {
    master: Arc<Master>,
}

impl Harness {
    /// The runtime a harness runs on: one thread, and a clock that moves
    /// only when told to (or when every task waits on a timer).
    pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
    }

    /// A master with `settings` on an empty [`NullStore`], whose wall
    /// clock starts at the Unix epoch (API timestamps are virtual time).
    pub async fn new(settings: Settings) -> Result<Harness, StoreError> {
        let master = Master::open(settings, Arc::new(NullStore), Clock::starting_at(0)).await?;
        master.log_touched();
        Ok(Harness { master })
    }

    pub fn master(&self) -> &Arc<Master> {
        &self.master
    }

    /// Virtual milliseconds since the harness started.
    pub fn now_ms(&self) -> u64 {
        self.master.clock.wall_ms()
    }

    /// Moves the virtual clock on by `by`, letting timers due meanwhile fire.
    pub async fn advance(&self, by: Duration) {
        tokio::time::advance(by).await;
    }

    /// Registers a node (again, after a failure: it comes back empty, as a
    /// rebooted machine would).
    pub async fn add_node(
        &self,
        id: &NodeId,
        resources: NodeResources,
        labels: std::collections::BTreeMap<String, String>,
    ) -> Result<(), CommitError> {
        let req = RegisterRequest {
            node_id: Some(id.clone()),
            desc: NodeDescriptor {
                hostname: id.to_string(),
                log_addr: "0.0.0.0:0".to_string(),
                resources,
                labels,
                version: "harness".to_string(),
                ..NodeDescriptor::default()
            },
            protocol: PROTOCOL_VERSION,
            running_allocs: Vec::new(),
        };
        self.master.register(req, &Principal::Anyone).await?;
        Ok(())
    }

    pub async fn submit(&self, spec: JobSpec) -> Result<SubmitAnswer, CommitError> {
        self.master.submit(spec, &Principal::Anyone).await
    }

    /// One scheduling pass; the number of tasks placed.
    pub async fn pass(&self) -> Result<usize, CommitError> {
        self.master.schedule_pass().await
    }

    /// Allocs that changed since the last call and now wait on their
    /// agents: to start (placed) or to stop (being stopped), in id order.
    /// Each is listed once, as a poll's delta would carry it; the virtual
    /// agents are expected to act on it (see [`Harness::report`]). What it
    /// costs is what changed, not what runs.
    pub async fn orders(&self) -> Orders {
        let touched = self.master.take_touched();
        let cluster = self.master.lock().await;
        let mut orders = Orders::default();
        for id in touched {
            let Some(a) = cluster.allocs.get(&id) else {
                continue;
            };
            match a.state {
                AllocState::Assigned => orders.start.push((a.node.clone(), id)),
                AllocState::Stopping => orders.stop.push((a.node.clone(), id)),
                _ => {}
            }
        }
        orders
    }

    /// What node `node`'s agent says about its allocs, through the real
    /// heartbeat (which also counts as hearing from it).
    pub async fn report(
        &self,
        node: &NodeId,
        changes: &[(AllocId, AllocState, Option<i32>)],
    ) -> Result<(), CommitError> {
        let at_unix_ms = self.now_ms();
        let updates = changes
            .iter()
            .map(|(alloc, state, exit_code)| AllocUpdate {
                alloc: alloc.clone(),
                state: *state,
                exit_code: *exit_code,
                signal: None,
                message: None,
                at_unix_ms,
            })
            .collect();
        let req = HeartbeatRequest {
            node_id: node.clone(),
            offer: Offer {
                cpu_millis: 0,
                memory_bytes: 0,
                free_gpus: Vec::new(),
            },
            usage: NodeUsage::default(),
            updates,
        };
        self.master.heartbeat(req, &Principal::Anyone).await?;
        Ok(())
    }

    /// Counts `nodes` as heard from now, as if each had sent a heartbeat
    /// with nothing to say.
    pub async fn keep_alive(&self, nodes: &[NodeId]) {
        self.master.keep_alive(nodes).await;
    }

    /// The real liveness check: silent nodes suspect, then down, their
    /// allocs lost and requeued. Returns the nodes declared down.
    pub async fn check_liveness(&self) -> Result<Vec<NodeId>, CommitError> {
        self.master.check_liveness().await
    }
}
