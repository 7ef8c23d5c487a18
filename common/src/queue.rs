//! The worker loop every backend runs on a kick: drain the ring in one
//! batch (with EVENT_IDX the guest stops kicking meanwhile, and the ring is
//! checked once more after notifications are re-enabled, so no request is
//! left behind), hand each chain to the device, and signal the guest once.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use vhost_user_backend::{VringState, VringT};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::memory;
use crate::serve::{ExitEvents, Gate, GatePass, GuestMem, Vring};

/// Chains handled between two reads of the avail index.
const CHUNK: usize = 64;

/// Most descriptors one chain may have, indirect tables' entries included
/// (QEMU's `VIRTQUEUE_MAX_SIZE`, which its devices and libvhost-user's
/// enforce the same way). virtio-queue ends a chain only after a queue's
/// worth, up to 32768; parsers walk `chain.take(MAX_CHAIN_DESCRIPTORS)`, so
/// a longer chain reads as truncated (its last descriptor taken still has
/// NEXT set) and is returned unused. Without it a ring of looping
/// zero-length chains cost a worker 32768 descriptor reads per chain.
pub const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// Guest memory as a worker borrows it for one batch.
pub type Mem = GuestMemoryMmap<()>;

/// How workers run their rings (`--poll-us`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingOptions {
    /// How long a worker keeps looking for the driver's next request after
    /// draining its ring (with EVENT_IDX, so the driver does not kick
    /// meanwhile) before it sleeps until a kick. Zero turns polling off.
    pub poll: Duration,
}

/// Drains queue `q` of `vring` over `mem`. `handle` runs one chain and
/// returns the used length. `broken` remembers (per queue) that the driver
/// published an avail index more than a queue ahead: such a ring is left
/// alone (logged once) until the frontend sets it up again. With
/// EVENT_IDX, the ring is polled for `window` after each batch. At most
/// [`budget`] chains are taken per call; the rest is kicked again.
pub fn drain<F>(
    q: usize,
    vring: &Vring,
    mem: &Mem,
    event_idx: bool,
    window: Duration,
    broken: &AtomicBool,
    mut handle: F,
) -> io::Result<()>
where
    F: FnMut(DescriptorChain<&Mem>) -> u32,
{
    let mut state = vring.get_mut();
    // A kick can come before the ring is set up or after it was stopped;
    // there is nothing to do then (and an error would end the worker).
    if !state.get_queue().ready() {
        return Ok(());
    }
    let mut used = false;
    let mut finished = [(0u16, 0u32); CHUNK];
    let budget = budget(state.get_queue());
    let mut taken = 0;
    'drain: loop {
        let queue = state.get_queue_mut();
        if event_idx {
            queue.disable_notification(mem).map_err(io::Error::other)?;
        }
        if !avail_sane(q, queue, mem, broken)? {
            return Ok(());
        }
        // The avail index is read once per chunk, not once per chain (it is
        // a cache line the driver keeps writing), and the used entries of a
        // chunk go out together.
        loop {
            let mut n = 0;
            {
                let mut iter = queue.iter(mem).map_err(io::Error::other)?;
                while n < CHUNK {
                    let Some(chain) = iter.next() else { break };
                    let head = chain.head_index();
                    finished[n] = (head, handle(chain));
                    n += 1;
                }
            }
            for &(head, len) in &finished[..n] {
                queue.add_used(mem, head, len).map_err(io::Error::other)?;
            }
            used |= n > 0;
            taken += n;
            if taken >= budget {
                rekick(q, &state);
                break 'drain;
            }
            if n < CHUNK {
                break;
            }
        }
        if event_idx && !window.is_zero() {
            // Tell the guest what is done, then look for its next request
            // for a moment before sleeping: a request that comes within
            // the window costs no kick and no wake-up.
            if used {
                signal_if_needed(&mut state, mem)?;
                used = false;
            }
            if wait_avail(state.get_queue(), mem, window)? {
                continue;
            }
        }
        let queue = state.get_queue_mut();
        if !event_idx || !queue.enable_notification(mem).map_err(io::Error::other)? {
            break;
        }
    }
    if used {
        signal_if_needed(&mut state, mem)?;
    }
    Ok(())
}

/// Whether the driver's avail index is at most a queue ahead of what was
/// taken, and the ring's entries can be read. One that ran further, or
/// whose entries cannot be read (an avail ring at guest address 0, which
/// `virtio-queue` refuses to walk, or one whose index is in guest memory
/// but whose entries are not), is a broken ring: logged once (`broken`
/// remembers it per queue) and left alone until it is set up again. A
/// ring whose entries cannot be read yields no chain while its index says
/// there are some, so with EVENT_IDX the drain loops (which look again
/// whenever `enable_notification` reports entries) would spin on it.
pub fn avail_sane(q: usize, queue: &Queue, mem: &Mem, broken: &AtomicBool) -> io::Result<bool> {
    let avail = queue
        .avail_idx(mem, Ordering::Acquire)
        .map_err(io::Error::other)?;
    let pending = avail.0.wrapping_sub(queue.next_avail());
    let ring = queue.avail_ring();
    // flags, idx, then the entries (le16 each).
    let entries = 2 * usize::from(queue.size());
    let readable = ring != 0
        && ring
            .checked_add(4)
            .is_some_and(|at| mem.check_range(GuestAddress(at), entries));
    if pending > queue.size() || !readable {
        if !broken.swap(true, Ordering::Relaxed) {
            if readable {
                log::error!(
                    "queue {q}: avail.idx {} is {pending} entries ahead of {} on a queue of {}; \
                     queue ignored until it is set up again",
                    avail.0,
                    queue.next_avail(),
                    queue.size()
                );
            } else {
                log::error!(
                    "queue {q}: the entries of the avail ring at {ring:#x} (a queue of {}) are \
                     not all in guest memory, or the ring is at address 0; queue ignored until \
                     it is set up again",
                    queue.size()
                );
            }
        }
        return Ok(false);
    }
    broken.store(false, Ordering::Relaxed);
    Ok(true)
}

/// Chains one drain of `queue` takes before it returns to the worker's
/// event loop: two queues' worth. A driver that keeps its ring full, or a
/// ring whose used entries land on its own avail index (so it never runs
/// dry), would otherwise hold the worker, and with it a disconnect or a
/// SIGTERM waiting to join it, forever. Linux vhost bounds its work per
/// wake-up the same way (its "weight").
pub fn budget(queue: &Queue) -> usize {
    2 * usize::from(queue.size()).max(CHUNK)
}

/// Writes the ring's kick eventfd, so the worker comes back to a ring that
/// still has work after its other events (exit, other rings) had a turn.
fn rekick(q: usize, state: &VringState<GuestMem>) {
    let Some(kick) = state.get_kick() else {
        return;
    };
    // The eventfd stays open meanwhile: the caller holds the ring state.
    if let Err(e) = nix::unistd::write(kick.as_raw_fd(), &1u64.to_ne_bytes()) {
        log::warn!("queue {q}: kicking the ring again after a full budget: {e}");
    }
}

/// Signals the guest if the ring's notification rules (EVENT_IDX or
/// NO_INTERRUPT) want it after new used entries.
pub fn signal_if_needed(state: &mut VringState<GuestMem>, mem: &Mem) -> io::Result<()> {
    if state
        .get_queue_mut()
        .needs_notification(mem)
        .map_err(io::Error::other)?
    {
        state.signal_used_queue()?;
    }
    Ok(())
}

/// Spins until the avail index moves past what was taken (`true`) or
/// `window` ends (`false`).
fn wait_avail(queue: &Queue, mem: &Mem, window: Duration) -> io::Result<bool> {
    let start = Instant::now();
    let next = queue.next_avail();
    loop {
        for _ in 0..32 {
            if queue
                .avail_idx(mem, Ordering::Acquire)
                .map_err(io::Error::other)?
                .0
                != next
            {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= window {
            return Ok(false);
        }
    }
}

/// [`drain`] for a backend that completes requests on other threads:
/// each chain (over an owned handle on the memory map, so it may cross
/// threads) goes to `dispatch`, and whoever finishes it calls
/// [`complete`]. The EVENT_IDX loop and the broken-ring check are the same.
pub fn drain_deferred<F>(
    q: usize,
    vring: &Vring,
    mem: &Arc<Mem>,
    event_idx: bool,
    broken: &AtomicBool,
    mut dispatch: F,
) -> io::Result<()>
where
    F: FnMut(DescriptorChain<Arc<Mem>>),
{
    let mut state = vring.get_mut();
    if !state.get_queue().ready() {
        return Ok(());
    }
    let budget = budget(state.get_queue());
    let mut taken = 0;
    loop {
        let queue = state.get_queue_mut();
        if event_idx {
            queue
                .disable_notification(&**mem)
                .map_err(io::Error::other)?;
        }
        if !avail_sane(q, queue, mem, broken)? {
            return Ok(());
        }
        while let Some(chain) = queue.pop_descriptor_chain(mem.clone()) {
            dispatch(chain);
            taken += 1;
            if taken >= budget {
                rekick(q, &state);
                return Ok(());
            }
        }
        let queue = state.get_queue_mut();
        if !event_idx
            || !queue
                .enable_notification(&**mem)
                .map_err(io::Error::other)?
        {
            break;
        }
    }
    Ok(())
}

/// Puts one chain finished off the worker thread on the used ring and
/// signals the guest if the ring's rules want it.
pub fn complete(vring: &Vring, mem: &Mem, head: u16, len: u32) -> io::Result<()> {
    let mut state = vring.get_mut();
    state
        .get_queue_mut()
        .add_used(mem, head, len)
        .map_err(io::Error::other)?;
    signal_if_needed(&mut state, mem)
}

/// What a worker holds while it runs a batch: a pass through the SIGTERM
/// gate and the guest memory map.
pub struct Batch<'a> {
    _pass: GatePass<'a>,
    mem: Arc<Mem>,
    /// EVENT_IDX was negotiated.
    pub event_idx: bool,
    /// The polling window after a drain ([`RingOptions::poll`]).
    pub window: Duration,
}

impl Batch<'_> {
    /// Guest memory.
    pub fn mem(&self) -> &Mem {
        &self.mem
    }

    /// An owned handle on the same memory map, for work that outlives
    /// the batch (a thread pool).
    pub fn mem_arc(&self) -> Arc<Mem> {
        self.mem.clone()
    }
}

/// What every backend keeps per connection to run its rings: the guest
/// memory map (its own copy, taken once the map passed
/// [`memory::check_map`]; workers never see the handler's map before that), EVENT_IDX, the per-queue broken flags, the SIGTERM gate,
/// the worker exit events and the ring options. The generic backend
/// ([`crate::backend::Backend`]) embeds one and forwards the
/// `VhostUserBackend` calls of the same names to it.
#[derive(Debug)]
pub struct Rings {
    mem: RwLock<Option<Arc<Mem>>>,
    event_idx: AtomicBool,
    broken: Vec<AtomicBool>,
    gate: Gate,
    exit_events: ExitEvents,
    options: RingOptions,
}

impl Rings {
    /// State for `queues` queues.
    pub fn new(queues: usize, options: RingOptions) -> Self {
        Rings {
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            broken: (0..queues).map(|_| AtomicBool::new(false)).collect(),
            gate: Gate::default(),
            exit_events: ExitEvents::default(),
            options,
        }
    }

    /// How many queues.
    pub fn len(&self) -> usize {
        self.broken.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.broken.is_empty()
    }

    /// `VhostUserBackend::set_event_idx`.
    pub fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    /// `VhostUserBackend::update_memory`. The new map is checked first
    /// ([`memory::check_map`]): a region that runs past the end of its file
    /// would fault (SIGBUS) on the first access, so such a map is refused
    /// (logged, naming the region) and workers keep the map they had; the
    /// handler then fails the request (an error ack) and ends the
    /// connection. Returns only after every batch that began on the old
    /// map has ended: the handler acks the message (SET_MEM_TABLE,
    /// ADD_MEM_REG, REM_MEM_REG) after this, and a driver that waited for
    /// the ack before using a new region must not have its request met by
    /// a worker still holding the old map (it would find the buffer outside
    /// guest memory; libblkio does exactly that).
    pub fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        let map = mem.memory().into_inner();
        if let Err(e) = memory::check_slots(&map) {
            log::error!("guest memory map refused: {e}");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
        }
        if let Err(e) = memory::check_map(&map) {
            log::error!("guest memory map refused: {e}");
            return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
        }
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(map);
        self.gate.sync();
        Ok(())
    }

    /// `VhostUserBackend::exit_event`.
    pub fn exit_event(&self) -> Option<(EventConsumer, EventNotifier)> {
        self.exit_events.create()
    }

    /// `Connection::quiesce`: no new batches; waits for those running.
    pub fn quiesce(&self) {
        self.gate.close();
    }

    /// Starts a batch: `None` when the connection is quiescing or has no
    /// memory yet (the caller must not touch the rings then).
    pub fn batch(&self) -> Option<Batch<'_>> {
        let pass = self.gate.enter()?;
        let mem = self.mem.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        Some(Batch {
            _pass: pass,
            mem,
            event_idx: self.event_idx.load(Ordering::Relaxed),
            window: self.options.poll,
        })
    }

    /// Queue `q`'s broken flag (see [`drain`]).
    pub fn broken(&self, q: usize) -> Option<&AtomicBool> {
        self.broken.get(q)
    }
}

/// `VhostUserBackend::set_config` for a device whose config space the
/// driver may not write.
pub fn refuse_config_write(offset: u32) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("config space is read-only (write at offset {offset})"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Barrier;
    use vm_memory::{GuestAddress, GuestMemory, GuestMemoryAtomic, GuestMemoryRegion};

    fn map(ranges: &[(u64, usize)]) -> Mem {
        let r: Vec<_> = ranges.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
        GuestMemoryMmap::from_ranges(&r).unwrap()
    }

    #[test]
    fn a_memory_update_waits_for_the_batch_on_the_old_map() {
        let rings = Arc::new(Rings::new(1, RingOptions::default()));
        let atomic = GuestMemoryAtomic::new(map(&[(0, 0x10000)]));
        rings.update_memory(atomic.clone()).unwrap();

        let step = Arc::new(AtomicUsize::new(0));
        let started = Arc::new(Barrier::new(2));
        let worker = {
            let (rings, step, started) = (rings.clone(), step.clone(), started.clone());
            std::thread::spawn(move || {
                let batch = rings.batch().expect("memory is set");
                assert_eq!(batch.mem().num_regions(), 1);
                started.wait();
                std::thread::sleep(Duration::from_millis(200));
                // The update is still waiting for this batch.
                assert_eq!(step.load(Ordering::SeqCst), 0, "update returned early");
                step.store(1, Ordering::SeqCst);
            })
        };
        started.wait();
        // What vhost-user-backend does on ADD_MEM_REG: replace, then tell us.
        let grown = atomic.memory().insert_region(Arc::new(
            vm_memory::GuestRegionMmap::new(
                vm_memory::MmapRegion::new(0x1000).unwrap(),
                GuestAddress(0x100000),
            )
            .unwrap(),
        ));
        atomic.lock().unwrap().replace(grown.unwrap());
        rings.update_memory(atomic.clone()).unwrap();
        assert_eq!(step.load(Ordering::SeqCst), 1, "the old batch had ended");
        worker.join().unwrap();

        let batch = rings.batch().unwrap();
        assert_eq!(batch.mem().num_regions(), 2, "a new batch sees the new map");
    }

    #[test]
    fn a_map_past_its_files_end_is_refused_and_the_old_one_kept() {
        let rings = Rings::new(1, RingOptions::default());
        rings
            .update_memory(GuestMemoryAtomic::new(map(&[(0, 0x1000)])))
            .unwrap();
        let file = vmm_sys_util::tempfile::TempFile::new().unwrap();
        file.as_file().set_len(0x1000).unwrap();
        let file = file.as_file().try_clone().unwrap();
        let region =
            vm_memory::MmapRegion::from_file(vm_memory::FileOffset::new(file, 0), 0x10000).unwrap();
        let bad = Mem::from_regions(vec![vm_memory::GuestRegionMmap::new(
            region,
            GuestAddress(0),
        )
        .unwrap()])
        .unwrap();
        let e = rings
            .update_memory(GuestMemoryAtomic::new(bad))
            .unwrap_err();
        assert!(e.to_string().contains("memory region 0"), "{e}");
        let batch = rings.batch().expect("the old map stays");
        assert_eq!(batch.mem().iter().map(|r| r.len()).sum::<u64>(), 0x1000);
    }

    /// A ring whose avail index says there are entries but whose entries
    /// cannot be read (at guest address 0, which virtio-queue does not
    /// walk, or running off the end of memory) made the EVENT_IDX drain
    /// loops spin forever: no chain came off it, and `enable_notification`
    /// kept reporting entries (found by the `split_ring` fuzz target).
    #[test]
    fn an_unreadable_avail_ring_is_left_alone_not_spun_on() {
        // (desc, avail, used); avail.idx is 1.
        for (desc, avail, used) in [(0x1000, 0, 0x2000), (0, 0xfffc, 0x1000)] {
            let mem = map(&[(0, 0x10000)]);
            vm_memory::Bytes::write_obj(&mem, 1u16, GuestAddress(avail + 2)).unwrap();
            let atomic = GuestMemoryAtomic::new(mem);
            let vring = Vring::new(atomic.clone(), 256).unwrap();
            vring.set_queue_size(4);
            vring.set_queue_info(desc, avail, used).unwrap();
            vring.set_queue_event_idx(true);
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            let mem = atomic.memory().into_inner();
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let broken = AtomicBool::new(false);
                let r = drain(0, &vring, &mem, true, Duration::ZERO, &broken, |_| 0);
                let d = drain_deferred(0, &vring, &mem, true, &broken, |_| {});
                let _ = done_tx.send((r.is_ok(), d.is_ok(), broken.load(Ordering::Relaxed)));
            });
            let got = done_rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("draining the ring at {avail:#x} never returned"));
            assert_eq!(got, (true, true, true), "ring at {avail:#x}");
        }
    }

    /// A driver that keeps its ring full (here: every chain taken makes
    /// the avail index run two ahead again) cannot hold a worker: each
    /// drain returns after its budget, with the ring kicked again so the
    /// worker's other events (exit, other rings) get their turn first.
    #[test]
    fn a_ring_that_never_runs_dry_is_drained_a_budget_at_a_time() {
        use std::os::fd::FromRawFd;
        use vmm_sys_util::eventfd::EventFd;
        let (avail, size) = (0x2000u64, 4u16);
        let idx = GuestAddress(avail + 2);
        for deferred in [false, true] {
            let mem = map(&[(0, 0x10000)]);
            vm_memory::Bytes::write_obj(&mem, 2u16, idx).unwrap();
            let atomic = GuestMemoryAtomic::new(mem);
            let vring = Vring::new(atomic.clone(), 256).unwrap();
            vring.set_queue_size(size);
            vring.set_queue_info(0x1000, avail, 0x3000).unwrap();
            vring.set_queue_event_idx(true);
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let dup = nix::unistd::dup(kick.as_raw_fd()).unwrap();
            // SAFETY: `dup` returned a new descriptor that nothing else owns.
            vring.set_kick(Some(unsafe { std::fs::File::from_raw_fd(dup) }));
            let mem = atomic.memory().into_inner();
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let budget = budget(vring.get_ref().get_queue());
            std::thread::spawn(move || {
                let broken = AtomicBool::new(false);
                let mut taken = 0u16;
                let mut more = |mem: &Mem| {
                    taken += 1;
                    vm_memory::Bytes::write_obj(mem, taken.wrapping_add(2), idx).unwrap();
                };
                let r = if deferred {
                    let m = mem.clone();
                    drain_deferred(0, &vring, &mem, true, &broken, |_| more(&m))
                } else {
                    drain(0, &vring, &mem, true, Duration::ZERO, &broken, |_| {
                        more(&mem);
                        0
                    })
                };
                let _ = done_tx.send((r.is_ok(), taken));
            });
            let (ok, taken) = done_rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("a ring that never runs dry held the worker"));
            assert!(ok);
            assert_eq!(usize::from(taken), budget, "deferred: {deferred}");
            assert_eq!(kick.read().unwrap(), 1, "the ring was not kicked again");
        }
    }

    #[test]
    fn no_batch_before_memory_or_after_quiesce() {
        let rings = Rings::new(1, RingOptions::default());
        assert!(rings.batch().is_none());
        rings
            .update_memory(GuestMemoryAtomic::new(map(&[(0, 0x1000)])))
            .unwrap();
        assert!(rings.batch().is_some());
        rings.quiesce();
        assert!(rings.batch().is_none());
    }
}
