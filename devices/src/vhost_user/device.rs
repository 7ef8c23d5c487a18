//! [`VhostUserDevice`]: a [`VirtioDevice`] whose queues a vhost-user backend
//! serves.

use std::os::unix::io::RawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use log::{debug, info, warn};
use vhost::vhost_user::{Frontend, VhostUserProtocolFeatures};
use vhost::VringConfigData;

use super::{
    DeviceKind, MemoryTable, QueueEventProvider, QueueEvents, VhostUserConn, VhostUserError,
    VHOST_USER_F_PROTOCOL_FEATURES,
};
use crate::ratelimit::RateLimited;
use crate::virtio_pci::{ActivateError, QueueConfig, VirtioDevice};

/// How long the frontend waits for a reply before it declares the backend
/// dead (a hung backend must not hang the vCPU doing the access).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// Protocol features the frontend uses when the backend offers them.
fn wanted_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::RESET_DEVICE
}

/// Where a device is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// Connected and negotiated; the driver has not set DRIVER_OK.
    Ready,
    /// The rings are running.
    Active,
    /// The backend died or broke the protocol; the device needs a reset
    /// (and a reconnect, not done yet).
    Failed,
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
    /// GET_CONFIG (without CONFIG), `kind.config_len()` long.
    pub config: Vec<u8>,
}

impl DeviceOptions {
    /// The defaults of `kind`.
    pub fn new(kind: DeviceKind) -> Self {
        Self {
            kind,
            queues: kind.default_queues(),
            queue_size: kind.default_queue_size(),
            config: vec![0; kind.config_len()],
        }
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

struct Inner {
    conn: Box<dyn VhostUserConn>,
    state: DeviceState,
    negotiated: Negotiated,
    config: Vec<u8>,
    started: Vec<StartedQueue>,
    /// SET_FEATURES was sent since the last reset.
    features_set: bool,
}

/// The generic vhost-user frontend: one virtio device whose queues and
/// configuration a backend behind a Unix socket serves.
pub struct VhostUserDevice {
    path: PathBuf,
    options: DeviceOptions,
    memory: MemoryTable,
    events: Box<dyn QueueEventProvider>,
    inner: Mutex<Inner>,
    config_errors: RateLimited,
}

impl std::fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field("path", &self.path)
            .field("kind", &self.options.kind)
            .field("state", &self.state())
            .finish_non_exhaustive()
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
        let connect_err = |source| VhostUserError::Connect {
            path: path.clone(),
            source,
        };
        let stream = UnixStream::connect(&path).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(connect_err)?;
        let conn = Frontend::from_stream(stream, options.queues as u64);
        Self::with_conn(Box::new(conn), path, options, memory, events)
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
        config.resize(options.kind.config_len(), 0);
        if negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            match conn.get_config(0, config.len() as u32) {
                Ok(c) => config = c,
                Err(e) => {
                    let e = VhostUserError::GetConfig(e);
                    if e.is_disconnect() {
                        return Err(e);
                    }
                    warn!(
                        "vhost-user {} {}: {e}: {}; using the default configuration",
                        options.kind.name(),
                        path.display(),
                        source_of(&e)
                    );
                }
            }
        }
        info!(
            "vhost-user {} {}: features {:#x}, protocol features {:#x}",
            options.kind.name(),
            path.display(),
            negotiated.backend_features,
            negotiated.protocol.bits()
        );
        Ok(Self {
            path,
            options,
            memory,
            events,
            inner: Mutex::new(Inner {
                conn,
                state: DeviceState::Ready,
                negotiated,
                config,
                started: Vec::new(),
                features_set: false,
            }),
            config_errors: RateLimited::default(),
        })
    }

    /// The backend's socket path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// The device kind.
    pub fn kind(&self) -> DeviceKind {
        self.options.kind
    }

    /// Where the device is (for `vm.info`).
    pub fn state(&self) -> DeviceState {
        self.lock().state
    }

    /// The protocol features both sides use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.lock().negotiated.protocol
    }

    /// The socket, for the VMM to watch: it becomes readable only when the
    /// backend hangs up (or misbehaves); then call
    /// [`check_connection`](Self::check_connection).
    pub fn connection_fd(&self) -> Option<RawFd> {
        self.lock().conn.raw_fd()
    }

    /// Marks the device failed if the backend hung up while idle, and
    /// returns the state. After `Failed`, the transport's `check_device`
    /// sets DEVICE_NEEDS_RESET.
    pub fn check_connection(&mut self) -> DeviceState {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if inner.state != DeviceState::Failed && inner.conn.peer_gone() {
            warn!(
                "vhost-user {} {}: the backend hung up; the device needs a reset",
                self.options.kind.name(),
                self.path.display()
            );
            inner.state = DeviceState::Failed;
        }
        inner.state
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start(&mut self, acked: u64, queues: &[QueueConfig]) -> Result<(), VhostUserError> {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if inner.state == DeviceState::Failed {
            return Err(VhostUserError::Failed);
        }
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
        for q in queues {
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
            let events = self
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
            conn.set_vring_base(i, 0)
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
        inner.state = DeviceState::Active;
        Ok(())
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
    fn note_error(inner: &mut Inner, kind: DeviceKind, path: &Path, e: &VhostUserError) {
        if !e.is_disconnect() {
            warn!(
                "vhost-user {} {}: {e}: {}",
                kind.name(),
                path.display(),
                source_of(e)
            );
            return;
        }
        if inner.state != DeviceState::Failed {
            warn!(
                "vhost-user {} {}: {e}: {}; the backend is gone, the device needs a reset",
                kind.name(),
                path.display(),
                source_of(e)
            );
            inner.state = DeviceState::Failed;
        }
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
        if offered < options.queues as u64 {
            return Err(VhostUserError::QueueCount {
                offered,
                wanted: options.queues,
            });
        }
    }
    Ok(Negotiated {
        backend_features,
        protocol,
    })
}

/// The source's message, for one log line (our messages never repeat it).
fn source_of(e: &VhostUserError) -> String {
    std::error::Error::source(e)
        .map(|s| s.to_string())
        .unwrap_or_default()
}

impl VirtioDevice for VhostUserDevice {
    fn device_type(&self) -> u32 {
        self.options.kind.device_type()
    }

    fn num_queues(&self) -> usize {
        self.options.queues
    }

    fn max_queue_size(&self) -> u16 {
        self.options.queue_size
    }

    fn features(&self) -> u64 {
        self.lock().negotiated.backend_features & !VHOST_USER_F_PROTOCOL_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut inner = self.lock();
        let with_config = inner
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIG);
        if with_config && inner.state != DeviceState::Failed {
            let len = inner.config.len() as u32;
            match inner.conn.get_config(0, len) {
                Ok(c) => inner.config = c,
                Err(e) => {
                    let e = VhostUserError::GetConfig(e);
                    if e.is_disconnect() {
                        Self::note_error(&mut inner, self.options.kind, &self.path, &e);
                    } else if let Some(n) = self.config_errors.hit() {
                        debug!(
                            "vhost-user {}: {e}: {} ({n} times)",
                            self.path.display(),
                            source_of(&e)
                        );
                    }
                }
            }
        }
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = inner.config.get(start..) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        let in_range = usize::try_from(offset)
            .ok()
            .and_then(|s| Some((s, s.checked_add(data.len())?)))
            .filter(|(_, end)| *end <= inner.config.len());
        let Some((start, end)) = in_range else {
            if let Some(n) = self.config_errors.hit() {
                debug!(
                    "vhost-user {}: config write of {} bytes at {offset:#x} out of range ({n} times)",
                    self.path.display(),
                    data.len()
                );
            }
            return;
        };
        inner.config[start..end].copy_from_slice(data);
        let with_config = inner
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIG);
        if with_config && inner.state != DeviceState::Failed {
            if let Err(e) = inner.conn.set_config(start as u32, data) {
                let e = VhostUserError::SetConfig(e);
                Self::note_error(inner, self.options.kind, &self.path, &e);
            }
        }
    }

    fn activate(&mut self, acked: u64, queues: Vec<QueueConfig>) -> Result<(), ActivateError> {
        self.start(acked, &queues).map_err(|e| {
            let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
            Self::note_error(inner, self.options.kind, &self.path, &e);
            ActivateError(Box::new(e))
        })
    }

    fn reset(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        if inner.state == DeviceState::Failed {
            // Nothing to stop: the backend is gone. A reconnect goes here.
            inner.started.clear();
            inner.features_set = false;
            return;
        }
        match Self::stop(inner, &self.options) {
            Ok(()) => inner.state = DeviceState::Ready,
            Err(e) => {
                Self::note_error(inner, self.options.kind, &self.path, &e);
                inner.started.clear();
                if inner.state != DeviceState::Failed {
                    inner.state = DeviceState::Ready;
                }
            }
        }
    }

    fn queue_notify(&mut self, queue: u16) {
        // No ioeventfd caught the write: pass the kick on ourselves.
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
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

    fn needs_reset(&self) -> bool {
        self.lock().state == DeviceState::Failed
    }
}
