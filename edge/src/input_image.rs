//! Input images, however they arrived (URL, base64, upload): recognised by content,
//! size-checked from the header before any pixel is decoded, turned upright by
//! their EXIF orientation, flattened onto white, fitted to the requested size and
//! re-encoded as PNG for the inference server.

use std::io::Cursor;

use base64::Engine as _;
use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::imageops::{self, FilterType};
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageFormat, ImageReader, RgbImage};

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
            max_pixels: 16_000_000,
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

/// Decodes an encoded image into upright RGB, within `limits`.
pub fn decode(
    bytes: &[u8],
    limits: ImageLimits,
    field: &str,
    from: Provenance,
) -> Result<RgbImage, ApiError> {
    if bytes.len() > limits.max_bytes {
        return Err(ApiError::field(
            field,
            format!("larger than the {} limit", human_bytes(limits.max_bytes)),
        ));
    }
    let format = match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => f,
        Ok(other) => {
            return Err(from.not_an_image(
                field,
                format!("a {other:?} image; PNG, JPEG and WebP are accepted"),
            ));
        }
        Err(_) => {
            return Err(from.not_an_image(field, "something that is not a PNG, JPEG or WebP image"));
        }
    };
    let broken =
        |e: image::ImageError| from.not_an_image(field, format!("a broken {format:?} image ({e})"));

    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut caps = image::Limits::default();
    // Belt and braces behind the header check below: the decoder itself refuses to
    // allocate more than the pixel cap allows (RGBA8, plus slack for its buffers).
    caps.max_alloc = Some(limits.max_pixels.saturating_mul(4).saturating_add(64 << 20));
    reader.limits(caps);
    let mut decoder = reader.into_decoder().map_err(broken)?;
    let (w, h) = decoder.dimensions();
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_pixels {
        return Err(ApiError::field(
            field,
            format!(
                "{w}x{h} is {:.1} megapixels; at most {:.1} are accepted",
                pixels as f64 / 1e6,
                limits.max_pixels as f64 / 1e6
            ),
        ));
    }
    if pixels == 0 {
        return Err(from.not_an_image(field, "an empty (0-pixel) image"));
    }
    let orientation = decoder.orientation().map_err(broken)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(broken)?;
    img.apply_orientation(orientation);
    Ok(flatten_onto_white(img))
}

/// Transparent pixels become white, as they look on a page, rather than whatever
/// colour happens to sit under alpha 0 (often black).
fn flatten_onto_white(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(src[3]);
        for c in 0..3 {
            dst[c] = ((u32::from(src[c]) * a + 255 * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}

/// Fits `img` to exactly `width` x `height`: scaled to cover the target, the
/// overflow cropped evenly from both sides, so nothing is stretched.
pub fn fit(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (width, height) {
        return img.clone();
    }
    // The largest centred crop with the target's aspect ratio.
    let (cw, ch) = if u64::from(w) * u64::from(height) > u64::from(h) * u64::from(width) {
        (
            ((u64::from(h) * u64::from(width)) / u64::from(height)).max(1) as u32,
            h,
        )
    } else {
        (
            w,
            ((u64::from(w) * u64::from(height)) / u64::from(width)).max(1) as u32,
        )
    };
    let cropped = imageops::crop_imm(img, (w - cw) / 2, (h - ch) / 2, cw, ch).to_image();
    imageops::resize(&cropped, width, height, FilterType::Lanczos3)
}

/// PNG bytes of `img`; fast compression, since these travel over a LAN once.
pub fn encode_png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::with_capacity(img.as_raw().len() / 2);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, PngFilter::Adaptive)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .expect("encoding PNG into memory cannot fail");
    out
}

/// A decoded image fitted to `width` x `height`, as the contract's init image.
pub fn init_image(
    img: &RgbImage,
    (width, height): (u32, u32),
    strength: f32,
) -> contract::InitImage {
    let img = fit(img, width, height);
    contract::InitImage {
        image: base64::engine::general_purpose::STANDARD.encode(encode_png(&img)),
        strength,
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
    use image::{GenericImageView, Rgb, Rgba, RgbaImage};

    fn png_of(img: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn decodes_png_jpeg_and_webp_by_content() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 4, Rgb([200, 10, 10])));
        for fmt in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let mut out = Cursor::new(Vec::new());
            img.write_to(&mut out, fmt).unwrap();
            let got = decode(
                &out.into_inner(),
                ImageLimits::default(),
                "f",
                Provenance::ClientBytes,
            )
            .unwrap();
            assert_eq!(got.dimensions(), (8, 4), "{fmt:?}");
        }
    }

    #[test]
    fn non_images_are_refused_with_provenance() {
        let e = decode(
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
        let e = decode(
            b"GIF89a......",
            ImageLimits::default(),
            "image",
            Provenance::ClientBytes,
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("Gif"), "{}", e.message);
        let mut truncated = png_of(&DynamicImage::ImageRgb8(RgbImage::new(64, 64)));
        truncated.truncate(60);
        let e = decode(
            &truncated,
            ImageLimits::default(),
            "image",
            Provenance::ClientBytes,
        )
        .unwrap_err();
        assert!(e.message.contains("broken Png"), "{}", e.message);
    }

    #[test]
    fn caps_bytes_and_pixels_before_decoding() {
        let png = png_of(&DynamicImage::ImageRgb8(RgbImage::new(100, 100)));
        let small = ImageLimits {
            max_bytes: 10,
            max_pixels: 16_000_000,
        };
        assert!(
            decode(&png, small, "f", Provenance::ClientBytes)
                .unwrap_err()
                .message
                .contains("larger than")
        );
        let few = ImageLimits {
            max_bytes: 1 << 20,
            max_pixels: 9_999,
        };
        let e = decode(&png, few, "f", Provenance::ClientBytes).unwrap_err();
        assert!(
            e.message.contains("100x100 is 0.0 megapixels"),
            "{}",
            e.message
        );
    }

    #[test]
    fn alpha_is_flattened_onto_white() {
        let mut rgba = RgbaImage::from_pixel(2, 1, Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, Rgba([255, 0, 0, 255]));
        let got = decode(
            &png_of(&DynamicImage::ImageRgba8(rgba)),
            ImageLimits::default(),
            "f",
            Provenance::ClientBytes,
        )
        .unwrap();
        assert_eq!(got.get_pixel(0, 0), &Rgb([255, 255, 255]));
        assert_eq!(got.get_pixel(1, 0), &Rgb([255, 0, 0]));
    }

    #[test]
    fn fit_crops_to_aspect_then_resizes() {
        // A wide image, left half red, right half blue, middle strip green.
        let mut img = RgbImage::from_pixel(300, 100, Rgb([255, 0, 0]));
        for x in 150..300 {
            for y in 0..100 {
                img.put_pixel(x, y, Rgb([0, 0, 255]));
            }
        }
        let out = fit(&img, 64, 64);
        assert_eq!(out.dimensions(), (64, 64));
        // The centre square (x 100..200) keeps both colours, unstretched.
        assert!(out.get_pixel(5, 32)[0] > 200 && out.get_pixel(58, 32)[2] > 200);
        assert_eq!(fit(&img, 300, 100), img);
    }

    #[test]
    fn png_round_trip() {
        let img = RgbImage::from_fn(16, 8, |x, y| Rgb([x as u8 * 10, y as u8 * 20, 7]));
        let back = image::load_from_memory(&encode_png(&img))
            .unwrap()
            .into_rgb8();
        assert_eq!(back, img);
    }

    #[test]
    fn init_images_are_fitted_png_base64() {
        let jpeg = {
            let mut out = Cursor::new(Vec::new());
            DynamicImage::ImageRgb8(RgbImage::new(40, 30))
                .write_to(&mut out, ImageFormat::Jpeg)
                .unwrap();
            out.into_inner()
        };
        let img = decode(&jpeg, ImageLimits::default(), "f", Provenance::ClientBytes).unwrap();
        let init = init_image(&img, (16, 24), 0.5);
        assert_eq!(init.strength, 0.5);
        let png = base64::engine::general_purpose::STANDARD
            .decode(init.image)
            .unwrap();
        assert_eq!(image::guess_format(&png).unwrap(), ImageFormat::Png);
        assert_eq!(
            image::load_from_memory(&png).unwrap().dimensions(),
            (16, 24)
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
