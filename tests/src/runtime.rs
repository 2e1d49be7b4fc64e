//! Which runtime serves the edge component in this test run: the project's own
//! `edge-host` (the default) or the real Spin CLI, chosen with
//! `EDGE_RUNTIME=edge-host|spin`. Both read the same spin.toml and edge.wasm and
//! get the same variables, so the same tests check both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::process::Process;
use crate::{binary, edge_wasm, repo_root};

/// A runtime for the edge component.
#[derive(Debug, Clone)]
pub enum Runtime {
    /// `edge-host` (host/), built by scripts/build.
    EdgeHost,
    /// The `spin` CLI at this path (SPIN_BIN, or `spin` on PATH).
    Spin(PathBuf),
}

/// Optional settings only one kind of test needs.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Spin's `--runtime-config-file` (e.g. the key-value store on Redis). edge-host
    /// has no such file: a test that needs one runs under Spin only.
    pub runtime_config: Option<PathBuf>,
    /// The runtime's state folder (the SQLite key-value store; Spin's logs); a
    /// fresh temporary one when None. Give the same one to a restarted runtime
    /// to find what the last one stored.
    pub state_dir: Option<PathBuf>,
    /// More environment for the runtime's process (edge-host's flags, say).
    pub env: Vec<(String, String)>,
}

/// What EDGE_RUNTIME asks for: Ok(runtime), or Err(why it can't be had).
fn chosen() -> &'static Result<Runtime, String> {
    static CHOSEN: OnceLock<Result<Runtime, String>> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        match std::env::var("EDGE_RUNTIME").unwrap_or_default().as_str() {
            "" | "edge-host" => Ok(Runtime::EdgeHost),
            "spin" => spin_cli().map(Runtime::Spin).ok_or_else(|| {
                "EDGE_RUNTIME=spin, but no Spin CLI was found (set SPIN_BIN to its path or put `spin` on PATH)"
                    .to_string()
            }),
            other => Err(format!(
                "EDGE_RUNTIME={other:?}: expected edge-host or spin"
            )),
        }
    })
}

/// The Spin CLI: $SPIN_BIN, else `spin` on PATH.
pub fn spin_cli() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SPIN_BIN").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    on_path("spin")
}

/// The program `name` on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The runtime of this run. Panics on a bad EDGE_RUNTIME; call [`edge_runtime_present`]
/// first in tests that may run where Spin is missing.
pub fn runtime() -> &'static Runtime {
    match chosen() {
        Ok(rt) => rt,
        Err(why) => panic!("{why}"),
    }
}

/// Whether the edge runtime this run asks for is here. When it is not (Spin asked
/// for but not installed), says so on stderr: the calling test then returns, so a
/// machine without Spin still passes. A misspelt EDGE_RUNTIME fails the test.
pub fn edge_runtime_present() -> bool {
    match chosen() {
        Ok(_) => true,
        Err(why) if why.contains("no Spin CLI") => {
            skip(why);
            false
        }
        Err(why) => panic!("{why}"),
    }
}

/// Whether this run is the Spin pass, where tests that never touch the edge (the
/// inference server's own) are left to the edge-host pass rather than run twice.
/// Says so on stderr when it returns true.
pub fn spin_pass_skips_edgeless_test() -> bool {
    let spin = std::env::var("EDGE_RUNTIME").is_ok_and(|v| v == "spin");
    if spin {
        skip("under EDGE_RUNTIME=spin: this test does not involve the edge");
    }
    spin
}

/// The name the runtime's process gets in test output.
pub fn name(rt: &Runtime) -> &'static str {
    match rt {
        Runtime::EdgeHost => "edge-host",
        Runtime::Spin(_) => "spin",
    }
}

/// The command that serves spin.toml on a free loopback port, with the
/// application variables `vars` (NAME, value) set as Spin's environment provider
/// reads them (SPIN_VARIABLE_NAME), and the scratch folder it needs kept.
pub fn command(
    rt: &Runtime,
    vars: &[(String, String)],
    opts: &RuntimeOptions,
) -> (Command, tempfile::TempDir) {
    let scratch = tempfile::tempdir().expect("a scratch folder for the runtime");
    // Both keep the default key-value store in state/sqlite_key_value.db.
    let state = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| scratch.path().join("state"));
    let mut cmd = match rt {
        Runtime::EdgeHost => {
            assert!(
                opts.runtime_config.is_none(),
                "edge-host takes no runtime-config file"
            );
            let mut cmd = Command::new(binary("edge-host"));
            cmd.arg("--from")
                .arg(repo_root().join("spin.toml"))
                .arg("--source")
                .arg(format!("edge={}", edge_wasm().display()));
            cmd
        }
        Runtime::Spin(spin) => {
            let mut cmd = Command::new(spin);
            cmd.arg("up")
                .arg("--from")
                .arg(manifest_for_spin(scratch.path()));
            if let Some(file) = &opts.runtime_config {
                cmd.arg("--runtime-config-file").arg(file);
            }
            cmd
        }
    };
    cmd.arg("--state-dir")
        .arg(state)
        .arg("--listen")
        .arg("127.0.0.1:0");
    for (name, value) in vars {
        cmd.env(format!("SPIN_VARIABLE_{name}"), value);
    }
    cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
    (cmd, scratch)
}

/// spin.toml as Spin must read it: the project's own file when the component was
/// built where its `source` says; otherwise (CARGO_TARGET_DIR elsewhere) a copy in
/// `dir` that names the built file, since `spin up` has no `--source`.
fn manifest_for_spin(dir: &Path) -> PathBuf {
    let manifest = repo_root().join("spin.toml");
    let wasm = edge_wasm();
    let listed = repo_root().join("target/wasm32-wasip2/release/edge.wasm");
    if wasm == listed {
        return manifest;
    }
    let text = std::fs::read_to_string(&manifest).expect("reading spin.toml");
    let line = "source = \"target/wasm32-wasip2/release/edge.wasm\"";
    assert!(text.contains(line), "spin.toml no longer has {line}");
    let text = text.replace(line, &format!("source = {:?}", wasm.display().to_string()));
    let copy = dir.join("spin.toml");
    std::fs::write(&copy, text).expect("writing spin.toml's copy");
    copy
}

/// Starts the runtime and waits for its `Serving http://ADDR` line.
pub fn start(rt: &Runtime, vars: &[(String, String)], opts: &RuntimeOptions) -> (Process, String) {
    let (mut cmd, scratch) = command(rt, vars, opts);
    let mut p = Process::start(name(rt), &mut cmd);
    p.keep_until_drop(scratch);
    let addr = p.wait_for_listen_address();
    (p, format!("http://{addr}"))
}

/// Says why a test stops early, on the real stderr: the test harness captures
/// `eprintln!`, and a skip must be visible in a passing run.
pub fn skip(why: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "skipped: {why}");
}
