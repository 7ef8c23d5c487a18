//! Backend daemons the VMM starts itself: `--disk path=IMAGE` (and a
//! `vm.create` disk with a `path`, as Kata sends for the guest's root
//! image) runs `vhost-blk-daemon` on the image in its own process, as
//! Cloud Hypervisor users expect a disk to just work, while the device
//! stays disaggregated.
//!
//! The VMM holds the listening socket (in a private runtime directory) and
//! hands it to the daemon as `--fd 3`, as systemd's socket activation
//! does: the daemon is ready as soon as it runs, and a daemon that dies is
//! restarted on the same listener (the device's `reconnect=` finds it
//! there; a connection made meanwhile waits in the backlog). The daemon
//! gets `PR_SET_PDEATHSIG` so it never outlives the VMM; on drop it gets
//! SIGTERM (its clean exit), then SIGKILL after [`STOP_GRACE`].
//!
//! Descriptors the daemon needs besides its listener (a NIC's tap queues,
//! `--tap-fd`) are held by the VMM and passed again at each restart, as
//! 4, 5, ... ([`DaemonSpec::fds`]).
//!
//! A third-party daemon that binds its socket itself
//! ([`Listen::Own`]: rust-vmm's `vhost-device-vsock` for `--vsock`) gets
//! the path in its arguments instead; the VMM waits for the socket to
//! appear before it reports the daemon started, and the device's
//! reconnect retries the path while a restarted one binds it again. Files
//! such a daemon leaves behind ([`DaemonSpec::leaves`]: the hybrid vsock
//! socket) are removed once it stopped.
//!
//! The program is found next to the `vmm` executable, else on `PATH`.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a daemon has to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// The first and the longest pause before restarting a daemon that died.
const RESTART_FIRST: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(5);
/// The descriptor the listening socket has in the daemon.
const LISTEN_FD: i32 = 3;
/// The most descriptors passed besides the listener.
pub const MAX_PASSED_FDS: usize = 16;
/// How long a daemon that binds its own socket has to do it at its start.
pub const OWN_SOCKET_WAIT: Duration = Duration::from_secs(10);

/// How a daemon gets its listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// The VMM binds [`DaemonSpec::socket`] and passes it as `--fd 3`.
    Fd,
    /// The daemon binds [`DaemonSpec::socket`] itself (its arguments name
    /// it); it is started once the socket accepts.
    Own,
}

/// Errors starting a daemon; each names the program or path.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// No such program next to the vmm or on PATH.
    #[error("{0} not found next to the vmm executable or on PATH")]
    NotFound(String),
    /// The runtime directory could not be made.
    #[error("runtime directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The listening socket could not be made.
    #[error("listening socket {path}")]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// More descriptors to pass than [`MAX_PASSED_FDS`].
    #[error("{program}: {count} descriptors to pass, at most {MAX_PASSED_FDS}")]
    TooManyFds { program: String, count: usize },
    /// The program could not be started.
    #[error("starting {program}")]
    Start {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The daemon exited before the VMM could use it.
    #[error("{program} exited at once ({status}); see its error above")]
    ExitedAtOnce { program: PathBuf, status: String },
    /// A daemon binding its own socket did not within [`OWN_SOCKET_WAIT`].
    #[error("{program} did not listen on {socket} within {OWN_SOCKET_WAIT:?}")]
    NoSocket { program: PathBuf, socket: PathBuf },
}

/// A private directory (0700) for the sockets of the daemons this VMM
/// starts: under `$XDG_RUNTIME_DIR`, else `/run`, else the temp dir;
/// removed (with what is left in it) on drop.
#[derive(Debug)]
pub struct RuntimeDir {
    path: PathBuf,
}

impl RuntimeDir {
    /// Makes `vmm-<pid>-<n>` in the first usable base directory.
    pub fn create() -> Result<Self, SpawnError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "vmm-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let bases = [
            std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
            Some(PathBuf::from("/run")),
            Some(std::env::temp_dir()),
        ];
        let mut last = None;
        for base in bases.into_iter().flatten() {
            let path = base.join(&name);
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(e) => last = Some((path, e)),
            }
        }
        let (path, source) =
            last.unwrap_or_else(|| (PathBuf::from(&name), io::ErrorKind::NotFound.into()));
        Err(SpawnError::Dir { path, source })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A daemon to run: the program's name, its arguments (`--fd 3` is added),
/// and the socket path the VMM's device connects to.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// `vhost-blk-daemon`.
    pub program: String,
    pub args: Vec<OsString>,
    /// Where the listening socket is bound.
    pub socket: PathBuf,
    /// Names it in logs (`disk0`).
    pub name: String,
    /// Descriptors the daemon gets as [`DaemonSpec::fd_number`]s 4, 5, ...
    /// (at most [`MAX_PASSED_FDS`]), at every start.
    pub fds: Arc<Vec<OwnedFd>>,
    /// Who binds the socket.
    pub listen: Listen,
    /// Files the daemon makes outside the runtime directory, removed once
    /// it stopped (`vhost-device-vsock`'s hybrid socket).
    pub leaves: Vec<PathBuf>,
}

impl DaemonSpec {
    /// The number the `i`th of [`DaemonSpec::fds`] has in the daemon.
    pub fn fd_number(i: usize) -> i32 {
        LISTEN_FD + 1 + i as i32
    }
}

/// Where `program` is: next to the running executable, else on `PATH`.
pub fn locate(program: &str) -> Result<PathBuf, SpawnError> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(program)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(program));
    beside
        .into_iter()
        .chain(on_path)
        .find(|p| p.is_file())
        .ok_or_else(|| SpawnError::NotFound(program.to_string()))
}

/// What the supervising thread and the handle share.
struct Shared {
    stopping: AtomicBool,
    /// The running child's pid (0: none).
    pid: AtomicU32,
    restarts: AtomicU32,
}

/// A running daemon, restarted when it dies, stopped on drop.
pub struct Supervised {
    spec: DaemonSpec,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Supervised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervised")
            .field("name", &self.spec.name)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl Supervised {
    /// Binds the socket, starts the daemon on it and supervises it from a
    /// thread of its own (the parent whose death the daemon follows).
    /// Returns once the daemon runs; an error if it cannot start or exits
    /// within its first moments.
    pub fn start(spec: DaemonSpec) -> Result<Self, SpawnError> {
        if spec.fds.len() > MAX_PASSED_FDS {
            return Err(SpawnError::TooManyFds {
                program: spec.program.clone(),
                count: spec.fds.len(),
            });
        }
        let program = locate(&spec.program)?;
        let _ = std::fs::remove_file(&spec.socket);
        let listener = match spec.listen {
            Listen::Fd => Some(OwnedFd::from(UnixListener::bind(&spec.socket).map_err(
                |source| SpawnError::Listen {
                    path: spec.socket.clone(),
                    source,
                },
            )?)),
            Listen::Own => None,
        };
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            pid: AtomicU32::new(0),
            restarts: AtomicU32::new(0),
        });
        let (started_tx, started) = channel();
        let thread = {
            let (theirs, shared) = (spec.clone(), shared.clone());
            // Outside the VMM's seccomp filter: the daemon it starts
            // inherits none, and jails itself.
            crate::seccomp::spawn_unfiltered(format!("vmm-daemon-{}", spec.name), move || {
                supervise(&theirs, &program, &listener, &shared, started_tx)
            })
            .map_err(|source| SpawnError::Start {
                program: PathBuf::from(&spec.program),
                source,
            })?
        };
        let mut me = Self {
            spec,
            shared,
            thread: Some(thread),
        };
        match started.recv() {
            Ok(Ok(())) => Ok(me),
            Ok(Err(e)) => {
                me.stop();
                Err(e)
            }
            Err(_) => {
                me.stop();
                Err(SpawnError::Start {
                    program: PathBuf::from(&me.spec.program),
                    source: io::Error::other("the supervising thread ended"),
                })
            }
        }
    }

    /// The socket the device connects to.
    pub fn socket(&self) -> &Path {
        &self.spec.socket
    }

    /// The running daemon's pid, if one runs.
    pub fn pid(&self) -> Option<u32> {
        Some(self.shared.pid.load(Ordering::Acquire)).filter(|p| *p != 0)
    }

    /// How many times the daemon was restarted.
    pub fn restarts(&self) -> u32 {
        self.shared.restarts.load(Ordering::Acquire)
    }

    /// SIGTERM, then SIGKILL after [`STOP_GRACE`]; waits for the
    /// supervising thread (which sends them), then removes what the daemon
    /// left ([`DaemonSpec::leaves`]).
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            for f in &self.spec.leaves {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The supervising thread: starts the daemon, reports the first start on
/// `started`, and restarts it whenever it dies until told to stop.
fn supervise(
    spec: &DaemonSpec,
    program: &Path,
    listener: &Option<OwnedFd>,
    shared: &Shared,
    started: std::sync::mpsc::Sender<Result<(), SpawnError>>,
) {
    let mut started = Some(started);
    let mut pause = RESTART_FIRST;
    loop {
        let mut child = match spawn(spec, program, listener) {
            Ok(c) => c,
            Err(e) => {
                match started.take() {
                    Some(tx) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    None => log::error!("{}: restarting {}: {e}", spec.name, spec.program),
                }
                if !sleep_unless_stopping(shared, pause) {
                    return;
                }
                pause = (pause * 2).min(RESTART_MAX);
                continue;
            }
        };
        shared.pid.store(child.id(), Ordering::Release);
        let began = Instant::now();
        if let Some(tx) = started.take() {
            // A daemon that refuses its options exits at once: report that
            // instead of a device whose backend never answers.
            let first = match spec.listen {
                Listen::Fd => wait_for(&mut child, shared, Duration::from_millis(500)),
                Listen::Own => match wait_for_socket(&mut child, shared, &spec.socket) {
                    Ok(exited) => exited,
                    Err(()) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        shared.pid.store(0, Ordering::Release);
                        let _ = tx.send(Err(SpawnError::NoSocket {
                            program: program.to_path_buf(),
                            socket: spec.socket.clone(),
                        }));
                        return;
                    }
                },
            };
            match first {
                Some(status) => {
                    shared.pid.store(0, Ordering::Release);
                    let _ = tx.send(Err(SpawnError::ExitedAtOnce {
                        program: program.to_path_buf(),
                        status: describe(status),
                    }));
                    return;
                }
                None => {
                    log::info!(
                        "{}: started {} (pid {}) on {}",
                        spec.name,
                        spec.program,
                        child.id(),
                        spec.socket.display()
                    );
                    let _ = tx.send(Ok(()));
                }
            }
        }
        let status = wait_until_stop(&mut child, shared);
        shared.pid.store(0, Ordering::Release);
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        if began.elapsed() > RESTART_MAX * 2 {
            pause = RESTART_FIRST;
        }
        log::warn!(
            "{}: {} (pid {}) {}; restarting it in {:?}",
            spec.name,
            spec.program,
            child.id(),
            describe(status),
            pause
        );
        if !sleep_unless_stopping(shared, pause) {
            return;
        }
        pause = (pause * 2).min(RESTART_MAX);
        shared.restarts.fetch_add(1, Ordering::AcqRel);
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("ended ({status})"),
    }
}

/// Sleeps `pause` in small steps; false if told to stop meanwhile.
fn sleep_unless_stopping(shared: &Shared, pause: Duration) -> bool {
    let end = Instant::now() + pause;
    while Instant::now() < end {
        if shared.stopping.load(Ordering::Acquire) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10).min(pause));
    }
    !shared.stopping.load(Ordering::Acquire)
}

/// Waits up to `limit` for `child` to exit (polling, so a stop is seen).
fn wait_for(child: &mut Child, shared: &Shared, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() >= end || shared.stopping.load(Ordering::Acquire) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until a [`Listen::Own`] daemon listens on its socket
/// (`Ok(None)`), or exits (`Ok(Some)`); `Err` after [`OWN_SOCKET_WAIT`] or
/// a stop. Read from `/proc/net/unix`, not by connecting: a vhost-user
/// backend takes a probe connection for its frontend, and many serve again
/// only after binding anew.
fn wait_for_socket(
    child: &mut Child,
    shared: &Shared,
    socket: &Path,
) -> Result<Option<ExitStatus>, ()> {
    let end = Instant::now() + OWN_SOCKET_WAIT;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Ok(Some(s));
        }
        if is_listening(socket) {
            return Ok(None);
        }
        if Instant::now() >= end || shared.stopping.load(Ordering::Acquire) {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a Unix socket bound at `path` listens (`__SO_ACCEPTCON` in its
/// `/proc/net/unix` flags).
fn is_listening(path: &Path) -> bool {
    const SO_ACCEPTCON: u32 = 1 << 16;
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return path.exists();
    };
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() >= 8
            && Path::new(cols[7]) == path
            && u32::from_str_radix(cols[3], 16).is_ok_and(|f| f & SO_ACCEPTCON != 0)
    })
}

/// Waits for `child` to exit; once a stop is asked for, sends it SIGTERM
/// (its clean exit) and, [`STOP_GRACE`] later, SIGKILL.
fn wait_until_stop(child: &mut Child, shared: &Shared) -> ExitStatus {
    let mut stop_seen: Option<Instant> = None;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return s,
            Ok(None) => {}
            Err(_) => return ExitStatus::from_raw(0),
        }
        if shared.stopping.load(Ordering::Acquire) {
            match stop_seen {
                None => {
                    stop_seen = Some(Instant::now());
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(child.id() as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                Some(since) if since.elapsed() > STOP_GRACE => {
                    log::warn!(
                        "a backend daemon (pid {}) ignored SIGTERM; killing it",
                        child.id()
                    );
                    let _ = child.kill();
                }
                Some(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `program` with `spec.args` (after `--fd 3` on the listener,
/// if the VMM holds it), and `spec.fds` as 4, 5, ..., dying with its
/// parent thread, stdout to /dev/null, stderr shared with the VMM.
fn spawn(
    spec: &DaemonSpec,
    program: &Path,
    listener: &Option<OwnedFd>,
) -> Result<Child, SpawnError> {
    // Where each goes: [listener, fds...] to [3, 4, ...]; a fixed array,
    // so the child allocates nothing. Without a listener, 3 stays unused
    // (a slot of -1 is skipped).
    let mut sources = [-1; 1 + MAX_PASSED_FDS];
    if let Some(l) = listener {
        sources[0] = l.as_raw_fd();
    }
    for (slot, fd) in sources[1..].iter_mut().zip(spec.fds.iter()) {
        *slot = fd.as_raw_fd();
    }
    let count = 1 + spec.fds.len().min(MAX_PASSED_FDS);
    let mut cmd = Command::new(program);
    if listener.is_some() {
        cmd.arg("--fd").arg(LISTEN_FD.to_string());
    }
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        // Socket activation's variables are the VMM's, not the daemon's.
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET");
    // SAFETY: the closure runs in the child between fork and exec and
    // calls only async-signal-safe functions (prctl, fcntl, dup2) on
    // descriptors it owns there; it allocates nothing (the array is a
    // copy on its stack).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // First out of the way of the targets (close-on-exec copies
            // above them), then each onto its number, which dup2 leaves
            // without close-on-exec.
            let mut moved = [-1; 1 + MAX_PASSED_FDS];
            let above = LISTEN_FD + count as i32;
            for i in 0..count {
                if sources[i] < 0 {
                    continue;
                }
                moved[i] = libc::fcntl(sources[i], libc::F_DUPFD_CLOEXEC, above);
                if moved[i] < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (i, &fd) in moved.iter().enumerate().take(count) {
                if fd < 0 {
                    continue;
                }
                if libc::dup2(fd, LISTEN_FD + i as i32) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|source| SpawnError::Start {
        program: program.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_seen_in_proc_net_unix() {
        let dir = RuntimeDir::create().unwrap();
        let path = dir.path().join("l.sock");
        assert!(!is_listening(&path));
        let listener = UnixListener::bind(&path).unwrap();
        assert!(is_listening(&path));
        drop(listener);
        assert!(!is_listening(&path), "a closed listener's file stays");
    }

    #[test]
    fn a_missing_program_is_named() {
        let err = locate("no-such-daemon-xyz").unwrap_err();
        assert!(err.to_string().contains("no-such-daemon-xyz"), "{err}");
    }

    #[test]
    fn the_runtime_dir_is_private_and_goes_away() {
        use std::os::unix::fs::PermissionsExt;
        let dir = RuntimeDir::create().unwrap();
        let path = dir.path().to_path_buf();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(path.join("x.sock"), b"").unwrap();
        drop(dir);
        assert!(!path.exists());
    }
}
