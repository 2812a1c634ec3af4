//! Node credentials (DESIGN §12): a secret bound to one node id, given to its
//! agent once, when it joins with an `agent` join token. The agent keeps it
//! (0600, in its data dir) and sends it as its bearer token from then on;
//! the master keeps only its SHA-256, in the node's record.
//!
//! A credential reads `drover-node.<node id>.<64 hex digits>`: the node id in
//! it lets the API know whom a request claims to be before it reads the
//! body, and the hash covers the id, so a secret cannot be moved to another.

use drover_api::NodeId;
use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

use crate::auth::constant_time_eq;

const PREFIX: &str = "drover-node.";

/// Why no credential could be made.
#[derive(Debug, thiserror::Error)]
#[error("the system's random number generator failed")]
pub struct NoRandomness;

/// A new credential for `node`, and the hash to keep of it.
pub fn issue(node: &NodeId) -> Result<(String, String), NoRandomness> {
    let mut secret = [0u8; 32];
    SystemRandom::new()
        .fill(&mut secret)
        .map_err(|_| NoRandomness)?;
    let credential = format!("{PREFIX}{node}.{}", hex(&secret));
    let hash = hash(&credential);
    Ok((credential, hash))
}

/// The node a presented bearer token claims to be, if it is a credential.
pub fn claimed_node(bearer: &str) -> Option<NodeId> {
    let rest = bearer.strip_prefix(PREFIX)?;
    let (node, secret) = rest.rsplit_once('.')?;
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    NodeId::new(node).ok()
}

/// The SHA-256 of a credential, in hex: what the master stores.
pub fn hash(credential: &str) -> String {
    hex(digest(&SHA256, credential.as_bytes()).as_ref())
}

/// Whether `credential` is the one whose hash is `stored`.
pub fn verify(credential: &str, stored: &str) -> bool {
    constant_time_eq(hash(credential).as_bytes(), stored.as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_names_its_node_and_verifies_against_its_hash_only() {
        let n1 = NodeId::new("gpu-1.rack_2").unwrap();
        let (c1, h1) = issue(&n1).unwrap();
        let (c2, h2) = issue(&n1).unwrap();
        assert_ne!(c1, c2, "two credentials for one node are different secrets");
        assert_eq!(claimed_node(&c1), Some(n1.clone()));
        assert!(verify(&c1, &h1));
        assert!(!verify(&c1, &h2));
        assert!(!c1.contains(&h1) && h1.len() == 64);
        // The same secret under another node's name is another credential.
        let moved = c1.replacen("gpu-1.rack_2", "gpu-2", 1);
        assert_eq!(claimed_node(&moved), Some(NodeId::new("gpu-2").unwrap()));
        assert!(!verify(&moved, &h1));
    }

    #[test]
    fn tokens_that_are_not_credentials_claim_no_node() {
        for t in [
            "admin-token-0123456789",
            "drover-node.n1",
            "drover-node.n1.abc",
            &format!("drover-node.bad id.{}", "0".repeat(64)),
            &format!("drover-node.n1.{}", "g".repeat(64)),
        ] {
            assert_eq!(claimed_node(t), None, "{t}");
        }
    }
}
