//! virtio-fs (spec 5.11): the tag from the device configuration, then FUSE
//! INIT, LOOKUP of `hello.txt` in the root, OPEN and READ on the first
//! request queue, and the file's contents printed.
//!
//! With `fs-loop` on the command line it then READs the file again through
//! the same node id and handle until the power button, comparing each
//! reply with the first and printing `fs-loop: round N ok`; each request
//! waits up to ~60 s (a restarted daemon), and at the end it prints
//! `fs-loop: stopped after N rounds, no error` (or the first error).

use crate::io::{serial, serial_dec};
use crate::virtio::{report_msi, Device};
use crate::virtq::{alloc, put, r32, r64, r8, w32, w64, Buf, Virtq};

/// The file the guest reads from the root of the share.
pub const FILE: &[u8] = b"hello.txt";

const FUSE_LOOKUP: u32 = 1;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_INIT: u32 = 26;
const ROOT_ID: u64 = 1;
const IN_HEADER: u64 = 40;
const OUT_HEADER: u64 = 16;
/// Bytes of the file read (and room for the reply).
const READ_SIZE: u32 = 256;
const REPLY_SIZE: u32 = 512;

struct Session {
    q: Virtq,
    req: u64,
    reply: u64,
    unique: u64,
    /// ~10 s waits a request gets.
    waits: u32,
}

impl Session {
    /// Sends `opcode` on `nodeid` with `args`; the reply's payload length
    /// (after the out header), or the error it printed.
    fn request(&mut self, opcode: u32, nodeid: u64, args: &[u8]) -> Result<u32, &'static str> {
        self.unique += 1;
        let len = IN_HEADER as u32 + args.len() as u32;
        w32(self.req, len);
        w32(self.req + 4, opcode);
        w64(self.req + 8, self.unique);
        w64(self.req + 16, nodeid);
        for off in [24, 28, 32, 36] {
            w32(self.req + off, 0); // uid, gid, pid, extensions
        }
        put(self.req + IN_HEADER, args);
        w32(self.reply, 0);
        let chain = [Buf(self.req, len, false), Buf(self.reply, REPLY_SIZE, true)];
        self.q.add(&chain);
        self.q.kick();
        let written = (0..self.waits)
            .find_map(|_| self.q.wait())
            .map(|(_, len)| len)
            .ok_or("no reply")?;
        let error = r32(self.reply + 4) as i32;
        if error != 0 || r64(self.reply + 8) != self.unique {
            serial(b"fs: opcode ");
            serial_dec(opcode as u64);
            serial(b" answered error ");
            serial_dec(error.unsigned_abs() as u64);
            serial(b"\n");
            return Err("a FUSE request failed");
        }
        let reply_len = r32(self.reply).min(written);
        Ok(reply_len.saturating_sub(OUT_HEADER as u32))
    }
}

/// Little-endian fields laid end to end.
struct Args {
    bytes: [u8; 40],
    len: usize,
}

impl Args {
    fn new() -> Args {
        Args {
            bytes: [0; 40],
            len: 0,
        }
    }
    fn u32(mut self, v: u32) -> Args {
        self.bytes[self.len..self.len + 4].copy_from_slice(&v.to_le_bytes());
        self.len += 4;
        self
    }
    fn u64(mut self, v: u64) -> Args {
        self.bytes[self.len..self.len + 8].copy_from_slice(&v.to_le_bytes());
        self.len += 8;
        self
    }
    fn get(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

pub fn run(d: &mut Device) -> Result<(), &'static str> {
    d.negotiate(0)?;
    if d.cfg == 0 {
        return Err("no device configuration");
    }
    // Queue 0 is the high-priority queue; requests go to queue 1.
    let _hiprio = d.queue(0)?;
    let q = d.queue(1)?;
    d.driver_ok();
    let mut s = Session {
        q,
        req: alloc(128, 8).ok_or("out of memory")?,
        reply: alloc(REPLY_SIZE as usize, 8).ok_or("out of memory")?,
        unique: 0,
        waits: 1,
    };

    // fuse_init_in of protocol 7.31: major, minor, max_readahead, flags.
    let init = Args::new().u32(7).u32(31).u32(0).u32(0);
    s.request(FUSE_INIT, 0, init.get())?;
    let (major, minor) = (r32(s.reply + OUT_HEADER), r32(s.reply + OUT_HEADER + 4));

    let mut name = [0u8; 16];
    name[..FILE.len()].copy_from_slice(FILE);
    s.request(FUSE_LOOKUP, ROOT_ID, &name[..FILE.len() + 1])?;
    let node = r64(s.reply + OUT_HEADER); // fuse_entry_out.nodeid

    // fuse_open_in: flags O_RDONLY, open_flags.
    s.request(FUSE_OPEN, node, Args::new().u32(0).u32(0).get())?;
    let fh = r64(s.reply + OUT_HEADER);

    // fuse_read_in: fh, offset, size, read_flags, lock_owner, flags, padding.
    let read = Args::new()
        .u64(fh)
        .u64(0)
        .u32(READ_SIZE)
        .u32(0)
        .u64(0)
        .u32(0)
        .u32(0);
    let n = s.request(FUSE_READ, node, read.get())?.min(READ_SIZE);

    serial(b"fs: tag ");
    for i in 0..36 {
        let c = d.cfg8(i);
        if c == 0 {
            break;
        }
        serial(&[c]);
    }
    serial(b"; fuse ");
    serial_dec(major as u64);
    serial(b".");
    serial_dec(minor as u64);
    serial(b"; ");
    serial(FILE);
    serial(b" = \"");
    for i in 0..n as u64 {
        match r8(s.reply + OUT_HEADER + i) {
            b'\n' => serial(b"\\n"),
            b'"' => serial(b"\\\""),
            c @ 0x20..=0x7e => serial(&[c]),
            _ => serial(b"."),
        }
    }
    serial(b"\"");
    report_msi(&s.q);
    serial(b"\n");
    if crate::wait::cmdline_has(b"fs-loop") {
        let mut first = [0u8; READ_SIZE as usize];
        for (i, b) in first.iter_mut().enumerate().take(n as usize) {
            *b = r8(s.reply + OUT_HEADER + i as u64);
        }
        s.waits = crate::blk::LOOP_WAITS;
        read_loop(&mut s, node, read.get(), &first[..n as usize]);
    }
    Ok(())
}

/// `fs-loop` (see the module docs).
fn read_loop(s: &mut Session, node: u64, read: &[u8], first: &[u8]) {
    let _ = crate::wait::rounds(b"fs-loop", |_| {
        let got = s.request(FUSE_READ, node, read)?;
        let same = got as usize == first.len()
            && (0..first.len()).all(|i| r8(s.reply + OUT_HEADER + i as u64) == first[i]);
        if !same {
            return Err("a READ returned other bytes");
        }
        Ok(())
    });
}
