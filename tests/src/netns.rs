//! Network namespaces for net tests: every frame a test sends or receives
//! stays inside a namespace the test made (`ip netns add`), on a tap in it.
//! The namespace is deleted on drop, taking its taps with it.
//!
//! [`NetNs::packet_socket`] opens an AF_PACKET socket on the tap's host
//! side from inside the namespace (a thread enters it with `setns`), so a
//! test sees exactly the frames the daemon writes and can inject frames
//! the daemon must read.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Errors of the namespace fixture; each names the command or interface.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// `ip` failed.
    #[error("`ip {args}` failed: {why}")]
    Ip {
        /// Arguments.
        args: String,
        /// Exit status and stderr, or the spawn error.
        why: String,
    },
    /// A system call failed.
    #[error("{what} in netns {ns}: {source}")]
    Sys {
        /// Namespace.
        ns: String,
        /// The call.
        what: String,
        /// Cause.
        source: io::Error,
    },
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, NetNsError>;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with `args`; its stdout on success.
pub fn ip<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("ip")
        .args(&args)
        .output()
        .map_err(|e| NetNsError::Ip {
            args: shown.clone(),
            why: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetNsError::Ip {
            args: shown,
            why: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `<prefix>-<pid>-<n>` with its loopback up.
    pub fn new(prefix: &str) -> Result<Self> {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(["netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// [`NetNs::new`] with one single-queue tap `tap` that has `addr`
    /// (CIDR) and is up.
    pub fn with_tap(prefix: &str, tap: &str, addr: &str) -> Result<Self> {
        let ns = Self::new(prefix)?;
        ns.add_tap(tap, false, Some(addr))?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME args`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        ip(["-n", self.name.as_str()].iter().chain(args.iter()))
    }

    /// Creates tap `tap` (with IFF_VNET_HDR; `multi_queue` for several
    /// pairs), gives it `addr` (CIDR, e.g. `10.0.0.1/24`) if any, and
    /// brings it up.
    pub fn add_tap(&self, tap: &str, multi_queue: bool, addr: Option<&str>) -> Result<()> {
        let mut args = vec!["tuntap", "add", tap, "mode", "tap", "vnet_hdr"];
        if multi_queue {
            args.push("multi_queue");
        }
        self.ip(&args)?;
        if let Some(a) = addr {
            self.ip(&["addr", "add", a, "dev", tap])?;
        }
        self.ip(&["link", "set", tap, "up"])?;
        Ok(())
    }

    /// Sets sysctl `key` (e.g. `net.ipv6.conf.default.disable_ipv6`) to
    /// `value` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let setting = format!("{key}={value}");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sysctl", "-qw", &setting])
            .output()
            .map_err(|e| NetNsError::Ip {
                args: format!("netns exec {} sysctl -qw {setting}", self.name),
                why: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(NetNsError::Ip {
                args: format!("netns exec {} sysctl -qw {setting}", self.name),
                why: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(())
    }

    /// Turns IPv6 off for interfaces created from now on (and those that
    /// exist), so the kernel sends no router solicitations or MLD reports
    /// of its own on a test's tap.
    pub fn disable_ipv6(&self) -> Result<()> {
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    }

    /// The MAC address of interface `ifname`.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let out = self.ip(&["-j", "link", "show", ifname])?;
        let bad = |why: String| NetNsError::Ip {
            args: format!("-j link show {ifname}"),
            why,
        };
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| bad(e.to_string()))?;
        let text = v[0]["address"]
            .as_str()
            .ok_or_else(|| bad(format!("no address in {out}")))?;
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for b in &mut mac {
            let p = parts.next().ok_or_else(|| bad(format!("bad MAC {text}")))?;
            *b = u8::from_str_radix(p, 16).map_err(|e| bad(format!("bad MAC {text}: {e}")))?;
        }
        Ok(mac)
    }

    /// `program` to be run inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `f` on a thread that entered the namespace; sockets it opens
    /// belong to the namespace for their whole life.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let sys = |what: &str, source| NetNsError::Sys {
            ns: self.name.clone(),
            what: what.to_string(),
            source,
        };
        let ns = File::open(&path).map_err(|e| sys(&format!("open {path}"), e))?;
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on this thread only, with a namespace fd we own.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                    return Err(sys("setns", io::Error::last_os_error()));
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// A TCP listener on `ip:port` in this namespace (an address one of
    /// its taps has).
    pub fn listen_tcp(&self, ip: &str, port: u16) -> Result<TcpListener> {
        self.enter(|| TcpListener::bind((ip, port)))?
            .map_err(|source| NetNsError::Sys {
                ns: self.name.clone(),
                what: format!("listening on {ip}:{port}"),
                source,
            })
    }

    /// An AF_PACKET socket on interface `ifname` in this namespace.
    pub fn packet_socket(&self, ifname: &str) -> Result<PacketSocket> {
        let ns = self.name.clone();
        let ifname2 = ifname.to_string();
        self.enter(move || PacketSocket::bind(&ifname2))?
            .map_err(|source| NetNsError::Sys {
                ns,
                what: format!("AF_PACKET socket on {ifname}"),
                source,
            })
    }

    /// The interface's counter `name` (`rx_packets`, `tx_dropped`, ...).
    pub fn counter(&self, ifname: &str, name: &str) -> Result<u64> {
        let out = self.ip(&["-s", "-j", "link", "show", ifname])?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| NetNsError::Ip {
            args: format!("-s -j link show {ifname}"),
            why: e.to_string(),
        })?;
        let (dir, field) = name.split_once('_').unwrap_or(("rx", name));
        Ok(v[0]["stats64"][dir][field].as_u64().unwrap_or(0))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(["netns", "del", &self.name]);
    }
}

/// `what: e`, of the same kind as `e`.
pub(crate) fn context(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// An AF_PACKET raw socket bound to interface `ifname` for `protocol`
/// (an `ETH_P_*` in network byte order; 0: it receives nothing); errors
/// name the failing step.
pub(crate) fn bind_packet_socket(ifname: &str, protocol: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(protocol),
        )
    };
    if fd < 0 {
        return Err(context("AF_PACKET socket", io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
    // SAFETY: `name` is NUL-terminated and outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(context(ifname, io::Error::last_os_error()));
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol;
    sll.sll_ifindex = index as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        return Err(context("bind AF_PACKET", io::Error::last_os_error()));
    }
    Ok(fd)
}

/// A raw socket that sends and receives whole Ethernet frames on one
/// interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    fn bind(ifname: &str) -> io::Result<Self> {
        let fd = bind_packet_socket(ifname, (libc::ETH_P_ALL as u16).to_be())?;
        Ok(PacketSocket { fd })
    }

    /// Sends one frame (Ethernet header included).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is a valid buffer of its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next frame that passes `keep`, waiting up to `timeout`.
    /// Frames the interface itself sent out (the host's own traffic toward
    /// the guest) are skipped: only frames arriving from the daemon count.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536 + 64];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if r == 0 {
                continue;
            }
            // SAFETY: sockaddr_ll is plain data; all-zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `buf` and `from` are valid for the lengths passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let frame = &buf[..n as usize];
            if keep(frame) {
                return Ok(Some(frame.to_vec()));
            }
        }
    }
}
