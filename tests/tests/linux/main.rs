//! A real Linux guest under our `vmm` with our three daemons: the share,
//! the disk and the NIC in use (`devices`), and the guest riding out
//! killed daemons (`reconnect`). Each test boots its guest with
//! [`vu_driver::linux::OurLinux::for_test`], which lets one Linux guest run
//! at a time in this binary: where KVM emulates, the guest kernel takes a
//! whole core.

mod devices;
mod reconnect;
