//! The model catalog (a TOML file, `inference/catalog.toml` by default): the names
//! clients send, where each model's weights are, and the defaults a request gets for
//! what it leaves out. See that file for the format.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::device::Precision;
use crate::engine::preprocess::Preprocess;
use crate::engine::{T5Placement, scheduler};
use contract::limits::{MAX_SIDE, MAX_STEPS};

use super::convert;

/// The catalog built into the binary (inference/catalog.toml).
pub const BUILT_IN: &str = include_str!("../../catalog.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    default: String,
    memory_budget_gb: Option<f64>,
    safety_checker: Option<String>,
    depth_estimator: Option<String>,
    models: BTreeMap<String, EntryFile>,
    #[serde(default)]
    loras: BTreeMap<String, AddOnFile>,
    #[serde(default)]
    vaes: BTreeMap<String, AddOnFile>,
    #[serde(default)]
    embeddings: BTreeMap<String, AddOnFile>,
    #[serde(default)]
    controlnets: BTreeMap<String, AddOnFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddOnFile {
    source: String,
    #[serde(default)]
    aliases: Vec<String>,
    architecture: Option<String>,
    /// Embeddings only: the token prompts use (else the file's own, else its name).
    token: Option<String>,
    /// ControlNets only: how a request's image becomes its control image unless the
    /// request says (`canny`, `depth` or `none`).
    preprocess: Option<String>,
}

/// The architectures a LoRA or VAE may declare (the engine's names).
pub const ARCHITECTURES: [&str; 3] = [
    "stable-diffusion-1",
    "stable-diffusion-2",
    "stable-diffusion-xl",
];

/// A LoRA or VAE of the catalog.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AddOn {
    pub name: String,
    pub aliases: Vec<String>,
    /// A file, a folder or a hub id (`model_source::resolve_lora` / `resolve_vae`).
    pub source: String,
    /// The architecture it was made for; None: any whose weights it fits.
    pub architecture: Option<String>,
    /// Embeddings: the token prompts use (None: the file's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// ControlNets: the preprocessor their images get unless a request says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<String>,
}

/// LoRAs or VAEs, by the names clients send.
#[derive(Debug, Clone, Default)]
pub struct AddOns {
    what: &'static str,
    items: Vec<AddOn>,
}

impl AddOns {
    fn parse(what: &'static str, table: BTreeMap<String, AddOnFile>) -> anyhow::Result<AddOns> {
        let mut items: Vec<AddOn> = Vec::new();
        for (name, f) in table {
            if f.source.trim().is_empty() {
                bail!("{what}.{name}: source must name a file, a folder or a hub id");
            }
            if let Some(a) = &f.architecture
                && !ARCHITECTURES.contains(&a.as_str())
            {
                bail!(
                    "{what}.{name}: architecture {a:?} is not one of {}",
                    ARCHITECTURES.join(", ")
                );
            }
            if f.token.is_some() && what != "embeddings" {
                bail!("{what}.{name}: token is for [embeddings] entries only");
            }
            if f.token
                .as_deref()
                .is_some_and(|t| t.trim().is_empty() || t.contains(char::is_whitespace))
            {
                bail!("{what}.{name}: token must be one word");
            }
            if let Some(p) = &f.preprocess {
                if what != "controlnets" {
                    bail!("{what}.{name}: preprocess is for [controlnets] entries only");
                }
                p.parse::<Preprocess>()
                    .map_err(|e| anyhow::anyhow!("{what}.{name}: {e}"))?;
            }
            for n in std::iter::once(&name).chain(&f.aliases) {
                // ControlNets are asked for by kind ("canny"): one name may be given to
                // one ControlNet per architecture.
                let clash = |i: &&AddOn| {
                    i.is(n)
                        && (what != "controlnets"
                            || i.architecture.is_none()
                            || f.architecture.is_none()
                            || i.architecture == f.architecture)
                };
                if let Some(other) = items.iter().find(clash) {
                    bail!(
                        "the name {n:?} is given to both {what}.{} and {what}.{name}",
                        other.name
                    );
                }
            }
            items.push(AddOn {
                name,
                aliases: f.aliases,
                source: f.source.trim().to_string(),
                architecture: f.architecture,
                token: f.token,
                preprocess: f.preprocess,
            });
        }
        Ok(AddOns { what, items })
    }

    /// The entry a request names (any case).
    pub fn lookup(&self, name: &str) -> Option<&AddOn> {
        self.items.iter().find(|i| i.is(name.trim()))
    }

    /// Every entry a request's name gives (ControlNets: one per architecture).
    pub fn lookup_all(&self, name: &str) -> Vec<&AddOn> {
        self.items.iter().filter(|i| i.is(name.trim())).collect()
    }

    pub fn items(&self) -> &[AddOn] {
        &self.items
    }

    /// The names clients may send, for error messages.
    pub fn names(&self) -> String {
        if self.items.is_empty() {
            return format!("this server's catalog has no {}", self.what);
        }
        let mut names: Vec<&str> = Vec::new();
        for n in self.items.iter().flat_map(|i| {
            std::iter::once(i.name.as_str()).chain(i.aliases.iter().map(String::as_str))
        }) {
            // One name may be several ControlNets' (one per architecture).
            if !names.contains(&n) {
                names.push(n);
            }
        }
        format!("this server has: {}", names.join(", "))
    }
}

impl AddOn {
    fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
            || self.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    source: String,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    preload: bool,
    // Spelled out rather than a flattened `Defaults`: serde can't deny unknown
    // fields through a flatten, and a misspelt default must not pass unnoticed.
    width: Option<u32>,
    height: Option<u32>,
    steps: Option<u32>,
    guidance: Option<f32>,
    scheduler: Option<String>,
    dtype: Option<String>,
    refiner: Option<String>,
    /// SD 3: where its T5 encoder runs (device, cpu, off).
    t5: Option<String>,
    /// SD 3.5: the transformer layers of skip-layer guidance.
    skip_layer_guidance: Option<Vec<usize>>,
}

/// What a request gets for the settings it leaves out (None: the model's own).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Defaults {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub steps: Option<u32>,
    pub guidance: Option<f32>,
    pub scheduler: Option<String>,
    /// SD 3.5: skip-layer guidance on these transformer layers (text-to-image).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip_layer_guidance: Option<Vec<usize>>,
}

/// One model of the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub name: String,
    pub aliases: Vec<String>,
    /// A diffusers folder or a hub id.
    pub source: String,
    pub preload: bool,
    pub defaults: Defaults,
    /// The precision it runs in; None: the server's (`--dtype`). `/v1/models` reports the
    /// dtype the registry resolved it to.
    #[serde(skip)]
    pub dtype: Option<Precision>,
    /// The catalog model run after this one when a request asks for a refiner (SDXL's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refiner: Option<String>,
    /// SD 3: where its T5 encoder runs (loaded models of one source share it).
    #[serde(skip)]
    pub t5: T5Placement,
}

/// A memory budget in GiB (as the catalog and MEMORY_BUDGET_GB give it) in bytes.
pub fn gib_to_bytes(gib: f64) -> u64 {
    (gib.max(0.0) * 1024.0 * 1024.0 * 1024.0) as u64
}

#[derive(Debug, Clone)]
pub struct Catalog {
    entries: Vec<Entry>,
    default: usize,
    /// Bytes loaded models may take; None: no limit.
    pub memory_budget: Option<u64>,
    pub loras: AddOns,
    pub vaes: AddOns,
    pub embeddings: AddOns,
    pub controlnets: AddOns,
    /// The safety checker of models whose folder has none (a folder or a hub id).
    pub safety_checker: Option<String>,
    /// The depth model of the `depth` preprocessor (a folder or a hub id).
    pub depth_estimator: Option<String>,
}

impl Catalog {
    pub fn load(path: &Path) -> anyhow::Result<Catalog> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the catalog {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in the catalog {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Catalog> {
        let file: CatalogFile = toml::from_str(text)?;
        let mut entries: Vec<Entry> = Vec::new();
        for (name, e) in file.models {
            let defaults = Defaults {
                width: e.width,
                height: e.height,
                steps: e.steps,
                guidance: e.guidance,
                scheduler: e.scheduler,
                skip_layer_guidance: e.skip_layer_guidance,
            };
            if e.source.trim().is_empty() {
                bail!("models.{name}: source must name a folder or a hub id");
            }
            // Each default is checked here, once, as a request's value would be: a bad one
            // stops the start naming its entry instead of failing requests that never set it.
            if let Some(s) = defaults.steps.filter(|&s| !convert::steps_ok(s)) {
                bail!(
                    "models.{name}: steps must be from 1 to {} (got {s})",
                    MAX_STEPS
                );
            }
            for side in [defaults.width, defaults.height].into_iter().flatten() {
                if !convert::side_ok(side) {
                    bail!(
                        "models.{name}: width and height must be multiples of 8 from 64 to {MAX_SIDE} (got {side})"
                    );
                }
            }
            if let Some(g) = defaults.guidance.filter(|&g| !convert::guidance_ok(g)) {
                bail!("models.{name}: guidance must be from 0 to 100 (got {g})");
            }
            if let Some(sched) = &defaults.scheduler
                && let Err(e) = scheduler::resolve(sched)
            {
                bail!("models.{name}: scheduler {sched:?}: {e}");
            }
            let dtype = match e.dtype.as_deref().map(str::parse::<Precision>) {
                None | Some(Ok(Precision::Auto)) => None,
                Some(Ok(p)) => Some(p),
                Some(Err(err)) => bail!("models.{name}: {err}"),
            };
            let t5 = match e.t5.as_deref().map(str::parse::<T5Placement>) {
                None => T5Placement::default(),
                Some(Ok(t)) => t,
                Some(Err(err)) => bail!("models.{name}: {err}"),
            };
            entries.push(Entry {
                name,
                aliases: e.aliases,
                source: e.source.trim().to_string(),
                preload: e.preload,
                defaults,
                dtype,
                refiner: e.refiner.map(|r| r.trim().to_string()),
                t5,
            });
        }
        // A name (or alias) must point at one model.
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for e in &entries {
            for n in std::iter::once(&e.name).chain(&e.aliases) {
                if let Some(other) = seen.insert(n.to_lowercase(), &e.name)
                    && other != e.name
                {
                    bail!(
                        "the name {n:?} is given to both models.{other} and models.{}",
                        e.name
                    );
                }
            }
        }
        // Names that share a source share one loaded model, so one precision.
        for (i, a) in entries.iter().enumerate() {
            if let Some(b) = entries[..i]
                .iter()
                .find(|b| b.source == a.source && (b.dtype != a.dtype || b.t5 != a.t5))
            {
                bail!(
                    "models.{} and models.{} load the same source {:?} but ask for different dtypes or T5 placements",
                    b.name,
                    a.name,
                    a.source
                );
            }
        }
        // A refiner is another model of the catalog.
        for e in &entries {
            if let Some(r) = &e.refiner
                && !entries.iter().any(|o| {
                    o.name.eq_ignore_ascii_case(r)
                        || o.aliases.iter().any(|a| a.eq_ignore_ascii_case(r))
                })
            {
                bail!(
                    "models.{}: refiner {r:?} is not a model of the catalog",
                    e.name
                );
            }
        }
        let mut catalog = Catalog {
            entries,
            default: 0,
            memory_budget: file.memory_budget_gb.map(gib_to_bytes),
            loras: AddOns::parse("loras", file.loras)?,
            vaes: AddOns::parse("vaes", file.vaes)?,
            embeddings: AddOns::parse("embeddings", file.embeddings)?,
            controlnets: AddOns::parse("controlnets", file.controlnets)?,
            safety_checker: file
                .safety_checker
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            depth_estimator: file
                .depth_estimator
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        };
        if catalog.depth_estimator.is_none()
            && let Some(c) = catalog
                .controlnets
                .items()
                .iter()
                .find(|c| c.preprocess.as_deref() == Some("depth"))
        {
            bail!(
                "controlnets.{}: preprocess = \"depth\" needs the catalog's depth_estimator",
                c.name
            );
        }
        catalog.default = catalog.position(&file.default).with_context(|| {
            format!("default = {:?} is not a model of the catalog", file.default)
        })?;
        Ok(catalog)
    }

    /// Every model served by the one in `source` (`--model`): the names and defaults
    /// stay, the weights are the same for all.
    pub fn with_single_source(mut self, source: &str) -> Catalog {
        for e in &mut self.entries {
            e.source = source.to_string();
            // One model for all: the server's precision, and no other model to refine with.
            e.dtype = None;
            e.refiner = None;
        }
        self
    }

    fn position(&self, name: &str) -> Option<usize> {
        let name = name.trim();
        self.entries.iter().position(|e| {
            e.name.eq_ignore_ascii_case(name)
                || e.aliases.iter().any(|a| a.eq_ignore_ascii_case(name))
        })
    }

    /// The model a request names; an empty name is the default model.
    pub fn lookup(&self, name: &str) -> Option<&Entry> {
        if name.trim().is_empty() {
            return Some(self.default_entry());
        }
        self.position(name).map(|i| &self.entries[i])
    }

    pub fn default_entry(&self) -> &Entry {
        &self.entries[self.default]
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The names clients may send, for error messages.
    pub fn names(&self) -> Vec<&str> {
        self.entries
            .iter()
            .flat_map(|e| {
                std::iter::once(e.name.as_str()).chain(e.aliases.iter().map(String::as_str))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd35_names_t5_placement_and_skip_layers() {
        let c = Catalog::parse(BUILT_IN).unwrap();
        // HolmesAI's family name and ModelsLab-style ids.
        for (name, model) in [
            ("Stable-Diffusion-3.5", "stable-diffusion-3.5-large"),
            ("sd3.5", "stable-diffusion-3.5-large"),
            ("SD3.5-Large-Turbo", "stable-diffusion-3.5-large-turbo"),
            ("sd3.5-medium", "stable-diffusion-3.5-medium"),
        ] {
            assert_eq!(c.lookup(name).unwrap().name, model, "{name}");
        }
        let medium = c.lookup("sd3.5-medium").unwrap();
        assert_eq!(medium.defaults.skip_layer_guidance, Some(vec![7, 8, 9]));
        assert_eq!(medium.t5, T5Placement::Device);
        let one = |t5: &str| {
            format!(
                "default = \"a\"\n[models.a]\nsource = \"x\"\nt5 = \"{t5}\"\n[models.b]\nsource = \"x\"\n"
            )
        };
        // Two names of one source share its loaded model, so one T5 placement.
        let err = Catalog::parse(&one("cpu")).unwrap_err().to_string();
        assert!(err.contains("T5 placements"), "{err}");
        assert_eq!(
            Catalog::parse(&one("device"))
                .unwrap()
                .lookup("a")
                .unwrap()
                .t5,
            T5Placement::Device
        );
        let err = format!("{:#}", Catalog::parse(&one("gpu0")).unwrap_err());
        assert!(
            err.contains("models.a") && err.contains("device, cpu or off"),
            "{err}"
        );
    }

    #[test]
    fn the_built_in_catalog_has_every_dialects_names() {
        let c = Catalog::parse(BUILT_IN).unwrap();
        assert_eq!(c.default_entry().name, "sdxl-turbo");
        assert!(c.default_entry().preload);
        // Appypie / HolmesAI's default, Hyperbolic's list, a ModelsLab id.
        for name in [
            "stable-diffusion-xl-base-1.0",
            "SDXL1.0-base",
            "sd2",
            "SD1.5",
            "SSD",
            "SDXL-turbo",
            "sdxl",
        ] {
            assert!(c.lookup(name).is_some(), "{name}");
        }
        assert_eq!(c.lookup("").unwrap().name, "sdxl-turbo");
        assert!(c.lookup("flux").is_none());
        assert_eq!(
            c.lookup("sdxl1.0-BASE").unwrap().source,
            "stabilityai/stable-diffusion-xl-base-1.0"
        );
        assert_eq!(
            c.loras.lookup("pixel_art").unwrap().source,
            "nerijs/pixel-art-xl"
        );
        assert!(c.loras.lookup("Logo").is_some());
        assert!(c.vaes.lookup("sdxl-vae-fp16-fix").is_some());
        assert!(c.loras.lookup("nope").is_none());
        // Hyperbolic's "canny": one ControlNet per architecture, preprocessing photos.
        let canny = c.controlnets.lookup_all("Canny");
        let archs: Vec<_> = canny.iter().map(|e| e.architecture.as_deref()).collect();
        assert_eq!(
            archs,
            [Some("stable-diffusion-1"), Some("stable-diffusion-xl")]
        );
        assert!(
            canny
                .iter()
                .all(|e| e.preprocess.as_deref() == Some("canny"))
        );
        assert_eq!(c.controlnets.lookup_all("depth").len(), 2);
        assert!(c.depth_estimator.is_some());
        assert_eq!(
            c.lookup("sdxl").unwrap().refiner.as_deref(),
            Some("stable-diffusion-xl-refiner-1.0")
        );
        let one = c.with_single_source("/m");
        assert!(
            one.entries()
                .iter()
                .all(|e| e.source == "/m" && e.refiner.is_none())
        );
    }

    #[test]
    fn mistakes_are_named() {
        let err = |text: &str| format!("{:#}", Catalog::parse(text).unwrap_err());
        assert!(err("default = \"a\"\n[models.b]\nsource = \"x\"").contains("default = \"a\""));
        assert!(err("default = \"a\"\n[models.a]\nsource = \"x\"\nsteps = 0").contains("steps"));
        assert!(err("default = \"a\"\n[models.a]\nsource = \"x\"\nwidht = 5").contains("widht"));
        // Every default is checked at load, naming the entry.
        for (line, says) in [
            ("scheduler = \"Euler b\"", "models.a: scheduler \"Euler b\""),
            ("scheduler = \"DDIM Karras\"", "models.a: scheduler"),
            ("steps = 5000", "models.a: steps must be from 1 to 100 "),
            ("width = 8192", "models.a: width and height"),
            ("guidance = -1.0", "models.a: guidance"),
        ] {
            let e = err(&format!(
                "default = \"a\"\n[models.a]\nsource = \"x\"\n{line}"
            ));
            assert!(e.contains(says), "{line}: {e}");
        }
        assert!(
            err("default = \"a\"\n[models.a]\nsource = \"x\"\n[models.b]\nsource = \"y\"\naliases = [\"A\"]")
                .contains("both")
        );
        // LoRAs and VAEs: a known architecture, one name each.
        let base = "default = \"a\"\n[models.a]\nsource = \"x\"\n";
        assert!(
            err(&format!(
                "{base}[loras.l]\nsource = \"f\"\narchitecture = \"sd3\""
            ))
            .contains("loras.l: architecture \"sd3\" is not one of stable-diffusion-1")
        );
        assert!(
            err(&format!(
                "{base}[vaes.v]\nsource = \"f\"\n[vaes.w]\nsource = \"g\"\naliases = [\"V\"]"
            ))
            .contains("both vaes.v and vaes.w")
        );
        assert!(err(&format!("{base}[loras.l]\nsource = \" \"")).contains("loras.l: source"));
        assert!(
            err(&format!(
                "{base}[loras.l]\nsource = \"f\"\npreprocess = \"canny\""
            ))
            .contains("loras.l: preprocess is for [controlnets] entries only")
        );
        assert!(
            err(&format!(
                "{base}[controlnets.c]\nsource = \"f\"\npreprocess = \"pose\""
            ))
            .contains("controlnets.c: invalid `preprocess`: \"pose\" is not accepted")
        );
        assert!(
            err(&format!(
                "{base}[controlnets.d]\nsource = \"f\"\npreprocess = \"depth\""
            ))
            .contains("controlnets.d: preprocess = \"depth\" needs the catalog's depth_estimator")
        );
        // One name per architecture; twice for one architecture is a clash.
        assert!(
            err(&format!(
                "{base}[controlnets.a]\nsource = \"f\"\naliases = [\"canny\"]\narchitecture = \"stable-diffusion-1\"\n\
                 [controlnets.b]\nsource = \"g\"\naliases = [\"canny\"]\narchitecture = \"stable-diffusion-1\""
            ))
            .contains("both controlnets.a and controlnets.b")
        );
        assert!(err(&format!("{base}[loras.l]\nsource = \"f\"\nweight = 1")).contains("weight"));
        assert!(
            err("default = \"a\"\n[models.a]\nsource = \"x\"\nrefiner = \"r\"")
                .contains("models.a: refiner \"r\" is not a model of the catalog")
        );
        assert!(
            err(&format!("{base}[loras.l]\nsource = \"f\"\ntoken = \"<t>\""))
                .contains("loras.l: token is for [embeddings] entries only")
        );
        assert!(
            err(&format!(
                "{base}[embeddings.e]\nsource = \"f\"\ntoken = \"a b\""
            ))
            .contains("embeddings.e: token must be one word")
        );
        let c = Catalog::parse(&format!(
            "{base}[embeddings.e]\nsource = \"f\"\ntoken = \"<t>\""
        ))
        .unwrap();
        assert_eq!(
            c.embeddings.lookup("E").unwrap().token.as_deref(),
            Some("<t>")
        );
        let c = Catalog::parse(
            "default = \"a\"\nmemory_budget_gb = 1.5\n[models.a]\nsource = \"x\"\nwidth = 256",
        )
        .unwrap();
        assert_eq!(c.memory_budget, Some(1536 * 1024 * 1024));
        assert_eq!(c.default_entry().defaults.width, Some(256));
    }

    #[test]
    fn a_model_may_ask_for_its_precision() {
        let two = |a: &str, b: &str| {
            format!(
                "default = \"a\"\n[models.a]\nsource = \"x\"\n{a}\n[models.b]\nsource = \"x\"\n{b}"
            )
        };
        let c = Catalog::parse(&two("dtype = \"BF16\"", "dtype = \"bfloat16\"")).unwrap();
        assert!(c.entries().iter().all(|e| e.dtype == Some(Precision::Bf16)));
        // auto is the server's choice, as if left out.
        let c = Catalog::parse(&two("dtype = \"auto\"", "")).unwrap();
        assert!(c.entries().iter().all(|e| e.dtype.is_none()));
        let err = |text: &str| format!("{:#}", Catalog::parse(text).unwrap_err());
        let e = err(&two("dtype = \"f8\"", ""));
        assert!(
            e.contains("models.a") && e.contains("f32, f16 or bf16"),
            "{e}"
        );
        // One source is one loaded model: it can't run in two precisions.
        let e = err(&two("dtype = \"f16\"", "dtype = \"bf16\""));
        assert!(e.contains("different dtypes"), "{e}");
        // --model serves every name from one source, in the server's precision.
        let c = Catalog::parse(&two("dtype = \"f16\"", "dtype = \"f16\""))
            .unwrap()
            .with_single_source("/m");
        assert!(c.entries().iter().all(|e| e.dtype.is_none()));
    }
}
