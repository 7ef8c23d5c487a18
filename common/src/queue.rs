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
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemory};
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::inflight::{Slot, Tracker, Tracking};
use crate::memory::{self, Mem};
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
    drain_tracked(q, vring, mem, event_idx, window, broken, None, |c, _| {
        handle(c)
    })
}

/// Where a chain handed to a device comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Taken from the avail ring now.
    New,
    /// Resubmitted after a restart: a previous process took it and did not
    /// complete it, so it may have run in part or in full. A device whose
    /// requests are not all safe to repeat answers those with an error
    /// (virtiofsd: EIO); blk runs everything again.
    Resubmitted,
}

/// [`drain`] with in-flight tracking: each chain is recorded in
/// `inflight` when taken and cleared when its used entry is published,
/// and the ring's first drain after the region was installed first
/// resubmits what a previous process left in flight ([`recover`]);
/// `handle` is told each chain's [`Origin`].
#[allow(clippy::too_many_arguments)]
pub fn drain_tracked<F>(
    q: usize,
    vring: &Vring,
    mem: &Mem,
    event_idx: bool,
    window: Duration,
    broken: &AtomicBool,
    inflight: Option<&Tracker>,
    mut handle: F,
) -> io::Result<()>
where
    F: FnMut(DescriptorChain<&Mem>, Origin) -> u32,
{
    let mut state = vring.get_mut();
    // A kick can come before the ring is set up or after it was stopped;
    // there is nothing to do then (and an error would end the worker).
    if !state.get_queue().ready() {
        return Ok(());
    }
    let mut used = false;
    if let Some(t) = inflight.filter(|t| t.take_recovery()) {
        let queue = state.get_queue_mut();
        if let Some((map, mut replay)) = recover(q, queue, mem, t)? {
            let mut done = Vec::new();
            for chain in replay.iter(&map).map_err(io::Error::other)? {
                let head = chain.head_index();
                t.take(head);
                done.push((head, handle(chain, Origin::Resubmitted)));
            }
            for (head, len) in done {
                add_used(queue, mem, head, len, inflight)?;
            }
            used = true;
        }
    }
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
                    if let Some(t) = inflight {
                        t.take(head);
                    }
                    finished[n] = (head, handle(chain, Origin::New));
                    n += 1;
                }
            }
            for &(head, len) in &finished[..n] {
                add_used(queue, mem, head, len, inflight)?;
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
    drain_deferred_tracked(q, vring, mem, event_idx, broken, None, |c, _| dispatch(c))
}

/// [`drain_deferred`] with in-flight tracking (see [`drain_tracked`]);
/// whoever finishes a chain calls [`complete_tracked`] with the same
/// tracker.
pub fn drain_deferred_tracked<F>(
    q: usize,
    vring: &Vring,
    mem: &Arc<Mem>,
    event_idx: bool,
    broken: &AtomicBool,
    inflight: Option<&Tracker>,
    mut dispatch: F,
) -> io::Result<()>
where
    F: FnMut(DescriptorChain<Arc<Mem>>, Origin),
{
    let mut state = vring.get_mut();
    if !state.get_queue().ready() {
        return Ok(());
    }
    let queue = state.get_queue_mut();
    if let Some(t) = inflight.filter(|t| t.take_recovery()) {
        if let Some((map, mut replay)) = recover(q, queue, mem, t)? {
            let map = Arc::new(map);
            while let Some(chain) = replay.pop_descriptor_chain(map.clone()) {
                t.take(chain.head_index());
                dispatch(chain, Origin::Resubmitted);
            }
        }
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
            if let Some(t) = inflight {
                t.take(chain.head_index());
            }
            dispatch(chain, Origin::New);
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
    complete_tracked(vring, mem, head, len, None)
}

/// [`complete`] for a chain taken by [`drain_deferred_tracked`].
pub fn complete_tracked(
    vring: &Vring,
    mem: &Mem,
    head: u16,
    len: u32,
    inflight: Option<&Tracker>,
) -> io::Result<()> {
    let mut state = vring.get_mut();
    add_used(state.get_queue_mut(), mem, head, len, inflight)?;
    signal_if_needed(&mut state, mem)
}

/// Puts `head` on the used ring, telling `inflight` before the used index
/// moves and after (see [`crate::inflight`]).
pub fn add_used(
    queue: &mut Queue,
    mem: &Mem,
    head: u16,
    len: u32,
    inflight: Option<&Tracker>,
) -> io::Result<()> {
    if let Some(t) = inflight {
        t.before_used(head);
    }
    queue.add_used(mem, head, len).map_err(io::Error::other)?;
    if let Some(t) = inflight {
        t.after_used(head, queue.next_used());
    }
    Ok(())
}

/// The first batch on `queue` after an in-flight region was installed:
/// the tracker repairs the region and names the heads a previous process
/// took and did not complete ([`Tracker::recover`]); new requests are
/// taken from the ring's used index plus their number (as libvhost-user
/// does, whatever SET_VRING_BASE said). The heads come back as a ring to
/// walk: `virtio-queue` makes chains only from an avail ring, so the
/// replay queue shares the real descriptor table and reads its avail ring
/// from one page of our own, mapped just above guest memory (a
/// descriptor that points there reaches only that page). `None` when
/// nothing is left to resubmit.
fn recover(
    q: usize,
    queue: &mut Queue,
    mem: &Mem,
    t: &Tracker,
) -> io::Result<Option<(Mem, Queue)>> {
    let used = queue
        .used_idx(mem, Ordering::Acquire)
        .map_err(io::Error::other)?
        .0;
    let heads = t.recover(used, queue.size());
    queue.set_next_used(used);
    queue.set_next_avail(used.wrapping_add(heads.len() as u16));
    if heads.is_empty() {
        return Ok(None);
    }
    log::info!(
        "queue {q}: resubmitting {} request(s) left in flight by the previous backend",
        heads.len()
    );
    replay_ring(queue, mem, &heads).map(Some)
}

/// A queue over `mem` plus one page of ours whose avail ring offers
/// `heads`, in order, from `queue`'s descriptor table.
fn replay_ring(queue: &Queue, mem: &Mem, heads: &[u16]) -> io::Result<(Mem, Queue)> {
    use vm_memory::{Bytes, GuestRegionMmap, MmapRegion};
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let at = mem
        .last_addr()
        .0
        .checked_add(1)
        .and_then(|a| a.checked_next_multiple_of(0x1000))
        .ok_or_else(|| invalid("no room above guest memory for the replay ring"))?;
    let size = usize::from(queue.size());
    // avail: flags, idx, ring, used_event; then used: flags, idx, ring, avail_event.
    let avail_len = 4 + 2 * size + 2;
    let used_at = avail_len.next_multiple_of(4);
    let len = (used_at + 4 + 8 * size + 2).next_multiple_of(0x1000);
    let region = MmapRegion::new(len).map_err(io::Error::other)?;
    let region = GuestRegionMmap::new(region, GuestAddress(at))
        .ok_or_else(|| invalid("the replay ring's page does not fit"))?;
    let map = mem
        .insert_region(Arc::new(region))
        .map_err(io::Error::other)?;
    let n = u16::try_from(heads.len()).map_err(|_| invalid("too many heads"))?;
    map.write_obj(n, GuestAddress(at + 2))
        .map_err(io::Error::other)?;
    for (i, &head) in heads.iter().enumerate() {
        map.write_obj(head, GuestAddress(at + 4 + 2 * i as u64))
            .map_err(io::Error::other)?;
    }
    let mut replay = Queue::new(queue.max_size()).map_err(io::Error::other)?;
    replay.set_size(queue.size());
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(queue.desc_table());
    replay.set_desc_table_address(lo, hi);
    let (lo, hi) = split(at);
    replay.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(at + used_at as u64);
    replay.set_used_ring_address(lo, hi);
    replay.set_ready(true);
    Ok((map, replay))
}

/// What a worker holds while it runs a batch: a pass through the SIGTERM
/// gate and the guest memory map.
pub struct Batch<'a> {
    _pass: GatePass<'a>,
    mem: Arc<Mem>,
    /// The in-flight region, once the frontend set one.
    pub inflight: Option<Arc<Tracking>>,
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
    inflight: Arc<Slot>,
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
            inflight: Arc::default(),
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
            inflight: self.inflight.get(),
            event_idx: self.event_idx.load(Ordering::Relaxed),
            window: self.options.poll,
        })
    }

    /// Where the relay installs the in-flight region (SET_INFLIGHT_FD).
    pub fn inflight_slot(&self) -> Arc<Slot> {
        self.inflight.clone()
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
    use vm_memory::{
        GuestAddress, GuestMemory, GuestMemoryAtomic, GuestMemoryMmap, GuestMemoryRegion,
    };

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

    /// A ring of 8 at 0x1000 (desc), 0x2000 (avail), 0x3000 (used) with
    /// one-descriptor chains `heads` offered from avail position 0.
    fn ring_with(mem: &Mem, heads: &[u16]) -> (Vring, GuestMemoryAtomic<Mem>) {
        use vm_memory::Bytes;
        for h in 0..8u64 {
            // addr, len, flags (WRITE), next
            mem.write_obj(0x8000 + h * 0x100, GuestAddress(0x1000 + 16 * h))
                .unwrap();
            mem.write_obj(0x100u32, GuestAddress(0x1008 + 16 * h))
                .unwrap();
            mem.write_obj(2u16, GuestAddress(0x100c + 16 * h)).unwrap();
        }
        offer(mem, 0, heads);
        let atomic = GuestMemoryAtomic::new(mem.clone());
        (setup_vring(&atomic), atomic)
    }

    /// Puts `heads` on the avail ring from position `from`.
    fn offer(mem: &Mem, from: u16, heads: &[u16]) {
        use vm_memory::Bytes;
        for (i, &h) in heads.iter().enumerate() {
            let slot = u64::from((from + i as u16) % 8);
            mem.write_obj(h, GuestAddress(0x2004 + 2 * slot)).unwrap();
        }
        mem.write_obj(from + heads.len() as u16, GuestAddress(0x2002))
            .unwrap();
    }

    /// What a (re)connecting frontend's setup does to a fresh vring, with
    /// SET_VRING_BASE = the used index in memory.
    fn setup_vring(atomic: &GuestMemoryAtomic<Mem>) -> Vring {
        use vm_memory::Bytes;
        let vring = Vring::new(atomic.clone(), 256).unwrap();
        vring.set_queue_size(8);
        let used: u16 = atomic.memory().read_obj(GuestAddress(0x3002)).unwrap();
        vring.set_queue_next_avail(used);
        vring.set_queue_info(0x1000, 0x2000, 0x3000).unwrap();
        vring.set_queue_next_used(used);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        vring
    }

    /// The used ring's (index, heads in order).
    fn used_ring(mem: &Mem) -> (u16, Vec<u16>) {
        use vm_memory::Bytes;
        let idx: u16 = mem.read_obj(GuestAddress(0x3002)).unwrap();
        let heads = (0..idx)
            .map(|i| {
                let at = 0x3004 + 8 * u64::from(i % 8);
                mem.read_obj::<u32>(GuestAddress(at)).unwrap() as u16
            })
            .collect();
        (idx, heads)
    }

    /// Drains queue 0 as a synchronous backend tracked by `t` (one byte
    /// written per chain): the heads it handled, in order.
    fn drain_sync(vring: &Vring, m: &Mem, broken: &AtomicBool, t: &Tracker) -> Vec<u16> {
        let mut heads = Vec::new();
        drain_tracked(
            0,
            vring,
            m,
            false,
            Duration::ZERO,
            broken,
            Some(t),
            |c, _| {
                heads.push(c.head_index());
                1
            },
        )
        .unwrap();
        heads
    }

    fn tracker_over(file: &std::fs::File) -> Tracker {
        let size = crate::inflight::queue_region_size(8);
        let region = crate::inflight::Region::map(file, size, 0, 1, 8).unwrap();
        Tracker::new(Arc::new(Tracking::new(region)), 0).unwrap()
    }

    /// Three requests taken by a deferred backend, the third and the first
    /// completed (out of order), then the backend dies. The next one, over
    /// the same region and SET_VRING_BASE = used index, gets only the
    /// second again, then the driver's next request: no head twice on the
    /// used ring, none lost.
    #[test]
    fn a_restarted_backend_resubmits_only_what_was_in_flight() {
        let mem = map(&[(0, 0x10000)]);
        let (file, _) = crate::inflight::create_memfd(1, 8).unwrap();
        let (vring, atomic) = ring_with(&mem, &[5, 6, 7]);
        let m = atomic.memory().into_inner();
        let broken = AtomicBool::new(false);
        let t = tracker_over(&file);
        let mut taken = Vec::new();
        drain_deferred_tracked(0, &vring, &m, false, &broken, Some(&t), |c, _| {
            taken.push(c.head_index())
        })
        .unwrap();
        assert_eq!(taken, [5, 6, 7]);
        complete_tracked(&vring, &m, 7, 1, Some(&t)).unwrap();
        complete_tracked(&vring, &m, 5, 1, Some(&t)).unwrap();
        drop((vring, t));

        // The restart, deferred again: head 6 alone comes back.
        let vring = setup_vring(&atomic);
        let t = tracker_over(&file);
        let mut again = Vec::new();
        drain_deferred_tracked(0, &vring, &m, false, &broken, Some(&t), |c, _| {
            again.push(c.head_index())
        })
        .unwrap();
        assert_eq!(again, [6]);
        assert_eq!(
            vring.queue_next_avail(),
            3,
            "new requests after the three taken"
        );
        complete_tracked(&vring, &m, 6, 1, Some(&t)).unwrap();

        // The driver's next request, now on a synchronous backend that
        // dies again before its next batch: nothing to resubmit.
        offer(&m, 3, &[5]);
        let mut sync = Vec::new();
        sync.extend(drain_sync(&vring, &m, &broken, &t));
        assert_eq!(sync, [5]);
        let vring = setup_vring(&atomic);
        let t = tracker_over(&file);
        assert_eq!(
            drain_sync(&vring, &m, &broken, &t),
            [0u16; 0],
            "handled again"
        );
        assert_eq!(used_ring(&m), (4, vec![7, 5, 6, 5]));
    }

    /// A synchronous backend resubmits in the order the heads were taken,
    /// before what the driver offered since, each exactly once.
    #[test]
    fn resubmitted_heads_come_before_new_ones_in_taken_order() {
        let mem = map(&[(0, 0x10000)]);
        let (file, _) = crate::inflight::create_memfd(1, 8).unwrap();
        let (vring, atomic) = ring_with(&mem, &[3, 1, 4]);
        let m = atomic.memory().into_inner();
        let broken = AtomicBool::new(false);
        let t = tracker_over(&file);
        drain_deferred_tracked(0, &vring, &m, false, &broken, Some(&t), |_, _| {}).unwrap();
        complete_tracked(&vring, &m, 1, 1, Some(&t)).unwrap();
        offer(&m, 3, &[0, 2]);
        let vring = setup_vring(&atomic);
        let t = tracker_over(&file);
        let mut order = Vec::new();
        order.extend(drain_sync(&vring, &m, &broken, &t));
        assert_eq!(order, [3, 4, 0, 2]);
        assert_eq!(used_ring(&m), (5, vec![1, 3, 4, 0, 2]));
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
