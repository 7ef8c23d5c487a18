//! The virtio-fs driver against QEMU's C virtiofsd (`/usr/lib/qemu/virtiofsd`):
//! every FUSE operation the driver speaks, checked against what the host sees
//! in the shared directory, plus malformed requests.
//!
//! The C virtiofsd serves exactly one connection, so each test starts its own.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::ROOT_ID;
use vu_driver::fixture::{Daemon, TempDir};
use vu_driver::fs::{
    DirEntryPlus, FsClient, FsError, FsOptions, Layout, Malformed, Outcome, SetAttr,
};

use crate::common::{
    assert_attr_is_host, big_request_layouts, dir_with_a_written_file, forget_storm, pattern,
};

/// A running virtiofsd with a connected, initialised client.
/// Fields drop in order: the client disconnects before the daemon is stopped.
struct Setup {
    fs: FsClient,
    daemon: Daemon,
    share: TempDir,
    _sock_dir: TempDir,
}

fn start(cache: &str, opts: FsOptions) -> Setup {
    let share = TempDir::new("vutest-fs-share").unwrap();
    let sock_dir = TempDir::new("vutest-fs-sock").unwrap();
    let socket = sock_dir.join("fs.sock");
    let cache_opt = format!("cache={cache}");
    let daemon = Daemon::c_virtiofsd(share.path(), &socket, &["-o", &cache_opt]).unwrap();
    let fs = FsClient::connect(&socket, opts).unwrap();
    Setup {
        fs,
        daemon,
        share,
        _sock_dir: sock_dir,
    }
}

fn errno_of<T: std::fmt::Debug>(r: Result<T, FsError>) -> i32 {
    match r {
        Err(e) => e
            .errno()
            .unwrap_or_else(|| panic!("expected an errno, got {e:?}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[test]
fn init_negotiates_a_session() {
    let mut s = start("auto", FsOptions::default());
    let session = *s.fs.session().expect("INIT ran at connect");
    assert_eq!(session.init.major, 7);
    assert!(session.init.minor >= 31, "{:?}", session.init);
    assert!(s.fs.max_write() >= 4096, "{:?}", session.init);
    // Without the CONFIG protocol feature there is no tag; with it there must be one.
    let has_config =
        s.fs.device()
            .protocol_features()
            .contains(vhost::vhost_user::VhostUserProtocolFeatures::CONFIG);
    assert_eq!(s.fs.tag().is_some(), has_config);
    eprintln!(
        "C virtiofsd: INIT {:?} ({} bytes), flags {:?}, features {:#x}, protocol {:?}, tag {:?}",
        session.init,
        session.init_len,
        session.flags,
        s.fs.device().features(),
        s.fs.device().protocol_features(),
        s.fs.tag()
    );
    let root = s.fs.getattr(ROOT_ID, None).unwrap();
    let host = fs::metadata(s.share.path()).unwrap();
    assert_eq!(root.attr.ino, host.ino());
    assert_eq!(root.attr.mode, host.mode());
}

fn file_round_trip(cache: &str) {
    let mut s = start(cache, FsOptions::default());
    let fs = &mut s.fs;
    let data = pattern(10_000, 7);

    // CREATE + WRITE through the driver.
    let (entry, open) = fs
        .create(ROOT_ID, "hello.bin", libc::S_IFREG | 0o644, libc::O_RDWR)
        .unwrap();
    assert_ne!(entry.nodeid, 0);
    assert_eq!(fs.write(open.fh, entry.nodeid, 0, &data).unwrap(), 10_000);
    fs.flush(open.fh, entry.nodeid).unwrap();
    fs.release(open.fh, entry.nodeid, libc::O_RDWR).unwrap();

    // The host sees the same file with the same bytes.
    let host_path = s.share.join("hello.bin");
    assert_eq!(fs::read(&host_path).unwrap(), data);
    let meta = fs::metadata(&host_path).unwrap();
    assert_eq!(entry.attr.ino, meta.ino());
    assert_eq!(meta.mode() & 0o777, 0o644);

    // LOOKUP + OPEN + READ it back, whole and at an offset.
    let e = fs.lookup(ROOT_ID, "hello.bin").unwrap();
    assert_eq!(e.nodeid, entry.nodeid);
    assert_eq!(e.attr.size, 10_000);
    let fh = fs.open(e.nodeid, libc::O_RDONLY).unwrap().fh;
    assert_eq!(fs.read(fh, e.nodeid, 0, 65536).unwrap(), data);
    assert_eq!(fs.read(fh, e.nodeid, 9_000, 4096).unwrap(), &data[9_000..]);
    assert!(fs.read(fh, e.nodeid, 20_000, 100).unwrap().is_empty());
    fs.release(fh, e.nodeid, libc::O_RDONLY).unwrap();

    // A file the host creates is readable through the driver.
    let host_data = pattern(5_000, 99);
    fs::write(s.share.join("from-host.txt"), &host_data).unwrap();
    let h = fs.lookup(ROOT_ID, "from-host.txt").unwrap();
    assert_eq!(h.attr.size, 5_000);
    let hfh = fs.open(h.nodeid, libc::O_RDONLY).unwrap().fh;
    assert_eq!(fs.read(hfh, h.nodeid, 0, 8192).unwrap(), host_data);
    fs.release(hfh, h.nodeid, libc::O_RDONLY).unwrap();

    // READDIRPLUS lists both, with the right inode numbers and sizes.
    let list = fs.list_dir(ROOT_ID).unwrap();
    let find = |name: &[u8]| DirEntryPlus::find(&list, name);
    let f = find(b"hello.bin");
    assert_eq!(f.entry.attr.ino, meta.ino());
    assert_eq!(f.entry.attr.size, 10_000);
    assert_eq!(f.dirent.typ, u32::from(libc::DT_REG));
    assert_eq!(f.entry.nodeid, entry.nodeid);
    assert_eq!(find(b"from-host.txt").entry.attr.size, 5_000);
    assert!(list.iter().any(|d| d.name() == b"."));
    assert_eq!(list.len(), 4, "., .., two files: {list:?}");
}

#[test]
fn file_round_trip_cache_auto() {
    file_round_trip("auto");
}

#[test]
fn file_round_trip_cache_none() {
    file_round_trip("none");
}

#[test]
fn metadata_operations_match_the_host() {
    let mut s = start("none", FsOptions::default());
    let share = s.share.path().to_path_buf();
    let fs = &mut s.fs;

    // MKDIR, and a file inside it.
    let (dir, f, open) = dir_with_a_written_file(fs, &share);

    // SETATTR: truncate through the handle, then chmod; GETATTR agrees with the host.
    let a = fs
        .setattr(
            f.nodeid,
            &SetAttr {
                size: Some(1000),
                fh: Some(open.fh),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.attr.size, 1000);
    let a = fs
        .setattr(
            f.nodeid,
            &SetAttr {
                mode: Some(0o640),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.attr.mode & 0o777, 0o640);
    let mtime = (1_000_000_000u64, 5u32);
    fs.setattr(
        f.nodeid,
        &SetAttr {
            mtime: Some(mtime),
            ..Default::default()
        },
    )
    .unwrap();
    fs.release(open.fh, f.nodeid, libc::O_WRONLY).unwrap();
    let host = fs::metadata(share.join("dir/a.txt")).unwrap();
    let got = fs.getattr(f.nodeid, None).unwrap().attr;
    assert_eq!(host.len(), 1000);
    assert_eq!(host.permissions().mode() & 0o777, 0o640);
    assert_eq!(host.mtime() as u64, mtime.0);
    assert_eq!(host.mtime_nsec() as u32, mtime.1);
    assert_attr_is_host(&got, &host);
    assert_eq!((got.mtime, got.mtimensec), mtime);
    assert_eq!(
        fs::read(share.join("dir/a.txt")).unwrap(),
        &pattern(3000, 1)[..1000]
    );

    // RENAME across directories.
    fs.rename(dir.nodeid, "a.txt", ROOT_ID, "b.txt").unwrap();
    assert!(!share.join("dir/a.txt").exists());
    assert_eq!(fs::metadata(share.join("b.txt")).unwrap().ino(), host.ino());
    assert_eq!(errno_of(fs.lookup(dir.nodeid, "a.txt")), libc::ENOENT);
    assert_eq!(fs.lookup(ROOT_ID, "b.txt").unwrap().nodeid, f.nodeid);

    // RMDIR of a non-empty directory fails; after UNLINK of its file it works.
    fs::write(share.join("dir/host.txt"), b"x").unwrap();
    assert_eq!(errno_of(fs.rmdir(ROOT_ID, "dir")), libc::ENOTEMPTY);
    // The C virtiofsd answers EIO to UNLINK/RMDIR/RENAME of a name it has
    // not handed out a node for; the kernel always looks a name up first.
    assert_eq!(errno_of(fs.unlink(dir.nodeid, "host.txt")), libc::EIO);
    fs.lookup(dir.nodeid, "host.txt").unwrap();
    fs.unlink(dir.nodeid, "host.txt").unwrap();
    assert!(!share.join("dir/host.txt").exists());
    fs.rmdir(ROOT_ID, "dir").unwrap();
    assert!(!share.join("dir").exists());
    fs.unlink(ROOT_ID, "b.txt").unwrap();
    assert!(!share.join("b.txt").exists());

    // Missing names.
    assert_eq!(errno_of(fs.lookup(ROOT_ID, "nope")), libc::ENOENT);
    assert_eq!(errno_of(fs.mkdir(ROOT_ID, "", 0o755)), libc::ENOENT);

    // STATFS agrees with the host's statvfs on the block size.
    let st = fs.statfs(ROOT_ID).unwrap();
    assert!(st.bsize > 0 && st.blocks > 0, "{st:?}");
    assert!(st.namelen >= 255, "{st:?}");
}

#[test]
fn forget_does_not_break_the_session() {
    let mut s = start("auto", FsOptions::default());
    fs::write(s.share.join("f"), b"forget me").unwrap();
    let fs = &mut s.fs;
    // Look the file up three times, FORGET all three lookups, then
    // look it up again: the server must serve it afresh.
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(fs.lookup(ROOT_ID, "f").unwrap().nodeid);
    }
    assert!(ids.iter().all(|&i| i == ids[0]));
    fs.forget(ids[0], 3).unwrap();
    // FORGET of a node the server never gave out.
    fs.forget(0xdead_beef, 1).unwrap();
    fs.wait_forgets().unwrap();
    assert_eq!(fs.forgets_in_flight(), 0);
    forget_storm(fs);
}

/// 1 MiB write and read under each descriptor layout; checked against the host.
#[test]
fn one_mib_round_trips_with_any_descriptor_layout() {
    let mut s = start("none", FsOptions::default());
    let max = s.fs.max_write();
    eprintln!("C virtiofsd max_write {max}");
    let len = 1usize << 20;
    assert!(max as usize >= len, "max_write {max} < 1 MiB");
    let layouts = big_request_layouts();
    let (e, open) =
        s.fs.create(ROOT_ID, "big", libc::S_IFREG | 0o644, libc::O_RDWR)
            .unwrap();
    for (i, layout) in layouts.into_iter().enumerate() {
        s.fs.set_layout(layout).unwrap();
        let data = pattern(len, i as u8);
        let off = (i * len) as u64;
        assert_eq!(
            s.fs.write(open.fh, e.nodeid, off, &data).unwrap() as usize,
            len,
            "{layout:?}"
        );
        let n = s.fs.read_into(open.fh, e.nodeid, off, len as u32).unwrap();
        assert_eq!(n as usize, len, "{layout:?}");
        assert!(
            s.fs.read_data(n).unwrap() == data,
            "{layout:?}: read back differs"
        );
        let host = fs::read(s.share.join("big")).unwrap();
        assert!(
            host[off as usize..][..len] == data[..],
            "{layout:?}: host copy differs"
        );
    }
    // Zero-copy path: fill once, write and read many times in place.
    s.fs.set_layout(Layout::Linux).unwrap();
    let data = pattern(len, 200);
    s.fs.fill_write_buf(&data).unwrap();
    for k in 0..4u64 {
        assert_eq!(
            s.fs.write_from(open.fh, e.nodeid, k * len as u64, len as u32)
                .unwrap() as usize,
            len
        );
        assert_eq!(
            s.fs.read_into(open.fh, e.nodeid, k * len as u64, len as u32)
                .unwrap() as usize,
            len
        );
    }
    let addr = s.fs.read_buf_addr().unwrap();
    let in_place = s.fs.device().mem().read_vec(addr, len).unwrap();
    assert!(in_place == data);
    s.fs.release(open.fh, e.nodeid, libc::O_RDWR).unwrap();
}

#[test]
fn requests_before_init_are_refused() {
    let mut s = start(
        "auto",
        FsOptions {
            init: false,
            ..Default::default()
        },
    );
    let err = s.fs.getattr(ROOT_ID, None).unwrap_err();
    eprintln!("GETATTR before INIT: {err}");
    assert!(err.errno().is_some(), "{err:?}");
    s.fs.init().unwrap();
    s.fs.getattr(ROOT_ID, None).unwrap();
}

/// Checks the daemon still answers a valid request and is still running.
fn still_serving(s: &mut Setup, what: &str) {
    let a =
        s.fs.getattr(ROOT_ID, None)
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
    assert_eq!(a.attr.mode & libc::S_IFMT, libc::S_IFDIR, "after {what}");
    assert!(s.daemon.try_wait().unwrap().is_none(), "after {what}");
}

/// Every malformed case but a truncated header (see the next test) gets a
/// well-formed reply, and the daemon keeps serving.
#[test]
fn malformed_requests_get_replies_and_the_daemon_keeps_serving() {
    let mut s = start("auto", FsOptions::default());
    s.fs.set_timeout(Duration::from_secs(2));
    for case in Malformed::ALL {
        if case == Malformed::TruncatedHeader {
            continue;
        }
        let (unique, outcome) = s.fs.send_malformed(case).unwrap();
        let Outcome::Replied(r) = outcome else {
            panic!("{case:?}: dropped");
        };
        let h = r.header().unwrap_or_else(|| panic!("{case:?}: {r:?}"));
        assert_eq!(h.unique, unique, "{case:?}");
        assert_eq!(h.len, r.used_len, "{case:?}");
        // What the C virtiofsd does: it ignores `len`, so both bad-length
        // GETATTRs succeed; unknown opcodes get ENOSYS, a READ without
        // arguments EINVAL; the split request is served normally.
        let expected = match case {
            Malformed::UnknownOpcode => Some(libc::ENOSYS),
            Malformed::MissingArgs => Some(libc::EINVAL),
            _ => None,
        };
        assert_eq!(r.errno(), expected, "{case:?}: {r:?}");
        if expected.is_none() {
            assert_eq!(r.used_len, 16 + 104, "{case:?}: a full fuse_attr_out");
        }
        still_serving(&mut s, &format!("{case:?}"));
    }
}

/// QEMU 7.2's C virtiofsd hits `assert(0)` in fv_queue_worker on a request
/// shorter than `fuse_in_header` and exits: a guest can kill it. Our own
/// daemon must reply or drop instead; this pins the reference's behaviour.
#[test]
fn truncated_header_kills_the_c_virtiofsd() {
    let mut s = start("auto", FsOptions::default());
    s.fs.set_timeout(Duration::from_secs(2));
    let (_, outcome) = s.fs.send_malformed(Malformed::TruncatedHeader).unwrap();
    assert_eq!(outcome, Outcome::Dropped);
    let status = s.daemon.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(status.is_some_and(|st| !st.success()), "{status:?}");
    assert!(
        s.daemon
            .log_contents()
            .contains("fv_queue_worker: Assertion"),
        "{}",
        s.daemon.log_contents()
    );
}

/// The C virtiofsd serves one connection and exits when it ends.
#[test]
fn c_virtiofsd_exits_when_the_driver_disconnects() {
    let Setup { fs, mut daemon, .. } = start("auto", FsOptions::default());
    drop(fs);
    let status = daemon.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(status.is_some_and(|st| st.success()), "{status:?}");
}
