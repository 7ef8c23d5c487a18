//! A few valid inputs per target, the seed corpus that
//! `examples/seeds.rs` writes under `tests/fuzz/corpus/<target>/`.

use crate::fuse::{body, init_message, message};
use crate::ring::Layout;
use crate::vu::{self, FdKind, Script};

/// One seed: its file name and bytes.
pub type Seed = (String, Vec<u8>);

/// Descriptor flags.
const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

/// A ring input for `ring::Ring`: descriptor table, avail ring and
/// buffers, built the way a driver would.
#[derive(Debug, Clone)]
pub struct Image {
    b0: u8,
    extra: u8,
    layout: Layout,
    mem: Vec<u8>,
    next_desc: u16,
    heads: Vec<u16>,
    data: u64,
}

impl Image {
    /// A queue of `1 << log2` entries; `flags` are the device's 4 bits
    /// of byte 0, `extra` its byte 1.
    pub fn new(log2: u8, event_idx: bool, flags: u8, extra: u8) -> Self {
        let layout = Layout::new(1 << log2);
        Image {
            b0: log2 | (u8::from(event_idx) << 3) | (flags << 4),
            extra,
            layout,
            mem: Vec::new(),
            next_desc: 0,
            heads: Vec::new(),
            data: layout.data,
        }
    }

    fn put(&mut self, addr: u64, bytes: &[u8]) {
        let (a, end) = (addr as usize, addr as usize + bytes.len());
        if self.mem.len() < end {
            self.mem.resize(end, 0);
        }
        self.mem[a..end].copy_from_slice(bytes);
    }

    /// `bytes` in the buffer area; returns their address.
    pub fn buf(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.data;
        self.put(addr, bytes);
        self.data = (addr + bytes.len() as u64).next_multiple_of(16);
        addr
    }

    /// `len` zero bytes in the buffer area.
    pub fn space(&mut self, len: usize) -> u64 {
        self.buf(&vec![0; len])
    }

    fn desc_at(&mut self, table: u64, i: u16, d: (u64, u32, u16, u16)) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&d.0.to_le_bytes());
        b[8..12].copy_from_slice(&d.1.to_le_bytes());
        b[12..14].copy_from_slice(&d.2.to_le_bytes());
        b[14..].copy_from_slice(&d.3.to_le_bytes());
        self.put(table + 16 * u64::from(i), &b);
    }

    fn links(parts: &[(u64, u32, bool)], first: u16) -> Vec<(u64, u32, u16, u16)> {
        parts
            .iter()
            .enumerate()
            .map(|(k, &(addr, len, w))| {
                let last = k + 1 == parts.len();
                let flags = if w { WRITE } else { 0 } | if last { 0 } else { NEXT };
                let next = if last { 0 } else { first + k as u16 + 1 };
                (addr, len, flags, next)
            })
            .collect()
    }

    /// A chain of `(addr, len, device-writable)` buffers in consecutive
    /// descriptors, made available.
    pub fn chain(&mut self, parts: &[(u64, u32, bool)]) {
        let first = self.next_desc;
        for (k, d) in Self::links(parts, first).into_iter().enumerate() {
            self.desc_at(self.layout.desc, first + k as u16, d);
        }
        self.next_desc += parts.len() as u16;
        self.heads.push(first);
    }

    /// The same buffers in an indirect table behind one descriptor.
    pub fn indirect(&mut self, parts: &[(u64, u32, bool)]) {
        let table = self.space(16 * parts.len());
        for (k, d) in Self::links(parts, 0).into_iter().enumerate() {
            self.desc_at(table, k as u16, d);
        }
        let head = self.next_desc;
        let d = (table, 16 * parts.len() as u32, INDIRECT, 0);
        self.desc_at(self.layout.desc, head, d);
        self.next_desc += 1;
        self.heads.push(head);
    }

    /// The input: bytes 0 and 1, then memory with the avail ring filled in.
    pub fn finish(mut self) -> Vec<u8> {
        let avail = self.layout.avail;
        let heads = std::mem::take(&mut self.heads);
        self.put(avail + 2, &(heads.len() as u16).to_le_bytes());
        for (k, h) in heads.iter().enumerate() {
            self.put(avail + 4 + 2 * k as u64, &h.to_le_bytes());
        }
        // The used ring exists even when nothing is in it yet.
        let used_end = self.layout.data;
        if (self.mem.len() as u64) < used_end {
            self.mem.resize(used_end as usize, 0);
        }
        let mut out = vec![self.b0, self.extra];
        out.extend_from_slice(&self.mem);
        out
    }
}

fn blk_header(ty: u32, sector: u64) -> Vec<u8> {
    let mut h = ty.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

/// Chains a write of `data` at `sector`: the header, `data` readable and
/// a writable status byte.
fn blk_write(img: &mut Image, sector: u64, data: &[u8]) {
    let h = img.buf(&blk_header(1, sector));
    let d = img.buf(data);
    let s = img.space(1);
    img.chain(&[(h, 16, false), (d, data.len() as u32, false), (s, 1, true)]);
}

/// vhost-blk-daemon requests.
pub fn blk_request() -> Vec<Seed> {
    let mut seeds = Vec::new();

    let mut img = Image::new(3, false, 0, 0);
    let h = img.buf(&blk_header(0, 1));
    let d = img.space(512);
    let s = img.space(1);
    img.chain(&[(h, 16, false), (d, 512, true), (s, 1, true)]);
    seeds.push(("read".into(), img.finish()));

    let mut img = Image::new(3, true, 0, 0);
    blk_write(&mut img, 2, &[0x5a; 1024]);
    let h = img.buf(&blk_header(0, 2));
    let d = img.space(1024 + 1);
    img.chain(&[(h, 16, false), (d, 1025, true)]);
    seeds.push(("write_then_read".into(), img.finish()));

    let mut img = Image::new(4, true, 0, 0);
    let h = img.buf(&blk_header(4, 0));
    let s = img.space(1);
    img.chain(&[(h, 16, false), (s, 1, true)]);
    let h = img.buf(&blk_header(8, 0));
    let d = img.space(21);
    img.chain(&[(h, 16, false), (d, 21, true)]);
    let mut seg = 3u64.to_le_bytes().to_vec();
    seg.extend_from_slice(&4u32.to_le_bytes());
    seg.extend_from_slice(&0u32.to_le_bytes());
    let mut hd = blk_header(11, 0);
    hd.extend_from_slice(&seg);
    let h = img.buf(&hd);
    let s = img.space(1);
    img.chain(&[(h, 32, false), (s, 1, true)]);
    let mut hz = blk_header(13, 0);
    let mut zseg = 8u64.to_le_bytes().to_vec();
    zseg.extend_from_slice(&2u32.to_le_bytes());
    zseg.extend_from_slice(&1u32.to_le_bytes());
    hz.extend_from_slice(&zseg);
    let h = img.buf(&hz);
    let s = img.space(1);
    img.chain(&[(h, 32, false), (s, 1, true)]);
    seeds.push(("flush_id_discard_zeroes".into(), img.finish()));

    let mut img = Image::new(2, false, 0, 0);
    let h = img.buf(&blk_header(0, 0));
    let d = img.space(512);
    let s = img.space(1);
    img.indirect(&[
        (h, 16, false),
        (d, 256, true),
        (d + 256, 256, true),
        (s, 1, true),
    ]);
    seeds.push(("indirect_read".into(), img.finish()));

    let mut img = Image::new(1, false, 1, 0);
    blk_write(&mut img, 0, &[1; 512]);
    seeds.push(("write_read_only".into(), img.finish()));
    seeds
}

/// A UDP frame behind a virtio-net header.
fn frame(flags: u8, gso_type: u8, gso_size: u16, csum: (u16, u16), payload: usize) -> Vec<u8> {
    let mut f = vec![flags, gso_type];
    for v in [34u16, gso_size, csum.0, csum.1, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[
        0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 8, 0, 0]);
    f.extend(std::iter::repeat_n(0x61, payload));
    f
}

/// vhost-net-daemon TX chains.
pub fn net_tx() -> Vec<Seed> {
    let mut seeds = Vec::new();
    let mut img = Image::new(2, false, 0, 0);
    let f = frame(0, 0, 0, (0, 0), 18);
    let a = img.buf(&f);
    img.chain(&[(a, f.len() as u32, false)]);
    let a = img.buf(&f);
    img.chain(&[(a, 12, false), (a + 12, f.len() as u32 - 12, false)]);
    seeds.push(("plain".into(), img.finish()));

    let mut img = Image::new(3, true, 0, 0b1111);
    let f = frame(1, 0, 0, (34, 6), 100);
    let a = img.buf(&f);
    img.chain(&[(a, f.len() as u32, false)]);
    let f = frame(1, 1, 1448, (34, 16), 3000);
    let a = img.buf(&f);
    img.chain(&[
        (a, 12, false),
        (a + 12, 54, false),
        (a + 66, f.len() as u32 - 66, false),
    ]);
    let f = frame(1, 4 | 0x80, 1448, (54, 16), 200);
    let a = img.buf(&f);
    img.indirect(&[(a, f.len() as u32, false)]);
    seeds.push(("offloads".into(), img.finish()));
    seeds
}

/// vhost-net-daemon control commands.
pub fn net_ctrl() -> Vec<Seed> {
    let mut img = Image::new(3, false, 0, 0b1111_0000);
    let cmd = |img: &mut Image, class: u8, c: u8, data: &[u8]| {
        let h = img.buf(&[class, c]);
        let d = img.buf(data);
        let ack = img.space(1);
        img.chain(&[(h, 2, false), (d, data.len() as u32, false), (ack, 1, true)]);
    };
    cmd(&mut img, 0, 0, &[0]);
    cmd(&mut img, 0, 1, &[1]);
    let mut table = 1u32.to_le_bytes().to_vec();
    table.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 9]);
    table.extend_from_slice(&1u32.to_le_bytes());
    table.extend_from_slice(&[0x01, 0, 0x5e, 0, 0, 1]);
    cmd(&mut img, 1, 0, &table);
    cmd(&mut img, 4, 0, &2u16.to_le_bytes());
    vec![("commands".into(), img.finish())]
}

/// One `fs_request` message: `[len][split][reply]` and the bytes.
fn fs_msg(out: &mut Vec<u8>, msg: &[u8], split: u8, reply: u8) {
    out.extend_from_slice(&(msg.len() as u16).to_le_bytes());
    out.push(split);
    out.push(reply);
    out.extend_from_slice(msg);
}

fn fs_seed(flags: u8, msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![flags];
    for (k, m) in msgs.iter().enumerate() {
        fs_msg(&mut out, m, if k % 3 == 2 { 20 } else { 0 }, 80);
    }
    out
}

/// virtiofsd FUSE sessions (flags bit 0: INIT sent first).
pub fn fs_request() -> Vec<Seed> {
    const LOOKUP: u32 = 1;
    const FORGET: u32 = 2;
    const GETATTR: u32 = 3;
    const SETATTR: u32 = 4;
    const READLINK: u32 = 5;
    const SYMLINK: u32 = 6;
    const MKDIR: u32 = 9;
    const UNLINK: u32 = 10;
    const RMDIR: u32 = 11;
    const RENAME: u32 = 12;
    const LINK: u32 = 13;
    const OPEN: u32 = 14;
    const READ: u32 = 15;
    const WRITE: u32 = 16;
    const STATFS: u32 = 17;
    const RELEASE: u32 = 18;
    const SETXATTR: u32 = 21;
    const GETXATTR: u32 = 22;
    const LISTXATTR: u32 = 23;
    const FLUSH: u32 = 25;
    const OPENDIR: u32 = 27;
    const READDIR: u32 = 28;
    const RELEASEDIR: u32 = 29;
    const ACCESS: u32 = 34;
    const CREATE: u32 = 35;
    const BATCH_FORGET: u32 = 42;
    const FALLOCATE: u32 = 43;
    const READDIRPLUS: u32 = 44;
    const LSEEK: u32 = 46;
    let read_in = |fh: u64, off: u64, size: u64| {
        body(&[fh, off, size, 0, 0, 0, 0], &[8, 8, 4, 4, 8, 4, 4], &[])
    };
    let mut seeds = Vec::new();
    seeds.push((
        "init_getattr".into(),
        fs_seed(
            0,
            &[
                init_message(),
                message(GETATTR, 2, 1, &body(&[0, 0, 0], &[4, 4, 8], &[])),
                message(STATFS, 3, 1, &[]),
            ],
        ),
    ));
    seeds.push((
        "lookup_read".into(),
        fs_seed(
            1,
            &[
                message(LOOKUP, 2, 1, &body(&[], &[], &["f"])),
                message(OPEN, 3, 2, &body(&[0, 0], &[4, 4], &[])),
                message(READ, 4, 2, &read_in(1, 0, 4096)),
                message(READ, 5, 2, &read_in(0, 100, 64)),
                message(LSEEK, 6, 2, &body(&[1, 10, 3, 0], &[8, 8, 4, 4], &[])),
                message(RELEASE, 7, 2, &body(&[1, 0, 0, 0], &[8, 4, 4, 8], &[])),
                message(FORGET, 8, 2, &body(&[1], &[8], &[])),
            ],
        ),
    ));
    let mut write = body(&[1, 0, 5, 0, 0, 0, 0], &[8, 8, 4, 4, 8, 4, 4], &[]);
    write.extend_from_slice(b"hello");
    seeds.push((
        "create_write".into(),
        fs_seed(
            1,
            &[
                message(
                    CREATE,
                    2,
                    1,
                    &body(&[0o102, 0o100644, 0o022, 0], &[4, 4, 4, 4], &["n"]),
                ),
                message(WRITE, 3, 2, &write),
                message(FLUSH, 4, 2, &body(&[1, 0, 0, 0], &[8, 4, 4, 8], &[])),
                message(
                    SETATTR,
                    5,
                    2,
                    &body(
                        &[8 | 1, 0, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0o100600, 0, 0, 0, 0],
                        &[4, 4, 8, 8, 8, 8, 8, 8, 4, 4, 4, 4, 4, 4, 4, 4],
                        &[],
                    ),
                ),
                message(
                    FALLOCATE,
                    6,
                    2,
                    &body(&[1, 0, 8192, 0, 0], &[8, 8, 8, 4, 4], &[]),
                ),
                message(ACCESS, 7, 2, &body(&[4, 0], &[4, 4], &[])),
                message(RELEASE, 8, 2, &body(&[1, 0, 0, 0], &[8, 4, 4, 8], &[])),
                message(UNLINK, 9, 1, &body(&[], &[], &["n"])),
            ],
        ),
    ));
    seeds.push((
        "dirs".into(),
        fs_seed(
            1,
            &[
                message(MKDIR, 2, 1, &body(&[0o755, 0o022], &[4, 4], &["m"])),
                message(OPENDIR, 3, 1, &body(&[0, 0], &[4, 4], &[])),
                message(READDIR, 4, 1, &read_in(1, 0, 4096)),
                message(READDIRPLUS, 5, 1, &read_in(1, 0, 4096)),
                message(RELEASEDIR, 6, 1, &body(&[1, 0, 0, 0], &[8, 4, 4, 8], &[])),
                message(RMDIR, 7, 1, &body(&[], &[], &["m"])),
                message(LOOKUP, 8, 1, &body(&[], &[], &[".."])),
                message(LOOKUP, 9, 1, &body(&[], &[], &["d"])),
            ],
        ),
    ));
    seeds.push((
        "links".into(),
        fs_seed(
            1,
            &[
                message(SYMLINK, 2, 1, &body(&[], &[], &["s", "f"])),
                message(READLINK, 3, 2, &[]),
                message(LOOKUP, 4, 1, &body(&[], &[], &["out"])),
                message(READLINK, 5, 3, &[]),
                message(LOOKUP, 6, 1, &body(&[], &[], &["f"])),
                message(LINK, 7, 1, &body(&[4], &[8], &["h"])),
                message(RENAME, 8, 1, &body(&[1], &[8], &["h", "h2"])),
                message(
                    BATCH_FORGET,
                    9,
                    0,
                    &body(&[2, 0, 2, 1, 3, 1], &[4, 4, 8, 8, 8, 8], &[]),
                ),
            ],
        ),
    ));
    let mut setx = body(&[3, 0], &[4, 4], &["user.a"]);
    setx.extend_from_slice(b"xyz");
    seeds.push((
        "xattr".into(),
        fs_seed(
            1 | 2,
            &[
                message(LOOKUP, 2, 1, &body(&[], &[], &["f"])),
                message(SETXATTR, 3, 2, &setx),
                message(GETXATTR, 4, 2, &body(&[64, 0], &[4, 4], &["user.a"])),
                message(LISTXATTR, 5, 2, &body(&[256, 0], &[4, 4], &[])),
            ],
        ),
    ));
    let mut bad_len = message(GETATTR, 3, 1, &body(&[0, 0, 0], &[4, 4, 8], &[]));
    bad_len[0] = 200;
    let mut bad_write = body(&[1, 0, 500, 0, 0, 0, 0], &[8, 8, 4, 4, 8, 4, 4], &[]);
    bad_write.extend_from_slice(b"short");
    seeds.push((
        "malformed".into(),
        fs_seed(
            0,
            &[
                message(GETATTR, 1, 1, &body(&[0, 0, 0], &[4, 4, 8], &[])),
                init_message(),
                bad_len,
                message(WRITE, 4, 2, &bad_write),
                message(LOOKUP, 5, 1, &body(&[], &[], &["a/b"])),
                message(999, 6, 1, &[]),
            ],
        ),
    ));
    seeds
}

/// API connections.
pub fn vmm_http() -> Vec<Seed> {
    let req = |method: &str, path: &str, body: &str| {
        let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
        if !body.is_empty() {
            r.push_str("Content-Type: application/json\r\n");
            r.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        r.push_str("\r\n");
        r.push_str(body);
        r
    };
    let create = r#"{"payload":{"kernel":"/etc/hostname","cmdline":"console=ttyS0"},"cpus":{"boot_vcpus":2,"max_vcpus":2},"memory":{"size":268435456,"shared":true},"serial":{"mode":"Off"},"fs":[{"tag":"kataShared","socket":"/run/vfs.sock","num_queues":1,"queue_size":1024}],"disks":[{"vhost_user":true,"vhost_socket":"/run/blk.sock","num_queues":2,"queue_size":128}],"net":[{"vhost_user":true,"vhost_socket":"/run/net.sock","mac":"52:54:00:12:34:56","id":"net0"}]}"#;
    let mut life = String::new();
    for (m, p, b) in [
        ("GET", "/api/v1/vmm.ping", ""),
        ("PUT", "/api/v1/vm.create", create),
        ("PUT", "/api/v1/vm.boot", ""),
        ("GET", "/api/v1/vm.info", ""),
        ("GET", "/api/v1/vm.counters", ""),
        ("PUT", "/api/v1/vm.pause", "{}"),
        ("PUT", "/api/v1/vm.resume", ""),
        ("PUT", "/api/v1/vm.power-button", ""),
        ("PUT", "/api/v1/vm.shutdown", ""),
        ("PUT", "/api/v1/vm.delete", ""),
        ("PUT", "/api/v1/vmm.shutdown", ""),
    ] {
        life.push_str(&req(m, p, b));
    }
    let with_chunk = |c: u8, s: &str| {
        let mut v = vec![c];
        v.extend_from_slice(s.as_bytes());
        v
    };
    vec![
        ("ping".into(), with_chunk(0, &req("GET", "/api/v1/vmm.ping", ""))),
        ("lifecycle".into(), with_chunk(0, &life)),
        ("lifecycle_chunked".into(), with_chunk(7, &life)),
        (
            "errors".into(),
            with_chunk(
                0,
                &[
                    req("HEAD", "/api/v1/vm.info", ""),
                    req("GET", "/api/v1/vm.boot", ""),
                    req("PUT", "/api/v1/vm.create", r#"{"payload":{}}"#),
                    req("GET", "/nope", ""),
                    "PUT /api/v1/vm.create HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}".into(),
                    "PUT /api/v1/vm.boot HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(),
                ]
                .concat(),
            ),
        ),
        (
            "http10".into(),
            with_chunk(3, "GET /api/v1/vmm.ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        ),
    ]
}

/// A 12-byte register operation.
fn op(out: &mut Vec<u8>, kind: u8, offset: u16, size: u8, value: u64) {
    out.push(kind);
    out.extend_from_slice(&offset.to_le_bytes());
    out.push(size);
    out.extend_from_slice(&value.to_le_bytes());
}

/// Size codes of the register targets: 0 → 1 byte, 1 → 2, 2 → 4, 3 → 8.
const B1: u8 = 0;
const B2: u8 = 1;
const B4: u8 = 2;

/// A driver bringing up a virtio-pci device.
pub fn virtio_pci_regs() -> Vec<Seed> {
    // kinds: 0 read BAR 0, 1 write BAR 0, 2 read config, 3 write config.
    let (rd, wr, cfg_wr) = (0u8, 1u8, 3u8);
    let mut s = vec![1 | (1 << 2), 3]; // block, 2 queues; 3 vectors
    op(&mut s, cfg_wr, 0x10, B4, 0xc000_000c); // BAR 0 (64-bit) low
    op(&mut s, cfg_wr, 0x14, B4, 0); // BAR 0 high
    op(&mut s, cfg_wr, 0x04, B2, 0x0006); // memory space + bus master
    op(&mut s, wr, 0x14, B1, 0); // status reset
    op(&mut s, rd, 0x14, B1, 0);
    op(&mut s, wr, 0x14, B1, 1); // ACKNOWLEDGE
    op(&mut s, wr, 0x14, B1, 3); // DRIVER
    for sel in 0..2u64 {
        op(&mut s, wr, 0x00, B4, sel); // device_feature_select
        op(&mut s, rd, 0x04, B4, 0);
        op(&mut s, wr, 0x08, B4, sel); // driver_feature_select
        op(&mut s, wr, 0x0c, B4, if sel == 1 { 1 } else { 0x3000_0000 });
    }
    op(&mut s, wr, 0x14, B1, 0xb); // FEATURES_OK
    op(&mut s, rd, 0x14, B1, 0);
    op(&mut s, wr, 0x10, B2, 0); // msix_config
    for q in 0..2u64 {
        op(&mut s, wr, 0x16, B2, q); // queue_select
        op(&mut s, rd, 0x18, B2, 0); // queue_size
        op(&mut s, wr, 0x18, B2, 64);
        op(&mut s, wr, 0x1a, B2, q + 1); // queue_msix_vector
        op(&mut s, wr, 0x20, B4, 0x10000 * (q + 1)); // desc
        op(&mut s, wr, 0x28, B4, 0x10000 * (q + 1) + 0x400); // driver
        op(&mut s, wr, 0x30, B4, 0x10000 * (q + 1) + 0x800); // device
        op(&mut s, wr, 0x1c, B2, 1); // queue_enable
        op(&mut s, rd, 0x1e, B2, 0); // queue_notify_off
    }
    op(&mut s, wr, 0x14, B1, 0xf); // DRIVER_OK
    op(&mut s, rd, 0x1000, B1, 0); // ISR
    op(&mut s, rd, 0x2000, B4, 0); // device config
    op(&mut s, wr, 0x3000, B2, 1); // a notify
    op(&mut s, 7, 0, B1, 0); // config changed
    op(&mut s, 8, 0, B1, 1); // device needs reset
    op(&mut s, wr, 0x14, B1, 0); // reset
    op(&mut s, rd, 0x14, B1, 0);
    let mut msix = vec![26 | (3 << 2), 5]; // fs with 4 queues, 5 vectors
    op(&mut msix, cfg_wr, 0x04, B2, 0x0006);
    for k in 0..0x40u16 {
        op(&mut msix, 2, k * 4, B4, 0); // walk the capability list
    }
    vec![("bring_up".into(), s), ("config_space".into(), msix)]
}

/// MSI-X table programming, masking and triggers.
pub fn msix() -> Vec<Seed> {
    // kinds: 0 read table, 1 write table, 2 read PBA, 4 control, 6 trigger, 7 reset.
    let mut s = vec![4];
    for v in 0..4u16 {
        op(&mut s, 1, v * 16, 3, 0xfee0_0000); // address
        op(&mut s, 1, v * 16 + 8, B4, 0x40 + u64::from(v)); // data
    }
    op(&mut s, 4, 0, B2, 0x8000); // enable
    op(&mut s, 6, 0, B1, 0); // trigger 0: masked, pending
    op(&mut s, 2, 0, B1, 0);
    op(&mut s, 1, 12, B4, 0); // unmask 0: delivered
    op(&mut s, 1, 16 + 12, B4, 0);
    op(&mut s, 6, 1, B1, 0);
    op(&mut s, 4, 0, B2, 0xc000); // function mask
    op(&mut s, 6, 1, B1, 0);
    op(&mut s, 4, 0, B2, 0x8000);
    op(&mut s, 0, 0, 7, 0);
    op(&mut s, 7, 0, B1, 0);
    vec![("program_and_trigger".into(), s)]
}

/// Guest memory of the `vhost_user_msg` seeds: the guest memfd mapped at
/// guest address 0, at this address in the frontend.
const VU_USER: u64 = 0x7f00_0000_0000;
/// Where a queue's rings and buffers are: queue `q` at `q * VU_QUEUE`.
const VU_QUEUE: u64 = 0x4000;

/// A blk chain in guest memory for queue `q`'s ring of 8 (desc table at
/// `q * VU_QUEUE`, avail + 0x100, used + 0x200, buffers + 0x1000): `ty`
/// at `sector`, `data` bytes (readable for a write, else writable space
/// of that length), a status byte; made available as entry `n`.
fn vu_blk_chain(s: &mut Script, q: u64, n: u16, ty: u32, sector: u64, data: &[u8], write: bool) {
    let base = q * VU_QUEUE;
    let buf = base + 0x1000 + 0x800 * u64::from(n);
    let (h, d, st) = (buf, buf + 0x10, buf + 0x10 + data.len() as u64);
    s.poke(h as u16, &blk_header(ty, sector));
    if write {
        s.poke(d as u16, data);
    }
    let d_flags = if write { NEXT } else { NEXT | WRITE };
    let mut descs = Vec::new();
    let first = 3 * n;
    let mut parts = vec![(h, 16u32, NEXT)];
    if !data.is_empty() {
        parts.push((d, data.len() as u32, d_flags));
    }
    parts.push((st, 1, WRITE));
    for (k, &(addr, len, flags)) in parts.iter().enumerate() {
        let last = k + 1 == parts.len();
        let next = if last { 0 } else { first + k as u16 + 1 };
        let flags = if last { flags & !NEXT } else { flags };
        descs.extend_from_slice(&addr.to_le_bytes());
        descs.extend_from_slice(&len.to_le_bytes());
        descs.extend_from_slice(&flags.to_le_bytes());
        descs.extend_from_slice(&next.to_le_bytes());
    }
    s.poke((base + 16 * u64::from(first)) as u16, &descs);
    s.poke(
        (base + 0x100 + 4 + 2 * u64::from(n)) as u16,
        &first.to_le_bytes(),
    );
    s.poke((base + 0x100 + 2) as u16, &(n + 1).to_le_bytes());
}

/// Negotiation as a frontend does it: features (`event_idx`), protocol
/// features, owner, config, the guest memfd as the memory table.
fn vu_negotiate(s: &mut Script, read_only: bool, queues: u16, event_idx: bool) {
    use vu::req::*;
    let config = vhost_blk_daemon::config::DeviceConfig::new(0x10000, 512, queues, 128, read_only);
    let mut features = config.features();
    if !event_idx {
        features &= !(1 << 29);
    }
    let protocol = (1u64 << 0) | (1 << 3) | (1 << 9) | (1 << 15);
    s.msg(GET_FEATURES, &[])
        .msg(SET_FEATURES, &features.to_le_bytes())
        .msg(GET_PROTOCOL_FEATURES, &[])
        .msg(SET_PROTOCOL_FEATURES, &protocol.to_le_bytes())
        .msg(SET_OWNER, &[])
        .msg(GET_QUEUE_NUM, &[])
        .msg(GET_MAX_MEM_SLOTS, &[]);
    let mut get_config = vu::body(&[(0, 4), (60, 4), (0, 4)]);
    get_config.resize(12 + 60, 0);
    s.msg(GET_CONFIG, &get_config);
    let table = vu::mem_table(&[vu::region(0, vu::GUEST_LEN, VU_USER, 0)]);
    s.msg_fds(SET_MEM_TABLE, &table, 1, FdKind::Guest);
}

/// Sets up queue `q` (size 8, rings at `q * VU_QUEUE`); its call and
/// kick eventfds are the frontend's `2q`th and `2q + 1`th.
fn vu_queue(s: &mut Script, q: u32, enable: bool) {
    use vu::req::*;
    let base = VU_USER + u64::from(q) * VU_QUEUE;
    s.msg(SET_VRING_NUM, &vu::vring_state(q, 8))
        .msg(
            SET_VRING_ADDR,
            &vu::vring_addr(q, base, base + 0x200, base + 0x100),
        )
        .msg(SET_VRING_BASE, &vu::vring_state(q, 0))
        .msg_fds(
            SET_VRING_CALL,
            &u64::from(q).to_le_bytes(),
            1,
            FdKind::Event,
        )
        .msg_fds(
            SET_VRING_KICK,
            &u64::from(q).to_le_bytes(),
            1,
            FdKind::Event,
        );
    if enable {
        s.msg(SET_VRING_ENABLE, &vu::vring_state(q, 1));
    }
}

/// vhost-blk-daemon connections: a frontend setting up queues and
/// kicking requests, and hostile ones.
pub fn vhost_user_msg() -> Vec<Seed> {
    use vu::req::*;
    let mut seeds = Vec::new();

    let mut s = Script::new(0);
    vu_negotiate(&mut s, false, 1, true);
    vu_queue(&mut s, 0, true);
    vu_blk_chain(&mut s, 0, 0, 0, 1, &[0; 512], false);
    s.kick(1).msg(GET_FEATURES, &[]);
    vu_blk_chain(&mut s, 0, 1, 1, 2, &[0x5a; 1024], true);
    s.kick(1).msg(GET_VRING_BASE, &vu::vring_state(0, 0));
    seeds.push(("read_write".into(), s.finish()));

    // QEMU's vhost-user-net order through the relay: rings enabled before
    // SET_FEATURES; two queues; requests on queue 1.
    let mut s = Script::new(2 | 4);
    s.msg(GET_FEATURES, &[])
        .msg(SET_VRING_ENABLE, &vu::vring_state(0, 1))
        .msg(SET_VRING_ENABLE, &vu::vring_state(1, 1));
    vu_negotiate(&mut s, false, 2, false);
    vu_queue(&mut s, 0, false);
    vu_queue(&mut s, 1, true);
    vu_blk_chain(&mut s, 1, 0, 1, 0, &[7; 512], true);
    vu_blk_chain(&mut s, 1, 1, 4, 0, &[], false);
    s.kick(3)
        .msg(GET_FEATURES, &[])
        .msg(RESET_OWNER, &[])
        .msg(SET_OWNER, &[]);
    seeds.push(("relay_two_queues".into(), s.finish()));

    let mut s = Script::new(8 | 1);
    vu_negotiate(&mut s, true, 1, true);
    vu_queue(&mut s, 0, true);
    vu_blk_chain(&mut s, 0, 0, 0, 0, &[0; 4096], false);
    vu_blk_chain(&mut s, 0, 1, 1, 0, &[1; 512], true);
    s.kick(1)
        .msg(GET_FEATURES, &[])
        .msg(GET_VRING_BASE, &vu::vring_state(0, 0));
    seeds.push(("io_uring_read_only".into(), s.finish()));

    // A memory region larger than its memfd (refused: SIGBUS otherwise).
    let mut s = Script::new(0);
    vu_negotiate(&mut s, false, 1, false);
    let table = vu::mem_table(&[vu::region(0, 0x10000, VU_USER, 0)]);
    s.msg_fds(SET_MEM_TABLE, &table, 1, FdKind::Small);
    seeds.push(("region_past_fd".into(), s.finish()));

    // Regions added and removed one by one, one behind a pipe.
    let mut s = Script::new(0);
    vu_negotiate(&mut s, false, 1, false);
    let mut add = 0u64.to_le_bytes().to_vec();
    add.extend_from_slice(&vu::region(0x100000, 0x1000, VU_USER + 0x100000, 0));
    s.msg_fds(ADD_MEM_REG, &add, 1, FdKind::Small)
        .msg_fds(REM_MEM_REG, &add, 1, FdKind::Small)
        .msg_fds(ADD_MEM_REG, &add, 1, FdKind::Pipe);
    seeds.push(("add_rem_mem_reg".into(), s.finish()));

    // 33 descriptors on one message; a config write; a ring whose size
    // is not a power of two; an inflight request; a header whose body
    // is longer than what follows.
    let mut s = Script::new(4);
    s.raw(GET_FEATURES, 1, &[], (33, FdKind::Event), true);
    seeds.push(("fds_33_relay".into(), s.finish()));
    let mut s = Script::new(0);
    vu_negotiate(&mut s, false, 1, true);
    let mut set_config = vu::body(&[(0, 4), (4, 4), (0, 4)]);
    set_config.extend_from_slice(&[1, 2, 3, 4]);
    s.msg(SET_CONFIG, &set_config);
    seeds.push(("set_config".into(), s.finish()));
    let mut s = Script::new(0);
    vu_negotiate(&mut s, false, 1, true);
    s.msg(SET_VRING_NUM, &vu::vring_state(0, 7)).msg(
        SET_VRING_ADDR,
        &vu::vring_addr(0, VU_USER, VU_USER + 0x200, VU_USER + 0x100),
    );
    seeds.push(("vring_num_7".into(), s.finish()));
    let mut s = Script::new(0);
    vu_negotiate(&mut s, false, 1, true);
    s.msg(
        GET_INFLIGHT_FD,
        &vu::body(&[(0, 8), (0, 8), (1, 2), (8, 2)]),
    )
    .msg_fds(SET_VRING_ERR, &0u64.to_le_bytes(), 1, FdKind::Event)
    .raw(SET_VRING_NUM, 1, &[0, 0, 0], (0, FdKind::Event), true)
    .msg(GET_FEATURES, &[]);
    seeds.push(("short_body".into(), s.finish()));
    seeds
}

/// Negotiation with any device: `features`, the protocol features a
/// frontend wants of every kind (MQ, REPLY_ACK, CONFIG, INFLIGHT_SHMFD,
/// RESET_DEVICE, CONFIGURE_MEM_SLOTS, STATUS), owner, a `config_len`-byte
/// config read, the guest memfd as the memory table.
fn vu_negotiate_any(s: &mut Script, features: u64, config_len: u32) {
    use vu::req::*;
    let protocol =
        (1u64 << 0) | (1 << 3) | (1 << 9) | (1 << 12) | (1 << 13) | (1 << 15) | (1 << 16);
    s.msg(GET_FEATURES, &[])
        .msg(SET_FEATURES, &features.to_le_bytes())
        .msg(GET_PROTOCOL_FEATURES, &[])
        .msg(SET_PROTOCOL_FEATURES, &protocol.to_le_bytes())
        .msg(SET_OWNER, &[])
        .msg(GET_QUEUE_NUM, &[])
        .msg(GET_MAX_MEM_SLOTS, &[]);
    let mut get_config = vu::body(&[(0, 4), (config_len.into(), 4), (0, 4)]);
    get_config.resize(12 + config_len as usize, 0);
    s.msg(GET_CONFIG, &get_config);
    let table = vu::mem_table(&[vu::region(0, vu::GUEST_LEN, VU_USER, 0)]);
    s.msg_fds(SET_MEM_TABLE, &table, 1, FdKind::Guest);
}

/// A chain on queue `q`'s ring of 8 (laid out as [`vu_blk_chain`]'s):
/// `out` readable, then `reply` writable bytes; made available as
/// entry `n`.
fn vu_chain(s: &mut Script, q: u64, n: u16, out: &[u8], reply: u32) {
    let base = q * VU_QUEUE;
    let buf = base + 0x1000 + 0x800 * u64::from(n);
    s.poke(buf as u16, out);
    let first = 2 * n;
    let mut descs = Vec::new();
    for (k, (addr, len, flags)) in [(buf, out.len() as u32, NEXT), (buf + 0x400, reply, WRITE)]
        .into_iter()
        .enumerate()
    {
        descs.extend_from_slice(&addr.to_le_bytes());
        descs.extend_from_slice(&len.to_le_bytes());
        descs.extend_from_slice(&flags.to_le_bytes());
        descs.extend_from_slice(&(if k == 0 { first + 1 } else { 0 }).to_le_bytes());
    }
    s.poke((base + 16 * u64::from(first)) as u16, &descs);
    s.poke(
        (base + 0x100 + 4 + 2 * u64::from(n)) as u16,
        &first.to_le_bytes(),
    );
    s.poke((base + 0x100 + 2) as u16, &(n + 1).to_le_bytes());
}

/// The in-flight region a frontend asks for and hands back: GET, then
/// SET with a 4 KiB memfd for `queues` queues of 8.
fn vu_inflight(s: &mut Script, queues: u64) {
    use vu::req::*;
    s.msg(
        GET_INFLIGHT_FD,
        &vu::body(&[(0, 8), (0, 8), (queues, 2), (8, 2)]),
    )
    .msg_fds(
        SET_INFLIGHT_FD,
        &vu::body(&[(4096, 8), (0, 8), (queues, 2), (8, 2)]),
        1,
        FdKind::Small,
    );
}

/// virtio-fs features: VERSION_1, INDIRECT_DESC, EVENT_IDX,
/// PROTOCOL_FEATURES.
const VU_FS_FEATURES: u64 = (1 << 32) | (1 << 28) | (1 << 29) | (1 << 30);

/// virtiofsd connections: a frontend mounting (INIT on the request
/// queue), in-flight tracking, reset, and hostile ones (rings set up in
/// reverse, odd memory, a hang-up mid-message).
pub fn vhost_user_msg_fs() -> Vec<Seed> {
    use vu::req::*;
    let mut seeds = Vec::new();

    let mut s = Script::new(0);
    vu_negotiate_any(&mut s, VU_FS_FEATURES, 40);
    vu_inflight(&mut s, 2);
    vu_queue(&mut s, 0, true);
    vu_queue(&mut s, 1, true);
    vu_chain(&mut s, 1, 0, &init_message(), 256);
    s.kick(3)
        .msg(GET_FEATURES, &[])
        .msg(GET_VRING_BASE, &vu::vring_state(1, 0))
        .msg(GET_VRING_BASE, &vu::vring_state(0, 0));
    seeds.push(("init_inflight".into(), s.finish()));

    // Through the relay, requests on a thread pool; device reset and
    // status, then served again.
    let mut s = Script::new(2 | 4);
    vu_negotiate_any(&mut s, VU_FS_FEATURES, 40);
    s.msg(SET_STATUS, &0xfu64.to_le_bytes())
        .msg(GET_STATUS, &[]);
    vu_queue(&mut s, 0, true);
    vu_queue(&mut s, 1, true);
    vu_chain(&mut s, 1, 0, &init_message(), 256);
    s.kick(3)
        .msg(GET_FEATURES, &[])
        .msg(RESET_DEVICE, &[])
        .msg(RESET_OWNER, &[])
        .msg(SET_OWNER, &[])
        .msg(GET_CONFIG, &{
            let mut b = vu::body(&[(36, 4), (4, 4), (0, 4)]);
            b.resize(16, 0);
            b
        });
    seeds.push(("relay_pool_reset".into(), s.finish()));

    // Rings set up in reverse (kick first, size last), the in-flight
    // region set before any ring, a kick before the ring is enabled.
    let mut s = Script::new(1);
    vu_negotiate_any(&mut s, VU_FS_FEATURES, 40);
    vu_inflight(&mut s, 2);
    s.msg_fds(SET_VRING_KICK, &1u64.to_le_bytes(), 1, FdKind::Event)
        .msg_fds(SET_VRING_CALL, &1u64.to_le_bytes(), 1, FdKind::Event)
        .kick(0)
        .msg(SET_VRING_BASE, &vu::vring_state(1, 0))
        .msg(
            SET_VRING_ADDR,
            &vu::vring_addr(
                1,
                VU_USER + VU_QUEUE,
                VU_USER + VU_QUEUE + 0x200,
                VU_USER + VU_QUEUE + 0x100,
            ),
        )
        .msg(SET_VRING_NUM, &vu::vring_state(1, 8))
        .msg(SET_VRING_ENABLE, &vu::vring_state(1, 1));
    vu_chain(&mut s, 1, 0, &init_message(), 256);
    s.kick(0).msg(GET_FEATURES, &[]);
    seeds.push(("rings_reversed".into(), s.finish()));

    // Odd memory: a region past its memfd, one behind a pipe, a region
    // added over the table, an in-flight fd too small for what it claims.
    let mut s = Script::new(8);
    vu_negotiate_any(&mut s, VU_FS_FEATURES, 40);
    let mut add = 0u64.to_le_bytes().to_vec();
    add.extend_from_slice(&vu::region(0, 0x1000, VU_USER, 0));
    s.msg_fds(
        SET_MEM_TABLE,
        &vu::mem_table(&[vu::region(0, 0x10000, VU_USER, 0)]),
        1,
        FdKind::Small,
    )
    .msg_fds(
        SET_MEM_TABLE,
        &vu::mem_table(&[vu::region(0, 0x1000, VU_USER, 0)]),
        1,
        FdKind::Pipe,
    )
    .msg_fds(ADD_MEM_REG, &add, 1, FdKind::Guest)
    .msg_fds(
        SET_INFLIGHT_FD,
        &vu::body(&[(1 << 20, 8), (0, 8), (2, 2), (1024, 2)]),
        1,
        FdKind::Small,
    );
    seeds.push(("odd_memory".into(), s.finish()));

    // A hang-up mid-message: the header promises 64 bytes, 8 follow.
    let mut s = Script::new(4);
    vu_negotiate_any(&mut s, VU_FS_FEATURES, 40);
    let mut b = s.finish();
    b.extend_from_slice(&[
        1,
        SET_MEM_TABLE,
        vu::VERSION_1,
        64,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    seeds.push(("hangup_mid_message".into(), b));
    seeds
}

/// vhost-net-daemon connections: a TX frame to the tap, in-flight
/// tracking, the control queue, two pairs through the relay.
pub fn vhost_user_msg_net() -> Vec<Seed> {
    use vu::req::*;
    let mut seeds = Vec::new();
    // What the device offers with one pair (and `mtu`), no guest offloads.
    let features = |mtu: Option<u16>| {
        vhost_net_daemon::config::NetConfig {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            pairs: 1,
            queue_size: 256,
            mtu,
            tap_offloads: 0,
        }
        .features()
    };

    let mut s = Script::new(4);
    vu_negotiate_any(&mut s, features(None), 12);
    vu_inflight(&mut s, 3);
    vu_queue(&mut s, 0, true);
    vu_queue(&mut s, 1, true);
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x06]);
    frame.resize(12 + 60, 0);
    vu_chain(&mut s, 1, 0, &frame, 0);
    s.kick(3)
        .msg(GET_FEATURES, &[])
        .msg(GET_VRING_BASE, &vu::vring_state(1, 0));
    seeds.push(("tx_frame".into(), s.finish()));

    // The control queue (queue 2 of one pair): MQ_VQ_PAIRS_SET 1, its
    // ack byte; the pair set up after it; a device reset.
    let mut s = Script::new(4 | 8);
    vu_negotiate_any(&mut s, features(Some(1400)), 12);
    vu_queue(&mut s, 2, true);
    vu_chain(&mut s, 2, 0, &[4, 0, 1, 0], 1);
    s.kick(1);
    vu_queue(&mut s, 0, true);
    vu_queue(&mut s, 1, true);
    s.msg(RESET_DEVICE, &[]).msg(GET_FEATURES, &[]);
    seeds.push(("ctrl_queue".into(), s.finish()));
    seeds
}

/// Split rings: well formed ones at odd places, and what a hostile
/// driver writes (loops, buffers out of memory or across its hole,
/// huge lengths, nested and empty indirect tables, an avail index far
/// ahead, a used ring over the avail ring).
pub fn split_ring() -> Vec<Seed> {
    use crate::split::{Handler, Header, SplitImage, INDIRECT as IND, NEXT as N, WRITE as W};
    let header = |handler, size: u16, desc: u64, avail: u64, used: u64, next: u16| Header {
        handler,
        event_idx: false,
        read_only: false,
        size,
        desc,
        avail,
        used,
        next_avail: next,
        next_used: next,
    };
    let mut seeds = Vec::new();

    // Three chains: direct, across the top of region 0 into the hole's
    // far side (refused), and indirect.
    let mut img = SplitImage::new(header(Handler::Walker, 16, 0x2000, 0x2400, 0x2800, 0));
    img.desc(0x2000, 0, 0x3000, 40, N, 1)
        .desc(0x2000, 1, 0x3100, 64, W, 0)
        .desc(0x2000, 2, 0xbff0, 0x20, N, 3)
        .desc(0x2000, 3, 0xd000, 0x100, W, 0)
        .desc(0x2000, 4, 0x3200, 48, IND, 0)
        .desc(0x3200, 0, 0xd100, 0x200, N, 1)
        .desc(0x3200, 1, 0x3400, 0x10, N | W, 2)
        .desc(0x3200, 2, 0x3500, 1, W, 0)
        .put(0x3000, b"the readable bytes of chain zero, forty.")
        .put(0xd100, &[0x3c; 0x200])
        .avail(3, &[0, 2, 4]);
    seeds.push(("walker".into(), img.finish()));

    let mut deferred = img.clone();
    let mut h = header(Handler::Deferred, 16, 0x2000, 0x2400, 0x2800, 0);
    h.event_idx = true;
    deferred.header = h;
    seeds.push(("deferred_event_idx".into(), deferred.finish()));

    // A blk read and write at a wrapped ring state.
    let mut h = header(Handler::Blk, 4, 0x100, 0x200, 0x300, 0xfffe);
    h.event_idx = true;
    let mut img = SplitImage::new(h);
    img.put(0x1000, &blk_header(0, 1))
        .desc(0x100, 0, 0x1000, 16, N, 1)
        .desc(0x100, 1, 0x1100, 512, N | W, 2)
        .desc(0x100, 2, 0x1300, 1, W, 0)
        .put(0x1400, &blk_header(1, 3))
        .put(0x1500, &[0x77; 512])
        .desc(0x100, 3, 0x1600, 48, IND, 0)
        .desc(0x1600, 0, 0x1400, 16, N, 1)
        .desc(0x1600, 1, 0x1500, 512, N, 2)
        .desc(0x1600, 2, 0x1700, 1, W, 0)
        .avail(0, &[0, 3]);
    seeds.push(("blk_wrapped".into(), img.finish()));

    // A FUSE GETATTR.
    let mut img = SplitImage::new(header(Handler::Fs, 2, 0x0, 0x40, 0x80, 0));
    let getattr = crate::fuse::message(3, 2, 1, &body(&[0, 0, 0], &[4, 4, 8], &[]));
    img.put(0x1000, &getattr)
        .desc(0, 0, 0x1000, getattr.len() as u32, N, 1)
        .desc(0, 1, 0x2000, 0x80, W, 0)
        .avail(1, &[0]);
    seeds.push(("fs_getattr".into(), img.finish()));

    // Hostile: a loop, an indirect table inside an indirect table, an
    // empty one, one out of memory, a huge length.
    let mut img = SplitImage::new(header(Handler::Walker, 8, 0x800, 0x900, 0xa00, 0));
    img.desc(0x800, 0, 0x1000, 8, N, 1)
        .desc(0x800, 1, 0x1000, 8, N, 0)
        .desc(0x800, 2, 0x1100, 32, IND, 0)
        .desc(0x1100, 0, 0x1200, 16, IND, 0)
        .desc(0x800, 3, 0x1300, 0, IND, 0)
        .desc(0x800, 4, 0xfff0_0000, 0x1000, IND, 0)
        .desc(0x800, 5, 0x1000, u32::MAX, W, 0)
        .desc(0x800, 6, 0x1000, 0x100, N | W, 6)
        .avail(6, &[0, 2, 3, 4, 5, 6]);
    seeds.push(("hostile_descriptors".into(), img.finish()));

    // The used ring over the avail ring, and an avail index 1000 ahead.
    let mut img = SplitImage::new(header(Handler::Walker, 4, 0x0, 0x40, 0x40, 0));
    img.desc(0, 0, 0x1000, 16, W, 0).avail(1, &[0]);
    seeds.push(("used_over_avail".into(), img.finish()));
    let mut img = SplitImage::new(header(Handler::Blk, 4, 0x0, 0x40, 0x80, 0));
    img.desc(0, 0, 0x1000, 16, W, 0).avail(1000, &[0]);
    seeds.push(("avail_far_ahead".into(), img.finish()));
    // Rings whose entries cannot be read while avail.idx says there is
    // one: at guest address 0 (virtio-queue does not walk it) and
    // running off the end of region 0. With EVENT_IDX the drain loops
    // spun on them (fixed in `common::queue::avail_sane`).
    let mut h = header(Handler::Deferred, 4, 0x1000, 0, 0x2000, 0);
    h.event_idx = true;
    let mut img = SplitImage::new(h);
    img.avail(1, &[]);
    seeds.push(("avail_ring_at_0".into(), img.finish()));
    let mut h = header(Handler::Walker, 4, 0, 0xbffc, 0x100, 0);
    h.event_idx = true;
    let mut img = SplitImage::new(h);
    img.avail(1, &[]);
    seeds.push(("avail_entries_off_memory".into(), img.finish()));
    seeds
}

/// Every target's seeds.
pub fn all() -> Vec<(&'static str, Vec<Seed>)> {
    vec![
        ("blk_request", blk_request()),
        ("net_tx", net_tx()),
        ("net_ctrl", net_ctrl()),
        ("fs_request", fs_request()),
        ("vmm_http", vmm_http()),
        ("virtio_pci_regs", virtio_pci_regs()),
        ("msix", msix()),
        ("vhost_user_msg", vhost_user_msg()),
        ("vhost_user_msg_fs", vhost_user_msg_fs()),
        ("vhost_user_msg_net", vhost_user_msg_net()),
        ("split_ring", split_ring()),
    ]
}
