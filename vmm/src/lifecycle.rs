//! [`Vmm`]: the VMM's lifecycle, Cloud Hypervisor's: empty → `vm.create`
//! (a checked [`VmPlan`], state Created) → `vm.boot` (the [`Vm`] is built
//! and runs) → `vm.shutdown` (Shutdown) → `vm.delete` (empty again) →
//! `vmm.shutdown` (the process ends); `vm.reboot` drops the running VM and
//! builds and boots it again from the same plan, as Cloud Hypervisor
//! does: the guest restarts from its kernel with fresh RAM, and every
//! vhost-user device is set up again on a new connection (the backends
//! see a disconnect and a new frontend, as after a reset; the daemons the
//! VMM runs are started again). The command line takes the same
//! path: `--kernel` and friends become a plan ([`crate::config::from_cli`])
//! that is created and booted as `vm.create` + `vm.boot` would.
//!
//! The VM is built and run on the main thread ([`Runner::run`]); API
//! threads hand it `vm.boot` and wait for the answer. A VM that fails to
//! build is dropped whole (its sockets closed, its memory unmapped), and
//! the plan stays Created.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::api::{
    BackendState, ControlError, Counters, DeviceInfo, MemoryInfo, VmControl, VmInfo, VmState,
};
use crate::config::{self, VmPlan};
use crate::control::{api_kind, device_ids, VmController};
use crate::vm::{Vm, VmError, VmExit};

/// How long `vm.delete` waits for the VM's main loop to end.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the VMM is in its lifecycle.
enum Slot {
    Empty,
    Created(Arc<VmPlan>),
    /// `vm.boot` is building the VM.
    Booting(Arc<VmPlan>),
    Booted {
        plan: Arc<VmPlan>,
        ctl: Arc<VmController>,
    },
}

struct Inner {
    slot: Slot,
    /// `vmm.shutdown` was asked for: the runner returns when the VM ends.
    quitting: bool,
    /// The `vm.reboot` waiting for the VM built again to run.
    rebooting: Option<Sender<Result<(), ControlError>>>,
}

/// What the API threads ask of the main thread.
enum Command {
    /// Build and run the Booting plan; the answer goes to `reply`, or a
    /// failure ends the VMM when there is none (the command line's boot).
    Boot {
        reply: Option<Sender<Result<(), ControlError>>>,
        /// A reboot of the same plan (the serial file is appended to).
        again: bool,
    },
    /// `vmm.shutdown` with no VM running.
    Quit,
}

/// The VMM as the control API sees it ([`VmControl`]).
pub struct Vmm {
    inner: Mutex<Inner>,
    changed: Condvar,
    commands: Mutex<Sender<Command>>,
}

/// The main thread's side of a [`Vmm`]: builds and runs its VM.
pub struct Runner {
    vmm: Arc<Vmm>,
    commands: Receiver<Command>,
    start: Instant,
    /// A guest reset reboots (else it ends the VM: `--no-reboot`).
    reboot_on_reset: bool,
}

/// How a failure to build the VM is answered: the caller's config (a
/// kernel that does not load, a backend socket nobody serves) is a 400,
/// the host's is a 500.
fn boot_error(e: &VmError) -> ControlError {
    let line = crate::error_chain(e);
    match e {
        VmError::Boot(_) | VmError::Device(_) | VmError::TooManyVcpus(..) => {
            ControlError::BadRequest(format!("vm.boot: {line}"))
        }
        _ => ControlError::Failed {
            action: "boot",
            source: line.into(),
        },
    }
}

impl Vmm {
    /// An empty VMM and the runner for the main thread; with
    /// `reboot_on_reset` a guest reset reboots its VM as `vm.reboot` does.
    pub fn new(start: Instant, reboot_on_reset: bool) -> (Arc<Vmm>, Runner) {
        let (tx, rx) = channel();
        let vmm = Arc::new(Vmm {
            inner: Mutex::new(Inner {
                slot: Slot::Empty,
                quitting: false,
                rebooting: None,
            }),
            changed: Condvar::new(),
            commands: Mutex::new(tx),
        });
        let runner = Runner {
            vmm: vmm.clone(),
            commands: rx,
            start,
            reboot_on_reset,
        };
        (vmm, runner)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, command: Command) -> Result<(), ControlError> {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(command)
            .map_err(|_| ControlError::Unsupported("this request while the VMM ends"))
    }

    fn set(&self, slot: Slot) {
        self.lock().slot = slot;
        self.changed.notify_all();
    }

    /// Creates the VM of `plan` (Created), if none exists.
    pub fn create_plan(&self, plan: VmPlan) -> Result<(), ControlError> {
        let mut inner = self.lock();
        if !matches!(inner.slot, Slot::Empty) {
            return Err(ControlError::AlreadyCreated);
        }
        // Debug: the command line's VM would otherwise add a line before a
        // startup error's one line.
        log::debug!(
            "VM created: kernel {}, {} vCPU(s), {} MiB, {} vhost-user device(s)",
            plan.config.kernel.display(),
            plan.config.cpus.boot,
            plan.config.memory.size >> 20,
            plan.config.devices.len()
        );
        for field in &plan.unsupported {
            log::warn!("vm.create: {field} (not supported here)");
        }
        inner.slot = Slot::Created(Arc::new(plan));
        Ok(())
    }

    /// Created → Booting, and the main thread told to build the VM.
    fn start_boot(
        &self,
        reply: Option<Sender<Result<(), ControlError>>>,
    ) -> Result<(), ControlError> {
        let mut inner = self.lock();
        let plan = match &inner.slot {
            Slot::Empty => return Err(ControlError::NotCreated("boot")),
            Slot::Created(plan) => plan.clone(),
            Slot::Booting(_) => {
                return Err(ControlError::InvalidState {
                    action: "boot",
                    state: VmState::Created,
                })
            }
            Slot::Booted { ctl, .. } => {
                return Err(ControlError::InvalidState {
                    action: "boot",
                    state: ctl.state(),
                })
            }
        };
        inner.slot = Slot::Booting(plan);
        drop(inner);
        self.send(Command::Boot {
            reply,
            again: false,
        })
    }

    /// Boots the created VM from the command line: a failure ends the
    /// VMM ([`Runner::run`] returns it).
    pub fn boot_from_cli(&self) -> Result<(), ControlError> {
        self.start_boot(None)
    }

    /// The running VM's controller, or why an action on it is refused.
    fn controller(&self, action: &'static str) -> Result<Arc<VmController>, ControlError> {
        match &self.lock().slot {
            Slot::Empty => Err(ControlError::NotCreated(action)),
            Slot::Created(_) | Slot::Booting(_) => Err(ControlError::InvalidState {
                action,
                state: VmState::Created,
            }),
            Slot::Booted { ctl, .. } => Ok(ctl.clone()),
        }
    }
}

/// `vm.info` of a VM not booted: its config, devices not connected yet.
fn planned_info(plan: &VmPlan) -> VmInfo {
    let c = &plan.config;
    let ids = device_ids(c.devices.iter().map(|d| d.kind));
    VmInfo {
        state: VmState::Created,
        config: plan.echo.clone(),
        memory_actual_size: c.memory.size,
        unsupported: plan.unsupported.clone(),
        cpus: c.cpus.boot,
        memory: MemoryInfo {
            size: c.memory.size,
        },
        devices: c
            .devices
            .iter()
            .zip(ids)
            .map(|(d, id)| DeviceInfo {
                kind: api_kind(d.kind).to_string(),
                id,
                socket: d.socket.display().to_string(),
                pci_bdf: None,
                backend_state: BackendState::Connecting,
                backend_error: None,
            })
            .collect(),
    }
}

impl VmControl for Vmm {
    fn create(&self, body: &serde_json::Value) -> Result<(), ControlError> {
        if !matches!(self.lock().slot, Slot::Empty) {
            return Err(ControlError::AlreadyCreated);
        }
        let plan = config::from_api(body).map_err(|e| ControlError::BadRequest(e.to_string()))?;
        self.create_plan(plan)
    }

    fn boot(&self) -> Result<(), ControlError> {
        let (tx, rx) = channel();
        self.start_boot(Some(tx))?;
        rx.recv().unwrap_or_else(|_| {
            Err(ControlError::Failed {
                action: "boot",
                source: "the VMM's main thread ended".into(),
            })
        })
    }

    fn delete(&self) -> Result<(), ControlError> {
        let mut inner = self.lock();
        match &inner.slot {
            Slot::Empty => return Ok(()),
            Slot::Created(_) => {
                inner.slot = Slot::Empty;
                log::info!("VM deleted");
                return Ok(());
            }
            Slot::Booting(_) => {
                return Err(ControlError::InvalidState {
                    action: "delete",
                    state: VmState::Created,
                })
            }
            Slot::Booted { ctl, .. } => ctl.vmm_shutdown()?,
        }
        // The main loop stops the vCPUs, drops the VM and empties the slot.
        let (inner, timeout) = self
            .changed
            .wait_timeout_while(inner, DELETE_TIMEOUT, |i| {
                matches!(i.slot, Slot::Booted { .. })
            })
            .unwrap_or_else(|e| e.into_inner());
        drop(inner);
        if timeout.timed_out() {
            return Err(ControlError::Failed {
                action: "delete",
                source: format!("the VM did not end within {DELETE_TIMEOUT:?}").into(),
            });
        }
        log::info!("VM deleted");
        Ok(())
    }

    fn info(&self) -> Result<VmInfo, ControlError> {
        let (plan, ctl) = match &self.lock().slot {
            Slot::Empty => return Err(ControlError::NotCreated("report the VM")),
            Slot::Created(plan) | Slot::Booting(plan) => return Ok(planned_info(plan)),
            Slot::Booted { plan, ctl } => (plan.clone(), ctl.clone()),
        };
        let mut info = ctl.info();
        info.config = plan.echo.clone();
        info.unsupported = plan.unsupported.clone();
        Ok(info)
    }

    fn counters(&self) -> Counters {
        match self.controller("count") {
            Ok(ctl) => ctl.counters(),
            Err(_) => Counters::new(),
        }
    }

    fn pause(&self) -> Result<(), ControlError> {
        self.controller("pause")?.pause()
    }

    fn resume(&self) -> Result<(), ControlError> {
        self.controller("resume")?.resume()
    }

    fn shutdown(&self) -> Result<(), ControlError> {
        self.controller("shut down")?.shutdown()
    }

    fn power_button(&self) -> Result<(), ControlError> {
        self.controller("press the power button")?.power_button()
    }

    fn reboot(&self) -> Result<(), ControlError> {
        let (tx, rx) = channel();
        {
            let mut inner = self.lock();
            let ctl = match &inner.slot {
                Slot::Empty => return Err(ControlError::NotCreated("reboot")),
                Slot::Created(_) | Slot::Booting(_) => {
                    return Err(ControlError::InvalidState {
                        action: "reboot",
                        state: VmState::Created,
                    })
                }
                Slot::Booted { ctl, .. } => ctl.clone(),
            };
            if inner.quitting {
                return Err(ControlError::Unsupported("vm.reboot while the VMM ends"));
            }
            if inner.rebooting.is_some() {
                return Err(ControlError::InvalidState {
                    action: "reboot (a reboot is under way)",
                    state: ctl.state(),
                });
            }
            // Under the lock: the runner takes the reply only after.
            ctl.reboot()?;
            inner.rebooting = Some(tx);
        }
        rx.recv().unwrap_or_else(|_| {
            Err(ControlError::Failed {
                action: "reboot",
                source: "the VMM's main thread ended".into(),
            })
        })
    }

    fn add_device(
        &self,
        kind: devices::vhost_user::DeviceKind,
        body: &serde_json::Value,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<(), ControlError> {
        let mut inner = self.lock();
        let state = match &inner.slot {
            Slot::Empty => return Err(ControlError::NotCreated("add a device")),
            Slot::Created(plan) => {
                let plan = config::add_device(plan, kind, body, fds)
                    .map_err(|e| ControlError::BadRequest(e.to_string()))?;
                log::info!("{} added before boot", crate::control::api_kind(kind));
                inner.slot = Slot::Created(Arc::new(plan));
                return Ok(());
            }
            Slot::Booting(_) => VmState::Created,
            Slot::Booted { ctl, .. } => ctl.state(),
        };
        Err(ControlError::InvalidState {
            action: "add a device (hotplug is not supported yet; add it before vm.boot)",
            state,
        })
    }

    fn vmm_shutdown(&self) -> Result<(), ControlError> {
        let mut inner = self.lock();
        inner.quitting = true;
        match &inner.slot {
            Slot::Booted { ctl, .. } => ctl.vmm_shutdown(),
            _ => {
                drop(inner);
                self.send(Command::Quit)
            }
        }
    }
}

impl Runner {
    /// Runs what the [`Vmm`] is told until `vmm.shutdown` (with `serving`,
    /// the control API) or until the one VM ends (without). Returns how
    /// the last VM ended, if one ran; a failed command-line boot or a
    /// failed VM is an error.
    pub fn run(self, serving: bool) -> Result<Option<VmExit>, VmError> {
        let mut last = None;
        // A reboot's boot, taken before the next command.
        let mut next: Option<Command> = None;
        loop {
            let command = match next.take() {
                Some(c) => Ok(c),
                None => self.commands.recv(),
            };
            let (reply, again) = match command {
                Ok(Command::Boot { reply, again }) => (reply, again),
                Ok(Command::Quit) | Err(_) => {
                    self.vmm.fail_reboot("the VMM ends");
                    return Ok(last);
                }
            };
            let plan = match &self.vmm.lock().slot {
                Slot::Booting(plan) => plan.clone(),
                _ => continue,
            };
            let vm = match Vm::new(&plan.config, self.start, again) {
                Ok(vm) => vm,
                Err(e) => {
                    self.vmm.set(Slot::Created(plan));
                    // The command line's VM that cannot be built ends the
                    // VMM; with the API serving, a rebuild after a guest
                    // reset leaves the plan Created, as a failed vm.boot.
                    if reply.is_none() && !(serving && again) {
                        return Err(e);
                    }
                    log::error!("vm.boot: {}", crate::error_chain(&e));
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(boot_error(&e)));
                    }
                    continue;
                }
            };
            {
                let mut inner = self.vmm.lock();
                if inner.quitting {
                    drop(inner);
                    if let Some(reply) = reply {
                        let _ =
                            reply.send(Err(ControlError::Unsupported("boot while the VMM ends")));
                    }
                    return Ok(last);
                }
                inner.slot = Slot::Booted {
                    plan: plan.clone(),
                    ctl: vm.controller(),
                };
            }
            let vm = vm.reboot_on_reset(self.reboot_on_reset);
            let result = if serving {
                vm.run_serving(Box::new(move || {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                }))
            } else {
                vm.run()
            };
            // The VM is gone: its vCPUs joined, its devices' connections
            // closed, the daemons it ran stopped, its RAM unmapped.
            if self.vmm.lock().quitting {
                self.vmm.fail_reboot("the VMM ends");
                return result.map(Some);
            }
            if matches!(result, Ok(VmExit::Reboot)) {
                // Built again from the same plan; the vm.reboot waiting
                // (none for a guest reset) is answered once the new VM
                // runs. A command-line VM that fails to build again ends
                // the VMM, as its first boot would.
                let api_reply = {
                    let mut inner = self.vmm.lock();
                    inner.slot = Slot::Booting(plan);
                    inner.rebooting.take()
                };
                self.vmm.changed.notify_all();
                log::info!("rebooting: building the VM again");
                next = Some(Command::Boot {
                    reply: api_reply,
                    again: true,
                });
                continue;
            }
            if !serving {
                return result.map(Some);
            }
            // vm.delete ended the main loop: empty again.
            self.vmm.fail_reboot("the VM was deleted");
            self.vmm.set(Slot::Empty);
            match result {
                Ok(exit) => last = Some(exit),
                Err(e) => log::error!("the deleted VM had failed: {}", crate::error_chain(&e)),
            }
        }
    }
}

impl Vmm {
    /// Answers a `vm.reboot` still waiting when its VM ended otherwise.
    fn fail_reboot(&self, why: &str) {
        if let Some(reply) = self.lock().rebooting.take() {
            let _ = reply.send(Err(ControlError::Failed {
                action: "reboot",
                source: why.into(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> VmPlan {
        config::from_api(&serde_json::json!({
            "payload": {"kernel": "/proc/self/exe"},
            "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
            "memory": {"size": 64u64 << 20},
            "rng": {"src": "/dev/urandom"},
        }))
        .unwrap()
    }

    #[test]
    fn an_empty_vmm_refuses_what_needs_a_vm() {
        let (vmm, _runner) = Vmm::new(Instant::now(), true);
        assert_eq!(vmm.info().unwrap_err().status(), 404);
        assert_eq!(vmm.boot().unwrap_err().status(), 404);
        assert_eq!(vmm.pause().unwrap_err().status(), 404);
        assert_eq!(vmm.shutdown().unwrap_err().status(), 404);
        assert_eq!(vmm.reboot().unwrap_err().status(), 404);
        assert!(vmm.counters().is_empty());
        vmm.delete().unwrap();
    }

    #[test]
    fn created_reports_the_config_and_refuses_a_second_create() {
        let (vmm, _runner) = Vmm::new(Instant::now(), true);
        vmm.create_plan(plan()).unwrap();
        let info = vmm.info().unwrap();
        assert_eq!(info.state, VmState::Created);
        assert_eq!(info.config["cpus"]["boot_vcpus"], 2);
        assert_eq!(info.memory_actual_size, 64 << 20);
        assert_eq!(info.unsupported, ["rng: ignored"]);
        let again = vmm.create(&serde_json::json!({"payload": {"kernel": "/proc/self/exe"}}));
        assert_eq!(again.unwrap_err().status(), 409);
        assert_eq!(vmm.pause().unwrap_err().status(), 409);
        assert_eq!(vmm.reboot().unwrap_err().status(), 409);
        vmm.delete().unwrap();
        assert_eq!(vmm.info().unwrap_err().status(), 404);
        vmm.create_plan(plan()).unwrap();
    }

    #[test]
    fn devices_are_added_while_created_only() {
        let (vmm, _runner) = Vmm::new(Instant::now(), true);
        let disk = serde_json::json!({"vhost_user": true, "vhost_socket": "/run/b.sock"});
        let kind = devices::vhost_user::DeviceKind::Block;
        assert_eq!(
            vmm.add_device(kind, &disk, Vec::new())
                .unwrap_err()
                .status(),
            404
        );
        vmm.create_plan(plan()).unwrap();
        vmm.add_device(kind, &disk, Vec::new()).unwrap();
        let info = vmm.info().unwrap();
        assert_eq!(info.devices.last().unwrap().socket, "/run/b.sock");
        assert_eq!(info.config["disks"].as_array().unwrap().last(), Some(&disk));
        let bad = vmm
            .add_device(kind, &serde_json::json!({"vhost_user": true}), Vec::new())
            .unwrap_err();
        assert_eq!(bad.status(), 400);
        assert!(bad.to_string().contains("vhost_socket"), "{bad}");
        vmm.set(Slot::Booting(Arc::new(plan())));
        assert_eq!(
            vmm.add_device(kind, &disk, Vec::new())
                .unwrap_err()
                .status(),
            409
        );
    }

    #[test]
    fn vmm_shutdown_when_empty_ends_the_runner() {
        let (vmm, runner) = Vmm::new(Instant::now(), true);
        vmm.vmm_shutdown().unwrap();
        assert!(runner.run(true).unwrap().is_none());
    }
}
