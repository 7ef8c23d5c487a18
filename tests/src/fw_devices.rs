//! The test guest's devices and what its virtio drivers must have done
//! with them, for every frontend that boots it (QEMU in `qemu::fw`,
//! our VMM in `vmm::devices`): a disk image, a share with `hello.txt`, and a
//! tap in a network namespace, each served by our daemon; the guest's
//! console lines and the host-side traces (the image's sector 8, the frame
//! on the tap) are checked.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::fixture::{create_sparse_image, Daemon, TempDir};
use crate::netns::{NetNs, PacketSocket};
use crate::ours::{vhost_blk_daemon, vhost_net_daemon, virtiofsd, BlkDaemonOpts};
use crate::process::Finished;

/// The test disk's size.
pub const DISK_SIZE: u64 = 1 << 20;
/// virtiofsd's default tag.
pub const TAG: &str = "kataShared";
/// `hello.txt` in the share, which the guest reads.
pub const FILE_TEXT: &str = "hello from the host share\n";
/// The tap the NIC is served on.
pub const TAP: &str = "fwtap0";
/// The NIC's MAC (the daemon's `--mac`).
pub const MAC: &str = "02:00:00:00:00:22";
/// What the guest writes to sector 8 (`guest-fw/src/blk.rs`): this text,
/// then byte i is i mod 251.
pub const BLK_TEXT: &[u8] = b"guest-fw wrote sector 8 through virtio-blk\n";
/// The guest's frame (`guest-fw/src/net.rs`): EtherType and payload.
pub const ETHER_TYPE: [u8; 2] = [0x88, 0xb5];
pub const NET_PAYLOAD: &[u8] = b"guest-fw frame through virtio-net";
/// How long after QEMU exited the frame may still be on its way.
pub const FRAME_WAIT: Duration = Duration::from_secs(5);

/// The run's console, stderr and every daemon's log, for failure messages.
pub fn show(run: &Finished, daemons: &[&Daemon]) -> String {
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
pub fn line<'a>(run: &'a Finished, prefix: &str) -> Option<&'a str> {
    run.stdout.lines().find(|l| l.starts_with(prefix))
}

/// What the guest writes to sector 8.
pub fn sector8_expected() -> Vec<u8> {
    (0..512)
        .map(|i| BLK_TEXT.get(i).copied().unwrap_or((i % 251) as u8))
        .collect()
}

/// A disk image served by vhost-blk-daemon.
pub struct Blk {
    pub image: PathBuf,
    pub socket: PathBuf,
    pub daemon: Daemon,
}

/// A zeroed image of [`DISK_SIZE`] and its daemon.
pub fn blk(dir: &TempDir) -> Blk {
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

/// The guest's blk line, and its pattern in sector 8 (sectors 0..8 untouched).
pub fn assert_blk(run: &Finished, b: &Blk, daemons: &[&Daemon]) {
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

/// A share served by our virtiofsd.
pub struct Fs {
    pub socket: PathBuf,
    pub daemon: Daemon,
}

/// A share holding `hello.txt`, served with `args`.
pub fn fs_share(dir: &TempDir, args: &[&str]) -> Fs {
    let share = dir.join("share");
    fs::create_dir(&share).unwrap();
    fs::write(share.join("hello.txt"), FILE_TEXT).unwrap();
    let socket = dir.join("fs.sock");
    let daemon = virtiofsd(&share, &socket, args).unwrap_or_else(|e| panic!("{e}"));
    Fs { socket, daemon }
}

/// The guest's fs line: the tag from config and `hello.txt`'s text.
pub fn assert_fs(run: &Finished, tag: &str, daemons: &[&Daemon]) {
    let all = show(run, daemons);
    let l = line(run, "fs: ").unwrap_or_else(|| panic!("no fs line\n{all}"));
    let escaped = FILE_TEXT.replace('\n', "\\n");
    assert!(
        l.starts_with(&format!("fs: tag {tag}; fuse 7.")),
        "{l:?}\n{all}"
    );
    assert!(
        l.contains(&format!("; hello.txt = \"{escaped}\""))
            && l.contains(", msi-x vector 0x")
            && l.ends_with(" pending"),
        "{l:?}\n{all}"
    );
}

/// A tap in a namespace served by vhost-net-daemon, with a packet socket on it.
pub struct Net {
    pub ns: NetNs,
    pub socket: PathBuf,
    pub daemon: Daemon,
    pub packets: PacketSocket,
}

/// A namespace (IPv6 off), the tap, the daemon, and the host side's socket.
pub fn net(dir: &TempDir) -> Net {
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

/// [`MAC`] as bytes.
pub fn mac_bytes() -> Vec<u8> {
    MAC.split(':')
        .map(|p| u8::from_str_radix(p, 16).unwrap())
        .collect()
}

/// `msix`: whether the device has MSI-X (QEMU's vhost-user net under TCG
/// has none, see `fw_qemu`).
pub fn assert_net(run: &Finished, n: &Net, msix: bool, daemons: &[&Daemon]) {
    let all = show(run, daemons);
    let l = line(run, "net: ").unwrap_or_else(|| panic!("no net line\n{all}"));
    assert!(
        l.starts_with(&format!("net: mac {MAC}; sent a frame"))
            && if msix {
                l.contains(", msi-x vector 0x") && l.ends_with(" pending")
            } else {
                l.ends_with(", no msi-x (polled)")
            },
        "{l:?}\n{all}"
    );
    assert_guest_frame(&n.packets, &n.ns, &all);
}

/// Waits for the guest's frame on [`TAP`] in `ns`: broadcast from [`MAC`]
/// with EtherType 0x88b5 and [`NET_PAYLOAD`], padded to 60 bytes. `all`
/// says what ran, for a failure.
pub fn assert_guest_frame(packets: &PacketSocket, ns: &NetNs, all: &str) {
    let frame = packets
        .recv_matching(FRAME_WAIT, |f| f.len() >= 14 && f[12..14] == ETHER_TYPE)
        .unwrap_or_else(|e| panic!("reading {TAP} in {}: {e}", ns.name()))
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

/// [`TAP`] in a network namespace of its own (named after `prefix`), a
/// packet socket on it, and one queue opened as Kata opens it for a VMM
/// (IFF_VNET_HDR | IFF_NO_PI), to send with `vm.add-net`.
pub struct TapQueue {
    pub ns: NetNs,
    pub packets: PacketSocket,
    pub queue: OwnedFd,
}

/// See [`TapQueue`].
pub fn tap_queue(prefix: &str) -> TapQueue {
    let ns = NetNs::new(prefix).unwrap_or_else(|e| panic!("{e}"));
    ns.disable_ipv6().unwrap_or_else(|e| panic!("{e}"));
    ns.add_tap(TAP, false, None)
        .unwrap_or_else(|e| panic!("{e}"));
    // Open before the guest runs: frames queue up in the socket meanwhile.
    let packets = ns.packet_socket(TAP).unwrap_or_else(|e| panic!("{e}"));
    let queue =
        crate::tap::open_queue(&ns, TAP, crate::tap::QUEUE_FLAGS).unwrap_or_else(|e| panic!("{e}"));
    TapQueue { ns, packets, queue }
}

/// `vm.add-net` as Kata's `clh.go` sends it: `chclient.NewNetConfig()`'s
/// defaults and [`MAC`] as the body, `queue` with it (SCM_RIGHTS). The
/// status and body.
pub fn add_net_with_queue(api: &std::path::Path, queue: &OwnedFd) -> (u16, String) {
    use std::os::fd::AsRawFd;
    let nic = serde_json::json!({
        "mac": MAC, "ip": "192.168.249.1", "mask": "255.255.255.0",
        "num_queues": 2, "queue_size": 256, "vhost_user": false,
        "vhost_mode": "Client", "iommu": false,
    });
    let bytes = crate::http::request_bytes("PUT", "/api/v1/vm.add-net", Some(&nic.to_string()));
    let r = crate::http::exchange_with_fds(api, &bytes, &[queue.as_raw_fd()])
        .unwrap_or_else(|e| panic!("vm.add-net: {e}"));
    (r.status, r.body)
}
