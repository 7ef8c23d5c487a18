//! The frontend against a real in-process `vhost-user-backend` daemon over a
//! temp socket, with file-backed guest memory.

use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{Frontend, Listener, VhostUserProtocolFeatures as P};
use vhost::{VhostUserMemoryRegionInfo, VringConfigData};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::pci::msix::test_sink::CountingSink;
use crate::pci::PciDevice;
use crate::virtio_pci::{QueueConfig, VirtioDevice, VirtioPciDevice, STATUS_DEVICE_NEEDS_RESET};

const VERSION_1: u64 = 1 << 32;
const MEM_BASE: u64 = 0x10_0000;
const MEM_SIZE: usize = 1 << 20;

/// What the tiny backend saw.
#[derive(Default)]
struct Seen {
    acked: u64,
    config: Vec<u8>,
    kicked: Vec<u16>,
    /// The ring's next available index at each kick.
    next_avail: Vec<u16>,
    memory_updates: usize,
}

/// The features [`Tiny`] offers unless told otherwise.
const TINY_FEATURES: u64 = VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES | (1 << 9);

/// A two-queue device offering the given features that answers every
/// kick with a call.
struct Tiny(Arc<Mutex<Seen>>, u64);

impl VhostUserBackendMut for Tiny {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }
    fn max_queue_size(&self) -> usize {
        256
    }
    fn features(&self) -> u64 {
        self.1
    }
    fn acked_features(&mut self, features: u64) {
        self.0.lock().unwrap().acked = features;
    }
    fn protocol_features(&self) -> P {
        P::REPLY_ACK | P::CONFIG | P::MQ | P::RESET_DEVICE
    }
    fn set_event_idx(&mut self, _enabled: bool) {}
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let seen = self.0.lock().unwrap();
        let (start, end) = (offset as usize, (offset + size) as usize);
        seen.config
            .get(start..end)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }
    fn set_config(&mut self, offset: u32, buf: &[u8]) -> std::io::Result<()> {
        let mut seen = self.0.lock().unwrap();
        let start = offset as usize;
        seen.config[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn update_memory(&mut self, _mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        self.0.lock().unwrap().memory_updates += 1;
        Ok(())
    }
    fn handle_event(
        &mut self,
        q: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        let mut seen = self.0.lock().unwrap();
        seen.kicked.push(q);
        seen.next_avail
            .push(vrings[usize::from(q)].queue_next_avail());
        vrings[usize::from(q)].signal_used_queue()
    }
}

/// A socket path, removed on drop.
struct Sock(PathBuf);

impl Drop for Sock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A daemon serving one connection on a fresh socket.
fn serve(name: &str) -> (Sock, Arc<Mutex<Seen>>) {
    serve_offering(name, TINY_FEATURES)
}

/// [`serve`], the backend offering `features`.
fn serve_offering(name: &str, features: u64) -> (Sock, Arc<Mutex<Seen>>) {
    let path = std::env::temp_dir().join(format!("devices-vu-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // Bound before the thread starts, so connect() never races it.
    let mut listener = Listener::from(UnixListener::bind(&path).unwrap());
    let seen = Arc::new(Mutex::new(Seen {
        config: (0..60).collect(),
        ..Default::default()
    }));
    let backend = Arc::new(Mutex::new(Tiny(seen.clone(), features)));
    std::thread::Builder::new()
        .name(format!("vu-test-{name}"))
        .spawn(move || {
            let mut daemon = VhostUserDaemon::new(
                "tiny".into(),
                backend,
                GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            )
            .unwrap();
            daemon.start(&mut listener).unwrap();
            // Ends with an error when the frontend goes away.
            let _ = daemon.wait();
        })
        .unwrap();
    (Sock(path), seen)
}

fn guest_memory() -> GuestMemoryMmap {
    let file = TempFile::new().unwrap().into_file();
    file.set_len(MEM_SIZE as u64).unwrap();
    GuestMemoryMmap::from_ranges_with_files([(
        GuestAddress(MEM_BASE),
        MEM_SIZE,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap()
}

/// Passes requests to the real frontend and records each request's name
/// and whether it carried NEED_REPLY. The frontend waits for every ack it
/// asked for, so a request that succeeds with NEED_REPLY was acked.
struct Recording {
    inner: Frontend,
    need_reply: bool,
    log: Arc<Mutex<Vec<(&'static str, bool)>>>,
}

impl Recording {
    fn rec<T>(&mut self, name: &'static str, r: vhost::Result<T>) -> vhost::Result<T> {
        self.log.lock().unwrap().push((name, self.need_reply));
        r
    }
}

/// `VhostUserConn` methods that pass the request on to the real frontend
/// and record it under its message name.
macro_rules! recorded {
    ($($name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $msg:literal;)*) => {
        $(fn $name(&mut self, $($arg: $ty),*) -> vhost::Result<$ret> {
            let r = self.inner.$name($($arg),*);
            self.rec($msg, r)
        })*
    };
}

impl VhostUserConn for Recording {
    fn set_need_reply(&mut self, on: bool) {
        self.need_reply = on;
        self.inner.set_need_reply(on);
    }
    recorded! {
        set_owner() -> () = "SET_OWNER";
        reset_owner() -> () = "RESET_OWNER";
        reset_device() -> () = "RESET_DEVICE";
        get_features() -> u64 = "GET_FEATURES";
        set_features(features: u64) -> () = "SET_FEATURES";
        get_protocol_features() -> P = "GET_PROTOCOL_FEATURES";
        set_protocol_features(features: P) -> () = "SET_PROTOCOL_FEATURES";
        get_queue_num() -> u64 = "GET_QUEUE_NUM";
        set_mem_table(regions: &[VhostUserMemoryRegionInfo]) -> () = "SET_MEM_TABLE";
        get_inflight_fd(num_queues: u16, queue_size: u16) -> (VhostUserInflight, std::fs::File) = "GET_INFLIGHT_FD";
        set_inflight_fd(inflight: &VhostUserInflight, file: &std::fs::File) -> () = "SET_INFLIGHT_FD";
        set_vring_num(queue: usize, num: u16) -> () = "SET_VRING_NUM";
        set_vring_addr(queue: usize, config: &VringConfigData) -> () = "SET_VRING_ADDR";
        set_vring_base(queue: usize, base: u16) -> () = "SET_VRING_BASE";
        get_vring_base(queue: usize) -> u32 = "GET_VRING_BASE";
        set_vring_call(queue: usize, fd: &EventFd) -> () = "SET_VRING_CALL";
        set_vring_kick(queue: usize, fd: &EventFd) -> () = "SET_VRING_KICK";
        set_vring_enable(queue: usize, enable: bool) -> () = "SET_VRING_ENABLE";
        get_config(offset: u32, size: u32) -> Vec<u8> = "GET_CONFIG";
        set_config(offset: u32, data: &[u8]) -> () = "SET_CONFIG";
    }
    fn raw_fd(&self) -> Option<RawFd> {
        self.inner.raw_fd()
    }
    fn peer_gone(&self) -> bool {
        self.inner.peer_gone()
    }
}

/// The messages that set up `rings` rings, in the order the frontend
/// sends them.
fn ring_setup(rings: usize) -> Vec<&'static str> {
    [
        "SET_VRING_NUM",
        "SET_VRING_ADDR",
        "SET_VRING_BASE",
        "SET_VRING_CALL",
        "SET_VRING_KICK",
        "SET_VRING_ENABLE",
    ]
    .repeat(rings)
}

/// Keeps a copy of every queue's eventfds, as the VMM would.
#[derive(Default)]
struct KeptEvents(Arc<Mutex<Vec<QueueEvents>>>);

impl QueueEventProvider for KeptEvents {
    fn queue_events(&mut self, _queue: u16, _vector: u16) -> std::io::Result<QueueEvents> {
        let ev = QueueEvents {
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
            call: EventFd::new(libc::EFD_NONBLOCK)?,
        };
        let copy = QueueEvents {
            kick: ev.kick.try_clone()?,
            call: ev.call.try_clone()?,
        };
        self.0.lock().unwrap().push(copy);
        Ok(ev)
    }
}

struct Rig {
    _sock: Sock,
    seen: Arc<Mutex<Seen>>,
    log: Arc<Mutex<Vec<(&'static str, bool)>>>,
    events: Arc<Mutex<Vec<QueueEvents>>>,
    dev: VhostUserDevice,
    _mem: GuestMemoryMmap,
}

/// A recording connection to `path`, logging into `log`.
fn recording(path: &std::path::Path, log: &Arc<Mutex<Vec<(&'static str, bool)>>>) -> Recording {
    let stream = UnixStream::connect(path).unwrap();
    stream.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    Recording {
        inner: Frontend::from_stream(stream, 2),
        need_reply: false,
        log: Arc::clone(log),
    }
}

impl Rig {
    fn new(name: &str) -> Self {
        Self::with_reconnect(name, false)
    }

    /// With [`DeviceOptions::reconnect`] as given.
    fn with_reconnect(name: &str, reconnect: bool) -> Self {
        let (sock, seen) = serve(name);
        let log = Arc::default();
        let conn = recording(&sock.0, &log);
        let mem = guest_memory();
        let kept = KeptEvents::default();
        let events = kept.0.clone();
        let mut options = DeviceOptions::new(DeviceKind::Block);
        options.queues = 2;
        options.reconnect = reconnect;
        let dev = VhostUserDevice::with_conn(
            Box::new(conn),
            sock.0.clone(),
            options,
            MemoryTable::from_guest_memory(&mem).unwrap(),
            Box::new(kept),
        )
        .unwrap();
        Self {
            _sock: sock,
            seen,
            log,
            events,
            dev,
            _mem: mem,
        }
    }

    fn log(&self) -> Vec<(&'static str, bool)> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }

    /// Closes the connection under the frontend, as a dying backend would.
    fn cut(&self) {
        let fd = self.dev.connection_fd().unwrap();
        // SAFETY: shutdown on a socket fd the device owns and keeps open;
        // no memory is involved.
        assert_eq!(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) }, 0);
    }
}

fn queues() -> Vec<QueueConfig> {
    (0..2u16)
        .map(|i| {
            let base = MEM_BASE + u64::from(i) * 0x4000;
            QueueConfig {
                index: i,
                size: 64,
                desc_table: base,
                avail_ring: base + 0x1000,
                used_ring: base + 0x2000,
                msix_vector: i,
            }
        })
        .collect()
}

/// Waits (poll, no sleep) for `fd` to become readable.
fn readable(fd: &impl AsRawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, alive across the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
    n == 1
}

#[test]
fn real_backend_negotiation_config_rings_and_reset() {
    let mut rig = Rig::new("full");
    assert_eq!(
        rig.log(),
        vec![
            ("SET_OWNER", false),
            ("GET_FEATURES", false),
            ("GET_PROTOCOL_FEATURES", false),
            ("SET_PROTOCOL_FEATURES", false),
            ("GET_QUEUE_NUM", false),
            ("GET_CONFIG", false),
        ]
    );
    assert_eq!(
        rig.dev.protocol_features(),
        P::REPLY_ACK | P::CONFIG | P::MQ | P::RESET_DEVICE
    );
    assert_eq!(rig.dev.features(), VERSION_1 | (1 << 9));

    // Config round trip through GET_CONFIG / SET_CONFIG.
    let mut buf = [0u8; 4];
    rig.dev.read_config(8, &mut buf);
    assert_eq!(buf, [8, 9, 10, 11]);
    // Reads come from the copy taken at connect; a write goes out as
    // SET_CONFIG (before DRIVER_OK without NEED_REPLY, so the backend is
    // waited for).
    rig.dev.write_config(8, &[0xa0, 0xa1]);
    rig.dev.read_config(8, &mut buf);
    assert_eq!(buf, [0xa0, 0xa1, 10, 11]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rig.seen.lock().unwrap().config[8..10] != [0xa0, 0xa1]
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(rig.seen.lock().unwrap().config[8..10], [0xa0, 0xa1]);
    rig.log();

    rig.dev.activate(VERSION_1 | (1 << 9), queues()).unwrap();
    let log = rig.log();
    let mut want = vec!["SET_FEATURES", "SET_MEM_TABLE"];
    want.extend(ring_setup(2));
    assert_eq!(log.iter().map(|(n, _)| *n).collect::<Vec<_>>(), want);
    assert!(
        log.iter().all(|(_, nr)| *nr),
        "every set message acked: {log:?}"
    );
    {
        let seen = rig.seen.lock().unwrap();
        assert_eq!(
            seen.acked,
            VERSION_1 | (1 << 9) | VHOST_USER_F_PROTOCOL_FEATURES
        );
        assert_eq!(seen.memory_updates, 1);
    }
    assert_eq!(rig.dev.state(), DeviceState::Active);

    // Once started, each ring is kicked once (a kick the driver made
    // while the rings were being set up is not lost); the backend calls.
    let calls: Vec<_> = rig
        .events
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.call.try_clone().unwrap())
        .collect();
    for call in &calls {
        assert!(readable(call), "no call after the activation's kick");
        assert_eq!(call.read().unwrap(), 1);
    }
    let mut kicked = std::mem::take(&mut rig.seen.lock().unwrap().kicked);
    kicked.sort_unstable();
    assert_eq!(kicked, vec![0, 1]);

    // A kick (through queue_notify, as without an ioeventfd) reaches the
    // backend, whose call reaches our eventfd.
    rig.dev.queue_notify(1);
    let call = &calls[1];
    assert!(readable(call), "no call from the backend");
    assert_eq!(call.read().unwrap(), 1);
    assert_eq!(rig.seen.lock().unwrap().kicked, vec![1]);

    rig.dev.reset();
    assert_eq!(
        rig.log(),
        vec![
            ("GET_VRING_BASE", true),
            ("GET_VRING_BASE", true),
            ("RESET_DEVICE", true)
        ]
    );
    assert_eq!(rig.dev.state(), DeviceState::Ready);

    // And it starts again.
    rig.dev.activate(VERSION_1, queues()).unwrap();
    assert_eq!(rig.dev.state(), DeviceState::Active);
}

#[test]
fn a_dead_backend_found_while_idle_fails_the_device() {
    let mut rig = Rig::new("idle");
    rig.dev.activate(VERSION_1, queues()).unwrap();
    assert_eq!(rig.dev.check_connection(), DeviceState::Active);
    rig.cut();
    assert_eq!(rig.dev.check_connection(), DeviceState::Failed);
    assert!(rig.dev.needs_reset());
    rig.dev.reset();
    assert!(rig.dev.activate(VERSION_1, queues()).is_err());
}

#[test]
fn a_dead_backend_found_by_a_config_read_sets_needs_reset() {
    let rig = Rig::new("cfg");
    rig.cut();
    let Rig { dev, .. } = rig;
    let sink = Arc::new(CountingSink::default());
    let mut pci = VirtioPciDevice::new(dev, 3, sink).unwrap();
    pci.config_mut().set_bar_address(0, 0x80_0000_0000).unwrap();
    let mut buf = [0xffu8; 4];
    pci.read_bar(0, 0x2000 + 8, &mut buf);
    // The last good copy of the configuration is still shown.
    assert_eq!(buf, [8, 9, 10, 11]);
    assert_ne!(pci.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(pci.device().state(), DeviceState::Failed);
    // Writes, notifies and resets on a dead device do not panic.
    pci.write_bar(0, 0x2000, &[1]);
    pci.write_bar(0, 0x14, &[0]);
    assert_eq!(pci.device().state(), DeviceState::Failed);
}

#[test]
fn a_backend_that_comes_back_gets_the_whole_setup_with_rings_at_the_used_index() {
    let mut rig = Rig::with_reconnect("again", true);
    rig.dev.activate(VERSION_1 | (1 << 9), queues()).unwrap();
    rig.events.lock().unwrap().clear();
    // The driver had 5 requests of queue 0 completed, 2 of queue 1.
    for (q, used) in queues().iter().zip([5u16, 2]) {
        vm_memory::Bytes::write_obj(&rig._mem, used, GuestAddress(q.used_ring + 2)).unwrap();
    }
    rig.log();

    rig.cut();
    assert_eq!(rig.dev.check_connection(), DeviceState::Reconnecting);
    assert!(!rig.dev.needs_reset());
    // The driver reads its configuration meanwhile: the last copy.
    let mut buf = [0u8; 2];
    rig.dev.read_config(8, &mut buf);
    assert_eq!(buf, [8, 9]);
    // (The old daemon's thread still holds its listener: a connect there
    // would be accepted and never served.)
    let link = rig.dev.reconnector();

    // The backend is back on the same path.
    let (sock, seen) = serve("again");
    let log = Arc::new(Mutex::new(Vec::new()));
    link.replay(Box::new(recording(&sock.0, &log))).unwrap();
    assert_eq!(rig.dev.state(), DeviceState::Active);
    assert_eq!(rig.dev.reconnects(), 1);
    let names: Vec<_> = log.lock().unwrap().iter().map(|(n, _)| *n).collect();
    let mut want = vec![
        "SET_OWNER",
        "GET_FEATURES",
        "GET_PROTOCOL_FEATURES",
        "SET_PROTOCOL_FEATURES",
        "GET_QUEUE_NUM",
        // The restarted backend's configuration, for the driver's reads.
        "GET_CONFIG",
        "SET_FEATURES",
        "SET_MEM_TABLE",
    ];
    want.extend(ring_setup(2));
    assert_eq!(names, want);
    // Both rings were kicked (no kick from the driver) and resumed at
    // their used index, and the backend calls.
    let events = std::mem::take(&mut *rig.events.lock().unwrap());
    assert_eq!(events.len(), 2);
    for e in &events {
        assert!(readable(&e.call), "no call after the reconnect");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.acked,
        VERSION_1 | (1 << 9) | VHOST_USER_F_PROTOCOL_FEATURES
    );
    let mut resumed: Vec<_> = seen.kicked.iter().zip(&seen.next_avail).collect();
    resumed.sort();
    resumed.dedup();
    assert_eq!(resumed, vec![(&0, &5), (&1, &2)]);
    drop(seen);
    drop(sock);
    // A reset afterwards stops the new backend's rings.
    rig.dev.reset();
    assert_eq!(rig.dev.state(), DeviceState::Ready);
}

#[test]
fn a_backend_that_comes_back_with_fewer_features_is_refused() {
    let mut rig = Rig::with_reconnect("fewer", true);
    rig.dev.activate(VERSION_1 | (1 << 9), queues()).unwrap();
    rig.cut();
    assert_eq!(rig.dev.check_connection(), DeviceState::Reconnecting);
    let (sock, _seen) = serve_offering("fewer", TINY_FEATURES & !(1 << 9));
    let log = Arc::new(Mutex::new(Vec::new()));
    let err = rig
        .dev
        .reconnector()
        .replay(Box::new(recording(&sock.0, &log)))
        .unwrap_err();
    assert!(matches!(err, VhostUserError::FeaturesLost { .. }), "{err}");
    assert!(err.to_string().contains("without 0x200"), "{err}");
    assert_eq!(rig.dev.state(), DeviceState::Failed);
    assert!(rig.dev.needs_reset());
}

#[test]
fn a_device_reset_while_reconnecting_comes_back_ready_and_an_activation_waits() {
    let mut rig = Rig::with_reconnect("reset", true);
    rig.dev.activate(VERSION_1, queues()).unwrap();
    rig.cut();
    assert_eq!(rig.dev.check_connection(), DeviceState::Reconnecting);
    rig.dev.reset();
    assert_eq!(rig.dev.state(), DeviceState::Reconnecting);
    let (sock, _seen) = serve("reset");
    let log = Arc::new(Mutex::new(Vec::new()));
    let link = rig.dev.reconnector();
    link.replay(Box::new(recording(&sock.0, &log))).unwrap();
    assert_eq!(rig.dev.state(), DeviceState::Ready);
    assert!(!log
        .lock()
        .unwrap()
        .iter()
        .any(|(n, _)| *n == "SET_FEATURES"));

    // An activation while reconnecting is replayed on the next backend.
    rig.cut();
    assert_eq!(rig.dev.check_connection(), DeviceState::Reconnecting);
    rig.dev.activate(VERSION_1, queues()).unwrap();
    assert_eq!(rig.dev.state(), DeviceState::Reconnecting);
    assert!(!rig.dev.needs_reset());
    let (sock, _seen) = serve("reset");
    link.replay(Box::new(recording(&sock.0, &log))).unwrap();
    assert_eq!(rig.dev.state(), DeviceState::Active);
    assert!(!link.give_up("test"));
}
