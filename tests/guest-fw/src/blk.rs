//! virtio-blk (spec 5.2): writes a known pattern to sector 8 (the test
//! reads it back from the host's image), reads it back and compares.

use crate::io::{serial, serial_dec};
use crate::virtio::{report_msi, Device};
use crate::virtq::{alloc, r8, w32, w64, w8, Buf};

const SECTOR: u64 = 8;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;

/// Byte `i` of the pattern written to sector 8: this text, then `i` mod 251.
pub const PATTERN_TEXT: &[u8] = b"guest-fw wrote sector 8 through virtio-blk\n";

fn pattern(i: usize) -> u8 {
    PATTERN_TEXT.get(i).copied().unwrap_or((i % 251) as u8)
}

pub fn run(d: &mut Device) -> Result<(), &'static str> {
    d.negotiate(0)?;
    let capacity = d.cfg32(0) as u64 | (d.cfg32(4) as u64) << 32;
    let mut q = d.queue(0)?;
    d.driver_ok();
    if capacity <= SECTOR {
        return Err("the disk is smaller than 9 sectors");
    }

    let header = alloc(16, 16).ok_or("out of memory")?;
    let data = alloc(512, 512).ok_or("out of memory")?;
    let back = alloc(512, 512).ok_or("out of memory")?;
    let status = alloc(1, 1).ok_or("out of memory")?;
    for i in 0..512 {
        w8(data + i as u64, pattern(i));
    }

    for (kind, buf) in [(T_OUT, data), (T_IN, back)] {
        w32(header, kind);
        w32(header + 4, 0);
        w64(header + 8, SECTOR);
        w8(status, 0xff);
        let chain = [
            Buf(header, 16, false),
            Buf(buf, 512, kind == T_IN),
            Buf(status, 1, true),
        ];
        q.call(&chain).ok_or("no completion")?;
        if r8(status) != 0 {
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
    Ok(())
}
