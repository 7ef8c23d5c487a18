//! The `vhost_user_msg*` input: what a frontend sends a daemon, as ops.
//! `vu_frontend` decodes it; [`Script`] encodes it (for the seeds).
//!
//! Byte 0 sets the daemon up; bit 2 is the same for every target: the
//! connection passes through `common::relay`. `vhost_user_msg`: bit 0 a
//! read-only image, bit 1 two queues, bit 3 `--aio io_uring`;
//! `vhost_user_msg_fs` and `_net`: see their targets. Then ops, each
//! starting with a byte `t`:
//!
//! - `t & 3` is 0 or 1: a message, `[request: u8][flags: u8][size:
//!   le16]` and `size` body bytes (fewer if the input ends: the header
//!   may lie). `t` bits 2-4 pick how many descriptors go with it
//!   ([`FD_COUNTS`]), bits 5-6 what they are ([`FdKind`]). With `t & 1`
//!   the frontend then waits (briefly) until the backend has handled it:
//!   it sends a GET_FEATURES and waits for its reply.
//! - `t & 3 == 2`: a kick: a write to the eventfd (of those sent so far)
//!   numbered `t >> 2`.
//! - `t & 3 == 3`: the guest writes its memory, `[offset: le16][len: u8]`
//!   and `len` bytes, into the 64 KiB memfd every [`FdKind::Guest`]
//!   descriptor is.

/// vhost-user request codes (`FrontendReq`).
pub mod req {
    pub const GET_FEATURES: u8 = 1;
    pub const SET_FEATURES: u8 = 2;
    pub const SET_OWNER: u8 = 3;
    pub const RESET_OWNER: u8 = 4;
    pub const SET_MEM_TABLE: u8 = 5;
    pub const SET_VRING_NUM: u8 = 8;
    pub const SET_VRING_ADDR: u8 = 9;
    pub const SET_VRING_BASE: u8 = 10;
    pub const GET_VRING_BASE: u8 = 11;
    pub const SET_VRING_KICK: u8 = 12;
    pub const SET_VRING_CALL: u8 = 13;
    pub const SET_VRING_ERR: u8 = 14;
    pub const GET_PROTOCOL_FEATURES: u8 = 15;
    pub const SET_PROTOCOL_FEATURES: u8 = 16;
    pub const GET_QUEUE_NUM: u8 = 17;
    pub const SET_VRING_ENABLE: u8 = 18;
    pub const GET_CONFIG: u8 = 24;
    pub const SET_CONFIG: u8 = 25;
    pub const GET_INFLIGHT_FD: u8 = 31;
    pub const SET_INFLIGHT_FD: u8 = 32;
    pub const RESET_DEVICE: u8 = 34;
    pub const GET_MAX_MEM_SLOTS: u8 = 36;
    pub const ADD_MEM_REG: u8 = 37;
    pub const REM_MEM_REG: u8 = 38;
    pub const SET_STATUS: u8 = 39;
    pub const GET_STATUS: u8 = 40;
}

/// Header flags: version 1, need reply.
pub const VERSION_1: u8 = 0x1;
pub const NEED_REPLY: u8 = 0x8;

/// Size of the guest memfd.
pub const GUEST_LEN: u64 = 0x10000;

/// How many descriptors a message carries, by `t` bits 2-4 (32 is the
/// vhost crate's limit: 33 is one too many).
pub const FD_COUNTS: [usize; 8] = [0, 1, 2, 3, 4, 8, 32, 33];

/// What the descriptors of a message are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdKind {
    /// A fresh eventfd (the frontend keeps a copy to kick with).
    Event = 0,
    /// The guest memory memfd ([`GUEST_LEN`] bytes).
    Guest = 1,
    /// A fresh 4 KiB memfd.
    Small = 2,
    /// The read end of a pipe.
    Pipe = 3,
}

impl FdKind {
    /// The kind of `t` bits 5-6.
    pub fn of(t: u8) -> Self {
        match (t >> 5) & 3 {
            0 => FdKind::Event,
            1 => FdKind::Guest,
            2 => FdKind::Small,
            _ => FdKind::Pipe,
        }
    }
}

/// Builds an input op by op.
#[derive(Debug, Clone)]
pub struct Script(Vec<u8>);

impl Script {
    /// An input for the setup byte `setup`.
    pub fn new(setup: u8) -> Self {
        Script(vec![setup])
    }

    /// A message with `flags` and `fds` descriptors of `kind`; with
    /// `sync` the frontend waits for the backend after it.
    pub fn raw(
        &mut self,
        request: u8,
        flags: u8,
        body: &[u8],
        (fds, kind): (usize, FdKind),
        sync: bool,
    ) -> &mut Self {
        let count = FD_COUNTS
            .iter()
            .position(|&n| n == fds)
            .expect("a count of FD_COUNTS") as u8;
        self.0
            .push(u8::from(sync) | (count << 2) | ((kind as u8) << 5));
        self.0.push(request);
        self.0.push(flags);
        self.0.extend_from_slice(&(body.len() as u16).to_le_bytes());
        self.0.extend_from_slice(body);
        self
    }

    /// A version-1 message asking for an ack, without descriptors; the
    /// frontend waits for it to be handled.
    pub fn msg(&mut self, request: u8, body: &[u8]) -> &mut Self {
        self.msg_fds(request, body, 0, FdKind::Event)
    }

    /// [`Script::msg`] with descriptors.
    pub fn msg_fds(&mut self, request: u8, body: &[u8], fds: usize, kind: FdKind) -> &mut Self {
        self.raw(request, VERSION_1 | NEED_REPLY, body, (fds, kind), true)
    }

    /// A kick on the `n`th eventfd sent.
    pub fn kick(&mut self, n: u8) -> &mut Self {
        self.0.push((n << 2) | 2);
        self
    }

    /// The guest writes `bytes` at `offset` of its memory.
    pub fn poke(&mut self, offset: u16, bytes: &[u8]) -> &mut Self {
        for (k, chunk) in bytes.chunks(255).enumerate() {
            self.0.push(3);
            self.0
                .extend_from_slice(&(offset + 255 * k as u16).to_le_bytes());
            self.0.push(chunk.len() as u8);
            self.0.extend_from_slice(chunk);
        }
        self
    }

    /// The input.
    pub fn finish(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// A little-endian body of `u32`s and `u64`s.
pub fn body(fields: &[(u64, usize)]) -> Vec<u8> {
    let mut b = Vec::new();
    for &(v, w) in fields {
        b.extend_from_slice(&v.to_le_bytes()[..w]);
    }
    b
}

/// `VhostUserVringState`.
pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
    body(&[(index.into(), 4), (num.into(), 4)])
}

/// `VhostUserVringAddr` (addresses in the frontend's address space).
pub fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    body(&[
        (index.into(), 4),
        (0, 4),
        (desc, 8),
        (used, 8),
        (avail, 8),
        (0, 8),
    ])
}

/// One `VhostUserMemoryRegion`.
pub fn region(gpa: u64, size: u64, user: u64, offset: u64) -> Vec<u8> {
    body(&[(gpa, 8), (size, 8), (user, 8), (offset, 8)])
}

/// A SET_MEM_TABLE body.
pub fn mem_table(regions: &[Vec<u8>]) -> Vec<u8> {
    let mut b = body(&[(regions.len() as u64, 4), (0, 4)]);
    for r in regions {
        b.extend_from_slice(r);
    }
    b
}
