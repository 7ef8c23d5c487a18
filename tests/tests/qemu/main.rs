//! Third-party frontends: QEMU 7.2 TCG booting Debian's kernel (and the
//! freestanding test guest) on our daemons through `vhost-user-*-pci`,
//! the reference backends under the same guest kit (`references`), and
//! QEMU's reconnect on a restarted daemon.

mod blk;
mod fs;
mod fw;
mod net;
mod reconnect;
mod references;
