//! virtio-net workloads between the driver and a tap: our
//! `vhost-net-daemon` serves a tap in a network namespace made for the run,
//! and the tap's host side sinks or sources frames. Next to it, the
//! ceiling: a plain loop in this process that writes frames (with their
//! 12-byte `virtio_net_hdr_v1`) into a second, identical tap, or reads them
//! from it, one system call per frame.
//!
//! - TX (`net-tx-*`): the driver keeps its TX ring full of one prefilled
//!   frame (polling for completions, so the daemon never has to signal).
//!   What reached the tap is the tap's own `rx_packets`/`rx_bytes`
//!   counters: nothing on the host side reads the frames (their
//!   destination MAC is not the tap's, so the host stack drops them on
//!   arrival, in the writer's system call, as it would for the guest of a
//!   bridge-less tap).
//! - RX (`net-rx-*`): a host thread injects frames into the tap with an
//!   AF_PACKET socket (`sendmmsg`, `PACKET_QDISC_BYPASS`) as fast as the
//!   receiver takes them, keeping up to [`RX_AHEAD`] frames queued (the tap
//!   holds 500; past that it drops): continuously by default, or in bursts
//!   of that many, each sent once the last one was received, so that the
//!   tap runs empty between bursts (see [`TapBench::set_rx_continuous`]).
//!   The driver keeps its RX ring full and
//!   sleeps on the call eventfd when it is empty. Its CPU and the
//!   injector's are reported apart from the daemon's.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::host::{tcp_gso_frame, thread_cpu_s, tight_timer_slack, Injector, TapFd, INJECT_BATCH};
use crate::bench::{alternate, Row, Sample};
use crate::fixture::{Daemon, FixtureError, TempDir};
use crate::net::frame::{Mac, UdpFrame};
use crate::net::{NetClient, NetError, NetOptions, VirtioNetHdr, NET_HDR_LEN};
use crate::netns::{NetNs, NetNsError};
use crate::ours::vhost_net_daemon;

/// The driver's MAC (`--mac` of the daemon); RX frames are sent to it.
pub const GUEST_MAC: Mac = [0x02, 0, 0, 0, 0, 0x10];
/// The host side's MAC: TX frames go to it (not the tap's own address).
pub const HOST_MAC: Mac = [0x02, 0, 0, 0, 0, 0x20];
/// Backend name of our daemon in the table.
pub const DAEMON: &str = "vhost-net-daemon";
/// Backend name of the plain loop on the tap.
pub const DIRECT: &str = "tap-direct";
const DAEMON_TAP: &str = "vub-vnd";
const DIRECT_TAP: &str = "vub-raw";
/// Frames the RX injector keeps ahead of the receiver, and the burst size.
pub const RX_AHEAD: u64 = 300;
/// Pause after the receiver took a whole burst, before the next one, so
/// the daemon finds the tap empty and ends its RX batch. (Shorter gaps, or
/// no bursts, let one batch of vhost-net-daemon run past ~1000 frames,
/// after which it returns every RX buffer empty and then hands out a
/// buffer twice.)
const RX_BURST_GAP: Duration = Duration::from_micros(1000);
/// The TSO workload's frame: 64 KiB, cut into 1448-byte segments by whoever
/// segments it.
const TSO_FRAME: usize = 64 << 10;
const TSO_MSS: u16 = 1448;
const WAIT: Duration = Duration::from_secs(5);
/// TX slots of the driver (its queue size).
const TX_SLOTS: usize = 256;

/// Which way frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Driver (guest) to tap.
    Tx,
    /// Tap to driver.
    Rx,
}

/// One tap workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapWorkload {
    /// Name in the table.
    pub name: &'static str,
    /// Direction.
    pub dir: Dir,
    /// Ethernet frame length (no virtio header).
    pub frame_len: usize,
    /// A TCPv4 GSO frame with a partial checksum instead of a plain UDP one.
    pub tso: bool,
}

const fn w(name: &'static str, dir: Dir, frame_len: usize, tso: bool) -> TapWorkload {
    TapWorkload {
        name,
        dir,
        frame_len,
        tso,
    }
}

/// The standard set.
pub const STANDARD: [TapWorkload; 5] = [
    w("net-tx-64b", Dir::Tx, 64, false),
    w("net-tx-1500b", Dir::Tx, 1500, false),
    w("net-rx-64b", Dir::Rx, 64, false),
    w("net-rx-1500b", Dir::Rx, 1500, false),
    w("net-tx-tso-64k", Dir::Tx, TSO_FRAME, true),
];

/// Errors of the tap workloads.
#[derive(Debug, thiserror::Error)]
pub enum TapBenchError {
    /// The namespace or a tap could not be set up or read.
    #[error("network namespace")]
    NetNs(#[from] NetNsError),
    /// The daemon did not start.
    #[error("starting vhost-net-daemon")]
    Daemon(#[from] FixtureError),
    /// The driver failed.
    #[error("virtio-net driver")]
    Net(#[from] NetError),
    /// A host-side system call failed.
    #[error("{what}")]
    Host {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `ip -s -j link show` printed something unexpected.
    #[error("statistics of {tap}: {why}")]
    Stats {
        /// The interface.
        tap: &'static str,
        /// What was wrong.
        why: String,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, TapBenchError>;

fn host(what: &'static str) -> impl FnOnce(io::Error) -> TapBenchError {
    move |source| TapBenchError::Host { what, source }
}

/// What a run measured besides its [`Sample`] (summed over repetitions).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Extra {
    /// CPU seconds of the host-side injector thread (RX).
    pub host_cpu_s: f64,
    /// CPU seconds of the driver's thread (daemon rows).
    pub driver_cpu_s: f64,
    /// Frames the tap dropped (its `rx_dropped` or `tx_dropped`) or the
    /// injector could not queue.
    pub dropped: u64,
    /// RX buffers the daemon returned empty (used length below the header).
    pub empty_buffers: u64,
}

impl std::ops::AddAssign for Extra {
    fn add_assign(&mut self, o: Extra) {
        self.host_cpu_s += o.host_cpu_s;
        self.driver_cpu_s += o.driver_cpu_s;
        self.dropped += o.dropped;
        self.empty_buffers += o.empty_buffers;
    }
}

/// One workload on one backend: its row and the extra figures.
#[derive(Debug, Clone)]
pub struct TapResult {
    /// The row for the main table and the JSON lines.
    pub row: Row,
    /// CPU outside the backend, drops.
    pub extra: Extra,
    /// Frames over every repetition.
    pub frames: u64,
}

/// The tap's counters the workloads read.
#[derive(Debug, Clone, Copy, Default)]
struct TapStats {
    rx_packets: u64,
    rx_bytes: u64,
    rx_dropped: u64,
    tx_dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Direct,
    Daemon,
}

/// The fixture: a namespace with two identical single-queue taps, our
/// daemon on one with the driver connected, the plain loop's queue on the
/// other, and an injector on each. Fields drop in order: the driver
/// disconnects, the daemon stops, the namespace goes with its taps.
pub struct TapBench {
    net: NetClient,
    daemon: Daemon,
    direct: TapFd,
    inject_daemon: Injector,
    inject_direct: Injector,
    ns: NetNs,
    _dir: TempDir,
    rx_continuous: bool,
}

impl TapBench {
    /// Sets everything up; `daemon_args` are added to the daemon's command line.
    pub fn start(daemon_args: &[String]) -> Result<Self> {
        let ns = NetNs::new("vub")?;
        // No IPv6: the kernel would send router solicitations and MLD
        // reports of its own on the taps.
        for key in ["all", "default"] {
            let _ = ns
                .command("sysctl".as_ref())
                .args(["-qw", &format!("net.ipv6.conf.{key}.disable_ipv6=1")])
                .status();
        }
        ns.add_tap(DAEMON_TAP, false, None)?;
        ns.add_tap(DIRECT_TAP, false, None)?;
        let dir = TempDir::new("vu-bench-net")?;
        let sock = dir.join("net.sock");
        let mac = GUEST_MAC
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let mut args = vec!["--tap", DAEMON_TAP, "--mac", &mac];
        args.extend(daemon_args.iter().map(String::as_str));
        let daemon = vhost_net_daemon(&ns, &sock, &args)?;
        let net = NetClient::connect(&sock, &NetOptions::default())?;
        let direct = TapFd::open(&ns, DIRECT_TAP).map_err(host("opening the direct tap"))?;
        let inject_daemon = Injector::open(&ns, DAEMON_TAP).map_err(host("AF_PACKET injector"))?;
        let inject_direct = Injector::open(&ns, DIRECT_TAP).map_err(host("AF_PACKET injector"))?;
        Ok(TapBench {
            net,
            daemon,
            direct,
            inject_daemon,
            inject_direct,
            ns,
            _dir: dir,
            rx_continuous: true,
        })
    }

    /// RX injection without pauses (the default), or in bursts that let the
    /// tap run empty between them.
    pub fn set_rx_continuous(&mut self, on: bool) {
        self.rx_continuous = on;
    }

    /// The last `n` lines of the daemon's log, for error reports.
    pub fn daemon_log_tail(&self, n: usize) -> String {
        let log = self.daemon.log_contents();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The daemon's PID.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Runs `w` `reps` times on the plain loop and on the daemon,
    /// alternating; returns the tap-direct result first.
    pub fn run(
        &mut self,
        w: &TapWorkload,
        duration: Duration,
        reps: u32,
    ) -> Result<Vec<TapResult>> {
        let pid = self.daemon.pid();
        let mut backends = [Backend::Direct, Backend::Daemon];
        let mut extras = [Extra::default(); 2];
        let samples = alternate(
            &mut backends,
            reps,
            |b| (*b == Backend::Daemon).then_some(pid),
            |b| {
                let (s, e) = self.run_once(*b, w, duration)?;
                extras[usize::from(*b == Backend::Daemon)] += e;
                Ok::<_, TapBenchError>(s)
            },
        )?;
        Ok(backends
            .iter()
            .zip(samples)
            .zip(extras)
            .map(|((b, s), extra)| {
                let (name, p) = match b {
                    Backend::Direct => (DIRECT, None),
                    Backend::Daemon => (DAEMON, Some(pid)),
                };
                TapResult {
                    row: Row::from_samples(w.name, name, &s, p),
                    extra,
                    frames: s.iter().map(|x| x.ops).sum(),
                }
            })
            .collect())
    }

    fn run_once(&mut self, b: Backend, w: &TapWorkload, d: Duration) -> Result<(Sample, Extra)> {
        match (w.dir, b) {
            (Dir::Tx, Backend::Daemon) => self.driver_tx(w, d),
            (Dir::Tx, Backend::Direct) => self.direct_tx(w, d),
            (Dir::Rx, Backend::Daemon) => self.driver_rx(w, d),
            (Dir::Rx, Backend::Direct) => self.direct_rx(w, d),
        }
    }

    fn stats(&self, tap: &'static str) -> Result<TapStats> {
        let out = self.ns.ip(&["-s", "-j", "link", "show", tap])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| TapBenchError::Stats {
                tap,
                why: e.to_string(),
            })?;
        let s = &v[0]["stats64"];
        let get = |dir: &str, f: &str| {
            s[dir][f].as_u64().ok_or_else(|| TapBenchError::Stats {
                tap,
                why: format!("no stats64.{dir}.{f} in {out}"),
            })
        };
        Ok(TapStats {
            rx_packets: get("rx", "packets")?,
            rx_bytes: get("rx", "bytes")?,
            rx_dropped: get("rx", "dropped")?,
            tx_dropped: get("tx", "dropped")?,
        })
    }

    /// The TX workload's header and frame.
    fn tx_frame(w: &TapWorkload) -> (VirtioNetHdr, Vec<u8>) {
        if w.tso {
            return tcp_gso_frame(GUEST_MAC, HOST_MAC, w.frame_len, TSO_MSS);
        }
        let f = UdpFrame {
            src_mac: GUEST_MAC,
            dst_mac: HOST_MAC,
            ..UdpFrame::default()
        };
        (VirtioNetHdr::plain(), f.build_len(w.frame_len, 7))
    }

    /// What reached the tap between `before` and now, as a sample.
    fn tx_sample(
        &self,
        tap: &'static str,
        before: TapStats,
        elapsed: Duration,
    ) -> Result<(Sample, u64)> {
        let after = self.stats(tap)?;
        let s = Sample {
            ops: after.rx_packets - before.rx_packets,
            bytes: after.rx_bytes - before.rx_bytes,
            elapsed,
            ..Sample::default()
        };
        Ok((s, after.rx_dropped - before.rx_dropped))
    }

    fn driver_tx(&mut self, w: &TapWorkload, d: Duration) -> Result<(Sample, Extra)> {
        let (hdr, frame) = Self::tx_frame(w);
        self.net.tx_prefill(0, &hdr, &frame)?;
        let before = self.stats(DAEMON_TAP)?;
        let cpu0 = thread_cpu_s();
        let t0 = Instant::now();
        while t0.elapsed() < d {
            if self.net.send_prefilled(0, usize::MAX)? == 0 {
                std::hint::spin_loop();
            }
        }
        self.net.tx_flush(0, WAIT)?;
        let elapsed = t0.elapsed();
        let driver_cpu_s = thread_cpu_s() - cpu0;
        let (s, dropped) = self.tx_sample(DAEMON_TAP, before, elapsed)?;
        let extra = Extra {
            driver_cpu_s,
            dropped,
            ..Extra::default()
        };
        Ok((s, extra))
    }

    fn direct_tx(&mut self, w: &TapWorkload, d: Duration) -> Result<(Sample, Extra)> {
        let (hdr, frame) = Self::tx_frame(w);
        let mut buf = hdr.to_bytes().to_vec();
        buf.extend_from_slice(&frame);
        // As many copies as the driver has TX slots, written in turn, so the
        // loop reads as much memory as the daemon does.
        let bufs = vec![buf; TX_SLOTS];
        let before = self.stats(DIRECT_TAP)?;
        let cpu0 = thread_cpu_s();
        let t0 = Instant::now();
        while t0.elapsed() < d {
            for buf in &bufs {
                match self.direct.write_frame(buf) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(host("writing the direct tap")(e)),
                }
            }
        }
        let elapsed = t0.elapsed();
        let cpu = thread_cpu_s() - cpu0;
        let (mut s, dropped) = self.tx_sample(DIRECT_TAP, before, elapsed)?;
        s.cpu_s = Some(cpu);
        let extra = Extra {
            dropped,
            ..Extra::default()
        };
        Ok((s, extra))
    }

    /// The RX workload's frame, addressed to the driver.
    fn rx_frame(w: &TapWorkload) -> Vec<u8> {
        UdpFrame {
            src_mac: HOST_MAC,
            dst_mac: GUEST_MAC,
            ..UdpFrame::default()
        }
        .build_len(w.frame_len, 9)
    }

    /// Takes whatever is left on the driver's RX ring.
    fn drain_driver(&mut self) -> Result<()> {
        while self.net.recv_count(0, Duration::from_millis(20))?.frames > 0 {}
        Ok(())
    }

    fn drain_direct(&self, buf: &mut [u8]) -> Result<()> {
        loop {
            match self.direct.read_frame(buf) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self
                        .direct
                        .wait_readable(Duration::from_millis(20))
                        .map_err(host("polling the direct tap"))?
                    {
                        return Ok(());
                    }
                }
                Err(e) => return Err(host("reading the direct tap")(e)),
            }
        }
    }

    fn driver_rx(&mut self, w: &TapWorkload, d: Duration) -> Result<(Sample, Extra)> {
        self.drain_driver()?;
        let frame = Self::rx_frame(w);
        let before = self.stats(DAEMON_TAP)?;
        let net = &mut self.net;
        let receive = |consumed: &AtomicU64| -> Result<(Sample, f64, u64)> {
            let mut s = Sample::default();
            let mut short = 0;
            let cpu0 = thread_cpu_s();
            let t0 = Instant::now();
            while t0.elapsed() < d {
                let c = net.recv_count(0, Duration::from_millis(100))?;
                s.ops += c.frames;
                s.bytes += c.bytes;
                short += c.short;
                consumed.store(s.ops, Ordering::Release);
            }
            s.elapsed = t0.elapsed();
            Ok((s, thread_cpu_s() - cpu0, short))
        };
        let ((s, driver_cpu_s, short), src) =
            with_injector(&self.inject_daemon, &frame, self.rx_continuous, receive)?;
        self.drain_driver()?;
        let after = self.stats(DAEMON_TAP)?;
        let extra = Extra {
            host_cpu_s: src.cpu_s,
            driver_cpu_s,
            dropped: after.tx_dropped - before.tx_dropped + src.refused,
            empty_buffers: short,
        };
        Ok((s, extra))
    }

    fn direct_rx(&mut self, w: &TapWorkload, d: Duration) -> Result<(Sample, Extra)> {
        let mut buf = vec![0u8; NET_HDR_LEN + (64 << 10) + 64];
        self.drain_direct(&mut buf)?;
        let frame = Self::rx_frame(w);
        let before = self.stats(DIRECT_TAP)?;
        let tap = &self.direct;
        let receive = |consumed: &AtomicU64| -> Result<Sample> {
            let mut s = Sample::default();
            let cpu0 = thread_cpu_s();
            let t0 = Instant::now();
            let mut since_check = 0u32;
            loop {
                match tap.read_frame(&mut buf) {
                    Ok(n) => {
                        s.ops += 1;
                        s.bytes += n.saturating_sub(NET_HDR_LEN) as u64;
                        since_check += 1;
                        if since_check < 16 {
                            continue;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        consumed.store(s.ops, Ordering::Release);
                        tap.wait_readable(Duration::from_millis(100))
                            .map_err(host("polling the direct tap"))?;
                    }
                    Err(e) => return Err(host("reading the direct tap")(e)),
                }
                since_check = 0;
                consumed.store(s.ops, Ordering::Release);
                if t0.elapsed() >= d {
                    break;
                }
            }
            s.elapsed = t0.elapsed();
            s.cpu_s = Some(thread_cpu_s() - cpu0);
            Ok(s)
        };
        let (s, src) = with_injector(&self.inject_direct, &frame, self.rx_continuous, receive)?;
        self.drain_direct(&mut buf)?;
        let after = self.stats(DIRECT_TAP)?;
        let extra = Extra {
            host_cpu_s: src.cpu_s,
            dropped: after.tx_dropped - before.tx_dropped + src.refused,
            ..Extra::default()
        };
        Ok((s, extra))
    }
}

/// What the injector did.
#[derive(Debug, Clone, Copy, Default)]
struct Injected {
    cpu_s: f64,
    /// `sendmmsg` calls the tap refused (its queue was full).
    refused: u64,
}

/// Runs `receive` (which publishes in `consumed` how many frames it has
/// taken) while a thread injects copies of `frame` with `inj` (see
/// [`inject`]); stops the injector once `receive` returns. What `receive`
/// returned and what the injector did.
fn with_injector<T>(
    inj: &Injector,
    frame: &[u8],
    continuous: bool,
    receive: impl FnOnce(&AtomicU64) -> Result<T>,
) -> Result<(T, Injected)> {
    let consumed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (got, src) = std::thread::scope(|sc| {
        let src = sc.spawn(|| inject(inj, frame, &consumed, &stop, continuous));
        let got = receive(&consumed);
        stop.store(true, Ordering::Relaxed);
        (got, src.join().expect("injector thread"))
    });
    let got = got?;
    let src = src.map_err(host("injecting frames"))?;
    Ok((got, src))
}

/// Injects copies of `frame` until `stop`, never more than [`RX_AHEAD`]
/// frames ahead of what the receiver has `consumed`: continuously (a new
/// batch as soon as there is room), or in bursts of [`RX_AHEAD`] frames,
/// each [`RX_BURST_GAP`] after the receiver has taken all of the last one
/// (so the tap runs empty between bursts). If the receiver makes no progress for 20 ms while
/// we wait, the frames it is missing are taken as lost (the tap dropped
/// them) and injection goes on.
fn inject(
    inj: &Injector,
    frame: &[u8],
    consumed: &AtomicU64,
    stop: &AtomicBool,
    continuous: bool,
) -> io::Result<Injected> {
    tight_timer_slack();
    let cpu0 = thread_cpu_s();
    let mut sent = 0u64;
    let mut burst_left = 0u64;
    let mut refused = 0;
    let mut seen = 0u64;
    let mut stalled: Option<Instant> = None;
    let mut burst_done: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let done = consumed.load(Ordering::Acquire);
        let ahead = sent.saturating_sub(done);
        let room = if continuous {
            RX_AHEAD.saturating_sub(ahead)
        } else {
            if burst_left == 0 && ahead == 0 {
                let t = *burst_done.get_or_insert_with(Instant::now);
                if t.elapsed() >= RX_BURST_GAP {
                    burst_left = RX_AHEAD;
                    burst_done = None;
                }
            }
            burst_left
        };
        if room < if continuous { INJECT_BATCH as u64 } else { 1 } {
            if done != seen {
                seen = done;
                stalled = None;
            } else if stalled.is_some_and(|t| t.elapsed() > Duration::from_millis(20)) {
                sent = done;
                stalled = None;
            } else if stalled.is_none() {
                stalled = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_micros(5));
            continue;
        }
        match inj.send_copies(frame, room.min(INJECT_BATCH as u64) as usize) {
            Ok(n) => {
                sent += n as u64;
                burst_left = burst_left.saturating_sub(n as u64);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                refused += 1;
                std::thread::sleep(Duration::from_micros(5));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Injected {
        cpu_s: thread_cpu_s() - cpu0,
        refused,
    })
}

/// The tap workloads side by side: rate, the backend's CPU per frame (the
/// daemon's process, or the plain loop's thread), frames per CPU-second,
/// both relative to tap-direct, and the CPU the host side and the driver
/// spent per frame.
pub fn details_table(results: &[TapResult]) -> String {
    let mut s = format!(
        "{:<16} {:<17} {:>10} {:>8} {:>9} {:>12} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9}\n",
        "workload",
        "backend",
        "frames/s",
        "Gbit/s",
        "CPU µs/f",
        "frames/CPU-s",
        "rate/dir",
        "eff/dir",
        "host µs/f",
        "drv µs/f",
        "dropped",
        "empty bufs"
    );
    let direct = |wl: &str| {
        results
            .iter()
            .find(|r| r.row.workload == wl && r.row.backend == DIRECT)
            .map(|r| &r.row)
    };
    let opt =
        |v: Option<f64>, prec: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}"));
    for r in results {
        let row = &r.row;
        let base = direct(&row.workload);
        let rate_vs = base
            .filter(|b| b.ops_per_s > 0.0)
            .map(|b| row.ops_per_s / b.ops_per_s);
        let eff_vs = base
            .and_then(|b| b.ops_per_cpu_s)
            .zip(row.ops_per_cpu_s)
            .map(|(b, o)| o / b);
        let per_frame =
            |cpu_s: f64| (cpu_s > 0.0 && r.frames > 0).then(|| cpu_s * 1e6 / r.frames as f64);
        s.push_str(&format!(
            "{:<16} {:<17} {:>10.0} {:>8.2} {:>9} {:>12} {:>8} {:>8} {:>9} {:>9} {:>8} {:>9}\n",
            row.workload,
            row.backend,
            row.ops_per_s,
            row.mib_per_s * (1 << 20) as f64 * 8.0 / 1e9,
            opt(row.cpu_us_per_op, 2),
            opt(row.ops_per_cpu_s, 0),
            opt(rate_vs, 2),
            opt(eff_vs, 2),
            opt(per_frame(r.extra.host_cpu_s), 2),
            opt(per_frame(r.extra.driver_cpu_s), 2),
            r.extra.dropped,
            r.extra.empty_buffers,
        ));
    }
    s
}
