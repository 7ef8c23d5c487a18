//! The one `VhostUserBackend` every daemon uses: [`Backend`] over a small
//! [`Device`] trait. The backend owns what is the same for every device
//! (guest memory, EVENT_IDX, the SIGTERM gate, worker exit events, broken
//! rings, the ring options, config writes refused); a device says what it
//! offers and handles the events of its worker threads, usually by
//! draining a ring with [`Worker::drain`] ("handle this chain").

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringEpollHandler};
use virtio_queue::DescriptorChain;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::inflight::{Slot, Tracker};
use crate::memory::Mem;
use crate::queue::{self, Batch, Origin, RingOptions, Rings};
use crate::serve::{Connection, GuestMem, Vring};

/// What woke a worker thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A kick on the thread's `n`th ring (in queue order).
    Kick(usize),
    /// The thread's `index`th [`Device::event_sources`] fired.
    Source {
        /// Its position in the list.
        index: usize,
        /// It became readable (an error or hang-up otherwise).
        readable: bool,
    },
}

/// A virtio device behind [`Backend`]: one instance per frontend
/// connection.
pub trait Device: Send + Sync + 'static {
    /// Number of virtqueues.
    fn num_queues(&self) -> usize;
    /// Largest queue size the frontend may choose.
    fn max_queue_size(&self) -> usize;
    /// Virtio feature bits offered.
    fn features(&self) -> u64;
    /// vhost-user protocol features offered.
    fn protocol_features(&self) -> VhostUserProtocolFeatures;
    /// The config space bytes `offset..offset + size`.
    fn read_config(&self, offset: u32, size: u32) -> Vec<u8>;
    /// Handles `event` on a worker thread.
    fn handle(&self, worker: &Worker<'_>, event: Event) -> io::Result<()>;

    /// The features the driver acked (SET_FEATURES).
    fn acked_features(&self, _features: u64) {}
    /// A config space write; refused by default.
    fn write_config(&self, offset: u32, _data: &[u8]) -> io::Result<()> {
        queue::refuse_config_write(offset)
    }
    /// The queues of each worker thread, as bit masks; default: one
    /// thread per queue.
    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|q| 1u64 << q).collect()
    }
    /// Descriptors of the device's own (a tap queue, say) that wake worker
    /// `thread`, with the events to wait for; they come back as
    /// [`Event::Source`].
    fn event_sources(&self, _thread: usize) -> Vec<(RawFd, EventSet)> {
        Vec::new()
    }
    /// Returns once requests taken off the rings are complete (the backend
    /// has already stopped new batches).
    fn quiesce(&self) {}
    /// Whether the device resubmits requests a previous process left in
    /// flight (offers VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD through the
    /// relay): every used entry it writes must then go through
    /// [`Worker::drain`], [`Worker::drain_deferred`] +
    /// [`queue::complete_tracked`], or [`queue::add_used`] with
    /// [`Worker::inflight`]'s tracker.
    fn tracks_inflight(&self) -> bool {
        false
    }
}

/// A worker thread's view of one event: its rings, the guest memory
/// (held for the whole call), and the batch loops.
pub struct Worker<'a> {
    thread: usize,
    vrings: &'a [Vring],
    queues: &'a [usize],
    rings: &'a Rings,
    batch: Batch<'a>,
}

impl Worker<'_> {
    /// The worker thread's index.
    pub fn thread(&self) -> usize {
        self.thread
    }

    /// Guest memory.
    pub fn mem(&self) -> &Mem {
        self.batch.mem()
    }

    /// An owned handle on the memory map, for work that outlives the call.
    pub fn mem_arc(&self) -> Arc<Mem> {
        self.batch.mem_arc()
    }

    /// EVENT_IDX was negotiated.
    pub fn event_idx(&self) -> bool {
        self.batch.event_idx
    }

    /// How long to keep looking for work after a batch (`--poll-us`).
    pub fn window(&self) -> std::time::Duration {
        self.batch.window
    }

    /// The thread's `n`th ring.
    pub fn vring(&self, n: usize) -> Option<&Vring> {
        self.vrings.get(n)
    }

    /// The device's queue index of the thread's `n`th ring.
    pub fn queue_index(&self, n: usize) -> Option<usize> {
        self.queues.get(n).copied()
    }

    /// The broken flag of the thread's `n`th ring (see [`queue::drain`]).
    pub fn broken(&self, n: usize) -> Option<&AtomicBool> {
        self.rings.broken(self.queue_index(n)?)
    }

    /// The in-flight tracker of the thread's `n`th ring, once the frontend
    /// set a region (SET_INFLIGHT_FD).
    pub fn inflight(&self, n: usize) -> Option<Tracker> {
        Tracker::new(self.batch.inflight.clone()?, self.queue_index(n)?)
    }

    /// The thread's `n`th ring, its queue index and broken flag.
    fn ring(&self, n: usize) -> Option<(&Vring, usize, &AtomicBool)> {
        Some((self.vring(n)?, self.queue_index(n)?, self.broken(n)?))
    }

    /// Drains the thread's `n`th ring: `handle` runs each chain and returns
    /// its used length; the guest is signalled once per batch.
    pub fn drain<F>(&self, n: usize, mut handle: F) -> io::Result<()>
    where
        F: FnMut(DescriptorChain<&Mem>) -> u32,
    {
        self.drain_marked(n, |c, _| handle(c))
    }

    /// [`Worker::drain`] telling `handle` whether each chain is new or
    /// resubmitted after a restart ([`Origin`]).
    pub fn drain_marked<F>(&self, n: usize, handle: F) -> io::Result<()>
    where
        F: FnMut(DescriptorChain<&Mem>, Origin) -> u32,
    {
        let Some((vring, q, broken)) = self.ring(n) else {
            return Ok(());
        };
        queue::drain_tracked(
            q,
            vring,
            self.mem(),
            self.event_idx(),
            self.batch.window,
            broken,
            self.inflight(n).as_ref(),
            handle,
        )
    }

    /// [`Worker::drain`] for chains completed elsewhere: each goes to
    /// `dispatch`, and whoever finishes it calls [`queue::complete_tracked`]
    /// with [`Worker::inflight`]'s tracker.
    pub fn drain_deferred<F>(&self, n: usize, mut dispatch: F) -> io::Result<()>
    where
        F: FnMut(DescriptorChain<Arc<Mem>>),
    {
        self.drain_deferred_marked(n, |c, _| dispatch(c))
    }

    /// [`Worker::drain_deferred`] telling `dispatch` each chain's
    /// [`Origin`].
    pub fn drain_deferred_marked<F>(&self, n: usize, dispatch: F) -> io::Result<()>
    where
        F: FnMut(DescriptorChain<Arc<Mem>>, Origin),
    {
        let Some((vring, q, broken)) = self.ring(n) else {
            return Ok(());
        };
        queue::drain_deferred_tracked(
            q,
            vring,
            &self.mem_arc(),
            self.event_idx(),
            broken,
            self.inflight(n).as_ref(),
            dispatch,
        )
    }
}

/// `VhostUserBackend` for any [`Device`]: one instance per connection.
pub struct Backend<D> {
    device: D,
    rings: Rings,
    /// Each thread's queue indexes, in ring order.
    thread_queues: Vec<Vec<usize>>,
}

impl<D: Device> Backend<D> {
    /// The backend of a new connection.
    pub fn new(device: D, options: RingOptions) -> Self {
        let queues = device.num_queues();
        let thread_queues = device
            .queues_per_thread()
            .iter()
            .map(|mask| (0..64).filter(|q| mask & (1u64 << q) != 0).collect())
            .collect();
        Backend {
            rings: Rings::new(queues, options),
            thread_queues,
            device,
        }
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The event id of the thread's `index`th source: above the queues
    /// and the exit event, as `vhost-user-backend` wants.
    fn source_id(&self, index: usize) -> u64 {
        (self.device.num_queues() + 1 + index) as u64
    }
}

impl<D: Device> VhostUserBackend for Backend<D> {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.device.num_queues()
    }

    fn max_queue_size(&self) -> usize {
        self.device.max_queue_size()
    }

    fn features(&self) -> u64 {
        self.device.features()
    }

    fn acked_features(&self, features: u64) {
        self.device.acked_features(features)
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.device.protocol_features()
    }

    fn set_event_idx(&self, enabled: bool) {
        self.rings.set_event_idx(enabled)
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        self.rings.update_memory(mem)
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.device.read_config(offset, size)
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        self.device.write_config(offset, buf)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        self.device.queues_per_thread()
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
        let id = usize::from(device_event);
        let first_source = self.device.num_queues() + 1;
        let event = if id < vrings.len() && evset == EventSet::IN {
            Event::Kick(id)
        } else if id >= first_source {
            Event::Source {
                index: id - first_source,
                readable: evset.contains(EventSet::IN),
            }
        } else {
            log::warn!("worker {thread_id}: unexpected event {device_event} ({evset:?})");
            return Ok(());
        };
        let Some(queues) = self.thread_queues.get(thread_id) else {
            return Ok(());
        };
        // None: quiescing, or no memory yet; the rings must not be touched.
        let Some(batch) = self.rings.batch() else {
            return Ok(());
        };
        let worker = Worker {
            thread: thread_id,
            vrings,
            queues,
            rings: &self.rings,
            batch,
        };
        self.device.handle(&worker, event)
    }
}

impl<D: Device> Connection for Backend<D> {
    fn quiesce(&self) {
        self.rings.quiesce();
        self.device.quiesce();
    }

    fn inflight(&self) -> Option<Arc<Slot>> {
        self.device
            .tracks_inflight()
            .then(|| self.rings.inflight_slot())
    }

    fn register_listeners(&self, workers: &[Arc<VringEpollHandler<Arc<Self>>>]) -> io::Result<()> {
        for (thread, worker) in workers.iter().enumerate() {
            for (index, (fd, events)) in self.device.event_sources(thread).into_iter().enumerate() {
                worker.register_listener(fd, events, self.source_id(index))?;
            }
        }
        Ok(())
    }
}
