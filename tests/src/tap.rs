//! The host side of a tap that a net daemon serves: queue descriptors
//! opened the way a management layer opens them (for `--tap-fd`), the link
//! as `ip` shows it, and one frame each way between a [`NetClient`] and the
//! tap ([`HostSide`]). The `assert_*` functions panic with what is wrong.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use crate::net::frame::{parse_udp, Mac, UdpFrame};
use crate::net::{NetClient, VirtioNetHdr};
use crate::netns::{NetNs, PacketSocket};

/// `TUNSETIFF` (linux/if_tun.h).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// A tap (layer 2) rather than a tun.
pub const IFF_TAP: i16 = 0x0002;
/// No packet-information prefix.
pub const IFF_NO_PI: i16 = 0x1000;
/// A `virtio_net_hdr` in front of each frame.
pub const IFF_VNET_HDR: i16 = 0x4000;
/// One of several queues.
pub const IFF_MULTI_QUEUE: i16 = 0x0100;
/// What a vhost-user net backend wants of each queue it is handed.
pub const QUEUE_FLAGS: i16 = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;

/// How long a frame may take to cross.
const WAIT: Duration = Duration::from_secs(5);

/// `struct ifreq` with the name and the flags member of the union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` inside `ns` and attaches it to tap `name` with
/// `flags` (creating the tap if it does not exist), as libvirt or Kata do
/// before they pass the descriptor to a backend. The descriptor has
/// close-on-exec set; hand it over with `process::inherit_fd_as`.
pub fn open_queue(ns: &NetNs, name: &str, flags: i16) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() > 15 {
        return Err(io::Error::other(format!("bad interface name {name:?}")));
    }
    ns.enter(|| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; 16],
            flags,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which
        // `req` is (40 bytes, `#[repr(C)]`), valid for the call.
        if unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from(f))
    })
    .map_err(io::Error::other)?
}

/// `ip -j link show NAME` in `ns` as JSON; None if there is no such link.
pub fn link(ns: &NetNs, name: &str) -> Option<serde_json::Value> {
    let out = ns.ip(&["-j", "link", "show", name]).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.get(0).cloned()
}

/// The names of every link in `ns` (`ip -n NS link`).
pub fn link_names(ns: &NetNs) -> Vec<String> {
    let out = ns.ip(&["-j", "link", "show"]).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v.as_array()
        .map(|links| {
            links
                .iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A UDP frame from `src` to `dst` carrying `payload`.
pub fn udp(src: Mac, dst: Mac, payload: &[u8]) -> Vec<u8> {
    UdpFrame {
        src_mac: src,
        dst_mac: dst,
        ..UdpFrame::default()
    }
    .build(payload)
}

/// Waits up to `timeout` for a frame carrying `payload` on any started
/// pair of `net`, skipping others (the kernel's own IPv6 chatter on the
/// tap); returns the pair it came on and the frame.
pub fn recv_payload(
    net: &mut NetClient,
    payload: &[u8],
    timeout: Duration,
) -> Option<(u16, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    loop {
        for pair in 0..net.pairs() {
            while let Some((_, frame)) = net
                .try_recv(pair)
                .unwrap_or_else(|e| panic!("RX on pair {pair}: {e}"))
            {
                if parse_udp(&frame).is_some_and(|v| v.payload == payload) {
                    return Some((pair, frame));
                }
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits up to `timeout` until `ip` shows tap `name` in `ns` with
/// operstate UP. A tap gets its carrier when a queue is attached, but the
/// kernel only starts its qdisc from the link-watch work (up to a second
/// later, in the same step that sets the operstate); until then frames
/// written to the tap from the host are dropped before they reach any
/// queue (counted in its `tx_dropped`), whatever the daemon does.
pub fn wait_operstate_up(ns: &NetNs, name: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if link(ns, name).is_some_and(|l| l["operstate"] == "UP") {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The host side of a tap: its namespace, its name and an AF_PACKET
/// socket on it.
#[derive(Debug)]
pub struct HostSide<'a> {
    ns: &'a NetNs,
    name: String,
    pkt: PacketSocket,
}

impl<'a> HostSide<'a> {
    /// Opens a packet socket on tap `name` in `ns`; panics if it cannot.
    pub fn open(ns: &'a NetNs, name: &str) -> Self {
        let pkt = ns
            .packet_socket(name)
            .unwrap_or_else(|e| panic!("packet socket on {name}: {e}"));
        HostSide {
            ns,
            name: name.to_string(),
            pkt,
        }
    }

    /// The packet socket.
    pub fn socket(&self) -> &PacketSocket {
        &self.pkt
    }

    /// Writes `frame` toward the daemon, once the tap passes frames (see
    /// [`wait_operstate_up`]).
    pub fn inject(&self, frame: &[u8]) {
        assert!(
            wait_operstate_up(self.ns, &self.name, WAIT),
            "tap {} not UP within {WAIT:?} although the daemon holds its queues: {:?}",
            self.name,
            link(self.ns, &self.name)
        );
        self.pkt
            .send(frame)
            .unwrap_or_else(|e| panic!("writing to tap {}: {e}", self.name));
    }

    /// One frame each way: a frame the driver sends on `pair` appears on
    /// the tap unchanged, and a frame written on the tap to `guest_mac`
    /// reaches the driver (on whichever pair the tap steers it to). `tag`
    /// makes the payloads unique to this call.
    pub fn assert_exchange(&self, net: &mut NetClient, pair: u16, guest_mac: Mac, tag: &str) {
        let host_mac: Mac = [0x02, 0, 0, 0, 0, 0xfe];
        let out = format!("to the host: {tag}");
        let frame = udp(guest_mac, host_mac, out.as_bytes());
        net.send(pair, &VirtioNetHdr::plain(), &frame)
            .unwrap_or_else(|e| panic!("{tag}: TX on pair {pair}: {e}"));
        let got = self
            .pkt
            .recv_matching(WAIT, |b| {
                parse_udp(b).is_some_and(|v| v.payload == out.as_bytes())
            })
            .unwrap_or_else(|e| panic!("{tag}: reading the tap: {e}"));
        assert_eq!(
            got.as_deref(),
            Some(&frame[..]),
            "{tag}: the frame sent on pair {pair} did not appear on the tap as sent"
        );

        let back = format!("to the guest: {tag}");
        let frame = udp(host_mac, guest_mac, back.as_bytes());
        self.inject(&frame);
        let got = recv_payload(net, back.as_bytes(), WAIT);
        assert!(
            got.is_some(),
            "{tag}: a frame written on tap {} did not reach the driver within {WAIT:?}; the tap: {:?}",
            self.name,
            self.ns.ip(&["-s", "-j", "link", "show", &self.name])
        );
        assert_eq!(got.unwrap().1, frame, "{tag}: RX frame changed");
    }
}
