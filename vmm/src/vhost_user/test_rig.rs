//! A test rig: real frontends and transports whose backend is a fake over
//! a socketpair (closing the peer is a backend dying), for the watcher's
//! and the activation thread's tests.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::pci::{NullMsiSink, PciAddress};
use devices::vhost_user::{
    MemoryRegionInfo, MemoryTable, QueueEventProvider, QueueEvents, VhostUserConn, VhostUserDevice,
};
use devices::virtio_pci::VirtioPciDevice;
use vhost::vhost_user::message::VhostUserInflight;
use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost::{VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

use crate::cli::parse_disk;
use crate::vhost_user::VhostUserPci;

const VERSION_1: u64 = 1 << 32;

/// A backend that answers the handshake (no protocol features) and whose
/// socket is one end of a socketpair; each of `hangs` makes the first of
/// its request say it arrived, then wait (a backend that hangs).
struct Fake {
    sock: UnixStream,
    hangs: Vec<Hang>,
}

/// A hang at the request `at` ("SET_MEM_TABLE", "GET_VRING_BASE"): the
/// backend tells `reached` and waits for `release`.
pub(crate) struct Hang {
    pub at: &'static str,
    pub reached: Sender<()>,
    pub release: Receiver<()>,
}

impl Fake {
    fn maybe_hang(&mut self, request: &str) {
        if let Some(i) = self.hangs.iter().position(|h| h.at == request) {
            let hang = self.hangs.remove(i);
            let _ = hang.reached.send(());
            let _ = hang.release.recv();
        }
    }
}

impl VhostUserConn for Fake {
    fn set_need_reply(&mut self, _on: bool) {}
    fn set_owner(&mut self) -> vhost::Result<()> {
        Ok(())
    }
    fn reset_owner(&mut self) -> vhost::Result<()> {
        Ok(())
    }
    fn reset_device(&mut self) -> vhost::Result<()> {
        Ok(())
    }
    fn get_features(&mut self) -> vhost::Result<u64> {
        Ok(VERSION_1)
    }
    fn set_features(&mut self, _features: u64) -> vhost::Result<()> {
        Ok(())
    }
    fn get_protocol_features(&mut self) -> vhost::Result<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::empty())
    }
    fn set_protocol_features(&mut self, _f: VhostUserProtocolFeatures) -> vhost::Result<()> {
        Ok(())
    }
    fn get_queue_num(&mut self) -> vhost::Result<u64> {
        Ok(1)
    }
    fn set_mem_table(&mut self, _regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()> {
        self.maybe_hang("SET_MEM_TABLE");
        Ok(())
    }
    fn get_inflight_fd(
        &mut self,
        _num_queues: u16,
        _queue_size: u16,
    ) -> vhost::Result<(VhostUserInflight, std::fs::File)> {
        // It offers no INFLIGHT_SHMFD, as the vhost crate's frontend would say.
        Err(vhost::Error::VhostUserProtocol(
            vhost::vhost_user::Error::InactiveOperation(VhostUserProtocolFeatures::INFLIGHT_SHMFD),
        ))
    }
    fn set_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
        _file: &std::fs::File,
    ) -> vhost::Result<()> {
        Err(vhost::Error::VhostUserProtocol(
            vhost::vhost_user::Error::InactiveOperation(VhostUserProtocolFeatures::INFLIGHT_SHMFD),
        ))
    }
    fn set_vring_num(&mut self, _queue: usize, _num: u16) -> vhost::Result<()> {
        Ok(())
    }
    fn set_vring_addr(&mut self, _queue: usize, _config: &VringConfigData) -> vhost::Result<()> {
        Ok(())
    }
    fn set_vring_base(&mut self, _queue: usize, _base: u16) -> vhost::Result<()> {
        Ok(())
    }
    fn get_vring_base(&mut self, _queue: usize) -> vhost::Result<u32> {
        self.maybe_hang("GET_VRING_BASE");
        Ok(0)
    }
    fn set_vring_call(&mut self, _queue: usize, _fd: &EventFd) -> vhost::Result<()> {
        Ok(())
    }
    fn set_vring_kick(&mut self, _queue: usize, _fd: &EventFd) -> vhost::Result<()> {
        Ok(())
    }
    fn set_vring_enable(&mut self, _queue: usize, _enable: bool) -> vhost::Result<()> {
        Ok(())
    }
    fn get_config(&mut self, _offset: u32, size: u32) -> vhost::Result<Vec<u8>> {
        Ok(vec![0; size as usize])
    }
    fn set_config(&mut self, _offset: u32, _data: &[u8]) -> vhost::Result<()> {
        Ok(())
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.sock.as_raw_fd())
    }
    fn peer_gone(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: recv writes at most 1 byte into `byte`, which outlives the
        // call; MSG_PEEK | MSG_DONTWAIT neither consumes nor blocks.
        let n = unsafe {
            libc::recv(
                self.sock.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
    }
}

struct NoEvents;

impl QueueEventProvider for NoEvents {
    fn queue_events(&mut self, _queue: u16, _vector: u16) -> io::Result<QueueEvents> {
        Ok(QueueEvents {
            kick: EventFd::new(0)?,
            call: EventFd::new(0)?,
        })
    }
}

fn memory() -> MemoryTable {
    let file = tempfile_in_shm();
    MemoryTable::new(vec![MemoryRegionInfo {
        guest_addr: 0,
        size: 1 << 20,
        host_addr: 0x7000_0000_0000,
        file: Arc::new(file),
        file_offset: 0,
    }])
    .unwrap()
}

fn tempfile_in_shm() -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "vmm-watch-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::File::create(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

/// A plugged blk device whose backend is the returned peer; no
/// reconnect (`reconnect=off`).
pub(crate) fn device(slot: u8) -> (Arc<VhostUserPci>, UnixStream) {
    device_hanging(slot, Vec::new())
}

/// [`device`] with `reconnect=` as given.
pub(crate) fn device_reconnecting(slot: u8, reconnect: &str) -> (Arc<VhostUserPci>, UnixStream) {
    device_with(slot, Vec::new(), reconnect)
}

/// [`device`], its backend hanging where `hangs` say.
pub(crate) fn device_hanging(slot: u8, hangs: Vec<Hang>) -> (Arc<VhostUserPci>, UnixStream) {
    device_with(slot, hangs, "off")
}

fn device_with(slot: u8, hangs: Vec<Hang>, reconnect: &str) -> (Arc<VhostUserPci>, UnixStream) {
    let (sock, peer) = UnixStream::pair().unwrap();
    let config = parse_disk(&format!(
        "socket=/test/blk{slot}.sock,reconnect={reconnect}"
    ))
    .unwrap();
    let dev = VhostUserDevice::with_conn(
        Box::new(Fake { sock, hangs }),
        config.socket.clone(),
        crate::vhost_user::device_options(&config),
        memory(),
        Box::new(NoEvents),
    )
    .unwrap();
    assert!(dev.connection_fd().is_some());
    let transport = VirtioPciDevice::new(dev, 2, Arc::new(NullMsiSink)).unwrap();
    let plugged = VhostUserPci::new(
        config,
        PciAddress::slot(slot),
        Arc::new(Mutex::new(transport)),
    );
    (Arc::new(plugged), peer)
}

/// Polls `done` for up to 10 s.
pub(crate) fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}
