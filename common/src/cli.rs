//! Command-line options common to every daemon, flattened into each
//! daemon's own `clap` parser, and the `--print-capabilities` output.

use std::fmt;
use std::os::fd::RawFd;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use crate::logging::LogLevel;
use crate::socket::SocketSource;

/// `--socket-path`, `--fd`, `--print-capabilities`, `--log-level`.
#[derive(Debug, Clone, Args)]
pub struct VhostUserArgs {
    /// Listen for the vhost-user frontend on this Unix socket path (created;
    /// removed on exit). A stale socket file is replaced.
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,

    /// Serve on this already listening Unix socket file descriptor, as
    /// passed by a management layer.
    #[arg(long, value_name = "N")]
    pub fd: Option<RawFd>,

    /// Print the vhost-user backend capabilities as JSON and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Log level.
    #[arg(long, value_enum, default_value_t = LogLevel::Info, value_name = "LEVEL")]
    pub log_level: LogLevel,

    /// After draining a ring, keep looking for the driver's next request
    /// for this many microseconds before sleeping until a kick (0: never).
    /// Saves a kick and a wake-up per request when requests follow each
    /// other closely, at the cost of that much CPU after each batch.
    #[arg(long, value_name = "US", default_value_t = DEFAULT_POLL_US,
          value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub poll_us: u64,
}

/// `--poll-us` when not given.
pub const DEFAULT_POLL_US: u64 = 0;

impl VhostUserArgs {
    /// The options that tune the rings (`--poll-us`).
    pub fn ring_options(&self) -> crate::queue::RingOptions {
        crate::queue::RingOptions {
            poll: std::time::Duration::from_micros(self.poll_us),
        }
    }

    /// Where the listening socket comes from: `--socket-path`, `--fd`, or
    /// (with neither) systemd socket activation.
    pub fn socket_source(&self) -> SocketSource {
        match (&self.socket_path, self.fd) {
            (Some(p), _) => SocketSource::Path(p.clone()),
            (None, Some(fd)) => SocketSource::Fd(fd),
            (None, None) => SocketSource::SystemdActivation,
        }
    }
}

/// Parses a `--queue-size`: a power of two from 2 to 32768 (a split
/// ring's sizes).
pub fn parse_queue_size(s: &str) -> Result<u16, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(2..=32768).contains(&n) || !n.is_power_of_two() {
        return Err(format!("{n} is not a power of two between 2 and 32768"));
    }
    Ok(n as u16)
}

/// Writes an option's value as the command line spells it (clap's name
/// for it): the `Display` of `--sandbox` and `--seccomp` values, so that
/// messages name them as a user types them.
pub fn write_value_name(value: &impl ValueEnum, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match value.to_possible_value() {
        Some(v) => f.write_str(v.get_name()),
        None => Ok(()),
    }
}

/// The `--print-capabilities` JSON: `{"type":"<kind>","features":[...]}`.
/// `type` comes first, as in QEMU's own backends' output.
pub fn capabilities_json(kind: &str, features: &[&str]) -> String {
    format!(
        r#"{{"type":{},"features":{}}}"#,
        serde_json::Value::from(kind),
        serde_json::Value::from(features.to_vec())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::SandboxMode;
    use crate::seccomp::SeccompAction;

    /// Each value parses from its name and is displayed as it.
    fn assert_named<T>(cases: &[(&str, T)])
    where
        T: ValueEnum + fmt::Display + fmt::Debug + PartialEq,
    {
        for (name, value) in cases {
            assert_eq!(T::from_str(name, false).unwrap(), *value);
            assert_eq!(value.to_string(), *name);
        }
    }

    #[test]
    fn option_values_are_named_for_the_command_line() {
        assert_named(&[
            ("namespace", SandboxMode::Namespace),
            ("chroot", SandboxMode::Chroot),
            ("none", SandboxMode::None),
        ]);
        assert_named(&[
            ("kill", SeccompAction::Kill),
            ("log", SeccompAction::Log),
            ("trap", SeccompAction::Trap),
            ("none", SeccompAction::None),
        ]);
    }

    #[test]
    fn capabilities_are_qemu_schema_json() {
        assert_eq!(
            capabilities_json("block", &["read-only", "blk-file"]),
            r#"{"type":"block","features":["read-only","blk-file"]}"#
        );
    }
}
