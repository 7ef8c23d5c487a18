//! FUSE requests as the guest kernel lays them out (for `fs_request` and
//! its seeds).

/// `struct fuse_in_header`: 40 bytes.
pub fn in_header(len: u32, opcode: u32, unique: u64, nodeid: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(40);
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&opcode.to_le_bytes());
    h.extend_from_slice(&unique.to_le_bytes());
    h.extend_from_slice(&nodeid.to_le_bytes());
    h.extend_from_slice(&[0; 16]); // uid, gid, pid, total_extlen, padding
    h
}

/// A request: header (with the right `len`) and body.
pub fn message(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut m = in_header((40 + body.len()) as u32, opcode, unique, nodeid);
    m.extend_from_slice(body);
    m
}

/// A good INIT (protocol 7.31, no flags), unique 1, with the 64-byte
/// `fuse_init_in` the kernel sends.
pub fn init_message() -> Vec<u8> {
    let mut body = Vec::new();
    for v in [7u32, 31, 0x20000, 0] {
        body.extend_from_slice(&v.to_le_bytes());
    }
    body.resize(64, 0);
    message(26, 1, 0, &body)
}

/// Little-endian fields, then NUL-terminated names.
pub fn body(fields: &[u64], widths: &[usize], names: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    for (v, w) in fields.iter().zip(widths) {
        b.extend_from_slice(&v.to_le_bytes()[..*w]);
    }
    for n in names {
        b.extend_from_slice(n.as_bytes());
        b.push(0);
    }
    b
}

/// Once per process, for the targets that run virtiofsd over a real share:
/// files are capped at 1 MiB (an oversized write fails with EFBIG, SIGXFSZ
/// ignored) and CAP_MKNOD is dropped, so no input fills the disk or makes
/// device nodes.
pub fn setup_process() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: plain libc calls on values we own; SIGXFSZ ignored so
        // an oversized write fails with EFBIG instead of killing us.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 1 << 20,
                rlim_max: 1 << 20,
            };
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
        }
        for set in [
            caps::CapSet::Effective,
            caps::CapSet::Permitted,
            caps::CapSet::Inheritable,
        ] {
            let _ = caps::drop(None, set, caps::Capability::CAP_MKNOD);
        }
        let _ = caps::drop(None, caps::CapSet::Bounding, caps::Capability::CAP_MKNOD);
    });
}

/// The share both virtiofsd targets serve, made afresh in `dir`: a file,
/// a directory with a file, a relative symlink and an absolute one (the
/// latter pointing out of the share).
pub fn make_share(dir: &std::path::Path) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("d")).expect("share");
    std::fs::write(dir.join("f"), b"0123456789abcdef".repeat(300)).expect("file");
    std::fs::write(dir.join("d/g"), b"g\n").expect("file");
    std::os::unix::fs::symlink("f", dir.join("l")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", dir.join("out")).expect("symlink");
}
