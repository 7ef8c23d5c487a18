//! The guest memory map checked against the descriptors behind it before
//! a worker may touch it.
//!
//! `vhost-user-backend` maps each region of SET_MEM_TABLE or ADD_MEM_REG
//! as the frontend describes it; mmap succeeds for a region larger than its
//! file (or one starting past the file's end), and the first access to a
//! page beyond the end raises SIGBUS, which kills the daemon. [`check_map`]
//! compares each region with its descriptor (`fstat`): for a regular file
//! (a memfd, a file on tmpfs or hugetlbfs) `mmap_offset + memory_size`
//! must fit in its size; any other kind of descriptor is refused, since its
//! size cannot be checked without touching state shared with the frontend
//! (a block device's size is only found by seeking, and the file offset
//! is the frontend's too).
//!
//! What no check can prevent: a frontend that shrinks the file after the
//! table was accepted. The mapping is shared memory the frontend owns.

use std::fmt;
use std::os::unix::fs::FileTypeExt;

use vm_memory::{Address, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// The guest memory map, as a worker borrows it for one batch.
pub type Mem = GuestMemoryMmap<()>;

/// What the descriptor behind a region is, when it is not a regular file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A directory.
    Directory,
    /// A block device.
    BlockDevice,
    /// A character device.
    CharDevice,
    /// A pipe.
    Fifo,
    /// A socket.
    Socket,
    /// A symbolic link (an `O_PATH` descriptor).
    Symlink,
    /// Anything else.
    Other,
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FdKind::Directory => "a directory",
            FdKind::BlockDevice => "a block device",
            FdKind::CharDevice => "a character device",
            FdKind::Fifo => "a pipe",
            FdKind::Socket => "a socket",
            FdKind::Symlink => "a symbolic link",
            FdKind::Other => "not a regular file",
        })
    }
}

/// Why a region was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// `mmap_offset + memory_size` is past the end of the file.
    PastTheEnd {
        /// The file's size (`st_size`).
        fd_size: u64,
    },
    /// `mmap_offset + memory_size` overflows.
    Overflow,
    /// The descriptor is not a regular file.
    NotAFile(FdKind),
    /// `fstat` failed.
    Stat(String),
}

/// A region of the new map that cannot be used, with what identifies it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "memory region {index} (guest address {guest:#x}, size {size:#x}, mmap offset {offset:#x}) {problem}"
)]
pub struct BadRegion {
    /// Its position in the map, by guest address (SET_MEM_TABLE's order,
    /// which must be sorted).
    pub index: usize,
    /// Guest physical address.
    pub guest: u64,
    /// `memory_size`.
    pub size: u64,
    /// `mmap_offset`.
    pub offset: u64,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::PastTheEnd { fd_size } => write!(
                f,
                "runs past the end of its file descriptor (fd size {fd_size:#x})"
            ),
            Problem::Overflow => f.write_str("ends past 2^64 (mmap offset + size overflows)"),
            Problem::NotAFile(kind) => write!(
                f,
                "is backed by {kind}, not a regular file or memfd whose size can be checked"
            ),
            Problem::Stat(e) => write!(f, "cannot be checked: fstat on its descriptor: {e}"),
        }
    }
}

/// Checks one region: `(offset, size)` within the file `meta` describes.
fn check_extent(meta: &std::fs::Metadata, offset: u64, size: u64) -> Result<(), Problem> {
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_dir() {
            FdKind::Directory
        } else if ft.is_block_device() {
            FdKind::BlockDevice
        } else if ft.is_char_device() {
            FdKind::CharDevice
        } else if ft.is_fifo() {
            FdKind::Fifo
        } else if ft.is_socket() {
            FdKind::Socket
        } else if ft.is_symlink() {
            FdKind::Symlink
        } else {
            FdKind::Other
        };
        return Err(Problem::NotAFile(kind));
    }
    let end = offset.checked_add(size).ok_or(Problem::Overflow)?;
    if end > meta.len() {
        return Err(Problem::PastTheEnd {
            fd_size: meta.len(),
        });
    }
    Ok(())
}

/// The memory slots vhost-user-backend 0.21 advertises (GET_MAX_MEM_SLOTS):
/// a map with more regions than this is refused.
pub const MAX_MEM_SLOTS: usize = 509;

/// A map with more regions than [`MAX_MEM_SLOTS`] (ADD_MEM_REG after
/// ADD_MEM_REG: each holds a descriptor and a mapping).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{count} memory regions, more than the {MAX_MEM_SLOTS} slots advertised (GET_MAX_MEM_SLOTS)"
)]
pub struct TooManyRegions {
    pub count: usize,
}

/// Checks that `map` fits the advertised memory slots.
pub fn check_slots(map: &Mem) -> Result<(), TooManyRegions> {
    let count = map.num_regions();
    if count > MAX_MEM_SLOTS {
        return Err(TooManyRegions { count });
    }
    Ok(())
}

/// Checks every file-backed region of `map` against its file descriptor;
/// the first bad one is the error.
pub fn check_map(map: &Mem) -> Result<(), BadRegion> {
    for (index, region) in map.iter().enumerate() {
        let offset = region.file_offset().map_or(0, |fo| fo.start());
        let bad = |problem| BadRegion {
            index,
            guest: region.start_addr().raw_value(),
            size: region.len(),
            offset,
            problem,
        };
        // Anonymous memory of our own (never what a frontend sends) cannot
        // run past an end.
        let Some(fo) = region.file_offset() else {
            continue;
        };
        let meta = fo
            .file()
            .metadata()
            .map_err(|e| bad(Problem::Stat(e.to_string())))?;
        check_extent(&meta, offset, region.len()).map_err(bad)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap, MmapRegion};

    /// A file of `size` bytes (unlinked), as a memfd would be.
    fn memfd(size: u64) -> File {
        let t = vmm_sys_util::tempfile::TempFile::new().unwrap();
        let f = t.as_file().try_clone().unwrap();
        f.set_len(size).unwrap();
        f
    }

    fn map_of(regions: Vec<(u64, File, u64, usize)>) -> Mem {
        let regions = regions
            .into_iter()
            .map(|(guest, file, offset, size)| {
                let r = MmapRegion::from_file(FileOffset::new(file, offset), size).unwrap();
                GuestRegionMmap::new(r, GuestAddress(guest)).unwrap()
            })
            .collect();
        Mem::from_regions(regions).unwrap()
    }

    #[test]
    fn regions_inside_their_files_pass() {
        let map = map_of(vec![
            (0, memfd(1 << 20), 0, 1 << 20),
            (1 << 30, memfd(2 << 20), 1 << 20, 1 << 20),
        ]);
        assert_eq!(check_map(&map), Ok(()));
    }

    #[test]
    fn a_region_larger_than_its_file_is_named() {
        // mmap does not look at the file's size: mapping 16 MiB of a 4 MiB
        // memfd succeeds, and only an access past 4 MiB would fault.
        let map = map_of(vec![
            (0, memfd(1 << 20), 0, 1 << 20),
            (1 << 32, memfd(4 << 20), 0, 16 << 20),
        ]);
        let e = check_map(&map).unwrap_err();
        assert_eq!(
            (e.index, e.guest, e.size, e.offset, &e.problem),
            (
                1,
                1 << 32,
                16 << 20,
                0,
                &Problem::PastTheEnd { fd_size: 4 << 20 }
            )
        );
        let text = e.to_string();
        for part in ["region 1", "0x100000000", "0x1000000", "0x400000"] {
            assert!(text.contains(part), "{part} not in {text:?}");
        }
    }

    #[test]
    fn an_offset_past_the_end_is_refused() {
        let map = map_of(vec![(0, memfd(4 << 20), 12 << 30, 1 << 20)]);
        let e = check_map(&map).unwrap_err();
        assert_eq!(e.offset, 12 << 30);
        assert_eq!(e.problem, Problem::PastTheEnd { fd_size: 4 << 20 });
    }

    #[test]
    fn other_kinds_and_overflow_are_refused() {
        let file = memfd(4096);
        let meta = file.metadata().unwrap();
        assert_eq!(check_extent(&meta, u64::MAX, 2), Err(Problem::Overflow));
        assert_eq!(check_extent(&meta, 0, 4096), Ok(()));
        let dir = File::open("/").unwrap().metadata().unwrap();
        assert_eq!(
            check_extent(&dir, 0, 4096),
            Err(Problem::NotAFile(FdKind::Directory))
        );
        let null = File::open("/dev/null").unwrap().metadata().unwrap();
        assert_eq!(
            check_extent(&null, 0, 4096),
            Err(Problem::NotAFile(FdKind::CharDevice))
        );
    }

    #[test]
    fn more_regions_than_the_slots_advertised_are_refused() {
        let regions = |n: u64| {
            Mem::from_ranges(
                &(0..n)
                    .map(|i| (GuestAddress(i * 0x10000), 0x1000))
                    .collect::<Vec<_>>(),
            )
            .unwrap()
        };
        assert_eq!(check_slots(&regions(MAX_MEM_SLOTS as u64)), Ok(()));
        let e = check_slots(&regions(MAX_MEM_SLOTS as u64 + 1)).unwrap_err();
        assert_eq!(e.count, MAX_MEM_SLOTS + 1);
        assert!(e.to_string().contains("more than the 509 slots"), "{e}");
    }
}
