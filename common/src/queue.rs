//! The worker loop every backend runs on a kick: drain the ring in one
//! batch (with EVENT_IDX the guest stops kicking meanwhile, and the ring is
//! checked once more after notifications are re-enabled, so no request is
//! left behind), hand each chain to the device, and signal the guest once.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use vhost_user_backend::VringT;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::GuestMemoryMmap;

use crate::serve::Vring;

/// Guest memory as a worker borrows it for one batch.
pub type Mem = GuestMemoryMmap<()>;

/// Drains queue `q` of `vring` over `mem`. `handle` runs one chain and
/// returns the used length. `broken` remembers (per queue) that the driver
/// published an avail index more than a queue ahead: such a ring is left
/// alone (logged once) until the frontend sets it up again.
pub fn drain<F>(
    q: usize,
    vring: &Vring,
    mem: &Mem,
    event_idx: bool,
    broken: &AtomicBool,
    mut handle: F,
) -> io::Result<()>
where
    F: FnMut(DescriptorChain<&Mem>) -> u32,
{
    let mut state = vring.get_mut();
    let queue = state.get_queue_mut();
    let mut used = false;
    loop {
        if event_idx {
            queue.disable_notification(mem).map_err(io::Error::other)?;
        }
        let avail = queue
            .avail_idx(mem, Ordering::Acquire)
            .map_err(io::Error::other)?;
        let pending = avail.0.wrapping_sub(queue.next_avail());
        if pending > queue.size() {
            if !broken.swap(true, Ordering::Relaxed) {
                log::error!(
                    "queue {q}: avail.idx {} is {pending} entries ahead of {} on a queue of {}; \
                     queue ignored until it is set up again",
                    avail.0,
                    queue.next_avail(),
                    queue.size()
                );
            }
            return Ok(());
        }
        broken.store(false, Ordering::Relaxed);
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = handle(chain);
            queue.add_used(mem, head, len).map_err(io::Error::other)?;
            used = true;
        }
        if !event_idx || !queue.enable_notification(mem).map_err(io::Error::other)? {
            break;
        }
    }
    if used && queue.needs_notification(mem).map_err(io::Error::other)? {
        state.signal_used_queue()?;
    }
    Ok(())
}
