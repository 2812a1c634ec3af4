//! The store conformance suite (`drover_master::store::conformance`) run
//! against the embedded redb backend, one test per check, plus the checks
//! only a file-backed store has: the file lock and damaged files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use drover_master::store::conformance::{self, Harness};
use drover_master::store::embedded::FILE_NAME;
use drover_master::store::{Batch, EmbeddedStore, Store, StoreError};
use tempfile::TempDir;

/// An embedded store in a temp dir of its own, removed when the harness is
/// dropped.
struct EmbeddedHarness {
    dir: TempDir,
}

impl EmbeddedHarness {
    fn new() -> Self {
        EmbeddedHarness {
            dir: tempfile::tempdir().expect("create a temp dir"),
        }
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

#[async_trait]
impl Harness for EmbeddedHarness {
    type S = EmbeddedStore;

    async fn open(&mut self) -> Arc<EmbeddedStore> {
        match EmbeddedStore::open(self.data_dir()) {
            Ok(store) => Arc::new(store),
            Err(e) => panic!("opening the embedded store failed: {e}"),
        }
    }

    async fn close(&mut self, store: Arc<EmbeddedStore>) {
        // The file stays locked while any handle lives; a leaked one would
        // make the next open fail for a reason that is not the store's.
        let store = Arc::try_unwrap(store)
            .unwrap_or_else(|_| panic!("the suite closed a store it still shares"));
        drop(store);
    }
}

#[tokio::test]
async fn embedded_store_loads_nothing_when_fresh() {
    conformance::a_fresh_store_loads_empty(&mut EmbeddedHarness::new()).await;
}

#[tokio::test]
async fn embedded_store_names_its_backend() {
    let mut h = EmbeddedHarness::new();
    conformance::the_backend_has_a_known_name(&mut h).await;
    let store = h.open().await;
    assert_eq!(store.backend(), "embedded");
}

#[tokio::test]
async fn embedded_store_loads_a_committed_batch_in_key_order_byte_for_byte() {
    conformance::a_committed_batch_is_loaded_in_key_order_byte_exact(&mut EmbeddedHarness::new())
        .await;
}

#[tokio::test]
async fn embedded_store_lets_the_later_op_on_a_key_in_a_batch_win() {
    conformance::later_ops_in_a_batch_win(&mut EmbeddedHarness::new()).await;
}

#[tokio::test]
async fn embedded_store_removes_deleted_keys_and_ignores_missing_ones() {
    conformance::deletes_remove_keys(&mut EmbeddedHarness::new()).await;
}

#[tokio::test]
async fn embedded_store_lands_a_1000_op_batch_whole_and_in_order() {
    conformance::a_large_batch_lands_whole_and_in_order(&mut EmbeddedHarness::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_lands_every_one_of_100_concurrent_commits_whole() {
    conformance::concurrent_commits_all_land(&mut EmbeddedHarness::new()).await;
}

#[tokio::test]
async fn embedded_store_lands_concurrent_commits_on_a_current_thread_runtime() {
    conformance::concurrent_commits_all_land(&mut EmbeddedHarness::new()).await;
}

#[tokio::test]
async fn embedded_store_keeps_every_acknowledged_batch_across_a_reopen() {
    conformance::acknowledged_batches_survive_close_and_reopen(&mut EmbeddedHarness::new()).await;
}

#[tokio::test]
async fn embedded_store_round_trips_every_key_prefix_of_the_layout() {
    conformance::every_key_prefix_of_the_layout_round_trips(&mut EmbeddedHarness::new()).await;
}

#[tokio::test]
async fn embedded_store_treats_an_empty_batch_as_a_no_op() {
    conformance::an_empty_batch_is_a_no_op(&mut EmbeddedHarness::new()).await;
}

#[tokio::test]
async fn embedded_store_round_trips_1_mib_values() {
    conformance::large_values_round_trip(&mut EmbeddedHarness::new()).await;
}

#[tokio::test]
async fn embedded_store_keeps_what_is_stored_through_a_compaction() {
    conformance::compaction_keeps_what_is_stored(&mut EmbeddedHarness::new()).await;
}

#[tokio::test]
async fn embedded_store_passes_the_whole_suite_through_run_all() {
    conformance::run_all(EmbeddedHarness::new).await;
}

// Embedded-only behaviour.

fn store_file(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

fn expect_open_error(dir: &Path) -> StoreError {
    match EmbeddedStore::open(dir) {
        Ok(store) => panic!("opening {} succeeded: {store:?}", dir.display()),
        Err(e) => e,
    }
}

#[tokio::test]
async fn embedded_store_creates_its_data_dir_and_one_file_in_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data_dir = tmp.path().join("not").join("there").join("yet");
    let store = EmbeddedStore::open(&data_dir).expect("open in a missing dir");
    assert_eq!(store.path(), store_file(&data_dir));
    assert!(
        store_file(&data_dir).is_file(),
        "no {FILE_NAME} was created"
    );
    let entries: Vec<_> = std::fs::read_dir(&data_dir)
        .expect("read the data dir")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    assert_eq!(
        entries,
        [FILE_NAME],
        "the data dir holds more than the store file"
    );
}

#[tokio::test]
async fn embedded_store_refuses_a_second_open_of_the_same_data_dir_naming_the_file() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let first = EmbeddedStore::open(tmp.path()).expect("first open");
    let mut batch = Batch::new();
    batch.put("jobs/kept", b"kept".to_vec());
    first.commit(batch).await.expect("commit");

    let err = expect_open_error(tmp.path());
    let file = store_file(tmp.path()).display().to_string();
    match &err {
        StoreError::Unavailable(msg) => assert!(
            msg.contains(&file),
            "the error does not name the file {file}: {msg}"
        ),
        other => panic!("expected Unavailable for a second open, got {other:?}"),
    }

    // The refused open changed nothing: the first store still works, and
    // after it closes the data is intact and the file can be opened again.
    let mut batch = Batch::new();
    batch.put("jobs/after", b"after".to_vec());
    first
        .commit(batch)
        .await
        .expect("commit after a refused second open");
    drop(first);
    let again = EmbeddedStore::open(tmp.path()).expect("open after the first store closed");
    let snapshot = again.load().await.expect("load");
    assert_eq!(
        snapshot.keys().map(String::as_str).collect::<Vec<_>>(),
        ["jobs/after", "jobs/kept"]
    );
}

/// Bytes with no structure: a xorshift stream, so the test needs no RNG.
fn garbage(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn assert_refused_garbage(len: usize) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let path = store_file(tmp.path());
    let bytes = garbage(len);
    std::fs::write(&path, &bytes).expect("write garbage");

    let err = expect_open_error(tmp.path());
    let file = path.display().to_string();
    match &err {
        StoreError::Corrupt(msg) => assert!(
            msg.contains(&file),
            "the error for a garbage file does not name {file}: {msg}"
        ),
        other => panic!("expected Corrupt for a garbage file, got {other:?}"),
    }
    assert_eq!(
        std::fs::read(&path).expect("read back"),
        bytes,
        "a refused open modified the file it refused"
    );
}

#[test]
fn embedded_store_refuses_a_garbage_file_without_panicking_or_touching_it() {
    assert_refused_garbage(64 * 1024);
}

#[test]
fn embedded_store_refuses_a_truncated_garbage_file_without_panicking() {
    assert_refused_garbage(100);
}

#[tokio::test]
async fn embedded_store_reports_a_damaged_file_as_corrupt_instead_of_trusting_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    {
        let store = EmbeddedStore::open(tmp.path()).expect("open");
        let mut batch = Batch::new();
        for i in 0..200 {
            batch.put(format!("jobs/job-{i}"), vec![7u8; 300]);
        }
        store.commit(batch).await.expect("commit");
    }
    // Scramble the page after the header: the checksums of what redb
    // committed there no longer match.
    let path = store_file(tmp.path());
    let mut bytes = std::fs::read(&path).expect("read the store file");
    assert!(bytes.len() > 8192, "the store file is unexpectedly small");
    for b in &mut bytes[4096..8192] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).expect("damage the store file");

    match expect_open_error(tmp.path()) {
        StoreError::Corrupt(msg) => assert!(
            msg.contains(&path.display().to_string()),
            "the error does not name the file: {msg}"
        ),
        other => panic!("expected Corrupt for a damaged file, got {other:?}"),
    }
}

#[test]
fn embedded_store_reports_a_data_dir_that_is_a_file_as_unavailable() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let not_a_dir = tmp.path().join("data");
    std::fs::write(&not_a_dir, b"a file").expect("write");
    match expect_open_error(&not_a_dir) {
        StoreError::Unavailable(msg) => assert!(
            msg.contains(&not_a_dir.display().to_string()),
            "the error does not name the data dir: {msg}"
        ),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn embedded_store_compaction_gives_back_the_room_of_deleted_keys() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(tmp.path()).expect("open");
    // Several commits, as a master's group commits would write them.
    for round in 0..10 {
        let mut batch = Batch::new();
        for i in 0..1_000 {
            batch.put(format!("tasks/j{round}/{i:05}"), vec![b'x'; 1_024]);
        }
        store.commit(batch).await.expect("commit");
    }
    let full = store.size_bytes().await.expect("a size");
    let mut purge = Batch::new();
    for round in 0..10 {
        for i in 0..1_000 {
            purge.delete(format!("tasks/j{round}/{i:05}"));
        }
    }
    store.commit(purge).await.expect("purge");
    let purged = store.size_bytes().await.expect("a size");
    assert!(
        purged >= full / 2,
        "the file shrank without a compaction ({full} -> {purged} bytes): this test no longer shows what compaction does"
    );
    assert!(store.compact().await.expect("compact"), "nothing compacted");
    let compacted = store.size_bytes().await.expect("a size");
    assert_eq!(
        compacted,
        std::fs::metadata(store_file(tmp.path())).unwrap().len()
    );
    assert!(
        compacted < full / 4,
        "compaction left {compacted} of {full} bytes for an empty store"
    );
    assert!(store.load().await.expect("load").is_empty());
}
