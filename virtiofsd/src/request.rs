//! What the daemon checks before fuse-backend-rs sees a request, because
//! fuse-backend-rs does not: the descriptor chain is well formed (no loop,
//! no readable buffer after a writable one, inside guest memory), the FUSE
//! header's `len` is the request's real length, nothing but INIT comes
//! before INIT, and a WRITE carries exactly the bytes it announces.

use std::mem::size_of;
use std::ops::Deref;

use common::queue::MAX_CHAIN_DESCRIPTORS;
use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader, WriteIn};

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory};

/// FUSE opcodes the checks need, as fuse-backend-rs numbers them.
pub mod opcode {
    use fuse_backend_rs::abi::fuse_abi::Opcode;

    /// FORGET (no reply).
    pub const FORGET: u32 = Opcode::Forget as u32;
    /// WRITE.
    pub const WRITE: u32 = Opcode::Write as u32;
    /// INIT.
    pub const INIT: u32 = Opcode::Init as u32;
    /// DESTROY.
    pub const DESTROY: u32 = Opcode::Destroy as u32;
    /// BATCH_FORGET (no reply).
    pub const BATCH_FORGET: u32 = Opcode::BatchForget as u32;
    /// SETATTR.
    pub const SETATTR: u32 = Opcode::Setattr as u32;

    /// Requests that may run twice with the same outcome for the guest:
    /// they read, or set a state that running them again sets to the same
    /// value, or (LOOKUP, READDIRPLUS, OPEN, OPENDIR) at worst leave the
    /// daemon one more lookup count or handle than the guest knows of,
    /// which costs a node or a descriptor until the session ends and
    /// nothing the guest sees; a RELEASE run again answers EBADF, which
    /// the guest ignores. SETATTR is here only
    /// without FATTR_SIZE (see `replay_safe`). INIT and DESTROY start
    /// and end a session; running one again is what the guest asked for.
    pub const REPLAY_SAFE: &[Opcode] = &[
        Opcode::Lookup,
        Opcode::Getattr,
        Opcode::Setattr,
        Opcode::Readlink,
        Opcode::Open,
        Opcode::Read,
        Opcode::Statfs,
        Opcode::Release,
        Opcode::Fsync,
        Opcode::Getxattr,
        Opcode::Listxattr,
        Opcode::Flush,
        Opcode::Init,
        Opcode::Opendir,
        Opcode::Readdir,
        Opcode::Releasedir,
        Opcode::Fsyncdir,
        Opcode::Getlk,
        Opcode::Access,
        Opcode::Interrupt,
        Opcode::Bmap,
        Opcode::Destroy,
        Opcode::Poll,
        Opcode::NotifyReply,
        Opcode::Readdirplus,
        Opcode::Lseek,
    ];
}

/// `struct fuse_in_header`.
pub const IN_HEADER_LEN: usize = size_of::<InHeader>();
/// `struct fuse_write_in`.
const WRITE_IN_LEN: usize = size_of::<WriteIn>();
/// `struct fuse_out_header`.
pub const OUT_HEADER_LEN: usize = size_of::<OutHeader>();

/// The fields of a request's header the checks use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// `len`.
    pub len: u32,
    /// `opcode`.
    pub opcode: u32,
    /// `unique`.
    pub unique: u64,
    /// `fuse_write_in.size` for WRITE requests.
    pub write_size: Option<u32>,
    /// `fuse_setattr_in.valid` for SETATTR requests.
    pub setattr_valid: Option<u32>,
}

/// Bytes on each side of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Device-readable bytes (the request).
    pub readable: u64,
    /// Device-writable bytes (room for the reply).
    pub writable: u64,
}

/// A chain that cannot carry a request; returned unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// Last descriptor has NEXT set: loop, `next` out of range, bad table.
    #[error("chain truncated (descriptor loop, `next` out of range or a bad indirect table)")]
    Truncated,
    /// A readable buffer after a writable one.
    #[error("readable descriptor after a writable one")]
    ReadableAfterWritable,
    /// A buffer outside guest memory.
    #[error("buffer at {0:#x} is outside guest memory")]
    OutsideMemory(u64),
    /// Fewer readable bytes than a FUSE header.
    #[error("request shorter than the 40-byte FUSE header")]
    ShortHeader,
}

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the FUSE server.
    Serve,
    /// Reply with this errno, without running it.
    Refuse(i32),
    /// A FORGET before INIT: no reply is due; return the chain.
    Drop,
}

/// Walks the chain and reads the header.
pub fn inspect<M>(chain: &DescriptorChain<M>, mem: &M::Target) -> Result<(Header, Shape), Malformed>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let mut shape = Shape {
        readable: 0,
        writable: 0,
    };
    let mut head = [0u8; IN_HEADER_LEN + WRITE_IN_LEN];
    let mut have = 0usize;
    let mut last_has_next = true;
    for desc in chain.clone().take(MAX_CHAIN_DESCRIPTORS) {
        last_has_next = desc.has_next();
        let len = desc.len();
        if len > 0 && !mem.check_range(desc.addr(), len as usize) {
            return Err(Malformed::OutsideMemory(desc.addr().0));
        }
        if desc.is_write_only() {
            shape.writable += u64::from(len);
            continue;
        }
        if shape.writable > 0 {
            return Err(Malformed::ReadableAfterWritable);
        }
        let take = (len as usize).min(head.len() - have);
        if take > 0 {
            mem.read_slice(&mut head[have..have + take], desc.addr())
                .map_err(|_| Malformed::OutsideMemory(desc.addr().0))?;
            have += take;
        }
        shape.readable += u64::from(len);
    }
    if last_has_next {
        return Err(Malformed::Truncated);
    }
    if have < IN_HEADER_LEN {
        return Err(Malformed::ShortHeader);
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let mut unique = [0u8; 8];
    unique.copy_from_slice(&head[8..16]);
    let opcode = u32_at(4);
    let write_size =
        (opcode == opcode::WRITE && have >= IN_HEADER_LEN + 24).then(|| u32_at(IN_HEADER_LEN + 16));
    let setattr_valid =
        (opcode == opcode::SETATTR && have >= IN_HEADER_LEN + 4).then(|| u32_at(IN_HEADER_LEN));
    Ok((
        Header {
            len: u32_at(0),
            opcode,
            unique: u64::from_le_bytes(unique),
            write_size,
            setattr_valid,
        },
        shape,
    ))
}

/// The checks fuse-backend-rs leaves to us. `initialized`: INIT succeeded
/// on this connection.
pub fn judge(h: &Header, shape: &Shape, initialized: bool) -> Verdict {
    let no_reply = matches!(h.opcode, opcode::FORGET | opcode::BATCH_FORGET);
    if u64::from(h.len) != shape.readable {
        return if no_reply {
            Verdict::Drop
        } else {
            Verdict::Refuse(libc::EINVAL)
        };
    }
    if !initialized && h.opcode != opcode::INIT {
        return if no_reply {
            Verdict::Drop
        } else {
            Verdict::Refuse(libc::EIO)
        };
    }
    if h.opcode == opcode::WRITE {
        let payload = u64::from(h.len).saturating_sub((IN_HEADER_LEN + WRITE_IN_LEN) as u64);
        if h.write_size.map(u64::from) != Some(payload) {
            return Verdict::Refuse(libc::EINVAL);
        }
    }
    Verdict::Serve
}

/// Whether running the request again, after a previous daemon took it
/// and may have run it in part or in full, gives the guest what it asked
/// for once ([`opcode::REPLAY_SAFE`]). Not safe: what creates, removes or
/// renames a name (MKNOD, MKDIR, SYMLINK, LINK, CREATE, UNLINK, RMDIR,
/// RENAME, RENAME2: the second run answers EEXIST or ENOENT for what the
/// first did), what writes data (WRITE: O_APPEND appends twice, and a
/// write run again lands after later writes that overlap it;
/// FALLOCATE, COPY_FILE_RANGE and SETATTR with a size, a truncation,
/// likewise), xattr changes (SETXATTR with XATTR_CREATE answers EEXIST,
/// REMOVEXATTR ENODATA), locks (SETLK, SETLKW: an unlock run again may
/// drop a lock taken since), IOCTL (unknown effect), FORGET and
/// BATCH_FORGET (a lookup count taken twice may end a node the guest still
/// holds, where one not taken only keeps a node), DAX mappings and any
/// opcode this daemon does not know.
pub fn replay_safe(h: &Header) -> bool {
    use fuse_backend_rs::abi::fuse_abi::SetattrValid;
    if h.opcode == opcode::SETATTR {
        return h
            .setattr_valid
            .is_some_and(|v| v & SetattrValid::SIZE.bits() == 0);
    }
    opcode::REPLAY_SAFE.iter().any(|&op| op as u32 == h.opcode)
}

/// [`judge`] for a request a previous daemon took and did not answer
/// (`common::queue::Origin::Resubmitted`): one that is not
/// [`replay_safe`] is answered EIO (a FORGET is dropped), so the guest
/// hears of it exactly once and nothing runs twice.
pub fn judge_resubmitted(h: &Header, shape: &Shape, initialized: bool) -> Verdict {
    match judge(h, shape, initialized) {
        Verdict::Serve if !replay_safe(h) => {
            if matches!(h.opcode, opcode::FORGET | opcode::BATCH_FORGET) {
                Verdict::Drop
            } else {
                Verdict::Refuse(libc::EIO)
            }
        }
        v => v,
    }
}

/// A `fuse_out_header` carrying `-errno` for request `unique`.
pub fn error_reply(unique: u64, errno: i32) -> [u8; OUT_HEADER_LEN] {
    let mut r = [0u8; OUT_HEADER_LEN];
    r[0..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_le_bytes());
    r[4..8].copy_from_slice(&(-errno).to_le_bytes());
    r[8..16].copy_from_slice(&unique.to_le_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(len: u32, opcode: u32, write_size: Option<u32>) -> Header {
        Header {
            len,
            opcode,
            unique: 7,
            write_size,
            setattr_valid: None,
        }
    }

    const SHAPE: Shape = Shape {
        readable: 56,
        writable: 4096,
    };

    /// Judges each case against `shape`, naming it when it fails.
    fn judge_all(shape: &Shape, cases: &[(&str, Header, bool, Verdict)]) {
        for (name, header, initialized, want) in cases {
            assert_eq!(judge(header, shape, *initialized), *want, "{name}");
        }
    }

    #[test]
    fn len_must_match_the_request() {
        let einval = Verdict::Refuse(libc::EINVAL);
        judge_all(
            &SHAPE,
            &[
                ("len as readable", h(56, 3, None), true, Verdict::Serve),
                ("len past readable", h(4096, 3, None), true, einval),
                ("len short of readable", h(8, 3, None), true, einval),
                (
                    "FORGET, wrong len",
                    h(8, opcode::FORGET, None),
                    true,
                    Verdict::Drop,
                ),
            ],
        );
    }

    #[test]
    fn only_init_before_init() {
        judge_all(
            &SHAPE,
            &[
                ("GETATTR", h(56, 3, None), false, Verdict::Refuse(libc::EIO)),
                ("INIT", h(56, opcode::INIT, None), false, Verdict::Serve),
                ("FORGET", h(56, opcode::FORGET, None), false, Verdict::Drop),
            ],
        );
    }

    #[test]
    fn write_size_must_match_its_payload() {
        let shape = Shape {
            readable: 80 + 4096,
            writable: 16,
        };
        let write = |size| h(80 + 4096, opcode::WRITE, size);
        let einval = Verdict::Refuse(libc::EINVAL);
        judge_all(
            &shape,
            &[
                ("size as payload", write(Some(4096)), true, Verdict::Serve),
                ("size past payload", write(Some(16 << 20)), true, einval),
                ("no size", write(None), true, einval),
            ],
        );
    }

    #[test]
    fn a_resubmitted_request_runs_again_only_if_safe_to_repeat() {
        use fuse_backend_rs::abi::fuse_abi::Opcode;
        let eio = Verdict::Refuse(libc::EIO);
        let op = |o: Opcode| h(56, o as u32, None);
        let setattr = |valid| Header {
            setattr_valid: Some(valid),
            ..op(Opcode::Setattr)
        };
        for (name, header, want) in [
            ("READ", op(Opcode::Read), Verdict::Serve),
            ("GETATTR", op(Opcode::Getattr), Verdict::Serve),
            ("LOOKUP", op(Opcode::Lookup), Verdict::Serve),
            ("RELEASE", op(Opcode::Release), Verdict::Serve),
            ("chmod", setattr(1), Verdict::Serve),
            ("MKDIR", op(Opcode::Mkdir), eio),
            ("CREATE", op(Opcode::Create), eio),
            ("UNLINK", op(Opcode::Unlink), eio),
            ("RENAME2", op(Opcode::Rename2), eio),
            ("SETXATTR", op(Opcode::Setxattr), eio),
            ("truncate", setattr(1 | 8), eio),
            ("SETATTR, no body", op(Opcode::Setattr), eio),
            ("unknown opcode", h(56, 4000, None), eio),
            ("FORGET", op(Opcode::Forget), Verdict::Drop),
            ("BATCH_FORGET", op(Opcode::BatchForget), Verdict::Drop),
        ] {
            assert_eq!(judge_resubmitted(&header, &SHAPE, true), want, "{name}");
            let fresh = judge(&header, &SHAPE, true);
            assert_eq!(fresh, Verdict::Serve, "{name}, not resubmitted");
        }
        // A resubmitted WRITE with a bad size is refused as a new one is.
        let bad_write = h(56, opcode::WRITE, Some(1));
        assert_eq!(
            judge_resubmitted(&bad_write, &SHAPE, true),
            Verdict::Refuse(libc::EINVAL)
        );
        // Before INIT, EIO as for any request.
        assert_eq!(judge_resubmitted(&op(Opcode::Read), &SHAPE, false), eio);
    }

    #[test]
    fn error_reply_layout() {
        let r = error_reply(0x1122, libc::EIO);
        assert_eq!(u32::from_le_bytes(r[0..4].try_into().unwrap()), 16);
        assert_eq!(i32::from_le_bytes(r[4..8].try_into().unwrap()), -libc::EIO);
        assert_eq!(u64::from_le_bytes(r[8..16].try_into().unwrap()), 0x1122);
    }
}
