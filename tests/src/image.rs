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
}
