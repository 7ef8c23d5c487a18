//! [`VhostUserDevice`]: a [`VirtioDevice`] whose queues a vhost-user backend
//! serves.

use std::fs::File;
use std::os::unix::io::RawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use log::{debug, info, warn};
use lograte::RateLimited;
use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost::VringConfigData;

use super::conn::TimedFrontend;
use super::{
    DeviceKind, MemoryTable, QueueEventProvider, QueueEvents, VhostUserConn, VhostUserError,
    VHOST_USER_F_PROTOCOL_FEATURES,
};
use crate::virtio_pci::{ActivateError, QueueConfig, VirtioDevice};

/// Protocol features the frontend uses when the backend offers them.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::RESET_DEVICE
        | VhostUserProtocolFeatures::INFLIGHT_SHMFD
}

/// Where a device is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// Connected and negotiated; the driver has not set DRIVER_OK.
    Ready,
    /// The rings are running.
    Active,
    /// The backend died or broke the protocol; the device needs a reset.
    Failed,
    /// The backend's socket closed and the device waits for a new
    /// connection ([`Reconnector`]); the driver sees nothing, its kicks
    /// wait in the kick eventfds.
    Reconnecting,
}

impl DeviceState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Ready,
            1 => Self::Active,
            3 => Self::Reconnecting,
            _ => Self::Failed,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Ready => 0,
            Self::Active => 1,
            Self::Failed => 2,
            Self::Reconnecting => 3,
        }
    }
}

/// Where a device's requests to its backend run when they must not run on
/// the thread of the guest's access (a vCPU): the VMM's control thread.
/// An activation sends every vring message and waits for each reply, so a
/// hung backend would hold that thread for up to [`REPLY_TIMEOUT`](super::REPLY_TIMEOUT) a
/// message.
pub trait Deferrer: Send + Sync {
    /// Runs `work` later, after the work deferred before it.
    fn defer(&self, work: Box<dyn FnOnce() + Send>);
}

/// Queue count, queue size and configuration defaults of a device.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// The device type.
    pub kind: DeviceKind,
    /// Number of queues.
    pub queues: usize,
    /// Largest queue size (a power of two).
    pub queue_size: u16,
    /// The device configuration shown when the backend does not serve
    /// GET_CONFIG (without CONFIG); its length is what GET_CONFIG asks for
    /// (`kind.config_len()` by default; none: no GET_CONFIG).
    pub config: Vec<u8>,
    /// A lost connection makes the device [`DeviceState::Reconnecting`]
    /// (for a [`Reconnector`] to renew) instead of
    /// [`DeviceState::Failed`].
    pub reconnect: bool,
}

impl DeviceOptions {
    /// The defaults of `kind`.
    pub fn new(kind: DeviceKind) -> Self {
        Self {
            kind,
            queues: kind.default_queues(),
            queue_size: kind.default_queue_size(),
            config: vec![0; kind.config_len()],
            reconnect: false,
        }
    }

    /// The queues the backend serves: all but the kind's
    /// [`vmm_queues`](DeviceKind::vmm_queues) (virtio-vsock's event queue).
    pub fn backend_queues(&self) -> usize {
        self.queues.saturating_sub(self.kind.vmm_queues())
    }
}

/// A queue handed to the backend.
struct StartedQueue {
    index: u16,
    events: QueueEvents,
}

/// What the handshake settled.
#[derive(Clone, Copy, Debug)]
struct Negotiated {
    /// GET_FEATURES, bit 30 included.
    backend_features: u64,
    /// What SET_PROTOCOL_FEATURES acked.
    protocol: VhostUserProtocolFeatures,
}

/// What talking to the backend needs; held for a whole request and its
/// reply.
struct Inner {
    conn: Box<dyn VhostUserConn>,
    negotiated: Negotiated,
    events: Box<dyn QueueEventProvider>,
    started: Vec<StartedQueue>,
    /// SET_FEATURES was sent since the last reset.
    features_set: bool,
    /// What the driver started (DRIVER_OK) since the last reset: what a
    /// reconnect replays.
    activation: Option<Activation>,
    /// The in-flight region of this activation (GET_INFLIGHT_FD, when the
    /// backend offers INFLIGHT_SHMFD): handed to every backend that
    /// serves it (SET_INFLIGHT_FD), so one restarted after a crash
    /// resubmits what its predecessor left in flight. A driver reset drops it.
    inflight: Option<(VhostUserInflight, File)>,
}

/// The driver's acked features and its queues, as given at DRIVER_OK.
#[derive(Clone, Debug)]
struct Activation {
    acked: u64,
    queues: Vec<QueueConfig>,
}

/// The device, shared with deferred activations.
struct Shared {
    path: PathBuf,
    options: DeviceOptions,
    memory: MemoryTable,
    inner: Mutex<Inner>,
    /// A [`DeviceState`]; read without waiting for a request in flight.
    state: AtomicU8,
    /// The backend's features (GET_FEATURES), for the same reason.
    backend_features: AtomicU64,
    /// The device configuration a driver reads: the backend's (GET_CONFIG)
    /// as of the last connection, with the driver's writes applied. No
    /// read waits for the backend (as QEMU and Cloud Hypervisor keep a
    /// copy). Locked after `inner`, never before.
    config: Mutex<Vec<u8>>,
    /// A deferred activation failed: the device needs a reset.
    activation_failed: AtomicBool,
    /// Bumped by every reset, so an activation deferred before a reset
    /// does not start after it.
    generation: AtomicU64,
    /// Resets handed to the deferrer and not finished yet.
    resets_pending: AtomicU64,
    /// Connections renewed by a [`Reconnector`].
    reconnects: AtomicU64,
    config_errors: RateLimited,
}

/// The generic vhost-user frontend: one virtio device whose queues and
/// configuration a backend behind a Unix socket serves.
pub struct VhostUserDevice {
    shared: Arc<Shared>,
    deferrer: Option<Arc<dyn Deferrer>>,
}

impl std::fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field("path", &self.shared.path)
            .field("kind", &self.shared.options.kind)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `m`'s guard, or None while another thread holds it (a request in
/// flight).
fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl VhostUserDevice {
    /// Connects to the backend at `path` and negotiates. `memory` is sent
    /// at each activation; `events` gives each queue's eventfds.
    pub fn connect(
        path: impl AsRef<Path>,
        options: DeviceOptions,
        memory: MemoryTable,
        events: Box<dyn QueueEventProvider>,
    ) -> Result<Self, VhostUserError> {
        let path = path.as_ref().to_path_buf();
        let conn = connect_socket(&path, options.backend_queues())?;
        Self::with_conn(conn, path, options, memory, events)
    }

    /// Negotiates over an established connection; `path` names it in logs.
    pub fn with_conn(
        mut conn: Box<dyn VhostUserConn>,
        path: PathBuf,
        options: DeviceOptions,
        memory: MemoryTable,
        events: Box<dyn QueueEventProvider>,
    ) -> Result<Self, VhostUserError> {
        let negotiated = handshake(conn.as_mut(), &options)?;
        let mut config = options.config.clone();
        if let Some(c) = fetch_config(conn.as_mut(), negotiated, &options, &path)? {
            config = c;
        }
        info!(
            "vhost-user {} {}: features {:#x}, protocol features {:#x}",
            options.kind.name(),
            path.display(),
            negotiated.backend_features,
            negotiated.protocol.bits()
        );
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                options,
                memory,
                inner: Mutex::new(Inner {
                    conn,
                    negotiated,
                    events,
                    started: Vec::new(),
                    features_set: false,
                    activation: None,
                    inflight: None,
                }),
                state: AtomicU8::new(DeviceState::Ready.to_u8()),
                backend_features: AtomicU64::new(negotiated.backend_features),
                config: Mutex::new(config),
                activation_failed: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                resets_pending: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                config_errors: RateLimited::default(),
            }),
            deferrer: None,
        })
    }

    /// From now on, what the driver asks of the backend runs through
    /// `deferrer` (the VMM's control thread), in order, instead of on the
    /// thread of the driver's access (a vCPU): the activation at DRIVER_OK
    /// (the status reads DRIVER_OK at once; every ring is kicked once when
    /// it is done), a reset (the status reads as before until it is done,
    /// see [`reset_pending`](VirtioDevice::reset_pending)), SET_CONFIG. The
    /// configuration, features and state stay readable meanwhile, and the
    /// vCPU runs on. An activation that fails makes
    /// [`needs_reset`](VirtioDevice::needs_reset) true; the deferrer then
    /// tells the transport (`check_device`).
    pub fn defer_requests(&mut self, deferrer: Arc<dyn Deferrer>) {
        self.deferrer = Some(deferrer);
    }

    /// The backend's socket path.
    pub fn socket_path(&self) -> &Path {
        &self.shared.path
    }

    /// The device kind.
    pub fn kind(&self) -> DeviceKind {
        self.shared.options.kind
    }

    /// Where the device is (for `vm.info`); never waits for a request in
    /// flight.
    pub fn state(&self) -> DeviceState {
        self.shared.state()
    }

    /// The protocol features both sides use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        lock(&self.shared.inner).negotiated.protocol
    }

    /// The socket, for the VMM to watch: it becomes readable only when the
    /// backend hangs up (or misbehaves); then call
    /// [`check_connection`](Self::check_connection).
    pub fn connection_fd(&self) -> Option<RawFd> {
        lock(&self.shared.inner).conn.raw_fd()
    }

    /// Marks the device failed (or, with [`DeviceOptions::reconnect`],
    /// reconnecting) if the backend hung up while idle, and returns the
    /// state. After `Failed`, the transport's `check_device` sets
    /// DEVICE_NEEDS_RESET. With a request in flight this does not wait:
    /// the request notices a hang-up itself.
    pub fn check_connection(&mut self) -> DeviceState {
        let sh = &self.shared;
        let Some(inner) = try_lock(&sh.inner) else {
            return sh.state();
        };
        if sh.connected() && inner.conn.peer_gone() {
            sh.lost("the backend hung up");
        }
        sh.state()
    }

    /// The handle that renews the device's connection after
    /// [`DeviceState::Reconnecting`].
    pub fn reconnector(&self) -> Reconnector {
        Reconnector {
            shared: self.shared.clone(),
        }
    }

    /// How many times the connection was renewed.
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Acquire)
    }
}

/// Renews a [`DeviceState::Reconnecting`] device's connection, from a VMM
/// thread (it waits for the backend's replies, never for the guest):
/// [`try_connect`](Self::try_connect) to the same socket path, or
/// [`replay`](Self::replay) over a connection made elsewhere.
#[derive(Clone)]
pub struct Reconnector {
    shared: Arc<Shared>,
}

impl Reconnector {
    /// The device's state.
    pub fn state(&self) -> DeviceState {
        self.shared.state()
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.shared.path
    }

    /// The current connection's socket (waits for a request in flight).
    pub fn connection_fd(&self) -> Option<RawFd> {
        lock(&self.shared.inner).conn.raw_fd()
    }

    /// Connects to the socket path again and replays the setup. `Err` with
    /// [`VhostUserError::Connect`] when nobody listens yet; see
    /// [`replay`](Self::replay) for the rest.
    pub fn try_connect(&self) -> Result<(), VhostUserError> {
        let conn = connect_socket(&self.shared.path, self.shared.options.backend_queues())?;
        self.replay(conn)
    }

    /// Replays the whole setup over `conn`, if the device still waits for
    /// one: SET_OWNER, features, protocol features, queue count; then, if
    /// the driver had started the device, SET_FEATURES (refused when the
    /// backend now offers less than the driver acked), SET_MEM_TABLE, the
    /// in-flight region (SET_INFLIGHT_FD, with INFLIGHT_SHMFD) and each ring
    /// with its base at the used index in guest memory (requests the old
    /// backend had taken but not completed are resubmitted from the region,
    /// or read again from the avail ring without one), and a kick on each
    /// ring so that no kick made meanwhile is lost.
    ///
    /// On success the device is Active (or Ready); a connection lost again
    /// leaves it Reconnecting (retry); any other error marks it Failed
    /// (logged), for the transport to set DEVICE_NEEDS_RESET.
    pub fn replay(&self, mut conn: Box<dyn VhostUserConn>) -> Result<(), VhostUserError> {
        let sh = &self.shared;
        let mut inner = lock(&sh.inner);
        if sh.state() != DeviceState::Reconnecting {
            return Ok(());
        }
        let result = sh.replay(&mut inner, &mut conn);
        match &result {
            Ok(()) => {
                sh.reconnects.fetch_add(1, Ordering::AcqRel);
                let started = inner.started.len();
                info!(
                    "vhost-user {} {}: reconnected; {started} ring(s) resumed",
                    sh.options.kind.name(),
                    sh.path.display()
                );
            }
            Err(e) if e.is_disconnect() => {
                inner.started.clear();
                debug!(
                    "vhost-user {} {}: reconnect: {e}: {}",
                    sh.options.kind.name(),
                    sh.path.display(),
                    source_of(e)
                );
            }
            Err(e) => {
                inner.started.clear();
                warn!(
                    "vhost-user {} {}: reconnect refused: {e}{}; the device needs a reset",
                    sh.options.kind.name(),
                    sh.path.display(),
                    std::error::Error::source(e)
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default()
                );
                sh.set_state(DeviceState::Failed);
            }
        }
        result
    }

    /// Ends the wait: a Reconnecting device becomes Failed (the VMM's
    /// time limit ran out). Returns whether it did.
    pub fn give_up(&self, why: &str) -> bool {
        let sh = &self.shared;
        let _inner = lock(&sh.inner);
        if sh.state() != DeviceState::Reconnecting {
            return false;
        }
        warn!(
            "vhost-user {} {}: {why}; the device needs a reset",
            sh.options.kind.name(),
            sh.path.display()
        );
        sh.set_state(DeviceState::Failed);
        true
    }
}

/// A frontend connection to the backend at `path`, with the reply
/// timeout.
fn connect_socket(path: &Path, queues: usize) -> Result<Box<dyn VhostUserConn>, VhostUserError> {
    let stream = UnixStream::connect(path).map_err(|source| VhostUserError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Box::new(TimedFrontend::new(
        stream,
        path.to_path_buf(),
        queues as u64,
    )))
}

impl Shared {
    fn state(&self) -> DeviceState {
        DeviceState::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, state: DeviceState) {
        self.state.store(state.to_u8(), Ordering::Release);
    }

    /// Whether the connection is up (Ready or Active).
    fn connected(&self) -> bool {
        matches!(self.state(), DeviceState::Ready | DeviceState::Active)
    }

    /// The connection is gone (`why`, logged once): Reconnecting with
    /// [`DeviceOptions::reconnect`], else Failed.
    fn lost(&self, why: &str) {
        if !self.connected() {
            return;
        }
        let (kind, path) = (self.options.kind.name(), self.path.display());
        if self.options.reconnect {
            warn!("vhost-user {kind} {path}: {why}; reconnecting");
            self.set_state(DeviceState::Reconnecting);
        } else {
            warn!("vhost-user {kind} {path}: {why}; the device needs a reset");
            self.set_state(DeviceState::Failed);
        }
    }

    /// [`Reconnector::replay`]'s work, under the lock: `conn` replaces
    /// the dead connection once the handshake succeeded.
    fn replay(
        &self,
        inner: &mut Inner,
        conn: &mut Box<dyn VhostUserConn>,
    ) -> Result<(), VhostUserError> {
        let negotiated = handshake(conn.as_mut(), &self.options)?;
        if let Some(a) = &inner.activation {
            let old = inner.negotiated.backend_features;
            let needed = (a.acked & old) | (old & VHOST_USER_F_PROTOCOL_FEATURES);
            let missing = needed & !negotiated.backend_features;
            if missing != 0 {
                return Err(VhostUserError::FeaturesLost {
                    acked: needed,
                    offered: negotiated.backend_features,
                });
            }
        }
        if let Some(c) = fetch_config(conn.as_mut(), negotiated, &self.options, &self.path)? {
            *lock(&self.config) = c;
        }
        std::mem::swap(&mut inner.conn, conn);
        inner.negotiated = negotiated;
        inner.started.clear();
        inner.features_set = false;
        self.backend_features
            .store(negotiated.backend_features, Ordering::Release);
        let Some(a) = inner.activation.clone() else {
            self.set_state(DeviceState::Ready);
            return Ok(());
        };
        let bases = a
            .queues
            .iter()
            .map(|q| {
                self.memory
                    .read_u16(q.used_ring + 2)
                    .ok_or(VhostUserError::RingAddress {
                        queue: q.index,
                        ring: "used ring",
                        addr: q.used_ring,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (q, base) in a.queues.iter().zip(&bases) {
            let avail = self.memory.read_u16(q.avail_ring + 2).unwrap_or(*base);
            info!(
                "vhost-user {} {}: queue {} resumes at used index {base}, {} request(s) \
                 available to the backend again",
                self.options.kind.name(),
                self.path.display(),
                q.index,
                avail.wrapping_sub(*base)
            );
        }
        self.start_rings(inner, a.acked, &a.queues, &bases)?;
        kick_all(inner);
        self.set_state(DeviceState::Active);
        Ok(())
    }

    fn start(
        &self,
        inner: &mut Inner,
        acked: u64,
        queues: &[QueueConfig],
    ) -> Result<(), VhostUserError> {
        match self.state() {
            DeviceState::Failed => return Err(VhostUserError::Failed),
            // The replay on the next connection starts the rings.
            DeviceState::Reconnecting => {
                inner.activation = Some(Activation {
                    acked,
                    queues: queues.to_vec(),
                });
                return Ok(());
            }
            DeviceState::Ready | DeviceState::Active => {}
        }
        inner.activation = Some(Activation {
            acked,
            queues: queues.to_vec(),
        });
        inner.inflight = None;
        self.start_rings(inner, acked, queues, &vec![0; queues.len()])?;
        kick_all(inner);
        self.set_state(DeviceState::Active);
        Ok(())
    }

    /// SET_FEATURES, SET_MEM_TABLE and each queue's setup, ring `i` from
    /// `bases[i]`.
    fn start_rings(
        &self,
        inner: &mut Inner,
        acked: u64,
        queues: &[QueueConfig],
        bases: &[u16],
    ) -> Result<(), VhostUserError> {
        let n = inner.negotiated;
        let proto = n.backend_features & VHOST_USER_F_PROTOCOL_FEATURES;
        let features = (acked & n.backend_features & !VHOST_USER_F_PROTOCOL_FEATURES) | proto;
        // The backend acks from this SET_FEATURES on (see the module docs).
        let acks = proto != 0 && n.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK);
        inner.conn.set_need_reply(acks);
        inner.features_set = true;
        inner
            .conn
            .set_features(features)
            .map_err(VhostUserError::SetFeatures)?;
        inner
            .conn
            .set_mem_table(&self.memory.to_vhost())
            .map_err(VhostUserError::SetMemTable)?;
        if n.protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
        {
            self.set_inflight(inner)?;
        }
        // The queues the VMM keeps (vsock's event queue) are not the
        // backend's: the driver's buffers wait there.
        let backend_queues = self.options.backend_queues();
        for (q, &base) in queues
            .iter()
            .zip(bases)
            .filter(|(q, _)| usize::from(q.index) < backend_queues)
        {
            let ring = |ring, addr, len| {
                self.memory
                    .translate(addr, len)
                    .ok_or(VhostUserError::RingAddress {
                        queue: q.index,
                        ring,
                        addr,
                    })
            };
            let size = u64::from(q.size);
            let config = VringConfigData {
                queue_max_size: self.options.queue_size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: ring("descriptor table", q.desc_table, 16 * size)?,
                avail_ring_addr: ring("available ring", q.avail_ring, 6 + 2 * size)?,
                used_ring_addr: ring("used ring", q.used_ring, 6 + 8 * size)?,
                log_addr: None,
            };
            let events = inner
                .events
                .queue_events(q.index, q.msix_vector)
                .map_err(|source| VhostUserError::QueueEvents {
                    queue: q.index,
                    source,
                })?;
            let i = usize::from(q.index);
            let conn = inner.conn.as_mut();
            conn.set_vring_num(i, q.size)
                .map_err(VhostUserError::SetVringNum)?;
            conn.set_vring_addr(i, &config)
                .map_err(VhostUserError::SetVringAddr)?;
            conn.set_vring_base(i, base)
                .map_err(VhostUserError::SetVringBase)?;
            // From here the backend may hold the ring: stop it on reset.
            inner.started.push(StartedQueue {
                index: q.index,
                events,
            });
            let events = &inner.started[inner.started.len() - 1].events;
            let conn = inner.conn.as_mut();
            conn.set_vring_call(i, &events.call)
                .map_err(VhostUserError::SetVringCall)?;
            conn.set_vring_kick(i, &events.kick)
                .map_err(VhostUserError::SetVringKick)?;
            if proto != 0 {
                conn.set_vring_enable(i, true)
                    .map_err(VhostUserError::SetVringEnable)?;
            }
        }
        Ok(())
    }

    /// Hands the backend the activation's in-flight region, asking it for
    /// one first (GET_INFLIGHT_FD) if the activation has none yet. The
    /// ring bases stay at the used index: a backend that gets the region
    /// back resubmits what was in flight and takes new requests after it.
    fn set_inflight(&self, inner: &mut Inner) -> Result<(), VhostUserError> {
        if inner.inflight.is_none() {
            let queues = u16::try_from(self.options.backend_queues()).unwrap_or(u16::MAX);
            let region = inner
                .conn
                .get_inflight_fd(queues, self.options.queue_size)
                .map_err(VhostUserError::GetInflightFd)?;
            inner.inflight = Some(region);
        }
        if let Some((info, file)) = &inner.inflight {
            inner
                .conn
                .set_inflight_fd(info, file)
                .map_err(VhostUserError::SetInflightFd)?;
        }
        Ok(())
    }

    /// Starts the rings; an error is logged (and marks the device failed
    /// when the connection is gone).
    fn activate(&self, acked: u64, queues: &[QueueConfig]) -> Result<(), VhostUserError> {
        let mut inner = lock(&self.inner);
        self.start(&mut inner, acked, queues).inspect_err(|e| {
            self.note_error(e);
        })
    }

    /// An activation deferred at `generation`: skipped if the driver
    /// reset the device meanwhile; a failure makes the device need a reset.
    fn activate_deferred(&self, generation: u64, acked: u64, queues: &[QueueConfig]) {
        let mut inner = lock(&self.inner);
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if let Err(e) = self.start(&mut inner, acked, queues) {
            self.note_error(&e);
            if self.state() == DeviceState::Reconnecting {
                // The replay on the next connection starts the rings.
                inner.started.clear();
                return;
            }
            if self.generation.load(Ordering::Acquire) != generation {
                // The driver reset the device meanwhile; the reset behind
                // this job finds it stopped.
                return;
            }
            warn!(
                "vhost-user {} {}: activation failed; the device needs a reset",
                self.options.kind.name(),
                self.path.display()
            );
            self.activation_failed.store(true, Ordering::Release);
        }
    }

    /// The driver's reset, done: every started ring stopped
    /// (GET_VRING_BASE), then RESET_DEVICE (or RESET_OWNER and a new
    /// handshake). Waits for a request in flight.
    fn reset(&self) {
        let mut inner = lock(&self.inner);
        self.activation_failed.store(false, Ordering::Release);
        inner.activation = None;
        inner.inflight = None;
        if !self.connected() {
            // Nothing to stop: the backend is gone (a reconnect finds the
            // device reset).
            inner.started.clear();
            inner.features_set = false;
            return;
        }
        match Self::stop(&mut inner, &self.options) {
            Ok(()) => self.set_state(DeviceState::Ready),
            Err(e) => {
                self.note_error(&e);
                inner.started.clear();
                if self.connected() {
                    self.set_state(DeviceState::Ready);
                }
            }
        }
    }

    /// SET_CONFIG of the driver's write (`data` at `offset`, already in the
    /// copy), when CONFIG was negotiated and the backend is there.
    fn send_config(&self, offset: u32, data: &[u8]) {
        let mut inner = lock(&self.inner);
        let with_config = inner
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIG);
        if with_config && self.connected() {
            if let Err(e) = inner.conn.set_config(offset, data) {
                self.note_error(&VhostUserError::SetConfig(e));
            }
        }
    }

    /// Passes a kick the VMM caught itself (no ioeventfd) to `queue`'s
    /// kick eventfd.
    fn kick(&self, inner: &Inner, queue: u16) {
        if let Some(q) = inner.started.iter().find(|q| q.index == queue) {
            if let Err(e) = q.events.kick.write(1) {
                if let Some(n) = self.config_errors.hit() {
                    debug!(
                        "vhost-user {}: kick of queue {queue}: {e} ({n} times)",
                        self.path.display()
                    );
                }
            }
        }
    }

    fn stop(inner: &mut Inner, options: &DeviceOptions) -> Result<(), VhostUserError> {
        while let Some(q) = inner.started.pop() {
            inner
                .conn
                .get_vring_base(usize::from(q.index))
                .map_err(VhostUserError::GetVringBase)?;
        }
        if !inner.features_set {
            return Ok(());
        }
        inner.features_set = false;
        if inner
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            inner
                .conn
                .reset_device()
                .map_err(VhostUserError::ResetDevice)?;
            inner.conn.set_need_reply(false);
        } else {
            inner
                .conn
                .reset_owner()
                .map_err(VhostUserError::ResetOwner)?;
            inner.conn.set_need_reply(false);
            inner.negotiated = handshake(inner.conn.as_mut(), options)?;
        }
        Ok(())
    }

    /// Logs `e` and, when the connection is gone, marks the device failed
    /// (logged once).
    fn note_error(&self, e: &VhostUserError) {
        let (kind, path) = (self.options.kind, &self.path);
        if !e.is_disconnect() {
            warn!(
                "vhost-user {} {}: {e}: {}",
                kind.name(),
                path.display(),
                source_of(e)
            );
            return;
        }
        self.lost(&format!("{e}: {}; the backend is gone", source_of(e)));
    }
}

/// One kick on every started ring. The driver may have kicked while its
/// ring was being set up (the activation runs beside the vCPU), and a
/// backend drops a kick on a ring it has not enabled; one more kick costs
/// the backend a look at the ring. The same after a reconnect, for kicks
/// made while no backend listened.
fn kick_all(inner: &Inner) {
    for q in &inner.started {
        let _ = q.events.kick.write(1);
    }
}

/// SET_OWNER, features, protocol features, queue count: what a new (or,
/// later, a renewed) connection needs before the driver starts the device.
fn handshake(
    conn: &mut dyn VhostUserConn,
    options: &DeviceOptions,
) -> Result<Negotiated, VhostUserError> {
    conn.set_need_reply(false);
    conn.set_owner().map_err(VhostUserError::SetOwner)?;
    let backend_features = conn.get_features().map_err(VhostUserError::GetFeatures)?;
    let mut protocol = VhostUserProtocolFeatures::empty();
    if backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
        let offered = conn
            .get_protocol_features()
            .map_err(VhostUserError::GetProtocolFeatures)?;
        protocol = offered & wanted_protocol_features();
        conn.set_protocol_features(protocol)
            .map_err(VhostUserError::SetProtocolFeatures)?;
    }
    if protocol.contains(VhostUserProtocolFeatures::MQ) {
        let offered = conn.get_queue_num().map_err(VhostUserError::GetQueueNum)?;
        if offered < options.backend_queues() as u64 {
            return Err(VhostUserError::QueueCount {
                offered,
                wanted: options.backend_queues(),
            });
        }
    }
    Ok(Negotiated {
        backend_features,
        protocol,
    })
}

/// The backend's device configuration (GET_CONFIG) when CONFIG was
/// negotiated. `Ok(None)` without CONFIG, or when the backend refused (logged:
/// the copy the device has stays); `Err` only when the connection is gone.
fn fetch_config(
    conn: &mut dyn VhostUserConn,
    negotiated: Negotiated,
    options: &DeviceOptions,
    path: &Path,
) -> Result<Option<Vec<u8>>, VhostUserError> {
    if !negotiated
        .protocol
        .contains(VhostUserProtocolFeatures::CONFIG)
        || options.config.is_empty()
    {
        return Ok(None);
    }
    match conn.get_config(0, options.config.len() as u32) {
        Ok(c) => Ok(Some(c)),
        Err(e) => {
            let e = VhostUserError::GetConfig(e);
            if e.is_disconnect() {
                return Err(e);
            }
            warn!(
                "vhost-user {} {}: {e}: {}; keeping the configuration it had",
                options.kind.name(),
                path.display(),
                source_of(&e)
            );
            Ok(None)
        }
    }
}

/// The source's message, for one log line (our messages never repeat it).
fn source_of(e: &VhostUserError) -> String {
    std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.shared.options.kind.device_type()
    }

    fn num_queues(&self) -> usize {
        self.shared.options.queues
    }

    fn max_queue_size(&self) -> u16 {
        self.shared.options.queue_size
    }

    fn features(&self) -> u64 {
        self.shared.backend_features.load(Ordering::Acquire) & !VHOST_USER_F_PROTOCOL_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let sh = &self.shared;
        // No request goes out, but a backend that hung up is noticed (a
        // peek, never a wait; with a request in flight, it notices).
        if let Some(inner) = try_lock(&sh.inner) {
            if sh.connected() && inner.conn.peer_gone() {
                sh.lost("the backend hung up");
            }
        }
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = lock(&sh.config).get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let sh = &self.shared;
        let mut config = lock(&sh.config);
        let in_range = usize::try_from(offset)
            .ok()
            .and_then(|s| Some((s, s.checked_add(data.len())?)))
            .filter(|(_, end)| *end <= config.len());
        let Some((start, end)) = in_range else {
            if let Some(n) = sh.config_errors.hit() {
                debug!(
                    "vhost-user {}: config write of {} bytes at {offset:#x} out of range ({n} times)",
                    sh.path.display(),
                    data.len()
                );
            }
            return;
        };
        config[start..end].copy_from_slice(data);
        drop(config);
        match &self.deferrer {
            Some(deferrer) => {
                let (shared, data) = (sh.clone(), data.to_vec());
                deferrer.defer(Box::new(move || shared.send_config(start as u32, &data)));
            }
            None => sh.send_config(start as u32, data),
        }
    }

    fn activate(&mut self, acked: u64, queues: Vec<QueueConfig>) -> Result<(), ActivateError> {
        match &self.deferrer {
            Some(deferrer) => {
                let shared = self.shared.clone();
                let generation = shared.generation.load(Ordering::Acquire);
                deferrer.defer(Box::new(move || {
                    shared.activate_deferred(generation, acked, &queues);
                }));
                Ok(())
            }
            None => self
                .shared
                .activate(acked, &queues)
                .map_err(|e| ActivateError(Box::new(e))),
        }
    }

    fn reset(&mut self) {
        let sh = &self.shared;
        // An activation deferred and not started yet sees the new
        // generation and does nothing; one in flight ends first (the
        // deferrer runs its work in order).
        sh.generation.fetch_add(1, Ordering::AcqRel);
        sh.activation_failed.store(false, Ordering::Release);
        match &self.deferrer {
            Some(deferrer) => {
                sh.resets_pending.fetch_add(1, Ordering::AcqRel);
                let shared = sh.clone();
                deferrer.defer(Box::new(move || {
                    shared.reset();
                    shared.resets_pending.fetch_sub(1, Ordering::AcqRel);
                }));
            }
            None => sh.reset(),
        }
    }

    fn reset_pending(&self) -> bool {
        self.shared.resets_pending.load(Ordering::Acquire) != 0
    }

    fn queue_notify(&mut self, queue: u16) {
        // No ioeventfd caught the write: pass the kick on ourselves. With
        // a request in flight, after it (an activation in flight kicks
        // every ring when it ends anyway).
        let sh = &self.shared;
        if let Some(inner) = try_lock(&sh.inner) {
            sh.kick(&inner, queue);
            return;
        }
        match &self.deferrer {
            Some(deferrer) => {
                let shared = sh.clone();
                deferrer.defer(Box::new(move || shared.kick(&lock(&shared.inner), queue)));
            }
            None => sh.kick(&lock(&sh.inner), queue),
        }
    }

    fn needs_reset(&self) -> bool {
        self.shared.state() == DeviceState::Failed
            || self.shared.activation_failed.load(Ordering::Acquire)
    }
}
