//! The etcd backend (DESIGN §7): every key of the layout lives at
//! `<prefix><key>` (prefix `/drover/` by default), its value the bytes the
//! master gives, stored as they are.
//!
//! # Batches and transactions
//!
//! A batch is one etcd transaction when it fits one: at most
//! [`DEFAULT_MAX_TXN_OPS`] (etcd's default `--max-txn-ops`, 128) distinct
//! keys and at most [`MAX_TXN_BYTES`] of keys and values (etcd refuses a
//! request over its default `--max-request-bytes`, 1.5 MiB). etcd refuses a
//! transaction that names a key twice, so only the last op on each key is
//! sent; that is what the batch means anyway (the later op wins).
//!
//! A batch too big for one transaction is split into consecutive
//! transactions, in order, each within both limits. Such a batch is **not
//! atomic as a whole**: if the store fails part way, the first chunks stay
//! written and the error says so. The master's batches are a handful of ops
//! (one state transition); only bulk work (a job with hundreds of tasks)
//! comes near the limit.
//!
//! # Failures
//!
//! Every request has a deadline ([`DEFAULT_REQUEST_TIMEOUT`] unless
//! configured); a request that fails or misses it is
//! [`StoreError::Unavailable`], which the API answers with 503 and
//! Retry-After. For a write, a timeout means the outcome is unknown, not that
//! nothing was written: etcd may still apply a transaction it received. A
//! transaction lands whole or not at all either way.
//!
//! # Leadership and fencing
//!
//! Several masters may share one etcd: [`EtcdStore::campaign`] waits until
//! this one is elected (etcd's election API, on a lease kept alive in the
//! background) and returns a [`Leadership`]. [`EtcdStore::fenced`] gives a
//! store whose every write transaction first compares that the leader key
//! still exists with the revision it was created at; once the lease is gone
//! (revoked, expired, or another master took over) the compare fails and the
//! write is refused with [`StoreError::Fenced`], so a deposed master can
//! never write. The election keys live beside the data prefix
//! (`/drover-election/…` for `/drover/`), never in what [`Store::load`]
//! returns.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, CompactionOptions, Compare, CompareOp, ConnectOptions, GetOptions,
    Identity, KvClient, SortOrder, SortTarget, TlsOptions, Txn, TxnOp,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Batch, Op, Snapshot, Store, StoreError};
use crate::config::EtcdConfig;

/// How long one request to etcd may take before the store reports
/// [`StoreError::Unavailable`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// etcd's default `--max-txn-ops`: the most ops one transaction may hold.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// The most key and value bytes one transaction carries (unless a single op
/// is bigger). etcd's default `--max-request-bytes` is 1.5 MiB for the whole
/// request; this leaves room for the framing of up to 128 ops.
pub const MAX_TXN_BYTES: usize = 1 << 20;
/// Keys per page when loading.
pub const DEFAULT_LOAD_PAGE_KEYS: usize = 1_000;
/// The largest response the client accepts by default. A page that is
/// bigger (1,000 values of a MiB) is fetched again in smaller pages.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 << 20;
/// How often the gRPC connection is pinged to notice a dead etcd. Not below
/// etcd's `--grpc-keepalive-min-time` (5 s), or etcd hangs up on us.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(10);
/// A load is retried from scratch this many times when etcd compacts away
/// the revision it was reading at.
const LOAD_ATTEMPTS: usize = 3;

/// How to reach etcd and lay out keys in it. [`EtcdOptions::from_config`]
/// builds it from the `store.etcd` section.
#[derive(Clone)]
pub struct EtcdOptions {
    /// Client URLs, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// Prepended to every key; non-empty, conventionally ending in `/`.
    pub prefix: String,
    /// `(username, password)` for etcd's authentication.
    pub user: Option<(String, String)>,
    /// CA bundle (PEM) to verify the servers with; needed for `https`
    /// endpoints (no system roots are compiled in).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// The deadline of every request.
    pub request_timeout: Duration,
    /// The most ops per transaction: etcd's `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// Keys per page when loading.
    pub load_page_keys: usize,
    /// The largest response accepted; a load page that would be bigger is
    /// read again in pages half as long.
    pub max_response_bytes: usize,
}

impl fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("username", &self.user.as_ref().map(|(name, _)| name))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("request_timeout", &self.request_timeout)
            .field("max_txn_ops", &self.max_txn_ops)
            .field("load_page_keys", &self.load_page_keys)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

impl EtcdOptions {
    /// Plain-text access to `endpoints` with the default prefix and limits.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            prefix: "/drover/".to_string(),
            user: None,
            ca_file: None,
            client_cert: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            load_page_keys: DEFAULT_LOAD_PAGE_KEYS,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// The options the `store.etcd` section describes. Reads the password
    /// from `password_file` (one trailing newline is not part of it); fails
    /// with [`StoreError::Unavailable`] naming the file when it cannot.
    pub fn from_config(config: &EtcdConfig) -> Result<Self, StoreError> {
        let user = match (&config.username, &config.password_file) {
            (Some(name), Some(file)) => Some((name.clone(), read_password(file)?)),
            (Some(name), None) => Some((name.clone(), String::new())),
            (None, _) => None,
        };
        let client_cert = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => None,
        };
        Ok(EtcdOptions {
            prefix: config.prefix.clone(),
            user,
            ca_file: config.ca_file.clone(),
            client_cert,
            ..EtcdOptions::new(config.endpoints.clone())
        })
    }
}

fn read_password(file: &Path) -> Result<String, StoreError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot read the etcd password from {}: {e}",
            file.display()
        ))
    })?;
    // Editors end files with a newline; a password does not.
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

/// Where a fenced store checks that it still leads.
#[derive(Debug, Clone)]
struct Fence {
    key: Vec<u8>,
    revision: i64,
}

/// The etcd-backed [`Store`]. Cloning shares the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    kv: KvClient,
    prefix: Arc<str>,
    /// The endpoints, joined, for error messages.
    endpoints: Arc<str>,
    timeout: Duration,
    max_txn_ops: usize,
    load_page_keys: usize,
    fence: Option<Fence>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field(
                "fence",
                &self
                    .fence
                    .as_ref()
                    .map(|f| (String::from_utf8_lossy(&f.key), f.revision)),
            )
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects with the `store.etcd` section: [`EtcdOptions::from_config`]
    /// then [`EtcdStore::connect`].
    pub async fn from_config(config: &EtcdConfig) -> Result<Self, StoreError> {
        Self::connect(EtcdOptions::from_config(config)?).await
    }

    /// Connects to etcd and checks, with one read under the prefix, that it
    /// answers and lets this user read. Fails with
    /// [`StoreError::Unavailable`] naming the endpoints when it does not
    /// within the request timeout, or when the options are unusable (a TLS
    /// file that cannot be read, `https` without a CA, an empty prefix).
    pub async fn connect(options: EtcdOptions) -> Result<Self, StoreError> {
        let endpoints: Arc<str> = options.endpoints.join(",").into();
        let fail = |what: String| StoreError::Unavailable(format!("etcd at {endpoints}: {what}"));
        if options.prefix.is_empty() {
            // An empty prefix would make `load` read, and the master own,
            // the whole keyspace.
            return Err(fail("the key prefix must not be empty".into()));
        }
        if options.endpoints.is_empty() {
            return Err(fail("no endpoints".into()));
        }
        let timeout = options.request_timeout;
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(HTTP2_KEEPALIVE, timeout)
            // A member cut off from its cluster answers at once instead of
            // holding the request until our deadline.
            .with_require_leader(true);
        if let Some((name, password)) = &options.user {
            // etcd's auth tokens expire (5 min for simple tokens); the
            // client logs in again when one has.
            connect = connect
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = tls_options(&options).map_err(fail)? {
            connect = connect.with_tls(tls);
        }
        let client =
            match tokio::time::timeout(timeout, Client::connect(&options.endpoints, Some(connect)))
                .await
            {
                Ok(Ok(client)) => client,
                Ok(Err(e)) => return Err(fail(format!("cannot connect: {e}"))),
                Err(_) => {
                    return Err(fail(format!(
                        "cannot connect: no answer within {}",
                        humantime::format_duration(timeout)
                    )))
                }
            };
        let kv = client
            .kv_client()
            .max_decoding_message_size(options.max_response_bytes);
        let store = EtcdStore {
            client,
            kv,
            prefix: options.prefix.as_str().into(),
            endpoints,
            timeout,
            max_txn_ops: options.max_txn_ops.max(1),
            load_page_keys: options.load_page_keys.max(1),
            fence: None,
        };
        let prefix = store.prefix.as_bytes().to_vec();
        let end = prefix_end(&prefix);
        store
            .call("connect", |mut kv| async move {
                kv.get(
                    prefix,
                    Some(GetOptions::new().with_range(end).with_count_only()),
                )
                .await
            })
            .await?;
        Ok(store)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The election this store's masters campaign in: beside the prefix, so
    /// that its keys (`<name>/<lease id in hex>`) never show up in
    /// [`Store::load`] (`/drover/` → `/drover-election`).
    pub fn election_name(&self) -> String {
        format!("{}-election", self.prefix.trim_end_matches('/'))
    }

    /// Runs one request with the store's deadline, on a clone of the kv
    /// client (its calls take `&mut`).
    async fn call<T, F, Fut>(&self, what: &str, request: F) -> Result<T, StoreError>
    where
        F: FnOnce(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        match self.call_raw(request).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.failed(what, &e)),
            Err(elapsed) => Err(self.timed_out(what, elapsed)),
        }
    }

    async fn call_raw<T, F, Fut>(
        &self,
        request: F,
    ) -> Result<Result<T, etcd_client::Error>, Duration>
    where
        F: FnOnce(KvClient) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        tokio::time::timeout(self.timeout, request(self.kv.clone()))
            .await
            .map_err(|_| self.timeout)
    }

    fn failed(&self, what: &str, e: &etcd_client::Error) -> StoreError {
        StoreError::Unavailable(format!("etcd at {}: {what} failed: {e}", self.endpoints))
    }

    fn timed_out(&self, what: &str, after: Duration) -> StoreError {
        StoreError::Unavailable(format!(
            "etcd at {}: {what}: no answer within {}",
            self.endpoints,
            humantime::format_duration(after)
        ))
    }

    fn full_key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(self.prefix.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// One consistent read of everything under the prefix: the first page
    /// fixes the revision, every later page reads at it.
    async fn load_once(&self) -> Result<Snapshot, LoadError> {
        let prefix = self.prefix.as_bytes();
        let end = prefix_end(prefix);
        let mut snapshot = Snapshot::new();
        let mut from = prefix.to_vec();
        let mut revision = 0i64;
        let mut page = self.load_page_keys;
        loop {
            let options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(i64::try_from(page).unwrap_or(i64::MAX))
                .with_revision(revision);
            let key = from.clone();
            let response = match self
                .call_raw(|mut kv| async move { kv.get(key, Some(options)).await })
                .await
            {
                Ok(Ok(response)) => response,
                Ok(Err(e)) => {
                    let text = e.to_string();
                    if compacted_away(&text) {
                        return Err(LoadError::Compacted(self.failed("load", &e)));
                    }
                    if text.contains("message length too large") && page > 1 {
                        // Big values: the same page again, half as long.
                        page /= 2;
                        continue;
                    }
                    return Err(LoadError::Failed(self.failed("load", &e)));
                }
                Err(after) => return Err(LoadError::Failed(self.timed_out("load", after))),
            };
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            let more = response.more();
            let mut last = None;
            for kv in response.kvs() {
                let key = kv.key();
                let Some(stripped) = key.strip_prefix(prefix) else {
                    return Err(LoadError::Failed(StoreError::Corrupt(format!(
                        "etcd at {}: a read under {:?} returned {:?}",
                        self.endpoints,
                        self.prefix,
                        String::from_utf8_lossy(key)
                    ))));
                };
                let stripped = std::str::from_utf8(stripped).map_err(|_| {
                    LoadError::Failed(StoreError::Corrupt(format!(
                        "etcd at {}: key {:?} is not UTF-8, so not one the master wrote",
                        self.endpoints,
                        String::from_utf8_lossy(key)
                    )))
                })?;
                snapshot.insert(stripped.to_owned(), kv.value().to_vec());
                last = Some(key);
            }
            match (more, last) {
                (true, Some(last)) => {
                    // The smallest key after `last`.
                    from = last.to_vec();
                    from.push(0);
                }
                _ => return Ok(snapshot),
            }
        }
    }

    /// A store over the same connection whose every write is fenced on
    /// `leadership`: refused with [`StoreError::Fenced`] once the leader key
    /// is gone or is no longer the one this master created.
    pub fn fenced(&self, leadership: &Leadership) -> EtcdStore {
        EtcdStore {
            fence: Some(Fence {
                key: leadership.key.clone(),
                revision: leadership.revision,
            }),
            ..self.clone()
        }
    }

    /// The candidate value (a master's advertised address) of whoever
    /// leads the election now, or `None` while no one does. Read as etcd's
    /// election API defines the leader: the oldest key under the election.
    pub async fn leader(&self) -> Result<Option<String>, StoreError> {
        let prefix = format!("{}/", self.election_name());
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend)
            .with_limit(1);
        let resp = self
            .call("asking who leads", |mut kv| async move {
                kv.get(prefix, Some(options)).await
            })
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// Revokes lease `id` (deleting the keys on it, such as a leader key
    /// this process held in an earlier term); a lease already gone is not
    /// an error.
    pub async fn revoke_lease(&self, id: i64) -> Result<(), StoreError> {
        let mut leases = self.client.lease_client();
        match tokio::time::timeout(self.timeout, leases.revoke(id)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.to_string().contains("lease not found") => Ok(()),
            Ok(Err(e)) => Err(self.failed("revoking a lease", &e)),
            Err(_) => Err(self.timed_out("revoking a lease", self.timeout)),
        }
    }

    /// Waits until this store's master leads [`EtcdStore::election_name`],
    /// as `candidate` (what etcd shows as the leader's value, e.g. the
    /// master's address), then returns its [`Leadership`].
    ///
    /// Grants a lease of `lease_ttl` (whole seconds, at least 1 s) and keeps
    /// it alive from a background task from the start, since the wait may
    /// outlast the lease. Only the lease grant has the request deadline; the
    /// wait itself has none: wrap the call in a timeout to bound it. If the
    /// campaign fails or is dropped, its lease is revoked in the background,
    /// which withdraws the candidacy (or, if etcd cannot be told, expires
    /// after its TTL).
    pub async fn campaign(
        &self,
        candidate: &str,
        lease_ttl: Duration,
    ) -> Result<Leadership, StoreError> {
        let ttl = i64::try_from(lease_ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let mut leases = self.client.lease_client();
        // etcd starts the lease's clock after this: counting from here never
        // thinks it alive longer than etcd does.
        let requested = Instant::now();
        let grant = tokio::time::timeout(self.timeout, leases.grant(ttl, None))
            .await
            .map_err(|_| self.timed_out("granting the leader lease", self.timeout))?
            .map_err(|e| self.failed("granting the leader lease", &e))?;
        let lease_id = grant.id();
        // The TTL etcd granted; it may raise a too-short one.
        let ttl = Duration::from_secs(u64::try_from(grant.ttl()).unwrap_or(1).max(1));
        let (lost_tx, lost_rx) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(
            self.client.clone(),
            lease_id,
            ttl,
            requested + ttl,
            lost_tx,
            self.endpoints.clone(),
        ));
        // Revokes the lease and stops the keeper unless defused by success.
        let mut guard = CampaignGuard {
            keeper: Some(keeper),
            client: self.client.clone(),
            lease_id,
        };
        let name = self.election_name();
        let mut election = self.client.election_client();
        let mut response = election
            .campaign(name, candidate, lease_id)
            .await
            .map_err(|e| self.failed("campaigning for leadership", &e))?;
        let leader = response.take_leader().ok_or_else(|| {
            StoreError::Unavailable(format!(
                "etcd at {}: the campaign returned no leader key",
                self.endpoints
            ))
        })?;
        let keeper = guard.keeper.take();
        Ok(Leadership {
            key: leader.key().to_vec(),
            revision: leader.rev(),
            lease_id,
            ttl,
            lost: lost_rx,
            keeper,
            client: self.client.clone(),
            timeout: self.timeout,
        })
    }
}

/// Withdraws a campaign that did not finish: stops the keep-alive and
/// revokes the lease in the background (dropping the lease deletes the
/// candidate key).
struct CampaignGuard {
    keeper: Option<JoinHandle<()>>,
    client: Client,
    lease_id: i64,
}

impl Drop for CampaignGuard {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
            let mut leases = self.client.lease_client();
            let id = self.lease_id;
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    // Best effort: unrevoked, it expires after its TTL.
                    let _ = tokio::time::timeout(DEFAULT_REQUEST_TIMEOUT, leases.revoke(id)).await;
                });
            }
        }
    }
}

/// Renews the lease every third of its TTL and reports it lost once etcd
/// says it is gone, or when no renewal has been acknowledged for a whole TTL
/// counted from when it was *sent* (etcd renewed it after that, so it cannot
/// have expired earlier than this task thinks).
async fn keep_alive(
    client: Client,
    lease_id: i64,
    ttl: Duration,
    mut valid_until: Instant,
    lost: watch::Sender<bool>,
    endpoints: Arc<str>,
) {
    let interval = ttl / 3;
    let mut leases = client.lease_client();
    let mut stream: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> = None;
    loop {
        let sent = Instant::now();
        if sent >= valid_until {
            tracing::warn!(%endpoints, lease_id, "leader lease not renewed within its TTL: leadership lost");
            break;
        }
        let budget = valid_until - sent;
        let renewed = tokio::time::timeout(budget, async {
            if stream.is_none() {
                stream = Some(leases.keep_alive(lease_id).await?);
            }
            let Some((keeper, responses)) = stream.as_mut() else {
                return Ok(None);
            };
            keeper.keep_alive().await?;
            responses.message().await
        })
        .await;
        match renewed {
            Ok(Ok(Some(response))) if response.ttl() > 0 => {
                valid_until = sent + ttl;
            }
            Ok(Ok(Some(_))) => {
                tracing::warn!(%endpoints, lease_id, "leader lease expired or revoked: leadership lost");
                break;
            }
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                // The stream broke; open a new one on the next round while
                // the lease may still be alive.
                stream = None;
                tokio::time::sleep(Duration::from_millis(100).min(interval)).await;
                continue;
            }
        }
        tokio::time::sleep_until((sent + interval).into()).await;
    }
    let _ = lost.send(true);
}

/// This master leads: it holds the leader key of the election, on a lease a
/// background task keeps alive. Dropping it stops the keep-alive, so the
/// lease expires within its TTL and another master takes over;
/// [`Leadership::resign`] hands over at once.
pub struct Leadership {
    key: Vec<u8>,
    revision: i64,
    lease_id: i64,
    ttl: Duration,
    lost: watch::Receiver<bool>,
    keeper: Option<JoinHandle<()>>,
    client: Client,
    timeout: Duration,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("revision", &self.revision)
            .field("lease_id", &self.lease_id)
            .field("ttl", &self.ttl)
            .field("lost", &*self.lost.borrow())
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// The leader key (`<election>/<lease id in hex>`).
    pub fn key(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }

    /// The revision the leader key was created at: what fenced writes
    /// compare.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The lease the leader key is attached to.
    pub fn lease_id(&self) -> i64 {
        self.lease_id
    }

    /// The lease's TTL as etcd granted it.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether the keep-alive has found the lease gone (or unrenewable for a
    /// whole TTL). Fenced writes are refused by etcd itself either way; this
    /// is for stopping work that does not write.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once leadership is lost (see [`Leadership::is_lost`]).
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the keeper is gone, which it only is after
        // reporting the loss, or when this handle stopped it.
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Steps down at once: stops the keep-alive and revokes the lease, which
    /// deletes the leader key, so the next candidate is elected now rather
    /// than after the TTL.
    pub async fn resign(mut self) -> Result<(), StoreError> {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
        let mut leases = self.client.lease_client();
        match tokio::time::timeout(self.timeout, leases.revoke(self.lease_id)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!(
                "revoking the leader lease failed: {e}"
            ))),
            Err(_) => Err(StoreError::Unavailable(format!(
                "revoking the leader lease: no answer within {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}

enum LoadError {
    /// The revision being read was compacted away between pages: start over.
    Compacted(StoreError),
    Failed(StoreError),
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.load_once().await {
                Ok(snapshot) => {
                    tracing::debug!(
                        endpoints = %self.endpoints,
                        prefix = %self.prefix,
                        keys = snapshot.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "etcd store loaded"
                    );
                    return Ok(snapshot);
                }
                Err(LoadError::Compacted(e)) if attempt >= LOAD_ATTEMPTS => return Err(e),
                Err(LoadError::Compacted(_)) => continue,
                Err(LoadError::Failed(e)) => return Err(e),
            }
        }
    }

    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let ops = last_op_per_key(batch.into_ops());
        let chunks = chunk(ops, self.max_txn_ops, MAX_TXN_BYTES);
        let total = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let txn_ops: Vec<TxnOp> = chunk
                .into_iter()
                .map(|op| match op {
                    Op::Put { key, value } => TxnOp::put(self.full_key(&key), value, None),
                    Op::Delete { key } => TxnOp::delete(self.full_key(&key), None),
                })
                .collect();
            let mut txn = Txn::new();
            if let Some(fence) = &self.fence {
                txn = txn.when([Compare::create_revision(
                    fence.key.clone(),
                    CompareOp::Equal,
                    fence.revision,
                )]);
            }
            let txn = txn.and_then(txn_ops);
            let what = if total == 1 {
                "commit".to_string()
            } else {
                format!(
                    "commit of transaction {} of {total} (the first {i} are written)",
                    i + 1
                )
            };
            let response = self
                .call(&what, |mut kv| async move { kv.txn(txn).await })
                .await?;
            if !response.succeeded() {
                // Only the fence compares; anything else always succeeds.
                let fence = self.fence.as_ref().map_or_else(String::new, |f| {
                    format!(
                        "{} (created at revision {})",
                        String::from_utf8_lossy(&f.key),
                        f.revision
                    )
                });
                return Err(StoreError::Fenced(format!(
                    "etcd at {}: {what}: this master no longer holds the leader key {fence}",
                    self.endpoints
                )));
            }
        }
        tracing::debug!(
            endpoints = %self.endpoints,
            transactions = total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "etcd store committed batch"
        );
        Ok(())
    }

    async fn size_bytes(&self) -> Option<u64> {
        let mut client = self.client.clone();
        match tokio::time::timeout(self.timeout, client.status()).await {
            Ok(Ok(status)) => u64::try_from(status.db_size()).ok(),
            _ => None,
        }
    }

    async fn compact(&self) -> Result<bool, StoreError> {
        let started = Instant::now();
        // The revision now: a count of one key costs etcd nothing to answer.
        let key = self.full_key("");
        let head = self
            .call("compact (reading the revision)", |mut kv| async move {
                kv.get(key, Some(GetOptions::new().with_count_only().with_limit(1)))
                    .await
            })
            .await?;
        let Some(revision) = head.header().map(|h| h.revision()).filter(|r| *r > 1) else {
            return Ok(false);
        };
        match self
            .call("compact", |mut kv| async move {
                kv.compact(revision, Some(CompactionOptions::new().with_physical()))
                    .await
            })
            .await
        {
            Ok(_) => {}
            // Someone (etcd's own auto-compaction) got there first.
            Err(e) if compacted_away(&e.to_string()) => return Ok(false),
            Err(e) => return Err(e),
        }
        tracing::info!(
            endpoints = %self.endpoints,
            revision,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "etcd revision history compacted"
        );
        Ok(true)
    }
}

/// etcd's answer to a request for a revision it has compacted away.
fn compacted_away(message: &str) -> bool {
    message.contains("required revision has been compacted")
}

/// The TLS settings the options ask for, if any: a CA for the servers and a
/// client certificate, read now so that a missing file fails `connect`.
fn tls_options(options: &EtcdOptions) -> Result<Option<TlsOptions>, String> {
    let https = options.endpoints.iter().any(|e| e.starts_with("https://"));
    if options.ca_file.is_none() && options.client_cert.is_none() {
        if https {
            return Err(
                "https endpoints need a CA to verify them with (store.etcd.ca_file)".to_string(),
            );
        }
        return Ok(None);
    }
    if let Some(plain) = options
        .endpoints
        .iter()
        .find(|e| !e.starts_with("https://"))
    {
        return Err(format!(
            "TLS files are set but endpoint {plain} is not https://"
        ));
    }
    let read = |path: &Path, what: &str| {
        std::fs::read(path).map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
    };
    let mut tls = TlsOptions::new();
    if let Some(ca) = &options.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read(ca, "CA file")?));
    } else {
        return Err(
            "a client certificate needs a CA to verify the servers with (store.etcd.ca_file)"
                .to_string(),
        );
    }
    if let Some((cert, key)) = &options.client_cert {
        tls = tls.identity(Identity::from_pem(
            read(cert, "client certificate")?,
            read(key, "client key")?,
        ));
    }
    Ok(Some(tls))
}

/// The end of the range of keys starting with `prefix`: the prefix with its
/// last byte below 0xff incremented and what follows dropped (`\0`, "every
/// key to the end", when all bytes are 0xff).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The batch as etcd accepts it: only the last op on each key (etcd refuses
/// a transaction that names a key twice), in the order of those last ops.
/// Applying the result gives the same final state as applying every op.
fn last_op_per_key(ops: Vec<Op>) -> Vec<Op> {
    use std::collections::HashMap;
    let key = |op: &Op| match op {
        Op::Put { key, .. } | Op::Delete { key } => key.clone(),
    };
    let mut last: HashMap<String, usize> = HashMap::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        last.insert(key(op), i);
    }
    if last.len() == ops.len() {
        return ops;
    }
    ops.into_iter()
        .enumerate()
        .filter(|(i, op)| last.get(&key(op)) == Some(i))
        .map(|(_, op)| op)
        .collect()
}

/// Splits ops into consecutive transactions of at most `max_ops` ops and
/// `max_bytes` of keys and values each (a single bigger op goes alone).
fn chunk(ops: Vec<Op>, max_ops: usize, max_bytes: usize) -> Vec<Vec<Op>> {
    let mut chunks = Vec::new();
    let mut current: Vec<Op> = Vec::new();
    let mut bytes = 0usize;
    for op in ops {
        let size = match &op {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key } => key.len(),
        };
        if !current.is_empty() && (current.len() >= max_ops || bytes + size > max_bytes) {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(op);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn delete(key: &str) -> Op {
        Op::Delete { key: key.into() }
    }

    #[test]
    fn the_range_of_a_prefix_ends_just_past_its_last_key() {
        assert_eq!(prefix_end(b"/drover/"), b"/drover0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn only_the_last_op_on_each_key_is_kept_in_the_order_of_those_ops() {
        let ops = vec![
            put("a", "1"),
            delete("b"),
            put("c", "1"),
            delete("a"),
            put("b", "2"),
            put("a", "3"),
        ];
        assert_eq!(
            last_op_per_key(ops),
            vec![put("c", "1"), put("b", "2"), put("a", "3")]
        );
    }

    #[test]
    fn a_batch_without_repeated_keys_is_kept_as_it_is() {
        let ops = vec![put("b", "1"), delete("a"), put("c", "2")];
        assert_eq!(last_op_per_key(ops.clone()), ops);
    }

    #[test]
    fn chunks_hold_at_most_the_op_limit_in_order() {
        let ops: Vec<Op> = (0..300).map(|i| put(&format!("k{i:03}"), "v")).collect();
        let chunks = chunk(ops.clone(), 128, MAX_TXN_BYTES);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [128, 128, 44]
        );
        assert_eq!(chunks.concat(), ops);
    }

    #[test]
    fn chunks_hold_at_most_the_byte_limit_unless_one_op_is_bigger() {
        let big = "x".repeat(700);
        let ops = vec![
            put("a", &big),
            put("b", &big),
            put("c", "small"),
            put("d", &"y".repeat(2_000)),
            delete("e"),
        ];
        let chunks = chunk(ops.clone(), 128, 1_000);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, 2, 1, 1]
        );
        assert_eq!(chunks.concat(), ops);
    }

    #[test]
    fn a_password_file_loses_one_trailing_newline_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("pw");
        std::fs::write(&file, " secret \n\n").expect("write");
        assert_eq!(read_password(&file).expect("read"), " secret \n");
        std::fs::write(&file, "secret\r\n").expect("write");
        assert_eq!(read_password(&file).expect("read"), "secret");
        match read_password(&dir.path().join("missing")) {
            Err(StoreError::Unavailable(msg)) => assert!(msg.contains("missing"), "{msg}"),
            other => panic!("expected Unavailable naming the file, got {other:?}"),
        }
    }

    #[test]
    fn options_never_show_the_password() {
        let mut options = EtcdOptions::new(vec!["http://127.0.0.1:2379".into()]);
        options.user = Some(("drover".into(), "hunter2".into()));
        let shown = format!("{options:?}");
        assert!(
            shown.contains("drover") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
