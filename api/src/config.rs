//! Plumbing shared by the master's and the agent's configuration files
//! (DESIGN §10): the error type, the YAML parse that names a bad key by its
//! full path and position, and serde helpers for durations and addresses.
//! What each config holds and how it is validated stays with its crate.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeOwned};
use serde::{Deserialize, Deserializer};

/// One thing wrong with a config, at a key path such as `liveness.node_timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Everything that can be wrong with a config. The `Display` text is meant
/// for the person running the master or agent.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, or YAML that does not fit: unknown key, wrong type, bad
    /// duration or size. `path` is the key (`liveness.node_timeout`), empty for
    /// the document itself; `file` is set by [`load_yaml`].
    #[error("{}{}{message}", file_prefix(file), key_prefix(path))]
    Parse {
        file: Option<PathBuf>,
        path: String,
        message: String,
    },
    /// Values that parse but cannot work together; all of them at once.
    #[error("invalid configuration:{}", list(problems))]
    Invalid { problems: Vec<Problem> },
    #[error("{}cannot read token_file {}: {source}", key_prefix(entry), path.display())]
    TokenFile {
        /// Which token entry, such as `auth.tokens[1] (ops)`; empty when the
        /// config has only one token.
        entry: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ConfigError {
    /// The problems of an `Invalid` error; empty for the others.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

fn file_prefix(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|f| format!("{}: ", f.display()))
        .unwrap_or_default()
}

fn key_prefix(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    }
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

/// Parses a config document. An empty document is an empty mapping, which a
/// `#[serde(default)]` config turns into its defaults.
pub fn parse_yaml<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    // Two steps: YAML syntax (and duplicate keys) first, whose errors
    // carry a line and column; then the typed structure, through
    // serde_path_to_error for the full key path.
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
        file: None,
        path: String::new(),
        message: e.to_string(),
    })?;
    // An empty document is YAML null: the default config.
    let value = match value {
        serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
        v => v,
    };
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let path = e.path().to_string();
        let mut message = e.inner().to_string();
        // The typed pass over the Value knows no positions; a direct pass
        // over the text reaches the same error and says where it is.
        if let Err(direct) = serde_yaml::from_str::<T>(text) {
            if let Some(loc) = direct.location() {
                message.push_str(&format!(" (line {}, column {})", loc.line(), loc.column()));
            }
        }
        ConfigError::Parse {
            file: None,
            path: if path == "." { String::new() } else { path },
            message,
        }
    })
}

/// Reads and parses a config file with [`parse_yaml`]; errors name the file.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_yaml(&text).map_err(|e| match e {
        ConfigError::Parse {
            file: None,
            path: key,
            message,
        } => ConfigError::Parse {
            file: Some(path.to_path_buf()),
            path: key,
            message,
        },
        other => other,
    })
}

/// `host:port` or `[v6]:port`.
pub fn check_host_port(s: &str) -> Result<(), &'static str> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("needs a port: use host:port");
    };
    if port.parse::<u16>().is_err() {
        return Err("has no valid port: use host:port");
    }
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if host_ok {
        Ok(())
    } else {
        Err("is not host:port")
    }
}

/// `deserialize_with` for a [`Duration`] written with a unit: `500ms`, `5s`, `1m`.
/// Bare numbers are refused, since their unit would be a guess.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"500ms\", \"5s\" or \"1m\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v.trim()).map_err(|why| {
                E::custom(format_args!(
                    "{v:?} is not a duration ({why}): use a number and a unit, \
                     such as \"500ms\", \"5s\" or \"1m\""
                ))
            })
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(format_args!(
                "{v} has no unit: write a duration such as \"{v}s\" or \"{v}ms\""
            )))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(format_args!(
                "{v} is not a duration: use a number and a unit, such as \"5s\""
            )))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(E::custom(format_args!(
                "{v} has no unit: write a duration such as \"{v}s\""
            )))
        }
    }
    d.deserialize_any(V)
}

/// `deserialize_with` for an optional [`duration`]; `null` is `None`.
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    struct Wrapped(Duration);
    impl<'de> Deserialize<'de> for Wrapped {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            duration(d).map(Wrapped)
        }
    }
    Ok(Option::<Wrapped>::deserialize(d)?.map(|w| w.0))
}

/// Body of a `deserialize_with` for a [`SocketAddr`]: the error's examples
/// use `port`, the crate's default port.
pub fn socket_addr<'de, D: Deserializer<'de>>(d: D, port: u16) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(|_| {
        de::Error::custom(format_args!(
            "{s:?} is not a socket address: use ip:port, such as \"127.0.0.1:{port}\", \
             \"0.0.0.0:{port}\" or \"[::1]:{port}\""
        ))
    })
}
