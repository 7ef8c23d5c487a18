//! The virtio-fs device behind `common`'s generic backend: queue 0 is the high-priority queue
//! (FORGET, INTERRUPT), queues 1.. carry requests. Each queue has its own
//! worker thread; a kick drains the ring, each chain becomes a FUSE
//! request handed to fuse-backend-rs's server over the chain's own guest
//! buffers (no copies beyond what the passthrough's read/write make), and
//! the guest is signalled once per batch. With `--thread-pool-size N`
//! (N > 1) request-queue chains run on a pool of N threads instead
//! (`pool.rs`), each replying and signalling on its own.

use std::io;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::backend::{Device, Event, Worker};
use common::daemon::Service;
use common::queue::{complete_tracked, Origin};
use common::ratelimit::RateLimited;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use crate::cli::TAG_MAX;
use crate::fs::Guarded;
use crate::persist::Persist;
use crate::pool::Pool;
use crate::request::{self, Verdict};

/// The filesystem every connection serves.
pub type Fs = Guarded<Persist<PassthroughFs<()>>>;

/// The line Kata Containers waits for on stderr before it starts the VM.
const READY_LINE: &str = "Waiting for vhost-user socket connection...";

/// What outlives connections: the FUSE server over the share.
pub struct Share {
    /// The FUSE server.
    pub server: Server<Arc<Fs>>,
    /// The filesystem (to reset it between frontends).
    pub fs: Arc<Fs>,
    /// Tag, NUL padded.
    pub tag: [u8; TAG_MAX],
    /// Request queues (the hiprio queue comes on top).
    pub request_queues: u16,
    /// Largest queue size.
    pub queue_size: u16,
    /// `--thread-pool-size`: 0 or 1 runs requests on their queue's thread.
    pub pool_size: usize,
    /// Chains that cannot carry a request, and requests fuse-backend-rs
    /// refused to decode.
    pub malformed: RateLimited,
    /// Requests refused by our own checks (see `request::judge`).
    pub refused: RateLimited,
    /// The line logged once serving starts.
    pub serving: String,
    /// `--exit-on-disconnect`.
    pub exit_on_disconnect: bool,
}

impl Share {
    /// Virtio feature bits offered.
    pub fn features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// The config space: tag[36], num_request_queues (le32).
    pub fn config(&self) -> [u8; TAG_MAX + 4] {
        let mut c = [0u8; TAG_MAX + 4];
        c[..TAG_MAX].copy_from_slice(&self.tag);
        c[TAG_MAX..].copy_from_slice(&u32::from(self.request_queues).to_le_bytes());
        c
    }

    /// Forgets every inode and handle of a frontend that left, so the next
    /// one starts from a fresh FUSE session.
    pub fn reset(&self) {
        use fuse_backend_rs::api::filesystem::FileSystem;
        self.fs.destroy();
    }
}

/// One connection's device.
pub struct FsConnection {
    serving: Arc<Serving>,
    /// `--thread-pool-size` > 1: where request-queue chains run.
    pool: Option<Pool>,
}

/// What a request needs, shared with the pool's threads.
struct Serving {
    device: Arc<Share>,
    /// INIT succeeded (and no DESTROY since).
    initialized: AtomicBool,
}

impl FsConnection {
    /// A fresh backend for a new frontend.
    pub fn new(device: Arc<Share>) -> io::Result<Self> {
        let pool = match device.pool_size {
            0 | 1 => None,
            n => Some(Pool::new(n, "fs-pool")?),
        };
        // A session resumed from the state file: the guest will not send
        // INIT again.
        let initialized = device.fs.inner().session_on();
        Ok(FsConnection {
            serving: Arc::new(Serving {
                device,
                initialized: AtomicBool::new(initialized),
            }),
            pool,
        })
    }

    /// A kick on request queue `q` with a pool: the chains go to the pool.
    fn dispatch(&self, pool: &Pool, q: usize, w: &Worker<'_>) -> io::Result<()> {
        let Some(vring) = w.vring(0) else {
            return Ok(());
        };
        let mem = w.mem_arc();
        let inflight = w.inflight(0);
        w.drain_deferred_marked(0, |chain, origin| {
            let (serving, vring, mem) = (self.serving.clone(), vring.clone(), mem.clone());
            let inflight = inflight.clone();
            pool.submit(move || {
                let head = chain.head_index();
                let len = serving.handle_chain(q, chain, origin, &*mem);
                if let Err(e) = complete_tracked(&vring, &mem, head, len, inflight.as_ref()) {
                    log::warn!("queue {q} head {head}: returning the reply: {e}");
                }
            });
        })
    }
}

impl Serving {
    /// Runs one FUSE request; returns the bytes written into the chain.
    /// A request a previous daemon took and did not answer (`origin`) runs
    /// again only if it is safe to repeat (`request::judge_resubmitted`).
    fn handle_chain<M>(
        &self,
        q: usize,
        chain: DescriptorChain<M>,
        origin: Origin,
        mem: &M::Target,
    ) -> u32
    where
        M: Deref + Clone,
        M::Target: GuestMemory + Sized,
    {
        let head = chain.head_index();
        let bad = |why: String| {
            if let Some(n) = self.device.malformed.hit() {
                log::warn!("queue {q} head {head}: malformed request dropped: {why} (#{n})");
            }
            0
        };
        let (header, shape) = match request::inspect(&chain, mem) {
            Ok(v) => v,
            Err(e) => return bad(e.to_string()),
        };
        let initialized = self.initialized.load(Ordering::Acquire);
        let verdict = match origin {
            Origin::New => request::judge(&header, &shape, initialized),
            Origin::Resubmitted => request::judge_resubmitted(&header, &shape, initialized),
        };
        match verdict {
            Verdict::Serve => {}
            Verdict::Drop => return 0,
            Verdict::Refuse(errno) => {
                if let Some(n) = self.device.refused.hit() {
                    log::warn!(
                        "queue {q} head {head}: opcode {} refused with errno {errno} (len {} for {} bytes{}{}; #{n})",
                        header.opcode,
                        header.len,
                        shape.readable,
                        if initialized { "" } else { ", before INIT" },
                        if origin == Origin::Resubmitted {
                            ", resubmitted after a restart"
                        } else {
                            ""
                        }
                    );
                }
                let mut writer = match VirtioFsWriter::new(mem, chain) {
                    Ok(w) => w,
                    Err(e) => return bad(format!("writable buffers: {e}")),
                };
                let reply = request::error_reply(header.unique, errno);
                return match std::io::Write::write_all(&mut writer, &reply) {
                    Ok(()) => reply.len() as u32,
                    Err(e) => bad(format!("no room for a reply: {e}")),
                };
            }
        }
        let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
            Ok(r) => r,
            Err(e) => return bad(format!("readable buffers: {e}")),
        };
        let writer = match VirtioFsWriter::new(mem, chain) {
            Ok(w) => Writer::from(w),
            Err(e) => return bad(format!("writable buffers: {e}")),
        };
        let server = &self.device.server;
        let n = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            server.handle_message(reader, writer, None, None)
        })) {
            Ok(Ok(n)) => u32::try_from(n).unwrap_or(u32::MAX),
            Ok(Err(e)) => return bad(format!("{e}")),
            Err(_) => return bad("the FUSE server panicked on it".into()),
        };
        match header.opcode {
            request::opcode::INIT => self.initialized.store(n > 0, Ordering::Release),
            request::opcode::DESTROY => self.initialized.store(false, Ordering::Release),
            _ => {}
        }
        n
    }
}

impl Device for FsConnection {
    fn num_queues(&self) -> usize {
        1 + usize::from(self.serving.device.request_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.serving.device.queue_size)
    }

    fn features(&self) -> u64 {
        self.serving.device.features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    /// Requests a killed virtiofsd had taken and not answered are
    /// resubmitted once to the restarted one, and none is answered twice.
    /// Without `--state-file` its FUSE session is gone, so until the
    /// guest's INIT they are answered EIO (`request::judge`); with it
    /// those safe to repeat (reads, lookups, GETATTR, OPEN...) run again in
    /// the resumed session and the rest (MKDIR, WRITE, RENAME...) are
    /// answered EIO (`request::replay_safe`), since the dead daemon may
    /// have run them already.
    fn tracks_inflight(&self) -> bool {
        true
    }

    fn read_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = self.serving.device.config();
        (offset as usize..offset as usize + size as usize)
            .map(|i| c.get(i).copied().unwrap_or(0))
            .collect()
    }

    fn handle(&self, w: &Worker<'_>, event: Event) -> io::Result<()> {
        let q = w.thread();
        if event != Event::Kick(0) {
            log::warn!("queue {q}: unexpected event {event:?}");
            return Ok(());
        }
        // Queue 0 (hiprio: FORGET, INTERRUPT) always runs inline.
        if let (Some(pool), true) = (&self.pool, q >= 1) {
            return self.dispatch(pool, q, w);
        }
        w.drain_marked(0, |chain, origin| {
            self.serving.handle_chain(q, chain, origin, w.mem())
        })
    }

    fn quiesce(&self) {
        if let Some(pool) = &self.pool {
            pool.wait_idle();
        }
    }
}

impl Service for Share {
    type Device = FsConnection;

    fn connect(self: &Arc<Self>) -> io::Result<FsConnection> {
        FsConnection::new(self.clone())
    }

    fn ready(&self) {
        log::info!("{}", self.serving);
        eprintln!("{READY_LINE}");
    }

    fn after_disconnect(&self) -> bool {
        self.reset();
        !self.exit_on_disconnect
    }

    fn stopped(&self) {
        log::info!("stopped ({} malformed requests)", self.malformed.count());
    }
}
