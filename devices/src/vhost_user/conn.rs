//! [`VhostUserConn`]: the requests the frontend sends, between the device
//! logic and the socket, so tests can put a fake backend behind it.

use std::os::unix::io::{AsRawFd, RawFd};

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserHeaderFlag};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

/// One vhost-user connection, seen from the frontend. Every method is
/// required; each is one request (and its reply or ack).
pub trait VhostUserConn: Send {
    /// Whether the following requests carry NEED_REPLY (REPLY_ACK).
    fn set_need_reply(&mut self, on: bool);
    /// SET_OWNER.
    fn set_owner(&mut self) -> vhost::Result<()>;
    /// RESET_OWNER.
    fn reset_owner(&mut self) -> vhost::Result<()>;
    /// RESET_DEVICE.
    fn reset_device(&mut self) -> vhost::Result<()>;
    /// GET_FEATURES.
    fn get_features(&mut self) -> vhost::Result<u64>;
    /// SET_FEATURES.
    fn set_features(&mut self, features: u64) -> vhost::Result<()>;
    /// GET_PROTOCOL_FEATURES.
    fn get_protocol_features(&mut self) -> vhost::Result<VhostUserProtocolFeatures>;
    /// SET_PROTOCOL_FEATURES.
    fn set_protocol_features(&mut self, features: VhostUserProtocolFeatures) -> vhost::Result<()>;
    /// GET_QUEUE_NUM.
    fn get_queue_num(&mut self) -> vhost::Result<u64>;
    /// SET_MEM_TABLE.
    fn set_mem_table(&mut self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()>;
    /// SET_VRING_NUM.
    fn set_vring_num(&mut self, queue: usize, num: u16) -> vhost::Result<()>;
    /// SET_VRING_ADDR (frontend userspace addresses).
    fn set_vring_addr(&mut self, queue: usize, config: &VringConfigData) -> vhost::Result<()>;
    /// SET_VRING_BASE.
    fn set_vring_base(&mut self, queue: usize, base: u16) -> vhost::Result<()>;
    /// GET_VRING_BASE (stops the ring).
    fn get_vring_base(&mut self, queue: usize) -> vhost::Result<u32>;
    /// SET_VRING_CALL.
    fn set_vring_call(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()>;
    /// SET_VRING_KICK.
    fn set_vring_kick(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()>;
    /// SET_VRING_ENABLE.
    fn set_vring_enable(&mut self, queue: usize, enable: bool) -> vhost::Result<()>;
    /// GET_CONFIG of `size` bytes at `offset`.
    fn get_config(&mut self, offset: u32, size: u32) -> vhost::Result<Vec<u8>>;
    /// SET_CONFIG of `data` at `offset`.
    fn set_config(&mut self, offset: u32, data: &[u8]) -> vhost::Result<()>;
    /// The socket, for the VMM's epoll; `None` when there is none (tests).
    fn raw_fd(&self) -> Option<RawFd>;
    /// Whether the peer hung up (or sent something unasked), without
    /// blocking.
    fn peer_gone(&self) -> bool;
}

impl VhostUserConn for Frontend {
    fn set_need_reply(&mut self, on: bool) {
        let flags = if on {
            VhostUserHeaderFlag::NEED_REPLY
        } else {
            VhostUserHeaderFlag::empty()
        };
        self.set_hdr_flags(flags);
    }

    fn set_owner(&mut self) -> vhost::Result<()> {
        VhostBackend::set_owner(self)
    }

    fn reset_owner(&mut self) -> vhost::Result<()> {
        VhostBackend::reset_owner(self)
    }

    fn reset_device(&mut self) -> vhost::Result<()> {
        VhostUserFrontend::reset_device(self)
    }

    fn get_features(&mut self) -> vhost::Result<u64> {
        VhostBackend::get_features(self)
    }

    fn set_features(&mut self, features: u64) -> vhost::Result<()> {
        VhostBackend::set_features(self, features)
    }

    fn get_protocol_features(&mut self) -> vhost::Result<VhostUserProtocolFeatures> {
        VhostUserFrontend::get_protocol_features(self)
    }

    fn set_protocol_features(&mut self, features: VhostUserProtocolFeatures) -> vhost::Result<()> {
        VhostUserFrontend::set_protocol_features(self, features)
    }

    fn get_queue_num(&mut self) -> vhost::Result<u64> {
        VhostUserFrontend::get_queue_num(self)
    }

    fn set_mem_table(&mut self, regions: &[VhostUserMemoryRegionInfo]) -> vhost::Result<()> {
        VhostBackend::set_mem_table(self, regions)
    }

    fn set_vring_num(&mut self, queue: usize, num: u16) -> vhost::Result<()> {
        VhostBackend::set_vring_num(self, queue, num)
    }

    fn set_vring_addr(&mut self, queue: usize, config: &VringConfigData) -> vhost::Result<()> {
        VhostBackend::set_vring_addr(self, queue, config)
    }

    fn set_vring_base(&mut self, queue: usize, base: u16) -> vhost::Result<()> {
        VhostBackend::set_vring_base(self, queue, base)
    }

    fn get_vring_base(&mut self, queue: usize) -> vhost::Result<u32> {
        VhostBackend::get_vring_base(self, queue)
    }

    fn set_vring_call(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        VhostBackend::set_vring_call(self, queue, fd)
    }

    fn set_vring_kick(&mut self, queue: usize, fd: &EventFd) -> vhost::Result<()> {
        VhostBackend::set_vring_kick(self, queue, fd)
    }

    fn set_vring_enable(&mut self, queue: usize, enable: bool) -> vhost::Result<()> {
        VhostUserFrontend::set_vring_enable(self, queue, enable)
    }

    fn get_config(&mut self, offset: u32, size: u32) -> vhost::Result<Vec<u8>> {
        let buf = vec![0u8; size as usize];
        VhostUserFrontend::get_config(self, offset, size, VhostUserConfigFlags::empty(), &buf)
            .map(|(_, data)| data)
    }

    fn set_config(&mut self, offset: u32, data: &[u8]) -> vhost::Result<()> {
        VhostUserFrontend::set_config(self, offset, VhostUserConfigFlags::empty(), data)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }

    fn peer_gone(&self) -> bool {
        super::peer_gone(self)
    }
}
