//! The transport under the typed operations: how a request is cut into
//! descriptors ([`Layout`]), sent and awaited, plus the high-priority queue
//! (FORGET) and the preallocated data buffers.

use vm_memory::{Address, GuestAddress};

use super::{wire, Area, FsClient, FsError, Layout, Result, FORGET_SLOT, HDR_AREA, HIPRIO_QUEUE};
use crate::virtqueue::{QueueError, Seg};

/// Descriptors for `len` payload bytes at `base` under `layout`.
fn payload_segs(layout: Layout, base: GuestAddress, len: u32, device_writes: bool) -> Vec<Seg> {
    let mk = |addr, len| Seg {
        addr,
        len,
        device_writes,
    };
    match layout {
        Layout::Single | Layout::Linux if len == 0 => vec![],
        Layout::Single | Layout::Linux => vec![mk(base, len)],
        Layout::Fragmented { chunk, gap } => {
            let stride = u64::from(chunk) + u64::from(gap);
            (0..len.div_ceil(chunk))
                .map(|i| {
                    let l = chunk.min(len - i * chunk);
                    mk(base.unchecked_add(u64::from(i) * stride), l)
                })
                .collect()
        }
    }
}

/// Bytes from the first to the end of the last payload descriptor.
fn payload_span(layout: Layout, len: u32) -> u64 {
    match layout {
        Layout::Fragmented { chunk, gap } => {
            u64::from(len) + u64::from(len.div_ceil(chunk).saturating_sub(1)) * u64::from(gap)
        }
        _ => u64::from(len),
    }
}

impl FsClient {
    /// Descriptors for `len` payload bytes starting at `area.data`.
    pub(super) fn payload_segs(&self, area: &Area, len: u32, device_writes: bool) -> Vec<Seg> {
        payload_segs(self.opts.layout, area.data, len, device_writes)
    }

    /// Bytes of data area `len` payload bytes occupy under the current layout.
    pub(super) fn payload_span(&self, len: u32) -> u64 {
        payload_span(self.opts.layout, len)
    }

    /// Copies `data` into the data area the way the layout cuts it.
    pub(super) fn scatter(&self, op: &'static str, area: &Area, data: &[u8]) -> Result<()> {
        let len = self.check_payload(op, area, data.len() as u64)?;
        let mut off = 0usize;
        for s in self.payload_segs(area, len, false) {
            let end = off + s.len as usize;
            self.dev
                .mem()
                .write(s.addr, &data[off..end])
                .map_err(|source| FsError::Memory { op, source })?;
            off = end;
        }
        Ok(())
    }

    /// Reads `len` bytes back out of the body descriptors `segs`.
    pub(super) fn gather(&self, op: &'static str, segs: &[Seg], len: usize) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(len);
        for s in segs {
            let want = (len - out.len()).min(s.len as usize);
            if want == 0 {
                break;
            }
            let start = out.len();
            out.resize(start + want, 0);
            self.dev
                .mem()
                .read(s.addr, &mut out[start..])
                .map_err(|source| FsError::Memory { op, source })?;
        }
        Ok(out)
    }

    pub(super) fn check_payload(&self, op: &'static str, area: &Area, len: u64) -> Result<u32> {
        let max = u64::from(self.opts.max_io);
        match u32::try_from(len) {
            Ok(l) if len <= max && self.payload_span(l) <= area.data_len => Ok(l),
            _ => Err(FsError::TooBig { op, len, max }),
        }
    }

    /// Sends a typed request whose payload (if any) already sits in the
    /// request data area, waits for the reply, and returns its body; the
    /// body descriptors are kept for [`FsClient::read_data`].
    pub(super) fn call(
        &mut self,
        req: &wire::Request,
        payload_len: u32,
        body_cap: u32,
    ) -> Result<Vec<u8>> {
        let len = self.call_in_place(req, payload_len, body_cap)?;
        let segs = std::mem::take(&mut self.last_body);
        let body = self.gather(req.op, &segs, len as usize);
        self.last_body = segs;
        body
    }

    /// Like `call`, but leaves the body in the reply data area and returns its length.
    pub(super) fn call_in_place(
        &mut self,
        req: &wire::Request,
        payload_len: u32,
        body_cap: u32,
    ) -> Result<u32> {
        let op = req.op;
        let (unique, hdr) = self.encode_within(req, payload_len as usize, HDR_AREA)?;
        let (req_area, rep_area) = (self.req, self.rep);
        self.check_payload(op, &req_area, u64::from(payload_len))?;
        self.check_payload(op, &rep_area, u64::from(body_cap))?;
        let mem = self.dev.mem().clone();
        let merr = |source| FsError::Memory { op, source };
        let hdr_addr = req_area.hdr(hdr.len());
        mem.write(hdr_addr, &hdr).map_err(merr)?;
        let out_hdr = rep_area.hdr(wire::OUT_HEADER_LEN);
        mem.write(out_hdr, &[0u8; wire::OUT_HEADER_LEN])
            .map_err(merr)?;

        let mut segs = Vec::with_capacity(8);
        let body = self.payload_segs(&rep_area, body_cap, true);
        match self.opts.layout {
            Layout::Single => {
                let plen = u32::try_from(hdr.len()).unwrap_or(u32::MAX) + payload_len;
                segs.push(Seg::out(hdr_addr, plen));
                segs.push(Seg::inp(out_hdr, wire::OUT_HEADER_LEN as u32 + body_cap));
            }
            Layout::Linux | Layout::Fragmented { .. } => {
                segs.push(Seg::out(hdr_addr, wire::IN_HEADER_LEN as u32));
                if hdr.len() > wire::IN_HEADER_LEN {
                    let args = hdr_addr.unchecked_add(wire::IN_HEADER_LEN as u64);
                    segs.push(Seg::out(args, (hdr.len() - wire::IN_HEADER_LEN) as u32));
                }
                segs.extend(self.payload_segs(&req_area, payload_len, false));
                segs.push(Seg::inp(out_hdr, wire::OUT_HEADER_LEN as u32));
                segs.extend(body.iter().copied());
            }
        }
        let queue = self.req_queue;
        let written = self.submit(op, queue, &segs, unique)?;

        let cap = wire::OUT_HEADER_LEN + body_cap as usize;
        if written as usize > cap {
            return Err(FsError::BadReply {
                op,
                reason: format!("used length {written} exceeds the {cap} bytes offered"),
            });
        }
        let mut out = [0u8; wire::OUT_HEADER_LEN];
        mem.read(out_hdr, &mut out).map_err(merr)?;
        self.last_body = body;
        wire::check_header(op, unique, &out, written as usize)?;
        Ok(written - wire::OUT_HEADER_LEN as u32)
    }

    /// Adds `segs` on `queue` with `token`, kicks, and waits for that chain.
    /// Returns the used length.
    pub(super) fn submit(
        &mut self,
        op: &'static str,
        queue: usize,
        segs: &[Seg],
        token: u64,
    ) -> Result<u32> {
        if queue >= self.dev.queues_mut().len() {
            return Err(FsError::NoQueue { op, queue });
        }
        if queue != HIPRIO_QUEUE {
            self.reap_forgets(op)?;
        }
        let timeout = self.opts.timeout;
        let qerr = |source| FsError::Queue { op, source };
        let q = self.dev.queue(queue);
        q.add(segs, token).map_err(qerr)?;
        q.kick().map_err(qerr)?;
        loop {
            match q.wait_used(timeout) {
                Ok(u) if u.token == Some(token) => return Ok(u.len),
                Ok(u) => log::warn!("{op}: stale used entry {u:?} on queue {queue}"),
                Err(QueueError::Timeout { .. }) => {
                    return Err(FsError::Timeout { op, queue, timeout })
                }
                Err(source) => return Err(FsError::Queue { op, source }),
            }
        }
    }

    /// Takes finished FORGETs off the high-priority queue and frees their slots.
    pub(super) fn reap_forgets(&mut self, op: &'static str) -> Result<()> {
        while let Some(u) = self
            .dev
            .queue(HIPRIO_QUEUE)
            .pop_used()
            .map_err(|source| FsError::Queue { op, source })?
        {
            if let Some(slot) = u.token {
                self.free_forget.push_back(slot as u16);
            }
            if u.len != 0 {
                log::warn!("{op}: device wrote {} bytes for a FORGET", u.len);
            }
        }
        Ok(())
    }

    /// FORGETs sent and not yet returned by the device.
    pub fn forgets_in_flight(&self) -> usize {
        usize::from(self.opts.queue_size) - self.free_forget.len()
    }

    /// Waits until the device has returned every FORGET chain (they carry
    /// no reply, but the descriptors still come back through the used ring).
    pub fn wait_forgets(&mut self) -> Result<()> {
        self.reap_forgets("FORGET")?;
        while self.forgets_in_flight() > 0 {
            self.wait_one_forget()?;
        }
        Ok(())
    }

    /// Waits for the device to return one high-priority chain.
    pub(super) fn wait_one_forget(&mut self) -> Result<()> {
        let op = "FORGET";
        let timeout = self.opts.timeout;
        match self.dev.queue(HIPRIO_QUEUE).wait_used(timeout) {
            Ok(u) => {
                if let Some(slot) = u.token {
                    self.free_forget.push_back(slot as u16);
                }
                Ok(())
            }
            Err(QueueError::Timeout { .. }) => Err(FsError::Timeout {
                op,
                queue: HIPRIO_QUEUE,
                timeout,
            }),
            Err(source) => Err(FsError::Queue { op, source }),
        }
    }

    /// Puts a FORGET-like request (no reply) on the high-priority queue
    /// without waiting for it.
    pub(super) fn send_no_reply(&mut self, req: &wire::Request) -> Result<()> {
        let op = req.op;
        self.reap_forgets(op)?;
        // A chain takes up to two descriptors: wait for room if the device
        // still holds the slots or descriptors.
        while self.free_forget.is_empty() || self.dev.queue(HIPRIO_QUEUE).free_descs() < 2 {
            self.wait_one_forget()?;
        }
        let (_, bytes) = self.encode_within(req, 0, FORGET_SLOT)?;
        let slot = self.free_forget.pop_front().expect("a slot is free");
        let addr = self
            .forget_slots
            .unchecked_add(FORGET_SLOT * u64::from(slot));
        self.dev
            .mem()
            .write(addr, &bytes)
            .map_err(|source| FsError::Memory { op, source })?;
        let segs = match self.opts.layout {
            Layout::Single => vec![Seg::out(addr, bytes.len() as u32)],
            _ => vec![
                Seg::out(addr, wire::IN_HEADER_LEN as u32),
                Seg::out(
                    addr.unchecked_add(wire::IN_HEADER_LEN as u64),
                    (bytes.len() - wire::IN_HEADER_LEN) as u32,
                ),
            ],
        };
        let qerr = |source| FsError::Queue { op, source };
        let q = self.dev.queue(HIPRIO_QUEUE);
        if let Err(source) = q.add(&segs, u64::from(slot)) {
            self.free_forget.push_front(slot);
            return Err(qerr(source));
        }
        q.kick().map_err(qerr)?;
        Ok(())
    }

    /// The data of the last READ-like reply, gathered out of its descriptors.
    pub fn read_data(&self, len: u32) -> Result<Vec<u8>> {
        self.gather("read_data", &self.last_body, len as usize)
    }

    /// Where READ data lands, if the layout keeps it contiguous (not
    /// [`Layout::Fragmented`]): `len` bytes at this address after
    /// [`FsClient::read_into`] returned `len`.
    pub fn read_buf_addr(&self) -> Option<GuestAddress> {
        match self.opts.layout {
            Layout::Fragmented { .. } => None,
            _ => Some(self.rep.data),
        }
    }

    /// Copies `data` into the WRITE buffer (cut as the current layout
    /// wants); [`FsClient::write_from`] then sends it without copying.
    pub fn fill_write_buf(&mut self, data: &[u8]) -> Result<()> {
        let area = self.req;
        self.scatter("fill_write_buf", &area, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragmented_payload_is_cut_with_gaps() {
        let base = GuestAddress(0x10000);
        let layout = Layout::Fragmented {
            chunk: 4096,
            gap: 64,
        };
        let segs = payload_segs(layout, base, 10_000, true);
        let got: Vec<(u64, u32)> = segs.iter().map(|s| (s.addr.raw_value(), s.len)).collect();
        assert_eq!(
            got,
            vec![
                (0x10000, 4096),
                (0x10000 + 4160, 4096),
                (0x10000 + 8320, 1808)
            ]
        );
        assert!(segs.iter().all(|s| s.device_writes));
        assert_eq!(payload_span(layout, 10_000), 10_000 + 128);
        let last = segs.last().unwrap();
        assert_eq!(
            last.addr.raw_value() + u64::from(last.len) - base.raw_value(),
            payload_span(layout, 10_000)
        );
    }

    #[test]
    fn contiguous_layouts_use_one_descriptor() {
        let base = GuestAddress(0x2000);
        for layout in [Layout::Single, Layout::Linux] {
            assert_eq!(payload_segs(layout, base, 0, false), vec![]);
            assert_eq!(
                payload_segs(layout, base, 1 << 20, false),
                vec![Seg::out(base, 1 << 20)]
            );
            assert_eq!(payload_span(layout, 77), 77);
        }
    }
}
