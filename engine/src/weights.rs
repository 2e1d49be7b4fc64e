//! Safetensors weights with errors that name the file and the tensor.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};

/// Finds the safetensors file(s) of a component folder, as diffusers / transformers name
/// them: `{base}.safetensors`, a sharded `{base}.safetensors.index.json` (its `weight_map` names
/// the shards), or their `fp16` variants `{base}.fp16.safetensors` and
/// `{base}.safetensors.index.fp16.json` (shards such as `{base}.fp16-00001-of-00002.safetensors`,
/// as the index says). The plain files are preferred, as diffusers loads them without a
/// `variant`. Shards listed by an index must all exist (the error names the missing one).
pub fn find_weight_files(dir: &Path, base: &str) -> Result<Vec<PathBuf>> {
    for variant in ["", "fp16"] {
        let (single, indexes) = if variant.is_empty() {
            (
                format!("{base}.safetensors"),
                vec![format!("{base}.safetensors.index.json")],
            )
        } else {
            (
                format!("{base}.{variant}.safetensors"),
                vec![
                    format!("{base}.safetensors.index.{variant}.json"),
                    // Written by some older tools.
                    format!("{base}.{variant}.safetensors.index.json"),
                ],
            )
        };
        let single = dir.join(single);
        if single.is_file() {
            return Ok(vec![single]);
        }
        for index in indexes {
            let index = dir.join(index);
            if !index.is_file() {
                continue;
            }
            let json: serde_json::Value = super::config::read_json(&index)?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{}: no `weight_map`", index.display()))?;
            let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
            if let Some(missing) = files.iter().find(|f| !f.is_file()) {
                bail!(
                    "weights file {} (listed in {}) is missing",
                    missing.display(),
                    index.display()
                );
            }
            return Ok(files);
        }
    }
    bail!(
        "no weights in {}: expected {base}.safetensors, {base}.safetensors.index.json or their fp16 variants ({base}.fp16.safetensors, {base}.safetensors.index.fp16.json)",
        dir.display()
    )
}

/// Where tensors come from: safetensors files, or (for [`super::tiny`]) freshly drawn random
/// values that are recorded so they can be written out.
#[derive(Clone)]
enum Backend {
    Files {
        files: Arc<Vec<PathBuf>>,
        st: Arc<MmapedSafetensors>,
        /// Every tensor handed out so far (converted), so that a model rebuilt with
        /// [`Weights::patched`] shares the tensors it does not change instead of loading
        /// them again (candle tensors are reference-counted: no copy).
        memo: Arc<Mutex<HashMap<String, Tensor>>>,
    },
    /// The tensors a model was built from, without the files ([`Weights::detached`]).
    Loaded(Arc<HashMap<String, Tensor>>),
    #[cfg(feature = "random-weights")]
    Random(Arc<Mutex<RandomInit>>),
}

/// Deterministic random initialisation: every requested tensor is drawn, in request order,
/// from one torch-compatible generator, and recorded with its full name.
#[cfg(feature = "random-weights")]
pub struct RandomInit {
    generator: super::noise::TorchGenerator,
    pub tensors: Vec<(String, Tensor)>,
}

/// A view on a set of weights under a name prefix, like diffusers' module tree.
#[derive(Clone)]
pub struct Weights {
    backend: Backend,
    /// Tensors to add to the stored ones (full names), e.g. merged LoRA deltas.
    patches: Option<Arc<HashMap<String, Tensor>>>,
    prefix: String,
    device: Device,
    dtype: DType,
}

impl Weights {
    pub fn open(files: &[PathBuf], device: &Device, dtype: DType) -> Result<Self> {
        for f in files {
            if !f.is_file() {
                bail!("weights file {} is missing", f.display());
            }
        }
        // SAFETY: the files are memory-mapped read-only; the engine never writes to them while
        // loaded (a model folder must not be modified while a server uses it).
        let st = unsafe { MmapedSafetensors::multi(files) }
            .with_context(|| format!("cannot open safetensors {}", describe(files)))?;
        Ok(Weights {
            backend: Backend::Files {
                files: Arc::new(files.to_vec()),
                st: Arc::new(st),
                memo: Arc::default(),
            },
            patches: None,
            prefix: String::new(),
            device: device.clone(),
            dtype,
        })
    }

    /// Random weights drawn from a generator seeded with `seed` (f32, CPU).
    #[cfg(feature = "random-weights")]
    pub fn random(seed: u64) -> Self {
        Weights {
            backend: Backend::Random(Arc::new(Mutex::new(RandomInit {
                generator: super::noise::TorchGenerator::new(seed),
                tensors: Vec::new(),
            }))),
            patches: None,
            prefix: String::new(),
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }

    /// The tensors drawn so far by a [`Weights::random`] view (empty for files).
    #[cfg(feature = "random-weights")]
    pub fn drawn(&self) -> Vec<(String, Tensor)> {
        match &self.backend {
            Backend::Random(r) => r.lock().map(|r| r.tensors.clone()).unwrap_or_default(),
            Backend::Files { .. } | Backend::Loaded(_) => Vec::new(),
        }
    }

    /// The same weights with `patches` (full tensor name -> tensor of the same shape, any
    /// float dtype) added to the stored tensors they name; added in f32, then converted
    /// to the engine dtype. Tensors already handed out are shared, not loaded again.
    pub fn patched(&self, patches: HashMap<String, Tensor>) -> Weights {
        let mut w = self.clone();
        w.patches = (!patches.is_empty()).then(|| Arc::new(patches));
        w
    }

    /// The tensors handed out so far, without the files behind them: what a model keeps to
    /// build a patched copy of itself ([`Weights::patched`]), so that it does not hold the
    /// memory-mapped files open (their pages would stay in its resident memory).
    pub fn detached(&self) -> Weights {
        let backend = match &self.backend {
            Backend::Files { memo, .. } => {
                let suffix = format!("@{:?}", self.dtype);
                let memo = memo.lock().map(|m| m.clone()).unwrap_or_default();
                Backend::Loaded(Arc::new(
                    memo.into_iter()
                        .filter_map(|(k, t)| Some((k.strip_suffix(&suffix)?.to_string(), t)))
                        .collect(),
                ))
            }
            other => other.clone(),
        };
        Weights {
            backend,
            ..self.clone()
        }
    }

    /// The full names of every stored tensor (empty for random weights).
    pub fn names(&self) -> Vec<String> {
        match &self.backend {
            Backend::Files { st, .. } => st.tensors().into_iter().map(|(n, _)| n).collect(),
            Backend::Loaded(m) => m.keys().cloned().collect(),
            #[cfg(feature = "random-weights")]
            Backend::Random(_) => Vec::new(),
        }
    }

    /// The shape of stored tensor `prefix.name`, if there is one.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        match &self.backend {
            Backend::Files { st, .. } => st.get(&self.full(name)).ok().map(|v| v.shape().to_vec()),
            Backend::Loaded(m) => m.get(&self.full(name)).map(|t| t.dims().to_vec()),
            #[cfg(feature = "random-weights")]
            Backend::Random(_) => None,
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The sub-tree `prefix.name`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Weights {
        let mut w = self.clone();
        w.prefix = self.full(&name.to_string());
        w
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// Whether `prefix.name` exists (always true for random weights).
    pub fn contains(&self, name: &str) -> bool {
        match &self.backend {
            Backend::Files { st, .. } => st.get(&self.full(name)).is_ok(),
            Backend::Loaded(m) => m.contains_key(&self.full(name)),
            #[cfg(feature = "random-weights")]
            Backend::Random(_) => true,
        }
    }

    /// Loads `prefix.name`, checks its shape and converts it to the engine dtype and device
    /// (plus its patch, if it has one).
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        let full = self.full(name);
        let expected: Shape = shape.into();
        let stored = self.get_stored(&expected, &full)?;
        match self.patches.as_ref().and_then(|p| p.get(&full)) {
            None => Ok(stored),
            Some(patch) => {
                if patch.dims() != expected.dims() {
                    bail!(
                        "a patch of `{full}` has shape {:?}, the tensor {:?}",
                        patch.dims(),
                        expected.dims()
                    );
                }
                let sum = (stored.to_dtype(DType::F32)?
                    + patch.to_dtype(DType::F32)?.to_device(stored.device())?)?;
                Ok(sum.to_dtype(self.dtype)?)
            }
        }
    }

    fn get_stored(&self, expected: &Shape, full: &str) -> Result<Tensor> {
        let (files, st, memo) = match &self.backend {
            Backend::Files { files, st, memo } => (files, st, memo),
            Backend::Loaded(m) => {
                let t = m.get(full).with_context(|| {
                    format!("tensor `{full}` was not part of the model when it was loaded")
                })?;
                if t.dims() != expected.dims() {
                    bail!(
                        "tensor `{full}` has shape {:?}, expected {:?}",
                        t.dims(),
                        expected.dims()
                    );
                }
                return Ok(t.clone());
            }
            #[cfg(feature = "random-weights")]
            Backend::Random(r) => {
                let mut r = r
                    .lock()
                    .map_err(|_| anyhow::anyhow!("random init poisoned"))?;
                let t = random_tensor(&mut r.generator, full, expected.dims())?;
                r.tensors.push((full.to_string(), t.clone()));
                return Ok(t);
            }
        };
        let memo_key = format!("{full}@{:?}", self.dtype);
        if let Some(t) = memo.lock().ok().and_then(|m| m.get(&memo_key).cloned()) {
            return Ok(t);
        }
        let view = st.get(full).map_err(|_| {
            anyhow::anyhow!(
                "{}: missing tensor `{full}` (expected shape {expected:?})",
                describe(files)
            )
        })?;
        if view.shape() != expected.dims() {
            bail!(
                "{}: tensor `{full}` has shape {:?}, expected {:?}",
                describe(files),
                view.shape(),
                expected.dims()
            );
        }
        let t = st
            .load(full, &Device::Cpu)
            .with_context(|| format!("{}: cannot load tensor `{full}`", describe(files)))?;
        let t = t.to_dtype(self.dtype)?.to_device(&self.device)?;
        if let Ok(mut m) = memo.lock() {
            m.insert(memo_key, t.clone());
        }
        Ok(t)
    }
}

/// The initialisation rule of the tiny random models, chosen from the tensor's name/shape:
/// norm scales `1 + 0.1 n`, norm shifts and biases `0.1 n` / `0.02 n`, CLIP embeddings
/// `0.02 n`, other weights `n / sqrt(fan_in)` (`n` standard normal).
#[cfg(feature = "random-weights")]
fn random_tensor(
    g: &mut super::noise::TorchGenerator,
    name: &str,
    dims: &[usize],
) -> Result<Tensor> {
    let numel: usize = dims.iter().product();
    let n = g.randn_vec(numel);
    let leaf = name.rsplit('.').next().unwrap_or("");
    let is_norm = dims.len() == 1 && name.contains("norm");
    let data: Vec<f32> = if is_norm && leaf == "weight" {
        n.iter().map(|v| 1.0 + 0.1 * v).collect()
    } else if is_norm {
        n.iter().map(|v| 0.1 * v).collect()
    } else if leaf == "bias" {
        n.iter().map(|v| 0.02 * v).collect()
    } else if name.ends_with("token_embedding.weight")
        || name.ends_with("position_embedding.weight")
    {
        n.iter().map(|v| 0.02 * v).collect()
    } else {
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let std = 1.0 / (fan_in as f32).sqrt();
        n.iter().map(|v| v * std).collect()
    };
    Ok(Tensor::from_vec(data, dims, &Device::Cpu)?)
}

fn describe(files: &[PathBuf]) -> String {
    match files {
        [one] => one.display().to_string(),
        many => many
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    }
}
