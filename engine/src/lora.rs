//! LoRA files, read as diffusers' `load_lora_weights` reads them, and merged into a model's
//! weights ([`crate::Pipeline::with_loras`]).
//!
//! Formats:
//! - diffusers / PEFT (`save_lora_weights`): `unet.<module>.lora_A.weight` / `lora_B.weight`
//!   (and the older `.lora.down` / `.lora.up` and attention-processor `to_q_lora` forms),
//!   `text_encoder.` / `text_encoder_2.` keys; `lora_alpha`, `alpha_pattern` and `use_rslora`
//!   from the header's `lora_adapter_metadata`, else alpha = rank (scale 1).
//! - kohya / A1111: `lora_unet_*`, `lora_te_*` / `lora_te1_*`, `lora_te2_*` with
//!   `.lora_down.weight`, `.lora_up.weight` and `.alpha`; SDXL files in the original (SGM)
//!   block names (`input_blocks_4_1_...`) are mapped to diffusers' as diffusers maps them.
//!
//! Each layer gets `W + weight * alpha / rank * (up @ down)` (1x1 `up` and k x k `down` for
//! convolutions), which is PEFT's unmerged forward up to float rounding. Where diffusers
//! departs from kohya's own rule (a kohya file whose layers have different alphas: diffusers
//! uses the most common one for several layers), this follows the file: each layer its own
//! alpha, a missing alpha meaning alpha = rank.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};

use crate::error::EngineError;

/// Which model a LoRA layer patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    Unet,
    /// Text encoder `0` (`text_encoder`) or `1` (`text_encoder_2`).
    TextEncoder(usize),
}

/// How a layer is named in the file.
#[derive(Clone, Debug)]
enum LayerName {
    /// diffusers' module path (`down_blocks.0.attentions.0.proj_in`; text encoders without
    /// the `text_model.` prefix).
    Module(String),
    /// kohya's flattened name after its prefix (`down_blocks_0_attentions_0_proj_in`, or the
    /// SGM `input_blocks_1_1_proj_in`).
    Flat(String),
}

#[derive(Clone, Debug)]
struct Layer {
    component: Component,
    name: LayerName,
    down: Tensor,
    up: Tensor,
    up_bias: Option<Tensor>,
    alpha: f64,
}

/// A LoRA file, read.
#[derive(Clone, Debug)]
pub struct Lora {
    pub path: PathBuf,
    layers: Vec<Layer>,
}

/// PEFT's per-component adapter config from the header metadata.
#[derive(Default)]
struct AdapterMeta {
    lora_alpha: Option<f64>,
    alpha_pattern: Vec<(String, f64)>,
    use_rslora: bool,
}

impl Lora {
    /// Reads a LoRA safetensors file (either format).
    pub fn load(path: &Path) -> Result<Lora> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading LoRA {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)
                .with_context(|| format!("{}: tensor {name}", path.display()))?;
            tensors.insert(name, t.to_dtype(DType::F32)?);
        }
        let meta = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("lora_adapter_metadata"))
            .map(|s| serde_json::from_str::<serde_json::Value>(s))
            .transpose()
            .with_context(|| format!("{}: lora_adapter_metadata is not JSON", path.display()))?;
        let layers = if tensors.keys().all(|k| {
            ["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"]
                .iter()
                .any(|p| k.starts_with(p))
        }) {
            kohya_layers(tensors)
        } else {
            peft_layers(tensors, meta.as_ref())
        }
        .with_context(|| format!("LoRA {}", path.display()))?;
        if layers.is_empty() {
            bail!("LoRA {}: no LoRA layers in it", path.display());
        }
        Ok(Lora {
            path: path.to_path_buf(),
            layers,
        })
    }

    /// The number of layers it patches.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

fn kohya_layers(mut tensors: HashMap<String, Tensor>) -> Result<Vec<Layer>> {
    // DoRA's magnitude is dropped by diffusers (with a warning): the file runs as a plain LoRA.
    tensors.retain(|k, _| !k.ends_with(".dora_scale"));
    let downs: Vec<String> = tensors
        .keys()
        .filter_map(|k| k.strip_suffix(".lora_down.weight"))
        .map(String::from)
        .collect();
    let mut layers = Vec::new();
    for base in downs {
        let down = tensors
            .remove(&format!("{base}.lora_down.weight"))
            .expect("listed");
        let up = tensors
            .remove(&format!("{base}.lora_up.weight"))
            .with_context(|| format!("{base}: lora_down without lora_up"))?;
        let rank = down.dim(0)? as f64;
        let alpha = match tensors.remove(&format!("{base}.alpha")) {
            Some(a) => a
                .flatten_all()?
                .to_vec1::<f32>()?
                .first()
                .copied()
                .unwrap_or(0.0) as f64,
            None => rank,
        };
        let (component, rest) = if let Some(r) = base.strip_prefix("lora_unet_") {
            (Component::Unet, r)
        } else if let Some(r) = base.strip_prefix("lora_te2_") {
            (Component::TextEncoder(1), r)
        } else if let Some(r) = base
            .strip_prefix("lora_te1_")
            .or_else(|| base.strip_prefix("lora_te_"))
        {
            (Component::TextEncoder(0), r)
        } else {
            bail!("{base}: not a kohya LoRA layer name");
        };
        layers.push(Layer {
            component,
            name: LayerName::Flat(rest.to_string()),
            down,
            up,
            up_bias: None,
            alpha,
        });
    }
    if let Some(left) = tensors.keys().min() {
        bail!(
            "`{left}` is not part of a LoRA layer (LyCORIS LoHa / LoKr and full-weight diffs are not supported; a LoRA has lora_down, lora_up and alpha)"
        );
    }
    Ok(layers)
}

/// The module a PEFT / diffusers key belongs to and which tensor it is: the attention
/// processors' `to_q_lora.down` form and `.lora.down` / `.lora_linear_layer.down` are
/// mapped to `lora_A` as diffusers' converters do.
fn peft_key(key: &str) -> Option<(String, &'static str)> {
    let k = key.replace(".processor.", ".");
    let k = k
        .replace("to_out_lora.", "to_out.0.lora.")
        .replace("_lora.", ".lora.")
        .replace(".lora_linear_layer.", ".lora.");
    for (suffix, what) in [
        (".lora_A.weight", "down"),
        (".lora_B.weight", "up"),
        (".lora_B.bias", "up_bias"),
        (".lora.down.weight", "down"),
        (".lora.up.weight", "up"),
        (".lora_magnitude_vector", "magnitude"),
        (".lora_magnitude_vector.weight", "magnitude"),
    ] {
        if let Some(m) = k.strip_suffix(suffix) {
            return Some((m.to_string(), what));
        }
    }
    None
}

fn peft_layers(
    tensors: HashMap<String, Tensor>,
    meta: Option<&serde_json::Value>,
) -> Result<Vec<Layer>> {
    let mut parts: BTreeMap<(Component, String), HashMap<&'static str, Tensor>> = BTreeMap::new();
    for (key, t) in tensors {
        let (component, rest) = if let Some(r) = key.strip_prefix("unet.") {
            (Component::Unet, r)
        } else if let Some(r) = key.strip_prefix("text_encoder_2.") {
            (Component::TextEncoder(1), r)
        } else if let Some(r) = key.strip_prefix("text_encoder.") {
            (Component::TextEncoder(0), r)
        } else {
            bail!(
                "`{key}`: not a LoRA key diffusers reads (diffusers format: unet.*, text_encoder.*, text_encoder_2.*; kohya: lora_unet_*, lora_te*_*)"
            );
        };
        let (module, what) = peft_key(rest).with_context(|| {
            format!("`{key}`: not a LoRA tensor (lora_A / lora_B / lora.down / lora.up)")
        })?;
        if what == "magnitude" {
            bail!("`{key}`: DoRA LoRAs are not supported");
        }
        let module = match component {
            Component::Unet => module,
            _ => module
                .strip_prefix("text_model.")
                .map(String::from)
                .unwrap_or(module),
        };
        parts
            .entry((component, module))
            .or_default()
            .insert(what, t);
    }
    let metas: HashMap<Component, AdapterMeta> = [
        (Component::Unet, "unet"),
        (Component::TextEncoder(0), "text_encoder"),
        (Component::TextEncoder(1), "text_encoder_2"),
    ]
    .into_iter()
    .map(|(c, prefix)| (c, adapter_meta(meta, prefix)))
    .collect();
    let mut layers = Vec::new();
    for ((component, module), mut p) in parts {
        let (Some(down), Some(up)) = (p.remove("down"), p.remove("up")) else {
            bail!("{module}: a LoRA layer needs both lora_A and lora_B");
        };
        let rank = down.dim(0)? as f64;
        let m = &metas[&component];
        let alpha = m
            .alpha_pattern
            .iter()
            .find(|(pat, _)| suffix_matches(&module, pat))
            .map(|(_, a)| *a)
            .or(m.lora_alpha)
            .unwrap_or(rank);
        // rsLoRA scales by alpha / sqrt(rank): folded into alpha here.
        let alpha = if m.use_rslora {
            alpha * rank.sqrt()
        } else {
            alpha
        };
        layers.push(Layer {
            component,
            name: LayerName::Module(module),
            down,
            up,
            up_bias: p.remove("up_bias"),
            alpha,
        });
    }
    Ok(layers)
}

/// PEFT's pattern match: the pattern, as a dotted suffix of the module path.
fn suffix_matches(module: &str, pattern: &str) -> bool {
    module == pattern || module.ends_with(&format!(".{pattern}"))
}

fn adapter_meta(meta: Option<&serde_json::Value>, prefix: &str) -> AdapterMeta {
    let Some(meta) = meta else {
        return AdapterMeta::default();
    };
    let get = |k: &str| meta.get(format!("{prefix}.{k}"));
    AdapterMeta {
        lora_alpha: get("lora_alpha").and_then(|v| v.as_f64()),
        alpha_pattern: get("alpha_pattern")
            .and_then(|v| v.as_object())
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default(),
        use_rslora: get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false),
    }
}

/// kohya's SDXL names in the original model's block layout (`input_blocks_I_J_...`,
/// `middle_block_I_...`, `output_blocks_I_J_...`, their resnets' `in_layers_2` etc.) in
/// diffusers' layout, as diffusers' `_maybe_map_sgm_blocks_to_diffusers` and
/// `_convert_unet_lora_key` map them. `layers` is the UNet's `layers_per_block`.
fn sgm_to_diffusers(flat: &str, layers: usize) -> Option<String> {
    let num = |s: &str| s.parse::<usize>().ok();
    let parts: Vec<&str> = flat.split('_').collect();
    let inner = ["resnets", "attentions", "upsamplers"];
    let (head, rest): (String, &[&str]) = match parts.as_slice() {
        ["input", "blocks", "0", "0", rest @ ..] => ("conv_in".into(), rest),
        ["input", "blocks", i, j, rest @ ..] => {
            let (i, j) = (num(i)?, num(j)?);
            let (block, layer) = ((i - 1) / (layers + 1), (i - 1) % (layers + 1));
            if rest.first() == Some(&"op") {
                (
                    format!("down_blocks_{block}_downsamplers_0_conv"),
                    &rest[1..],
                )
            } else {
                (
                    format!("down_blocks_{block}_{}_{layer}", inner.get(j)?),
                    rest,
                )
            }
        }
        ["middle", "block", i, rest @ ..] => {
            let which = ["resnets_0", "attentions_0", "resnets_1"].get(num(i)?)?;
            (format!("mid_block_{which}"), rest)
        }
        ["output", "blocks", i, j, rest @ ..] => {
            let (i, j) = (num(i)?, num(j)?);
            let (block, layer) = (i / (layers + 1), i % (layers + 1));
            let layer = if j < 2 { layer } else { 0 };
            (format!("up_blocks_{block}_{}_{layer}", inner.get(j)?), rest)
        }
        ["time", "embed", i, rest @ ..] => {
            (format!("time_embedding_linear_{}", num(i)? / 2 + 1), rest)
        }
        ["label", "emb", "0", i, rest @ ..] => {
            (format!("add_embedding_linear_{}", num(i)? / 2 + 1), rest)
        }
        ["out", "2"] => ("conv_out".into(), &[]),
        _ => return None,
    };
    let rest = rest.join("_");
    let rest = match rest.as_str() {
        "in_layers_2" => "conv1".to_string(),
        "out_layers_3" => "conv2".to_string(),
        "emb_layers_1" => "time_emb_proj".to_string(),
        "skip_connection" => "conv_shortcut".to_string(),
        // An upsampler's conv is named `conv` in both layouts.
        _ => rest,
    };
    Some(
        if rest.is_empty() || head.ends_with("_conv") && rest == "conv" {
            head
        } else {
            format!("{head}_{rest}")
        },
    )
}

/// The weights of one model a LoRA can patch: module path -> (weight name, shape), with
/// kohya's flattened names for the lookup.
pub(crate) struct Targets {
    modules: HashMap<String, (String, Vec<usize>)>,
    flat: HashMap<String, String>,
}

impl Targets {
    /// From a model's weight names and shapes; `strip` is removed from the start of each
    /// module path (the text encoders' `text_model.`), `layers_per_block` is the UNet's (for
    /// SGM names; `None` for text encoders).
    pub(crate) fn new(weights: &crate::weights::Weights, strip: &str) -> Targets {
        let mut modules = HashMap::new();
        let mut flat = HashMap::new();
        for name in weights.names() {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            let Some(shape) = weights.shape_of(&name) else {
                continue;
            };
            if shape.len() != 2 && shape.len() != 4 {
                continue;
            }
            let module = module.strip_prefix(strip).unwrap_or(module).to_string();
            flat.insert(module.replace('.', "_"), module.clone());
            modules.insert(module, (name, shape));
        }
        Targets { modules, flat }
    }
}

impl Lora {
    /// The deltas this LoRA adds at `weight` to each weight of `component`, added into
    /// `into` (full weight names). Layers this model does not have are skipped (counted in
    /// the result: matched, skipped); a layer whose shape does not fit is an error.
    pub(crate) fn add_deltas(
        &self,
        component: Component,
        targets: &Targets,
        sgm_layers: Option<usize>,
        weight: f64,
        device: &Device,
        into: &mut HashMap<String, Tensor>,
    ) -> Result<(usize, usize)> {
        let (mut matched, mut skipped) = (0, 0);
        for layer in self.layers.iter().filter(|l| l.component == component) {
            let module = match &layer.name {
                LayerName::Module(m) => targets.modules.get_key_value(m).map(|(k, _)| k.clone()),
                LayerName::Flat(f) => {
                    let f = f.strip_prefix("text_model_").unwrap_or(f);
                    targets.flat.get(f).cloned().or_else(|| {
                        let mapped = sgm_to_diffusers(f, sgm_layers?)?;
                        targets.flat.get(&mapped).cloned()
                    })
                }
            };
            let Some(module) = module else {
                skipped += 1;
                continue;
            };
            let (name, shape) = &targets.modules[&module];
            let delta = layer.delta(shape, weight, device).map_err(|e| {
                EngineError::invalid(
                    "loras",
                    format!(
                        "{} does not fit this model: layer {module}: {e}",
                        self.path.display()
                    ),
                )
            })?;
            accumulate(into, name.clone(), delta)?;
            if let Some(b) = &layer.up_bias {
                let scale = weight * layer.alpha / layer.down.dim(0)? as f64;
                let bias_name = format!("{}bias", name.strip_suffix("weight").unwrap_or(name));
                accumulate(into, bias_name, (b.to_device(device)? * scale)?)?;
            }
            matched += 1;
        }
        Ok((matched, skipped))
    }
}

fn accumulate(into: &mut HashMap<String, Tensor>, name: String, delta: Tensor) -> Result<()> {
    let sum = match into.remove(&name) {
        Some(prev) => (prev + delta)?,
        None => delta,
    };
    into.insert(name, sum);
    Ok(())
}

impl Layer {
    /// `weight * alpha / rank * up @ down`, shaped as the target weight (`shape`).
    fn delta(&self, shape: &[usize], weight: f64, device: &Device) -> Result<Tensor> {
        let rank = self.down.dim(0)?;
        let out = shape[0];
        let inner: usize = shape[1..].iter().product();
        let (dn, up_n) = (self.down.elem_count(), self.up.elem_count());
        if dn != rank * inner || up_n != out * rank {
            bail!(
                "the LoRA's down {:?} / up {:?} do not make the model's {:?}",
                self.down.dims(),
                self.up.dims(),
                shape
            );
        }
        let down = self.down.to_device(device)?.reshape((rank, inner))?;
        let up = self.up.to_device(device)?.reshape((out, rank))?;
        let scale = weight * self.alpha / rank as f64;
        Ok((up.matmul(&down)? * scale)?.reshape(shape)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgm_names_map_as_diffusers_maps_them() {
        for (sgm, diffusers) in [
            (
                "input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q",
            ),
            (
                "input_blocks_5_1_proj_in",
                "down_blocks_1_attentions_1_proj_in",
            ),
            ("input_blocks_3_0_op", "down_blocks_0_downsamplers_0_conv"),
            (
                "input_blocks_1_0_in_layers_2",
                "down_blocks_0_resnets_0_conv1",
            ),
            (
                "input_blocks_2_0_emb_layers_1",
                "down_blocks_0_resnets_1_time_emb_proj",
            ),
            (
                "input_blocks_4_0_skip_connection",
                "down_blocks_1_resnets_0_conv_shortcut",
            ),
            ("middle_block_1_proj_out", "mid_block_attentions_0_proj_out"),
            ("middle_block_2_out_layers_3", "mid_block_resnets_1_conv2"),
            ("output_blocks_2_2_conv", "up_blocks_0_upsamplers_0_conv"),
            (
                "output_blocks_4_1_proj_out",
                "up_blocks_1_attentions_1_proj_out",
            ),
            (
                "output_blocks_8_0_skip_connection",
                "up_blocks_2_resnets_2_conv_shortcut",
            ),
            ("time_embed_0", "time_embedding_linear_1"),
            ("label_emb_0_2", "add_embedding_linear_2"),
            ("input_blocks_0_0", "conv_in"),
            ("out_2", "conv_out"),
        ] {
            assert_eq!(
                sgm_to_diffusers(sgm, 2).as_deref(),
                Some(diffusers),
                "{sgm}"
            );
        }
        assert_eq!(sgm_to_diffusers("down_blocks_0_resnets_0_conv1", 2), None);
    }

    #[test]
    fn peft_keys_of_every_diffusers_form() {
        for (key, module, what) in [
            (
                "down_blocks.0.attentions.0.proj_in.lora_A.weight",
                "down_blocks.0.attentions.0.proj_in",
                "down",
            ),
            (
                "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.lora.up.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn1.to_q",
                "up",
            ),
            (
                "mid_block.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight",
                "mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0",
                "down",
            ),
            (
                "text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight",
                "text_model.encoder.layers.0.self_attn.q_proj",
                "up",
            ),
        ] {
            assert_eq!(peft_key(key), Some((module.to_string(), what)), "{key}");
        }
    }
}
