//! The serve loop under `seccomp::VHOST_USER_BASE` in kill mode: a forked
//! daemon (a minimal backend that answers each kick with a call) serves a
//! frontend, sees it disconnect, serves a second one, and exits 0 on
//! SIGTERM. A system call missing from the list kills it with SIGSYS; its
//! log (and `strace -f -p PID`, or `--seccomp log` plus `dmesg`) names the
//! call.

use std::io::{self, Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::seccomp::{self, SeccompAction, VHOST_USER_BASE, VHOST_USER_IOCTLS};
use common::serve::{Connection, ExitEvents, Gate, GuestMem, Vring};
use common::signals::Shutdown;
use common::socket::SocketSource;
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_user_backend::{VhostUserBackend, VringT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{EventConsumer, EventNotifier};
use vmm_sys_util::eventfd::EventFd;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const QUEUE_SIZE: u16 = 256;
const MEM_SIZE: u64 = 1 << 20;
/// Where the "guest memory" seems to live in the frontend's address space.
const FRONTEND_VA: u64 = 0x7000_0000;

/// Answers every kick with a call.
#[derive(Default)]
struct Echo {
    exit_events: ExitEvents,
    gate: Gate,
}

impl VhostUserBackend for Echo {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> usize {
        usize::from(QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::CONFIG
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn update_memory(&self, _mem: GuestMem) -> io::Result<()> {
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        self.exit_events.create()
    }

    fn handle_event(
        &self,
        _device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        let Some(_pass) = self.gate.enter() else {
            return Ok(());
        };
        log::info!("kick");
        vrings[0].signal_used_queue()
    }
}

impl Connection for Echo {
    fn quiesce(&self) {
        self.gate.close();
    }
}

/// The daemon, in the forked child: exits 0 after SIGTERM.
fn daemon(socket: &Path, log: &Path) -> i32 {
    let run = || -> Result<(), String> {
        let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
        // SAFETY: makes fd 2 a copy of the log file; both are open.
        unsafe { libc::dup2(log.as_raw_fd(), 2) };
        common::logging::init("seccomp-serve", common::logging::LogLevel::Debug);
        let shutdown = Shutdown::install().map_err(|e| e.to_string())?;
        let mut bound = SocketSource::Path(socket.to_path_buf())
            .listen()
            .map_err(|e| e.to_string())?;
        seccomp::apply(SeccompAction::Kill, VHOST_USER_BASE, VHOST_USER_IOCTLS)
            .map_err(|e| e.to_string())?;
        common::serve::serve(
            "seccomp-serve",
            &mut bound,
            &shutdown,
            None,
            || Ok::<_, io::Error>(Arc::new(Echo::default())),
            || true,
        )
        .map_err(|e| e.to_string())?;
        drop(bound);
        log::info!("stopped");
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{e}");
            1
        }
    }
}

fn memfd() -> OwnedFd {
    // SAFETY: memfd_create with a NUL-terminated name; we own the result.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: fd was just returned to us and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on the memfd we own.
    let r = unsafe { libc::ftruncate(fd.as_raw_fd(), MEM_SIZE as i64) };
    assert_eq!(r, 0, "ftruncate: {}", io::Error::last_os_error());
    fd
}

fn wait_readable(fd: &EventFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own.
    unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) == 1 }
}

/// One frontend session: negotiate, map memory, set up queue 0, kick it,
/// expect the call, disconnect.
fn session(socket: &Path, mem: &OwnedFd) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: vhost::Error| format!("{what}: {err}")
    };
    let mut fe = Frontend::connect(socket, 1).map_err(e("connect"))?;
    fe.set_owner().map_err(e("SET_OWNER"))?;
    let features = fe.get_features().map_err(e("GET_FEATURES"))?;
    fe.set_features(features).map_err(e("SET_FEATURES"))?;
    let pf = fe
        .get_protocol_features()
        .map_err(e("GET_PROTOCOL_FEATURES"))?;
    fe.set_protocol_features(pf)
        .map_err(e("SET_PROTOCOL_FEATURES"))?;
    // Every later message waits for its ack: the ring must be enabled
    // before the kick, or the backend drops the kick.
    fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM_SIZE,
        userspace_addr: FRONTEND_VA,
        mmap_offset: 0,
        mmap_handle: mem.as_raw_fd(),
    };
    fe.set_mem_table(&[region]).map_err(e("SET_MEM_TABLE"))?;
    fe.set_vring_num(0, QUEUE_SIZE)
        .map_err(e("SET_VRING_NUM"))?;
    let addrs = VringConfigData {
        queue_max_size: QUEUE_SIZE,
        queue_size: QUEUE_SIZE,
        flags: 0,
        desc_table_addr: FRONTEND_VA,
        avail_ring_addr: FRONTEND_VA + 0x1000,
        used_ring_addr: FRONTEND_VA + 0x2000,
        log_addr: None,
    };
    fe.set_vring_addr(0, &addrs).map_err(e("SET_VRING_ADDR"))?;
    fe.set_vring_base(0, 0).map_err(e("SET_VRING_BASE"))?;
    let call = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?;
    let kick = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?;
    fe.set_vring_call(0, &call).map_err(e("SET_VRING_CALL"))?;
    fe.set_vring_kick(0, &kick).map_err(e("SET_VRING_KICK"))?;
    fe.set_vring_enable(0, true)
        .map_err(e("SET_VRING_ENABLE"))?;
    kick.write(1).map_err(|e| e.to_string())?;
    if !wait_readable(&call, Duration::from_secs(10)) {
        return Err("no call after a kick".into());
    }
    call.read().map_err(|e| e.to_string())?;
    fe.get_vring_base(0).map_err(e("GET_VRING_BASE"))?;
    Ok(())
}

fn read_log(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.rewind();
        let _ = f.read_to_string(&mut s);
    }
    s
}

#[test]
fn serve_loop_survives_kill_mode_through_reconnect_and_sigterm() {
    let dir = std::env::temp_dir().join(format!("common-seccomp-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let socket: PathBuf = dir.join("vu.sock");
    let log = dir.join("daemon.log");

    // SAFETY: the child only runs `daemon` and then _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let code = daemon(&socket, &log);
        // SAFETY: leave the forked copy of the test harness at once.
        unsafe { libc::_exit(code) };
    }

    let reap = |timeout: Duration| -> Option<libc::c_int> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let fail = |what: String| -> ! {
        // SAFETY: kill and reap our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        panic!("{what}\ndaemon log:\n{}", read_log(&log));
    };

    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            fail("the daemon never listened".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mem = memfd();
    for round in 1..=2 {
        if let Err(e) = session(&socket, &mem) {
            let status = reap(Duration::from_millis(200));
            fail(format!(
                "session {round}: {e} (daemon wait status: {status:?})"
            ));
        }
    }
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let Some(status) = reap(Duration::from_secs(10)) else {
        fail("the daemon did not exit after SIGTERM".into());
    };
    let log_text = read_log(&log);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "daemon wait status {status:#x} (signal {}); log:\n{log_text}",
        libc::WTERMSIG(status)
    );
    assert!(log_text.contains("kick"), "{log_text}");
    assert!(!socket.exists(), "the socket file was not removed");
}
