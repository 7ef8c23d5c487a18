//! MSI-X: the vector table (16-byte entries: address low/high, data, vector
//! control with its mask bit), the pending bit array, and the capability's
//! function-mask and enable bits. A vector fired while masked sets its
//! pending bit and is delivered when it is unmasked.
//!
//! Delivery goes through [`MsiSink`]: the VMM maps each vector to a KVM GSI
//! route and an irqfd (`update_route`) and injects directly (`deliver`) for
//! interrupts the VMM itself raises, such as a configuration change.

use std::io;
use std::sync::Arc;

use log::{debug, warn};
use lograte::RateLimited;
use thiserror::Error;

use super::le_value;

/// MSI-X capability ID.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Length of the MSI-X capability, ID and next pointer included.
pub const MSIX_CAP_LEN: usize = 12;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// The most vectors a function can have.
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// "No vector" in virtio's vector registers.
pub const MSIX_NO_VECTOR: u16 = 0xffff;
/// Message control: MSI-X enable.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask (all vectors masked).
pub const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const ENTRY_CONTROL_MASKED: u32 = 1;

/// Errors creating an MSI-X function.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MsixError {
    /// A function has 1..=2048 vectors.
    #[error("{0} MSI-X vectors requested, 1..=2048 are possible")]
    VectorCount(u16),
}

/// One MSI message: what the device writes where.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (for x86, 0xFEEx_xxxx).
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// Where MSI-X interrupts go; the VMM implements it with KVM GSI routes and
/// irqfds, tests with a counting double.
pub trait MsiSink: Send + Sync {
    /// The route of `vector` changed: `Some(msg)` when it may be delivered
    /// with that message, `None` when it is masked (function or vector mask)
    /// or MSI-X is disabled. An irqfd bound to a masked vector must not
    /// inject; when re-attached, KVM delivers an interrupt signalled
    /// meanwhile.
    fn update_route(&self, vector: u16, msg: Option<MsiMessage>) -> io::Result<()>;

    /// Injects `msg` for `vector` now.
    fn deliver(&self, vector: u16, msg: MsiMessage) -> io::Result<()>;
}

/// A sink that routes nothing and drops every interrupt, for tests and
/// fuzz targets that drive a device but do not look at its interrupts.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct NullMsiSink;

impl MsiSink for NullMsiSink {
    fn update_route(&self, _vector: u16, _msg: Option<MsiMessage>) -> io::Result<()> {
        Ok(())
    }

    fn deliver(&self, _vector: u16, _msg: MsiMessage) -> io::Result<()> {
        Ok(())
    }
}

/// What [`MsixConfig::trigger`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TriggerOutcome {
    /// Handed to the sink.
    Delivered,
    /// Masked: the pending bit is set.
    Pending,
    /// MSI-X is disabled or the vector does not exist.
    Dropped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    address: u64,
    data: u32,
    control: u32,
}

impl Entry {
    const RESET: Entry = Entry {
        address: 0,
        data: 0,
        control: ENTRY_CONTROL_MASKED,
    };

    fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.address.to_le_bytes());
        b[8..12].copy_from_slice(&self.data.to_le_bytes());
        b[12..].copy_from_slice(&self.control.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; 16]) -> Self {
        Entry {
            address: le_value(&b[..8]),
            data: le_value(&b[8..12]) as u32,
            // Only the mask bit is writable; the rest is reserved.
            control: le_value(&b[12..]) as u32 & ENTRY_CONTROL_MASKED,
        }
    }

    fn masked(self) -> bool {
        self.control & ENTRY_CONTROL_MASKED != 0
    }

    fn message(self) -> MsiMessage {
        MsiMessage {
            address: self.address,
            data: self.data,
        }
    }
}

/// The MSI-X state of one function.
pub struct MsixConfig {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    /// The route last reported to the sink, per vector.
    routed: Vec<Option<MsiMessage>>,
    sink: Arc<dyn MsiSink>,
    sink_errors: RateLimited,
    bad_vectors: RateLimited,
}

impl std::fmt::Debug for MsixConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixConfig")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish_non_exhaustive()
    }
}

impl MsixConfig {
    /// `num_vectors` vectors, all masked, MSI-X disabled.
    pub fn new(num_vectors: u16, sink: Arc<dyn MsiSink>) -> Result<Self, MsixError> {
        if num_vectors == 0 || num_vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::VectorCount(num_vectors));
        }
        let n = usize::from(num_vectors);
        Ok(Self {
            entries: vec![Entry::RESET; n],
            pending: vec![0; n.div_ceil(64)],
            enabled: false,
            function_masked: false,
            routed: vec![None; n],
            sink,
            sink_errors: RateLimited::default(),
            bad_vectors: RateLimited::default(),
        })
    }

    /// Number of vectors.
    pub fn num_vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Bytes the table takes in its BAR.
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes the PBA takes in its BAR.
    pub fn pba_len(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The capability body (after ID and next pointer) and its write mask,
    /// for [`PciConfig::add_capability`](super::PciConfig::add_capability)
    /// with [`MSIX_CAP_ID`]. Offsets must be 8-byte aligned.
    pub fn capability(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> ([u8; 10], [u8; 10]) {
        let mut body = [0u8; 10];
        body[..2].copy_from_slice(&(self.num_vectors() - 1).to_le_bytes());
        body[2..6].copy_from_slice(&((table_offset & !7) | u32::from(table_bar & 7)).to_le_bytes());
        body[6..].copy_from_slice(&((pba_offset & !7) | u32::from(pba_bar & 7)).to_le_bytes());
        let mut wmask = [0u8; 10];
        wmask[..2]
            .copy_from_slice(&(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK).to_le_bytes());
        (body, wmask)
    }

    /// Applies the capability's message control register after a guest
    /// write to it.
    pub fn set_control(&mut self, control: u16) {
        let enabled = control & MSIX_CONTROL_ENABLE != 0;
        let function_masked = control & MSIX_CONTROL_FUNCTION_MASK != 0;
        if (enabled, function_masked) != (self.enabled, self.function_masked) {
            self.enabled = enabled;
            self.function_masked = function_masked;
            for v in 0..self.entries.len() {
                self.sync(v);
            }
        }
    }

    /// MSI-X enable bit.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Function mask bit.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether `vector` would not be delivered now (masked, function masked,
    /// disabled or out of range).
    pub fn is_masked(&self, vector: u16) -> bool {
        self.entries
            .get(usize::from(vector))
            .is_none_or(|e| !self.enabled || self.function_masked || e.masked())
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pending
            .get(v / 64)
            .is_some_and(|w| w & (1 << (v % 64)) != 0)
    }

    /// The message programmed for `vector`.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        self.entries.get(usize::from(vector)).map(|e| e.message())
    }

    /// Fires `vector`: delivered when unmasked, pending when masked, dropped
    /// when MSI-X is disabled or the vector does not exist.
    pub fn trigger(&mut self, vector: u16) -> TriggerOutcome {
        let v = usize::from(vector);
        let Some(entry) = self.entries.get(v).copied() else {
            if let Some(n) = self.bad_vectors.hit() {
                debug!("MSI-X vector {vector} does not exist ({n} times)");
            }
            return TriggerOutcome::Dropped;
        };
        if !self.enabled {
            return TriggerOutcome::Dropped;
        }
        if self.function_masked || entry.masked() {
            self.pending[v / 64] |= 1 << (v % 64);
            return TriggerOutcome::Pending;
        }
        self.deliver(vector, entry.message());
        TriggerOutcome::Delivered
    }

    /// A guest read of the table at `offset` from its start; bytes past the
    /// table read as 0.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| {
                    let e = self
                        .entries
                        .get(usize::try_from(o / MSIX_ENTRY_SIZE).ok()?)?;
                    Some(e.to_bytes()[(o % MSIX_ENTRY_SIZE) as usize])
                })
                .unwrap_or(0);
        }
    }

    /// A guest write to the table; any size and alignment, bytes past the
    /// table are dropped. Each touched entry is re-evaluated once.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            let Some(o) = offset.checked_add(i as u64) else {
                return;
            };
            let Some(v) = usize::try_from(o / MSIX_ENTRY_SIZE)
                .ok()
                .filter(|v| *v < self.entries.len())
            else {
                return;
            };
            let start = (o % MSIX_ENTRY_SIZE) as usize;
            let n = (16 - start).min(data.len() - i);
            let mut bytes = self.entries[v].to_bytes();
            bytes[start..start + n].copy_from_slice(&data[i..i + n]);
            self.entries[v] = Entry::from_bytes(&bytes);
            self.sync(v);
            i += n;
        }
    }

    /// A guest read of the PBA; bytes past it read as 0.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| {
                    let w = self.pending.get(usize::try_from(o / 8).ok()?)?;
                    Some((w >> (8 * (o % 8))) as u8)
                })
                .unwrap_or(0);
        }
    }

    /// A guest write to the PBA: read-only, ignored.
    pub fn write_pba(&mut self, offset: u64, data: &[u8]) {
        debug!(
            "ignored {}-byte write to the MSI-X PBA at {offset:#x}",
            data.len()
        );
    }

    /// Back to power-on state: disabled, every entry zero and masked, no
    /// pending bits; routes withdrawn.
    pub fn reset(&mut self) {
        self.enabled = false;
        self.function_masked = false;
        self.entries.fill(Entry::RESET);
        self.pending.fill(0);
        for v in 0..self.entries.len() {
            self.sync(v);
        }
    }

    /// Reports `v`'s route if it changed, and delivers its pending
    /// interrupt once it is deliverable.
    fn sync(&mut self, v: usize) {
        let e = self.entries[v];
        let route = (self.enabled && !self.function_masked && !e.masked()).then(|| e.message());
        let vector = v as u16;
        if route != self.routed[v] {
            self.routed[v] = route;
            if let Err(err) = self.sink.update_route(vector, route) {
                if let Some(n) = self.sink_errors.hit() {
                    warn!("MSI-X vector {vector}: route update failed ({n} times): {err}");
                }
            }
        }
        if let Some(msg) = route {
            if self.is_pending(vector) {
                self.pending[v / 64] &= !(1 << (v % 64));
                self.deliver(vector, msg);
            }
        }
    }

    fn deliver(&self, vector: u16, msg: MsiMessage) {
        if let Err(err) = self.sink.deliver(vector, msg) {
            if let Some(n) = self.sink_errors.hit() {
                warn!("MSI-X vector {vector}: delivery failed ({n} times): {err}");
            }
        }
    }
}

/// A counting [`MsiSink`] for tests.
#[cfg(test)]
pub(crate) mod test_sink {
    use std::sync::Mutex;

    use super::*;

    /// Records every call.
    #[derive(Default)]
    pub(crate) struct CountingSink {
        pub(crate) routes: Mutex<Vec<(u16, Option<MsiMessage>)>>,
        pub(crate) delivered: Mutex<Vec<(u16, MsiMessage)>>,
    }

    impl CountingSink {
        pub(crate) fn delivered(&self) -> Vec<(u16, MsiMessage)> {
            self.delivered.lock().unwrap().clone()
        }

        pub(crate) fn routes(&self) -> Vec<(u16, Option<MsiMessage>)> {
            self.routes.lock().unwrap().clone()
        }
    }

    impl MsiSink for CountingSink {
        fn update_route(&self, vector: u16, msg: Option<MsiMessage>) -> io::Result<()> {
            self.routes.lock().unwrap().push((vector, msg));
            Ok(())
        }

        fn deliver(&self, vector: u16, msg: MsiMessage) -> io::Result<()> {
            self.delivered.lock().unwrap().push((vector, msg));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_sink::CountingSink;
    use super::*;

    fn read_le(f: impl Fn(&mut [u8]), len: usize) -> u64 {
        let mut b = [0u8; 8];
        f(&mut b[..len]);
        u64::from_le_bytes(b)
    }

    fn setup(n: u16) -> (MsixConfig, Arc<CountingSink>) {
        let sink = Arc::new(CountingSink::default());
        (MsixConfig::new(n, sink.clone()).unwrap(), sink)
    }

    fn program(m: &mut MsixConfig, v: u16, addr: u64, data: u32) {
        let base = u64::from(v) * MSIX_ENTRY_SIZE;
        m.write_table(base, &(addr as u32).to_le_bytes());
        m.write_table(base + 4, &((addr >> 32) as u32).to_le_bytes());
        m.write_table(base + 8, &data.to_le_bytes());
    }

    fn set_mask(m: &mut MsixConfig, v: u16, masked: bool) {
        m.write_table(
            u64::from(v) * MSIX_ENTRY_SIZE + 12,
            &u32::from(masked).to_le_bytes(),
        );
    }

    const MSG: MsiMessage = MsiMessage {
        address: 0xfee0_0000,
        data: 0x41,
    };

    #[test]
    fn vector_count_limits() {
        let sink = Arc::new(CountingSink::default());
        assert_eq!(
            MsixConfig::new(0, sink.clone()).unwrap_err(),
            MsixError::VectorCount(0)
        );
        assert!(MsixConfig::new(2049, sink.clone()).is_err());
        let m = MsixConfig::new(65, sink).unwrap();
        assert_eq!((m.table_len(), m.pba_len()), (65 * 16, 16));
    }

    #[test]
    fn capability_layout() {
        let (m, _) = setup(3);
        let (body, wmask) = m.capability(0, 0x4000, 0, 0x5000);
        assert_eq!(&body[..2], &2u16.to_le_bytes());
        assert_eq!(le_value(&body[2..6]), 0x4000);
        assert_eq!(le_value(&body[6..]), 0x5000);
        assert_eq!(le_value(&wmask[..2]), 0xc000);
        assert_eq!(&wmask[2..], &[0; 8]);
    }

    #[test]
    fn entries_reset_masked_and_round_trip() {
        let (mut m, _) = setup(2);
        let mut b = [0u8; 16];
        m.read_table(16, &mut b);
        assert_eq!(b, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        program(&mut m, 1, 0x1_fee0_1000, 0x1234);
        assert_eq!(
            m.message(1),
            Some(MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x1234
            })
        );
        // 64-bit access to the address, reserved control bits read 0.
        m.write_table(16, &0xfee0_2000u64.to_le_bytes());
        m.write_table(28, &0xffff_fffeu32.to_le_bytes());
        assert_eq!(read_le(|d| m.read_table(16, d), 8), 0xfee0_2000);
        assert_eq!(read_le(|d| m.read_table(28, d), 4), 0);
        assert_eq!(read_le(|d| m.read_table(30, d), 1), 0);
    }

    #[test]
    fn odd_and_out_of_range_accesses() {
        let (mut m, _) = setup(2);
        program(&mut m, 0, 0xfee0_0000, 0xaabbccdd);
        // A misaligned write straddling two entries touches both.
        m.write_table(12, &[0, 0, 0, 0, 0x11, 0x22]);
        assert_eq!(m.message(1).unwrap().address, 0x2211);
        let mut b = [0xffu8; 3];
        m.read_table(9, &mut b);
        assert_eq!(b, [0xcc, 0xbb, 0xaa]);
        m.read_table(31, &mut b);
        assert_eq!(b, [0, 0, 0]);
        m.read_table(u64::MAX, &mut b);
        m.write_table(u64::MAX - 1, &[1, 2, 3, 4]);
        m.write_table(32, &[1; 8]);
        m.read_pba(u64::MAX, &mut b);
        m.write_pba(0, &[0xff; 8]);
        assert!(!m.is_pending(0));
        assert_eq!(m.trigger(7), TriggerOutcome::Dropped);
        assert!(m.is_masked(7));
        assert!(!m.is_pending(7));
    }

    #[test]
    fn disabled_drops_and_enable_routes_unmasked_vectors() {
        let (mut m, sink) = setup(2);
        program(&mut m, 0, MSG.address, MSG.data);
        set_mask(&mut m, 0, false);
        assert_eq!(m.trigger(0), TriggerOutcome::Dropped);
        assert!(sink.routes().is_empty(), "nothing routed while disabled");
        m.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(sink.routes(), vec![(0, Some(MSG))]);
        assert_eq!(m.trigger(0), TriggerOutcome::Delivered);
        assert_eq!(sink.delivered(), vec![(0, MSG)]);
        m.set_control(0);
        assert_eq!(sink.routes().last(), Some(&(0, None)));
    }

    #[test]
    fn masked_vector_pends_and_unmask_delivers_once() {
        let (mut m, sink) = setup(4);
        m.set_control(MSIX_CONTROL_ENABLE);
        program(&mut m, 2, MSG.address, MSG.data);
        assert_eq!(m.trigger(2), TriggerOutcome::Pending);
        assert_eq!(m.trigger(2), TriggerOutcome::Pending);
        assert!(m.is_pending(2));
        assert_eq!(read_le(|d| m.read_pba(0, d), 8), 0b100);
        assert!(sink.delivered().is_empty());
        set_mask(&mut m, 2, false);
        assert_eq!(
            sink.delivered(),
            vec![(2, MSG)],
            "two fires while masked, one delivery"
        );
        assert!(!m.is_pending(2));
        assert_eq!(sink.routes(), vec![(2, Some(MSG))]);
        set_mask(&mut m, 2, true);
        assert_eq!(sink.routes().last(), Some(&(2, None)));
        // Rewriting the same mask does not re-report the route.
        set_mask(&mut m, 2, true);
        assert_eq!(sink.routes().len(), 2);
    }

    #[test]
    fn function_mask_holds_all_vectors() {
        let (mut m, sink) = setup(3);
        for v in 0..3 {
            program(&mut m, v, MSG.address, MSG.data + u32::from(v));
            set_mask(&mut m, v, false);
        }
        m.set_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
        assert!(sink.routes().is_empty());
        assert!(m.function_masked() && m.enabled());
        assert_eq!(m.trigger(0), TriggerOutcome::Pending);
        assert_eq!(m.trigger(2), TriggerOutcome::Pending);
        assert!(m.is_masked(1));
        m.set_control(MSIX_CONTROL_ENABLE);
        let delivered: Vec<u16> = sink.delivered().iter().map(|d| d.0).collect();
        assert_eq!(delivered, vec![0, 2]);
        assert_eq!(sink.routes().len(), 3);
        assert!(!m.is_masked(1));
    }

    #[test]
    fn message_change_while_unmasked_updates_route() {
        let (mut m, sink) = setup(1);
        m.set_control(MSIX_CONTROL_ENABLE);
        set_mask(&mut m, 0, false);
        m.write_table(8, &7u32.to_le_bytes());
        let last = sink.routes().last().copied().unwrap();
        assert_eq!(
            last,
            (
                0,
                Some(MsiMessage {
                    address: 0,
                    data: 7
                })
            )
        );
    }

    #[test]
    fn reset_withdraws_routes_and_pending() {
        let (mut m, sink) = setup(2);
        m.set_control(MSIX_CONTROL_ENABLE);
        program(&mut m, 0, MSG.address, MSG.data);
        set_mask(&mut m, 0, false);
        m.set_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
        m.trigger(0);
        m.reset();
        assert!(!m.enabled() && !m.is_pending(0));
        assert_eq!(m.message(0), Some(MsiMessage::default()));
        assert_eq!(sink.routes().last(), Some(&(0, None)));
        assert!(sink.delivered().is_empty());
    }
}
