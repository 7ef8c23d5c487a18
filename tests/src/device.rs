//! A vhost-user device as a VMM plus guest driver would set it up: connect,
//! negotiate virtio and protocol features, send the memory table, start the
//! vrings, and read or write the device's config space.
//!
//! Message order follows QEMU's `vhost_dev_init` / `vhost_dev_start`, so any
//! backend that works under QEMU works here.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserInflight};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VringConfigData};

use crate::memory::{Backing, GuestMem, MemoryError};
use crate::virtqueue::{QueueConfig, QueueError, VirtQueue};

/// virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// used_event / avail_event notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// vhost-user: the backend speaks protocol features.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// Errors while setting up or talking to a vhost-user device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The socket could not be connected in time.
    #[error("connecting to {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    /// A vhost-user request failed.
    #[error("{socket}: vhost-user {op}")]
    Protocol {
        /// The backend's socket.
        socket: PathBuf,
        /// The request that failed.
        op: &'static str,
        /// What the vhost crate said.
        #[source]
        source: vhost::Error,
    },
    /// The backend lacks a feature the driver requires.
    #[error("{socket}: backend does not offer {what} (offers {offered:#x})")]
    MissingFeature {
        /// The backend's socket.
        socket: PathBuf,
        /// The missing feature.
        what: &'static str,
        /// What it offers.
        offered: u64,
    },
    /// More queues asked for than the backend has.
    #[error("{socket}: {wanted} queues wanted, backend has {max}")]
    TooManyQueues {
        /// The backend's socket.
        socket: PathBuf,
        /// Queues asked for.
        wanted: usize,
        /// Queues it reports.
        max: u64,
    },
    /// Guest memory could not be set up.
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    /// A virtqueue could not be set up.
    #[error("virtqueue")]
    Queue(#[from] QueueError),
    /// The backend came back offering less than was negotiated.
    #[error("{socket}: after reconnecting, {what} is no longer offered")]
    Regressed {
        /// The backend's socket.
        socket: PathBuf,
        /// What went missing.
        what: &'static str,
    },
}

impl DeviceError {
    /// True when the backend went away (reconnect rather than fail).
    pub fn is_disconnect(&self) -> bool {
        use vhost::vhost_user::Error as VuError;
        matches!(
            self,
            DeviceError::Protocol {
                source: vhost::Error::VhostUserProtocol(
                    VuError::SocketBroken(_) | VuError::Disconnected | VuError::PartialMessage
                ),
                ..
            }
        )
    }
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, DeviceError>;

/// What to ask of the backend.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Virtqueues to start.
    pub num_queues: usize,
    /// Descriptors per queue.
    pub queue_size: u16,
    /// Size of the shared "guest" memory.
    pub mem_size: u64,
    /// Where the memory lives.
    pub backing: Backing,
    /// Device-specific feature bits (0..24) the driver accepts.
    pub device_features: u64,
    /// Use EVENT_IDX if offered.
    pub event_idx: bool,
    /// Use indirect descriptors if offered.
    pub indirect: bool,
    /// Entries per indirect table.
    pub max_indirect: u16,
    /// Protocol features the driver accepts (intersected with the offer).
    pub protocol_features: VhostUserProtocolFeatures,
    /// How long to keep retrying the connection.
    pub connect_timeout: Duration,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            num_queues: 1,
            queue_size: 256,
            mem_size: 64 << 20,
            backing: Backing::Memfd,
            device_features: 0,
            event_idx: true,
            indirect: true,
            max_indirect: 64,
            protocol_features: VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A connected, started vhost-user device.
pub struct VuDevice {
    frontend: Frontend,
    socket: PathBuf,
    mem: Arc<GuestMem>,
    queues: Vec<VirtQueue>,
    offered: u64,
    features: u64,
    protocol: VhostUserProtocolFeatures,
    max_queues: Option<u64>,
    /// The in-flight region (GET_INFLIGHT_FD), when INFLIGHT_SHMFD was
    /// negotiated: sent again with SET_INFLIGHT_FD on every reconnect.
    inflight: Option<(VhostUserInflight, File)>,
}

impl std::fmt::Debug for VuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VuDevice")
            .field("socket", &self.socket)
            .field("features", &format_args!("{:#x}", self.features))
            .field("protocol", &self.protocol)
            .field("queues", &self.queues.len())
            .finish()
    }
}

/// Connects to a unix socket, retrying while the listener is not up yet.
pub fn connect_socket(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(DeviceError::Connect(path.to_owned(), e)),
        }
    }
}

impl VuDevice {
    /// Connects to the backend at `socket`, negotiates, and starts every queue.
    pub fn connect(socket: &Path, opts: &DeviceOptions) -> Result<Self> {
        let stream = connect_socket(socket, opts.connect_timeout)?;
        let mut dev = Self::negotiate(stream, socket, opts)?;
        dev.start(opts)?;
        Ok(dev)
    }

    /// Connects and negotiates features, but sends no memory table and starts no queue.
    pub fn negotiate(stream: UnixStream, socket: &Path, opts: &DeviceOptions) -> Result<Self> {
        let mut frontend = Frontend::from_stream(stream, opts.num_queues.max(1) as u64);
        let perr = |op| {
            let socket = socket.to_owned();
            move |source| DeviceError::Protocol { socket, op, source }
        };
        frontend.set_owner().map_err(perr("SET_OWNER"))?;
        let offered = frontend.get_features().map_err(perr("GET_FEATURES"))?;
        if offered & VIRTIO_F_VERSION_1 == 0 {
            return Err(DeviceError::MissingFeature {
                socket: socket.to_owned(),
                what: "VIRTIO_F_VERSION_1",
                offered,
            });
        }
        let mut protocol = VhostUserProtocolFeatures::empty();
        let mut max_queues = None;
        if offered & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let proto_offer = frontend
                .get_protocol_features()
                .map_err(perr("GET_PROTOCOL_FEATURES"))?;
            protocol = proto_offer & opts.protocol_features;
            frontend
                .set_protocol_features(protocol)
                .map_err(perr("SET_PROTOCOL_FEATURES"))?;
            if protocol.contains(VhostUserProtocolFeatures::MQ) {
                let max = frontend.get_queue_num().map_err(perr("GET_QUEUE_NUM"))?;
                if opts.num_queues as u64 > max {
                    return Err(DeviceError::TooManyQueues {
                        socket: socket.to_owned(),
                        wanted: opts.num_queues,
                        max,
                    });
                }
                max_queues = Some(max);
            }
        }
        let mut wanted = VIRTIO_F_VERSION_1
            | VHOST_USER_F_PROTOCOL_FEATURES
            | (opts.device_features & 0x00ff_ffff);
        if opts.event_idx {
            wanted |= VIRTIO_RING_F_EVENT_IDX;
        }
        if opts.indirect {
            wanted |= VIRTIO_RING_F_INDIRECT_DESC;
        }
        let features = offered & wanted;
        let mem = GuestMem::new(opts.mem_size, &opts.backing)?;
        Ok(VuDevice {
            frontend,
            socket: socket.to_owned(),
            mem,
            queues: Vec::new(),
            offered,
            features,
            protocol,
            max_queues,
            inflight: None,
        })
    }

    fn perr(&self, op: &'static str) -> impl FnOnce(vhost::Error) -> DeviceError {
        let socket = self.socket.clone();
        move |source| DeviceError::Protocol { socket, op, source }
    }

    /// Runs `f` with NEED_REPLY set when REPLY_ACK was negotiated, so the
    /// backend confirms the request (QEMU does this for SET_VRING_CALL/KICK too).
    fn acked<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T> {
        let ack = self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        if ack {
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let r = f(&mut self.frontend);
        if ack {
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
        }
        r.map_err(self.perr(op))
    }

    /// SET_FEATURES, SET_MEM_TABLE, then per queue SET_VRING_NUM/BASE/ADDR/CALL/KICK/ENABLE.
    pub fn start(&mut self, opts: &DeviceOptions) -> Result<()> {
        self.start_with(opts, true)
    }

    /// Like [`VuDevice::start`] but sends no SET_VRING_ENABLE, so every ring
    /// stays disabled (when PROTOCOL_FEATURES was negotiated) until
    /// [`VuDevice::set_queue_enabled`]; for tests of kicks on a disabled ring.
    pub fn start_disabled(&mut self, opts: &DeviceOptions) -> Result<()> {
        self.start_with(opts, false)
    }

    /// SET_VRING_ENABLE for queue `i` (acked when REPLY_ACK was negotiated).
    pub fn set_queue_enabled(&mut self, i: usize, enabled: bool) -> Result<()> {
        self.acked("SET_VRING_ENABLE", |f| f.set_vring_enable(i, enabled))
    }

    fn start_with(&mut self, opts: &DeviceOptions, enable: bool) -> Result<()> {
        let features = self.features;
        self.acked("SET_FEATURES", |f| f.set_features(features))?;
        let regions = self.mem.regions();
        self.acked("SET_MEM_TABLE", |f| f.set_mem_table(&regions))?;
        if self
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            // As QEMU's vhost-user-blk: a region from the backend, handed
            // back before the rings start.
            let ask = VhostUserInflight {
                num_queues: opts.num_queues as u16,
                queue_size: opts.queue_size,
                ..Default::default()
            };
            let (got, file) = self
                .frontend
                .get_inflight_fd(&ask)
                .map_err(self.perr("GET_INFLIGHT_FD"))?;
            self.acked("SET_INFLIGHT_FD", |f| {
                f.set_inflight_fd(&got, file.as_raw_fd())
            })?;
            self.inflight = Some((got, file));
        }
        let cfg = QueueConfig {
            size: opts.queue_size,
            event_idx: features & VIRTIO_RING_F_EVENT_IDX != 0,
            indirect: features & VIRTIO_RING_F_INDIRECT_DESC != 0,
            max_indirect: opts.max_indirect,
        };
        for i in 0..opts.num_queues {
            let q = VirtQueue::new(i as u16, self.mem.clone(), cfg)?;
            self.start_queue(&q, 0, enable)?;
            self.queues.push(q);
        }
        Ok(())
    }

    /// A backend restarted on the same socket: connects again, checks it
    /// still offers what was negotiated, and replays the setup as a VMM
    /// does after a backend crash: features, memory table, the in-flight
    /// region (SET_INFLIGHT_FD, when negotiated), and each ring as it is
    /// (nothing reset) with SET_VRING_BASE = its used index in memory, so
    /// requests taken and not completed are the backend's to resubmit.
    pub fn reconnect(&mut self, opts: &DeviceOptions) -> Result<()> {
        let stream = connect_socket(&self.socket, opts.connect_timeout)?;
        let mut fresh = Self::negotiate(stream, &self.socket, opts)?;
        let regressed = |what| DeviceError::Regressed {
            socket: self.socket.clone(),
            what,
        };
        if fresh.features & self.features != self.features {
            return Err(regressed("a feature acked before"));
        }
        if !fresh.protocol.contains(self.protocol) {
            return Err(regressed("a protocol feature acked before"));
        }
        std::mem::swap(&mut self.frontend, &mut fresh.frontend);
        let features = self.features;
        self.acked("SET_FEATURES", |f| f.set_features(features))?;
        let regions = self.mem.regions();
        self.acked("SET_MEM_TABLE", |f| f.set_mem_table(&regions))?;
        if let Some((info, file)) = self.inflight.take() {
            let r = self.acked("SET_INFLIGHT_FD", |f| {
                f.set_inflight_fd(&info, file.as_raw_fd())
            });
            self.inflight = Some((info, file));
            r?;
        }
        let queues = std::mem::take(&mut self.queues);
        let mut result = Ok(());
        for q in &queues {
            let base = match q.used_idx() {
                Ok(b) => b,
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            };
            if let Err(e) = self.start_queue(q, base, true) {
                result = Err(e);
                break;
            }
        }
        self.queues = queues;
        result
    }

    /// The in-flight region's file, when INFLIGHT_SHMFD was negotiated.
    pub fn inflight_region(&self) -> Option<&File> {
        self.inflight.as_ref().map(|(_, f)| f)
    }

    fn start_queue(&mut self, q: &VirtQueue, base: u16, enable: bool) -> Result<()> {
        let i = usize::from(q.index());
        let size = q.size();
        let config = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: self.mem.host_addr(q.desc_addr())?,
            used_ring_addr: self.mem.host_addr(q.used_addr())?,
            avail_ring_addr: self.mem.host_addr(q.avail_addr())?,
            log_addr: None,
        };
        self.acked("SET_VRING_NUM", |f| f.set_vring_num(i, size))?;
        self.acked("SET_VRING_BASE", |f| f.set_vring_base(i, base))?;
        self.acked("SET_VRING_ADDR", |f| f.set_vring_addr(i, &config))?;
        self.acked("SET_VRING_CALL", |f| f.set_vring_call(i, q.call_fd()))?;
        self.acked("SET_VRING_KICK", |f| f.set_vring_kick(i, q.kick_fd()))?;
        if enable && self.features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            self.acked("SET_VRING_ENABLE", |f| f.set_vring_enable(i, true))?;
        }
        Ok(())
    }

    /// Stops every queue with GET_VRING_BASE; returns each queue's next avail index.
    pub fn stop_queues(&mut self) -> Result<Vec<u32>> {
        let n = self.queues.len();
        let mut bases = Vec::with_capacity(n);
        for i in 0..n {
            if self.features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                self.acked("SET_VRING_ENABLE", |f| f.set_vring_enable(i, false))?;
            }
            let base = self
                .frontend
                .get_vring_base(i)
                .map_err(self.perr("GET_VRING_BASE"))?;
            bases.push(base);
        }
        Ok(bases)
    }

    /// Reads `len` bytes of the device's config space at `offset` (GET_CONFIG).
    pub fn get_config(&mut self, offset: u32, len: u32) -> Result<Vec<u8>> {
        let buf = vec![0u8; len as usize];
        let (_, data) = self
            .frontend
            .get_config(offset, len, VhostUserConfigFlags::WRITABLE, &buf)
            .map_err(self.perr("GET_CONFIG"))?;
        Ok(data)
    }

    /// Writes the device's config space at `offset` (SET_CONFIG).
    pub fn set_config(&mut self, offset: u32, data: &[u8]) -> Result<()> {
        self.acked("SET_CONFIG", |f| {
            f.set_config(offset, VhostUserConfigFlags::WRITABLE, data)
        })
    }

    /// The socket this device is connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
    /// The vhost crate's frontend, for tests that send requests by hand.
    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }
    /// Shared guest memory.
    pub fn mem(&self) -> &Arc<GuestMem> {
        &self.mem
    }
    /// Queue `i`.
    pub fn queue(&mut self, i: usize) -> &mut VirtQueue {
        &mut self.queues[i]
    }
    /// Every queue, for spreading them over threads.
    pub fn queues_mut(&mut self) -> &mut [VirtQueue] {
        &mut self.queues
    }
    /// Virtio features the backend offered.
    pub fn offered_features(&self) -> u64 {
        self.offered
    }
    /// Virtio features acked (offered ∩ wanted).
    pub fn features(&self) -> u64 {
        self.features
    }
    /// Whether feature bit `bit` was acked.
    pub fn has_feature(&self, bit: u32) -> bool {
        self.features & (1u64 << bit) != 0
    }
    /// Protocol features acked.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }
    /// Queue count reported by GET_QUEUE_NUM, when MQ was negotiated.
    pub fn max_queues(&self) -> Option<u64> {
        self.max_queues
    }
}
