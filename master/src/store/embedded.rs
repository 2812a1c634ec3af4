//! The embedded backend (DESIGN §7): one redb file, `drover.redb`, in the
//! master's data dir, holding one table of `key -> bytes`.
//!
//! redb is synchronous, so every transaction runs on tokio's blocking pool and
//! never stalls the runtime. Writes use immediate durability: when `commit`
//! returns `Ok`, the batch is on disk. redb serialises write transactions, so
//! concurrent commits are applied one after another, each one whole.
//!
//! The file is locked while a store has it open: a second `open` of the same
//! data dir (from this process or another) fails with
//! [`StoreError::Unavailable`] instead of sharing, and so corrupting, the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Instant;

use async_trait::async_trait;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError,
    WriteTransaction,
};

use super::{Batch, Op, Snapshot, Store, StoreError};

/// The file the embedded store keeps in the data dir.
pub const FILE_NAME: &str = "drover.redb";

/// The one table: every key of the layout (`jobs/…`, `tasks/…`, …) and its value.
const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("drover_kv");

/// The redb-backed [`Store`]. Cheap to share behind an `Arc`; dropping the
/// last handle closes the file and releases its lock.
pub struct EmbeddedStore {
    /// Shared by reads and commits; compaction takes it for itself. `None`
    /// after an I/O error (a full disk): redb refuses every operation on a
    /// database that met one, so the next operation opens the file afresh.
    db: Arc<RwLock<Option<Database>>>,
    path: Arc<PathBuf>,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// redb's page cache: enough for the pages a commit rewrites.
const CACHE_BYTES: usize = 32 << 20;

impl EmbeddedStore {
    /// Opens the store in `data_dir` only if its file is there (for
    /// `drover-master check-store`: a missing file is an error, not a new
    /// empty cluster).
    pub fn open_existing(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(FILE_NAME);
        if !path.is_file() {
            return Err(StoreError::Unavailable(format!(
                "no store file at {}",
                path.display()
            )));
        }
        EmbeddedStore::open(data_dir)
    }

    /// Opens (or creates) `data_dir/drover.redb`, creating `data_dir` if needed.
    ///
    /// Blocking: it runs redb's integrity check over the whole file, so call it
    /// at startup (or from `spawn_blocking`), not from a busy runtime thread.
    ///
    /// Fails with [`StoreError::Unavailable`] when the dir or file cannot be
    /// created or opened, or when the file is already open (another store in
    /// this process or another master holds it), and with
    /// [`StoreError::Corrupt`] when the file is not a readable redb database.
    /// Every message names the file.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(FILE_NAME);
        let started = Instant::now();
        let db = open_file(&path)?;

        // Create the table up front, so that a read never meets a missing one.
        let mut txn = db
            .begin_write()
            .map_err(|e| map_err(&path, "open", e.into()))?;
        set_immediate(&mut txn, &path)?;
        txn.open_table(KV)
            .map_err(|e| map_err(&path, "open", e.into()))?;
        txn.commit().map_err(|e| map_err(&path, "open", e.into()))?;

        tracing::debug!(
            path = %path.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "embedded store opened"
        );
        Ok(EmbeddedStore {
            db: Arc::new(RwLock::new(Some(db))),
            path: Arc::new(path),
        })
    }

    /// The store's file, `<data_dir>/drover.redb`.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        let db = Arc::clone(&self.db);
        let path = Arc::clone(&self.path);
        run_blocking(&self.path, "load", move || {
            with_db(&db, &path, |d| load_blocking(d, &path))
        })
        .await
    }

    async fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let db = Arc::clone(&self.db);
        let path = Arc::clone(&self.path);
        run_blocking(&self.path, "commit", move || {
            with_db(&db, &path, |d| commit_blocking(d, &path, batch))
        })
        .await
    }

    async fn size_bytes(&self) -> Option<u64> {
        tokio::fs::metadata(&*self.path).await.ok().map(|m| m.len())
    }

    async fn compact(&self) -> Result<bool, StoreError> {
        let db = Arc::clone(&self.db);
        let path = Arc::clone(&self.path);
        run_blocking(&self.path, "compact", move || {
            let mut guard = db.write().unwrap_or_else(|e| e.into_inner());
            let Some(db) = guard.as_mut() else {
                return Err(StoreError::Unavailable(format!(
                    "{}: not open (after an I/O error); compaction waits",
                    path.display()
                )));
            };
            let started = Instant::now();
            let before = std::fs::metadata(&*path).map_or(0, |m| m.len());
            let mut compacted = false;
            // Each round moves what it can; a few rounds reach the end.
            for _ in 0..COMPACT_ROUNDS {
                match db.compact() {
                    Ok(true) => compacted = true,
                    Ok(false) => break,
                    Err(e) => {
                        return Err(StoreError::Unavailable(format!(
                            "{}: compact failed: {e}",
                            path.display()
                        )))
                    }
                }
            }
            let after = std::fs::metadata(&*path).map_or(0, |m| m.len());
            tracing::info!(
                path = %path.display(),
                before_bytes = before,
                after_bytes = after,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "embedded store compacted"
            );
            Ok(compacted)
        })
        .await
    }
}

/// Compaction rounds at most, each a pass over the file.
const COMPACT_ROUNDS: usize = 8;

/// Opens the file with the store's settings.
fn open_file(path: &Path) -> Result<Database, StoreError> {
    Database::builder()
        // Reports a damaged file as `Corrupted` rather than trusting (and
        // possibly panicking on) it.
        .set_check_integrity_on_open(true)
        // The master reads the store once, at start, and keeps the
        // cluster in memory itself: redb's default 1 GiB page cache
        // would only hold a second copy of it.
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| map_err(path, "open", e.into()))
}

/// A poisoned lock only means a commit panicked; redb's own transactions
/// keep the file consistent, so the database is still usable.
fn read(db: &RwLock<Option<Database>>) -> RwLockReadGuard<'_, Option<Database>> {
    db.read().unwrap_or_else(|e| e.into_inner())
}

/// Runs `work` on the open database, first reopening it if an I/O error
/// closed it; an I/O error now closes it for the next call to reopen. A
/// full disk thus refuses writes (503) while it is full, and the store
/// serves again once there is room, without a restart. redb's commits are
/// atomic, so what was acknowledged before is there after the reopen.
fn with_db<T>(
    db: &RwLock<Option<Database>>,
    path: &Path,
    work: impl FnOnce(&Database) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    {
        let guard = read(db);
        if let Some(d) = guard.as_ref() {
            return match work(d) {
                Err(StoreError::Unavailable(msg)) if msg.contains(IO_MARK) => {
                    drop(guard);
                    close(db, path, &msg);
                    Err(StoreError::Unavailable(msg))
                }
                other => other,
            };
        }
    }
    let mut guard = db.write().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        *guard = Some(open_file(path)?);
        tracing::info!(path = %path.display(), "embedded store reopened after an I/O error");
    }
    let d = guard
        .as_ref()
        .ok_or_else(|| StoreError::Unavailable(format!("{}: not open", path.display())))?;
    match work(d) {
        Err(StoreError::Unavailable(msg)) if msg.contains(IO_MARK) => {
            *guard = None;
            Err(StoreError::Unavailable(msg))
        }
        other => other,
    }
}

/// Drops the database after an I/O error (releasing the file's lock), so
/// that the next operation opens it afresh.
fn close(db: &RwLock<Option<Database>>, path: &Path, why: &str) {
    let mut guard = db.write().unwrap_or_else(|e| e.into_inner());
    if guard.take().is_some() {
        tracing::warn!(path = %path.display(), error = why, "embedded store closed after an I/O error; it reopens on the next operation");
    }
}

/// What `map_err` puts in the message of an I/O failure.
const IO_MARK: &str = "I/O error";

fn load_blocking(db: &Database, path: &Path) -> Result<Snapshot, StoreError> {
    let started = Instant::now();
    let err = |e: redb::Error| map_err(path, "load", e);
    let txn = db.begin_read().map_err(|e| err(e.into()))?;
    let table = match txn.open_table(KV) {
        Ok(table) => table,
        // `open` creates it; treat a missing table as an empty store anyway.
        Err(TableError::TableDoesNotExist(_)) => return Ok(Snapshot::new()),
        Err(e) => return Err(err(e.into())),
    };
    let mut snapshot = Snapshot::new();
    for entry in table.iter().map_err(|e| err(e.into()))? {
        let (key, value) = entry.map_err(|e| err(e.into()))?;
        snapshot.insert(key.value().to_owned(), value.value().to_vec());
    }
    tracing::debug!(
        path = %path.display(),
        keys = snapshot.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "embedded store loaded"
    );
    Ok(snapshot)
}

fn commit_blocking(db: &Database, path: &Path, batch: Batch) -> Result<(), StoreError> {
    let started = Instant::now();
    let ops = batch.len();
    let err = |e: redb::Error| map_err(path, "commit", e);
    let mut txn = db.begin_write().map_err(|e| err(e.into()))?;
    set_immediate(&mut txn, path)?;
    {
        let mut table = txn.open_table(KV).map_err(|e| err(e.into()))?;
        for op in batch.into_ops() {
            match op {
                Op::Put { key, value } => {
                    table
                        .insert(key.as_str(), value.as_slice())
                        .map_err(|e| err(e.into()))?;
                }
                Op::Delete { key } => {
                    // Deleting a missing key is not an error.
                    table.remove(key.as_str()).map_err(|e| err(e.into()))?;
                }
            }
        }
    }
    // An error before this point drops `txn`, which aborts it: nothing written.
    txn.commit().map_err(|e| err(e.into()))?;
    tracing::debug!(
        path = %path.display(),
        ops,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "embedded store committed batch"
    );
    Ok(())
}

fn set_immediate(txn: &mut WriteTransaction, path: &Path) -> Result<(), StoreError> {
    txn.set_durability(Durability::Immediate).map_err(|e| {
        StoreError::Unavailable(format!(
            "{}: cannot request immediate durability: {e}",
            path.display()
        ))
    })
}

/// Runs blocking redb work on tokio's blocking pool. A panic in `work` is a
/// bug and resumes in the caller.
async fn run_blocking<T, F>(path: &Path, what: &str, work: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "{}: {what} did not run: {e}",
            path.display()
        ))),
    }
}

/// Maps a redb error onto the store's three outcomes; every message names the
/// file and what was being done.
fn map_err(path: &Path, what: &str, e: redb::Error) -> StoreError {
    let file = path.display();
    match e {
        redb::Error::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
            "{file} is already open (is another drover-master using this data dir?)"
        )),
        redb::Error::Corrupted(msg) => {
            StoreError::Corrupt(format!("{file}: {what}: corrupted: {msg}"))
        }
        e @ (redb::Error::UpgradeRequired(_)
        | redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)) => StoreError::Corrupt(format!(
            "{file}: {what}: not a drover store this version can read: {e}"
        )),
        // How redb reports a file that is not a redb database at all.
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Corrupt(format!("{file}: {what}: {io}"))
        }
        redb::Error::Io(io) => {
            StoreError::Unavailable(format!("{file}: {what} failed: {IO_MARK}: {io}"))
        }
        redb::Error::PreviousIo => StoreError::Unavailable(format!(
            "{file}: {what} failed: {IO_MARK} earlier; the store reopens"
        )),
        e => StoreError::Unavailable(format!("{file}: {what} failed: {e}")),
    }
}
