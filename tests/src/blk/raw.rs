//! Hand-built virtio-blk requests: any header, payload and buffer layout,
//! for tests of how a backend answers odd requests (unknown types, flags the
//! slot API cannot express, several discard segments, short buffers) and,
//! through [`RawRequest::raw_descs`] and [`VirtQueue::raw_chain`], malformed
//! chains.
//!
//! Every buffer is freshly taken from the guest memory's bump allocator;
//! a test builds a handful of requests, not a benchmark loop.

use std::time::Duration;

use vm_memory::{ByteValued, GuestAddress};

use super::{DiscardWz, OutHdr, Result};
use crate::memory::GuestMem;
use crate::virtqueue::{chain_desc, RawDesc, Seg, VirtQueue};

/// What a status byte is preset to, so a test can tell whether the device
/// wrote it (no virtio-blk status has this value).
pub const STATUS_UNTOUCHED: u8 = 0xff;

/// A request laid out in guest memory, not yet on any queue.
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    /// The chain's buffers in order.
    pub segs: Vec<Seg>,
    /// The status byte's address, if [`RequestBuilder::status`] was called.
    pub status: Option<GuestAddress>,
    /// The device-writable data buffers (not the status), in order.
    pub writable: Vec<Seg>,
}

/// How a [`RawRequest`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawCompletion {
    /// Bytes the device said it wrote (the used element's len).
    pub used_len: u32,
    /// The status byte ([`STATUS_UNTOUCHED`] if the device did not write it,
    /// or if the request has no status buffer).
    pub status: u8,
}

/// Builds a [`RawRequest`] buffer by buffer, in chain order.
#[derive(Debug)]
pub struct RequestBuilder<'a> {
    mem: &'a GuestMem,
    req: RawRequest,
}

impl<'a> RequestBuilder<'a> {
    /// An empty chain whose buffers will live in `mem`.
    pub fn new(mem: &'a GuestMem) -> Self {
        RequestBuilder {
            mem,
            req: RawRequest::default(),
        }
    }

    /// Appends a device-readable virtio_blk_outhdr (16 bytes).
    pub fn header(self, type_: u32, sector: u64) -> Result<Self> {
        let hdr = OutHdr {
            type_,
            ioprio: 0,
            sector,
        };
        self.readable(hdr.as_slice())
    }

    /// Appends a device-readable buffer holding `data` (4 KiB aligned).
    pub fn readable(mut self, data: &[u8]) -> Result<Self> {
        let addr = self.mem.alloc(data.len().max(1) as u64, 4096)?;
        self.mem.write(addr, data)?;
        self.req.segs.push(Seg::out(addr, data.len() as u32));
        Ok(self)
    }

    /// Appends discard / write-zeroes segments as one device-readable buffer.
    pub fn dwz_segments(self, segs: &[DiscardWz]) -> Result<Self> {
        let bytes: Vec<u8> = segs.iter().flat_map(|s| s.as_slice().to_vec()).collect();
        self.readable(&bytes)
    }

    /// Appends a device-writable data buffer of `len` bytes (4 KiB aligned),
    /// every byte preset to `fill`.
    pub fn writable(mut self, len: u32, fill: u8) -> Result<Self> {
        let addr = self.mem.alloc(u64::from(len.max(1)), 4096)?;
        self.mem.write(addr, &vec![fill; len as usize])?;
        let seg = Seg::inp(addr, len);
        self.req.segs.push(seg);
        self.req.writable.push(seg);
        Ok(self)
    }

    /// Appends the one-byte device-writable status buffer, preset to
    /// [`STATUS_UNTOUCHED`].
    pub fn status(mut self) -> Result<Self> {
        let addr = self.mem.alloc(1, 1)?;
        self.mem.write(addr, &[STATUS_UNTOUCHED])?;
        self.req.segs.push(Seg::inp(addr, 1));
        self.req.status = Some(addr);
        Ok(self)
    }

    /// The finished request.
    pub fn build(self) -> RawRequest {
        self.req
    }
}

impl RawRequest {
    /// Adds the chain to `vq` (tracked, so its descriptors come back),
    /// kicks, and waits up to `timeout` for it.
    pub fn run(&self, vq: &mut VirtQueue, timeout: Duration) -> Result<RawCompletion> {
        let used_len = vq.run(&self.segs, timeout)?;
        let status = self.status_byte(vq.mem())?;
        Ok(RawCompletion { used_len, status })
    }

    /// The status byte as it is now ([`STATUS_UNTOUCHED`] without a status buffer).
    pub fn status_byte(&self, mem: &GuestMem) -> Result<u8> {
        let Some(addr) = self.status else {
            return Ok(STATUS_UNTOUCHED);
        };
        let mut b = [0u8];
        mem.read(addr, &mut b)?;
        Ok(b[0])
    }

    /// The contents of the `i`-th device-writable data buffer.
    pub fn writable_data(&self, mem: &GuestMem, i: usize) -> Result<Vec<u8>> {
        let seg = self.writable[i];
        Ok(mem.read_vec(seg.addr, seg.len as usize)?)
    }

    /// The chain as descriptors linked by relative index (descriptor `i`
    /// has NEXT to `i + 1`, the last has none), the form
    /// [`VirtQueue::raw_chain`] takes; a test edits them to break the chain.
    /// Written with [`crate::virtqueue::indirect_table`] they form a valid
    /// indirect table as well.
    pub fn raw_descs(&self) -> Vec<RawDesc> {
        let n = self.segs.len();
        self.segs
            .iter()
            .enumerate()
            .map(|(i, s)| chain_desc(s, i + 1 == n, (i + 1) as u16))
            .collect()
    }
}
