//! The API over a real Unix socket in a temporary directory, with a client
//! written here (std `UnixStream`, raw bytes in and out).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::routes::tests::FakeVm;
use super::{bind, serve_with_limits, ApiError, ApiStop, Limits, SocketFile, VmState};

fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vmm-api-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Server {
    dir: PathBuf,
    path: PathBuf,
    vm: Arc<FakeVm>,
    stop: ApiStop,
    thread: Option<JoinHandle<()>>,
    socket_file: Option<SocketFile>,
}

impl Server {
    fn start(limits: Limits) -> Server {
        let dir = temp_dir();
        let path = dir.join("api.sock");
        let (listener, socket_file) = bind(&path).unwrap();
        let vm = Arc::new(FakeVm::new(VmState::Running));
        let stop = ApiStop::new().unwrap();
        let thread = serve_with_limits(listener, vm.clone(), stop.clone(), limits).unwrap();
        Server {
            dir,
            path,
            vm,
            stop,
            thread: Some(thread),
            socket_file: Some(socket_file),
        }
    }

    fn quick() -> Server {
        Server::start(Limits {
            request_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            ..Limits::default()
        })
    }

    /// A [`Server::quick`] and a client connected to it.
    fn quick_client() -> (Server, Client) {
        let server = Server::quick();
        let client = server.connect();
        (server, client)
    }

    /// The status of a `vmm.ping` on a fresh connection.
    fn ping(&self) -> u16 {
        self.connect().ping()
    }

    fn connect(&self) -> Client {
        let stream = UnixStream::connect(&self.path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        }
    }

    fn shut(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.socket_file.take();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_string()
    }
}

struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one response; None at end of stream.
    fn read(&mut self) -> Option<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).unwrap() == 0 {
            return None;
        }
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').unwrap();
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = resp
            .header("content-length")
            .map_or(0, |v| v.parse().unwrap());
        resp.body.resize(len, 0);
        self.reader.read_exact(&mut resp.body).unwrap();
        Some(resp)
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> Resp {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(req.as_bytes());
        self.read().expect("a response")
    }

    /// The status of a `vmm.ping` on this connection.
    fn ping(&mut self) -> u16 {
        self.request("GET", "/api/v1/vmm.ping", "").status
    }

    /// True when the server closed the connection: EOF, or a reset when
    /// it closed with bytes of ours unread; not a read timeout.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        match self.reader.read(&mut b) {
            Ok(n) => n == 0,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn every_endpoint_on_one_connection() {
    let (server, mut c) = Server::quick_client();

    let r = c.request("GET", "/api/v1/vmm.ping", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("connection"), Some("keep-alive"));
    assert_eq!(r.json()["pid"], std::process::id());

    let r = c.request("GET", "/api/v1/vm.info", "");
    assert_eq!(r.status, 200);
    let info = r.json();
    assert_eq!(info["state"], "Running");
    assert_eq!(info["cpus"], 2);
    assert_eq!(info["memory"]["size"], 512u64 << 20);
    assert_eq!(info["devices"][0]["pci_bdf"], "0000:00:02.0");
    assert_eq!(info["devices"][1]["backend_state"], "failed");

    let r = c.request("GET", "/api/v1/vm.counters", "");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["vcpu0"]["exits"], 42);

    for (path, body) in [
        ("/api/v1/vm.pause", ""),
        ("/api/v1/vm.resume", "{}"),
        ("/api/v1/vm.power-button", ""),
        ("/api/v1/vm.shutdown", "{}"),
    ] {
        let r = c.request("PUT", path, body);
        assert_eq!(r.status, 204, "{path}: {r:?}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("content-length"), None);
    }
    assert_eq!(
        c.request("GET", "/api/v1/vm.info", "").json()["state"],
        "Shutdown"
    );

    let r = c.request("PUT", "/api/v1/vm.pause", "");
    assert_eq!(r.status, 409);
    assert_eq!(r.error(), "cannot pause: the VM is Shutdown");

    let r = c.request("PUT", "/api/v1/vmm.shutdown", "");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed());
    assert_eq!(
        *server.vm.calls.lock().unwrap(),
        [
            "pause",
            "resume",
            "power-button",
            "shutdown",
            "pause",
            "vmm-shutdown"
        ]
    );
}

#[test]
fn errors_that_keep_the_connection() {
    let (server, mut c) = Server::quick_client();
    let r = c.request("GET", "/api/v1/nope", "");
    assert_eq!(
        (r.status, r.error()),
        (404, "unknown path /api/v1/nope".into())
    );
    let r = c.request("DELETE", "/api/v1/vm.info", "");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    let r = c.request("PUT", "/api/v1/vm.pause", "{oops");
    assert_eq!(r.status, 400);
    assert!(
        r.error().starts_with("request body is not valid JSON"),
        "{r:?}"
    );
    // HEAD gets the head of the 405 and no body.
    c.send(b"HEAD /api/v1/vmm.ping HTTP/1.1\r\n\r\n");
    let mut line = String::new();
    c.reader.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 405 Method Not Allowed\r\n");
    loop {
        line.clear();
        c.reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
    }
    // Still the same connection.
    assert_eq!(c.ping(), 200);
    assert!(server.vm.calls.lock().unwrap().is_empty());
}

/// Sends `bytes` on a fresh connection; the one response and whether the
/// server closed afterwards.
fn refused(server: &Server, bytes: &[u8]) -> (Resp, bool) {
    let mut c = server.connect();
    c.send(bytes);
    let r = c.read().expect("a response");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    (r, c.closed())
}

#[test]
fn malformed_requests_get_4xx_and_close() {
    let server = Server::start(Limits {
        max_head: 512,
        max_body: 64,
        ..Limits::default()
    });
    let cases: &[(&[u8], u16, &str)] = &[
        (b"GARBAGE\r\n\r\n", 400, "malformed request line"),
        (b"get /api/v1/vmm.ping HTTP/1.1\r\n\r\n", 400, "malformed request line"),
        (b"GET api HTTP/1.1\r\n\r\n", 400, "malformed request line"),
        (b"\x16\x03\x01\x02\x00", 400, "malformed request line"),
        (b"GET / HTTP/3.0\r\n\r\n", 505, "HTTP version"),
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", 400, "malformed header"),
        (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, "malformed header"),
        (
            b"PUT /api/v1/vm.pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            411,
            "Transfer-Encoding",
        ),
        (
            b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 65\r\n\r\n",
            413,
            "exceeds 64 bytes",
        ),
        (b"PUT / HTTP/1.1\r\nExpect: gold\r\n\r\n", 417, "Expect"),
    ];
    for &(bytes, status, words) in cases {
        let (r, closed) = refused(&server, bytes);
        assert_eq!(
            r.status,
            status,
            "{:?}: {r:?}",
            String::from_utf8_lossy(bytes)
        );
        assert!(r.error().contains(words), "{}", r.error());
        assert!(closed);
    }
    let mut big = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'x', 600));
    let (r, closed) = refused(&server, &big);
    assert_eq!((r.status, closed), (431, true));
    assert_eq!(r.error(), "request line and headers exceed 512 bytes");
    assert!(server.vm.calls.lock().unwrap().is_empty());
    // The server is still fine.
    assert_eq!(server.ping(), 200);
}

#[test]
fn body_without_content_length() {
    let (_server, mut c) = Server::quick_client();
    c.send(b"PUT /api/v1/vm.pause HTTP/1.1\r\nHost: x\r\n\r\n{}");
    assert_eq!(c.read().unwrap().status, 204);
    let r = c.read().unwrap();
    assert_eq!(r.status, 400);
    assert!(r.error().starts_with("malformed request line"));
    assert!(c.closed());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_server, mut c) = Server::quick_client();
    c.send(
        b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}\
          GET /api/v1/vm.info HTTP/1.1\r\n\r\n\
          PUT /api/v1/vm.resume HTTP/1.1\r\n\r\n\
          GET /api/v1/vm.info HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(c.read().unwrap().status, 204);
    assert_eq!(c.read().unwrap().json()["state"], "Paused");
    assert_eq!(c.read().unwrap().status, 204);
    let last = c.read().unwrap();
    assert_eq!(last.json()["state"], "Running");
    assert_eq!(last.header("connection"), Some("close"));
    assert!(c.closed());
}

#[test]
fn request_in_small_pieces() {
    let (_server, mut c) = Server::quick_client();
    for piece in [
        &b"GE"[..],
        b"T /api/v1/vm",
        b".counters HT",
        b"TP/1.1\r",
        b"\n\r",
        b"\n",
    ] {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(c.read().unwrap().status, 200);
}

#[test]
fn expect_continue_then_body() {
    let (_server, mut c) = Server::quick_client();
    c.send(b"PUT /api/v1/vm.pause HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    let interim = c.read().unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"{}");
    assert_eq!(c.read().unwrap().status, 204);
}

#[test]
fn http10_closes_unless_asked() {
    let (server, mut c) = Server::quick_client();
    c.send(b"GET /api/v1/vmm.ping HTTP/1.0\r\n\r\n");
    assert_eq!(c.read().unwrap().header("connection"), Some("close"));
    assert!(c.closed());
    let mut c = server.connect();
    c.send(b"GET /api/v1/vmm.ping HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.read().unwrap().header("connection"), Some("keep-alive"));
    assert_eq!(c.ping(), 200);
}

#[test]
fn slow_client_gets_408_and_others_are_served_meanwhile() {
    let server = Server::quick();
    let mut slow = server.connect();
    let t0 = Instant::now();
    slow.send(b"GET /api/v1/vm.info HTTP/1.1\r\n");
    // Another client is served while the slow one dawdles.
    assert_eq!(server.ping(), 200);
    // Trickling bytes does not extend the deadline.
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(40));
        slow.send(b"X");
    }
    let r = slow.read().unwrap();
    assert_eq!(r.status, 408);
    assert!(r.error().contains("not received within"));
    assert!(slow.closed());
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[test]
fn idle_connection_is_closed_quietly() {
    let (_server, mut c) = Server::quick_client();
    assert_eq!(c.ping(), 200);
    let t0 = Instant::now();
    assert!(c.closed());
    assert!(t0.elapsed() >= Duration::from_millis(500));
}

#[test]
fn clients_that_vanish_do_no_harm() {
    let server = Server::quick();
    drop(server.connect());
    let mut half = server.connect();
    half.send(b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 10\r\n\r\n{");
    drop(half);
    // A client that sends and leaves without reading its response.
    let mut rude = server.connect();
    rude.send(b"GET /api/v1/vm.info HTTP/1.1\r\n\r\n");
    drop(rude);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(server.ping(), 200);
    assert!(server.vm.calls.lock().unwrap().is_empty());
}

/// Starts a `vm.pause` whose body the server then waits for: once the
/// `100 Continue` is read, the server is inside this connection's request.
fn start_a_request(c: &mut Client) {
    c.send(b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n");
    let mut line = String::new();
    c.reader.read_line(&mut line).unwrap();
    assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
    line.clear();
    c.reader.read_line(&mut line).unwrap();
    assert_eq!(line, "\r\n");
}

/// A server with room for two connections, and two clients that take it.
fn two_places() -> (Server, Client, Client) {
    let server = Server::start(Limits {
        max_connections: 2,
        ..Limits::default()
    });
    let a = server.connect();
    let b = server.connect();
    (server, a, b)
}

#[test]
fn a_newcomer_closes_the_connection_idle_the_longest() {
    let (server, mut a, mut b) = two_places();
    assert_eq!(a.ping(), 200);
    assert_eq!(b.ping(), 200);
    // Both wait idle for their next request; a newcomer takes a's place.
    let mut c = server.connect();
    assert_eq!(c.ping(), 200);
    assert!(a.closed(), "the connection idle the longest is closed");
    assert_eq!(b.ping(), 200);
    assert_eq!(c.ping(), 200);
}

#[test]
fn too_many_connections_inside_requests_get_503() {
    let (server, mut a, mut b) = two_places();
    start_a_request(&mut a);
    start_a_request(&mut b);
    // Nobody idle to make room: refused.
    let mut c = server.connect();
    let r = c.read().unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.error(), "too many API connections (limit 2)");
    assert!(c.closed());
    // a's request ends; a is idle and a newcomer takes its place.
    a.send(b"{}");
    assert_eq!(a.read().unwrap().status, 204);
    let mut d = server.connect();
    assert_eq!(d.ping(), 200);
    assert!(a.closed());
    // b's request was waited for all along (a paused the VM already).
    b.send(b"{}");
    assert_eq!(b.read().unwrap().status, 409);
}

#[test]
fn idle_clients_holding_every_place_lock_nobody_out() {
    let server = Server::start(Limits::default());
    // A client that opens connection after connection and never asks.
    let hoarded: Vec<Client> = (0..64).map(|_| server.connect()).collect();
    for i in 0..40 {
        let mut c = server.connect();
        assert_eq!(c.ping(), 200, "ping {i}");
    }
    let mut c = server.connect();
    assert_eq!(c.request("GET", "/api/v1/vm.info", "").status, 200);
    drop(hoarded);
}

#[test]
fn stop_ends_open_connections_and_removes_the_socket() {
    let mut server = Server::quick();
    let mut c = server.connect();
    assert_eq!(c.ping(), 200);
    let mut partial = server.connect();
    // Served (accepted) before the partial request starts.
    assert_eq!(partial.ping(), 200);
    partial.send(b"GET /api");
    let t0 = Instant::now();
    server.shut();
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    assert!(c.closed());
    assert!(partial.closed());
    assert!(!server.path.exists());
    assert!(UnixStream::connect(&server.path).is_err());
}

#[test]
fn binding_the_socket_path() {
    let dir = temp_dir();
    let path = dir.join("api.sock");

    // A stale socket (nobody listening) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let (listener, file) = bind(&path).unwrap();

    // A live one is an error, and is left alone.
    match bind(&path) {
        Err(ApiError::InUse(p)) => assert_eq!(p, path),
        other => panic!("{other:?}"),
    }
    assert!(path.exists());
    drop(listener);
    drop(file);
    assert!(!path.exists());

    // A regular file is not replaced.
    std::fs::write(&path, b"keep me").unwrap();
    assert!(matches!(bind(&path), Err(ApiError::NotASocket(_))));
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    std::fs::remove_file(&path).unwrap();

    // Someone else's file at the path is not removed on exit.
    let (listener, file) = bind(&path).unwrap();
    assert_eq!(file.path(), path);
    drop(listener);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"new").unwrap();
    drop(file);
    assert_eq!(std::fs::read(&path).unwrap(), b"new");

    // A missing directory names the path.
    let missing = dir.join("no/such/api.sock");
    let e = bind(&missing).unwrap_err();
    assert!(e.to_string().contains("no/such/api.sock"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

mod fds {
    //! Descriptors sent with requests (`SCM_RIGHTS`): `vm.add-net` keeps
    //! them, everything else closes them. Each is the write end of a pipe
    //! whose read end the test holds: the read end hangs up once every
    //! copy of the write end is closed, in the server's table too.

    use std::io::IoSlice;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use nix::poll::{poll, PollFd, PollFlags};
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

    use super::*;

    /// A pipe: (read end, write end).
    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        // SAFETY: pipe2 just made both; nothing else owns them.
        unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) }
    }

    /// `n` pipes; the caller sends the write ends and keeps the read ends.
    fn pipes(n: usize) -> (Vec<OwnedFd>, Vec<OwnedFd>) {
        (0..n).map(|_| pipe()).unzip()
    }

    /// Whether every write end of these pipes is closed, waiting up to
    /// `wait` for it (a connection thread may still be closing them).
    fn all_closed(reads: &[OwnedFd], wait: Duration) -> bool {
        let end = Instant::now() + wait;
        loop {
            let mut polls: Vec<PollFd> = reads
                .iter()
                .map(|r| PollFd::new(r.as_raw_fd(), PollFlags::POLLIN))
                .collect();
            let _ = poll(&mut polls, 0);
            let hung_up = polls
                .iter()
                .filter(|p| p.revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)))
                .count();
            if hung_up == reads.len() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether no write end is closed yet (all are kept somewhere).
    fn none_closed(reads: &[OwnedFd]) -> bool {
        let mut polls: Vec<PollFd> = reads
            .iter()
            .map(|r| PollFd::new(r.as_raw_fd(), PollFlags::POLLIN))
            .collect();
        poll(&mut polls, 0).unwrap() == 0
    }

    impl Client {
        /// Sends `bytes` in one message carrying `fds`, then closes our
        /// copies of them.
        fn send_with_fds(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) {
            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
            let cmsg = [ControlMessage::ScmRights(&raw)];
            let n = sendmsg::<()>(
                self.stream.as_raw_fd(),
                &[IoSlice::new(bytes)],
                &cmsg,
                MsgFlags::empty(),
                None,
            )
            .unwrap();
            assert_eq!(n, bytes.len());
            drop(fds);
        }

        /// `method path` with `body`, the descriptors coming with it.
        fn request_with_fds(
            &mut self,
            method: &str,
            path: &str,
            body: &str,
            fds: Vec<OwnedFd>,
        ) -> Resp {
            let req = format!(
                "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            self.send_with_fds(req.as_bytes(), fds);
            self.read().expect("a response")
        }
    }

    const WAIT: Duration = Duration::from_secs(10);
    const NIC: &str = r#"{"mac": "02:00:00:00:00:01"}"#;

    #[test]
    fn vm_add_net_keeps_its_descriptors_and_other_requests_close_theirs() {
        let (server, mut c) = Server::quick_client();
        let (reads, writes) = pipes(2);
        let r = c.request_with_fds("PUT", "/api/v1/vm.add-net", NIC, writes);
        assert_eq!(r.status, 204, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(server.vm.kept.lock().unwrap().len(), 2);
        assert!(none_closed(&reads), "a kept descriptor was closed");

        // One that takes none: a 400 naming the endpoint, the descriptor
        // closed, the connection still served.
        let (stray, writes) = pipes(1);
        let r = c.request_with_fds("PUT", "/api/v1/vm.pause", "", writes);
        assert_eq!(r.status, 400);
        assert_eq!(
            r.error(),
            "/api/v1/vm.pause takes no file descriptors (1 sent with the request, all closed)"
        );
        assert!(all_closed(&stray, WAIT));
        // A device that refuses them: the VM's error, all closed.
        let (stray, writes) = pipes(3);
        let r = c.request_with_fds("PUT", "/api/v1/vm.add-disk", "{}", writes);
        assert_eq!(
            (r.status, r.error().as_str()),
            (400, "fds: this device takes none")
        );
        assert!(all_closed(&stray, WAIT));
        assert_eq!(c.ping(), 200);
        assert!(!server.vm.calls.lock().unwrap().contains(&"pause"));

        // The VM's copies go with it.
        assert!(none_closed(&reads));
        server.vm.kept.lock().unwrap().clear();
        assert!(all_closed(&reads, WAIT));
    }

    /// Kata's `vmAddNetPutRequest`: one connection, one `vm.add-net` per
    /// NIC, each written with its own queues in one `sendmsg`.
    #[test]
    fn nics_added_on_one_connection_each_get_their_own_descriptors() {
        let (server, mut c) = Server::quick_client();
        let (first, writes) = pipes(1);
        assert_eq!(
            c.request_with_fds("PUT", "/api/v1/vm.add-net", NIC, writes)
                .status,
            204
        );
        assert_eq!(server.vm.kept.lock().unwrap().len(), 1);
        let (second, writes) = pipes(2);
        assert_eq!(
            c.request_with_fds("PUT", "/api/v1/vm.add-net", NIC, writes)
                .status,
            204
        );
        assert_eq!(server.vm.kept.lock().unwrap().len(), 3);
        // A request without any on the same connection gets none.
        assert_eq!(c.request("PUT", "/api/v1/vm.add-net", NIC).status, 204);
        assert_eq!(server.vm.kept.lock().unwrap().len(), 3);
        assert!(none_closed(&first) && none_closed(&second));
    }

    #[test]
    fn more_than_sixteen_is_a_400_naming_the_limit_and_all_are_closed() {
        let (server, mut c) = Server::quick_client();
        let (reads, writes) = pipes(super::super::MAX_REQUEST_FDS + 1);
        let r = c.request_with_fds("PUT", "/api/v1/vm.add-net", NIC, writes);
        assert_eq!(r.status, 400);
        assert_eq!(
            r.error(),
            "more than 16 file descriptors sent with one request (all were closed)"
        );
        assert!(c.closed());
        assert!(all_closed(&reads, WAIT));
        assert!(server.vm.calls.lock().unwrap().is_empty());

        // Sixteen in two messages of one request count together.
        let mut c = server.connect();
        let (reads, writes) = pipes(20);
        let mut writes = writes.into_iter();
        let head = format!(
            "PUT /api/v1/vm.add-net HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            NIC.len()
        );
        c.send_with_fds(head.as_bytes(), writes.by_ref().take(10).collect());
        c.send_with_fds(NIC.as_bytes(), writes.collect());
        let r = c.read().expect("a response");
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(&r.body));
        assert!(all_closed(&reads, WAIT));
        assert!(server.vm.kept.lock().unwrap().is_empty());
    }

    #[test]
    fn malformed_or_unfinished_requests_close_their_descriptors() {
        let server = Server::quick();
        // Bad JSON: 400, closed.
        let mut c = server.connect();
        let (reads, writes) = pipes(2);
        let r = c.request_with_fds("PUT", "/api/v1/vm.add-net", "{\"mac\": ", writes);
        assert_eq!(r.status, 400);
        assert!(r.error().contains("not valid JSON"), "{}", r.error());
        assert!(all_closed(&reads, WAIT));
        // A malformed head: refused, the connection closed, so are they.
        let mut c = server.connect();
        let (reads, writes) = pipes(2);
        let r = c.request_with_fds("PUT", "/api/v1/vm.add-net HTTP/9", "", writes);
        assert_eq!(r.status, 400);
        assert!(c.closed());
        assert!(all_closed(&reads, WAIT));
        // Half a request, then the client goes.
        let mut c = server.connect();
        let (reads, writes) = pipes(3);
        c.send_with_fds(b"PUT /api/v1/vm.add-net HTTP/1.1\r\nContent-Le", writes);
        drop(c);
        assert!(all_closed(&reads, WAIT));
        // Half a request that times out: 408, closed.
        let mut c = server.connect();
        let (reads, writes) = pipes(1);
        c.send_with_fds(b"PUT /api/v1/vm.add-net HTTP/1.1\r\n", writes);
        assert_eq!(c.read().expect("a 408").status, 408);
        assert!(all_closed(&reads, WAIT));
        assert!(server.vm.kept.lock().unwrap().is_empty());
        assert!(server.vm.calls.lock().unwrap().is_empty());
    }
}
