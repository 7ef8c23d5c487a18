//! Each daemon's life: it serves one frontend after another, leaks nothing
//! across a hundred of them, survives frontends that vanish mid-request or
//! mid-handshake, stops cleanly and promptly on SIGTERM/SIGINT (idle,
//! connected, or with requests streaming, losing nothing it acknowledged),
//! takes its listening socket from `--fd` or from systemd socket
//! activation, and speaks systemd's notify, watchdog and journal
//! protocols.

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread;
use std::time::{Duration, Instant};

use vu_driver::device::{connect_socket, DeviceOptions, VuDevice};
use vu_driver::fixture::{poll_until, Daemon, Readiness};
use vu_driver::lifecycle::{
    self, assert_no_panic, assert_notify_ready_then_stopping, signal_and_wait, Snapshot,
    WatchdogPid,
};
use vu_driver::process::{fd_count, fd_targets, serving_pid, socket_holders};
use vu_driver::under_test::{Busy, DaemonUnderTest, Env, T};

/// How long a signalled daemon may take to exit: it exits at once, but a
/// loaded machine may not run it for a while; a hang still fails.
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// How long a daemon's resources may take to come back to idle after its
/// frontends left (a connection's teardown runs on after the socket
/// closed; a loaded machine may not schedule it for a while). What leaks
/// never comes back, so the checks below still fail on a leak.
const SETTLE: Duration = Duration::from_secs(30);

/// The names of `pid`'s threads (what is still running when a check fails).
fn thread_names(pid: u32) -> Vec<String> {
    vu_driver::process::threads(pid)
        .map(|t| t.iter().map(|t| t.name().to_string()).collect())
        .unwrap_or_default()
}

for_each_daemon!(
    serves_one_frontend_after_another,
    a_hundred_connections_leak_no_descriptors_threads_or_memory,
    frontends_vanishing_mid_request_or_mid_handshake_do_not_stop_it,
    sigterm_while_never_connected_exits_0_and_removes_the_socket,
    sigint_between_connections_exits_0_and_removes_the_socket,
    sigterm_while_connected_exits_0_and_removes_the_socket,
    sigterm_with_requests_in_flight_exits_0_and_loses_nothing,
    sigint_with_requests_in_flight_exits_0_and_loses_nothing,
    inherited_listening_fd_is_served_and_its_socket_file_kept,
    systemd_socket_activation_serves_connections,
    notify_socket_gets_ready_once_listening_and_stopping_on_sigterm,
    notify_socket_gets_stopping_on_sigint_too,
    watchdog_usec_makes_it_ping_every_half_period,
    watchdog_pid_naming_the_daemon_itself_enables_pings,
    watchdog_pid_naming_another_process_disables_pings,
    journal_stream_makes_every_log_line_carry_a_syslog_priority,
);

/// The daemon has not exited, and has not panicked.
fn assert_still_serving(daemon: &mut Daemon) {
    assert_eq!(daemon.try_wait().unwrap(), None, "the daemon exited");
    assert_no_panic(daemon);
}

/// One resource of each snapshot in turn, joined by `sep` ("1 -> 2 -> 3").
fn across<T: std::fmt::Display>(
    snaps: [&Snapshot; 3],
    sep: &str,
    value: impl Fn(&Snapshot) -> T,
) -> String {
    snaps.map(|s| value(s).to_string()).join(sep)
}

/// Starts the daemon in `env`; returns it, the pid that serves, and what
/// that process holds before any frontend.
fn start_idle(d: &DaemonUnderTest, env: &dyn Env) -> (Daemon, u32, Snapshot) {
    let daemon = d.start(env);
    let pid = serving_pid(daemon.pid());
    let fresh = Snapshot::take(pid);
    (daemon, pid, fresh)
}

/// Sends `sig`: the daemon exits 0 within [`EXIT_DEADLINE`].
fn signal_exits_promptly(daemon: &mut Daemon, sig: libc::c_int) {
    let (status, took) = signal_and_wait(daemon, sig, EXIT_DEADLINE);
    assert!(status.success(), "exit status {status} after signal {sig}");
    assert!(took < EXIT_DEADLINE, "took {took:?}");
}

fn serves_one_frontend_after_another(d: &DaemonUnderTest) {
    let env = d.env("reconnect");
    let socket = env.socket();
    let mut daemon = d.start(&*env);
    {
        // The first frontend vanishes without stopping its rings.
        env.connect(socket).serve(0);
    }
    {
        // The second sees what the first left, uses every request type,
        // and stops its rings like QEMU.
        let mut f = env.connect(socket);
        f.serve(1);
        f.exercise(1, &mut |_| {});
        f.device().stop_queues().unwrap();
    }
    env.connect(socket).serve(2);
    assert_still_serving(&mut daemon);
}

fn a_hundred_connections_leak_no_descriptors_threads_or_memory(d: &DaemonUnderTest) {
    let env = d.env("cycles");
    let socket = env.socket();
    let (mut daemon, pid, fresh) = start_idle(d, &*env);

    // Warm-up: what the first connection sets up for good (memory) is
    // allowed, descriptors are not. Its teardown may finish after the
    // socket closed: wait for it to settle.
    d.serve(&*env, socket, 0);
    let mut fds = 0;
    let settled = poll_until(SETTLE, || {
        fds = fd_count(pid).unwrap();
        fds <= fresh.fds
    });
    assert!(
        settled,
        "after one connection: {fds} fds, {} when idle; now {:#?} before {:#?}\n  sockets: {:#?}\n  threads: {:?}",
        fresh.fds,
        fd_targets(pid).unwrap(),
        fresh.fd_targets,
        socket_holders(&fd_targets(pid).unwrap_or_default()),
        thread_names(pid)
    );
    let base = Snapshot::take(pid);

    for round in 1..=100 {
        d.serve(&*env, socket, round);
    }
    let mut last = Snapshot::take(pid);
    let settled = poll_until(SETTLE, || {
        last = Snapshot::take(pid);
        last.within(&base) && last.within(&fresh)
    });
    let snaps = [&fresh, &base, &last];
    assert!(
        settled,
        "resources grew over 100 connections:\n  fds {}, threads {}, guest-RAM mappings {} \
         (idle, after 1, after 101)\n  fds when idle: {:#?}\n  fds now: {:#?}",
        across(snaps, " -> ", |s| s.fds),
        across(snaps, " -> ", |s| s.threads),
        across(snaps, " -> ", |s| s.guest_ram_mappings),
        fresh.fd_targets,
        last.fd_targets
    );
    eprintln!(
        "fds {}, threads {}, VmRSS {} KiB, RssAnon {} KiB (idle, after 1, after 101)",
        across(snaps, "/", |s| s.fds),
        across(snaps, "/", |s| s.threads),
        across(snaps, "/", |s| s.rss_kib),
        across(snaps, "/", |s| s.rss_anon_kib)
    );
    for (what, limit_kib, [idle, after_1, after_101]) in [
        (
            "VmRSS",
            8 * 1024,
            [fresh.rss_kib, base.rss_kib, last.rss_kib],
        ),
        (
            "RssAnon",
            16 * 1024,
            [fresh.rss_anon_kib, base.rss_anon_kib, last.rss_anon_kib],
        ),
    ] {
        let growth = after_101.saturating_sub(after_1);
        assert!(
            growth < limit_kib,
            "{what} grew by {growth} KiB over 100 connections \
             ({after_1} -> {after_101} KiB; {idle} KiB before any)"
        );
    }
    // The serve loop counted every one of them.
    let log = daemon.log_contents();
    assert!(log.contains("(connection 101)"), "{log}");
    assert_still_serving(&mut daemon);
}

fn frontends_vanishing_mid_request_or_mid_handshake_do_not_stop_it(d: &DaemonUnderTest) {
    let env = d.env("abrupt");
    let socket = env.socket();
    let (mut daemon, pid, fresh) = start_idle(d, &*env);
    for round in 0..3 {
        // Gone with requests in flight: socket closed, memory unmapped here.
        env.connect(socket).leave_in_flight(round);
    }
    // Connects and closes before a single message.
    drop(UnixStream::connect(socket).unwrap());
    // Negotiates features, then closes before the memory table.
    let stream = connect_socket(socket, T).unwrap();
    drop(VuDevice::negotiate(stream, socket, &DeviceOptions::default()).unwrap());

    d.serve(&*env, socket, 77);
    assert_eq!(daemon.try_wait().unwrap(), None, "the daemon exited");

    // Nothing of the vanished frontends is kept: their requests, memory
    // and descriptors are gone once the daemon is idle again.
    let mut now = fresh.clone();
    let idle = poll_until(SETTLE, || {
        now = Snapshot::take(pid);
        now.fds <= fresh.fds && now.guest_ram_mappings <= fresh.guest_ram_mappings
    });
    assert!(
        idle,
        "after the frontends left: fds {} -> {}, guest-RAM mappings {} -> {}\n  before: {:#?}\n  now: {:#?}\n  threads: {:?}",
        fresh.fds,
        now.fds,
        fresh.guest_ram_mappings,
        now.guest_ram_mappings,
        fresh.fd_targets,
        now.fd_targets,
        thread_names(pid)
    );
    assert_no_panic(&daemon);
}

/// Sends `sig` to a daemon that served `rounds` frontends and has none:
/// exit 0 within the deadline, its socket file removed.
fn idle_signal_exits_cleanly(d: &DaemonUnderTest, sig: libc::c_int, rounds: u64) {
    let env = d.env("idle-signal");
    let mut daemon = d.start(&*env);
    for round in 0..rounds {
        d.serve(&*env, env.socket(), round);
    }
    signal_exits_promptly(&mut daemon, sig);
    assert!(
        !env.socket().exists(),
        "socket {} left behind",
        env.socket().display()
    );
    env.assert_left_alone();
    assert_no_panic(&daemon);
}

fn sigterm_while_never_connected_exits_0_and_removes_the_socket(d: &DaemonUnderTest) {
    idle_signal_exits_cleanly(d, libc::SIGTERM, 0);
}

fn sigint_between_connections_exits_0_and_removes_the_socket(d: &DaemonUnderTest) {
    idle_signal_exits_cleanly(d, libc::SIGINT, 1);
}

fn sigterm_while_connected_exits_0_and_removes_the_socket(d: &DaemonUnderTest) {
    let env = d.env("term-connected");
    let mut daemon = d.start(&*env);
    let mut f = env.connect(env.socket());
    f.serve(0);
    signal_exits_promptly(&mut daemon, libc::SIGTERM);
    assert!(!env.socket().exists(), "socket left behind");
    assert_no_panic(&daemon);
    drop(f);
}

/// `sig` while a frontend keeps requests streaming (see
/// `Env::keep_busy`): the daemon exits 0 within the deadline and nothing
/// it acknowledged is lost.
fn signal_with_requests_in_flight(d: &DaemonUnderTest, sig: libc::c_int) {
    let env = d.env("busy-signal");
    let socket = env.socket();
    let mut daemon = d.start(&*env);
    let flags = Busy::default();
    let (started, exit, busy) = thread::scope(|scope| {
        let busy = scope.spawn(|| env.keep_busy(socket, &flags));
        // Signal while requests are streaming, not before the first one.
        let started = poll_until(T, || flags.streaming());
        let t0 = Instant::now();
        daemon.signal(sig).unwrap();
        let status = daemon.wait_timeout(EXIT_DEADLINE).unwrap();
        let took = t0.elapsed();
        // The daemon is gone (or the test fails below): nothing more can complete.
        flags.stop();
        (started, status.map(|s| (s, took)), busy.join())
    });
    let check_nothing_lost = busy.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(started, "requests were not streaming before the signal");
    let Some((status, took)) = exit else {
        panic!("no exit within {EXIT_DEADLINE:?} of signal {sig} with requests in flight");
    };
    assert!(status.success(), "exit status {status} after signal {sig}");
    assert!(took < EXIT_DEADLINE, "took {took:?} to exit");
    assert!(!socket.exists(), "socket {} left behind", socket.display());
    check_nothing_lost();
    assert_no_panic(&daemon);
}

fn sigterm_with_requests_in_flight_exits_0_and_loses_nothing(d: &DaemonUnderTest) {
    signal_with_requests_in_flight(d, libc::SIGTERM);
}

fn sigint_with_requests_in_flight_exits_0_and_loses_nothing(d: &DaemonUnderTest) {
    signal_with_requests_in_flight(d, libc::SIGINT);
}

fn inherited_listening_fd_is_served_and_its_socket_file_kept(d: &DaemonUnderTest) {
    let env = d.env("fd");
    let socket = env.socket();
    let listener = UnixListener::bind(socket).unwrap();
    let cmd = d.fd_command(&*env, listener.as_raw_fd(), 5);
    let mut daemon = d.spawn(cmd, socket, false);
    // Only the daemon listens now: if it dies, connecting fails instead of hanging.
    drop(listener);

    for round in 0..2 {
        d.serve(&*env, socket, round);
    }
    let log = daemon.log_contents();
    assert!(
        log.lines().any(|l| l
            .split_once("listening on")
            .is_some_and(|(_, rest)| rest.contains('5'))),
        "no `listening on` line naming fd 5:\n{log}"
    );
    signal_exits_promptly(&mut daemon, libc::SIGTERM);
    assert!(
        socket.exists(),
        "the daemon removed {}, a socket it did not create",
        socket.display()
    );
    assert_no_panic(&daemon);
}

fn systemd_socket_activation_serves_connections(d: &DaemonUnderTest) {
    let env = d.env("activate");
    let socket = env.socket();
    let cmd = d.activation_command(&*env, None, None);
    let ready = [Readiness::Path(socket.to_path_buf())];
    let mut daemon = Daemon::spawn("systemd-socket-activate", cmd, socket, &ready, T).unwrap();

    // The first connection makes systemd-socket-activate exec the daemon
    // (same pid) with LISTEN_FDS=1 and the socket as fd 3.
    for round in 0..2 {
        d.serve(&*env, socket, round);
    }
    let exe = std::fs::read_link(format!("/proc/{}/exe", daemon.pid())).unwrap();
    assert_eq!(exe, d.binary().canonicalize().unwrap(), "activated process");

    signal_exits_promptly(&mut daemon, libc::SIGTERM);
    assert!(
        socket.exists(),
        "the daemon removed the activated socket's file"
    );
    assert_no_panic(&daemon);
}

fn notify_ready_then_stopping(d: &DaemonUnderTest, sig: libc::c_int) {
    let env = d.env("notify");
    let socket = env.socket();
    assert_notify_ready_then_stopping(
        d.name,
        d.socket_command(&*env),
        socket,
        env.dir(),
        sig,
        EXIT_DEADLINE,
        || d.serve(&*env, socket, 3),
    );
    assert!(!socket.exists(), "socket left behind");
}

fn notify_socket_gets_ready_once_listening_and_stopping_on_sigterm(d: &DaemonUnderTest) {
    notify_ready_then_stopping(d, libc::SIGTERM);
}

fn notify_socket_gets_stopping_on_sigint_too(d: &DaemonUnderTest) {
    notify_ready_then_stopping(d, libc::SIGINT);
}

/// Starts the daemon (as it serves from its main process) with
/// NOTIFY_SOCKET, WATCHDOG_USEC=200000 and WATCHDOG_PID as given
/// (`Some("$$")`: its own pid); returns how many WATCHDOG=1 arrived in
/// the second after READY=1.
fn watchdog_pings(d: &DaemonUnderTest, watchdog_pid: Option<&str>) -> usize {
    let env = d.env("watchdog");
    let mut cmd = d.socket_command(&*env);
    cmd.args(d.watchdog_args);
    lifecycle::watchdog_pings(d.name, cmd, env.socket(), env.dir(), watchdog_pid)
}

fn watchdog_usec_makes_it_ping_every_half_period(d: &DaemonUnderTest) {
    lifecycle::assert_watchdog(WatchdogPid::Unset, |pid| watchdog_pings(d, pid));
}

fn watchdog_pid_naming_the_daemon_itself_enables_pings(d: &DaemonUnderTest) {
    lifecycle::assert_watchdog(WatchdogPid::Own, |pid| watchdog_pings(d, pid));
}

fn watchdog_pid_naming_another_process_disables_pings(d: &DaemonUnderTest) {
    lifecycle::assert_watchdog(WatchdogPid::Other, |pid| watchdog_pings(d, pid));
}

fn journal_stream_makes_every_log_line_carry_a_syslog_priority(d: &DaemonUnderTest) {
    let env = d.env("journal");
    let socket = env.socket();
    let mut cmd = d.socket_command(&*env);
    cmd.arg("--log-level").arg("debug");
    let ready = d.readiness(Some(socket));
    // JOURNAL_STREAM names the stream stderr is connected to (device:inode).
    let mut daemon = Daemon::spawn_prepared(d.name, cmd, socket, &ready, T, |cmd, log| {
        let m = log.metadata().unwrap();
        cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
    })
    .unwrap();
    d.serve(&*env, socket, 5);
    let (status, _) = signal_and_wait(&mut daemon, libc::SIGTERM, EXIT_DEADLINE);
    assert!(status.success(), "exit status {status}");

    let log = daemon.log_contents();
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty(), "no log at all");
    let is_prefixed = |l: &str| {
        let b = l.as_bytes();
        b.len() >= 3 && b[0] == b'<' && (b'0'..=b'7').contains(&b[1]) && b[2] == b'>'
    };
    // The ready line is for a management layer that reads it verbatim.
    let bare: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !is_prefixed(l) && Some(*l) != d.ready_line)
        .collect();
    assert!(bare.is_empty(), "lines without a <N> prefix: {bare:#?}");
    let listening = lines.iter().find(|l| l.contains("listening on"));
    assert!(
        listening.is_some_and(|l| l.starts_with("<6>")),
        "the `listening on` line should be info (<6>): {listening:?}"
    );
    assert!(
        listening.is_some_and(|l| l.contains(socket.to_str().unwrap())),
        "the `listening on` line should name {}: {listening:?}",
        socket.display()
    );
    assert_no_panic(&daemon);
}
