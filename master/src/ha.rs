//! Several masters on one etcd (DESIGN §7). Every master listens from the
//! start. Each campaigns in etcd's election; the one elected loads the
//! cluster and serves it and schedules, with every write fenced on its
//! leader key. The others are followers: they answer the API with 503, the
//! leader's address and `Retry-After`, so clients and agents (given every
//! master's address) move on to the leader.
//!
//! A leader that loses its lease (etcd unreachable for a TTL, or the
//! process paused past it) stops scheduling at once, becomes a follower and
//! campaigns again; when elected again it reloads the cluster from etcd,
//! since another master may have led meanwhile. Nothing it held in memory
//! is trusted across terms.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Auth;
use crate::clock::Clock;
use crate::core::{Master, Settings};
use crate::metrics::Metrics;
use crate::role::{Front, Serving};
use crate::server::{serve, Term};
use crate::store::{EtcdStore, Leadership, Store};

/// How often a follower asks etcd who leads, for the address its 503s give.
const LEADER_HINT_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to reach etcd.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A master that takes part in the election.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub etcd: EtcdStore,
    /// This master's advertised address: its value in the election, and
    /// the leader address followers give out while it leads.
    pub advertise: String,
    pub lease_ttl: Duration,
    pub settings: Settings,
    pub clock: Clock,
}

/// Serves on `listener` as a follower or the leader, term after term, until
/// `shutdown` completes. A leader that is shut down resigns, so that another
/// master is elected at once rather than after the lease's TTL.
pub async fn run(
    candidate: Candidate,
    auth: Arc<Auth>,
    listener: TcpListener,
    tls: Option<drover_tls::ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let metrics = Metrics::new();
    let (role_tx, role_rx) = watch::channel(Serving::Follower { leader: None });
    let role_tx = Arc::new(role_tx);
    let front = Front::new(
        role_rx,
        metrics.clone(),
        crate::role::Limits::of(&candidate.settings),
        candidate.advertise.clone(),
    );
    let (stop_serving, serving_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(front, auth, listener, tls, async move {
        let _ = serving_stopped.await;
    }));
    let hints = tokio::spawn(follow_leader(candidate.etcd.clone(), Arc::clone(&role_tx)));

    tokio::pin!(shutdown);
    let mut earlier_lease = None;
    loop {
        let leadership = tokio::select! {
            l = elect(&candidate, &mut earlier_lease) => l,
            _ = &mut shutdown => break,
        };
        earlier_lease = Some(leadership.lease_id());
        let opened = tokio::select! {
            m = take_office(&candidate, &leadership, &metrics) => m,
            _ = &mut shutdown => {
                resign(leadership).await;
                break;
            }
        };
        let Some(master) = opened else {
            tracing::warn!("leadership lost while loading the cluster; campaigning again");
            continue;
        };
        role_tx.send_replace(Serving::Leader(Arc::clone(&master)));
        metrics.is_leader.set(1.0);
        tracing::info!(candidate = %candidate.advertise, "leader: serving and scheduling");
        let term = Term::begin(master);
        let shutting_down = tokio::select! {
            _ = leadership.lost() => false,
            _ = &mut shutdown => true,
        };
        // Requests from here on are turned away before the loops stop; any
        // still in flight find their writes refused by the fence.
        role_tx.send_replace(Serving::Follower { leader: None });
        metrics.is_leader.set(0.0);
        term.end().await;
        if shutting_down {
            resign(leadership).await;
            break;
        }
        tracing::error!(
            candidate = %candidate.advertise,
            "leadership lost: stopped scheduling; following and campaigning again"
        );
    }
    hints.abort();
    let _ = stop_serving.send(());
    let _ = server.await;
    tracing::info!("master stopped");
}

/// Campaigns until elected, retrying while etcd is unreachable.
async fn elect(candidate: &Candidate, earlier_lease: &mut Option<i64>) -> Leadership {
    let mut backoff = Duration::from_millis(100);
    loop {
        // A leader key this process held in an earlier term would stand
        // until its lease expires (etcd renews leases in full when it
        // restarts): that term is over, so end it now.
        if let Some(id) = *earlier_lease {
            match candidate.etcd.revoke_lease(id).await {
                Ok(()) => *earlier_lease = None,
                Err(e) => tracing::debug!(error = %e, "could not revoke the earlier term's lease"),
            }
        }
        tracing::info!(candidate = %candidate.advertise, "campaigning for leadership");
        match candidate
            .etcd
            .campaign(&candidate.advertise, candidate.lease_ttl)
            .await
        {
            Ok(leadership) if !leadership.is_lost() => return leadership,
            Ok(stale) => {
                // Elected on a lease the keep-alive had already given up
                // on (etcd was away meanwhile): hand it back at once.
                tracing::warn!("elected on a lease already lost; campaigning again");
                resign(stale).await;
            }
            Err(e) => tracing::warn!(error = %e, "campaign failed; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Loads the cluster for a new term, retrying while etcd fails; `None` if
/// the leadership is lost first.
async fn take_office(
    candidate: &Candidate,
    leadership: &Leadership,
    metrics: &Metrics,
) -> Option<Arc<Master>> {
    let store: Arc<dyn Store> = Arc::new(candidate.etcd.fenced(leadership));
    loop {
        if leadership.is_lost() {
            return None;
        }
        let opened = Master::open_with_metrics(
            candidate.settings.clone(),
            Arc::clone(&store),
            candidate.clock.clone(),
            metrics.clone(),
        )
        .await;
        match opened {
            Ok(master) if !leadership.is_lost() => return Some(master),
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "loading the cluster failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn resign(leadership: Leadership) {
    if let Err(e) = leadership.resign().await {
        // The lease then expires after its TTL instead.
        tracing::warn!(error = %e, "could not resign leadership");
    }
}

/// Keeps a follower's idea of who leads fresh, for its 503 answers.
async fn follow_leader(etcd: EtcdStore, role: Arc<watch::Sender<Serving>>) {
    loop {
        if matches!(*role.borrow(), Serving::Follower { .. }) {
            let leader = etcd.leader().await.ok().flatten();
            role.send_if_modified(|r| match r {
                Serving::Follower { leader: known } if *known != leader => {
                    *known = leader;
                    true
                }
                _ => false,
            });
        }
        tokio::time::sleep(LEADER_HINT_EVERY).await;
    }
}
