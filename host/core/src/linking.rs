//! How host calls are defined: each once, with its flat signature recorded
//! beside it, and every call through one funnel.
//!
//! The funnel refuses a call made outside a hook (from a start function) or
//! from inside another host call (from the `cabi_realloc` it made), and turns
//! the [`Failure`] a call returns into the error that unwinds the guest:
//! the failure itself travels with the unwind, and `classify` finds it there.

use wasmtime::{Caller, Engine, Linker, ValType};

use crate::failure::Failure;
use crate::instance::InstanceState;

/// A host import and its flat core signature.
#[derive(Clone, Debug)]
pub struct Import {
    pub module: &'static str,
    pub name: &'static str,
    pub params: Vec<ValType>,
    pub results: Vec<ValType>,
}

impl Import {
    /// The signature in WAT: `(param i32 i32) (result i32)`.
    pub fn wat(&self) -> String {
        let list = |word: &str, types: &[ValType]| {
            if types.is_empty() {
                String::new()
            } else {
                let names: Vec<String> = types.iter().map(ValType::to_string).collect();
                format!("({word} {})", names.join(" "))
            }
        };
        [list("param", &self.params), list("result", &self.results)]
            .into_iter()
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The wasm type a host call's Rust parameter or result stands for.
pub trait Wasm {
    const TYPE: ValType;
}

impl Wasm for u32 {
    const TYPE: ValType = ValType::I32;
}

impl Wasm for i64 {
    const TYPE: ValType = ValType::I64;
}

impl Wasm for f64 {
    const TYPE: ValType = ValType::F64;
}

/// A linker being filled with host calls, and what was put in it.
pub struct Imports {
    pub linker: Linker<InstanceState>,
    defined: Vec<Import>,
}

impl Imports {
    pub fn new(engine: &Engine) -> Imports {
        Imports { linker: Linker::new(engine), defined: Vec::new() }
    }

    pub fn record(&mut self, module: &'static str, name: &'static str, params: &[ValType], results: &[ValType]) {
        self.defined.push(Import { module, name, params: params.to_vec(), results: results.to_vec() });
    }

    pub fn finish(self) -> (Linker<InstanceState>, Vec<Import>) {
        (self.linker, self.defined)
    }
}

/// Starts a host call: only in a hook, and never from inside another.
pub fn enter(caller: &mut Caller<'_, InstanceState>, name: &str) -> Result<(), Failure> {
    let state = caller.data_mut();
    if state.phase.is_none() {
        return Err(Failure::abi(format!("host call {name} made by the module's start function, outside any hook")));
    }
    if state.in_host_call {
        return Err(Failure::abi(format!("{name} called while the host was in another host call (re-entrant)")));
    }
    state.in_host_call = true;
    Ok(())
}

/// Runs a synchronous host call through the funnel.
pub fn funnel<R>(
    caller: &mut Caller<'_, InstanceState>,
    name: &str,
    call: impl FnOnce(&mut Caller<'_, InstanceState>) -> Result<R, Failure>,
) -> wasmtime::Result<R> {
    enter(caller, name)?;
    let result = call(caller);
    caller.data_mut().in_host_call = false;
    Ok(result?)
}

/// Defines a host call, synchronous or async, on an [`Imports`]:
///
/// `define!(imports, MODULE, "name", sync function(a: u32, b: u32) -> u32);`
///
/// calls `function(&mut caller, a, b)`, which returns `Result<u32, Failure>`.
macro_rules! define {
    ($imports:expr, $module:expr, $name:literal, sync $func:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {{
        $imports.record(
            $module,
            $name,
            &[$(<$ty as $crate::linking::Wasm>::TYPE),*],
            &[$(<$ret as $crate::linking::Wasm>::TYPE)?],
        );
        $imports.linker.func_wrap(
            $module,
            $name,
            |mut caller: wasmtime::Caller<'_, $crate::instance::InstanceState>, $($arg: $ty),*| {
                $crate::linking::funnel(&mut caller, $name, |caller| $func(caller, $($arg),*))
            },
        )?;
    }};
    ($imports:expr, $module:expr, $name:literal, async $func:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {{
        $imports.record(
            $module,
            $name,
            &[$(<$ty as $crate::linking::Wasm>::TYPE),*],
            &[$(<$ret as $crate::linking::Wasm>::TYPE)?],
        );
        $imports.linker.func_wrap_async(
            $module,
            $name,
            |mut caller: wasmtime::Caller<'_, $crate::instance::InstanceState>, ($($arg,)*): ($($ty,)*)| {
                Box::new(async move {
                    $crate::linking::enter(&mut caller, $name)?;
                    let result = $func(&mut caller, $($arg),*).await;
                    caller.data_mut().in_host_call = false;
                    Ok(result?)
                })
            },
        )?;
    }};
}

pub(crate) use define;
