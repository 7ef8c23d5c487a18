//! virtio-blk (spec 5.2): writes a known pattern to sector 8 (the test
//! reads it back from the host's image), reads it back and compares.
//!
//! When the SRAT gives guest RAM in two or more ranges ([`use_far_memory`]),
//! it then writes sector 9 from a buffer in the last range's top pages and
//! reads it back into another there, so the backend reaches the far end of
//! guest RAM (the last NUMA node's zone): `blk: sector 9 through node N
//! memory at 0x...: ok`.
//!
//! With `blk-loop` on the command line it then loops until the power
//! button: round `n` writes sector `16 + n % 8` filled with
//! [`loop_byte`]`(n, i)`, reads it back and compares, and prints
//! `blk-loop: round N ok` (one line per round, so the host sees each
//! completion). A request may take long (its backend restarting): it is
//! waited for up to ~1 min. At the power button it prints
//! `blk-loop: stopped after N rounds, no error` (or the first error).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::io::{serial, serial_dec};
use crate::virtio::{report_msi, Device};
use crate::virtq::{alloc, r8, w32, w64, w8, Buf, Virtq};

const SECTOR: u64 = 8;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;

/// Byte `i` of the pattern written to sector 8: this text, then `i` mod 251.
pub const PATTERN_TEXT: &[u8] = b"guest-fw wrote sector 8 through virtio-blk\n";

fn pattern(i: usize) -> u8 {
    PATTERN_TEXT.get(i).copied().unwrap_or((i % 251) as u8)
}

/// Byte `i` of the sector written in round `n` of `blk-loop`.
pub fn loop_byte(n: u64, i: usize) -> u8 {
    ((n.wrapping_mul(7) + i as u64) % 253) as u8
}

/// The last SRAT memory range's node, and the two pages at its top the
/// sector 9 round trip uses (0: none).
static FAR_NODE: AtomicU32 = AtomicU32::new(0);
static FAR_PAGES: AtomicU64 = AtomicU64::new(0);

/// Do the sector 9 round trip through the top of this range (node, base,
/// size), set once before the drivers run.
pub fn use_far_memory((node, base, size): (u32, u64, u64)) {
    if size >= 0x2000 {
        FAR_NODE.store(node, Ordering::Relaxed);
        FAR_PAGES.store(base + size - 0x2000, Ordering::Relaxed);
    }
}

/// How many ~10 s waits a `*-loop` request gets (a restarting backend).
pub const LOOP_WAITS: u32 = 6;

pub fn run(d: &mut Device) -> Result<(), &'static str> {
    d.negotiate(0)?;
    let capacity = d.cfg32(0) as u64 | (d.cfg32(4) as u64) << 32;
    let mut q = d.queue(0)?;
    d.driver_ok();
    if capacity <= SECTOR {
        return Err("the disk is smaller than 9 sectors");
    }

    let req = Request {
        header: alloc(16, 16).ok_or("out of memory")?,
        status: alloc(1, 1).ok_or("out of memory")?,
    };
    let data = alloc(512, 512).ok_or("out of memory")?;
    let back = alloc(512, 512).ok_or("out of memory")?;
    for i in 0..512 {
        w8(data + i as u64, pattern(i));
    }

    for (kind, buf) in [(T_OUT, data), (T_IN, back)] {
        if req
            .sector_io(&mut q, kind, SECTOR, buf, 1)
            .ok_or("no completion")?
            != 0
        {
            return Err(if kind == T_OUT {
                "the write failed"
            } else {
                "the read failed"
            });
        }
    }
    if (0..512).any(|i| r8(back + i as u64) != pattern(i)) {
        return Err("sector 8 read back differs");
    }
    serial(b"blk: capacity ");
    serial_dec(capacity);
    serial(b" sectors; wrote and read back sector 8: ok");
    report_msi(&q);
    serial(b"\n");
    let far = FAR_PAGES.load(Ordering::Relaxed);
    if far != 0 {
        far_round_trip(&mut q, &req, FAR_NODE.load(Ordering::Relaxed), far)?;
    }
    if crate::wait::cmdline_has(b"blk-loop") {
        io_loop(&mut q, &req, data, back)?;
    }
    Ok(())
}

/// Sector 9 written from the page at `at` and read back into the page
/// after it (both in node `node`'s memory).
fn far_round_trip(q: &mut Virtq, req: &Request, node: u32, at: u64) -> Result<(), &'static str> {
    let (data, back) = (at, at + 0x1000);
    for i in 0..512 {
        w8(data + i as u64, loop_byte(9, i));
        w8(back + i as u64, 0);
    }
    for (kind, buf) in [(T_OUT, data), (T_IN, back)] {
        if req.sector_io(q, kind, 9, buf, 1).ok_or("no completion")? != 0 {
            return Err("sector 9 through far memory failed");
        }
    }
    if (0..512).any(|i| r8(back + i as u64) != loop_byte(9, i)) {
        return Err("sector 9 read back through far memory differs");
    }
    serial(b"blk: sector 9 through node ");
    serial_dec(node as u64);
    serial(b" memory at ");
    crate::io::serial_hex(data);
    serial(b": ok\n");
    Ok(())
}

/// The header and status buffers of one request at a time.
struct Request {
    header: u64,
    status: u64,
}

impl Request {
    /// Writes (`T_OUT`) the 512 bytes at `buf` to `sector`, or reads
    /// (`T_IN`) them into `buf`, waiting up to `waits` times (~10 s each)
    /// for the completion: its status byte, or None if none came.
    fn sector_io(&self, q: &mut Virtq, kind: u32, sector: u64, buf: u64, waits: u32) -> Option<u8> {
        w32(self.header, kind);
        w32(self.header + 4, 0);
        w64(self.header + 8, sector);
        w8(self.status, 0xff);
        let chain = [
            Buf(self.header, 16, false),
            Buf(buf, 512, kind == T_IN),
            Buf(self.status, 1, true),
        ];
        q.add(&chain);
        q.kick();
        (0..waits)
            .any(|_| q.wait().is_some())
            .then(|| r8(self.status))
    }
}

/// `blk-loop` (see the module docs).
fn io_loop(q: &mut Virtq, req: &Request, data: u64, back: u64) -> Result<(), &'static str> {
    crate::wait::rounds(b"blk-loop", |n| {
        let sector = 16 + n % 8;
        for i in 0..512 {
            w8(data + i as u64, loop_byte(n, i));
            w8(back + i as u64, 0);
        }
        for (kind, buf) in [(T_OUT, data), (T_IN, back)] {
            let status = req
                .sector_io(q, kind, sector, buf, LOOP_WAITS)
                .ok_or("no completion")?;
            if status != 0 {
                return Err(if kind == T_OUT {
                    "a write failed"
                } else {
                    "a read failed"
                });
            }
        }
        if (0..512).any(|i| r8(back + i as u64) != loop_byte(n, i)) {
            return Err("a sector read back differs");
        }
        Ok(())
    })
}
