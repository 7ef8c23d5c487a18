//! The virtio-blk device behind `common`'s generic backend: one worker
//! thread per queue. A kick drains the ring in a batch (EVENT_IDX
//! suppresses kicks meanwhile) and signals the guest once per batch. With
//! `--aio sync` each request runs synchronously with preadv/pwritev
//! straight into guest memory; with `--aio io_uring` reads, writes and
//! flushes go to the queue's ring and complete as the kernel finishes them
//! ([`crate::uring`]).

use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::backend::{Device, Event, Worker};
use common::daemon::{DaemonError, Relay, Service, Spec};
use common::memory::Mem;
use common::ratelimit::RateLimited;
use common::sandbox;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_queue::DescriptorChain;
use vmm_sys_util::epoll::EventSet;

use crate::cli::{Aio, Cli, SERIAL_MAX};
use crate::config::DeviceConfig;
use crate::device::Blk;
use crate::disk::{self, Disk};
use crate::request::{self, Scratch, Target};
use crate::uring::{self, Uring};

/// The program name.
pub const NAME: &str = "vhost-blk-daemon";

/// System calls the data path needs beyond `common::seccomp::VHOST_USER_BASE`.
const SECCOMP_BLK: &[i64] = &[
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    // --aio io_uring (preadv2/pwritev2: RWF_NOWAIT on the page cache).
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// Opens the image and serves it until SIGTERM.
pub fn run(cli: Cli, path: &Path) -> Result<(), DaemonError> {
    let disk = Disk::open(path, cli.read_only, cli.direct).map_err(DaemonError::setup)?;
    let config = DeviceConfig::new(
        disk.size(),
        cli.logical_block_size,
        cli.num_queues,
        cli.queue_size,
        cli.read_only,
    );
    let blk = Blk {
        serial: serial(&cli, &disk),
        disk,
        config,
        malformed: RateLimited::default(),
        io_errors: RateLimited::default(),
        aio: engine(cli.aio.resolve(cli.direct)),
    };
    let spec = Spec {
        name: NAME,
        vhost_user: &cli.vhost_user,
        seccomp: cli.seccomp,
        syscalls: SECCOMP_BLK,
        ioctls: &[disk::BLKDISCARD, disk::BLKZEROOUT],
        relay: Relay::for_sandbox(cli.sandbox),
        // The image is open; the socket file is not ours to remove in a
        // jail.
        no_files: cli.sandbox != common::sandbox::SandboxMode::None,
    };
    let mode = cli.sandbox;
    let image = std::os::fd::AsRawFd::as_raw_fd(blk.disk.file());
    // The jail, entered with the image and the socket open: nothing of
    // the host's file system stays reachable, and no capability is kept
    // (the daemon only reads and writes descriptors it holds).
    common::daemon::run(spec, move |socket| {
        sandbox::enter_empty_jail(mode, socket, &[image])?;
        Ok(blk)
    })
}

/// The engine to use for `--aio`: io_uring only where the kernel lets
/// this process set up a ring (checked before seccomp goes on).
fn engine(aio: Aio) -> Aio {
    if aio == Aio::IoUring {
        if let Err(e) = uring::probe() {
            log::warn!("--aio io_uring: the kernel refuses io_uring ({e}); using --aio sync");
            return Aio::Sync;
        }
    }
    aio
}

/// `--serial`, or the image's file name, NUL-padded.
fn serial(cli: &Cli, disk: &Disk) -> [u8; SERIAL_MAX] {
    let mut id = [0u8; SERIAL_MAX];
    let name = match &cli.serial {
        Some(s) => s.as_bytes().to_vec(),
        None => disk
            .path()
            .file_name()
            .map(|n| n.as_encoded_bytes().to_vec())
            .unwrap_or_default(),
    };
    let n = name.len().min(SERIAL_MAX);
    id[..n].copy_from_slice(&name[..n]);
    id
}

impl Service for Blk {
    type Device = BlkQueues;

    fn connect(self: &Arc<Self>) -> io::Result<BlkQueues> {
        let n = usize::from(self.config.num_queues);
        let mut rings = Vec::new();
        if self.aio == Aio::IoUring {
            let size = usize::from(self.config.queue_size);
            match (0..n)
                .map(|q| Uring::new(self.clone(), q, size).map(Mutex::new))
                .collect::<io::Result<Vec<_>>>()
            {
                Ok(r) => rings = r,
                Err(e) => log::warn!(
                    "--aio io_uring: cannot set up {n} ring(s) of {size} ({e}); \
                     using --aio sync for this connection"
                ),
            }
        }
        Ok(BlkQueues {
            blk: self.clone(),
            scratch: (0..n).map(|_| Mutex::new(Scratch::default())).collect(),
            rings,
        })
    }

    fn ready(&self) {
        let (disk, config) = (&self.disk, &self.config);
        if config.capacity == 0 {
            log::warn!(
                "--blk-file {} holds no whole {}-byte block; the guest sees an empty disk",
                disk.path().display(),
                config.blk_size
            );
        }
        log::info!(
            "serving {} ({:?}, {} bytes, {} sectors{}{}{}), {} queue(s) of up to {}",
            disk.path().display(),
            disk.kind(),
            disk.size(),
            config.capacity,
            if disk.read_only() { ", read-only" } else { "" },
            if disk.direct() { ", O_DIRECT" } else { "" },
            if self.aio == Aio::IoUring {
                ", io_uring"
            } else {
                ""
            },
            config.num_queues,
            config.queue_size
        );
    }

    fn stopped(&self) {
        if let Err(e) = self.disk.flush() {
            log::error!(
                "flushing {} on exit failed: {e}",
                self.disk.path().display()
            );
        }
        log::info!(
            "stopped ({} malformed requests, {} host I/O errors)",
            self.malformed.count(),
            self.io_errors.count()
        );
    }
}

/// One connection's device: per-queue scratch buffers, and with
/// `--aio io_uring` per-queue rings (empty with `--aio sync`).
pub struct BlkQueues {
    blk: Arc<Blk>,
    scratch: Vec<Mutex<Scratch>>,
    rings: Vec<Mutex<Uring>>,
}

impl BlkQueues {
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
        self.blk
            .outcome(q, head, request::process(chain, mem, target, scratch))
    }
}

impl Device for BlkQueues {
    fn num_queues(&self) -> usize {
        usize::from(self.blk.config.num_queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.blk.config.queue_size)
    }

    fn features(&self) -> u64 {
        self.blk.config.features()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.blk.config.protocol_features()
    }

    fn read_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.blk.config.read(offset, size)
    }

    fn handle(&self, w: &Worker<'_>, event: Event) -> io::Result<()> {
        let q = w.thread();
        if let Some(ring) = self.rings.get(q) {
            let mut ring = ring.lock().unwrap_or_else(|e| e.into_inner());
            return match event {
                Event::Kick(0) => ring.kick(w),
                Event::Source { index: 0, .. } => ring.completions(w),
                _ => {
                    log::warn!("queue {q}: unexpected event {event:?}");
                    Ok(())
                }
            };
        }
        let (Event::Kick(0), Some(scratch)) = (event, self.scratch.get(q)) else {
            log::warn!("queue {q}: unexpected event {event:?}");
            return Ok(());
        };
        let mut scratch = scratch.lock().unwrap_or_else(|e| e.into_inner());
        let target = Target {
            disk: &self.blk.disk,
            config: &self.blk.config,
            serial: &self.blk.serial,
        };
        w.drain(0, |chain| {
            self.handle_chain(q, chain, w.mem(), &target, &mut scratch)
        })
    }

    fn event_sources(&self, thread: usize) -> Vec<(RawFd, EventSet)> {
        self.rings
            .get(thread)
            .map(|r| {
                let fd = r.lock().unwrap_or_else(|e| e.into_inner()).eventfd();
                vec![(fd, EventSet::IN)]
            })
            .unwrap_or_default()
    }

    fn tracks_inflight(&self) -> bool {
        true
    }

    fn quiesce(&self) {
        for ring in &self.rings {
            ring.lock().unwrap_or_else(|e| e.into_inner()).quiesce();
        }
    }
}
