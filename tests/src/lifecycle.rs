//! Lifecycle checks every daemon's tests make, whatever the device: what a
//! process holds (to find leaks across connections), signals and exit,
//! systemd's notify protocol (`READY=1`, `STOPPING=1`) and watchdog, and
//! a daemon's log free of panics. The `assert_*` functions panic with what
//! is wrong.

use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::fixture::Daemon;
use crate::memory::GUEST_RAM_MEMFD_NAME;
use crate::process::{fd_count, fd_targets, mappings_containing, status_kib, thread_count};
use crate::systemd::{with_watchdog_pid, NotifyListener};

/// How long a daemon may take to come up or to answer in these checks.
const T: Duration = Duration::from_secs(10);

/// What a daemon holds at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Open descriptors.
    pub fds: usize,
    /// Threads.
    pub threads: usize,
    /// Mappings of the driver's guest-RAM memfd ([`GUEST_RAM_MEMFD_NAME`]).
    pub guest_ram_mappings: usize,
    /// Resident memory.
    pub rss_kib: u64,
    /// Resident anonymous memory (the heap, not the binary's pages).
    pub rss_anon_kib: u64,
    /// What each descriptor points at, for failure messages.
    pub fd_targets: Vec<String>,
}

impl Snapshot {
    /// Reads `/proc/PID`; panics if the process is gone.
    pub fn take(pid: u32) -> Snapshot {
        Snapshot {
            fds: fd_count(pid).unwrap(),
            threads: thread_count(pid).unwrap(),
            guest_ram_mappings: mappings_containing(pid, GUEST_RAM_MEMFD_NAME).unwrap(),
            rss_kib: status_kib(pid, "VmRSS").unwrap(),
            rss_anon_kib: status_kib(pid, "RssAnon").unwrap(),
            fd_targets: fd_targets(pid).unwrap(),
        }
    }

    /// Holds no more descriptors, threads and guest-RAM mappings than `base`.
    pub fn within(&self, base: &Snapshot) -> bool {
        self.fds <= base.fds
            && self.threads <= base.threads
            && self.guest_ram_mappings <= base.guest_ram_mappings
    }
}

/// Sends `sig` and waits up to `deadline` for the exit; returns the status
/// and how long it took. Panics if it did not exit (the daemon's guard
/// prints its log).
pub fn signal_and_wait(
    d: &mut Daemon,
    sig: libc::c_int,
    deadline: Duration,
) -> (ExitStatus, Duration) {
    let t0 = Instant::now();
    d.signal(sig).unwrap();
    let status = d.wait_timeout(deadline).unwrap();
    let took = t0.elapsed();
    let Some(status) = status else {
        panic!("no exit within {deadline:?} of signal {sig}");
    };
    (status, took)
}

/// Fails if the daemon's log shows a panic (of any thread, even one that
/// did not take the process down).
pub fn assert_no_panic(d: &Daemon) {
    let log = d.log_contents();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

/// Spawns `cmd` (a daemon serving on `socket`, systemd's variables
/// removed) with `NOTIFY_SOCKET` in `dir`, and checks that it sends
/// `READY=1` only once `socket` accepts, with a `STATUS=` line, still
/// serves (`serve` runs a connection), and sends `STOPPING=1` after `sig`,
/// then exits 0 within `exit_deadline`.
pub fn assert_notify_ready_then_stopping(
    name: &str,
    mut cmd: Command,
    socket: &Path,
    dir: &Path,
    sig: libc::c_int,
    exit_deadline: Duration,
    serve: impl FnOnce(),
) {
    let mut n = NotifyListener::bind(dir).unwrap();
    cmd.env("NOTIFY_SOCKET", n.path());
    let mut d = Daemon::spawn(name, cmd, socket, &[], T).unwrap();

    assert!(
        n.wait_for("READY=1", T).unwrap(),
        "no READY=1; got {:?}",
        n.seen
    );
    // READY=1 promises a listening socket: connecting must work right now.
    let probe = std::os::unix::net::UnixStream::connect(socket);
    assert!(
        probe.is_ok(),
        "READY=1 sent but {} does not accept: {probe:?}",
        socket.display()
    );
    drop(probe);
    assert!(
        n.seen
            .iter()
            .any(|m| m.lines().any(|l| l.starts_with("STATUS="))),
        "no STATUS= with or before READY=1; got {:?}",
        n.seen
    );
    // Still serving after the probe.
    serve();

    d.signal(sig).unwrap();
    assert!(
        n.wait_for_new("STOPPING=1", exit_deadline).unwrap(),
        "no STOPPING=1 after signal {sig}; got {:?}",
        n.seen
    );
    let status = d.wait_timeout(exit_deadline).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}"
    );
    assert_no_panic(&d);
}

/// The `WATCHDOG_PID` cases every daemon's lifecycle tests cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogPid {
    /// Not set: the watchdog is for the daemon.
    Unset,
    /// The daemon's own pid (`$$` in the service's shell).
    Own,
    /// Another process (pid 1).
    Other,
}

/// Checks what a daemon does in `case`: about 10 `WATCHDOG=1` in the
/// second with `WATCHDOG_USEC=200000` unless `WATCHDOG_PID` names another
/// process, then none. `pings` runs the daemon with the given
/// `WATCHDOG_PID` (see [`watchdog_pings`]).
pub fn assert_watchdog(case: WatchdogPid, pings: impl FnOnce(Option<&str>) -> usize) {
    match case {
        WatchdogPid::Unset => {
            let n = pings(None);
            assert!(
                (3..=30).contains(&n),
                "{n} WATCHDOG=1 in 1 s with WATCHDOG_USEC=200000"
            );
        }
        WatchdogPid::Own => {
            let n = pings(Some("$$"));
            assert!(
                (3..=30).contains(&n),
                "{n} WATCHDOG=1 in 1 s with WATCHDOG_PID = own pid"
            );
        }
        WatchdogPid::Other => {
            let n = pings(Some("1"));
            assert_eq!(
                n, 0,
                "WATCHDOG=1 sent although WATCHDOG_PID=1 is not the daemon"
            );
        }
    }
}

/// Spawns `cmd` (a daemon serving on `socket`) with `NOTIFY_SOCKET` in
/// `dir`, `WATCHDOG_USEC=200000` and `WATCHDOG_PID` as given (see
/// [`with_watchdog_pid`]); returns how many `WATCHDOG=1` arrived in the
/// second after `READY=1`.
pub fn watchdog_pings(
    name: &str,
    mut cmd: Command,
    socket: &Path,
    dir: &Path,
    watchdog_pid: Option<&str>,
) -> usize {
    let mut n = NotifyListener::bind(dir).unwrap();
    cmd.env("NOTIFY_SOCKET", n.path())
        .env("WATCHDOG_USEC", "200000");
    let cmd = with_watchdog_pid(cmd, watchdog_pid);
    let d = Daemon::spawn(name, cmd, socket, &[], T).unwrap();
    assert!(
        n.wait_for("READY=1", T).unwrap(),
        "no READY=1; got {:?}",
        n.seen
    );
    let pings = n.count_for("WATCHDOG=1", Duration::from_secs(1)).unwrap();
    eprintln!("WATCHDOG_PID={watchdog_pid:?}: {pings} WATCHDOG=1 in 1 s");
    assert_no_panic(&d);
    pings
}
