//! The vhost-user backend: one instance per frontend connection, one worker
//! thread per queue. A kick drains the ring in a batch (EVENT_IDX
//! suppresses kicks meanwhile), executes each request synchronously with
//! preadv/pwritev straight into guest memory, and signals the guest once
//! per batch.

use std::io;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use common::ratelimit::RateLimited;
use common::serve::{Connection, ExitEvents, Gate, GuestMem, Vring};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::VhostUserBackend;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};

use crate::config::DeviceConfig;
use crate::disk::Disk;
use crate::request::{self, Scratch, Target};

/// What outlives connections: the image and how it is presented.
#[derive(Debug)]
pub struct Device {
    /// The image.
    pub disk: Disk,
    /// Features, limits and config space.
    pub config: DeviceConfig,
    /// GET_ID answer.
    pub serial: [u8; 20],
    /// Log every malformed chain at most this way.
    pub malformed: RateLimited,
    /// Host I/O errors, likewise.
    pub io_errors: RateLimited,
}

/// One connection's backend.
pub struct BlkConnection {
    device: Arc<Device>,
    mem: RwLock<Option<GuestMem>>,
    event_idx: AtomicBool,
    scratch: Vec<Mutex<Scratch>>,
    /// Per queue: a broken avail index was seen (and logged).
    broken: Vec<AtomicBool>,
    gate: Gate,
    exit_events: ExitEvents,
}

impl BlkConnection {
    /// A fresh backend for a new frontend.
    pub fn new(device: Arc<Device>) -> Self {
        let n = usize::from(device.config.num_queues);
        BlkConnection {
            device,
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            scratch: (0..n).map(|_| Mutex::new(Scratch::default())).collect(),
            broken: (0..n).map(|_| AtomicBool::new(false)).collect(),
            gate: Gate::default(),
            exit_events: ExitEvents::default(),
        }
    }

    /// Drains queue `q`; returns whether used entries were added.
    fn process_queue(&self, q: usize, vring: &Vring) -> io::Result<()> {
        let Some(mem) = self.mem.read().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        let mem = mem.memory();
        let mut scratch = self.scratch[q].lock().unwrap_or_else(|e| e.into_inner());
        let target = Target {
            disk: &self.device.disk,
            config: &self.device.config,
            serial: &self.device.serial,
        };
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        common::queue::drain(q, vring, &mem, event_idx, &self.broken[q], |chain| {
            let head = chain.head_index();
            match request::process(chain, mem.deref(), &target, &mut scratch) {
                Ok(done) => {
                    if let Some((what, errno)) = done.host_error {
                        if let Some(n) = self.device.io_errors.hit() {
                            log::warn!(
                                "queue {q} head {head}: {what} on {} failed: {} (host I/O error #{n})",
                                self.device.disk.path().display(),
                                io::Error::from_raw_os_error(errno)
                            );
                        }
                    }
                    done.used_len
                }
                Err(why) => {
                    if let Some(n) = self.device.malformed.hit() {
                        log::warn!(
                            "queue {q} head {head}: malformed request dropped: {why} (#{n})"
                        );
                    }
                    0
                }
            }
        })
    }
}

impl VhostUserBackend for BlkConnection {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        usize::from(self.device.config.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.device.config.queue_size)
    }

    fn features(&self) -> u64 {
        self.device.config.features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.device.config.protocol_features()
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn update_memory(&self, mem: GuestMem) -> io::Result<()> {
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.device.config.read(offset, size)
    }

    fn set_config(&self, offset: u32, _buf: &[u8]) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("config space is read-only (write at offset {offset})"),
        ))
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues()).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit_events.create()
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN || device_event != 0 || vrings.len() != 1 {
            log::warn!("queue {thread_id}: unexpected event {device_event} ({evset:?})");
            return Ok(());
        }
        let Some(_pass) = self.gate.enter() else {
            return Ok(());
        };
        self.process_queue(thread_id, &vrings[0])
    }
}

impl Connection for BlkConnection {
    fn quiesce(&self) {
        self.gate.close();
    }
}
