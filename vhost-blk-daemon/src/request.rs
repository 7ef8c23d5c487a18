//! One virtio-blk request: the descriptor chain checked and turned into
//! host iovecs over guest memory, then executed against the [`Disk`].
//!
//! The chain is treated as virtio 1.x requires, with no assumption about
//! how the driver split it: a readable byte stream (the 16-byte header,
//! then data for writes, discards and zeroing) followed by a writable one
//! (data for reads and GET_ID, then the status byte, its last byte).

use std::ops::Deref;

use virtio_bindings::virtio_blk::{
    virtio_blk_discard_write_zeroes, virtio_blk_outhdr, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemory};

use crate::config::{DeviceConfig, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG};
use common::iov::{copy_in, copy_out, GuestIoVec, GuestIoVecs, IoVecBuf};
use common::queue::MAX_CHAIN_DESCRIPTORS;

use crate::disk::{Disk, SECTOR};

/// Request types (virtio 1.2, 5.2.6), as virtio-bindings names them.
pub mod req_type {
    pub use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_DISCARD as DISCARD, VIRTIO_BLK_T_FLUSH as FLUSH,
        VIRTIO_BLK_T_GET_ID as GET_ID, VIRTIO_BLK_T_IN as IN, VIRTIO_BLK_T_OUT as OUT,
        VIRTIO_BLK_T_WRITE_ZEROES as WRITE_ZEROES,
    };
}

/// Status byte values: virtio-bindings' as the byte the device writes.
pub mod status {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};

    /// Success.
    pub const OK: u8 = VIRTIO_BLK_S_OK as u8;
    /// I/O error (also: out of range, read-only, bad length).
    pub const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    /// Unsupported request.
    pub const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
}

/// `struct virtio_blk_outhdr`: type, ioprio, sector.
const HEADER_LEN: usize = std::mem::size_of::<virtio_blk_outhdr>();
/// `struct virtio_blk_discard_write_zeroes`: sector, num_sectors, flags.
const SEGMENT_LEN: usize = std::mem::size_of::<virtio_blk_discard_write_zeroes>();
const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
const FLAG_UNMAP: u32 = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// Why a chain cannot be a request: it is returned to the driver unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The chain ended on a descriptor with NEXT set.
    #[error("chain truncated (descriptor loop, `next` out of range, more than 1024 descriptors, or a bad indirect table)")]
    Truncated,
    /// A buffer is not inside guest memory.
    #[error("buffer at {addr:#x}+{len} is outside guest memory")]
    OutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The sum of lengths overflows u32.
    #[error("chain longer than 4 GiB")]
    TooLong,
    /// Device-readable descriptor after a device-writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// Fewer than 16 readable bytes.
    #[error("request header shorter than 16 bytes")]
    ShortHeader,
    /// No device-writable byte.
    #[error("no writable byte for the status")]
    NoStatus,
}

/// Buffers reused from request to request (one per worker).
#[derive(Debug, Default)]
pub struct Scratch {
    readable: IoVecBuf,
    writable: IoVecBuf,
}

/// One request's buffers: the readable and the writable stream.
struct Buffers<'a, 'm> {
    readable: GuestIoVecs<'a, 'm>,
    writable: GuestIoVecs<'a, 'm>,
}

/// What a queue worker needs to execute requests.
#[derive(Debug)]
pub struct Target<'a> {
    /// The image.
    pub disk: &'a Disk,
    /// Capacity and limits.
    pub config: &'a DeviceConfig,
    /// GET_ID answer, NUL-padded.
    pub serial: &'a [u8; ID_LEN],
}

/// The outcome of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// Status written.
    pub status: u8,
    /// Bytes written into the chain, status byte included (the used length).
    pub used_len: u32,
    /// A host-side I/O error worth logging.
    pub host_error: Option<(&'static str, i32)>,
}

/// A checked request: its header and its two byte streams (the status
/// byte taken off the end of the writable one).
pub struct Parsed<'a, 'm> {
    /// Request type ([`req_type`]).
    pub ty: u32,
    /// First sector.
    pub sector: u64,
    bufs: Buffers<'a, 'm>,
    status: GuestIoVec<'m>,
    /// Guest address of the status byte.
    pub status_addr: GuestAddress,
}

/// What an asynchronous engine does with a parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Read the writable stream from byte `offset` of the image.
    Read {
        /// Byte offset.
        offset: u64,
    },
    /// Write the readable stream at byte `offset`.
    Write {
        /// Byte offset.
        offset: u64,
    },
    /// fdatasync.
    Flush,
    /// Discard (`true`) or write zeroes: the ranges
    /// ([`Parsed::ranges`]) have been checked.
    Ranges(bool),
    /// Finished already (a bad request), with this outcome.
    Finished(Done),
    /// Anything else: run it synchronously ([`Parsed::execute`]).
    Sync,
}

/// Checks the chain and splits it into a request (nothing is executed).
/// `mem` is the memory the chain was popped from.
pub fn parse<'a, 'm, M>(
    chain: DescriptorChain<M>,
    mem: &'m M::Target,
    scratch: &'a mut Scratch,
) -> Result<Parsed<'a, 'm>, Malformed>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut b = Buffers {
        readable: scratch.readable.walk(),
        writable: scratch.writable.walk(),
    };
    let mut total: u32 = 0;
    let mut last_has_next = true; // an empty chain counts as truncated
    let mut status_addr = GuestAddress(0);
    for desc in chain.take(MAX_CHAIN_DESCRIPTORS) {
        last_has_next = desc.has_next();
        let len = desc.len();
        total = total.checked_add(len).ok_or(Malformed::TooLong)?;
        if len == 0 {
            continue;
        }
        let list = if desc.is_write_only() {
            status_addr = GuestAddress(desc.addr().0.wrapping_add(u64::from(len) - 1));
            &mut b.writable
        } else if !b.writable.is_empty() {
            return Err(Malformed::ReadableAfterWritable);
        } else {
            &mut b.readable
        };
        list.push(mem, desc.addr(), len)
            .map_err(|e| Malformed::OutsideMemory {
                addr: e.addr,
                len: e.len,
            })?;
    }
    if last_has_next {
        return Err(Malformed::Truncated);
    }
    if b.readable.total_len() < HEADER_LEN {
        return Err(Malformed::ShortHeader);
    }
    let status = b.writable.take_last_byte().ok_or(Malformed::NoStatus)?;

    let mut header = [0u8; HEADER_LEN];
    copy_out(b.readable.as_slice(), &mut header);
    b.readable.advance(HEADER_LEN);
    Ok(Parsed {
        ty: u32::from_le_bytes(header[0..4].try_into().unwrap_or_default()),
        sector: u64::from_le_bytes(header[8..16].try_into().unwrap_or_default()),
        bufs: b,
        status,
        status_addr,
    })
}

impl<'m> Parsed<'_, 'm> {
    /// Executes the request synchronously and writes its status byte.
    pub fn execute(mut self, target: &Target<'_>) -> Done {
        let mut done = execute(self.ty, self.sector, target, &mut self.bufs);
        self.finish(done.status);
        done.used_len = done.used_len.saturating_add(1);
        done
    }

    /// Writes the status byte.
    pub fn finish(&self, status: u8) {
        copy_in(&[self.status], &[status]);
    }

    /// How an engine that reads and writes asynchronously runs it.
    pub fn plan(&self, config: &DeviceConfig) -> Plan {
        match self.ty {
            req_type::IN => match check_rw(config, self.sector, self.bufs.writable.total_len()) {
                Ok(offset) => Plan::Read { offset },
                Err(d) => Plan::Finished(d),
            },
            req_type::OUT if config.read_only => Plan::Finished(done(status::IOERR)),
            req_type::OUT => match check_rw(config, self.sector, self.bufs.readable.total_len()) {
                Ok(offset) => Plan::Write { offset },
                Err(d) => Plan::Finished(d),
            },
            req_type::FLUSH => Plan::Flush,
            req_type::DISCARD | req_type::WRITE_ZEROES if config.read_only => {
                Plan::Finished(done(status::IOERR))
            }
            req_type::DISCARD | req_type::WRITE_ZEROES => {
                let discard = self.ty == req_type::DISCARD;
                match self.ranges(config, discard) {
                    Ok(_) => Plan::Ranges(discard),
                    Err(d) => Plan::Finished(d),
                }
            }
            _ => Plan::Sync,
        }
    }

    /// The checked ranges of a discard or write-zeroes request.
    pub fn ranges(&self, config: &DeviceConfig, discard: bool) -> Result<Ranges, Done> {
        check_ranges(discard, config, &self.bufs.readable)
    }

    /// The data buffers of a read ([`Plan::Read`]) or a write.
    pub fn data(&self, write: bool) -> &[GuestIoVec<'m>] {
        if write {
            self.bufs.readable.as_slice()
        } else {
            self.bufs.writable.as_slice()
        }
    }
}

/// Parses and executes the request in `chain`.
/// `mem` is the memory the chain was popped from.
pub fn process<M>(
    chain: DescriptorChain<M>,
    mem: &M::Target,
    target: &Target<'_>,
    scratch: &mut Scratch,
) -> Result<Done, Malformed>
where
    M: Deref,
    M::Target: GuestMemory,
{
    Ok(parse(chain, mem, scratch)?.execute(target))
}

/// The byte offset of a read or write of `len` bytes at `sector`, or why
/// it fails (not whole sectors, past the capacity).
fn check_rw(config: &DeviceConfig, sector: u64, len: usize) -> Result<u64, Done> {
    if len as u64 % SECTOR != 0 {
        return Err(done(status::IOERR));
    }
    in_range(config, sector, len as u64).ok_or(done(status::IOERR))
}

fn done(status: u8) -> Done {
    Done {
        status,
        used_len: 0,
        host_error: None,
    }
}

fn host_error(what: &'static str, e: std::io::Error) -> Done {
    Done {
        status: status::IOERR,
        used_len: 0,
        host_error: Some((what, e.raw_os_error().unwrap_or(0))),
    }
}

/// Byte offset of `sector` if `len` bytes from there fit the capacity.
fn in_range(config: &DeviceConfig, sector: u64, len: u64) -> Option<u64> {
    let offset = sector.checked_mul(SECTOR)?;
    let end = offset.checked_add(len)?;
    (end <= config.capacity * SECTOR).then_some(offset)
}

fn execute(ty: u32, sector: u64, t: &Target<'_>, s: &mut Buffers<'_, '_>) -> Done {
    match ty {
        req_type::IN => {
            let len = s.writable.total_len();
            let offset = match check_rw(t.config, sector, len) {
                Ok(offset) => offset,
                Err(d) => return d,
            };
            match t.disk.read_vectored(&mut s.writable, offset) {
                Ok(()) => Done {
                    status: status::OK,
                    used_len: len as u32,
                    host_error: None,
                },
                Err(e) => host_error("read", e),
            }
        }
        req_type::OUT => {
            if t.config.read_only {
                return done(status::IOERR);
            }
            let offset = match check_rw(t.config, sector, s.readable.total_len()) {
                Ok(offset) => offset,
                Err(d) => return d,
            };
            match t.disk.write_vectored(&mut s.readable, offset) {
                Ok(()) => done(status::OK),
                Err(e) => host_error("write", e),
            }
        }
        req_type::FLUSH => match t.disk.flush() {
            Ok(()) => done(status::OK),
            Err(e) => host_error("flush", e),
        },
        req_type::GET_ID => {
            let n = s.writable.total_len().min(ID_LEN);
            copy_in(s.writable.as_slice(), &t.serial[..n]);
            Done {
                status: status::OK,
                used_len: n as u32,
                host_error: None,
            }
        }
        req_type::DISCARD | req_type::WRITE_ZEROES => {
            if t.config.read_only {
                return done(status::IOERR);
            }
            discard_or_zero(ty == req_type::DISCARD, t, s)
        }
        _ => done(status::UNSUPP),
    }
}

/// One byte range of a discard or write-zeroes request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// The space may be deallocated (always for a discard).
    pub unmap: bool,
}

/// The ranges of one request: at most [`MAX_DISCARD_SEG`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ranges {
    ranges: [Range; MAX_DISCARD_SEG as usize],
    n: usize,
}

impl Ranges {
    /// The ranges, in the driver's order.
    pub fn as_slice(&self) -> &[Range] {
        &self.ranges[..self.n]
    }
}

/// Reads and checks every segment of a discard (`discard`) or
/// write-zeroes request before any touches the image: whole segments,
/// at most [`MAX_DISCARD_SEG`], known flags (UNMAP for write-zeroes only),
/// each inside the capacity and at most [`MAX_DISCARD_SECTORS`].
fn check_ranges(
    discard: bool,
    config: &DeviceConfig,
    readable: &GuestIoVecs<'_, '_>,
) -> Result<Ranges, Done> {
    let len = readable.total_len();
    if len == 0 || len % SEGMENT_LEN != 0 || len / SEGMENT_LEN > MAX_DISCARD_SEG as usize {
        return Err(done(status::IOERR));
    }
    let mut segs = [0u8; SEGMENT_LEN * MAX_DISCARD_SEG as usize];
    copy_out(readable.as_slice(), &mut segs[..len]);
    let mut out = Ranges::default();
    for c in segs[..len].chunks_exact(SEGMENT_LEN) {
        let sector = u64::from_le_bytes(c[0..8].try_into().unwrap_or_default());
        let num = u32::from_le_bytes(c[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(c[12..16].try_into().unwrap_or_default());
        if flags & !FLAG_UNMAP != 0 || (discard && flags & FLAG_UNMAP != 0) {
            return Err(done(status::UNSUPP));
        }
        let bytes = u64::from(num) * SECTOR;
        let offset = match in_range(config, sector, bytes) {
            Some(offset) if num <= MAX_DISCARD_SECTORS => offset,
            _ => return Err(done(status::IOERR)),
        };
        out.ranges[out.n] = Range {
            offset,
            len: bytes,
            unmap: discard || flags & FLAG_UNMAP != 0,
        };
        out.n += 1;
    }
    Ok(out)
}

fn discard_or_zero(discard: bool, t: &Target<'_>, s: &Buffers<'_, '_>) -> Done {
    let ranges = match check_ranges(discard, t.config, &s.readable) {
        Ok(r) => r,
        Err(d) => return d,
    };
    for r in ranges.as_slice() {
        let result = if discard {
            t.disk.discard(r.offset, r.len)
        } else {
            t.disk.write_zeroes(r.offset, r.len, r.unmap)
        };
        if let Err(e) = result {
            return host_error(if discard { "discard" } else { "write-zeroes" }, e);
        }
    }
    done(status::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks_do_not_overflow() {
        let c = DeviceConfig::new(1 << 20, 512, 1, 128, false);
        assert_eq!(in_range(&c, 0, 1 << 20), Some(0));
        assert_eq!(in_range(&c, 1, 1 << 20), None);
        assert_eq!(in_range(&c, u64::MAX / 256, 512), None);
        assert_eq!(in_range(&c, 2047, 512), Some(2047 * 512));
    }
}
