//! Test frames: Ethernet + IPv4 + UDP with correct checksums, a variant that
//! leaves the UDP checksum to the device (NEEDS_CSUM), and malformed TX
//! buffers for bad-input tests of a backend.

use virtio_bindings::virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM;

use super::hdr::{VirtioNetHdr, NET_HDR_LEN};

/// An Ethernet address.
pub type Mac = [u8; 6];
/// Ethernet header length (no VLAN tag).
pub const ETH_HDR_LEN: usize = 14;
/// IPv4 header length without options.
pub const IPV4_HDR_LEN: usize = 20;
/// UDP header length.
pub const UDP_HDR_LEN: usize = 8;
/// Bytes in front of the UDP payload.
pub const UDP_FRAME_OVERHEAD: usize = ETH_HDR_LEN + IPV4_HDR_LEN + UDP_HDR_LEN;
/// Offset of the UDP header in a frame (the `csum_start` for NEEDS_CSUM).
pub const UDP_OFFSET: usize = ETH_HDR_LEN + IPV4_HDR_LEN;
/// Offset of the checksum inside the UDP header (the `csum_offset`).
pub const UDP_CSUM_OFFSET: usize = 6;

const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;

/// Addresses and ports of a test UDP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFrame {
    /// Destination MAC.
    pub dst_mac: Mac,
    /// Source MAC.
    pub src_mac: Mac,
    /// Source IPv4 address.
    pub src_ip: [u8; 4],
    /// Destination IPv4 address.
    pub dst_ip: [u8; 4],
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// IPv4 identification field.
    pub ident: u16,
}

impl Default for UdpFrame {
    fn default() -> Self {
        UdpFrame {
            dst_mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x02],
            src_mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x01],
            src_ip: [10, 0, 0, 1],
            dst_ip: [10, 0, 0, 2],
            src_port: 40000,
            dst_port: 5001,
            ident: 1,
        }
    }
}

impl UdpFrame {
    /// A complete frame around `payload`, IPv4 and UDP checksums filled in.
    /// Panics if the payload does not fit an IPv4 datagram.
    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut f = self.headers(payload);
        let csum = self.udp_checksum(&f[UDP_OFFSET..]);
        f[UDP_OFFSET + UDP_CSUM_OFFSET..][..2].copy_from_slice(&csum.to_be_bytes());
        f
    }

    /// A frame whose UDP checksum is left to the device: the checksum field
    /// holds the folded pseudo-header sum (as Linux sends CHECKSUM_PARTIAL)
    /// and the header says NEEDS_CSUM from the UDP header on.
    pub fn build_partial(&self, payload: &[u8]) -> (VirtioNetHdr, Vec<u8>) {
        let mut f = self.headers(payload);
        let pseudo = fold(self.pseudo_sum(UDP_HDR_LEN + payload.len()));
        f[UDP_OFFSET + UDP_CSUM_OFFSET..][..2].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VirtioNetHdr::needs_csum(UDP_OFFSET as u16, UDP_CSUM_OFFSET as u16);
        (hdr, f)
    }

    /// A complete frame of exactly `frame_len` bytes (without FCS), the
    /// payload filled with [`pattern`]`(_, seed)`. Panics below
    /// [`UDP_FRAME_OVERHEAD`] bytes.
    pub fn build_len(&self, frame_len: usize, seed: u8) -> Vec<u8> {
        assert!(
            frame_len >= UDP_FRAME_OVERHEAD,
            "a UDP frame needs at least {UDP_FRAME_OVERHEAD} bytes"
        );
        self.build(&pattern(frame_len - UDP_FRAME_OVERHEAD, seed))
    }

    fn headers(&self, payload: &[u8]) -> Vec<u8> {
        let udp_len = UDP_HDR_LEN + payload.len();
        let ip_len = IPV4_HDR_LEN + udp_len;
        let ip_len16 = u16::try_from(ip_len).expect("payload fits an IPv4 datagram");
        let mut f = Vec::with_capacity(ETH_HDR_LEN + ip_len);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip_start = f.len();
        f.push(0x45); // version 4, IHL 5
        f.push(0); // DSCP/ECN
        f.extend_from_slice(&ip_len16.to_be_bytes());
        f.extend_from_slice(&self.ident.to_be_bytes());
        f.extend_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
        f.push(64); // TTL
        f.push(IPPROTO_UDP);
        f.extend_from_slice(&[0, 0]); // header checksum, below
        f.extend_from_slice(&self.src_ip);
        f.extend_from_slice(&self.dst_ip);
        let ip_csum = internet_checksum(&f[ip_start..]);
        f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_csum.to_be_bytes());
        f.extend_from_slice(&self.src_port.to_be_bytes());
        f.extend_from_slice(&self.dst_port.to_be_bytes());
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]); // UDP checksum, filled by the caller
        f.extend_from_slice(payload);
        f
    }

    fn pseudo_sum(&self, udp_len: usize) -> u32 {
        let mut p = Vec::with_capacity(12);
        p.extend_from_slice(&self.src_ip);
        p.extend_from_slice(&self.dst_ip);
        p.push(0);
        p.push(IPPROTO_UDP);
        p.extend_from_slice(&(udp_len as u16).to_be_bytes());
        sum16(&p, 0)
    }

    fn udp_checksum(&self, udp: &[u8]) -> u16 {
        let c = !fold(sum16(udp, self.pseudo_sum(udp.len())));
        // RFC 768: a computed zero is sent as all ones.
        if c == 0 {
            0xffff
        } else {
            c
        }
    }
}

/// A deterministic payload: byte i is `seed + i * 7` (wrapping), so shifted
/// or truncated data never looks right by accident.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(7)))
        .collect()
}

/// The one's-complement sum of `data` as big-endian 16-bit words, added to `initial`.
pub fn sum16(data: &[u8], initial: u32) -> u32 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff_ffff {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// Folds a 32-bit one's-complement sum to 16 bits.
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum16(data, 0))
}

/// Does what a device does for VIRTIO_NET_HDR_F_NEEDS_CSUM: checksums
/// `frame[csum_start..]` and stores it at `csum_start + csum_offset`.
/// Returns false (and leaves the frame alone) if the header does not ask for
/// it or points outside the frame.
pub fn complete_partial_csum(hdr: &VirtioNetHdr, frame: &mut [u8]) -> bool {
    if hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 == 0 {
        return false;
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if start > frame.len() || at + 2 > frame.len() {
        return false;
    }
    let c = internet_checksum(&frame[start..]);
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// Swaps the destination and source MAC, as DPDK's `macswap` forwarding does.
pub fn swap_macs(frame: &mut [u8]) {
    if frame.len() >= 12 {
        let (dst, rest) = frame.split_at_mut(6);
        dst.swap_with_slice(&mut rest[..6]);
    }
}

/// The parts of an Ethernet + IPv4 + UDP frame, as read back from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpView<'a> {
    /// Destination MAC.
    pub dst_mac: Mac,
    /// Source MAC.
    pub src_mac: Mac,
    /// The IPv4 header (20 bytes).
    pub ip: &'a [u8],
    /// The UDP header and payload, as long as the UDP length says.
    pub udp: &'a [u8],
    /// The UDP payload.
    pub payload: &'a [u8],
}

/// Splits an Ethernet + IPv4 (no options) + UDP frame; None if it is not one
/// or the lengths disagree with the frame.
pub fn parse_udp(frame: &[u8]) -> Option<UdpView<'_>> {
    if frame.len() < UDP_FRAME_OVERHEAD
        || frame[12..14] != ETHERTYPE_IPV4.to_be_bytes()
        || frame[ETH_HDR_LEN] != 0x45
        || frame[ETH_HDR_LEN + 9] != IPPROTO_UDP
    {
        return None;
    }
    let ip = &frame[ETH_HDR_LEN..UDP_OFFSET];
    let ip_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let udp_len = usize::from(u16::from_be_bytes([
        frame[UDP_OFFSET + 4],
        frame[UDP_OFFSET + 5],
    ]));
    if ip_len != IPV4_HDR_LEN + udp_len || ETH_HDR_LEN + ip_len > frame.len() {
        return None;
    }
    let udp = &frame[UDP_OFFSET..UDP_OFFSET + udp_len];
    Some(UdpView {
        dst_mac: frame[..6].try_into().ok()?,
        src_mac: frame[6..12].try_into().ok()?,
        ip,
        udp,
        payload: &udp[UDP_HDR_LEN..],
    })
}

/// Kinds of malformed TX buffer a backend must survive (drop the frame,
/// return the buffer, keep serving).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The whole chain is 6 bytes: shorter than the 12-byte virtio-net header.
    ShorterThanNetHdr,
    /// A valid header followed by 10 bytes: shorter than an Ethernet header.
    ShorterThanEthHdr,
    /// A valid header followed by a frame of this many bytes (use more than 65,550).
    Oversize(usize),
    /// A gso_type that names no GSO kind (0x7f), on a normal frame.
    BadGsoType,
    /// NEEDS_CSUM with csum_start past the end of the frame.
    CsumStartBeyondFrame,
    /// NEEDS_CSUM with csum_start inside the frame but csum_offset past its end.
    CsumOffsetBeyondFrame,
}

impl Malformed {
    /// Every kind, with a 70,000-byte oversize frame.
    pub const ALL: [Malformed; 6] = [
        Malformed::ShorterThanNetHdr,
        Malformed::ShorterThanEthHdr,
        Malformed::Oversize(70_000),
        Malformed::BadGsoType,
        Malformed::CsumStartBeyondFrame,
        Malformed::CsumOffsetBeyondFrame,
    ];

    /// The complete TX chain contents (header included, where there is
    /// one); send them with [`super::NetClient::send_raw`].
    pub fn chain_bytes(self) -> Vec<u8> {
        let frame = UdpFrame::default().build_len(128, 0x5a);
        let with_hdr = |hdr: VirtioNetHdr, frame: &[u8]| {
            let mut v = hdr.to_bytes().to_vec();
            v.extend_from_slice(frame);
            v
        };
        match self {
            Malformed::ShorterThanNetHdr => vec![0u8; NET_HDR_LEN / 2],
            Malformed::ShorterThanEthHdr => with_hdr(VirtioNetHdr::plain(), &frame[..10]),
            Malformed::Oversize(len) => with_hdr(
                VirtioNetHdr::plain(),
                &UdpFrame::default().headers_padded(len),
            ),
            Malformed::BadGsoType => with_hdr(
                VirtioNetHdr {
                    gso_type: 0x7f,
                    gso_size: 1400,
                    hdr_len: UDP_FRAME_OVERHEAD as u16,
                    ..VirtioNetHdr::plain()
                },
                &frame,
            ),
            Malformed::CsumStartBeyondFrame => with_hdr(
                VirtioNetHdr::needs_csum(frame.len() as u16 + 100, UDP_CSUM_OFFSET as u16),
                &frame,
            ),
            Malformed::CsumOffsetBeyondFrame => with_hdr(
                VirtioNetHdr::needs_csum(UDP_OFFSET as u16, frame.len() as u16),
                &frame,
            ),
        }
    }
}

impl UdpFrame {
    /// A frame of exactly `len` bytes that starts with valid Ethernet and
    /// IPv4 headers (the IPv4 length field saturates; the rest is pattern).
    fn headers_padded(&self, len: usize) -> Vec<u8> {
        let mut f = self.build(&[]);
        f.resize(UDP_FRAME_OVERHEAD.min(len), 0);
        let fill = pattern(len.saturating_sub(f.len()), 0x33);
        f.extend_from_slice(&fill);
        f.truncate(len);
        f
    }
}
