//! The virtio-net device behind `common`'s generic backend: one instance
//! per frontend connection, one worker thread per queue pair (thread 0
//! also runs the control queue).
//! A worker wakes for its RX kick, its TX kick and its tap queue becoming
//! readable (edge-triggered: it reads until the tap is empty or the ring
//! is full, then waits for the next frame or the guest's next kick).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use common::backend::{Device, Event, Worker};
use common::daemon::{DaemonError, Relay, Service, Spec};
use common::memory::Mem;
use common::ratelimit::RateLimited;
use common::sandbox;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::VringT;
use virtio_queue::{DescriptorChain, QueueT};
use vmm_sys_util::epoll::EventSet;

use crate::cli::{format_mac, random_mac, Cli};
use crate::config::{Acked, NetConfig};
use crate::ctrl::{self, Effect, RxFilter};
use crate::rx::{self, RxScratch, RxTarget};
use crate::tap::{offload, Tap, TapError};
use crate::tx::{self, TxScratch};

/// Counters that outlive connections (logged on exit).
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames written to the tap.
    pub tx_frames: AtomicU64,
    /// TX chains dropped as malformed.
    pub tx_malformed: AtomicU64,
    /// Frames the tap refused.
    pub tx_errors: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Frames dropped on RX (too large for the buffers, or the filter).
    pub rx_dropped: AtomicU64,
    /// RX chains that were not usable buffers.
    pub rx_malformed: AtomicU64,
}

/// What outlives connections: the tap and how the device is presented.
#[derive(Debug)]
pub struct Net {
    /// Features, MAC, queues.
    pub config: NetConfig,
    /// The tap.
    pub tap: Tap,
    /// Counters.
    pub stats: Stats,
    /// Log guest mistakes at most this way.
    pub malformed: RateLimited,
    /// And tap errors.
    pub tap_errors: RateLimited,
}

/// The program name.
pub const NAME: &str = "vhost-net-daemon";

/// tap ioctls the data path and the control queue use.
const TAP_IOCTLS: &[u64] = &[libc::TUNSETOFFLOAD, libc::TUNSETQUEUE];

/// Opens the tap and serves it until SIGTERM, each connection through the
/// relay (QEMU's vhost-user-net enables rings before it sets features).
pub fn run(cli: Cli, pairs: u16) -> Result<(), DaemonError> {
    let tap = open_tap(&cli, pairs).map_err(DaemonError::setup)?;
    let tap_offloads =
        tap.probe_offloads(offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN);
    let net = Net {
        config: NetConfig {
            mac: cli.mac.unwrap_or_else(random_mac),
            pairs,
            queue_size: cli.queue_size,
            mtu: cli.mtu,
            tap_offloads,
        },
        tap,
        stats: Stats::default(),
        malformed: RateLimited::default(),
        tap_errors: RateLimited::default(),
    };
    let spec = Spec {
        name: NAME,
        vhost_user: &cli.vhost_user,
        seccomp: cli.seccomp,
        syscalls: &[],
        ioctls: TAP_IOCTLS,
        relay: Relay::for_sandbox(cli.sandbox),
        // The tap's queues are open; the socket file is not ours to
        // remove in a jail.
        no_files: cli.sandbox != common::sandbox::SandboxMode::None,
    };
    let mode = cli.sandbox;
    let taps: Vec<RawFd> = (0..usize::from(pairs))
        .filter_map(|i| net.tap.fd(i))
        .collect();
    // The jail, entered with the tap open: (`namespace`) new pid, mount,
    // network, IPC and UTS namespaces or (`chroot`) a private mount
    // namespace; inherited files closed but the tap's queues, an empty
    // read-only root, no capabilities.
    common::daemon::run(spec, move |socket| {
        sandbox::enter_empty_jail(mode, socket, &taps)?;
        Ok(net)
    })
}

fn open_tap(cli: &Cli, pairs: u16) -> Result<Tap, TapError> {
    let tap = match &cli.tap {
        Some(name) => Tap::open(name, usize::from(pairs), cli.create),
        None => Tap::from_fds(&cli.tap_fd),
    }?;
    if let Some(mtu) = cli.mtu {
        if let Err(e) = tap.set_mtu(mtu) {
            log::warn!("{e}; the guest is told MTU {mtu} anyway");
        }
    }
    if tap.created() {
        tap.set_up()?;
    }
    Ok(tap)
}

/// Per queue pair scratch, used only by that pair's worker.
#[derive(Debug, Default)]
struct PairScratch {
    rx: RxScratch,
    tx: TxScratch,
}

/// One connection's device.
pub struct NetConnection {
    device: Arc<Net>,
    acked: RwLock<Acked>,
    filter: Mutex<RxFilter>,
    scratch: Vec<Mutex<PairScratch>>,
    /// Pairs the driver uses (VQ_PAIRS_SET); all of them without MQ.
    active_pairs: AtomicU16,
    /// Tap queues we detached.
    detached: Vec<AtomicBool>,
}

/// A worker's rings: 0 (RX), 1 (TX), 2 (control, on worker 0); its one
/// event source is its tap queue.
const RX: usize = 0;
const TX: usize = 1;
const CTRL: usize = 2;

impl NetConnection {
    /// A fresh backend for a new frontend. Only tap queue 0 is attached:
    /// the kernel spreads frames over the attached queues by hash,
    /// whatever queue a flow's requests came from, so a frame put on the
    /// queue of a pair nobody reads would be lost. A pair's queue is
    /// attached when its RX ring is enabled and kicked (the guest posted
    /// buffers there), see `run_rx`; QEMU never enables the pairs a guest
    /// does not use.
    pub fn new(device: Arc<Net>) -> Self {
        let pairs = usize::from(device.config.pairs);
        for i in 0..pairs {
            if let Err(e) = device.tap.set_queue_attached(i, i == 0) {
                log::warn!("{e}");
            }
        }
        NetConnection {
            acked: RwLock::new(Acked::default()),
            filter: Mutex::new(RxFilter::default()),
            scratch: (0..pairs)
                .map(|_| Mutex::new(PairScratch::default()))
                .collect(),
            active_pairs: AtomicU16::new(device.config.pairs),
            detached: (0..pairs).map(|i| AtomicBool::new(i != 0)).collect(),
            device,
        }
    }

    fn acked(&self) -> Acked {
        *self.acked.read().unwrap_or_else(|e| e.into_inner())
    }

    fn set_attached(&self, pair: usize, on: bool) {
        let Some(flag) = self.detached.get(pair) else {
            return;
        };
        if flag.load(Ordering::Relaxed) != on {
            return;
        }
        match self.device.tap.set_queue_attached(pair, on) {
            Ok(()) => {
                flag.store(!on, Ordering::Relaxed);
                log::debug!(
                    "tap {} queue {pair} {}",
                    self.device.tap.name(),
                    if on { "attached" } else { "detached" }
                );
            }
            Err(e) => log::warn!("{e}"),
        }
    }

    /// Applies VQ_PAIRS_SET: the kernel steers frames only to the queues
    /// of pairs in use.
    fn use_pairs(&self, n: u16) {
        self.active_pairs.store(n, Ordering::Relaxed);
        for i in 0..usize::from(self.device.config.pairs) {
            self.set_attached(i, i < usize::from(n));
        }
    }

    fn log_malformed(&self, what: &str, q: usize, head: u16, why: &dyn std::fmt::Display) {
        if let Some(n) = self.device.malformed.hit() {
            log::warn!("queue {q} head {head}: {what} dropped: {why} (#{n})");
        }
    }

    fn run_rx(&self, w: &Worker<'_>, scratch: &mut RxScratch) {
        let pair = w.thread();
        let (Some(vring), Some(broken)) = (w.vring(RX), w.broken(RX)) else {
            return;
        };
        let mut state = vring.get_mut();
        if !vring.is_enabled() || !state.get_queue().ready() {
            // Nobody reads this pair: let the kernel steer elsewhere.
            if pair != 0 {
                self.set_attached(pair, false);
            }
            return;
        }
        // The guest reads this ring (it is enabled and the worker woke for
        // it): let the kernel steer frames here, unless VQ_PAIRS_SET said
        // the pair is unused.
        if pair < usize::from(self.active_pairs.load(Ordering::Relaxed)) {
            self.set_attached(pair, true);
        }
        let Some(fd) = self.device.tap.queue(pair) else {
            return;
        };
        let target = RxTarget {
            fd,
            acked: self.acked(),
            mac: self.device.config.mac,
            filter: &self.filter,
            mtu: usize::from(self.device.config.mtu.unwrap_or(1500)),
        };
        let stats = &self.device.stats;
        match rx::process(
            2 * pair,
            &mut state,
            w.mem(),
            w.event_idx(),
            broken,
            &target,
            scratch,
        ) {
            Ok(done) => {
                stats.rx_frames.fetch_add(done.frames, Ordering::Relaxed);
                stats
                    .rx_dropped
                    .fetch_add(done.dropped + done.filtered, Ordering::Relaxed);
                if done.malformed > 0 {
                    stats
                        .rx_malformed
                        .fetch_add(done.malformed, Ordering::Relaxed);
                    if let Some(n) = self.device.malformed.hit() {
                        log::warn!(
                            "queue {}: {} RX chain(s) returned unused: not a writable buffer in guest memory (#{n})",
                            2 * pair,
                            done.malformed
                        );
                    }
                }
                if let Some(errno) = done.tap_error {
                    if let Some(n) = self.device.tap_errors.hit() {
                        log::warn!(
                            "reading tap {} queue {pair}: {} (#{n})",
                            self.device.tap.name(),
                            io::Error::from_raw_os_error(errno)
                        );
                    }
                }
            }
            Err(e) => log::warn!("queue {}: {e}", 2 * pair),
        }
    }

    fn run_tx(&self, w: &Worker<'_>, scratch: &mut TxScratch) {
        let pair = w.thread();
        let q = 2 * pair + 1;
        // A detached queue cannot be written; any attached one can.
        let use_pair = if self.detached[pair].load(Ordering::Relaxed) {
            0
        } else {
            pair
        };
        let Some(tap) = self.device.tap.queue(use_pair) else {
            return;
        };
        let acked = self.acked();
        let stats = &self.device.stats;
        let mem = w.mem();
        let r = w.drain(TX, |chain| {
            let head = chain.head_index();
            match tx::prepare(chain, mem, &acked, scratch) {
                Ok(iovs) => match common::iov::writev(tap, iovs) {
                    Err(e) => {
                        stats.tx_errors.fetch_add(1, Ordering::Relaxed);
                        if let Some(k) = self.device.tap_errors.hit() {
                            log::warn!(
                                "writing a frame to tap {} queue {use_pair}: {e} (#{k})",
                                self.device.tap.name(),
                            );
                        }
                    }
                    Ok(_) => {
                        stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Err(why) => {
                    stats.tx_malformed.fetch_add(1, Ordering::Relaxed);
                    self.log_malformed("TX frame", q, head, &why);
                }
            }
            0
        });
        if let Err(e) = r {
            log::warn!("queue {q}: {e}");
        }
    }

    fn run_ctrl(&self, w: &Worker<'_>) {
        let q = self.device.config.ctrl_queue();
        let acked = self.acked();
        let pairs = self.device.config.pairs;
        let mem = w.mem();
        let mut effects = Vec::new();
        let r = w.drain(CTRL, |chain: DescriptorChain<&Mem>| {
            let head = chain.head_index();
            match ctrl::process(chain, mem, &acked, pairs, &self.filter) {
                Ok((len, effect)) => {
                    effects.push(effect);
                    len
                }
                Err(why) => {
                    self.log_malformed("control command", q, head, &why);
                    0
                }
            }
        });
        if let Err(e) = r {
            log::warn!("queue {q}: {e}");
        }
        for e in effects {
            if let Effect::Pairs(n) = e {
                self.use_pairs(n);
            }
        }
    }
}

impl Device for NetConnection {
    fn num_queues(&self) -> usize {
        self.device.config.num_queues()
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.device.config.queue_size)
    }

    fn features(&self) -> u64 {
        self.device.config.features()
    }

    fn acked_features(&self, features: u64) {
        let acked = Acked::from_features(features);
        if let Err(e) = self.device.tap.set_offloads(acked.tap_offloads) {
            log::warn!("{e}");
        }
        *self.acked.write().unwrap_or_else(|e| e.into_inner()) = acked;
        // Every pair may carry frames until the driver says otherwise
        // (VQ_PAIRS_SET, which Linux sends at probe). Their tap queues stay
        // detached until their RX rings are enabled and kicked: a frontend
        // that runs the control queue itself (QEMU) never enables the
        // rings of pairs the guest does not use.
        self.active_pairs
            .store(self.device.config.pairs, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.device.config.protocol_features()
    }

    fn read_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.device.config.read(offset, size)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        let pairs = usize::from(self.device.config.pairs);
        (0..pairs)
            .map(|i| {
                let mut mask = 0b11u64 << (2 * i);
                if i == 0 {
                    mask |= 1 << self.device.config.ctrl_queue();
                }
                mask
            })
            .collect()
    }

    /// Each pair's worker also wakes for its tap queue (edge-triggered).
    fn event_sources(&self, pair: usize) -> Vec<(RawFd, EventSet)> {
        let tap = self.device.tap.fd(pair);
        tap.map(|fd| (fd, EventSet::IN | EventSet::EDGE_TRIGGERED))
            .into_iter()
            .collect()
    }

    fn handle(&self, w: &Worker<'_>, event: Event) -> io::Result<()> {
        let pair = w.thread();
        let Some(scratch) = self.scratch.get(pair) else {
            return Ok(());
        };
        let mut scratch = scratch.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Kick(RX) => self.run_rx(w, &mut scratch.rx),
            Event::Kick(TX) => self.run_tx(w, &mut scratch.tx),
            Event::Kick(CTRL) if pair == 0 => self.run_ctrl(w),
            // A detached queue reports an error once; nothing to read.
            Event::Source { index: 0, readable } => {
                if readable {
                    self.run_rx(w, &mut scratch.rx);
                }
            }
            other => log::warn!("queue pair {pair}: unexpected event {other:?}"),
        }
        Ok(())
    }
}

impl Service for Net {
    type Device = NetConnection;

    fn connect(self: &Arc<Self>) -> io::Result<NetConnection> {
        Ok(NetConnection::new(self.clone()))
    }

    fn ready(&self) {
        let (config, tap) = (&self.config, &self.tap);
        log::info!(
            "serving tap {}{} to MAC {}, {} queue pair(s) of up to {}{}, guest offloads {:#x}",
            tap.name(),
            if tap.created() { " (created)" } else { "" },
            format_mac(&config.mac),
            config.pairs,
            config.queue_size,
            config.mtu.map(|m| format!(", MTU {m}")).unwrap_or_default(),
            config.tap_offloads
        );
    }

    fn stopped(&self) {
        let s = &self.stats;
        log::info!(
            "stopped (TX {} frames, {} malformed, {} refused by the tap; RX {} frames, {} dropped, {} bad buffers)",
            s.tx_frames.load(Ordering::Relaxed),
            s.tx_malformed.load(Ordering::Relaxed),
            s.tx_errors.load(Ordering::Relaxed),
            s.rx_frames.load(Ordering::Relaxed),
            s.rx_dropped.load(Ordering::Relaxed),
            s.rx_malformed.load(Ordering::Relaxed),
        );
    }
}
