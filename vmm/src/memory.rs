//! Guest RAM: a file per zone (`--memory-zone`, or one zone of `--memory`;
//! under /dev/shm by default, `file=`, or a hugetlbfs memfd with
//! `hugepages=on`), sized with ftruncate and mapped MAP_SHARED, so
//! vhost-user backends can map the same pages from each fd (every region
//! goes out in SET_MEM_TABLE with its own file and offset). Zones follow
//! each other from address 0; below 4 GiB RAM stops at the device hole and
//! goes on at 4 GiB, at the matching offset of the same zone's file
//! ([`layout::zone_regions`]).
//! `prefault=on` allocates every page before the guest runs
//! (MADV_POPULATE_WRITE, or a write per page on kernels before 5.14).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use vm_memory::mmap::{FromRangesError, MmapRegionBuilder};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

use crate::cli::{MemoryConfig, MemoryZoneConfig, HUGEPAGE_SIZES};
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
    /// Fewer free huge pages than the zones with `hugepages=on` need
    /// together (`total` is the pool's size now).
    #[error(
        "hugepages=on ({zones}): guest RAM needs {needed} huge pages of {} MiB, {free} are \
         free; reserve them with `echo {} > /sys/kernel/mm/hugepages/hugepages-{}kB/nr_hugepages` \
         (sysctl vm.nr_hugepages for 2 MiB pages) or boot with hugepages=",
        page >> 20,
        total + needed - free,
        page >> 10
    )]
    NoHugePages {
        zones: String,
        page: u64,
        needed: u64,
        free: u64,
        total: u64,
    },
    /// Binding a zone to its host node (`host_numa_node=`).
    #[error("memory zone {zone}: host_numa_node={node}: mbind(MPOL_BIND)")]
    Bind {
        zone: String,
        node: u32,
        #[source]
        source: std::io::Error,
    },
    /// Prefaulting (`prefault=on`).
    #[error("prefaulting {size} bytes of guest memory")]
    Prefault {
        size: u64,
        #[source]
        source: std::io::Error,
    },
}

/// The guest's RAM and the files behind it, one per zone.
#[derive(Debug)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    zones: Vec<ZoneFile>,
    size: u64,
}

/// One zone's file.
#[derive(Debug)]
struct ZoneFile {
    id: String,
    file: File,
    /// On hugetlbfs (`hugepages=on`).
    huge: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl GuestRam {
    /// Guest RAM as `config` says: its zones (or one zone of `--memory`),
    /// each in its own file ([`with_file`](Self::with_file)'s, or huge
    /// pages), one after the other in guest RAM
    /// ([`layout::zone_regions`]); then prefaulted where asked.
    pub fn new(config: &MemoryConfig) -> Result<Self, MemoryError> {
        let zones = config.zones();
        check_huge_pages(&zones)?;
        let mut files = Vec::with_capacity(zones.len());
        for z in &zones {
            let (file, path) = match z.hugepage_size {
                Some(page) => huge_file(&z.id, page)?,
                None => shm_file(&z.id, z.file.as_deref())?,
            };
            size_file(&file, &path, z.size)?;
            files.push((
                ZoneFile {
                    id: z.id.clone(),
                    file,
                    huge: z.hugepage_size.is_some(),
                },
                path,
            ));
        }
        let sizes: Vec<u64> = zones.iter().map(|z| z.size).collect();
        let ram = Self::map(files, &sizes)?;
        // Bound before any page is allocated (prefault, the guest), so
        // every page of the zone comes from its node.
        for (region, (_, len, host)) in layout::zone_regions(&sizes).iter().zip(ram.regions()) {
            let z = &zones[region.zone];
            if let Some(node) = z.host_numa_node {
                bind(host, len, node).map_err(|source| MemoryError::Bind {
                    zone: z.id.clone(),
                    node,
                    source,
                })?;
            }
            if z.prefault {
                prefault(host, len, z.hugepage_size.unwrap_or(4096))?;
            }
        }
        Ok(ram)
    }

    /// `size` bytes in one zone from `file` (kept), or from a new file
    /// under `/dev/shm` that is removed as soon as it is open.
    pub fn with_file(size: u64, file: Option<&Path>) -> Result<Self, MemoryError> {
        let (f, path) = shm_file("mem0", file)?;
        size_file(&f, &path, size)?;
        let zone = ZoneFile {
            id: "mem0".into(),
            file: f,
            huge: false,
        };
        Self::map(vec![(zone, path)], &[size])
    }

    /// Maps each zone's regions from its file, MAP_SHARED. A zone on huge
    /// pages is mapped without MAP_NORESERVE (vm-memory's default), so the
    /// mapping reserves its pages in the host's pool (HugePages_Rsvd), as
    /// QEMU's `-mem-path` does: a page the guest touches later is there,
    /// where with MAP_NORESERVE an emptied pool would be a SIGBUS.
    fn map(zones: Vec<(ZoneFile, PathBuf)>, sizes: &[u64]) -> Result<Self, MemoryError> {
        let size = sizes.iter().sum();
        let map_err = |source| MemoryError::Map { size, source };
        let mut regions = Vec::new();
        for r in layout::zone_regions(sizes) {
            let (zone, path) = &zones[r.zone];
            let fd = zone.file.try_clone().map_err(|source| MemoryError::Open {
                path: path.clone(),
                source,
            })?;
            let flags = if zone.huge {
                libc::MAP_SHARED
            } else {
                libc::MAP_SHARED | libc::MAP_NORESERVE
            };
            let mapping = MmapRegionBuilder::new(r.size as usize)
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(flags)
                .with_file_offset(FileOffset::new(fd, r.offset))
                .with_hugetlbfs(zone.huge)
                .build()
                .map_err(|e| map_err(e.into()))?;
            regions.push(
                GuestRegionMmap::new(mapping, r.addr)
                    .ok_or_else(|| map_err(FromRangesError::InvalidGuestRegion))?,
            );
        }
        let memory = GuestMemoryMmap::from_regions(regions).map_err(|e| map_err(e.into()))?;
        Ok(GuestRam {
            memory,
            zones: zones.into_iter().map(|(z, _)| z).collect(),
            size,
        })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The file behind the first zone (all of guest RAM without zones).
    pub fn file(&self) -> &File {
        &self.zones[0].file
    }

    /// Each zone's id and file, in guest RAM's order.
    pub fn zone_files(&self) -> impl Iterator<Item = (&str, &File)> {
        self.zones.iter().map(|z| (z.id.as_str(), &z.file))
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

/// `id` with only letters, digits, `-` and `_` (for a file name).
fn file_safe(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Checks that the pool of each huge page size has free pages for all
/// the zones that take theirs from it (with `hugepages=on`), since
/// mapping them would fail with a bare ENOMEM. The zones are summed: each
/// zone's mapping reserves its pages, so a check per zone would pass every
/// one and the second mapping would still fail.
fn check_huge_pages(zones: &[MemoryZoneConfig]) -> Result<(), MemoryError> {
    for page in HUGEPAGE_SIZES {
        let on: Vec<&MemoryZoneConfig> = zones
            .iter()
            .filter(|z| z.hugepage_size == Some(page))
            .collect();
        let needed: u64 = on.iter().map(|z| z.size / page).sum();
        if needed == 0 {
            continue;
        }
        let free = huge_pages(page, "free_hugepages");
        if free < needed {
            let ids: Vec<&str> = on.iter().map(|z| z.id.as_str()).collect();
            return Err(MemoryError::NoHugePages {
                zones: format!("zone {}", ids.join(", ")),
                page,
                needed,
                free,
                total: huge_pages(page, "nr_hugepages"),
            });
        }
    }
    Ok(())
}

/// A hugetlbfs memfd of `page`-byte pages for zone `id` (shareable like
/// any file); [`check_huge_pages`] has checked the pool.
fn huge_file(id: &str, page: u64) -> Result<(File, PathBuf), MemoryError> {
    let flags = libc::MFD_CLOEXEC
        | libc::MFD_HUGETLB
        | if page == 1 << 30 {
            libc::MFD_HUGE_1GB
        } else {
            libc::MFD_HUGE_2MB
        };
    let name = format!("vmm-guest-ram-{}", file_safe(id));
    let cname = std::ffi::CString::new(name.clone()).unwrap_or_default();
    // SAFETY: memfd_create reads the NUL-terminated name and returns a
    // new descriptor (or -1), which we own from here.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::HugeMemfd {
            page,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok((file, PathBuf::from(format!("memfd:{name} (hugetlbfs)"))))
}

/// `file` (kept), or a new file `/dev/shm/vmm-mem-PID-N-ID` for zone
/// `id`, removed at once (the descriptor keeps it).
fn shm_file(id: &str, file: Option<&Path>) -> Result<(File, PathBuf), MemoryError> {
    match file {
        Some(path) => Ok((open(path, false)?, path.to_path_buf())),
        None => {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = PathBuf::from(format!(
                "/dev/shm/vmm-mem-{}-{n}-{}",
                std::process::id(),
                file_safe(id)
            ));
            let file = open(&path, true)?;
            std::fs::remove_file(&path).map_err(|source| MemoryError::Unlink {
                path: path.clone(),
                source,
            })?;
            Ok((file, path))
        }
    }
}

fn size_file(file: &File, path: &Path, size: u64) -> Result<(), MemoryError> {
    file.set_len(size).map_err(|source| MemoryError::Truncate {
        path: path.to_path_buf(),
        size,
        source,
    })
}

/// Binds the pages of the mapping [host, host + len) to host NUMA node
/// `node`: mbind(MPOL_BIND). On a shared (shmem or hugetlbfs) mapping the
/// policy belongs to the file's pages, so the daemons' mappings get them
/// from the node too. (nix has no mbind.)
fn bind(host: u64, len: u64, node: u32) -> std::io::Result<()> {
    const BITS: usize = libc::c_ulong::BITS as usize;
    let node = node as usize;
    let mut mask = vec![0 as libc::c_ulong; node / BITS + 1];
    mask[node / BITS] |= 1 << (node % BITS);
    // The kernel reads `maxnode - 1` bits of the mask (libnuma passes one
    // more than its size too).
    let maxnode = mask.len() * BITS + 1;
    // SAFETY: [host, host + len) is a live mapping of guest RAM that only
    // gets a memory policy; the mask lives across the call and holds
    // `maxnode - 1` bits.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            host as *mut libc::c_void,
            len as libc::c_ulong,
            libc::MPOL_BIND as libc::c_ulong,
            mask.as_ptr(),
            maxnode as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The least a prefault thread is given, so small guests use one.
const PREFAULT_CHUNK_MIN: u64 = 64 << 20;
/// The most threads a region is prefaulted with (Cloud Hypervisor's cap).
const PREFAULT_THREADS_MAX: usize = 16;

/// Allocates every page of the mapping [host, host + len) of `page`-byte
/// pages now (`prefault=on`), in parallel: one thread per CPU this
/// process may run on (at most [`PREFAULT_THREADS_MAX`], each with at
/// least [`PREFAULT_CHUNK_MIN`]), each populating its page-aligned share,
/// since zeroing the pages is most of a large guest's start.
fn prefault(host: u64, len: u64, page: u64) -> Result<(), MemoryError> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cpus
        .min(PREFAULT_THREADS_MAX)
        .min((len / PREFAULT_CHUNK_MIN).max(1) as usize);
    if threads == 1 {
        return populate(host, len);
    }
    let chunk = (len / threads as u64).next_multiple_of(page);
    let failed = |source| MemoryError::Prefault { size: len, source };
    std::thread::scope(|scope| {
        let mut workers = Vec::with_capacity(threads);
        for (i, offset) in (0..len).step_by(chunk as usize).enumerate() {
            let size = chunk.min(len - offset);
            let worker = std::thread::Builder::new()
                .name(format!("prefault-{i}"))
                .spawn_scoped(scope, move || populate(host + offset, size))
                .map_err(failed)?;
            workers.push(worker);
        }
        for worker in workers {
            worker.join().unwrap_or_else(|_| {
                Err(failed(std::io::Error::other("a prefault thread panicked")))
            })?;
        }
        Ok(())
    })
}

/// Allocates every page of [host, host + len): MADV_POPULATE_WRITE, or a
/// volatile write per 4 KiB page where the kernel lacks it (before 5.14).
fn populate(host: u64, len: u64) -> Result<(), MemoryError> {
    // SAFETY: [host, host + len) is a live shared mapping of guest RAM;
    // MADV_POPULATE_WRITE only faults its pages in.
    let r = unsafe {
        libc::madvise(
            host as *mut libc::c_void,
            len as usize,
            libc::MADV_POPULATE_WRITE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(MemoryError::Prefault {
            size: len,
            source: e,
        });
    }
    for offset in (0..len).step_by(4096) {
        let p = (host + offset) as *mut u8;
        // SAFETY: `p` lies inside the live mapping above; reading and
        // writing back one byte before the guest runs changes nothing but
        // allocates the page.
        unsafe { p.write_volatile(p.read_volatile()) };
    }
    Ok(())
}

/// Free huge pages of `page` bytes (0 when the size is not supported).
pub fn free_huge_pages(page: u64) -> u64 {
    huge_pages(page, "free_hugepages")
}

/// The pool of `page`-byte huge pages' count `what` (`free_hugepages`,
/// `nr_hugepages`) in sysfs; 0 when the size is not supported.
fn huge_pages(page: u64, what: &str) -> u64 {
    std::fs::read_to_string(format!(
        "/sys/kernel/mm/hugepages/hugepages-{}kB/{what}",
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
        // Large enough for a thread per CPU (up to 4 here): every share
        // is populated, the last too.
        let big = 4 * PREFAULT_CHUNK_MIN + (1 << 20);
        let ram = GuestRam::new(&MemoryConfig {
            size: big,
            prefault: true,
            ..MemoryConfig::default()
        })
        .unwrap();
        assert_eq!(ram.file().metadata().unwrap().blocks() * 512, big);
    }

    #[test]
    fn too_few_free_huge_pages_is_one_clear_error() {
        let page = 2 << 20;
        let (free, total) = (free_huge_pages(page), huge_pages(page, "nr_hugepages"));
        let needed = free + 1;
        let config = MemoryConfig {
            size: needed * page,
            hugepage_size: Some(page),
            ..MemoryConfig::default()
        };
        let e = GuestRam::new(&config).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "hugepages=on (zone mem0): guest RAM needs {needed} huge pages of 2 MiB"
            )),
            "{e}"
        );
        assert!(
            e.contains(&format!(
                "`echo {} > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages`",
                total + 1
            )),
            "{e}"
        );
        // Zones on huge pages are counted together: a page each more than
        // is free between them.
        let zone = |id: &str, pages: u64| MemoryZoneConfig {
            id: id.into(),
            size: pages * page,
            hugepage_size: Some(page),
            ..MemoryZoneConfig::default()
        };
        let config = MemoryConfig {
            size: (free + 3) * page,
            zones: vec![
                zone("a", free + 1),
                MemoryZoneConfig {
                    hugepage_size: None,
                    ..zone("plain", 1)
                },
                zone("b", 1),
            ],
            ..MemoryConfig::default()
        };
        let e = GuestRam::new(&config).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "hugepages=on (zone a, b): guest RAM needs {} huge pages",
                free + 2
            )),
            "{e}"
        );
    }

    #[test]
    fn each_zone_is_its_own_shared_file_after_the_one_before() {
        let zone = |id: &str, size| MemoryZoneConfig {
            id: id.into(),
            size,
            ..MemoryZoneConfig::default()
        };
        let config = MemoryConfig {
            size: 6 << 20,
            zones: vec![zone("mem0", 2 << 20), zone("mem/1", 4 << 20)],
            ..MemoryConfig::default()
        };
        let ram = GuestRam::new(&config).unwrap();
        assert_eq!(ram.size(), 6 << 20);
        let regions = ram.regions();
        let placed: Vec<_> = regions.iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(
            placed,
            [(GuestAddress(0), 2 << 20), (GuestAddress(2 << 20), 4 << 20)]
        );
        // A write at 3 MiB lands 1 MiB into the second zone's file.
        ram.memory()
            .write_obj(0xfeed_f00du32, GuestAddress(3 << 20))
            .unwrap();
        let files: Vec<_> = ram.zone_files().collect();
        assert_eq!(files.len(), 2);
        assert_eq!(files[1].0, "mem/1");
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(files[1].1, &mut buf, 1 << 20).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xfeed_f00d);
        assert_eq!(files[0].1.metadata().unwrap().len(), 2 << 20);
        assert_eq!(files[1].1.metadata().unwrap().len(), 4 << 20);
        // Each region is sent with its own file (SET_MEM_TABLE's table).
        let table = devices::vhost_user::MemoryTable::from_guest_memory(ram.memory()).unwrap();
        let inodes: Vec<u64> = table
            .regions()
            .iter()
            .map(|r| std::os::unix::fs::MetadataExt::ino(&r.file.metadata().unwrap()))
            .collect();
        assert_eq!(inodes.len(), 2);
        assert_ne!(inodes[0], inodes[1]);
        assert_eq!(table.regions()[1].file_offset, 0);
    }

    /// `/proc/self/numa_maps`' policy of the mapping at `host` (`bind:0`).
    fn policy_at(host: u64) -> Option<String> {
        let maps = std::fs::read_to_string("/proc/self/numa_maps").ok()?;
        maps.lines().find_map(|l| {
            let mut words = l.split_whitespace();
            let addr = u64::from_str_radix(words.next()?, 16).ok()?;
            (addr == host).then(|| words.next().unwrap_or_default().to_string())
        })
    }

    #[test]
    fn a_zone_with_a_host_node_is_bound_to_it() {
        if !Path::new("/proc/self/numa_maps").exists() {
            return; // a kernel without NUMA: nothing to bind
        }
        let config = MemoryConfig {
            size: 4 << 20,
            zones: vec![
                MemoryZoneConfig {
                    id: "near".into(),
                    size: 2 << 20,
                    host_numa_node: Some(0),
                    prefault: true,
                    ..MemoryZoneConfig::default()
                },
                MemoryZoneConfig {
                    id: "any".into(),
                    size: 2 << 20,
                    ..MemoryZoneConfig::default()
                },
            ],
            ..MemoryConfig::default()
        };
        let ram = GuestRam::new(&config).unwrap();
        let regions = ram.regions();
        assert_eq!(policy_at(regions[0].2).as_deref(), Some("bind:0"));
        assert_eq!(policy_at(regions[1].2).as_deref(), Some("default"));
        // A node the host lacks: mbind refuses, the error names the zone.
        let mut far = config.clone();
        far.zones[0].host_numa_node = Some(1000);
        let e = crate::error_chain(&GuestRam::new(&far).unwrap_err());
        assert!(
            e.starts_with("memory zone near: host_numa_node=1000: mbind(MPOL_BIND): "),
            "{e}"
        );
    }
}
