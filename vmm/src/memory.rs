//! Guest RAM: one file (under /dev/shm by default), sized with ftruncate and
//! mapped MAP_SHARED, so vhost-user backends can map the same pages from the
//! fd. Below 4 GiB RAM stops at the device hole; the rest sits above 4 GiB,
//! at the matching offset of the same file.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::{FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

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
    /// Maps `size` bytes from `file` (kept), or from a new file under
    /// `/dev/shm` that is removed as soon as it is mapped.
    pub fn new(size: u64, file: Option<&Path>) -> Result<Self, MemoryError> {
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
        let ram = GuestRam::new(4 << 20, None).unwrap();
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
            let ram = GuestRam::new(2 << 20, Some(&path)).unwrap();
            assert_eq!(ram.size(), 2 << 20);
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 << 20);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn missing_directory_names_the_path() {
        let err = GuestRam::new(2 << 20, Some(Path::new("/nonexistent/dir/mem"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/dir/mem"));
    }
}
