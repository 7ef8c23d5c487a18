//! Frames tagged so that a test finds its own among whatever else crosses
//! a tap (the kernel's own traffic, frames of earlier checks): a tag at
//! the start of a UDP payload, and the waits for a tagged frame on the
//! tap's host side or at the driver, each way.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::frame::{parse_udp, pattern, Mac, UdpFrame, UDP_FRAME_OVERHEAD};
use super::{NetClient, RxFrame, VirtioNetHdr};
use crate::netns::PacketSocket;

/// How long one frame may take to cross.
pub const T: Duration = Duration::from_secs(5);
/// The guest's MAC address in tagged frames.
pub const GUEST_MAC: Mac = [0x02, 0, 0, 0, 0, 0x10];
/// [`GUEST_MAC`] as a daemon's `--mac` takes it.
pub const GUEST_MAC_ARG: &str = "02:00:00:00:00:10";
/// The source of frames the host injects, the target of the guest's.
pub const HOST_MAC: Mac = [0x02, 0, 0, 0, 0, 0x20];

static NEXT_TAG: AtomicU32 = AtomicU32::new(0);

/// A tag no other frame of this process carries.
pub fn unique_tag(what: &str) -> String {
    format!("{what}-{}", NEXT_TAG.fetch_add(1, Ordering::Relaxed))
}

/// A UDP frame from `src` to `dst` of exactly `len` bytes whose payload
/// starts with `tag` and `;` (the rest is [`pattern`]). Panics if `len`
/// cannot hold the headers and the tag.
pub fn tagged(src: Mac, dst: Mac, tag: &str, len: usize) -> Vec<u8> {
    let mut payload = format!("{tag};").into_bytes();
    let room = len
        .checked_sub(UDP_FRAME_OVERHEAD + payload.len())
        .expect("frame long enough for the headers and the tag");
    payload.extend_from_slice(&pattern(room, tag.len() as u8));
    UdpFrame {
        src_mac: src,
        dst_mac: dst,
        ..UdpFrame::default()
    }
    .build(&payload)
}

/// A frame from the guest to the host of `len` bytes.
pub fn to_host(tag: &str, len: usize) -> Vec<u8> {
    tagged(GUEST_MAC, HOST_MAC, tag, len)
}

/// A frame from the host to the guest of `len` bytes.
pub fn to_guest(tag: &str, len: usize) -> Vec<u8> {
    tagged(HOST_MAC, GUEST_MAC, tag, len)
}

/// Whether `frame` is a UDP frame made by [`tagged`] with `tag`.
pub fn has_tag(frame: &[u8], tag: &str) -> bool {
    parse_udp(frame).is_some_and(|v| {
        v.payload.starts_with(tag.as_bytes()) && v.payload.get(tag.len()) == Some(&b';')
    })
}

/// The frame tagged `tag` as it arrives on the tap (panics after [`T`]).
pub fn tap_expect(pkt: &PacketSocket, tag: &str) -> Vec<u8> {
    pkt.recv_matching(T, |b| has_tag(b, tag))
        .unwrap()
        .unwrap_or_else(|| panic!("frame {tag:?} never reached the tap"))
}

/// Every frame that reaches the tap from the daemon before the one tagged
/// `tag` (panics if that one does not come within [`T`]).
pub fn tap_frames_before(pkt: &PacketSocket, tag: &str) -> Vec<Vec<u8>> {
    let mut before = Vec::new();
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = pkt.recv_matching(left, |_| true).unwrap();
        let frame = got.unwrap_or_else(|| {
            panic!(
                "frame {tag:?} never reached the tap ({} others did)",
                before.len()
            )
        });
        if has_tag(&frame, tag) {
            return before;
        }
        before.push(frame);
    }
}

/// Frames the driver receives on `pair` until one passes `last`; returns
/// them all, that one last (panics if it does not come within `timeout`).
pub fn driver_until(
    net: &mut NetClient,
    pair: u16,
    timeout: Duration,
    mut last: impl FnMut(&[u8]) -> bool,
) -> Vec<RxFrame> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match net.recv(pair, left) {
            Ok(f) => {
                let done = last(&f.1);
                got.push(f);
                if done {
                    return got;
                }
            }
            Err(e) if e.is_timeout() => panic!(
                "the awaited frame never reached the driver on pair {pair}; got {} others",
                got.len()
            ),
            Err(e) => panic!("RX on pair {pair}: {e}"),
        }
    }
}

/// The frame tagged `tag` as the driver receives it on `pair`, skipping
/// others (panics after [`T`]).
pub fn driver_expect(net: &mut NetClient, pair: u16, tag: &str) -> RxFrame {
    driver_until(net, pair, T, |f| has_tag(f, tag))
        .pop()
        .expect("at least the awaited frame")
}

/// Every frame the driver receives on `pair` before the one tagged `tag`.
pub fn driver_frames_before(net: &mut NetClient, pair: u16, tag: &str) -> Vec<RxFrame> {
    let mut all = driver_until(net, pair, T, |f| has_tag(f, tag));
    all.pop();
    all
}

/// Sends a 100-byte frame tagged `tag` on `pair` and checks it arrives on
/// the tap byte for byte.
pub fn assert_tx(net: &mut NetClient, pkt: &PacketSocket, pair: u16, tag: &str) {
    let frame = to_host(tag, 100);
    net.send(pair, &VirtioNetHdr::plain(), &frame)
        .unwrap_or_else(|e| panic!("TX on pair {pair}: {e}"));
    assert!(tap_expect(pkt, tag) == frame, "frame {tag:?} changed on TX");
}

/// Injects a 100-byte frame tagged `tag` on the tap and checks the driver
/// receives it on `pair`, byte for byte, with a plain header.
pub fn assert_rx(net: &mut NetClient, pkt: &PacketSocket, pair: u16, tag: &str) {
    let frame = to_guest(tag, 100);
    pkt.send(&frame).unwrap();
    let (hdr, got) = driver_expect(net, pair, tag);
    assert!(got == frame, "frame {tag:?} changed on RX");
    assert_eq!(hdr.gso_type, 0, "{hdr:?}");
    assert!(hdr.num_buffers >= 1, "{hdr:?}");
}
