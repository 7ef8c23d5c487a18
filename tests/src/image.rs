//! Host-side contents of a disk image: deterministic test bytes, and
//! writing them at an offset (to prepare an image before it is served).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// `len` deterministic bytes for `seed` (an xorshift stream) that differ
/// from sector to sector and from seed to seed.
pub fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// Writes `data` at byte `offset` of the existing file `path`; panics
/// naming the file if it cannot.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.write_all_at(data, offset))
        .unwrap_or_else(|e| panic!("write {} at {offset}: {e}", path.display()));
}

/// The hex digest of `data` by the host's `tool` (`sha256sum`, `md5sum`),
/// which reads it on stdin: the same program the guest's scripts use.
pub fn digest_hex(tool: &str, data: &[u8]) -> std::io::Result<String> {
    use std::io::{Error, Write};
    use std::process::{Command, Stdio};
    let mut child = Command::new(tool)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(e.kind(), format!("{tool}: {e}")))?;
    // The tool reads all its input before it writes anything.
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(data)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(Error::other(format!("{tool}: {}", out.status)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let word = text.split_whitespace().next().unwrap_or_default();
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::other(format!("{tool} printed {text:?}")));
    }
    Ok(word.to_string())
}

/// [`digest_hex`] with `sha256sum`.
pub fn sha256_hex(data: &[u8]) -> std::io::Result<String> {
    digest_hex("sha256sum", data)
}

/// What a guest's `seq START 999999999 | head -c LEN` prints: data a guest
/// makes in user mode (natively fast even where its kernel is emulated)
/// and the host can compute.
pub fn seq_from(start: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    let mut n = start;
    while out.len() < len {
        out.extend_from_slice(format!("{n}\n").as_bytes());
        n += 1;
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::TempDir;

    #[test]
    fn patterns_are_deterministic_and_written_where_asked() {
        assert_eq!(pattern(7, 4096), pattern(7, 4096));
        assert_ne!(pattern(7, 512), pattern(8, 512));
        let dir = TempDir::new("vutest-image").unwrap();
        let path = dir.join("img");
        std::fs::write(&path, [0u8; 16]).unwrap();
        write_at(&path, 4, &pattern(1, 4));
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[4..8], pattern(1, 4).as_slice());
        assert_eq!(back.len(), 16);
    }

    #[test]
    fn digests_come_from_the_host_tool() {
        assert_eq!(
            sha256_hex(b"abc").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            digest_hex("md5sum", b"").unwrap(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        let err = digest_hex("no-such-digest-tool", b"x").unwrap_err();
        assert!(err.to_string().contains("no-such-digest-tool"), "{err}");
    }

    #[test]
    fn seq_from_is_what_seq_prints() {
        assert_eq!(seq_from(8, 6), b"8\n9\n10");
        assert_eq!(seq_from(1, 1 << 20).len(), 1 << 20);
    }
}
