//! Helpers shared by the `net` test modules: a namespace with a tap
//! and our `vhost-net-daemon` on it, frames tagged so each test finds its
//! own among whatever else crosses, and checks that frames still cross.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vu_driver::fixture::{Daemon, TempDir};
use vu_driver::net::frame::{
    fold, internet_checksum, parse_udp, pattern, sum16, Mac, UdpFrame, UDP_FRAME_OVERHEAD,
};
use vu_driver::net::{NetClient, NetOptions, RxFrame, VirtioNetHdr};
use vu_driver::netns::{NetNs, PacketSocket};
use vu_driver::ours::vhost_net_daemon;

/// How long one frame or command may take.
pub const T: Duration = Duration::from_secs(5);
/// The guest's MAC address (`--mac`).
pub const GUEST_MAC: Mac = [0x02, 0, 0, 0, 0, 0x10];
/// [`GUEST_MAC`] as the daemon's option takes it.
pub const GUEST_MAC_ARG: &str = "02:00:00:00:00:10";
/// The source of frames the host injects, the target of the guest's.
pub const HOST_MAC: Mac = [0x02, 0, 0, 0, 0, 0x20];
/// The tap's name in every test namespace.
pub const TAP: &str = "tap0";

/// A namespace with tap [`TAP`], the daemon serving it, and an AF_PACKET
/// socket on the tap's host side. The daemon is stopped (its log printed
/// if the test failed) and the namespace deleted on drop.
pub struct Rig {
    /// The daemon (declared first: stopped before the namespace goes).
    pub daemon: Daemon,
    /// The host side of the tap.
    pub pkt: PacketSocket,
    /// The namespace.
    pub ns: NetNs,
    _dir: TempDir,
}

/// A fresh namespace (IPv6 off, so the kernel sends nothing of its own on
/// the tap) with tap [`TAP`] (`multi_queue` for several pairs).
pub fn namespace(multi_queue: bool) -> NetNs {
    let ns = NetNs::new("vnd").unwrap();
    ns.disable_ipv6().unwrap();
    ns.sysctl("net.ipv4.conf.all.send_redirects", "0").unwrap();
    ns.sysctl("net.ipv4.conf.default.send_redirects", "0")
        .unwrap();
    ns.add_tap(TAP, multi_queue, None).unwrap();
    ns
}

/// A daemon on a single-queue tap: `--tap tap0 --mac GUEST_MAC` and `args`.
pub fn rig(args: &[&str]) -> Rig {
    rig_with(false, args)
}

/// A daemon on a tap made with or without `multi_queue`.
pub fn rig_with(multi_queue: bool, args: &[&str]) -> Rig {
    let ns = namespace(multi_queue);
    let dir = TempDir::new("vnd").unwrap();
    let sock = dir.join("net.sock");
    let mut all = vec!["--tap", TAP, "--mac", GUEST_MAC_ARG];
    all.extend_from_slice(args);
    let daemon = vhost_net_daemon(&ns, &sock, &all).unwrap();
    let pkt = ns.packet_socket(TAP).unwrap();
    Rig {
        daemon,
        pkt,
        ns,
        _dir: dir,
    }
}

impl Rig {
    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        self.daemon.socket()
    }

    /// A driver with `opts`.
    pub fn connect(&self, opts: &NetOptions) -> NetClient {
        NetClient::connect(self.socket(), opts).unwrap()
    }

    /// A driver with the default options.
    pub fn client(&self) -> NetClient {
        self.connect(&NetOptions::default())
    }

    /// Panics if the daemon exited.
    pub fn assert_alive(&mut self) {
        let exit = self.daemon.try_wait().unwrap();
        assert_eq!(exit, None, "daemon exited: {exit:?}");
    }

    /// Writes `frame` on the tap's host side: the daemon must read it.
    pub fn inject(&self, frame: &[u8]) {
        self.pkt.send(frame).unwrap();
    }

    /// Asserts that frames cross both ways on `pair` and that the daemon lives.
    pub fn assert_serves(&mut self, net: &mut NetClient, pair: u16) {
        self.assert_alive();
        let tag = unique_tag("serves");
        assert_tx(net, &self.pkt, pair, &tag);
        assert_rx(net, &self.pkt, pair, &tag);
        self.assert_alive();
    }
}

static NEXT_TAG: AtomicU32 = AtomicU32::new(0);

/// A tag no other frame of this process carries.
pub fn unique_tag(what: &str) -> String {
    format!("{what}-{}", NEXT_TAG.fetch_add(1, Ordering::Relaxed))
}

/// A UDP frame from `src` to `dst` of exactly `len` bytes whose payload
/// starts with `tag` and `;` (the rest is [`pattern`]). Panics if `len`
/// cannot hold the headers and the tag.
pub fn tagged(src: Mac, dst: Mac, tag: &str, len: usize) -> Vec<u8> {
    let mut payload = format!("{tag};").into_bytes();
    let room = len
        .checked_sub(UDP_FRAME_OVERHEAD + payload.len())
        .expect("frame long enough for the headers and the tag");
    payload.extend_from_slice(&pattern(room, tag.len() as u8));
    UdpFrame {
        src_mac: src,
        dst_mac: dst,
        ..UdpFrame::default()
    }
    .build(&payload)
}

/// A frame from the guest to the host of `len` bytes.
pub fn to_host(tag: &str, len: usize) -> Vec<u8> {
    tagged(GUEST_MAC, HOST_MAC, tag, len)
}

/// A frame from the host to the guest of `len` bytes.
pub fn to_guest(tag: &str, len: usize) -> Vec<u8> {
    tagged(HOST_MAC, GUEST_MAC, tag, len)
}

/// Whether `frame` is a UDP frame made by [`tagged`] with `tag`.
pub fn has_tag(frame: &[u8], tag: &str) -> bool {
    parse_udp(frame).is_some_and(|v| {
        v.payload.starts_with(tag.as_bytes()) && v.payload.get(tag.len()) == Some(&b';')
    })
}

/// The frame tagged `tag` as it arrives on the tap (panics after [`T`]).
pub fn tap_expect(pkt: &PacketSocket, tag: &str) -> Vec<u8> {
    pkt.recv_matching(T, |b| has_tag(b, tag))
        .unwrap()
        .unwrap_or_else(|| panic!("frame {tag:?} never reached the tap"))
}

/// Every frame that reaches the tap from the daemon before the one tagged
/// `tag` (panics if that one does not come within [`T`]).
pub fn tap_frames_before(pkt: &PacketSocket, tag: &str) -> Vec<Vec<u8>> {
    let mut before = Vec::new();
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = pkt.recv_matching(left, |_| true).unwrap();
        let frame = got.unwrap_or_else(|| {
            panic!(
                "frame {tag:?} never reached the tap ({} others did)",
                before.len()
            )
        });
        if has_tag(&frame, tag) {
            return before;
        }
        before.push(frame);
    }
}

/// Frames the driver receives on `pair` until one passes `last`; returns
/// them all, that one last (panics if it does not come within `timeout`).
pub fn driver_until(
    net: &mut NetClient,
    pair: u16,
    timeout: Duration,
    mut last: impl FnMut(&[u8]) -> bool,
) -> Vec<RxFrame> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match net.recv(pair, left) {
            Ok(f) => {
                let done = last(&f.1);
                got.push(f);
                if done {
                    return got;
                }
            }
            Err(e) if e.is_timeout() => panic!(
                "the awaited frame never reached the driver on pair {pair}; got {} others",
                got.len()
            ),
            Err(e) => panic!("RX on pair {pair}: {e}"),
        }
    }
}

/// The frame tagged `tag` as the driver receives it on `pair`, skipping
/// others (panics after [`T`]).
pub fn driver_expect(net: &mut NetClient, pair: u16, tag: &str) -> RxFrame {
    driver_until(net, pair, T, |f| has_tag(f, tag))
        .pop()
        .expect("at least the awaited frame")
}

/// Every frame the driver receives on `pair` before the one tagged `tag`.
pub fn driver_frames_before(net: &mut NetClient, pair: u16, tag: &str) -> Vec<RxFrame> {
    let mut all = driver_until(net, pair, T, |f| has_tag(f, tag));
    all.pop();
    all
}

/// Sends a 100-byte frame tagged `tag` on `pair` and checks it arrives on
/// the tap byte for byte.
pub fn assert_tx(net: &mut NetClient, pkt: &PacketSocket, pair: u16, tag: &str) {
    let frame = to_host(tag, 100);
    net.send(pair, &VirtioNetHdr::plain(), &frame)
        .unwrap_or_else(|e| panic!("TX on pair {pair}: {e}"));
    assert!(tap_expect(pkt, tag) == frame, "frame {tag:?} changed on TX");
}

/// Injects a 100-byte frame tagged `tag` on the tap and checks the driver
/// receives it on `pair`, byte for byte, with a plain header.
pub fn assert_rx(net: &mut NetClient, pkt: &PacketSocket, pair: u16, tag: &str) {
    let frame = to_guest(tag, 100);
    pkt.send(&frame).unwrap();
    let (hdr, got) = driver_expect(net, pair, tag);
    assert!(got == frame, "frame {tag:?} changed on RX");
    assert_eq!(hdr.gso_type, 0, "{hdr:?}");
    assert!(hdr.num_buffers >= 1, "{hdr:?}");
}

/// Offsets in an Ethernet + IPv4 + TCP frame.
pub const TCP_OFFSET: usize = 14 + 20;
/// Headers before a TCP payload.
pub const TCP_HDRS: usize = TCP_OFFSET + 20;

/// An Ethernet + IPv4 + TCP (ACK|PSH) frame around `payload`, with the TCP
/// checksum left partial (pseudo-header sum) and a header asking for
/// TCPv4 segmentation into `mss`-byte segments (`gso_type` TCPV4, or
/// NONE when `mss` is 0).
pub fn tcp_frame(
    src_mac: Mac,
    dst_mac: Mac,
    src_ip: [u8; 4],
    dst_ip: [u8; 4],
    payload: &[u8],
    mss: u16,
) -> (VirtioNetHdr, Vec<u8>) {
    let tcp_len = 20 + payload.len();
    let ip_len = u16::try_from(20 + tcp_len).expect("fits an IPv4 datagram");
    let mut f = Vec::with_capacity(TCP_HDRS + payload.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src_ip);
    f.extend_from_slice(&dst_ip);
    let ip_csum = internet_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&ip_csum.to_be_bytes());
    f.extend_from_slice(&40001u16.to_be_bytes());
    f.extend_from_slice(&5002u16.to_be_bytes());
    f.extend_from_slice(&1000u32.to_be_bytes()); // seq
    f.extend_from_slice(&1u32.to_be_bytes()); // ack
    f.extend_from_slice(&[0x50, 0x18]); // 20-byte header, ACK|PSH
    f.extend_from_slice(&65535u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    f.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src_ip);
    pseudo.extend_from_slice(&dst_ip);
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    let partial = fold(sum16(&pseudo, 0));
    f[TCP_OFFSET + 16..TCP_OFFSET + 18].copy_from_slice(&partial.to_be_bytes());
    let mut hdr = VirtioNetHdr::needs_csum(TCP_OFFSET as u16, 16);
    if mss > 0 {
        hdr.gso_type = 1; // VIRTIO_NET_HDR_GSO_TCPV4
        hdr.gso_size = mss;
        hdr.hdr_len = TCP_HDRS as u16;
    }
    (hdr, f)
}

/// The header and frame as one TX chain's bytes.
pub fn chain_bytes(hdr: &VirtioNetHdr, frame: &[u8]) -> Vec<u8> {
    let mut v = hdr.to_bytes().to_vec();
    v.extend_from_slice(frame);
    v
}
