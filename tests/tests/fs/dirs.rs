//! `.` and `..` in our virtiofsd's listings: listed first with the host's
//! inode numbers, as local filesystems and QEMU's C virtiofsd list them,
//! and a listing resumed from any offset it handed out names every entry
//! exactly once (READDIR and READDIRPLUS, however small the reply buffer).

use std::fs;
use std::os::unix::fs::MetadataExt;

use crate::common::*;
use fuse_backend_rs::abi::fuse_abi::ROOT_ID;
use vu_driver::fs::FsClient;

const FILES: usize = 40;

fn populate(d: &std::path::Path) {
    fs::create_dir_all(d.join("sub/deeper")).unwrap();
    for i in 0..FILES {
        fs::write(d.join(format!("sub/file-{i}")), b"x").unwrap();
    }
}

/// Every READDIR entry of `node` in replies of `size` bytes, each call
/// resuming at the last offset: (name, ino, type).
fn walk(fs: &mut FsClient, node: u64, size: u32) -> Vec<(String, u64, u32)> {
    let fh = fs.opendir(node).unwrap().fh;
    let (mut off, mut all) = (0, Vec::new());
    loop {
        let batch = fs.readdir(fh, node, off, size).unwrap();
        let Some(last) = batch.last() else { break };
        off = last.off;
        for d in &batch {
            all.push((String::from_utf8_lossy(&d.name).into_owned(), d.ino, d.typ));
        }
        assert!(all.len() < 10 * FILES, "the listing does not end: {all:?}");
    }
    fs.releasedir(fh, node).unwrap();
    all
}

#[test]
fn dot_entries_come_first_with_the_host_inode_numbers() {
    let mut s = start_with(&[], populate);
    let share_ino = fs::metadata(&s.run.share).unwrap().ino();
    let sub_ino = fs::metadata(s.host("sub")).unwrap().ino();

    let root = walk(&mut s.fs, ROOT_ID, 4096);
    let dt_dir = u32::from(libc::DT_DIR);
    assert_eq!(root[0], (".".to_string(), share_ino, dt_dir), "{root:?}");
    // The share's root: its parent is not the guest's business.
    assert_eq!(root[1], ("..".to_string(), share_ino, dt_dir), "{root:?}");
    assert_eq!(root.len(), 3, "{root:?}");

    let sub = s.fs.lookup(ROOT_ID, "sub").unwrap().nodeid;
    let listed = walk(&mut s.fs, sub, 4096);
    assert_eq!(listed[0], (".".to_string(), sub_ino, dt_dir));
    assert_eq!(listed[1], ("..".to_string(), share_ino, dt_dir));
    assert_eq!(listed.len(), FILES + 3, "{listed:?}");
    let deeper = s.fs.lookup(sub, "deeper").unwrap().nodeid;
    let listed = walk(&mut s.fs, deeper, 4096);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].1, sub_ino, "`..` of sub/deeper is sub");
}

#[test]
fn one_entry_per_reply_lists_each_name_once() {
    let mut s = start_with(&[], populate);
    let sub = s.fs.lookup(ROOT_ID, "sub").unwrap().nodeid;
    let whole: Vec<String> = walk(&mut s.fs, sub, 4096)
        .into_iter()
        .map(|e| e.0)
        .collect();
    // 32 bytes: a dirent header and a name of up to 8 bytes, one entry.
    let stepped: Vec<String> = walk(&mut s.fs, sub, 32).into_iter().map(|e| e.0).collect();
    assert_eq!(stepped[..2], [".".to_string(), "..".to_string()]);
    assert_eq!(stepped, whole, "one entry at a time");
    let mut names = stepped.clone();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), FILES + 3, "{stepped:?}");
}

#[test]
fn readdirplus_gives_dots_no_node_and_counts_no_lookup() {
    let mut s = start_with(&[], populate);
    let sub = s.fs.lookup(ROOT_ID, "sub").unwrap().nodeid;
    let fh = s.fs.opendir(sub).unwrap().fh;
    let (mut off, mut names) = (0, Vec::new());
    loop {
        // Room for one entry plus (a name of up to 8 bytes).
        let batch = s.fs.readdirplus(fh, sub, off, 160).unwrap();
        let Some(last) = batch.last() else { break };
        assert_eq!(batch.len(), 1, "one entry fits");
        off = last.dirent.off;
        let d = &batch[0];
        let name = String::from_utf8_lossy(d.name()).into_owned();
        if name == "." || name == ".." {
            assert_eq!(d.entry.nodeid, 0, "{name}");
            assert_eq!(d.dirent.typ, u32::from(libc::DT_DIR));
        } else {
            assert_ne!(d.entry.nodeid, 0, "{name}");
            s.fs.forget(d.entry.nodeid, 1).unwrap();
        }
        names.push(name);
        assert!(names.len() < 10 * FILES, "the listing does not end");
    }
    assert_eq!(names[..2], [".".to_string(), "..".to_string()]);
    assert_eq!(names.len(), FILES + 3, "{names:?}");
    // Rewound, the listing starts with the dots again.
    let again = s.fs.readdirplus(fh, sub, 0, 4096).unwrap();
    assert_eq!(again[0].name(), b".");
    for d in again.iter().filter(|d| d.entry.nodeid != 0) {
        s.fs.forget(d.entry.nodeid, 1).unwrap();
    }
    s.fs.releasedir(fh, sub).unwrap();
    s.fs.wait_forgets().unwrap();
    // The daemon still serves the directory.
    assert_eq!(s.fs.lookup(sub, "file-7").unwrap().attr.size, 1);
}
