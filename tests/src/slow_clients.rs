//! Clients that never finish: what both HTTP servers (edge-host, the inference
//! server) must cut off, when started with a 1 s head timeout, a 1 s body timeout
//! and a cap of 2 connections (`http_limits`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The flags, as environment variables, that both servers read.
pub const LIMITS_ENV: [(&str, &str); 3] = [
    ("HEADER_TIMEOUT_SECS", "1"),
    ("BODY_TIMEOUT_SECS", "1"),
    ("MAX_CONNECTIONS", "2"),
];

fn connect(addr: &str) -> TcpStream {
    let conn = TcpStream::connect(addr).expect("connecting");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn
}

/// Reads until the server closes the connection; what it sent and how long it took.
/// Panics if it is still open after 10 s.
fn until_closed(conn: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

/// `addr` (host:port) serves `ok_path` with GET and reads a body on POST `body_path`.
pub fn check(addr: &str, ok_path: &str, body_path: &str) {
    // A head that never ends.
    let mut conn = connect(addr);
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let (_, took) = until_closed(&mut conn);
    assert!(
        took < Duration::from_secs(5),
        "an unfinished head was kept {took:?}"
    );

    // A body that stops: answered or closed, not kept.
    let mut conn = connect(addr);
    conn.write_all(
        format!("POST {body_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"prompt\"")
            .as_bytes(),
    )
    .unwrap();
    let (_, took) = until_closed(&mut conn);
    assert!(
        took < Duration::from_secs(5),
        "a stalled body was kept {took:?}"
    );

    // An idle keep-alive connection is closed too.
    let mut conn = connect(addr);
    conn.write_all(format!("GET {ok_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .unwrap();
    let (reply, took) = until_closed(&mut conn);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        took < Duration::from_secs(5),
        "an idle connection was kept {took:?}"
    );

    // Two connections at once at most: a third is closed as it arrives.
    let (_a, _b) = (connect(addr), connect(addr));
    std::thread::sleep(Duration::from_millis(100));
    let mut third = connect(addr);
    let _ =
        third.write_all(format!("GET {ok_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes());
    let (reply, took) = until_closed(&mut third);
    assert!(reply.is_empty(), "a third connection was served: {reply}");
    assert!(took < Duration::from_millis(900), "{took:?}");
    // Once the two idle ones are cut off, there is room again.
    std::thread::sleep(Duration::from_millis(1500));
    let mut conn = connect(addr);
    conn.write_all(
        format!("GET {ok_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let (reply, _) = until_closed(&mut conn);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}
