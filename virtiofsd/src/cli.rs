//! The command line: the options Kata Containers and libvirt pass to
//! virtiofsd today, in both the modern (`--shared-dir`, `--cache=auto`) and
//! the legacy (`-o source=..,cache=..`) form. An option we do not
//! implement is an error naming it, never silently ignored.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use common::cli::VhostUserArgs;
use common::logging::LogLevel;

/// Longest tag (virtio-fs config space: 36 bytes).
pub const TAG_MAX: usize = 36;
/// The tag Kata Containers mounts.
pub const DEFAULT_TAG: &str = "kataShared";

/// `--cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cache {
    /// No data or metadata caching in the guest (`none` as libvirt spells it).
    #[value(alias = "none")]
    Never,
    /// Metadata cached, data not.
    Metadata,
    /// Close-to-open consistency (the default).
    Auto,
    /// Cache everything; the guest owns the directory.
    Always,
}

/// `--inode-file-handles`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InodeFileHandles {
    /// O_PATH descriptors only.
    Never,
    /// File handles where the filesystem supports them.
    Prefer,
    /// File handles, or refuse to start.
    Mandatory,
}

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Sandbox {
    /// Mount, pid and net namespaces, pivot_root into the shared directory.
    Namespace,
    /// chroot into the shared directory (inside containers).
    Chroot,
    /// No sandbox.
    None,
}

impl Sandbox {
    /// The jail `common::sandbox` builds for it.
    pub fn mode(self) -> common::sandbox::SandboxMode {
        use common::sandbox::SandboxMode;
        match self {
            Sandbox::Namespace => SandboxMode::Namespace,
            Sandbox::Chroot => SandboxMode::Chroot,
            Sandbox::None => SandboxMode::None,
        }
    }
}

/// `--seccomp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Seccomp {
    /// Kill the process on a system call outside the allow-list.
    Kill,
    /// Log it and allow it.
    Log,
    /// Send SIGSYS.
    Trap,
    /// No filter.
    None,
}

/// virtio-fs vhost-user backend sharing a host directory.
#[derive(Debug, Parser)]
#[command(name = "virtiofsd", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub vhost_user: VhostUserArgs,

    /// The directory to share.
    #[arg(long, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,

    /// The tag the guest mounts (virtio-fs config space, at most 36 bytes).
    #[arg(long, default_value = DEFAULT_TAG, value_parser = parse_tag)]
    pub tag: String,

    /// Guest caching policy.
    #[arg(long, value_enum, default_value_t = Cache::Auto)]
    pub cache: Cache,

    /// Sandbox mode.
    #[arg(long, value_enum, default_value_t = Sandbox::Namespace)]
    pub sandbox: Sandbox,

    /// What a system call outside the allow-list does.
    #[arg(long, value_enum, default_value_t = Seccomp::Kill)]
    pub seccomp: Seccomp,

    /// Threads that run requests (0 or 1: each request queue runs its own
    /// requests on its thread; N > 1: a pool of N threads, at most 256).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub thread_pool_size: usize,

    /// Extended attributes.
    #[arg(long)]
    pub xattr: bool,

    /// POSIX ACLs (implies --xattr).
    #[arg(long)]
    pub posix_acl: bool,

    /// Tell the guest about mount points inside the share (submounts).
    #[arg(long, overrides_with = "no_announce_submounts")]
    pub announce_submounts: bool,

    /// Do not announce submounts (the default).
    #[arg(long, overrides_with = "announce_submounts")]
    pub no_announce_submounts: bool,

    /// Refuse every change to the share.
    #[arg(long)]
    pub readonly: bool,

    /// Let the guest use writeback caching.
    #[arg(long)]
    pub writeback: bool,

    /// Honour the guest's O_DIRECT.
    #[arg(long)]
    pub allow_direct_io: bool,

    /// Reference inodes by file handle instead of O_PATH descriptors.
    #[arg(long, value_enum, default_value_t = InodeFileHandles::Never)]
    pub inode_file_handles: InodeFileHandles,

    /// Keep the FUSE session (the node ids and file handles the guest
    /// holds, and INIT) in FILE, so a restarted daemon resumes it: a
    /// frontend that reconnects after a crash finds the guest's open
    /// files, directories and cached names still valid. Created (0600) if
    /// missing; opened before the sandbox. One file per share and daemon.
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,

    /// Open-file limit (0: leave it; default: raise to min(hard limit, 1000000)).
    #[arg(long, value_name = "N")]
    pub rlimit_nofile: Option<u64>,

    /// Log to syslog instead of stderr.
    #[arg(long)]
    pub syslog: bool,

    /// Serve one frontend and exit when it disconnects (the behaviour of
    /// other virtiofsd implementations).
    #[arg(long)]
    pub exit_on_disconnect: bool,

    /// Legacy options: `-o source=DIR,cache=auto,sandbox=chroot,xattr,...`.
    #[arg(short = 'o', value_name = "OPT[,OPT...]")]
    pub legacy: Vec<String>,

    /// Debug logging (legacy).
    #[arg(short = 'd')]
    pub debug: bool,

    /// Foreground (legacy; we never daemonize).
    #[arg(short = 'f')]
    pub foreground: bool,
}

fn parse_tag(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > TAG_MAX {
        return Err(format!("{} bytes; a tag has 1 to {TAG_MAX}", s.len()));
    }
    Ok(s.to_string())
}

/// A `-o` option we cannot honour, or a malformed one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LegacyError {
    /// Unknown key.
    #[error("-o {0}: unknown option")]
    Unknown(String),
    /// Known but not implemented.
    #[error("-o {0}: not supported by this virtiofsd")]
    Unsupported(String),
    /// Bad value.
    #[error("-o {key}={value}: {why}")]
    BadValue {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Why.
        why: String,
    },
}

fn enum_value<T: ValueEnum>(key: &str, value: &str) -> Result<T, LegacyError> {
    T::from_str(value, false).map_err(|why| LegacyError::BadValue {
        key: key.into(),
        value: value.into(),
        why,
    })
}

impl Cli {
    /// Folds `-o` options and `-d` into the modern fields.
    pub fn apply_legacy(&mut self) -> Result<(), LegacyError> {
        if self.debug {
            self.vhost_user.log_level = LogLevel::Debug;
        }
        let opts: Vec<String> = self
            .legacy
            .iter()
            .flat_map(|o| o.split(','))
            .filter(|o| !o.is_empty())
            .map(str::to_string)
            .collect();
        for opt in opts {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt.as_str(), None),
            };
            match (key, value) {
                ("source", Some(v)) => self.shared_dir = Some(v.into()),
                ("cache", Some(v)) => self.cache = enum_value(key, v)?,
                ("sandbox", Some(v)) => self.sandbox = enum_value(key, v)?,
                ("seccomp", Some(v)) => self.seccomp = enum_value(key, v)?,
                ("log_level", Some(v)) => self.vhost_user.log_level = enum_value(key, v)?,
                ("thread_pool_size", Some(v)) => {
                    self.thread_pool_size = v.parse().map_err(|_| LegacyError::BadValue {
                        key: key.into(),
                        value: v.into(),
                        why: "not a number".into(),
                    })?
                }
                ("xattr", None) => self.xattr = true,
                ("no_xattr", None) => self.xattr = false,
                ("posix_acl", None) => self.posix_acl = true,
                ("no_posix_acl", None) => self.posix_acl = false,
                ("announce_submounts", None) => self.announce_submounts = true,
                ("no_announce_submounts", None) => self.announce_submounts = false,
                ("writeback", None) => self.writeback = true,
                ("no_writeback", None) => self.writeback = false,
                ("allow_direct_io", None) => self.allow_direct_io = true,
                ("no_allow_direct_io", None) => self.allow_direct_io = false,
                ("readonly", None) => self.readonly = true,
                // Locks are not offered to the guest, which is what these ask.
                ("no_posix_lock" | "no_flock", None) => {}
                (
                    "posix_lock" | "flock" | "readdirplus" | "no_readdirplus" | "timeout"
                    | "modcaps" | "xattrmap",
                    _,
                )
                | ("killpriv_v2" | "no_killpriv_v2" | "security_label" | "no_security_label", _) => {
                    return Err(LegacyError::Unsupported(opt.clone()))
                }
                _ => return Err(LegacyError::Unknown(opt.clone())),
            }
        }
        if self.no_announce_submounts {
            self.announce_submounts = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        let mut c = Cli::try_parse_from(std::iter::once("virtiofsd").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        c.apply_legacy().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn kata_rust_runtime_command_line() {
        let c = parse(&[
            "--syslog",
            "--cache=auto",
            "--shared-dir=/run/kata/shared",
            "--fd=3",
            "--thread-pool-size=1",
            "--announce-submounts",
        ])
        .unwrap();
        assert!(c.syslog && c.announce_submounts);
        assert_eq!(c.vhost_user.fd, Some(3));
        assert_eq!(c.thread_pool_size, 1);
        assert_eq!(c.tag, "kataShared");
        assert_eq!(c.shared_dir, Some(PathBuf::from("/run/kata/shared")));
    }

    #[test]
    fn legacy_kata_and_libvirt_command_lines() {
        let c = parse(&[
            "--fd=3",
            "-o",
            "source=/srv",
            "-o",
            "cache=auto",
            "-o",
            "announce_submounts",
        ])
        .unwrap();
        assert_eq!(c.shared_dir, Some(PathBuf::from("/srv")));
        assert!(c.announce_submounts);
        let c = parse(&[
            "--fd=7",
            "-o",
            "source=/x,cache=always,sandbox=chroot,xattr",
            "-d",
            "-f",
        ])
        .unwrap();
        assert_eq!(c.cache, Cache::Always);
        assert_eq!(c.sandbox, Sandbox::Chroot);
        assert!(c.xattr);
        assert_eq!(c.vhost_user.log_level, LogLevel::Debug);
        let c = parse(&[
            "--fd=4",
            "-o",
            "source=/x,cache=none,sandbox=chroot,no_xattr",
            "--thread-pool-size=1",
        ])
        .unwrap();
        assert_eq!(c.cache, Cache::Never);
        assert!(!c.xattr);
    }

    #[test]
    fn unsupported_and_unknown_options_are_named() {
        assert!(parse(&["-o", "source=/x,flock"])
            .unwrap_err()
            .contains("flock"));
        assert!(parse(&["-o", "bogus"]).unwrap_err().contains("bogus"));
        assert!(parse(&["-o", "cache=sometimes"])
            .unwrap_err()
            .contains("sometimes"));
        assert!(parse(&["--tag", "0123456789012345678901234567890123456"]).is_err());
        assert!(parse(&["--cache", "sometimes"]).is_err());
    }

    #[test]
    fn no_announce_submounts_wins() {
        let c = parse(&["--announce-submounts", "--no-announce-submounts"]).unwrap();
        assert!(!c.announce_submounts);
    }
}
