//! Helpers shared by the `fs` test modules: our `virtiofsd` sharing a
//! fresh directory, a connected client, host-side snapshots of the share,
//! and the checks every file repeats.
//!
//! The share is `<top>/share`, so a name that escapes it (`..`) lands in
//! `<top>`, a temporary directory a test can inspect, never elsewhere on the
//! host.

mod host;
mod names;

pub use host::*;
pub use names::bad_name_matrix;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{Attr, EntryOut, OpenOut, ROOT_ID};
use vu_driver::fixture::{Daemon, TempDir};
use vu_driver::fs::{FsClient, FsError, FsOptions, Layout};
use vu_driver::ours::{spawn_virtiofsd, virtiofsd_command};

/// How long one request may take.
pub const T: Duration = Duration::from_secs(10);
/// What every test passes until it is about the sandbox: no sandbox, no
/// seccomp filter.
pub const NO_SANDBOX: [&str; 4] = ["--sandbox", "none", "--seccomp", "none"];

/// A running daemon over `<top>/share`.
pub struct Running {
    /// The daemon (stopped, with its log printed on failure, on drop).
    pub daemon: Daemon,
    /// The shared directory on the host.
    pub share: PathBuf,
    /// `<top>`: the share's parent, where escapes would land.
    pub top: PathBuf,
    /// The vhost-user socket.
    pub socket: PathBuf,
    _top: TempDir,
    _sock_dir: TempDir,
}

/// A fresh `<top>/share` and a socket path, for tests that spawn the
/// daemon themselves.
pub struct Dirs {
    /// The temporary `<top>` directory.
    pub top: TempDir,
    /// `<top>/share`.
    pub share: PathBuf,
    /// The socket's directory.
    pub sock_dir: TempDir,
    /// `<sock_dir>/fs.sock`.
    pub socket: PathBuf,
}

impl Dirs {
    /// Creates the directories; `populate` fills the share before the
    /// daemon sees it.
    pub fn new() -> Self {
        let top = TempDir::new("vutest-fsd").unwrap();
        let share = top.join("share");
        fs::create_dir(&share).unwrap();
        let sock_dir = TempDir::new("vutest-fsd-sock").unwrap();
        let socket = sock_dir.join("fs.sock");
        Dirs {
            top,
            share,
            sock_dir,
            socket,
        }
    }

    /// The `virtiofsd` command for these directories.
    pub fn command(&self, args: &[&str]) -> Command {
        virtiofsd_command(&self.share, &self.socket, args).unwrap()
    }

    /// Spawns `cmd` (from [`Dirs::command`], perhaps changed) and waits
    /// until it is ready.
    pub fn spawn(self, cmd: Command) -> Running {
        let daemon = spawn_virtiofsd(cmd, &self.socket).unwrap();
        Running {
            daemon,
            share: self.share,
            top: self.top.path().to_path_buf(),
            socket: self.socket,
            _top: self.top,
            _sock_dir: self.sock_dir,
        }
    }
}

impl Default for Dirs {
    fn default() -> Self {
        Self::new()
    }
}

/// `args` with [`NO_SANDBOX`] in front unless they choose a sandbox or a
/// seccomp mode themselves.
pub fn with_defaults<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = Vec::new();
    if !args.iter().any(|a| a.starts_with("--sandbox")) {
        v.extend_from_slice(&NO_SANDBOX[..2]);
    }
    if !args.iter().any(|a| a.starts_with("--seccomp")) {
        v.extend_from_slice(&NO_SANDBOX[2..]);
    }
    v.extend_from_slice(args);
    v
}

/// Our virtiofsd over a share that `populate` fills first, with `args`
/// (see [`with_defaults`]).
pub fn run_with(args: &[&str], populate: impl FnOnce(&Path)) -> Running {
    let dirs = Dirs::new();
    populate(&dirs.share);
    let cmd = dirs.command(&with_defaults(args));
    dirs.spawn(cmd)
}

/// Our virtiofsd over an empty share with `args` (see [`with_defaults`]).
pub fn run(args: &[&str]) -> Running {
    run_with(args, |_| {})
}

/// A client connected to `r` with `opts`.
pub fn connect(r: &Running, opts: FsOptions) -> FsClient {
    FsClient::connect(&r.socket, opts).unwrap()
}

/// A daemon and a connected, initialised client. Fields drop in order: the
/// client disconnects before the daemon is stopped.
pub struct Setup {
    /// The client.
    pub fs: FsClient,
    /// The daemon and its directories.
    pub run: Running,
}

impl Setup {
    /// The shared directory on the host.
    pub fn share(&self) -> &Path {
        &self.run.share
    }
    /// A path inside the share.
    pub fn host(&self, rel: &str) -> PathBuf {
        self.run.share.join(rel)
    }
}

/// [`run_with`] plus a client with the default options.
pub fn start_with(args: &[&str], populate: impl FnOnce(&Path)) -> Setup {
    let run = run_with(args, populate);
    let fs = connect(&run, FsOptions::default());
    Setup { fs, run }
}

/// [`run`] plus a client with the default options.
pub fn start(args: &[&str]) -> Setup {
    start_with(args, |_| {})
}

/// Deterministic test data that differs per seed and per offset.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// MKDIR `dir` (0750) in the root, checked against the host, and in it
/// `a.txt` created write-only (0600) with `pattern(3000, 1)` written and
/// fsynced (data only, then all): the directory, the file, its open handle.
pub fn dir_with_a_written_file(fs: &mut FsClient, share: &Path) -> (EntryOut, EntryOut, OpenOut) {
    let dir = fs.mkdir(ROOT_ID, "dir", 0o750).unwrap();
    let dmeta = fs::metadata(share.join("dir")).unwrap();
    assert!(dmeta.is_dir());
    assert_eq!(dmeta.mode() & 0o777, 0o750);
    assert_eq!(dir.attr.ino, dmeta.ino());
    let (f, open) = fs
        .create(dir.nodeid, "a.txt", libc::S_IFREG | 0o600, libc::O_WRONLY)
        .unwrap();
    fs.write(open.fh, f.nodeid, 0, &pattern(3000, 1)).unwrap();
    fs.fsync(open.fh, f.nodeid, false).unwrap();
    fs.fsync(open.fh, f.nodeid, true).unwrap();
    (dir, f, open)
}

/// GETATTR's inode, size, mode, links and owner are the host's.
pub fn assert_attr_is_host(got: &Attr, host: &fs::Metadata) {
    assert_eq!(
        (got.ino, got.size, got.mode, got.nlink, got.uid, got.gid),
        (
            host.ino(),
            host.len(),
            host.mode(),
            host.nlink() as u32,
            host.uid(),
            host.gid()
        )
    );
}

/// The errno of a failed request; panics on success or on a transport
/// error (a timeout, a malformed reply), naming `what`.
pub fn errno_of<T: std::fmt::Debug>(what: &str, r: Result<T, FsError>) -> i32 {
    match r {
        Err(e) => e
            .errno()
            .unwrap_or_else(|| panic!("{what}: expected an errno, got {e:?}")),
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
    }
}

/// Asserts that `r` failed with `errno`.
pub fn assert_errno<T: std::fmt::Debug>(what: &str, r: Result<T, FsError>, errno: i32) {
    let got = errno_of(what, r);
    assert_eq!(
        got,
        errno,
        "{what}: errno {got} ({}), expected {errno} ({})",
        std::io::Error::from_raw_os_error(got),
        std::io::Error::from_raw_os_error(errno)
    );
}

/// Checks that the daemon still answers a valid request (GETATTR of the
/// root, which must be the share) and is still running.
pub fn still_serving(fs: &mut FsClient, daemon: &mut Daemon, share: &Path, what: &str) {
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "after {what}: the daemon exited"
    );
    let a = fs
        .getattr(ROOT_ID, None)
        .unwrap_or_else(|e| panic!("after {what}: GETATTR of the root: {e}"));
    let host = fs::metadata(share).unwrap();
    assert_eq!(
        a.attr.ino,
        host.ino(),
        "after {what}: root is not the share"
    );
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "after {what}: the daemon exited"
    );
}

/// Waits up to [`T`] for the daemon to exit by itself with 0; `what` and
/// the last `n` lines of its log are shown if it does not.
pub fn assert_exits_zero(daemon: &mut Daemon, what: &str, n: usize) {
    let status = daemon.wait_timeout(T).unwrap();
    assert!(
        status.is_some_and(|s| s.code() == Some(0)),
        "{what}: {status:?}; log:\n{}",
        log_tail(daemon, n)
    );
}

/// The descriptor layouts every 1 MiB round trip is tried under: Linux's,
/// one descriptor, and two fragmentations (4 KiB chunks, and chunks just
/// over 64 KiB).
pub fn big_request_layouts() -> Vec<Layout> {
    vec![
        Layout::Linux,
        Layout::Single,
        Layout::Fragmented {
            chunk: 4096,
            gap: 64,
        },
        Layout::Fragmented {
            chunk: 65536 + 512,
            gap: 4096,
        },
    ]
}

/// With every earlier lookup of `f` (holding `forget me`) forgotten: looks
/// it up afresh, opens and reads it, then sends 600 LOOKUP + FORGET pairs
/// without waiting (the FORGET slots are recycled); the open file still
/// has its 9 bytes. Returns its node id and file handle.
pub fn forget_storm(fs: &mut FsClient) -> (u64, u64) {
    let e = fs.lookup(ROOT_ID, "f").unwrap();
    let fh = fs.open(e.nodeid, libc::O_RDONLY).unwrap().fh;
    assert_eq!(fs.read(fh, e.nodeid, 0, 100).unwrap(), b"forget me");
    for _ in 0..600 {
        fs.lookup(ROOT_ID, "f").unwrap();
        fs.forget(e.nodeid, 1).unwrap();
    }
    fs.wait_forgets().unwrap();
    assert_eq!(fs.getattr(e.nodeid, Some(fh)).unwrap().attr.size, 9);
    (e.nodeid, fh)
}

/// The last `n` lines of a daemon's log, for failure messages.
pub fn log_tail(daemon: &Daemon, n: usize) -> String {
    let log = daemon.log_contents();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Failures collected over many sub-cases, so one test reports all of
/// them at once instead of stopping at the first.
#[derive(Debug, Default)]
pub struct Failures(Vec<String>);

impl Failures {
    /// Records `msg` unless `ok`.
    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(msg());
        }
    }
    /// Records `msg`.
    pub fn push(&mut self, msg: String) {
        self.0.push(msg);
    }
    /// Expects `r` to be an errno reply; records anything else.
    pub fn expect_errno<T: std::fmt::Debug>(&mut self, what: &str, r: Result<T, FsError>) {
        match r {
            Err(e) if e.errno().is_some() => {}
            Err(e) => self.0.push(format!("{what}: not an errno: {e}")),
            Ok(v) => self.0.push(format!("{what}: succeeded ({v:?})")),
        }
    }
    /// Panics with every recorded failure, if any.
    pub fn assert_none(&self, context: &str) {
        assert!(
            self.0.is_empty(),
            "{} failure(s) {context}:\n  {}",
            self.0.len(),
            self.0.join("\n  ")
        );
    }
}
