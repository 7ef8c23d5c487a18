//! virtio-net workloads through a backend that sends every frame back
//! (DPDK testpmd in macswap mode, or a loopback): frames per second for a
//! window of frames kept in flight on one queue pair.
//!
//! - [`tap`]: frames between the driver and a tap served by our
//!   `vhost-net-daemon`, next to a plain loop on the tap as the ceiling.
//! - [`host`]: the tap's host side: a raw tap queue, an AF_PACKET injector.

pub mod host;
pub mod tap;

use std::time::{Duration, Instant};

use super::Sample;
use crate::net::frame::UdpFrame;
use crate::net::{NetClient, NetError, VirtioNetHdr};

/// Frames posted per kick, and kept in flight.
pub const WINDOW: usize = 32;

/// One frame-rate workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetWorkload {
    /// Name in the table.
    pub name: &'static str,
    /// Ethernet frame length (no virtio header).
    pub frame_len: usize,
}

/// The standard set.
pub const STANDARD: [NetWorkload; 2] = [
    NetWorkload {
        name: "net-64b-tx+rx",
        frame_len: 64,
    },
    NetWorkload {
        name: "net-1500b-tx+rx",
        frame_len: 1500,
    },
];

impl NetWorkload {
    /// Runs for `duration` on pair 0. One op is one frame sent and received
    /// back; latency is the round trip of the window the frame went in.
    /// Frames the backend drops are not counted.
    pub fn run(&self, net: &mut NetClient, duration: Duration) -> Result<Sample, NetError> {
        let frame = UdpFrame::default().build_len(self.frame_len, 7);
        net.tx_prefill(0, &VirtioNetHdr::plain(), &frame)?;
        // Drain anything left from an earlier run.
        while net.try_recv(0)?.is_some() {}
        let mut s = Sample::default();
        let t0 = Instant::now();
        while t0.elapsed() < duration {
            let started = Instant::now();
            net.tx_reap(0)?;
            let sent = net.send_prefilled(0, WINDOW)? as u64;
            let mut got = 0;
            while got < sent {
                match net.recv_count(0, Duration::from_millis(200)) {
                    Ok(c) => {
                        got += c.frames;
                        s.bytes += c.bytes;
                    }
                    Err(e) if e.is_timeout() => break,
                    Err(e) => return Err(e),
                }
            }
            let rtt = started.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32;
            s.ops += got;
            s.lat_ns.extend(std::iter::repeat_n(rtt, got as usize));
        }
        s.elapsed = t0.elapsed();
        net.tx_reap(0)?;
        Ok(s)
    }
}
