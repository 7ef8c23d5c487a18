//! vhost-blk-daemon's jail (issue #14): with `--sandbox namespace` or
//! `chroot` the serving process (and the namespace jail's supervisor) holds
//! no capability, runs with NoNewPrivs and seccomp, sees an empty root, keeps no descriptor that leads to the
//! host's tree (the image and sockets only), and still serves reads and
//! writes; SIGTERM ends it cleanly and the socket file goes.

use std::fs;
use std::path::Path;

use vu_driver::blk::{BlkClient, BlkOptions};
use vu_driver::ours::BlkDaemonOpts;
use vu_driver::process::{
    assert_held, assert_namespaces_apart, fd_targets, jail_namespaces, seccomp_mode, serving_pid,
    status_field,
};

use crate::common::*;

fn jailed(mode: &str, aio: &str) {
    let opts = BlkDaemonOpts {
        extra_args: vec!["--sandbox".into(), mode.into(), "--aio".into(), aio.into()],
        ..BlkDaemonOpts::default()
    };
    let mut s = daemon(&opts);
    let socket = s.daemon.socket().to_path_buf();
    let mut c = connect(&s);
    let data = pattern(3, 8192);
    assert_status_ok(write_req(&mut c, 8, &data), 1, "write");
    assert_eq!(c.read(8, data.len() as u32).unwrap(), data);
    assert_eq!(host_read(&s.image, 8, data.len()), data);

    let pid = serving_pid(s.daemon.pid());
    let log = s.daemon.log_contents();
    if mode == "namespace" {
        assert_ne!(pid, s.daemon.pid(), "no supervised child\n{log}");
    }
    // The supervisor outside the namespaces (the process we started) is
    // held as tightly as the child that serves.
    const NONE: &str = "0000000000000000";
    assert_held(pid, &format!("{mode}: the serving process"), NONE);
    assert_held(s.daemon.pid(), &format!("{mode}: the supervisor"), NONE);
    assert_namespaces_apart(pid, mode, jail_namespaces(mode));
    // Its filter leaves out opening and removing files by path.
    assert!(
        log.contains("no file opened or removed by path"),
        "{mode}: the filter still allows files\n{log}"
    );
    // The root is empty: nothing of the host by path.
    let root: Vec<_> = fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(root.is_empty(), "{mode}: the jail's root holds {root:?}");
    // Descriptors: the image, sockets, anonymous inodes (eventfds, epoll,
    // io_uring), pipes and memfds (guest memory) besides standard I/O;
    // never a directory or another host file.
    let image = fs::canonicalize(&s.image).unwrap();
    for entry in fd_targets(pid).unwrap() {
        let (fd, target) = entry.split_once(" -> ").unwrap();
        if fd.parse::<u32>().unwrap() <= 2 {
            continue; // standard I/O, as whoever started the daemon set it up
        }
        let ok = ["socket:", "pipe:", "anon_inode:", "/memfd:", "/dev/null"]
            .iter()
            .any(|k| target.starts_with(k))
            || Path::new(target) == image;
        assert!(ok, "{mode}: the jailed daemon holds {entry}\n{log}");
    }
    drop(c);
    s.daemon.signal(libc::SIGTERM).unwrap();
    let status = s
        .daemon
        .wait_timeout(std::time::Duration::from_secs(30))
        .unwrap()
        .expect("the daemon ends on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", s.daemon.log_contents());
    if mode == "namespace" {
        assert!(!socket.exists(), "the supervisor removes the socket file");
    }
}

#[test]
fn the_namespace_jail_holds_nothing_and_serves() {
    jailed("namespace", "sync");
}

#[test]
fn the_namespace_jail_serves_with_io_uring_too() {
    jailed("namespace", "io_uring");
}

#[test]
fn the_chroot_jail_holds_nothing_and_serves() {
    jailed("chroot", "sync");
}

/// Not root: the jail builds on a user namespace of its own (its uid and
/// gid mapped to 0 inside), with the same result.
#[test]
fn the_namespace_jail_works_without_root() {
    use std::os::unix::process::CommandExt;
    const NOBODY: u32 = 65534;
    let dir = vu_driver::fixture::TempDir::new("blk-unpriv").unwrap();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let image = dir.join("disk.img");
    vu_driver::fixture::create_sparse_image(&image, IMAGE_SIZE).unwrap();
    std::os::unix::fs::chown(&image, Some(NOBODY), Some(NOBODY)).unwrap();
    let socket = dir.join("blk.sock");
    let opts = BlkDaemonOpts {
        extra_args: vec!["--sandbox".into(), "namespace".into()],
        ..BlkDaemonOpts::default()
    };
    let mut cmd = vu_driver::ours::vhost_blk_daemon_command(&image, &socket, &opts).unwrap();
    cmd.uid(NOBODY).gid(NOBODY);
    let daemon = vu_driver::fixture::Daemon::spawn_on("vhost-blk-daemon", cmd, &socket)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut c = BlkClient::connect(&socket, &BlkOptions::default()).unwrap();
    let data = pattern(5, 4096);
    assert_status_ok(write_req(&mut c, 16, &data), 1, "write");
    assert_eq!(c.read(16, data.len() as u32).unwrap(), data);
    assert_eq!(host_read(&image, 16, data.len()), data);
    let pid = serving_pid(daemon.pid());
    let log = daemon.log_contents();
    assert_ne!(pid, daemon.pid(), "no supervised child\n{log}");
    assert_eq!(status_field(pid, "CapEff").unwrap(), "0000000000000000");
    assert_eq!(seccomp_mode(pid).unwrap(), 2);
    vu_driver::process::assert_maps_nobody_to_root(pid);
    let root = fs::read_dir(format!("/proc/{pid}/root")).unwrap().count();
    assert_eq!(root, 0, "the jail's root is not empty\n{log}");
}
