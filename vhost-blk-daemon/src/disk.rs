//! The image: a regular file or a block device, read and written straight
//! between the file and guest memory with preadv/pwritev on the request's
//! own buffers (no bounce copy, except for O_DIRECT buffers the kernel
//! refuses as misaligned).

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Bytes per virtio-blk sector.
pub const SECTOR: u64 = 512;

use common::iov::{self, GuestIoVecs};
use nix::fcntl::{fallocate, fcntl, FallocateFlags, FcntlArg};

/// Errors opening the image; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// stat/open failed.
    #[error("cannot open --blk-file {path}: {source}")]
    Open {
        /// The image path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// Neither a regular file nor a block device.
    #[error("--blk-file {path} is a {kind}, not a regular file or block device")]
    NotAFile {
        /// The image path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// Another process holds a conflicting lock (as QEMU's image locking).
    #[error("--blk-file {path} is locked by another process ({source})")]
    Locked {
        /// The image path.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// What the image is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file: discard punches holes.
    Regular,
    /// A block device: discard and zeroing use BLKDISCARD/BLKZEROOUT.
    Block,
}

/// The open image.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    size: u64,
    kind: Kind,
    read_only: bool,
    direct: bool,
}

// Linux <linux/fs.h>: _IO(0x12, 119) and _IO(0x12, 127).
pub const BLKDISCARD: libc::c_ulong = 0x1277;
pub const BLKZEROOUT: libc::c_ulong = 0x127f;

impl Disk {
    /// Opens `path` (O_RDONLY with `read_only`, O_DIRECT with `direct`)
    /// and locks it against other writers, as QEMU does.
    pub fn open(path: &Path, read_only: bool, direct: bool) -> Result<Disk, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            Kind::Regular
        } else if ft.is_block_device() {
            Kind::Block
        } else {
            let kind = if ft.is_dir() {
                "directory"
            } else if ft.is_char_device() {
                "character device"
            } else if ft.is_fifo() {
                "FIFO"
            } else if ft.is_socket() {
                "socket"
            } else {
                "special file"
            };
            return Err(DiskError::NotAFile {
                path: path.to_path_buf(),
                kind,
            });
        };
        let mut flags = libc::O_CLOEXEC;
        if direct {
            flags |= libc::O_DIRECT;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(flags)
            .open(path)
            .map_err(open_err)?;
        lock_waiting(&file, read_only, path).map_err(|source| DiskError::Locked {
            path: path.to_path_buf(),
            source,
        })?;
        let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            size,
            kind,
            read_only,
            direct,
        })
    }

    /// The image path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether it was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether it was opened with O_DIRECT.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Regular file or block device.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Reads `offset..` into the buffers, all of them.
    pub fn read_vectored(&self, iovs: &mut GuestIoVecs<'_, '_>, offset: u64) -> io::Result<()> {
        self.transfer(iovs, offset, false)
    }

    /// Writes the buffers at `offset`, all of them.
    pub fn write_vectored(&self, iovs: &mut GuestIoVecs<'_, '_>, offset: u64) -> io::Result<()> {
        self.transfer(iovs, offset, true)
    }

    fn transfer(&self, iovs: &mut GuestIoVecs<'_, '_>, offset: u64, write: bool) -> io::Result<()> {
        let total = iovs.total_len();
        match rw_all(&self.file, iovs, offset, write) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                let done = (total - iovs.total_len()) as u64;
                bounce(&self.file, iovs, offset + done, write)
            }
            r => r,
        }
    }

    /// fdatasync.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Gives `len` bytes at `offset` back: a hole in a file, BLKDISCARD on a
    /// device. Advisory: where the filesystem cannot, nothing happens.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let r = match self.kind {
            Kind::Regular => self.fallocate(
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ),
            Kind::Block => self.range_ioctl(BLKDISCARD, offset, len),
        };
        match r {
            Err(e) if is_unsupported(&e) => Ok(()),
            r => r,
        }
    }

    /// Makes `len` bytes at `offset` read as zeros; with `unmap` the space
    /// may be deallocated, without it it stays allocated.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let r = match (self.kind, unmap) {
            (Kind::Block, _) => self.range_ioctl(BLKZEROOUT, offset, len),
            (Kind::Regular, true) => self.fallocate(
                FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ),
            (Kind::Regular, false) => {
                match self.fallocate(
                    FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    offset,
                    len,
                ) {
                    // tmpfs has no ZERO_RANGE: punch, then allocate again.
                    Err(e) if is_unsupported(&e) => self
                        .fallocate(
                            FallocateFlags::FALLOC_FL_PUNCH_HOLE
                                | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                            offset,
                            len,
                        )
                        .and_then(|()| {
                            self.fallocate(FallocateFlags::FALLOC_FL_KEEP_SIZE, offset, len)
                        }),
                    r => r,
                }
            }
        };
        match r {
            Err(e) if is_unsupported(&e) => self.write_zero_buffers(offset, len),
            r => r,
        }
    }

    fn write_zero_buffers(&self, mut offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: usize = 1 << 20;
        let mut buf = AlignedBuf::zeroed(CHUNK.min(len as usize).max(4096))?;
        let zeros = buf.as_mut_slice();
        let end = offset + len;
        while offset < end {
            let n = ((end - offset) as usize).min(zeros.len());
            self.file.write_all_at(&zeros[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: FallocateFlags, offset: u64, len: u64) -> io::Result<()> {
        let off = |v: u64| i64::try_from(v).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL));
        fallocate(self.file.as_raw_fd(), mode, off(offset)?, off(len)?)?;
        Ok(())
    }

    fn range_ioctl(&self, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKDISCARD/BLKZEROOUT read two u64 (start, length) from the
        // pointer, which points at `range`, alive for the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), req as _, range.as_ptr()) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::ENOSYS)
    )
}

/// Whole-file OFD lock: shared for read-only, exclusive for read-write.
/// How long [`lock_waiting`] waits for a conflicting lock to go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`lock`], waiting up to [`LOCK_WAIT`] while another holder has the
/// image. A daemon restarted after a crash can find its predecessor's lock
/// still held for a moment: an io_uring's registered files stay open until
/// the kernel's deferred teardown of the dead process's ring has reaped its
/// requests in flight, after the process itself is gone. A holder that
/// stays (another VM on the same image) still gets the error.
fn lock_waiting(file: &File, read_only: bool, path: &Path) -> io::Result<()> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(10);
    let mut logged = false;
    loop {
        match lock(file, read_only) {
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES))
                    && start.elapsed() < LOCK_WAIT =>
            {
                if !logged {
                    log::warn!(
                        "--blk-file {} is locked by another process; waiting up to {}s for it",
                        path.display(),
                        LOCK_WAIT.as_secs()
                    );
                    logged = true;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(200));
            }
            r => return r,
        }
    }
}

fn lock(file: &File, read_only: bool) -> io::Result<()> {
    let kind = if read_only {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    };
    let whole_file = libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&whole_file))?;
    Ok(())
}
/// preadv/pwritev until every buffer is done, in chunks of IOV_MAX,
/// advancing past short transfers.
fn rw_all(
    file: &File,
    iovs: &mut GuestIoVecs<'_, '_>,
    mut offset: u64,
    write: bool,
) -> io::Result<()> {
    while !iovs.is_empty() {
        let r = if write {
            iov::pwritev(file, iovs.as_slice(), offset)?
        } else {
            iov::preadv(file, iovs.as_slice(), offset)?
        };
        if r == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "end of image"));
        }
        offset += r as u64;
        iovs.advance(r);
    }
    Ok(())
}

/// A zeroed, page-aligned heap buffer for O_DIRECT.
struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    const ALIGN: usize = 4096;

    fn zeroed(len: usize) -> io::Result<AlignedBuf> {
        let mut bytes = Vec::new();
        bytes
            .try_reserve_exact(len + Self::ALIGN)
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        bytes.resize(len + Self::ALIGN, 0);
        let start = bytes.as_ptr().align_offset(Self::ALIGN);
        if start >= Self::ALIGN {
            return Err(io::Error::other("cannot align a buffer"));
        }
        Ok(AlignedBuf { bytes, start, len })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

/// O_DIRECT with buffers the kernel refuses: go through an aligned copy.
fn bounce(file: &File, iovs: &GuestIoVecs<'_, '_>, offset: u64, write: bool) -> io::Result<()> {
    let total = iovs.total_len();
    let mut buf = AlignedBuf::zeroed(total.next_multiple_of(4096))?;
    let bytes = &mut buf.as_mut_slice()[..total];
    if write {
        iov::copy_out(iovs.as_slice(), bytes);
        file.write_all_at(bytes, offset)
    } else {
        file.read_exact_at(bytes, offset)?;
        iov::copy_in(iovs.as_slice(), bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::iov::IoVecBuf;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn image(name: &str, len: usize) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vbd-disk-{}-{name}", std::process::id()));
        let mut f = File::create(&p).unwrap();
        f.write_all(&(0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>())
            .unwrap();
        p
    }

    fn guest() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
            .unwrap()
    }

    #[test]
    fn vectored_read_and_write_cross_buffers() {
        let p = image("rw", 8192);
        let d = Disk::open(&p, false, false).unwrap();
        assert_eq!(d.size(), 8192);
        let mem = guest();
        let mut buf = IoVecBuf::default();
        let mut iovs = buf.walk();
        iovs.push(&mem, GuestAddress(0x100), 100).unwrap();
        // Across the two regions.
        iovs.push(&mem, GuestAddress(0xf00), 412).unwrap();
        d.read_vectored(&mut iovs, 512).unwrap();
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x100)).unwrap(),
            (512 % 251) as u8
        );
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0xf00)).unwrap(),
            (612 % 251) as u8
        );
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(),
            ((612 + 256) % 251) as u8
        );
        mem.write_slice(&[7u8; 512], GuestAddress(0x1200)).unwrap();
        let mut iovs = buf.walk();
        iovs.push(&mem, GuestAddress(0x1200), 512).unwrap();
        d.write_vectored(&mut iovs, 1024).unwrap();
        let on_disk = std::fs::read(&p).unwrap();
        assert!(on_disk[1024..1536].iter().all(|&x| x == 7));
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn read_past_end_is_an_error() {
        let p = image("eof", 512);
        let d = Disk::open(&p, true, false).unwrap();
        let mem = guest();
        let mut buf = IoVecBuf::default();
        let mut iovs = buf.walk();
        iovs.push(&mem, GuestAddress(0), 1024).unwrap();
        assert!(d.read_vectored(&mut iovs, 0).is_err());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn zeroing_and_discard_read_back_zeros() {
        let p = image("zero", 16384);
        let d = Disk::open(&p, false, false).unwrap();
        d.write_zeroes(4096, 4096, false).unwrap();
        d.write_zeroes(8192, 1024, true).unwrap();
        d.discard(12288, 4096).unwrap();
        let on_disk = std::fs::read(&p).unwrap();
        assert_eq!(on_disk.len(), 16384);
        assert!(on_disk[4096..9216].iter().all(|&x| x == 0));
        assert!(on_disk[12288..].iter().all(|&x| x == 0));
        assert_ne!(on_disk[9216..12288].iter().filter(|&&x| x != 0).count(), 0);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn second_writer_is_refused_and_directories_are_not_images() {
        let p = image("lock", 512);
        let _d = Disk::open(&p, false, false).unwrap();
        let err = Disk::open(&p, false, false).unwrap_err();
        assert!(matches!(err, DiskError::Locked { .. }), "{err}");
        let err = Disk::open(&std::env::temp_dir(), true, false).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        std::fs::remove_file(p).unwrap();
    }
}
