//! Staging writes and storing them in groups (group commit), in order.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant as StdInstant};

use tokio::sync::{mpsc, oneshot};

use crate::state::{Changes, Cluster};
use crate::store::{Batch, Op, StoreError};

use super::{CommitError, Master, Touched};

/// A write applied in memory and queued for the store.
#[derive(Debug)]
pub(super) struct Staged {
    seq: u64,
    changes: Changes,
    touched: Touched,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The most staged writes one store commit takes: a group, however large,
/// costs one fsync (embedded) or one round of transactions (etcd).
const MAX_GROUP: usize = 1024;

/// A staged write's way to durability: await [`Durable::wait`] after
/// releasing the cluster lock, and only then acknowledge the write.
#[must_use = "a write is acknowledged only once it is durable"]
#[derive(Debug)]
pub struct Durable(Option<oneshot::Receiver<Result<(), StoreError>>>);

impl Durable {
    /// Resolves once the write is in the store, or failed (then the master
    /// has reloaded its state from the store: the write is undone).
    pub async fn wait(self) -> Result<(), CommitError> {
        match self.0 {
            None => Ok(()),
            Some(rx) => match rx.await {
                Ok(result) => Ok(result?),
                Err(_) => Err(CommitError::Store(StoreError::Unavailable(
                    "the master stopped before the write was stored".into(),
                ))),
            },
        }
    }
}

impl Master {
    /// Applies `changes` to the cluster now and queues them for the store;
    /// the caller releases the lock, then awaits the returned [`Durable`]
    /// before acknowledging anything. Writes staged while others are being
    /// stored go to the store together, in order, in one commit (group
    /// commit): the lock is never held across a store round trip, so a
    /// thousand heartbeats cost a few fsyncs, not a thousand.
    ///
    /// Nodes whose assignments changed are told (their long polls answer)
    /// only once the change is durable. If a commit fails, every write
    /// staged after it fails too and the master reloads the cluster from the
    /// store, so memory never stays ahead of what is stored.
    pub fn stage(&self, cluster: &mut Cluster, changes: Changes) -> Durable {
        if changes.is_empty() {
            return Durable(None);
        }
        let (done, rx) = oneshot::channel();
        if self.stale.load(Ordering::SeqCst) {
            let _ = done.send(Err(StoreError::Unavailable(
                "a write failed; the master is reloading the cluster from the store".into(),
            )));
            return Durable(Some(rx));
        }
        let touched = changes.touched_allocs(cluster);
        cluster.apply(&changes);
        let seq = self.staged_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let staged = Staged {
            seq,
            changes,
            touched,
            done,
        };
        if let Err(mpsc::error::SendError(staged)) = self.committer.send(staged) {
            // Only once the runtime is shutting down.
            let _ = staged.done.send(Err(StoreError::Unavailable(
                "the master is stopping".into(),
            )));
        }
        Durable(Some(rx))
    }
}

/// How often the committer reads the store's size while writes go on.
const SIZE_EVERY: Duration = Duration::from_secs(10);

/// Keeps `drover_store_file_bytes` current, and compacts the store once
/// enough keys have been deleted. Runs in the committer after a commit and
/// before its writers are answered: no write is in flight, and the writes
/// that asked for it (a purge) answer once it is done.
#[derive(Debug, Default)]
struct Upkeep {
    deleted: u64,
    sized_at: Option<StdInstant>,
}

impl Upkeep {
    async fn after_commit(&mut self, m: &Master, deleted: u64) {
        self.deleted += deleted;
        let every = m.settings.compact_after_deletes;
        if every > 0 && self.deleted >= every {
            let deleted = std::mem::take(&mut self.deleted);
            let started = StdInstant::now();
            match m.store.compact().await {
                Ok(done) => {
                    m.metrics
                        .store_op_duration
                        .with_label_values(&["compact"])
                        .observe(started.elapsed().as_secs_f64());
                    if done {
                        m.metrics.store_compactions.inc();
                    }
                    tracing::info!(deleted, compacted = done, elapsed = ?started.elapsed(), "store compaction after deletes");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "store compaction failed; trying again after more deletes")
                }
            }
            self.sized_at = None;
        }
        if self.sized_at.is_none_or(|at| at.elapsed() >= SIZE_EVERY) {
            self.sized_at = Some(StdInstant::now());
            if let Some(bytes) = m.store.size_bytes().await {
                m.metrics
                    .store_bytes
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
    }
}

/// Writes staged changes to the store in groups, in the order they were
/// staged (see [`Master::stage`]).
///
/// It holds the master only while a group is in flight: dropping the last
/// other handle drops the master, and closes its store, at once.
pub(super) async fn run_committer(
    master: Weak<Master>,
    mut queue: mpsc::UnboundedReceiver<Staged>,
) {
    let mut upkeep = Upkeep::default();
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let mut batch = Batch::new();
        let mut touched = Touched::new();
        let mut waiting: Vec<oneshot::Sender<Result<(), StoreError>>> =
            Vec::with_capacity(group.len());
        let mut last = 0;
        for staged in group {
            last = staged.seq;
            // Serialized here, not under the cluster lock: the records
            // are shared with the cluster, and no longer change.
            batch.append(staged.changes.batch());
            for (node, allocs) in staged.touched {
                touched.entry(node).or_default().extend(allocs);
            }
            waiting.push(staged.done);
        }
        let Some(m) = master.upgrade() else { return };
        let deleted = batch
            .ops()
            .iter()
            .filter(|op| matches!(op, Op::Delete { .. }))
            .count() as u64;
        let started = StdInstant::now();
        let result = m.store.commit(batch).await;
        m.metrics
            .store_op_duration
            .with_label_values(&["commit"])
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                m.settled.send_modify(|(seq, _)| *seq = last);
                m.bump_nodes(touched, false);
                // Before the writers hear back: a compaction holds them
                // (and no handle on the master outlives their answer).
                upkeep.after_commit(&m, deleted).await;
                for done in waiting {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, writes = waiting.len(), "group commit failed: reloading the cluster from the store");
                // Every write staged since built on the failed one.
                {
                    let _cluster = m.lock().await;
                    m.stale.store(true, Ordering::SeqCst);
                    while let Ok(staged) = queue.try_recv() {
                        last = staged.seq;
                        waiting.push(staged.done);
                    }
                }
                // Writers hear of the failure once memory is back in step
                // with the store, when the store answers at all: a failed
                // write then leaves no trace for their next request to see.
                let reloaded = m.reload().await;
                // Settled, as undone: whoever waited on them re-reads.
                m.settled.send_modify(|(seq, epoch)| {
                    *seq = last;
                    *epoch += 1;
                });
                for done in waiting {
                    let _ = done.send(Err(e.clone()));
                }
                drop(m);
                if reloaded.is_err() && !reload_until_done(&master).await {
                    return;
                }
            }
        }
    }
}

/// Retries [`Master::reload`] while the store is away, without holding the
/// cluster lock meanwhile (writes answer 503; reads and heartbeats go on).
/// Gives up, returning false, once the master's term is over.
async fn reload_until_done(master: &Weak<Master>) -> bool {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(m) = master.upgrade() else {
            return false;
        };
        if *m.closing.borrow() {
            return false;
        }
        match m.reload().await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %e, "reloading the cluster failed; retrying"),
        }
    }
}

impl Master {
    /// Replaces the cluster in memory with what the store holds, and lets
    /// writes be staged again.
    async fn reload(&self) -> Result<(), StoreError> {
        let snapshot = self.store.load().await?;
        let mut fresh = Cluster::from_snapshot(&snapshot)?;
        // Readers keep reading the master's tally: the fresh one goes there.
        fresh.published = Arc::clone(&self.tally);
        let mut cluster = self.lock().await;
        *cluster = fresh;
        cluster.publish();
        self.stale.store(false, Ordering::SeqCst);
        // Polls refused while the cluster was stale: answer them now.
        let nodes: Touched = cluster
            .nodes
            .keys()
            .map(|n| (n.clone(), BTreeSet::new()))
            .collect();
        drop(cluster);
        self.bump_nodes(nodes, true);
        self.wake_scheduler();
        tracing::info!("cluster reloaded from the store");
        Ok(())
    }
}
