//! The command line, in Cloud Hypervisor's style: `--kernel`, `--initramfs`,
//! `--cmdline`, `--cpus boot=N`, `--memory size=512M[,file=PATH]`,
//! `--serial stdio|file=PATH|socket=PATH|off`, `--log-level`.

use std::path::PathBuf;

use clap::Parser;

/// The thin KVM core: boots a kernel with guest RAM in a shared file.
#[derive(Debug, Parser)]
#[command(name = "vmm", version, about)]
pub struct Args {
    /// Kernel to boot: an ELF vmlinux with a PVH note (PVH boot), another
    /// 64-bit ELF vmlinux, or a bzImage (64-bit Linux boot protocol).
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk loaded at the top of low RAM.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=1")]
    pub cmdline: String,
    /// vCPUs: `boot=N` (1 to 254).
    #[arg(long, default_value = "boot=1", value_parser = parse_cpus)]
    pub cpus: CpusConfig,
    /// Guest RAM: `size=SIZE[,file=PATH]`. SIZE takes K, M, G suffixes and
    /// is a multiple of 1 MiB. Without `file=`, a file is created under
    /// /dev/shm and removed at once (the mapping and the fd stay), so
    /// nothing is left behind however the VMM ends.
    #[arg(long, default_value = "size=512M", value_parser = parse_memory)]
    pub memory: MemoryConfig,
    /// Serial console on COM1: `stdio`, `file=PATH`, `socket=PATH` (a
    /// listening Unix socket; one client at a time) or `off`.
    #[arg(long, default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialConfig,
    /// Log level: off, error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    pub log_level: log::LevelFilter,
}

/// `--cpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpusConfig {
    pub boot: u8,
}

/// `--memory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    pub size: u64,
    pub file: Option<PathBuf>,
}

/// `--serial`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialConfig {
    Stdio,
    File(PathBuf),
    Socket(PathBuf),
    Off,
}

pub const MAX_VCPUS: u8 = 254;
const MIB: u64 = 1 << 20;
const MIN_MEMORY: u64 = 2 * MIB;
const MAX_MEMORY: u64 = 1 << 40;

/// Splits `a=b,c=d` into pairs; a bare word is an error.
fn pairs(s: &str) -> Result<Vec<(&str, &str)>, String> {
    s.split(',')
        .map(|kv| {
            kv.split_once('=')
                .ok_or_else(|| format!("`{kv}` is not key=value"))
        })
        .collect()
}

pub fn parse_cpus(s: &str) -> Result<CpusConfig, String> {
    let mut boot = None;
    for (k, v) in pairs(s)? {
        match k {
            "boot" => {
                let n: u8 = v
                    .parse()
                    .map_err(|_| format!("boot={v} is not a number from 1 to {MAX_VCPUS}"))?;
                if n == 0 || n > MAX_VCPUS {
                    return Err(format!("boot={n} is not from 1 to {MAX_VCPUS}"));
                }
                boot = Some(n);
            }
            other => return Err(format!("unknown key `{other}` (known: boot)")),
        }
    }
    Ok(CpusConfig {
        boot: boot.ok_or("missing boot=N")?,
    })
}

/// A size with an optional K/M/G/T suffix (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let not_a_size = || format!("`{s}` is not a size (e.g. 512M)");
    let number = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if number.is_empty()
        || !number.bytes().all(|b| b.is_ascii_digit())
        || s.len() > number.len() + 1
    {
        return Err(not_a_size());
    }
    let (digits, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{s}`: unknown unit `{c}` (K, M, G, T)")),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = digits.parse().map_err(|_| not_a_size())?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

pub fn parse_memory(s: &str) -> Result<MemoryConfig, String> {
    let mut size = None;
    let mut file = None;
    for (k, v) in pairs(s)? {
        match k {
            "size" => size = Some(parse_size(v)?),
            "file" if !v.is_empty() => file = Some(PathBuf::from(v)),
            "file" => return Err("file= needs a path".into()),
            other => return Err(format!("unknown key `{other}` (known: size, file)")),
        }
    }
    let size = size.ok_or("missing size=SIZE")?;
    if size % MIB != 0 {
        return Err(format!("size {size} is not a multiple of 1 MiB"));
    }
    if !(MIN_MEMORY..=MAX_MEMORY).contains(&size) {
        return Err(format!(
            "size {}M is not from {}M to {}M",
            size / MIB,
            MIN_MEMORY / MIB,
            MAX_MEMORY / MIB
        ));
    }
    Ok(MemoryConfig { size, file })
}

pub fn parse_serial(s: &str) -> Result<SerialConfig, String> {
    match s {
        "stdio" | "tty" => Ok(SerialConfig::Stdio),
        "off" | "null" => Ok(SerialConfig::Off),
        _ => match s.split_once('=') {
            Some(("file", p)) if !p.is_empty() => Ok(SerialConfig::File(p.into())),
            Some(("socket", p)) if !p.is_empty() => Ok(SerialConfig::Socket(p.into())),
            _ => Err(format!(
                "`{s}`: expected stdio, file=PATH, socket=PATH or off"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("1MB").is_err());
        assert!(parse_size("-1M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn memory() {
        assert_eq!(
            parse_memory("size=64M"),
            Ok(MemoryConfig {
                size: 64 << 20,
                file: None
            })
        );
        assert_eq!(
            parse_memory("size=1G,file=/dev/shm/x"),
            Ok(MemoryConfig {
                size: 1 << 30,
                file: Some("/dev/shm/x".into())
            })
        );
        assert!(parse_memory("size=1000K")
            .unwrap_err()
            .contains("multiple of 1 MiB"));
        assert!(parse_memory("size=1M").unwrap_err().contains("from 2M"));
        assert!(parse_memory("file=/x")
            .unwrap_err()
            .contains("missing size"));
        assert!(parse_memory("size=64M,shared=on")
            .unwrap_err()
            .contains("unknown key"));
        assert!(parse_memory("64M").unwrap_err().contains("key=value"));
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("boot=2"), Ok(CpusConfig { boot: 2 }));
        assert!(parse_cpus("boot=0").is_err());
        assert!(parse_cpus("boot=255").is_err());
        assert!(parse_cpus("max=4").is_err());
        assert!(parse_cpus("boot=two").is_err());
    }

    #[test]
    fn serial() {
        assert_eq!(parse_serial("stdio"), Ok(SerialConfig::Stdio));
        assert_eq!(parse_serial("off"), Ok(SerialConfig::Off));
        assert_eq!(
            parse_serial("file=/tmp/s"),
            Ok(SerialConfig::File("/tmp/s".into()))
        );
        assert_eq!(
            parse_serial("socket=/tmp/s"),
            Ok(SerialConfig::Socket("/tmp/s".into()))
        );
        assert!(parse_serial("file=").is_err());
        assert!(parse_serial("pty").is_err());
    }

    #[test]
    fn command_line() {
        let a = Args::try_parse_from([
            "vmm", "--kernel", "k", "--cpus", "boot=2", "--memory", "size=64M",
        ])
        .unwrap();
        assert_eq!(a.cpus.boot, 2);
        assert_eq!(a.memory.size, 64 << 20);
        assert_eq!(a.serial, SerialConfig::Stdio);
        assert!(Args::try_parse_from(["vmm"]).is_err());
        assert!(Args::try_parse_from(["vmm", "--kernel", "k", "--memory", "size=3M5"]).is_err());
    }
}
