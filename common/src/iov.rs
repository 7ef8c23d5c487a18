//! Guest buffers as host iovecs: what a backend hands to `preadv`,
//! `pwritev`, `readv` and `writev` so data moves straight between guest
//! memory and the host file or tap, with no copy in the daemon.

use vm_memory::{GuestAddress, GuestMemory};

/// One buffer in guest memory, laid out like `struct iovec`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoVec {
    /// Host address.
    pub base: usize,
    /// Length in bytes.
    pub len: usize,
}

const _: () = assert!(std::mem::size_of::<IoVec>() == std::mem::size_of::<libc::iovec>());
const _: () = assert!(std::mem::align_of::<IoVec>() == std::mem::align_of::<libc::iovec>());

impl IoVec {
    /// `iovs` as the `struct iovec` array system calls take.
    pub fn as_libc(iovs: &[IoVec]) -> *const libc::iovec {
        iovs.as_ptr().cast()
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

/// Appends the host buffers backing guest range `addr..addr + len` to
/// `out` (one per memory region it touches). The pointers stay valid while
/// the `mem` they came from is held.
pub fn push_slices<M: GuestMemory + ?Sized>(
    mem: &M,
    addr: GuestAddress,
    len: u32,
    out: &mut Vec<IoVec>,
) -> Result<(), OutsideMemory> {
    let outside = OutsideMemory { addr: addr.0, len };
    let mut covered = 0usize;
    for slice in mem.get_slices(addr, len as usize) {
        let slice = slice.map_err(|_| outside)?;
        let ptr = slice.ptr_guard_mut().as_ptr();
        covered += slice.len();
        out.push(IoVec {
            base: ptr as usize,
            len: slice.len(),
        });
    }
    if covered != len as usize {
        return Err(outside);
    }
    Ok(())
}

/// Removes the last byte of `iovs` and returns its address.
pub fn take_last_byte(iovs: &mut Vec<IoVec>) -> Option<*mut u8> {
    let last = iovs.last_mut()?;
    let ptr = (last.base + last.len - 1) as *mut u8;
    last.len -= 1;
    if last.len == 0 {
        iovs.pop();
    }
    Some(ptr)
}

/// Drops the first `n` bytes of `iovs` (all of them if they hold fewer).
pub fn advance(iovs: &mut Vec<IoVec>, mut n: usize) {
    let mut drop_front = 0;
    for v in iovs.iter_mut() {
        if n == 0 {
            break;
        }
        if n >= v.len {
            n -= v.len;
            drop_front += 1;
        } else {
            v.base += n;
            v.len -= n;
            n = 0;
        }
    }
    iovs.drain(..drop_front);
}

/// Copies the first bytes of `iovs` into `out`; returns how many (fewer
/// than `out.len()` when the buffers are shorter).
///
/// `iovs` must come from [`push_slices`] over memory that is still mapped.
pub fn copy_out(iovs: &[IoVec], out: &mut [u8]) -> usize {
    let mut at = 0;
    for v in iovs {
        if at == out.len() {
            break;
        }
        let n = v.len.min(out.len() - at);
        // SAFETY: `v` lies in mapped guest memory (push_slices checked it, and
        // the caller holds the memory) and holds at least `n` bytes;
        // `out[at..at + n]` is ours.
        unsafe { std::ptr::copy_nonoverlapping(v.base as *const u8, out[at..].as_mut_ptr(), n) };
        at += n;
    }
    at
}

/// Copies `data` into `iovs` from their start; returns how many bytes fit.
///
/// `iovs` must come from [`push_slices`] over memory that is still mapped.
pub fn copy_in(iovs: &[IoVec], data: &[u8]) -> usize {
    copy_in_at(iovs, 0, data)
}

/// Copies `data` into `iovs` starting `offset` bytes in; returns how many
/// bytes fit.
///
/// `iovs` must come from [`push_slices`] over memory that is still mapped.
pub fn copy_in_at(iovs: &[IoVec], mut offset: usize, data: &[u8]) -> usize {
    let mut at = 0;
    for v in iovs {
        if at == data.len() {
            break;
        }
        if offset >= v.len {
            offset -= v.len;
            continue;
        }
        let n = (v.len - offset).min(data.len() - at);
        // SAFETY: `v` lies in mapped guest memory (push_slices checked it, and
        // the caller holds the memory); `offset + n <= v.len`; `data[at..at +
        // n]` is ours.
        unsafe {
            std::ptr::copy_nonoverlapping(data[at..].as_ptr(), (v.base + offset) as *mut u8, n)
        };
        offset = 0;
        at += n;
    }
    at
}

/// Total bytes in `iovs`.
pub fn total_len(iovs: &[IoVec]) -> usize {
    iovs.iter().map(|v| v.len).sum()
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

    #[test]
    fn a_range_across_regions_gives_two_iovecs() {
        let mem = two_regions();
        let mut v = Vec::new();
        push_slices(&mem, GuestAddress(0xff0), 0x20, &mut v).unwrap();
        assert_eq!(v.iter().map(|x| x.len).collect::<Vec<_>>(), [0x10, 0x10]);
    }

    #[test]
    fn a_range_past_memory_is_refused() {
        let mem = two_regions();
        let mut v = Vec::new();
        let e = push_slices(&mem, GuestAddress(0x1ff0), 0x20, &mut v).unwrap_err();
        assert_eq!(
            e,
            OutsideMemory {
                addr: 0x1ff0,
                len: 0x20
            }
        );
    }

    #[test]
    fn copies_follow_the_iovecs() {
        let mem = two_regions();
        let mut v = Vec::new();
        push_slices(&mem, GuestAddress(0xffc), 8, &mut v).unwrap();
        assert_eq!(copy_in(&v, b"abcdefghij"), 8);
        assert_eq!(copy_in_at(&v, 3, b"XY"), 2);
        let mut out = [0u8; 10];
        assert_eq!(copy_out(&v, &mut out), 8);
        assert_eq!(&out[..8], b"abcXYfgh");
        let last = take_last_byte(&mut v).unwrap();
        assert_eq!(total_len(&v), 7);
        // SAFETY: `last` points into `mem`, still mapped.
        assert_eq!(unsafe { *last }, b'h');
        advance(&mut v, 5);
        assert_eq!(total_len(&v), 2);
        advance(&mut v, 10);
        assert!(v.is_empty());
    }
}
