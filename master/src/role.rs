//! What a master process answers as, moment to moment. With the embedded
//! store it is always the leader. With etcd it starts as a follower, may be
//! elected, and goes back to following when it loses its lease (DESIGN §7);
//! the HTTP front reads the current [`Serving`] on every request, so the
//! listening socket, and `/healthz`, `/readyz` and `/metrics`, stay up
//! through every change of office.

use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::core::{Master, Settings};
use crate::metrics::Metrics;

/// This process's part in the cluster.
#[derive(Debug, Clone)]
pub enum Serving {
    /// Serves the API from this master's state, and schedules.
    Leader(Arc<Master>),
    /// Serves no cluster state: the API answers 503 with `Retry-After` and
    /// the leader's address when known, so clients and agents move on to
    /// the leader (they are given every master's address).
    Follower { leader: Option<String> },
}

/// What the HTTP routes need, whatever the role: the role itself, and what
/// outlives a term of office (metrics, limits, this master's address).
#[derive(Debug, Clone)]
pub struct Front {
    role: watch::Receiver<Serving>,
    /// The process's metrics: a new term keeps counting where the last one
    /// stopped, and a follower still reports `drover_is_leader 0`. Behind
    /// an `Arc` because the routes are cloned for every connection.
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: u64,
    /// The address this master advertises (what `/v1/status/leader` shows
    /// when it leads).
    pub advertise: Arc<String>,
    /// Calls served at once, users' and agents' apart, so that a flood of
    /// one never starves the other: heartbeats keep nodes alive.
    api_slots: Arc<Semaphore>,
    agent_slots: Arc<Semaphore>,
}

/// What a front admits: body size and calls at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_requests: usize,
    pub max_agent_requests: usize,
}

impl Limits {
    pub fn of(s: &Settings) -> Limits {
        Limits {
            max_body_bytes: s.max_body_bytes,
            max_requests: s.max_requests,
            max_agent_requests: s.max_agent_requests,
        }
    }
}

/// Whose calls a slot is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    User,
    Agent,
}

impl Front {
    /// A front whose role is whatever `role` holds.
    pub fn new(
        role: watch::Receiver<Serving>,
        metrics: Metrics,
        limits: Limits,
        advertise: String,
    ) -> Front {
        Front {
            role,
            metrics: Arc::new(metrics),
            max_body_bytes: limits.max_body_bytes,
            advertise: Arc::new(advertise),
            api_slots: Arc::new(Semaphore::new(limits.max_requests)),
            agent_slots: Arc::new(Semaphore::new(limits.max_agent_requests)),
        }
    }

    /// A slot for one call, held until it is answered; `None` when all
    /// are taken, and the call is to be refused rather than queued.
    pub fn admit(&self, caller: Caller) -> Option<OwnedSemaphorePermit> {
        let slots = match caller {
            Caller::User => &self.api_slots,
            Caller::Agent => &self.agent_slots,
        };
        Arc::clone(slots).try_acquire_owned().ok()
    }

    /// A front that always leads with `master` (the embedded store, tests).
    pub fn leader(master: Arc<Master>, advertise: String) -> Front {
        let metrics = master.metrics.clone();
        let limits = Limits::of(&master.settings);
        // A receiver keeps the last value after its sender is gone.
        let (_, role) = watch::channel(Serving::Leader(master));
        Front::new(role, metrics, limits, advertise)
    }

    /// The role right now.
    pub fn serving(&self) -> Serving {
        self.role.borrow().clone()
    }
}
