//! Host bindings for the Spin interfaces edge-host implements itself,
//! generated from the WIT vendored in `host/wit/` (world
//! `edge-host:runtime/spin-host`). One `bindgen!` for all of them, so each
//! interface is generated once; `variables` and `key_value` implement them.

wasmtime::component::bindgen!({
    path: "wit",
    world: "edge-host:runtime/spin-host",
    imports: {
        // `async func`s are already `async | store`; key-value adds
        // `trappable` so a stale or foreign store handle traps, as in Spin.
        "spin:key-value/key-value": trappable,
        "spin:variables/variables.get": store,
    },
    with: {
        // An open store is a handle the host keeps in the instance's
        // resource table.
        "spin:key-value/key-value.store": crate::key_value::OpenStore,
    },
});
