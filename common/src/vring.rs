//! The vring type every backend uses: `vhost-user-backend`'s `VringRwLock`
//! plus one check it lacks. `virtio-queue` ignores a SET_VRING_NUM that is
//! not a power of two (it logs and keeps the previous size) and the handler
//! acks it, so the backend would use a ring of another size than the
//! frontend laid out. We remember the bad size and refuse the ring at the
//! next SET_VRING_ADDR, which fails the request (an error ack) and ends the
//! connection with a log line naming the queue size.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};

use vhost_user_backend::{VringRwLock, VringState, VringStateGuard, VringStateMutGuard, VringT};
use virtio_queue::Error as VirtQueError;

use crate::serve::GuestMem;

/// No bad size pending.
const SIZE_OK: u32 = u32::MAX;

/// A `VringRwLock` that refuses a ring whose size is not a power of two.
#[derive(Clone)]
pub struct Vring {
    inner: VringRwLock<GuestMem>,
    bad_size: Arc<AtomicU32>,
    enabled: Arc<AtomicBool>,
}

impl Vring {
    /// Raises the ring's kick again. `vhost-user-backend` reads and drops
    /// a kick that comes while the ring is disabled, and nothing looks at
    /// the ring when SET_VRING_ENABLE follows (QEMU sends it after the kick
    /// fd without waiting), so a driver that kicks right after DRIVER_OK
    /// could wait forever for its first request.
    fn rekick(&self) {
        let guard = self.inner.get_ref();
        let Some(kick) = guard.get_kick() else {
            return;
        };
        // The ring state owns the kick eventfd and keeps it open while
        // `guard` is held.
        if let Err(e) = nix::unistd::write(kick.as_raw_fd(), &1u64.to_ne_bytes()) {
            log::warn!(
                "re-raising a kick on an enabled ring: {}",
                io::Error::from(e)
            );
        }
    }

    /// Whether the frontend enabled the ring (SET_VRING_ENABLE, or
    /// SET_FEATURES without PROTOCOL_FEATURES). `VringState` keeps this
    /// but does not tell.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }
}

impl<'a> VringStateGuard<'a, GuestMem> for Vring {
    type G = RwLockReadGuard<'a, VringState<GuestMem>>;
}

impl<'a> VringStateMutGuard<'a, GuestMem> for Vring {
    type G = RwLockWriteGuard<'a, VringState<GuestMem>>;
}

impl VringT<GuestMem> for Vring {
    fn new(mem: GuestMem, max_queue_size: u16) -> Result<Self, VirtQueError> {
        Ok(Vring {
            inner: VringRwLock::new(mem, max_queue_size)?,
            bad_size: Arc::new(AtomicU32::new(SIZE_OK)),
            enabled: Arc::new(AtomicBool::new(false)),
        })
    }

    fn get_ref(&self) -> <Self as VringStateGuard<'_, GuestMem>>::G {
        self.inner.get_ref()
    }

    fn get_mut(&self) -> <Self as VringStateMutGuard<'_, GuestMem>>::G {
        self.inner.get_mut()
    }

    fn add_used(&self, desc_index: u16, len: u32) -> Result<(), VirtQueError> {
        self.inner.add_used(desc_index, len)
    }

    fn signal_used_queue(&self) -> io::Result<()> {
        self.inner.signal_used_queue()
    }

    fn enable_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.enable_notification()
    }

    fn disable_notification(&self) -> Result<(), VirtQueError> {
        self.inner.disable_notification()
    }

    fn needs_notification(&self) -> Result<bool, VirtQueError> {
        self.inner.needs_notification()
    }

    fn set_enabled(&self, enabled: bool) {
        self.inner.set_enabled(enabled);
        let was = self.enabled.swap(enabled, Ordering::AcqRel);
        if enabled && !was {
            self.rekick();
        }
    }

    fn set_queue_info(
        &self,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    ) -> Result<(), VirtQueError> {
        let bad = self.bad_size.load(Ordering::Relaxed);
        if bad != SIZE_OK {
            log::error!("SET_VRING_ADDR refused: the ring's size {bad} (SET_VRING_NUM) is not a power of two");
            return Err(VirtQueError::InvalidSize);
        }
        self.inner.set_queue_info(desc_table, avail_ring, used_ring)
    }

    fn queue_next_avail(&self) -> u16 {
        self.inner.queue_next_avail()
    }

    fn set_queue_next_avail(&self, base: u16) {
        self.inner.set_queue_next_avail(base)
    }

    fn set_queue_next_used(&self, idx: u16) {
        self.inner.set_queue_next_used(idx)
    }

    fn queue_used_idx(&self) -> Result<u16, VirtQueError> {
        self.inner.queue_used_idx()
    }

    fn set_queue_size(&self, num: u16) {
        if num.is_power_of_two() {
            self.bad_size.store(SIZE_OK, Ordering::Relaxed);
            self.inner.set_queue_size(num)
        } else {
            log::error!("SET_VRING_NUM {num}: a split ring's size must be a power of two");
            self.bad_size.store(u32::from(num), Ordering::Relaxed);
        }
    }

    fn set_queue_event_idx(&self, enabled: bool) {
        self.inner.set_queue_event_idx(enabled)
    }

    fn set_queue_ready(&self, ready: bool) {
        self.inner
            .set_queue_ready(ready && self.bad_size.load(Ordering::Relaxed) == SIZE_OK)
    }

    fn set_kick(&self, file: Option<File>) {
        self.inner.set_kick(file)
    }

    fn read_kick(&self) -> io::Result<bool> {
        self.inner.read_kick()
    }

    fn set_call(&self, file: Option<File>) {
        self.inner.set_call(file)
    }

    fn set_err(&self, file: Option<File>) {
        self.inner.set_err(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;
    use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

    #[test]
    fn a_size_that_is_not_a_power_of_two_fails_the_ring_address() {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
        );
        let v = Vring::new(mem, 256).unwrap();
        v.set_queue_size(100);
        assert!(v.set_queue_info(0x1000, 0x2000, 0x3000).is_err());
        v.set_queue_size(64);
        assert!(v.set_queue_info(0x1000, 0x2000, 0x3000).is_ok());
        assert_eq!(v.get_ref().get_queue().size(), 64);
    }

    #[test]
    fn enabling_a_ring_raises_its_kick_again() {
        use std::os::unix::net::UnixDatagram;
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
        );
        let v = Vring::new(mem, 256).unwrap();
        // A datagram pair stands in for the eventfd: one 8-byte write each.
        let (ours, theirs) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        v.set_kick(Some(File::from(std::os::fd::OwnedFd::from(theirs))));
        let count = || {
            let mut b = [0u8; 8];
            match ours.recv(&mut b) {
                Ok(8) => u64::from_ne_bytes(b),
                _ => 0,
            }
        };
        v.set_enabled(true);
        assert_eq!(count(), 1, "enabling raised the kick");
        v.set_enabled(true);
        assert_eq!(count(), 0, "already enabled: nothing more");
        v.set_enabled(false);
        v.set_enabled(true);
        assert_eq!(count(), 1);
    }

    #[test]
    fn the_enabled_state_is_visible() {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap(),
        );
        let v = Vring::new(mem, 256).unwrap();
        assert!(!v.is_enabled());
        v.set_enabled(true);
        assert!(v.clone().is_enabled());
        v.set_enabled(false);
        assert!(!v.is_enabled());
    }
}
