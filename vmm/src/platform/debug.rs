//! The debug ports: 0x80 (POST codes) and 0x402 (QEMU's debugcon),
//! logged with the time since the VMM started.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::bus::BusDevice;

pub const POST_PORT: u64 = 0x80;
pub const DEBUGCON_PORT: u64 = 0x402;

/// Port 0x80 (POST codes) and 0x402 (debugcon): logged with the time since
/// the VMM started, so the guest's first port write times the boot.
pub struct DebugPort {
    start: Instant,
    line: Vec<u8>,
    seen_post: bool,
}

impl DebugPort {
    pub fn new(start: Instant) -> Self {
        DebugPort {
            start,
            line: Vec::new(),
            seen_post: false,
        }
    }

    /// Handles a write to `port`.
    pub fn write_port(&mut self, port: u64, value: u8) {
        let ms = self.start.elapsed().as_secs_f64() * 1000.0;
        if port == POST_PORT {
            if !self.seen_post {
                log::info!("guest wrote {value:#04x} to port 0x80 at {ms:.1} ms");
                self.seen_post = true;
            } else {
                log::debug!("port 0x80: {value:#04x} at {ms:.1} ms");
            }
        } else if value == b'\n' || self.line.len() >= 256 {
            log::info!(
                "debugcon at {ms:.1} ms: {}",
                String::from_utf8_lossy(&self.line).trim_end()
            );
            self.line.clear();
        } else {
            self.line.push(value);
        }
    }
}

/// One port of a shared [`DebugPort`].
pub struct DebugPortAt {
    pub port: u64,
    pub dev: Arc<Mutex<DebugPort>>,
}

impl BusDevice for DebugPortAt {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // QEMU's debugcon reads back 0xe9 so guests can detect it.
        data.fill(if self.port == DEBUGCON_PORT { 0xe9 } else { 0 });
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut dev = self.dev.lock().unwrap_or_else(|e| e.into_inner());
        for &b in data {
            dev.write_port(self.port, b);
        }
    }
}
