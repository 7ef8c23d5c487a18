//! [`VmController`]: a built VM as the control API sees it (the
//! [`crate::lifecycle::Vmm`] answers [`api::VmControl`] with it).
//!
//! The state machine is Created → Running ⇄ Paused → Shutdown. Pause and
//! resume go through the [`VcpuGate`] (pause returns once every vCPU has
//! left KVM_RUN and waits); `vm.shutdown` and the guest's own power-off or
//! reset stop and join the vCPUs ([`VmController::stop_guest`]) and leave
//! the VMM serving the API; `vmm.shutdown` tells the VM's main loop to
//! return. The power button sets PWRBTN_STS in the ACPI PM device, which
//! raises the SCI if the guest enabled the event.

use std::collections::BTreeMap;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::vhost_user::{DeviceKind, DeviceState};

use crate::api::{self, BackendState, ControlError, Counters, MemoryInfo, VmInfo, VmState};
use crate::event::VmEvent;
use crate::platform::AcpiPm;
use crate::vcpu::{VcpuCounters, VcpuGate};
use crate::vhost_user::VhostUserPci;

/// How long `vm.pause` waits for every vCPU to leave KVM_RUN.
pub const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stopping waits for the vCPU threads to return.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The VM's state and handles to act on it, shared by the VM's main loop
/// and the API threads.
pub struct VmController {
    state: Mutex<VmState>,
    cpus: u8,
    memory: u64,
    devices: Vec<(String, Arc<VhostUserPci>)>,
    vcpus: Vec<Arc<VcpuCounters>>,
    gate: Arc<VcpuGate>,
    pm: Arc<Mutex<AcpiPm>>,
    /// The main loop's events, while it serves the API (`vmm.shutdown`).
    events: Mutex<Option<Sender<VmEvent>>>,
}

/// `block`, `fs`, `net`, `vsock`, `rng`, `console` or `generic`, as
/// `vm.info` spells the kind.
pub fn api_kind(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Block => "block",
        k => k.name(),
    }
}

/// Device ids in plug order, numbered per kind: `disk0`, `fs0`, `net0`,
/// `vsock0`, `rng0`, `console0`, `generic0`.
pub fn device_ids(kinds: impl IntoIterator<Item = DeviceKind>) -> Vec<String> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    kinds
        .into_iter()
        .map(|kind| {
            let prefix = match kind {
                DeviceKind::Block => "disk",
                k => k.name(),
            };
            let n = seen.entry(prefix).or_default();
            let id = format!("{prefix}{n}");
            *n += 1;
            id
        })
        .collect()
}

/// A device's backend state as `vm.info` shows it: failed when the
/// frontend marked it failed or set DEVICE_NEEDS_RESET.
pub fn backend_state(state: DeviceState, needs_reset: bool) -> BackendState {
    match state {
        DeviceState::Failed => BackendState::Failed,
        _ if needs_reset => BackendState::Failed,
        DeviceState::Reconnecting => BackendState::Connecting,
        DeviceState::Ready | DeviceState::Active => BackendState::Connected,
    }
}

impl VmController {
    /// A controller for a VM not started yet.
    pub fn new(
        cpus: u8,
        memory: u64,
        devices: Vec<Arc<VhostUserPci>>,
        vcpus: Vec<Arc<VcpuCounters>>,
        gate: Arc<VcpuGate>,
        pm: Arc<Mutex<AcpiPm>>,
    ) -> Self {
        let ids = device_ids(devices.iter().map(|d| d.config().kind));
        VmController {
            state: Mutex::new(VmState::Created),
            cpus,
            memory,
            devices: ids.into_iter().zip(devices).collect(),
            vcpus,
            gate,
            pm,
            events: Mutex::new(None),
        }
    }

    fn lock_state(&self) -> MutexGuard<'_, VmState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lifecycle state.
    pub fn state(&self) -> VmState {
        *self.lock_state()
    }

    /// Lets `vmm.shutdown` reach the main loop through `events`.
    pub fn serve_events(&self, events: Sender<VmEvent>) {
        *self.events.lock().unwrap_or_else(|e| e.into_inner()) = Some(events);
    }

    /// Created → Running, if the VM was not shut down meanwhile; false
    /// means do not start the vCPUs.
    pub fn begin(&self) -> bool {
        let mut state = self.lock_state();
        if *state == VmState::Created {
            *state = VmState::Running;
            true
        } else {
            false
        }
    }

    /// The spawned vCPU threads, by id.
    pub fn started(&self, threads: Vec<JoinHandle<()>>) {
        self.gate.started(threads);
    }

    /// Stops and joins the vCPUs (from any state) and enters Shutdown.
    /// False if a vCPU thread did not return (guest memory must then stay
    /// mapped).
    pub fn stop_guest(&self) -> bool {
        let mut state = self.lock_state();
        if *state == VmState::Shutdown {
            return !self.gate.stuck();
        }
        let stopped = self.gate.stop(STOP_TIMEOUT);
        *state = VmState::Shutdown;
        stopped
    }

    fn refuse(action: &'static str, state: VmState) -> ControlError {
        ControlError::InvalidState { action, state }
    }

    fn device_counters(device: &VhostUserPci) -> BTreeMap<String, u64> {
        let info = device.info();
        let t = device.transport().lock().unwrap_or_else(|e| e.into_inner());
        [
            ("queues", device.config().device_queues() as u64),
            ("device_status", u64::from(t.status())),
            ("active", u64::from(info.state == DeviceState::Active)),
            (
                "failed",
                u64::from(backend_state(info.state, info.needs_reset) == BackendState::Failed),
            ),
            ("needs_reset", u64::from(info.needs_reset)),
            (
                "reconnecting",
                u64::from(info.state == DeviceState::Reconnecting),
            ),
            ("reconnects", info.reconnects),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl VmController {
    /// State, vCPUs, memory and devices (`vm.info`; `config` and
    /// `unsupported` are the lifecycle's to fill).
    pub fn info(&self) -> VmInfo {
        let devices = self
            .devices
            .iter()
            .map(|(id, d)| {
                let info = d.info();
                let backend_state = backend_state(info.state, info.needs_reset);
                api::DeviceInfo {
                    kind: api_kind(info.kind).to_string(),
                    id: id.clone(),
                    socket: info.socket.display().to_string(),
                    pci_bdf: Some(info.bdf.to_string()),
                    backend_state,
                    backend_error: (backend_state == BackendState::Failed).then(|| {
                        "the backend is gone; the guest must reset the device".to_string()
                    }),
                }
            })
            .collect();
        VmInfo {
            state: self.state(),
            config: serde_json::Value::Null,
            memory_actual_size: self.memory,
            unsupported: Vec::new(),
            cpus: self.cpus,
            memory: MemoryInfo { size: self.memory },
            devices,
        }
    }

    /// Per-device and per-vCPU counters (`vm.counters`).
    pub fn counters(&self) -> Counters {
        let mut all = Counters::new();
        for (id, c) in self.vcpus.iter().enumerate() {
            all.insert(format!("vcpu{id}"), c.snapshot());
        }
        for (id, d) in &self.devices {
            all.insert(id.clone(), Self::device_counters(d));
        }
        all
    }

    /// Pause the vCPUs (`vm.pause`).
    pub fn pause(&self) -> Result<(), ControlError> {
        let mut state = self.lock_state();
        if *state != VmState::Running {
            return Err(Self::refuse("pause", *state));
        }
        self.gate
            .pause(PAUSE_TIMEOUT)
            .map_err(|e| ControlError::Failed {
                action: "pause",
                source: Box::new(e),
            })?;
        *state = VmState::Paused;
        log::info!("VM paused");
        Ok(())
    }

    /// Resume paused vCPUs (`vm.resume`).
    pub fn resume(&self) -> Result<(), ControlError> {
        let mut state = self.lock_state();
        if *state != VmState::Paused {
            return Err(Self::refuse("resume", *state));
        }
        self.gate.resume();
        *state = VmState::Running;
        log::info!("VM resumed");
        Ok(())
    }

    /// Stop the guest (`vm.shutdown`); the main loop keeps serving.
    pub fn shutdown(&self) -> Result<(), ControlError> {
        let state = self.state();
        if state == VmState::Shutdown {
            return Err(Self::refuse("shut down", state));
        }
        if !self.stop_guest() {
            log::warn!("a vCPU thread did not stop");
        }
        log::info!("VM shut down through the API");
        Ok(())
    }

    /// Send an ACPI power-button event (`vm.power-button`).
    pub fn power_button(&self) -> Result<(), ControlError> {
        // Held across the press, so a shutdown cannot slip in between.
        let state = self.lock_state();
        if *state == VmState::Shutdown {
            return Err(Self::refuse("press the power button", *state));
        }
        let enabled = self
            .pm
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .press_power_button();
        log::info!(
            "power button pressed (PWRBTN_STS set{})",
            if enabled {
                ", SCI raised"
            } else {
                "; the guest has not enabled the event"
            }
        );
        Ok(())
    }

    /// End the VM's main loop so that the lifecycle builds the VM again
    /// (`vm.reboot`): from Running or Paused. The state is held while the
    /// event goes, so a shutdown cannot slip in between.
    pub fn reboot(&self) -> Result<(), ControlError> {
        let state = self.lock_state();
        if !matches!(*state, VmState::Running | VmState::Paused) {
            return Err(Self::refuse("reboot", *state));
        }
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let sent = events
            .as_ref()
            .is_some_and(|tx| tx.send(VmEvent::Reboot).is_ok());
        if sent {
            log::info!("vm.reboot: ending the VM to build it again");
            Ok(())
        } else {
            Err(ControlError::Unsupported("vm.reboot"))
        }
    }

    /// End the VM's main loop ([`crate::vm::Vm::run_serving`] returns):
    /// for `vmm.shutdown` and `vm.delete`.
    pub fn vmm_shutdown(&self) -> Result<(), ControlError> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let sent = events
            .as_ref()
            .is_some_and(|tx| tx.send(VmEvent::VmmShutdown).is_ok());
        if sent {
            Ok(())
        } else {
            Err(ControlError::Unsupported("vmm.shutdown"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn controller() -> (VmController, std::sync::mpsc::Receiver<VmEvent>) {
        let (tx, rx) = channel();
        let pm = Arc::new(Mutex::new(AcpiPm::new(tx.clone())));
        let c = VmController::new(
            2,
            64 << 20,
            Vec::new(),
            vec![Arc::default(), Arc::default()],
            Arc::new(VcpuGate::new()),
            pm,
        );
        c.serve_events(tx);
        (c, rx)
    }

    #[test]
    fn ids_are_numbered_per_kind() {
        use DeviceKind::*;
        assert_eq!(
            device_ids([Block, Fs, Block, Net]),
            ["disk0", "fs0", "disk1", "net0"]
        );
    }

    #[test]
    fn failed_or_needs_reset_is_failed() {
        assert_eq!(
            backend_state(DeviceState::Active, false),
            BackendState::Connected
        );
        assert_eq!(
            backend_state(DeviceState::Ready, true),
            BackendState::Failed
        );
        assert_eq!(
            backend_state(DeviceState::Failed, false),
            BackendState::Failed
        );
    }

    #[test]
    fn the_state_machine_refuses_what_does_not_fit() {
        let (c, rx) = controller();
        let info = c.info();
        assert_eq!(
            (info.state, info.cpus, info.memory.size),
            (VmState::Created, 2, 64 << 20)
        );
        assert_eq!(c.pause().unwrap_err().status(), 409);
        assert_eq!(c.resume().unwrap_err().status(), 409);
        assert!(c.begin());
        assert!(!c.begin());
        // Running without vCPU threads: the gate refuses, the state stays.
        assert_eq!(c.pause().unwrap_err().status(), 500);
        assert_eq!(c.state(), VmState::Running);
        c.power_button().unwrap();
        assert_eq!(c.pm.lock().unwrap().registers().0, 1 << 8);
        let counters = c.counters();
        assert_eq!(counters["vcpu1"]["io_exits"], 0);
        c.shutdown().unwrap();
        assert_eq!(c.state(), VmState::Shutdown);
        assert_eq!(c.shutdown().unwrap_err().status(), 409);
        assert_eq!(c.power_button().unwrap_err().status(), 409);
        c.vmm_shutdown().unwrap();
        assert_eq!(rx.try_recv().unwrap(), VmEvent::VmmShutdown);
    }
}
