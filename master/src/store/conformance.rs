//! The store conformance suite (DESIGN §7), written once for every backend.
//!
//! A backend plugs in by implementing [`Harness`]: a way to open its store
//! over some private, initially empty data (a temp dir for `embedded`, a
//! unique key prefix for `etcd`), and to close it so that the next `open`
//! sees the same data again, as a restarted master would. Each check takes a
//! fresh harness, panics with a message saying what the backend got wrong,
//! and closes what it opened. [`run_all`] runs every check, each on a new
//! harness from the factory it is given; a backend's test file should rather
//! call the checks one `#[tokio::test]` each, so that a failure names its
//! check.
//!
//! Some checks spawn tasks with `tokio::spawn`; the store's own work may use
//! `spawn_blocking`. Any tokio runtime works, current-thread included.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use drover_api::JobId;
use drover_api::NodeId;

use super::{keys, Batch, Snapshot, Store};

/// A backend under test: opens its store over data of its own, which starts
/// out empty and persists across [`Harness::close`] and the next
/// [`Harness::open`].
#[async_trait]
pub trait Harness: Send {
    type S: Store;

    /// Opens the store. The first call on a new harness must give an empty
    /// store; a call after [`Harness::close`] must give one over the same
    /// data, as a restart would. Panics if the store cannot be opened.
    async fn open(&mut self) -> Arc<Self::S>;

    /// Closes a store this harness opened, so that [`Harness::open`] can open
    /// the same data again: the suite passes the last handle it holds, and
    /// the harness must release whatever the store holds (a file lock, a
    /// connection, a lease). The default drops the handle.
    async fn close(&mut self, store: Arc<Self::S>) {
        drop(store);
    }
}

/// The size of the batch in [`a_large_batch_lands_whole_and_in_order`]: far
/// more than etcd's default limit of 128 ops per transaction.
pub const LARGE_BATCH_OPS: usize = 1_000;
/// How many tasks commit at once in [`concurrent_commits_all_land`].
pub const CONCURRENT_COMMITS: usize = 100;
/// The size of the values in [`large_values_round_trip`].
pub const LARGE_VALUE_BYTES: usize = 1 << 20;

/// Runs every check, each on a fresh harness from `new_harness`.
pub async fn run_all<H, F>(mut new_harness: F)
where
    H: Harness,
    F: FnMut() -> H,
{
    a_fresh_store_loads_empty(&mut new_harness()).await;
    the_backend_has_a_known_name(&mut new_harness()).await;
    a_committed_batch_is_loaded_in_key_order_byte_exact(&mut new_harness()).await;
    later_ops_in_a_batch_win(&mut new_harness()).await;
    deletes_remove_keys(&mut new_harness()).await;
    a_large_batch_lands_whole_and_in_order(&mut new_harness()).await;
    concurrent_commits_all_land(&mut new_harness()).await;
    acknowledged_batches_survive_close_and_reopen(&mut new_harness()).await;
    every_key_prefix_of_the_layout_round_trips(&mut new_harness()).await;
    an_empty_batch_is_a_no_op(&mut new_harness()).await;
    large_values_round_trip(&mut new_harness()).await;
    compaction_keeps_what_is_stored(&mut new_harness()).await;
}

/// A store over new data loads nothing.
pub async fn a_fresh_store_loads_empty<H: Harness>(h: &mut H) {
    let store = h.open().await;
    let snapshot = load(&*store, "a fresh store").await;
    assert!(
        snapshot.is_empty(),
        "{}: a fresh store loaded {} keys, expected none: {:?}",
        store.backend(),
        snapshot.len(),
        snapshot.keys().take(10).collect::<Vec<_>>()
    );
    h.close(store).await;
}

/// `backend()` is one of the names `GET /v1/cluster` shows.
pub async fn the_backend_has_a_known_name<H: Harness>(h: &mut H) {
    let store = h.open().await;
    let name = store.backend();
    assert!(
        ["embedded", "etcd"].contains(&name),
        "backend() returned {name:?}, expected \"embedded\" or \"etcd\""
    );
    h.close(store).await;
}

/// What one batch puts is loaded back in key order, each value byte for
/// byte: non-UTF-8 bytes, an empty value, JSON and keys whose byte order
/// differs from the order they were put in.
pub async fn a_committed_batch_is_loaded_in_key_order_byte_exact<H: Harness>(h: &mut H) {
    let store = h.open().await;
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let entries: Vec<(&str, Vec<u8>)> = vec![
        ("tasks/render/10", b"ten".to_vec()),
        ("jobs/render", br#"{"name":"render"}"#.to_vec()),
        ("tasks/render/9", b"nine".to_vec()),
        ("meta/empty", Vec::new()),
        ("nodes/gpu-1", vec![0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28]),
        ("allocs/render/9/1", all_bytes.clone()),
        ("jobs/Render", b"upper case sorts first".to_vec()),
        ("meta/\u{e9}t\u{e9}", "unicode key".as_bytes().to_vec()),
        ("meta/nul", vec![0u8; 7]),
    ];
    let mut batch = Batch::new();
    for (key, value) in &entries {
        batch.put(*key, value.clone());
    }
    commit(&*store, batch, "a batch of puts").await;

    let expected: Snapshot = entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let snapshot = load(&*store, "after one batch of puts").await;
    assert_snapshot(
        store.backend(),
        &snapshot,
        &expected,
        "after one batch of puts",
    );

    let mut sorted: Vec<&str> = entries.iter().map(|(k, _)| *k).collect();
    sorted.sort_unstable();
    let loaded: Vec<&str> = snapshot.keys().map(String::as_str).collect();
    assert_eq!(
        loaded,
        sorted,
        "{}: keys are not loaded in byte order",
        store.backend()
    );
    assert_eq!(
        snapshot.get("allocs/render/9/1").map(Vec::as_slice),
        Some(all_bytes.as_slice()),
        "{}: a value holding every byte 0..=255 did not come back exactly",
        store.backend()
    );
    assert_eq!(
        snapshot.get("meta/empty").map(Vec::len),
        Some(0),
        "{}: an empty value must load as present and empty",
        store.backend()
    );
    h.close(store).await;
}

/// Within one batch a later op on a key wins: put then delete leaves
/// nothing, delete then put leaves the put, a second put replaces the first;
/// also over keys that already existed before the batch.
pub async fn later_ops_in_a_batch_win<H: Harness>(h: &mut H) {
    let store = h.open().await;
    let mut before = Batch::new();
    before
        .put("jobs/existing-deleted-then-put", b"old".to_vec())
        .put("jobs/existing-put-then-deleted", b"old".to_vec())
        .put("jobs/existing-put-twice", b"old".to_vec());
    commit(&*store, before, "the keys that exist before the batch").await;

    let mut batch = Batch::new();
    batch
        .put("jobs/put-then-delete", b"gone".to_vec())
        .delete("jobs/put-then-delete")
        .delete("jobs/delete-then-put")
        .put("jobs/delete-then-put", b"kept".to_vec())
        .put("jobs/put-twice", b"first".to_vec())
        .put("jobs/put-twice", b"second".to_vec())
        .delete("jobs/existing-deleted-then-put")
        .put("jobs/existing-deleted-then-put", b"new".to_vec())
        .put("jobs/existing-put-then-deleted", b"new".to_vec())
        .delete("jobs/existing-put-then-deleted")
        .put("jobs/existing-put-twice", b"new-1".to_vec())
        .put("jobs/existing-put-twice", b"new-2".to_vec())
        .put("jobs/put-delete-put", b"1".to_vec())
        .delete("jobs/put-delete-put")
        .put("jobs/put-delete-put", b"3".to_vec());
    commit(&*store, batch, "a batch with several ops per key").await;

    let expected = snapshot_of(&[
        ("jobs/delete-then-put", b"kept"),
        ("jobs/existing-deleted-then-put", b"new"),
        ("jobs/existing-put-twice", b"new-2"),
        ("jobs/put-delete-put", b"3"),
        ("jobs/put-twice", b"second"),
    ]);
    let snapshot = load(&*store, "after a batch with several ops per key").await;
    assert_snapshot(
        store.backend(),
        &snapshot,
        &expected,
        "the last op on each key in a batch must win",
    );
    h.close(store).await;
}

/// A delete in a later batch removes the key and nothing else; deleting a
/// key that does not exist succeeds and changes nothing.
pub async fn deletes_remove_keys<H: Harness>(h: &mut H) {
    let store = h.open().await;
    let mut puts = Batch::new();
    puts.put("nodes/a", b"a".to_vec())
        .put("nodes/b", b"b".to_vec())
        .put("nodes/c", b"c".to_vec())
        .put("nodes/cc", b"cc".to_vec());
    commit(&*store, puts, "four puts").await;

    let mut deletes = Batch::new();
    deletes.delete("nodes/b").delete("nodes/c");
    commit(&*store, deletes, "two deletes").await;
    let expected = snapshot_of(&[("nodes/a", b"a"), ("nodes/cc", b"cc")]);
    let snapshot = load(&*store, "after deleting two of four keys").await;
    assert_snapshot(
        store.backend(),
        &snapshot,
        &expected,
        "after deleting nodes/b and nodes/c",
    );

    let mut missing = Batch::new();
    missing.delete("nodes/never-written").delete("nodes/b");
    commit(&*store, missing, "deletes of keys that do not exist").await;
    let snapshot = load(&*store, "after deleting missing keys").await;
    assert_snapshot(
        store.backend(),
        &snapshot,
        &expected,
        "deleting keys that do not exist must change nothing",
    );
    h.close(store).await;
}

/// A batch of [`LARGE_BATCH_OPS`] ops, far past etcd's 128 ops per
/// transaction, lands whole, with its ops applied in order across any split:
/// a key put at the start and deleted near the end is gone, one deleted
/// early and put late is there, and a key put in every chunk keeps its last
/// value.
pub async fn a_large_batch_lands_whole_and_in_order<H: Harness>(h: &mut H) {
    let store = h.open().await;
    let mut existing = Batch::new();
    existing.put("meta/deleted-early-put-late", b"before".to_vec());
    commit(&*store, existing, "a key the large batch rewrites").await;

    let mut batch = Batch::new();
    let mut expected = Snapshot::new();
    batch.put("meta/put-early-deleted-late", b"early".to_vec());
    batch.delete("meta/deleted-early-put-late");
    let mut counter = 0usize;
    let mut task = 0usize;
    // Fill up to the last two ops, putting the counter key every 50 ops so
    // it is written in every 128-op chunk.
    while batch.len() < LARGE_BATCH_OPS - 2 {
        if batch.len() % 50 == 0 {
            batch.put("meta/counter", counter.to_string().into_bytes());
            counter += 1;
        } else {
            let key = format!("tasks/large/{task}");
            let value = format!("value-{task}").into_bytes();
            batch.put(key.clone(), value.clone());
            expected.insert(key, value);
            task += 1;
        }
    }
    batch.delete("meta/put-early-deleted-late");
    batch.put("meta/deleted-early-put-late", b"late".to_vec());
    assert_eq!(
        batch.len(),
        LARGE_BATCH_OPS,
        "the check built a wrong batch"
    );
    expected.insert(
        "meta/counter".to_string(),
        (counter - 1).to_string().into_bytes(),
    );
    expected.insert("meta/deleted-early-put-late".to_string(), b"late".to_vec());

    commit(&*store, batch, "a batch of 1,000 ops").await;
    let snapshot = load(&*store, "after a batch of 1,000 ops").await;
    assert_eq!(
        snapshot
            .keys()
            .filter(|k| k.starts_with("tasks/large/"))
            .count(),
        task,
        "{}: a batch of {LARGE_BATCH_OPS} ops did not land whole",
        store.backend()
    );
    assert_snapshot(
        store.backend(),
        &snapshot,
        &expected,
        "a batch of 1,000 ops must land whole and in order",
    );
    h.close(store).await;
}

/// [`CONCURRENT_COMMITS`] tasks commit at once; every batch lands, and each
/// lands whole: every batch writes the same two shared keys with its own
/// number, so both must end up holding the number of the same batch.
pub async fn concurrent_commits_all_land<H: Harness>(h: &mut H) {
    let store = h.open().await;
    let handles: Vec<_> = (0..CONCURRENT_COMMITS)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let n = i.to_string().into_bytes();
                let mut batch = Batch::new();
                batch
                    .put("meta/shared-a", n.clone())
                    .put(format!("allocs/concurrent/{i}/1"), n.clone())
                    .put("meta/shared-b", n);
                store.commit(batch).await
            })
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!(
                "{}: concurrent commit {i} of {CONCURRENT_COMMITS} failed: {e}",
                store.backend()
            ),
            Err(e) => panic!("concurrent commit {i} of {CONCURRENT_COMMITS} panicked: {e}"),
        }
    }

    let snapshot = load(&*store, "after concurrent commits").await;
    for i in 0..CONCURRENT_COMMITS {
        let key = format!("allocs/concurrent/{i}/1");
        assert_eq!(
            snapshot.get(&key).map(Vec::as_slice),
            Some(i.to_string().as_bytes()),
            "{}: acknowledged concurrent commit {i} is missing or wrong at {key}",
            store.backend()
        );
    }
    assert_eq!(
        snapshot.len(),
        CONCURRENT_COMMITS + 2,
        "{}: unexpected keys after concurrent commits: {:?}",
        store.backend(),
        snapshot.keys().collect::<Vec<_>>()
    );
    let a = snapshot.get("meta/shared-a");
    let b = snapshot.get("meta/shared-b");
    assert!(
        a.is_some() && a == b,
        "{}: concurrent batches interleaved: meta/shared-a = {:?}, meta/shared-b = {:?}",
        store.backend(),
        a.map(|v| String::from_utf8_lossy(v).into_owned()),
        b.map(|v| String::from_utf8_lossy(v).into_owned()),
    );
    h.close(store).await;
}

/// Everything acknowledged before a close is loaded after the next open,
/// puts, overwrites and deletes alike, and the reopened store takes new
/// commits that survive a second restart.
pub async fn acknowledged_batches_survive_close_and_reopen<H: Harness>(h: &mut H) {
    let store = h.open().await;
    let backend = store.backend();
    let mut expected = Snapshot::new();
    for round in 0..10u8 {
        let mut batch = Batch::new();
        let key = format!("jobs/round-{round}");
        batch.put(key.clone(), vec![round, 0xff, round]);
        expected.insert(key, vec![round, 0xff, round]);
        batch.put("meta/last-round", vec![round]);
        expected.insert("meta/last-round".to_string(), vec![round]);
        if round > 0 && round % 3 == 0 {
            let gone = format!("jobs/round-{}", round - 1);
            batch.delete(gone.clone());
            expected.remove(&gone);
        }
        commit(&*store, batch, "a batch before the restart").await;
    }
    h.close(store).await;

    let store = h.open().await;
    let snapshot = load(&*store, "after a restart").await;
    assert_snapshot(
        backend,
        &snapshot,
        &expected,
        "every acknowledged batch must survive a close and reopen",
    );

    let mut batch = Batch::new();
    batch
        .put("nodes/after-restart", b"x".to_vec())
        .delete("meta/last-round");
    expected.insert("nodes/after-restart".to_string(), b"x".to_vec());
    expected.remove("meta/last-round");
    commit(&*store, batch, "a batch after the restart").await;
    h.close(store).await;

    let store = h.open().await;
    let snapshot = load(&*store, "after a second restart").await;
    assert_snapshot(
        backend,
        &snapshot,
        &expected,
        "a batch committed after a reopen must survive the next one",
    );
    h.close(store).await;
}

/// One key of each family of the layout ([`keys`]), with JSON values as the
/// master writes them, round-trips exactly, across a reopen too.
pub async fn every_key_prefix_of_the_layout_round_trips<H: Harness>(h: &mut H) {
    let job = JobId::new("x").unwrap_or_else(|e| panic!("bad job id in the check: {e}"));
    let other_job = JobId::new("x-y").unwrap_or_else(|e| panic!("bad job id in the check: {e}"));
    let node = NodeId::new("node-1.rack_2").unwrap_or_else(|e| panic!("bad node id: {e}"));
    let task = job.task(1);
    let alloc = task.alloc(2);
    let layout = [
        (keys::job(&job), "jobs/x"),
        (keys::job(&other_job), "jobs/x-y"),
        (keys::task(&task), "tasks/x/1"),
        (keys::task(&job.task(10)), "tasks/x/10"),
        (keys::alloc(&alloc), "allocs/x/1/2"),
        (keys::node(&node), "nodes/node-1.rack_2"),
        (keys::meta("cluster"), "meta/cluster"),
    ];
    let mut batch = Batch::new();
    let mut expected = Snapshot::new();
    for (key, spelled) in &layout {
        assert_eq!(key, spelled, "the key layout changed under the check");
        let value = serde_json::json!({ "key": key, "n": 1 });
        batch.put_json(key.clone(), &value);
        expected.insert(key.clone(), serde_json::to_vec(&value).unwrap_or_default());
    }
    let store = h.open().await;
    let backend = store.backend();
    commit(&*store, batch, "one key of each family").await;
    let snapshot = load(&*store, "after one key of each family").await;
    assert_snapshot(
        backend,
        &snapshot,
        &expected,
        "every key family must round-trip",
    );
    for (key, _) in &layout {
        let back: serde_json::Value = serde_json::from_slice(&snapshot[key])
            .unwrap_or_else(|e| panic!("{backend}: value at {key} is no longer JSON: {e}"));
        assert_eq!(
            back["key"],
            key.as_str(),
            "{backend}: value at {key} changed"
        );
    }
    h.close(store).await;

    let store = h.open().await;
    let snapshot = load(&*store, "after a reopen").await;
    assert_snapshot(
        backend,
        &snapshot,
        &expected,
        "every key family must survive a reopen",
    );
    h.close(store).await;
}

/// Committing an empty batch succeeds and changes nothing, on an empty
/// store and on one with data.
pub async fn an_empty_batch_is_a_no_op<H: Harness>(h: &mut H) {
    let store = h.open().await;
    commit(&*store, Batch::new(), "an empty batch on an empty store").await;
    let snapshot = load(&*store, "after an empty batch").await;
    assert!(
        snapshot.is_empty(),
        "{}: an empty batch wrote {:?}",
        store.backend(),
        snapshot.keys().collect::<Vec<_>>()
    );

    let mut batch = Batch::new();
    batch.put("jobs/kept", b"kept".to_vec());
    commit(&*store, batch, "one put").await;
    commit(
        &*store,
        Batch::default(),
        "an empty batch on a store with data",
    )
    .await;
    let snapshot = load(&*store, "after an empty batch on a store with data").await;
    assert_snapshot(
        store.backend(),
        &snapshot,
        &snapshot_of(&[("jobs/kept", b"kept")]),
        "an empty batch must change nothing",
    );
    h.close(store).await;
}

/// Values of [`LARGE_VALUE_BYTES`] (1 MiB) round-trip exactly, across a
/// reopen too, and can be overwritten by a small one.
pub async fn large_values_round_trip<H: Harness>(h: &mut H) {
    let store = h.open().await;
    let backend = store.backend();
    // Not periodic in any small power of two, so a misplaced page shows.
    let big: Vec<u8> = (0..LARGE_VALUE_BYTES)
        .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
        .collect();
    let mut reversed = big.clone();
    reversed.reverse();
    let mut batch = Batch::new();
    batch
        .put("jobs/big", big.clone())
        .put("jobs/big-reversed", reversed.clone())
        .put("jobs/shrinks", big.clone());
    commit(&*store, batch, "two 1 MiB values").await;
    let mut shrink = Batch::new();
    shrink.put("jobs/shrinks", b"small".to_vec());
    commit(&*store, shrink, "a small value over a 1 MiB one").await;

    let check = |snapshot: &Snapshot, when: &str| {
        for (key, want) in [("jobs/big", &big), ("jobs/big-reversed", &reversed)] {
            let got = snapshot
                .get(key)
                .unwrap_or_else(|| panic!("{backend}: {key} is missing {when}"));
            assert_eq!(
                got.len(),
                want.len(),
                "{backend}: {key} has the wrong length {when}"
            );
            if let Some(at) = got.iter().zip(want.iter()).position(|(g, w)| g != w) {
                panic!("{backend}: {key} differs at byte {at} {when}");
            }
        }
        assert_eq!(
            snapshot.get("jobs/shrinks").map(Vec::as_slice),
            Some(&b"small"[..]),
            "{backend}: a small value over a large one {when}"
        );
        assert_eq!(snapshot.len(), 3, "{backend}: unexpected keys {when}");
    };
    check(&load(&*store, "after 1 MiB puts").await, "after the puts");
    h.close(store).await;

    let store = h.open().await;
    check(&load(&*store, "after a reopen").await, "after a reopen");
    h.close(store).await;
}

async fn commit<S: Store + ?Sized>(store: &S, batch: Batch, what: &str) {
    let ops = batch.len();
    if let Err(e) = store.commit(batch).await {
        panic!(
            "{}: committing {what} ({ops} ops) failed: {e}",
            store.backend()
        );
    }
}

/// Keys and value size of [`compaction_keeps_what_is_stored`].
pub const COMPACTION_KEYS: usize = 2_000;
pub const COMPACTION_VALUE_BYTES: usize = 1_024;

/// After most keys are deleted, compaction leaves exactly what is stored:
/// the same snapshot before and after it, after a reopen too, and writes
/// work after it. The store reports a size throughout.
pub async fn compaction_keeps_what_is_stored<H: Harness>(h: &mut H) {
    let store = h.open().await;
    let mut puts = Batch::new();
    for i in 0..COMPACTION_KEYS {
        puts.put(
            format!("tasks/job/{i:05}"),
            vec![b'x'; COMPACTION_VALUE_BYTES],
        );
    }
    commit(&*store, puts, "the keys to delete most of").await;
    let full = store.size_bytes().await;
    assert!(
        full.is_some_and(|b| b > 0),
        "{}: no size after storing {COMPACTION_KEYS} keys: {full:?}",
        store.backend()
    );
    let mut deletes = Batch::new();
    for i in (0..COMPACTION_KEYS).filter(|i| i % 20 != 0) {
        deletes.delete(format!("tasks/job/{i:05}"));
    }
    commit(&*store, deletes, "deleting 19 keys in 20").await;
    let before = load(&*store, "before compaction").await;
    assert_eq!(before.len(), COMPACTION_KEYS / 20);
    if let Err(e) = store.compact().await {
        panic!("{}: compaction failed: {e}", store.backend());
    }
    let after = load(&*store, "after compaction").await;
    assert_snapshot(store.backend(), &after, &before, "after compaction");
    let mut more = Batch::new();
    more.put("nodes/after", b"compaction".to_vec());
    commit(&*store, more, "a write after compaction").await;
    assert!(
        store.size_bytes().await.is_some(),
        "{}: no size after compaction",
        store.backend()
    );
    h.close(store).await;
    let store = h.open().await;
    let mut want = before;
    want.insert("nodes/after".to_string(), b"compaction".to_vec());
    let reopened = load(&*store, "reopened after compaction").await;
    assert_snapshot(
        store.backend(),
        &reopened,
        &want,
        "reopened after compaction",
    );
    h.close(store).await;
}

async fn load<S: Store + ?Sized>(store: &S, when: &str) -> Snapshot {
    store
        .load()
        .await
        .unwrap_or_else(|e| panic!("{}: load {when} failed: {e}", store.backend()))
}

fn snapshot_of(entries: &[(&str, &[u8])]) -> Snapshot {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

/// Compares a whole snapshot, and on a mismatch says which keys are missing,
/// unexpected or different, rather than dumping both maps.
fn assert_snapshot(backend: &str, got: &Snapshot, want: &Snapshot, context: &str) {
    if got == want {
        return;
    }
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let unexpected: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let different: BTreeMap<&String, (String, String)> = want
        .iter()
        .filter_map(|(k, w)| {
            let g = got.get(k)?;
            (g != w).then(|| (k, (preview(g), preview(w))))
        })
        .collect();
    panic!(
        "{backend}: {context}: the store loaded the wrong data\n  missing keys: {missing:?}\n  unexpected keys: {unexpected:?}\n  different values (got, want): {different:?}"
    );
}

fn preview(bytes: &[u8]) -> String {
    const MAX: usize = 64;
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX)]).into_owned();
    if bytes.len() > MAX {
        format!("{shown:?}… ({} bytes)", bytes.len())
    } else {
        format!("{shown:?}")
    }
}
