//! The process sandbox a daemon enters before it serves a guest, after the
//! Rust virtiofsd's `sandbox.rs` (and QEMU's C virtiofsd before it):
//!
//! - [`enter_namespaces`]: new pid, mount, network, IPC and UTS namespaces; the
//!   process forks, the parent stays outside as a supervisor that forwards
//!   signals and exits with the child's status, the child serves.
//! - [`prepare_root`] and [`pivot`]: the root becomes a read-only tmpfs
//!   holding only the share (at [`NAMESPACE_SHARE`]) and this pid
//!   namespace's `/proc`, or (`chroot`) the share itself; nothing else on
//!   the host is reachable by path, and symlinks the guest plants resolve
//!   inside the sandbox.
//! - [`drop_supplementary_groups`] (CVE-2022-0358), [`limit_capabilities`],
//!   [`raise_nofile_limit`] (a known bound, CVE-2020-10717).
//!
//! The order a daemon calls them in:
//!
//! 1. before [`enter_namespaces`]: [`crate::systemd::connect`] (the new
//!    network namespace hides abstract sockets) and the SIGTERM/SIGINT
//!    handler ([`crate::signals::Shutdown`]: the child inherits it, and as
//!    PID 1 it ignores signals it has no handler for); no threads yet;
//! 2. [`enter_namespaces`], then in the child [`raise_nofile_limit`] and
//!    binding the listening socket;
//! 3. [`prepare_root`], [`pivot`], then open the share at the path
//!    [`pivot`] returns. In chroot mode, open what is needed from `/proc`
//!    (`/proc/self/fd`) between the two: it is out of reach afterwards;
//! 4. [`drop_supplementary_groups`], [`limit_capabilities`], and
//!    [`crate::seccomp::apply`] last, still before serving starts threads.
//!
//! Every function here acts on the calling process (and, for capabilities,
//! the calling thread); none of them is meant for a process that already
//! runs worker threads.

use std::ffi::{CStr, CString};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use nix::poll::{poll, PollFd, PollFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{kill, pthread_sigmask, signal, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, CapsHashSet};
use clap::ValueEnum;

use crate::seccomp::SeccompAction;
use crate::socket::BoundSocket;
use crate::BoxError;

/// The capability names [`limit_capabilities`] takes (from the `caps`
/// crate), re-exported so daemons need not depend on it.
pub use caps::Capability;

/// The soft `RLIMIT_NOFILE` [`raise_nofile_limit`] aims for by default: what
/// the Rust virtiofsd uses. Each guest inode held open costs a host file
/// descriptor; a bound keeps a guest from exhausting the host's
/// (CVE-2020-10717), and the daemon reports `EMFILE` to the guest instead.
pub const DEFAULT_NOFILE: u64 = 1_000_000;

/// The signals the supervising parent of [`enter_namespaces`] forwards to
/// the sandboxed child.
pub const FORWARDED_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// How the daemon isolates itself (`--sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    /// New pid, mount, network, IPC and UTS namespaces; `pivot_root` into a
    /// read-only root holding only the share and this namespace's `/proc`.
    /// Needs CAP_SYS_ADMIN.
    Namespace,
    /// `chroot` into the shared directory. Needs CAP_SYS_CHROOT; weaker
    /// (no private mounts, no pid or network isolation).
    Chroot,
    /// No isolation: for running unprivileged or inside a container that
    /// already is the sandbox.
    None,
}

impl fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::cli::write_value_name(self, f)
    }
}

/// Errors setting up the sandbox; each names the call and the path.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Counting our threads failed.
    #[error("cannot count this process's threads in /proc/self/task: {0}")]
    CountThreads(#[source] io::Error),
    /// Threads already run: unshare(CLONE_NEWNS) and fork need one thread.
    #[error("the {mode} sandbox must be entered before any thread is started, but this process already runs {threads} threads")]
    Threaded {
        /// The mode asked for.
        mode: SandboxMode,
        /// Threads counted in /proc/self/task.
        threads: usize,
    },
    /// unshare(2) failed.
    #[error("cannot create new pid, mount, network, IPC and UTS namespaces (unshare needs CAP_SYS_ADMIN; use --sandbox chroot or none otherwise): {0}")]
    Unshare(#[source] io::Error),
    /// Blocking signals or creating the parent-death pipe failed.
    #[error("cannot prepare the sandbox supervisor ({what}): {source}")]
    Supervisor {
        /// The call that failed.
        what: &'static str,
        /// Cause.
        source: io::Error,
    },
    /// fork(2) failed.
    #[error("cannot fork the sandboxed process: {0}")]
    Fork(#[source] io::Error),
    /// The supervising parent died before the child could arrange to die
    /// with it.
    #[error("the sandbox's supervising parent exited before the sandboxed process started")]
    ParentGone,
    /// Listing or closing the inherited descriptors failed.
    #[error("cannot close inherited descriptors: {0}")]
    CloseInherited(#[source] io::Error),
    /// A path cannot be passed to the kernel.
    #[error("path {0} contains a NUL byte")]
    NulInPath(PathBuf),
    /// A mount(2) or umount2(2) call failed.
    #[error("cannot {what} {path}: {source}")]
    Mount {
        /// What the call was meant to do.
        what: &'static str,
        /// The mount point.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// The namespace sandbox cannot cover `/` with its root.
    #[error("the namespace sandbox cannot share / itself (use --sandbox none)")]
    ShareIsRoot,
    /// chdir(2) failed.
    #[error("cannot change directory to {path}: {source}")]
    Chdir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// pivot_root(2) failed.
    #[error("cannot make {path} the root directory (pivot_root): {source}")]
    PivotRoot {
        /// The new root.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// chroot(2) failed.
    #[error("cannot chroot into {path}: {source}")]
    Chroot {
        /// The new root.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// getgroups(2) failed.
    #[error("cannot read the supplementary groups: {0}")]
    GetGroups(#[source] io::Error),
    /// setgroups(2) failed.
    #[error("cannot drop the {count} supplementary groups (setgroups needs CAP_SETGID): {source}")]
    SetGroups {
        /// How many groups the process has.
        count: usize,
        /// Cause.
        source: io::Error,
    },
    /// Reading or changing a capability set failed.
    #[error("cannot {what}: {source}")]
    Capabilities {
        /// What was being done.
        what: String,
        /// Cause.
        source: caps::errors::CapsError,
    },
    /// getrlimit(2) failed.
    #[error("cannot read RLIMIT_NOFILE: {0}")]
    GetNofile(#[source] io::Error),
    /// The requested limit is above the kernel's fs.nr_open.
    #[error("cannot raise RLIMIT_NOFILE to {requested}: the kernel allows at most {max} (/proc/sys/fs/nr_open)")]
    NofileAboveMax {
        /// What was asked for.
        requested: u64,
        /// fs.nr_open.
        max: u64,
    },
    /// setrlimit(2) failed.
    #[error("cannot set RLIMIT_NOFILE to soft {soft} / hard {hard} (raising the hard limit needs CAP_SYS_RESOURCE): {source}")]
    SetNofile {
        /// Soft limit asked for.
        soft: u64,
        /// Hard limit asked for.
        hard: u64,
        /// Cause.
        source: io::Error,
    },
}

fn cstring(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| SandboxError::NulInPath(path.into()))
}

/// How many threads this process runs.
fn thread_count() -> Result<usize, SandboxError> {
    let dir = std::fs::read_dir("/proc/self/task").map_err(SandboxError::CountThreads)?;
    let mut n = 0;
    for entry in dir {
        entry.map_err(SandboxError::CountThreads)?;
        n += 1;
    }
    Ok(n)
}

fn sigset(signals: &[Signal]) -> SigSet {
    let mut set = SigSet::empty();
    for &s in signals {
        set.add(s);
    }
    set
}

fn sigmask(how: SigmaskHow, set: &SigSet) -> io::Result<SigSet> {
    let mut old = SigSet::empty();
    pthread_sigmask(how, Some(set), Some(&mut old))?;
    Ok(old)
}

/// Moves the process into new pid, mount, network, IPC and UTS namespaces
/// ([`SandboxMode::Namespace`]; other modes do nothing).
///
/// A new pid namespace applies to children only, so this forks: the
/// **parent never returns**. It stays outside, forwards SIGTERM, SIGINT
/// and SIGHUP to the child, waits for it and exits with its status (the
/// exit code, or 128 + the signal that killed it), so a supervisor sees one
/// process that behaves like the daemon. The **child returns `Ok`**: it is
/// PID 1 of the new pid namespace, and gets SIGTERM if the parent dies
/// (which, as PID 1, it only acts on once it has a handler).
///
/// Call it early, before any thread is started (it fails otherwise:
/// neither unshare(CLONE_NEWNS) nor fork can carry threads along) and
/// before opening anything the parent should not hold. Before it:
/// - install the SIGTERM/SIGINT handler ([`crate::signals::Shutdown`]): the
///   child inherits it, and as PID 1 discards signals it has no handler
///   for (pid_namespaces(7)); the parent keeps the signals blocked and
///   forwards them;
/// - connect to systemd's notify socket ([`crate::systemd::connect`]): the
///   new network namespace hides abstract Unix sockets. Path-bound sockets
///   stay reachable until [`pivot`].
///
/// `at_exit` is what only a process outside the sandbox can do once the
/// daemon is done (remove the socket file through a descriptor of its
/// directory, which must not follow the child into the sandbox): the
/// parent runs it after the child ended, or this process if it fails
/// before forking; the child drops it unrun. Other modes drop it unrun.
pub fn enter_namespaces<F: FnOnce()>(mode: SandboxMode, at_exit: F) -> Result<(), SandboxError> {
    if mode != SandboxMode::Namespace {
        return Ok(());
    }
    match fork_into_namespaces(mode) {
        Ok(Some((child, waited, alive))) => supervise(child, &waited, alive, at_exit),
        Ok(None) => Ok(()),
        Err((e, forked)) => {
            if !forked {
                at_exit();
            }
            Err(e)
        }
    }
}

/// Maps `uid` and `gid` to 0 in the user namespace just made (setgroups
/// denied first, as an unprivileged process must).
fn map_ids(uid: u32, gid: u32) -> io::Result<()> {
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| io::Error::new(e.kind(), format!("/proc/self/{file}: {e}")))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1"))?;
    write("gid_map", format!("0 {gid} 1"))
}

/// The child's parent, and what it waits with.
type Supervisor = (Pid, SigSet, UnixStream);

/// [`enter_namespaces`] up to the fork: `Some` in the parent, `None` in
/// the child; an error says whether it came after the fork (in the child).
fn fork_into_namespaces(mode: SandboxMode) -> Result<Option<Supervisor>, (SandboxError, bool)> {
    let before = |e| (e, false);
    let threads = thread_count().map_err(before)?;
    if threads != 1 {
        return Err(before(SandboxError::Threaded { mode, threads }));
    }
    // Not root: a user namespace of our own first (our uid and gid mapped
    // to 0 inside), where making the others needs no privilege on the host.
    let uid = nix::unistd::geteuid();
    let gid = nix::unistd::getegid();
    let userns = !uid.is_root();
    // IPC and UTS too: no System V or POSIX message queue objects of the
    // host, and a host name the jail cannot change for anyone else.
    let mut flags = CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if userns {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    unshare(flags).map_err(|e| before(SandboxError::Unshare(e.into())))?;
    if userns {
        map_ids(uid.as_raw(), gid.as_raw()).map_err(|e| before(SandboxError::Unshare(e)))?;
    }

    let supervisor = |what| move |source| SandboxError::Supervisor { what, source };
    // The parent finds out its child ended through SIGCHLD: it must not be
    // ignored, or the kernel reaps the child and its status is lost.
    // SAFETY: restores the default disposition of one signal; no handler
    // function is involved.
    if let Err(e) = unsafe { signal(Signal::SIGCHLD, SigHandler::SigDfl) } {
        return Err(before(supervisor("reset SIGCHLD")(e.into())));
    }
    // Block the forwarded signals before forking, so one arriving between
    // fork and the parent's sigwait is kept pending, not lost or acted
    // upon by its default action.
    let mut waited = FORWARDED_SIGNALS.to_vec();
    waited.push(Signal::SIGCHLD);
    let waited = sigset(&waited);
    let old_mask = sigmask(SigmaskHow::SIG_BLOCK, &waited)
        .map_err(|e| before(supervisor("block signals")(e)))?;

    // The parent holds one end until it exits; the child sees the hang-up
    // on the other once the parent is gone.
    let (alive_r, alive_w) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => {
            let _ = sigmask(SigmaskHow::SIG_SETMASK, &old_mask);
            return Err(before(supervisor("create the parent-death socket")(e)));
        }
    };

    // SAFETY: the process has one thread (checked above), so the child is a
    // complete copy and may run arbitrary code.
    match unsafe { fork() } {
        Err(e) => {
            let _ = sigmask(SigmaskHow::SIG_SETMASK, &old_mask);
            Err(before(SandboxError::Fork(e.into())))
        }
        Ok(ForkResult::Child) => {
            drop(alive_w);
            set_parent_death_signal();
            // The parent may have died before the prctl: then its end is
            // closed and poll reports the hang-up at once.
            let mut pfd = [PollFd::new(alive_r.as_raw_fd(), PollFlags::POLLIN)];
            let gone = poll(&mut pfd, 0).is_ok_and(|n| n > 0);
            drop(alive_r);
            sigmask(SigmaskHow::SIG_SETMASK, &old_mask)
                .map_err(|e| (supervisor("restore the signal mask")(e), true))?;
            if gone {
                return Err((SandboxError::ParentGone, true));
            }
            Ok(None)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(alive_r);
            log::debug!(
                "sandbox: serving from pid {child}, in new pid, mount, network, IPC and UTS namespaces"
            );
            Ok(Some((child, waited, alive_w)))
        }
    }
}

/// The child of [`enter_namespaces`] gets SIGTERM when its parent dies.
fn set_parent_death_signal() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number; no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) };
}

/// Ends the supervising parent with `code`.
fn _exit(code: i32) -> ! {
    // SAFETY: _exit ends this process without running atexit handlers or
    // flushing stdio buffers the child owns copies of; that is what a
    // process that forked must do. It takes no pointer.
    unsafe { libc::_exit(code) }
}

/// The parent of [`enter_namespaces`]: forwards signals to `child` until it
/// ends, then runs `at_exit` and exits with its status. `_alive` is held
/// until then.
fn supervise<F: FnOnce()>(child: Pid, waited: &SigSet, _alive: UnixStream, at_exit: F) -> ! {
    let done = |code: i32, at_exit: F| -> ! {
        at_exit();
        _exit(code)
    };
    if let Err(e) = confine_supervisor() {
        // Fail closed: the child is ended, and its end ends this process.
        log::error!("the sandbox's supervisor: {e}; stopping the daemon");
        let _ = kill(child, Signal::SIGKILL);
    }
    loop {
        let sig = waited.wait();
        if matches!(sig, Ok(Signal::SIGCHLD) | Err(_)) {
            // On an unexpected sigwait error, block in waitpid instead.
            let flags = sig.is_ok().then_some(WaitPidFlag::WNOHANG);
            match waitpid(child, flags) {
                Ok(WaitStatus::Exited(_, code)) => done(code, at_exit),
                Ok(WaitStatus::Signaled(_, signal, _)) => done(128 + signal as i32, at_exit),
                Ok(WaitStatus::StillAlive) | Err(nix::Error::EINTR) => {}
                Ok(_) => {}
                // No child to wait for: nothing left to supervise.
                Err(_) => done(1, at_exit),
            }
        } else if let Ok(sig) = sig {
            let _ = kill(child, sig);
        }
    }
}

/// What the supervisor's filter does with a call outside
/// [`crate::seccomp::SUPERVISOR`]: the daemon's `--seccomp` (set by
/// [`crate::daemon::run`] before the sandbox), else kill.
static SUPERVISOR_SECCOMP: OnceLock<SeccompAction> = OnceLock::new();

/// Sets the action of the supervisor's seccomp filter (the daemon's
/// `--seccomp`); the first call counts.
pub fn set_supervisor_seccomp(action: SeccompAction) {
    let _ = SUPERVISOR_SECCOMP.set(action);
}

/// The supervisor keeps nothing it does not use: no capabilities (it waits,
/// forwards signals and removes the socket file in a directory root owns),
/// NoNewPrivs, and a seccomp filter of [`crate::seccomp::SUPERVISOR`].
fn confine_supervisor() -> Result<(), BoxError> {
    limit_capabilities(&[])?;
    let action = SUPERVISOR_SECCOMP
        .get()
        .copied()
        .unwrap_or(SeccompAction::Kill);
    crate::seccomp::apply(action, crate::seccomp::SUPERVISOR, &[])?;
    Ok(())
}

/// Closes the descriptors above standard I/O that are files, directories
/// or devices: whoever started the daemon may have left some open (a
/// directory among them is a way out of any root: `openat(fd, "../..")`),
/// and the daemon itself opens none before its sandbox. Sockets, pipes and
/// anonymous inodes (the listening socket, systemd's, the signal handler's)
/// stay. Call it right before building the sandbox, with no thread running
/// and nothing of the process's own open but those; returns what was
/// closed (`fd N -> PATH`), for the log.
pub fn close_inherited_files() -> io::Result<Vec<String>> {
    close_inherited_files_except(&[])
}

/// A daemon's first step into its jail ([`SandboxMode`]), taken with the
/// files it serves already open; nothing with [`SandboxMode::None`]. The
/// socket file's removal (a descriptor of its host directory, from which
/// `openat(dir, "../..")` walks the host's tree inside any root) stays
/// outside: in namespace mode [`enter_namespaces`] hands it to the
/// supervising parent, in chroot mode the file is left behind on exit
/// (logged; the next start replaces it). Then the files inherited from
/// whoever started the daemon are closed but `keep`, each logged.
pub fn enter_jail(
    mode: SandboxMode,
    socket: &mut BoundSocket,
    keep: &[i32],
) -> Result<(), SandboxError> {
    if mode == SandboxMode::None {
        return Ok(());
    }
    let file = socket.take_file();
    match (mode, file) {
        (SandboxMode::Namespace, file) => {
            enter_namespaces(mode, move || file.into_iter().for_each(|f| f.remove()))?
        }
        (_, Some(f)) => log::info!(
            "--sandbox chroot: {} is left behind on exit (no process outside the jail \
             may keep its directory open); the next start replaces it",
            f.path().display()
        ),
        (_, None) => {}
    }
    for c in close_inherited_files_except(keep).map_err(SandboxError::CloseInherited)? {
        log::info!("closed an inherited descriptor before entering the sandbox: {c}");
    }
    Ok(())
}

/// The whole jail of a daemon that needs nothing of the file system once
/// its files are open, and no capability (it only reads and writes
/// descriptors it holds: vhost-blk-daemon's image, vhost-net-daemon's tap
/// queues, kept in `keep`): [`enter_jail`], [`empty_root`], no
/// supplementary groups, no capabilities. Nothing with
/// [`SandboxMode::None`].
pub fn enter_empty_jail(
    mode: SandboxMode,
    socket: &mut BoundSocket,
    keep: &[i32],
) -> Result<(), SandboxError> {
    enter_jail(mode, socket, keep)?;
    if mode != SandboxMode::None {
        empty_root(mode)?;
        drop_supplementary_groups()?;
        limit_capabilities(&[])?;
    }
    Ok(())
}

/// [`close_inherited_files`], keeping the descriptors in `keep` (files the
/// daemon opened itself for the jail, such as vhost-blk-daemon's image).
pub fn close_inherited_files_except(keep: &[i32]) -> io::Result<Vec<String>> {
    let link = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}"));
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let name = entry?.file_name();
        let Some(fd) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if fd > 2 && !keep.contains(&fd) {
            found.push(fd);
        }
    }
    // The directory listing's own descriptor is closed now: read_link
    // fails for it below.
    let mut closed = Vec::new();
    for fd in found {
        let Ok(target) = link(fd) else { continue };
        let text = target.to_string_lossy();
        if ["socket:", "pipe:", "anon_inode:"]
            .iter()
            .any(|k| text.starts_with(k))
        {
            continue;
        }
        nix::unistd::close(fd)?;
        closed.push(format!("fd {fd} -> {text}"));
    }
    Ok(closed)
}

/// Gives the process a private mount namespace (unshare(CLONE_NEWNS)),
/// so mounts it makes reach nobody else. Needs CAP_SYS_ADMIN.
pub fn unshare_mount_namespace() -> io::Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(io::Error::from)
}

/// Where the shared directory is mounted inside the namespace sandbox's
/// root (see [`prepare_root`]).
pub const NAMESPACE_SHARE: &str = "/share";
/// Where this pid namespace's `proc` is mounted inside the namespace
/// sandbox's root.
const NAMESPACE_PROC: &str = "/proc";

/// Where the shared directory is reachable once [`pivot`] has run:
/// [`NAMESPACE_SHARE`] in namespace mode, `/` in chroot mode, `shared_dir`
/// itself with no sandbox. Does nothing; for configuring the file system
/// before pivoting.
pub fn root_after(mode: SandboxMode, shared_dir: &Path) -> PathBuf {
    match mode {
        SandboxMode::Namespace => PathBuf::from(NAMESPACE_SHARE),
        SandboxMode::Chroot => PathBuf::from("/"),
        SandboxMode::None => shared_dir.to_path_buf(),
    }
}

fn mount(
    what: &'static str,
    source: Option<&CStr>,
    target: &Path,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> Result<(), SandboxError> {
    let flags = nix::mount::MsFlags::from_bits_truncate(flags);
    nix::mount::mount(source, target, fstype, flags, data).map_err(|e| SandboxError::Mount {
        what,
        path: target.to_path_buf(),
        source: e.into(),
    })
}

/// Makes every mount at and below `target` a slave: it still sees the
/// host's changes, and nothing done under it propagates back.
fn make_rslave(what: &'static str, target: &Path) -> Result<(), SandboxError> {
    mount(
        what,
        None,
        target,
        None,
        libc::MS_SLAVE | libc::MS_REC,
        None,
    )
}

fn chdir(path: &Path) -> Result<(), SandboxError> {
    std::env::set_current_dir(path).map_err(|source| SandboxError::Chdir {
        path: path.to_path_buf(),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), SandboxError> {
    std::fs::create_dir(path).map_err(|source| SandboxError::Mount {
        what: "create a mount point at",
        path: path.to_path_buf(),
        source,
    })
}

const PROC_FLAGS: libc::c_ulong =
    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME;

/// Builds the namespace sandbox's root ([`SandboxMode::Namespace`]; other
/// modes do nothing). Runs in the child of [`enter_namespaces`]:
///
/// - every mount becomes a recursive slave: nothing we mount or unmount
///   reaches the host, while mounts the host adds under the share still
///   show up inside (as in virtiofsd);
/// - a small tmpfs covers `shared_dir` (in this mount namespace only); it
///   will be the root, read-only after [`pivot`], holding
/// - `/proc`: a fresh, read-only `proc` showing only the new pid
///   namespace, and
/// - [`NAMESPACE_SHARE`]: the shared directory, bind-mounted with its
///   submounts.
///
/// Unlike the Rust virtiofsd, which pivots into the share itself, the root
/// keeps a `/proc`: fuse-backend-rs's passthrough reaches O_PATH inodes'
/// extended attributes through absolute `/proc/self/fd/N` paths, and its
/// file-handle support reads `/proc/self/mountinfo`, so both need a `/proc`
/// that resolves inside the sandbox. Nothing but the share and this
/// namespace's `/proc` is reachable, and the guest sees only the share.
///
/// `shared_dir` must not be `/`.
pub fn prepare_root(mode: SandboxMode, shared_dir: &Path) -> Result<(), SandboxError> {
    if mode != SandboxMode::Namespace {
        return Ok(());
    }
    let canonical = std::fs::canonicalize(shared_dir).map_err(|source| SandboxError::Mount {
        what: "find the shared directory",
        path: shared_dir.to_path_buf(),
        source,
    })?;
    if canonical == Path::new("/") {
        return Err(SandboxError::ShareIsRoot);
    }
    make_rslave(
        "make the mounts private (recursive slave) under",
        Path::new("/"),
    )?;
    // A detached copy of the share with its submounts, taken before the
    // tmpfs covers the path (a recursive bind made afterwards would copy
    // the tmpfs too: it is mounted on the share's root).
    let share = clone_tree(&canonical)?;
    mount(
        "mount the sandbox's root tmpfs on",
        Some(c"tmpfs"),
        &canonical,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(c"mode=0755,size=64k"),
    )?;
    let proc_dir = canonical.join(&NAMESPACE_PROC[1..]);
    let share_dir = canonical.join(&NAMESPACE_SHARE[1..]);
    mkdir(&proc_dir)?;
    mkdir(&share_dir)?;
    mount(
        "mount a fresh read-only proc on",
        Some(c"proc"),
        &proc_dir,
        Some(c"proc"),
        PROC_FLAGS | libc::MS_RDONLY,
        None,
    )?;
    attach_tree(&share, &share_dir)
}

/// `open_tree(2)` flags (linux/mount.h, fcntl.h); Linux 5.2.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// A detached recursive bind mount of `path` (open_tree(2)).
fn clone_tree(path: &Path) -> Result<OwnedFd, SandboxError> {
    let c = cstring(path)?;
    let flags = OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: a NUL-terminated path that outlives the call; the kernel
    // returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(SandboxError::Mount {
            what: "copy the mounts (open_tree, Linux 5.2 or later) of",
            path: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: open_tree just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Attaches a tree from [`clone_tree`] at `target` (move_mount(2)).
fn attach_tree(tree: &OwnedFd, target: &Path) -> Result<(), SandboxError> {
    let c = cstring(target)?;
    // SAFETY: a descriptor we own, an empty and a NUL-terminated path that
    // outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(SandboxError::Mount {
            what: "attach the shared directory (move_mount) at",
            path: target.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Confines the process to the shared directory: `pivot_root` into the
/// root [`prepare_root`] built, a lazy unmount of the old root and a
/// read-only remount of the new one ([`SandboxMode::Namespace`]), or
/// `chroot` ([`SandboxMode::Chroot`]). Returns where the shared directory
/// is reachable afterwards (the same as [`root_after`]).
///
/// Descriptors opened before stay valid: that is how the daemon keeps its
/// listening socket. In chroot mode nothing outside the share is
/// reachable by path afterwards, `/proc` included: open `/proc/self/fd`
/// before (fuse-backend-rs's `PassthroughFs::new`), and expect its
/// extended-attribute calls on O_PATH inodes to fail (they use
/// `/proc/self/fd/N` paths).
pub fn pivot(mode: SandboxMode, shared_dir: &Path) -> Result<PathBuf, SandboxError> {
    match mode {
        // The tmpfs prepare_root mounted over the share's path.
        SandboxMode::Namespace => pivot_into(shared_dir)?,
        SandboxMode::Chroot => {
            nix::unistd::chroot(shared_dir).map_err(|e| SandboxError::Chroot {
                path: shared_dir.to_path_buf(),
                source: e.into(),
            })?;
            chdir(Path::new("/"))?;
        }
        SandboxMode::None => {}
    }
    Ok(root_after(mode, shared_dir))
}

/// `pivot_root` into the tmpfs mounted at `dir`, the old root detached and
/// the new one made read-only.
fn pivot_into(dir: &Path) -> Result<(), SandboxError> {
    chdir(dir)?;
    // pivot_root(".", ".") stacks the old root on top of the new one
    // (pivot_root(2), "NOTES"), so no put_old directory has to exist in the
    // new root.
    nix::unistd::pivot_root(".", ".").map_err(|e| SandboxError::PivotRoot {
        path: dir.to_path_buf(),
        source: e.into(),
    })?;
    // As runc and virtiofsd do: make sure the unmount cannot propagate
    // anywhere, then detach the old root.
    make_rslave("make the old root a recursive slave at", Path::new("."))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH).map_err(|e| {
        SandboxError::Mount {
            what: "detach the old root directory stacked on",
            path: dir.to_path_buf(),
            source: e.into(),
        }
    })?;
    chdir(Path::new("/"))?;
    mount(
        "make the sandbox's root read-only at",
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
}

/// Where [`empty_root`] mounts the empty tmpfs it pivots into (in a
/// private mount namespace, so the host sees nothing): the first that
/// exists.
const EMPTY_ROOT_AT: [&str; 3] = ["/tmp", "/run", "/mnt"];

/// Confines a daemon that needs nothing of the file system once its files
/// are open (vhost-blk-daemon: the image, the socket): the root becomes an
/// empty read-only tmpfs, so no path reaches the host. In namespace mode
/// inside the mount namespace [`enter_namespaces`] made; in chroot mode in
/// a private mount namespace made here (CAP_SYS_ADMIN; no pid or network
/// isolation); nothing with [`SandboxMode::None`].
pub fn empty_root(mode: SandboxMode) -> Result<(), SandboxError> {
    match mode {
        SandboxMode::None => return Ok(()),
        SandboxMode::Chroot => unshare_mount_namespace().map_err(|source| SandboxError::Mount {
            what: "make a private mount namespace (unshare CLONE_NEWNS) for",
            path: PathBuf::from("/"),
            source,
        })?,
        SandboxMode::Namespace => {}
    }
    let at = EMPTY_ROOT_AT
        .iter()
        .map(Path::new)
        .find(|p| p.is_dir())
        .ok_or_else(|| SandboxError::Mount {
            what: "find a directory (/tmp, /run or /mnt) to mount the empty root on",
            path: PathBuf::from("/"),
            source: io::ErrorKind::NotFound.into(),
        })?;
    make_rslave(
        "make the mounts private (recursive slave) under",
        Path::new("/"),
    )?;
    mount(
        "mount the sandbox's empty root tmpfs on",
        Some(c"tmpfs"),
        at,
        Some(c"tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some(c"mode=0555,size=4k"),
    )?;
    pivot_into(at)
}

fn group_count() -> Result<usize, SandboxError> {
    nix::unistd::getgroups()
        .map(|g| g.len())
        .map_err(|e| SandboxError::GetGroups(e.into()))
}

/// Drops every supplementary group (setgroups(0, NULL)). A daemon that
/// switches to the guest's uid and gid for each request would otherwise
/// create files with the daemon's groups, e.g. in setgid directories
/// (CVE-2022-0358). An unprivileged process without supplementary groups
/// may not call setgroups, and need not: that is not an error.
pub fn drop_supplementary_groups() -> Result<(), SandboxError> {
    let count = group_count()?;
    let Err(e) = nix::unistd::setgroups(&[]) else {
        return Ok(());
    };
    let source = io::Error::from(e);
    if count == 0 && source.raw_os_error() == Some(libc::EPERM) {
        log::debug!("no supplementary groups to drop (setgroups: {source})");
        return Ok(());
    }
    let denied = std::fs::read_to_string("/proc/self/setgroups").is_ok_and(|s| s.trim() == "deny");
    if denied && source.raw_os_error() == Some(libc::EPERM) {
        // The unprivileged jail's user namespace: the groups cannot be
        // dropped there (they are what they were outside, no more).
        log::info!(
            "keeping {count} supplementary group(s): setgroups is denied in this user namespace"
        );
        return Ok(());
    }
    Err(SandboxError::SetGroups { count, source })
}

fn caps_err(what: impl Into<String>) -> impl FnOnce(caps::errors::CapsError) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Capabilities { what, source }
}

/// Drops every capability not in `keep` from the bounding, inheritable,
/// effective and permitted sets (and so from the ambient set). Never
/// raises one: a capability in `keep` the process lacks stays absent.
///
/// Acts on the calling thread: call it before starting threads (threads
/// inherit the sets). Dropping from the bounding set needs CAP_SETPCAP; a
/// process without it (not root) keeps its bounding set and this is
/// logged at debug, as is running with no capabilities at all.
pub fn limit_capabilities(keep: &[Capability]) -> Result<(), SandboxError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    let permitted =
        caps::read(None, CapSet::Permitted).map_err(caps_err("read the permitted capabilities"))?;
    if permitted.is_empty() {
        log::debug!("no capabilities to drop (not running as root)");
        return Ok(());
    }
    // Bounding set first: it needs CAP_SETPCAP, which the next steps may drop.
    if permitted.contains(&Capability::CAP_SETPCAP)
        && caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
            .map_err(caps_err("read the effective capabilities"))?
    {
        let bounding = caps::read(None, CapSet::Bounding)
            .map_err(caps_err("read the bounding capability set"))?;
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(caps_err(format!("drop {cap} from the bounding set")))?;
        }
    } else {
        log::debug!("no CAP_SETPCAP: the bounding capability set is left as it is");
    }
    // Effective before permitted: the effective set must stay a subset.
    for (set, name) in [
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        let current =
            caps::read(None, set).map_err(caps_err(format!("read the {name} capabilities")))?;
        let limited: CapsHashSet = current.intersection(&keep).copied().collect();
        if limited != current {
            caps::set(None, set, &limited)
                .map_err(caps_err(format!("limit the {name} capabilities")))?;
        }
    }
    Ok(())
}

fn nofile() -> Result<(u64, u64), SandboxError> {
    getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| SandboxError::GetNofile(e.into()))
}

/// fs.nr_open, the most RLIMIT_NOFILE can be; `None` when /proc is not
/// readable (after [`pivot`]), in which case setrlimit has the last word.
fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Sets the soft RLIMIT_NOFILE, to a known bound rather than infinity:
///
/// - `None`: raises the soft limit to `min(hard limit, DEFAULT_NOFILE)`
///   (never lowers it);
/// - `Some(0)`: leaves the limits as they are;
/// - `Some(n)`: sets the soft limit to `n`, and the hard limit too when it
///   is below `n` (which needs CAP_SYS_RESOURCE); `n` above fs.nr_open is
///   an error.
///
/// Returns the soft limit in force afterwards.
pub fn raise_nofile_limit(requested: Option<u64>) -> Result<u64, SandboxError> {
    let (soft, hard) = nofile()?;
    let (new_soft, new_hard) = match requested {
        Some(0) => return Ok(soft),
        None => {
            let target = DEFAULT_NOFILE.min(hard);
            if soft >= target {
                return Ok(soft);
            }
            (target, hard)
        }
        Some(n) => {
            if let Some(max) = nr_open().filter(|&max| n > max) {
                return Err(SandboxError::NofileAboveMax { requested: n, max });
            }
            (n, hard.max(n))
        }
    };
    setrlimit(Resource::RLIMIT_NOFILE, new_soft, new_hard).map_err(|e| {
        SandboxError::SetNofile {
            soft: new_soft,
            hard: new_hard,
            source: e.into(),
        }
    })?;
    log::debug!("RLIMIT_NOFILE: soft {soft} -> {new_soft}, hard {hard} -> {new_hard}");
    Ok(new_soft)
}

#[cfg(test)]
mod tests;
