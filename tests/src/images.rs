//! Input images for the tests and a real HTTP server that serves them on loopback.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use image::{ImageFormat, Rgb, RgbImage};

/// A picture with structure (stripes and a disc) so img2img has something to keep.
pub fn test_picture(width: u32, height: u32, hue: u8) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let (cx, cy) = (width as i64 / 2, height as i64 / 2);
        let (dx, dy) = (x as i64 - cx, y as i64 - cy);
        let r = (width.min(height) / 3) as i64;
        if dx * dx + dy * dy < r * r {
            Rgb([hue, 255 - hue, 40])
        } else if (x / 16 + y / 16) % 2 == 0 {
            Rgb([230, 230, hue])
        } else {
            Rgb([20, hue / 2, 90])
        }
    })
}

/// An image the APIs answer in base64, decoded to RGB.
pub fn from_base64(b64: &str) -> RgbImage {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    image::load_from_memory(&bytes).expect("an image").to_rgb8()
}

/// A file's bytes in base64, as the APIs take images.
pub fn file_base64(path: &std::path::Path) -> String {
    use base64::Engine as _;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The largest per-channel difference between `got` and the reference image at `path`.
pub fn max_diff_to(path: &std::path::Path, got: &RgbImage) -> i32 {
    let want = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    assert_eq!(want.dimensions(), got.dimensions(), "{}", path.display());
    want.as_raw()
        .iter()
        .zip(got.as_raw())
        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
        .max()
        .unwrap_or(0)
}

pub fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format)
        .expect("encoding a test image");
    out.into_inner()
}

/// What the server answers on a path.
#[derive(Clone)]
pub enum Route {
    Ok {
        content_type: &'static str,
        body: Vec<u8>,
    },
    Status(u16),
    Redirect(String),
    /// Waits this long before answering (a slow host).
    Stall(Duration),
}

/// A real HTTP server on 127.0.0.1 serving fixed routes, in background threads.
pub struct ImageServer {
    pub origin: String,
    hits: Arc<Mutex<Vec<String>>>,
    server: Arc<tiny_http::Server>,
}

/// A tiny_http server on a free loopback port whose connections have Nagle's
/// algorithm off (TCP_NODELAY, set on the listener: Linux's accepted sockets inherit
/// it). tiny_http writes a response's head and body separately; with Nagle on, the
/// body's last segment could wait about 40 ms for the client's delayed ACK, which
/// made a few requests in ten take 40 ms longer, whichever way they were sent.
pub fn loopback_server() -> tiny_http::Server {
    use std::os::fd::AsRawFd as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setting TCP_NODELAY: {}",
        std::io::Error::last_os_error()
    );
    tiny_http::Server::from_listener(listener, None).expect("serving on a loopback port")
}

/// Answers `req` with one write of the whole response. tiny_http's own `respond`
/// copies a body to the socket 8 KiB at a time, each its own segment with Nagle
/// off; servers in front of real images (and the inference server, through hyper)
/// write large buffers, so a reader sees few large reads rather than hundreds of
/// small ones.
pub fn respond_at_once(
    req: tiny_http::Request,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    let mut writer = req.into_writer();
    writer.write_all(&out)?;
    writer.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        _ => "Status",
    }
}

/// A host whose every download breaks off: it promises twice `body`'s length,
/// sends `body`, and closes the connection. Returns its origin; it serves until the
/// test process ends.
pub fn start_broken_host(content_type: &'static str, body: Vec<u8>) -> String {
    use std::io::{BufRead as _, BufReader, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let origin = format!("http://{}", listener.local_addr().expect("an address"));
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            // The request's head, to its blank line.
            let mut reader = BufReader::new(conn.try_clone().expect("a second handle"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                2 * body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
            // Dropped: the connection closes short of its promise.
        }
    });
    origin
}

impl ImageServer {
    pub fn start(routes: HashMap<String, Route>) -> ImageServer {
        let server = Arc::new(loopback_server());
        let origin = format!(
            "http://{}",
            server.server_addr().to_ip().expect("an IP address")
        );
        let hits = Arc::new(Mutex::new(Vec::new()));
        let routes = Arc::new(routes);
        for _ in 0..4 {
            let (server, hits, routes) = (server.clone(), hits.clone(), routes.clone());
            thread::spawn(move || {
                for req in server.incoming_requests() {
                    hits.lock().unwrap().push(req.url().to_string());
                    let _ = match routes.get(req.url()).cloned() {
                        Some(Route::Ok { content_type, body }) => {
                            respond_at_once(req, 200, &[("Content-Type", content_type)], &body)
                        }
                        Some(Route::Status(code)) => req.respond(tiny_http::Response::empty(code)),
                        Some(Route::Redirect(to)) => {
                            let header =
                                tiny_http::Header::from_bytes("Location", to.as_bytes()).unwrap();
                            req.respond(tiny_http::Response::empty(302).with_header(header))
                        }
                        Some(Route::Stall(d)) => {
                            thread::sleep(d);
                            req.respond(tiny_http::Response::empty(200))
                        }
                        None => req.respond(tiny_http::Response::empty(404)),
                    };
                }
            });
        }
        ImageServer {
            origin,
            hits,
            server,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }

    /// The paths requested so far.
    pub fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        self.server.unblock();
    }
}
