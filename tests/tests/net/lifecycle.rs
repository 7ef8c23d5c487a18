//! What only `vhost-net-daemon` does at the end of its life: the relay
//! (common/src/relay.rs) makes a private directory under
//! `$RUNTIME_DIRECTORY` or `$TMPDIR` for each connection's socket, and a
//! clean exit removes it again. The lifecycle every daemon shares is in
//! the `daemons` binary.

use std::time::Duration;

use vu_driver::fixture::{Daemon, Readiness, TempDir, DEFAULT_READY_TIMEOUT};
use vu_driver::lifecycle::{assert_no_panic, signal_and_wait};
use vu_driver::net::{NetClient, NetOptions};
use vu_driver::ours::vhost_net_daemon_command;
use vu_driver::tap::HostSide;

use crate::common::{namespace, GUEST_MAC, GUEST_MAC_ARG, TAP};

#[test]
fn sigterm_after_serving_leaves_nothing_in_its_temporary_directory() {
    let ns = namespace(false);
    let dir = TempDir::new("net-life-tmpdir").unwrap();
    let socket = dir.join("net.sock");
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let mut cmd =
        vhost_net_daemon_command(&ns, &socket, &["--tap", TAP, "--mac", GUEST_MAC_ARG]).unwrap();
    cmd.env("TMPDIR", &tmp).env_remove("RUNTIME_DIRECTORY");
    let ready = [Readiness::Path(socket.clone())];
    let mut d = Daemon::spawn(
        "vhost-net-daemon",
        cmd,
        &socket,
        &ready,
        DEFAULT_READY_TIMEOUT,
    )
    .unwrap();
    let host = HostSide::open(&ns, TAP);
    for round in 1..=2 {
        let mut net = NetClient::connect(&socket, &NetOptions::default()).unwrap();
        host.assert_exchange(&mut net, 0, GUEST_MAC, &format!("cycle {round}"));
    }
    let (status, _) = signal_and_wait(&mut d, libc::SIGTERM, Duration::from_secs(2));
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        status.success(),
        "exit status {status}; left in $TMPDIR: {left:?}"
    );
    assert!(
        left.is_empty(),
        "left in $TMPDIR after a clean exit: {left:?}"
    );
    assert_no_panic(&d);
}
