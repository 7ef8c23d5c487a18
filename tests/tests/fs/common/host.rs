//! Host-side views of the share: snapshots to compare before and after,
//! extended attributes, special files, statvfs, a tmpfs mount, and a
//! process's descriptor limit.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use vu_driver::fixture::poll_until;
use vu_driver::process::fd_count;

use super::T;

/// One entry of a [`snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size.
    pub size: u64,
    /// Modification time (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// Link count.
    pub nlink: u64,
    /// Contents of a regular file, the target of a symlink, else empty.
    pub data: Vec<u8>,
    /// Extended attributes in the `user.` namespace (name, value).
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Every path under `dir` (relative, `""` for `dir` itself) with its
/// metadata and contents, without following symlinks; for comparing the
/// host before and after a test.
pub fn snapshot(dir: &Path) -> BTreeMap<String, HostEntry> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<String, HostEntry>) {
    let m = fs::symlink_metadata(p).unwrap();
    let ft = m.file_type();
    let data = if ft.is_file() {
        fs::read(p).unwrap()
    } else if ft.is_symlink() {
        fs::read_link(p)
            .unwrap()
            .into_os_string()
            .into_encoded_bytes()
    } else {
        Vec::new()
    };
    let xattrs = if ft.is_file() || ft.is_dir() {
        user_xattrs(p)
    } else {
        Vec::new()
    };
    let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
    out.insert(
        rel,
        HostEntry {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            size: if ft.is_dir() { 0 } else { m.size() },
            mtime: (m.mtime(), m.mtime_nsec()),
            nlink: m.nlink(),
            data,
            xattrs,
        },
    );
    if ft.is_dir() {
        let mut names: Vec<_> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for child in names {
            walk(root, &child, out);
        }
    }
}

/// The `user.*` extended attributes of `p` on the host (name, value).
pub fn user_xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut names = vec![0u8; 4096];
    // SAFETY: llistxattr writes at most names.len() bytes into `names`,
    // which we own; `c` is a NUL-terminated path.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    names.truncate(n as usize);
    names
        .split(|&b| b == 0)
        .filter(|n| n.starts_with(b"user."))
        .map(|n| {
            let name = String::from_utf8_lossy(n).into_owned();
            (name.clone(), host_getxattr(p, &name).unwrap_or_default())
        })
        .collect()
}

/// The value of extended attribute `name` of `p` on the host (None if it
/// has none).
pub fn host_getxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    vu_driver::fs::host::lgetxattr(p, name).ok()
}

/// Sets extended attribute `name` of `p` on the host.
pub fn host_setxattr(p: &Path, name: &str, value: &[u8]) {
    vu_driver::fs::host::lsetxattr(p, name, value)
        .unwrap_or_else(|e| panic!("lsetxattr {}: {e}", p.display()));
}

/// Creates a device or FIFO node on the host (`mode` with its type bits).
pub fn host_mknod(p: &Path, mode: u32, major: u32, minor: u32) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mknod reads the NUL-terminated path and writes no memory of ours.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// What changed between two [`snapshot`]s, one line per path.
pub fn snapshot_diff(
    before: &BTreeMap<String, HostEntry>,
    after: &BTreeMap<String, HostEntry>,
) -> Vec<String> {
    // A directory's mtime and link count follow its entries, which are
    // reported themselves.
    let same_dir = |a: &HostEntry, b: &HostEntry| {
        a.mode & libc::S_IFMT == libc::S_IFDIR
            && (a.mode, a.uid, a.gid, &a.xattrs) == (b.mode, b.uid, b.gid, &b.xattrs)
    };
    let mut out = Vec::new();
    for (k, v) in after {
        match before.get(k) {
            None => out.push(format!("created {k:?} (mode {:o})", v.mode)),
            Some(b) if b != v && !same_dir(b, v) => {
                out.push(format!("changed {k:?}: {b:?} -> {v:?}"))
            }
            _ => {}
        }
    }
    for k in before.keys().filter(|k| !after.contains_key(*k)) {
        out.push(format!("removed {k:?}"));
    }
    out
}

/// The host's statvfs of `p`.
pub fn host_statvfs(p: &Path) -> libc::statvfs {
    let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs is plain data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes one struct into `st`, which we own; `c` is
    // NUL-terminated.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st
}

/// A tmpfs mounted on a directory; unmounted (lazily) on drop.
pub struct TmpfsMount(PathBuf);

impl TmpfsMount {
    /// Mounts a 4 MiB tmpfs on `at` (needs CAP_SYS_ADMIN).
    pub fn new(at: &Path) -> Self {
        let src = CString::new("tmpfs").unwrap();
        let target = CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
        let data = CString::new("size=4m").unwrap();
        // SAFETY: mount(2) reads the four NUL-terminated strings, which
        // outlive the call, and writes no memory of ours.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            r,
            0,
            "mount tmpfs on {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        );
        TmpfsMount(at.to_path_buf())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let target = CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: umount2(2) reads the NUL-terminated path; MNT_DETACH
        // leaves the daemon's open descriptors valid.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The soft RLIMIT_NOFILE of `pid` from /proc.
pub fn soft_nofile(pid: u32) -> u64 {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Waits until `pid` has at most `limit` descriptors; returns the last count.
pub fn settle_fds(pid: u32, limit: usize) -> usize {
    let mut n = usize::MAX;
    poll_until(T, || {
        n = fd_count(pid).unwrap();
        n <= limit
    });
    n
}
