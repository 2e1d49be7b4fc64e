//! diffusers' `StableDiffusionSafetyChecker`: a CLIP vision tower and projection, whose image
//! embedding is compared (cosine) with 17 concept and 3 "special care" embeddings against
//! per-concept thresholds, with the images prepared by the model's `feature_extractor`
//! (transformers' `CLIPImageProcessor`: bicubic resize of the shortest side, center crop,
//! rescale, normalize).
//!
//! Scores are diffusers': `round(cos - threshold + adjustment, 3)`, the adjustment 0.01 once
//! a special concept scores above 0; an image is flagged when a concept scores above 0.
//! Flagged images are replaced as asked ([`Replacement`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, IndexOp, Tensor};
use image::RgbImage;
use serde::Deserialize;

use crate::clip::{Activation, EncoderLayer, LayerDims};
use crate::config::read_json;
use crate::nn::{LayerNorm, Linear};
use crate::pil_resize::{PilFilter, pil_resize};
use crate::weights::{Weights, find_weight_files};

#[derive(Debug, Deserialize)]
struct CheckerConfig {
    projection_dim: usize,
    vision_config: VisionConfig,
}

#[derive(Debug, Deserialize)]
struct VisionConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    image_size: usize,
    patch_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_channels")]
    num_channels: usize,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "quick_gelu".into()
}
fn default_channels() -> usize {
    3
}

/// `size` / `crop_size` as preprocessor configs write them: a number, or a map.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Side(usize),
    Map {
        shortest_edge: Option<usize>,
        height: Option<usize>,
        width: Option<usize>,
    },
}

#[derive(Debug, Deserialize)]
struct PreprocessorConfig {
    #[serde(default = "yes")]
    do_resize: bool,
    size: Option<SizeSpec>,
    #[serde(default = "bicubic")]
    resample: u32,
    #[serde(default = "yes")]
    do_center_crop: bool,
    crop_size: Option<SizeSpec>,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "rescale")]
    rescale_factor: f64,
    #[serde(default = "yes")]
    do_normalize: bool,
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
}

fn yes() -> bool {
    true
}
fn bicubic() -> u32 {
    3
}
fn rescale() -> f64 {
    1.0 / 255.0
}

/// How a flagged image is replaced (ModelsLab's `safety_checker_type`; diffusers: black).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Replacement {
    #[default]
    Black,
    Blur,
    Pixelate,
    /// A dark image that says "sensitive content".
    SensitiveContentText,
}

impl std::str::FromStr for Replacement {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "black" => Replacement::Black,
            "blur" => Replacement::Blur,
            "pixelate" => Replacement::Pixelate,
            "sensitive_content_text" => Replacement::SensitiveContentText,
            other => bail!("{other:?}: black, blur, pixelate or sensitive_content_text"),
        })
    }
}

/// The checker's verdict on one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub special_scores: Vec<f32>,
    pub concept_scores: Vec<f32>,
    /// A concept scored above 0: diffusers' `has_nsfw_concept`.
    pub nsfw: bool,
}

pub struct SafetyChecker {
    patch_embedding: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_norm: LayerNorm,
    projection: Linear,
    concepts: Tensor,
    special: Tensor,
    concept_thresholds: Vec<f32>,
    special_thresholds: Vec<f32>,
    patch: usize,
    pre: PreprocessorConfig,
    pub dir: PathBuf,
    device: Device,
}

impl SafetyChecker {
    /// Loads a checker: a model folder's `safety_checker/` and `feature_extractor/`, or a
    /// folder with both configs side by side (CompVis/stable-diffusion-safety-checker's
    /// layout).
    pub fn load(dir: &Path, device: &Device) -> Result<SafetyChecker> {
        let (model_dir, pre_path) = if dir.join("safety_checker").is_dir() {
            (
                dir.join("safety_checker"),
                dir.join("feature_extractor/preprocessor_config.json"),
            )
        } else {
            (dir.to_path_buf(), dir.join("preprocessor_config.json"))
        };
        let cfg: CheckerConfig = read_json(&model_dir.join("config.json"))?;
        let pre: PreprocessorConfig = read_json(&pre_path)?;
        if !matches!(pre.resample, 2 | 3) {
            bail!(
                "{}: resample {} is not supported (2: bilinear, 3: bicubic)",
                pre_path.display(),
                pre.resample
            );
        }
        let v = &cfg.vision_config;
        let files = find_weight_files(&model_dir, "model")?;
        let root = Weights::open(&files, device, DType::F32)?;
        // transformers 5 writes `vision_model.embeddings...`; older checkpoints nest it twice.
        let w = if root.contains("vision_model.vision_model.embeddings.class_embedding") {
            root.pp("vision_model.vision_model")
        } else {
            root.pp("vision_model")
        };
        let h = v.hidden_size;
        let emb = w.pp("embeddings");
        let patches = (v.image_size / v.patch_size).pow(2);
        let act = if v.hidden_act == "gelu" {
            Activation::Gelu
        } else {
            Activation::QuickGelu
        };
        let dims = LayerDims {
            hidden: h,
            heads: v.num_attention_heads,
            intermediate: v.intermediate_size,
            eps: v.layer_norm_eps,
        };
        let vec1 = |name: &str, n: usize| -> Result<Vec<f32>> {
            Ok(root.get(n, name)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
        };
        Ok::<_, anyhow::Error>(SafetyChecker {
            patch_embedding: emb.get(
                (h, v.num_channels, v.patch_size, v.patch_size),
                "patch_embedding.weight",
            )?,
            class_embedding: emb.get(h, "class_embedding")?,
            position_embedding: emb.get((patches + 1, h), "position_embedding.weight")?,
            pre_norm: LayerNorm::load(&w.pp("pre_layrnorm"), h, v.layer_norm_eps)?,
            layers: (0..v.num_hidden_layers)
                .map(|i| EncoderLayer::load_dims(&w.pp(format!("encoder.layers.{i}")), dims, act))
                .collect::<Result<_>>()?,
            post_norm: LayerNorm::load(&w.pp("post_layernorm"), h, v.layer_norm_eps)?,
            projection: Linear::load(&root.pp("visual_projection"), h, cfg.projection_dim, false)?,
            concepts: root.get((17, cfg.projection_dim), "concept_embeds")?,
            special: root.get((3, cfg.projection_dim), "special_care_embeds")?,
            concept_thresholds: vec1("concept_embeds_weights", 17)?,
            special_thresholds: vec1("special_care_embeds_weights", 3)?,
            patch: v.patch_size,
            pre,
            dir: dir.to_path_buf(),
            device: device.clone(),
        })
        .with_context(|| format!("loading the safety checker in {}", dir.display()))
    }

    /// The feature extractor's pixels of `img`: `(3, crop_h, crop_w)`.
    fn pixels(&self, img: &RgbImage) -> Result<Tensor> {
        let p = &self.pre;
        let (w, h) = img.dimensions();
        let mut img = img.clone();
        if p.do_resize {
            let (nw, nh) = match &p.size {
                Some(SizeSpec::Map {
                    shortest_edge: Some(s),
                    ..
                })
                | Some(SizeSpec::Side(s)) => {
                    // transformers: the short side to `s`, the long one int(s * long / short).
                    let s = *s as u64;
                    let (w64, h64) = (w as u64, h as u64);
                    if w <= h {
                        (s, s * h64 / w64)
                    } else {
                        (s * w64 / h64, s)
                    }
                }
                Some(SizeSpec::Map {
                    height: Some(hh),
                    width: Some(ww),
                    ..
                }) => (*ww as u64, *hh as u64),
                _ => bail!("preprocessor_config.json: a size this engine does not read"),
            };
            let filter = if p.resample == 2 {
                PilFilter::Bilinear
            } else {
                PilFilter::Bicubic
            };
            img = pil_resize(&img, nw as u32, nh as u32, filter);
        }
        if p.do_center_crop {
            let (cw, ch) = match &p.crop_size {
                Some(SizeSpec::Side(s)) => (*s as u32, *s as u32),
                Some(SizeSpec::Map {
                    height: Some(hh),
                    width: Some(ww),
                    ..
                }) => (*ww as u32, *hh as u32),
                _ => bail!("preprocessor_config.json: a crop_size this engine does not read"),
            };
            let (iw, ih) = img.dimensions();
            if cw > iw || ch > ih {
                bail!("safety checker: the image is smaller than the crop after resizing");
            }
            let (left, top) = ((iw - cw) / 2, (ih - ch) / 2);
            img = image::imageops::crop_imm(&img, left, top, cw, ch).to_image();
        }
        let (iw, ih) = img.dimensions();
        // OpenAI CLIP's (transformers' OPENAI_CLIP_MEAN / _STD), as f32.
        let mean = p
            .image_mean
            .unwrap_or([0.481_454_66, 0.457_827_5, 0.408_210_73]);
        let std = p
            .image_std
            .unwrap_or([0.268_629_5, 0.261_302_6, 0.275_777_1]);
        let scale = if p.do_rescale {
            p.rescale_factor as f32
        } else {
            1.0
        };
        let mut data = vec![0f32; 3 * (iw * ih) as usize];
        let plane = (iw * ih) as usize;
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                let mut v = px.0[c] as f32 * scale;
                if p.do_normalize {
                    v = (v - mean[c]) / std[c];
                }
                data[c * plane + i] = v;
            }
        }
        Ok(Tensor::from_vec(
            data,
            (3, ih as usize, iw as usize),
            &self.device,
        )?)
    }

    /// The projected image embeddings of `images`, `(n, projection_dim)`.
    fn embeds(&self, images: &[&RgbImage]) -> Result<Tensor> {
        let pixels = images
            .iter()
            .map(|i| self.pixels(i))
            .collect::<Result<Vec<_>>>()?;
        let x = Tensor::stack(&pixels, 0)?;
        let n = x.dim(0)?;
        let patches = x.conv2d(&self.patch_embedding, 0, self.patch, 1, 1)?;
        let patches = patches.flatten_from(2)?.transpose(1, 2)?;
        let h = self.class_embedding.dim(0)?;
        let class = self.class_embedding.reshape((1, 1, h))?.repeat((n, 1, 1))?;
        let x = Tensor::cat(&[&class, &patches], 1)?;
        let positions = self.position_embedding.i(0..x.dim(1)?)?.unsqueeze(0)?;
        let mut x = self.pre_norm.forward(&x.broadcast_add(&positions)?)?;
        for layer in &self.layers {
            x = layer.forward(&x, None)?;
        }
        let pooled = self.post_norm.forward(&x.i((.., 0, ..))?.contiguous()?)?;
        self.projection.forward(&pooled)
    }

    /// diffusers' verdict on each image.
    pub fn check(&self, images: &[&RgbImage]) -> Result<Vec<Verdict>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let e = normalize(&self.embeds(images)?)?;
        let special = e
            .matmul(&normalize(&self.special)?.t()?)?
            .to_vec2::<f32>()?;
        let concepts = e
            .matmul(&normalize(&self.concepts)?.t()?)?
            .to_vec2::<f32>()?;
        // Rounded as numpy rounds float32 scores (diffusers' `round(score, 3)`).
        let round3 = |x: f32| (x * 1000.0).round_ties_even() / 1000.0;
        Ok(special
            .iter()
            .zip(&concepts)
            .map(|(s, c)| {
                let mut adjustment = 0f32;
                let special_scores: Vec<f32> = s
                    .iter()
                    .zip(&self.special_thresholds)
                    .map(|(cos, t)| {
                        let score = round3(cos - t + adjustment);
                        if score > 0.0 {
                            adjustment = 0.01;
                        }
                        score
                    })
                    .collect();
                let concept_scores: Vec<f32> = c
                    .iter()
                    .zip(&self.concept_thresholds)
                    .map(|(cos, t)| round3(cos - t + adjustment))
                    .collect();
                let nsfw = concept_scores.iter().any(|&s| s > 0.0);
                Verdict {
                    special_scores,
                    concept_scores,
                    nsfw,
                }
            })
            .collect())
    }
}

/// Rows scaled to unit length (torch's `normalize`, eps 1e-12).
fn normalize(t: &Tensor) -> Result<Tensor> {
    let norm = t.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    Ok(t.broadcast_div(&norm)?)
}

/// `img` replaced as `how` says, same size.
pub fn replace(img: &RgbImage, how: Replacement) -> RgbImage {
    let (w, h) = img.dimensions();
    match how {
        Replacement::Black => RgbImage::new(w, h),
        Replacement::Blur => {
            let sigma = (w.max(h) as f32 / 16.0).max(2.0);
            image::imageops::blur(img, sigma)
        }
        Replacement::Pixelate => {
            let cells = 16u32;
            let small = image::imageops::resize(
                img,
                cells.min(w),
                cells.min(h),
                image::imageops::FilterType::Triangle,
            );
            image::imageops::resize(&small, w, h, image::imageops::FilterType::Nearest)
        }
        Replacement::SensitiveContentText => sensitive_content(w, h),
    }
}

/// A dark grey image with "SENSITIVE CONTENT" in the middle, in an 8x8 bitmap font scaled to
/// the image.
fn sensitive_content(w: u32, h: u32) -> RgbImage {
    use font8x8::UnicodeFonts;
    let mut img = RgbImage::from_pixel(w, h, image::Rgb([32, 32, 32]));
    let text = "SENSITIVE CONTENT";
    let chars = text.chars().count() as u32;
    let scale = (w / (chars * 8 + 8)).max(1);
    let (tw, th) = (chars * 8 * scale, 8 * scale);
    let (x0, y0) = (w.saturating_sub(tw) / 2, h.saturating_sub(th) / 2);
    for (k, c) in text.chars().enumerate() {
        let Some(glyph) = font8x8::BASIC_FONTS.get(c) else {
            continue;
        };
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8u32 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let x = x0 + (k as u32 * 8 + col) * scale + dx;
                        let y = y0 + row as u32 * scale + dy;
                        if x < w && y < h {
                            img.put_pixel(x, y, image::Rgb([230, 230, 230]));
                        }
                    }
                }
            }
        }
    }
    img
}
