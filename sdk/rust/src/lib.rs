//! Write [Sluice](https://example.invalid/sluice) pipeline actions in Rust.
//!
//! An action is a WASI 0.2 component exporting the `sluice:action/action` world
//! (see `wit/action.wit`). This crate hides the generated bindings: a plugin is a
//! `cdylib` crate with one function and one macro call.
//!
//! ```no_run
//! use sluice_sdk::{Context, Failure, Outcome};
//!
//! fn run(ctx: &Context) -> Result<Outcome, Failure> {
//!     let who = ctx.config_or("who", "world");
//!     ctx.info(format!("greeting {who}"));
//!     let out = ctx.output_dir("greeting");
//!     std::fs::write(out.join("hello.txt"), format!("hello, {who}\n"))?;
//!     Ok(Outcome::new(format!("greeted {who}")).variable("who", who))
//! }
//!
//! sluice_sdk::export_action!(run);
//! ```
//!
//! Build it with `cargo build --target wasm32-wasip2`. What the action may touch is
//! decided by the pipeline's grants: files under `/in`, `/out`, `/workspace` and
//! `/mnt`, secrets ([`Context::secret`]), allow-listed native commands
//! ([`Context::command`]) and outbound HTTP to granted hosts ([`http::request`]).

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
