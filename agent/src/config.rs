//! The agent's configuration (DESIGN §10): a YAML file in which every key has
//! a default and unknown keys are errors that name the key's full path.
//!
//! Order of use: [`AgentConfig::load`] (or [`AgentConfig::from_yaml`]) →
//! flags on top (the binary's business) → [`AgentConfig::validate`] →
//! [`AgentConfig::resolve_token`]. `config/agent.yaml` at the repository root
//! is a commented example holding every key at its default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_api::config::{self, check_host_port, duration, opt_duration};
pub use drover_api::config::{ConfigError, Problem};
use drover_api::protocol::Reserved;
use drover_api::spec::{MAX_LABELS, MAX_LABEL_BYTES};
use drover_api::{Cpu, Memory, NodeId};
use serde::{Deserialize, Deserializer};

/// Smallest accepted `logs.max_bytes`.
pub const MIN_LOG_MAX_BYTES: Memory = Memory(4 << 10);
/// Most rotated files kept per stream (`logs.keep`).
pub const MAX_LOG_KEEP: u32 = 100;

/// The whole agent config. `Default` is what an empty file gives.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// `host:port` of every master; the agent fails over between them.
    pub masters: Vec<String>,
    /// Bearer token for the master (exclusive with `token_file`).
    pub token: Option<String>,
    /// File whose content (surrounding whitespace trimmed) is the token.
    pub token_file: Option<PathBuf>,
    /// The CA that signed the masters' certificates: with it, the agent
    /// speaks TLS to them (and to them only: nothing else is trusted).
    pub ca_file: Option<PathBuf>,
    /// The log server serves TLS with this certificate, and the agent
    /// presents it to masters that want client certificates.
    pub tls: Option<AgentTls>,
    /// This node's id. `None`: the one kept in `data_dir/node-id`, or one the
    /// master picks on first registration.
    pub node_id: Option<NodeId>,
    /// Local state: node id, alloc directories with their logs.
    pub data_dir: PathBuf,
    /// Address of the agent's log server (which also serves `/metrics`).
    #[serde(deserialize_with = "socket_addr")]
    pub log_listen: SocketAddr,
    /// `host:port` the master uses to reach the log server, when it is not
    /// `log_listen` (e.g. listening on `0.0.0.0`).
    pub advertise_log_addr: Option<String>,
    /// Labels that job constraints match on.
    pub labels: BTreeMap<String, String>,
    /// Capacity kept back for the system and the agent itself.
    pub reserved: ReservedConfig,
    /// GPUs to report when NVML is not available (dev machines, tests).
    pub fake_gpus: Vec<FakeGpu>,
    /// The user tasks run as.
    pub user: String,
    /// Allow `user: root`.
    pub allow_root: bool,
    /// Time between SIGTERM and SIGKILL when a task is stopped.
    #[serde(deserialize_with = "duration")]
    pub kill_grace: Duration,
    /// Kill every task after this long without reaching any master.
    /// `None`: never; tasks keep running.
    #[serde(deserialize_with = "opt_duration")]
    pub stop_after_disconnect: Option<Duration>,
    /// Task log rotation and retention.
    pub logs: LogsConfig,
}

/// The agent's own certificate and key (PEM).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            masters: vec!["127.0.0.1:7070".to_string()],
            token: None,
            token_file: None,
            ca_file: None,
            tls: None,
            node_id: None,
            data_dir: PathBuf::from("/var/lib/drover/agent"),
            log_listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            advertise_log_addr: None,
            labels: BTreeMap::new(),
            reserved: ReservedConfig::default(),
            fake_gpus: Vec::new(),
            user: "nobody".to_string(),
            allow_root: false,
            kill_grace: Duration::from_secs(10),
            stop_after_disconnect: None,
            logs: LogsConfig::default(),
        }
    }
}

// Hand-written so that printing the config never prints the token.
impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("masters", &self.masters)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("tls", &self.tls)
            .field("node_id", &self.node_id)
            .field("data_dir", &self.data_dir)
            .field("log_listen", &self.log_listen)
            .field("advertise_log_addr", &self.advertise_log_addr)
            .field("labels", &self.labels)
            .field("reserved", &self.reserved)
            .field("fake_gpus", &self.fake_gpus)
            .field("user", &self.user)
            .field("allow_root", &self.allow_root)
            .field("kill_grace", &self.kill_grace)
            .field("stop_after_disconnect", &self.stop_after_disconnect)
            .field("logs", &self.logs)
            .finish()
    }
}

/// `reserved: {cpu, memory}`: cpu as `500m` or cores, memory as `512Mi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReservedConfig {
    pub cpu: Cpu,
    pub memory: Memory,
}

impl From<ReservedConfig> for Reserved {
    fn from(r: ReservedConfig) -> Reserved {
        Reserved {
            cpu_millis: r.cpu.millis(),
            memory_bytes: r.memory.bytes(),
        }
    }
}

/// One pretend GPU. Its index is its position in `fake_gpus`, its uuid
/// `FAKE-<index>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FakeGpu {
    pub model: String,
    pub memory: Memory,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    /// A task's `stdout.log` / `stderr.log` is rotated once it reaches this size.
    pub max_bytes: Memory,
    /// Rotated files kept per stream (`stdout.log.1` … `stdout.log.<keep>`).
    pub keep: u32,
    /// How long the directory of a finished alloc (its logs) is kept.
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// At most this many finished allocs are kept, the oldest removed
    /// first: as directories (those with output), and as many again as
    /// lines of `finished.jsonl` (those without).
    pub max_finished: usize,
    /// At most this many bytes in the directories of finished allocs, the
    /// oldest removed first.
    pub max_finished_bytes: Memory,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_bytes: Memory(10 << 20),
            keep: 3,
            retention: Duration::from_secs(24 * 3600),
            max_finished: crate::executor::DEFAULT_MAX_FINISHED,
            max_finished_bytes: Memory(10 << 30),
        }
    }
}

impl AgentConfig {
    /// Parses a config document. An empty document is the default config.
    /// Does not [`validate`](Self::validate): flags may still change it.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        config::parse_yaml(text)
    }

    /// Reads and parses a config file; errors name the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        config::load_yaml(path)
    }

    /// Checks that the values can work; reports every problem found. The
    /// token file is not read here (see [`resolve_token`](Self::resolve_token)).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        if self.masters.is_empty() {
            p.push(Problem::new("masters", "must list at least one master"));
        }
        for (i, m) in self.masters.iter().enumerate() {
            if let Err(why) = check_host_port(m) {
                p.push(Problem::new(
                    format!("masters[{i}]"),
                    format!("{m:?} {why}"),
                ));
            }
        }
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => p.push(Problem::new(
                "token",
                "set at most one of token and token_file",
            )),
            (Some(t), None) => check_token_value(t, "token", "the token", &mut p),
            (None, Some(f)) if f.as_os_str().is_empty() => {
                p.push(Problem::new("token_file", "must not be empty"))
            }
            _ => {}
        }
        if self.data_dir.as_os_str().is_empty() {
            p.push(Problem::new("data_dir", "must not be empty"));
        }
        match &self.advertise_log_addr {
            Some(adv) => {
                if let Err(why) = check_host_port(adv) {
                    p.push(Problem::new("advertise_log_addr", format!("{adv:?} {why}")));
                }
            }
            // Port 0 is fine: the agent advertises the port it was given.
            None if self.log_listen.ip().is_unspecified() => p.push(Problem::new(
                "advertise_log_addr",
                format!(
                    "must be set when log_listen is {}: the master needs an address \
                         it can reach the log server at",
                    self.log_listen
                ),
            )),
            None => {}
        }
        if self.labels.len() > MAX_LABELS {
            p.push(Problem::new(
                "labels",
                format!("at most {MAX_LABELS} labels, got {}", self.labels.len()),
            ));
        }
        for (k, v) in &self.labels {
            if k.trim().is_empty() {
                p.push(Problem::new(
                    format!("labels.{k}"),
                    "label names must not be empty",
                ));
            } else if k.len() > MAX_LABEL_BYTES || v.len() > MAX_LABEL_BYTES {
                p.push(Problem::new(
                    format!("labels.{k}"),
                    format!("label names and values must be at most {MAX_LABEL_BYTES} bytes"),
                ));
            }
        }
        for (i, g) in self.fake_gpus.iter().enumerate() {
            if g.model.trim().is_empty() {
                p.push(Problem::new(
                    format!("fake_gpus[{i}].model"),
                    "must not be empty",
                ));
            }
            if g.memory.bytes() == 0 {
                p.push(Problem::new(
                    format!("fake_gpus[{i}].memory"),
                    "must be greater than 0",
                ));
            }
        }
        let user = self.user.trim();
        if user.is_empty() {
            p.push(Problem::new("user", "must not be empty"));
        } else if (user == "root" || user == "0") && !self.allow_root {
            p.push(Problem::new(
                "user",
                "tasks would run as root: choose an unprivileged user, or set allow_root: true",
            ));
        } else if user.contains(|c: char| c.is_whitespace() || c == ':' || c == '/') {
            p.push(Problem::new(
                "user",
                format!("{user:?} is not a user name or uid"),
            ));
        }
        if self.stop_after_disconnect.is_some_and(|d| d.is_zero()) {
            p.push(Problem::new(
                "stop_after_disconnect",
                "must be greater than 0, or null to never stop tasks",
            ));
        }
        if self.logs.max_bytes < MIN_LOG_MAX_BYTES {
            p.push(Problem::new(
                "logs.max_bytes",
                format!(
                    "{} is too small: use at least {MIN_LOG_MAX_BYTES}",
                    self.logs.max_bytes
                ),
            ));
        }
        if self.logs.keep > MAX_LOG_KEEP {
            p.push(Problem::new(
                "logs.keep",
                format!("{} is too many: use at most {MAX_LOG_KEEP}", self.logs.keep),
            ));
        }
        if self.logs.retention.is_zero() {
            p.push(Problem::new("logs.retention", "must be greater than 0"));
        }
        if self.logs.max_finished == 0 {
            p.push(Problem::new("logs.max_finished", "must be greater than 0"));
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems: p })
        }
    }

    /// The bearer token for the master: `token`, or the content of
    /// `token_file` (surrounding whitespace, such as the trailing newline,
    /// trimmed), or `None`.
    pub fn resolve_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(file) = &self.token_file else {
            return Ok(self.token.clone());
        };
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::TokenFile {
            entry: String::new(),
            path: file.clone(),
            source,
        })?;
        let token = text.trim().to_string();
        let mut p = Vec::new();
        check_token_value(
            &token,
            "token_file",
            &format!("the token in {}", file.display()),
            &mut p,
        );
        if p.is_empty() {
            Ok(Some(token))
        } else {
            Err(ConfigError::Invalid { problems: p })
        }
    }

    /// `host:port` the master reaches the log server at.
    pub fn log_addr(&self) -> String {
        self.advertise_log_addr
            .clone()
            .unwrap_or_else(|| self.log_listen.to_string())
    }

    /// Where the node id is kept when `node_id` is not set.
    pub fn node_id_file(&self) -> PathBuf {
        self.data_dir.join("node-id")
    }

    /// `reserved` in protocol form.
    pub fn reserved(&self) -> Reserved {
        self.reserved.into()
    }
}

/// The token must fit an `Authorization: Bearer` header. Messages never quote it.
fn check_token_value(token: &str, path: &str, what: &str, p: &mut Vec<Problem>) {
    if token.is_empty() {
        p.push(Problem::new(path, format!("{what} is empty")));
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        p.push(Problem::new(
            path,
            format!(
                "{what} must be printable ASCII without spaces, to fit an Authorization header"
            ),
        ));
    }
}

fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    config::socket_addr(d, 7071)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(yaml: &str) -> (String, String) {
        match AgentConfig::from_yaml(yaml).unwrap_err() {
            ConfigError::Parse { path, message, .. } => (path, message),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    fn problems(cfg: &AgentConfig) -> Vec<Problem> {
        match cfg.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.problems().to_vec(),
        }
    }

    fn problem_at<'a>(ps: &'a [Problem], path: &str) -> &'a Problem {
        ps.iter()
            .find(|p| p.path == path)
            .unwrap_or_else(|| panic!("no problem at {path}: {ps:#?}"))
    }

    #[test]
    fn the_example_file_is_the_default_config() {
        let text = include_str!("../../config/agent.yaml");
        let cfg = AgentConfig::from_yaml(text).unwrap();
        assert_eq!(cfg, AgentConfig::default());
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn an_empty_document_is_the_default_config() {
        for text in ["", "{}", "# nothing\n"] {
            assert_eq!(
                AgentConfig::from_yaml(text).unwrap(),
                AgentConfig::default()
            );
        }
    }

    #[test]
    fn every_key_parses() {
        let cfg = AgentConfig::from_yaml(
            "masters: [m1.example:7070, '10.0.0.2:7070']\n\
             token_file: /etc/drover/agent.token\n\
             node_id: gpu-box-1\n\
             data_dir: /tmp/agent\n\
             log_listen: 0.0.0.0:7171\n\
             advertise_log_addr: gpu-box-1.example:7171\n\
             labels: { zone: a, rack: '12' }\n\
             reserved: { cpu: 500m, memory: 1Gi }\n\
             fake_gpus: [{ model: NVIDIA H100 80GB HBM3, memory: 80Gi }, { model: T4, memory: 16Gi }]\n\
             user: drover\n\
             kill_grace: 2s\n\
             stop_after_disconnect: 5m\n\
             logs: { max_bytes: 1Mi, keep: 5, retention: 2h }\n",
        )
        .unwrap();
        assert_eq!(cfg.masters, ["m1.example:7070", "10.0.0.2:7070"]);
        assert_eq!(cfg.node_id, Some(NodeId::new("gpu-box-1").unwrap()));
        assert_eq!(cfg.log_addr(), "gpu-box-1.example:7171");
        assert_eq!(cfg.labels["rack"], "12");
        assert_eq!(
            cfg.reserved(),
            Reserved {
                cpu_millis: 500,
                memory_bytes: 1 << 30
            }
        );
        assert_eq!(cfg.fake_gpus[0].model, "NVIDIA H100 80GB HBM3");
        assert_eq!(cfg.fake_gpus[1].memory, Memory(16 << 30));
        assert_eq!(cfg.kill_grace, Duration::from_secs(2));
        assert_eq!(cfg.stop_after_disconnect, Some(Duration::from_secs(300)));
        assert_eq!(cfg.logs.max_bytes, Memory(1 << 20));
        assert_eq!(cfg.logs.keep, 5);
        assert_eq!(cfg.logs.retention, Duration::from_secs(7200));
        assert!(cfg.validate().is_ok(), "{:?}", cfg.validate());
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_path() {
        let (path, msg) = parse_err("logs:\n  max_byte: 1Mi\n");
        assert_eq!(path, "logs.max_byte");
        assert!(msg.contains("unknown field `max_byte`"), "{msg}");
        assert!(msg.contains("line 2"), "{msg}");
        let (path, msg) = parse_err("fake_gpus: [{model: T4, memory: 1Gi, cores: 2}]\n");
        assert_eq!(path, "fake_gpus[0].cores");
        assert!(msg.contains("cores"), "{msg}");
        let (path, _) = parse_err("master: [a:1]\n");
        assert_eq!(path, "master");
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(parse_err("kill_grace: 10\n").0, "kill_grace");
        assert!(parse_err("kill_grace: 10\n").1.contains("no unit"));
        assert_eq!(
            parse_err("stop_after_disconnect: soon\n").0,
            "stop_after_disconnect"
        );
        assert_eq!(parse_err("logs: {max_bytes: 10Mb}\n").0, "logs.max_bytes");
        assert_eq!(parse_err("reserved: {cpu: lots}\n").0, "reserved.cpu");
        assert_eq!(parse_err("log_listen: localhost\n").0, "log_listen");
        assert_eq!(parse_err("node_id: 'a b'\n").0, "node_id");
        let cfg = AgentConfig::from_yaml("stop_after_disconnect: null\n").unwrap();
        assert_eq!(cfg.stop_after_disconnect, None);
    }

    #[test]
    fn validate_reports_every_problem_at_once() {
        let cfg = AgentConfig::from_yaml(
            "masters: [nohost, 'http://m:7070']\n\
             token: 'has space'\n\
             data_dir: ''\n\
             log_listen: 0.0.0.0:7071\n\
             fake_gpus: [{model: '', memory: 0}]\n\
             user: root\n\
             stop_after_disconnect: 0s\n\
             logs: {max_bytes: 1Ki, keep: 1000, retention: 0s}\n",
        )
        .unwrap();
        let ps = problems(&cfg);
        for path in [
            "masters[0]",
            "masters[1]",
            "token",
            "data_dir",
            "advertise_log_addr",
            "fake_gpus[0].model",
            "fake_gpus[0].memory",
            "user",
            "stop_after_disconnect",
            "logs.max_bytes",
            "logs.keep",
            "logs.retention",
        ] {
            problem_at(&ps, path);
        }
        assert_eq!(ps.len(), 12, "{ps:#?}");
        let shown = cfg.validate().unwrap_err().to_string();
        assert!(shown.starts_with("invalid configuration:\n  - "), "{shown}");
        assert!(!shown.contains("has space"), "{shown}");
    }

    #[test]
    fn root_needs_allow_root_and_masters_must_not_be_empty() {
        let mut cfg = AgentConfig {
            user: "root".to_string(),
            ..AgentConfig::default()
        };
        problem_at(&problems(&cfg), "user");
        cfg.allow_root = true;
        assert!(problems(&cfg).is_empty());
        cfg.masters.clear();
        problem_at(&problems(&cfg), "masters");
        cfg.masters = vec!["[::1]:7070".into()];
        cfg.token = Some("t".into());
        cfg.token_file = Some(PathBuf::from("/x"));
        problem_at(&problems(&cfg), "token");
    }

    #[test]
    fn resolve_token_reads_the_token_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.token");
        std::fs::write(&file, "secret-token-value\n").unwrap();
        let mut cfg = AgentConfig {
            token_file: Some(file.clone()),
            ..AgentConfig::default()
        };
        assert_eq!(
            cfg.resolve_token().unwrap().as_deref(),
            Some("secret-token-value")
        );
        std::fs::write(&file, "\n").unwrap();
        problem_at(cfg.resolve_token().unwrap_err().problems(), "token_file");
        cfg.token_file = Some(dir.path().join("missing"));
        assert!(matches!(
            cfg.resolve_token(),
            Err(ConfigError::TokenFile { .. })
        ));
        cfg.token_file = None;
        cfg.token = Some("inline".into());
        assert_eq!(cfg.resolve_token().unwrap().as_deref(), Some("inline"));
        assert!(!format!("{cfg:?}").contains("inline"));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.yaml");
        std::fs::write(&file, "logs: {kep: 1}\n").unwrap();
        let shown = AgentConfig::load(&file).unwrap_err().to_string();
        assert!(
            shown.starts_with(&format!("{}: logs.kep: ", file.display())),
            "{shown}"
        );
        assert!(matches!(
            AgentConfig::load(&dir.path().join("none.yaml")),
            Err(ConfigError::Read { .. })
        ));
    }
}
