//! Cloud Hypervisor's lifecycle API as Kata's `clh.go` drives it (issue
//! 16 step 1): `vmm --api-socket PATH -v --seccomp false` with no kernel,
//! `vmm.ping`, `vm.create` with the `VmConfig` clh.go builds, `vm.boot`,
//! the test guest driving our three daemons, `vm.info` in CH's shape,
//! `vm.shutdown`, `vm.delete`, `vmm.shutdown` (exit 0, socket removed),
//! the vsock's `vhost-device-vsock` the VMM ran gone with its hybrid
//! socket. And
//! the bad input: each a 4xx with a JSON error naming the field or file,
//! the VMM left as it was.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use vu_driver::fixture::{poll_until, Daemon, Readiness, TempDir};
use vu_driver::fw_devices;
use vu_driver::http;
use vu_driver::ours::bare_command;
use vu_driver::process::{children_running, Finished};
use vu_driver::vmm::{
    assert_devices_listed, halting_kernel, serial as console, shutdown_vmm, test_guest,
    wait_for_serial, with_vsock_backend, WAITING,
};

/// KVM here emulates every instruction: the guest needs seconds; the
/// margin is for a loaded 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(30);

/// Our `vmm` with `args` (and rust-vmm's vsock backend on its PATH),
/// ready once its API socket exists (it appears already listening).
fn spawn_vmm(args: &[&str], api: &Path) -> Daemon {
    let mut cmd: Command = bare_command("vmm").unwrap_or_else(|e| panic!("{e}"));
    with_vsock_backend(&mut cmd);
    cmd.args(args);
    Daemon::spawn("vmm", cmd, api, &[Readiness::Path(api.to_path_buf())], WAIT)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Status and JSON body (Null when empty) of `method path [body]`.
fn call(api: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    http::call(api, method, path, body)
}

fn put(api: &Path, path: &str) -> (u16, Value) {
    call(api, "PUT", path, None)
}

fn create(api: &Path, config: &Value) -> (u16, Value) {
    call(api, "PUT", "/api/v1/vm.create", Some(&config.to_string()))
}

/// A 4xx whose JSON error contains every one of `words`.
fn assert_refused(answer: (u16, Value), status: u16, words: &[&str]) {
    let (code, body) = answer;
    assert_eq!(code, status, "{body}");
    let error = body["error"].as_str().unwrap_or_else(|| panic!("{body}"));
    for w in words {
        assert!(error.contains(w), "{w:?} not in {error:?}");
    }
}

/// The paths a launch uses.
struct Launch<'a> {
    kernel: &'a Path,
    console: &'a Path,
    fs: &'a Path,
    vsock: &'a Path,
}

/// The `vm.create` body Kata's Go runtime builds in `clh.go`
/// (kata-containers main at 00552864fa88, Kata 3.x; `CreateVM` then
/// `bootVM`) for a guest booted from an initrd, with `debug` off and a
/// virtio-fs shared directory: payload (kernel, cmdline, initramfs), cpus
/// with the topology it always sends, memory shared (virtio-fs needs it),
/// rng, serial and console, `fs` (kataShared) and the hybrid vsock.
/// Deviations, each because of this harness: the test guest has no
/// initrd (so none), its cmdline is its own, `max_vcpus` equals
/// `boot_vcpus` (Kata's `default_maxvcpus` set to `default_vcpus`; no
/// vCPU hotplug here), and the serial console goes to a file (Kata sends
/// `Off`, or `Tty` with debug) so the test can read the guest.
fn kata_vm_create(p: &Launch) -> Value {
    json!({
        "payload": {
            "kernel": p.kernel,
            "cmdline": "console=ttyS0 wait-power-button",
        },
        "cpus": {
            "boot_vcpus": 1,
            "max_vcpus": 1,
            "topology": {
                "threads_per_core": 1,
                "cores_per_die": 1,
                "dies_per_package": 1,
                "packages": 1,
            },
        },
        "memory": {"size": 64u64 << 20, "shared": true},
        "rng": {"src": "/dev/urandom"},
        "serial": {"mode": "File", "file": p.console},
        "console": {"mode": "Off"},
        "fs": [{
            "tag": fw_devices::TAG,
            "socket": p.fs,
            "num_queues": 1,
            "queue_size": 1024,
        }],
        "vsock": {"cid": 3, "socket": p.vsock},
    })
}

#[test]
fn kata_launch_sequence_with_our_three_daemons() {
    let dir = TempDir::new("vmm-lifecycle").unwrap();
    let b = fw_devices::blk(&dir);
    let f = fw_devices::fs_share(&dir, &[]);
    let n = fw_devices::net(&dir);
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    let api = dir.join("clh-api.sock");
    let console_file = dir.join("console.txt");
    let vsock = dir.join("clh.sock");
    let api_arg = api.to_str().unwrap();
    // clh.go's launchClh: the API socket, `-v` with debug, seccomp off.
    let mut vmm = spawn_vmm(&["--api-socket", api_arg, "-v", "--seccomp", "false"], &api);
    let log = |vmm: &Daemon| vmm.log_contents();

    // Kata polls vmm.ping until the VMM answers.
    let (status, ping) = call(&api, "GET", "/api/v1/vmm.ping", None);
    assert_eq!(status, 200, "{ping}");
    assert_eq!(ping["pid"], vmm.pid(), "{ping}");
    assert!(
        ping["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{ping}"
    );
    assert!(
        ping["build_version"].is_string() && ping["features"].is_array(),
        "{ping}"
    );
    assert_refused(
        call(&api, "GET", "/api/v1/vm.info", None),
        404,
        &["vm.create"],
    );

    // The body as clh.go shapes it (its hybrid vsock: the VMM runs
    // vhost-device-vsock), with the disk and NIC Kata would add later
    // (vm.add-disk, vm.add-net) as vhost-user devices of our daemons.
    let mut config = kata_vm_create(&Launch {
        kernel: &guest,
        console: &console_file,
        fs: &f.socket,
        vsock: &vsock,
    });
    config["disks"] = json!([{
        "vhost_user": true, "vhost_socket": b.socket, "num_queues": 1, "queue_size": 128,
    }]);
    config["net"] = json!([{
        "vhost_user": true, "vhost_socket": n.socket, "mac": fw_devices::MAC,
        "num_queues": 2, "queue_size": 256,
    }]);
    let (status, body) = create(&api, &config);
    assert_eq!(status, 204, "{body}\n{}", log(&vmm));
    let (status, info) = call(&api, "GET", "/api/v1/vm.info", None);
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["state"], "Created", "{info}");
    assert_eq!(info["config"], config, "{info}");
    assert_eq!(info["unsupported"], json!(["rng: ignored"]), "{info}");

    // vm.boot: answered once the vCPUs run.
    let (status, body) = put(&api, "/api/v1/vm.boot");
    assert_eq!(status, 204, "{body}\n{}", log(&vmm));
    wait_for_serial(&mut vmm, &console_file, WAITING, BOOT_TIMEOUT, |vmm| {
        format!(
            "--- console\n{}--- log\n{}",
            console(&console_file),
            log(vmm)
        )
    });

    // vm.info in Cloud Hypervisor's shape (what clh.go reads), ours beside.
    let (status, info) = call(&api, "GET", "/api/v1/vm.info", None);
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["state"], "Running", "{info}");
    assert_eq!(info["config"], config, "{info}");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 1, "{info}");
    assert_eq!(info["config"]["cpus"]["max_vcpus"], 1, "{info}");
    assert_eq!(info["config"]["memory"]["size"], 64u64 << 20, "{info}");
    assert_eq!(info["memory_actual_size"], 64u64 << 20, "{info}");
    let devices = info["devices"].as_array().unwrap();
    let kinds: Vec<&str> = devices
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["block", "fs", "net", "vsock"], "{info}");
    for d in devices {
        assert_eq!(d["backend_state"], "connected", "{info}");
    }
    // The hybrid socket Kata's shim connects to, served by a daemon the
    // VMM runs.
    assert!(
        vsock.exists(),
        "no hybrid vsock socket at {}",
        vsock.display()
    );
    assert_eq!(
        children_running(vmm.pid(), "vhost-device-vsock").len(),
        1,
        "no vhost-device-vsock among the vmm's children"
    );
    assert_eq!(put(&api, "/api/v1/vm.boot").0, 409);
    assert_refused(create(&api, &config), 409, &["already created"]);
    assert_eq!(put(&api, "/api/v1/vm.pause").0, 204);
    assert_eq!(
        call(&api, "GET", "/api/v1/vm.info", None).1["state"],
        "Paused"
    );
    assert_eq!(put(&api, "/api/v1/vm.resume").0, 204);

    // Kata's StopVM: shutdown, delete, then the VMM.
    assert_eq!(put(&api, "/api/v1/vm.shutdown").0, 204, "{}", log(&vmm));
    assert_eq!(
        call(&api, "GET", "/api/v1/vm.info", None).1["state"],
        "Shutdown"
    );
    assert_eq!(put(&api, "/api/v1/vm.delete").0, 204, "{}", log(&vmm));
    assert_refused(
        call(&api, "GET", "/api/v1/vm.info", None),
        404,
        &["vm.create"],
    );
    let left = children_running(vmm.pid(), "");
    assert!(left.is_empty(), "daemons left after vm.delete: {left:?}");
    assert!(!vsock.exists(), "the hybrid vsock socket was left behind");
    let status = shutdown_vmm(&api, &mut vmm, WAIT, log);
    assert!(!api.exists(), "the API socket was left behind");

    // What the guest did with each device, as in vmm_devices.
    let run = Finished {
        status: Some(status),
        stdout: console(&console_file),
        stderr: log(&vmm),
    };
    let daemons = [&b.daemon, &f.daemon, &n.daemon];
    // The vsock (virtio id 19) after them; the test guest has no driver.
    assert_devices_listed(&run.stdout, &["pci 00:04.0 1af4:1053"], || {
        fw_devices::show(&run, &daemons)
    });
    fw_devices::assert_blk(&run, &b, &daemons);
    fw_devices::assert_fs(&run, fw_devices::TAG, &daemons);
    fw_devices::assert_net(&run, &n, true, &daemons);
    // `-v` raised the log to debug; `--seccomp false` was heard.
    assert!(run.stderr.contains("--seccomp false"), "{}", run.stderr);
}

/// Entries in /proc/PID/fd.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// What each of `pid`'s descriptors points at.
fn fd_targets(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{}->{}", e.file_name().to_string_lossy(), target.display())
        })
        .collect()
}

/// A temporary directory named after `name` holding the halting kernel,
/// and the API socket's path in it.
fn halting_setup(name: &str) -> (TempDir, PathBuf, PathBuf) {
    let dir = TempDir::new(name).unwrap();
    let kernel = dir.join("halt.elf");
    halting_kernel(&kernel).unwrap();
    let api = dir.join("api.sock");
    (dir, kernel, api)
}

#[test]
fn bad_input_is_a_4xx_naming_the_field_and_leaves_nothing() {
    let (dir, kernel, api) = halting_setup("vmm-lifecycle-bad");
    let log_file = dir.join("vmm.log");
    let mut vmm = spawn_vmm(
        &[
            "--api-socket",
            api.to_str().unwrap(),
            "--log-file",
            log_file.to_str().unwrap(),
        ],
        &api,
    );
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    let pid = vmm.pid();

    assert_refused(put(&api, "/api/v1/vm.boot"), 404, &["boot", "vm.create"]);
    // Counted once the API serves (the socket is bound before the server
    // makes its stop eventfd; a count taken as soon as the socket appears
    // missed that one).
    let fds_before = fds(pid);
    assert_refused(put(&api, "/api/v1/vm.pause"), 404, &["vm.create"]);
    let raw = |body: &str| call(&api, "PUT", "/api/v1/vm.create", Some(body));
    assert_refused(raw("{\"payload\": {"), 400, &["not valid JSON"]);
    assert_refused(put(&api, "/api/v1/vm.create"), 400, &["needs a body"]);
    assert_refused(
        raw("{\"cpus\": {\"boot_vcpus\": 1, \"max_vcpus\": 1}}"),
        400,
        &["payload: is required"],
    );
    let missing = dir.join("no-such-vmlinux");
    let missing_kernel = json!({"payload": {"kernel": missing}});
    assert_refused(
        create(&api, &missing_kernel),
        400,
        &["payload.kernel", missing.to_str().unwrap(), "No such file"],
    );
    let ok = |extra: Value| {
        let mut c = json!({"payload": {"kernel": kernel}, "memory": {"size": 32u64 << 20}});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    assert_refused(
        create(&api, &ok(json!({"cpus": {"boot_vcpus": 1}}))),
        400,
        &["cpus.max_vcpus: is required"],
    );
    assert_refused(
        create(
            &api,
            &ok(json!({"disks": [{"path": "/var/lib/kata/rootfs.img", "readonly": true}]})),
        ),
        400,
        &["disks[0].path"],
    );
    assert_refused(
        create(&api, &ok(json!({"fs": [{"socket": "/run/fs.sock"}]}))),
        400,
        &["fs[0].tag: is required"],
    );
    let lost = dir.join("no-such-dir").join("clh.sock");
    assert_refused(
        create(&api, &ok(json!({"vsock": {"cid": 3, "socket": lost}}))),
        400,
        &["vsock.socket", "no-such-dir"],
    );
    let clh = dir.join("clh.sock");
    assert_refused(
        create(&api, &ok(json!({"vsock": {"cid": 2, "socket": clh}}))),
        400,
        &["vsock.cid", "cid=2 is reserved"],
    );
    // None of that created or started anything.
    assert_refused(call(&api, "GET", "/api/v1/vm.info", None), 404, &[]);
    assert!(children_running(pid, "").is_empty());
    assert!(!clh.exists());

    // A config whose disk socket nobody serves: created, then vm.boot
    // fails naming the socket, and the VM is dropped whole.
    let nobody = dir.join("nobody.sock");
    let config = ok(json!({"disks": [{"vhost_user": true, "vhost_socket": nobody}]}));
    assert_eq!(create(&api, &config).0, 204, "{}", log());
    assert_refused(create(&api, &config), 409, &["already created"]);
    assert_refused(
        put(&api, "/api/v1/vm.boot"),
        400,
        &["vm.boot", nobody.to_str().unwrap()],
    );
    let (status, info) = call(&api, "GET", "/api/v1/vm.info", None);
    assert_eq!((status, &info["state"]), (200, &json!("Created")), "{info}");
    assert_eq!(info["devices"][0]["backend_state"], "connecting", "{info}");
    // A connection thread may still be closing the last request's socket
    // and eventfd when the client has read its answer: wait for the count
    // to come back (a descriptor the failed boot left never would).
    assert!(
        poll_until(WAIT, || fds(pid) == fds_before),
        "fds left by the failed boot: {} now, {fds_before} before: {:?}\n{}",
        fds(pid),
        fd_targets(pid),
        log()
    );
    assert_eq!(put(&api, "/api/v1/vm.delete").0, 204);
    assert_refused(call(&api, "GET", "/api/v1/vm.info", None), 404, &[]);

    // The VMM still serves, and ends cleanly; its log went to the file.
    assert_eq!(call(&api, "GET", "/api/v1/vmm.ping", None).0, 200);
    shutdown_vmm(&api, &mut vmm, WAIT, |_| log());
    assert!(!api.exists());
    assert!(log().contains("control API on"), "{}", log());
    assert!(
        !vmm.log_contents().contains("control API on"),
        "{}",
        vmm.log_contents()
    );
}

/// Descriptors sent with requests (`SCM_RIGHTS`) never stay in the VMM
/// when the request does not use them: too many, sent to an endpoint
/// that takes none, with a malformed or unfinished request, or refused
/// by the VM (a NIC's descriptors that are not tap queues). Counted in
/// /proc/PID/fd.
#[test]
fn descriptors_sent_with_requests_are_closed_unless_used() {
    let (_dir, kernel, api) = halting_setup("vmm-lifecycle-fds");
    let mut vmm = spawn_vmm(&["--api-socket", api.to_str().unwrap()], &api);
    let pid = vmm.pid();
    assert_eq!(call(&api, "GET", "/api/v1/vmm.ping", None).0, 200);
    let fds_before = fds(pid);
    let files: Vec<std::fs::File> = (0..17)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let raw: Vec<i32> = files.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    let send = |method: &str, path: &str, body: Option<&str>, n: usize| {
        let bytes = http::request_bytes(method, path, body);
        let r = http::exchange_with_fds(&api, &bytes, &raw[..n])
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (r.status, r.json_or_null().unwrap_or(Value::Null))
    };
    let nic = json!({"mac": "02:00:00:00:00:01"}).to_string();
    assert_refused(
        send("PUT", "/api/v1/vm.add-net", Some(&nic), 17),
        400,
        &["more than 16 file descriptors"],
    );
    assert_refused(
        send("GET", "/api/v1/vm.info", None, 3),
        400,
        &["vm.info takes no file descriptors"],
    );
    assert_refused(
        send("PUT", "/api/v1/vm.add-net", Some(&nic), 2),
        404,
        &["vm.create first"],
    );
    let config = json!({"payload": {"kernel": kernel}, "memory": {"size": 32u64 << 20}});
    assert_eq!(create(&api, &config).0, 204);
    assert_refused(
        send("PUT", "/api/v1/vm.add-net", Some("{\"mac\": "), 16),
        400,
        &["not valid JSON"],
    );
    let disk = json!({"vhost_user": true, "vhost_socket": "/run/x.sock"}).to_string();
    assert_refused(
        send("PUT", "/api/v1/vm.add-disk", Some(&disk), 1),
        400,
        &["disks[0].fds", "takes none"],
    );
    assert_refused(
        send("PUT", "/api/v1/vm.add-net", Some(&nic), 2),
        400,
        &["net[0].fds", "not a tap queue"],
    );
    // Half a request: the server answers 408 once its time is up.
    let half = b"PUT /api/v1/vm.add-net HTTP/1.1\r\nContent-Length: 100\r\n\r\n{";
    let r = http::exchange_with_fds(&api, half, &raw[..4]).unwrap();
    assert_eq!(r.status, 408, "{}", r.body);
    assert_eq!(vu_driver::vmm::vm_info(&api)["devices"], json!([]));
    // A connection thread may still be closing: wait for the count.
    assert!(
        poll_until(WAIT, || fds(pid) == fds_before),
        "descriptors left in the VMM: {} now, {fds_before} before: {:?}",
        fds(pid),
        fd_targets(pid),
    );
    shutdown_vmm(&api, &mut vmm, WAIT, |v| v.log_contents());
}

/// The command-line form boots through the same create + boot, and its
/// config reads back in Cloud Hypervisor's shape.
#[test]
fn the_command_line_vm_reports_its_config_in_ch_shape() {
    let (_dir, kernel, api) = halting_setup("vmm-lifecycle-cli");
    let mut vmm = spawn_vmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--cpus",
            "boot=2",
            "--memory",
            "size=32M",
            "--serial",
            "off",
            "--api-socket",
            api.to_str().unwrap(),
        ],
        &api,
    );
    let running = poll_until(WAIT, || {
        call(&api, "GET", "/api/v1/vm.info", None).1["state"] == "Running"
    });
    let (_, info) = call(&api, "GET", "/api/v1/vm.info", None);
    assert!(running, "{info}\n{}", vmm.log_contents());
    assert_eq!(
        info["config"]["payload"]["kernel"],
        kernel.to_str().unwrap(),
        "{info}"
    );
    assert_eq!(
        info["config"]["cpus"],
        json!({"boot_vcpus": 2, "max_vcpus": 2, "kvm_hyperv": false}),
        "{info}"
    );
    assert_eq!(info["config"]["memory"]["size"], 32u64 << 20, "{info}");
    assert_eq!(info["config"]["serial"]["mode"], "Off", "{info}");
    assert_eq!(info["unsupported"], json!([]), "{info}");
    assert_refused(create(&api, &info["config"]), 409, &["already created"]);
    shutdown_vmm(&api, &mut vmm, WAIT, Daemon::log_contents);
    assert!(!api.exists());
}

/// `vm.reboot` as Cloud Hypervisor's OpenAPI document has it: the guest
/// restarts from its kernel and its devices are set up again. A disk
/// whose vhost-blk-daemon the test runs (the same backend across the
/// reboot: it sees a disconnect and a new frontend setting up its rings)
/// and a NIC on a tap queue sent with `vm.add-net` (its vhost-net-daemon,
/// run by the VMM, is started again on the same queue): after the
/// reboot the guest writes sector 8 again (the test zeroed it) and sends
/// its frame again. Refused before vm.create (404), while Created and
/// after vm.shutdown (409).
#[test]
fn vm_reboot_restarts_the_guest_with_its_devices_set_up_again() {
    use vu_driver::fw_devices::{add_net_with_queue, assert_guest_frame, sector8_expected};

    let dir = TempDir::new("vmm-lifecycle-reboot").unwrap();
    let b = fw_devices::blk(&dir);
    let tap = fw_devices::tap_queue("vrbt");
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    let api = dir.join("api.sock");
    let console_file = dir.join("console.txt");
    let mut vmm = spawn_vmm(&["--api-socket", api.to_str().unwrap()], &api);
    let show = |vmm: &Daemon| {
        format!(
            "--- serial\n{}\n--- vmm\n{}\n--- blk daemon\n{}",
            console(&console_file),
            vmm.log_contents(),
            b.daemon.log_contents()
        )
    };
    assert_refused(
        put(&api, "/api/v1/vm.reboot"),
        404,
        &["reboot", "vm.create"],
    );
    let config = json!({
        "payload": {"kernel": guest, "cmdline": "console=ttyS0 wait-power-button"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 64u64 << 20, "shared": true},
        "serial": {"mode": "File", "file": console_file},
        "disks": [{"vhost_user": true, "vhost_socket": b.socket}],
    });
    assert_eq!(create(&api, &config).0, 204, "{}", show(&vmm));
    let (status, body) = add_net_with_queue(&api, &tap.queue);
    assert_eq!(status, 204, "{body}");
    assert_refused(put(&api, "/api/v1/vm.reboot"), 409, &["reboot", "Created"]);
    assert_eq!(put(&api, "/api/v1/vm.boot").0, 204, "{}", show(&vmm));

    // Each boot: the guest's disk and NIC lines, sector 8 written, the
    // frame on the tap.
    let sector8 = || std::fs::read(&b.image).unwrap()[8 * 512..9 * 512].to_vec();
    // Run `run`'s lines: the serial file keeps every run's, appended.
    let this_run = |run: usize| {
        let all = console(&console_file);
        all.split("hello from the test guest")
            .nth(run)
            .unwrap_or_default()
            .to_string()
    };
    let booted = |vmm: &Daemon, round: &str, run: usize| {
        assert!(
            poll_until(BOOT_TIMEOUT, || this_run(run).contains(WAITING)),
            "{round}: the guest did not come up\n{}",
            show(vmm)
        );
        let out = this_run(run);
        let has = |prefix: &str| out.lines().any(|l| l.starts_with(prefix));
        assert!(
            has("blk: capacity") && out.contains("wrote and read back sector 8: ok"),
            "{round}\n{}",
            show(vmm)
        );
        assert!(
            has(&format!("net: mac {}; sent a frame", fw_devices::MAC)),
            "{round}\n{}",
            show(vmm)
        );
        assert_eq!(
            sector8(),
            sector8_expected(),
            "{round}: sector 8\n{}",
            show(vmm)
        );
        assert_guest_frame(&tap.packets, &tap.ns, &show(vmm));
    };
    booted(&vmm, "first boot", 1);
    let net_daemons = children_running(vmm.pid(), "vhost-net-daemon");
    assert_eq!(net_daemons.len(), 1, "{}", show(&vmm));

    // The host forgets what the guest wrote; the reboot answers once the
    // new VM runs (its lines follow the first run's in the console file).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&b.image)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[0; 512], 8 * 512))
        .unwrap();
    assert_eq!(put(&api, "/api/v1/vm.reboot").0, 204, "{}", show(&vmm));
    let (status, info) = call(&api, "GET", "/api/v1/vm.info", None);
    assert_eq!((status, &info["state"]), (200, &json!("Running")), "{info}");
    booted(&vmm, "after vm.reboot", 2);
    let now = children_running(vmm.pid(), "vhost-net-daemon");
    assert_eq!(now.len(), 1, "{now:?}\n{}", show(&vmm));
    assert_ne!(now, net_daemons, "the NIC's daemon was not started again");
    assert!(vmm.log_contents().contains("vm.reboot"), "{}", show(&vmm));
    let info = vu_driver::vmm::vm_info(&api);
    for d in info["devices"].as_array().unwrap() {
        assert_eq!(d["backend_state"], "connected", "{info}");
    }

    assert_eq!(put(&api, "/api/v1/vm.shutdown").0, 204);
    assert_refused(put(&api, "/api/v1/vm.reboot"), 409, &["reboot", "Shutdown"]);
    let all = show(&vmm);
    shutdown_vmm(&api, &mut vmm, WAIT, |_| all.clone());
    let gone = |pid: u32| !Path::new(&format!("/proc/{pid}")).exists();
    assert!(
        poll_until(WAIT, || gone(now[0])),
        "the NIC's daemon outlived the VMM"
    );
    assert!(
        gone(net_daemons[0]),
        "the first NIC daemon outlived the reboot"
    );
}
