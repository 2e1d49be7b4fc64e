//! What an `image-base64` may hold (PNG, JPEG or WebP bytes), checked from the image's
//! header alone: the format by content, the size within a pixel cap, the EXIF
//! orientation. The edge stops there and forwards the bytes; the inference server
//! goes on to decode them with the decoder this returns. Both sides word their own
//! messages around [`HeaderError`].

use std::fmt;
use std::io::Cursor;

use image::metadata::Orientation;
use image::{ImageDecoder, ImageFormat, ImageReader};

/// An image whose header passed, with the decoder positioned to read its pixels.
pub struct Header<'a> {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    pub orientation: Orientation,
    pub decoder: Box<dyn ImageDecoder + 'a>,
}

impl Header<'_> {
    /// Width and height once the EXIF orientation is applied.
    pub fn upright_size(&self) -> (u32, u32) {
        match self.orientation {
            Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH => (self.height, self.width),
            _ => (self.width, self.height),
        }
    }
}

/// Why bytes are not an acceptable image.
#[derive(Debug)]
pub enum HeaderError {
    /// Not PNG, JPEG or WebP by content, nor any format the decoder knows.
    NotAnImage,
    /// Another image format.
    Unsupported(ImageFormat),
    /// The format's header (or EXIF) cannot be read.
    Broken(ImageFormat, image::ImageError),
    TooManyPixels {
        width: u32,
        height: u32,
        max: u64,
    },
    Empty,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::NotAnImage => write!(f, "not a PNG, JPEG or WebP image"),
            HeaderError::Unsupported(format) => {
                write!(f, "a {format:?} image; PNG, JPEG and WebP are accepted")
            }
            HeaderError::Broken(format, e) => write!(f, "a broken {format:?} image ({e})"),
            HeaderError::TooManyPixels { width, height, max } => write!(
                f,
                "{width}x{height} is {:.1} megapixels; at most {:.1} are accepted",
                (u64::from(*width) * u64::from(*height)) as f64 / 1e6,
                *max as f64 / 1e6
            ),
            HeaderError::Empty => write!(f, "an empty (0-pixel) image"),
        }
    }
}

/// Reads the header of `bytes`, which may hold at most `max_pixels` pixels. The
/// decoder allocates no more than that allows either (RGBA8, plus slack for its
/// buffers).
pub fn read_header(bytes: &[u8], max_pixels: u64) -> Result<Header<'_>, HeaderError> {
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => f,
        Ok(other) => return Err(HeaderError::Unsupported(other)),
        Err(_) => return Err(HeaderError::NotAnImage),
    };
    let broken = |e| HeaderError::Broken(format, e);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut caps = image::Limits::default();
    caps.max_alloc = Some(max_pixels.saturating_mul(4).saturating_add(64 << 20));
    reader.limits(caps);
    let mut decoder = reader.into_decoder().map_err(broken)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(HeaderError::TooManyPixels {
            width,
            height,
            max: max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(HeaderError::Empty);
    }
    let orientation = decoder.orientation().map_err(broken)?;
    Ok(Header {
        format,
        width,
        height,
        orientation,
        decoder: Box::new(decoder),
    })
}
