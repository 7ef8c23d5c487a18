//! The command line, in Cloud Hypervisor's style: `--kernel`, `--initramfs`,
//! `--cmdline`, `--cpus boot=N`, `--memory size=512M[,file=PATH]`,
//! `--memory-zone id=,size=[,host_numa_node=N]` and `--numa guest_numa_id=,..`
//! (checked together by [`crate::numa`]),
//! `--serial stdio|file=PATH|socket=PATH|off`, `--log-level`, `-v`,
//! `--log-file PATH`, `--seccomp true|false|log`, `--api-socket PATH` (the
//! control API, [`crate::api`]), and the vhost-user devices, each option
//! repeatable:
//!
//! - `--disk socket=PATH[,num_queues=N,queue_size=N,reconnect=SECS]`: virtio-blk;
//!   `num_queues` request queues (default 1). `path=IMAGE[,readonly=on]`
//!   instead of `socket=`: the VMM runs `vhost-blk-daemon` on the image
//!   itself and restarts it if it dies ([`crate::spawned`]).
//! - `--fs tag=TAG,socket=PATH[,num_queues=N,queue_size=N,reconnect=SECS]`: virtio-fs;
//!   `num_queues` request queues (default 1) besides the high-priority
//!   queue, as in Cloud Hypervisor.
//! - `--net socket=PATH[,mac=MAC,num_queues=N,queue_size=N,reconnect=SECS]`:
//!   virtio-net; `num_queues` counts RX and TX queues as Cloud Hypervisor does (2 per
//!   queue pair, default 2, even); the device also has the control queue
//!   after them, which the backend serves (VIRTIO_NET_F_CTRL_VQ).
//!   `tap=NAME` instead of `socket=`: the VMM runs `vhost-net-daemon` on
//!   that (existing) tap itself, as `path=` does for a disk; `vm.add-net`
//!   may bring the tap's queues as descriptors instead ([`NetTap::Fds`]),
//!   and so may `fd=N` / `fd=[N,M]` on the command line (descriptors the
//!   VMM inherited, duplicated into the plan).
//!
//! - `--vsock cid=N,socket=PATH`: virtio-vsock as Cloud Hypervisor and Kata
//!   use it; the VMM runs rust-vmm's `vhost-device-vsock` itself, whose
//!   hybrid socket at PATH takes the host's `CONNECT <port>\n`.
//! - `--vhost-user socket=PATH,type=vsock|rng|console|<id>[,num_queues=N,
//!   queue_size=N,config_size=N,reconnect=SECS]`: any virtio device a
//!   vhost-user backend serves ([`generic`]).
//!
//! `queue_size` is the largest ring size offered to the driver, a power of
//! two up to 32768 (default 256 for disks and NICs, 1024 for shares).
//!
//! `reconnect=SECS` (each device): when the backend's socket closes, how
//! long the VMM retries the socket path before the device needs a reset;
//! `0` retries forever, `off` never retries. Default: forever for disks and
//! NICs, `off` for shares (a restarted virtiofsd has lost its node table).
//!
//! Without `--kernel`, `--api-socket` is required and the VMM starts empty:
//! the VM comes from `vm.create` + `vm.boot` (see [`crate::config`], which
//! turns these options and a `vm.create` body into the same config).

mod generic;

use std::path::PathBuf;

use clap::Parser;
use devices::vhost_user::DeviceKind;

use crate::seccomp::Mode;
pub use crate::topology::CpuTopology;

/// The thin KVM core: boots a kernel with guest RAM in a shared file.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, about)]
pub struct Args {
    /// Kernel to boot: an ELF vmlinux with a PVH note (PVH boot), another
    /// 64-bit ELF vmlinux, or a bzImage (64-bit Linux boot protocol).
    /// Without it the VMM starts empty and waits for `vm.create` on
    /// `--api-socket`.
    #[arg(long, value_name = "PATH", required_unless_present = "api_socket")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk loaded at the top of low RAM.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=1")]
    pub cmdline: String,
    /// vCPUs (Cloud Hypervisor's syntax): `boot=N[,max=M,topology=T:C:D:P,
    /// affinity=[V@[CPUS],...],kvm_hyperv=off,pmu=on|off]`. `boot` vCPUs
    /// run (1 to 254); `max` (default `boot`) are listed in the MADT, the
    /// ones above `boot` disabled; `topology` is threads per core, cores
    /// per die, dies per package, packages, multiplying to `max` (default
    /// `1:max:1:1`), and gives the APIC ids and CPUID leaves 1, 4, 0xB and
    /// 0x1F; `affinity` pins each listed vCPU thread to host CPUs (`2,3`
    /// or `4-7`); `pmu=off` hides the PMU (CPUID 0xA zero, KVM's PMU
    /// disabled).
    #[arg(long, default_value = "boot=1", value_parser = parse_cpus)]
    pub cpus: CpusConfig,
    /// Guest RAM: `size=SIZE[,file=PATH]`. SIZE takes K, M, G suffixes and
    /// is a multiple of 1 MiB. Without `file=`, a file is created under
    /// /dev/shm and removed at once (the mapping and the fd stay), so
    /// nothing is left behind however the VMM ends. `size=0`: guest RAM
    /// is the `--memory-zone`s (Cloud Hypervisor's rule).
    #[arg(long, default_value = "size=512M", value_parser = parse_memory)]
    pub memory: MemoryConfig,
    /// A part of guest RAM with its own backing (Cloud Hypervisor's
    /// syntax): `id=ID,size=SIZE[,file=PATH,shared=on,hugepages=on,
    /// hugepage_size=2M|1G,prefault=on,host_numa_node=N]`. Zones follow
    /// each other in guest RAM in the order given; each is its own file
    /// (a /dev/shm file, `file=`, or a hugetlbfs memfd) sent to the device
    /// daemons; `host_numa_node` binds its pages to that host node
    /// (mbind MPOL_BIND). With zones, `--memory size=0` (or their total).
    /// Repeatable.
    #[arg(long = "memory-zone", value_name = "id=ID,size=SIZE[,...]", value_parser = parse_memory_zone)]
    pub memory_zones: Vec<MemoryZoneConfig>,
    /// A guest NUMA node (Cloud Hypervisor's syntax): `guest_numa_id=N[,
    /// cpus=[0-1,4],memory_zones=[mem0,mem1],distances=[1@20,2@30]]`,
    /// described to the guest in the ACPI SRAT (its vCPUs and zones) and
    /// SLIT (distances; 10 to itself, 20 to other nodes unless given).
    /// Node ids run from 0 without gaps; with `--numa`, every zone
    /// belongs to one node. Repeatable.
    #[arg(long = "numa", value_name = "guest_numa_id=N[,...]", value_parser = parse_numa)]
    pub numa: Vec<NumaNodeConfig>,
    /// Serial console on COM1: `stdio`, `file=PATH`, `socket=PATH` (a
    /// listening Unix socket; one client at a time) or `off`.
    #[arg(long, default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialConfig,
    /// Serve the control API (HTTP over a Unix socket: vmm.ping, vm.info,
    /// vm.pause, vm.resume, vm.shutdown, vm.power-button, vm.counters,
    /// vmm.shutdown) at PATH. A stale socket there is replaced, a live one
    /// is an error; the file is removed on exit. With it, the VMM keeps
    /// running after the guest ends, until `vmm.shutdown`.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    pub log_level: log::LevelFilter,
    /// More log: each `-v` one level above `--log-level` (Cloud
    /// Hypervisor's flag).
    #[arg(short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Write the log to PATH (appended) instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// A guest reset ends the VM (QEMU's `-no-reboot`; Firecracker's only
    /// behaviour). Without it a guest reset reboots: the VM is built again
    /// from its config and boots, as with `vm.reboot` (Cloud Hypervisor's
    /// and QEMU's behaviour).
    #[arg(long)]
    pub no_reboot: bool,
    /// Write the VMM's pid to PATH, locked while it runs and removed when
    /// it ends (QEMU's `-pidfile`); a second VMM on a locked file fails.
    #[arg(long, value_name = "PATH")]
    pub pidfile: Option<PathBuf>,
    /// System call filters per thread (Cloud Hypervisor's switch; Kata
    /// passes `--seccomp false`): `true` kills the VMM on a call outside
    /// its thread's list, `log` lets it run and logs it in the kernel
    /// log, `false` installs none.
    #[arg(long, value_name = "true|false|log", default_value = "true", value_parser = parse_seccomp)]
    pub seccomp: Mode,
    /// A disk served by a vhost-user-blk backend:
    /// `socket=PATH[,num_queues=N,queue_size=N]`, or `path=IMAGE[,readonly=on]`
    /// for a vhost-blk-daemon the VMM runs itself. Repeatable.
    #[arg(long = "disk", value_name = "socket=PATH|path=IMAGE[,...]", value_parser = parse_disk)]
    pub disks: Vec<VhostUserConfig>,
    /// A share served by a vhost-user-fs backend (virtiofsd):
    /// `tag=TAG,socket=PATH[,num_queues=N,queue_size=N]`; `num_queues`
    /// request queues besides the high-priority one. Repeatable.
    #[arg(long = "fs", value_name = "tag=TAG,socket=PATH[,...]", value_parser = parse_fs)]
    pub fs: Vec<VhostUserConfig>,
    /// A NIC served by a vhost-user-net backend:
    /// `socket=PATH[,mac=MAC,num_queues=N,queue_size=N]`; `num_queues`
    /// counts RX and TX queues (2 per pair, even), the control queue comes
    /// after them. `tap=NAME` instead of `socket=`: the VMM runs
    /// vhost-net-daemon on that existing tap itself; `fd=N` or
    /// `fd=[N,M,...]`: on tap queues the VMM inherited, one per queue pair
    /// (Cloud Hypervisor's form). Repeatable.
    #[arg(long = "net", value_name = "socket=PATH|tap=NAME|fd=N[,...]", value_parser = parse_net)]
    pub net: Vec<VhostUserConfig>,
    /// virtio-vsock as Cloud Hypervisor gives it: `cid=N,socket=PATH`; the
    /// VMM runs `vhost-device-vsock` (rust-vmm), whose hybrid socket at
    /// PATH takes `CONNECT <port>\n` from the host. `cid` is 3 or more.
    #[arg(long = "vsock", value_name = "cid=N,socket=PATH", value_parser = parse_vsock)]
    pub vsock: Option<VhostUserConfig>,
    /// Any virtio device a vhost-user backend serves:
    /// `socket=PATH,type=vsock|rng|console|<virtio id>[,num_queues=N,
    /// queue_size=N,config_size=N,reconnect=SECS]`; the device
    /// configuration is read with GET_CONFIG (`config_size` bytes, the
    /// type's own length by default). Repeatable.
    #[arg(long = "vhost-user", value_name = "socket=PATH,type=TYPE[,...]", value_parser = parse_generic)]
    pub vhost_user: Vec<VhostUserConfig>,
}

impl Args {
    /// `--log-level` raised by one level per `-v`.
    pub fn log_filter(&self) -> log::LevelFilter {
        let levels = log::LevelFilter::iter().collect::<Vec<_>>();
        let at = levels
            .iter()
            .position(|l| *l == self.log_level)
            .unwrap_or(0);
        levels[(at + usize::from(self.verbose)).min(levels.len() - 1)]
    }

    /// Every vhost-user device, in plug order: disks, shares, NICs, the
    /// vsock, the generic devices.
    pub fn vhost_user_devices(&self) -> Vec<VhostUserConfig> {
        let mut all = self.disks.clone();
        all.extend(self.fs.iter().cloned());
        all.extend(self.net.iter().cloned());
        all.extend(self.vsock.iter().cloned());
        all.extend(self.vhost_user.iter().cloned());
        all
    }
}

/// `--cpus` (and `vm.create`'s `cpus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpusConfig {
    /// vCPUs created at boot.
    pub boot: u8,
    /// vCPUs the guest is told may exist (the MADT lists them, those
    /// above `boot` disabled); `boot` when not given.
    pub max: u8,
    /// As given; [`CpusConfig::topology`] is the one in effect.
    pub topology: Option<CpuTopology>,
    /// Host CPUs per vCPU, each vCPU at most once.
    pub affinity: Vec<VcpuAffinity>,
    /// `pmu=off`: no PMU for the guest (CPUID 0xA zero, KVM's PMU off).
    pub pmu: bool,
}

/// One vCPU's host CPUs (`affinity=[VCPU@[CPUS]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuAffinity {
    pub vcpu: u8,
    pub host_cpus: Vec<usize>,
}

impl CpusConfig {
    /// `boot` vCPUs, none more, flat topology, no pinning, a PMU.
    pub fn new(boot: u8) -> Self {
        CpusConfig {
            boot,
            max: boot,
            topology: None,
            affinity: Vec::new(),
            pmu: true,
        }
    }

    /// The topology in effect: as given, or `max` cores of one package.
    pub fn topology(&self) -> CpuTopology {
        self.topology.unwrap_or(CpuTopology::flat(self.max))
    }

    /// The host CPUs vCPU `vcpu` is pinned to, if any.
    pub fn host_cpus(&self, vcpu: u8) -> Option<&[usize]> {
        self.affinity
            .iter()
            .find(|a| a.vcpu == vcpu)
            .map(|a| a.host_cpus.as_slice())
    }

    /// Checks the fields together, and the affinity against `host` (the
    /// CPUs this process may run on). The error names the key it is
    /// about, as `vm.create` spells it (`max_vcpus`, `topology`,
    /// `affinity`), and why.
    pub fn check(&self, host: &[usize]) -> Result<(), (&'static str, String)> {
        if self.max < self.boot {
            return Err((
                "max_vcpus",
                format!("max {} is below boot {}", self.max, self.boot),
            ));
        }
        if let Some(t) = &self.topology {
            let levels = [
                t.threads_per_core,
                t.cores_per_die,
                t.dies_per_package,
                t.packages,
            ];
            if levels.contains(&0) {
                return Err((
                    "topology",
                    format!("{}: no count may be 0", topology_string(t)),
                ));
            }
            if t.count() != u32::from(self.max) {
                return Err((
                    "topology",
                    format!(
                        "{} makes {} vCPUs, not max {} (threads x cores x dies x packages \
                         must be max)",
                        topology_string(t),
                        t.count(),
                        self.max
                    ),
                ));
            }
        }
        let top = self.topology().apic_id(u32::from(self.max) - 1);
        if top > u32::from(MAX_VCPUS) {
            return Err((
                "topology",
                format!(
                    "{} gives APIC ids up to {top}; the MADT's local APIC entries stop at {MAX_VCPUS}",
                    topology_string(&self.topology())
                ),
            ));
        }
        for (i, a) in self.affinity.iter().enumerate() {
            if a.vcpu >= self.max {
                return Err((
                    "affinity",
                    format!("vCPU {} is not below max {}", a.vcpu, self.max),
                ));
            }
            if self.affinity[..i].iter().any(|b| b.vcpu == a.vcpu) {
                return Err(("affinity", format!("vCPU {} given twice", a.vcpu)));
            }
            if a.host_cpus.is_empty() {
                return Err(("affinity", format!("vCPU {}: no host CPU", a.vcpu)));
            }
            if let Some(cpu) = a.host_cpus.iter().find(|c| !host.contains(c)) {
                return Err((
                    "affinity",
                    format!(
                        "vCPU {}: host CPU {cpu} is not one this process may run on ({})",
                        a.vcpu,
                        cpu_list(host)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `threads:cores:dies:packages`.
pub fn topology_string(t: &CpuTopology) -> String {
    format!(
        "{}:{}:{}:{}",
        t.threads_per_core, t.cores_per_die, t.dies_per_package, t.packages
    )
}

/// `0-3,6`: a CPU list as /proc shows it.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            sorted[i].to_string()
        } else {
            format!("{}-{}", sorted[i], sorted[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// The CPUs this process may run on (`sched_getaffinity`); empty if it
/// cannot be read (then any affinity is refused, with this list shown).
pub fn host_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// `--memory`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryConfig {
    /// Guest RAM in bytes: as given, or with zones their total (`--memory
    /// size=0` on the command line) once [`crate::numa::check`] has run.
    pub size: u64,
    pub file: Option<PathBuf>,
    /// `hugepages=on[,hugepage_size=2M|1G]`: guest RAM from a hugetlbfs
    /// memfd with pages of this size (still shared with the daemons).
    pub hugepage_size: Option<u64>,
    /// `prefault=on` (Cloud Hypervisor) or `prealloc=on` (QEMU's
    /// `-mem-prealloc`): every page is allocated before the guest runs.
    pub prefault: bool,
    /// `--memory-zone`s: guest RAM is these, in order (then `file` and
    /// `hugepage_size` are unset; `prefault` applies to every zone).
    pub zones: Vec<MemoryZoneConfig>,
}

impl MemoryConfig {
    /// The zones guest RAM is made of: the `--memory-zone`s, or one zone
    /// `mem0` of `--memory`'s size and backing.
    pub fn zones(&self) -> Vec<MemoryZoneConfig> {
        if !self.zones.is_empty() {
            return self
                .zones
                .iter()
                .map(|z| MemoryZoneConfig {
                    prefault: z.prefault || self.prefault,
                    ..z.clone()
                })
                .collect();
        }
        vec![MemoryZoneConfig {
            id: "mem0".into(),
            size: self.size,
            file: self.file.clone(),
            hugepage_size: self.hugepage_size,
            prefault: self.prefault,
            host_numa_node: None,
        }]
    }
}

/// `--memory-zone` (and an entry of `vm.create`'s `memory.zones`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemoryZoneConfig {
    pub id: String,
    pub size: u64,
    /// Backing file (kept); a /dev/shm file removed at once otherwise.
    pub file: Option<PathBuf>,
    /// `hugepages=on[,hugepage_size=]`: a hugetlbfs memfd.
    pub hugepage_size: Option<u64>,
    pub prefault: bool,
    /// The host node its pages are bound to (mbind MPOL_BIND).
    pub host_numa_node: Option<u32>,
}

/// `--numa` (and an entry of `vm.create`'s `numa`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NumaNodeConfig {
    pub guest_numa_id: u32,
    /// vCPU indexes (below `--cpus max`).
    pub cpus: Vec<u8>,
    /// Distances to other nodes; the rest are 20 (10 to itself).
    pub distances: Vec<NumaDistance>,
    /// Ids of the `--memory-zone`s this node's memory is.
    pub memory_zones: Vec<String>,
}

/// `distances=[DEST@DIST]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NumaDistance {
    pub destination: u32,
    pub distance: u8,
}

/// The huge page sizes `hugepage_size=` takes.
pub const HUGEPAGE_SIZES: [u64; 2] = [2 << 20, 1 << 30];

/// `--serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialConfig {
    Stdio,
    File(PathBuf),
    Socket(PathBuf),
    Off,
}

/// `--disk`, `--fs`, `--net`: one device a vhost-user backend serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserConfig {
    pub kind: DeviceKind,
    /// The backend's listening socket (for a disk with `image`, empty until
    /// the VMM has started its daemon).
    pub socket: PathBuf,
    /// A disk image the VMM serves with a `vhost-blk-daemon` it runs
    /// (`path=`), instead of connecting to someone else's backend.
    pub image: Option<DiskImage>,
    /// `num_queues` as given (see [`VhostUserConfig::device_queues`]).
    pub num_queues: usize,
    /// Largest queue size, a power of two.
    pub queue_size: u16,
    /// virtio-fs: the tag the guest mounts.
    pub tag: Option<String>,
    /// virtio-net: the MAC shown when the backend does not serve the
    /// configuration space.
    pub mac: Option<[u8; 6]>,
    /// virtio-net: the tap a `vhost-net-daemon` the VMM runs serves
    /// (`tap=NAME`, or `vm.add-net`'s descriptors), instead of connecting
    /// to someone else's backend.
    pub tap: Option<NetTap>,
    /// `reconnect=`: what happens when the backend's socket closes.
    pub reconnect: Reconnect,
    /// virtio-vsock: the guest's cid and the hybrid socket a
    /// `vhost-device-vsock` the VMM runs listens on (`--vsock`), instead of
    /// connecting to someone else's backend.
    pub vsock: Option<HybridVsock>,
    /// `--vhost-user config_size=`: how many bytes of device
    /// configuration GET_CONFIG asks for (None: the kind's length).
    pub config_size: Option<usize>,
}

pub use generic::{parse_generic, parse_vsock, vsock_from_pairs, HybridVsock, MAX_CONFIG_SIZE};

/// The tap of a NIC whose `vhost-net-daemon` the VMM runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetTap {
    /// `tap=NAME`: an existing tap the daemon attaches to (`--tap NAME`).
    Name(String),
    /// Open tap queues, one per queue pair, that came with `vm.add-net`
    /// (`--tap-fd`); the VMM keeps them for the daemon's restarts.
    Fds(TapFds),
}

/// Tap queue descriptors shared by a plan and the daemon that serves
/// them; closed when the last holder goes. Equal when they are the same
/// descriptors.
#[derive(Debug, Clone)]
pub struct TapFds(pub std::sync::Arc<Vec<std::os::fd::OwnedFd>>);

impl PartialEq for TapFds {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for TapFds {}

/// `--disk path=IMAGE[,readonly=on]`: an image the VMM's own
/// `vhost-blk-daemon` serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskImage {
    pub path: PathBuf,
    /// `readonly=on`: the daemon opens it read-only (`--read-only`).
    pub readonly: bool,
}

/// `reconnect=SECS|off` of a vhost-user device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// `off`: the device needs a reset at once.
    Off,
    /// `0`: retry the socket path forever.
    Forever,
    /// `SECS`: retry for this long, then the device needs a reset.
    For(std::time::Duration),
}

impl Reconnect {
    /// The default of `kind`: forever. A restarted virtiofsd resumes the
    /// guest's FUSE session from its `--state-file` (the shipped unit
    /// passes one); one without answers EIO until the guest sends INIT,
    /// which is no worse than a device that needs a reset.
    pub fn default_for(_kind: DeviceKind) -> Self {
        Self::Forever
    }
}

impl VhostUserConfig {
    /// The device's virtqueues: blk `num_queues`; fs the high-priority
    /// queue + `num_queues`; net `num_queues` + the control queue.
    pub fn device_queues(&self) -> usize {
        match self.kind {
            DeviceKind::Fs | DeviceKind::Net => self.num_queues + 1,
            _ => self.num_queues,
        }
    }
}

/// The longest virtio-fs tag (`virtio_fs_config.tag`).
pub const FS_TAG_MAX: usize = devices::vhost_user::config::FS_TAG_LEN;
/// The most queues `num_queues` asks for.
pub const MAX_QUEUES: usize = 256;
/// The largest queue size (virtio split rings).
pub const MAX_QUEUE_SIZE: u16 = 32768;

pub const MAX_VCPUS: u8 = 254;
const MIB: u64 = 1 << 20;
const MIN_MEMORY: u64 = 2 * MIB;
const MAX_MEMORY: u64 = 1 << 40;

/// Splits `a=b,c=d` into pairs; a bare word is an error.
fn pairs(s: &str) -> Result<Vec<(&str, &str)>, String> {
    s.split(',')
        .map(|kv| {
            kv.split_once('=')
                .ok_or_else(|| format!("`{kv}` is not key=value"))
        })
        .collect()
}

/// `--cpus boot=N[,max=M,topology=T:C:D:P,affinity=[V@[CPUS],...],kvm_hyperv=off,pmu=on|off]`,
/// its affinity checked against the CPUs this process may run on.
pub fn parse_cpus(s: &str) -> Result<CpusConfig, String> {
    parse_cpus_on(s, &host_cpus())
}

/// [`parse_cpus`] with `host` as the CPUs this process may run on.
pub fn parse_cpus_on(s: &str, host: &[usize]) -> Result<CpusConfig, String> {
    let mut boot = None;
    let mut max = None;
    let mut topology = None;
    let mut affinity = Vec::new();
    let mut pmu = true;
    for kv in split_outside_brackets(s) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("`{kv}` is not key=value"))?;
        let count = |v: &str| -> Result<u8, String> {
            let n: u64 = v
                .parse()
                .map_err(|_| format!("{k}={v} is not a number from 1 to {MAX_VCPUS}"))?;
            check_vcpus(n).map_err(|e| format!("{k}={e}"))
        };
        match k {
            "boot" => boot = Some(count(v)?),
            "max" => max = Some(count(v)?),
            "topology" => topology = Some(parse_topology(v)?),
            "affinity" => affinity = parse_affinity(v)?,
            "kvm_hyperv" => {
                if parse_switch(k, v)? {
                    return Err("kvm_hyperv=on: no Hyper-V enlightenments here".into());
                }
            }
            "pmu" => pmu = parse_switch(k, v)?,
            other => {
                return Err(format!(
                    "unknown key `{other}` (known: boot, max, topology, affinity, kvm_hyperv, pmu)"
                ))
            }
        }
    }
    let boot = boot.ok_or("missing boot=N")?;
    let cpus = CpusConfig {
        boot,
        max: max.unwrap_or(boot),
        topology,
        affinity,
        pmu,
    };
    cpus.check(host).map_err(|(key, e)| {
        let key = key.strip_suffix("_vcpus").unwrap_or(key);
        format!("{key}: {e}")
    })?;
    Ok(cpus)
}

/// `a=b,c=[d,e]` split at the commas outside brackets.
fn split_outside_brackets(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `threads:cores:dies:packages`, each 1 to 255.
pub fn parse_topology(v: &str) -> Result<CpuTopology, String> {
    let bad = || format!("topology={v} is not threads:cores:dies:packages (e.g. 1:2:1:2)");
    let n: Vec<u8> = v
        .split(':')
        .map(|p| p.parse::<u8>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let [threads_per_core, cores_per_die, dies_per_package, packages] = n[..] else {
        return Err(bad());
    };
    Ok(CpuTopology {
        threads_per_core,
        cores_per_die,
        dies_per_package,
        packages,
    })
}

/// `[0@[2,3],1@[4-6]]`: vCPU 0 on host CPUs 2 and 3, vCPU 1 on 4 to 6.
pub fn parse_affinity(v: &str) -> Result<Vec<VcpuAffinity>, String> {
    let bad = |why: &str| format!("affinity={v}: {why} (e.g. affinity=[0@[2,3],1@[4-6]])");
    let inner = v
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| bad("not in brackets"))?;
    if inner.is_empty() {
        return Ok(Vec::new());
    }
    split_outside_brackets(inner)
        .into_iter()
        .map(|entry| {
            let (vcpu, cpus) = entry
                .split_once('@')
                .ok_or_else(|| bad(&format!("`{entry}` is not VCPU@[CPUS]")))?;
            let vcpu = vcpu
                .parse()
                .map_err(|_| bad(&format!("`{vcpu}` is not a vCPU number")))?;
            let cpus = cpus
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .ok_or_else(|| bad(&format!("`{cpus}` is not [CPUS]")))?;
            let host_cpus = parse_cpu_list(cpus).map_err(|e| bad(&e))?;
            Ok(VcpuAffinity { vcpu, host_cpus })
        })
        .collect()
}

/// `2,3,5-7` → [2, 3, 5, 6, 7].
fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let num = |n: &str| {
            n.parse::<usize>()
                .map_err(|_| format!("`{item}` is not a CPU number or range"))
        };
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a > 4096 {
                    return Err(format!("`{item}` is not a range"));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(item)?),
        }
    }
    Ok(cpus)
}

/// A vCPU count from 1 to [`MAX_VCPUS`]; the error starts with the number.
pub fn check_vcpus(n: u64) -> Result<u8, String> {
    match u8::try_from(n) {
        Ok(n) if (1..=MAX_VCPUS).contains(&n) => Ok(n),
        _ => Err(format!("{n} is not from 1 to {MAX_VCPUS}")),
    }
}

/// A guest RAM size: a multiple of 1 MiB from 2 MiB to 1 TiB.
pub fn check_memory_size(size: u64) -> Result<u64, String> {
    if size % MIB != 0 {
        return Err(format!("size {size} is not a multiple of 1 MiB"));
    }
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&size) {
        return Err(format!(
            "size {}M is not from {}M to {}M",
            size / MIB,
            MIN_MEMORY / MIB,
            MAX_MEMORY / MIB
        ));
    }
    Ok(size)
}

/// A size with an optional K/M/G/T suffix (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let not_a_size = || format!("`{s}` is not a size (e.g. 512M)");
    let number = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if number.is_empty()
        || !number.bytes().all(|b| b.is_ascii_digit())
        || s.len() > number.len() + 1
    {
        return Err(not_a_size());
    }
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{s}`: unknown unit `{c}` (K, M, G, T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| not_a_size())?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn parse_seccomp(value: &str) -> Result<Mode, String> {
    Mode::parse(value).ok_or_else(|| format!("`{value}`: expected true, false or log"))
}

pub fn parse_memory(s: &str) -> Result<MemoryConfig, String> {
    let mut size = None;
    let mut file = None;
    let mut hugepages = false;
    let mut hugepage_size = None;
    let mut prefault = false;
    for (k, v) in pairs(s)? {
        match k {
            "size" => size = Some(parse_size(v)?),
            "file" if !v.is_empty() => file = Some(PathBuf::from(v)),
            "file" => return Err("file= needs a path".into()),
            "hugepages" => hugepages = parse_switch(k, v)?,
            "hugepage_size" => hugepage_size = Some(parse_size(v)?),
            "prefault" | "prealloc" => prefault = parse_switch(k, v)?,
            "shared" if parse_switch(k, v)? => {}
            "shared" => {
                return Err(
                    "shared=off: guest RAM is always shared (the device daemons map it)".into(),
                )
            }
            other => {
                return Err(format!(
                    "unknown key `{other}` (known: size, file, hugepages, hugepage_size, \
                     prefault, prealloc, shared)"
                ))
            }
        }
    }
    let size = size.ok_or("missing size=SIZE")?;
    if size == 0 {
        // Guest RAM is the --memory-zones' (checked with them).
        if file.is_some() || hugepages || hugepage_size.is_some() {
            return Err(
                "size=0 (guest RAM from --memory-zone): give file= and hugepages= on each zone"
                    .into(),
            );
        }
        return Ok(MemoryConfig {
            prefault,
            ..MemoryConfig::default()
        });
    }
    let size = check_memory_size(size)?;
    let hugepage_size = check_hugepages(size, hugepages, hugepage_size, file.is_some())?;
    Ok(MemoryConfig {
        size,
        file,
        hugepage_size,
        prefault,
        zones: Vec::new(),
    })
}

/// `--memory-zone id=ID,size=SIZE[,file=PATH,shared=on,hugepages=on,
/// hugepage_size=2M|1G,prefault=on,host_numa_node=N]`.
pub fn parse_memory_zone(s: &str) -> Result<MemoryZoneConfig, String> {
    memory_zone_from_pairs(&pairs(s)?)
}

/// A zone from its `key=value` pairs: the one parser of `--memory-zone`
/// and of `vm.create`'s `memory.zones` entries. The host node is checked
/// later, against the host ([`crate::numa::check`]).
pub fn memory_zone_from_pairs(pairs: &[(&str, &str)]) -> Result<MemoryZoneConfig, String> {
    let mut id = None;
    let mut size = None;
    let mut file = None;
    let mut hugepages = false;
    let mut hugepage_size = None;
    let mut prefault = false;
    let mut host_numa_node = None;
    let mut seen: Vec<&str> = Vec::new();
    for &(k, v) in pairs {
        if seen.contains(&k) {
            return Err(format!("`{k}` is given twice"));
        }
        seen.push(k);
        match k {
            "id" if v.is_empty() => return Err("id= needs a name".into()),
            "id" => id = Some(v.to_string()),
            "size" => size = Some(parse_size(v)?),
            "file" if v.is_empty() => return Err("file= needs a path".into()),
            "file" => file = Some(PathBuf::from(v)),
            "hugepages" => hugepages = parse_switch(k, v)?,
            "hugepage_size" => hugepage_size = Some(parse_size(v)?),
            "prefault" | "prealloc" => prefault = parse_switch(k, v)?,
            "shared" if parse_switch(k, v)? => {}
            "shared" => {
                return Err(
                    "shared=off: guest RAM is always shared (the device daemons map it)".into(),
                )
            }
            "host_numa_node" => {
                host_numa_node = Some(
                    v.parse()
                        .map_err(|_| format!("host_numa_node={v} is not a node number"))?,
                )
            }
            other => {
                return Err(format!(
                    "unknown key `{other}` (known: id, size, file, shared, hugepages, \
                     hugepage_size, prefault, host_numa_node)"
                ))
            }
        }
    }
    let id = id.ok_or("missing id=ID")?;
    let size = size.ok_or_else(|| format!("id={id}: missing size=SIZE"))?;
    if size == 0 || size % MIB != 0 {
        return Err(format!(
            "id={id}: size={size} bytes is not a non-zero multiple of 1 MiB"
        ));
    }
    let hugepage_size = check_hugepages(size, hugepages, hugepage_size, file.is_some())
        .map_err(|e| format!("id={id}: {e}"))?;
    Ok(MemoryZoneConfig {
        id,
        size,
        file,
        hugepage_size,
        prefault,
        host_numa_node,
    })
}

/// `--numa guest_numa_id=N[,cpus=[0-1,4],memory_zones=[mem0],distances=[1@20]]`.
pub fn parse_numa(s: &str) -> Result<NumaNodeConfig, String> {
    let mut node = NumaNodeConfig::default();
    let mut id = None;
    // `[a,b]`, or `a` alone.
    let list = |v: &str| -> String {
        v.strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(v)
            .to_string()
    };
    for kv in split_outside_brackets(s) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("`{kv}` is not key=value"))?;
        match k {
            "guest_numa_id" => {
                id = Some(
                    v.parse()
                        .map_err(|_| format!("guest_numa_id={v} is not a node number"))?,
                )
            }
            "cpus" => {
                node.cpus = parse_cpu_list(&list(v))
                    .map_err(|e| format!("cpus={v}: {e}"))?
                    .into_iter()
                    .map(|c| {
                        u8::try_from(c).map_err(|_| format!("cpus={v}: vCPU {c} is above 254"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "memory_zones" => {
                node.memory_zones = list(v)
                    .split(',')
                    .filter(|z| !z.is_empty())
                    .map(str::to_string)
                    .collect();
            }
            "distances" => {
                node.distances = list(v)
                    .split(',')
                    .filter(|d| !d.is_empty())
                    .map(|d| {
                        let bad =
                            || format!("distances={v}: `{d}` is not NODE@DISTANCE (e.g. 1@20)");
                        let (dest, dist) = d.split_once('@').ok_or_else(bad)?;
                        Ok(NumaDistance {
                            destination: dest.parse().map_err(|_| bad())?,
                            distance: dist.parse().map_err(|_| bad())?,
                        })
                    })
                    .collect::<Result<_, String>>()?;
            }
            "pci_segments" => return Err("pci_segments: there is one PCI segment here".into()),
            other => {
                return Err(format!(
                    "unknown key `{other}` (known: guest_numa_id, cpus, memory_zones, distances)"
                ))
            }
        }
    }
    node.guest_numa_id = id.ok_or("missing guest_numa_id=N")?;
    Ok(node)
}

/// The huge page size of `hugepages=on` (`hugepage_size`, default 2M),
/// checked against `size` and `file=`; None without hugepages.
pub fn check_hugepages(
    size: u64,
    hugepages: bool,
    hugepage_size: Option<u64>,
    with_file: bool,
) -> Result<Option<u64>, String> {
    if !hugepages {
        return match hugepage_size {
            Some(_) => Err("hugepage_size= goes with hugepages=on".into()),
            None => Ok(None),
        };
    }
    if with_file {
        return Err(
            "hugepages=on takes its memory from a hugetlbfs memfd; give file= or hugepages=on, \
             not both"
                .into(),
        );
    }
    let page = hugepage_size.unwrap_or(HUGEPAGE_SIZES[0]);
    if !HUGEPAGE_SIZES.contains(&page) {
        return Err(format!(
            "hugepage_size={page} bytes: the sizes are 2M and 1G"
        ));
    }
    if size % page != 0 {
        return Err(format!(
            "size={} MiB is not a multiple of the {} MiB huge page",
            size >> 20,
            page >> 20
        ));
    }
    Ok(Some(page))
}

pub fn parse_serial(s: &str) -> Result<SerialConfig, String> {
    match s {
        "stdio" | "tty" => Ok(SerialConfig::Stdio),
        "off" | "null" => Ok(SerialConfig::Off),
        _ => match s.split_once('=') {
            Some(("file", p)) if !p.is_empty() => Ok(SerialConfig::File(p.into())),
            Some(("socket", p)) if !p.is_empty() => Ok(SerialConfig::Socket(p.into())),
            _ => Err(format!(
                "`{s}`: expected stdio, file=PATH, socket=PATH or off"
            )),
        },
    }
}

fn parse_mac(v: &str) -> Result<[u8; 6], String> {
    let bad = || format!("mac={v} is not a MAC address (e.g. 52:54:00:12:34:56)");
    let mut mac = [0u8; 6];
    let mut parts = v.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!("mac={v} is a multicast address"));
    }
    Ok(mac)
}

fn parse_count(k: &str, v: &str) -> Result<usize, String> {
    v.parse()
        .map_err(|_| format!("{k}={v} is not a number from 1 to {MAX_QUEUES}"))
}

/// `--disk`, `--fs` or `--net` of `kind`.
pub fn parse_vhost_user(kind: DeviceKind, s: &str) -> Result<VhostUserConfig, String> {
    vhost_user_from_pairs(kind, &pairs(s)?)
}

/// A device of `kind` from its `key=value` pairs, checked: the one parser
/// of the command line's `--disk`/`--fs`/`--net` and of `vm.create`'s
/// `disks`/`fs`/`net` (whose fields [`crate::config`] passes as pairs).
pub fn vhost_user_from_pairs(
    kind: DeviceKind,
    pairs: &[(&str, &str)],
) -> Result<VhostUserConfig, String> {
    vhost_user_with_tap_fds(kind, pairs, None)
}

/// [`vhost_user_from_pairs`] for a NIC whose tap queues came as
/// descriptors (`vm.add-net`): one per queue pair, so `num_queues` is
/// twice their number (its default).
pub fn vhost_user_with_tap_fds(
    kind: DeviceKind,
    pairs: &[(&str, &str)],
    tap_fds: Option<TapFds>,
) -> Result<VhostUserConfig, String> {
    let known: &[&str] = match kind {
        DeviceKind::Block => &[
            "socket",
            "path",
            "readonly",
            "num_queues",
            "queue_size",
            "reconnect",
        ],
        DeviceKind::Fs => &["tag", "socket", "num_queues", "queue_size", "reconnect"],
        DeviceKind::Net => &[
            "socket",
            "tap",
            "mac",
            "num_queues",
            "queue_size",
            "reconnect",
        ],
        _ => &["socket", "num_queues", "queue_size", "reconnect"],
    };
    let mut seen: Vec<&str> = Vec::new();
    let mut socket = None;
    let mut image = None;
    let mut readonly = None;
    let mut num_queues = None;
    let mut queue_size = None;
    let mut tag = None;
    let mut mac = None;
    let mut tap = tap_fds.map(NetTap::Fds);
    let mut reconnect = Reconnect::default_for(kind);
    for &(k, v) in pairs {
        if !known.contains(&k) {
            return Err(format!("unknown key `{k}` (known: {})", known.join(", ")));
        }
        if seen.contains(&k) {
            return Err(format!("`{k}` is given twice"));
        }
        seen.push(k);
        match k {
            "socket" if v.is_empty() => return Err("socket= needs a path".into()),
            "socket" => socket = Some(PathBuf::from(v)),
            "path" if v.is_empty() => return Err("path= needs a disk image".into()),
            "path" => image = Some(PathBuf::from(v)),
            "readonly" => readonly = Some(parse_switch(k, v)?),
            "num_queues" => num_queues = Some(parse_count(k, v)?),
            "queue_size" => {
                let n: u16 = v.parse().map_err(|_| {
                    format!(
                        "queue_size={v} is not a number (a power of two up to {MAX_QUEUE_SIZE})"
                    )
                })?;
                if !n.is_power_of_two() || n > MAX_QUEUE_SIZE {
                    return Err(format!(
                        "queue_size={n} is not a power of two up to {MAX_QUEUE_SIZE}"
                    ));
                }
                queue_size = Some(n);
            }
            "tag" if v.is_empty() || v.len() > FS_TAG_MAX => {
                return Err(format!(
                    "tag `{v}` is {} bytes; a tag has 1 to {FS_TAG_MAX}",
                    v.len()
                ))
            }
            "tag" => tag = Some(v.to_string()),
            "tap" if v.is_empty() || v.len() >= libc::IFNAMSIZ || v.contains('/') => {
                return Err(format!(
                    "tap=`{v}` is not an interface name (1 to {} bytes, no `/`)",
                    libc::IFNAMSIZ - 1
                ))
            }
            "tap" if tap.is_some() => {
                return Err(
                    "tap= names a tap, descriptors came with the request: give one, not both"
                        .into(),
                )
            }
            "tap" => tap = Some(NetTap::Name(v.to_string())),
            "reconnect" => reconnect = parse_reconnect(v)?,
            _ => mac = Some(parse_mac(v)?),
        }
    }
    let (socket, image) = match (socket, image) {
        (Some(socket), None) if tap.is_some() => {
            return Err(format!(
                "give socket=PATH (a running backend, here {}) or the tap the vmm runs \
                 vhost-net-daemon on, not both",
                socket.display()
            ))
        }
        (None, None) if tap.is_some() => (PathBuf::new(), None),
        (Some(_), Some(_)) => {
            return Err(
                "give socket=PATH (a running backend) or path=IMAGE (the vmm runs \
                 vhost-blk-daemon on it), not both"
                    .into(),
            )
        }
        (Some(socket), None) if readonly.is_some() => {
            return Err(format!(
                "readonly= goes with path=IMAGE; the backend on {} decides itself \
                 (vhost-blk-daemon --read-only)",
                socket.display()
            ))
        }
        (Some(socket), None) => (socket, None),
        (None, Some(path)) => (
            PathBuf::new(),
            Some(DiskImage {
                path,
                readonly: readonly.unwrap_or(false),
            }),
        ),
        (None, None) if kind == DeviceKind::Block => {
            return Err(
                "missing socket=PATH (the vhost-user backend's socket) or path=IMAGE".into(),
            )
        }
        (None, None) if kind == DeviceKind::Net => {
            return Err("missing socket=PATH (the vhost-user backend's socket) or tap=NAME".into())
        }
        (None, None) => return Err("missing socket=PATH (the vhost-user backend's socket)".into()),
    };
    if kind == DeviceKind::Fs && tag.is_none() {
        return Err("missing tag=TAG (the tag the guest mounts)".into());
    }
    let default_queues = match kind {
        DeviceKind::Fs => 1,
        // RX and TX (net), every queue (the rest).
        k => k.default_queues(),
    };
    let num_queues = match &tap {
        Some(NetTap::Fds(fds)) => {
            let n = fds.0.len();
            match num_queues {
                Some(q) if q != 2 * n => {
                    return Err(format!(
                        "num_queues={q} does not match the {n} tap descriptor(s) sent \
                         (one per queue pair: num_queues={})",
                        2 * n
                    ))
                }
                _ => 2 * n,
            }
        }
        _ => num_queues.unwrap_or(default_queues),
    };
    if num_queues == 0 || num_queues > MAX_QUEUES {
        return Err(format!(
            "num_queues={num_queues} is not from 1 to {MAX_QUEUES}"
        ));
    }
    if kind == DeviceKind::Net && num_queues % 2 != 0 {
        return Err(format!(
            "num_queues={num_queues} is odd; it counts RX and TX queues, 2 per pair"
        ));
    }
    Ok(VhostUserConfig {
        kind,
        socket,
        image,
        num_queues,
        queue_size: queue_size.unwrap_or_else(|| kind.default_queue_size()),
        tag,
        mac,
        tap,
        reconnect,
        vsock: None,
        config_size: None,
    })
}

/// `on`/`off` (also `true`/`false`) of `key`.
fn parse_switch(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("{key}={v} is not on or off")),
    }
}

/// `reconnect=SECS|off`.
fn parse_reconnect(v: &str) -> Result<Reconnect, String> {
    match v {
        "off" => Ok(Reconnect::Off),
        "0" => Ok(Reconnect::Forever),
        _ => v
            .parse::<u64>()
            .map(|s| Reconnect::For(std::time::Duration::from_secs(s)))
            .map_err(|_| format!("reconnect={v} is not seconds (0 = forever) or `off`")),
    }
}

pub fn parse_disk(s: &str) -> Result<VhostUserConfig, String> {
    parse_vhost_user(DeviceKind::Block, s)
}

pub fn parse_fs(s: &str) -> Result<VhostUserConfig, String> {
    parse_vhost_user(DeviceKind::Fs, s)
}

pub fn parse_net(s: &str) -> Result<VhostUserConfig, String> {
    let parts = split_outside_brackets(s);
    let (fds, rest): (Vec<&str>, Vec<&str>) = parts.iter().partition(|p| p.starts_with("fd="));
    match fds[..] {
        [] => parse_vhost_user(DeviceKind::Net, s),
        [fd] => {
            let queues = inherited_tap_queues(&fd["fd=".len()..])?;
            vhost_user_with_tap_fds(DeviceKind::Net, &pairs(&rest.join(","))?, Some(queues))
        }
        _ => Err("`fd` is given twice".into()),
    }
}

/// `--net fd=N` or `fd=[N,M,...]` (Cloud Hypervisor's form): open tap
/// queues this process inherited, one per queue pair. Each is duplicated
/// (F_DUPFD_CLOEXEC) into a descriptor the plan owns, then checked to be
/// a tap queue; the inherited number itself is left as it was.
fn inherited_tap_queues(v: &str) -> Result<TapFds, String> {
    use std::os::fd::{FromRawFd, OwnedFd};

    use nix::fcntl::{fcntl, FcntlArg};
    let list = v
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .unwrap_or(v);
    let mut numbers: Vec<i32> = Vec::new();
    for n in list.split(',') {
        let fd = match n.trim().parse::<i32>() {
            Ok(fd) if fd > 2 => fd,
            _ => return Err(format!("fd=`{n}` is not a descriptor number above 2")),
        };
        if numbers.contains(&fd) {
            return Err(format!("fd={fd} is given twice"));
        }
        numbers.push(fd);
    }
    let mut fds = Vec::new();
    for fd in numbers {
        let copy = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3))
            .map_err(|e| format!("fd={fd}: not an open descriptor of the vmm ({e})"))?;
        // SAFETY: F_DUPFD_CLOEXEC just returned `copy`, a new descriptor
        // that nothing else owns.
        let copy = unsafe { OwnedFd::from_raw_fd(copy) };
        check_tap_queue(&copy).map_err(|why| format!("fd={fd} {why}"))?;
        fds.push(copy);
    }
    Ok(TapFds(std::sync::Arc::new(fds)))
}

/// Whether `fd` is a tap queue: opened from `/dev/net/tun` (character
/// device 10, 200); the daemon checks its flags when it starts. The error
/// reads after the descriptor's name: "is not a tap queue ...".
pub fn check_tap_queue(fd: &std::os::fd::OwnedFd) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let st = nix::sys::stat::fstat(fd.as_raw_fd())
        .map_err(|e| format!("cannot be examined (fstat: {e})"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != libc::makedev(10, 200) {
        return Err("is not a tap queue (/dev/net/tun)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks that `parse` refuses each input with an error that says the
    /// text paired with it; a failure names the input.
    pub(super) fn refuses(
        parse: fn(&str) -> Result<VhostUserConfig, String>,
        cases: &[(&str, &str)],
    ) {
        for (bad, says) in cases {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("1MB").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn memory() {
        assert_eq!(
            parse_memory("size=64M"),
            Ok(MemoryConfig {
                size: 64 << 20,
                ..MemoryConfig::default()
            })
        );
        assert_eq!(
            parse_memory("size=1G,file=/dev/shm/x"),
            Ok(MemoryConfig {
                size: 1 << 30,
                file: Some("/dev/shm/x".into()),
                ..MemoryConfig::default()
            })
        );
        assert!(parse_memory("size=1000K")
            .unwrap_err()
            .contains("multiple of 1 MiB"));
        assert!(parse_memory("size=1M").unwrap_err().contains("from 2M"));
        assert!(parse_memory("file=/x")
            .unwrap_err()
            .contains("missing size"));
        assert!(parse_memory("size=64M,colour=blue")
            .unwrap_err()
            .contains("unknown key"));
        assert!(parse_memory("64M").unwrap_err().contains("key=value"));
        // Huge pages and preallocation, in Cloud Hypervisor's and QEMU's words.
        let m = parse_memory("size=64M,hugepages=on,prefault=on,shared=on").unwrap();
        assert_eq!((m.hugepage_size, m.prefault), (Some(2 << 20), true));
        let m = parse_memory("size=2G,hugepages=on,hugepage_size=1G,prealloc=on").unwrap();
        assert_eq!((m.hugepage_size, m.prefault), (Some(1 << 30), true));
        for (bad, says) in [
            ("size=64M,shared=off", "always shared"),
            ("size=64M,hugepage_size=2M", "goes with hugepages=on"),
            (
                "size=64M,hugepages=on,hugepage_size=4M",
                "the sizes are 2M and 1G",
            ),
            (
                "size=65M,hugepages=on",
                "not a multiple of the 2 MiB huge page",
            ),
            (
                "size=512M,hugepages=on,hugepage_size=1G",
                "not a multiple of the 1024 MiB",
            ),
            ("size=64M,hugepages=on,file=/dev/shm/x", "not both"),
            ("size=64M,prefault=yes", "prefault=yes is not on or off"),
        ] {
            let e = parse_memory(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("boot=2"), Ok(CpusConfig::new(2)));
        assert!(parse_cpus("boot=0").is_err());
        assert!(parse_cpus("boot=255").is_err());
        assert!(parse_cpus("max=4").is_err());
        assert!(parse_cpus("boot=two").is_err());
    }

    #[test]
    fn cpus_with_max_topology_affinity_and_pmu() {
        let host = [0, 1, 2, 3, 4, 5, 6];
        let c = parse_cpus_on(
            "boot=2,max=4,topology=1:2:1:2,affinity=[0@[2,3],1@[4-6]],kvm_hyperv=off,pmu=off",
            &host,
        )
        .unwrap();
        assert_eq!((c.boot, c.max, c.pmu), (2, 4, false));
        let t = c.topology.unwrap();
        assert_eq!(topology_string(&t), "1:2:1:2");
        assert_eq!(c.host_cpus(0), Some(&[2, 3][..]));
        assert_eq!(c.host_cpus(1), Some(&[4, 5, 6][..]));
        assert_eq!(c.host_cpus(2), None);
        // Defaults: max = boot, 1:max:1:1, a PMU, no pinning.
        let c = parse_cpus_on("boot=3", &host).unwrap();
        assert_eq!((c.max, c.pmu, c.affinity.len()), (3, true, 0));
        assert_eq!(c.topology(), CpuTopology::flat(3));
        assert_eq!(
            parse_cpus_on("boot=1,affinity=[]", &host).unwrap().affinity,
            []
        );
    }

    #[test]
    fn cpus_errors_name_the_key() {
        let host = [0, 1];
        for (bad, says) in [
            ("boot=4,max=2", "max: max 2 is below boot 4"),
            (
                "boot=2,max=4,topology=1:2:1:1",
                "topology: 1:2:1:1 makes 2 vCPUs, not max 4",
            ),
            (
                "boot=2,topology=0:2:1:1",
                "topology: 0:2:1:1: no count may be 0",
            ),
            (
                "boot=2,topology=1:2:1",
                "topology=1:2:1 is not threads:cores:dies:packages",
            ),
            (
                "boot=2,topology=a:b:c:d",
                "is not threads:cores:dies:packages",
            ),
            (
                "boot=2,affinity=[2@[0]]",
                "affinity: vCPU 2 is not below max 2",
            ),
            ("boot=2,affinity=[0@[0],0@[1]]", "vCPU 0 given twice"),
            ("boot=2,affinity=[0@[]]", "vCPU 0: no host CPU"),
            (
                "boot=2,affinity=[0@[5]]",
                "host CPU 5 is not one this process may run on (0-1)",
            ),
            ("boot=2,affinity=0@[1]", "affinity=0@[1]: not in brackets"),
            ("boot=2,affinity=[0:[1]]", "`0:[1]` is not VCPU@[CPUS]"),
            ("boot=2,affinity=[0@1]", "`1` is not [CPUS]"),
            ("boot=2,affinity=[0@[3-1]]", "`3-1` is not a range"),
            ("boot=2,affinity=[x@[1]]", "`x` is not a vCPU number"),
            ("boot=2,kvm_hyperv=on", "no Hyper-V"),
            ("boot=2,pmu=maybe", "pmu=maybe is not on or off"),
            ("boot=2,max=255", "max=255 is not from 1 to 254"),
            ("boot=2,sockets=2", "unknown key `sockets`"),
            ("boot=2,max", "`max` is not key=value"),
            // 65 cores take 7 bits: the third package starts at 256.
            (
                "boot=1,max=195,topology=1:65:1:3",
                "gives APIC ids up to 320",
            ),
        ] {
            let e = parse_cpus_on(bad, &host).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        // The last APIC id that fits: 1:127:1:2's vCPU 253 is 128 + 126.
        let c = parse_cpus_on("boot=1,max=254,topology=1:127:1:2", &host).unwrap();
        assert_eq!(c.topology().apic_id(253), 254);
    }

    #[test]
    fn cpu_lists_read_as_proc_shows_them() {
        assert_eq!(cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(cpu_list(&[3]), "3");
        assert_eq!(cpu_list(&[]), "");
        assert!(!host_cpus().is_empty(), "this process runs somewhere");
    }

    #[test]
    fn serial() {
        assert_eq!(parse_serial("stdio"), Ok(SerialConfig::Stdio));
        assert_eq!(parse_serial("off"), Ok(SerialConfig::Off));
        assert_eq!(
            parse_serial("file=/tmp/s"),
            Ok(SerialConfig::File("/tmp/s".into()))
        );
        assert_eq!(
            parse_serial("socket=/tmp/s"),
            Ok(SerialConfig::Socket("/tmp/s".into()))
        );
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("pty").is_err());
    }

    #[test]
    fn command_line() {
        let a = Args::try_parse_from([
            "vmm", "--kernel", "k", "--cpus", "boot=2", "--memory", "size=64M",
        ])
        .unwrap();
        assert_eq!(a.cpus.boot, 2);
        assert_eq!(a.memory.size, 64 << 20);
        assert_eq!(a.serial, SerialConfig::Stdio);
        assert!(Args::try_parse_from(["vmm"]).is_err());
        assert!(Args::try_parse_from(["vmm", "--kernel", "k", "--memory", "size=3M5"]).is_err());
    }

    #[test]
    fn kata_flags_and_an_empty_vmm() {
        // Kata's launch: the API socket alone, `-v`, `--seccomp false`.
        let a = Args::try_parse_from([
            "vmm",
            "--api-socket",
            "/run/clh-api.sock",
            "-v",
            "--seccomp",
            "false",
            "--log-file",
            "/tmp/vmm.log",
        ])
        .unwrap();
        assert_eq!(a.kernel, None);
        assert_eq!(a.seccomp, Mode::Off);
        assert_eq!(a.log_file.as_deref(), Some("/tmp/vmm.log".as_ref()));
        assert_eq!(a.log_filter(), log::LevelFilter::Debug);
        let a = Args::try_parse_from(["vmm", "--api-socket", "/a", "-vvvv"]).unwrap();
        assert_eq!(a.log_filter(), log::LevelFilter::Trace);
        let a = Args::try_parse_from(["vmm", "--api-socket", "/a", "--log-level", "off", "-v"])
            .unwrap();
        assert_eq!(a.log_filter(), log::LevelFilter::Error);
        let a = Args::try_parse_from(["vmm", "--kernel", "k"]).unwrap();
        assert_eq!(
            (a.log_filter(), a.seccomp),
            (log::LevelFilter::Info, Mode::Kill)
        );
        // Neither a kernel nor an API socket: nothing could ever run.
        let e = Args::try_parse_from(["vmm", "-v"]).unwrap_err().to_string();
        assert!(e.contains("--kernel"), "{e}");
        assert!(Args::try_parse_from(["vmm", "--api-socket", "/a", "--seccomp", "no"]).is_err());
    }

    #[test]
    fn counts_and_sizes_checked_alone() {
        assert_eq!(check_vcpus(1), Ok(1));
        assert_eq!(check_vcpus(254), Ok(254));
        assert!(check_vcpus(0)
            .unwrap_err()
            .contains("0 is not from 1 to 254"));
        assert!(check_vcpus(256).is_err());
        assert_eq!(check_memory_size(64 << 20), Ok(64 << 20));
        assert!(check_memory_size(1)
            .unwrap_err()
            .contains("multiple of 1 MiB"));
        assert!(check_memory_size(2 << 40).is_err());
    }

    #[test]
    fn disks() {
        let d = parse_disk("socket=/run/blk.sock").unwrap();
        assert_eq!(
            d,
            VhostUserConfig {
                kind: DeviceKind::Block,
                socket: "/run/blk.sock".into(),
                image: None,
                num_queues: 1,
                queue_size: 256,
                tag: None,
                mac: None,
                tap: None,
                reconnect: Reconnect::Forever,
                vsock: None,
                config_size: None,
            }
        );
        assert_eq!(d.device_queues(), 1);
        // An image the vmm serves with its own vhost-blk-daemon.
        let d = parse_disk("path=/img/root.raw,readonly=on,num_queues=2").unwrap();
        assert_eq!(
            d.image,
            Some(DiskImage {
                path: "/img/root.raw".into(),
                readonly: true
            })
        );
        assert_eq!((d.socket, d.num_queues), (PathBuf::new(), 2));
        assert!(!parse_disk("path=/i").unwrap().image.unwrap().readonly);
        refuses(
            parse_disk,
            &[
                ("socket=/s,path=/i", "not both"),
                ("socket=/s,readonly=on", "goes with path=IMAGE"),
                ("path=/i,readonly=yes", "readonly=yes is not on or off"),
                ("path=", "path= needs a disk image"),
                ("num_queues=1", "or path=IMAGE"),
            ],
        );
        refuses(parse_fs, &[("tag=t,path=/i", "unknown key `path`")]);
        let r = |s: &str| parse_disk(s).map(|d| d.reconnect);
        assert_eq!(r("socket=/b,reconnect=0"), Ok(Reconnect::Forever));
        assert_eq!(r("socket=/b,reconnect=off"), Ok(Reconnect::Off));
        assert_eq!(
            r("socket=/b,reconnect=5"),
            Ok(Reconnect::For(std::time::Duration::from_secs(5)))
        );
        assert!(r("socket=/b,reconnect=-1")
            .unwrap_err()
            .contains("not seconds"));
        assert_eq!(
            parse_fs("tag=t,socket=/f").map(|d| d.reconnect),
            Ok(Reconnect::Forever)
        );
        let d = parse_disk("num_queues=4,socket=/b,queue_size=128").unwrap();
        assert_eq!((d.num_queues, d.queue_size, d.device_queues()), (4, 128, 4));
        refuses(
            parse_disk,
            &[
                ("num_queues=2", "missing socket=PATH"),
                ("socket=", "socket= needs a path"),
                ("socket=/b,tag=x", "unknown key `tag`"),
                ("socket=/b,num_queues=two", "num_queues=two is not a number"),
                ("socket=/b,num_queues=0", "num_queues=0"),
                ("socket=/b,num_queues=257", "from 1 to 256"),
                ("socket=/b,queue_size=100", "not a power of two"),
                ("socket=/b,queue_size=0", "not a power of two"),
                (
                    "socket=/b,queue_size=65536",
                    "queue_size=65536 is not a number",
                ),
                ("socket=/b,queue_size=x", "not a number"),
                ("socket=/a,socket=/b", "given twice"),
                ("/b", "key=value"),
            ],
        );
    }

    #[test]
    fn shares() {
        let f = parse_fs("tag=myfs,socket=/f").unwrap();
        assert_eq!(f.tag.as_deref(), Some("myfs"));
        assert_eq!(
            (f.num_queues, f.queue_size, f.device_queues()),
            (1, 1024, 2)
        );
        let tag36 = "t".repeat(36);
        assert!(parse_fs(&format!("tag={tag36},socket=/f")).is_ok());
        refuses(
            parse_fs,
            &[
                (
                    &format!("tag={tag36}x,socket=/f"),
                    "37 bytes; a tag has 1 to 36",
                ),
                ("tag=,socket=/f", "0 bytes"),
                ("socket=/f", "missing tag=TAG"),
                ("tag=x", "missing socket=PATH"),
                ("tag=x,socket=/f,mac=52:54:00:00:00:01", "unknown key `mac`"),
            ],
        );
    }

    #[test]
    fn nics() {
        let n = parse_net("socket=/n,mac=52:54:00:12:34:5f").unwrap();
        assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x5f]));
        assert_eq!((n.num_queues, n.queue_size, n.device_queues()), (2, 256, 3));
        let n = parse_net("socket=/n,num_queues=4").unwrap();
        assert_eq!((n.mac, n.device_queues()), (None, 5));
        for bad in [
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "52:54:00:12:34:5g",
            "52:54:0:12:34:56",
            "525400123456",
            "",
        ] {
            refuses(
                parse_net,
                &[(&format!("socket=/n,mac={bad}"), "is not a MAC address")],
            );
        }
        refuses(
            parse_net,
            &[
                ("socket=/n,num_queues=3", "num_queues=3 is odd"),
                ("socket=/n,mac=01:00:5e:00:00:01", "multicast"),
                ("mac=52:54:00:12:34:56", "missing socket=PATH"),
                ("socket=/n,tag=x", "unknown key `tag`"),
            ],
        );
    }

    /// `--net fd=`: numbers above 2, each once, open, and tap queues (an
    /// open /dev/null is not one); the real tap queue is in the `vmm`
    /// test binary's `spawned` tests.
    #[test]
    fn inherited_tap_descriptors_are_checked() {
        use std::os::fd::AsRawFd;
        let null = std::fs::File::open("/dev/null").unwrap();
        let n = null.as_raw_fd();
        refuses(
            parse_net,
            &[
                ("fd=2", "fd=`2` is not a descriptor number above 2"),
                ("fd=[3,x]", "fd=`x` is not a descriptor number"),
                ("fd=[7,7]", "fd=7 is given twice"),
                ("fd=3,fd=4", "`fd` is given twice"),
                (
                    "fd=1000000",
                    "fd=1000000: not an open descriptor of the vmm",
                ),
                (&format!("fd={n}"), &format!("fd={n} is not a tap queue")),
                (&format!("fd=[{n}],tap=t0"), "is not a tap queue"),
            ],
        );
    }

    #[test]
    fn a_nic_on_a_tap_the_vmm_serves() {
        let n = parse_net("tap=tap0,num_queues=4,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(n.tap, Some(NetTap::Name("tap0".into())));
        assert_eq!((n.socket, n.num_queues), (PathBuf::new(), 4));
        refuses(
            parse_net,
            &[
                ("tap=t0,socket=/n", "not both"),
                ("tap=", "not an interface name"),
                ("tap=a/b", "not an interface name"),
                ("tap=abcdefghijklmnop", "not an interface name"),
                (
                    "num_queues=2",
                    "missing socket=PATH (the vhost-user backend's socket) or tap=NAME",
                ),
            ],
        );
        refuses(parse_disk, &[("tap=t0", "unknown key `tap`")]);
        // Descriptors sent with vm.add-net: one per queue pair.
        let fds = |n: usize| {
            let all = (0..n)
                .map(|_| std::fs::File::open("/dev/null").unwrap().into())
                .collect();
            TapFds(std::sync::Arc::new(all))
        };
        let two = fds(2);
        let n = vhost_user_with_tap_fds(DeviceKind::Net, &[], Some(two.clone())).unwrap();
        assert_eq!((n.num_queues, n.tap), (4, Some(NetTap::Fds(two.clone()))));
        let e = vhost_user_with_tap_fds(DeviceKind::Net, &[("num_queues", "2")], Some(two.clone()));
        assert!(e
            .unwrap_err()
            .contains("does not match the 2 tap descriptor(s)"));
        let e = vhost_user_with_tap_fds(DeviceKind::Net, &[("tap", "t0")], Some(two.clone()));
        assert!(e.unwrap_err().contains("not both"));
        let e = vhost_user_with_tap_fds(DeviceKind::Net, &[("socket", "/n")], Some(two));
        assert!(e.unwrap_err().contains("not both"));
        assert_ne!(fds(1), fds(1), "equal only when the same descriptors");
    }

    #[test]
    fn devices_on_the_command_line() {
        let a = Args::try_parse_from([
            "vmm",
            "--kernel",
            "k",
            "--net",
            "socket=/n",
            "--disk",
            "socket=/b1",
            "--fs",
            "tag=t,socket=/f",
            "--disk",
            "socket=/b2",
        ])
        .unwrap();
        let order: Vec<_> = a
            .vhost_user_devices()
            .into_iter()
            .map(|d| d.socket.display().to_string())
            .collect();
        assert_eq!(order, ["/b1", "/b2", "/f", "/n"]);
        let e = Args::try_parse_from(["vmm", "--kernel", "k", "--disk", "queue_size=64"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--disk") && e.contains("missing socket=PATH"),
            "{e}"
        );
    }
}
