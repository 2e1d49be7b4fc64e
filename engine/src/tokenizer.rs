//! CLIP BPE tokenizer, built on the `tokenizers` crate exactly as transformers 5 builds
//! `CLIPTokenizer` from a folder's `vocab.json` + `merges.txt` (diffusers' layout), or loaded
//! from `tokenizer.json` when the folder has one:
//!
//! * normalizer: NFC, `\s+` → `" "`, lowercase;
//! * pre-tokenizer: CLIP's split regex (`<|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|
//!   [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`, keeping the matches), then byte-level mapping;
//! * model: BPE with end-of-word suffix `</w>`;
//! * special tokens from `tokenizer_config.json` / `special_tokens_map.json`.
//!
//! (candle-core already depends on `tokenizers` with the pure-Rust `fancy-regex` backend, so
//! this costs no extra compile time and no C toolchain.)
//!
//! Prompts are encoded as diffusers does (`padding="max_length"`, `truncation=True`,
//! `max_length=model_max_length`): BOS, at most `max_length - 2` tokens, EOS, then the pad
//! token up to `max_length`. Truncation logs a warning.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, NFC, Replace, Sequence as NormSeq};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use super::config::{TokenizerConfig, read_config, token_content};

const CLIP_SPLIT: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Tokenizer,
    /// Textual inversions of several vectors: the token, what a prompt's token becomes
    /// (`tok tok_1 ...`) and the token's id.
    expansions: Vec<(String, String, u32)>,
    pub bos_id: u32,
    pub eos_id: u32,
    pub pad_id: u32,
    pub max_length: usize,
    name: String,
}

fn err(e: tokenizers::Error) -> anyhow::Error {
    anyhow!("{e}")
}

impl ClipTokenizer {
    /// Loads a `tokenizer*` folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut cfg = TokenizerConfig::default();
        let smap = dir.join("special_tokens_map.json");
        if smap.is_file() {
            cfg = read_config(&smap, &[])?;
        }
        let tcfg_path = dir.join("tokenizer_config.json");
        let tcfg: TokenizerConfig = if tcfg_path.is_file() {
            read_config(&tcfg_path, &[])?
        } else {
            TokenizerConfig::default()
        };
        // tokenizer_config.json wins over special_tokens_map.json, as in transformers.
        let pick = |a: &Option<serde_json::Value>, b: &Option<serde_json::Value>, d: &str| {
            token_content(a)
                .or_else(|| token_content(b))
                .unwrap_or_else(|| d.to_string())
        };
        let bos = pick(&tcfg.bos_token, &cfg.bos_token, "<|startoftext|>");
        let eos = pick(&tcfg.eos_token, &cfg.eos_token, "<|endoftext|>");
        let unk = pick(&tcfg.unk_token, &cfg.unk_token, "<|endoftext|>");
        let pad = pick(&tcfg.pad_token, &cfg.pad_token, "<|endoftext|>");
        let max_length = tcfg
            .model_max_length
            .filter(|m| *m >= 3.0 && *m <= 1e6)
            .map(|m| m as usize)
            .unwrap_or(77);

        let json = dir.join("tokenizer.json");
        let mut tok = if json.is_file() {
            let mut tok = Tokenizer::from_file(&json)
                .map_err(err)
                .with_context(|| format!("cannot load {}", json.display()))?;
            // Padding and truncation are applied here (as diffusers asks for them), not by
            // whatever the file was saved with.
            tok.with_padding(None);
            tok.with_truncation(None).map_err(err)?;
            tok
        } else {
            let vocab = dir.join("vocab.json");
            let merges = dir.join("merges.txt");
            for f in [&vocab, &merges] {
                if !f.is_file() {
                    anyhow::bail!("tokenizer file {} is missing", f.display());
                }
            }
            let bpe = BPE::from_file(
                vocab.to_str().context("non-UTF-8 path")?,
                merges.to_str().context("non-UTF-8 path")?,
            )
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".into())
            .fuse_unk(false)
            .unk_token(unk.clone())
            .build()
            .map_err(err)
            .with_context(|| format!("cannot build BPE from {}", dir.display()))?;
            let mut tok = Tokenizer::new(bpe);
            tok.with_normalizer(Some(NormSeq::new(vec![
                NFC.into(),
                Replace::new(
                    tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
                    " ",
                )
                .map_err(err)?
                .into(),
                Lowercase.into(),
            ])))
            .map_err(err)?;
            tok.with_pre_tokenizer(Some(PreSeq::new(vec![
                Split::new(
                    SplitPattern::Regex(CLIP_SPLIT.into()),
                    SplitDelimiterBehavior::Removed,
                    true,
                )
                .map_err(err)?
                .into(),
                ByteLevel::default().add_prefix_space(false).into(),
            ])));
            tok
        };
        let specials: Vec<AddedToken> = [&bos, &eos, &unk, &pad]
            .iter()
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        tok.add_special_tokens(specials).map_err(err)?;
        let id = |t: &str| {
            tok.token_to_id(t)
                .with_context(|| format!("{}: token {t:?} is not in the vocabulary", dir.display()))
        };
        Ok(ClipTokenizer {
            bos_id: id(&bos)?,
            eos_id: id(&eos)?,
            pad_id: id(&pad)?,
            max_length,
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            inner: tok,
            expansions: Vec::new(),
        })
    }

    /// This tokenizer with `tokens` added to its vocabulary in order, after everything in
    /// it (transformers' `add_tokens`: not special, matched on the normalized text), and
    /// their ids. A token already in the vocabulary is an error.
    pub fn with_added_tokens(&self, tokens: &[String]) -> Result<(ClipTokenizer, Vec<u32>)> {
        let mut t = self.clone();
        if let Some(known) = tokens.iter().find(|tok| t.inner.token_to_id(tok).is_some()) {
            anyhow::bail!(
                "the token {known:?} is already in the {} vocabulary",
                self.name
            );
        }
        let added: Vec<AddedToken> = tokens
            .iter()
            .map(|tok| AddedToken::from(tok.clone(), false))
            .collect();
        t.inner.add_tokens(added).map_err(err)?;
        let ids = tokens
            .iter()
            .map(|tok| {
                t.inner
                    .token_to_id(tok)
                    .with_context(|| format!("the token {tok:?} was not added"))
            })
            .collect::<Result<Vec<u32>>>()?;
        Ok((t, ids))
    }

    /// `text` read with A1111's emphasis, in 77-token chunks ([`crate::emphasis`]), each
    /// fragment's textual-inversion tokens expanded first.
    pub fn a1111_chunks(&self, text: &str) -> Result<Vec<crate::emphasis::Chunk>> {
        crate::emphasis::chunks(
            &crate::emphasis::parse(text),
            self.specials(),
            &mut |t: &str| self.tokenize(&self.convert_prompt(t)?),
        )
    }

    /// Its special tokens, as [`crate::emphasis::chunks`] needs them.
    pub fn specials(&self) -> crate::emphasis::Specials {
        crate::emphasis::Specials {
            bos: self.bos_id,
            eos: self.eos_id,
            pad: self.pad_id,
            comma: self.inner.token_to_id(",</w>"),
        }
    }

    /// Has [`Self::convert_prompt`] write `token` (of id `id`) as `replacement`.
    pub fn expand(&mut self, token: String, replacement: String, id: u32) {
        self.expansions.push((token, replacement, id));
    }

    /// diffusers' `maybe_convert_prompt`: each multi-vector textual-inversion token the
    /// prompt's tokens hold is replaced (as plain text, every occurrence) by its tokens
    /// `tok tok_1 ...`.
    pub fn convert_prompt<'a>(&self, text: &'a str) -> Result<std::borrow::Cow<'a, str>> {
        if self.expansions.is_empty() {
            return Ok(text.into());
        }
        let ids = self.tokenize(text)?;
        let mut out = std::borrow::Cow::Borrowed(text);
        for (token, replacement, id) in &self.expansions {
            if ids.contains(id) {
                out = out.replace(token.as_str(), replacement).into();
            }
        }
        Ok(out)
    }

    /// The content tokens of `text`, without BOS/EOS.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// BOS + tokens + EOS, truncated and padded to `max_length`.
    pub fn encode_padded(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.encode_padded_with_len(text)?.0)
    }

    /// [`Self::encode_padded`] and the number of tokens before the padding (what the
    /// tokenizer's `attention_mask` marks with ones).
    ///
    /// Like diffusers, a prompt longer than `max_length - 2` tokens is truncated with a
    /// warning that names the removed text.
    pub fn encode_padded_with_len(&self, text: &str) -> Result<(Vec<u32>, usize)> {
        let mut ids = self.tokenize(text)?;
        let room = self.max_length - 2;
        if ids.len() > room {
            let removed = ids.len() - room;
            let removed_text = self
                .inner
                .decode(&ids[room..], true)
                .map(|t| {
                    let t = t.replace("</w>", " ");
                    t.split_whitespace().collect::<Vec<_>>().join(" ")
                })
                .unwrap_or_else(|_| String::from("?"));
            tracing::warn!(
                tokenizer = %self.name,
                removed_tokens = removed,
                removed_text = %removed_text,
                "prompt truncated: CLIP can only handle sequences up to {} tokens",
                self.max_length
            );
            ids.truncate(room);
        }
        let mut out = Vec::with_capacity(self.max_length);
        out.push(self.bos_id);
        out.extend_from_slice(&ids);
        out.push(self.eos_id);
        let len = out.len();
        out.resize(self.max_length, self.pad_id);
        Ok((out, len))
    }
}
