//! The vhost-user backend: one instance per frontend connection, one worker
//! thread per queue. A kick drains the ring in a batch (EVENT_IDX
//! suppresses kicks meanwhile), executes each request synchronously with
//! preadv/pwritev straight into guest memory, and signals the guest once
//! per batch.

use std::io;
use std::sync::{Arc, Mutex};

use common::queue::{refuse_config_write, Mem, Rings};
use common::ratelimit::RateLimited;
use common::serve::{Connection, GuestMem, Vring};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::VhostUserBackend;
use virtio_queue::DescriptorChain;
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
    rings: Rings,
    scratch: Vec<Mutex<Scratch>>,
}

impl BlkConnection {
    /// A fresh backend for a new frontend.
    pub fn new(device: Arc<Device>) -> Self {
        let n = usize::from(device.config.num_queues);
        BlkConnection {
            device,
            rings: Rings::new(n),
            scratch: (0..n).map(|_| Mutex::new(Scratch::default())).collect(),
        }
    }

    /// Runs one request of queue `q`; returns its used length.
    fn handle_chain(
        &self,
        q: usize,
        chain: DescriptorChain<&Mem>,
        mem: &Mem,
        target: &Target<'_>,
        scratch: &mut Scratch,
    ) -> u32 {
        let head = chain.head_index();
        match request::process(chain, mem, target, scratch) {
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
                    log::warn!("queue {q} head {head}: malformed request dropped: {why} (#{n})");
                }
                0
            }
        }
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
        self.rings.queues_per_thread()
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
        let Some(scratch) = self.scratch.get(thread_id) else {
            return Ok(());
        };
        let mut scratch = scratch.lock().unwrap_or_else(|e| e.into_inner());
        let target = Target {
            disk: &self.device.disk,
            config: &self.device.config,
            serial: &self.device.serial,
        };
        self.rings
            .on_kick(device_event, evset, vrings, thread_id, |mem, chain| {
                self.handle_chain(thread_id, chain, mem, &target, &mut scratch)
            })
    }
}

impl Connection for BlkConnection {
    fn quiesce(&self) {
        self.rings.quiesce()
    }
}
