//! `NetClient` against an in-process loopback backend built on rust-vmm's
//! `vhost-user-backend`: what DPDK does not cover here (GET_CONFIG, the
//! control queue at index 2 * max_virtqueue_pairs, feature dependencies).
//! TX frames on pair k come back on RX of pair k, spread over as many
//! merged buffers as they need.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vhost::vhost_user::{Listener, VhostUserProtocolFeatures};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_net::*;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vu_driver::device::{VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1};
use vu_driver::net::frame::{Malformed, UdpFrame};
use vu_driver::net::{
    NetClient, NetConfig, NetOptions, RxLayout, VirtioNetHdr, NET_DRIVER_FEATURES,
};

const MAX_PAIRS: u16 = 2;
const CTRL: usize = 2 * MAX_PAIRS as usize;
const MAC: [u8; 6] = [0x02, 0, 0, 0xaa, 0xbb, 0xcc];

fn bit(b: u32) -> u64 {
    1 << b
}

/// One chain as the device sees it: head, readable bytes, writable (addr, len).
type Chain = (u16, Vec<u8>, Vec<(GuestAddress, u32)>);

struct Loopback {
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    acked: u64,
}

impl Loopback {
    fn mem(&self) -> GuestMemoryMmap {
        (*self.mem.as_ref().expect("memory table").memory()).clone()
    }

    /// Every chain on `vring`: (head, readable bytes, writable (addr, len)).
    fn drain(&self, vring: &VringRwLock) -> Vec<Chain> {
        let mem = self.mem();
        let mut out = Vec::new();
        let mut state = vring.get_mut();
        while let Some(chain) = state.get_queue_mut().pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let (mut r, mut w) = (Vec::new(), Vec::new());
            for d in chain {
                if d.is_write_only() {
                    w.push((d.addr(), d.len()));
                } else {
                    let mut b = vec![0u8; d.len() as usize];
                    mem.read_slice(&mut b, d.addr()).unwrap();
                    r.extend_from_slice(&b);
                }
            }
            out.push((head, r, w));
        }
        out
    }

    /// Puts `frame` (with a fresh header) into as many RX buffers as it needs.
    fn deliver(&self, rx: &VringRwLock, frame: &[u8]) {
        let mem = self.mem();
        let mut state = rx.get_mut();
        let mut used: Vec<(u16, u32)> = Vec::new();
        let mut hdr = VirtioNetHdr::plain().to_bytes().to_vec();
        let mut data = frame;
        let mut first = true;
        let mut num_buffers_at = None;
        while first || !data.is_empty() {
            let Some(chain) = state.get_queue_mut().pop_descriptor_chain(&mem) else {
                return; // No room: drop, like a real device.
            };
            let mut written = 0u32;
            for d in chain.clone() {
                let mut room = d.len() as usize;
                let mut at = d.addr();
                if first {
                    num_buffers_at = Some(at.0 + 10);
                    let n = hdr.len().min(room);
                    mem.write_slice(&hdr[..n], at).unwrap();
                    hdr.drain(..n);
                    room -= n;
                    at = GuestAddress(at.0 + n as u64);
                    written += n as u32;
                    first = false;
                }
                let n = data.len().min(room);
                mem.write_slice(&data[..n], at).unwrap();
                data = &data[n..];
                written += n as u32;
            }
            used.push((chain.head_index(), written));
        }
        let n = used.len() as u16;
        mem.write_slice(&n.to_le_bytes(), GuestAddress(num_buffers_at.unwrap()))
            .unwrap();
        for (head, len) in used {
            state.get_queue_mut().add_used(&mem, head, len).unwrap();
        }
    }

    fn ctrl_ack(&self, cmd: &[u8]) -> u8 {
        let ok = match (u32::from(cmd[0]), u32::from(cmd[1]), &cmd[2..]) {
            (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, [lo, hi]) => {
                (1..=MAX_PAIRS).contains(&u16::from_le_bytes([*lo, *hi]))
            }
            (VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC | VIRTIO_NET_CTRL_RX_ALLMULTI, [_]) => {
                self.acked & bit(VIRTIO_NET_F_CTRL_RX) != 0
            }
            _ => false,
        };
        if ok {
            VIRTIO_NET_OK as u8
        } else {
            VIRTIO_NET_ERR as u8
        }
    }
}

impl VhostUserBackendMut for Loopback {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        CTRL + 1
    }
    fn max_queue_size(&self) -> usize {
        256
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VHOST_USER_F_PROTOCOL_FEATURES
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_MTU)
            | bit(VIRTIO_NET_F_MQ)
            | bit(VIRTIO_NET_F_CTRL_VQ)
            | bit(VIRTIO_NET_F_CTRL_RX)
            // Offered without GUEST_CSUM, which it depends on: must not be acked.
            | bit(VIRTIO_NET_F_GUEST_TSO4)
    }
    fn acked_features(&mut self, features: u64) {
        self.acked = features;
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    }
    fn set_event_idx(&mut self, _enabled: bool) {}
    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut cfg = MAC.to_vec();
        cfg.extend_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        cfg.extend_from_slice(&MAX_PAIRS.to_le_bytes());
        cfg.extend_from_slice(&1500u16.to_le_bytes());
        cfg.resize(24, 0);
        cfg.get(offset as usize..(offset + size) as usize)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }
    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }
    fn handle_event(
        &mut self,
        q: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        let q = usize::from(q);
        let mem = self.mem();
        if q == CTRL {
            for (head, cmd, w) in self.drain(&vrings[q]) {
                let ack = self.ctrl_ack(&cmd);
                mem.write_slice(&[ack], w[0].0).unwrap();
                vrings[q].add_used(head, 1).unwrap();
            }
            vrings[q].signal_used_queue()?;
        } else if q % 2 == 1 {
            for (head, bytes, _) in self.drain(&vrings[q]) {
                vrings[q].add_used(head, 0).unwrap();
                if bytes.len() > 12 {
                    self.deliver(&vrings[q - 1], &bytes[12..]);
                }
            }
            vrings[q].signal_used_queue()?;
            vrings[q - 1].signal_used_queue()?;
        }
        Ok(())
    }
}

/// A socket path, removed on drop.
struct Sock(PathBuf);

impl Drop for Sock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A loopback backend serving one connection on a fresh socket.
fn serve(name: &str) -> Sock {
    let path = std::env::temp_dir().join(format!("vu-net-loop-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // Bound before the thread starts, so connect() never races it.
    let mut listener = Listener::from(UnixListener::bind(&path).unwrap());
    let backend = Arc::new(Mutex::new(Loopback {
        mem: None,
        acked: 0,
    }));
    std::thread::spawn(move || {
        let mut daemon = VhostUserDaemon::new(
            "net-loopback".into(),
            backend,
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .unwrap();
        daemon.start(&mut listener).unwrap();
        let _ = daemon.wait();
    });
    Sock(path)
}

#[test]
fn negotiation_config_and_control_queue() {
    let sock = serve("ctrl");
    let mut net = NetClient::connect(&sock.0, &NetOptions::default()).unwrap();
    for b in [
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_MQ,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_CTRL_RX,
    ] {
        assert!(net.has_feature(b), "feature {b}");
    }
    assert!(
        !net.has_feature(VIRTIO_NET_F_GUEST_TSO4),
        "GUEST_TSO4 without GUEST_CSUM must not be acked"
    );
    assert_eq!(
        *net.config(),
        NetConfig {
            mac: Some(MAC),
            status: Some(VIRTIO_NET_S_LINK_UP as u16),
            max_virtqueue_pairs: Some(MAX_PAIRS),
            mtu: Some(1500),
        }
    );
    assert_eq!(
        net.ctrl_queue_index(),
        Some(CTRL),
        "control queue after the device's last pair"
    );
    assert_eq!(net.ctrl_mq_set_pairs(2).unwrap(), VIRTIO_NET_OK as u8);
    assert_eq!(net.ctrl_mq_set_pairs(3).unwrap(), VIRTIO_NET_ERR as u8);
    assert_eq!(net.ctrl_mq_set_pairs(0).unwrap(), VIRTIO_NET_ERR as u8);
    assert_eq!(net.ctrl_rx_promisc(true).unwrap(), VIRTIO_NET_OK as u8);
    assert_eq!(net.ctrl_rx_allmulti(false).unwrap(), VIRTIO_NET_OK as u8);
    assert_eq!(net.ctrl_command(99, 0, &[]).unwrap(), VIRTIO_NET_ERR as u8);
}

#[test]
fn masked_features_are_not_acked() {
    let sock = serve("mask");
    let opts = NetOptions {
        feature_mask: NET_DRIVER_FEATURES & !bit(VIRTIO_NET_F_CTRL_RX) & !bit(VIRTIO_NET_F_MAC),
        ..NetOptions::default()
    };
    let mut net = NetClient::connect(&sock.0, &opts).unwrap();
    assert!(!net.has_feature(VIRTIO_NET_F_CTRL_RX));
    assert_eq!(
        net.config().mac,
        None,
        "MAC not negotiated: field not valid"
    );
    // The device refuses CTRL_RX commands it did not negotiate.
    assert_eq!(net.ctrl_rx_promisc(true).unwrap(), VIRTIO_NET_ERR as u8);
}

#[test]
fn loopback_on_two_pairs_with_small_merged_buffers() {
    let sock = serve("loop");
    let opts = NetOptions {
        pairs: 2,
        rx_layout: Some(RxLayout {
            buf_len: 128,
            descs_per_buf: 1,
            mergeable: true,
        }),
        ..NetOptions::default()
    };
    let mut net = NetClient::connect(&sock.0, &opts).unwrap();
    assert_eq!(net.ctrl_mq_set_pairs(2).unwrap(), 0);
    for pair in [0u16, 1] {
        for len in [64usize, 1500] {
            let f = UdpFrame::default().build_len(len, pair as u8 + len as u8);
            net.send(pair, &VirtioNetHdr::plain(), &f).unwrap();
            let (hdr, got) = net.recv(pair, Duration::from_secs(5)).unwrap();
            assert!(got == f, "pair {pair}, {len} bytes");
            assert_eq!(usize::from(hdr.num_buffers), (12 + len).div_ceil(128));
        }
    }
    // A frame that is only a header comes back as nothing; the TX buffer still returns.
    net.send_raw(0, &Malformed::ShorterThanNetHdr.chain_bytes())
        .unwrap();
    net.tx_flush(0, Duration::from_secs(5)).unwrap();
    assert!(net.try_recv(0).unwrap().is_none());
    assert!(matches!(
        net.send(2, &VirtioNetHdr::plain(), &[0; 60]),
        Err(vu_driver::net::NetError::NoSuchPair { pair: 2, pairs: 2 })
    ));
}
