//! Persistence (DESIGN §7). The master keeps the whole cluster in memory and
//! commits every state transition here before it acknowledges it. One trait,
//! two backends (embedded redb, and etcd), one
//! conformance suite that both must pass.

use std::collections::BTreeMap;
use std::fmt::Debug;

use async_trait::async_trait;
use serde::Serialize;

pub mod conformance;
pub mod embedded;
pub mod etcd;
pub use embedded::EmbeddedStore;
pub use etcd::{EtcdStore, Leadership};

/// One write in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// Writes applied atomically and in order: all or none, and a later op on
/// the same key wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    pub fn put(&mut self, key: impl Into<String>, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value,
        });
        self
    }

    /// Puts `value` as JSON. Serializing the master's own record types
    /// cannot fail (string keys, no non-finite floats).
    pub fn put_json<T: Serialize>(&mut self, key: impl Into<String>, value: &T) -> &mut Self {
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        self.put(key, bytes)
    }

    pub fn delete(&mut self, key: impl Into<String>) -> &mut Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    /// Appends `other`'s ops after this batch's (group commit).
    pub fn append(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// Every key and its value, in key order.
pub type Snapshot = BTreeMap<String, Vec<u8>>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or refused the write for now; the caller
    /// answers 503 with Retry-After. Nothing was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// This master is no longer allowed to write (it lost leadership).
    #[error("write fenced: {0}")]
    Fenced(String),
    /// What is stored cannot be read back.
    #[error("store corrupt: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait Store: Send + Sync + Debug + 'static {
    /// `embedded` or `etcd`, as `GET /v1/cluster` shows it.
    fn backend(&self) -> &'static str;
    /// Everything stored, in key order.
    async fn load(&self) -> Result<Snapshot, StoreError>;
    /// Applies the batch atomically; when this returns `Ok`, the batch is
    /// durable (survives a crash of the master or the machine).
    async fn commit(&self, batch: Batch) -> Result<(), StoreError>;
    /// Bytes the store takes on disk: the embedded store's file, or the
    /// database of the etcd member the master talks to. `None` when it
    /// cannot tell right now.
    async fn size_bytes(&self) -> Option<u64>;
    /// Gives back the room that deleted keys (purged jobs) still take:
    /// redb compacts its file, etcd compacts its revision history up to
    /// now (its file shrinks only with `etcdctl defrag`, which stalls the
    /// member, so that is left to its operator). Writes wait meanwhile.
    /// Returns whether anything was compacted.
    async fn compact(&self) -> Result<bool, StoreError>;
}

/// The layout of what the master stores: bumped whenever a record or key
/// changes in a way an older master would misread. Kept at `meta/format`.
pub const FORMAT: u64 = 1;

/// The kinds of key a store of this format holds (`<kind>/...`).
const KINDS: [&str; 5] = ["jobs", "tasks", "allocs", "nodes", "meta"];

/// What the format check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// Nothing stored yet: a new cluster.
    Empty,
    /// The marker of this format.
    Current,
    /// Drover records without a marker: written before markers existed.
    Unmarked,
}

/// Checks that `snapshot` is a Drover store this master can read: its
/// `meta/format` (when present) is [`FORMAT`], and every key is one of its
/// kinds. Anything else is refused rather than read as an empty or partial
/// cluster: starting on the wrong data would drop every job it holds.
pub fn check_format(snapshot: &Snapshot) -> Result<Found, StoreError> {
    if let Some(key) = snapshot
        .keys()
        .find(|k| !KINDS.contains(&k.split_once('/').map_or(k.as_str(), |(kind, _)| kind)))
    {
        return Err(StoreError::Corrupt(format!(
            "unknown key {key:?}: this store holds data that is not Drover's, or is another \
             version's; point the master at its own data dir (or etcd prefix)"
        )));
    }
    let Some(raw) = snapshot.get(&keys::meta("format")) else {
        return Ok(if snapshot.is_empty() {
            Found::Empty
        } else {
            Found::Unmarked
        });
    };
    let found = serde_json::from_slice::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| v.get("format").and_then(serde_json::Value::as_u64));
    match found {
        Some(FORMAT) => Ok(Found::Current),
        Some(n) if n > FORMAT => Err(StoreError::Corrupt(format!(
            "the store is format {n}, written by a newer Drover; this master reads format \
             {FORMAT}: run the newer version"
        ))),
        Some(n) => Err(StoreError::Corrupt(format!(
            "the store is format {n}, which this master ({FORMAT}) cannot read"
        ))),
        None => Err(StoreError::Corrupt(
            "meta/format is not a format marker".to_string(),
        )),
    }
}

/// The marker a store of this format carries.
pub fn format_marker() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "format": FORMAT,
        "written_by": concat!("drover-master ", env!("CARGO_PKG_VERSION")),
    }))
    .unwrap_or_default()
}

/// Key layout, shared by every backend (etcd adds its prefix).
pub mod keys {
    use drover_api::{AllocId, JobId, NodeId, TaskId};

    pub fn job(id: &JobId) -> String {
        format!("jobs/{id}")
    }
    pub fn task(id: &TaskId) -> String {
        format!("tasks/{id}")
    }
    pub fn alloc(id: &AllocId) -> String {
        format!("allocs/{id}")
    }
    pub fn node(id: &NodeId) -> String {
        format!("nodes/{id}")
    }
    pub fn meta(name: &str) -> String {
        format!("meta/{name}")
    }
}
