//! The init image, decoded once, here: the edge checks what it can from the header
//! and forwards the bytes the client sent (PNG, JPEG or WebP). Recognised by content,
//! size-checked from the header before any pixel is decoded, turned upright by its
//! EXIF orientation, transparency flattened onto white, and fitted to the requested
//! size: scaled to cover it and the overflow cropped evenly, so nothing is stretched.

use crate::Error;
use crate::image_header::{HeaderError, read_header};
use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, RgbImage};

/// The field [`decode`]'s messages name.
const FIELD: &str = "init_image.image";

/// Decodes `bytes` into upright RGB of at most `max_pixels`.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, Error> {
    decode_field(bytes, max_pixels, FIELD)
}

/// As [`decode`], for an image in another field (a mask, a control image), which
/// refusals name.
pub fn decode_field(bytes: &[u8], max_pixels: u64, field: &str) -> Result<RgbImage, Error> {
    let invalid =
        |detail: &dyn std::fmt::Display| Error::InvalidRequest(format!("{field}: {detail}"));
    let header = read_header(bytes, max_pixels).map_err(|e| invalid(&e))?;
    let (format, orientation) = (header.format, header.orientation);
    let mut img = DynamicImage::from_decoder(header.decoder)
        .map_err(|e| invalid(&HeaderError::Broken(format, e)))?;
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

/// Fits `img` to exactly `width` x `height`: the largest centred crop with the
/// target's aspect ratio, resized with Lanczos3 (SIMD, fast_image_resize).
pub fn fit(img: RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (width, height) {
        return img;
    }
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
    let src = Image::from_vec_u8(w, h, img.into_raw(), PixelType::U8x3)
        .expect("an RgbImage's buffer is w x h x 3 bytes");
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .crop(
            f64::from((w - cw) / 2),
            f64::from((h - ch) / 2),
            f64::from(cw),
            f64::from(ch),
        );
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .expect("source and destination are both U8x3");
    RgbImage::from_raw(width, height, dst.into_vec()).expect("width x height x 3 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageFormat, Rgb, Rgba, RgbaImage};
    use std::io::Cursor;

    fn encoded(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn message(e: Error) -> String {
        match e {
            Error::InvalidRequest(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decodes_png_jpeg_and_webp_by_content() {
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(8, 4, Rgb([200, 10, 10])));
        for format in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
            let got = decode(&encoded(&img, format), 1 << 20).unwrap();
            assert_eq!(got.dimensions(), (8, 4), "{format:?}");
        }
    }

    #[test]
    fn refusals_name_the_field_and_say_why() {
        let m = message(decode(b"<html>nope</html>", 1 << 20).unwrap_err());
        assert_eq!(m, "init_image.image: not a PNG, JPEG or WebP image");
        assert!(message(decode(b"GIF89a......", 1 << 20).unwrap_err()).contains("Gif"));
        let png = encoded(
            &DynamicImage::ImageRgb8(RgbImage::new(100, 100)),
            ImageFormat::Png,
        );
        let m = message(decode(&png[..60], 1 << 20).unwrap_err());
        assert!(m.contains("a broken Png image"), "{m}");
        let m = message(decode(&png, 9_999).unwrap_err());
        assert!(m.contains("100x100 is 0.0 megapixels"), "{m}");
    }

    #[test]
    fn alpha_is_flattened_onto_white() {
        let mut rgba = RgbaImage::from_pixel(2, 1, Rgba([0, 0, 0, 0]));
        rgba.put_pixel(1, 0, Rgba([255, 0, 0, 255]));
        let got = decode(
            &encoded(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
            1 << 20,
        )
        .unwrap();
        assert_eq!(got.get_pixel(0, 0), &Rgb([255, 255, 255]));
        assert_eq!(got.get_pixel(1, 0), &Rgb([255, 0, 0]));
    }

    #[test]
    fn fit_crops_to_aspect_then_resizes() {
        // A wide image, left half red, right half blue.
        let img = RgbImage::from_fn(300, 100, |x, _| {
            if x < 150 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let out = fit(img.clone(), 64, 64);
        assert_eq!(out.dimensions(), (64, 64));
        // The centre square (x 100..200) keeps both colours, unstretched.
        assert!(out.get_pixel(5, 32)[0] > 200 && out.get_pixel(58, 32)[2] > 200);
        assert_eq!(fit(img.clone(), 300, 100), img);
        // A flat colour stays that colour (the filter's weights sum to one).
        let grey = RgbImage::from_pixel(640, 480, Rgb([90, 140, 200]));
        let out = fit(grey, 512, 512);
        assert!(out.pixels().all(|p| *p == Rgb([90, 140, 200])));
    }
}
