//! The executor's durable records: which allocs this agent has launched, the
//! shim supervising each, and whether its exit has been reported.
//!
//! # Files
//!
//! - `<data_dir>/state.json`: every record, rewritten atomically (write a
//!   temporary file, fsync, rename, fsync the directory) on every change, with
//!   an FNV-1a 64 checksum of the records so that a torn or edited file is
//!   detected rather than half-believed.
//!   Saved once per batch of launches, not per launch: a shim started just
//!   before a crash is found again by its command line in `/proc`.
//! - `<data_dir>/allocs/<job>/<index>/<attempt>/`: one directory per alloc
//!   (see [`alloc_dir`]), made when it is launched. It holds `work/`,
//!   `stdout.log` and `stderr.log` while the task runs, `shim.log` only if
//!   the shim had something to say, and `exit.json` once the task has ended
//!   (written by the shim, after it removed the logs and the work dir if
//!   they were empty, into `exit.json.reserved`: room it took before the
//!   task started, so that a full disk cannot keep the exit from being
//!   recorded). Once the master has the exit, `exit.json` is renamed
//!   `reported.json`; or, when nothing else is left in the directory, the
//!   exit becomes one line of `finished.jsonl` and the directory goes.
//! - `<data_dir>/finished.jsonl`: the allocs whose directories went that
//!   way, one JSON line each (`{"alloc":…,"exit":…}`), the newest
//!   [`ExecConfig::max_finished`](crate::executor::ExecConfig) kept; a
//!   launch of one of them is refused like that of any other known alloc.
//!
//! # Recovery
//!
//! The alloc directories are the ground truth; `state.json` is an index of
//! them. On every load the directories are scanned and any alloc found on disk
//! but missing from the state file is added, and when the state file is
//! missing its checksum, truncated or otherwise unreadable, the records are
//! rebuilt from the directories alone. The choice this makes, deliberately:
//! **an alloc that has a directory is never run again**, whatever else is lost.
//! A directory whose shim cannot be identified and that has no `exit.json` is
//! reported as failed (the master then decides about a new attempt, which has
//! a new alloc id), never relaunched. The cost of a lost state file is at
//! worst a duplicate exit report for an alloc whose `reported` marker had not
//! reached the disk; never a second run.
//!
//! Shims are identified by pid **and** the pid's start time (field 22 of
//! `/proc/<pid>/stat`, in clock ticks since boot), so a pid reused by an
//! unrelated process after a reboot or a long outage is not mistaken for the
//! shim.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use drover_api::AllocId;
use serde::{Deserialize, Serialize};

/// The state file, under the data dir.
pub const STATE_FILE: &str = "state.json";
/// The directory holding one directory per alloc, under the data dir.
pub const ALLOCS_DIR: &str = "allocs";
/// The task's exit; written by the shim.
pub const EXIT_FILE: &str = "exit.json";
/// The room the shim takes for `exit.json` before it starts the task.
pub const EXIT_RESERVED: &str = "exit.json.reserved";
/// `exit.json` once the master has it.
pub const REPORTED_FILE: &str = "reported.json";
/// Reported allocs that left nothing but their exit, under the data dir.
pub const FINISHED_FILE: &str = "finished.jsonl";
/// The task's working directory, inside the alloc dir.
pub const WORK_DIR: &str = "work";
/// The task's standard output, appended.
pub const STDOUT_LOG: &str = "stdout.log";
/// The task's standard error, appended.
pub const STDERR_LOG: &str = "stderr.log";
/// The shim's own diagnostics.
pub const SHIM_LOG: &str = "shim.log";

const STATE_VERSION: u32 = 1;

/// `<data_dir>/allocs/<job>/<index>/<attempt>`: where an alloc's files live.
pub fn alloc_dir(data_dir: &Path, alloc: &AllocId) -> PathBuf {
    data_dir
        .join(ALLOCS_DIR)
        .join(alloc.task.job.as_str())
        .join(alloc.task.index.to_string())
        .join(alloc.attempt.to_string())
}

/// A shim process, identified so that pid reuse cannot fool us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimIdentity {
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start_time: u64,
}

/// How a task ended, as the shim recorded it (`exit.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit status, when the task exited on its own.
    pub exit_code: Option<i32>,
    /// The signal number, when a signal killed the task.
    pub signal: Option<i32>,
    pub finished_at_unix_ms: u64,
    /// Why the task failed beyond its status (could not start, out of memory…).
    #[serde(default)]
    pub message: Option<String>,
    /// The cgroup's OOM killer killed a process of the task.
    #[serde(default)]
    pub oom_killed: bool,
    /// How many times the task's output was cut because its log could not
    /// be written (see [`crate::output`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub log_cuts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ExitRecord {
    /// A task that ended without a status, with the reason.
    pub fn failed(message: impl Into<String>) -> Self {
        ExitRecord {
            exit_code: None,
            signal: None,
            finished_at_unix_ms: now_unix_ms(),
            message: Some(message.into()),
            oom_killed: false,
            log_cuts: 0,
        }
    }
}

/// Where an alloc stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AllocStatus {
    Running,
    Exited { exit: ExitRecord },
}

/// One alloc this agent launched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocRecord {
    pub alloc: AllocId,
    /// `None` only for an alloc whose launch was interrupted before the shim
    /// was recorded (then it is `Exited`).
    pub shim: Option<ShimIdentity>,
    pub status: AllocStatus,
    /// Its exit was returned by `Executor::poll`.
    pub reported: bool,
}

/// Why the state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How the records were obtained on load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// No state file: a fresh data dir (alloc dirs, if any, were scanned).
    Fresh,
    /// The state file was read and its checksum matched.
    Loaded,
    /// The state file was unusable; records were rebuilt from the alloc dirs.
    Recovered { reason: String },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u32,
    /// `fnv1a64:<16 hex digits>` over the compact JSON of `allocs`.
    checksum: String,
    allocs: Vec<AllocRecord>,
}

/// The records, in memory and on disk.
#[derive(Debug)]
pub struct LocalState {
    data_dir: PathBuf,
    records: BTreeMap<AllocId, AllocRecord>,
}

impl LocalState {
    /// Reads `state.json`, verifies it, and merges in every alloc directory
    /// it does not know (see the module doc).
    pub fn load(data_dir: &Path) -> Result<(Self, LoadOutcome), StateError> {
        let path = data_dir.join(STATE_FILE);
        let (mut records, outcome) = match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => (BTreeMap::new(), LoadOutcome::Fresh),
            Err(e) => return Err(io_err(&path)(e)),
            Ok(bytes) => match decode(&bytes) {
                Ok(list) => (
                    list.into_iter().map(|r| (r.alloc.clone(), r)).collect(),
                    LoadOutcome::Loaded,
                ),
                Err(reason) => (BTreeMap::new(), LoadOutcome::Recovered { reason }),
            },
        };
        // Reported allocs are done with: leaving them out keeps the state
        // (and every save of it) the size of what is live. A later launch
        // of one still finds its dir and refuses to run it again.
        for rec in scan_alloc_dirs(data_dir)? {
            if !rec.reported {
                records.entry(rec.alloc.clone()).or_insert(rec);
            }
        }
        Ok((
            LocalState {
                data_dir: data_dir.to_path_buf(),
                records,
            },
            outcome,
        ))
    }

    /// Writes every record to `state.json`, atomically and durably.
    pub fn save(&self) -> Result<(), StateError> {
        let path = self.data_dir.join(STATE_FILE);
        let allocs: Vec<AllocRecord> = self.records.values().cloned().collect();
        let body = serde_json::to_vec(&allocs).map_err(|e| io_err(&path)(e.into()))?;
        let env = Envelope {
            version: STATE_VERSION,
            checksum: format!("fnv1a64:{:016x}", fnv1a64(&body)),
            allocs,
        };
        let bytes = serde_json::to_vec_pretty(&env).map_err(|e| io_err(&path)(e.into()))?;
        write_atomic(&path, &bytes).map_err(io_err(&path))
    }

    pub fn get(&self, alloc: &AllocId) -> Option<&AllocRecord> {
        self.records.get(alloc)
    }

    pub fn get_mut(&mut self, alloc: &AllocId) -> Option<&mut AllocRecord> {
        self.records.get_mut(alloc)
    }

    pub fn insert(&mut self, rec: AllocRecord) {
        self.records.insert(rec.alloc.clone(), rec);
    }

    pub fn remove(&mut self, alloc: &AllocId) -> Option<AllocRecord> {
        self.records.remove(alloc)
    }

    pub fn records(&self) -> impl Iterator<Item = &AllocRecord> {
        self.records.values()
    }

    pub fn records_mut(&mut self) -> impl Iterator<Item = &mut AllocRecord> {
        self.records.values_mut()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

fn decode(bytes: &[u8]) -> Result<Vec<AllocRecord>, String> {
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| format!("state file is not valid: {e}"))?;
    if env.version != STATE_VERSION {
        return Err(format!("state file has unknown version {}", env.version));
    }
    let body = serde_json::to_vec(&env.allocs).map_err(|e| e.to_string())?;
    let want = format!("fnv1a64:{:016x}", fnv1a64(&body));
    if env.checksum != want {
        return Err(format!(
            "state file checksum mismatch (stored {}, computed {want})",
            env.checksum
        ));
    }
    Ok(env.allocs)
}

/// Rebuilds a record for every `allocs/<job>/<index>/<attempt>/` directory.
/// Names that are not alloc ids are skipped.
pub fn scan_alloc_dirs(data_dir: &Path) -> Result<Vec<AllocRecord>, StateError> {
    let root = data_dir.join(ALLOCS_DIR);
    let mut out = Vec::new();
    for job in read_dir_names(&root)? {
        let job_dir = root.join(&job);
        for index in read_dir_names(&job_dir)? {
            let index_dir = job_dir.join(&index);
            for attempt in read_dir_names(&index_dir)? {
                let Ok(alloc) = format!("{job}/{index}/{attempt}").parse::<AllocId>() else {
                    continue;
                };
                out.push(record_from_dir(&index_dir.join(&attempt), alloc));
            }
        }
    }
    Ok(out)
}

/// What an alloc directory says about its alloc. A directory without an
/// exit is `Running` with `shim: None` (the state file, not the directory,
/// knows the shim); the executor looks for its shim and otherwise marks it
/// failed.
pub fn record_from_dir(dir: &Path, alloc: AllocId) -> AllocRecord {
    if let Ok(exit) = read_json::<ExitRecord>(&dir.join(REPORTED_FILE)) {
        return AllocRecord {
            alloc,
            shim: None,
            status: AllocStatus::Exited { exit },
            reported: true,
        };
    }
    let status = match read_exit(dir) {
        Some(exit) => AllocStatus::Exited { exit },
        None => AllocStatus::Running,
    };
    AllocRecord {
        alloc,
        shim: None,
        status,
        reported: false,
    }
}

/// The shim's `exit.json`, when it is there and readable.
pub fn read_exit(dir: &Path) -> Option<ExitRecord> {
    read_json(&dir.join(EXIT_FILE)).ok()
}

/// One line of `finished.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub alloc: AllocId,
    pub exit: ExitRecord,
}

/// The allocs in `finished.jsonl`, oldest first; lines that do not parse
/// (a torn last line after a crash) are skipped.
pub fn read_finished(data_dir: &Path) -> Vec<Finished> {
    let Ok(text) = fs::read_to_string(data_dir.join(FINISHED_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Appends to `finished.jsonl`. Not synced: a line only stands for an
/// exit the master already has.
pub fn append_finished(data_dir: &Path, done: &[Finished]) -> io::Result<()> {
    let mut text = Vec::new();
    for f in done {
        serde_json::to_writer(&mut text, f).map_err(io::Error::from)?;
        text.push(b'\n');
    }
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join(FINISHED_FILE))?
        .write_all(&text)
}

/// Rewrites `finished.jsonl` with only `keep`, atomically.
pub fn rewrite_finished(data_dir: &Path, keep: &[Finished]) -> io::Result<()> {
    let mut text = Vec::new();
    for f in keep {
        serde_json::to_writer(&mut text, f).map_err(io::Error::from)?;
        text.push(b'\n');
    }
    write_atomic(&data_dir.join(FINISHED_FILE), &text)
}

/// Whether `alloc` is in `finished.jsonl` (a scan: for the log server's
/// rare question about an alloc without a directory).
pub fn is_in_finished(data_dir: &Path, alloc: &AllocId) -> bool {
    let Ok(text) = fs::read_to_string(data_dir.join(FINISHED_FILE)) else {
        return false;
    };
    let key = format!("{{\"alloc\":\"{alloc}\",");
    text.lines().any(|l| l.starts_with(&key))
}

/// Reads and parses a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> io::Result<T> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>, StateError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut names = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
    }
    names.sort();
    Ok(names)
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new
/// content, never a mix: write `<path>.tmp`, fsync, rename, fsync the directory.
/// A failed write removes its `.tmp`, which on a full disk would otherwise
/// hold on to what little room there is.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Fsyncs a directory, so that a rename or a new entry in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// FNV-1a, 64 bit: tiny and stable across Rust versions (unlike `DefaultHasher`).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead)…
    pub state: char,
    /// Field 5.
    pub pgrp: i32,
    /// Field 22.
    pub start_time: u64,
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself contain spaces and parentheses, so fields are
/// counted from the last `)`.
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 of the line.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The shim is alive: same pid, same start time, not a zombie.
pub fn shim_alive(id: &ShimIdentity) -> bool {
    matches!(proc_stat(id.pid), Some(s) if s.start_time == id.start_time && s.state != 'Z' && s.state != 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn proc_stat_is_parsed_after_a_command_name_with_spaces_and_parens() {
        let line = "42 (we ird) (x) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 0 0";
        let s = parse_proc_stat(line).expect("parses");
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgrp, 42);
        assert_eq!(s.start_time, 12345);
        assert_eq!(parse_proc_stat("42 (x"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = i32::try_from(std::process::id()).expect("pid fits");
        let me = proc_stat(pid).expect("own stat");
        assert!(shim_alive(&ShimIdentity {
            pid,
            start_time: me.start_time
        }));
        assert!(!shim_alive(&ShimIdentity {
            pid,
            start_time: me.start_time + 1
        }));
    }

    #[test]
    fn a_saved_state_loads_back_and_a_flipped_byte_is_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut st, outcome) = LocalState::load(dir.path()).expect("load");
        assert_eq!(outcome, LoadOutcome::Fresh);
        let alloc: AllocId = "a/0/1".parse().expect("id");
        st.insert(AllocRecord {
            alloc: alloc.clone(),
            shim: Some(ShimIdentity {
                pid: 7,
                start_time: 9,
            }),
            status: AllocStatus::Running,
            reported: false,
        });
        st.save().expect("save");
        let (back, outcome) = LocalState::load(dir.path()).expect("load");
        assert_eq!(outcome, LoadOutcome::Loaded);
        assert_eq!(back.get(&alloc), st.get(&alloc));

        let path = dir.path().join(STATE_FILE);
        let text = fs::read_to_string(&path).expect("read");
        fs::write(&path, text.replace("\"pid\": 7", "\"pid\": 8")).expect("write");
        let (_, outcome) = LocalState::load(dir.path()).expect("load");
        assert!(
            matches!(outcome, LoadOutcome::Recovered { .. }),
            "{outcome:?}"
        );
    }
}
