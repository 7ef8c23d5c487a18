//! What the crash-recovery tests share (a Linux guest under our vmm in
//! `linux::reconnect`, under QEMU in `qemu::reconnect`): the guest's two
//! disk writers, what the host expects them to have left in the image, and
//! a TCP receiver that holds a stream half-read while daemons are killed.
//!
//! The writers (busybox sh, in the guest's script): writer `w` (1 or 2)
//! writes rounds of [`ROUND`] bytes with 64 KiB O_DIRECT writes at
//! [`region_offset`]`(w)` on `/dev/vda`, round `n` holding
//! `seq `[`round_start`]`(w, n)` output (made in user mode, native even
//! where the guest's kernel is emulated), printing `writer W: round N done`
//! after each and `writer W: round N failed` (and failing) on an error,
//! until `$VUTEST_FS/stop` exists; then each reports `rounds<W>` and
//! the script goes on.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::fixture::{poll_until, Daemon};
use crate::image::seq_from;
use crate::process::{pending_kicks, serving_pid};

/// A writer's round: 4 O_DIRECT writes of 64 KiB.
pub const ROUND: usize = 256 << 10;

/// The writers' shell code: both run in the background and the script
/// waits for them (exit 11 or 12 if one failed).
pub fn writers_script() -> String {
    format!(
        r#"w() {{
n=0
while [ ! -e "$VUTEST_FS/stop" ]; do
n=$((n+1))
seq $(($1*100000000+n*1000)) 999999999 | head -c {ROUND} >/tmp/d$1
dd if=/tmp/d$1 of=/dev/vda bs=64k seek=$((64*$1)) oflag=direct conv=notrunc 2>/dev/null || {{ echo "writer $1: round $n failed"; return 1; }}
echo "writer $1: round $n done"
done
vutest-kv rounds$1 $n
}}
w 1 & p1=$!
w 2 & p2=$!
wait $p1 || exit 11
wait $p2 || exit 12
"#
    )
}

/// Where writer `w` writes (64 × `w` blocks of 64 KiB).
pub fn region_offset(w: u64) -> u64 {
    64 * w * 64 * 1024
}

/// The first number `seq` prints in writer `w`'s round `n`.
pub fn round_start(w: u64, n: u64) -> u64 {
    w * 100_000_000 + n * 1000
}

/// Writer `w`'s last round on a console line `line`, if it is one.
pub fn round_done(line: &str, w: u64) -> Option<u64> {
    line.strip_prefix(&format!("writer {w}: round "))?
        .strip_suffix(" done")?
        .trim()
        .parse()
        .ok()
}

/// Whether a console line reports a failed write.
pub fn write_failed(line: &str) -> bool {
    line.starts_with("writer ") && line.ends_with(" failed")
}

/// Checks that `image` holds round `last[w-1]` of each writer; the error
/// names the writer and round.
pub fn check_last_rounds(image: &Path, last: [u64; 2]) -> Result<(), String> {
    let disk = std::fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
    for w in 1..=2u64 {
        let n = last[w as usize - 1];
        let at = region_offset(w) as usize;
        let found = disk.get(at..at + ROUND);
        if found != Some(&seq_from(round_start(w, n), ROUND)[..]) {
            return Err(format!("writer {w}: the image does not hold round {n}"));
        }
    }
    Ok(())
}

/// Accepts one connection on `listener` (within `timeout`, so a guest that
/// never connects does not hang the test), reads its first `first` bytes,
/// says so on `partial`, waits for `go` (or its sender's end), then reads
/// on until `total` bytes or the end. The bytes arrive on the handle.
pub fn receive_in_two_parts(
    listener: TcpListener,
    first: usize,
    total: usize,
    timeout: Duration,
    partial: mpsc::Sender<()>,
    go: mpsc::Receiver<()>,
) -> JoinHandle<std::io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        listener.set_nonblocking(true)?;
        let mut conn = None;
        poll_until(timeout, || {
            conn = listener.accept().ok().map(|(c, _)| c);
            conn.is_some()
        });
        let mut conn = conn.ok_or_else(|| std::io::Error::other("the guest never connected"))?;
        conn.set_nonblocking(false)?;
        let mut data = vec![0u8; first];
        conn.read_exact(&mut data)?;
        let _ = partial.send(());
        let _ = go.recv();
        conn.take((total - first) as u64).read_to_end(&mut data)?;
        Ok(data)
    })
}

/// Stops the process that serves for `daemon` (its jail's child, or the
/// daemon itself) with SIGSTOP, then waits until a guest's kick waits in
/// its eventfds: a request sits in a ring, taken by nobody, when it dies.
pub fn stop_with_a_request_in_flight(daemon: &Daemon, timeout: Duration) -> Result<(), String> {
    let pid = serving_pid(daemon.pid());
    // SAFETY: kill(2) with a pid and a signal touches no memory.
    if unsafe { libc::kill(pid as i32, libc::SIGSTOP) } != 0 {
        return Err(format!(
            "SIGSTOP to {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    if !poll_until(timeout, || pending_kicks(pid) > 0) {
        return Err(format!(
            "no kick reached the stopped {} ({pid})",
            daemon.name()
        ));
    }
    Ok(())
}

/// A crash: SIGKILL to the process that serves for `daemon` and to
/// `daemon` itself (a jail's supervisor), then waits for it to end.
pub fn kill_hard(daemon: &mut Daemon, timeout: Duration) -> Result<(), String> {
    let serving = serving_pid(daemon.pid());
    // SAFETY: kill(2) with a pid and a signal touches no memory.
    unsafe { libc::kill(serving as i32, libc::SIGKILL) };
    let _ = daemon.signal(libc::SIGKILL);
    daemon
        .wait_timeout(timeout)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} did not end", daemon.name()))?;
    // The serving child too (gone, or a zombie: its files are closed).
    let ended = || {
        std::fs::read_to_string(format!("/proc/{serving}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    };
    if poll_until(timeout, ended) {
        Ok(())
    } else {
        Err(format!(
            "{}'s serving process {serving} did not end",
            daemon.name()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writers_and_the_host_agree() {
        let s = writers_script();
        assert!(s.contains("seek=$((64*$1))") && s.contains("$(($1*100000000+n*1000))"));
        assert_eq!(region_offset(2), 128 * 64 * 1024);
        assert!(seq_from(round_start(1, 3), ROUND).starts_with(b"100003000\n100003001\n"));
        assert_eq!(round_done("writer 2: round 17 done", 2), Some(17));
        assert_eq!(round_done("writer 2: round 17 done", 1), None);
        assert!(write_failed("writer 1: round 4 failed"));
        assert!(!write_failed("writer 1: round 4 done"));
    }
}
