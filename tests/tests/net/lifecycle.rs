//! Lifecycle of our `vhost-net-daemon`: it serves one frontend after
//! another, leaks nothing across many of them, stops cleanly and promptly
//! on SIGTERM/SIGINT (idle or with frames streaming both ways), takes its
//! listening socket from `--fd` or from systemd socket activation, speaks
//! systemd's notify and watchdog protocols, and runs as the contrib unit's
//! own command line with the example configuration.
//!
//! The daemon runs in a network namespace of its own (`ip netns exec`,
//! which execs it under the same pid), on a tap made there.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use vu_driver::contrib::{contrib, unit};
use vu_driver::fixture::{find_binary, poll_until, Daemon, Readiness, TempDir};
use vu_driver::lifecycle::{
    self, assert_no_panic, assert_notify_ready_then_stopping, signal_and_wait, Snapshot,
    WatchdogPid,
};
use vu_driver::net::{NetClient, NetOptions, VirtioNetHdr};
use vu_driver::netns::NetNs;
use vu_driver::ours::{project_binary, vhost_net_daemon_command, vhost_net_daemon_in};
use vu_driver::process::{fd_count, inherit_fd_as};
use vu_driver::systemd::{environment_file, expand_exec, socket_activate_command, NotifyListener};
use vu_driver::tap::{udp, HostSide};

const NAME: &str = "vhost-net-daemon";
const T: Duration = Duration::from_secs(10);
/// How long a signalled daemon may take to exit.
const EXIT_DEADLINE: Duration = Duration::from_secs(2);
const TAP: &str = "vnd-life";
const MAC: &str = "02:00:00:00:00:31";
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x31];

/// A namespace with tap [`TAP`] (multi-queue when `pairs` > 1) and a
/// directory with a socket path.
struct Setup {
    ns: NetNs,
    dir: TempDir,
    socket: PathBuf,
    pairs: u16,
}

fn setup(name: &str, pairs: u16) -> Setup {
    let ns = NetNs::new("vnd-life").unwrap();
    ns.add_tap(TAP, pairs > 1, None).unwrap();
    let dir = TempDir::new(&format!("net-life-{name}")).unwrap();
    let socket = dir.join("net.sock");
    Setup {
        ns,
        dir,
        socket,
        pairs,
    }
}

impl Setup {
    /// The daemon's command line serving [`TAP`] on `self.socket`.
    fn command(&self) -> Command {
        let pairs = self.pairs.to_string();
        let args = ["--tap", TAP, "--mac", MAC, "--num-queue-pairs", &pairs];
        vhost_net_daemon_command(&self.ns, &self.socket, &args).unwrap()
    }

    /// Starts the daemon; ready once the socket exists.
    fn start(&self) -> Daemon {
        let ready = [Readiness::Path(self.socket.clone())];
        Daemon::spawn(NAME, self.command(), &self.socket, &ready, T).unwrap()
    }

    fn connect(&self) -> NetClient {
        connect_to(&self.socket, self.pairs)
    }

    fn host(&self) -> HostSide<'_> {
        HostSide::open(&self.ns, TAP)
    }
}

/// A driver with small rings (64 entries) so that many cycles stay cheap.
fn connect_to(socket: &Path, pairs: u16) -> NetClient {
    let mut opts = NetOptions {
        pairs,
        ..NetOptions::default()
    };
    opts.device.queue_size = 64;
    NetClient::connect(socket, &opts)
        .unwrap_or_else(|e| panic!("connecting to {}: {e:?}", socket.display()))
}

#[test]
fn a_second_driver_gets_frames_through_after_the_first_disconnects() {
    let s = setup("reconnect", 1);
    let mut d = s.start();
    let host = s.host();
    {
        // First frontend: exchanges frames, then vanishes without stopping its rings.
        let mut net = s.connect();
        host.assert_exchange(&mut net, 0, GUEST_MAC, "first driver");
    }
    {
        // Second: stops its rings like QEMU before it goes.
        let mut net = s.connect();
        host.assert_exchange(&mut net, 0, GUEST_MAC, "second driver");
        net.device().stop_queues().unwrap();
    }
    {
        let mut net = s.connect();
        host.assert_exchange(&mut net, 0, GUEST_MAC, "third driver");
    }
    assert_eq!(d.try_wait().unwrap(), None, "the daemon exited");
    assert_no_panic(&d);
}

fn one_cycle(s: &Setup, host: &HostSide, i: u32) {
    let mut net = s.connect();
    host.assert_exchange(
        &mut net,
        i as u16 % s.pairs,
        GUEST_MAC,
        &format!("cycle {i}"),
    );
}

#[test]
fn a_hundred_connect_exchange_disconnect_cycles_leak_nothing() {
    let s = setup("cycles", 2);
    let mut d = s.start();
    let pid = d.pid();
    let host = s.host();
    let fresh = Snapshot::take(pid);

    // Warm-up: whatever the first connection sets up for good is allowed.
    one_cycle(&s, &host, 0);
    poll_until(Duration::from_secs(3), || {
        fd_count(pid).is_ok_and(|n| n <= fresh.fds)
    });
    let base = Snapshot::take(pid);

    let t0 = Instant::now();
    for i in 1..=100 {
        one_cycle(&s, &host, i);
    }
    let took = t0.elapsed();
    let mut last = Snapshot::take(pid);
    let settled = poll_until(Duration::from_secs(5), || {
        last = Snapshot::take(pid);
        last.within(&base)
    });
    assert!(
        settled,
        "resources grew over 100 connections:\n  fds {} -> {}, threads {} -> {}, guest-RAM mappings {} -> {}\n  \
         fds after warm-up: {:#?}\n  fds now: {:#?}",
        base.fds,
        last.fds,
        base.threads,
        last.threads,
        base.guest_ram_mappings,
        last.guest_ram_mappings,
        base.fd_targets,
        last.fd_targets
    );
    eprintln!(
        "100 cycles in {took:?}; fds {}/{}/{}, threads {}/{}/{}, VmRSS {}/{}/{} KiB (fresh/warm/after 100)",
        fresh.fds,
        base.fds,
        last.fds,
        fresh.threads,
        base.threads,
        last.threads,
        fresh.rss_kib,
        base.rss_kib,
        last.rss_kib
    );
    let growth = last.rss_kib.saturating_sub(base.rss_kib);
    assert!(
        growth < 8 * 1024,
        "VmRSS grew by {growth} KiB over 100 connections ({} -> {} KiB; {} KiB before any)",
        base.rss_kib,
        last.rss_kib,
        fresh.rss_kib
    );
    assert_eq!(d.try_wait().unwrap(), None, "the daemon exited");
    assert_no_panic(&d);
}

fn idle_signal_exits_cleanly(sig: libc::c_int, serve_one_first: bool) {
    let s = setup("idle-signal", 1);
    let mut d = s.start();
    if serve_one_first {
        one_cycle(&s, &s.host(), 1);
    }
    let (status, took) = signal_and_wait(&mut d, sig, EXIT_DEADLINE);
    assert!(status.success(), "exit status {status} after signal {sig}");
    assert!(took < EXIT_DEADLINE, "took {took:?}");
    assert!(
        !s.socket.exists(),
        "socket {} left behind",
        s.socket.display()
    );
    assert!(
        vu_driver::tap::link(&s.ns, TAP).is_some(),
        "the daemon removed a tap it did not create"
    );
    assert_no_panic(&d);
}

#[test]
fn sigterm_while_never_connected_exits_0_and_removes_the_socket() {
    idle_signal_exits_cleanly(libc::SIGTERM, false);
}

#[test]
fn sigint_between_connections_exits_0_and_removes_the_socket() {
    idle_signal_exits_cleanly(libc::SIGINT, true);
}

/// The relay (common/src/relay.rs) makes a private directory under
/// `$RUNTIME_DIRECTORY` or `$TMPDIR`; a clean exit removes it again.
#[test]
fn sigterm_after_serving_leaves_nothing_in_its_temporary_directory() {
    let s = setup("tmpdir", 1);
    let tmp = s.dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut cmd = s.command();
    cmd.env("TMPDIR", &tmp).env_remove("RUNTIME_DIRECTORY");
    let ready = [Readiness::Path(s.socket.clone())];
    let mut d = Daemon::spawn(NAME, cmd, &s.socket, &ready, T).unwrap();
    let host = s.host();
    one_cycle(&s, &host, 1);
    one_cycle(&s, &host, 2);
    let (status, _) = signal_and_wait(&mut d, libc::SIGTERM, EXIT_DEADLINE);
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        status.success(),
        "exit status {status}; left in $TMPDIR: {left:?}"
    );
    assert!(
        left.is_empty(),
        "left in $TMPDIR after a clean exit: {left:?}"
    );
    assert_no_panic(&d);
}

/// Frames streaming both ways (the driver sending on every pair, a host
/// thread writing to the guest's MAC on the tap) when `sig` arrives, with
/// the driver still connected: the daemon exits 0 within the deadline.
fn signal_with_traffic_in_flight(sig: libc::c_int) {
    let s = setup("busy-signal", 2);
    let mut d = s.start();
    let host = s.host();
    let mut net = s.connect();
    host.assert_exchange(&mut net, 0, GUEST_MAC, "before the flood");
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let injected = AtomicU64::new(0);
    let host_mac = [0x02, 0, 0, 0, 0, 0xfe];
    let tx_frame = udp(GUEST_MAC, host_mac, &[0x5a; 1000]);
    let rx_frame = udp(host_mac, GUEST_MAC, &[0xa5; 1000]);
    let hdr = VirtioNetHdr::plain();

    let (started, exit) = thread::scope(|scope| {
        let driver = scope.spawn(|| {
            // The driver keeps its rings busy until the daemon is gone.
            while !stop.load(Ordering::Acquire) {
                for pair in 0..s.pairs {
                    let batch = [(hdr, &tx_frame[..]); 32];
                    match net.send_batch(pair, &batch) {
                        Ok(n) => sent.fetch_add(n as u64, Ordering::Relaxed),
                        Err(_) => return,
                    };
                    let _ = net.tx_reap(pair);
                    let _ = net.recv_count(pair, Duration::from_millis(1));
                }
            }
        });
        let host = scope.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                if host.socket().send(&rx_frame).is_ok() {
                    injected.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let started = poll_until(T, || {
            sent.load(Ordering::Relaxed) >= 1000 && injected.load(Ordering::Relaxed) >= 1000
        });
        let t0 = Instant::now();
        d.signal(sig).unwrap();
        let status = d.wait_timeout(Duration::from_secs(5)).unwrap();
        let took = t0.elapsed();
        stop.store(true, Ordering::Release);
        let _ = driver.join();
        let _ = host.join();
        (started, status.map(|st| (st, took)))
    });
    eprintln!(
        "{} frames sent, {} injected when signal {sig} came",
        sent.load(Ordering::Relaxed),
        injected.load(Ordering::Relaxed)
    );
    assert!(started, "traffic did not get going before the signal");
    let Some((status, took)) = exit else {
        panic!("no exit within 5 s of signal {sig} with traffic in flight");
    };
    assert!(status.success(), "exit status {status} after signal {sig}");
    assert!(took < EXIT_DEADLINE, "took {took:?} to exit");
    assert!(
        !s.socket.exists(),
        "socket {} left behind",
        s.socket.display()
    );
    assert_no_panic(&d);
}

#[test]
fn sigterm_with_traffic_in_flight_exits_0_promptly() {
    signal_with_traffic_in_flight(libc::SIGTERM);
}

#[test]
fn sigint_with_traffic_in_flight_exits_0_promptly() {
    signal_with_traffic_in_flight(libc::SIGINT);
}

#[test]
fn inherited_listening_fd_is_served_and_its_socket_file_kept() {
    let s = setup("fd", 1);
    let listener = UnixListener::bind(&s.socket).unwrap();
    let mut cmd = vhost_net_daemon_in(&s.ns).unwrap();
    cmd.args(["--fd", "5", "--tap", TAP, "--mac", MAC]);
    inherit_fd_as(&mut cmd, listener.as_raw_fd(), 5);
    let mut d = Daemon::spawn(NAME, cmd, &s.socket, &[], T).unwrap();
    // Only the daemon listens now: if it dies, connecting fails instead of hanging.
    drop(listener);

    let host = s.host();
    for i in 0..2 {
        one_cycle(&s, &host, i);
    }
    let log = d.log_contents();
    assert!(
        log.lines().any(|l| l
            .split_once("listening on")
            .is_some_and(|(_, rest)| rest.contains('5'))),
        "no `listening on` line naming fd 5:\n{log}"
    );
    let (status, took) = signal_and_wait(&mut d, libc::SIGTERM, EXIT_DEADLINE);
    assert!(status.success(), "exit status {status}");
    assert!(took < EXIT_DEADLINE, "took {took:?}");
    assert!(
        s.socket.exists(),
        "the daemon removed {}, a socket it did not create",
        s.socket.display()
    );
    assert_no_panic(&d);
}

/// `systemd-socket-activate -l SOCKET [-E NOTIFY_SOCKET=..] ip netns exec
/// NS vhost-net-daemon ARGS`: the first connection makes it exec `ip`,
/// which execs the daemon, all under one pid (`LISTEN_PID` holds).
fn activated(s: &Setup, notify: Option<&Path>, args: &[String]) -> Daemon {
    let ip = find_binary("ip").unwrap();
    let daemon = project_binary(NAME).unwrap();
    let mut argv: Vec<String> = vec!["netns".into(), "exec".into(), s.ns.name().into()];
    argv.push(daemon.to_str().unwrap().into());
    argv.extend_from_slice(args);
    let cmd = socket_activate_command(&s.socket, notify, &ip, &argv).unwrap();
    let ready = [Readiness::Path(s.socket.clone())];
    Daemon::spawn("systemd-socket-activate", cmd, &s.socket, &ready, T).unwrap()
}

#[test]
fn systemd_socket_activation_serves_connections() {
    let s = setup("activate", 1);
    let args: Vec<String> = ["--tap", TAP, "--mac", MAC].map(String::from).to_vec();
    let mut d = activated(&s, None, &args);
    let host = s.host();
    for i in 0..2 {
        one_cycle(&s, &host, i);
    }
    let exe = std::fs::read_link(format!("/proc/{}/exe", d.pid())).unwrap();
    let daemon = project_binary(NAME).unwrap();
    assert_eq!(exe, daemon.canonicalize().unwrap(), "activated process");

    let (status, took) = signal_and_wait(&mut d, libc::SIGTERM, EXIT_DEADLINE);
    assert!(status.success(), "exit status {status}");
    assert!(took < EXIT_DEADLINE, "took {took:?}");
    assert!(
        s.socket.exists(),
        "the daemon removed the activated socket's file"
    );
    assert_no_panic(&d);
}

fn notify_ready_then_stopping(sig: libc::c_int) {
    let s = setup("notify", 1);
    let host = s.host();
    assert_notify_ready_then_stopping(
        NAME,
        s.command(),
        &s.socket,
        s.dir.path(),
        sig,
        EXIT_DEADLINE,
        || one_cycle(&s, &host, 3),
    );
}

#[test]
fn notify_socket_gets_ready_once_listening_and_stopping_on_sigterm() {
    notify_ready_then_stopping(libc::SIGTERM);
}

#[test]
fn notify_socket_gets_stopping_on_sigint_too() {
    notify_ready_then_stopping(libc::SIGINT);
}

/// WATCHDOG=1 pings in the second after READY=1 with WATCHDOG_USEC=200000
/// and WATCHDOG_PID as given.
fn watchdog_pings(watchdog_pid: Option<&str>) -> usize {
    let s = setup("watchdog", 1);
    lifecycle::watchdog_pings(NAME, s.command(), &s.socket, s.dir.path(), watchdog_pid)
}

#[test]
fn watchdog_usec_makes_it_ping_every_half_period() {
    lifecycle::assert_watchdog(WatchdogPid::Unset, watchdog_pings);
}

#[test]
fn watchdog_pid_naming_the_daemon_itself_enables_pings() {
    lifecycle::assert_watchdog(WatchdogPid::Own, watchdog_pings);
}

#[test]
fn watchdog_pid_naming_another_process_disables_pings() {
    lifecycle::assert_watchdog(WatchdogPid::Other, watchdog_pings);
}

#[test]
fn unit_command_line_with_the_example_config_serves_under_socket_activation() {
    let service = unit("systemd/vhost-net-daemon@.service");
    // Environment= defaults first, then the EnvironmentFile overrides them.
    let mut vars = service.environment("tap-vm0");
    let conf = environment_file(&contrib("systemd/vhost-net-daemon-example.conf")).unwrap();
    vars.extend(conf);
    assert!(
        vars.contains_key("VHOST_NET_TAP"),
        "the example sets VHOST_NET_TAP"
    );
    let opts = vars["VHOST_NET_OPTS"].clone();
    let pairs: u16 = opts
        .split_whitespace()
        .skip_while(|w| *w != "--num-queue-pairs")
        .nth(1)
        .map_or(1, |n| n.parse().unwrap());
    // The example's tap, made as its comment says, under this test's name.
    let s = setup("unit-cmd", pairs);
    vars.insert("VHOST_NET_TAP".into(), TAP.into());
    let argv = expand_exec(service.one("Service", "ExecStart"), "tap-vm0", &vars);
    assert_eq!(argv[0], "/usr/libexec/vhost-net-daemon");

    let mut n = NotifyListener::bind(s.dir.path()).unwrap();
    let mut d = activated(&s, Some(n.path()), &argv[1..]);
    {
        // The connection starts the daemon with the example's options.
        let mut net = s.connect();
        let cfg = *net.config();
        assert_eq!(cfg.max_virtqueue_pairs.unwrap_or(1), pairs, "{opts}");
        let mac = cfg.mac.expect("VIRTIO_NET_F_MAC");
        if let Some(want) = opts.split_whitespace().skip_while(|w| *w != "--mac").nth(1) {
            let want: Vec<u8> = want
                .split(':')
                .map(|b| u8::from_str_radix(b, 16).unwrap())
                .collect();
            assert_eq!(mac.to_vec(), want, "{opts}");
        }
        let host = s.host();
        for pair in 0..pairs {
            host.assert_exchange(&mut net, pair, mac, &format!("unit pair {pair}"));
        }
    }
    // Type=notify: READY=1 must have been sent.
    assert!(
        n.wait_for("READY=1", T).unwrap(),
        "no READY=1 for Type=notify; got {:?}",
        n.seen
    );
    let (status, _) = signal_and_wait(&mut d, libc::SIGTERM, EXIT_DEADLINE);
    assert!(status.success(), "exit status {status}");
    assert_no_panic(&d);
}
