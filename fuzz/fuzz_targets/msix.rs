//! MSI-X (devices/src/pci/msix.rs) from a sequence of operations: table
//! and PBA reads and writes at any offset and size, the control word,
//! triggers and resets. A recording sink checks what reaches the VMM:
//! a vector is delivered only while enabled and unmasked, with the
//! table's message, and the route last reported for each vector is the
//! one its state calls for.
//!
//! Input: byte 0: vectors; then 12-byte operations
//! `[kind][offset: le16][size][value: le64]`.

#![no_main]

use std::io;
use std::sync::{Arc, Mutex};

use devices::pci::{
    MsiMessage, MsiSink, MsixConfig, TriggerOutcome, MSIX_CONTROL_ENABLE,
    MSIX_CONTROL_FUNCTION_MASK, MSIX_ENTRY_SIZE,
};
use fuzz::Input;
use libfuzzer_sys::fuzz_target;

#[derive(Default)]
struct Recorder {
    routes: Mutex<Vec<Option<MsiMessage>>>,
    delivered: Mutex<Vec<(u16, MsiMessage)>>,
}

impl MsiSink for Recorder {
    fn update_route(&self, vector: u16, msg: Option<MsiMessage>) -> io::Result<()> {
        let mut r = self.routes.lock().unwrap();
        let v = usize::from(vector);
        assert!(v < r.len(), "route for vector {vector} of {}", r.len());
        r[v] = msg;
        Ok(())
    }

    fn deliver(&self, vector: u16, msg: MsiMessage) -> io::Result<()> {
        self.delivered.lock().unwrap().push((vector, msg));
        Ok(())
    }
}

const SIZES: [usize; 8] = [1, 2, 4, 8, 4, 8, 3, 16];

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(n) = input.u8() else { return };
    let sink = Arc::new(Recorder::default());
    sink.routes.lock().unwrap().resize(usize::from(n), None);
    let Ok(mut msix) = MsixConfig::new(u16::from(n), sink.clone()) else {
        return;
    };
    assert_eq!(msix.num_vectors(), u16::from(n));
    let table_len = msix.table_len();
    assert_eq!(table_len, u64::from(n) * MSIX_ENTRY_SIZE);
    while let (Some(kind), Some(offset), Some(size), Some(value)) =
        (input.u8(), input.u16(), input.u8(), input.u64())
    {
        let size = SIZES[usize::from(size & 7)];
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&value.to_le_bytes());
        bytes[8..].copy_from_slice(&(!value).to_le_bytes());
        let offset = u64::from(offset);
        let mut buf = [0u8; 16];
        let mut triggered = None;
        match kind % 8 {
            0 => msix.read_table(offset % (table_len + 32), &mut buf[..size]),
            1 => msix.write_table(offset % (table_len + 32), &bytes[..size]),
            2 => msix.read_pba(offset % 48, &mut buf[..size]),
            3 => msix.write_pba(offset % 48, &bytes[..size]),
            4 => {
                msix.set_control(value as u16 & (MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK))
            }
            5 => msix.set_control(value as u16),
            6 => {
                let v = (offset % (u64::from(n) + 2)) as u16;
                triggered = Some((v, msix.trigger(v)));
            }
            _ => msix.reset(),
        }
        // Whatever was delivered went to an enabled, unmasked vector with
        // its current message (a delivery happens when a trigger or an
        // unmask makes it due, so the state after the operation is the
        // state it was delivered in).
        for (v, msg) in sink.delivered.lock().unwrap().drain(..) {
            assert!(v < u16::from(n));
            assert!(msix.enabled() && !msix.function_masked() && !msix.is_masked(v));
            assert_eq!(msix.message(v), Some(msg));
        }
        if let Some((v, outcome)) = triggered {
            match outcome {
                TriggerOutcome::Delivered => {}
                TriggerOutcome::Pending => assert!(msix.is_pending(v)),
                TriggerOutcome::Dropped => assert!(!msix.enabled() || v >= u16::from(n)),
            }
        }
        let routes = sink.routes.lock().unwrap();
        for v in 0..u16::from(n) {
            let live = msix.enabled() && !msix.function_masked() && !msix.is_masked(v);
            // A vector that can be delivered has nothing pending.
            if live {
                assert!(!msix.is_pending(v), "vector {v} unmasked but pending");
            }
            let want = if live { msix.message(v) } else { None };
            assert_eq!(routes[usize::from(v)], want, "route of vector {v}");
            let mut b = [0u8; 1];
            msix.read_pba(u64::from(v / 8), &mut b);
            assert_eq!(b[0] >> (v % 8) & 1 == 1, msix.is_pending(v), "PBA bit {v}");
        }
    }
});
