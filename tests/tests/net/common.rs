//! Helpers shared by the `net` test modules: the rig (a namespace with a
//! tap and our `vhost-net-daemon` on it) and tagged frames come from
//! `vu_driver`; TCP frames with offload headers are made here.

use vu_driver::net::frame::{fold, internet_checksum, sum16, Mac};
use vu_driver::net::VirtioNetHdr;

pub use vu_driver::net::tagged::*;
pub use vu_driver::under_test::net::{namespace, rig, rig_with, Rig, TAP};

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
