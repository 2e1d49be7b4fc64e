//! The loaded models: each catalog source loads once (names that share a source share
//! it), on first use or at start (`preload`), and within a memory budget: before a
//! model loads, the least recently used others are unloaded until it fits. A model in
//! use by a running batch stays alive until that batch ends (it is reference-counted).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::Context;
use candle_core::{DType, Device};
use serde::Serialize;

use super::catalog::AddOn;
use super::convert::AddOnChoice;
use crate::engine::depth::DepthEstimator;
use crate::engine::embeddings::Embedding;
use crate::engine::lora::Lora;
use crate::engine::safety::SafetyChecker;
use crate::engine::weights::find_weight_files;
use crate::engine::{ControlNet, EngineError, ModelInfo, Pipeline, T5Placement};

/// A loaded model.
#[derive(Clone)]
pub struct Loaded {
    pub pipeline: Arc<Pipeline>,
    pub info: ModelInfo,
}

enum State {
    Loading,
    Ready(Loaded),
    /// The last load failed (the next request tries again).
    Failed(String),
}

/// Most variants (a model with a VAE or LoRAs) kept per loaded model; the least recently
/// used goes first. A variant shares the model's unchanged weights: it costs the merged
/// layers only.
const MAX_VARIANTS: usize = 4;

struct Variant {
    add_ons: AddOnChoice,
    loaded: Loaded,
    last_used: u64,
}

struct Slot {
    state: State,
    /// Variants of the loaded model (dropped with it).
    variants: Vec<Variant>,
    /// Estimated bytes of the weights in memory.
    bytes: u64,
    last_used: u64,
}

pub struct Registry {
    device: Device,
    /// Safety checkers by where they come from (a model folder, or the catalog's);
    /// `None`: that model has none.
    checkers: Mutex<HashMap<String, Option<Arc<SafetyChecker>>>>,
    /// ControlNets by source, loaded on first use and kept (counted in `kept_bytes`).
    controlnets: Mutex<HashMap<String, Arc<ControlNet>>>,
    /// Depth models by source, likewise.
    depth: Mutex<HashMap<String, Arc<DepthEstimator>>>,
    /// Estimated bytes of the ControlNets and depth models kept: counted against the
    /// budget (models are unloaded to make room for them), never unloaded themselves.
    kept_bytes: AtomicU64,
    /// The dtype each source runs in (the catalog's), else `default_dtype` (the server's).
    dtypes: HashMap<String, DType>,
    /// SD 3's T5 placement by source (default: on the device).
    t5: HashMap<String, T5Placement>,
    default_dtype: DType,
    budget: Option<u64>,
    slots: Mutex<HashMap<String, Slot>>,
    changed: Condvar,
    clock: AtomicU64,
    /// Called after every load or unload with the number of loaded models.
    on_change: Box<dyn Fn(usize) + Send + Sync>,
}

/// A source's state, for `GET /v1/models`.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    NotLoaded,
    Loading,
    Loaded,
    Failed(String),
}

impl Registry {
    pub fn new(
        device: Device,
        (default_dtype, dtypes): (DType, HashMap<String, DType>),
        budget: Option<u64>,
        on_change: Box<dyn Fn(usize) + Send + Sync>,
    ) -> Registry {
        Registry {
            device,
            checkers: Mutex::default(),
            controlnets: Mutex::default(),
            depth: Mutex::default(),
            kept_bytes: AtomicU64::new(0),
            dtypes,
            t5: HashMap::new(),
            default_dtype,
            budget,
            slots: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            clock: AtomicU64::new(0),
            on_change,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // A panic while holding the lock leaves the map consistent (no half-done updates).
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The dtype `source` runs (or will run) in.
    /// Where SD 3 models of `source` place their T5 encoder (the catalog's `t5`).
    pub fn with_t5(mut self, t5: HashMap<String, T5Placement>) -> Self {
        self.t5 = t5;
        self
    }

    fn t5(&self, source: &str) -> T5Placement {
        self.t5.get(source).copied().unwrap_or_default()
    }

    pub fn dtype(&self, source: &str) -> DType {
        self.dtypes
            .get(source)
            .copied()
            .unwrap_or(self.default_dtype)
    }

    pub fn state(&self, source: &str) -> SourceState {
        match self.lock().get(source).map(|s| &s.state) {
            None => SourceState::NotLoaded,
            Some(State::Loading) => SourceState::Loading,
            Some(State::Ready(_)) => SourceState::Loaded,
            Some(State::Failed(e)) => SourceState::Failed(e.clone()),
        }
    }

    /// The model in `source`, loading it first if needed (blocking: call it from a
    /// blocking thread). Concurrent callers for one source wait for one load.
    pub fn get(&self, source: &str) -> anyhow::Result<Loaded> {
        let mut slots = self.lock();
        loop {
            let tick = self.clock.fetch_add(1, Ordering::Relaxed);
            match slots.get_mut(source) {
                Some(Slot {
                    state: State::Ready(loaded),
                    last_used,
                    ..
                }) => {
                    *last_used = tick;
                    return Ok(loaded.clone());
                }
                Some(Slot {
                    state: State::Loading,
                    ..
                }) => {
                    slots = self.changed.wait(slots).unwrap_or_else(|e| e.into_inner());
                }
                _ => break,
            }
        }
        slots.insert(
            source.to_string(),
            Slot {
                state: State::Loading,
                variants: Vec::new(),
                bytes: 0,
                last_used: 0,
            },
        );
        drop(slots);

        let loaded = self.load(source);
        let mut slots = self.lock();
        let result = match loaded {
            Ok((loaded, bytes)) => {
                self.make_room(&mut slots, source, bytes);
                let slot = slots.get_mut(source).expect("inserted above");
                slot.state = State::Ready(loaded.clone());
                slot.bytes = bytes;
                slot.last_used = self.clock.fetch_add(1, Ordering::Relaxed);
                Ok(loaded)
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(model = source, error = %msg, "loading failed");
                slots.get_mut(source).expect("inserted above").state = State::Failed(msg);
                Err(e)
            }
        };
        (self.on_change)(loaded_count(&slots));
        drop(slots);
        self.changed.notify_all();
        result
    }

    /// `base` (the model in `source`) with the VAE and LoRAs of `add_ons`, made once and
    /// kept beside the model (blocking; LoRA and VAE files are read or downloaded here).
    pub fn with_add_ons(
        &self,
        source: &str,
        base: &Loaded,
        add_ons: &AddOnChoice,
    ) -> anyhow::Result<Loaded> {
        if add_ons.is_empty() {
            return Ok(base.clone());
        }
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        if let Some(Slot { variants, .. }) = self.lock().get_mut(source)
            && let Some(v) = variants.iter_mut().find(|v| v.add_ons == *add_ons)
        {
            v.last_used = tick;
            return Ok(v.loaded.clone());
        }
        let started = std::time::Instant::now();
        let arch = &base.info.architecture;
        let fits = |field: &'static str, a: &AddOn| match &a.architecture {
            Some(want) if want != arch => Err(EngineError::invalid(
                field,
                format!("{} is made for {want} models; this model is {arch}", a.name),
            )),
            _ => Ok(()),
        };
        let mut pipeline = (*base.pipeline).clone();
        if let Some(vae) = &add_ons.vae {
            fits("vae", vae)?;
            let dir = crate::model_source::resolve_vae(&vae.source)
                .with_context(|| format!("VAE {}", vae.name))?;
            pipeline = pipeline.with_vae(&dir)?;
        }
        let mut embeddings = Vec::with_capacity(add_ons.embeddings.len());
        for e in &add_ons.embeddings {
            fits("embeddings", e)?;
            let file = crate::model_source::resolve_embedding(&e.source)
                .with_context(|| format!("embedding {}", e.name))?;
            embeddings.push(
                Embedding::load(&file, e.token.as_deref(), Some(&e.name))
                    .with_context(|| format!("embedding {}", e.name))?,
            );
        }
        if !embeddings.is_empty() {
            pipeline = pipeline.with_embeddings(&embeddings.iter().collect::<Vec<_>>())?;
        }
        let mut loras = Vec::with_capacity(add_ons.loras.len());
        for (lora, strength) in &add_ons.loras {
            fits("loras", lora)?;
            let file = crate::model_source::resolve_lora(&lora.source)
                .with_context(|| format!("LoRA {}", lora.name))?;
            loras.push((
                Lora::load(&file).with_context(|| format!("LoRA {}", lora.name))?,
                *strength,
            ));
        }
        let refs: Vec<(&Lora, f64)> = loras.iter().map(|(l, s)| (l, *s)).collect();
        let pipeline = pipeline.with_loras(&refs)?;
        tracing::info!(
            model = source,
            ?add_ons,
            secs = started.elapsed().as_secs_f32(),
            "variant made"
        );
        let loaded = Loaded {
            pipeline: Arc::new(pipeline),
            info: base.info.clone(),
        };
        if let Some(Slot { variants, .. }) = self.lock().get_mut(source) {
            if variants.len() >= MAX_VARIANTS
                && let Some(oldest) = variants
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, v)| v.last_used)
                    .map(|(i, _)| i)
            {
                variants.remove(oldest);
            }
            variants.push(Variant {
                add_ons: add_ons.clone(),
                loaded: loaded.clone(),
                last_used: tick,
            });
        }
        Ok(loaded)
    }

    /// The ControlNet in `source` (a folder or a hub id), loaded once (blocking), in the
    /// dtype `model_dtype` of the model it guides; within the budget, models other than
    /// `for_model` are unloaded to make room for it.
    pub fn controlnet(
        &self,
        source: &str,
        model_dtype: DType,
        for_model: &str,
    ) -> anyhow::Result<Arc<ControlNet>> {
        let key = format!("{source}\n{model_dtype:?}");
        let cached = self
            .controlnets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(net) = cached {
            return Ok(net);
        }
        let dir = crate::model_source::resolve_controlnet(source)?;
        self.keep_room(
            for_model,
            weight_bytes(&dir, "diffusion_pytorch_model", model_dtype),
        );
        tracing::info!(controlnet = source, dir = %dir.display(), "loading a ControlNet");
        let net = Arc::new(ControlNet::load(&dir, &self.device, model_dtype)?);
        self.controlnets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, net.clone());
        Ok(net)
    }

    /// The depth model in `source` (a folder or a hub id), loaded once (blocking).
    pub fn depth_estimator(&self, source: &str) -> anyhow::Result<Arc<DepthEstimator>> {
        let cached = self
            .depth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(source)
            .cloned();
        if let Some(model) = cached {
            return Ok(model);
        }
        let dir = crate::model_source::resolve_depth_estimator(source)?;
        self.keep_room("", weight_bytes(&dir, "model", DType::F32));
        tracing::info!(depth_estimator = source, dir = %dir.display(), "loading the depth model");
        let model = Arc::new(DepthEstimator::load(&dir, &self.device)?);
        self.depth
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(source.to_string(), model.clone());
        Ok(model)
    }

    /// The safety checker for the model in `source`: its folder's (`safety_checker/` and
    /// `feature_extractor/`), else `fallback` (the catalog's), loaded once (blocking).
    pub fn safety_checker(
        &self,
        source: &str,
        fallback: Option<&str>,
    ) -> anyhow::Result<Option<Arc<SafetyChecker>>> {
        let key = format!("{source}\n{}", fallback.unwrap_or_default());
        if let Some(c) = self
            .checkers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        let dir = crate::model_source::resolve(source)?;
        let own = dir.join("safety_checker").join("config.json").is_file()
            && dir.join("feature_extractor").is_dir();
        let checker_dir = match (own, fallback) {
            (true, _) => Some(dir),
            (false, Some(f)) => Some(crate::model_source::resolve_safety_checker(f)?),
            (false, None) => None,
        };
        let checker = match checker_dir {
            Some(d) => {
                tracing::info!(model = source, checker = %d.display(), "loading the safety checker");
                Some(Arc::new(SafetyChecker::load(&d, &self.device)?))
            }
            None => None,
        };
        self.checkers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, checker.clone());
        Ok(checker)
    }

    fn load(&self, source: &str) -> anyhow::Result<(Loaded, u64)> {
        let dir = crate::model_source::resolve(source)?;
        let dtype = self.dtype(source);
        let t5 = self.t5(source);
        let bytes = estimate_bytes(&dir, dtype, t5);
        if let Some(budget) = self.budget {
            // Unload before loading, so that the two never need to fit at once.
            let mut slots = self.lock();
            self.make_room(&mut slots, source, bytes);
            (self.on_change)(loaded_count(&slots));
            if bytes > budget {
                tracing::warn!(
                    model = source,
                    bytes,
                    budget,
                    "the model alone is larger than the memory budget; loading it anyway"
                );
            }
        }
        tracing::info!(model = source, folder = %dir.display(), mib = bytes >> 20, ?dtype, "loading");
        let started = std::time::Instant::now();
        let pipeline = Pipeline::load_with(&dir, &self.device, dtype, t5)
            .with_context(|| format!("loading the model in {}", dir.display()))?;
        let info = pipeline.describe();
        tracing::info!(model = source, architecture = %info.architecture, secs = started.elapsed().as_secs_f32(), "loaded");
        Ok((
            Loaded {
                pipeline: Arc::new(pipeline),
                info,
            },
            bytes,
        ))
    }

    /// Counts `bytes` of a ControlNet or depth model about to be kept, unloading least
    /// recently used models (not `keep`) so that it fits.
    fn keep_room(&self, keep: &str, bytes: u64) {
        if self.budget.is_some() {
            let mut slots = self.lock();
            self.make_room_beside(&mut slots, keep, bytes, true);
            (self.on_change)(loaded_count(&slots));
        }
        self.kept_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Unloads least recently used models (not `keep`) until `bytes` more fit beside the
    /// ControlNets and depth models kept. `keep` itself is counted unless it is the model
    /// being (re)loaded (`bytes` is then its size).
    fn make_room(&self, slots: &mut HashMap<String, Slot>, keep: &str, bytes: u64) {
        self.make_room_beside(slots, keep, bytes, false);
    }

    fn make_room_beside(
        &self,
        slots: &mut HashMap<String, Slot>,
        keep: &str,
        bytes: u64,
        count_keep: bool,
    ) {
        let Some(budget) = self.budget else { return };
        let kept = self.kept_bytes.load(Ordering::Relaxed);
        loop {
            let used: u64 = kept
                + slots
                    .iter()
                    .filter(|(k, s)| {
                        (count_keep || *k != keep) && matches!(s.state, State::Ready(_))
                    })
                    .map(|(_, s)| s.bytes)
                    .sum::<u64>();
            if used + bytes <= budget {
                return;
            }
            let victim = slots
                .iter()
                .filter(|(k, s)| *k != keep && matches!(s.state, State::Ready(_)))
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else { return };
            tracing::info!(model = %victim, for_model = keep, "unloading the least recently used model to stay within the memory budget");
            slots.remove(&victim);
        }
    }
}

fn loaded_count(slots: &HashMap<String, Slot>) -> usize {
    slots
        .values()
        .filter(|s| matches!(s.state, State::Ready(_)))
        .count()
}

/// The memory a model's weights take once loaded: the files the engine reads, scaled
/// from their stored dtype (fp16 variants: 2 bytes) to the one it runs in. SD 3's T5
/// counts where it runs (in f32 on the CPU) and not when left out.
pub fn estimate_bytes(dir: &Path, dtype: DType, t5: T5Placement) -> u64 {
    let components = [
        ("unet", "diffusion_pytorch_model"),
        ("transformer", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
        ("text_encoder_2", "model"),
    ];
    let t5_bytes = match t5 {
        T5Placement::Off => 0,
        T5Placement::Cpu => weight_bytes(&dir.join("text_encoder_3"), "model", DType::F32),
        T5Placement::Device => weight_bytes(&dir.join("text_encoder_3"), "model", dtype),
    };
    components
        .iter()
        .map(|(sub, base)| weight_bytes(&dir.join(sub), base, dtype))
        .sum::<u64>()
        + t5_bytes
}

/// The memory the weights `base*.safetensors` in `dir` take once loaded in `dtype`.
pub fn weight_bytes(dir: &Path, base: &str, dtype: DType) -> u64 {
    let run_bytes = dtype.size_in_bytes() as u64;
    find_weight_files(dir, base)
        .unwrap_or_default()
        .iter()
        .map(|f| {
            let size = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
            let name = f.file_name().unwrap_or_default().to_string_lossy();
            let stored = if name.contains(".fp16") { 2 } else { 4 };
            size * run_bytes / stored
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name)
            .display()
            .to_string()
    }

    /// A ControlNet counts against the memory budget: loading one for a model unloads the
    /// least recently used other model when both models and the net would not fit.
    #[test]
    fn controlnets_count_against_the_memory_budget() {
        let (sd15, sdxl, net) = (
            fixture("tiny-sd15"),
            fixture("tiny-sdxl"),
            fixture("tiny-controlnet-sdxl"),
        );
        let bytes = |s: &str| estimate_bytes(Path::new(s), DType::F32, T5Placement::Device);
        let net_bytes = weight_bytes(Path::new(&net), "diffusion_pytorch_model", DType::F32);
        assert!(net_bytes > 0);
        let budget = bytes(&sd15) + bytes(&sdxl) + net_bytes - 1;
        let registry = Registry::new(
            Device::Cpu,
            (DType::F32, HashMap::new()),
            Some(budget),
            Box::new(|_| {}),
        );
        registry.get(&sd15).unwrap();
        registry.get(&sdxl).unwrap();
        assert_eq!(registry.state(&sd15), SourceState::Loaded);
        registry.controlnet(&net, DType::F32, &sdxl).unwrap();
        assert_eq!(registry.state(&sd15), SourceState::NotLoaded);
        assert_eq!(registry.state(&sdxl), SourceState::Loaded);
        // Kept, so a second request finds it without loading (or unloading) again.
        registry.get(&sd15).unwrap();
        assert_eq!(registry.state(&sdxl), SourceState::NotLoaded);
        registry.controlnet(&net, DType::F32, &sd15).unwrap();
        assert_eq!(registry.state(&sd15), SourceState::Loaded);
    }
}
