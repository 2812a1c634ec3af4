//! Identifiers: jobs, tasks (`<job>/<index>`), allocations
//! (`<job>/<index>/<attempt>`) and nodes.
//!
//! Task indexes start at 0 and attempts at 1 (DESIGN §3). Ids order the way a
//! person reads them: `render/2` before `render/10`, so that sorted listings
//! and deterministic policies agree.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{0:?} is not a job name: use 1 to 63 of [a-z0-9-], starting and ending with a letter or digit")]
    JobName(String),
    #[error("{0:?} is not a task id: expected <job>/<index>")]
    TaskId(String),
    #[error(
        "{0:?} is not an allocation id: expected <job>/<index>/<attempt>, attempts start at 1"
    )]
    AllocId(String),
    #[error("{0:?} is not a node id: use 1 to 128 of [A-Za-z0-9._-]")]
    NodeId(String),
}

/// Longest job name; fits a DNS label, like Kubernetes object names.
pub const MAX_JOB_NAME_LEN: usize = 63;
/// Longest node id.
pub const MAX_NODE_ID_LEN: usize = 128;

fn is_job_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_JOB_NAME_LEN
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A job's id, which is its name. Shared, not copied: every task and alloc
/// id of a job holds it, and a master keeps millions of those.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(Arc<str>);

impl JobId {
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        if is_job_name(&name) {
            Ok(JobId(name.into()))
        } else {
            Err(IdError::JobName(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of this job's task number `index`.
    pub fn task(&self, index: u32) -> TaskId {
        TaskId {
            job: self.clone(),
            index,
        }
    }
}

/// One unit of work of a job: `<job>/<index>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId {
    pub job: JobId,
    pub index: u32,
}

impl TaskId {
    /// The id of this task's attempt number `attempt` (1-based).
    pub fn alloc(&self, attempt: u32) -> AllocId {
        AllocId {
            task: self.clone(),
            attempt,
        }
    }
}

/// One attempt to run a task on one node: `<job>/<index>/<attempt>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllocId {
    pub task: TaskId,
    pub attempt: u32,
}

/// A node's id: chosen by the agent on first start and kept in its data dir.
/// Shared like [`JobId`]: every alloc names its node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
        let id = id.into();
        let ok = !id.is_empty()
            && id.len() <= MAX_NODE_ID_LEN
            && id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'));
        if ok {
            Ok(NodeId(id.into()))
        } else {
            Err(IdError::NodeId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.job, self.index)
    }
}

impl fmt::Display for AllocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.task, self.attempt)
    }
}

/// Parses a decimal u32 without sign or leading zeros, so each id has one spelling.
fn canonical_u32(s: &str) -> Option<u32> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|c| c.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

impl FromStr for JobId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        JobId::new(s)
    }
}

impl FromStr for NodeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        NodeId::new(s)
    }
}

impl FromStr for TaskId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let err = || IdError::TaskId(s.to_string());
        let (job, index) = s.split_once('/').ok_or_else(err)?;
        Ok(TaskId {
            job: JobId::new(job).map_err(|_| err())?,
            index: canonical_u32(index).ok_or_else(err)?,
        })
    }
}

impl FromStr for AllocId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let err = || IdError::AllocId(s.to_string());
        let (task, attempt) = s.rsplit_once('/').ok_or_else(err)?;
        let attempt = canonical_u32(attempt).filter(|a| *a >= 1).ok_or_else(err)?;
        Ok(AllocId {
            task: task.parse().map_err(|_| err())?,
            attempt,
        })
    }
}

macro_rules! serde_as_string {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}
serde_as_string!(JobId, TaskId, AllocId, NodeId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_the_same() {
        let alloc: AllocId = "render/3/1".parse().unwrap();
        assert_eq!(alloc.task.job.as_str(), "render");
        assert_eq!(alloc.task.index, 3);
        assert_eq!(alloc.attempt, 1);
        assert_eq!(alloc.to_string(), "render/3/1");
        assert_eq!(alloc.task.to_string(), "render/3");
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "", "Render/1", "-x/1", "x-/1", "x/01", "x/-1", "x/1/0", "x/y/1", "x//1",
        ] {
            assert!(bad.parse::<AllocId>().is_err(), "{bad} parsed as alloc");
        }
        for bad in ["x", "x/", "x/1/2", "x/+1", &format!("{}/1", "a".repeat(64))] {
            assert!(bad.parse::<TaskId>().is_err(), "{bad} parsed as task");
        }
        assert!(NodeId::new("node 1").is_err());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("gpu-box.rack_2").is_ok());
    }

    #[test]
    fn task_ids_sort_by_job_then_numeric_index() {
        let mut ids: Vec<TaskId> = ["a/10", "a/2", "b/0", "a/0"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        ids.sort();
        let shown: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a/0", "a/2", "a/10", "b/0"]);
    }

    #[test]
    fn ids_serialize_as_strings() {
        let t: TaskId = "job-1/7".parse().unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"job-1/7\"");
        let back: TaskId = serde_json::from_str("\"job-1/7\"").unwrap();
        assert_eq!(back, t);
        assert!(serde_json::from_str::<TaskId>("\"job-1/x\"").is_err());
    }
}
