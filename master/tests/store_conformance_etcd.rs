//! The store conformance suite (`drover_master::store::conformance`) run
//! against the etcd backend on a real etcd, one test per check, plus what
//! only a networked store has: outages, paging, prefixes, authentication,
//! TLS, and leader election with fenced writes.
//!
//! Every test starts an etcd of its own (`support::etcd`, about 0.1 s), so
//! that the tests stay independent however they are scheduled; the tests
//! that run several harnesses share theirs and keep to key prefixes of their
//! own.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use drover_master::config::EtcdConfig;
use drover_master::store::conformance::{self, Harness};
use drover_master::store::etcd::EtcdOptions;
use drover_master::store::{Batch, EtcdStore, Snapshot, Store, StoreError};
use support::etcd::{Etcd, ServerTls};

/// The request deadline in the conformance checks: long, so that a busy
/// machine (1 MiB values, fsyncs) does not fail them.
const PATIENT: Duration = Duration::from_secs(10);
/// The request deadline in the outage tests, which wait for it to pass.
const IMPATIENT: Duration = Duration::from_secs(1);
/// How much later than its deadline a failing request may return.
const SLACK: Duration = Duration::from_secs(2);

/// A prefix no other harness in this process uses.
fn unique_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("/drover-test-{}/", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn options(etcd: &Etcd, prefix: &str, timeout: Duration) -> EtcdOptions {
    EtcdOptions {
        prefix: prefix.to_string(),
        request_timeout: timeout,
        ..EtcdOptions::new(vec![etcd.endpoint()])
    }
}

async fn connect(etcd: &Etcd, prefix: &str, timeout: Duration) -> EtcdStore {
    match EtcdStore::connect(options(etcd, prefix, timeout)).await {
        Ok(store) => store,
        Err(e) => panic!(
            "connecting to etcd failed: {e}\netcd log:\n{}",
            etcd.log_tail()
        ),
    }
}

/// An etcd store under a prefix of its own. With `restart_etcd`, closing a
/// store also restarts the etcd server, so a reopen reads what etcd kept on
/// disk rather than what it had in memory.
struct EtcdHarness {
    etcd: Arc<Etcd>,
    prefix: String,
    restart_etcd: bool,
}

impl EtcdHarness {
    /// A harness over an etcd of its own.
    fn new() -> Self {
        Self::on(&Arc::new(Etcd::start()))
    }

    /// A harness over a shared etcd, under a new prefix.
    fn on(etcd: &Arc<Etcd>) -> Self {
        EtcdHarness {
            etcd: Arc::clone(etcd),
            prefix: unique_prefix(),
            restart_etcd: false,
        }
    }
}

#[async_trait]
impl Harness for EtcdHarness {
    type S = EtcdStore;

    async fn open(&mut self) -> Arc<EtcdStore> {
        Arc::new(connect(&self.etcd, &self.prefix, PATIENT).await)
    }

    async fn close(&mut self, store: Arc<EtcdStore>) {
        drop(store);
        if self.restart_etcd {
            let etcd = Arc::clone(&self.etcd);
            tokio::task::spawn_blocking(move || etcd.restart())
                .await
                .expect("restart etcd");
        }
    }
}

#[tokio::test]
async fn etcd_store_loads_nothing_when_fresh() {
    conformance::a_fresh_store_loads_empty(&mut EtcdHarness::new()).await;
}

#[tokio::test]
async fn etcd_store_names_its_backend() {
    let mut h = EtcdHarness::new();
    conformance::the_backend_has_a_known_name(&mut h).await;
    let store = h.open().await;
    assert_eq!(store.backend(), "etcd");
}

#[tokio::test]
async fn etcd_store_loads_a_committed_batch_in_key_order_byte_for_byte() {
    conformance::a_committed_batch_is_loaded_in_key_order_byte_exact(&mut EtcdHarness::new()).await;
}

#[tokio::test]
async fn etcd_store_lets_the_later_op_on_a_key_in_a_batch_win() {
    conformance::later_ops_in_a_batch_win(&mut EtcdHarness::new()).await;
}

#[tokio::test]
async fn etcd_store_removes_deleted_keys_and_ignores_missing_ones() {
    conformance::deletes_remove_keys(&mut EtcdHarness::new()).await;
}

#[tokio::test]
async fn etcd_store_lands_a_1000_op_batch_whole_and_in_order() {
    conformance::a_large_batch_lands_whole_and_in_order(&mut EtcdHarness::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_lands_every_one_of_100_concurrent_commits_whole() {
    conformance::concurrent_commits_all_land(&mut EtcdHarness::new()).await;
}

#[tokio::test]
async fn etcd_store_lands_concurrent_commits_on_a_current_thread_runtime() {
    conformance::concurrent_commits_all_land(&mut EtcdHarness::new()).await;
}

#[tokio::test]
async fn etcd_store_keeps_every_acknowledged_batch_across_a_reopen() {
    conformance::acknowledged_batches_survive_close_and_reopen(&mut EtcdHarness::new()).await;
}

#[tokio::test]
async fn etcd_store_keeps_every_acknowledged_batch_across_an_etcd_restart() {
    let mut h = EtcdHarness::new();
    h.restart_etcd = true;
    conformance::acknowledged_batches_survive_close_and_reopen(&mut h).await;
}

#[tokio::test]
async fn etcd_store_round_trips_every_key_prefix_of_the_layout() {
    conformance::every_key_prefix_of_the_layout_round_trips(&mut EtcdHarness::new()).await;
}

#[tokio::test]
async fn etcd_store_treats_an_empty_batch_as_a_no_op() {
    conformance::an_empty_batch_is_a_no_op(&mut EtcdHarness::new()).await;
}

#[tokio::test]
async fn etcd_store_round_trips_1_mib_values() {
    conformance::large_values_round_trip(&mut EtcdHarness::new()).await;
}

#[tokio::test]
async fn etcd_store_keeps_what_is_stored_through_a_compaction() {
    conformance::compaction_keeps_what_is_stored(&mut EtcdHarness::new()).await;
}

#[tokio::test]
async fn etcd_store_passes_the_whole_suite_through_run_all() {
    let etcd = Arc::new(Etcd::start());
    conformance::run_all(|| EtcdHarness::on(&etcd)).await;
}

// etcd-only behaviour.

fn batch_of(prefix: &str, n: usize, value: &str) -> Batch {
    let mut batch = Batch::new();
    for i in 0..n {
        batch.put(format!("{prefix}/{i:04}"), value.as_bytes().to_vec());
    }
    batch
}

fn count_under(snapshot: &Snapshot, prefix: &str) -> usize {
    snapshot.keys().filter(|k| k.starts_with(prefix)).count()
}

/// Loads until etcd answers again (after a restart or a resume).
async fn load_when_back(store: &EtcdStore, etcd: &Etcd) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match store.load().await {
            Ok(snapshot) => return snapshot,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!(
                "the store did not reach etcd again: {e}\netcd log:\n{}",
                etcd.log_tail()
            ),
        }
    }
}

fn expect_unavailable(result: Result<(), StoreError>, what: &str) -> String {
    match result {
        Err(StoreError::Unavailable(msg)) => msg,
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn etcd_store_keeps_keys_under_its_prefix_as_given_and_sees_no_other_prefix() {
    let etcd = Etcd::start();
    let drover = connect(&etcd, "/drover/", PATIENT).await;
    // A prefix of the prefix without its slash, and one that sorts right
    // after it: neither may leak into the other's load.
    let sibling = connect(&etcd, "/drover2/", PATIENT).await;
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("raw client");
    raw.put("/drover", "not ours", None).await.expect("raw put");
    raw.put("/drover0", "not ours", None)
        .await
        .expect("raw put");

    let value = br#"{"id":"render","bytes":"\u00ff"}"#.to_vec();
    let mut batch = Batch::new();
    batch.put("jobs/render", value.clone());
    drover.commit(batch).await.expect("commit");
    let mut batch = Batch::new();
    batch.put("jobs/other", b"other".to_vec());
    sibling.commit(batch).await.expect("commit");

    let stored = raw.get("/drover/jobs/render", None).await.expect("raw get");
    assert_eq!(
        stored.kvs().iter().map(|kv| kv.value()).collect::<Vec<_>>(),
        [value.as_slice()],
        "the value is not stored as given at <prefix><key>"
    );
    let snapshot = drover.load().await.expect("load");
    assert_eq!(
        snapshot.into_iter().collect::<Vec<_>>(),
        [("jobs/render".to_string(), value)]
    );
    let snapshot = sibling.load().await.expect("load");
    assert_eq!(
        snapshot.keys().collect::<Vec<_>>(),
        ["jobs/other"],
        "a sibling prefix saw keys that are not its own"
    );
}

#[tokio::test]
async fn etcd_store_reports_a_paused_etcd_as_unavailable_within_its_timeout_and_never_half_writes()
{
    let etcd = Etcd::start();
    let store = connect(&etcd, "/drover/", IMPATIENT).await;
    store
        .commit(batch_of("jobs/before", 10, "before"))
        .await
        .expect("commit before the pause");

    etcd.pause();
    let started = Instant::now();
    let result = store.commit(batch_of("tasks/during", 100, "during")).await;
    let took = started.elapsed();
    let msg = expect_unavailable(result, "a commit to a paused etcd");
    assert!(
        took < IMPATIENT + SLACK,
        "a commit to a paused etcd took {took:?}, past its {IMPATIENT:?} deadline"
    );
    assert!(
        msg.contains(&etcd.endpoint()),
        "the error does not name the endpoint: {msg}"
    );
    match store.load().await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a load from a paused etcd: expected Unavailable, got {other:?}"),
    }

    etcd.resume();
    let snapshot = load_when_back(&store, &etcd).await;
    // etcd may still apply the transaction it received before the pause,
    // but only whole: a timeout says "unknown", never "half".
    let landed = count_under(&snapshot, "tasks/during/");
    assert!(
        landed == 0 || landed == 100,
        "a batch that timed out is half-written: {landed} of 100 keys"
    );
    assert_eq!(count_under(&snapshot, "jobs/before/"), 10);
    store
        .commit(batch_of("jobs/after", 1, "after"))
        .await
        .expect("the same store commits again once etcd is back");
}

#[tokio::test]
async fn etcd_store_reports_a_killed_etcd_as_unavailable_and_finds_every_acknowledged_batch_after_a_restart(
) {
    let etcd = Etcd::start();
    let store = connect(&etcd, "/drover/", IMPATIENT).await;
    for round in 0..5 {
        store
            .commit(batch_of(&format!("jobs/round-{round}"), 20, "acked"))
            .await
            .expect("commit before the kill");
    }

    etcd.kill();
    let started = Instant::now();
    let result = store
        .commit(batch_of("tasks/refused", 100, "refused"))
        .await;
    let took = started.elapsed();
    expect_unavailable(result, "a commit to a killed etcd");
    assert!(
        took < IMPATIENT + SLACK,
        "a commit to a killed etcd took {took:?}, past its {IMPATIENT:?} deadline"
    );
    match store.load().await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("a load from a killed etcd: expected Unavailable, got {other:?}"),
    }

    // Blocks this (test) thread for the restart, about 0.1 s; nothing else
    // needs to run meanwhile.
    etcd.restart();
    let snapshot = load_when_back(&store, &etcd).await;
    for round in 0..5 {
        assert_eq!(
            count_under(&snapshot, &format!("jobs/round-{round}/")),
            20,
            "acknowledged batch {round} is not whole after etcd restarted"
        );
    }
    assert_eq!(
        count_under(&snapshot, "tasks/refused/"),
        0,
        "a refused batch was written"
    );
    let fresh = connect(&etcd, "/drover/", IMPATIENT).await;
    assert_eq!(
        fresh.load().await.expect("load from a new store"),
        snapshot,
        "a new connection sees other data"
    );
}

#[tokio::test]
async fn etcd_store_refuses_to_connect_when_nothing_answers_and_names_the_endpoint() {
    // A port that was free a moment ago: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let result = EtcdStore::connect(EtcdOptions {
        request_timeout: IMPATIENT,
        ..EtcdOptions::new(vec![endpoint.clone()])
    })
    .await;
    let took = started.elapsed();
    match result {
        Err(StoreError::Unavailable(msg)) => {
            assert!(
                msg.contains(&endpoint),
                "the error does not name {endpoint}: {msg}"
            )
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(took < IMPATIENT + SLACK, "connect took {took:?}");
}

#[tokio::test]
async fn etcd_store_refuses_an_empty_prefix_which_would_own_the_whole_keyspace() {
    let etcd = Etcd::start();
    match EtcdStore::connect(options(&etcd, "", PATIENT)).await {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("prefix"), "{msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_loads_many_pages_at_one_revision_while_commits_land_between_them() {
    let etcd = Etcd::start();
    let mut opts = options(&etcd, "/drover/", PATIENT);
    // 300 keys in pages of 7: some 43 reads per load, with commits landing
    // between them.
    opts.load_page_keys = 7;
    let store = Arc::new(EtcdStore::connect(opts).await.expect("connect"));
    store
        .commit(batch_of("tasks/page", 300, "v"))
        .await
        .expect("commit 300 keys");

    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            // The first and the last key of the range, always equal within
            // one batch: a load that mixed revisions would see them differ.
            let mut n = 0u64;
            loop {
                n += 1;
                let mut batch = Batch::new();
                batch
                    .put("allocs/first", n.to_string().into_bytes())
                    .put("tasks/~last", n.to_string().into_bytes());
                if store.commit(batch).await.is_err() {
                    return n;
                }
            }
        })
    };
    let mut torn = None;
    for _ in 0..10 {
        let snapshot = store.load().await.expect("load");
        assert_eq!(
            count_under(&snapshot, "tasks/page/"),
            300,
            "a load lost keys"
        );
        let first = snapshot.get("allocs/first");
        let last = snapshot.get("tasks/~last");
        if first != last {
            torn = Some((first.cloned(), last.cloned()));
        }
        let keys: Vec<&String> = snapshot.keys().collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys out of order");
    }
    writer.abort();
    assert_eq!(torn, None, "a load mixed two revisions (first, last)");
}

#[tokio::test]
async fn etcd_store_loads_values_too_big_for_one_response_in_shorter_pages() {
    let etcd = Etcd::start();
    let mut opts = options(&etcd, "/drover/", PATIENT);
    // 40 values of 10 KiB, 400 KiB in all, with at most 64 KiB per
    // response: the 1,000-key page is halved until one fits (4 keys).
    opts.max_response_bytes = 64 << 10;
    let store = EtcdStore::connect(opts).await.expect("connect");
    let mut batch = Batch::new();
    for i in 0..40u8 {
        batch.put(format!("jobs/big-{i:02}"), vec![i; 10 << 10]);
    }
    store.commit(batch).await.expect("commit 400 KiB");
    let snapshot = store.load().await.expect("load in short pages");
    assert_eq!(snapshot.len(), 40);
    for (i, (key, value)) in snapshot.iter().enumerate() {
        assert_eq!(key, &format!("jobs/big-{i:02}"));
        assert!(
            value.len() == 10 << 10 && value.iter().all(|&b| usize::from(b) == i),
            "{key} came back wrong"
        );
    }
}

/// Enables authentication on `etcd` with a `drover` user that may read and
/// write `/drover/` only.
async fn enable_auth(etcd: &Etcd, password: &str) {
    use etcd_client::Permission;
    let mut admin = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("admin client");
    admin
        .user_add("root", "root-pw", None)
        .await
        .expect("add root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    admin.role_add("drover").await.expect("add role");
    admin
        .role_grant_permission(
            "drover",
            Permission::read_write("/drover/").with_range_end("/drover0"),
        )
        .await
        .expect("grant /drover/");
    admin
        .user_add("drover", password, None)
        .await
        .expect("add user");
    admin
        .user_grant_role("drover", "drover")
        .await
        .expect("grant role");
    admin.auth_enable().await.expect("enable auth");
}

#[tokio::test]
async fn etcd_store_logs_in_with_the_password_file_of_its_config_and_refuses_a_wrong_one() {
    let etcd = Etcd::start();
    enable_auth(&etcd, "s3cret").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("etcd.pw");
    std::fs::write(&password_file, "s3cret\n").expect("write password");
    let config = EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        username: Some("drover".into()),
        password_file: Some(password_file.clone()),
        ..EtcdConfig::default()
    };
    let store = EtcdStore::from_config(&config)
        .await
        .expect("connect as drover");
    let mut batch = Batch::new();
    batch.put("jobs/authed", b"yes".to_vec());
    store.commit(batch).await.expect("commit as drover");
    assert_eq!(store.load().await.expect("load").len(), 1);

    std::fs::write(&password_file, "wrong\n").expect("write password");
    match EtcdStore::from_config(&config).await {
        Err(StoreError::Unavailable(msg)) => assert!(
            msg.contains("authentication failed") || msg.contains("invalid"),
            "the error does not say the login failed: {msg}"
        ),
        other => panic!("a wrong password: expected Unavailable, got {other:?}"),
    }

    // A prefix the user may not read is refused at connect, not at the
    // first commit.
    let elsewhere = EtcdConfig {
        prefix: "/elsewhere/".into(),
        password_file: Some(password_file.clone()),
        ..config.clone()
    };
    std::fs::write(&password_file, "s3cret").expect("write password");
    match EtcdStore::from_config(&elsewhere).await {
        Err(StoreError::Unavailable(msg)) => assert!(
            msg.contains("permission denied"),
            "the error does not say permission was denied: {msg}"
        ),
        other => panic!("an unreadable prefix: expected Unavailable, got {other:?}"),
    }
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all
/// signed by the CA, in `dir`.
fn make_certificates(dir: &std::path::Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    for (name, extensions) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), extensions).expect("write extensions");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
    }
}

#[tokio::test]
async fn etcd_store_speaks_tls_with_a_ca_and_a_client_certificate_and_refuses_without_the_certificate(
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = dir.path();
    tokio::task::spawn_blocking({
        let certs = certs.to_path_buf();
        move || make_certificates(&certs)
    })
    .await
    .expect("make certificates");
    let etcd = Etcd::start_tls(ServerTls {
        cert_file: certs.join("server.pem"),
        key_file: certs.join("server.key"),
        client_ca_file: Some(certs.join("ca.pem")),
    });
    let config = EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        ca_file: Some(certs.join("ca.pem")),
        cert_file: Some(certs.join("client.pem")),
        key_file: Some(certs.join("client.key")),
        ..EtcdConfig::default()
    };
    let store = EtcdStore::from_config(&config)
        .await
        .expect("connect over TLS");
    let mut batch = Batch::new();
    batch.put("jobs/tls", b"yes".to_vec());
    store.commit(batch).await.expect("commit over TLS");
    assert_eq!(store.load().await.expect("load").len(), 1);

    let mut options = EtcdOptions::from_config(&config).expect("options");
    options.client_cert = None;
    options.request_timeout = IMPATIENT;
    match EtcdStore::connect(options).await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("TLS without the client certificate: expected Unavailable, got {other:?}"),
    }

    let no_ca = EtcdConfig {
        ca_file: None,
        cert_file: None,
        key_file: None,
        ..config.clone()
    };
    match EtcdStore::from_config(&no_ca).await {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("ca_file"), "{msg}"),
        other => panic!("https without a CA: expected Unavailable, got {other:?}"),
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

#[tokio::test]
async fn etcd_store_commit_latency_of_1_and_500_op_batches_is_measured() {
    let etcd = Etcd::start();
    let store = connect(&etcd, "/drover/", PATIENT).await;
    let value = vec![b'x'; 512];
    let mut report = Vec::new();
    for (ops, rounds) in [(1usize, 50usize), (500, 10)] {
        let mut took = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let mut batch = Batch::new();
            for i in 0..ops {
                batch.put(format!("tasks/latency-{ops}/{round}/{i}"), value.clone());
            }
            let started = Instant::now();
            store.commit(batch).await.expect("commit");
            took.push(started.elapsed());
        }
        took.sort_unstable();
        let p50 = percentile(&took, 50);
        report.push(format!(
            "{ops}-op batch: p50 {p50:?}, p90 {:?}, max {:?} over {rounds} commits",
            percentile(&took, 90),
            took[took.len() - 1]
        ));
        assert!(
            p50 < Duration::from_secs(2),
            "{ops}-op commits take {p50:?} at the median"
        );
    }
    eprintln!(
        "etcd store commit latency (local etcd, fsync on):\n  {}",
        report.join("\n  ")
    );
}

// Leadership and fenced writes.

/// A lease TTL etcd accepts with the test server's timing: its minimum is
/// 1.5 election timeouts rounded up to a second.
const TTL: Duration = Duration::from_secs(1);

fn put_one(key: &str) -> Batch {
    let mut batch = Batch::new();
    batch.put(key, key.as_bytes().to_vec());
    batch
}

fn expect_fenced(result: Result<(), StoreError>, what: &str) {
    match result {
        Err(StoreError::Fenced(_)) => {}
        other => panic!("{what}: expected Fenced, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_of_two_campaigning_stores_leads_and_a_revoked_leader_is_fenced_while_the_other_takes_over(
) {
    let etcd = Etcd::start();
    let a = connect(&etcd, "/drover/", PATIENT).await;
    let b = connect(&etcd, "/drover/", PATIENT).await;
    let leading_a = a.campaign("master-a", TTL).await.expect("a campaigns");
    assert!(
        leading_a.key().starts_with("/drover-election/"),
        "the leader key {} is not beside the data prefix",
        leading_a.key()
    );
    let fenced_a = a.fenced(&leading_a);
    fenced_a
        .commit(put_one("meta/by-a"))
        .await
        .expect("the leader writes");

    let b_campaign = tokio::spawn({
        let b = b.clone();
        async move { b.campaign("master-b", TTL).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !b_campaign.is_finished(),
        "a second store was elected while the first leads"
    );
    fenced_a
        .commit(put_one("meta/by-a-still"))
        .await
        .expect("the leader still writes while another waits");

    // What an expired lease does, without waiting for it: the leader key goes.
    let mut admin = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("admin client");
    admin
        .lease_revoke(leading_a.lease_id())
        .await
        .expect("revoke the leader's lease");

    let leading_b = tokio::time::timeout(Duration::from_secs(5), b_campaign)
        .await
        .expect("b is elected once a's lease is gone")
        .expect("join")
        .expect("b campaigns");
    expect_fenced(
        fenced_a.commit(put_one("meta/by-deposed-a")).await,
        "a write by the deposed leader",
    );
    tokio::time::timeout(Duration::from_secs(5), leading_a.lost())
        .await
        .expect("a notices it lost its lease");
    assert!(leading_a.is_lost());
    assert!(!leading_b.is_lost());
    assert!(leading_b.revision() > leading_a.revision());

    b.fenced(&leading_b)
        .commit(put_one("meta/by-b"))
        .await
        .expect("the new leader writes");
    let snapshot = b.load().await.expect("load");
    assert_eq!(
        snapshot.keys().collect::<Vec<_>>(),
        ["meta/by-a", "meta/by-a-still", "meta/by-b"],
        "the election keys leaked into the load, or a fenced write landed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_stops_renewing_its_lease_is_replaced_within_the_ttl_and_fenced() {
    let etcd = Etcd::start();
    let a = connect(&etcd, "/drover/", PATIENT).await;
    let b = connect(&etcd, "/drover/", PATIENT).await;
    let leading_a = a.campaign("master-a", TTL).await.expect("a campaigns");
    let fenced_a = a.fenced(&leading_a);
    let ttl = leading_a.ttl();

    // The keep-alive runs: well past the TTL, a still leads.
    let b_campaign = tokio::spawn({
        let b = b.clone();
        async move { b.campaign("master-b", TTL).await }
    });
    tokio::time::sleep(ttl * 2).await;
    assert!(
        !b_campaign.is_finished(),
        "b was elected while a renewed its lease"
    );
    assert!(!leading_a.is_lost());
    fenced_a
        .commit(put_one("meta/by-a"))
        .await
        .expect("a writes while it renews");

    // A master that hangs or dies stops renewing: dropping the leadership
    // stops the keep-alive and leaves the lease to expire.
    let dropped = Instant::now();
    drop(leading_a);
    let leading_b = tokio::time::timeout(ttl * 2 + Duration::from_secs(3), b_campaign)
        .await
        .expect("b is elected once a's lease expires")
        .expect("join")
        .expect("b campaigns");
    eprintln!(
        "b elected {:?} after a stopped renewing a {ttl:?} lease",
        dropped.elapsed()
    );
    expect_fenced(
        fenced_a.commit(put_one("meta/by-expired-a")).await,
        "a write after the lease expired",
    );
    b.fenced(&leading_b)
        .commit(put_one("meta/by-b"))
        .await
        .expect("b writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resigning_leader_hands_over_at_once_and_a_big_fenced_batch_is_refused_whole() {
    let etcd = Etcd::start();
    let a = connect(&etcd, "/drover/", PATIENT).await;
    let b = connect(&etcd, "/drover/", PATIENT).await;
    let leading_a = a
        .campaign("master-a", Duration::from_secs(30))
        .await
        .expect("a campaigns");
    let fenced_a = a.fenced(&leading_a);
    // More than one transaction's worth: every one of them is fenced.
    fenced_a
        .commit(batch_of("tasks/by-a", 300, "a"))
        .await
        .expect("a writes a big batch");
    let b_campaign = tokio::spawn({
        let b = b.clone();
        async move { b.campaign("master-b", Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resigned = Instant::now();
    leading_a.resign().await.expect("a resigns");
    let leading_b = tokio::time::timeout(Duration::from_secs(5), b_campaign)
        .await
        .expect("b is elected at once, not after the 30 s TTL")
        .expect("join")
        .expect("b campaigns");
    assert!(resigned.elapsed() < Duration::from_secs(5));
    expect_fenced(
        fenced_a
            .commit(batch_of("tasks/by-resigned-a", 300, "a"))
            .await,
        "a big batch from a leader that resigned",
    );
    let snapshot = b.load().await.expect("load");
    assert_eq!(count_under(&snapshot, "tasks/by-a/"), 300);
    assert_eq!(
        count_under(&snapshot, "tasks/by-resigned-a/"),
        0,
        "part of a fenced batch landed"
    );
    leading_b.resign().await.expect("b resigns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_reports_its_leadership_lost_within_the_ttl() {
    let etcd = Etcd::start();
    let a = connect(&etcd, "/drover/", IMPATIENT).await;
    let leading = a.campaign("master-a", TTL).await.expect("a campaigns");
    let ttl = leading.ttl();
    // etcd freezes, so it never expires the lease itself; the leader must
    // still stop believing it leads once it cannot have renewed it.
    etcd.pause();
    let paused = Instant::now();
    tokio::time::timeout(ttl + SLACK, leading.lost())
        .await
        .expect("the leader notices it cannot renew its lease");
    let took = paused.elapsed();
    etcd.resume();
    assert!(
        took <= ttl + Duration::from_millis(500),
        "the leader believed it led {took:?} after its last possible renewal, past the {ttl:?} TTL"
    );
    assert!(leading.is_lost());
}
