//! The frontend against a fake backend behind [`VhostUserConn`].

use std::fs::File;
use std::os::unix::io::RawFd;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::{Error as VuError, VhostUserProtocolFeatures as P};
use vhost::{VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::pci::msix::test_sink::CountingSink;
use crate::pci::PciDevice;
use crate::virtio_pci::{
    QueueConfig, VirtioDevice, VirtioPciDevice, STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET,
    STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
};

/// One request as the backend saw it, with whether it carried NEED_REPLY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Msg {
    SetOwner,
    ResetOwner,
    ResetDevice,
    GetFeatures,
    SetFeatures(u64),
    GetProtocolFeatures,
    SetProtocolFeatures(u64),
    GetQueueNum,
    /// (guest address, size, userspace address, file offset) per region.
    SetMemTable(Vec<(u64, u64, u64, u64)>),
    /// num_queues, queue_size.
    GetInflightFd(u16, u16),
    /// mmap_size, num_queues, queue_size.
    SetInflightFd(u64, u16, u16),
    SetVringNum(usize, u16),
    /// desc, avail, used (frontend userspace addresses).
    SetVringAddr(usize, u64, u64, u64),
    SetVringBase(usize, u16),
    GetVringBase(usize),
    SetVringCall(usize),
    SetVringKick(usize),
    SetVringEnable(usize, bool),
    GetConfig(u32, u32),
    SetConfig(u32, Vec<u8>),
}

/// Which request hangs, where it says it arrived, what lets it go on.
type Hang = (fn(&Msg) -> bool, Sender<()>, Receiver<()>);

#[derive(Default)]
struct Backend {
    log: Vec<(Msg, bool)>,
    config: Vec<u8>,
    /// The connection dies when this many requests were seen.
    die_after: Option<usize>,
    dead: bool,
    /// The first request this matches says it arrived on the sender, then
    /// waits for the receiver: a backend that hangs.
    hang: Option<Hang>,
    /// Each SET_VRING_KICK's eventfd, to see the frontend's kicks.
    kicks: Vec<(usize, EventFd)>,
}

struct Fake {
    b: Arc<Mutex<Backend>>,
    features: u64,
    protocol: P,
    queue_num: u64,
    need_reply: bool,
}

fn gone() -> vhost::Error {
    vhost::Error::VhostUserProtocol(VuError::Disconnected)
}

impl Fake {
    fn req(&mut self, m: Msg) -> vhost::Result<()> {
        let hang = {
            let mut b = self.b.lock().unwrap();
            match &b.hang {
                Some((at, _, _)) if at(&m) => b.hang.take(),
                _ => None,
            }
        };
        if let Some((_, reached, release)) = hang {
            let _ = reached.send(());
            let _ = release.recv();
        }
        let mut b = self.b.lock().unwrap();
        if b.dead || b.die_after == Some(b.log.len()) {
            b.dead = true;
            return Err(gone());
        }
        b.log.push((m, self.need_reply));
        Ok(())
    }
}

impl VhostUserConn for Fake {
    fn set_need_reply(&mut self, on: bool) {
        self.need_reply = on;
    }
    fn set_owner(&mut self) -> vhost::Result<()> {
        self.req(Msg::SetOwner)
    }
    fn reset_owner(&mut self) -> vhost::Result<()> {
        self.req(Msg::ResetOwner)
    }
    fn reset_device(&mut self) -> vhost::Result<()> {
        self.req(Msg::ResetDevice)
    }
    fn get_features(&mut self) -> vhost::Result<u64> {
        self.req(Msg::GetFeatures).map(|_| self.features)
    }
    fn set_features(&mut self, features: u64) -> vhost::Result<()> {
        self.req(Msg::SetFeatures(features))
    }
    fn get_protocol_features(&mut self) -> vhost::Result<P> {
        self.req(Msg::GetProtocolFeatures).map(|_| self.protocol)
    }
    fn set_protocol_features(&mut self, features: P) -> vhost::Result<()> {
        self.req(Msg::SetProtocolFeatures(features.bits()))
    }
    fn get_queue_num(&mut self) -> vhost::Result<u64> {
        self.req(Msg::GetQueueNum).map(|_| self.queue_num)
    }
    fn set_mem_table(&mut self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()> {
        let r = regions
            .iter()
            .map(|r| {
                assert!(r.mmap_handle >= 0);
                (
                    r.guest_phys_addr,
                    r.memory_size,
                    r.userspace_addr,
                    r.mmap_offset,
                )
            })
            .collect();
        self.req(Msg::SetMemTable(r))
    }
    fn get_inflight_fd(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> vhost::Result<(VhostUserInflight, File)> {
        self.req(Msg::GetInflightFd(num_queues, queue_size))?;
        let info = VhostUserInflight {
            mmap_size: 4096,
            mmap_offset: 0,
            num_queues,
            queue_size,
        };
        let file = File::open("/dev/null")
            .map_err(|e| vhost::Error::VhostUserProtocol(VuError::SocketError(e)))?;
        Ok((info, file))
    }
    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, _file: &File) -> vhost::Result<()> {
        self.req(Msg::SetInflightFd(
            inflight.mmap_size,
            inflight.num_queues,
            inflight.queue_size,
        ))
    }
    fn set_vring_num(&mut self, queue: usize, num: u16) -> vhost::Result<()> {
        self.req(Msg::SetVringNum(queue, num))
    }
    fn set_vring_addr(&mut self, queue: usize, c: &VringConfigData) -> vhost::Result<()> {
        self.req(Msg::SetVringAddr(
            queue,
            c.desc_table_addr,
            c.avail_ring_addr,
            c.used_ring_addr,
        ))
    }
    fn set_vring_base(&mut self, queue: usize, base: u16) -> vhost::Result<()> {
        self.req(Msg::SetVringBase(queue, base))
    }
    fn get_vring_base(&mut self, queue: usize) -> vhost::Result<u32> {
        self.req(Msg::GetVringBase(queue)).map(|_| 0)
    }
    fn set_vring_call(&mut self, queue: usize, _fd: &EventFd) -> vhost::Result<()> {
        self.req(Msg::SetVringCall(queue))
    }
    fn set_vring_kick(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        self.req(Msg::SetVringKick(queue))?;
        let fd = fd.try_clone().map_err(vhost::Error::IOError)?;
        self.b.lock().unwrap().kicks.push((queue, fd));
        Ok(())
    }
    fn set_vring_enable(&mut self, queue: usize, enable: bool) -> vhost::Result<()> {
        self.req(Msg::SetVringEnable(queue, enable))
    }
    fn get_config(&mut self, offset: u32, size: u32) -> vhost::Result<Vec<u8>> {
        self.req(Msg::GetConfig(offset, size))?;
        let b = self.b.lock().unwrap();
        let mut c = b.config.clone();
        c.resize((offset + size) as usize, 0);
        Ok(c[offset as usize..].to_vec())
    }
    fn set_config(&mut self, offset: u32, data: &[u8]) -> vhost::Result<()> {
        self.req(Msg::SetConfig(offset, data.to_vec()))?;
        let mut b = self.b.lock().unwrap();
        let end = offset as usize + data.len();
        if b.config.len() < end {
            b.config.resize(end, 0);
        }
        b.config[offset as usize..end].copy_from_slice(data);
        Ok(())
    }
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
    fn peer_gone(&self) -> bool {
        self.b.lock().unwrap().dead
    }
}

/// Hands out fresh eventfds and records what it was asked for.
#[derive(Default)]
pub(super) struct Events(pub Arc<Mutex<Vec<(u16, u16)>>>);

impl QueueEventProvider for Events {
    fn queue_events(&mut self, queue: u16, vector: u16) -> std::io::Result<QueueEvents> {
        self.0.lock().unwrap().push((queue, vector));
        Ok(QueueEvents {
            kick: EventFd::new(libc::EFD_NONBLOCK)?,
            call: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }
}

const GUEST_BASE: u64 = 0x1_0000;
const HOST_BASE: u64 = 0x7f00_0000_0000;
const VERSION_1: u64 = 1 << 32;

fn table() -> MemoryTable {
    let file = Arc::new(File::open("/dev/null").unwrap());
    MemoryTable::new(vec![MemoryRegionInfo {
        guest_addr: GUEST_BASE,
        size: 0x10_0000,
        host_addr: HOST_BASE,
        file,
        file_offset: 0x2000,
    }])
    .unwrap()
}

struct Setup {
    b: Arc<Mutex<Backend>>,
    asked: Arc<Mutex<Vec<(u16, u16)>>>,
}

impl Setup {
    fn log(&self) -> Vec<(Msg, bool)> {
        std::mem::take(&mut self.b.lock().unwrap().log)
    }
    fn die_after(&self, n: usize) {
        self.b.lock().unwrap().die_after = Some(n);
    }
    /// The backend hangs at the next SET_MEM_TABLE: the receiver hears
    /// when it got there, the sender lets it go on.
    fn hang_at_mem_table(&self) -> (Receiver<()>, Sender<()>) {
        self.hang_at(|m| matches!(m, Msg::SetMemTable(_)))
    }
    /// The backend hangs at the next request `at` matches (see
    /// [`hang_at_mem_table`](Self::hang_at_mem_table)).
    fn hang_at(&self, at: fn(&Msg) -> bool) -> (Receiver<()>, Sender<()>) {
        let (reached_tx, reached) = channel();
        let (release, release_rx) = channel();
        self.b.lock().unwrap().hang = Some((at, reached_tx, release_rx));
        (reached, release)
    }
    /// How many kicks each ring's kick eventfd holds (read, so reset).
    fn kicks(&self) -> Vec<(usize, u64)> {
        let b = self.b.lock().unwrap();
        b.kicks
            .iter()
            .map(|(q, fd)| (*q, fd.read().unwrap_or(0)))
            .collect()
    }
}

fn device(
    kind: DeviceKind,
    features: u64,
    protocol: P,
) -> (Result<VhostUserDevice, VhostUserError>, Setup) {
    let b = Arc::new(Mutex::new(Backend {
        config: (1..=kind.config_len() as u8).collect(),
        ..Default::default()
    }));
    let events = Events::default();
    let asked = events.0.clone();
    let fake = Fake {
        b: b.clone(),
        features,
        protocol,
        queue_num: 4,
        need_reply: false,
    };
    let dev = VhostUserDevice::with_conn(
        Box::new(fake),
        "/run/test.sock".into(),
        DeviceOptions::new(kind),
        table(),
        Box::new(events),
    );
    (dev, Setup { b, asked })
}

/// A device with `options` over a fake backend offering
/// PROTOCOL_FEATURES, `protocol`, `queue_num` queues and `config`.
fn with_fake(
    options: DeviceOptions,
    protocol: P,
    queue_num: u64,
    config: Vec<u8>,
) -> (Result<VhostUserDevice, VhostUserError>, Arc<Mutex<Backend>>) {
    let b = Arc::new(Mutex::new(Backend {
        config,
        ..Default::default()
    }));
    let fake = Fake {
        b: b.clone(),
        features: VHOST_USER_F_PROTOCOL_FEATURES,
        protocol,
        queue_num,
        need_reply: false,
    };
    let dev = VhostUserDevice::with_conn(
        Box::new(fake),
        "/run/x.sock".into(),
        options,
        table(),
        Box::new(Events::default()),
    );
    (dev, b)
}

/// A device of `kind` connected to a fake backend that offers
/// PROTOCOL_FEATURES and every protocol feature the frontend uses.
fn connected(kind: DeviceKind) -> (VhostUserDevice, Setup) {
    let (dev, s) = device(kind, VHOST_USER_F_PROTOCOL_FEATURES, all_protocol());
    (dev.unwrap(), s)
}

fn all_protocol() -> P {
    P::REPLY_ACK | P::MQ | P::CONFIG | P::RESET_DEVICE | P::CONFIGURE_MEM_SLOTS | P::LOG_SHMFD
}

fn queue(index: u16, gpa: u64) -> QueueConfig {
    QueueConfig {
        index,
        size: 64,
        desc_table: gpa,
        avail_ring: gpa + 0x400,
        used_ring: gpa + 0x800,
        msix_vector: index + 1,
    }
}

fn no_reply(log: &[(Msg, bool)]) -> Vec<Msg> {
    log.iter()
        .map(|(m, nr)| {
            assert!(!nr, "{m:?} with NEED_REPLY");
            m.clone()
        })
        .collect()
}

#[test]
fn handshake_negotiates_what_both_sides_support() {
    let features = VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES | (1 << 9);
    let (dev, s) = device(DeviceKind::Block, features, all_protocol());
    let dev = dev.unwrap();
    let wanted = P::REPLY_ACK | P::MQ | P::CONFIG | P::RESET_DEVICE | P::CONFIGURE_MEM_SLOTS;
    assert_eq!(
        no_reply(&s.log()),
        vec![
            Msg::SetOwner,
            Msg::GetFeatures,
            Msg::GetProtocolFeatures,
            Msg::SetProtocolFeatures(wanted.bits()),
            Msg::GetQueueNum,
            Msg::GetConfig(0, 60),
        ]
    );
    assert_eq!(dev.features(), VERSION_1 | (1 << 9));
    assert_eq!(dev.protocol_features(), wanted);
    assert_eq!((dev.device_type(), dev.num_queues()), (2, 1));
    assert_eq!(dev.max_queue_size(), 256);
    assert_eq!(dev.state(), DeviceState::Ready);
}

#[test]
fn kinds_have_their_ids_and_defaults() {
    for (kind, ty, queues, len) in [
        (DeviceKind::Net, 1, 2, 12),
        (DeviceKind::Block, 2, 1, 60),
        (DeviceKind::Fs, 26, 2, 40),
    ] {
        assert_eq!(kind.device_type(), ty);
        assert_eq!(kind.default_queues(), queues);
        assert_eq!(kind.config_len(), len);
        assert!(kind.default_queue_size().is_power_of_two());
    }
}

#[test]
fn generic_kinds_have_their_ids_and_defaults() {
    for (kind, ty, queues, vmm, len) in [
        (DeviceKind::Vsock, 19, 3, 1, 8),
        (DeviceKind::Rng, 4, 1, 0, 0),
        (DeviceKind::Console, 3, 2, 0, 12),
        (DeviceKind::Other(42), 42, 1, 0, 0),
    ] {
        assert_eq!(kind.device_type(), ty);
        assert_eq!(DeviceKind::from_device_type(ty), kind);
        assert_eq!((kind.default_queues(), kind.vmm_queues()), (queues, vmm));
        assert_eq!(kind.config_len(), len);
    }
    assert_eq!(DeviceKind::from_device_type(26), DeviceKind::Fs);
}

/// virtio-vsock: the config comes from GET_CONFIG (8 bytes, the cid), the
/// backend is asked for 2 queues, and of the driver's 3 rings only RX and
/// TX go to it: the event queue stays with the VMM.
#[test]
fn vsock_keeps_its_event_queue_and_reads_the_cid_from_the_backend() {
    let (mut dev, s) = connected(DeviceKind::Vsock);
    let log = no_reply(&s.log());
    assert!(log.contains(&Msg::GetConfig(0, 8)), "{log:?}");
    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(cid, [1, 2, 3, 4, 5, 6, 7, 8], "the backend's config");
    assert_eq!((dev.device_type(), dev.num_queues()), (19, 3));
    dev.activate(
        VERSION_1,
        vec![
            queue(0, GUEST_BASE),
            queue(1, GUEST_BASE + 0x1000),
            queue(2, GUEST_BASE + 0x2000),
        ],
    )
    .unwrap();
    let rings: Vec<usize> = s
        .log()
        .into_iter()
        .filter_map(|(m, _)| match m {
            Msg::SetVringNum(q, _) => Some(q),
            _ => None,
        })
        .collect();
    assert_eq!(rings, [0, 1], "the event queue went to the backend");
    assert_eq!(*s.asked.lock().unwrap(), vec![(0, 1), (1, 2)]);
    // A reset stops the backend's two rings only.
    dev.reset();
    let stopped: Vec<Msg> = s.log().into_iter().map(|(m, _)| m).collect();
    assert_eq!(
        stopped,
        [Msg::GetVringBase(1), Msg::GetVringBase(0), Msg::ResetDevice]
    );
}

/// A backend offering fewer queues than the device has is fine as long
/// as it serves those the VMM does not keep.
#[test]
fn vsock_needs_only_the_backends_queues() {
    let (dev, _) = with_fake(DeviceOptions::new(DeviceKind::Vsock), P::MQ, 2, Vec::new());
    assert_eq!(dev.unwrap().num_queues(), 3);
}

/// A generic device's configuration is as long as its options say: none
/// (no GET_CONFIG at all) or the size asked for.
#[test]
fn a_generic_device_reads_the_config_size_it_was_given() {
    for (len, asked) in [(0usize, None), (16, Some(Msg::GetConfig(0, 16)))] {
        let mut options = DeviceOptions::new(DeviceKind::Other(42));
        options.config = vec![0; len];
        let (dev, b) = with_fake(options, P::CONFIG, 1, (1..=16).collect());
        let dev = dev.unwrap();
        let got = b
            .lock()
            .unwrap()
            .log
            .iter()
            .find(|(m, _)| matches!(m, Msg::GetConfig(..)))
            .map(|(m, _)| m.clone());
        assert_eq!(got, asked);
        let mut buf = [0xffu8; 2];
        dev.read_config(0, &mut buf);
        assert_eq!(buf, if len == 0 { [0, 0] } else { [1, 2] });
        assert_eq!(dev.device_type(), 42);
    }
}

#[test]
fn activation_sends_every_ring_message_with_need_reply() {
    let features = VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES | (1 << 9) | (1 << 6);
    let (dev, s) = device(DeviceKind::Fs, features, all_protocol());
    let mut dev = dev.unwrap();
    s.log();
    // The guest acks one bit the backend never offered (bit 3).
    let acked = VERSION_1 | (1 << 9) | (1 << 3);
    dev.activate(
        acked,
        vec![queue(0, GUEST_BASE), queue(1, GUEST_BASE + 0x1000)],
    )
    .unwrap();
    let log = s.log();
    assert!(log.iter().all(|(_, nr)| *nr), "{log:?}");
    let msgs: Vec<Msg> = log.into_iter().map(|(m, _)| m).collect();
    let mut want = vec![
        Msg::SetFeatures(VERSION_1 | (1 << 9) | VHOST_USER_F_PROTOCOL_FEATURES),
        Msg::SetMemTable(vec![(GUEST_BASE, 0x10_0000, HOST_BASE, 0x2000)]),
    ];
    for (q, off) in [(0usize, 0u64), (1, 0x1000)] {
        let h = HOST_BASE + off;
        want.extend([
            Msg::SetVringNum(q, 64),
            Msg::SetVringAddr(q, h, h + 0x400, h + 0x800),
            Msg::SetVringBase(q, 0),
            Msg::SetVringCall(q),
            Msg::SetVringKick(q),
            Msg::SetVringEnable(q, true),
        ]);
    }
    assert_eq!(msgs, want);
    assert_eq!(*s.asked.lock().unwrap(), vec![(0, 1), (1, 2)]);
    assert_eq!(dev.state(), DeviceState::Active);
    assert!(!dev.needs_reset());

    // Reset stops both rings, then RESET_DEVICE; acks stop until the next
    // SET_FEATURES.
    dev.reset();
    let log = s.log();
    assert_eq!(
        log,
        vec![
            (Msg::GetVringBase(1), true),
            (Msg::GetVringBase(0), true),
            (Msg::ResetDevice, true),
        ]
    );
    assert_eq!(dev.state(), DeviceState::Ready);
    dev.reset();
    assert!(s.log().is_empty(), "a second reset sends nothing");
}

/// With INFLIGHT_SHMFD offered, an activation asks the backend for an
/// in-flight region and hands it back before the rings start; a backend
/// that comes back gets the same region again (no new GET) before its
/// rings, which still start at the used index; a driver reset drops the
/// region, and the next activation asks for a new one.
#[test]
fn the_inflight_region_goes_to_every_backend_of_an_activation() {
    use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
    let fake = |b: &Arc<Mutex<Backend>>| Fake {
        b: b.clone(),
        features: VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES,
        protocol: all_protocol() | P::INFLIGHT_SHMFD,
        queue_num: 4,
        need_reply: false,
    };
    let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
    file.set_len(0x10_0000).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
        GuestAddress(GUEST_BASE),
        0x10_0000,
        Some(FileOffset::new(file, 0)),
    )])
    .unwrap();
    let b = Arc::new(Mutex::new(Backend::default()));
    let mut options = DeviceOptions::new(DeviceKind::Block);
    options.reconnect = true;
    let (queues, size) = (options.queues as u16, options.queue_size);
    let mut dev = VhostUserDevice::with_conn(
        Box::new(fake(&b)),
        "/run/test.sock".into(),
        options,
        MemoryTable::from_guest_memory(&mem).unwrap(),
        Box::new(Events::default()),
    )
    .unwrap();
    let log = |b: &Arc<Mutex<Backend>>| -> Vec<Msg> {
        std::mem::take(&mut b.lock().unwrap().log)
            .into_iter()
            .map(|(m, _)| m)
            .collect()
    };
    // The messages after SET_MEM_TABLE, up to the first ring's.
    let after_mem_table = |msgs: &[Msg]| -> Vec<Msg> {
        let at = msgs
            .iter()
            .position(|m| matches!(m, Msg::SetMemTable(_)))
            .expect("SET_MEM_TABLE sent");
        msgs[at + 1..]
            .iter()
            .take_while(|m| !matches!(m, Msg::SetVringNum(..)))
            .cloned()
            .collect()
    };
    log(&b);
    dev.activate(VERSION_1, vec![queue(0, GUEST_BASE)]).unwrap();
    assert_eq!(
        after_mem_table(&log(&b)),
        [
            Msg::GetInflightFd(queues, size),
            Msg::SetInflightFd(4096, queues, size)
        ]
    );

    // Three requests completed; the backend dies and a new one comes.
    mem.write_obj(3u16, GuestAddress(GUEST_BASE + 0x800 + 2))
        .unwrap();
    b.lock().unwrap().dead = true;
    assert_eq!(dev.check_connection(), DeviceState::Reconnecting);
    let b2 = Arc::new(Mutex::new(Backend::default()));
    dev.reconnector().replay(Box::new(fake(&b2))).unwrap();
    let msgs = log(&b2);
    assert_eq!(
        after_mem_table(&msgs),
        [Msg::SetInflightFd(4096, queues, size)],
        "{msgs:?}"
    );
    assert!(msgs.contains(&Msg::SetVringBase(0, 3)), "{msgs:?}");

    // A driver reset: the next activation gets a new region.
    dev.reset();
    log(&b2);
    dev.activate(VERSION_1, vec![queue(0, GUEST_BASE)]).unwrap();
    assert_eq!(
        after_mem_table(&log(&b2)),
        [
            Msg::GetInflightFd(queues, size),
            Msg::SetInflightFd(4096, queues, size)
        ]
    );
}

#[test]
fn without_reply_ack_or_protocol_features() {
    let (dev, s) = device(
        DeviceKind::Block,
        VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES,
        P::CONFIG,
    );
    let mut dev = dev.unwrap();
    s.log();
    dev.activate(VERSION_1, vec![queue(0, GUEST_BASE)]).unwrap();
    let msgs = no_reply(&s.log());
    assert!(msgs.contains(&Msg::SetVringEnable(0, true)));

    // No PROTOCOL_FEATURES: no protocol messages, no SET_VRING_ENABLE
    // (rings start enabled), a local config.
    let (dev, s) = device(DeviceKind::Block, VERSION_1, all_protocol());
    let mut dev = dev.unwrap();
    assert_eq!(no_reply(&s.log()), vec![Msg::SetOwner, Msg::GetFeatures]);
    dev.activate(VERSION_1, vec![queue(0, GUEST_BASE)]).unwrap();
    let msgs = no_reply(&s.log());
    assert_eq!(msgs[0], Msg::SetFeatures(VERSION_1));
    assert_eq!(msgs.len(), 7);
    assert!(!msgs.iter().any(|m| matches!(m, Msg::SetVringEnable(..))));
    // Without RESET_DEVICE: RESET_OWNER and a new handshake.
    dev.reset();
    assert_eq!(
        no_reply(&s.log()),
        vec![
            Msg::GetVringBase(0),
            Msg::ResetOwner,
            Msg::SetOwner,
            Msg::GetFeatures
        ]
    );
}

#[test]
fn config_goes_through_the_backend_with_config() {
    let (dev, s) = device(DeviceKind::Block, VHOST_USER_F_PROTOCOL_FEATURES, P::CONFIG);
    let mut dev = dev.unwrap();
    // The copy a driver reads was taken at connect.
    assert!(s.log().iter().any(|(m, _)| *m == Msg::GetConfig(0, 60)));
    let mut buf = [0u8; 4];
    dev.read_config(8, &mut buf);
    assert_eq!(buf, [9, 10, 11, 12]);
    dev.write_config(20, &[0xaa, 0xbb]);
    assert_eq!(
        no_reply(&s.log()),
        vec![Msg::SetConfig(20, vec![0xaa, 0xbb])],
        "a read waits for no backend; a write goes out"
    );
    dev.read_config(20, &mut buf);
    assert_eq!(buf, [0xaa, 0xbb, 23, 24]);
    // Past the end reads zeros; out-of-range writes are dropped.
    dev.read_config(58, &mut buf);
    assert_eq!(buf, [59, 60, 0, 0]);
    dev.read_config(u64::MAX, &mut buf);
    assert_eq!(buf, [0; 4]);
    s.log();
    dev.write_config(59, &[1, 2]);
    dev.write_config(u64::MAX, &[1]);
    assert!(s.log().is_empty());
}

#[test]
fn config_without_the_config_feature_is_local() {
    let (dev, s) = device(
        DeviceKind::Net,
        VHOST_USER_F_PROTOCOL_FEATURES,
        P::REPLY_ACK,
    );
    let mut dev = dev.unwrap();
    s.log();
    let mut buf = [0xffu8; 2];
    dev.read_config(0, &mut buf);
    assert_eq!(buf, [0, 0]);
    dev.write_config(0, &[0x52, 0x54]);
    dev.read_config(0, &mut buf);
    assert_eq!(buf, [0x52, 0x54]);
    assert!(s.log().is_empty());
}

#[test]
fn mq_backend_with_too_few_queues_is_refused() {
    let (dev, _) = with_fake(DeviceOptions::new(DeviceKind::Net), P::MQ, 1, Vec::new());
    let err = dev.unwrap_err();
    assert!(matches!(
        err,
        VhostUserError::QueueCount {
            offered: 1,
            wanted: 2
        }
    ));
    assert!(!err.is_disconnect());
}

#[test]
fn a_ring_outside_guest_memory_fails_activation_but_not_the_device() {
    let (mut dev, s) = connected(DeviceKind::Block);
    s.log();
    let err = dev.activate(0, vec![queue(0, 0x10)]).unwrap_err();
    let inner = err.0.downcast_ref::<VhostUserError>().unwrap();
    assert!(matches!(
        inner,
        VhostUserError::RingAddress {
            queue: 0,
            addr: 0x10,
            ..
        }
    ));
    assert!(!dev.needs_reset());
    assert_eq!(dev.state(), DeviceState::Ready);
    dev.reset();
    let log: Vec<Msg> = s.log().into_iter().map(|(m, _)| m).collect();
    assert_eq!(log.last(), Some(&Msg::ResetDevice));
    assert!(!log.iter().any(|m| matches!(m, Msg::GetVringBase(_))));
}

#[test]
fn a_backend_that_dies_mid_activation_fails_the_device_once() {
    let (mut dev, s) = connected(DeviceKind::Fs);
    s.log();
    // Dies at the second queue's SET_VRING_ADDR.
    s.die_after(9);
    let err = dev
        .activate(0, vec![queue(0, GUEST_BASE), queue(1, GUEST_BASE)])
        .unwrap_err();
    let inner = err.0.downcast_ref::<VhostUserError>().unwrap();
    assert!(matches!(inner, VhostUserError::SetVringAddr(_)), "{inner}");
    assert!(inner.is_disconnect());
    assert_eq!(dev.state(), DeviceState::Failed);
    assert!(dev.needs_reset());
    // Nothing more reaches the (dead) socket, nothing panics.
    s.log();
    let mut buf = [0u8; 4];
    dev.read_config(0, &mut buf);
    dev.write_config(0, &[1]);
    dev.queue_notify(0);
    dev.reset();
    assert!(dev.activate(0, vec![queue(0, GUEST_BASE)]).is_err());
    assert!(s.log().is_empty());
    assert_eq!(dev.state(), DeviceState::Failed);
}

#[test]
fn idle_death_is_found_by_check_connection() {
    let (mut dev, s) = connected(DeviceKind::Block);
    assert_eq!(dev.check_connection(), DeviceState::Ready);
    s.b.lock().unwrap().dead = true;
    assert_eq!(dev.check_connection(), DeviceState::Failed);
    assert!(dev.connection_fd().is_none());
}

#[test]
fn the_transport_sets_needs_reset_when_a_config_read_finds_the_backend_dead() {
    let (dev, s) = connected(DeviceKind::Block);
    let sink = Arc::new(CountingSink::default());
    let mut pci = VirtioPciDevice::new(dev, 2, sink).unwrap();
    pci.config_mut().set_bar_address(0, 0x80_0000_0000).unwrap();
    s.b.lock().unwrap().dead = true;
    let mut buf = [0u8; 4];
    pci.read_bar(0, 0x2000, &mut buf);
    assert_ne!(pci.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(pci.device().state(), DeviceState::Failed);
}

/// Deferred work, run when the test says (`run_all`) or on a thread.
#[derive(Default)]
struct Later(Mutex<Vec<Box<dyn FnOnce() + Send>>>);

impl Deferrer for Later {
    fn defer(&self, work: Box<dyn FnOnce() + Send>) {
        self.0.lock().unwrap().push(work);
    }
}

impl Later {
    fn run_all(&self) -> usize {
        let work = std::mem::take(&mut *self.0.lock().unwrap());
        let n = work.len();
        work.into_iter().for_each(|w| w());
        n
    }
}

/// Runs deferred work in order on its own thread, like the VMM's control
/// thread; each done is sent on `done`.
struct ControlThread(Mutex<Sender<Box<dyn FnOnce() + Send>>>);

impl Deferrer for ControlThread {
    fn defer(&self, work: Box<dyn FnOnce() + Send>) {
        let _ = self.0.lock().unwrap().send(work);
    }
}

impl ControlThread {
    fn start(done: Sender<()>) -> Arc<Self> {
        let (tx, rx) = channel::<Box<dyn FnOnce() + Send>>();
        std::thread::spawn(move || {
            for work in rx {
                work();
                let _ = done.send(());
            }
        });
        Arc::new(Self(Mutex::new(tx)))
    }
}

/// Checks that what was asked since `start` was answered while the backend
/// hung, then lets the backend go on and waits for the deferred request.
fn answered_at_once_then_release(start: Instant, release: &Sender<()>, done: &Receiver<()>) {
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    release.send(()).unwrap();
    done.recv_timeout(Duration::from_secs(10)).unwrap();
}

/// What the backend of a [`deferring`] device offers.
const DEFERRING_FEATURES: u64 = VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;

/// A device of `kind` whose requests run on a [`ControlThread`]; the
/// receiver gets one `()` per request done.
fn deferring(kind: DeviceKind) -> (VhostUserDevice, Setup, Receiver<()>) {
    let (dev, s) = device(kind, DEFERRING_FEATURES, all_protocol());
    let mut dev = dev.unwrap();
    let (done_tx, done) = channel();
    dev.defer_requests(ControlThread::start(done_tx));
    (dev, s, done)
}

#[test]
fn a_deferred_activation_leaves_the_device_readable_while_the_backend_hangs() {
    let (mut dev, s, done) = deferring(DeviceKind::Fs);
    s.log();
    let (reached, release) = s.hang_at_mem_table();
    let start = Instant::now();
    dev.activate(
        VERSION_1,
        vec![queue(0, GUEST_BASE), queue(1, GUEST_BASE + 0x1000)],
    )
    .unwrap();
    // The backend now hangs in the middle of the activation, on the
    // control thread; what a vCPU or the API asks is answered at once.
    reached.recv_timeout(Duration::from_secs(10)).unwrap();
    let mut buf = [0u8; 4];
    dev.read_config(0, &mut buf);
    assert_eq!(buf, [1, 2, 3, 4], "the configuration as last read");
    assert_eq!(dev.features(), VERSION_1);
    assert_eq!(dev.state(), DeviceState::Ready);
    assert_eq!(dev.check_connection(), DeviceState::Ready);
    assert!(!dev.needs_reset());
    answered_at_once_then_release(start, &release, &done);
    assert_eq!(dev.state(), DeviceState::Active);
    let log: Vec<Msg> = s.log().into_iter().map(|(m, _)| m).collect();
    assert_eq!(log.first(), Some(&Msg::SetFeatures(DEFERRING_FEATURES)));
    assert_eq!(log.last(), Some(&Msg::SetVringEnable(1, true)));
    assert!(
        !log.iter().any(|m| matches!(m, Msg::GetConfig(..))),
        "{log:?}"
    );
    // The driver ran on meanwhile and may have kicked a ring the backend
    // had not enabled: every ring is kicked once the activation is done.
    assert_eq!(s.kicks(), vec![(0, 1), (1, 1)]);
}

#[test]
fn a_deferred_reset_shows_the_old_status_until_the_rings_are_stopped() {
    let (dev, s, done) = deferring(DeviceKind::Block);
    let sink = Arc::new(CountingSink::default());
    let mut pci = VirtioPciDevice::new(dev, 2, sink).unwrap();
    pci.config_mut().set_bar_address(0, 0x80_0000_0000).unwrap();
    // The driver's steps: VERSION_1 acked, FEATURES_OK, a queue, DRIVER_OK.
    let status = |pci: &mut VirtioPciDevice<VhostUserDevice>| {
        let mut b = [0u8];
        pci.read_bar(0, 0x14, &mut b);
        b[0]
    };
    let ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    pci.write_bar(0, 0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
    pci.write_bar(0, 0x08, &1u32.to_le_bytes());
    pci.write_bar(0, 0x0c, &1u32.to_le_bytes());
    pci.write_bar(0, 0x14, &[ok & !STATUS_DRIVER_OK]);
    pci.write_bar(0, 0x16, &0u16.to_le_bytes());
    pci.write_bar(0, 0x18, &64u16.to_le_bytes());
    pci.write_bar(0, 0x20, &GUEST_BASE.to_le_bytes());
    pci.write_bar(0, 0x28, &(GUEST_BASE + 0x400).to_le_bytes());
    pci.write_bar(0, 0x30, &(GUEST_BASE + 0x800).to_le_bytes());
    pci.write_bar(0, 0x1c, &1u16.to_le_bytes());
    pci.write_bar(0, 0x14, &[ok]);
    done.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(pci.device().state(), DeviceState::Active);
    s.log();

    // The backend hangs stopping the ring: the driver's reset returns at
    // once, and its status reads as before until the reset is done.
    let (reached, release) = s.hang_at(|m| matches!(m, Msg::GetVringBase(_)));
    let start = Instant::now();
    pci.write_bar(0, 0x14, &[0]);
    reached.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(status(&mut pci), ok, "reset in progress");
    assert!(pci.device().reset_pending());
    let mut buf = [0u8; 4];
    pci.read_bar(0, 0x2000, &mut buf);
    answered_at_once_then_release(start, &release, &done);
    assert!(!pci.device().reset_pending());
    assert_eq!(status(&mut pci), 0, "reset done");
    assert_eq!(pci.device().state(), DeviceState::Ready);
    let log: Vec<Msg> = s.log().into_iter().map(|(m, _)| m).collect();
    assert_eq!(log, vec![Msg::GetVringBase(0), Msg::ResetDevice]);
}

#[test]
fn a_deferred_activation_fails_the_device_or_yields_to_a_reset() {
    let (mut dev, s) = connected(DeviceKind::Block);
    let later = Arc::new(Later::default());
    dev.defer_requests(later.clone());
    s.log();
    // A reset before the activation ran: the activation is skipped, the
    // reset sends nothing.
    dev.activate(0, vec![queue(0, GUEST_BASE)]).unwrap();
    dev.reset();
    assert!(dev.reset_pending());
    assert_eq!(later.run_all(), 2);
    assert!(!dev.reset_pending());
    assert!(s.log().is_empty());
    assert_eq!(dev.state(), DeviceState::Ready);
    // A ring outside guest memory (no disconnect): the device needs a
    // reset, which clears it.
    dev.activate(0, vec![queue(0, GUEST_BASE + 0x10_0000)])
        .unwrap();
    assert!(!dev.needs_reset());
    later.run_all();
    assert!(dev.needs_reset());
    assert_eq!(dev.state(), DeviceState::Ready);
    dev.reset();
    assert!(!dev.needs_reset());
    // A backend that dies during it: failed.
    s.log();
    s.die_after(1);
    dev.activate(0, vec![queue(0, GUEST_BASE)]).unwrap();
    later.run_all();
    assert_eq!(dev.state(), DeviceState::Failed);
    assert!(dev.needs_reset());
}

#[test]
fn a_missing_socket_is_named() {
    let err = VhostUserDevice::connect(
        "/nonexistent/vu.sock",
        DeviceOptions::new(DeviceKind::Block),
        table(),
        Box::new(Events::default()),
    )
    .unwrap_err();
    assert!(matches!(err, VhostUserError::Connect { .. }));
    assert!(err.to_string().contains("/nonexistent/vu.sock"), "{err}");
    assert!(!err.is_disconnect());
}

#[test]
fn disconnect_classification() {
    let v = |e| vhost::Error::VhostUserProtocol(e);
    assert!(VhostUserError::SetVringKick(gone()).is_disconnect());
    assert!(VhostUserError::GetConfig(v(VuError::PartialMessage)).is_disconnect());
    assert!(VhostUserError::Failed.is_disconnect());
    assert!(!VhostUserError::SetConfig(v(VuError::BackendInternalError)).is_disconnect());
    assert!(!VhostUserError::MemoryRegionCount(0).is_disconnect());
    assert!(MemoryTable::new(Vec::new()).is_err());
}

#[test]
fn memory_table_translates_within_one_region() {
    let t = table();
    assert_eq!(t.translate(GUEST_BASE, 16), Some(HOST_BASE));
    assert_eq!(
        t.translate(GUEST_BASE + 0xf_fff0, 16),
        Some(HOST_BASE + 0xf_fff0)
    );
    assert_eq!(t.translate(GUEST_BASE + 0xf_fff1, 16), None);
    assert_eq!(t.translate(GUEST_BASE - 1, 1), None);
    assert_eq!(t.translate(u64::MAX, 2), None);
}

#[test]
fn a_backend_that_never_replies_is_cut_off_at_the_deadline() {
    use std::os::unix::net::UnixStream;
    // The peer accepts and never answers (the vhost crate would retry a
    // timed-out receive for ever).
    let (ours, peer) = UnixStream::pair().unwrap();
    let mut conn = TimedFrontend::with_timeout(
        ours,
        "/test/silent.sock".into(),
        1,
        Duration::from_millis(200),
    );
    let start = Instant::now();
    let err = VhostUserError::GetFeatures(VhostUserConn::get_features(&mut conn).unwrap_err());
    assert!(err.is_disconnect(), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(200));
    // The connection is dead from then on; nothing waits again.
    assert!(VhostUserConn::set_owner(&mut conn).is_err());
    drop(peer);
}
