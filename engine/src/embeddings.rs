//! Textual-inversion embeddings, read as diffusers' `load_textual_inversion` reads them, and
//! added to a model's tokenizers and text encoders ([`crate::Pipeline::with_embeddings`]).
//!
//! Forms:
//! - diffusers: a safetensors or pickle file `{token: vectors}` (one entry; the token is its
//!   key unless one is given);
//! - A1111: a pickle `.pt` with `string_to_param["*"]`, or a safetensors file
//!   `{"emb_params": vectors}` (the token is the one given, else the file's stem);
//! - SDXL: `{"clip_l": vectors, "clip_g": vectors}`, one set per text encoder (as
//!   diffusers' documentation loads them: each into its encoder, under one token).
//!
//! `n` vectors become the tokens `tok`, `tok_1`, ..., `tok_{n-1}`, appended to the
//! vocabulary in order, and a prompt's `tok` is rewritten to `tok tok_1 ... tok_{n-1}` as
//! diffusers' `maybe_convert_prompt` does.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor};

/// One textual-inversion file, read.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub path: PathBuf,
    /// The token prompts use.
    pub token: String,
    /// The vectors for one text encoder, `(n, hidden)`, or one set per encoder (SDXL's
    /// `clip_l`, `clip_g`).
    pub vectors: Vectors,
}

#[derive(Clone, Debug)]
pub enum Vectors {
    /// For the first text encoder whose hidden size they have.
    Any(Tensor),
    /// `[clip_l, clip_g]`: text encoder 0 and 1.
    PerEncoder([Tensor; 2]),
}

impl Embedding {
    /// Reads `path` (safetensors, or a PyTorch pickle `.pt` / `.bin`); `token` overrides the
    /// file's own token (diffusers' `token=`); a file without one takes `default_token`,
    /// else the file's name without its extension.
    pub fn load(
        path: &Path,
        token: Option<&str>,
        default_token: Option<&str>,
    ) -> Result<Embedding> {
        let tensors: Vec<(String, Tensor)> = if is_safetensors(path)? {
            candle_core::safetensors::load(path, &Device::Cpu)
                .with_context(|| format!("reading {}", path.display()))?
                .into_iter()
                .collect()
        } else {
            let a1111 = candle_core::pickle::read_all_with_key(path, Some("string_to_param"));
            match a1111 {
                Ok(t) if !t.is_empty() => t
                    .into_iter()
                    .map(|(_, t)| (pickled_name(path).unwrap_or("emb_params".into()), t))
                    .collect(),
                _ => candle_core::pickle::read_all(path)
                    .with_context(|| format!("reading {} (a PyTorch pickle)", path.display()))?,
            }
        };
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let matrix = |t: &Tensor| -> Result<Tensor> {
            let t = t.to_dtype(DType::F32)?;
            Ok(match t.rank() {
                1 => t.unsqueeze(0)?,
                2 => t,
                r => bail!(
                    "{}: embedding vectors of rank {r} (expected (n, hidden) or (hidden,))",
                    path.display()
                ),
            })
        };
        let get = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let (file_token, vectors) = match (get("clip_l"), get("clip_g"), tensors.as_slice()) {
            (Some(l), Some(g), _) => (None, Vectors::PerEncoder([matrix(l)?, matrix(g)?])),
            (_, _, [(name, t)]) if name == "emb_params" || name == "*" => {
                (None, Vectors::Any(matrix(t)?))
            }
            (_, _, [(name, t)]) => (Some(name.clone()), Vectors::Any(matrix(t)?)),
            _ => bail!(
                "{}: not a textual-inversion file diffusers reads (one {{token: vectors}} entry, A1111's string_to_param or emb_params, or SDXL's clip_l + clip_g); it has {}",
                path.display(),
                tensors
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let token = token
            .map(String::from)
            .or(file_token)
            .or(default_token.map(String::from))
            .unwrap_or(stem)
            .trim()
            .to_string();
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            bail!(
                "{}: the token {token:?} must be one word (no spaces)",
                path.display()
            );
        }
        Ok(Embedding {
            path: path.to_path_buf(),
            token,
            vectors,
        })
    }

    /// The vectors for text encoder `index` of hidden size `hidden`, if it gets any:
    /// per-encoder files give each encoder its own; otherwise the first encoder of that
    /// size (`first_fit` tells whether `index` is it).
    pub(crate) fn for_encoder(&self, index: usize, first_fit: bool) -> Option<&Tensor> {
        match &self.vectors {
            Vectors::PerEncoder(v) => v.get(index),
            Vectors::Any(t) => first_fit.then_some(t),
        }
    }

    /// The hidden size of vectors meant for any encoder.
    pub(crate) fn any_hidden(&self) -> Option<usize> {
        match &self.vectors {
            Vectors::Any(t) => t.dim(1).ok(),
            Vectors::PerEncoder(_) => None,
        }
    }

    /// `tok`, `tok_1`, ... for `n` vectors.
    pub(crate) fn tokens(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                if i == 0 {
                    self.token.clone()
                } else {
                    format!("{}_{i}", self.token)
                }
            })
            .collect()
    }
}

/// The `name` A1111 writes beside its vectors (diffusers' token for such a file).
fn pickled_name(path: &Path) -> Option<String> {
    use candle_core::pickle::{Object, Stack};
    let file = std::fs::File::open(path).ok()?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).ok()?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok())
        .find(|n| n.ends_with("data.pkl"))?
        .into_owned();
    let mut reader = std::io::BufReader::new(zip.by_name(&pkl).ok()?);
    let mut stack = Stack::empty();
    stack.read_loop(&mut reader).ok()?;
    let Object::Dict(entries) = stack.finalize().ok()? else {
        return None;
    };
    entries.into_iter().find_map(|(k, v)| match (k, v) {
        (Object::Unicode(k), Object::Unicode(v)) if k == "name" => Some(v),
        _ => None,
    })
}

fn is_safetensors(path: &Path) -> Result<bool> {
    use std::io::Read;
    // A PyTorch pickle is a zip archive ("PK"); anything else is read as safetensors.
    let mut head = [0u8; 2];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f.read(&mut head)?;
    Ok(!(n == 2 && &head == b"PK"))
}
