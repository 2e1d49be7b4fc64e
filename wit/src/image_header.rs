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

/// A WebP's frames as their own bitstreams size them, each within the pixel cap and
/// its canvas. The decoder reports the canvas (VP8X) size but allocates for each
/// frame's own, and it ignores `max_alloc`: a 64x64 canvas around a 12000x12000
/// frame would otherwise be decoded (hundreds of MB) before anything refused it.
/// Checked before the decoder is made, which may already allocate for them.
fn check_webp_frames(bytes: &[u8], max_pixels: u64) -> Result<(), HeaderError> {
    let mut frames = Vec::new();
    let mut canvas = None;
    webp_frames(
        bytes.get(12..).unwrap_or_default(),
        &mut frames,
        &mut canvas,
        0,
    );
    // Without a VP8X chunk, the one frame is the canvas.
    let canvas = canvas.unwrap_or((u32::MAX, u32::MAX));
    for (width, height) in std::iter::once(canvas)
        .filter(|c| c.0 != u32::MAX)
        .chain(frames)
    {
        if u64::from(width) * u64::from(height) > max_pixels {
            return Err(HeaderError::TooManyPixels {
                width,
                height,
                max: max_pixels,
            });
        }
        if width > canvas.0 || height > canvas.1 {
            return Err(HeaderError::Broken(
                ImageFormat::WebP,
                image::ImageError::Decoding(image::error::DecodingError::new(
                    ImageFormat::WebP.into(),
                    format!(
                        "a {width}x{height} frame on a {}x{} canvas",
                        canvas.0, canvas.1
                    ),
                )),
            ));
        }
    }
    Ok(())
}

/// The sizes in the VP8 and VP8L bitstreams (and animation frames) of a list of
/// RIFF chunks. Written here because the image crate exposes only the canvas size.
fn webp_frames(
    mut chunks: &[u8],
    frames: &mut Vec<(u32, u32)>,
    canvas: &mut Option<(u32, u32)>,
    depth: u8,
) {
    let u16le = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u24le = |b: &[u8], i: usize| {
        b.get(i..i + 3)
            .map(|s| u32::from(s[0]) | u32::from(s[1]) << 8 | u32::from(s[2]) << 16)
    };
    while chunks.len() >= 8 {
        let (fourcc, size) = (
            &chunks[..4],
            u32::from_le_bytes([chunks[4], chunks[5], chunks[6], chunks[7]]) as usize,
        );
        let payload = &chunks[8..chunks.len().min(8usize.saturating_add(size))];
        match fourcc {
            b"VP8 " if payload.get(3..6) == Some(&[0x9d, 0x01, 0x2a][..]) => {
                if let (Some(w), Some(h)) = (u16le(payload, 6), u16le(payload, 8)) {
                    frames.push((u32::from(w & 0x3fff), u32::from(h & 0x3fff)));
                }
            }
            b"VP8L" if payload.first() == Some(&0x2f) && payload.len() >= 5 => {
                let bits = u32::from_le_bytes([payload[1], payload[2], payload[3], payload[4]]);
                frames.push(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1));
            }
            b"VP8X" if depth == 0 => {
                if let (Some(w), Some(h)) = (u24le(payload, 4), u24le(payload, 7)) {
                    *canvas = Some((w + 1, h + 1));
                }
            }
            b"ANMF" if depth == 0 => {
                if let (Some(w), Some(h)) = (u24le(payload, 6), u24le(payload, 9)) {
                    frames.push((w + 1, h + 1));
                }
                webp_frames(
                    payload.get(16..).unwrap_or_default(),
                    frames,
                    canvas,
                    depth + 1,
                );
            }
            _ => {}
        }
        // Chunks are padded to an even size.
        let step = 8usize.saturating_add(size).saturating_add(size & 1);
        chunks = chunks.get(step..).unwrap_or_default();
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
    if format == ImageFormat::WebP {
        check_webp_frames(bytes, max_pixels)?;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An 8x8 lossless WebP's VP8L chunk (header and payload).
    fn vp8l_chunk() -> Vec<u8> {
        let pixels = vec![120u8; 8 * 8 * 3];
        let mut webp = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
            .encode(&pixels, 8, 8, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert_eq!(&webp[12..16], b"VP8L");
        webp[12..].to_vec()
    }

    /// A WebP with a VP8X canvas of `canvas` around `frame`, whose VP8L header
    /// claims `claimed` as its size.
    fn webp(canvas: (u32, u32), claimed: (u32, u32)) -> Vec<u8> {
        let mut frame = vp8l_chunk();
        let bits = (claimed.0 - 1) | (claimed.1 - 1) << 14;
        let old = u32::from_le_bytes([frame[9], frame[10], frame[11], frame[12]]);
        frame[9..13].copy_from_slice(&((old & !0x0fff_ffff) | bits).to_le_bytes());
        let mut vp8x = b"VP8X".to_vec();
        vp8x.extend_from_slice(&10u32.to_le_bytes());
        vp8x.extend_from_slice(&[0, 0, 0, 0]);
        vp8x.extend_from_slice(&(canvas.0 - 1).to_le_bytes()[..3]);
        vp8x.extend_from_slice(&(canvas.1 - 1).to_le_bytes()[..3]);
        let mut out = b"RIFF".to_vec();
        out.extend_from_slice(&((4 + vp8x.len() + frame.len()) as u32).to_le_bytes());
        out.extend_from_slice(b"WEBP");
        out.extend(vp8x);
        out.extend(frame);
        out
    }

    #[test]
    fn webp_frames_are_held_to_the_cap_and_their_canvas() {
        let fine = webp((8, 8), (8, 8));
        let ok = read_header(&fine, 1_000_000).unwrap();
        assert_eq!((ok.width, ok.height), (8, 8));
        // The frame, not the canvas, is what the decoder would allocate for.
        match read_header(&webp((64, 64), (12000, 12000)), 16_000_000) {
            Err(HeaderError::TooManyPixels { width, height, .. }) => {
                assert_eq!((width, height), (12000, 12000))
            }
            Err(e) => panic!("{e}"),
            Ok(h) => panic!("accepted {}x{}", h.width, h.height),
        }
        match read_header(&webp((8, 8), (16, 16)), 1_000_000) {
            Err(e @ HeaderError::Broken(..)) => {
                assert!(e.to_string().contains("16x16 frame on a 8x8 canvas"), "{e}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted"),
        }
    }
}
