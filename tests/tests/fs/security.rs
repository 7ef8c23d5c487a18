//! Our `virtiofsd` against the host-side attacks of NOTES.md's list:
//! device nodes and FIFOs opened through the guest (CVE-2020-35517), files
//! created in a setgid directory while supplementary groups are kept
//! (CVE-2022-0358), symlinks that point out of the share, and names that
//! walk out of it, in every sandbox mode.
//!
//! The tests about the sandbox run with `--sandbox namespace|chroot` (and
//! the default seccomp filter); the others with `--sandbox none --seccomp
//! none`. Whatever escapes the share can only land in the test's own
//! temporary `<top>` directory.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::ROOT_ID;
use vu_driver::fs::{Creds, FsClient, FsError, FsOptions, SetAttr};
use vu_driver::process::inherit_fd_as;

use crate::common::*;

/// How long an OPEN may take before it counts as blocked.
const NO_BLOCK: Duration = Duration::from_secs(5);

/// The daemon of `run` still answers (see `still_serving`).
fn still_serves(fs: &mut FsClient, run: &mut Running, what: &str) {
    let share = run.share.clone();
    still_serving(fs, &mut run.daemon, &share, what);
}

/// One `#[test]` per sandbox mode, each running `check(mode)`.
macro_rules! per_sandbox {
    ($check:ident: $($name:ident => $mode:literal),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $check($mode);
            }
        )+
    };
}

/// A request that must fail quickly: an errno, not a hang.
fn must_refuse<T: std::fmt::Debug>(bad: &mut Failures, what: &str, r: Result<T, FsError>) {
    match r {
        Err(FsError::Timeout { .. }) => {
            bad.push(format!("{what}: blocked (no reply in {NO_BLOCK:?})"))
        }
        other => bad.expect_errno(what, other),
    }
}

/// Opens `node` every way the guest can; each must be refused at once.
fn open_every_way(fs: &mut FsClient, bad: &mut Failures, what: &str, node: u64) {
    for (how, flags) in [
        ("O_RDONLY", libc::O_RDONLY),
        ("O_WRONLY", libc::O_WRONLY),
        ("O_RDWR", libc::O_RDWR),
        ("O_RDONLY|O_NONBLOCK", libc::O_RDONLY | libc::O_NONBLOCK),
        ("O_WRONLY|O_TRUNC", libc::O_WRONLY | libc::O_TRUNC),
    ] {
        must_refuse(bad, &format!("OPEN {what} {how}"), fs.open(node, flags));
    }
    must_refuse(bad, &format!("OPENDIR {what}"), fs.opendir(node));
    let truncate = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    must_refuse(
        bad,
        &format!("SETATTR size of {what}"),
        fs.setattr(node, &truncate),
    );
}

/// CVE-2020-35517: a FIFO and a character device (1:3, /dev/null's
/// numbers) made on the host, and ones the guest makes with MKNOD, are
/// never opened by the daemon: OPEN fails at once instead of blocking on
/// the FIFO or handing out the device.
#[test]
fn fifos_and_device_nodes_are_never_opened() {
    let mut s = start_with(&[], |d| {
        host_mknod(&d.join("fifo"), libc::S_IFIFO | 0o666, 0, 0);
        host_mknod(&d.join("null"), libc::S_IFCHR | 0o666, 1, 3);
    });
    s.fs.set_timeout(NO_BLOCK);
    let mut bad = Failures::default();
    for name in ["fifo", "null"] {
        let e = s.fs.lookup(ROOT_ID, name).unwrap();
        open_every_way(&mut s.fs, &mut bad, &format!("host {name}"), e.nodeid);
        // CREATE of the existing name without O_EXCL opens it too.
        let r =
            s.fs.create(ROOT_ID, name, libc::S_IFREG | 0o644, libc::O_RDWR);
        must_refuse(&mut bad, &format!("CREATE over host {name}"), r);
    }
    // Nodes the guest makes itself.
    for (name, mode, rdev) in [
        ("guest-fifo", libc::S_IFIFO | 0o666, 0),
        (
            "guest-null",
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3) as u32,
        ),
    ] {
        match s.fs.mknod(ROOT_ID, name, mode, rdev) {
            Ok(e) => {
                assert_eq!(e.attr.mode & libc::S_IFMT, mode & libc::S_IFMT, "{name}");
                open_every_way(&mut s.fs, &mut bad, name, e.nodeid);
            }
            Err(e) => assert!(e.errno().is_some(), "MKNOD {name}: {e:?}"),
        }
    }
    let share = s.run.share.clone();
    still_serving(&mut s.fs, &mut s.run.daemon, &share, "FIFOs and devices");
    bad.assert_none("(CVE-2020-35517: special files opened by the daemon)");
}

/// The group of the setgid directory: one the daemon holds as a
/// supplementary group, the guest's user does not.
const SGID_GROUP: u32 = 4242;
/// The guest's identity.
const GUEST: Creds = Creds {
    uid: 1000,
    gid: 1000,
    pid: 4321,
};

/// CVE-2022-0358 under `sandbox`: the daemon runs with the supplementary
/// group SGID_GROUP (as root does on many hosts); a guest user 1000:1000
/// creates files with the setgid bit in a directory owned by
/// root:SGID_GROUP with mode 2777. The files belong to the guest's uid and
/// the directory's group, and must not keep the setgid bit: the guest's
/// user is not in that group.
fn setgid_directory(sandbox: &str) {
    let dirs = Dirs::new();
    let sgid = dirs.share.join("sgid");
    fs::create_dir(&sgid).unwrap();
    std::os::unix::fs::chown(&sgid, Some(0), Some(SGID_GROUP)).unwrap();
    fs::set_permissions(&sgid, fs::Permissions::from_mode(0o2777)).unwrap();
    let args = [
        "--sandbox",
        sandbox,
        "--seccomp",
        if sandbox == "none" { "none" } else { "kill" },
    ];
    let mut cmd = dirs.command(&args);
    // SAFETY: the hook runs between fork and exec and only calls the
    // async-signal-safe setgroups on a stack array.
    unsafe {
        cmd.pre_exec(|| {
            let groups = [SGID_GROUP as libc::gid_t];
            if libc::setgroups(1, groups.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut run = dirs.spawn(cmd);
    let mut fs = connect(&run, FsOptions::default());
    let d = fs.lookup(ROOT_ID, "sgid").unwrap().nodeid;
    fs.set_creds(GUEST);
    let mut bad = Failures::default();
    let mode_of = |name: &str| fs::metadata(sgid.join(name)).map(|m| (m.uid(), m.gid(), m.mode()));
    let check = |bad: &mut Failures, what: &str, name: &str| match mode_of(name) {
        Ok((uid, gid, mode)) => {
            bad.check(uid == GUEST.uid, || {
                format!("{what}: owner {uid}, not the request's uid {}", GUEST.uid)
            });
            bad.check(gid == SGID_GROUP, || {
                format!("{what}: group {gid}, not the directory's {SGID_GROUP}")
            });
            bad.check(mode & libc::S_ISGID == 0, || {
                format!("{what}: mode {mode:o} kept the setgid bit of group {gid}")
            });
        }
        Err(e) => bad.push(format!("{what}: not on the host: {e}")),
    };
    match fs.create(d, "created", libc::S_IFREG | 0o2755, libc::O_RDWR) {
        Ok(_) => check(&mut bad, "CREATE mode 2755", "created"),
        Err(e) => bad.push(format!("CREATE mode 2755: {e}")),
    }
    match fs.mknod(d, "mknoded", libc::S_IFREG | 0o2755, 0) {
        Ok(_) => check(&mut bad, "MKNOD mode 2755", "mknoded"),
        Err(e) => bad.push(format!("MKNOD mode 2755: {e}")),
    }
    // SETATTR is not part of it: the daemon changes modes with its own
    // credentials, as every virtiofsd does; the guest kernel strips the
    // setgid bit of a chmod by a user outside the group before it asks.
    // A directory made there inherits the group and, legitimately, the
    // setgid bit; its owner is still the guest.
    match fs.mkdir(d, "subdir", 0o755) {
        Ok(_) => {
            let (uid, gid, _) = mode_of("subdir").unwrap();
            bad.check((uid, gid) == (GUEST.uid, SGID_GROUP), || {
                format!("MKDIR: owner {uid}:{gid}, not {}:{SGID_GROUP}", GUEST.uid)
            });
        }
        Err(e) => bad.push(format!("MKDIR: {e}")),
    }
    still_serves(&mut fs, &mut run, "setgid directory");
    bad.assert_none(&format!("(CVE-2022-0358, --sandbox {sandbox})"));
}

per_sandbox!(
    setgid_directory:
    setgid_directory_no_sandbox => "none",
    setgid_directory_namespace_sandbox => "namespace",
    setgid_directory_chroot_sandbox => "chroot",
);

/// What a `/etc/passwd` looks like in the share: anything read through
/// the symlinks must be this or nothing, never the host's.
const MARKER: &[u8] = b"share-passwd:x:0:0:inside the share:/:/bin/false\n";

/// Symlinks that point out of the share, followed through LOOKUP, OPEN,
/// CREATE, SETATTR, SETXATTR and LINK under `sandbox`: nothing may resolve
/// to the host's files, nothing outside the share may change.
fn symlinks_stay_inside(sandbox: &str) {
    let mut args = vec!["--sandbox", sandbox];
    match sandbox {
        "none" => args.extend(["--seccomp", "none", "--xattr"]),
        // xattrs with chroot are the subject of another test.
        "chroot" => {}
        _ => args.push("--xattr"),
    }
    let dirs = Dirs::new();
    let top = dirs.top.path().to_path_buf();
    let outside = top.join("outside.txt");
    fs::write(&outside, b"outside the share").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o644)).unwrap();
    let share = dirs.share.clone();
    fs::create_dir(share.join("etc")).unwrap();
    fs::write(share.join("etc/passwd"), MARKER).unwrap();
    fs::create_dir(share.join("d")).unwrap();
    let link =
        |target: &str, name: &str| std::os::unix::fs::symlink(target, share.join(name)).unwrap();
    link("/etc/passwd", "abs");
    link("/etc", "absdir");
    link("../../..", "up");
    link("../../../etc", "updir");
    link(&outside.to_string_lossy(), "victim-abs");
    link("../outside.txt", "victim-rel");
    let cmd = dirs.command(&args);
    let mut run = dirs.spawn(cmd);
    let mut fs = connect(&run, FsOptions::default());
    fs.set_timeout(NO_BLOCK);
    let host_passwd = fs::metadata("/etc/passwd").unwrap();
    let host_etc = fs::metadata("/etc").unwrap();
    let share_passwd = fs::metadata(share.join("etc/passwd")).unwrap().ino();
    let share_etc = fs::metadata(share.join("etc")).unwrap().ino();
    let before = snapshot(&top);
    let mut bad = Failures::default();

    // The links are links, their targets unchanged strings.
    let abs = fs.lookup(ROOT_ID, "abs").unwrap();
    assert_eq!(abs.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(fs.readlink(abs.nodeid).unwrap(), b"/etc/passwd");

    // Whatever LOOKUP finds through them is in the share or nothing.
    let resolve = |fs: &mut FsClient, bad: &mut Failures, what: &str, parent: &str, name: &str| {
        let Ok(p) = fs.lookup(ROOT_ID, parent) else {
            return;
        };
        if let Ok(e) = fs.lookup(p.nodeid, name) {
            let ino = e.attr.ino;
            bad.check(ino != host_passwd.ino() && ino != host_etc.ino(), || {
                format!("{what}: LOOKUP reached the host's file (inode {ino})")
            });
            bad.check(ino == share_passwd || ino == share_etc, || {
                format!("{what}: LOOKUP found inode {ino}, not the share's")
            });
        }
    };
    resolve(&mut fs, &mut bad, "absdir/passwd", "absdir", "passwd");
    resolve(&mut fs, &mut bad, "updir/passwd", "updir", "passwd");
    resolve(&mut fs, &mut bad, "up/etc", "up", "etc");
    resolve(&mut fs, &mut bad, "abs/.", "abs", ".");

    // `..` of the root and of a subdirectory is the root.
    let root_ino = fs::metadata(&share).unwrap().ino();
    let d = fs.lookup(ROOT_ID, "d").unwrap();
    for (what, parent) in [("root/..", ROOT_ID), ("d/..", d.nodeid)] {
        if let Ok(e) = fs.lookup(parent, "..") {
            bad.check(e.attr.ino == root_ino, || {
                format!("LOOKUP {what}: inode {} is not the share", e.attr.ino)
            });
            if let Ok(e2) = fs.lookup(e.nodeid, "..") {
                bad.check(e2.attr.ino == root_ino, || {
                    format!("LOOKUP {what}/..: inode {} is not the share", e2.attr.ino)
                });
            }
        }
    }

    // Opening or creating through a link never reads or writes its target.
    for name in ["abs", "victim-abs", "victim-rel"] {
        let e = fs.lookup(ROOT_ID, name).unwrap();
        for flags in [libc::O_RDONLY, libc::O_WRONLY | libc::O_TRUNC, libc::O_RDWR] {
            match fs.open(e.nodeid, flags) {
                Ok(o) => {
                    let data = fs.read(o.fh, e.nodeid, 0, 4096).unwrap_or_default();
                    bad.push(format!(
                        "OPEN {name} flags {flags:#x} succeeded; read {:?}",
                        String::from_utf8_lossy(&data[..data.len().min(40)])
                    ));
                    let _ = fs.release(o.fh, e.nodeid, flags);
                }
                Err(err) => bad.expect_errno(&format!("OPEN {name}"), Err::<(), _>(err)),
            }
        }
        let r = fs.create(
            ROOT_ID,
            name,
            libc::S_IFREG | 0o666,
            libc::O_WRONLY | libc::O_TRUNC,
        );
        must_refuse(&mut bad, &format!("CREATE over {name}"), r);
        // SETATTR and SETXATTR on the link node: the target keeps its
        // mode, times, size, owner and attributes (an errno is fine).
        for a in [
            SetAttr {
                mode: Some(0o777),
                ..Default::default()
            },
            SetAttr {
                uid: Some(4321),
                gid: Some(4321),
                ..Default::default()
            },
            SetAttr {
                mtime: Some((12345, 0)),
                atime: Some((12345, 0)),
                ..Default::default()
            },
            SetAttr {
                size: Some(0),
                ..Default::default()
            },
        ] {
            // Success or an errno: what counts is the target, checked below.
            let _ = fs.setattr(e.nodeid, &a);
        }
        let _ = fs.setxattr(e.nodeid, "user.evil", b"1", 0);
        // A hard link to the link node is a link to the symlink.
        let hl = format!("hard-{name}");
        if fs.link(e.nodeid, ROOT_ID, &hl).is_ok() {
            let m = fs::symlink_metadata(share.join(&hl)).unwrap();
            bad.check(m.file_type().is_symlink(), || {
                format!("LINK to {name}: made {hl} a {:?}", m.file_type())
            });
        }
    }
    let changes = snapshot_diff(&before, &snapshot(&top));
    for c in changes.iter().filter(|c| !c.contains("\"share")) {
        bad.push(format!("outside the share: {c}"));
    }
    let host_after = fs::metadata("/etc/passwd").unwrap();
    assert_eq!(
        (host_after.mode(), host_after.uid(), host_after.mtime()),
        (host_passwd.mode(), host_passwd.uid(), host_passwd.mtime()),
        "the host's /etc/passwd changed"
    );
    still_serving(&mut fs, &mut run.daemon, &share, "symlinks");
    bad.assert_none(&format!("(symlinks, --sandbox {sandbox})"));
}

per_sandbox!(
    symlinks_stay_inside:
    symlinks_stay_inside_no_sandbox => "none",
    symlinks_stay_inside_namespace_sandbox => "namespace",
    symlinks_stay_inside_chroot_sandbox => "chroot",
);

/// Names with `/`, `.`, `..`, empty, absolute or too long are refused
/// with an errno in every op, and nothing changes on the host, under
/// `sandbox` (see `bad_name_matrix`).
fn bad_names(sandbox: &str) {
    let mut args = vec!["--sandbox", sandbox];
    if sandbox == "none" {
        args.extend(["--seccomp", "none"]);
    }
    let mut run = run_with(&args, |_| {});
    let mut fs = connect(&run, FsOptions::default());
    let bad = bad_name_matrix(&mut fs, &mut run);
    still_serves(&mut fs, &mut run, "bad names");
    bad.assert_none(&format!("(names, --sandbox {sandbox})"));
}

per_sandbox!(
    bad_names:
    bad_names_are_refused_namespace_sandbox => "namespace",
    bad_names_are_refused_chroot_sandbox => "chroot",
);

/// The default command line (no `--sandbox`, no `--seccomp`) must
/// sandbox: the serving process's root is not the host's, nothing of the
/// host's root is reachable from it, and the share is (as its root or at
/// its `/share`).
#[test]
fn default_command_line_sandboxes_the_daemon() {
    let dirs = Dirs::new();
    let cmd = dirs.command(&[]);
    let run = dirs.spawn(cmd);
    let mut fs = connect(&run, FsOptions::default());
    fs.getattr(ROOT_ID, None).unwrap();
    let Some(p) = serving_process(&run) else {
        panic!(
            "no process of {} is sandboxed with the share as / or /share; log:\n{}",
            run.daemon.pid(),
            log_tail(&run.daemon, 10)
        );
    };
    for host_only in ["etc/passwd", "usr", "tmp", "root"] {
        assert!(
            fs::symlink_metadata(format!("/proc/{p}/root/{host_only}")).is_err(),
            "the sandboxed process {p} sees the host's /{host_only}"
        );
    }
}

/// A file's device and inode.
fn file_id(m: fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// The process of `run` that serves from inside the sandbox (in namespace
/// mode the supervisor's child; the supervisor itself ends up in the
/// sandbox's root too, pivot_root moves every process of the mount
/// namespace): its root is not the host's, and the share is its root or
/// its `/share`.
fn serving_process(run: &Running) -> Option<u32> {
    let mut pids: Vec<u32> =
        fs::read_to_string(format!("/proc/{0}/task/{0}/children", run.daemon.pid()))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    pids.push(run.daemon.pid());
    let host_root = file_id(fs::metadata("/").unwrap());
    let share = file_id(fs::metadata(&run.share).unwrap());
    pids.into_iter().find(|p| {
        let root = format!("/proc/{p}/root");
        let root_id = fs::metadata(&root).map(file_id).ok();
        let share_in = fs::metadata(format!("{root}/share")).map(file_id).ok();
        root_id != Some(host_root) && (root_id == Some(share) || share_in == Some(share))
    })
}

/// Whether the directory `dir` (a `/proc/PID/fd/N` link) lies under
/// `root`: walking `..` up from it meets `root` before a top (a directory
/// that is its own parent). This is what `openat(fd, "../..")` would walk.
fn directory_under(dir: &std::path::Path, root: (u64, u64)) -> bool {
    let mut p = dir.to_path_buf();
    for _ in 0..4096 {
        let Ok(here) = fs::metadata(&p).map(file_id) else {
            return false;
        };
        if here == root {
            return true;
        }
        let up = p.join("..");
        match fs::metadata(&up).map(file_id) {
            Ok(parent) if parent != here => p = up,
            _ => return false,
        }
    }
    false
}

/// Issue 14.2: every descriptor of the process serving under `args` is a
/// socket, pipe, anonymous inode or memfd (guest memory), standard I/O, or a file
/// inside its root: a directory whose `..` chain meets the root (no
/// `openat(fd, "../../etc/hostname")` reaches the host), another file
/// reachable from the root under the name the kernel gives it. The socket
/// directory's descriptor once kept for removing the socket, and a plain
/// chroot's descriptors of the host's `/proc`, were such ways out; the
/// daemon is also started with a descriptor of the share's parent left
/// open (as a careless parent would), which must not reach the worker.
fn no_descriptor_leads_out(args: &[&str]) {
    let dirs = Dirs::new();
    let mut cmd = dirs.command(args);
    let leaked = fs::File::open(dirs.top.path()).unwrap();
    inherit_fd_as(&mut cmd, leaked.as_raw_fd(), 50);
    let mut run = dirs.spawn(cmd);
    drop(leaked);
    let mut fs = connect(&run, FsOptions::default());
    // Inodes the passthrough holds descriptors of.
    let d = fs.mkdir(ROOT_ID, "dir", 0o755).unwrap();
    let (f, o) = fs
        .create(d.nodeid, "file", libc::S_IFREG | 0o644, libc::O_RDWR)
        .unwrap();
    let pid = serving_process(&run).unwrap_or_else(|| {
        panic!(
            "{args:?}: no sandboxed process; log:\n{}",
            log_tail(&run.daemon, 10)
        )
    });
    let root = file_id(fs::metadata(format!("/proc/{pid}/root")).unwrap());
    let share = run.share.clone();
    let mut bad = Vec::new();
    let mut seen = 0;
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let n: u32 = entry.file_name().to_string_lossy().parse().unwrap();
        let Ok(link) = fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        let text = link.to_string_lossy().into_owned();
        if ["socket:", "pipe:", "anon_inode:", "/memfd:"]
            .iter()
            .any(|k| text.starts_with(k))
        {
            continue;
        }
        let Ok(meta) = fs::metadata(entry.path()) else {
            continue;
        };
        seen += 1;
        let inside = if meta.is_dir() {
            directory_under(&entry.path(), root)
        } else if n <= 2 {
            true // standard I/O, as whoever started the daemon set it up
        } else {
            let id = Some(file_id(meta));
            let in_root = fs::metadata(format!("/proc/{pid}/root{text}")).map(file_id);
            let in_share = link.starts_with(&share) && fs::metadata(&link).map(file_id).ok() == id;
            in_root.ok() == id || in_share
        };
        if !inside {
            bad.push(format!("fd {n} -> {text}"));
        }
    }
    assert!(seen > 0, "{args:?}: no file descriptor checked");
    let log = run.daemon.log_contents();
    assert!(
        log.lines()
            .any(|l| l.contains("closed an inherited descriptor") && l.contains("fd 50 -> ")),
        "{args:?}: the leaked descriptor 50 was not closed (logged):\n{log}"
    );
    assert!(
        bad.is_empty(),
        "{args:?}: process {pid} keeps descriptors that lead out of its root: {bad:?}"
    );
    fs.release(o.fh, f.nodeid, libc::O_RDWR).unwrap();
    still_serving(&mut fs, &mut run.daemon, &share, "descriptors");
}

#[test]
fn no_descriptor_leads_out_of_the_namespace_sandbox() {
    no_descriptor_leads_out(&["--sandbox", "namespace"]);
}

#[test]
fn no_descriptor_leads_out_of_the_chroot_sandbox() {
    no_descriptor_leads_out(&["--sandbox", "chroot"]);
}

#[test]
fn no_descriptor_leads_out_of_the_chroot_sandbox_with_xattr() {
    no_descriptor_leads_out(&["-o", "sandbox=chroot,xattr"]);
}

/// Every operation the driver speaks, once, checked loosely against the
/// host: under a seccomp filter a missing system call kills the daemon
/// or fails the request.
fn every_op(fs: &mut FsClient, share: &std::path::Path, xattr: bool) {
    let d = fs.mkdir(ROOT_ID, "dir", 0o755).unwrap();
    let (f, o) = fs
        .create(d.nodeid, "file", libc::S_IFREG | 0o644, libc::O_RDWR)
        .unwrap();
    assert_eq!(
        fs.write(o.fh, f.nodeid, 0, &pattern(70_000, 1)).unwrap(),
        70_000
    );
    assert_eq!(
        fs.read(o.fh, f.nodeid, 0, 70_000).unwrap(),
        pattern(70_000, 1)
    );
    fs.fsync(o.fh, f.nodeid, true).unwrap();
    fs.fsync(o.fh, f.nodeid, false).unwrap();
    fs.fallocate(o.fh, f.nodeid, 0, 1 << 20, 0).unwrap();
    fs.lseek(o.fh, f.nodeid, 0, libc::SEEK_HOLE).unwrap();
    fs.flush(o.fh, f.nodeid).unwrap();
    fs.release(o.fh, f.nodeid, libc::O_RDWR).unwrap();
    let all = SetAttr {
        mode: Some(0o600),
        uid: Some(1),
        gid: Some(1),
        size: Some(10),
        atime: Some((1, 0)),
        mtime: Some((2, 0)),
        fh: None,
    };
    assert_eq!(fs.setattr(f.nodeid, &all).unwrap().attr.size, 10);
    fs.getattr(f.nodeid, None).unwrap();
    fs.access(f.nodeid, libc::R_OK).unwrap();
    if xattr {
        fs.setxattr(f.nodeid, "user.k", b"v", 0).unwrap();
        assert_eq!(fs.getxattr(f.nodeid, "user.k", 16).unwrap(), b"v");
        fs.listxattr(f.nodeid, 4096).unwrap();
        fs.removexattr(f.nodeid, "user.k").unwrap();
    }
    fs.symlink(d.nodeid, "sl", "file").unwrap();
    let sl = fs.lookup(d.nodeid, "sl").unwrap();
    assert_eq!(fs.readlink(sl.nodeid).unwrap(), b"file");
    fs.link(f.nodeid, ROOT_ID, "hard").unwrap();
    fs.mknod(d.nodeid, "fifo", libc::S_IFIFO | 0o644, 0)
        .unwrap();
    fs.rename(ROOT_ID, "hard", d.nodeid, "hard2").unwrap();
    let list = fs.list_dir(d.nodeid).unwrap();
    assert!(list.len() >= 4, "{list:?}");
    let dh = fs.opendir(d.nodeid).unwrap().fh;
    fs.readdir(dh, d.nodeid, 0, 4096).unwrap();
    fs.releasedir(dh, d.nodeid).unwrap();
    fs.statfs(ROOT_ID).unwrap();
    for name in ["sl", "fifo", "hard2", "file"] {
        fs.unlink(d.nodeid, name).unwrap();
    }
    fs.forget(f.nodeid, 1).unwrap();
    fs.wait_forgets().unwrap();
    fs.rmdir(ROOT_ID, "dir").unwrap();
    assert!(!share.join("dir").exists());
}

/// The default command line (namespace sandbox, seccomp kill) serves
/// every operation, serves a second frontend, and exits 0 on SIGTERM.
#[test]
fn default_sandbox_and_seccomp_serve_every_operation() {
    let dirs = Dirs::new();
    let cmd = dirs.command(&["--xattr"]);
    let mut run = dirs.spawn(cmd);
    for round in 1..=2 {
        let mut fs = connect(&run, FsOptions::default());
        every_op(&mut fs, &run.share, true);
        still_serves(&mut fs, &mut run, &format!("round {round}"));
    }
    run.daemon.signal(libc::SIGTERM).unwrap();
    assert_exits_zero(&mut run.daemon, "SIGTERM", 10);
}

/// libvirt's command line (`-o source=DIR,cache=always,sandbox=chroot,xattr`,
/// see the contract) serves every operation, xattrs included.
#[test]
fn libvirt_chroot_with_xattr_serves_every_operation() {
    let dirs = Dirs::new();
    let cmd = dirs.command(&["-o", "cache=always,sandbox=chroot,xattr"]);
    let mut run = dirs.spawn(cmd);
    let mut fs = connect(&run, FsOptions::default());
    every_op(&mut fs, &run.share, true);
    still_serves(&mut fs, &mut run, "chroot");
}

/// `--sandbox chroot` without xattrs serves every other operation under
/// the default seccomp filter.
#[test]
fn chroot_sandbox_serves_every_operation_but_xattrs() {
    let dirs = Dirs::new();
    let cmd = dirs.command(&["--sandbox", "chroot"]);
    let mut run = dirs.spawn(cmd);
    let mut fs = connect(&run, FsOptions::default());
    every_op(&mut fs, &run.share, false);
    still_serves(&mut fs, &mut run, "chroot");
}

/// CapEff of virtiofsd's serving process: what `KEEP_CAPS` in
/// `virtiofsd/src/setup.rs` lists (CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH,
/// FOWNER, FSETID, SETGID, SETUID, MKNOD, SETFCAP) and nothing else.
const FS_CAPS: &str = "00000000880000df";

/// Issue 14's per-mode checks of the jail: the serving process holds
/// exactly the passthrough's capabilities, NoNewPrivs 1 and seccomp 2; in
/// namespace mode the supervisor outside holds none, with NoNewPrivs and
/// seccomp too; the root holds the share and its namespace's `/proc`,
/// nothing else of the host.
fn jail_holds_only_the_share(sandbox: &str) {
    let dirs = Dirs::new();
    let cmd = dirs.command(&["--sandbox", sandbox]);
    let mut run = dirs.spawn(cmd);
    let mut fs = connect(&run, FsOptions::default());
    fs.getattr(ROOT_ID, None).unwrap();
    let pid = serving_process(&run).unwrap_or_else(|| {
        panic!(
            "{sandbox}: no sandboxed process; log:\n{}",
            log_tail(&run.daemon, 10)
        )
    });
    use vu_driver::process::{assert_held, assert_namespaces_apart, jail_namespaces};
    assert_held(pid, &format!("{sandbox}: the serving process"), FS_CAPS);
    if sandbox == "namespace" {
        let supervisor = run.daemon.pid();
        assert_ne!(pid, supervisor, "no supervised child");
        assert_held(supervisor, "the supervisor", "0000000000000000");
    }
    assert_namespaces_apart(pid, sandbox, jail_namespaces(sandbox));
    let mut root: Vec<String> = fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    // Chroot mode as root gets the same root in a private mount namespace
    // (a plain chroot into the share is the fallback without one).
    assert_eq!(root, ["proc", "share"], "{sandbox}: the jail's root");
    let share = file_id(fs::metadata(&run.share).unwrap());
    let inside = fs::metadata(format!("/proc/{pid}/root/share")).map(file_id);
    assert_eq!(
        inside.ok(),
        Some(share),
        "{sandbox}: /share is not the share"
    );
    still_serves(&mut fs, &mut run, "after the checks");
}

per_sandbox!(jail_holds_only_the_share:
    the_namespace_jail_holds_only_the_share_and_its_capabilities => "namespace",
    the_chroot_jail_holds_only_the_share_and_its_capabilities => "chroot",
);

/// Not root: the namespace jail builds on a user namespace of its own
/// (nobody mapped to 0 inside) and serves; what the guest creates belongs
/// to nobody on the host.
#[test]
fn the_namespace_jail_works_without_root() {
    const NOBODY: u32 = 65534;
    let dirs = Dirs::new();
    for dir in [dirs.top.path(), &dirs.share, dirs.sock_dir.path()] {
        std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let mut cmd = dirs.command(&["--sandbox", "namespace"]);
    cmd.uid(NOBODY).gid(NOBODY);
    let mut run = dirs.spawn(cmd);
    let mut fs = connect(&run, FsOptions::default());
    let d = fs.mkdir(ROOT_ID, "made-in-jail", 0o755).unwrap();
    fs.getattr(d.nodeid, None).unwrap();
    let host = fs::metadata(run.share.join("made-in-jail")).unwrap();
    assert_eq!((host.uid(), host.gid()), (NOBODY, NOBODY));
    let pid = serving_process(&run)
        .unwrap_or_else(|| panic!("no sandboxed process; log:\n{}", log_tail(&run.daemon, 10)));
    assert_ne!(pid, run.daemon.pid(), "no supervised child");
    vu_driver::process::assert_maps_nobody_to_root(pid);
    assert_eq!(vu_driver::process::seccomp_mode(pid).unwrap(), 2);
    assert_eq!(
        vu_driver::process::status_field(pid, "NoNewPrivs").unwrap(),
        "1"
    );
    still_serves(&mut fs, &mut run, "as nobody");
}
