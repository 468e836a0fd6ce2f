#![doc = include_str!("../README.md")]

mod command;
mod context;
pub mod fs;
pub mod http;
mod result;

pub use command::{Command, CommandOutput};
pub use context::Context;
pub use result::{Failure, FailureKind, Outcome};

/// The WASI 0.2 bindings (filesystem, http, ...), for what the SDK does not wrap,
/// such as creating symlinks.
pub use wasi;

/// Bindings generated from `wit/action.wit`. Plugins normally do not need them.
pub mod bindings {
    wit_bindgen::generate!({
        world: "action",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "sluice_sdk::bindings",
    });
}

/// Export `run` (a `fn(&Context) -> Result<Outcome, Failure>`) as the action's
/// entry point. Call it once, at the root of the plugin crate.
#[macro_export]
macro_rules! export_action {
    ($run:path) => {
        #[doc(hidden)]
        struct __SluiceAction;

        impl $crate::bindings::Guest for __SluiceAction {
            fn run(
                invocation: $crate::bindings::Invocation,
            ) -> ::core::result::Result<$crate::bindings::Outcome, $crate::bindings::Failure> {
                $crate::__run(invocation, $run)
            }
        }

        $crate::bindings::export!(__SluiceAction with_types_in $crate::bindings);
    };
}

/// Glue for [`export_action!`]: converts between the WIT types and the SDK types.
#[doc(hidden)]
pub fn __run(
    invocation: bindings::Invocation,
    run: impl FnOnce(&Context) -> Result<Outcome, Failure>,
) -> Result<bindings::Outcome, bindings::Failure> {
    let ctx = Context::from_invocation(invocation);
    run(&ctx).map(Outcome::into_wit).map_err(Failure::into_wit)
}
