//! Spin variables for components: `spin:variables/variables@3.0.0` (Spin 4,
//! spin-sdk 7; its `get` is an `async func`) and
//! `fermyon:spin/variables@2.0.0` (Spin 3, spin-sdk 3 to 5; sync), bound
//! from `crate::bindings`. The async `get` is bound as a concurrent
//! (store-accessing) host function, so a call does not block the instance's
//! other tasks.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmtime::component::{Accessor, HasData, Linker};

use crate::bindings::fermyon::spin::variables as v2;
use crate::bindings::spin::variables::variables as v3;
pub use v3::Error;

/// The resolved component variables of one component.
#[derive(Debug, Clone, Default)]
pub struct VariablesCtx {
    values: Arc<BTreeMap<String, String>>,
}

impl VariablesCtx {
    pub fn new(values: Arc<BTreeMap<String, String>>) -> Self {
        VariablesCtx { values }
    }

    /// What `get(name)` returns to the guest.
    pub fn get(&self, name: &str) -> Result<String, Error> {
        if let Err(e) = crate::manifest::validate_variable_name(name) {
            return Err(Error::InvalidName(format!("{e:#}")));
        }
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| Error::Undefined(format!("no variable for {name:?}")))
    }
}

/// The [`HasData`] marker the generated `add_to_linker`s are keyed on.
pub struct SpinVariables;

impl HasData for SpinVariables {
    type Data<'a> = &'a mut VariablesCtx;
}

impl v3::Host for VariablesCtx {}

impl<T: Send> v3::HostWithStore<T> for SpinVariables {
    async fn get(accessor: &Accessor<T, Self>, name: String) -> Result<String, Error> {
        accessor.with(|mut access| access.get().get(&name))
    }
}

impl v2::Host for VariablesCtx {
    fn get(&mut self, name: String) -> Result<String, v2::Error> {
        VariablesCtx::get(self, &name).map_err(|e| match e {
            Error::InvalidName(m) => v2::Error::InvalidName(m),
            Error::Undefined(m) => v2::Error::Undefined(m),
            Error::Provider(m) => v2::Error::Provider(m),
            Error::Other(m) => v2::Error::Other(m),
        })
    }
}

/// Add both variables interfaces to a linker; `get` maps the store data to
/// the component's variables.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut VariablesCtx,
) -> wasmtime::Result<()> {
    v3::add_to_linker::<T, SpinVariables>(linker, get)?;
    v2::add_to_linker::<T, SpinVariables>(linker, get)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_semantics() {
        let mut ctx = VariablesCtx::new(Arc::new(
            [("api_keys".to_string(), "k1,k2".to_string())].into(),
        ));
        assert_eq!(ctx.get("api_keys").unwrap(), "k1,k2");
        assert!(matches!(ctx.get("missing"), Err(Error::Undefined(_))));
        assert!(matches!(ctx.get("Bad-Name"), Err(Error::InvalidName(_))));
        assert!(matches!(
            v2::Host::get(&mut ctx, "missing".into()),
            Err(v2::Error::Undefined(_))
        ));
    }
}
