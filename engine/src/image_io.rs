//! Conversions between images and tensors, as diffusers' `VaeImageProcessor` does them.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, RgbImage, imageops::FilterType};

/// `VaeImageProcessor.preprocess` for one image: RGB, resized to `width`x`height` with
/// Lanczos3 when its size differs, `x / 255 * 2 - 1`, shape `(1, 3, h, w)`.
pub fn image_to_tensor(
    img: &DynamicImage,
    width: usize,
    height: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    pixels(img, width, height, device, dtype, true)
}

/// The same without the normalization (`do_normalize=False`, the ControlNet pipelines'
/// control image processor): `x / 255`, in [0, 1].
pub fn image_to_tensor_01(
    img: &DynamicImage,
    width: usize,
    height: usize,
    device: &Device,
    dtype: DType,
) -> Result<Tensor> {
    pixels(img, width, height, device, dtype, false)
}

fn pixels(
    img: &DynamicImage,
    width: usize,
    height: usize,
    device: &Device,
    dtype: DType,
    normalize: bool,
) -> Result<Tensor> {
    let rgb = img.to_rgb8();
    let rgb = if rgb.width() as usize != width || rgb.height() as usize != height {
        image::imageops::resize(&rgb, width as u32, height as u32, FilterType::Lanczos3)
    } else {
        rgb
    };
    let (w, h) = (width, height);
    let mut data = vec![0f32; 3 * h * w];
    for (x, y, p) in rgb.enumerate_pixels() {
        let (x, y) = (x as usize, y as usize);
        for c in 0..3 {
            let v = p.0[c] as f32 / 255.0;
            data[c * h * w + y * w + x] = if normalize { 2.0 * v - 1.0 } else { v };
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, h, w), device)?.to_dtype(dtype)?)
}

/// `VaeImageProcessor.postprocess(output_type="pil")`: `(x / 2 + 0.5).clamp(0, 1)`, then
/// `(x * 255).round()` (half to even, as numpy) to u8. `x` is `(b, 3, h, w)`.
pub fn tensor_to_images(x: &Tensor) -> Result<Vec<RgbImage>> {
    let x = x.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
    let (b, c, h, w) = x.dims4()?;
    anyhow::ensure!(c == 3, "decoded image has {c} channels, expected 3");
    let data = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let base = i * 3 * h * w;
        let mut img = RgbImage::new(w as u32, h as u32);
        for (xx, yy, p) in img.enumerate_pixels_mut() {
            let (xx, yy) = (xx as usize, yy as usize);
            for ch in 0..3 {
                let v = data[base + ch * h * w + yy * w + xx];
                let v = (v / 2.0 + 0.5).clamp(0.0, 1.0);
                p.0[ch] = (v * 255.0).round_ties_even() as u8;
            }
        }
        out.push(img);
    }
    Ok(out)
}
