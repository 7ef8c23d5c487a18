//! Disks whose daemon our VMM runs itself (`--disk path=IMAGE`, a
//! `vm.create` disk with a `path`, as Kata sends for the guest's root
//! image; issue #16 step 2): the guest uses the disk as with a daemon run
//! by hand, a daemon that dies is restarted on the same socket and the
//! guest never notices, and when the VMM ends no daemon and no socket is
//! left behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vu_driver::fixture::{create_sparse_image, poll_until, Daemon, TempDir};
use vu_driver::fw_devices::{line, sector8_expected, DISK_SIZE};
use vu_driver::process::{children_running, command_line, serving_pid};
use vu_driver::vmm::{
    blk_loop_rounds, guest_logs, press_power_button, run_test_guest, serial, show_run,
    shutdown_vmm, spawn_test_guest, test_guest, vm_counter, vm_info, WAITING,
};

const TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(60);

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn disk_socket(api: &Path) -> PathBuf {
    let info = vm_info(api);
    PathBuf::from(info["devices"][0]["socket"].as_str().unwrap_or_default())
}

/// A temporary directory named after `test` with a sparse image `name` of
/// [`DISK_SIZE`] in it; the directory and the image's path.
fn dir_with_image(test: &str, name: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new(test).unwrap();
    let image = dir.join(name);
    create_sparse_image(&image, DISK_SIZE).unwrap();
    (dir, image)
}

#[test]
fn the_guest_uses_an_image_served_by_a_daemon_the_vmm_runs() {
    let (_dir, image) = dir_with_image("vmm-spawned", "disk.img");
    let run = run_test_guest(
        &["--disk".into(), format!("path={}", image.display())],
        TIMEOUT,
    );
    let all = show_run(&run);
    assert_eq!(run.code(), Some(0), "{all}");
    let blk = line(&run, "blk: ").unwrap_or_else(|| panic!("no blk line\n{all}"));
    assert!(
        blk.contains("wrote and read back sector 8: ok"),
        "{blk}\n{all}"
    );
    let written = std::fs::read(&image).unwrap();
    assert_eq!(written[8 * 512..9 * 512], sector8_expected()[..], "{all}");
    // The daemon ran as the VMM's child and stopped with it, cleanly.
    assert!(
        all.contains("vhost-blk-daemon") && all.contains("stopped ("),
        "{all}"
    );
}

/// `vm.delete`: the daemon the VMM ran for the device (`daemon`) stops
/// and its socket goes.
fn delete_vm_and_its_daemon(api: &Path, daemon: u32, socket: &Path) {
    let (status, reply) = vu_driver::http::call(api, "PUT", "/api/v1/vm.delete", None);
    assert_eq!(status, 204, "{reply}");
    assert!(
        poll_until(WAIT, || !alive(daemon)),
        "the daemon outlived vm.delete"
    );
    assert!(!socket.exists(), "{} is left behind", socket.display());
}

/// The test guest in `mode` with `extra` options under a VMM serving its
/// API; the VMM, its API socket and the console file, both in `dir`.
fn spawn_guest(dir: &Path, mode: &str, extra: &[String]) -> (Daemon, PathBuf, PathBuf) {
    let api = dir.join("api.sock");
    let console = dir.join("console.txt");
    let vmm = spawn_test_guest(&api, &console, mode, extra, TIMEOUT);
    (vmm, api, console)
}

#[test]
fn a_spawned_daemon_that_dies_is_restarted_and_nothing_is_left_behind() {
    let (dir, image) = dir_with_image("vmm-spawned-restart", "disk.img");
    let disk = format!("path={},num_queues=1", image.display());
    let (mut vmm, api, console) = spawn_guest(dir.path(), "blk-loop", &["--disk".into(), disk]);
    let show = |vmm: &Daemon| guest_logs(&console, vmm, &[]);
    assert!(
        poll_until(TIMEOUT, || blk_loop_rounds(&console) >= 3),
        "the guest does not loop over blk I/O\n{}",
        show(&vmm)
    );
    let socket = disk_socket(&api);
    assert!(socket.is_absolute(), "{}", socket.display());
    let daemons: Vec<u32> = children_running(vmm.pid(), "vhost-blk-daemon");
    assert_eq!(daemons.len(), 1, "{daemons:?}\n{}", show(&vmm));
    let first = daemons[0];
    assert!(command_line(first).contains(&image.display().to_string()));
    // Run as root, the VMM jails it: the serving process is the
    // supervisor's child, with an empty root and no capabilities.
    let jailed = serving_pid(first);
    assert_ne!(jailed, first, "{}", show(&vmm));
    let root = std::fs::read_dir(format!("/proc/{jailed}/root"))
        .unwrap()
        .count();
    assert_eq!(root, 0, "the jailed daemon's root is not empty");
    let status = std::fs::read_to_string(format!("/proc/{jailed}/status")).unwrap();
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");

    // Killed: the VMM starts another on the same socket, the disk is
    // reconnected and the guest's rounds go on.
    let before = blk_loop_rounds(&console);
    // SAFETY: kill(2) with a pid and a signal touches no memory.
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    assert!(
        poll_until(WAIT, || vm_counter(&api, "disk0", "reconnects") == 1),
        "{}",
        show(&vmm)
    );
    assert!(
        poll_until(WAIT, || blk_loop_rounds(&console) >= before + 10),
        "{}",
        show(&vmm)
    );
    let now: Vec<u32> = children_running(vmm.pid(), "vhost-blk-daemon");
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], first);
    assert_eq!(disk_socket(&api), socket);
    assert_eq!(vm_counter(&api, "disk0", "needs_reset"), 0);

    press_power_button(&api, &vmm, WAIT, || show(&vmm));
    let out = serial(&console);
    assert!(out.contains("rounds, no error"), "{}", show(&vmm));
    let all = show(&vmm);
    shutdown_vmm(&api, &mut vmm, WAIT, |_| all.clone());
    assert!(!alive(now[0]), "the daemon outlived the VMM");
    assert!(
        poll_until(WAIT, || !alive(jailed)),
        "the first jailed daemon outlived its supervisor"
    );
    assert!(
        !socket.exists() && !socket.parent().unwrap().exists(),
        "{} is left behind",
        socket.display()
    );
}

#[test]
fn kata_rootfs_disk_through_the_api_gets_a_daemon_until_vm_delete() {
    let (dir, image) = dir_with_image("vmm-spawned-api", "rootfs.img");
    let api = dir.join("api.sock");
    let console = dir.join("console.txt");
    let mut vmm = vu_driver::vmm::spawn_empty_vmm(&api, TIMEOUT);
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    // The VM, then the guest's root image as clh.go sends it (read-only,
    // raw), cold-plugged with vm.add-disk before vm.boot.
    let mut config = serde_json::json!({
        "payload": {"kernel": guest, "cmdline": "console=ttyS0 wait-power-button"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 64u64 << 20, "shared": true},
        "serial": {"mode": "File", "file": console},
    });
    let call = |method: &str, path: &str, body: Option<&str>| {
        vu_driver::http::call(&api, method, path, body)
    };
    let (status, reply) = call("PUT", "/api/v1/vm.create", Some(&config.to_string()));
    assert_eq!(status, 204, "{reply}\n{}", vmm.log_contents());
    let disk = serde_json::json!({"path": image, "readonly": true, "image_type": "Raw"});
    let (status, reply) = call("PUT", "/api/v1/vm.add-disk", Some(&disk.to_string()));
    assert_eq!(status, 204, "{reply}\n{}", vmm.log_contents());
    config["disks"] = serde_json::json!([disk]);
    assert!(
        children_running(vmm.pid(), "").is_empty(),
        "vm.create starts nothing yet"
    );
    let (status, reply) = call("PUT", "/api/v1/vm.boot", None);
    assert_eq!(status, 204, "{reply}\n{}", vmm.log_contents());
    let daemons: Vec<u32> = children_running(vmm.pid(), "vhost-blk-daemon");
    assert_eq!(daemons.len(), 1, "{}", vmm.log_contents());
    assert!(command_line(daemons[0]).contains("--read-only"));
    let info = vm_info(&api);
    assert_eq!(info["config"], config, "{info}");
    // Hotplug is not there yet: a clear 409, nothing added.
    let (status, reply) = call("PUT", "/api/v1/vm.add-disk", Some(&disk.to_string()));
    assert_eq!(status, 409, "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .unwrap_or_default()
            .contains("hotplug"),
        "{reply}"
    );
    assert_eq!(vm_info(&api)["devices"].as_array().map(Vec::len), Some(1));
    assert_eq!(info["devices"][0]["backend_state"], "connected", "{info}");
    let socket = disk_socket(&api);
    assert!(
        poll_until(WAIT, || serial(&console).contains(WAITING)),
        "{}",
        vmm.log_contents()
    );
    // The guest found a read-only disk: its write was refused, not done.
    assert!(serial(&console).contains("blk: "), "{}", serial(&console));
    assert!(std::fs::read(&image).unwrap().iter().all(|b| *b == 0));

    delete_vm_and_its_daemon(&api, daemons[0], &socket);
    let all = vmm.log_contents();
    shutdown_vmm(&api, &mut vmm, WAIT, |_| all.clone());
}

/// A NIC as Kata's `clh.go` adds it: the test opens a queue of a tap in a
/// network namespace of its own and sends the descriptor with
/// `vm.add-net` (SCM_RIGHTS; the body is `chclient.NewNetConfig()`'s
/// defaults and the MAC) before `vm.boot`. The VMM, in the host's
/// namespace, runs vhost-net-daemon on that queue (`--tap-fd 4`) and the
/// guest's frame comes out of the tap; `vm.delete` stops the daemon and
/// closes the VMM's copy of the queue.
#[test]
fn a_tap_queue_sent_with_vm_add_net_carries_the_guests_frames() {
    use vu_driver::fw_devices::{add_net_with_queue, assert_guest_frame, tap_queue, MAC};
    use vu_driver::process::fd_count;

    let dir = TempDir::new("vmm-spawned-net").unwrap();
    let tap = tap_queue("vspn");
    let api = dir.join("api.sock");
    let console = dir.join("console.txt");
    let mut vmm = vu_driver::vmm::spawn_empty_vmm(&api, TIMEOUT);
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    let call = |method: &str, path: &str, body: Option<&str>| {
        vu_driver::http::call(&api, method, path, body)
    };
    let config = serde_json::json!({
        "payload": {"kernel": guest, "cmdline": "console=ttyS0 wait-power-button"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1},
        "memory": {"size": 64u64 << 20, "shared": true},
        "serial": {"mode": "File", "file": console},
    });
    let (status, reply) = call("PUT", "/api/v1/vm.create", Some(&config.to_string()));
    assert_eq!(status, 204, "{reply}\n{}", vmm.log_contents());
    let fds_before = fd_count(vmm.pid()).unwrap();
    let (status, body) = add_net_with_queue(&api, &tap.queue);
    assert_eq!(status, 204, "{body}\n{}", vmm.log_contents());
    // The VMM keeps the queue (for the daemon's restarts); ours goes.
    drop(tap.queue);
    assert!(
        poll_until(WAIT, || fd_count(vmm.pid()).unwrap() == fds_before + 1),
        "{:?}",
        vu_driver::process::fd_targets(vmm.pid())
    );
    let info = vm_info(&api);
    assert_eq!(info["devices"][0]["kind"], "net", "{info}");
    assert_eq!(
        info["unsupported"],
        serde_json::json!([
            "net[0].ip: ignored (the tap queues came configured)",
            "net[0].mask: ignored (the tap queues came configured)",
        ]),
        "{info}"
    );
    assert!(children_running(vmm.pid(), "").is_empty());

    let (status, reply) = call("PUT", "/api/v1/vm.boot", None);
    assert_eq!(status, 204, "{reply}\n{}", vmm.log_contents());
    let daemons = children_running(vmm.pid(), "vhost-net-daemon");
    assert_eq!(daemons.len(), 1, "{}", vmm.log_contents());
    let cmdline = command_line(daemons[0]);
    assert!(
        cmdline.contains("--tap-fd 4") && cmdline.contains(&format!("--mac {MAC}")),
        "{cmdline}"
    );
    let show = || {
        format!(
            "--- serial\n{}\n--- vmm\n{}",
            serial(&console),
            vmm.log_contents()
        )
    };
    assert!(
        poll_until(TIMEOUT, || serial(&console).contains(WAITING)),
        "{}",
        show()
    );
    let out = serial(&console);
    let line = out
        .lines()
        .find(|l| l.starts_with("net: "))
        .unwrap_or_else(|| panic!("no net line\n{}", show()));
    assert!(
        line.starts_with(&format!("net: mac {MAC}; sent a frame")),
        "{line}\n{}",
        show()
    );
    assert_guest_frame(&tap.packets, &tap.ns, &show());
    let info = vm_info(&api);
    assert_eq!(info["devices"][0]["backend_state"], "connected", "{info}");
    let socket = PathBuf::from(info["devices"][0]["socket"].as_str().unwrap_or_default());
    assert!(socket.is_absolute(), "{info}");

    // vm.delete: the daemon stops, its socket goes, the queue is closed.
    delete_vm_and_its_daemon(&api, daemons[0], &socket);
    assert!(
        poll_until(WAIT, || fd_count(vmm.pid()).unwrap() == fds_before),
        "{:?}",
        vu_driver::process::fd_targets(vmm.pid())
    );
    let all = vmm.log_contents();
    shutdown_vmm(&api, &mut vmm, WAIT, |_| all.clone());
}

/// `--net fd=3,mac=MAC` on the command line, Cloud Hypervisor's form for
/// a tap queue opened by whoever starts the VMM (libvirt does this): the
/// VMM, outside the tap's network namespace, runs vhost-net-daemon on that
/// queue and the guest's frame comes out of the tap.
#[test]
fn a_nic_on_a_tap_descriptor_the_vmm_inherits() {
    use std::os::fd::AsRawFd;
    use vu_driver::fw_devices::{tap_queue, MAC};
    use vu_driver::process::inherit_fd_as;

    let tap = tap_queue("vspfd");
    let vmm = vu_driver::ours::project_binary("vmm").unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = std::process::Command::new(&vmm);
    inherit_fd_as(&mut cmd, tap.queue.as_raw_fd(), 3);
    run_with_a_nic(cmd, &format!("fd=3,mac={MAC}"), &tap.ns, &tap.packets);
}

/// `--net tap=NAME,mac=MAC` on the command line, Cloud Hypervisor's form:
/// the VMM (run in the tap's network namespace) starts vhost-net-daemon
/// on that tap itself, the guest's frame comes out of the tap, and the
/// daemon stops with the VMM.
#[test]
fn a_nic_on_a_named_tap_gets_a_daemon_the_vmm_runs() {
    use vu_driver::fw_devices::{tap_queue, TapQueue, MAC, TAP};

    let TapQueue { ns, packets, queue } = tap_queue("vsptn");
    // The daemon attaches to the tap by name; the test's queue goes.
    drop(queue);
    let vmm = vu_driver::ours::project_binary("vmm").unwrap_or_else(|e| panic!("{e}"));
    run_with_a_nic(
        ns.command(&vmm),
        &format!("tap={TAP},mac={MAC}"),
        &ns,
        &packets,
    );
}

/// Runs `vmm` (`cmd`) with the test guest and `--net net` to its end: the
/// guest's frame comes out of the tap in `ns` (read on `packets`), through
/// a vhost-net-daemon the VMM started and stopped (cleanly) with itself.
fn run_with_a_nic(
    mut cmd: std::process::Command,
    net: &str,
    ns: &vu_driver::netns::NetNs,
    packets: &vu_driver::netns::PacketSocket,
) {
    use vu_driver::fw_devices::{assert_guest_frame, line, MAC};

    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    cmd.args(["--no-reboot", "--kernel"])
        .arg(&guest)
        .args(["--memory", "size=64M", "--serial", "stdio", "--net", net]);
    vu_driver::process::without_systemd_env(&mut cmd);
    let run = vu_driver::process::run_bounded(&mut cmd, TIMEOUT).unwrap();
    let all = show_run(&run);
    assert_eq!(run.code(), Some(0), "{all}");
    let l = line(&run, "net: ").unwrap_or_else(|| panic!("no net line\n{all}"));
    assert!(
        l.starts_with(&format!("net: mac {MAC}; sent a frame")),
        "{l}\n{all}"
    );
    assert_guest_frame(packets, ns, &all);
    assert!(all.contains("net0: started vhost-net-daemon"), "{all}");
    assert!(all.contains("stopped (TX 1 frames"), "{all}");
}

/// `--vsock`: the VMM runs rust-vmm's vhost-device-vsock (which binds its
/// own socket) as it runs our daemons: one child, the hybrid socket where
/// asked; SIGKILLed, it is started again, binds anew, the device
/// reconnects; when the VMM ends neither the daemon nor the hybrid socket
/// is left.
#[test]
fn a_spawned_vsock_daemon_that_dies_is_restarted_and_nothing_is_left_behind() {
    let dir = TempDir::new("vmm-spawned-vsock").unwrap();
    let hybrid = dir.join("clh.sock");
    let vsock = format!("cid=3,socket={}", hybrid.display());
    let (mut vmm, api, console) =
        spawn_guest(dir.path(), "wait-power-button", &["--vsock".into(), vsock]);
    let show = |vmm: &Daemon| guest_logs(&console, vmm, &[]);
    // The API serves before the VM is built: wait for the daemon.
    assert!(
        poll_until(WAIT, || vmm.log_contents().contains("vu-watch: watching")),
        "{}",
        show(&vmm)
    );
    let daemons = children_running(vmm.pid(), "vhost-device-vsock");
    assert_eq!(daemons.len(), 1, "{daemons:?}\n{}", show(&vmm));
    let first = daemons[0];
    assert!(
        command_line(first).contains("guest-cid=3,socket="),
        "{}",
        command_line(first)
    );
    assert!(hybrid.exists(), "{}", show(&vmm));
    assert_eq!(vm_info(&api)["devices"][0]["kind"], "vsock");

    // SAFETY: kill(2) with a pid and a signal touches no memory.
    assert_eq!(unsafe { libc::kill(first as i32, libc::SIGKILL) }, 0);
    assert!(
        poll_until(WAIT, || vm_counter(&api, "vsock0", "reconnects") == 1),
        "{}",
        show(&vmm)
    );
    let now = children_running(vmm.pid(), "vhost-device-vsock");
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], first);
    assert!(hybrid.exists(), "{}", show(&vmm));
    assert_eq!(vm_counter(&api, "vsock0", "needs_reset"), 0);

    press_power_button(&api, &vmm, WAIT, || show(&vmm));
    let all = show(&vmm);
    shutdown_vmm(&api, &mut vmm, WAIT, |_| all.clone());
    assert!(!alive(now[0]), "the vsock daemon outlived the VMM");
    assert!(!hybrid.exists(), "{} is left behind", hybrid.display());
}
