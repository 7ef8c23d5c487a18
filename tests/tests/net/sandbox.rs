//! vhost-net-daemon's jail (issue #14): with `--sandbox namespace` or
//! `chroot` the serving process holds no capability, runs with NoNewPrivs
//! and seccomp, sees an empty root and holds the tap's queues, sockets and
//! anonymous inodes only; frames still cross both ways and a second
//! frontend is served through a new relay pair.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use vu_driver::net::frame::{parse_udp, UdpFrame};
use vu_driver::net::VirtioNetHdr;
use vu_driver::process::{
    assert_held, assert_namespaces_apart, fd_targets, jail_namespaces, serving_pid,
};

use crate::common::*;

/// A frame each way between a new client and the tap's host side.
fn frames_cross(r: &Rig, what: &str) {
    frames_cross_at(r.socket(), &r.pkt, what);
}

/// [`frames_cross`] for the daemon on `socket`, the tap's host side `pkt`.
fn frames_cross_at(socket: &std::path::Path, pkt: &vu_driver::netns::PacketSocket, what: &str) {
    let mut net = vu_driver::net::NetClient::connect(socket, &Default::default()).unwrap();
    let frame = UdpFrame {
        src_mac: GUEST_MAC,
        ..UdpFrame::default()
    }
    .build(what.as_bytes());
    net.send(0, &VirtioNetHdr::plain(), &frame).unwrap();
    let got = pkt
        .recv_matching(T, |b| {
            parse_udp(b).is_some_and(|v| v.payload == what.as_bytes())
        })
        .unwrap();
    assert_eq!(got.as_deref(), Some(frame.as_slice()), "{what}: TX");
    let back = UdpFrame {
        dst_mac: GUEST_MAC,
        ..UdpFrame::default()
    }
    .build(what.as_bytes());
    pkt.send(&back).unwrap();
    let got = driver_until(&mut net, 0, T, |b| b == back.as_slice());
    assert_eq!(got.last().map(|(_, f)| f), Some(&back), "{what}: RX");
}

/// The jail `mode` (`namespace` or `chroot`): the serving process holds
/// no capability, NoNewPrivs, seccomp, an empty root, the tap's queues,
/// sockets and anonymous inodes only; frames cross both ways, for a
/// second frontend too (a new relay pair: on abstract names inside the
/// jail's network namespace, or guarded ones in a chroot).
fn jailed(mode: &str) {
    let r = rig(&["--sandbox", mode]);
    frames_cross(&r, "first frontend");
    let pid = serving_pid(r.daemon.pid());
    let log = r.daemon.log_contents();
    let mut held = vec![("serving process", pid)];
    if mode == "namespace" {
        assert_ne!(pid, r.daemon.pid(), "no supervised child\n{log}");
        // The supervisor outside the namespaces is held as tightly.
        held.push(("supervisor", r.daemon.pid()));
    }
    for (who, pid) in held {
        assert_held(pid, &format!("{mode}: the {who}"), "0000000000000000");
    }
    // Its filter leaves out opening and removing files by path.
    assert!(
        log.contains("no file opened or removed by path"),
        "{mode}: the filter still allows files\n{log}"
    );
    // The daemon starts in the test's network namespace, apart from ours
    // whatever the jail.
    let mut own = jail_namespaces(mode).to_vec();
    if !own.contains(&"net") {
        own.push("net");
    }
    assert_namespaces_apart(pid, mode, &own);
    let root: Vec<_> = fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(root.is_empty(), "{mode}: the jail's root holds {root:?}");
    for entry in fd_targets(pid).unwrap() {
        let (fd, target) = entry.split_once(" -> ").unwrap();
        if fd.parse::<u32>().unwrap() <= 2 {
            continue; // standard I/O, as whoever started the daemon set it up
        }
        // A tap queue is /dev/net/tun (10:200), named relative to the
        // jail's root once the host's /dev is out of reach.
        let tun = fs::metadata(format!("/proc/{pid}/fd/{fd}"))
            .is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == libc::makedev(10, 200));
        let ok = tun
            || ["socket:", "pipe:", "anon_inode:", "/memfd:"]
                .iter()
                .any(|k| target.starts_with(k));
        assert!(ok, "{mode}: the jailed daemon holds {entry}\n{log}");
    }
    // The next frontend gets a new relay pair, inside the jail.
    frames_cross(&r, "second frontend");
}

#[test]
fn the_namespace_jail_holds_nothing_but_the_tap_and_serves() {
    jailed("namespace");
}

#[test]
fn the_chroot_jail_holds_nothing_but_the_tap_and_serves() {
    jailed("chroot");
}

/// Not root: the namespace jail builds on a user namespace of its own
/// (nobody mapped to 0 inside); the tap belongs to nobody, so attaching
/// its queue needs no capability. Frames cross both ways.
#[test]
fn the_namespace_jail_works_without_root() {
    const NOBODY: &str = "65534";
    let ns = vu_driver::netns::NetNs::new("vnd").unwrap();
    ns.disable_ipv6().unwrap();
    let tap = ["tuntap", "add", TAP, "mode", "tap", "vnet_hdr"];
    ns.ip(&[&tap[..], &["user", NOBODY, "group", NOBODY]].concat())
        .unwrap();
    ns.ip(&["link", "set", TAP, "up"]).unwrap();
    let dir = vu_driver::fixture::TempDir::new("vnd-unpriv").unwrap();
    std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
    let socket = dir.join("net.sock");
    let mut cmd = ns.command(std::path::Path::new("setpriv"));
    cmd.args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"]);
    cmd.arg(vu_driver::ours::project_binary("vhost-net-daemon").unwrap());
    vu_driver::process::without_systemd_env(&mut cmd);
    cmd.arg("--socket-path").arg(&socket);
    cmd.args([
        "--tap",
        TAP,
        "--mac",
        GUEST_MAC_ARG,
        "--sandbox",
        "namespace",
    ]);
    let daemon = vu_driver::fixture::Daemon::spawn_on("vhost-net-daemon", cmd, &socket)
        .unwrap_or_else(|e| panic!("{e}"));
    let pkt = ns.packet_socket(TAP).unwrap();
    frames_cross_at(&socket, &pkt, "as nobody");
    let pid = serving_pid(daemon.pid());
    let log = daemon.log_contents();
    assert_ne!(pid, daemon.pid(), "no supervised child\n{log}");
    assert_held(pid, "the serving process", "0000000000000000");
    vu_driver::process::assert_maps_nobody_to_root(pid);
    let root = fs::read_dir(format!("/proc/{pid}/root")).unwrap().count();
    assert_eq!(root, 0, "the jail's root is not empty\n{log}");
    frames_cross_at(&socket, &pkt, "as nobody, a second frontend");
    drop(daemon);
}
