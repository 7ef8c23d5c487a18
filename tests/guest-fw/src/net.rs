//! virtio-net (spec 5.1): the MAC from the device configuration, two
//! receive buffers posted on queue 0, and one broadcast Ethernet frame with
//! a recognizable payload sent on transmit queue 1. With `net-loop` on the
//! command line it then sends the frame again until the power button,
//! printing `net-loop: round N ok` after each is sent (each waited for up
//! to ~1 min: a restarting backend) and at the end
//! `net-loop: stopped after N rounds, no error` (or the first error).

use crate::io::{serial, serial_hex_fixed};
use crate::virtio::{report_msi, Device};
use crate::virtq::{alloc, put, Buf};

const F_MAC: u64 = 1 << 5;
/// struct virtio_net_hdr with num_buffers: 12 bytes under VERSION_1.
const HDR_LEN: u32 = 12;
const RX_BUF: u32 = HDR_LEN + 1514;
/// The frame's EtherType (IEEE local experimental 1).
pub const ETHER_TYPE: u16 = 0x88b5;
/// The frame's payload, after the Ethernet header.
pub const PAYLOAD: &[u8] = b"guest-fw frame through virtio-net";
/// Short frames are padded to the Ethernet minimum (without the FCS).
const MIN_FRAME: usize = 60;

pub fn run(d: &mut Device) -> Result<(), &'static str> {
    let features = d.negotiate(F_MAC)?;
    let mut mac = [0x02, 0, 0, 0, 0, 0x01];
    if features & F_MAC != 0 {
        for (i, b) in mac.iter_mut().enumerate() {
            *b = d.cfg8(i as u64);
        }
    }
    let mut rx = d.queue(0)?;
    let mut tx = d.queue(1)?;
    d.driver_ok();

    for _ in 0..2 {
        let buf = alloc(RX_BUF as usize, 8).ok_or("out of memory")?;
        rx.add(&[Buf(buf, RX_BUF, true)]);
    }
    rx.kick();

    let mut frame = [0u8; MIN_FRAME];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac);
    frame[12..14].copy_from_slice(&ETHER_TYPE.to_be_bytes());
    frame[14..14 + PAYLOAD.len()].copy_from_slice(PAYLOAD);
    let len = HDR_LEN + MIN_FRAME as u32;
    // The header stays zero: no checksum offload, no GSO.
    let buf = alloc(len as usize, 8).ok_or("out of memory")?;
    put(buf + HDR_LEN as u64, &frame);
    tx.call(&[Buf(buf, len, false)])
        .ok_or("the frame was not sent")?;

    serial(b"net: mac ");
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            serial(b":");
        }
        serial_hex_fixed(*b as u64, 2);
    }
    serial(b"; sent a frame");
    report_msi(&tx);
    serial(b"\n");
    if crate::wait::cmdline_has(b"net-loop") {
        crate::wait::rounds(b"net-loop", |_| {
            tx.add(&[Buf(buf, len, false)]);
            tx.kick();
            (0..crate::blk::LOOP_WAITS)
                .any(|_| tx.wait().is_some())
                .then_some(())
                .ok_or("a frame was not sent")
        })?;
    }
    Ok(())
}
