//! Append-only JSON-lines files that survive faults: the ledger and the audit log are written
//! through an [`AppendFile`].
//!
//! - Every line starts on a line boundary: before appending, a torn tail (a crash cut the last line)
//!   is moved aside into `<file>.torn` (kept, never deleted) and the file cut back to its last
//!   newline; a tail that is a whole record missing only its newline gets the newline.
//! - A failed append is undone (the file cut back to where it was), so a full disk never leaves half
//!   a line; space can be reserved beforehand ([`AppendFile::reserve`]) so that the append cannot
//!   fail for lack of space at all.
//! - The file stays open for the writer's lifetime: if it is deleted or replaced under the writer
//!   (the whole state folder removed), the next write puts it back, byte for byte, from the open file.
//!
//! Each of these is a [`Repair`], which the server records in the audit chain.
//!
//! Readers never modify: [`parse_lines`] splits a file into its lines, and a line that is not a
//! record becomes a [`LineProblem`] naming the file and line, which readers report and skip.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::fsutil::{fsync_dir, sha256_hex};

/// Something the server set right in its own state, recorded in the audit chain as a `repair` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Repair {
    /// A torn last line (a crash cut it) was moved into `torn_file`.
    TornTail { file: String, torn_file: String, line: u64, offset: u64, bytes: u64, sha256: String },
    /// The last line was a whole record without its newline: the newline was added.
    Completed { file: String, line: u64 },
    /// The file was deleted (or replaced) under the server and was put back from its open copy;
    /// `replaced`: where the file found in its place was moved.
    Restored { file: String, bytes: u64, replaced: Option<String> },
    /// A commit on the experiment branch had no `kept` ledger line (a crash between the two): added.
    Reconciled { commit: String, run_id: String },
    /// A git lock file left by a server that died was removed.
    StaleGitLock { path: String },
    /// Calls answered "disk full" without an audit record (the log had no room for one).
    UnrecordedCalls { calls: u64, first: String, last: String, reason: String },
}

impl Repair {
    pub fn kind(&self) -> &'static str {
        match self {
            Repair::TornTail { .. } => "torn_tail",
            Repair::Completed { .. } => "completed",
            Repair::Restored { .. } => "restored",
            Repair::Reconciled { .. } => "reconciled",
            Repair::StaleGitLock { .. } => "stale_git_lock",
            Repair::UnrecordedCalls { .. } => "unrecorded_calls",
        }
    }

    /// What happened, in one sentence.
    pub fn sentence(&self) -> String {
        match self {
            Repair::TornTail { file, torn_file, line, bytes, sha256, .. } => format!(
                "line {line} of {file} was torn (a crash cut it): its {bytes} bytes (sha256 {}) were set aside in {torn_file}",
                &sha256[..16.min(sha256.len())]
            ),
            Repair::Completed { file, line } => {
                format!("line {line} of {file} was a whole record without its newline: the newline was added")
            }
            Repair::Restored { file, bytes, replaced } => format!(
                "{file} was deleted while the server ran: restored from the server's open file ({bytes} bytes){}",
                replaced
                    .as_ref()
                    .map(|r| format!("; the file found in its place was moved to {r}"))
                    .unwrap_or_default()
            ),
            Repair::Reconciled { commit, run_id } => format!(
                "commit {} of run {run_id} was on the experiment branch without its kept line in runs.jsonl (a crash between the two): the line was added",
                &commit[..10.min(commit.len())]
            ),
            Repair::StaleGitLock { path } => format!("{path} was left by a server that died: removed"),
            Repair::UnrecordedCalls { calls, first, last, reason } => {
                format!("{calls} call(s) from {first} to {last} were answered with an error and not recorded: {reason}")
            }
        }
    }

    /// The record's `args`: the repair as JSON.
    pub fn args(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| json!({"kind": self.kind()}))
    }
}

/// A line a reader could not use.
#[derive(Debug, Clone, PartialEq)]
pub struct LineProblem {
    pub file: PathBuf,
    /// 1-based line number.
    pub line: u64,
    /// The last line, cut by a crash (no newline), rather than a malformed line in the middle.
    pub torn: bool,
    pub what: String,
}

impl std::fmt::Display for LineProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.torn {
            write!(
                f,
                "{} line {} is torn (a crash cut it; {}): ignored; the next server start sets it aside into {}",
                self.file.display(),
                self.line,
                self.what,
                torn_path(&self.file).display()
            )
        } else {
            write!(f, "{} line {} is malformed ({}): skipped", self.file.display(), self.line, self.what)
        }
    }
}

/// `runs.jsonl` → `runs.jsonl.torn`.
pub fn torn_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".torn");
    PathBuf::from(s)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// A line of a file: its 1-based number and its bytes (without the newline).
pub type NumberedLine<'a> = (u64, &'a [u8]);

/// Splits a JSON-lines file into its non-empty lines and its unterminated last line, if any.
pub fn split_lines(bytes: &[u8]) -> (Vec<NumberedLine<'_>>, Option<NumberedLine<'_>>) {
    let mut lines = vec![];
    let mut start = 0;
    let mut n = 0u64;
    while let Some(i) = bytes[start..].iter().position(|b| *b == b'\n') {
        n += 1;
        let line = &bytes[start..start + i];
        if !line.iter().all(u8::is_ascii_whitespace) {
            lines.push((n, line));
        }
        start += i + 1;
    }
    let tail = (start < bytes.len()).then(|| (n + 1, &bytes[start..]));
    (lines, tail)
}

/// Parses every line with `parse`: the records in order, and the lines that are not records. An
/// unterminated last line that parses is a record (only its newline is missing); one that does not
/// is reported as torn.
pub fn parse_lines<T>(
    path: &Path,
    bytes: &[u8],
    parse: impl Fn(&[u8]) -> std::result::Result<T, String>,
) -> (Vec<(u64, T)>, Vec<LineProblem>) {
    let (lines, tail) = split_lines(bytes);
    let mut out = Vec::with_capacity(lines.len());
    let mut problems = vec![];
    for (n, line) in lines {
        match parse(line) {
            Ok(t) => out.push((n, t)),
            Err(e) => problems.push(LineProblem { file: path.to_path_buf(), line: n, torn: false, what: e }),
        }
    }
    if let Some((n, tail)) = tail.filter(|(_, t)| !t.iter().all(u8::is_ascii_whitespace)) {
        match parse(tail) {
            Ok(t) => out.push((n, t)),
            Err(_) => problems.push(LineProblem {
                file: path.to_path_buf(),
                line: n,
                torn: true,
                what: format!("{} bytes without a newline", tail.len()),
            }),
        }
    }
    (out, problems)
}

/// Reads a file that may not exist yet (an empty one then).
pub fn read_or_empty(path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// One entry of a `.torn` file: a fragment set aside, its bytes kept as text (or hex when not UTF-8).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TornEntry {
    pub at: chrono::DateTime<Utc>,
    pub file: String,
    pub line: u64,
    pub offset: u64,
    pub bytes: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
}

/// The entries of a `.torn` file (lines that do not parse are skipped).
pub fn read_torn(path: &Path) -> Vec<TornEntry> {
    let bytes = std::fs::read(path).unwrap_or_default();
    parse_lines(path, &bytes, |l| serde_json::from_slice(l).map_err(|e| e.to_string()))
        .0
        .into_iter()
        .map(|x| x.1)
        .collect()
}

/// An append-only JSON-lines file held open by its one writer (see the module docs).
pub struct AppendFile {
    path: PathBuf,
    file: File,
    /// Complete lines in the file (for naming a torn line).
    lines: u64,
    /// Whether a line is a whole record (a tail that is one only lacks its newline).
    valid: fn(&[u8]) -> bool,
    repairs: Vec<Repair>,
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .with_context(|| format!("open {} for append", path.display()))
}

impl AppendFile {
    /// Opens (creating) `path` for appending, heals its tail, and returns the file's content.
    pub fn open(path: &Path, valid: fn(&[u8]) -> bool) -> Result<(Self, Vec<u8>)> {
        let existed = path.exists();
        let file = open_rw(path)?;
        if !existed && let Some(dir) = path.parent() {
            let _ = fsync_dir(dir);
        }
        let mut f = Self { path: path.to_path_buf(), file, lines: 0, valid, repairs: vec![] };
        let content = f.read_all()?;
        f.lines = content.iter().filter(|b| **b == b'\n').count() as u64;
        let content = if f.heal()? { f.read_all()? } else { content };
        Ok((f, content))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines in the file (its newlines).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    fn read_all(&self) -> Result<Vec<u8>> {
        let len = self.file.metadata()?.len();
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, 0).with_context(|| format!("read {}", self.path.display()))?;
        Ok(buf)
    }

    /// Repairs done since the last call, for the audit log.
    pub fn take_repairs(&mut self) -> Vec<Repair> {
        std::mem::take(&mut self.repairs)
    }

    /// Puts the file back if it was deleted or replaced under the writer: its bytes come from the
    /// open file; a file found in its place is moved aside (kept), never overwritten.
    pub fn ensure_in_place(&mut self) -> Result<()> {
        let ours = self.file.metadata()?;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.dev() == ours.dev() && m.ino() == ours.ino() => return Ok(()),
            Ok(_) | Err(_) => {}
        }
        let dir = self.path.parent().context("path has no parent")?;
        std::fs::create_dir_all(dir).with_context(|| format!("recreate {}", dir.display()))?;
        let content = self.read_all()?;
        let replaced = if std::fs::symlink_metadata(&self.path).is_ok() {
            let aside =
                PathBuf::from(format!("{}.replaced-{}", self.path.display(), Utc::now().format("%Y%m%dT%H%M%S")));
            std::fs::rename(&self.path, &aside)
                .with_context(|| format!("move the file found at {} aside", self.path.display()))?;
            Some(file_name(&aside))
        } else {
            None
        };
        crate::fsutil::write_atomic(&self.path, &content)?;
        self.file = open_rw(&self.path)?;
        tracing::warn!(
            "{} was deleted or replaced while the server ran: restored from the open file ({} bytes)",
            self.path.display(),
            content.len()
        );
        self.repairs.push(Repair::Restored { file: file_name(&self.path), bytes: content.len() as u64, replaced });
        Ok(())
    }

    /// If the file does not end on a line boundary: a tail that is a whole record gets its newline;
    /// any other tail is appended to `<file>.torn` (fsynced) and cut off. Returns whether it changed.
    pub fn heal(&mut self) -> Result<bool> {
        let len = self.file.metadata()?.len();
        if len == 0 {
            return Ok(false);
        }
        let mut last = [0u8; 1];
        self.file.read_exact_at(&mut last, len - 1)?;
        if last[0] == b'\n' {
            return Ok(false);
        }
        // Find the last newline, reading backwards in chunks.
        let mut start = 0u64;
        let mut end = len;
        'scan: while end > 0 {
            let from = end.saturating_sub(64 * 1024);
            let mut buf = vec![0u8; (end - from) as usize];
            self.file.read_exact_at(&mut buf, from)?;
            if let Some(i) = buf.iter().rposition(|b| *b == b'\n') {
                start = from + i as u64 + 1;
                break 'scan;
            }
            end = from;
        }
        let mut tail = vec![0u8; (len - start) as usize];
        self.file.read_exact_at(&mut tail, start)?;
        let name = file_name(&self.path);
        let line = self.lines + 1;
        if (self.valid)(&tail) {
            (&self.file)
                .write_all(b"\n")
                .with_context(|| format!("complete the last line of {}", self.path.display()))?;
            self.file.sync_data()?;
            self.lines += 1;
            tracing::warn!("{} line {line} lacked its newline (a crash): added", self.path.display());
            self.repairs.push(Repair::Completed { file: name, line });
            return Ok(true);
        }
        let torn = torn_path(&self.path);
        let sha256 = sha256_hex(&tail);
        let entry = TornEntry {
            at: Utc::now(),
            file: name.clone(),
            line,
            offset: start,
            bytes: tail.len() as u64,
            sha256: sha256.clone(),
            text: std::str::from_utf8(&tail).ok().map(String::from),
            hex: std::str::from_utf8(&tail).is_err().then(|| hex::encode(&tail)),
        };
        let mut record = serde_json::to_string(&entry)?;
        record.push('\n');
        let mut t = crate::fsutil::open_append(&torn)?;
        t.write_all(record.as_bytes()).with_context(|| format!("set the torn line aside in {}", torn.display()))?;
        t.sync_data()?;
        self.file.set_len(start).with_context(|| format!("cut the torn line off {}", self.path.display()))?;
        self.file.sync_data()?;
        tracing::warn!(
            "{} line {line} was torn (a crash cut it): its {} bytes were set aside in {}",
            self.path.display(),
            tail.len(),
            torn.display()
        );
        self.repairs.push(Repair::TornTail {
            file: name,
            torn_file: file_name(&torn),
            line,
            offset: start,
            bytes: tail.len() as u64,
            sha256,
        });
        Ok(true)
    }

    /// Reserves room for `bytes` more bytes at the end of the file: the file system must have that
    /// much free (a full disk fails here, whatever was reserved before), and the bytes are then
    /// allocated (see [`crate::fsutil::reserve`]) so that the appends cannot fail for lack of space.
    pub fn reserve(&mut self, bytes: u64) -> Result<()> {
        self.ensure_in_place()?;
        let what = || format!("reserve {bytes} bytes at the end of {}", self.path.display());
        let st = nix::sys::statvfs::fstatvfs(&self.file).map_err(std::io::Error::from).with_context(what)?;
        if (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64) < bytes {
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC)).with_context(what);
        }
        let len = self.file.metadata()?.len();
        crate::fsutil::reserve(&self.file, len, bytes).with_context(what)
    }

    /// Appends one line (`line` has no newline), fsynced, after putting the file back if it was
    /// removed and healing a torn tail. On failure the file is cut back to where it was.
    pub fn append(&mut self, line: &[u8]) -> Result<()> {
        self.ensure_in_place()?;
        self.heal()?;
        let len = self.file.metadata()?.len();
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        let written = (&self.file).write_all(&buf).and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            // Never leave half a line: cut back (a later append heals it if even this fails).
            if self.file.set_len(len).and_then(|_| self.file.sync_data()).is_err() {
                tracing::error!(
                    "{}: a failed append could not be undone; the next append sets it aside",
                    self.path.display()
                );
            }
            return Err(e).with_context(|| format!("append to {}", self.path.display()));
        }
        self.lines += 1;
        Ok(())
    }

    /// The file's current bytes (through the open file).
    pub fn content(&self) -> Result<Vec<u8>> {
        self.read_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(l: &[u8]) -> bool {
        serde_json::from_slice::<Value>(l).is_ok()
    }

    #[test]
    fn a_torn_tail_is_set_aside_and_the_next_line_starts_on_a_boundary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("runs.jsonl");
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let (mut f, content) = AppendFile::open(&p, valid).unwrap();
        assert_eq!(content, b"{\"a\":1}\n{\"b\":2}\n");
        let r = f.take_repairs();
        assert!(matches!(&r[..], [Repair::TornTail { line: 3, offset: 16, bytes: 5, .. }]), "{r:?}");
        f.append(b"{\"d\":4}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n{\"b\":2}\n{\"d\":4}\n");
        let torn = read_torn(&torn_path(&p));
        assert_eq!(torn.len(), 1);
        assert_eq!(torn[0].text.as_deref(), Some("{\"c\":"));
        // A whole record without its newline only gets the newline.
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":2}").unwrap();
        let (mut f, content) = AppendFile::open(&p, valid).unwrap();
        assert_eq!(content, b"{\"a\":1}\n{\"b\":2}\n");
        assert!(matches!(&f.take_repairs()[..], [Repair::Completed { line: 2, .. }]));
        // Bytes that are not UTF-8 are kept as hex.
        std::fs::write(&p, b"{\"a\":1}\n\xff\xfe").unwrap();
        AppendFile::open(&p, valid).unwrap();
        assert_eq!(read_torn(&torn_path(&p)).last().unwrap().hex.as_deref(), Some("fffe"));
    }

    #[test]
    fn a_deleted_file_is_restored_from_the_open_copy() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let p = dir.join("audit.jsonl");
        let (mut f, _) = AppendFile::open(&p, valid).unwrap();
        f.append(b"{\"a\":1}").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        f.append(b"{\"b\":2}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n{\"b\":2}\n");
        assert!(matches!(&f.take_repairs()[..], [Repair::Restored { bytes: 8, replaced: None, .. }]));
        // A different file put in its place is moved aside, not overwritten.
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"someone else's\n").unwrap();
        f.append(b"{\"c\":3}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n");
        let r = f.take_repairs();
        let Some(Repair::Restored { replaced: Some(aside), .. }) = r.first() else { panic!("{r:?}") };
        assert_eq!(std::fs::read(dir.join(aside)).unwrap(), b"someone else's\n");
    }

    #[test]
    fn readers_name_bad_and_torn_lines() {
        let p = Path::new("/x/runs.jsonl");
        let (recs, problems) = parse_lines(p, b"{\"a\":1}\n{\"b\xff\n\n{\"c\":3}\n{\"d", |l| {
            serde_json::from_slice::<Value>(l).map_err(|e| e.to_string())
        });
        assert_eq!(recs.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 4]);
        assert_eq!(problems.len(), 2);
        assert!(problems[0].to_string().starts_with("/x/runs.jsonl line 2 is malformed"), "{}", problems[0]);
        assert!(problems[1].torn && problems[1].line == 5, "{:?}", problems[1]);
    }
}
