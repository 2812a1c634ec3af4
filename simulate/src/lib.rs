//! `drover-simulate`: replays a workload through the real scheduler on a
//! virtual clock, once per placement policy, and compares the runs.
//!
//! - [`input`] reads the three inputs: a workload (JSON Lines), a cluster
//!   (YAML node classes) and optional faults (YAML).
//! - [`alibaba`] and [`generate`] make workloads from a public trace or from
//!   a seed.
//! - [`engine`] runs one workload under one policy and leaves a
//!   [`record::RunRecord`].
//! - [`report`] turns records into statistics, a table or JSON; [`plot`]
//!   into an SVG.
//!
//! Everything random is drawn from [`rng`], seeded from the run's seed and
//! stable names, never from the process: the same input and seed give the
//! same report, byte for byte.

use std::fmt;
use std::path::{Path, PathBuf};

pub mod alibaba;
pub mod engine;
pub mod generate;
pub mod input;
pub mod plot;
pub mod record;
pub mod report;
pub mod rng;

/// What went wrong, with where: the file, the line and the field.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input is wrong. `file` is unset when text was parsed without a
    /// path (the `load_*` functions set it); `line` is 1-based and unset
    /// where the problem has no single line (a name used twice in a YAML
    /// list). Every problem found at that place is listed.
    #[error("{}", invalid_display(file.as_deref(), *line, problems))]
    Invalid {
        file: Option<PathBuf>,
        line: Option<usize>,
        problems: Vec<Problem>,
    },
    /// The engine failed: the master refused something or a run could not
    /// be set up.
    #[error("{0}")]
    Engine(String),
    /// The plot could not be drawn.
    #[error("plot: {0}")]
    Plot(String),
    /// Asked for something this crate does not do, such as a PNG plot.
    #[error("{0}")]
    Unsupported(String),
}

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field's path: `resources.cpu`, `duration.pareto.alpha`,
    /// `[2].memory`, `at[0].node`; empty when the problem is the whole line
    /// or document (it is not JSON at all, say).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// `file:line: field: message; field: message`, compiler style, so that
/// editors and terminals can jump to it.
fn invalid_display(file: Option<&Path>, line: Option<usize>, problems: &[Problem]) -> String {
    let mut out = match (file, line) {
        (Some(f), Some(l)) => format!("{}:{l}: ", f.display()),
        (Some(f), None) => format!("{}: ", f.display()),
        (None, Some(l)) => format!("line {l}: "),
        (None, None) => String::new(),
    };
    let texts: Vec<String> = problems.iter().map(Problem::to_string).collect();
    out.push_str(&texts.join("; "));
    out
}

impl SimError {
    /// One problem at `line` (1-based) of a file not yet named.
    pub fn invalid(
        line: Option<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> SimError {
        SimError::Invalid {
            file: None,
            line,
            problems: vec![Problem {
                field: field.into(),
                message: message.into(),
            }],
        }
    }

    /// Names the file an [`SimError::Invalid`] came from; other errors are
    /// returned as they are.
    pub fn in_file(self, path: &Path) -> SimError {
        match self {
            SimError::Invalid {
                file: None,
                line,
                problems,
            } => SimError::Invalid {
                file: Some(path.to_path_buf()),
                line,
                problems,
            },
            other => other,
        }
    }

    /// The 1-based line of an input error.
    pub fn line(&self) -> Option<usize> {
        match self {
            SimError::Invalid { line, .. } => *line,
            _ => None,
        }
    }

    /// The problems of an input error; empty for the others.
    pub fn problems(&self) -> &[Problem] {
        match self {
            SimError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// Reads a whole file as text.
pub(crate) fn read_text(path: &Path) -> Result<String, SimError> {
    std::fs::read_to_string(path).map_err(|source| SimError::Io {
        path: path.to_path_buf(),
        source,
    })
}
