//! `.` and `..` in directory listings.
//!
//! fuse-backend-rs's passthrough leaves them out of READDIR and
//! READDIRPLUS. Local filesystems and QEMU's C virtiofsd list them, and a
//! guest program that skips the first two entries of a listing would skip
//! real files. So the wrapper lists them
//! first, with stream offsets 1 (after `.`) and 2 (after `..`), and then
//! asks the passthrough from offset 0. The passthrough skips the host's
//! own dot entries there.
//!
//! An offset the guest sends back is therefore ours (0, 1 or 2) or one the
//! host gave for a real entry. A real entry's `d_off` is the position of
//! the entry after it, and no entry sits at 1 or 2 except the host's own
//! dots. On tmpfs, btrfs and overlayfs the dots come first, and real
//! entries start at 2 or later. On ext4 positions are 63-bit name hashes,
//! the dots included, and on xfs they are byte cookies past the block
//! header.
//!
//! The passthrough reads the host directory with a `getdents64` buffer the
//! size of the guest's reply. When that buffer holds only a dot entry,
//! which it skips, it answers with no entries, and the guest takes that for
//! the end of the directory. On ext4 the dots can fall anywhere in hash
//! order. So the wrapper asks for at least [`MIN_READ`] bytes. The reply
//! still holds no more than the guest asked for, and what did not fit is
//! read again from the last offset sent.
//!
//! In READDIRPLUS the dot entries carry node id 0: no lookup is counted,
//! and the kernel creates no dentry for them (as with the other daemons).

use fuse_backend_rs::abi::fuse_abi::stat64;
use fuse_backend_rs::api::filesystem::{DirEntry, Entry};

/// The smallest `getdents64` buffer the passthrough is asked to use.
pub const MIN_READ: u32 = 4096;

/// The offset of the entry after `.`.
pub const AFTER_DOT: u64 = 1;
/// The offset of the entry after `..`.
pub const AFTER_DOTDOT: u64 = 2;

/// What a listing from `offset` starts with: `.`, `..`, and the offset to
/// ask the passthrough for after them.
pub fn plan(offset: u64) -> (bool, bool, u64) {
    match offset {
        0 => (true, true, 0),
        AFTER_DOT => (false, true, 0),
        AFTER_DOTDOT => (false, false, 0),
        o => (false, false, o),
    }
}

/// The directory entry `name` (`.` or `..`) for inode number `ino`.
pub fn dirent(name: &'static [u8], ino: u64) -> DirEntry<'static> {
    DirEntry {
        ino,
        offset: if name == b"." {
            AFTER_DOT
        } else {
            AFTER_DOTDOT
        },
        type_: u32::from(libc::DT_DIR),
        name,
    }
}

/// The READDIRPLUS entry of a dot: node id 0, only the inode number and
/// type filled in.
pub fn entry(ino: u64) -> Entry {
    // SAFETY: stat64 is plain integers; all zeroes is a valid value.
    let mut attr: stat64 = unsafe { std::mem::zeroed() };
    attr.st_ino = ino;
    attr.st_mode = libc::S_IFDIR;
    Entry {
        inode: 0,
        generation: 0,
        attr,
        attr_flags: 0,
        attr_timeout: std::time::Duration::ZERO,
        entry_timeout: std::time::Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_resumes_after_each_dot_and_past_them() {
        assert_eq!(plan(0), (true, true, 0));
        assert_eq!(plan(dirent(b".", 5).offset), (false, true, 0));
        assert_eq!(plan(dirent(b"..", 5).offset), (false, false, 0));
        // A host offset goes to the passthrough unchanged.
        assert_eq!(plan(0x1234_5678_9abc), (false, false, 0x1234_5678_9abc));
        assert_eq!(plan(3), (false, false, 3));
    }

    #[test]
    fn dot_entries_are_directories_with_no_node() {
        let d = dirent(b"..", 42);
        assert_eq!(
            (d.ino, d.type_, d.name),
            (42, u32::from(libc::DT_DIR), &b".."[..])
        );
        let e = entry(42);
        assert_eq!(e.inode, 0);
        assert_eq!(e.attr.st_ino, 42);
        assert_eq!(e.attr.st_mode & libc::S_IFMT, libc::S_IFDIR);
    }
}
