//! Requests made of arbitrary bytes, for bad-input tests: truncated
//! headers, `len` fields that lie, unknown opcodes, odd descriptor splits.
//! They use their own buffers, so a request the backend drops (and perhaps
//! completes late) cannot clobber the typed requests' buffers.

use fuse_backend_rs::abi::fuse_abi::{GetattrIn, Opcode, OutHeader, ROOT_ID};
use vm_memory::{Address, GuestAddress};

use super::wire::{self, read_struct, Request};
use super::{FsClient, FsError, Result, HDR_AREA};
use crate::virtqueue::Seg;

/// Bytes left between two raw descriptors in guest memory.
const RAW_GAP: u64 = 64;

/// What the device did with a raw request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    /// The used length the device reported.
    pub used_len: u32,
    /// The bytes it wrote, gathered from the reply descriptors (at most
    /// `used_len`, and at most what the descriptors hold).
    pub bytes: Vec<u8>,
}

impl RawReply {
    /// The `fuse_out_header`, if at least 16 bytes were written.
    pub fn header(&self) -> Option<OutHeader> {
        read_struct(&self.bytes)
    }
    /// The positive errno of an error reply.
    pub fn errno(&self) -> Option<i32> {
        self.header()
            .filter(|h| h.error < 0)
            .map(|h| h.error.saturating_neg())
    }
    /// The bytes after the header.
    pub fn body(&self) -> &[u8] {
        self.bytes.get(wire::OUT_HEADER_LEN..).unwrap_or(&[])
    }
}

/// Malformed requests every virtio-fs backend must survive (see
/// [`FsClient::send_malformed`]). Each is a GETATTR of the root node made
/// wrong in one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// 20 bytes: half a `fuse_in_header`.
    TruncatedHeader,
    /// `len` says 4096 bytes, the buffer holds 56.
    LenTooLarge,
    /// `len` says 8 bytes, less than the header.
    LenTooSmall,
    /// Opcode 999.
    UnknownOpcode,
    /// A READ with no `fuse_read_in`.
    MissingArgs,
    /// A valid GETATTR cut into descriptors of 7, 23 and 26 bytes, the reply
    /// into 8, 8 and 200 bytes (legal, if unusual: must succeed).
    SplitMidHeader,
}

impl Malformed {
    /// Every case.
    pub const ALL: [Malformed; 6] = [
        Malformed::TruncatedHeader,
        Malformed::LenTooLarge,
        Malformed::LenTooSmall,
        Malformed::UnknownOpcode,
        Malformed::MissingArgs,
        Malformed::SplitMidHeader,
    ];
}

/// What the backend did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It returned the chain; what it wrote.
    Replied(RawReply),
    /// Nothing came back within the timeout.
    Dropped,
}

impl FsClient {
    /// Sends one malformed request on the first request queue and reports
    /// what came back. Returns the request's unique too (0 if it has none).
    pub fn send_malformed(&mut self, case: Malformed) -> Result<(u64, Outcome)> {
        let getattr = Request::new("GETATTR", Opcode::Getattr, ROOT_ID).arg(&GetattrIn::default());
        let q = 1;
        let (unique, result) = match case {
            Malformed::TruncatedHeader => {
                let (_, bytes) = self.encode(&getattr, 0);
                (0, self.raw_request(q, &bytes[..20], 4096))
            }
            Malformed::LenTooLarge | Malformed::LenTooSmall => {
                let (unique, mut bytes) = self.encode(&getattr, 0);
                let len: u32 = if case == Malformed::LenTooLarge {
                    4096
                } else {
                    8
                };
                bytes[..4].copy_from_slice(&len.to_le_bytes());
                (unique, self.raw_request(q, &bytes, 4096))
            }
            Malformed::UnknownOpcode => {
                let mut bogus = getattr;
                bogus.opcode = 999;
                let (unique, bytes) = self.encode(&bogus, 0);
                (unique, self.raw_request(q, &bytes, 4096))
            }
            Malformed::MissingArgs => {
                let (unique, bytes) = self.encode(&Request::new("READ", Opcode::Read, ROOT_ID), 0);
                (unique, self.raw_request(q, &bytes, 4096))
            }
            Malformed::SplitMidHeader => {
                let (unique, b) = self.encode(&getattr, 0);
                let parts: [&[u8]; 3] = [&b[..7], &b[7..30], &b[30..]];
                (unique, self.raw_request_split(q, &parts, &[8, 8, 200]))
            }
        };
        match result {
            Ok(r) => Ok((unique, Outcome::Replied(r))),
            Err(FsError::Timeout { .. }) => Ok((unique, Outcome::Dropped)),
            Err(e) => Err(e),
        }
    }

    /// A fresh `unique` for a hand-made request.
    pub fn next_unique(&mut self) -> u64 {
        self.unique += 1;
        self.unique
    }

    /// Encodes a well-formed request (header + arguments, `len` counting
    /// `payload_len` more bytes) with a fresh `unique`, for a test to send
    /// as is or to corrupt. Returns the unique and the bytes.
    pub fn encode(&mut self, req: &Request, payload_len: usize) -> (u64, Vec<u8>) {
        let unique = self.next_unique();
        (unique, req.encode(unique, self.opts.creds, payload_len))
    }

    /// Like [`FsClient::encode`], but refuses a request whose header and
    /// arguments take more than `max` bytes (the room it is copied into).
    pub(super) fn encode_within(
        &mut self,
        req: &Request,
        payload_len: usize,
        max: u64,
    ) -> Result<(u64, Vec<u8>)> {
        let (unique, bytes) = self.encode(req, payload_len);
        if bytes.len() as u64 > max {
            return Err(FsError::TooBig {
                op: req.op,
                len: bytes.len() as u64,
                max,
            });
        }
        Ok((unique, bytes))
    }

    /// Sends `in_bytes` as one device-readable descriptor on virtqueue
    /// `queue` (0 is hiprio) with one device-writable descriptor of
    /// `out_capacity` bytes (none if 0), and returns what the device wrote.
    /// A request the backend drops ends in [`FsError::Timeout`].
    pub fn raw_request(
        &mut self,
        queue: usize,
        in_bytes: &[u8],
        out_capacity: u32,
    ) -> Result<RawReply> {
        let caps: &[u32] = if out_capacity == 0 {
            &[]
        } else {
            &[out_capacity]
        };
        self.raw_request_split(queue, &[in_bytes], caps)
    }

    /// Like [`FsClient::raw_request`], with each of `parts` in its own
    /// device-readable descriptor and one device-writable descriptor per
    /// entry of `out_caps`. Descriptors are not adjacent in guest memory.
    pub fn raw_request_split(
        &mut self,
        queue: usize,
        parts: &[&[u8]],
        out_caps: &[u32],
    ) -> Result<RawReply> {
        let op = "raw request";
        let mem = self.dev.mem().clone();
        let merr = |source| FsError::Memory { op, source };
        let place = |base: GuestAddress, room: u64, lens: &mut dyn Iterator<Item = u64>| {
            let mut at = 0u64;
            let mut addrs = Vec::new();
            for len in lens {
                if at + len > room {
                    return Err(FsError::TooBig {
                        op,
                        len: at + len,
                        max: room,
                    });
                }
                addrs.push(base.unchecked_add(at));
                at += (len + RAW_GAP).next_multiple_of(8);
            }
            Ok(addrs)
        };
        let req_base = self.raw_req.hdr(HDR_AREA as usize);
        let rep_base = self.raw_rep.hdr(HDR_AREA as usize);
        let in_addrs = place(
            req_base,
            HDR_AREA + self.raw_req.data_len,
            &mut parts.iter().map(|p| p.len() as u64),
        )?;
        let out_addrs = place(
            rep_base,
            HDR_AREA + self.raw_rep.data_len,
            &mut out_caps.iter().map(|&c| u64::from(c)),
        )?;
        let mut segs = Vec::with_capacity(parts.len() + out_caps.len());
        for (p, &a) in parts.iter().zip(&in_addrs) {
            mem.write(a, p).map_err(merr)?;
            segs.push(Seg::out(a, p.len() as u32));
        }
        for (&c, &a) in out_caps.iter().zip(&out_addrs) {
            mem.write(a, &vec![0u8; c as usize]).map_err(merr)?;
            segs.push(Seg::inp(a, c));
        }
        let token = self.next_unique();
        let used_len = self.submit(op, queue, &segs, token)?;
        let out_segs: Vec<Seg> = segs.iter().filter(|s| s.device_writes).copied().collect();
        let bytes = self.gather(op, &out_segs, used_len as usize)?;
        Ok(RawReply { used_len, bytes })
    }
}
