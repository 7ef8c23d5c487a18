//! Guest RAM: one file (under /dev/shm by default, or a hugetlbfs memfd
//! with `hugepages=on`), sized with ftruncate and mapped MAP_SHARED, so
//! vhost-user backends can map the same pages from the fd. Below 4 GiB RAM
//! stops at the device hole; the rest sits above 4 GiB, at the matching
//! offset of the same file (both 1 GiB aligned, so huge pages fit).
//! `prefault=on` allocates every page before the guest runs
//! (MADV_POPULATE_WRITE, or a write per page on kernels before 5.14).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::{FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use crate::cli::MemoryConfig;
use crate::layout;

/// Errors of [`GuestRam`].
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Creating or opening the file.
    #[error("memory file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Sizing the file.
    #[error("sizing memory file {path} to {size} bytes")]
    Truncate {
        path: PathBuf,
        size: u64,
        #[source]
        source: std::io::Error,
    },
    /// Removing the created file.
    #[error("removing memory file {path}")]
    Unlink {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Mapping it.
    #[error("mapping {size} bytes of guest memory")]
    Map {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    /// The hugetlbfs memfd.
    #[error("creating a memfd of {} MiB huge pages", page >> 20)]
    HugeMemfd {
        page: u64,
        #[source]
        source: std::io::Error,
    },
    /// Fewer free huge pages than guest RAM needs.
    #[error(
        "guest RAM needs {needed} huge pages of {} MiB, {free} are free; reserve them with \
         `echo {needed} > /sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages` \
         (sysctl vm.nr_hugepages for 2 MiB pages) or boot with hugepages=",
        page >> 20,
        page >> 10
    )]
    NoHugePages { page: u64, needed: u64, free: u64 },
    /// Prefaulting (`prefault=on`).
    #[error("prefaulting {size} bytes of guest memory")]
    Prefault {
        size: u64,
        #[source]
        source: std::io::Error,
    },
}

/// The guest's RAM and the file behind it.
#[derive(Debug)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    file: File,
    size: u64,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl GuestRam {
    /// Guest RAM as `config` says: [`with_file`](Self::with_file), or huge
    /// pages; then prefaulted if asked.
    pub fn new(config: &MemoryConfig) -> Result<Self, MemoryError> {
        let ram = match config.hugepage_size {
            Some(page) => Self::huge(config.size, page)?,
            None => Self::with_file(config.size, config.file.as_deref())?,
        };
        if config.prefault {
            ram.prefault()?;
        }
        Ok(ram)
    }

    /// `size` bytes of huge pages of `page` bytes from a hugetlbfs memfd
    /// (shareable like any file). Checks first that enough pages are free,
    /// since the mapping would fail with a bare ENOMEM.
    fn huge(size: u64, page: u64) -> Result<Self, MemoryError> {
        let needed = size / page;
        let free = free_huge_pages(page);
        if free < needed {
            return Err(MemoryError::NoHugePages { page, needed, free });
        }
        let flags = libc::MFD_CLOEXEC
            | libc::MFD_HUGETLB
            | if page == 1 << 30 {
                libc::MFD_HUGE_1GB
            } else {
                libc::MFD_HUGE_2MB
            };
        let name = c"vmm-guest-ram";
        // SAFETY: memfd_create reads the NUL-terminated name and returns a
        // new descriptor (or -1), which we own from here.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if fd < 0 {
            return Err(MemoryError::HugeMemfd {
                page,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` is a fresh descriptor nothing else owns.
        let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Self::map(file, Path::new("memfd:vmm-guest-ram (hugetlbfs)"), size)
    }

    /// Allocates every page now (`prefault=on`): MADV_POPULATE_WRITE on
    /// each region, or a volatile write per 4 KiB page where the kernel
    /// lacks it (before 5.14).
    fn prefault(&self) -> Result<(), MemoryError> {
        for (_, len, host) in self.regions() {
            // SAFETY: [host, host + len) is a live shared mapping owned by
            // `self.memory`; MADV_POPULATE_WRITE only faults its pages in.
            let r = unsafe {
                libc::madvise(
                    host as *mut libc::c_void,
                    len as usize,
                    libc::MADV_POPULATE_WRITE,
                )
            };
            if r == 0 {
                continue;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(MemoryError::Prefault {
                    size: self.size,
                    source: e,
                });
            }
            for offset in (0..len).step_by(4096) {
                let p = (host + offset) as *mut u8;
                // SAFETY: `p` lies inside the live mapping above; reading
                // and writing back one byte before the guest runs changes
                // nothing but allocates the page.
                unsafe { p.write_volatile(p.read_volatile()) };
            }
        }
        Ok(())
    }

    /// Maps `size` bytes from `file` (kept), or from a new file under
    /// `/dev/shm` that is removed as soon as it is mapped.
    pub fn with_file(size: u64, file: Option<&Path>) -> Result<Self, MemoryError> {
        let (file, path, created) = match file {
            Some(path) => (open(path, false)?, path.to_path_buf(), false),
            None => {
                let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                let path = PathBuf::from(format!("/dev/shm/vmm-mem-{}-{n}", std::process::id()));
                (open(&path, true)?, path, true)
            }
        };
        let result = Self::map(file, &path, size);
        if created {
            std::fs::remove_file(&path).map_err(|source| MemoryError::Unlink {
                path: path.clone(),
                source,
            })?;
        }
        result
    }

    fn map(file: File, path: &Path, size: u64) -> Result<Self, MemoryError> {
        file.set_len(size).map_err(|source| MemoryError::Truncate {
            path: path.to_path_buf(),
            size,
            source,
        })?;
        let mut ranges = Vec::new();
        for (addr, len, offset) in layout::ram_regions(size) {
            let fd = file.try_clone().map_err(|source| MemoryError::Open {
                path: path.to_path_buf(),
                source,
            })?;
            ranges.push((addr, len as usize, Some(FileOffset::new(fd, offset))));
        }
        let memory = GuestMemoryMmap::from_ranges_with_files(ranges)
            .map_err(|source| MemoryError::Map { size, source })?;
        Ok(GuestRam { memory, file, size })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The file behind guest RAM (for SET_MEM_TABLE).
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Each region as (guest address, size, host address).
    pub fn regions(&self) -> Vec<(GuestAddress, u64, u64)> {
        self.memory
            .iter()
            .map(|r| (r.start_addr(), r.len(), r.as_ptr() as u64))
            .collect()
    }
}

/// Free huge pages of `page` bytes (0 when the size is not supported).
pub fn free_huge_pages(page: u64) -> u64 {
    std::fs::read_to_string(format!(
        "/sys/kernel/mm/hugepages/hugepages-{}kB/free_hugepages",
        page >> 10
    ))
    .ok()
    .and_then(|s| s.trim().parse().ok())
    .unwrap_or(0)
}

fn open(path: &Path, exclusive: bool) -> Result<File, MemoryError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).mode(0o600);
    if exclusive {
        options.create_new(true);
    }
    options.open(path).map_err(|source| MemoryError::Open {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn created_file_is_gone_and_memory_is_shared() {
        let ram = GuestRam::with_file(4 << 20, None).unwrap();
        let prefix = format!("vmm-mem-{}-", std::process::id());
        let leftovers = std::fs::read_dir("/dev/shm")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .count();
        assert_eq!(leftovers, 0);
        ram.memory()
            .write_obj(0x1234_5678u32, GuestAddress(0x1000))
            .unwrap();
        // The write is visible through the file: the mapping is shared.
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(ram.file(), &mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x1234_5678);
        assert_eq!(ram.regions().len(), 1);
    }

    #[test]
    fn given_file_is_kept_and_sized() {
        let path = std::env::temp_dir().join(format!("vmm-mem-test-{}", std::process::id()));
        {
            let ram = GuestRam::with_file(2 << 20, Some(&path)).unwrap();
            assert_eq!(ram.size(), 2 << 20);
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 << 20);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn missing_directory_names_the_path() {
        let err =
            GuestRam::with_file(2 << 20, Some(Path::new("/nonexistent/dir/mem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dir/mem"));
    }

    #[test]
    fn prefault_allocates_every_page_before_the_guest_runs() {
        use std::os::unix::fs::MetadataExt;
        let config = |prefault| MemoryConfig {
            size: 8 << 20,
            prefault,
            ..MemoryConfig::default()
        };
        let lazy = GuestRam::new(&config(false)).unwrap();
        assert_eq!(lazy.file().metadata().unwrap().blocks(), 0);
        let eager = GuestRam::new(&config(true)).unwrap();
        assert_eq!(eager.file().metadata().unwrap().blocks() * 512, 8 << 20);
    }

    #[test]
    fn too_few_free_huge_pages_is_one_clear_error() {
        let page = 2 << 20;
        let needed = free_huge_pages(page) + 1;
        let config = MemoryConfig {
            size: needed * page,
            hugepage_size: Some(page),
            ..MemoryConfig::default()
        };
        let e = GuestRam::new(&config).unwrap_err().to_string();
        assert!(
            e.contains(&format!("needs {needed} huge pages of 2 MiB")),
            "{e}"
        );
        assert!(
            e.contains("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"),
            "{e}"
        );
    }
}
