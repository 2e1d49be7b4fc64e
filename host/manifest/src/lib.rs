//! `spin.toml` (manifest version 2): the parts the local runtime uses, and
//! (`allowed_hosts`) the syntax of `allowed_outbound_hosts` entries and what a list
//! of them allows. Its own crate, without wasmtime, so that the fuzzer reads
//! manifests exactly as edge-host does.
//!
//! Read: `[application]`, `[variables]`, `[[trigger.http]]`, and for each
//! component `source`, `allowed_outbound_hosts`, `variables`, `environment`
//! and `key_value_stores`. Everything else Spin knows (`build`, `files`,
//! other trigger types, ...) is ignored here, so the same file keeps working
//! with `spin up`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;

mod allowed_hosts;

pub use allowed_hosts::{AllowedHost, Host, Verdict, verdict, well_known_port};

/// The prefix of the environment variables that give application variables
/// their values, as Spin's default (env) variables provider reads them.
pub const ENV_PREFIX: &str = "SPIN_VARIABLE_";

#[derive(Debug, Deserialize)]
struct RawManifest {
    spin_manifest_version: toml::Value,
    #[serde(default)]
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, RawVariable>,
    #[serde(default)]
    trigger: RawTriggers,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Debug, Default, Deserialize)]
struct RawApplication {
    #[serde(default)]
    name: String,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariable {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    secret: bool,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTriggers {
    #[serde(default)]
    http: Vec<RawHttpTrigger>,
    #[serde(flatten)]
    other: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Deserialize)]
struct RawHttpTrigger {
    #[serde(default)]
    id: Option<String>,
    route: RawRoute,
    #[serde(default)]
    component: Option<toml::Value>,
    #[serde(default)]
    executor: Option<toml::Value>,
    #[serde(default)]
    static_response: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Path(String),
    Private { private: bool },
}

#[derive(Debug, Deserialize)]
struct RawComponent {
    source: toml::Value,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    files: Option<toml::Value>,
}

/// An application variable as declared in `[variables]`.
#[derive(Debug, Clone)]
pub struct Variable {
    pub default: Option<String>,
    pub secret: bool,
}

/// One `[[trigger.http]]` entry with a routable path.
#[derive(Debug, Clone)]
pub struct HttpTrigger {
    /// The route as written in the manifest.
    pub route: String,
    pub component: String,
}

/// A component with everything resolved that can be resolved at startup.
#[derive(Debug, Clone)]
pub struct Component {
    pub id: String,
    /// Absolute or manifest-relative path joined onto the manifest's folder.
    pub source: PathBuf,
    /// Component variables with their templates resolved.
    pub variables: BTreeMap<String, String>,
    /// `allowed_outbound_hosts`, templates resolved and parsed.
    pub allowed_outbound_hosts: Vec<AllowedHost>,
    pub environment: BTreeMap<String, String>,
    /// The key-value store labels the component may open (and only those),
    /// checked and without duplicates.
    pub key_value_stores: Vec<String>,
}

/// The application as the runtime needs it.
#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub version: Option<String>,
    /// The folder `spin.toml` is in; component sources are relative to it.
    pub base_dir: PathBuf,
    pub variables: BTreeMap<String, Variable>,
    pub triggers: Vec<HttpTrigger>,
    /// Components that at least one HTTP trigger routes to, by id.
    pub components: BTreeMap<String, Component>,
}

/// Where application variable values come from (the environment, in the
/// binary; a map, in tests).
pub trait VariableSource {
    fn get(&self, name: &str) -> Option<String>;
}

/// `SPIN_VARIABLE_<UPPERCASE_NAME>` from the process environment.
pub struct EnvSource;

impl VariableSource for EnvSource {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(env_name(name)).ok()
    }
}

impl VariableSource for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

/// The environment variable that sets application variable `name`.
pub fn env_name(name: &str) -> String {
    format!("{ENV_PREFIX}{}", name.to_ascii_uppercase())
}

/// Spin's variable-name rule: lower-case ASCII letters, digits and single
/// underscores between words, each word starting with a letter (`image_host_1`
/// is refused: its last word starts with a digit).
pub fn validate_variable_name(name: &str) -> Result<()> {
    ensure!(!name.is_empty(), "variable name must not be empty");
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        bail!(
            "invalid character {c:?} in variable name {name:?}: variable names may contain only lower-case letters, numbers, and underscores"
        );
    }
    ensure!(
        !name.starts_with('_') && !name.ends_with('_') && !name.contains("__"),
        "variable name {name:?} must not start or end with an underscore or contain two in a row"
    );
    if let Some(word) = name
        .split('_')
        .find(|w| !w.starts_with(|c: char| c.is_ascii_lowercase()))
    {
        bail!("in variable name {name:?}, the word {word:?} must start with a letter (as in Spin)");
    }
    Ok(())
}

/// One piece of a `{{ name }}` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(String),
    Var(String),
}

/// Split a Spin template (`"prefix-{{ name }}-suffix"`) into its parts.
pub fn parse_template(template: &str) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    let mut rest = template;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("{{") {
            let (expr, tail) = after
                .split_once("}}")
                .with_context(|| format!("unmatched '{{{{' in template {template:?}"))?;
            parts.push(Part::Var(expr.trim().to_string()));
            rest = tail;
        } else {
            let end = rest.find("{{").unwrap_or(rest.len());
            parts.push(Part::Lit(rest[..end].to_string()));
            rest = &rest[end..];
        }
    }
    Ok(parts)
}

/// Substitute application variable values into a template; every name must
/// be a declared application variable.
pub fn render_template(template: &str, values: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::new();
    for part in parse_template(template)? {
        match part {
            Part::Lit(s) => out.push_str(&s),
            Part::Var(name) => {
                let value = values.get(&name).with_context(|| {
                    format!("template {template:?} refers to unknown application variable {name:?}")
                })?;
                out.push_str(value);
            }
        }
    }
    Ok(out)
}

impl App {
    /// Read and resolve `spin.toml` at `path`, taking variable values from
    /// `source`.
    pub fn load(path: &Path, source: &dyn VariableSource) -> Result<App> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read manifest {}", path.display()))?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base_dir = if base_dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base_dir
        };
        Self::parse(&text, &base_dir, source)
            .with_context(|| format!("invalid manifest {}", path.display()))
    }

    /// Parse manifest text; `base_dir` is where component sources are
    /// resolved from.
    pub fn parse(text: &str, base_dir: &Path, source: &dyn VariableSource) -> Result<App> {
        let raw: RawManifest = toml::from_str(text)?;
        match raw.spin_manifest_version.as_integer() {
            Some(2) => {}
            _ => bail!(
                "spin_manifest_version must be 2 (got {}); only manifest version 2 is supported",
                raw.spin_manifest_version
            ),
        }
        for kind in raw.trigger.other.keys() {
            tracing::warn!("ignoring [[trigger.{kind}]]: only HTTP triggers are served");
        }

        // Application variables: declared names, then values.
        let mut variables = BTreeMap::new();
        let mut values = BTreeMap::new();
        let mut missing = Vec::new();
        for (name, var) in &raw.variables {
            validate_variable_name(name).with_context(|| format!("[variables] {name}"))?;
            ensure!(
                !(var.required && var.default.is_some()),
                "variable {name:?} has both `required = true` and a `default`; give it one or the other"
            );
            ensure!(
                var.required || var.default.is_some(),
                "variable {name:?} needs either `required = true` or a `default`"
            );
            match source.get(name).or_else(|| var.default.clone()) {
                Some(value) => {
                    values.insert(name.clone(), value);
                }
                None => missing.push(name.clone()),
            }
            variables.insert(
                name.clone(),
                Variable {
                    default: var.default.clone(),
                    secret: var.secret,
                },
            );
        }
        if !missing.is_empty() {
            let list = missing
                .iter()
                .map(|n| format!("{n} (set {})", env_name(n)))
                .collect::<Vec<_>>()
                .join(", ");
            bail!("required application variable(s) without a value: {list}");
        }

        // HTTP triggers.
        let mut triggers = Vec::new();
        for (index, trigger) in raw.trigger.http.iter().enumerate() {
            let label = trigger
                .id
                .clone()
                .unwrap_or_else(|| format!("[[trigger.http]] #{}", index + 1));
            ensure!(
                trigger.executor.is_none()
                    || trigger
                        .executor
                        .as_ref()
                        .and_then(|e| e.get("type"))
                        .and_then(|t| t.as_str())
                        == Some("http"),
                "{label}: only the default (wasi-http) executor is supported, not {:?}",
                trigger.executor
            );
            ensure!(
                trigger.static_response.is_none(),
                "{label}: static_response triggers are not supported by edge-host"
            );
            let component = match &trigger.component {
                Some(toml::Value::String(id)) => id.clone(),
                Some(_) => bail!(
                    "{label}: inline component tables are not supported; declare [component.<id>] and refer to it by id"
                ),
                None => bail!("{label}: missing `component`"),
            };
            ensure!(
                raw.component.contains_key(&component),
                "{label}: component {component:?} is not declared ([component.{component}])"
            );
            match &trigger.route {
                RawRoute::Path(route) => triggers.push(HttpTrigger {
                    route: route.clone(),
                    component,
                }),
                RawRoute::Private { private: true } => {
                    tracing::debug!("{label}: private route (not routable)");
                }
                RawRoute::Private { private: false } => {
                    bail!("{label}: route must be a string pattern or `{{ private = true }}`")
                }
            }
        }

        // Components that are routed to.
        let mut components = BTreeMap::new();
        for trigger in &triggers {
            if components.contains_key(&trigger.component) {
                continue;
            }
            let id = &trigger.component;
            let raw_component = &raw.component[id];
            let component = resolve_component(id, raw_component, base_dir, &values)
                .with_context(|| format!("[component.{id}]"))?;
            components.insert(id.clone(), component);
        }

        Ok(App {
            name: raw.application.name,
            version: raw.application.version,
            base_dir: base_dir.to_path_buf(),
            variables,
            triggers,
            components,
        })
    }
}

fn resolve_component(
    id: &str,
    raw: &RawComponent,
    base_dir: &Path,
    values: &BTreeMap<String, String>,
) -> Result<Component> {
    let source = match &raw.source {
        toml::Value::String(path) => base_dir.join(path),
        other => bail!(
            "source must be a local file path (URL and registry sources are not supported), got {other}"
        ),
    };
    if raw.files.is_some() {
        tracing::warn!("component {id}: `files` are not mounted by edge-host");
    }

    let mut variables = BTreeMap::new();
    for (name, template) in &raw.variables {
        validate_variable_name(name).with_context(|| format!("variable {name:?}"))?;
        let value =
            render_template(template, values).with_context(|| format!("variable {name:?}"))?;
        variables.insert(name.clone(), value);
    }

    let mut allowed_outbound_hosts = Vec::new();
    for entry in &raw.allowed_outbound_hosts {
        let resolved = render_template(entry, values)
            .with_context(|| format!("allowed_outbound_hosts {entry:?}"))?;
        let is_template = entry.contains("{{");
        // As in Spin: a template that resolves to nothing (an optional
        // endpoint left empty) is skipped rather than an error.
        if is_template && (resolved.is_empty() || resolved == "http://" || resolved == "https://") {
            continue;
        }
        let host = AllowedHost::parse(&resolved).with_context(|| {
            if is_template {
                format!("allowed_outbound_hosts {entry:?} (resolved to {resolved:?})")
            } else {
                format!("allowed_outbound_hosts {entry:?}")
            }
        })?;
        allowed_outbound_hosts.push(host);
    }

    let mut key_value_stores: Vec<String> = Vec::new();
    for label in &raw.key_value_stores {
        validate_store_label(label).with_context(|| format!("key_value_stores {label:?}"))?;
        if !key_value_stores.contains(label) {
            key_value_stores.push(label.clone());
        }
    }

    Ok(Component {
        id: id.to_string(),
        source,
        variables,
        allowed_outbound_hosts,
        environment: raw.environment.clone(),
        key_value_stores,
    })
}

/// A key-value store label as Spin's manifest takes it: a snake_case or
/// kebab-case name (lower-case letters and digits, `_` or `-` between
/// words), starting with a letter.
pub fn validate_store_label(label: &str) -> Result<()> {
    ensure!(!label.is_empty(), "store label must not be empty");
    ensure!(
        label.starts_with(|c: char| c.is_ascii_lowercase()),
        "store label {label:?} must start with a lower-case letter"
    );
    ensure!(
        label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'),
        "store label {label:?} may contain only lower-case letters, digits, '_' and '-'"
    );
    ensure!(
        !label.ends_with(['_', '-'])
            && !label.contains("__")
            && !label.contains("--")
            && !label.contains("_-")
            && !label.contains("-_"),
        "store label {label:?} must not end with a separator or have two in a row"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "t"
[variables]
api_keys = { default = "", secret = true }
inference_url = { default = "http://127.0.0.1:8081" }
token = { required = true }
[[trigger.http]]
route = "/a/..."
component = "c"
[[trigger.http]]
route = { private = true }
component = "c"
[component.c]
source = "x/c.wasm"
allowed_outbound_hosts = ["https://*:443", "{{ inference_url }}", "{{ api_keys }}"]
[component.c.variables]
url = "{{ inference_url }}/v1"
token = "t={{token}}"
[component.unused]
source = "nope.wasm"
"#;

    #[test]
    fn parses_and_resolves() {
        let app = App::parse(MANIFEST, Path::new("/m"), &vars(&[("token", "s3")])).unwrap();
        assert_eq!(app.name, "t");
        assert_eq!(app.triggers.len(), 1);
        let c = &app.components["c"];
        assert_eq!(c.source, PathBuf::from("/m/x/c.wasm"));
        assert_eq!(c.variables["url"], "http://127.0.0.1:8081/v1");
        assert_eq!(c.variables["token"], "t=s3");
        // The empty `{{ api_keys }}` entry is skipped.
        assert_eq!(c.allowed_outbound_hosts.len(), 2);
        assert!(!app.components.contains_key("unused"));
    }

    #[test]
    fn env_overrides_default() {
        let app = App::parse(
            MANIFEST,
            Path::new("."),
            &vars(&[("token", "a"), ("inference_url", "http://10.0.0.5:9000")]),
        )
        .unwrap();
        assert_eq!(
            app.components["c"].variables["url"],
            "http://10.0.0.5:9000/v1"
        );
    }

    #[test]
    fn missing_required_is_named() {
        let err = App::parse(MANIFEST, Path::new("."), &vars(&[])).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("token"), "{msg}");
        assert!(msg.contains("SPIN_VARIABLE_TOKEN"), "{msg}");
    }

    #[test]
    fn unknown_template_variable_fails() {
        let text = MANIFEST.replace("t={{token}}", "{{ nope }}");
        let err = App::parse(&text, Path::new("."), &vars(&[("token", "a")])).unwrap_err();
        assert!(format!("{err:#}").contains("nope"));
    }

    #[test]
    fn templates() {
        assert_eq!(
            parse_template("a{{ b }}c{{d}}").unwrap(),
            vec![
                Part::Lit("a".into()),
                Part::Var("b".into()),
                Part::Lit("c".into()),
                Part::Var("d".into())
            ]
        );
        assert!(parse_template("{{ open").is_err());
    }

    #[test]
    fn variable_names() {
        for ok in ["a", "api_keys", "x1_y2"] {
            validate_variable_name(ok).unwrap();
        }
        for bad in [
            "",
            "A",
            "1a",
            "a-b",
            "a__b",
            "a_",
            "_a",
            "image_host_1",
            "x_2y",
        ] {
            assert!(validate_variable_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_value_stores_are_checked_and_granted_as_listed() {
        let text = MANIFEST.replace(
            "source = \"x/c.wasm\"",
            "source = \"x/c.wasm\"\nkey_value_stores = [\"default\", \"my-cache\", \"default\"]",
        );
        let app = App::parse(&text, Path::new("."), &vars(&[("token", "a")])).unwrap();
        assert_eq!(
            app.components["c"].key_value_stores,
            ["default", "my-cache"]
        );
        // Not declared: nothing granted.
        let app = App::parse(MANIFEST, Path::new("."), &vars(&[("token", "a")])).unwrap();
        assert!(app.components["c"].key_value_stores.is_empty());

        let bad = MANIFEST.replace(
            "source = \"x/c.wasm\"",
            "source = \"x/c.wasm\"\nkey_value_stores = [\"Bad Label\"]",
        );
        let err = App::parse(&bad, Path::new("."), &vars(&[("token", "a")])).unwrap_err();
        assert!(format!("{err:#}").contains("Bad Label"), "{err:#}");
    }

    #[test]
    fn store_labels() {
        for ok in ["default", "my_store", "my-store", "s3"] {
            validate_store_label(ok).unwrap();
        }
        for bad in ["", "Default", "1a", "a b", "a__b", "a-", "_a", "a.b"] {
            assert!(validate_store_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn project_manifest_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spin.toml");
        let app = App::load(&path, &vars(&[])).unwrap();
        assert!(app.components.contains_key("edge"));
    }
}
