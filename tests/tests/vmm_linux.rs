//! A real Linux guest under OUR VMM: Debian's kernel (the kit's bzImage
//! `vmlinuz`, 64-bit boot protocol) with the kit's busybox initramfs, one
//! vCPU, 512 MiB, serial on stdout, and our three daemons: virtiofsd
//! sharing a directory as `kataShared`, vhost-blk-daemon on an image, and
//! vhost-net-daemon on a tap in a private network namespace with the host
//! side at 10.0.7.1/24. The kit's `/init` loads the virtio modules, mounts
//! `kataShared` at `/mnt/fs` (`vutest.fs=`) and runs the script from the
//! kernel command line: read a file of the share, write random data to
//! `/dev/vda` and read it back (SHA-256 both ways, and the host checks the
//! image after), take 10.0.7.2/24 and ping the host side. Then it powers
//! off (ACPI S5) and the VMM must exit 0.
//!
//! The KVM of our build machines is an instruction emulator (see
//! `vu_driver::kvm_probe`): there the test prints
//! `SKIP vmm_linux: <the probe's reason>` on stderr and returns. Anywhere
//! KVM is real it needs root (namespace, tap), `scripts/setup.sh` (the
//! kit) and `cargo build --workspace --bins`; anything missing is a failure.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vu_driver::fixture::{create_sparse_image, TempDir};
use vu_driver::guest::{ConsoleParser, GuestKit, GuestStatus};
use vu_driver::kvm_probe::linux_capable;
use vu_driver::netns::NetNs;
use vu_driver::ours::{vhost_blk_daemon, vhost_net_daemon, virtiofsd, BlkDaemonOpts};
use vu_driver::process::Finished;
use vu_driver::vmm::{kit_cmdline, run_vmm};

const TAG: &str = "kataShared";
const TAP: &str = "vmmlin0";
const HOST_IP: &str = "10.0.7.1";
const GUEST_IP: &str = "10.0.7.2";
const MAC: &str = "52:54:00:12:34:70";
const SHARED_TEXT: &str = "hello from the host over virtio-fs";
/// The script's own limit (init kills it after this), below the VMM's.
const SCRIPT_TIMEOUT_S: u64 = 120;
const VMM_TIMEOUT: Duration = Duration::from_secs(180);
/// What the guest writes to the disk: 1 MiB from offset 1 MiB.
const DISK_BS: u64 = 4096;
const DISK_COUNT: u64 = 256;
const DISK_SEEK: u64 = 256;

/// The guest's script (busybox sh); every check reports a value and a
/// failure exits non-zero with its own code.
fn script() -> String {
    format!(
        r#"set -e
test -n "$VUTEST_FS" || exit 10
vutest-kv shared "$(cat "$VUTEST_FS/hello.txt")"
dd if=/dev/urandom of=/tmp/rand bs={DISK_BS} count={DISK_COUNT} iflag=fullblock 2>/dev/null
dd if=/tmp/rand of=/dev/vda bs={DISK_BS} seek={DISK_SEEK} oflag=direct conv=notrunc,fsync 2>/dev/null || exit 11
dd if=/dev/vda of=/tmp/back bs={DISK_BS} skip={DISK_SEEK} count={DISK_COUNT} iflag=direct 2>/dev/null || exit 12
vutest-kv written "$(sha256sum </tmp/rand | cut -d' ' -f1)"
vutest-kv read "$(sha256sum </tmp/back | cut -d' ' -f1)"
ip link set eth0 up
ip addr add {GUEST_IP}/24 dev eth0
vutest-kv mac "$(cat /sys/class/net/eth0/address)"
if ! ping -c 3 -i 0.2 -w 30 {HOST_IP} >/tmp/ping 2>&1; then cat /tmp/ping; exit 21; fi
vutest-kv ping_received "$(sed -n 's/.* \([0-9]*\) packets received.*/\1/p' /tmp/ping)"
"#
    )
}

/// The kernel command line (see [`kit_cmdline`]).
fn cmdline(script: &str) -> String {
    kit_cmdline(script, TAG, SCRIPT_TIMEOUT_S)
}

fn show(run: &Finished) -> String {
    format!(
        "status {:?}\n--- stdout (console)\n{}--- stderr\n{}",
        run.status, run.stdout, run.stderr
    )
}

/// SHA-256 of `len` bytes of `path` from `offset`, by the host's sha256sum.
fn host_sha256(path: &Path, offset: u64, len: u64) -> String {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let slice = &data[offset as usize..(offset + len) as usize];
    let dir = TempDir::new("vmm-linux-sum").unwrap();
    let part = dir.join("part");
    std::fs::write(&part, slice).unwrap();
    let out = Command::new("sha256sum")
        .arg(&part)
        .output()
        .expect("running sha256sum");
    assert!(out.status.success(), "sha256sum: {}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn linux_guest_uses_a_share_a_disk_and_a_nic() {
    if let Err(reason) = linux_capable() {
        // Straight to stderr: libtest captures eprintln! of a passing test.
        let _ = writeln!(std::io::stderr(), "SKIP vmm_linux: {reason}");
        return;
    }
    let kit = GuestKit::locate().unwrap_or_else(|e| panic!("{e}"));
    let dir = TempDir::new("vmm-linux").unwrap();

    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("hello.txt"), format!("{SHARED_TEXT}\n")).unwrap();
    let fs_sock = dir.join("fs.sock");
    let _fs = virtiofsd(&share, &fs_sock, &["--tag", TAG]).unwrap_or_else(|e| panic!("{e}"));

    let image = dir.join("disk.img");
    create_sparse_image(&image, 64 << 20).unwrap();
    let blk_sock = dir.join("blk.sock");
    let _blk = vhost_blk_daemon(&image, &blk_sock, &BlkDaemonOpts::default())
        .unwrap_or_else(|e| panic!("{e}"));

    let ns = NetNs::new("vmmlin").unwrap_or_else(|e| panic!("{e}"));
    ns.add_tap(TAP, false, Some(&format!("{HOST_IP}/24")))
        .unwrap_or_else(|e| panic!("{e}"));
    let net_sock = dir.join("net.sock");
    let _net = vhost_net_daemon(&ns, &net_sock, &["--tap", TAP, "--mac", MAC])
        .unwrap_or_else(|e| panic!("{e}"));

    let run = run_vmm(
        [
            "--kernel".into(),
            kit.kernel.clone().into_os_string(),
            "--initramfs".into(),
            kit.initrd.clone().into_os_string(),
            "--cmdline".into(),
            cmdline(&script()).into(),
            "--cpus".into(),
            "boot=1".into(),
            "--memory".into(),
            "size=512M".into(),
            "--serial".into(),
            "stdio".into(),
            "--disk".into(),
            format!("socket={}", blk_sock.display()).into(),
            "--fs".into(),
            format!("tag={TAG},socket={}", fs_sock.display()).into(),
            "--net".into(),
            format!("socket={},mac={MAC}", net_sock.display()).into(),
        ],
        VMM_TIMEOUT,
    );
    let console = ConsoleParser::parse(&run.stdout);
    assert!(console.errors.is_empty(), "{}", show(&run));
    let result = console
        .result
        .as_ref()
        .unwrap_or_else(|| panic!("no VUTEST-RESULT line\n{}", show(&run)));
    assert_eq!(
        (result.status, result.exit_code),
        (GuestStatus::Pass, 0),
        "{}",
        show(&run)
    );
    let kv = |k: &str| console.kv.get(k).map(String::as_str);
    assert_eq!(kv("shared"), Some(SHARED_TEXT), "{}", show(&run));
    let written = kv("written").unwrap_or_default().to_string();
    assert_eq!(written.len(), 64, "{}", show(&run));
    assert_eq!(kv("read"), Some(written.as_str()), "{}", show(&run));
    assert_eq!(kv("mac"), Some(MAC), "{}", show(&run));
    assert_eq!(kv("ping_received"), Some("3"), "{}", show(&run));
    // The data reached the image, where the guest put it.
    assert_eq!(
        host_sha256(&image, DISK_SEEK * DISK_BS, DISK_COUNT * DISK_BS),
        written
    );
    assert!(run.stderr.contains("guest powered off"), "{}", show(&run));
    assert_eq!(run.code(), Some(0), "{}", show(&run));
}

#[test]
fn the_script_fits_on_the_command_line() {
    // x86's COMMAND_LINE_SIZE is 2048; the VMM accepts up to 4096.
    let c = cmdline(&script());
    assert!(c.len() < 2048, "{} bytes", c.len());
    assert!(c.starts_with("console=ttyS0 "));
    assert!(c.contains(&format!("vutest.fs={TAG}")));
}
