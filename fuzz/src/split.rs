//! The `split_ring` input: a split ring anywhere in (or out of) 60 KiB of
//! guest memory, its geometry and state from the input, and the memory's
//! bytes. The target decodes it ([`Header::parse`]); [`SplitImage`]
//! builds one (for the seeds).
//!
//! Layout: byte 0 is the mode (bits 0-1 the chain handler, [`Handler`];
//! bit 2 EVENT_IDX; bit 3 a read-only disk for [`Handler::Blk`]); byte 1
//! the queue size (bit 7 clear: `1 << (b & 15)`, at most 32768; set: `b &
//! 0x7f` as it is, mostly not a power of two); then le32 addresses of the
//! descriptor table, avail ring and used ring; le16 `next_avail` and
//! `next_used` (the ring's state as a SET_VRING_BASE left it); the rest is
//! guest memory from address 0, over [`REGIONS`] (the hole skipped).

/// Two regions with a hole between them, in 64 KiB.
pub const REGIONS: [(u64, usize); 2] = [(0, 0xc000), (0xd000, 0x3000)];

/// Bytes before the memory image.
pub const HEADER_LEN: usize = 18;

/// What handles each chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `common::iov`'s walker, with its invariants checked.
    Walker = 0,
    /// vhost-blk-daemon's `request::process` on a 64 KiB image.
    Blk = 1,
    /// virtiofsd's `request::inspect` and `judge`.
    Fs = 2,
    /// The walker over `common::queue::drain_deferred`, the chains
    /// completed afterwards in reverse order.
    Deferred = 3,
}

/// The ring's geometry and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Chain handler.
    pub handler: Handler,
    /// EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Read-only disk ([`Handler::Blk`]).
    pub read_only: bool,
    /// Queue size as the frontend set it.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Avail ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Next avail index the device takes.
    pub next_avail: u16,
    /// Next used index it writes.
    pub next_used: u16,
}

impl Header {
    /// The header of `data` and the memory image after it.
    pub fn parse(data: &[u8]) -> Option<(Header, &[u8])> {
        if data.len() < HEADER_LEN {
            return None;
        }
        let (h, image) = data.split_at(HEADER_LEN);
        let le32 = |at: usize| u64::from(u32::from_le_bytes(h[at..at + 4].try_into().unwrap()));
        let le16 = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
        let size = if h[1] & 0x80 == 0 {
            1u16 << (h[1] & 15)
        } else {
            u16::from(h[1] & 0x7f)
        };
        let handler = match h[0] & 3 {
            0 => Handler::Walker,
            1 => Handler::Blk,
            2 => Handler::Fs,
            _ => Handler::Deferred,
        };
        Some((
            Header {
                handler,
                event_idx: h[0] & 4 != 0,
                read_only: h[0] & 8 != 0,
                size,
                desc: le32(2),
                avail: le32(6),
                used: le32(10),
                next_avail: le16(14),
                next_used: le16(16),
            },
            image,
        ))
    }

    fn bytes(&self) -> Vec<u8> {
        let mode =
            self.handler as u8 | u8::from(self.event_idx) << 2 | u8::from(self.read_only) << 3;
        let size = if self.size.is_power_of_two() {
            self.size.trailing_zeros() as u8
        } else {
            0x80 | self.size as u8
        };
        let mut b = vec![mode, size];
        for a in [self.desc, self.avail, self.used] {
            b.extend_from_slice(&(a as u32).to_le_bytes());
        }
        b.extend_from_slice(&self.next_avail.to_le_bytes());
        b.extend_from_slice(&self.next_used.to_le_bytes());
        b
    }
}

/// Where a guest address is in the memory image (`None` in the hole or
/// past the end).
pub fn image_offset(addr: u64) -> Option<usize> {
    let mut off = 0usize;
    for &(start, len) in &REGIONS {
        if addr >= start && addr < start + len as u64 {
            return Some(off + (addr - start) as usize);
        }
        off += len;
    }
    None
}

/// Descriptor flags.
pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;
pub const INDIRECT: u16 = 4;

/// A `split_ring` input built by hand: any descriptor, anywhere.
#[derive(Debug, Clone)]
pub struct SplitImage {
    /// The ring's geometry and state.
    pub header: Header,
    mem: Vec<u8>,
}

impl SplitImage {
    /// A ring described by `header`, memory all zero.
    pub fn new(header: Header) -> Self {
        SplitImage {
            header,
            mem: Vec::new(),
        }
    }

    /// `bytes` at guest address `addr` (which must be in a region).
    pub fn put(&mut self, addr: u64, bytes: &[u8]) -> &mut Self {
        for (k, b) in bytes.iter().enumerate() {
            let at = image_offset(addr + k as u64).expect("inside guest memory");
            if self.mem.len() <= at {
                self.mem.resize(at + 1, 0);
            }
            self.mem[at] = *b;
        }
        self
    }

    /// Descriptor `i` of the table at `table`.
    pub fn desc(
        &mut self,
        table: u64,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> &mut Self {
        let mut b = addr.to_le_bytes().to_vec();
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&next.to_le_bytes());
        self.put(table + 16 * u64::from(i), &b)
    }

    /// The avail ring: `idx` and `heads` from slot `next_avail` on.
    pub fn avail(&mut self, idx: u16, heads: &[u16]) -> &mut Self {
        let (base, size) = (self.header.avail, self.header.size.max(1));
        self.put(base + 2, &idx.to_le_bytes());
        for (k, h) in heads.iter().enumerate() {
            let slot = self.header.next_avail.wrapping_add(k as u16) % size;
            self.put(base + 4 + 2 * u64::from(slot), &h.to_le_bytes());
        }
        self
    }

    /// The input.
    pub fn finish(&self) -> Vec<u8> {
        let mut b = self.header.bytes();
        b.extend_from_slice(&self.mem);
        b
    }
}
