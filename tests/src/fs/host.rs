//! Extended attributes of a host path, as the tests set and check them
//! beside what the daemon serves (`l*xattr`: a symlink itself, not its
//! target).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The largest value `getxattr(2)` can return (`XATTR_SIZE_MAX`).
const XATTR_SIZE_MAX: usize = 65536;

fn c_string(bytes: &[u8]) -> CString {
    CString::new(bytes).expect("a path or xattr name with a NUL byte")
}

/// The value of extended attribute `name` of `path` (`lgetxattr(2)`).
pub fn lgetxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let p = c_string(path.as_os_str().as_bytes());
    let n = c_string(name.as_bytes());
    let mut buf = vec![0u8; XATTR_SIZE_MAX];
    // SAFETY: both strings are NUL-terminated and outlive the call; the
    // kernel writes at most buf.len() bytes into buf, which we own.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(usize::try_from(len).unwrap());
    Ok(buf)
}

/// Sets extended attribute `name` of `path` to `value` (`lsetxattr(2)`,
/// flags 0: created or replaced).
pub fn lsetxattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = c_string(path.as_os_str().as_bytes());
    let n = c_string(name.as_bytes());
    // SAFETY: both strings are NUL-terminated and outlive the call; the
    // kernel reads value.len() bytes from value and writes no memory of ours.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
