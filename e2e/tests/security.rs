//! Node identity on real binaries: an agent joins with a join token, keeps
//! the credential it is given (0600), speaks with it from then on (across
//! a restart), and is shut out once an operator revokes it.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use drover_api::{JobState, NodeState};
use drover_e2e::{eventually, Cluster, Job, JOIN_TOKEN};

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn an_agent_joins_keeps_its_credential_across_a_restart_and_is_shut_out_when_revoked() {
    let mut cluster = Cluster::builder()
        .agents(1)
        .fast_failure_detection()
        .tokens()
        .start()
        .await;
    let node = cluster.node(0);
    let file = cluster.agent(0).data_dir().join("credential");
    let credential = std::fs::read_to_string(&file).expect("the agent kept its credential");
    assert!(
        credential.starts_with(&format!("drover-node.{node}.")),
        "{credential}"
    );
    assert!(!credential.contains(JOIN_TOKEN));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");

    let job = Job::batch("first", "true");
    cluster.submit(&job).await;
    cluster.wait_job(&job.id(), JobState::Complete, WAIT).await;

    // Restarted, the agent speaks with its credential: the join token alone
    // could no longer register this node.
    cluster.kill_agent(0);
    cluster.start_agent(0).await;
    let again = std::fs::read_to_string(&file).unwrap();
    assert_eq!(again, credential, "a rejoin would have issued another");
    let job = Job::batch("second", "true");
    cluster.submit(&job).await;
    cluster.wait_job(&job.id(), JobState::Complete, WAIT).await;

    let revoked = cluster
        .client()
        .revoke_node(&node)
        .await
        .expect("an admin may revoke");
    assert!(
        revoked.revoked && revoked.state == NodeState::Down,
        "{revoked:?}"
    );
    // The agent's heartbeats are refused now: the node stays down.
    tokio::time::sleep(cluster.node_timeout()).await;
    eventually("the revoked node still down", WAIT, || async {
        let n = cluster.node_view(&node).await;
        if n.state == NodeState::Down {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    let log = std::fs::read_to_string(cluster.agent(0).log_path()).unwrap_or_default();
    assert!(log.contains("revoked"), "the agent's log says why:\n{log}");
}
