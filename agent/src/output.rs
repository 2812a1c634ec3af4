//! A task's output on its way to `stdout.log` / `stderr.log`: the shim reads
//! the task's pipes and appends what it reads with a [`LogSink`], so that a
//! log that cannot be written (the data dir's disk is full, a quota is
//! reached, an I/O error) never stops the task: the pipe is still drained
//! and the output is dropped instead of blocking the task or killing it
//! with `EPIPE`.
//!
//! # A cut log
//!
//! At the first failed write the log is *cut*: it gets one line saying so,
//! [`cut_marker`] (`[drover: log truncated: no space left on device]`), and
//! further output of that stream is counted and dropped. On a full disk
//! even that line would not fit, so it overwrites the end of the log
//! itself, whose space is already allocated (the last few hundred bytes of
//! output, at most 4 KiB back to the start of a line, are lost for it).
//!
//! A cut log **resumes** once there is room again, as a log file on a
//! machine whose disk was cleaned up would: at most once every
//! [`RETRY_EVERY`], when the task writes and the file system has room, the
//! sink appends [`resumed_marker`] (`[drover: log resumed: N bytes of
//! output were dropped]`) and the output again. An attempt that fails is
//! undone (the log still ends with the cut line) and is not a new cut; a
//! resumed log that fills up again is cut again, with a new line.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often a cut log tries to take output again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How far back from its end a full log is searched for a line start, to
/// put its cut line on a line of its own.
const TAIL: u64 = 4096;
/// Free space, beyond the output itself, that a cut log wants to see
/// before it tries to resume: less than this and the next write would
/// likely fill the disk again at once.
const ROOM: u64 = 64 << 10;

/// The line that ends a cut log, newline included: `reason` is the write
/// error in words (`no space left on device`).
pub fn cut_marker(reason: &str) -> String {
    format!("[drover: log truncated: {reason}]\n")
}

/// The line a cut log resumes with, newline included.
pub fn resumed_marker(dropped: u64) -> String {
    format!("[drover: log resumed: {dropped} bytes of output were dropped]\n")
}

/// A write error in the words of [`cut_marker`]: the C library's, in
/// lower case.
fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    // std adds " (os error 28)" to strerror's words.
    let text = match (e.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(at)) => text[..at].to_string(),
        _ => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Appends a task's output to one log file; see the module doc.
#[derive(Debug)]
pub struct LogSink {
    /// `O_APPEND`: the agent's rotation truncates the file in place
    /// (copytruncate), and appends must follow it to the new end.
    append: File,
    /// The same file without `O_APPEND`, where `pwrite` goes to the offset
    /// given: to overwrite the tail of a full log in place.
    fixup: File,
    cut: Option<Cut>,
    cuts: u32,
}

#[derive(Debug)]
struct Cut {
    /// The cut line made it into the log.
    marked: bool,
    reason: String,
    /// Output dropped since the cut, in bytes.
    dropped: u64,
    last_try: Instant,
}

impl LogSink {
    /// Opens (creating it if need be) the log at `path` for appending.
    pub fn open(path: &Path) -> io::Result<LogSink> {
        let append = OpenOptions::new().create(true).append(true).open(path)?;
        let fixup = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(LogSink {
            append,
            fixup,
            cut: None,
            cuts: 0,
        })
    }

    /// How many times this log was cut.
    pub fn cuts(&self) -> u32 {
        self.cuts
    }

    /// Whether output is being dropped right now.
    pub fn is_cut(&self) -> bool {
        self.cut.is_some()
    }

    /// Appends `bytes`, or drops them while the log is cut. Never fails:
    /// the task's output must keep flowing whatever the disk does.
    pub fn write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if let Some(cut) = &mut self.cut {
            let n = bytes.len() as u64;
            if cut.last_try.elapsed() < RETRY_EVERY || !has_room(&self.append, n) {
                cut.dropped += n;
                return;
            }
            cut.last_try = Instant::now();
            if !self.resume() {
                if let Some(cut) = &mut self.cut {
                    cut.dropped += n;
                }
                return;
            }
        }
        if let Err((written, e)) = append_all(&self.append, bytes) {
            self.cut_now(&e, (bytes.len() - written) as u64);
        }
    }

    fn cut_now(&mut self, e: &io::Error, dropped: u64) {
        self.cuts = self.cuts.saturating_add(1);
        let reason = describe(e);
        let marked = self.mark(&cut_marker(&reason));
        self.cut = Some(Cut {
            marked,
            reason,
            dropped,
            last_try: Instant::now(),
        });
    }

    /// Tries to end the cut: the resume line (after the cut line, if that
    /// did not fit at the time) goes in whole or not at all.
    fn resume(&mut self) -> bool {
        let Some(cut) = &self.cut else {
            return true;
        };
        let Ok(before) = self.append.metadata().map(|m| m.len()) else {
            return false;
        };
        let mut text = String::new();
        if !cut.marked {
            if before > 0 && !self.ends_with_newline(before) {
                text.push('\n');
            }
            text.push_str(&cut_marker(&cut.reason));
        }
        text.push_str(&resumed_marker(cut.dropped));
        if append_all(&self.append, text.as_bytes()).is_err() {
            self.undo(before);
            return false;
        }
        self.cut = None;
        true
    }

    /// Puts `line` at the end of the log, on a line of its own; when there
    /// is no room for it, in place of the log's last bytes. Best effort.
    fn mark(&mut self, line: &str) -> bool {
        let Ok(len) = self.append.metadata().map(|m| m.len()) else {
            return false;
        };
        let mut text = String::new();
        if len > 0 && !self.ends_with_newline(len) {
            text.push('\n');
        }
        text.push_str(line);
        if append_all(&self.append, text.as_bytes()).is_ok() {
            return true;
        }
        self.undo(len);
        // No room: overwrite the end of the log, whose blocks are allocated
        // already, so that writing there needs none.
        let need = line.len() as u64;
        if len < need {
            return false;
        }
        let limit = len - need;
        let from = limit.saturating_sub(TAIL);
        let mut tail = vec![0u8; usize::try_from(limit - from).unwrap_or(0)];
        if self.fixup.read_exact_at(&mut tail, from).is_err() {
            return false;
        }
        let (at, text) = match tail.iter().rposition(|b| *b == b'\n') {
            Some(i) => (from + i as u64 + 1, line.to_string()),
            None if limit == 0 => (0, line.to_string()),
            // No line start near the end: the cut line ends the last one.
            None => (limit - 1, format!("\n{line}")),
        };
        self.fixup.write_all_at(text.as_bytes(), at).is_ok()
            && self.fixup.set_len(at + text.len() as u64).is_ok()
    }

    fn ends_with_newline(&self, len: u64) -> bool {
        let mut last = [0u8];
        self.fixup
            .read_exact_at(&mut last, len.saturating_sub(1))
            .is_ok_and(|()| last[0] == b'\n')
    }

    /// Takes back what a failed append left after `len`. Only ever shrinks
    /// the file: a rotation may have truncated it meanwhile.
    fn undo(&self, len: u64) {
        if self.append.metadata().is_ok_and(|m| m.len() > len) {
            let _ = self.fixup.set_len(len);
        }
    }
}

/// `write_all` that says how much was written before it failed.
fn append_all(mut file: &File, bytes: &[u8]) -> Result<(), (usize, io::Error)> {
    let mut done = 0;
    while done < bytes.len() {
        match file.write(&bytes[done..]) {
            Ok(0) => return Err((done, io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

/// The file system has room for `bytes` and some to spare, or cannot say.
fn has_room(file: &File, bytes: u64) -> bool {
    match nix::sys::statvfs::fstatvfs(file.as_fd()) {
        Ok(st) => {
            let free = st.blocks_available().saturating_mul(st.fragment_size());
            free >= bytes.saturating_add(ROOM)
        }
        Err(_) => true,
    }
}

/// Reads what the pipe holds now into `sink`, at most `budget` bytes (a
/// task writing without pause must not keep the shim from its signals).
/// Returns `false` once the pipe is at its end: every writer has closed it.
pub fn pump(pipe: &mut File, sink: &mut LogSink, buf: &mut [u8], budget: usize) -> bool {
    let mut taken = 0;
    while taken < budget {
        match pipe.read(buf) {
            Ok(0) => return false,
            Ok(n) => {
                sink.write(&buf[..n]);
                taken += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // WouldBlock: drained for now. Anything else cannot be read
            // again either (EIO on a pipe does not happen): end of output.
            Err(e) => return e.kind() == io::ErrorKind::WouldBlock,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_described_in_lower_case_os_words() {
        let full = io::Error::from_raw_os_error(nix::libc::ENOSPC);
        assert_eq!(
            cut_marker(&describe(&full)),
            "[drover: log truncated: no space left on device]\n"
        );
        let quota = io::Error::from_raw_os_error(nix::libc::EDQUOT);
        assert_eq!(describe(&quota), "disk quota exceeded");
    }

    #[test]
    fn output_is_appended_while_there_is_room() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdout.log");
        let mut sink = LogSink::open(&path).expect("open");
        sink.write(b"one\n");
        sink.write(b"two\n");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "one\ntwo\n");
        assert!(!sink.is_cut());
        assert_eq!(sink.cuts(), 0);
    }

    #[test]
    fn a_log_that_cannot_be_written_is_cut_once_and_output_is_dropped_without_error() {
        // Every write to /dev/full fails with ENOSPC; there is no room for
        // the marker either, and no log tail to put it in.
        let mut sink = LogSink::open(Path::new("/dev/full")).expect("open /dev/full");
        sink.write(b"first\n");
        assert!(sink.is_cut());
        assert_eq!(sink.cuts(), 1);
        for _ in 0..1000 {
            sink.write(b"more output\n");
        }
        assert_eq!(sink.cuts(), 1, "one cut, however much follows");
        match &sink.cut {
            Some(cut) => {
                assert!(!cut.marked);
                assert_eq!(cut.reason, "no space left on device");
                assert_eq!(cut.dropped, 6 + 1000 * 12);
            }
            None => panic!("not cut"),
        }
    }
}
