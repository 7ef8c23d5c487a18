//! What the device offers: feature bits, protocol features and the
//! virtio-net config space (virtio 1.2, 5.1.4).

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::*;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::tap::offload;

/// `virtio_net_config` as far as we fill it: mac, status,
/// max_virtqueue_pairs, mtu.
pub const CONFIG_LEN: usize = 12;
/// Ethernet header plus one VLAN tag.
pub const ETH_OVERHEAD: usize = 18;
/// Largest frame a GSO packet makes (64 KiB of IP plus Ethernet/VLAN).
pub const MAX_GSO_FRAME: usize = 65535 + ETH_OVERHEAD;

const fn bit(b: u32) -> u64 {
    1 << b
}

/// The device as configured on the command line, plus what the tap takes.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// Queue pairs.
    pub pairs: u16,
    /// Largest queue size.
    pub queue_size: u16,
    /// `--mtu`, advertised with VIRTIO_NET_F_MTU.
    pub mtu: Option<u16>,
    /// Offloads the tap accepts toward the guest (`tap::offload`).
    pub tap_offloads: u32,
}

impl NetConfig {
    /// Number of virtqueues: a pair each, then the control queue.
    pub fn num_queues(&self) -> usize {
        2 * usize::from(self.pairs) + 1
    }

    /// Index of the control queue.
    pub fn ctrl_queue(&self) -> usize {
        2 * usize::from(self.pairs)
    }

    /// Feature bits offered.
    pub fn features(&self) -> u64 {
        let mut f = bit(VIRTIO_F_VERSION_1)
            | bit(VIRTIO_RING_F_EVENT_IDX)
            | bit(VIRTIO_RING_F_INDIRECT_DESC)
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            // The tap takes partial checksums and GSO frames from us.
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6)
            | bit(VIRTIO_NET_F_HOST_ECN)
            | bit(VIRTIO_NET_F_CTRL_VQ)
            | bit(VIRTIO_NET_F_CTRL_RX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.pairs > 1 {
            f |= bit(VIRTIO_NET_F_MQ);
        }
        if self.mtu.is_some() {
            f |= bit(VIRTIO_NET_F_MTU);
        }
        // Toward the guest, only what the kernel agreed to hand us.
        if self.tap_offloads & offload::CSUM != 0 {
            f |= bit(VIRTIO_NET_F_GUEST_CSUM);
            if self.tap_offloads & offload::TSO4 != 0 {
                f |= bit(VIRTIO_NET_F_GUEST_TSO4);
            }
            if self.tap_offloads & offload::TSO6 != 0 {
                f |= bit(VIRTIO_NET_F_GUEST_TSO6);
            }
            if self.tap_offloads & offload::TSO_ECN != 0
                && self.tap_offloads & (offload::TSO4 | offload::TSO6) != 0
            {
                f |= bit(VIRTIO_NET_F_GUEST_ECN);
            }
        }
        f
    }

    /// vhost-user protocol features. Not CONFIGURE_MEM_SLOTS: QEMU 7.2
    /// sends the same ADD_MEM_REG once per queue pair, which
    /// vhost-user-backend refuses as overlapping (fixed in QEMU 8.0);
    /// SET_MEM_TABLE comes once.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
    }

    /// The config space bytes `offset..offset + size` (what lies past
    /// the end reads as nothing).
    pub fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut c = [0u8; CONFIG_LEN];
        c[0..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c[8..10].copy_from_slice(&self.pairs.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.unwrap_or(0).to_le_bytes());
        let start = (offset as usize).min(CONFIG_LEN);
        let end = (offset as usize)
            .saturating_add(size as usize)
            .min(CONFIG_LEN);
        c[start..end].to_vec()
    }
}

/// What the driver acked, as the data path needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Acked {
    /// Merged RX buffers.
    pub mrg_rxbuf: bool,
    /// The guest takes GSO frames (so RX may need 64 KiB).
    pub guest_gso: bool,
    /// Partial checksums from the guest.
    pub csum: bool,
    /// HOST_TSO4 / HOST_TSO6 / HOST_ECN.
    pub tso4: bool,
    /// See `tso4`.
    pub tso6: bool,
    /// See `tso4`.
    pub ecn: bool,
    /// The control queue's MQ command.
    pub mq: bool,
    /// The control queue's RX-mode commands.
    pub ctrl_rx: bool,
    /// TUNSETOFFLOAD flags for the tap.
    pub tap_offloads: u32,
}

impl Acked {
    /// From the acked feature bits.
    pub fn from_features(f: u64) -> Self {
        let has = |b: u32| f & bit(b) != 0;
        let mut tap = 0;
        if has(VIRTIO_NET_F_GUEST_CSUM) {
            tap |= offload::CSUM;
            if has(VIRTIO_NET_F_GUEST_TSO4) {
                tap |= offload::TSO4;
            }
            if has(VIRTIO_NET_F_GUEST_TSO6) {
                tap |= offload::TSO6;
            }
            if has(VIRTIO_NET_F_GUEST_ECN) && tap & (offload::TSO4 | offload::TSO6) != 0 {
                tap |= offload::TSO_ECN;
            }
        }
        Acked {
            mrg_rxbuf: has(VIRTIO_NET_F_MRG_RXBUF),
            guest_gso: tap & (offload::TSO4 | offload::TSO6) != 0,
            csum: has(VIRTIO_NET_F_CSUM),
            tso4: has(VIRTIO_NET_F_HOST_TSO4),
            tso6: has(VIRTIO_NET_F_HOST_TSO6),
            ecn: has(VIRTIO_NET_F_HOST_ECN),
            mq: has(VIRTIO_NET_F_MQ) && has(VIRTIO_NET_F_CTRL_VQ),
            ctrl_rx: has(VIRTIO_NET_F_CTRL_RX) && has(VIRTIO_NET_F_CTRL_VQ),
            tap_offloads: tap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: u16, tap_offloads: u32) -> NetConfig {
        NetConfig {
            mac: [2, 0, 0, 0, 0, 1],
            pairs,
            queue_size: 256,
            mtu: Some(9000),
            tap_offloads,
        }
    }

    #[test]
    fn config_space_layout() {
        let c = cfg(4, 0).read(0, 64);
        assert_eq!(c.len(), CONFIG_LEN);
        assert_eq!(&c[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "link up");
        assert_eq!(u16::from_le_bytes([c[8], c[9]]), 4);
        assert_eq!(u16::from_le_bytes([c[10], c[11]]), 9000);
        assert_eq!(cfg(1, 0).read(8, 2), 1u16.to_le_bytes());
        assert!(cfg(1, 0).read(100, 4).is_empty());
    }

    #[test]
    fn guest_offloads_follow_the_tap() {
        let none = cfg(1, 0).features();
        assert_eq!(none & bit(VIRTIO_NET_F_GUEST_CSUM), 0);
        assert_eq!(none & bit(VIRTIO_NET_F_GUEST_TSO4), 0);
        assert_eq!(none & bit(VIRTIO_NET_F_MQ), 0);
        let all = cfg(
            2,
            offload::CSUM | offload::TSO4 | offload::TSO6 | offload::TSO_ECN,
        );
        let f = all.features();
        for b in [
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
            VIRTIO_NET_F_MQ,
            VIRTIO_NET_F_MTU,
        ] {
            assert_ne!(f & bit(b), 0, "bit {b}");
        }
        assert_eq!(all.num_queues(), 5);
        assert_eq!(all.ctrl_queue(), 4);
    }

    #[test]
    fn acked_features_map_to_tap_offloads() {
        let a = Acked::from_features(
            bit(VIRTIO_NET_F_GUEST_CSUM)
                | bit(VIRTIO_NET_F_GUEST_TSO4)
                | bit(VIRTIO_NET_F_GUEST_ECN),
        );
        assert_eq!(
            a.tap_offloads,
            offload::CSUM | offload::TSO4 | offload::TSO_ECN
        );
        assert!(a.guest_gso);
        // TSO without GUEST_CSUM is not a valid combination: nothing set.
        let a = Acked::from_features(bit(VIRTIO_NET_F_GUEST_TSO4));
        assert_eq!(a.tap_offloads, 0);
        assert!(!a.guest_gso);
    }
}
