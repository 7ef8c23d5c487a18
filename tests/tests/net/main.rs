//! The virtio-net backends driven by the userspace driver, with no VM: our
//! `vhost-net-daemon` on a tap in a test network namespace (frames,
//! offloads, queue pairs, the control queue, RX under load, malformed
//! rings, frames and commands, its tap options) and, as references, DPDK's
//! testpmd and an in-process `vhost-user-backend` loopback. What every
//! daemon shares (lifecycle, command line, contrib files, seccomp,
//! descriptor-level malformed rings) is in the `daemons` binary.

mod cli;
mod common;
mod dpdk;
mod frames;
mod lifecycle;
mod loopback;
mod malformed;
mod rx_batch;
mod sandbox;
