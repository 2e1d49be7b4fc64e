//! Command line and startup.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::sync::watch;

use crate::key_value::{self, KeyValueCtx, KeyValueStores};
use crate::manifest::{App, EnvSource, VariableSource};
use crate::outbound::{AllowedHost, OutboundPolicy};
use crate::routes::Router;
use crate::runtime::{self, ComponentConfig, ComponentHandler, Handler, ReuseConfig};
use crate::server::Server;

/// Run the Spin application described by a spin.toml, the way `spin up`
/// does, on wasmtime.
#[derive(Debug, Parser)]
#[command(name = "edge-host", version, about)]
pub struct Options {
    /// The application manifest (spin.toml), or a folder that has one.
    #[arg(
        long = "from",
        short = 'f',
        value_name = "PATH",
        default_value = "spin.toml"
    )]
    pub from: PathBuf,

    /// Address to serve on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,

    /// An origin (scheme://host[:port], Spin's allowed_outbound_hosts syntax)
    /// every component may also send requests to, on top of what spin.toml
    /// allows. Naming a host here also lets it resolve to private or loopback
    /// addresses. Repeatable.
    #[arg(long = "allow-outbound", value_name = "ORIGIN")]
    pub allow_outbound: Vec<String>,

    /// Use PATH as the component's Wasm file instead of its `source` in spin.toml
    /// (COMPONENT=PATH), e.g. when CARGO_TARGET_DIR is outside the project.
    /// Repeatable.
    #[arg(long = "source", value_name = "COMPONENT=PATH")]
    pub sources: Vec<String>,

    /// Set an application variable (NAME=VALUE); takes precedence over
    /// SPIN_VARIABLE_<NAME>. Repeatable.
    #[arg(long = "variable", value_name = "NAME=VALUE")]
    pub variables: Vec<String>,

    /// Define a key-value store LABEL besides `default` (what a Spin
    /// runtime-config file's `[key_value_store.LABEL]` does), in memory like
    /// `default`. Components open it only if their `key_value_stores` names
    /// it. Repeatable.
    #[arg(long = "key-value-store", value_name = "LABEL")]
    pub key_value_stores: Vec<String>,

    /// The application's state folder, as `spin up --state-dir`: the `default`
    /// key-value store is the SQLite file `sqlite_key_value.db` in it, which
    /// lasts across restarts (and which Spin reads too). Default: `.spin/`
    /// beside spin.toml. An empty value keeps the store in memory instead.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Set KEY to VALUE in the `default` key-value store at startup (as
    /// `spin up --key-value`). Repeatable.
    #[arg(long = "key-value", value_name = "KEY=VALUE")]
    pub key_values: Vec<String>,

    /// Bytes all key-value stores may hold together (keys, values and a
    /// small per-entry overhead); a set beyond it fails with
    /// `other("store full")`.
    #[arg(long, value_name = "BYTES", default_value_t = key_value::DEFAULT_MAX_BYTES)]
    pub key_value_max_bytes: u64,

    /// Time limits and the connection cap for clients.
    #[command(flatten)]
    pub limits: http_limits::Limits,

    /// Requests one component instance serves before it is replaced.
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_instance_reuse_count: usize,

    /// Requests one component instance serves at the same time (WASIp3
    /// components; WASIp2 ones serve one at a time).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub max_instance_concurrent_reuse_count: usize,

    /// Seconds an idle instance is kept for reuse.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub idle_instance_timeout: f64,

    /// Seconds a request may take to produce its response headers before it
    /// is answered with a 500 (default: no limit).
    #[arg(long, value_name = "SECS")]
    pub request_timeout: Option<f64>,

    /// Seconds to let in-flight requests finish after SIGINT/SIGTERM.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub shutdown_timeout: f64,

    /// Compile (and cache) the components, then exit without serving.
    #[arg(long)]
    pub precompile: bool,

    /// Log format on stderr.
    #[arg(long, value_name = "FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Application variables from `--variable`, then the environment.
struct CliVariables {
    cli: BTreeMap<String, String>,
}

impl VariableSource for CliVariables {
    fn get(&self, name: &str) -> Option<String> {
        self.cli.get(name).cloned().or_else(|| EnvSource.get(name))
    }
}

fn manifest_path(from: &Path) -> PathBuf {
    if from.is_dir() {
        from.join("spin.toml")
    } else {
        from.to_path_buf()
    }
}

fn seconds(value: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{flag}: invalid number of seconds"))
}

/// Everything ready to serve.
pub struct Prepared {
    pub app: App,
    pub router: Router,
    pub handlers: HashMap<String, Handler>,
}

/// Read the manifest, load (compile or fetch from cache) every routed
/// component and check it links.
pub fn prepare(options: &Options) -> Result<Prepared> {
    let mut cli = BTreeMap::new();
    for entry in &options.variables {
        let (name, value) = entry
            .split_once('=')
            .with_context(|| format!("--variable {entry:?}: expected NAME=VALUE"))?;
        cli.insert(name.trim().to_string(), value.to_string());
    }
    let path = manifest_path(&options.from);
    let mut app = App::load(&path, &CliVariables { cli })?;
    for entry in &options.sources {
        let (id, file) = entry
            .split_once('=')
            .with_context(|| format!("--source {entry:?}: expected COMPONENT=PATH"))?;
        let component = app
            .components
            .get_mut(id.trim())
            .with_context(|| format!("--source {entry:?}: spin.toml has no component {id:?}"))?;
        component.source = PathBuf::from(file);
    }
    if app.triggers.is_empty() {
        bail!("{} has no routable [[trigger.http]]", path.display());
    }
    let router = Router::build(
        app.triggers
            .iter()
            .map(|t| (t.route.as_str(), t.component.as_str())),
    )?;

    let mut extra = Vec::new();
    for origin in &options.allow_outbound {
        extra.push(
            AllowedHost::parse(origin).with_context(|| format!("--allow-outbound {origin:?}"))?,
        );
    }

    let reuse = ReuseConfig {
        max_instance_reuse_count: options.max_instance_reuse_count,
        max_instance_concurrent_reuse_count: options.max_instance_concurrent_reuse_count,
        idle_instance_timeout: seconds(options.idle_instance_timeout, "--idle-instance-timeout")?,
        request_timeout: options
            .request_timeout
            .map(|s| seconds(s, "--request-timeout"))
            .transpose()?,
    };

    let state_dir = match &options.state_dir {
        Some(dir) if dir.as_os_str().is_empty() => None,
        Some(dir) => Some(dir.clone()),
        None => Some(app.base_dir.join(".spin")),
    };
    let stores = key_value_stores(options, &app, state_dir.as_deref())?;

    let engine = runtime::engine()?;
    let linker = runtime::linker(&engine)?;
    let tls = OutboundPolicy::default_tls()?;
    let mut handlers = HashMap::new();
    for (id, component) in &app.components {
        if !component.source.is_file() {
            bail!(
                "component {id:?}: {} does not exist; build it first (see [component.{id}.build] in spin.toml)",
                component.source.display()
            );
        }
        let compiled = runtime::load_component(&engine, &component.source)
            .with_context(|| format!("component {id:?}"))?;
        let mut allowed = component.allowed_outbound_hosts.clone();
        allowed.extend(extra.iter().cloned());
        let policy = Arc::new(OutboundPolicy::new(id, allowed, tls.clone()));
        let environment = component
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let config = ComponentConfig {
            variables: component.variables.clone(),
            environment,
            policy: policy.clone(),
            key_value: KeyValueCtx::new(stores.clone(), component.key_value_stores.clone()),
        };
        let handler = ComponentHandler::new(id, &compiled, &linker, config, reuse)?;
        tracing::info!(
            component = %id,
            wasi = if handler.is_p3() { "p3" } else { "p2" },
            allowed_outbound_hosts = %policy
                .allowed()
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            key_value_stores = %component.key_value_stores.join(", "),
            "component ready"
        );
        handlers.insert(id.clone(), Handler::new(handler));
    }
    Ok(Prepared {
        app,
        router,
        handlers,
    })
}

/// The key-value stores: `default` (in `state_dir` when there is one) and
/// `--key-value-store` labels, seeded from `--key-value`. As in Spin, a
/// component's `key_value_stores` label that no store has stops the start.
fn key_value_stores(
    options: &Options,
    app: &App,
    state_dir: Option<&Path>,
) -> Result<Arc<KeyValueStores>> {
    for label in &options.key_value_stores {
        crate::manifest::validate_store_label(label)
            .with_context(|| format!("--key-value-store {label:?}"))?;
    }
    let (extra, cap) = (&options.key_value_stores, options.key_value_max_bytes);
    let stores = match state_dir {
        Some(dir) => {
            let stores = KeyValueStores::with_state_dir(extra, cap, dir)?;
            // The line `spin up` prints, so logs read the same under either.
            println!(
                "Storing default key-value data to {:?}.",
                dir.join(key_value::SQLITE_FILE)
            );
            stores
        }
        None => KeyValueStores::new(extra, cap),
    };
    for (id, component) in &app.components {
        for label in &component.key_value_stores {
            if !stores.is_defined(label) {
                bail!(
                    "unknown key_value_stores label {label:?} for component {id:?}: edge-host defines {:?} and the labels given with --key-value-store",
                    key_value::DEFAULT_LABEL
                );
            }
        }
    }
    for entry in &options.key_values {
        let (key, value) = entry
            .split_once('=')
            .with_context(|| format!("--key-value {entry:?}: expected KEY=VALUE"))?;
        stores
            .set(
                key_value::DEFAULT_LABEL,
                key.to_string(),
                value.as_bytes().to_vec().into(),
            )
            .map_err(|e| anyhow::anyhow!("--key-value {key:?}: {e:?}"))?;
    }
    Ok(Arc::new(stores))
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The whole program after logging is set up.
pub async fn run(options: Options) -> Result<()> {
    let grace = seconds(options.shutdown_timeout, "--shutdown-timeout")?;
    let prepared = prepare(&options)?;
    if options.precompile {
        println!(
            "Compiled {} component(s) of {}",
            prepared.handlers.len(),
            prepared.app.name
        );
        return Ok(());
    }

    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}");
    println!("Serving {base}");
    println!("Available Routes:");
    for (route, component) in prepared.router.routes() {
        let shown = match route.strip_suffix("/...") {
            Some(prefix) => format!("{base}{prefix} (wildcard)"),
            None => format!("{base}{route}"),
        };
        println!("  {component}: {shown}");
    }
    tracing::info!("serving {} on {base}", prepared.app.name);

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; no new connections are accepted");
        let _ = stop_tx.send(true);
        // A second signal ends the process at once.
        shutdown_signal().await;
        tracing::warn!("second shutdown signal: exiting now");
        std::process::exit(130);
    });

    let server = Server::new(prepared.router, prepared.handlers, options.limits.clone());
    server.serve(listener, stop_rx, grace).await?;
    tracing::info!("stopped");
    Ok(())
}
