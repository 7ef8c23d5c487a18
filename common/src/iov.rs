//! Guest buffers as host iovecs: what a backend hands to `preadv`,
//! `pwritev`, `readv` and `writev` so data moves straight between guest
//! memory and the host file or tap, with no copy in the daemon.
//!
//! Soundness lives in the types: a [`GuestIoVec<'m>`] is made only by the
//! guest-memory walker ([`GuestIoVecs::push`]) from a range vm-memory
//! checked, and borrows the memory map for `'m`, so it cannot outlive the
//! mapping. Safe code never sees its address: bytes move through
//! vm-memory's volatile slices ([`GuestIoVec::as_volatile_slice`],
//! [`copy_out`], [`copy_in_at`]) or through the system call wrappers here
//! ([`preadv`], [`pwritev`], [`readv`], [`writev`]), which are the only
//! places a raw guest address reaches the kernel.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd};

use vm_memory::{GuestAddress, GuestMemory, VolatileSlice};

/// Most iovecs one system call takes (Linux UIO_MAXIOV).
pub const IOV_MAX: usize = 1024;

/// One buffer in guest memory, laid out like `struct iovec`. Only
/// [`GuestIoVecs::push`] creates one; it borrows the memory map for `'m`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GuestIoVec<'m> {
    base: usize,
    len: usize,
    _mem: PhantomData<&'m ()>,
}

const _: () = assert!(std::mem::size_of::<GuestIoVec>() == std::mem::size_of::<libc::iovec>());
const _: () = assert!(std::mem::align_of::<GuestIoVec>() == std::mem::align_of::<libc::iovec>());

impl<'m> GuestIoVec<'m> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer as a volatile slice, for reads and writes of its bytes.
    pub fn as_volatile_slice(&self) -> VolatileSlice<'m> {
        // SAFETY: `base..base + len` was a volatile slice of guest memory
        // when the walker made this iovec (or a part of one), and the
        // mapping stays in place for `'m`, which borrows the memory map.
        unsafe { VolatileSlice::new(self.base as *mut u8, self.len) }
    }

    /// Drops the first `n` bytes (at most all of them).
    fn skip(&mut self, n: usize) {
        let n = n.min(self.len);
        self.base += n;
        self.len -= n;
    }
}

/// A descriptor's buffer is not (wholly) inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffer at {addr:#x}+{len} is outside guest memory")]
pub struct OutsideMemory {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
}

/// Storage for a chain's iovecs, kept from request to request so the
/// data path allocates nothing. Its contents are reachable only through
/// [`IoVecBuf::walk`], which empties it first.
#[derive(Debug, Default)]
pub struct IoVecBuf {
    // The lifetime is a placeholder: nothing reads an entry except
    // through a `GuestIoVecs<'_, 'm>`, which hands it out as `'m`, and
    // every walk starts empty.
    v: Vec<GuestIoVec<'static>>,
}

impl IoVecBuf {
    /// Empties the storage and lends it to a walk over memory that lives
    /// for `'m`.
    pub fn walk<'m>(&mut self) -> GuestIoVecs<'_, 'm> {
        self.v.clear();
        GuestIoVecs {
            v: &mut self.v,
            _mem: PhantomData,
        }
    }
}

/// The guest-memory walker: the iovecs of guest ranges pushed so far, in
/// order, each borrowing the memory for `'m`.
#[derive(Debug)]
pub struct GuestIoVecs<'a, 'm> {
    v: &'a mut Vec<GuestIoVec<'static>>,
    _mem: PhantomData<&'m ()>,
}

impl<'a, 'm> GuestIoVecs<'a, 'm> {
    /// Appends the host buffers backing guest range `addr..addr + len`
    /// of `mem` (one per memory region it touches). On error nothing is
    /// appended.
    pub fn push<M: GuestMemory + ?Sized>(
        &mut self,
        mem: &'m M,
        addr: GuestAddress,
        len: u32,
    ) -> Result<(), OutsideMemory> {
        let outside = OutsideMemory { addr: addr.0, len };
        let start = self.v.len();
        let mut covered = 0usize;
        for slice in mem.get_slices(addr, len as usize) {
            let Ok(slice) = slice else {
                self.v.truncate(start);
                return Err(outside);
            };
            covered += slice.len();
            self.v.push(GuestIoVec {
                base: slice.ptr_guard_mut().as_ptr() as usize,
                len: slice.len(),
                _mem: PhantomData,
            });
        }
        if covered != len as usize {
            self.v.truncate(start);
            return Err(outside);
        }
        Ok(())
    }

    /// The iovecs.
    pub fn as_slice(&self) -> &[GuestIoVec<'m>] {
        self.v
    }

    /// The iovecs, for as long as the storage is lent.
    pub fn into_slice(self) -> &'a [GuestIoVec<'m>] {
        self.v
    }

    /// How many iovecs.
    pub fn len(&self) -> usize {
        self.v.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.v.is_empty()
    }

    /// Keeps the first `n` iovecs.
    pub fn truncate(&mut self, n: usize) {
        self.v.truncate(n);
    }

    /// Removes the first `n` iovecs.
    pub fn drop_front(&mut self, n: usize) {
        self.v.drain(..n.min(self.v.len()));
    }

    /// Total bytes.
    pub fn total_len(&self) -> usize {
        total_len(self.v)
    }

    /// Removes the last byte and returns it as a one-byte buffer.
    pub fn take_last_byte(&mut self) -> Option<GuestIoVec<'m>> {
        while self.v.last().is_some_and(|v| v.is_empty()) {
            self.v.pop();
        }
        let last = self.v.last_mut()?;
        let mut byte = *last;
        byte.skip(last.len - 1);
        last.len -= 1;
        if last.len == 0 {
            self.v.pop();
        }
        Some(byte)
    }

    /// Drops the first `n` bytes (all of them if they hold fewer).
    pub fn advance(&mut self, mut n: usize) {
        let mut whole = 0;
        for v in self.v.iter_mut() {
            if n < v.len {
                v.skip(n);
                break;
            }
            n -= v.len;
            whole += 1;
        }
        self.v.drain(..whole);
    }
}

/// Copies the first bytes of `iovs` into `out` (volatile reads); returns
/// how many (fewer than `out.len()` when the buffers are shorter).
pub fn copy_out(iovs: &[GuestIoVec<'_>], out: &mut [u8]) -> usize {
    let mut at = 0;
    for v in iovs {
        if at == out.len() {
            break;
        }
        at += v.as_volatile_slice().copy_to(&mut out[at..]);
    }
    at
}

/// Copies `data` into `iovs` from their start (volatile writes); returns
/// how many bytes fit.
pub fn copy_in(iovs: &[GuestIoVec<'_>], data: &[u8]) -> usize {
    copy_in_at(iovs, 0, data)
}

/// Copies `data` into `iovs` starting `offset` bytes in (volatile writes);
/// returns how many bytes fit.
pub fn copy_in_at(iovs: &[GuestIoVec<'_>], mut offset: usize, data: &[u8]) -> usize {
    let mut at = 0;
    for v in iovs {
        if at == data.len() {
            break;
        }
        if offset >= v.len {
            offset -= v.len;
            continue;
        }
        let mut part = *v;
        part.skip(offset);
        let n = part.len.min(data.len() - at);
        part.as_volatile_slice().copy_from(&data[at..at + n]);
        offset = 0;
        at += n;
    }
    at
}

/// Total bytes in `iovs`.
pub fn total_len(iovs: &[GuestIoVec<'_>]) -> usize {
    iovs.iter().map(|v| v.len).sum()
}

/// What to do with the buffers.
#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
    ReadAt(i64),
    WriteAt(i64),
    ReadAtNoWait(i64),
    WriteAtNoWait(i64),
}

/// One system call moving bytes between `fd` and at most [`IOV_MAX`] of
/// `iovs`, retried on EINTR. The one place guest addresses reach the kernel.
fn transfer(fd: &impl AsFd, iovs: &[GuestIoVec<'_>], op: Op) -> io::Result<usize> {
    let fd = fd.as_fd().as_raw_fd();
    let n = iovs.len().min(IOV_MAX) as libc::c_int;
    let ptr = iovs.as_ptr().cast::<libc::iovec>();
    loop {
        // SAFETY: GuestIoVec has iovec's layout (asserted above); each entry
        // is a range of guest memory the walker checked, mapped for as long
        // as the borrowed `iovs` live; the kernel reads or writes at most
        // those ranges, which is what guest memory is shared for.
        let r = unsafe {
            match op {
                Op::Read => libc::readv(fd, ptr, n),
                Op::Write => libc::writev(fd, ptr, n),
                Op::ReadAt(off) => libc::preadv(fd, ptr, n, off),
                Op::WriteAt(off) => libc::pwritev(fd, ptr, n, off),
                Op::ReadAtNoWait(off) => libc::preadv2(fd, ptr, n, off, libc::RWF_NOWAIT),
                Op::WriteAtNoWait(off) => libc::pwritev2(fd, ptr, n, off, libc::RWF_NOWAIT),
            }
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn offset(off: u64) -> io::Result<i64> {
    i64::try_from(off).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `readv(2)` into guest buffers (the first [`IOV_MAX`]); bytes read.
pub fn readv(fd: &impl AsFd, iovs: &[GuestIoVec<'_>]) -> io::Result<usize> {
    transfer(fd, iovs, Op::Read)
}

/// `writev(2)` from guest buffers (the first [`IOV_MAX`]); bytes written.
pub fn writev(fd: &impl AsFd, iovs: &[GuestIoVec<'_>]) -> io::Result<usize> {
    transfer(fd, iovs, Op::Write)
}

/// `preadv(2)` into guest buffers (the first [`IOV_MAX`]); bytes read.
pub fn preadv(fd: &impl AsFd, iovs: &[GuestIoVec<'_>], off: u64) -> io::Result<usize> {
    transfer(fd, iovs, Op::ReadAt(offset(off)?))
}

/// `pwritev(2)` from guest buffers (the first [`IOV_MAX`]); bytes written.
pub fn pwritev(fd: &impl AsFd, iovs: &[GuestIoVec<'_>], off: u64) -> io::Result<usize> {
    transfer(fd, iovs, Op::WriteAt(offset(off)?))
}

/// `preadv2(2)` with `RWF_NOWAIT`: only what the page cache holds now;
/// `EAGAIN` where that would block.
pub fn preadv_nowait(fd: &impl AsFd, iovs: &[GuestIoVec<'_>], off: u64) -> io::Result<usize> {
    transfer(fd, iovs, Op::ReadAtNoWait(offset(off)?))
}

/// `pwritev2(2)` with `RWF_NOWAIT`: `EAGAIN` (or `EOPNOTSUPP`) where the
/// write would block.
pub fn pwritev_nowait(fd: &impl AsFd, iovs: &[GuestIoVec<'_>], off: u64) -> io::Result<usize> {
    transfer(fd, iovs, Op::WriteAtNoWait(offset(off)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryMmap, GuestRegionMmap};

    fn two_regions() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_regions(vec![
            GuestRegionMmap::from_range(GuestAddress(0), 0x1000, None).unwrap(),
            GuestRegionMmap::from_range(GuestAddress(0x1000), 0x1000, None).unwrap(),
        ])
        .unwrap()
    }

    /// Runs `f` on [`two_regions`] and its iovecs after `len` bytes at
    /// `addr` were pushed.
    fn with_range(
        addr: u64,
        len: u32,
        f: impl for<'m> FnOnce(&'m GuestMemoryMmap<()>, &mut GuestIoVecs<'_, 'm>),
    ) {
        let mem = two_regions();
        let mut buf = IoVecBuf::default();
        let mut v = buf.walk();
        v.push(&mem, GuestAddress(addr), len).unwrap();
        f(&mem, &mut v);
    }

    #[test]
    fn a_range_across_regions_gives_two_iovecs() {
        with_range(0xff0, 0x20, |_, v| {
            let lens: Vec<_> = v.as_slice().iter().map(|x| x.len()).collect();
            assert_eq!(lens, [0x10, 0x10]);
        });
    }

    #[test]
    fn a_range_past_memory_is_refused_and_leaves_nothing() {
        with_range(0, 4, |mem, v| {
            let e = v.push(mem, GuestAddress(0x1ff0), 0x20).unwrap_err();
            assert_eq!(
                e,
                OutsideMemory {
                    addr: 0x1ff0,
                    len: 0x20
                }
            );
            assert_eq!(v.len(), 1);
        });
    }

    #[test]
    fn copies_follow_the_iovecs() {
        with_range(0xffc, 8, |_, v| {
            assert_eq!(copy_in(v.as_slice(), b"abcdefghij"), 8);
            assert_eq!(copy_in_at(v.as_slice(), 3, b"XY"), 2);
            let mut out = [0u8; 10];
            assert_eq!(copy_out(v.as_slice(), &mut out), 8);
            assert_eq!(&out[..8], b"abcXYfgh");
            let last = v.take_last_byte().unwrap();
            assert_eq!(v.total_len(), 7);
            let mut b = [0u8; 1];
            copy_out(&[last], &mut b);
            assert_eq!(b, *b"h");
            v.advance(5);
            assert_eq!(v.total_len(), 2);
            copy_out(v.as_slice(), &mut b);
            assert_eq!(b, *b"f");
            v.advance(10);
            assert!(v.is_empty());
            assert!(v.take_last_byte().is_none());
        });
    }

    #[test]
    fn the_last_byte_of_a_one_byte_buffer_empties_it() {
        with_range(0x10, 1, |_, v| {
            assert!(v.take_last_byte().is_some());
            assert!(v.is_empty());
        });
    }

    #[test]
    fn nowait_reads_and_writes_reach_the_page_cache() {
        with_range(0xffe, 4, |_, v| {
            let file = vmm_sys_util::tempfile::TempFile::new().unwrap();
            let f = file.as_file();
            copy_in(v.as_slice(), b"wxyz");
            match pwritev_nowait(f, v.as_slice(), 8) {
                Ok(n) => assert_eq!(n, 4),
                // Filesystems without non-blocking buffered writes.
                Err(e) => {
                    assert!(matches!(
                        e.raw_os_error(),
                        Some(libc::EAGAIN | libc::EOPNOTSUPP)
                    ));
                    assert_eq!(pwritev(f, v.as_slice(), 8).unwrap(), 4);
                }
            }
            copy_in(v.as_slice(), b"....");
            assert_eq!(preadv_nowait(f, v.as_slice(), 8).unwrap(), 4);
            let mut out = [0u8; 4];
            copy_out(v.as_slice(), &mut out);
            assert_eq!(&out, b"wxyz");
        });
    }

    #[test]
    fn vectored_io_moves_guest_bytes() {
        with_range(0xffe, 4, |_, v| {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            copy_in(v.as_slice(), b"wxyz");
            assert_eq!(writev(&a, v.as_slice()).unwrap(), 4);
            copy_in(v.as_slice(), b"....");
            assert_eq!(readv(&b, v.as_slice()).unwrap(), 4);
            let mut out = [0u8; 4];
            copy_out(v.as_slice(), &mut out);
            assert_eq!(&out, b"wxyz");
        });
    }
}
