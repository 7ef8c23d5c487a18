//! The systemd service protocol (sd_notify(3)): `READY=1` once listening,
//! `STOPPING=1` on shutdown, `WATCHDOG=1` while the serve loop is alive.
//! Without `NOTIFY_SOCKET` every call is a no-op.
//!
//! The notify socket is connected once, by [`connect`] (or on first use),
//! so notifications still reach systemd after a sandbox has pivoted the
//! root away from the socket's path.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

static NOTIFY: OnceLock<Option<UnixDatagram>> = OnceLock::new();

fn open_notify_socket() -> io::Result<Option<UnixDatagram>> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(None);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.connect_addr(&addr)?;
    } else {
        sock.connect(&path)?;
    }
    Ok(Some(sock))
}

/// Connects to `$NOTIFY_SOCKET` now (before a sandbox hides its path).
/// Later calls do nothing.
pub fn connect() {
    watchdog_interval();
    NOTIFY.get_or_init(|| match open_notify_socket() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("cannot connect to $NOTIFY_SOCKET: {e}");
            None
        }
    });
}

fn send(states: &[NotifyState]) {
    connect();
    let Some(Some(sock)) = NOTIFY.get() else {
        return;
    };
    let msg: String = states.iter().map(|s| format!("{s}\n")).collect();
    if let Err(e) = sock.send(msg.as_bytes()) {
        log::warn!("sd_notify to $NOTIFY_SOCKET failed: {e}");
    }
}

/// `READY=1` plus a `STATUS=` line.
pub fn notify_ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`.
pub fn notify_stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// `STATUS=...`.
pub fn notify_status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The watchdog interval asked for by `WATCHDOG_USEC`, when `WATCHDOG_PID`
/// is unset or names this process (as sd_watchdog_enabled(3) reads them),
/// read once: [`connect`] reads it before a sandbox forks, so the jailed
/// child (PID 1 of its own pid namespace) pings for the process systemd
/// started, as WATCHDOG_PID names it.
pub fn watchdog_interval() -> Option<Duration> {
    static INTERVAL: OnceLock<Option<Duration>> = OnceLock::new();
    *INTERVAL.get_or_init(watchdog_interval_now)
}

fn watchdog_interval_now() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` at half the configured interval, from whichever loop
/// calls [`Watchdog::tick`]: if that loop hangs, systemd notices.
#[derive(Debug)]
pub struct Watchdog {
    period: Option<Duration>,
    last: Option<Instant>,
}

impl Watchdog {
    /// A watchdog configured from the environment (disabled without
    /// `WATCHDOG_USEC`).
    pub fn from_env() -> Self {
        Watchdog {
            period: watchdog_interval().map(|d| d / 2),
            last: None,
        }
    }

    /// How long the caller may block before the next [`Watchdog::tick`].
    pub fn timeout(&self) -> Option<Duration> {
        let period = self.period?;
        Some(match self.last {
            Some(last) => period.saturating_sub(last.elapsed()),
            None => Duration::ZERO,
        })
    }

    /// Pings systemd if half the interval has passed since the last ping.
    pub fn tick(&mut self) {
        let Some(period) = self.period else { return };
        if self.last.is_none_or(|l| l.elapsed() >= period) {
            send(&[NotifyState::Watchdog]);
            self.last = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_watchdog_never_limits_blocking() {
        let w = Watchdog {
            period: None,
            last: None,
        };
        assert_eq!(w.timeout(), None);
    }

    #[test]
    fn enabled_watchdog_asks_for_a_tick_at_half_period() {
        let mut w = Watchdog {
            period: Some(Duration::from_millis(50)),
            last: None,
        };
        assert_eq!(w.timeout(), Some(Duration::ZERO));
        w.tick();
        let t = w.timeout().unwrap();
        assert!(
            t > Duration::from_millis(30) && t <= Duration::from_millis(50),
            "{t:?}"
        );
    }
}
