//! `--vhost-user` (any virtio device type any vhost-user backend serves)
//! and `--vsock` (virtio-vsock through a `vhost-device-vsock` the VMM
//! runs), and the checks `vm.create`'s `vsock` shares with `--vsock`.

use std::path::{Path, PathBuf};

use devices::vhost_user::DeviceKind;

use super::{pairs, vhost_user_from_pairs, VhostUserConfig};

/// The largest `config_size=` (a virtio-pci device's configuration
/// window is 4 KiB).
pub const MAX_CONFIG_SIZE: usize = 4096;
/// The lowest cid a guest may have: 0 (hypervisor), 1 (local) and 2 (the
/// host) are reserved.
const MIN_GUEST_CID: u64 = 3;

/// The hybrid vsock of `--vsock cid=N,socket=PATH` (Firecracker's and
/// Cloud Hypervisor's scheme): the host connects to the Unix socket PATH
/// and writes `CONNECT <port>\n` to reach the guest's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HybridVsock {
    /// The guest's context id (`virtio_vsock_config.guest_cid`).
    pub cid: u64,
    /// The hybrid socket (`vhost-device-vsock --vm uds-path=`).
    pub socket: PathBuf,
}

/// `--vhost-user socket=PATH,type=TYPE[,num_queues=N,queue_size=N,
/// config_size=N,reconnect=SECS]`: `type` is `vsock`, `rng`, `console`,
/// or a virtio device id (`blk`, `net` and `fs` have their own options and
/// are refused here).
pub fn parse_generic(s: &str) -> Result<VhostUserConfig, String> {
    let mut kind = None;
    let mut config_size = None;
    let mut rest = Vec::new();
    for (k, v) in pairs(s)? {
        match k {
            "type" if kind.is_some() => return Err("`type` is given twice".into()),
            "type" => kind = Some(device_kind(v)?),
            "config_size" if config_size.is_some() => {
                return Err("`config_size` is given twice".into())
            }
            "config_size" => {
                config_size = Some(
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| *n <= MAX_CONFIG_SIZE)
                        .ok_or_else(|| {
                            format!("config_size={v} is not a number from 0 to {MAX_CONFIG_SIZE}")
                        })?,
                )
            }
            _ => rest.push((k, v)),
        }
    }
    let kind = kind.ok_or("missing type=vsock|rng|console|<virtio device id>")?;
    let mut config = vhost_user_from_pairs(kind, &rest)?;
    config.config_size = config_size;
    Ok(config)
}

/// A `type=` value.
fn device_kind(v: &str) -> Result<DeviceKind, String> {
    let kind = match v {
        "vsock" => DeviceKind::Vsock,
        "rng" => DeviceKind::Rng,
        "console" => DeviceKind::Console,
        _ => match v.parse::<u32>() {
            Ok(0) | Err(_) => {
                return Err(format!(
                    "type={v} is not vsock, rng, console or a virtio device id (1, 2, ...)"
                ))
            }
            Ok(id) => DeviceKind::from_device_type(id),
        },
    };
    if matches!(kind, DeviceKind::Block | DeviceKind::Fs | DeviceKind::Net) {
        return Err(format!(
            "type={v} is a {}: use --{} for it",
            kind.name(),
            match kind {
                DeviceKind::Block => "disk",
                DeviceKind::Fs => "fs",
                _ => "net",
            }
        ));
    }
    Ok(kind)
}

/// `--vsock cid=N,socket=PATH`.
pub fn parse_vsock(s: &str) -> Result<VhostUserConfig, String> {
    vsock_from_pairs(&pairs(s)?)
}

/// A vsock from its pairs (`cid`, `socket`, `queue_size`), checked: the
/// cid is 3 or more and fits the 32 bits Linux gives it; the socket's
/// directory exists, and the socket is not some other file
/// (`vhost-device-vsock` replaces what is there). Each error starts with
/// the key it is about (`cid=`, `socket=`).
pub fn vsock_from_pairs(pairs: &[(&str, &str)]) -> Result<VhostUserConfig, String> {
    let mut cid = None;
    let mut socket = None;
    let mut rest = Vec::new();
    for &(k, v) in pairs {
        match k {
            "cid" if cid.is_some() => return Err("`cid` is given twice".into()),
            "cid" => cid = Some(guest_cid(v)?),
            "socket" if socket.is_some() => return Err("`socket` is given twice".into()),
            "socket" => socket = Some(hybrid_socket(v)?),
            "queue_size" => rest.push((k, v)),
            _ => {
                return Err(format!(
                    "unknown key `{k}` (known: cid, socket, queue_size)"
                ))
            }
        }
    }
    let cid = cid.ok_or("missing cid=N (the guest's context id, 3 or more)")?;
    let socket = socket.ok_or("missing socket=PATH (the hybrid vsock's Unix socket)")?;
    // The device's socket is the daemon's, known once the VMM starts it.
    rest.push(("socket", "-"));
    let mut config = vhost_user_from_pairs(DeviceKind::Vsock, &rest)?;
    config.socket = PathBuf::new();
    config.vsock = Some(HybridVsock { cid, socket });
    Ok(config)
}

fn guest_cid(v: &str) -> Result<u64, String> {
    let cid: u64 = v.parse().map_err(|_| format!("cid={v} is not a number"))?;
    if cid < MIN_GUEST_CID {
        return Err(format!(
            "cid={cid} is reserved (0 hypervisor, 1 local, 2 host); a guest's cid is 3 or more"
        ));
    }
    if cid >= u64::from(u32::MAX) {
        return Err(format!(
            "cid={cid} does not fit the 32 bits a vsock address has (at most {})",
            u32::MAX - 1
        ));
    }
    Ok(cid)
}

fn hybrid_socket(v: &str) -> Result<PathBuf, String> {
    if v.is_empty() {
        return Err("socket= needs a path".into());
    }
    if v.contains(',') {
        // vhost-device-vsock's --vm splits its value at commas.
        return Err(format!(
            "socket={v}: a path with a comma cannot be passed on"
        ));
    }
    let path = Path::new(v);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(format!("socket={v}: {} is not a directory", dir.display())),
        Err(e) => return Err(format!("socket={v}: directory {}: {e}", dir.display())),
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => Err(format!(
            "socket={v} exists and is not a socket (it would be replaced)"
        )),
        _ => Ok(path.to_path_buf()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::refuses;
    use super::*;

    #[test]
    fn generic_devices_by_name_or_number() {
        let d = parse_generic("socket=/run/rng.sock,type=rng").unwrap();
        assert_eq!(
            (d.kind, d.device_queues(), d.queue_size),
            (DeviceKind::Rng, 1, 256)
        );
        let d = parse_generic("type=vsock,socket=/v.sock,queue_size=128").unwrap();
        assert_eq!((d.kind, d.device_queues()), (DeviceKind::Vsock, 3));
        let d = parse_generic("type=3,socket=/c.sock,num_queues=4").unwrap();
        assert_eq!((d.kind, d.num_queues), (DeviceKind::Console, 4));
        let d = parse_generic("type=42,socket=/x.sock,config_size=16").unwrap();
        assert_eq!(
            (d.kind, d.config_size, d.device_queues()),
            (DeviceKind::Other(42), Some(16), 1)
        );
        assert_eq!(d.vsock, None);
    }

    #[test]
    fn generic_refusals_name_the_key() {
        refuses(
            parse_generic,
            &[
                ("socket=/x", "missing type="),
                ("type=rng", "missing socket=PATH"),
                ("type=teapot,socket=/x", "type=teapot is not"),
                ("type=0,socket=/x", "type=0 is not"),
                ("type=2,socket=/x", "use --disk"),
                ("type=net,socket=/x", "type=net is not"),
                ("type=1,socket=/x", "use --net"),
                ("type=rng,type=rng,socket=/x", "`type` is given twice"),
                ("type=rng,socket=/x,config_size=5000", "config_size=5000"),
                ("type=rng,socket=/x,tag=t", "unknown key `tag`"),
                ("type=rng,socket=/x,queue_size=3", "queue_size=3"),
            ],
        );
    }

    #[test]
    fn vsock_takes_a_cid_and_a_hybrid_socket() {
        let dir = std::env::temp_dir();
        let sock = dir.join(format!("vmm-cli-vsock-{}.sock", std::process::id()));
        let d = parse_vsock(&format!("cid=3,socket={}", sock.display())).unwrap();
        assert_eq!(d.kind, DeviceKind::Vsock);
        assert_eq!(d.device_queues(), 3);
        assert_eq!(d.socket, PathBuf::new());
        assert_eq!(
            d.vsock,
            Some(HybridVsock {
                cid: 3,
                socket: sock
            })
        );
    }

    #[test]
    fn vsock_refusals_name_the_key() {
        let tmp = std::env::temp_dir();
        let file = tmp.join(format!("vmm-cli-vsock-{}.file", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let cases = [
            ("cid=2,socket=/tmp/v.sock".to_string(), "cid=2 is reserved"),
            ("cid=x,socket=/tmp/v.sock".into(), "cid=x is not a number"),
            (
                "cid=4294967295,socket=/tmp/v.sock".into(),
                "cid=4294967295 does not fit",
            ),
            ("socket=/tmp/v.sock".into(), "missing cid="),
            ("cid=3".into(), "missing socket="),
            (
                "cid=3,socket=/no/such/dir/v.sock".into(),
                "socket=/no/such/dir/v.sock: directory /no/such/dir",
            ),
            ("cid=3,socket=/tmp/a,b".into(), "`b` is not key=value"),
            (
                format!("cid=3,socket={}", file.display()),
                "is not a socket",
            ),
            ("cid=3,socket=/tmp/v.sock,tag=x".into(), "unknown key `tag`"),
        ];
        let cases: Vec<(&str, &str)> = cases.iter().map(|(b, s)| (b.as_str(), *s)).collect();
        refuses(parse_vsock, &cases);
        std::fs::remove_file(&file).unwrap();
    }
}
