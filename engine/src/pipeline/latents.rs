//! Latents: the initial ones (noise for text-to-image; the VAE-encoded init image,
//! sampled and noised, for image-to-image; inpainting's are in `inpaint`), and the VAE's
//! latent scaling both ways.

use anyhow::Result;
use candle_core::Tensor;

use super::UnetPipeline;
use crate::GenerateParams;
use crate::image_io::image_to_tensor;
use crate::noise::NoiseSource;
use crate::scheduler::{self, Scheduler, mul_scalar};
use crate::vae::AutoencoderKl;

/// A draw from the VAE's posterior of `pixels`: `mean + std * eps`, in `eps`' dtype (the
/// VAE's sampling, with `eps` drawn by the caller from the image's generator).
pub(super) fn posterior_sample(
    vae: &AutoencoderKl,
    pixels: &Tensor,
    eps: &Tensor,
) -> Result<Tensor> {
    let dist = vae.encode(pixels)?;
    let dtype = eps.dtype();
    let (mean, std) = (dist.mean.to_dtype(dtype)?, dist.std.to_dtype(dtype)?);
    Ok(mean.broadcast_add(&std.broadcast_mul(eps)?)?)
}

impl UnetPipeline {
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
            Some((img, _)) => {
                // StableDiffusion(XL)Img2ImgPipeline: the posterior sample, then the noise,
                // both from the image's generator.
                let pixels = image_to_tensor(img, w, h, &self.device, self.dtype)?;
                let sample_noise = noise.randn(&latent_shape)?.to_dtype(self.dtype)?;
                let sample = posterior_sample(&self.vae, &pixels, &sample_noise)?;
                let init = self.scale_latents(&sample)?;
                let eps = noise.randn(&latent_shape)?.to_dtype(self.dtype)?;
                sched.add_noise(&init, &eps, begin)?
            }
        })
    }

    /// The scaled posterior sample of `pixels` (one image) drawn from the first generator,
    /// as the inpaint pipelines' `_encode_vae_image` makes it: times `scaling_factor` only
    /// (SDXL's inpaint pipeline leaves `latents_mean` / `latents_std` to the decoder).
    pub(super) fn encode_with_first(
        &self,
        pixels: &Tensor,
        latent_shape: &[usize],
        noise: &mut NoiseSource,
    ) -> Result<Tensor> {
        let eps = noise.randn_first(latent_shape)?.to_dtype(self.dtype)?;
        let sample = posterior_sample(&self.vae, pixels, &eps)?;
        mul_scalar(&sample, self.vae.config.scaling_factor as f32)
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
