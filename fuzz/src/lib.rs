//! What the fuzz targets share: guest memory and a split ring laid out
//! from the input ([`ring`]), a ring of any geometry ([`split`], for
//! `split_ring`), a frontend's script of vhost-user messages ([`vu`], for
//! `vhost_user_msg`), a reader of fuzzer bytes ([`Input`]), and the seed
//! inputs (`seeds`, written by `examples/seeds.rs`).

pub mod fuse;
pub mod ring;
pub mod seeds;
pub mod split;
pub mod vu;
pub mod vu_frontend;

/// A `len`-byte image opened as vhost-blk-daemon opens it (`read_only` or
/// not), unlinked at once; `name` tells the temp file apart.
pub fn blk_image(name: &str, len: u64, read_only: bool) -> vhost_blk_daemon::disk::Disk {
    let path = std::env::temp_dir().join(format!("fuzz-{name}-{}.img", std::process::id()));
    let f = std::fs::File::create(&path).expect("image");
    f.set_len(len).expect("image size");
    let disk = vhost_blk_daemon::disk::Disk::open(&path, read_only, false).expect("open the image");
    let _ = std::fs::remove_file(&path);
    disk
}

/// Reads little-endian fields off the fuzzer's bytes; past the end every
/// read is `None`.
#[derive(Debug, Clone)]
pub struct Input<'a>(pub &'a [u8]);

impl<'a> Input<'a> {
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// A le16.
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }

    /// A le32.
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A le64.
    pub fn u64(&mut self) -> Option<u64> {
        self.take(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}
