//! Malformed rings fed to every queue kind of every daemon
//! (`vu_driver::under_test::rings`): each test breaks a ring's good chain
//! one way (`Shape`) and the ring checks its daemon's contract for the
//! answer; the test runs once per ring, in a module named after it
//! (`malformed::net_rx::descriptor_loop`). Then the vhost-user messages
//! that set a ring up badly, for every daemon. What is malformed only for
//! one device (short headers, bad frames, control commands, FUSE requests)
//! is in that daemon's binary.

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::VhostBackend;
use vu_driver::device::{connect_socket, DeviceOptions, VuDevice};
use vu_driver::fixture::poll_until;
use vu_driver::under_test::rings::{assert_refused, RingUnderTest, Shape};
use vu_driver::under_test::{DaemonUnderTest, T};

/// For each `fn NAME(r: &RingUnderTest)` listed, one `#[test] fn NAME`
/// per ring, in a module named after the ring.
macro_rules! for_each_ring {
    ($($test:ident),+ $(,)?) => {
        for_each_ring!(@ring blk_read blk BLK_READ: $($test),+);
        for_each_ring!(@ring blk_write blk BLK_WRITE: $($test),+);
        for_each_ring!(@ring net_tx net NET_TX: $($test),+);
        for_each_ring!(@ring net_rx net NET_RX: $($test),+);
        for_each_ring!(@ring fs_request fs FS_REQUEST: $($test),+);
    };
    (@ring $module:ident $daemon:ident $ring:ident: $($test:ident),+) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    super::$test(&vu_driver::under_test::$daemon::$ring)
                }
            )+
        }
    };
}

for_each_ring!(
    descriptor_loop,
    next_out_of_range,
    chain_longer_than_the_queue,
    indirect_table_nested,
    indirect_table_nested_first,
    indirect_table_empty,
    indirect_table_huge,
    indirect_table_length_past_its_end,
    indirect_table_length_cut_mid_entry,
    indirect_table_outside_guest_memory,
    indirect_table_with_a_loop,
    each_buffer_outside_guest_memory,
    each_buffer_across_the_end_of_guest_memory,
    each_buffer_with_a_huge_length,
    avail_idx_jumping_past_the_queue_size_breaks_only_that_queue,
);

for_each_daemon!(
    set_vring_num_zero_is_refused,
    set_vring_num_not_a_power_of_two_is_refused,
);

/// `shape` of a fresh rig's good chain.
fn case(r: &RingUnderTest, shape: Shape) {
    eprintln!("{}: {shape:?}", r.name);
    assert_refused(&mut *r.rig(), shape);
}

/// `shape(i)` for each descriptor `i` of the good chain, each on a fresh rig.
fn each_buffer(r: &RingUnderTest, shape: fn(usize) -> Shape) {
    let n = r.rig().good_chain().descs.len();
    for i in 0..n {
        case(r, shape(i));
    }
}

fn descriptor_loop(r: &RingUnderTest) {
    case(r, Shape::DescriptorLoop);
}

fn next_out_of_range(r: &RingUnderTest) {
    case(r, Shape::NextOutOfRange);
}

fn chain_longer_than_the_queue(r: &RingUnderTest) {
    case(r, Shape::LongerThanTheQueue);
}

fn indirect_table_nested(r: &RingUnderTest) {
    case(r, Shape::IndirectNested);
}

fn indirect_table_nested_first(r: &RingUnderTest) {
    case(r, Shape::IndirectNestedFirst);
}

fn indirect_table_empty(r: &RingUnderTest) {
    case(r, Shape::IndirectEmpty);
}

fn indirect_table_huge(r: &RingUnderTest) {
    case(r, Shape::IndirectHuge);
}

fn indirect_table_length_past_its_end(r: &RingUnderTest) {
    case(r, Shape::IndirectPastItsEnd);
}

fn indirect_table_length_cut_mid_entry(r: &RingUnderTest) {
    case(r, Shape::IndirectCutMidEntry);
}

fn indirect_table_outside_guest_memory(r: &RingUnderTest) {
    case(r, Shape::IndirectOutsideMemory);
}

fn indirect_table_with_a_loop(r: &RingUnderTest) {
    case(r, Shape::IndirectLoop);
}

fn each_buffer_outside_guest_memory(r: &RingUnderTest) {
    each_buffer(r, Shape::BufferOutsideMemory);
}

fn each_buffer_across_the_end_of_guest_memory(r: &RingUnderTest) {
    each_buffer(r, Shape::BufferAcrossTheEnd);
}

fn each_buffer_with_a_huge_length(r: &RingUnderTest) {
    each_buffer(r, Shape::HugeLength);
}

fn avail_idx_jumping_past_the_queue_size_breaks_only_that_queue(r: &RingUnderTest) {
    let mut ring = r.rig();
    ring.assert_serves();
    let log_before = ring.daemon().log_contents().len();
    let q = ring.queue();
    let (index, used_before) = (q.index(), q.used_idx().unwrap());
    let bogus = q.published_avail_idx().wrapping_add(q.size() + 1);
    q.raw_set_avail_idx(bogus);
    q.kick_now().unwrap();

    // Logged once, as an error naming the queue.
    let broken = format!("queue {index}: avail.idx");
    let logged = poll_until(T, || {
        let log = ring.daemon().log_contents();
        log.get(log_before..)
            .unwrap_or("")
            .lines()
            .any(|l| l.contains(&broken) && l.contains("ERROR"))
    });
    assert!(
        logged,
        "no error line with {broken:?}:\n{}",
        ring.daemon().log_contents()
    );
    // The device's other queues keep working; the broken one consumed
    // nothing from its garbage ring.
    ring.assert_other_queues_serve();
    assert_eq!(ring.queue().used_idx().unwrap(), used_before);
    // A new connection starts clean.
    ring.reconnect_and_serve();
}

/// Sends SET_VRING_NUM `num` (NEED_REPLY) on an otherwise valid setup;
/// the ring must be refused: an error ack (or the connection closed) for
/// SET_VRING_NUM itself or, where vhost-user-backend acks the size before
/// anyone can check it, for the SET_VRING_ADDR that follows. Afterwards
/// the daemon serves a new connection.
fn bad_vring_num(d: &DaemonUnderTest, num: u16) {
    let env = d.env("vring-num");
    let socket = env.socket();
    let mut daemon = d.start(&*env);
    let opts = DeviceOptions::default();
    let stream = connect_socket(socket, T).unwrap();
    let mut dev = VuDevice::negotiate(stream, socket, &opts).unwrap();
    let (features, regions) = (dev.features(), dev.mem().regions());
    let f = dev.frontend();
    f.set_features(features).unwrap();
    f.set_mem_table(&regions).unwrap();
    f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let refused = f.set_vring_num(0, num).is_err() || {
        let base = regions[0].userspace_addr;
        let config = vhost::VringConfigData {
            queue_max_size: 1024,
            queue_size: num,
            flags: 0,
            desc_table_addr: base,
            used_ring_addr: base + 0x4000,
            avail_ring_addr: base + 0x2000,
            log_addr: None,
        };
        f.set_vring_addr(0, &config).is_err()
    };
    assert!(
        refused,
        "a ring of size {num} was accepted (SET_VRING_NUM and SET_VRING_ADDR acked)"
    );
    // The refusal is logged naming the request, not as a bare "invalid
    // message" (issue 14).
    let named = poll_until(T, || {
        daemon
            .log_contents()
            .lines()
            .any(|l| l.contains("SET_VRING_NUM") || l.contains("SET_VRING_ADDR"))
    });
    assert!(
        named,
        "{}: the refusal does not name the request:\n{}",
        d.name,
        daemon.log_contents()
    );
    drop(dev);
    assert_eq!(daemon.try_wait().unwrap(), None, "the daemon exited");
    d.serve(&*env, socket, 0);
    assert_eq!(daemon.try_wait().unwrap(), None, "the daemon exited");
}

fn set_vring_num_zero_is_refused(d: &DaemonUnderTest) {
    bad_vring_num(d, 0);
}

fn set_vring_num_not_a_power_of_two_is_refused(d: &DaemonUnderTest) {
    bad_vring_num(d, 100);
}
