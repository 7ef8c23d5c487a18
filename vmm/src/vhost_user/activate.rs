//! `vu-activate`: the VMM thread where vhost-user devices talk to their
//! backends on the guest's behalf.
//!
//! A driver's DRIVER_OK write, its reset (a 0 written to the status) and
//! its configuration writes reach the device on a vCPU thread, under the
//! device's lock. Each means vhost-user messages whose replies are waited
//! for (up to [`REPLY_TIMEOUT`](devices::vhost_user::REPLY_TIMEOUT) each),
//! so done there, a hung backend would stall the vCPU and hold the
//! device's lock, and with it `vm.info`, `vu-watch` and every other vCPU
//! that touches the device. Instead the frontend hands them to this
//! thread (its [`Deferrer`]), which runs them in order, and the access
//! returns at once: the vCPU runs on. The driver cannot tell: its status
//! reads DRIVER_OK at once and every ring is kicked when the activation is
//! done (a kick made meanwhile is not lost); after a reset the status
//! reads as before until the rings are stopped, and a virtio 1.x driver
//! waits for 0. After each job the transport is checked, so an activation
//! that failed sets DEVICE_NEEDS_RESET with a configuration interrupt.

use std::io;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, Weak};

use devices::vhost_user::Deferrer;

use super::{lock, Transport};

/// One deferred request and the transport to check after it.
struct Job {
    work: Box<dyn FnOnce() + Send>,
    transport: Weak<Mutex<Transport>>,
}

/// The `vu-activate` thread. It ends once this and every device's
/// deferrer are gone; nothing joins it (a request hung on a backend must
/// not hold up the VMM's exit).
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
        let job = Job {
            work,
            transport: self.transport.clone(),
        };
        if let Err(e) = self.jobs.send(job) {
            // The thread is gone (it panicked): run it here, as without
            // it. The transport checks the device when this returns.
            log::warn!("vu-activate is gone; running a vhost-user request on the vCPU thread");
            (e.0.work)();
        }
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
    const QUEUE_SELECT: u64 = 0x16;
    const QUEUE_ENABLE: u64 = 0x1c;
    const QUEUE_DESC: u64 = 0x20;
    const QUEUE_DRIVER: u64 = 0x28;
    const QUEUE_DEVICE: u64 = 0x30;
    /// The device configuration region in BAR 0.
    const DEVICE_CFG: u64 = 0x2000;

    #[test]
    fn driver_ok_and_reset_return_at_once_while_the_backend_hangs() {
        let (mem_reached_tx, mem_reached) = channel();
        let (mem_release, mem_release_rx) = channel();
        let (base_reached_tx, base_reached) = channel();
        let (base_release, base_release_rx) = channel();
        let hangs = vec![
            Hang {
                at: "SET_MEM_TABLE",
                reached: mem_reached_tx,
                release: mem_release_rx,
            },
            Hang {
                at: "GET_VRING_BASE",
                reached: base_reached_tx,
                release: base_release_rx,
            },
        ];
        let (dev, _peer) = device_hanging(4, hangs);
        let activation = ActivationThread::start().unwrap();
        let deferrer = activation.deferrer(dev.transport());
        lock(dev.transport()).device_mut().defer_requests(deferrer);

        // The driver's steps, as a vCPU makes them: VERSION_1 acked,
        // FEATURES_OK, a queue, then DRIVER_OK.
        let write = |offset: u64, data: &[u8]| lock(dev.transport()).write_bar(0, offset, data);
        let status = || {
            let mut b = [0u8];
            lock(dev.transport()).read_bar(0, DEVICE_STATUS, &mut b);
            b[0]
        };
        write(DEVICE_STATUS, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
        write(DRIVER_FEATURE_SELECT, &1u32.to_le_bytes());
        write(DRIVER_FEATURE, &1u32.to_le_bytes());
        let features_ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        write(DEVICE_STATUS, &[features_ok]);
        write(QUEUE_SELECT, &0u16.to_le_bytes());
        write(QUEUE_DESC, &0x1000u64.to_le_bytes());
        write(QUEUE_DRIVER, &0x2000u64.to_le_bytes());
        write(QUEUE_DEVICE, &0x3000u64.to_le_bytes());
        write(QUEUE_ENABLE, &1u16.to_le_bytes());
        assert_eq!(status(), features_ok);
        let driver_ok = features_ok | STATUS_DRIVER_OK;
        let start = Instant::now();
        write(DEVICE_STATUS, &[driver_ok]);
        mem_reached
            .recv_timeout(Duration::from_secs(10))
            .expect("the activation reached the backend");

        // The backend hangs in SET_MEM_TABLE on vu-activate; the vCPU ran
        // on, and its reads and the API's vm.info are answered meanwhile.
        assert_eq!(status(), driver_ok);
        let mut config = [0xffu8; 8];
        lock(dev.transport()).read_bar(0, DEVICE_CFG, &mut config);
        let info = dev.info();
        assert_eq!((info.state, info.needs_reset), (DeviceState::Ready, false));

        // The driver resets the device meanwhile: the write returns at
        // once, and the status reads as before until the reset is done.
        write(DEVICE_STATUS, &[0]);
        assert_eq!(status(), driver_ok, "the reset is still to be done");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        mem_release.send(()).unwrap();
        base_reached
            .recv_timeout(Duration::from_secs(10))
            .expect("the reset stops the ring the activation started");
        assert_eq!(status(), driver_ok, "the reset is still to be done");
        base_release.send(()).unwrap();
        assert!(wait_until(|| status() == 0), "the reset was done");
        assert_eq!(dev.info().state, DeviceState::Ready);
        assert!(!dev.info().needs_reset);
    }
}
