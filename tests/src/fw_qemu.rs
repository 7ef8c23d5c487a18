//! The freestanding test guest (`tests/guest-fw`, see [`crate::vmm`]) booted
//! by QEMU under TCG (`-kernel` takes its PVH ELF) with vhost-user devices
//! on sockets: its virtio drivers are checked against our daemons with a
//! VMM nobody here wrote. Guest RAM is a shared memory backend, as
//! vhost-user needs.
//!
//! QEMU 7.2 under TCG crashes when a vhost-user netdev backs a
//! `virtio-net-pci` with MSI-X, so the net device gets `vectors=0` (the
//! guest polls it); it also gets no option ROM (iPXE only slows the boot).

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::fixture::{find_binary, qemu_escape, qemu_shared_memory_args};
use crate::process::{run_bounded, Finished};
use crate::vmm::test_guest;

/// A QEMU command line for the test guest, built device by device.
#[derive(Debug, Clone)]
pub struct FwQemu {
    memory_mib: u32,
    devices: Vec<OsString>,
    next_id: usize,
    timeout: Duration,
}

impl Default for FwQemu {
    fn default() -> Self {
        Self::new()
    }
}

impl FwQemu {
    /// 256 MiB, no devices, a 60 s limit.
    pub fn new() -> Self {
        FwQemu {
            memory_mib: 256,
            devices: Vec::new(),
            next_id: 0,
            timeout: Duration::from_secs(60),
        }
    }

    /// How long QEMU may run before it is killed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds QEMU option `name` (`-device`, ...) with `value`.
    fn option(&mut self, name: &str, value: String) {
        self.devices.push(name.into());
        self.devices.push(value.into());
    }

    fn chardev(&mut self, socket: &Path) -> String {
        let id = format!("c{}", self.next_id);
        self.next_id += 1;
        let path = qemu_escape(socket.as_os_str());
        self.option("-chardev", format!("socket,id={id},path={path}"));
        id
    }

    /// A `vhost-user-blk-pci` on `socket`.
    pub fn blk(mut self, socket: &Path) -> Self {
        let id = self.chardev(socket);
        self.option("-device", format!("vhost-user-blk-pci,chardev={id}"));
        self
    }

    /// A `vhost-user-fs-pci` with `tag` on `socket`.
    pub fn fs(mut self, socket: &Path, tag: &str) -> Self {
        let id = self.chardev(socket);
        self.option(
            "-device",
            format!("vhost-user-fs-pci,chardev={id},tag={tag}"),
        );
        self
    }

    /// A `virtio-net-pci` with MAC `mac` on a vhost-user netdev on
    /// `socket`, without MSI-X (see the module documentation).
    pub fn net(mut self, socket: &Path, mac: &str) -> Self {
        let id = self.chardev(socket);
        self.option("-netdev", format!("vhost-user,id=n{id},chardev={id}"));
        self.option(
            "-device",
            format!("virtio-net-pci,netdev=n{id},mac={mac},vectors=0,romfile="),
        );
        self
    }

    /// QEMU's arguments for booting `guest`.
    pub fn args(&self, guest: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "-machine",
            "q35,accel=tcg",
            "-nographic",
            "-nodefaults",
            "-serial",
            "stdio",
            "-no-reboot",
        ]
        .iter()
        .map(Into::into)
        .collect();
        args.extend(qemu_shared_memory_args(self.memory_mib).map(OsString::from));
        args.push("-kernel".into());
        args.push(guest.into());
        args.extend(self.devices.iter().cloned());
        args
    }

    /// Builds the test guest, boots it and waits until QEMU exits (the
    /// guest powers off) or the limit passes (then `status` is None).
    pub fn run(&self) -> Result<Finished, String> {
        let guest = test_guest()?;
        let qemu = find_binary("qemu-system-x86_64").map_err(|e| e.to_string())?;
        let mut cmd = Command::new(qemu);
        cmd.args(self.args(&guest));
        run_bounded(&mut cmd, self.timeout).map_err(|e| format!("running QEMU: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_device_has_no_msix_and_ids_are_distinct() {
        let q = FwQemu::new()
            .blk(Path::new("/tmp/b,1.sock"))
            .net(Path::new("/tmp/n.sock"), "02:00:00:00:00:22");
        let args: Vec<String> = q
            .args(Path::new("/g"))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(
            joined.contains("socket,id=c0,path=/tmp/b,,1.sock"),
            "{joined}"
        );
        assert!(joined.contains("vhost-user-blk-pci,chardev=c0"), "{joined}");
        assert!(joined.contains("vhost-user,id=nc1,chardev=c1"), "{joined}");
        assert!(
            joined.contains("virtio-net-pci,netdev=nc1,mac=02:00:00:00:00:22,vectors=0"),
            "{joined}"
        );
        assert!(joined.contains("-kernel /g"), "{joined}");
    }
}
