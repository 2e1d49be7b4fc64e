//! Depth maps for depth ControlNets (`preprocess::Preprocess::Depth`): transformers' `DepthAnythingForDepthEstimation` (a
//! DINOv2 backbone and a DPT head, Depth Anything V2's layout) from a folder in
//! transformers' format (`config.json`, `model.safetensors`, `preprocessor_config.json`),
//! run as transformers' depth-estimation pipeline makes its `depth` image.
//!
//! Written here rather than taken from candle-transformers: its Depth Anything V2 takes
//! only 518x518 inputs, upsamples with nearest neighbours where the model was trained with
//! bilinear, and reads another checkpoint layout, so its maps are not the model's.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};
use serde::Deserialize;

use crate::nn::{Conv2d, LayerNorm, Linear};
use crate::pil_resize::{PilFilter, pil_resize};
use crate::weights::{Weights, find_weight_files};

#[derive(Clone, Debug, Deserialize)]
struct BackboneConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default = "default_patch")]
    patch_size: usize,
    image_size: usize,
    #[serde(default = "default_mlp_ratio")]
    mlp_ratio: f64,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    out_indices: Vec<usize>,
    #[serde(default = "default_true")]
    apply_layernorm: bool,
    #[serde(default)]
    use_swiglu_ffn: bool,
    #[serde(default = "default_gelu")]
    hidden_act: String,
}

#[derive(Clone, Debug, Deserialize)]
struct DepthConfig {
    backbone_config: BackboneConfig,
    reassemble_hidden_size: usize,
    reassemble_factors: Vec<f64>,
    neck_hidden_sizes: Vec<usize>,
    fusion_hidden_size: usize,
    head_hidden_size: usize,
    #[serde(default = "default_relative")]
    depth_estimation_type: String,
    #[serde(default = "default_one")]
    max_depth: f64,
}

#[derive(Clone, Debug, Deserialize)]
struct ProcessorConfig {
    size: ProcessorSize,
    #[serde(default = "default_true")]
    keep_aspect_ratio: bool,
    #[serde(default = "default_multiple")]
    ensure_multiple_of: usize,
    image_mean: [f32; 3],
    image_std: [f32; 3],
    #[serde(default = "default_rescale")]
    rescale_factor: f32,
}

#[derive(Clone, Debug, Deserialize)]
struct ProcessorSize {
    height: usize,
    width: usize,
}

fn default_patch() -> usize {
    14
}
fn default_mlp_ratio() -> f64 {
    4.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}
fn default_gelu() -> String {
    "gelu".into()
}
fn default_relative() -> String {
    "relative".into()
}
fn default_one() -> f64 {
    1.0
}
fn default_multiple() -> usize {
    14
}
fn default_rescale() -> f32 {
    1.0 / 255.0
}

/// One DINOv2 layer: pre-norm attention and MLP, each scaled per channel (layer scale).
struct Layer {
    norm1: LayerNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    out: Linear,
    scale1: Tensor,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    scale2: Tensor,
    heads: usize,
}

impl Layer {
    fn load(w: &Weights, c: &BackboneConfig) -> Result<Layer> {
        let e = c.hidden_size;
        let hidden = (e as f64 * c.mlp_ratio) as usize;
        let a = w.pp("attention");
        Ok(Layer {
            norm1: LayerNorm::load(&w.pp("norm1"), e, c.layer_norm_eps)?,
            query: Linear::load(&a.pp("attention.query"), e, e, true)?,
            key: Linear::load(&a.pp("attention.key"), e, e, true)?,
            value: Linear::load(&a.pp("attention.value"), e, e, true)?,
            out: Linear::load(&a.pp("output.dense"), e, e, true)?,
            scale1: w.get(e, "layer_scale1.lambda1")?,
            norm2: LayerNorm::load(&w.pp("norm2"), e, c.layer_norm_eps)?,
            fc1: Linear::load(&w.pp("mlp.fc1"), e, hidden, true)?,
            fc2: Linear::load(&w.pp("mlp.fc2"), hidden, e, true)?,
            scale2: w.get(e, "layer_scale2.lambda1")?,
            heads: c.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, e) = x.dims3()?;
        let d = e / self.heads;
        let h = self.norm1.forward(x)?;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, n, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.query.forward(&h)?)?;
        let k = split(self.key.forward(&h)?)?;
        let v = split(self.value.forward(&h)?)?;
        let scores = (q.matmul(&k.t()?.contiguous()?)? * (d as f64).powf(-0.5))?;
        let attn = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
        let attn = attn.transpose(1, 2)?.reshape((b, n, e))?;
        let x = (x + self.out.forward(&attn)?.broadcast_mul(&self.scale1)?)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?;
        Ok((&x + self.fc2.forward(&h)?.broadcast_mul(&self.scale2)?)?)
    }
}

/// A reassemble layer: a 1x1 projection, then a resize by its factor (a transposed
/// convolution up, a strided convolution down).
struct Reassemble {
    projection: Conv2d,
    resize: Resize,
}

enum Resize {
    Up {
        weight: Tensor,
        bias: Tensor,
        factor: usize,
    },
    Same,
    Down(Conv2d),
}

/// A pre-activation residual unit: x + conv(relu(conv(relu(x)))).
struct Residual {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl Residual {
    fn load(w: &Weights, f: usize) -> Result<Residual> {
        Ok(Residual {
            conv1: Conv2d::load(&w.pp("convolution1"), f, f, 3, 1, 1)?,
            conv2: Conv2d::load(&w.pp("convolution2"), f, f, 3, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&x.relu()?)?;
        let h = self.conv2.forward(&h.relu()?)?;
        Ok((h + x)?)
    }
}

struct Fusion {
    projection: Conv2d,
    residual1: Residual,
    residual2: Residual,
}

/// A loaded depth model.
pub struct DepthEstimator {
    patch_embed: Conv2d,
    cls_token: Tensor,
    position_embeddings: Tensor,
    layers: Vec<Layer>,
    layernorm: LayerNorm,
    reassemble: Vec<Reassemble>,
    convs: Vec<Conv2d>,
    fusion: Vec<Fusion>,
    head1: Conv2d,
    head2: Conv2d,
    head3: Conv2d,
    config: DepthConfig,
    processor: ProcessorConfig,
    device: Device,
}

impl std::fmt::Debug for DepthEstimator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DepthEstimator").finish_non_exhaustive()
    }
}

impl DepthEstimator {
    /// Loads a Depth Anything folder in transformers' format (f32).
    pub fn load(dir: &Path, device: &Device) -> Result<DepthEstimator> {
        let read = |name: &str| -> Result<String> {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        let config: DepthConfig = serde_json::from_str(&read("config.json")?)
            .with_context(|| format!("{}: not a Depth Anything config", dir.display()))?;
        let processor: ProcessorConfig =
            serde_json::from_str(&read("preprocessor_config.json")?)
                .with_context(|| format!("{}: preprocessor_config.json", dir.display()))?;
        let b = &config.backbone_config;
        if b.use_swiglu_ffn || b.hidden_act != "gelu" {
            bail!(
                "{}: only DINOv2 backbones with a GELU MLP are supported (Depth Anything V2 small / base / large)",
                dir.display()
            );
        }
        let n = config.neck_hidden_sizes.len();
        if config.reassemble_factors.len() != n || b.out_indices.len() != n {
            bail!(
                "{}: neck_hidden_sizes, reassemble_factors and out_indices differ in length",
                dir.display()
            );
        }
        let files = find_weight_files(dir, "model")?;
        let w = Weights::open(&files, device, DType::F32)?;
        Self::build(&w, config, processor, device)
            .with_context(|| format!("building the depth model from {}", dir.display()))
    }

    fn build(
        w: &Weights,
        config: DepthConfig,
        processor: ProcessorConfig,
        device: &Device,
    ) -> Result<DepthEstimator> {
        let b = &config.backbone_config;
        let e = b.hidden_size;
        let emb = w.pp("backbone.embeddings");
        let patch_embed = Conv2d::load(
            &emb.pp("patch_embeddings.projection"),
            3,
            e,
            b.patch_size,
            b.patch_size,
            0,
        )?;
        let cls_token = emb.get((1, 1, e), "cls_token")?;
        let grid = b.image_size / b.patch_size;
        let position_embeddings = emb.get((1, grid * grid + 1, e), "position_embeddings")?;
        let layers = (0..b.num_hidden_layers)
            .map(|i| Layer::load(&w.pp(format!("backbone.encoder.layer.{i}")), b))
            .collect::<Result<Vec<_>>>()?;
        let layernorm = LayerNorm::load(&w.pp("backbone.layernorm"), e, b.layer_norm_eps)?;
        let r = config.reassemble_hidden_size;
        let f = config.fusion_hidden_size;
        let mut reassemble = Vec::new();
        let mut convs = Vec::new();
        for (i, (&c, &factor)) in config
            .neck_hidden_sizes
            .iter()
            .zip(&config.reassemble_factors)
            .enumerate()
        {
            let lw = w.pp(format!("neck.reassemble_stage.layers.{i}"));
            let resize = if factor > 1.0 {
                let k = factor as usize;
                Resize::Up {
                    weight: lw.get((c, c, k, k), "resize.weight")?,
                    bias: lw.get(c, "resize.bias")?,
                    factor: k,
                }
            } else if factor == 1.0 {
                Resize::Same
            } else {
                Resize::Down(Conv2d::load(
                    &lw.pp("resize"),
                    c,
                    c,
                    3,
                    (1.0 / factor) as usize,
                    1,
                )?)
            };
            reassemble.push(Reassemble {
                projection: Conv2d::load(&lw.pp("projection"), r, c, 1, 1, 0)?,
                resize,
            });
            convs.push(Conv2d::load_no_bias(
                &w.pp(format!("neck.convs.{i}")),
                c,
                f,
                3,
                1,
                1,
            )?);
        }
        let fusion = (0..config.neck_hidden_sizes.len())
            .map(|j| {
                let fw = w.pp(format!("neck.fusion_stage.layers.{j}"));
                Ok(Fusion {
                    projection: Conv2d::load(&fw.pp("projection"), f, f, 1, 1, 0)?,
                    residual1: Residual::load(&fw.pp("residual_layer1"), f)?,
                    residual2: Residual::load(&fw.pp("residual_layer2"), f)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let hw = w.pp("head");
        Ok(DepthEstimator {
            patch_embed,
            cls_token,
            position_embeddings,
            layers,
            layernorm,
            reassemble,
            convs,
            fusion,
            head1: Conv2d::load(&hw.pp("conv1"), f, f / 2, 3, 1, 1)?,
            head2: Conv2d::load(&hw.pp("conv2"), f / 2, config.head_hidden_size, 3, 1, 1)?,
            head3: Conv2d::load(&hw.pp("conv3"), config.head_hidden_size, 1, 1, 1, 0)?,
            config,
            processor,
            device: device.clone(),
        })
    }

    /// transformers' depth-estimation pipeline's `depth` image of `img`: the prediction
    /// resized back to the image's size (bicubic), its range mapped to 0-255 (truncated).
    pub fn depth_image(&self, img: &RgbImage) -> Result<GrayImage> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        if w == 0 || h == 0 {
            bail!("an empty image has no depth");
        }
        let pixels = self.preprocess(img)?;
        let depth = self.forward(&pixels)?;
        let (_, ph, pw) = depth.dims3()?;
        let depth = resize_bicubic(&depth.reshape((1, ph, pw))?, h, w)?;
        let values = depth.flatten_all()?.to_vec1::<f32>()?;
        let (min, max) = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let range = max - min;
        let bytes = values
            .iter()
            .map(|&v| (((v - min) / range) * 255.0) as u8)
            .collect();
        GrayImage::from_raw(w as u32, h as u32, bytes).context("depth image size")
    }

    /// DPTImageProcessor: resized (bicubic, Pillow's) to the configured size keeping the
    /// aspect ratio by scaling as little as possible, each side a multiple of 14 (Python's
    /// round), rescaled and normalized; `(1, 3, h, w)`.
    fn preprocess(&self, img: &RgbImage) -> Result<Tensor> {
        let p = &self.processor;
        let (iw, ih) = (img.width() as f64, img.height() as f64);
        let (mut sh, mut sw) = (p.size.height as f64 / ih, p.size.width as f64 / iw);
        if p.keep_aspect_ratio {
            if (1.0 - sw).abs() < (1.0 - sh).abs() {
                sh = sw;
            } else {
                sw = sh;
            }
        }
        let multiple = |v: f64| -> usize {
            let m = p.ensure_multiple_of as f64;
            ((v / m).round_ties_even() * m) as usize
        };
        let (nh, nw) = (multiple(sh * ih).max(1), multiple(sw * iw).max(1));
        let resized = if (nw, nh) == (img.width() as usize, img.height() as usize) {
            img.clone()
        } else {
            pil_resize(img, nw as u32, nh as u32, PilFilter::Bicubic)
        };
        let mut data = vec![0f32; 3 * nh * nw];
        for (x, y, px) in resized.enumerate_pixels() {
            for c in 0..3 {
                let v = f32::from(px[c]) * p.rescale_factor;
                data[c * nh * nw + y as usize * nw + x as usize] =
                    (v - p.image_mean[c]) / p.image_std[c];
            }
        }
        Ok(Tensor::from_vec(data, (1, 3, nh, nw), &self.device)?)
    }

    /// `predicted_depth` for normalized pixels `(1, 3, h, w)`: `(1, h, w)`.
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let b = &self.config.backbone_config;
        let (_, _, h, w) = pixels.dims4()?;
        let (ph, pw) = (h / b.patch_size, w / b.patch_size);
        let x = self.patch_embed.forward(pixels)?; // (1, E, ph, pw)
        let e = b.hidden_size;
        let x = x.flatten_from(2)?.transpose(1, 2)?; // (1, N, E)
        let x = Tensor::cat(&[&self.cls_token, &x], 1)?;
        let mut x = (x + self.positions(ph, pw, h == w)?)?;
        let mut features = Vec::new();
        // hidden_states[0] is the embeddings' output.
        for (i, layer) in std::iter::once(None)
            .chain(self.layers.iter().map(Some))
            .enumerate()
        {
            if let Some(layer) = layer {
                x = layer.forward(&x)?;
            }
            if b.out_indices.contains(&i) {
                features.push(if b.apply_layernorm {
                    self.layernorm.forward(&x)?
                } else {
                    x.clone()
                });
            }
        }
        // Reassemble: tokens (without the CLS) as a (1, E, ph, pw) map, projected, resized.
        let mut maps = Vec::with_capacity(features.len());
        for ((feat, re), conv) in features.iter().zip(&self.reassemble).zip(&self.convs) {
            let map = feat
                .narrow(1, 1, ph * pw)?
                .reshape((1, ph, pw, e))?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            let map = re.projection.forward(&map)?;
            let map = match &re.resize {
                Resize::Up {
                    weight,
                    bias,
                    factor,
                } => map
                    .conv_transpose2d(weight, 0, 0, *factor, 1)?
                    .broadcast_add(&bias.reshape((1, (), 1, 1))?)?,
                Resize::Same => map,
                Resize::Down(conv) => conv.forward(&map)?,
            };
            maps.push(conv.forward(&map)?);
        }
        // Fusion, deepest first: each output upsampled to the next map's size (the last
        // by 2), bilinear with align_corners.
        let mut fused: Option<Tensor> = None;
        let rev: Vec<&Tensor> = maps.iter().rev().collect();
        for (idx, (map, layer)) in rev.iter().zip(&self.fusion).enumerate() {
            let mut h = match &fused {
                None => (*map).clone(),
                Some(prev) => {
                    let residual = if prev.dims() != map.dims() {
                        let (_, _, th, tw) = prev.dims4()?;
                        resize_bilinear(map, th, tw, false)?
                    } else {
                        (*map).clone()
                    };
                    (prev + layer.residual1.forward(&residual)?)?
                }
            };
            h = layer.residual2.forward(&h)?;
            let (_, _, hh, hw) = h.dims4()?;
            let (th, tw) = match rev.get(idx + 1) {
                Some(next) => {
                    let (_, _, nh, nw) = next.dims4()?;
                    (nh, nw)
                }
                None => (hh * 2, hw * 2),
            };
            h = resize_bilinear(&h, th, tw, true)?;
            fused = Some(layer.projection.forward(&h)?);
        }
        let fused = fused.context("no fusion layers")?;
        let h = self.head1.forward(&fused)?;
        let h = resize_bilinear(&h, ph * b.patch_size, pw * b.patch_size, true)?;
        let h = self.head2.forward(&h)?.relu()?;
        let h = self.head3.forward(&h)?;
        let h = if self.config.depth_estimation_type == "metric" {
            candle_nn::ops::sigmoid(&h)?
        } else {
            h.relu()?
        };
        let h = (h * self.config.max_depth)?;
        Ok(h.squeeze(1)?)
    }

    /// The position embeddings for a `ph` x `pw` patch grid: as stored when the grid is
    /// the trained one and square, else the patch part interpolated bicubic.
    fn positions(&self, ph: usize, pw: usize, square: bool) -> Result<Tensor> {
        let (_, n, e) = self.position_embeddings.dims3()?;
        let trained = n - 1;
        if trained == ph * pw && square {
            return Ok(self.position_embeddings.clone());
        }
        let side = (trained as f64).sqrt() as usize;
        if side * side != trained {
            bail!("position embeddings for {trained} patches are not a square grid");
        }
        let cls = self.position_embeddings.narrow(1, 0, 1)?;
        let grid = self
            .position_embeddings
            .narrow(1, 1, trained)?
            .reshape((side, side, e))?
            .permute((2, 0, 1))?
            .contiguous()?; // (E, side, side)
        let grid = resize_bicubic(&grid, ph, pw)?; // (E, ph, pw)
        let grid = grid.permute((1, 2, 0))?.reshape((1, ph * pw, e))?;
        Ok(Tensor::cat(&[&cls, &grid], 1)?)
    }
}

/// torch's `interpolate(mode="bilinear")` of `(b, c, h, w)` to `(th, tw)`, as two
/// matrix products with its interpolation weights.
fn resize_bilinear(x: &Tensor, th: usize, tw: usize, align_corners: bool) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let ry = weights_1d(h, th, |o| linear_taps(h, th, o, align_corners), x.device())?;
    let rx = weights_1d(w, tw, |o| linear_taps(w, tw, o, align_corners), x.device())?;
    let x = x.reshape((b * c, h, w))?;
    let y = ry.broadcast_matmul(&x)?.broadcast_matmul(&rx.t()?)?;
    Ok(y.reshape((b, c, th, tw))?)
}

/// torch's `interpolate(mode="bicubic", align_corners=False)` of `(c, h, w)` to `(th, tw)`.
fn resize_bicubic(x: &Tensor, th: usize, tw: usize) -> Result<Tensor> {
    let (_, h, w) = x.dims3()?;
    let ry = weights_1d(h, th, |o| cubic_taps(h, th, o), x.device())?;
    let rx = weights_1d(w, tw, |o| cubic_taps(w, tw, o), x.device())?;
    Ok(ry.broadcast_matmul(x)?.broadcast_matmul(&rx.t()?)?)
}

/// The `(out, inp)` matrix whose row `o` holds the taps `taps(o)` gives.
fn weights_1d(
    inp: usize,
    out: usize,
    taps: impl Fn(usize) -> Vec<(usize, f32)>,
    device: &Device,
) -> Result<Tensor> {
    let mut m = vec![0f32; out * inp];
    for o in 0..out {
        for (i, wgt) in taps(o) {
            m[o * inp + i] += wgt;
        }
    }
    Ok(Tensor::from_vec(m, (out, inp), device)?)
}

/// torch's bilinear source index and weights for output `o`.
fn linear_taps(inp: usize, out: usize, o: usize, align_corners: bool) -> Vec<(usize, f32)> {
    let src = if align_corners {
        if out > 1 {
            o as f32 * (inp as f32 - 1.0) / (out as f32 - 1.0)
        } else {
            0.0
        }
    } else {
        ((o as f32 + 0.5) * (inp as f32 / out as f32) - 0.5).max(0.0)
    };
    let i0 = (src.floor() as usize).min(inp - 1);
    let i1 = (i0 + 1).min(inp - 1);
    let t = src - i0 as f32;
    vec![(i0, 1.0 - t), (i1, t)]
}

/// torch's bicubic (A = -0.75, align_corners=False, borders clamped) taps for output `o`.
fn cubic_taps(inp: usize, out: usize, o: usize) -> Vec<(usize, f32)> {
    const A: f32 = -0.75;
    let src = (o as f32 + 0.5) * (inp as f32 / out as f32) - 0.5;
    let i = src.floor();
    let t = src - i;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
    (0..4)
        .map(|k| {
            let idx = (i as i64 - 1 + k as i64).clamp(0, inp as i64 - 1) as usize;
            (idx, weights[k])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_weights_sum_to_one() {
        for (inp, out) in [(4, 5), (5, 4), (4, 8), (8, 3), (1, 3)] {
            for o in 0..out {
                for taps in [
                    cubic_taps(inp, out, o),
                    linear_taps(inp, out, o, true),
                    linear_taps(inp, out, o, false),
                ] {
                    let s: f32 = taps.iter().map(|(_, w)| w).sum();
                    assert!((s - 1.0).abs() < 1e-5, "{inp}->{out} @{o}: {s}");
                }
            }
        }
    }
}
