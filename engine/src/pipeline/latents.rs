//! Latents: the initial ones (noise for text-to-image; the VAE-encoded init image,
//! sampled and noised, for image-to-image), and the VAE's latent scaling both ways.

use anyhow::Result;
use candle_core::Tensor;

use super::Pipeline;
use crate::GenerateParams;
use crate::image_io::image_to_tensor;
use crate::noise::NoiseSource;
use crate::scheduler::{self, Scheduler, mul_scalar};

impl Pipeline {
    /// The latents the denoising loop starts from; `begin` is the index of the first
    /// timestep that runs (img2img noises the image to that timestep).
    pub(super) fn initial_latents(
        &self,
        params: &GenerateParams,
        sched: &dyn Scheduler,
        begin: usize,
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let (w, h) = (params.width, params.height);
        let f = self.vae_scale_factor();
        // The UNet's output is the latents (an inpainting UNet takes more in).
        let latent_shape = [self.unet.config.out_channels, h / f, w / f];
        Ok(match &params.init_image {
            None => {
                let x = noise.randn(&latent_shape)?.to_dtype(self.dtype)?;
                mul_scalar(&x, sched.init_noise_sigma() as f32)?
            }
            Some((_, strength)) if params.mask.is_some() && *strength >= 1.0 => {
                // StableDiffusionInpaintPipeline at full strength: pure noise.
                let x = noise.randn(&latent_shape)?.to_dtype(self.dtype)?;
                mul_scalar(&x, sched.init_noise_sigma() as f32)?
            }
            Some((img, _)) if params.mask.is_some() => {
                // StableDiffusionInpaintPipeline: its one image's posterior sample from the
                // first generator (for every image), then each image's noise.
                let pixels = image_to_tensor(img, w, h, &self.device, self.dtype)?;
                let init = self.encode_with_first(&pixels, &latent_shape, noise)?;
                let init = init.repeat((noise.len(), 1, 1, 1))?;
                let eps = noise.randn(&latent_shape)?.to_dtype(self.dtype)?;
                sched.add_noise(&init, &eps, begin)?
            }
            Some((img, _)) => {
                // StableDiffusion(XL)Img2ImgPipeline: the posterior sample, then the noise,
                // both from the image's generator.
                let pixels = image_to_tensor(img, w, h, &self.device, self.dtype)?;
                let dist = self.vae.encode(&pixels)?;
                let (mean, std) = (
                    dist.mean.to_dtype(self.dtype)?,
                    dist.std.to_dtype(self.dtype)?,
                );
                let sample_noise = noise.randn(&latent_shape)?.to_dtype(self.dtype)?;
                let sample = mean.broadcast_add(&std.broadcast_mul(&sample_noise)?)?;
                let init = self.scale_latents(&sample)?;
                let eps = noise.randn(&latent_shape)?.to_dtype(self.dtype)?;
                sched.add_noise(&init, &eps, begin)?
            }
        })
    }

    /// The scaled posterior sample of `pixels` (one image) drawn from the first generator.
    fn encode_with_first(
        &self,
        pixels: &Tensor,
        latent_shape: &[usize],
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let dist = self.vae.encode(pixels)?;
        let (mean, std) = (
            dist.mean.to_dtype(self.dtype)?,
            dist.std.to_dtype(self.dtype)?,
        );
        let eps = noise.randn_first(latent_shape)?.to_dtype(self.dtype)?;
        self.scale_latents(&mean.broadcast_add(&std.broadcast_mul(&eps)?)?)
    }

    /// Inpainting's extra UNet input for the `noise.len()` images of a request, as
    /// StableDiffusionInpaintPipeline's `prepare_mask_latents` makes it: the mask
    /// (grayscale as PIL converts, resized, binarized at 0.5) nearest-sampled to the latent
    /// size, and the latents of the image with the masked part blacked out (drawn from the
    /// first generator, after the noise): `(n, 1 + latent, h / f, w / f)`.
    pub(super) fn inpaint_channels(
        &self,
        params: &GenerateParams,
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let (Some(mask), Some((img, _))) = (&params.mask, &params.init_image) else {
            anyhow::bail!("inpainting needs a mask and an init image");
        };
        let (w, h) = (params.width, params.height);
        let f = self.vae_scale_factor();
        let keep = mask_keep(mask, w, h);
        let pixels = image_to_tensor(img, w, h, &self.device, self.dtype)?;
        let keep_t = Tensor::from_vec(
            keep.iter()
                .map(|&k| if k { 1f32 } else { 0.0 })
                .collect::<Vec<_>>(),
            (1, 1, h, w),
            &self.device,
        )?
        .to_dtype(self.dtype)?;
        let masked = pixels.broadcast_mul(&keep_t)?;
        let latent_shape = [self.unet.config.out_channels, h / f, w / f];
        let masked_latents = self.encode_with_first(&masked, &latent_shape, noise)?;
        // torch's nearest interpolation to (h / f, w / f): source pixel (i * f, j * f).
        let (lh, lw) = (h / f, w / f);
        let small: Vec<f32> = (0..lh)
            .flat_map(|i| (0..lw).map(move |j| (i, j)))
            .map(|(i, j)| if keep[i * f * w + j * f] { 0.0 } else { 1.0 })
            .collect();
        let small = Tensor::from_vec(small, (1, 1, lh, lw), &self.device)?.to_dtype(self.dtype)?;
        let n = noise.len();
        Ok(Tensor::cat(&[&small, &masked_latents], 1)?.repeat((n, 1, 1, 1))?)
    }

    /// The VAE's `latents_mean` / `latents_std`, which only the SDXL pipelines use.
    fn latent_stats(&self) -> (Option<&Vec<f64>>, Option<&Vec<f64>>) {
        let cfg = &self.vae.config;
        if self.arch.is_xl() {
            (cfg.latents_mean.as_ref(), cfg.latents_std.as_ref())
        } else {
            (None, None)
        }
    }

    /// Posterior sample → UNet latent space.
    fn scale_latents(&self, x: &Tensor) -> Result<Tensor> {
        let cfg = &self.vae.config;
        let sf = cfg.scaling_factor as f32;
        match self.latent_stats() {
            (Some(m), Some(s)) => {
                let (mean, std) = self.channel_stats(m, s)?;
                Ok(mul_scalar(&x.broadcast_sub(&mean)?, sf)?.broadcast_div(&std)?)
            }
            _ => mul_scalar(x, sf),
        }
    }

    /// UNet latent space → VAE decoder input.
    pub(super) fn unscale_latents(&self, x: &Tensor) -> Result<Tensor> {
        let cfg = &self.vae.config;
        let sf = cfg.scaling_factor as f32;
        match self.latent_stats() {
            (Some(m), Some(s)) => {
                let (mean, std) = self.channel_stats(m, s)?;
                Ok(scheduler::div_scalar(&x.broadcast_mul(&std)?, sf)?.broadcast_add(&mean)?)
            }
            _ => scheduler::div_scalar(x, sf),
        }
    }

    fn channel_stats(&self, m: &[f64], s: &[f64]) -> Result<(Tensor, Tensor)> {
        let c = m.len();
        let mean: Vec<f32> = m.iter().map(|&v| v as f32).collect();
        let std: Vec<f32> = s.iter().map(|&v| v as f32).collect();
        Ok((
            Tensor::from_vec(mean, (1, c, 1, 1), &self.device)?.to_dtype(self.dtype)?,
            Tensor::from_vec(std, (1, c, 1, 1), &self.device)?.to_dtype(self.dtype)?,
        ))
    }
}

/// Which pixels the mask keeps (`false`: repaint), row-major at `w` x `h`: converted to
/// grayscale as PIL's `convert("L")` does (ITU-R 601-2 in fixed point), resized with
/// Lanczos if its size differs, then diffusers' binarization (`>= 0.5` repaints).
fn mask_keep(mask: &image::DynamicImage, w: usize, h: usize) -> Vec<bool> {
    let gray: image::GrayImage = match mask {
        image::DynamicImage::ImageLuma8(g) => g.clone(),
        other => {
            let rgb = other.to_rgb8();
            image::GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
                let [r, g, b] = rgb.get_pixel(x, y).0.map(u32::from);
                image::Luma([((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8])
            })
        }
    };
    let gray = if gray.width() as usize != w || gray.height() as usize != h {
        image::imageops::resize(
            &gray,
            w as u32,
            h as u32,
            image::imageops::FilterType::Lanczos3,
        )
    } else {
        gray
    };
    gray.pixels()
        .map(|p| (p.0[0] as f32 / 255.0) < 0.5)
        .collect()
}
