//! The userspace vhost-user driver: it plays both the VMM and the guest, with
//! no VM at all, so any vhost-user backend can be tested and measured.
//!
//! - [`memory`]: shared "guest" memory handed over with SET_MEM_TABLE.
//! - [`virtqueue`]: the driver side of a split virtqueue.
//! - [`device`]: connection, feature negotiation, vring setup, config space.
//! - [`blk`], [`fs`], [`net`]: device helpers on top; [`tap`]: a net daemon's tap seen
//!   from the host (queue descriptors for `--tap-fd`, frames each way).
//! - [`fixture`]: reference daemons as RAII process guards; [`guest`]: the QEMU guest test kit;
//!   [`linux`]: the Linux our `vmm` boots (Debian's kernel, or the small kit on an emulating KVM).
//! - [`process`]: a child seen through `/proc`, inherited descriptors, bounded runs.
//! - [`systemd`]: the receiving end of `NOTIFY_SOCKET`, socket activation, unit files;
//!   [`contrib`]: the project's systemd units and QEMU descriptors;
//!   [`lifecycle`]: leak, signal, notify and watchdog checks any daemon's tests make.
//! - [`under_test`]: our three daemons described for the suites every daemon runs.
//! - [`vsock`]: the host's side of a hybrid vsock (`CONNECT <port>`) and the guests' echo server.

pub mod bench;
pub mod blk;
pub mod contrib;
pub mod crash;
pub mod device;
pub mod fixture;
pub mod fs;
pub mod fw_devices;
pub mod fw_qemu;
pub mod guest;
pub mod http;
pub mod image;
pub mod kvm_probe;
pub mod lifecycle;
pub mod linux;
pub mod memory;
pub mod net;
pub mod netns;
pub mod ours;
pub mod process;
pub mod systemd;
pub mod tap;
pub mod under_test;
pub mod virtqueue;
pub mod vmm;
pub mod vsock;

/// `e` and each of its causes, `: `-separated on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
