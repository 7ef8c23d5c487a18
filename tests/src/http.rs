//! A small HTTP/1.1 client over a Unix socket, for the VMM's control API
//! (`--api-socket`): one request per connection (`Connection: close`),
//! the whole response read until the server closes.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long one exchange may take (a pause waits for every vCPU to stop).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of one exchange.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {path}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("talking to the API")]
    Io(#[from] io::Error),
    #[error("malformed response: {0:?}")]
    Malformed(String),
    #[error("the body is not JSON: {body:?}")]
    NotJson {
        body: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, HttpError> {
        serde_json::from_str(&self.body).map_err(|source| HttpError::NotJson {
            body: self.body.clone(),
            source,
        })
    }
}

impl Response {
    /// The body as JSON, `Null` when it is empty.
    pub fn json_or_null(&self) -> Result<serde_json::Value, HttpError> {
        if self.body.is_empty() {
            Ok(serde_json::Value::Null)
        } else {
            self.json()
        }
    }
}

/// The status and JSON body (`Null` when empty) of `method path [body]`,
/// for tests: panics naming the request and every cause of an error.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let r = request(socket, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {}", crate::error_chain(&e)));
    let json = r
        .json_or_null()
        .unwrap_or_else(|e| panic!("{method} {path}: {}", crate::error_chain(&e)));
    (r.status, json)
}

/// Sends `raw` as is on a new connection to `socket` and reads the
/// response until the server closes the connection.
pub fn exchange(socket: &Path, raw: &[u8]) -> Result<Response, HttpError> {
    exchange_with_fds(socket, raw, &[])
}

/// [`exchange`] with `fds` sent along with the request's bytes, in one
/// message (`SCM_RIGHTS`), as Kata's `clh.go` sends tap queues with
/// `vm.add-net`. The caller keeps its copies.
pub fn exchange_with_fds(socket: &Path, raw: &[u8], fds: &[RawFd]) -> Result<Response, HttpError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let mut stream = UnixStream::connect(socket).map_err(|source| HttpError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let sent = if fds.is_empty() {
        0
    } else {
        let cmsg = [ControlMessage::ScmRights(fds)];
        sendmsg::<()>(
            stream.as_raw_fd(),
            &[io::IoSlice::new(raw)],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .map_err(io::Error::from)?
    };
    stream.write_all(&raw[sent..])?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    parse(&String::from_utf8_lossy(&bytes))
}

/// The bytes of `METHOD path` with an optional JSON body, on a
/// connection that closes after it.
pub fn request_bytes(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let body = body.unwrap_or("");
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\n"
    );
    if !body.is_empty() || method != "GET" {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(body);
    raw.into_bytes()
}

/// `METHOD path` with an optional JSON body.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<Response, HttpError> {
    exchange(socket, &request_bytes(method, path, body))
}

/// `GET path`.
pub fn get(socket: &Path, path: &str) -> Result<Response, HttpError> {
    request(socket, "GET", path, None)
}

/// `PUT path` with no body.
pub fn put(socket: &Path, path: &str) -> Result<Response, HttpError> {
    request(socket, "PUT", path, None)
}

/// Parses one whole response (status line, headers, body up to
/// `Content-Length` or the end).
pub fn parse(text: &str) -> Result<Response, HttpError> {
    let malformed = || HttpError::Malformed(text.chars().take(200).collect());
    let (head, rest) = text.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(malformed)?;
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(malformed());
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    let headers = lines
        .map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .ok_or_else(malformed)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut response = Response {
        status,
        headers,
        body: String::new(),
    };
    response.body = match response
        .header("content-length")
        .map(|n| n.parse::<usize>())
    {
        Some(Ok(n)) => rest.get(..n).ok_or_else(malformed)?.to_string(),
        Some(Err(_)) => return Err(malformed()),
        None => rest.to_string(),
    };
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response_with_a_body() {
        let r = parse(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
             Content-Length: 13\r\n\r\n{\"error\":\"x\"}",
        )
        .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.json().unwrap()["error"], "x");
        let r = parse("HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_str()), (204, ""));
        assert!(parse("garbage").is_err());
        assert!(parse("SIP/2.0 200 OK\r\n\r\n").is_err());
    }
}
