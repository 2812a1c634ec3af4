//! Starting and stopping a master: `run(listener, shutdown)` as in
//! mini-redis, so tests and `drover dev` run the same code as the binary.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use drover_tls::ServerTls;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::Auth;
use crate::config::MasterConfig;
use crate::core::{Master, Settings};
use crate::role::Front;

impl Settings {
    /// The runtime parameters a config file sets.
    pub fn from_config(c: &MasterConfig) -> Settings {
        Settings {
            heartbeat_interval: c.liveness.heartbeat_interval,
            node_timeout: c.liveness.node_timeout,
            suspect_after_missed: c.liveness.suspect_after_missed,
            max_down_per_second: c.liveness.max_down_per_second,
            default_policy: c.scheduler.default_policy,
            pass_interval: c.scheduler.pass_interval,
            kill_timeout: c.scheduler.kill_grace,
            poll_timeout: c.api.poll_timeout,
            max_body_bytes: c.api.max_body.bytes(),
            max_requests: c.api.max_requests,
            max_agent_requests: c.api.max_agent_requests,
            max_pending_tasks: c.scheduler.max_pending_tasks,
            compact_after_deletes: c.store.compact_after_deletes,
            // Made from files by the caller (see `MasterConfig::tls`).
            agent_tls: None,
        }
    }
}

/// Listens on `addr` with a deep accept queue: a burst of agents
/// reconnecting after a failover, or of clients, must not overflow the
/// kernel's default backlog (tokio's `bind` asks for 1024; past it the
/// kernel falls back to SYN cookies, some of which fail and reset).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serves the API on `listener` (over TLS with `tls`), and runs the
/// scheduler and liveness loops, until `shutdown` completes. In-flight
/// requests finish first.
pub async fn run(
    master: Arc<Master>,
    auth: Arc<Auth>,
    listener: TcpListener,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let term = Term::begin(Arc::clone(&master));
    let front = Front::leader(master, local_addr(&listener));
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    let shutdown = async move {
        shutdown.await;
        // Liveness first: agents whose heartbeats are no longer served
        // while requests drain must not be declared down. Ending the term
        // also releases the long polls, which would otherwise hold the
        // shutdown for up to `poll_timeout`.
        term.end().await;
        let _ = ended_tx.send(());
    };
    serve(front, auth, listener, tls, shutdown).await;
    let _ = ended.await;
    tracing::info!("master stopped");
}

/// Serves `front`'s routes on `listener` (over TLS with `tls`) until
/// `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    front: Front,
    auth: Arc<Auth>,
    listener: TcpListener,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let routes = crate::http::front_routes(front, auth);
    match tls {
        Some(acceptor) => {
            tracing::info!(addr = %local_addr(&listener), tls = true, "master listening");
            drover_tls::serve(routes, listener, acceptor, shutdown).await;
        }
        None => {
            tracing::info!(addr = %local_addr(&listener), tls = false, "master listening");
            warp::serve(routes)
                .incoming(listener)
                .graceful(shutdown)
                .run()
                .await;
        }
    }
}

fn local_addr(listener: &TcpListener) -> String {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// A master's term of office: its scheduler and liveness loops, which run
/// only while it leads.
#[derive(Debug)]
pub struct Term {
    master: Arc<Master>,
    stop: watch::Sender<bool>,
    scheduler: JoinHandle<()>,
    liveness: JoinHandle<()>,
}

impl Term {
    /// Starts scheduling and watching nodes.
    pub fn begin(master: Arc<Master>) -> Term {
        let (stop, stop_rx) = watch::channel(false);
        let scheduler = tokio::spawn(Arc::clone(&master).run_scheduler(stop_rx.clone()));
        let liveness = tokio::spawn(Arc::clone(&master).run_liveness(stop_rx));
        tracing::info!(backend = master.backend(), "term begins: scheduling");
        Term {
            master,
            stop,
            scheduler,
            liveness,
        }
    }

    /// Stops the loops, answers pending long polls with "ask another
    /// master", and waits for the loops to finish their current step.
    pub async fn end(self) {
        let _ = self.stop.send(true);
        self.master.begin_shutdown();
        let _ = self.scheduler.await;
        let _ = self.liveness.await;
        tracing::info!("term ended: not scheduling");
    }
}
