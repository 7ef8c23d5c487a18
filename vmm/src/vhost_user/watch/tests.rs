//! The watcher against real frontends and transports whose backend is a
//! fake over a socketpair: closing the peer is a backend dying.

use std::time::Duration;

use devices::vhost_user::DeviceState;
use devices::virtio_pci::STATUS_DEVICE_NEEDS_RESET;

use super::Watcher;
use crate::vhost_user::test_rig::{device, device_reconnecting, wait_until};

#[test]
fn a_closed_peer_fails_only_its_device() {
    let (a, peer_a) = device(1);
    let (b, _peer_b) = device(2);
    let watcher = Watcher::start(vec![a.clone(), b.clone()]).unwrap();
    let info = a.info();
    assert_eq!(
        (info.state, info.needs_reset, info.bdf.to_string()),
        (DeviceState::Ready, false, "0000:00:01.0".into())
    );
    assert_eq!(info.socket.to_str(), Some("/test/blk1.sock"));

    drop(peer_a);
    assert!(
        wait_until(|| a.info().state == DeviceState::Failed),
        "the watcher did not notice the hang-up"
    );
    // check_device ran too: DEVICE_NEEDS_RESET is set.
    assert!(wait_until(|| a.info().needs_reset));
    let t = a.transport().lock().unwrap();
    assert_ne!(t.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    drop(t);
    // The other device is untouched.
    let other = b.info();
    assert_eq!(
        (other.state, other.needs_reset),
        (DeviceState::Ready, false)
    );
    // Checking again is harmless (and logs nothing more).
    assert!(a.check_backend());
    assert!(!b.check_backend());
    // Stopping joins the thread.
    drop(watcher);
}

#[test]
fn unexpected_data_counts_as_gone_but_an_idle_socket_does_not() {
    let (a, mut peer) = device(3);
    assert!(!a.check_backend());
    let watcher = Watcher::start(vec![a.clone()]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(a.info().state, DeviceState::Ready);
    std::io::Write::write_all(&mut peer, b"x").unwrap();
    assert!(wait_until(|| a.info().state == DeviceState::Failed));
    drop(watcher);
}

#[test]
fn a_lost_backend_is_retried_until_the_limit_then_needs_a_reset() {
    let (a, peer_a) = device_reconnecting(4, "1");
    let (b, _peer_b) = device_reconnecting(5, "0");
    let watcher = Watcher::start(vec![a.clone(), b.clone()]).unwrap();
    drop(peer_a);
    // Nobody listens at /test/blk4.sock: the device stays reconnecting,
    // the guest sees nothing...
    assert!(wait_until(|| a.info().state == DeviceState::Reconnecting));
    assert!(!a.info().needs_reset);
    // ...until the limit (1 s) runs out.
    assert!(wait_until(|| a.info().state == DeviceState::Failed));
    assert!(wait_until(|| a.info().needs_reset));
    let other = b.info();
    assert_eq!(
        (other.state, other.needs_reset),
        (DeviceState::Ready, false)
    );
    drop(watcher);
}

#[test]
fn a_watcher_with_no_devices_stops() {
    let w = Watcher::start(Vec::new()).unwrap();
    drop(w);
}
