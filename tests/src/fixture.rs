//! Test fixtures: temporary directories, sparse images, readiness polling and
//! a guard for backend daemons (ours or the reference ones: QEMU's
//! `qemu-storage-daemon` and QEMU's C `virtiofsd`).
//!
//! Nothing here sleeps for a fixed time to wait for readiness: a daemon is
//! ready when its socket or pid file appears or when its log shows a line,
//! polled at a short interval up to a deadline.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where QEMU's C virtiofsd lives on Debian (package `qemu-system-common`).
pub const C_VIRTIOFSD: &str = "/usr/lib/qemu/virtiofsd";
/// The line the C virtiofsd prints once its socket listens.
pub const VIRTIOFSD_READY_LINE: &str = "Waiting for vhost-user socket connection";
/// How long a daemon gets to become ready by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `Drop` waits after SIGTERM before it sends SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Polling interval for readiness checks.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Errors of the fixtures.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A program the tests need is not installed.
    #[error("{name} not found (looked for {looked}); run scripts/setup.sh")]
    MissingBinary {
        /// Program name.
        name: String,
        /// Where it was looked for.
        looked: String,
    },
    /// Creating a temporary directory failed.
    #[error("cannot create temporary directory {path}")]
    CreateTempDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Creating a daemon's log file failed.
    #[error("cannot create log file {path}")]
    CreateLog {
        /// The log file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Spawning a process failed.
    #[error("cannot spawn {program}")]
    Spawn {
        /// The program.
        program: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A daemon exited before it became ready.
    #[error("{name} exited with {status} before it was ready; its log {log_path}:\n{log}")]
    ExitedEarly {
        /// Daemon name.
        name: String,
        /// Its exit status.
        status: ExitStatus,
        /// Path of its log.
        log_path: PathBuf,
        /// Contents of its log.
        log: String,
    },
    /// Waiting for a process failed.
    #[error("cannot wait for {name}")]
    Wait {
        /// Daemon name.
        name: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A daemon did not become ready in time.
    #[error("{name} not ready after {timeout:?} (waiting for {what}); its log {log_path}:\n{log}")]
    NotReady {
        /// Daemon name.
        name: String,
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        timeout: Duration,
        /// Path of its log.
        log_path: PathBuf,
        /// Contents of its log.
        log: String,
    },
    /// A path did not appear in time.
    #[error("{path} did not appear within {timeout:?}")]
    PathTimeout {
        /// The path.
        path: PathBuf,
        /// How long it was awaited.
        timeout: Duration,
    },
    /// Creating an image file failed.
    #[error("cannot create image {path} of {size} bytes")]
    CreateImage {
        /// The image.
        path: PathBuf,
        /// Requested size.
        size: u64,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Result of the fixtures.
pub type Result<T> = std::result::Result<T, FixtureError>;

/// A directory removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory `<tmp>/<prefix>.<pid>.<n>.<nanos>` under
    /// `$TMPDIR` (default `/tmp`).
    pub fn new(prefix: &str) -> Result<Self> {
        Self::new_in(&std::env::temp_dir(), prefix)
    }

    /// [`TempDir::new`] under `base` (for a test that needs a given file
    /// system, e.g. tmpfs at `/dev/shm`).
    pub fn new_in(base: &Path, prefix: &str) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("{prefix}.{}.{n}.{nanos}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(FixtureError::CreateTempDir { path, source }),
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("warning: cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Creates (or truncates) a sparse file of exactly `size` bytes.
pub fn create_sparse_image(path: &Path, size: u64) -> Result<()> {
    let err = |source| FixtureError::CreateImage {
        path: path.to_path_buf(),
        size,
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    file.set_len(size).map_err(err)
}

/// Polls until `path` exists, at a short interval, up to `timeout`.
pub fn wait_for_path(path: &Path, timeout: Duration) -> Result<()> {
    if poll_until(timeout, || path.exists()) {
        Ok(())
    } else {
        Err(FixtureError::PathTimeout {
            path: path.to_path_buf(),
            timeout,
        })
    }
}

/// Calls `ready` at a short interval until it returns true (then true) or
/// until `timeout` has passed (then false).
pub fn poll_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Finds an executable: a path containing `/` is checked as is, a bare name
/// is searched in `$PATH`. The error names the program and says to run
/// `scripts/setup.sh`.
pub fn find_binary(name: &str) -> Result<PathBuf> {
    let is_exec = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if is_exec(&p) {
            Ok(p)
        } else {
            Err(FixtureError::MissingBinary {
                name: name.to_string(),
                looked: name.to_string(),
            })
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path_var) {
        let candidate = dir.join(name);
        if is_exec(&candidate) {
            return Ok(candidate);
        }
    }
    Err(FixtureError::MissingBinary {
        name: name.to_string(),
        looked: format!("$PATH={}", path_var.to_string_lossy()),
    })
}

/// What makes a daemon ready. All given conditions must hold.
#[derive(Debug, Clone)]
pub enum Readiness {
    /// This path exists (a socket, a pid file).
    Path(PathBuf),
    /// The daemon's log (stdout and stderr) contains this text.
    LogLine(String),
}

impl Readiness {
    fn describe(&self) -> String {
        match self {
            Readiness::Path(p) => format!("path {}", p.display()),
            Readiness::LogLine(l) => format!("log line {l:?}"),
        }
    }
}

/// Options of [`Daemon::qemu_storage_daemon_blk`].
#[derive(Debug, Clone)]
pub struct QsdOpts {
    /// Number of request queues the export offers.
    pub num_queues: u16,
    /// Export read-only (`writable=off`) and open the file read-only.
    pub read_only: bool,
    /// `aio=` of the file blockdev: `threads`, `native` or `io_uring`.
    pub aio: Option<String>,
    /// Open the file with O_DIRECT (`cache.direct=on`).
    pub direct: bool,
    /// `logical-block-size=` of the export.
    pub logical_block_size: Option<u32>,
}

impl Default for QsdOpts {
    fn default() -> Self {
        QsdOpts {
            num_queues: 1,
            read_only: false,
            aio: None,
            direct: false,
            logical_block_size: None,
        }
    }
}

/// A spawned backend process. Its stdout and stderr go to a log file in a
/// temporary directory. Dropping it sends SIGTERM, then SIGKILL after
/// [`STOP_TIMEOUT`]; if the thread is panicking (a failed test) the log is
/// printed to stderr.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
    socket: PathBuf,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    _log_dir: TempDir,
    keep_dirs: Vec<TempDir>,
}

impl Daemon {
    /// [`spawn`](Self::spawn), ready once `socket` exists (30 s at most).
    pub fn spawn_on(name: &str, cmd: Command, socket: &Path) -> Result<Self> {
        let ready = [Readiness::Path(socket.to_path_buf())];
        Self::spawn(name, cmd, socket, &ready, Duration::from_secs(30))
    }

    /// Spawns `cmd` (stdin null, stdout+stderr to a log file) and waits up to
    /// `timeout` until every condition in `ready` holds. Fails early, with
    /// the log, if the process exits first.
    pub fn spawn(
        name: &str,
        cmd: Command,
        socket: &Path,
        ready: &[Readiness],
        timeout: Duration,
    ) -> Result<Self> {
        Self::spawn_prepared(name, cmd, socket, ready, timeout, |_, _| {})
    }

    /// Like [`Daemon::spawn`], but `prepare` may still change the command
    /// once the log file exists, for example to point `JOURNAL_STREAM` at
    /// the log's device and inode.
    pub fn spawn_prepared(
        name: &str,
        mut cmd: Command,
        socket: &Path,
        ready: &[Readiness],
        timeout: Duration,
        prepare: impl FnOnce(&mut Command, &File),
    ) -> Result<Self> {
        let log_dir = TempDir::new(&format!("vutest-{name}"))?;
        let log_path = log_dir.join(format!("{name}.log"));
        let log_err = |source| FixtureError::CreateLog {
            path: log_path.clone(),
            source,
        };
        let log = File::create(&log_path).map_err(log_err)?;
        let log2 = log.try_clone().map_err(log_err)?;
        prepare(&mut cmd, &log);
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|source| FixtureError::Spawn { program, source })?;
        let mut daemon = Daemon {
            name: name.to_string(),
            child,
            socket: socket.to_path_buf(),
            log_path,
            exit: None,
            _log_dir: log_dir,
            keep_dirs: Vec::new(),
        };
        daemon.wait_ready(ready, timeout)?;
        Ok(daemon)
    }

    fn wait_ready(&mut self, ready: &[Readiness], timeout: Duration) -> Result<()> {
        let mut exited = None;
        let mut wait_err = None;
        let ok = poll_until(timeout, || {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    exited = Some(status);
                    return true;
                }
                Ok(None) => {}
                Err(e) => {
                    wait_err = Some(e);
                    return true;
                }
            }
            ready.iter().all(|r| match r {
                Readiness::Path(p) => p.exists(),
                Readiness::LogLine(line) => self.log_contents().contains(line.as_str()),
            })
        });
        if let Some(source) = wait_err {
            return Err(FixtureError::Wait {
                name: self.name.clone(),
                source,
            });
        }
        if let Some(status) = exited {
            self.exit = Some(status);
            return Err(FixtureError::ExitedEarly {
                name: self.name.clone(),
                status,
                log_path: self.log_path.clone(),
                log: self.log_contents(),
            });
        }
        if !ok {
            return Err(FixtureError::NotReady {
                name: self.name.clone(),
                what: ready
                    .iter()
                    .map(Readiness::describe)
                    .collect::<Vec<_>>()
                    .join(" and "),
                timeout,
                log_path: self.log_path.clone(),
                log: self.log_contents(),
            });
        }
        Ok(())
    }

    /// QEMU's `qemu-storage-daemon` exporting `image` (raw) as a
    /// vhost-user-blk device on the Unix socket `socket`. Ready when its pid
    /// file (written after the export is set up) and the socket exist.
    pub fn qemu_storage_daemon_blk(image: &Path, socket: &Path, opts: &QsdOpts) -> Result<Self> {
        let qsd = find_binary("qemu-storage-daemon")?;
        let pid_dir = TempDir::new("vutest-qsd-pid")?;
        let pid_file = pid_dir.join("qsd.pid");
        let mut file = format!(
            "driver=file,node-name=file0,filename={}",
            qemu_escape(image.as_os_str())
        );
        if let Some(aio) = &opts.aio {
            file.push_str(&format!(",aio={aio}"));
        }
        if opts.direct {
            file.push_str(",cache.direct=on");
        }
        if opts.read_only {
            file.push_str(",read-only=on");
        }
        let mut raw = String::from("driver=raw,node-name=disk0,file=file0");
        if opts.read_only {
            raw.push_str(",read-only=on");
        }
        let mut export = format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable={},num-queues={}",
            qemu_escape(socket.as_os_str()),
            if opts.read_only { "off" } else { "on" },
            opts.num_queues
        );
        if let Some(lbs) = opts.logical_block_size {
            export.push_str(&format!(",logical-block-size={lbs}"));
        }
        let mut cmd = Command::new(qsd);
        cmd.arg("--blockdev")
            .arg(file)
            .arg("--blockdev")
            .arg(raw)
            .arg("--export")
            .arg(export)
            .arg("--pidfile")
            .arg(&pid_file);
        let mut daemon = Daemon::spawn(
            "qemu-storage-daemon",
            cmd,
            socket,
            &[
                Readiness::Path(pid_file.clone()),
                Readiness::Path(socket.to_path_buf()),
            ],
            DEFAULT_READY_TIMEOUT,
        )?;
        daemon.keep_dirs.push(pid_dir);
        Ok(daemon)
    }

    /// QEMU's C virtiofsd sharing `shared_dir` on `socket` (`-o cache=auto`
    /// plus `extra_args`). Ready when it logs [`VIRTIOFSD_READY_LINE`]; it is
    /// not probed with a connection because it serves exactly one connection
    /// and exits after it.
    pub fn c_virtiofsd(shared_dir: &Path, socket: &Path, extra_args: &[&str]) -> Result<Self> {
        let bin = find_binary(C_VIRTIOFSD)?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--socket-path={}", socket.display()))
            .arg("-o")
            .arg(format!("source={}", shared_dir.display()))
            .arg("-o")
            .arg("cache=auto")
            .args(extra_args);
        Daemon::spawn_virtiofsd("virtiofsd-c", cmd, socket)
    }

    /// Spawns a virtiofsd (`name`: the C one or ours) running `cmd` on
    /// `socket`; ready when its log shows [`VIRTIOFSD_READY_LINE`] and
    /// `socket` exists.
    pub(crate) fn spawn_virtiofsd(name: &str, cmd: Command, socket: &Path) -> Result<Self> {
        Daemon::spawn(
            name,
            cmd,
            socket,
            &[
                Readiness::LogLine(VIRTIOFSD_READY_LINE.to_string()),
                Readiness::Path(socket.to_path_buf()),
            ],
            DEFAULT_READY_TIMEOUT,
        )
    }

    /// The daemon's name (used in messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The vhost-user socket the daemon serves.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file (stdout and stderr).
    pub fn log(&self) -> &Path {
        &self.log_path
    }

    /// The log's contents so far (lossy UTF-8; empty if unreadable).
    pub fn log_contents(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if the process has exited, without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().map_err(|source| FixtureError::Wait {
                name: self.name.clone(),
                source,
            })?;
        }
        Ok(self.exit)
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let mut result = Ok(None);
        poll_until(timeout, || {
            result = self.try_wait();
            !matches!(result, Ok(None))
        });
        result
    }

    /// Sends `signal` (`libc::SIGTERM`, `libc::SIGINT`, ...) unless the
    /// process has already exited and been reaped; then nothing is sent.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet
            // (try_wait returned None), so it cannot name another process.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }

    /// Stops the process: SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
    /// Returns its exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet
            // (try_wait returned None), so it cannot name another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if let Some(status) = self.wait_timeout(STOP_TIMEOUT)? {
            return Ok(status);
        }
        let wait_err = |source| FixtureError::Wait {
            name: self.name.clone(),
            source,
        };
        // An error here means it exited meanwhile; wait() below reaps it.
        let _ = self.child.kill();
        let status = self.child.wait().map_err(wait_err)?;
        self.exit = Some(status);
        Ok(status)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let stopped = self.stop();
        if thread::panicking() {
            let how = match &stopped {
                Ok(status) => status.to_string(),
                Err(e) => format!("not stopped: {e}"),
            };
            eprintln!(
                "----- {} (pid {}, {how}), log {}:\n{}----- end of {} log",
                self.name,
                self.child.id(),
                self.log_path.display(),
                self.log_contents(),
                self.name
            );
        } else if let Err(e) = stopped {
            eprintln!("warning: stopping {}: {e}", self.name);
        }
    }
}

/// QEMU's options for `mib` MiB of guest RAM in a shared `/dev/shm` file,
/// as vhost-user backends need to map it.
pub fn qemu_shared_memory_args(mib: u32) -> [String; 6] {
    [
        "-m".into(),
        format!("{mib}M"),
        "-object".into(),
        format!("memory-backend-file,id=mem,size={mib}M,mem-path=/dev/shm,share=on"),
        "-numa".into(),
        "node,memdev=mem".into(),
    ]
}

/// Escapes a value for QEMU's `key=value,...` option syntax (`,` doubles).
pub fn qemu_escape(value: &OsStr) -> String {
    value.to_string_lossy().replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_is_removed_on_drop() {
        let dir = TempDir::new("vutest-unit").unwrap();
        let path = dir.path().to_path_buf();
        fs::write(dir.join("f"), b"x").unwrap();
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn sparse_image_has_requested_size() {
        let dir = TempDir::new("vutest-unit").unwrap();
        let img = dir.join("disk.img");
        create_sparse_image(&img, 64 << 20).unwrap();
        assert_eq!(fs::metadata(&img).unwrap().len(), 64 << 20);
    }

    #[test]
    fn missing_binary_names_it_and_setup() {
        let err = find_binary("vutest-no-such-binary").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("vutest-no-such-binary"), "{msg}");
        assert!(msg.contains("scripts/setup.sh"), "{msg}");
    }

    #[test]
    fn wait_for_path_times_out() {
        let dir = TempDir::new("vutest-unit").unwrap();
        let err = wait_for_path(&dir.join("never"), Duration::from_millis(20)).unwrap_err();
        assert!(matches!(err, FixtureError::PathTimeout { .. }));
    }

    /// `sh -c script` as daemon `name` on `dir/sock`, ready on `ready`.
    fn spawn_sh(name: &str, script: &str, dir: &TempDir, ready: Readiness) -> Result<Daemon> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        Daemon::spawn(
            name,
            cmd,
            &dir.join("sock"),
            &[ready],
            Duration::from_secs(10),
        )
    }

    #[test]
    fn daemon_exiting_early_reports_its_log() {
        let dir = TempDir::new("vutest-unit").unwrap();
        let ready = Readiness::Path(dir.join("sock"));
        let err = spawn_sh("early", "echo boom-marker >&2; exit 3", &dir, ready).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("boom-marker"), "{msg}");
        assert!(matches!(err, FixtureError::ExitedEarly { .. }));
    }

    #[test]
    fn daemon_ready_on_log_line_and_stopped_on_drop() {
        let dir = TempDir::new("vutest-unit").unwrap();
        let ready = Readiness::LogLine("ready-now".into());
        let mut d = spawn_sh("sleeper", "echo ready-now; exec sleep 1000", &dir, ready).unwrap();
        assert_eq!(d.try_wait().unwrap(), None);
        let status = d.stop().unwrap();
        assert!(!status.success());
    }
}
