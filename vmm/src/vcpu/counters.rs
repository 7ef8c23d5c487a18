//! Per-vCPU exit counters (`vm.counters`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use kvm_ioctls::VcpuExit;

/// Exits of one vCPU by kind (for `vm.counters`); relaxed atomics, one
/// increment per exit.
#[derive(Debug, Default)]
pub struct VcpuCounters {
    /// Every KVM_RUN that returned an exit (not EINTR).
    pub exits: AtomicU64,
    pub io: AtomicU64,
    pub mmio: AtomicU64,
    pub hlt: AtomicU64,
    pub other: AtomicU64,
    /// KVM_RUN interrupted by a kick (pause, stop).
    pub interrupted: AtomicU64,
}

impl VcpuCounters {
    /// The counters by name: `exits`, `io_exits`, `mmio_exits`,
    /// `hlt_exits`, `other_exits`, `interrupted`.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        [
            ("exits", &self.exits),
            ("io_exits", &self.io),
            ("mmio_exits", &self.mmio),
            ("hlt_exits", &self.hlt),
            ("other_exits", &self.other),
            ("interrupted", &self.interrupted),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.load(Ordering::Relaxed)))
        .collect()
    }

    pub(super) fn count(&self, exit: &VcpuExit) {
        let kind = match exit {
            VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => &self.io,
            VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => &self.mmio,
            VcpuExit::Hlt => &self.hlt,
            _ => &self.other,
        };
        kind.fetch_add(1, Ordering::Relaxed);
        self.exits.fetch_add(1, Ordering::Relaxed);
    }
}
