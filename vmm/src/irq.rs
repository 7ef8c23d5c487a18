//! MSI-X on KVM: every vector of every device gets its own GSI and irqfd.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so [`IrqRouter`] keeps the
//! MSI routes of every unmasked vector and rebuilds the table from them plus
//! the in-kernel irqchip's pin routes ([`routing_table`]: KVM's defaults
//! except that the PIT's GSI 0 goes to IOAPIC pin 2, as the MADT's
//! override of ISA IRQ 0 says and as QEMU routes it). A vector's
//! irqfd is bound to its GSI while the vector is unmasked; while masked it is
//! unbound, so a signal stays pending in the eventfd and KVM injects it when
//! the irqfd is bound again. A vhost-user backend signals the irqfd directly
//! (SET_VRING_CALL): [`MsiVectors::irqfd`].

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use devices::pci::{MsiMessage, MsiSink};
use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, kvm_msi, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

/// IOAPIC pins; GSIs below this are the irqchip's.
pub const IOAPIC_PINS: u32 = 24;
/// The first GSI handed to MSI vectors.
pub const FIRST_MSI_GSI: u32 = IOAPIC_PINS;
/// KVM's limit on routing entries (KVM_MAX_IRQ_ROUTES).
pub const MAX_ROUTES: usize = 4096;
/// Routes the irqchip needs: IOAPIC pins for GSI 0..24 but 2, PIC pins for
/// GSI 0..16 but 2 (the cascade).
const IRQCHIP_ROUTES: usize = IOAPIC_PINS as usize - 1 + 15;
/// The IOAPIC pin of ISA IRQ 0 (the PIT), per the MADT's source override.
pub const TIMER_IOAPIC_PIN: u32 = 2;

/// Errors of the MSI plumbing.
#[derive(Debug, thiserror::Error)]
pub enum IrqError {
    #[error("no GSI left for {0} more MSI vectors")]
    OutOfGsis(u16),
    #[error("creating an irqfd")]
    EventFd(#[source] io::Error),
}

/// Where one GSI goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A pin of the in-kernel irqchip (KVM_IRQCHIP_*).
    Irqchip { chip: u32, pin: u32 },
    /// An MSI message.
    Msi(MsiMessage),
}

/// The full routing table: the irqchip routes (GSI 0..16 to an IOAPIC pin
/// and the PIC pin, 16..24 to the IOAPIC) and then `msi`. GSI 0, where
/// KVM's PIT raises its interrupt, goes to IOAPIC pin 2: the MADT tells the
/// guest that ISA IRQ 0 is GSI 2, and with KVM's default (pin 0) Linux
/// finds no timer on the IOAPIC ("MP-BIOS bug: 8254 timer not connected")
/// and falls back to ExtINT. GSI 2 has no route: it is the PICs' cascade.
/// QEMU's KVM routing is the same. Pure, so it can be tested without KVM.
pub fn routing_table(msi: &BTreeMap<u32, MsiMessage>) -> Vec<(u32, Route)> {
    let mut table = Vec::with_capacity(IRQCHIP_ROUTES + msi.len());
    for gsi in (0..IOAPIC_PINS).filter(|&g| g != 2) {
        table.push((
            gsi,
            Route::Irqchip {
                chip: KVM_IRQCHIP_IOAPIC,
                pin: if gsi == 0 { TIMER_IOAPIC_PIN } else { gsi },
            },
        ));
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            table.push((gsi, Route::Irqchip { chip, pin: gsi % 8 }));
        }
    }
    table.extend(msi.iter().map(|(gsi, m)| (*gsi, Route::Msi(*m))));
    table
}

/// One route as KVM takes it.
pub fn kvm_entry(gsi: u32, route: Route) -> kvm_irq_routing_entry {
    let (type_, u) = match route {
        Route::Irqchip { chip, pin } => (
            KVM_IRQ_ROUTING_IRQCHIP,
            kvm_irq_routing_entry__bindgen_ty_1 {
                irqchip: kvm_irq_routing_irqchip { irqchip: chip, pin },
            },
        ),
        Route::Msi(m) => (
            KVM_IRQ_ROUTING_MSI,
            kvm_irq_routing_entry__bindgen_ty_1 {
                msi: kvm_irq_routing_msi {
                    address_lo: m.address as u32,
                    address_hi: (m.address >> 32) as u32,
                    data: m.data,
                    ..Default::default()
                },
            },
        ),
    };
    kvm_irq_routing_entry {
        gsi,
        type_,
        flags: 0,
        pad: 0,
        u,
    }
}

/// The GSI routing of the VM: allocates GSIs and rewrites KVM's table.
pub struct IrqRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

struct RouterState {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

impl IrqRouter {
    pub fn new(vm: Arc<VmFd>) -> Self {
        IrqRouter {
            vm,
            state: Mutex::new(RouterState {
                next_gsi: FIRST_MSI_GSI,
                msi: BTreeMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `count` fresh GSIs (never reused: devices are not unplugged yet).
    fn allocate(&self, count: u16) -> Result<u32, IrqError> {
        let mut s = self.state();
        let first = s.next_gsi;
        let end = first + u32::from(count);
        if end as usize > MAX_ROUTES - IRQCHIP_ROUTES + FIRST_MSI_GSI as usize {
            return Err(IrqError::OutOfGsis(count));
        }
        s.next_gsi = end;
        Ok(first)
    }

    /// Installs the irqchip routes (the PIT on IOAPIC pin 2, see
    /// [`routing_table`]); call once after KVM_CREATE_IRQCHIP, before any
    /// vCPU runs.
    pub fn install_irqchip_routes(&self) -> io::Result<()> {
        let s = self.state();
        self.install(&s.msi)
    }

    fn install(&self, msi: &BTreeMap<u32, MsiMessage>) -> io::Result<()> {
        let entries: Vec<kvm_irq_routing_entry> = routing_table(msi)
            .into_iter()
            .map(|(g, r)| kvm_entry(g, r))
            .collect();
        KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("GSI routing table: {e:?}")))
            .and_then(|table| {
                self.vm
                    .set_gsi_routing(&table)
                    .map_err(|e| io::Error::from_raw_os_error(e.errno()))
            })
    }

    /// Routes `gsi` to `msg` (`None`: removes its route) and installs the
    /// new table. On failure the previous route is kept.
    pub fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
        let mut s = self.state();
        let old = match msg {
            Some(m) => s.msi.insert(gsi, m),
            None => s.msi.remove(&gsi),
        };
        if old == msg {
            return Ok(());
        }
        let result = self.install(&s.msi);
        if result.is_err() {
            match old {
                Some(m) => s.msi.insert(gsi, m),
                None => s.msi.remove(&gsi),
            };
        }
        result
    }

    /// Injects `msg` now (KVM_SIGNAL_MSI).
    pub fn signal_msi(&self, msg: MsiMessage) -> io::Result<()> {
        let msi = kvm_msi {
            address_lo: msg.address as u32,
            address_hi: (msg.address >> 32) as u32,
            data: msg.data,
            ..Default::default()
        };
        self.vm
            .signal_msi(msi)
            .map(|_| ())
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    }

    /// An [`MsiSink`] for a function with `count` MSI-X vectors.
    pub fn vectors(self: &Arc<Self>, count: u16) -> Result<Arc<MsiVectors>, IrqError> {
        let first = self.allocate(count)?;
        let vectors = (0..count)
            .map(|i| {
                Ok(Vector {
                    gsi: first + u32::from(i),
                    irqfd: EventFd::new(libc::EFD_NONBLOCK).map_err(IrqError::EventFd)?,
                    bound: Mutex::new(false),
                })
            })
            .collect::<Result<Vec<_>, IrqError>>()?;
        Ok(Arc::new(MsiVectors {
            router: self.clone(),
            vectors,
        }))
    }
}

struct Vector {
    gsi: u32,
    irqfd: EventFd,
    /// Whether `irqfd` is bound to `gsi` in KVM.
    bound: Mutex<bool>,
}

/// The MSI-X vectors of one PCI function, each with a GSI and an irqfd.
pub struct MsiVectors {
    router: Arc<IrqRouter>,
    vectors: Vec<Vector>,
}

impl MsiVectors {
    /// The irqfd of `vector`: what a vhost-user backend gets as
    /// SET_VRING_CALL (writing it raises the vector's MSI while unmasked).
    pub fn irqfd(&self, vector: u16) -> Option<&EventFd> {
        self.vectors.get(usize::from(vector)).map(|v| &v.irqfd)
    }

    /// The GSI of `vector`.
    pub fn gsi(&self, vector: u16) -> Option<u32> {
        self.vectors.get(usize::from(vector)).map(|v| v.gsi)
    }

    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }
}

fn no_vector(vector: u16) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("no MSI-X vector {vector}"),
    )
}

impl MsiSink for MsiVectors {
    fn update_route(&self, vector: u16, msg: Option<MsiMessage>) -> io::Result<()> {
        let v = self
            .vectors
            .get(usize::from(vector))
            .ok_or_else(|| no_vector(vector))?;
        let mut bound = v.bound.lock().unwrap_or_else(|e| e.into_inner());
        let vm = &self.router.vm;
        let errno = |e: kvm_ioctls::Error| io::Error::from_raw_os_error(e.errno());
        match msg {
            Some(m) => {
                // Route first, then bind: a pending signal is injected on bind.
                self.router.set_msi_route(v.gsi, Some(m))?;
                if !*bound {
                    vm.register_irqfd(&v.irqfd, v.gsi).map_err(errno)?;
                    *bound = true;
                }
            }
            None => {
                // Unbind first so no signal is consumed without a route.
                if *bound {
                    vm.unregister_irqfd(&v.irqfd, v.gsi).map_err(errno)?;
                    *bound = false;
                }
                self.router.set_msi_route(v.gsi, None)?;
            }
        }
        Ok(())
    }

    fn deliver(&self, vector: u16, msg: MsiMessage) -> io::Result<()> {
        if usize::from(vector) >= self.vectors.len() {
            return Err(no_vector(vector));
        }
        self.router.signal_msi(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u32) -> MsiMessage {
        MsiMessage {
            address: 0xfee0_0000 | u64::from(n) << 12,
            data: 0x40 + n,
        }
    }

    #[test]
    fn irqchip_routes_put_the_timer_on_ioapic_pin_2() {
        let table = routing_table(&BTreeMap::new());
        assert_eq!(table.len(), IRQCHIP_ROUTES);
        for gsi in 0..IOAPIC_PINS {
            let routes: Vec<Route> = table
                .iter()
                .filter(|(g, _)| *g == gsi)
                .map(|(_, r)| *r)
                .collect();
            if gsi == 2 {
                assert_eq!(routes, [], "GSI 2 (the cascade) has no route");
                continue;
            }
            let mut want = vec![Route::Irqchip {
                chip: KVM_IRQCHIP_IOAPIC,
                pin: if gsi == 0 { 2 } else { gsi },
            }];
            if gsi < 8 {
                want.push(Route::Irqchip {
                    chip: KVM_IRQCHIP_PIC_MASTER,
                    pin: gsi,
                });
            } else if gsi < 16 {
                want.push(Route::Irqchip {
                    chip: KVM_IRQCHIP_PIC_SLAVE,
                    pin: gsi - 8,
                });
            }
            assert_eq!(routes, want, "GSI {gsi}");
        }
    }

    #[test]
    fn msi_routes_follow_the_irqchip_routes() {
        let mut msi = BTreeMap::new();
        msi.insert(30, msg(1));
        msi.insert(24, msg(0));
        let table = routing_table(&msi);
        assert_eq!(table.len(), IRQCHIP_ROUTES + 2);
        assert_eq!(table[IRQCHIP_ROUTES], (24, Route::Msi(msg(0))));
        assert_eq!(table[IRQCHIP_ROUTES + 1], (30, Route::Msi(msg(1))));
        assert!(table[..IRQCHIP_ROUTES].iter().all(|(g, _)| *g < 24));
    }

    #[test]
    fn kvm_entries() {
        let high = MsiMessage {
            address: 0x1_fee0_1000,
            data: 0x4041,
        };
        let e = kvm_entry(99, Route::Msi(high));
        assert_eq!((e.gsi, e.type_, e.flags), (99, KVM_IRQ_ROUTING_MSI, 0));
        // SAFETY: an MSI entry was built with the `msi` member.
        let m = unsafe { e.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_1000, 1, 0x4041)
        );
        let e = kvm_entry(
            9,
            Route::Irqchip {
                chip: KVM_IRQCHIP_PIC_SLAVE,
                pin: 1,
            },
        );
        assert_eq!(e.type_, KVM_IRQ_ROUTING_IRQCHIP);
        // SAFETY: an irqchip entry was built with the `irqchip` member.
        let c = unsafe { e.u.irqchip };
        assert_eq!((c.irqchip, c.pin), (KVM_IRQCHIP_PIC_SLAVE, 1));
        let all: Vec<_> = routing_table(&BTreeMap::from([(24, high)]))
            .into_iter()
            .map(|(g, r)| kvm_entry(g, r))
            .collect();
        assert!(KvmIrqRouting::from_entries(&all).is_ok());
    }

    /// The real ioctls: routes replace the table, irqfds bind and unbind.
    #[test]
    fn kvm_routes_and_irqfds() {
        let Ok(kvm) = kvm_ioctls::Kvm::new() else {
            eprintln!("skipped: /dev/kvm is not available");
            return;
        };
        let vm = kvm.create_vm().unwrap();
        vm.create_irq_chip().unwrap();
        let _vcpu = vm.create_vcpu(0).unwrap();
        let router = Arc::new(IrqRouter::new(Arc::new(vm)));
        let a = router.vectors(2).unwrap();
        let b = router.vectors(1).unwrap();
        assert_eq!(
            (a.gsi(0), a.gsi(1), b.gsi(0)),
            (Some(24), Some(25), Some(26))
        );
        assert_eq!(a.len(), 2);
        a.update_route(0, Some(msg(0))).unwrap();
        b.update_route(0, Some(msg(1))).unwrap();
        a.irqfd(0).unwrap().write(1).unwrap();
        a.update_route(0, Some(msg(2))).unwrap(); // a new message, still bound
        a.update_route(0, None).unwrap();
        a.update_route(0, None).unwrap(); // masking twice is harmless
        a.update_route(0, Some(msg(0))).unwrap();
        assert_eq!(router.state().msi.len(), 2);
        assert!(a.update_route(2, None).is_err());
        assert!(a.deliver(7, msg(0)).is_err());
        // Whether KVM finds a target for the message is its business.
        let _ = a.deliver(1, msg(1));
        assert!(router.vectors(5000).is_err());
    }
}
