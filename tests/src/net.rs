//! virtio-net on top of [`VuDevice`]: queue pairs (RX = 2k, TX = 2k+1, the
//! control queue last), feature negotiation, config space, TX slots, an RX
//! ring kept full (merged buffers or not), control commands and test frames.
//!
//! - [`hdr`]: the `virtio_net_hdr_v1` header.
//! - [`frame`]: Ethernet/IPv4/UDP frames, good and malformed.
//! - [`rings`]: TX slots, RX buffers and the control buffer over any [`VirtQueue`].
//! - [`tagged`]: frames a test finds among others, and the waits for them each way.
//! - [`testpmd`]: DPDK's `dpdk-testpmd` as a third-party vhost-user net backend.
//!
//! ```no_run
//! # fn main() -> Result<(), vu_driver::net::NetError> {
//! use std::time::Duration;
//! use vu_driver::net::{frame::UdpFrame, NetClient, NetOptions, VirtioNetHdr};
//! let mut net = NetClient::connect("/tmp/net.sock".as_ref(), &NetOptions::default())?;
//! net.send(0, &VirtioNetHdr::plain(), &UdpFrame::default().build(b"hello"))?;
//! let (_hdr, frame) = net.recv(0, Duration::from_secs(1))?;
//! # Ok(()) }
//! ```

pub mod frame;
pub mod hdr;
pub mod rings;
pub mod tagged;
pub mod testpmd;

#[cfg(test)]
mod tests;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vhost::vhost_user::{Frontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;
use virtio_bindings::virtio_net::{
    virtio_net_config, VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_ALLMULTI, VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};

use crate::device::{connect_socket, DeviceError, DeviceOptions, VuDevice};
use crate::memory::MemoryError;
use crate::virtqueue::QueueError;

pub use frame::Mac;
pub use hdr::{VirtioNetHdr, NET_HDR_LEN};
pub use rings::{CtrlQueue, RxCount, RxFrame, RxLayout, RxRing, TxLayout, TxRing};

const fn bit(b: u32) -> u64 {
    1 << b
}

/// The device feature bits this driver knows how to use.
pub const NET_DRIVER_FEATURES: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_MTU)
    | bit(VIRTIO_NET_F_STATUS)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
    | bit(VIRTIO_NET_F_CTRL_VQ)
    | bit(VIRTIO_NET_F_CTRL_RX)
    | bit(VIRTIO_NET_F_MQ);

/// Errors of the virtio-net driver; each names the queue and operation.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Connecting, negotiating or a vhost-user request failed.
    #[error("vhost-user net device")]
    Device(#[from] DeviceError),
    /// Probing the offered features before negotiation failed.
    #[error("probing features (GET_FEATURES)")]
    Probe(#[source] vhost::Error),
    /// Cloning the socket for the feature probe failed.
    #[error("cloning the socket for the feature probe")]
    ProbeSocket(#[source] std::io::Error),
    /// A virtqueue operation failed.
    #[error("{op} on queue {queue}")]
    Queue {
        /// Queue index.
        queue: u16,
        /// What was being done.
        op: &'static str,
        /// The queue's error.
        #[source]
        source: QueueError,
    },
    /// Guest memory could not be allocated, read or written.
    #[error("{op} on queue {queue}")]
    Memory {
        /// Queue index.
        queue: u16,
        /// What was being done.
        op: &'static str,
        /// The memory error.
        #[source]
        source: MemoryError,
    },
    /// A queue pair that was not started.
    #[error("queue pair {pair} was not started ({pairs} were)")]
    NoSuchPair {
        /// The pair asked for.
        pair: u16,
        /// Pairs started.
        pairs: u16,
    },
    /// More than one pair without VIRTIO_NET_F_MQ, or more than the device has.
    #[error("{wanted} queue pairs wanted, the device allows {max}")]
    TooManyPairs {
        /// Pairs asked for.
        wanted: u16,
        /// Pairs possible.
        max: u16,
    },
    /// A control command without VIRTIO_NET_F_CTRL_VQ.
    #[error("no control queue: VIRTIO_NET_F_CTRL_VQ was not negotiated")]
    NoCtrlQueue,
    /// Data larger than the buffer meant for it.
    #[error("{op} on queue {queue}: {len} bytes do not fit in {max}")]
    TooLarge {
        /// Queue index.
        queue: u16,
        /// What was being done.
        op: &'static str,
        /// Bytes given.
        len: usize,
        /// Bytes that fit.
        max: usize,
    },
    /// [`NetClient::send_prefilled`] before [`NetClient::tx_prefill`].
    #[error("prefilled send on queue {queue} before tx_prefill (or after another send)")]
    NotPrefilled {
        /// Queue index.
        queue: u16,
    },
    /// The device returned a chain this driver did not post.
    #[error("{op} on queue {queue}: used id {head} is not a buffer of this ring")]
    UnknownBuffer {
        /// Queue index.
        queue: u16,
        /// What was being done.
        op: &'static str,
        /// The id it returned.
        head: u16,
    },
    /// The device reported fewer bytes than the virtio-net header in the first buffer of a frame.
    #[error("RX on queue {queue}: used length {len} is shorter than the 12-byte header")]
    RxShort {
        /// Queue index.
        queue: u16,
        /// Used length reported.
        len: u32,
    },
    /// The device reported more bytes than the buffer holds.
    #[error("RX on queue {queue}: used length {len} exceeds the {cap}-byte buffer")]
    RxOverflow {
        /// Queue index.
        queue: u16,
        /// Used length reported.
        len: u32,
        /// Buffer capacity.
        cap: u32,
    },
    /// MRG_RXBUF with a header whose num_buffers is invalid.
    #[error("RX on queue {queue}: num_buffers {num_buffers}")]
    RxBadNumBuffers {
        /// Queue index.
        queue: u16,
        /// The value the device wrote.
        num_buffers: u16,
    },
}

impl NetError {
    /// True when the error is a wait that ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            NetError::Queue {
                source: QueueError::Timeout { .. },
                ..
            }
        )
    }
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, NetError>;

/// Drops feature bits whose prerequisites (virtio 1.2 §5.1.3.1) are missing:
/// guest TSO needs GUEST_CSUM, host TSO needs CSUM, ECN needs TSO, CTRL_RX
/// needs CTRL_VQ. MQ is kept without CTRL_VQ: vhost-user frontends such as
/// QEMU keep the control queue to themselves and ack MQ to the backend alone.
pub fn resolve_features(f: u64) -> u64 {
    let mut f = f;
    let has = |f: u64, b: u32| f & bit(b) != 0;
    if !has(f, VIRTIO_NET_F_GUEST_CSUM) {
        f &= !(bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_TSO6));
    }
    if !has(f, VIRTIO_NET_F_CSUM) {
        f &= !(bit(VIRTIO_NET_F_HOST_TSO4) | bit(VIRTIO_NET_F_HOST_TSO6));
    }
    if !has(f, VIRTIO_NET_F_GUEST_TSO4) && !has(f, VIRTIO_NET_F_GUEST_TSO6) {
        f &= !bit(VIRTIO_NET_F_GUEST_ECN);
    }
    if !has(f, VIRTIO_NET_F_HOST_TSO4) && !has(f, VIRTIO_NET_F_HOST_TSO6) {
        f &= !bit(VIRTIO_NET_F_HOST_ECN);
    }
    if !has(f, VIRTIO_NET_F_CTRL_VQ) {
        f &= !bit(VIRTIO_NET_F_CTRL_RX);
    }
    f
}

/// What to ask of a virtio-net backend.
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// Queue pairs to start (more than one needs VIRTIO_NET_F_MQ).
    pub pairs: u16,
    /// Device features the caller allows; intersected with [`NET_DRIVER_FEATURES`].
    pub feature_mask: u64,
    /// RX buffer layout; None picks what Linux would ([`RxLayout::for_features`]).
    /// Set small buffers here to make frames span several merged buffers.
    pub rx_layout: Option<RxLayout>,
    /// Bytes per TX slot, header included; None: 2 KiB, or 64 KiB + 4 KiB with HOST_TSO.
    pub tx_slot_len: Option<u32>,
    /// One or two descriptors per TX chain.
    pub tx_layout: TxLayout,
    /// How long blocking TX waits and control commands may take.
    pub timeout: Duration,
    /// Connection, memory and ring options. `num_queues` and
    /// `device_features` are set by [`NetClient::connect`]; `mem_size` is
    /// raised if the buffers need more.
    pub device: DeviceOptions,
    /// Pairs whose rings get SET_VRING_ENABLE (the control queue always
    /// does); the others are set up but stay disabled, as QEMU leaves the
    /// pairs a guest does not use. None: every ring set up is enabled.
    pub enabled_pairs: Option<u16>,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            pairs: 1,
            feature_mask: NET_DRIVER_FEATURES,
            rx_layout: None,
            tx_slot_len: None,
            tx_layout: TxLayout::OneDesc,
            timeout: Duration::from_secs(5),
            device: DeviceOptions::default(),
            enabled_pairs: None,
        }
    }
}

/// The config space fields that the negotiated features make valid; None
/// for a field whose feature is off or when the backend has no GET_CONFIG.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// `mac` (VIRTIO_NET_F_MAC).
    pub mac: Option<Mac>,
    /// `status` (VIRTIO_NET_F_STATUS); bit 0 is link up.
    pub status: Option<u16>,
    /// `max_virtqueue_pairs` (VIRTIO_NET_F_MQ).
    pub max_virtqueue_pairs: Option<u16>,
    /// `mtu` (VIRTIO_NET_F_MTU).
    pub mtu: Option<u16>,
}

impl NetConfig {
    /// Decodes the first bytes of the config space for `features`.
    pub fn parse(features: u64, cfg: &[u8]) -> Self {
        let has = |b: u32| features & bit(b) != 0;
        let field = |off: usize| {
            cfg.get(off..off + 2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
        };
        NetConfig {
            mac: has(VIRTIO_NET_F_MAC)
                .then(|| cfg.get(..6).and_then(|b| b.try_into().ok()))
                .flatten(),
            status: has(VIRTIO_NET_F_STATUS)
                .then(|| field(std::mem::offset_of!(virtio_net_config, status)))
                .flatten(),
            max_virtqueue_pairs: has(VIRTIO_NET_F_MQ)
                .then(|| field(std::mem::offset_of!(virtio_net_config, max_virtqueue_pairs)))
                .flatten(),
            mtu: has(VIRTIO_NET_F_MTU)
                .then(|| field(std::mem::offset_of!(virtio_net_config, mtu)))
                .flatten(),
        }
    }

    /// Bytes of config space worth reading for `features`.
    pub fn len_for(features: u64) -> u32 {
        let has = |b: u32| features & bit(b) != 0;
        if has(VIRTIO_NET_F_MTU) {
            12
        } else if has(VIRTIO_NET_F_MQ) {
            10
        } else if has(VIRTIO_NET_F_STATUS) {
            8
        } else if has(VIRTIO_NET_F_MAC) {
            6
        } else {
            0
        }
    }
}

/// A virtio-net device driven from userspace over vhost-user.
#[derive(Debug)]
pub struct NetClient {
    dev: VuDevice,
    pairs: u16,
    rx: Vec<RxRing>,
    tx: Vec<TxRing>,
    ctrl: Option<(usize, CtrlQueue)>,
    config: NetConfig,
    timeout: Duration,
}

/// Ring bytes per queue: descriptors, avail and used rings, indirect tables.
fn ring_bytes(opts: &DeviceOptions) -> u64 {
    let n = u64::from(opts.queue_size);
    let page = |b: u64| b.next_multiple_of(4096);
    page(16 * n) + page(6 + 2 * n) + page(6 + 8 * n) + page(16 * n * u64::from(opts.max_indirect))
}

impl NetClient {
    /// Connects to the backend at `socket`, negotiates features, reads the
    /// config space, starts `opts.pairs` queue pairs (and the control queue)
    /// and fills every RX ring.
    pub fn connect(socket: &Path, opts: &NetOptions) -> Result<Self> {
        let stream = connect_socket(socket, opts.device.connect_timeout)?;
        Self::connect_stream(stream, socket, opts)
    }

    /// [`NetClient::connect`] on a stream the caller connected to `socket`
    /// (and perhaps already sent requests on, e.g. an early SET_VRING_ENABLE).
    pub fn connect_stream(stream: UnixStream, socket: &Path, opts: &NetOptions) -> Result<Self> {
        Self::setup(stream, socket, opts, true)
    }

    /// [`NetClient::connect`], but every RX ring is left empty, so a test can
    /// put chains of its own first; [`NetClient::rx_fill`] posts the buffers.
    pub fn connect_unfilled(socket: &Path, opts: &NetOptions) -> Result<Self> {
        let stream = connect_socket(socket, opts.device.connect_timeout)?;
        Self::setup(stream, socket, opts, false)
    }

    fn setup(stream: UnixStream, socket: &Path, opts: &NetOptions, fill: bool) -> Result<Self> {
        let offered = probe_features(&stream)?;
        let features = resolve_features(offered & NET_DRIVER_FEATURES & opts.feature_mask);
        let has = |b: u32| features & bit(b) != 0;
        if opts.pairs > 1 && !has(VIRTIO_NET_F_MQ) {
            return Err(NetError::TooManyPairs {
                wanted: opts.pairs,
                max: 1,
            });
        }
        let ctrl = has(VIRTIO_NET_F_CTRL_VQ);
        let pairs = usize::from(opts.pairs.max(1));
        let rx_layout = opts.rx_layout.unwrap_or_else(|| {
            RxLayout::for_features(
                has(VIRTIO_NET_F_MRG_RXBUF),
                has(VIRTIO_NET_F_GUEST_TSO4) || has(VIRTIO_NET_F_GUEST_TSO6),
            )
        });
        let tx_slot_len = opts.tx_slot_len.unwrap_or(
            if has(VIRTIO_NET_F_HOST_TSO4) || has(VIRTIO_NET_F_HOST_TSO6) {
                (64 + 4) << 10
            } else {
                2048
            },
        );

        let mut dopts = opts.device.clone();
        dopts.device_features = features;
        dopts.num_queues = 2 * pairs + usize::from(ctrl);
        // Rings for every queue we may start (with CTRL_VQ and MQ the control
        // queue sits after the device's last pair: room for up to 32 pairs),
        // buffers for the pairs we use, and 1 MiB of slack.
        let qsize = u64::from(dopts.queue_size);
        let max_queues = if ctrl && has(VIRTIO_NET_F_MQ) {
            2 * 32 + 1
        } else {
            dopts.num_queues as u64
        };
        let needed = ring_bytes(&dopts) * max_queues
            + pairs as u64
                * qsize
                * (u64::from(rx_layout.capacity()) + u64::from(tx_slot_len).next_multiple_of(64))
            + (1 << 20);
        dopts.mem_size = dopts.mem_size.max(needed);

        let mut dev = VuDevice::negotiate(stream, socket, &dopts)?;
        let config = if dev
            .protocol_features()
            .contains(VhostUserProtocolFeatures::CONFIG)
            && NetConfig::len_for(features) > 0
        {
            let raw = dev.get_config(0, NetConfig::len_for(features))?;
            NetConfig::parse(features, &raw)
        } else {
            NetConfig::default()
        };
        if let Some(max) = config.max_virtqueue_pairs {
            if opts.pairs > max {
                return Err(NetError::TooManyPairs {
                    wanted: opts.pairs,
                    max,
                });
            }
        }
        // The control queue follows the device's last pair (2N with MQ, else 2).
        let ctrl_index = ctrl.then(|| {
            let max_pairs = config.max_virtqueue_pairs.map_or(pairs, usize::from);
            2 * if has(VIRTIO_NET_F_MQ) { max_pairs } else { 1 }
        });
        if let Some(i) = ctrl_index {
            dopts.num_queues = i + 1;
        }
        match opts.enabled_pairs {
            None => dev.start(&dopts)?,
            Some(n) => {
                dev.start_disabled(&dopts)?;
                let enabled = (0..2 * usize::from(n)).chain(ctrl_index);
                for i in enabled.filter(|&i| i < dopts.num_queues) {
                    dev.set_queue_enabled(i, true)?;
                }
            }
        }

        let mut rx = Vec::with_capacity(pairs);
        let mut tx = Vec::with_capacity(pairs);
        for p in 0..pairs {
            let mut ring = RxRing::new(dev.queue(2 * p), rx_layout)?;
            if fill {
                ring.fill(dev.queue(2 * p))?;
            }
            rx.push(ring);
            tx.push(TxRing::new(
                dev.queue(2 * p + 1),
                tx_slot_len,
                opts.tx_layout,
            )?);
        }
        let ctrl = match ctrl_index {
            Some(i) => Some((i, CtrlQueue::new(dev.queue(i))?)),
            None => None,
        };
        Ok(NetClient {
            dev,
            pairs: pairs as u16,
            rx,
            tx,
            ctrl,
            config,
            timeout: opts.timeout,
        })
    }

    /// The underlying vhost-user device.
    pub fn device(&mut self) -> &mut VuDevice {
        &mut self.dev
    }
    /// Virtio features acked.
    pub fn features(&self) -> u64 {
        self.dev.features()
    }
    /// Whether feature bit `b` (e.g. `VIRTIO_NET_F_MRG_RXBUF`) was acked.
    pub fn has_feature(&self, b: u32) -> bool {
        self.dev.has_feature(b)
    }
    /// Config space as read at connect time.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }
    /// Reads the config space again (GET_CONFIG), e.g. for a status change.
    pub fn read_config(&mut self) -> Result<NetConfig> {
        let f = self.features();
        let raw = self.dev.get_config(0, NetConfig::len_for(f))?;
        self.config = NetConfig::parse(f, &raw);
        Ok(self.config)
    }
    /// Queue pairs started.
    pub fn pairs(&self) -> u16 {
        self.pairs
    }
    /// The control queue's index, when there is one.
    pub fn ctrl_queue_index(&self) -> Option<usize> {
        self.ctrl.as_ref().map(|(i, _)| *i)
    }

    fn check_pair(&self, pair: u16) -> Result<usize> {
        if pair >= self.pairs {
            return Err(NetError::NoSuchPair {
                pair,
                pairs: self.pairs,
            });
        }
        Ok(usize::from(pair))
    }

    fn tx_parts(&mut self, pair: u16) -> Result<(&mut TxRing, &mut crate::virtqueue::VirtQueue)> {
        let p = self.check_pair(pair)?;
        Ok((&mut self.tx[p], self.dev.queue(2 * p + 1)))
    }

    fn rx_parts(&mut self, pair: u16) -> Result<(&mut RxRing, &mut crate::virtqueue::VirtQueue)> {
        let p = self.check_pair(pair)?;
        Ok((&mut self.rx[p], self.dev.queue(2 * p)))
    }

    /// The TX ring of `pair`, e.g. to change its layout or read its counters.
    pub fn tx_ring(&mut self, pair: u16) -> Result<&mut TxRing> {
        Ok(self.tx_parts(pair)?.0)
    }
    /// The RX ring of `pair`.
    pub fn rx_ring(&mut self, pair: u16) -> Result<&mut RxRing> {
        Ok(self.rx_parts(pair)?.0)
    }
    /// Sets one or two descriptors per TX chain on every pair.
    pub fn set_tx_layout(&mut self, layout: TxLayout) {
        for t in &mut self.tx {
            t.set_layout(layout);
        }
    }

    /// Sends `hdr` + `frame` on `pair` (waiting for a free TX slot if need
    /// be), kicks, and reaps finished TX buffers.
    pub fn send(&mut self, pair: u16, hdr: &VirtioNetHdr, frame: &[u8]) -> Result<()> {
        let timeout = self.timeout;
        let (ring, vq) = self.tx_parts(pair)?;
        ring.send(vq, hdr, frame, timeout)
    }

    /// Sends `bytes` as the whole TX chain, no header added (malformed
    /// input, see [`frame::Malformed`]). Bigger than a slot: waits until the
    /// device returns the buffer.
    pub fn send_raw(&mut self, pair: u16, bytes: &[u8]) -> Result<()> {
        let timeout = self.timeout;
        let (ring, vq) = self.tx_parts(pair)?;
        ring.send_raw(vq, bytes, timeout)
    }

    /// Queues as many frames as fit now, one kick; returns how many.
    pub fn send_batch(&mut self, pair: u16, frames: &[(VirtioNetHdr, &[u8])]) -> Result<usize> {
        let (ring, vq) = self.tx_parts(pair)?;
        ring.send_batch(vq, frames)
    }

    /// Writes `hdr` + `frame` into every TX slot of `pair` for [`NetClient::send_prefilled`].
    pub fn tx_prefill(&mut self, pair: u16, hdr: &VirtioNetHdr, frame: &[u8]) -> Result<()> {
        let timeout = self.timeout;
        let (ring, vq) = self.tx_parts(pair)?;
        ring.prefill(vq, hdr, frame, timeout)
    }

    /// Posts up to `n` prefilled TX slots without copying, one kick; returns how many.
    pub fn send_prefilled(&mut self, pair: u16, n: usize) -> Result<usize> {
        let (ring, vq) = self.tx_parts(pair)?;
        ring.send_prefilled(vq, n)
    }

    /// Takes back finished TX buffers; returns how many.
    pub fn tx_reap(&mut self, pair: u16) -> Result<usize> {
        let (ring, vq) = self.tx_parts(pair)?;
        ring.reap(vq)
    }

    /// Waits until every TX buffer of `pair` is back.
    pub fn tx_flush(&mut self, pair: u16, timeout: Duration) -> Result<()> {
        let (ring, vq) = self.tx_parts(pair)?;
        ring.flush(vq, timeout)
    }

    /// Receives one frame on `pair` (reassembled across merged buffers);
    /// the buffers are reposted before this returns.
    pub fn recv(&mut self, pair: u16, timeout: Duration) -> Result<RxFrame> {
        let (ring, vq) = self.rx_parts(pair)?;
        ring.recv(vq, timeout)
    }

    /// A frame if one is complete now.
    pub fn try_recv(&mut self, pair: u16) -> Result<Option<RxFrame>> {
        let (ring, vq) = self.rx_parts(pair)?;
        ring.try_recv(vq)
    }

    /// Posts every RX buffer of `pair` that is not on the ring (one kick);
    /// returns how many.
    pub fn rx_fill(&mut self, pair: u16) -> Result<usize> {
        let (ring, vq) = self.rx_parts(pair)?;
        ring.fill(vq)
    }

    /// Counts what has arrived on `pair` without copying (waiting up to
    /// `timeout` for the first buffer), then refills.
    pub fn recv_count(&mut self, pair: u16, timeout: Duration) -> Result<RxCount> {
        let (ring, vq) = self.rx_parts(pair)?;
        ring.recv_count(vq, timeout)
    }

    /// Sends a control command and returns the device's ack byte
    /// (`VIRTIO_NET_OK` = 0, `VIRTIO_NET_ERR` = 1).
    pub fn ctrl_command(&mut self, class: u8, cmd: u8, data: &[u8]) -> Result<u8> {
        let timeout = self.timeout;
        let (i, ctrl) = self.ctrl.as_mut().ok_or(NetError::NoCtrlQueue)?;
        ctrl.command(self.dev.queue(*i), class, cmd, data, timeout)
    }

    /// VIRTIO_NET_CTRL_MQ / VQ_PAIRS_SET: use `n` queue pairs.
    pub fn ctrl_mq_set_pairs(&mut self, n: u16) -> Result<u8> {
        self.ctrl_command(
            VIRTIO_NET_CTRL_MQ as u8,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
            &n.to_le_bytes(),
        )
    }

    /// VIRTIO_NET_CTRL_RX / PROMISC (sent even without VIRTIO_NET_F_CTRL_RX,
    /// so a test can check that the device refuses it).
    pub fn ctrl_rx_promisc(&mut self, on: bool) -> Result<u8> {
        self.ctrl_command(
            VIRTIO_NET_CTRL_RX as u8,
            VIRTIO_NET_CTRL_RX_PROMISC as u8,
            &[u8::from(on)],
        )
    }

    /// VIRTIO_NET_CTRL_RX / ALLMULTI.
    pub fn ctrl_rx_allmulti(&mut self, on: bool) -> Result<u8> {
        self.ctrl_command(
            VIRTIO_NET_CTRL_RX as u8,
            VIRTIO_NET_CTRL_RX_ALLMULTI as u8,
            &[u8::from(on)],
        )
    }
}

/// GET_FEATURES on a second handle of the same socket, before SET_OWNER
/// (QEMU asks in the same order), so the feature set can be fixed up for
/// dependencies before [`VuDevice::negotiate`] acks it.
fn probe_features(stream: &UnixStream) -> Result<u64> {
    let clone = stream.try_clone().map_err(NetError::ProbeSocket)?;
    let probe = Frontend::from_stream(clone, 1);
    probe.get_features().map_err(NetError::Probe)
}
