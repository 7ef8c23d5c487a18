//! "Guest" memory for the userspace driver: one shared mapping (a memfd or a
//! file under `/dev/shm`) that is handed to the backend with SET_MEM_TABLE,
//! plus a bump allocator for rings and buffers.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Address, ByteValued, Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap,
    GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

/// Errors of the driver's guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// memfd_create failed.
    #[error("memfd_create")]
    Memfd(#[source] std::io::Error),
    /// Creating the backing file failed.
    #[error("creating memory file {0}")]
    CreateFile(PathBuf, #[source] std::io::Error),
    /// Sizing the backing file failed.
    #[error("sizing memory file to {0} bytes")]
    Truncate(u64, #[source] std::io::Error),
    /// mmap of the backing file failed.
    #[error("mapping {0} bytes of guest memory")]
    Mmap(u64, #[source] vm_memory::mmap::MmapRegionError),
    /// The allocator has no room left.
    #[error("guest memory exhausted: {requested} bytes requested, {free} free")]
    Exhausted {
        /// Bytes asked for.
        requested: u64,
        /// Bytes left.
        free: u64,
    },
    /// An access fell outside guest memory.
    #[error("guest memory access at {addr:#x} (+{len})")]
    Access {
        /// Guest physical address.
        addr: u64,
        /// Length of the access.
        len: usize,
        /// What vm-memory said.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, MemoryError>;

/// Name of the memfd behind [`Backing::Memfd`]; a backend's mappings of it
/// show in its `/proc/PID/maps` as `/memfd:vu-driver-guest-ram (deleted)`.
pub const GUEST_RAM_MEMFD_NAME: &str = "vu-driver-guest-ram";

/// Where the memory lives.
#[derive(Debug, Clone, Default)]
pub enum Backing {
    /// An anonymous memfd (the default).
    #[default]
    Memfd,
    /// A file created in this directory (for example `/dev/shm`), removed on drop.
    FileIn(PathBuf),
}

/// Shared "guest" memory starting at guest physical address 0.
pub struct GuestMem {
    mem: GuestMemoryMmap<()>,
    size: u64,
    next: Mutex<u64>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for GuestMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestMem")
            .field("size", &self.size)
            .field("path", &self.path)
            .finish()
    }
}

fn memfd(name: &str) -> Result<File> {
    let cname = CString::new(name).expect("memfd name has no NUL");
    // SAFETY: cname is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

impl GuestMem {
    /// Creates `size` bytes of shared memory.
    pub fn new(size: u64, backing: &Backing) -> Result<Arc<Self>> {
        let (file, path) = match backing {
            Backing::Memfd => (memfd(GUEST_RAM_MEMFD_NAME)?, None),
            Backing::FileIn(dir) => {
                let path = unique_path(dir);
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| MemoryError::CreateFile(path.clone(), e))?;
                (file, Some(path))
            }
        };
        file.set_len(size)
            .map_err(|e| MemoryError::Truncate(size, e))?;
        let region = MmapRegion::<()>::from_file(FileOffset::new(file, 0), size as usize)
            .map_err(|e| MemoryError::Mmap(size, e))?;
        let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("region at 0 fits");
        let mem = GuestMemoryMmap::from_regions(vec![region]).expect("one region is valid");
        Ok(Arc::new(GuestMem {
            mem,
            size,
            // Leave the first page unused so that address 0 is never a valid buffer.
            next: Mutex::new(4096),
            path,
        }))
    }

    /// Total size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The vm-memory view, for callers that want `Bytes` methods.
    pub fn mem(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// Allocates `len` bytes aligned to `align` (a power of two).
    pub fn alloc(&self, len: u64, align: u64) -> Result<GuestAddress> {
        let mut next = self.next.lock().expect("allocator lock");
        let start = (*next + align - 1) & !(align - 1);
        let end = start.saturating_add(len);
        if end > self.size {
            return Err(MemoryError::Exhausted {
                requested: len,
                free: self.size.saturating_sub(*next),
            });
        }
        *next = end;
        Ok(GuestAddress(start))
    }

    /// The current allocation mark; pass it to [`GuestMem::release_to`] to
    /// free everything allocated after it.
    pub fn mark(&self) -> u64 {
        *self.next.lock().expect("allocator lock")
    }

    /// Frees every allocation made after `mark`.
    pub fn release_to(&self, mark: u64) {
        let mut next = self.next.lock().expect("allocator lock");
        if mark < *next {
            *next = mark;
        }
    }

    /// The address of `addr` in this process, as vhost-user wants for vring addresses.
    pub fn host_addr(&self, addr: GuestAddress) -> Result<u64> {
        self.mem
            .get_host_address(addr)
            .map(|p| p as u64)
            .map_err(|source| MemoryError::Access {
                addr: addr.raw_value(),
                len: 0,
                source,
            })
    }

    /// The SET_MEM_TABLE entries describing this memory.
    pub fn regions(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.mem
            .iter()
            .map(|r| {
                let fo = r.file_offset().expect("file-backed region");
                VhostUserMemoryRegionInfo {
                    guest_phys_addr: r.start_addr().raw_value(),
                    memory_size: r.len(),
                    userspace_addr: r.as_ptr() as u64,
                    mmap_offset: fo.start(),
                    mmap_handle: fo.file().as_raw_fd(),
                }
            })
            .collect()
    }

    /// Copies `data` to guest memory.
    pub fn write(&self, addr: GuestAddress, data: &[u8]) -> Result<()> {
        self.mem
            .write_slice(data, addr)
            .map_err(|source| MemoryError::Access {
                addr: addr.raw_value(),
                len: data.len(),
                source,
            })
    }

    /// Copies guest memory into `buf`.
    pub fn read(&self, addr: GuestAddress, buf: &mut [u8]) -> Result<()> {
        self.mem
            .read_slice(buf, addr)
            .map_err(|source| MemoryError::Access {
                addr: addr.raw_value(),
                len: buf.len(),
                source,
            })
    }

    /// Reads `len` bytes into a new vector.
    pub fn read_vec(&self, addr: GuestAddress, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read(addr, &mut v)?;
        Ok(v)
    }

    /// Writes a plain-data object.
    pub fn write_obj<T: ByteValued>(&self, addr: GuestAddress, val: T) -> Result<()> {
        self.write(addr, val.as_slice())
    }

    /// Reads a plain-data object.
    pub fn read_obj<T: ByteValued + Default>(&self, addr: GuestAddress) -> Result<T> {
        let mut val = T::default();
        self.read(addr, val.as_mut_slice())?;
        Ok(val)
    }

    /// Atomic store of a u16 (ring indices).
    pub fn store_u16(&self, addr: GuestAddress, val: u16, order: Ordering) -> Result<()> {
        self.mem
            .store(val, addr, order)
            .map_err(|source| MemoryError::Access {
                addr: addr.raw_value(),
                len: 2,
                source,
            })
    }

    /// Atomic load of a u16 (ring indices).
    pub fn load_u16(&self, addr: GuestAddress, order: Ordering) -> Result<u16> {
        self.mem
            .load(addr, order)
            .map_err(|source| MemoryError::Access {
                addr: addr.raw_value(),
                len: 2,
                source,
            })
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn unique_path(dir: &Path) -> PathBuf {
    use std::sync::atomic::AtomicU32;
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("vu-driver-{}-{}.ram", std::process::id(), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_aligns_and_exhausts() {
        let m = GuestMem::new(1 << 20, &Backing::Memfd).unwrap();
        let a = m.alloc(10, 4096).unwrap();
        assert_eq!(a.raw_value() % 4096, 0);
        assert!(a.raw_value() >= 4096, "page 0 stays unused");
        let b = m.alloc(3, 16).unwrap();
        assert_eq!(b.raw_value(), a.raw_value() + 16);
        let mark = m.mark();
        assert!(matches!(
            m.alloc(2 << 20, 8),
            Err(MemoryError::Exhausted { .. })
        ));
        let c = m.alloc(100, 8).unwrap();
        m.release_to(mark);
        assert_eq!(m.alloc(100, 8).unwrap(), c);
    }

    #[test]
    fn file_backing_round_trips_and_is_removed() {
        let dir = std::env::temp_dir();
        let m = GuestMem::new(1 << 16, &Backing::FileIn(dir)).unwrap();
        let path = m.path.clone().unwrap();
        assert!(path.exists());
        m.write(GuestAddress(8192), b"hello").unwrap();
        assert_eq!(m.read_vec(GuestAddress(8192), 5).unwrap(), b"hello");
        // The file holds the same bytes: it is what the backend maps.
        let data = std::fs::read(&path).unwrap();
        assert_eq!(&data[8192..8197], b"hello");
        assert_eq!(m.regions().len(), 1);
        assert_eq!(m.regions()[0].memory_size, 1 << 16);
        drop(m);
        assert!(!path.exists());
    }

    #[test]
    fn out_of_range_access_is_an_error() {
        let m = GuestMem::new(1 << 16, &Backing::Memfd).unwrap();
        assert!(m.write(GuestAddress(1 << 16), b"x").is_err());
    }
}
