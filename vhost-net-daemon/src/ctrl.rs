//! The control queue (virtio 1.2, 5.1.6.5): RX mode (promiscuous,
//! all-multicast), the MAC filter table, and the number of queue pairs in
//! use. Each command is a readable `{class, command, data}` and a writable
//! ack byte.

use std::ops::Deref;
use std::sync::Mutex;

use common::iov::{copy_in, copy_out, IoVecBuf};
use common::queue::MAX_CHAIN_DESCRIPTORS;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_ALLMULTI,
    VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemory;

use crate::config::Acked;

/// Longest command body we read (a MAC table of a few hundred entries).
const MAX_CMD: usize = 8192;

/// Which destination MACs reach the guest. A device starts promiscuous
/// (what QEMU does); a driver with CTRL_RX narrows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFilter {
    /// Everything passes.
    pub promisc: bool,
    /// Every multicast frame passes.
    pub allmulti: bool,
    /// Extra unicast addresses.
    pub unicast: Vec<[u8; 6]>,
    /// Multicast addresses.
    pub multicast: Vec<[u8; 6]>,
}

impl Default for RxFilter {
    fn default() -> Self {
        RxFilter {
            promisc: true,
            allmulti: false,
            unicast: Vec::new(),
            multicast: Vec::new(),
        }
    }
}

impl RxFilter {
    /// Whether a frame to `dest` goes to a guest whose address is `mac`.
    pub fn accepts(&self, mac: &[u8; 6], dest: &[u8; 6]) -> bool {
        if self.promisc || dest == &[0xff; 6] {
            return true;
        }
        if dest[0] & 1 != 0 {
            return self.allmulti || self.multicast.contains(dest);
        }
        dest == mac || self.unicast.contains(dest)
    }
}

/// A command's effect beyond the filter, for the backend to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing more.
    None,
    /// Use this many queue pairs.
    Pairs(u16),
}

/// Runs one command on `filter`; returns the ack and an effect.
pub fn execute(
    class: u8,
    cmd: u8,
    data: &[u8],
    acked: &Acked,
    max_pairs: u16,
    filter: &Mutex<RxFilter>,
) -> (u8, Effect) {
    let ok = VIRTIO_NET_OK as u8;
    let err = (VIRTIO_NET_ERR as u8, Effect::None);
    let mut f = filter.lock().unwrap_or_else(|e| e.into_inner());
    match (u32::from(class), u32::from(cmd)) {
        (VIRTIO_NET_CTRL_RX, c) if acked.ctrl_rx => {
            let [on] = data else { return err };
            match c {
                VIRTIO_NET_CTRL_RX_PROMISC => f.promisc = *on != 0,
                VIRTIO_NET_CTRL_RX_ALLMULTI => f.allmulti = *on != 0,
                _ => return err,
            }
            (ok, Effect::None)
        }
        (VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET) if acked.ctrl_rx => {
            let Some((unicast, rest)) = mac_table(data) else {
                return err;
            };
            let Some((multicast, rest)) = mac_table(rest) else {
                return err;
            };
            if !rest.is_empty() {
                return err;
            }
            f.unicast = unicast;
            f.multicast = multicast;
            (ok, Effect::None)
        }
        (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET) if acked.mq => {
            let Ok(b) = <[u8; 2]>::try_from(data) else {
                return err;
            };
            let n = u16::from_le_bytes(b);
            if n == 0 || n > max_pairs {
                return err;
            }
            (ok, Effect::Pairs(n))
        }
        _ => err,
    }
}

/// One `virtio_net_ctrl_mac`: a le32 count and that many addresses.
fn mac_table(data: &[u8]) -> Option<(Vec<[u8; 6]>, &[u8])> {
    let n = u32::from_le_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let bytes = n.checked_mul(6)?;
    let body = data.get(4..4usize.checked_add(bytes)?)?;
    let macs = body
        .chunks_exact(6)
        .map(|c| [c[0], c[1], c[2], c[3], c[4], c[5]])
        .collect();
    Some((macs, &data[4 + bytes..]))
}

/// Why a control chain was not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadCommand {
    /// Truncated chain or buffers outside guest memory.
    #[error("chain truncated or outside guest memory")]
    Chain,
    /// No room for the ack, or fewer than 2 readable bytes.
    #[error("no class/command header or no writable ack byte")]
    Shape,
    /// A body larger than any command.
    #[error("{0}-byte command body")]
    TooLong(usize),
}

/// Parses a control chain and runs it; returns the used length (1, the
/// ack byte) and the effect.
pub fn process<M>(
    chain: DescriptorChain<M>,
    mem: &M::Target,
    acked: &Acked,
    max_pairs: u16,
    filter: &Mutex<RxFilter>,
) -> Result<(u32, Effect), BadCommand>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let (mut r_buf, mut w_buf) = (IoVecBuf::default(), IoVecBuf::default());
    let (mut readable, mut writable) = (r_buf.walk(), w_buf.walk());
    let mut last_has_next = true;
    for desc in chain.take(MAX_CHAIN_DESCRIPTORS) {
        last_has_next = desc.has_next();
        if desc.len() == 0 {
            continue;
        }
        let list = if desc.is_write_only() {
            &mut writable
        } else if !writable.is_empty() {
            return Err(BadCommand::Shape);
        } else {
            &mut readable
        };
        list.push(mem, desc.addr(), desc.len())
            .map_err(|_| BadCommand::Chain)?;
        if readable.len() + writable.len() > 64 {
            return Err(BadCommand::Chain);
        }
    }
    if last_has_next {
        return Err(BadCommand::Chain);
    }
    let ack_byte = writable.take_last_byte().ok_or(BadCommand::Shape)?;
    let len = readable.total_len();
    if len < 2 {
        return Err(BadCommand::Shape);
    }
    if len > MAX_CMD + 2 {
        return Err(BadCommand::TooLong(len - 2));
    }
    let mut buf = vec![0u8; len];
    copy_out(readable.as_slice(), &mut buf);
    let (ack, effect) = execute(buf[0], buf[1], &buf[2..], acked, max_pairs, filter);
    copy_in(&[ack_byte], &[ack]);
    Ok((1, effect))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn acked() -> Acked {
        Acked {
            ctrl_rx: true,
            mq: true,
            ..Acked::default()
        }
    }

    #[test]
    fn the_filter_starts_promiscuous_and_narrows() {
        let f = Mutex::new(RxFilter::default());
        let other = [2, 0, 0, 0, 0, 9];
        assert!(f.lock().unwrap().accepts(&MAC, &other));
        let r = execute(
            VIRTIO_NET_CTRL_RX as u8,
            VIRTIO_NET_CTRL_RX_PROMISC as u8,
            &[0],
            &acked(),
            1,
            &f,
        );
        assert_eq!(r, (VIRTIO_NET_OK as u8, Effect::None));
        let g = f.lock().unwrap().clone();
        assert!(!g.accepts(&MAC, &other));
        assert!(g.accepts(&MAC, &MAC));
        assert!(g.accepts(&MAC, &[0xff; 6]));
        assert!(!g.accepts(&MAC, &[0x01, 0, 0x5e, 0, 0, 1]));
    }

    #[test]
    fn mac_tables_are_parsed_and_checked() {
        let f = Mutex::new(RxFilter {
            promisc: false,
            ..RxFilter::default()
        });
        let mut t = 1u32.to_le_bytes().to_vec();
        t.extend_from_slice(&[2, 0, 0, 0, 0, 7]);
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&[1, 0, 0x5e, 0, 0, 1]);
        let class = VIRTIO_NET_CTRL_MAC as u8;
        let cmd = VIRTIO_NET_CTRL_MAC_TABLE_SET as u8;
        assert_eq!(
            execute(class, cmd, &t, &acked(), 1, &f).0,
            VIRTIO_NET_OK as u8
        );
        let g = f.lock().unwrap().clone();
        assert!(g.accepts(&MAC, &[2, 0, 0, 0, 0, 7]));
        assert!(g.accepts(&MAC, &[1, 0, 0x5e, 0, 0, 1]));
        // A count larger than the data, trailing bytes, a huge count.
        for bad in [
            &t[..t.len() - 1],
            &[t.as_slice(), &[0]].concat()[..],
            &u32::MAX.to_le_bytes()[..],
        ] {
            assert_eq!(
                execute(class, cmd, bad, &acked(), 1, &f).0,
                VIRTIO_NET_ERR as u8
            );
        }
    }

    #[test]
    fn pairs_set_is_bounded_and_needs_mq() {
        let f = Mutex::new(RxFilter::default());
        let class = VIRTIO_NET_CTRL_MQ as u8;
        let cmd = VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8;
        assert_eq!(
            execute(class, cmd, &2u16.to_le_bytes(), &acked(), 2, &f),
            (VIRTIO_NET_OK as u8, Effect::Pairs(2))
        );
        for n in [0u16, 3] {
            assert_eq!(
                execute(class, cmd, &n.to_le_bytes(), &acked(), 2, &f).0,
                VIRTIO_NET_ERR as u8
            );
        }
        assert_eq!(
            execute(class, cmd, &1u16.to_le_bytes(), &Acked::default(), 2, &f).0,
            VIRTIO_NET_ERR as u8
        );
        assert_eq!(execute(99, 0, &[], &acked(), 2, &f).0, VIRTIO_NET_ERR as u8);
    }
}
