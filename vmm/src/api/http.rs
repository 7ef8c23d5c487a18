//! A small, strict HTTP/1.1 request decoder and response writer: exactly
//! what the control API needs and nothing more.
//!
//! - Requests are `METHOD SP origin-form SP HTTP/1.x`, then `name: value`
//!   header lines, then an empty line; lines end in CRLF (a bare LF is
//!   accepted, a bare CR is not). Empty lines before a request are skipped.
//! - A body is framed by `Content-Length` only. `Transfer-Encoding` is
//!   refused with 411 Length Required; a request without `Content-Length`
//!   has no body, so bytes sent after it are read as the next request (and
//!   refused at their first byte that cannot start a request line).
//! - Head larger than [`Limits::max_head`] → 431; `Content-Length` above
//!   [`Limits::max_body`] → 413 (answered before the body is read).
//! - Header names are case-insensitive; obsolete line folding, whitespace
//!   before the colon and control characters are refused.
//!
//! [`Decoder`] is pure (bytes in, requests out), so partial reads and
//! pipelining are tested without sockets.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::Duration;

/// Limits that keep one client from holding the API or its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line plus headers, in bytes.
    pub max_head: usize,
    /// Body bytes (`Content-Length`).
    pub max_body: usize,
    /// Time from a request's first byte until all of it has arrived.
    pub request_timeout: Duration,
    /// Time a kept-alive connection may wait idle for its next request.
    pub idle_timeout: Duration,
    /// Time a response may take to be written.
    pub write_timeout: Duration,
    /// Connections served at once. A newcomer beyond them closes the one
    /// idle the longest; when all are inside a request it is answered 503.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8 * 1024,
            max_body: 64 * 1024,
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            max_connections: 16,
        }
    }
}

/// Why a request could not be read. Each one is answered with
/// [`HttpError::status`] and `{"error": "<message>"}`, and the connection
/// is closed (its framing can no longer be trusted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request line is not `METHOD SP /target SP HTTP/1.x`.
    #[error("malformed request line: {0}")]
    BadRequestLine(String),
    /// A header line is malformed or a header value is invalid.
    #[error("malformed header: {0}")]
    BadHeader(String),
    /// The HTTP version is not 1.0 or 1.1.
    #[error("HTTP version {0} is not supported (use HTTP/1.1)")]
    Version(String),
    /// The request line and headers exceed [`Limits::max_head`].
    #[error("request line and headers exceed {0} bytes")]
    HeadTooLarge(usize),
    /// `Content-Length` exceeds [`Limits::max_body`].
    #[error("request body of {length} bytes exceeds {limit} bytes")]
    BodyTooLarge {
        /// The announced length.
        length: u64,
        /// The limit.
        limit: usize,
    },
    /// `Transfer-Encoding` (chunked or other) is not supported.
    #[error("Transfer-Encoding is not supported; send the body with Content-Length")]
    LengthRequired,
    /// An `Expect` other than `100-continue`.
    #[error("Expect: {0} is not supported")]
    Expectation(String),
    /// The request did not arrive within [`Limits::request_timeout`].
    #[error("request not received within {0:?}")]
    Timeout(Duration),
    /// More file descriptors came with one request than [`MAX_REQUEST_FDS`]
    /// (all of them are closed).
    #[error("more than {0} file descriptors sent with one request (all were closed)")]
    TooManyFds(usize),
}

/// The most file descriptors (`SCM_RIGHTS`) one request may bring:
/// Cloud Hypervisor's clients send one tap queue per queue pair with
/// `vm.add-net`, and a NIC has at most 16 pairs here.
pub const MAX_REQUEST_FDS: usize = 16;

impl HttpError {
    /// The response status for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequestLine(_) | HttpError::BadHeader(_) | HttpError::TooManyFds(_) => {
                400
            }
            HttpError::Timeout(_) => 408,
            HttpError::LengthRequired => 411,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::Expectation(_) => 417,
            HttpError::HeadTooLarge(_) => 431,
            HttpError::Version(_) => 505,
        }
    }
}

/// HTTP/1.0 or HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// One decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent (methods are case-sensitive: `GET`, `PUT`).
    pub method: String,
    /// The path of the request target, without the query.
    pub path: String,
    /// The protocol version.
    pub version: Version,
    /// Header names lower-cased, values trimmed, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
    /// Whether the client wants the connection kept open afterwards.
    pub keep_alive: bool,
}

#[cfg(test)]
impl Request {
    /// The first value of header `name` (give it in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What [`Decoder::next`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete request.
    Request(Request),
    /// More bytes are needed. `send_continue` is true once, when the head
    /// asked for `Expect: 100-continue` and the body is still to come.
    NeedMore { send_continue: bool },
}

/// A parsed head whose body has not fully arrived.
#[derive(Debug)]
struct Pending {
    request: Request,
    head_len: usize,
    body_len: usize,
}

/// Turns a byte stream into requests.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    buf: Vec<u8>,
    pending: Option<Pending>,
    continue_sent: bool,
}

impl Decoder {
    /// A decoder with these limits.
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            buf: Vec::new(),
            pending: None,
            continue_sent: false,
        }
    }

    /// Appends bytes read from the connection.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether part of a request has been received (a timeout then is a
    /// 408, not an idle close).
    pub fn in_request(&self) -> bool {
        self.pending.is_some() || self.buf.iter().any(|b| !matches!(b, b'\r' | b'\n'))
    }

    /// The next request, if all of it has arrived. After an error the
    /// decoder must not be used again.
    pub fn next(&mut self) -> Result<Decoded, HttpError> {
        if self.pending.is_none() {
            // Empty lines before a request line are ignored (RFC 9112 2.2).
            let blank = self
                .buf
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            self.buf.drain(..blank);
            let Some(head_len) = find_head_end(&self.buf) else {
                check_partial_head(&self.buf)?;
                if self.buf.len() > self.limits.max_head {
                    return Err(HttpError::HeadTooLarge(self.limits.max_head));
                }
                return Ok(Decoded::NeedMore {
                    send_continue: false,
                });
            };
            if head_len > self.limits.max_head {
                return Err(HttpError::HeadTooLarge(self.limits.max_head));
            }
            let (request, body_len, expect) = parse_head(&self.buf[..head_len], &self.limits)?;
            self.continue_sent = !expect;
            self.pending = Some(Pending {
                request,
                head_len,
                body_len,
            });
        }
        let Some(p) = self.pending.as_ref() else {
            unreachable!("set above");
        };
        let total = p.head_len + p.body_len;
        if self.buf.len() < total {
            let send_continue = !self.continue_sent && self.buf.len() == p.head_len;
            self.continue_sent = true;
            return Ok(Decoded::NeedMore { send_continue });
        }
        let Some(mut p) = self.pending.take() else {
            unreachable!("checked above");
        };
        p.request.body = self.buf[p.head_len..total].to_vec();
        self.buf.drain(..total);
        Ok(Decoded::Request(p.request))
    }
}

/// The length of the head including its terminating empty line.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + off;
        // The line after this LF is empty: LF or CRLF follows.
        match &buf[nl + 1..] {
            [b'\n', ..] => return Some(nl + 2),
            [b'\r', b'\n', ..] => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// Refuses an incomplete head as soon as it cannot become a request: a
/// method byte that is not A-Z, or a control character in the request line.
/// So a body sent without `Content-Length` (`{}`) is refused at once instead
/// of waiting for the request timeout.
fn check_partial_head(buf: &[u8]) -> Result<(), HttpError> {
    let line = match buf.iter().position(|&b| b == b'\n') {
        Some(nl) => &buf[..nl],
        None => buf,
    };
    let method_len = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    if let Some(&b) = line[..method_len].iter().find(|b| !b.is_ascii_uppercase()) {
        return Err(HttpError::BadRequestLine(format!(
            "method contains byte {:?}",
            b as char
        )));
    }
    let last_cr_ok = |i: usize, b: u8| b == b'\r' && i + 1 == line.len();
    if let Some((_, &b)) = line
        .iter()
        .enumerate()
        .find(|&(i, &b)| !(b == b' ' || b.is_ascii_graphic() || last_cr_ok(i, b)))
    {
        return Err(HttpError::BadRequestLine(format!(
            "invalid byte 0x{b:02x} in request line"
        )));
    }
    Ok(())
}

/// Splits a head into lines, each without its CRLF or LF.
fn lines(head: &[u8]) -> Result<Vec<&[u8]>, HttpError> {
    let mut out = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\r') {
            return Err(HttpError::BadHeader("bare CR in the request head".into()));
        }
        out.push(line);
    }
    // The head ends with an empty line and then the split's empty tail.
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    Ok(out)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a complete head: the request (without body), the body length,
/// and whether `Expect: 100-continue` was sent.
fn parse_head(head: &[u8], limits: &Limits) -> Result<(Request, usize, bool), HttpError> {
    let lines = lines(head)?;
    let Some((first, header_lines)) = lines.split_first() else {
        return Err(HttpError::BadRequestLine("empty".into()));
    };
    let (method, path, version) = parse_request_line(first)?;

    let mut headers = Vec::with_capacity(header_lines.len());
    for line in header_lines {
        headers.push(parse_header(line)?);
    }

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut expect_continue = false;
    let (mut saw_close, mut saw_keep_alive) = (false, false);
    for (name, value) in &headers {
        match name.as_str() {
            "content-length" => {
                let n = parse_content_length(value)?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(HttpError::BadHeader(
                        "conflicting Content-Length values".into(),
                    ));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => transfer_encoding = true,
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    saw_close |= token.eq_ignore_ascii_case("close");
                    saw_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                }
            }
            "expect" => {
                if value.eq_ignore_ascii_case("100-continue") {
                    expect_continue = true;
                } else {
                    return Err(HttpError::Expectation(value.clone()));
                }
            }
            _ => {}
        }
    }
    if transfer_encoding {
        if content_length.is_some() {
            return Err(HttpError::BadHeader(
                "both Transfer-Encoding and Content-Length".into(),
            ));
        }
        return Err(HttpError::LengthRequired);
    }
    let length = content_length.unwrap_or(0);
    let body_len = match usize::try_from(length) {
        Ok(n) if n <= limits.max_body => n,
        _ => {
            return Err(HttpError::BodyTooLarge {
                length,
                limit: limits.max_body,
            })
        }
    };
    let request = Request {
        method,
        path,
        version,
        headers,
        body: Vec::new(),
        // HTTP/1.1 keeps the connection unless told to close; HTTP/1.0
        // closes it unless told to keep it. `close` always wins.
        keep_alive: !saw_close && (version == Version::Http11 || saw_keep_alive),
    };
    Ok((request, body_len, expect_continue && body_len > 0))
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, Version), HttpError> {
    let bad = |why: &str| HttpError::BadRequestLine(why.to_string());
    let text = std::str::from_utf8(line).map_err(|_| bad("not ASCII"))?;
    let mut parts = text.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(
            "expected METHOD, target and version separated by single spaces",
        ));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("method must be an upper-case token such as GET"));
    }
    if !target.starts_with('/') {
        return Err(bad("request target must be a path starting with '/'"));
    }
    if !target.bytes().all(|b| b.is_ascii_graphic()) || target.contains('#') {
        return Err(bad("invalid character in request target"));
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        v if v.len() == 8
            && v.starts_with("HTTP/")
            && v.as_bytes()[5].is_ascii_digit()
            && v.as_bytes()[6] == b'.'
            && v.as_bytes()[7].is_ascii_digit() =>
        {
            return Err(HttpError::Version(v.to_string()))
        }
        _ => return Err(bad("version must be HTTP/1.1 or HTTP/1.0")),
    };
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok((method.to_string(), path, version))
}

fn parse_header(line: &[u8]) -> Result<(String, String), HttpError> {
    if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return Err(HttpError::BadHeader(
            "obsolete line folding is not supported".into(),
        ));
    }
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(HttpError::BadHeader(format!(
            "no colon in {:?}",
            String::from_utf8_lossy(line)
        )));
    };
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(HttpError::BadHeader(format!(
            "invalid header name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    let value = &line[colon + 1..];
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(HttpError::BadHeader(format!(
            "control character in the value of {}",
            String::from_utf8_lossy(name)
        )));
    }
    let value = String::from_utf8_lossy(value)
        .trim_matches([' ', '\t'])
        .to_string();
    Ok((String::from_utf8_lossy(name).to_ascii_lowercase(), value))
}

fn parse_content_length(value: &str) -> Result<u64, HttpError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadHeader(format!(
            "Content-Length {value:?} is not a decimal number"
        )));
    }
    // Too many digits for u64 is too large, not malformed.
    Ok(value.parse().unwrap_or(u64::MAX))
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Extra headers (`Allow`).
    pub headers: Vec<(&'static str, String)>,
    /// A JSON body, empty for 204.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a JSON body.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: value.to_string().into_bytes(),
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": message.into() }))
    }

    /// 204 No Content.
    pub fn no_content() -> Self {
        Response {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The status line, headers and (unless `head_only`, for HEAD
    /// requests) body, as bytes.
    pub fn to_bytes(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        head.push_str("Server: vmm\r\n");
        if self.status != 204 {
            // RFC 9110 8.6: no Content-Length in a 204.
            head.push_str("Content-Type: application/json\r\n");
            let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        }
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }

    /// Writes the response in one write call's worth of bytes.
    pub fn write_to(
        &self,
        w: &mut impl Write,
        keep_alive: bool,
        head_only: bool,
    ) -> io::Result<()> {
        w.write_all(&self.to_bytes(keep_alive, head_only))?;
        w.flush()
    }
}

/// The interim response sent for `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The reason phrase of the statuses this API sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}
