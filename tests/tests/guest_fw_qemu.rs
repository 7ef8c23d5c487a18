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

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use vu_driver::fixture::{create_sparse_image, Daemon, TempDir};
use vu_driver::fw_qemu::FwQemu;
use vu_driver::netns::{NetNs, PacketSocket};
use vu_driver::ours::{vhost_blk_daemon, vhost_net_daemon, virtiofsd, BlkDaemonOpts};
use vu_driver::process::Finished;

const DISK_SIZE: u64 = 1 << 20;
const TAG: &str = "kataShared";
const FILE_TEXT: &str = "hello from the host share\n";
const TAP: &str = "fwtap0";
const MAC: &str = "02:00:00:00:00:22";
/// What the guest writes to sector 8 (`guest-fw/src/blk.rs`): this text,
/// then byte i is i mod 251.
const BLK_TEXT: &[u8] = b"guest-fw wrote sector 8 through virtio-blk\n";
/// The guest's frame (`guest-fw/src/net.rs`): EtherType and payload.
const ETHER_TYPE: [u8; 2] = [0x88, 0xb5];
const NET_PAYLOAD: &[u8] = b"guest-fw frame through virtio-net";
/// How long after QEMU exited the frame may still be on its way.
const FRAME_WAIT: Duration = Duration::from_secs(5);

fn show(run: &Finished, daemons: &[&Daemon]) -> String {
    let mut s = format!(
        "status {:?}\n--- guest console\n{}--- QEMU stderr\n{}",
        run.status, run.stdout, run.stderr
    );
    for d in daemons {
        s += &format!("--- {} log\n{}", d.name(), d.log_contents());
    }
    s
}

/// The guest's console line that starts with `prefix`.
fn line<'a>(run: &'a Finished, prefix: &str) -> Option<&'a str> {
    run.stdout.lines().find(|l| l.starts_with(prefix))
}

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

fn sector8_expected() -> Vec<u8> {
    (0..512)
        .map(|i| BLK_TEXT.get(i).copied().unwrap_or((i % 251) as u8))
        .collect()
}

struct Blk {
    image: PathBuf,
    socket: PathBuf,
    daemon: Daemon,
}

fn blk(dir: &TempDir) -> Blk {
    let image = dir.join("disk.img");
    create_sparse_image(&image, DISK_SIZE).unwrap();
    let socket = dir.join("blk.sock");
    let daemon = vhost_blk_daemon(&image, &socket, &BlkDaemonOpts::default())
        .unwrap_or_else(|e| panic!("{e}"));
    Blk {
        image,
        socket,
        daemon,
    }
}

fn assert_blk(run: &Finished, b: &Blk, daemons: &[&Daemon]) {
    let all = show(run, daemons);
    let sectors = DISK_SIZE / 512;
    let want = format!("blk: capacity {sectors} sectors; wrote and read back sector 8: ok");
    let l = line(run, "blk: ").unwrap_or_else(|| panic!("no blk line\n{all}"));
    assert!(
        l.starts_with(&want) && l.contains(", msi-x vector 0x") && l.ends_with(" pending"),
        "{l:?}\n{all}"
    );
    let image = fs::read(&b.image).unwrap();
    assert_eq!(
        image[8 * 512..9 * 512],
        sector8_expected()[..],
        "sector 8 of the image\n{all}"
    );
    assert!(
        image[..8 * 512].iter().all(|&x| x == 0),
        "sectors 0..8 were written\n{all}"
    );
}

struct Fs {
    socket: PathBuf,
    daemon: Daemon,
}

fn fs_share(dir: &TempDir) -> Fs {
    let share = dir.join("share");
    fs::create_dir(&share).unwrap();
    fs::write(share.join("hello.txt"), FILE_TEXT).unwrap();
    let socket = dir.join("fs.sock");
    let daemon = virtiofsd(&share, &socket, &[]).unwrap_or_else(|e| panic!("{e}"));
    Fs { socket, daemon }
}

fn assert_fs(run: &Finished, daemons: &[&Daemon]) {
    let all = show(run, daemons);
    let l = line(run, "fs: ").unwrap_or_else(|| panic!("no fs line\n{all}"));
    let escaped = FILE_TEXT.replace('\n', "\\n");
    assert!(
        l.starts_with(&format!("fs: tag {TAG}; fuse 7.")),
        "{l:?}\n{all}"
    );
    assert!(
        l.contains(&format!("; hello.txt = \"{escaped}\""))
            && l.contains(", msi-x vector 0x")
            && l.ends_with(" pending"),
        "{l:?}\n{all}"
    );
}

struct Net {
    ns: NetNs,
    socket: PathBuf,
    daemon: Daemon,
    packets: PacketSocket,
}

fn net(dir: &TempDir) -> Net {
    let ns = NetNs::new("vfw").unwrap_or_else(|e| panic!("{e}"));
    ns.disable_ipv6().unwrap_or_else(|e| panic!("{e}"));
    ns.add_tap(TAP, false, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.join("net.sock");
    let daemon = vhost_net_daemon(&ns, &socket, &["--tap", TAP, "--mac", MAC])
        .unwrap_or_else(|e| panic!("{e}"));
    // Open before the guest runs: frames queue up in the socket meanwhile.
    let packets = ns.packet_socket(TAP).unwrap_or_else(|e| panic!("{e}"));
    Net {
        ns,
        socket,
        daemon,
        packets,
    }
}

fn mac_bytes() -> Vec<u8> {
    MAC.split(':')
        .map(|p| u8::from_str_radix(p, 16).unwrap())
        .collect()
}

fn assert_net(run: &Finished, n: &Net, daemons: &[&Daemon]) {
    let all = show(run, daemons);
    let l = line(run, "net: ").unwrap_or_else(|| panic!("no net line\n{all}"));
    assert!(
        l.starts_with(&format!("net: mac {MAC}; sent a frame"))
            && l.ends_with(", no msi-x (polled)"),
        "{l:?}\n{all}"
    );
    let frame = n
        .packets
        .recv_matching(FRAME_WAIT, |f| f.len() >= 14 && f[12..14] == ETHER_TYPE)
        .unwrap_or_else(|e| panic!("reading {TAP} in {}: {e}", n.ns.name()))
        .unwrap_or_else(|| panic!("no frame with EtherType 0x88b5 on {TAP}\n{all}"));
    assert_eq!(frame[..6], [0xff; 6], "destination of {frame:02x?}");
    assert_eq!(frame[6..12], mac_bytes()[..], "source of {frame:02x?}");
    assert_eq!(
        frame[14..14 + NET_PAYLOAD.len()],
        *NET_PAYLOAD,
        "{frame:02x?}"
    );
    assert_eq!(
        frame.len(),
        60,
        "padded to the Ethernet minimum: {frame:02x?}"
    );
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
    let f = fs_share(&dir);
    let run = boot(FwQemu::new().fs(&f.socket, TAG));
    assert_common(&run, 1, &[&f.daemon]);
    assert_fs(&run, &[&f.daemon]);
}

#[test]
fn net_frame_reaches_the_tap_through_vhost_net_daemon() {
    let dir = TempDir::new("vutest-fw-net").unwrap();
    let n = net(&dir);
    let run = boot(FwQemu::new().net(&n.socket, MAC));
    assert_common(&run, 1, &[&n.daemon]);
    assert_net(&run, &n, &[&n.daemon]);
}

#[test]
fn all_three_devices_in_one_guest() {
    let dir = TempDir::new("vutest-fw-all").unwrap();
    let b = blk(&dir);
    let f = fs_share(&dir);
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
    assert_fs(&run, &daemons);
    assert_net(&run, &n, &daemons);
}
