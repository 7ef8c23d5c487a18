//! TX: a chain from the guest is a `virtio_net_hdr_v1` and a frame. It is
//! checked (shape, length, GSO type and checksum offsets against what was
//! negotiated: a bad one is the classic way to crash a backend or the host
//! stack) and written to the tap with one `writev` straight from guest
//! memory; the tap takes the header as it is.

use std::ops::Deref;

use common::iov::{copy_out, total_len, GuestIoVec, IoVecBuf};
use common::queue::MAX_CHAIN_DESCRIPTORS;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use crate::config::{Acked, MAX_GSO_FRAME};
use crate::tap::VNET_HDR_LEN;

/// `virtio_net_hdr.flags`.
const NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.gso_type` values.
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;
const ETH_HLEN: usize = 14;
/// Most iovecs one frame may take (UIO_MAXIOV).
const MAX_IOVS: usize = 1024;

/// Why a TX chain was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    /// The chain ended on a descriptor with NEXT set.
    #[error("chain truncated (descriptor loop, `next` out of range or a bad indirect table)")]
    Truncated,
    /// A buffer is not inside guest memory.
    #[error("buffer at {addr:#x}+{len} is outside guest memory")]
    OutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A device-writable descriptor in a TX chain.
    #[error("device-writable descriptor in a TX chain")]
    Writable,
    /// The chain's lengths overflow u32, or it has too many pieces.
    #[error("chain longer than 4 GiB or in more than 1024 pieces")]
    TooLong,
    /// Fewer bytes than the header and an Ethernet header.
    #[error("{0} bytes: shorter than the 12-byte header plus an Ethernet header")]
    Short(usize),
    /// A frame past 64 KiB.
    #[error("{0}-byte frame: larger than 64 KiB")]
    Large(usize),
    /// A GSO type the device does not know or did not negotiate.
    #[error("gso_type {0:#x} not negotiated or unknown")]
    GsoType(u8),
    /// GSO with a segment size of 0.
    #[error("GSO frame with gso_size 0")]
    GsoSize,
    /// Checksum offsets outside the frame, or NEEDS_CSUM without CSUM.
    #[error("csum_start {start} + csum_offset {offset} outside the {len}-byte frame (or CSUM not negotiated)")]
    Csum {
        /// csum_start.
        start: u16,
        /// csum_offset.
        offset: u16,
        /// Frame length.
        len: usize,
    },
}

/// The header fields TX checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hdr {
    /// flags.
    pub flags: u8,
    /// gso_type.
    pub gso_type: u8,
    /// gso_size.
    pub gso_size: u16,
    /// csum_start.
    pub csum_start: u16,
    /// csum_offset.
    pub csum_offset: u16,
}

impl Hdr {
    /// From the first 10 bytes of a header.
    pub fn parse(b: &[u8; VNET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Hdr {
            flags: b[0],
            gso_type: b[1],
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    /// Checks the header for a frame of `frame_len` bytes.
    pub fn check(&self, frame_len: usize, acked: &Acked) -> Result<(), Dropped> {
        let base = self.gso_type & !GSO_ECN;
        let gso_ok = match base {
            GSO_NONE => self.gso_type & GSO_ECN == 0,
            GSO_TCPV4 => acked.tso4 && (self.gso_type & GSO_ECN == 0 || acked.ecn),
            GSO_TCPV6 => acked.tso6 && (self.gso_type & GSO_ECN == 0 || acked.ecn),
            _ => false,
        };
        if !gso_ok {
            return Err(Dropped::GsoType(self.gso_type));
        }
        if base != GSO_NONE && self.gso_size == 0 {
            return Err(Dropped::GsoSize);
        }
        if self.flags & NEEDS_CSUM != 0 {
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if !acked.csum || end > frame_len {
                return Err(Dropped::Csum {
                    start: self.csum_start,
                    offset: self.csum_offset,
                    len: frame_len,
                });
            }
        }
        Ok(())
    }
}

/// The iovecs of one frame, reused from frame to frame.
#[derive(Debug, Default)]
pub struct TxScratch {
    iovs: IoVecBuf,
}

/// Checks the chain and returns its iovecs (header first), ready for
/// `writev` on the tap.
pub fn prepare<'s, 'm, M>(
    chain: DescriptorChain<M>,
    mem: &'m M::Target,
    acked: &Acked,
    scratch: &'s mut TxScratch,
) -> Result<&'s [GuestIoVec<'m>], Dropped>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut iovs = scratch.iovs.walk();
    let mut total: u32 = 0;
    let mut last_has_next = true;
    for desc in chain.take(MAX_CHAIN_DESCRIPTORS) {
        last_has_next = desc.has_next();
        if desc.is_write_only() {
            return Err(Dropped::Writable);
        }
        let len = desc.len();
        total = total.checked_add(len).ok_or(Dropped::TooLong)?;
        if len == 0 {
            continue;
        }
        iovs.push(mem, desc.addr(), len)
            .map_err(|e| Dropped::OutsideMemory {
                addr: e.addr,
                len: e.len,
            })?;
        if iovs.len() > MAX_IOVS {
            return Err(Dropped::TooLong);
        }
    }
    if last_has_next {
        return Err(Dropped::Truncated);
    }
    let iovs = iovs.into_slice();
    let total = total_len(iovs);
    if total < VNET_HDR_LEN + ETH_HLEN {
        return Err(Dropped::Short(total));
    }
    let frame_len = total - VNET_HDR_LEN;
    let mut raw = [0u8; VNET_HDR_LEN];
    copy_out(iovs, &mut raw);
    let hdr = Hdr::parse(&raw);
    // Plain or GSO, nothing legitimate is larger (the tap's MTU is the
    // host's business).
    if frame_len > MAX_GSO_FRAME {
        return Err(Dropped::Large(frame_len));
    }
    hdr.check(frame_len, acked)?;
    Ok(iovs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked_all() -> Acked {
        Acked {
            csum: true,
            tso4: true,
            tso6: true,
            ecn: true,
            ..Acked::default()
        }
    }

    fn hdr(flags: u8, gso_type: u8, gso_size: u16, start: u16, offset: u16) -> Hdr {
        Hdr {
            flags,
            gso_type,
            gso_size,
            csum_start: start,
            csum_offset: offset,
        }
    }

    #[test]
    fn header_parses_little_endian() {
        let b = [1, 4, 0, 0, 0xdc, 0x05, 34, 0, 16, 0, 0, 0];
        assert_eq!(Hdr::parse(&b), hdr(1, 4, 1500, 34, 16));
    }

    #[test]
    fn gso_types_need_their_features() {
        let a = acked_all();
        assert!(hdr(0, GSO_NONE, 0, 0, 0).check(60, &a).is_ok());
        assert!(hdr(1, GSO_TCPV4, 1448, 34, 16).check(9000, &a).is_ok());
        assert!(hdr(1, GSO_TCPV6 | GSO_ECN, 1428, 54, 16)
            .check(9000, &a)
            .is_ok());
        assert_eq!(
            hdr(0, 3, 1400, 0, 0).check(9000, &a),
            Err(Dropped::GsoType(3)),
            "UFO is not offered"
        );
        assert_eq!(
            hdr(0, 0x42, 0, 0, 0).check(60, &a),
            Err(Dropped::GsoType(0x42))
        );
        assert_eq!(
            hdr(0, GSO_NONE | GSO_ECN, 0, 0, 0).check(60, &a),
            Err(Dropped::GsoType(0x80))
        );
        let no_tso = Acked {
            csum: true,
            ..Acked::default()
        };
        assert!(hdr(1, GSO_TCPV4, 1448, 34, 16)
            .check(9000, &no_tso)
            .is_err());
        assert_eq!(
            hdr(1, GSO_TCPV4, 0, 34, 16).check(9000, &a),
            Err(Dropped::GsoSize)
        );
    }

    #[test]
    fn checksum_offsets_must_lie_in_the_frame() {
        let a = acked_all();
        assert!(hdr(NEEDS_CSUM, 0, 0, 34, 6).check(42, &a).is_ok());
        assert!(hdr(NEEDS_CSUM, 0, 0, 34, 7).check(42, &a).is_err());
        assert!(hdr(NEEDS_CSUM, 0, 0, 0xffff, 0xffff).check(60, &a).is_err());
        let no_csum = Acked::default();
        assert!(hdr(NEEDS_CSUM, 0, 0, 34, 6).check(42, &no_csum).is_err());
    }
}
