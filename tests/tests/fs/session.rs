//! Our `virtiofsd` across connections and under load: fresh FUSE sessions
//! after a reconnect, `--exit-on-disconnect`, 1 MiB requests in every
//! descriptor layout, many open files, and the open-file limit (contract:
//! `notes/fs-spec.md`). Resource use over many connections is checked for
//! every daemon in the `daemons` binary.

use std::fs;
use std::os::unix::process::CommandExt;

use fuse_backend_rs::abi::fuse_abi::ROOT_ID;
use vu_driver::fs::{FsOptions, Layout};
use vu_driver::process::fd_count;

use crate::common::*;

#[test]
fn reconnections_get_fresh_sessions() {
    let r = run_with(&[], |d| fs::write(d.join("f"), b"first").unwrap());
    let (node, fh) = {
        let mut fs = connect(&r, FsOptions::default());
        let e = fs.lookup(ROOT_ID, "f").unwrap();
        let fh = fs.open(e.nodeid, libc::O_RDONLY).unwrap().fh;
        assert_eq!(fs.read(fh, e.nodeid, 0, 10).unwrap(), b"first");
        (e.nodeid, fh)
    };
    for round in 2..=3 {
        let mut fs = connect(&r, FsOptions::default());
        assert!(fs.session().is_some(), "connection {round}: INIT");
        assert_eq!(fs.tag(), Some("kataShared"));
        // Nothing of the first session survives.
        let e = errno_of(
            &format!("connection {round}: GETATTR of an old node"),
            fs.getattr(node, None),
        );
        assert!(e == libc::EBADF || e == libc::ENOENT, "errno {e}");
        errno_of(
            &format!("connection {round}: READ through an old handle"),
            fs.read(fh, node, 0, 10),
        );
        let e = fs.lookup(ROOT_ID, "f").unwrap();
        let fh2 = fs.open(e.nodeid, libc::O_RDONLY).unwrap().fh;
        assert_eq!(fs.read(fh2, e.nodeid, 0, 10).unwrap(), b"first");
        let name = format!("made-{round}");
        let (made, o) = fs
            .create(ROOT_ID, &name, libc::S_IFREG | 0o644, libc::O_WRONLY)
            .unwrap();
        fs.write(o.fh, made.nodeid, 0, b"ok").unwrap();
        fs.release(o.fh, made.nodeid, libc::O_WRONLY).unwrap();
        assert_eq!(
            fs::read(r.share.join(format!("made-{round}"))).unwrap(),
            b"ok"
        );
    }
    let mut r = r;
    assert!(r.daemon.try_wait().unwrap().is_none(), "daemon exited");
}

#[test]
fn exit_on_disconnect_exits_zero_after_the_first_frontend() {
    let mut r = run_with(&["--exit-on-disconnect"], |d| {
        fs::write(d.join("f"), b"x").unwrap()
    });
    {
        let mut fs = connect(&r, FsOptions::default());
        fs.lookup(ROOT_ID, "f").unwrap();
        assert!(r.daemon.try_wait().unwrap().is_none());
    }
    assert_exits_zero(&mut r.daemon, "after the first frontend left", 20);
}

/// 1 MiB WRITE and READ under each descriptor layout, with indirect tables
/// and with direct chains; checked against the host.
#[test]
fn one_mib_requests_in_every_descriptor_layout() {
    let mut layouts = big_request_layouts();
    layouts.push(Layout::Fragmented {
        chunk: 2048,
        gap: 8,
    });
    let r = run(&["--cache=never"]);
    let len = 1usize << 20;
    for indirect in [true, false] {
        // Chains of up to ~520 descriptors, in an indirect table or in the
        // descriptor table, on a queue at least that large.
        let mut opts = FsOptions {
            queue_size: 1024,
            ..FsOptions::default()
        };
        opts.device.indirect = indirect;
        opts.device.max_indirect = 600;
        let mut fs = connect(&r, opts);
        assert!(
            fs.max_write() as usize >= len,
            "max_write {}",
            fs.max_write()
        );
        let name = format!("big-{indirect}");
        let (e, open) = fs
            .create(ROOT_ID, &name, libc::S_IFREG | 0o644, libc::O_RDWR)
            .unwrap();
        for (i, layout) in layouts.iter().copied().enumerate() {
            let what = format!("{layout:?}, indirect {indirect}");
            fs.set_layout(layout).unwrap();
            let data = pattern(len, i as u8 + if indirect { 0 } else { 100 });
            let off = (i * len) as u64;
            assert_eq!(
                fs.write(open.fh, e.nodeid, off, &data).unwrap() as usize,
                len,
                "{what}"
            );
            let n = fs.read_into(open.fh, e.nodeid, off, len as u32).unwrap();
            assert_eq!(n as usize, len, "{what}");
            assert!(
                fs.read_data(n).unwrap() == data,
                "{what}: read back differs"
            );
            let host = fs::read(r.share.join(&name)).unwrap();
            assert!(
                host[off as usize..][..len] == data[..],
                "{what}: host differs"
            );
        }
        fs.set_layout(Layout::Linux).unwrap();
        fs.release(open.fh, e.nodeid, libc::O_RDWR).unwrap();
    }
}

/// 3000 files looked up and kept open from a daemon started with the
/// common default soft limit of 1024 descriptors: the daemon raises its
/// limit; RELEASE and FORGET give the descriptors back.
#[test]
fn three_thousand_open_files_then_release_and_forget() {
    const N: usize = 3000;
    let dirs = Dirs::new();
    for i in 0..N {
        fs::write(dirs.share.join(format!("f{i}")), i.to_string()).unwrap();
    }
    let mut cmd = dirs.command(&with_defaults(&[]));
    // SAFETY: the hook runs between fork and exec and only calls the
    // async-signal-safe getrlimit and setrlimit on a stack value.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = 1024.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut r = dirs.spawn(cmd);
    let pid = r.daemon.pid();
    let soft = soft_nofile(pid);
    let idle_fds = fd_count(pid).unwrap();
    let mut fs = connect(&r, FsOptions::default());
    let mut open = Vec::with_capacity(N);
    for i in 0..N {
        let name = format!("f{i}");
        let e = fs
            .lookup(ROOT_ID, &name)
            .unwrap_or_else(|e| panic!("LOOKUP {name} (soft limit {soft}): {e}"));
        let fh = fs
            .open(e.nodeid, libc::O_RDONLY)
            .unwrap_or_else(|e| panic!("OPEN {name} (soft limit {soft}): {e}"))
            .fh;
        open.push((e.nodeid, fh));
    }
    assert!(
        soft_nofile(pid) > 2 * N as u64,
        "soft limit {}",
        soft_nofile(pid)
    );
    let (node, fh) = open[N - 1];
    assert_eq!(
        fs.read(fh, node, 0, 10).unwrap(),
        (N - 1).to_string().as_bytes()
    );
    let busy = fd_count(pid).unwrap();
    assert!(busy >= idle_fds + N, "{busy} fds with {N} files open");
    for &(node, fh) in &open {
        fs.release(fh, node, libc::O_RDONLY).unwrap();
    }
    let released = fd_count(pid).unwrap();
    assert!(
        released + N <= busy + 2,
        "RELEASE of {N} handles: {busy} -> {released} fds"
    );
    for &(node, _) in &open {
        fs.forget(node, 1).unwrap();
    }
    fs.wait_forgets().unwrap();
    // The root and the connection's own descriptors (its relay's sockets
    // among them) stay; the inodes' go.
    let n = settle_fds(pid, idle_fds + 24);
    assert!(
        n <= idle_fds + 24,
        "after FORGET: {n} fds ({released} before, {idle_fds} idle)"
    );
    still_serving(&mut fs, &mut r.daemon, &r.share, "3000 opens");
}

/// CVE-2020-10717: `--rlimit-nofile 256` bounds the descriptors a guest
/// can make the daemon hold; past it the guest gets EMFILE, the daemon
/// keeps serving, and releasing handles makes room again.
#[test]
fn rlimit_nofile_bounds_the_guest_and_emfile_is_survivable() {
    const N: usize = 400;
    let mut s = start_with(&["--rlimit-nofile", "256"], |d| {
        for i in 0..N {
            fs::write(d.join(format!("f{i}")), b"x").unwrap();
        }
    });
    let pid = s.run.daemon.pid();
    assert_eq!(soft_nofile(pid), 256, "--rlimit-nofile 256 not applied");
    let mut open = Vec::new();
    let mut refused = None;
    for i in 0..N {
        let name = format!("f{i}");
        let r =
            s.fs.lookup(ROOT_ID, &name)
                .and_then(|e| Ok((e.nodeid, s.fs.open(e.nodeid, libc::O_RDONLY)?.fh)));
        match r {
            Ok(h) => open.push(h),
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (at, err) = refused.expect("400 files held open under a limit of 256 descriptors");
    assert_eq!(err.errno(), Some(libc::EMFILE), "file {at}: {err:?}");
    assert!(fd_count(pid).unwrap() <= 256);
    let share = s.run.share.clone();
    still_serving(&mut s.fs, &mut s.run.daemon, &share, "EMFILE");
    for (node, fh) in open.drain(..) {
        s.fs.release(fh, node, libc::O_RDONLY).unwrap();
    }
    let e = s.fs.lookup(ROOT_ID, format!("f{at}")).unwrap();
    let fh = s.fs.open(e.nodeid, libc::O_RDONLY).unwrap().fh;
    assert_eq!(s.fs.read(fh, e.nodeid, 0, 4).unwrap(), b"x");
}
