//! Our VMM against backends that misbehave (issue #14's findings): it
//! never hangs on one and names it when it gives up.

use std::os::unix::net::UnixListener;
use std::time::Duration;

use vu_driver::fixture::TempDir;
use vu_driver::vmm::{run_test_guest, show_run};

/// The VMM gives a request 5 s; a loaded machine gets more.
const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn a_backend_that_accepts_and_never_replies_stops_the_start_naming_it() {
    let dir = TempDir::new("vmm-silent").unwrap();
    let socket = dir.join("silent.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // Accepts every connection and keeps it, never reading or answering.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let run = run_test_guest(
        &["--disk".into(), format!("socket={}", socket.display())],
        TIMEOUT,
    );
    assert_eq!(run.code(), Some(1), "{}", show_run(&run));
    let error = run
        .stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line\n{}", show_run(&run)));
    for part in [
        socket.to_str().unwrap(),
        "GET_FEATURES",
        "no reply within 5s",
    ] {
        assert!(error.contains(part), "{error:?} lacks {part:?}");
    }
}
