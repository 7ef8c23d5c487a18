//! The FUSE session's state that outlives the process (`--state-file`):
//! the node ids and file handles the guest holds, each with what finds it
//! again (a node: its parent and name, and the device and inode number it
//! had; a handle: its node and open flags), and the INIT options. The file
//! holds a log of text lines, one [`Record`] each, appended as the session
//! changes (no fsync: a killed process's writes are in the page cache) and
//! compacted to a snapshot when it grows past twice what is live.
//!
//! Compaction cannot write a new file and rename it over the old one (the
//! daemon's jail has no directory it may write), and rewriting the log in
//! place would lose the session to a kill between the truncation and the
//! write. So the file starts with a fixed [`HEADER_LEN`]-byte header,
//! `vfsd-state v1 START END`, that says where the live log starts (START)
//! and, while a compaction is finishing, where the file must end (END;
//! 0 when the log runs to the end of the file). A compaction:
//!
//! 1. writes the snapshot where it cannot touch the live log: in the free
//!    space between the header and START if it fits there, else at the
//!    end of the file after a `cut` line, which ends the old log for a
//!    load that still reads it (a snapshot cut short by a kill there is
//!    not read as more records);
//! 2. `fdatasync`s it;
//! 3. flips the header, one 64-byte `pwrite` in the file's first page
//!    (a kill cannot split it), to START = the snapshot and, for a
//!    snapshot at the front, END = its end: what follows it is the old
//!    log, now dead;
//! 4. (front only) truncates the file at END,
//! 5. (front only) writes the header again with END = 0; only then are
//!    records appended.
//!
//! A kill before step 3 leaves the old header and the old log whole; after
//! it, the new snapshot is whole (written and synced before), and a load
//! that finds END set finishes step 4 itself. The file so stays within
//! about the header plus three times the live records: the front holds at
//! most the previous log, the end at most one snapshot and its appends. A
//! file without the header (written by a daemon before this layout) is read
//! as one log from its first byte and converted at load.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// The node id of the share's root (FUSE_ROOT_ID).
pub const ROOT: u64 = 1;

/// A state file that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading, writing or truncating the file.
    #[error("state file: {0}")]
    Io(#[from] std::io::Error),
    /// A line that is no record.
    #[error("state file line {line}: {text:?} is no record")]
    Corrupt {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// One change to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// INIT with these options (a second INIT keeps what the first began;
    /// a new session is written as DESTROY then INIT).
    Init(u64),
    /// DESTROY: the session is gone.
    Destroy,
    /// A node the guest learned (lookup count 1).
    Node {
        /// Guest node id.
        id: u64,
        /// Its parent's node id.
        parent: u64,
        /// Its name in the parent.
        name: Vec<u8>,
        /// `st_dev` when it was learned.
        dev: u64,
        /// `st_ino` when it was learned.
        ino: u64,
    },
    /// The guest learned node `0` again, `1` more times.
    Ref(u64, u64),
    /// FORGET node `0`, `1` lookups.
    Forget(u64, u64),
    /// Node `id` was renamed to `parent`/`name`.
    Move {
        /// Guest node id.
        id: u64,
        /// New parent.
        parent: u64,
        /// New name.
        name: Vec<u8>,
    },
    /// Node `0` has no name any more (unlinked or replaced).
    Detach(u64),
    /// OPEN/OPENDIR/CREATE: guest handle `fh` on `node`.
    Open {
        /// Guest handle.
        fh: u64,
        /// Guest node id.
        node: u64,
        /// Open flags.
        flags: u32,
        /// OPENDIR.
        dir: bool,
    },
    /// RELEASE/RELEASEDIR of guest handle `0`.
    Release(u64),
}

fn hex(name: &[u8]) -> String {
    let mut s = String::with_capacity(name.len() * 2 + 1);
    s.push('x');
    for b in name {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.strip_prefix('x')?;
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Record {
    /// The record as one line, newline included.
    pub fn line(&self) -> String {
        match self {
            Record::Init(o) => format!("init {o}\n"),
            Record::Destroy => "destroy\n".into(),
            Record::Node {
                id,
                parent,
                name,
                dev,
                ino,
            } => format!("node {id} {parent} {dev} {ino} {}\n", hex(name)),
            Record::Ref(id, n) => format!("ref {id} {n}\n"),
            Record::Forget(id, n) => format!("forget {id} {n}\n"),
            Record::Move { id, parent, name } => format!("move {id} {parent} {}\n", hex(name)),
            Record::Detach(id) => format!("detach {id}\n"),
            Record::Open {
                fh,
                node,
                flags,
                dir,
            } => format!("open {fh} {node} {flags} {}\n", u8::from(*dir)),
            Record::Release(fh) => format!("release {fh}\n"),
        }
    }

    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Option<Record> {
        let w: Vec<&str> = line.split(' ').collect();
        let n = |i: usize| w.get(i)?.parse::<u64>().ok();
        let r = match (w[0], w.len()) {
            ("init", 2) => Record::Init(n(1)?),
            ("destroy", 1) => Record::Destroy,
            ("node", 6) => Record::Node {
                id: n(1)?,
                parent: n(2)?,
                dev: n(3)?,
                ino: n(4)?,
                name: unhex(w[5])?,
            },
            ("ref", 3) => Record::Ref(n(1)?, n(2)?),
            ("forget", 3) => Record::Forget(n(1)?, n(2)?),
            ("move", 4) => Record::Move {
                id: n(1)?,
                parent: n(2)?,
                name: unhex(w[3])?,
            },
            ("detach", 2) => Record::Detach(n(1)?),
            ("open", 5) => Record::Open {
                fh: n(1)?,
                node: n(2)?,
                flags: u32::try_from(n(3)?).ok()?,
                dir: match w[4] {
                    "0" => false,
                    "1" => true,
                    _ => return None,
                },
            },
            ("release", 2) => Record::Release(n(1)?),
            _ => return None,
        };
        Some(r)
    }
}

/// A node the guest holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Parent node id.
    pub parent: u64,
    /// Name in the parent.
    pub name: Vec<u8>,
    /// `st_dev` and `st_ino` when learned: a re-lookup must find the same.
    pub dev: u64,
    /// See `dev`.
    pub ino: u64,
    /// The guest's lookup count.
    pub nlookup: u64,
    /// Unlinked or replaced: it cannot be found by name.
    pub detached: bool,
}

/// A handle the guest holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    /// Guest node id.
    pub node: u64,
    /// Open flags.
    pub flags: u32,
    /// OPENDIR.
    pub dir: bool,
}

/// The session: what [`Record`]s add up to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    /// INIT's options, when a session is on.
    pub init: Option<u64>,
    /// Nodes by guest id (the root is not listed).
    pub nodes: HashMap<u64, Node>,
    /// Handles by guest handle.
    pub handles: HashMap<u64, Handle>,
    /// The next node id and handle to give out.
    pub next_node: u64,
    /// See `next_node`.
    pub next_fh: u64,
}

impl Table {
    /// An empty table.
    pub fn new() -> Self {
        Table {
            next_node: ROOT + 1,
            next_fh: 1,
            ..Table::default()
        }
    }

    /// Applies one record. Returns false for a record about an id the
    /// table does not hold (it changes nothing).
    pub fn apply(&mut self, r: &Record) -> bool {
        match r {
            Record::Init(o) => self.init = Some(*o),
            Record::Destroy => *self = Table::new(),
            Record::Node {
                id,
                parent,
                name,
                dev,
                ino,
            } => {
                self.nodes.insert(
                    *id,
                    Node {
                        parent: *parent,
                        name: name.clone(),
                        dev: *dev,
                        ino: *ino,
                        nlookup: 1,
                        detached: false,
                    },
                );
                self.next_node = self.next_node.max(id.saturating_add(1));
            }
            Record::Ref(id, n) => match self.nodes.get_mut(id) {
                Some(node) => node.nlookup = node.nlookup.saturating_add(*n),
                None => return false,
            },
            Record::Forget(id, n) => match self.nodes.get_mut(id) {
                Some(node) => {
                    node.nlookup = node.nlookup.saturating_sub(*n);
                    if node.nlookup == 0 {
                        self.nodes.remove(id);
                    }
                }
                None => return false,
            },
            Record::Move { id, parent, name } => match self.nodes.get_mut(id) {
                Some(node) => {
                    node.parent = *parent;
                    node.name = name.clone();
                }
                None => return false,
            },
            Record::Detach(id) => match self.nodes.get_mut(id) {
                Some(node) => node.detached = true,
                None => return false,
            },
            Record::Open {
                fh,
                node,
                flags,
                dir,
            } => {
                self.handles.insert(
                    *fh,
                    Handle {
                        node: *node,
                        flags: *flags,
                        dir: *dir,
                    },
                );
                self.next_fh = self.next_fh.max(fh.saturating_add(1));
            }
            Record::Release(fh) => return self.handles.remove(fh).is_some(),
        }
        true
    }

    /// The records that rebuild this table from nothing.
    pub fn snapshot(&self) -> Vec<Record> {
        let Some(init) = self.init else {
            return Vec::new();
        };
        let mut out = vec![Record::Init(init)];
        let mut ids: Vec<_> = self.nodes.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            let n = &self.nodes[&id];
            out.push(Record::Node {
                id,
                parent: n.parent,
                name: n.name.clone(),
                dev: n.dev,
                ino: n.ino,
            });
            if n.nlookup > 1 {
                out.push(Record::Ref(id, n.nlookup - 1));
            }
            if n.detached {
                out.push(Record::Detach(id));
            }
        }
        let mut fhs: Vec<_> = self.handles.keys().copied().collect();
        fhs.sort_unstable();
        for fh in fhs {
            let h = self.handles[&fh];
            out.push(Record::Open {
                fh,
                node: h.node,
                flags: h.flags,
                dir: h.dir,
            });
        }
        out
    }

    /// Records kept live: what a snapshot would write.
    pub fn live(&self) -> usize {
        1 + 2 * self.nodes.len() + self.handles.len()
    }

    /// The table a log's text adds up to. A last line without its newline
    /// (a write cut short by the kill) is ignored, as are empty lines; a
    /// `cut` line ends the log (what follows is a compaction's snapshot
    /// not yet in use); any other line that is no record is an error.
    pub fn replay(text: &str) -> Result<Table, StateError> {
        let mut t = Table::new();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for (i, line) in complete.lines().enumerate() {
            if line == CUT.trim_end() {
                break;
            }
            if line.is_empty() {
                continue;
            }
            let r = Record::parse(line).ok_or_else(|| StateError::Corrupt {
                line: i + 1,
                text: line.chars().take(80).collect(),
            })?;
            t.apply(&r);
        }
        // A session whose INIT is not in the file has nothing to resume.
        if t.init.is_none() {
            t = Table::new();
        }
        Ok(t)
    }
}

/// Bytes of the header at the start of the file (see the module's doc).
pub const HEADER_LEN: u64 = 64;
/// The header's first word.
const MAGIC: &str = "vfsd-state v1";

/// Where the live log lies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    /// Offset of the log's first record.
    start: u64,
    /// Where the file must be cut (a compaction's step 4 not done yet);
    /// 0: the log runs to the end of the file.
    end: u64,
}

impl Header {
    fn bytes(&self) -> [u8; HEADER_LEN as usize] {
        let text = format!("{MAGIC} {:016x} {:016x}", self.start, self.end);
        let mut b = [b' '; HEADER_LEN as usize];
        b[..text.len()].copy_from_slice(text.as_bytes());
        b[HEADER_LEN as usize - 1] = b'\n';
        b
    }

    /// The header at the start of `data`; `None` for a file without one
    /// (empty, or a log from before the header). A header that starts
    /// with the magic word and does not parse is corrupt.
    fn parse(data: &[u8]) -> Result<Option<Header>, StateError> {
        if !data.starts_with(MAGIC.as_bytes()) {
            return Ok(None);
        }
        let corrupt = || StateError::Corrupt {
            line: 0,
            text: String::from_utf8_lossy(&data[..data.len().min(HEADER_LEN as usize)])
                .into_owned(),
        };
        let text = data
            .get(..HEADER_LEN as usize)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or_else(corrupt)?;
        let w: Vec<&str> = text.split_whitespace().collect();
        let hex = |s: &str| u64::from_str_radix(s, 16).ok();
        match w[..] {
            [_, _, start, end] => {
                let h = Header {
                    start: hex(start).ok_or_else(corrupt)?,
                    end: hex(end).ok_or_else(corrupt)?,
                };
                if h.start < HEADER_LEN || (h.end != 0 && h.end < h.start) {
                    return Err(corrupt());
                }
                Ok(Some(h))
            }
            _ => Err(corrupt()),
        }
    }
}

/// The line that ends a log (see the module's doc).
const CUT: &str = "cut\n";

/// The steps of a compaction, for the tests' fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The first this many bytes of the snapshot (and what precedes it)
    /// written.
    #[cfg(test)]
    Partial(usize),
    /// The whole snapshot written and synced.
    Written,
    /// The header points at the snapshot.
    Flipped,
    /// The file cut after a front snapshot.
    Truncated,
}

/// The open state file.
#[derive(Debug)]
pub struct StateFile {
    file: File,
    /// Where the live log starts.
    start: u64,
    /// The end of the file, where the next record goes.
    len: u64,
    /// Records in the log.
    records: usize,
    /// Tests: the compaction step after which the "kill" comes.
    #[cfg(test)]
    kill_after: Option<Step>,
}

impl StateFile {
    /// Reads `file` (opened read-write) and returns the table it holds;
    /// the log is then compacted.
    pub fn load(file: File) -> Result<(StateFile, Table), StateError> {
        let (mut f, table) = StateFile::read(file)?;
        // Start from a compact file: the snapshot of what was read.
        f.rewrite(&table)?;
        Ok((f, table))
    }

    /// The table in `file`, whose interrupted compaction (if any) is
    /// finished.
    fn read(mut file: File) -> Result<(StateFile, Table), StateError> {
        let mut data = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut data)?;
        let (start, log) = match Header::parse(&data)? {
            Some(h) => {
                if h.end != 0 && (data.len() as u64) > h.end {
                    // A compaction killed before its step 4.
                    file.set_len(h.end)?;
                    data.truncate(h.end as usize);
                }
                let from = (h.start as usize).min(data.len());
                (h.start, &data[from..])
            }
            None => (0, &data[..]),
        };
        let text = std::str::from_utf8(log).map_err(|_| StateError::Corrupt {
            line: 0,
            text: "not UTF-8".into(),
        })?;
        let table = Table::replay(text)?;
        Ok((StateFile::over(file, start, data.len() as u64), table))
    }

    /// Empties `file` and starts a new log in it.
    pub fn load_empty(file: File) -> Result<StateFile, StateError> {
        file.set_len(0)?;
        let mut f = StateFile::over(file, 0, 0);
        f.rewrite(&Table::new())?;
        Ok(f)
    }

    fn over(file: File, start: u64, len: u64) -> StateFile {
        StateFile {
            file,
            start,
            len,
            records: 0,
            #[cfg(test)]
            kill_after: None,
        }
    }

    /// Appends records.
    pub fn append(&mut self, records: &[Record]) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        let text: String = records.iter().map(Record::line).collect();
        self.file.write_all_at(text.as_bytes(), self.len)?;
        self.len += text.len() as u64;
        self.records += records.len();
        Ok(())
    }

    /// Compacts the log to `table`'s snapshot when it holds more than
    /// twice the live records (and a few).
    pub fn maybe_compact(&mut self, table: &Table) -> Result<(), StateError> {
        if self.records > 2 * table.live() + 64 {
            self.rewrite(table)?;
        }
        Ok(())
    }

    /// Replaces the log with `table`'s snapshot, crash-safely (the steps
    /// are in the module's doc).
    pub fn rewrite(&mut self, table: &Table) -> Result<(), StateError> {
        let snap = table.snapshot();
        let text: String = snap.iter().map(Record::line).collect();
        let len = text.len() as u64;
        let front = self.start >= HEADER_LEN && HEADER_LEN + len <= self.start;
        let (at, mut bytes) = if front {
            (HEADER_LEN, String::new())
        } else {
            // After the log; a file shorter than the header (one from
            // before it) is padded with empty lines up to it.
            let pad = HEADER_LEN.saturating_sub(self.len) as usize;
            (self.len, format!("{}{CUT}", "\n".repeat(pad)))
        };
        let start = at + bytes.len() as u64;
        bytes.push_str(&text);
        #[cfg(test)]
        if let Some(Step::Partial(n)) = self.kill_after {
            let n = n.min(bytes.len());
            self.file.write_all_at(&bytes.as_bytes()[..n], at)?;
            return Err(killed());
        }
        self.file.write_all_at(bytes.as_bytes(), at)?;
        self.file.sync_data()?;
        self.step_done(Step::Written)?;
        let end = if front { start + len } else { 0 };
        self.file.write_all_at(&Header { start, end }.bytes(), 0)?;
        self.step_done(Step::Flipped)?;
        if front {
            self.file.set_len(end)?;
            self.step_done(Step::Truncated)?;
            self.file
                .write_all_at(&Header { start, end: 0 }.bytes(), 0)?;
        }
        self.start = start;
        self.len = start + len;
        self.records = snap.len();
        Ok(())
    }

    /// Tests: ends the compaction as a kill would after `step`.
    #[cfg(test)]
    fn step_done(&self, step: Step) -> Result<(), StateError> {
        if self.kill_after == Some(step) {
            return Err(killed());
        }
        Ok(())
    }

    #[cfg(not(test))]
    fn step_done(&self, _step: Step) -> Result<(), StateError> {
        Ok(())
    }
}

/// Tests: a new, empty state file (read-write) in the temporary directory,
/// named after `tag` and the process.
#[cfg(test)]
pub(crate) fn temp_state_file(tag: &str) -> (std::path::PathBuf, File) {
    let path = std::env::temp_dir().join(format!("vfsd-{tag}-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    (path, f)
}

/// The error a fault-injected kill ends a compaction with.
#[cfg(test)]
fn killed() -> StateError {
    StateError::Io(std::io::Error::other("killed (fault injection)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Record> {
        vec![
            Record::Init(0x1234_5678_9abc),
            Record::Node {
                id: 2,
                parent: 1,
                name: b"a b\n\xff".to_vec(),
                dev: 8,
                ino: 99,
            },
            Record::Ref(2, 3),
            Record::Move {
                id: 2,
                parent: 1,
                name: b"c".to_vec(),
            },
            Record::Open {
                fh: 7,
                node: 2,
                flags: libc::O_RDWR as u32,
                dir: false,
            },
            Record::Open {
                fh: 8,
                node: 1,
                flags: 0,
                dir: true,
            },
            Record::Release(8),
            Record::Forget(2, 1),
            Record::Detach(2),
            Record::Destroy,
        ]
    }

    #[test]
    fn every_record_reads_back_as_written() {
        for r in all_kinds() {
            let line = r.line();
            assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            assert_eq!(Record::parse(line.trim_end()), Some(r));
        }
    }

    #[test]
    fn lines_that_are_no_record_are_refused() {
        for bad in [
            "",
            "node 2 1 8 99",
            "node 2 1 8 99 61",
            "node 2 1 8 99 x6",
            "node 2 1 8 99 xzz",
            "ref 2",
            "ref -1 2",
            "open 1 2 4294967296 0",
            "open 1 2 0 2",
            "init 1 2",
            "hello",
        ] {
            assert_eq!(Record::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_table_counts_lookups_and_drops_forgotten_nodes() {
        let mut t = Table::new();
        let recs = &all_kinds()[..8];
        for r in recs {
            assert!(t.apply(r), "{r:?}");
        }
        assert_eq!(t.init, Some(0x1234_5678_9abc));
        let n = &t.nodes[&2];
        assert_eq!((n.nlookup, n.parent, &n.name[..]), (3, 1, &b"c"[..]));
        assert_eq!(t.handles.len(), 1);
        assert_eq!(t.handles[&7].node, 2);
        assert_eq!((t.next_node, t.next_fh), (3, 9));
        assert!(t.apply(&Record::Forget(2, 3)));
        assert!(t.nodes.is_empty());
        assert!(!t.apply(&Record::Forget(2, 1)), "unknown node");
        assert!(!t.apply(&Record::Release(8)), "released twice");
    }

    #[test]
    fn a_snapshot_rebuilds_the_same_table() {
        let mut t = Table::new();
        for r in &all_kinds()[..9] {
            t.apply(r);
        }
        let text: String = t.snapshot().iter().map(Record::line).collect();
        let back = Table::replay(&text).unwrap();
        assert_eq!(back.nodes, t.nodes);
        assert_eq!(back.handles, t.handles);
        assert_eq!(back.init, t.init);
        assert!(back.nodes[&2].detached);
    }

    #[test]
    fn replay_ignores_a_cut_last_line_and_refuses_garbage_before_it() {
        let good = "init 5\nnode 2 1 0 0 x61\n";
        let t = Table::replay(&format!("{good}ref 2")).unwrap();
        assert_eq!(t.nodes[&2].nlookup, 1);
        let e = Table::replay(&format!("init 5\nbogus\n{good}")).unwrap_err();
        assert!(matches!(e, StateError::Corrupt { line: 2, .. }), "{e}");
        // No INIT: nothing to resume.
        assert_eq!(Table::replay("node 2 1 0 0 x61\n").unwrap(), Table::new());
        assert_eq!(Table::replay("init 5\ndestroy\n").unwrap(), Table::new());
    }

    /// A state file in a fresh temporary file.
    fn temp_file(name: &str) -> File {
        let (path, f) = temp_state_file(name);
        std::fs::remove_file(&path).unwrap();
        f
    }

    /// A session of a few nodes (one looked up twice, one detached) and
    /// handles, applied to `t` and logged to `f`, then `churn` handles
    /// opened and released.
    fn log_session(f: &mut StateFile, t: &mut Table, churn: u64) {
        let mut log = vec![Record::Init(7)];
        for id in 2..12u64 {
            log.push(Record::Node {
                id,
                parent: ROOT,
                name: format!("n{id}").into_bytes(),
                dev: 8,
                ino: 100 + id,
            });
            log.push(Record::Open {
                fh: id,
                node: id,
                flags: 2,
                dir: false,
            });
        }
        log.extend([Record::Ref(3, 4), Record::Detach(5), Record::Release(6)]);
        for i in 0..churn {
            log.push(Record::Open {
                fh: 100 + i,
                node: ROOT,
                flags: 0,
                dir: true,
            });
            log.push(Record::Release(100 + i));
        }
        for r in &log {
            t.apply(r);
            f.append(std::slice::from_ref(r)).unwrap();
        }
    }

    /// The session's content (a snapshot does not keep the next ids to
    /// give out past the highest live one).
    fn assert_same(got: &Table, want: &Table, what: &str) {
        assert_eq!(got.init, want.init, "{what}");
        assert_eq!(got.nodes, want.nodes, "{what}");
        assert_eq!(got.handles, want.handles, "{what}");
    }

    /// A kill at each step of a compaction, with the snapshot at the end of
    /// the file and at its front, and converting a file from before the
    /// header: the next load finds the whole session, and the file goes
    /// on working (records appended after it, loaded again).
    #[test]
    fn a_kill_at_any_step_of_a_compaction_loses_nothing() {
        // Cut short at every few bytes, then after each step; only a
        // snapshot at the front has the file cut after it.
        let mut end_steps: Vec<_> = (0..600)
            .step_by(7)
            .map(|n| Some(Step::Partial(n)))
            .collect();
        end_steps.extend([None, Some(Step::Written), Some(Step::Flipped)]);
        let steps = [&end_steps[..], &[Some(Step::Truncated)]].concat();
        for front in [false, true] {
            for &kill in if front { &steps } else { &end_steps } {
                let file = temp_file("compact");
                let (mut f, mut t) = StateFile::load(file.try_clone().unwrap()).unwrap();
                log_session(&mut f, &mut t, 40);
                if front {
                    // The log moves to the end of the file; the front now
                    // has room for a snapshot.
                    f.rewrite(&t).unwrap();
                    log_session(&mut f, &mut t, 40);
                }
                f.kill_after = kill;
                let r = f.rewrite(&t);
                assert_eq!(r.is_err(), kill.is_some(), "front {front}, kill {kill:?}");
                if kill.is_none() {
                    assert_eq!(f.start == HEADER_LEN, front, "where the snapshot went");
                }
                drop(f);
                let (mut f, back) = StateFile::load(file.try_clone().unwrap()).unwrap();
                assert_same(&back, &t, &format!("front {front}, kill {kill:?}"));
                let more = Record::Ref(2, 1);
                t.apply(&more);
                f.append(&[more]).unwrap();
                drop(f);
                let (_, again) = StateFile::load(file).unwrap();
                assert_same(
                    &again,
                    &t,
                    &format!("appended after, front {front}, kill {kill:?}"),
                );
            }
        }
        // A file from before the header, short and long.
        for churn in [0, 40] {
            for &kill in &end_steps {
                let mut file = temp_file("legacy");
                let mut t = Table::new();
                let mut f = StateFile::over(file.try_clone().unwrap(), 0, 0);
                log_session(&mut f, &mut t, churn);
                if churn == 0 {
                    // Shorter than a header.
                    file.set_len(0).unwrap();
                    std::io::Write::write_all(&mut file, b"init 7\n").unwrap();
                    t = Table::replay("init 7\n").unwrap();
                }
                let (mut f, back) = StateFile::read(file.try_clone().unwrap()).unwrap();
                assert_same(&back, &t, "legacy, read");
                f.kill_after = kill;
                assert_eq!(f.rewrite(&t).is_err(), kill.is_some());
                drop(f);
                let (_, back) = StateFile::load(file).unwrap();
                assert_same(&back, &t, &format!("legacy, {churn} churn, kill {kill:?}"));
            }
        }
    }

    #[test]
    fn a_damaged_header_is_corrupt_not_a_log() {
        let h = Header { start: 64, end: 0 }.bytes();
        assert_eq!(
            Header::parse(&h).unwrap(),
            Some(Header { start: 64, end: 0 })
        );
        assert_eq!(Header::parse(b"init 5\n").unwrap(), None);
        let mut bad = h;
        bad[20] = b'z';
        assert!(Header::parse(&bad).is_err());
        let below = Header { start: 8, end: 0 }.bytes();
        assert!(Header::parse(&below).is_err(), "a log inside the header");
    }

    #[test]
    fn the_file_is_compacted_to_what_is_live() {
        let path = std::env::temp_dir().join(format!("vfsd-state-{}", std::process::id()));
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .unwrap()
        };
        let (mut f, mut t) = StateFile::load(open()).unwrap();
        assert_eq!(t, Table::new());
        let mut log = vec![Record::Init(3)];
        for i in 0..500u64 {
            log.push(Record::Open {
                fh: i + 1,
                node: ROOT,
                flags: 0,
                dir: true,
            });
            log.push(Record::Release(i + 1));
        }
        log.push(Record::Open {
            fh: 9999,
            node: ROOT,
            flags: 2,
            dir: false,
        });
        for r in &log {
            t.apply(r);
            f.append(std::slice::from_ref(r)).unwrap();
            f.maybe_compact(&t).unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len < 4096, "{len} bytes for one handle");
        let (_, back) = StateFile::load(open()).unwrap();
        assert_eq!(back.handles.keys().collect::<Vec<_>>(), vec![&9999]);
        assert_eq!(back.init, Some(3));
        std::fs::remove_file(&path).unwrap();
    }
}
