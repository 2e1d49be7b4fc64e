//! Input images, however they arrived (URL, base64, upload): recognised by content and
//! size-checked from the header, without decoding a pixel, then forwarded as the
//! client sent them. The inference server decodes them once (EXIF orientation,
//! transparency, fitting to the size: contract::init_image, wit/src/init_image.rs); what the
//! edge needs of the image is its upright size, for the dialects' size rules.

use base64::Engine as _;
use contract::image_header::{HeaderError, read_header};

use crate::api_error::{ApiError, human_bytes};

/// Caps on what the edge will take as an input image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ImageLimits {
    /// Encoded size, enforced while reading (10 MiB by default).
    pub max_bytes: usize,
    /// Width x height, checked from the header before decoding (16 megapixels).
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_bytes: 10 * 1024 * 1024,
            max_pixels: contract::limits::MAX_INIT_PIXELS,
        }
    }
}

/// Where a failure in here came from shapes the message: bytes the client sent, or
/// what the URL it gave served. Either way it is a 400 naming the field: the client
/// chose the image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Provenance {
    ClientBytes,
    FetchedUrl,
}

impl Provenance {
    fn not_an_image(self, field: &str, detail: impl std::fmt::Display) -> ApiError {
        match self {
            Provenance::ClientBytes => ApiError::field(field, detail),
            Provenance::FetchedUrl => ApiError::field(field, format!("the URL served {detail}")),
        }
    }
}

/// Checks an encoded image within `limits` from its header alone and returns its
/// upright size (width and height swapped when its EXIF orientation turns it).
pub fn inspect(
    bytes: &[u8],
    limits: ImageLimits,
    field: &str,
    from: Provenance,
) -> Result<(u32, u32), ApiError> {
    if bytes.len() > limits.max_bytes {
        return Err(ApiError::field(
            field,
            format!("larger than the {} limit", human_bytes(limits.max_bytes)),
        ));
    }
    match read_header(bytes, limits.max_pixels) {
        Ok(header) => Ok(header.upright_size()),
        // Its size is the client's choice of image, whoever served it.
        Err(e @ HeaderError::TooManyPixels { .. }) => Err(ApiError::field(field, e)),
        Err(HeaderError::NotAnImage) => {
            Err(from.not_an_image(field, "something that is not a PNG, JPEG or WebP image"))
        }
        Err(e) => Err(from.not_an_image(field, e)),
    }
}

/// Decodes a base64 image field, with or without a `data:image/...;base64,` prefix.
pub fn decode_base64(text: &str, limits: ImageLimits, field: &str) -> Result<Vec<u8>, ApiError> {
    let payload = match text.split_once(',') {
        Some((head, rest)) if head.starts_with("data:") && head.ends_with(";base64") => rest,
        _ => text,
    };
    let payload: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    // Refuse oversized input before allocating its decoded form.
    if payload.len() / 4 * 3 > limits.max_bytes + 3 {
        return Err(ApiError::field(
            field,
            format!("larger than the {} limit", human_bytes(limits.max_bytes)),
        ));
    }
    base64::engine::general_purpose::STANDARD
        .decode(payload.trim_end_matches('=').as_bytes())
        .or_else(|_| {
            base64::engine::general_purpose::STANDARD_NO_PAD.decode(payload.trim_end_matches('='))
        })
        .map_err(|e| ApiError::field(field, format!("not valid base64 ({e})")))
}

/// Size in bytes of the data a standard padded base64 string encodes.
pub fn base64_decoded_len(b64: &str) -> usize {
    let padding = b64.bytes().rev().take_while(|&b| b == b'=').count();
    (b64.len() / 4 * 3).saturating_sub(padding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
    use std::io::Cursor;

    fn encoded(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn png_of(img: &DynamicImage) -> Vec<u8> {
        encoded(img, ImageFormat::Png)
    }

    #[test]
    fn png_jpeg_and_webp_are_recognised_by_content_and_measured() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 4, Rgb([200, 10, 10])));
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let got = inspect(
                &encoded(&img, format),
                ImageLimits::default(),
                "f",
                Provenance::ClientBytes,
            )
            .unwrap();
            assert_eq!(got, (8, 4), "{format:?}");
        }
    }

    #[test]
    fn exif_rotation_turns_the_size() {
        // A JPEG 8 wide, 4 high, whose EXIF says "rotate 90": upright it is 4 x 8.
        let jpeg = encoded(
            &DynamicImage::ImageRgb8(RgbImage::new(8, 4)),
            ImageFormat::Jpeg,
        );
        // APP1 Exif, big-endian TIFF, one IFD entry: Orientation (0x0112) = 6.
        let tiff: &[u8] = &[
            b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0,
            0,
        ];
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(tiff);
        let len = (app1.len() + 2) as u16;
        let mut with_exif = jpeg[..2].to_vec(); // SOI
        with_exif.extend_from_slice(&[0xFF, 0xE1]);
        with_exif.extend_from_slice(&len.to_be_bytes());
        with_exif.extend_from_slice(&app1);
        with_exif.extend_from_slice(&jpeg[2..]);
        let got = inspect(
            &with_exif,
            ImageLimits::default(),
            "f",
            Provenance::ClientBytes,
        )
        .unwrap();
        assert_eq!(got, (4, 8));
    }

    #[test]
    fn non_images_are_refused_with_provenance() {
        let e = inspect(
            b"<html>nope</html>",
            ImageLimits::default(),
            "inputImage",
            Provenance::FetchedUrl,
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(
            e.message
                .contains("inputImage: the URL served something that is not a PNG"),
            "{}",
            e.message
        );
        let e = inspect(
            b"GIF89a......",
            ImageLimits::default(),
            "image",
            Provenance::ClientBytes,
        )
        .unwrap_err();
        assert!(e.message.contains("Gif"), "{}", e.message);
        let mut truncated = png_of(&DynamicImage::ImageRgb8(RgbImage::new(64, 64)));
        truncated.truncate(20);
        let e = inspect(
            &truncated,
            ImageLimits::default(),
            "image",
            Provenance::ClientBytes,
        )
        .unwrap_err();
        assert!(e.message.contains("broken Png"), "{}", e.message);
    }

    #[test]
    fn caps_bytes_and_pixels_from_the_header() {
        let png = png_of(&DynamicImage::ImageRgb8(RgbImage::new(100, 100)));
        let small = ImageLimits {
            max_bytes: 10,
            max_pixels: 16_000_000,
        };
        assert!(
            inspect(&png, small, "f", Provenance::ClientBytes)
                .unwrap_err()
                .message
                .contains("larger than")
        );
        let few = ImageLimits {
            max_bytes: 1 << 20,
            max_pixels: 9_999,
        };
        let e = inspect(&png, few, "f", Provenance::ClientBytes).unwrap_err();
        assert!(
            e.message.contains("100x100 is 0.0 megapixels"),
            "{}",
            e.message
        );
    }

    #[test]
    fn base64_fields() {
        let limits = ImageLimits::default();
        assert_eq!(decode_base64("aGVsbG8=", limits, "f").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8", limits, "f").unwrap(), b"hello");
        assert_eq!(
            decode_base64("data:image/png;base64,aGVs\nbG8=", limits, "f").unwrap(),
            b"hello"
        );
        let e = decode_base64("not base64!", limits, "init_image").unwrap_err();
        assert!(
            e.message.starts_with("init_image: not valid base64"),
            "{}",
            e.message
        );
        let tiny = ImageLimits {
            max_bytes: 2,
            max_pixels: 1,
        };
        assert!(
            decode_base64("aGVsbG8=", tiny, "f")
                .unwrap_err()
                .message
                .contains("larger than")
        );
        assert_eq!(base64_decoded_len("aGVsbG8="), 5);
        assert_eq!(base64_decoded_len("aGVsbG8h"), 6);
    }
}
