//! The master's configuration (DESIGN §10): a YAML file in which every key has
//! a default and unknown keys are errors that name the key's full path,
//! then command-line flags on top.
//!
//! Order of use: [`MasterConfig::load`] (or [`MasterConfig::from_yaml`]) →
//! [`MasterConfig::apply`] the flags → [`MasterConfig::validate`] →
//! [`MasterConfig::resolve_tokens`] to read token files for
//! [`crate::auth::Auth::new`]. `config/master.yaml` at the repository root is a
//! commented example holding every key at its default.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use drover_api::config::{self, check_host_port, duration};
pub use drover_api::config::{ConfigError, Problem};
use drover_api::{Memory, PolicyKind};
use serde::{Deserialize, Deserializer};

use crate::auth::Role;

/// Shortest accepted `api.max_body`.
pub const MIN_MAX_BODY: Memory = Memory(1 << 10);
/// Shortest accepted auth token, in characters.
pub const MIN_TOKEN_LEN: usize = 16;

/// The whole master config. `Default` is what an empty file gives.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MasterConfig {
    /// Address the REST API listens on.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// `host:port` that other masters and agents use to reach this one, when
    /// it is not `listen` (e.g. listening on `0.0.0.0`).
    pub advertise: Option<String>,
    /// Where the embedded store and other local state live.
    pub data_dir: PathBuf,
    /// Allow listening beyond loopback without auth tokens.
    pub insecure: bool,
    pub store: StoreConfig,
    pub scheduler: SchedulerConfig,
    pub liveness: LivenessConfig,
    pub api: ApiConfig,
    pub auth: AuthConfig,
    /// Serve the REST API over TLS; `None`: plaintext.
    pub tls: Option<TlsConfig>,
    pub log: LogConfig,
}

/// TLS for the REST API (DESIGN §12).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The master's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// Mutual TLS: every client (agents, the CLI) must present a
    /// certificate signed by this CA.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// The CA of the agents' log servers, for those that serve TLS
    /// (their `log_addr` starts with `https://`).
    #[serde(default)]
    pub agent_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The server side, for drover-tls.
    pub fn server_files(&self) -> drover_tls::ServerFiles {
        drover_tls::ServerFiles {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            client_ca_file: self.client_ca_file.clone(),
        }
    }
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            advertise: None,
            data_dir: PathBuf::from("/var/lib/drover/master"),
            insecure: false,
            store: StoreConfig::default(),
            scheduler: SchedulerConfig::default(),
            liveness: LivenessConfig::default(),
            api: ApiConfig::default(),
            auth: AuthConfig::default(),
            tls: None,
            log: LogConfig::default(),
        }
    }
}

/// Which store backend persists the cluster state (DESIGN §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// A redb file in `data_dir`; one master.
    #[default]
    Embedded,
    /// etcd, with leader election among several masters.
    Etcd,
}

impl StoreBackend {
    pub const ALL: [StoreBackend; 2] = [StoreBackend::Embedded, StoreBackend::Etcd];

    pub const fn name(self) -> &'static str {
        match self {
            StoreBackend::Embedded => "embedded",
            StoreBackend::Etcd => "etcd",
        }
    }
}

impl fmt::Display for StoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a store backend: use embedded or etcd")]
pub struct UnknownStoreBackend(pub String);

impl FromStr for StoreBackend {
    type Err = UnknownStoreBackend;
    fn from_str(s: &str) -> Result<Self, UnknownStoreBackend> {
        StoreBackend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| UnknownStoreBackend(s.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// Compact the store once this many keys have been deleted since the
    /// last compaction (purged jobs, their tasks and allocs); 0: never.
    pub compact_after_deletes: u64,
    /// Used only when `backend` is `etcd`.
    pub etcd: EtcdConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::default(),
            compact_after_deletes: 10_000,
            etcd: EtcdConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs, `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// Key prefix for all of Drover's keys; ends with `/`.
    pub prefix: String,
    /// TTL of the leader-election lease, whole seconds.
    #[serde(deserialize_with = "duration")]
    pub lease_ttl: Duration,
    pub username: Option<String>,
    /// File holding the password for `username`.
    pub password_file: Option<PathBuf>,
    /// CA bundle to verify the etcd servers with.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for mutual TLS; both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "/drover/".to_string(),
            lease_ttl: Duration::from_secs(10),
            username: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Policy for jobs whose spec names none.
    pub default_policy: PolicyKind,
    /// Longest time between scheduling passes (changes also trigger one).
    #[serde(deserialize_with = "duration")]
    pub pass_interval: Duration,
    /// Time between SIGTERM and SIGKILL for a stopped task whose job sets
    /// no `kill_timeout`.
    #[serde(deserialize_with = "duration")]
    pub kill_grace: Duration,
    /// Tasks that may wait to be placed; a submission that would pass it
    /// is answered 429 with `Retry-After`, so the backlog, and the memory
    /// it holds, stays bounded.
    pub max_pending_tasks: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            default_policy: PolicyKind::LeastLoaded,
            pass_interval: Duration::from_secs(1),
            kill_grace: Duration::from_secs(5),
            max_pending_tasks: 2_000_000,
        }
    }
}

/// Node liveness (DESIGN §8).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LivenessConfig {
    /// How often agents heartbeat; sent to them at registration.
    #[serde(deserialize_with = "duration")]
    pub heartbeat_interval: Duration,
    /// Silence after which a node is down and its allocs are rescheduled.
    #[serde(deserialize_with = "duration")]
    pub node_timeout: Duration,
    /// Missed heartbeats after which a node is suspect (no new work).
    pub suspect_after_missed: u32,
    /// When more than half of the ready nodes go silent at once, the master
    /// assumes it is the one cut off and marks nodes down at most this fast.
    pub max_down_per_second: u32,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            heartbeat_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(10),
            suspect_after_missed: 3,
            max_down_per_second: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Largest request body; larger ones get 413.
    pub max_body: Memory,
    /// Longest an agent's assignment long poll is held open.
    #[serde(deserialize_with = "duration")]
    pub poll_timeout: Duration,
    /// REST calls (users' tokens) served at once; more are answered 429
    /// with `Retry-After` before their bodies are read.
    pub max_requests: usize,
    /// Agent protocol calls served at once, held polls included (one per
    /// node); more are answered 429 with `Retry-After`.
    pub max_agent_requests: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body: Memory(1 << 20),
            poll_timeout: Duration::from_secs(30),
            max_requests: 512,
            max_agent_requests: 16_384,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// No tokens: authentication is off (loopback or `--insecure` only).
    pub tokens: Vec<TokenEntry>,
}

/// One API token: exactly one of `token` and `token_file`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Shown in logs instead of the token.
    pub name: String,
    pub role: Role,
    #[serde(default)]
    pub token: Option<String>,
    /// File whose content (surrounding whitespace trimmed) is the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

// Hand-written so that printing the config never prints a token.
impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A level (`trace`, `debug`, `info`, `warn`, `error`, `off`) or
    /// comma-separated `target=level` directives: `info,drover_master::store=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Command-line flags that override the file. `None`/`false`: keep the file's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    /// `--insecure`: can only switch it on.
    pub insecure: bool,
    pub default_policy: Option<PolicyKind>,
    pub store_backend: Option<StoreBackend>,
}

impl MasterConfig {
    /// Parses a config document. An empty document is the default config.
    /// Does not [`validate`](Self::validate): flags may still change it.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        config::parse_yaml(text)
    }

    /// Reads and parses a config file; errors name the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        config::load_yaml(path)
    }

    /// Applies command-line flags; they win over the file.
    pub fn apply(&mut self, overrides: &Overrides) {
        if let Some(listen) = overrides.listen {
            self.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            self.data_dir = dir.clone();
        }
        if overrides.insecure {
            self.insecure = true;
        }
        if let Some(policy) = overrides.default_policy {
            self.scheduler.default_policy = policy;
        }
        if let Some(backend) = overrides.store_backend {
            self.store.backend = backend;
        }
    }

    /// Checks that the values can work together; reports every problem found.
    /// Token files are not read here (see [`resolve_tokens`](Self::resolve_tokens)).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        self.check_listen(&mut p);
        if self.data_dir.as_os_str().is_empty() {
            p.push(Problem::new("data_dir", "must not be empty"));
        }
        if self.store.backend == StoreBackend::Etcd {
            self.store.etcd.check(&mut p);
        }
        if self.scheduler.pass_interval.is_zero() {
            p.push(Problem::new(
                "scheduler.pass_interval",
                "must be greater than 0",
            ));
        }
        if self.scheduler.max_pending_tasks == 0 {
            p.push(Problem::new(
                "scheduler.max_pending_tasks",
                "must be at least 1",
            ));
        }
        if self.scheduler.kill_grace > drover_api::spec::MAX_KILL_TIMEOUT {
            p.push(Problem::new(
                "scheduler.kill_grace",
                format!(
                    "must be at most {} (a stopping task holds its node's resources)",
                    humantime::format_duration(drover_api::spec::MAX_KILL_TIMEOUT)
                ),
            ));
        }
        self.liveness.check(&mut p);
        self.api.check(&mut p);
        self.auth.check(&mut p);
        check_log_level(&self.log.level, &mut p);
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems: p })
        }
    }

    fn check_listen(&self, p: &mut Vec<Problem>) {
        if !is_loopback(self.listen.ip()) && self.auth.tokens.is_empty() && !self.insecure {
            p.push(Problem::new(
                "listen",
                format!(
                    "{} is not a loopback address and auth.tokens is empty, so anyone who \
                     can reach it could control the cluster: add auth.tokens, or pass \
                     --insecure (insecure: true) to serve without authentication",
                    self.listen
                ),
            ));
        } else if !is_loopback(self.listen.ip()) && self.tls.is_none() && !self.insecure {
            p.push(Problem::new(
                "listen",
                format!(
                    "{} is not a loopback address and tls is not set, so tokens and jobs \
                     would cross the network in clear: set tls.cert_file and tls.key_file, \
                     or pass --insecure (insecure: true) to serve plaintext",
                    self.listen
                ),
            ));
        }
        if let Some(adv) = &self.advertise {
            if let Err(why) = check_host_port(adv) {
                p.push(Problem::new("advertise", format!("{adv:?} {why}")));
            }
        }
    }

    /// The configured tokens as `(name, role, token)`, reading `token_file`s
    /// (surrounding whitespace, such as the trailing newline, trimmed).
    /// Checks every value — length, characters, uniqueness — since file
    /// contents are only known here.
    pub fn resolve_tokens(&self) -> Result<Vec<(String, Role, String)>, ConfigError> {
        let mut out = Vec::with_capacity(self.auth.tokens.len());
        let mut problems = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, entry) in self.auth.tokens.iter().enumerate() {
            let (value, path, source) = match (&entry.token, &entry.token_file) {
                (Some(token), None) => (token.clone(), format!("auth.tokens[{i}].token"), None),
                (None, Some(file)) => {
                    let text =
                        std::fs::read_to_string(file).map_err(|source| ConfigError::TokenFile {
                            entry: format!("auth.tokens[{i}] ({})", entry.name),
                            path: file.clone(),
                            source,
                        })?;
                    (
                        text.trim().to_string(),
                        format!("auth.tokens[{i}].token_file"),
                        Some(file),
                    )
                }
                _ => {
                    problems.push(Problem::new(
                        format!("auth.tokens[{i}]"),
                        "set exactly one of token and token_file",
                    ));
                    continue;
                }
            };
            let before = problems.len();
            let from = source
                .map(|f| format!("the token in {}", f.display()))
                .unwrap_or_else(|| "the token".to_string());
            check_token_value(&value, &path, &from, &mut problems);
            if let Some(first) = seen.get(&value) {
                problems.push(Problem::new(
                    path,
                    format!(
                        "{from} is the same as auth.tokens[{first}]'s: each token must be unique"
                    ),
                ));
            } else if problems.len() == before {
                seen.insert(value.clone(), i);
                out.push((entry.name.clone(), entry.role, value));
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }
}

impl EtcdConfig {
    fn check(&self, p: &mut Vec<Problem>) {
        if self.endpoints.is_empty() {
            p.push(Problem::new(
                "store.etcd.endpoints",
                "must list at least one endpoint when store.backend is etcd",
            ));
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            let rest = ep
                .strip_prefix("http://")
                .or_else(|| ep.strip_prefix("https://"));
            let ok = rest.is_some_and(|r| check_host_port(r.trim_end_matches('/')).is_ok());
            if !ok {
                p.push(Problem::new(
                    format!("store.etcd.endpoints[{i}]"),
                    format!("{ep:?} is not an etcd client URL: use http://host:port or https://host:port"),
                ));
            }
        }
        if self.prefix.is_empty() || !self.prefix.ends_with('/') {
            p.push(Problem::new(
                "store.etcd.prefix",
                format!("{:?} must be non-empty and end with '/'", self.prefix),
            ));
        }
        if self.lease_ttl < Duration::from_secs(1) || self.lease_ttl.subsec_nanos() != 0 {
            p.push(Problem::new(
                "store.etcd.lease_ttl",
                format!(
                    "{} must be a whole number of seconds, at least 1s (etcd leases count seconds)",
                    humantime::format_duration(self.lease_ttl)
                ),
            ));
        }
        if self.password_file.is_some() && self.username.is_none() {
            p.push(Problem::new(
                "store.etcd.password_file",
                "needs store.etcd.username",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            p.push(Problem::new(
                "store.etcd",
                "set both cert_file and key_file (client TLS), or neither",
            ));
        }
    }
}

impl LivenessConfig {
    fn check(&self, p: &mut Vec<Problem>) {
        if self.heartbeat_interval.is_zero() {
            p.push(Problem::new(
                "liveness.heartbeat_interval",
                "must be greater than 0",
            ));
        }
        if self.suspect_after_missed == 0 {
            p.push(Problem::new(
                "liveness.suspect_after_missed",
                "must be at least 1",
            ));
        }
        if self.max_down_per_second == 0 {
            p.push(Problem::new(
                "liveness.max_down_per_second",
                "must be at least 1, or a master cut off from its nodes would never mark any down",
            ));
        }
        let suspect_at = self
            .heartbeat_interval
            .checked_mul(self.suspect_after_missed);
        let too_short = suspect_at.is_none_or(|s| self.node_timeout <= s);
        if too_short && !self.heartbeat_interval.is_zero() {
            let at = suspect_at
                .map(|s| humantime::format_duration(s).to_string())
                .unwrap_or_else(|| "too long".to_string());
            p.push(Problem::new(
                "liveness.node_timeout",
                format!(
                    "{} must be longer than heartbeat_interval × suspect_after_missed \
                     ({} × {} = {at}), or nodes go down before they are suspect",
                    humantime::format_duration(self.node_timeout),
                    humantime::format_duration(self.heartbeat_interval),
                    self.suspect_after_missed,
                ),
            ));
        }
    }
}

impl ApiConfig {
    fn check(&self, p: &mut Vec<Problem>) {
        if self.max_body < MIN_MAX_BODY {
            p.push(Problem::new(
                "api.max_body",
                format!(
                    "{} is too small: use at least {MIN_MAX_BODY}",
                    self.max_body
                ),
            ));
        }
        if self.poll_timeout.is_zero() {
            p.push(Problem::new("api.poll_timeout", "must be greater than 0"));
        }
        for (value, path) in [
            (self.max_requests, "api.max_requests"),
            (self.max_agent_requests, "api.max_agent_requests"),
        ] {
            if value == 0 {
                p.push(Problem::new(path, "must be at least 1"));
            }
        }
    }
}

impl AuthConfig {
    fn check(&self, p: &mut Vec<Problem>) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut values: HashMap<&str, usize> = HashMap::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if t.name.trim().is_empty() {
                p.push(Problem::new(
                    format!("auth.tokens[{i}].name"),
                    "must not be empty",
                ));
            } else if let Some(&first) = names.get(t.name.as_str()) {
                p.push(Problem::new(
                    format!("auth.tokens[{i}].name"),
                    format!(
                        "{:?} is already the name of auth.tokens[{first}]: names must be unique",
                        t.name
                    ),
                ));
            } else {
                names.insert(&t.name, i);
            }
            match (&t.token, &t.token_file) {
                (Some(token), None) => {
                    let path = format!("auth.tokens[{i}].token");
                    check_token_value(token, &path, "the token", p);
                    if let Some(&first) = values.get(token.as_str()) {
                        p.push(Problem::new(
                            path,
                            format!(
                                "the token is the same as auth.tokens[{first}]'s: each token must be unique"
                            ),
                        ));
                    } else {
                        values.insert(token, i);
                    }
                }
                (None, Some(file)) if file.as_os_str().is_empty() => p.push(Problem::new(
                    format!("auth.tokens[{i}].token_file"),
                    "must not be empty",
                )),
                (None, Some(_)) => {}
                (Some(_), Some(_)) => p.push(Problem::new(
                    format!("auth.tokens[{i}]"),
                    "has both token and token_file: set exactly one",
                )),
                (None, None) => p.push(Problem::new(
                    format!("auth.tokens[{i}]"),
                    "has neither token nor token_file: set exactly one",
                )),
            }
        }
    }
}

/// Length and characters of one token. Messages never quote the token.
fn check_token_value(token: &str, path: &str, what: &str, p: &mut Vec<Problem>) {
    let len = token.chars().count();
    if len < MIN_TOKEN_LEN {
        p.push(Problem::new(
            path,
            format!("{what} is too short ({len} characters): use at least {MIN_TOKEN_LEN}"),
        ));
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        p.push(Problem::new(
            path,
            format!(
                "{what} must be printable ASCII without spaces, to fit an Authorization header"
            ),
        ));
    }
}

const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

fn check_log_level(level: &str, p: &mut Vec<Problem>) {
    let ok = !level.trim().is_empty()
        && level.split(',').all(|directive| {
            let lvl = match directive.trim().split_once('=') {
                Some((target, lvl)) if !target.trim().is_empty() => lvl,
                Some(_) => return false,
                None => directive,
            };
            LOG_LEVELS
                .iter()
                .any(|l| l.eq_ignore_ascii_case(lvl.trim()))
        });
    if !ok {
        p.push(Problem::new(
            "log.level",
            format!(
                "{level:?} is not a log level: use one of {} or directives such as \
                 \"info,drover_master::store=debug\"",
                LOG_LEVELS.join(", ")
            ),
        ));
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    // `::ffff:127.0.0.1` is loopback too.
    ip.to_canonical().is_loopback()
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    config::socket_addr(d, 7070)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const TOKEN_A: &str = "aaaaaaaaaaaaaaaa-ci";
    const TOKEN_B: &str = "bbbbbbbbbbbbbbbb-ops";

    fn parse_err(yaml: &str) -> (String, String, String) {
        match MasterConfig::from_yaml(yaml) {
            Err(e @ ConfigError::Parse { .. }) => {
                let shown = e.to_string();
                let ConfigError::Parse { path, message, .. } = e else {
                    unreachable!()
                };
                (path, message, shown)
            }
            other => panic!("expected a parse error for {yaml:?}, got {other:?}"),
        }
    }

    fn problems(cfg: &MasterConfig) -> Vec<Problem> {
        match cfg.validate() {
            Ok(()) => Vec::new(),
            Err(e) => {
                assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
                e.problems().to_vec()
            }
        }
    }

    fn problem_at<'a>(problems: &'a [Problem], path: &str) -> &'a Problem {
        problems
            .iter()
            .find(|p| p.path == path)
            .unwrap_or_else(|| panic!("no problem at {path} in {problems:#?}"))
    }

    fn inline(name: &str, role: Role, token: &str) -> TokenEntry {
        TokenEntry {
            name: name.to_string(),
            role,
            token: Some(token.to_string()),
            token_file: None,
        }
    }

    fn from_file(name: &str, role: Role, file: &Path) -> TokenEntry {
        TokenEntry {
            name: name.to_string(),
            role,
            token: None,
            token_file: Some(file.to_path_buf()),
        }
    }

    #[test]
    fn defaults_are_the_documented_values() {
        let c = MasterConfig::default();
        assert_eq!(c.listen, "127.0.0.1:7070".parse().unwrap());
        assert_eq!(c.advertise, None);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/drover/master"));
        assert!(!c.insecure);
        assert_eq!(c.store.backend, StoreBackend::Embedded);
        assert_eq!(c.store.etcd.endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(c.store.etcd.prefix, "/drover/");
        assert_eq!(c.store.etcd.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.store.etcd.username, None);
        assert_eq!(c.store.etcd.password_file, None);
        assert_eq!(c.store.etcd.ca_file, None);
        assert_eq!(c.store.etcd.cert_file, None);
        assert_eq!(c.store.etcd.key_file, None);
        assert_eq!(c.scheduler.default_policy, PolicyKind::LeastLoaded);
        assert_eq!(c.scheduler.pass_interval, Duration::from_secs(1));
        assert_eq!(c.liveness.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.liveness.node_timeout, Duration::from_secs(10));
        assert_eq!(c.liveness.suspect_after_missed, 3);
        assert_eq!(c.liveness.max_down_per_second, 1);
        assert_eq!(c.api.max_body, Memory(1024 * 1024));
        assert_eq!(c.api.poll_timeout, Duration::from_secs(30));
        assert!(c.auth.tokens.is_empty());
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Text);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
    }

    #[test]
    fn an_empty_or_comment_only_document_is_the_default_config() {
        for text in ["", "\n", "# nothing here\n", "{}", "liveness:\n"] {
            assert_eq!(
                MasterConfig::from_yaml(text).unwrap(),
                MasterConfig::default(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_example_config_file_parses_to_exactly_the_defaults() {
        let text = include_str!("../../config/master.yaml");
        let cfg = MasterConfig::from_yaml(text).unwrap();
        assert_eq!(cfg, MasterConfig::default());
        // Every key is spelled out, not left to defaults.
        for key in [
            "listen:",
            "advertise:",
            "data_dir:",
            "insecure:",
            "backend:",
            "endpoints:",
            "prefix:",
            "lease_ttl:",
            "username:",
            "password_file:",
            "ca_file:",
            "cert_file:",
            "key_file:",
            "default_policy:",
            "pass_interval:",
            "heartbeat_interval:",
            "node_timeout:",
            "suspect_after_missed:",
            "max_down_per_second:",
            "max_body:",
            "poll_timeout:",
            "max_requests:",
            "max_agent_requests:",
            "max_pending_tasks:",
            "tokens:",
            "level:",
            "format:",
        ] {
            assert!(
                text.lines().any(|l| l.trim_start().starts_with(key)),
                "config/master.yaml lacks {key}"
            );
        }
    }

    #[test]
    fn a_full_file_sets_every_key() {
        let text = r#"
listen: 0.0.0.0:8080
advertise: master-1.example:8080
data_dir: /srv/drover
insecure: true
store:
  backend: etcd
  compact_after_deletes: 500
  etcd:
    endpoints: [https://etcd-1:2379, https://etcd-2:2379]
    prefix: /prod/drover/
    lease_ttl: 15s
    username: drover
    password_file: /etc/drover/etcd.pw
    ca_file: /etc/drover/ca.pem
    cert_file: /etc/drover/client.pem
    key_file: /etc/drover/client.key
scheduler: { default_policy: elastic-sharding, pass_interval: 250ms, kill_grace: 30s, max_pending_tasks: 5000 }
liveness: { heartbeat_interval: 2s, node_timeout: 1m, suspect_after_missed: 5, max_down_per_second: 20 }
api: { max_body: 4Mi, poll_timeout: 1m 30s, max_requests: 64, max_agent_requests: 2048 }
auth:
  tokens:
    - { name: ci, role: submitter, token: "aaaaaaaaaaaaaaaa-ci" }
    - { name: ops, role: admin, token_file: /etc/drover/ops.token }
    - { name: dash, role: reader, token: "cccccccccccccccc-dash" }
tls: { cert_file: /etc/drover/tls/master.pem, key_file: /etc/drover/tls/master.key, client_ca_file: /etc/drover/tls/ca.pem }
log: { level: "info,drover_master::store=debug", format: json }
"#;
        let c = MasterConfig::from_yaml(text).unwrap();
        let expected = MasterConfig {
            listen: "0.0.0.0:8080".parse().unwrap(),
            advertise: Some("master-1.example:8080".to_string()),
            data_dir: PathBuf::from("/srv/drover"),
            insecure: true,
            store: StoreConfig {
                backend: StoreBackend::Etcd,
                compact_after_deletes: 500,
                etcd: EtcdConfig {
                    endpoints: vec![
                        "https://etcd-1:2379".to_string(),
                        "https://etcd-2:2379".to_string(),
                    ],
                    prefix: "/prod/drover/".to_string(),
                    lease_ttl: Duration::from_secs(15),
                    username: Some("drover".to_string()),
                    password_file: Some(PathBuf::from("/etc/drover/etcd.pw")),
                    ca_file: Some(PathBuf::from("/etc/drover/ca.pem")),
                    cert_file: Some(PathBuf::from("/etc/drover/client.pem")),
                    key_file: Some(PathBuf::from("/etc/drover/client.key")),
                },
            },
            scheduler: SchedulerConfig {
                default_policy: PolicyKind::ElasticSharding,
                pass_interval: Duration::from_millis(250),
                kill_grace: Duration::from_secs(30),
                max_pending_tasks: 5000,
            },
            liveness: LivenessConfig {
                heartbeat_interval: Duration::from_secs(2),
                node_timeout: Duration::from_secs(60),
                suspect_after_missed: 5,
                max_down_per_second: 20,
            },
            api: ApiConfig {
                max_body: Memory(4 << 20),
                poll_timeout: Duration::from_secs(90),
                max_requests: 64,
                max_agent_requests: 2048,
            },
            auth: AuthConfig {
                tokens: vec![
                    inline("ci", Role::Submitter, TOKEN_A),
                    from_file("ops", Role::Admin, Path::new("/etc/drover/ops.token")),
                    inline("dash", Role::Reader, "cccccccccccccccc-dash"),
                ],
            },
            tls: Some(TlsConfig {
                cert_file: "/etc/drover/tls/master.pem".into(),
                key_file: "/etc/drover/tls/master.key".into(),
                client_ca_file: Some("/etc/drover/tls/ca.pem".into()),
                agent_ca_file: None,
            }),
            log: LogConfig {
                level: "info,drover_master::store=debug".to_string(),
                format: LogFormat::Json,
            },
        };
        assert_eq!(c, expected);
        assert!(c.validate().is_ok(), "{:?}", c.validate());
    }

    #[test]
    fn an_unknown_top_level_key_is_rejected_with_its_name_and_the_expected_keys() {
        let (path, message, shown) = parse_err("listen: 127.0.0.1:7070\nlisen: 0.0.0.0:1\n");
        assert_eq!(path, "lisen");
        assert!(message.contains("unknown field"), "{message}");
        assert!(
            message.contains("`listen`") && message.contains("`liveness`"),
            "{message}"
        );
        assert!(shown.starts_with("lisen: unknown field"), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");
    }

    #[test]
    fn an_unknown_nested_key_is_rejected_with_its_full_path() {
        let (path, message, shown) =
            parse_err("liveness:\n  heartbeat_interval: 1s\n  node_timout: 5s\n");
        assert_eq!(path, "liveness.node_timout");
        assert!(message.contains("unknown field"), "{message}");
        assert!(message.contains("node_timeout"), "{message}");
        assert!(
            shown.starts_with("liveness.node_timout: unknown field"),
            "{shown}"
        );
        assert!(shown.contains("line 3"), "{shown}");

        let (path, ..) = parse_err("store:\n  etcd:\n    prefx: /x/\n");
        assert_eq!(path, "store.etcd.prefx");
        let (path, ..) = parse_err(
            "auth:\n  tokens:\n    - { name: a, role: admin, token: x }\n    - { name: b, role: admin, tokn: y }\n",
        );
        assert_eq!(path, "auth.tokens[1].tokn");
    }

    #[test]
    fn a_bad_duration_is_rejected_with_its_path_and_position() {
        let (path, message, shown) = parse_err("liveness:\n  node_timeout: 10 seconds please\n");
        assert_eq!(path, "liveness.node_timeout");
        assert!(
            message.contains("\"10 seconds please\" is not a duration"),
            "{message}"
        );
        assert!(shown.starts_with("liveness.node_timeout: "), "{shown}");
        assert!(shown.contains("line 2"), "{shown}");

        let (path, message, _) = parse_err("api:\n  poll_timeout: 30\n");
        assert_eq!(path, "api.poll_timeout");
        assert!(message.contains("no unit"), "{message}");

        let (path, ..) = parse_err("store: { etcd: { lease_ttl: -1s } }");
        assert_eq!(path, "store.etcd.lease_ttl");
    }

    #[test]
    fn a_bad_size_is_rejected_with_its_path() {
        let (path, message, shown) = parse_err("api: { max_body: 1Zb }");
        assert_eq!(path, "api.max_body");
        assert!(message.contains("\"1Zb\" is not a size"), "{message}");
        assert!(shown.starts_with("api.max_body: "), "{shown}");
        // Bare numbers are bytes.
        let c = MasterConfig::from_yaml("api: { max_body: 2048 }").unwrap();
        assert_eq!(c.api.max_body, Memory(2048));
    }

    #[test]
    fn bad_addresses_policies_roles_and_enums_are_rejected_with_their_paths() {
        for (yaml, at, needle) in [
            (
                "listen: localhost:7070",
                "listen",
                "is not a socket address",
            ),
            ("listen: 127.0.0.1", "listen", "is not a socket address"),
            (
                "scheduler: { default_policy: fifo }",
                "scheduler.default_policy",
                "least-loaded",
            ),
            ("store: { backend: zookeeper }", "store.backend", "etcd"),
            ("log: { format: xml }", "log.format", "json"),
            (
                "auth: { tokens: [ { name: a, role: root, token: x } ] }",
                "auth.tokens[0].role",
                "submitter",
            ),
            (
                "liveness: { suspect_after_missed: -1 }",
                "liveness.suspect_after_missed",
                "",
            ),
            ("liveness: 3", "liveness", ""),
        ] {
            let (path, message, _) = parse_err(yaml);
            assert_eq!(path, at, "{yaml}");
            assert!(message.contains(needle), "{yaml}: {message}");
        }
    }

    #[test]
    fn yaml_syntax_errors_and_duplicate_keys_are_reported_with_a_position() {
        let (path, message, _) = parse_err("listen: [127.0.0.1:7070\n");
        assert_eq!(path, "");
        assert!(message.contains("line"), "{message}");
        let (_, message, _) = parse_err("insecure: true\ninsecure: false\n");
        assert!(message.contains("duplicate"), "{message}");
        let (path, message, _) = parse_err("just a string");
        assert_eq!(path, "");
        assert!(message.contains("invalid type"), "{message}");
    }

    #[test]
    fn load_names_the_file_in_read_and_parse_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        let err = MasterConfig::load(&missing).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.yaml"), "{err}");

        let bad = dir.path().join("master.yaml");
        std::fs::write(&bad, "liveness:\n  node_timout: 5s\n").unwrap();
        let err = MasterConfig::load(&bad).unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!(
                "{}: liveness.node_timout: unknown field",
                bad.display()
            )),
            "{shown}"
        );

        std::fs::write(&bad, "scheduler: { default_policy: priority }\n").unwrap();
        let cfg = MasterConfig::load(&bad).unwrap();
        assert_eq!(cfg.scheduler.default_policy, PolicyKind::Priority);
    }

    #[test]
    fn listening_beyond_loopback_without_tokens_is_refused_with_the_way_out() {
        for addr in [
            "0.0.0.0:7070",
            "10.1.2.3:7070",
            "[::]:7070",
            "[2001:db8::1]:7070",
        ] {
            let cfg = MasterConfig {
                listen: addr.parse().unwrap(),
                ..MasterConfig::default()
            };
            let err = cfg.validate().unwrap_err();
            let p = problem_at(err.problems(), "listen");
            assert!(p.message.contains("auth.tokens"), "{p}");
            assert!(p.message.contains("--insecure"), "{p}");
            assert!(err.to_string().contains("listen: "), "{err}");
        }
    }

    #[test]
    fn listening_beyond_loopback_is_allowed_with_insecure_or_with_a_token() {
        let mut cfg = MasterConfig::from_yaml("listen: 0.0.0.0:7070\ninsecure: true\n").unwrap();
        assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());

        cfg.insecure = false;
        assert!(cfg.validate().is_err());
        cfg.apply(&Overrides {
            insecure: true,
            ..Overrides::default()
        });
        assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());

        cfg.insecure = false;
        cfg.auth.tokens.push(inline("ci", Role::Submitter, TOKEN_A));
        // Tokens alone would cross the network in clear.
        let err = cfg.validate().unwrap_err();
        let p = problem_at(err.problems(), "listen");
        assert!(
            p.message.contains("tls.cert_file") && p.message.contains("--insecure"),
            "{p}"
        );
        cfg.tls = Some(TlsConfig {
            cert_file: "/etc/drover/tls/master.pem".into(),
            key_file: "/etc/drover/tls/master.key".into(),
            client_ca_file: None,
            agent_ca_file: None,
        });
        assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());

        cfg.auth.tokens = vec![from_file(
            "ops",
            Role::Admin,
            Path::new("/etc/drover/ops.token"),
        )];
        assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
    }

    #[test]
    fn loopback_addresses_are_always_fine_without_tokens() {
        let v4_mapped = SocketAddr::from((Ipv6Addr::LOCALHOST.to_canonical(), 1));
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:7070".parse().unwrap();
        for listen in [
            "127.0.0.1:7070".parse().unwrap(),
            "127.0.0.2:9999".parse().unwrap(),
            "[::1]:7070".parse().unwrap(),
            mapped,
            v4_mapped,
        ] {
            let cfg = MasterConfig {
                listen,
                ..MasterConfig::default()
            };
            assert!(cfg.validate().is_ok(), "{listen}: {:?}", cfg.validate());
        }
    }

    #[test]
    fn overrides_win_over_the_file_and_absent_ones_change_nothing() {
        let file = "listen: 127.0.0.1:1111\ndata_dir: /from/file\ninsecure: true\n\
                    scheduler: { default_policy: round-robin }\nstore: { backend: embedded }\n";
        let mut cfg = MasterConfig::from_yaml(file).unwrap();
        let before = cfg.clone();
        cfg.apply(&Overrides::default());
        assert_eq!(cfg, before, "empty overrides changed the config");

        cfg.apply(&Overrides {
            listen: Some("127.0.0.1:2222".parse().unwrap()),
            data_dir: Some(PathBuf::from("/from/flag")),
            insecure: false,
            default_policy: Some(PolicyKind::Priority),
            store_backend: Some(StoreBackend::Etcd),
        });
        assert_eq!(cfg.listen, "127.0.0.1:2222".parse().unwrap());
        assert_eq!(cfg.data_dir, PathBuf::from("/from/flag"));
        assert!(cfg.insecure, "a flag left off must not undo insecure: true");
        assert_eq!(cfg.scheduler.default_policy, PolicyKind::Priority);
        assert_eq!(cfg.store.backend, StoreBackend::Etcd);
        assert_eq!(cfg.liveness, before.liveness);
    }

    #[test]
    fn store_backend_names_parse_for_flags() {
        for b in StoreBackend::ALL {
            assert_eq!(b.to_string().parse::<StoreBackend>(), Ok(b));
        }
        assert!("redb".parse::<StoreBackend>().is_err());
    }

    #[test]
    fn validate_reports_every_problem_at_once() {
        let cfg = MasterConfig::from_yaml(
            "liveness: { heartbeat_interval: 0s, suspect_after_missed: 0, max_down_per_second: 0 }\n\
             api: { max_body: 512, poll_timeout: 0s }\n\
             scheduler: { pass_interval: 0s }\n\
             log: { level: loud }\n\
             data_dir: ''\n",
        )
        .unwrap();
        let ps = problems(&cfg);
        for path in [
            "liveness.heartbeat_interval",
            "liveness.suspect_after_missed",
            "liveness.max_down_per_second",
            "api.max_body",
            "api.poll_timeout",
            "scheduler.pass_interval",
            "log.level",
            "data_dir",
        ] {
            problem_at(&ps, path);
        }
        let shown = cfg.validate().unwrap_err().to_string();
        assert!(shown.starts_with("invalid configuration:\n  - "), "{shown}");
        assert_eq!(shown.lines().count(), ps.len() + 1, "{shown}");
    }

    #[test]
    fn node_timeout_must_exceed_heartbeat_interval_times_suspect_after_missed() {
        let mut cfg = MasterConfig::default();
        cfg.liveness.node_timeout = Duration::from_secs(3);
        let ps = problems(&cfg);
        let p = problem_at(&ps, "liveness.node_timeout");
        assert!(p.message.contains("1s × 3 = 3s"), "{p}");

        cfg.liveness.node_timeout = Duration::from_millis(3001);
        assert!(problems(&cfg).is_empty());

        // No overflow panic on absurd values.
        cfg.liveness.heartbeat_interval = Duration::MAX;
        cfg.liveness.suspect_after_missed = u32::MAX;
        problem_at(&problems(&cfg), "liveness.node_timeout");
    }

    #[test]
    fn max_body_must_be_at_least_one_kibibyte() {
        let mut cfg = MasterConfig::default();
        cfg.api.max_body = Memory(1023);
        let ps = problems(&cfg);
        assert!(
            problem_at(&ps, "api.max_body").message.contains("1Ki"),
            "{ps:?}"
        );
        cfg.api.max_body = Memory(1024);
        assert!(problems(&cfg).is_empty());
    }

    #[test]
    fn token_entries_need_unique_names_unique_long_values_and_exactly_one_source() {
        let mut cfg = MasterConfig::default();
        cfg.auth.tokens = vec![
            inline("ci", Role::Submitter, TOKEN_A),
            inline("ci", Role::Reader, TOKEN_B),
            inline("short", Role::Reader, "tooshort"),
            inline("copy", Role::Admin, TOKEN_A),
            TokenEntry {
                token_file: Some(PathBuf::from("/x")),
                ..inline("both", Role::Admin, "cccccccccccccccccccc")
            },
            TokenEntry {
                token: None,
                ..inline("neither", Role::Admin, "")
            },
            inline("", Role::Reader, "dddddddddddddddddddd"),
            inline("spaced", Role::Reader, "eeeeeeee eeeeeeeeeee"),
        ];
        let ps = problems(&cfg);
        assert!(problem_at(&ps, "auth.tokens[1].name")
            .message
            .contains("auth.tokens[0]"));
        assert!(problem_at(&ps, "auth.tokens[2].token")
            .message
            .contains("at least 16"));
        assert!(problem_at(&ps, "auth.tokens[3].token")
            .message
            .contains("auth.tokens[0]"));
        assert!(problem_at(&ps, "auth.tokens[4]")
            .message
            .contains("exactly one"));
        assert!(problem_at(&ps, "auth.tokens[5]")
            .message
            .contains("exactly one"));
        problem_at(&ps, "auth.tokens[6].name");
        problem_at(&ps, "auth.tokens[7].token");
        assert_eq!(ps.len(), 7, "{ps:#?}");
        let shown = cfg.validate().unwrap_err().to_string();
        for secret in [TOKEN_A, TOKEN_B, "tooshort"] {
            assert!(!shown.contains(secret), "error shows a token: {shown}");
        }
    }

    #[test]
    fn etcd_settings_are_checked_only_when_etcd_is_the_backend() {
        let mut cfg = MasterConfig::default();
        cfg.store.etcd = EtcdConfig {
            endpoints: vec![
                "127.0.0.1:2379".to_string(),
                "https://etcd:2379".to_string(),
            ],
            prefix: "/drover".to_string(),
            lease_ttl: Duration::from_millis(1500),
            username: None,
            password_file: Some(PathBuf::from("/pw")),
            ca_file: None,
            cert_file: Some(PathBuf::from("/cert")),
            key_file: None,
        };
        assert!(problems(&cfg).is_empty());
        cfg.store.backend = StoreBackend::Etcd;
        let ps = problems(&cfg);
        problem_at(&ps, "store.etcd.endpoints[0]");
        problem_at(&ps, "store.etcd.prefix");
        problem_at(&ps, "store.etcd.lease_ttl");
        problem_at(&ps, "store.etcd.password_file");
        problem_at(&ps, "store.etcd");
        assert_eq!(ps.len(), 5, "{ps:#?}");

        cfg.store.etcd.endpoints.clear();
        problem_at(&problems(&cfg), "store.etcd.endpoints");
    }

    #[test]
    fn advertise_must_be_host_and_port() {
        let mut cfg = MasterConfig::default();
        for good in ["master-1.example:7070", "10.0.0.5:7070", "[::1]:7070"] {
            cfg.advertise = Some(good.to_string());
            assert!(problems(&cfg).is_empty(), "{good}");
        }
        for bad in ["master-1", "http://master-1:7070", ":7070", "m:99999", ""] {
            cfg.advertise = Some(bad.to_string());
            problem_at(&problems(&cfg), "advertise");
        }
    }

    #[test]
    fn log_level_accepts_levels_and_target_directives_only() {
        let mut cfg = MasterConfig::default();
        for good in ["info", "DEBUG", "off", "warn,drover_master::store=trace"] {
            cfg.log.level = good.to_string();
            assert!(problems(&cfg).is_empty(), "{good}");
        }
        for bad in ["", "verbose", "info,", "=debug", "store=loud"] {
            cfg.log.level = bad.to_string();
            problem_at(&problems(&cfg), "log.level");
        }
    }

    #[test]
    fn resolve_tokens_reads_token_files_and_trims_the_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ops.token");
        std::fs::write(&file, format!("{TOKEN_B}\n")).unwrap();
        let crlf = dir.path().join("dash.token");
        std::fs::write(&crlf, "cccccccccccccccc-dash\r\n").unwrap();
        let mut cfg = MasterConfig::default();
        cfg.auth.tokens = vec![
            inline("ci", Role::Submitter, TOKEN_A),
            from_file("ops", Role::Admin, &file),
            from_file("dash", Role::Reader, &crlf),
        ];
        assert!(cfg.validate().is_ok());
        assert_eq!(
            cfg.resolve_tokens().unwrap(),
            vec![
                ("ci".to_string(), Role::Submitter, TOKEN_A.to_string()),
                ("ops".to_string(), Role::Admin, TOKEN_B.to_string()),
                (
                    "dash".to_string(),
                    Role::Reader,
                    "cccccccccccccccc-dash".to_string()
                ),
            ]
        );
        assert_eq!(MasterConfig::default().resolve_tokens().unwrap(), vec![]);
    }

    #[test]
    fn resolve_tokens_names_a_missing_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ops.token");
        let mut cfg = MasterConfig::default();
        cfg.auth.tokens = vec![from_file("ops", Role::Admin, &missing)];
        let err = cfg.resolve_tokens().unwrap_err();
        assert!(matches!(err, ConfigError::TokenFile { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains(&missing.display().to_string()), "{shown}");
        assert!(shown.contains("auth.tokens[0] (ops)"), "{shown}");
    }

    #[test]
    fn resolve_tokens_checks_what_token_files_contain() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.token");
        std::fs::write(&short, "abc\n").unwrap();
        let copy = dir.path().join("copy.token");
        std::fs::write(&copy, format!("  {TOKEN_A}\n\n")).unwrap();
        let mut cfg = MasterConfig::default();
        cfg.auth.tokens = vec![
            inline("ci", Role::Submitter, TOKEN_A),
            from_file("short", Role::Admin, &short),
            from_file("copy", Role::Reader, &copy),
        ];
        let err = cfg.resolve_tokens().unwrap_err();
        let ps = err.problems();
        let p = problem_at(ps, "auth.tokens[1].token_file");
        assert!(
            p.message.contains("short.token") && p.message.contains("at least 16"),
            "{p}"
        );
        let p = problem_at(ps, "auth.tokens[2].token_file");
        assert!(p.message.contains("auth.tokens[0]"), "{p}");
        assert!(!err.to_string().contains(TOKEN_A), "{err}");
    }

    #[test]
    fn debug_output_of_the_config_never_shows_a_token() {
        let mut cfg = MasterConfig::default();
        cfg.auth.tokens = vec![inline("ci", Role::Submitter, TOKEN_A)];
        let shown = format!("{cfg:?}");
        assert!(
            shown.contains("\"ci\"") && shown.contains("<redacted>"),
            "{shown}"
        );
        assert!(!shown.contains(TOKEN_A), "{shown}");
    }
}
