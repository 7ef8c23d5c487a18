//! Crash recovery with a third-party frontend (issue #13): Debian's Linux
//! under QEMU 7.2 TCG with `-chardev socket,...,reconnect=1` on our
//! vhost-blk-daemon. Two writers in the guest keep 64 KiB O_DIRECT writes
//! going on `/dev/vda` (256 KiB rounds of distinct content, each in its own
//! region) until the host puts `stop` in the share; meanwhile the host
//! SIGKILLs the daemon twice, each time with a write in flight (stopped
//! until the guest's kick waits in its eventfd), and starts a new one on
//! the same socket. QEMU reconnects and rewinds the ring to the used index
//! (QEMU 7.2 has no in-flight region from us yet); no write fails, the
//! guest's kernel logs no I/O error, and the image holds each writer's
//! last round.
//!
//! The same for vhost-net-daemon: a 1 MiB TCP stream from the guest to a
//! listener in the host's namespace that stops reading after 64 KiB, while
//! the host kills the daemon twice and restarts it on the same tap; QEMU
//! reconnects (the guest's link goes down and up) and the stream arrives
//! byte for byte.
//!
//! Needs root (namespace, tap), `scripts/setup.sh` (guest kit) and
//! `cargo build --workspace --bins`.

use std::cell::RefCell;
use std::path::Path;
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use vu_driver::crash;
use vu_driver::fixture::{create_sparse_image, poll_until, Daemon, TempDir};
use vu_driver::guest::{NetDeviceOpts, QemuGuest};
use vu_driver::image::seq_from;
use vu_driver::netns::NetNs;
use vu_driver::ours::{vhost_blk_daemon, vhost_net_daemon, virtiofsd_share, BlkDaemonOpts};

const TAG: &str = "kataShared";
const GUEST_TIMEOUT: Duration = Duration::from_secs(600);
const WAIT: Duration = Duration::from_secs(60);
/// Rounds each writer does after a kill before the next step.
const AFTER_KILL: u64 = 3;
const IO_ERRORS: &str = "I/O error|blk_update_request";

fn script() -> String {
    format!(
        r#"set -e
test -n "$VUTEST_FS" || exit 10
{writers}c="$(dmesg | grep -E '{IO_ERRORS}' | tr '\n' '|' || true)"
vutest-kv io_errors "${{c:-none}}"
"#,
        writers = crash::writers_script()
    )
}

/// Where the test is: kills done, and the rounds seen when each was done.
#[derive(Default)]
struct Progress {
    kills: u32,
    /// Each writer's last round seen.
    rounds: [u64; 2],
    /// The rounds at the last kill.
    at_kill: [u64; 2],
    stop_written: bool,
    error: Option<String>,
}

/// Stops the daemon until a kick waits (a write in flight), kills it and
/// starts a new one on the same socket.
fn kill_with_a_write_in_flight(
    daemon: &mut Daemon,
    restart: &dyn Fn() -> Daemon,
) -> Result<(), String> {
    crash::stop_with_a_request_in_flight(daemon, WAIT)?;
    crash::kill_hard(daemon, WAIT)?;
    *daemon = restart();
    Ok(())
}

#[test]
fn qemu_reconnects_to_a_restarted_blk_daemon_and_no_write_is_lost() {
    let dir = TempDir::new("guest-reconnect").unwrap();
    let fs = virtiofsd_share(dir.path(), TAG).unwrap_or_else(|e| panic!("{e}"));
    let (share, fs_sock) = (&fs.path, &fs.socket);
    let image = dir.join("disk.img");
    create_sparse_image(&image, 64 << 20).unwrap();
    let blk_sock = dir.join("blk.sock");
    let restart = || {
        vhost_blk_daemon(&image, &blk_sock, &BlkDaemonOpts::default())
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let blk = RefCell::new(restart());
    let progress = RefCell::new(Progress::default());

    let guest = QemuGuest::locate()
        .unwrap_or_else(|e| panic!("{e}"))
        .fs(fs_sock, TAG)
        .blk(&blk_sock)
        .reconnect(1)
        .script(&script())
        .timeout(GUEST_TIMEOUT);
    let stop_file = share.join("stop");
    let out = guest
        .run_watching(|line| {
            let mut p = progress.borrow_mut();
            for w in 0..2 {
                if let Some(n) = crash::round_done(line, w as u64 + 1) {
                    p.rounds[w] = p.rounds[w].max(n);
                }
            }
            if p.error.is_some() || p.stop_written {
                return;
            }
            let moved_on = (0..2).all(|w| p.rounds[w] >= p.at_kill[w] + AFTER_KILL);
            if !moved_on {
                return;
            }
            if p.kills < 2 {
                match kill_with_a_write_in_flight(&mut blk.borrow_mut(), &restart) {
                    Ok(()) => {
                        p.kills += 1;
                        p.at_kill = p.rounds;
                    }
                    Err(e) => p.error = Some(e),
                }
            } else {
                if let Err(e) = std::fs::write(&stop_file, b"") {
                    p.error = Some(format!("{}: {e}", stop_file.display()));
                }
                p.stop_written = true;
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let p = progress.into_inner();
    let blk = blk.into_inner();
    let all = format!(
        "--- console\n{}\n--- QEMU stderr\n{}\n--- {} log\n{}--- {} log\n{}",
        out.console_text(),
        out.qemu_stderr,
        blk.name(),
        blk.log_contents(),
        fs.daemon.name(),
        fs.daemon.log_contents()
    );
    assert_eq!(p.error, None, "{all}");
    assert_eq!((p.kills, p.stop_written), (2, true), "{all}");
    out.ensure_pass().unwrap_or_else(|e| panic!("{e}\n{all}"));
    assert_eq!(out.kv("io_errors"), Some("none"), "{all}");
    let rounds = [1, 2].map(|w| {
        out.kv(&format!("rounds{w}"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no rounds{w}\n{all}"))
    });
    crash::check_last_rounds(&image, rounds).unwrap_or_else(|e| panic!("{e}\n{all}"));
    assert!(
        Path::new(&stop_file).exists(),
        "the guest was told to stop\n{all}"
    );
    // QEMU used the daemon's in-flight tracking: it handed the restarted
    // daemon the region it got before the kills.
    assert!(
        blk.log_contents().contains("in-flight region set"),
        "QEMU sent no SET_INFLIGHT_FD\n{all}"
    );
}

const TAP: &str = "vrtap0";
const HOST_IP: &str = "10.0.9.1";
const GUEST_IP: &str = "10.0.9.2";
const GUEST_MAC: &str = "02:00:00:00:00:23";
const TCP_PORT: u16 = 5557;
const MIB: usize = 1 << 20;
/// What the listener reads before the kills.
const TCP_FIRST: usize = 64 << 10;

#[test]
fn qemu_reconnects_to_a_restarted_net_daemon_and_a_tcp_stream_survives() {
    let dir = TempDir::new("guest-reconnect-net").unwrap();
    let ns =
        NetNs::with_tap("vrn", TAP, &format!("{HOST_IP}/24")).unwrap_or_else(|e| panic!("{e}"));
    let socket = dir.join("net.sock");
    let start = || {
        vhost_net_daemon(&ns, &socket, &["--tap", TAP, "--mac", GUEST_MAC])
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let net = Mutex::new(start());
    let listener = ns
        .listen_tcp(HOST_IP, TCP_PORT)
        .unwrap_or_else(|e| panic!("{e}"));
    let script = format!(
        r#"set -e
ip link set eth0 up
ip addr add {GUEST_IP}/24 dev eth0
seq 1 999999999 | head -c {MIB} >/tmp/t
timeout 300 nc {HOST_IP} {TCP_PORT} </tmp/t || exit 22
"#
    );
    let guest = QemuGuest::locate()
        .unwrap_or_else(|e| panic!("{e}"))
        .net_vhost_user_with(
            &socket,
            &NetDeviceOpts {
                mac: Some(GUEST_MAC.to_string()),
                queue_pairs: None,
            },
        )
        .reconnect(1)
        .script(&script)
        .timeout(GUEST_TIMEOUT);
    let (partial_tx, partial) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let (out, received, kills) = std::thread::scope(|scope| {
        let receiver =
            crash::receive_in_two_parts(listener, TCP_FIRST, MIB, GUEST_TIMEOUT, partial_tx, go_rx);
        let (net, start) = (&net, &start);
        let killer = scope.spawn(move || -> Result<u32, String> {
            partial
                .recv_timeout(GUEST_TIMEOUT)
                .map_err(|_| "the guest's stream never arrived".to_string())?;
            for n in 1..=2u32 {
                let mut d = net.lock().unwrap();
                crash::kill_hard(&mut d, WAIT)?;
                *d = start();
                // QEMU's reconnect: the new daemon's first frontend.
                if !poll_until(WAIT, || d.log_contents().contains("frontend connected")) {
                    return Err(format!("QEMU did not reconnect after kill {n}"));
                }
            }
            let _ = go.send(());
            Ok(2)
        });
        let out = guest.run();
        let kills = killer.join().unwrap();
        (out, receiver.join().unwrap(), kills)
    });
    let net = net.into_inner().unwrap();
    let out = out.unwrap_or_else(|e| panic!("{e}"));
    let all = format!(
        "--- console\n{}\n--- QEMU stderr\n{}\n--- {} log\n{}",
        out.console_text(),
        out.qemu_stderr,
        net.name(),
        net.log_contents()
    );
    assert_eq!(kills, Ok(2), "{all}");
    out.ensure_pass().unwrap_or_else(|e| panic!("{e}\n{all}"));
    let tcp = received.unwrap_or_else(|e| panic!("receiving the stream: {e}\n{all}"));
    assert!(
        tcp == seq_from(1, MIB),
        "the TCP stream differs from the guest's MiB ({} bytes)\n{all}",
        tcp.len()
    );
}
