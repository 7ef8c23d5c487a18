//! vhost-user devices on the PCI bus (`--disk`, `--fs`, `--net`).
//!
//! [`VhostUserPci::plug`] connects the generic frontend
//! ([`VhostUserDevice`]) to the backend's socket, wraps it in the virtio-pci
//! transport and plugs it into bus 0. Nothing virtio runs here: each queue's
//! kick is an ioeventfd at the queue's notify address (registered through
//! [`PciHost::add_ioevent`], so it follows BAR 0 wherever the guest puts it)
//! and its call is the irqfd of the MSI-X vector the driver chose
//! ([`MsiVectors::irqfd`]); the backend gets both fds at DRIVER_OK
//! ([`QueueEventSource`]).
//!
//! The driver's DRIVER_OK is carried out on the `vu-activate` thread
//! ([`activate`]), not on the vCPU that wrote it.
//!
//! A backend that dies is noticed by the `vu-watch` thread
//! ([`watch`]), which calls [`VhostUserPci::check_backend`]. With
//! `reconnect=` (the default for blk, net and fs) the device goes to
//! Reconnecting, the guest sees nothing, and `vu-watch` retries the socket
//! path with backoff ([`VhostUserPci::try_reconnect`]); the frontend
//! replays the whole setup on the new connection. When the time limit runs
//! out, or with `reconnect=off`, or when the new backend cannot serve what
//! was negotiated, the device is marked failed, DEVICE_NEEDS_RESET is set
//! and a configuration interrupt sent; the VM goes on.

pub mod activate;
#[cfg(test)]
mod test_rig;
pub mod watch;

pub use activate::ActivationThread;
pub use watch::Watcher;

use std::io;
use std::os::unix::io::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use devices::pci::{BusError, MsiSink, PciAddress, PciDevice, MSIX_NO_VECTOR};
use devices::vhost_user::config::{
    fs_config, fs_tag, net_config, net_mac, vsock_cid, vsock_config,
};
use devices::vhost_user::{
    DeviceKind, DeviceOptions, DeviceState, MemoryTable, QueueEventProvider, QueueEvents,
    Reconnector, VhostUserDevice, VhostUserError,
};
use devices::virtio_pci::{
    VirtioDevice, VirtioPciDevice, VirtioPciError, STATUS_DEVICE_NEEDS_RESET, VIRTIO_PCI_BAR,
};
use lograte::RateLimited;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::cli::{Reconnect, VhostUserConfig};
use crate::irq::{IrqError, IrqRouter, MsiVectors};
use crate::pci::{PciError, PciHost};

/// What failed while setting up one device.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{0} queues need more MSI-X vectors than a function has")]
    TooManyQueues(usize),
    #[error("MSI-X vectors")]
    Vectors(#[source] IrqError),
    #[error("creating a kick eventfd")]
    EventFd(#[source] io::Error),
    #[error("describing guest memory")]
    Memory(#[source] VhostUserError),
    #[error("cannot connect")]
    Connect(#[source] io::Error),
    #[error("handshake")]
    Handshake(#[source] VhostUserError),
    #[error("virtio-pci transport")]
    Transport(#[source] VirtioPciError),
    #[error("plugging into the PCI bus")]
    Plug(#[source] BusError),
    #[error("BAR {0} is not assigned")]
    NoBar(u8),
    #[error("queue ioeventfd")]
    IoEvent(#[source] PciError),
    #[error("starting its handshake thread")]
    Thread(#[source] io::Error),
}

/// A device could not be set up; names the device and its socket.
#[derive(Debug, thiserror::Error)]
#[error("vhost-user {} device {}", kind_name(*.kind), .socket.display())]
pub struct DeviceError {
    pub kind: DeviceKind,
    pub socket: PathBuf,
    #[source]
    pub source: SetupError,
}

/// `blk`, `fs`, `net`, `vsock`, `rng`, `console` or `generic`.
pub fn kind_name(kind: DeviceKind) -> &'static str {
    kind.name()
}

/// What `vm.info` reports about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub kind: DeviceKind,
    pub socket: PathBuf,
    /// Where it sits on the PCI bus (`0000:00:01.0` when displayed).
    pub bdf: PciAddress,
    /// Ready (connected, not started), Active (rings running),
    /// Reconnecting (the backend is gone, its socket is being retried) or
    /// Failed (the backend is gone for good).
    pub state: DeviceState,
    /// DEVICE_NEEDS_RESET is set in the device status.
    pub needs_reset: bool,
    /// How many times the connection was renewed.
    pub reconnects: u64,
}

/// The frontend's options for `config`: queue count and size, and the
/// configuration shown when the backend does not serve GET_CONFIG (the fs
/// tag and request queue count; the NIC's MAC, link up, queue pairs; the
/// vsock's cid; `config_size` zeros for a generic device), whose length is
/// what GET_CONFIG asks for.
pub fn device_options(config: &VhostUserConfig) -> DeviceOptions {
    let mut options = DeviceOptions::new(config.kind);
    options.queues = config.device_queues();
    options.queue_size = config.queue_size;
    options.reconnect = config.reconnect != Reconnect::Off;
    match config.kind {
        DeviceKind::Fs => {
            let requests = u32::try_from(config.num_queues).unwrap_or(u32::MAX);
            options.config = fs_config(config.tag.as_deref(), requests);
        }
        DeviceKind::Net => {
            let pairs = u16::try_from(config.num_queues / 2).unwrap_or(u16::MAX);
            options.config = net_config(config.mac, pairs);
        }
        DeviceKind::Vsock => {
            if let Some(v) = &config.vsock {
                options.config = vsock_config(v.cid);
            }
        }
        DeviceKind::Block | DeviceKind::Rng | DeviceKind::Console | DeviceKind::Other(_) => {}
    }
    if let Some(n) = config.config_size {
        options.config.resize(n, 0);
    }
    options
}

/// The guest sees the backend's configuration when it serves one: say so
/// when its fs tag, MAC or vsock cid is not what the command line asked
/// for.
fn warn_if_backend_differs(config: &VhostUserConfig, device: &VhostUserDevice) {
    let (field, ours) = match (config.kind, &config.tag, config.mac, &config.vsock) {
        (DeviceKind::Fs, Some(tag), _, _) => ("tag", tag.clone()),
        (DeviceKind::Net, _, Some(mac), _) => ("MAC", net_mac(&mac)),
        (DeviceKind::Vsock, _, _, Some(v)) => ("cid", v.cid.to_string()),
        _ => return,
    };
    let mut served = vec![0u8; config.kind.config_len()];
    device.read_config(0, &mut served);
    let theirs = match config.kind {
        DeviceKind::Net => net_mac(&served),
        DeviceKind::Vsock => vsock_cid(&served).unwrap_or_default().to_string(),
        _ => fs_tag(&served),
    };
    if theirs != ours {
        log::warn!(
            "vhost-user {} {}: the backend serves {field} {theirs:?}, not {ours:?}; \
             the guest sees the backend's",
            kind_name(config.kind),
            config.socket.display()
        );
    }
}

/// Gives the frontend each queue's eventfds at activation: the kick
/// ioeventfd registered at plug time (the same one every time, so a
/// re-activation after a reset registers nothing twice) and the irqfd of
/// the chosen MSI-X vector.
pub struct QueueEventSource {
    name: String,
    kicks: Vec<EventFd>,
    msi: Arc<dyn CallFds>,
    /// Queues given no MSI-X vector (guest-triggered, so rate-limited).
    no_vector: RateLimited,
}

/// Where call eventfds come from: the device's MSI-X vectors (or, in
/// tests, any set of eventfds).
pub trait CallFds: Send + Sync {
    fn call_fd(&self, vector: u16) -> Option<&EventFd>;
}

impl CallFds for MsiVectors {
    fn call_fd(&self, vector: u16) -> Option<&EventFd> {
        self.irqfd(vector)
    }
}

impl QueueEventSource {
    /// `kicks[q]` is queue `q`'s kick (a clone of the registered
    /// ioeventfd); `name` names the device in logs.
    pub fn new(name: String, kicks: Vec<EventFd>, msi: Arc<dyn CallFds>) -> Self {
        Self {
            name,
            kicks,
            msi,
            no_vector: RateLimited::default(),
        }
    }
}

impl QueueEventProvider for QueueEventSource {
    fn queue_events(&mut self, queue: u16, msix_vector: u16) -> io::Result<QueueEvents> {
        let kick = self
            .kicks
            .get(usize::from(queue))
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no queue {queue}"))
            })?
            .try_clone()?;
        let irqfd = if msix_vector == MSIX_NO_VECTOR {
            None
        } else {
            self.msi.call_fd(msix_vector)
        };
        let call = match irqfd {
            Some(fd) => fd.try_clone()?,
            None => {
                if let Some(n) = self.no_vector.hit() {
                    log::info!(
                        "{}: queue {queue} has no MSI-X vector ({msix_vector:#x}); its used-buffer \
                         notifications go nowhere ({n} times)",
                        self.name
                    );
                }
                EventFd::new(libc::EFD_NONBLOCK)?
            }
        };
        Ok(QueueEvents { kick, call })
    }
}

/// The transport of a vhost-user device.
pub type Transport = VirtioPciDevice<VhostUserDevice>;

/// One vhost-user device plugged into the PCI bus.
pub struct VhostUserPci {
    config: VhostUserConfig,
    address: PciAddress,
    transport: Arc<Mutex<Transport>>,
    link: Reconnector,
    gone: AtomicBool,
}

fn lock(t: &Mutex<Transport>) -> MutexGuard<'_, Transport> {
    t.lock().unwrap_or_else(|e| e.into_inner())
}

/// A device whose MSI-X vectors and kick eventfds exist, not yet connected
/// ([`VhostUserPci::prepare`]). Connecting is the slow part (each message
/// waits for the backend), so [`Handshakes`] runs it on a thread per device
/// while the rest of the VM is built.
pub struct Prepared {
    config: VhostUserConfig,
    options: DeviceOptions,
    vectors: u16,
    msi: Arc<MsiVectors>,
    kicks: Vec<EventFd>,
    events: QueueEventSource,
    memory: MemoryTable,
}

/// A device connected to its backend and negotiated, not yet on the bus.
pub struct Connected {
    config: VhostUserConfig,
    device: VhostUserDevice,
    vectors: u16,
    msi: Arc<MsiVectors>,
    kicks: Vec<EventFd>,
}

fn device_error(config: &VhostUserConfig, source: SetupError) -> DeviceError {
    DeviceError {
        kind: config.kind,
        socket: config.socket.clone(),
        source,
    }
}

impl Prepared {
    /// Connects to the backend and negotiates (SET_OWNER, features,
    /// protocol features, GET_CONFIG).
    pub fn connect(self) -> Result<Connected, DeviceError> {
        let Prepared {
            config,
            options,
            vectors,
            msi,
            kicks,
            events,
            memory,
        } = self;
        let device = VhostUserDevice::connect(&config.socket, options, memory, Box::new(events))
            .map_err(|e| {
                let source = match e {
                    VhostUserError::Connect { source, .. } => SetupError::Connect(source),
                    e => SetupError::Handshake(e),
                };
                device_error(&config, source)
            })?;
        warn_if_backend_differs(&config, &device);
        Ok(Connected {
            config,
            device,
            vectors,
            msi,
            kicks,
        })
    }
}

/// The handshakes of several devices, each on its own thread; joined in
/// order by [`Handshakes::finish`] (or, if the VM is not built after all,
/// when dropped).
pub struct Handshakes {
    threads: Vec<std::thread::JoinHandle<Result<Connected, DeviceError>>>,
}

impl Handshakes {
    /// Starts connecting every device of `prepared`.
    pub fn start(prepared: Vec<Prepared>) -> Result<Self, DeviceError> {
        let mut threads = Vec::with_capacity(prepared.len());
        for p in prepared {
            let config = p.config.clone();
            let thread = std::thread::Builder::new()
                .name("vu-connect".into())
                .spawn(move || p.connect())
                .map_err(|e| device_error(&config, SetupError::Thread(e)))?;
            threads.push(thread);
        }
        Ok(Self { threads })
    }

    /// Waits for every handshake; the devices in the order they were
    /// given, or the first one's error in that order.
    pub fn finish(mut self) -> Result<Vec<Connected>, DeviceError> {
        let results: Vec<_> = self.threads.drain(..).map(join).collect();
        results.into_iter().collect()
    }
}

fn join(
    t: std::thread::JoinHandle<Result<Connected, DeviceError>>,
) -> Result<Connected, DeviceError> {
    t.join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

impl Drop for Handshakes {
    fn drop(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Connected {
    /// Wraps the device in the virtio-pci transport and plugs it into
    /// `pci`, with the queues' kicks as ioeventfds at their notify
    /// addresses; its activations run on `activation`'s thread.
    pub fn plug(
        self,
        pci: &PciHost,
        activation: &ActivationThread,
    ) -> Result<Arc<VhostUserPci>, DeviceError> {
        let Connected {
            config,
            device,
            vectors,
            msi,
            kicks,
        } = self;
        let fail = |source| device_error(&config, source);
        let queues = kicks.len();
        let sink: Arc<dyn MsiSink> = msi;
        let transport = VirtioPciDevice::new(device, vectors, sink)
            .map_err(|e| fail(SetupError::Transport(e)))?;
        let transport = Arc::new(Mutex::new(transport));
        let deferrer = activation.deferrer(&transport);
        lock(&transport).device_mut().defer_requests(deferrer);
        let address = pci
            .bus()
            .add_device(transport.clone())
            .map_err(|e| fail(SetupError::Plug(e)))?;
        let notify: Vec<(u16, u64)> = {
            let t = lock(&transport);
            let base = t
                .config()
                .bar_address(VIRTIO_PCI_BAR)
                .ok_or(SetupError::NoBar(VIRTIO_PCI_BAR))
                .map_err(fail)?;
            t.queue_notify_addresses()
                .into_iter()
                .filter_map(|(q, addr)| Some((q, addr.checked_sub(base)?)))
                .collect()
        };
        if notify.len() != queues {
            return Err(fail(SetupError::NoBar(VIRTIO_PCI_BAR)));
        }
        for ((_, offset), kick) in notify.into_iter().zip(kicks) {
            pci.add_ioevent(address, VIRTIO_PCI_BAR, offset, kick)
                .map_err(|e| fail(SetupError::IoEvent(e)))?;
        }
        log::info!(
            "vhost-user {} {}: PCI {address}, {queues} queues of up to {}, {vectors} MSI-X vectors",
            kind_name(config.kind),
            config.socket.display(),
            config.queue_size
        );
        Ok(Arc::new(VhostUserPci::new(config, address, transport)))
    }
}

impl VhostUserPci {
    /// Connects to `config.socket`, negotiates, and plugs the device into
    /// `pci` with one MSI-X vector per queue plus one for configuration
    /// changes, routed by `irq`. Guest memory `mem` goes to the backend at
    /// each activation, which runs on `activation`'s thread.
    /// ([`prepare`](Self::prepare), [`Prepared::connect`] and
    /// [`Connected::plug`] in one.)
    pub fn plug(
        config: &VhostUserConfig,
        pci: &PciHost,
        irq: &Arc<IrqRouter>,
        mem: &GuestMemoryMmap,
        activation: &ActivationThread,
    ) -> Result<Arc<Self>, DeviceError> {
        Self::prepare(config, irq, mem)?
            .connect()?
            .plug(pci, activation)
    }

    /// The first step of [`plug`](Self::plug): one MSI-X vector per queue
    /// plus one for configuration changes (GSIs from `irq`, in call
    /// order), the kick eventfds, and guest memory `mem` as the backend
    /// will get it. Nothing is sent to the backend yet.
    pub fn prepare(
        config: &VhostUserConfig,
        irq: &Arc<IrqRouter>,
        mem: &GuestMemoryMmap,
    ) -> Result<Prepared, DeviceError> {
        let fail = |source| device_error(config, source);
        let options = device_options(config);
        let queues = options.queues;
        let vectors = u16::try_from(queues + 1)
            .ok()
            .filter(|v| *v <= devices::pci::MSIX_MAX_VECTORS)
            .ok_or(SetupError::TooManyQueues(queues))
            .map_err(fail)?;
        let msi = irq
            .vectors(vectors)
            .map_err(|e| fail(SetupError::Vectors(e)))?;
        let kicks = (0..queues)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| fail(SetupError::EventFd(e)))?;
        let clones = kicks
            .iter()
            .map(EventFd::try_clone)
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| fail(SetupError::EventFd(e)))?;
        let name = format!(
            "vhost-user {} {}",
            kind_name(config.kind),
            config.socket.display()
        );
        let events = QueueEventSource::new(name, clones, msi.clone());
        let memory =
            MemoryTable::from_guest_memory(mem).map_err(|e| fail(SetupError::Memory(e)))?;
        Ok(Prepared {
            config: config.clone(),
            options,
            vectors,
            msi,
            kicks,
            events,
            memory,
        })
    }

    /// A device already plugged at `address` (for tests of the watcher).
    pub fn new(
        config: VhostUserConfig,
        address: PciAddress,
        transport: Arc<Mutex<Transport>>,
    ) -> Self {
        let link = lock(&transport).device().reconnector();
        Self {
            config,
            address,
            transport,
            link,
            gone: AtomicBool::new(false),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &VhostUserConfig {
        &self.config
    }

    /// Its PCI address.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// The transport (and, inside, the frontend), as the bus holds it.
    pub fn transport(&self) -> &Arc<Mutex<Transport>> {
        &self.transport
    }

    /// The backend's socket, to watch for a hang-up.
    pub fn connection_fd(&self) -> Option<RawFd> {
        self.link.connection_fd()
    }

    /// How long `vu-watch` retries the socket after a disconnect: `None`
    /// for ever.
    pub fn reconnect_limit(&self) -> Option<Duration> {
        match self.config.reconnect {
            Reconnect::For(d) => Some(d),
            Reconnect::Off | Reconnect::Forever => None,
        }
    }

    /// The frontend's state, without waiting for the transport's lock.
    pub fn state(&self) -> DeviceState {
        self.link.state()
    }

    /// One attempt to renew a Reconnecting device's connection (see
    /// [`Reconnector::try_connect`]); returns the state after it. A
    /// backend that cannot serve what was negotiated makes the device
    /// need a reset.
    pub fn try_reconnect(&self) -> DeviceState {
        let _ = self.link.try_connect();
        let state = self.link.state();
        if state == DeviceState::Failed {
            self.needs_reset_now();
        }
        state
    }

    /// The reconnect time limit ran out: the device needs a reset.
    pub fn give_up(&self, after: Duration) {
        let why = format!(
            "no backend on the socket within the reconnect limit ({} s)",
            after.as_secs()
        );
        if self.link.give_up(&why) {
            self.needs_reset_now();
        }
    }

    /// Sets DEVICE_NEEDS_RESET (with a configuration interrupt) on a
    /// failed device, and logs it once.
    fn needs_reset_now(&self) {
        lock(&self.transport).check_device();
        if !self.gone.swap(true, Ordering::AcqRel) {
            log::warn!(
                "vhost-user {} device {} ({}): the backend is gone; DEVICE_NEEDS_RESET set, \
                 the guest must reset the device",
                kind_name(self.config.kind),
                self.address,
                self.config.socket.display()
            );
        }
    }

    /// What `vm.info` shows. Takes the transport's lock (which a vCPU
    /// holds during an access, at most for the frontend's reply timeout).
    pub fn info(&self) -> DeviceInfo {
        let t = lock(&self.transport);
        DeviceInfo {
            kind: self.config.kind,
            socket: self.config.socket.clone(),
            bdf: self.address,
            state: t.device().state(),
            needs_reset: t.status() & STATUS_DEVICE_NEEDS_RESET != 0,
            reconnects: t.device().reconnects(),
        }
    }

    /// The backend's socket became readable or hung up: checks whether the
    /// backend is gone. If so the device is Reconnecting (with
    /// `reconnect=`; the caller retries) or failed: then DEVICE_NEEDS_RESET
    /// is set (with a configuration interrupt) and logged once. Returns
    /// whether the backend is gone.
    pub fn check_backend(&self) -> bool {
        let mut t = lock(&self.transport);
        match t.device_mut().check_connection() {
            DeviceState::Ready | DeviceState::Active => false,
            DeviceState::Reconnecting => true,
            DeviceState::Failed => {
                drop(t);
                self.needs_reset_now();
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse_fs, parse_net};

    #[test]
    fn fs_defaults_carry_the_tag() {
        let c = parse_fs("tag=myshare,socket=/f,num_queues=2").unwrap();
        let o = device_options(&c);
        assert_eq!((o.kind, o.queues, o.queue_size), (DeviceKind::Fs, 3, 1024));
        assert_eq!(o.config.len(), 40);
        assert_eq!(&o.config[..7], b"myshare");
        assert!(o.config[7..36].iter().all(|b| *b == 0));
        assert_eq!(&o.config[36..], &2u32.to_le_bytes());
    }

    #[test]
    fn net_defaults_carry_the_mac() {
        let c = parse_net("socket=/n,mac=52:54:00:ab:cd:ef,num_queues=4").unwrap();
        let o = device_options(&c);
        assert_eq!((o.kind, o.queues, o.queue_size), (DeviceKind::Net, 5, 256));
        assert_eq!(
            o.config,
            [0x52, 0x54, 0, 0xab, 0xcd, 0xef, 1, 0, 2, 0, 0, 0]
        );
        let o = device_options(&parse_net("socket=/n").unwrap());
        assert_eq!(&o.config[..6], &[0; 6]);
    }

    struct Calls(Vec<EventFd>);

    impl CallFds for Calls {
        fn call_fd(&self, vector: u16) -> Option<&EventFd> {
            self.0.get(usize::from(vector))
        }
    }

    #[test]
    fn queue_events_reuse_the_kick_and_follow_the_vector() {
        let kicks: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
        let clones = kicks.iter().map(|k| k.try_clone().unwrap()).collect();
        let calls = Arc::new(Calls(
            (0..3)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                .collect(),
        ));
        let mut src = QueueEventSource::new("test".into(), clones, calls.clone());
        let e = src.queue_events(1, 2).unwrap();
        // The kick is queue 1's registered eventfd, the call vector 2's.
        e.kick.write(3).unwrap();
        assert_eq!(kicks[1].read().unwrap(), 3);
        e.call.write(5).unwrap();
        assert_eq!(calls.0[2].read().unwrap(), 5);
        // Again after a reset: the same kick.
        let again = src.queue_events(1, 0).unwrap();
        again.kick.write(1).unwrap();
        assert_eq!(kicks[1].read().unwrap(), 1);
        // No vector (or one past the table): an eventfd nobody reads.
        for v in [MSIX_NO_VECTOR, 7] {
            let e = src.queue_events(0, v).unwrap();
            e.call.write(1).unwrap();
            assert!(calls.0.iter().all(|c| c.read().is_err()));
        }
        assert_eq!(src.no_vector.count(), 2);
        assert!(src.queue_events(2, 0).is_err());
    }
}
