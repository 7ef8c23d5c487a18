//! The system call allow-list (seccomp-bpf, built with `seccompiler`).
//!
//! [`apply`] installs a filter on every thread of the process: the listed
//! system calls run, anything else gets the `--seccomp` action. A daemon
//! calls it last in its sandbox setup (see [`crate::sandbox`]), with
//! [`VHOST_USER_BASE`] plus its own list, and [`VHOST_USER_IOCTLS`] plus
//! its own ioctl requests.
//!
//! The filter also sets `PR_SET_NO_NEW_PRIVS`: nothing the daemon might
//! execute can gain privileges.

use std::collections::BTreeMap;
use std::fmt;

use clap::ValueEnum;
use seccompiler::{
    BackendError, BpfProgram, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What happens to a system call missing from the allow-list (`--seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SeccompAction {
    /// Kill the whole process (SIGSYS), as the kernel's
    /// `SECCOMP_RET_KILL_PROCESS`.
    Kill,
    /// Allow it, and log it to the audit log (`dmesg`): for finding what
    /// a list lacks.
    Log,
    /// Send SIGSYS to the calling thread, which a handler may catch.
    Trap,
    /// Install no filter.
    None,
}

impl fmt::Display for SeccompAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::cli::write_value_name(self, f)
    }
}

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler has no BPF backend for this architecture.
    #[error("no seccomp filter for the {arch} architecture: {source}")]
    Arch {
        /// `std::env::consts::ARCH`.
        arch: &'static str,
        /// Cause.
        source: BackendError,
    },
    /// The filter is inconsistent (a bug in the lists).
    #[error("cannot build the seccomp filter of {count} system calls: {source}")]
    Build {
        /// How many system calls were listed.
        count: usize,
        /// Cause.
        source: BackendError,
    },
    /// The filter does not fit in a BPF program.
    #[error("cannot compile the seccomp filter of {count} system calls to BPF: {source}")]
    Compile {
        /// How many system calls were listed.
        count: usize,
        /// Cause.
        source: BackendError,
    },
    /// prctl or seccomp(2) refused the filter, or a thread could not be
    /// synchronised.
    #[error("cannot install the seccomp filter on every thread: {0}")]
    Install(#[source] seccompiler::Error),
}

/// What every vhost-user daemon needs while serving, from the `serve`
/// loop and `vhost-user-backend` down to the Rust runtime and glibc:
/// accepting a frontend, one thread per connection and per worker, the
/// vhost-user messages, guest memory maps, kick and call eventfds,
/// logging, SIGTERM and exit. Found by running the daemons under `strace
/// -f` and [`SeccompAction::Kill`] through connect, serve, disconnect,
/// reconnect and SIGTERM.
///
/// `ioctl` is not here: [`apply`] allows it only for the requests given
/// (see [`VHOST_USER_IOCTLS`]). `getppid`, `socket`, `connect`, `bind`,
/// `execve`, `ptrace`, `mount` and the like are not either.
pub const VHOST_USER_BASE: &[i64] = &[
    // Memory: the allocator, thread stacks, guest memory (SET_MEM_TABLE
    // maps the frontend's fds; a new table or a disconnect unmaps them).
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    // Threads: one per connection and per queue worker, started, named,
    // joined and ended; locks and condition variables.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_set_tid_address,
    libc::SYS_rseq,
    libc::SYS_futex,
    libc::SYS_prctl,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_tkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    // Signals: the SIGTERM/SIGINT handler, the Rust runtime's stack
    // overflow handler (sigaltstack), interrupted sleeps restarted.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    // Time: log timestamps, the watchdog, sleeps.
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_gettimeofday,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    // Event loops: poll in the serve loop, epoll in vhost-user-backend's
    // workers, eventfds for kicks, calls and worker exit.
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_ppoll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_create,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_eventfd2,
    libc::SYS_pipe2,
    // Descriptors: eventfd and log I/O, duplicating fds received with a
    // message, closing them; fstat of memory-region fds; getrandom for
    // hash map keys; openat for what the runtime reads under /proc or /sys.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    // Answered ENOENT by a second filter instead in a file-less jail
    // ([`FILES`], [`apply_without_files`]).
    libc::SYS_openat,
    libc::SYS_getrandom,
    // Sockets: accepting the frontend, vhost-user messages with their
    // fds, the per-connection done-socketpair, signal and sd_notify
    // datagrams.
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_socketpair,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    // Removing the socket file we bound, on exit.
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    // Credentials, read only.
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
];

/// The base list's calls that reach the file system by path: a daemon
/// that needs none once jailed (vhost-blk-daemon and vhost-net-daemon hold
/// their image or tap already, and in a jail the socket file is removed by
/// the supervisor or left behind) is filtered without them
/// ([`apply_without_files`]).
pub const FILES: &[i64] = &[
    libc::SYS_openat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];

/// What a daemon adds when its connections pass through the
/// [`relay`](crate::relay): one Unix socket pair per connection, bound in
/// a directory of its own (removed on exit) or on abstract names; and
/// the in-flight region it creates for GET_INFLIGHT_FD (a sealed memfd;
/// SET_INFLIGHT_FD's fstat and mmap are in the base list).
pub const RELAY: &[i64] = &[
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_memfd_create,
    libc::SYS_ftruncate,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
];

/// What the namespace sandbox's supervisor does once its child runs
/// ([`crate::sandbox::enter_namespaces`]): wait for signals and the
/// child's end, forward the signals, remove the socket file (a stat and an
/// unlink relative to its directory's descriptor), log, exit. No ioctl.
pub const SUPERVISOR: &[i64] = &[
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_restart_syscall,
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_kill,
    libc::SYS_newfstatat,
    libc::SYS_unlinkat,
    libc::SYS_close,
    // Debug builds check a descriptor is open before closing it.
    libc::SYS_fcntl,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_clock_gettime,
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// The ioctl requests [`VHOST_USER_BASE`] goes with: (non-)blocking mode
/// and close-on-exec of sockets (`set_nonblocking` is an ioctl in Rust's
/// standard library), bytes readable, and "is this a terminal".
// The request constants are c_ulong with glibc, c_int with musl.
#[allow(clippy::unnecessary_cast)]
pub const VHOST_USER_IOCTLS: &[u64] = &[
    libc::FIONBIO as u64,
    libc::FIOCLEX as u64,
    libc::FIONCLEX as u64,
    libc::FIONREAD as u64,
    libc::TCGETS as u64,
];

fn to_seccompiler(action: SeccompAction) -> Option<seccompiler::SeccompAction> {
    match action {
        SeccompAction::Kill => Some(seccompiler::SeccompAction::KillProcess),
        SeccompAction::Log => Some(seccompiler::SeccompAction::Log),
        SeccompAction::Trap => Some(seccompiler::SeccompAction::Trap),
        SeccompAction::None => None,
    }
}

/// Builds the BPF program: `allowed` system calls run; `ioctl` runs for
/// the requests in `ioctls` only (unrestricted if `allowed` lists
/// `SYS_ioctl`); anything else meets `mismatch`.
fn build(
    mismatch: seccompiler::SeccompAction,
    allowed: &[i64],
    ioctls: &[u64],
) -> Result<BpfProgram, SeccompError> {
    let count = allowed.len();
    let build_err = |source| SeccompError::Build { count, source };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed.iter().map(|&nr| (nr, Vec::new())).collect();
    if !rules.contains_key(&libc::SYS_ioctl) && !ioctls.is_empty() {
        let mut per_request = Vec::with_capacity(ioctls.len());
        for &request in ioctls {
            // The kernel takes the request as an unsigned int.
            let cond = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, request)
                .map_err(build_err)?;
            per_request.push(SeccompRule::new(vec![cond]).map_err(build_err)?);
        }
        rules.insert(libc::SYS_ioctl, per_request);
    }
    let arch = std::env::consts::ARCH;
    let target =
        TargetArch::try_from(arch).map_err(|source| SeccompError::Arch { arch, source })?;
    let filter = SeccompFilter::new(rules, mismatch, seccompiler::SeccompAction::Allow, target)
        .map_err(build_err)?;
    BpfProgram::try_from(filter).map_err(|source| SeccompError::Compile { count, source })
}

/// Installs the allow-list on every thread of the process (TSYNC):
/// `allowed` system calls run, `ioctl` runs for the requests in `ioctls`
/// (or for all if `allowed` lists `SYS_ioctl` itself), anything else
/// meets `action`. [`SeccompAction::None`] installs nothing.
///
/// Call it after the rest of the sandbox (mounts, capabilities), which
/// needs calls the list leaves out, and before serving. Filters only
/// stack: a second call narrows the first.
///
/// ```no_run
/// use common::seccomp::{apply, SeccompAction, VHOST_USER_BASE, VHOST_USER_IOCTLS};
/// let mut allowed = VHOST_USER_BASE.to_vec();
/// allowed.push(libc::SYS_pread64); // what this daemon needs besides
/// apply(SeccompAction::Kill, &allowed, VHOST_USER_IOCTLS).unwrap();
/// ```
pub fn apply(action: SeccompAction, allowed: &[i64], ioctls: &[u64]) -> Result<(), SeccompError> {
    let Some(mismatch) = to_seccompiler(action) else {
        log::debug!("seccomp: no filter (--seccomp none)");
        return Ok(());
    };
    let program = build(mismatch, allowed, ioctls)?;
    seccompiler::apply_filter_all_threads(&program).map_err(SeccompError::Install)?;
    log::info!(
        "seccomp: {} system calls allowed, {} ioctl requests; others: {action}",
        allowed.len(),
        ioctls.len()
    );
    Ok(())
}

/// [`apply`] for a daemon that opens and removes no file once jailed:
/// `allowed` less [`FILES`], and a filter before it under which `openat`
/// fails with ENOENT (the runtime's reads under `/proc` and `/sys`, such
/// as glibc's of `/proc/sys/vm/overcommit_memory`, cope with that; in an
/// empty root they would find nothing anyway). The main filter still
/// lists `openat`, so that this answer, not `action`, is what a call
/// meets (the kernel takes the strictest of a thread's filters).
pub fn apply_without_files(
    action: SeccompAction,
    allowed: &[i64],
    ioctls: &[u64],
) -> Result<(), SeccompError> {
    if to_seccompiler(action).is_none() {
        return apply(action, allowed, ioctls);
    }
    let mut narrowed: Vec<i64> = allowed
        .iter()
        .copied()
        .filter(|nr| !FILES.contains(nr))
        .collect();
    let enoent = seccompiler::SeccompAction::Errno(libc::ENOENT as u32);
    let arch = std::env::consts::ARCH;
    let target =
        TargetArch::try_from(arch).map_err(|source| SeccompError::Arch { arch, source })?;
    let count = 1;
    let build_err = |source| SeccompError::Build { count, source };
    let rules = BTreeMap::from([(libc::SYS_openat, Vec::new())]);
    let filter = SeccompFilter::new(rules, seccompiler::SeccompAction::Allow, enoent, target)
        .map_err(build_err)?;
    let answer =
        BpfProgram::try_from(filter).map_err(|source| SeccompError::Compile { count, source })?;
    seccompiler::apply_filter_all_threads(&answer).map_err(SeccompError::Install)?;
    narrowed.push(libc::SYS_openat);
    apply(action, &narrowed, ioctls)?;
    log::info!("seccomp: no file opened or removed by path (openat answers ENOENT)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{in_child, ChildOutcome};
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn getppid() {
        nix::unistd::getppid();
    }

    #[test]
    fn the_lists_compile_and_hold_no_dangerous_calls() {
        build(
            seccompiler::SeccompAction::KillProcess,
            VHOST_USER_BASE,
            VHOST_USER_IOCTLS,
        )
        .unwrap();
        for nr in [
            libc::SYS_getppid,
            libc::SYS_ioctl,
            libc::SYS_execve,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_socket,
            libc::SYS_connect,
        ] {
            assert!(!VHOST_USER_BASE.contains(&nr), "{nr} in VHOST_USER_BASE");
        }
    }

    /// A child that applies the base lists under `action`, then makes a
    /// call they do not hold (getppid).
    fn call_not_listed_under(action: SeccompAction) -> ChildOutcome {
        in_child(|| {
            apply(action, VHOST_USER_BASE, VHOST_USER_IOCTLS).map_err(|e| e.to_string())?;
            getppid();
            Ok(0)
        })
    }

    /// A file-less jail's filter: opening a file that exists fails with
    /// ENOENT, removing one kills.
    #[test]
    fn without_files_opens_answer_enoent_and_unlink_kills() {
        in_child(|| {
            apply_without_files(SeccompAction::Kill, VHOST_USER_BASE, VHOST_USER_IOCTLS)
                .map_err(|e| e.to_string())?;
            match std::fs::File::open("/proc/self/status") {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(0),
                other => Err(format!("open under the filter: {other:?}")),
            }
        })
        .assert_exit(0);
        in_child(|| {
            apply_without_files(SeccompAction::Kill, VHOST_USER_BASE, VHOST_USER_IOCTLS)
                .map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file("/nonexistent-vhost-user-test");
            Ok(0)
        })
        .assert_killed_by(libc::SIGSYS);
    }

    #[test]
    fn kill_mode_kills_the_process_on_a_call_not_listed() {
        call_not_listed_under(SeccompAction::Kill).assert_killed_by(libc::SIGSYS);
    }

    #[test]
    fn trap_mode_sends_sigsys() {
        call_not_listed_under(SeccompAction::Trap).assert_killed_by(libc::SIGSYS);
    }

    #[test]
    fn log_mode_lets_the_call_run() {
        let out = in_child(|| {
            apply(SeccompAction::Log, VHOST_USER_BASE, VHOST_USER_IOCTLS)
                .map_err(|e| e.to_string())?;
            let ppid = nix::unistd::getppid().as_raw();
            if ppid <= 0 {
                return Err(format!("getppid gave {ppid}"));
            }
            Ok(0)
        });
        out.assert_exit(0);
    }

    #[test]
    fn none_installs_no_filter() {
        let out = in_child(|| {
            apply(SeccompAction::None, &[], &[]).map_err(|e| e.to_string())?;
            getppid();
            let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
            if !status.lines().any(|l| l == "Seccomp:\t0") {
                return Err("a filter is installed".into());
            }
            Ok(0)
        });
        out.assert_exit(0);
    }

    #[test]
    fn the_filter_covers_threads_started_before() {
        let out = in_child(|| {
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let t = std::thread::spawn(move || {
                let _ = go_rx.recv();
                getppid();
            });
            apply(SeccompAction::Kill, VHOST_USER_BASE, VHOST_USER_IOCTLS)
                .map_err(|e| e.to_string())?;
            go_tx.send(()).map_err(|e| e.to_string())?;
            let _ = t.join();
            Ok(0)
        });
        out.assert_killed_by(libc::SIGSYS);
    }

    #[test]
    fn ioctl_is_limited_to_the_listed_requests() {
        let (mut progress_r, progress_w) = UnixStream::pair().unwrap();
        let out = in_child(|| {
            let (a, _b) = UnixStream::pair().map_err(|e| e.to_string())?;
            apply(SeccompAction::Kill, VHOST_USER_BASE, VHOST_USER_IOCTLS)
                .map_err(|e| e.to_string())?;
            a.set_nonblocking(true).map_err(|e| e.to_string())?;
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int into `n`.
            if unsafe { libc::ioctl(a.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
                return Err("FIONREAD failed".into());
            }
            (&progress_w).write_all(b"ok").map_err(|e| e.to_string())?;
            let on: libc::c_int = 1;
            // SAFETY: FIOASYNC reads one int; the filter kills us first.
            unsafe { libc::ioctl(a.as_raw_fd(), libc::FIOASYNC, &on) };
            Ok(0)
        });
        drop(progress_w);
        let mut got = Vec::new();
        progress_r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"ok", "{out:?}");
        out.assert_killed_by(libc::SIGSYS);
    }

    /// What a vhost-user daemon does while serving, minus the protocol
    /// (common/tests/seccomp_serve.rs runs the real serve loop).
    #[test]
    fn vhost_user_base_runs_threads_eventfds_epoll_and_sockets() {
        let dir = crate::testutil::TempDir::new("seccomp-base");
        let sock = dir.0.join("l.sock");
        let out = in_child(|| {
            let e = |e: std::io::Error| e.to_string();
            // Set up before the filter, as a daemon does: the listener.
            let listener = UnixListener::bind(&sock).map_err(e)?;
            let client = UnixStream::connect(&sock).map_err(e)?;
            let devnull = std::fs::File::create("/dev/null").map_err(e)?;
            apply(SeccompAction::Kill, VHOST_USER_BASE, VHOST_USER_IOCTLS)
                .map_err(|e| e.to_string())?;

            listener.set_nonblocking(false).map_err(e)?;
            let (conn, _) = listener.accept().map_err(e)?;
            (&client).write_all(b"hello").map_err(e)?;
            let mut buf = [0u8; 5];
            (&conn).read_exact(&mut buf).map_err(e)?;

            // An fd passed with a message, as SET_VRING_KICK does.
            use vmm_sys_util::sock_ctrl_msg::ScmSocket;
            let kick = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(e)?;
            let errno = |e: vmm_sys_util::errno::Error| e.to_string();
            client
                .send_with_fd(&[1u8][..], kick.as_raw_fd())
                .map_err(errno)?;
            let mut one = [0u8; 1];
            let (_, fd) = conn.recv_with_fd(&mut one[..]).map_err(errno)?;
            let received = fd.ok_or("no fd received")?;

            // A worker thread waiting in epoll for the kick, signalling a
            // call eventfd back.
            let call = vmm_sys_util::eventfd::EventFd::new(0).map_err(e)?;
            let call2 = call.try_clone().map_err(e)?;
            let epoll = vmm_sys_util::epoll::Epoll::new().map_err(e)?;
            epoll
                .ctl(
                    vmm_sys_util::epoll::ControlOperation::Add,
                    received.as_raw_fd(),
                    vmm_sys_util::epoll::EpollEvent::new(vmm_sys_util::epoll::EventSet::IN, 7),
                )
                .map_err(e)?;
            let worker = std::thread::Builder::new()
                .name("seccomp-worker".into())
                .spawn(move || -> std::io::Result<u64> {
                    let mut events = [vmm_sys_util::epoll::EpollEvent::default(); 4];
                    let n = epoll.wait(5_000, &mut events)?;
                    assert_eq!(n, 1);
                    call2.write(1)?;
                    Ok(events[0].data())
                })
                .map_err(e)?;
            std::thread::sleep(std::time::Duration::from_millis(5));
            kick.write(1).map_err(e)?;
            let token = worker.join().map_err(|_| "worker panicked")?.map_err(e)?;
            if token != 7 || call.read().map_err(e)? != 1 {
                return Err("kick did not reach the worker".into());
            }
            // A second round of threads, as a reconnect starts.
            let handles: Vec<_> = (0..4).map(|i| std::thread::spawn(move || i * 2)).collect();
            let sum: i32 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
            if sum != 12 {
                return Err("threads".into());
            }
            let (done_a, done_b) = UnixStream::pair().map_err(e)?;
            drop(done_b);
            let mut eof = [0u8; 1];
            if (&done_a).read(&mut eof).map_err(e)? != 0 {
                return Err("no EOF".into());
            }
            (&devnull).write_all(b"a log line\n").map_err(e)?;
            let _ = std::time::SystemTime::now();
            Ok(0)
        });
        out.assert_exit(0);
    }
}
