//! Our `virtiofsd` driven by the userspace virtio-fs driver: every FUSE
//! operation the driver speaks, checked against what the host sees in the
//! shared directory; cache modes, the config space, `--readonly` and
//! `--announce-submounts` (sessions and load: `session.rs`;
//! contract: `notes/fs-spec.md`).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

use fuse_backend_rs::abi::fuse_abi::{FsOptions as InitFlags, ROOT_ID};
use vu_driver::fs::{DirEntryPlus, FsClient, FsOptions, SetAttr, TAG_LEN};

use crate::common::*;

/// FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_CACHE_DIR (fuse.h).
const FOPEN_DIRECT_IO: u32 = 1;
const FOPEN_KEEP_CACHE: u32 = 2;
const FOPEN_CACHE_DIR: u32 = 8;
/// FUSE_ATTR_SUBMOUNT (fuse.h).
const ATTR_SUBMOUNT: u32 = 1;

/// INIT flags the contract says the daemon enables when offered.
fn contract_flags() -> InitFlags {
    InitFlags::ASYNC_READ
        | InitFlags::PARALLEL_DIROPS
        | InitFlags::BIG_WRITES
        | InitFlags::MAX_PAGES
        | InitFlags::ATOMIC_O_TRUNC
        | InitFlags::AUTO_INVAL_DATA
        | InitFlags::ASYNC_DIO
        | InitFlags::DO_READDIRPLUS
}

/// Client options that offer every flag of the contract plus SUBMOUNTS.
fn offer_all() -> FsOptions {
    FsOptions {
        init_flags: contract_flags() | InitFlags::SUBMOUNTS,
        ..FsOptions::default()
    }
}

#[test]
fn init_and_config_space_with_the_default_tag() {
    let r = run(&[]);
    let mut fs = connect(&r, offer_all());
    let s = *fs.session().expect("INIT ran at connect");
    assert_eq!(s.init.major, 7);
    assert!(s.init.minor >= 31, "{:?}", s.init);
    let missing = contract_flags() - s.flags;
    assert!(missing.is_empty(), "INIT did not enable {missing:?}: {s:?}");
    assert!(
        !s.flags.contains(InitFlags::SUBMOUNTS),
        "SUBMOUNTS without --announce-submounts: {s:?}"
    );
    assert!(
        s.init.max_write >= 1 << 20,
        "max_write {}",
        s.init.max_write
    );
    assert_eq!(fs.tag(), Some("kataShared"));
    assert_eq!(fs.config_num_request_queues(), Some(1));
    // The whole config space: the tag NUL padded to 36 bytes, then le32 1.
    let cfg = fs.device().get_config(0, (TAG_LEN + 4) as u32).unwrap();
    let mut want = b"kataShared".to_vec();
    want.resize(TAG_LEN, 0);
    want.extend_from_slice(&1u32.to_le_bytes());
    assert_eq!(cfg, want);
    let root = fs.getattr(ROOT_ID, None).unwrap();
    let host = fs::metadata(&r.share).unwrap();
    assert_eq!((root.attr.ino, root.attr.mode), (host.ino(), host.mode()));
}

#[test]
fn custom_tags_fill_the_config_space() {
    for tag in ["custom", "t", "abcdefghijklmnopqrstuvwxyz0123456789"] {
        let r = run(&["--tag", tag]);
        let fs = connect(&r, FsOptions::default());
        assert_eq!(fs.tag(), Some(tag), "--tag {tag}");
        assert_eq!(fs.config_num_request_queues(), Some(1), "--tag {tag}");
    }
}

/// The names of a listing without `.` and `..` (fuse-backend-rs's
/// passthrough leaves them out, which POSIX allows), checking that none
/// is listed twice.
fn real_names<'a>(names: impl Iterator<Item = &'a [u8]>) -> BTreeSet<&'a [u8]> {
    let mut set = BTreeSet::new();
    for n in names {
        assert!(
            set.insert(n),
            "{:?} listed twice",
            String::from_utf8_lossy(n)
        );
    }
    set.remove(&b"."[..]);
    set.remove(&b".."[..]);
    set
}

/// What differs between cache modes, as seen in replies.
#[derive(Debug)]
struct CacheExpect {
    /// Entry and attribute timeouts are zero.
    zero_timeouts: bool,
    /// open_flags of a file's OPEN and CREATE.
    file_open_flags: u32,
    /// open_flags of OPENDIR.
    dir_open_flags: u32,
}

/// Create, write, read back and list a file; the host sees the same; the
/// replies carry the cache mode's timeouts and open flags.
fn file_round_trip(cache: &str, want: CacheExpect) {
    let mut s = start(&[&format!("--cache={cache}")]);
    let share = s.share().to_path_buf();
    let fs = &mut s.fs;
    let data = pattern(10_000, 7);
    let timeouts_ok = |what: &str, entry: Option<u64>, attr: u64| {
        if want.zero_timeouts {
            assert_eq!((entry.unwrap_or(0), attr), (0, 0), "{cache}: {what}");
        } else {
            assert!(entry.unwrap_or(1) > 0 && attr > 0, "{cache}: {what}");
        }
    };

    let (entry, open) = fs
        .create(ROOT_ID, "hello.bin", libc::S_IFREG | 0o644, libc::O_RDWR)
        .unwrap();
    assert_ne!(entry.nodeid, 0);
    timeouts_ok("CREATE", Some(entry.entry_valid), entry.attr_valid);
    assert_eq!(open.open_flags & 3, want.file_open_flags, "{cache}: CREATE");
    assert_eq!(fs.write(open.fh, entry.nodeid, 0, &data).unwrap(), 10_000);
    fs.flush(open.fh, entry.nodeid).unwrap();
    fs.release(open.fh, entry.nodeid, libc::O_RDWR).unwrap();

    let host_path = share.join("hello.bin");
    assert_eq!(fs::read(&host_path).unwrap(), data);
    let meta = fs::metadata(&host_path).unwrap();
    assert_eq!(entry.attr.ino, meta.ino());
    assert_eq!(meta.mode() & 0o777, 0o644);

    let e = fs.lookup(ROOT_ID, "hello.bin").unwrap();
    timeouts_ok("LOOKUP", Some(e.entry_valid), e.attr_valid);
    assert_eq!((e.nodeid, e.attr.size), (entry.nodeid, 10_000));
    let a = fs.getattr(e.nodeid, None).unwrap();
    timeouts_ok("GETATTR", None, a.attr_valid);
    let o = fs.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(o.open_flags & 3, want.file_open_flags, "{cache}: OPEN");
    assert_eq!(fs.read(o.fh, e.nodeid, 0, 65536).unwrap(), data);
    assert_eq!(
        fs.read(o.fh, e.nodeid, 9_000, 4096).unwrap(),
        &data[9_000..]
    );
    assert!(fs.read(o.fh, e.nodeid, 20_000, 100).unwrap().is_empty());
    fs.release(o.fh, e.nodeid, libc::O_RDONLY).unwrap();

    // A file the host writes is read through the driver.
    let host_data = pattern(5_000, 99);
    fs::write(share.join("from-host.txt"), &host_data).unwrap();
    let h = fs.lookup(ROOT_ID, "from-host.txt").unwrap();
    let hfh = fs.open(h.nodeid, libc::O_RDONLY).unwrap().fh;
    assert_eq!(fs.read(hfh, h.nodeid, 0, 8192).unwrap(), host_data);
    fs.release(hfh, h.nodeid, libc::O_RDONLY).unwrap();

    let d = fs.opendir(ROOT_ID).unwrap();
    assert_eq!(
        d.open_flags & (FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE | FOPEN_DIRECT_IO),
        want.dir_open_flags,
        "{cache}: OPENDIR"
    );
    fs.releasedir(d.fh, ROOT_ID).unwrap();
    let list = fs.list_dir(ROOT_ID).unwrap();
    let f = DirEntryPlus::find(&list, b"hello.bin");
    assert_eq!(f.entry.attr.ino, meta.ino());
    assert_eq!(f.entry.nodeid, entry.nodeid);
    assert_eq!(f.dirent.typ, u32::from(libc::DT_REG));
    timeouts_ok("READDIRPLUS", Some(f.entry.entry_valid), f.entry.attr_valid);
    let names = real_names(list.iter().map(|d| d.name()));
    let want_names: BTreeSet<&[u8]> = [&b"hello.bin"[..], b"from-host.txt"].into();
    assert_eq!(names, want_names);
}

#[test]
fn cache_never_has_zero_timeouts_and_direct_io() {
    file_round_trip(
        "never",
        CacheExpect {
            zero_timeouts: true,
            file_open_flags: FOPEN_DIRECT_IO,
            dir_open_flags: 0,
        },
    );
}

#[test]
fn cache_none_is_an_alias_of_never() {
    file_round_trip(
        "none",
        CacheExpect {
            zero_timeouts: true,
            file_open_flags: FOPEN_DIRECT_IO,
            dir_open_flags: 0,
        },
    );
}

#[test]
fn cache_auto_has_timeouts_and_no_open_flags() {
    file_round_trip(
        "auto",
        CacheExpect {
            zero_timeouts: false,
            file_open_flags: 0,
            dir_open_flags: 0,
        },
    );
}

#[test]
fn cache_always_keeps_the_page_cache() {
    file_round_trip(
        "always",
        CacheExpect {
            zero_timeouts: false,
            file_open_flags: FOPEN_KEEP_CACHE,
            dir_open_flags: FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE,
        },
    );
}

#[test]
fn cache_always_timeouts_are_at_least_those_of_auto() {
    let timeouts = |cache: &str| {
        let mut s = start_with(&[&format!("--cache={cache}")], |d| {
            fs::write(d.join("f"), b"x").unwrap()
        });
        let e = s.fs.lookup(ROOT_ID, "f").unwrap();
        (e.entry_valid, e.attr_valid)
    };
    let (auto, always) = (timeouts("auto"), timeouts("always"));
    assert!(
        always.0 >= auto.0 && always.1 >= auto.1,
        "{auto:?} {always:?}"
    );
}

#[test]
fn metadata_operations_match_the_host() {
    let mut s = start(&["--cache=never"]);
    let share = s.share().to_path_buf();
    let fs = &mut s.fs;

    let (dir, f, open) = dir_with_a_written_file(fs, &share);

    // SETATTR: truncate through the handle and by node, chmod, chown, utimes.
    let set = |fs: &mut FsClient, a: SetAttr| fs.setattr(f.nodeid, &a).unwrap().attr;
    let a = set(
        fs,
        SetAttr {
            size: Some(1000),
            fh: Some(open.fh),
            ..Default::default()
        },
    );
    assert_eq!(a.size, 1000);
    assert_eq!(fs::metadata(share.join("dir/a.txt")).unwrap().len(), 1000);
    fs.release(open.fh, f.nodeid, libc::O_WRONLY).unwrap();
    let a = set(
        fs,
        SetAttr {
            size: Some(1500),
            ..Default::default()
        },
    );
    assert_eq!(a.size, 1500);
    let a = set(
        fs,
        SetAttr {
            mode: Some(0o640),
            ..Default::default()
        },
    );
    assert_eq!(a.mode & 0o7777, 0o640);
    let a = set(
        fs,
        SetAttr {
            uid: Some(1234),
            gid: Some(5678),
            ..Default::default()
        },
    );
    assert_eq!((a.uid, a.gid), (1234, 5678));
    let (atime, mtime) = ((1_100_000_000u64, 7u32), (1_000_000_000u64, 5u32));
    let a = set(
        fs,
        SetAttr {
            atime: Some(atime),
            mtime: Some(mtime),
            ..Default::default()
        },
    );
    assert_eq!((a.mtime, a.mtimensec), mtime);
    let host = fs::metadata(share.join("dir/a.txt")).unwrap();
    assert_eq!(host.len(), 1500);
    assert_eq!(host.permissions().mode() & 0o7777, 0o640);
    assert_eq!((host.uid(), host.gid()), (1234, 5678));
    assert_eq!((host.mtime() as u64, host.mtime_nsec() as u32), mtime);
    assert_eq!((host.atime() as u64, host.atime_nsec() as u32), atime);
    let mut want = pattern(3000, 1)[..1000].to_vec();
    want.resize(1500, 0);
    assert_eq!(fs::read(share.join("dir/a.txt")).unwrap(), want);
    let got = fs.getattr(f.nodeid, None).unwrap().attr;
    assert_attr_is_host(&got, &host);

    // LINK: a second name for the same node.
    let l = fs.link(f.nodeid, ROOT_ID, "hard").unwrap();
    assert_eq!(l.nodeid, f.nodeid);
    assert_eq!(l.attr.nlink, 2);
    assert_eq!(fs::metadata(share.join("hard")).unwrap().ino(), host.ino());
    assert_eq!(fs::metadata(share.join("hard")).unwrap().nlink(), 2);

    // SYMLINK and READLINK.
    let sl = fs.symlink(ROOT_ID, "sl", "dir/a.txt").unwrap();
    assert_eq!(sl.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        fs::read_link(share.join("sl")).unwrap(),
        PathBuf::from("dir/a.txt")
    );
    assert_eq!(fs.readlink(sl.nodeid).unwrap(), b"dir/a.txt");
    // readlink(2) says EINVAL; the passthrough's readlinkat(fd, "") says
    // ENOENT. The guest kernel never asks, so any errno will do.
    errno_of("READLINK of a file", fs.readlink(f.nodeid));

    // RENAME across directories.
    fs.rename(dir.nodeid, "a.txt", ROOT_ID, "b.txt").unwrap();
    assert!(!share.join("dir/a.txt").exists());
    assert_eq!(fs::metadata(share.join("b.txt")).unwrap().ino(), host.ino());
    assert_errno(
        "LOOKUP renamed",
        fs.lookup(dir.nodeid, "a.txt"),
        libc::ENOENT,
    );
    assert_eq!(fs.lookup(ROOT_ID, "b.txt").unwrap().nodeid, f.nodeid);

    // RMDIR of a non-empty directory fails; after UNLINK of its file it works.
    fs::write(share.join("dir/host.txt"), b"x").unwrap();
    assert_errno("RMDIR non-empty", fs.rmdir(ROOT_ID, "dir"), libc::ENOTEMPTY);
    fs.unlink(dir.nodeid, "host.txt").unwrap();
    assert!(!share.join("dir/host.txt").exists());
    fs.rmdir(ROOT_ID, "dir").unwrap();
    assert!(!share.join("dir").exists());
    for name in ["b.txt", "hard", "sl"] {
        fs.unlink(ROOT_ID, name).unwrap();
        assert!(fs::symlink_metadata(share.join(name)).is_err(), "{name}");
    }
    assert_errno("LOOKUP missing", fs.lookup(ROOT_ID, "nope"), libc::ENOENT);
    assert_errno("UNLINK missing", fs.unlink(ROOT_ID, "nope"), libc::ENOENT);

    // STATFS agrees with the host's statvfs.
    let st = fs.statfs(ROOT_ID).unwrap();
    let host = host_statvfs(&share);
    assert_eq!(u64::from(st.bsize), host.f_bsize, "{st:?}");
    assert_eq!(st.blocks, host.f_blocks, "{st:?}");
    assert_eq!(st.files, host.f_files, "{st:?}");
    assert_eq!(u64::from(st.namelen), host.f_namemax, "{st:?}");
}

#[test]
fn forget_drops_the_node_and_unknown_nodes_are_harmless() {
    let mut s = start_with(&[], |d| fs::write(d.join("f"), b"forget me").unwrap());
    let fs = &mut s.fs;
    let ids: Vec<u64> = (0..3)
        .map(|_| fs.lookup(ROOT_ID, "f").unwrap().nodeid)
        .collect();
    assert!(ids.iter().all(|&i| i == ids[0]), "{ids:?}");
    fs.forget(ids[0], 3).unwrap();
    fs.forget(0xdead_beef, 1).unwrap();
    fs.wait_forgets().unwrap();
    assert_eq!(fs.forgets_in_flight(), 0);
    // Every lookup was forgotten: the node id is no longer valid.
    let errno = errno_of("GETATTR of a forgotten node", fs.getattr(ids[0], None));
    assert!(errno == libc::EBADF || errno == libc::ENOENT, "{errno}");
    // Many FORGETs without waiting: the hiprio slots are recycled.
    let (nodeid, fh) = forget_storm(fs);
    fs.release(fh, nodeid, libc::O_RDONLY).unwrap();
}

#[test]
fn readdir_and_readdirplus_list_the_host_directory_in_batches() {
    let mut names: BTreeSet<String> = (0..60)
        .map(|i| format!("file-{i:03}-{}", "x".repeat(i % 17)))
        .collect();
    // Names that start like `.` and `..` are ordinary entries.
    names.extend([
        ".hidden".to_string(),
        "..dots".to_string(),
        "...".to_string(),
    ]);
    let mut s = start_with(&[], |d| {
        for n in &names {
            fs::write(d.join(n), n.as_bytes()).unwrap();
        }
        fs::create_dir(d.join("subdir")).unwrap();
    });
    let fs = &mut s.fs;
    let mut want: BTreeSet<Vec<u8>> = names.iter().map(|n| n.as_bytes().to_vec()).collect();
    want.insert(b"subdir".to_vec());
    // READDIR in 512-byte batches, continuing from each batch's last offset.
    let fh = fs.opendir(ROOT_ID).unwrap().fh;
    let (mut off, mut seen, mut batches) = (0, Vec::new(), 0);
    loop {
        let batch = fs.readdir(fh, ROOT_ID, off, 512).unwrap();
        if batch.is_empty() {
            break;
        }
        batches += 1;
        off = batch.last().unwrap().off;
        for d in batch {
            let typ = if d.name == b"subdir" || d.name == b"." || d.name == b".." {
                libc::DT_DIR
            } else {
                libc::DT_REG
            };
            assert_eq!(
                d.typ,
                u32::from(typ),
                "{:?}",
                String::from_utf8_lossy(&d.name)
            );
            seen.push(d.name);
        }
    }
    assert!(
        batches > 3,
        "63 entries fit in {batches} batches of 512 bytes"
    );
    let seen = real_names(seen.iter().map(Vec::as_slice));
    assert_eq!(seen, want.iter().map(Vec::as_slice).collect());
    fs.releasedir(fh, ROOT_ID).unwrap();
    let errno = errno_of("READDIR after RELEASEDIR", fs.readdir(fh, ROOT_ID, 0, 4096));
    assert_eq!(errno, libc::EBADF);

    // READDIRPLUS: each real entry is looked up, with the host's attributes.
    let list = fs.list_dir(ROOT_ID).unwrap();
    let listed = real_names(list.iter().map(|d| d.name()));
    assert_eq!(listed, want.iter().map(Vec::as_slice).collect());
    for d in &list {
        let name = String::from_utf8_lossy(d.name()).into_owned();
        if name == "." || name == ".." {
            continue;
        }
        assert_ne!(d.entry.nodeid, 0, "{name}");
        let host = fs::symlink_metadata(s.run.share.join(&name)).unwrap();
        assert_eq!(d.entry.attr.ino, host.ino(), "{name}");
        assert_eq!(d.entry.attr.mode, host.mode(), "{name}");
        if !host.is_dir() {
            assert_eq!(d.entry.attr.size, host.len(), "{name}");
        }
    }
}

#[test]
fn fallocate_and_lseek() {
    let mut s = start_with(&[], |d| {
        // Data at 0..4096 and at 1 MiB..1 MiB+4096, a hole between.
        let f = fs::File::create(d.join("sparse")).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[1u8; 4096], 0).unwrap();
        f.write_all_at(&[2u8; 4096], 1 << 20).unwrap();
    });
    let host = s.host("sparse");
    let fs = &mut s.fs;
    let e = fs.lookup(ROOT_ID, "sparse").unwrap();
    let fh = fs.open(e.nodeid, libc::O_RDWR).unwrap().fh;
    assert_eq!(fs.lseek(fh, e.nodeid, 0, libc::SEEK_DATA).unwrap(), 0);
    assert_eq!(fs.lseek(fh, e.nodeid, 0, libc::SEEK_HOLE).unwrap(), 4096);
    assert_eq!(
        fs.lseek(fh, e.nodeid, 8192, libc::SEEK_DATA).unwrap(),
        1 << 20
    );
    assert_errno(
        "LSEEK SEEK_DATA past the end",
        fs.lseek(fh, e.nodeid, 4 << 20, libc::SEEK_DATA),
        libc::ENXIO,
    );
    // Allocate past the end: the size grows, the blocks are reserved.
    let before = fs::metadata(&host).unwrap().blocks();
    fs.fallocate(fh, e.nodeid, 2 << 20, 1 << 20, 0).unwrap();
    let m = fs::metadata(&host).unwrap();
    assert_eq!(m.len(), 3 << 20);
    assert!(m.blocks() >= before + 2048, "{} -> {}", before, m.blocks());
    // KEEP_SIZE: blocks, no size change.
    fs.fallocate(fh, e.nodeid, 3 << 20, 1 << 20, libc::FALLOC_FL_KEEP_SIZE)
        .unwrap();
    assert_eq!(fs::metadata(&host).unwrap().len(), 3 << 20);
    // Punch the first 4 KiB: zeros on the host.
    fs.fallocate(
        fh,
        e.nodeid,
        0,
        4096,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
    )
    .unwrap();
    assert_eq!(&fs::read(&host).unwrap()[..4096], &[0u8; 4096][..]);
    assert_eq!(fs.lseek(fh, e.nodeid, 0, libc::SEEK_DATA).unwrap(), 1 << 20);
    assert_eq!(
        fs.lseek(fh, e.nodeid, 12345, libc::SEEK_SET).unwrap(),
        12345
    );
    fs.release(fh, e.nodeid, libc::O_RDWR).unwrap();
}

/// The submount flags LOOKUP and READDIRPLUS report for `mnt` (a tmpfs
/// mount point) and `plain` (an ordinary directory), with `args`.
fn submount_flags(args: &[&str]) -> (InitFlags, [(String, u32); 4]) {
    let dirs = Dirs::new();
    fs::create_dir(dirs.share.join("mnt")).unwrap();
    fs::create_dir(dirs.share.join("plain")).unwrap();
    let cmd = dirs.command(&with_defaults(args));
    let run = dirs.spawn(cmd);
    // Mounted after the daemon started (it sees host mounts at once with
    // no sandbox) and declared after `run`, so it is unmounted before the
    // directories are removed.
    let _mount = TmpfsMount::new(&run.share.join("mnt"));
    fs::write(run.share.join("mnt/inside"), b"on tmpfs").unwrap();
    let mut fs = connect(&run, offer_all());
    let flags = fs.session().unwrap().flags;
    let l_mnt = fs.lookup(ROOT_ID, "mnt").unwrap();
    let l_plain = fs.lookup(ROOT_ID, "plain").unwrap();
    // The file inside the tmpfs is reachable through the submount.
    let inside = fs.lookup(l_mnt.nodeid, "inside").unwrap();
    let fh = fs.open(inside.nodeid, libc::O_RDONLY).unwrap().fh;
    assert_eq!(fs.read(fh, inside.nodeid, 0, 100).unwrap(), b"on tmpfs");
    fs.release(fh, inside.nodeid, libc::O_RDONLY).unwrap();
    let list = fs.list_dir(ROOT_ID).unwrap();
    let plus = |name: &[u8]| DirEntryPlus::find(&list, name).entry.attr.flags;
    (
        flags,
        [
            ("LOOKUP mnt".into(), l_mnt.attr.flags),
            ("LOOKUP plain".into(), l_plain.attr.flags),
            ("READDIRPLUS mnt".into(), plus(b"mnt")),
            ("READDIRPLUS plain".into(), plus(b"plain")),
        ],
    )
}

#[test]
fn announce_submounts_marks_mount_points() {
    let (init, flags) = submount_flags(&["--announce-submounts"]);
    assert!(init.contains(InitFlags::SUBMOUNTS), "INIT {init:?}");
    for (what, f) in &flags {
        let want = if what.ends_with("mnt") {
            ATTR_SUBMOUNT
        } else {
            0
        };
        assert_eq!(f & ATTR_SUBMOUNT, want, "{what}: attr flags {f:#x}");
    }
}

#[test]
fn without_announce_submounts_nothing_is_marked() {
    for args in [
        &[][..],
        &["--announce-submounts", "--no-announce-submounts"][..],
    ] {
        let (init, flags) = submount_flags(args);
        assert!(
            !init.contains(InitFlags::SUBMOUNTS),
            "{args:?}: INIT {init:?}"
        );
        for (what, f) in &flags {
            assert_eq!(f & ATTR_SUBMOUNT, 0, "{args:?}: {what}: attr flags {f:#x}");
        }
    }
}

#[test]
fn readonly_refuses_every_change_and_serves_reads() {
    let mut s = start_with(&["--readonly", "--xattr"], |d| {
        fs::write(d.join("f"), b"read me").unwrap();
        host_setxattr(&d.join("f"), "user.keep", b"k");
        fs::create_dir(d.join("d")).unwrap();
        fs::write(d.join("d/inner"), b"i").unwrap();
        std::os::unix::fs::symlink("f", d.join("sl")).unwrap();
    });
    let share = s.share().to_path_buf();
    let before = snapshot(&share);
    let fs = &mut s.fs;
    let f = fs.lookup(ROOT_ID, "f").unwrap();
    let d = fs.lookup(ROOT_ID, "d").unwrap();
    let rofh = fs.open(f.nodeid, libc::O_RDONLY).unwrap().fh;
    let erofs = |what: &str, errno: i32| {
        assert_eq!(errno, libc::EROFS, "{what}: errno {errno}, expected EROFS")
    };
    let attr = |a: SetAttr| a;
    for (what, a) in [
        (
            "chmod",
            attr(SetAttr {
                mode: Some(0o600),
                ..Default::default()
            }),
        ),
        (
            "chown",
            attr(SetAttr {
                uid: Some(1),
                gid: Some(1),
                ..Default::default()
            }),
        ),
        (
            "truncate",
            attr(SetAttr {
                size: Some(0),
                ..Default::default()
            }),
        ),
        (
            "utimes",
            attr(SetAttr {
                mtime: Some((1, 0)),
                ..Default::default()
            }),
        ),
    ] {
        erofs(what, errno_of(what, fs.setattr(f.nodeid, &a)));
    }
    erofs(
        "CREATE",
        errno_of(
            "CREATE",
            fs.create(ROOT_ID, "new", libc::S_IFREG | 0o644, libc::O_RDWR),
        ),
    );
    erofs(
        "MKDIR",
        errno_of("MKDIR", fs.mkdir(ROOT_ID, "newdir", 0o755)),
    );
    erofs(
        "MKNOD",
        errno_of("MKNOD", fs.mknod(ROOT_ID, "fifo", libc::S_IFIFO | 0o644, 0)),
    );
    erofs(
        "SYMLINK",
        errno_of("SYMLINK", fs.symlink(ROOT_ID, "sl2", "f")),
    );
    erofs("LINK", errno_of("LINK", fs.link(f.nodeid, ROOT_ID, "hard")));
    erofs("UNLINK", errno_of("UNLINK", fs.unlink(ROOT_ID, "f")));
    erofs("RMDIR", errno_of("RMDIR", fs.rmdir(ROOT_ID, "d")));
    erofs(
        "RENAME",
        errno_of("RENAME", fs.rename(ROOT_ID, "f", ROOT_ID, "g")),
    );
    for (what, flags) in [
        ("OPEN O_WRONLY", libc::O_WRONLY),
        ("OPEN O_RDWR", libc::O_RDWR),
        ("OPEN O_RDONLY|O_TRUNC", libc::O_RDONLY | libc::O_TRUNC),
    ] {
        erofs(what, errno_of(what, fs.open(f.nodeid, flags)));
    }
    erofs(
        "WRITE",
        errno_of("WRITE", fs.write(rofh, f.nodeid, 0, b"changed")),
    );
    erofs(
        "FALLOCATE",
        errno_of("FALLOCATE", fs.fallocate(rofh, f.nodeid, 0, 1 << 20, 0)),
    );
    erofs(
        "SETXATTR",
        errno_of("SETXATTR", fs.setxattr(f.nodeid, "user.new", b"n", 0)),
    );
    erofs(
        "REMOVEXATTR",
        errno_of("REMOVEXATTR", fs.removexattr(f.nodeid, "user.keep")),
    );

    // Reads work.
    assert_eq!(fs.read(rofh, f.nodeid, 0, 100).unwrap(), b"read me");
    fs.release(rofh, f.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(fs.getattr(f.nodeid, None).unwrap().attr.size, 7);
    assert_eq!(fs.getxattr(f.nodeid, "user.keep", 16).unwrap(), b"k");
    let sl = fs.lookup(ROOT_ID, "sl").unwrap();
    assert_eq!(fs.readlink(sl.nodeid).unwrap(), b"f");
    let inner = fs.list_dir(d.nodeid).unwrap();
    assert_eq!(
        real_names(inner.iter().map(|e| e.name())),
        [&b"inner"[..]].into()
    );
    fs.statfs(ROOT_ID).unwrap();
    assert_eq!(snapshot(&share), before, "the host share changed");
}
