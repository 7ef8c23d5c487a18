//! The virtio-fs backends driven by the userspace driver, with no VM: our
//! `virtiofsd` (every FUSE operation, xattrs and ACLs, listings, the thread
//! pool, the sandbox and host-side attacks, sessions, malformed requests,
//! Kata's and libvirt's command lines) and, as the reference, QEMU's C
//! virtiofsd. What every daemon shares (lifecycle, command line, contrib
//! files, seccomp, descriptor-level malformed rings) is in the `daemons`
//! binary.

mod acl;
mod c_virtiofsd;
mod cli;
mod common;
mod dirs;
mod inflight;
mod malformed;
mod ops;
mod pool;
mod restart;
mod security;
mod session;
