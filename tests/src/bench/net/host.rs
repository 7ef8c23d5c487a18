//! The host side of the tap workloads: a tap queue opened directly (what a
//! plain program reading and writing the tap does), an AF_PACKET socket
//! that injects frames into the tap as fast as the kernel takes them, the
//! TCP frames of the TSO workload, and per-thread CPU time.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use virtio_bindings::virtio_net::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4};

use crate::net::frame::{fold, internet_checksum, pattern, sum16, Mac};
use crate::net::{VirtioNetHdr, NET_HDR_LEN};
use crate::netns::{bind_packet_socket, context, NetNs, NetNsError};

/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
/// `SOL_PACKET` option: hand frames to the driver, skipping the qdisc.
const PACKET_QDISC_BYPASS: libc::c_int = 20;
/// Frames per `sendmmsg`.
pub const INJECT_BATCH: usize = 64;

fn ns_err(e: NetNsError) -> io::Error {
    io::Error::other(e)
}

/// CPU seconds the calling thread has used.
pub fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Lets the calling thread's short sleeps end on time (1 µs timer slack
/// instead of 50 µs), so a paced sender does not let a queue run dry.
pub fn tight_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer; no memory is passed.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
}

/// One queue of an existing tap, opened with `IFF_VNET_HDR` and a 12-byte
/// `virtio_net_hdr_v1`, non-blocking: every read and write carries the
/// header, as the daemon's do.
#[derive(Debug)]
pub struct TapFd {
    fd: OwnedFd,
}

impl TapFd {
    /// Attaches to tap `name` in `ns` (made with `ip tuntap add ... vnet_hdr`,
    /// single queue, and not opened by anyone else).
    pub fn open(ns: &NetNs, name: &str) -> io::Result<TapFd> {
        let fd = crate::tap::open_queue(ns, name, crate::tap::QUEUE_FLAGS)
            .map_err(|e| context(&format!("TUNSETIFF {name}"), e))?;
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if fl < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
                return Err(context("O_NONBLOCK", io::Error::last_os_error()));
            }
        }
        let sz: libc::c_int = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer passed.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &sz) } < 0 {
            return Err(context("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        Ok(TapFd { fd })
    }

    /// Writes one header + frame; the tap hands it to the host stack.
    pub fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Reads one header + frame; `WouldBlock` when the tap is empty.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Waits up to `timeout` for a frame to read.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        poll_in(self.fd.as_raw_fd(), timeout)
    }
}

fn poll_in(fd: libc::c_int, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(r > 0)
}

/// A send-only AF_PACKET socket on one interface (protocol 0: it receives
/// nothing, so it costs nothing while frames flow the other way), with
/// `PACKET_QDISC_BYPASS`: a frame goes straight to the tap's transmit
/// routine, which queues it for whoever reads the tap.
#[derive(Debug)]
pub struct Injector {
    fd: OwnedFd,
}

impl Injector {
    /// Opens the socket on `ifname` inside `ns`.
    pub fn open(ns: &NetNs, ifname: &str) -> io::Result<Injector> {
        let ifname = ifname.to_owned();
        ns.enter(move || Self::bind(&ifname)).map_err(ns_err)?
    }

    fn bind(ifname: &str) -> io::Result<Injector> {
        let fd = bind_packet_socket(ifname, 0)?;
        let one: libc::c_int = 1;
        // SAFETY: the option value is one int that outlives the call.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if r < 0 {
            return Err(context("PACKET_QDISC_BYPASS", io::Error::last_os_error()));
        }
        Ok(Injector { fd })
    }

    /// Sends `n` (at most [`INJECT_BATCH`]) copies of `frame` with one
    /// `sendmmsg`; returns how many the kernel took (`ENOBUFS` when the
    /// tap's queue is full).
    pub fn send_copies(&self, frame: &[u8], n: usize) -> io::Result<usize> {
        let n = n.min(INJECT_BATCH);
        let mut iov = libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        };
        // SAFETY: mmsghdr is plain data; all-zero is a valid value.
        let mut msgs: [libc::mmsghdr; INJECT_BATCH] = unsafe { std::mem::zeroed() };
        for m in &mut msgs[..n] {
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `n` headers point at one iovec over `frame`,
        // which outlives the call; the kernel only reads the frame.
        let r = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), n as u32, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r as usize)
    }
}

/// A TCPv4 frame of `frame_len` bytes (Ethernet header included) from
/// `src` to `dst`, sent the way Linux sends TSO: the header asks for
/// `VIRTIO_NET_HDR_GSO_TCPV4` with segments of `mss` bytes and a partial
/// checksum (the TCP checksum field holds the pseudo-header sum).
pub fn tcp_gso_frame(src: Mac, dst: Mac, frame_len: usize, mss: u16) -> (VirtioNetHdr, Vec<u8>) {
    const HDRS: usize = 14 + 20 + 20;
    assert!(
        (HDRS..=14 + 65535).contains(&frame_len),
        "bad TSO frame length"
    );
    let ip_len = (frame_len - 14) as u16;
    let tcp_len = ip_len - 20;
    let (src_ip, dst_ip) = ([10, 0, 0, 2], [10, 0, 0, 1]);
    let mut f = Vec::with_capacity(frame_len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip = [0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    f.extend_from_slice(&ip);
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&src_ip);
    f.extend_from_slice(&dst_ip);
    let ip_csum = internet_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&ip_csum.to_be_bytes());
    // Ports 40000 -> 5201, seq 1, ack 1, data offset 5, ACK|PSH, window 65535.
    f.extend_from_slice(&[0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 1, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(&pattern(frame_len - HDRS, 3));
    let mut pseudo = sum16(&src_ip, 0);
    pseudo = sum16(&dst_ip, pseudo);
    pseudo += 6 + u32::from(tcp_len);
    f[50..52].copy_from_slice(&fold(pseudo).to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        hdr_len: HDRS as u16,
        gso_size: mss,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    };
    (hdr, f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::frame::internet_checksum;

    #[test]
    fn tso_frame_is_well_formed() {
        let (hdr, f) = tcp_gso_frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], 65536, 1448);
        assert_eq!(f.len(), 65536);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 65522);
        assert_eq!(internet_checksum(&f[14..34]), 0);
        assert_eq!(hdr.gso_type, VIRTIO_NET_HDR_GSO_TCPV4 as u8);
        assert_eq!(usize::from(hdr.csum_start + hdr.csum_offset), 50);
        // Completing the partial checksum gives a valid TCP segment.
        let mut g = f.clone();
        assert!(crate::net::frame::complete_partial_csum(&hdr, &mut g));
        let mut pseudo = sum16(&g[26..34], 0);
        pseudo += 6 + 65502;
        assert_eq!(!fold(sum16(&g[34..], pseudo)), 0);
    }

    #[test]
    fn thread_cpu_time_advances() {
        let a = thread_cpu_s();
        let mut x = 0u64;
        while thread_cpu_s() - a < 0.01 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
    }
}
