//! TLS on real binaries: a master serving its API over TLS, agents that
//! verify it with the cluster's CA and serve their logs over TLS, and the
//! CLI with --cacert. A client without the CA, with another CA, or in
//! plaintext is refused, and says why.

use std::process::Command;
use std::time::Duration;

use drover_api::client::LogStream;
use drover_api::JobState;
use drover_e2e::{bin_dir, Cluster, Job, TestPki, ADMIN_TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(15);

fn drover(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(bin_dir().join("drover"))
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("DROVER_CACERT")
        .output()
        .expect("running drover");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn a_cluster_speaks_tls_end_to_end_and_refuses_what_it_cannot_verify() {
    let cluster = Cluster::builder().agents(1).tokens().tls().start().await;
    let pki = cluster.pki().expect("a TLS cluster").clone();
    // The agent registered over TLS and advertises a TLS log server.
    let node = cluster.node_view(&cluster.node(0)).await;
    assert!(
        node.desc.log_addr.starts_with("https://127.0.0.1:"),
        "{node:?}"
    );

    let job = Job::batch("over-tls", "echo secret-line");
    cluster.submit(&job).await;
    cluster.wait_job(&job.id(), JobState::Complete, WAIT).await;
    // Logs come from the agent over TLS, through the master over TLS.
    assert_eq!(
        cluster.logs(&job.id().task(0), LogStream::Stdout).await,
        "secret-line\n"
    );

    let addr = format!("https://{}", cluster.master().addr());
    let ca = pki.ca.display().to_string();
    let (ok, out) = drover(
        &["--addr", &addr, "--cacert", &ca, "job", "ls"],
        &[("DROVER_TOKEN", ADMIN_TOKEN)],
    );
    assert!(ok && out.contains("over-tls"), "{out}");
    let (ok, out) = drover(
        &["--addr", &addr, "job", "ls"],
        &[("DROVER_TOKEN", ADMIN_TOKEN)],
    );
    assert!(!ok && out.contains("CA"), "without a CA: {out}");
    let other = tempfile::tempdir().unwrap();
    let stranger = TestPki::create(other.path());
    let (ok, out) = drover(
        &[
            "--addr",
            &addr,
            "--cacert",
            &stranger.ca.display().to_string(),
            "job",
            "ls",
        ],
        &[("DROVER_TOKEN", ADMIN_TOKEN)],
    );
    assert!(
        !ok && out.contains("not signed by the CA"),
        "another CA: {out}"
    );

    // Plaintext HTTP to the TLS port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(cluster.master().addr())
        .await
        .unwrap();
    tcp.write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw)).await;
    assert!(
        !String::from_utf8_lossy(&raw).contains("over-tls"),
        "{raw:?}"
    );
}
