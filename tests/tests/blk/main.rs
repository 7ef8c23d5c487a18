//! The block backends driven by the userspace driver, with no VM: our
//! `vhost-blk-daemon` (data path, device, malformed rings, block devices,
//! `--poll-us`) and, as references, qemu-storage-daemon and libblkio as a
//! third-party frontend. What every daemon shares (lifecycle, command line,
//! contrib files, seccomp, descriptor-level malformed rings) is in the
//! `daemons` binary.

mod blockdev;
mod cli;
mod common;
mod device;
mod engines;
mod inflight;
mod io;
mod libblkio;
mod malformed;
mod poll;
mod qsd;
mod sandbox;
