//! The wasmtime side: engine, compiled-component cache, linker, per-store
//! state, and the `ProxyHandler` state that instantiates and reuses
//! component instances.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreContextMut};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::handler::{
    HandlerState, Instance, ProxyHandler, ProxyPre, ShouldAccept, WorkerExpiration, WorkerState,
    WorkerStatus,
};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::key_value::{KeyValueCtx, KeyValueView};
use crate::outbound::{OutboundHooks, OutboundPolicy};
use crate::stdio::GuestOutput;
use crate::variables::VariablesCtx;

/// The engine every component runs on: component model with the async ABI
/// (WASIp3), Cranelift.
pub fn engine() -> Result<Engine> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.wasm_component_model_async(true);
    Engine::new(&config).map_err(anyhow::Error::from)
}

/// The cache file name for a component: a hash of its bytes, of the engine's
/// compatibility (wasmtime version and configuration), and of this host's
/// version.
fn cache_key(engine: &Engine, wasm: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    wasm.hash(&mut h);
    engine.precompile_compatibility_hash().hash(&mut h);
    env!("CARGO_PKG_VERSION").hash(&mut h);
    h.finish()
}

fn cache_paths(wasm_path: &Path, key: u64) -> Vec<PathBuf> {
    let stem = wasm_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "component".into());
    let name = format!("{stem}.{key:016x}.cwasm");
    let mut paths = Vec::new();
    if let Some(dir) = wasm_path.parent() {
        paths.push(dir.join(&name));
    }
    // The fallback is per user (never a shared temp folder: a planted file
    // there would be loaded as native code).
    let user_cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(dir) = user_cache {
        paths.push(dir.join("edge-host").join(name));
    }
    paths
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "cwasm.tmp{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Remove cache files of older builds of the same component next to `keep`.
fn remove_stale(keep: &Path) {
    let (Some(dir), Some(name)) = (keep.parent(), keep.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    let Some((stem, _)) = name.strip_suffix(".cwasm").and_then(|n| n.rsplit_once('.')) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let other = entry.file_name().to_string_lossy().into_owned();
        let is_cache = other
            .strip_prefix(stem)
            .and_then(|r| r.strip_prefix('.'))
            .and_then(|r| r.strip_suffix(".cwasm"))
            .is_some_and(|hash| hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()));
        if is_cache && other != name {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Load a component, compiling it only when no cached compilation for these
/// exact bytes and this engine exists (next to the `.wasm`, or else in
/// `$XDG_CACHE_HOME/edge-host` or `~/.cache/edge-host`).
pub fn load_component(engine: &Engine, wasm_path: &Path) -> Result<Component> {
    let wasm = std::fs::read(wasm_path)
        .with_context(|| format!("cannot read component {}", wasm_path.display()))?;
    let key = cache_key(engine, &wasm);
    let paths = cache_paths(wasm_path, key);
    for path in &paths {
        if path.is_file() {
            // SAFETY: the file was written by `Engine::precompile_component`
            // of this same host build (the name carries the hash of the wasm
            // bytes and of the engine configuration), atomically renamed into
            // place, and wasmtime checks its header against the engine.
            #[allow(unsafe_code)]
            let loaded = unsafe { Component::deserialize_file(engine, path) };
            match loaded {
                Ok(component) => {
                    tracing::debug!("loaded precompiled {}", path.display());
                    return Ok(component);
                }
                Err(e) => tracing::warn!("ignoring unusable cache {}: {e}", path.display()),
            }
        }
    }

    let start = Instant::now();
    tracing::info!(
        "compiling {} ({} KiB); the result is cached for later starts",
        wasm_path.display(),
        wasm.len() / 1024
    );
    let compiled = engine
        .precompile_component(&wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile component {}", wasm_path.display()))?;
    tracing::info!(
        "compiled {} in {:.1}s",
        wasm_path.display(),
        start.elapsed().as_secs_f64()
    );
    let mut cached = false;
    for path in &paths {
        match write_atomically(path, &compiled) {
            Ok(()) => {
                remove_stale(path);
                cached = true;
                break;
            }
            Err(e) => tracing::debug!("cannot write cache {}: {e}", path.display()),
        }
    }
    if !cached {
        tracing::warn!(
            "could not cache the compiled component; it will be compiled again next start"
        );
    }
    // SAFETY: these bytes come straight from `precompile_component` above.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, &compiled) };
    component.map_err(anyhow::Error::from)
}

/// Per-store state: one per component instance.
pub struct HostState {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: OutboundHooks,
    variables: VariablesCtx,
    key_value: KeyValueCtx,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// The linker with everything a Spin 4 (or Spin 3) HTTP component may
/// import: WASIp2 (async) and WASIp3 (cli, clocks, random, filesystem and
/// sockets, both with nothing granted), wasi:http p2 and p3,
/// spin:variables and spin:key-value. Components importing anything else
/// fail at startup.
pub fn linker(engine: &Engine) -> Result<Linker<HostState>> {
    let mut linker = Linker::<HostState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    crate::variables::add_to_linker(&mut linker, |s| &mut s.variables)?;
    crate::key_value::add_to_linker(&mut linker, |s| KeyValueView {
        ctx: &mut s.key_value,
        table: &mut s.table,
    })?;
    Ok(linker)
}

/// Instance reuse, as `spin up` and `wasmtime serve` configure it.
#[derive(Debug, Clone, Copy)]
pub struct ReuseConfig {
    /// Requests one instance serves before it is dropped.
    pub max_instance_reuse_count: usize,
    /// Requests one instance serves at once (WASIp3 only; WASIp2 gets 1).
    pub max_instance_concurrent_reuse_count: usize,
    /// How long an idle instance is kept for reuse.
    pub idle_instance_timeout: Duration,
    /// How long a request may take to produce its response (none by default).
    pub request_timeout: Option<Duration>,
}

impl Default for ReuseConfig {
    fn default() -> Self {
        // Spin 4's defaults for WASIp3 components.
        ReuseConfig {
            max_instance_reuse_count: 128,
            max_instance_concurrent_reuse_count: 16,
            idle_instance_timeout: Duration::from_secs(1),
            request_timeout: None,
        }
    }
}

/// What one component is given, from spin.toml and the command line.
pub struct ComponentConfig {
    /// Component variables, resolved.
    pub variables: BTreeMap<String, String>,
    pub environment: Vec<(String, String)>,
    pub policy: Arc<OutboundPolicy>,
    /// The key-value stores and the labels the component may open.
    pub key_value: KeyValueCtx,
}

/// Everything needed to make stores and instances for one component.
pub struct ComponentHandler {
    id: Arc<str>,
    engine: Engine,
    pre: ProxyPre<HostState>,
    is_p3: bool,
    variables: Arc<BTreeMap<String, String>>,
    environment: Vec<(String, String)>,
    policy: Arc<OutboundPolicy>,
    key_value: KeyValueCtx,
    reuse: ReuseConfig,
    next_instance: AtomicU64,
}

impl ComponentHandler {
    /// Prepare a component: check its imports against the linker and find
    /// its `wasi:http` handler export (0.3 first, then 0.2).
    pub fn new(
        id: &str,
        component: &Component,
        linker: &Linker<HostState>,
        config: ComponentConfig,
        reuse: ReuseConfig,
    ) -> Result<ComponentHandler> {
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("component {id:?} imports something edge-host does not provide")
            })?;
        let (pre, is_p3) = match wasmtime_wasi_http::p3::bindings::ServicePre::new(
            instance_pre.clone(),
        ) {
            Ok(pre) => (ProxyPre::P3(pre), true),
            Err(p3_err) => match wasmtime_wasi_http::p2::bindings::ProxyPre::new(instance_pre) {
                Ok(pre) => (ProxyPre::P2(pre), false),
                Err(p2_err) => anyhow::bail!(
                    "component {id:?} exports neither wasi:http/handler@0.3 ({p3_err}) nor wasi:http/incoming-handler@0.2 ({p2_err})"
                ),
            },
        };
        Ok(ComponentHandler {
            id: id.into(),
            engine: component.engine().clone(),
            pre,
            is_p3,
            variables: Arc::new(config.variables),
            environment: config.environment,
            policy: config.policy,
            key_value: config.key_value,
            reuse,
            next_instance: AtomicU64::new(0),
        })
    }

    pub fn is_p3(&self) -> bool {
        self.is_p3
    }

    fn new_store(&self) -> Store<HostState> {
        let mut wasi = WasiCtxBuilder::new();
        // Guest stdout and stderr both go to the host's stderr, line by line.
        wasi.stdout(GuestOutput::new());
        wasi.stderr(GuestOutput::new());
        wasi.envs(&self.environment);
        // No preopened folders, no sockets (outbound HTTP goes through
        // wasi:http and its allowed hosts), no inherited arguments.
        let state = HostState {
            table: ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: OutboundHooks::new(self.policy.clone()),
            variables: VariablesCtx::new(self.variables.clone()),
            key_value: self.key_value.clone(),
        };
        Store::new(&self.engine, state)
    }
}

impl HandlerState for ComponentHandler {
    type StoreData = HostState;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<HostState, Expiration, Worker>> {
        let instance = self.next_instance.fetch_add(1, Ordering::Relaxed);
        let mut store = self.new_store();
        let proxy = self.pre.instantiate_async(&mut store).await?;
        tracing::debug!(component = %self.id, instance, "instantiated");
        let (max_reuse, max_concurrent) = if self.is_p3 {
            (
                self.reuse.max_instance_reuse_count.max(1),
                self.reuse.max_instance_concurrent_reuse_count.max(1),
            )
        } else {
            // A WASIp2 handler runs one request per instance, as in Spin.
            (1, 1)
        };
        let request_timeout = self.reuse.request_timeout.unwrap_or(Duration::MAX);
        Ok(Instance {
            store,
            proxy,
            view: <HostState as WasiHttpView>::http,
            expiration: Expiration {
                idle_timeout: self.reuse.idle_instance_timeout,
                request_timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            },
            state: Worker {
                component: self.id.clone(),
                instance,
                max_reuse,
                max_concurrent,
                request_timeout: self.reuse.request_timeout,
            },
        })
    }
}

/// When a worker (one instance) is dropped: idle too long, or a request
/// past its timeout.
pub struct Expiration {
    idle_timeout: Duration,
    request_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl WorkerExpiration for Expiration {
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        status: WorkerStatus,
        start: Instant,
    ) -> Poll<()> {
        let this = self.get_mut();
        let timeout = match status {
            WorkerStatus::Idle => this.idle_timeout,
            WorkerStatus::Requests | WorkerStatus::PostReturn => this.request_timeout,
        };
        let Some(deadline) = start.checked_add(timeout) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if this.sleep.deadline() != deadline {
            this.sleep.as_mut().reset(deadline);
        }
        this.sleep.as_mut().poll(cx)
    }
}

/// One instance's bookkeeping.
pub struct Worker {
    component: Arc<str>,
    instance: u64,
    max_reuse: usize,
    max_concurrent: usize,
    request_timeout: Option<Duration>,
}

impl WorkerState for Worker {
    type StoreData = HostState;
    type RequestData = ();

    fn should_accept_request(&self, concurrent_count: usize, total_count: usize) -> ShouldAccept {
        if total_count >= self.max_reuse {
            ShouldAccept::Never
        } else if concurrent_count >= self.max_concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        _store: StoreContextMut<'_, HostState>,
        _data: (),
        _task: wasmtime::component::GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>> {
        match self.request_timeout {
            Some(t) => Box::pin(tokio::time::sleep(t)),
            None => Box::pin(std::future::pending()),
        }
    }

    fn drop(&self, store: Store<HostState>, result: wasmtime::Result<()>) {
        if let Err(error) = result {
            tracing::error!(
                component = %self.component,
                instance = self.instance,
                "component instance failed (its in-flight requests get a 500): {error:#}"
            );
        }
        drop(store);
    }
}

/// A component ready to serve.
pub type Handler = ProxyHandler<ComponentHandler>;

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty component, with a custom section named `tag` so that
    /// different tags give different bytes.
    fn empty_component(tag: &str) -> Vec<u8> {
        let mut bytes = b"\0asm\x0d\x00\x01\x00".to_vec();
        bytes.push(0); // custom section
        bytes.push((tag.len() + 1) as u8);
        bytes.push(tag.len() as u8);
        bytes.extend_from_slice(tag.as_bytes());
        bytes
    }

    fn cwasm_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cwasm"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn compiled_components_are_cached_by_content() {
        let dir = std::env::temp_dir().join(format!("edge-host-cache-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wasm = dir.join("my.app.wasm");
        let engine = engine().unwrap();

        std::fs::write(&wasm, empty_component("one")).unwrap();
        load_component(&engine, &wasm).unwrap();
        let first = cwasm_files(&dir);
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(first[0].starts_with("my.app.") && first[0].len() == "my.app.".len() + 16 + 6);
        // Loading again uses the cache (the file is not rewritten).
        let modified = std::fs::metadata(dir.join(&first[0]))
            .unwrap()
            .modified()
            .unwrap();
        load_component(&engine, &wasm).unwrap();
        assert_eq!(
            std::fs::metadata(dir.join(&first[0]))
                .unwrap()
                .modified()
                .unwrap(),
            modified
        );

        // New bytes: a new cache file, and the old one is removed; other
        // files are left alone.
        std::fs::write(dir.join("other.0123456789abcdef.cwasm"), b"x").unwrap();
        std::fs::write(&wasm, empty_component("two")).unwrap();
        load_component(&engine, &wasm).unwrap();
        let second = cwasm_files(&dir);
        assert_eq!(second.len(), 2, "{second:?}");
        assert!(!second.contains(&first[0]));
        assert!(second.contains(&"other.0123456789abcdef.cwasm".to_string()));

        // A corrupt cache file is ignored and replaced.
        let current = second.iter().find(|n| n.starts_with("my.app.")).unwrap();
        std::fs::write(dir.join(current), b"not a cwasm").unwrap();
        load_component(&engine, &wasm).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
