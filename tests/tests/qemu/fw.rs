//! The freestanding test guest (`tests/guest-fw`) under QEMU TCG drives our
//! daemons with its own virtio 1.x PCI drivers: it enumerates PCI, sets
//! each virtio function up per the spec (capabilities, feature
//! negotiation, split queues, MSI-X to its LAPIC where the device has
//! MSI-X), then
//! - blk (`vhost-blk-daemon`): writes a pattern to sector 8 and reads it
//!   back; the test finds the pattern in the host's image;
//! - fs (our `virtiofsd`, tag `kataShared` read from the device config):
//!   FUSE INIT, LOOKUP, OPEN and READ of `hello.txt`, printed;
//! - net (`vhost-net-daemon` on a tap in a test network namespace): one
//!   broadcast frame, which the test receives on the tap;
//!
//! and powers off through ACPI (QEMU's tables: RSDT, `_S5_` = 0), so QEMU
//! exits 0. Blk and fs queues must show their MSI-X vector pending in the
//! LAPIC; the net device has none under QEMU (see `vu_driver::fw_qemu`).
//!
//! Needs `qemu-system-x86_64` (`scripts/setup.sh`), the `x86_64-unknown-none`
//! target, root for the namespace, and `cargo build --workspace --bins`;
//! anything missing is a failure.

use vu_driver::fixture::{Daemon, TempDir};
use vu_driver::fw_devices::*;
use vu_driver::fw_qemu::FwQemu;
use vu_driver::process::Finished;

/// Checks what every boot must show: the PCI scan, `devices` virtio
/// functions, no failure, and a clean ACPI power-off (exit 0).
fn assert_common(run: &Finished, devices: usize, daemons: &[&Daemon]) {
    let all = show(run, daemons);
    // A lost first kick (see `guest-fw/src/virtq.rs`) is survived, but shown.
    for l in run.stdout.lines().filter(|l| l.contains("re-kick")) {
        eprintln!("note: {l}");
    }
    assert_eq!(run.code(), Some(0), "{all}");
    for want in [
        "hello from the test guest\n".to_string(),
        "pci 00:00.0 8086:29c0 class 0600\n".to_string(),
        format!("virtio: {devices} device(s)\n"),
        "all 1 cpu(s) up; powering off\n".to_string(),
    ] {
        assert!(run.stdout.contains(&want), "missing {want:?}\n{all}");
    }
    for bad in ["FAILED", "panic", "did not stop the VM", "not seen"] {
        assert!(!run.stdout.contains(bad), "{bad:?} on the console\n{all}");
    }
}

fn boot(q: FwQemu) -> Finished {
    q.run().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn no_devices_boots_and_powers_off() {
    let run = boot(FwQemu::new());
    assert_common(&run, 0, &[]);
    assert!(
        run.stdout
            .contains("acpi: 1 cpu(s), PM1a control port 0x604\n"),
        "{}",
        show(&run, &[])
    );
}

#[test]
fn blk_sector_round_trip_through_vhost_blk_daemon() {
    let dir = TempDir::new("vutest-fw-blk").unwrap();
    let b = blk(&dir);
    let run = boot(FwQemu::new().blk(&b.socket));
    assert_common(&run, 1, &[&b.daemon]);
    assert_blk(&run, &b, &[&b.daemon]);
}

#[test]
fn fs_lookup_and_read_through_virtiofsd() {
    let dir = TempDir::new("vutest-fw-fs").unwrap();
    let f = fs_share(&dir, &[]);
    let run = boot(FwQemu::new().fs(&f.socket, TAG));
    assert_common(&run, 1, &[&f.daemon]);
    assert_fs(&run, TAG, &[&f.daemon]);
}

#[test]
fn net_frame_reaches_the_tap_through_vhost_net_daemon() {
    let dir = TempDir::new("vutest-fw-net").unwrap();
    let n = net(&dir);
    let run = boot(FwQemu::new().net(&n.socket, MAC));
    assert_common(&run, 1, &[&n.daemon]);
    assert_net(&run, &n, false, &[&n.daemon]);
}

#[test]
fn all_three_devices_in_one_guest() {
    let dir = TempDir::new("vutest-fw-all").unwrap();
    let b = blk(&dir);
    let f = fs_share(&dir, &[]);
    let n = net(&dir);
    let run = boot(
        FwQemu::new()
            .blk(&b.socket)
            .fs(&f.socket, TAG)
            .net(&n.socket, MAC),
    );
    let daemons = [&b.daemon, &f.daemon, &n.daemon];
    eprintln!("--- guest console\n{}", run.stdout);
    assert_common(&run, 3, &daemons);
    assert_blk(&run, &b, &daemons);
    assert_fs(&run, TAG, &daemons);
    assert_net(&run, &n, false, &daemons);
}
