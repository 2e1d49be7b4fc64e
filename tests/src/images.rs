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

impl ImageServer {
    pub fn start(routes: HashMap<String, Route>) -> ImageServer {
        let server =
            Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("binding the image server"));
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
                            let header =
                                tiny_http::Header::from_bytes("Content-Type", content_type)
                                    .unwrap();
                            req.respond(tiny_http::Response::from_data(body).with_header(header))
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
