//! The names a kernel never sends, tried in every operation.

use std::fs;
use std::os::unix::fs::MetadataExt;

use fuse_backend_rs::abi::fuse_abi::ROOT_ID;
use vu_driver::fs::FsClient;

use super::{snapshot, snapshot_diff, Failures, Running};

/// Tries every name a kernel never sends (empty, `.`, `..`, names with a
/// `/`, absolute names, names longer than NAME_MAX) in every operation
/// that takes one, against the share of `run` (whose root is `fs`'s
/// ROOT_ID). Targets that would escape the share point into `run.top`,
/// where victims wait: a success shows up as a changed host, never
/// outside the test's temporary directories. Returns what was not
/// refused with an errno, including every change seen on the host.
pub fn bad_name_matrix(fs: &mut FsClient, run: &mut Running) -> Failures {
    let top = run.top.to_string_lossy().into_owned();
    let share = run.share.clone();
    fs::create_dir_all(share.join("d")).unwrap();
    fs::write(share.join("f"), b"f").unwrap();
    let ops = ["UNLINK", "RMDIR", "RENAME-from"];
    for op in ops {
        // Victims inside a subdirectory of the share and outside the share.
        for p in [
            share.join(format!("d/victim-{op}")),
            run.top.join(format!("victim-{op}")),
            run.top.join(format!("victim2-{op}")),
        ] {
            if op == "RMDIR" {
                fs::create_dir(&p).unwrap();
            } else {
                fs::write(&p, b"victim").unwrap();
            }
        }
    }
    let before = snapshot(&run.top);
    let mut bad = Failures::default();
    let root = ROOT_ID;
    let f = fs.lookup(root, "f").unwrap().nodeid;
    let long = "n".repeat(256);
    let new_names = |op: &str| {
        vec![
            String::new(),
            ".".into(),
            "..".into(),
            format!("d/new-{op}"),
            format!("../new-{op}"),
            format!("{top}/abs-{op}"),
            long.clone(),
        ]
    };
    let old_names = |op: &str| {
        vec![
            String::new(),
            ".".into(),
            "..".into(),
            format!("d/victim-{op}"),
            format!("../victim-{op}"),
            format!("{top}/victim2-{op}"),
            long.clone(),
        ]
    };
    for name in new_names("CREATE") {
        let r = fs.create(root, &name, libc::S_IFREG | 0o644, libc::O_RDWR);
        bad.expect_errno(&format!("CREATE {name:?}"), r.map(|_| ()));
    }
    for name in new_names("MKDIR") {
        bad.expect_errno(
            &format!("MKDIR {name:?}"),
            fs.mkdir(root, &name, 0o755).map(|_| ()),
        );
    }
    for name in new_names("MKNOD") {
        let r = fs.mknod(root, &name, libc::S_IFIFO | 0o644, 0);
        bad.expect_errno(&format!("MKNOD {name:?}"), r.map(|_| ()));
    }
    for name in new_names("SYMLINK") {
        let r = fs.symlink(root, &name, "f");
        bad.expect_errno(&format!("SYMLINK {name:?}"), r.map(|_| ()));
    }
    for name in new_names("LINK") {
        bad.expect_errno(
            &format!("LINK {name:?}"),
            fs.link(f, root, &name).map(|_| ()),
        );
    }
    for (i, name) in new_names("RENAME-to").into_iter().enumerate() {
        let src = format!("src-{i}");
        fs::write(share.join(&src), b"src").unwrap();
        let r = fs.rename(root, &src, root, &name);
        bad.expect_errno(&format!("RENAME {src:?} to {name:?}"), r);
        let _ = fs::remove_file(share.join(&src));
    }
    for name in old_names("UNLINK") {
        bad.expect_errno(&format!("UNLINK {name:?}"), fs.unlink(root, &name));
    }
    for name in old_names("RMDIR") {
        bad.expect_errno(&format!("RMDIR {name:?}"), fs.rmdir(root, &name));
    }
    for name in old_names("RENAME-from") {
        let r = fs.rename(root, &name, root, "renamed-here");
        bad.expect_errno(&format!("RENAME {name:?} to \"renamed-here\""), r);
        let _ = fs::remove_file(share.join("renamed-here"));
    }
    for name in [
        "",
        "d/victim-UNLINK",
        "../victim-UNLINK",
        &format!("{top}/victim2-UNLINK"),
    ] {
        bad.expect_errno(&format!("LOOKUP {name:?}"), fs.lookup(root, name));
    }
    // `.` and `..` in LOOKUP: fuse-backend-rs answers them (for NFS
    // export); the root's `..` must be the root itself.
    let share_ino = fs::metadata(&share).unwrap().ino();
    for name in [".", ".."] {
        if let Ok(e) = fs.lookup(root, name) {
            bad.check(e.attr.ino == share_ino, || {
                format!(
                    "LOOKUP {name:?} of the root: inode {} is not the share",
                    e.attr.ino
                )
            });
        }
    }
    for change in snapshot_diff(&before, &snapshot(&run.top)) {
        bad.push(format!("host: {change}"));
    }
    bad
}
