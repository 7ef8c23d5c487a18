//! A backend killed mid-run (issue #6): the test guest drives a disk, a
//! share and a NIC served by our three daemons (`vu_driver::fw_devices`),
//! then waits for the power button (`wait-power-button`). The disk's
//! daemon is killed and none comes back on its socket within the disk's
//! `reconnect=1` (one second of retries): the VMM keeps running and
//! `vm.info` shows the disk `failed`, the share and the NIC `connected`. After the power button the
//! guest prints each device's `device_status` as it reads it then
//! (`guest-fw/src/status.rs`): DEVICE_NEEDS_RESET (0x40) on the disk only,
//! with the disk's configuration-change MSI-X vector pending in its LAPIC
//! and no other device's. The guest powers off, `vmm.shutdown` ends the
//! VMM with 0, and the other two daemons are still serving.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vu_driver::fixture::TempDir;
use vu_driver::fixture::{poll_until, Daemon};
use vu_driver::fw_devices::{self, Blk, Fs, Net};
use vu_driver::process::Finished;
use vu_driver::vmm::{
    guest_logs, press_power_button, serial, shutdown_vmm, spawn_test_guest, vm_info as info,
    wait_for_serial, WAITING,
};

/// KVM here emulates every instruction: the guest needs a few seconds to
/// drive three devices and reach its wait; the margin is for loaded
/// machines.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(30);
/// virtio device status bits.
const DRIVER_READY: u8 = 0x0f; // ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
const NEEDS_RESET: u8 = 0x40;

/// The status and JSON body (Null when empty) of one request.
fn call(api: &Path, method: &str, path: &str) -> (u16, Value) {
    vu_driver::http::call(api, method, path, None)
}

/// `(id, backend_state)` of every device in `vm.info`, in plug order.
fn backend_states(vm: &Value) -> Vec<(String, String)> {
    vm["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("no devices in {vm}"))
        .iter()
        .map(|d| {
            let s = |k: &str| d[k].as_str().unwrap_or_default().to_string();
            (s("id"), s("backend_state"))
        })
        .collect()
}

fn states(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The VMM with the three devices, the API on `api` and the serial console
/// in the file `console` (apart from the VMM's log), once the guest waits
/// for the power button.
fn vmm_waiting(api: &Path, console: &Path, b: &Blk, f: &Fs, n: &Net) -> Daemon {
    let mut vmm = spawn_test_guest(
        api,
        console,
        "wait-power-button",
        &[
            "--disk".into(),
            format!("socket={},reconnect=1", b.socket.display()),
            "--fs".into(),
            format!("tag=myfs,socket={}", f.socket.display()),
            "--net".into(),
            format!("socket={},mac={}", n.socket.display(), fw_devices::MAC),
        ],
        BOOT_TIMEOUT,
    );
    wait_for_serial(&mut vmm, console, WAITING, BOOT_TIMEOUT, |vmm| {
        guest_logs(console, vmm, &[&b.daemon, &f.daemon, &n.daemon])
    });
    vmm
}

/// The guest's status line of `bdf` (`00:01.0`) `kind`: the device status
/// byte and the rest of the line after it.
fn status_line<'a>(out: &'a str, bdf: &str, kind: &str) -> Option<(u8, &'a str)> {
    let prefix = format!("status {bdf} {kind}: 0x");
    let rest = out.lines().find_map(|l| l.strip_prefix(&prefix))?;
    let status = u8::from_str_radix(rest.get(..2)?, 16).ok()?;
    Some((status, &rest[2..]))
}

#[test]
fn a_killed_backend_needs_a_reset_in_the_guest_on_that_device_only() {
    let dir = TempDir::new("vmm-needs-reset").unwrap();
    let mut b = fw_devices::blk(&dir);
    let mut f = fw_devices::fs_share(&dir, &["--tag", "myfs"]);
    let mut n = fw_devices::net(&dir);
    let api = dir.join("api.sock");
    let console = dir.join("console.txt");
    let mut vmm = vmm_waiting(&api, &console, &b, &f, &n);

    // The guest drove all three devices before it waited.
    let run = Finished {
        status: None,
        stdout: serial(&console),
        stderr: vmm.log_contents(),
    };
    let daemons = [&b.daemon, &f.daemon, &n.daemon];
    assert!(
        run.stdout.contains("virtio: 3 device(s)\n") && !run.stdout.contains("FAILED"),
        "{}",
        guest_logs(&console, &vmm, &daemons)
    );
    fw_devices::assert_blk(&run, &b, &daemons);
    fw_devices::assert_fs(&run, "myfs", &daemons);
    fw_devices::assert_net(&run, &n, true, &daemons);
    let vm = info(&api);
    assert_eq!(vm["state"], "Running", "{vm}");
    assert_eq!(
        backend_states(&vm),
        states(&[
            ("disk0", "connected"),
            ("fs0", "connected"),
            ("net0", "connected")
        ]),
        "{vm}"
    );

    // Kill the disk's daemon: the VMM notices, marks the disk failed and
    // runs on.
    vu_driver::crash::kill_hard(&mut b.daemon, WAIT).unwrap();
    let want = states(&[
        ("disk0", "failed"),
        ("fs0", "connected"),
        ("net0", "connected"),
    ]);
    assert!(
        poll_until(WAIT, || backend_states(&info(&api)) == want),
        "{}\n{}",
        info(&api),
        guest_logs(&console, &vmm, &[&f.daemon, &n.daemon])
    );
    let vm = info(&api);
    assert_eq!(vm["state"], "Running", "{vm}");
    assert!(vm["devices"][0]["backend_error"].as_str().is_some(), "{vm}");
    assert!(vm["devices"][1]["backend_error"].is_null(), "{vm}");
    assert!(vm["devices"][2]["backend_error"].is_null(), "{vm}");
    let (status, ping) = call(&api, "GET", "/api/v1/vmm.ping");
    assert_eq!(status, 200, "{ping}");
    assert_eq!(ping["pid"], vmm.pid());
    assert_eq!(vmm.try_wait().unwrap(), None, "{}", vmm.log_contents());

    // The power button: the guest reports what it reads and powers off.
    press_power_button(&api, &vmm, WAIT, || {
        guest_logs(&console, &vmm, &[&f.daemon, &n.daemon])
    });
    // The guest is off: its console is complete.
    let all = guest_logs(&console, &vmm, &[&f.daemon, &n.daemon]);
    let out = serial(&console);
    let pressed = out
        .find("power button pressed\n")
        .unwrap_or_else(|| panic!("{}", all));
    let after = &out[pressed..];
    // Shown with --nocapture.
    println!("--- the guest after the power button\n{after}");
    assert!(after.contains("powering off"), "{}", all);

    let (blk, rest) =
        status_line(after, "00:01.0", "blk").unwrap_or_else(|| panic!("no blk status\n{}", all));
    assert_eq!(blk, DRIVER_READY | NEEDS_RESET, "{}", all);
    assert!(
        rest.starts_with(" needs-reset, config msi-x vector 0x"),
        "{rest:?}\n{}",
        all
    );
    assert!(
        rest.ends_with(" pending") && !rest.ends_with("not pending"),
        "{rest:?}\n{}",
        all
    );
    for (bdf, kind) in [("00:02.0", "fs"), ("00:03.0", "net")] {
        let (status, rest) =
            status_line(after, bdf, kind).unwrap_or_else(|| panic!("no {kind} status\n{}", all));
        assert_eq!(status, DRIVER_READY, "{kind}\n{}", all);
        assert!(
            rest.starts_with(" ok, config msi-x vector 0x") && rest.ends_with(" not pending"),
            "{kind}: {rest:?}\n{}",
            all
        );
    }
    assert_eq!(after.matches("\nstatus ").count(), 3, "{}", all);

    // Shutdown: the VMM serves on until vmm.shutdown, then exits 0.
    assert_eq!(info(&api)["state"], "Shutdown");
    shutdown_vmm(&api, &mut vmm, WAIT, |_| all.clone());
    assert!(!api.exists(), "the API socket was left behind");

    // The other backends were never disturbed.
    assert_eq!(
        f.daemon.try_wait().unwrap(),
        None,
        "{}",
        f.daemon.log_contents()
    );
    assert_eq!(
        n.daemon.try_wait().unwrap(),
        None,
        "{}",
        n.daemon.log_contents()
    );
}
