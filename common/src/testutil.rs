//! Test helpers for code that changes the whole process (namespaces,
//! capabilities, seccomp): the risky part runs in a forked child, so the
//! test harness itself is never sandboxed.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// How a forked child ended.
#[derive(Debug)]
pub(crate) struct ChildOutcome {
    /// The raw wait status.
    pub status: libc::c_int,
    /// What the child (or its descendants) reported through [`in_child`].
    pub message: String,
}

impl ChildOutcome {
    /// The exit code, if the child exited.
    pub fn code(&self) -> Option<i32> {
        libc::WIFEXITED(self.status).then(|| libc::WEXITSTATUS(self.status))
    }

    /// The signal that killed the child, if one did.
    pub fn signal(&self) -> Option<i32> {
        libc::WIFSIGNALED(self.status).then(|| libc::WTERMSIG(self.status))
    }

    /// Asserts the child exited with `code`.
    #[track_caller]
    pub fn assert_exit(&self, code: i32) {
        assert_eq!(
            self.code(),
            Some(code),
            "wait status {:#x}, child said: {}",
            self.status,
            self.message
        );
    }

    /// Asserts the child was killed by `signal`.
    #[track_caller]
    pub fn assert_killed_by(&self, signal: i32) {
        assert_eq!(
            self.signal(),
            Some(signal),
            "wait status {:#x}, child said: {}",
            self.status,
            self.message
        );
    }
}

/// Writes `msg` to `fd` without locks or allocation (safe after fork).
fn report(fd: libc::c_int, msg: &str) {
    let mut rest = msg.as_bytes();
    while !rest.is_empty() {
        // SAFETY: writes from a valid buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n <= 0 {
            return;
        }
        rest = &rest[n as usize..];
    }
}

/// Forks; the child runs `f` and exits with the code it returns, or with 1
/// after reporting the error (or 101 after a panic). `on_start` runs in the
/// parent once the child exists (e.g. to signal it). Waits at most
/// `timeout`, then kills the child.
pub(crate) fn in_child_with(
    timeout: Duration,
    f: impl FnOnce() -> Result<i32, String>,
    on_start: impl FnOnce(libc::pid_t),
) -> ChildOutcome {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just returned these descriptors; we own them.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child only runs `f` and then _exits; glibc keeps malloc
    // usable in the child of a multi-threaded fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        drop(r);
        // No core files from the children a test kills on purpose.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: setrlimit reads one rlimit we own.
        unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) };
        let code = match std::panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(Ok(code)) => code,
            Ok(Err(msg)) => {
                report(w.as_raw_fd(), &msg);
                1
            }
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                report(w.as_raw_fd(), &format!("panicked: {msg}"));
                101
            }
        };
        // SAFETY: leave the forked copy of the test harness at once.
        unsafe { libc::_exit(code) };
    }
    drop(w);
    on_start(pid);
    let deadline = Instant::now() + timeout;
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child, writing into `status`.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            break;
        }
        assert!(rc == 0, "waitpid: {}", std::io::Error::last_os_error());
        if Instant::now() > deadline {
            // SAFETY: kill and reap our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            panic!("child {pid} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Descendants may still hold the write end: read what is there.
    // SAFETY: F_SETFL on a descriptor we own.
    unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut message = String::new();
    let _ = std::fs::File::from(r).read_to_string(&mut message);
    ChildOutcome { status, message }
}

/// [`in_child_with`] with a 30 s timeout and nothing to do meanwhile.
pub(crate) fn in_child(f: impl FnOnce() -> Result<i32, String>) -> ChildOutcome {
    in_child_with(Duration::from_secs(30), f, |_| {})
}

/// A fresh directory under the temp dir, removed on drop.
pub(crate) struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("common-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
