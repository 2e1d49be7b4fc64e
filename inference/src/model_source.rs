//! Where a model's files come from: a local diffusers-format folder, or a
//! Hugging Face hub id downloaded once into the standard Hugging Face cache
//! (~/.cache/huggingface/hub, or $HF_HOME/hub) with a progress bar per file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The model `scripts/up` serves when MODEL is not set: SDXL-Turbo.
pub const DEFAULT_MODEL: &str = "stabilityai/sdxl-turbo";

/// The folder holding `spec`'s files: `spec` itself if it is a folder, else the
/// hub snapshot it names, downloaded if needed.
pub fn resolve(spec: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        if !path.join("model_index.json").is_file() {
            bail!(
                "{spec} is a folder but not a diffusers-format model (it has no model_index.json)"
            );
        }
        return Ok(path.to_path_buf());
    }
    if !looks_like_hub_id(spec) {
        bail!("{spec}: no such folder, and not a Hugging Face hub id (owner/name)");
    }
    download(spec)
}

/// A LoRA's safetensors file: `spec` itself, the one `.safetensors` in folder `spec` (or
/// its `pytorch_lora_weights.safetensors`), or the same in hub repository `owner/name`
/// (`owner/name/FILE` names the file), downloaded if needed.
pub fn resolve_lora(spec: &str) -> anyhow::Result<PathBuf> {
    resolve_file(spec, LORA_FILES)
}

/// A textual-inversion file: as [`resolve_lora`], with diffusers' `learned_embeds`
/// names and A1111's `.pt` files too.
pub fn resolve_embedding(spec: &str) -> anyhow::Result<PathBuf> {
    resolve_file(spec, EMBEDDING_FILES)
}

/// The file a folder or repository holds: its one file with one of the extensions, else
/// the first of the usual names it has.
struct FileKind {
    extensions: &'static [&'static str],
    usual: &'static [&'static str],
}

const LORA_FILES: FileKind = FileKind {
    extensions: &[".safetensors"],
    usual: &["pytorch_lora_weights.safetensors"],
};

const EMBEDDING_FILES: FileKind = FileKind {
    extensions: &[".safetensors", ".pt", ".bin"],
    usual: &["learned_embeds.safetensors", "learned_embeds.bin"],
};

fn resolve_file(spec: &str, kind: FileKind) -> anyhow::Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        let files: Vec<String> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        let file = pick_file(spec, &kind, files.iter().map(String::as_str))?;
        return Ok(path.join(file));
    }
    let (id, file) = match spec.rsplit_once('/') {
        Some((id, file)) if kind.extensions.iter().any(|e| file.ends_with(e)) => (id, Some(file)),
        _ => (spec, None),
    };
    if !looks_like_hub_id(id) {
        bail!(
            "{spec}: no such file or folder, and not a Hugging Face hub id (owner/name or owner/name/FILE.safetensors)"
        );
    }
    let repo = hub()?.model(id.to_string());
    let file = match file {
        Some(f) => f.to_string(),
        None => match repo.info() {
            Ok(info) => pick_file(
                spec,
                &kind,
                info.siblings.iter().map(|s| s.rfilename.as_str()),
            )?,
            Err(err) => bail!(
                "{spec}: the Hugging Face hub could not be reached to list its files ({err}); name the file (owner/name/FILE.safetensors) or use a local path"
            ),
        },
    };
    repo.get(&file)
        .with_context(|| format!("downloading {file} of {id}"))
}

fn pick_file<'a>(
    spec: &str,
    kind: &FileKind,
    names: impl Iterator<Item = &'a str>,
) -> anyhow::Result<String> {
    let files: Vec<&str> = names
        .filter(|n| !n.contains('/') && kind.extensions.iter().any(|e| n.ends_with(e)))
        .collect();
    if let Some(usual) = kind.usual.iter().find(|u| files.contains(u)) {
        return Ok(usual.to_string());
    }
    match files.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!("{spec} has no {} file", kind.extensions.join(" / ")),
        many => bail!(
            "{spec} has several .safetensors files ({}): name one",
            many.join(", ")
        ),
    }
}

/// A VAE's folder (config.json and diffusion_pytorch_model weights): `spec` itself, the
/// `vae/` folder of model folder `spec`, or hub repository `owner/name` (its top level,
/// else its `vae/` folder), downloaded if needed.
pub fn resolve_vae(spec: &str) -> anyhow::Result<PathBuf> {
    resolve_component(spec, "vae", "VAE")
}

/// A ControlNet's folder, found as [`resolve_vae`] finds a VAE's (a pipeline's
/// `controlnet/` folder, or a ControlNet repository such as
/// lllyasviel/control_v11p_sd15_canny).
pub fn resolve_controlnet(spec: &str) -> anyhow::Result<PathBuf> {
    resolve_component(spec, "controlnet", "ControlNet")
}

/// A component's folder (config.json and diffusion_pytorch_model weights): `spec`, its
/// `sub/` folder, or hub repository `spec` (top level, else `sub/`), downloaded if needed.
fn resolve_component(spec: &str, sub: &str, what: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        for dir in [path.to_path_buf(), path.join(sub)] {
            if dir.join("config.json").is_file() {
                return Ok(dir);
            }
        }
        bail!("{spec} is a folder but holds no {what} (no config.json, nor {sub}/config.json)");
    }
    if !looks_like_hub_id(spec) {
        bail!("{spec}: no such folder, and not a Hugging Face hub id (owner/name)");
    }
    let repo = hub()?.model(spec.to_string());
    let names: Vec<String> = match repo.info() {
        Ok(info) => info.siblings.into_iter().map(|s| s.rfilename).collect(),
        Err(err) => bail!("{spec}: the Hugging Face hub could not be reached ({err})"),
    };
    let nested = format!("{sub}/");
    let prefix = if names.iter().any(|n| n == "config.json") {
        ""
    } else if names.iter().any(|n| *n == format!("{nested}config.json")) {
        nested.as_str()
    } else {
        bail!(
            "{spec} on the Hugging Face hub holds no {what} (no config.json, nor {sub}/config.json)"
        );
    };
    let weights: Vec<&String> = names
        .iter()
        .filter(|n| {
            n.strip_prefix(prefix).is_some_and(|f| {
                !f.contains('/')
                    && f.starts_with("diffusion_pytorch_model")
                    && f.contains(".safetensors")
            })
        })
        .collect();
    let plain: Vec<&&String> = weights.iter().filter(|n| !n.contains(".fp16")).collect();
    let mut config = None;
    for file in std::iter::once(&format!("{prefix}config.json")).chain(if plain.is_empty() {
        weights.clone()
    } else {
        plain.into_iter().copied().collect()
    }) {
        let got = repo
            .get(file)
            .with_context(|| format!("downloading {file} of {spec}"))?;
        config.get_or_insert(got);
    }
    snapshot_dir(config.expect("config.json was fetched"))
}

/// A safety checker's folder: a model folder with `safety_checker/` and
/// `feature_extractor/`, a folder with the checker's `config.json` and
/// `preprocessor_config.json` side by side, or such a hub repository
/// (CompVis/stable-diffusion-safety-checker), downloaded if needed.
pub fn resolve_safety_checker(spec: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        let model = path.join("safety_checker").is_dir() && path.join("feature_extractor").is_dir();
        let flat =
            path.join("config.json").is_file() && path.join("preprocessor_config.json").is_file();
        if model || flat {
            return Ok(path.to_path_buf());
        }
        bail!(
            "{spec} holds no safety checker (safety_checker/ and feature_extractor/, or config.json and preprocessor_config.json)"
        );
    }
    download_processor_model(spec)
}

/// A depth model's folder (transformers' format: config.json, preprocessor_config.json
/// and model.safetensors, as depth-anything/Depth-Anything-V2-Small-hf), or such a hub
/// repository, downloaded if needed.
pub fn resolve_depth_estimator(spec: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        if path.join("config.json").is_file() && path.join("preprocessor_config.json").is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("{spec} holds no depth model (config.json and preprocessor_config.json)");
    }
    download_processor_model(spec)
}

/// A transformers model with an image processor (config.json, preprocessor_config.json,
/// model.safetensors) from hub repository `spec`.
fn download_processor_model(spec: &str) -> anyhow::Result<PathBuf> {
    if !looks_like_hub_id(spec) {
        bail!("{spec}: no such folder, and not a Hugging Face hub id (owner/name)");
    }
    let repo = hub()?.model(spec.to_string());
    let mut config = None;
    for file in [
        "config.json",
        "preprocessor_config.json",
        "model.safetensors",
    ] {
        let got = repo
            .get(file)
            .with_context(|| format!("downloading {file} of {spec}"))?;
        config.get_or_insert(got);
    }
    snapshot_dir(config.expect("config.json was fetched"))
}

fn hub() -> anyhow::Result<hf_hub::api::sync::Api> {
    hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(true)
        .build()
        .context("setting up the Hugging Face hub client")
}

fn looks_like_hub_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|s| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

fn download(id: &str) -> anyhow::Result<PathBuf> {
    let repo = hub()?.model(id.to_string());
    let files = match repo.info() {
        Ok(info) => pick_files(info.siblings.iter().map(|s| s.rfilename.as_str())),
        Err(err) => return from_cache_or_explain(id, err),
    };
    if !files.iter().any(|f| f == "model_index.json") {
        bail!(
            "{id} on the Hugging Face hub is not a diffusers-format model (it has no model_index.json)"
        );
    }
    tracing::info!(
        model = id,
        files = files.len(),
        "fetching model files (cached after the first time)"
    );
    let mut index = None;
    for file in &files {
        let path = repo
            .get(file)
            .with_context(|| format!("downloading {file} of {id}"))?;
        if file == "model_index.json" {
            index = Some(path);
        }
    }
    snapshot_dir(index.expect("model_index.json is among the files"))
}

/// Offline: use the cached snapshot if an earlier run downloaded it, else say
/// what to do instead.
fn from_cache_or_explain(id: &str, err: hf_hub::api::sync::ApiError) -> anyhow::Result<PathBuf> {
    let cache = hf_hub::Cache::from_env();
    if let Some(index) = cache.model(id.to_string()).get("model_index.json") {
        tracing::warn!(model = id, error = %err, "the Hugging Face hub is unreachable; using the cached copy");
        return snapshot_dir(index);
    }
    bail!(
        "{id} is not a folder here, and the Hugging Face hub could not be reached to download it ({err}).\n\
         Set MODEL to a local diffusers-format folder instead; `scripts/make-tiny-model DIR` \
         writes a tiny random one that runs offline, e.g.\n  \
         scripts/make-tiny-model .tiny-model && MODEL=.tiny-model scripts/up"
    )
}

fn snapshot_dir(model_index: PathBuf) -> anyhow::Result<PathBuf> {
    model_index
        .parent()
        .map(Path::to_path_buf)
        .context("model_index.json has no parent folder")
}

/// The files of a diffusers repository that the engine reads: configs, tokenizer
/// files and the safetensors weights of each component, the fp16 variant where a
/// component has one (half the download; the engine converts to its own dtype).
/// Other formats (.bin, .ckpt, ONNX, OpenVINO, Flax) and single-file checkpoints
/// at the top level are skipped.
pub fn pick_files<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let names: Vec<&str> = names.collect();
    let is_fp16 = |file: &str| file.contains(".fp16.") || file.contains(".fp16-");
    let is_weights =
        |file: &str| file.ends_with(".safetensors") || file.ends_with(".safetensors.index.json");
    let dir_has_fp16 = |dir: &str| {
        names.iter().any(|n| {
            n.strip_prefix(dir)
                .and_then(|r| r.strip_prefix('/'))
                .is_some_and(|f| is_weights(f) && is_fp16(f))
        })
    };
    names
        .iter()
        .filter(|name| match name.split_once('/') {
            None => **name == "model_index.json",
            Some((_, file)) if file.contains('/') => false,
            Some((dir, file)) => match file {
                // preprocessor_config.json: the safety checker's feature extractor.
                "config.json" | "scheduler_config.json" | "preprocessor_config.json" => true,
                "vocab.json"
                | "merges.txt"
                | "tokenizer.json"
                | "tokenizer_config.json"
                | "special_tokens_map.json" => true,
                f if is_weights(f) => is_fp16(f) == dir_has_fp16(dir),
                _ => false,
            },
        })
        .map(|name| name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        assert!(looks_like_hub_id("stabilityai/sdxl-turbo"));
        assert!(looks_like_hub_id("runwayml/stable-diffusion-v1-5"));
        assert!(!looks_like_hub_id("./model"));
        assert!(!looks_like_hub_id("/abs/path"));
        assert!(!looks_like_hub_id("a/b/c"));
        assert!(!looks_like_hub_id("single"));
    }

    #[test]
    fn picks_configs_tokenizers_and_fp16_weights() {
        let listing = [
            "model_index.json",
            "sd_xl_turbo_1.0_fp16.safetensors",
            "README.md",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.fp16.safetensors",
            "text_encoder/model.safetensors",
            "text_encoder/openvino_model.bin",
            "tokenizer/vocab.json",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "unet/diffusion_pytorch_model.bin",
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "vae_decoder/model.onnx",
        ];
        let picked = pick_files(listing.into_iter());
        assert_eq!(
            picked,
            [
                "model_index.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder/model.fp16.safetensors",
                "tokenizer/vocab.json",
                "tokenizer/merges.txt",
                "tokenizer/special_tokens_map.json",
                "tokenizer/tokenizer_config.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.safetensors",
            ]
        );
    }

    #[test]
    fn folders_without_model_index_are_refused() {
        let dir = std::env::temp_dir().join(format!("model-source-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = resolve(dir.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("no model_index.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            resolve("./no/such/dir")
                .unwrap_err()
                .to_string()
                .contains("no such folder")
        );
    }
}
