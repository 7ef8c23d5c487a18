//! Logging to stderr in a form journald understands: when stderr is the
//! journal (`JOURNAL_STREAM` is set, see systemd.exec(5)) every line starts
//! with its syslog priority `<N>` and carries no timestamp (journald adds
//! one); otherwise lines carry a timestamp, the level and the module.

use std::io::Write;

use clap::ValueEnum;
use log::{Level, LevelFilter};

/// `--log-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// No logging.
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default: lifecycle events.
    Info,
    /// Per-connection protocol detail.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Off => LevelFilter::Off,
            LogLevel::Error => LevelFilter::Error,
            LogLevel::Warn => LevelFilter::Warn,
            LogLevel::Info => LevelFilter::Info,
            LogLevel::Debug => LevelFilter::Debug,
            LogLevel::Trace => LevelFilter::Trace,
        }
    }
}

/// The syslog priority journald expects in a `<N>` prefix.
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Whether stderr is connected to the journal.
pub fn stderr_is_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// `text` as journald reads it from a stream: every line (journald splits
/// the stream at newlines) prefixed with `<priority>`, so no line of a
/// multi-line message is filed at the default priority; ends with a newline.
fn journal_lines(priority: u8, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.lines() {
        out.push_str(&format!("<{priority}>{line}\n"));
    }
    if out.is_empty() {
        out.push_str(&format!("<{priority}>\n"));
    }
    out
}

/// Installs the logger. `RUST_LOG`, when set, overrides `level` per module.
/// Calling it twice is harmless (the second call does nothing).
pub fn init(program: &'static str, level: LogLevel) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(level.into());
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    if stderr_is_journal() {
        builder.format(|buf, record| {
            let text = record.args().to_string();
            buf.write_all(journal_lines(syslog_priority(record.level()), &text).as_bytes())
        });
    } else {
        builder.format(move |buf, record| {
            writeln!(
                buf,
                "[{} {:5} {}] {}",
                buf.timestamp_millis(),
                record.level(),
                program,
                record.args()
            )
        });
    }
    builder.target(env_logger::Target::Stderr);
    let logger = builder.build();
    let max = logger.filter();
    install(Box::new(logger), max);
}

/// Crates whose messages are our own; everything else (fuse-backend-rs,
/// vhost-user-backend, virtio-queue, ...) may log once per guest request,
/// so a guest could flood the log through them.
const OWN_TARGETS: &[&str] = &[
    "common",
    "vhost_blk_daemon",
    "virtiofsd",
    "vhost_net_daemon",
    "vmm",
    "devices",
];

/// Passes our own records through and rate-limits the others
/// ([`crate::ratelimit::RateLimited`]: the first ten, then powers of two).
struct Limited {
    inner: Box<dyn log::Log>,
    third_party: crate::ratelimit::RateLimited,
}

impl log::Log for Limited {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        let target = record.target();
        let own = OWN_TARGETS
            .iter()
            .any(|t| target == *t || target.starts_with(&format!("{t}::")));
        if own {
            return self.inner.log(record);
        }
        if let Some(n) = self.third_party.hit() {
            self.inner.log(
                &log::Record::builder()
                    .args(format_args!(
                        "{} [{target}; library message #{n}, rate-limited]",
                        record.args()
                    ))
                    .level(record.level())
                    .target(target)
                    .build(),
            );
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

fn install(inner: Box<dyn log::Log>, max: LevelFilter) {
    let limited = Limited {
        inner,
        third_party: crate::ratelimit::RateLimited::default(),
    };
    if log::set_boxed_logger(Box::new(limited)).is_ok() {
        log::set_max_level(max);
    }
}

/// A logger that sends each record to the local syslog daemon (`/dev/log`)
/// as `<PRI>NAME[PID]: message`, facility daemon.
struct Syslog {
    sock: std::os::unix::net::UnixDatagram,
    program: &'static str,
    level: LevelFilter,
}

impl log::Log for Syslog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        const FACILITY_DAEMON: u8 = 3 << 3;
        let msg = format!(
            "<{}>{}[{}]: {}",
            FACILITY_DAEMON + syslog_priority(record.level()),
            self.program,
            std::process::id(),
            record.args()
        );
        // Logging must never fail the caller; a full syslog drops the line.
        let _ = self.sock.send(msg.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs a logger writing to syslog (`--syslog`). The socket is
/// connected now, so it keeps working after a sandbox hides `/dev/log`.
/// Without a syslog daemon listening on `/dev/log` (a container, an
/// initramfs) the daemon serves anyway, as the C virtiofsd does: it logs
/// to stderr ([`init`]) and says so in one warning.
pub fn init_syslog(program: &'static str, level: LogLevel) {
    match connect_dev_log() {
        Ok(sock) => {
            let filter: LevelFilter = level.into();
            install(
                Box::new(Syslog {
                    sock,
                    program,
                    level: filter,
                }),
                filter,
            );
        }
        Err(e) => {
            init(program, level);
            log::warn!("--syslog: cannot connect to /dev/log ({e}); logging to stderr instead");
        }
    }
}

fn connect_dev_log() -> std::io::Result<std::os::unix::net::UnixDatagram> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    sock.connect("/dev/log")?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_a_journal_message_carries_the_priority() {
        assert_eq!(journal_lines(6, "one"), "<6>one\n");
        assert_eq!(
            journal_lines(3, "FUSE INIT\n  major 7\n  minor 38"),
            "<3>FUSE INIT\n<3>  major 7\n<3>  minor 38\n"
        );
        assert_eq!(journal_lines(4, ""), "<4>\n");
        assert_eq!(journal_lines(7, "a\n"), "<7>a\n");
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(Level::Error), 3);
        assert_eq!(syslog_priority(Level::Warn), 4);
        assert_eq!(syslog_priority(Level::Info), 6);
        assert_eq!(syslog_priority(Level::Trace), 7);
    }

    #[test]
    fn log_level_maps_to_filter() {
        assert_eq!(LevelFilter::from(LogLevel::Off), LevelFilter::Off);
        assert_eq!(LevelFilter::from(LogLevel::Debug), LevelFilter::Debug);
    }
}
