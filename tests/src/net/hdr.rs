//! The virtio-net header that precedes every frame on the rings.

use virtio_bindings::virtio_net::{
    virtio_net_hdr_v1, virtio_net_hdr_v1__bindgen_ty_1,
    virtio_net_hdr_v1__bindgen_ty_1__bindgen_ty_1, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
};

/// Size of `struct virtio_net_hdr_v1`: with VIRTIO_F_VERSION_1 the header
/// always carries `num_buffers`, merged buffers or not.
pub const NET_HDR_LEN: usize = 12;

/// `struct virtio_net_hdr_v1` as plain fields.
///
/// The bindgen type in `virtio_bindings` keeps `csum_start`/`csum_offset` in a
/// union, so reading it needs `unsafe`; this type converts into it and is
/// encoded little-endian by hand instead.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// VIRTIO_NET_HDR_F_* flags.
    pub flags: u8,
    /// VIRTIO_NET_HDR_GSO_* type, possibly with VIRTIO_NET_HDR_GSO_ECN.
    pub gso_type: u8,
    /// Length of the headers to copy into each GSO segment.
    pub hdr_len: u16,
    /// Maximum segment size for GSO.
    pub gso_size: u16,
    /// Where checksumming starts (with NEEDS_CSUM).
    pub csum_start: u16,
    /// Where, after `csum_start`, the checksum goes (with NEEDS_CSUM).
    pub csum_offset: u16,
    /// Buffers this frame spans (RX with MRG_RXBUF; 0 on TX).
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// A header for a complete frame: no offloads.
    pub fn plain() -> Self {
        VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_NONE as u8,
            ..Default::default()
        }
    }

    /// A header asking the device to fill in a checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM).
    pub fn needs_csum(csum_start: u16, csum_offset: u16) -> Self {
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
            csum_start,
            csum_offset,
            ..Self::plain()
        }
    }

    /// The 12 bytes as they sit in guest memory.
    pub fn to_bytes(&self) -> [u8; NET_HDR_LEN] {
        let mut b = [0u8; NET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Decodes the first 12 bytes of `b`; None if it is shorter.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let b: &[u8; NET_HDR_LEN] = b.get(..NET_HDR_LEN)?.try_into().ok()?;
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VirtioNetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        })
    }
}

impl From<VirtioNetHdr> for virtio_net_hdr_v1 {
    fn from(h: VirtioNetHdr) -> Self {
        virtio_net_hdr_v1 {
            flags: h.flags,
            gso_type: h.gso_type,
            hdr_len: h.hdr_len,
            gso_size: h.gso_size,
            __bindgen_anon_1: virtio_net_hdr_v1__bindgen_ty_1 {
                __bindgen_anon_1: virtio_net_hdr_v1__bindgen_ty_1__bindgen_ty_1 {
                    csum_start: h.csum_start,
                    csum_offset: h.csum_offset,
                },
            },
            num_buffers: h.num_buffers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_binding() {
        assert_eq!(std::mem::size_of::<virtio_net_hdr_v1>(), NET_HDR_LEN);
        let h = VirtioNetHdr {
            flags: 1,
            gso_type: 4,
            hdr_len: 0x0102,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 6,
            num_buffers: 3,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 4, 2, 1, 0xa8, 5, 34, 0, 6, 0, 3, 0]);
        assert_eq!(VirtioNetHdr::from_bytes(&b), Some(h));
        assert_eq!(VirtioNetHdr::from_bytes(&b[..11]), None);
        // The binding's own Debug reads the union; it must see the same fields.
        let dbg = format!("{:?}", virtio_net_hdr_v1::from(h));
        assert_eq!(
            dbg,
            "virtio_net_hdr_v1 { flags: 1, gso_type: 4, hdr_len: 258, gso_size: 1448, \
             csum_start: 34, csum_offset: 6, num_buffers: 3 }"
        );
    }
}
