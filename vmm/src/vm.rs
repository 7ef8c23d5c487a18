//! The VM: KVM with the in-kernel irqchip and PIT, guest RAM, ACPI tables,
//! the kernel, the legacy devices on the port-I/O bus, and one thread per
//! vCPU, and the vhost-user devices (connected before any vCPU runs, their
//! sockets watched by the `vu-watch` thread). [`Vm::run`] returns when the
//! guest powers off or resets, or a vCPU fails; [`Vm::run_serving`] (with
//! the control API) returns on `vmm.shutdown`. [`Vm::controller`] is what
//! the API acts on.

use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvm_bindings::{
    kvm_enable_cap, kvm_pit_config, kvm_userspace_memory_region, KVM_CAP_PMU_CAPABILITY,
    KVM_PIT_SPEAKER_DUMMY, KVM_PMU_CAP_DISABLE,
};
use kvm_ioctls::{Kvm, VmFd};

use crate::acpi::{self, AcpiError};
use crate::boot::{self, BootConfig, BootError};
use crate::bus::{Bus, BusError};
use crate::control::VmController;
use crate::event::VmEvent;
use crate::irq::IrqRouter;
use crate::layout;
use crate::memory::{GuestRam, MemoryError};
use crate::pci::{PciError, PciHost};
use crate::platform::{
    self, cmos, AcpiPm, Cmos, DebugPort, DebugPortAt, PmTimer, SerialDevice, SerialError, I8042,
};
use devices::vhost_user::DeviceKind;

use std::ffi::OsString;

use crate::cli::{HybridVsock, NetTap, VhostUserConfig};
use crate::spawned::{DaemonSpec, Listen, RuntimeDir, SpawnError, Supervised};

/// The vsock backend the VMM runs for `--vsock` (rust-vmm's, from
/// crates.io; `scripts/setup.sh` installs it), found next to the `vmm` or
/// on `PATH`.
pub const VSOCK_DAEMON: &str = "vhost-device-vsock";
use crate::vcpu::setup::CpuError;
use crate::vcpu::{self, Vcpu, VcpuCounters, VcpuGate};
use crate::vhost_user::{
    ActivationThread, DeviceError, DeviceInfo, Handshakes, VhostUserPci, Watcher,
};

pub use crate::config::VmConfig;

/// How the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmExit {
    PowerOff,
    Reset,
    /// Stopped through the control API (`vm.shutdown` or `vmm.shutdown`).
    Stopped,
    /// `vm.reboot`, or a guest reset without `--no-reboot`: the lifecycle
    /// builds the VM again from its config.
    Reboot,
}

/// Errors of [`Vm`]; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("opening /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM_CREATE_VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("KVM_ENABLE_CAP KVM_CAP_PMU_CAPABILITY (pmu=off)")]
    DisablePmu(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR")]
    SetTss(#[source] kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP")]
    CreateIrqchip(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_GSI_ROUTING (the irqchip routes)")]
    IrqRouting(#[source] std::io::Error),
    #[error("KVM_CREATE_PIT2")]
    CreatePit(#[source] kvm_ioctls::Error),
    #[error("{0} vCPUs requested, KVM allows {1}")]
    TooManyVcpus(u8, usize),
    #[error("guest memory")]
    Memory(#[from] MemoryError),
    #[error("KVM_SET_USER_MEMORY_REGION slot {slot}")]
    SetMemory {
        slot: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("ACPI tables")]
    Acpi(#[from] AcpiError),
    #[error("boot")]
    Boot(#[from] BootError),
    #[error("device setup")]
    Serial(#[from] SerialError),
    #[error("device bus")]
    Bus(#[from] BusError),
    #[error("PCI")]
    Pci(#[from] PciError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("control API")]
    Api(#[source] crate::api::ApiError),
    #[error("starting the vu-watch thread")]
    Watch(#[source] std::io::Error),
    #[error("starting the vu-activate thread")]
    Activation(#[source] std::io::Error),
    #[error("a backend daemon the VMM runs")]
    Backend(#[from] SpawnError),
    #[error("KVM_IRQFD for IRQ {irq}")]
    Irqfd {
        irq: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM_CREATE_VCPU {id}")]
    CreateVcpu {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}")]
    Cpu {
        id: u8,
        #[source]
        source: CpuError,
    },
    #[error("starting vCPU thread {id}")]
    Spawn {
        id: u8,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Guest(String),
    #[error("every vCPU ended without powering off")]
    NoVcpus,
}

/// A VM ready to run.
pub struct Vm {
    // Field order is drop order: the watcher first, vCPUs and the VM fd
    // before guest RAM.
    _watcher: Option<Watcher>,
    devices: Vec<Arc<VhostUserPci>>,
    vcpus: Vec<Vcpu>,
    pci: Option<Arc<PciHost>>,
    irq: Arc<IrqRouter>,
    _vm: Arc<VmFd>,
    _kvm: Kvm,
    ram: GuestRam,
    events: Receiver<VmEvent>,
    events_tx: Sender<VmEvent>,
    control: Arc<VmController>,
    /// A guest reset ends the run as [`VmExit::Reboot`] (else as
    /// [`VmExit::Reset`]).
    reboot_on_reset: bool,
    /// The daemons this VMM runs, stopped after every device is gone.
    _backends: Backends,
}

/// The backend daemons the VMM runs itself (`--disk path=IMAGE`, `--net
/// tap=NAME`, `vm.add-net` with tap queues), and the private directory of
/// their sockets.
#[derive(Debug, Default)]
struct Backends {
    daemons: Vec<Supervised>,
    dir: Option<RuntimeDir>,
}

impl Backends {
    /// Starts a `vhost-blk-daemon` for each disk with an image and a
    /// `vhost-net-daemon` for each NIC with a tap; returns them and the
    /// device configs, each such device's socket its daemon's.
    /// The private directory of the daemons' sockets, made on first use.
    fn dir(&mut self) -> Result<&RuntimeDir, VmError> {
        match self.dir {
            Some(ref dir) => Ok(dir),
            None => Ok(self.dir.insert(RuntimeDir::create()?)),
        }
    }

    fn start(devices: &[VhostUserConfig]) -> Result<(Backends, Vec<VhostUserConfig>), VmError> {
        let mut backends = Backends::default();
        let mut configs = Vec::with_capacity(devices.len());
        let (mut disk, mut nic) = (0, 0);
        for d in devices {
            let mut d = d.clone();
            let spec = match (&d.image, &d.tap) {
                (Some(image), _) => {
                    let mut args: Vec<OsString> = vec![
                        "--blk-file".into(),
                        image.path.clone().into(),
                        "--num-queues".into(),
                        d.num_queues.to_string().into(),
                        "--queue-size".into(),
                        d.queue_size.max(2).to_string().into(),
                    ];
                    if image.readonly {
                        args.push("--read-only".into());
                    }
                    // Jailed where it can be (the namespace jail needs
                    // root's CAP_SYS_ADMIN): an empty root, no capabilities.
                    if nix::unistd::geteuid().is_root() {
                        args.extend(["--sandbox".into(), "namespace".into()]);
                    }
                    Some(("vhost-blk-daemon", format!("disk{disk}"), args, None))
                }
                (None, Some(tap)) => {
                    let (args, fds) = net_daemon_args(&d, tap);
                    Some(("vhost-net-daemon", format!("net{nic}"), args, fds))
                }
                (None, None) => None,
            };
            let spec = match (spec, &d.vsock) {
                (Some((program, name, args, fds)), _) => Some(DaemonSpec {
                    program: program.into(),
                    args,
                    socket: backends.dir()?.path().join(format!("{name}.sock")),
                    name,
                    fds: fds.unwrap_or_default(),
                    listen: Listen::Fd,
                    leaves: Vec::new(),
                }),
                (None, Some(vsock)) => {
                    let socket = backends.dir()?.path().join("vsock.sock");
                    Some(vsock_daemon(&d, vsock, socket))
                }
                (None, None) => None,
            };
            if let Some(spec) = spec {
                let daemon = Supervised::start(spec)?;
                d.socket = daemon.socket().to_path_buf();
                backends.daemons.push(daemon);
            }
            match d.kind {
                DeviceKind::Block => disk += 1,
                DeviceKind::Net => nic += 1,
                _ => {}
            }
            configs.push(d);
        }
        Ok((backends, configs))
    }
}

/// rust-vmm's `vhost-device-vsock` for vsock `d`: it binds its vhost-user
/// socket at `socket` itself (it takes no `--fd`) and the hybrid socket
/// at `vsock.socket`, which it leaves behind when it ends. Not jailed: it
/// has no sandbox of its own (its process is the VMM's child, dies with
/// it, and runs without the VMM's seccomp filter).
fn vsock_daemon(d: &VhostUserConfig, vsock: &HybridVsock, socket: PathBuf) -> DaemonSpec {
    let vm = format!(
        "guest-cid={},socket={},uds-path={},queue-size={}",
        vsock.cid,
        socket.display(),
        vsock.socket.display(),
        d.queue_size
    );
    DaemonSpec {
        program: VSOCK_DAEMON.into(),
        args: vec!["--vm".into(), vm.into()],
        socket,
        name: "vsock0".into(),
        fds: Arc::default(),
        listen: Listen::Own,
        leaves: vec![vsock.socket.clone()],
    }
}

/// `vhost-net-daemon`'s options for NIC `d` on `tap`, and the tap queues
/// to pass it (as `--tap-fd 4`, `5`, ...).
fn net_daemon_args(
    d: &VhostUserConfig,
    tap: &NetTap,
) -> (Vec<OsString>, Option<Arc<Vec<std::os::fd::OwnedFd>>>) {
    let mut args: Vec<OsString> = vec![
        "--num-queue-pairs".into(),
        (d.num_queues / 2).to_string().into(),
        "--queue-size".into(),
        d.queue_size.max(2).to_string().into(),
    ];
    if let Some(mac) = d.mac {
        let mac: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        args.extend(["--mac".into(), mac.join(":").into()]);
    }
    // The namespace jail (an empty root, no network of its own but the
    // tap's queues, no capabilities) needs root's CAP_SYS_ADMIN.
    let sandbox = if nix::unistd::geteuid().is_root() {
        "namespace"
    } else {
        "none"
    };
    args.extend(["--sandbox".into(), sandbox.into()]);
    let fds = match tap {
        NetTap::Name(name) => {
            args.extend(["--tap".into(), name.into()]);
            None
        }
        NetTap::Fds(fds) => {
            for i in 0..fds.0.len() {
                args.extend([
                    "--tap-fd".into(),
                    DaemonSpec::fd_number(i).to_string().into(),
                ]);
            }
            Some(fds.0.clone())
        }
    };
    (args, fds)
}

impl Vm {
    /// Builds the VM; `start` is when the VMM started (for boot timings);
    /// `again`: a reboot of the same config (the serial file is appended
    /// to, so what the guest wrote before the reboot stays).
    pub fn new(config: &VmConfig, start: Instant, again: bool) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let max = kvm.get_max_vcpus();
        if usize::from(config.cpus.max) > max {
            return Err(VmError::TooManyVcpus(config.cpus.max, max));
        }
        let vm = kvm.create_vm().map_err(VmError::CreateVm)?;
        if !config.cpus.pmu {
            disable_pmu(&vm)?;
        }
        let ram = GuestRam::new(&config.memory)?;
        let vm = Arc::new(vm);
        // The vhost-user handshakes wait on the backends: they run on their
        // own threads while KVM, the tables and the kernel are set up, and
        // are over before any vCPU runs (the guest may read a device's
        // configuration from its first instructions on).
        let irq = Arc::new(IrqRouter::new(vm.clone()));
        let (backends, device_configs) = Backends::start(&config.devices)?;
        let handshakes = Handshakes::start(
            device_configs
                .iter()
                .map(|d| VhostUserPci::prepare(d, &irq, ram.memory()))
                .collect::<Result<Vec<_>, _>>()?,
        )?;
        // The memory slots go in before the irqchip and the PIT. Each of
        // these ioctls waits for an SRCU grace period of the VM; measured
        // (30 runs), KVM_SET_USER_MEMORY_REGION took 6.4 ms (median) right
        // after KVM_CREATE_IRQCHIP and KVM_CREATE_PIT2, and 0.2 ms before
        // them, which then stay under 0.1 ms. Firecracker's order too.
        for (slot, (addr, size, host)) in ram.regions().into_iter().enumerate() {
            let region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: addr.0,
                memory_size: size,
                userspace_addr: host,
            };
            // SAFETY: the region is a live mapping owned by `ram`, which the
            // Vm keeps until after the VM fd and the vCPUs are gone.
            unsafe { vm.set_user_memory_region(region) }.map_err(|source| VmError::SetMemory {
                slot: slot as u32,
                source,
            })?;
        }
        vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(VmError::SetTss)?;
        vm.create_irq_chip().map_err(VmError::CreateIrqchip)?;
        irq.install_irqchip_routes().map_err(VmError::IrqRouting)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm.create_pit2(pit).map_err(VmError::CreatePit)?;

        let mmio64 = layout::pci_mmio64_window(config.memory.size);
        let numa = acpi::NumaTopology::new(&config.cpus, &config.memory, &config.numa);
        let rsdp = acpi::write_tables(ram.memory(), &config.cpus, numa.as_ref(), mmio64)?;
        let entry = boot::load(
            ram.memory(),
            &BootConfig {
                kernel: &config.kernel,
                initramfs: config.initramfs.as_deref(),
                cmdline: &config.cmdline,
                rsdp,
            },
        )?;
        log::info!(
            "kernel {}: {:?} entry at {:#x}",
            config.kernel.display(),
            entry.protocol,
            entry.entry.0
        );

        let (events_tx, events) = channel();
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let serial = SerialDevice::new(&config.serial, again)?;
        vm.register_irqfd(serial.irq(), platform::COM1_IRQ)
            .map_err(|source| VmError::Irqfd {
                irq: platform::COM1_IRQ,
                source,
            })?;
        pio.insert(platform::COM1_PORT, 8, Arc::new(Mutex::new(serial)))?;
        pio.insert(
            platform::I8042_PORT,
            5,
            Arc::new(Mutex::new(I8042::new(events_tx.clone()))),
        )?;
        let sci_vm = vm.clone();
        let sci = Box::new(move |level: bool| {
            if let Err(e) = sci_vm.set_irq_line(u32::from(acpi::SCI_IRQ), level) {
                log::warn!("acpi: KVM_IRQ_LINE {} = {level}: {e}", acpi::SCI_IRQ);
            }
        });
        let pm = Arc::new(Mutex::new(AcpiPm::new(events_tx.clone()).with_sci(sci)));
        let (pm_base, pm_len) = AcpiPm::range();
        pio.insert(pm_base, pm_len, pm.clone())?;
        pio.insert(
            u64::from(acpi::PM_TMR_PORT),
            u64::from(acpi::PM_TMR_LEN),
            Arc::new(Mutex::new(PmTimer::new())),
        )?;
        pio.insert(
            cmos::CMOS_PORT,
            2,
            Arc::new(Mutex::new(Cmos::new(Box::new(cmos::host_clock)))),
        )?;
        let pci = PciHost::new(mmio64, vm.clone(), events_tx.clone())?;
        pci.attach(&pio, &mmio, mmio64)?;
        let base_cpuid =
            vcpu::setup::supported_cpuid(&kvm).map_err(|source| VmError::Cpu { id: 0, source })?;
        let gate = Arc::new(VcpuGate::new());
        let mut counters = Vec::new();
        let mut vcpus = Vec::new();
        let topology = config.cpus.topology();
        for id in 0..config.cpus.boot {
            // KVM's vCPU id is the LAPIC's initial APIC id.
            let fd = vm
                .create_vcpu(u64::from(topology.apic_id(u32::from(id))))
                .map_err(|source| VmError::CreateVcpu { id, source })?;
            let cpu_err = |source| VmError::Cpu { id, source };
            let spec = vcpu::setup::CpuidSpec {
                topology,
                index: id,
                pmu: config.cpus.pmu,
            };
            let cpuid = vcpu::setup::cpuid_for(&base_cpuid, &spec).map_err(cpu_err)?;
            vcpu::setup::configure(&fd, &cpuid).map_err(cpu_err)?;
            if id == 0 {
                vcpu::setup::setup_boot_vcpu(&fd, ram.memory(), &entry).map_err(cpu_err)?;
            }
            let c = Arc::new(VcpuCounters::default());
            counters.push(c.clone());
            vcpus.push(Vcpu {
                id,
                fd,
                pio: pio.clone(),
                mmio: mmio.clone(),
                events: events_tx.clone(),
                gate: gate.clone(),
                counters: c,
                host_cpus: config.cpus.host_cpus(id).map(<[usize]>::to_vec),
            });
        }
        let activation = ActivationThread::start().map_err(VmError::Activation)?;
        let devices = handshakes
            .finish()?
            .into_iter()
            .map(|d| d.plug(&pci, &activation))
            .collect::<Result<Vec<_>, _>>()?;
        let watcher = if devices.is_empty() {
            None
        } else {
            Some(Watcher::start(devices.clone()).map_err(VmError::Watch)?)
        };
        let debug = Arc::new(Mutex::new(DebugPort::new(start)));
        for port in [platform::POST_PORT, platform::DEBUGCON_PORT] {
            let dev = DebugPortAt {
                port,
                dev: debug.clone(),
            };
            pio.insert(port, 1, Arc::new(Mutex::new(dev)))?;
        }

        let control = Arc::new(VmController::new(
            config.cpus.boot,
            config.memory.size,
            devices.clone(),
            counters,
            gate,
            pm,
        ));
        Ok(Vm {
            _watcher: watcher,
            devices,
            vcpus,
            pci: Some(pci),
            irq,
            _vm: vm,
            _kvm: kvm,
            ram,
            events,
            events_tx,
            control,
            reboot_on_reset: false,
            _backends: backends,
        })
    }

    /// Guest RAM (for the vhost-user frontends' SET_MEM_TABLE).
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The PCI bus: plug devices, register queue ioeventfds.
    pub fn pci(&self) -> Option<&Arc<PciHost>> {
        self.pci.as_ref()
    }

    /// The GSI routing: MSI-X vectors for a device ([`IrqRouter::vectors`]).
    pub fn irq_router(&self) -> &Arc<IrqRouter> {
        &self.irq
    }

    /// The vhost-user devices (an API thread may keep these to report
    /// them while the VM runs).
    pub fn vhost_user_devices(&self) -> &[Arc<VhostUserPci>] {
        &self.devices
    }

    /// Kind, socket, PCI address and state of every vhost-user device (for
    /// `vm.info`).
    pub fn devices_info(&self) -> Vec<DeviceInfo> {
        self.devices.iter().map(|d| d.info()).collect()
    }

    /// What the control API acts on (state, pause, resume, shutdown, the
    /// power button, counters).
    pub fn controller(&self) -> Arc<VmController> {
        self.control.clone()
    }

    /// With `yes`, a guest reset reboots (the run ends as
    /// [`VmExit::Reboot`]) instead of ending the VM.
    pub fn reboot_on_reset(mut self, yes: bool) -> Self {
        self.reboot_on_reset = yes;
        self
    }

    /// Runs the guest until it powers off or resets, or a vCPU fails.
    pub fn run(self) -> Result<VmExit, VmError> {
        self.run_inner(false, Box::new(|| {}))
    }

    /// Runs the guest; when it ends (or `vm.shutdown` stops it) the VM
    /// stays in the Shutdown state, and this returns on `vmm.shutdown`:
    /// how the guest ended ([`VmExit::Stopped`] if it did not end by
    /// itself).
    /// `started` is called once the vCPUs run (the state is Running), or
    /// could not be started.
    pub fn run_serving(self, started: Box<dyn FnOnce() + '_>) -> Result<VmExit, VmError> {
        self.control.serve_events(self.events_tx.clone());
        self.run_inner(true, started)
    }

    fn run_inner(
        mut self,
        serving: bool,
        started: Box<dyn FnOnce() + '_>,
    ) -> Result<VmExit, VmError> {
        // The vCPUs' buses keep the PCI host (and its event sender) alive.
        self.pci = None;
        let mut threads = Vec::new();
        let mut spawn_error = None;
        if self.control.begin() {
            for vcpu in self.vcpus.drain(..) {
                let id = vcpu.id;
                match vcpu.spawn() {
                    Ok(t) => threads.push(t),
                    Err(source) => {
                        spawn_error = Some(VmError::Spawn { id, source });
                        break;
                    }
                }
            }
        }
        self.control.started(threads);
        started();
        drop(self.events_tx);
        let mut ended = spawn_error.map(Err);
        // A VM that could not start does not wait for vmm.shutdown.
        let serving = serving && ended.is_none();
        while ended.is_none() || serving {
            let result = match self.events.recv() {
                Ok(VmEvent::VmmShutdown) => {
                    log::info!("vmm.shutdown");
                    break;
                }
                Ok(VmEvent::Reboot) => {
                    // Whatever ended the guest before, it starts again.
                    ended = Some(Ok(VmExit::Reboot));
                    break;
                }
                Ok(VmEvent::PowerOff) => Ok(VmExit::PowerOff),
                Ok(VmEvent::Reset) if self.reboot_on_reset && ended.is_none() => {
                    log::info!("guest reset: rebooting");
                    ended = Some(Ok(VmExit::Reboot));
                    break;
                }
                Ok(VmEvent::Reset) => Ok(VmExit::Reset),
                Ok(VmEvent::Error(line)) => Err(VmError::Guest(line)),
                Err(_) => Err(VmError::NoVcpus),
            };
            if ended.is_some() {
                continue; // A second vCPU's end: the first one counts.
            }
            if serving {
                match &result {
                    Ok(exit) => log::info!(
                        "guest {}; serving the API until vmm.shutdown",
                        exit_name(*exit)
                    ),
                    Err(e) => log::error!(
                        "{}; serving the API until vmm.shutdown",
                        crate::error_chain(e)
                    ),
                }
                self.control.stop_guest();
            }
            let disconnected = matches!(result, Err(VmError::NoVcpus));
            ended = Some(result);
            if disconnected {
                break;
            }
        }

        // Stop the other vCPUs (kicked out of KVM_RUN until they see it).
        if !self.control.stop_guest() {
            log::warn!("a vCPU thread did not stop; leaving guest memory mapped");
            std::mem::forget(self.ram);
        }
        ended.unwrap_or(Ok(VmExit::Stopped))
    }
}

/// `pmu=off`: KVM's PMU off for the VM's vCPUs when KVM offers it
/// (KVM_CAP_PMU_CAPABILITY, before any vCPU exists); CPUID leaf 0xA reads
/// zero either way ([`vcpu::setup::cpuid_for`]).
fn disable_pmu(vm: &VmFd) -> Result<(), VmError> {
    let offered = vm.check_extension_raw(u64::from(KVM_CAP_PMU_CAPABILITY));
    if offered & KVM_PMU_CAP_DISABLE as i32 == 0 {
        log::info!("pmu=off: KVM offers no PMU capability to disable; CPUID 0xA reads zero");
        return Ok(());
    }
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_PMU_CAPABILITY,
        ..Default::default()
    };
    cap.args[0] = u64::from(KVM_PMU_CAP_DISABLE);
    vm.enable_cap(&cap).map_err(VmError::DisablePmu)?;
    log::info!("pmu=off: KVM's PMU disabled; CPUID 0xA reads zero");
    Ok(())
}

/// How `exit` reads in the log: `powered off`, `reset`, `stopped`.
pub fn exit_name(exit: VmExit) -> &'static str {
    match exit {
        VmExit::PowerOff => "powered off",
        VmExit::Reset => "reset",
        VmExit::Stopped => "stopped through the API",
        VmExit::Reboot => "rebooted",
    }
}
