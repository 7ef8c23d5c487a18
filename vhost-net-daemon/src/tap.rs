//! The tap device: one queue file per queue pair, opened by name (the tap
//! exists, or `--create` makes it) or taken from descriptors a management
//! layer passes (`--tap-fd`). Every queue carries the 12-byte
//! `virtio_net_hdr_v1` in front of each frame (IFF_VNET_HDR +
//! TUNSETVNETHDRSZ), so frames and their offload metadata pass between
//! guest memory and the kernel with no translation.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use libc::{
    IFF_ATTACH_QUEUE, IFF_DETACH_QUEUE, IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR,
    TUNGETIFF, TUNSETIFF, TUNSETOFFLOAD, TUNSETQUEUE, TUNSETVNETHDRSZ,
};
use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// TUNSETOFFLOAD flags: what the reader of the tap (the guest) accepts.
pub mod offload {
    pub use libc::{
        TUN_F_CSUM as CSUM, TUN_F_TSO4 as TSO4, TUN_F_TSO6 as TSO6, TUN_F_TSO_ECN as TSO_ECN,
    };
}

/// The header size every queue is set to.
pub const VNET_HDR_LEN: usize = 12;
/// Longest interface name (IFNAMSIZ - 1).
pub const NAME_MAX: usize = 15;

/// Errors opening or configuring the tap; each names it.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// A name the kernel cannot take.
    #[error("--tap {0:?}: an interface name is 1 to 15 bytes with no '/', ':' or whitespace")]
    BadName(String),
    /// `--tap NAME` without `--create` and no such interface.
    #[error("tap {0} does not exist in this network namespace (create it, e.g. `ip tuntap add {0} mode tap multi_queue`, or pass --create)")]
    Missing(String),
    /// The interface exists but is not a tap we can attach to.
    #[error("cannot attach to tap {name} queue {queue}: {source}{hint}")]
    Attach {
        /// Interface.
        name: String,
        /// Queue pair.
        queue: usize,
        /// Cause.
        source: io::Error,
        /// What probably went wrong.
        hint: &'static str,
    },
    /// Opening /dev/net/tun failed.
    #[error("cannot open /dev/net/tun: {0}")]
    Open(#[source] io::Error),
    /// A `--tap-fd` that is not a usable tap queue.
    #[error("--tap-fd {fd}: {why}")]
    BadFd {
        /// The descriptor.
        fd: RawFd,
        /// What is wrong with it.
        why: String,
    },
    /// An ioctl on a queue failed.
    #[error("tap {name}: {what}: {source}")]
    Ioctl {
        /// Interface.
        name: String,
        /// The operation.
        what: &'static str,
        /// Cause.
        source: io::Error,
    },
}

/// `struct ifreq` with the name and the flags member of the union.
#[repr(C)]
#[derive(Clone, Copy)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

impl IfReq {
    /// `flags` are linux/if_tun.h's `IFF_*`, which all fit the short
    /// `ifr_flags`.
    fn new(name: &str, flags: libc::c_int) -> Self {
        let mut r = IfReq {
            name: [0; 16],
            flags: flags as i16,
            _pad: [0; 22],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }

    fn flags(&self) -> libc::c_int {
        libc::c_int::from(self.flags)
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

const _: () = assert!(std::mem::size_of::<IfReq>() == 40);

fn ioctl_ptr<T>(fd: RawFd, req: libc::c_ulong, arg: *mut T) -> io::Result<()> {
    // SAFETY: every caller passes a request whose argument is `*mut T` of
    // the right type and size (an ifreq or an int), valid for the call.
    if unsafe { libc::ioctl(fd, req, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ioctl_val(fd: RawFd, req: libc::c_ulong, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the requests used with this take an integer argument by value.
    if unsafe { libc::ioctl(fd, req, arg) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Checks `name` as an interface name.
pub fn check_name(name: &str) -> Result<(), TapError> {
    if name.is_empty()
        || name.len() > NAME_MAX
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return Err(TapError::BadName(name.to_string()));
    }
    Ok(())
}

fn exists(name: &str) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok_and(|i| i != 0)
}

/// An interface control socket (for MTU and link flags).
fn ctl_socket() -> io::Result<File> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: `fd` is a descriptor socket(2) just created; nothing else
    // owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// The tap: its name and one queue file per queue pair.
#[derive(Debug)]
pub struct Tap {
    name: String,
    queues: Vec<File>,
    /// Whether we created it (it goes away when we exit).
    created: bool,
}

impl Tap {
    /// Attaches `pairs` queues to tap `name`; creates it when `create` is
    /// set and it does not exist.
    pub fn open(name: &str, pairs: usize, create: bool) -> Result<Tap, TapError> {
        check_name(name)?;
        let existed = exists(name);
        if !existed && !create {
            return Err(TapError::Missing(name.to_string()));
        }
        let mut flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if pairs > 1 {
            flags |= IFF_MULTI_QUEUE;
        }
        let mut queues = Vec::with_capacity(pairs);
        for queue in 0..pairs {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open("/dev/net/tun")
                .map_err(TapError::Open)?;
            let mut req = IfReq::new(name, flags);
            let mut r = ioctl_ptr(f.as_raw_fd(), TUNSETIFF, &mut req);
            if pairs == 1
                && existed
                && matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EINVAL))
            {
                // A multi_queue tap takes a single queue too, asked for as one.
                flags |= IFF_MULTI_QUEUE;
                req = IfReq::new(name, flags);
                r = ioctl_ptr(f.as_raw_fd(), TUNSETIFF, &mut req);
            }
            if let Err(source) = r {
                let hint = match source.raw_os_error() {
                    Some(libc::EINVAL) if pairs > 1 => {
                        " (is it a tap created with multi_queue? `ip tuntap add NAME mode tap multi_queue`)"
                    }
                    Some(libc::EINVAL) => " (is it a tun rather than a tap?)",
                    Some(libc::EPERM) => " (CAP_NET_ADMIN, or the tap's owner, is needed)",
                    Some(libc::EBUSY) => " (another process holds its queues)",
                    _ => "",
                };
                return Err(TapError::Attach {
                    name: name.to_string(),
                    queue,
                    source,
                    hint,
                });
            }
            queues.push(f);
        }
        let tap = Tap {
            name: name.to_string(),
            queues,
            created: !existed,
        };
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    /// Takes queue files a management layer opened (one per pair). Each
    /// must be an attached tap queue with IFF_NO_PI and IFF_VNET_HDR, and
    /// IFF_MULTI_QUEUE when there are several.
    pub fn from_fds(fds: &[RawFd]) -> Result<Tap, TapError> {
        let mut name = String::new();
        let mut queues = Vec::with_capacity(fds.len());
        for &fd in fds {
            let bad = |why: String| TapError::BadFd { fd, why };
            if fcntl(fd, FcntlArg::F_GETFD).is_err() {
                return Err(bad("not an open descriptor".into()));
            }
            let mut req = IfReq::new("", 0);
            ioctl_ptr(fd, TUNGETIFF, &mut req)
                .map_err(|e| bad(format!("not an attached tun/tap queue ({e})")))?;
            let want = [
                (IFF_TAP, "IFF_TAP (it is a tun device)"),
                (IFF_NO_PI, "IFF_NO_PI"),
                (IFF_VNET_HDR, "IFF_VNET_HDR"),
            ];
            if let Some((_, what)) = want.iter().find(|(f, _)| req.flags() & f == 0) {
                return Err(bad(format!("tap {} was opened without {what}", req.name())));
            }
            if fds.len() > 1 && req.flags() & IFF_MULTI_QUEUE == 0 {
                return Err(bad(format!(
                    "tap {} has no IFF_MULTI_QUEUE, but {} queue pairs were asked for",
                    req.name(),
                    fds.len()
                )));
            }
            if !name.is_empty() && name != req.name() {
                return Err(bad(format!(
                    "belongs to tap {}, the others to {name}",
                    req.name()
                )));
            }
            name = req.name();
            // A new descriptor for the same open file: the caller keeps `fd`.
            let dup = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3))
                .map_err(|e| bad(format!("dup: {}", io::Error::from(e))))?;
            // SAFETY: `dup` is a descriptor fcntl just created; nothing else
            // owns it.
            let f = unsafe { File::from_raw_fd(dup) };
            if let Ok(fl) = fcntl(dup, FcntlArg::F_GETFL) {
                let fl = OFlag::from_bits_truncate(fl) | OFlag::O_NONBLOCK;
                let _ = fcntl(dup, FcntlArg::F_SETFL(fl));
            }
            queues.push(f);
        }
        let tap = Tap {
            name,
            queues,
            created: false,
        };
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    fn err(&self, what: &'static str) -> impl FnOnce(io::Error) -> TapError + '_ {
        move |source| TapError::Ioctl {
            name: self.name.clone(),
            what,
            source,
        }
    }

    fn set_vnet_hdr_len(&self) -> Result<(), TapError> {
        for q in &self.queues {
            let mut len: libc::c_int = VNET_HDR_LEN as libc::c_int;
            ioctl_ptr(q.as_raw_fd(), TUNSETVNETHDRSZ, &mut len)
                .map_err(self.err("TUNSETVNETHDRSZ 12"))?;
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queue `i`'s descriptor.
    pub fn fd(&self, i: usize) -> Option<RawFd> {
        self.queues.get(i).map(|f| f.as_raw_fd())
    }

    /// Queue `i`'s file.
    pub fn queue(&self, i: usize) -> Option<&File> {
        self.queues.get(i)
    }

    /// Whether this process created the tap.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Tells the kernel which offloads the guest takes (`offload::*`).
    pub fn set_offloads(&self, flags: u32) -> Result<(), TapError> {
        let fd = self.queues[0].as_raw_fd();
        ioctl_val(fd, TUNSETOFFLOAD, libc::c_ulong::from(flags)).map_err(self.err("TUNSETOFFLOAD"))
    }

    /// The subset of `wanted` offloads the kernel accepts; leaves none set.
    pub fn probe_offloads(&self, wanted: u32) -> u32 {
        let fd = self.queues[0].as_raw_fd();
        let mut ok = 0;
        // Each flag depends on CSUM; ECN on TSO.
        for f in [
            offload::CSUM,
            offload::TSO4,
            offload::TSO6,
            offload::TSO_ECN,
        ] {
            if wanted & f != 0 && ioctl_val(fd, TUNSETOFFLOAD, libc::c_ulong::from(ok | f)).is_ok()
            {
                ok |= f;
            }
        }
        let _ = ioctl_val(fd, TUNSETOFFLOAD, 0);
        ok
    }

    /// Attaches (`true`) or detaches queue `i`, so the kernel steers frames
    /// only to queues a guest reads. Only multi-queue taps do this.
    pub fn set_queue_attached(&self, i: usize, attached: bool) -> Result<(), TapError> {
        let Some(q) = self.queues.get(i) else {
            return Ok(());
        };
        if self.queues.len() < 2 {
            return Ok(());
        }
        let mut req = IfReq::new(
            "",
            if attached {
                IFF_ATTACH_QUEUE
            } else {
                IFF_DETACH_QUEUE
            },
        );
        match ioctl_ptr(q.as_raw_fd(), TUNSETQUEUE, &mut req) {
            Ok(()) => Ok(()),
            // Already in that state.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            Err(e) => Err(self.err("TUNSETQUEUE")(e)),
        }
    }

    /// Sets the interface's MTU.
    pub fn set_mtu(&self, mtu: u16) -> Result<(), TapError> {
        let s = ctl_socket().map_err(self.err("socket for SIOCSIFMTU"))?;
        let mut req = IfReq::new(&self.name, 0);
        // The union's int member (ifr_mtu) sits where the flags do.
        let mtu = i32::from(mtu).to_ne_bytes();
        req.flags = i16::from_ne_bytes([mtu[0], mtu[1]]);
        req._pad[0..2].copy_from_slice(&mtu[2..4]);
        ioctl_ptr(s.as_raw_fd(), libc::SIOCSIFMTU, &mut req).map_err(self.err("SIOCSIFMTU"))
    }

    /// Brings the interface up.
    pub fn set_up(&self) -> Result<(), TapError> {
        let s = ctl_socket().map_err(self.err("socket for SIOCSIFFLAGS"))?;
        let mut req = IfReq::new(&self.name, 0);
        ioctl_ptr(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req).map_err(self.err("SIOCGIFFLAGS"))?;
        req.flags |= libc::IFF_UP as i16;
        ioctl_ptr(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req).map_err(self.err("SIOCSIFFLAGS"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "has space", "sixteen-chars-xx", "a:b"] {
            assert!(
                matches!(check_name(bad), Err(TapError::BadName(_))),
                "{bad:?}"
            );
        }
        check_name("tap0").unwrap();
        check_name("fifteen-chars-x").unwrap();
    }

    #[test]
    fn a_missing_tap_is_named_with_a_hint() {
        let e = Tap::open("vnd-nonexist0", 1, false).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("vnd-nonexist0") && s.contains("--create"), "{s}");
    }

    #[test]
    fn a_descriptor_that_is_not_a_tap_is_refused() {
        let f = File::open("/dev/null").unwrap();
        let e = Tap::from_fds(&[f.as_raw_fd()]).unwrap_err();
        assert!(
            e.to_string().contains("not an attached tun/tap queue"),
            "{e}"
        );
        let e = Tap::from_fds(&[9999]).unwrap_err();
        assert!(e.to_string().contains("not an open descriptor"), "{e}");
    }

    #[test]
    fn ifreq_name_round_trips() {
        assert_eq!(IfReq::new("tap7", 0).name(), "tap7");
    }
}
