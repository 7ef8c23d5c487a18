//! Lifecycle of our `vhost-blk-daemon` (contract: /work/notes/blk-spec.md,
//! "Lifecycle / systemd"): it serves one connection after another, leaks
//! nothing across 100 of them, survives frontends that vanish mid-request,
//! stops cleanly on SIGTERM/SIGINT with nothing acknowledged lost, takes its
//! listening socket from `--fd` or from systemd socket activation, and
//! speaks systemd's notify, watchdog and journal protocols.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use vu_driver::blk::{status, BlkClient, BlkError, BlkOptions, BlkQueue, Request, SECTOR_SIZE};
use vu_driver::device::{connect_socket, VuDevice};
use vu_driver::fixture::{create_sparse_image, poll_until, Daemon, Readiness, TempDir};
use vu_driver::lifecycle::{
    self, assert_no_panic, assert_notify_ready_then_stopping, signal_and_wait, Snapshot,
    WatchdogPid,
};
use vu_driver::ours::{project_binary, vhost_blk_daemon_command, BlkDaemonOpts};
use vu_driver::process::{fd_count, inherit_fd_as, without_systemd_env};
use vu_driver::systemd::socket_activate_command;
use vu_driver::virtqueue::QueueError;

const IMAGE_SIZE: u64 = 64 << 20;
const T: Duration = Duration::from_secs(10);
/// How long a signalled daemon may take to exit (contract: "within a second or so").
const EXIT_DEADLINE: Duration = Duration::from_secs(2);

/// A temporary directory with an image and a socket path in it.
struct Setup {
    dir: TempDir,
    image: PathBuf,
    socket: PathBuf,
}

fn setup(name: &str, image_size: u64) -> Setup {
    let dir = TempDir::new(&format!("blk-life-{name}")).unwrap();
    let image = dir.join("disk.img");
    create_sparse_image(&image, image_size).unwrap();
    let socket = dir.join("blk.sock");
    Setup { dir, image, socket }
}

/// The daemon's command line for `s`, with no systemd variables inherited.
fn command(s: &Setup) -> Command {
    let mut cmd = vhost_blk_daemon_command(&s.image, &s.socket, &BlkDaemonOpts::default()).unwrap();
    without_systemd_env(&mut cmd);
    cmd
}

/// Starts the daemon on `s.socket`; ready once the socket exists.
fn start(s: &Setup) -> Daemon {
    let ready = [Readiness::Path(s.socket.clone())];
    Daemon::spawn("vhost-blk-daemon", command(s), &s.socket, &ready, T).unwrap()
}

/// Driver options sized for short tests: 16 slots of 64 KiB.
fn small_opts() -> BlkOptions {
    let mut o = BlkOptions {
        max_io: 64 * 1024,
        slots_per_queue: 16,
        ..BlkOptions::default()
    };
    o.device.mem_size = 8 << 20;
    o
}

fn connect(socket: &Path) -> BlkClient {
    BlkClient::connect(socket, &small_opts()).unwrap()
}

/// Bytes unique to `seed`: its little-endian value, then a pattern.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ (seed as u8).wrapping_add((i >> 8) as u8))
        .collect();
    let n = len.min(8);
    v[..n].copy_from_slice(&seed.to_le_bytes()[..n]);
    v
}

fn host_read(image: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    File::open(image)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

#[test]
fn serves_one_connection_after_another_and_data_carries_over() {
    let s = setup("reconnect", IMAGE_SIZE);
    let mut d = start(&s);
    let a = pattern(1, 8192);
    let b = pattern(2, 4096);
    {
        // First frontend: writes, then vanishes without stopping its rings.
        let mut c = connect(&s.socket);
        c.write(10, &a).unwrap();
    }
    {
        // Second: sees the first one's data, writes, stops its rings like QEMU.
        let mut c = connect(&s.socket);
        assert_eq!(c.read(10, a.len() as u32).unwrap(), a);
        c.write(500, &b).unwrap();
        c.flush().unwrap();
        c.device().stop_queues().unwrap();
    }
    {
        // Third: sees both.
        let mut c = connect(&s.socket);
        assert_eq!(c.config().unwrap().capacity, IMAGE_SIZE / SECTOR_SIZE);
        assert_eq!(c.read(10, a.len() as u32).unwrap(), a);
        assert_eq!(c.read(500, b.len() as u32).unwrap(), b);
    }
    assert_eq!(host_read(&s.image, 10 * SECTOR_SIZE, a.len()), a);
    assert_eq!(host_read(&s.image, 500 * SECTOR_SIZE, b.len()), b);
    assert_eq!(d.try_wait().unwrap(), None, "the daemon exited");
    assert_no_panic(&d);
}

fn one_cycle(socket: &Path, i: u64) {
    let mut c = connect(socket);
    let data = pattern(i, 4096);
    let sector = (i % 1000) * 8;
    c.write(sector, &data).unwrap();
    assert_eq!(c.read(sector, 4096).unwrap(), data, "cycle {i}");
}

#[test]
fn hundred_connect_io_disconnect_cycles_leak_nothing() {
    let s = setup("cycles", IMAGE_SIZE);
    let mut d = start(&s);
    let pid = d.pid();
    let fresh = Snapshot::take(pid);

    // Warm-up: whatever the first connection sets up for good is allowed.
    one_cycle(&s.socket, 0);
    // Its teardown may finish after the socket closed: wait until the count
    // is back where it started or give it up to 3 s to settle.
    poll_until(Duration::from_secs(3), || {
        fd_count(pid).is_ok_and(|n| n <= fresh.fds)
    });
    let base = Snapshot::take(pid);

    for i in 1..=100 {
        one_cycle(&s.socket, i);
    }
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
        "fds {}/{}/{}, threads {}/{}/{}, guest-RAM mappings {}/{}/{}, VmRSS {}/{}/{} KiB (fresh/warm/after 100)",
        fresh.fds,
        base.fds,
        last.fds,
        fresh.threads,
        base.threads,
        last.threads,
        fresh.guest_ram_mappings,
        base.guest_ram_mappings,
        last.guest_ram_mappings,
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

#[test]
fn frontends_vanishing_mid_request_or_mid_handshake_do_not_stop_it() {
    let s = setup("abrupt", IMAGE_SIZE);
    let mut d = start(&s);
    let fresh = Snapshot::take(d.pid());
    for round in 0..3u64 {
        let mut c = connect(&s.socket);
        let mut q = c.queue(0);
        let mem = q.virtqueue().mem().clone();
        for i in 0..16u64 {
            let slot = q.peek_slot().unwrap();
            mem.write(q.data_addr(slot), &pattern(round * 100 + i, 64 * 1024))
                .unwrap();
            q.submit(Request::Write {
                sector: i * 128,
                len: 64 * 1024,
            })
            .unwrap();
        }
        q.kick().unwrap();
        // Gone with 16 writes in flight: socket closed, memory unmapped here.
        drop(c);
    }
    // Connects and closes before a single message.
    drop(UnixStream::connect(&s.socket).unwrap());
    // Negotiates features, then closes before the memory table.
    let stream = connect_socket(&s.socket, T).unwrap();
    let dev = VuDevice::negotiate(stream, &s.socket, &small_opts().device).unwrap();
    drop(dev);

    let mut c = connect(&s.socket);
    let data = pattern(77, 16384);
    c.write(4096, &data).unwrap();
    assert_eq!(c.read(4096, data.len() as u32).unwrap(), data);
    drop(c);
    assert_eq!(d.try_wait().unwrap(), None, "the daemon exited");

    // Nothing of the vanished frontends is kept: their requests, memory
    // and descriptors are gone once the daemon is idle again.
    let mut now = fresh.clone();
    let idle = poll_until(Duration::from_secs(5), || {
        now = Snapshot::take(d.pid());
        now.fds <= fresh.fds && now.guest_ram_mappings <= fresh.guest_ram_mappings
    });
    assert!(
        idle,
        "after the frontends left: fds {} -> {}, guest-RAM mappings {} -> {}\n  before: {:#?}\n  now: {:#?}",
        fresh.fds,
        now.fds,
        fresh.guest_ram_mappings,
        now.guest_ram_mappings,
        fresh.fd_targets,
        now.fd_targets
    );
    assert_no_panic(&d);
}

fn idle_signal_exits_cleanly(sig: libc::c_int, serve_one_first: bool) {
    let s = setup("idle-signal", IMAGE_SIZE);
    let mut d = start(&s);
    if serve_one_first {
        one_cycle(&s.socket, 1);
    }
    let (status, took) = signal_and_wait(&mut d, sig, EXIT_DEADLINE);
    assert!(status.success(), "exit status {status} after signal {sig}");
    assert!(took < EXIT_DEADLINE, "took {took:?}");
    assert!(
        !s.socket.exists(),
        "socket {} left behind",
        s.socket.display()
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

const WRITE_LEN: u32 = 128 * 1024;

/// What write `index` puts on the disk: a fixed body stamped with the
/// index in its first 8 bytes, so that submitting costs one small copy and
/// the daemon, not the driver, is the slow side (requests pile up in it).
fn stamped(body: &[u8], index: u64) -> Vec<u8> {
    let mut v = body.to_vec();
    v[..8].copy_from_slice(&index.to_le_bytes());
    v
}

/// One write the driver saw complete.
struct Done {
    index: u64,
    status: u8,
}

/// Keeps up to 32 writes of [`WRITE_LEN`] in flight (write `i` goes to
/// byte `i * WRITE_LEN` and holds `stamped(body, i)`) until `stop` is set
/// and no completion arrived for 100 ms; counts completions in `completed`.
fn keep_writing(
    q: &mut BlkQueue<'_>,
    body: &[u8],
    max: u64,
    completed: &AtomicUsize,
    stop: &AtomicBool,
) -> Vec<Done> {
    let mem = q.virtqueue().mem().clone();
    let mut in_flight: HashMap<u16, u64> = HashMap::new();
    let mut next = 0u64;
    let mut done = Vec::new();
    let mut batch = Vec::new();
    let mut filled = std::collections::HashSet::new();
    loop {
        if !stop.load(Ordering::Acquire) {
            let mut added = false;
            while in_flight.len() < 32 && next < max {
                let Some(slot) = q.peek_slot() else { break };
                if filled.insert(slot) {
                    mem.write(q.data_addr(slot), body).unwrap();
                }
                mem.write(q.data_addr(slot), &next.to_le_bytes()).unwrap();
                let sector = next * u64::from(WRITE_LEN) / SECTOR_SIZE;
                let used = q
                    .submit(Request::Write {
                        sector,
                        len: WRITE_LEN,
                    })
                    .unwrap();
                in_flight.insert(used, next);
                next += 1;
                added = true;
            }
            if added {
                q.kick().unwrap();
            }
        }
        batch.clear();
        match q.reap(Duration::from_millis(100), &mut batch) {
            Ok(()) => {}
            Err(BlkError::Queue(QueueError::Timeout { .. })) if stop.load(Ordering::Acquire) => {
                break
            }
            Err(BlkError::Queue(QueueError::Timeout { .. })) => continue,
            Err(e) => panic!("reaping completions: {e}"),
        }
        for c in &batch {
            let index = in_flight
                .remove(&c.slot)
                .expect("a completion for a slot in flight");
            done.push(Done {
                index,
                status: c.status,
            });
        }
        completed.store(done.len(), Ordering::Release);
    }
    done
}

fn signal_with_io_in_flight(sig: libc::c_int) {
    let size = 256 << 20;
    let s = setup("busy-signal", size);
    let mut d = start(&s);
    let mut opts = small_opts();
    opts.max_io = u64::from(WRITE_LEN);
    opts.slots_per_queue = 32;
    let mut c = BlkClient::connect(&s.socket, &opts).unwrap();
    let mut q = c.queue(0);
    let completed = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let max = size / u64::from(WRITE_LEN);
    let body = pattern(0, WRITE_LEN as usize);

    let (started, at_signal, exit, writer) = thread::scope(|scope| {
        let writer = scope.spawn(|| keep_writing(&mut q, &body, max, &completed, &stop));
        // Signal while writes are streaming, not before the first one.
        let started = poll_until(T, || completed.load(Ordering::Acquire) >= 64);
        let at_signal = completed.load(Ordering::Acquire);
        let t0 = Instant::now();
        d.signal(sig).unwrap();
        let status = d.wait_timeout(Duration::from_secs(5)).unwrap();
        let took = t0.elapsed();
        // The daemon is gone (or the test fails below): nothing more can complete.
        stop.store(true, Ordering::Release);
        (started, at_signal, status.map(|s| (s, took)), writer.join())
    });
    let done = writer.unwrap_or_else(|e| std::panic::resume_unwind(e));
    eprintln!(
        "{} writes completed, {at_signal} of them before signal {sig}",
        done.len()
    );
    assert!(started, "fewer than 64 writes completed before the signal");
    let Some((status, took)) = exit else {
        panic!("no exit within 5 s of signal {sig} with I/O in flight");
    };
    assert!(status.success(), "exit status {status} after signal {sig}");
    assert!(took < EXIT_DEADLINE, "took {took:?} to exit");
    assert!(
        !s.socket.exists(),
        "socket {} left behind",
        s.socket.display()
    );

    let failed: Vec<_> = done
        .iter()
        .filter(|w| w.status != status::OK)
        .map(|w| (w.index, w.status))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} completed writes ({at_signal} before the signal) have a bad status: {:?}",
        failed.len(),
        done.len(),
        &failed[..failed.len().min(10)]
    );
    for w in &done {
        let on_disk = host_read(&s.image, w.index * u64::from(WRITE_LEN), WRITE_LEN as usize);
        assert!(
            on_disk == stamped(&body, w.index),
            "write {} completed OK but is not on the image ({} completed, {at_signal} before the signal)",
            w.index,
            done.len()
        );
    }
    assert_no_panic(&d);
}

#[test]
fn sigterm_with_io_in_flight_exits_0_and_loses_no_completed_write() {
    signal_with_io_in_flight(libc::SIGTERM);
}

#[test]
fn sigint_with_io_in_flight_exits_0_and_loses_no_completed_write() {
    signal_with_io_in_flight(libc::SIGINT);
}

#[test]
fn inherited_listening_fd_is_served_and_its_socket_file_kept() {
    let s = setup("fd", IMAGE_SIZE);
    let listener = UnixListener::bind(&s.socket).unwrap();
    let mut cmd = Command::new(project_binary("vhost-blk-daemon").unwrap());
    cmd.arg("--fd").arg("5").arg("--blk-file").arg(&s.image);
    without_systemd_env(&mut cmd);
    inherit_fd_as(&mut cmd, listener.as_raw_fd(), 5);
    let mut d = Daemon::spawn("vhost-blk-daemon", cmd, &s.socket, &[], T).unwrap();
    // Only the daemon listens now: if it dies, connecting fails instead of hanging.
    drop(listener);

    for i in 0..2u64 {
        let mut c = connect(&s.socket);
        let data = pattern(i, 8192);
        c.write(i * 64, &data).unwrap();
        assert_eq!(c.read(i * 64, 8192).unwrap(), data);
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

#[test]
fn systemd_socket_activation_serves_connections() {
    let s = setup("activate", IMAGE_SIZE);
    let daemon = project_binary("vhost-blk-daemon").unwrap();
    let args = [Path::new("--blk-file"), &s.image];
    let cmd = socket_activate_command(&s.socket, None, &daemon, &args).unwrap();
    let ready = [Readiness::Path(s.socket.clone())];
    let mut d = Daemon::spawn("systemd-socket-activate", cmd, &s.socket, &ready, T).unwrap();

    // The first connection makes systemd-socket-activate exec the daemon
    // (same pid) with LISTEN_FDS=1 and the socket as fd 3.
    for i in 0..2u64 {
        let mut c = connect(&s.socket);
        let data = pattern(i + 10, 4096);
        c.write(i * 8, &data).unwrap();
        assert_eq!(c.read(i * 8, 4096).unwrap(), data);
    }
    let exe = std::fs::read_link(format!("/proc/{}/exe", d.pid())).unwrap();
    assert_eq!(exe, daemon.canonicalize().unwrap(), "activated process");
    assert_eq!(
        host_read(&s.image, 8 * SECTOR_SIZE, 4096),
        pattern(11, 4096)
    );

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
    let s = setup("notify", IMAGE_SIZE);
    assert_notify_ready_then_stopping(
        "vhost-blk-daemon",
        command(&s),
        &s.socket,
        s.dir.path(),
        sig,
        EXIT_DEADLINE,
        || one_cycle(&s.socket, 3),
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

/// Starts the daemon with NOTIFY_SOCKET and WATCHDOG_USEC=200000, and with
/// WATCHDOG_PID as given (`Some("$$")`: its own pid, via a shell that execs
/// it); returns how many WATCHDOG=1 arrived in the second after READY=1.
fn watchdog_pings(watchdog_pid: Option<&str>) -> usize {
    let s = setup("watchdog", IMAGE_SIZE);
    lifecycle::watchdog_pings(
        "vhost-blk-daemon",
        command(&s),
        &s.socket,
        s.dir.path(),
        watchdog_pid,
    )
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
fn journal_stream_makes_every_log_line_carry_a_syslog_priority() {
    let s = setup("journal", IMAGE_SIZE);
    let mut cmd = command(&s);
    cmd.arg("--log-level").arg("debug");
    let ready = [Readiness::Path(s.socket.clone())];
    // JOURNAL_STREAM names the stream stderr is connected to (device:inode).
    let mut d =
        Daemon::spawn_prepared("vhost-blk-daemon", cmd, &s.socket, &ready, T, |cmd, log| {
            let m = log.metadata().unwrap();
            cmd.env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()));
        })
        .unwrap();
    one_cycle(&s.socket, 5);
    let (status, _) = signal_and_wait(&mut d, libc::SIGTERM, EXIT_DEADLINE);
    assert!(status.success(), "exit status {status}");

    let log = d.log_contents();
    let lines: Vec<&str> = log.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty(), "no log at all");
    let is_prefixed = |l: &str| {
        let b = l.as_bytes();
        b.len() >= 3 && b[0] == b'<' && (b'0'..=b'7').contains(&b[1]) && b[2] == b'>'
    };
    let bare: Vec<&str> = lines.iter().copied().filter(|l| !is_prefixed(l)).collect();
    assert!(bare.is_empty(), "lines without a <N> prefix: {bare:#?}");
    let listening = lines.iter().find(|l| l.contains("listening on"));
    assert!(
        listening.is_some_and(|l| l.starts_with("<6>")),
        "the `listening on` line should be info (<6>): {listening:?}"
    );
    assert!(
        listening.is_some_and(|l| l.contains(s.socket.to_str().unwrap())),
        "the `listening on` line should name {}: {listening:?}",
        s.socket.display()
    );
    assert_no_panic(&d);
}
