//! The VMM's control API (`--api-socket`, issue #6) over the real VMM: the
//! test guest boots with a vhost-user disk and `wait-power-button` on its
//! command line, so it waits for the ACPI power button instead of powering
//! off. Then: ping, info, counters, pause (no guest progress), resume,
//! power button (the guest sees PWRBTN_STS and powers off), the VMM still
//! serving in the Shutdown state, `vmm.shutdown` (exit 0, socket removed);
//! malformed requests answered 4xx with JSON; a backend killed while the
//! guest waits shows as failed while the VMM keeps serving; a live socket
//! at the path is a one-line error.

use std::ffi::OsStr;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vu_driver::fixture::{poll_until, Daemon, TempDir};
use vu_driver::fw_devices;
use vu_driver::http::{self, exchange, get};
use vu_driver::process::{self, Finished};
use vu_driver::vmm::{
    run_vmm, serial, shutdown_vmm, spawn_test_guest, test_guest, vm_counter as counter,
    vm_info as info, wait_for_serial, POWERED_OFF, WAITING,
};

/// KVM here emulates every instruction: the guest needs a few seconds to
/// reach its wait; the margin is for loaded machines.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(30);

/// The VMM with 2 vCPUs, 64 MiB, the disk on `blk_sock` (`reconnect=off`:
/// a killed backend fails the disk at once), the API on
/// `api` and the serial console in the file `console` (apart from the
/// VMM's log, so lines do not interleave), once the guest waits for the
/// power button.
fn vmm_waiting(api: &Path, blk_sock: &Path, console: &Path) -> Daemon {
    vmm_waiting_with(api, blk_sock, console, &[])
}

/// [`vmm_waiting`] with `extra` arguments.
fn vmm_waiting_with(api: &Path, blk_sock: &Path, console: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "--cpus".into(),
        "boot=2".into(),
        "--disk".into(),
        format!("socket={},reconnect=off", blk_sock.display()),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut vmm = spawn_test_guest(api, console, "wait-power-button", &args, BOOT_TIMEOUT);
    wait_for_serial(&mut vmm, console, WAITING, BOOT_TIMEOUT, |vmm| {
        format!(
            "--- serial\n{}--- log\n{}",
            serial(console),
            vmm.log_contents()
        )
    });
    vmm
}

/// The status and JSON body (Null when empty) of one request.
fn call(api: &Path, method: &str, path: &str) -> (u16, Value) {
    http::call(api, method, path, None)
}

/// Our `vmm` booting the test guest in 32 MiB with `extra` arguments, to
/// its end (killed after `timeout`).
fn run_guest(extra: &[&OsStr], timeout: Duration) -> Finished {
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    let args = [
        "--kernel".as_ref(),
        guest.as_os_str(),
        "--memory".as_ref(),
        "size=32M".as_ref(),
    ];
    run_vmm(args.iter().chain(extra), timeout)
}

/// An error answer: the status and a JSON `{"error": "..."}` body.
fn assert_error(api: &Path, raw: &[u8], status: u16) {
    let r = exchange(api, raw).unwrap_or_else(|e| panic!("{}", vu_driver::error_chain(&e)));
    assert_eq!(r.status, status, "{raw:?} -> {r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    let body = r.json().unwrap();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
}

#[test]
fn the_api_pauses_resumes_and_powers_the_guest_off() {
    let dir = TempDir::new("vmm-api").unwrap();
    let b = fw_devices::blk(&dir);
    let blk_sock = &b.socket;
    let api = dir.join("api.sock");
    let console = dir.join("console.txt");
    let mut vmm = vmm_waiting(&api, blk_sock, &console);

    let (status, ping) = call(&api, "GET", "/api/v1/vmm.ping");
    assert_eq!(status, 200, "{ping}");
    assert_eq!(ping["pid"], vmm.pid());

    let vm = info(&api);
    assert_eq!(vm["state"], "Running", "{vm}");
    assert_eq!(vm["cpus"], 2, "{vm}");
    assert_eq!(vm["memory"]["size"], 64u64 << 20, "{vm}");
    let devices = vm["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{vm}");
    let disk = &devices[0];
    assert_eq!(disk["kind"], "block", "{vm}");
    assert_eq!(disk["id"], "disk0", "{vm}");
    assert_eq!(disk["socket"], blk_sock.display().to_string(), "{vm}");
    assert_eq!(disk["pci_bdf"], "0000:00:01.0", "{vm}");
    assert_eq!(disk["backend_state"], "connected", "{vm}");

    // The guest polls PM1a_STS: its port reads count up; the disk the
    // guest drove is active.
    let before = counter(&api, "vcpu0", "io_exits");
    assert!(
        poll_until(WAIT, || counter(&api, "vcpu0", "io_exits") > before),
        "vcpu0 makes no progress while running"
    );
    assert_eq!(counter(&api, "disk0", "active"), 1);
    assert_eq!(counter(&api, "disk0", "failed"), 0);

    // Malformed requests over the real VMM: 4xx with a JSON error, and
    // the VM is untouched.
    assert_error(&api, b"GARBAGE\r\n\r\n", 400);
    assert_error(
        &api,
        b"PUT /api/v1/vm.pause HTTP/1.1\r\nConnection: close\r\nContent-Length: 5\r\n\r\n{oops",
        400,
    );
    assert_error(
        &api,
        b"GET /api/v1/vm.nothing HTTP/1.1\r\nConnection: close\r\n\r\n",
        404,
    );
    assert_error(
        &api,
        b"DELETE /api/v1/vm.info HTTP/1.1\r\nConnection: close\r\n\r\n",
        405,
    );
    assert_eq!(info(&api)["state"], "Running");

    // Pause: returns once both vCPUs are parked. A parked vCPU thread
    // sleeps until resumed: once the handshake has settled (both threads
    // asleep, state S: the last to park wakes the other, which may not
    // have run yet), neither its exits nor its context switches move while
    // the VMM answers 50 requests and takes a power-button press (held
    // until the guest runs again), and the guest writes nothing.
    assert_eq!(call(&api, "PUT", "/api/v1/vm.pause").0, 204);
    assert_eq!(info(&api)["state"], "Paused");
    assert_eq!(call(&api, "PUT", "/api/v1/vm.pause").0, 409);
    let round_trips = |n: usize| {
        for _ in 0..n {
            assert_eq!(info(&api)["state"], "Paused");
        }
    };
    let parked = || {
        ["vcpu0", "vcpu1"].map(|v| {
            let t = process::thread_named(vmm.pid(), v).unwrap();
            let t = t.unwrap_or_else(|| panic!("no {v} thread"));
            (counter(&api, v, "exits"), t.switches())
        })
    };
    let asleep = || {
        ["vcpu0", "vcpu1"].iter().all(|v| {
            let t = process::thread_named(vmm.pid(), v).unwrap();
            t.is_some_and(|t| t.field("State").is_some_and(|s| s.starts_with('S')))
        })
    };
    assert!(
        poll_until(WAIT, asleep),
        "{:?}",
        process::threads(vmm.pid())
    );
    let before = parked();
    let console_len = serial(&console).len();
    assert_eq!(call(&api, "PUT", "/api/v1/vm.power-button").0, 204);
    round_trips(50);
    assert_eq!(parked(), before, "a paused vCPU ran: (exits, switches)");
    assert_eq!(serial(&console).len(), console_len, "{}", serial(&console));

    // Resume: the guest sees the press and powers off.
    assert_eq!(call(&api, "PUT", "/api/v1/vm.resume").0, 204);
    assert_eq!(call(&api, "PUT", "/api/v1/vm.resume").0, 409);
    assert!(
        poll_until(WAIT, || vmm.log_contents().contains(POWERED_OFF)),
        "{}",
        vmm.log_contents()
    );
    let out = serial(&console);
    let pressed = out
        .find("power button pressed\n")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(out[pressed..].contains("powering off"), "{out}");

    // Shutdown: the VMM still answers.
    assert_eq!(info(&api)["state"], "Shutdown");
    assert_eq!(call(&api, "GET", "/api/v1/vmm.ping").0, 200);
    assert_eq!(call(&api, "PUT", "/api/v1/vm.power-button").0, 409);
    assert_eq!(call(&api, "PUT", "/api/v1/vm.pause").0, 409);
    assert_error(&api, b"GARBAGE\r\n\r\n", 400);
    assert_eq!(vmm.try_wait().unwrap(), None, "{}", vmm.log_contents());

    shutdown_vmm(&api, &mut vmm, WAIT, Daemon::log_contents);
    assert!(!api.exists(), "the API socket was left behind");
}

#[test]
fn a_backend_killed_while_the_guest_waits_shows_failed() {
    let dir = TempDir::new("vmm-api-kill").unwrap();
    let mut b = fw_devices::blk(&dir);
    let blk_sock = &b.socket;
    let api = dir.join("api.sock");
    let console = dir.join("console.txt");
    let mut vmm = vmm_waiting(&api, blk_sock, &console);
    assert_eq!(info(&api)["devices"][0]["backend_state"], "connected");

    vu_driver::crash::kill_hard(&mut b.daemon, WAIT).unwrap();
    assert!(
        poll_until(WAIT, || info(&api)["devices"][0]["backend_state"]
            == "failed"),
        "{}\n{}",
        info(&api),
        vmm.log_contents()
    );
    let vm = info(&api);
    assert!(vm["devices"][0]["backend_error"].as_str().is_some(), "{vm}");
    assert_eq!(vm["state"], "Running", "{vm}");
    assert_eq!(counter(&api, "disk0", "failed"), 1);
    assert_eq!(call(&api, "GET", "/api/v1/vmm.ping").0, 200);
    assert_eq!(vmm.try_wait().unwrap(), None, "{}", vmm.log_contents());

    // vm.shutdown stops the guest; the VMM keeps serving.
    assert_eq!(call(&api, "PUT", "/api/v1/vm.shutdown").0, 204);
    assert_eq!(info(&api)["state"], "Shutdown");
    assert_eq!(call(&api, "PUT", "/api/v1/vm.shutdown").0, 409);
    // The vCPU threads have returned (so no exit can follow).
    let exits = counter(&api, "vcpu0", "exits");
    assert!(
        poll_until(WAIT, || ["vcpu0", "vcpu1"]
            .iter()
            .all(|v| process::thread_named(vmm.pid(), v).unwrap().is_none())),
        "vCPU threads still run after vm.shutdown: {:?}",
        process::threads(vmm.pid())
    );
    assert_eq!(counter(&api, "vcpu0", "exits"), exits);
    assert_eq!(vmm.try_wait().unwrap(), None, "{}", vmm.log_contents());

    shutdown_vmm(&api, &mut vmm, WAIT, Daemon::log_contents);
    assert!(!api.exists());
    assert!(get(&api, "/api/v1/vmm.ping").is_err());
}

#[test]
fn a_live_api_socket_is_a_one_line_error() {
    let dir = TempDir::new("vmm-api-live").unwrap();
    let api = dir.join("api.sock");
    let _other = UnixListener::bind(&api).unwrap();
    let run = run_guest(&["--api-socket".as_ref(), api.as_os_str()], WAIT);
    let line = run
        .refusal(&[1], &[api.to_str().unwrap(), "in use"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{line}");
    assert!(
        !run.stdout.contains("hello from the test guest"),
        "{}",
        run.stdout
    );
    // The other listener's socket is left alone.
    assert!(api.exists());
}

#[test]
fn without_an_api_socket_power_off_still_ends_the_vmm() {
    let run = run_guest(&[], BOOT_TIMEOUT);
    assert_eq!(run.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains(WAITING), "{}", run.stdout);
    assert!(run.stderr.contains("guest powered off"), "{}", run.stderr);
}

/// Each thread's name, `Seccomp` mode and `Seccomp_filters` count.
fn thread_filters(pid: u32) -> Vec<(String, u32, u32)> {
    let number = |t: &process::ThreadStatus, f: &str| -> u32 {
        let v = t.field(f).unwrap_or_else(|| panic!("no {f} in {t:?}"));
        v.parse().unwrap_or_else(|_| panic!("{f}: {v}"))
    };
    process::threads(pid)
        .unwrap()
        .iter()
        .map(|t| {
            let name = t.name().to_string();
            (name, number(t, "Seccomp"), number(t, "Seccomp_filters"))
        })
        .collect()
}

/// `--seccomp true` (the default): the main thread and what it starts run
/// under the VMM's filter, the vCPUs and the API under two more of their
/// own, the thread that starts device daemons under none (a filter would
/// hold the daemons); `--seccomp false`: no filter anywhere. The VM runs
/// and the API answers either way.
#[test]
fn each_thread_runs_under_its_roles_seccomp_filter() {
    for seccomp in ["true", "false"] {
        let dir = TempDir::new("vmm-api-seccomp").unwrap();
        let b = fw_devices::blk(&dir);
        let api = dir.join("api.sock");
        let console = dir.join("console.txt");
        let mut vmm = vmm_waiting_with(&api, &b.socket, &console, &["--seccomp", seccomp]);
        assert_eq!(info(&api)["state"], "Running");
        let threads = thread_filters(vmm.pid());
        for role in ["vmm", "vcpu0", "vcpu1", "vmm-api"] {
            assert!(
                threads.iter().any(|(name, ..)| name == role),
                "--seccomp {seccomp}: no {role} thread in {threads:?}"
            );
        }
        // KVM's own kernel workers (kvm-nx-lpage-recovery) show in the
        // task list too; they are not the VMM's.
        for (name, mode, filters) in threads.iter().filter(|(n, ..)| !n.starts_with("kvm-")) {
            // The VMM's and the one that answers `clone3` with ENOSYS,
            // then for a vCPU or the API: its own and the one that answers
            // `openat` with ENOENT.
            let want = match (seccomp, name.as_str()) {
                ("false", _) | (_, "vmm-launcher") => 0,
                (_, n) if n.starts_with("vcpu") || n.starts_with("vmm-api") => 4,
                _ => 2,
            };
            assert_eq!(
                (*filters, *mode),
                (want, if want == 0 { 0 } else { 2 }),
                "--seccomp {seccomp}: thread {name}: (filters, mode); all: {threads:?}"
            );
        }
        assert_eq!(
            threads.iter().any(|(name, ..)| name == "vmm-launcher"),
            seccomp == "true",
            "{threads:?}"
        );
        assert_eq!(call(&api, "PUT", "/api/v1/vm.power-button").0, 204);
        assert!(
            poll_until(WAIT, || vmm.log_contents().contains(POWERED_OFF)),
            "{}",
            vmm.log_contents()
        );
        shutdown_vmm(&api, &mut vmm, WAIT, Daemon::log_contents);
    }
}
