//! A real Linux guest (Debian's kernel under QEMU TCG, `-netdev vhost-user`
//! with `virtio-net-pci`) on our `vhost-net-daemon`, whose tap lives in a
//! network namespace the test creates: the tap's host side has
//! 10.0.0.1/24 there and the guest takes 10.0.0.2/24, so every packet stays
//! inside the namespace. The guest pings the host side and moves 10 MiB each
//! way over TCP with busybox `nc`; both ends compare SHA-256 sums. With two
//! queue pairs and two vCPUs, the daemon's two worker threads must each
//! move traffic both ways (their `/proc/PID/task/TID/io` counters); with one
//! vCPU the guest enables one pair only. A second QEMU connecting after the
//! first one exited is served too, and the daemon then stops cleanly.
//!
//! The devices have `vectors=0`: QEMU 7.2 under TCG crashes (SIGSEGV in
//! vhost_net_start) when a vhost-user netdev backs a virtio-net-pci with
//! MSI-X, so the guest uses INTx.
//!
//! Needs root (namespaces, taps), `scripts/setup.sh` (guest kit) and
//! `cargo build --workspace --bins`; anything missing is a failure.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vu_driver::fixture::{Daemon, TempDir};
use vu_driver::guest::{GuestKit, GuestOutput, NetDeviceOpts, QemuGuest};
use vu_driver::netns::NetNs;
use vu_driver::ours::vhost_net_daemon;
use vu_driver::process::serving_pid;

const TAP: &str = "vtap0";
const HOST_IP: &str = "10.0.0.1";
const GUEST_IP: &str = "10.0.0.2";
const GUEST_MAC: &str = "02:00:00:00:00:22";
/// Bytes moved each way by the transfer test.
const XFER_LEN: usize = 10 << 20;
const GUEST_TIMEOUT: Duration = Duration::from_secs(150);
/// How long one read or write on the host side may block.
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// Echo requests, and their payload size, sent from each vCPU by the
/// queue-pair test (fragmented: about 320 KB each way per vCPU).
const PINGS: u32 = 8;
const PING_SIZE: u32 = 40000;
/// Ports the host side listens on (inside the namespace).
const UP_PORT: u16 = 5001;
const DOWN_PORT: u16 = 5002;

/// The guest's network setup and a ping of the host side, which reports
/// `ping_received` and fails the script unless every reply came back.
fn setup_and_ping(count: u32) -> String {
    format!(
        r#"set -e
ip link set eth0 up
ip addr add {GUEST_IP}/24 dev eth0
vutest-kv mac "$(cat /sys/class/net/eth0/address)"
if ! ping -c {count} -i 0.2 -w 30 {HOST_IP} > /tmp/ping 2>&1; then cat /tmp/ping; exit 21; fi
cat /tmp/ping
vutest-kv ping_received "$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping)"
"#
    )
}

/// A daemon serving a tap in a fresh namespace.
struct NetSetup {
    ns: NetNs,
    _dir: TempDir,
    socket: PathBuf,
    daemon: Daemon,
}

impl NetSetup {
    /// Namespace, tap (multi-queue if `pairs` > 1) with the host address,
    /// and the daemon with `pairs` queue pairs and the guest's MAC.
    fn new(pairs: u16) -> NetSetup {
        let ns = NetNs::new("vgn").unwrap_or_else(|e| panic!("{e}"));
        ns.add_tap(TAP, pairs > 1, Some(&format!("{HOST_IP}/24")))
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = TempDir::new("vutest-guest-net").unwrap();
        let socket = dir.join("net.sock");
        let pairs_arg = pairs.to_string();
        let daemon = vhost_net_daemon(
            &ns,
            &socket,
            &[
                "--tap",
                TAP,
                "--num-queue-pairs",
                &pairs_arg,
                "--mac",
                GUEST_MAC,
                "--log-level",
                "debug",
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        NetSetup {
            ns,
            _dir: dir,
            socket,
            daemon,
        }
    }

    fn guest(&self, pairs: u16) -> QemuGuest {
        QemuGuest::with_kit(GuestKit::locate().unwrap_or_else(|e| panic!("{e}")))
            .net_vhost_user_with(
                &self.socket,
                &NetDeviceOpts {
                    mac: Some(GUEST_MAC.to_string()),
                    queue_pairs: Some(pairs),
                },
            )
            .timeout(GUEST_TIMEOUT)
    }

    /// Runs `guest` with `script`; panics with the guest's console and the
    /// daemon's log unless it passed and the daemon still serves.
    fn run(&mut self, what: &str, guest: QemuGuest, script: &str) -> GuestOutput {
        self.run_watching(what, guest, script, |_| {})
    }

    /// Like [`Self::run`], calling `on_line` with each console line as it
    /// arrives.
    fn run_watching(
        &mut self,
        what: &str,
        guest: QemuGuest,
        script: &str,
        on_line: impl FnMut(&str),
    ) -> GuestOutput {
        let result = guest.script(script).run_watching(on_line);
        let log = self.daemon.log_contents();
        let out = result.unwrap_or_else(|e| panic!("{what}: {e}\ndaemon log:\n{log}"));
        eprintln!(
            "{what}: guest boot+script+poweroff took {:?}, QEMU {}",
            out.duration, out.qemu_status
        );
        if out.ensure_pass().is_err() {
            panic!(
                "{what}: guest failed\nconsole:\n{}\nQEMU stderr:\n{}\ndaemon log:\n{log}",
                out.console_text(),
                out.qemu_stderr
            );
        }
        let status = self.daemon.try_wait().unwrap();
        assert_eq!(
            status, None,
            "{what}: the daemon exited while or after the guest ran\ndaemon log:\n{log}"
        );
        out
    }

    /// A TCP listener on the tap's host address, inside the namespace.
    fn listen(&self, port: u16) -> TcpListener {
        let l = self
            .ns
            .listen_tcp(HOST_IP, port)
            .unwrap_or_else(|e| panic!("{e}"));
        l.set_nonblocking(true).unwrap();
        l
    }
}

/// Accepts one connection, polling `stop` (set once the guest is gone).
fn accept(l: &TcpListener, stop: &AtomicBool) -> io::Result<TcpStream> {
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                return Ok(s);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return Err(io::Error::other("the guest never connected"));
                }
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Receives everything one client sends until it closes its side.
fn receive_one(l: TcpListener, stop: Arc<AtomicBool>) -> JoinHandle<io::Result<Vec<u8>>> {
    thread::spawn(move || {
        let mut s = accept(&l, &stop)?;
        let mut data = Vec::with_capacity(XFER_LEN);
        s.read_to_end(&mut data)?;
        Ok(data)
    })
}

/// Sends `data` to one client, then closes.
fn send_one(
    l: TcpListener,
    stop: Arc<AtomicBool>,
    data: Arc<Vec<u8>>,
) -> JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let mut s = accept(&l, &stop)?;
        s.write_all(&data)?;
        s.shutdown(Shutdown::Write)?;
        // Wait for the guest to close too, so nothing is reset under it.
        let mut sink = [0u8; 256];
        while s.read(&mut sink)? > 0 {}
        Ok(())
    })
}

/// The `vhost-user-backend` worker threads (one per queue pair) of process
/// `pid`: thread id and bytes read and written (`/proc/PID/task/TID/io`).
fn worker_io(pid: u32) -> Vec<(u32, u64, u64)> {
    let mut v = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return v;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != "vring_worker" {
            continue;
        }
        let io = std::fs::read_to_string(t.path().join("io")).unwrap_or_default();
        let field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let tid = t.file_name().to_string_lossy().parse().unwrap_or(0);
        v.push((tid, field("rchar:"), field("wchar:")));
    }
    v.sort_unstable();
    v
}

/// Deterministic bytes that do not repeat (xorshift64*).
fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        v.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn sha256(data: &[u8]) -> String {
    vu_driver::image::sha256_hex(data).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn guest_pings_host_and_moves_10_mib_each_way() {
    let mut net = NetSetup::new(1);
    let stop = Arc::new(AtomicBool::new(false));
    let down_data = Arc::new(pseudo_random(XFER_LEN, 0x5eed_1234_abcd_0001));
    let down_sha = sha256(&down_data);
    let up = receive_one(net.listen(UP_PORT), stop.clone());
    let down = send_one(net.listen(DOWN_PORT), stop.clone(), down_data);

    let script = format!(
        r#"{setup}
t() {{ cut -d' ' -f1 /proc/uptime; }}
dd if=/dev/urandom of=/tmp/up bs=1048576 count={mib} 2>/dev/null
vutest-kv up_sha256 "$(sha256sum < /tmp/up | cut -d' ' -f1)"
t0=$(t)
nc {HOST_IP} {UP_PORT} < /tmp/up
t1=$(t)
nc {HOST_IP} {DOWN_PORT} < /dev/null > /tmp/down
t2=$(t)
vutest-kv up_secs "$(echo "$t0 $t1" | awk '{{print $2 - $1}}')"
vutest-kv down_secs "$(echo "$t1 $t2" | awk '{{print $2 - $1}}')"
vutest-kv down_bytes "$(wc -c < /tmp/down)"
vutest-kv down_sha256 "$(sha256sum < /tmp/down | cut -d' ' -f1)"
"#,
        setup = setup_and_ping(3),
        mib = XFER_LEN >> 20,
    );
    let guest = net.guest(1);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        net.run("ping and 10 MiB each way", guest, &script)
    }));
    stop.store(true, Ordering::Relaxed);
    let up = up.join().unwrap();
    let down = down.join().unwrap();
    let out = result.unwrap_or_else(|p| std::panic::resume_unwind(p));

    assert_eq!(out.kv("mac"), Some(GUEST_MAC));
    assert_eq!(out.kv("ping_received"), Some("3"));
    eprintln!(
        "guest sent {XFER_LEN} bytes in {} s, received them in {} s",
        out.expect_kv("up_secs"),
        out.expect_kv("down_secs")
    );

    // Guest to host: the host got every byte the guest summed.
    let up = up.unwrap_or_else(|e| panic!("host side of the upload: {e}"));
    assert_eq!(up.len(), XFER_LEN, "bytes the host received");
    assert_eq!(sha256(&up), out.expect_kv("up_sha256"));

    // Host to guest.
    down.unwrap_or_else(|e| panic!("host side of the download: {e}"));
    assert_eq!(out.kv("down_bytes"), Some(&*XFER_LEN.to_string()));
    assert_eq!(out.kv("down_sha256"), Some(down_sha.as_str()));

    // The tap's host side counted the traffic both ways.
    let rx = net.ns.counter(TAP, "rx_bytes").unwrap();
    let tx = net.ns.counter(TAP, "tx_bytes").unwrap();
    assert!(rx >= XFER_LEN as u64, "tap rx_bytes {rx}");
    assert!(tx >= XFER_LEN as u64, "tap tx_bytes {tx}");
}

#[test]
fn two_queue_pairs_are_two_channels_used_from_two_vcpus() {
    let mut net = NetSetup::new(2);
    let stop = Arc::new(AtomicBool::new(false));
    // One upload pinned to each vCPU: XPS maps vCPU N to tx-N, and the
    // tap answers a flow on the queue it came from.
    let listeners: Vec<_> = (0..2u16)
        .map(|cpu| receive_one(net.listen(UP_PORT + cpu), stop.clone()))
        .collect();
    let script = format!(
        r#"vutest-kv cpus "$(nproc)"
vutest-kv queues "$(echo $(ls /sys/class/net/eth0/queues))"
{setup}
vutest-kv xps0 "$(cat /sys/class/net/eth0/queues/tx-0/xps_cpus)"
vutest-kv xps1 "$(cat /sys/class/net/eth0/queues/tx-1/xps_cpus)"
dd if=/dev/urandom of=/tmp/up bs=1048576 count=2 2>/dev/null
vutest-kv up_sha256 "$(sha256sum < /tmp/up | cut -d' ' -f1)"
for c in 0 1; do taskset -c $c nc {HOST_IP} $(({UP_PORT} + c)) < /tmp/up; done
# Big pings from one vCPU, then the other: each goes out on that vCPU's
# TX queue, and the tap sends the replies back on the queue the requests
# came from.
for c in 0 1; do taskset -c $c ping -A -q -c {PINGS} -s {PING_SIZE} {HOST_IP} > /tmp/ping; done
vutest-kv uploaded 1
# The host reads the daemon's per-thread counters now.
sleep 1
"#,
        setup = setup_and_ping(3),
    );
    let guest = net.guest(2).cpus(2);
    // The jailed daemon's workers run in its supervisor's child.
    let pid = net.daemon.pid();
    let mut workers = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        net.run_watching("two queue pairs", guest, &script, |line| {
            if line.contains("VUTEST-KV uploaded=1") {
                workers = worker_io(serving_pid(pid));
            }
        })
    }));
    stop.store(true, Ordering::Relaxed);
    let received: Vec<_> = listeners.into_iter().map(|h| h.join().unwrap()).collect();
    let out = result.unwrap_or_else(|p| std::panic::resume_unwind(p));

    assert_eq!(out.kv("cpus"), Some("2"));
    // virtio_net enables min(max_virtqueue_pairs, online CPUs) pairs and
    // registers that many queues of each kind.
    assert_eq!(out.kv("queues"), Some("rx-0 rx-1 tx-0 tx-1"));
    assert_eq!(out.kv("ping_received"), Some("3"));
    assert_eq!(out.kv("xps0"), Some("1"));
    assert_eq!(out.kv("xps1"), Some("2"));
    // One worker thread per pair, and each moved at least the pings of
    // its vCPU both ways: both pairs carried traffic each way.
    eprintln!("daemon workers (tid, read, written): {workers:?}");
    assert_eq!(workers.len(), 2, "vring_worker threads: {workers:?}");
    let least = u64::from(PINGS * PING_SIZE);
    for (tid, read, written) in &workers {
        assert!(
            *read >= least && *written >= least,
            "worker {tid} read {read} and wrote {written} bytes (want >= {least} each): {workers:?}"
        );
    }
    let want = out.expect_kv("up_sha256");
    for (cpu, r) in received.into_iter().enumerate() {
        let data = r.unwrap_or_else(|e| panic!("upload from vCPU {cpu}: {e}"));
        assert_eq!(data.len(), 2 << 20, "bytes from vCPU {cpu}");
        assert_eq!(sha256(&data), want, "upload from vCPU {cpu}");
    }
}

#[test]
fn one_vcpu_enables_one_of_two_queue_pairs() {
    // The device offers two pairs; virtio_net enables one per online vCPU
    // and registers only the enabled queues, so a 1-vCPU guest has one of
    // each and still reaches the host through pair 0.
    let mut net = NetSetup::new(2);
    let script = format!(
        "vutest-kv queues \"$(echo $(ls /sys/class/net/eth0/queues))\"\n{}",
        setup_and_ping(3)
    );
    let out = net.run("two pairs, one vCPU", net.guest(2).cpus(1), &script);
    assert_eq!(out.kv("queues"), Some("rx-0 tx-0"));
    assert_eq!(out.kv("ping_received"), Some("3"));
}

#[test]
fn a_second_guest_reconnects_to_the_same_daemon() {
    let mut net = NetSetup::new(1);
    let start = Instant::now();
    for boot in 1..=2 {
        let script = format!("{}vutest-kv boot {boot}\n", setup_and_ping(2));
        let out = net.run(&format!("guest {boot}"), net.guest(1), &script);
        assert_eq!(out.kv("boot"), Some(&*boot.to_string()));
        assert_eq!(out.kv("ping_received"), Some("2"));
    }
    eprintln!("two guests in {:?}", start.elapsed());
    // Having served both, it stops cleanly on SIGTERM.
    let status = net.daemon.stop().unwrap();
    assert!(
        status.success(),
        "the daemon's exit on SIGTERM after serving two guests: {status}\ndaemon log:\n{}",
        net.daemon.log_contents()
    );
}
