//! Starting and stopping a master: `run(listener, shutdown)` as in
//! mini-redis, so tests and `drover dev` run the same code as the binary.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::auth::Auth;
use crate::config::MasterConfig;
use crate::core::{Master, Settings};

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
            poll_timeout: c.api.poll_timeout,
            max_body_bytes: c.api.max_body.bytes(),
            ..Settings::default()
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

/// Serves the API on `listener`, and runs the scheduler and liveness loops,
/// until `shutdown` completes. In-flight requests finish first.
pub async fn run(
    master: Arc<Master>,
    auth: Arc<Auth>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let scheduler = tokio::spawn(Arc::clone(&master).run_scheduler(stop_rx.clone()));
    let liveness = tokio::spawn(Arc::clone(&master).run_liveness(stop_rx));
    tracing::info!(%addr, backend = master.backend(), "master listening");
    let routes = crate::http::routes(Arc::clone(&master), auth, addr);
    let closing = Arc::clone(&master);
    let shutdown = async move {
        shutdown.await;
        // Liveness first: agents whose heartbeats are no longer served
        // while requests drain must not be declared down. Then release the
        // long polls, which would otherwise hold the shutdown for up to
        // `poll_timeout`.
        let _ = stop_tx.send(true);
        closing.begin_shutdown();
    };
    warp::serve(routes)
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
    let _ = scheduler.await;
    let _ = liveness.await;
    tracing::info!("master stopped");
}
