//! A module compiled, checked against the WIT world, and linked to the host calls.

use std::sync::Arc;

use wasmtime::{ExternType, FuncType, InstancePre, Linker, ModuleExport, ValType};

use crate::abi::{Hook, post_return_export, resume_export};
use crate::failure::quoted;
use crate::instance::InstanceState;

const HINT: &str = "is it built for the wasmgate:processor@0.1.0 world?";

/// Where each export the host calls is, found once per module rather than by name per instance.
pub struct ExportIndex {
    pub memory: ModuleExport,
    pub realloc: ModuleExport,
    pub hooks: [ModuleExport; 6],
    pub resume: ModuleExport,
    pub post_returns: [Option<ModuleExport>; 6],
    pub initialize: Option<ModuleExport>,
}

pub struct ModuleInner {
    pub name: String,
    pub compiled: wasmtime::Module,
    /// The module's bytes as given, when it was compiled instrumented: its instances can be
    /// snapshotted into an init image (see `image`).
    pub source: Option<Arc<[u8]>>,
    pub pre: InstancePre<InstanceState>,
    pub exports: ExportIndex,
}

#[derive(Clone)]
pub struct Module(pub Arc<ModuleInner>);

impl Module {
    /// Checks a compiled module against the world and links it; the error says what does not fit.
    /// `source`: the bytes `compiled` was instrumented from, if it was.
    pub fn link(
        name: &str,
        compiled: wasmtime::Module,
        source: Option<Arc<[u8]>>,
        linker: &Linker<InstanceState>,
    ) -> Result<Module, String> {
        let exports = check_exports(name, &compiled)?;
        let pre = linker
            .instantiate_pre(&compiled)
            .map_err(|error| format!("module {} cannot be linked: {error:#}", quoted(name)))?;
        Ok(Module(Arc::new(ModuleInner { name: name.to_owned(), compiled, source, pre, exports })))
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    pub fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        self.0.compiled.serialize()
    }
}

type Signature = (&'static [ValType], &'static [ValType]);

const I32: ValType = ValType::I32;

/// The flat core signature of each hook, as the canonical ABI lowers it.
fn hook_signature(hook: Hook) -> Signature {
    match hook {
        Hook::Init => (&[I32, I32], &[I32]),
        Hook::RequestHeaders | Hook::ResponseHeaders => (&[I32], &[I32]),
        Hook::RequestBody | Hook::ResponseBody => (&[I32, I32, I32], &[I32]),
        Hook::Done => (&[], &[]),
    }
}

fn render(params: impl Iterator<Item = ValType>, results: impl Iterator<Item = ValType>) -> String {
    let list = |types: Vec<String>| types.join(", ");
    format!(
        "({}) -> ({})",
        list(params.map(|t| t.to_string()).collect()),
        list(results.map(|t| t.to_string()).collect())
    )
}

fn matches(ty: &FuncType, (params, results): Signature) -> bool {
    let same = |got: &mut dyn ExactSizeIterator<Item = ValType>, want: &[ValType]| {
        got.len() == want.len() && got.zip(want).all(|(a, b)| ValType::eq(&a, b))
    };
    same(&mut ty.params(), params) && same(&mut ty.results(), results)
}

fn check_exports(name: &str, module: &wasmtime::Module) -> Result<ExportIndex, String> {
    let name_q = quoted(name);
    match module.get_export("memory") {
        Some(ExternType::Memory(_)) => {}
        _ => return Err(format!("module {name_q} does not export its memory as 'memory'; {HINT}")),
    }
    // Calls into the guest go through typed functions made without a check
    // per instance: every function the host may call must have exactly the
    // type the host calls it with.
    let func = |export: &str, signature: Signature, required: bool| -> Result<Option<ModuleExport>, String> {
        match module.get_export(export) {
            None if !required => Ok(None),
            Some(ExternType::Func(ty)) if matches(&ty, signature) => Ok(module.get_export_index(export)),
            Some(ExternType::Func(ty)) => Err(format!(
                "module {name_q} exports {} with signature {}, expected {}",
                quoted(export),
                render(ty.params(), ty.results()),
                render(signature.0.iter().cloned(), signature.1.iter().cloned()),
            )),
            _ => Err(format!("module {name_q} does not export function {}; {HINT}", quoted(export))),
        }
    };
    let required =
        |export: &str, signature: Signature| Ok::<_, String>(func(export, signature, true)?.expect("required"));
    let mut hooks = Vec::with_capacity(6);
    let mut post_returns = Vec::with_capacity(6);
    for hook in Hook::ALL {
        let signature = hook_signature(hook);
        hooks.push(required(&hook.export(), signature)?);
        post_returns.push(func(&post_return_export(&hook.export()), (signature.1, &[]), false)?);
    }
    Ok(ExportIndex {
        memory: module.get_export_index("memory").expect("checked above"),
        realloc: required("cabi_realloc", (&[I32, I32, I32, I32], &[I32]))?,
        hooks: hooks.try_into().unwrap_or_else(|_| unreachable!("one per hook")),
        resume: required(&resume_export(), (&[], &[I32]))?,
        post_returns: post_returns.try_into().unwrap_or_else(|_| unreachable!("one per hook")),
        initialize: func("_initialize", (&[], &[]), false)?,
    })
}
