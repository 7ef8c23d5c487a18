//! The system calls fuse-backend-rs's passthrough file system makes while
//! serving FUSE requests, on top of `common::seccomp::VHOST_USER_BASE`.
//! Modelled on the Rust virtiofsd's allow-list (src/seccomp.rs), checked by
//! serving every FUSE operation our driver speaks under `--seccomp kill`.
//!
//! Install both lists together, last in the sandbox setup:
//!
//! ```ignore
//! let mut allowed = common::seccomp::VHOST_USER_BASE.to_vec();
//! allowed.extend_from_slice(seccomp_fs::VIRTIOFSD);
//! common::seccomp::apply(action, &allowed, common::seccomp::VHOST_USER_IOCTLS)?;
//! ```
//!
//! Deliberately absent: `unshare` (the Rust virtiofsd allows it for a
//! per-thread umask, which fuse-backend-rs does not use; with it a
//! compromised daemon could create a user namespace), `setgroups`, and
//! `ioctl` beyond the base requests (fuse-backend-rs answers FUSE_IOCTL
//! with ENOSYS).

/// Additional system calls for `virtiofsd`, grouped by what the
/// passthrough file system does with them. `openat`, `newfstatat`,
/// `statx`, `fstat`, `lseek`, `fcntl` (OFD locks, dup), `dup`, `close`,
/// `read`/`write`/`readv`/`writev` come with the base list.
pub const VIRTIOFSD: &[i64] = &[
    // Looking up and opening inodes: O_PATH descriptors, re-opening them
    // through /proc/self/fd, file handles (--inode-file-handles), mount ids
    // for submounts.
    libc::SYS_openat2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
    libc::SYS_name_to_handle_at,
    libc::SYS_open_by_handle_at,
    libc::SYS_readlinkat,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    // Directories: READDIR / READDIRPLUS.
    libc::SYS_getdents64,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_getdents,
    // Creating, linking, renaming and removing entries.
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_symlinkat,
    libc::SYS_linkat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    // Attributes: SETATTR (mode, owner, size, times), FALLOCATE.
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_utimensat,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    // Data: READ and WRITE between files and guest memory, COPY_FILE_RANGE,
    // LSEEK (SEEK_DATA/SEEK_HOLE).
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_preadv2,
    libc::SYS_pwritev2,
    libc::SYS_copy_file_range,
    // Durability and locks: FSYNC, FSYNCDIR, FLUSH, SYNCFS, FLOCK (OFD
    // locks are fcntl, in the base list).
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_syncfs,
    libc::SYS_flock,
    // Extended attributes: on open files, and through /proc/self/fd/N
    // paths for O_PATH descriptors (the plain and l* variants).
    libc::SYS_fgetxattr,
    libc::SYS_fsetxattr,
    libc::SYS_flistxattr,
    libc::SYS_fremovexattr,
    libc::SYS_getxattr,
    libc::SYS_setxattr,
    libc::SYS_listxattr,
    libc::SYS_removexattr,
    libc::SYS_lgetxattr,
    libc::SYS_lsetxattr,
    libc::SYS_llistxattr,
    libc::SYS_lremovexattr,
    // Credentials: each request runs with the guest's uid and gid, set on
    // the calling thread only with the raw system calls (not glibc's
    // process-wide setresuid); CAP_FSETID is dropped and raised around
    // writes (capget/capset); the umask is cleared once at start.
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
    libc::SYS_capget,
    libc::SYS_capset,
    libc::SYS_umask,
];
