//! FUSE wire format: request encoding and reply parsing, with no I/O.
//!
//! The structs are fuse-backend-rs's (`fuse_abi`), which match Linux's
//! `fuse.h`; this module only lays them out in a request and takes them out
//! of a reply.

use fuse_backend_rs::abi::fuse_abi::{Dirent, Direntplus, EntryOut, InHeader, Opcode, OutHeader};
use vm_memory::ByteValued;

use super::FsError;

/// Size of `struct fuse_in_header`.
pub const IN_HEADER_LEN: usize = std::mem::size_of::<InHeader>();
/// Size of `struct fuse_out_header`.
pub const OUT_HEADER_LEN: usize = std::mem::size_of::<OutHeader>();
/// Size of `struct fuse_dirent` without its name.
pub const DIRENT_LEN: usize = std::mem::size_of::<Dirent>();
/// Size of `struct fuse_direntplus` without its name.
pub const DIRENTPLUS_LEN: usize = std::mem::size_of::<Direntplus>();
/// The name limit this driver enforces on typed requests (Linux's NAME_MAX is 255;
/// longer names go through the raw API).
pub const MAX_NAME: usize = 1024;

/// The caller identity put in every request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creds {
    /// `fuse_in_header.uid`.
    pub uid: u32,
    /// `fuse_in_header.gid`.
    pub gid: u32,
    /// `fuse_in_header.pid`.
    pub pid: u32,
}

/// The fixed part of a request: opcode, node, argument structs and names.
/// The payload (WRITE data) travels separately.
#[derive(Debug, Clone)]
pub struct Request {
    /// FUSE opcode.
    pub opcode: u32,
    /// `fuse_in_header.nodeid`.
    pub nodeid: u64,
    /// Argument bytes after the header (structs, then NUL-terminated names).
    pub args: Vec<u8>,
    /// The op's name for messages.
    pub op: &'static str,
}

impl Request {
    /// A request with no arguments yet.
    pub fn new(op: &'static str, opcode: Opcode, nodeid: u64) -> Self {
        Request {
            opcode: opcode as u32,
            nodeid,
            args: Vec::new(),
            op,
        }
    }

    /// Appends an argument struct.
    pub fn arg<T: ByteValued>(mut self, val: &T) -> Self {
        self.args.extend_from_slice(val.as_slice());
        self
    }

    /// Appends a NUL-terminated name. A name with a NUL inside or longer
    /// than [`MAX_NAME`] is refused (use the raw API to send one).
    pub fn name(mut self, name: &[u8]) -> Result<Self, FsError> {
        if name.contains(&0) || name.len() > MAX_NAME {
            return Err(FsError::BadName {
                op: self.op,
                name: String::from_utf8_lossy(name).into_owned(),
            });
        }
        self.args.extend_from_slice(name);
        self.args.push(0);
        Ok(self)
    }

    /// The header plus arguments, with `fuse_in_header.len` counting
    /// `payload_len` more bytes that follow.
    pub fn encode(&self, unique: u64, creds: Creds, payload_len: usize) -> Vec<u8> {
        let total = IN_HEADER_LEN + self.args.len() + payload_len;
        let hdr = InHeader {
            len: u32::try_from(total).unwrap_or(u32::MAX),
            opcode: self.opcode,
            unique,
            nodeid: self.nodeid,
            uid: creds.uid,
            gid: creds.gid,
            pid: creds.pid,
            padding: 0,
        };
        let mut v = Vec::with_capacity(IN_HEADER_LEN + self.args.len());
        v.extend_from_slice(hdr.as_slice());
        v.extend_from_slice(&self.args);
        v
    }
}

/// Reads a `T` from the start of `buf`, if it is long enough.
pub fn read_struct<T: ByteValued + Default>(buf: &[u8]) -> Option<T> {
    let mut v = T::default();
    let n = std::mem::size_of::<T>();
    v.as_mut_slice().copy_from_slice(buf.get(..n)?);
    Some(v)
}

/// Reads a `T` from the start of `buf`, zero-filling the fields past its end
/// (for structs that grew over protocol versions, like `fuse_init_out`).
pub fn read_prefix<T: ByteValued + Default>(buf: &[u8]) -> T {
    let mut v = T::default();
    let dst = v.as_mut_slice();
    let n = dst.len().min(buf.len());
    dst[..n].copy_from_slice(&buf[..n]);
    v
}

/// Checks a reply (`buf` is what the device wrote) and returns its body.
///
/// A negative `error` becomes [`FsError::Errno`]; a reply shorter than the
/// header, a `len` that disagrees with the bytes written, a foreign
/// `unique` or an out-of-range `error` become [`FsError::BadReply`].
pub fn parse_reply<'a>(op: &'static str, unique: u64, buf: &'a [u8]) -> Result<&'a [u8], FsError> {
    check_header(
        op,
        unique,
        buf.get(..OUT_HEADER_LEN).unwrap_or(buf),
        buf.len(),
    )?;
    Ok(&buf[OUT_HEADER_LEN..])
}

/// Checks the `fuse_out_header` at the start of `hdr` of a reply for which
/// the device reported `written` bytes in all (see [`parse_reply`]).
pub fn check_header(
    op: &'static str,
    unique: u64,
    hdr: &[u8],
    written: usize,
) -> Result<(), FsError> {
    let bad = |reason: String| FsError::BadReply { op, reason };
    let hdr: OutHeader = read_struct(hdr)
        .filter(|_| written >= OUT_HEADER_LEN)
        .ok_or_else(|| {
            bad(format!(
                "{written} bytes written, shorter than fuse_out_header"
            ))
        })?;
    if hdr.unique != unique {
        return Err(bad(format!(
            "unique {} does not match the request's {unique}",
            hdr.unique
        )));
    }
    if hdr.len as usize != written {
        return Err(bad(format!(
            "out_header.len {} but {written} bytes written",
            hdr.len
        )));
    }
    if hdr.error != 0 {
        if !(-4095..0).contains(&hdr.error) {
            return Err(bad(format!("error field {} is not a -errno", hdr.error)));
        }
        return Err(FsError::Errno {
            op,
            errno: -hdr.error,
        });
    }
    Ok(())
}

/// Takes a fixed-size reply struct out of a body.
pub fn body_struct<T: ByteValued + Default>(op: &'static str, body: &[u8]) -> Result<T, FsError> {
    read_struct(body).ok_or_else(|| FsError::BadReply {
        op,
        reason: format!(
            "body of {} bytes, {} expected",
            body.len(),
            std::mem::size_of::<T>()
        ),
    })
}

/// Rounds a dirent's size up to 8 bytes (`FUSE_DIRENT_ALIGN`).
pub fn dirent_align(len: usize) -> usize {
    (len + 7) & !7
}

/// One entry of a READDIR reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode number.
    pub ino: u64,
    /// Offset to pass to continue after this entry.
    pub off: u64,
    /// `DT_*` type.
    pub typ: u32,
    /// Name bytes.
    pub name: Vec<u8>,
}

/// One entry of a READDIRPLUS reply.
#[derive(Debug, Clone)]
pub struct DirEntryPlus {
    /// The dirent part.
    pub dirent: DirEntry,
    /// The lookup result (node id 0 for entries the server did not look up,
    /// such as `.` and `..`).
    pub entry: EntryOut,
}

impl DirEntryPlus {
    /// The name as bytes.
    pub fn name(&self) -> &[u8] {
        &self.dirent.name
    }

    /// The entry named `name` in `list`; panics naming it and the list if
    /// there is none (for tests).
    pub fn find<'a>(list: &'a [DirEntryPlus], name: &[u8]) -> &'a DirEntryPlus {
        list.iter()
            .find(|d| d.name() == name)
            .unwrap_or_else(|| panic!("{} not listed in {list:?}", String::from_utf8_lossy(name)))
    }
}

/// Walks a READDIR or READDIRPLUS body: records of a fixed part `T`
/// (named `what` in errors) holding a [`Dirent`] that `dirent` picks, each
/// followed by the name and padded to 8 bytes; `entry` makes each record's
/// entry from its fixed part and its [`DirEntry`].
fn parse_records<T: ByteValued + Default, E>(
    buf: &[u8],
    what: &str,
    dirent: fn(&T) -> &Dirent,
    entry: fn(&T, DirEntry) -> E,
) -> Result<Vec<E>, String> {
    let fixed = std::mem::size_of::<T>();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let rec: T = read_struct(&buf[pos..])
            .ok_or_else(|| format!("truncated {what} at {pos} of {}", buf.len()))?;
        let d = dirent(&rec);
        let at = pos + fixed;
        let namelen = d.namelen as usize;
        let end = at
            .checked_add(namelen)
            .filter(|&e| e <= buf.len())
            .ok_or_else(|| format!("name of {namelen} bytes at {at} runs past {}", buf.len()))?;
        let plain = DirEntry {
            ino: d.ino,
            off: d.off,
            typ: d.type_,
            name: buf[at..end].to_vec(),
        };
        out.push(entry(&rec, plain));
        pos += dirent_align(fixed + namelen);
    }
    Ok(out)
}

/// Parses a READDIR reply body.
pub fn parse_dirents(buf: &[u8]) -> Result<Vec<DirEntry>, String> {
    parse_records(buf, "dirent", |d: &Dirent| d, |_, e| e)
}

/// Parses a READDIRPLUS reply body.
pub fn parse_direntplus(buf: &[u8]) -> Result<Vec<DirEntryPlus>, String> {
    parse_records(
        buf,
        "direntplus",
        |d: &Direntplus| &d.dirent,
        |d, dirent| DirEntryPlus {
            dirent,
            entry: d.entry_out,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuse_backend_rs::abi::fuse_abi::{Attr, MkdirIn, RenameIn};

    const CREDS: Creds = Creds {
        uid: 1,
        gid: 2,
        pid: 3,
    };

    fn reply(unique: u64, error: i32, body: &[u8]) -> Vec<u8> {
        let hdr = OutHeader {
            len: (OUT_HEADER_LEN + body.len()) as u32,
            error,
            unique,
        };
        let mut v = hdr.as_slice().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn abi_sizes_match_linux_fuse_h() {
        assert_eq!(IN_HEADER_LEN, 40);
        assert_eq!(OUT_HEADER_LEN, 16);
        assert_eq!(DIRENT_LEN, 24);
        assert_eq!(DIRENTPLUS_LEN, 152);
        assert_eq!(std::mem::size_of::<EntryOut>(), 128);
    }

    #[test]
    fn request_encodes_header_args_and_names() {
        let req = Request::new("RENAME", Opcode::Rename, 7)
            .arg(&RenameIn { newdir: 9 })
            .name(b"old")
            .unwrap()
            .name(b"new")
            .unwrap();
        let bytes = req.encode(42, CREDS, 0);
        assert_eq!(bytes.len(), 40 + 8 + 4 + 4);
        let hdr: InHeader = read_struct(&bytes).unwrap();
        assert_eq!(hdr.len as usize, bytes.len());
        assert_eq!(hdr.opcode, 12);
        assert_eq!(hdr.unique, 42);
        assert_eq!(hdr.nodeid, 7);
        assert_eq!((hdr.uid, hdr.gid, hdr.pid), (1, 2, 3));
        assert_eq!(&bytes[40..48], &9u64.to_le_bytes());
        assert_eq!(&bytes[48..], b"old\0new\0");
    }

    #[test]
    fn request_len_counts_the_payload() {
        let bytes = Request::new("MKDIR", Opcode::Mkdir, 1)
            .arg(&MkdirIn {
                mode: 0o755,
                umask: 0,
            })
            .encode(1, CREDS, 4096);
        let hdr: InHeader = read_struct(&bytes).unwrap();
        assert_eq!(hdr.len as usize, 40 + 8 + 4096);
        assert_eq!(bytes.len(), 48);
    }

    #[test]
    fn names_with_nul_are_refused() {
        let r = Request::new("LOOKUP", Opcode::Lookup, 1).name(b"a\0b");
        assert!(matches!(r, Err(FsError::BadName { op: "LOOKUP", .. })));
    }

    #[test]
    fn error_reply_becomes_errno() {
        let buf = reply(5, -libc::ENOENT, &[]);
        match parse_reply("LOOKUP", 5, &buf) {
            Err(e @ FsError::Errno { .. }) => {
                assert_eq!(e.errno(), Some(libc::ENOENT));
                assert!(e.to_string().contains("LOOKUP"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_replies_are_reported() {
        // Too short.
        assert!(matches!(
            parse_reply("GETATTR", 1, &[0u8; 8]),
            Err(FsError::BadReply { .. })
        ));
        // Wrong unique.
        let buf = reply(2, 0, &[]);
        assert!(matches!(
            parse_reply("GETATTR", 1, &buf),
            Err(FsError::BadReply { .. })
        ));
        // len disagrees with what was written.
        let mut buf = reply(1, 0, &[0; 8]);
        buf.truncate(20);
        assert!(matches!(
            parse_reply("GETATTR", 1, &buf),
            Err(FsError::BadReply { .. })
        ));
        // Positive error.
        let buf = reply(1, 5, &[]);
        assert!(matches!(
            parse_reply("GETATTR", 1, &buf),
            Err(FsError::BadReply { .. })
        ));
        // Good reply: body comes back.
        let buf = reply(1, 0, b"12345678");
        assert_eq!(parse_reply("GETATTR", 1, &buf).unwrap(), b"12345678");
    }

    fn direntplus_bytes(nodeid: u64, ino: u64, off: u64, name: &[u8]) -> Vec<u8> {
        let d = Direntplus {
            entry_out: EntryOut {
                nodeid,
                attr: Attr {
                    ino,
                    size: 11,
                    mode: libc::S_IFREG | 0o644,
                    ..Default::default()
                },
                ..Default::default()
            },
            dirent: Dirent {
                ino,
                off,
                namelen: name.len() as u32,
                type_: libc::DT_REG as u32,
            },
        };
        let mut v = d.as_slice().to_vec();
        v.extend_from_slice(name);
        // Padding the server may fill with anything.
        v.resize(dirent_align(v.len()), 0xee);
        v
    }

    #[test]
    fn readdirplus_parses_padded_entries() {
        let mut buf = direntplus_bytes(0, 1, 1, b".");
        buf.extend(direntplus_bytes(5, 100, 2, b"file.txt")); // 8 bytes: no padding
        buf.extend(direntplus_bytes(6, 101, 3, b"abc")); // 5 bytes of padding
        let v = parse_direntplus(&buf).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].name(), b".");
        assert_eq!(v[0].entry.nodeid, 0);
        assert_eq!(v[1].name(), b"file.txt");
        assert_eq!(v[1].entry.nodeid, 5);
        assert_eq!(v[1].entry.attr.ino, 100);
        assert_eq!(v[1].entry.attr.size, 11);
        assert_eq!(v[1].dirent.off, 2);
        assert_eq!(v[2].name(), b"abc");
        assert_eq!(v[2].dirent.typ, libc::DT_REG as u32);
    }

    #[test]
    fn readdirplus_rejects_truncation() {
        let buf = direntplus_bytes(5, 100, 2, b"file.txt");
        assert!(parse_direntplus(&buf[..100]).is_err());
        // Name runs past the end.
        assert!(parse_direntplus(&buf[..DIRENTPLUS_LEN + 3]).is_err());
        assert!(parse_direntplus(&[]).unwrap().is_empty());
    }

    #[test]
    fn readdir_parses_plain_dirents() {
        let mut buf = Vec::new();
        for (i, name) in [&b"a"[..], b"bcdefghijk"].iter().enumerate() {
            let d = Dirent {
                ino: 10 + i as u64,
                off: 1 + i as u64,
                namelen: name.len() as u32,
                type_: 8,
            };
            buf.extend_from_slice(d.as_slice());
            buf.extend_from_slice(name);
            buf.resize(dirent_align(buf.len()), 0);
        }
        let v = parse_dirents(&buf).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].name, b"bcdefghijk");
        assert_eq!(v[1].ino, 11);
    }

    #[test]
    fn short_structs_are_zero_extended() {
        let v: [u32; 4] = read_prefix(&[1, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(v, [1, 2, 0, 0]);
        assert!(read_struct::<[u32; 4]>(&[0; 15]).is_none());
    }
}
