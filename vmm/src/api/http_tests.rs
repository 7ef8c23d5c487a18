//! The HTTP decoder and response writer, without sockets.

use super::http::*;

fn decoder() -> Decoder {
    Decoder::new(Limits {
        max_head: 256,
        max_body: 32,
        ..Limits::default()
    })
}

fn one(bytes: &[u8]) -> Result<Decoded, HttpError> {
    let mut d = decoder();
    d.feed(bytes);
    d.next()
}

fn request(bytes: &[u8]) -> Request {
    match one(bytes) {
        Ok(Decoded::Request(r)) => r,
        other => panic!("expected a request, got {other:?}"),
    }
}

fn error(bytes: &[u8]) -> HttpError {
    match one(bytes) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

const NEED_MORE: Decoded = Decoded::NeedMore {
    send_continue: false,
};

#[test]
fn simple_get() {
    let r = request(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.method, "GET");
    assert_eq!(r.path, "/api/v1/vmm.ping");
    assert_eq!(r.version, Version::Http11);
    assert_eq!(r.header("host"), Some("localhost"));
    assert!(r.body.is_empty());
    assert!(r.keep_alive);
}

#[test]
fn byte_at_a_time_and_pipelined() {
    let stream = b"PUT /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /b?x=1 HTTP/1.1\n\n";
    let mut d = decoder();
    let mut got = Vec::new();
    for &b in stream.iter() {
        d.feed(&[b]);
        while let Decoded::Request(r) = d.next().unwrap() {
            got.push(r);
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].method.as_str(), got[0].body.as_slice()),
        ("PUT", &b"{}"[..])
    );
    assert_eq!(
        (got[1].method.as_str(), got[1].path.as_str()),
        ("GET", "/b")
    );
    assert!(!d.in_request());

    // Both at once: two requests from one read.
    let mut d = decoder();
    d.feed(stream);
    assert!(matches!(d.next(), Ok(Decoded::Request(_))));
    assert!(matches!(d.next(), Ok(Decoded::Request(_))));
    assert_eq!(d.next(), Ok(NEED_MORE));
}

#[test]
fn partial_head_waits() {
    assert_eq!(one(b"GET /a HTTP/1.1\r\nHost: x\r\n"), Ok(NEED_MORE));
    assert_eq!(one(b"GE"), Ok(NEED_MORE));
    assert_eq!(one(b"\r\n\r\n"), Ok(NEED_MORE));
    let mut d = decoder();
    d.feed(b"\r\n");
    assert!(!d.in_request());
    d.feed(b"G");
    assert!(d.in_request());
}

#[test]
fn bad_request_lines() {
    for line in [
        &b"GET /a\r\n\r\n"[..],
        b"GET  /a HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.1 extra\r\n\r\n",
        b"get /a HTTP/1.1\r\n\r\n",
        b"GET a HTTP/1.1\r\n\r\n",
        b"GET http://localhost/a HTTP/1.1\r\n\r\n",
        b"GET /a FTP/1.1\r\n\r\n",
        b"GET /a\x01 HTTP/1.1\r\n\r\n",
        b"GET /a#f HTTP/1.1\r\n\r\n",
    ] {
        let e = error(line);
        assert!(
            matches!(e, HttpError::BadRequestLine(_)),
            "{:?} gave {e:?}",
            String::from_utf8_lossy(line)
        );
        assert_eq!(e.status(), 400);
    }
    assert_eq!(error(b"GET /a HTTP/2.0\r\n\r\n").status(), 505);
    // Refused before the line is complete.
    assert!(matches!(error(b"{}"), HttpError::BadRequestLine(_)));
    assert!(matches!(error(b"GET /\x00"), HttpError::BadRequestLine(_)));
}

#[test]
fn bad_headers() {
    for head in [
        &b"GET / HTTP/1.1\r\nNoColon\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET / HTTP/1.1\r\n: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ] {
        let e = error(head);
        assert_eq!(
            e.status(),
            400,
            "{:?} gave {e:?}",
            String::from_utf8_lossy(head)
        );
    }
    // The same length twice is fine.
    let r = request(b"PUT / HTTP/1.1\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\n{}");
    assert_eq!(r.body, b"{}");
}

#[test]
fn header_names_are_case_insensitive() {
    let r = request(
        b"PUT / HTTP/1.1\r\nCONTENT-LENGTH: 2\r\nconnection: CLOSE\r\nX-Thing:\t v \r\n\r\n{}",
    );
    assert_eq!(r.body, b"{}");
    assert!(!r.keep_alive);
    assert_eq!(r.header("x-thing"), Some("v"));
}

#[test]
fn keep_alive_rules() {
    assert!(!request(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(request(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
    assert!(!request(b"GET / HTTP/1.1\r\nConnection: TE, close\r\n\r\n").keep_alive);
}

#[test]
fn chunked_is_refused() {
    let e = error(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n");
    assert_eq!(e, HttpError::LengthRequired);
    assert_eq!(e.status(), 411);
}

#[test]
fn body_without_content_length_is_the_next_request() {
    let mut d = decoder();
    d.feed(b"PUT /a HTTP/1.1\r\n\r\n{}");
    match d.next() {
        Ok(Decoded::Request(r)) => assert!(r.body.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(matches!(d.next(), Err(HttpError::BadRequestLine(_))));
}

#[test]
fn oversized_head() {
    let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 300));
    // Incomplete and already over the limit.
    assert_eq!(one(&head), Err(HttpError::HeadTooLarge(256)));
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(one(&head).unwrap_err().status(), 431);
    // Exactly at the limit is accepted.
    let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 256 - head.len() - 4));
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), 256);
    assert!(matches!(one(&head), Ok(Decoded::Request(_))));
}

#[test]
fn oversized_body_is_refused_before_it_arrives() {
    let e = error(b"PUT / HTTP/1.1\r\nContent-Length: 33\r\n\r\n");
    assert_eq!(
        e,
        HttpError::BodyTooLarge {
            length: 33,
            limit: 32
        }
    );
    assert_eq!(e.status(), 413);
    let e = error(b"PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n");
    assert_eq!(e.status(), 413);
    let r =
        request(b"PUT / HTTP/1.1\r\nContent-Length: 32\r\n\r\n[0,1,2,3,4,5,6,7,8,9,10,11,12,1]");
    assert_eq!(r.body.len(), 32);
}

#[test]
fn expect_continue() {
    let mut d = decoder();
    d.feed(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(
        d.next(),
        Ok(Decoded::NeedMore {
            send_continue: true
        })
    );
    assert_eq!(d.next(), Ok(NEED_MORE));
    d.feed(b"{}");
    assert!(matches!(d.next(), Ok(Decoded::Request(_))));
    // Body already there: no interim response.
    assert!(matches!(
        one(b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"),
        Ok(Decoded::Request(_))
    ));
    assert_eq!(
        error(b"PUT / HTTP/1.1\r\nExpect: magic\r\n\r\n").status(),
        417
    );
}

#[test]
fn response_bytes() {
    let r = Response::error(405, "no").with_header("Allow", "GET");
    let text = String::from_utf8(r.to_bytes(true, false)).unwrap();
    assert!(text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
    assert!(text.contains("\r\nAllow: GET\r\n"));
    assert!(text.contains("\r\nContent-Length: 14\r\n"));
    assert!(text.contains("\r\nConnection: keep-alive\r\n\r\n"));
    assert!(text.ends_with(r#"{"error":"no"}"#));
    let head_only = String::from_utf8(r.to_bytes(false, true)).unwrap();
    assert!(head_only.ends_with("Connection: close\r\n\r\n"));
    let nc = String::from_utf8(Response::no_content().to_bytes(true, false)).unwrap();
    assert!(nc.starts_with("HTTP/1.1 204 No Content\r\n"));
    assert!(!nc.contains("Content-Length"));
}
