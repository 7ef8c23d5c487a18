//! Just enough AML (ACPI Machine Language) for the DSDT: names, integers,
//! EISA ids, scopes, devices, and `_CRS` resource templates with bus-number,
//! I/O and memory address-space descriptors.

/// `PkgLength` for a body of `len` bytes: the encoding counts itself.
pub fn pkg_length(len: usize) -> Vec<u8> {
    // One byte holds up to 63; then 4 bits in the lead byte and 8 per extra byte.
    for extra in 0..4usize {
        let total = len + 1 + extra;
        let fits = if extra == 0 {
            total < 0x40
        } else {
            total < 1 << (4 + 8 * extra)
        };
        if fits {
            if extra == 0 {
                return vec![total as u8];
            }
            let mut out = vec![((extra as u8) << 6) | (total & 0xf) as u8];
            for i in 0..extra {
                out.push((total >> (4 + 8 * i)) as u8);
            }
            return out;
        }
    }
    // 2^28 bytes of AML: far beyond anything built here.
    vec![0xff, 0xff, 0xff, 0xff]
}

/// An integer with the smallest encoding.
pub fn integer(v: u64) -> Vec<u8> {
    match v {
        0 => vec![0x00],
        1 => vec![0x01],
        2..=0xff => vec![0x0a, v as u8],
        0x100..=0xffff => {
            let mut b = vec![0x0b];
            b.extend_from_slice(&(v as u16).to_le_bytes());
            b
        }
        0x1_0000..=0xffff_ffff => {
            let mut b = vec![0x0c];
            b.extend_from_slice(&(v as u32).to_le_bytes());
            b
        }
        _ => {
            let mut b = vec![0x0e];
            b.extend_from_slice(&v.to_le_bytes());
            b
        }
    }
}

/// The compressed EISA id of `id` (e.g. `PNP0A08`) as a DWord integer.
pub fn eisa_id(id: &[u8; 7]) -> Vec<u8> {
    let c = |b: u8| u32::from(b.wrapping_sub(b'@') & 0x1f);
    let hex = |b: u8| u32::from(char::from(b).to_digit(16).unwrap_or(0) as u8);
    let v: u32 = (c(id[0]) << 26)
        | (c(id[1]) << 21)
        | (c(id[2]) << 16)
        | (hex(id[3]) << 12)
        | (hex(id[4]) << 8)
        | (hex(id[5]) << 4)
        | hex(id[6]);
    // Stored big-endian: the bytes read "PNP" first.
    let mut b = vec![0x0c];
    b.extend_from_slice(&v.to_be_bytes());
    b
}

/// `Name (seg, value)`; `seg` is a 4-character name segment.
pub fn name(seg: &[u8; 4], value: &[u8]) -> Vec<u8> {
    let mut b = vec![0x08];
    b.extend_from_slice(seg);
    b.extend_from_slice(value);
    b
}

fn with_pkg(prefix: &[u8], name: &[u8], body: &[u8]) -> Vec<u8> {
    let mut b = prefix.to_vec();
    let inner = name.len() + body.len();
    b.extend(pkg_length(inner));
    b.extend_from_slice(name);
    b.extend_from_slice(body);
    b
}

/// `Scope (path) { body }`; `path` is a name string such as `\_SB_`.
pub fn scope(path: &[u8], body: &[u8]) -> Vec<u8> {
    with_pkg(&[0x10], path, body)
}

/// `Device (seg) { body }`.
pub fn device(seg: &[u8; 4], body: &[u8]) -> Vec<u8> {
    with_pkg(&[0x5b, 0x82], seg, body)
}

/// `Buffer () { bytes }`.
pub fn buffer(bytes: &[u8]) -> Vec<u8> {
    let mut body = integer(bytes.len() as u64);
    body.extend_from_slice(bytes);
    with_pkg(&[0x11], &[], &body)
}

/// A resource template: the descriptors, an end tag, as a buffer.
pub fn resource_template(descriptors: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes: Vec<u8> = descriptors.concat();
    bytes.extend_from_slice(&[0x79, 0x00]); // end tag, checksum 0 = ignore
    buffer(&bytes)
}

/// General flags of the address-space descriptors: producer, fixed
/// minimum and maximum, positive decode.
const ADDR_FLAGS_FIXED: u8 = 0x0c;

/// `WordBusNumber (ResourceProducer, MinFixed, MaxFixed, , 0, min, max, 0, n)`.
pub fn word_bus_number(min: u16, max: u16) -> Vec<u8> {
    word_address(2, 0, min, max)
}

/// `WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, ..)`.
pub fn word_io(min: u16, max: u16) -> Vec<u8> {
    word_address(1, 0x03, min, max)
}

fn word_address(kind: u8, type_flags: u8, min: u16, max: u16) -> Vec<u8> {
    let mut b = vec![0x88, 13, 0, kind, ADDR_FLAGS_FIXED, type_flags];
    for v in [0, min, max, 0, max.wrapping_sub(min).wrapping_add(1)] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// `IO (Decode16, base, base, 1, len)`.
pub fn io(base: u16, len: u8) -> Vec<u8> {
    let mut b = vec![0x47, 0x01];
    b.extend_from_slice(&base.to_le_bytes());
    b.extend_from_slice(&base.to_le_bytes());
    b.extend_from_slice(&[1, len]);
    b
}

/// `IRQNoFlags () {irq}`: an edge-triggered, active-high ISA interrupt.
pub fn irq_no_flags(irq: u8) -> Vec<u8> {
    let mask = 1u16 << (irq & 15);
    let mut b = vec![0x22];
    b.extend_from_slice(&mask.to_le_bytes());
    b
}

/// Type-specific flags of the memory windows: read-write, non-cacheable.
const MEM_FLAGS_RW: u8 = 0x01;

/// `DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed,
/// NonCacheable, ReadWrite, 0, base, base + len - 1, 0, len)`.
pub fn dword_memory(base: u32, len: u32) -> Vec<u8> {
    let mut b = vec![0x87, 23, 0, 0, ADDR_FLAGS_FIXED, MEM_FLAGS_RW];
    let max = base.wrapping_add(len).wrapping_sub(1);
    for v in [0, base, max, 0, len] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

/// `QWordMemory (...)`, as [`dword_memory`].
pub fn qword_memory(base: u64, len: u64) -> Vec<u8> {
    let mut b = vec![0x8a, 43, 0, 0, ADDR_FLAGS_FIXED, MEM_FLAGS_RW];
    let max = base.wrapping_add(len).wrapping_sub(1);
    for v in [0, base, max, 0, len] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_encodings() {
        assert_eq!(pkg_length(0), vec![1]);
        assert_eq!(pkg_length(62), vec![63]);
        // 63 + 2 = 65 = 0x41: lead 0x41 (one extra byte, low nibble 1), then 0x04.
        assert_eq!(pkg_length(63), vec![0x41, 0x04]);
        assert_eq!(pkg_length(0x1000), vec![0x83, 0x00, 0x01]);
        for len in [0, 62, 63, 4000, 4093, 4094, 0x10_0000] {
            let enc = pkg_length(len);
            let extra = usize::from(enc[0] >> 6);
            assert_eq!(enc.len(), extra + 1);
            let mut total = if extra == 0 {
                usize::from(enc[0] & 0x3f)
            } else {
                usize::from(enc[0] & 0xf)
            };
            for (i, b) in enc[1..].iter().enumerate() {
                total |= usize::from(*b) << (4 + 8 * i);
            }
            assert_eq!(total, len + enc.len(), "{len}");
        }
    }

    #[test]
    fn integers_and_eisa_ids() {
        assert_eq!(integer(0), [0]);
        assert_eq!(integer(1), [1]);
        assert_eq!(integer(0xff), [0x0a, 0xff]);
        assert_eq!(integer(0x100), [0x0b, 0, 1]);
        assert_eq!(integer(0x1_0000), [0x0c, 0, 0, 1, 0]);
        assert_eq!(integer(1 << 32).len(), 9);
        // As iasl compiles EisaId ("PNP0A08") and EisaId ("PNP0A03").
        assert_eq!(eisa_id(b"PNP0A08"), [0x0c, 0x41, 0xd0, 0x0a, 0x08]);
        assert_eq!(eisa_id(b"PNP0A03"), [0x0c, 0x41, 0xd0, 0x0a, 0x03]);
    }

    #[test]
    fn descriptor_lengths() {
        assert_eq!(word_bus_number(0, 255).len(), 16);
        assert_eq!(word_io(0, 0xcf7)[14..16], 0xcf8u16.to_le_bytes());
        assert_eq!(io(0xcf8, 8), [0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]);
        assert_eq!(dword_memory(0xc000_0000, 0x2000_0000).len(), 26);
        let q = qword_memory(1 << 32, 1 << 36);
        assert_eq!(q.len(), 46);
        assert_eq!(q[22..30], ((1u64 << 32) + (1 << 36) - 1).to_le_bytes());
        let t = resource_template(&[io(0xcf8, 8)]);
        assert_eq!(t[0], 0x11);
        assert_eq!(&t[t.len() - 2..], [0x79, 0]);
    }
}
