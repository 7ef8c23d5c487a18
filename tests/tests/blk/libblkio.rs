//! libblkio (the `blkio` crate, driver `virtio-blk-vhost-user`) as a
//! third-party vhost-user frontend of our `vhost-blk-daemon`. libblkio
//! negotiates on its own terms: it requires the REPLY_ACK, CONFIG and
//! CONFIGURE_MEM_SLOTS protocol features, never sends SET_MEM_TABLE (its
//! memory arrives region by region with ADD_MEM_REG, at guest addresses that
//! are its own virtual addresses) and reads the whole config space. Every
//! data check is also made on the host image.
//!
//! `VUTEST_BLK_BACKEND=qsd` runs the same tests against qemu-storage-daemon
//! (checks of our contract's config values are then left out).

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use blkio::{Blkio, Blkioq, Completion, Errno, MemoryRegion, ReqFlags};
use vu_driver::image::{pattern, write_at};
use vu_driver::ours::{reference_backend, ServedImage, BLK_BACKEND_ENV};

const DRIVER: &str = "virtio-blk-vhost-user";
/// Not a power of two, so a capacity taken from the wrong field shows.
const IMAGE_SIZE: u64 = (64 << 20) + 3 * 512;
const BUF_LEN: usize = 2 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The backend under test is ours (not qemu-storage-daemon, see
/// [`BLK_BACKEND_ENV`]).
fn ours() -> bool {
    !reference_backend(BLK_BACKEND_ENV, "qsd")
}

/// An image served by the backend under test.
type Served = ServedImage;

/// An image of [`IMAGE_SIZE`], `prepare`d by the host, served by the
/// backend under test.
fn serve(num_queues: Option<u16>, read_only: bool, prepare: impl FnOnce(&Path)) -> Served {
    ServedImage::new(
        "vutest-libblkio",
        IMAGE_SIZE,
        num_queues,
        read_only,
        prepare,
    )
}

/// What the tests do with a served image.
trait ServedExt {
    fn read(&self, offset: u64, len: usize) -> Vec<u8>;
    fn connect(&self, read_only: bool) -> Blkio;
    fn assert_alive(&mut self);
}

impl ServedExt for Served {
    fn read(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        std::fs::File::open(&self.image)
            .and_then(|f| f.read_exact_at(&mut buf, offset))
            .unwrap_or_else(|e| panic!("read {} at {offset}: {e}", self.image.display()));
        buf
    }

    /// A libblkio instance connected to the socket (not started).
    fn connect(&self, read_only: bool) -> Blkio {
        let mut b = Blkio::new(DRIVER).unwrap_or_else(|e| panic!("Blkio::new: {e}"));
        b.set_str("path", self.socket.to_str().unwrap()).unwrap();
        b.set_bool("read-only", read_only).unwrap();
        b.connect().unwrap_or_else(|e| {
            panic!(
                "libblkio connect to {}: {e} ({:?})",
                self.socket.display(),
                e.errno()
            )
        });
        b
    }

    /// The daemon must have survived what libblkio did.
    fn assert_alive(&mut self) {
        let status = self.daemon.try_wait().unwrap();
        assert_eq!(status, None, "{} exited", self.daemon.name());
    }
}

/// Started libblkio with `num_queues` queues and one mapped buffer of
/// [`BUF_LEN`] bytes.
struct Lib {
    queues: Vec<Blkioq>,
    buf: MemoryRegion,
    // Dropped last: it owns the connection and the buffer's memory.
    _blkio: Blkio,
}

fn start(mut b: Blkio, num_queues: i32) -> Lib {
    b.set_i32("num-queues", num_queues).unwrap();
    let started = b
        .start()
        .unwrap_or_else(|e| panic!("libblkio start: {e} ({:?})", e.errno()));
    assert_eq!(started.queues.len(), num_queues as usize);
    let buf = b.alloc_mem_region(BUF_LEN).unwrap();
    b.map_mem_region(&buf)
        .unwrap_or_else(|e| panic!("libblkio map_mem_region (ADD_MEM_REG): {e}"));
    Lib {
        queues: started.queues,
        buf,
        _blkio: b,
    }
}

impl Lib {
    /// Copies `data` into the buffer at `off`.
    fn fill(&mut self, off: usize, data: &[u8]) {
        assert!(off + data.len() <= self.buf.len);
        // SAFETY: the region is a live shared mapping of `buf.len` bytes that
        // `_blkio` keeps until `self` is dropped, the range is inside it
        // (checked above), and no request is in flight (every submission
        // below is waited for), so nothing else accesses those bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.buf.addr as *mut u8).add(off),
                data.len(),
            )
        };
    }

    /// The buffer's bytes at `off..off + len`.
    fn get(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.buf.len);
        let mut v = vec![0u8; len];
        // SAFETY: as in `fill`: a live mapping, an in-bounds range and no
        // request in flight that could write it meanwhile.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.buf.addr as *const u8).add(off),
                v.as_mut_ptr(),
                len,
            )
        };
        v
    }

    fn ptr(&self, off: usize) -> *mut u8 {
        assert!(off < self.buf.len);
        (self.buf.addr + off) as *mut u8
    }

    fn write(&mut self, q: usize, start: u64, off: usize, len: usize, flags: ReqFlags) {
        let p = self.ptr(off);
        self.queues[q].write(start, p, len, start as usize, flags);
    }

    fn read(&mut self, q: usize, start: u64, off: usize, len: usize) {
        let p = self.ptr(off);
        self.queues[q].read(start, p, len, start as usize, ReqFlags::empty());
    }

    /// Waits for `n` completions on queue `q`; returns (user_data, ret)
    /// pairs with libblkio's error messages for failed ones.
    fn complete(&mut self, q: usize, n: usize) -> Vec<(usize, i32, String)> {
        let mut done: Vec<MaybeUninit<Completion>> =
            (0..n).map(|_| MaybeUninit::uninit()).collect();
        let mut got = 0;
        while got < n {
            let mut timeout = IO_TIMEOUT;
            let k = self.queues[q]
                .do_io(&mut done[got..], n - got, Some(&mut timeout), None)
                .unwrap_or_else(|e| panic!("do_io on queue {q}: {e} ({:?})", e.errno()));
            got += k;
        }
        done.into_iter()
            .map(|c| {
                // SAFETY: do_io filled in the first `n` entries (got == n).
                let c = unsafe { c.assume_init() };
                let msg = if c.error_msg.is_null() {
                    String::new()
                } else {
                    // SAFETY: libblkio sets error_msg to null or to a static
                    // NUL-terminated string.
                    unsafe { CStr::from_ptr(c.error_msg) }
                        .to_string_lossy()
                        .into_owned()
                };
                (c.user_data, c.ret, msg)
            })
            .collect()
    }

    /// Waits for one completion on queue `q` and returns its `ret`.
    fn complete_one(&mut self, q: usize) -> i32 {
        self.complete(q, 1)[0].1
    }
}

const EIO: i32 = -(libc::EIO);

#[test]
fn libblkio_writes_reads_flushes_and_reports_capacity() {
    const HOST_OFF: u64 = 40 << 20;
    const LEN: usize = 1 << 20;
    // Sector-aligned, neither page- nor MiB-aligned.
    const OFF: u64 = (3 << 20) + 5 * 512;
    let host_data = pattern(1, LEN);
    let mut s = serve(None, false, |img| write_at(img, HOST_OFF, &host_data));
    let b = s.connect(false);

    assert_eq!(b.get_u64("capacity").unwrap(), IMAGE_SIZE, "capacity");
    assert_eq!(b.get_i32("max-queues").unwrap(), 1, "max-queues");
    assert_eq!(b.get_i32("request-alignment").unwrap(), 512);
    assert!(
        b.get_u64("max-mem-regions").unwrap() >= 2,
        "max-mem-regions"
    );
    assert!(!b.get_bool("read-only").unwrap());
    if ours() {
        assert_eq!(b.get_i32("max-segments").unwrap(), 1024 - 2, "seg_max");
        assert_eq!(b.get_u64("max-write-zeroes-len").unwrap(), 4_194_304 * 512);
        assert_eq!(b.get_u64("max-discard-len").unwrap(), 4_194_304 * 512);
    }
    let mut lib = start(b, 1);

    // Read what the host wrote.
    lib.read(0, HOST_OFF, 0, LEN);
    assert_eq!(lib.complete_one(0), 0, "read");
    assert!(
        lib.get(0, LEN) == host_data,
        "libblkio read of the host's bytes"
    );

    // Write, flush, read back into the other half of the buffer.
    let data = pattern(2, LEN);
    lib.fill(0, &data);
    lib.write(0, OFF, 0, LEN, ReqFlags::empty());
    assert_eq!(lib.complete_one(0), 0, "write");
    lib.queues[0].flush(7, ReqFlags::empty());
    assert_eq!(lib.complete(0, 1)[0].0, 7, "flush user_data");
    lib.fill(LEN, &vec![0xAA; LEN]);
    lib.read(0, OFF, LEN, LEN);
    assert_eq!(lib.complete_one(0), 0, "read back");
    assert!(lib.get(LEN, LEN) == data, "libblkio read-back");
    assert!(s.read(OFF, LEN) == data, "host image after the write");

    // A FUA write (libblkio adds a FLUSH after it) of the last sectors.
    let tail = pattern(3, 4096);
    let tail_off = IMAGE_SIZE - 4096;
    lib.fill(0, &tail);
    lib.write(0, tail_off, 0, 4096, ReqFlags::FUA);
    assert_eq!(lib.complete_one(0), 0, "FUA write at the end");
    assert_eq!(s.read(tail_off, 4096), tail, "host image, last sectors");

    // One sector past the end fails and leaves the file as it was.
    lib.write(0, IMAGE_SIZE - 512, 0, 1024, ReqFlags::empty());
    let (_, ret, msg) = lib.complete(0, 1).remove(0);
    assert_eq!(ret, EIO, "write crossing the end: {msg}");
    let len = std::fs::metadata(&s.image).unwrap().len();
    assert_eq!(len, IMAGE_SIZE, "image size after a write past the end");
    assert_eq!(s.read(tail_off, 4096), tail);

    // Several requests in flight at once, completed in any order.
    let chunks = 8;
    let chunk = BUF_LEN / chunks;
    let many = pattern(4, BUF_LEN);
    lib.fill(0, &many);
    for i in 0..chunks {
        lib.write(0, (i * chunk) as u64, i * chunk, chunk, ReqFlags::empty());
    }
    let mut done = lib.complete(0, chunks);
    done.sort();
    for (i, (user_data, ret, msg)) in done.into_iter().enumerate() {
        assert_eq!(user_data, i * chunk);
        assert_eq!(ret, 0, "write {i}: {msg}");
    }
    assert!(s.read(0, BUF_LEN) == many, "host image after 8 writes");

    drop(lib);
    s.assert_alive();
}

#[test]
fn libblkio_uses_two_queues() {
    const LEN: usize = 256 << 10;
    let mut s = serve(Some(2), false, |_| {});
    let b = s.connect(false);
    assert_eq!(b.get_i32("max-queues").unwrap(), 2, "max-queues");
    let mut lib = start(b, 2);

    // Both queues in flight at once, each with its own data and offset.
    let data: Vec<Vec<u8>> = (0..2).map(|q| pattern(10 + q, LEN)).collect();
    for (q, d) in data.iter().enumerate() {
        lib.fill(q * LEN, d);
        lib.write(q, q as u64 * (8 << 20), q * LEN, LEN, ReqFlags::empty());
    }
    for q in 0..2 {
        assert_eq!(lib.complete_one(q), 0, "write on queue {q}");
    }
    // Each queue reads back what the other one wrote.
    for q in 0..2 {
        let other = 1 - q;
        lib.read(q, other as u64 * (8 << 20), q * LEN, LEN);
    }
    for q in 0..2 {
        assert_eq!(lib.complete_one(q), 0, "read on queue {q}");
        assert!(lib.get(q * LEN, LEN) == data[1 - q], "queue {q} read-back");
    }
    for (q, d) in data.iter().enumerate() {
        assert!(
            s.read(q as u64 * (8 << 20), LEN) == *d,
            "host image, queue {q}"
        );
    }
    drop(lib);
    s.assert_alive();
}

#[test]
fn libblkio_sees_a_read_only_export_and_reconnects() {
    const LEN: usize = 64 << 10;
    let host_data = pattern(20, LEN);
    let mut s = serve(None, true, |img| write_at(img, 0, &host_data));
    let before = s.read(0, 1 << 20);

    // The device offers VIRTIO_BLK_F_RO: libblkio refuses to start writable.
    let mut b = s.connect(false);
    let err = match b.start() {
        Ok(_) => panic!("libblkio started writable on a read-only export"),
        Err(e) => e,
    };
    assert_eq!(err.errno(), Errno::ROFS, "{err}");
    drop(b);

    // A second connection, read-only this time, is served and reads.
    let b = s.connect(true);
    assert_eq!(b.get_u64("capacity").unwrap(), IMAGE_SIZE);
    let mut lib = start(b, 1);
    lib.read(0, 0, 0, LEN);
    assert_eq!(lib.complete_one(0), 0, "read");
    assert!(lib.get(0, LEN) == host_data);
    lib.queues[0].flush(1, ReqFlags::empty());
    assert_eq!(lib.complete_one(0), 0, "flush on a read-only export");
    drop(lib);
    assert!(s.read(0, 1 << 20) == before, "read-only image changed");
    s.assert_alive();
}

#[test]
fn libblkio_write_zeroes_and_discard_zero_the_range() {
    const LEN: u64 = 1 << 20;
    let fill = vec![0x5Au8; 4 * LEN as usize];
    let mut s = serve(None, false, |img| write_at(img, 0, &fill));
    let mut lib = start(s.connect(false), 1);

    // Zeroes without unmapping, zeroes allowed to unmap, discard; each over
    // one MiB, with one MiB untouched after it.
    let cases = [
        ("write-zeroes NO_UNMAP", 0, ReqFlags::NO_UNMAP),
        ("write-zeroes", 2 * LEN, ReqFlags::empty()),
    ];
    for (what, start, flags) in cases {
        lib.queues[0].write_zeroes(start, LEN, 1, flags);
        let (_, ret, msg) = lib.complete(0, 1).remove(0);
        assert_eq!(ret, 0, "{what}: {msg}");
        assert!(
            s.read(start, LEN as usize).iter().all(|&b| b == 0),
            "{what}"
        );
        assert!(
            s.read(start + LEN, LEN as usize).iter().all(|&b| b == 0x5A),
            "{what} went past its range"
        );
    }
    lib.queues[0].discard(LEN, LEN / 2, 2, ReqFlags::empty());
    let (_, ret, msg) = lib.complete(0, 1).remove(0);
    assert_eq!(ret, 0, "discard: {msg}");
    let half = LEN as usize / 2;
    assert!(s.read(LEN + LEN / 2, half).iter().all(|&b| b == 0x5A));
    lib.fill(0, &vec![0xFF; LEN as usize]);
    lib.read(0, LEN, 0, LEN as usize);
    assert_eq!(lib.complete_one(0), 0);
    let got = lib.get(0, LEN as usize);
    assert!(
        got[half..].iter().all(|&b| b == 0x5A),
        "discard went past its range"
    );
    // Our contract punches a hole, so the range reads as zeros on the host
    // and through libblkio (qemu-storage-daemon ignores discards unless its
    // blockdev has discard=unmap).
    if ours() {
        assert!(
            s.read(LEN, half).iter().all(|&b| b == 0),
            "discarded range on the host"
        );
        assert!(
            got[..half].iter().all(|&b| b == 0),
            "discarded range via libblkio"
        );
    }
    drop(lib);
    s.assert_alive();
}
