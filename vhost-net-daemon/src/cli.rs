//! The command line, in QEMU's vhost-user backend conventions.

use std::os::fd::RawFd;

use clap::Parser;
use common::cli::VhostUserArgs;
use common::sandbox::SandboxMode;
use common::seccomp::SeccompAction;

/// Most queue pairs (one worker thread each).
pub const MAX_PAIRS: u16 = 16;

/// vhost-user virtio-net backend over a tap device.
#[derive(Debug, Parser)]
#[command(name = "vhost-net-daemon", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub vhost_user: VhostUserArgs,

    /// The tap to attach to (it must exist unless --create is given).
    #[arg(long, value_name = "NAME", conflicts_with = "tap_fd")]
    pub tap: Option<String>,

    /// Create the tap if it does not exist (it then goes away with the
    /// daemon) and bring it up. Needs CAP_NET_ADMIN.
    #[arg(long, requires = "tap")]
    pub create: bool,

    /// An open tap queue passed by a management layer, one per queue
    /// pair (repeat the option). Each must carry IFF_VNET_HDR and IFF_NO_PI.
    #[arg(long, value_name = "N", value_parser = parse_fd)]
    pub tap_fd: Vec<RawFd>,

    /// Number of queue pairs (1 to 16); with --tap-fd, defaults to the
    /// number of descriptors.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=MAX_PAIRS as i64))]
    pub num_queue_pairs: Option<u16>,

    /// Largest queue size the frontend may choose (a power of two, 2 to 32768).
    #[arg(long, default_value_t = 256, value_parser = common::cli::parse_queue_size)]
    pub queue_size: u16,

    /// The guest's MAC address, as 02:00:00:00:00:01 (default: a random
    /// locally administered one, fixed for the daemon's lifetime).
    #[arg(long, value_parser = parse_mac)]
    pub mac: Option<[u8; 6]>,

    /// MTU to advertise to the guest (68 to 65535); also set on the tap.
    #[arg(long, value_parser = clap::value_parser!(u16).range(68..=65535))]
    pub mtu: Option<u16>,

    /// What a system call outside the daemon's allow-list does.
    #[arg(long, value_enum, default_value_t = SeccompAction::Kill)]
    pub seccomp: SeccompAction,

    /// The jail, entered once the tap is open: `namespace` (new pid,
    /// mount, network, IPC and UTS namespaces, the tap's descriptors only;
    /// an empty read-only root; no capabilities: attaching a tap queue
    /// needs none unless the tap has an owner other than the daemon's
    /// user), `chroot` (a private mount namespace with the same empty
    /// root, no pid or network isolation), or `none`.
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespace)]
    pub sandbox: SandboxMode,
}

impl Cli {
    /// The number of queue pairs, checked against `--tap-fd`.
    pub fn pairs(&self) -> Result<u16, String> {
        if self.create && self.tap.is_none() {
            return Err("--create needs --tap NAME (the tap to create)".into());
        }
        if self.tap.is_none() && self.tap_fd.is_empty() {
            return Err("--tap NAME or --tap-fd N is required (the tap to serve)".into());
        }
        if self.tap_fd.is_empty() {
            return Ok(self.num_queue_pairs.unwrap_or(1));
        }
        let n = self.tap_fd.len();
        if n > usize::from(MAX_PAIRS) {
            return Err(format!(
                "{n} --tap-fd descriptors; at most {MAX_PAIRS} queue pairs"
            ));
        }
        match self.num_queue_pairs {
            Some(p) if usize::from(p) != n => Err(format!(
                "--num-queue-pairs {p} needs {p} --tap-fd descriptors (one per pair); {n} given"
            )),
            _ => Ok(n as u16),
        }
    }
}

fn parse_fd(s: &str) -> Result<RawFd, String> {
    match s.parse::<RawFd>() {
        Ok(n) if n >= 0 => Ok(n),
        _ => Err(format!("{s:?} is not a file descriptor number")),
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with dashes); refuses multicast.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s:?} is not a MAC address like 02:00:00:00:00:01");
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{s} is a multicast address; a NIC needs a unicast one"
        ));
    }
    if mac == [0; 6] {
        return Err(format!("{s} is the zero address"));
    }
    Ok(mac)
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> [u8; 6] {
    use std::io::Read;
    let mut mac = [0u8; 6];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut mac));
    if random.is_err() {
        // No entropy: derive something unique enough from pid and time.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id());
        mac.copy_from_slice(&t.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// Formats a MAC address.
pub fn format_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vhost-net-daemon").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = parse(&["--socket-path", "/s", "--tap", "tap0"]).unwrap();
        assert_eq!(c.pairs().unwrap(), 1);
        assert_eq!(c.queue_size, 256);
        assert!(c.mac.is_none() && c.mtu.is_none() && !c.create);
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            &["--tap", "t", "--num-queue-pairs", "0"][..],
            &["--tap", "t", "--num-queue-pairs", "17"],
            &["--tap", "t", "--queue-size", "100"],
            &["--tap", "t", "--mac", "01:00:00:00:00:01"],
            &["--tap", "t", "--mac", "02:00:00:00:00"],
            &["--tap", "t", "--mac", "zz:00:00:00:00:01"],
            &["--tap", "t", "--mtu", "67"],
            &["--tap", "t", "--tap-fd", "3"],
            &["--tap-fd", "-1"],
            &["--tap", "t", "--socket-path", "/s", "--fd", "3"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn tap_fds_set_the_pairs() {
        let c = parse(&["--tap-fd", "3", "--tap-fd", "4"]).unwrap();
        assert_eq!(c.pairs().unwrap(), 2);
        let c = parse(&["--tap-fd", "3", "--num-queue-pairs", "2"]).unwrap();
        assert!(c.pairs().unwrap_err().contains("needs 2 --tap-fd"));
        let c = parse(&["--socket-path", "/s"]).unwrap();
        assert!(c.pairs().unwrap_err().contains("--tap NAME or --tap-fd"));
        let e = parse(&["--create", "--tap-fd", "3"]).map(|c| c.pairs());
        assert!(!matches!(e, Ok(Ok(_))), "--create without --tap accepted");
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02-AA-bb-00-00-01").unwrap(),
            [2, 0xaa, 0xbb, 0, 0, 1]
        );
        let r = random_mac();
        assert_eq!(r[0] & 3, 2, "locally administered unicast");
        assert_eq!(format_mac(&[2, 0, 0, 0xaa, 0, 1]), "02:00:00:aa:00:01");
    }
}
