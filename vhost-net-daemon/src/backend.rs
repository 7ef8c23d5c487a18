//! The vhost-user backend: one instance per frontend connection, one
//! worker thread per queue pair (thread 0 also runs the control queue).
//! A worker wakes for its RX kick, its TX kick and its tap queue becoming
//! readable (edge-triggered: it reads until the tap is empty or the ring
//! is full, then waits for the next frame or the guest's next kick).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use common::queue::{drain, refuse_config_write, Mem, Rings};
use common::ratelimit::RateLimited;
use common::serve::{Connection, GuestMem, Vring};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::config::{Acked, NetConfig};
use crate::ctrl::{self, Effect, RxFilter};
use crate::rx::{self, RxScratch, RxTarget};
use crate::tap::Tap;
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
pub struct Device {
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

/// Per queue pair scratch, used only by that pair's worker.
#[derive(Debug, Default)]
struct PairScratch {
    rx: RxScratch,
    tx: TxScratch,
}

/// One connection's backend.
pub struct NetConnection {
    device: Arc<Device>,
    rings: Rings,
    acked: RwLock<Acked>,
    filter: Mutex<RxFilter>,
    scratch: Vec<Mutex<PairScratch>>,
    /// Pairs the driver uses (VQ_PAIRS_SET); all of them without MQ.
    active_pairs: AtomicU16,
    /// Tap queues we detached.
    detached: Vec<AtomicBool>,
}

/// Event ids: the rings of a worker are 0 (RX), 1 (TX), 2 (control, on
/// worker 0); the exit event is `num_queues`; the tap comes after.
const RX: u16 = 0;
const TX: u16 = 1;
const CTRL: u16 = 2;

impl NetConnection {
    /// A fresh backend for a new frontend. Only tap queue 0 is attached:
    /// the kernel spreads frames over the attached queues by hash,
    /// whatever queue a flow's requests came from, so a frame put on the
    /// queue of a pair nobody reads would be lost. A pair's queue is
    /// attached when its RX ring is enabled and kicked (the guest posted
    /// buffers there), see [`VhostUserBackend::handle_event`]; QEMU never
    /// enables the pairs a guest does not use.
    pub fn new(device: Arc<Device>) -> Self {
        let pairs = usize::from(device.config.pairs);
        for i in 0..pairs {
            if let Err(e) = device.tap.set_queue_attached(i, i == 0) {
                log::warn!("{e}");
            }
        }
        NetConnection {
            rings: Rings::new(device.config.num_queues()),
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

    fn tap_event(&self) -> u16 {
        self.device.config.num_queues() as u16 + 1
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

    fn run_rx(
        &self,
        pair: usize,
        vring: &Vring,
        mem: &Mem,
        event_idx: bool,
        scratch: &mut RxScratch,
    ) {
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
        let Some(broken) = self.rings.broken(2 * pair) else {
            return;
        };
        let stats = &self.device.stats;
        match rx::process(
            2 * pair,
            &mut state,
            mem,
            event_idx,
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

    fn run_tx(
        &self,
        pair: usize,
        vring: &Vring,
        mem: &Mem,
        event_idx: bool,
        scratch: &mut TxScratch,
    ) {
        let q = 2 * pair + 1;
        let Some(broken) = self.rings.broken(q) else {
            return;
        };
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
        let r = drain(q, vring, mem, event_idx, broken, |chain| {
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

    fn run_ctrl(&self, vring: &Vring, mem: &Mem, event_idx: bool) {
        let q = self.device.config.ctrl_queue();
        let Some(broken) = self.rings.broken(q) else {
            return;
        };
        let acked = self.acked();
        let pairs = self.device.config.pairs;
        let mut effects = Vec::new();
        let r = drain(
            q,
            vring,
            mem,
            event_idx,
            broken,
            |chain: DescriptorChain<&Mem>| {
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
            },
        );
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

impl VhostUserBackend for NetConnection {
    type Bitmap = ();
    type Vring = Vring;

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

    fn set_event_idx(&self, enabled: bool) {
        self.rings.set_event_idx(enabled)
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        self.rings.update_memory(mem)
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.device.config.read(offset, size)
    }

    fn set_config(&self, offset: u32, _buf: &[u8]) -> io::Result<()> {
        refuse_config_write(offset)
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

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.rings.exit_event()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        let pair = thread_id;
        let Some(scratch) = self.scratch.get(pair) else {
            return Ok(());
        };
        let Some(batch) = self.rings.batch() else {
            return Ok(());
        };
        let mem = batch.mem();
        let mut scratch = scratch.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(rx_ring), Some(tx_ring)) = (vrings.first(), vrings.get(1)) else {
            return Ok(());
        };
        match device_event {
            RX => {
                self.run_rx(pair, rx_ring, mem, batch.event_idx, &mut scratch.rx);
            }
            TX => {
                self.run_tx(pair, tx_ring, mem, batch.event_idx, &mut scratch.tx);
            }
            CTRL if pair == 0 && vrings.len() == 3 => {
                self.run_ctrl(&vrings[2], mem, batch.event_idx);
            }
            e if e == self.tap_event() => {
                // A detached queue reports an error once; nothing to read.
                if evset.contains(EventSet::IN) {
                    self.run_rx(pair, rx_ring, mem, batch.event_idx, &mut scratch.rx);
                }
            }
            other => log::warn!("queue pair {pair}: unexpected event {other} ({evset:?})"),
        }
        Ok(())
    }
}

impl Connection for NetConnection {
    fn quiesce(&self) {
        self.rings.quiesce()
    }

    fn register_listeners(&self, workers: &[Arc<VringEpollHandler<Arc<Self>>>]) -> io::Result<()> {
        for (pair, worker) in workers.iter().enumerate() {
            let Some(fd) = self.device.tap.fd(pair) else {
                continue;
            };
            worker.register_listener(
                fd,
                EventSet::IN | EventSet::EDGE_TRIGGERED,
                u64::from(self.tap_event()),
            )?;
        }
        Ok(())
    }
}
