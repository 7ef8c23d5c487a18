//! `vu-activate`: the VMM thread where vhost-user devices are activated.
//!
//! A driver's DRIVER_OK write reaches its device on a vCPU thread, under
//! the device's lock. Activation sends every vring message and waits for
//! each reply (up to [`REPLY_TIMEOUT`](devices::vhost_user::REPLY_TIMEOUT)),
//! so done there, a hung backend would hold the device's lock, and with it
//! `vm.info`, `vu-watch` and every other vCPU that touches the device.
//! Instead the frontend hands the activation to this thread (its
//! [`Deferrer`]) and the access returns at once, the lock released; the
//! device's status, configuration and state stay readable meanwhile. The
//! vCPU that wrote DRIVER_OK then waits, outside any lock, until the
//! activation is over ([`bus::wait_after_access`]; it still parks for a
//! pause and leaves for a stop): a guest that ran on would kick rings the
//! backend has not enabled yet, and a backend drops such a kick. After
//! each activation the transport is checked, so one that failed sets
//! DEVICE_NEEDS_RESET with a configuration interrupt.
//!
//! A reset still runs on the vCPU, under the lock (the driver must see the
//! rings stopped before its status read returns 0); it waits for an
//! activation in flight.

use std::io;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, Weak};

use devices::vhost_user::Deferrer;

use super::{lock, Transport};
use crate::bus;

/// One deferred activation, the transport to check after it, and what
/// tells the vCPU it is over (dropped when it is).
struct Job {
    work: Box<dyn FnOnce() + Send>,
    transport: Weak<Mutex<Transport>>,
    _done: Sender<()>,
}

/// The `vu-activate` thread. It ends once this and every device's
/// deferrer are gone; nothing joins it (an activation hung on a backend
/// must not hold up the VMM's exit).
pub struct ActivationThread {
    jobs: Sender<Job>,
}

impl ActivationThread {
    /// Starts the thread.
    pub fn start() -> io::Result<Self> {
        let (jobs, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name("vu-activate".into())
            .spawn(move || {
                for job in rx {
                    (job.work)();
                    if let Some(t) = job.transport.upgrade() {
                        lock(&t).check_device();
                    }
                }
            })?;
        Ok(Self { jobs })
    }

    /// The deferrer of the device behind `transport`.
    pub fn deferrer(&self, transport: &Arc<Mutex<Transport>>) -> Arc<dyn Deferrer> {
        Arc::new(DeviceDeferrer {
            jobs: self.jobs.clone(),
            transport: Arc::downgrade(transport),
        })
    }
}

/// Hands one device's activations to the thread.
struct DeviceDeferrer {
    jobs: Sender<Job>,
    transport: Weak<Mutex<Transport>>,
}

impl Deferrer for DeviceDeferrer {
    fn defer(&self, work: Box<dyn FnOnce() + Send>) {
        let (done, wait) = channel();
        let job = Job {
            work,
            transport: self.transport.clone(),
            _done: done,
        };
        if let Err(e) = self.jobs.send(job) {
            // The thread is gone (it panicked): activate here, as without
            // it. The transport checks the device when this returns.
            log::warn!("vu-activate is gone; activating on the vCPU thread");
            (e.0.work)();
            return;
        }
        bus::wait_after_access(wait);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;
    use std::time::{Duration, Instant};

    use devices::pci::PciDevice;
    use devices::vhost_user::DeviceState;
    use devices::virtio_pci::{
        STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    };

    use super::*;
    use crate::vhost_user::test_rig::{device_hanging, wait_until, Hang};

    /// Common configuration registers (virtio 1.2 §4.1.4.3).
    const DRIVER_FEATURE_SELECT: u64 = 0x08;
    const DRIVER_FEATURE: u64 = 0x0c;
    const DEVICE_STATUS: u64 = 0x14;
    /// The device configuration region in BAR 0.
    const DEVICE_CFG: u64 = 0x2000;

    #[test]
    fn driver_ok_frees_the_device_at_once_and_the_vcpu_waits_outside_its_lock() {
        let (reached_tx, reached) = channel();
        let (release, release_rx) = channel();
        let hang = Hang {
            reached: reached_tx,
            release: release_rx,
        };
        let (dev, _peer) = device_hanging(4, Some(hang));
        let activation = ActivationThread::start().unwrap();
        let deferrer = activation.deferrer(dev.transport());
        lock(dev.transport())
            .device_mut()
            .defer_activation(deferrer);

        // The driver's steps, as a vCPU makes them: VERSION_1 acked,
        // FEATURES_OK, then DRIVER_OK.
        let write = |offset: u64, data: &[u8]| lock(dev.transport()).write_bar(0, offset, data);
        write(DEVICE_STATUS, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
        write(DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
        write(DRIVER_FEATURE, &1u32.to_le_bytes());
        let features_ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        write(DEVICE_STATUS, &[features_ok]);
        assert_eq!(lock(dev.transport()).status(), features_ok);
        let start = Instant::now();
        let (vcpu_tx, vcpu) = channel();
        let transport = dev.transport().clone();
        std::thread::spawn(move || {
            lock(&transport).write_bar(0, DEVICE_STATUS, &[features_ok | STATUS_DRIVER_OK]);
            // The access is over, the lock free; then the vCPU waits.
            let waits = bus::take_waits();
            let _ = vcpu_tx.send(waits.len());
            for done in waits {
                let _ = done.recv();
            }
            let _ = vcpu_tx.send(0);
        });
        assert_eq!(
            vcpu.recv_timeout(Duration::from_secs(2)),
            Ok(1),
            "the vCPU's DRIVER_OK write returned, with one activation to wait for"
        );
        reached
            .recv_timeout(Duration::from_secs(10))
            .expect("the activation reached the backend");

        // The backend hangs in SET_MEM_TABLE on vu-activate; the vCPU's
        // reads and the API's vm.info are answered meanwhile.
        assert_eq!(
            lock(dev.transport()).status(),
            features_ok | STATUS_DRIVER_OK
        );
        let mut config = [0xffu8; 8];
        lock(dev.transport()).read_bar(0, DEVICE_CFG, &mut config);
        let info = dev.info();
        assert_eq!((info.state, info.needs_reset), (DeviceState::Ready, false));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );

        assert!(
            vcpu.try_recv().is_err(),
            "the vCPU waits for the activation"
        );
        release.send(()).unwrap();
        assert_eq!(vcpu.recv_timeout(Duration::from_secs(10)), Ok(0));
        assert!(wait_until(|| dev.info().state == DeviceState::Active));
        assert!(!dev.info().needs_reset);
    }
}
