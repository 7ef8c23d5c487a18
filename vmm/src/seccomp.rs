//! The VMM's system call filters (seccomp-bpf built with `seccompiler`),
//! one per thread role, as Cloud Hypervisor does (`--seccomp
//! true|false|log`).
//!
//! - [`Role::Vmm`]: the main thread, installed by [`init`] before the VM
//!   is built. Every thread it starts afterwards inherits it: the control
//!   loop, the vhost-user connect/activate/watch threads, the serial
//!   socket. It allows what building and running a VM takes (KVM, guest
//!   memory, vhost-user sockets, eventfds, the log) and nothing that
//!   reaches other programs or the file system beyond that (no `execve`,
//!   `ptrace`, `mount`, `chmod`...).
//! - [`Role::Vcpu`]: each vCPU thread narrows it further on start: KVM
//!   ioctls, eventfd and console writes, the log, locks; no sockets
//!   opened, no files opened, no memory maps beyond the allocator's.
//! - [`Role::Api`]: the API's accept thread (and so its connection
//!   threads): accept, read and write the HTTP socket, hand requests to
//!   the main thread, kick vCPUs for a pause.
//!
//! The threads that run device daemons for the VM ([`crate::spawned`])
//! are started through [`spawn_unfiltered`] by a thread that [`init`]
//! starts before the filter: a filter survives `execve`, and the daemons
//! jail themselves with calls the VMM has no business making.
//!
//! A call outside the list kills the process (`SECCOMP_RET_KILL_PROCESS`;
//! the kernel log names the thread and the system call number) with
//! `--seccomp true`; `--seccomp log` lets it run and logs it there.

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;
use std::thread::JoinHandle;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// `--seccomp`: what a system call outside a thread's list meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `true`: the process is killed.
    Kill,
    /// `log`: it runs, and the kernel logs it (for finding what a list
    /// lacks).
    Log,
    /// `false`: no filter.
    Off,
}

impl Mode {
    /// Cloud Hypervisor's spelling: `true`, `false`, `log`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "true" => Some(Mode::Kill),
            "log" => Some(Mode::Log),
            "false" => Some(Mode::Off),
            _ => None,
        }
    }
}

/// What a thread does, and so which calls it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The main thread and what it starts (see the module's doc).
    Vmm,
    /// A vCPU thread.
    Vcpu,
    /// The control API's threads.
    Api,
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The lists do not make a filter for this architecture (a bug here).
    #[error("cannot build the {role:?} seccomp filter: {source}")]
    Build {
        /// Whose filter.
        role: Role,
        /// Cause.
        source: BackendError,
    },
    /// prctl or seccomp(2) refused the filter.
    #[error("cannot install the {role:?} seccomp filter: {source}")]
    Install {
        /// Whose filter.
        role: Role,
        /// Cause.
        source: seccompiler::Error,
    },
    /// The thread that starts unfiltered threads could not start.
    #[error("cannot start the thread that starts device daemons: {0}")]
    Launcher(#[source] io::Error),
    /// [`init`] ran twice.
    #[error("the seccomp mode is already set")]
    AlreadySet,
}

/// The mode [`init`] set; unset (tests, library users) means no filters.
static MODE: OnceLock<Mode> = OnceLock::new();

/// Jobs for the thread started before the main thread's filter.
type Job = Box<dyn FnOnce() + Send>;
static LAUNCHER: OnceLock<Sender<Job>> = OnceLock::new();

/// Sets the mode for every thread role and, unless it is [`Mode::Off`],
/// starts the launcher thread of [`spawn_unfiltered`] and installs
/// [`Role::Vmm`] on the calling thread. `main` calls it once, before the
/// VM is built.
pub fn init(mode: Mode) -> Result<(), SeccompError> {
    MODE.set(mode).map_err(|_| SeccompError::AlreadySet)?;
    if mode == Mode::Off {
        log::info!("seccomp: off (--seccomp false)");
        return Ok(());
    }
    let (tx, rx) = channel::<Job>();
    std::thread::Builder::new()
        .name("vmm-launcher".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })
        .map_err(SeccompError::Launcher)?;
    let _ = LAUNCHER.set(tx);
    apply(Role::Vmm)
}

/// Installs `role`'s filter on the calling thread (filters stack: a
/// thread started by a filtered one is held by both). Nothing without
/// [`init`], or with [`Mode::Off`].
pub fn apply(role: Role) -> Result<(), SeccompError> {
    let action = match MODE.get() {
        None | Some(Mode::Off) => return Ok(()),
        Some(Mode::Kill) => SeccompAction::KillProcess,
        Some(Mode::Log) => SeccompAction::Log,
    };
    let install = |program: &BpfProgram| {
        seccompiler::apply_filter(program).map_err(|source| SeccompError::Install { role, source })
    };
    // The role's filter last: it may not allow installing another.
    for program in answers(role)? {
        install(&program)?;
    }
    install(&build(role, action)?)?;
    log::debug!("seccomp: {role:?} filter on this thread");
    Ok(())
}

/// A filter under which the calls in `nrs` fail with `errno` and all else
/// runs.
fn answer(role: Role, nrs: &[i64], errno: i32) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Build { role, source };
    let rules = nrs.iter().map(|&nr| (nr, Vec::new())).collect();
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(err)?;
    let action = SeccompAction::Errno(errno as u32);
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, action, arch).map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

/// The filters `role` gets before its own, each answering a call with an
/// error instead of running it. The role's own filter lists the call, so
/// that this answer, not a kill, is the one that counts (the kernel takes
/// the strictest of a thread's filters: kill, then errno, then allow).
///
/// - [`Role::Vmm`] (and so every thread): `clone3` answers ENOSYS. Its
///   flags sit in a structure a filter cannot read, so only `clone`,
///   whose flags are an argument, is checked to start a thread (see
///   [`arg_rules`]); glibc falls back to it, as under Docker's profile.
/// - [`Role::Vcpu`], [`Role::Api`]: `openat` answers ENOENT, as crosvm's
///   policies answer it: a vCPU or API thread opens no file, but glibc's
///   allocator opens `/proc/sys/vm/overcommit_memory` the first time a
///   thread's heap shrinks (and copes when it cannot).
fn answers(role: Role) -> Result<Vec<BpfProgram>, SeccompError> {
    Ok(match role {
        Role::Vmm => vec![answer(role, &[libc::SYS_clone3], libc::ENOSYS)?],
        Role::Vcpu | Role::Api => vec![answer(role, &[libc::SYS_openat], libc::ENOENT)?],
    })
}

/// Starts `f` on a thread named `name` that no filter holds: one started
/// by the launcher thread when [`init`] installed filters, else an
/// ordinary one. For threads that run other programs.
pub fn spawn_unfiltered<F, T>(name: String, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let Some(launcher) = LAUNCHER.get() else {
        return std::thread::Builder::new().name(name).spawn(f);
    };
    let (tx, rx) = channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(std::thread::Builder::new().name(name).spawn(f));
    });
    launcher
        .send(job)
        .map_err(|_| io::Error::other("the launcher thread ended"))?;
    rx.recv()
        .map_err(|_| io::Error::other("the launcher thread ended"))?
}

/// The Rust runtime, glibc and the allocator on any thread: memory,
/// locks, thread start and end, signals (the vCPU kick handler returns
/// through `rt_sigreturn`), time, the log on stderr or `--log-file`.
const RUNTIME: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    // Debug builds check a descriptor is open before taking it over.
    libc::SYS_fcntl,
];

/// Starting named threads.
const THREADS: &[i64] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_prctl,
    libc::SYS_set_tid_address,
];

/// A vCPU: KVM_RUN and the register ioctls (in [`KVM_IOCTLS`]); exits
/// handled on the thread write eventfds (irqfd, a ring's kick), the
/// console and the log; a device's config read peeks at its socket for a
/// hang-up; a reset, power-off or failure goes to the main thread.
const VCPU: &[i64] = &[
    // Answered ENOENT by a second filter (see `answers`).
    libc::SYS_openat,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_tgkill,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// The API: the accept loop polls the listener and its stop eventfd,
/// starts a thread per connection, reads and writes HTTP; requests go to
/// the main thread over channels; a pause kicks the vCPUs (`tgkill`);
/// `vm.create` checks that the files it names exist.
const API: &[i64] = &[
    // Answered ENOENT by a second filter (see `answers`).
    libc::SYS_openat,
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_eventfd2,
    libc::SYS_tgkill,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
];

/// The main thread and what it starts: all of [`API`] and [`VCPU`], and
/// building the VM: `/dev/kvm`, the kernel and initramfs, guest memory
/// (a `/dev/shm` file or a memfd, on hugetlbfs if asked, prefaulted),
/// vhost-user sockets with fds in both directions, eventfds and epoll,
/// the serial socket, the kick signal's handler, the vCPUs' signal
/// masks and CPU affinity, binding memory zones to host nodes, removing
/// the files it made (socket, memory file).
const VMM: &[i64] = &[
    libc::SYS_openat,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_memfd_create,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_getdents64,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_mkdirat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_socketpair,
    libc::SYS_getsockname,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_create,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_rt_sigaction,
    libc::SYS_kill,
    libc::SYS_tkill,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    libc::SYS_getcwd,
    // A vCPU or API thread installing its own, narrower filter.
    libc::SYS_seccomp,
    // A vCPU thread pinning itself (`--cpus affinity=`) before that.
    libc::SYS_sched_setaffinity,
    // A memory zone bound to its host node (`host_numa_node=`).
    libc::SYS_mbind,
];

/// The ioctl type byte of KVM's requests (`KVMIO`, bits 8-15).
const KVMIO: u64 = 0xAE;

/// The other ioctl requests: (non-)blocking sockets, close-on-exec,
/// bytes readable, the terminal's mode for `--serial stdio`.
// The request constants are c_ulong with glibc, c_int with musl.
#[allow(clippy::unnecessary_cast)]
const TERMINAL_AND_SOCKET_IOCTLS: &[u64] = &[
    libc::FIONBIO as u64,
    libc::FIOCLEX as u64,
    libc::FIONCLEX as u64,
    libc::FIONREAD as u64,
    libc::TCGETS as u64,
    libc::TCSETS as u64,
    libc::TCSETSW as u64,
    libc::TIOCGWINSZ as u64,
];

/// The KVM requests that raise a guest interrupt, which the API's threads
/// make when a request reaches a device model (the power button's SCI):
/// `KVM_IRQ_LINE`, `KVM_IRQ_LINE_STATUS`, `KVM_SIGNAL_MSI` (`_IOW`/`_IOWR`
/// of `KVMIO` with `struct kvm_irq_level` or `struct kvm_msi`).
const KVM_INTERRUPT_IOCTLS: &[u64] = &[0x4008_AE61, 0xC008_AE67, 0x4020_AEA5];

/// `role`'s allowed system calls, `ioctl` excepted.
fn calls(role: Role) -> Vec<i64> {
    let mut calls = RUNTIME.to_vec();
    match role {
        Role::Vcpu => calls.extend(VCPU),
        Role::Api => calls.extend(THREADS.iter().chain(API)),
        Role::Vmm => calls.extend(THREADS.iter().chain(API).chain(VCPU).chain(VMM)),
    }
    calls.sort_unstable();
    calls.dedup();
    calls
}

/// The futex operations a thread may ask for (the low 7 bits of the
/// operation, without FUTEX_PRIVATE_FLAG and FUTEX_CLOCK_REALTIME): what
/// Rust's locks, glibc's condition variables and thread joins use; not
/// the priority-inheritance or `futex_waitv` families.
const FUTEX_OPS: &[u64] = &[
    libc::FUTEX_WAIT as u64,
    libc::FUTEX_WAKE as u64,
    libc::FUTEX_REQUEUE as u64,
    libc::FUTEX_CMP_REQUEUE as u64,
    libc::FUTEX_WAKE_OP as u64,
    libc::FUTEX_WAIT_BITSET as u64,
    libc::FUTEX_WAKE_BITSET as u64,
];

/// The fcntl commands: descriptor and status flags (non-blocking sockets,
/// close-on-exec; debug builds check a descriptor is open with
/// F_GETFD) and close-on-exec duplicates (`try_clone`).
const FCNTL_CMDS: &[u64] = &[
    libc::F_GETFD as u64,
    libc::F_SETFD as u64,
    libc::F_GETFL as u64,
    libc::F_SETFL as u64,
    libc::F_DUPFD_CLOEXEC as u64,
];

/// The prctl options: a thread naming itself (`std::thread::Builder`),
/// and NoNewPrivs before a vCPU or API thread installs its own filter.
const PRCTL_OPTIONS: &[u64] = &[
    libc::PR_SET_NAME as u64,
    libc::PR_GET_NAME as u64,
    libc::PR_SET_NO_NEW_PRIVS as u64,
];

/// The argument checks of calls other than `ioctl`, as Cloud Hypervisor's
/// lists make them and beyond (a call absent from a role's list stays
/// refused whatever its arguments):
/// - `mmap`, `mprotect`: never executable memory (no code is loaded after
///   start; guest memory and the allocator's are read/write);
/// - `futex`: [`FUTEX_OPS`]; `fcntl`: [`FCNTL_CMDS`]; `prctl`:
///   [`PRCTL_OPTIONS`];
/// - `clone`: threads only (CLONE_THREAD set), never a new process: the
///   daemons the VMM runs are started from unfiltered threads
///   ([`spawn_unfiltered`]);
/// - `socket`, `socketpair`: AF_UNIX only (vhost-user, the API, the
///   serial socket); the VMM speaks no network protocol.
fn arg_rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    use SeccompCmpArgLen::{Dword, Qword};
    let arg = |n, len, op, value| SeccompCondition::new(n, len, op, value);
    let one = |n, len, op, value| -> Result<Vec<SeccompRule>, BackendError> {
        Ok(vec![SeccompRule::new(vec![arg(n, len, op, value)?])?])
    };
    let any_of = |n, mask: Option<u64>, values: &[u64]| -> Result<Vec<SeccompRule>, BackendError> {
        values
            .iter()
            .map(|&v| {
                let op = mask.map_or(SeccompCmpOp::Eq, SeccompCmpOp::MaskedEq);
                SeccompRule::new(vec![arg(n, Dword, op, v)?])
            })
            .collect()
    };
    let no_exec = || one(2, Qword, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0);
    let thread = libc::CLONE_THREAD as u64;
    let unix = libc::AF_UNIX as u64;
    Ok(BTreeMap::from([
        (libc::SYS_mmap, no_exec()?),
        (libc::SYS_mprotect, no_exec()?),
        (libc::SYS_futex, any_of(1, Some(0x7f), FUTEX_OPS)?),
        (libc::SYS_fcntl, any_of(1, None, FCNTL_CMDS)?),
        (libc::SYS_prctl, any_of(0, None, PRCTL_OPTIONS)?),
        (
            libc::SYS_clone,
            one(0, Qword, SeccompCmpOp::MaskedEq(thread), thread)?,
        ),
        (libc::SYS_socket, one(0, Dword, SeccompCmpOp::Eq, unix)?),
        (libc::SYS_socketpair, one(0, Dword, SeccompCmpOp::Eq, unix)?),
    ]))
}

/// `role`'s ioctl rules: KVM's requests (by type byte) for the vCPUs and
/// the main thread, the socket and terminal requests for the main thread
/// and the API.
fn ioctl_rules(role: Role) -> Result<Vec<SeccompRule>, BackendError> {
    let request = |op, value| SeccompCondition::new(1, SeccompCmpArgLen::Dword, op, value);
    let kvm = || -> Result<SeccompRule, BackendError> {
        SeccompRule::new(vec![request(SeccompCmpOp::MaskedEq(0xff00), KVMIO << 8)?])
    };
    let each = |requests: &[u64]| -> Result<Vec<SeccompRule>, BackendError> {
        requests
            .iter()
            .map(|&r| SeccompRule::new(vec![request(SeccompCmpOp::Eq, r)?]))
            .collect()
    };
    let others = || each(TERMINAL_AND_SOCKET_IOCTLS);
    Ok(match role {
        Role::Vcpu => vec![kvm()?],
        Role::Api => {
            let mut rules = others()?;
            rules.extend(each(KVM_INTERRUPT_IOCTLS)?);
            rules
        }
        Role::Vmm => {
            let mut rules = others()?;
            rules.push(kvm()?);
            rules
        }
    })
}

/// The BPF program of `role`: its calls run, anything else meets
/// `mismatch`.
fn build(role: Role, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let err = |source| SeccompError::Build { role, source };
    let mut args = arg_rules().map_err(err)?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = calls(role)
        .into_iter()
        .map(|nr| (nr, args.remove(&nr).unwrap_or_default()))
        .collect();
    rules.insert(libc::SYS_ioctl, ioctl_rules(role).map_err(err)?);
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(err)?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch).map_err(err)?;
    BpfProgram::try_from(filter).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_cloud_hypervisors_values() {
        assert_eq!(Mode::parse("true"), Some(Mode::Kill));
        assert_eq!(Mode::parse("log"), Some(Mode::Log));
        assert_eq!(Mode::parse("false"), Some(Mode::Off));
        assert_eq!(Mode::parse("yes"), None);
    }

    #[test]
    fn every_role_builds_and_the_narrow_ones_are_inside_the_vmms() {
        for role in [Role::Vmm, Role::Vcpu, Role::Api] {
            build(role, SeccompAction::KillProcess).unwrap();
        }
        let vmm = calls(Role::Vmm);
        for role in [Role::Vcpu, Role::Api] {
            for nr in calls(role) {
                assert!(
                    vmm.contains(&nr),
                    "{role:?} allows {nr}, the VMM's list does not"
                );
            }
        }
    }

    #[test]
    fn no_role_runs_programs_or_touches_mounts_or_other_processes() {
        for role in [Role::Vmm, Role::Vcpu, Role::Api] {
            let calls = calls(role);
            for nr in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_ptrace,
                libc::SYS_mount,
                libc::SYS_umount2,
                libc::SYS_pivot_root,
                libc::SYS_chroot,
                libc::SYS_setns,
                libc::SYS_unshare,
                libc::SYS_chmod,
                libc::SYS_fchmodat,
                libc::SYS_chown,
                libc::SYS_process_vm_writev,
                libc::SYS_init_module,
                libc::SYS_bpf,
            ] {
                assert!(!calls.contains(&nr), "{role:?} allows {nr}");
            }
        }
        for role in [Role::Vcpu, Role::Api] {
            for nr in [libc::SYS_socket, libc::SYS_connect, libc::SYS_bind] {
                assert!(!calls(role).contains(&nr), "{role:?} allows {nr}");
            }
        }
    }

    #[test]
    fn the_interrupt_requests_are_kvms() {
        use kvm_bindings::{kvm_irq_level, kvm_msi};
        let ioc =
            |dir: u64, nr: u64, size: usize| dir << 30 | (size as u64) << 16 | KVMIO << 8 | nr;
        let (write, read_write) = (1, 3);
        assert_eq!(
            KVM_INTERRUPT_IOCTLS,
            [
                ioc(write, 0x61, std::mem::size_of::<kvm_irq_level>()),
                ioc(read_write, 0x67, std::mem::size_of::<kvm_irq_level>()),
                ioc(write, 0xa5, std::mem::size_of::<kvm_msi>()),
            ]
        );
    }

    /// Runs `call` in a child process under `role`'s filters (killing on
    /// a mismatch); how the child ended (its exit code is `call`'s).
    fn in_child_under(role: Role, call: fn() -> i32) -> nix::sys::wait::WaitStatus {
        let mut programs = answers(role).unwrap();
        programs.push(build(role, SeccompAction::KillProcess).unwrap());
        // SAFETY: the child only installs the prepared filters (prctl and
        // seccomp(2), no allocation), makes the call and `_exit`s.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = if programs
                    .iter()
                    .all(|p| seccompiler::apply_filter(p).is_ok())
                {
                    call()
                } else {
                    3
                };
                // SAFETY: ends the child at once, no destructors or atexit.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                nix::sys::wait::waitpid(child, None).unwrap()
            }
        }
    }

    /// A call outside a role's list, or inside it with arguments its
    /// checks refuse, kills; clone3 and a vCPU's or the API's opens get an
    /// error; threads still start.
    #[test]
    fn a_call_outside_a_threads_list_kills_the_process_and_opens_fail() {
        use nix::sys::signal::Signal;
        use nix::sys::wait::WaitStatus;
        fn open_socket() -> i32 {
            // SAFETY: a plain socket(2); the descriptor is closed.
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            if fd >= 0 {
                // SAFETY: `fd` was just opened here.
                unsafe { libc::close(fd) };
            }
            0
        }
        fn ask_kvm_for_a_vm() -> i32 {
            // A KVM ioctl on a descriptor that is not KVM's: it fails
            // (EBADF) but the filter lets it through.
            // SAFETY: an ioctl on fd -1 touches nothing.
            unsafe { libc::ioctl(-1, 0xAE01 as _, 0) };
            0
        }
        fn getppid() -> i32 {
            nix::unistd::getppid();
            0
        }
        /// 0 if opening a file that exists fails with ENOENT, else 1.
        fn open_a_file() -> i32 {
            match std::fs::File::open("/proc/self/status") {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => 0,
                _ => 1,
            }
        }
        /// Calls the VMM's lists allow, with arguments their checks refuse.
        fn open_an_inet_socket() -> i32 {
            // SAFETY: a plain socket(2); the descriptor is closed.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            if fd >= 0 {
                // SAFETY: `fd` was just opened here.
                unsafe { libc::close(fd) };
            }
            0
        }
        /// Maps an anonymous page with `prot`, then (if `then` is not
        /// 0) changes it to `then`, and unmaps it.
        fn anonymous_page(prot: i32, then: i32) -> i32 {
            // SAFETY: an anonymous private mapping nobody else knows of,
            // its protection changed and unmapped again.
            unsafe {
                let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
                let p = libc::mmap(std::ptr::null_mut(), 4096, prot, flags, -1, 0);
                if p != libc::MAP_FAILED {
                    if then != 0 {
                        libc::mprotect(p, 4096, then);
                    }
                    libc::munmap(p, 4096);
                }
            }
            0
        }
        fn map_executable_memory() -> i32 {
            anonymous_page(libc::PROT_READ | libc::PROT_EXEC, 0)
        }
        fn make_a_page_executable() -> i32 {
            let rw = libc::PROT_READ | libc::PROT_WRITE;
            anonymous_page(rw, libc::PROT_READ | libc::PROT_EXEC)
        }
        fn set_an_fd_owner() -> i32 {
            // SAFETY: fcntl on fd 0 with a harmless command.
            unsafe { libc::fcntl(0, libc::F_SETOWN, 0) };
            0
        }
        fn a_pi_futex() -> i32 {
            let word = 0u32;
            // SAFETY: FUTEX_UNLOCK_PI on a local word (EPERM if it ran).
            unsafe { libc::syscall(libc::SYS_futex, &word, libc::FUTEX_UNLOCK_PI, 0, 0, 0, 0) };
            0
        }
        fn prctl_dumpable() -> i32 {
            // SAFETY: reads a flag of this process.
            unsafe { libc::prctl(libc::PR_GET_DUMPABLE) };
            0
        }
        fn fork_a_process() -> i32 {
            // SAFETY: the child (if the call ran) exits at once, without
            // destructors.
            match unsafe { libc::fork() } {
                // SAFETY: ends the child at once, no destructors or atexit.
                0 => unsafe { libc::_exit(0) },
                _ => 0,
            }
        }
        /// 0 if clone3 answers ENOSYS (glibc then starts threads with
        /// clone), else 1.
        fn clone3_is_enosys() -> i32 {
            // SAFETY: clone3 with no argument structure creates nothing
            // (EFAULT/EINVAL if it ran).
            let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            i32::from(!(r == -1 && errno == Some(libc::ENOSYS)))
        }
        /// 0 if a thread starts and is joined under the filter.
        fn start_a_thread() -> i32 {
            match std::thread::Builder::new().name("t".into()).spawn(|| 7) {
                Ok(t) => i32::from(t.join().ok() != Some(7)),
                Err(_) => 1,
            }
        }
        for (role, call, killed) in [
            (Role::Vmm, open_an_inet_socket as fn() -> i32, true),
            (Role::Vmm, map_executable_memory, true),
            (Role::Vcpu, map_executable_memory, true),
            (Role::Api, make_a_page_executable, true),
            (Role::Vmm, set_an_fd_owner, true),
            (Role::Vmm, a_pi_futex, true),
            (Role::Api, prctl_dumpable, true),
            (Role::Vmm, fork_a_process, true),
            (Role::Vmm, clone3_is_enosys, false),
            (Role::Vmm, start_a_thread, false),
            (Role::Api, start_a_thread, false),
            (Role::Vcpu, open_socket, true),
            (Role::Api, open_socket, true),
            (Role::Vmm, open_socket, false),
            (Role::Vcpu, ask_kvm_for_a_vm, false),
            (Role::Api, ask_kvm_for_a_vm, true),
            (Role::Vmm, getppid, true),
            (Role::Vcpu, open_a_file, false),
            (Role::Api, open_a_file, false),
        ] {
            let status = in_child_under(role, call);
            let want = if killed {
                WaitStatus::Signaled(status.pid().unwrap(), Signal::SIGSYS, false)
            } else {
                WaitStatus::Exited(status.pid().unwrap(), 0)
            };
            assert!(
                status == want
                    || (killed && matches!(status, WaitStatus::Signaled(_, Signal::SIGSYS, true))),
                "{role:?} {call:?}: {status:?}, expected {want:?}"
            );
        }
    }
}
