//! Inpainting, step for step as diffusers' `StableDiffusionInpaintPipeline` and
//! `StableDiffusionXLInpaintPipeline`: with an inpainting UNet (latents + mask + masked
//! image latents in) and with an ordinary one, whose latents are blended with the init
//! image, noised to the next timestep, after every step.
//!
//! Random draws per request, in diffusers' order: the init image's posterior sample from
//! the first generator (ordinary UNets always; inpainting UNets below full strength), each
//! image's noise from its own generator, then the masked image's posterior sample from the
//! first generator again (drawn by ordinary UNets too, which do not use it).

use anyhow::{Result, bail};
use candle_core::Tensor;

use super::UnetPipeline;
use crate::GenerateParams;
use crate::image_io::image_to_tensor;
use crate::noise::NoiseSource;
use crate::scheduler::{Scheduler, mul_scalar};

/// An ordinary UNet's inpainting: after each step the kept part of the latents is the init
/// image's, noised with the initial noise to the next timestep (clean after the last).
pub(super) struct Blend {
    /// 1 where the image is repainted, `(n, 1, h / f, w / f)`.
    pub repaint: Tensor,
    /// The init image's latents, `(n, latent, h / f, w / f)`.
    pub image_latents: Tensor,
    /// The initial noise, `(n, latent, h / f, w / f)`.
    pub noise: Tensor,
}

impl Blend {
    /// Joins the blends of the requests of a batch.
    pub fn join(parts: &[Blend]) -> Result<Blend> {
        let cat = |pick: &dyn Fn(&Blend) -> &Tensor| -> Result<Tensor> {
            Ok(Tensor::cat(&parts.iter().map(pick).collect::<Vec<_>>(), 0)?)
        };
        Ok(Blend {
            repaint: cat(&|b| &b.repaint)?,
            image_latents: cat(&|b| &b.image_latents)?,
            noise: cat(&|b| &b.noise)?,
        })
    }

    /// The latents after the step at timestep index `i`.
    pub fn apply(&self, sched: &dyn Scheduler, latents: &Tensor, i: usize) -> Result<Tensor> {
        let proper = if i + 1 < sched.timesteps().len() {
            sched.add_noise(&self.image_latents, &self.noise, i + 1)?
        } else {
            self.image_latents.clone()
        };
        let keep = (1.0 - &self.repaint)?;
        Ok((proper.broadcast_mul(&keep)? + latents.broadcast_mul(&self.repaint)?)?)
    }
}

/// What an inpainting request adds to the denoising loop.
pub(super) struct Inpainting {
    /// The initial latents.
    pub latents: Tensor,
    /// Inpainting UNets: the mask and the masked image's latents, `(n, 1 + latent, h, w)`,
    /// beside the latents at every step (without CFG's doubling).
    pub unet_extra: Option<Tensor>,
    /// Ordinary UNets: the blend after each step.
    pub blend: Option<Blend>,
}

impl UnetPipeline {
    /// The initial latents and the per-step inputs of an inpainting request (`mask` and
    /// `init_image` set); `begin` as in [`UnetPipeline::initial_latents`].
    pub(super) fn inpaint_start(
        &self,
        params: &GenerateParams,
        sched: &dyn Scheduler,
        begin: usize,
        noise: &mut NoiseSource,
    ) -> Result<Inpainting> {
        let (Some(mask), Some((img, strength))) = (&params.mask, &params.init_image) else {
            bail!("inpainting needs a mask and an init image");
        };
        let (w, h) = (params.width, params.height);
        let f = self.vae_scale_factor();
        let n = noise.len();
        let latent_shape = [self.unet.config.out_channels, h / f, w / f];
        let full_strength = *strength >= 1.0;
        let pixels = image_to_tensor(img, w, h, &self.device, self.dtype)?;

        let image_latents = if !self.inpaint || !full_strength {
            Some(
                self.encode_with_first(&pixels, &latent_shape, noise)?
                    .repeat((n, 1, 1, 1))?,
            )
        } else {
            None
        };
        let eps = noise.randn(&latent_shape)?.to_dtype(self.dtype)?;
        let latents = match &image_latents {
            Some(init) if !full_strength => sched.add_noise(init, &eps, begin)?,
            _ => mul_scalar(&eps, sched.init_noise_sigma() as f32)?,
        };

        let keep = mask_keep(mask, w, h);
        let (lh, lw) = (h / f, w / f);
        // torch's nearest interpolation to (h / f, w / f): source pixel (i * f, j * f).
        let small: Vec<f32> = (0..lh)
            .flat_map(|i| (0..lw).map(move |j| (i, j)))
            .map(|(i, j)| if keep[i * f * w + j * f] { 0.0 } else { 1.0 })
            .collect();
        let repaint = Tensor::from_vec(small, (1, 1, lh, lw), &self.device)?
            .to_dtype(self.dtype)?
            .repeat((n, 1, 1, 1))?;

        if !self.inpaint {
            // diffusers encodes the masked image for ordinary UNets too, which do not use
            // it: only its draw from the first generator is kept (ancestral schedulers draw
            // from that generator afterwards).
            noise.randn_first(&latent_shape)?;
            let image_latents = image_latents.expect("ordinary UNets encode the init image");
            return Ok(Inpainting {
                latents,
                unet_extra: None,
                blend: Some(Blend {
                    repaint,
                    image_latents,
                    noise: eps,
                }),
            });
        }
        let keep_t = Tensor::from_vec(
            keep.iter()
                .map(|&k| if k { 1f32 } else { 0.0 })
                .collect::<Vec<_>>(),
            (1, 1, h, w),
            &self.device,
        )?
        .to_dtype(self.dtype)?;
        let masked = pixels.broadcast_mul(&keep_t)?;
        let masked_latents = self
            .encode_with_first(&masked, &latent_shape, noise)?
            .repeat((n, 1, 1, 1))?;
        Ok(Inpainting {
            latents,
            unet_extra: Some(Tensor::cat(&[&repaint, &masked_latents], 1)?),
            blend: None,
        })
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
