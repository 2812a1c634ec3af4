//! Bearer-token authentication and role checks for the REST API (DESIGN §5, §10).
//!
//! Tokens come from the master config (`auth.tokens`, resolved by
//! [`crate::config::MasterConfig::resolve_tokens`]). Each has a name (for logs;
//! the token itself is never logged) and a [`Role`]. Roles are ordered
//! `Reader < Submitter < Admin`, and a role grants everything a lower one does.
//!
//! With no tokens configured, authentication is off and every request is
//! allowed; the config refuses to listen beyond loopback in that case unless
//! told `--insecure`.

use std::fmt;

pub use drover_api::routes::{Role, UnknownRole};
use drover_api::NodeId;

use crate::identity;

/// Who a request is from, as far as its bearer token says.
#[derive(Clone, PartialEq, Eq)]
pub enum Principal {
    /// Authentication is off: anyone may do anything.
    Anyone,
    /// A configured token, by its name.
    Token { name: String, role: Role },
    /// A node credential (DESIGN §12), not yet checked against the node's
    /// record: only the master, which holds the hash, can tell whether it
    /// is genuine.
    Node { node: NodeId, credential: String },
}

impl Principal {
    /// For logs and audit lines: a token's name, or `node <id>`.
    pub fn name(&self) -> String {
        match self {
            Principal::Anyone => "anonymous".to_string(),
            Principal::Token { name, .. } => name.clone(),
            Principal::Node { node, .. } => format!("node {node}"),
        }
    }
}

// Hand-written: a credential is never printed.
impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Anyone => f.write_str("Anyone"),
            Principal::Token { name, role } => write!(f, "Token({name}, {role})"),
            Principal::Node { node, .. } => write!(f, "Node({node})"),
        }
    }
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer <token>` header, a malformed one, or a token
    /// this master does not know (HTTP 401).
    #[error("missing or invalid bearer token: send \"Authorization: Bearer <token>\"")]
    Unauthenticated,
    /// A known token whose role is too low for the route (HTTP 403).
    #[error("this needs the {needed} role; the token has {have}")]
    Forbidden { needed: Role, have: Role },
}

impl AuthError {
    /// The HTTP status to answer with.
    pub const fn status(&self) -> u16 {
        match self {
            AuthError::Unauthenticated => 401,
            AuthError::Forbidden { .. } => 403,
        }
    }

    /// The `code` of the JSON error body (`{"error": {"code", "message"}}`).
    pub const fn code(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated => "unauthorized",
            AuthError::Forbidden { .. } => "forbidden",
        }
    }

    /// The `WWW-Authenticate` header value a 401 answer must carry
    /// (RFC 9110 §11.6.1); `None` for 403.
    pub const fn www_authenticate(&self) -> Option<&'static str> {
        match self {
            AuthError::Unauthenticated => Some("Bearer realm=\"drover\""),
            AuthError::Forbidden { .. } => None,
        }
    }
}

struct Entry {
    name: String,
    role: Role,
    token: Vec<u8>,
}

/// The token table the API checks requests against. Cheap to share behind an
/// `Arc`; `check` takes `&self`.
pub struct Auth {
    entries: Vec<Entry>,
}

// Hand-written so that a `{:?}` of the server state never prints a token.
impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            return f.write_str("Auth(disabled)");
        }
        let mut list = f.debug_list();
        for e in &self.entries {
            list.entry(&format_args!("{} ({})", e.name, e.role));
        }
        list.finish()
    }
}

impl Auth {
    /// No tokens configured: every request is allowed.
    pub fn disabled() -> Self {
        Auth {
            entries: Vec::new(),
        }
    }

    /// From `(name, role, token)` triples as
    /// [`crate::config::MasterConfig::resolve_tokens`] returns them. An empty
    /// list is the same as [`Auth::disabled`] ("no tokens configured").
    pub fn new(tokens: impl IntoIterator<Item = (String, Role, String)>) -> Self {
        Auth {
            entries: tokens
                .into_iter()
                .map(|(name, role, token)| Entry {
                    name,
                    role,
                    token: token.into_bytes(),
                })
                .collect(),
        }
    }

    /// Whether requests need a token at all.
    pub fn is_enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Checks a request's `Authorization` header for a route that needs
    /// `needed`, and says whom it is from. A node credential passes for the
    /// agent role only; the master checks it against the node's record.
    pub fn check(
        &self,
        authorization_header: Option<&str>,
        needed: Role,
    ) -> Result<Principal, AuthError> {
        if !self.is_enabled() {
            return Ok(Principal::Anyone);
        }
        let presented = authorization_header
            .and_then(bearer_token)
            .ok_or(AuthError::Unauthenticated)?;
        if let Some(node) = identity::claimed_node(presented) {
            if !Role::Agent.grants(needed) {
                return Err(AuthError::Forbidden {
                    needed,
                    have: Role::Agent,
                });
            }
            return Ok(Principal::Node {
                node,
                credential: presented.to_string(),
            });
        }
        // Compare against every entry, whatever matches, so the time taken
        // says nothing about which token or how much of it was right.
        let mut found: Option<&Entry> = None;
        for entry in &self.entries {
            if constant_time_eq(presented.as_bytes(), &entry.token) {
                found = Some(entry);
            }
        }
        let entry = found.ok_or(AuthError::Unauthenticated)?;
        if entry.role.grants(needed) {
            Ok(Principal::Token {
                name: entry.name.clone(),
                role: entry.role,
            })
        } else {
            Err(AuthError::Forbidden {
                needed,
                have: entry.role,
            })
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is
/// case-insensitive (RFC 9110 §11.1); the token must be non-empty and
/// contain no whitespace.
fn bearer_token(header: &str) -> Option<&str> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return None;
    }
    Some(token)
}

/// Equality whose running time depends only on the lengths, never on where
/// the inputs first differ. (Lengths are not secret enough to hide: the
/// presented one is the caller's own, and config requires 16+ characters.)
pub(crate) fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff: u8 = u8::from(presented.len() != expected.len());
    for (i, &p) in presented.iter().enumerate() {
        let e = expected.get(i).copied().unwrap_or(0);
        diff |= p ^ e;
    }
    // Keep the optimiser from turning the loop into an early-exit compare.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const READER: &str = "reader-token-0123456789";
    const SUBMITTER: &str = "submitter-token-0123456789";
    const ADMIN: &str = "admin-token-0123456789";

    fn auth() -> Auth {
        Auth::new([
            ("dash".to_string(), Role::Reader, READER.to_string()),
            ("ci".to_string(), Role::Submitter, SUBMITTER.to_string()),
            ("ops".to_string(), Role::Admin, ADMIN.to_string()),
        ])
    }

    /// The token name a check passed as; `None` with auth off.
    fn who(r: Result<Principal, AuthError>) -> Result<Option<String>, AuthError> {
        r.map(|p| match p {
            Principal::Anyone => None,
            other => Some(other.name()),
        })
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn roles_are_ordered_reader_submitter_admin_and_higher_ones_grant_lower() {
        assert!(Role::Reader < Role::Submitter && Role::Submitter < Role::Admin);
        assert!(Role::Admin.grants(Role::Reader));
        assert!(Role::Submitter.grants(Role::Submitter));
        assert!(!Role::Reader.grants(Role::Submitter));
        assert!(!Role::Submitter.grants(Role::Admin));
    }

    #[test]
    fn roles_read_and_write_as_lowercase_names() {
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>(), Ok(role));
            assert_eq!(
                serde_json::to_string(&role).unwrap(),
                format!("\"{}\"", role.name())
            );
            let back: Role = serde_yaml::from_str(role.name()).unwrap();
            assert_eq!(back, role);
        }
        assert!("Admin".parse::<Role>().is_err());
        assert!(serde_yaml::from_str::<Role>("root").is_err());
    }

    #[test]
    fn a_request_without_an_authorization_header_is_401() {
        let err = who(auth().check(None, Role::Reader)).unwrap_err();
        assert_eq!(err, AuthError::Unauthenticated);
        assert_eq!(err.status(), 401);
        assert_eq!(err.code(), "unauthorized");
        assert!(err.www_authenticate().is_some());
    }

    #[test]
    fn a_header_with_another_scheme_or_no_token_is_401() {
        let a = auth();
        for header in [
            format!("Basic {ADMIN}"),
            format!("Token {ADMIN}"),
            ADMIN.to_string(),
            format!("Bearer{ADMIN}"),
            "Bearer".to_string(),
            "Bearer ".to_string(),
            format!("Bearer {ADMIN} extra"),
            String::new(),
        ] {
            assert_eq!(
                who(a.check(Some(&header), Role::Reader)),
                Err(AuthError::Unauthenticated),
                "{header:?}"
            );
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let a = auth();
        assert_eq!(
            who(a.check(Some(&format!("bearer {ADMIN}")), Role::Admin)),
            Ok(Some("ops".to_string()))
        );
        assert_eq!(
            who(a.check(Some(&format!("BEARER  {ADMIN} ")), Role::Admin)),
            Ok(Some("ops".to_string()))
        );
    }

    #[test]
    fn an_unknown_token_is_401_even_when_it_shares_a_prefix_with_a_known_one() {
        let a = auth();
        for token in [
            "nobody-knows-this-token",
            &ADMIN[..ADMIN.len() - 1],
            &format!("{ADMIN}x"),
            &ADMIN.to_uppercase(),
        ] {
            assert_eq!(
                who(a.check(Some(&bearer(token)), Role::Reader)),
                Err(AuthError::Unauthenticated),
                "{token}"
            );
        }
    }

    #[test]
    fn a_reader_token_on_a_submitter_route_is_403_naming_both_roles() {
        let err = who(auth().check(Some(&bearer(READER)), Role::Submitter)).unwrap_err();
        assert_eq!(
            err,
            AuthError::Forbidden {
                needed: Role::Submitter,
                have: Role::Reader
            }
        );
        assert_eq!(err.status(), 403);
        assert_eq!(err.code(), "forbidden");
        assert_eq!(err.www_authenticate(), None);
        let msg = err.to_string();
        assert!(msg.contains("submitter") && msg.contains("reader"), "{msg}");
    }

    #[test]
    fn a_submitter_token_may_read_and_submit_but_not_administer() {
        let a = auth();
        let h = bearer(SUBMITTER);
        assert_eq!(
            who(a.check(Some(&h), Role::Reader)),
            Ok(Some("ci".to_string()))
        );
        assert_eq!(
            who(a.check(Some(&h), Role::Submitter)),
            Ok(Some("ci".to_string()))
        );
        assert_eq!(
            who(a.check(Some(&h), Role::Admin)),
            Err(AuthError::Forbidden {
                needed: Role::Admin,
                have: Role::Submitter
            })
        );
    }

    #[test]
    fn an_admin_token_can_do_everything_but_speak_for_nodes() {
        let a = auth();
        assert_eq!(
            who(a.check(Some(&bearer(ADMIN)), Role::Agent)),
            Err(AuthError::Forbidden {
                needed: Role::Agent,
                have: Role::Admin
            })
        );
        for needed in [Role::Reader, Role::Submitter, Role::Admin] {
            assert_eq!(
                who(a.check(Some(&bearer(ADMIN)), needed)),
                Ok(Some("ops".to_string())),
                "{needed}"
            );
        }
    }

    #[test]
    fn a_node_credential_passes_for_the_agent_protocol_only() {
        let a = auth();
        let node = NodeId::new("n1").unwrap();
        let (credential, _) = identity::issue(&node).unwrap();
        assert_eq!(
            a.check(Some(&bearer(&credential)), Role::Agent),
            Ok(Principal::Node {
                node,
                credential: credential.clone()
            })
        );
        for needed in [Role::Reader, Role::Submitter, Role::Admin] {
            assert_eq!(
                who(a.check(Some(&bearer(&credential)), needed)),
                Err(AuthError::Forbidden {
                    needed,
                    have: Role::Agent
                })
            );
        }
        let p = a.check(Some(&bearer(&credential)), Role::Agent).unwrap();
        assert!(!format!("{p:?}").contains(&credential[20..]), "{p:?}");
    }

    #[test]
    fn disabled_auth_allows_every_request_with_or_without_a_header() {
        for a in [Auth::disabled(), Auth::new(Vec::new())] {
            assert!(!a.is_enabled());
            for needed in Role::ALL {
                assert_eq!(who(a.check(None, needed)), Ok(None));
                assert_eq!(who(a.check(Some("Basic garbage"), needed)), Ok(None));
            }
        }
        assert!(auth().is_enabled());
    }

    #[test]
    fn debug_output_names_tokens_but_never_shows_their_values() {
        let shown = format!("{:?}", auth());
        assert!(shown.contains("ops") && shown.contains("admin"), "{shown}");
        for secret in [READER, SUBMITTER, ADMIN] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert_eq!(format!("{:?}", Auth::disabled()), "Auth(disabled)");
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab\0", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
