//! ControlNets in the denoising loop, step for step as diffusers'
//! `StableDiffusion(XL)ControlNet(Img2Img)Pipeline`: each net gets the UNet's scaled input
//! (in guess mode with CFG, the conditional half only, its residuals zero for the
//! unconditional half), its control image and its scale while the step is inside its
//! guidance window; the residuals of all nets are summed and added to the UNet's.

use std::sync::Arc;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};

use super::UnetPipeline;
use super::conditioning::UnetConditioning;
use crate::controlnet::ControlNet;
use crate::error::EngineError;
use crate::image_io::image_to_tensor_01;
use crate::unet::{AddedCond, Residuals};
use crate::{Control, GenerateParams};

/// Most ControlNets one request may use.
pub const MAX_CONTROLNETS: usize = 4;

/// What requests must share to run their ControlNets as one batch: the same nets with
/// the same scales and windows (the images may differ).
#[derive(Clone, Debug, PartialEq)]
pub struct ControlKey {
    /// The net's identity (its address while loaded).
    pub net: usize,
    pub scale: f64,
    pub start: f64,
    pub end: f64,
}

impl ControlKey {
    pub fn of(c: &Control) -> ControlKey {
        ControlKey {
            net: Arc::as_ptr(&c.net) as usize,
            scale: c.scale,
            start: c.start,
            end: c.end,
        }
    }
}

/// One net of a batch with its control images for every row the UNet runs.
struct Unit {
    net: Arc<ControlNet>,
    scale: f64,
    start: f64,
    end: f64,
    /// `(rows, 3, h, w)` in [0, 1]: each image once per sample, the batch's requests in
    /// order; with CFG outside guess mode, twice (the unconditional rows first).
    images: Tensor,
}

/// The ControlNets of a batch.
pub(super) struct ControlRun {
    units: Vec<Unit>,
    guess_mode: bool,
}

impl ControlRun {
    /// The batch's nets (those of its first request: every request of a batch has the
    /// same, [`super::BatchKey`]) with every request's images.
    pub fn new(
        batch: &[&GenerateParams],
        do_cfg: bool,
        device: &Device,
        dtype: DType,
    ) -> Result<Option<ControlRun>> {
        let Some(first) = batch.first() else {
            return Ok(None);
        };
        if first.controls.is_empty() {
            return Ok(None);
        }
        let mut units = Vec::with_capacity(first.controls.len());
        for (u, c) in first.controls.iter().enumerate() {
            let mut rows = Vec::new();
            for params in batch {
                let img = &params.controls[u].image;
                let t = image_to_tensor_01(img, params.width, params.height, device, dtype)?;
                rows.push(t.repeat((params.samples, 1, 1, 1))?);
            }
            let mut images = Tensor::cat(&rows, 0)?;
            if do_cfg && !first.guess_mode {
                images = Tensor::cat(&[&images, &images], 0)?;
            }
            units.push(Unit {
                net: c.net.clone(),
                scale: c.scale,
                start: c.start,
                end: c.end,
                images,
            });
        }
        Ok(Some(ControlRun {
            units,
            guess_mode: first.guess_mode,
        }))
    }

    /// The summed residuals at the `k`-th of `total` steps that run, for the UNet input
    /// `model_in` (scaled, CFG-doubled) of `n` images; `None` when every net is outside
    /// its window (diffusers then calls them with scale 0, which adds exact zeros).
    #[allow(clippy::too_many_arguments)]
    pub fn residuals(
        &self,
        k: usize,
        total: usize,
        model_in: &Tensor,
        timesteps: &[f32],
        cond: &UnetConditioning,
        added: Option<&AddedCond>,
        n: usize,
        do_cfg: bool,
    ) -> Result<Option<Residuals>> {
        let half = self.guess_mode && do_cfg;
        let mut sum: Option<Residuals> = None;
        for unit in &self.units {
            // diffusers' controlnet_keep, in doubles.
            let (i, t) = (k as f64, total as f64);
            let on = !(i / t < unit.start || (i + 1.0) / t > unit.end);
            if !on || unit.scale == 0.0 {
                continue;
            }
            let r = if half {
                // The conditional half: rows n..2n of everything the UNet gets.
                let text_half;
                let added_half = match added {
                    Some(a) => {
                        text_half = a.text_embeds.narrow(0, n, n)?;
                        Some(AddedCond {
                            text_embeds: &text_half,
                            time_ids: &a.time_ids[a.time_ids.len() / 2..],
                        })
                    }
                    None => None,
                };
                let r = unit.net.forward(
                    &model_in.narrow(0, n, n)?,
                    &timesteps[n..],
                    &cond.context.narrow(0, n, n)?,
                    added_half.as_ref(),
                    &unit.images,
                    unit.scale as f32,
                    true,
                )?;
                Residuals {
                    down: r
                        .down
                        .iter()
                        .map(|d| Tensor::cat(&[&d.zeros_like()?, d], 0))
                        .collect::<candle_core::Result<Vec<_>>>()?,
                    mid: Tensor::cat(&[&r.mid.zeros_like()?, &r.mid], 0)?,
                }
            } else {
                unit.net.forward(
                    model_in,
                    timesteps,
                    &cond.context,
                    added,
                    &unit.images,
                    unit.scale as f32,
                    self.guess_mode,
                )?
            };
            sum = Some(match sum {
                None => r,
                Some(s) => s.sum(r)?,
            });
        }
        Ok(sum)
    }
}

impl UnetPipeline {
    /// Checks a request's ControlNets against this model: their latents, text widths and
    /// added conditioning must be this UNet's, the scales and windows sane; no masks.
    pub(super) fn validate_controls(&self, p: &GenerateParams) -> Result<()> {
        if p.controls.is_empty() {
            if p.guess_mode {
                return Err(EngineError::invalid("guess_mode", "needs a ControlNet"));
            }
            return Ok(());
        }
        if p.controls.len() > MAX_CONTROLNETS {
            return Err(EngineError::invalid(
                "controlnets",
                format!(
                    "{} are too many: at most {MAX_CONTROLNETS}",
                    p.controls.len()
                ),
            ));
        }
        if p.mask.is_some() {
            return Err(EngineError::invalid(
                "controlnets",
                "ControlNets do not run with a mask (inpainting); leave one of them out",
            ));
        }
        let unet_cross = self
            .unet
            .config
            .cross_attention_dim
            .per_block(1, "cross_attention_dim")
            .ok()
            .and_then(|v| v.first().copied());
        for c in &p.controls {
            let net = &c.net;
            if net.in_channels() != self.unet.config.out_channels
                || net.cross_attention_dim() != unet_cross
                || net.needs_added_cond() != self.unet.needs_added_cond()
                || net.image_factor != self.vae_scale_factor()
            {
                return Err(EngineError::invalid(
                    "controlnets",
                    "a ControlNet made for another architecture does not fit this model",
                ));
            }
            if !(c.scale.is_finite() && (0.0..=20.0).contains(&c.scale)) {
                return Err(EngineError::invalid(
                    "controlnets",
                    format!("scale {} is not accepted: from 0 to 20", c.scale),
                ));
            }
            if !(c.start >= 0.0 && c.start < c.end && c.end <= 1.0) {
                return Err(EngineError::invalid(
                    "controlnets",
                    format!(
                        "start {} and end {} are not accepted: 0 <= start < end <= 1",
                        c.start, c.end
                    ),
                ));
            }
        }
        Ok(())
    }
}
