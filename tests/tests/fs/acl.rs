//! Extended attributes (`--xattr`: every xattr request against the host;
//! refused without it) and `virtiofsd --posix-acl`: FUSE_POSIX_ACL and FUSE_DONT_MASK are
//! negotiated, ACLs travel as `system.posix_acl_*` xattrs, and a new entry
//! in a directory with a default ACL gets the ACL's permissions instead of
//! the umask, as on a local filesystem (the guest kernel leaves the umask
//! to us once DONT_MASK is on).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::*;
use fuse_backend_rs::abi::fuse_abi::{FsOptions as InitFlags, ROOT_ID};
use vu_driver::fs::FsOptions;

const ACL_USER_OBJ: u16 = 0x01;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_OTHER: u16 = 0x20;

/// A minimal ACL in the kernel's xattr format (version 2, then
/// `{tag, perm, id}` entries).
fn acl(user: u16, group: u16, other: u16) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [
        (ACL_USER_OBJ, user),
        (ACL_GROUP_OBJ, group),
        (ACL_OTHER, other),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&u32::MAX.to_le_bytes());
    }
    v
}

fn mode_of(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn acl_options() -> FsOptions {
    let mut o = FsOptions::default();
    o.init_flags |= InitFlags::POSIX_ACL | InitFlags::DONT_MASK;
    o
}

/// A share with `inherit/` carrying a default ACL rwx/rwx/r-x and `plain/`
/// with none.
fn share_with_default_acl(d: &Path) {
    std::fs::create_dir(d.join("inherit")).unwrap();
    std::fs::create_dir(d.join("plain")).unwrap();
    host_setxattr(
        &d.join("inherit"),
        "system.posix_acl_default",
        &acl(7, 7, 5),
    );
}

#[test]
fn posix_acl_and_dont_mask_are_negotiated_only_with_the_option() {
    for (args, want) in [(&["--posix-acl"][..], true), (&["--xattr"][..], false)] {
        let run = run(args);
        let fs = connect(&run, acl_options());
        let flags = fs.session().unwrap().flags;
        assert_eq!(
            flags.contains(InitFlags::POSIX_ACL | InitFlags::DONT_MASK),
            want,
            "{args:?}: {flags:?}"
        );
    }
}

#[test]
fn a_default_acl_replaces_the_umask_and_plain_directories_keep_it() {
    default_acl_in(&["--posix-acl"]);
}

#[test]
fn a_default_acl_replaces_the_umask_in_the_sandbox_under_seccomp() {
    default_acl_in(&["--posix-acl", "--sandbox", "namespace", "--seccomp", "kill"]);
}

fn default_acl_in(args: &[&str]) {
    let run = run_with(args, share_with_default_acl);
    let mut fs = connect(&run, acl_options());
    let inherit = fs.lookup(ROOT_ID, "inherit").unwrap().nodeid;
    let plain = fs.lookup(ROOT_ID, "plain").unwrap().nodeid;

    fs.create_umask(inherit, "f", 0o666, 0o022).unwrap();
    fs.mkdir_umask(inherit, "d", 0o777, 0o022).unwrap();
    fs.create_umask(plain, "f", 0o666, 0o022).unwrap();
    fs.mkdir_umask(plain, "d", 0o777, 0o022).unwrap();

    // The default ACL (group rwx, other r-x) bounds the mode; the umask's
    // group-write bit is not applied.
    assert_eq!(mode_of(&run.share.join("inherit/f")), 0o664);
    assert_eq!(mode_of(&run.share.join("inherit/d")), 0o775);
    // The new directory inherits the default ACL itself.
    assert_eq!(
        host_getxattr(&run.share.join("inherit/d"), "system.posix_acl_default"),
        Some(acl(7, 7, 5))
    );
    // No default ACL: the umask applies.
    assert_eq!(mode_of(&run.share.join("plain/f")), 0o644);
    assert_eq!(mode_of(&run.share.join("plain/d")), 0o755);
}

/// An extended ACL (a named user and a mask), which the host keeps as an
/// xattr (a minimal one is folded into the mode bits).
fn extended_acl() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (ACL_USER_OBJ, 6u16, u32::MAX),
        (0x02, 6, 1000), // ACL_USER 1000
        (ACL_GROUP_OBJ, 4, u32::MAX),
        (0x10, 6, u32::MAX), // ACL_MASK
        (ACL_OTHER, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn access_acls_cross_as_xattrs() {
    let run = run_with(&["--posix-acl"], |d| {
        std::fs::write(d.join("f"), b"x").unwrap();
        std::fs::set_permissions(d.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
    });
    let mut fs = connect(&run, acl_options());
    let f = fs.lookup(ROOT_ID, "f").unwrap().nodeid;
    // Set through the daemon: the host file's mode follows the ACL.
    fs.setxattr(f, "system.posix_acl_access", &extended_acl(), 0)
        .unwrap();
    // The group bits show the mask, as with setfacl on the host.
    assert_eq!(mode_of(&run.share.join("f")), 0o660);
    assert_eq!(
        host_getxattr(&run.share.join("f"), "system.posix_acl_access"),
        Some(extended_acl())
    );
    // Read back through the daemon.
    let size = fs.getxattr_size(f, "system.posix_acl_access").unwrap();
    assert_eq!(
        fs.getxattr(f, "system.posix_acl_access", size).unwrap(),
        extended_acl()
    );
    // A minimal ACL is folded into the mode.
    fs.setxattr(f, "system.posix_acl_access", &acl(6, 4, 0), 0)
        .unwrap();
    assert_eq!(mode_of(&run.share.join("f")), 0o640);
}

#[test]
fn posix_acl_implies_xattr_also_in_the_legacy_form() {
    for args in [&["--posix-acl"][..], &["-o", "posix_acl"]] {
        let run = run_with(args, |d| std::fs::write(d.join("f"), b"x").unwrap());
        let mut fs = connect(&run, acl_options());
        let f = fs.lookup(ROOT_ID, "f").unwrap().nodeid;
        fs.setxattr(f, "user.k", b"v", 0).unwrap();
        assert_eq!(host_getxattr(&run.share.join("f"), "user.k").unwrap(), b"v");
        assert!(fs.session().unwrap().flags.contains(InitFlags::POSIX_ACL));
    }
}

#[test]
fn without_the_option_the_umask_always_applies() {
    let run = run_with(&["--xattr"], share_with_default_acl);
    let mut fs = connect(&run, FsOptions::default());
    let inherit = fs.lookup(ROOT_ID, "inherit").unwrap().nodeid;
    fs.create_umask(inherit, "f", 0o666, 0o022).unwrap();
    assert_eq!(mode_of(&run.share.join("inherit/f")), 0o644);
}

#[test]
fn xattrs_with_the_xattr_option() {
    let mut s = start_with(&["--xattr"], |d| fs::write(d.join("f"), b"x").unwrap());
    let host = s.host("f");
    let fs = &mut s.fs;
    let e = fs.lookup(ROOT_ID, "f").unwrap();
    fs.setxattr(e.nodeid, "user.color", b"blue", 0).unwrap();
    assert_eq!(host_getxattr(&host, "user.color").unwrap(), b"blue");
    assert_eq!(fs.getxattr_size(e.nodeid, "user.color").unwrap(), 4);
    assert_eq!(fs.getxattr(e.nodeid, "user.color", 64).unwrap(), b"blue");
    assert_errno(
        "GETXATTR small buffer",
        fs.getxattr(e.nodeid, "user.color", 2),
        libc::ERANGE,
    );
    host_setxattr(&host, "user.from-host", b"h");
    let size = fs.listxattr_size(e.nodeid).unwrap();
    let names = fs.listxattr(e.nodeid, size).unwrap();
    for n in [&b"user.color"[..], b"user.from-host"] {
        assert!(names.iter().any(|x| x == n), "{names:?}");
    }
    assert_errno(
        "SETXATTR XATTR_CREATE of an existing name",
        fs.setxattr(e.nodeid, "user.color", b"red", libc::XATTR_CREATE),
        libc::EEXIST,
    );
    fs.setxattr(e.nodeid, "user.color", b"red", libc::XATTR_REPLACE)
        .unwrap();
    assert_eq!(host_getxattr(&host, "user.color").unwrap(), b"red");
    fs.removexattr(e.nodeid, "user.color").unwrap();
    assert!(host_getxattr(&host, "user.color").is_none());
    assert_errno(
        "GETXATTR removed",
        fs.getxattr(e.nodeid, "user.color", 64),
        libc::ENODATA,
    );
    assert_errno(
        "REMOVEXATTR missing",
        fs.removexattr(e.nodeid, "user.color"),
        libc::ENODATA,
    );
    // On a directory too.
    fs.setxattr(ROOT_ID, "user.dir", b"d", 0).unwrap();
    assert_eq!(host_getxattr(&s.run.share, "user.dir").unwrap(), b"d");
}

#[test]
fn xattrs_are_refused_without_the_xattr_option() {
    let mut s = start_with(&[], |d| {
        fs::write(d.join("f"), b"x").unwrap();
        host_setxattr(&d.join("f"), "user.old", b"o");
    });
    let host = s.host("f");
    let fs = &mut s.fs;
    let e = fs.lookup(ROOT_ID, "f").unwrap();
    let refused = |what: &str, errno: i32| {
        assert!(
            errno == libc::ENOSYS || errno == libc::EOPNOTSUPP,
            "{what}: errno {errno}"
        )
    };
    refused(
        "SETXATTR",
        errno_of("SETXATTR", fs.setxattr(e.nodeid, "user.a", b"1", 0)),
    );
    refused(
        "GETXATTR",
        errno_of("GETXATTR", fs.getxattr(e.nodeid, "user.old", 64)),
    );
    refused(
        "LISTXATTR",
        errno_of("LISTXATTR", fs.listxattr(e.nodeid, 4096)),
    );
    refused(
        "REMOVEXATTR",
        errno_of("REMOVEXATTR", fs.removexattr(e.nodeid, "user.old")),
    );
    assert_eq!(
        user_xattrs(&host),
        vec![("user.old".to_string(), b"o".to_vec())]
    );
}
