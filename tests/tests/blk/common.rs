//! Helpers shared by the `blk` test modules: a daemon serving a
//! fresh sparse image, host-side views of the image, and requests whose
//! status is returned instead of turned into an error.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use vu_driver::blk::status;
use vu_driver::blk::{BlkClient, BlkOptions, BlkQueue, Completion, Request, SECTOR_SIZE};
use vu_driver::fixture::{create_sparse_image, Daemon, TempDir};
use vu_driver::ours::{vhost_blk_daemon, BlkDaemonOpts};

/// Size of the default image.
pub const IMAGE_SIZE: u64 = 64 << 20;
/// How long one request may take.
pub const T: Duration = Duration::from_secs(10);
/// The contract's max_discard_sectors / max_write_zeroes_sectors.
pub const MAX_DWZ_SECTORS: u32 = 4_194_304;
/// The contract's max_discard_seg / max_write_zeroes_seg.
pub const MAX_DWZ_SEG: u32 = 32;

/// A daemon serving an image in its own temporary directory.
pub struct Setup {
    _dir: TempDir,
    /// The image file on the host.
    pub image: PathBuf,
    /// The daemon process (stopped, and its log printed on failure, on drop).
    pub daemon: Daemon,
}

/// A daemon serving a fresh sparse image `name` of `size` bytes.
pub fn daemon_with(name: &str, size: u64, opts: &BlkDaemonOpts) -> Setup {
    let dir = TempDir::new("blk-daemon").unwrap();
    let image = dir.join(name);
    create_sparse_image(&image, size).unwrap();
    let daemon = vhost_blk_daemon(&image, &dir.join("blk.sock"), opts).unwrap();
    Setup {
        _dir: dir,
        image,
        daemon,
    }
}

/// A daemon serving a fresh 64 MiB `disk.img`.
pub fn daemon(opts: &BlkDaemonOpts) -> Setup {
    daemon_with("disk.img", IMAGE_SIZE, opts)
}

/// A client with the driver's default options.
pub fn connect(s: &Setup) -> BlkClient {
    BlkClient::connect(s.daemon.socket(), &BlkOptions::default()).unwrap()
}

/// Deterministic test data that differs per seed and per sector.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Reads the image on the host, bypassing the daemon.
pub fn host_read(image: &Path, sector: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut buf, sector * SECTOR_SIZE)
        .unwrap();
    buf
}

/// Writes the image on the host (and syncs), bypassing the daemon.
pub fn host_write(image: &Path, sector: u64, data: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(image).unwrap();
    f.write_all_at(data, sector * SECTOR_SIZE).unwrap();
    f.sync_all().unwrap();
}

/// 512-byte blocks allocated to the image on the host.
pub fn host_blocks(image: &Path) -> u64 {
    fs::metadata(image).unwrap().blocks()
}

/// Submits `r` on queue `qi` (copying `data` into its slot first) and waits
/// for it, whatever its status.
pub fn run_on(c: &mut BlkClient, qi: usize, r: Request, data: Option<&[u8]>) -> Completion {
    let mut q = c.queue(qi);
    run_q(&mut q, r, data)
}

/// [`run_on`] for a queue already borrowed.
pub fn run_q(q: &mut BlkQueue<'_>, r: Request, data: Option<&[u8]>) -> Completion {
    if let Some(d) = data {
        let mem = q.virtqueue().mem().clone();
        mem.write(q.data_addr(q.peek_slot().unwrap()), d).unwrap();
    }
    let slot = q.submit(r).unwrap();
    q.kick().unwrap();
    let mut done = Vec::new();
    loop {
        q.reap(T, &mut done).unwrap();
        if let Some(c) = done.iter().find(|c| c.slot == slot) {
            return *c;
        }
        done.clear();
    }
}

/// Copies `data` into the buffer of the next free slot of `q` and submits
/// a write of it at `sector`, without kicking; returns the slot (checked
/// to be the one the data went to).
pub fn submit_write(q: &mut BlkQueue<'_>, sector: u64, data: &[u8]) -> u16 {
    let mem = q.virtqueue().mem().clone();
    let slot = q.peek_slot().unwrap();
    mem.write(q.data_addr(slot), data).unwrap();
    let len = data.len() as u32;
    let used = q.submit(Request::Write { sector, len }).unwrap();
    assert_eq!(used, slot, "the write went to another slot than its data");
    used
}

/// Kicks `q` and waits for `n` completions; returns them.
pub fn kick_and_reap(q: &mut BlkQueue<'_>, n: usize) -> Vec<Completion> {
    q.kick().unwrap();
    let mut done = Vec::new();
    while done.len() < n {
        q.reap(T, &mut done).unwrap();
    }
    done
}

/// [`run_on`] queue 0 without data.
pub fn run(c: &mut BlkClient, r: Request) -> Completion {
    run_on(c, 0, r, None)
}

/// A write of `data` at `sector` on queue 0, whatever its status.
pub fn write_req(c: &mut BlkClient, sector: u64, data: &[u8]) -> Completion {
    let len = data.len() as u32;
    run_on(c, 0, Request::Write { sector, len }, Some(data))
}

/// Asserts a finished request failed with `want` and a used length of 1.
pub fn assert_status(c: Completion, want: u8, what: &str) {
    assert_eq!(c.status, want, "{what}: status (completion {c:?})");
    assert_eq!(c.used_len, 1, "{what}: used length (completion {c:?})");
}

/// Asserts a finished request succeeded with used length `used_len`.
pub fn assert_status_ok(c: Completion, used_len: u32, what: &str) {
    assert_eq!(c.status, status::OK, "{what}: status (completion {c:?})");
    assert_eq!(
        c.used_len, used_len,
        "{what}: used length (completion {c:?})"
    );
}
