//! Feature bits and the virtio-blk configuration space (virtio 1.2,
//! 5.2.4), built once per daemon from the image and the command line.

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_TOPOLOGY, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::disk::SECTOR;
use common::queue::MAX_CHAIN_DESCRIPTORS;

/// Largest DISCARD / WRITE_ZEROES segment, in sectors (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most segments in one DISCARD / WRITE_ZEROES request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Size of the configuration space we describe (up to `write_zeroes_may_unmap`
/// and its padding).
pub const CONFIG_LEN: usize = 60;

/// What the device looks like to the guest.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// Capacity in 512-byte sectors (whole logical blocks only).
    pub capacity: u64,
    /// Logical block size.
    pub blk_size: u32,
    /// Queue count.
    pub num_queues: u16,
    /// Largest queue the frontend may use.
    pub queue_size: u16,
    /// Read-only export.
    pub read_only: bool,
}

impl DeviceConfig {
    /// Builds the description of an image of `size` bytes.
    pub fn new(
        size: u64,
        blk_size: u32,
        num_queues: u16,
        queue_size: u16,
        read_only: bool,
    ) -> Self {
        let capacity = size / u64::from(blk_size) * u64::from(blk_size) / SECTOR;
        DeviceConfig {
            capacity,
            blk_size,
            num_queues,
            queue_size,
            read_only,
        }
    }

    /// Virtio feature bits offered.
    pub fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_TOPOLOGY)
            | (1 << VIRTIO_BLK_F_MQ)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        f
    }

    /// vhost-user protocol features offered. CONFIGURE_MEM_SLOTS lets a
    /// frontend add memory regions one by one (libblkio requires it).
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    /// The little-endian configuration space.
    pub fn bytes(&self) -> [u8; CONFIG_LEN] {
        let mut b = [0u8; CONFIG_LEN];
        let put32 = |b: &mut [u8; CONFIG_LEN], at: usize, v: u32| {
            b[at..at + 4].copy_from_slice(&v.to_le_bytes())
        };
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        // size_max (8) unused: SIZE_MAX is not offered.
        put32(
            &mut b,
            12,
            // A chain is at most MAX_CHAIN_DESCRIPTORS: header, data, status.
            u32::from(self.queue_size)
                .min(MAX_CHAIN_DESCRIPTORS as u32)
                .saturating_sub(2)
                .max(1),
        ); // seg_max
           // geometry (16..20) unused.
        put32(&mut b, 20, self.blk_size);
        b[24] = 0; // physical_block_exp
        b[25] = 0; // alignment_offset
        b[26..28].copy_from_slice(&1u16.to_le_bytes()); // min_io_size
        put32(&mut b, 28, 0); // opt_io_size
        b[32] = 0; // writeback (CONFIG_WCE not offered)
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        let align = self.blk_size / SECTOR as u32;
        put32(&mut b, 36, MAX_DISCARD_SECTORS);
        put32(&mut b, 40, MAX_DISCARD_SEG);
        put32(&mut b, 44, align);
        put32(&mut b, 48, MAX_DISCARD_SECTORS);
        put32(&mut b, 52, MAX_DISCARD_SEG);
        b[56] = 1; // write_zeroes_may_unmap
        b
    }

    /// GET_CONFIG: `size` bytes from `offset`, zeros past our fields.
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.bytes();
        (offset as usize..offset as usize + size as usize)
            .map(|i| bytes.get(i).copied().unwrap_or(0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_spec() {
        let c = DeviceConfig::new(10 * 4096 + 100, 4096, 4, 256, false);
        let b = c.bytes();
        assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 80);
        assert_eq!(u32::from_le_bytes(b[12..16].try_into().unwrap()), 254);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 4096);
        assert_eq!(u16::from_le_bytes(b[34..36].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(b[44..48].try_into().unwrap()), 8);
        assert_eq!(b[56], 1);
        assert_eq!(c.read(56, 8), vec![1, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn seg_max_leaves_a_chain_within_the_descriptor_bound() {
        for (queue_size, seg_max) in [(256, 254), (1024, 1022), (4096, 1022), (32768, 1022)] {
            let b = DeviceConfig::new(4096, 512, 1, queue_size, false).bytes();
            assert_eq!(
                u32::from_le_bytes(b[12..16].try_into().unwrap()),
                seg_max,
                "queue size {queue_size}"
            );
        }
    }

    #[test]
    fn read_only_drops_write_features() {
        let ro = DeviceConfig::new(4096, 512, 1, 128, true).features();
        assert_ne!(ro & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(ro & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(ro & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        let rw = DeviceConfig::new(4096, 512, 1, 128, false).features();
        assert_eq!(rw & (1 << VIRTIO_BLK_F_RO), 0);
        assert_ne!(rw & (1 << VIRTIO_BLK_F_DISCARD), 0);
    }
}
