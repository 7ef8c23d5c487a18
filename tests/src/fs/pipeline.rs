//! Several requests in flight on the request queue at once, as a guest
//! whose tasks share one mount keeps them. Each request in flight has its
//! own slot in guest memory (header and arguments, reply header and body),
//! so replies may come back in any order.

use vm_memory::{Address, GuestAddress};

use super::{wire, FsClient, FsError, Result};
use crate::virtqueue::{QueueError, Seg};

/// Bytes of a slot's request side: header, argument structs and a name.
const SLOT_REQ: u64 = (wire::IN_HEADER_LEN + 256 + wire::MAX_NAME + 8) as u64;
/// Bytes of a slot's reply body (an entry, attributes, or entry + open).
const SLOT_BODY: u32 = 1024;

#[derive(Debug, Clone, Copy)]
struct Slot {
    req: GuestAddress,
    rep: GuestAddress,
    unique: u64,
    op: &'static str,
    busy: bool,
}

/// Request slots on the current request queue (see [`FsClient::pipeline`]).
#[derive(Debug)]
pub struct Pipeline {
    slots: Vec<Slot>,
    in_flight: usize,
}

impl FsClient {
    /// `depth` request slots for [`Pipeline::send`] and [`Pipeline::recv`]
    /// on the current request queue. Their memory is allocated once.
    pub fn pipeline(&mut self, depth: usize) -> Result<Pipeline> {
        let op = "pipeline";
        // A request takes up to four descriptors.
        let room = usize::from(self.opts.queue_size) / 4;
        if depth == 0 || depth > room {
            return Err(FsError::TooBig {
                op,
                len: depth as u64,
                max: room as u64,
            });
        }
        let per = SLOT_REQ + wire::OUT_HEADER_LEN as u64 + u64::from(SLOT_BODY);
        let base = self
            .dev
            .mem()
            .alloc(per * depth as u64, 64)
            .map_err(|source| FsError::Memory { op, source })?;
        let slots = (0..depth as u64)
            .map(|i| {
                let req = base.unchecked_add(i * per);
                Slot {
                    req,
                    rep: req.unchecked_add(SLOT_REQ),
                    unique: 0,
                    op,
                    busy: false,
                }
            })
            .collect();
        Ok(Pipeline {
            slots,
            in_flight: 0,
        })
    }
}

impl Pipeline {
    /// Number of slots.
    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Requests sent and not yet received.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Puts `req` on the request queue in slot `slot` (which must be free),
    /// without kicking: call [`Pipeline::kick`] after a batch of sends.
    pub fn send(&mut self, fs: &mut FsClient, slot: usize, req: &wire::Request) -> Result<()> {
        let op = req.op;
        let s = self
            .slots
            .get_mut(slot)
            .filter(|s| !s.busy)
            .ok_or_else(|| FsError::BadReply {
                op,
                reason: format!("pipeline slot {slot} is busy or does not exist"),
            })?;
        let (unique, bytes) = fs.encode_within(req, 0, SLOT_REQ)?;
        let merr = |source| FsError::Memory { op, source };
        let mem = fs.dev.mem().clone();
        mem.write(s.req, &bytes).map_err(merr)?;
        mem.write(s.rep, &[0u8; wire::OUT_HEADER_LEN])
            .map_err(merr)?;
        // The Linux driver's split: header, arguments, reply header, body.
        let mut segs = vec![Seg::out(s.req, wire::IN_HEADER_LEN as u32)];
        if bytes.len() > wire::IN_HEADER_LEN {
            segs.push(Seg::out(
                s.req.unchecked_add(wire::IN_HEADER_LEN as u64),
                (bytes.len() - wire::IN_HEADER_LEN) as u32,
            ));
        }
        segs.push(Seg::inp(s.rep, wire::OUT_HEADER_LEN as u32));
        segs.push(Seg::inp(
            s.rep.unchecked_add(wire::OUT_HEADER_LEN as u64),
            SLOT_BODY,
        ));
        let queue = fs.req_queue;
        fs.dev
            .queue(queue)
            .add(&segs, slot as u64)
            .map_err(|source| FsError::Queue { op, source })?;
        *s = Slot {
            unique,
            op,
            busy: true,
            ..*s
        };
        self.in_flight += 1;
        Ok(())
    }

    /// Kicks the request queue unless the device asked not to be.
    pub fn kick(&mut self, fs: &mut FsClient) -> Result<()> {
        let queue = fs.req_queue;
        fs.dev
            .queue(queue)
            .kick()
            .map(drop)
            .map_err(|source| FsError::Queue {
                op: "pipeline kick",
                source,
            })
    }

    /// Waits for the next reply: its slot (free again) and its body, or
    /// the error the server answered with. The outer error is the
    /// transport's (timeout, a used entry for no request in flight).
    pub fn recv(&mut self, fs: &mut FsClient) -> Result<(usize, Result<Vec<u8>>)> {
        let op = "pipeline";
        let timeout = fs.opts.timeout;
        let queue = fs.req_queue;
        let u = match fs.dev.queue(queue).wait_used(timeout) {
            Ok(u) => u,
            Err(QueueError::Timeout { .. }) => return Err(FsError::Timeout { op, queue, timeout }),
            Err(source) => return Err(FsError::Queue { op, source }),
        };
        let slot = u.token.map(|t| t as usize).unwrap_or(usize::MAX);
        let Some(s) = self.slots.get_mut(slot).filter(|s| s.busy) else {
            return Err(FsError::BadReply {
                op,
                reason: format!("used entry {u:?} matches no request in flight"),
            });
        };
        s.busy = false;
        self.in_flight -= 1;
        let s = *s;
        let cap = wire::OUT_HEADER_LEN + SLOT_BODY as usize;
        if u.len as usize > cap {
            return Ok((
                slot,
                Err(FsError::BadReply {
                    op: s.op,
                    reason: format!("used length {} exceeds the {cap} bytes offered", u.len),
                }),
            ));
        }
        let mut reply = vec![0u8; u.len as usize];
        fs.dev
            .mem()
            .read(s.rep, &mut reply)
            .map_err(|source| FsError::Memory { op: s.op, source })?;
        let body = wire::parse_reply(s.op, s.unique, &reply).map(<[u8]>::to_vec);
        Ok((slot, body))
    }
}
