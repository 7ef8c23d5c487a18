//! vhost-user messages a hostile (or broken) frontend sends, for every
//! daemon: each is refused with a log line that says what was refused and
//! why, the connection that sent it ends, the daemon serves the next
//! frontend, and what an earlier frontend stored is still there.

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vu_driver::device::{connect_socket, DeviceOptions, VuDevice};
use vu_driver::fixture::{poll_until, Daemon};
use vu_driver::memory::{Backing, GuestMem};
use vu_driver::under_test::{DaemonUnderTest, Env, T};

for_each_daemon!(
    set_mem_table_with_a_region_larger_than_its_fd_is_refused,
    set_mem_table_with_an_offset_past_the_end_of_its_fd_is_refused,
    add_mem_reg_with_a_region_larger_than_its_fd_is_refused,
    add_mem_reg_past_the_advertised_slots_is_refused,
    a_message_with_253_descriptors_is_refused_by_name,
    a_message_with_253_descriptors_is_refused_by_name_in_a_chroot,
);

/// The size of the memfd behind a lying region.
const FD_SIZE: u64 = 4 << 20;

/// Waits until the daemon's log, past byte `from`, has a line holding every
/// one of `parts`; panics with the log if none comes.
fn assert_logged(daemon: &Daemon, from: usize, parts: &[&str]) {
    let found = poll_until(T, || {
        let log = daemon.log_contents();
        log.get(from..)
            .unwrap_or("")
            .lines()
            .any(|l| parts.iter().all(|p| l.contains(p)))
    });
    assert!(
        found,
        "{}: no log line with all of {parts:?}:\n{}",
        daemon.name(),
        daemon.log_contents()
    );
}

/// A daemon over a fresh environment that has served round 0 (so a later
/// round checks that its data is still there).
fn served(d: &DaemonUnderTest, test: &str) -> (Box<dyn Env>, Daemon) {
    served_with(d, test, &[])
}

/// [`served`], the daemon started with `args` added.
fn served_with(d: &DaemonUnderTest, test: &str, args: &[&str]) -> (Box<dyn Env>, Daemon) {
    let env = d.env(test);
    let mut cmd = d.socket_command(&*env);
    cmd.args(args);
    let daemon = d.spawn(cmd, env.socket(), true);
    d.serve(&*env, env.socket(), 0);
    (env, daemon)
}

/// After a refused message: the daemon still runs and serves round 1
/// through a new frontend, which finds round 0's data.
fn still_serves(d: &DaemonUnderTest, env: &dyn Env, daemon: &mut Daemon) {
    assert_eq!(daemon.try_wait().unwrap(), None, "the daemon exited");
    d.serve(env, env.socket(), 1);
    assert_eq!(daemon.try_wait().unwrap(), None, "the daemon exited");
}

/// A negotiated frontend (REPLY_ACK and, where offered,
/// CONFIGURE_MEM_SLOTS) whose guest memory is one `FD_SIZE` memfd;
/// features are set, nothing else.
fn frontend(d: &DaemonUnderTest, env: &dyn Env) -> VuDevice {
    let opts = DeviceOptions {
        mem_size: FD_SIZE,
        protocol_features: DeviceOptions::default().protocol_features
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        ..DeviceOptions::default()
    };
    let socket = env.socket();
    let stream = connect_socket(socket, T).unwrap();
    let mut dev =
        VuDevice::negotiate(stream, socket, &opts).unwrap_or_else(|e| panic!("{}: {e:?}", d.name));
    let features = dev.features();
    dev.frontend().set_features(features).unwrap();
    dev.frontend()
        .set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    dev
}

/// [`frontend`], with its guest memory sent as the memory table.
fn frontend_with_its_table(d: &DaemonUnderTest, env: &dyn Env) -> VuDevice {
    let mut dev = frontend(d, env);
    let regions = dev.mem().regions();
    dev.frontend().set_mem_table(&regions).unwrap();
    dev
}

/// SET_MEM_TABLE of one region over a `FD_SIZE` memfd that claims
/// `size` bytes from `offset`: refused (an error ack or the connection
/// closed), logged naming the region, and the daemon serves on.
fn lying_table(d: &DaemonUnderTest, test: &str, size: u64, offset: u64) {
    let (env, mut daemon) = served(d, test);
    let from = daemon.log_contents().len();
    let mut dev = frontend(d, &*env);
    let mut regions = dev.mem().regions();
    regions[0].memory_size = size;
    regions[0].mmap_offset = offset;
    let r = dev.frontend().set_mem_table(&regions);
    assert!(
        r.is_err(),
        "{}: a table whose region runs past its fd was acked",
        d.name
    );
    assert_logged(
        &daemon,
        from,
        &[
            "memory region 0",
            &format!("size {size:#x}"),
            &format!("mmap offset {offset:#x}"),
            &format!("fd size {FD_SIZE:#x}"),
        ],
    );
    drop(dev);
    still_serves(d, &*env, &mut daemon);
}

fn set_mem_table_with_a_region_larger_than_its_fd_is_refused(d: &DaemonUnderTest) {
    lying_table(d, "mem-larger", 64 << 20, 0);
}

fn set_mem_table_with_an_offset_past_the_end_of_its_fd_is_refused(d: &DaemonUnderTest) {
    lying_table(d, "mem-offset", 1 << 20, 12 << 30);
}

/// ADD_MEM_REG of a region over a second `FD_SIZE` memfd that claims
/// 64 MiB, after a valid table: refused and, where the daemon offers
/// CONFIGURE_MEM_SLOTS, logged naming the region; the daemon serves on.
fn add_mem_reg_with_a_region_larger_than_its_fd_is_refused(d: &DaemonUnderTest) {
    let (env, mut daemon) = served(d, "mem-add");
    let from = daemon.log_contents().len();
    let mut dev = frontend_with_its_table(d, &*env);
    let slots = dev
        .protocol_features()
        .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);
    let extra = GuestMem::new(FD_SIZE, &Backing::Memfd).unwrap();
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 1 << 32,
        memory_size: 64 << 20,
        ..extra.regions()[0]
    };
    let r = dev.frontend().add_mem_region(&region);
    assert!(
        r.is_err(),
        "{}: a region running past its fd was added",
        d.name
    );
    if slots {
        assert_logged(
            &daemon,
            from,
            &[
                "memory region 1",
                "guest address 0x100000000",
                "size 0x4000000",
                &format!("fd size {FD_SIZE:#x}"),
            ],
        );
    }
    drop((dev, extra));
    still_serves(d, &*env, &mut daemon);
}

/// ADD_MEM_REG after ADD_MEM_REG past the slots the daemon advertises
/// (GET_MAX_MEM_SLOTS): the one too many is refused, logged with the
/// count, and the connection (with every region it mapped) ends; the
/// daemon serves on. Each region is a 4 KiB page of one memfd.
fn add_mem_reg_past_the_advertised_slots_is_refused(d: &DaemonUnderTest) {
    let (env, mut daemon) = served(d, "mem-slots");
    let from = daemon.log_contents().len();
    let mut dev = frontend_with_its_table(d, &*env);
    let extra = GuestMem::new(FD_SIZE, &Backing::Memfd).unwrap();
    let base = extra.regions()[0];
    if !dev
        .protocol_features()
        .contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    {
        // Not offered (vhost-net-daemon): no region may be added at all.
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 1 << 32,
            memory_size: 4096,
            ..base
        };
        assert!(
            dev.frontend().add_mem_region(&region).is_err(),
            "{}: ADD_MEM_REG without CONFIGURE_MEM_SLOTS was accepted",
            d.name
        );
        drop((dev, extra));
        still_serves(d, &*env, &mut daemon);
        return;
    }
    let slots = dev.frontend().get_max_mem_slots().unwrap();
    // The table holds one region: `slots - 1` more fit.
    let mut refused = None;
    for i in 0..slots {
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: (1 << 32) + i * 4096,
            memory_size: 4096,
            userspace_addr: base.userspace_addr + i * 4096,
            mmap_offset: i * 4096,
            ..base
        };
        if dev.frontend().add_mem_region(&region).is_err() {
            refused = Some(i);
            break;
        }
    }
    assert_eq!(
        refused,
        Some(slots - 1),
        "{}: region {} of {slots} slots was accepted",
        d.name,
        slots + 1
    );
    assert_logged(
        &daemon,
        from,
        &[&format!(
            "{} memory regions, more than the {slots} slots",
            slots + 1
        )],
    );
    drop((dev, extra));
    still_serves(d, &*env, &mut daemon);
}

/// GET_FEATURES with 253 descriptors (the kernel's SCM_MAX_FD; a
/// vhost-user message carries at most 32): refused naming the request,
/// the connection ends (the vhost crate alone would drop the message
/// unanswered and read the next one as if nothing happened), the daemon
/// serves on.
fn a_message_with_253_descriptors_is_refused_by_name(d: &DaemonUnderTest) {
    refuses_253_descriptors(d, "fds-253", &[]);
}

/// The same in the chroot jail, whose connections pass through the same
/// relay (on guarded abstract names in the host's network namespace).
fn a_message_with_253_descriptors_is_refused_by_name_in_a_chroot(d: &DaemonUnderTest) {
    refuses_253_descriptors(d, "fds-253-chroot", &["--sandbox", "chroot"]);
}

fn refuses_253_descriptors(d: &DaemonUnderTest, test: &str, args: &[&str]) {
    use std::io::Read;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let (env, mut daemon) = served_with(d, test, args);
    let from = daemon.log_contents().len();
    let mut stream = connect_socket(env.socket(), T).unwrap();
    let files: Vec<std::fs::File> = (0..253)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let fds: Vec<i32> = files.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    // Header: GET_FEATURES (1), version 1, no body.
    let header: Vec<u8> = [1u32, 1, 0].iter().flat_map(|w| w.to_le_bytes()).collect();
    stream.send_with_fds(&[&header[..]], &fds).unwrap();
    drop(files);
    stream.set_read_timeout(Some(T)).unwrap();
    let mut reply = Vec::new();
    let read = stream.read_to_end(&mut reply);
    assert!(
        matches!(read, Ok(0)),
        "{}: the connection stayed open or answered: {read:?} {reply:?}",
        d.name
    );
    assert_logged(&daemon, from, &["GET_FEATURES", "more than 32 descriptors"]);
    drop(stream);
    still_serves(d, &*env, &mut daemon);
}
