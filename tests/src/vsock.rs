//! The host's side of a hybrid vsock (Firecracker's and Cloud Hypervisor's
//! scheme, which rust-vmm's vhost-device-vsock speaks on its `uds-path`):
//! connect to the Unix socket, write `CONNECT <port>\n`, read
//! `OK <hostport>\n`, then talk to the guest's port; and the guest's side,
//! the kits' `vsock-echo` (`tests/guest/src/vsock-echo.c`), in a script.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::fixture::poll_until;

/// The port kata-agent listens on, where the guests' echo server listens.
pub const AGENT_PORT: u32 = 1024;
/// The file `vsock-echo` creates in the share once it listens.
pub const READY_FILE: &str = "vsock-ready";

/// Script lines (busybox sh) that start `vsock-echo` on [`AGENT_PORT`] for
/// one connection in the background, creating [`READY_FILE`] in the share
/// (`$VUTEST_FS`) once it listens.
pub fn guest_echo_start() -> String {
    format!("vsock-echo {AGENT_PORT} 1 \"$VUTEST_FS/{READY_FILE}\" >/tmp/ve 2>&1 & ve=$!\n")
}

/// Script lines that wait for that connection to end (exit 31 if the
/// server failed) and report the guest's cid as `vsock_cid`.
pub fn guest_echo_end() -> String {
    "wait $ve || { cat /tmp/ve; exit 31; }\n\
     vutest-kv vsock_cid \"$(sed -n 's/.*local cid //p' /tmp/ve)\"\n"
        .to_string()
}

/// What [`echo`] got: the reply to CONNECT and the bytes echoed.
#[derive(Debug)]
pub struct Echoed {
    pub reply: String,
    pub bytes: Vec<u8>,
}

/// Once `ready` exists (waiting up to `wait`), connects to the hybrid
/// socket `hybrid`, writes `CONNECT <port>\n`, reads the reply line,
/// sends `payload` and reads as many bytes back (each read given 120 s).
pub fn echo(
    ready: &Path,
    hybrid: &Path,
    port: u32,
    payload: &[u8],
    wait: Duration,
) -> Result<Echoed, String> {
    if !poll_until(wait, || ready.exists()) {
        return Err(format!("{} never appeared", ready.display()));
    }
    let mut conn = UnixStream::connect(hybrid)
        .map_err(|e| format!("connecting to {}: {e}", hybrid.display()))?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .map_err(|e| e.to_string())?;
    conn.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("writing CONNECT: {e}"))?;
    let mut line = Vec::new();
    let mut byte = [0u8];
    while byte[0] != b'\n' {
        conn.read_exact(&mut byte)
            .map_err(|e| format!("reading the reply to CONNECT (so far {line:?}): {e}"))?;
        line.push(byte[0]);
    }
    conn.write_all(payload)
        .map_err(|e| format!("writing {} bytes: {e}", payload.len()))?;
    let mut bytes = vec![0u8; payload.len()];
    conn.read_exact(&mut bytes)
        .map_err(|e| format!("reading the echo: {e}"))?;
    Ok(Echoed {
        reply: String::from_utf8_lossy(&line).into_owned(),
        bytes,
    })
}

/// [`echo`] on a thread; its result arrives on the returned channel.
pub fn echo_in_background(
    ready: PathBuf,
    hybrid: PathBuf,
    port: u32,
    payload: Vec<u8>,
    wait: Duration,
) -> mpsc::Receiver<Result<Echoed, String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(echo(&ready, &hybrid, port, &payload, wait));
    });
    rx
}
