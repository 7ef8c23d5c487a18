//! virtio-blk on top of [`VuDevice`]: requests, config space and a
//! preallocated slot per descriptor head so benchmarks allocate nothing in
//! their loop.

use std::path::Path;
use std::time::Duration;

use vm_memory::{Address, ByteValued, GuestAddress};

use crate::device::{DeviceError, DeviceOptions, VuDevice};
use crate::memory::MemoryError;
use crate::virtqueue::{QueueError, Seg, VirtQueue};

pub mod raw;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the GET_ID answer.
pub const ID_BYTES: u32 = 20;

/// Feature bits the driver understands (virtio 1.2, 5.2.3).
pub mod features {
    pub use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_F_BLK_SIZE as BLK_SIZE, VIRTIO_BLK_F_CONFIG_WCE as CONFIG_WCE,
        VIRTIO_BLK_F_DISCARD as DISCARD, VIRTIO_BLK_F_FLUSH as FLUSH,
        VIRTIO_BLK_F_GEOMETRY as GEOMETRY, VIRTIO_BLK_F_MQ as MQ, VIRTIO_BLK_F_RO as RO,
        VIRTIO_BLK_F_SEG_MAX as SEG_MAX, VIRTIO_BLK_F_SIZE_MAX as SIZE_MAX,
        VIRTIO_BLK_F_TOPOLOGY as TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES as WRITE_ZEROES,
    };

    /// All of the above, as a mask.
    pub const ALL: u64 = (1 << SIZE_MAX)
        | (1 << SEG_MAX)
        | (1 << GEOMETRY)
        | (1 << RO)
        | (1 << BLK_SIZE)
        | (1 << FLUSH)
        | (1 << TOPOLOGY)
        | (1 << CONFIG_WCE)
        | (1 << MQ)
        | (1 << DISCARD)
        | (1 << WRITE_ZEROES);
}

/// Request types (virtio 1.2, 5.2.6).
pub mod req {
    pub use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_DISCARD as DISCARD, VIRTIO_BLK_T_FLUSH as FLUSH,
        VIRTIO_BLK_T_GET_ID as GET_ID, VIRTIO_BLK_T_IN as IN, VIRTIO_BLK_T_OUT as OUT,
        VIRTIO_BLK_T_WRITE_ZEROES as WRITE_ZEROES,
    };
}

/// Status byte values (virtio 1.2, 5.2.6).
pub mod status {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};

    /// Success.
    pub const OK: u8 = VIRTIO_BLK_S_OK as u8;
    /// I/O error.
    pub const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    /// Unsupported request.
    pub const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
}

/// Errors of the block helper.
#[derive(Debug, thiserror::Error)]
pub enum BlkError {
    /// Setting up the device failed.
    #[error("virtio-blk device")]
    Device(#[from] DeviceError),
    /// The queue failed.
    #[error("virtio-blk queue")]
    Queue(#[from] QueueError),
    /// Guest memory failed.
    #[error("virtio-blk buffers")]
    Memory(#[from] MemoryError),
    /// The device answered with a status other than OK.
    #[error("virtio-blk {op} at sector {sector}: status {status}")]
    Status {
        /// The request.
        op: &'static str,
        /// Its sector.
        sector: u64,
        /// The status byte.
        status: u8,
    },
    /// A request larger than the slot buffers.
    #[error("virtio-blk request of {len} bytes exceeds the {max}-byte buffer")]
    TooLarge {
        /// Bytes asked for.
        len: u64,
        /// Slot capacity.
        max: u64,
    },
    /// No free slot (every head is in flight).
    #[error("virtio-blk queue {0}: no free request slot")]
    NoSlot(u16),
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, BlkError>;

/// virtio_blk_outhdr.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct OutHdr {
    /// Request type.
    pub type_: u32,
    /// Priority (unused).
    pub ioprio: u32,
    /// First sector.
    pub sector: u64,
}
// SAFETY: repr(C) plain data without padding.
unsafe impl ByteValued for OutHdr {}

/// virtio_blk_discard_write_zeroes.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct DiscardWz {
    /// First sector.
    pub sector: u64,
    /// Sectors.
    pub num_sectors: u32,
    /// Bit 0: unmap.
    pub flags: u32,
}
// SAFETY: repr(C) plain data without padding.
unsafe impl ByteValued for DiscardWz {}

/// The parts of virtio_blk_config the driver reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Largest segment.
    pub size_max: u32,
    /// Most segments in a request.
    pub seg_max: u32,
    /// Logical block size.
    pub blk_size: u32,
    /// log2(physical block / logical block).
    pub physical_block_exp: u8,
    /// Minimum I/O size in blocks.
    pub min_io_size: u16,
    /// Optimal I/O size in blocks.
    pub opt_io_size: u32,
    /// Write cache mode (1 = writeback).
    pub writeback: u8,
    /// Request queues.
    pub num_queues: u16,
    /// Discard limit in sectors.
    pub max_discard_sectors: u32,
    /// Discard segment limit.
    pub max_discard_seg: u32,
    /// Discard alignment in sectors.
    pub discard_sector_alignment: u32,
    /// Write-zeroes limit in sectors.
    pub max_write_zeroes_sectors: u32,
    /// Write-zeroes segment limit.
    pub max_write_zeroes_seg: u32,
    /// Whether write-zeroes may unmap.
    pub write_zeroes_may_unmap: u8,
}

/// Bytes of virtio_blk_config up to write_zeroes_may_unmap and its padding.
pub const CONFIG_LEN: u32 = 60;

impl BlkConfig {
    /// Parses the little-endian config space.
    pub fn parse(b: &[u8]) -> BlkConfig {
        let mut buf = [0u8; CONFIG_LEN as usize];
        let n = b.len().min(buf.len());
        buf[..n].copy_from_slice(&b[..n]);
        let u16at = |o: usize| u16::from_le_bytes([buf[o], buf[o + 1]]);
        let u32at = |o: usize| u32::from_le_bytes(buf[o..o + 4].try_into().expect("4 bytes"));
        BlkConfig {
            capacity: u64::from_le_bytes(buf[0..8].try_into().expect("8 bytes")),
            size_max: u32at(8),
            seg_max: u32at(12),
            blk_size: u32at(20),
            physical_block_exp: buf[24],
            min_io_size: u16at(26),
            opt_io_size: u32at(28),
            writeback: buf[32],
            num_queues: u16at(34),
            max_discard_sectors: u32at(36),
            max_discard_seg: u32at(40),
            discard_sector_alignment: u32at(44),
            max_write_zeroes_sectors: u32at(48),
            max_write_zeroes_seg: u32at(52),
            write_zeroes_may_unmap: buf[56],
        }
    }
}

/// One request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes at `sector` into the slot's buffer.
    Read {
        /// First sector.
        sector: u64,
        /// Bytes.
        len: u32,
    },
    /// Write `len` bytes of the slot's buffer at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Bytes.
        len: u32,
    },
    /// Flush the write cache.
    Flush,
    /// Read the 20-byte id into the slot's buffer.
    GetId,
    /// Discard sectors.
    Discard {
        /// First sector.
        sector: u64,
        /// Sectors.
        num_sectors: u32,
    },
    /// Zero sectors.
    WriteZeroes {
        /// First sector.
        sector: u64,
        /// Sectors.
        num_sectors: u32,
        /// Allow unmapping.
        unmap: bool,
    },
    /// Any request type with no data (for UNSUPP tests).
    Raw {
        /// Type field.
        type_: u32,
        /// Sector field.
        sector: u64,
    },
}

impl Request {
    /// A name for logs and errors.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Read { .. } => "read",
            Request::Write { .. } => "write",
            Request::Flush => "flush",
            Request::GetId => "get-id",
            Request::Discard { .. } => "discard",
            Request::WriteZeroes { .. } => "write-zeroes",
            Request::Raw { .. } => "raw",
        }
    }
    fn sector(&self) -> u64 {
        match *self {
            Request::Read { sector, .. }
            | Request::Write { sector, .. }
            | Request::Discard { sector, .. }
            | Request::WriteZeroes { sector, .. }
            | Request::Raw { sector, .. } => sector,
            Request::Flush | Request::GetId => 0,
        }
    }
}

/// A finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The slot it used.
    pub slot: u16,
    /// The status byte.
    pub status: u8,
    /// Bytes the device reported written.
    pub used_len: u32,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    hdr: GuestAddress,
    status: GuestAddress,
    data: GuestAddress,
}

/// One request queue and its slots; several can be driven from separate threads.
pub struct BlkQueue<'a> {
    vq: &'a mut VirtQueue,
    slots: &'a [Slot],
    free: &'a mut Vec<u16>,
    max_io: u64,
    data_segments: u32,
}

impl BlkQueue<'_> {
    /// The slot's data buffer.
    pub fn data_addr(&self, slot: u16) -> GuestAddress {
        self.slots[usize::from(slot)].data
    }
    /// Splits each data buffer into `n` descriptors (Linux does for scattered pages).
    pub fn set_data_segments(&mut self, n: u32) {
        self.data_segments = n.max(1);
    }
    /// The slot the next [`BlkQueue::submit`] will use: fill its data buffer first.
    pub fn peek_slot(&self) -> Option<u16> {
        self.free.last().copied()
    }
    /// Chains in flight.
    pub fn in_flight(&self) -> usize {
        self.vq.in_flight()
    }
    /// The underlying virtqueue.
    pub fn virtqueue(&mut self) -> &mut VirtQueue {
        self.vq
    }

    /// Queues `r` in a free slot (data for writes must already be in
    /// [`BlkQueue::data_addr`]); it goes out at the next [`BlkQueue::kick`].
    pub fn submit(&mut self, r: Request) -> Result<u16> {
        let slot = self.free.pop().ok_or(BlkError::NoSlot(self.vq.index()))?;
        match self.submit_in(slot, r) {
            Ok(()) => Ok(slot),
            Err(e) => {
                self.free.push(slot);
                Err(e)
            }
        }
    }

    fn submit_in(&mut self, slot: u16, r: Request) -> Result<()> {
        let s = self.slots[usize::from(slot)];
        let mem = self.vq.mem().clone();
        let (type_, sector) = match r {
            Request::Read { sector, .. } => (req::IN, sector),
            Request::Write { sector, .. } => (req::OUT, sector),
            Request::Flush => (req::FLUSH, 0),
            Request::GetId => (req::GET_ID, 0),
            Request::Discard { .. } => (req::DISCARD, 0),
            Request::WriteZeroes { .. } => (req::WRITE_ZEROES, 0),
            Request::Raw { type_, sector } => (type_, sector),
        };
        mem.write_obj(
            s.hdr,
            OutHdr {
                type_,
                ioprio: 0,
                sector,
            },
        )?;
        mem.write(s.status, &[0xff])?;
        let mut segs = vec![Seg::out(s.hdr, 16)];
        match r {
            Request::Read { len, .. } | Request::Write { len, .. } => {
                if u64::from(len) > self.max_io {
                    return Err(BlkError::TooLarge {
                        len: len.into(),
                        max: self.max_io,
                    });
                }
                let writes = matches!(r, Request::Read { .. });
                split(&mut segs, s.data, len, self.data_segments, writes);
            }
            Request::GetId => segs.push(Seg::inp(s.data, ID_BYTES)),
            Request::Discard {
                sector,
                num_sectors,
            }
            | Request::WriteZeroes {
                sector,
                num_sectors,
                ..
            } => {
                let flags = u32::from(matches!(r, Request::WriteZeroes { unmap: true, .. }));
                mem.write_obj(
                    s.data,
                    DiscardWz {
                        sector,
                        num_sectors,
                        flags,
                    },
                )?;
                segs.push(Seg::out(s.data, 16));
            }
            Request::Flush | Request::Raw { .. } => {}
        }
        segs.push(Seg::inp(s.status, 1));
        self.vq.add(&segs, u64::from(slot))?;
        Ok(())
    }

    /// Publishes submitted requests and notifies the backend.
    pub fn kick(&mut self) -> Result<()> {
        self.vq.kick()?;
        Ok(())
    }

    /// Returns every finished request, waiting up to `timeout` for the first.
    pub fn reap(&mut self, timeout: Duration, out: &mut Vec<Completion>) -> Result<()> {
        let first = self.vq.wait_used(timeout)?;
        self.complete(first, out)?;
        while let Some(u) = self.vq.pop_used()? {
            self.complete(u, out)?;
        }
        Ok(())
    }

    fn complete(&mut self, u: crate::virtqueue::Used, out: &mut Vec<Completion>) -> Result<()> {
        let Some(token) = u.token else {
            return Ok(());
        };
        let slot = token as u16;
        let mut st = [0u8];
        self.vq
            .mem()
            .read(self.slots[usize::from(slot)].status, &mut st)?;
        self.free.push(slot);
        out.push(Completion {
            slot,
            status: st[0],
            used_len: u.len,
        });
        Ok(())
    }

    /// Submits `r`, waits for it, and fails unless the status is OK.
    pub fn execute(&mut self, r: Request, timeout: Duration) -> Result<Completion> {
        let slot = self.submit(r)?;
        self.kick()?;
        let mut done = Vec::new();
        loop {
            self.reap(timeout, &mut done)?;
            if let Some(c) = done.iter().find(|c| c.slot == slot) {
                if c.status != status::OK {
                    return Err(BlkError::Status {
                        op: r.op(),
                        sector: r.sector(),
                        status: c.status,
                    });
                }
                return Ok(*c);
            }
            done.clear();
        }
    }
}

fn split(segs: &mut Vec<Seg>, base: GuestAddress, len: u32, n: u32, device_writes: bool) {
    let n = n.min(len.max(1));
    let chunk = len.div_ceil(n);
    let mut off = 0u32;
    while off < len || (len == 0 && off == 0) {
        let l = chunk.min(len - off);
        let seg = Seg {
            addr: base.unchecked_add(u64::from(off)),
            len: l,
            device_writes,
        };
        segs.push(seg);
        if len == 0 {
            break;
        }
        off += l;
    }
}

/// Options for [`BlkClient::connect`].
#[derive(Debug, Clone)]
pub struct BlkOptions {
    /// Generic device options (queues, sizes, EVENT_IDX...).
    pub device: DeviceOptions,
    /// Largest data transfer per request (sizes each slot's buffer).
    pub max_io: u64,
    /// Slots per queue (at most the queue size).
    pub slots_per_queue: u16,
    /// How long a synchronous request may take.
    pub timeout: Duration,
}

impl Default for BlkOptions {
    fn default() -> Self {
        BlkOptions {
            device: DeviceOptions {
                device_features: features::ALL,
                queue_size: 128,
                ..DeviceOptions::default()
            },
            max_io: 1 << 20,
            slots_per_queue: 64,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A virtio-blk device driven from user space.
pub struct BlkClient {
    dev: VuDevice,
    slots: Vec<Vec<Slot>>,
    free: Vec<Vec<u16>>,
    max_io: u64,
    timeout: Duration,
}

impl BlkClient {
    /// Connects to a vhost-user-blk backend and starts its queues.
    pub fn connect(socket: &Path, opts: &BlkOptions) -> Result<Self> {
        let mut dopts = opts.device.clone();
        let per_queue = u64::from(opts.slots_per_queue) * (opts.max_io + 4096 + 64);
        let rings = (1u64 << 20) * dopts.num_queues as u64;
        dopts.mem_size = dopts
            .mem_size
            .max(per_queue * dopts.num_queues as u64 + rings + (4 << 20));
        let dev = VuDevice::connect(socket, &dopts)?;
        let mem = dev.mem().clone();
        let mut slots = Vec::new();
        let mut free = Vec::new();
        let n = opts.slots_per_queue.min(dopts.queue_size);
        for _ in 0..dopts.num_queues {
            let mut qs = Vec::new();
            for _ in 0..n {
                qs.push(Slot {
                    hdr: mem.alloc(16, 16)?,
                    status: mem.alloc(1, 1)?,
                    data: mem.alloc(opts.max_io.max(64), 4096)?,
                });
            }
            slots.push(qs);
            free.push((0..n).rev().collect());
        }
        Ok(BlkClient {
            dev,
            slots,
            free,
            max_io: opts.max_io,
            timeout: opts.timeout,
        })
    }

    /// The generic device.
    pub fn device(&mut self) -> &mut VuDevice {
        &mut self.dev
    }

    /// Reads the config space (GET_CONFIG).
    pub fn config(&mut self) -> Result<BlkConfig> {
        Ok(BlkConfig::parse(&self.dev.get_config(0, CONFIG_LEN)?))
    }

    /// Queue `i` with its slots.
    pub fn queue(&mut self, i: usize) -> BlkQueue<'_> {
        BlkQueue {
            vq: self.dev.queue(i),
            slots: &self.slots[i],
            free: &mut self.free[i],
            max_io: self.max_io,
            data_segments: 1,
        }
    }

    /// Every queue, for driving them from separate threads.
    pub fn queues(&mut self) -> Vec<BlkQueue<'_>> {
        let max_io = self.max_io;
        self.dev
            .queues_mut()
            .iter_mut()
            .zip(self.slots.iter())
            .zip(self.free.iter_mut())
            .map(|((vq, slots), free)| BlkQueue {
                vq,
                slots,
                free,
                max_io,
                data_segments: 1,
            })
            .collect()
    }

    /// Reads `len` bytes at `sector`.
    pub fn read(&mut self, sector: u64, len: u32) -> Result<Vec<u8>> {
        let t = self.timeout;
        let mut q = self.queue(0);
        let c = q.execute(Request::Read { sector, len }, t)?;
        let data = q.vq.mem().read_vec(q.data_addr(c.slot), len as usize)?;
        Ok(data)
    }

    /// Writes `data` at `sector`.
    pub fn write(&mut self, sector: u64, data: &[u8]) -> Result<()> {
        let t = self.timeout;
        let len = data.len() as u64;
        if len > self.max_io {
            return Err(BlkError::TooLarge {
                len,
                max: self.max_io,
            });
        }
        let mut q = self.queue(0);
        let next = q.peek_slot().ok_or(BlkError::NoSlot(0))?;
        q.vq.mem().write(q.data_addr(next), data)?;
        q.execute(
            Request::Write {
                sector,
                len: len as u32,
            },
            t,
        )?;
        Ok(())
    }

    /// Flushes the write cache.
    pub fn flush(&mut self) -> Result<()> {
        let t = self.timeout;
        self.queue(0).execute(Request::Flush, t)?;
        Ok(())
    }

    /// Discards sectors.
    pub fn discard(&mut self, sector: u64, num_sectors: u32) -> Result<()> {
        let t = self.timeout;
        self.queue(0).execute(
            Request::Discard {
                sector,
                num_sectors,
            },
            t,
        )?;
        Ok(())
    }

    /// Zeroes sectors.
    pub fn write_zeroes(&mut self, sector: u64, num_sectors: u32, unmap: bool) -> Result<()> {
        let t = self.timeout;
        self.queue(0).execute(
            Request::WriteZeroes {
                sector,
                num_sectors,
                unmap,
            },
            t,
        )?;
        Ok(())
    }

    /// The device id (GET_ID), trailing NULs removed.
    pub fn get_id(&mut self) -> Result<String> {
        let t = self.timeout;
        let mut q = self.queue(0);
        let c = q.execute(Request::GetId, t)?;
        let raw =
            q.vq.mem()
                .read_vec(q.data_addr(c.slot), ID_BYTES as usize)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_little_endian_fields() {
        let mut b = vec![0u8; CONFIG_LEN as usize];
        b[0..8].copy_from_slice(&2048u64.to_le_bytes());
        b[12..16].copy_from_slice(&126u32.to_le_bytes());
        b[20..24].copy_from_slice(&4096u32.to_le_bytes());
        b[34..36].copy_from_slice(&4u16.to_le_bytes());
        b[36..40].copy_from_slice(&8u32.to_le_bytes());
        b[56] = 1;
        let c = BlkConfig::parse(&b);
        assert_eq!(c.capacity, 2048);
        assert_eq!(c.seg_max, 126);
        assert_eq!(c.blk_size, 4096);
        assert_eq!(c.num_queues, 4);
        assert_eq!(c.max_discard_sectors, 8);
        assert_eq!(c.write_zeroes_may_unmap, 1);
        // A short config (older device) leaves the rest zero.
        assert_eq!(BlkConfig::parse(&b[..8]).blk_size, 0);
    }

    #[test]
    fn split_covers_buffer_exactly() {
        let mut segs = Vec::new();
        split(&mut segs, GuestAddress(0x1000), 10000, 3, true);
        assert_eq!(segs.len(), 3);
        assert_eq!(segs.iter().map(|s| s.len).sum::<u32>(), 10000);
        assert_eq!(segs[1].addr, GuestAddress(0x1000 + 3334));
        assert!(segs.iter().all(|s| s.device_writes));
        segs.clear();
        split(&mut segs, GuestAddress(0x1000), 4096, 1, false);
        assert_eq!(segs, vec![Seg::out(GuestAddress(0x1000), 4096)]);
    }
}
