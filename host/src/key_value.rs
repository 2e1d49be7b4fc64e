//! Spin's key-value store: `spin:key-value/key-value@3.0.0` (Spin 4,
//! spin-sdk 7's `spin_sdk::key_value`).
//!
//! Stores exist by label: `default` always, plus those named with
//! `--key-value-store`. All components share them (as in Spin); a component
//! may open only the labels its `key_value_stores` in spin.toml grants, and
//! anything else is `access-denied`, as in Spin. As in `spin up`, `default`
//! lives in a SQLite file in the state folder (`.spin/sqlite_key_value.db`),
//! in Spin's own table layout, so it outlives restarts and either runtime can
//! read what the other wrote; without a state folder it is in memory, like
//! the other labels. Every function is an `async func` bound as a concurrent
//! host function; the work is a critical section on one mutex, run where it
//! may block (a SQLite write waits for the disk).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use wasmtime::component::{
    Accessor, FutureReader, HasData, Linker, Resource, ResourceTable, StreamReader,
};

use crate::bindings::spin::key_value::key_value as kv;
pub use kv::Error;

/// The store every Spin runtime defines.
pub const DEFAULT_LABEL: &str = "default";

/// Default cap on what all stores hold together. Values can be several MiB
/// (base64 images), so there is no per-value cap, but an in-memory store
/// has to stop somewhere: without a cap a guest (or a client driving one)
/// could grow the host until the OS kills it, taking every request down.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// Stores one instance may have open at once (Spin's `store-table-full`);
/// bounds the resource table when a guest opens stores without closing
/// them.
pub const MAX_OPEN_STORES: usize = 1024;

/// What an entry costs besides its key and value bytes (map node, string
/// and buffer headers), so that many tiny entries also count against the
/// cap.
const ENTRY_OVERHEAD: u64 = 64;

/// The message of the `other` error a set beyond the cap gets.
pub const STORE_FULL: &str = "store full";

fn entry_size(key: &str, value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
}

/// The file `spin up` keeps the `default` store in, inside its state folder.
pub const SQLITE_FILE: &str = "sqlite_key_value.db";

/// Every store of the application, shared by all components and instances.
#[derive(Debug)]
pub struct KeyValueStores {
    inner: Mutex<Inner>,
    max_bytes: u64,
}

#[derive(Debug, Default)]
struct Inner {
    stores: HashMap<String, Store>,
    /// Sum of `entry_size` over every entry of every store.
    used: u64,
}

/// Where one label's entries are.
#[derive(Debug)]
enum Store {
    /// Sorted so `get-keys` lists keys in a stable order.
    Memory(BTreeMap<String, Bytes>),
    /// Spin's SQLite layout: `spin_key_value(store, key, value)`, this label's
    /// rows having `store` = the label.
    Sqlite(rusqlite::Connection),
}

/// A SQLite failure, as the guest sees it (Spin reports them the same way).
fn sql_error(e: rusqlite::Error) -> Error {
    tracing::error!("key-value store: {e}");
    Error::Other(e.to_string())
}

impl Store {
    fn get(&self, label: &str, key: &str) -> Result<Option<Bytes>, Error> {
        match self {
            Store::Memory(map) => Ok(map.get(key).cloned()),
            Store::Sqlite(db) => db
                .prepare_cached("SELECT value FROM spin_key_value WHERE store = ?1 AND key = ?2")
                .and_then(|mut q| {
                    let mut rows = q.query_map([label, key], |row| row.get::<_, Vec<u8>>(0))?;
                    rows.next().transpose()
                })
                .map(|v| v.map(Bytes::from))
                .map_err(sql_error),
        }
    }

    /// The size `entry_size` counts for `key`, if it is there.
    fn size_of(&self, label: &str, key: &str) -> Result<Option<u64>, Error> {
        match self {
            Store::Memory(map) => Ok(map.get(key).map(|v| entry_size(key, v))),
            Store::Sqlite(db) => db
                .prepare_cached(
                    "SELECT length(value) FROM spin_key_value WHERE store = ?1 AND key = ?2",
                )
                .and_then(|mut q| {
                    let mut rows = q.query_map([label, key], |row| row.get::<_, i64>(0))?;
                    rows.next().transpose()
                })
                .map(|len| len.map(|len| key.len() as u64 + len.unsigned_abs() + ENTRY_OVERHEAD))
                .map_err(sql_error),
        }
    }

    fn set(&mut self, label: &str, key: String, value: Bytes) -> Result<(), Error> {
        match self {
            Store::Memory(map) => {
                map.insert(key, value);
                Ok(())
            }
            Store::Sqlite(db) => db
                .prepare_cached(
                    "INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT(store, key) DO UPDATE SET value = ?3",
                )
                .and_then(|mut q| q.execute(rusqlite::params![label, key, &value[..]]))
                .map(drop)
                .map_err(sql_error),
        }
    }

    fn delete(&mut self, label: &str, key: &str) -> Result<(), Error> {
        match self {
            Store::Memory(map) => {
                map.remove(key);
                Ok(())
            }
            Store::Sqlite(db) => db
                .prepare_cached("DELETE FROM spin_key_value WHERE store = ?1 AND key = ?2")
                .and_then(|mut q| q.execute([label, key]))
                .map(drop)
                .map_err(sql_error),
        }
    }

    fn keys(&self, label: &str) -> Result<Vec<String>, Error> {
        match self {
            Store::Memory(map) => Ok(map.keys().cloned().collect()),
            Store::Sqlite(db) => db
                .prepare_cached("SELECT key FROM spin_key_value WHERE store = ?1 ORDER BY key")
                .and_then(|mut q| q.query_map([label], |row| row.get(0))?.collect())
                .map_err(sql_error),
        }
    }
}

/// Opens (creating it if needed) Spin's key-value database at `path`, and
/// returns it with the bytes `label`'s entries count against the cap.
fn open_sqlite(path: &Path, label: &str) -> anyhow::Result<(rusqlite::Connection, u64)> {
    use anyhow::Context as _;
    let db = rusqlite::Connection::open(path)
        .with_context(|| format!("opening the key-value store {}", path.display()))?;
    // The table as `spin up` creates it.
    db.execute(
        "CREATE TABLE IF NOT EXISTS spin_key_value (
           store TEXT NOT NULL,
           key   TEXT NOT NULL,
           value BLOB NOT NULL,
           PRIMARY KEY (store, key)
         )",
        [],
    )
    .with_context(|| format!("{} is not a usable key-value store", path.display()))?;
    let used: i64 = db
        .query_row(
            "SELECT COALESCE(SUM(length(CAST(key AS BLOB)) + length(value)), 0) + ?2 * COUNT(*)
             FROM spin_key_value WHERE store = ?1",
            rusqlite::params![label, ENTRY_OVERHEAD as i64],
            |row| row.get(0),
        )
        .with_context(|| format!("reading {}", path.display()))?;
    Ok((db, used.unsigned_abs()))
}

impl KeyValueStores {
    /// The `default` store and the `extra` labels, empty and in memory,
    /// holding at most `max_bytes` together.
    pub fn new<I, S>(extra: I, max_bytes: u64) -> KeyValueStores
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut stores = HashMap::new();
        stores.insert(DEFAULT_LABEL.to_string(), Store::Memory(BTreeMap::new()));
        for label in extra {
            stores
                .entry(label.into())
                .or_insert_with(|| Store::Memory(BTreeMap::new()));
        }
        KeyValueStores {
            inner: Mutex::new(Inner { stores, used: 0 }),
            max_bytes,
        }
    }

    /// [`KeyValueStores::new`], with `default` kept in Spin's SQLite file in
    /// `state_dir` (created if missing) and what it already holds.
    pub fn with_state_dir<I, S>(
        extra: I,
        max_bytes: u64,
        state_dir: &Path,
    ) -> anyhow::Result<KeyValueStores>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        use anyhow::Context as _;
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("creating the state folder {}", state_dir.display()))?;
        let (db, used) = open_sqlite(&state_dir.join(SQLITE_FILE), DEFAULT_LABEL)?;
        let stores = KeyValueStores::new(extra, max_bytes);
        {
            let mut inner = stores.lock();
            inner
                .stores
                .insert(DEFAULT_LABEL.to_string(), Store::Sqlite(db));
            inner.used = used;
        }
        Ok(stores)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held (and `used` is updated
        // together with the map), so a poisoned lock still guards
        // consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_defined(&self, label: &str) -> bool {
        self.lock().stores.contains_key(label)
    }

    /// The defined labels, sorted.
    pub fn labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self.lock().stores.keys().cloned().collect();
        labels.sort();
        labels
    }

    /// Bytes held, as counted against the cap.
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The value of `key`; from memory, a cheap clone (the bytes are
    /// shared).
    pub fn get(&self, label: &str, key: &str) -> Result<Option<Bytes>, Error> {
        let inner = self.lock();
        let store = inner.stores.get(label).ok_or(Error::NoSuchStore)?;
        store.get(label, key)
    }

    /// Set `key`, replacing any value; `other("store full")` if the stores
    /// would then hold more than the cap (the old value stays).
    pub fn set(&self, label: &str, key: String, value: Bytes) -> Result<(), Error> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let store = inner.stores.get_mut(label).ok_or(Error::NoSuchStore)?;
        let old = store.size_of(label, &key)?.unwrap_or(0);
        let used = inner.used - old + entry_size(&key, &value);
        if used > self.max_bytes {
            return Err(Error::Other(STORE_FULL.to_string()));
        }
        store.set(label, key, value)?;
        inner.used = used;
        Ok(())
    }

    /// Remove `key`; no error if it was not there.
    pub fn delete(&self, label: &str, key: &str) -> Result<(), Error> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let store = inner.stores.get_mut(label).ok_or(Error::NoSuchStore)?;
        if let Some(size) = store.size_of(label, key)? {
            store.delete(label, key)?;
            inner.used -= size;
        }
        Ok(())
    }

    pub fn exists(&self, label: &str, key: &str) -> Result<bool, Error> {
        let inner = self.lock();
        let store = inner.stores.get(label).ok_or(Error::NoSuchStore)?;
        Ok(store.size_of(label, key)?.is_some())
    }

    /// Every key of the store, sorted.
    pub fn keys(&self, label: &str) -> Result<Vec<String>, Error> {
        let inner = self.lock();
        let store = inner.stores.get(label).ok_or(Error::NoSuchStore)?;
        store.keys(label)
    }
}

/// One component's access to the stores: the shared stores and the labels
/// its `key_value_stores` grants. Cloned into each instance's state.
#[derive(Debug, Clone)]
pub struct KeyValueCtx {
    stores: Arc<KeyValueStores>,
    allowed: Arc<BTreeSet<String>>,
    /// Stores this instance has open.
    open: usize,
}

impl KeyValueCtx {
    pub fn new(stores: Arc<KeyValueStores>, allowed: impl IntoIterator<Item = String>) -> Self {
        KeyValueCtx {
            stores,
            allowed: Arc::new(allowed.into_iter().collect()),
            open: 0,
        }
    }

    /// Whether `open(label)` may succeed, checked in Spin's order: the
    /// grant first (so an ungranted label tells nothing about which stores
    /// exist), then the label, then the table.
    fn check_open(&self, label: &str) -> Result<(), Error> {
        if !self.allowed.contains(label) {
            return Err(Error::AccessDenied);
        }
        if !self.stores.is_defined(label) {
            return Err(Error::NoSuchStore);
        }
        if self.open >= MAX_OPEN_STORES {
            return Err(Error::StoreTableFull);
        }
        Ok(())
    }
}

/// The host side of a guest's `store` resource: the label it was opened
/// with.
#[derive(Debug)]
pub struct OpenStore {
    label: String,
}

/// What the key-value host functions see of the store data: the
/// component's access and the instance's resource table.
pub struct KeyValueView<'a> {
    pub ctx: &'a mut KeyValueCtx,
    pub table: &'a mut ResourceTable,
}

/// The [`HasData`] marker the generated `add_to_linker` is keyed on.
pub struct SpinKeyValue;

impl HasData for SpinKeyValue {
    type Data<'a> = KeyValueView<'a>;
}

/// Runs a store operation that may wait on the disk (SQLite) without holding
/// up the other tasks of this runtime thread.
fn may_block<R>(op: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(op)
        }
        _ => op(),
    }
}

/// The shared stores and the label behind a guest's store handle; a handle
/// not in the table traps.
fn resolve<T>(
    accessor: &Accessor<T, SpinKeyValue>,
    store: &Resource<OpenStore>,
) -> wasmtime::Result<(Arc<KeyValueStores>, String)> {
    accessor.with(|mut access| {
        let view = access.get();
        let label = view.table.get(store)?.label.clone();
        Ok((view.ctx.stores.clone(), label))
    })
}

impl kv::Host for KeyValueView<'_> {}

impl kv::HostStore for KeyValueView<'_> {
    fn drop(&mut self, store: Resource<OpenStore>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        self.ctx.open = self.ctx.open.saturating_sub(1);
        Ok(())
    }
}

impl<T: Send> kv::HostStoreWithStore<T> for SpinKeyValue {
    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> wasmtime::Result<Result<Resource<OpenStore>, Error>> {
        accessor.with(|mut access| {
            let view = access.get();
            if let Err(e) = view.ctx.check_open(&label) {
                return Ok(Err(e));
            }
            match view.table.push(OpenStore { label }) {
                Ok(handle) => {
                    view.ctx.open += 1;
                    Ok(Ok(handle))
                }
                Err(_) => Ok(Err(Error::StoreTableFull)),
            }
        })
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        let (stores, label) = resolve(accessor, &store)?;
        Ok(may_block(|| stores.get(&label, &key)).map(|value| value.map(|bytes| bytes.to_vec())))
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (stores, label) = resolve(accessor, &store)?;
        let len = value.len();
        let result = may_block(|| stores.set(&label, key, Bytes::from(value)));
        if let Err(Error::Other(_)) = &result {
            // The guest only sees `other("store full")`; the operator needs
            // to know which limit to raise.
            tracing::warn!(
                store = %label,
                "key-value set of {len} bytes refused: the stores hold {} of at most {} bytes (--key-value-max-bytes)",
                stores.used_bytes(),
                stores.max_bytes()
            );
        }
        Ok(result)
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        let (stores, label) = resolve(accessor, &store)?;
        Ok(may_block(|| stores.delete(&label, &key)))
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
        key: String,
    ) -> wasmtime::Result<Result<bool, Error>> {
        let (stores, label) = resolve(accessor, &store)?;
        Ok(may_block(|| stores.exists(&label, &key)))
    }

    async fn get_keys(
        accessor: &Accessor<T, Self>,
        store: Resource<OpenStore>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), Error>>)> {
        let (stores, label) = resolve(accessor, &store)?;
        // A snapshot of the keys, taken now: later sets and deletes do not
        // change a listing in progress.
        let (keys, result) = match may_block(|| stores.keys(&label)) {
            Ok(keys) => (keys, Ok(())),
            Err(e) => (Vec::new(), Err(e)),
        };
        accessor.with(|mut access| {
            let keys = StreamReader::new(&mut access, keys)?;
            let result = FutureReader::new(
                &mut access,
                std::future::ready(Ok::<_, wasmtime::Error>(result)),
            )?;
            Ok((keys, result))
        })
    }
}

/// Add `spin:key-value/key-value@3.0.0` to a linker; `get` maps the store
/// data to the component's key-value access and resource table.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> KeyValueView<'_>,
) -> wasmtime::Result<()> {
    kv::add_to_linker::<T, SpinKeyValue>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn set_get_delete_exists_keys() {
        let stores = KeyValueStores::new(["other"], DEFAULT_MAX_BYTES);
        assert_eq!(stores.labels(), ["default", "other"]);
        stores.set("default", "b".into(), bytes("2")).unwrap();
        stores.set("default", "a".into(), bytes("1")).unwrap();
        stores.set("other", "a".into(), bytes("x")).unwrap();
        assert_eq!(stores.get("default", "a").unwrap(), Some(bytes("1")));
        assert_eq!(stores.get("other", "a").unwrap(), Some(bytes("x")));
        assert_eq!(stores.get("default", "zz").unwrap(), None);
        assert!(stores.exists("default", "b").unwrap());
        assert_eq!(stores.keys("default").unwrap(), ["a", "b"]);
        stores.delete("default", "a").unwrap();
        stores.delete("default", "a").unwrap(); // absent: still fine
        assert!(!stores.exists("default", "a").unwrap());
        assert_eq!(stores.keys("default").unwrap(), ["b"]);
        assert!(matches!(stores.get("nope", "a"), Err(Error::NoSuchStore)));
        assert!(matches!(
            stores.set("nope", "a".into(), bytes("1")),
            Err(Error::NoSuchStore)
        ));
    }

    #[test]
    fn memory_cap_counts_replacements_and_deletes() {
        let value = Bytes::from(vec![7u8; 1000]);
        let one = entry_size("k1", &value);
        let stores = KeyValueStores::new(Vec::<String>::new(), 2 * one);
        stores.set("default", "k1".into(), value.clone()).unwrap();
        stores.set("default", "k2".into(), value.clone()).unwrap();
        assert_eq!(stores.used_bytes(), 2 * one);
        // Full: a new key is refused, and nothing changes.
        match stores.set("default", "k3".into(), value.clone()) {
            Err(Error::Other(m)) => assert_eq!(m, STORE_FULL),
            other => panic!("{other:?}"),
        }
        assert!(!stores.exists("default", "k3").unwrap());
        // Replacing a value counts only the difference.
        stores.set("default", "k1".into(), bytes("small")).unwrap();
        stores.set("default", "k1".into(), value.clone()).unwrap();
        assert!(
            stores
                .set("default", "k1".into(), Bytes::from(vec![0u8; 1001]))
                .is_err()
        );
        assert_eq!(stores.get("default", "k1").unwrap(), Some(value.clone()));
        // Deleting frees room.
        stores.delete("default", "k2").unwrap();
        assert_eq!(stores.used_bytes(), one);
        stores.set("default", "k3".into(), value).unwrap();
    }

    #[test]
    fn the_default_store_in_a_state_dir_outlasts_the_process_in_spins_layout() {
        let dir = std::env::temp_dir().join(format!("edge-host-kv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let value = Bytes::from(vec![7u8; 1000]);
        let one = entry_size("k1", &value);
        {
            let stores = KeyValueStores::with_state_dir(["other"], 3 * one, &dir).unwrap();
            stores.set("default", "k1".into(), value.clone()).unwrap();
            stores.set("default", "k0".into(), value.clone()).unwrap();
            stores.set("other", "k9".into(), value.clone()).unwrap();
            stores.delete("default", "k0").unwrap();
            assert_eq!(stores.used_bytes(), 2 * one);
        }
        // Reopened: `default` kept its entry (and counts it), `other` was in memory.
        let stores = KeyValueStores::with_state_dir(["other"], 3 * one, &dir).unwrap();
        assert_eq!(stores.used_bytes(), one);
        assert_eq!(stores.get("default", "k1").unwrap(), Some(value.clone()));
        assert!(stores.exists("default", "k1").unwrap());
        assert_eq!(stores.keys("default").unwrap(), ["k1"]);
        assert_eq!(stores.keys("other").unwrap(), Vec::<String>::new());
        // The cap still holds across the restart.
        stores.set("default", "k2".into(), value.clone()).unwrap();
        stores.set("default", "k3".into(), value.clone()).unwrap();
        assert!(stores.set("default", "k4".into(), value.clone()).is_err());
        drop(stores);
        // The rows are where `spin up` looks for them.
        let db = rusqlite::Connection::open(dir.join(SQLITE_FILE)).unwrap();
        let n: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM spin_key_value WHERE store = 'default'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_checks_grant_then_label_then_table() {
        let stores = Arc::new(KeyValueStores::new(Vec::<String>::new(), DEFAULT_MAX_BYTES));
        let mut ctx = KeyValueCtx::new(stores, ["default".to_string(), "ghost".to_string()]);
        ctx.check_open("default").unwrap();
        assert!(matches!(ctx.check_open("other"), Err(Error::AccessDenied)));
        assert!(matches!(ctx.check_open("ghost"), Err(Error::NoSuchStore)));
        ctx.open = MAX_OPEN_STORES;
        assert!(matches!(
            ctx.check_open("default"),
            Err(Error::StoreTableFull)
        ));
    }
}
