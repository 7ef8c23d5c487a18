//! The device configuration layouts the frontend shows when a backend does
//! not serve GET_CONFIG, and reads back to compare with what it asked
//! for: `virtio_net_config` (from `virtio-bindings`),
//! `virtio_fs_config` (virtio 1.2 §5.11.4; `virtio-bindings` has none) and
//! `virtio_vsock_config` (§5.10.4).

use std::mem::{offset_of, size_of};

use virtio_bindings::virtio_blk::virtio_blk_config;
use virtio_bindings::virtio_net::{virtio_net_config, VIRTIO_NET_S_LINK_UP};

/// `virtio_fs_config.tag`: the tag's bytes, NUL-padded (no NUL when it
/// fills all 36).
pub const FS_TAG_LEN: usize = 36;
/// Offset of `virtio_fs_config.num_request_queues` (le32).
const FS_NUM_REQUEST_QUEUES: usize = FS_TAG_LEN;
/// Length of `virtio_fs_config`.
pub const FS_CONFIG_LEN: usize = FS_NUM_REQUEST_QUEUES + size_of::<u32>();

/// Length of `virtio_net_config` up to `mtu` (what the feature bits the
/// backends offer make valid).
pub const NET_CONFIG_LEN: usize = offset_of!(virtio_net_config, speed);
const NET_MAC: usize = offset_of!(virtio_net_config, mac);
const NET_STATUS: usize = offset_of!(virtio_net_config, status);
const NET_MAX_PAIRS: usize = offset_of!(virtio_net_config, max_virtqueue_pairs);
/// Length of a MAC address.
pub const MAC_LEN: usize = 6;

/// Length of `virtio_blk_config` up to `write_zeroes_may_unmap` and its
/// padding.
pub const BLK_CONFIG_LEN: usize = offset_of!(virtio_blk_config, max_secure_erase_sectors);

/// Length of `virtio_vsock_config`: `guest_cid` (le64).
pub const VSOCK_CONFIG_LEN: usize = size_of::<u64>();
/// Length of `virtio_console_config`: `cols`, `rows` (le16), `max_nr_ports`,
/// `emerg_wr` (le32).
pub const CONSOLE_CONFIG_LEN: usize = 12;

/// A `virtio_vsock_config`: the guest's context id.
pub fn vsock_config(guest_cid: u64) -> Vec<u8> {
    guest_cid.to_le_bytes().to_vec()
}

/// The `guest_cid` of a `virtio_vsock_config` (None if it is short).
pub fn vsock_cid(config: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(
        config.get(..VSOCK_CONFIG_LEN)?.try_into().ok()?,
    ))
}

/// A `virtio_fs_config`: `tag` (cut to [`FS_TAG_LEN`] bytes) and the
/// number of request queues.
pub fn fs_config(tag: Option<&str>, num_request_queues: u32) -> Vec<u8> {
    let mut config = vec![0; FS_CONFIG_LEN];
    if let Some(tag) = tag {
        let n = tag.len().min(FS_TAG_LEN);
        config[..n].copy_from_slice(&tag.as_bytes()[..n]);
    }
    config[FS_NUM_REQUEST_QUEUES..FS_CONFIG_LEN].copy_from_slice(&num_request_queues.to_le_bytes());
    config
}

/// The tag of a `virtio_fs_config` (up to its first NUL).
pub fn fs_tag(config: &[u8]) -> String {
    let tag = &config[..config.len().min(FS_TAG_LEN)];
    let end = tag.iter().position(|b| *b == 0).unwrap_or(tag.len());
    String::from_utf8_lossy(&tag[..end]).into_owned()
}

/// A `virtio_net_config` up to `mtu`: `mac` (zeros if none), link up,
/// `max_virtqueue_pairs`.
pub fn net_config(mac: Option<[u8; MAC_LEN]>, max_virtqueue_pairs: u16) -> Vec<u8> {
    let mut config = vec![0; NET_CONFIG_LEN];
    if let Some(mac) = mac {
        config[NET_MAC..NET_MAC + MAC_LEN].copy_from_slice(&mac);
    }
    let link_up = VIRTIO_NET_S_LINK_UP as u16;
    config[NET_STATUS..NET_STATUS + 2].copy_from_slice(&link_up.to_le_bytes());
    config[NET_MAX_PAIRS..NET_MAX_PAIRS + 2].copy_from_slice(&max_virtqueue_pairs.to_le_bytes());
    config
}

/// The MAC of a `virtio_net_config`, as `52:54:00:12:34:56`.
pub fn net_mac(config: &[u8]) -> String {
    config[NET_MAC..config.len().min(NET_MAC + MAC_LEN)]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_the_structs_up_to_what_is_used() {
        assert_eq!(
            (FS_CONFIG_LEN, NET_CONFIG_LEN, BLK_CONFIG_LEN),
            (40, 12, 60)
        );
    }

    #[test]
    fn fs_config_carries_the_tag_and_request_queues() {
        let c = fs_config(Some("myshare"), 2);
        assert_eq!(c.len(), 40);
        assert_eq!(&c[..7], b"myshare");
        assert!(c[7..36].iter().all(|b| *b == 0));
        assert_eq!(&c[36..], &2u32.to_le_bytes());
        assert_eq!(fs_tag(&c), "myshare");
        let full = "t".repeat(40);
        assert_eq!(fs_tag(&fs_config(Some(&full), 1)), "t".repeat(36));
        assert_eq!(fs_tag(&fs_config(None, 1)), "");
    }

    #[test]
    fn vsock_config_is_the_guest_cid_le64() {
        let c = vsock_config(0x1_0000_0003);
        assert_eq!(c, [3, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(vsock_cid(&c), Some(0x1_0000_0003));
        assert_eq!(vsock_cid(&c[..7]), None);
    }

    #[test]
    fn net_config_carries_the_mac_link_up_and_pairs() {
        let c = net_config(Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef]), 2);
        assert_eq!(c, [0x52, 0x54, 0, 0xab, 0xcd, 0xef, 1, 0, 2, 0, 0, 0]);
        assert_eq!(net_mac(&c), "52:54:00:ab:cd:ef");
        assert_eq!(&net_config(None, 1)[..6], &[0; 6]);
    }
}
