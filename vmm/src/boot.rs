//! Loading the kernel, command line and initramfs with `linux-loader`, and
//! the boot parameters: PVH (`hvm_start_info` + memmap) for an ELF with a
//! PVH note, the 64-bit Linux boot protocol (zero page + e820) otherwise.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{
    Address, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, ReadVolatile,
};

use crate::layout;

/// Boot protocol 2.12 (xloadflags) and 2.06 (cmdline_size).
const PROTOCOL_2_12: u16 = 0x020c;
const PROTOCOL_2_06: u16 = 0x0206;
/// `xloadflags`: the kernel has the 64-bit entry point at +0x200.
const XLF_KERNEL_64: u16 = 1;

/// What a bzImage's setup header says against how we boot it.
#[derive(Debug, PartialEq, Eq)]
enum HeaderProblem {
    Not64Bit,
    CmdlineTooLong { len: usize, max: u32 },
}

impl HeaderProblem {
    fn at(self, path: &std::path::Path) -> BootError {
        let path = path.to_path_buf();
        match self {
            HeaderProblem::Not64Bit => BootError::Not64Bit { path },
            HeaderProblem::CmdlineTooLong { len, max } => {
                BootError::CmdlineTooLong { path, len, max }
            }
        }
    }
}

/// We enter a bzImage at its 64-bit entry point, and the kernel keeps at
/// most `cmdline_size` bytes of the command line (silently dropping the
/// rest): both are checked, not assumed.
fn check_bzimage(hdr: &setup_header, cmdline_len: usize) -> Result<(), HeaderProblem> {
    let (version, xloadflags, max) = (hdr.version, hdr.xloadflags, hdr.cmdline_size);
    if version < PROTOCOL_2_12 || xloadflags & XLF_KERNEL_64 == 0 {
        return Err(HeaderProblem::Not64Bit);
    }
    // Before 2.06 the limit is 255 bytes.
    let max = if version >= PROTOCOL_2_06 { max } else { 255 };
    if cmdline_len > max as usize {
        return Err(HeaderProblem::CmdlineTooLong {
            len: cmdline_len,
            max,
        });
    }
    Ok(())
}

/// Errors of [`load`].
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path}")]
    OpenKernel {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path}: not a kernel (neither an ELF vmlinux nor a bzImage)")]
    NotAKernel { path: PathBuf },
    #[error("kernel {path}")]
    LoadKernel {
        path: PathBuf,
        #[source]
        source: loader::Error,
    },
    #[error("kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("kernel {path}: a bzImage without the 64-bit entry point (XLF_KERNEL_64)")]
    Not64Bit { path: PathBuf },
    #[error("kernel command line is {len} bytes; kernel {path} takes at most {max}")]
    CmdlineTooLong { path: PathBuf, len: usize, max: u32 },
    #[error("writing the kernel command line")]
    LoadCmdline(#[source] loader::Error),
    #[error("initramfs {path}")]
    OpenInitramfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory below {limit:#x} after the kernel")]
    InitramfsTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("loading initramfs {path}")]
    LoadInitramfs {
        path: PathBuf,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    #[error("writing boot parameters")]
    BootParams(#[source] linux_loader::configurator::Error),
}

/// How the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
    /// 64-bit long mode on identity page tables, RSI = zero page.
    Linux64,
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    pub protocol: BootProtocol,
    pub entry: GuestAddress,
    /// `hvm_start_info` (PVH) or the zero page (Linux64).
    pub params: GuestAddress,
}

/// What to boot.
pub struct BootConfig<'a> {
    pub kernel: &'a Path,
    pub initramfs: Option<&'a Path>,
    pub cmdline: &'a str,
    pub rsdp: GuestAddress,
}

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// The 64-bit entry of a bzImage is 0x200 past its protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Loads everything into `mem` and writes the boot parameters.
pub fn load(mem: &GuestMemoryMmap, cfg: &BootConfig) -> Result<BootEntry, BootError> {
    let path = cfg.kernel;
    let mut kernel = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_path_buf(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let is_elf = kernel.read_exact(&mut magic).is_ok() && magic == ELF_MAGIC;
    let loaded = if is_elf {
        Elf::load(mem, None, &mut kernel, Some(layout::HIGH_RAM_START))
    } else {
        BzImage::load(mem, None, &mut kernel, Some(layout::HIGH_RAM_START))
    };
    let loaded = loaded.map_err(|source| match source {
        loader::Error::Elf(loader::elf::Error::InvalidElfMagicNumber)
        | loader::Error::Bzimage(loader::bzimage::Error::InvalidBzImage)
        | loader::Error::Bzimage(loader::bzimage::Error::ReadBzImageHeader) => {
            BootError::NotAKernel {
                path: path.to_path_buf(),
            }
        }
        source => BootError::LoadKernel {
            path: path.to_path_buf(),
            source,
        },
    })?;

    let cmdline =
        Cmdline::try_from(cfg.cmdline, layout::CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    loader::load_cmdline(mem, layout::CMDLINE_START, &cmdline).map_err(BootError::LoadCmdline)?;
    let cmdline_len = cfg.cmdline.len() as u32 + 1;

    let initrd_limit = loaded
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&m| m != 0)
        .unwrap_or(u64::from(u32::MAX));
    let initrd = match cfg.initramfs {
        Some(p) => Some(load_initramfs(mem, p, loaded.kernel_end, initrd_limit)?),
        None => None,
    };
    let ram: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| (r.start_addr().raw_value(), r.len()))
        .collect();
    let e820 = layout::e820_map(&ram);

    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => {
            let mut info = hvm_start_info {
                magic: XEN_HVM_START_MAGIC,
                version: 1,
                cmdline_paddr: layout::CMDLINE_START.raw_value(),
                rsdp_paddr: cfg.rsdp.raw_value(),
                memmap_paddr: layout::PVH_MEMMAP_START.raw_value(),
                memmap_entries: e820.len() as u32,
                ..Default::default()
            };
            let memmap: Vec<hvm_memmap_table_entry> = e820
                .iter()
                .map(|e| hvm_memmap_table_entry {
                    addr: e.addr,
                    size: e.size,
                    type_: e.kind,
                    reserved: 0,
                })
                .collect();
            let mut params = BootParams::new(&info, layout::PVH_INFO_START);
            if let Some((addr, size)) = initrd {
                info.nr_modules = 1;
                info.modlist_paddr = layout::PVH_MODLIST_START.raw_value();
                params = BootParams::new(&info, layout::PVH_INFO_START);
                let module = hvm_modlist_entry {
                    paddr: addr.raw_value(),
                    size,
                    ..Default::default()
                };
                params.set_modules(&[module], layout::PVH_MODLIST_START);
            }
            params.set_sections(&memmap, layout::PVH_MEMMAP_START);
            PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
                .map_err(BootError::BootParams)?;
            Ok(BootEntry {
                protocol: BootProtocol::Pvh,
                entry,
                params: layout::PVH_INFO_START,
            })
        }
        _ => {
            let mut zp = boot_params::default();
            if let Some(hdr) = loaded.setup_header {
                check_bzimage(&hdr, cfg.cmdline.len()).map_err(|e| e.at(cfg.kernel))?;
                zp.hdr = hdr;
            } else {
                zp.hdr.cmdline_size = cmdline_len;
            }
            zp.hdr.type_of_loader = KERNEL_LOADER_OTHER;
            zp.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
            zp.hdr.header = KERNEL_HDR_MAGIC;
            zp.hdr.cmd_line_ptr = layout::CMDLINE_START.raw_value() as u32;
            zp.hdr.kernel_alignment = 0x0100_0000;
            if let Some((addr, size)) = initrd {
                zp.hdr.ramdisk_image = addr.raw_value() as u32;
                zp.hdr.ramdisk_size = size as u32;
            }
            zp.acpi_rsdp_addr = cfg.rsdp.raw_value();
            for (slot, e) in zp.e820_table.iter_mut().zip(&e820) {
                slot.addr = e.addr;
                slot.size = e.size;
                slot.type_ = e.kind;
            }
            zp.e820_entries = e820.len() as u8;
            let params = BootParams::new(&zp, layout::ZERO_PAGE_START);
            LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
                .map_err(BootError::BootParams)?;
            let entry = if loaded.setup_header.is_some() {
                loaded.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET)
            } else {
                loaded.kernel_load
            };
            Ok(BootEntry {
                protocol: BootProtocol::Linux64,
                entry,
                params: layout::ZERO_PAGE_START,
            })
        }
    }
}

/// Puts the initramfs page-aligned at the top of low RAM (below `limit`),
/// above the kernel's end.
fn load_initramfs(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<(GuestAddress, u64), BootError> {
    let open_err = |source| BootError::OpenInitramfs {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.seek(SeekFrom::End(0)).map_err(open_err)?;
    file.rewind().map_err(open_err)?;
    let low_end = layout::ram_regions(mem.iter().map(vm_memory::GuestMemoryRegion::len).sum())[0].1;
    let top = low_end.min(limit.saturating_add(1));
    let too_large = || BootError::InitramfsTooLarge {
        path: path.to_path_buf(),
        size,
        limit: top,
    };
    let addr = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end.max(layout::HIGH_RAM_START.raw_value()) {
        return Err(too_large());
    }
    read_into(mem, GuestAddress(addr), &mut file, size as usize).map_err(|source| {
        BootError::LoadInitramfs {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok((GuestAddress(addr), size))
}

fn read_into<F: ReadVolatile>(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    src: &mut F,
    len: usize,
) -> Result<(), vm_memory::GuestMemoryError> {
    vm_memory::Bytes::read_exact_volatile_from(mem, addr, src, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-boot-{}-{name}", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn not_a_kernel() {
        let p = temp("junk", &[0u8; 8192]);
        let cfg = BootConfig {
            kernel: &p,
            initramfs: None,
            cmdline: "",
            rsdp: GuestAddress(0),
        };
        let err = load(&mem(), &cfg).unwrap_err();
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(err, BootError::NotAKernel { .. }), "{err:?}");
        assert!(err.to_string().contains("not a kernel"));
    }

    #[test]
    fn missing_kernel_names_the_path() {
        let cfg = BootConfig {
            kernel: Path::new("/nonexistent/vmlinux"),
            initramfs: None,
            cmdline: "",
            rsdp: GuestAddress(0),
        };
        let err = load(&mem(), &cfg).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"));
    }

    #[test]
    fn initramfs_goes_to_the_top_of_low_ram() {
        let m = mem();
        let p = temp("initrd", &[0xabu8; 5000]);
        let (addr, size) = load_initramfs(&m, &p, 0x20_0000, u64::from(u32::MAX)).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr.raw_value() & 0xfff, 0);
        assert!(addr.raw_value() + size <= 16 << 20);
        assert_eq!(m.read_obj::<u8>(addr).unwrap(), 0xab);
        let big = temp("big", &vec![0u8; 15 << 20]);
        let err = load_initramfs(&m, &big, 0x20_0000, u64::from(u32::MAX)).unwrap_err();
        std::fs::remove_file(&big).unwrap();
        assert!(matches!(err, BootError::InitramfsTooLarge { .. }));
    }

    #[test]
    fn bzimage_headers_are_checked() {
        let mut hdr = setup_header {
            version: 0x020f,
            xloadflags: 0x1f,
            cmdline_size: 2047,
            ..Default::default()
        };
        assert_eq!(check_bzimage(&hdr, 2047), Ok(()));
        assert_eq!(
            check_bzimage(&hdr, 2048),
            Err(HeaderProblem::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        );
        hdr.xloadflags = 0x1e;
        assert_eq!(check_bzimage(&hdr, 10), Err(HeaderProblem::Not64Bit));
        hdr.xloadflags = 1;
        hdr.version = 0x020b;
        assert_eq!(check_bzimage(&hdr, 10), Err(HeaderProblem::Not64Bit));
    }
}
