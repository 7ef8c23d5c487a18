//! The guest memory description sent with SET_MEM_TABLE.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use super::VhostUserError;

/// Most regions one SET_MEM_TABLE carries (one fd each).
pub const MAX_MEM_REGIONS: usize = 8;

/// One guest memory region the backend maps.
#[derive(Clone, Debug)]
pub struct MemoryRegionInfo {
    /// Guest-physical address of the first byte.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where the VMM mapped it (the frontend's userspace address; vring
    /// addresses are sent in this space).
    pub host_addr: u64,
    /// The file backing it (a /dev/shm file or a memfd).
    pub file: Arc<File>,
    /// Offset of the region in `file`.
    pub file_offset: u64,
}

/// All of guest memory, as the VMM mapped it.
#[derive(Clone, Debug, Default)]
pub struct MemoryTable {
    regions: Vec<MemoryRegionInfo>,
    /// The guest memory itself, when the table was made from it: what a
    /// reconnect reads each ring's used index from.
    guest: Option<GuestMemoryMmap>,
}

impl MemoryTable {
    /// A table of `regions`, which must not overlap.
    pub fn new(regions: Vec<MemoryRegionInfo>) -> Result<Self, VhostUserError> {
        if regions.is_empty() || regions.len() > MAX_MEM_REGIONS {
            return Err(VhostUserError::MemoryRegionCount(regions.len()));
        }
        Ok(Self {
            regions,
            guest: None,
        })
    }

    /// The table of a file-backed `GuestMemoryMmap`: every region must have
    /// a file offset (the VMM maps its /dev/shm file).
    pub fn from_guest_memory(mem: &GuestMemoryMmap) -> Result<Self, VhostUserError> {
        let regions = mem
            .iter()
            .map(|r| {
                let fo = r
                    .file_offset()
                    .ok_or(VhostUserError::MemoryNotShared(r.start_addr().raw_value()))?;
                Ok(MemoryRegionInfo {
                    guest_addr: r.start_addr().raw_value(),
                    size: r.len(),
                    host_addr: r.as_ptr() as u64,
                    file: fo.arc().clone(),
                    file_offset: fo.start(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut table = Self::new(regions)?;
        table.guest = Some(mem.clone());
        Ok(table)
    }

    /// The little-endian u16 at guest-physical `gpa` (a ring's index), when
    /// the table was made from guest memory and `gpa` lies in it.
    pub fn read_u16(&self, gpa: u64) -> Option<u16> {
        let v: u16 = self.guest.as_ref()?.read_obj(GuestAddress(gpa)).ok()?;
        Some(u16::from_le(v))
    }

    /// The regions.
    pub fn regions(&self) -> &[MemoryRegionInfo] {
        &self.regions
    }

    /// The frontend's userspace address of `len` bytes at guest-physical
    /// `gpa`, when they lie inside one region.
    pub fn translate(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = gpa.checked_add(len)?;
        self.regions
            .iter()
            .find(|r| gpa >= r.guest_addr && end <= r.guest_addr.saturating_add(r.size))
            .map(|r| r.host_addr + (gpa - r.guest_addr))
    }

    /// The SET_MEM_TABLE payload. The fds borrow `self`'s files.
    pub(crate) fn to_vhost(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.regions
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.guest_addr,
                memory_size: r.size,
                userspace_addr: r.host_addr,
                mmap_offset: r.file_offset,
                mmap_handle: r.file.as_raw_fd(),
            })
            .collect()
    }
}
